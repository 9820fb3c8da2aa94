"""The console's framework and its customer pages, over plain httpx against a real server.

What the framework promises every page (channels/console/app.py): login with the
operator's console password (a wrong one refused, the sixth failure in five minutes
throttled with 429), a session cookie that is HttpOnly, Secure, SameSite=Strict and
scoped to /console, no page without a session (303 to the login page for a GET, 401
for a POST or an htmx request), the CSRF token on every POST, the route's permission
(403), the security headers, autoescaping, the language switch, and every login,
logout and successful POST in the operator audit log. And the pages of
channels/console/pages_customers.py: a customer found by each key, an account found by
id, a transfer by id and by Idempotency-Key with its channel, the customer and account
pages (balances in yuan from integer fen, history paging), the unlock request and the
confirmation in person.

The server, the console sessions and the helpers are tests/console/conftest.py's.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from channels.client import TallyClient
from tests.admin_helpers import operator_client
from tests.console.conftest import (
    CONSOLE,
    CSP,
    ConsoleSession,
    Sessions,
    console_login,
    cookie_attributes,
    csrf_of,
    post_login,
    set_cookies,
)
from tests.http_helpers import (
    TallyServer,
    cash_deposit,
    key,
    mobile,
    open_class_i,
    register,
    register_pending,
    resident_id,
)

SCRIPT_NAME = "<script>alert('x')</script>"  # a customer name has no digits


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    client = server.client("counter")
    yield client
    client.close()


@pytest.fixture(scope="module")
def customer(counter: TallyClient) -> dict[str, Any]:
    """A verified customer with a Class I account, 21 cash deposits of 1.23 yuan on it
    (one page of history and a bit), the last with a known Idempotency-Key."""
    registered = register(counter, "王小明", mobile_number=mobile())
    registered["_account"] = open_class_i(counter, registered)
    for _ in range(20):
        cash_deposit(counter, registered["_account"], 123)
    registered["_key"] = key()
    response = counter.post(
        f"/v1/accounts/{registered['_account']}/cash-deposits",
        {"amount_minor": 123},
        idempotency_key=registered["_key"],
    )
    assert response.status_code == 201, response.text
    registered["_transfer"] = response.json()["transfer_id"]
    return registered


def page_of(response: httpx.Response) -> str:
    return html.unescape(response.text)


def result_links(response: httpx.Response) -> list[str]:
    table = re.search(r'<table id="results".*?</table>', response.text, re.S)
    assert table is not None, response.text[:3000]
    return re.findall(r'<a class="result" href="([^"]+)"', table.group(0))


def audit_items(server: TallyServer) -> list[dict[str, Any]]:
    admin = operator_client(server, "admin1")
    try:
        response = admin.get("/v1/admin/audit", query="limit=1000")
        assert response.status_code == 200, response.text
        return list(response.json()["items"])
    finally:
        admin.close()


# --- login and sessions ---------------------------------------------------------------


def test_a_good_login_gives_a_strict_session_cookie(server: TallyServer) -> None:
    """The right console password logs in: 303 to the console, a fresh random session
    cookie that is HttpOnly, Secure, SameSite=Strict and only for /console."""
    with httpx.Client(timeout=30) as http:
        response, _ = post_login(server.url, http, "teller1", "dev-teller1-console")
    assert response.status_code == 303, response.text
    assert response.headers["location"] == CONSOLE + "/"
    cookie = set_cookies(response)["tally_console"]
    attributes = cookie_attributes(cookie)
    assert {"httponly", "secure"} <= set(attributes)
    assert attributes["samesite"] == "Strict"
    assert attributes["path"] == CONSOLE
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert len(value) >= 43  # 32 random bytes, base64url


@pytest.mark.parametrize(
    ("operator", "password"),
    [("teller1", "dev-teller1-console-wrong"), ("nobody", "dev-nobody-console")],
)
def test_a_bad_login_is_refused_alike(server: TallyServer, operator: str, password: str) -> None:
    """A wrong password and an unknown operator get the same 401 login page with its
    message in #login-error, and no session cookie."""
    with httpx.Client(timeout=30) as http:
        response, _ = post_login(server.url, http, operator, password)
    assert response.status_code == 401
    assert 'id="login-error"' in response.text
    assert "tally_console" not in set_cookies(response)
    if operator == "nobody":  # a name that is no operator's fills no audit log
        assert not any(item["who"] in ("nobody", "-") for item in audit_items(server))


def test_a_login_without_the_form_token_is_refused(server: TallyServer) -> None:
    """The login form's token (double-submitted with its cookie) is required: a login
    posted from elsewhere is refused (403) and logs nobody in."""
    with httpx.Client(timeout=30) as http:
        response = http.post(
            server.url + CONSOLE + "/login",
            data={"operator": "teller1", "password": "dev-teller1-console"},
        )
    assert response.status_code == 403
    assert "tally_console" not in set_cookies(response)


def test_logins_are_throttled_per_operator(server: TallyServer) -> None:
    """Five failed logins of one operator within five minutes: the sixth attempt is
    refused with 429 and Retry-After, even with the right password; each failure and the
    refusal are in the audit log, without the password."""
    with httpx.Client(timeout=30) as http:
        for _ in range(5):
            response, _ = post_login(server.url, http, "risk2", "not-the-password")
            assert response.status_code == 401
        response, _ = post_login(server.url, http, "risk2", "dev-risk2-console")
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert 'id="login-error"' in response.text
    logins = [
        item
        for item in audit_items(server)
        if item["what"] == "console:login" and item["who"] == "risk2"
    ]
    outcomes = [item["detail"]["outcome"] for item in logins]
    assert outcomes.count("failed") == 5 and outcomes.count("throttled") == 1
    assert "not-the-password" not in str(logins)


def test_no_page_without_a_session(server: TallyServer, customer: dict[str, Any]) -> None:
    """Without a session: a page GET is sent to the login page (and back after), a POST
    and an htmx request get 401 (htmx told to go to the login page)."""
    path = f"{CONSOLE}/customers/{customer['customer_id']}"
    with httpx.Client(timeout=30) as http:
        page = http.get(server.url + path)
        assert page.status_code == 303
        assert page.headers["location"].startswith(CONSOLE + "/login?next=")
        assert "customers" in page.headers["location"]
        fragment = http.get(server.url + path, headers={"HX-Request": "true"})
        assert fragment.status_code == 401
        assert fragment.headers["hx-redirect"] == CONSOLE + "/login"
        action = http.post(server.url + f"{CONSOLE}/accounts/{customer['_account']}/unlock")
        assert action.status_code == 401
        forged = http.get(server.url + path, headers={"Cookie": "tally_console=forged-value"})
        assert forged.status_code == 303


def test_logout_ends_the_session(server: TallyServer) -> None:
    """Logging out (a POST with the CSRF token) ends the session on the server: the old
    cookie no longer opens a page; the logout is audited."""
    session = console_login(server, "supervisor1")
    try:
        assert session.get(CONSOLE + "/").status_code == 200
        out = session.post(CONSOLE + "/logout")
        assert out.status_code == 303
        assert out.headers["location"] == CONSOLE + "/login"
        assert session.get(CONSOLE + "/").status_code == 303
    finally:
        session.close()
    assert any(
        item["what"] == "console:logout" and item["who"] == "supervisor1"
        for item in audit_items(server)
    )


# --- what every page gets ---------------------------------------------------------------


def test_security_headers_on_pages_and_static_files(sessions: Sessions) -> None:
    """Pages, error pages and static files carry the CSP and the other headers; pages
    are never cached, static files may be; base.html loads htmx from the console itself
    with its inline indicator styles off."""
    teller = sessions["teller1"]
    home = teller.get(CONSOLE + "/")
    missing = teller.get(CONSOLE + "/no-such-page")
    static = teller.get(CONSOLE + "/static/htmx.min.js")
    assert (home.status_code, missing.status_code, static.status_code) == (200, 404, 200)
    for response in (home, missing, static):
        assert response.headers["content-security-policy"] == CSP
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
    assert home.headers["cache-control"] == "no-store"
    assert "no-store" not in static.headers["cache-control"]
    assert '<script src="/console/static/htmx.min.js"' in home.text
    assert '"includeIndicatorStyles": false' in home.text
    assert "<style" not in home.text and " style=" not in home.text
    for link in ("nav-search", "lang-zh", "lang-en", "operator"):
        assert f'id="{link}"' in home.text


def test_csrf_token_required_on_posts(sessions: Sessions, customer: dict[str, Any]) -> None:
    """A POST without the session's CSRF token, or with another, is refused (403) and does
    nothing; the token as a form field or as htmx's X-CSRF-Token header is accepted."""
    teller = sessions["teller1"]
    path = f"{CONSOLE}/accounts/{customer['_account']}/unlock"
    assert teller.post(path, {"reason": "x"}, csrf="").status_code == 403
    assert teller.post(path, {"reason": "x"}, csrf="A" * 43).status_code == 403
    page = teller.get(f"{CONSOLE}/accounts/{customer['_account']}")
    assert 'id="unlock"' in page.text  # nothing was requested
    done = teller.post(path, {"reason": "forgot it"}, header_csrf=teller.csrf, htmx=True)
    assert done.status_code == 200, done.text
    assert done.headers["hx-redirect"].startswith(f"{CONSOLE}/accounts/{customer['_account']}")


def test_a_role_without_the_permission_gets_403(
    sessions: Sessions, customer: dict[str, Any]
) -> None:
    """A product manager reads no customer and an administrator requests no unlock: 403
    pages, for GET and POST alike, and their nav does not offer the search."""
    product = sessions["product1"]
    for path in (
        f"{CONSOLE}/search?q=x",
        f"{CONSOLE}/customers/{customer['customer_id']}",
        f"{CONSOLE}/accounts/{customer['_account']}",
        f"{CONSOLE}/transfers/{customer['_transfer']}",
    ):
        assert product.get(path).status_code == 403, path
    assert 'id="nav-search"' not in product.get(CONSOLE + "/").text
    admin = sessions["admin1"]
    refused = admin.post(f"{CONSOLE}/accounts/{customer['_account']}/unlock", {"reason": "x"})
    assert refused.status_code == 403
    assert admin.post(f"{CONSOLE}/customers/{customer['customer_id']}/confirm").status_code == 403


def test_the_language_switch(sessions: Sessions) -> None:
    """?lang=zh sets the language cookie and answers in Chinese; Accept-Language zh-CN
    alone chooses Chinese too; the default is English."""
    teller = sessions["teller1"]
    chinese = teller.get(CONSOLE + "/search?lang=zh")
    assert chinese.status_code == 200
    assert "tally_console_lang" in set_cookies(chinese)
    assert "跨渠道查询" in chinese.text
    assert "Search across channels" in teller.get(CONSOLE + "/search").text
    accepted = teller.http.get(
        teller.url + CONSOLE + "/search",
        headers={**teller.headers(), "Accept-Language": "zh-CN,zh;q=0.9"},
    )
    assert "跨渠道查询" in accepted.text
    assert teller.get(CONSOLE + "/search?lang=fr").status_code == 400


def test_bad_input_is_a_4xx_page(sessions: Sessions) -> None:
    """A repeated query parameter, an unknown search kind, a malformed id: precise 4xx
    pages, never a 500."""
    teller = sessions["teller1"]
    assert teller.get(CONSOLE + "/search?q=a&q=b").status_code == 400
    assert teller.get(CONSOLE + "/search?q=a&kind=wallet").status_code == 400
    assert teller.get(CONSOLE + "/search?q=a&kind=account").status_code == 400
    assert teller.get(CONSOLE + "/search?q=zz&kind=transfer").status_code == 400
    assert teller.get(CONSOLE + "/search?q=k&kind=transfer&channel=nope").status_code == 400
    assert teller.get(CONSOLE + "/customers/not-a-customer").status_code == 404
    assert teller.get(CONSOLE + "/accounts/12x").status_code == 404
    assert teller.get(CONSOLE + "/transfers/" + "0" * 31 + "1").status_code == 404
    assert teller.get(CONSOLE + "/accounts/1?before=x").status_code in (400, 404)


# --- search and the customer pages -------------------------------------------------------


def test_a_customer_named_script_renders_as_text(server: TallyServer, sessions: Sessions) -> None:
    """Autoescaping: a customer whose name is markup shows as that text on the search
    results and the customer page, never as an element."""
    app = server.client("app")
    try:
        pending = register_pending(app, SCRIPT_NAME, mobile_number=mobile())
    finally:
        app.close()
    teller = sessions["teller1"]
    found = teller.get(CONSOLE + "/search?kind=customer&q=" + pending["customer_id"])
    page = teller.get(CONSOLE + "/customers/" + pending["customer_id"])
    for response in (found, page):
        assert response.status_code == 200
        assert "<script>alert" not in response.text
        assert "&lt;script&gt;alert(" in response.text


def test_search_finds_a_customer_by_each_key(sessions: Sessions, customer: dict[str, Any]) -> None:
    """A customer by customer id, resident id, mobile and name: one link to their page."""
    teller = sessions["teller1"]
    target = f"{CONSOLE}/customers/{customer['customer_id']}"
    for text in (
        customer["customer_id"],
        customer["_id_number"],
        customer["_mobile"],
        customer["name"],
    ):
        response = teller.get(CONSOLE + "/search", params={"kind": "customer", "q": text})
        assert response.status_code == 200, response.text
        assert target in result_links(response), text
    nobody = teller.get(CONSOLE + "/search", params={"kind": "customer", "q": resident_id()})
    assert result_links(nobody) == []


def test_search_finds_accounts_and_transfers(sessions: Sessions, customer: dict[str, Any]) -> None:
    """An account by its id; a transfer by its id and by its Idempotency-Key with the
    channel that sent it (another channel's key finds nothing)."""
    teller = sessions["teller1"]
    account = teller.get(CONSOLE + "/search", params={"kind": "account", "q": customer["_account"]})
    assert result_links(account) == [f"{CONSOLE}/accounts/{customer['_account']}"]
    transfer_page = f"{CONSOLE}/transfers/{customer['_transfer']}"
    by_id = teller.get(CONSOLE + "/search", params={"kind": "transfer", "q": customer["_transfer"]})
    assert result_links(by_id) == [transfer_page]
    by_key = teller.get(
        CONSOLE + "/search",
        params={"kind": "transfer", "q": customer["_key"], "channel": "counter"},
    )
    assert result_links(by_key) == [transfer_page]
    other = teller.get(
        CONSOLE + "/search", params={"kind": "transfer", "q": customer["_key"], "channel": "app"}
    )
    assert result_links(other) == []


def test_the_customer_page(sessions: Sessions, customer: dict[str, Any]) -> None:
    """Name, masked resident id and mobile, the verification with its steps and provider
    calls, and the accounts linked to their pages."""
    teller = sessions["teller1"]
    response = teller.get(f"{CONSOLE}/customers/{customer['customer_id']}")
    assert response.status_code == 200, response.text
    text = page_of(response)
    assert customer["name"] in text
    assert customer["_id_number"] not in text and customer["_mobile"] not in text
    assert 'id="kyc-status"' in text and "verified" in text
    assert 'id="steps"' in text and 'id="calls"' in text
    assert f'href="{CONSOLE}/accounts/{customer["_account"]}"' in text


def test_the_account_page(sessions: Sessions, customer: dict[str, Any]) -> None:
    """Class, flags, the balance in yuan (21 x 1.23 = 25.83, from integer fen), the
    history a page at a time (a#next-page to the older one), the unlock and closing
    actions."""
    teller = sessions["teller1"]
    path = f"{CONSOLE}/accounts/{customer['_account']}"
    response = teller.get(path)
    assert response.status_code == 200, response.text
    text = response.text
    balance = re.search(r'id="balance"[^>]*>([^<]+)<', text)
    assert balance is not None and balance.group(1).strip() == "25.83"
    assert "Class I" in text and 'id="flags"' in text and 'id="close"' in text
    assert len(re.findall(r'<a class="transfer"', text)) == 20
    older = re.search(r'<a id="next-page" href="([^"]+)"', text)
    assert older is not None
    second = teller.get(html.unescape(older.group(1)))
    assert second.status_code == 200
    assert len(re.findall(r'<a class="transfer"', second.text)) == 1
    assert 'id="next-page"' not in second.text


def test_the_transfer_page(sessions: Sessions, customer: dict[str, Any]) -> None:
    """What happened to a request: its answer (201), its risk decision (none fired), its
    posting."""
    teller = sessions["teller1"]
    response = teller.get(f"{CONSOLE}/transfers/{customer['_transfer']}")
    assert response.status_code == 200, response.text
    assert 'data-status="201"' in response.text
    assert 'id="risk"' in response.text and 'id="postings"' in response.text
    assert "1.23" in response.text


def test_an_unlock_request_goes_to_the_approvals_inbox(
    server: TallyServer, sessions: Sessions, counter: TallyClient
) -> None:
    """A teller's unlock request from the account page is a pending maker-checker request
    (not an unlock), shown on the page, and the POST is in the audit log."""
    holder = register(counter, "赵六", mobile_number=mobile())
    account = open_class_i(counter, holder)
    teller = sessions["teller1"]
    response = teller.post(f"{CONSOLE}/accounts/{account}/unlock", {"reason": "at the counter"})
    assert response.status_code == 303, response.text
    request_id = re.search(r"requested=(A[0-9a-f]{12})", response.headers["location"])
    assert request_id is not None
    page = teller.get(response.headers["location"])
    assert request_id.group(1) in page.text
    assert 'id="unlock"' not in page.text  # pending: not requested twice
    items = audit_items(server)
    assert any(
        item["what"] == "request" and item["object"] == f"unlock_password:{account}"
        for item in items
    )
    assert any(
        item["what"] == "console:account_unlock_request"
        and item["who"] == "teller1"
        and item["object"] == f"account_id={account}"
        for item in items
    )


def test_the_bank_closes_an_empty_account_after_a_supervisor_approves(
    server: TallyServer, sessions: Sessions, counter: TallyClient, customer: dict[str, Any]
) -> None:
    """close_account: the teller's request is refused at once for an account holding
    money (409 account-not-empty, shown on the page; nothing requested); for an empty one
    it is a pending request; the supervisor approves it in the inbox and the account is
    closed (its page says so, it offers no closing any more, and a transfer to it is
    refused by the ledger)."""
    teller, supervisor = sessions["teller1"], sessions["supervisor1"]
    refused = teller.post(f"{CONSOLE}/accounts/{customer['_account']}/close", {"reason": "x"})
    assert refused.status_code == 409, refused.text
    assert "account-not-empty" in refused.text or "holds money" in refused.text
    holder = register(counter, "孙七", mobile_number=mobile())
    account = open_class_i(counter, holder)
    made = teller.post(f"{CONSOLE}/accounts/{account}/close", {"reason": "dormant"})
    assert made.status_code == 303, made.text
    found = re.search(r"requested=(A[0-9a-f]{12})", made.headers["location"])
    assert found is not None
    request_id = found.group(1)
    page = teller.get(f"{CONSOLE}/accounts/{account}")
    assert 'id="close-pending"' in page.text and 'id="close"' not in page.text
    assert "closed" not in _flags(page.text)
    approved = supervisor.post(f"{CONSOLE}/approvals/{request_id}/approve", {"reason": "ok"})
    assert approved.status_code == 303, approved.text
    after = supervisor.get(f"{CONSOLE}/approvals/{request_id}")
    assert "applied" in after.text
    closed = teller.get(f"{CONSOLE}/accounts/{account}")
    assert "closed" in _flags(closed.text)
    assert 'id="close"' not in closed.text and 'id="close-pending"' not in closed.text
    deposit = counter.post(
        f"/v1/accounts/{account}/cash-deposits", {"amount_minor": 100}, idempotency_key=key()
    )
    assert 400 <= deposit.status_code < 500 and "closed" in deposit.text, deposit.text


def _flags(text: str) -> str:
    found = re.search(r'id="flags"[^>]*>(.*?)</', text, re.S)
    assert found is not None, "no flags on the account page"
    return found.group(1)


def test_confirm_in_person_verifies_a_pending_customer(
    server: TallyServer, sessions: Sessions
) -> None:
    """A remote registration waits for its ID card and face; a teller who saw the customer
    at the counter confirms them from the customer page, and the identity check runs."""
    app = server.client("app")
    try:
        pending = register_pending(app, "钱七", mobile_number=mobile())
    finally:
        app.close()
    teller = sessions["teller1"]
    path = f"{CONSOLE}/customers/{pending['customer_id']}"
    before = teller.get(path)
    assert 'id="confirm"' in before.text
    done = teller.post(path + "/confirm")
    assert done.status_code == 303, done.text
    after = page_of(teller.get(path))
    assert "teller_confirmation" in after
    assert "console/teller1" in after


def test_sessions_are_per_operator(server: TallyServer) -> None:
    """Two logins of one operator are two sessions, each with its own CSRF token: one's
    token does not pass for the other."""
    first: ConsoleSession = console_login(server, "loan1")
    second: ConsoleSession = console_login(server, "loan1")
    try:
        assert first.csrf != second.csrf
        assert csrf_of(first.get(CONSOLE + "/").text) == first.csrf
        refused = second.post(CONSOLE + "/logout", csrf=first.csrf)
        assert refused.status_code == 403
    finally:
        first.close()
        second.close()


# --- the session store and the throttle, on their own (explicit clocks) -----------------


def test_sessions_expire_idle_and_absolute_and_are_bounded() -> None:
    """A session lives while used within 15 min, never past 8 h; at most `sessions_max`
    (the oldest goes); a closed one is gone; only the digest of a cookie is kept."""
    from channels.console.sessions import Sessions as Store

    store = Store(sessions_max=2)
    token, session = store.open("teller1", "teller", "127.0.0.1", 0.0)
    assert token not in str(store._live)  # kept by digest
    assert store.get(token, 14 * 60.0) is session
    assert store.get(token, 28 * 60.0) is session  # used 14 min ago: still live
    assert store.get(token, 44 * 60.0) is None  # idle 16 min: gone
    token, _ = store.open("teller1", "teller", "127.0.0.1", 0.0)
    for minute in range(10, 8 * 60, 10):
        assert store.get(token, minute * 60.0) is not None
    assert store.get(token, 8 * 3600.0 + 1) is None  # past the absolute limit
    first, _ = store.open("a", "teller", "", 0.0)
    second, _ = store.open("b", "teller", "", 0.0)
    third, _ = store.open("c", "teller", "", 0.0)
    assert store.get(first, 1.0) is None and store.get(third, 1.0) is not None
    store.close(second)
    assert store.get(second, 1.0) is None


def test_the_login_throttle() -> None:
    """Five failures of a name within the window refuse it until the oldest leaves the
    window; other names are unaffected; a success clears the count; one refusal per
    window is marked first (the audited one)."""
    from channels.console.sessions import LoginThrottle

    throttle = LoginThrottle(failures_max=5, window_s=300.0)
    for second in range(5):
        assert throttle.wait_s("risk1", float(second)) == 0.0
        throttle.failed("risk1", float(second))
    assert throttle.wait_s("risk1", 10.0) == pytest.approx(290.0)
    assert throttle.wait_s("risk2", 10.0) == 0.0
    assert throttle.first_refusal("risk1", 10.0)
    assert not throttle.first_refusal("risk1", 11.0)
    assert throttle.wait_s("risk1", 300.0) == 0.0  # the first failure left the window
    throttle.failed("risk2", 0.0)
    throttle.succeeded("risk2")
    assert throttle.wait_s("risk2", 1.0) == 0.0


def test_yuan_is_integer_arithmetic() -> None:
    """Fen to yuan text without a float: exact at any size, negative amounts included."""
    from channels.console.app import yuan

    assert yuan(0) == "0.00"
    assert yuan(5) == "0.05"
    assert yuan(-5) == "-0.05"
    assert yuan(2583) == "25.83"
    assert yuan(10**17 + 1) == "1,000,000,000,000,000.01"
    assert yuan(None) == "-"
