"""Message framing on a terminal connection: a 2-byte big-endian length, then the message.

The length counts the message bytes only (not itself). A zero length or one
over the receiver's `max_size` means framing is lost (nothing after it can be
trusted to start a message): `FramingError`, and the connection is closed.
A clean end of stream between frames is `None`; an end inside a frame is a
`FramingError` (the terminal, not knowing whether the message arrived, will
repeat or reverse it under the same STAN, so nothing is half-applied).

`read_frame` is for anyio servers (a `BufferedByteReceiveStream` keeps what
was read past a frame for the next call); `FrameDecoder` is the same rule
without I/O, for a client that reads large chunks and splits them itself.
"""

from __future__ import annotations

from typing import Final

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from core.errors import TallyError

PREFIX_SIZE: Final = 2
FRAME_SIZE_MAX: Final = 0xFFFF  # what the 2-byte prefix can say


class FramingError(TallyError):
    """The byte stream no longer splits into frames: close the connection, log the reason."""


def frame(payload: bytes) -> bytes:
    """Prefix one message with its length; ValueError if empty or over 65,535 bytes."""
    size = len(payload)
    if not 0 < size <= FRAME_SIZE_MAX:
        raise ValueError(f"a frame holds 1 to {FRAME_SIZE_MAX} bytes, not {size}")
    return size.to_bytes(PREFIX_SIZE, "big") + payload


def _check_size(size: int, max_size: int) -> None:
    if size == 0:
        raise FramingError("zero-length frame")
    if size > max_size:
        raise FramingError(f"frame of {size} bytes over the maximum {max_size}")


async def read_frame(stream: BufferedByteReceiveStream, max_size: int) -> bytes | None:
    """Read the next message from `stream`.

    Returns:
        The message bytes (without the prefix), or None at a clean end of
        stream (the peer closed between two frames).

    Error handling:
        FramingError for a zero length, a length over `max_size`, or an end of
        stream inside a frame. The stream's own errors (closed, broken,
        cancelled) propagate. Timeouts are the caller's (`anyio.fail_after`).
    """
    assert 0 < max_size <= FRAME_SIZE_MAX, max_size
    try:
        prefix = await stream.receive_exactly(PREFIX_SIZE)
    except anyio.IncompleteRead:
        if stream.buffer:
            raise FramingError("end of stream inside a length prefix") from None
        return None
    size = int.from_bytes(prefix, "big")
    _check_size(size, max_size)
    try:
        return await stream.receive_exactly(size)
    except anyio.IncompleteRead:
        raise FramingError(f"end of stream inside a {size}-byte frame") from None


class FrameDecoder:
    """Split a byte stream into messages, without I/O: `feed` chunks, get whole messages."""

    def __init__(self, max_size: int) -> None:
        assert 0 < max_size <= FRAME_SIZE_MAX, max_size
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; return every message now complete (in order). FramingError as above."""
        messages, fault = self.split(data)
        if fault is not None:
            raise fault
        return messages

    def split(self, data: bytes) -> tuple[list[bytes], FramingError | None]:
        """Append `data`: the messages now complete (in order) and the fault that follows
        them, if framing is lost (then nothing more can be read: close the connection).
        For a server, which still answers the messages before a fault."""
        buffer: bytes | bytearray = self._buffer
        if buffer:
            buffer += data
        else:
            buffer = data  # the usual case (whole frames per chunk): no copy
        messages = []
        start = 0
        available = len(buffer)
        max_size = self.max_size
        fault = None
        while available - start >= PREFIX_SIZE:
            size = buffer[start] << 8 | buffer[start + 1]
            if size == 0 or size > max_size:
                try:
                    _check_size(size, max_size)
                except FramingError as error:
                    fault = error
                break
            end = start + PREFIX_SIZE + size
            if end > available:
                break
            messages.append(bytes(buffer[start + PREFIX_SIZE : end]))
            start = end
        if buffer is data:
            self._buffer = bytearray(data[start:]) if start < available else bytearray()
        elif start:
            del self._buffer[:start]
        return messages, fault

    @property
    def pending(self) -> int:
        """Bytes held of an incomplete frame (non-zero at end of stream = cut inside a frame)."""
        return len(self._buffer)
