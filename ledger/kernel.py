"""The ledger on the Cython kernels: owns the packed tables, calls `cext.ledger_kernel`.

Same interface as `ledger.reference.ReferenceLedger`. Successful transfers
live in the log ring (evicted by the engine's retention), failed ones that
consumed their id in the failure ring, a quarter of the log's size, which
forgets its oldest failure when full (see the kernel's "failure ring and log
quotas" section); each channel holds at most its quota of both. The tables are anonymous
`mmap`s sized once at construction: the kernel zero-fills their pages lazily,
so capacity that is never touched costs address space, not memory (a
`bytearray(n)` would memset all of it). The kernels check their sizes once
per batch.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence

from cext import deposits as deposit_kernel
from cext import ledger_kernel as kernel
from cext import loans as loan_kernel
from cext import simgen
from ledger.constants import BANK_CHANNEL, CLEARING_ID, INTEREST_EXPENSE_ID, LOAN_FUNDING_ID
from ledger.deposits import (
    DEPOSIT_WRITE_SIZE,
    INTEREST_ID_MIX,
    INTEREST_ID_TAG,
    check_rates,
    check_settlement_args,
)
from ledger.loan_book import COLLECTION_ID_MIX, COLLECTION_ID_TAG, check_collection_args
from ledger.state import (
    ACCOUNT_TABLES,
    LOG_QUOTA_TABLE_SIZE,
    META_ACCOUNT_CAPACITY,
    META_ACCOUNT_COUNT,
    META_ACCOUNT_INDEX_MASK,
    META_ACCOUNT_SLOT_BITS,
    META_ACCRUED_DAY,
    META_CHANNEL_MASK,
    META_CHANNEL_TABLE_FULL,
    META_DIRTY_ENABLED,
    META_FAILED_COUNT,
    META_FAILED_MASK,
    META_FAILED_TAIL,
    META_HEAP_CAPACITY,
    META_HEAP_SIZE,
    META_LAST_DAY,
    META_LOG_COUNT,
    META_LOG_MASK,
    META_LOG_TAIL,
    META_PRODUCT_COUNT,
    META_SIZE,
    META_TRANSFER_INDEX_MASK,
    PER_ACCOUNT_TABLES,
    TABLES,
    Buffer,
    Extent,
    LedgerState,
    MetaScalars,
    StateCorrupt,
    StateTooLarge,
    Table,
    pack_channel_live_digest,
    pack_channels_live,
)
from ledger.types import (
    ACCOUNT_SIZE,
    CHANNEL_COUNT,
    CHANNEL_LIVE_SIZE,
    CUSTOMER_SIZE,
    DEPOSIT_SIZE,
    PENDING_SIZE,
    PRODUCT_SIZE,
    RULES_LEGACY_SIZE,
    TRANSFER_SIZE,
    UINT64_MAX,
    rules_table_upgraded,
    split_id,
)

INDEX_ENTRY_SIZE = 16
HEAP_ENTRY_SIZE = 16
CHANNEL_ENTRY_SIZE = 16
# Copies of a sparse table go by chunks, skipping those that are zero on both sides.
SPARSE_CHUNK = 1 << 21
# Channel counters are packed for the replica digest this many entries at a time.
CHANNEL_CHUNK = 1 << 20


HUGE_PAGE_SIZE = 2 << 20


def zeroed(size: int) -> mmap.mmap:
    """A writable, zero-filled buffer whose pages are only backed once written.

    Tables of 2 MiB or more ask for transparent huge pages: the kernels touch
    them at random, and with 4 KiB pages nearly every access would also miss
    the TLB. Where THP is off the advice is ignored and only speed suffers.
    """
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if size >= HUGE_PAGE_SIZE and hasattr(mmap, "MADV_HUGEPAGE"):
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return buffer


def power_of_two_at_least(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


class KernelLedger(MetaScalars):
    """State and batch operations over packed tables; see ReferenceLedger for the semantics."""

    backend = "kernel"

    def __init__(
        self,
        *,
        account_capacity: int,
        transfer_capacity: int,
        channel_counter_capacity: int | None = None,
    ) -> None:
        assert account_capacity >= 1 and transfer_capacity >= 1
        self.account_capacity = account_capacity
        log_size = power_of_two_at_least(transfer_capacity)
        self.transfer_capacity = log_size
        account_index_size = power_of_two_at_least(max(16, 2 * account_capacity))
        failed_size = failed_ring_size(log_size)
        self.failed_size = failed_size
        # Under 50% load with the log and the failure ring both full.
        transfer_index_size = power_of_two_at_least(max(16, 2 * (log_size + failed_size)))
        # Two entries an account: a day may hold its debit, credit and customer counters.
        channel_size = power_of_two_at_least(
            channel_counter_capacity or max(1024, 2 * account_capacity)
        )
        self.accounts = zeroed(account_capacity * ACCOUNT_SIZE)
        self.pending = zeroed(account_capacity * PENDING_SIZE)
        self.account_index = zeroed(account_index_size * 4)
        self.log = zeroed(log_size * TRANSFER_SIZE)
        self.failed = zeroed(failed_size * TRANSFER_SIZE)
        self.channel_live = zeroed(CHANNEL_COUNT * CHANNEL_LIVE_SIZE)
        self.transfer_index = zeroed(transfer_index_size * INDEX_ENTRY_SIZE)
        self.heap = zeroed(log_size * HEAP_ENTRY_SIZE)
        self.channel_counters = zeroed(channel_size * CHANNEL_ENTRY_SIZE)
        # Changed rows since the last take, for stores that write rows (PostgreSQL):
        # transfer seqs (int64 x log size), account slots (uint32 x accounts), marks.
        self.dirty = zeroed(log_size * 8 + account_capacity * 5)
        self.owners = zeroed(account_capacity * CUSTOMER_SIZE)
        self.deposits = zeroed(account_capacity * DEPOSIT_SIZE)
        self.products = bytearray(PRODUCT_SIZE)
        self.channels = bytearray(rules_table_upgraded(bytes(RULES_LEGACY_SIZE)))
        self.log_quotas = bytearray(LOG_QUOTA_TABLE_SIZE)
        self.meta = array("q", [0] * META_SIZE)
        self.meta[META_ACCOUNT_CAPACITY] = account_capacity
        self.meta[META_ACCOUNT_INDEX_MASK] = account_index_size - 1
        # slot + 1 must fit below the tag bits: capacity < 2**slot_bits.
        self.meta[META_ACCOUNT_SLOT_BITS] = min(32, max(1, account_capacity.bit_length()))
        self.meta[META_LOG_MASK] = log_size - 1
        self.meta[META_FAILED_MASK] = failed_size - 1
        self.meta[META_TRANSFER_INDEX_MASK] = transfer_index_size - 1
        self.meta[META_HEAP_CAPACITY] = log_size
        self.meta[META_CHANNEL_MASK] = channel_size - 1
        self.meta[META_PRODUCT_COUNT] = 1

    def prefault(self) -> None:
        """Back every page of the log, transfer index and heap now, not on first write.

        An engine does this once at start so that no posting pays for the
        kernel zeroing a fresh page; the account table and its index are
        backed as accounts are created.
        """
        for table in (self.log, self.failed, self.transfer_index, self.heap, self.channel_counters):
            view = memoryview(table)
            for offset in range(0, len(table), mmap.PAGESIZE):
                view[offset] = view[offset]
            view.release()

    def track_changes(self) -> None:
        """Start recording which accounts and existing transfers each call changes."""
        self.meta[META_DIRTY_ENABLED] = 1

    def take_changes(self) -> tuple[array[int], array[int], bool]:
        """(account slots, transfer seqs, overflowed) changed since the last take.

        New transfers are not listed: they are the log records from the
        previous `log_count` on. `overflowed` means more existing transfers
        changed than could be listed (rewrite all open holds).
        """
        slots, seqs, overflowed = kernel.dirty_take(self.dirty, self.meta, self.account_capacity)
        slot_array: array[int] = array("I")
        slot_array.frombytes(slots)
        seq_array: array[int] = array("q")
        seq_array.frombytes(seqs)
        return slot_array, seq_array, bool(overflowed)

    def rebuild_indexes(self) -> None:
        """After the tables were restored (snapshot): rebuild indexes and heap in the kernel."""
        kernel.rebuild_indexes(*self._tables())

    def _tables(
        self,
    ) -> tuple[
        mmap.mmap,
        mmap.mmap,
        mmap.mmap,
        mmap.mmap,
        mmap.mmap,
        mmap.mmap,
        mmap.mmap,
        mmap.mmap,
        mmap.mmap,
        mmap.mmap,
        mmap.mmap,
        bytearray,
        bytearray,
        bytearray,
        array[int],
    ]:
        return (
            self.accounts,
            self.pending,
            self.account_index,
            self.log,
            self.failed,
            self.transfer_index,
            self.heap,
            self.channel_counters,
            self.channel_live,
            self.dirty,
            self.owners,
            self.products,
            self.channels,
            self.log_quotas,
            self.meta,
        )

    # --- rules ----------------------------------------------------------------

    def set_rules(
        self,
        product_table: bytes | bytearray,
        channel_table: bytes | bytearray,
        log_quota_table: bytes | bytearray = b"",
    ) -> None:
        """Install the rule tables: the rule table (a legacy one is upgraded) and the log
        quotas; no `log_quota_table` (rules journaled before there were log quotas) means
        no channel has a quota."""
        assert len(product_table) >= PRODUCT_SIZE and len(product_table) % PRODUCT_SIZE == 0
        assert len(log_quota_table) in (0, LOG_QUOTA_TABLE_SIZE)
        self.products = bytearray(product_table)
        self.channels = bytearray(rules_table_upgraded(channel_table))
        self.log_quotas = bytearray(log_quota_table or bytes(LOG_QUOTA_TABLE_SIZE))
        self.meta[META_PRODUCT_COUNT] = len(product_table) // PRODUCT_SIZE

    # --- accounts -------------------------------------------------------------

    def create_accounts(self, batch: bytes | bytearray | memoryview) -> bytearray:
        results = bytearray(len(batch) // ACCOUNT_SIZE)
        kernel.create_accounts(batch, *self._tables(), results)
        return results

    def update_account(self, account_id: int, status: int, flags: int) -> int:
        return int(kernel.update_account(*split_id(account_id), status, flags, *self._tables()))

    # --- transfers ------------------------------------------------------------

    def create_transfers(
        self, batch: bytes | bytearray | memoryview, timestamp_first: int, business_day: int
    ) -> tuple[bytearray, array[int], array[int]]:
        """Apply one batch. Returns (results u8, timestamps u64, balances i64 x2)."""
        count = len(batch) // TRANSFER_SIZE
        results = bytearray(count)
        timestamps = array("Q", bytes(8 * count))
        balances = array("q", bytes(16 * count))
        self.create_transfers_into(
            batch,
            timestamp_first,
            business_day,
            results,
            memoryview(timestamps).cast("B"),
            memoryview(balances).cast("B"),
        )
        return results, timestamps, balances

    def create_transfers_into(
        self,
        batch: bytes | bytearray | memoryview,
        timestamp_first: int,
        business_day: int,
        results: bytearray | memoryview,
        timestamps: bytearray | memoryview,
        balances: bytearray | memoryview,
    ) -> int:
        """Zero-allocation variant for hot loops: the caller owns the result buffers."""
        return int(
            kernel.create_transfers(
                batch, timestamp_first, business_day, *self._tables(), results, timestamps, balances
            )
        )

    def expire_pending(self, now_ns: int, business_day: int) -> int:
        return int(kernel.expire_pending(now_ns, business_day, *self._tables()))

    def evict(self, before_ns: int, count_max: int) -> int:
        return int(kernel.evict(before_ns, count_max, *self._tables()))

    def evict_failed(self, before_ns: int, count_max: int) -> int:
        """Forget the oldest failures older than `before_ns` (the failure retention)."""
        return int(kernel.evict_failed(before_ns, count_max, *self._tables()))

    # --- deposits (cext/deposits.pyx; semantics: ReferenceLedger) ----------------------

    def _deposit_tables(self) -> tuple[mmap.mmap, mmap.mmap, bytearray, array[int]]:
        return self.accounts, self.deposits, self.products, self.meta

    def accrue_interest(self, day: int, rates: bytes | bytearray | memoryview) -> int:
        """One day's accrual (ledger.protocol.Ledger.accrue_interest), without the GIL."""
        check_rates(rates)
        if day <= self.accrued_day or day > 0xFFFF:
            raise ValueError(f"accrual day {day} is not after the last one, {self.accrued_day}")
        accrued = int(deposit_kernel.accrue(bytes(rates), *self._deposit_tables(), self.dirty))
        self.meta[META_ACCRUED_DAY] = day
        return accrued

    def settlement_batch(
        self, period: int, start_slot: int, count_max: int
    ) -> tuple[bytes, bytes, int]:
        """The next settlement transfers of `period` (ledger.protocol.Ledger), a pure read."""
        check_settlement_args(period, start_slot, count_max)
        transfers = bytearray(count_max * TRANSFER_SIZE)
        slots = bytearray(count_max * 4)
        written, next_slot = deposit_kernel.settlement_batch(
            period, start_slot, count_max, transfers, slots, self.accounts, self.pending,
            self.deposits, self.products, self.meta, INTEREST_EXPENSE_ID, CLEARING_ID,
            BANK_CHANNEL,
        )  # fmt: skip
        return bytes(transfers[: written * TRANSFER_SIZE]), bytes(slots[: written * 4]), next_slot

    def settle_interest(
        self,
        period: int,
        transfers: bytes | bytearray | memoryview,
        slots: bytes | bytearray | memoryview,
        timestamp_first: int,
        business_day: int,
    ) -> tuple[bytearray, array[int], array[int]]:
        """Post settlement transfers and settle their slots (ledger.protocol.Ledger)."""
        count = len(transfers) // TRANSFER_SIZE
        if not 0 < period <= 0xFFFFFFFF or len(transfers) != count * TRANSFER_SIZE:
            raise ValueError(f"settlement of period {period}: {len(transfers)} bytes of transfers")
        deposit_kernel.check_slots(bytes(slots), count, self.meta)
        outcome = self.create_transfers(transfers, timestamp_first, business_day)
        deposit_kernel.mark_settled(
            period,
            bytes(transfers),
            bytes(slots),
            outcome[0],
            *self._deposit_tables(),
            self.dirty,
        )
        return outcome

    def post_with_rows(
        self,
        transfers: bytes | bytearray | memoryview,
        rows: bytes | bytearray | memoryview,
        timestamp_first: int,
        business_day: int,
    ) -> tuple[bytearray, array[int], array[int]]:
        """Post transfers, then write the rows whose transfer is OK (ledger.protocol.Ledger).
        No transfers (a collection chunk that took nothing): no kernel call, only rows. The
        rows are written by `cext.loans.write_rows` (a day-end chunk has 8189)."""
        assert len(rows) % DEPOSIT_WRITE_SIZE == 0, len(rows)
        outcome: tuple[bytearray, array[int], array[int]] = (bytearray(), array("Q"), array("q"))
        if len(transfers):
            outcome = self.create_transfers(transfers, timestamp_first, business_day)
        loan_kernel.write_rows(
            rows, outcome[0], self.accounts, self.account_index, self.deposits, self.meta,
            self.dirty,
        )  # fmt: skip
        return outcome

    def loan_collection_batch(
        self, day: int, terms: bytes | bytearray | memoryview, start: int, count_max: int
    ) -> tuple[bytes, bytes, array[int], int, int]:
        """The day-end collection of `day` from terms entry `start` (ledger.protocol.Ledger),
        a pure read, without the GIL (`cext.loans.collect`)."""
        check_collection_args(day, terms, start, count_max)
        transfers = bytearray(count_max * TRANSFER_SIZE)
        writes = bytearray(count_max * DEPOSIT_WRITE_SIZE)
        parts: array[int] = array("q", bytes(count_max * 4 * 8))
        transfer_count, write_count, next_index, skipped = loan_kernel.collect(
            day, terms, start, count_max, transfers, writes, parts, self.accounts, self.pending,
            self.deposits, self.meta, LOAN_FUNDING_ID, BANK_CHANNEL,
        )  # fmt: skip
        del parts[write_count * 4 :]
        return (
            bytes(transfers[: transfer_count * TRANSFER_SIZE]),
            bytes(writes[: write_count * DEPOSIT_WRITE_SIZE]),
            parts,
            next_index,
            skipped,
        )

    def deposit_row(self, account_id: int) -> bytes | None:
        slot = self.account_slot(account_id)
        if slot < 0:
            return None
        return self.deposit_row_at(slot)

    def deposit_row_at(self, slot: int) -> bytes:
        assert 0 <= slot < self.account_count, slot
        return bytes(self.deposits[slot * DEPOSIT_SIZE : (slot + 1) * DEPOSIT_SIZE])

    def due_fixed_deposits(self, day: int) -> array[int]:
        """Slots of open fixed deposits maturing on or before `day`, in slot order."""
        due: array[int] = array("I")
        due.frombytes(deposit_kernel.due_fixed_deposits(day, *self._deposit_tables()))
        return due

    def purge_counters(self, day: int) -> int:
        """Drop the day counters of days before `day`; the hash table entries dropped."""
        return int(deposit_kernel.purge_counters(day, self.channel_counters))

    # --- reads ----------------------------------------------------------------

    def account_id_at(self, slot: int) -> int:
        assert 0 <= slot < self.account_count, slot
        lo, hi = struct.unpack_from("<QQ", self.accounts, slot * ACCOUNT_SIZE)
        return int((hi << 64) | lo)

    def log_timestamp_oldest(self) -> int:
        """The oldest transfer's timestamp in the log window (0 when it is empty)."""
        if self.log_count == self.log_tail:
            return 0
        return int(struct.unpack_from("<Q", self.record_at(self.log_tail), 72)[0])

    def timestamp_last(self) -> int:
        """The newest transfer's timestamp (0 when the log window is empty)."""
        if self.log_count == self.log_tail:
            return 0
        return int(struct.unpack_from("<Q", self.record_at(self.log_count - 1), 72)[0])

    @property
    def heap_size(self) -> int:
        return int(self.meta[META_HEAP_SIZE])

    @property
    def failed_tail(self) -> int:
        return int(self.meta[META_FAILED_TAIL])

    @property
    def failed_count(self) -> int:
        return int(self.meta[META_FAILED_COUNT])

    def failed_timestamp_oldest(self) -> int:
        """The oldest remembered failure's timestamp (0 when the failure ring is empty)."""
        tail = int(self.meta[META_FAILED_TAIL])
        if tail == self.meta[META_FAILED_COUNT]:
            return 0
        offset = (tail & int(self.meta[META_FAILED_MASK])) * TRANSFER_SIZE + 72
        return int(struct.unpack_from("<Q", self.failed, offset)[0])

    def channel_records(self, channel: int) -> tuple[int, int]:
        """(records in the log window, records in the failure ring) of `channel`."""
        log_count, failed_count = struct.unpack_from("<qq", self.channel_live, 16 * channel)
        return int(log_count), int(failed_count)

    @property
    def pending_expiry_count(self) -> int:
        """Holds with a timeout not yet posted, voided or expired (the expiry heap)."""
        return self.heap_size

    def account_slot(self, account_id: int) -> int:
        return int(
            kernel.account_slot(*split_id(account_id), self.accounts, self.account_index, self.meta)
        )

    def lookup_account(self, account_id: int) -> bytes | None:
        slot = self.account_slot(account_id)
        if slot < 0:
            return None
        return bytes(self.accounts[slot * ACCOUNT_SIZE : (slot + 1) * ACCOUNT_SIZE])

    def account_pending(self, account_id: int) -> tuple[int, int] | None:
        """(debits_pending, credits_pending) of an account, or None."""
        slot = self.account_slot(account_id)
        if slot < 0:
            return None
        debits, credits = struct.unpack_from("<qq", self.pending, slot * PENDING_SIZE)
        return int(debits), int(credits)

    def account_counters(self, account_id: int) -> tuple[int, int, int, int] | None:
        slot = self.account_slot(account_id)
        if slot < 0:
            return None
        values = struct.unpack_from("<iiii", self.accounts, slot * ACCOUNT_SIZE + 32)
        return (values[0], values[1], values[2], values[3])

    def record_at(self, seq: int) -> bytes:
        """The 128-byte log record of `seq` (which must be in the log window)."""
        offset = (seq & int(self.meta[META_LOG_MASK])) * TRANSFER_SIZE
        return bytes(self.log[offset : offset + TRANSFER_SIZE])

    _record = record_at

    def log_records(self, start: int, stop: int) -> bytes:
        """The log records of seqs start..stop-1: at most two slices of the ring."""
        return b"".join(self._log_slices(start, stop))

    def account_rows(self, slots: Iterable[int]) -> list[tuple[int, bytes]]:
        """(slot, `account_row(slot)`) of each slot, the tables looked up once."""
        tables = [(self.table(table), table.row_size) for table in PER_ACCOUNT_TABLES]
        if len(tables) == 3:
            # The PostgreSQL store's per-group hot path: the generic join below costs
            # 0.59 us a row against 0.28 us for two slices (measured on 15-row calls).
            (first, first_size), (second, second_size), (third, third_size) = tables
            return [
                (
                    slot,
                    first[slot * first_size : (slot + 1) * first_size]
                    + second[slot * second_size : (slot + 1) * second_size]
                    + third[slot * third_size : (slot + 1) * third_size],
                )
                for slot in slots
            ]
        return [
            (slot, b"".join([table[slot * size : (slot + 1) * size] for table, size in tables]))
            for slot in slots
        ]

    def account_row(self, slot: int) -> bytes:
        """Slot `slot`'s rows of every per-account table, concatenated (ACCOUNT_ROW_SIZE)."""
        return b"".join(
            self.table(table)[slot * table.row_size : (slot + 1) * table.row_size]
            for table in PER_ACCOUNT_TABLES
        )

    def lookup_transfer(self, transfer_id: int) -> bytes | None:
        seq = int(
            kernel.transfer_seq(
                *split_id(transfer_id), self.transfer_index, self.log, self.failed, self.meta
            )
        )
        if seq < 0:
            return None
        if seq & FAILED_BIT:
            return self.failed_record_at(seq & ~FAILED_BIT)
        return self.record_at(seq)

    def failed_record_at(self, seq: int) -> bytes:
        """The 128-byte record of failure `seq` (which must be in the failure window)."""
        offset = (seq & int(self.meta[META_FAILED_MASK])) * TRANSFER_SIZE
        return bytes(self.failed[offset : offset + TRANSFER_SIZE])

    def account_history(
        self, account_id: int, before_seq: int = -1, limit: int = 50
    ) -> list[tuple[int, bytes]]:
        """(seq, 128-byte record) of the account's transfers, newest first, older than
        `before_seq` (the cursor: pass the last seq of the previous page)."""
        slot = self.account_slot(account_id)
        if slot < 0:
            return []
        seqs = kernel.account_history(slot, before_seq, limit, self.log, self.meta)
        return [(seq, self.record_at(seq)) for seq in seqs]

    def channel_used(self, account_id: int, channel: int, day: int) -> int:
        slot = self.account_slot(account_id)
        if slot < 0:
            return 0
        return int(kernel.channel_used(slot, channel, day, self.channel_counters))

    def counter_used(self, key: int, day: int) -> int:
        """Day counter `key` (ledger.types account_counter_key / customer_counter_key)."""
        return int(kernel.counter_used(key, day, self.channel_counters))

    def account_customer(self, account_id: int) -> int | None:
        """The account's customer number (0 = none), or None when there is no account."""
        slot = self.account_slot(account_id)
        if slot < 0:
            return None
        return int(struct.unpack_from("<Q", self.owners, slot * CUSTOMER_SIZE)[0])

    def canonical_chunks(self) -> Iterator[bytes | memoryview]:
        """The state as bytes, identical for every backend: the digest's input."""
        count = self.account_count
        yield struct.pack("<qqqq", count, self.log_tail, self.log_count, self.last_day)
        yield memoryview(self.accounts)[: count * ACCOUNT_SIZE]
        yield memoryview(self.pending)[: count * PENDING_SIZE]
        if count and not simgen.all_zero(self.owners, 0, count * CUSTOMER_SIZE):
            yield memoryview(self.owners)[: count * CUSTOMER_SIZE]
        yield from self._log_slices(self.log_tail, self.log_count)
        for slot, channel, used in self.channels_live():
            yield pack_channel_live_digest(slot, channel, used)
        if self.failed_count:  # a state from before the failure ring digests as it did
            yield struct.pack("<qq", self.failed_tail, self.failed_count)
            yield from self._failed_slices(self.failed_tail, self.failed_count)
        if self.accrued_day or (
            count and not simgen.all_zero(self.deposits, 0, count * DEPOSIT_SIZE)
        ):  # a state from before deposits digests as it did
            yield struct.pack("<q", self.accrued_day)
            yield memoryview(self.deposits)[: count * DEPOSIT_SIZE]

    def channels_live(self) -> list[tuple[int, int, int]]:
        """(slot, channel, used) of today's non-zero channel counters, sorted."""
        return list(kernel.channel_entries_live(self.channel_counters, self.last_day))

    def _log_ranges(self, start: int, stop: int, size: int = 0) -> list[tuple[int, int]]:
        """Byte ranges of the log records of seqs start..stop-1, in seq order (at most two);
        `size`: of the ring of that many records instead (the failure ring)."""
        size = size or self.transfer_capacity
        ranges = []
        while start < stop:
            index = start % size
            run = min(stop - start, size - index)
            ranges.append((index * TRANSFER_SIZE, (index + run) * TRANSFER_SIZE))
            start += run
        return ranges

    def _log_slices(self, start: int, stop: int) -> list[memoryview]:
        view = memoryview(self.log)
        return [view[begin:end] for begin, end in self._log_ranges(start, stop)]

    def _failed_slices(self, start: int, stop: int) -> list[memoryview]:
        view = memoryview(self.failed)
        return [view[begin:end] for begin, end in self._log_ranges(start, stop, self.failed_size)]

    def digest(self) -> str:
        hasher = hashlib.sha256()
        for chunk in self.canonical_chunks():
            hasher.update(chunk)
        return hasher.hexdigest()

    # --- state sections (ledger/state.py) ---------------------------------------

    def table(self, table: Table) -> mmap.mmap:
        """The packed table `table` names."""
        buffer: mmap.mmap = getattr(self, table.name)
        return buffer

    def live_ranges(self, table: Table) -> list[tuple[int, int]]:
        """Byte ranges of the live part of `table` (see `Extent`)."""
        if table.extent is Extent.LOG_WINDOW:
            return self._log_ranges(self.log_tail, self.log_count)
        if table.extent is Extent.FAILED_WINDOW:
            return self._log_ranges(self.failed_tail, self.failed_count, self.failed_size)
        if table.extent is Extent.ACCOUNTS:
            return [(0, self.account_count * table.row_size)]
        if table.extent is Extent.HEAP:
            return [(0, self.heap_size * table.row_size)]
        return [(0, len(self.table(table)))]

    def live_chunks(self, table: Table) -> list[memoryview]:
        """The live part of `table`, in place."""
        view = memoryview(self.table(table))
        return [view[begin:end] for begin, end in self.live_ranges(table)]

    def dump_state(self) -> LedgerState:
        """The state's sections, reading the big tables in place (no copies of them).

        Valid until the next kernel call; a forked child may write it at leisure.
        """
        sections: dict[str, Sequence[Buffer]] = {
            "meta": [self.meta.tobytes()],
            "products": [self.products],
            "channels": [self.channels],
            "quotas": [self.log_quotas],
        }
        for table in TABLES:
            if table.stored:
                sections[table.name] = self.live_chunks(table)
        sections["chanlive"] = [pack_channels_live(self.channels_live())]
        sections["digest"] = [bytes.fromhex(self.digest())]
        return LedgerState.of(sections)

    @classmethod
    def load_state(
        cls, state: LedgerState, *, account_capacity: int, transfer_capacity: int
    ) -> KernelLedger:
        """A ledger holding `state`, its indexes rebuilt by the kernel, checked against its digest.

        Raises StateTooLarge when the capacities cannot hold it, StateCorrupt when
        the rebuilt ledger's digest is not the one recorded.
        """
        ledger = cls(account_capacity=account_capacity, transfer_capacity=transfer_capacity)
        state.check_capacity(account_capacity, ledger.transfer_capacity, ledger.failed_size)
        ledger.set_rules(
            state.section("products"), state.section("channels"), state.section("quotas")
        )
        count = state.account_count
        for table in ACCOUNT_TABLES:
            ledger.table(table)[: count * table.row_size] = state.section(table.name)
        tail, end = state.log_tail, state.log_count
        log = state.section("log")
        position = 0
        for chunk in ledger._log_slices(tail, end):
            chunk[:] = log[position : position + len(chunk)]
            position += len(chunk)
        failed, position = state.section("failed"), 0
        for chunk in ledger._failed_slices(state.failed_tail, state.failed_count):
            chunk[:] = failed[position : position + len(chunk)]
            position += len(chunk)
        ledger.meta[META_ACCOUNT_COUNT] = count
        ledger.meta[META_LOG_TAIL] = tail
        ledger.meta[META_LOG_COUNT] = end
        ledger.meta[META_FAILED_TAIL] = state.failed_tail
        ledger.meta[META_FAILED_COUNT] = state.failed_count
        ledger.meta[META_LAST_DAY] = state.last_day
        ledger.meta[META_CHANNEL_TABLE_FULL] = state.channel_table_full_count
        ledger.meta[META_ACCRUED_DAY] = state.accrued_day
        ledger.rebuild_indexes()  # the kernel inserts slots, ids and live holds, without the GIL
        ledger._insert_channel_counters(state.channels_live())
        if ledger.digest() != state.digest:
            raise StateCorrupt(
                f"rebuilt state has digest {ledger.digest()}, the state recorded {state.digest}"
            )
        return ledger

    def _insert_channel_counters(self, live: list[tuple[int, int, int]]) -> None:
        """Insert today's counters (kernel `channel_position`), then read each back."""
        table = memoryview(self.channel_counters).cast("Q")
        mask = len(self.channel_counters) // CHANNEL_ENTRY_SIZE - 1
        if len(live) > mask + 1:
            raise StateTooLarge(f"holds {len(live)} channel counters; the table holds {mask + 1}")
        day = self.last_day
        for slot, channel, used in live:
            key = ((slot + 1) << 8) | channel
            position = hash_id(key, 0x5A17) & mask & ~3
            while table[2 * position] != 0:
                position = (position + 1) & mask
            table[2 * position] = (key << 16) | day
            table[2 * position + 1] = used & UINT64_MAX
        table.release()
        for slot, channel, used in live:
            found = kernel.counter_used(((slot + 1) << 8) | channel, day, self.channel_counters)
            assert found == used, (slot, channel, found, used)

    def copy_state_from(self, source: KernelLedger) -> int:
        """Make this ledger a byte copy of `source` (a base backup, a resync); bytes copied.

        Copies only the live part of every table (indexes included, so nothing
        is rebuilt); sparse tables skip chunks that are zero on both sides, so
        their untouched pages stay unbacked. Same capacities on both sides.
        """
        copied = 0
        for table in TABLES:
            target, origin = self.table(table), source.table(table)
            assert len(target) == len(origin), table.name
            for start, stop in source.live_ranges(table):
                step = SPARSE_CHUNK if table.sparse else max(1, stop - start)
                for begin in range(start, stop, step):
                    end = min(begin + step, stop)
                    if (
                        table.sparse
                        and simgen.all_zero(origin, begin, end)
                        and simgen.all_zero(target, begin, end)
                    ):
                        continue
                    memoryview(target)[begin:end] = memoryview(origin)[begin:end]
                    copied += end - begin
        self.products = bytearray(source.products)
        self.channels = bytearray(source.channels)
        self.log_quotas = bytearray(source.log_quotas)
        self.meta[:] = source.meta
        return copied

    def replica_digest(self) -> str:
        """SHA-256 of the state, rules included, read in bulk: cheap at 30 million accounts.

        Equal for two ledgers exactly when they applied the same entries; unlike
        `digest()` it reads the channel counters in table order (one kernel pass,
        no Python objects per counter), so it is not comparable across backends.
        """
        hasher = hashlib.sha256()
        count = self.account_count
        hasher.update(struct.pack("<qqqq", count, self.log_tail, self.log_count, self.last_day))
        hasher.update(struct.pack("<qq", self.failed_tail, self.failed_count))
        for table in TABLES:
            if table.stored:
                for chunk in self.live_chunks(table):
                    hasher.update(chunk)
        entries = len(self.channel_counters) // CHANNEL_ENTRY_SIZE
        out = bytearray(CHANNEL_CHUNK * CHANNEL_ENTRY_SIZE)
        for start in range(0, entries, CHANNEL_CHUNK):
            written = simgen.pack_channel_entries(
                self.channel_counters, self.last_day, start, start + CHANNEL_CHUNK, out
            )
            hasher.update(memoryview(out)[:written])
        hasher.update(bytes(self.products))
        hasher.update(bytes(self.channels))
        hasher.update(bytes(self.log_quotas))
        return hasher.hexdigest()


assert INTEREST_ID_TAG == deposit_kernel.INTEREST_ID_TAG
assert INTEREST_ID_MIX == deposit_kernel.INTEREST_ID_MIX
assert COLLECTION_ID_TAG == loan_kernel.COLLECTION_ID_TAG
assert COLLECTION_ID_MIX == loan_kernel.COLLECTION_ID_MIX

FAILED_BIT = 1 << 62  # on the seq of a failure ring record (cext/ledger_kernel.pyx)


def failed_ring_size(log_size: int) -> int:
    """Records of the failure ring beside a log of `log_size` (a power of two): a quarter."""
    return max(4, log_size // 4)


def hash_id(lo: int, hi: int) -> int:
    """The kernel's id hash (cext/ledger_kernel.pyx `hash_id`), in Python."""
    h = (lo * 0x9E3779B97F4A7C15 + hi * 0xC2B2AE3D27D4EB4F) & UINT64_MAX
    h ^= h >> 31
    h = (h * 0xD6E8FEB86659FD93) & UINT64_MAX
    return h ^ (h >> 32)
