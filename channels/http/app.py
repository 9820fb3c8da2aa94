"""The ASGI application: one pipeline every /v1 request goes through, in this order.

    route (404/405) -> ready (503) -> client address not over its failed
    authentications for the channel it names (429) -> body read under the size
    cap (413) and the read deadline (408) -> signature: channel, key, timestamp
    window, HMAC (over the Tally-Actor header too), nonce (401/403) -> operation
    allowed for the channel (403) -> rate limit (429) -> Idempotency-Key present on
    money routes (400) -> the acting teller: well formed (400), required by the
    channel (401), a declared role (403) -> content type (415) -> JSON parse, no key
    repeated in an object, no query parameter repeated (400) and schema (422)
    -> channel kind (403, core.services.policy)
    -> key not in flight (409) -> the handler and its service (a refusal is
    rendered from the one table in problems.py) -> the request's nonce durable
    -> response + access log

The operators' routes (/v1/admin/, channels/http/admin.py) take a pipeline of their
own after the route: the Authorization header must name an operator
(`channel="op:NAME"`, the operator registry) with the same string to sign, timestamp
window and nonce store as the channels; then the route's permission for the
operator's role (403), the JSON body and its schema (400/415/422), the handler.
A channel request never reaches them, an operator request never reaches a
channel route. The `device` object of the money routes (the risk stage's
context) is part of the signed body: nothing new is signed.

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

Before a request is authenticated it may use little: its body is read only
up to `preauth_body_size_max` (4 KiB) unless its Authorization header names a
known channel and key id with a fresh timestamp (then up to that channel's
cap; the signature over the body is checked once it is read), the whole body
must arrive within `read_timeout_s` (channels/http/deadlines.py), and an
address whose authentications for a channel keep failing is refused with 429
before its request is read (channels/tier.py, `AuthFailures`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from asyncio import CancelledError, current_task
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import IO, Any, NoReturn
from urllib.parse import parse_qsl

import anyio
import orjson
import sniffio

from channels.http import signing
from channels.http.admin import ADMIN_BODY_SIZE_MAX, AdminContext, AdminHandlers, OperatorAuth
from channels.http.body import BodyTooLarge, Disconnected, read_body
from channels.http.deadlines import BodyDeadlines
from channels.http.handlers import Context, Handlers, Reply
from channels.http.metrics import Metrics, register_collectors
from channels.http.openapi import openapi_document
from channels.http.problems import PROBLEM_CONTENT_TYPE, Problem, refusal_problem
from channels.http.routes import ROUTES, Route, Router
from channels.http.schema import (
    check_alternatives,
    check_object,
    check_value,
    fail,
    quick_check,
)
from channels.http.signing import Credentials
from channels.http.strict_json import first_repeated_key, may_repeat_keys
from channels.iso20022.http import Iso20022Handlers
from channels.registry import ChannelEntry, Registry, parse_registry_text
from channels.tier import AuthFailures, InFlight, RateLimits, ReplayGuard
from core.providers.types import Providers
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
CONNECTION_CLOSE = (b"connection", b"close")
PREAUTH_BODY_SIZE_MAX = 4096  # bytes read before the Authorization header names a channel
READ_TIMEOUT_S = 30.0  # a request's body must have arrived this long after its head
AUTH_FAILURES_PER_S = 1.0  # failed authentications forgiven per second and client address
AUTH_FAILURES_BURST = 30  # failed authentications in a row before an address gets 429
HOUSEKEEPING_S = 0.1
CONSOLE_TICK_EVERY = 10  # housekeeping ticks: the console's tick once a second


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
        preauth_body_size_max: int = PREAUTH_BODY_SIZE_MAX,
        read_timeout_s: float = READ_TIMEOUT_S,
        auth_failures_per_s: float = AUTH_FAILURES_PER_S,
        auth_failures_burst: int = AUTH_FAILURES_BURST,
        providers: Providers | None = None,
    ) -> None:
        self.bank = bank
        self.providers = providers  # the bank's verification providers: closed at shutdown
        self.core = bank.core
        self.registry = registry
        self.router = Router(ROUTES)
        self.metrics = metrics or Metrics()
        register_collectors(self.metrics, bank)
        self.handlers = Handlers(bank, self.metrics)
        self.iso20022 = Iso20022Handlers(bank, self.metrics)  # the routes of `Route.xml`
        self.rate_limits = RateLimits(registry)
        self.replay = ReplayGuard(bank.core)
        self.in_flight = InFlight()
        self.callers = {
            name: Caller(name, entry.kind, entry.ledger_id)
            for name, entry in registry.channels.items()
        }
        self.access_log = AccessLog(access_log)
        # The body caps: a channel's own (under --body-size-max if given; a route may take
        # more, `Route.body_size_max`), and the small one for a request not yet known to
        # come from a channel.
        self.body_size_max = body_size_max or max(
            (entry.body_size_max for entry in registry.channels.values()), default=1 << 20
        )
        if not body_size_max:  # and the routes that take more than a channel's cap
            self.body_size_max = max(self.body_size_max, *(r.body_size_max for r in ROUTES))
        self.body_caps = {
            name: min(entry.body_size_max, self.body_size_max)
            for name, entry in registry.channels.items()
        }
        self.preauth_body_size_max = min(preauth_body_size_max, self.body_size_max)
        self.read_timeout_s = read_timeout_s
        # Set at startup on asyncio (the body read deadline without a cancel scope per
        # request); None: each body read sits in a cancel scope (trio).
        self.body_deadlines: BodyDeadlines | None = None
        self.auth_failures = AuthFailures(auth_failures_per_s, auth_failures_burst)
        self.openapi = orjson.dumps(openapi_document())
        self.window_s = bank.settings.nonce_window_s
        # Operators (the /v1/admin/ routes): the approvals service's operator registry
        # (one registry for who signs and who may approve), else the one given.
        self.operator_auth = OperatorAuth(bank.approvals.operators, self.window_s)
        self.admin_handlers = AdminHandlers(bank)
        # `tally serve --console-reports DIR`: the reports the console serves (None: none).
        self.console_reports_dir: str | None = None
        self.register_channels(bank.approvals)
        # The operations console (/console/, channels/console): its own pages, sessions
        # and CSRF; imported here so that the API alone does not load Jinja2 at import.
        from channels.console.app import Console

        self.console = Console(self)
        self.quick_checks: dict[str, Callable[[Any], bool]] = {}
        for route in ROUTES:
            quick = quick_check(route.body) if route.body is not None else None
            if quick is not None:
                self.quick_checks[route.operation] = quick

    # --- ASGI -------------------------------------------------------------------

    async def lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        if sniffio.current_async_library() == "asyncio":
            self.body_deadlines = BodyDeadlines(self.read_timeout_s)
        async with anyio.create_task_group() as task_group:
            await task_group.start(self.bank.serve)
            task_group.start_soon(self._keep_house)
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            await self.core.flush_at_stop()  # staged nonces and deletions, durably
            task_group.cancel_scope.cancel()
        if self.providers is not None:
            with anyio.CancelScope(shield=True):
                await self.providers.aclose()  # the providers' connections, after the bank
        await send({"type": "lifespan.shutdown.complete"})

    async def _keep_house(self) -> None:
        """Flush the access log, cut off late bodies, forget forgiven addresses; once a
        second the console's tick (its sessions, the monitoring sampler)."""
        ticks = 0
        while True:
            await anyio.sleep(HOUSEKEEPING_S)
            self.access_log.flush()
            deadlines = self.body_deadlines
            if deadlines is not None and deadlines.waiting:
                deadlines.sweep(perf_counter())
            ticks += 1
            if ticks % CONSOLE_TICK_EVERY == 0:
                self.console.tick(time.time())
            if ticks % 100 == 0 and self.auth_failures.buckets:
                self.auth_failures.prune(time.monotonic())

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
        actor_id = ""
        nonce_ticket = 0
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            try:
                if not path.startswith("/v1/"):
                    if path.startswith("/console") and (len(path) == 8 or path[8] == "/"):
                        await self.console(scope, receive, send)  # its own answers and log
                        return
                    route_name = path if path in _UNSIGNED else "unmatched"
                    reply = self.unsigned(method, path)
                elif path.startswith("/v1/admin/"):  # signed by an operator, not a channel
                    route, params = self.route(method, path)
                    route_name = route.operation
                    nonce_state = self.core.state
                    reply, problem, nonce_ticket, channel_name = await self.admin_call(
                        route, params, scope, receive, started
                    )
                else:
                    route, params = self.route(method, path)
                    route_name = route.operation
                    headers = dict(scope["headers"])
                    # Before the body: does the header name a channel (and a key) at all?
                    authorization = headers.get(b"authorization")
                    credentials = (
                        None
                        if authorization is None
                        else signing.parse_authorization(authorization.decode("latin-1"))
                    )
                    known: ChannelEntry | None = None
                    cap = self.preauth_body_size_max
                    if type(credentials) is Credentials:
                        known = self.registry.channels.get(credentials.channel)
                        if known is not None and self.fresh(known, credentials):
                            cap = self.body_caps[known.name]
                            if route.body_size_max > cap:  # an ID image's route
                                cap = min(route.body_size_max, self.body_size_max)
                        else:
                            known = None
                    if self.auth_failures.buckets:  # empty while no address fails
                        self.refuse_failing_address(scope, credentials)
                    declared = headers.get(b"content-length")
                    deadlines = self.body_deadlines
                    if deadlines is None:  # trio: an ordinary cancel scope
                        with anyio.move_on_after(self.read_timeout_s) as late:
                            body = await self.read_body(headers, receive, None, cap, known)
                        if late.cancelled_caught:
                            raise self.read_timeout()
                    elif declared is not None and declared.isdigit():
                        if int(declared) > cap:
                            raise self.too_large(cap, known)
                        task = current_task()
                        assert task is not None
                        deadlines.waiting[task] = started + deadlines.timeout_s
                        try:
                            message = await receive()
                            if message["type"] == "http.request" and not message.get(
                                "more_body", False
                            ):  # the whole body in one message: no loop, no join
                                body = message.get("body", b"")
                                if len(body) > cap:
                                    raise self.too_large(cap, known)
                            else:
                                body = await self.read_body(headers, receive, message, cap, known)
                        except CancelledError:
                            if deadlines.take_expired(task):
                                raise self.read_timeout() from None
                            raise
                        finally:
                            deadlines.waiting.pop(task, None)
                    else:
                        body = await self.read_body_by(started, headers, receive, cap, known)
                    try:
                        channel = self.authenticate(scope, headers, body, credentials, known)
                    except Problem as failure:
                        if failure.status == 401:
                            self.auth_failed(scope, credentials)
                        raise
                    nonce_state = self.core.state  # its nonce was staged last: this ticket
                    nonce_ticket = nonce_state.staged_ticket
                    channel_name = channel.name
                    idempotency_key = self.authorize(route, channel, headers, len(body))
                    ctx = self.context(
                        route, channel, params, scope, headers, body, idempotency_key
                    )
                    actor_id = ctx.caller.actor_id
                    if route.policy.kinds:  # the one channel-policy guard (core.services.policy)
                        policy.admit(ctx.caller, route.policy)
                    handler = getattr(
                        self.iso20022 if route.xml else self.handlers, route.operation
                    )
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
                problem = internal_error("the failure was logged")
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
        if problem is not None and reply.status < 500:  # the console's refusals by code
            metrics.observe_refusal(problem.slug, channel_name)
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
            if actor_id:
                record["actor"] = actor_id
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

    async def read_body_by(
        self,
        started: float,
        headers: dict[bytes, bytes],
        receive: Receive,
        cap: int,
        known: object | None,
    ) -> bytes:
        """`read_body` on asyncio, cut off (408) once the request's deadline is past."""
        deadlines = self.body_deadlines
        task = current_task()
        assert deadlines is not None and task is not None
        deadlines.waiting[task] = started + deadlines.timeout_s
        try:
            return await self.read_body(headers, receive, None, cap, known)
        except CancelledError:
            if deadlines.take_expired(task):
                raise self.read_timeout() from None
            raise
        finally:
            deadlines.waiting.pop(task, None)

    async def read_body(
        self,
        headers: dict[bytes, bytes],
        receive: Receive,
        message: dict[str, Any] | None,
        cap: int,
        known: object | None,
    ) -> bytes:
        """The whole body under `cap` (`message`: the first one, if already received)."""
        try:
            return await read_body(headers, receive, cap, message)
        except BodyTooLarge:
            raise self.too_large(cap, known) from None

    def too_large(self, cap: int, known: object | None) -> Problem:
        """413, and the connection closed: the rest of the body is not read."""
        if known is None:
            return Problem(
                413,
                "body-too-large",
                "The request body is too large for a request not yet authenticated",
                f"at most {cap} bytes until the Authorization header names a channel, a key id"
                " and a current timestamp (then the channel's own cap)",
                headers=[CONNECTION_CLOSE],
                size_max=cap,
            )
        return Problem(
            413,
            "body-too-large",
            "The request body is too large for this channel",
            f"at most {cap} bytes",
            headers=[CONNECTION_CLOSE],
            size_max=cap,
        )

    # --- operators (/v1/admin/, channels/http/admin.py) ------------------------------

    async def admin_call(
        self, route: Route, params: dict[str, str], scope: Scope, receive: Receive, started: float
    ) -> tuple[Reply, Problem | None, int, str]:
        """An operator's request: the operator's signature (the channels' scheme, the
        operator registry's keys; 401s as for channels, counted as failures of the
        address), its nonce staged like a channel's, the route's permission (403), the
        body's schema (422), the handler. Returns the reply, the problem if refused after
        the signature was good, the nonce's ticket and "op:NAME" for the access log; a
        refusal before that is raised."""
        auth = self.operator_auth
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization")
        credentials = (
            None
            if authorization is None
            else signing.parse_authorization(authorization.decode("latin-1"))
        )
        fresh = type(credentials) is Credentials and auth.fresh(credentials)
        if self.auth_failures.buckets:
            self.refuse_failing_address(scope, credentials)
        cap = ADMIN_BODY_SIZE_MAX if fresh else self.preauth_body_size_max
        if self.body_deadlines is None:
            with anyio.move_on_after(self.read_timeout_s) as late:
                body = await self.read_body(headers, receive, None, cap, fresh or None)
            if late.cancelled_caught:
                raise self.read_timeout()
        else:
            body = await self.read_body_by(started, headers, receive, cap, fresh or None)
        if not fresh:
            self.auth_failed(scope, credentials)
            raise auth.refuse(credentials)
        assert isinstance(credentials, Credentials)
        secret = auth.secret(credentials)
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        if not verify_request(
            secret,
            credentials.channel,
            credentials.key_id,
            scope["method"],
            path,
            scope["query_string"].decode("latin-1"),
            credentials.timestamp,
            credentials.nonce,
            headers.get(b"idempotency-key", b"").decode("latin-1"),
            headers.get(b"tally-actor", b"").decode("latin-1"),
            body,
            credentials.signature,
        ):
            self.auth_failed(scope, credentials)
            raise Problem(401, "signature-invalid", "The signature does not match the request")
        if not self.replay.first_use(
            credentials.channel, credentials.nonce, int(credentials.timestamp)
        ):
            self.auth_failed(scope, credentials)
            raise Problem(
                401, "nonce-reused", "This nonce was already used", "sign every request anew"
            )
        client = scope.get("client")
        operator = auth.caller(credentials, client[0] if client else "")
        nonce_ticket = self.core.state.staged_ticket
        problem: Problem | None = None
        try:
            permission = route.policy.permission
            if permission:  # a read: the role's permission, and the read in the audit log
                what = next(iter(params.values()), "")
                self.admin_handlers.authorize(operator, permission, route.operation, what)
            ctx = AdminContext(operator, params, self.route_query(route, scope), None)
            if route.policy.money:  # a transition (a loan decision): its operation key
                ctx.idempotency_key = operation_key(route, headers)
            ctx.body = self.admin_body(route, headers, body)
            reply = await getattr(self.admin_handlers, route.operation)(ctx)
        except (Problem, Refused) as error:
            problem = error if isinstance(error, Problem) else refusal_problem(error.refusal)
            reply = Reply(
                problem.status, problem.encode(path), problem.headers, PROBLEM_CONTENT_TYPE
            )
        return reply, problem, nonce_ticket, credentials.channel

    def route_query(self, route: Route, scope: Scope) -> dict[str, str]:
        """The query parameters of a route, each once and as declared (400, 422)."""
        if not scope["query_string"]:
            return {}
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):
            raise query_repeated(pairs)
        for name, value in query.items():
            spec = route.query.get(name)
            if spec is None:
                raise fail(f"/{name}", f"unknown query parameter {name[:64]!r}")
            number = (
                int(value) if spec.kind == "integer" and _INTEGER_RE.fullmatch(value) else value
            )
            check_value(number, spec, f"/{name}")
        return query

    def admin_body(self, route: Route, headers: dict[bytes, bytes], body: bytes) -> Any:
        """An admin route's JSON body: parsed (400), no key repeated (400), schema (422)."""
        if route.body is None:
            if body:
                raise Problem(415, "unsupported-media-type", "This route takes no request body")
            return None
        if not body and route.body_optional:
            return {}
        content_type = (
            headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower().decode("latin-1")
        )
        return check_object(json_body(content_type, body), route.body)

    # --- the channel registry as an approved parameter ---------------------------------

    def register_channels(self, approvals: Any) -> None:
        """The `channels` parameter kind of the approvals service: a new registry (and its
        keys) is validated like the file at start (against the limit rules in force) and,
        once approved and applied, in force for the next request (`install_registry`)."""
        approvals.register_parameter(
            "channels",
            parse=self.parse_registry_text,
            install=self.install_registry,
            text=lambda: self.registry.text,
            version_of=lambda registry: registry.version,
        )

    def parse_registry_text(self, text: str, source: str) -> Registry:
        return parse_registry_text(text, source, self.core.rules)

    def install_registry(self, registry: Registry) -> None:
        """Put `registry` in force: the channels, their keys, operations, rate limits, body
        caps, the roles at each (the services' actor rules) and the verification steps
        each requires (the services' verification policy). A request already past
        its signature check finishes under the registry it was checked with."""
        self.callers = {
            name: Caller(name, entry.kind, entry.ledger_id)
            for name, entry in registry.channels.items()
        }
        self.body_caps = {
            name: min(entry.body_size_max, self.body_size_max)
            for name, entry in registry.channels.items()
        }
        self.rate_limits = RateLimits(registry)
        self.bank.actors.channels = registry.actors().channels
        self.bank.verification.policy = registry.verification_policy()
        self.registry = registry
        logger.info(
            orjson.dumps(
                {
                    "event": "channels_installed",
                    "version": registry.version,
                    "channels": sorted(registry.channels),
                }
            ).decode()
        )

    def read_timeout(self) -> Problem:
        return Problem(
            408,
            "request-timeout",
            "The request body did not arrive in time",
            f"send the whole body within {self.read_timeout_s:g} s of the request head",
            headers=[CONNECTION_CLOSE],
        )

    def fresh(self, channel: ChannelEntry, credentials: Credentials) -> bool:
        return fresh(channel, credentials, self.window_s)

    def failure_key(self, scope: Scope, credentials: Credentials | str | None) -> str:
        """Whose failed authentications a request counts with: its client address and the
        registered channel it names ("" for none), so that one channel failing behind a
        shared address (a rotated key not yet deployed) does not shut out the others."""
        client = scope.get("client")
        channel = credentials.channel if type(credentials) is Credentials else ""
        if channel not in self.registry.channels:
            channel = ""
        return f"{client[0] if client else ''} {channel}"

    def refuse_failing_address(self, scope: Scope, credentials: Credentials | str | None) -> None:
        """429 for a client address (and channel) over its failed authentications."""
        wait_s = self.auth_failures.wait_s(self.failure_key(scope, credentials), time.monotonic())
        if wait_s > 0:
            raise Problem(
                429,
                "authentication-failures",
                "Too many failed authentications from this address",
                f"at most {self.auth_failures.burst:g} in a row, then "
                f"{self.auth_failures.rate_per_s:g} per second",
                headers=[(b"retry-after", str(max(1, int(wait_s + 0.999))).encode())],
            )

    def auth_failed(self, scope: Scope, credentials: Credentials | str | None) -> None:
        key = self.failure_key(scope, credentials)
        self.auth_failures.failed(key, time.monotonic())

    def authenticate(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        body: bytes,
        credentials: Credentials | str | None,
        known: ChannelEntry | None,
    ) -> ChannelEntry:
        """The channel that signed the request (`known`: the channel whose key id and
        timestamp the header was already found to name), or a 401 saying why not."""
        if known is not None and self.registry.channels.get(known.name) is not known:
            known = None  # an approved registry replaced it while the body was read
        if known is None:
            self.refuse_credentials(credentials)
        assert known is not None and isinstance(credentials, Credentials)
        channel = known
        check_signature(scope, headers, body, credentials, channel)
        if not self.replay.first_use(channel.name, credentials.nonce, int(credentials.timestamp)):
            raise nonce_reused()
        if channel.disabled:
            raise Problem(403, "channel-disabled", "This channel is disabled")
        return channel

    def refuse_credentials(self, credentials: Credentials | str | None) -> NoReturn:
        refuse_credentials(self.registry, credentials, self.window_s)

    def authorize(
        self, route: Route, channel: ChannelEntry, headers: dict[bytes, bytes], size: int
    ) -> str:
        if route.operation not in channel.operations:
            raise operation_not_allowed(channel, route.operation)
        self.take_rate(channel)
        return operation_key(route, headers)

    def over_rate(self, channel: str) -> float:
        """One request of `channel` against its rate limit, over HTTP or ISO 8583 (the
        one bucket of the channel): 0 within it, else the seconds to wait (counted)."""
        wait_s = self.rate_limits.take(channel, time.monotonic())
        if wait_s > 0:
            self.metrics.rate_limited[channel] = self.metrics.rate_limited.get(channel, 0) + 1
        return wait_s

    def take_rate(self, channel: ChannelEntry) -> None:
        """One request of `channel` against its rate limit (429 over it, counted)."""
        wait_s = self.over_rate(channel.name)
        if wait_s > 0:
            retry = max(1, int(wait_s + 0.999))
            raise Problem(
                429,
                "rate-limited",
                "This channel is over its request rate",
                f"{channel.rate_per_s:g} requests/s, burst {channel.burst}",
                headers=[(b"retry-after", str(retry).encode())],
            )

    def actor_caller(self, caller: Caller, scope: Scope, value: bytes) -> Caller:
        """The Caller naming the teller of a (signed) Tally-Actor header, once well formed
        (400), given once (400) and of a role the channel declares (403)."""
        parsed = signing.parse_actor(value.decode("latin-1"))
        if parsed is None:
            raise Problem(
                400,
                "actor-malformed",
                "The Tally-Actor header is malformed",
                'expected exactly id="<1-32 of A-Z a-z 0-9 _ ->",role="<role>"',
            )
        if sum(1 for name, _ in scope["headers"] if name == b"tally-actor") != 1:
            raise Problem(400, "actor-malformed", "Send one Tally-Actor header, not several")
        actor_id, role = parsed
        acting = Caller(caller.name, caller.kind, caller.ledger_id, actor_id, role)
        self.bank.actors.admit(acting)
        return acting

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
        caller = self.callers[channel.name]  # the cached Caller: no actor named
        actor = headers.get(b"tally-actor")
        if actor is not None:
            caller = self.actor_caller(caller, scope, actor)
        elif channel.actor_required:
            self.bank.actors.admit(caller)  # refused: the channel acts for a teller
        raw_type = headers.get(b"content-type", b"")
        content_type = (
            "application/json"  # what nearly every request sends: no parsing
            if raw_type == JSON
            else raw_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        )
        query = self.route_query(route, scope)
        parsed: Any = None
        if route.xml:  # ISO 20022: the XML as sent, for channels/iso20022/http.py to parse
            parsed = body
        elif route.body is None:
            if body:
                raise Problem(415, "unsupported-media-type", "This route takes no request body")
        elif route.binary and content_type == "application/octet-stream":
            parsed = body
        elif not body and route.body_optional:
            parsed = {}
        else:
            parsed = json_body(content_type, body)
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
                if route.alternatives:
                    check_alternatives(parsed, route.alternatives)
        token, session = proofs(headers)
        return Context(
            channel,
            caller,
            params,
            query,
            parsed,
            key,
            token,
            content_type or "application/json",
            session,
        )


_INTEGER_RE = re.compile(r"-?[0-9]{1,19}")
IDEMPOTENCY_KEY_LENGTH_MAX = 255
_UNSIGNED = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def fresh(channel: ChannelEntry, credentials: Credentials, window_s: float) -> bool:
    """Whether `credentials` name a key of `channel` and a timestamp inside the window."""
    timestamp = credentials.timestamp
    return (
        credentials.key_id in channel.secrets
        and timestamp.isdigit()
        and len(timestamp) <= 12
        and abs(time.time() - int(timestamp)) <= window_s
    )


def check_signature(
    scope: Scope,
    headers: dict[bytes, bytes],
    body: bytes,
    credentials: Credentials,
    channel: ChannelEntry,
) -> None:
    """The nonce's form and the HMAC of the request (401 if not); not whether the nonce
    was used before (the replay guard's, `ReplayGuard.first_use`)."""
    nonce = credentials.nonce
    if not signing.NONCE_PATTERN.fullmatch(nonce):
        raise Problem(
            401, "authorization-malformed", "nonce must be 8-64 characters of A-Z a-z 0-9 _ -"
        )
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    idempotency = headers.get(b"idempotency-key", b"").decode("latin-1")
    actor = headers.get(b"tally-actor", b"").decode("latin-1")
    if not verify_request(
        channel.secrets[credentials.key_id],
        credentials.channel,
        credentials.key_id,
        scope["method"],
        path,
        scope["query_string"].decode("latin-1"),
        credentials.timestamp,
        nonce,
        idempotency,
        actor,
        body,
        credentials.signature,
    ):
        raise Problem(401, "signature-invalid", "The signature does not match the request")


def nonce_reused() -> Problem:
    return Problem(
        401, "nonce-reused", "This nonce was already used", "sign every request with a fresh nonce"
    )


def operation_not_allowed(channel: ChannelEntry, operation: str) -> Problem:
    return Problem(
        403,
        "operation-not-allowed",
        "This channel may not use this operation",
        f"channel {channel.name} may not {operation}",
    )


def refuse_credentials(
    registry: Registry, credentials: Credentials | str | None, window_s: float
) -> NoReturn:
    """The 401 for an Authorization header that names no known key at a fresh time."""
    if credentials is None:
        raise Problem(
            401,
            "signature-missing",
            "The request is not signed",
            f"send an Authorization: {signing.SCHEME} header (see channels/http/signing.py)",
        )
    if isinstance(credentials, str):
        raise Problem(
            401, "authorization-malformed", "The Authorization header is malformed", credentials
        )
    channel = registry.channels.get(credentials.channel)
    if channel is None:
        raise Problem(401, "channel-unknown", "Unknown channel")
    if credentials.key_id not in channel.secrets:
        raise Problem(401, "key-unknown", "Unknown or retired key id for this channel")
    timestamp = credentials.timestamp
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise Problem(401, "authorization-malformed", "timestamp must be Unix seconds")
    raise Problem(
        401,
        "timestamp-out-of-window",
        "The request timestamp is too far from now",
        f"allowed: +/-{window_s} s",
    )


def operation_key(route: Route, headers: dict[bytes, bytes]) -> str:
    """The request's Idempotency-Key ("" when none was sent): required (400) where the
    route's operation needs one (`Operation.money`), 1-255 visible ASCII characters (400).
    The channels' routes and the operators' alike."""
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


def json_body(content_type: str, body: bytes) -> Any:
    """A request's JSON body, parsed: another content type (415), not JSON (400), a key
    repeated within one object (400). The body of every channel and operator route."""
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
        raise Problem(400, "malformed-json", "The body is not valid JSON", str(error)) from None
    if may_repeat_keys(body, parsed):  # the exact check only if the counts differ
        repeated = first_repeated_key(body)
        if repeated is not None:
            raise Problem(
                400,
                "duplicate-json-key",
                "A key is repeated within one JSON object",
                f"key {repeated[:64]!r} appears more than once in the same object",
            )
    return parsed


def query_repeated(pairs: list[tuple[str, str]]) -> Problem:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            break
        seen.add(name)
    return Problem(
        400,
        "query-parameter-repeated",
        "A query parameter is given more than once",
        f"query parameter {name[:64]!r} appears more than once",
    )


PROOF_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a token or session: 1-64 URL-safe characters


def proofs(headers: dict[bytes, bytes]) -> tuple[str, str]:
    """The request's transaction token and session ("" where absent). A proof that
    cannot be one (an empty one too) is refused whoever sends it, even where it is not
    needed: what the OpenAPI document promises."""
    raw_token = headers.get(b"tally-transaction-token")
    raw_session = headers.get(b"tally-session")
    token = session = ""
    if raw_token is not None:
        token = raw_token.decode("latin-1")
        if not PROOF_RE.fullmatch(token):
            raise proof_malformed("Tally-Transaction-Token")
    if raw_session is not None:
        session = raw_session.decode("latin-1")
        if not PROOF_RE.fullmatch(session):
            raise proof_malformed("Tally-Session")
    return token, session


def internal_error(detail: str) -> Problem:
    """The answer to a defect (logged where it happened): 500, never a refusal's."""
    return Problem(500, "internal-error", "Internal error", detail)


def proof_malformed(header: str) -> Problem:
    return Problem(
        400,
        "proof-header-malformed",
        f"The {header} header is not a token Tally issued",
        "1-64 characters of A-Z a-z 0-9 _ -",
    )


def in_flight_problem() -> Problem:
    return Problem(
        409,
        "idempotency-key-in-flight",
        "A request with this Idempotency-Key is still being processed",
        "wait for its answer, then retry to get the same response",
        headers=[(b"retry-after", b"1")],
    )


_Disconnected = Disconnected  # the client went away before its body arrived: no answer


def access_log_stream(target: str) -> IO[bytes] | None:
    """'-' is stderr, 'off' is none, anything else a file appended to."""
    if target == "off":
        return None
    if target == "-":
        return os.fdopen(os.dup(sys.stderr.fileno()), "wb", buffering=1 << 16)
    return open(target, "ab", buffering=1 << 16)
