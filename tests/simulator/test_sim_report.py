"""The drill-grade report: exact latency percentiles, errors per channel and region, the
Gantt of roles and faults, the targets table and a real drill's result beside the run's."""

from __future__ import annotations

import copy
import json
import math
import random
from array import array
from functools import cache
from pathlib import Path
from typing import Any

from cext import simgen
from ledger.records import transfer_view
from ledger.types import TRANSFER_SIZE
from sim import plot
from sim.api import simulate, write
from sim.model import SimConfig
from sim.report import CHART_FILES, kth_smallest, render_html, report_digest, roles_of
from sim.simulation import Simulation
from tests.simulator.test_sim_cli import tally

SMALL = ("--users", "3000", "--hours", "0.05", "--postings-per-user", "300", "--seed", "3")


@cache
def _run() -> tuple[dict[str, Any], Simulation]:
    config = SimConfig(
        users=20_000, hours=0.25, postings_per_user=200, seed=3, scenario="dc1-outage", quiet=True
    )
    return simulate(config)


def run() -> tuple[dict[str, Any], Simulation]:
    report, simulation = _run()
    return copy.deepcopy(report), simulation


def _nearest_rank(values: list[int], share: float) -> int:
    return values[math.ceil(share * len(values)) - 1]


def test_exact_percentiles_match_a_brute_force_computation() -> None:
    """Per region and time bucket, and per region over the run, the report's p50/p99/p999
    are the nearest-rank percentiles of every acknowledged request's latency, recomputed
    here from the per-request samples with Python's sort; each bucket holds as many samples
    as the latency histogram (a separate code path) counted acknowledgements in it."""
    report, sim = run()
    groups: dict[tuple[int, int], list[int]] = {}
    bucket_ms = sim.series_bucket_ns // 1_000_000
    acknowledged = 0
    for seq in range(sim.request_count):
        if sim.ack_result[seq] >= simgen.GAVE_UP:
            continue
        acknowledged += 1
        region = simgen.region_of_request(sim.seed, seq, sim.region_a_share)
        bucket = min(sim.ack_ms[seq] // bucket_ms, sim.series_count - 1)
        groups.setdefault((region, bucket), []).append(sim.latency_us[seq])
    assert acknowledged == sim.clients.acked > 10_000
    assert any(sim.latency_us[seq] > 1_000_000 for seq in range(sim.request_count))  # failover
    buckets = simgen.LATENCY_BUCKETS
    series = report["series"]
    count = len(series["acknowledged_per_s"])
    for bucket in range(count):
        in_histogram = sum(sim.hist_series[bucket * buckets : (bucket + 1) * buckets])
        in_samples = sum(len(groups.get((region, bucket), [])) for region in range(2))
        assert in_samples == in_histogram, bucket
    checked = 0
    for region, name in enumerate(sim.regions[:2]):
        per_region = series["latency_ms"][name]
        for bucket in range(count):
            values = sorted(groups.get((region, bucket), []))
            assert per_region["count"][bucket] == len(values)
            for key, share in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
                expected = _nearest_rank(values, share) / 1000 if values else None
                assert per_region[key][bucket] == expected, (name, bucket, key)
                checked += 1
        everything = sorted(v for (r, _), values in groups.items() if r == region for v in values)
        exact = report["latency"]["exact"][name]
        assert exact["count"] == len(everything)
        assert exact["p99_ms"] == _nearest_rank(everything, 0.99) / 1000
        assert exact["p999_ms"] == _nearest_rank(everything, 0.999) / 1000
        assert exact["max_ms"] == everything[-1] / 1000
    assert checked > 1000
    both = sorted(v for values in groups.values() for v in values)
    for key, share in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        assert report["latency"]["exact"]["all"][f"{key}_ms"] == _nearest_rank(both, share) / 1000
    # The failover's stalled requests show in the buckets after it: p999 above 1 s there.
    failover_s = report["failover_list"][0]["promoted_s"]
    after = int(failover_s // series["bucket_s"])
    assert (
        max(
            (series["latency_ms"]["a"]["p999"][b] or 0)
            for b in range(after, min(count, after + 10))
        )
        > 1000
    )


def test_kth_smallest_across_sorted_groups() -> None:
    """The overall percentile's selection across sorted groups equals a full sort."""
    rng = random.Random(5)
    for _ in range(200):
        groups = [
            memoryview(array("I", sorted(rng.randrange(60) for _ in range(rng.randrange(1, 9)))))
            for _ in range(rng.randrange(1, 6))
        ]
        merged = sorted(value for group in groups for value in group)
        for k in range(len(merged)):
            assert kth_smallest(groups, k) == merged[k]


def test_errors_are_counted_per_channel_and_region() -> None:
    """Every refusal, timeout and give-up is counted once, under the channel its request was
    sent on (the generator's channel_of agrees with the records it makes) and its region."""
    report, sim = run()
    kinds = simgen.ERROR_KINDS
    totals = dict.fromkeys(kinds, 0)
    for index, value in enumerate(sim.errors):
        totals[kinds[index % len(kinds)]] += value
    assert totals == {
        "refused": sim.clients.refusals,
        "timeout": sim.clients.timeouts,
        "gave_up": sim.clients.gave_up,
    }
    assert totals["timeout"] > 0  # dc1 went dark: its clients timed out
    for kind in kinds:
        assert totals[kind] == sum(
            values["total"][kind]
            for per_region in report["series"]["errors_per_s"].values()
            for values in per_region.values()
        )
    bucket_s = report["series"]["bucket_s"]
    in_window = sum(
        sum(values["timeout"]) * bucket_s
        for per_region in report["series"]["errors_per_s"].values()
        for values in per_region.values()
    )
    assert 0 < round(in_window) <= totals["timeout"]
    assert set(report["series"]["errors_per_s"]) <= {"wechat", "app", "open_api"}
    assert sim.traffic.model is not None
    records = bytearray(2000 * TRANSFER_SIZE)
    sim.traffic.model.fill_range(records, 0, 0, 2000)
    made = bytes(transfer_view(records, i * TRANSFER_SIZE).channel for i in range(2000))
    assert sim.traffic.model.channels(0, 2000) == made and len(set(made)) == 3


def test_roles_are_derived_when_the_simulation_gives_none() -> None:
    """The Gantt's rows: without `report["roles"]`, dc1 is primary until the fault, down
    during it, dc2 primary from its promotion; with them, they are drawn as given."""
    report, _ = run()
    report.pop("roles", None)
    roles = roles_of(report)
    failover = report["failover_list"][0]
    fault = report["faults"][0]
    dc1 = [item for item in roles if item["dc"] == "dc1"]
    dc2 = [item for item in roles if item["dc"] == "dc2"]
    assert dc1[0]["role"] == "primary" and dc1[0]["to_s"] == fault["start_s"]
    assert dc1[1] == {
        "dc": "dc1",
        "role": "down",
        "from_s": fault["start_s"],
        "to_s": fault["end_s"],
    }
    assert [item["role"] for item in dc2][-1] == "primary"
    assert any(item["from_s"] == failover["promoted_s"] for item in dc2)
    given = [{"dc": "dc1", "role": "primary", "from_s": 0.0, "to_s": 1.0}]
    assert roles_of(report | {"roles": given}) == given


def test_report_files_targets_and_clock(tmp_path: Path) -> None:
    """write() draws every chart with matplotlib, the HTML names the clock and renders the
    verdict's targets (met and not met), and the digest ignores the drill comparison."""
    report, sim = run()
    report["verdict"]["targets"] = [
        {
            "name": "rto_s",
            "failure_class": "same_city",
            "target": 60,
            "measured": 10.5,
            "met": True,
        },
        {"name": "rpo", "failure_class": "region", "target": 0, "measured": 3, "met": False},
    ]
    digest = report_digest(report)
    report["drill"] = {"anything": 1}
    assert report_digest(report) == digest
    report.pop("drill")
    files = write(report, sim, str(tmp_path))
    for name in CHART_FILES:
        width, height = plot.read_png_size(Path(files[name]).read_bytes())
        assert width >= 1000 and height >= 150, name
    page = (tmp_path / "report.html").read_text()
    assert "Asia/Shanghai" in page and "<tr class='fail'><td>rpo</td>" in page
    assert "<tr class='pass'><td>rto_s</td>" in page
    assert report["clock"]["start"] == "00:00:00"
    assert "latency from exact samples" in render_html(report)


def test_drill_report_beside_the_simulation(tmp_path: Path) -> None:
    """`--drill FILE` puts the drill's RTO and losses beside the simulation's (with their
    ratio) in report.json, the HTML and a chart; the digest is the run's own. A file that
    is no drill report is refused before the run."""
    drill = tmp_path / "drill.json"
    drill.write_text(
        json.dumps(
            {
                "failover_manager": "patroni",
                "rto_s": 8.0,
                "acknowledged_lost": 0,
                "duplicates": 0,
                "customers_lost": 0,
                "passed": True,
            }
        )
    )
    plain = tally(
        "sim", "run", *SMALL, "--scenario", "dc1-outage", "--out", str(tmp_path / "a"), "--json"
    )
    assert plain.returncode == 0, plain.stderr
    result = tally(
        "sim", "run", *SMALL, "--scenario", "dc1-outage", "--out", str(tmp_path / "b"),
        "--drill", str(drill), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    first = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["digest"] == first["digest"] and "drill" not in first
    comparison = report["drill"]
    assert comparison["failover_manager"] == "patroni"
    assert comparison["drill"]["rto_s"] == 8.0 and comparison["sim"]["rto_s"] == report["rto_s"]
    assert comparison["rto_ratio_sim_to_drill"] == round(report["rto_s"] / 8.0, 3)
    assert comparison["both_lost_zero"] is (report["acknowledged_lost"] == 0)
    assert (tmp_path / "b" / "drill.png").exists()
    assert "simulator beside the drill" in (tmp_path / "b" / "report.html").read_text()
    (tmp_path / "bad.json").write_text('{"rto": 1}')
    refused = tally(
        "sim", "run", *SMALL, "--out", str(tmp_path / "c"), "--drill", str(tmp_path / "bad.json")
    )
    assert refused.returncode == 1 and "not a drill report" in refused.stderr
    assert not (tmp_path / "c").exists()
