"""The verdict: targets by failure class, invariants no scenario can switch off, [expect].

Most cases judge a report dict built here (the verdict is computed from the report alone,
so a QA engineer can recompute it from report.json); one runs dc1-outage at the default
test scale and reads the targets table from the terminal summary.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from sim.model import SimError, parse_scenario
from sim.report import summary
from sim.verdict import build_verdict, failure_classes
from tests.simulator.sim_runs import run

TOPOLOGY = {
    "data_centers": {
        "dc1": {"region": "a", "initial_role": "primary"},
        "dc2": {"region": "a", "initial_role": "replica"},
        "dc3": {"region": "b", "initial_role": "replica"},
    },
    "failover": {"operator_delay_s": 120.0},
}


def report_of(**changes: Any) -> dict[str, Any]:
    """A clean report of a run without faults; `changes` replace its keys."""
    report: dict[str, Any] = {
        "scenario": "x",
        "topology": copy.deepcopy(TOPOLOGY),
        "faults": [],
        "failover_list": [],
        "acknowledged_lost": 0,
        "unexpected_lost": 0,
        "rpo_transfers": 0,
        "lost_single_copy": 0,
        "converged": True,
        "state_digests": {},
        "duplicates": 0,
        "money_conserved": True,
        "limits_respected": True,
        "timestamp_violations": 0,
        "result_mismatches": 0,
        "degraded_acks": 0,
        "availability": {"overall": 1.0, "requests_given_up_share": 0.0},
        "no_ack_s_max": 0,
        "simulated_s": 3600.0,
    }
    return report | changes


def scenario(**tables: Any) -> Any:
    return parse_scenario({"name": "x", **tables}, "x.toml")


def failover(kind: str = "same_region", rto_s: float | None = 10.0, **extra: Any) -> dict:
    return {"kind": kind, "rto_s": rto_s, "acknowledged_lost": 0, "lost_amount_minor": 0} | extra


def row(verdict: dict[str, Any], name: str, failure_class: str | None = None) -> dict[str, Any]:
    [found] = [
        item
        for item in verdict["targets"]
        if item["name"] == name and failure_class in (None, item["failure_class"])
    ]
    return found


def test_a_run_without_writes_for_minutes_fails() -> None:
    """The issue's random-faults run: 41 minutes without an acknowledged write,
    availability 0.50, half the requests given up. It must fail, naming each target."""
    report = report_of(
        faults=[
            {"kind": "link_partition", "target": "dc1-dc2"},
            {"kind": "slow_disk", "target": "dc3"},
            {"kind": "dc_outage", "target": "dc2"},
        ],
        failover_list=[failover(rto_s=2460.0)],
        availability={"overall": 0.5, "requests_given_up_share": 0.5},
        no_ack_s_max=41 * 60,
    )
    verdict = build_verdict(report, scenario())
    assert verdict["pass"] is False
    assert verdict["failure_classes"] == ["degradation", "link", "same_city"]
    assert all(verdict["invariants"].values())  # nothing lost: only the targets catch it
    failed = {item["name"] for item in verdict["targets"] if not item["met"]}
    assert failed == {"rto_s", "availability", "no_ack_s_max", "given_up_share"}
    assert any("no_ack_s_max: measured 2460, target <= 60" in text for text in verdict["failures"])


@pytest.mark.parametrize(
    ("faults", "failovers", "classes"),
    [
        ([], [], ["steady"]),
        ([{"kind": "dc_outage", "target": "dc1"}], [], ["same_city"]),
        ([{"kind": "dc_outage", "target": "dc3"}], [], ["degradation"]),
        ([{"kind": "primary_crash", "target": "dc1"}], [], ["same_city"]),
        ([{"kind": "old_primary_returns", "target": "dc1"}], [], ["same_city"]),
        ([{"kind": "region_outage", "target": "a"}], [], ["region"]),
        ([{"kind": "link_flapping", "target": "dc1-dc2"}], [], ["link"]),
        ([{"kind": "clock_skew", "target": "dc1"}], [], ["degradation"]),
        ([{"kind": "link_partition", "target": "a-b"}], [failover()], ["link", "same_city"]),
        ([], [failover("cross_region")], ["region"]),
    ],
)
def test_failure_classes_come_from_the_faults_and_failovers(
    faults: list[dict[str, str]], failovers: list[dict[str, Any]], classes: list[str]
) -> None:
    assert failure_classes(report_of(faults=faults, failover_list=failovers)) == classes


def test_same_city_defaults_are_gbt_20988_level_6() -> None:
    """A same-city failure: RPO 0 transfers and 0 amount, RTO at most 60 s."""
    faults = [{"kind": "dc_outage", "target": "dc1"}]
    good = build_verdict(report_of(faults=faults, failover_list=[failover(rto_s=59.9)]), scenario())
    assert good["pass"], good["failures"]
    assert row(good, "rto_s")["target"] == "<= 60"
    assert row(good, "rto_s")["source"] == "GB/T 20988 level 6"
    slow = build_verdict(report_of(faults=faults, failover_list=[failover(rto_s=60.5)]), scenario())
    assert not slow["pass"] and not row(slow, "rto_s")["met"]
    never = build_verdict(
        report_of(faults=faults, failover_list=[failover(rto_s=None)]), scenario()
    )
    assert row(never, "rto_s")["measured"] == "never" and not never["pass"]
    lossy = report_of(
        faults=faults,
        failover_list=[failover(acknowledged_lost=3, lost_amount_minor=500)],
        acknowledged_lost=3,
        unexpected_lost=3,
    )
    verdict = build_verdict(lossy, scenario())
    assert not row(verdict, "rpo_transfers")["met"] and not row(verdict, "rpo_amount_minor")["met"]
    assert not verdict["invariants"]["no_acknowledged_loss_outside_rpo"]


def test_region_defaults_are_level_5_with_the_stated_window() -> None:
    """Losing a region: RPO within the window the scenario states (30 minutes unstated),
    RTO within the operator's delay + 60 s; the RPO itself is reported, not bounded."""
    lost = failover("cross_region", rto_s=170.0, acknowledged_lost=40, lost_window_s=12.5)
    report = report_of(
        faults=[{"kind": "region_outage", "target": "a"}],
        failover_list=[lost],
        acknowledged_lost=40,
        rpo_transfers=40,
        availability={"overall": 0.85, "requests_given_up_share": 0.1},
        no_ack_s_max=165,
    )
    unstated = build_verdict(report, scenario())
    assert unstated["pass"], unstated["failures"]
    assert row(unstated, "rpo_window_s")["target"] == "<= 1800"
    assert row(unstated, "rto_s")["target"] == "<= 180"
    assert row(unstated, "rpo_transfers")["target"] is None
    assert row(unstated, "rpo_transfers")["measured"] == 40
    stated = build_verdict(report, scenario(targets={"region": {"rpo_window_s": 10}}))
    window = row(stated, "rpo_window_s")
    assert (window["target"], window["measured"], window["met"]) == ("<= 10", 12.5, False)
    assert window["source"] == "scenario" and not stated["pass"]


def test_scenario_targets_replace_defaults_class_tables_over_top_level() -> None:
    report = report_of(
        faults=[{"kind": "link_partition", "target": "a-b"}],
        availability={"overall": 0.9, "requests_given_up_share": 0.05},
    )
    assert not build_verdict(report, scenario())["pass"]  # link defaults: 0.95 and 0.02
    loose = scenario(targets={"availability": 0.85, "given_up_share": "<= 0.08"})
    assert build_verdict(report, loose)["pass"]
    overridden = scenario(targets={"availability": 0.85, "link": {"availability": ">= 0.95"}})
    verdict = build_verdict(report, overridden)
    assert row(verdict, "availability")["target"] == ">= 0.95" and not verdict["pass"]


def test_no_target_switches_an_invariant_off() -> None:
    """However loose the scenario's targets, a loss outside the RPO, diverged DCs,
    duplicates or unconserved money fail the run."""
    loose = scenario(
        targets={
            "rpo_transfers": 1e12,
            "rpo_amount_minor": 1e15,
            "availability": 0,
            "given_up_share": 1,
            "single_copy_acks": 1e12,
        }
    )
    faults = [{"kind": "dc_outage", "target": "dc1"}]
    for broken in (
        {"unexpected_lost": 1, "acknowledged_lost": 1},
        {"converged": False},
        {"duplicates": 2},
        {"money_conserved": False},
        {"limits_respected": False},
        {"timestamp_violations": 1},
        {"result_mismatches": 1},
    ):
        verdict = build_verdict(report_of(faults=faults, **broken), loose)
        assert verdict["pass"] is False, broken
        assert any(text.startswith("invariant ") for text in verdict["failures"]), broken


def test_single_copy_acks_are_in_the_verdict() -> None:
    """Acknowledgements held by one DC appear in the targets (the simulator's count, or its
    degraded commits until it reports one); when the profile promises two copies they
    break an invariant no scenario can loosen."""
    degraded = build_verdict(report_of(degraded_acks=15_000), scenario())
    single = row(degraded, "single_copy_acks")
    assert (single["measured"], single["target"], single["met"]) == (15_000, None, True)
    bound = build_verdict(
        report_of(degraded_acks=15_000), scenario(targets={"single_copy_acks": 0})
    )
    assert not bound["pass"] and not row(bound, "single_copy_acks")["met"]
    promised = report_of(single_copy_acks=7, two_copy_promised=True, degraded_acks=0)
    verdict = build_verdict(promised, scenario(targets={"single_copy_acks": 100}))
    assert verdict["invariants"]["two_copies_when_promised"] is False and not verdict["pass"]
    assert any("7 single-copy acknowledgements" in text for text in verdict["failures"])
    kept = build_verdict(report_of(single_copy_acks=0, two_copy_promised=True), scenario())
    assert kept["pass"] and row(kept, "single_copy_acks")["target"] == "<= 0"


def test_expectations_still_count() -> None:
    verdict = build_verdict(
        report_of(failovers=0), scenario(expect={"failovers": 1, "acknowledged_lost": 0})
    )
    assert not verdict["pass"]
    assert verdict["failures"] == ["expectation failovers: expected 1, got 0"]


def test_targets_table_parses_bounds() -> None:
    parsed = scenario(targets={"rto_s": 30, "region": {"rpo_window_s": "< 5"}}).targets
    assert parsed == {"": {"rto_s": ("<=", 30.0)}, "region": {"rpo_window_s": ("<", 5.0)}}
    with pytest.raises(SimError, match=re.escape("`targets.availability`: 2 is outside 0..1")):
        scenario(targets={"availability": 2})


def test_a_real_run_prints_its_targets_table() -> None:
    """dc1-outage at the test scale: level 6 targets for the same-city failover, met, and
    the targets table in the terminal summary."""
    report, _ = run("dc1-outage")
    verdict = report["verdict"]
    assert verdict["failure_classes"] == ["same_city"]
    rto = row(verdict, "rto_s", "same_city")
    assert rto["target"] == "<= 60" and rto["measured"] == report["rto_s"] and rto["met"]
    assert row(verdict, "no_ack_s_max")["measured"] == report["no_ack_s_max"] > 0
    text = summary(report | {"wall_s": 1.0, "simulated_to_wall_ratio": 1.0})
    assert "same_city   rto_s             <= 60" in text
    assert "single_copy_acks" in text


def test_availability_bound_allows_one_outage_of_the_class_in_a_short_run() -> None:
    """A same-city failover within its RTO is not failed for availability in a short run
    (a replayed journal of a few seconds); a long outage in a long run is."""
    faults = [{"kind": "dc_outage", "target": "dc1"}]
    short = report_of(
        faults=faults,
        failover_list=[failover(rto_s=6.3)],
        simulated_s=16.0,
        availability={"overall": 0.667, "requests_given_up_share": 0.0},
        no_ack_s_max=6,
    )
    verdict = build_verdict(short, scenario())
    assert verdict["pass"], verdict["failures"]
    assert row(verdict, "availability")["target"] == ">= 0"
    hour = build_verdict(short | {"simulated_s": 3600.0}, scenario())
    assert row(hour, "availability")["target"] == ">= 0.9" and not hour["pass"]
    quarter = build_verdict(short | {"simulated_s": 900.0}, scenario())
    assert row(quarter, "availability")["target"] == ">= 0.9"
