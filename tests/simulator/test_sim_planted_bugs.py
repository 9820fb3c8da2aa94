"""Mutation runs: every planted bug is caught in every scenario that can expose it.

A checker that cannot catch a known-bad deployment proves nothing about a good one. Each
bug of `sim.bugs.PLANTED_BUGS` runs in each scenario of its `exposed_by`, at the default
test scale of test_sim_scenarios.py, and the verdict must fail naming what it caught; the
same scenario without the bug keeps every invariant (the failure is the bug's). On the
command line, `--plant-bug` makes a caught run exit 3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.bugs import PLANTED_BUGS
from sim.model import builtin_scenarios
from tests.simulator.sim_runs import HOURS, POSTINGS_PER_USER, SEED, USERS
from tests.simulator.sim_runs import run as scenario_run
from tests.simulator.test_sim_cli import tally

CASES = [(bug.name, scenario) for bug in PLANTED_BUGS.values() for scenario in bug.exposed_by]


def run(scenario: str, bug: str | None) -> dict[str, Any]:
    return (scenario_run(scenario, bug) if bug else scenario_run(scenario))[0]  # cached


def test_every_bug_names_builtin_scenarios() -> None:
    assert CASES, "no planted bugs"
    for bug in PLANTED_BUGS.values():
        assert bug.exposed_by and set(bug.exposed_by) <= set(builtin_scenarios()), bug


@pytest.mark.parametrize(("bug", "scenario"), CASES)
def test_planted_bug_fails_the_verdict(bug: str, scenario: str) -> None:
    """The bug's run fails its verdict on an invariant (what the checker caught), where
    the clean run of the same scenario keeps every invariant."""
    report = run(scenario, bug)
    verdict = report["verdict"]
    context = f"bug={bug} scenario={scenario} seed={SEED} failures={verdict['failures']}"
    assert report["plant_bug"] == bug
    assert verdict["pass"] is False, context
    caught = [name for name, ok in verdict["invariants"].items() if not ok]
    assert caught, context
    assert any(reason.startswith(f"invariant {caught[0]}: ") for reason in verdict["failures"])
    clean = run(scenario, None)["verdict"]["invariants"]
    assert all(clean.values()), clean


# The scenarios in which acknowledging early loses transfers (in the others of its
# `exposed_by` it shows as single-copy acknowledgements only): a primary of region A dies.
LOSS_SCENARIOS = (
    "dc1-outage",
    "old-primary-returns",
    "campaign-dc1-outage-link-partition",
    "region-a-outage",
)


@pytest.mark.parametrize("scenario", LOSS_SCENARIOS)
def test_ack_before_sync_replica_is_caught_as_loss_outside_the_rpo(scenario: str) -> None:
    """Acknowledging before the sync standby has the batch loses transfers that only the
    dying primary held: never RPO, not even when a whole region is lost (region-a-outage,
    where they hide among the transfers the remote DC had not received)."""
    report = run(scenario, "ack-before-sync-replica")
    verdict = report["verdict"]
    assert not verdict["invariants"]["no_acknowledged_loss_outside_rpo"], verdict["failures"]
    assert report["lost_single_copy"] > 0
    assert report["unexpected_lost"] >= report["lost_single_copy"]
    reason = next(
        text for text in verdict["failures"] if "no_acknowledged_loss_outside_rpo" in text
    )
    assert "lost outside the declared RPO" in reason and "held by one DC only" in reason
    clean = run(scenario, None)
    assert clean["lost_single_copy"] == 0 and clean["unexpected_lost"] == 0


def test_region_a_outage_rpo_excludes_the_bugs_extra_loss() -> None:
    """In region-a-outage the clean run's loss is all RPO (held by DC1 and DC2, never
    received by DC3); the bug adds single-copy losses on top, counted outside the RPO."""
    clean = run("region-a-outage", None)
    planted = run("region-a-outage", "ack-before-sync-replica")
    assert clean["rpo_transfers"] == clean["acknowledged_lost"] > 0
    assert planted["acknowledged_lost"] > planted["rpo_transfers"]
    assert planted["acknowledged_lost"] - planted["rpo_transfers"] == planted["unexpected_lost"]


def test_plant_bug_on_the_command_line_exits_3(tmp_path: Path) -> None:
    """`tally sim run --plant-bug ack-before-sync-replica` is caught: exit status 3, the
    report names the bug and the reason."""
    result = tally(
        "sim",
        "run",
        "--users",
        str(USERS),
        "--hours",
        str(HOURS),
        "--postings-per-user",
        str(POSTINGS_PER_USER),
        "--seed",
        str(SEED),
        "--scenario",
        "dc1-outage",
        "--plant-bug",
        "ack-before-sync-replica",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert result.returncode == 3, result.stdout + result.stderr
    headline = json.loads(result.stdout.splitlines()[-1])
    assert headline["pass"] is False and headline["plant_bug"] == "ack-before-sync-replica"
    assert any("no_acknowledged_loss_outside_rpo" in text for text in headline["failures"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["plant_bug"] == "ack-before-sync-replica" and report["unexpected_lost"] > 0


def test_bugs_are_listed_with_the_scenarios_that_expose_them() -> None:
    """`tally sim bugs` and `tally sim scenarios --verbose` name each bug and its scenarios."""
    listed = tally("sim", "bugs")
    assert listed.returncode == 0, listed.stderr
    for bug in PLANTED_BUGS.values():
        assert f"{bug.name}: " in listed.stdout
        assert f"exposed by: {', '.join(bug.exposed_by)}" in listed.stdout
    verbose = tally("sim", "scenarios", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert "exposes planted bugs: ack-before-sync-replica" in verbose.stdout
    assert 'targets: {"region": {"rpo_window_s": "<= 10"}}' in verbose.stdout
