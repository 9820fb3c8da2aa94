"""A real engine process that changes customer state, for the kill tests of both stores.

    python tests/state_process.py STORE_URL CLIENTS START SNAPSHOT_EVERY

Opens the store with `core.store.open_store` (recovering), starts the engine,
then runs CLIENTS tasks; client c submits change n = START + c, START + c +
CLIENTS, ...: `state_changes(n)`, a pure function of n. Each acknowledged
change (released only once durable) is printed as `ACK <n>` and flushed, so
the parent knows exactly what was acknowledged before it SIGKILLs this
process. `READY <records replayed> <snapshot seq>` comes first.
"""

from __future__ import annotations

import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.engine import Engine
from core.entries import StateChanges
from core.store import open_store
from tests.engine_helpers import example_rules

ACCOUNT_CAPACITY = 1024
TRANSFER_CAPACITY = 1 << 16


def state_changes(n: int) -> StateChanges:
    """Change n sets key n (a value that names n) and, every fifth, deletes key n - 3."""
    changes: StateChanges = [(b"customer:%d" % n, b"value-%d-" % n + bytes(n % 7))]
    if n % 5 == 0 and n >= 3:
        changes.append((b"customer:%d" % (n - 3), None))
    return changes


async def main(url: str, clients: int, start: int, snapshot_every: int) -> None:
    async with open_store(
        url,
        account_capacity=ACCOUNT_CAPACITY,
        transfer_capacity=TRANSFER_CAPACITY,
        snapshot_every_entries=snapshot_every,
    ) as opened:
        engine = Engine(
            opened.ledger, opened.store, example_rules(), linger_s=0.0005, state=opened.state
        )
        out = sys.stdout
        async with anyio.create_task_group() as task_group:
            await task_group.start(engine.serve)
            recovery = opened.recovery
            out.write(f"READY {recovery.records_replayed} {recovery.snapshot_seq}\n")
            out.flush()

            async def client(c: int) -> None:
                n = start + c
                while True:
                    await engine.submit_state(state_changes(n))
                    out.write(f"ACK {n}\n")
                    out.flush()
                    n += clients

            for c in range(clients):
                task_group.start_soon(client, c)


if __name__ == "__main__":
    url_arg, clients_arg, start_arg, every_arg = sys.argv[1:5]
    anyio.run(main, url_arg, int(clients_arg), int(start_arg), int(every_arg), backend="asyncio")
