"""The core link's frames: what travels between a front-end and the core.

A frame is a 16-byte header and a payload:

    magic "TLNK" (4) | version u8 | kind u8 | count u16 | length u32 | crc32 u32

all little-endian; `length` is the payload's size, `count` the messages it holds,
`crc32` (zlib's) covers the header's first 12 bytes and then the payload, so a flipped
bit anywhere is caught. A frame of another version, over the agreed size or with a
wrong checksum is not answered: the reader raises `FrameError` with the reason, and the
side that reads it logs the reason and closes that connection (the other side's
requests in flight then end as unknown, resolved by their operation keys on retry).

Kinds:
- HELLO (front-end -> core, first): the front-end's credentials (`Hello`);
- WELCOME (core -> front-end): accepted, with the core's window and frame size;
- REFUSED (core -> front-end, last): why the connection is closed (credentials);
- REQUESTS (front-end -> core): `count` requests, each `id u32 | op u8 | length u32`
  and its body: the body of a typed command (core/link/ops.py);
- REPLIES (core -> front-end): `count` replies, each `id u32 | status u8 | length u32`
  and its body, in the order they completed (not the order asked).

Many requests ride in one frame: a front-end sends every request that its callers
started while the previous frame was being written in the next one (batching), and does
not wait for replies before sending more (pipelining), up to the core's window.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from anyio.streams.buffered import BufferedByteReceiveStream

MAGIC = b"TLNK"
VERSION = 1
HEADER = struct.Struct("<4sBBHII")
HEADER_SIZE = HEADER.size  # 16
MESSAGE = struct.Struct("<IBI")  # id, op (requests) or status (replies), body length
MESSAGE_SIZE = MESSAGE.size  # 9
PAYLOAD_SIZE_MAX = 1 << 20  # what a frame may carry unless the two sides agree on less
COUNT_MAX = 0xFFFF

HELLO = 1
WELCOME = 2
REFUSED = 3
REQUESTS = 4
REPLIES = 5
KINDS = {HELLO: "hello", WELCOME: "welcome", REFUSED: "refused", REQUESTS: "requests",
         REPLIES: "replies"}  # fmt: skip


class FrameError(Exception):
    """A frame that breaks the protocol: `reason` is logged and the connection closed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Header:
    kind: int
    count: int
    length: int
    crc32: int


def parse_header(raw: bytes, payload_size_max: int) -> Header:
    """The header of a frame, checked (magic, version, kind, size); `FrameError` if not."""
    magic, version, kind, count, length, crc32 = HEADER.unpack(raw)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}: not a core link frame")
    if version != VERSION:
        raise FrameError(f"frame version {version}, this core speaks version {VERSION}")
    if kind not in KINDS:
        raise FrameError(f"unknown frame kind {kind}")
    if length > payload_size_max:
        raise FrameError(f"frame of {length} bytes over the {payload_size_max}-byte limit")
    return Header(kind, count, length, crc32)


def check_payload(raw_header: bytes, header: Header, payload: bytes) -> None:
    """`FrameError` unless the checksum in `header` is that of the header and payload."""
    if zlib.crc32(payload, zlib.crc32(raw_header[:12])) != header.crc32:
        raise FrameError(f"checksum mismatch on a {KINDS[header.kind]} frame")


def encode_frame(kind: int, payload: bytes, count: int = 0) -> bytes:
    """One frame of `kind` around `payload` (of `count` messages)."""
    assert 0 <= count <= COUNT_MAX, count
    head = struct.pack("<4sBBHI", MAGIC, VERSION, kind, count, len(payload))
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def encode_messages(messages: Iterable[tuple[int, int, bytes]]) -> tuple[bytes, int]:
    """The payload of (id, op or status, body) messages and how many there are."""
    parts: list[bytes] = []
    pack = MESSAGE.pack
    for message_id, tag, body in messages:
        parts.append(pack(message_id, tag, len(body)))
        parts.append(body)
    return b"".join(parts), len(parts) // 2


def decode_messages(payload: bytes, count: int) -> list[tuple[int, int, bytes]]:
    """The (id, op or status, body) messages of a payload; `FrameError` unless exactly
    `count` of them fill it."""
    messages: list[tuple[int, int, bytes]] = []
    offset = 0
    size = len(payload)
    unpack = MESSAGE.unpack_from
    view = memoryview(payload)
    for _ in range(count):
        if offset + MESSAGE_SIZE > size:
            raise FrameError(f"frame says {count} messages, holds {len(messages)}")
        message_id, tag, length = unpack(payload, offset)
        offset += MESSAGE_SIZE
        end = offset + length
        if end > size:
            raise FrameError(f"message {message_id} of {length} bytes runs past its frame")
        messages.append((message_id, tag, bytes(view[offset:end])))
        offset = end
    if offset != size:
        raise FrameError(f"{size - offset} bytes after the frame's {count} messages")
    return messages


async def receive_frame(
    reader: BufferedByteReceiveStream, payload_size_max: int
) -> tuple[Header, bytes]:
    """The next whole frame from `reader`, checked; `FrameError` for a bad one, anyio's
    `IncompleteRead` (or `EndOfStream`) when the peer closed."""
    raw = await reader.receive_exactly(HEADER_SIZE)
    header = parse_header(raw, payload_size_max)
    payload = await reader.receive_exactly(header.length) if header.length else b""
    check_payload(raw, header, payload)
    return header, payload


def frames_of(
    kind: int, messages: list[tuple[int, int, bytes]], payload_size_max: int
) -> Iterator[bytes]:
    """`messages` in as few frames of `kind` as the payload and count limits allow."""
    start = 0
    while start < len(messages):
        size = 0
        end = start
        while end < len(messages) and end - start < COUNT_MAX:
            message_size = MESSAGE_SIZE + len(messages[end][2])
            if size + message_size > payload_size_max and end > start:
                break
            size += message_size
            end += 1
        payload, count = encode_messages(messages[start:end])
        assert len(payload) <= payload_size_max, "one message over the frame size"
        yield encode_frame(kind, payload, count)
        start = end
