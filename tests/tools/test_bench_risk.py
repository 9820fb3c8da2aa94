"""`tally bench risk` and the risk pairs of `tally bench http`: small runs print every
figure they name; a decision of a full call is as late as its call; the open-loop figures
are per decision from arrival; the page renders the risk bench. No timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from core.bench.page import load_reports, render
from core.bench.risk import Pass, batch_size_max, latency_percentiles, stream_figures
from core.data import DEFAULT_CHANNELS_PATH
from tests.repo_paths import REPO_ROOT

RISK_FIGURES = (
    "p50_us",
    "p99_us",
    "max_us",
    "achieved_per_s",
    "call_size_median",
    "decisions_per_s",
    "batch_call_p50_us",
    "batch_call_p99_us",
    "batch_call_max_us",
    "kernel_decisions_per_s",
    "kernel_p99_us",
    "single_decisions_per_s",
    "single_p50_us",
    "single_p99_us",
)


def tally(*words: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *words], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=900, check=False, env=env,
    )  # fmt: skip


def test_a_decision_is_as_late_as_the_call_it_was_made_in() -> None:
    """A call of 99 postings taking 1 ms and one of 1 posting taking 10 us: the median
    decision and the p99 are the slow call's, whose postings are 99% of the decisions."""
    figures = latency_percentiles([10_000, 1_000_000], [1, 99])
    assert figures == {"p50_us": 1000.0, "p99_us": 1000.0, "max_us": 1000.0}
    # The other way round: 99 decisions of a fast call; the p99 is the 99th decision.
    figures = latency_percentiles([10_000, 1_000_000], [99, 1])
    assert figures["p50_us"] == 10.0 and figures["p99_us"] == 10.0
    assert figures["max_us"] == 1000.0


def test_an_open_loop_decision_is_late_by_its_wait_and_its_call() -> None:
    """At 1,000 postings/s (one per ms): posting 0 screened alone, done at 0.5 ms; posting
    1 (arrived at 1 ms) and posting 2 (arrived at 2 ms) screened together, done at 3 ms.
    Latencies: 0.5, 2 and 1 ms; the stage achieved 3 postings in 3 ms."""
    timed = Pass()
    timed.call_sizes.extend([1, 2])
    timed.call_ns.extend([500_000, 1_000_000])
    figures = stream_figures(timed, [500_000, 3_000_000], 1_000)
    assert figures["p50_us"] == 1000.0
    assert figures["p99_us"] == figures["max_us"] == 2000.0
    assert figures["achieved_per_s"] == pytest.approx(1_000)
    assert figures["call_size_median"] == 1.5


def test_the_batch_size_is_the_internal_channels_batch_size_max() -> None:
    """The default batch is the batch route's: the internal channel's `batch_size_max`."""
    with open(DEFAULT_CHANNELS_PATH, "rb") as file:
        channels = tomllib.load(file)["channels"]
    internal = [entry for entry in channels.values() if entry["kind"] == "internal"]
    assert internal and batch_size_max() == internal[0]["batch_size_max"]


def test_small_run_prints_every_figure_and_the_page_renders_it(tmp_path: Path) -> None:
    """A small run with the shipped rules: the issue's keys (the open-loop latency and the
    rate it achieved, the capacity on full calls), the full calls' durations and the
    single path, the rule count, the CPU model, the batch size of the batch route; each
    pass listed by path; saved, the page has a section for it with its targets."""
    saved = tmp_path / "reports"
    done = tally(
        "bench", "risk", "--postings", "30000", "--accounts", "3000", "--singles", "300",
        "--repeat", "2", "--json", "--save", str(saved),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in RISK_FIGURES:
        assert report[key] > 0, key
    assert report["p50_us"] <= report["p99_us"] <= report["max_us"]
    assert report["batch_call_p50_us"] <= report["batch_call_p99_us"]
    assert report["batch_call_p99_us"] <= report["batch_call_max_us"]
    assert report["call_size_median"] <= report["batch"]
    assert "stream_p99_us" not in report and "offered_per_s" not in report
    assert report["rules"] == 20
    assert report["batch"] == batch_size_max()
    assert report["cpu"] and report["cpu"] in report["machine"]
    for path in ("stream", "service", "kernel", "single"):
        assert len(report["passes_decisions_per_s"][path]) == 2, path
        assert len(report["passes_p99_us"][path]) == 2, path
    # The headline is the open-loop passes' median, not the full calls'.
    stream = report["passes_p99_us"]["stream"]
    assert min(stream) <= report["p99_us"] <= max(stream)
    # The generated traffic reaches the amount-gated rules: some postings had a rule fire.
    assert report["fired_percent"] > 0
    # With --json nothing but the report is printed (no progress bar, no table).
    assert len(done.stdout.strip().splitlines()) == 1
    page = render(load_reports(str(saved)))
    assert "## `tally bench risk`" in page
    assert "| `p99_us` |" in page and "<= 1,000" in page


def test_bad_rule_file_is_refused_with_its_error(tmp_path: Path) -> None:
    """A rule file that does not validate: exit 2, the file named in the message."""
    bad = tmp_path / "bad-risk.toml"
    bad.write_text('version = 1\n[[rules]]\nname = "x"\ntype = "nonsense"\noutcome = "block"\n')
    done = tally("bench", "risk", "--rules", str(bad), "--postings", "10", "--json")
    assert done.returncode == 2
    assert "bad-risk.toml" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install -y wrk)")
def test_http_risk_pairs_report_both_rates_and_their_ratio(tmp_path: Path) -> None:
    """`tally bench http --risk-only`: one pair of 1-second passes with the shipped rules
    and without; both rates, the ratio, every transfer posted, no rule fired on them."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
    done = tally(
        "bench", "http", "--servers", "hypercorn", "--risk-only", "--risk-pairs", "1",
        "--seconds", "1", "--risk-accounts", "64", "--json", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["single_risk_requests_per_s"] > 0
    assert report["single_no_risk_requests_per_s"] > 0
    assert report["risk_rate_ratio"] == round(
        report["single_risk_requests_per_s"] / report["single_no_risk_requests_per_s"], 3
    )
    assert report["risk_pair_ratios"] == [report["risk_rate_ratio"]]
    assert "risk_server_cpu_us_added_per_request" in report
    assert report["single_risk_non_2xx"] == 0 and report["single_no_risk_non_2xx"] == 0
    assert set(report["single_risk_ledger_results"]) == {"ok"}
    assert len(report["passes_requests_per_s"]["single_risk"]) == 1
    assert report["risk_fired_in_passes"] == 0  # the traffic looks legitimate to the rules
    assert "single_transfer_requests_per_s" not in report  # --risk-only: that phase skipped


def test_a_report_saved_before_the_open_loop_headline_loads_under_todays_names(
    tmp_path: Path,
) -> None:
    """Reports saved when `p99_us` was the full call's duration and `stream_p99_us` the
    open-loop figure: the page reads them with `p99_us` the open-loop one."""
    old = {
        "benchmark": "risk", "p50_us": 7000.0, "p99_us": 8800.0, "max_us": 9000.0,
        "stream_p50_us": 20.0, "stream_p99_us": 6000.0, "stream_max_us": 11000.0,
        "stream_achieved_per_s": 499_996.0, "stream_call_size_median": 6.0,
        "stream_offered_per_s": 500_000, "passes_p99_us": {"service": [8800.0]},
        "passes_stream_p99_us": [6000.0],
    }  # fmt: skip
    (tmp_path / "risk-old.json").write_text(json.dumps(old))
    (report,) = load_reports(str(tmp_path))
    assert (report["p50_us"], report["p99_us"], report["max_us"]) == (20.0, 6000.0, 11000.0)
    assert report["batch_call_p99_us"] == 8800.0 and report["batch_call_max_us"] == 9000.0
    assert report["achieved_per_s"] == 499_996.0 and report["call_size_median"] == 6.0
    assert report["passes_p99_us"] == {"service": [8800.0], "stream": [6000.0]}
    assert not any(key.startswith("stream_") for key in report)
