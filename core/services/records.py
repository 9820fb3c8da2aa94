"""What the services make of ledger records: transfer ids, read models, dates.

The record layouts are the ledger's: records are decoded through its named
views (`ledger.records.account_view`, `transfer_view`) and packed through its
packers (`pack_transfer_after_id`, `pack_account_input`), never by position
here. Transfer ids are derived here: the same request always names the same
transfer, on any server, after any crash.
"""

from __future__ import annotations

import datetime
import hashlib

from core.services.results import TransferRead
from ledger.records import transfer_view
from ledger.types import CreateTransferResult, PendingState, TransferCode, TransferFlags

R = CreateTransferResult
NS_PER_S = 1_000_000_000
EPOCH_DATE = datetime.date(2000, 1, 1)
_ID_ZERO = bytes(16)
_ID_MAX_PACKED = b"\xff" * 16


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


def transfer_read(raw: bytes) -> TransferRead:
    """The read model of one logged transfer (every adapter renders it)."""
    f = transfer_view(raw)
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
    return TransferRead(
        f"{f.id:032x}",
        kind,
        state,
        {"code": f.result, "name": R(f.result).name.lower()},
        str(f.debit_account_id),
        str(f.credit_account_id),
        f.amount,
        f.amount_posted,
        f.amount_reversed,
        f"{pending_id:032x}" if pending_id else None,
        money_name(f.code),
        f.channel,
        f.timeout_s,
        f.timestamp,
        date_of_day(f.business_day),
        f.user_data,
    )
