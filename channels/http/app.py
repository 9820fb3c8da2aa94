"""The ASGI application: one pipeline every /v1 request goes through, in this order.

    route (404/405) -> ready (503) -> body read under the size cap (413)
    -> signature: channel, key, timestamp window, HMAC, nonce (401/403)
    -> operation allowed for the channel (403) -> rate limit (429)
    -> Idempotency-Key present on money routes (400) -> content type (415)
    -> JSON parse (400) and schema (422) -> channel kind (403, core.services.policy)
    -> key not in flight (409) -> the handler and its service (a refusal is
    rendered from the one table in problems.py) -> the request's nonce durable
    -> response + access log

The nonce of a signed request is staged in the customer state and made
durable with the next group the engine forms (core/services/state.py): a
request that went through the engine is answered with its nonce already
durable; any other (a refusal, a read of the customer state) waits for one
shared group commit (`flush_through`) before its answer goes out, so no
answered request can be replayed after a crash.

Plain ASGI with no framework, so any ASGI server can run it; the bank (engine,
journal, channel state) lives in the app's lifespan task, so whatever server
runs the app runs the bank on the same event loop. Nothing a client sends
turns into a 500: every refusal is a `Problem`; an unexpected exception is a
defect, logged with its traceback and answered 500 so the defect is visible.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import IO, Any
from urllib.parse import parse_qsl

import anyio
import orjson

from channels.http import signing
from channels.http.handlers import Context, Handlers, Reply
from channels.http.metrics import Metrics, register_collectors
from channels.http.openapi import openapi_document
from channels.http.problems import PROBLEM_CONTENT_TYPE, Problem, refusal_problem
from channels.http.routes import ROUTES, Route, Router
from channels.http.schema import check_object, check_value, fail, quick_check
from channels.registry import ChannelEntry, Registry
from channels.tier import InFlight, RateLimits, ReplayGuard
from core.services import policy
from core.services.bank import Bank
from core.services.commands import Caller
from core.services.lifecycle import storage_refusal
from core.services.refusals import Refused

# The signature check in C (cext/http_auth.pyx), unless TALLY_KERNEL=reference asks for its
# plain-Python twin (chosen explicitly, never as a fallback on a missing build).
verify_request: Callable[..., bool] = signing.verify_request
if os.environ.get("TALLY_KERNEL", "kernel") != "reference":
    from cext.http_auth import verify_request

logger = logging.getLogger("tally.channels")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

WWW_AUTHENTICATE = (b"www-authenticate", signing.SCHEME_BYTES)
JSON = b"application/json"


class AccessLog:
    """One JSON line per request on a buffered stream, flushed by the housekeeping tick.

    A log that cannot be written (its disk is full) must not take the server down
    with it: the lines are dropped and counted (`lines_dropped`), the first failure
    of a run of them is reported on the server log, and writing resumes by itself.
    """

    def __init__(self, stream: IO[bytes] | None) -> None:
        self.stream = stream
        self.lines_dropped = 0
        self.failing = False

    def write(self, record: dict[str, Any]) -> None:
        if self.stream is not None:
            try:
                self.stream.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            except OSError as error:
                self._failed(error)

    def flush(self) -> None:
        if self.stream is not None:
            try:
                self.stream.flush()
            except OSError as error:
                self._failed(error)
            else:
                self.failing = False

    def _failed(self, error: OSError) -> None:
        self.lines_dropped += 1
        if not self.failing:
            self.failing = True
            logger.error(orjson.dumps({"event": "access_log_failed", "error": str(error)}).decode())


class App:
    def __init__(
        self,
        bank: Bank,
        registry: Registry,
        *,
        metrics: Metrics | None = None,
        access_log: IO[bytes] | None = None,
        body_size_max: int = 0,
    ) -> None:
        self.bank = bank
        self.core = bank.core
        self.registry = registry
        self.router = Router(ROUTES)
        self.metrics = metrics or Metrics()
        register_collectors(self.metrics, bank)
        self.handlers = Handlers(bank, self.metrics)
        self.rate_limits = RateLimits(registry)
        self.replay = ReplayGuard(bank.core)
        self.in_flight = InFlight()
        self.callers = {
            name: Caller(name, entry.kind, entry.ledger_id)
            for name, entry in registry.channels.items()
        }
        self.access_log = AccessLog(access_log)
        self.body_size_max = body_size_max or max(
            (entry.body_size_max for entry in registry.channels.values()), default=1 << 20
        )
        self.openapi = orjson.dumps(openapi_document())
        self.window_s = bank.settings.nonce_window_s
        self.quick_checks: dict[str, Callable[[Any], bool]] = {}
        for route in ROUTES:
            quick = quick_check(route.body) if route.body is not None else None
            if quick is not None:
                self.quick_checks[route.operation] = quick

    # --- ASGI -------------------------------------------------------------------

    async def lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with anyio.create_task_group() as task_group:
            await task_group.start(self.bank.serve)
            task_group.start_soon(self._flush_logs)
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            await self.core.flush_at_stop()  # staged nonces and deletions, durably
            task_group.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    async def _flush_logs(self) -> None:
        while True:
            await anyio.sleep(0.1)
            self.access_log.flush()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One coroutine frame from the server to the Bank operation: the body read, the
        # dispatch and the Idempotency-Key in-flight guard are written out here, because
        # every frame and call on this path is paid by every single-transfer request.
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.lifespan(receive, send)
            return
        started = perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        route_name = "unmatched"
        channel_name = "-"
        reply: Reply
        problem: Problem | None = None
        idempotency_key = ""
        nonce_ticket = 0
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            try:
                if not path.startswith("/v1/"):
                    route_name = path if path in _UNSIGNED else "unmatched"
                    reply = self.unsigned(method, path)
                else:
                    route, params = self.route(method, path)
                    route_name = route.operation
                    headers = dict(scope["headers"])
                    declared = headers.get(b"content-length")
                    if declared is not None and declared.isdigit():
                        if int(declared) > self.body_size_max:
                            raise self.too_large()
                        message = await receive()
                        if message["type"] == "http.request" and not message.get(
                            "more_body", False
                        ):  # the whole body in one message: no loop, no join
                            body = message.get("body", b"")
                            if len(body) > self.body_size_max:
                                raise self.too_large()
                        else:
                            body = await self.read_body(headers, receive, message)
                    else:
                        body = await self.read_body(headers, receive, None)
                    channel = self.authenticate(scope, headers, body)
                    nonce_state = self.core.state  # its nonce was staged last: this ticket
                    nonce_ticket = nonce_state.staged_ticket
                    channel_name = channel.name
                    idempotency_key = self.authorize(route, channel, headers, len(body))
                    ctx = self.context(
                        route, channel, params, scope, headers, body, idempotency_key
                    )
                    if route.policy.kinds:  # the one channel-policy guard (core.services.policy)
                        policy.admit(ctx.caller, route.policy)
                    handler = getattr(self.handlers, route.operation)
                    if not idempotency_key:
                        reply = await handler(ctx)
                    else:
                        flight = (channel.ledger_id, idempotency_key)
                        in_flight = self.in_flight.keys
                        if flight in in_flight:
                            raise in_flight_problem()
                        in_flight.add(flight)
                        try:
                            reply = await handler(ctx)
                        finally:
                            in_flight.discard(flight)
            except (Problem, Refused) as error:
                refused = error if isinstance(error, Problem) else refusal_problem(error.refusal)
                problem = refused
                reply = Reply(
                    refused.status, refused.encode(path), refused.headers, PROBLEM_CONTENT_TYPE
                )
                if refused.status == 401:
                    reply.headers.append(WWW_AUTHENTICATE)
            except _Disconnected:
                return
            except Exception as error:  # a defect: make it loud, keep serving others
                logger.error(
                    orjson.dumps(
                        {
                            "event": "unhandled_exception",
                            "route": route_name,
                            "error": repr(error),
                            "traceback": traceback.format_exc(),
                        }
                    ).decode()
                )
                problem = Problem(500, "internal-error", "Internal error", "the failure was logged")
                reply = Reply(500, problem.encode(path), [], PROBLEM_CONTENT_TYPE)
            if nonce_ticket and nonce_ticket > nonce_state.durable_ticket:  # wait for it
                try:
                    await nonce_state.flush_through(nonce_ticket)
                except Refused as error:
                    problem = refusal_problem(error.refusal)
                    reply = Reply(
                        problem.status, problem.encode(path), problem.headers, PROBLEM_CONTENT_TYPE
                    )
            response_body = reply.body
            response_headers = [
                (b"content-type", reply.content_type),
                (b"content-length", b"%d" % len(response_body)),
            ]
            if reply.headers:
                response_headers += reply.headers
            await send(
                {"type": "http.response.start", "status": reply.status, "headers": response_headers}
            )
            await send({"type": "http.response.body", "body": response_body})
        finally:
            metrics.in_flight -= 1
        elapsed = perf_counter() - started
        metrics.observe_request(route_name, reply.status, channel_name, elapsed)
        if self.access_log.stream is not None:
            record: dict[str, Any] = {
                "ts": time.time(),
                "event": "http",
                "method": method,
                "path": path,
                "route": route_name,
                "status": reply.status,
                "channel": channel_name,
                "ms": round(elapsed * 1000, 3),
                "bytes_out": len(response_body),
            }
            if idempotency_key:
                record["idempotency_key"] = idempotency_key
            if problem is not None:
                record["problem"] = problem.slug
            for name, _ in reply.headers:
                if name == b"idempotent-replayed":
                    record["replayed"] = True
            self.access_log.write(record)

    def route(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The /v1 route of a request (404, 405), once the bank is ready (503)."""
        matched = self.router.match(path)
        if matched is None:
            raise Problem(404, "not-found", "No such route", path)
        methods, params = matched
        route = methods.get(method)
        if route is None:
            raise Problem(
                405,
                "method-not-allowed",
                "Method not allowed on this route",
                f"allowed: {', '.join(sorted(methods))}",
                headers=[(b"allow", ", ".join(sorted(methods)).encode())],
            )
        if not self.core.ready:
            if self.core.storage_failure is not None:
                raise refusal_problem(
                    storage_refusal("the store cannot write; the server recovers by itself").refusal
                )
            raise Problem(
                503,
                "not-ready",
                "The server is recovering; try again shortly",
                headers=[(b"retry-after", b"1")],
            )
        return route, params

    # --- the pipeline -------------------------------------------------------------

    def unsigned(self, method: str, path: str) -> Reply:
        if path not in _UNSIGNED:
            raise Problem(404, "not-found", "No such route", path)
        if method != "GET":
            raise Problem(405, "method-not-allowed", "Only GET here", headers=[(b"allow", b"GET")])
        if path == "/healthz":
            return Reply(200, b'{"status":"ok"}')
        if path == "/readyz":
            core = self.core
            if core.ready:
                ready: dict[str, Any] = {"status": "ready", "recovery": core.recovery_info}
                snapshot_error = getattr(core.store, "snapshot_error", None)
                if snapshot_error:  # still ready: the journal is what was acknowledged
                    ready["snapshot_error"] = snapshot_error
                return Reply(200, orjson.dumps(ready))
            body = {"status": "failed" if core.failed else "recovering"}
            if core.failed:
                body["error"] = core.failed
            return Reply(503, orjson.dumps(body), [(b"retry-after", b"1")])
        if path == "/metrics":
            return Reply(
                200, self.metrics.render(), [], b"text/plain; version=0.0.4; charset=utf-8"
            )
        return Reply(200, self.openapi)

    async def read_body(
        self, headers: dict[bytes, bytes], receive: Receive, message: dict[str, Any] | None
    ) -> bytes:
        """The whole body under the cap (`message`: the first one, if already received)."""
        cap = self.body_size_max
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            raise self.too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            if message is None:
                message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > cap:
                    raise self.too_large()
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
            message = None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def too_large(self) -> Problem:
        cap = self.body_size_max
        return Problem(
            413,
            "body-too-large",
            "The request body is too large",
            f"at most {cap} bytes",
            size_max=cap,
        )

    def authenticate(self, scope: Scope, headers: dict[bytes, bytes], body: bytes) -> ChannelEntry:
        value = headers.get(b"authorization")
        if value is None:
            raise Problem(
                401,
                "signature-missing",
                "The request is not signed",
                f"send an Authorization: {signing.SCHEME} header (see channels/http/signing.py)",
            )
        credentials = signing.parse_authorization(value.decode("latin-1"))
        if isinstance(credentials, str):
            raise Problem(
                401, "authorization-malformed", "The Authorization header is malformed", credentials
            )
        channel = self.registry.channels.get(credentials.channel)
        if channel is None:
            raise Problem(401, "channel-unknown", "Unknown channel")
        secret = channel.secrets.get(credentials.key_id)
        if secret is None:
            raise Problem(401, "key-unknown", "Unknown or retired key id for this channel")
        timestamp = credentials.timestamp
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise Problem(401, "authorization-malformed", "timestamp must be Unix seconds")
        skew = abs(time.time() - int(timestamp))
        if skew > self.window_s:
            raise Problem(
                401,
                "timestamp-out-of-window",
                "The request timestamp is too far from now",
                f"allowed: +/-{self.window_s} s",
            )
        nonce = credentials.nonce
        if not signing.NONCE_PATTERN.fullmatch(nonce):
            raise Problem(
                401, "authorization-malformed", "nonce must be 8-64 characters of A-Z a-z 0-9 _ -"
            )
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        idempotency = headers.get(b"idempotency-key", b"").decode("latin-1")
        if not verify_request(
            secret,
            credentials.channel,
            credentials.key_id,
            scope["method"],
            path,
            scope["query_string"].decode("latin-1"),
            timestamp,
            nonce,
            idempotency,
            body,
            credentials.signature,
        ):
            raise Problem(401, "signature-invalid", "The signature does not match the request")
        if not self.replay.first_use(channel.name, nonce, int(timestamp)):
            raise Problem(
                401,
                "nonce-reused",
                "This nonce was already used",
                "sign every request with a fresh nonce",
            )
        if channel.disabled:
            raise Problem(403, "channel-disabled", "This channel is disabled")
        return channel

    def authorize(
        self, route: Route, channel: ChannelEntry, headers: dict[bytes, bytes], size: int
    ) -> str:
        if route.operation not in channel.operations:
            raise Problem(
                403,
                "operation-not-allowed",
                "This channel may not use this operation",
                f"channel {channel.name} may not {route.operation}",
            )
        if size > channel.body_size_max:
            raise Problem(
                413,
                "body-too-large",
                "The request body is too large for this channel",
                f"at most {channel.body_size_max} bytes",
                size_max=channel.body_size_max,
            )
        wait_s = self.rate_limits.take(channel.name, time.monotonic())
        if wait_s > 0:
            self.metrics.rate_limited[channel.name] = (
                self.metrics.rate_limited.get(channel.name, 0) + 1
            )
            retry = max(1, int(wait_s + 0.999))
            raise Problem(
                429,
                "rate-limited",
                "This channel is over its request rate",
                f"{channel.rate_per_s:g} requests/s, burst {channel.burst}",
                headers=[(b"retry-after", str(retry).encode())],
            )
        key = headers.get(b"idempotency-key")
        if key is None:
            if route.policy.money:
                raise Problem(
                    400,
                    "idempotency-key-missing",
                    "This operation needs an Idempotency-Key header",
                    "send a unique key per operation; reuse it only to retry the same request",
                )
            return ""
        text = key.decode("latin-1")
        if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
            text = text[1:-1]  # the draft's sf-string form
        if (
            not 1 <= len(text) <= IDEMPOTENCY_KEY_LENGTH_MAX
            or not text.isascii()
            or not text.isprintable()
            or " " in text
        ):
            raise Problem(
                400,
                "idempotency-key-malformed",
                "The Idempotency-Key must be 1-255 visible ASCII characters",
            )
        return text

    def context(
        self,
        route: Route,
        channel: ChannelEntry,
        params: dict[str, str],
        scope: Scope,
        headers: dict[bytes, bytes],
        body: bytes,
        key: str,
    ) -> Context:
        raw_type = headers.get(b"content-type", b"")
        content_type = (
            "application/json"  # what nearly every request sends: no parsing
            if raw_type == JSON
            else raw_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        )
        query: dict[str, str] = {}
        if scope["query_string"]:
            query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            for name, value in query.items():
                spec = route.query.get(name)
                if spec is None:
                    raise fail(f"/{name}", f"unknown query parameter {name[:64]!r}")
                number = (
                    int(value) if spec.kind == "integer" and _INTEGER_RE.fullmatch(value) else value
                )
                check_value(number, spec, f"/{name}")
        parsed: Any = None
        if route.body is None:
            if body:
                raise Problem(415, "unsupported-media-type", "This route takes no request body")
        elif route.binary and content_type == "application/octet-stream":
            parsed = body
        elif not body and route.body_optional:
            parsed = {}
        else:
            if content_type != "application/json":
                raise Problem(
                    415,
                    "unsupported-media-type",
                    "Send the body as application/json",
                    f"got {content_type or 'no content type'}",
                )
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError as error:
                raise Problem(
                    400, "malformed-json", "The body is not valid JSON", str(error)
                ) from None
            if route.operation == "batch":
                if (
                    not isinstance(parsed, dict)
                    or set(parsed) != {"transfers"}
                    or not isinstance(parsed["transfers"], list)
                ):
                    check_object(parsed, route.body)
                if not parsed["transfers"]:
                    raise fail("/transfers", "needs at least 1 item(s)")
            else:
                quick = self.quick_checks.get(route.operation)
                if quick is None or not quick(parsed):
                    check_object(parsed, route.body)
        token = headers.get(b"tally-transaction-token", b"").decode("latin-1")
        caller = self.callers[channel.name]
        return Context(
            channel, caller, params, query, parsed, key, token, content_type or "application/json"
        )


_INTEGER_RE = re.compile(r"-?[0-9]{1,19}")
IDEMPOTENCY_KEY_LENGTH_MAX = 255
_UNSIGNED = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def in_flight_problem() -> Problem:
    return Problem(
        409,
        "idempotency-key-in-flight",
        "A request with this Idempotency-Key is still being processed",
        "wait for its answer, then retry to get the same response",
        headers=[(b"retry-after", b"1")],
    )


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


def access_log_stream(target: str) -> IO[bytes] | None:
    """'-' is stderr, 'off' is none, anything else a file appended to."""
    if target == "off":
        return None
    if target == "-":
        return os.fdopen(os.dup(sys.stderr.fileno()), "wb", buffering=1 << 16)
    return open(target, "ab", buffering=1 << 16)
