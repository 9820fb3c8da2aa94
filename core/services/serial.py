"""Commands with one key run one after the other, without holding up any other key.

A retry of an operation key waits for the first request with that key and then meets
its answer; commands on one loan application or one loan do not interleave. Used by the
fixed deposits (core/services/deposits.py) and the loan accounts
(core/services/loan_accounts.py).
"""

from __future__ import annotations

from collections.abc import Hashable

import anyio


class OneAtATime:
    """`async with OneAtATime(in_flight, key):` runs its body alone among the holders of
    `key` in `in_flight` (a dict the service keeps: key -> the running holder's event)."""

    def __init__(self, in_flight: dict[Hashable, anyio.Event], key: Hashable) -> None:
        self.in_flight = in_flight
        self.key = key
        self.done: anyio.Event | None = None

    async def __aenter__(self) -> None:
        while (running := self.in_flight.get(self.key)) is not None:
            await running.wait()
        self.done = self.in_flight[self.key] = anyio.Event()

    async def __aexit__(self, *exc_info: object) -> None:
        del self.in_flight[self.key]
        assert self.done is not None
        self.done.set()
