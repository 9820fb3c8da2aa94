"""`tally sim run | scenarios | replay`: the failover simulator's command line.

`run` generates a day of traffic for N users and plays it through the
topology under a scenario's faults; `replay` plays a saved trace or a journal
captured from a real `tally serve` instead. Both write report.json,
report.html (with PNG charts) and lost_transfers.csv to --out and print a
summary; the exit status is 0 when the verdict passes (invariants, targets and
the scenario's expectations: sim/verdict.py), 3 when it fails (a `--plant-bug`
mutation run that is caught exits 3 too), 1 on a bad input, refused before the
run starts. `bugs` lists the planted bugs and the scenarios that expose them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from core.errors import TallyError

from .bugs import PLANTED_BUGS
from .model import SimConfig, SimError, builtin_scenarios, load_scenario

EXIT_VERDICT_FAILED = 3


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--users", type=int, default=30_000_000, help="customers (default 30,000,000)"
    )
    parser.add_argument(
        "--hours", type=float, default=None, help="simulated hours (default: the scenario's)"
    )
    parser.add_argument(
        "--start",
        default=None,
        metavar="LOCAL",
        help="when the window starts on the bank's clock, e.g. 2026-12-20T23:50 (a window"
        " crossing midnight runs the day-end; default: the scenario's, else"
        " 2026-11-11T00:00)",
    )
    _common(parser)
    parser.add_argument(
        "--postings-per-user",
        type=float,
        default=None,
        help="postings per customer per day (default: 1.0 normal, 2.4 campaign)",
    )
    parser.add_argument(
        "--loan-share",
        type=float,
        default=None,
        help="share of the customers holding a loan disbursed before the day (default 0.03)",
    )
    parser.add_argument(
        "--loans-per-user-day",
        type=float,
        default=None,
        help="new loans disbursed during the run, per customer and day (default 0.0001)",
    )
    parser.add_argument(
        "--save-trace",
        metavar="FILE",
        default=None,
        help="also save the generated traffic as a trace",
    )
    parser.add_argument(
        "--save",
        metavar="DIR",
        default=None,
        help="also write the headline figures as a benchmark report into DIR (for BENCHMARKS.md)",
    )


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="a trace file (tally sim run --save-trace) or a store: a journal directory,"
        " journal:DIR or postgresql://...",
    )
    _common(parser)


def add_scenarios_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose", action="store_true", help="also list each scenario's faults and expectations"
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario", default="dc1-outage", help="a built-in scenario name or a scenario file"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--out", default="sim-out", help="directory for report.json, report.html and charts"
    )
    parser.add_argument(
        "--topology", default=None, help="topology file (default: sim/topology.toml)"
    )
    parser.add_argument("--step-ms", type=float, default=50.0, help="simulated time per step")
    parser.add_argument(
        "--drain-max-s",
        type=float,
        default=1800.0,
        help="longest convergence wait after the traffic",
    )
    parser.add_argument(
        "--json", action="store_true", help="print only the report's JSON summary line"
    )
    parser.add_argument(
        "--plant-bug",
        metavar="NAME",
        default=None,
        help="mutation run: plant a known bug the checker must catch (exit 3 when caught);"
        " `tally sim bugs` lists them",
    )
    parser.add_argument(
        "--profile",
        metavar="NAME",
        default=None,
        help="the deployment profile (sim/profiles.py: production, the bank's Patroni"
        " deployment, by default; consensus, the old model's protections); default: the"
        " scenario's, else the topology's",
    )
    parser.add_argument(
        "--drill",
        default=None,
        metavar="FILE",
        help="a `tally drill failover --json` report to show beside the simulation's result",
    )


def run(args: argparse.Namespace) -> int:
    config = SimConfig(
        users=args.users,
        hours=args.hours,
        seed=args.seed,
        scenario=args.scenario,
        topology=args.topology,
        step_ms=args.step_ms,
        postings_per_user=args.postings_per_user,
        out=args.out,
        save_trace=args.save_trace,
        drain_max_s=args.drain_max_s,
        quiet=bool(args.json),
        plant_bug=args.plant_bug,
        profile=args.profile,
        start=args.start,
        loan_share=args.loan_share,
        loans_per_user_day=args.loans_per_user_day,
    )
    try:
        return execute(
            config, replay_source=None, print_json=bool(args.json), save=args.save, drill=args.drill
        )
    except TallyError as error:
        print(f"tally sim run: {error}", file=sys.stderr)
        return 1


def replay(args: argparse.Namespace) -> int:
    config = SimConfig(
        users=2,
        seed=args.seed,
        scenario=args.scenario,
        topology=args.topology,
        step_ms=args.step_ms,
        out=args.out,
        drain_max_s=args.drain_max_s,
        quiet=bool(args.json),
        plant_bug=args.plant_bug,
        profile=args.profile,
    )
    try:
        return execute(
            config, replay_source=args.source, print_json=bool(args.json), drill=args.drill
        )
    except TallyError as error:
        print(f"tally sim replay: {error}", file=sys.stderr)
        return 1


def scenarios(args: argparse.Namespace) -> int:
    try:
        loaded = {name: load_scenario(name) for name in builtin_scenarios()}
    except TallyError as error:
        print(f"tally sim scenarios: {error}", file=sys.stderr)
        return 1
    for name, scenario in loaded.items():
        first_sentence = scenario.description.split(". ")[0].rstrip(".") + "."
        print(f"{name:40} {scenario.traffic:9} {scenario.hours:>5g} h  {first_sentence}")
        if args.verbose:
            for fault in scenario.faults:
                extra = " ".join(f"{key}={value}" for key, value in fault.params.items())
                duration = fault.duration.describe() if fault.duration else "to the end"
                when = f"at {fault.at.describe()} for {duration}"
                print(f"{'':42}- {fault.kind} {fault.target} {when} {extra}")
            print(f"{'':42}  expect: {json.dumps(scenario.expect)}")
            if scenario.targets:
                print(f"{'':42}  targets: {json.dumps(_targets_text(scenario.targets))}")
            exposing = [bug.name for bug in PLANTED_BUGS.values() if name in bug.exposed_by]
            if exposing:
                print(f"{'':42}  exposes planted bugs: {', '.join(exposing)}")
    if args.verbose:
        print()
        bugs(args)
    return 0


def _targets_text(targets: dict[str, dict[str, tuple[str, float]]]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for failure_class, bounds in targets.items():
        texts = {metric: f"{op} {bound:g}" for metric, (op, bound) in bounds.items()}
        if failure_class:
            shown[failure_class] = texts
        else:
            shown.update(texts)
    return shown


def add_bugs_arguments(parser: argparse.ArgumentParser) -> None:
    """`tally sim bugs` takes no options."""


def bugs(args: argparse.Namespace) -> int:
    """The planted bugs for mutation runs and the built-in scenarios that expose them."""
    for bug in PLANTED_BUGS.values():
        print(f"{bug.name}: {bug.description}")
        print(f"  exposed by: {', '.join(bug.exposed_by)}")
        print(f"  try: tally sim run --plant-bug {bug.name} --scenario {bug.exposed_by[0]}")
    return 0


def execute(
    config: SimConfig,
    *,
    replay_source: str | None,
    print_json: bool,
    save: str | None = None,
    drill: str | None = None,
) -> int:
    """Run one simulation and write its report; the exit status."""
    from . import api
    from . import report as report_module

    drill_report = report_module.load_drill(drill) if drill else None  # before the run
    out = config.out or "sim-out"
    check_writable("--out", out, directory=True)
    if save:
        check_writable("--save", save, directory=True)
    if config.save_trace:
        check_writable("--save-trace", config.save_trace, directory=False)
    report, simulation = api.simulate(config, replay_source=replay_source)
    if drill_report is not None and drill is not None:
        report["drill"] = report_module.drill_comparison(report, drill_report, drill)
    files = api.write(report, simulation, out)
    if save:
        save_benchmark(report, save)
    if print_json:
        print(json.dumps(_headline(report) | {"out": out}, sort_keys=True))
    else:
        print(report_module.summary(report))
        print(f"  report: {files['report_html']}")
    return 0 if report["verdict"]["pass"] else EXIT_VERDICT_FAILED


def check_writable(option: str, path: str, *, directory: bool) -> None:
    """An output path the run could not write is refused before the run, not after it."""
    if os.path.exists(path):
        if directory != os.path.isdir(path):
            kind = "a directory" if directory else "a file"
            raise SimError(f"{option} {path}: must be {kind}")
        if not os.access(path, os.W_OK):
            raise SimError(f"{option} {path}: not writable")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise SimError(f"{option} {path}: cannot be created ({parent} is not a writable directory)")


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "seed",
        "scenario",
        "users",
        "hours",
        "requests",
        "postings",
        "acknowledged_lost",
        "duplicates",
        "rpo_transfers",
        "unexpected_lost",
        "lost_single_copy",
        "rto_s",
        "no_ack_s_max",
        "failovers",
        "converged",
        "money_conserved",
        "limits_respected",
        "digest",
        "wall_s",
        "simulated_to_wall_ratio",
        "peak_rss_gib",
    )
    return {key: report.get(key) for key in keys} | {
        "pass": report["verdict"]["pass"],
        "failures": report["verdict"].get("failures", []),
        "plant_bug": report.get("plant_bug"),
    }


ONBOARDING_FIGURES = (
    "onboarding_applicants",
    "onboarding_rejected",
    "onboarding_unverified_accounts",
    "onboarding_unverified_debited",
)


def save_benchmark(report: dict[str, Any], directory: str) -> None:
    """The headline figures as a `benchmarks/*.json` report, the source of BENCHMARKS.md."""
    from core.reports import machine_description, save_report

    figures: dict[str, Any] = _headline(report) | {
        "benchmark": "sim",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "command": "tally " + " ".join(sys.argv[1:]),
        "acknowledged": report["acknowledged"],
        "unexpected_lost": report["unexpected_lost"],
        "latency_ms_p99": report["latency"]["overall"].get("p99_ms"),
        "availability": report["availability"].get("overall"),
        "timings": report["timings"],
    }
    # The day's applicants, verified before any account (sim/onboarding.py).
    for key in ONBOARDING_FIGURES:
        if key in report:
            figures[key] = report[key]
    drill = report.get("drill")
    if not (drill and drill.get("rto_ratio_sim_to_drill")):
        save_report(figures, directory)
    else:
        # The simulator beside the real drill for the same failure (`--drill FILE`): its own
        # section of BENCHMARKS.md, so the 30M-user headline stays the "sim" section.
        ratio = float(drill["rto_ratio_sim_to_drill"])
        save_report(
            {
                "benchmark": "sim_drill",
                "date": figures["date"],
                "machine": figures["machine"],
                "command": figures["command"],
                "scenario": report["scenario"],
                "users": report["users"],
                "seed": report["seed"],
                "drill_file": drill["file"],
                "drill_failover_manager": drill.get("failover_manager"),
                "sim_rto_s": drill["sim"]["rto_s"],
                "drill_rto_s": drill["drill"]["rto_s"],
                "rto_ratio_sim_to_drill": ratio,
                "rto_factor": round(max(ratio, 1 / ratio), 3),
                "sim_acknowledged_lost": drill["sim"]["acknowledged_lost"],
                "drill_acknowledged_lost": drill["drill"]["acknowledged_lost"],
                "pass": report["verdict"]["pass"],
            },
            directory,
        )
