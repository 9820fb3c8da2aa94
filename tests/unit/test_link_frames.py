"""The core link's frames and op bodies (core/link/frames.py, core/link/ops.py).

What is proved here: a frame, a payload of messages and every op body decode to what
was encoded (hypothesis); a header of another magic, version or kind, or over the agreed
size, is a FrameError naming the problem; the checksum catches a flipped bit anywhere in
a frame; a payload whose messages do not fill it exactly (truncated, overlong, fewer or
more than its count) is a FrameError; `frames_of` splits by payload size and by
COUNT_MAX and keeps the order; a TRANSFER body of the wrong types (a bool or a string
for an int), out of range, of the wrong arity or not JSON is a FrameError, never a
command; `receive_frame` reads frames whole whatever the chunking.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from typing import Any

import anyio
import orjson
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from hypothesis import given
from hypothesis import strategies as st

from core.link import frames
from core.link.frames import (
    COUNT_MAX,
    HEADER_SIZE,
    HELLO,
    KINDS,
    MESSAGE_SIZE,
    REPLIES,
    REQUESTS,
    FrameError,
    Header,
    check_payload,
    decode_messages,
    encode_frame,
    encode_messages,
    frames_of,
    parse_header,
    receive_frame,
)
from core.link.ops import (
    I63_MAX,
    U32_MAX,
    Transfer,
    decode_posted,
    decode_refusal,
    decode_transfer,
    encode_posted,
    encode_refusal,
    encode_transfer,
)
from core.services.commands import NO_CONTEXT, Caller, Consent, RiskContext
from core.services.refusals import Code, Refusal
from core.services.results import Posted

LIMIT = frames.PAYLOAD_SIZE_MAX
U32 = st.integers(0, U32_MAX)
I63 = st.integers(0, I63_MAX)
# orjson writes UTF-8 only: a lone surrogate is no string a peer can send.
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
MESSAGES = st.lists(st.tuples(U32, st.integers(0, 255), st.binary(max_size=64)), max_size=40)


def header_bytes(
    kind: int = REQUESTS,
    count: int = 0,
    length: int = 0,
    *,
    magic: bytes = frames.MAGIC,
    version: int = frames.VERSION,
) -> bytes:
    head = struct.pack("<4sBBHI", magic, version, kind, count, length)
    return head + struct.pack("<I", zlib.crc32(head))


def read_whole(frame: bytes, payload_size_max: int = LIMIT) -> tuple[Header, bytes]:
    """What `receive_frame` does with `frame` alone (EOFError: it is cut short)."""
    header = parse_header(frame[:HEADER_SIZE], payload_size_max)
    payload = frame[HEADER_SIZE : HEADER_SIZE + header.length]
    if len(payload) < header.length:
        raise EOFError
    check_payload(frame[:HEADER_SIZE], header, payload)
    return header, payload


# --- frames ------------------------------------------------------------------------------


@given(st.sampled_from(sorted(KINDS)), st.binary(max_size=2048), st.integers(0, COUNT_MAX))
def test_frame_round_trip(kind: int, payload: bytes, count: int) -> None:
    """A frame's header parses back to its kind, count and length, and its checksum holds."""
    frame = encode_frame(kind, payload, count)
    assert len(frame) == HEADER_SIZE + len(payload)
    header, read = read_whole(frame)
    assert (header.kind, header.count, header.length, read) == (kind, count, len(payload), payload)


@given(MESSAGES)
def test_messages_round_trip(messages: list[tuple[int, int, bytes]]) -> None:
    """(id, op or status, body) messages come back the same, in order, with their count."""
    payload, count = encode_messages(messages)
    assert count == len(messages)
    assert len(payload) == sum(MESSAGE_SIZE + len(body) for _, _, body in messages)
    assert decode_messages(payload, count) == messages


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (header_bytes(magic=b"HTTP"), r"bad magic b'HTTP': not a core link frame"),
        (header_bytes(version=2), r"frame version 2, this core speaks version 1"),
        (header_bytes(version=0), r"frame version 0"),
        (header_bytes(kind=0), r"unknown frame kind 0"),
        (header_bytes(kind=6), r"unknown frame kind 6"),
        (header_bytes(length=LIMIT + 1), rf"frame of {LIMIT + 1} bytes over the {LIMIT}-byte"),
        (header_bytes(length=0xFFFFFFFF), r"frame of 4294967295 bytes over the"),
    ],
    ids=["magic", "version-2", "version-0", "kind-0", "kind-6", "size", "size-u32-max"],
)
def test_parse_header_refuses(raw: bytes, reason: str) -> None:
    """A header of another magic, version or kind, or announcing a payload over the
    agreed size, is refused with a reason that names which."""
    with pytest.raises(FrameError, match=reason) as refused:
        parse_header(raw, LIMIT)
    assert refused.value.reason == str(refused.value)


def test_parse_header_size_limit_is_inclusive_and_per_call() -> None:
    """Exactly the agreed size passes; the limit is the one the caller gives (the HELLO's
    is smaller than a REQUESTS frame's)."""
    assert parse_header(header_bytes(length=LIMIT), LIMIT).length == LIMIT
    assert parse_header(header_bytes(HELLO, length=4096), 4096).length == 4096
    with pytest.raises(FrameError, match="frame of 4097 bytes over the 4096-byte limit"):
        parse_header(header_bytes(HELLO, length=4097), 4096)


@given(st.binary(min_size=1, max_size=256), st.integers(0, COUNT_MAX), st.data())
def test_checksum_catches_any_flipped_bit(payload: bytes, count: int, data: st.DataObject) -> None:
    """Flip any one bit of a frame, header or payload: the frame is refused (a FrameError,
    or it is cut short when the bit made its length longer); never read as a good frame."""
    frame = bytearray(encode_frame(REQUESTS, payload, count))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1), label="bit")
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((FrameError, EOFError)):
        read_whole(bytes(frame))


@pytest.mark.parametrize(
    ("offset", "where"), [(6, "count"), (13, "checksum"), (HEADER_SIZE + 3, "payload")]
)
def test_check_payload_names_the_frame(offset: int, where: str) -> None:
    """A flipped bit in the count, the checksum itself or the payload passes the header's
    checks and is caught by the checksum, named as a mismatch on that kind of frame."""
    frame = bytearray(encode_frame(REPLIES, b"some replies", 1))
    frame[offset] ^= 0x10
    header = parse_header(bytes(frame[:HEADER_SIZE]), LIMIT)
    with pytest.raises(FrameError, match="checksum mismatch on a replies frame"):
        check_payload(bytes(frame[:HEADER_SIZE]), header, bytes(frame[HEADER_SIZE:]))


def test_decode_messages_refuses_what_does_not_fill_the_payload() -> None:
    """Fewer messages than the count, a body running past the payload, bytes after the
    last message (or a count too low), and a header cut short: each a FrameError."""
    payload, count = encode_messages([(1, 1, b"abc"), (2, 1, b"defg")])
    assert decode_messages(payload, count) == [(1, 1, b"abc"), (2, 1, b"defg")]
    with pytest.raises(FrameError, match="frame says 3 messages, holds 2"):
        decode_messages(payload, 3)
    with pytest.raises(FrameError, match="message 2 of 4 bytes runs past its frame"):
        decode_messages(payload[:-1], 2)
    with pytest.raises(FrameError, match="13 bytes after the frame's 1 messages"):
        decode_messages(payload, 1)
    with pytest.raises(FrameError, match="1 bytes after the frame's 2 messages"):
        decode_messages(payload + b"\0", 2)
    with pytest.raises(FrameError, match="frame says 2 messages, holds 1"):
        decode_messages(payload[: MESSAGE_SIZE + 3 + MESSAGE_SIZE - 1], 2)
    with pytest.raises(FrameError, match="7 bytes after the frame's 0 messages"):
        decode_messages(b"garbage", 0)
    assert decode_messages(b"", 0) == []


@given(MESSAGES, st.data())
def test_decode_messages_refuses_any_cut(
    messages: list[tuple[int, int, bytes]], data: st.DataObject
) -> None:
    """A payload cut anywhere short of its end never decodes to the count it claims."""
    payload, count = encode_messages(messages)
    if not payload:
        return
    cut = data.draw(st.integers(0, len(payload) - 1), label="cut")
    with pytest.raises(FrameError):
        decode_messages(payload[:cut], count)


def reassemble(stream: list[bytes], limit: int) -> list[tuple[int, int, bytes]]:
    messages: list[tuple[int, int, bytes]] = []
    for frame in stream:
        header, payload = read_whole(frame, limit)
        assert header.kind == REPLIES and 0 < header.count <= COUNT_MAX
        assert header.length <= limit
        messages += decode_messages(payload, header.count)
    return messages


@given(
    st.lists(st.tuples(U32, st.integers(0, 255), st.binary(max_size=300)), max_size=60),
    st.integers(MESSAGE_SIZE + 300, 4096),
)
def test_frames_of_splits_by_size(messages: list[tuple[int, int, bytes]], limit: int) -> None:
    """Messages come out in order in frames none over the payload limit, each as full as
    the next message allowed (so as few frames as a greedy cut makes)."""
    stream = list(frames_of(REPLIES, messages, limit))
    assert reassemble(stream, limit) == messages
    for frame, following in itertools.pairwise(stream):
        first_length = struct.unpack_from("<IBI", following, HEADER_SIZE)[2]
        assert len(frame) - HEADER_SIZE + MESSAGE_SIZE + first_length > limit


def test_frames_of_splits_by_count() -> None:
    """More than COUNT_MAX small messages: a full frame of COUNT_MAX, then the rest."""
    messages = [(index, 0, b"") for index in range(COUNT_MAX + 10)]
    stream = list(frames_of(REPLIES, messages, LIMIT))
    counts = [parse_header(frame[:HEADER_SIZE], LIMIT).count for frame in stream]
    assert counts == [COUNT_MAX, 10]
    assert reassemble(stream, LIMIT) == messages


def test_frames_of_edges() -> None:
    """No messages, no frame; one message of exactly the limit fits one frame alone."""
    assert list(frames_of(REQUESTS, [], LIMIT)) == []
    exact = [(1, 1, b"x" * (100 - MESSAGE_SIZE)), (2, 1, b"y")]
    stream = list(frames_of(REQUESTS, exact, 100))
    assert [len(frame) - HEADER_SIZE for frame in stream] == [100, MESSAGE_SIZE + 1]


async def read_all(chunks: list[bytes], limit: int = LIMIT) -> list[tuple[Header, bytes]]:
    send, receive = anyio.create_memory_object_stream[bytes](len(chunks) + 1)
    for chunk in chunks:
        await send.send(chunk)
    await send.aclose()
    read: list[tuple[Header, bytes]] = []
    async with BufferedByteReceiveStream(receive) as reader:
        while True:
            try:
                read.append(await receive_frame(reader, limit))
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return read


@given(st.lists(st.binary(max_size=50), max_size=5), st.lists(st.integers(1, 40), max_size=20))
def test_receive_frame_reads_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    """Frames arrive whole and in order whatever the chunks the stream delivers them in."""
    data = b"".join(encode_frame(REQUESTS, payload, 1) for payload in payloads)
    chunks, start = [], 0
    for cut in cuts:
        chunks.append(data[start : start + cut])
        start += cut
    chunks.append(data[start:])
    read = anyio.run(read_all, [chunk for chunk in chunks if chunk])
    assert [payload for _, payload in read] == payloads


def test_receive_frame_refuses_before_reading_an_oversize_payload() -> None:
    """An over-size header is refused from its 16 bytes (the payload is never awaited);
    a bad checksum after the payload is read."""
    with pytest.raises(FrameError, match="over the 64-byte limit"):
        anyio.run(read_all, [header_bytes(length=65)], 64)
    bad = bytearray(encode_frame(REQUESTS, b"payload", 1))
    bad[-1] ^= 1
    with pytest.raises(FrameError, match="checksum mismatch on a requests frame"):
        anyio.run(read_all, [bytes(bad)])


# --- op bodies ---------------------------------------------------------------------------

# A transfer whose every field has a value of its own, so that the tests find each field's
# place in the body by its value (the body is positional; its order is ops.py's).
SAMPLE = Transfer(
    Caller("chan", "kind", 7, "actor", "role"), "key-1", 1111, 2222, 333,
    Consent("tok", "pw", "sf"), RiskContext("dev", "ip", "loc"), "nonce-1", 4444,
)  # fmt: skip
GOOD: list[Any] = orjson.loads(encode_transfer(SAMPLE))
FIELD = {
    name: GOOD.index(value)
    for name, value in [
        ("name", "chan"), ("kind", "kind"), ("ledger_id", 7), ("actor_id", "actor"),
        ("actor_role", "role"), ("key", "key-1"), ("debit", 1111), ("credit", 2222),
        ("amount_minor", 333), ("token", "tok"), ("password", "pw"), ("second_factor", "sf"),
        ("device", ["dev", "ip", "loc"]), ("nonce", "nonce-1"), ("timestamp_s", 4444),
    ]
}  # fmt: skip
ARITY = len(GOOD)


def body(fields: list[Any]) -> bytes:
    return orjson.dumps(fields)


def with_field(name: str, value: Any) -> bytes:
    fields = list(GOOD)
    fields[FIELD[name]] = value
    return body(fields)


def test_the_sample_body_is_a_command() -> None:
    """The body the refusals below start from decodes, each field where the test looks
    for it (else the refusals would prove nothing)."""
    assert len(set(FIELD.values())) == ARITY
    decoded = decode_transfer(body(GOOD), {})
    for name in Transfer.__slots__:
        assert getattr(decoded, name) == getattr(SAMPLE, name), name


@given(
    st.builds(
        Transfer,
        caller=st.builds(Caller, TEXT, TEXT, U32, TEXT, TEXT),
        key=TEXT,
        debit=I63,
        credit=I63,
        amount_minor=I63,
        consent=st.builds(Consent, TEXT, st.none() | TEXT, TEXT),
        context=st.just(NO_CONTEXT) | st.builds(RiskContext, TEXT, TEXT, TEXT),
        nonce=TEXT,
        timestamp_s=I63,
    )
)
def test_transfer_round_trip(command: Transfer) -> None:
    """Every field of a transfer, the caller, consent and risk context included, comes
    back as it was sent (no context stays the shared NO_CONTEXT)."""
    decoded = decode_transfer(encode_transfer(command), {})
    for name in Transfer.__slots__:
        assert getattr(decoded, name) == getattr(command, name), name
    if command.context is NO_CONTEXT:
        assert decoded.context is NO_CONTEXT


def test_decode_transfer_shares_one_caller_per_channel_and_actor() -> None:
    """Two requests of the same channel and actor get the same Caller object (the
    server's table), another actor a new one."""
    callers: dict[tuple[Any, ...], Caller] = {}
    first = decode_transfer(body(GOOD), callers)
    second = decode_transfer(with_field("key", "key-2"), callers)
    teller = decode_transfer(with_field("actor_id", "T0001"), callers)
    assert first.caller is second.caller and first.caller == SAMPLE.caller
    assert teller.caller is not first.caller and teller.caller.actor_id == "T0001"
    assert len(callers) == 2


HUGE = body(GOOD).replace(b",333,", b",18446744073709551616,")  # orjson: a float


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (with_field("amount_minor", True), "wrong types"),  # a bool is not an int
        (with_field("ledger_id", False), "wrong types"),
        (with_field("debit", "6235010000000000001"), "wrong types"),
        (with_field("amount_minor", "333"), "wrong types"),
        (with_field("amount_minor", 333.0), "wrong types"),
        (HUGE, "wrong types"),
        (with_field("timestamp_s", True), "wrong types"),
        (with_field("name", None), "wrong types"),
        (with_field("key", 5), "wrong types"),
        (with_field("token", None), "wrong types"),  # a token is a string, "" for none
        (with_field("password", 135790), "wrong types"),
        (with_field("second_factor", None), "wrong types"),
        (with_field("nonce", None), "wrong types"),
        (with_field("amount_minor", -1), "out of range"),
        (with_field("amount_minor", I63_MAX + 1), "out of range"),
        (with_field("debit", -1), "out of range"),
        (with_field("credit", I63_MAX + 1), "out of range"),
        (with_field("ledger_id", U32_MAX + 1), "out of range"),
        (with_field("ledger_id", -1), "out of range"),
        (with_field("timestamp_s", -1), "out of range"),
        (with_field("device", ["phone", "10.0.0.1"]), "device"),
        (with_field("device", ["phone", "10.0.0.1", 3]), "device"),
        (with_field("device", "phone"), "device"),
        (body(GOOD[:-1]), f"not an array of {ARITY} fields"),
        (body([*GOOD, None]), f"not an array of {ARITY} fields"),
        (body([]), f"not an array of {ARITY} fields"),
        (orjson.dumps(dict(enumerate(GOOD)), option=orjson.OPT_NON_STR_KEYS), "not an array"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (body(GOOD)[:-1], "not JSON"),
        (b"[1,2,]", "not JSON"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_decode_transfer_refuses(raw: bytes, reason: str) -> None:
    """A TRANSFER body that is not exactly the command (types exact, values in the
    ledger's ranges, every field there, JSON) is a FrameError naming the problem, never
    a command (and no caller is remembered for it)."""
    callers: dict[tuple[Any, ...], Caller] = {}
    with pytest.raises(FrameError, match=reason):
        decode_transfer(raw, callers)
    assert callers == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [("amount_minor", 0), ("amount_minor", I63_MAX), ("ledger_id", 0), ("ledger_id", U32_MAX),
     ("debit", 0), ("credit", I63_MAX), ("password", None), ("device", None)],
)  # fmt: skip
def test_decode_transfer_takes_the_range_ends(name: str, value: Any) -> None:
    """The ends of the ranges, no password and no device are commands."""
    decoded = decode_transfer(with_field(name, value), {})
    read = {
        "amount_minor": decoded.amount_minor, "ledger_id": decoded.caller.ledger_id,
        "debit": decoded.debit, "credit": decoded.credit,
        "password": decoded.consent.password,
        "device": None if decoded.context is NO_CONTEXT else decoded.context,
    }  # fmt: skip
    assert read[name] == value


POSTED = st.builds(
    Posted,
    transfer_id_packed=st.binary(min_size=16, max_size=16),
    operation=TEXT,
    debit=I63,
    credit=I63,
    amount_minor=I63,
    code=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFFFF),
    pending_id=st.integers(0, (1 << 64) - 1),
    timeout_s=U32,
    channel=TEXT,
    timestamp_ns=I63,
    replayed=st.booleans(),
    risk_hold=st.sampled_from(["", "delayed", "review"]),
    release_at_ns=I63,
    decision_id=TEXT,
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-I63_MAX, I63_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(POSTED)
def test_posted_round_trip(posted: Posted) -> None:
    """A Posted reply's body reads back equal, the packed transfer id byte for byte."""
    assert decode_posted(encode_posted(posted)) == posted


@given(
    st.builds(
        Refusal,
        code=st.sampled_from(list(Code)),
        detail=TEXT,
        ledger_code=st.integers(0, 0xFFFF),
        replayed=st.booleans(),
        extras=st.dictionaries(TEXT, JSON_VALUES, max_size=4),
    )
)
def test_refusal_round_trip(refusal: Refusal) -> None:
    """A refusal travels as the same value an in-process adapter catches: code (as the
    Code enum), detail, ledger code, replayed and extras."""
    decoded = decode_refusal(encode_refusal(refusal))
    assert decoded == refusal
    assert type(decoded.code) is Code


def test_reply_bodies_of_the_wrong_arity_are_refused() -> None:
    """A reply body that is not the array its status says is a FrameError."""
    with pytest.raises(FrameError, match="posted body is not an array of 15 fields"):
        decode_posted(b"[1,2]")
    with pytest.raises(FrameError, match="refusal body is not JSON"):
        decode_refusal(b"{")
    with pytest.raises(FrameError, match="refusal body is not an array of 5 fields"):
        decode_refusal(b'{"code": 22}')
