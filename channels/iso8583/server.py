"""The ISO 8583 listener: terminal connections over TCP, frames in, responses out.

Nothing here reads a message: a frame's payload goes to the adapter
(`Iso8583Adapter.handle`, channels/iso8583/adapter.py), and its answer, if it
has one, is framed and written back on the same connection. What this module
owns is the connections, their limits and their failures.

- **Many terminals on one connection** (a concentrator, an acquirer's switch)
  or one each. The messages of a connection are handled concurrently and
  answered as they complete, not in the order they came: the terminal matches
  an answer to its request by terminal id and STAN.
- **The in-flight window.** At most `in_flight_max` messages of a connection
  are read and not yet answered (handled, or waiting to be written). At the
  limit the connection is simply not read any further (beyond the one chunk
  of up to READ_SIZE_MAX bytes already read), so TCP pushes back on the
  sender, until one is answered. Answering 91 at once was the other way:
  it would cost a parse and a MAC per message shed, exactly when the server is
  short of time, and a terminal that waits gets its answer or times out and
  reverses, which the adapter handles either way. The engine's own queue is
  the overload signal (the adapter answers 91 when it is full).
- **One writer per connection.** Responses are queued to one task that writes
  each whole (its length prefix and bytes in one `send`, several together
  when they are ready at once), so two answers never interleave: that writer
  is the connection's write lock.
- **Deadlines.** A connection whose reader waits `idle_timeout_s` for a
  complete frame (nothing sent, or a frame trickling in) is closed; so is one
  whose responses cannot be written within `write_timeout_s` (the peer does
  not read). One sweep task per listener checks every connection each second
  (less with short limits): a cancel scope around every read would cost about
  6.6 us per message on asyncio (measured with anyio 4.16), the sweep nothing
  per message.
- **Faults.** Framing lost (a zero length, a frame over `frame_size_max`, an
  end of stream inside a frame: channels/iso8583/framing.py) closes the
  connection with a logged reason, since nothing after it can be trusted to
  start a message. A frame that is not a valid message is the adapter's to
  answer (format error, 30). An exception out of the adapter is a defect: it
  is logged with its traceback and the message goes unanswered (its terminal
  times out and reverses), and the connection stays open for the other
  terminals on it.
- **Isolation.** Every connection has its own tasks, window and deadlines: a
  slow or garbage connection costs the others nothing beyond its share of the
  event loop. At most `connections_max` connections are served at once;
  beyond, accepting waits (the kernel's backlog holds the newcomers).

Shutdown: when the `shutdown` event is set the listener stops accepting, every
connection stops reading, the messages in flight are handled and answered
within `grace_s`, then every connection is closed (a message still being
handled at that deadline is cancelled; its terminal reverses it).

`AppWithIso8583` runs the listener inside an ASGI server's lifespan, beside the
HTTP app, on its event loop (hypercorn on asyncio or trio, uvicorn on uvloop),
with the app's `Bank`: the listener is bound before the app starts the bank (a
port in use fails the start), answers at once (the services refuse with
NOT_READY until the bank is recovered, which the adapter answers 91), and is
drained before the app's shutdown stops the bank.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import anyio
import orjson
from anyio.abc import (
    SocketAttribute,
    SocketListener,
    SocketStream,
    TaskGroup,
    TaskStatus,
)
from anyio.streams.stapled import MultiListener

from channels.iso8583.framing import FRAME_SIZE_MAX, FrameDecoder, frame

logger = logging.getLogger("tally.iso8583")

# Accept errors that mean "out of a resource for now", not "this listener is broken":
# the accept loop pauses and tries again (trio's serve_listeners survives the same).
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_PAUSE_S: Final = 0.1
SWEEP_INTERVAL_S_MAX: Final = 1.0
WRITE_BATCH_MAX: Final = 64  # responses gathered into one send
IDLE_HANDLERS_MAX: Final = 64  # handler tasks kept parked per connection
READ_SIZE_MAX: Final = 65_536  # bytes taken from the socket at once (frames split here)
CLOSE_TIMEOUT_S: Final = 1.0

# ASGI, as channels/http/app.py types it.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class MessageHandler(Protocol):
    """What the listener hands each frame to (`Iso8583Adapter`): the response, or None."""

    async def handle(self, message: bytes) -> bytes | None: ...


@dataclass(frozen=True)
class Limits:
    """The bounds of one listener; `in_flight_max` and the deadlines are per connection."""

    in_flight_max: int = 256  # messages read and not yet answered, per connection
    connections_max: int = 4096
    frame_size_max: int = 4096  # bytes of one message; a CUP-style message is under 1 KiB
    idle_timeout_s: float = 300.0  # terminals echo (0800/301) every minute or so
    write_timeout_s: float = 10.0
    grace_s: float = 10.0  # at shutdown, for the messages in flight
    backlog: int = 1024

    def __post_init__(self) -> None:
        assert self.in_flight_max >= 1, self.in_flight_max
        assert self.connections_max >= 1, self.connections_max
        assert 0 < self.frame_size_max <= FRAME_SIZE_MAX, self.frame_size_max
        assert self.idle_timeout_s > 0 and self.write_timeout_s > 0, self
        assert self.grace_s >= 0 and self.backlog >= 1, self

    @property
    def sweep_interval_s(self) -> float:
        return min(SWEEP_INTERVAL_S_MAX, self.idle_timeout_s / 4, self.write_timeout_s / 4)


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (`[::1]:8583` for IPv6) as a (host, port) pair; ValueError says what is wrong."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class ListenerStats:
    """What `/metrics` shows of a listener (channels/http/metrics.py `Iso8583Collector`):
    plain ints, one increment on the path of a message."""

    __slots__ = ("connections_open", "connections_total", "dropped", "messages", "unanswered")

    def __init__(self) -> None:
        self.connections_open = 0
        self.connections_total = 0
        self.dropped = 0  # connections closed for a fault (framing, a deadline, a reset)
        self.messages = 0  # frames read
        self.unanswered = 0  # messages no response was sent for


async def serve_iso8583(
    adapter: MessageHandler,
    host: str,
    port: int,
    *,
    shutdown: anyio.Event | None = None,
    limits: Limits = Limits(),
    stats: ListenerStats | None = None,
    sock: socket.socket | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ISO 8583 terminals on `host`:`port` until `shutdown` is set, or cancelled.

    Args:
        adapter: handles each message (`Iso8583Adapter`).
        host, port: where to listen (port 0: any free port).
        shutdown: once set, stop accepting and reading, answer what is in flight
            within `limits.grace_s`, close, and return. None: serve until cancelled.
        limits: the window, deadlines and sizes (module docstring).
        stats: counted into, for `/metrics` (None: counted into a private one).
        sock: a listening socket bound already (a front-end's, inherited from `tally
            serve --workers`: every front-end accepts on it) instead of `host`:`port`.
        task_status: started with the port bound (`await task_group.start(...)`).

    Returns:
        Once `shutdown` was set and every connection is closed.

    Resource handling:
        The listening sockets and every connection are closed when this returns
        or is cancelled.

    Error handling:
        An OSError binding the socket is raised before `task_status.started`
        (from `task_group.start`). An accept failing with one of
        `ACCEPT_CAPACITY_ERRNOS` is logged and retried after `ACCEPT_PAUSE_S`;
        any other accept error propagates. A connection's own failures (reset,
        framing lost, a deadline) close that connection only, with a logged reason.
    """
    listener: MultiListener[SocketStream] | SocketListener
    if sock is None:
        listener = await anyio.create_tcp_listener(
            local_host=host, local_port=port, backlog=limits.backlog
        )
        listeners = list(listener.listeners)
    else:
        listener = await SocketListener.from_socket(sock)
        listeners = [listener]
    server = _Listener(adapter, limits, stats or ListenerStats())
    async with listener:
        bound_port: int = listener.extra(SocketAttribute.local_port)
        logger.info(_event("iso8583_listening", host=host, port=bound_port))
        async with anyio.create_task_group() as connections:
            connections.start_soon(server.sweep)
            async with anyio.create_task_group() as accepting:
                for one in listeners:
                    assert isinstance(one, SocketListener), one  # what create_tcp_listener makes
                    accepting.start_soon(server.accept, one, connections)
                task_status.started(bound_port)
                if shutdown is None:
                    await anyio.sleep_forever()
                else:
                    await shutdown.wait()
                accepting.cancel_scope.cancel()
            await listener.aclose()
            server.stop_reading()
            connections.cancel_scope.deadline = anyio.current_time() + limits.grace_s
            await server.wait_closed()
            connections.cancel_scope.cancel()  # the sweep
        logger.info(_event("iso8583_stopped", host=host, port=bound_port))


class _Listener:
    """The connections of one listener: accepting them, their deadlines, their stop."""

    def __init__(self, adapter: MessageHandler, limits: Limits, stats: ListenerStats) -> None:
        self.adapter = adapter
        self.limits = limits
        self.stats = stats
        self.connections: set[_Connection] = set()
        self.slots = anyio.Semaphore(limits.connections_max)
        self.stopping = False
        self.all_closed = anyio.Event()

    async def accept(self, listener: SocketListener, connections: TaskGroup) -> None:
        while True:
            await self.slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as error:
                self.slots.release()
                if error.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.warning(_event("iso8583_accept_paused", error=str(error)))
                await anyio.sleep(ACCEPT_PAUSE_S)
                continue
            except BaseException:
                self.slots.release()
                raise
            connection = _Connection(stream, self.adapter, self.limits, self.stats)
            self.connections.add(connection)
            self.stats.connections_total += 1
            self.stats.connections_open += 1
            connections.start_soon(self._serve, connection)

    async def _serve(self, connection: _Connection) -> None:
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)
            self.stats.connections_open -= 1
            self.slots.release()
            if self.stopping and not self.connections:
                self.all_closed.set()

    async def sweep(self) -> None:
        """Close the connections past a deadline (idle reader, unread responses)."""
        interval_s = self.limits.sweep_interval_s
        while True:
            await anyio.sleep(interval_s)
            now = anyio.current_time()
            for connection in list(self.connections):
                connection.check_deadlines(now)

    def stop_reading(self) -> None:
        self.stopping = True
        for connection in self.connections:
            connection.close_for("server shutting down")
        if not self.connections:
            self.all_closed.set()

    async def wait_closed(self) -> None:
        assert self.stopping
        await self.all_closed.wait()


class _Connection:
    """One terminal connection: a reader, handler tasks (`_work`) under the window, one
    writer.

    The handler tasks are kept and reused: the reader queues each message and wakes an
    idle handler, or starts one when none is idle (so at most as many as the window
    holds messages). Starting an anyio task per message cost about 20 us of the
    ~200 us a message cost the server in all (measured with the bench's profile,
    docs/iso8583.md); waking a parked one costs a few. At most IDLE_HANDLERS_MAX stay
    parked; the others end when they find nothing to do."""

    def __init__(
        self, stream: SocketStream, adapter: MessageHandler, limits: Limits, stats: ListenerStats
    ) -> None:
        self.stream = stream
        self.adapter = adapter
        self.limits = limits
        self.stats = stats
        self.peer = _peer(stream)
        self.window = anyio.Semaphore(limits.in_flight_max)
        self.responses_send, self.responses_receive = anyio.create_memory_object_stream[bytes](
            limits.in_flight_max
        )
        # Cancelled (even before entered) to stop reading, or writing: by the sweep, the
        # writer's failure, the shutdown.
        self.reading = anyio.CancelScope()
        self.writing = anyio.CancelScope()
        self.read_since: float | None = None  # the reader is waiting for a frame since
        self.write_since: float | None = None  # a send is under way since
        self.reason = ""  # why it closes: the first cause given
        self.message_count = 0
        self.unanswered_count = 0
        self.queue: deque[bytes] = deque()  # messages read (under the window), not taken
        self.idle: list[anyio.Event] = []  # parked handlers, each waiting on its event
        self.handler_count = 0
        self.read_done = False  # no more messages: idle handlers end

    async def serve(self) -> None:
        logger.debug(_event("iso8583_connection_opened", peer=self.peer))
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._write_responses)
                async with anyio.create_task_group() as handlers:
                    with self.reading:
                        await self._read_messages(handlers)
                    self._end_handlers()
                self.responses_send.close()  # every handler is done: the writer ends
        finally:
            expected = self.reason in ("closed by the peer", "server shutting down")
            if not expected:
                self.stats.dropped += 1  # counted before the peer can see the close
            self.responses_send.close()
            if self.writing.cancel_called:
                _discard_unsent(self.stream)
            with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await self.stream.aclose()
            logger.log(
                logging.INFO if expected else logging.WARNING,
                _event(
                    "iso8583_connection_closed",
                    peer=self.peer,
                    reason=self.reason or "cancelled",
                    messages=self.message_count,
                    unanswered=self.unanswered_count,
                ),
            )

    def close_for(self, reason: str) -> None:
        """Stop reading; the messages in flight are still answered, then it closes."""
        if not self.reason:
            self.reason = reason
        self.reading.cancel()

    def check_deadlines(self, now: float) -> None:
        limits = self.limits
        if self.read_since is not None and now - self.read_since > limits.idle_timeout_s:
            self.close_for(f"no complete message within {limits.idle_timeout_s} s")
        if self.write_since is not None and now - self.write_since > limits.write_timeout_s:
            self.close_for(f"responses not taken by the peer within {limits.write_timeout_s} s")
            self.writing.cancel()

    async def _read_messages(self, handlers: TaskGroup) -> None:
        """Read the socket in chunks of up to READ_SIZE_MAX bytes and split them into
        frames here (`FrameDecoder`): one receive (and one clock read) for all the frames
        a chunk holds, where reading a frame at a time cost two receives each. A frame is
        handed to the adapter only once the window has room for it: at the limit the
        socket is not read further (at most one chunk read ahead of the window)."""
        decoder = FrameDecoder(self.limits.frame_size_max)
        receive = self.stream.receive
        window = self.window
        start = handlers.start_soon
        work = self._work
        queue = self.queue
        idle = self.idle
        while True:
            if self.read_since is None:  # kept while a frame trickles in over receives
                self.read_since = anyio.current_time()
            try:
                data = await receive(READ_SIZE_MAX)
            except anyio.EndOfStream:
                if decoder.pending:
                    self.close_for(
                        f"framing lost: end of stream inside a frame ({decoder.pending} bytes)"
                    )
                else:
                    self.close_for("closed by the peer")
                return
            except anyio.BrokenResourceError:
                self.close_for("connection reset by the peer")
                return
            messages, fault = decoder.split(data)
            if messages:
                self.read_since = None
                for message in messages:
                    try:  # no checkpoint per frame: the frames of a chunk are taken together
                        window.acquire_nowait()
                    except anyio.WouldBlock:
                        await window.acquire()  # at the limit (module docstring)
                    self.message_count += 1
                    self.stats.messages += 1
                    queue.append(message)
                    if idle:
                        idle.pop().set()
                    else:
                        self.handler_count += 1
                        start(work)
            if fault is not None:
                self.close_for(f"framing lost: {fault}")
                return

    async def _work(self) -> None:
        """A handler: take the queued messages one at a time; park when there is none."""
        queue = self.queue
        idle = self.idle
        try:
            while True:
                while not queue:
                    if self.read_done or len(idle) >= IDLE_HANDLERS_MAX:
                        return
                    parked = anyio.Event()
                    idle.append(parked)
                    await parked.wait()
                await self._handle(queue.popleft())
        finally:
            self.handler_count -= 1

    def _end_handlers(self) -> None:
        """Reading is over: the handlers take what is queued, then end."""
        self.read_done = True
        for parked in self.idle:
            parked.set()
        self.idle.clear()

    async def _handle(self, message: bytes) -> None:
        queued = False
        try:
            try:
                response = await self.adapter.handle(message)
                framed = None if response is None else frame(response)
            except Exception:
                # A defect (the adapter answers every refusal itself): visible in the log,
                # the other terminals on this connection unaffected.
                self.unanswered_count += 1
                self.stats.unanswered += 1
                logger.exception(
                    _event("iso8583_handler_failed", peer=self.peer, size=len(message))
                )
                return
            if framed is None:
                self.unanswered_count += 1
                self.stats.unanswered += 1
                return
            try:
                self.responses_send.send_nowait(framed)  # room: one per window slot
                queued = True
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.unanswered_count += 1
                self.stats.unanswered += 1  # the writer is gone: the connection is closing
        finally:
            if not queued:
                self.window.release()

    async def _write_responses(self) -> None:
        receive = self.responses_receive
        with self.writing, receive:
            try:
                async for first in receive:
                    batch = [first]
                    while len(batch) < WRITE_BATCH_MAX:
                        try:
                            batch.append(receive.receive_nowait())
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                    self.write_since = anyio.current_time()
                    await self.stream.send(first if len(batch) == 1 else b"".join(batch))
                    self.write_since = None
                    for _ in batch:
                        self.window.release()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.close_for("connection reset by the peer (writing)")
        # Stopped by the sweep (close_for said why) or by a broken connection: the
        # responses still to come are dropped by their handlers (BrokenResourceError).
        if self.writing.cancel_called:
            self.close_for("writing cancelled")


class AppWithIso8583:
    """An ASGI app with the ISO 8583 listener in its lifespan (module docstring).

    Every other scope goes straight to `app`. The listener binds on the server's
    `lifespan.startup`, before the app starts its bank (an OSError is answered
    `lifespan.startup.failed`, which stops the server), and on `lifespan.shutdown`
    is drained (`serve_iso8583`'s shutdown) before the app is told to stop.
    """

    def __init__(
        self,
        app: AsgiApp,
        adapter: MessageHandler,
        host: str,
        port: int,
        limits: Limits = Limits(),
        *,
        sock: socket.socket | None = None,
    ) -> None:
        """`sock`: a listening socket bound already, instead of `host`:`port`."""
        self.app = app
        self.adapter = adapter
        self.host = host
        self.port = port
        self.limits = limits
        self.sock = sock
        self.stats = ListenerStats()  # for /metrics (serve.py registers its collector)
        self.bound_port: int | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await self._lifespan(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        startup = await receive()
        assert startup["type"] == "lifespan.startup", startup
        shutdown = anyio.Event()
        stopped = anyio.Event()

        async def serve(*, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await serve_iso8583(
                    self.adapter,
                    self.host,
                    self.port,
                    shutdown=shutdown,
                    limits=self.limits,
                    stats=self.stats,
                    sock=self.sock,
                    task_status=task_status,
                )
            finally:
                stopped.set()

        async with anyio.create_task_group() as task_group:
            try:
                self.bound_port = await task_group.start(serve)
            except OSError as error:
                await send(
                    {
                        "type": "lifespan.startup.failed",
                        "message": f"ISO 8583 listener on {self.host}:{self.port}: {error}",
                    }
                )
                return
            replayed = False

            async def app_receive() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return startup
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    shutdown.set()
                    await stopped.wait()  # bounded by the listener's grace_s
                return message

            await self.app(scope, app_receive, send)
            task_group.cancel_scope.cancel()


def _discard_unsent(stream: SocketStream) -> None:
    """Make the close a reset: what the kernel still holds for a peer that does not read
    is dropped at once rather than sent on (or retried) after we gave up on it."""
    raw = stream.extra(SocketAttribute.raw_socket, None)
    if raw is not None:
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _peer(stream: SocketStream) -> str:
    address = stream.extra(SocketAttribute.remote_address, None)
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _event(name: str, **fields: Any) -> str:
    return orjson.dumps({"event": name, **fields}).decode()
