"""A front-end's side of the link: one connection to the core, kept up, shared by every
request the front-end serves.

`await client.transfer(command)` answers as `Payments.post` does in-process (a
`Posted`, or `Refused` raised), or raises `LinkUnavailable` (no connection to the
core: nothing was sent, or the connection was lost after sending and the outcome is
unknown, resolved by a retry with the same operation key) or `LinkOverloaded` (the
window is full: nothing was sent). Callers answer both with 503 and Retry-After.

Requests started while a frame is being written leave together in the next frame;
replies come back as they complete. `serve_link_client` keeps the connection: it
reconnects after a loss with a bounded backoff, and while it is down every call fails
at once.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from anyio.abc import ByteStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from core.link.calls import Call, R
from core.link.frames import (
    HELLO,
    KINDS,
    PAYLOAD_SIZE_MAX,
    REFUSED,
    REPLIES,
    REQUESTS,
    WELCOME,
    FrameError,
    decode_messages,
    encode_frame,
    frames_of,
    receive_frame,
)
from core.link.ops import (
    CALL,
    FAILED,
    HTTP,
    OK,
    OVERLOADED,
    PROBLEM,
    REFUSAL,
    REGISTRY,
    TRANSFER,
    HttpRequest,
    HttpResponse,
    Transfer,
    decode_http_response,
    decode_posted,
    decode_problem,
    decode_refusal,
    encode_http_request,
    encode_transfer,
)
from core.services.refusals import Refused
from core.services.results import Posted
from core.signals import Waiter, waiter_factory

logger = logging.getLogger("tally.link")
CLOSED = (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
          anyio.ClosedResourceError, OSError)  # fmt: skip
RETRY_AFTER_S = 1  # what a caller tells its client when the core is out of reach
RECONNECT_S_MIN = 0.05
RECONNECT_S_MAX = 1.0
CONNECT_TIMEOUT_S = 5.0


class LinkUnavailable(Exception):
    """No answer from the core: not connected, or the connection was lost (`unknown`:
    after the request was sent, so it may have been done)."""

    def __init__(self, detail: str, *, unknown: bool = False) -> None:
        super().__init__(detail)
        self.unknown = unknown


class LinkOverloaded(Exception):
    """The connection's window is full (here or at the core): nothing was done."""


class LinkRefused(Exception):
    """The core refused this front-end's credentials (a configuration error)."""


class LinkFailed(Exception):
    """The core hit a defect running the command (logged there)."""


Connect = Callable[[], Awaitable[ByteStream]]


def connect_unix(path: str) -> Connect:
    async def connect() -> ByteStream:
        return await anyio.connect_unix(path)

    return connect


def connect_tls(host: str, port: int, context: ssl.SSLContext) -> Connect:
    async def connect() -> ByteStream:
        return await anyio.connect_tcp(
            host, port, ssl_context=context, tls_standard_compatible=False
        )

    return connect


class _Waiter:
    __slots__ = ("body", "event", "status")

    def __init__(self, event: Waiter) -> None:
        self.event = event
        self.status = -1  # -1: the connection was lost before the reply
        self.body = b""


@dataclass
class _Connection:
    stream: ByteStream
    window: int
    payload_size_max: int
    pending: dict[int, _Waiter]
    outbox: list[tuple[int, int, bytes]]
    wakeup: Waiter
    calls: frozenset[str]  # the service calls the core answers (its WELCOME)


class LinkClient:
    def __init__(
        self, connect: Connect, secret: bytes, name: str, *, window_max: int = 4096
    ) -> None:
        """`connect`: opens a stream to the core (`connect_unix`, `connect_tls`);
        `secret`: the link's shared secret; `name`: this front-end, for the core's log;
        `window_max`: requests in flight at most (also bounded by the core's window)."""
        self.connect = connect
        self.secret = secret
        self.name = name
        self.window_max = window_max
        self._connection: _Connection | None = None
        self._next_id = 0
        # One-shot signals of the running backend (`waiter_factory`: a bare future on
        # asyncio, a third of anyio.Event's cost): one per call, so kept cheap.
        self._new_signal: Callable[[], Waiter] = anyio.Event
        self.connected = anyio.Event()  # set while connected (a new one after a loss)
        self.connections = 0  # made so far (a reconnect counts)

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def transfer(self, command: Transfer) -> Posted:
        status, body = await self.call(TRANSFER, encode_transfer(command))
        if status == OK:
            return decode_posted(body)
        raise _failure(status, body)

    async def http(self, request: HttpRequest) -> HttpResponse:
        """Pass an HTTP request through to the core's app; its response."""
        status, body = await self.call(HTTP, encode_http_request(request))
        if status == OK:
            return decode_http_response(body)
        raise _failure(status, body)

    async def invoke(self, call: Call[R], *arguments: Any) -> R:
        """A service call at the core (core/link/calls.py): its result, as the service
        returns it in-process, or its refusal raised (`Refused`, `ChannelProblem`);
        `LinkFailed` without sending it if the core does not answer that call (a core
        started without what serves it: sending it would be a bad frame)."""
        connection = self._connection
        if connection is not None and call.name not in connection.calls:
            raise LinkFailed(f"the core answers no {call.name} call (not configured there)")
        status, body = await self.call(CALL, call.encode(arguments))
        if status == OK:
            return call.decode_result(body)
        raise _failure(status, body)

    async def registry(self) -> tuple[int, str]:
        """The channel registry in force at the core: (version, TOML text)."""
        status, body = await self.call(REGISTRY, b"")
        if status != OK:
            raise _failure(status, body)
        version, text = orjson.loads(body)
        return int(version), str(text)

    async def call(self, op: int, body: bytes) -> tuple[int, bytes]:
        """Send one request and wait for its reply: (status, body)."""
        connection = self._connection
        if connection is None:
            raise LinkUnavailable("not connected to the core")
        if len(connection.pending) >= connection.window:
            raise LinkOverloaded("this front-end's window to the core is full")
        request_id = self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        waiter = _Waiter(self._new_signal())
        connection.pending[request_id] = waiter
        connection.outbox.append((request_id, op, body))
        connection.wakeup.set()
        try:
            await waiter.event.wait()
        finally:
            connection.pending.pop(request_id, None)
        if waiter.status < 0:
            raise LinkUnavailable("the connection to the core was lost", unknown=True)
        return waiter.status, waiter.body

    async def serve_link_client(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, and reconnect after every loss, until cancelled. Ready (`task_status`)
        at once: calls fail with `LinkUnavailable` until the first connection is up.
        `LinkRefused` (wrong credentials) ends it: retrying would not help."""
        self._new_signal = waiter_factory()
        task_status.started()
        delay_s = RECONNECT_S_MIN
        while True:
            try:
                with anyio.fail_after(CONNECT_TIMEOUT_S):
                    stream = await self.connect()
            except (OSError, TimeoutError) as error:
                logger.debug(_event("link_connect_failed", error=repr(error)))
                await anyio.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_S_MAX)
                continue
            try:
                await self._run(stream)
                delay_s = RECONNECT_S_MIN
            except LinkRefused:
                raise
            except FrameError as error:
                logger.warning(_event("link_frame_refused", peer="core", reason=error.reason))
            except (*CLOSED, TimeoutError):
                pass
            except Exception as error:  # a defect: loud; the front-end reconnects
                logger.error(_event("link_unhandled_exception", error=repr(error)))
            finally:
                self._lose()
                with anyio.CancelScope(shield=True):
                    await stream.aclose()
            await anyio.sleep(delay_s)

    async def _run(self, stream: ByteStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        hello = {"secret": self.secret.decode(), "front_end": self.name}
        await stream.send(encode_frame(HELLO, orjson.dumps(hello)))
        with anyio.fail_after(CONNECT_TIMEOUT_S):
            header, payload = await receive_frame(reader, PAYLOAD_SIZE_MAX)
        if header.kind == REFUSED:
            logger.error(_event("link_refused", reason=payload.decode(errors="replace")))
            raise LinkRefused(payload.decode(errors="replace"))
        if header.kind != WELCOME:
            raise FrameError(f"the core answered the hello with a {KINDS[header.kind]}")
        welcome: dict[str, Any] = orjson.loads(payload)
        connection = _Connection(
            stream,
            min(self.window_max, int(welcome["window"])),
            min(PAYLOAD_SIZE_MAX, int(welcome["payload_size_max"])),
            {},
            [],
            self._new_signal(),
            frozenset(str(name) for name in welcome.get("calls", ())),
        )
        self._connection = connection
        self.connections += 1
        self.connected.set()
        logger.info(_event("link_connected", peer="core", window=connection.window))
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._write_requests, connection, task_group.cancel_scope)
            try:
                await self._read_replies(connection, reader)
            except FrameError as error:
                logger.warning(_event("link_frame_refused", peer="core", reason=error.reason))
            except CLOSED:
                pass
            task_group.cancel_scope.cancel()

    def _lose(self) -> None:
        """The connection is gone: every request waiting on it ends as unknown."""
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        self.connected = anyio.Event()
        for waiter in connection.pending.values():
            waiter.event.set()  # status -1: unknown
        logger.warning(_event("link_lost", peer="core", in_flight=len(connection.pending)))

    async def _write_requests(self, connection: _Connection, scope: anyio.CancelScope) -> None:
        stream = connection.stream
        try:
            while True:
                await connection.wakeup.wait()
                connection.wakeup = self._new_signal()
                requests, connection.outbox = connection.outbox, []
                for frame in frames_of(REQUESTS, requests, connection.payload_size_max):
                    await stream.send(frame)
        except CLOSED:
            scope.cancel()

    async def _read_replies(
        self, connection: _Connection, reader: BufferedByteReceiveStream
    ) -> None:
        pending = connection.pending
        while True:
            try:
                header, payload = await receive_frame(reader, connection.payload_size_max)
            except CLOSED:
                return
            if header.kind != REPLIES:
                raise FrameError(f"a {KINDS[header.kind]} frame from the core")
            for request_id, status, body in decode_messages(payload, header.count):
                waiter = pending.pop(request_id, None)
                if waiter is not None:  # else its caller gave up (cancelled)
                    waiter.status = status
                    waiter.body = body
                    waiter.event.set()


def _failure(status: int, body: bytes) -> Exception:
    """The exception for a reply that is not OK."""
    if status == REFUSAL:
        try:
            return Refused(decode_refusal(body))
        except FrameError as error:
            return LinkFailed(f"the core's refusal is not one this front-end knows: {error}")
    if status == PROBLEM:
        return decode_problem(body)
    if status == OVERLOADED:
        return LinkOverloaded("the core's window for this front-end is full")
    assert status == FAILED, status
    return LinkFailed("the core failed running the command (see its log)")


def _event(name: str, **fields: Any) -> str:
    return orjson.dumps({"event": name, **fields}).decode()
