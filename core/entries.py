"""Engine entries: one batch each (or a group's customer-state changes), the unit the
store makes durable and replay applies.

The ledger's state is a pure function of its sequence of entries: the engine
forms them, the journal (or PostgreSQL) stores them, and `apply_entry` applies
one to a ledger, identically for the engine, recovery and the simulator.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

from ledger.deposits import DEPOSIT_WRITE_SIZE, RATE_ROW
from ledger.kernel import KernelLedger
from ledger.reference import ReferenceLedger
from ledger.state import LOG_QUOTA_TABLE_SIZE
from ledger.types import ACCOUNT_SIZE, RULES_LEGACY_SIZE, RULES_SIZE, TRANSFER_SIZE, join_id


class EntryKind(enum.IntEnum):
    """What one entry holds; also the journal's record kinds. Never renumber."""

    CREATE_ACCOUNTS = 1
    CREATE_TRANSFERS = 2
    UPDATE_ACCOUNT = 3
    EXPIRE_PENDING = 4
    SET_RULES = 5
    EVICT = 6
    PUT_STATE = 7
    EVICT_FAILED = 8  # forget failures older than the failure retention (the failure ring)
    ACCRUE_INTEREST = 9  # one day's interest accrual (u16 day, then the rate table)
    SETTLE_INTEREST = 10  # a chunk of a period's interest settlement (transfers + slots)
    POST_WITH_ROWS = 11  # transfers and the deposit rows written iff they post (atomic)
    PURGE_COUNTERS = 12  # the limit-counter rollover: drop day counters of earlier days


UPDATE_ACCOUNT_PAYLOAD = struct.Struct("<QQBH13x")  # id_lo, id_hi, status, flags (32 bytes)
EVICT_PAYLOAD = struct.Struct("<Qq")  # before_ns, count_max (EVICT and EVICT_FAILED)
# Product table size, then products, then the rule table (RULES_SIZE bytes; journals
# written before per-code authorization: RULES_LEGACY_SIZE), then (since the log quotas;
# absent in rules journaled before them: no quotas) the log quota table.
RULES_HEADER = struct.Struct("<I")
# A PUT_STATE change: key size, value size (STATE_DELETE: the key is deleted, no value),
# then the key and the value; `count` changes back to back.
STATE_CHANGE_HEADER = struct.Struct("<II")
STATE_DELETE = 0xFFFFFFFF
STATE_KEY_SIZE_MAX = 1024

StateChanges = list[tuple[bytes, bytes | None]]

# ACCRUE_INTEREST: u16 day, 6 zero bytes, then the rate table (ledger.deposits.RATE_ROW
# per product id); count 0.
ACCRUE_HEADER = struct.Struct("<H6x")
# SETTLE_INTEREST: u32 period, u32 n, then n transfers (128 bytes), then n slots (u32);
# count n.
SETTLE_HEADER = struct.Struct("<II")
# POST_WITH_ROWS: u32 n transfers, u32 m row writes, then the transfers, then the row
# writes (ledger.deposits.DEPOSIT_WRITE, 64 bytes); count n. n may be 0 when m >= 1 (a
# day-end loan collection chunk where nothing was taken: only rows are written).
POST_WITH_ROWS_HEADER = struct.Struct("<II")
# PURGE_COUNTERS: u16 day, 6 zero bytes; count 0.
PURGE_PAYLOAD = struct.Struct("<H6x")


@dataclass(frozen=True, slots=True)
class Entry:
    """One engine batch: enough to replay it exactly."""

    kind: EntryKind
    timestamp_first: int
    business_day: int
    count: int
    payload: bytes

    def check(self) -> None:
        """Assert the entry is well-formed (before it is written and after it is read)."""
        assert self.timestamp_first > 0, self
        assert 0 <= self.business_day < 65536, self
        if self.kind == EntryKind.CREATE_TRANSFERS:
            assert self.count >= 1 and len(self.payload) == self.count * TRANSFER_SIZE, self.count
        elif self.kind == EntryKind.CREATE_ACCOUNTS:
            assert self.count >= 1 and len(self.payload) == self.count * ACCOUNT_SIZE, self.count
        elif self.kind == EntryKind.UPDATE_ACCOUNT:
            assert self.count == 1 and len(self.payload) == UPDATE_ACCOUNT_PAYLOAD.size
        elif self.kind == EntryKind.EXPIRE_PENDING:
            assert self.count == 0 and not self.payload
        elif self.kind == EntryKind.SET_RULES:
            rules_payload_tables(self.payload)  # asserts the tables' sizes
        elif self.kind in (EntryKind.EVICT, EntryKind.EVICT_FAILED):
            assert self.count == 0 and len(self.payload) == EVICT_PAYLOAD.size
        elif self.kind == EntryKind.PUT_STATE:
            assert self.count >= 1 and len(decode_state_changes(self.payload)) == self.count
        elif self.kind == EntryKind.ACCRUE_INTEREST:
            assert self.count == 0, self.count
            accrue_payload_fields(self.payload)  # asserts the sizes
        elif self.kind == EntryKind.SETTLE_INTEREST:
            _period, transfers, _slots = settle_payload_fields(self.payload)
            assert self.count == len(transfers) // TRANSFER_SIZE, self.count
        elif self.kind == EntryKind.POST_WITH_ROWS:
            transfers, _rows = post_with_rows_payload_fields(self.payload)
            assert self.count == len(transfers) // TRANSFER_SIZE, self.count
        elif self.kind == EntryKind.PURGE_COUNTERS:
            assert self.count == 0 and len(self.payload) == PURGE_PAYLOAD.size
        else:
            raise AssertionError(f"unknown entry kind {self.kind}")


def encode_state_changes(changes: StateChanges) -> bytes:
    """The PUT_STATE payload of `changes`, in order (a later change of a key wins)."""
    parts: list[bytes] = []
    for key, value in changes:
        assert 1 <= len(key) <= STATE_KEY_SIZE_MAX, key
        if value is None:
            parts.append(STATE_CHANGE_HEADER.pack(len(key), STATE_DELETE))
            parts.append(key)
        else:
            assert len(value) < STATE_DELETE, len(value)
            parts.append(STATE_CHANGE_HEADER.pack(len(key), len(value)))
            parts.append(key)
            parts.append(value)
    return b"".join(parts)


def decode_state_changes(payload: bytes) -> StateChanges:
    """The changes of a PUT_STATE payload; asserts the encoding is exact (no bytes left)."""
    changes: StateChanges = []
    offset, end = 0, len(payload)
    view = memoryview(payload)
    while offset < end:
        assert offset + STATE_CHANGE_HEADER.size <= end, "state change header cut short"
        key_size, value_size = STATE_CHANGE_HEADER.unpack_from(payload, offset)
        offset += STATE_CHANGE_HEADER.size
        assert 1 <= key_size <= STATE_KEY_SIZE_MAX, f"state key of {key_size} bytes"
        key = bytes(view[offset : offset + key_size])
        offset += key_size
        if value_size == STATE_DELETE:
            value = None
        else:
            value = bytes(view[offset : offset + value_size])
            offset += value_size
        assert offset <= end, "state change runs past the payload"
        changes.append((key, value))
    return changes


def apply_state_changes(state: dict[bytes, bytes], changes: StateChanges) -> None:
    """Apply changes in order: a value sets its key, None deletes it (if present)."""
    for key, value in changes:
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value


def rules_payload_tables(payload: bytes | memoryview) -> tuple[bytes, bytes, bytes]:
    """A SET_RULES payload's product table, rule table and log quota table (b"": none)."""
    (products_size,) = RULES_HEADER.unpack_from(payload)
    tables_size = len(payload) - 4 - products_size
    if tables_size in (RULES_SIZE, RULES_SIZE + LOG_QUOTA_TABLE_SIZE):
        rules_size = RULES_SIZE
    else:
        # Before per-code authorization: the legacy table of two caps a channel.
        assert tables_size in (RULES_LEGACY_SIZE, RULES_LEGACY_SIZE + LOG_QUOTA_TABLE_SIZE)
        rules_size = RULES_LEGACY_SIZE
    channels_end = 4 + products_size + rules_size
    return (
        bytes(payload[4 : 4 + products_size]),
        bytes(payload[4 + products_size : channels_end]),
        bytes(payload[channels_end:]),
    )


def pack_accrue_payload(day: int, rates: bytes | bytearray | memoryview) -> bytes:
    """An ACCRUE_INTEREST payload: accrue `day` at `rates` (RATE_ROW per product id)."""
    assert 0 < day < 65536 and len(rates) % RATE_ROW.size == 0, (day, len(rates))
    return ACCRUE_HEADER.pack(day) + bytes(rates)


def accrue_payload_fields(payload: bytes | memoryview) -> tuple[int, bytes]:
    """(day, rates) of an ACCRUE_INTEREST payload; asserts its sizes."""
    assert len(payload) >= ACCRUE_HEADER.size, len(payload)
    (day,) = ACCRUE_HEADER.unpack_from(payload)
    rates = bytes(payload[ACCRUE_HEADER.size :])
    assert day > 0 and len(rates) % RATE_ROW.size == 0, (day, len(rates))
    return day, rates


def pack_settle_payload(
    period: int, transfers: bytes | bytearray | memoryview, slots: bytes | bytearray | memoryview
) -> bytes:
    """A SETTLE_INTEREST payload (`Ledger.settlement_batch`'s transfers and slots)."""
    count = len(transfers) // TRANSFER_SIZE
    assert count >= 1 and len(transfers) == count * TRANSFER_SIZE and len(slots) == 4 * count
    return SETTLE_HEADER.pack(period, count) + bytes(transfers) + bytes(slots)


def settle_payload_fields(payload: bytes | memoryview) -> tuple[int, memoryview, memoryview]:
    """(period, transfers, slots) of a SETTLE_INTEREST payload, in place; asserts sizes."""
    period, count = SETTLE_HEADER.unpack_from(payload)
    view = memoryview(payload)
    end = SETTLE_HEADER.size + count * TRANSFER_SIZE
    assert count >= 1 and len(view) == end + 4 * count, (count, len(view))
    return period, view[SETTLE_HEADER.size : end], view[end:]


def pack_post_with_rows_payload(
    transfers: bytes | bytearray | memoryview, rows: bytes | bytearray | memoryview
) -> bytes:
    """A POST_WITH_ROWS payload: the transfers, then the row writes (DEPOSIT_WRITE each);
    at least one of either (no transfers: rows only)."""
    count = len(transfers) // TRANSFER_SIZE
    writes = len(rows) // DEPOSIT_WRITE_SIZE
    assert (count >= 1 or writes >= 1) and len(transfers) == count * TRANSFER_SIZE
    assert len(rows) == writes * DEPOSIT_WRITE_SIZE
    return POST_WITH_ROWS_HEADER.pack(count, writes) + bytes(transfers) + bytes(rows)


def post_with_rows_payload_fields(payload: bytes | memoryview) -> tuple[memoryview, memoryview]:
    """(transfers, row writes) of a POST_WITH_ROWS payload, in place; asserts sizes."""
    count, writes = POST_WITH_ROWS_HEADER.unpack_from(payload)
    view = memoryview(payload)
    end = POST_WITH_ROWS_HEADER.size + count * TRANSFER_SIZE
    assert count >= 1 or writes >= 1, (count, writes)
    assert len(view) == end + writes * DEPOSIT_WRITE_SIZE, (count, writes)
    return view[POST_WITH_ROWS_HEADER.size : end], view[end:]


def pack_purge_payload(day: int) -> bytes:
    """A PURGE_COUNTERS payload: drop the day counters of days before `day`."""
    assert 0 <= day < 65536, day
    return PURGE_PAYLOAD.pack(day)


def apply_entry(
    ledger: KernelLedger | ReferenceLedger,
    entry: Entry,
    state: dict[bytes, bytes] | None = None,
) -> Any:
    """Apply one entry; returns the kernel's outcome for it (results etc.).

    PUT_STATE changes `state` (the customer state), not the ledger; a caller
    that only rebuilds the ledger (audit, the simulator) passes no state and
    the entry changes nothing.
    """
    entry.check()
    if entry.kind == EntryKind.PUT_STATE:
        if state is not None:
            apply_state_changes(state, decode_state_changes(entry.payload))
        return None
    if entry.kind == EntryKind.CREATE_TRANSFERS:
        return ledger.create_transfers(entry.payload, entry.timestamp_first, entry.business_day)
    if entry.kind == EntryKind.CREATE_ACCOUNTS:
        return ledger.create_accounts(entry.payload)
    if entry.kind == EntryKind.UPDATE_ACCOUNT:
        id_lo, id_hi, status, flags = UPDATE_ACCOUNT_PAYLOAD.unpack(entry.payload)
        return ledger.update_account(join_id(id_lo, id_hi), status, flags)
    if entry.kind == EntryKind.EXPIRE_PENDING:
        return ledger.expire_pending(entry.timestamp_first, entry.business_day)
    if entry.kind == EntryKind.SET_RULES:
        ledger.set_rules(*rules_payload_tables(entry.payload))
        return None
    if entry.kind == EntryKind.EVICT:
        before_ns, count_max = EVICT_PAYLOAD.unpack(entry.payload)
        return ledger.evict(before_ns, count_max)
    if entry.kind == EntryKind.EVICT_FAILED:
        before_ns, count_max = EVICT_PAYLOAD.unpack(entry.payload)
        return ledger.evict_failed(before_ns, count_max)
    if entry.kind == EntryKind.ACCRUE_INTEREST:
        day, rates = accrue_payload_fields(entry.payload)
        return ledger.accrue_interest(day, rates)
    if entry.kind == EntryKind.SETTLE_INTEREST:
        period, transfers, slots = settle_payload_fields(entry.payload)
        return ledger.settle_interest(
            period, transfers, slots, entry.timestamp_first, entry.business_day
        )
    if entry.kind == EntryKind.POST_WITH_ROWS:
        transfers, rows = post_with_rows_payload_fields(entry.payload)
        return ledger.post_with_rows(transfers, rows, entry.timestamp_first, entry.business_day)
    if entry.kind == EntryKind.PURGE_COUNTERS:
        (day,) = PURGE_PAYLOAD.unpack(entry.payload)
        return ledger.purge_counters(day)
    raise AssertionError(f"unknown entry kind {entry.kind}")
