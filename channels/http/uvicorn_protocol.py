"""uvicorn's httptools protocol with a cap and a deadline on the request head.

uvicorn on httptools (as Tally runs it) has neither: httptools buffers a
header value of any size until it ends, a head may trickle in one byte at a
time for as long as the client likes, and a fresh connection that sends
nothing is never closed (the keep-alive timeout starts only after a
response). hypercorn has both (h11's `max_incomplete_event_size`, its idle
timer until a head is complete). This subclass adds them:

- a fresh connection starts uvicorn's own keep-alive timer, so an idle one is
  closed like an idle kept-alive one;
- a head still incomplete after a read counts that read's bytes; past
  `head_size_max` the connection is answered 431 and closed, and a head not
  complete `head_timeout_s` after it began is answered 408 and closed.

The body's deadline is the app's (channels/http/app.py). Cost per read on the
hot path: an attribute, a dict lookup and a comparison after the parser ran;
nothing is counted or armed while each request arrives in one read.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from channels.http.problems import PROBLEM_CONTENT_TYPE, Problem

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose request heads are bounded in size and in time."""

    head_size_max = 16 * 1024
    head_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_bytes = 0  # bytes read so far of the head still arriving
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        # The previous request's body still arriving: this read may end it and begin the
        # next head, whose share of the read is unknown (pipelining): not counted.
        tail = cycle is not None and cycle.more_body
        super().data_received(data)
        scope = self.scope
        if scope is not None and "method" not in scope:  # a head begun, not complete
            if not tail or self.head_bytes:
                self.head_bytes += len(data)
            if self.head_bytes > self.head_size_max:
                self.refuse(
                    Problem(
                        431,
                        "header-too-large",
                        "The request head is too large",
                        f"at most {self.head_size_max} bytes of request line and headers",
                    )
                )
            elif self.head_timer is None:
                self.head_timer = self.loop.call_later(self.head_timeout_s, self.head_late)
        elif self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
            self.head_bytes = 0

    def head_late(self) -> None:
        self.head_timer = None
        scope = self.scope
        if scope is not None and "method" not in scope and not self.transport.is_closing():
            self.refuse(
                Problem(
                    408,
                    "request-timeout",
                    "The request head did not arrive in time",
                    f"send the request line and headers within {self.head_timeout_s:g} s",
                )
            )

    def refuse(self, problem: Problem) -> None:
        """Answer `problem` and close: the head is never handed to the app."""
        body = problem.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s"
            % (problem.status, _REASONS[problem.status], PROBLEM_CONTENT_TYPE, len(body), body)
        )
        self.transport.close()
        self.scope = None  # type: ignore[assignment]  # nothing more is parsed or counted


def bounded_protocol(head_size_max: int, head_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class for `uvicorn.Config(http=...)` with these limits."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"head_size_max": head_size_max, "head_timeout_s": head_timeout_s},
    )
