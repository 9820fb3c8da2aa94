"""The loan services without HTTP (core/services/loans.py): a real engine on a real
journal in a tmp dir, the shipped catalog (core/data/loans.toml) or a test catalog with a
fixed-rate product, the shipped operators, typed commands, and a clock the tests move
(the services' and the engine's), so "tomorrow" comes without sleeping.

Products are published through the approvals (kind `loans`: the product manager asks,
an administrator approves) and priced with the LPR in force (kind `lpr`): both are
checked by their effect on a quote.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from core.data import (
    DEFAULT_LOANS_PATH,
    DEFAULT_LPR_PATH,
    DEFAULT_OPERATORS_PATH,
    DEFAULT_RULES_PATH,
)
from core.services.bank import Bank
from core.services.commands import Caller, PreviewLoanProducts, QuoteLoan
from core.services.lifecycle import Settings
from core.services.operators import OperatorCaller, load_operators
from core.services.refusals import Code, Refused
from limits.calendar import day_of_date
from limits.rules import load_rules

NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S
# 2026-01-05 02:00 UTC: 10:00 in Shanghai, inside the business day 2026-01-05.
START_NS = 1_767_578_400_000_000_000
TODAY = "2026-01-05"
START_DAY = day_of_date(2026, 1, 5)
APP = Caller("app", "app", 2)
CNY = 100
OPERATORS = load_operators(DEFAULT_OPERATORS_PATH)
SHIPPED_LOANS = Path(DEFAULT_LOANS_PATH).read_text(encoding="utf-8")
SHIPPED_LPR = Path(DEFAULT_LPR_PATH).read_text(encoding="utf-8")

# One product block of a catalog file; `{...}` filled by `product_block`.
PRODUCT = """
[[products]]
id = "{id}"
version = {version}
effective = {effective}
name = "{name}"
kind = "personal"
methods = {methods}
rate = {rate}
term_months = {{ min = 6, max = 60 }}
amount = {{ min = "1000.00", max = "300000.00" }}
repayment_day = {repayment_day}
grace_days = 3
penalty_uplift = "50%"
fees = {{ upfront = "{upfront}", monthly = "{monthly}" }}
{prepayment}
allocation = ["penalty", "interest", "principal"]
"""
PREPAYMENT = (
    'prepayment = { allowed = true, after_months = 0, fee = "0.00%", excess = "refuse",'
    ' mode = "reduce_instalment" }'
)


def product_block(
    id: str,
    *,
    version: int = 1,
    effective: str = "2025-06-01",
    rate: str = '{ fixed = "3.45%" }',
    methods: str = '["equal_instalment", "equal_principal"]',
    repayment_day: str = "20",
    upfront: str = "0.00%",
    monthly: str = "0.00%",
) -> str:
    return PRODUCT.format(
        id=id, version=version, effective=effective, name=f"Test loan {id}", methods=methods,
        rate=rate, repayment_day=repayment_day, upfront=upfront, monthly=monthly,
        prepayment=PREPAYMENT,
    )  # fmt: skip


# The test catalog: the worked example's fixed 3.45%, one method only, a spread that
# takes the 1-year LPR (3.00%) below zero, fees, and a repayment day of the customer's.
TEST_CATALOG = "version = 1\n" + "".join(
    [
        product_block("T-FIXED"),
        product_block("T-EI-ONLY", methods='["equal_instalment"]'),
        product_block("T-NEGATIVE", rate='{ lpr = "1y", spread_bp = -400 }'),
        product_block("T-FEES", upfront="1.00%", monthly="0.10%"),
        product_block("T-ANYDAY", repayment_day='"disbursement"'),
        product_block("T-LATER", effective="2026-03-01"),
    ]
)


def op(name: str) -> OperatorCaller:
    caller = OPERATORS.caller(name, "192.0.2.7")
    assert caller is not None, name
    return caller


class Clock:
    """The services' and the engine's clock: moved by the tests, never slept on."""

    def __init__(self) -> None:
        self.now = START_NS

    def now_ns(self) -> int:
        return self.now


@asynccontextmanager
async def running_bank(
    directory: Path, clock: Clock, loans_path: Path | None = None
) -> AsyncIterator[Bank]:
    """A bank serving `directory`/data, with `loans_path` as its shipped loan catalog."""
    settings = Settings(str(directory / "data"), scrypt_n=1 << 10)
    if loans_path is not None:
        settings.loans_path = str(loans_path)
    bank = Bank(settings, load_rules(DEFAULT_RULES_PATH), now_ns=clock.now_ns, engine_clock=clock)
    async with anyio.create_task_group() as task_group:
        await task_group.start(bank.serve)
        with anyio.fail_after(30):
            while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        yield bank
        task_group.cancel_scope.cancel()


def run(test: Callable[[Path], object]) -> Callable[[Path], None]:
    def runner(tmp_path: Path) -> None:
        anyio.run(test, tmp_path)  # type: ignore[arg-type]

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "loans.toml"
    path.write_text(TEST_CATALOG, encoding="utf-8")
    return path


def quote(
    product_id: str,
    amount_minor: int = 100_000 * CNY,
    term_months: int = 12,
    method: str = "equal_instalment",
    repayment_day: int | None = None,
) -> QuoteLoan:
    return QuoteLoan(APP, product_id, amount_minor, term_months, method, repayment_day)


def refusal_of(call: Callable[[], Any]) -> Refused:
    with pytest.raises(Refused) as caught:
        call()
    return caught.value


def line_of(text: str, start: str) -> int:
    """The 1-based number of the first line of `text` that starts with `start`."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(start):
            return number
    raise AssertionError(f"no line starts with {start!r}")


def with_version(text: str, version: int) -> str:
    """`text` with its file `version` (the first line that sets one) replaced."""
    changed, count = re.subn(r"(?m)^version = \d+$", f"version = {version}", text, count=1)
    assert count == 1
    return changed


def gp_version_2(effective: str = "2026-01-06", spread_bp: int = 60) -> str:
    """A new version of G-P-loan (the shipped catalog's product) with another spread."""
    rate = f'{{ lpr = "1y", spread_bp = {spread_bp} }}'
    return product_block("G-P-loan", version=2, effective=effective, rate=rate)


def loans_change(text: str, base_version: int = 1) -> dict[str, Any]:
    return {"text": text, "base_version": base_version}


# --- products -------------------------------------------------------------------------


@run
async def test_products_lists_the_shipped_catalog_with_resolved_rates(tmp_path: Path) -> None:
    """Every channel's catalog: the three shipped products in force today, each with its
    contract rate resolved against today's LPR (1y 3.00%, 5y 3.50%): 3.00% + 45 bp,
    3.00% + 80 bp, 3.50% - 30 bp; the pricing rule shown as lpr_term and spread_bp."""
    async with running_bank(tmp_path, Clock()) as bank:
        catalog = bank.loans.products()
    assert catalog["version"] == 1 and catalog["upcoming"] == []
    shown = {
        product["id"]: (
            product["version"],
            product["lpr_term"],
            product["spread_bp"],
            product["rate"],
            product["rate_ppm"],
            product["lpr_ppm"],
        )
        for product in catalog["products"]
    }
    assert shown == {
        "G-P-loan": (1, "1y", 45, "3.45%", 34_500, 30_000),
        "G-B-loan": (1, "1y", 80, "3.80%", 38_000, 30_000),
        "G-T-loan": (1, "5y", -30, "3.20%", 32_000, 35_000),
    }


@run
async def test_products_show_fixed_invalid_and_upcoming_rates(tmp_path: Path) -> None:
    """A fixed rate has no LPR; a spread that takes the LPR below 0 shows no rate (a
    quote refuses it); a product effective later is listed under `upcoming`, not in
    force."""
    async with running_bank(tmp_path, Clock(), catalog_file(tmp_path)) as bank:
        catalog = bank.loans.products()
    in_force = {product["id"]: product for product in catalog["products"]}
    assert list(in_force) == ["T-FIXED", "T-EI-ONLY", "T-NEGATIVE", "T-FEES", "T-ANYDAY"]
    fixed = in_force["T-FIXED"]
    assert (fixed["rate"], fixed["rate_ppm"], fixed["lpr_ppm"]) == ("3.45%", 34_500, None)
    assert (fixed["lpr_term"], fixed["spread_bp"]) == (None, 0)
    negative = in_force["T-NEGATIVE"]
    assert (negative["rate"], negative["rate_ppm"], negative["lpr_ppm"]) == (None, None, 30_000)
    assert [(p["id"], p["effective"], p["rate"]) for p in catalog["upcoming"]] == [
        ("T-LATER", "2026-03-01", "3.45%")
    ]


# --- quotes: the worked examples ----------------------------------------------------------


@run
async def test_worked_example_equal_instalment(tmp_path: Path) -> None:
    """100,000 CNY, 12 months, fixed 3.45% (DOMAIN.md): instalments 1..11 are 8,489.88,
    the last pays the remaining principal (absorbing the rounding); total interest within
    2 fen of the annuity's 1,878.6; no fee, so the annualised rate is the contract rate.
    Disbursed 2026-01-05, collected on the 20th: 2026-02-20 .. 2027-01-20."""
    async with running_bank(tmp_path, Clock(), catalog_file(tmp_path)) as bank:
        quoted = bank.loans.quote(quote("T-FIXED"))
    assert (quoted.product_id, quoted.product_version, quoted.method) == (
        "T-FIXED", 1, "equal_instalment",
    )  # fmt: skip
    assert (quoted.rate, quoted.rate_ppm, quoted.lpr_ppm, quoted.spread_bp) == (
        "3.45%", 34_500, None, 0,
    )  # fmt: skip
    assert quoted.start_date == TODAY and len(quoted.instalments) == 12
    assert [item.total_minor for item in quoted.instalments[:11]] == [848_988] * 11
    assert [item.number for item in quoted.instalments] == list(range(1, 13))
    assert quoted.instalments[0].due_date == "2026-02-20"
    assert quoted.instalments[-1].due_date == "2027-01-20"
    assert sum(item.principal_minor for item in quoted.instalments) == 10_000_000
    assert quoted.instalments[-1].remaining_minor == 0
    assert abs(quoted.total_interest_minor - 187_860) <= 2
    assert quoted.total_repaid_minor == 10_000_000 + quoted.total_interest_minor
    assert (quoted.upfront_fee_minor, quoted.total_fees_minor) == (0, 0)
    assert quoted.received_minor == 10_000_000
    assert abs(quoted.apr_ppm - 34_500) <= 1 and quoted.apr == "3.45%"


@run
async def test_worked_example_equal_principal(tmp_path: Path) -> None:
    """The same loan by equal principal (DOMAIN.md): 8,620.83 the first month (8,333.33 +
    287.50), 8,357.29 the last (8,333.33 + 23.96). Interest in all: 1,868.76 under the
    rule of ledger/loans.py (each instalment's interest rounded half up: two of them are
    exact half fen, 215.625 and 71.875 CNY, both rounded up); the unrounded interests
    sum to DOMAIN.md's 1,868.75 exactly. The quote is the arithmetic's schedule, fen for
    fen."""
    from ledger.loans import Method, schedule

    async with running_bank(tmp_path, Clock(), catalog_file(tmp_path)) as bank:
        quoted = bank.loans.quote(quote("T-FIXED", method="equal_principal"))
    assert quoted.method == "equal_principal"
    first, last = quoted.instalments[0], quoted.instalments[-1]
    assert (first.principal_minor, first.interest_minor, first.total_minor) == (
        833_333, 28_750, 862_083,
    )  # fmt: skip
    assert last.total_minor == 835_729 and last.interest_minor == 2_396
    assert quoted.total_interest_minor == 186_876
    balances = [item.remaining_minor + item.principal_minor for item in quoted.instalments]
    assert sum(balances) * 34_500 == 186_875 * 12 * 1_000_000  # unrounded: 1,868.75
    assert sum(item.principal_minor for item in quoted.instalments) == 10_000_000
    assert abs(quoted.apr_ppm - 34_500) <= 1
    expected = schedule(10_000_000, 34_500, 12, Method.EQUAL_PRINCIPAL, START_DAY, 20)
    assert [item.total_minor for item in quoted.instalments] == [
        item.total_minor for item in expected.instalments
    ]


@run
async def test_shipped_personal_loan_prices_the_worked_example(tmp_path: Path) -> None:
    """G-P-loan floats on the 1-year LPR (3.00% since 2025-05-20) + 45 bp: 3.45%, so it
    quotes the worked example's schedule, naming the LPR and the spread it used."""
    async with running_bank(tmp_path, Clock()) as bank:
        quoted = bank.loans.quote(quote("G-P-loan"))
    assert (quoted.rate, quoted.rate_ppm, quoted.lpr_ppm, quoted.spread_bp) == (
        "3.45%", 34_500, 30_000, 45,
    )  # fmt: skip
    assert [item.total_minor for item in quoted.instalments[:11]] == [848_988] * 11


@run
async def test_fees_are_charged_and_raise_the_annualised_rate(tmp_path: Path) -> None:
    """T-FEES, 100,000 CNY over 12 months at 3.45%: the 1.00% upfront fee (1,000 CNY) is
    deducted at disbursement (99,000 CNY received), the 0.10% monthly fee (100 CNY) rides
    on every instalment; fees total 2,200 CNY and the annualised rate (the IRR of what
    is received against what is repaid) is well above 3.45% and exactly the
    arithmetic's."""
    from core.services.loans import percent_text
    from ledger.loans import apr_ppm

    async with running_bank(tmp_path, Clock(), catalog_file(tmp_path)) as bank:
        quoted = bank.loans.quote(quote("T-FEES"))
    assert quoted.upfront_fee_minor == 100_000 and quoted.received_minor == 9_900_000
    assert [item.fee_minor for item in quoted.instalments] == [10_000] * 12
    assert all(
        item.total_minor == item.principal_minor + item.interest_minor + item.fee_minor
        for item in quoted.instalments
    )
    assert quoted.total_fees_minor == 100_000 + 12 * 10_000
    totals = [item.total_minor for item in quoted.instalments]
    assert quoted.total_repaid_minor == sum(totals)
    assert quoted.total_repaid_minor == 10_000_000 + quoted.total_interest_minor + 120_000
    assert quoted.apr_ppm == apr_ppm(9_900_000, totals)
    assert quoted.apr_ppm > 34_500 + 30_000  # the fees add more than 3 points a year
    assert quoted.apr == percent_text(quoted.apr_ppm)


@run
async def test_repayment_day_of_the_customer_where_the_product_allows(tmp_path: Path) -> None:
    """A product collecting on the disbursement day's date takes the customer's day
    (1..28) or defaults to the start's (the 5th); a product with a fixed day takes only
    that day."""
    async with running_bank(tmp_path, Clock(), catalog_file(tmp_path)) as bank:
        default = bank.loans.quote(quote("T-ANYDAY"))
        chosen = bank.loans.quote(quote("T-ANYDAY", repayment_day=10))
        same = bank.loans.quote(quote("T-FIXED", repayment_day=20))
        other = refusal_of(lambda: bank.loans.quote(quote("T-FIXED", repayment_day=15)))
        beyond = refusal_of(lambda: bank.loans.quote(quote("T-ANYDAY", repayment_day=29)))
    assert default.instalments[0].due_date == "2026-02-05"
    assert chosen.instalments[0].due_date == "2026-02-10"
    assert same.instalments[0].due_date == "2026-02-20"
    for refusal in (other, beyond):
        assert refusal.refusal.code == Code.INVALID_FIELD
        assert refusal.refusal.extras["pointer"] == "/repayment_day"
    assert "day 20" in other.refusal.detail


# --- quotes: refusals -------------------------------------------------------------------


@run
async def test_quote_refusals_name_the_field(tmp_path: Path) -> None:
    """Each refusal of a quote, with its code, pointer and figures: an unknown product
    (and one not in force yet), an amount or a term outside the product's ranges (either
    side), a method the product does not offer, and a rate the LPR and the spread take
    below zero. The amount is checked before the term, the term before the method."""
    async with running_bank(tmp_path, Clock(), catalog_file(tmp_path)) as bank:
        loans = bank.loans

        def refusal(command: QuoteLoan) -> tuple[Code, dict[str, Any]]:
            why = refusal_of(lambda: loans.quote(command)).refusal
            return why.code, why.extras

        in_force = ["T-FIXED", "T-EI-ONLY", "T-NEGATIVE", "T-FEES", "T-ANYDAY"]
        for product_id in ("NOPE", "T-LATER", ""):
            assert refusal(quote(product_id)) == (
                Code.LOAN_PRODUCT_UNKNOWN, {"pointer": "/product_id", "products": in_force},
            )  # fmt: skip
        amount = {"pointer": "/amount_minor", "min_minor": 100_000, "max_minor": 30_000_000}
        for amount_minor in (99_999, 30_000_001, 0, -1):
            assert refusal(quote("T-FIXED", amount_minor)) == (
                Code.LOAN_AMOUNT_OUT_OF_RANGE, amount,
            )  # fmt: skip
        assert refusal(quote("T-FIXED", 99_999, term_months=5))[0] == Code.LOAN_AMOUNT_OUT_OF_RANGE
        term = {"pointer": "/term_months", "min_months": 6, "max_months": 60}
        for term_months in (5, 61, 0):
            assert refusal(quote("T-FIXED", term_months=term_months)) == (
                Code.LOAN_TERM_OUT_OF_RANGE, term,
            )  # fmt: skip
        not_offered = {"pointer": "/method", "methods": ["equal_instalment"]}
        assert refusal(quote("T-EI-ONLY", method="equal_principal")) == (
            Code.LOAN_METHOD_NOT_OFFERED, not_offered,
        )  # fmt: skip
        assert refusal(quote("T-FIXED", method="balloon"))[0] == Code.LOAN_METHOD_NOT_OFFERED
        assert refusal(quote("T-NEGATIVE")) == (
            Code.LOAN_RATE_INVALID, {"pointer": "/product_id", "rate_ppm": -10_000},
        )  # fmt: skip
        # Bounds are inclusive.
        assert loans.quote(quote("T-FIXED", 100_000, 6)).amount_minor == 100_000
        assert loans.quote(quote("T-FIXED", 30_000_000, 60)).term_months == 60


# --- the rate follows the LPR ------------------------------------------------------------


@run
async def test_lpr_product_follows_an_approved_lpr_change(tmp_path: Path) -> None:
    """An approved LPR table adding a fixing effective 2026-01-20 (1y 2.90%): quotes
    before that day still price G-P-loan at 3.00% + 45 bp; from that day at 2.90% + 45 bp
    = 3.35%, and the catalog shows the new rate. A fixed-rate product does not move."""
    clock = Clock()
    new_lpr = with_version(SHIPPED_LPR, 2) + (
        '\n[[rates]]\neffective = 2026-01-20\n1y = "2.90%"\n5y = "3.40%"\n'
    )
    async with running_bank(tmp_path, clock) as bank:
        approvals = bank.approvals
        made = await approvals.request(op("product1"), "lpr", "", loans_change(new_lpr))
        applied = await approvals.approve(op("admin1"), made["id"])
        assert applied["state"] == "applied"
        before = bank.loans.quote(quote("G-P-loan"))
        clock.now += 15 * NS_PER_DAY  # 2026-01-20, 10:00 in Shanghai
        after = bank.loans.quote(quote("G-P-loan"))
        mortgage = bank.loans.quote(quote("G-T-loan", 1_000_000 * CNY, 120, "equal_principal"))
        shown = {product["id"]: product for product in bank.loans.products()["products"]}
    assert (before.rate_ppm, before.lpr_ppm) == (34_500, 30_000)
    assert (after.rate, after.rate_ppm, after.lpr_ppm, after.spread_bp) == (
        "3.35%", 33_500, 29_000, 45,
    )  # fmt: skip
    assert after.start_date == "2026-01-20"
    assert after.total_interest_minor < before.total_interest_minor
    assert (mortgage.rate_ppm, mortgage.lpr_ppm) == (31_000, 34_000)  # 3.40% - 30 bp
    assert (shown["G-P-loan"]["rate"], shown["G-P-loan"]["lpr_ppm"]) == ("3.35%", 29_000)


# --- publishing through the approvals ------------------------------------------------------


@run
async def test_new_version_published_takes_effect_tomorrow_and_survives_restart(
    tmp_path: Path,
) -> None:
    """The product manager requests a catalog adding G-P-loan version 2 (LPR + 60 bp)
    effective tomorrow; an administrator approves and it is applied at once. Today's
    quote still prices version 1 (3.45%) and the catalog lists version 2 as upcoming;
    tomorrow's prices version 2 (3.60%). After a restart the approved catalog is in
    force again (reinstalled from the store), not the shipped file."""
    clock = Clock()
    new_text = with_version(SHIPPED_LOANS, 2) + gp_version_2()
    async with running_bank(tmp_path, clock) as bank:
        approvals = bank.approvals
        made = await approvals.request(op("product1"), "loans", "", loans_change(new_text))
        assert (made["state"], made["version"], made["base_version"]) == ("pending", 2, 1)
        assert '+id = "G-P-loan"' in made["diff"] and "+version = 2" in made["diff"]
        applied = await approvals.approve(op("admin1"), made["id"])
        assert (applied["state"], applied["version"]) == ("applied", 2)
        today = bank.loans.quote(quote("G-P-loan"))
        catalog = bank.loans.products()
        clock.now += NS_PER_DAY
        tomorrow = bank.loans.quote(quote("G-P-loan"))
    assert (today.product_version, today.rate_ppm) == (1, 34_500)
    assert catalog["version"] == 2
    upcoming = [(p["id"], p["version"], p["effective"], p["rate"]) for p in catalog["upcoming"]]
    assert upcoming == [("G-P-loan", 2, "2026-01-06", "3.60%")]
    assert (tomorrow.product_version, tomorrow.rate, tomorrow.spread_bp) == (2, "3.60%", 60)
    assert tomorrow.start_date == "2026-01-06"
    async with running_bank(tmp_path, clock) as bank:  # the same data directory
        assert bank.core.loans.version == 2
        assert bank.approvals.current("loans")["request_id"] == made["id"]
        again = bank.loans.quote(quote("G-P-loan"))
        assert (again.product_version, again.rate_ppm) == (2, 36_000)
        shown = {product["id"]: product["version"] for product in bank.loans.products()["products"]}
        assert shown == {"G-P-loan": 2, "G-B-loan": 1, "G-T-loan": 1}


@run
async def test_a_change_approved_to_apply_on_its_effective_date_goes_live_then(
    tmp_path: Path,
) -> None:
    """Publishing on the effective date: the request asks to apply at the start of
    2026-01-06 (Shanghai), when G-P-loan version 2 takes effect; approved today, it
    waits ("approved"), today's quote prices version 1; at that moment the tick applies
    it (the successor check runs again, that day, and passes) and the quote prices
    version 2."""
    clock = Clock()
    new_text = with_version(SHIPPED_LOANS, 2) + gp_version_2()
    effective_ns = START_NS + 14 * 3600 * NS_PER_S  # 2026-01-05T16:00Z = 01-06 00:00 +08:00
    async with running_bank(tmp_path, clock) as bank:
        approvals = bank.approvals
        made = await approvals.request(
            op("product1"), "loans", "", loans_change(new_text), apply_at_ns=effective_ns
        )
        approved = await approvals.approve(op("admin1"), made["id"])
        assert approved["state"] == "approved"
        assert bank.loans.quote(quote("G-P-loan")).product_version == 1
        clock.now = effective_ns + NS_PER_S
        await approvals.on_tick(clock.now)
        assert approvals.get(made["id"])["state"] == "applied"
        moved = bank.loans.quote(quote("G-P-loan"))
        assert (moved.product_version, moved.rate, moved.start_date) == (2, "3.60%", "2026-01-06")


@run
async def test_change_to_a_published_version_is_refused_at_the_request(tmp_path: Path) -> None:
    """Published versions are immutable: a catalog that changes G-P-loan version 1's
    spread (even with a new file version) is refused at the request, PARAMETER_INVALID
    naming the product, its version and the key, with its line; so is a new version
    effective yesterday (no retroactive product) and a removed product. Nothing is recorded
    and the shipped catalog stays in force."""
    clock = Clock()
    changed = with_version(SHIPPED_LOANS, 2).replace("spread_bp = 45", "spread_bp = 40", 1)
    yesterday = with_version(SHIPPED_LOANS, 2) + gp_version_2(effective="2026-01-04")
    start = SHIPPED_LOANS.index('[[products]]\nid = "G-T-loan"')
    removed = with_version(SHIPPED_LOANS[:start], 2)
    async with running_bank(tmp_path, clock) as bank:
        approvals = bank.approvals

        async def problems(text: str) -> list[dict[str, Any]]:
            with pytest.raises(Refused) as caught:
                await approvals.request(op("product1"), "loans", "", loans_change(text))
            assert caught.value.refusal.code == Code.PARAMETER_INVALID
            errors: list[dict[str, Any]] = caught.value.refusal.extras["errors"]
            return errors

        [error] = await problems(changed)
        assert error["line"] == line_of(SHIPPED_LOANS, 'rate = { lpr = "1y", spread_bp = 45 }')
        assert "G-P-loan version 1 is published" in error["message"]
        assert "rate.spread_bp" in error["message"]
        [error] = await problems(yesterday)
        assert "G-P-loan version 2" in error["message"] and "before today" in error["message"]
        [error] = await problems(removed)
        assert "G-T-loan version 1 was removed" in error["message"]
        assert approvals.list() == []
        assert bank.core.loans.version == 1
        assert bank.loans.quote(quote("G-P-loan")).rate_ppm == 34_500


# --- the product manager's preview -------------------------------------------------------


@run
async def test_preview_quotes_a_draft_as_of_its_effective_day(tmp_path: Path) -> None:
    """The product manager previews a draft adding G-P-loan version 2 (LPR + 60 bp)
    effective 2026-02-01: the quote is priced with the draft's version 2 on that day.
    Nothing is recorded (no request, no audit record) and nothing changes: today's quote
    still prices version 1 from the catalog in force. A draft whose newest version is
    already in force is priced as of today."""
    clock = Clock()
    draft = with_version(SHIPPED_LOANS, 2) + gp_version_2(effective="2026-02-01")
    async with running_bank(tmp_path, clock) as bank:
        command = PreviewLoanProducts(
            op("product1"), draft, "G-P-loan", 100_000 * CNY, 12, "equal_principal"
        )
        previewed = bank.loans.preview(command)
        shipped = bank.loans.preview(
            PreviewLoanProducts(
                op("product1"), SHIPPED_LOANS, "G-B-loan", 10_000 * CNY, 12, "equal_instalment"
            )
        )
        assert bank.approvals.list() == [] and bank.approvals.audit() == []
        assert bank.core.loans.version == 1
        assert bank.loans.quote(quote("G-P-loan")).product_version == 1
    assert (previewed.product_id, previewed.product_version) == ("G-P-loan", 2)
    assert (previewed.rate, previewed.spread_bp, previewed.method) == (
        "3.60%", 60, "equal_principal",
    )  # fmt: skip
    assert previewed.start_date == "2026-02-01"
    assert previewed.instalments[0].due_date == "2026-03-20"
    assert (shipped.product_version, shipped.start_date) == (1, TODAY)
    assert shipped.upfront_fee_minor == 5_000  # 0.50% of 10,000 CNY


@run
async def test_preview_refusals(tmp_path: Path) -> None:
    """Only a role that may request a loans change previews one (a teller may not, nor
    an administrator, who only approves it); a draft that does not validate is
    PARAMETER_INVALID with every problem and its line, as a request would be; a product
    the draft lacks is LOAN_PRODUCT_UNKNOWN; the draft's ranges refuse like a quote's."""
    broken = SHIPPED_LOANS.replace('kind = "personal"', 'kind = "student"', 1).replace(
        "grace_days = 3", "grace_days = 99", 1
    )
    async with running_bank(tmp_path, Clock()) as bank:
        loans = bank.loans

        def preview(operator: str, text: str = SHIPPED_LOANS, product_id: str = "G-P-loan",
                    amount_minor: int = 100_000 * CNY) -> Refused:  # fmt: skip
            command = PreviewLoanProducts(
                op(operator), text, product_id, amount_minor, 12, "equal_instalment"
            )
            return refusal_of(lambda: loans.preview(command))

        for operator in ("teller1", "admin1"):
            why = preview(operator).refusal
            assert why.code == Code.OPERATOR_NOT_PERMITTED
            assert why.extras["permission"] == "request:loans"
        why = preview("product1", broken).refusal
        assert why.code == Code.PARAMETER_INVALID
        assert [error["line"] for error in why.extras["errors"]] == [
            line_of(broken, 'kind = "student"'),
            line_of(broken, "grace_days = 99"),
        ]
        why = preview("product1", product_id="G-X-loan").refusal
        assert why.code == Code.LOAN_PRODUCT_UNKNOWN
        assert why.extras["products"] == ["G-B-loan", "G-P-loan", "G-T-loan"]
        why = preview("product1", amount_minor=1).refusal
        assert why.code == Code.LOAN_AMOUNT_OUT_OF_RANGE
        assert bank.approvals.audit() == []


# --- the arithmetic the service adds ---------------------------------------------------------


def test_fee_and_percentage_rounding() -> None:
    """Fees are rounded half up to the fen once (0.5 fen is 1 fen); the annualised rate is
    shown with two decimals, rounded half up."""
    from core.services.loans import fee_minor, percent_text

    assert fee_minor(100_000 * CNY, 5_000) == 50_000
    assert (fee_minor(100, 5_000), fee_minor(99, 5_000), fee_minor(0, 5_000)) == (1, 0, 0)
    assert fee_minor(10**12, 1_000_000) == 10**12
    assert [percent_text(ppm) for ppm in (34_500, 18_449, 18_450, 0, 5, 50, 1_000_000)] == [
        "3.45%", "1.84%", "1.85%", "0.00%", "0.00%", "0.01%", "100.00%",
    ]  # fmt: skip
