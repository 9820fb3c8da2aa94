"""The embedded journal as the engine's `Store` (core/store.py).

One group at a time (`inflight_groups` 1): `finish_group` makes the group durable
with the journal's one write and one fdatasync (`Journal.append`), where it is
cheapest:

- **On the event loop** while the disk is fast: a group of up to
  `inline_group_bytes_max` (64 KiB, about 500 transfers) that fits the active
  segment is appended right there unless two appends in a row on the loop took
  over `inline_append_max_s` (10 ms) in the last `inline_retry_s` (10 s). A fast
  disk's fdatasync takes a quarter of a millisecond; a worker thread costs far
  more in hand-offs of the GIL, which a busy event loop holds for up to the
  interpreter's switch interval (5 ms) each time the thread wants it back
  (after its start, the write and the fdatasync). Measured under `tally bench
  iso8583` at 5,000 messages/s on this repository's machine (fdatasync 0.24 ms
  median): in a thread a group took 4.7 ms (median) and 24 ms (p99) from
  applied to durable; on the loop an append takes 0.2 ms (median), 2.5 ms
  (p99), 6 ms at most.
- **In a worker thread** otherwise: a larger group (its write takes longer,
  and while it is made durable in a thread the next group is applied: the
  overlap that carries the engine's full batches), a group that needs a new
  segment (its creation zeroes and fsyncs megabytes), and every group for
  `inline_retry_s` after two appends in a row on the loop took longer than the
  limit (a slow or saturated disk must not stall the loop: logged as
  `journal_append_slow`); then one more is tried on the loop, and if it is slow
  too the next 10 s go to threads again. So a slow disk costs the loop two slow
  appends at first, then one per 10 s. One slow append alone is tolerated
  (`appends_slow_tolerated`): a busy machine's scheduler, or an ext4 journal
  commit, makes one now and then on a healthy disk (`tally bench http --workers
  2` met one of 12 to 50 ms in most runs), and 10 s of threaded appends after
  each cost the core about 8 us of CPU per transfer there.

Snapshots are this store's own upkeep: every `snapshot_every_entries` entries, `after_group`
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


INLINE_APPEND_MAX_S = 0.010  # an append on the loop slower than this: threads for a while
INLINE_RETRY_S = 10.0  # how long appends go to a thread after a slow one on the loop
INLINE_GROUP_BYTES_MAX = 64 << 10  # a larger group is appended in a worker thread


class JournalStore:
    """The journal behind the `Store` protocol, with its snapshot policy."""

    inflight_groups = 1

    def __init__(
        self,
        journal: Journal,
        *,
        snapshot_every_entries: int = 0,
        snapshot_directory: str | None = None,
        inline_append_max_s: float = INLINE_APPEND_MAX_S,
        inline_retry_s: float = INLINE_RETRY_S,
        inline_group_bytes_max: int = INLINE_GROUP_BYTES_MAX,
    ) -> None:
        assert snapshot_every_entries >= 0
        assert inline_append_max_s >= 0 and inline_retry_s >= 0
        self.journal = journal
        # 0: every append in a worker thread.
        self.inline_append_max_s = inline_append_max_s
        self.inline_retry_s = inline_retry_s
        self.inline_group_bytes_max = inline_group_bytes_max
        self.threaded_until = 0.0  # time.monotonic() before which appends go to a thread
        self.appends_inline = 0
        self.appends_threaded = 0
        self.appends_slow_tolerated = 0  # slow on the loop, the one before it was not
        self.last_inline_slow = False  # the last append on the loop was over the limit
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
        """One write and one fdatasync for the group: on the event loop or in a worker
        thread (the module docstring says when)."""
        started = time.perf_counter()
        if self._inline(pending, time.monotonic()):
            try:
                self.journal.append(pending)
            finally:
                elapsed = time.perf_counter() - started
                self.appends_inline += 1
                slow = elapsed > self.inline_append_max_s
                previous_slow, self.last_inline_slow = self.last_inline_slow, slow
                if slow and not previous_slow:  # once: a hiccup (an ext4 commit), or the CPU
                    self.appends_slow_tolerated += 1
                elif slow:
                    self.threaded_until = time.monotonic() + self.inline_retry_s
                    logger.warning(
                        orjson.dumps(
                            {
                                "event": "journal_append_slow",
                                "append_ms": round(elapsed * 1000, 3),
                                "limit_ms": self.inline_append_max_s * 1000,
                                "worker_thread_for_s": self.inline_retry_s,
                            }
                        ).decode()
                    )
        else:
            await anyio.to_thread.run_sync(self.journal.append, pending)
            self.appends_threaded += 1
        self.stats.observe_commit(time.perf_counter() - started)

    def _inline(self, pending: list[Entry], now: float) -> bool:
        if self.inline_append_max_s <= 0 or now < self.threaded_until:
            return False
        journal = self.journal
        return journal.group_size(pending) <= min(self.inline_group_bytes_max, journal.room)

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
