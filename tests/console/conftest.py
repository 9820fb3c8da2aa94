"""Shared pieces of the console tests: a real `tally serve`, logged-in console sessions over
plain httpx, and Playwright driving Debian's chromium.

Each test module gets its own server (hypercorn, a fresh data directory, the session's
provider simulator: tests/http_helpers.py). Operators log in with the development console
passwords `dev-<name>-console` (core/data/operators.toml's header).

The browser is the machine's chromium, never one Playwright downloads (none can be here):
`TALLY_CHROMIUM`, else `chromium` on PATH, else /usr/bin/chromium (Debian's `apt-get install
chromium`), started with `--no-sandbox` when the tests run as root (CI does: chromium's
sandbox refuses root). Without a chromium the browser tests skip, saying why, except under
CI (`CI=true`), where they fail: CI must run them (.ci/run installs chromium).

`ConsoleSession` is a logged-in operator over httpx for the security tests. It sends the
session cookie itself: the cookie is `Secure`, which a cookie jar never returns over plain
HTTP (browsers make an exception for 127.0.0.1, httpx does not).
"""

from __future__ import annotations

import datetime
import html
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserType, Playwright, sync_playwright

from tests.http_helpers import REPO_ROOT, TallyServer

CONSOLE = "/console"
COOKIE = "tally_console"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
CHROMIUM_ENV = "TALLY_CHROMIUM"
# Where the browser tests write their screenshots: a temporary folder, or the folder this
# names (`TALLY_CONSOLE_SCREENSHOTS=docs/console` refreshes the ones the README links).
SCREENSHOTS_ENV = "TALLY_CONSOLE_SCREENSHOTS"
VIEWPORT = {"width": 1280, "height": 900}
OPERATORS_FILE = REPO_ROOT / "core" / "data" / "operators.toml"
TIMEZONE = datetime.timezone(datetime.timedelta(hours=8))  # Asia/Shanghai: the business day


def console_password(name: str) -> str:
    """The development console password of operator `name` (DEVELOPMENT ONLY)."""
    return f"dev-{name}-console"


def operator_roles() -> dict[str, str]:
    """{name: role} of the shipped operators that may log in to the console."""
    with open(OPERATORS_FILE, "rb") as file:
        operators = tomllib.load(file)["operators"]
    return {
        name: str(entry["role"])
        for name, entry in operators.items()
        if entry.get("console_password") and not entry.get("disabled", False)
    }


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def chromium_path() -> str | None:
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        return named if os.access(named, os.X_OK) else None
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def screenshots_dir() -> Path:
    # docs/console/ only when asked (`TALLY_CONSOLE_SCREENSHOTS=docs/console`): a test run
    # must not leave the tree changed (the ids and times in the pages differ each run).
    directory = Path(
        os.environ.get(SCREENSHOTS_ENV) or Path(tempfile.gettempdir()) / "tally-console-shots"
    )
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def business_day() -> str:
    return datetime.datetime.now(TIMEZONE).date().isoformat()


# --- Playwright (pytest-playwright's fixtures, pointed at the machine's chromium) -------
# pytest-playwright starts Playwright once per session; its sync API leaves an event loop
# marked running in this thread until it stops, and every later test that runs one of its
# own (asyncio.run, anyio, trio: most of the suite) would then fail. So Playwright and the
# browser live per module here, stopped when the module's browser tests are done.


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    path = chromium_path()
    if path is None:
        reason = (
            f"no chromium: `apt-get install chromium` (Debian) or set {CHROMIUM_ENV} to a "
            "Chromium binary (Playwright cannot download one here)"
        )
        if in_ci():
            pytest.fail(f"CI must run the console's browser tests: {reason}", pytrace=False)
        pytest.skip(reason)
    args = list(browser_type_launch_args.get("args", []))
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # chromium's sandbox refuses to run as root
    return {**browser_type_launch_args, "executable_path": path, "args": args}


@pytest.fixture(scope="module")
def playwright(
    browser_type_launch_args: dict[str, Any], _pw_api_request_contexts: Any
) -> Iterator[Playwright]:
    # browser_type_launch_args first: no Playwright is started when there is no chromium.
    running = sync_playwright().start()
    if _pw_api_request_contexts:  # --tracing: pytest-playwright records API requests
        _pw_api_request_contexts.instrument(running)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser_type(playwright: Playwright, browser_name: str | None) -> BrowserType:
    assert browser_name in (None, "chromium"), "the console's tests drive chromium only"
    return playwright.chromium


@pytest.fixture(scope="module")
def browser(
    browser_type: BrowserType, browser_type_launch_args: dict[str, Any]
) -> Iterator[Browser]:
    launched = browser_type.launch(**browser_type_launch_args)
    yield launched
    launched.close()


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """None: each test's context names its own server. (Overrides pytest-playwright's
    fallback, a session fixture defined as a method, which pytest 9 warns about and the
    warnings-as-errors setting turns into an error.)"""
    return None


@pytest.fixture(scope="module")
def browser_context_args() -> dict[str, Any]:
    return {
        "viewport": VIEWPORT,
        "locale": "en-US",  # Accept-Language: the English labels (the screenshots' language)
        "timezone_id": "Asia/Shanghai",
    }


# --- the server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    """One real `tally serve` (hypercorn) per test module."""
    data = tmp_path_factory.mktemp("console") / "data"
    running = TallyServer(data).start()
    yield running
    running.stop()


# --- console sessions over httpx ---------------------------------------------------------

_CSRF_FIELD = re.compile(
    r"""<input\b(?=[^>]*\bname=["']csrf["'])[^>]*\bvalue=["']([^"']+)["']""", re.IGNORECASE
)
_CSRF_HEADER = re.compile(r""""X-CSRF-Token"\s*:\s*"([^"]+)\"""")


def csrf_of(page: str) -> str:
    """The CSRF token a console page carries: a form's hidden `csrf` input, else the
    `X-CSRF-Token` of the body's hx-headers; "" when the page has none."""
    found = _CSRF_FIELD.search(page)
    if found:
        return html.unescape(found.group(1))
    found = _CSRF_HEADER.search(html.unescape(page))
    return found.group(1) if found else ""


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """{name: raw Set-Cookie header} of a response."""
    cookies = {}
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0].strip()
        cookies[name] = header
    return cookies


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1].strip()


def cookie_attributes(set_cookie: str) -> dict[str, str]:
    """{attribute in lower case: value ("" for a flag)} of a Set-Cookie header."""
    attributes = {}
    for part in set_cookie.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attributes[name.strip().lower()] = value.strip()
    return attributes


@dataclass
class ConsoleSession:
    """An operator logged in to the console of `url`, over plain httpx."""

    url: str
    operator: str
    login_set_cookie: str  # the Set-Cookie header of the session cookie at the login
    csrf: str
    cookies: dict[str, str] = field(default_factory=dict)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def headers(self, *, htmx: bool = False, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if htmx:
            headers["HX-Request"] = "true"
        return {**headers, **(extra or {})}

    def get(self, path: str, *, htmx: bool = False, **kwargs: Any) -> httpx.Response:
        response = self.http.get(self.url + path, headers=self.headers(htmx=htmx), **kwargs)
        self.http.cookies.clear()  # the session's cookies are sent by hand (see above)
        return response

    def post(
        self,
        path: str,
        data: dict[str, str] | None = None,
        *,
        csrf: str | None = None,
        header_csrf: str | None = None,
        htmx: bool = False,
        origin: str | None = None,
    ) -> httpx.Response:
        """POST a form; `csrf` is the form field sent (default: the session's token, "" to
        send none), `header_csrf` an X-CSRF-Token header instead, `origin` an Origin header
        (a browser sends one with every form post)."""
        form = dict(data or {})
        token = self.csrf if csrf is None else csrf
        if token and header_csrf is None:
            form["csrf"] = token
        extra = {"X-CSRF-Token": header_csrf} if header_csrf is not None else {}
        if origin is not None:
            extra["Origin"] = origin
        response = self.http.post(
            self.url + path, data=form, headers=self.headers(htmx=htmx, extra=extra)
        )
        self.http.cookies.clear()
        return response

    def close(self) -> None:
        self.http.close()


def login_form(url: str, http: httpx.Client) -> tuple[str, dict[str, str]]:
    """GET the login page: its CSRF token ("" if it has none) and the cookies it set."""
    page = http.get(url + CONSOLE + "/login")
    http.cookies.clear()
    assert page.status_code == 200, page.text
    return csrf_of(page.text), {
        name: cookie_value(header) for name, header in set_cookies(page).items()
    }


def post_login(
    url: str, http: httpx.Client, operator: str, password: str
) -> tuple[httpx.Response, dict[str, str]]:
    """Submit the login form: the answer and the cookies in force after it."""
    token, cookies = login_form(url, http)
    form = {"operator": operator, "password": password}
    if token:
        form["csrf"] = token
    response = http.post(
        url + CONSOLE + "/login",
        data=form,
        headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if cookies else {},
    )
    http.cookies.clear()
    for name, header in set_cookies(response).items():
        cookies[name] = cookie_value(header)
    return response, cookies


def console_login(server: TallyServer, operator: str) -> ConsoleSession:
    """Log `operator` in with their development console password; the session, its CSRF
    token read from the home page."""
    http = httpx.Client(timeout=30)
    response, cookies = post_login(server.url, http, operator, console_password(operator))
    assert response.status_code == 303, (response.status_code, response.text[:2000])
    session_cookie = set_cookies(response).get(COOKIE)
    assert session_cookie is not None, response.headers
    session = ConsoleSession(server.url, operator, session_cookie, "", cookies, http)
    home = session.get(CONSOLE + "/")
    assert home.status_code == 200, (home.status_code, home.text[:2000])
    session.csrf = csrf_of(home.text)
    assert session.csrf, "the home page carries no CSRF token (form field csrf or hx-headers)"
    return session


class Sessions:
    """Console sessions per operator, logged in on first use."""

    def __init__(self, server: TallyServer) -> None:
        self.server = server
        self.open: dict[str, ConsoleSession] = {}

    def __getitem__(self, operator: str) -> ConsoleSession:
        if operator not in self.open:
            self.open[operator] = console_login(self.server, operator)
        return self.open[operator]

    def close(self) -> None:
        for session in self.open.values():
            session.close()


@pytest.fixture(scope="module")
def sessions(server: TallyServer) -> Iterator[Sessions]:
    opened = Sessions(server)
    yield opened
    opened.close()


# --- the console's route table ------------------------------------------------------------


def console_routes() -> list[Any]:
    """Every `ConsoleRoute` of the console, as the app routes them."""
    from channels.console.app import all_routes

    return list(all_routes())


_PARAMETER = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def fill(pattern: str, values: dict[str, str], default: str = "x0") -> str:
    """`pattern` with its `{name}` parameters replaced by `values` (`default` if unknown)."""
    return _PARAMETER.sub(lambda match: values.get(match.group(1), default), pattern)


def parameters_of(pattern: str) -> list[str]:
    return _PARAMETER.findall(pattern)
