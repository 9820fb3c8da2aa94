"""Where entries become durable: one protocol, two stores, one way to open them.

The engine (core/engine.py) knows only `Store`. Its durable stage hands each
group of entries, in order, to `begin_group` (synchronous: it only takes the
group) and awaits `finish_group` in a task per group, at most
`inflight_groups` at once; answers go out strictly in group order, each once
its group is durable. Two stores implement it:

- `JournalStore` (`journal:DIR`, or a bare directory): the embedded journal.
  `finish_group` runs the journal's write + fdatasync in a worker thread, one
  group at a time (`inflight_groups` 1). Between groups, `after_group` forks
  a snapshot of the ledger and the customer state every so many entries.
- `PgStore` (`postgresql://...`, core/pg_store.py): one transaction per group,
  two groups in flight on two connections; rows captured in the apply thread
  (`capture`); compaction inside its groups' transactions.

`open_store(url, ...)` opens either one, recovers, and yields the ledger, the
customer state (the key/value changes of every PUT_STATE entry, applied in
entry order) and what recovery did; closing the context closes the store.
`read_entries(url)` reads the stored entries of either store for the tools
(`tally audit`, `tally sim replay`).

Every store keeps `stats` (`CommitStats`): the per-group durable seconds of
recent groups, their total and count, so /metrics reports the commit latency
of whichever store runs.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.from_thread

from core.dsn import redact_dsn
from core.entries import Entry, apply_entry
from core.errors import TallyError
from ledger.kernel import KernelLedger
from ledger.reference import ReferenceLedger

Ledger = KernelLedger | ReferenceLedger
CustomerState = dict[bytes, bytes]
COMMIT_SAMPLES_MAX = 4096
PG_SCHEMES = ("postgresql://", "postgres://")
JOURNAL_SCHEME = "journal:"


class StoreError(TallyError):
    """A store URL that names no store, or a store that cannot be opened."""


@dataclass(slots=True)
class CommitStats:
    """Store-neutral commit figures: one sample per group made durable."""

    commit_count: int = 0
    commit_seconds_total: float = 0.0
    commit_latency_s: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=COMMIT_SAMPLES_MAX)
    )

    def observe_commit(self, seconds: float) -> None:
        self.commit_count += 1
        self.commit_seconds_total += seconds
        self.commit_latency_s.append(seconds)


class Store(Protocol):
    """Where entries become durable: the embedded journal or PostgreSQL.

    `capture(ledger, entry)` is called in the apply thread right after each
    entry is applied (the PostgreSQL store copies the rows it changed; the
    journal needs nothing). `begin_group(entries, captures)` takes the next
    group, in order; `finish_group(pending)` returns once that group and
    every group before it are durable, and raises if it or any group before
    it failed (the store then refuses every later group). `after_group` runs
    in the apply stage after each group was handed on, while no kernel call
    is under way: store-specific upkeep (the journal's snapshots).
    """

    @property
    def inflight_groups(self) -> int:
        """Groups begun and not yet finished at most (the journal 1, PostgreSQL 2)."""

    @property
    def stats(self) -> CommitStats:
        """Store-neutral commit figures (a store may keep more in a subclass)."""

    @property
    def last_seq(self) -> int:
        """Seq of the last durable entry."""

    def capture(self, ledger: Ledger, entry: Entry) -> Any: ...

    def begin_group(self, entries: Sequence[Entry], captures: Sequence[Any]) -> Any: ...

    async def finish_group(self, pending: Any) -> None: ...

    async def after_group(
        self, ledger: Ledger, state: CustomerState, wait_durable: Callable[[], Awaitable[None]]
    ) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class StoreRecovery:
    """What opening a store found and did."""

    kind: str  # "journal" or "postgresql"
    last_seq: int
    records_replayed: int
    transfers_replayed: int
    snapshot_path: str | None = None
    snapshot_seq: int = 0
    epoch: int | None = None  # the PostgreSQL fencing epoch taken
    migrated: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(slots=True)
class OpenedStore:
    """An open store and the state recovered from it: ready for `Engine(ledger, store, ...,
    state=state)`."""

    store: Store
    ledger: Ledger
    state: CustomerState
    recovery: StoreRecovery


def is_pg_url(url: str) -> bool:
    return url.startswith(PG_SCHEMES)


def journal_directory(url: str) -> str:
    """The directory of a `journal:DIR` URL or a bare directory path."""
    if is_pg_url(url) or "://" in url:
        raise StoreError(f"{url!r} is not a journal: use journal:DIR or a directory path")
    directory = url.removeprefix(JOURNAL_SCHEME)
    if not directory:
        raise StoreError(f"{url!r} names no directory")
    return directory


@asynccontextmanager
async def open_store(
    url: str,
    *,
    account_capacity: int,
    transfer_capacity: int,
    snapshot_every_entries: int = 0,
    journal_options: dict[str, Any] | None = None,
    journal_store_options: dict[str, Any] | None = None,
    pg_options: dict[str, Any] | None = None,
) -> AsyncIterator[OpenedStore]:
    """Open and recover the store at `url`; close it when the context ends.

    Args:
      url: `journal:DIR` (or a bare directory path) for the embedded journal,
        `postgresql://...` for PostgreSQL (asyncio only: asyncpg).
      account_capacity, transfer_capacity: the ledger's table sizes.
      snapshot_every_entries: journal only: fork a snapshot of the ledger and
        the customer state after this many entries (0: never).
      journal_options: more keywords for `Journal.open` (segment_size, ...).
      journal_store_options: more keywords for `JournalStore` (inline_append_max_s,
        ...: where its appends run).
      pg_options: more keywords for `open_pg_store` (owner, epoch_min,
        inflight_groups, commit_timeout_s, ...).

    Returns (yields) an `OpenedStore`: the store, the recovered ledger, the
    recovered customer state and a `StoreRecovery`.

    Resource handling: the store is closed on leaving the context, shielded
    from cancellation (a journal store first waits for a snapshot child).

    Error handling: `JournalCorrupt`/`JournalLocked`/`ReplayError` (journal),
    `PgStoreError` (PostgreSQL), `StoreError` for a URL that names no store;
    everything else propagates.

    Usage:

        async with open_store("journal:/var/lib/tally", account_capacity=1 << 20,
                              transfer_capacity=1 << 22) as opened:
            engine = Engine(opened.ledger, opened.store, rules, state=opened.state)
            async with anyio.create_task_group() as tg:
                await tg.start(engine.serve)
                ...
    """
    if is_pg_url(url):
        opened = await _open_pg(url, account_capacity, transfer_capacity, pg_options or {})
    else:
        opened = await anyio.to_thread.run_sync(
            lambda: _open_journal(
                journal_directory(url),
                account_capacity,
                transfer_capacity,
                snapshot_every_entries,
                journal_options or {},
                journal_store_options or {},
            )
        )
    try:
        yield opened
    finally:
        with anyio.CancelScope(shield=True):
            await opened.store.close()


def _open_journal(
    directory: str,
    account_capacity: int,
    transfer_capacity: int,
    snapshot_every_entries: int,
    options: dict[str, Any],
    store_options: dict[str, Any],
) -> OpenedStore:
    """Open (recovering the tail) and lock the journal, then rebuild ledger and state."""
    from core.journal import Journal
    from core.journal_store import JournalStore
    from core.replay import recover_ledger

    started = time.perf_counter()
    journal = Journal.open(directory, **options)
    try:
        recovered = recover_ledger(directory, account_capacity, transfer_capacity)
    except BaseException:
        journal.close()
        raise
    store = JournalStore(journal, snapshot_every_entries=snapshot_every_entries, **store_options)
    recovery = StoreRecovery(
        kind="journal",
        last_seq=recovered.last_seq,
        records_replayed=recovered.records_replayed,
        transfers_replayed=recovered.transfers_replayed,
        snapshot_path=recovered.snapshot_path,
        snapshot_seq=recovered.snapshot_seq,
        warnings=recovered.warnings,
        seconds=time.perf_counter() - started,
    )
    return OpenedStore(store, recovered.ledger, recovered.state, recovery)


async def _open_pg(
    dsn: str, account_capacity: int, transfer_capacity: int, options: dict[str, Any]
) -> OpenedStore:
    from core.pg_store import open_pg_store

    opened = await open_pg_store(
        dsn, account_capacity=account_capacity, transfer_capacity=transfer_capacity, **options
    )
    recovery = StoreRecovery(
        kind="postgresql",
        last_seq=opened.store.last_seq,
        records_replayed=opened.store.last_seq,
        transfers_replayed=opened.ledger.log_count,  # transfer records replayed
        epoch=opened.store.epoch,
        migrated=opened.migrated,
        seconds=opened.load_s,
    )
    return OpenedStore(opened.store, opened.ledger, opened.state, recovery)


def read_entries(url: str, from_seq: int = 1) -> Iterator[tuple[int, Entry]]:
    """The stored entries of either store, in seq order, each checked: (seq, Entry).

    Blocking (a tool's reader: `tally audit`, `tally sim replay`); for
    PostgreSQL it reads in chunks through its own event loop in a portal.
    A journal whose older segments were removed after a snapshot starts
    later than seq 1: callers that need the whole history check the first seq.
    """
    if is_pg_url(url):
        yield from _read_pg_entries(url, from_seq)
        return
    from core.journal import JournalScan

    for stored in JournalScan(journal_directory(url), from_seq=from_seq):
        yield stored.seq, stored.entry


def _read_pg_entries(dsn: str, from_seq: int) -> Iterator[tuple[int, Entry]]:
    import asyncpg

    from core.pg_store import PgStoreError
    from core.pg_store import read_entries as read_pg_entries

    with anyio.from_thread.start_blocking_portal() as portal:
        try:
            connection = portal.call(asyncpg.connect, dsn)
        except (OSError, asyncpg.PostgresError) as error:
            raise PgStoreError(f"cannot connect to {redact_dsn(dsn)}: {error}") from error
        try:
            entries = read_pg_entries(connection, from_seq)
            while True:
                try:
                    yield portal.call(entries.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            portal.call(connection.close)


@dataclass(slots=True)
class Replayed:
    """A ledger and customer state rebuilt offline from a store's entries."""

    ledger: Ledger
    state: CustomerState
    last_seq: int
    entries_replayed: int


def replay_store(
    url: str, account_capacity: int, transfer_capacity: int, *, backend: str = "kernel"
) -> Replayed:
    """Rebuild ledger and state from either store without opening it for writing.

    Blocking. The journal: newest good snapshot plus the records after it
    (`recover_ledger`); PostgreSQL: every entry of `tally_entries` replayed.
    """
    if not is_pg_url(url):
        from core.replay import recover_ledger

        recovered = recover_ledger(
            journal_directory(url), account_capacity, transfer_capacity, backend=backend
        )
        return Replayed(
            recovered.ledger, recovered.state, recovered.last_seq, recovered.records_replayed
        )
    from ledger import open_ledger

    ledger = open_ledger(
        account_capacity=account_capacity, transfer_capacity=transfer_capacity, backend=backend
    )
    state: CustomerState = {}
    last_seq = 0
    for seq, entry in read_entries(url):
        apply_entry(ledger, entry, state)
        last_seq = seq
    return Replayed(ledger, state, last_seq, last_seq)


def is_store_url(source: str) -> bool:
    """Whether `source` names a store `read_entries` can read (not an HTTP URL, a file)."""
    if is_pg_url(source):
        return True
    if source.startswith(JOURNAL_SCHEME):
        return True
    return os.path.isdir(source)


__all__ = [
    "CommitStats",
    "CustomerState",
    "OpenedStore",
    "Replayed",
    "Store",
    "StoreError",
    "StoreRecovery",
    "is_pg_url",
    "is_store_url",
    "journal_directory",
    "open_store",
    "read_entries",
    "replay_store",
]
