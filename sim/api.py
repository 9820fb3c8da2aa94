"""Run the simulator from Python: `simulate(config)` returns the report and the run.

The command line (`sim/cli.py`) and the tests both go through here.
"""

from __future__ import annotations

import time
from typing import Any

from core.store import is_store_url

from . import report as report_module
from . import traffic as traffic_module
from .model import (
    NS_PER_MS,
    NS_PER_S,
    Scenario,
    SimConfig,
    SimError,
    Topology,
    check_scenario_against,
    load_scenario,
    load_topology,
)
from .simulation import Simulation


def simulate(
    config: SimConfig, *, replay_source: str | None = None
) -> tuple[dict[str, Any], Simulation]:
    """Build, run and check one simulation; the report is not written anywhere yet."""
    started = time.perf_counter()
    config.check()
    scenario = load_scenario(config.scenario)
    topology = _topology_of(config, scenario)
    hours = config.hours if config.hours is not None else scenario.hours
    check_scenario_against(scenario, topology, hours * 3600 if replay_source is None else None)
    traffic = None
    if replay_source is not None:
        step_ns = round(config.step_ms * NS_PER_MS)
        if is_store_url(replay_source):  # a data directory, journal:DIR, postgresql://...
            traffic = traffic_module.load_journal(replay_source, step_ns)
        else:
            traffic, _ = traffic_module.load_trace(replay_source, step_ns)
        check_scenario_against(scenario, topology, traffic.steps * step_ns / NS_PER_S)
    simulation = Simulation(config, scenario, topology, traffic=traffic)
    if config.save_trace:
        traffic_module.save_trace(
            simulation.traffic, config.save_trace, {"seed": config.seed, "step_ms": config.step_ms}
        )
    results = simulation.run()
    report = report_module.build(simulation, results, config, time.perf_counter() - started)
    return report, simulation


def _topology_of(config: SimConfig, scenario: Scenario) -> Topology:
    """The topology with the scenario's [topology] overrides. When the topology file alone is
    sound, its problems are the scenario's: they are reported against the scenario's file."""
    try:
        return load_topology(config.topology, scenario.topology_overrides)
    except SimError as error:
        if not scenario.topology_overrides:
            raise
        base = load_topology(config.topology)  # raises on a problem of the file itself
        prefix = f"{base.source}: `"
        lines = [
            f"{scenario.source}: `topology.{line[len(prefix) :]}"
            if line.startswith(prefix)
            else line
            for line in str(error).splitlines()
        ]
        raise SimError("\n".join(lines)) from None


def write(report: dict[str, Any], simulation: Simulation, out: str) -> dict[str, str]:
    """Write report.json, report.html, the charts and lost_transfers.csv into `out`."""
    return report_module.write(report, simulation, out)
