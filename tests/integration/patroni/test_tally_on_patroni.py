"""Tally's services on Patroni: one Tally outlives the loss of the primary it wrote to."""

from __future__ import annotations

import tempfile
import time

import anyio
import pytest

from core.drills import patroni
from core.drills.failover import CLEARING_ID, client_transfer, setup_accounts, wait_until
from core.engine import EngineStopped
from core.pg_store import verify
from core.services.bank import Bank
from core.services.lifecycle import Settings
from core.services.refusals import Refused
from ledger.reference import Transfer
from ledger.types import CreateTransferResult as R
from limits.rules import load_rules
from tests.pg_helpers import require_postgresql_binaries

pytestmark = [pytest.mark.pg]
CLIENTS = 8
AFTER_FAILOVER_ACKS = 200
DEADLINE_S = 120.0


async def _serve_through_failover(topology: patroni.Topology) -> dict[str, object]:
    import asyncpg

    acknowledged: dict[int, int] = {}  # transfer id -> timestamp, answered OK
    retried_answers: dict[int, int] = {}  # id -> result, for ids whose first try failed
    killed = anyio.Event()
    after_kill = [0]
    with tempfile.TemporaryDirectory(prefix="tally-patroni-bank-") as data_dir:
        settings = Settings(
            data_dir=data_dir,
            store_dsn=topology.dsn(),
            account_capacity=4096,
            transfer_capacity=1 << 20,
            scrypt_n=1 << 12,
        )
        bank = Bank(settings, load_rules("examples/limits.toml"))

        async def client(c: int) -> None:
            n = 0
            while after_kill[0] < AFTER_FAILOVER_ACKS:
                transfer_id, record = client_transfer(c, n)
                tries = 0
                while True:  # the same id until an answer: a retry, never a new posting
                    tries += 1
                    try:
                        outcome = await bank.core.running_engine().submit_transfer(record)
                        break
                    except (Refused, EngineStopped):
                        await anyio.sleep(0.05)
                if tries == 1:
                    assert outcome.result == R.OK, outcome
                    acknowledged[transfer_id] = outcome.timestamp
                else:
                    retried_answers[transfer_id] = int(outcome.result)
                if killed.is_set() and outcome.result in (R.OK, R.EXISTS):
                    after_kill[0] += 1
                n += 1

        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as task_group:
                await task_group.start(bank.serve)
                await wait_until(lambda: bank.core.ready, "Tally on the Patroni cluster")
                epoch_before = bank.core.recovery_info["epoch"]
                await setup_accounts(bank.core.running_engine())
                async with anyio.create_task_group() as clients:
                    for c in range(CLIENTS):
                        clients.start_soon(client, c)
                    await anyio.sleep(2.0)
                    acknowledged_before_kill = len(acknowledged)
                    await anyio.to_thread.run_sync(topology.kill_dc, "dc1")
                    killed.set()
                engine = bank.core.running_engine()
                stored = await engine.read(
                    lambda ledger: {i: ledger.lookup_transfer(i) for i in acknowledged}
                )
                epoch_after = bank.core.recovery_info["epoch"]
                task_group.cancel_scope.cancel()
    missing = [i for i, record in stored.items() if record is None]
    changed = [
        i
        for i, record in stored.items()
        if record is not None and Transfer.unpack(record).timestamp != acknowledged[i]
    ]
    connection = await asyncpg.connect(topology.dsn())
    try:
        port = int(await connection.fetchval("SELECT current_setting('port')"))
        report = await verify(connection, 4096, 1 << 20)
    finally:
        await connection.close()
    return {
        "acknowledged_before_kill": acknowledged_before_kill,
        "acknowledged": len(acknowledged),
        "missing": missing,
        "changed": changed,
        "retried_answers": set(retried_answers.values()),
        "leader_port": port,
        "verify_ok": report.ok,
        "epochs": (epoch_before, epoch_after),
        "clearing": CLEARING_ID,
    }


def test_tally_outlives_dc1_through_the_multi_host_dsn() -> None:
    """A Tally (the services' lifecycle, engine on the PostgreSQL store) writing through the
    multi-host DSN keeps serving when dc1's Patroni, PostgreSQL and etcd are SIGKILLed:
    its in-flight groups are resolved on dc2 by the epoch row (or the store reopened there
    and the ledger rebuilt), the clients' retries with the same ids answer OK or EXISTS,
    every transfer acknowledged before or after the kill is in its ledger with its
    timestamp, more are acknowledged after the failover, and `verify` passes on dc2."""
    require_postgresql_binaries()
    directory = tempfile.mkdtemp(prefix="tally-patroni-test-", dir="/tmp")
    started = time.monotonic()
    with patroni.open_topology(directory, patroni.free_port_base()) as topology:
        result = anyio.run(_serve_through_failover, topology, backend="asyncio")
        assert result["leader_port"] == topology.member("dc2").pg_port
    print(f"Tally through a Patroni failover: {result} in {time.monotonic() - started:.1f} s")
    assert result["acknowledged_before_kill"] > 0
    assert result["acknowledged"] > result["acknowledged_before_kill"]
    assert result["missing"] == [] and result["changed"] == []
    assert result["retried_answers"] <= {R.OK, R.EXISTS}
    assert result["verify_ok"]
