"""Recovery: the newest good snapshot plus the journal records after it.

The ledger is a pure function of its journal: `apply_record` applies one
record exactly as the engine applied the entry (`core.entries.apply_entry`,
the one dispatch on kind), so replaying the same records gives the same
`digest()` on either backend.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core.entries import Entry, EntryKind, apply_entry
from core.errors import TallyError
from core.journal import JournalCorrupt, JournalScan
from core.snapshot import SnapshotCorrupt, list_snapshots, load_snapshot_state
from ledger import open_ledger
from ledger.kernel import KernelLedger
from ledger.reference import ReferenceLedger

logger = logging.getLogger(__name__)

Ledger = KernelLedger | ReferenceLedger

# Entry kinds whose count is transfers posted (the day-end's settlement and the deposits'
# atomic postings post transfers too).
TRANSFER_ENTRY_KINDS = frozenset(
    {EntryKind.CREATE_TRANSFERS, EntryKind.SETTLE_INTEREST, EntryKind.POST_WITH_ROWS}
)


class ReplayError(TallyError):
    """A record could not be applied (a capacity smaller than the one that wrote it)."""


def apply_record(ledger: Ledger, record: Entry, state: dict[bytes, bytes] | None = None) -> None:
    """Apply one journal record to a kernel or reference ledger (outcomes are not needed),
    and a PUT_STATE record to the customer `state` when one is given."""
    apply_entry(ledger, record, state)


def replay_outcomes(
    records: Iterable[tuple[int, Entry]], account_capacity: int, transfer_capacity: int
) -> Iterator[tuple[int, Entry, Any]]:
    """Apply a journal's records in order on a fresh kernel ledger and yield each with its
    outcome: the results the server answered for it (transfer results, account results).

    The journal holds each batch exactly as the engine applied it, after every batch
    before it, so applying it again to the same state gives the same answers: the
    journal carries the server's results without storing them. Needs the history
    from seq 1 (a snapshot's ledger has no answers for what came before it).
    """
    ledger = open_ledger(
        account_capacity=max(16, account_capacity),
        transfer_capacity=max(1024, transfer_capacity),
        backend="kernel",
    )
    for seq, entry in records:
        try:
            outcome = apply_entry(ledger, entry)
        except ValueError as error:
            raise ReplayError(f"cannot apply seq {seq} ({entry.kind.name}): {error}") from error
        yield seq, entry, outcome


@dataclass(slots=True)
class Recovered:
    """A recovered ledger and how it was obtained."""

    ledger: Ledger
    last_seq: int
    snapshot_path: str | None
    snapshot_seq: int
    snapshot_load_s: float
    records_replayed: int
    transfers_replayed: int
    replay_s: float
    journal: JournalScan
    kind_counts: Counter[EntryKind] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    state: dict[bytes, bytes] = field(default_factory=dict)  # the customer state

    @property
    def records_per_s(self) -> float:
        return self.records_replayed / self.replay_s if self.replay_s > 0 else 0.0

    @property
    def transfers_per_s(self) -> float:
        return self.transfers_replayed / self.replay_s if self.replay_s > 0 else 0.0


def recover_ledger(
    directory: str | os.PathLike[str],
    account_capacity: int,
    transfer_capacity: int,
    *,
    backend: str = "kernel",
) -> Recovered:
    """The ledger and customer state as of the last durable record: newest good snapshot
    + journal replay.

    Reads only; run `Journal.open` first when the journal is to be appended
    to (it also zeroes a torn tail, which this skips over in the same way).
    A snapshot that fails its checksums is passed over for the previous one,
    with a warning. Raises JournalCorrupt for damage in the journal or a gap
    between the snapshot and the journal, ReplayError if a record cannot be
    applied with these capacities.
    """
    path = os.fspath(directory)
    warnings: list[str] = []
    ledger: Ledger | None = None
    state: dict[bytes, bytes] = {}
    snapshot_path: str | None = None
    snapshot_seq = 0
    started = time.perf_counter()
    for seq, candidate in reversed(list_snapshots(path)):
        try:
            ledger, snapshot_seq, state = load_snapshot_state(
                candidate, account_capacity, transfer_capacity, backend=backend
            )
        except SnapshotCorrupt as error:
            message = f"skipping snapshot {candidate}: {error}"
            logger.warning(message)
            warnings.append(message)
            continue
        assert snapshot_seq == seq
        snapshot_path = candidate
        break
    if ledger is None:
        ledger = open_ledger(
            account_capacity=account_capacity, transfer_capacity=transfer_capacity, backend=backend
        )
    snapshot_load_s = time.perf_counter() - started

    scan = JournalScan(path, from_seq=snapshot_seq + 1)
    kind_counts: Counter[EntryKind] = Counter()
    replayed = transfers = 0
    started = time.perf_counter()
    for stored in scan:
        if replayed == 0 and stored.seq != snapshot_seq + 1:
            raise JournalCorrupt(
                stored.segment,
                stored.offset,
                f"the journal starts at seq {stored.seq}, but recovery from"
                f" {_describe(snapshot_path, snapshot_seq)} needs seq {snapshot_seq + 1}",
            )
        try:
            apply_record(ledger, stored.entry, state)
        except ValueError as error:
            raise ReplayError(
                f"cannot apply seq {stored.seq} ({stored.entry.kind.name}, {stored.segment} at"
                f" byte offset {stored.offset}): {error}"
            ) from error
        replayed += 1
        kind_counts[stored.entry.kind] += 1
        if stored.entry.kind in TRANSFER_ENTRY_KINDS:
            transfers += stored.entry.count
    replay_s = time.perf_counter() - started
    if scan.first_seq > snapshot_seq + 1:
        where = scan.segments[0].path if scan.segments else path
        raise JournalCorrupt(
            where,
            0,
            f"the journal starts at seq {scan.first_seq}, but recovery from"
            f" {_describe(snapshot_path, snapshot_seq)} needs seq {snapshot_seq + 1}",
        )
    if scan.last_seq < snapshot_seq:
        where = scan.segments[-1].path if scan.segments else path
        raise JournalCorrupt(
            where,
            scan.segments[-1].end_offset if scan.segments else 0,
            f"the journal ends at seq {scan.last_seq}, before {snapshot_path} (seq"
            f" {snapshot_seq}): records it covered were durable and are now missing",
        )
    return Recovered(
        ledger=ledger,
        last_seq=max(scan.last_seq, snapshot_seq),
        snapshot_path=snapshot_path,
        snapshot_seq=snapshot_seq,
        snapshot_load_s=snapshot_load_s,
        records_replayed=replayed,
        transfers_replayed=transfers,
        replay_s=replay_s,
        journal=scan,
        kind_counts=kind_counts,
        warnings=warnings,
        state=state,
    )


def _describe(snapshot_path: str | None, snapshot_seq: int) -> str:
    return "an empty ledger" if snapshot_path is None else f"{snapshot_path} (seq {snapshot_seq})"
