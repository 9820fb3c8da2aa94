"""The failover simulator end to end: every built-in scenario at small scale, the planted bug,
and the report files.

Each run simulates 20,000 customers for a quarter of an hour at 500 postings
per customer per day (about 90 transfers a second, so a lost batch is never
empty), through the default topology, with a fixed seed printed on failure
(tests/simulator/sim_runs.py). Runs are cached there: one run serves every
assertion about it, in every test file.
"""

from __future__ import annotations

import copy
import csv
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from cext import simgen
from sim import plot
from sim.api import write
from sim.model import builtin_scenarios
from sim.report import report_digest
from tests.simulator.sim_runs import HOURS, POSTINGS_PER_USER, run
from tests.simulator.sim_runs import SEED as SEED  # the default test scale, for other files
from tests.simulator.sim_runs import USERS as USERS


def context(report: dict[str, Any]) -> str:
    return (
        f"seed={report['seed']} scenario={report['scenario']}"
        f" verdict={json.dumps(report['verdict'])}"
        f" failovers={json.dumps(report['failover_list'])}"
    )


# Built-in scenarios whose verdict fails today, with the targets that fail: the model stops
# writing for minutes in random-faults (a failover from dc1 to dc1 decided by an operator
# after 420 s; availability 0.48, half the requests given up). A scenario leaves this list
# when the deployment it simulates meets its targets.
FAILING_TARGETS = {"random-faults": {"rto_s", "availability", "no_ack_s_max", "given_up_share"}}


@pytest.mark.parametrize("scenario", sorted(builtin_scenarios()))
def test_every_builtin_scenario_passes_its_expectations(scenario: str) -> None:
    """Each built-in scenario, scaled down, meets its own [expect] table, its targets and
    every invariant: no duplicates, money conserved, limits respected, timestamps
    increasing, same results; those in FAILING_TARGETS fail exactly those targets."""
    report, _ = run(scenario)
    verdict = report["verdict"]
    assert all(verdict["invariants"].values()), context(report)
    assert all(item["ok"] for item in verdict["expectations"]), context(report)
    failed = {item["name"] for item in verdict["targets"] if not item["met"]}
    assert failed == FAILING_TARGETS.get(scenario, set()), context(report)
    assert verdict["pass"] is (scenario not in FAILING_TARGETS), context(report)
    assert report["duplicates"] == 0, context(report)
    assert report["money_conserved"] and report["limits_respected"], context(report)
    assert report["converged"], context(report)
    assert report["postings"] > 0 and report["acknowledged"] > 0, context(report)


def test_dc1_outage_promotes_the_sync_replica_and_loses_nothing() -> None:
    """DC1 dies mid-batch: Patroni promotes DC2 (sync, same city) once DC1's leader key expires,
    no acknowledged transfer is lost, and DC1's unreplicated last batch is discarded by a
    resync."""
    report, _ = run("dc1-outage")
    assert report["acknowledged_lost"] == 0, context(report)
    [failover] = report["failover_list"]
    assert (failover["from"], failover["to"], failover["kind"]) == ("dc1", "dc2", "same_city")
    assert failover["decided_by"] == "patroni"
    assert failover["new_primary_was_sync_standby"]
    assert 3 <= report["rto_s"] <= 30, context(report)
    resyncs = [item for item in report["resyncs"] if item["dc"] == "dc1"]
    assert resyncs and resyncs[0]["reason"] == "divergent log", report["resyncs"]
    assert report["answered_exists"] > 0  # retries after the failover found their transfer


def test_region_a_outage_reports_the_rpo_by_id() -> None:
    """Losing region A forces an operator promotion of the async DC3: the acknowledged
    transfers DC3 never received are the RPO, counted, summed and listed by id, and
    nothing else is lost."""
    report, simulation = run("region-a-outage")
    assert report["rpo_transfers"] > 0, context(report)
    assert report["acknowledged_lost"] == report["rpo_transfers"], context(report)
    assert report["unexpected_lost"] == 0
    [failover] = report["failover_list"]
    assert (failover["to"], failover["kind"], failover["decided_by"]) == (
        "dc3",
        "cross_region",
        "operator",
    )
    assert report["rto_s"] >= 120  # the scenario's operator delay
    rpo = report["rpo"]
    assert rpo["count"] == report["rpo_transfers"] and rpo["amount_minor"] > 0
    assert len(rpo["ids"]) == min(rpo["count"], 1000)
    assert rpo["window_start_s"] <= rpo["window_end_s"] <= failover["primary_lost_s"] + 1
    primary = simulation.dcs[report["final_primary"]].ledger
    for transfer_id in rpo["ids"]:
        value = int(transfer_id, 16)
        assert value >> 64 == simgen.REQUEST_ID_HI
        assert primary.lookup_transfer(value) is None  # really gone, by the ledger's own index


def test_region_link_partition_lags_dc3_without_failover() -> None:
    """Cutting the region link keeps the majority side serving: no failover, nothing lost,
    DC3 falls behind for the partition's length and catches up; region B's clients cannot
    reach the primary meanwhile."""
    report, _ = run("region-link-partition")
    assert report["failovers"] == 0 and report["acknowledged_lost"] == 0, context(report)
    partition_s = HOURS * 3600 * 0.2
    assert report["replication_lag_ms"]["dc3"]["max_ms"] > partition_s * 1000 * 0.5
    assert report["replication_lag_ms"]["dc2"]["p99_ms"] < 100
    assert report["availability"]["region_b"] < report["availability"]["region_a"]


def test_old_primary_returning_is_fenced() -> None:
    """DC1 restarts believing it is still the primary, with stale routes sending it requests:
    Patroni finds no leader key of its own and starts it read-only (fenced), so it takes no
    writes, and its divergent last batch is discarded by a resync (pg_rewind)."""
    report, _ = run("old-primary-returns")
    assert report["fenced"], context(report)
    assert report["fences"][0]["dc"] == "dc1" and report["fences"][0]["stale_restart"]
    assert report["stale_primary_batches"] == 0  # read-only: no zombie batches
    assert report["stale_primary_acks"] == 0
    assert report["acknowledged_lost"] == 0
    discarded = [item["discarded_entries"] for item in report["resyncs"] if item["dc"] == "dc1"]
    assert discarded and discarded[0] > 0


def test_campaign_day_has_a_midnight_burst() -> None:
    """The campaign profile peaks several times its daily average just after midnight."""
    report, _ = run("campaign-dc1-outage-link-partition")
    assert report["traffic_profile"]["peak_to_average"] > 5
    assert report["traffic_profile"]["postings_per_user_day"] == POSTINGS_PER_USER
    assert report["failovers"] == 1 and report["acknowledged_lost"] == 0, context(report)


def test_planted_bug_acknowledging_before_the_sync_replica_loses_transfers() -> None:
    """With the test-only bug `ack-before-sync-replica`, DC1 acknowledges the batch it was
    forming when it died: the checker must report those transfers lost, by id, and fail."""
    report, simulation = run("dc1-outage", "ack-before-sync-replica")
    assert report["acknowledged_lost"] > 0, context(report)
    assert report["unexpected_lost"] == report["acknowledged_lost"]  # dc2 was the sync standby
    assert report["lost_single_copy"] == report["acknowledged_lost"]  # only dc1 had them
    assert not report["verdict"]["pass"]
    primary = simulation.dcs[report["final_primary"]].ledger
    lost = simulation.checker.histories[report["final_primary"]].seen
    missing = [
        seq
        for seq in range(simulation.request_count)
        if simulation.ack_result[seq] < 254 and lost[seq] == 0
    ]
    assert len(missing) == report["acknowledged_lost"]
    assert all(primary.lookup_transfer(simgen.request_id(seq)) is None for seq in missing)


def test_planted_bug_loses_the_old_primarys_last_batch() -> None:
    """The same bug in old-primary-returns: DC1's last batch, acknowledged before DC2 had it,
    is lost (the zombie that acknowledges is another bug: test_sim_profiles.py)."""
    report, _ = run("old-primary-returns", "ack-before-sync-replica")
    assert report["acknowledged_lost"] > 0, context(report)
    assert report["single_copy_acks"] > 0
    assert not report["verdict"]["pass"]


def test_report_files_are_written_and_parse(tmp_path: Path) -> None:
    """report.json has the issue's keys, report.html links four real PNG charts, and
    lost_transfers.csv lists the RPO transfers."""
    cached, simulation = run("region-a-outage")
    report = copy.deepcopy(cached)  # write() moves the lost rows out into the CSV
    files = write(report, simulation, str(tmp_path))
    data = json.loads((tmp_path / "report.json").read_text())
    for key in (
        "seed",
        "scenario",
        "users",
        "postings",
        "acknowledged_lost",
        "duplicates",
        "rpo_transfers",
        "rto_s",
        "digest",
        "wall_s",
        "simulated_to_wall_ratio",
        "peak_rss_gib",
        "topology",
        "code_version",
    ):
        assert key in data, key
    assert data["digest"] == report["digest"] and len(data["digest"]) == 64
    page = (tmp_path / "report.html").read_text()
    for name in (
        "throughput.png",
        "latency_p99.png",
        "replication_lag.png",
        "lost_and_retried.png",
    ):
        assert f"src='{name}'" in page
        png = (tmp_path / name).read_bytes()
        width, height = plot.read_png_size(png)
        channels = {2: 3, 6: 4}[png[25]]  # IHDR colour type: RGB or RGBA
        assert _png_pixels_size(png) == height * (1 + channels * width)
    with open(files["lost_transfers"], newline="") as source:
        rows = list(csv.DictReader(source))
    assert len(rows) == data["acknowledged_lost"]
    assert sum(row["rpo"] == "yes" for row in rows) == data["rpo_transfers"]
    assert {row["transfer_id"] for row in rows} >= set(data["rpo"]["ids"])
    # Anyone can recompute the digest from the file: drop the machine fields and hash.
    assert report_digest(data) == data["digest"]
    assert len(data["series"]["acknowledged_per_s"]) == len(data["series"]["p99_ms"]) > 100


def _png_pixels_size(png: bytes) -> int:
    offset, idat = 8, b""
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kind = png[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += png[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return len(zlib.decompress(idat))


def test_latency_is_reported_per_phase_and_region() -> None:
    """Percentiles come per phase (before, during, after each fault) and per client region."""
    report, _ = run("dc1-outage")
    phases = report["latency"]["phases"]
    assert len(phases) == 3 and phases[1]["name"].startswith("during dc_outage")
    for phase in phases:
        assert set(phase["regions"]) == {"a", "b"}
    steady = phases[0]["regions"]
    assert steady["b"]["p50_ms"] > steady["a"]["p50_ms"]  # region B crosses the region link
    assert phases[1]["all"]["p99_ms"] > phases[0]["all"]["p99_ms"]


def test_results_arise_naturally() -> None:
    """Business rejections (limits, insufficient funds, inflow not enabled) come out of the
    kernels on the generated traffic; none are injected."""
    report, _ = run("region-link-partition")
    results = report["results"]
    assert results["ok"] > 0.8 * report["acknowledged"]
    assert results.get("exceeds_credits", 0) > 0
    assert results.get("exceeds_daily_outflow", 0) + results.get("exceeds_channel_daily_cap", 0) > 0
