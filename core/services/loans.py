"""Loans: the published product catalog and the trial calculation. Typed commands in,
typed results out, nothing of HTTP.

Slice 1 of issue 16: products and quotes. Applications, disbursement, repayment
and overdue build on the same arithmetic (ledger/loans.py) next.

Products are versioned instances (limits/loans.py): a catalog file lists every
published version of every product, each in force from its `effective` date
until the next version's. Their life, draft -> preview -> publish:

- **Draft**: the product manager edits a copy of the catalog text (a new
  product, or a new version of one with a later `effective` date).
- **Preview** (`Loans.preview`): the trial calculation against the draft, as of
  the day the draft's newest version of the product takes effect (today if that
  day is past). Only a role that may request the change previews it
  (`request:loans`); nothing is recorded, nothing changes.
- **Publish**: an approval request of kind `loans` with the whole text
  (core/services/approvals.py: the product manager asks, an administrator
  approves). It is checked at the request and again when applied
  (`limits.loans.check_loan_successor`): the file's version increases, every
  published version stays as it was (published versions are immutable: a change
  is a new version), nothing is removed, and a new version takes effect today
  at the earliest (never in the past). Once applied, the `param/loans/<version>`
  record is durable and the catalog installed (`Lifecycle.install_loans`); every
  opening of the store installs it again. The new version takes effect by its
  own `effective` date, so the request may be applied at once or at an
  `apply_at` up to that date (on the effective day itself the check, run again
  when the change is applied, finds the version effective today and passes).

Every channel sees the one catalog (`products`, rendered under `loans` in
`GET /v1/products`), each product with its rate resolved.

Pricing a quote (`quote`, `preview`), on the start day (the disbursement day:
today for a quote):
- the product version in force that day (`LoanCatalog.in_force`);
- the rate: the product's fixed rate, or the LPR of its term in force that day
  (`Lifecycle.lpr`, an approved parameter too) plus `spread_bp` x 100 ppm; it
  must lie in 0..100% (LOAN_RATE_INVALID otherwise: a spread below -LPR);
- the fees, per the product, in ppm of the principal: upfront (deducted at
  disbursement: the customer receives `amount - upfront`) and monthly (with
  every instalment), each rounded half up to the fen once;
- the repayment day: the product's (1..28), or, for a product that collects on
  the disbursement day's date, the day the customer chose (1..28) or the start
  day's date clamped to 28;
- the schedule and the annualised rate including every fee (年化利率, IRR:
  PBoC) by `ledger.loans.schedule`; the rate shown with two decimals, rounded
  half up ("3.45%"), beside the exact ppm.

Refusals, each naming the field (`pointer`), checked in this order:
LOAN_PRODUCT_UNKNOWN, LOAN_AMOUNT_OUT_OF_RANGE, LOAN_TERM_OUT_OF_RANGE,
LOAN_METHOD_NOT_OFFERED, INVALID_FIELD (a repayment day the product does not
take), LOAN_RATE_INVALID.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from core.services.approvals import parameter_errors, parameter_invalid
from core.services.commands import PreviewLoanProducts, QuoteLoan
from core.services.lifecycle import Lifecycle
from core.services.records import date_of_day
from core.services.refusals import Code, Refused, refused
from core.services.results import LoanInstalment, LoanQuote
from ledger.loans import Method, Schedule, schedule
from limits.calendar import civil_of_day
from limits.loans import (
    BP_PPM,
    REPAYMENT_DAY_MAX,
    LoanCatalog,
    LoanCatalogError,
    LoanProduct,
    parse_loan_catalog,
)
from limits.rates import RATE_SCALE, format_rate

if TYPE_CHECKING:
    from core.services.approvals import Approvals

REQUEST_LOANS: Final = "request:loans"  # who may request a catalog change may preview one


class Loans:
    """The loan services over the bank's runtime (`Lifecycle`: the catalog and the LPR
    in force, the business day) and the approvals (who may preview a draft)."""

    def __init__(self, core: Lifecycle, approvals: Approvals) -> None:
        self.core = core
        self.approvals = approvals

    @property
    def catalog(self) -> LoanCatalog:
        """The catalog in force: the last approved version, else the shipped file."""
        return self.core.loans

    # --- products ---------------------------------------------------------------------

    def products(self) -> dict[str, Any]:
        """The catalog in force today (`LoanCatalog.to_json`): each product's version in
        force (`products`) and the versions effective later (`upcoming`), each with its
        rate resolved on the day it applies (today, or a later version's effective day,
        with the LPR table in force now), in the quote's terms: the product file's
        `rate` rule becomes `lpr_term` ("1y", "5y"; None for a fixed rate) and
        `spread_bp` (0 for a fixed rate), beside `rate` (the contract rate, "3.45%"),
        `rate_ppm` and `lpr_ppm` (None for a fixed rate). `rate` and `rate_ppm` are None
        when the LPR plus the spread leaves 0..100% (a quote is then refused)."""
        today = self.core.today()
        catalog = self.catalog
        document: dict[str, Any] = catalog.to_json(today)
        for section in ("products", "upcoming"):
            for entry in document[section]:
                product = _version(catalog, entry["id"], entry["version"])
                del entry["rate"]  # the rule, shown as the fields below
                entry.update(self._rate_shown(product, max(today, product.effective_day)))
        return document

    def _rate_shown(self, product: LoanProduct, day: int) -> dict[str, Any]:
        try:
            lpr = self._lpr(product, day)
        except Refused:  # no LPR in force that day: shown without a rate
            lpr = None
        rate = _rate_of(product, lpr)
        valid = rate is not None and 0 <= rate <= RATE_SCALE
        return {
            "lpr_term": product.lpr_term,
            "spread_bp": product.spread_bp,
            "rate": format_rate(rate) if valid and rate is not None else None,
            "rate_ppm": rate if valid else None,
            "lpr_ppm": lpr,
        }

    # --- the trial calculation ----------------------------------------------------------

    def quote(self, command: QuoteLoan) -> LoanQuote:
        """The full schedule of the loan `command` describes under the product version in
        force today, disbursed today (module docstring: pricing, refusals). No side
        effects, nothing recorded: any channel may ask."""
        today = self.core.today()
        try:
            product = self.catalog.in_force(command.product_id, today)
        except LookupError:
            raise _unknown_product(self.catalog, command.product_id, today) from None
        return self._quote(
            product, today, command.amount_minor, command.term_months, command.method,
            command.repayment_day,
        )  # fmt: skip

    def preview(self, command: PreviewLoanProducts) -> LoanQuote:
        """The quote of `command.product_id` under a DRAFT catalog (`command.text`, the
        whole file as it would be requested), priced with its newest version of the
        product, as of the day that version takes effect (today if already past).

        Nothing is recorded and nothing changes: publishing is the approval request of
        kind `loans` with the same text (`POST /v1/admin/approvals`).

        Refusals: OPERATOR_NOT_PERMITTED (the operator may not request a `loans` change:
        `role`, `permission`); PARAMETER_INVALID (the draft does not parse: `errors`,
        [{line, message}] as a request would list them); then those of `quote`.
        """
        self.approvals.permit(command.operator, REQUEST_LOANS)
        if not isinstance(command.text, str) or not command.text:
            raise refused(Code.INVALID_FIELD, "expected the draft file's text", pointer="/text")
        try:
            draft = parse_loan_catalog(command.text, "loans (draft)")
        except LoanCatalogError as error:
            raise parameter_invalid("loans", parameter_errors(error)) from None
        versions = draft.versions(command.product_id)
        if not versions:
            raise refused(
                Code.LOAN_PRODUCT_UNKNOWN,
                f"the draft has no product {command.product_id!r}",
                pointer="/product_id",
                products=sorted({product.id for product in draft.products}),
            )
        product = max(versions, key=lambda version: version.version)
        day = max(self.core.today(), product.effective_day)
        return self._quote(
            product, day, command.amount_minor, command.term_months, command.method,
            command.repayment_day,
        )  # fmt: skip

    def _quote(
        self,
        product: LoanProduct,
        start_day: int,
        amount_minor: int,
        term_months: int,
        method: str,
        repayment_day: int | None,
    ) -> LoanQuote:
        """Check the request against `product`, price it on `start_day`, schedule it."""
        _check_amount(product, amount_minor)
        _check_term(product, term_months)
        chosen = _method(product, method)
        collection_day = _repayment_day(product, repayment_day, start_day)
        lpr = self._lpr(product, start_day)
        rate = _rate_of(product, lpr)
        if rate is None or not 0 <= rate <= RATE_SCALE:
            raise refused(
                Code.LOAN_RATE_INVALID,
                f"the LPR on {date_of_day(start_day)} plus the product's spread"
                f" ({product.spread_bp} bp) is {_rate_text(rate)}: outside 0..100%",
                pointer="/product_id",
                rate_ppm=rate,
            )
        upfront = fee_minor(amount_minor, product.upfront_fee_ppm)
        plan = schedule(
            amount_minor, rate, term_months, chosen, start_day, collection_day,
            upfront_fee_minor=upfront,
            monthly_fee_minor=fee_minor(amount_minor, product.monthly_fee_ppm),
        )  # fmt: skip
        return _quote_of(product, plan, lpr)

    def _lpr(self, product: LoanProduct, day: int) -> int | None:
        """The LPR `product` floats on, in force on `day` (None: a fixed rate). A day
        before the table's first fixing is the product's problem: LOAN_RATE_INVALID."""
        if product.fixed_rate is not None or product.lpr_term is None:
            return None
        try:
            lpr: int = self.core.lpr.rate(day, product.lpr_term)
        except LookupError as error:
            raise refused(Code.LOAN_RATE_INVALID, str(error), pointer="/product_id") from None
        return lpr


# --- the rules, as functions ------------------------------------------------------------


def fee_minor(amount_minor: int, fee_ppm: int) -> int:
    """A fee of `fee_ppm` (ppm of the principal) on `amount_minor`, rounded half up to
    the fen, exactly (integers): 100,000 CNY at 0.50% (5_000 ppm) is 50,000 fen; 1 CNY at
    0.50% is 0.5 fen, 1 fen."""
    assert amount_minor >= 0 and fee_ppm >= 0, (amount_minor, fee_ppm)
    return (2 * amount_minor * fee_ppm + RATE_SCALE) // (2 * RATE_SCALE)


def percent_text(ppm: int) -> str:
    """A rate in ppm as a percentage with two decimals, rounded half up (away from 0):
    34_500 -> "3.45%", 18_445 -> "1.84%", 18_450 -> "1.85%"."""
    sign = "-" if ppm < 0 else ""
    hundredths = (2 * abs(ppm) + BP_PPM) // (2 * BP_PPM)  # 1/100 of a percent = 100 ppm
    return f"{sign}{hundredths // 100}.{hundredths % 100:02d}%"


def _rate_of(product: LoanProduct, lpr: int | None) -> int | None:
    """The contract rate in ppm: the fixed rate, or the LPR plus the spread (None: an
    LPR product without its LPR)."""
    if product.fixed_rate is not None:
        return product.fixed_rate
    if lpr is None:
        return None
    return lpr + product.spread_bp * BP_PPM


def _rate_text(rate: int | None) -> str:
    if rate is None:
        return "unknown"
    return percent_text(rate) if rate < 0 or rate > RATE_SCALE else format_rate(rate)


def _quote_of(product: LoanProduct, plan: Schedule, lpr: int | None) -> LoanQuote:
    instalments = [
        LoanInstalment(
            number=item.number,
            due_date=date_of_day(item.due_day),
            principal_minor=item.principal_minor,
            interest_minor=item.interest_minor,
            fee_minor=item.fee_minor,
            total_minor=item.total_minor,
            remaining_minor=item.remaining_minor,
        )
        for item in plan.instalments
    ]
    return LoanQuote(
        product.id,
        product.version,
        plan.method.value,
        plan.principal_minor,
        plan.term_months,
        format_rate(plan.annual_rate),
        plan.annual_rate,
        lpr,
        product.spread_bp if lpr is not None else 0,
        date_of_day(plan.start_day),
        instalments,
        plan.total_interest_minor,
        plan.total_fees_minor,
        plan.upfront_fee_minor,
        plan.total_repaid_minor,
        plan.principal_minor - plan.upfront_fee_minor,
        percent_text(plan.apr_ppm),
        plan.apr_ppm,
    )


def _version(catalog: LoanCatalog, product_id: str, version: int) -> LoanProduct:
    for product in catalog.versions(product_id):
        if product.version == version:
            return product
    raise AssertionError(f"{product_id} version {version} is not in the catalog it came from")


def _unknown_product(catalog: LoanCatalog, product_id: object, day: int) -> Refused:
    """LOAN_PRODUCT_UNKNOWN, naming the products in force on `day`."""
    return refused(
        Code.LOAN_PRODUCT_UNKNOWN,
        f"no loan product {product_id!r} is in force on {date_of_day(day)}",
        pointer="/product_id",
        products=[product.id for product in catalog.published(day)],
    )


def _is_count(value: object) -> bool:
    return type(value) is int


def _check_amount(product: LoanProduct, amount_minor: int) -> None:
    low, high = product.amount_min_minor, product.amount_max_minor
    if not _is_count(amount_minor) or not low <= amount_minor <= high:
        raise refused(
            Code.LOAN_AMOUNT_OUT_OF_RANGE,
            f"{product.id} lends {low}..{high} fen",
            pointer="/amount_minor",
            min_minor=low,
            max_minor=high,
        )


def _check_term(product: LoanProduct, term_months: int) -> None:
    low, high = product.term_min, product.term_max
    if not _is_count(term_months) or not low <= term_months <= high:
        raise refused(
            Code.LOAN_TERM_OUT_OF_RANGE,
            f"{product.id} lends for {low}..{high} months",
            pointer="/term_months",
            min_months=low,
            max_months=high,
        )


def _method(product: LoanProduct, method: str) -> Method:
    if method not in product.methods:
        raise refused(
            Code.LOAN_METHOD_NOT_OFFERED,
            f"{product.id} is repaid by {', '.join(product.methods)}",
            pointer="/method",
            methods=list(product.methods),
        )
    return Method(method)


def _repayment_day(product: LoanProduct, chosen: int | None, start_day: int) -> int:
    """The day of the month instalments fall due (module docstring)."""
    if chosen is not None and (not _is_count(chosen) or not 1 <= chosen <= REPAYMENT_DAY_MAX):
        raise refused(
            Code.INVALID_FIELD,
            f"a day of the month, 1..{REPAYMENT_DAY_MAX}",
            pointer="/repayment_day",
        )
    if product.repayment_day is not None:
        if chosen is not None and chosen != product.repayment_day:
            raise refused(
                Code.INVALID_FIELD,
                f"{product.id} collects on day {product.repayment_day} of each month",
                pointer="/repayment_day",
            )
        return product.repayment_day
    if chosen is not None:
        return chosen
    return min(civil_of_day(start_day)[2], REPAYMENT_DAY_MAX)
