"""The loan routes: a request's body in, the loans services' commands out, and the answers.

Products and quotes. A quote (`POST /v1/loan-quotes`, `quote_loan`) is a public figure
like a deposit's: any channel granted the operation asks, nothing is recorded, and the
answer is the whole schedule the bank would sign (core/services/loans.py; the arithmetic
is ledger/loans.py). The schema bounds the request's shape (`routes.LOAN_QUOTE_NEW`);
whether the product exists and takes this amount, term and method is the service's
refusal, rendered from the one table in channels/http/problems.py. The operators'
preview of a draft catalog (`POST /v1/admin/loan-products/preview`) takes the same
fields and the draft's text, signed by an operator (channels/http/admin.py).

Loan accounts (core/services/loan_accounts.py, `bank.loan_accounts`). An application
goes submitted -> approved | declined | referred at once (`POST /v1/loan-applications`);
a referred one is decided by an operator (`POST /v1/admin/loan-applications/{id}/decision`);
the customer signs an approved one with consent (`.../sign`) and it is disbursed
(`.../disbursement`) into a new loan account; the loan is read, its schedule listed and
repaid (`/v1/loans/{account_id}...`). Every transition carries the request's
Idempotency-Key as the command's key: the same key again answers the same result
(`Idempotent-Replayed: true` where the service says it met the key), with other fields
`idempotency-key-reused`. Whose data a channel may act on or read is the service's
(`Auth`, the channel kind's read scope): wechat and app act for the customer their
session, password or token proves, a counter (a teller) for any customer.

The handler methods themselves stay on `Handlers` and `AdminHandlers` (the app looks
them up there by operation name) and are one line each over these functions:
`Reply(*answer(status, await apply(bank, ctx)))`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson

from channels.http.problems import REPLAY_HEADER
from channels.http.routes import LOAN_APPLICATION_ID_PATTERN
from channels.http.schema import account_id_param, fail
from core.services.bank import Bank
from core.services.commands import (
    NO_CONTEXT,
    ApplyForLoan,
    Caller,
    Consent,
    DecideLoanApplication,
    DisburseLoan,
    PreviewLoanProducts,
    Proof,
    QuoteLoan,
    RepayLoan,
    RiskContext,
    SignLoanApplication,
)
from core.services.operators import OperatorCaller
from core.services.results import (
    LoanApplicationView,
    LoanList,
    LoanRepaid,
    LoanScheduleView,
    LoanView,
)

if TYPE_CHECKING:
    from channels.http.admin import AdminContext
    from channels.http.handlers import Context

_APPLICATION_ID_RE = re.compile(LOAN_APPLICATION_ID_PATTERN)


def quote_command(caller: Caller, body: dict[str, Any]) -> QuoteLoan:
    """The quote of a schema-checked `LOAN_QUOTE_NEW` body."""
    return QuoteLoan(
        caller,
        body["product_id"],
        body["amount_minor"],
        body["term_months"],
        body["method"],
        body.get("repayment_day"),
    )


def preview_command(operator: OperatorCaller, body: dict[str, Any]) -> PreviewLoanProducts:
    """The preview of a schema-checked `LOAN_PREVIEW` body (the draft text and a quote)."""
    return PreviewLoanProducts(
        operator,
        body["text"],
        body["product_id"],
        body["amount_minor"],
        body["term_months"],
        body["method"],
        body.get("repayment_day"),
    )


def products_json(bank: Bank) -> dict[str, Any]:
    """`GET /v1/products`: the deposit catalog as before, and under `loans` the loan
    catalog in force today with each product's rate resolved against today's LPR."""
    products = dict(bank.deposits.products())
    products["loans"] = bank.loans.products()
    return products


# --- loan accounts ----------------------------------------------------------------------

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]


def answer(
    status: int, result: LoanApplicationView | LoanView | LoanScheduleView | LoanRepaid | LoanList
) -> Answer:
    """A handler's `Reply` fields for a loan result: its `to_json()`, and the
    Idempotent-Replayed header when the service met the operation key again."""
    headers = [REPLAY_HEADER] if getattr(result, "replayed", False) else []
    return status, orjson.dumps(result.to_json()), headers


def application_id_param(value: str) -> str:
    """A path's application id, checked for shape (422) before the service looks it up."""
    if not _APPLICATION_ID_RE.fullmatch(value):
        raise fail("/application_id", "expected a loan application id: LA and 16 hex digits")
    return value


def _body(ctx: Context) -> dict[str, Any]:
    return ctx.body if isinstance(ctx.body, dict) else {}  # an optional body: {} when absent


def _consent(ctx: Context) -> Consent:
    """The holder's consent: a Tally-Transaction-Token, else the body's password."""
    body = _body(ctx)
    return Consent(ctx.token, body.get("password"), body.get("second_factor") or "")


def _proof(ctx: Context) -> Proof:
    return Proof(ctx.session, ctx.token)


def _context(device: dict[str, str] | None) -> RiskContext:
    """The risk context of a schema-checked `device` object, as `handlers.risk_context`
    makes it for a money route (handlers imports this module, so not from there)."""
    if not device:
        return NO_CONTEXT
    return RiskContext(device.get("id", ""), device.get("ip", ""), device.get("location", ""))


async def apply(bank: Bank, ctx: Context) -> LoanApplicationView:
    """`POST /v1/loan-applications`: a schema-checked `LOAN_APPLICATION_NEW` body; at
    wechat and app the customer's Tally-Session proves who applies."""
    body = ctx.body
    repayment = body.get("repayment_account_id")
    command = ApplyForLoan(
        ctx.caller,
        ctx.idempotency_key,
        body["customer_id"],
        body["product_id"],
        body["amount_minor"],
        body["term_months"],
        body["method"],
        body.get("repayment_day"),
        account_id_param(body["disbursement_account_id"], "disbursement_account_id"),
        account_id_param(repayment, "repayment_account_id") if repayment is not None else 0,
        body["purpose"],
        _proof(ctx),
        _context(body.get("device")),
    )
    return await bank.loan_accounts.apply(command)


async def read_application(bank: Bank, ctx: Context) -> LoanApplicationView:
    """`GET /v1/loan-applications/{application_id}` (scoped like reading its customer)."""
    application_id = application_id_param(ctx.params["application_id"])
    return bank.loan_accounts.application(ctx.caller, application_id, _proof(ctx))


async def sign(bank: Bank, ctx: Context) -> LoanApplicationView:
    """`POST /v1/loan-applications/{application_id}/sign`, with the holder's consent."""
    application_id = application_id_param(ctx.params["application_id"])
    command = SignLoanApplication(ctx.caller, application_id, ctx.idempotency_key, _consent(ctx))
    return await bank.loan_accounts.sign(command)


async def disburse(bank: Bank, ctx: Context) -> LoanView:
    """`POST /v1/loan-applications/{application_id}/disbursement` (wechat and app: with
    the customer's Tally-Session)."""
    application_id = application_id_param(ctx.params["application_id"])
    command = DisburseLoan(ctx.caller, application_id, ctx.idempotency_key, _proof(ctx))
    return await bank.loan_accounts.disburse(command)


async def read_loan(bank: Bank, ctx: Context) -> LoanView:
    """`GET /v1/loans/{account_id}` (scoped like reading the account)."""
    account_id = account_id_param(ctx.params["account_id"])
    return await bank.loan_accounts.loan(ctx.caller, account_id, _proof(ctx))


async def read_schedule(bank: Bank, ctx: Context) -> LoanScheduleView:
    """`GET /v1/loans/{account_id}/schedule` (scoped like reading the account)."""
    account_id = account_id_param(ctx.params["account_id"])
    return await bank.loan_accounts.schedule(ctx.caller, account_id, _proof(ctx))


async def repay(bank: Bank, ctx: Context) -> LoanRepaid:
    """`POST /v1/loans/{account_id}/repayments`: a part, or everything owed (no amount),
    with the repayment account holder's consent."""
    command = RepayLoan(
        ctx.caller,
        account_id_param(ctx.params["account_id"]),
        _body(ctx).get("amount_minor"),
        ctx.idempotency_key,
        _consent(ctx),
    )
    return await bank.loan_accounts.repay(command)


async def customer_loans(bank: Bank, ctx: Context) -> LoanList:
    """`GET /v1/customers/{customer_id}/loans` (scoped like reading the customer)."""
    customer_id = ctx.params["customer_id"]
    return await bank.loan_accounts.loans_of(ctx.caller, customer_id, _proof(ctx))


async def decide(bank: Bank, ctx: AdminContext) -> LoanApplicationView:
    """`POST /v1/admin/loan-applications/{application_id}/decision`: an operator approves
    or declines a referred application (the service checks `decide:loans`)."""
    body = ctx.body
    command = DecideLoanApplication(
        ctx.operator,
        application_id_param(ctx.params["application_id"]),
        body["approve"],
        body.get("reason", ""),
        ctx.idempotency_key,
    )
    return await bank.loan_accounts.decide(command)
