"""`tally serve --store postgresql://...`: the HTTP API on the PostgreSQL store, for real.

A real server process on a throwaway cluster's database: a deposit posted,
the server killed with SIGKILL, restarted on the same database, and the
retry with the same Idempotency-Key answered with the original (replayed,
money moved once). A database that cannot be reached answers 503 with
Retry-After (and /readyz says why) until it can. Trio is refused at once:
asyncpg is an asyncio driver.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from tests.http_helpers import (
    REPO_ROOT,
    TallyServer,
    balance,
    cash_deposit,
    key,
    open_class_i,
    register,
)
from tests.pg_helpers import fresh_database_dsn, psql, shared_cluster

pytestmark = pytest.mark.pg


def test_retry_after_kill_finds_the_original_in_postgresql(tmp_path: Path) -> None:
    """kill -9 after an answer, restart on the same database, retry with the same key:
    the first answer is replayed and the balance shows one deposit."""
    dsn = fresh_database_dsn()
    server = TallyServer(tmp_path / "data", extra=["--store", dsn]).start()
    try:
        with server.client("counter") as counter:
            target = open_class_i(counter, register(counter))
            cash_deposit(counter, target, 1_000)
            used = key()
            first = counter.post(
                f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 42}, idempotency_key=used
            )
            assert first.status_code == 201, first.text
        ready = httpx.get(server.url + "/readyz", timeout=5).json()
        assert ready["recovery"]["store"] == "postgresql"
        server.kill()
        server.start()
        ready = httpx.get(server.url + "/readyz", timeout=5).json()
        assert ready["recovery"]["epoch"] == 2, ready  # a new fencing epoch per start
        with server.client("counter") as counter:
            again = counter.post(
                f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 42}, idempotency_key=used
            )
            assert again.status_code == 201, again.text
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json() == first.json()
            assert balance(counter, target) == 1_042
    finally:
        server.stop()
    transfers = psql(shared_cluster(), "SELECT count(*) FROM tally_transfers", _database(dsn))
    assert int(transfers) >= 2


def _database(dsn: str) -> str:
    return urllib.parse.urlsplit(dsn).path.lstrip("/")


def test_unreachable_database_answers_503_until_it_exists(tmp_path: Path) -> None:
    """A store that cannot be opened: routes answer 503 with Retry-After and /readyz names
    the error; once the database exists the server becomes ready without a restart."""
    cluster = shared_cluster()
    name = f"tally_late_{int(time.time() * 1000)}"
    dsn = cluster.dsn(name)
    server = TallyServer(tmp_path / "data", extra=["--store", dsn]).start(wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(server.url + "/readyz", timeout=2)
                if ready.json().get("status") == "failed":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert ready.status_code == 503 and name in ready.json()["error"], ready.text
        with server.client("counter") as counter:
            refused = counter.post(
                "/v1/accounts/1/cash-deposits", {"amount_minor": 1}, idempotency_key=key()
            )
        assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
        psql(cluster, f"CREATE DATABASE {name}")
        server.wait_ready()
    finally:
        server.stop()


def test_trio_is_refused_with_the_store() -> None:
    """asyncpg runs on asyncio only: `--backend trio --store ...` exits 2 and says so."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "serve",
            "--backend",
            "trio",
            "--store",
            "postgresql://nobody@/nothing",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "asyncio only" in completed.stderr
