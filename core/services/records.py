"""Every ledger record decoded or packed by the services, in this one module.

The kernels' record layouts (`ledger.types.*_STRUCT`) are read here by field
name (named tuples over the struct's fields) and nowhere else above the
engine, so moving to the ledger's own named record views is one edit here.
Transfer ids are derived here too: the same request always names the same
transfer, on any server, after any crash.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
from typing import Any, NamedTuple

from ledger.types import (
    ACCOUNT_INPUT_STRUCT,
    ACCOUNT_STRUCT,
    TRANSFER_SIZE,
    TRANSFER_STRUCT,
    CreateTransferResult,
    PendingState,
    TransferCode,
    TransferFlags,
    split_id,
)

R = CreateTransferResult
LEDGER_CNY = 156
NS_PER_S = 1_000_000_000
EPOCH_DATE = datetime.date(2000, 1, 1)
UINT64_MASK = 0xFFFFFFFFFFFFFFFF
_ID_ZERO = bytes(16)
_ID_MAX_PACKED = b"\xff" * 16
# A transfer record after its 16-byte id (the single-transfer path packs the id as bytes).
_TRANSFER_AFTER_ID = struct.Struct("<" + TRANSFER_STRUCT.format.removeprefix("<QQ"))
assert _TRANSFER_AFTER_ID.size == TRANSFER_SIZE - 16


class AccountRecord(NamedTuple):
    id_lo: int
    id_hi: int
    debits_posted: int
    credits_posted: int
    inflow_daily: int
    inflow_yearly: int
    outflow_daily: int
    outflow_yearly: int
    bound_slot: int
    ledger: int
    kind: int
    status: int
    flags: int
    product_id: int
    counters_day: int
    internal: int


class TransferRecord(NamedTuple):
    id_lo: int
    id_hi: int
    debit_lo: int
    debit_hi: int
    credit_lo: int
    credit_hi: int
    pending_lo: int
    pending_hi: int
    amount: int
    timestamp: int
    timeout_s: int
    ledger: int
    code: int
    flags: int
    channel: int
    result: int
    debit_slot: int
    credit_slot: int
    business_day: int
    counted: int
    state: int
    user_data: int
    amount_posted: int
    amount_reversed: int

    @property
    def transfer_id(self) -> int:
        return (self.id_hi << 64) | self.id_lo

    @property
    def debit_account_id(self) -> int:
        return (self.debit_hi << 64) | self.debit_lo

    @property
    def credit_account_id(self) -> int:
        return (self.credit_hi << 64) | self.credit_lo

    @property
    def pending_id(self) -> int:
        return (self.pending_hi << 64) | self.pending_lo


def account_record(raw: bytes) -> AccountRecord:
    return AccountRecord._make(ACCOUNT_STRUCT.unpack(raw))


def transfer_record(raw: bytes) -> TransferRecord:
    return TransferRecord._make(TRANSFER_STRUCT.unpack(raw))


def account_input(
    account_id: int, bound_id: int, kind: int, status: int, flags: int, product: int
) -> bytes:
    """One account-creation input record (64 bytes) in CNY."""
    return ACCOUNT_INPUT_STRUCT.pack(
        *split_id(account_id), *split_id(bound_id), LEDGER_CNY, kind, status, flags, product
    )


def pack_transfer(
    packed_id: bytes,
    debit: int,
    credit: int,
    amount: int,
    code: int,
    flags: int,
    pending_id: int,
    timeout_s: int,
    channel_ledger_id: int,
) -> bytes:
    """One 128-byte transfer input record whose id is `packed_id` (16 LE bytes)."""
    return packed_id + _TRANSFER_AFTER_ID.pack(
        debit & UINT64_MASK, debit >> 64, credit & UINT64_MASK, credit >> 64,
        pending_id & UINT64_MASK, pending_id >> 64,
        amount, 0, timeout_s, LEDGER_CNY, code, flags, channel_ledger_id,
        0, 0, 0, 0, 0, 0, 0, 0, 0,
    )  # fmt: skip


def derive_transfer_id(channel_ledger_id: int, key: str, index: int) -> int:
    """The transfer id of item `index` of the operation sent with Idempotency-Key `key`.

    First 16 bytes of SHA-256 over the channel, the key and the index: the
    same request always names the same transfer, on any server, after any
    crash; two channels never collide on the same key.
    """
    return int.from_bytes(derive_transfer_id_packed(channel_ledger_id, key, index), "little")


def derive_transfer_id_packed(channel_ledger_id: int, key: str, index: int) -> bytes:
    """`derive_transfer_id` as the 16 little-endian bytes a transfer record starts with."""
    packed = hashlib.sha256(
        b"tally-transfer\0%d\0%s\0%d" % (channel_ledger_id, key.encode(), index)
    ).digest()[:16]
    assert packed != _ID_ZERO and packed != _ID_MAX_PACKED
    return packed


def transfer_id_prefix(channel_ledger_id: int, key: str) -> bytes:
    """What SHA-256 hashes before the item's decimal index (see `derive_transfer_id`)."""
    return b"tally-transfer\0%d\0%s\0" % (channel_ledger_id, key.encode())


def derive_transfer_ids_packed(channel_ledger_id: int, key: str, count: int) -> list[bytes]:
    """The 16-byte little-endian ids of items 0..count-1 (the batch route's fast path)."""
    prefix = hashlib.sha256(transfer_id_prefix(channel_ledger_id, key))
    ids = []
    for index in range(count):
        hasher = prefix.copy()
        hasher.update(b"%d" % index)
        ids.append(hasher.digest()[:16])
    return ids


def date_of_day(day: int) -> str:
    return (EPOCH_DATE + datetime.timedelta(days=day)).isoformat()


def money_name(code: int) -> str:
    try:
        return TransferCode(code).name.lower()
    except ValueError:
        return str(code)


def rfc3339(ns: int) -> str:
    return (
        datetime.datetime.fromtimestamp(ns / NS_PER_S, datetime.UTC)
        .isoformat()
        .replace("+00:00", "Z")
    )


_HOLD_STATES = {
    PendingState.PENDING: "pending",
    PendingState.POSTED: "captured",
    PendingState.VOIDED: "voided",
    PendingState.EXPIRED: "expired",
}


def transfer_view(raw: bytes) -> dict[str, Any]:
    """The read model of one logged transfer (plain data: every adapter renders it)."""
    f = transfer_record(raw)
    if f.flags & TransferFlags.PENDING:
        kind = "hold"
    elif f.flags & TransferFlags.POST_PENDING:
        kind = "capture"
    elif f.flags & TransferFlags.VOID_PENDING:
        kind = "void"
    elif f.code == TransferCode.REVERSAL:
        kind = "reversal"
    else:
        kind = "single"
    if f.result != R.OK:
        state = "failed"
    elif kind == "hold":
        state = _HOLD_STATES.get(PendingState(f.state), "pending")
    else:
        state = "posted"
    pending_id = f.pending_id
    return {
        "transfer_id": f"{f.transfer_id:032x}",
        "kind": kind,
        "state": state,
        "result": {"code": f.result, "name": R(f.result).name.lower()},
        "debit_account_id": str(f.debit_account_id),
        "credit_account_id": str(f.credit_account_id),
        "amount_minor": f.amount,
        "amount_posted_minor": f.amount_posted,
        "amount_reversed_minor": f.amount_reversed,
        "pending_id": f"{pending_id:032x}" if pending_id else None,
        "code": money_name(f.code),
        "channel_id": f.channel,
        "timeout_s": f.timeout_s,
        "timestamp_ns": f.timestamp,
        "business_day": date_of_day(f.business_day),
        "user_data": f.user_data,
    }
