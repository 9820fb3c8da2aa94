"""Data centers, their replication streams and the batches their clients wait on.

Each data center owns a `KernelLedger` (the real kernels) and a log of
replicated entries (`Record`: an engine `Entry` with the epoch of the primary
that formed it and its log sequence number). A primary forms entries, applies
them, keeps them in its write-ahead log and streams them to the others;
replicas apply the same entries with `core.entries.apply_entry`, so their
state stays byte-identical.

In the `consensus` profile epochs fence old primaries: every record carries its primary's epoch, a
data center never accepts a record older than the newest epoch it has seen,
and a primary that meets a newer epoch steps down. The timeline (the epoch
each stretch of the log was written in, as PostgreSQL's timeline history)
tells a returning data center whether its log is a prefix of the new
primary's or has a divergent tail that must be discarded (resync). In the `production`
profile the epoch is PostgreSQL's timeline: a new one at every promotion, and replicas
take entries only from the leader Patroni points them at (`upstream`).
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field

from core.entries import Entry, EntryKind, apply_entry
from ledger.kernel import KernelLedger

from .model import DataCenterSpec

NEVER = -(1 << 62)


@dataclass(slots=True)
class Record:
    """One replicated entry."""

    lsn: int
    epoch: int
    entry: Entry
    created_ns: int  # simulated time the primary formed it
    last_timestamp: int  # the last kernel timestamp it uses
    size: int


@dataclass(slots=True)
class Batch:
    """A primary's batch of client attempts (or of disbursements), waiting for its commit."""

    lsn: int
    step: int
    new_first: int
    new_count: int
    packed: array[int] | None
    packed_count: int
    results: bytearray
    durable_ns: int  # when the primary's own fsync is done
    deadline_ns: int  # every client of the batch has given up on this attempt by then
    client_a_ns: int
    client_b_ns: int
    epoch: int
    # The loan service's disbursements (sim/loans.py) an entry of the primary's own
    # carries instead of client attempts: their loan indexes (None: a client batch).
    loans: list[int] | None = None


@dataclass(slots=True)
class Stream:
    """The replication stream from a primary to one other data center."""

    target: str
    connected: bool = False
    broken: bool = False
    next_lsn: int = 1
    acked_lsn: int = 0
    last_delivery_ns: int = 0
    last_ack_ns: int = 0
    in_flight: deque[tuple[int, Record]] = field(default_factory=deque)
    acks: deque[tuple[int, int]] = field(default_factory=deque)  # (arrival ns, lsn) on the wire
    ack_log: deque[tuple[int, int]] = field(default_factory=deque)  # arrived: (ns, lsn)
    durable_log: deque[tuple[int, int]] = field(default_factory=deque)  # fsynced there: (ns, lsn)
    sent: deque[tuple[int, int]] = field(default_factory=deque)  # unacknowledged (lsn, sent ns)

    def reset(self, next_lsn: int, now_ns: int) -> None:
        self.connected = True
        self.broken = False
        self.next_lsn = next_lsn
        self.acked_lsn = next_lsn - 1
        self.last_delivery_ns = now_ns
        self.last_ack_ns = now_ns
        self.in_flight.clear()
        self.acks.clear()
        self.sent.clear()


class DataCenter:
    def __init__(self, spec: DataCenterSpec, ledger: KernelLedger, wal_keep_bytes: int) -> None:
        self.name = spec.name
        self.spec = spec
        self.region = spec.region
        self.ledger = ledger
        self.wal_keep_bytes = wal_keep_bytes
        self.alive = True
        self.role = spec.initial_role
        self.epoch = 1
        self.timeline: list[tuple[int, int]] = []  # (epoch, first lsn) of the applied log
        self.applied_lsn = 0
        self.last_epoch = 0  # epoch of the last applied record
        self.last_timestamp = 0
        self.applied_created_ns = 0
        self.apply_delay_ns = 0  # formed -> applied here, for the last entry (replication lag)
        self.wal: deque[Record] = deque()
        self.wal_bytes = 0
        self.following: str | None = None
        self.resync_until_ns = 0
        self.fsync_ns = spec.fsync_ns
        self.clock_skew_ns = 0
        self.last_heard: dict[str, int] = {}
        self.ignores_lease = False
        self.crash_pending = False
        self.stale = False  # restarted believing it is still the primary
        self.operator_mandate = False  # promoted by a person, without a majority
        # Production (Patroni): the leader this DC's Patroni points its replication at, and
        # a primary running outside Patroni's control that commits on local durability.
        self.upstream: str | None = None
        self.local_commit = False
        self.last_renew_ns = 0  # its last renewal of the leader key
        self.last_commit_ns = 0  # as a primary: its last commit
        # As a primary:
        self.streams: dict[str, Stream] = {}
        self.inflight: deque[Batch] = deque()
        self.sync_standby: str | None = None
        self.sync_since_ns = 0
        self.no_sync_since_ns: int | None = None
        self.primary_since_ns = 0

    @property
    def is_primary(self) -> bool:
        return self.alive and self.role == "primary"

    def resyncing(self, now_ns: int) -> bool:
        return self.resync_until_ns > now_ns

    def epoch_at(self, lsn: int) -> int | None:
        """The epoch of this DC's record `lsn` (0 before the first); None if it has none."""
        if lsn == 0:
            return 0
        if lsn > self.applied_lsn:
            return None
        for epoch, first in reversed(self.timeline):
            if first <= lsn:
                return epoch
        return 0

    def wal_record(self, lsn: int) -> Record | None:
        if not self.wal or lsn > self.applied_lsn:
            return None
        first = self.wal[0].lsn
        if lsn < first:
            return None
        index = lsn - first
        length = len(self.wal)
        return self.wal[index] if index < length // 2 else self.wal[index - length]

    def record_applied(self, record: Record) -> None:
        assert record.lsn == self.applied_lsn + 1, (self.name, record.lsn, self.applied_lsn)
        self.applied_lsn = record.lsn
        if record.epoch != self.last_epoch:
            self.timeline.append((record.epoch, record.lsn))
            self.last_epoch = record.epoch
        if record.last_timestamp > self.last_timestamp:
            self.last_timestamp = record.last_timestamp
        self.applied_created_ns = record.created_ns
        self.wal.append(record)
        self.wal_bytes += record.size
        while self.wal_bytes > self.wal_keep_bytes and len(self.wal) > 1:
            self.wal_bytes -= self.wal.popleft().size

    def apply(self, record: Record) -> None:
        """Apply a record formed elsewhere (replication, catch-up)."""
        apply_entry(self.ledger, record.entry)
        self.record_applied(record)

    def adopt(self, source: DataCenter) -> None:
        """After a state copy from `source`: take its position and history."""
        self.applied_lsn = source.applied_lsn
        self.timeline = list(source.timeline)
        self.last_epoch = source.last_epoch
        self.last_timestamp = source.last_timestamp
        self.applied_created_ns = source.applied_created_ns
        self.wal = deque()
        self.wal_bytes = 0

    def become_replica(self) -> None:
        self.role = "replica"
        self.following = None
        self.streams = {}
        self.sync_standby = None
        self.no_sync_since_ns = None
        self.ignores_lease = False
        self.stale = False
        self.operator_mandate = False
        self.local_commit = False


def entry_size(entry: Entry) -> int:
    return len(entry.payload) + 64


def is_evict(entry: Entry) -> bool:
    return entry.kind == EntryKind.EVICT
