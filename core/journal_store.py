"""The embedded journal as the engine's `Store` (core/store.py).

One group at a time (`inflight_groups` 1): `finish_group` runs the journal's
write and fdatasync (`Journal.append`) in a worker thread. Snapshots are this
store's own upkeep: every `snapshot_every_entries` entries, `after_group`
(called by the engine's apply stage between groups, while no kernel call is
under way) waits until every applied entry is durable and forks a child that
writes the ledger and the customer state at that seq (`core.snapshot`); the
engine pauses only for fork() itself. A snapshot never runs ahead of its
journal. A snapshot that fails (a full disk) is logged and kept in
`snapshot_error` (the lifecycle shows it in /readyz), never fatal: a
snapshot is a cache of the journal, and the journal is what was acknowledged.

After a failed append (`JournalWriteError`) the engine stops; the lifecycle
calls `check_writable` until it returns (the failed group's unsynced tail
zeroed and fdatasynced, and room for a new segment), then closes this store
and opens the journal again, rebuilding the state from what is on disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import orjson

from core import snapshot
from core.entries import Entry
from core.journal import Journal, probe_writable
from core.store import CommitStats, CustomerState, Ledger
from ledger.kernel import KernelLedger

logger = logging.getLogger("tally.store")


class JournalStore:
    """The journal behind the `Store` protocol, with its snapshot policy."""

    inflight_groups = 1

    def __init__(
        self,
        journal: Journal,
        *,
        snapshot_every_entries: int = 0,
        snapshot_directory: str | None = None,
    ) -> None:
        assert snapshot_every_entries >= 0
        self.journal = journal
        self.stats = CommitStats()
        self.snapshot_every_entries = snapshot_every_entries
        self.snapshot_directory = snapshot_directory or journal.directory
        self.snapshot_child: int | None = None
        self.snapshots_taken = 0
        self.snapshot_pause_s: list[float] = []
        self.snapshot_error: str | None = None  # why the last snapshot failed, until one works
        self._entries_since_snapshot = 0

    @property
    def last_seq(self) -> int:
        return self.journal.last_seq

    def capture(self, ledger: Ledger, entry: Entry) -> None:
        """The journal stores entries only: nothing to capture."""
        return None

    def begin_group(self, entries: Sequence[Entry], captures: Sequence[Any]) -> list[Entry]:
        self._entries_since_snapshot += len(entries)
        return list(entries)

    async def finish_group(self, pending: list[Entry]) -> None:
        """One write and one fdatasync for the group, in a worker thread."""
        started = time.perf_counter()
        await anyio.to_thread.run_sync(self.journal.append, pending)
        self.stats.observe_commit(time.perf_counter() - started)

    async def after_group(
        self, ledger: Ledger, state: CustomerState, wait_durable: Callable[[], Awaitable[None]]
    ) -> None:
        """Reap a finished snapshot child; fork a new one when due (see the module docstring)."""
        if self.snapshot_child is not None:
            try:
                path = await anyio.to_thread.run_sync(snapshot.poll_snapshot, self.snapshot_child)
            except snapshot.SnapshotError as error:
                self.snapshot_child = None
                self.snapshot_error = str(error)
                logger.error(
                    orjson.dumps({"event": "snapshot_failed", "error": str(error)}).decode()
                )
            else:
                if path is None:
                    return
                self.snapshot_child = None
                self.snapshots_taken += 1
                self.snapshot_error = None
        if (
            self.snapshot_every_entries <= 0
            or self._entries_since_snapshot < self.snapshot_every_entries
            or not isinstance(ledger, KernelLedger)
        ):
            return
        await wait_durable()
        started = time.perf_counter()
        self.snapshot_child = snapshot.fork_snapshot(
            self.snapshot_directory, ledger, self.journal.last_seq, state
        )
        self.snapshot_pause_s.append(time.perf_counter() - started)
        self._entries_since_snapshot = 0

    async def check_writable(self) -> None:
        """Raise `JournalWriteError` unless the journal's unsynced tail is discarded and a
        new segment fits on the disk (see the module docstring)."""

        def check() -> None:
            self.journal.discard_unsynced()
            probe_writable(self.journal.directory, self.journal.segment_size)

        await anyio.to_thread.run_sync(check)

    async def close(self) -> None:
        """Wait for a snapshot child still writing, then release the journal."""
        if self.snapshot_child is not None:
            child, self.snapshot_child = self.snapshot_child, None
            try:
                await anyio.to_thread.run_sync(snapshot.wait_snapshot, child)
                self.snapshots_taken += 1
            except snapshot.SnapshotError as error:
                self.snapshot_error = str(error)
        self.journal.close()
