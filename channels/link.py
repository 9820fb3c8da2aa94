"""`tally serve --link ADDRESS`: the core link listener in the HTTP app's lifespan.

The server keeps answering HTTP itself and, beside it, serves front-end processes over
the core link (core/link): they send the services' typed commands, the core runs them
on the same bank. The listener binds on `lifespan.startup` before the bank starts (an
OSError fails the startup, which stops the server: a core that cannot be reached is
not started half-way) and stops after the app on `lifespan.shutdown`.

`CoreHooks` gives the link the channel tier kept in the core, from the core's own HTTP
app: each forwarded transfer's nonce is checked and staged in the one replay guard and
its channel's rate limit taken from the one bucket, so both hold across every front-end
and the core's own HTTP listener (the documented rule of the channel tier:
channels/tier.py); a request passed through whole is answered by that app, as if it
had come to it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import TaskStatus

from channels.http.app import nonce_reused, operation_not_allowed
from channels.http.problems import Problem
from channels.registry import ChannelEntry
from core.link.address import LinkAddress, TlsFiles, open_link_listener
from core.link.calls import CallTable
from core.link.ops import ChannelProblem, HttpRequest, HttpResponse, Transfer
from core.link.server import LinkLimits, LinkServer
from core.services.commands import Caller

if TYPE_CHECKING:
    from channels.http.app import App

logger = logging.getLogger("tally.link")
AsgiApp = Any


class AppWithLink:
    def __init__(
        self, app: AsgiApp, server: LinkServer, address: LinkAddress, tls: TlsFiles | None
    ) -> None:
        self.app = app
        self.server = server
        self.address = address
        self.tls = tls

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        startup = await receive()
        assert startup["type"] == "lifespan.startup", startup
        try:
            listener = await open_link_listener(self.address, self.tls)
        except (OSError, ValueError) as error:
            await send(
                {"type": "lifespan.startup.failed", "message": f"link {self.address}: {error}"}
            )
            return
        listening = {"event": "link_listening", "address": str(self.address)}
        logger.info(orjson.dumps(listening).decode())
        replayed = False
        link_scope = anyio.CancelScope()
        link_stopped = anyio.Event()

        async def app_receive() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return startup  # type: ignore[no-any-return]
            return await receive()  # type: ignore[no-any-return]

        async def app_send(message: dict[str, Any]) -> None:
            # The link stops before the server is told the app has: once it is, the server
            # cancels the lifespan (hypercorn), which must find nothing left to unwind.
            if message["type"] == "lifespan.shutdown.complete":
                link_scope.cancel()
                await link_stopped.wait()
                with anyio.CancelScope(shield=True):
                    await listener.aclose()
            await send(message)

        async def serve_link(*, task_status: TaskStatus[None]) -> None:
            try:
                with link_scope:
                    await self.server.serve_link(listener, task_status=task_status)
            finally:
                link_stopped.set()

        try:
            async with anyio.create_task_group() as task_group:
                await task_group.start(serve_link)
                await self.app(scope, app_receive, app_send)
                link_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()  # again after a shutdown: closing twice is harmless


class CoreHooks:
    """The core HTTP app's channel tier and pass-through, for the link server."""

    def __init__(self, app: App) -> None:
        self.app = app

    def admit(self, command: Transfer) -> int:
        """The checks the app makes after a signature, for a transfer a front-end
        verified: the channel in force and not disabled, the operation allowed, the nonce
        not used before (staged: the answer waits for the returned ticket), the rate."""
        app = self.app
        name = command.caller.name
        channel = app.registry.channels.get(name)
        ticket = 0
        try:
            if channel is None:
                raise Problem(401, "channel-unknown", "Unknown channel")
            self._check_caller(command.caller, channel)
            if command.nonce:
                if not app.replay.first_use(name, command.nonce, command.timestamp_s):
                    raise nonce_reused()
                ticket = app.core.state.staged_ticket
            if channel.disabled:
                raise Problem(403, "channel-disabled", "This channel is disabled")
            if "transfer" not in channel.operations:
                raise operation_not_allowed(channel, "transfer")
            app.take_rate(channel)
        except Problem as problem:
            raise channel_problem(problem, ticket) from None
        return ticket

    def check_caller(self, caller: Caller) -> None:
        """The `Caller` of a front-end's service call, checked as a transfer's is
        (`_check_caller`); `ChannelProblem` if it is not the registry's."""
        channel = self.app.registry.channels.get(caller.name)
        try:
            if channel is None:
                raise Problem(401, "channel-unknown", "Unknown channel")
            self._check_caller(caller, channel)
        except Problem as problem:
            raise channel_problem(problem) from None

    def _check_caller(self, caller: Caller, channel: ChannelEntry) -> None:
        """A front-end names a channel as the core's registry has it (its kind and ledger
        id) and no acting teller (a request with one is passed through whole, and the
        core's app checks the teller's signature): the core does not take a front-end's
        word for more than the channel's name. Else 403, logged."""
        if (
            caller.kind != channel.kind
            or caller.ledger_id != channel.ledger_id
            or caller.actor_id
            or caller.actor_role
        ):
            logger.warning(
                orjson.dumps(
                    {"event": "link_caller_refused", "channel": caller.name, "kind": caller.kind,
                     "ledger_id": caller.ledger_id, "actor": caller.actor_id}
                ).decode()
            )  # fmt: skip
            raise Problem(
                403,
                "caller-not-allowed",
                "The front-end named the channel otherwise than this core's registry",
                "a channel's kind and ledger id are the registry's, and an acting teller's"
                " request is passed through whole",
            )

    async def serve_http(self, request: HttpRequest) -> HttpResponse:
        """Answer a passed-through request with the app, as if it had come to it."""
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query,
            "root_path": "",
            "headers": request.headers,
            "client": request.client,
            "server": None,
        }
        sent = False
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return HttpResponse(status, headers, b"".join(parts))

    def registry(self) -> tuple[int, str]:
        registry = self.app.registry
        return registry.version, registry.text


def channel_problem(problem: Problem, ticket: int = 0) -> ChannelProblem:
    return ChannelProblem(
        problem.status,
        problem.slug,
        problem.title,
        problem.detail,
        [(name.decode("latin-1"), value.decode("latin-1")) for name, value in problem.headers],
        ticket,
    )


def link_server(
    app: App, secret: bytes, limits: LinkLimits, calls: CallTable | None = None
) -> LinkServer:
    """The link server of a core whose HTTP app is `app`, with its channel tier;
    `calls`: the service calls it answers (those of the front-ends' ISO 8583 adapters)."""
    hooks = CoreHooks(app)
    return LinkServer(
        app.bank,
        secret,
        limits,
        admit=hooks.admit,
        serve_http=hooks.serve_http,
        registry=hooks.registry,
        calls=calls,
        check_caller=hooks.check_caller,
    )
