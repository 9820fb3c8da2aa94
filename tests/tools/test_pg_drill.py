"""The failover drill end to end on Patroni + etcd (slow: about a minute)."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import orjson
import pytest

from core.drills import failover
from tests.pg_helpers import require_postgresql_binaries

pytestmark = [pytest.mark.pg, pytest.mark.slow]


def _args(tmp_path: Path, scenario: str) -> argparse.Namespace:
    return argparse.Namespace(
        seconds=3.0,
        clients=32,
        customer_clients=4,
        scenario=scenario,
        output=str(tmp_path / "drill.json"),
        save=str(tmp_path / "benchmarks"),
        dir=None,
        port_base=None,
        rules="examples/limits.toml",
        providers=None,  # the drill starts a provider simulator
        json=True,
    )


def test_drill_on_patroni_loses_nothing_acknowledged_and_cleans_up(tmp_path: Path) -> None:
    """dc1 (Tally, Patroni, PostgreSQL, etcd) SIGKILLed mid-load: Patroni promotes dc2 and
    no acknowledged transfer is lost or doubled there, verify passes, no acknowledged
    customer, account or password change (made during the load: counts > 0) is missing;
    dc1 restarted comes back in recovery and refuses a write; region A's RPO on dc3 is
    listed by id and by kind; the saved report is a `drill` benchmark; every daemon and
    directory is gone afterwards."""
    require_postgresql_binaries()
    before = set(glob.glob("/tmp/tally-drill-*"))
    args = _args(tmp_path, "old-primary-returns")
    assert failover.run(args) == 0
    report = orjson.loads(Path(args.output).read_bytes())
    assert report["failover_manager"] == "patroni"
    assert report["passed"] is True
    assert report["acknowledged_lost"] == 0 and report["duplicates"] == 0
    assert report["customers_lost"] == 0
    dc2 = report["scenario_dc2"]
    assert dc2["lost"] == 0 and dc2["duplicates"] == 0 and dc2["verify_ok"]
    assert dc2["accounts_lost"] == dc2["password_changes_lost"] == 0
    assert dc2["acknowledged_checked"] == report["kill"]["acknowledged_total_dc1"] > 0
    work = report["kill"]["customer_work_acknowledged"]
    assert work["customers"] > 0 and work["accounts"] > 0 and work["password_changes"] > 0
    assert dc2["customers_checked"] == work["customers"]
    assert dc2["patroni"]["dc2_leader_seen_s"] is not None
    returning = report["scenario_old_primary_returns"]
    assert returning["dc1_in_recovery"] and returning["write_refused"]
    assert returning["dsn_leads_to"] == "dc2"
    dc3 = report["scenario_dc3"]
    assert dc3["lost"] == len(dc3["lost_ids"]) == report["region_a_rpo_transfers"]
    assert set(dc3["rpo_by_kind"]) == {"transfers", "customers", "accounts", "password_changes"}
    assert dc3["rpo_by_kind"]["customers"] == len(dc3["customers_lost_ids"])
    operator = dc3["operator_promotion"]
    assert operator["acknowledged_lost"] == operator["duplicates"] == 0 and operator["verify_ok"]
    (saved,) = glob.glob(str(tmp_path / "benchmarks" / "drill-*.json"))
    figures = orjson.loads(Path(saved).read_bytes())
    assert figures["benchmark"] == "drill" and figures["acknowledged_lost"] == 0
    assert set(glob.glob("/tmp/tally-drill-*")) == before  # clusters and Tally's directory


def test_drill_dc2_then_dc1_blocks_writes_and_loses_nothing(tmp_path: Path) -> None:
    """dc2 dies, dc3 becomes dc1's synchronous standby, then dc1 dies under load: Patroni
    promotes nobody (dc3 is nofailover), no write is possible; the operator's promotion of
    dc3 then finds every acknowledged transfer and customer change."""
    require_postgresql_binaries()
    args = _args(tmp_path, "dc2-then-dc1")
    assert failover.run(args) == 0
    report = orjson.loads(Path(args.output).read_bytes())
    section = report["scenario_dc2_then_dc1"]
    assert section["promoted_automatically"] is False
    assert section["writes_possible"] is False
    assert report["rto_s"] is None
    assert report["acknowledged_lost"] == report["duplicates"] == report["customers_lost"] == 0
    assert section["after_operator_promoted_dc3"]["acknowledged_checked"] > 0
