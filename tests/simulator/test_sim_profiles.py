"""Deployment profiles: `production` (Patroni with etcd, synchronous_mode_strict) is what the
bank runs and the default; `consensus` is the simulator's earlier model, kept explicit.

Each test runs the scale of test_sim_scenarios.py (20,000 customers, a quarter of an hour,
500 postings per customer per day) with a fixed seed printed on failure. Scenario files made
here only combine the built-in fault kinds. Runs are cached per module.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from sim.api import simulate
from sim.model import NS_PER_S, SimConfig, SimError
from sim.profiles import PROFILES
from sim.simulation import Simulation
from tests.simulator.sim_runs import HOURS, SEED, scaled_config

WINDOW_S = HOURS * 3600

SCENARIOS = {
    # DC2 dies and stays down; DC1 keeps an etcd majority with DC3.
    "dc2-down": """
[[faults]]
kind = "dc_outage"
target = "dc2"
at = "30%"
duration = "30%"
""",
    # DC1's link to DC2 is slow (DC2 lags behind DC3), then DC1 dies.
    "dc2-lags-then-dc1-down": """
[[faults]]
kind = "link_degradation"
target = "dc1-dc2"
at = "20%"
latency_ms = 60
loss = 0.0

[[faults]]
kind = "dc_outage"
target = "dc1"
at = "30%"
duration = "30%"
""",
    # DC2 cut off from DC1 (it leaves /sync), then DC1 dies: DC2 and DC3 keep an etcd
    # majority, but neither may be promoted automatically.
    "dc2-cut-then-dc1-down": """
[[faults]]
kind = "link_partition"
target = "dc1-dc2"
at = "20%"
direction = "both"

[[faults]]
kind = "dc_outage"
target = "dc1"
at = "40%"
""",
    "dc1-outage-ttl-30": """
[[faults]]
kind = "dc_outage"
target = "dc1"
at = "30%"
duration = "30%"

[topology.failover]
patroni_ttl_s = 30
""",
    "dc1-outage-slow-rebuild": """
[[faults]]
kind = "dc_outage"
target = "dc1"
at = "30%"
duration = "30%"

[topology.failover]
rebuild_s_per_million_accounts = 1000
""",
}


def scenario_file(directory: Path, name: str, extra: str = "") -> str:
    path = directory / f"{name}.toml"
    path.write_text(f'name = "{name}"\ntraffic = "normal"\nhours = 1.0\n{SCENARIOS[name]}{extra}')
    return str(path)


@functools.cache
def scenario_directory() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="sim-profiles-"))


@functools.cache
def run(
    scenario: str, profile: str | None = None, plant_bug: str | None = None, extra: str = ""
) -> tuple[dict[str, Any], Simulation]:
    if scenario in SCENARIOS:
        scenario = scenario_file(scenario_directory(), scenario, extra)
    return simulate(scaled_config(scenario, plant_bug, SEED, profile))


def context(report: dict[str, Any]) -> str:
    return (
        f"seed={report['seed']} scenario={report['scenario']}"
        f" profile={report['profile']['name']}"
        f" failovers={json.dumps(report['failover_list'])}"
        f" events={json.dumps(report['events'][:60])}"
    )


def acknowledged_between(simulation: Simulation, start_s: float, end_s: float) -> int:
    """Acknowledgements clients received in [start_s, end_s), both regions."""
    seconds = simulation.seconds
    values = simulation.acked_per_s
    return sum(
        values[region * seconds + second]
        for region in (0, 1)
        for second in range(int(start_s), int(end_s))
    )


def test_production_is_the_default_and_says_what_it_has() -> None:
    """Without a choice the run is the production deployment, and its report lists every
    protection with whether it has it: the leader key, strict mode, no leases."""
    report, _ = run("dc1-outage")
    profile = report["profile"]
    assert profile["name"] == "production", context(report)
    protections = profile["protections"]
    assert set(protections) == set(PROFILES["production"].protections)
    assert protections["dcs_leader_key"] and protections["strict_sync"]
    assert not protections["leases"] and not protections["epochs_in_heartbeats"]
    assert not protections["majority_local_commit"] and not protections["sibling_catch_up"]
    assert report["two_copy_promised"] is True
    [failover] = report["failover_list"]
    assert (failover["from"], failover["to"]) == ("dc1", "dc2"), context(report)
    assert (failover["kind"], failover["decided_by"]) == ("same_city", "patroni")
    assert report["acknowledged_lost"] == 0 and report["single_copy_acks"] == 0
    roles = {(item["dc"], item["role"]) for item in report["roles"]}
    assert {("dc1", "primary"), ("dc1", "down"), ("dc2", "promoting"), ("dc2", "primary")} <= roles


def test_production_blocks_instead_of_degrading_without_a_sync_standby() -> None:
    """DC2 dies while DC1 keeps its etcd majority. With no standby allowed to acknowledge
    (Patroni's strict mode without the '*' fallback) commits wait: nothing is acknowledged
    during the outage, nothing on one copy. The consensus profile degrades instead."""
    # DC3 tagged nosync, so that DC2 is the only synchronous candidate.
    extra = (
        "\n[topology.replication]\nany_standby_when_no_sync = false\n"
        '[topology.data_centers.dc3]\nreplication = "async"\n'
    )
    report, simulation = run("dc2-down", extra=extra)
    outage_start_s, outage_end_s = 0.3 * WINDOW_S, 0.6 * WINDOW_S
    # The leader's next loop notices DC2 has gone; from then on, nothing commits.
    during = acknowledged_between(simulation, outage_start_s + 10, outage_end_s)
    assert during == 0, context(report)
    assert report["degraded_acks"] == 0 and report["single_copy_acks"] == 0, context(report)
    assert report["failovers"] == 0 and report["acknowledged_lost"] == 0, context(report)
    assert acknowledged_between(simulation, outage_end_s + 30, WINDOW_S) > 0  # resumed
    consensus, consensus_simulation = run("dc2-down", "consensus", extra=extra)
    assert consensus["degraded_acks"] > 0, context(consensus)
    assert consensus["single_copy_acks"] > 0, context(consensus)
    assert acknowledged_between(consensus_simulation, outage_start_s + 10, outage_end_s) > 0


def test_production_lets_the_remote_standby_acknowledge_in_strict_mode() -> None:
    """Patroni 3.0.2's strict mode with no synchronous candidate sets '*': DC3 streams, so it
    acknowledges (two copies, cross-region latency), but it is not in /sync."""
    report, simulation = run("dc2-down")
    outage_start_s, outage_end_s = 0.3 * WINDOW_S, 0.6 * WINDOW_S
    assert acknowledged_between(simulation, outage_start_s + 10, outage_end_s) > 0
    assert report["single_copy_acks"] == 0 and report["degraded_acks"] == 0, context(report)
    standbys = [item["standby"] for item in report["events"] if item["event"] == "sync_standby"]
    assert "dc3" in standbys and report["failovers"] == 0, context(report)


def test_dc3_is_never_promoted_automatically() -> None:
    """DC2 leaves /sync (cut off from DC1), then DC1 dies. DC2 and DC3 still hold an etcd
    majority, yet Patroni promotes neither (DC2 is not in /sync, DC3 is nofailover): writes
    stop until a person acts. With the operator beyond the window, nobody is promoted in it."""
    extra = "\n[topology.failover]\noperator_delay_s = 3600\n"
    report, simulation = run("dc2-cut-then-dc1-down", extra=extra)
    window_failovers = [item for item in report["failover_list"] if item["decided_s"] < WINDOW_S]
    assert window_failovers == [], context(report)
    assert all(
        item["decided_by"] == "operator" for item in report["failover_list"] if item["to"] == "dc3"
    ), context(report)
    assert acknowledged_between(simulation, 0.4 * WINDOW_S + 5, WINDOW_S) == 0, context(report)
    assert report["acknowledged_lost"] == 0, context(report)
    paged = [item for item in report["events"] if item["event"] == "operator_paged"]
    assert paged, context(report)
    # Losing region A: only an operator promotes DC3.
    region, _ = run("region-a-outage")
    [failover] = region["failover_list"]
    assert (failover["to"], failover["decided_by"]) == ("dc3", "operator"), context(region)


def test_an_old_primary_never_acknowledges_in_production() -> None:
    """DC1 comes back believing it leads, with stale routes sending it requests: Patroni
    starts it read-only (no leader key), so it forms no batch and acknowledges nothing, and it
    is rewound. With the planted bug (started outside Patroni) it does, and loses them."""
    report, _ = run("old-primary-returns")
    assert report["stale_primary_batches"] == 0 and report["stale_primary_acks"] == 0
    assert report["fenced"] and report["fences"][0]["stale_restart"], context(report)
    assert report["acknowledged_lost"] == 0
    roles = [item for item in report["roles"] if item["dc"] == "dc1"]
    assert not any(
        item["role"] == "primary" and item["from_s"] > 0.3 * WINDOW_S for item in roles
    ), roles
    planted, _ = run("old-primary-returns", plant_bug="old-primary-accepts-writes")
    assert planted["stale_primary_acks"] > 0, context(planted)
    assert planted["acknowledged_lost"] > 0 and not planted["verdict"]["pass"]


def test_the_promoted_dc_has_exactly_what_it_had() -> None:
    """DC2 lags behind DC3 (a slow same-city link) when DC1 dies: production promotes DC2 with
    its own log and nothing from DC3 (PostgreSQL has no sibling catch-up), and loses nothing
    acknowledged (strict mode waited for DC2). The consensus profile catches up from DC3."""
    report, simulation = run("dc2-lags-then-dc1-down")
    [failover] = simulation.failovers
    assert failover.new_primary == "dc2", context(report)
    assert failover.promoted_lsn == failover.decided_lsn, context(report)
    down = next(item for item in report["events"] if item["event"] == "down")
    kill_ns = round(down["at_s"] * NS_PER_S)
    assert failover.decided_ns > kill_ns
    assert report["acknowledged_lost"] == 0, context(report)
    consensus, consensus_simulation = run("dc2-lags-then-dc1-down", "consensus")
    [caught_up] = consensus_simulation.failovers
    assert caught_up.new_primary == "dc2", context(consensus)
    assert caught_up.promoted_lsn > caught_up.decided_lsn, context(consensus)


def test_consensus_profile_reproduces_the_old_model() -> None:
    """The consensus profile is the earlier model: majority election, a constant 2 s
    promotion, local-only commits while hearing a majority (degraded acknowledgements), and
    its report says which protections it had."""
    report, _ = run("dc1-outage", "consensus")
    profile = report["profile"]
    assert profile["name"] == "consensus"
    assert profile["protections"]["leases"] and profile["protections"]["majority_local_commit"]
    assert not profile["protections"]["dcs_leader_key"]
    assert report["two_copy_promised"] is False
    [failover] = report["failover_list"]
    assert (failover["to"], failover["decided_by"]) == ("dc2", "majority"), context(report)
    assert failover["promoted_s"] - failover["decided_s"] == pytest.approx(2.0, abs=1e-3)
    assert report["degraded_acks"] > 0 and report["single_copy_acks"] > 0, context(report)
    assert report["acknowledged_lost"] == 0
    old_primary, _ = run("old-primary-returns", "consensus")
    assert old_primary["stale_primary_batches"] > 0  # a zombie fenced by epochs, as before
    assert old_primary["stale_primary_acks"] == 0 and old_primary["fenced"]


def test_rto_grows_with_the_leader_key_ttl() -> None:
    """The same DC1 outage with Patroni's ttl at 10 s and at 30 s: the later the key expires,
    the later DC2 is promoted, by about the difference."""
    short, _ = run("dc1-outage")
    long, _ = run("dc1-outage-ttl-30")
    assert short["topology"]["patroni"]["ttl_s"] == 10
    assert long["topology"]["patroni"]["ttl_s"] == 30
    assert short["rto_s"] is not None and long["rto_s"] is not None
    assert long["rto_s"] >= short["rto_s"] + 15, (short["rto_s"], long["rto_s"])
    assert short["rto_s"] >= 10  # no faster than the key's ttl


def test_promotion_time_grows_with_the_accounts() -> None:
    """Promotion is pg_ctl promote plus Tally's ledger rebuild, which grows with the accounts:
    at 1000 s per million accounts the promotion of DC2 takes that long for its accounts."""
    report, simulation = run("dc1-outage-slow-rebuild")
    [failover] = report["failover_list"]
    accounts = simulation.dcs["dc2"].ledger.account_count
    expected_s = 1.0 + 1000 * accounts / 1_000_000
    assert expected_s > 10  # the test scale has enough accounts to tell
    promotion_s = failover["promoted_s"] - failover["decided_s"]
    assert promotion_s == pytest.approx(expected_s, abs=0.01), (promotion_s, accounts)
    short, _ = run("dc1-outage")
    assert report["rto_s"] >= short["rto_s"] + expected_s - 2, (report["rto_s"], short["rto_s"])


def test_profile_is_chosen_and_checked(tmp_path: Path) -> None:
    """A scenario's `profile` key chooses one, SimConfig.profile overrides it, an unknown
    name is refused before the run, and Patroni's timing rule is checked."""
    path = tmp_path / "steady-consensus.toml"
    path.write_text('name = "steady-consensus"\nprofile = "consensus"\nhours = 0.05\n')
    config = SimConfig(users=2_000, hours=0.02, scenario=str(path), quiet=True)
    report, _ = simulate(config)
    assert report["profile"]["name"] == "consensus"
    config.profile = "production"
    report, _ = simulate(config)
    assert report["profile"]["name"] == "production"
    with pytest.raises(SimError, match="unknown profile 'raft'"):
        SimConfig(profile="raft").check()
    path.write_text('name = "x"\nprofile = "raft"\n')
    with pytest.raises(SimError, match="unknown profile"):
        simulate(SimConfig(users=2_000, scenario=str(path), quiet=True))
    path.write_text('name = "x"\n[topology.failover]\npatroni_ttl_s = 5\n')
    with pytest.raises(SimError, match="patroni_ttl_s"):
        simulate(SimConfig(users=2_000, scenario=str(path), quiet=True))
