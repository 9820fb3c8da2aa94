"""The ISO 8583 listener on both anyio backends, with a stub adapter: concurrency per
connection, the in-flight window, framing faults, deadlines, defects, shutdown, and the
ASGI lifespan that runs it beside the HTTP app. (The real adapter behind a real
`tally serve --iso8583`: tests/integration/iso8583/test_iso8583_server.py.)"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from channels.iso8583.framing import frame, read_frame
from channels.iso8583.server import AppWithIso8583, Limits, parse_address, serve_iso8583

BACKENDS = ["asyncio", "trio"]
FAST = Limits(idle_timeout_s=60.0, write_timeout_s=60.0, grace_s=5.0)


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class StubAdapter:
    """Answers b"R" + the message. Commands in the message: b"wait:NAME" waits for the
    event NAME; b"boom" raises; b"none" answers nothing; b"big" answers 60 KiB."""

    def __init__(self) -> None:
        self.events: dict[str, anyio.Event] = {}
        self.arrivals: dict[bytes, anyio.Event] = {}
        self.started: list[bytes] = []
        self.finished: list[bytes] = []

    def event(self, name: str) -> anyio.Event:
        return self.events.setdefault(name, anyio.Event())

    def arrival(self, message: bytes) -> anyio.Event:
        """Set once `message` was handed to the adapter."""
        return self.arrivals.setdefault(message, anyio.Event())

    async def handle(self, message: bytes) -> bytes | None:
        self.started.append(message)
        self.arrival(message).set()
        if message.startswith(b"wait:"):
            await self.event(message[5:].split(b"/")[0].decode()).wait()
        if message == b"boom":
            raise RuntimeError("a defect in the adapter")
        self.finished.append(message)
        if message == b"none":
            return None
        if message.startswith(b"big"):
            return b"R" * 60_000
        return b"R" + message


class Client:
    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffered = BufferedByteReceiveStream(stream)

    async def send(self, *messages: bytes) -> None:
        await self.stream.send(b"".join(frame(message) for message in messages))

    async def receive(self, timeout_s: float = 5.0) -> bytes | None:
        with anyio.fail_after(timeout_s):
            return await read_frame(self.buffered, 0xFFFF)

    async def closed_by_server(self, timeout_s: float = 5.0) -> bool:
        """Whether the server closes the connection (EOF or reset) within `timeout_s`."""
        with anyio.move_on_after(timeout_s):
            try:
                while await self.stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return True
        return False


async def wait_arrived(adapter: StubAdapter, *messages: bytes, timeout_s: float = 5.0) -> None:
    """Until the adapter was handed each of `messages`."""
    with anyio.fail_after(timeout_s):
        for message in messages:
            await adapter.arrival(message).wait()


@asynccontextmanager
async def listening(
    adapter: StubAdapter, limits: Limits = FAST
) -> AsyncIterator[tuple[int, anyio.Event, TaskGroup]]:
    shutdown = anyio.Event()
    async with anyio.create_task_group() as task_group:
        port = await task_group.start(
            lambda task_status: serve_iso8583(
                adapter, "127.0.0.1", 0, shutdown=shutdown, limits=limits, task_status=task_status
            )
        )
        yield port, shutdown, task_group
        shutdown.set()


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        yield Client(stream)


@pytest.mark.anyio
async def test_messages_on_one_connection_are_handled_concurrently() -> None:
    """A slow message does not hold back the ones behind it on the same connection:
    answers go out as they complete, each one whole."""
    adapter = StubAdapter()
    async with listening(adapter) as (port, _, _), connect(port) as client:
        await client.send(b"wait:slow", *(b"fast%d" % index for index in range(100)))
        answers = {await client.receive() for _ in range(100)}
        assert answers == {b"Rfast%d" % index for index in range(100)}
        adapter.event("slow").set()
        assert await client.receive() == b"Rwait:slow"


@pytest.mark.anyio
async def test_the_window_stops_reading_at_its_limit() -> None:
    """With in_flight_max messages unanswered the connection is not read further; one
    answer lets one more in."""
    adapter = StubAdapter()
    limits = Limits(in_flight_max=3, idle_timeout_s=60.0, write_timeout_s=60.0)
    async with listening(adapter, limits) as (port, _, _), connect(port) as client:
        await client.send(*(b"wait:a/%d" % index for index in range(3)), b"wait:b/3", b"x")
        await wait_arrived(adapter, *(b"wait:a/%d" % index for index in range(3)))
        await anyio.sleep(0.2)
        assert len(adapter.started) == 3
        adapter.event("a").set()
        answers = {await client.receive() for _ in range(3)}
        assert answers == {b"Rwait:a/%d" % index for index in range(3)}
        assert await client.receive() == b"Rx"  # read once there was room, b still waits
        assert adapter.started[3:] == [b"wait:b/3", b"x"]
        adapter.event("b").set()
        assert await client.receive() == b"Rwait:b/3"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00", b"\xff\xff" + b"A" * 16, b"\x00\x10abc"],
    ids=["zero-length", "over-max", "cut-inside-frame"],
)
async def test_lost_framing_closes_only_that_connection(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A zero length, a length over the maximum, or an end inside a frame closes that
    connection with a logged reason; the answer already due is still written, and
    another connection is served meanwhile."""
    adapter = StubAdapter()
    caplog.set_level(logging.INFO, "tally.iso8583")
    async with (
        listening(adapter) as (port, _, _),
        connect(port) as bad,
        connect(port) as good,
    ):
        await bad.send(b"wait:bad")
        await anyio.sleep(0.05)
        await bad.stream.send(garbage)
        if garbage == b"\x00\x10abc":
            await bad.stream.send_eof()
        await good.send(b"hello")
        assert await good.receive() == b"Rhello"
        adapter.event("bad").set()
        assert await bad.receive() == b"Rwait:bad"  # in flight before the fault: answered
        assert await bad.closed_by_server()
        await good.send(b"again")
        assert await good.receive() == b"Ragain"
    assert any("framing lost" in record.getMessage() for record in caplog.records)


@pytest.mark.anyio
async def test_a_stalled_connection_is_closed_at_the_idle_deadline() -> None:
    """Half a frame and then nothing: closed after idle_timeout_s, while another
    connection is answered at once throughout."""
    adapter = StubAdapter()
    limits = Limits(idle_timeout_s=0.5, write_timeout_s=5.0)
    async with (
        listening(adapter, limits) as (port, _, _),
        connect(port) as stalled,
        connect(port) as good,
    ):
        await stalled.stream.send(b"\x00\x20abc")
        for index in range(3):
            await good.send(b"m%d" % index)
            assert await good.receive(timeout_s=2.0) == b"Rm%d" % index
            await anyio.sleep(0.05)
        assert await stalled.closed_by_server(timeout_s=2.0)


@pytest.mark.anyio
async def test_a_peer_that_does_not_read_is_closed_at_the_write_deadline() -> None:
    """Responses the peer never takes fill the socket; after write_timeout_s the
    connection is closed and the other connections never noticed."""
    adapter = StubAdapter()
    limits = Limits(idle_timeout_s=60.0, write_timeout_s=0.4, in_flight_max=512)
    async with (
        listening(adapter, limits) as (port, _, _),
        connect(port) as deaf,
        connect(port) as good,
    ):
        raw = deaf.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with anyio.move_on_after(2.0):  # the server stops reading it too, at its window
            for _ in range(500):
                await deaf.send(b"big")
        await good.send(b"alive")
        assert await good.receive(timeout_s=1.0) == b"Ralive"
        await anyio.sleep(1.5)
        await good.send(b"still")
        assert await good.receive(timeout_s=1.0) == b"Rstill"
        assert await deaf.closed_by_server(timeout_s=5.0)


@pytest.mark.anyio
async def test_an_adapter_defect_is_logged_and_the_connection_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception out of the adapter leaves that message unanswered (logged with its
    traceback); the next messages on the connection are answered. None: no answer."""
    adapter = StubAdapter()
    async with listening(adapter) as (port, _, _), connect(port) as client:
        await client.send(b"boom", b"none", b"after")
        assert await client.receive() == b"Rafter"
        await client.send(b"again")
        assert await client.receive() == b"Ragain"
    failed = [r for r in caplog.records if "iso8583_handler_failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None


@pytest.mark.anyio
async def test_shutdown_answers_what_is_in_flight_then_closes() -> None:
    """Once shutdown is set: no new connection, nothing more read, the messages in
    flight answered, then every connection closed and serve_iso8583 returns."""
    adapter = StubAdapter()
    shutdown = anyio.Event()
    returned = anyio.Event()

    async def serve(*, task_status: Any) -> None:
        await serve_iso8583(
            adapter, "127.0.0.1", 0, shutdown=shutdown, limits=FAST, task_status=task_status
        )
        returned.set()

    async with anyio.create_task_group() as task_group:
        port = await task_group.start(serve)
        async with connect(port) as client:
            await client.send(b"wait:slow")
            await wait_arrived(adapter, b"wait:slow")
            shutdown.set()
            await anyio.sleep(0.1)
            assert not returned.is_set()
            with pytest.raises(OSError):
                await anyio.connect_tcp("127.0.0.1", port)
            await client.send(b"late")  # not read any more
            adapter.event("slow").set()
            assert await client.receive() == b"Rwait:slow"
            assert await client.closed_by_server()
        with anyio.fail_after(2):
            await returned.wait()
    assert b"late" not in adapter.started


@pytest.mark.anyio
async def test_shutdown_cuts_what_outlives_the_grace() -> None:
    """A message still being handled at the end of grace_s is cancelled and its
    connection closed: the shutdown is bounded."""
    adapter = StubAdapter()
    limits = Limits(grace_s=0.3, idle_timeout_s=60.0, write_timeout_s=60.0)
    async with listening(adapter, limits) as (port, shutdown, _), connect(port) as client:
        await client.send(b"wait:never")
        await wait_arrived(adapter, b"wait:never")
        with anyio.fail_after(2):
            shutdown.set()
            assert await client.closed_by_server()
    assert b"wait:never" not in adapter.finished


@pytest.mark.anyio
async def test_a_port_in_use_is_raised_from_start() -> None:
    """Binding fails before the listener reports started: the caller sees the OSError."""
    adapter = StubAdapter()
    async with listening(adapter) as (port, _, _), anyio.create_task_group() as task_group:
        with pytest.raises(OSError):
            await task_group.start(
                lambda task_status: serve_iso8583(
                    adapter, "127.0.0.1", port, task_status=task_status
                )
            )


class FakeApp:
    """An ASGI app recording its lifespan messages and whether the listener answered
    while it was starting and stopping."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.http_calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.http_calls += 1
            return
        message = await receive()
        self.seen.append(message["type"])
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        self.seen.append(message["type"])
        await send({"type": "lifespan.shutdown.complete"})


@pytest.mark.anyio
async def test_the_lifespan_runs_the_listener_around_the_app() -> None:
    """Under AppWithIso8583 the listener answers once the server's startup is complete,
    other scopes reach the app, and the listener is drained before the app hears of the
    shutdown (its in-flight message answered first)."""
    adapter = StubAdapter()
    app = FakeApp()
    port = _free_port()
    wrapped = AppWithIso8583(app, adapter, "127.0.0.1", port, FAST)
    to_app_send, to_app_receive = anyio.create_memory_object_stream[dict[str, Any]](4)
    from_app_send, from_app_receive = anyio.create_memory_object_stream[dict[str, Any]](4)
    async with (
        to_app_send,
        to_app_receive,
        from_app_send,
        from_app_receive,
        anyio.create_task_group() as task_group,
    ):
        task_group.start_soon(
            wrapped, {"type": "lifespan"}, to_app_receive.receive, from_app_send.send
        )
        await to_app_send.send({"type": "lifespan.startup"})
        assert (await from_app_receive.receive())["type"] == "lifespan.startup.complete"
        assert app.seen == ["lifespan.startup"]
        assert wrapped.bound_port == port
        await wrapped({"type": "http"}, to_app_receive.receive, from_app_send.send)
        assert app.http_calls == 1
        async with connect(port) as client:
            await client.send(b"wait:slow")
            await wait_arrived(adapter, b"wait:slow")
            await to_app_send.send({"type": "lifespan.shutdown"})
            await anyio.sleep(0.1)
            assert app.seen == ["lifespan.startup"]  # the app not told before the drain
            adapter.event("slow").set()
            assert await client.receive() == b"Rwait:slow"
            assert await client.closed_by_server()
        assert (await from_app_receive.receive())["type"] == "lifespan.shutdown.complete"
        assert app.seen == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.anyio
async def test_the_lifespan_fails_the_start_on_a_port_in_use() -> None:
    """A port in use is answered lifespan.startup.failed, naming the address, and the
    app (its bank) is never started."""
    app = FakeApp()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        wrapped = AppWithIso8583(app, StubAdapter(), "127.0.0.1", port, FAST)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await wrapped({"type": "lifespan"}, receive, send)
    assert [message["type"] for message in sent] == ["lifespan.startup.failed"]
    assert f"127.0.0.1:{port}" in sent[0]["message"]
    assert app.seen == []


def test_parse_address() -> None:
    """HOST:PORT, IPv6 in brackets; anything else refused with a reason."""
    assert parse_address("0.0.0.0:8583") == ("0.0.0.0", 8583)
    assert parse_address("[::1]:8583") == ("::1", 8583)
    assert parse_address("localhost:0") == ("localhost", 0)
    for bad in ("8583", ":8583", "host:", "host:port", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
