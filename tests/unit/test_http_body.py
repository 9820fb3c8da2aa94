"""channels/http/body.py: the one body reading of the app, the front-ends and the console."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from channels.http.body import BodyTooLarge, Disconnected, read_body


def receiver(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


def chunk(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


def read(headers: dict[bytes, bytes], cap: int, *messages: dict[str, Any]) -> bytes:
    return anyio.run(read_body, headers, receiver(*messages), cap)


def test_the_whole_body_in_chunks_up_to_the_cap() -> None:
    assert read({}, 6, chunk(b"abc", True), chunk(b"", True), chunk(b"def", False)) == b"abcdef"
    assert read({b"content-length": b"3"}, 3, chunk(b"abc", False)) == b"abc"
    assert read({}, 0, chunk(b"", False)) == b""


def test_over_the_cap_declared_or_sent_is_refused_before_reading_more() -> None:
    for headers in ({b"content-length": b"7"}, {b"content-length": b"-1"},
                    {b"content-length": b"1e3"}):  # fmt: skip
        with pytest.raises(BodyTooLarge):
            read(headers, 6)  # no message: nothing may be received
    with pytest.raises(BodyTooLarge):
        read({}, 6, chunk(b"abcd", True), chunk(b"efg", True))  # the third never read


def test_a_client_gone_mid_body() -> None:
    with pytest.raises(Disconnected):
        read({}, 100, chunk(b"ab", True), {"type": "http.disconnect"})
