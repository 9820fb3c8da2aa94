"""Bad input to `tally sim run` / `replay` is refused before the run starts.

Each case runs the command's own entry (`sim.cli.run`, as `tally sim run` does) with a
tiny population, so a case that slipped through validation would run a small simulation
and fail on its exit status instead of taking minutes. Every refusal exits 1, names the
file, key and allowed values on one line, writes nothing to --out and raises nothing.
Two cases from the issue also run as real subprocesses, to see no traceback reach the user.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sim import cli
from tests.simulator.test_sim_cli import tally


def run_cli(capsys: pytest.CaptureFixture[str], command: str, *arguments: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    if command == "run":
        cli.add_run_arguments(parser)
        status = cli.run(parser.parse_args(list(arguments)))
    else:
        cli.add_replay_arguments(parser)
        status = cli.replay(parser.parse_args(list(arguments)))
    captured = capsys.readouterr()
    return status, captured.err


def scenario_file(directory: Path, faults: str, extra: str = "") -> Path:
    path = directory / "bad.toml"
    path.write_text(f'name = "bad"\nhours = 1.0\n{faults}\n{extra}\n')
    return path


def refused(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    *arguments: str,
    command: str = "run",
) -> str:
    out = tmp_path / "out"
    status, error = run_cli(
        capsys, command, *arguments, "--out", str(out), *(("--users", "100") * (command == "run"))
    )
    assert status == 1, error
    assert error.startswith(f"tally sim {command}: "), error
    assert "Traceback" not in error
    assert not out.exists()  # refused before the run: nothing was simulated or written
    return error


FAULT_CASES = [
    (
        '[[faults]]\nkind = "dc_outage"\ntarget = "dc9"\nat = "30%"',
        "`faults[0].target`: unknown data center 'dc9' (known: dc1, dc2, dc3)",
    ),
    (
        '[[faults]]\nkind = "region_outage"\ntarget = "c"\nat = "30%"',
        "`faults[0].target`: unknown region 'c' (known: a, b)",
    ),
    (
        '[[faults]]\nkind = "link_partition"\ntarget = "a-x"\nat = "30%"',
        "`faults[0].target`: 'a-x': unknown end 'x' (data centers: dc1, dc2, dc3; regions: a, b)",
    ),
    (
        '[[faults]]\nkind = "link_degradation"\ntarget = "dc1"\nat = "30%"\nloss = 0.1',
        "`faults[0].target`: 'dc1': a link is \"x-y\"",
    ),
    (
        '[[faults]]\nkind = "link_flapping"\ntarget = "dc1-dc1"\nat = "30%"',
        "`faults[0].target`: 'dc1-dc1': both ends are the same data centers",
    ),
    (
        '[[faults]]\nkind = "link_partition"\ntarget = "dc1-dc2"\nat = "30%"\n'
        'direction = "sideways"',
        "`faults[0].direction`: 'sideways' is not one of both, forward, backward",
    ),
    (
        '[[faults]]\nkind = "slow_disk"\ntarget = "dc2"\nat = "30%"\nfsync_ms = -5',
        "`faults[0].fsync_ms`: -5 is outside 0..10000",
    ),
    (
        '[[faults]]\nkind = "link_degradation"\ntarget = "a-b"\nat = "30%"\nlatency_ms = -1',
        "`faults[0].latency_ms`: -1 is outside 0..100000",
    ),
    (
        '[[faults]]\nkind = "link_degradation"\ntarget = "a-b"\nat = "30%"\nloss = 1.5',
        "`faults[0].loss`: 1.5 is outside 0..1",
    ),
    (
        '[[faults]]\nkind = "old_primary_returns"\ntarget = "dc1"\nat = "30%"\n'
        "stale_route_fraction = 2",
        "`faults[0].stale_route_fraction`: 2 is outside 0..1",
    ),
    (
        '[[faults]]\nkind = "old_primary_returns"\ntarget = "dc1"\nat = "30%"\nisolated_s = -60',
        "`faults[0].isolated_s`: -60 is outside 0..86400",
    ),
    (
        '[[faults]]\nkind = "random"\nat = "10%"\ncount = 0',
        "`faults[0].count`: 0 is outside 1..64",
    ),
    (
        '[[faults]]\nkind = "link_flapping"\ntarget = "dc1-dc2"\nat = "30%"\n'
        "period_s = 5\ndown_s = 8",
        "`faults[0].down_s`: 8 is above period_s (5)",
    ),
    (
        '[[faults]]\nkind = "dc_outage"\ntarget = "dc1"\nat = -10',
        "`faults[0].at`: -10: a time is a finite number of seconds >= 0",
    ),
    (
        '[[faults]]\nkind = "dc_outage"\ntarget = "dc1"\nat = "2h"',
        "`faults[0].at`: 7200s is not inside the 3600 s traffic window",
    ),
    (
        '[[faults]]\nkind = "dc_outage"\ntarget = "dc1"\nat = "100%"',
        "`faults[0].at`: a fault must start before the traffic window ends (< 100%)",
    ),
    (
        '[[faults]]\nkind = "dc_outage"\ntarget = "dc1"\nat = "30%"\nduration = "0s"',
        "`faults[0].duration`: must be above 0",
    ),
    (
        '[[faults]]\nkind = "dc_outage"\nat = "30%"',
        "`faults[0].target`: dc_outage needs a target: a data center",
    ),
    (
        '[[faults]]\nkind = "primary_crash"\ntarget = "dc1"\nat = "30%"',
        "`faults[0].target`: primary_crash takes no target (got 'dc1')",
    ),
    (
        '[[faults]]\nkind = "dc_meltdown"\ntarget = "dc1"\nat = "30%"',
        "`faults[0].kind`: 'dc_meltdown' is not one of dc_outage, region_outage",
    ),
]


@pytest.mark.parametrize(("faults", "message"), FAULT_CASES)
def test_bad_faults_are_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, faults: str, message: str
) -> None:
    """Every fault's target exists in the topology, its kind, direction and parameters are
    in range, its times are non-negative and inside the traffic window."""
    path = scenario_file(tmp_path, faults)
    error = refused(capsys, tmp_path, "--scenario", str(path))
    assert f"{path}: {message}" in error, error


def test_bad_topology_overrides_are_the_scenarios_mistakes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A scenario's [topology] overrides are checked like the topology file, and their
    problems are reported against the scenario's file and its `topology.` keys."""
    path = scenario_file(
        tmp_path,
        "",
        "[topology.failover]\noperator_delay = 5\n[topology.data_centers.dc2]\nfsync_ms = -1",
    )
    error = refused(capsys, tmp_path, "--scenario", str(path))
    assert f"{path}: `topology.failover.operator_delay`: unknown key" in error, error
    assert f"{path}: `topology.data_centers.dc2.fsync_ms`: -1 is outside 0.0..10000" in error


TARGET_CASES = [
    ("[targets]\nrto = 60", "`targets.rto`: unknown target (metrics: rpo_transfers,"),
    ("[targets.city]\nrto_s = 60", "`targets.city`: unknown target"),
    ("[targets.region]\nrpo_minutes = 5", "`targets.region.rpo_minutes`: unknown target metric"),
    ("[targets]\navailability = 1.5", "`targets.availability`: 1.5 is outside 0..1"),
    ("[targets]\nrto_s = -1", "`targets.rto_s`: -1 is outside 0..2.592e+06"),
    ('[targets]\nrto_s = "about a minute"', "`targets.rto_s`: expected a number or a bound"),
    ("[expect]\nlost = 0", "`expect.lost`: unknown expectation"),
]


@pytest.mark.parametrize(("table", "message"), TARGET_CASES)
def test_bad_targets_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, table: str, message: str
) -> None:
    """The [targets] table names known metrics and failure classes with bounds in range."""
    path = scenario_file(tmp_path, "", table)
    error = refused(capsys, tmp_path, "--scenario", str(path))
    assert f"{path}: {message}" in error, error


OPTION_CASES = [
    (("--seed", "-1"), f"--seed must be in 0..{(1 << 63) - 1}, not -1"),
    (("--seed", str(1 << 64)), f"--seed must be in 0..{(1 << 63) - 1}, not {1 << 64}"),
    (("--users", "1"), "--users must be in 2..200000000, not 1"),
    (("--users", "300000000"), "--users must be in 2..200000000, not 300000000"),
    (("--hours", "0"), "--hours must be in (0, 720]"),
    (("--hours", "nan"), "--hours must be in (0, 720]"),
    (("--step-ms", "0"), "--step-ms must be in 1..1000"),
    (("--postings-per-user", "-3"), "--postings-per-user must be in (0, 10000]"),
    (("--drain-max-s", "0"), "--drain-max-s must be in (0, 86400], not 0.0"),
    (("--drain-max-s", "inf"), "--drain-max-s must be in (0, 86400], not inf"),
    (
        ("--plant-bug", "ack-late"),
        "--plant-bug: unknown bug 'ack-late' (known: ack-before-sync-replica",
    ),
]


@pytest.mark.parametrize(("options", "message"), OPTION_CASES)
def test_bad_options_are_refused(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    options: tuple[str, ...],
    message: str,
) -> None:
    """Seeds, counts, times and the planted bug's name are checked before anything is built."""
    users_given = "--users" in options
    arguments = options if users_given else (*options, "--users", "100")
    out = tmp_path / "out"
    status, error = run_cli(capsys, "run", *arguments, "--out", str(out))
    assert status == 1 and "Traceback" not in error, error
    assert error == f"tally sim run: {message}\n" or message in error, error
    assert not out.exists()


def test_outputs_that_cannot_be_written_are_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--out naming a file, --save-trace naming a directory or a path under a file: exit 1
    before anything runs, not an OSError after the simulation."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for options, message in (
        (("--out", str(a_file)), f"--out {a_file}: must be a directory"),
        (("--save-trace", str(tmp_path)), f"--save-trace {tmp_path}: must be a file"),
        (
            ("--save", str(a_file / "reports")),
            f"--save {a_file / 'reports'}: cannot be created ({a_file} is not a writable",
        ),
    ):
        arguments = options if "--out" in options else (*options, "--out", str(tmp_path / "o"))
        status, error = run_cli(capsys, "run", *arguments, "--users", "100")
        assert status == 1 and message in error, error
        assert not (tmp_path / "o").exists()


def test_replay_refuses_bad_options_and_scenarios(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`tally sim replay` checks the same before it reads its source."""
    missing = str(tmp_path / "no-such.trace")
    error = refused(capsys, tmp_path, missing, "--seed", "-5", command="replay")
    assert "--seed must be in 0.." in error
    error = refused(capsys, tmp_path, missing, "--plant-bug", "nope", command="replay")
    assert "--plant-bug: unknown bug 'nope'" in error
    path = scenario_file(tmp_path, '[[faults]]\nkind = "slow_disk"\ntarget = "dc7"\nat = 5')
    error = refused(capsys, tmp_path, missing, "--scenario", str(path), command="replay")
    assert "`faults[0].target`: unknown data center 'dc7'" in error


def test_every_problem_of_a_file_is_listed_one_per_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file with several mistakes lists them all, one line each, naming file and key."""
    path = scenario_file(
        tmp_path,
        '[[faults]]\nkind = "slow_disk"\ntarget = "dc2"\nat = "30%"\nfsync_ms = -1\n'
        '[[faults]]\nkind = "link_partition"\ntarget = "dc1-dc3"\nat = "40%"\n'
        'direction = "up"',
    )
    error = refused(capsys, tmp_path, "--scenario", str(path))
    lines = error.removeprefix("tally sim run: ").strip().splitlines()
    assert len(lines) == 2, error
    assert all(line.startswith(f"{path}: `faults[") for line in lines), error


def test_the_issues_examples_give_no_traceback(tmp_path: Path) -> None:
    """The issue's cases through the real command line: an unknown DC in a fault and a
    negative seed exit 1 with one line each, and no traceback."""
    path = scenario_file(tmp_path, '[[faults]]\nkind = "dc_outage"\ntarget = "dc4"\nat = "50%"')
    result = tally("sim", "run", "--users", "100", "--scenario", str(path), "--out", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == (
        f"tally sim run: {path}: `faults[0].target`: unknown data center 'dc4'"
        " (known: dc1, dc2, dc3)\n"
    )
    result = tally("sim", "run", "--users", "100", "--seed", "-1", "--out", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("tally sim run: --seed must be in 0..")
