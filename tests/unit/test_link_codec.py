"""The core link's typed codec (core/link/codec.py) and its service calls
(core/link/calls.py): the services' own commands and results travel exactly, and a
body that is not of the declared types is a protocol error, never a half-read command."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import orjson
import pytest

from channels.iso8583 import services
from core.link.calls import Call, CallTable
from core.link.codec import decode, decode_as, encode
from core.link.frames import FrameError
from core.services.commands import Caller, Consent, IssueToken, Movement, Proof
from core.services.results import AccountRead, Posted, TokenIssued

CALLER = Caller("atm", "atm", 7, "", "")
TRANSFER_ID = (1 << 127) + 12345  # transfer ids are 128 bits: beyond JSON's integers


def test_the_services_commands_and_results_travel_exactly() -> None:
    values: list[tuple[Any, Any]] = [
        (
            Movement,
            Movement(CALLER, "ATM1|000001|1207", 6235010000000000012, 1_000, Consent("token")),
        ),
        (
            Movement,
            Movement(
                CALLER,
                "k",
                TRANSFER_ID,
                None,
                proof=Proof(token="t"),
                beneficiary={"bank_code": "102", "name": "张三"},
            ),
        ),
        (
            Posted,
            Posted(
                bytes(range(16)),
                "cash_withdrawal",
                1,
                2,
                3,
                0,
                0,
                0,
                0,
                "atm",
                1_796_000_000_000_000_000,
                False,
                "",
                0,
                "",
            ),
        ),
        (
            AccountRead,
            AccountRead(
                "6235",
                "class_i",
                "open",
                "CNY",
                10,
                0,
                0,
                None,
                True,
                False,
                "2026-12-07",
                {"daily": {"left": 5}},
            ),
        ),
        (TokenIssued, TokenIssued("t0k", 6235, 300, 1_796_000_300_000_000_000)),
        (IssueToken, IssueToken(CALLER, 6235, "135790")),
        (tuple[bytes, str] | None, (b"\x01" * 16, "ABCDEF")),
        (tuple[bytes, str] | None, None),
        (dict[str, bytes], {"pin": b"\x02" * 16}),
        (int, TRANSFER_ID),
        (int, -5),
        (bool, True),
        (type(None), None),
    ]
    for expected, value in values:
        assert decode(encode(value), expected, "value") == value, value


@pytest.mark.parametrize(
    ("expected", "raw", "reason"),
    [
        (int, True, "not an integer"),  # a bool is not an int
        (int, "12", "not an integer"),
        (int, "0x10", "not an integer"),  # a number JSON holds must come as one
        (int, "0xzz" + "0" * 20, "not an integer"),
        (int, 1.5, "not an integer"),
        (str, 5, "not a string"),
        (bool, 1, "not a boolean"),
        (bytes, "not hex", "not hex bytes"),
        (Caller, ["atm", "atm", 7, ""], "not a Caller (5 fields)"),
        (Caller, {"name": "atm"}, "not a Caller"),
        (
            Movement,
            ["atm", *orjson.loads(encode(Movement(CALLER, "k", 1, 1)))[1:]],
            "value.caller: not a Caller",
        ),
        (Consent | None, "token", "not Consent or NoneType"),
        (dict[str, bytes], {"pin": 5}, "value.pin: not hex bytes"),
        (tuple[bytes, str], ["00"], "not an array of 2"),
    ],
)
def test_a_value_of_another_type_is_a_frame_error(expected: Any, raw: Any, reason: str) -> None:
    with pytest.raises(FrameError, match=re.escape(reason)):
        decode_as(expected, raw, "value")


def test_a_type_without_a_codec_is_a_defect_found_at_once() -> None:
    with pytest.raises(TypeError, match="no codec"):
        decode_as(set[int], [], "value")


def test_a_call_table_runs_only_its_calls_with_arguments_of_their_types() -> None:
    async def transfer_id(ledger_id: int, key: str) -> int:
        return ledger_id

    def over_rate(channel: str) -> bool:
        return False

    table = CallTable([(services.TRANSFER_ID, transfer_id), (services.OVER_RATE, over_rate)])
    call, implementation, arguments = table.decode(services.TRANSFER_ID.encode((7, "k")))
    assert (call, implementation, arguments) == (services.TRANSFER_ID, transfer_id, (7, "k"))
    assert table.inline == {services.OVER_RATE.name}  # a plain function: run inline
    for body, reason in [
        (b"\x00", "not JSON"),
        (b"{}", "not [name, argument, ...]"),
        (b"[]", "not [name, argument, ...]"),
        (orjson.dumps(["payments.cash_withdrawal", None]), "unknown call"),
        (orjson.dumps(["iso8583.transfer_id", 7]), "1 arguments, not 2"),
        (orjson.dumps(["iso8583.transfer_id", "7", "k"]), "argument 0: not an integer"),
        (orjson.dumps(["iso8583.transfer_id", 7, None]), "argument 1: not a string"),
    ]:
        with pytest.raises(FrameError, match=re.escape(reason)):
            table.decode(body)


def test_every_terminal_call_has_a_codec_and_a_distinct_name() -> None:
    """Each call of the front-ends' ISO 8583 adapter can be read and written: a type
    without a codec would fail here, not at a terminal."""
    calls = [value for value in vars(services).values() if isinstance(value, Call)]
    assert len(calls) == 13 and len({call.name for call in calls}) == len(calls)
    for call in calls:
        for expected in (*call.arguments, call.result):
            with contextlib.suppress(FrameError):  # a type without a codec: TypeError
                decode_as(expected, object(), "probe")
