"""`tally bench pg` end to end on a tiny load: it runs, cleans up, and reports what it says.

No figure is asserted (timings never are): only that both ledgers posted, that every
headline and pass is there, and that the CPU figures were measured.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.http_helpers import REPO_ROOT
from tests.pg_helpers import require_postgresql_binaries

pytestmark = pytest.mark.pg


def test_bench_pg_reports_both_ledgers_per_pass() -> None:
    """Two alternating passes on 2,000 accounts: both ledgers post transfers, the report
    has the headline figures, the passes and the CPU per transfer of Tally and server."""
    require_postgresql_binaries()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "bench",
            "pg",
            "--seconds",
            "2",
            "--accounts",
            "2000",
            "--passes",
            "2",
            "--connections",
            "4",
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = orjson.loads(completed.stdout.strip().splitlines()[-1])
    assert report["tally_pg_transfers_per_s"] > 0 and report["naive_pg_transfers_per_s"] > 0
    assert len(report["passes_transfers_per_s"]["tally"]) == 2
    assert len(report["passes_transfers_per_s"]["naive"]) == 2
    assert report["tally_pg_cpu_us_per_transfer_tally"] > 0
    assert report["tally_pg_cpu_us_per_transfer_postgres"] > 0
    assert report["tally_over_naive"] > 0
