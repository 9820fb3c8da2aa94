"""The deadline for a request's body to arrive, without a cancel scope per request.

A client that sends a request head and then its body slowly (or not at all)
would hold its connection and its request task for as long as it likes: the
servers bound the head (channels/http/serve.py), the app bounds the body.

A cancel scope around every body read costs about 7 us on asyncio (anyio's
`fail_after` or `asyncio.timeout`, measured), several percent of a single
transfer. So on asyncio the request registers its task here before it reads
its body and removes it after (two dict operations); the app's housekeeping
tick (`sweep`, every 0.1 s) cancels the tasks whose deadline passed, marking
them expired, and the request turns that cancellation into a 408. On trio
(not on the benchmarked path) the body read sits in an ordinary cancel scope.
"""

from __future__ import annotations

import asyncio
from typing import Any


class BodyDeadlines:
    """The asyncio tasks reading a request body, each with the time it must be done by."""

    __slots__ = ("expired", "timeout_s", "waiting")

    def __init__(self, timeout_s: float) -> None:
        assert timeout_s > 0
        self.timeout_s = timeout_s
        self.waiting: dict[asyncio.Task[Any], float] = {}  # task -> deadline (perf_counter s)
        self.expired: set[asyncio.Task[Any]] = set()

    def sweep(self, now_s: float) -> None:
        """Cancel every waiting task whose deadline is past (it answers 408)."""
        late = [task for task, deadline_s in self.waiting.items() if deadline_s <= now_s]
        for task in late:
            del self.waiting[task]
            self.expired.add(task)
            task.cancel()

    def take_expired(self, task: asyncio.Task[Any]) -> bool:
        """True if `task` was cancelled by `sweep` (the cancellation is then undone)."""
        if task not in self.expired:
            return False
        self.expired.discard(task)
        task.uncancel()
        return True
