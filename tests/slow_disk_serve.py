"""`tally serve` on a slow disk, for tests that need a request to stay in flight.

Usage: python tests/slow_disk_serve.py DELAY_MS <tally serve arguments>

The server is the real one; only its store is wrapped so that every group
first waits DELAY_MS before it is made durable (what a slow or saturated
disk does). The wrapper lives here, in the tests, and reaches the server
through the services' own `open_store` seam: production code carries no
delay hook.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from channels.http import serve
from core.services.bank import Bank
from core.store import OpenedStore, open_store


class SlowStore:
    """A store whose every group first waits `delay_s`, then is made durable as usual."""

    def __init__(self, store: Any, delay_s: float) -> None:
        self.store = store
        self.delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def finish_group(self, pending: Any) -> None:
        await anyio.sleep(self.delay_s)
        await self.store.finish_group(pending)


def open_slow_store(delay_s: float) -> Any:
    @asynccontextmanager
    async def opener(url: str, **options: Any) -> AsyncIterator[OpenedStore]:
        async with open_store(url, **options) as opened:
            opened.store = SlowStore(opened.store, delay_s)  # type: ignore[assignment]
            yield opened

    return opener


def main() -> int:
    delay_s = float(sys.argv[1]) / 1000
    parser = argparse.ArgumentParser(prog="slow_disk_serve")
    serve.add_arguments(parser)
    args = parser.parse_args(sys.argv[2:])
    serve.Bank = functools.partial(Bank, open_store=open_slow_store(delay_s))  # type: ignore[misc]
    return serve.run(args)


if __name__ == "__main__":
    sys.exit(main())
