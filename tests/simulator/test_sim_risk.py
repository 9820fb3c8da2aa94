"""The risk stage in the simulator (sim/risk.py): fraud in the traffic, the bank's rules on it.

`fraud-mix` runs the shipped rule set (core/data/risk.toml) on the production kernel
(cext.risk) in front of the simulated engine, with 1% of the requests rewritten into
fraud: stolen devices (a thief's new device, large transfers to a new payee) and mules
(many payers into one account within the hour). The risk checker evaluates the approved
rules with the kernel's pure-Python twin on the same postings. At the default test scale
(tests/simulator/sim_runs.py), except where a test needs a run of its own.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ledger.records import transfer_view
from ledger.types import CreateTransferResult, TransferFlags
from sim.api import simulate
from sim.model import SimConfig, SimError, load_scenario
from sim.report import report_digest
from sim.risk import (
    HOLD_DELAY,
    HOLD_REVIEW,
    REFUSED_BLOCK,
    REFUSED_CHALLENGE,
    RESULT_RISK_BLOCKED,
    RESULT_RISK_CHALLENGE,
)
from tests.simulator.sim_runs import run

SCENARIO = "fraud-mix"


def test_fraud_mix_stops_the_fraud_the_rules_aim_at() -> None:
    """Every stolen-device request (a thief's new device, >= 5,000 CNY) is challenged and
    refused (no second factor), mule payments past the payee's 30 an hour are held for
    review; legitimate customers pay a small price (challenges they meet with a second
    factor, a few holds); the run passes every invariant, the risk checker's included."""
    report, sim = run(SCENARIO)
    risk = report["risk"]
    assert risk["kernel"] == "RiskKernel" and risk["checker"] == "ReferenceRiskKernel"
    assert risk["rules"] == 20 and risk["rules_version"] >= 1
    fraud = risk["fraud"]
    assert fraud["total"] == report["risk_fraud_total"] > 300
    stolen, mule = fraud["by_kind"]["stolen_device"], fraud["by_kind"]["mule"]
    assert stolen["total"] > 100 and stolen["challenge"] == stolen["stopped"] == stolen["total"]
    assert 0 < mule["review"] == mule["stopped"] < mule["total"]  # the first 30 get through
    assert fraud["stopped"] == stolen["stopped"] + mule["stopped"] == report["risk_fraud_stopped"]
    assert risk["rules_fired"]["new_device_large"] == stolen["total"]
    assert risk["rules_fired"]["mule_inflow"] == mule["review"]
    legit = risk["legitimate"]
    assert legit["total"] + fraud["total"] == risk["screened"] == report["requests"]
    assert legit["challenged"] == risk["by_outcome"]["challenge_met"] > 0
    assert legit["false_positive_share"] < 0.05
    # The refused requests were answered with the simulated channel's risk refusal.
    assert report["results"]["risk_challenge"] == stolen["challenge"]
    assert "risk_blocked" not in report["results"]
    verdict = report["verdict"]
    assert verdict["invariants"]["risk_as_specified"], risk["mismatch_examples"]
    assert risk["mismatches"] == report["risk_mismatches"] == 0
    assert verdict["pass"], verdict["failures"]
    assert report["result_mismatches"] == 0 and report["money_conserved"]
    assert sim.risk is not None


def test_refused_requests_leave_no_trace_and_holds_are_pending() -> None:
    """A blocked or challenged request never reached the engine: no DC holds it; a
    delayed or reviewed one is in every DC's ledger as a PENDING hold of the same
    amount, with the hold's timeout (the rules' delay or review time plus a day)."""
    report, sim = run(SCENARIO)
    assert sim.risk is not None
    actions = sim.risk.actions
    refused = [
        seq for seq, action in enumerate(actions) if action in (REFUSED_CHALLENGE, REFUSED_BLOCK)
    ]
    held = [seq for seq, action in enumerate(actions) if action in (HOLD_DELAY, HOLD_REVIEW)]
    assert refused and held
    for seq in refused[:50]:
        assert sim.ack_result[seq] in (RESULT_RISK_CHALLENGE, RESULT_RISK_BLOCKED)
    # Every record each DC held was read by the checker before eviction: none of a
    # refused request (its answer is of the no-record class), and the answers hold.
    assert report["result_mismatches"] == 0 and report["verdict"]["invariants"]["no_duplicates"]
    # The last holds are still in the logs (the retention): pending, with the hold's timeout.
    found = 0
    for name, dc in sim.dcs.items():
        for seq in held[-20:]:
            raw = dc.ledger.lookup_transfer(_request_id(seq))
            if raw is None or sim.ack_result[seq] != CreateTransferResult.OK:
                continue
            transfer = transfer_view(raw)
            assert transfer.flags & TransferFlags.PENDING, (name, seq)
            assert transfer.timeout_s == sim.risk.hold_timeout_s[actions[seq]], (name, seq)
            found += 1
    assert found > 0


def _request_id(seq: int) -> int:
    from cext import simgen

    return int(simgen.request_id(seq))


def test_the_risk_section_is_part_of_the_digest_and_deterministic() -> None:
    """The same seed gives the same risk section and digest; the risk figures are in the
    digest (a changed count changes it); another seed draws other fraud."""
    report, _ = run(SCENARIO)
    again, _ = simulate(_config(seed=7))
    assert again["digest"] == report["digest"]
    assert again["risk"] == report["risk"]
    changed = copy.deepcopy(report)
    changed["risk"]["fraud"]["stopped"] += 1
    assert report_digest(changed) != report_digest(report)
    other, _ = simulate(_config(seed=8))
    assert other["digest"] != report["digest"]
    assert other["risk"]["fraud"]["total"] != report["risk"]["fraud"]["total"]


def test_a_rule_that_never_fires_is_caught() -> None:
    """The planted bug deploys the program with the stolen-device rule silenced: the thief's
    transfers reach the engine, and the risk checker (the approved rules, the twin) says
    every one of them should have been challenged: the invariant fails."""
    report, _ = run(SCENARIO, "risk-rule-never-fires")
    risk = report["risk"]
    assert risk["planted_silent_rule"] == "new_device_large"
    assert risk["rules_fired"]["new_device_large"] == 0
    assert risk["fraud"]["by_kind"]["stolen_device"]["stopped"] == 0
    assert risk["mismatches"] >= risk["fraud"]["by_kind"]["stolen_device"]["total"] > 0
    assert any("new_device_large" in line for line in risk["mismatch_examples"])
    verdict = report["verdict"]
    assert not verdict["invariants"]["risk_as_specified"]
    assert verdict["pass"] is False
    assert any(line.startswith("invariant risk_as_specified: ") for line in verdict["failures"])


def test_scenarios_without_risk_build_no_stage() -> None:
    """Only a scenario with [risk] runs the stage (a 30M campaign day keeps its memory):
    the report of one without has no risk section and the same invariants hold."""
    report, sim = run("dc1-outage")
    assert sim.risk is None and "risk" not in report and "risk_mismatches" not in report
    assert report["verdict"]["invariants"]["risk_as_specified"]


def test_bad_risk_tables_and_too_many_users_are_refused(tmp_path: Path) -> None:
    """A [risk] table with an unknown key, a share out of range or a missing rule file is
    refused naming the file and key; fraud-mix at more users than the checker can follow
    is refused before anything is built."""
    path = tmp_path / "bad.toml"
    path.write_text(
        'name = "bad"\ntraffic = "normal"\nhours = 0.1\n'
        '[risk]\nfraud_share = 0.9\nrules = "nowhere/risk.toml"\ncolour = "red"\n'
    )
    with pytest.raises(SimError) as caught:
        load_scenario(str(path))
    text = str(caught.value)
    assert f"{path}: `risk.fraud_share`" in text and "0..0.5" in text
    assert "`risk.rules`: nowhere/risk.toml: no such file" in text
    assert "`risk.colour`: unknown key" in text
    with pytest.raises(SimError, match=r"\[risk\] runs at most 2,000,000 users"):
        simulate(SimConfig(users=30_000_000, scenario=SCENARIO, quiet=True))


def _config(seed: int) -> SimConfig:
    from tests.simulator.sim_runs import scaled_config

    return scaled_config(SCENARIO, seed=seed)


FAILOVER_RULES = """\
version = 1

[holds]
delay_s = 3_600
review_s = 259_200

[[rules]]
# A thief's device: a third large transfer within the hour is challenged. The device is
# not in the transfer log: a failover forgets this counter.
name = "device_burst"
type = "velocity"
outcome = "challenge"
scope = "device"
codes = ["transfer"]
amount_min = "5000.00"
window = "1h"
count_max = 2

[[rules]]
# The same burst seen by the victim's account (reported only): the account is in the log,
# so the new primary rebuilds this counter from it.
name = "account_burst"
type = "velocity"
outcome = "allow"
report = true
scope = "account"
codes = ["transfer"]
amount_min = "5000.00"
window = "1h"
count_max = 2
"""


def test_risk_counters_are_rebuilt_from_the_new_primarys_log_at_a_failover(
    tmp_path: Path,
) -> None:
    """The primary dies in the middle of stolen-device bursts. Its Tally process, and the
    risk counters in it, die with it: the promoted DC's process rebuilds them the way the
    server does (cleared, its own transfer log replayed through `replay_log`), so the
    thief's device counter is gone (the log has no device) while the victim's account
    counter is back. A burst the device rule challenged before the failover gets two
    more transfers through after it (with the counters carried over, every one would be
    challenged), each seen by the account rule. The checker's twin is rebuilt alike: the
    run passes, the risk checker agrees with every decision, and the same seed gives the
    same digest."""
    from sim.risk import ALLOW, LSN_BITS

    rules = tmp_path / "rules.toml"
    rules.write_text(FAILOVER_RULES)
    scenario = tmp_path / "fraud-failover.toml"
    scenario.write_text(
        'name = "fraud-failover"\ntraffic = "normal"\nhours = 0.25\n'
        f'[risk]\nfraud_share = 0.05\nstolen_share = 1.0\nrules = "{rules}"\n'
        '[[faults]]\nkind = "dc_outage"\ntarget = "dc1"\nat = "40%"\nduration = "30%"\n'
    )
    from tests.simulator.sim_runs import scaled_config

    report, sim = simulate(scaled_config(str(scenario)))
    stage = sim.risk
    assert stage is not None
    risk = report["risk"]
    assert report["failovers"] == 1 and sim.failovers[0].new_primary == "dc2"
    assert [rebuild["dc"] for rebuild in risk["rebuilds"]] == ["dc2"]
    assert risk["rebuilds"][0]["postings"] > 0
    assert risk["mismatches"] == 0, risk["mismatch_examples"]
    verdict = report["verdict"]
    assert verdict["invariants"]["risk_as_specified"] and verdict["pass"], verdict["failures"]

    device_bit, account_bit = 1 << 0, 1 << 1
    before: dict[int, list[int]] = {}  # thief episode -> its decisions carried in epoch 1
    after: dict[int, list[tuple[int, int]]] = {}  # -> (lsn, seq) carried by the new primary
    for seq, kind in enumerate(stage.fraud_kind):
        mark = stage.carried_at[seq]
        if kind != 1 or not mark:
            continue
        _, episode = stage.plan.episode(seq)
        if mark >> LSN_BITS == 1:
            before.setdefault(episode, []).append(seq)
        else:
            after.setdefault(episode, []).append((mark & ((1 << LSN_BITS) - 1), seq))
    straddling = [
        episode
        for episode, seqs in before.items()
        if episode in after and any(stage.actions[seq] == REFUSED_CHALLENGE for seq in seqs)
    ]
    assert straddling, "no stolen-device burst straddled the failover"
    further = 0
    for episode in straddling:
        allowed = [seq for _, seq in sorted(after[episode]) if stage.actions[seq] == ALLOW]
        assert len(allowed) <= 2, episode  # the rebuilt device counter counts again
        for seq in allowed:
            mask = stage.fired_of.get(seq, (0, 0, False))[0]
            assert not mask & device_bit, seq
            if mask & account_bit:
                further += 1  # the account counter was rebuilt from the log
    assert further > 0
    # Deterministic: the same seed rebuilds the same counters and gives the same digest.
    again, _ = simulate(scaled_config(str(scenario)))
    assert again["digest"] == report["digest"] and again["risk"] == risk


def test_the_shared_replay_feeds_each_second_without_device_or_ip() -> None:
    """`replay_log` (the rebuild the server and the simulator share) calls the kernel once
    per second of the records' timestamps, in log order, with the context builder's rows
    except what the log cannot tell: device and IP cleared, a second factor presented."""
    import struct

    from core.services.risk import replay_log, replay_ranges
    from ledger.types import TRANSFER_SIZE
    from limits.risk_layout import CONTEXT, VERDICT

    seconds = [100, 100, 101, 103, 103, 103]
    records = bytearray(TRANSFER_SIZE * len(seconds))
    for index, second in enumerate(seconds):
        struct.pack_into("<Q", records, index * TRANSFER_SIZE, index + 1)  # the id
        struct.pack_into("<Q", records, index * TRANSFER_SIZE + 72, second * 1_000_000_000 + 5)
    calls: list[tuple[int, list[int], list[tuple[int, ...]]]] = []

    class Kernel:
        def screen(
            self, recs: bytes, contexts: bytes, count: int, now_s: int, out: bytearray
        ) -> int:
            ids = [
                int.from_bytes(recs[i * TRANSFER_SIZE : i * TRANSFER_SIZE + 8], "little")
                for i in range(count)
            ]
            rows = [CONTEXT.unpack_from(contexts, i * CONTEXT.size) for i in range(count)]
            calls.append((now_s, ids, rows))
            return 0

    def rows(recs: bytes, count: int, now_s: int) -> bytes:
        return b"".join(CONTEXT.pack(7, 8, 9, 10, 11, now_s % 86_400, 0) for _ in range(count))

    out = bytearray(VERDICT.size * len(seconds))
    assert replay_log(Kernel(), bytes(records), len(seconds), rows, out) == len(seconds)  # type: ignore[arg-type]
    assert [(now_s, ids) for now_s, ids, _ in calls] == [
        (100, [1, 2]),
        (101, [3]),
        (103, [4, 5, 6]),
    ]
    for now_s, _, contexts in calls:
        assert all(row == (7, 0, 0, 10, 11, now_s, 1) for row in contexts)
    assert replay_ranges(10, 20_000, limit=10_000) == [(10_000, 18_189), (18_189, 20_000)]
    assert replay_ranges(5, 5) == []
