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
    passes, and no acknowledged customer, account or password change (made through the
    services during the load: their counts are > 0) is missing; dc3's losses are listed
    by id and reported by kind as RPO; every cluster directory is removed."""
    require_postgresql_binaries()
    before = set(glob.glob("/tmp/tally-pg-dc*"))
    output = tmp_path / "drill.json"
    args = argparse.Namespace(
        seconds=3.0,
        clients=32,
        customer_clients=4,
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
    work = report["kill"]["customer_work_acknowledged"]
    assert work["customers"] > 0 and work["accounts"] > 0 and work["password_changes"] > 0
    dc2 = report["scenario_dc2"]
    assert dc2["acknowledged_lost"] == 0
    assert dc2["customers_lost"] == dc2["accounts_lost"] == dc2["password_changes_lost"] == 0
    assert dc2["customers_checked"] == work["customers"]
    assert dc2["accounts_checked"] == work["accounts"]
    dc3 = report["scenario_dc3"]
    assert set(dc3["rpo_by_kind"]) == {"transfers", "customers", "accounts", "password_changes"}
    assert dc3["rpo_by_kind"]["transfers"] == dc3["lost"]
    assert dc3["rpo_by_kind"]["customers"] == len(dc3["customers_lost_ids"])
    assert set(glob.glob("/tmp/tally-pg-dc*")) == before
