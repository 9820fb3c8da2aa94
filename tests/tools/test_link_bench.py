"""`tally bench link`: a short run reports its figures, clean, with an exact ledger."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.repo_paths import REPO_ROOT


def test_short_run_reports_the_cores_cpu_and_an_exact_ledger() -> None:
    """One client process over the core link for a short timed window: transfers were
    acknowledged, the core's CPU per transfer (from /proc) is above zero, nothing was
    refused, lost or left unknown, and every balance is what the acknowledgements say."""
    done = subprocess.run(
        [sys.executable, "-m", "core", "bench", "link", "--seconds", "1", "--runs", "1",
         "--warmup-seconds", "0.5", "--concurrency", "32", "--accounts", "8", "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "link"
    assert report["transfers_per_s"] > 0
    assert report["core_cpu_us_per_request"] > 0
    assert report["latency_ms_p99"] > 0
    for key in ("refused", "problem", "unavailable", "overloaded", "failed", "outcomes_unresolved"):
        assert report[key] == 0, (key, report[key])
    assert report["ledger_exact"] is True and report["money_conserved"] is True
