"""What the services make of ledger records: transfer ids, read models, dates.

The record layouts are the ledger's: records are decoded through its named
views (`ledger.records.account_view`, `transfer_view`) and packed through its
packers (`pack_transfer_after_id`, `pack_account_input`), never by position
here. Transfer ids are derived here (`TransferIds`, keyed by a server secret):
the same request always names the same transfer, on any server, after any
crash, and nobody without the key can compute it.
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


TRANSFER_ID_BYTES = 16
FINGERPRINT_BYTES = 8
MAC_KEY_BYTES = 32


class TransferIds:
    """Transfer ids and instruction fingerprints, keyed by the server's `transfer_id_key`.

    A transfer's id is the first 16 bytes of keyed BLAKE2b over the channel,
    the Idempotency-Key and the item's index: the same request always names
    the same transfer, on any server and after any crash or restart (the key
    comes from the secrets file), two channels never collide on one key, and
    nobody without the key can compute the id of another channel's hold or
    transfer offline. The key proper is BLAKE2b of the secret (any length, a
    32-byte BLAKE2b key); the C batch kernel (`cext/http_fast.pyx`) derives
    the same ids from `mac_key` and `prefix`.

    Cost: one keyed BLAKE2b per single transfer, a `copy()` of a hasher keyed
    once here (a keyed `blake2b(...)` built per call costs more; measured
    about as fast as the unkeyed SHA-256 it replaces).
    """

    __slots__ = ("_fingerprints", "_ids", "mac_key")

    def __init__(self, secret: bytes) -> None:
        assert len(secret) >= 16, "the transfer-id key is a server secret"
        self.mac_key = hashlib.blake2b(
            secret, digest_size=MAC_KEY_BYTES, person=b"tally-transfer"
        ).digest()
        self._ids = hashlib.blake2b(key=self.mac_key, digest_size=TRANSFER_ID_BYTES)
        self._fingerprints = hashlib.blake2b(key=self.mac_key, digest_size=FINGERPRINT_BYTES)

    def packed(self, channel_ledger_id: int, key: str, index: int) -> bytes:
        """The id of item `index` of the operation sent with Idempotency-Key `key`, as the 16
        little-endian bytes a transfer record starts with."""
        hasher = self._ids.copy()
        hasher.update(b"tally-transfer\0%d\0%s\0%d" % (channel_ledger_id, key.encode(), index))
        packed = hasher.digest()
        assert packed != _ID_ZERO and packed != _ID_MAX_PACKED
        return packed

    def id(self, channel_ledger_id: int, key: str, index: int) -> int:
        """`packed` as the 128-bit integer."""
        return int.from_bytes(self.packed(channel_ledger_id, key, index), "little")

    @staticmethod
    def prefix(channel_ledger_id: int, key: str) -> bytes:
        """What the keyed hash reads before the item's decimal index (see `packed`)."""
        return b"tally-transfer\0%d\0%s\0" % (channel_ledger_id, key.encode())

    def packed_many(self, channel_ledger_id: int, key: str, count: int) -> list[bytes]:
        """The ids of items 0..count-1 (the batch route's reference path)."""
        prefix = self._ids.copy()
        prefix.update(self.prefix(channel_ledger_id, key))
        ids = []
        for index in range(count):
            hasher = prefix.copy()
            hasher.update(b"%d" % index)
            ids.append(hasher.digest())
        return ids

    def fingerprint(self, *fields: str) -> int:
        """A keyed 64-bit fingerprint of an instruction's fields that the transfer record has no
        column for (a beneficiary, a payer): carried in `user_data`, so the ledger's
        idempotency check refuses a reused key whose fields differ
        (EXISTS_WITH_DIFFERENT_USER_DATA) and a reader of the record learns nothing of
        them. Never 0 (0 is "no fields")."""
        hasher = self._fingerprints.copy()
        hasher.update(b"tally-fingerprint")
        for text in fields:
            encoded = text.encode()
            hasher.update(b"\0%d:%s" % (len(encoded), encoded))  # unambiguous whatever the text
        return int.from_bytes(hasher.digest(), "little") or 1


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
