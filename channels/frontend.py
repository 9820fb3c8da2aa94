"""A front-end process: HTTP in front, the core behind the core link.

`tally serve --workers N` runs N of these on one machine beside one core process, all
accepting on the same listening socket; `tally gateway --core ADDRESS` runs one on
another machine. A front-end holds no state of the bank: it takes the HTTP work off the
core (the server, TLS, the body read, the signature's HMAC, JSON parsing and the schema)
and forwards commands.

- **The single transfer** (POST /v1/transfers, the hot route) is checked here whole as
  the core's app checks it: the channel, key and timestamp, the HMAC, the operation,
  the Idempotency-Key, the JSON and its schema, the proof headers. It then goes to the
  core as a typed `Transfer` command with the request's nonce; the core checks the
  nonce in its one replay guard, takes the channel's rate from its one bucket and
  runs the services (core/link/server.py, channels/link.py `CoreHooks`). The answer is
  rendered here from the `Posted` or the refusal, by the same functions as in the
  core's app. A request this path does not take as it is (no valid signature, an
  acting teller, a body the quick check does not accept) is passed through instead,
  so every refusal is the core app's own, worded and counted once.
- **ISO 8583** terminals, when this front-end listens for them, are answered by the
  adapter here, on the core's services over the link (channels/iso8583/frontend.py);
  it is told of each registry this front-end installs (`registry_listeners`).
- **Every other request** is passed through whole (method, path, headers, body and
  the client's address) and answered by the core's app, the same as if it had come to
  the core. Converting more routes to typed commands is the next step (the issue).
- **The channel registry** is the core's: fetched over the link at connect and every
  second (an approved change reaches every front-end within a second).
- **The core out of reach** (not connected, the connection lost, its window full):
  503 with Retry-After; the client retries with its Idempotency-Key, and the retry
  meets the first request's outcome in the core.

The in-flight guard (409 for a key already being served) is per front-end: two
front-ends given the same key at once both forward it, and the ledger's idempotency
answers the second as a replay of the first.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import anyio
import orjson

from channels.http.app import (
    PREAUTH_BODY_SIZE_MAX,
    READ_TIMEOUT_S,
    WWW_AUTHENTICATE,
    check_signature,
    fresh,
    in_flight_problem,
    internal_error,
    json_body,
    operation_key,
    proofs,
)
from channels.http.body import BodyTooLarge, Disconnected, read_body
from channels.http.handlers import Reply, posted_reply, transfer_fields
from channels.http.problems import PROBLEM_CONTENT_TYPE, Problem, refusal_problem
from channels.http.routes import ROUTES, Router
from channels.http.schema import quick_check
from channels.http.signing import Credentials, parse_authorization
from channels.registry import ChannelEntry, Registry, parse_registry_text
from core.link.client import RETRY_AFTER_S, LinkClient, LinkFailed, LinkOverloaded, LinkUnavailable
from core.link.ops import ChannelProblem, HttpRequest, Transfer
from core.services.commands import Caller
from core.services.refusals import Refused
from limits.rules import RuleSet

logger = logging.getLogger("tally.frontend")
REGISTRY_POLL_S = 1.0
PASS_THROUGH_BODY_SIZE_MAX = 16 << 20  # the core's app applies each route's own cap
JSON = b"application/json"
Signed = tuple[Credentials, ChannelEntry]  # a request's credentials and the channel they name


class FrontEnd:
    def __init__(
        self,
        link: LinkClient,
        rules: RuleSet,
        *,
        window_s: float = 300.0,
        read_timeout_s: float = READ_TIMEOUT_S,
        body_size_max: int = PASS_THROUGH_BODY_SIZE_MAX,
    ) -> None:
        """`rules`: the limit rules a registry is checked against when parsed;
        `window_s`: the signature's timestamp window (the core's `--nonce-window-s`)."""
        self.link = link
        self.rules = rules
        self.window_s = window_s
        self.read_timeout_s = read_timeout_s
        self.body_size_max = body_size_max
        self.registry: Registry | None = None  # the core's, once fetched
        # Told of each registry installed (the first, and every change): the terminals'.
        self.registry_listeners: list[Callable[[Registry], None]] = []
        self.callers: dict[str, Caller] = {}
        self.router = Router(ROUTES)
        transfer = next(route for route in ROUTES if route.operation == "transfer")
        self.transfer_route = transfer
        assert transfer.body is not None
        quick = quick_check(transfer.body)
        assert quick is not None
        self.quick_transfer = quick
        self.in_flight: set[tuple[int, str]] = set()
        self.counts = {"fast": 0, "passed": 0, "unavailable": 0}

    # --- ASGI -------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        try:
            headers = dict(scope["headers"])
            signed = self._signed(headers)
            cap = PREAUTH_BODY_SIZE_MAX if signed is None else self.body_size_max
            body = await self._read_body(headers, receive, cap)
            if signed is not None and path == "/v1/transfers" and scope["method"] == "POST":
                reply = await self._transfer(scope, headers, body, signed)
            else:
                reply = await self._pass_through(scope, body)
        except Problem as problem:
            reply = Reply(problem.status, problem.encode(path), problem.headers,
                          PROBLEM_CONTENT_TYPE)  # fmt: skip
            if problem.status == 401:
                reply.headers.append(WWW_AUTHENTICATE)
        except _Disconnected:
            return
        except LinkFailed as failed:  # a defect in the core (logged there): as in-process
            reply = _internal_error(path, f"{failed}; the failure was logged by the core")
        except Exception as error:  # a defect here: loud, answered as the core's app does
            logger.error(
                _event("frontend_unhandled_exception", path=path[:200], error=repr(error),
                       traceback=traceback.format_exc())
            )  # fmt: skip
            reply = _internal_error(path, "the failure was logged by the front-end")
        response_headers = [
            (b"content-type", reply.content_type),
            (b"content-length", b"%d" % len(reply.body)),
            *reply.headers,
        ]
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": response_headers}
        )
        await send({"type": "http.response.body", "body": reply.body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with anyio.create_task_group() as task_group:
            await task_group.start(self.link.serve_link_client)
            task_group.start_soon(self._serve_registry)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            task_group.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    async def _serve_registry(self) -> None:
        """Keep the core's channel registry: at every connection and once a second."""
        while True:
            await self.link.connected.wait()
            try:
                version, text = await self.link.registry()
            except (LinkUnavailable, LinkOverloaded, LinkFailed):
                await anyio.sleep(REGISTRY_POLL_S)
                continue
            current = self.registry
            if current is None or current.version != version or current.text != text:
                try:
                    registry = parse_registry_text(text, "the core's registry", self.rules)
                except Exception as error:  # keep the one in force; loud
                    logger.error(_event("frontend_registry_refused", error=repr(error)[:500]))
                else:
                    self.callers = {
                        name: Caller(name, entry.kind, entry.ledger_id)
                        for name, entry in registry.channels.items()
                    }
                    self.registry = registry
                    logger.info(_event("frontend_registry", version=registry.version))
                    for listener in self.registry_listeners:
                        listener(registry)
            await anyio.sleep(REGISTRY_POLL_S)

    def _signed(self, headers: dict[bytes, bytes]) -> Signed | None:
        """The credentials and channel of a request whose Authorization header names a
        channel and key of the registry at a current timestamp (its signature is not
        checked yet); None for any other. Such a request may send the pass-through cap
        before it is authenticated (the core's app applies the channel's and the
        route's own); any other, `PREAUTH_BODY_SIZE_MAX`."""
        registry = self.registry
        authorization = headers.get(b"authorization")
        if registry is None or authorization is None:
            return None
        credentials = parse_authorization(authorization.decode("latin-1"))
        if type(credentials) is not Credentials:
            return None
        channel = registry.channels.get(credentials.channel)
        if channel is None or not fresh(channel, credentials, self.window_s):
            return None
        return credentials, channel

    async def _read_body(self, headers: dict[bytes, bytes], receive: Any, cap: int) -> bytes:
        """The whole body, under `cap` and within the read timeout."""
        with anyio.move_on_after(self.read_timeout_s) as late:
            try:
                body = await read_body(headers, receive, cap)
            except BodyTooLarge:
                raise _too_large(cap) from None
        if late.cancelled_caught:
            raise Problem(408, "request-timeout", "The request body did not arrive in time",
                          headers=[(b"connection", b"close")])  # fmt: skip
        return body

    # --- the single transfer ----------------------------------------------------

    async def _transfer(
        self, scope: dict[str, Any], headers: dict[bytes, bytes], body: bytes, signed: Signed
    ) -> Reply:
        command = self._transfer_command(scope, headers, body, signed)
        if command is None:
            return await self._pass_through(scope, body)
        self.counts["fast"] += 1
        flight = (command.caller.ledger_id, command.key)
        if flight in self.in_flight:
            raise in_flight_problem()
        self.in_flight.add(flight)
        try:
            posted = await self.link.transfer(command)
        except Refused as refused:
            raise refusal_problem(refused.refusal) from None
        except ChannelProblem as problem:
            raise Problem(
                problem.status, problem.slug, problem.title, problem.detail,
                headers=[(name.encode(), value.encode()) for name, value in problem.headers],
            ) from None  # fmt: skip
        except (LinkUnavailable, LinkOverloaded) as error:
            raise self._unavailable(error) from None
        finally:
            self.in_flight.discard(flight)
        return posted_reply(posted)

    def _transfer_command(
        self, scope: dict[str, Any], headers: dict[bytes, bytes], body: bytes, signed: Signed
    ) -> Transfer | None:
        """The transfer command of a request this front-end takes as it is (`_signed`
        found its channel and key); None to pass it through (anything unusual: the core's
        app answers it, precisely)."""
        credentials, channel = signed
        if (
            b"tally-actor" in headers
            or headers.get(b"content-type", JSON) != JSON
            or channel.disabled
            or channel.actor_required
            or "transfer" not in channel.operations
        ):
            return None
        try:
            check_signature(scope, headers, body, credentials, channel)
            key = operation_key(self.transfer_route, headers)
            parsed = json_body("application/json", body)
            if not self.quick_transfer(parsed):
                return None
            token, _ = proofs(headers)
            debit, credit, amount, consent, context = transfer_fields(parsed, token)
        except Problem:
            return None  # the core's app says exactly what is wrong
        caller = self.callers.get(channel.name)
        if caller is None:  # the registry changed while the body was read
            return None
        return Transfer(
            caller,
            key,
            debit,
            credit,
            amount,
            consent,
            context,
            credentials.nonce,
            int(credentials.timestamp),
        )

    # --- everything else ----------------------------------------------------------

    async def _pass_through(self, scope: dict[str, Any], body: bytes) -> Reply:
        self.counts["passed"] += 1
        client = scope.get("client")
        request = HttpRequest(
            scope["method"],
            scope["path"],
            scope.get("raw_path") or scope["path"].encode("latin-1"),
            scope.get("query_string", b""),
            list(scope["headers"]),
            body,
            None if client is None else (str(client[0]), int(client[1])),
            scope.get("scheme", "http"),
        )
        try:
            response = await self.link.http(request)
        except (LinkUnavailable, LinkOverloaded) as error:
            raise self._unavailable(error) from None
        content_type = JSON
        headers: list[tuple[bytes, bytes]] = []
        for name, value in response.headers:
            if name == b"content-type":
                content_type = value
            elif name != b"content-length":
                headers.append((name, value))
        return Reply(response.status, response.body, headers, content_type)

    def _unavailable(self, error: Exception) -> Problem:
        self.counts["unavailable"] += 1
        detail = str(error)
        if isinstance(error, LinkUnavailable) and error.unknown:
            detail += "; the request's outcome is unknown: retry it with the same Idempotency-Key"
        return Problem(
            503,
            "unavailable",
            "The bank's core is out of reach; try again shortly",
            detail,
            headers=[(b"retry-after", str(RETRY_AFTER_S).encode())],
        )


def _too_large(cap: int) -> Problem:
    return Problem(413, "body-too-large", "The request body is too large",
                   f"at most {cap} bytes", headers=[(b"connection", b"close")],
                   size_max=cap)  # fmt: skip


def _internal_error(path: str, detail: str) -> Reply:
    problem = internal_error(detail)
    return Reply(problem.status, problem.encode(path), [], PROBLEM_CONTENT_TYPE)


_Disconnected = Disconnected


def _event(name: str, **fields: Any) -> str:
    return orjson.dumps({"event": name, "ts": time.time(), **fields}).decode()
