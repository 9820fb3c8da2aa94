"""The PostgreSQL store: the engine's groups committed through asyncpg, one transaction each.

What one engine group becomes (`PgStore.append_async`, or `begin_group` and
`finish_group`), in ONE transaction (written in the order below, except with
two groups in flight: see further):

1. `UPDATE tally_epoch SET last_seq = <new> WHERE epoch = <mine> AND last_seq = <expected>`:
   the fencing token. Zero rows means a newer engine took over (or someone
   else appended): the store refuses, raises `StoreFenced`, and the engine stops.
2. the group's entries, binary COPY into `tally_entries` (the authoritative log);
3. the group's new transfer records, binary COPY into `tally_transfer_records`
   (id, seq, and the kernel's 128-byte record as it is; the view
   `tally_transfers` decodes it), whose primary key is the transfer id:
   idempotency is recorded by the key;
4. existing transfers the group changed (holds posted, voided or expired,
   amounts reversed): one set-based `UPDATE ... FROM unnest(...)` of their records;
   and the group's customer-state changes (its PUT_STATE entries, merged: the
   last change of each key wins): one upsert and one DELETE on `tally_state`.
   After the epoch check, like 4: two groups in flight may change one key, and
   the later one must neither overtake the earlier nor wait on its row lock
   while that one waits for it;
5. every changed account row (balances, pending, PBoC limit counters), as it
   is after the group: binary COPY into the append-only
   `tally_account_versions`, tagged with the group's last seq, each row the
   kernel's 80 bytes as they are (a view decodes them);
6. every so many version rows (`compact_versions_max`, or `compact_accounts_max`
   accounts changed), instead of 5: a compaction. Each account changed since
   the last compaction is written once, as it is now, into
   `tally_accounts_compacted` (its raw row by binary COPY to a temporary
   table, then one `UPDATE ... FROM` that decodes them, and an INSERT of new
   accounts), and the versions are emptied (TRUNCATE; a DELETE if a reader
   holds the table). The view `tally_accounts` is the latest version of each
   account over the compacted rows, in any snapshot. Why: the per-group
   upsert of every changed account cost ~10-15 us a row (measured), a COPY of
   a version row ~1 us and a compaction ~5-6 us per account; with 100,000
   accounts a compaction every ~70 groups writes each account once instead
   of once per group that touched it;
7. COMMIT. Only when COMMIT returned, without the "committed locally but might
   not have been replicated" warning, does the engine answer the group.

Two groups in flight (`begin_group`, `finish_group`; `inflight_groups`
connections, 2 by default, used in turn). While group N commits (its WAL
flush, its synchronous standby), group N+1's transaction on the other
connection already COPYs what depends on no other group: 2, 3 and 5, new
keys only. Then it waits until N's COMMIT returned, and only then does 1
(the epoch row must say N is there: before, it would be refused), 4 (under
READ COMMITTED it sees the rows N inserted only once N committed), 6 and
COMMIT. So groups commit in seq order, and any snapshot (`verify`'s) sees a
prefix of them. If N fails, N+1 rolls back, is never committed and the store
refuses every later group (the engine answers them EngineStopped). A lost
connection is resolved (below) only once the group before is settled, so the
epoch row then says which of the two it is. A compacting group's successor
starts only once it committed: the compaction empties the versions and takes
the accounts as they are after that group, so no later group's rows may be
in flight. `_latest` and `_versions_rows` advance when a group is begun, in
order; after a failure the store is unusable, so they never lag PostgreSQL.

Rows are captured in the apply thread (`capture`, called by the engine right
after each entry is applied, from the kernel's change tracking), because the
engine pipelines: by the time the durable stage commits group N, group N+1 may
already have changed the same rows in memory.

Ids and unsigned fields are stored as signed integers of the same bits (the
kernels' unsigned 64-bit id halves as bigint), so a row unpacks from and packs
back to the kernels' exact record bytes (`TRANSFER_ROW`, `ACCOUNT_ROW`).

Outcome unknown. A connection lost during COMMIT (or a statement before it)
leaves the group's outcome unknown. The store never re-posts blindly: it
reconnects, ends the old backend (`pg_terminate_backend`), locks the epoch
row (`FOR UPDATE` waits for any transaction still holding it) and reads
`last_seq` back: if the group's seqs are there (and its entries' timestamps
match), it committed; if `last_seq` is still the expected one, nothing of it
did, and the same group (same seqs, same epoch check) is written in that very
transaction. Either way the resolving transaction writes the epoch row, so its
COMMIT also waits for the synchronous standby: an earlier commit that was only
local is acknowledged only once it is replicated too.

Failover (Patroni, docs/ha.md). The DSN may list the cluster's members with
`target_session_attrs=read-write`: every connection (`connect`) goes to the
member that takes writes. When the primary dies mid-group, the resolution
above reconnects through the same DSN, so it lands on the promoted standby
once Patroni has promoted it (within `reconnect_timeout_s`); the synchronous
standby had every committed group, so the epoch row there says whether the
group in flight committed, exactly as on the old primary. The old backend is
ended only where it ran (matched by the connection's unique application name,
not by its pid alone, which on another server is someone else's). If the
promotion takes longer, the store fails, and the services' lifecycle opens it
again through the DSN: a new epoch and a ledger rebuilt from the new primary.

A COMMIT that returns with PostgreSQL's warning that the transaction "has
already committed locally, but might not have been replicated" (a cancelled
synchronous-replication wait) is an ambiguous commit: the store raises
`CommitUnsafe` and refuses every later group; the engine stops without
answering, and restarts from what PostgreSQL has.

Startup (`open_pg_store`): migrations (advisory lock), a new fencing epoch
(taken with `FOR UPDATE`, so an old engine's in-flight transaction finishes
first and every later one of it is refused), the versions an earlier engine
left are compacted in SQL (`compact_versions`), then the ledger is rebuilt by
replaying `tally_entries` through `apply_entry` (the customer state too, checked
against `tally_state`, which is what is loaded): the kernels' tables (accounts,
counters, holds, channel counters, the idempotency window of the transfer log)
are then byte for byte what the engine had, which the row tables cannot give
(the channel counters and the heap of holds are not rows), and it is the same
recovery path as the embedded journal's. `verify` checks the row tables
against both the transfers and the replayed kernel state.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from core.dsn import redact_dsn
from core.entries import Entry, EntryKind, apply_entry, decode_state_changes
from core.errors import TallyError
from core.pg_schema import ACCOUNT_COLUMNS, TRANSFER_COLUMNS, migrate
from core.store import CommitStats, CustomerState
from ledger.kernel import KernelLedger
from ledger.state import ACCOUNT_ROW_SIZE
from ledger.types import ACCOUNT_SIZE, DEPOSIT_SIZE, PENDING_SIZE, TRANSFER_SIZE, TransferFlags

logger = logging.getLogger(__name__)

# Signed views of ledger.types.TRANSFER_STRUCT / ACCOUNT_STRUCT: same bytes, PostgreSQL types.
TRANSFER_ROW = struct.Struct("<qqqqqqqqqqihhhBBiihBBqqq")
ACCOUNT_ROW = struct.Struct("<qqqqiiiiihBBhhhh")
PENDING_ROW = struct.Struct("<qq")
ID_ROW = struct.Struct("<qq")  # a transfer record's id, its first 16 bytes
assert TRANSFER_ROW.size == TRANSFER_SIZE and ACCOUNT_ROW.size == ACCOUNT_SIZE
# A stored account row is the ledger's per-account rows (ledger.state.PER_ACCOUNT_TABLES):
# account, pending, deposit (the deposit row as bytes: its layout depends on the kind).
assert ACCOUNT_ROW.size + PENDING_ROW.size + DEPOSIT_SIZE == ACCOUNT_ROW_SIZE
DEPOSIT_OFFSET = ACCOUNT_SIZE + PENDING_SIZE
DEPOSIT_ZERO = bytes(DEPOSIT_SIZE)
assert len(TRANSFER_COLUMNS) == len(TRANSFER_ROW.unpack(bytes(TRANSFER_SIZE)))
assert len(ACCOUNT_COLUMNS) == len(ACCOUNT_ROW.unpack(bytes(ACCOUNT_SIZE)))

UNREPLICATED_MARKER = "might not have been replicated"
REPLAY_CHUNK_ENTRIES = 64
RECONNECT_TIMEOUT_S_DEFAULT = 30.0
COMMIT_TIMEOUT_S_DEFAULT = 60.0
RESOLVE_ATTEMPTS_MAX = 8
HOLD_FLAGS = int(TransferFlags.PENDING | TransferFlags.VOID_PENDING)
# A compaction when this many version rows were appended since the last one (~130 MB
# of table), or this many distinct accounts changed (bounds the store's memory of them
# and one compaction's statement).
COMPACT_VERSIONS_MAX_DEFAULT = 1 << 20
COMPACT_ACCOUNTS_MAX_DEFAULT = 1 << 18
# Groups in flight, one connection each: the next group's rows are written while the
# one before commits (and waits for its WAL flush, its synchronous standby).
INFLIGHT_GROUPS_DEFAULT = 2


class PgStoreError(TallyError):
    """The PostgreSQL store cannot go on (connection, server, schema)."""


class StoreFenced(PgStoreError):
    """A newer engine holds the fencing epoch: this one must stop writing."""


class CommitUnsafe(PgStoreError):
    """COMMIT returned with the 'might not have been replicated' warning: not acknowledged."""


class CommitUnresolved(PgStoreError):
    """A group's commit outcome could not be established (the server stayed away)."""


def _connection_errors(*more: type[Exception]) -> tuple[type[Exception], ...]:
    import asyncpg

    return (
        *more,
        OSError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.exceptions.InternalClientError,
    )


def _write_refused_errors() -> tuple[type[Exception], ...]:
    """What PostgreSQL answers when it cannot take writes now (read-only, a full disk,
    out of resources, an I/O error, shutting down): the store is unavailable, not broken,
    and opening it is retried."""
    import asyncpg

    return (
        asyncpg.exceptions.ReadOnlySQLTransactionError,
        asyncpg.exceptions.InsufficientResourcesError,
        asyncpg.exceptions.PostgresSystemError,
        asyncpg.exceptions.OperatorInterventionError,
    )


@dataclass(slots=True)
class Changes:
    """The rows one applied entry changed, copied in the apply thread."""

    new_first_seq: int
    new_rows: list[tuple[int, int, int, bytes]]  # (id_lo, id_hi, seq, record), as COPYed
    changed: list[tuple[int, bytes]]
    accounts: list[tuple[int, bytes]]


@dataclass(slots=True)
class StoreStats(CommitStats):
    entries: int = 0
    transfers: int = 0
    resolved_committed: int = 0
    resolved_rewritten: int = 0
    reconnects: int = 0
    compactions: int = 0
    phase_s: dict[str, float] = field(default_factory=dict)

    def phase(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.phase_s[name] = self.phase_s.get(name, 0.0) + now - started
        return now


class Link:
    """One connection of the store, the warnings its server sent, and who uses it."""

    def __init__(self, connection: Any) -> None:
        self.lock = anyio.Lock()
        self.warnings: list[Any] = []
        self.connection: Any = None
        self.server_pid: int | None = None
        self.application_name: str | None = None
        self.listen(connection)

    def listen(self, connection: Any) -> None:
        self.connection = connection
        self.server_pid = connection.get_server_pid()
        # Names this backend on whichever server it is (see `connect`).
        self.application_name = connection.get_settings().application_name
        connection.add_log_listener(lambda _connection, message: self.warnings.append(message))


@dataclass(slots=True, eq=False)
class PendingGroup:
    """A group begun (`PgStore.begin_group`) and not yet finished."""

    entries: list[Entry]
    rows: GroupRows
    first_seq: int
    compact: bool
    latest: list[tuple[int, bytes]]  # a compaction's accounts: (slot, row) as of this group
    previous: PendingGroup | None
    link: Link
    state_puts: list[tuple[bytes, bytes]]  # the group's state changes, one per key
    state_deletes: list[bytes]
    ok: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.entries) - 1


def transfer_rows(records: bytes, first_seq: int) -> list[tuple[int, int, int, bytes]]:
    """(id_lo, id_hi, seq, record) of each record: the COPY rows of tally_transfer_records."""
    unpack_id = ID_ROW.unpack_from
    return [
        (*unpack_id(records, offset), seq, records[offset : offset + TRANSFER_SIZE])
        for seq, offset in zip(
            itertools.count(first_seq), range(0, len(records), TRANSFER_SIZE), strict=False
        )
    ]


def capture_changes(ledger: KernelLedger, log_count_before: int) -> Changes:
    """The rows changed since the last take: new log records, changed records, accounts.

    Already in the shape the COPYs take: this runs in the engine's apply thread,
    while the durable stage waits on PostgreSQL with the previous group.
    """
    slots, seqs, overflowed = ledger.take_changes()
    log_count = ledger.log_count
    new_rows = transfer_rows(ledger.log_records(log_count_before, log_count), log_count_before)
    if overflowed:
        # More existing transfers changed than the kernel could list: take the window.
        changed_seqs: Sequence[int] = range(ledger.log_tail, log_count_before)
    else:
        changed_seqs = sorted(set(seqs))
    changed = [(seq, ledger.record_at(seq)) for seq in changed_seqs if seq < log_count_before]
    accounts = ledger.account_rows(set(slots))
    return Changes(log_count_before, new_rows, changed, accounts)


@dataclass(slots=True)
class GroupRows:
    """One group's rows, merged in order: later changes to the same row win.

    transfers: (id_lo, id_hi, seq, record) of each new record; changed: the
    records of existing transfers; accounts: (slot, account row + pending row).
    """

    transfers: list[tuple[int, int, int, bytes]]
    changed: list[bytes]
    accounts: list[tuple[int, bytes]]


def merge_changes(captures: Sequence[Changes]) -> GroupRows:
    if len(captures) == 1:  # the common case: one entry, nothing to merge
        only = captures[0]
        return GroupRows(only.new_rows, [record for _, record in only.changed], only.accounts)
    new_first = captures[0].new_first_seq if captures else 0
    transfers: list[tuple[int, int, int, bytes]] = []
    changed: dict[int, bytes] = {}
    accounts: dict[int, bytes] = {}
    for changes in captures:
        assert changes.new_first_seq == new_first + len(transfers)
        transfers += changes.new_rows
        for seq, record in changes.changed:
            if seq >= new_first:  # new in this group: its row is written once, as it is now
                id_lo, id_hi, stored_seq, _ = transfers[seq - new_first]
                assert stored_seq == seq
                transfers[seq - new_first] = (id_lo, id_hi, seq, record)
            else:
                changed[seq] = record
        for slot, row in changes.accounts:
            accounts[slot] = row
    return GroupRows(transfers, list(changed.values()), list(accounts.items()))


UPDATE_TRANSFERS = """
UPDATE tally_transfer_records AS t SET record = u.record
FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS u(id_lo, id_hi, record)
WHERE t.id_lo = u.id_lo AND t.id_hi = u.id_hi
"""
TRANSFER_RECORD_COLUMNS = ("id_lo", "id_hi", "seq", "record")

_ACCOUNT_ALL = ("slot", *ACCOUNT_COLUMNS, "debits_pending", "credits_pending", "deposit")
ENTRY_COLUMNS = ("seq", "kind", "timestamp_first", "business_day", "count", "epoch", "payload")
VERSION_COLUMNS = ("seq", "slot", "row")
COMPACT_STAGE = (
    "CREATE TEMPORARY TABLE tally_compact_stage (slot integer NOT NULL, row bytea NOT NULL)"
    " ON COMMIT DROP"
)
_UPSERT_SET = ", ".join(f"{name} = EXCLUDED.{name}" for name in _ACCOUNT_ALL[1:])


def _decoded_columns() -> str:
    """`row` (the kernel's account + pending + deposit bytes) decoded by the schema's
    tally_le_*; the deposit row stays bytes."""
    functions = {"q": "tally_le_int8", "i": "tally_le_int4", "h": "tally_le_int2"}
    functions["B"] = "tally_le_uint1"
    columns, offset = [], 0
    for name, code in zip(_ACCOUNT_ALL[1:-1], "qqqqiiiiihBBhhhhqq", strict=True):
        columns.append(f"{functions[code]}(row, {offset}) AS {name}")
        offset += struct.calcsize(code)
    assert offset == DEPOSIT_OFFSET
    columns.append(f"substring(row FROM {offset + 1} FOR {DEPOSIT_SIZE}) AS deposit")
    return ", ".join(columns)


_STAGED = f"SELECT slot, {_decoded_columns()} FROM tally_compact_stage"
COMPACT_UPDATE = (
    "UPDATE tally_accounts_compacted AS a SET "
    + ", ".join(f"{name} = s.{name}" for name in _ACCOUNT_ALL[1:])
    + f" FROM ({_STAGED}) AS s WHERE a.slot = s.slot"
)
COMPACT_INSERT = (
    f"INSERT INTO tally_accounts_compacted ({', '.join(_ACCOUNT_ALL)})"
    f" SELECT * FROM ({_STAGED}) AS s"
    " WHERE NOT EXISTS (SELECT FROM tally_accounts_compacted AS a WHERE a.slot = s.slot)"
)
COMPACT_VERSIONS = (
    f"INSERT INTO tally_accounts_compacted ({', '.join(_ACCOUNT_ALL)})"
    f" SELECT {', '.join(_ACCOUNT_ALL)} FROM tally_account_versions_latest"
    f" ON CONFLICT (slot) DO UPDATE SET {_UPSERT_SET}"
)


def account_row_values(slot: int, row: bytes) -> tuple[Any, ...]:
    """A table row (`tally_accounts` columns) of a stored account row (a version written
    before migration 6 has no deposit row: zero)."""
    deposit = bytes(row[DEPOSIT_OFFSET : DEPOSIT_OFFSET + DEPOSIT_SIZE]) or DEPOSIT_ZERO
    return (
        slot,
        *ACCOUNT_ROW.unpack_from(row, 0),
        *PENDING_ROW.unpack_from(row, ACCOUNT_SIZE),
        deposit,
    )


def account_record(values: Sequence[Any]) -> bytes:
    """The kernel's 64-byte account row, 16-byte pending row and 32-byte deposit row
    (ACCOUNT_ROW_SIZE) from a table row."""
    fields = list(values)
    columns = len(ACCOUNT_COLUMNS)
    return (
        ACCOUNT_ROW.pack(*fields[:columns])
        + PENDING_ROW.pack(*fields[columns : columns + 2])
        + bytes(fields[columns + 2])
    )


def transfer_record(values: Sequence[Any]) -> bytes:
    return TRANSFER_ROW.pack(*values)


class PgStore:
    """The engine's store on PostgreSQL (asyncio only: asyncpg). Open with `open_pg_store`."""

    def __init__(
        self,
        dsn: str,
        connection: Any,
        *,
        epoch: int,
        last_seq: int,
        log_count: int,
        reconnect_timeout_s: float = RECONNECT_TIMEOUT_S_DEFAULT,
        commit_timeout_s: float = COMMIT_TIMEOUT_S_DEFAULT,
        compact_versions_max: int = COMPACT_VERSIONS_MAX_DEFAULT,
        compact_accounts_max: int = COMPACT_ACCOUNTS_MAX_DEFAULT,
        more_connections: Sequence[Any] = (),
    ) -> None:
        assert compact_versions_max >= 1 and compact_accounts_max >= 1
        self.dsn = dsn
        # Groups the engine may have in flight (`begin_group` .. `finish_group`): one
        # connection each, used in turn.
        self.inflight_groups = 1 + len(more_connections)
        # False: each group starts only once the one before committed (as with one
        # connection), for a peer measurement in the same run (`tally bench pg`).
        self.overlap = True
        self.compact_versions_max = compact_versions_max
        self.compact_accounts_max = compact_accounts_max
        self.epoch = epoch
        self.reconnect_timeout_s = reconnect_timeout_s
        self.commit_timeout_s = commit_timeout_s
        self.stats = StoreStats()
        self._links = [Link(one) for one in (connection, *more_connections)]
        self._last_seq = last_seq  # committed
        self._begun_seq = last_seq  # handed to `begin_group`
        self._begun = 0
        self._tail: PendingGroup | None = None  # the last group begun
        self._log_count = log_count  # the apply side's view: captured up to here
        self._failure: str | None = None
        # Accounts changed since the last compaction, as they are now (slot -> row), and
        # how many version rows were appended since (the table is empty at open).
        self._latest: dict[int, bytes] = {}
        self._versions_rows = 0

    @property
    def _connection(self) -> Any:
        """The first connection (the only one with `inflight_groups` 1)."""
        return self._links[0].connection

    # --- Store protocol ---------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def capture(self, ledger: KernelLedger | Any, entry: Entry) -> Changes:
        """Called by the engine in its apply thread right after `entry` was applied."""
        assert isinstance(ledger, KernelLedger), "the PostgreSQL store needs the kernel ledger"
        changes = capture_changes(ledger, self._log_count)
        self._log_count = ledger.log_count
        return changes

    async def after_group(self, ledger: Any, state: CustomerState, wait_durable: Any) -> None:
        """Nothing between groups: compaction happens inside a group's transaction."""

    async def append_async(self, entries: Sequence[Entry], captures: Sequence[Any]) -> None:
        """Commit one group (see the module docstring); returns once it is safely durable."""
        await self.finish_group(self.begin_group(entries, captures))

    def begin_group(self, entries: Sequence[Entry], captures: Sequence[Any]) -> PendingGroup:
        """Take the next group, in order; `finish_group` writes and commits it.

        Up to `inflight_groups` groups may be begun and not yet finished: each
        one's independent rows are written on its own connection while the one
        before it commits; it commits only once that one has committed.
        """
        if self._failure is not None:
            raise PgStoreError(f"store unusable after an earlier failure: {self._failure}")
        assert len(entries) >= 1 and len(captures) == len(entries)
        for entry in entries:
            entry.check()
        rows = merge_changes(captures)
        first_seq = self._begun_seq + 1
        # The store is unusable after a failure, so this bookkeeping may run ahead of
        # PostgreSQL (by the groups in flight) but never behind it.
        self._latest.update(rows.accounts)
        compact = (
            self._versions_rows + len(rows.accounts) >= self.compact_versions_max
            or len(self._latest) >= self.compact_accounts_max
        )
        latest: list[tuple[int, bytes]] = []
        if compact:
            latest = sorted(self._latest.items())
            self._latest.clear()
            self._versions_rows = 0
        else:
            self._versions_rows += len(rows.accounts)
        state_puts, state_deletes = merge_state_changes(entries)
        pending = PendingGroup(
            list(entries),
            rows,
            first_seq,
            compact,
            latest,
            self._tail,
            self._links[self._begun % len(self._links)],
            state_puts,
            state_deletes,
        )
        self._begun += 1
        self._begun_seq = pending.last_seq
        self._tail = pending
        return pending

    async def finish_group(self, pending: PendingGroup) -> None:
        """Write and commit a begun group after the one before it; once durable, returns."""
        import asyncpg

        started = time.perf_counter()
        try:
            if self._failure is not None:
                raise PgStoreError(f"store unusable after an earlier failure: {self._failure}")
            try:
                with anyio.fail_after(self.commit_timeout_s):
                    await self._commit_group(pending)
            except TimeoutError as error:
                raise CommitUnresolved(
                    f"group {pending.first_seq}..: no COMMIT within {self.commit_timeout_s} s"
                ) from error
            except asyncpg.PostgresError as error:  # the server refused (disk full, ...)
                raise PgStoreError(
                    f"group {pending.first_seq}..: {type(error).__name__}: {error}"
                ) from error
        except BaseException as error:
            if self._failure is None:
                self._failure = str(error) or repr(error)
            raise
        else:
            pending.ok = True
            assert self._last_seq == pending.first_seq - 1
            self._last_seq = pending.last_seq
        finally:
            pending.previous = None  # no chain of every group ever begun
            pending.done.set()
        if pending.compact:
            self.stats.compactions += 1
        self.stats.entries += len(pending.entries)
        self.stats.transfers += len(pending.rows.transfers)
        self.stats.observe_commit(time.perf_counter() - started)

    async def close(self) -> None:
        for link in self._links:
            if link.connection is not None:
                connection, link.connection = link.connection, None
                try:
                    with anyio.fail_after(5):
                        await connection.close()
                except _connection_errors(TimeoutError):
                    connection.terminate()

    # --- one group ----------------------------------------------------------------

    async def _previous_committed(self, pending: PendingGroup) -> None:
        """Wait until the group before `pending` committed; raise if it did not."""
        previous = pending.previous
        if previous is not None:
            mark = time.perf_counter()
            await previous.done.wait()
            self.stats.phase("previous", mark)
            if not previous.ok:
                raise PgStoreError(
                    f"group {pending.first_seq}..: not written, the group before it failed"
                    f" ({self._failure})"
                )

    async def _commit_group(self, pending: PendingGroup) -> None:
        errors = _connection_errors()
        link = pending.link
        previous = pending.previous
        if previous is not None and (previous.compact or not self.overlap):
            # A compaction empties the versions: no other group's rows may be in flight.
            await self._previous_committed(pending)
        async with link.lock:
            try:
                await self._write_group(link, pending, resolving=False)
                return
            except errors as error:
                logger.warning(
                    "group %d..: connection lost (%s): resolving", pending.first_seq, error
                )
                lost: BaseException = error
            # Resolved only once the group before it is settled: this one's COMMIT was
            # not sent before that one's returned, and the epoch row then says which.
            await self._previous_committed(pending)
            for attempt in range(RESOLVE_ATTEMPTS_MAX):
                await self._reconnect(link, lost)
                try:
                    await self._write_group(link, pending, resolving=True)
                    return
                except errors as error:
                    logger.warning(
                        "group %d..: resolution attempt %d lost (%s)",
                        pending.first_seq,
                        attempt,
                        error,
                    )
                    lost = error
        raise CommitUnresolved(
            f"group {pending.first_seq}..{pending.last_seq}: outcome unknown after"
            f" {RESOLVE_ATTEMPTS_MAX} attempts: {lost}"
        )

    async def _write_group(self, link: Link, pending: PendingGroup, *, resolving: bool) -> None:
        """One transaction: the group's independent rows, then (after the group before
        it committed) the fencing epoch check, the changed transfers, a compaction."""
        connection = link.connection
        entries, rows, first_seq = pending.entries, pending.rows, pending.first_seq
        last_seq = pending.last_seq
        expected = first_seq - 1
        transaction = connection.transaction()
        await transaction.start()
        try:
            if resolving:
                row = await connection.fetchrow(
                    "SELECT epoch, last_seq FROM tally_epoch FOR UPDATE"
                )
                if row["epoch"] != self.epoch:
                    raise StoreFenced(
                        f"epoch {self.epoch} fenced off by epoch {row['epoch']}"
                        f" (group {first_seq}..)"
                    )
                if row["last_seq"] == last_seq:
                    await self._check_committed(connection, entries, first_seq)
                    # A write, so that this COMMIT waits for the synchronous standby as well.
                    await connection.execute(
                        "UPDATE tally_epoch SET last_seq = last_seq WHERE epoch = $1", self.epoch
                    )
                    await self._commit(link, transaction, first_seq)
                    self.stats.resolved_committed += 1
                    return
                if row["last_seq"] != expected:
                    raise PgStoreError(
                        f"tally_epoch.last_seq is {row['last_seq']}; this engine expected"
                        f" {expected} or {last_seq}: another writer in epoch {self.epoch}?"
                    )
                self.stats.resolved_rewritten += 1
            # Independent of the group before: new keys only (seqs, transfer ids, versions).
            mark = time.perf_counter()
            await connection.copy_records_to_table(
                "tally_entries",
                records=[
                    (
                        first_seq + index,
                        int(entry.kind),
                        entry.timestamp_first,
                        entry.business_day,
                        entry.count,
                        self.epoch,
                        entry.payload,
                    )
                    for index, entry in enumerate(entries)
                ],
                columns=ENTRY_COLUMNS,
            )
            mark = self.stats.phase("entries", mark)
            if rows.transfers:
                await connection.copy_records_to_table(
                    "tally_transfer_records",
                    records=rows.transfers,
                    columns=TRANSFER_RECORD_COLUMNS,
                )
            mark = self.stats.phase("transfers", mark)
            if not pending.compact and rows.accounts:
                await connection.copy_records_to_table(
                    "tally_account_versions",
                    records=[(last_seq, slot, row) for slot, row in rows.accounts],
                    columns=VERSION_COLUMNS,
                )
                self.stats.phase("accounts", mark)
            # Dependent on it: the epoch row (it must say the group before is committed),
            # records it inserted (READ COMMITTED sees them only once it committed), and
            # a compaction of every account as it is after this group.
            await self._previous_committed(pending)
            mark = time.perf_counter()
            status = await connection.execute(
                "UPDATE tally_epoch SET last_seq = $3 WHERE epoch = $1 AND last_seq = $2",
                self.epoch,
                expected,
                last_seq,
            )
            if status != "UPDATE 1":
                current = await connection.fetchrow("SELECT epoch, last_seq FROM tally_epoch")
                raise StoreFenced(
                    f"epoch {self.epoch} may not write seq {first_seq}..{last_seq}: tally_epoch"
                    f" holds epoch {current['epoch']}, last_seq {current['last_seq']}"
                )
            mark = self.stats.phase("epoch", mark)
            if rows.changed:
                ids = [ID_ROW.unpack_from(record) for record in rows.changed]
                status = await connection.execute(
                    UPDATE_TRANSFERS,
                    [id_lo for id_lo, _ in ids],
                    [id_hi for _, id_hi in ids],
                    rows.changed,
                )
                assert status == f"UPDATE {len(rows.changed)}", (status, len(rows.changed))
            mark = self.stats.phase("changed", mark)
            if pending.state_puts or pending.state_deletes:
                await write_state(connection, pending.state_puts, pending.state_deletes)
                mark = self.stats.phase("state", mark)
            if pending.compact:
                await self._compact(connection, pending.latest)
                mark = self.stats.phase("compact", mark)
        except BaseException:
            if not connection.is_closed():
                try:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await transaction.rollback()
                except _connection_errors():
                    pass
            raise
        mark = time.perf_counter()
        await self._commit(link, transaction, first_seq)
        self.stats.phase("commit", mark)

    async def _compact(self, connection: Any, latest: list[tuple[int, bytes]]) -> None:
        """Every account changed since the last compaction, upserted once; versions emptied.

        The raw rows go in by binary COPY to a temporary table, then one UPDATE joined
        to them, decoded in SQL (and an INSERT of the accounts not there yet). Measured
        per row, with 100,000 accounts: 19 arrays to `unnest` cost ~7 us by themselves;
        typed rows COPYed and upserted ~11-15 us; raw rows COPYed, decoded and
        UPDATEd ~5-6 us (`INSERT ... ON CONFLICT` is ~8 us a row of the total alone).
        """
        if latest:
            await connection.execute(COMPACT_STAGE)
            await connection.copy_records_to_table(
                "tally_compact_stage", records=latest, columns=("slot", "row")
            )
            await connection.execute("ANALYZE tally_compact_stage")
            status = await connection.execute(COMPACT_UPDATE)
            if int(status.split()[-1]) < len(latest):
                await connection.execute(COMPACT_INSERT)
        await empty_versions(connection)

    async def _commit(self, link: Link, transaction: Any, first_seq: int) -> None:
        link.warnings.clear()
        await transaction.commit()
        await anyio.lowlevel.checkpoint()  # log listeners are called soon after the message arrives
        for message in link.warnings:
            text = f"{getattr(message, 'message', '')} {getattr(message, 'detail', '') or ''}"
            if UNREPLICATED_MARKER in text:
                raise CommitUnsafe(
                    f"group {first_seq}..: COMMIT returned a warning: {text.strip()}; the"
                    " group is committed on the primary only and is not acknowledged"
                )

    async def _check_committed(
        self, connection: Any, entries: Sequence[Entry], first_seq: int
    ) -> None:
        """Pair check of a group found committed: its seqs hold exactly its entries."""
        stored = await connection.fetch(
            "SELECT seq, kind, timestamp_first, count, epoch FROM tally_entries"
            " WHERE seq BETWEEN $1 AND $2 ORDER BY seq",
            first_seq,
            first_seq + len(entries) - 1,
        )
        expected = [
            (first_seq + i, int(e.kind), e.timestamp_first, e.count, self.epoch)
            for i, e in enumerate(entries)
        ]
        found = [tuple(row) for row in stored]
        assert found == expected, (found, expected)

    async def _reconnect(self, link: Link, cause: BaseException) -> None:
        """A new connection; the old backend is ended so it cannot commit behind our back."""

        old = link.connection
        old_pid, old_name = link.server_pid, link.application_name
        if old is not None:
            old.terminate()
        deadline = time.monotonic() + self.reconnect_timeout_s
        while True:
            try:
                with anyio.fail_after(max(0.1, deadline - time.monotonic())):
                    connection = await connect(self.dsn)
                break
            except _connection_errors(TimeoutError, PgStoreError) as error:
                if time.monotonic() >= deadline:
                    raise CommitUnresolved(
                        f"cannot reach PostgreSQL within {self.reconnect_timeout_s} s to resolve"
                        f" a commit (lost: {cause}; last: {error})"
                    ) from error
                await anyio.sleep(0.1)
        self.stats.reconnects += 1
        link.listen(connection)
        if old_pid is not None:
            # Only if the old backend is on this server: after a failover the DSN leads to
            # another one (the old primary's backends died with it), where the same pid may
            # be anyone's; the application name is unique to the old connection.
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid = $1 AND application_name = $2",
                old_pid,
                old_name,
            )


_connection_numbers = itertools.count(1)
# One host of a multi-host DSN gets this long to accept and answer: a host cut off by a
# partition drops packets silently, and asyncpg's own timeout (60 s) spans every host, so
# without a bound per host the first dead one would eat the whole attempt (measured with
# `tally drill failover --scenario partition-dc1`: 42 s to reach the new leader).
HOST_CONNECT_TIMEOUT_S = 2.0


def split_hosts(dsn: str) -> list[str]:
    """A URL DSN listing several hosts (`postgresql://user@h1:p1,h2:p2/db?...`) as one DSN
    per host, in order, each with the same user, database and parameters; any other DSN
    as it is."""
    scheme, separator, rest = dsn.partition("://")
    if not separator:
        return [dsn]
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if "," not in hosts:
        return [dsn]
    return [f"{scheme}://{userinfo}{at}{host}{slash}{tail}" for host in hosts.split(",")]


async def connect(dsn: str) -> Any:
    """A store connection to `dsn`, named uniquely (`application_name`).

    The DSN may list several hosts with `target_session_attrs=read-write` (a
    Patroni cluster, docs/ha.md): they are tried in order, each for at most
    `HOST_CONNECT_TIMEOUT_S`, and the first that takes writes is kept, so after a
    failover the same DSN leads to the new leader. The unique name lets a
    reconnection end its old backend only where it ran.
    """
    import asyncpg

    name = f"tally-{os.getpid()}-{next(_connection_numbers)}-{secrets.token_hex(4)}"
    settings = {"application_name": name}
    hosts = split_hosts(dsn)
    if len(hosts) == 1:
        return await asyncpg.connect(dsn, server_settings=settings)
    failures: list[str] = []
    for host_dsn in hosts:
        try:
            with anyio.fail_after(HOST_CONNECT_TIMEOUT_S):
                return await asyncpg.connect(host_dsn, server_settings=settings)
        except _connection_errors(TimeoutError, asyncpg.PostgresError) as error:
            failures.append(f"{redact_dsn(host_dsn)}: {type(error).__name__}: {error}")
    raise PgStoreError("no host takes writes: " + "; ".join(failures))


def merge_state_changes(entries: Sequence[Entry]) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """A group's customer-state changes as (upserts, deletes), one per key: the last wins
    (one statement may not change a row twice)."""
    merged: dict[bytes, bytes | None] = {}
    for entry in entries:
        if entry.kind == EntryKind.PUT_STATE:
            for key, value in decode_state_changes(entry.payload):
                merged.pop(key, None)  # re-inserted last: the order of the last changes
                merged[key] = value
    puts = [(key, value) for key, value in merged.items() if value is not None]
    deletes = [key for key, value in merged.items() if value is None]
    return puts, deletes


async def write_state(
    connection: Any, puts: list[tuple[bytes, bytes]], deletes: list[bytes]
) -> None:
    """Upsert and delete `tally_state` rows inside the caller's transaction."""
    if puts:
        await connection.execute(
            "INSERT INTO tally_state (key, value)"
            " SELECT * FROM unnest($1::bytea[], $2::bytea[])"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            [key for key, _ in puts],
            [value for _, value in puts],
        )
    if deletes:
        await connection.execute("DELETE FROM tally_state WHERE key = ANY($1::bytea[])", deletes)


async def load_state(connection: Any) -> CustomerState:
    """Every `tally_state` row: the customer state as of the last committed group."""
    rows = await connection.fetch("SELECT key, value FROM tally_state")
    return {bytes(row["key"]): bytes(row["value"]) for row in rows}


async def empty_versions(connection: Any) -> None:
    """Empty tally_account_versions inside the caller's transaction, once compacted.

    TRUNCATE when no reader holds the table (O(1), no dead rows); if one does
    (a long `tally db verify`), a DELETE, which does not wait for it. TRUNCATE is
    not MVCC-safe: a REPEATABLE READ reader must lock the table before its first
    query (as `verify` does) to see versions and compacted rows of one moment.
    """
    import asyncpg

    try:
        async with connection.transaction():  # a savepoint: a refused lock undoes only itself
            await connection.execute(
                "LOCK TABLE tally_account_versions IN ACCESS EXCLUSIVE MODE NOWAIT"
            )
            await connection.execute("TRUNCATE tally_account_versions")
    except asyncpg.LockNotAvailableError:
        await connection.execute("DELETE FROM tally_account_versions")


async def compact_versions(connection: Any, epoch: int) -> int:
    """Compact the versions an earlier engine left, in SQL, as epoch `epoch`; returns rows."""
    async with connection.transaction():
        row = await connection.fetchrow("SELECT epoch FROM tally_epoch FOR UPDATE")
        if row["epoch"] != epoch:
            raise StoreFenced(f"epoch {epoch} fenced off by epoch {row['epoch']} (compaction)")
        count = int(await connection.fetchval("SELECT count(*) FROM tally_account_versions"))
        if count:
            await connection.execute(COMPACT_VERSIONS)
            await empty_versions(connection)
    return count


async def take_epoch(connection: Any, owner: str, epoch_min: int = 0) -> tuple[int, int]:
    """Fence every older engine off: a new epoch (> all before); returns (epoch, last_seq)."""
    async with connection.transaction():
        row = await connection.fetchrow("SELECT epoch FROM tally_epoch FOR UPDATE")
        epoch = max(int(row["epoch"]) + 1, epoch_min)
        row = await connection.fetchrow(
            "UPDATE tally_epoch SET epoch = $1, owner = $2, taken_at = now()"
            " RETURNING epoch, last_seq",
            epoch,
            owner,
        )
    return int(row["epoch"]), int(row["last_seq"])


async def read_entries(connection: Any, from_seq: int = 1, through_seq: int | None = None) -> Any:
    """The stored entries in seq order, checked (an async iterator of (seq, Entry))."""
    seq = from_seq
    while True:
        rows = await connection.fetch(
            "SELECT seq, kind, timestamp_first, business_day, count, payload FROM tally_entries"
            " WHERE seq >= $1 AND ($2::bigint IS NULL OR seq <= $2) ORDER BY seq LIMIT $3",
            seq,
            through_seq,
            REPLAY_CHUNK_ENTRIES,
        )
        if not rows:
            return
        for row in rows:
            if row["seq"] != seq:
                raise PgStoreError(f"tally_entries has no seq {seq} (next is {row['seq']})")
            entry = Entry(
                EntryKind(row["kind"]),
                row["timestamp_first"],
                row["business_day"],
                row["count"],
                bytes(row["payload"]),
            )
            entry.check()
            yield seq, entry
            seq += 1


async def replay_ledger(
    connection: Any,
    account_capacity: int,
    transfer_capacity: int,
    last_seq: int,
    state: CustomerState | None = None,
) -> KernelLedger:
    """The kernel ledger as of `last_seq`, by replaying `tally_entries` 1..last_seq
    (and the customer `state` when one is given)."""
    ledger = KernelLedger(account_capacity=account_capacity, transfer_capacity=transfer_capacity)
    replayed = 0
    async for _seq, entry in read_entries(connection, 1, last_seq):
        try:
            await anyio.to_thread.run_sync(apply_entry, ledger, entry, state)
        except ValueError as error:
            raise PgStoreError(
                f"cannot replay seq {_seq} ({entry.kind.name}) with these capacities: {error}"
            ) from error
        replayed += 1
    if replayed != last_seq:
        raise PgStoreError(f"tally_entries holds {replayed} entries; tally_epoch says {last_seq}")
    return ledger


@dataclass(slots=True)
class Opened:
    store: PgStore
    ledger: KernelLedger
    migrated: list[int]
    load_s: float
    state: CustomerState = field(default_factory=dict)


async def open_pg_store(
    dsn: str,
    *,
    account_capacity: int,
    transfer_capacity: int,
    owner: str = "tally",
    epoch_min: int = 0,
    reconnect_timeout_s: float = RECONNECT_TIMEOUT_S_DEFAULT,
    commit_timeout_s: float = COMMIT_TIMEOUT_S_DEFAULT,
    compact_versions_max: int = COMPACT_VERSIONS_MAX_DEFAULT,
    compact_accounts_max: int = COMPACT_ACCOUNTS_MAX_DEFAULT,
    inflight_groups: int = INFLIGHT_GROUPS_DEFAULT,
) -> Opened:
    """Migrate, take a new fencing epoch, rebuild the ledger and load the customer state:
    ready for `Engine(ledger, store, rules, state=opened.state)`."""
    import asyncpg

    started = time.perf_counter()
    try:
        connection = await connect(dsn)
    except _connection_errors(asyncpg.PostgresError) as error:
        raise PgStoreError(f"cannot connect to {redact_dsn(dsn)}: {error}") from error
    try:
        migrated = await migrate(connection)
        epoch, last_seq = await take_epoch(connection, owner, epoch_min)
        await compact_versions(connection, epoch)
        replayed_state: CustomerState = {}
        ledger = await replay_ledger(
            connection, account_capacity, transfer_capacity, last_seq, replayed_state
        )
        state = await load_state(connection)
        if state != replayed_state:  # pair check: the table against its entries
            raise PgStoreError(
                f"tally_state holds {len(state)} keys, the entries through seq {last_seq}"
                f" give {len(replayed_state)} (or other values): the table and log disagree"
            )
    except _write_refused_errors() as error:
        connection.terminate()
        raise PgStoreError(f"the database does not take writes now: {error}") from error
    except BaseException:
        connection.terminate()
        raise
    more: list[Any] = []
    try:
        for _ in range(inflight_groups - 1):
            more.append(await connect(dsn))
    except _connection_errors(asyncpg.PostgresError, PgStoreError) as error:
        for one in (connection, *more):
            one.terminate()
        raise PgStoreError(f"cannot connect to {redact_dsn(dsn)}: {error}") from error
    ledger.track_changes()
    ledger.take_changes()
    store = PgStore(
        dsn,
        connection,
        epoch=epoch,
        last_seq=last_seq,
        log_count=ledger.log_count,
        reconnect_timeout_s=reconnect_timeout_s,
        commit_timeout_s=commit_timeout_s,
        compact_versions_max=compact_versions_max,
        compact_accounts_max=compact_accounts_max,
        more_connections=more,
    )
    return Opened(store, ledger, migrated, time.perf_counter() - started, state)


def open_pg_store_blocking(dsn: str, **options: Any) -> Opened:
    """`open_pg_store` from a worker thread of the running event loop."""
    return anyio.from_thread.run(lambda: open_pg_store(dsn, **options))


# --- verify ---------------------------------------------------------------------

RECOMPUTE_BALANCES = f"""
WITH moves AS (
    SELECT debit_slot AS slot,
           sum(amount_posted) FILTER (WHERE flags & {HOLD_FLAGS} = 0) AS debits_posted,
           0::numeric AS credits_posted,
           sum(amount) FILTER (WHERE state = 1) AS debits_pending,
           0::numeric AS credits_pending
    FROM tally_transfers WHERE result = 0 GROUP BY debit_slot
    UNION ALL
    SELECT credit_slot, 0, sum(amount_posted) FILTER (WHERE flags & {HOLD_FLAGS} = 0),
           0, sum(amount) FILTER (WHERE state = 1)
    FROM tally_transfers WHERE result = 0 GROUP BY credit_slot
), totals AS (
    SELECT slot, coalesce(sum(debits_posted), 0) AS debits_posted,
           coalesce(sum(credits_posted), 0) AS credits_posted,
           coalesce(sum(debits_pending), 0) AS debits_pending,
           coalesce(sum(credits_pending), 0) AS credits_pending
    FROM moves GROUP BY slot
)
SELECT coalesce(a.slot, t.slot) AS slot,
       a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending,
       coalesce(t.debits_posted, 0) AS want_debits_posted,
       coalesce(t.credits_posted, 0) AS want_credits_posted,
       coalesce(t.debits_pending, 0) AS want_debits_pending,
       coalesce(t.credits_pending, 0) AS want_credits_pending
FROM tally_accounts a FULL JOIN totals t ON a.slot = t.slot
WHERE a.slot IS NULL
   OR a.debits_posted <> coalesce(t.debits_posted, 0)
   OR a.credits_posted <> coalesce(t.credits_posted, 0)
   OR a.debits_pending <> coalesce(t.debits_pending, 0)
   OR a.credits_pending <> coalesce(t.credits_pending, 0)
ORDER BY 1
"""


@dataclass(slots=True)
class VerifyReport:
    """What `tally db verify` found; `ok` only if every list is empty."""

    last_seq: int = 0
    epoch: int = 0
    accounts: int = 0
    transfers: int = 0
    debits_posted_total: int = 0
    credits_posted_total: int = 0
    digest: str = ""
    balance_mismatches: list[str] = field(default_factory=list)
    kernel_mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.balance_mismatches
            and not self.kernel_mismatches
            and self.debits_posted_total == self.credits_posted_total
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "last_seq": self.last_seq,
            "epoch": self.epoch,
            "accounts": self.accounts,
            "transfers": self.transfers,
            "debits_posted_total": self.debits_posted_total,
            "credits_posted_total": self.credits_posted_total,
            "digest": self.digest,
            "balance_mismatches": self.balance_mismatches[:50],
            "kernel_mismatches": self.kernel_mismatches[:50],
            "seconds": round(self.seconds, 3),
        }


async def verify(
    connection: Any,
    account_capacity: int,
    transfer_capacity: int,
    ledger: KernelLedger | None = None,
) -> VerifyReport:
    """Recompute every balance from the transfers; compare with the accounts and the kernels.

    Runs in one REPEATABLE READ transaction, so a running engine's commits do
    not tear what is compared. The kernel state is the replay of
    `tally_entries` (or `ledger`, e.g. a running engine's, if given: then it
    must be as of the same last_seq).
    """
    started = time.perf_counter()
    report = VerifyReport()
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        # Before the snapshot (taken by the first query, not by LOCK): a compaction's
        # TRUNCATE is not MVCC-safe, so it must not empty the versions under this
        # snapshot; holding the lock makes it DELETE instead (or wait for it first).
        await connection.execute("LOCK TABLE tally_account_versions IN ACCESS SHARE MODE")
        row = await connection.fetchrow("SELECT epoch, last_seq FROM tally_epoch")
        report.epoch, report.last_seq = int(row["epoch"]), int(row["last_seq"])
        for mismatch in await connection.fetch(RECOMPUTE_BALANCES):
            report.balance_mismatches.append(
                f"slot {mismatch['slot']}: accounts table"
                f" ({mismatch['debits_posted']}, {mismatch['credits_posted']},"
                f" {mismatch['debits_pending']}, {mismatch['credits_pending']}) != from transfers"
                f" ({mismatch['want_debits_posted']}, {mismatch['want_credits_posted']},"
                f" {mismatch['want_debits_pending']}, {mismatch['want_credits_pending']})"
            )
        totals = await connection.fetchrow(
            "SELECT coalesce(sum(debits_posted), 0) AS d, coalesce(sum(credits_posted), 0) AS c,"
            " count(*) AS n FROM tally_accounts"
        )
        report.debits_posted_total = int(totals["d"])
        report.credits_posted_total = int(totals["c"])
        report.accounts = int(totals["n"])
        report.transfers = int(
            await connection.fetchval("SELECT count(*) FROM tally_transfer_records")
        )
        if ledger is None:
            ledger = await replay_ledger(
                connection, account_capacity, transfer_capacity, report.last_seq
            )
        report.digest = ledger.digest()
        problems = report.kernel_mismatches
        if ledger.account_count != report.accounts:
            problems.append(
                f"kernel has {ledger.account_count} accounts, the table {report.accounts}"
            )
        rows = await connection.fetch(
            f"SELECT {', '.join(ACCOUNT_COLUMNS)}, debits_pending, credits_pending, deposit, slot"
            " FROM tally_accounts ORDER BY slot"
        )
        for values in rows:
            slot = values["slot"]
            stored = account_record(list(values)[:-1])
            if slot >= ledger.account_count:
                problems.append(f"slot {slot} is in the table, not in the kernel")
                continue
            if ledger.account_row(slot) != stored:
                problems.append(f"account slot {slot}: table row differs from the kernel's")
        if report.transfers != ledger.log_count:
            problems.append(
                f"the table holds {report.transfers} transfers, the kernel recorded"
                f" {ledger.log_count}"
            )
        seq = ledger.log_tail
        while seq < ledger.log_count:
            chunk = await connection.fetch(
                "SELECT id_lo, id_hi, record, seq FROM tally_transfer_records"
                " WHERE seq >= $1 AND seq < $2 ORDER BY seq",
                seq,
                min(ledger.log_count, seq + 50_000),
            )
            for values in chunk:
                if values["seq"] != seq:
                    problems.append(f"transfer seq {seq} missing from the table")
                    seq = values["seq"]
                record = bytes(values["record"])
                if record != ledger.record_at(seq):
                    problems.append(f"transfer seq {seq}: table row differs from the kernel's")
                if ID_ROW.unpack_from(record) != (values["id_lo"], values["id_hi"]):
                    problems.append(f"transfer seq {seq}: key differs from its record's id")
                seq += 1
            if not chunk:
                problems.append(f"transfer seqs {seq}..{ledger.log_count - 1} missing")
                break
    report.seconds = time.perf_counter() - started
    return report
