"""A real engine process for the crash test: journal on disk, concurrent clients.

    python tests/engine_process.py DATA_DIR CLIENTS START_1,START_2,...

Opens (and recovers) the journal in DATA_DIR, rebuilds the ledger from it,
starts the engine, makes sure the test accounts exist and are funded (by
idempotent requests, so a kill during setup is harmless), then runs CLIENTS
concurrent client tasks. Client c posts transfers n = START_c, START_c + 1, ...
whose content is a pure function of (c, n), so a restarted client that
resumes a little before its last acknowledged transfer re-sends the same
transfers: retries with the same ids. Every answer is printed, after it was
received (so after it was durable), as

    ACK <transfer id> <result code> <timestamp>

and flushed, so the parent test knows exactly what was acknowledged before
it SIGKILLs this process.
"""

from __future__ import annotations

import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.engine import Engine
from core.store import open_store
from ledger.types import TransferCode
from tests.engine_helpers import (
    CLEARING_ID,
    class_ii_accounts,
    clearing_account,
    example_rules,
    transfer,
)

ACCOUNT_CAPACITY = 1024
TRANSFER_CAPACITY = 1 << 20
ACCOUNTS = 64
FIRST_ACCOUNT = 1
FUNDING_MINOR = 100_000_000


def transfer_for(client: int, n: int) -> tuple[int, bytes]:
    """Transfer n of client c: a pure function, so a retry is byte-identical."""
    transfer_id = (client + 1) << 40 | n
    debit = FIRST_ACCOUNT + (client * 7 + n) % ACCOUNTS
    credit = FIRST_ACCOUNT + (client * 7 + n * 3 + 1) % ACCOUNTS
    if credit == debit:
        credit = FIRST_ACCOUNT + (credit - FIRST_ACCOUNT + 1) % ACCOUNTS
    return transfer_id, transfer(transfer_id, debit, credit, 1 + (n * 37 + client) % 500)


async def main(directory: str, clients: int, starts: list[int]) -> None:
    async with open_store(
        directory, account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY
    ) as opened:
        engine = Engine(opened.ledger, opened.store, example_rules(), linger_s=0.0005)
        await serve_engine(engine, clients, starts)


async def serve_engine(engine: Engine, clients: int, starts: list[int]) -> None:
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
                transfer(funding_id, CLEARING_ID, FIRST_ACCOUNT + i, FUNDING_MINOR,
                         TransferCode.TOPUP_BOUND)
            )
            ack(funding_id, outcome.result, outcome.timestamp)
        out.write("READY\n")
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
    data, client_count, start_list = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    anyio.run(main, data, client_count, [int(s) for s in start_list.split(",")])
