"""A request's whole body from the ASGI `receive` channel, under a cap: one reading for
the core's app, the front-ends and the console (each words the refusal its own way)."""

from __future__ import annotations

from typing import Any


class BodyTooLarge(Exception):
    """The body (or its declared Content-Length) is over the cap: nothing more is read."""


class Disconnected(Exception):
    """The client went away before the body was whole."""


async def read_body(
    headers: dict[bytes, bytes], receive: Any, cap: int, message: dict[str, Any] | None = None
) -> bytes:
    """The whole body, at most `cap` bytes (`message`: the first one, if received
    already). A Content-Length over the cap, or not a number, is refused before reading."""
    declared = headers.get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > cap):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        if message is None:
            message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > cap:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
