"""The ISO 8583 codec and framing (channels/iso8583/spec.py, framing.py).

What is proved here: every message type of the profile (0100/0110, 0200/0210
for each processing code, 0400/0410, 0800/0810) builds and parses back to the
same dict and the same bytes; the hand-written codec agrees byte for byte with
pyiso8583 reading the same `SPEC` (its reference twin), on the fixed messages
and on random ones; anything outside the profile is a FormatError that still
names the MTI, STAN and terminal when they were readable, and no byte string
makes `parse` raise anything else; signing puts the MAC last; framing splits
a stream into messages and tells a clean end from a cut one.
"""

from __future__ import annotations

import contextlib

import anyio
import iso8583
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import given
from hypothesis import strategies as st

from channels.iso8583 import keys, spec
from channels.iso8583.framing import FrameDecoder, FramingError, frame, read_frame
from channels.iso8583.spec import FormatError, Message

MAC_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PAN = "6222020000000000018"
HEADER: Message = {
    "2": PAN,
    "4": "000000010000",
    "7": "1207103000",
    "11": "000123",
    "12": "103000",
    "13": "1207",
    "32": "00010000",
    "37": "120710000123",
    "41": "ATM00001",
    "42": "ATM000010000000",
    "49": "156",
}
ECHOED = ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49")


def request(mti: str, processing: str, **extra: str | bytes) -> Message:
    message: Message = {
        "t": mti,
        "3": processing,
        **HEADER,
        "18": "6011",
        "22": "051",
        "25": "02",
        "52": bytes.fromhex("C967C8198151A458"),
        "53": "2600000000000000",
        **extra,
    }
    return message


def response(of: Message, code: str = "00", **extra: str | bytes) -> Message:
    message: Message = {"t": spec.response_mti(str(of["t"]))}
    message.update({key: of[key] for key in ECHOED if key in of})
    message["39"] = code
    message.update(extra)
    return message


BALANCE = spec.additional_amounts_field(
    [
        spec.AdditionalAmount("00", spec.AMOUNT_TYPE_LEDGER_BALANCE, "156", 1_234_567),
        spec.AdditionalAmount("00", spec.AMOUNT_TYPE_AVAILABLE_BALANCE, "156", -500),
    ]
)
ORIGINAL = spec.OriginalData("0200", "000123", "1207103000", "00010000", "").field()
WITHDRAWAL = request("0200", "010000")
PAIRS: dict[str, tuple[Message, Message]] = {
    "0100 authorization": (
        request("0100", "000000"),
        response(request("0100", "000000"), **{"38": "A12345"}),
    ),
    "0200 cash withdrawal": (WITHDRAWAL, response(WITHDRAWAL, **{"38": "A12345", "54": BALANCE})),
    "0200 purchase": (
        request("0200", "000000", **{"42": "POS000010000000"}),
        response(request("0200", "000000"), **{"38": "000001"}),
    ),
    "0200 balance enquiry": (
        request("0200", "310000"),
        response(request("0200", "310000"), **{"54": BALANCE}),
    ),
    "0200 transfer": (
        request("0200", "400000", **{"102": PAN, "103": "6222020000000000026"}),
        response(request("0200", "400000"), **{"38": "A12346"}),
    ),
    "0400 reversal": (
        request("0400", "010000", **{"90": ORIGINAL}),
        response(request("0400", "010000"), **{"90": ORIGINAL}),
    ),
    "0800 sign-on": (
        {
            "t": "0800",
            "7": "1207103000",
            "11": "000124",
            "41": "ATM00001",
            "70": spec.NETWORK_SIGN_ON,
        },
        {
            "t": "0810",
            "7": "1207103000",
            "11": "000124",
            "41": "ATM00001",
            "39": "00",
            "70": spec.NETWORK_SIGN_ON,
        },
    ),
}
MESSAGES = [message for pair in PAIRS.values() for message in pair]


def as_pyiso8583(message: Message) -> dict[str, str]:
    """A message as pyiso8583 holds it: binary fields as upper-case hex."""
    return {
        key: value.hex().upper() if isinstance(value, bytes) else value
        for key, value in message.items()
    }


def signed(message: Message) -> bytes:
    return spec.build_signed(message, lambda data: keys.mac(data, MAC_KEY))


@pytest.mark.parametrize("name", list(PAIRS))
def test_every_message_type_round_trips(name: str) -> None:
    """A request and its response, signed, parse back to the same fields and rebuild to the
    same bytes; the MAC is field 128 exactly when a field above 64 is present."""
    for message in PAIRS[name]:
        raw = signed(message)
        parsed = spec.parse(raw)
        mac_field = "128" if any(int(key) > 64 for key in message if key != "t") else "64"
        assert spec.mac_field(message) == mac_field
        assert parsed == {**message, mac_field: parsed[mac_field]}
        assert spec.build(parsed) == raw
        code = spec.message_mac(parsed)
        assert code is not None and keys.verify(spec.mac_data(raw), code, MAC_KEY)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: str(message["t"]))
def test_agrees_with_pyiso8583(message: Message) -> None:
    """pyiso8583 decodes our bytes to the same fields, and encodes its dict to our bytes."""
    raw = signed(message)
    decoded, _ = iso8583.decode(raw, spec.SPEC)
    decoded.pop("p")
    decoded.pop("1", None)
    assert decoded == as_pyiso8583(spec.parse(raw))
    encoded, _ = iso8583.encode(dict(decoded), spec.SPEC)
    assert bytes(encoded) == raw


def text(kind: str, size: int) -> st.SearchStrategy[str]:
    alphabet = {"n": "0123456789", "an": "0123456789AZaz ", "ans": "0AZaz !~:/-"}[kind]
    return st.text(alphabet, min_size=size, max_size=size)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """A random message of the profile: any subset of its fields, valid values."""
    numbers = draw(st.sets(st.sampled_from(sorted(spec.FIELDS)), max_size=12))
    if 64 in numbers and any(number > 64 for number in numbers):
        numbers.discard(64)
    message: Message = {"t": draw(text("n", 4))}
    for number in sorted(numbers):
        field = spec.FIELDS[number]
        size = (
            field.size
            if not field.prefix_digits
            else draw(st.integers(1 if field.kind == "n" else 0, field.size))
        )
        if field.kind == "b":
            message[str(number)] = draw(st.binary(min_size=size, max_size=size))
        else:
            message[str(number)] = draw(text(field.kind, size))
    return message


@given(messages())
def test_random_messages_round_trip_like_pyiso8583(message: Message) -> None:
    """Any valid message: build then parse gives it back, and pyiso8583 agrees both ways."""
    raw = spec.build(message)
    assert spec.parse(raw) == message
    decoded, _ = iso8583.decode(raw, spec.SPEC)
    decoded.pop("p")
    decoded.pop("1", None)
    assert decoded == as_pyiso8583(message)
    assert bytes(iso8583.encode(as_pyiso8583(message), spec.SPEC)[0]) == raw


@given(messages(), st.data())
def test_damaged_messages_raise_only_format_errors(message: Message, data: st.DataObject) -> None:
    """Cutting, extending or overwriting bytes of a valid message gives a FormatError or a
    message that builds back to the same bytes: never another exception."""
    raw = bytearray(spec.build(message))
    action = data.draw(st.sampled_from(["cut", "extend", "overwrite"]))
    if action == "cut":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    elif action == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=20))
    else:
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        parsed = spec.parse(bytes(raw))
    except FormatError as error:
        assert error.field and error.reason
        return
    assert spec.build(parsed) == bytes(raw)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_format_errors(raw: bytes) -> None:
    """Garbage from a socket is a FormatError (or, by chance, a message), nothing else."""
    with contextlib.suppress(FormatError):
        spec.parse(raw)


def withdrawal_bytes() -> bytes:
    return spec.build(WITHDRAWAL)


def test_format_errors_name_what_could_be_read() -> None:
    """A fault after fields 11 and 41 keeps the MTI, STAN and terminal; one before keeps
    only what precedes it; the field at fault is named."""
    raw = withdrawal_bytes()
    trailing = raw + b"X"
    with pytest.raises(FormatError) as caught:
        spec.parse(trailing)
    assert (caught.value.mti, caught.value.stan, caught.value.terminal) == (
        "0200",
        "000123",
        "ATM00001",
    )
    # Field 3 with a letter: only the MTI and field 2 precede it.
    position = raw.index(b"010000")
    damaged = raw[:position] + b"01A000" + raw[position + 6 :]
    with pytest.raises(FormatError) as caught:
        spec.parse(damaged)
    assert caught.value.field == "3"
    assert (caught.value.mti, caught.value.stan, caught.value.terminal) == ("0200", None, None)
    assert caught.value.fields == {"t": "0200", "2": PAN}


def set_bit(raw: bytes, number: int) -> bytes:
    bitmap = bytearray(raw[4:12])
    bitmap[(number - 1) // 8] |= 0x80 >> ((number - 1) % 8)
    return raw[:4] + bytes(bitmap) + raw[12:]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"0200", "t"),
        (b"02X0" + bytes(8), "t"),
        (b"0200\x80" + bytes(7) + b"\x00", "1"),  # secondary bitmap announced, not there
        (b"0200\x20" + bytes(7) + b"1A0000", "3"),  # a letter in n6
        (b"0200\x40" + bytes(7) + b"2", "2"),  # a truncated LL prefix
        (b"0200\x40" + bytes(7) + b"20" + b"1" * 20, "2"),  # PAN over 19
        (b"0200\x40" + bytes(7) + b"19" + b"1" * 10, "2"),  # message ends inside the PAN
        (b"0200\x20" + bytes(7) + b"0100001", "t"),  # a byte after the last field
        (b"0200\x00\x00\x00\x00\x20" + bytes(3) + b"1" * 37, "35"),  # track 2: not in the profile
        (b"0200\x80" + bytes(7) + b"\x80" + bytes(7), "65"),  # a tertiary bitmap
        (b"0200\x80" + bytes(6) + b"\x01" + bytes(7) + b"\x01" + bytes(16), "64"),  # 64 and 128
        (b"0200\x00\x00\x00\x00\x00\x80" + bytes(2) + b"ATM0000\x01", "41"),  # control char
    ],
)
def test_format_errors(raw: bytes, field: str) -> None:
    """Each kind of malformed message is a FormatError naming the field at fault."""
    with pytest.raises(FormatError) as caught:
        spec.parse(raw)
    assert caught.value.field == field, caught.value


def test_an_unknown_field_still_yields_the_fields_before_it() -> None:
    """A field outside the profile stops the parse there, after reading what precedes it."""
    raw = set_bit(spec.build({"t": "0200", "3": "010000", "11": "000001"}), 35)
    with pytest.raises(FormatError) as caught:
        spec.parse(raw)
    assert caught.value.field == "35"
    assert caught.value.fields == {"t": "0200", "3": "010000", "11": "000001"}


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"t": "200"}, "t"),
        ({"t": "0200", "35": "1"}, "35"),
        ({"t": "0200", "1": "00"}, "1"),
        ({"t": "0200", "3": "01000"}, "3"),
        ({"t": "0200", "3": 10000}, "3"),
        ({"t": "0200", "3": "01000a"}, "3"),
        ({"t": "0200", "2": "1" * 20}, "2"),
        ({"t": "0200", "52": "C967C8198151A458"}, "52"),
        ({"t": "0200", "41": "ATM0000é"}, "41"),
        ({"t": "0200", "64": bytes(8), "70": "001"}, "64"),
    ],
)
def test_build_refuses_what_parse_would(message: dict[str, object], field: str) -> None:
    """build checks values like parse: a bad dict is refused, naming the field."""
    with pytest.raises(FormatError) as caught:
        spec.build(message)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_build_signed_replaces_any_mac_and_keeps_the_dict() -> None:
    """build_signed puts the MAC in the right field, replaces a stale one, leaves the dict."""
    message = {**WITHDRAWAL, "64": b"stale!!!"}
    before = dict(message)
    raw = signed(message)
    assert message == before
    assert raw[-8:] == keys.mac(raw[:-8], MAC_KEY) != b"stale!!!"
    transfer = {**PAIRS["0200 transfer"][0], "64": bytes(8)}
    parsed = spec.parse(signed(transfer))
    assert "64" not in parsed and "128" in parsed


def test_field_helpers() -> None:
    """Field 90, field 54 and the amount and key helpers read back what they write."""
    original = spec.original_data(ORIGINAL)
    assert original == spec.OriginalData(
        "0200", "000123", "1207103000", "00000010000", "00000000000"
    )
    assert original.field() == ORIGINAL and len(ORIGINAL) == 42
    assert original.key("ATM00001") == spec.operation_key("ATM00001", "000123", "1207103000")
    assert spec.operation_key("ATM00001", "000123", "1207103000") == "ATM00001:000123:1207103000"
    amounts = spec.additional_amounts(BALANCE)
    assert [amount.amount_minor for amount in amounts] == [1_234_567, -500]
    assert BALANCE == "0001156C0000012345670002156D000000000500"
    assert spec.amount_field(10_000) == "000000010000"
    assert spec.amount_minor("000000010000") == 10_000
    with pytest.raises(ValueError):
        spec.amount_field(-1)
    with pytest.raises(ValueError):
        spec.amount_field(10**12)
    with pytest.raises(ValueError):
        spec.additional_amounts("0001156X000000000000")
    assert spec.response_mti("0400") == "0410"
    with pytest.raises(KeyError):
        spec.response_mti("0210")


# --- framing ----------------------------------------------------------------------------


def test_frame_prefixes_the_length() -> None:
    """Two bytes, big-endian, the message's length only; empty or oversized refused."""
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(b"x" * 300)[:2] == b"\x01\x2c"
    with pytest.raises(ValueError):
        frame(b"")
    with pytest.raises(ValueError):
        frame(b"x" * 65_536)


async def read_all(chunks: list[bytes], max_size: int = 100) -> list[bytes | None]:
    send, receive = anyio.create_memory_object_stream[bytes](len(chunks) + 1)
    for chunk in chunks:
        await send.send(chunk)
    await send.aclose()
    frames: list[bytes | None] = []
    async with BufferedByteReceiveStream(receive) as stream:
        while True:
            message = await read_frame(stream, max_size)
            frames.append(message)
            if message is None:
                return frames


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_read_frame_splits_any_chunking(anyio_backend: str) -> None:
    """Frames arrive whole whatever the chunks (one byte at a time, several per chunk);
    a clean end between frames is None."""
    data = frame(b"first") + frame(b"second message") + frame(b"3")
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))], [data[:3], data[3:]]):
        assert await read_all(chunks) == [b"first", b"second message", b"3", None]


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00", "inside a length prefix"),
        (frame(b"hello")[:-1], "inside a 5-byte frame"),
        (b"\x00\x00", "zero-length"),
        (frame(b"x" * 101), "over the maximum 100"),
    ],
)
async def test_read_frame_refuses_lost_framing(
    anyio_backend: str, data: bytes, reason: str
) -> None:
    """A cut prefix, a cut frame, a zero length or an oversized one is a FramingError."""
    with pytest.raises(FramingError, match=reason):
        await read_all([frame(b"ok") + data])


def test_frame_decoder_matches_read_frame() -> None:
    """The sans-IO decoder gives the same frames for any chunking, keeps a partial one."""
    data = frame(b"first") + frame(b"second message") + frame(b"3")
    for step in (1, 2, 5, len(data)):
        decoder = FrameDecoder(100)
        frames = []
        for start in range(0, len(data), step):
            frames += decoder.feed(data[start : start + step])
        assert frames == [b"first", b"second message", b"3"] and decoder.pending == 0
    decoder = FrameDecoder(100)
    assert decoder.feed(frame(b"abc")[:-1]) == [] and decoder.pending == 4
    with pytest.raises(FramingError, match="over the maximum"):
        FrameDecoder(100).feed(frame(b"x" * 101))
    with pytest.raises(FramingError, match="zero-length"):
        FrameDecoder(100).feed(b"\x00\x00")
