"""The console's security rules against a real server, over plain httpx (no browser).

No page without a session (a GET goes to the login page, a POST or an htmx request gets
401); every POST route refuses a missing or wrong CSRF token (403); an operator whose
role lacks a route's permission gets 403 on it, and the services' own maker-checker
rules show through the console as 403 too; data is escaped (a customer named
`<script>alert(1)</script>` renders as text); the session cookie is HttpOnly,
SameSite=Strict, Secure and scoped to /console, and logout ends the session; every
console response carries the security headers (CSP and the rest). The routes are read
from the console's own route table, so a route added later is covered without a change
here.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from channels.client import TallyClient
from core.services.operators import permitted
from tests.admin_helpers import operator_client
from tests.console.conftest import (
    CONSOLE,
    COOKIE,
    CSP,
    Sessions,
    business_day,
    console_login,
    console_password,
    console_routes,
    cookie_attributes,
    cookie_value,
    fill,
    operator_roles,
    parameters_of,
    post_login,
    set_cookies,
)
from tests.http_helpers import (
    TallyServer,
    key,
    open_class_i,
    register,
    register_pending,
)

# The API refuses digits in a name (`$.name` must match ^[^0-9...]+$), so the customer is
# named without the `1` of the classic probe; the probe itself is searched for as typed.
SCRIPT_NAME = "<script>alert(document.cookie)</script>"
ESCAPED_NAME = "&lt;script&gt;alert(document.cookie)&lt;/script&gt;"
SCRIPT_PROBE = "<script>alert(1)</script>"
ESCAPED_PROBE = "&lt;script&gt;alert(1)&lt;/script&gt;"
# Path parameters no record has: a POST with them can change nothing.
DUMMY = {
    "customer_id": "c00000000000000000000",
    "account_id": "999999999999",
    "transfer_id": "0" * 32,
    "request_id": "A000000000000",
    "kind": "nosuchkind",
    "day": "2000-01-01",
}
# The routes an anonymous visitor must reach: the login itself.
PUBLIC_NAMES = {"login", "login_form", "login_submit"}


def is_public(route: Any) -> bool:
    return route.name in PUBLIC_NAMES or route.pattern.rstrip("/") == CONSOLE + "/login"


def protected_routes() -> list[Any]:
    routes = [route for route in console_routes() if not is_public(route)]
    assert routes, "the console's route table is empty"
    return routes


def route_id(route: Any) -> str:
    return f"{route.method} {route.pattern}"


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter") as client:
        yield client


@pytest.fixture(scope="module")
def app(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("app") as client:
        yield client


@pytest.fixture(scope="module")
def records(server: TallyServer, counter: TallyClient) -> dict[str, str]:
    """Real path parameters: a customer, their account, a transfer, an approval request."""
    customer = register(counter, "赵六")
    account = open_class_i(counter, customer)
    other = open_class_i(counter, register(counter, "钱七"))
    deposit = counter.post(
        f"/v1/accounts/{account}/cash-deposits", {"amount_minor": 100_000}, idempotency_key=key()
    )
    assert deposit.status_code == 201, deposit.text
    idempotency_key = key()
    transfer = counter.post(
        "/v1/transfers",
        {
            "debit_account_id": account,
            "credit_account_id": other,
            "amount_minor": 1_000,
            "password": "135790",
        },
        idempotency_key=idempotency_key,
    )
    assert transfer.status_code == 201, transfer.text
    with operator_client(server, "product1") as product1:
        current = product1.get("/v1/admin/parameters/limits")
        assert current.status_code == 200, current.text
        text = current.json()["current"]["text"]
        changed = text.replace(
            "log_share_permille = 50          # of the transfer log",
            "log_share_permille = 60          # of the transfer log",
        )
        assert changed != text
        requested = product1.post(
            "/v1/admin/approvals",
            {
                "kind": "limits",
                "payload": {"text": changed, "base_version": current.json()["current"]["version"]},
                "reason": "the console's security tests",
            },
        )
        assert requested.status_code == 201, requested.text
    return {
        "customer_id": customer["customer_id"],
        "account_id": account,
        "transfer_id": transfer.json()["transfer_id"],
        "idempotency_key": idempotency_key,
        "request_id": requested.json()["id"],
        "kind": "limits",
        "day": business_day(),
    }


# --- no page without a session ------------------------------------------------------------


def test_no_page_without_a_session(server: TallyServer) -> None:
    """Without a session (or with a forged cookie) every GET route redirects to the login
    page naming where to come back, every POST and every htmx request gets 401."""
    failures = []
    with httpx.Client(timeout=30) as http:
        for cookie in ("", f"{COOKIE}=forged-{'x' * 40}"):
            headers = {"Cookie": cookie} if cookie else {}
            for route in protected_routes():
                path = fill(route.pattern, DUMMY)
                if route.method == "GET":
                    response = http.get(server.url + path, headers=headers)
                    location = response.headers.get("location", "")
                    if response.status_code != 303 or not location.startswith(
                        CONSOLE + "/login?next="
                    ):
                        failures.append((route_id(route), cookie, response.status_code, location))
                    elif urllib.parse.unquote(location.split("next=", 1)[1]) != path:
                        failures.append((route_id(route), "next", location))
                    htmx = http.get(server.url + path, headers={**headers, "HX-Request": "true"})
                    if htmx.status_code != 401:
                        failures.append((route_id(route), cookie, "htmx", htmx.status_code))
                else:
                    response = http.post(server.url + path, data={}, headers=headers)
                    if response.status_code != 401:
                        failures.append((route_id(route), cookie, response.status_code))
                http.cookies.clear()
        home = http.get(server.url + CONSOLE)
        assert home.status_code in (301, 303, 307, 308), home.status_code
        assert home.headers["location"] == CONSOLE + "/"
        logout = http.post(server.url + CONSOLE + "/logout")
        assert logout.status_code == 401, logout.status_code
    assert not failures, failures


def test_a_wrong_password_is_refused_and_names_no_operator_state(server: TallyServer) -> None:
    """A wrong password and an unknown operator get the same refusal, and no session."""
    with httpx.Client(timeout=30) as http:
        wrong, _ = post_login(server.url, http, "teller1", "not-the-password")
        unknown, _ = post_login(server.url, http, "nobody", "not-the-password")
    for response in (wrong, unknown):
        assert response.status_code in (200, 401), response.status_code
        assert COOKIE not in set_cookies(response)
        assert 'id="login-error"' in response.text
    assert wrong.status_code == unknown.status_code


# --- CSRF ----------------------------------------------------------------------------------


def test_every_post_route_requires_the_csrf_token(server: TallyServer, sessions: Sessions) -> None:
    """Each POST route, sent by an operator who may use it, is refused 403 without the
    token, with a wrong one, with another session's, and with the right one from another
    site's page (Origin); logout too."""
    roles = operator_roles()
    failures = []
    posts = [route for route in protected_routes() if route.method == "POST"]
    for route in posts:
        operator = next(
            (
                name
                for name, role in roles.items()
                if route.permission is None or permitted(role, route.permission)
            ),
            "admin1",
        )
        session = sessions[operator]
        other = sessions["admin2" if operator != "admin2" else "admin1"]
        path = fill(route.pattern, DUMMY)
        attempts = {
            "none": session.post(path, csrf=""),
            "wrong": session.post(path, csrf="x" * 43),
            "another session's": session.post(path, csrf=other.csrf),
            "wrong header": session.post(path, csrf="", header_csrf="x" * 43),
            "htmx without": session.post(path, csrf="", htmx=True),
            # The right token from a page of another site (a leaked token, a lax proxy).
            "foreign origin": session.post(path, origin="https://evil.example"),
        }
        for what, response in attempts.items():
            if response.status_code != 403:
                failures.append((route_id(route), operator, what, response.status_code))
    logout = console_login(server, "teller1")
    try:
        for token in ("", "x" * 43):
            response = logout.post(CONSOLE + "/logout", csrf=token)
            assert response.status_code == 403, (token, response.status_code)
        assert logout.get(CONSOLE + "/").status_code == 200  # still logged in
    finally:
        logout.close()
    assert not failures, failures


def test_post_routes_answer_bad_input_with_a_4xx_never_a_500(sessions: Sessions) -> None:
    """With the right token and unknown records, every POST route says precisely what is
    wrong: a 4xx page (or the form again), never a 500."""
    roles = operator_roles()
    failures = []
    for route in (r for r in protected_routes() if r.method == "POST"):
        operator = next(
            (
                name
                for name, role in roles.items()
                if route.permission is None or permitted(role, route.permission)
            ),
            "admin1",
        )
        if route.pattern.rstrip("/").endswith("/logout"):
            continue
        response = sessions[operator].post(fill(route.pattern, DUMMY), {"reason": "x"})
        if response.status_code >= 500:
            failures.append((route_id(route), operator, response.status_code))
    assert not failures, failures


# --- permissions ---------------------------------------------------------------------------


def test_a_role_without_the_permission_gets_403_on_every_route(
    sessions: Sessions, records: dict[str, str]
) -> None:
    """For every route that names a permission, an operator of each role that lacks it is
    refused 403 (GET, htmx GET and POST, the POST with a valid CSRF token)."""
    roles = operator_roles()
    failures = []
    checked = 0
    for route in protected_routes():
        if route.permission is None:
            continue
        path = fill(route.pattern, records if route.method == "GET" else DUMMY)
        for operator, role in roles.items():
            if permitted(role, route.permission):
                continue
            session = sessions[operator]
            checked += 1
            if route.method == "GET":
                answers = [session.get(path), session.get(path, htmx=True)]
            else:
                answers = [session.post(path, {"reason": "x", "text": "x"})]
            for response in answers:
                if response.status_code != 403:
                    failures.append((route_id(route), operator, role, response.status_code))
    assert not failures, failures
    assert checked, "no route names a permission some role lacks"


def test_the_services_refusals_show_as_403(
    server: TallyServer, sessions: Sessions, records: dict[str, str]
) -> None:
    """The approvals routes only need read:approvals; the maker-checker rules behind them
    still hold in the console: a role that may not request limits, one that may not
    approve them, and the maker approving their own request are all refused 403, and the
    request stays pending."""
    request_path = f"{CONSOLE}/approvals/{records['request_id']}"
    limits = sessions["teller1"].get(CONSOLE + "/parameters/limits")
    assert limits.status_code == 200, limits.status_code
    version = re.search(r'name="base_version" value="(-?\d+)"', limits.text)
    base_version = version.group(1) if version else "0"
    answers = {
        "teller requests limits": sessions["teller1"].post(
            CONSOLE + "/parameters/limits", {"text": "x", "base_version": base_version}
        ),
        "teller approves limits": sessions["teller1"].post(
            request_path + "/approve", {"reason": "x"}
        ),
        "risk officer approves limits": sessions["risk1"].post(
            request_path + "/approve", {"reason": "x"}
        ),
        "maker approves own": sessions["product1"].post(request_path + "/approve", {"reason": "x"}),
        "maker rejects own": sessions["product1"].post(request_path + "/reject", {"reason": "x"}),
    }
    statuses = {what: response.status_code for what, response in answers.items()}
    assert statuses == dict.fromkeys(answers, 403), statuses
    with operator_client(server, "admin1") as admin1:
        state = admin1.get(f"/v1/admin/approvals/{records['request_id']}")
        assert state.status_code == 200, state.text
        assert state.json()["state"] == "pending"


# --- escaping ------------------------------------------------------------------------------


def test_a_customer_named_script_renders_as_text(
    server: TallyServer, app: TallyClient, sessions: Sessions
) -> None:
    """A customer named `<script>alert(document.cookie)</script>` appears escaped in the
    search results and on their page, and a search for `<script>alert(1)</script>` is
    echoed escaped."""
    customer = register_pending(app, SCRIPT_NAME)
    assert customer["name"] == SCRIPT_NAME
    session = sessions["supervisor1"]
    pages = {
        "search by id": session.get(
            CONSOLE + "/search", params={"q": customer["customer_id"], "kind": "customer"}
        ),
        "search by name": session.get(
            CONSOLE + "/search", params={"q": SCRIPT_NAME, "kind": "customer"}
        ),
        "customer page": session.get(f"{CONSOLE}/customers/{customer['customer_id']}"),
    }
    probe = session.get(CONSOLE + "/search", params={"q": SCRIPT_PROBE, "kind": "customer"})
    assert probe.status_code == 200, probe.status_code
    assert SCRIPT_PROBE not in probe.text and ESCAPED_PROBE in probe.text
    for what, response in pages.items():
        assert response.status_code == 200, (what, response.status_code)
        assert SCRIPT_NAME not in response.text, what
        assert "<script>alert" not in response.text, what
        assert ESCAPED_NAME in response.text, what
    assert customer["customer_id"] in pages["search by id"].text
    # No inline script at all: every <script> names a file of the console's own.
    for what, response in pages.items():
        for tag in re.findall(r"<script\b[^>]*>", response.text, re.IGNORECASE):
            assert re.search(r'\bsrc="/console/static/', tag), (what, tag)


# --- the session cookie --------------------------------------------------------------------


def test_the_session_cookie_is_httponly_strict_secure_and_scoped(server: TallyServer) -> None:
    """The login sets `tally_console` HttpOnly, SameSite=Strict, Secure, Path=/console with
    a random value of at least 32 bytes; two logins get different values; logout deletes
    it and the old value opens nothing any more."""
    first = console_login(server, "supervisor1")
    second = console_login(server, "supervisor1")
    try:
        attributes = cookie_attributes(first.login_set_cookie)
        assert "httponly" in attributes, first.login_set_cookie
        assert "secure" in attributes, first.login_set_cookie
        assert attributes.get("samesite", "").lower() == "strict", first.login_set_cookie
        assert attributes.get("path") == CONSOLE, first.login_set_cookie
        assert "domain" not in attributes, first.login_set_cookie
        value = cookie_value(first.login_set_cookie)
        assert len(value) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", value), value
        assert value != cookie_value(second.login_set_cookie)
        logout = first.post(CONSOLE + "/logout")
        assert logout.status_code == 303, logout.status_code
        assert logout.headers["location"].startswith(CONSOLE + "/login")
        deleted = set_cookies(logout).get(COOKIE, "")
        deleted_attributes = cookie_attributes(deleted)
        assert deleted and (
            cookie_value(deleted) == ""
            or deleted_attributes.get("max-age") == "0"
            or "expires" in deleted_attributes
        ), deleted
        after = first.get(CONSOLE + "/")
        assert after.status_code == 303 and after.headers["location"].startswith(CONSOLE + "/login")
        assert second.get(CONSOLE + "/").status_code == 200  # the other session lives on
    finally:
        first.close()
        second.close()


# --- security headers -----------------------------------------------------------------------


def assert_security_headers(response: httpx.Response, what: str, *, page: bool = True) -> None:
    headers = response.headers
    assert headers.get("content-security-policy") == CSP, (what, headers)
    assert headers.get("x-frame-options") == "DENY", (what, headers)
    assert headers.get("x-content-type-options") == "nosniff", (what, headers)
    assert headers.get("referrer-policy") == "same-origin", (what, headers)
    if page:
        assert "no-store" in headers.get("cache-control", ""), (what, headers)


def test_every_console_response_carries_the_security_headers(
    server: TallyServer, sessions: Sessions, records: dict[str, str]
) -> None:
    """CSP, X-Frame-Options, nosniff, Referrer-Policy and no-store on every GET route
    (as an operator allowed to see it, with real records: each answers 200), on the
    login page, a redirect, a 401, a 403 and a 404 page."""
    roles = operator_roles()
    failures = []
    for route in (r for r in protected_routes() if r.method == "GET"):
        operator = next(
            (
                name
                for name, role in roles.items()
                if route.permission is None or permitted(role, route.permission)
            ),
            None,
        )
        if operator is None:
            continue
        known = all(name in records for name in parameters_of(route.pattern))
        response = sessions[operator].get(fill(route.pattern, records))
        if (known and response.status_code != 200) or response.status_code >= 500:
            failures.append((route_id(route), operator, response.status_code))
        try:
            assert_security_headers(response, route_id(route))
        except AssertionError as error:
            failures.append((route_id(route), "headers", str(error)[:300]))
    assert not failures, failures
    with httpx.Client(timeout=30) as http:
        assert_security_headers(http.get(server.url + CONSOLE + "/login"), "login")
        assert_security_headers(http.get(server.url + CONSOLE + "/"), "redirect")
        assert_security_headers(
            http.get(server.url + CONSOLE + "/", headers={"HX-Request": "true"}), "401"
        )
    denied = sessions["loan1"].get(CONSOLE + "/monitoring")
    assert denied.status_code == 403
    assert_security_headers(denied, "403")
    missing = sessions["admin1"].get(CONSOLE + "/no-such-page")
    assert missing.status_code == 404
    assert_security_headers(missing, "404")
    static = sessions["admin1"].get(CONSOLE + "/static/htmx.min.js")
    assert static.status_code == 200
    assert_security_headers(static, "static", page=False)


# --- last: it locks loan1 out of this module's server for five minutes -------------------


def test_login_throttling_answers_429(server: TallyServer) -> None:
    """Five failed logins for one operator within five minutes: the sixth attempt, even
    with the right password, is refused 429; another operator is unaffected."""
    with httpx.Client(timeout=30) as http:
        for _ in range(5):
            response, _ = post_login(server.url, http, "loan1", "wrong-password")
            assert response.status_code != 303
        throttled, cookies = post_login(server.url, http, "loan1", console_password("loan1"))
        assert throttled.status_code == 429, throttled.status_code
        assert COOKIE not in cookies
    console_login(server, "risk2").close()
