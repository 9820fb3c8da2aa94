"""The operations console in a real browser: Debian's chromium driven by Playwright against
a real `tally serve` (hypercorn; one smoke test on uvicorn).

An operator logs in, searches a customer registered over the API, opens the customer's
and the account's pages; a product manager proposes a lower per-transaction cap for the
app channel and an administrator approves it in the approvals inbox; a signed app
transfer that was allowed before the change is then refused by the new cap, and the
refusal appears live in the monitoring page's refusals table (polled by the page, waited
for with Playwright's `expect`, never a sleep). The reports page offers its CSV.

On every page: no script error, and no Content-Security-Policy violation (the console has
no inline script or style). Screenshots of the main pages (1280x900 viewport, full page)
go to a temporary folder, or to the one `TALLY_CONSOLE_SCREENSHOTS` names:
`TALLY_CONSOLE_SCREENSHOTS=docs/console` refreshes the ones docs/console.md shows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from channels.client import TallyClient
from tests.admin_helpers import no_risk_rules
from tests.console.conftest import CONSOLE, console_password, screenshots_dir
from tests.http_helpers import (
    TallyServer,
    balance,
    key,
    open_class_i,
    open_remote,
    problem_type,
    register,
    topup,
)

CNY = 100  # fen
FUNDS_MINOR = 20_000 * CNY  # room for every transfer here: a refusal must be the cap's
# The app channel's single-transaction cap: 50,000 CNY shipped (core/data/limits.toml),
# 1,000 CNY once the product manager's change is approved.
APP_CAP_LINE = "transfer_cap_minor = 5_000_000"
APP_CAP_NEW_LINE = "transfer_cap_minor = 100_000"
ABOVE_NEW_CAP_MINOR = 2_000 * CNY
BELOW_NEW_CAP_MINOR = 500 * CNY
REFUSAL = re.compile(r"exceeds[-_ ]channel[-_ ]transfer[-_ ]cap", re.IGNORECASE)
TIMEOUT_MS = 20_000


def yuan(amount_minor: int) -> re.Pattern[str]:
    """The amount as the console shows it: yuan with two decimals (thousands separated
    or not)."""
    whole, fen = divmod(amount_minor, 100)
    return re.compile(rf"(?:{whole:,}|{whole})\.{fen:02d}")


class Watched:
    """A page whose script errors, CSP violations and dialogs (an `alert` would mean
    injected script ran) are recorded, to be asserted empty at the end."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.problems.append(f"CSP violation: {message.text}")

    def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def check(self) -> None:
        assert not self.problems, self.problems


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=str(screenshots_dir() / f"{name}.png"), full_page=True)


def open_page(new_context: Any, server: TallyServer) -> tuple[BrowserContext, Watched]:
    context: BrowserContext = new_context(base_url=server.url)
    context.set_default_timeout(TIMEOUT_MS)
    return context, Watched(context.new_page())


def login(page: Page, operator: str, *, screenshot: str = "") -> None:
    """Log `operator` in through the login form (from wherever the page is)."""
    page.goto(CONSOLE + "/login")
    page.fill("form#login input[name=operator]", operator)
    page.fill("form#login input[name=password]", console_password(operator))
    if screenshot:
        shoot(page, screenshot)
    page.click("form#login button[type=submit]")
    expect(page.locator("span#operator")).to_contain_text(operator)


# --- the data: customers registered over the API -----------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    """This module's server, without risk rules: the transfers here test the limit rules,
    and the shipped rules would delay a transfer far above the holder's usual amounts."""
    directory = tmp_path_factory.mktemp("console-browser")
    running = TallyServer(directory / "data", extra=no_risk_rules(directory)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def app(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("app") as client:
        yield client


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter") as client:
        yield client


@pytest.fixture(scope="module")
def customer(app: TallyClient, counter: TallyClient) -> dict[str, Any]:
    """A customer verified at the app with a Class II account (20,000 CNY topped up from the
    bound card), and a payee's Class I account at the counter."""
    person = register(app, "王小明")
    account = open_remote(app, person, "class_ii")
    funded = topup(app, account, FUNDS_MINOR)
    assert funded.status_code == 201, funded.text
    payee = open_class_i(counter, register(counter, "陈静"))
    return {**person, "account_id": account, "payee": payee}


def transfer(
    app: TallyClient, customer: dict[str, Any], amount_minor: int, idempotency_key: str = ""
) -> Any:
    return app.post(
        "/v1/transfers",
        {
            "debit_account_id": customer["account_id"],
            "credit_account_id": customer["payee"],
            "amount_minor": amount_minor,
            "password": "135790",
        },
        idempotency_key=idempotency_key or key(),
    )


def search_transfer(page: Page, idempotency_key: str, channel: str) -> None:
    """Search a transfer by the Idempotency-Key a channel sent and open the one result."""
    page.click("a#nav-search")
    page.fill("form#search input[name=q]", idempotency_key)
    page.select_option("form#search select[name=kind]", "transfer")
    page.select_option("form#search select[name=channel]", channel)  # the registry's channels
    page.locator("form#search [type=submit]").click()
    results = page.locator("table#results a.result")
    expect(results).to_have_count(1)
    results.first.click()
    expect(page).to_have_url(re.compile(r"/console/transfers/[0-9a-f]{32}$"))


# --- the tests ----------------------------------------------------------------------------


def test_login_home_and_languages(new_context: Any, server: TallyServer) -> None:
    """A page without a session leads to the login; a wrong password shows #login-error; the
    right one opens the home page with the operator, every page of an administrator's role
    in the navigation, and the labels switch to Chinese and back."""
    context, watched = open_page(new_context, server)
    page = watched.page
    page.goto(CONSOLE + "/search")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    page.fill("form#login input[name=operator]", "admin1")
    page.fill("form#login input[name=password]", "not-the-password")
    page.click("form#login button[type=submit]")
    expect(page.locator("#login-error")).to_be_visible()
    login(page, "admin1", screenshot="login")
    page.goto(CONSOLE + "/")
    expect(page.locator("span#operator")).to_contain_text("administrator")
    for link in ("search", "approvals", "parameters", "monitoring", "reports"):
        expect(page.locator(f"nav#nav a#nav-{link}")).to_be_visible()
    shoot(page, "home")
    english = page.locator("a#nav-search").inner_text()
    page.click("a#lang-zh")
    expect(page.locator("a#nav-search")).to_have_text(re.compile(r"[\u4e00-\u9fff]"))
    shoot(page, "home-zh")
    page.click("a#lang-en")
    expect(page.locator("a#nav-search")).to_have_text(english)
    watched.check()
    context.close()


def test_search_a_customer_and_open_the_account(
    new_context: Any, server: TallyServer, counter: TallyClient, customer: dict[str, Any]
) -> None:
    """A supervisor finds the customer by mobile, opens their page (name, KYC verified,
    the account listed), then the account's page: its balance in yuan, its history."""
    context, watched = open_page(new_context, server)
    page = watched.page
    login(page, "supervisor1")
    page.click("a#nav-search")
    page.fill("form#search input[name=q]", customer["_mobile"])
    page.select_option("form#search select[name=kind]", "customer")
    page.locator("form#search [type=submit]").click()
    results = page.locator("table#results a.result")
    expect(results).to_have_count(1)
    shoot(page, "search")
    results.first.click()
    expect(page).to_have_url(re.compile(rf"/console/customers/{customer['customer_id']}$"))
    expect(page.locator("body")).to_contain_text(customer["name"])
    expect(page.locator("body")).to_contain_text(re.compile("verified", re.IGNORECASE))
    assert customer["_id_number"] not in page.content()  # masked
    account_link = page.locator(f"table#accounts a[href$='/accounts/{customer['account_id']}']")
    expect(account_link).to_have_count(1)
    shoot(page, "customer")
    account_link.click()
    expect(page).to_have_url(re.compile(rf"/console/accounts/{customer['account_id']}$"))
    expect(page.locator("#balance")).to_contain_text(yuan(balance(counter, customer["account_id"])))
    expect(page.locator("table#history")).to_be_visible()
    shoot(page, "account")
    watched.check()
    context.close()


def test_what_happened_to_a_request(
    new_context: Any, server: TallyServer, app: TallyClient, customer: dict[str, Any]
) -> None:
    """A teller finds a channel's request by its Idempotency-Key: a posted transfer shows
    its 201 answer, amount and posting; a refused one (more than the account holds, more
    than the channel's cap) shows the 422 and the refusal's problem type."""
    posted_key, refused_key = key(), key()
    posted = transfer(app, customer, 300 * CNY, posted_key)
    assert posted.status_code == 201, posted.text
    refused = transfer(app, customer, 1_000_000 * CNY, refused_key)
    assert refused.status_code == 422, refused.text
    context, watched = open_page(new_context, server)
    page = watched.page
    login(page, "teller1")
    search_transfer(page, posted_key, "app")
    expect(page.locator("h1")).to_contain_text(posted.json()["transfer_id"])
    expect(page.locator("#answer")).to_contain_text("201")
    expect(page.locator("#answer")).to_contain_text(yuan(300 * CNY))
    expect(page.locator("table#postings")).to_contain_text(customer["payee"])
    shoot(page, "transfer")
    search_transfer(page, refused_key, "app")
    expect(page.locator("#answer")).to_contain_text("422")
    expect(page.locator("#answer")).to_contain_text(problem_type(refused))
    watched.check()
    context.close()


def test_limit_change_by_maker_and_checker_takes_effect_on_a_live_transfer(
    new_context: Any, server: TallyServer, app: TallyClient, customer: dict[str, Any]
) -> None:
    """The product manager lowers the app channel's single-transfer cap to 1,000 CNY in the
    limits text (an approval request, not a change); the administrator sees the diff in
    the inbox and approves it; a 2,000 CNY app transfer, allowed before, is then refused
    with exceeds-channel-transfer-cap while 500 CNY still passes; the monitoring page,
    open meanwhile, shows the refusal appear in table#refusals without a reload."""
    allowed = transfer(app, customer, ABOVE_NEW_CAP_MINOR)
    assert allowed.status_code == 201, allowed.text

    # The maker: product1 edits the limits text.
    maker_context, maker = open_page(new_context, server)
    login(maker.page, "product1")
    maker.page.click("a#nav-parameters")
    expect(maker.page.locator("a[href='/console/parameters/limits']")).to_be_visible()
    shoot(maker.page, "parameters")
    maker.page.click("a[href='/console/parameters/limits']")
    expect(maker.page.locator("pre#current")).to_contain_text(APP_CAP_LINE)
    expect(maker.page.locator("table#versions")).to_be_visible()
    text_area = maker.page.locator("form#edit textarea[name=text]")
    text = text_area.input_value()
    app_section = text.index("[channels.app]")
    cap_at = text.index(APP_CAP_LINE, app_section)
    text_area.fill(text[:cap_at] + APP_CAP_NEW_LINE + text[cap_at + len(APP_CAP_LINE) :])
    maker.page.fill("form#edit [name=reason]", "app: 1,000 CNY per transaction")
    shoot(maker.page, "parameter-limits")
    maker.page.locator("form#edit [type=submit]").click()
    request_id = maker.page.locator("#request-id").inner_text().strip()
    assert request_id, "no #request-id after the edit"
    expect(maker.page.locator("#diff .del")).to_contain_text(APP_CAP_LINE)
    expect(maker.page.locator("#diff .add")).to_contain_text(APP_CAP_NEW_LINE)
    expect(maker.page.locator("form#approve")).to_have_count(0)  # never their own
    still = transfer(app, customer, ABOVE_NEW_CAP_MINOR)
    assert still.status_code == 201, still.text  # a request changes nothing yet

    # The monitoring page, open before the refusal happens.
    watch_context, monitor = open_page(new_context, server)
    login(monitor.page, "risk1")
    monitor.page.click("a#nav-monitoring")
    refusal_rows = monitor.page.locator("table#refusals tr", has_text=REFUSAL)
    expect(monitor.page.locator("table#refusals")).to_be_attached()
    expect(refusal_rows).to_have_count(0)

    # The checker: admin1 approves it from the inbox.
    checker_context, checker = open_page(new_context, server)
    login(checker.page, "admin1")
    checker.page.click("a#nav-approvals")
    link = checker.page.locator(f"table#pending a.request[href$='/approvals/{request_id}']")
    expect(link).to_have_count(1)
    shoot(checker.page, "approvals")
    link.click()
    expect(checker.page.locator("div#diff .del")).to_contain_text(APP_CAP_LINE)
    expect(checker.page.locator("div#diff .add")).to_contain_text(APP_CAP_NEW_LINE)
    shoot(checker.page, "approval-detail")
    checker.page.fill("form#approve textarea[name=reason]", "reviewed: within the risk policy")
    checker.page.locator("form#approve [type=submit]").click()
    expect(checker.page.locator("#result")).to_contain_text(re.compile("applied", re.IGNORECASE))
    shoot(checker.page, "approval-applied")

    # The new cap on live transfers.
    refused = transfer(app, customer, ABOVE_NEW_CAP_MINOR)
    assert refused.status_code == 422, refused.text
    assert problem_type(refused) == "exceeds-channel-transfer-cap", refused.text
    below = transfer(app, customer, BELOW_NEW_CAP_MINOR)
    assert below.status_code == 201, below.text

    # The refusal appears in monitoring by itself (the page polls).
    # One row per (code, channel): this code at the app channel, refused once so far.
    row = refusal_rows.filter(has=monitor.page.get_by_role("cell", name="app", exact=True))
    expect(row).to_have_count(1, timeout=30_000)
    expect(row.get_by_role("cell", name="1", exact=True).first).to_be_visible()
    shoot(monitor.page, "monitoring")

    # The parameters page: version 1 in force, made by this request.
    maker.page.goto(CONSOLE + "/parameters/limits")
    expect(maker.page.locator("pre#current")).to_contain_text(APP_CAP_NEW_LINE)
    expect(maker.page.locator("table#versions")).to_contain_text(request_id)

    for watched in (maker, monitor, checker):
        watched.check()
    for context in (maker_context, watch_context, checker_context):
        context.close()


def test_reports_page_offers_the_days_csv(new_context: Any, server: TallyServer) -> None:
    """The reports page lists the business days with a CSV download: text/csv with a
    header row."""
    context, watched = open_page(new_context, server)
    page = watched.page
    login(page, "admin1")
    page.click("a#nav-reports")
    csv_link = page.locator("a.csv").first
    expect(csv_link).to_be_visible()
    shoot(page, "reports")
    href = csv_link.get_attribute("href")
    assert href and re.search(r"/console/reports/\d{4}-\d{2}-\d{2}\.csv$", href), href
    download = context.request.get(href)
    assert download.status == 200, download.status
    assert download.headers["content-type"].startswith("text/csv"), download.headers
    header = download.text().splitlines()[0]
    assert "," in header and not re.search(r"\d{3,}", header), header
    watched.check()
    context.close()


# --- the same console on uvicorn -----------------------------------------------------------


@pytest.fixture
def uvicorn_server(tmp_path: Any) -> Iterator[TallyServer]:
    running = TallyServer(tmp_path / "data", server="uvicorn").start()
    yield running
    running.stop()


def test_uvicorn_serves_the_console(new_context: Any, uvicorn_server: TallyServer) -> None:
    """On uvicorn too: login, the home page with its static files (htmx, the stylesheet),
    an htmx-free page of each kind, logout back to the login page."""
    context, watched = open_page(new_context, uvicorn_server)
    page = watched.page
    static = []
    page.on(
        "response",
        lambda response: (
            static.append((response.url, response.status))
            if "/console/static/" in response.url
            else None
        ),
    )
    login(page, "admin1")
    page.goto(CONSOLE + "/")
    expect(page.locator("nav#nav")).to_be_visible()
    assert static and all(status in (200, 304) for _, status in static), static
    page.click("a#nav-approvals")
    expect(page.locator("table#pending")).to_be_attached()
    page.locator("form[action='/console/logout'] [type=submit]").click()
    expect(page).to_have_url(re.compile(r"/console/login"))
    page.goto(CONSOLE + "/")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    watched.check()
    context.close()
