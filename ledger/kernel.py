"""The ledger on the Cython kernels: owns the packed tables, calls `cext.ledger_kernel`.

Same interface as `ledger.reference.ReferenceLedger`. The tables are anonymous
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
from collections.abc import Iterator

from cext import ledger_kernel as kernel
from ledger.types import (
    ACCOUNT_SIZE,
    CHANNEL_COUNT,
    CHANNEL_SIZE,
    PENDING_SIZE,
    PRODUCT_SIZE,
    TRANSFER_SIZE,
    split_id,
)

INDEX_ENTRY_SIZE = 16
HEAP_ENTRY_SIZE = 16
CHANNEL_ENTRY_SIZE = 16

META_ACCOUNT_COUNT = 0
META_ACCOUNT_CAPACITY = 1
META_ACCOUNT_INDEX_MASK = 2
META_LOG_TAIL = 3
META_LOG_COUNT = 4
META_LOG_MASK = 5
META_TRANSFER_INDEX_MASK = 6
META_TRANSFER_INDEX_COUNT = 7
META_HEAP_SIZE = 8
META_HEAP_CAPACITY = 9
META_CHANNEL_MASK = 10
META_LAST_DAY = 11
META_PRODUCT_COUNT = 12
META_CHANNEL_TABLE_FULL = 13
META_ACCOUNT_SLOT_BITS = 14
META_DIRTY_ENABLED = 15
META_DIRTY_ACCOUNT_COUNT = 16
META_DIRTY_TRANSFER_COUNT = 17
META_DIRTY_OVERFLOW = 18
META_SIZE = 24


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


class KernelLedger:
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
        transfer_index_size = power_of_two_at_least(max(16, 2 * log_size))
        channel_size = power_of_two_at_least(
            channel_counter_capacity or max(1024, account_capacity)
        )
        self.accounts = zeroed(account_capacity * ACCOUNT_SIZE)
        self.pending = zeroed(account_capacity * PENDING_SIZE)
        self.account_index = zeroed(account_index_size * 4)
        self.log = zeroed(log_size * TRANSFER_SIZE)
        self.transfer_index = zeroed(transfer_index_size * INDEX_ENTRY_SIZE)
        self.heap = zeroed(log_size * HEAP_ENTRY_SIZE)
        self.channel_counters = zeroed(channel_size * CHANNEL_ENTRY_SIZE)
        # Changed rows since the last take, for stores that write rows (PostgreSQL):
        # transfer seqs (int64 x log size), account slots (uint32 x accounts), marks.
        self.dirty = zeroed(log_size * 8 + account_capacity * 5)
        self.products = bytearray(PRODUCT_SIZE)
        self.channels = bytearray(CHANNEL_COUNT * CHANNEL_SIZE)
        self.meta = array("q", [0] * META_SIZE)
        self.meta[META_ACCOUNT_CAPACITY] = account_capacity
        self.meta[META_ACCOUNT_INDEX_MASK] = account_index_size - 1
        # slot + 1 must fit below the tag bits: capacity < 2**slot_bits.
        self.meta[META_ACCOUNT_SLOT_BITS] = min(32, max(1, account_capacity.bit_length()))
        self.meta[META_LOG_MASK] = log_size - 1
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
        for table in (self.log, self.transfer_index, self.heap, self.channel_counters):
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
        bytearray,
        bytearray,
        array[int],
    ]:
        return (
            self.accounts,
            self.pending,
            self.account_index,
            self.log,
            self.transfer_index,
            self.heap,
            self.channel_counters,
            self.dirty,
            self.products,
            self.channels,
            self.meta,
        )

    # --- rules ----------------------------------------------------------------

    def set_rules(self, product_table: bytes | bytearray, channel_table: bytes | bytearray) -> None:
        assert len(product_table) >= PRODUCT_SIZE and len(product_table) % PRODUCT_SIZE == 0
        assert len(channel_table) == CHANNEL_COUNT * CHANNEL_SIZE
        self.products = bytearray(product_table)
        self.channels = bytearray(channel_table)
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

    # --- reads ----------------------------------------------------------------

    @property
    def account_count(self) -> int:
        return int(self.meta[META_ACCOUNT_COUNT])

    @property
    def log_tail(self) -> int:
        return int(self.meta[META_LOG_TAIL])

    @property
    def log_count(self) -> int:
        return int(self.meta[META_LOG_COUNT])

    def timestamp_last(self) -> int:
        """The newest transfer's timestamp (0 when the log window is empty)."""
        if self.log_count == self.log_tail:
            return 0
        return int(struct.unpack_from("<Q", self._record(self.log_count - 1), 72)[0])

    @property
    def heap_size(self) -> int:
        return int(self.meta[META_HEAP_SIZE])

    @property
    def last_day(self) -> int:
        return int(self.meta[META_LAST_DAY])

    @property
    def channel_table_full_count(self) -> int:
        return int(self.meta[META_CHANNEL_TABLE_FULL])

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

    def _record(self, seq: int) -> bytes:
        offset = (seq & int(self.meta[META_LOG_MASK])) * TRANSFER_SIZE
        return bytes(self.log[offset : offset + TRANSFER_SIZE])

    def lookup_transfer(self, transfer_id: int) -> bytes | None:
        seq = int(
            kernel.transfer_seq(*split_id(transfer_id), self.transfer_index, self.log, self.meta)
        )
        return None if seq < 0 else self._record(seq)

    def account_history(
        self, account_id: int, before_seq: int = -1, limit: int = 50
    ) -> list[tuple[int, bytes]]:
        """(seq, 128-byte record) of the account's transfers, newest first, older than
        `before_seq` (the cursor: pass the last seq of the previous page)."""
        slot = self.account_slot(account_id)
        if slot < 0:
            return []
        seqs = kernel.account_history(slot, before_seq, limit, self.log, self.meta)
        return [(seq, self._record(seq)) for seq in seqs]

    def channel_used(self, account_id: int, channel: int, day: int) -> int:
        slot = self.account_slot(account_id)
        if slot < 0:
            return 0
        return int(kernel.channel_used(slot, channel, day, self.channel_counters))

    def canonical_chunks(self) -> Iterator[bytes | memoryview]:
        """The state as bytes, identical for every backend: the digest's input."""
        count = self.account_count
        yield struct.pack("<qqqq", count, self.log_tail, self.log_count, self.last_day)
        yield memoryview(self.accounts)[: count * ACCOUNT_SIZE]
        yield memoryview(self.pending)[: count * PENDING_SIZE]
        yield from self._log_window()
        for slot, channel, used in kernel.channel_entries_live(
            self.channel_counters, self.last_day
        ):
            yield struct.pack("<IBq", slot, channel, used)

    def _log_window(self) -> Iterator[memoryview]:
        """The log window in seq order: at most two slices of the ring."""
        size = self.transfer_capacity
        tail, count = self.log_tail, self.log_count
        view = memoryview(self.log)
        while tail < count:
            start = tail % size
            run = min(count - tail, size - start)
            yield view[start * TRANSFER_SIZE : (start + run) * TRANSFER_SIZE]
            tail += run

    def digest(self) -> str:
        hasher = hashlib.sha256()
        for chunk in self.canonical_chunks():
            hasher.update(chunk)
        return hasher.hexdigest()
