"""A real engine process on the PostgreSQL store, for the crash tests.

    python tests/pg_engine_process.py DSN CLIENTS START_1,START_2,... [RECONNECT_TIMEOUT_S]

Like tests/engine_process.py (same transfers, a pure function of (client, n),
and the same `ACK <id> <result> <timestamp>` lines printed after each answer),
but the store is PostgreSQL: startup migrates, takes a new fencing epoch and
replays `tally_entries` into the kernels.
"""

from __future__ import annotations

import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.engine import Engine
from core.pg_store import open_pg_store
from ledger.types import TransferCode
from tests.engine_helpers import (
    CLEARING_ID,
    class_ii_accounts,
    clearing_account,
    example_rules,
    transfer,
)
from tests.engine_process import ACCOUNTS, FIRST_ACCOUNT, FUNDING_MINOR, transfer_for

ACCOUNT_CAPACITY = 1024
TRANSFER_CAPACITY = 1 << 20


async def main(dsn: str, clients: int, starts: list[int], reconnect_timeout_s: float) -> None:
    opened = await open_pg_store(
        dsn,
        account_capacity=ACCOUNT_CAPACITY,
        transfer_capacity=TRANSFER_CAPACITY,
        owner=f"pg_engine_process {os.getpid()}",
        reconnect_timeout_s=reconnect_timeout_s,
    )
    engine = Engine(opened.ledger, opened.store, example_rules(), linger_s=0.0005)
    out = sys.stdout

    def ack(transfer_id: int, result: int, timestamp: int) -> None:
        out.write(f"ACK {transfer_id} {result} {timestamp}\n")
        out.flush()

    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await engine.submit_accounts(clearing_account())
        await engine.submit_accounts(class_ii_accounts(FIRST_ACCOUNT, ACCOUNTS))
        for i in range(ACCOUNTS):
            funding_id = 1 << 60 | i
            outcome = await engine.submit_transfer(
                transfer(
                    funding_id,
                    CLEARING_ID,
                    FIRST_ACCOUNT + i,
                    FUNDING_MINOR,
                    TransferCode.TOPUP_BOUND,
                )
            )
            ack(funding_id, outcome.result, outcome.timestamp)
        out.write(f"READY epoch {opened.store.epoch}\n")
        out.flush()

        async def client(c: int) -> None:
            n = starts[c]
            while True:
                transfer_id, record = transfer_for(c, n)
                outcome = await engine.submit_transfer(record)
                ack(transfer_id, outcome.result, outcome.timestamp)
                n += 1

        for c in range(clients):
            task_group.start_soon(client, c)


if __name__ == "__main__":
    dsn, client_count, start_list = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    timeout_s = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    anyio.run(main, dsn, client_count, [int(s) for s in start_list.split(",")], timeout_s)
