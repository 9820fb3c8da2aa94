"""The deposit routes end to end: a real `tally serve` (hypercorn) on a clock the tests move
(tests/clock_serve.py), signed clients, problem+json refusals.

One server for the module; the clock only moves forward (each test opens its own
deposits and reads dates from the answers). Every money test checks that what it moved
is conserved: the balances of the accounts it touched and of the bank's own accounts
change by a total of zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels.client import TallyClient
from tests.http_helpers import (
    TallyServer,
    balance,
    cash_deposit,
    key,
    open_class_i,
    open_remote,
    open_session,
    problem_type,
    register,
)

CNY = 100
DAY_S = 86_400
BANK_ACCOUNTS = ("1", "2", "3", "4")  # cash, clearing, settlement, interest expense


@pytest.fixture(scope="module")
def clock_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deposits-clock") / "offset"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, clock_file: Path) -> Iterator[TallyServer]:
    data = tmp_path_factory.mktemp("deposits") / "data"
    running = TallyServer(data, clock_file=clock_file).start()
    yield running
    running.stop()


class Days:
    """The server's clock offset, moved forward only."""

    def __init__(self, server: TallyServer) -> None:
        self.server = server
        self.offset_days = 0

    def advance(self, days: int) -> None:
        self.offset_days += days
        self.server.move_clock(self.offset_days * DAY_S)


@pytest.fixture(scope="module")
def days(server: TallyServer) -> Days:
    return Days(server)


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter") as client:
        yield client


@pytest.fixture(scope="module")
def bank(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("bank") as client:
        yield client


def customer_with_account(counter: TallyClient, amount_minor: int) -> tuple[dict[str, Any], str]:
    customer = register(counter)
    account = open_class_i(counter, customer)
    if amount_minor:
        cash_deposit(counter, account, amount_minor)
    return customer, account


def open_deposit(
    client: TallyClient,
    customer: dict[str, Any],
    source: str,
    amount_minor: int = 50_000 * CNY,
    term: str = "1y",
    idempotency_key: str | None = None,
    **fields: Any,
) -> Any:
    body = {"source_account_id": source, "amount_minor": amount_minor, "term": term}
    body.setdefault("password", "135790")
    body.update(fields)
    return client.post(
        f"/v1/customers/{customer['customer_id']}/fixed-deposits",
        body,
        idempotency_key=idempotency_key or key(),
    )


def withdraw(
    client: TallyClient, deposit: str, amount_minor: int | None, idempotency_key: str
) -> Any:
    body: dict[str, Any] = {"password": "135790"}
    if amount_minor is not None:
        body["amount_minor"] = amount_minor
    return client.post(
        f"/v1/fixed-deposits/{deposit}/withdrawals", body, idempotency_key=idempotency_key
    )


def balances(bank: TallyClient, accounts: tuple[str, ...]) -> int:
    """The sum of the balances of `accounts` and of the bank's own accounts."""
    return sum(balance(bank, account) for account in (*accounts, *BANK_ACCOUNTS))


def expect_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert problem_type(response) == slug, response.text
    body: dict[str, Any] = response.json()
    return body


def test_products_and_quote(counter: TallyClient, server: TallyServer) -> None:
    """GET /v1/products publishes the catalog and the rates in force (any channel, wechat
    too); the quote of 50,000 CNY for 1y at 0.95% pays 475.00 at maturity; a bad quote
    is a precise 422."""
    with server.client("wechat") as wechat:
        products = wechat.get("/v1/products")
    assert products.status_code == 200, products.text
    document = products.json()
    assert document["in_force"]["fixed"]["1y"] == {"rate": "0.95%", "rate_ppm": 9_500}
    assert document["in_force"]["demand"]["rate"] == "0.05%"
    quote = counter.get("/v1/fixed-deposit-quotes", query="amount_minor=5000000&term=1y")
    assert quote.status_code == 200, quote.text
    figures = quote.json()
    assert figures["at_maturity"]["interest_minor"] == 47_500
    assert figures["at_maturity"]["total_minor"] == 5_047_500
    assert figures["rate"] == "0.95%" and figures["account_id"] is None
    unknown = counter.get("/v1/fixed-deposit-quotes", query="amount_minor=5000000&term=7y")
    assert expect_problem(unknown, 422, "deposit-term-unknown")["terms"][2] == "1y"
    small = counter.get("/v1/fixed-deposit-quotes", query="amount_minor=4999&term=1y")
    assert expect_problem(small, 422, "deposit-below-minimum")["minimum_minor"] == 5_000
    missing = counter.get("/v1/fixed-deposit-quotes", query="amount_minor=5000000")
    expect_problem(missing, 422, "validation-failed")
    floaty = counter.get("/v1/fixed-deposit-quotes", query="amount_minor=50.5&term=1y")
    expect_problem(floaty, 422, "validation-failed")


def test_open_read_retry_and_conflict(
    counter: TallyClient, bank: TallyClient, server: TallyServer
) -> None:
    """Opening answers 201 with the deposit; the same key again answers the same body,
    marked Idempotent-Replayed, and moves nothing; the key with another amount is 422.
    The holder reads the deposit at the app with a session, not without; the customer
    lists it among their accounts."""
    customer, source = customer_with_account(counter, 60_000 * CNY)
    used = key()
    first = open_deposit(counter, customer, source, idempotency_key=used)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    deposit = first.json()["deposit"]
    fd = deposit["account_id"]
    assert (deposit["principal_minor"], deposit["rate"], deposit["status"]) == (
        5_000_000, "0.95%", "open",
    )  # fmt: skip
    assert deposit["interest_at_maturity_minor"] == 47_500
    before = balances(bank, (source, fd))
    again = open_deposit(counter, customer, source, idempotency_key=used)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["deposit"]["account_id"] == fd
    assert again.json()["transfer_id"] == first.json()["transfer_id"]
    other = open_deposit(counter, customer, source, 40_000 * CNY, idempotency_key=used)
    expect_problem(other, 422, "idempotency-key-reused")
    assert balance(bank, source) == 1_000_000 and balance(bank, fd) == 5_000_000
    assert balances(bank, (source, fd)) == before

    with server.client("app") as app:
        unproven = app.get(f"/v1/fixed-deposits/{fd}")
        expect_problem(unproven, 401, "read-authentication-required")
        session = open_session(app, source)
        read = app.get(f"/v1/fixed-deposits/{fd}", session=session)
        assert read.status_code == 200, read.text
        assert read.json()["principal_minor"] == 5_000_000
    listed = counter.get(f"/v1/customers/{customer['customer_id']}").json()["accounts"]
    assert {"account_id": fd, "class": "fixed_deposit", "closed": False} in listed
    not_deposit = counter.get(f"/v1/fixed-deposits/{source}")
    expect_problem(not_deposit, 404, "fixed-deposit-not-found")


def test_opening_refusals(counter: TallyClient, bank: TallyClient, server: TallyServer) -> None:
    """Each refusal of an opening is its own problem type, and nothing moves: an unknown
    term, below the minimum, another customer's account, a Class II account bound to
    another bank's card is fine but a Class III is not, insufficient funds, no password;
    an ATM may not open one."""
    customer, source = customer_with_account(counter, 10_000 * CNY)
    _, stranger_account = customer_with_account(counter, 10_000 * CNY)
    expect_problem(open_deposit(counter, customer, source, term="7y"), 422, "deposit-term-unknown")
    expect_problem(open_deposit(counter, customer, source, 4_999), 422, "deposit-below-minimum")
    not_own = expect_problem(
        open_deposit(counter, customer, stranger_account), 422, "account-not-customers"
    )
    assert not_own["errors"][0]["pointer"] == "/source_account_id"
    class_iii = open_remote(counter, customer, "class_iii")
    expect_problem(
        open_deposit(counter, customer, class_iii, 1_000 * CNY), 422, "account-class-not-allowed"
    )
    poor = expect_problem(
        open_deposit(counter, customer, source, 20_000 * CNY), 422, "exceeds-credits"
    )
    assert poor["ledger_result"]["name"] == "exceeds_credits"
    null_password = open_deposit(counter, customer, source, 1_000 * CNY, password=None)
    expect_problem(null_password, 422, "validation-failed")  # a string when sent
    body = {"source_account_id": source, "amount_minor": 1_000 * CNY, "term": "3m"}
    unauthorized = counter.post(
        f"/v1/customers/{customer['customer_id']}/fixed-deposits", body, idempotency_key=key()
    )
    expect_problem(unauthorized, 401, "transaction-authentication-required")
    with server.client("atm") as atm:
        by_atm = open_deposit(atm, customer, source, 1_000 * CNY)
        assert by_atm.status_code == 403, by_atm.text
    missing_key = counter.post(
        f"/v1/customers/{customer['customer_id']}/fixed-deposits",
        dict(body, password="135790"),
    )
    expect_problem(missing_key, 400, "idempotency-key-missing")
    assert balance(bank, source) == 10_000 * CNY
    assert balance(bank, stranger_account) == 10_000 * CNY


def test_early_withdrawals_over_time(counter: TallyClient, bank: TallyClient, days: Days) -> None:
    """Held 100 days: the quote says 6.94 CNY today and 475.00 at maturity; a partial
    withdrawal of 20,000 CNY earns 2.78, the rest keeps 0.95%; a second partial is 409;
    more than the deposit is 422; the full withdrawal of the rest earns 4.17 and closes
    it (409 afterwards, retry replayed); a 3-month deposit past its maturity day is 409
    deposit-matured. The interest shows in the payout account's interest, and every
    fen is accounted for."""
    customer, source = customer_with_account(counter, 110_000 * CNY)
    whole = open_deposit(counter, customer, source).json()["deposit"]["account_id"]
    split = open_deposit(counter, customer, source).json()["deposit"]["account_id"]
    short = open_deposit(counter, customer, source, 5_000 * CNY, "3m").json()["deposit"]
    touched = (source, whole, split, short["account_id"])
    before = balances(bank, touched)
    days.advance(100)

    quote = counter.get(f"/v1/fixed-deposits/{whole}/quote")
    assert quote.status_code == 200, quote.text
    figures = quote.json()
    assert figures["today"]["days_held"] == 100 and figures["today"]["interest_minor"] == 694
    assert figures["at_maturity"]["interest_minor"] == 47_500
    used = key()
    full = withdraw(counter, whole, None, used)
    assert full.status_code == 201, full.text
    done = full.json()
    assert (done["kind"], done["interest_minor"], done["total_minor"]) == (
        "full", 694, 5_000_694,
    )  # fmt: skip
    assert done["deposit"]["status"] == "closed"
    again = withdraw(counter, whole, None, used)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["transfer_ids"] == done["transfer_ids"]
    expect_problem(withdraw(counter, whole, None, key()), 409, "deposit-closed")
    expect_problem(counter.get(f"/v1/fixed-deposits/{whole}/quote"), 409, "deposit-closed")

    big = withdraw(counter, split, 50_000 * CNY + 1, key())
    assert expect_problem(big, 422, "deposit-amount-exceeds-principal")["principal_minor"] == (
        5_000_000
    )
    part = withdraw(counter, split, 20_000 * CNY, key())
    assert part.status_code == 201, part.text
    assert (part.json()["kind"], part.json()["interest_minor"]) == ("partial", 278)
    kept = part.json()["deposit"]
    assert (kept["principal_minor"], kept["rate"], kept["partial_withdrawn"]) == (
        3_000_000, "0.95%", True,
    )  # fmt: skip
    second = withdraw(counter, split, 10_000 * CNY, key())
    expect_problem(second, 409, "deposit-partial-already-taken")
    rest = withdraw(counter, split, None, key())
    assert rest.status_code == 201 and rest.json()["interest_minor"] == 417

    # The 3-month deposit matured on its 90-somethingth day: the day-end pays it, not this.
    matured = withdraw(counter, short["account_id"], None, key())
    assert (
        expect_problem(matured, 409, "deposit-matured")["maturity_date"] == (short["maturity_date"])
    )
    interest = counter.get(f"/v1/accounts/{source}/interest")
    assert interest.status_code == 200, interest.text
    paid = sorted(item["amount_minor"] for item in interest.json()["items"])
    assert paid == [278, 417, 694]
    assert all(item["kind"] == "deposit_interest" for item in interest.json()["items"])
    assert balance(bank, source) == 110_000 * CNY - 5_000 * CNY + 694 + 278 + 417
    assert balances(bank, touched) == before


def test_interest_correction_is_the_banks_own(counter: TallyClient, bank: TallyClient) -> None:
    """Only the bank's channel corrects interest: an adjustment posting for a settled
    period (here 10,000 CNY too little for 30 days at 0.05%, 360: 0.42 CNY), listed in
    the account's interest; a retry replays it; the counter gets 403; a span crossing a
    period end is 422; taking back interest whose settlement is not in the log is 404."""
    _, account = customer_with_account(counter, 1_000 * CNY)
    before = balances(bank, (account,))
    body = {"balance_delta_minor": 10_000 * CNY, "from": "2025-10-01", "to": "2025-10-31"}
    path = f"/v1/accounts/{account}/interest-corrections"
    used = key()
    posted = bank.post(path, body, idempotency_key=used)
    assert posted.status_code == 201, posted.text
    assert posted.json()["amount_minor"] == 42 and posted.json()["code"] == "interest"
    again = bank.post(path, body, idempotency_key=used)
    assert again.headers["idempotent-replayed"] == "true"
    assert counter.post(path, body, idempotency_key=key()).status_code == 403
    crossing = dict(body, to="2025-12-25")
    expect_problem(bank.post(path, crossing, idempotency_key=key()), 422, "validation-failed")
    bad_date = dict(body, to="2025-02-30")
    expect_problem(bank.post(path, bad_date, idempotency_key=key()), 422, "validation-failed")
    back = dict(body, balance_delta_minor=-10_000 * CNY)
    expect_problem(bank.post(path, back, idempotency_key=key()), 404, "reversal-target-not-found")
    items = counter.get(f"/v1/accounts/{account}/interest").json()["items"]
    assert [(i["kind"], i["amount_minor"], i["period"]) for i in items] == [
        ("correction", 42, 2025 * 4 + 3)
    ]
    assert balance(bank, account) == 1_000 * CNY + 42
    assert balances(bank, (account,)) == before
