"""cext/http_fast.pyx and cext/http_auth.pyx against their Python twins (channels/bank.py,
channels/signing.py): same bytes, same 422s, same signature verdicts."""

from __future__ import annotations

import base64
import hashlib
import hmac
from array import array
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cext import http_auth, http_fast
from channels.http import batch as bank
from channels.http import signing
from channels.http.problems import Problem
from channels.http.routes import ROUTES
from channels.http.schema import check_object, quick_check
from core.services import records
from core.services.server_secrets import DEVELOPMENT
from ledger.types import TRANSFER_SIZE, CreateTransferResult

CHANNEL = 5
KEY = "batch-key-1"
IDS = records.TransferIds(DEVELOPMENT.transfer_id_key)

accounts = st.one_of(
    st.integers(1, 10**38 - 1).map(str),
    st.sampled_from(["0", "01", "", "1" * 39, "١٢", "12a", " 1"]),
    st.integers(-5, 5),
    st.none(),
)
amounts = st.one_of(
    st.integers(0, 2**63 - 1),
    st.sampled_from([-1, 2**63, 2**64, 1.5, True, "10", None]),
)
codes = st.one_of(
    st.sampled_from(["transfer", "topup_bound", "cash_deposit"]),
    st.sampled_from(["nope", "", 1, None]),
)
well_formed = st.fixed_dictionaries(
    {
        "debit_account_id": st.integers(1, 10**38 - 1).map(str),
        "credit_account_id": st.integers(1, 10**38 - 1).map(str),
        "amount_minor": st.integers(0, 2**63 - 1),
        "code": st.sampled_from(["transfer", "topup_bound"]),
    }
)
any_item = st.one_of(
    well_formed,
    st.fixed_dictionaries(
        {
            "debit_account_id": accounts,
            "credit_account_id": accounts,
            "amount_minor": amounts,
            "code": codes,
        },
        optional={
            "flags": st.lists(st.sampled_from(["linked", "pending", "bogus"]), max_size=5),
            "pending_id": st.sampled_from(["0" * 31 + "1", "xyz", 7]),
            "timeout_s": st.integers(-1, 2**32),
            "user_data": st.integers(-1, 2**64),
            "extra": st.just(1),
        },
    ),
    st.sampled_from([[], "item", 3, None]),
)


def outcome(function: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", function(*args)
    except Problem as problem:
        return "problem", (problem.status, problem.slug, problem.encode("/x"))


@given(st.binary(max_size=300), st.binary(max_size=64), st.integers(1, 64))
def test_blake2b_matches_hashlib(data: bytes, key: bytes, digest_size: int) -> None:
    """The C keyed BLAKE2b gives hashlib's digest for every length, key and digest size,
    across block boundaries."""
    expected = hashlib.blake2b(data, key=key, digest_size=digest_size).digest()
    assert http_fast.blake2b(data, key, digest_size) == expected


@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=255))
def test_derived_ids_match_the_reference(key: str) -> None:
    """Item i's id written in C is the reference's keyed derivation, for any key length."""
    count = 300
    buffer = bytearray(count * TRANSFER_SIZE)
    http_fast.derive_ids_into(IDS.mac_key, IDS.prefix(CHANNEL, key), count, buffer)
    ids = IDS.packed_many(CHANNEL, key, count)
    assert [bytes(buffer[i * TRANSFER_SIZE : i * TRANSFER_SIZE + 16]) for i in range(count)] == ids
    assert int.from_bytes(ids[7], "little") == IDS.id(CHANNEL, key, 7)


@given(st.lists(any_item, min_size=1, max_size=12))
def test_json_items_pack_like_the_reference(items: list[Any]) -> None:
    """Any list of items: the C loop packs the same bytes, or raises the same first 422."""
    fast = outcome(bank.pack_json_batch, IDS, items, CHANNEL, KEY)
    reference = outcome(bank.pack_json_batch_reference, IDS, items, CHANNEL, KEY)
    assert fast == reference


@given(st.lists(well_formed, min_size=1, max_size=12))
def test_well_formed_items_are_packed(items: list[Any]) -> None:
    """Well-formed items never take the Python path and pack to the reference bytes."""
    assert bank.pack_json_batch(IDS, items, CHANNEL, KEY) == bank.pack_json_batch_reference(
        IDS, items, CHANNEL, KEY
    )


@given(st.lists(st.binary(min_size=128, max_size=128), min_size=1, max_size=6), st.data())
def test_binary_records_stamp_like_the_reference(records: list[bytes], data: Any) -> None:
    """Binary records: same ids and channel written, or the same record refused."""
    cleaned = [
        bytes(16) + record[16:90] + b"\0" + record[91:] if data.draw(st.booleans()) else record
        for record in records
    ]
    raw = b"".join(cleaned)
    assert outcome(bank.stamp_binary_batch, IDS, raw, CHANNEL, KEY) == outcome(
        bank.stamp_binary_batch_reference, IDS, raw, CHANNEL, KEY
    )


@given(
    st.lists(
        st.tuples(
            st.sampled_from([int(code) for code in CreateTransferResult]),
            st.integers(0, 2**64 - 1),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_results_render_like_orjson(rows: list[tuple[int, int]]) -> None:
    """The C renderer writes exactly the bytes orjson writes for the same list of dicts."""
    payload = bank.pack_json_batch(
        IDS,
        [{"debit_account_id": "1", "credit_account_id": "2", "amount_minor": 1, "code": "transfer"}]
        * len(rows),
        CHANNEL,
        KEY,
    )
    codes = bytes(code for code, _ in rows)
    timestamps = array("Q", [stamp for _, stamp in rows])
    fast = bank.render_batch_results(payload, codes, timestamps)
    assert fast == bank.render_batch_results_reference(payload, codes, timestamps)
    assert len(orjson.loads(fast)) == len(rows)


def test_unnamed_result_code_is_refused() -> None:
    """A result code with no name is a defect the renderer reports, not garbage output."""
    names: list[str | None] = [None] * 256
    with pytest.raises(ValueError, match="no name"):
        http_fast.render_results(bytes(TRANSFER_SIZE), b"\x07", array("Q", [1]), names)


@given(
    st.text(
        alphabet='TALLY-HMAC-SHA256 channel="key_id,timestamp=nonce,signature"ab1 ',
        max_size=120,
    )
)
def test_authorization_split_parse_agrees_with_the_regex(value: str) -> None:
    """The regex-free parse of the canonical header accepts exactly what the regex does."""
    canonical = signing._CANONICAL.fullmatch(value)
    expected = (
        signing.Credentials(*canonical.groups())
        if canonical is not None
        else signing.parse_parameters(value)
    )
    assert signing.parse_authorization(value) == expected


def test_canonical_header_parses_and_a_comma_in_a_value_does_not() -> None:
    """The hot path takes the helper's header; a comma inside a value is refused as before."""
    header = (
        'TALLY-HMAC-SHA256 channel="app",key_id="k1",timestamp="123",'
        'nonce="abcdefgh",signature="xyz="'
    )
    assert signing.parse_authorization(header) == signing.Credentials(
        "app", "k1", "123", "abcdefgh", "xyz="
    )
    assert isinstance(signing.parse_authorization(header.replace('"app"', '"a,pp"')), str)


@given(st.binary(max_size=64), st.binary(max_size=300))
def test_signature_verification_matches_hmac(secret: bytes, message: bytes) -> None:
    """verify() (a keyed HMAC copied per request) accepts the one-shot HMAC and nothing else."""
    good = base64.b64encode(hmac.digest(secret, message, "sha256")).decode()
    assert signing.verify(secret, message, good)
    assert not signing.verify(secret, message + b"x", good)
    assert not signing.verify(secret + b"x", message, good)


# --- cext/http_auth.pyx: the signature check against channels/signing.py -------------------

REFERENCE: Callable[..., bool] = signing.verify_request
KERNEL: Callable[..., bool] = http_auth.verify_request
ascii_parts = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
any_parts = st.one_of(ascii_parts, st.text(max_size=20))  # non-ASCII, even lone surrogates


def _signed(secret: bytes, parts: list[str], body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    message = signing.string_to_sign(*parts, digest)  # type: ignore[call-arg]
    return base64.b64encode(hmac.digest(secret, message, "sha256")).decode()


def _both(secret: bytes, parts: list[str], body: bytes, claimed: str) -> bool:
    """The C answer, after checking it is the reference's (or both raise alike)."""
    try:
        expected: bool | type[Exception] = REFERENCE(secret, *parts, body, claimed)
    except UnicodeEncodeError:
        expected = UnicodeEncodeError
    try:
        got: bool | type[Exception] = KERNEL(secret, *parts, body, claimed)
    except UnicodeEncodeError:
        got = UnicodeEncodeError
    assert got == expected
    return got is True


@given(
    st.binary(min_size=1, max_size=130),
    st.lists(any_parts, min_size=9, max_size=9),
    st.binary(max_size=5000),
    st.data(),
)
def test_signature_check_matches_the_reference(
    secret: bytes, parts: list[str], body: bytes, data: Any
) -> None:
    try:
        good = _signed(secret, parts, body)
    except UnicodeEncodeError:  # a part no UTF-8 holds: both refuse the same way
        _both(secret, parts, body, "AAAA")
        return
    assert _both(secret, parts, body, good)
    tampered = data.draw(
        st.one_of(
            st.just(good[:-2] + ("B" if good[-2] != "B" else "C") + "="),  # another digest
            st.just(good.rstrip("=")),  # padding dropped: strict base64 refuses
            st.just(good + "AA=="),  # a longer value
            st.just("é" + good[1:]),  # not ASCII
            st.text(max_size=50),
        )
    )
    _both(secret, parts, body, tampered)
    if body:  # the body is covered: one byte changed fails
        assert not _both(secret, parts, body[:-1] + bytes([body[-1] ^ 1]), good)
    index = data.draw(st.integers(0, 8))  # the actor (8) is covered like every part
    changed = list(parts)
    changed[index] = parts[index] + "x"
    assert not _both(secret, changed, body, good)


def test_signature_check_takes_long_strings_and_rotated_secrets() -> None:
    parts = [
        "counter", "dev-counter-1", "POST", "/v1/" + "p" * 6000, "q=1", "1767225600", "n" * 64,
        "k", 'id="T0001",role="teller"',
    ]  # fmt: skip
    body = b"{}" * 3000
    for secret in (b"s" * 10, b"t" * 64, b"u" * 65, b"v" * 200):  # pads, and a hashed key
        assert _both(secret, parts, body, _signed(secret, parts, body))
    assert not _both(b"w" * 10, parts, body, _signed(b"s" * 10, parts, body))


@given(st.binary(max_size=300))
def test_auth_sha256_matches_hashlib(data: bytes) -> None:
    assert http_auth.sha256(data) == hashlib.sha256(data).digest()


# --- channels/schema.py quick_check: its yes is check_object's yes ----------------------------

QUICK_ROUTES = [route for route in ROUTES if route.body and quick_check(route.body)]
field_values = st.one_of(
    accounts,
    amounts,
    st.integers(-(2**65), 2**65),
    st.sampled_from(["135790", "12\n", "1\n", False, 0.0, [], {}]),
    st.text(max_size=8),
)


def test_quick_checks_cover_the_money_routes() -> None:
    assert {"transfer", "topup", "cash_deposit"} <= {route.operation for route in QUICK_ROUTES}


@given(st.sampled_from(QUICK_ROUTES), st.data())
def test_quick_check_says_yes_only_where_check_object_does(route: Any, data: Any) -> None:
    names = [*route.body, "password", "extra", "timeout_s"]
    value = data.draw(
        st.one_of(
            st.dictionaries(st.sampled_from(names), field_values, max_size=5),
            st.fixed_dictionaries({name: field_values for name in route.body}),
            st.fixed_dictionaries(
                {
                    name: (amounts if spec.kind == "amount" else accounts)
                    for name, spec in route.body.items()
                    if spec.required
                }
            ),
            field_values,
        )
    )
    quick = quick_check(route.body)
    assert quick is not None
    try:
        check_object(value, route.body)
        accepted = True
    except Problem:
        accepted = False
    if quick(value):
        assert accepted, value
    elif (
        accepted
        and isinstance(value, dict)
        and "password" not in value
        and "timeout_s" not in value
        and all(type(item) is not bool for item in value.values())
    ):  # a body of only ids and amounts that check_object takes is taken quickly too
        raise AssertionError(f"quick check refused a plain valid body: {value}")
