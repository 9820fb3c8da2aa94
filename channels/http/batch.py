"""The batch route's codec: JSON items or binary records to packed transfers, and back.

The item loops run in C (cext/http_fast.pyx) unless TALLY_KERNEL=reference asks
for their plain-Python twins (chosen explicitly, never as a fallback on a missing
build). A bad item is a 422 naming its JSON pointer; the packed records go to
`Payments.post_batch`, through `Payments.admit` like every other posting.
"""

from __future__ import annotations

import os
import re
from types import ModuleType
from typing import Any

import orjson

from channels.http.schema import F, check_value, fail
from core.services.records import TransferIds
from ledger.constants import LEDGER_CNY
from ledger.records import TRANSFER_SIZE, pack_transfer_after_id, record_id, stamp_transfer
from ledger.types import CreateTransferResult, TransferCode

http_fast: ModuleType | None = None
if os.environ.get("TALLY_KERNEL", "kernel") != "reference":
    from cext import http_fast

R = CreateTransferResult

_BINARY_ID_DETAIL = (
    "id (bytes 0-15) and channel (byte 90) must be zero: "
    "the server derives them from the Idempotency-Key and the channel"
)
_CODE_OF_NAME = {code.name.lower(): int(code) for code in TransferCode}
_RESULT_NAMES: list[str | None] = [
    R(code).name.lower() if code in R._value2member_map_ else None for code in range(256)
]
_FLAG_OF_NAME = {"linked": 1, "pending": 2, "post_pending": 4, "void_pending": 8}
_BATCH_KEYS = frozenset(
    {
        "debit_account_id",
        "credit_account_id",
        "amount_minor",
        "code",
        "flags",
        "pending_id",
        "timeout_s",
        "user_data",
    }
)
_OPTIONAL_KEYS = ("flags", "pending_id", "timeout_s", "user_data")
_DIGITS = frozenset("0123456789")
_ACCOUNT_RE = re.compile(r"[1-9][0-9]{0,37}")
HEX = frozenset("0123456789abcdef")
INT64_MAX = (1 << 63) - 1


# --- the batch route's item loops: C (cext/http_fast.pyx) and their Python twins -----------


def pack_json_batch(
    ids: TransferIds, transfers: list[Any], channel_ledger_id: int, key: str
) -> bytes:
    """The packed records of a JSON batch, ids derived; a bad item raises its 422."""
    if http_fast is None:
        return pack_json_batch_reference(ids, transfers, channel_ledger_id, key)
    buffer = bytearray(len(transfers) * TRANSFER_SIZE)
    http_fast.pack_json_items(
        transfers, buffer, _CODE_OF_NAME, channel_ledger_id, LEDGER_CNY, _batch_item
    )
    http_fast.derive_ids_into(
        ids.mac_key, ids.prefix(channel_ledger_id, key), len(transfers), buffer
    )
    return bytes(buffer)


def pack_json_batch_reference(
    ids: TransferIds, transfers: list[Any], channel_ledger_id: int, key: str
) -> bytes:
    count = len(transfers)
    packed_ids = ids.packed_many(channel_ledger_id, key, count)
    channel = channel_ledger_id
    buffer = bytearray(count * TRANSFER_SIZE)
    account_re = _ACCOUNT_RE.fullmatch
    codes = _CODE_OF_NAME
    for index, item in enumerate(transfers):
        # Fast path: the four required fields only, all well-formed (the usual item).
        if type(item) is dict and len(item) == 4:
            debit_text = item.get("debit_account_id")
            credit_text = item.get("credit_account_id")
            amount = item.get("amount_minor")
            code_name = item.get("code")
            code = codes.get(code_name) if type(code_name) is str else None
            if (
                type(debit_text) is str
                and type(credit_text) is str
                and type(amount) is int
                and 0 <= amount <= INT64_MAX
                and code is not None
                and account_re(debit_text)
                and account_re(credit_text)
            ):
                debit, credit = int(debit_text), int(credit_text)
                flags = pending = timeout_s = user_data = 0
            else:
                debit, credit, amount, code, flags, pending, timeout_s, user_data = _batch_item(
                    item, index
                )
        else:
            debit, credit, amount, code, flags, pending, timeout_s, user_data = _batch_item(
                item, index
            )
        offset = index * TRANSFER_SIZE
        buffer[offset : offset + TRANSFER_SIZE] = packed_ids[index] + pack_transfer_after_id(
            debit, credit, amount, code, pending, timeout_s, LEDGER_CNY, flags, channel, user_data
        )
    return bytes(buffer)


def stamp_binary_batch(ids: TransferIds, raw: bytes, channel_ledger_id: int, key: str) -> bytes:
    """Client records with the server's ids and channel written in; 422 if a client set them."""
    if http_fast is None:
        return stamp_binary_batch_reference(ids, raw, channel_ledger_id, key)
    buffer = bytearray(raw)
    bad = http_fast.stamp_binary_records(buffer, channel_ledger_id)
    if bad >= 0:
        raise fail(f"/{bad}", _BINARY_ID_DETAIL)
    http_fast.derive_ids_into(
        ids.mac_key, ids.prefix(channel_ledger_id, key), len(raw) // TRANSFER_SIZE, buffer
    )
    return bytes(buffer)


def stamp_binary_batch_reference(
    ids: TransferIds, raw: bytes, channel_ledger_id: int, key: str
) -> bytes:
    count = len(raw) // TRANSFER_SIZE
    buffer = bytearray(raw)
    packed_ids = ids.packed_many(channel_ledger_id, key, count)
    for index in range(count):
        if not stamp_transfer(buffer, index * TRANSFER_SIZE, packed_ids[index], channel_ledger_id):
            raise fail(f"/{index}", _BINARY_ID_DETAIL)
    return bytes(buffer)


def render_batch_results(payload: bytes, codes: bytes, timestamps: Any) -> bytes:
    """The `results` array of the JSON batch answer: one object per posted record."""
    if http_fast is None:
        return render_batch_results_reference(payload, codes, timestamps)
    rendered: bytes = http_fast.render_results(payload, codes, timestamps, _RESULT_NAMES)
    return rendered


def render_batch_results_reference(payload: bytes, codes: bytes, timestamps: Any) -> bytes:
    return orjson.dumps(
        [
            {
                "transfer_id": f"{record_id(payload, index * TRANSFER_SIZE):032x}",
                "code": code,
                "result": R(code).name.lower(),
                "timestamp_ns": timestamps[index],
            }
            for index, code in enumerate(codes)
        ]
    )


def _batch_item(item: Any, index: int) -> tuple[int, int, int, int, int, int, int, int]:
    """One JSON batch item, checked field by field (the hot loop of the JSON batch route)."""
    path = f"/transfers/{index}"
    if type(item) is not dict:
        raise fail(path, "expected an object")
    if not item.keys() <= _BATCH_KEYS:
        unknown = sorted(set(item) - _BATCH_KEYS)[0]
        raise fail(f"{path}/{unknown}", f"unknown field {unknown[:64]!r}")
    try:
        debit_text = item["debit_account_id"]
        credit_text = item["credit_account_id"]
        amount = item["amount_minor"]
        code_name = item["code"]
    except KeyError as missing:
        raise fail(f"{path}/{missing.args[0]}", "missing required field") from None
    debit = _batch_account(debit_text, f"{path}/debit_account_id")
    credit = _batch_account(credit_text, f"{path}/credit_account_id")
    if type(amount) is not int or not 0 <= amount <= INT64_MAX:
        check_value(amount, F("amount", minimum=0), f"{path}/amount_minor")
    code = _CODE_OF_NAME.get(code_name) if type(code_name) is str else None
    if code is None:
        raise fail(f"{path}/code", "expected one of " + ", ".join(_CODE_OF_NAME))
    for name in _OPTIONAL_KEYS:  # optional means "may be left out", never "may be null"
        if name in item and item[name] is None:
            raise fail(f"{path}/{name}", "must not be null (leave the field out instead)")
    flags = 0
    flag_names = item.get("flags")
    if flag_names is not None:
        if type(flag_names) is not list:
            raise fail(f"{path}/flags", "expected an array of flag names")
        if len(flag_names) > len(_FLAG_OF_NAME):
            raise fail(f"{path}/flags", f"at most {len(_FLAG_OF_NAME)} flags")
        for position, name in enumerate(flag_names):
            bit = _FLAG_OF_NAME.get(name) if type(name) is str else None
            if bit is None:
                raise fail(
                    f"{path}/flags/{position}", "expected one of " + ", ".join(_FLAG_OF_NAME)
                )
            flags |= bit
    pending = 0
    pending_text = item.get("pending_id")
    if pending_text is not None:
        if (
            type(pending_text) is not str
            or len(pending_text) != 32
            or not HEX.issuperset(pending_text)
        ):
            raise fail(f"{path}/pending_id", "expected a transfer id: 32 lowercase hex digits")
        pending = int(pending_text, 16)
    timeout_s = item.get("timeout_s", 0)
    if type(timeout_s) is not int or not 0 <= timeout_s <= 0xFFFFFFFF:
        raise fail(f"{path}/timeout_s", "expected an integer 0..4294967295")
    user_data = item.get("user_data", 0)
    if type(user_data) is not int or not 0 <= user_data <= 0xFFFFFFFFFFFFFFFF:
        raise fail(f"{path}/user_data", "expected an integer 0..18446744073709551615")
    return debit, credit, amount, code, flags, pending, timeout_s, user_data


def _batch_account(text: Any, path: str) -> int:
    if (
        type(text) is not str
        or not 1 <= len(text) <= 38
        or text[0] == "0"
        or not _DIGITS.issuperset(text)
    ):
        raise fail(path, "expected an account id: a string of 1-38 digits, not starting with 0")
    return int(text)
