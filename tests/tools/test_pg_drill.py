"""The failover drill end to end on three real clusters (slow: about 20 s)."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import orjson
import pytest

from core.drills import failover
from tests.pg_helpers import require_postgresql_binaries

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def test_drill_loses_nothing_acknowledged_on_dc2_and_cleans_up(tmp_path: Path) -> None:
    """dc1 killed mid-load: on dc2 no acknowledged transfer is lost or doubled and verify
    passes; dc3's losses are listed by id; every cluster directory is removed."""
    require_postgresql_binaries()
    before = set(glob.glob("/tmp/tally-pg-dc*"))
    output = tmp_path / "drill.json"
    args = argparse.Namespace(
        seconds=3.0,
        clients=32,
        dc3_delay_ms=30.0,
        output=str(output),
        rules="examples/limits.toml",
        json=True,
    )
    assert failover.run(args) == 0
    report = orjson.loads(output.read_bytes())
    assert report["scenario_dc2"]["lost"] == 0 and report["scenario_dc2"]["duplicates"] == 0
    assert report["scenario_dc3"]["lost"] == len(report["scenario_dc3"]["lost_ids"])
    assert report["scenario_dc2"]["rto_s"] > 0
    assert set(glob.glob("/tmp/tally-pg-dc*")) == before
