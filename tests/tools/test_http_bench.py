"""`tally bench http`: a clear refusal without wrk, and (slow) a short run's promised keys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.repo_paths import REPO_ROOT


def tally(*words: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *words], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=600, check=False, env=env,
    )  # fmt: skip


def test_without_wrk_says_how_to_install_it(tmp_path: Path) -> None:
    """With no wrk on PATH the bench exits 2 and names the Debian package to install."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
    env["PATH"] = str(tmp_path)  # an empty directory: no wrk
    done = tally("bench", "http", "--seconds", "1", env=env)
    assert done.returncode == 2
    assert "apt-get install -y wrk" in done.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install -y wrk)")
def test_short_run_reports_every_promised_figure() -> None:
    """A 2-second run on hypercorn prints the issue's keys; every posted transfer was ok."""
    done = tally("bench", "http", "--seconds", "2", "--servers", "hypercorn", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in (
        "single_transfer_requests_per_s",
        "latency_ms_p50",
        "latency_ms_p99",
        "batch_transfers_per_s",
        "batch_binary_transfers_per_s",
        "bare_hypercorn_requests_per_s",
        "client_cpu_percent",
    ):
        assert report[key] > 0, key
    assert report["single_non_2xx"] == 0 and report["batch_non_2xx"] == 0
    assert set(report["single_ledger_results"]) == {"ok"}


def test_workers_must_be_counts_of_front_ends() -> None:
    """`--workers` takes counts of 1 to 64: 0 or a word is refused with exit 2, saying so."""
    for value in ("0", "two"):
        done = tally("bench", "http", "--seconds", "1", "--workers", value)
        assert done.returncode == 2, (value, done.stderr[-2000:])
        assert "--workers takes counts of 1 to 64" in done.stderr


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install -y wrk)")
def test_workers_run_reports_front_ends_and_core() -> None:
    """`--workers 1` measures the one-process server and `tally serve --workers 1` in the
    same run: each a rate and a p99; for the front-end configuration the CPU per request
    of the front-end and of the core (both read from /proc, so both above zero), the
    16-core projection and the ratio to the one process; how many requests shared a
    journal commit (both) and a link frame (the front-end's: at least one each, since
    every request reached the core in some frame); every posted transfer ok."""
    done = tally(
        "bench", "http", "--seconds", "1", "--servers", "hypercorn", "--workers", "1",
        "--risk-pairs", "0", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "http_workers"
    for prefix in ("hypercorn_single_process", "hypercorn_workers1"):
        assert report[f"{prefix}_single_per_s"] > 0, prefix
        assert report[f"{prefix}_latency_ms_p99"] > 0, prefix
        assert report[f"{prefix}_non_2xx"] == 0, prefix
        assert set(report[f"{prefix}_ledger_results"]) == {"ok"}, prefix
        assert report[f"{prefix}_requests_per_commit"] >= 1, prefix
    assert report["hypercorn_workers1_requests_per_link_frame"] >= 1
    assert report["hypercorn_workers1_front_end_cpu_us_per_request"] > 0
    assert report["hypercorn_workers1_core_cpu_us_per_request"] > 0
    assert report["hypercorn_workers1_projected_single_per_s_16_cores"] > 0
    assert report["hypercorn_workers1_vs_single_process"] > 0
