"""The loan routes: a request's body in, the loans service's command out, and the products.

A quote (`POST /v1/loan-quotes`, `quote_loan`) is a public figure like a deposit's:
any channel granted the operation asks, nothing is recorded, and the answer is the
whole schedule the bank would sign (core/services/loans.py; the arithmetic is
ledger/loans.py). The schema bounds the request's shape (`routes.LOAN_QUOTE_NEW`);
whether the product exists and takes this amount, term and method is the service's
refusal, rendered from the one table in channels/http/problems.py. The operators'
preview of a draft catalog (`POST /v1/admin/loan-products/preview`) takes the same
fields and the draft's text, signed by an operator (channels/http/admin.py).

The handler methods themselves stay on `Handlers` and `AdminHandlers` (the app looks
them up there by operation name) and are one line each over these functions.
"""

from __future__ import annotations

from typing import Any

from core.services.bank import Bank
from core.services.commands import Caller, PreviewLoanProducts, QuoteLoan
from core.services.operators import OperatorCaller


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
