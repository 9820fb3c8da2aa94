"""The operations console: a server-rendered web app for the bank's operators at /console/.

Mounted in the HTTP app (channels/http/app.py sends every request whose path is
`/console` or starts with `/console/` here, before the /v1 pipeline), so it runs on
whatever ASGI server runs the bank, on the same event loop. Jinja2 templates with
autoescaping, htmx for partial updates (channels/console/static/htmx.min.js, package
data), no inline script or style: the content security policy forbids them.

What the framework does for every page, so page modules do not (docs/console.md):

    static file? (no session needed) -> bank ready (503) -> login / logout ->
    session (none: GET 303 to the login page, POST or htmx 401) -> route (404, 405)
    -> the route's permission for the operator's role (403) -> POST: the form body
    (413, 415, 400) and its CSRF token (form field `csrf` or header X-CSRF-Token;
    403), the Origin if sent (403) -> the handler -> its result rendered (`Html`,
    `Redirect`, `Download`, `Json`); a `ConsoleError` or a service refusal as
    error.html with its status -> a POST that succeeded recorded in the operator
    audit log, durably, before the answer.

Every answer carries the security headers (`SECURITY_HEADERS`: CSP, frame denial,
nosniff, same-origin referrer) and pages `Cache-Control: no-store`.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, quote, urlsplit

import anyio
import jinja2
import orjson

from channels.console import i18n, sessions
from channels.console.sessions import LoginThrottle, Session, Sessions
from channels.http.body import BodyTooLarge, Disconnected, read_body
from core.services.operators import (
    NAME_PATTERN,
    Operator,
    OperatorCaller,
    check_console_password,
)
from core.services.refusals import Refused

if TYPE_CHECKING:
    from core.services.bank import Bank

logger = logging.getLogger("tally.console")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PREFIX: Final = "/console"
HOME: Final = "/console/"
LOGIN: Final = "/console/login"
LOGOUT: Final = "/console/logout"
STATIC: Final = "/console/static/"
PACKAGE_DIR: Final = Path(__file__).resolve().parent
TEMPLATES_DIR: Final = PACKAGE_DIR / "templates"
STATIC_DIR: Final = PACKAGE_DIR / "static"
FORM_BODY_SIZE_MAX: Final = 2 << 20  # a parameter file's text (1 MiB) URL-encoded, and more
QUERY_SIZE_MAX: Final = 4096
BODY_TIMEOUT_S: Final = 30.0
FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
NO_STORE: Final = (b"cache-control", b"no-store")
STATIC_CACHE: Final = (b"cache-control", b"public, max-age=300")
STATIC_TYPES: Final = {
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".png": b"image/png",
    ".svg": b"image/svg+xml",
}
_STATIC_NAME: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
_PARAMETER: Final = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_FILENAME_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
# The nav links (the DOM contract's ids) and the page each opens: shown when the
# operator's role holds that page's permission.
NAV: Final = (
    ("nav-search", "/console/search", "nav_search"),
    ("nav-approvals", "/console/approvals", "nav_approvals"),
    ("nav-parameters", "/console/parameters", "nav_parameters"),
    ("nav-monitoring", "/console/monitoring", "nav_monitoring"),
    ("nav-reports", "/console/reports", "nav_reports"),
)


# --- the contract the page modules code against ----------------------------------------


@dataclass
class ConsoleRequest:
    """One request to a console page, once the framework admitted it."""

    method: str  # "GET" | "POST"
    path: str
    params: dict[str, str]  # path parameters
    query: dict[str, str]  # the query string, one value per key (`lang` taken out)
    form: dict[str, str]  # the urlencoded POST body, CSRF-checked (`csrf` taken out)
    operator: Operator
    caller: OperatorCaller  # the operator acting, from the client's address
    lang: str  # "en" | "zh"
    csrf: str  # the session's CSRF token
    htmx: bool  # sent by htmx (HX-Request): answer a fragment where the page has one
    bank: Bank
    app: Any  # channels/http/app.py `App`: .metrics, .core, .registry


@dataclass
class Html:
    """A page: `template` rendered with `context` and the framework's own names (t, lang,
    operator, csrf, htmx, fragment, nav, permitted, yuan, path, query)."""

    template: str
    context: dict[str, Any] = field(default_factory=dict)
    status: int = 200


@dataclass
class Redirect:
    """303 See Other to a console path (htmx requests get HX-Redirect instead)."""

    location: str


@dataclass
class Download:
    filename: str
    content_type: str
    body: bytes


@dataclass
class Json:
    data: Any


Result = Html | Redirect | Download | Json
Handler = Callable[[ConsoleRequest], Awaitable[Result]]


@dataclass(frozen=True)
class ConsoleRoute:
    method: str  # "GET" or "POST"
    pattern: str  # "/console/customers/{customer_id}"
    handler: Handler
    permission: str | None  # `operators.permitted(role, permission)`; None: any operator
    name: str  # for links and the audit ("customer_view")


class ConsoleError(Exception):
    """Raised by a handler: answered as error.html with `status`, `title`, `detail`."""

    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail


# --- helpers the templates use ----------------------------------------------------------


def yuan(amount_minor: int | None) -> str:
    """Fen as yuan with two decimals and thousands separators, in integers only:
    12345 -> "123.45", -5 -> "-0.05". None -> "-"."""
    if amount_minor is None:
        return "-"
    assert isinstance(amount_minor, int), amount_minor  # never a float
    sign = "-" if amount_minor < 0 else ""
    whole, fen = divmod(abs(amount_minor), 100)
    return f"{sign}{whole:,}.{fen:02d}"


def time_of_ns(ns: int | None) -> str:
    """A timestamp in ns as UTC text to the second ("-" for 0 or None)."""
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 1_000_000_000)) + " UTC"


def make_environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["yuan"] = yuan
    environment.filters["time_ns"] = time_of_ns
    return environment


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """ "/console/customers/{customer_id}" -> a regex matching one path segment per name."""
    assert pattern.startswith(HOME), pattern
    parts = _PARAMETER.split(pattern)
    regex = ""
    for index, part in enumerate(parts):
        regex += re.escape(part) if index % 2 == 0 else f"(?P<{part}>[^/]{{1,200}}?)"
    return re.compile(regex)


def safe_next(target: str) -> str:
    """Where a login may send the browser: a console path of this site only."""
    if (
        target.startswith(HOME)
        and not target.startswith("//")
        and "\\" not in target
        and target.isprintable()
        and len(target) <= 2000
    ):
        return target
    return HOME


def _fields(raw: bytes, what: str, one: str) -> dict[str, str]:
    """An urlencoded query string or form: each name once, UTF-8 (else 400)."""
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _Refuse(400, "err_400", f"{what} is not valid UTF-8") from None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise _Refuse(400, "err_400", f"{one} is given more than once")
    return fields


def all_routes() -> list[ConsoleRoute]:
    """Every page module's routes. Imported here, not at the top of this module: the page
    modules import this one for the contract's types."""
    from channels.console import (
        pages_approvals,
        pages_customers,
        pages_monitoring,
        pages_reports,
    )

    return (
        pages_customers.ROUTES
        + pages_approvals.ROUTES
        + pages_monitoring.ROUTES
        + pages_reports.ROUTES
    )


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    content_type: bytes = b"text/html; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    cacheable: bool = False


@dataclass
class _Incoming:
    """What the framework read of a request before any page code runs."""

    method: str
    path: str
    headers: dict[bytes, bytes]
    cookies: dict[str, str]
    query: dict[str, str]
    lang: str
    set_lang: bool
    address: str
    htmx: bool


class Console:
    """The console app; `app` is the HTTP app it is mounted in (channels/http/app.py)."""

    def __init__(self, app: Any, routes: list[ConsoleRoute] | None = None) -> None:
        self.app = app
        self.bank: Bank = app.bank
        self.sessions = Sessions()
        self.throttle = LoginThrottle()
        self.environment = make_environment()
        self.routes = all_routes() if routes is None else routes
        names = [route.name for route in self.routes]
        assert len(names) == len(set(names)), "console route names are unique"
        self._compiled = [(compile_pattern(route.pattern), route) for route in self.routes]
        self.static = self._load_static()
        from channels.console.pages_monitoring import Sampler  # it imports this module

        self.sampler = Sampler()  # the monitoring page's one-second samples of `app`
        self.requests = 0

    # --- housekeeping -------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Once a second from the HTTP app's housekeeping: expired sessions and login
        failures forgotten; the monitoring sampler takes its sample."""
        self.sessions.prune(now)
        self.throttle.prune(now)
        self.sampler.sample(self.app)

    # --- ASGI -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        incoming: _Incoming | None = None
        operator = "-"
        try:
            incoming = self._incoming(scope)
            answer, operator = await self._answer(incoming, scope, receive)
        except _Refuse as refusal:
            lang = incoming.lang if incoming is not None else i18n.DEFAULT_LANG
            answer = self._error(refusal.status, refusal.title, refusal.detail, lang)
            answer.headers += refusal.headers
        except Refused as error:  # a service refused outside a page (the password pool, the
            # audit's commit): its status and detail, as for a page's refusal
            lang = incoming.lang if incoming is not None else i18n.DEFAULT_LANG
            answer = self._refusal_answer(error, lang)
        except _Disconnected:
            return
        except Exception as error:  # a defect: loud in the log, a 500 page for the operator
            logger.error(
                orjson.dumps(
                    {
                        "event": "console_unhandled_exception",
                        "path": scope.get("path", ""),
                        "error": repr(error),
                        "traceback": traceback.format_exc(),
                    }
                ).decode()
            )
            lang = incoming.lang if incoming is not None else i18n.DEFAULT_LANG
            answer = self._error(500, "", "the failure was logged", lang)
        if incoming is not None and incoming.set_lang:
            answer.headers.append(_cookie(sessions.LANG_COOKIE, incoming.lang, 365 * 86400))
        headers = [
            (b"content-type", answer.content_type),
            (b"content-length", b"%d" % len(answer.body)),
            *SECURITY_HEADERS,
            STATIC_CACHE if answer.cacheable else NO_STORE,
            *answer.headers,
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})
        self.requests += 1
        self._observe(scope, answer.status, operator, perf_counter() - started)

    def _observe(self, scope: Scope, status: int, operator: str, elapsed_s: float) -> None:
        """The request in the app's metrics (route "console") and its access log."""
        app = self.app
        app.metrics.observe_request("console", status, "-", elapsed_s)
        if app.access_log.stream is not None:
            app.access_log.write(
                {
                    "ts": time.time(),
                    "event": "console",
                    "method": scope.get("method", ""),
                    "path": scope.get("path", ""),
                    "status": status,
                    "operator": operator,
                    "ms": round(elapsed_s * 1000, 3),
                }
            )

    def _incoming(self, scope: Scope) -> _Incoming:
        headers: dict[bytes, bytes] = {}
        cookie_parts: list[str] = []
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookie_parts.append(value.decode("latin-1"))
            else:
                headers[name] = value
        cookies = _parse_cookies("; ".join(cookie_parts))
        query_string: bytes = scope.get("query_string", b"")
        accept = headers.get(b"accept-language", b"").decode("latin-1")
        cookie_lang = cookies.get(sessions.LANG_COOKIE)
        lang = i18n.choose(None, cookie_lang, accept)
        if len(query_string) > QUERY_SIZE_MAX:
            raise _Refuse(414, "err_400", f"the query string is over {QUERY_SIZE_MAX} bytes")
        query = _fields(query_string, "the query string", "a query parameter")
        set_lang = False
        asked = query.pop("lang", None)
        if asked is not None:
            if asked not in i18n.LANGS:
                raise _Refuse(400, "err_400", "lang is en or zh")
            set_lang = asked != cookie_lang
            lang = asked
        client = scope.get("client")
        return _Incoming(
            scope["method"],
            scope["path"],
            headers,
            cookies,
            query,
            lang,
            set_lang,
            client[0] if client else "",
            headers.get(b"hx-request") == b"true",
        )

    async def _answer(
        self, incoming: _Incoming, scope: Scope, receive: Receive
    ) -> tuple[_Answer, str]:
        path = incoming.path
        if path == PREFIX:
            query_string = scope.get("query_string", b"").decode("ascii", "replace")
            location = HOME + ("?" + query_string if query_string else "")
            return _Answer(308, headers=[(b"location", location.encode())]), "-"
        if path.startswith(STATIC):
            return self._static(incoming), "-"
        core = self.bank.core
        if not core.ready:
            raise _Refuse(
                503,
                "err_503",
                "the bank is starting or recovering: try again shortly",
                [(b"retry-after", b"1")],
            )
        if path == LOGIN:
            return await self._login(incoming, receive), "-"
        token = incoming.cookies.get(sessions.COOKIE, "")
        session = self.sessions.get(token, time.time())
        operator = self._operator_of(session, token)
        if session is None or operator is None:
            return self._no_session(incoming), "-"
        if path == LOGOUT:
            return await self._logout(incoming, receive, session, operator, token), operator.name
        if path == HOME:
            if incoming.method not in ("GET", "HEAD"):
                raise _Refuse(405, "err_405", "GET only here", [(b"allow", b"GET")])
            request = self._request(incoming, {}, {}, session, operator)
            home = Html("home.html", {})
            return self._render(request, home, session, _fragment(incoming)), operator.name
        route, params = self._route(incoming)
        if route.permission is not None and not operator.permitted(route.permission):
            raise _Refuse(
                403,
                "err_403",
                i18n.label("no_permission", incoming.lang, role=operator.role),
            )
        form: dict[str, str] = {}
        if route.method == "POST":
            form = await self._form(incoming, receive)
            self._check_csrf(incoming, form, session)
        request = self._request(incoming, params, form, session, operator)
        try:
            result = await route.handler(request)
        except ConsoleError as error:
            answer = self._error(error.status, error.title, error.detail, incoming.lang)
            return answer, operator.name
        except Refused as error:
            return self._refusal_answer(error, incoming.lang), operator.name
        if route.method == "POST" and (not isinstance(result, Html) or result.status < 400):
            detail = {"path": path, "route": route.name}
            object = ",".join(f"{key}={value}" for key, value in params.items())
            await self._audit(request.caller, "console:" + route.name, object, detail)
        return self._render(request, result, session, _fragment(incoming)), operator.name

    # --- sessions and login ------------------------------------------------------------

    def _operator_of(self, session: Session | None, token: str) -> Operator | None:
        """The operator of a live session, if still in force with the same role."""
        if session is None:
            return None
        operator = self.bank.approvals.operators.get(session.operator)
        if operator is None or operator.disabled or operator.role != session.role:
            self.sessions.close(token)
            return None
        return operator

    def _no_session(self, incoming: _Incoming) -> _Answer:
        """GET of a page: 303 to the login page (back here after); POST or htmx: 401."""
        if incoming.method in ("GET", "HEAD") and not incoming.htmx:
            target = incoming.path
            query = {**incoming.query}
            if query:
                target += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
            location = LOGIN + "?next=" + quote(safe_next(target), safe="")
            return _Answer(303, headers=[(b"location", location.encode())])
        answer = self._error(
            401, "err_401", i18n.label("session_needed", incoming.lang), incoming.lang
        )
        answer.headers.append((b"hx-redirect", LOGIN.encode()))
        return answer

    async def _login(self, incoming: _Incoming, receive: Receive) -> _Answer:
        lang = incoming.lang
        if incoming.method in ("GET", "HEAD"):
            next_path = safe_next(incoming.query.get("next", HOME))
            token = incoming.cookies.get(sessions.PRELOGIN_COOKIE, "")
            headers = []
            if not (20 <= len(token) <= 128 and token.isascii()):
                token = sessions.new_token()
                headers.append(_cookie(sessions.PRELOGIN_COOKIE, token, 3600))
            answer = self._page(
                "login.html", {"csrf": token, "next": next_path, "error": ""}, lang, None
            )
            answer.headers += headers
            return answer
        if incoming.method != "POST":
            raise _Refuse(405, "err_405", "GET or POST here", [(b"allow", b"GET, POST")])
        form = await self._form(incoming, receive)
        token = incoming.cookies.get(sessions.PRELOGIN_COOKIE, "")
        name = form.get("operator", "").strip()
        password = form.get("password", "")
        next_path = safe_next(form.get("next", HOME))
        context = {"csrf": token, "next": next_path, "operator_name": name}
        if not sessions.same_token(form.get("csrf", ""), token) or not self._same_origin(incoming):
            return self._page("login.html", {**context, "error": "login_expired"}, lang, None, 403)
        now = time.time()
        wait_s = self.throttle.wait_s(name, now)
        who = OperatorCaller(name if NAME_PATTERN.fullmatch(name) else "-", "", incoming.address)
        if wait_s > 0:
            if self.throttle.first_refusal(name, now):  # one record per window, not per try
                detail = {"outcome": "throttled"}
                await self._audit(who, "console:login", f"operator:{who.name}", detail)
            answer = self._page(
                "login.html",
                {**context, "error": "login_throttled", "minutes": max(1, int(wait_s // 60 + 1))},
                lang,
                None,
                429,
            )
            answer.headers.append((b"retry-after", str(max(1, int(wait_s + 0.999))).encode()))
            return answer
        operator = self.bank.approvals.operators.get(name) if NAME_PATTERN.fullmatch(name) else None
        pool = self.bank.auth.pool
        pool.admit()  # a full pool refuses at once (503), like a transaction password check
        try:
            ok = await pool.run(check_console_password, operator, password[:256])
        finally:
            pool.leave()
        if not ok or operator is None:
            self.throttle.failed(name, now)
            if operator is not None:  # an operator's failures are audited; a name that is
                # no operator's only logged (the audit log is not for anyone to fill)
                who = OperatorCaller(operator.name, operator.role, incoming.address)
                detail = {"outcome": "failed"}
                await self._audit(who, "console:login", f"operator:{who.name}", detail)
            else:
                logger.info(
                    orjson.dumps(
                        {"event": "console_login_unknown", "from": incoming.address}
                    ).decode()
                )
            return self._page("login.html", {**context, "error": "login_failed"}, lang, None, 401)
        self.throttle.succeeded(name)
        cookie, _ = self.sessions.open(operator.name, operator.role, incoming.address, now)
        caller = OperatorCaller(operator.name, operator.role, incoming.address)
        await self._audit(caller, "console:login", f"operator:{operator.name}", {"outcome": "ok"})
        logger.info(
            orjson.dumps(
                {"event": "console_login", "operator": operator.name, "from": incoming.address}
            ).decode()
        )
        return _Answer(
            303,
            headers=[
                (b"location", next_path.encode()),
                _cookie(sessions.COOKIE, cookie, None),
                _cookie(sessions.PRELOGIN_COOKIE, "", 0),
            ],
        )

    async def _logout(
        self,
        incoming: _Incoming,
        receive: Receive,
        session: Session,
        operator: Operator,
        token: str,
    ) -> _Answer:
        if incoming.method != "POST":
            raise _Refuse(405, "err_405", "POST only here", [(b"allow", b"POST")])
        form = await self._form(incoming, receive)
        self._check_csrf(incoming, form, session)
        self.sessions.close(token)
        caller = OperatorCaller(operator.name, operator.role, incoming.address)
        await self._audit(caller, "console:logout", f"operator:{operator.name}", {})
        headers = [(b"location", LOGIN.encode()), _cookie(sessions.COOKIE, "", 0)]
        if incoming.htmx:
            return _Answer(200, headers=[(b"hx-redirect", LOGIN.encode()), *headers[1:]])
        return _Answer(303, headers=headers)

    # --- requests ------------------------------------------------------------------------

    def _route(self, incoming: _Incoming) -> tuple[ConsoleRoute, dict[str, str]]:
        allowed: list[str] = []
        method = "GET" if incoming.method == "HEAD" else incoming.method
        for regex, route in self._compiled:
            matched = regex.fullmatch(incoming.path)
            if matched is None:
                continue
            if route.method == method:
                return route, matched.groupdict()
            allowed.append(route.method)
        if allowed:
            raise _Refuse(
                405,
                "err_405",
                f"allowed: {', '.join(sorted(set(allowed)))}",
                [(b"allow", ", ".join(sorted(set(allowed))).encode())],
            )
        raise _Refuse(404, "err_404", incoming.path)

    async def _form(self, incoming: _Incoming, receive: Receive) -> dict[str, str]:
        """The urlencoded body: 413 over the cap, 415 another encoding, 400 not UTF-8 or a
        field repeated."""
        headers = incoming.headers
        body = b""
        with anyio.move_on_after(BODY_TIMEOUT_S) as late:
            try:
                body = await read_body(headers, receive, FORM_BODY_SIZE_MAX)
            except BodyTooLarge:
                raise _Refuse(413, "err_413", f"at most {FORM_BODY_SIZE_MAX} bytes") from None
        if late.cancelled_caught:
            raise _Refuse(408, "err_400", "the form did not arrive in time")
        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if body and content_type != FORM_CONTENT_TYPE.encode():
            raise _Refuse(415, "err_415", f"send the form as {FORM_CONTENT_TYPE}")
        return _fields(body, "the form", "a form field")

    def _same_origin(self, incoming: _Incoming) -> bool:
        """An Origin header, if the browser sent one, names this host."""
        origin = incoming.headers.get(b"origin")
        if origin is None:
            return True
        host = incoming.headers.get(b"host", b"").decode("latin-1")
        return urlsplit(origin.decode("latin-1")).netloc == host and bool(host)

    def _check_csrf(self, incoming: _Incoming, form: dict[str, str], session: Session) -> None:
        given = form.pop("csrf", None)
        if given is None:
            given = incoming.headers.get(b"x-csrf-token", b"").decode("latin-1")
        if not sessions.same_token(given, session.csrf) or not self._same_origin(incoming):
            raise _Refuse(403, "err_403", i18n.label("csrf_missing", incoming.lang))

    def _request(
        self,
        incoming: _Incoming,
        params: dict[str, str],
        form: dict[str, str],
        session: Session,
        operator: Operator,
    ) -> ConsoleRequest:
        return ConsoleRequest(
            "GET" if incoming.method == "HEAD" else incoming.method,
            incoming.path,
            params,
            incoming.query,
            form,
            operator,
            OperatorCaller(operator.name, operator.role, incoming.address),
            incoming.lang,
            session.csrf,
            incoming.htmx,
            self.bank,
            self.app,
        )

    async def _audit(
        self, caller: OperatorCaller, what: str, object: str, detail: dict[str, Any]
    ) -> None:
        """An audit record of a console action, durable before the answer goes out."""
        key, value = self.bank.approvals.audit_action(caller, what, object, detail)
        state = self.bank.core.customer_state()
        ticket = state.stage_change(key, value)
        await state.flush_through(ticket)

    # --- answers ------------------------------------------------------------------------

    def nav(self, operator: Operator) -> list[dict[str, str]]:
        """The nav links `operator` may follow (a page's GET route and its permission)."""
        links = []
        for link_id, href, key in NAV:
            for regex, route in self._compiled:
                if route.method == "GET" and regex.fullmatch(href):
                    if route.permission is None or operator.permitted(route.permission):
                        links.append({"id": link_id, "href": href, "label": key})
                    break
        return links

    def _context(self, lang: str, operator: Operator | None, csrf: str) -> dict[str, Any]:
        return {
            "t": i18n.translator(lang),
            "lang": lang,
            "operator": operator,
            "csrf": csrf,
            "htmx": False,
            "fragment": False,
            "nav": self.nav(operator) if operator is not None else [],
            "permitted": (
                lambda permission: operator is not None and operator.permitted(permission)
            ),
            "path": "",
            "query": {},
        }

    def _page(
        self,
        template: str,
        context: dict[str, Any],
        lang: str,
        operator: Operator | None,
        status: int = 200,
        csrf: str = "",
    ) -> _Answer:
        names = self._context(lang, operator, csrf)
        names.update(context)
        body = self.environment.get_template(template).render(names)
        return _Answer(status, body.encode())

    def _render(
        self, request: ConsoleRequest, result: Result, session: Session, fragment: bool
    ) -> _Answer:
        if isinstance(result, Html):
            names = self._context(request.lang, request.operator, session.csrf)
            names.update(
                htmx=request.htmx,
                fragment=fragment,
                path=request.path,
                query=request.query,
                request=request,
            )
            names.update(result.context)
            body = self.environment.get_template(result.template).render(names)
            return _Answer(result.status, body.encode())
        if isinstance(result, Redirect):
            location = safe_next(result.location)
            if request.htmx:
                return _Answer(200, headers=[(b"hx-redirect", location.encode())])
            return _Answer(303, headers=[(b"location", location.encode())])
        if isinstance(result, Download):
            filename = _FILENAME_UNSAFE.sub("_", result.filename)[:100] or "download"
            return _Answer(
                200,
                result.body,
                result.content_type.encode("latin-1"),
                [(b"content-disposition", f'attachment; filename="{filename}"'.encode())],
            )
        assert isinstance(result, Json), result
        return _Answer(
            200, orjson.dumps(result.data, option=orjson.OPT_NON_STR_KEYS), b"application/json"
        )

    def _refusal_answer(self, error: Refused, lang: str) -> _Answer:
        from channels.http.problems import refusal_problem

        problem = refusal_problem(error.refusal)
        answer = self._error(problem.status, problem.title, problem.detail or "", lang)
        answer.headers += [
            (name, value) for name, value in problem.headers if name == b"retry-after"
        ]
        return answer

    def _error(self, status: int, title: str, detail: str, lang: str) -> _Answer:
        """error.html: `title` a label key or text (default: the status's label)."""
        title = title or f"err_{status}"
        shown = i18n.label(title, lang) if title in i18n.LABELS else title
        try:
            return self._page(
                "error.html",
                {"status": status, "title": shown, "detail": detail},
                lang,
                None,
                status,
            )
        except jinja2.TemplateError:  # the error page itself broken: plain text, not a loop
            logger.error(traceback.format_exc())
            return _Answer(
                status, f"{status} {shown}\n{detail}".encode(), b"text/plain; charset=utf-8"
            )

    def _static(self, incoming: _Incoming) -> _Answer:
        if incoming.method not in ("GET", "HEAD"):
            raise _Refuse(405, "err_405", "GET only here", [(b"allow", b"GET")])
        found = self.static.get(incoming.path[len(STATIC) :])
        if found is None:
            raise _Refuse(404, "err_404", incoming.path)
        body, content_type = found
        return _Answer(200, body, content_type, cacheable=True)

    @staticmethod
    def _load_static() -> dict[str, tuple[bytes, bytes]]:
        """The static files (package data), read once: name -> (body, content type)."""
        files = {}
        for path in sorted(STATIC_DIR.iterdir()):
            content_type = STATIC_TYPES.get(path.suffix)
            if content_type is not None and path.is_file() and _STATIC_NAME.fullmatch(path.name):
                files[path.name] = (path.read_bytes(), content_type)
        return files


class _Refuse(Exception):
    """The framework's own refusal of a request: an error page with `status`."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(f"{status} {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or []


_Disconnected = Disconnected  # the browser went away before its form arrived


def _fragment(incoming: _Incoming) -> bool:
    """htmx asks for a part of a page (not a boosted link, not a history restore)."""
    headers = incoming.headers
    return (
        incoming.htmx
        and b"hx-boosted" not in headers
        and b"hx-history-restore-request" not in headers
    )


def _parse_cookies(text: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:  # the first of a repeated name (RFC 6265)
            cookies[name] = value.strip().strip('"')
    return cookies


def _cookie(name: str, value: str, max_age_s: int | None) -> tuple[bytes, bytes]:
    """A console cookie: HttpOnly, Secure, SameSite=Strict, Path=/console; `max_age_s`
    None for a browser-session cookie, 0 to delete it."""
    text = f"{name}={value}; Path={PREFIX}; HttpOnly; Secure; SameSite=Strict"
    if max_age_s is not None:
        text += f"; Max-Age={max_age_s}"
    return b"set-cookie", text.encode()
