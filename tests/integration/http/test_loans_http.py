"""The loan routes end to end: a real `tally serve` (hypercorn), signed channel and operator
clients, problem+json refusals.

`POST /v1/loan-quotes` prices a product of the shipped catalog (core/data/loans.toml) as
of the server's business day; `POST /v1/admin/loan-products/preview` prices a draft
catalog for the product manager; `GET /v1/products` lists the loan products under
`loans`. The figures come from ledger/loans.py: the tests check that the HTTP answer is
that arithmetic, to the fen, and the worked example of docs (100,000 CNY over 12 months
at 3.45%, which G-P-loan gives exactly: the 1-year LPR of 3.00% plus 45 bp).

One server for the module (nothing here records anything, so the tests do not disturb
each other); the publish test runs its own server on a clock it moves.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.client import TallyClient
from channels.http.openapi import openapi_document
from core.services.results import LoanInstalment, LoanQuote
from ledger.loans import Method, schedule
from limits.calendar import day_of_date
from tests.admin_helpers import operator_client
from tests.http_helpers import REPO_ROOT, TELLER, TallyServer, problem_type

CNY = 100
DAY_S = 86_400
QUOTES = "/v1/loan-quotes"
PREVIEW = "/v1/admin/loan-products/preview"
SHIPPED = (REPO_ROOT / "core" / "data" / "loans.toml").read_text()
SHIPPED_IDS = ["G-P-loan", "G-B-loan", "G-T-loan"]
# The worked example (docs, DOMAIN.md): G-P-loan is 3.45% with the shipped LPR table.
EXAMPLE = {"product_id": "G-P-loan", "amount_minor": 100_000 * CNY, "term_months": 12}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    data = tmp_path_factory.mktemp("loans") / "data"
    running = TallyServer(data).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def wechat(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("wechat") as client:
        yield client


@pytest.fixture(scope="module")
def product1(server: TallyServer) -> Iterator[TallyClient]:
    with operator_client(server, "product1") as client:
        yield client


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def refused(response: Any, status: int, slug: str, pointer: str | None = None) -> dict[str, Any]:
    """The problem+json of a refusal, checked: status, type and (if given) the pointer of
    its one error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert problem_type(response) == slug, response.text
    body: dict[str, Any] = response.json()
    if pointer is not None:
        assert [error["pointer"] for error in body["errors"]] == [pointer], body
    return body


def quote_body(method: str = "equal_instalment", **fields: Any) -> dict[str, Any]:
    return {**EXAMPLE, "method": method, **fields}


def day_of_text(text: str) -> int:
    date = datetime.date.fromisoformat(text)
    return day_of_date(date.year, date.month, date.day)


def check_sums(quote: dict[str, Any]) -> None:
    """What every schedule owes its reader: the principals repay the amount exactly, the
    balance falls to 0, each total is its parts, the sums are the instalments', and the
    customer receives the amount less the upfront fee."""
    rows = quote["instalments"]
    assert [row["number"] for row in rows] == list(range(1, len(rows) + 1))
    assert sum(row["principal_minor"] for row in rows) == quote["amount_minor"]
    remaining = quote["amount_minor"]
    for row in rows:
        remaining -= row["principal_minor"]
        assert row["remaining_minor"] == remaining
        assert row["total_minor"] == (
            row["principal_minor"] + row["interest_minor"] + row["fee_minor"]
        )
    assert remaining == 0
    dates = [row["due_date"] for row in rows]
    assert dates == sorted(set(dates)) and dates[0] > quote["start_date"]
    assert quote["total_interest_minor"] == sum(row["interest_minor"] for row in rows)
    assert quote["total_repaid_minor"] == sum(row["total_minor"] for row in rows)
    periodic = sum(row["fee_minor"] for row in rows)
    assert quote["total_fees_minor"] == quote["upfront_fee_minor"] + periodic
    assert quote["received_minor"] == quote["amount_minor"] - quote["upfront_fee_minor"]


def as_arithmetic(quote: dict[str, Any], repayment_day: int) -> None:
    """The answer is ledger.loans.schedule of the same loan, field by field, to the fen."""
    method = Method(quote["method"])
    expected = schedule(
        quote["amount_minor"],
        quote["rate_ppm"],
        quote["term_months"],
        method,
        day_of_text(quote["start_date"]),
        repayment_day,
        upfront_fee_minor=quote["upfront_fee_minor"],
        monthly_fee_minor=quote["instalments"][0]["fee_minor"],
    )
    rows = [
        (
            day_of_text(row["due_date"]),
            row["principal_minor"],
            row["interest_minor"],
            row["fee_minor"],
            row["total_minor"],
            row["remaining_minor"],
        )
        for row in quote["instalments"]
    ]
    assert rows == [
        (
            item.due_day,
            item.principal_minor,
            item.interest_minor,
            item.fee_minor,
            item.total_minor,
            item.remaining_minor,
        )
        for item in expected.instalments
    ]
    assert quote["total_interest_minor"] == expected.total_interest_minor
    assert quote["total_repaid_minor"] == expected.total_repaid_minor
    assert quote["apr_ppm"] == expected.apr_ppm


# --- the catalog ------------------------------------------------------------------------


def test_products_list_the_shipped_loan_products_with_their_rates(wechat: TallyClient) -> None:
    """GET /v1/products (a customer channel) keeps the deposit catalog and adds `loans`:
    the three shipped products in force, each rate resolved against today's LPR (1y
    3.00%, 5y 3.50%): G-P 3.00% + 45 bp, G-B 3.00% + 80 bp, G-T 3.50% - 30 bp."""
    products = ok(wechat.get("/v1/products"))
    assert products["in_force"]["fixed"]["1y"] == {"rate": "0.95%", "rate_ppm": 9_500}
    loans = products["loans"]
    assert loans["version"] == 1 and re.fullmatch("[0-9a-f]{64}", loans["digest"])
    assert loans["upcoming"] == []
    shown = {
        entry["id"]: (
            entry["version"],
            entry["kind"],
            entry["lpr_term"],
            entry["spread_bp"],
            entry["lpr_ppm"],
            entry["rate"],
            entry["rate_ppm"],
        )
        for entry in loans["products"]
    }
    assert shown == {
        "G-P-loan": (1, "personal", "1y", 45, 30_000, "3.45%", 34_500),
        "G-B-loan": (1, "business", "1y", 80, 30_000, "3.80%", 38_000),
        "G-T-loan": (1, "real_estate", "5y", -30, 35_000, "3.20%", 32_000),
    }
    business = next(entry for entry in loans["products"] if entry["id"] == "G-B-loan")
    assert business["fees"]["upfront"] == "0.50%" and business["fees"]["upfront_ppm"] == 5_000
    assert business["amount"] == {"min_minor": 10_000 * CNY, "max_minor": 5_000_000 * CNY}
    # Exactly the fields the OpenAPI document promises (the fuzz test holds the server to it).
    documented = openapi_document()["components"]["schemas"]["Products"]
    product_schema = documented["properties"]["loans"]["properties"]["products"]["items"]
    for entry in loans["products"]:
        assert set(entry) == set(product_schema["properties"]) == set(product_schema["required"])


# --- the trial calculation ----------------------------------------------------------------


def test_worked_example_equal_instalment(wechat: TallyClient) -> None:
    """100,000 CNY, 12 months, 3.45% (G-P-loan), equal instalments: 8,489.88 for
    instalments 1..11, the last absorbing the rounding; total interest within 2 fen of
    the exact annuity's 1,878.60; no fee, so the annualised rate is the contract rate
    (3.45%) and the customer receives the whole amount; the figures are ledger.loans's to
    the fen, due on the product's day 20."""
    quote = ok(wechat.post(QUOTES, quote_body("equal_instalment")))
    assert (quote["product_id"], quote["product_version"], quote["method"]) == (
        "G-P-loan", 1, "equal_instalment",
    )  # fmt: skip
    assert (quote["rate"], quote["rate_ppm"], quote["lpr_ppm"], quote["spread_bp"]) == (
        "3.45%", 34_500, 30_000, 45,
    )  # fmt: skip
    assert quote["amount_minor"] == 10_000_000 and quote["term_months"] == 12
    rows = quote["instalments"]
    assert len(rows) == 12
    assert [row["total_minor"] for row in rows[:11]] == [848_988] * 11
    assert abs(rows[11]["total_minor"] - 848_988) <= 12
    assert abs(quote["total_interest_minor"] - 187_860) <= 2
    assert rows[0]["interest_minor"] == 28_750  # 100,000 x 3.45% / 12
    assert all(row["due_date"].endswith("-20") for row in rows)
    assert (quote["upfront_fee_minor"], quote["total_fees_minor"]) == (0, 0)
    assert quote["received_minor"] == 10_000_000
    assert (quote["apr"], quote["apr_ppm"]) == ("3.45%", 34_500)
    check_sums(quote)
    as_arithmetic(quote, 20)


def test_worked_example_equal_principal(wechat: TallyClient) -> None:
    """The same loan in equal principal: 8,620.83 first (8,333.33 + 287.50), 8,357.29 last
    (8,333.33 + 23.96), 1,868.75 of interest in all (to the fen of the per-instalment
    rounding), the principal spread by cumulative rounding; the figures are
    ledger.loans's to the fen."""
    quote = ok(wechat.post(QUOTES, quote_body("equal_principal")))
    rows = quote["instalments"]
    assert quote["method"] == "equal_principal" and len(rows) == 12
    assert rows[0]["total_minor"] == 862_083 and rows[0]["interest_minor"] == 28_750
    assert rows[-1]["total_minor"] == 835_729 and rows[-1]["interest_minor"] == 2_396
    assert {row["principal_minor"] for row in rows} == {833_333, 833_334}
    assert abs(quote["total_interest_minor"] - 186_875) <= 1
    assert quote["apr"] == "3.45%"
    check_sums(quote)
    as_arithmetic(quote, 20)


def test_an_upfront_fee_is_deducted_and_raises_the_annualised_rate(wechat: TallyClient) -> None:
    """G-B-loan charges 0.50% upfront: on 1,000,000 CNY the customer receives 995,000,
    repays the full schedule at 3.80%, and the annualised rate including the fee is above
    the contract rate (the PBoC's point of showing it)."""
    body = {
        "product_id": "G-B-loan",
        "amount_minor": 1_000_000 * CNY,
        "term_months": 12,
        "method": "equal_instalment",
    }
    quote = ok(wechat.post(QUOTES, body))
    assert quote["rate"] == "3.80%" and quote["rate_ppm"] == 38_000
    assert quote["upfront_fee_minor"] == 5_000 * CNY
    assert quote["total_fees_minor"] == 5_000 * CNY  # no monthly fee
    assert quote["received_minor"] == 995_000 * CNY
    assert quote["apr_ppm"] > quote["rate_ppm"] + 5_000  # a 0.5% fee on a falling balance
    assert re.fullmatch(r"[0-9]+\.[0-9]{2}%", quote["apr"])
    check_sums(quote)
    as_arithmetic(quote, 21)


def test_a_disbursement_day_product_takes_the_customers_repayment_day(
    wechat: TallyClient,
) -> None:
    """G-T-loan collects on the disbursement day's date unless the customer names a day:
    with repayment_day 5 every instalment of a 30-year mortgage falls due on the 5th
    (360 of them, the longest term); G-P-loan collects on the 20th and refuses another
    day, naming the field."""
    body = {
        "product_id": "G-T-loan",
        "amount_minor": 1_000_000 * CNY,
        "term_months": 360,
        "method": "equal_instalment",
        "repayment_day": 5,
    }
    quote = ok(wechat.post(QUOTES, body))
    assert quote["rate"] == "3.20%" and quote["lpr_ppm"] == 35_000 and quote["spread_bp"] == -30
    assert len(quote["instalments"]) == 360
    assert all(row["due_date"].endswith("-05") for row in quote["instalments"])
    check_sums(quote)
    as_arithmetic(quote, 5)
    other_day = wechat.post(QUOTES, quote_body(repayment_day=5))
    refused(other_day, 422, "validation-failed", "/repayment_day")


@pytest.mark.parametrize(
    ("fields", "status", "slug", "pointer", "figures"),
    [
        pytest.param(
            {"product_id": "G-X-loan"}, 404, "loan-product-unknown", "/product_id",
            {"products": SHIPPED_IDS}, id="unknown-product",
        ),
        pytest.param(
            {"amount_minor": 1_000 * CNY - 1}, 422, "loan-amount-out-of-range", "/amount_minor",
            {"min_minor": 1_000 * CNY, "max_minor": 300_000 * CNY}, id="amount-below",
        ),
        pytest.param(
            {"amount_minor": 300_000 * CNY + 1}, 422, "loan-amount-out-of-range",
            "/amount_minor", {"min_minor": 1_000 * CNY, "max_minor": 300_000 * CNY},
            id="amount-above",
        ),
        pytest.param(
            {"term_months": 5}, 422, "loan-term-out-of-range", "/term_months",
            {"min_months": 6, "max_months": 60}, id="term-below",
        ),
        pytest.param(
            {"term_months": 61}, 422, "loan-term-out-of-range", "/term_months",
            {"min_months": 6, "max_months": 60}, id="term-above",
        ),
    ],
)  # fmt: skip
def test_quote_refusals_name_the_field_and_the_products_figures(
    wechat: TallyClient,
    fields: dict[str, Any],
    status: int,
    slug: str,
    pointer: str,
    figures: dict[str, Any],
) -> None:
    """Each business refusal of a quote is its own problem type with the status of the
    one table (404 unknown product, 422 out of range), the pointer of the field, and the
    figures a client can act on (the products in force, the product's min and max)."""
    problem = refused(wechat.post(QUOTES, quote_body(**fields)), status, slug, pointer)
    assert {name: problem[name] for name in figures} == figures


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        pytest.param(quote_body(colour="red"), "/colour", id="unknown-field"),
        pytest.param(quote_body(amount_minor="10000000"), "/amount_minor", id="amount-string"),
        pytest.param(quote_body(amount_minor=100_000.5), "/amount_minor", id="amount-float"),
        pytest.param(quote_body(amount_minor=0), "/amount_minor", id="amount-zero"),
        pytest.param(quote_body(amount_minor=2**63), "/amount_minor", id="amount-past-int64"),
        pytest.param(quote_body(term_months=True), "/term_months", id="term-boolean"),
        pytest.param(quote_body(term_months=0), "/term_months", id="term-zero"),
        pytest.param(quote_body(term_months=361), "/term_months", id="term-past-360"),
        pytest.param(quote_body(method="balloon"), "/method", id="method-unknown"),
        pytest.param(quote_body(repayment_day=29), "/repayment_day", id="day-29"),
        pytest.param(quote_body(repayment_day="20"), "/repayment_day", id="day-string"),
        pytest.param(quote_body(product_id="G P loan"), "/product_id", id="product-id-shape"),
        pytest.param(
            {key: value for key, value in quote_body().items() if key != "method"},
            "/method",
            id="method-missing",
        ),
        pytest.param([quote_body()], "/", id="not-an-object"),
    ],
)
def test_quote_body_is_strict(wechat: TallyClient, body: Any, pointer: str) -> None:
    """A body that breaks the schema is a 422 naming the field: unknown fields refused,
    money and months integers only (no strings, floats or booleans), enums and ranges
    enforced, required fields required."""
    refused(wechat.post(QUOTES, body), 422, "validation-failed", pointer)


def test_quote_body_must_be_json_with_each_key_once(wechat: TallyClient) -> None:
    """Not JSON at all is 400 malformed-json; a key given twice (which one would count?)
    is 400 duplicate-json-key; another content type is 415."""
    refused(wechat.post(QUOTES, raw=b'{"product_id": "G-P-loan",'), 400, "malformed-json")
    repeated = (
        b'{"product_id": "G-P-loan", "amount_minor": 10000000, "amount_minor": 1,'
        b' "term_months": 12, "method": "equal_instalment"}'
    )
    refused(wechat.post(QUOTES, raw=repeated), 400, "duplicate-json-key")
    form = wechat.post(QUOTES, raw=b"product_id=G-P-loan", content_type="text/plain")
    refused(form, 415, "unsupported-media-type")


def test_every_serving_channel_quotes_and_others_are_refused(server: TallyServer) -> None:
    """The quote is offered wherever a customer is served: wechat, app, the counter (a
    teller, no supervisor needed: nothing moves) and the bank's channel get the same
    schedule; an ATM and a partner bank are not granted the operation (403)."""
    answers = []
    for channel, kwargs in (
        ("wechat", {}),
        ("app", {}),
        ("counter", {"actor": TELLER}),
        ("bank", {}),
    ):
        with server.client(channel, **kwargs) as client:
            answers.append(ok(client.post(QUOTES, quote_body())))
    assert all(answer == answers[0] for answer in answers)
    for channel in ("atm", "open_api"):
        with server.client(channel) as client:
            refused(client.post(QUOTES, quote_body()), 403, "operation-not-allowed")


# --- the product manager's preview -----------------------------------------------------


def product_toml(
    product_id: str,
    *,
    version: int = 1,
    effective: str = "2030-01-01",
    rate: str = '{ fixed = "4.35%" }',
    methods: str = '["equal_instalment", "equal_principal"]',
    fees: str = '{ upfront = "1.00%", monthly = "0.00%" }',
) -> str:
    """One [[products]] entry of a draft catalog."""
    return f"""
[[products]]
id = "{product_id}"
version = {version}
effective = {effective}
name = "Preview loan"
kind = "personal"
methods = {methods}
rate = {rate}
term_months = {{ min = 6, max = 60 }}
amount = {{ min = "1000.00", max = "300000.00" }}
repayment_day = 20
grace_days = 3
penalty_uplift = "50%"
fees = {fees}
prepayment = {{ allowed = true, after_months = 0, fee = "0.00%", excess = "refuse", mode = "reduce_instalment" }}
allocation = ["penalty", "interest", "principal"]
"""  # noqa: E501 - one TOML line, as the catalog writes it


def draft(*products: str, file_version: int = 2) -> str:
    """The shipped catalog with `products` added and its file version raised."""
    text, count = re.subn(
        r"^version = 1$", f"version = {file_version}", SHIPPED, count=1, flags=re.M
    )
    assert count == 1
    return text + "".join(products)


def preview_body(text: str, product_id: str = "G-P-loan", **fields: Any) -> dict[str, Any]:
    return {**quote_body(product_id=product_id), "text": text, **fields}


def test_preview_prices_the_drafts_new_version_as_of_its_effective_day(
    wechat: TallyClient, product1: TallyClient
) -> None:
    """A product manager previews a draft with version 2 of G-P-loan (fixed 4.35%, 1.00%
    upfront, effective 2030-01-01): the quote is version 2's, starting on its effective
    day, the fee deducted and in the annualised rate. Nothing is recorded: the catalog
    in force and the approval requests are as they were."""
    before = ok(wechat.get("/v1/products"))["loans"]
    text = draft(product_toml("G-P-loan", version=2))
    quote = ok(product1.post(PREVIEW, preview_body(text)))
    assert (quote["product_id"], quote["product_version"]) == ("G-P-loan", 2)
    assert quote["start_date"] == "2030-01-01"
    assert (quote["rate"], quote["rate_ppm"], quote["lpr_ppm"], quote["spread_bp"]) == (
        "4.35%", 43_500, None, 0,
    )  # fmt: skip
    assert quote["upfront_fee_minor"] == 1_000 * CNY
    assert quote["received_minor"] == 99_000 * CNY
    assert quote["apr_ppm"] > 43_500
    check_sums(quote)
    as_arithmetic(quote, 20)
    assert ok(wechat.get("/v1/products"))["loans"] == before
    listed = ok(product1.get("/v1/admin/approvals", query="kind=loans"))
    assert listed["items"] == []
    # A new product in the draft previews the same way.
    new = ok(product1.post(PREVIEW, preview_body(draft(product_toml("G-N-loan")), "G-N-loan")))
    assert (new["product_id"], new["product_version"], new["rate"]) == ("G-N-loan", 1, "4.35%")


def test_preview_refusals(server: TallyServer, product1: TallyClient) -> None:
    """The preview's own refusals: a teller may not (403 operator-not-permitted, the
    permission named), a channel's signature reaches no admin route (401); an invalid
    draft lists every problem with its line, pointed at `/text`; a product missing from
    the draft is 404; and the quote's refusals hold for the draft's products: a method it
    does not offer, a rate the LPR and a negative spread take below 0."""
    text = draft(product_toml("G-P-loan", version=2))
    with operator_client(server, "teller1") as teller:
        problem = refused(teller.post(PREVIEW, preview_body(text)), 403, "operator-not-permitted")
        assert problem["permission"] == "request:loans"
    with server.client("bank") as bank:
        # (a short draft: an unauthenticated body is capped at 4 KiB before the 401)
        refused(bank.post(PREVIEW, preview_body("version = 2")), 401, "operator-required")

    bad = product_toml("G-P-loan", version=2)
    broken = draft(bad.replace('kind = "personal"', 'kind = "x"').replace("= 3\n", "= 99\n"))
    problem = refused(product1.post(PREVIEW, preview_body(broken)), 422, "parameter-invalid")
    errors = problem["errors"]
    assert len(errors) == 2 and all(error["pointer"] == "/text" for error in errors)
    lines = broken.splitlines()
    assert sorted(lines[error["line"] - 1] for error in errors) == ["grace_days = 99", 'kind = "x"']

    missing = product1.post(PREVIEW, preview_body(text, "G-Z-loan"))
    problem = refused(missing, 404, "loan-product-unknown", "/product_id")
    assert sorted(problem["products"]) == sorted(SHIPPED_IDS)  # the draft's products

    one_method = draft(product_toml("G-Q-loan", methods='["equal_principal"]'))
    problem = refused(
        product1.post(PREVIEW, preview_body(one_method, "G-Q-loan")),
        422,
        "loan-method-not-offered",
        "/method",
    )
    assert problem["methods"] == ["equal_principal"]

    negative = draft(product_toml("G-M-loan", rate='{ lpr = "1y", spread_bp = -400 }'))
    problem = refused(
        product1.post(PREVIEW, preview_body(negative, "G-M-loan")),
        422,
        "loan-rate-invalid",
        "/product_id",
    )
    assert problem["rate_ppm"] == -10_000  # the 1-year LPR 3.00% less 4.00%

    refused(
        product1.post(PREVIEW, preview_body(text, colour=1)), 422, "validation-failed", "/colour"
    )
    refused(product1.post(PREVIEW, preview_body("")), 422, "validation-failed", "/text")


# --- publishing: the draft through approvals, then every channel -----------------------


def test_a_published_version_reaches_every_channel_on_its_effective_day(
    tmp_path: Path,
) -> None:
    """Draft -> preview -> publish over HTTP: the product manager previews a new product
    offered in equal principal only and effective tomorrow, requests the `loans` change,
    an administrator approves it; today it is listed as upcoming and not quoted (404),
    tomorrow (the clock moved) it is in force at every channel: the method it does not
    offer is refused with its methods, the one it offers is quoted at version 1."""
    server = TallyServer(tmp_path / "data", clock_file=tmp_path / "clock").start()
    try:
        with (
            server.client("wechat") as wechat,
            operator_client(server, "product1") as maker,
            operator_client(server, "admin1") as checker,
        ):
            today = ok(wechat.post(QUOTES, quote_body()))["start_date"]
            tomorrow = (datetime.date.fromisoformat(today) + datetime.timedelta(1)).isoformat()
            text = draft(
                product_toml(
                    "G-Q-loan",
                    effective=tomorrow,
                    methods='["equal_principal"]',
                    rate='{ lpr = "1y", spread_bp = 100 }',
                )
            )
            previewed = ok(
                maker.post(PREVIEW, preview_body(text, "G-Q-loan", method="equal_principal"))
            )
            assert previewed["start_date"] == tomorrow and previewed["rate"] == "4.00%"
            request = maker.post(
                "/v1/admin/approvals",
                {"kind": "loans", "payload": {"text": text, "base_version": 1}},
            )
            assert request.status_code == 201, request.text
            approved = checker.post(f"/v1/admin/approvals/{request.json()['id']}/approve", {})
            assert approved.status_code == 200 and approved.json()["state"] == "applied", (
                approved.text
            )

            loans = ok(wechat.get("/v1/products"))["loans"]
            assert loans["version"] == 2
            assert [entry["id"] for entry in loans["upcoming"]] == ["G-Q-loan"]
            assert loans["upcoming"][0]["rate"] == "4.00%"
            assert loans["upcoming"][0]["effective"] == tomorrow
            not_yet = wechat.post(QUOTES, quote_body("equal_principal", product_id="G-Q-loan"))
            refused(not_yet, 404, "loan-product-unknown", "/product_id")

            server.move_clock(DAY_S)
            loans = ok(wechat.get("/v1/products"))["loans"]
            assert "G-Q-loan" in [entry["id"] for entry in loans["products"]]
            assert loans["upcoming"] == []
            wrong = wechat.post(QUOTES, quote_body("equal_instalment", product_id="G-Q-loan"))
            problem = refused(wrong, 422, "loan-method-not-offered", "/method")
            assert problem["methods"] == ["equal_principal"]
            with server.client("counter") as counter:
                quote = ok(
                    counter.post(QUOTES, quote_body("equal_principal", product_id="G-Q-loan"))
                )
            assert (quote["product_version"], quote["start_date"]) == (1, tomorrow)
            assert quote == previewed  # what the product manager saw is what is offered
    finally:
        server.stop()


# --- the contract ------------------------------------------------------------------------


def test_openapi_documents_the_loan_routes(server: TallyServer) -> None:
    """The served document has both loan routes with their strict request schemas and the
    LoanQuote answer, whose fields are exactly the service's result (LoanQuote,
    LoanInstalment), so the fuzz test holds the server to it; GET /v1/products documents
    `loans`."""
    document = httpx.get(server.url + "/openapi.json").json()
    assert document == openapi_document()
    quote_route = document["paths"][QUOTES]["post"]
    schema = quote_route["requestBody"]["content"]["application/json"]["schema"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["product_id", "amount_minor", "term_months", "method"]
    assert set(schema["properties"]) == {*schema["required"], "repayment_day"}
    assert {"200", "404", "422"} <= set(quote_route["responses"])
    assert "x-tally-channel-kinds" not in quote_route  # any channel the registry grants
    preview_route = document["paths"][PREVIEW]["post"]
    preview_schema = preview_route["requestBody"]["content"]["application/json"]["schema"]
    assert set(preview_schema["properties"]) == {*schema["properties"], "text"}
    assert preview_route["x-tally-channel-kinds"] == ["operator"]
    for route in (quote_route, preview_route):
        answer = route["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": "#/components/schemas/LoanQuote"}
    schemas = document["components"]["schemas"]
    quote = schemas["LoanQuote"]
    assert list(quote["properties"]) == [field.name for field in dataclasses.fields(LoanQuote)]
    instalment = quote["properties"]["instalments"]["items"]
    assert list(instalment["properties"]) == [
        field.name for field in dataclasses.fields(LoanInstalment)
    ]
    assert "loans" in schemas["Products"]["required"]
    kinds = document["paths"]["/v1/admin/parameters/{kind}"]["get"]["parameters"][0]["schema"]
    assert "loans" in kinds["enum"]
