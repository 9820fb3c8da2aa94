"""The Patroni + etcd topology of `tally cluster up`, for real: roles, tags, a failover."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import anyio
import asyncpg
import orjson
import pytest

from core.drills import patroni
from tests.pg_helpers import require_postgresql_binaries

pytestmark = [pytest.mark.pg]


def _tally(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *words], capture_output=True, text=True, check=False
    )


async def _leader_of_dsn(dsn: str) -> tuple[int, bool]:
    """The port a multi-host read-write DSN lands on, and whether that server is in recovery."""
    connection = await asyncpg.connect(dsn)
    try:
        port = int(await connection.fetchval("SELECT current_setting('port')"))
        in_recovery = bool(await connection.fetchval("SELECT pg_is_in_recovery()"))
    finally:
        await connection.close()
    return port, in_recovery


def test_cluster_up_roles_then_dc1_killed_dc2_leads() -> None:
    """`tally cluster up` (a separate process: the daemons outlive it) gives dc1 leader, dc2
    synchronous standby, dc3 an asynchronous replica tagged nofailover, under strict
    synchronous mode; the multi-host DSN lands on dc1. With dc1's Patroni, PostgreSQL and
    etcd SIGKILLed, Patroni promotes dc2 (never dc3), the DSN then lands on dc2, and
    `tally cluster down --remove` stops every daemon and deletes the directory."""
    require_postgresql_binaries()
    directory = tempfile.mkdtemp(prefix="tally-patroni-test-", dir="/tmp")
    base = patroni.free_port_base()
    try:
        started = _tally("cluster", "up", "--dir", directory, "--port-base", str(base), "--json")
        assert started.returncode == 0, started.stderr
        status = orjson.loads(started.stdout)
        members = status["members"]
        assert members["dc1"]["role"] == "leader"
        assert members["dc2"]["role"] == "sync_standby"
        assert members["dc3"]["role"] == "replica"
        assert members["dc3"]["tags"].get("nofailover") is True
        assert status["settings"]["synchronous_mode_strict"] is True
        assert "target_session_attrs=read-write" in status["dsn"]

        topology = patroni.Topology.load(directory)
        assert all(topology.alive(key) for key in topology.pids), topology.pids
        assert len(topology.pids) == 6
        port, in_recovery = anyio.run(_leader_of_dsn, topology.dsn())
        assert (port, in_recovery) == (topology.member("dc1").pg_port, False)

        killed = topology.kill_dc("dc1")
        assert all(killed.values()), killed
        topology.wait_leader("dc2")
        roles = topology.wait_healthy(leader="dc2")
        assert roles["dc2"] == "leader" and roles["dc3"] == "sync_standby"
        port, in_recovery = anyio.run(_leader_of_dsn, topology.dsn())
        assert (port, in_recovery) == (topology.member("dc2").pg_port, False)

        shown = _tally("cluster", "status", "--dir", directory, "--json")
        assert shown.returncode == 0, shown.stderr
        assert orjson.loads(shown.stdout)["members"]["dc2"]["role"] == "leader"
    finally:
        stopped = _tally("cluster", "down", "--dir", directory, "--remove")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(topology.alive(key) for key in topology.pids)
    assert not any(topology.postgresql(name).postmaster_pid() for name in patroni.MEMBERS)
    assert not os.path.exists(directory)
