"""The core's side of the link: front-ends' typed commands in, the services' results out.

One `LinkServer` serves every front-end connection of a core (`serve_link`). A
connection must first show the link's shared secret (HELLO; over TCP it has also shown
a client certificate the core's CA signed, in the TLS handshake); without it the
connection is refused with a logged reason. Then each REQUESTS frame is decoded whole
(a frame with one bad message runs none of them, and the connection is closed with the
reason logged) and each command runs in the server's task group, concurrently, so a
command outlives the connection that sent it: a lost front-end never leaves a command
half done, and its retry meets the outcome by the operation key.

Service calls (`CALL`, core/link/calls.py) are answered by the implementations the
core was given (`calls`: the terminal services of the front-ends' ISO 8583 adapters);
a call of another name, or with arguments of the wrong types, is a bad frame.

Per connection at most `window` commands run at once; a request over it is answered
OVERLOADED at once (nothing done). Replies that completed together leave in one frame.
"""

from __future__ import annotations

import hmac
import logging
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import ByteStream, Listener, TaskGroup, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from core.link.calls import CallTable, Implementation
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
    ChannelProblem,
    HttpRequest,
    HttpResponse,
    Transfer,
    decode_http_request,
    decode_transfer,
    encode_http_response,
    encode_posted,
    encode_problem,
    encode_refusal,
)
from core.services.commands import Caller
from core.services.payments import FailedBefore, Staged
from core.services.refusals import Code, Refused, refused
from core.services.results import Posted
from core.signals import Waiter, waiter_factory

if TYPE_CHECKING:
    from core.services.bank import Bank

logger = logging.getLogger("tally.link")
CALLERS_MAX = 65536
CALL_INLINE = -1  # a CALL run as its frame is read (`CallTable.inline`); never on the wire
CLOSED = (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
          anyio.ClosedResourceError)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LinkLimits:
    window: int = 4096  # commands running at once per connection; more: OVERLOADED
    connections_max: int = 256  # open at once (front-ends, and those still in their hello)
    payload_size_max: int = PAYLOAD_SIZE_MAX  # a frame's payload, each way
    hello_timeout_s: float = 5.0  # for the HELLO after connecting
    hello_size_max: int = 4096


@dataclass
class LinkStats:
    """What the link did, for /metrics and the tests."""

    connections: int = 0  # open now
    accepted: int = 0
    refused_credentials: int = 0
    refused_frames: int = 0  # connections closed for a bad frame
    refused_connections: int = 0  # closed at once: `connections_max` were open
    requests: int = 0
    frames: int = 0  # REQUESTS frames read (requests / frames: how well front-ends batch)
    overloaded: int = 0


@dataclass
class _Connection:
    stream: ByteStream
    peer: str
    # One-shot signals of the running backend (`waiter_factory`: a bare future on
    # asyncio), a new one after each wake: set for each frame, so kept cheap.
    wakeup: Waiter
    settle_wakeup: Waiter
    new_signal: Callable[[], Waiter]
    in_flight: int = 0
    outbox: list[tuple[int, int, bytes]] = field(default_factory=list)
    closed: bool = False
    sending: bool = False  # the writer is in a send: the front-end is not reading (yet)
    # Frames of staged postings, for the connection's settler (`_serve_settles`).
    staged: deque[list[tuple[int, Staged, int]]] = field(default_factory=deque)

    def reply(self, request_id: int, status: int, body: bytes) -> None:
        if not self.closed:
            self.outbox.append((request_id, status, body))
            self.wakeup.set()


Admit = Callable[[Transfer], int]
"""The channel tier's checks in the core (`admit(command)`): over the channel's rate,
a reused nonce raise `ChannelProblem`; returns the customer-state ticket the reply
must wait for (the nonce's, 0 for none). The core's HTTP app supplies it
(channels/link.py), so that rate limits and nonces hold across every front-end."""
ServeHttp = Callable[[HttpRequest], Awaitable[HttpResponse]]
Called = tuple[Implementation, tuple[Any, ...], Callable[[Any], bytes]]  # a decoded CALL
RegistryText = Callable[[], tuple[int, str]]


class LinkServer:
    def __init__(
        self,
        bank: Bank,
        secret: bytes,
        limits: LinkLimits = LinkLimits(),
        *,
        admit: Admit | None = None,
        serve_http: ServeHttp | None = None,
        registry: RegistryText | None = None,
        calls: CallTable | None = None,
        check_caller: Callable[[Caller], None] | None = None,
    ) -> None:
        """`secret`: what a front-end's HELLO must show (`--link-secret-file`);
        `admit`: the channel tier's checks of a transfer (None: none); `serve_http`: the
        core's HTTP app, for requests passed through whole (None: refused as an unknown
        op); `registry`: the channel registry in force, (version, text); `calls`: the
        service calls answered (core/link/calls.py; None: CALL is an unknown op);
        `check_caller`: raises `ChannelProblem` for a `Caller` a call names that is not
        the channel tier's (None: every one is taken as named)."""
        assert secret, "the link needs a secret"
        self.bank = bank
        self.payments = bank.payments
        self.secret = secret
        self.limits = limits
        self.admit = admit
        self.serve_http = serve_http
        self.registry = registry
        self.calls = calls
        self.check_caller = check_caller
        self.stats = LinkStats()
        self._commands: TaskGroup | None = None
        self._open = 0  # connections open, welcomed or not (`connections_max`)
        self._callers: dict[tuple[Any, ...], Caller] = {}
        # Replies that wait for their nonce to be durable: (ticket, connection, reply).
        self._gated: list[tuple[int, _Connection, tuple[int, int, bytes]]] = []
        self._new_signal: Callable[[], Waiter] = anyio.Event  # the backend's, once serving
        self._gate_wakeup: Waiter = anyio.Event()

    async def serve_link(
        self, listener: Listener[Any], *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve front-ends on `listener` until cancelled (a Unix socket or TLS listener)."""
        self._new_signal = waiter_factory()
        self._gate_wakeup = self._new_signal()
        async with anyio.create_task_group() as commands:
            self._commands = commands
            commands.start_soon(self._serve_gate)
            task_status.started()
            await listener.serve(self._serve_connection, task_group=commands)

    async def _serve_connection(self, stream: ByteStream) -> None:
        """One front-end's connection, to its end. Nothing it does escapes to the server
        (a connection's failure is logged and closes that connection only)."""
        peer = _peer(stream)
        connection: _Connection | None = None
        if self._open >= self.limits.connections_max:  # closed unanswered: it retries later
            self.stats.refused_connections += 1
            logger.warning(_event("link_refused", peer=peer, reason="connections",
                                  open=self._open))  # fmt: skip
            await anyio.aclose_forcefully(stream)
            return
        self._open += 1
        try:
            reader = BufferedByteReceiveStream(stream)
            if not await self._welcomed(stream, reader, peer):
                return
            signal = self._new_signal
            connection = _Connection(stream, peer, signal(), signal(), signal)
            self._commands_group().start_soon(self._serve_settles, connection)
            self.stats.connections += 1
            self.stats.accepted += 1
            logger.info(_event("link_connected", peer=peer))
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._write_replies, connection, task_group.cancel_scope)
                try:
                    await self._read_requests(connection, reader)
                except FrameError as error:
                    self._refuse_frame(peer, error)
                except CLOSED:
                    pass
                task_group.cancel_scope.cancel()
        except FrameError as error:
            self._refuse_frame(peer, error)
        except CLOSED:
            pass
        except Exception as error:  # a defect: loud, and this connection only
            _log_defect(error)
        finally:
            self._open -= 1
            if connection is not None:
                connection.closed = True
                connection.settle_wakeup.set()  # its settler drains what is queued, and ends
                self.stats.connections -= 1
                logger.info(_event("link_closed", peer=peer, in_flight=connection.in_flight))
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)

    def _refuse_frame(self, peer: str, error: FrameError) -> None:
        self.stats.refused_frames += 1
        logger.warning(_event("link_frame_refused", peer=peer, reason=error.reason))

    async def _welcomed(
        self, stream: ByteStream, reader: BufferedByteReceiveStream, peer: str
    ) -> bool:
        """Read the HELLO and answer it: WELCOME if its secret is the link's, else REFUSED."""
        limits = self.limits
        with anyio.move_on_after(limits.hello_timeout_s) as late:
            header, payload = await receive_frame(reader, limits.hello_size_max)
        if late.cancelled_caught:
            raise FrameError("no hello in time")
        if header.kind != HELLO:
            raise FrameError(f"the first frame is a {KINDS[header.kind]}, not a hello")
        try:
            hello = orjson.loads(payload)
            shown = hello["secret"].encode()
            name = str(hello.get("front_end", ""))[:64]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise FrameError("the hello is not {secret, front_end}") from None
        if not hmac.compare_digest(shown, self.secret):
            self.stats.refused_credentials += 1
            logger.warning(_event("link_refused", peer=peer, front_end=name, reason="credentials"))
            await stream.send(encode_frame(REFUSED, b"the link secret is not this core's"))
            return False
        welcome = {
            "window": limits.window,
            "payload_size_max": limits.payload_size_max,
            "calls": [] if self.calls is None else self.calls.names(),
        }
        await stream.send(encode_frame(WELCOME, orjson.dumps(welcome)))
        return True

    async def _read_requests(
        self, connection: _Connection, reader: BufferedByteReceiveStream
    ) -> None:
        limits, stats = self.limits, self.stats
        commands = self._commands
        assert commands is not None
        callers = self._callers
        while True:
            try:
                header, payload = await receive_frame(reader, limits.payload_size_max)
            except CLOSED:
                return
            if header.kind != REQUESTS:
                raise FrameError(f"a {KINDS[header.kind]} frame from a front-end")
            decoded: list[tuple[int, int, Any]] = []
            for request_id, op, body in decode_messages(payload, header.count):
                if op == TRANSFER:
                    decoded.append((request_id, op, decode_transfer(body, callers)))
                elif op == HTTP and self.serve_http is not None:
                    decoded.append((request_id, op, decode_http_request(body)))
                elif op == REGISTRY and self.registry is not None:
                    decoded.append((request_id, op, None))
                elif op == CALL and self.calls is not None:
                    call, implementation, arguments = self.calls.decode(body)
                    called = (implementation, arguments, call.encode_result)
                    decoded.append((request_id, CALL_INLINE if call.name in self.calls.inline
                                    else op, called))  # fmt: skip
                else:
                    raise FrameError(f"unknown op {op} in request {request_id}")
            stats.requests += len(decoded)
            stats.frames += 1
            staged: list[tuple[int, Staged, int]] = []
            for request_id, op, command in decoded:
                if op == REGISTRY:
                    assert self.registry is not None
                    connection.reply(request_id, OK, orjson.dumps(self.registry()))
                    continue
                if op == CALL_INLINE:
                    self._call_inline(connection, request_id, command)
                    continue
                if connection.in_flight >= limits.window:
                    stats.overloaded += 1
                    connection.reply(request_id, OVERLOADED, b"")
                    continue
                connection.in_flight += 1
                if op == HTTP:
                    commands.start_soon(self._serve_http, connection, request_id, command)
                    continue
                if op == CALL:
                    commands.start_soon(self._serve_call, connection, request_id, command)
                    continue
                queued, ticket = self._stage(connection, request_id, command)
                if queued is None:
                    connection.in_flight -= 1
                elif isinstance(queued, Staged):
                    staged.append((request_id, queued, ticket))
                else:  # it waits on something else first: a task of its own
                    commands.start_soon(self._finish, connection, request_id, queued, ticket)
            if staged:  # the connection's settler waits for them, in the engine's order
                connection.staged.append(staged)
                connection.settle_wakeup.set()
            if connection.sending and len(connection.outbox) > 2 * limits.window:
                raise FrameError("the front-end does not read its replies")
            if len(callers) > CALLERS_MAX:  # channels times actors: a few thousand
                callers.clear()

    def _stage(
        self, connection: _Connection, request_id: int, command: Transfer
    ) -> tuple[Staged | Coroutine[Any, Any, Posted] | None, int]:
        """The channel tier's checks, then `Payments.stage` of the command's posting, and
        the ticket its reply waits for (None: refused, answered)."""
        payments = self.payments
        ticket = 0
        try:
            if not self.bank.core.ready:  # recovering: nothing is known yet, nothing done
                raise refused(Code.NOT_READY, "the core is recovering; retry shortly")
            if self.admit is not None:
                ticket = self.admit(command)
            posting = payments.transfer(
                command.caller, command.key, command.debit, command.credit,
                command.amount_minor, command.consent, command.context,
            )  # fmt: skip
            return payments.stage(posting), ticket
        except ChannelProblem as problem:
            self._reply(connection, request_id, PROBLEM, encode_problem(problem), problem.ticket)
        except Refused as refusal:
            self._reply(connection, request_id, REFUSAL, encode_refusal(refusal.refusal), ticket)
        except Exception as error:  # a defect: loud, answered FAILED, the others go on
            _log_defect(error)
            self._reply(connection, request_id, FAILED, b"", ticket)
        return None, 0

    async def _serve_settles(self, connection: _Connection) -> None:
        """Answer the connection's staged postings as the engine makes them durable, frame
        by frame in the order queued (the engine's): one task per connection, not one
        per frame. In the server's task group, so it drains what was queued after the
        connection is gone (the outcomes are counted; the replies go nowhere)."""
        while True:
            while connection.staged:
                await self._settle(connection, connection.staged.popleft())
            if connection.closed:
                return
            await connection.settle_wakeup.wait()
            connection.settle_wakeup = connection.new_signal()

    async def _settle(self, connection: _Connection, staged: list[tuple[int, Staged, int]]) -> None:
        payments = self.payments
        for request_id, posting, ticket in staged:
            await posting.request.done.wait()
            try:
                self._reply(
                    connection, request_id, OK, encode_posted(payments.settle(posting)), ticket
                )
            except Refused as refused:
                self._reply(
                    connection, request_id, REFUSAL, encode_refusal(refused.refusal), ticket
                )
            except FailedBefore:
                connection.in_flight += 1  # handed on: counted down by `_finish`
                self._commands_group().start_soon(
                    self._finish, connection, request_id, payments.replayed_failure(posting), ticket
                )
            except Exception as error:
                _log_defect(error)
                self._reply(connection, request_id, FAILED, b"", ticket)
            finally:
                connection.in_flight -= 1

    async def _finish(
        self,
        connection: _Connection,
        request_id: int,
        rest: Coroutine[Any, Any, Posted | Exception],
        ticket: int,
    ) -> None:
        """Await what a command still had to wait for (a password check, a risk
        decision, the lookup of a failed first request) and answer it."""
        try:
            outcome = await rest
            if isinstance(outcome, Posted):
                self._reply(connection, request_id, OK, encode_posted(outcome), ticket)
            elif isinstance(outcome, Refused):
                self._reply(
                    connection, request_id, REFUSAL, encode_refusal(outcome.refusal), ticket
                )
            else:
                raise outcome
        except Refused as refused:
            self._reply(connection, request_id, REFUSAL, encode_refusal(refused.refusal), ticket)
        except Exception as error:
            _log_defect(error)
            self._reply(connection, request_id, FAILED, b"", ticket)
        finally:
            connection.in_flight -= 1

    async def _serve_http(
        self, connection: _Connection, request_id: int, request: HttpRequest
    ) -> None:
        """A request passed through whole: the core's HTTP app answers it (and waits
        for its own nonce)."""
        assert self.serve_http is not None
        try:
            response = await self.serve_http(request)
            connection.reply(request_id, OK, encode_http_response(response))
        except Exception as error:
            _log_defect(error)
            connection.reply(request_id, FAILED, b"")
        finally:
            connection.in_flight -= 1

    async def _serve_call(self, connection: _Connection, request_id: int, called: Called) -> None:
        """A service call: its result, or its refusal, as the in-process caller gets it."""
        implementation, arguments, encode_result = called
        try:
            self._check_call(arguments)
            result = await implementation(*arguments)
            connection.reply(request_id, OK, encode_result(result))
        except Exception as error:
            self._call_failed(connection, request_id, error)
        finally:
            connection.in_flight -= 1

    def _call_inline(self, connection: _Connection, request_id: int, called: Called) -> None:
        """A service call whose implementation is a plain function, run now."""
        implementation, arguments, encode_result = called
        try:
            self._check_call(arguments)
            connection.reply(request_id, OK, encode_result(implementation(*arguments)))
        except Exception as error:
            self._call_failed(connection, request_id, error)

    def _check_call(self, arguments: tuple[Any, ...]) -> None:
        """Refuse a call while the core recovers, or one naming a `Caller` that is not
        the channel tier's (`check_caller`)."""
        if not self.bank.core.ready:
            raise refused(Code.NOT_READY, "the core is recovering; retry shortly")
        if self.check_caller is not None:
            for argument in arguments:
                caller = (
                    argument if isinstance(argument, Caller) else getattr(argument, "caller", None)
                )
                if isinstance(caller, Caller):
                    self.check_caller(caller)

    def _call_failed(self, connection: _Connection, request_id: int, error: Exception) -> None:
        if isinstance(error, ChannelProblem):
            self._reply(connection, request_id, PROBLEM, encode_problem(error), error.ticket)
        elif isinstance(error, Refused):
            connection.reply(request_id, REFUSAL, encode_refusal(error.refusal))
        else:  # a defect: loud, answered FAILED, the others go on
            _log_defect(error)
            connection.reply(request_id, FAILED, b"")

    def _reply(
        self, connection: _Connection, request_id: int, status: int, body: bytes, ticket: int
    ) -> None:
        """Answer now, or once the customer state is durable through `ticket` (the
        request's nonce), as the HTTP app answers."""
        if not ticket or ticket <= self.bank.core.state.durable_ticket:
            connection.reply(request_id, status, body)
            return
        self._gated.append((ticket, connection, (request_id, status, body)))
        self._gate_wakeup.set()

    async def _serve_gate(self) -> None:
        """Release the gated replies: one flush through the engine for all that wait."""
        while True:
            await self._gate_wakeup.wait()
            self._gate_wakeup = self._new_signal()
            gated, self._gated = self._gated, []
            state = self.bank.core.state
            try:
                await state.flush_through(max(ticket for ticket, _, _ in gated))
            except Refused as refused:  # the store failed: the nonce's fate is unknown
                body = encode_refusal(refused.refusal)
                for _, connection, (request_id, _, _) in gated:
                    connection.reply(request_id, REFUSAL, body)
                continue
            for _, connection, reply in gated:
                connection.reply(*reply)

    def _commands_group(self) -> TaskGroup:
        assert self._commands is not None
        return self._commands

    async def _write_replies(self, connection: _Connection, scope: anyio.CancelScope) -> None:
        """Send the replies as they complete, those ready together in one frame; a
        connection that broke ends the connection (`scope`)."""
        payload_size_max = self.limits.payload_size_max
        stream = connection.stream
        try:
            while True:
                await connection.wakeup.wait()
                connection.wakeup = connection.new_signal()
                replies, connection.outbox = connection.outbox, []
                connection.sending = True
                for frame in frames_of(REPLIES, replies, payload_size_max):
                    await stream.send(frame)
                connection.sending = False
        except CLOSED:
            connection.closed = True
            scope.cancel()


def _peer(stream: ByteStream) -> str:
    from anyio.abc import SocketAttribute

    address = stream.extra(SocketAttribute.remote_address, None)
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address) if address else "unix"


def _log_defect(error: Exception) -> None:
    logger.error(
        _event("link_unhandled_exception", error=repr(error), trace=traceback.format_exc())
    )


def _event(name: str, **fields: Any) -> str:
    return orjson.dumps({"event": name, **fields}).decode()
