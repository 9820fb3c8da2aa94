"""The OpenAPI 3.1 document, built from the route table and the request schemas.

Every route, its request schema (from the same declarations the validator
uses), its success body and every problem status it can answer, with the
problem types listed. Served at `/openapi.json`; schemathesis fuzzes the
server against it in the tests.
"""

from __future__ import annotations

from typing import Any

from channels.http.problems import PROBLEM_BASE, all_problem_slugs
from channels.http.routes import (
    APPROVAL_ID_PATTERN,
    BINDING_ID_PATTERN,
    CHALLENGE_ID_PATTERN,
    CUSTOMER_ID_PATTERN,
    LOAN_APPLICATION_ID_PATTERN,
    LOAN_FIELDS,
    PARAMETER_KINDS,
    ROUTES,
    Route,
)
from channels.http.schema import ACCOUNT_ID_PATTERN, TRANSFER_ID_PATTERN, object_schema
from channels.http.signing import SCHEME
from channels.iso20022.http import xml_operation
from core.providers.types import PROVIDERS
from core.services.loan_accounts import STATES as LOAN_APPLICATION_STATES
from core.services.policy import BINDING_STEPS, CUSTOMER_STEPS
from limits.loans import (
    ALLOCATION_DEFAULT,
    EXCESS_CHOICES,
    PREPAYMENT_MODES,
    REPAYMENT_DAY_DISBURSEMENT,
    REPAYMENT_DAY_MAX,
)
from limits.loans import KINDS as LOAN_KINDS
from limits.lpr import LprTerm

NULLABLE_INT = {"type": ["integer", "null"]}
NULLABLE_STRING = {"type": ["string", "null"]}
INT = {"type": "integer"}
STRING = {"type": "string"}
BOOL = {"type": "boolean"}


def _object(properties: dict[str, Any], *, closed: bool = True) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": not closed,
    }


BUCKET = _object({"limit_minor": NULLABLE_INT, "used_minor": INT, "remaining_minor": NULLABLE_INT})
TRANSFER = _object(
    {
        "transfer_id": {"type": "string", "pattern": TRANSFER_ID_PATTERN},
        "kind": {"enum": ["single", "hold", "capture", "void", "reversal"]},
        "state": {"enum": ["posted", "pending", "captured", "voided", "expired", "failed"]},
        "result": _object({"code": INT, "name": STRING}),
        "debit_account_id": STRING,
        "credit_account_id": STRING,
        "amount_minor": INT,
        "amount_posted_minor": INT,
        "amount_reversed_minor": INT,
        "pending_id": NULLABLE_STRING,
        "code": STRING,
        "channel_id": INT,
        "timeout_s": INT,
        "timestamp_ns": INT,
        "business_day": STRING,
        "user_data": INT,
    }
)
POSTING_FIELDS: dict[str, Any] = {
    "transfer_id": {"type": "string", "pattern": TRANSFER_ID_PATTERN},
    "operation": STRING,
    "status": {"enum": ["posted", "pending", "captured", "voided"]},
    "debit_account_id": STRING,
    "credit_account_id": STRING,
    "amount_minor": INT,
    "code": STRING,
    "pending_id": NULLABLE_STRING,
    "timeout_s": INT,
    "channel": STRING,
    "timestamp_ns": INT,
}
POSTING = _object(POSTING_FIELDS)
# 202: the risk stage held the posting (a pending hold) instead of moving the money.
HELD_POSTING = _object(
    {
        **POSTING_FIELDS,
        "status": {
            "enum": ["delayed", "review", "returned"],
            "description": "delayed: the bank captures the hold at release_at; review: a risk "
            "officer releases or returns it (unreviewed, it returns to the payer at release_at); "
            "returned: a cash withdrawal the risk stage held was returned at once (cash is "
            "given now or never): nothing moved",
        },
        "release_at": NULLABLE_STRING,
        "decision_id": NULLABLE_STRING,
    }
)
OPEN_OBJECT = {"type": "object"}
# Real-name verification (core/services/verification.py, results.py; docs/verification.md).
KYC_STATUS = {"enum": ["pending", "verified", "rejected"]}
STEP_NAMES = {"enum": [*CUSTOMER_STEPS, *BINDING_STEPS]}
VERIFICATION_STEP = _object(
    {
        "step": STEP_NAMES,
        "state": {"enum": ["pending", "passed", "failed", "expired"]},
        "attempts": INT,
        "attempts_max": INT,
        "attempts_remaining": INT,
        "expires_at": STRING,
        "reasons": {"type": "array", "items": STRING},
        "updated_at": NULLABLE_STRING,
        "by": NULLABLE_STRING,
    }
)
VERIFICATION_STEP["description"] = (
    "one check of the workflow: its state, the attempts made and allowed, until when it "
    "may be taken, why it failed, when and by whom (a channel, a teller) it last moved"
)
KYC = _object(
    {
        "status": KYC_STATUS,
        "required": {"type": "array", "items": STEP_NAMES},
        "steps": {"type": "array", "items": VERIFICATION_STEP},
        "reasons": {"type": "array", "items": STRING},
    }
)
KYC["description"] = (
    "the real-name verification: verified once every required step passed, pending while "
    "one is outstanding, rejected (with reasons) once one failed for good"
)
VERIFICATION = _object(
    {
        "customer_id": STRING,
        "status": KYC_STATUS,
        "required": {"type": "array", "items": STEP_NAMES},
        "steps": {"type": "array", "items": VERIFICATION_STEP},
        "reasons": {"type": "array", "items": STRING},
        "history": {
            "type": "array",
            "items": _object(
                {
                    "at": STRING,
                    "step": STEP_NAMES,
                    "provider": {"enum": list(PROVIDERS)},
                    "request_id": STRING,
                    "outcome": STRING,
                    "attempts": INT,
                    "elapsed_ms": INT,
                }
            ),
        },
    }
)
VERIFICATION["description"] = (
    "a customer's real-name verification (core/services/results.py `VerificationRead`): the "
    "status, the steps the registering channel requires, each step's state, and every "
    "provider call made for it (no image, no code)"
)
CARD_BINDING = _object(
    {
        "binding_id": STRING,
        "customer_id": STRING,
        "card_masked": STRING,
        "card_type": STRING,
        "status": {"enum": ["pending", "verified", "rejected", "expired", "used"]},
        "required": {"type": "array", "items": STEP_NAMES},
        "steps": {"type": "array", "items": VERIFICATION_STEP},
        "sms_challenge": {
            "oneOf": [{"type": "null"}, _object({"challenge_id": STRING, "expires_at": STRING})]
        },
    }
)
CARD_BINDING["description"] = (
    "a card binding (core/services/results.py `CardBindingRead`): verified once the issuer "
    "confirmed the five elements and (at a remote channel) the SMS code was confirmed; "
    "used once a Class II/III opening took it"
)
SMS_CHALLENGE = _object(
    {
        "challenge_id": STRING,
        "operation": STRING,
        "subject": STRING,
        "status": {"enum": ["sent", "confirmed", "expired", "exhausted", "voided"]},
        "expires_at": STRING,
        "attempts_remaining": INT,
    }
)
SMS_CHALLENGE["description"] = "an SMS one-time code challenge (never the code)"
COMPONENT_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; `type` is stable per failure",
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": STRING,
            "status": INT,
            "detail": STRING,
            "instance": STRING,
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"pointer": STRING, "detail": STRING, "line": INT},
                    "required": ["pointer", "detail"],
                    "additionalProperties": False,
                },
            },
            "ledger_result": _object({"code": INT, "name": STRING}),
            "attempts_remaining": INT,
            "size_max": INT,
            "fields": {"type": "array", "items": STRING},
            "reason": STRING,  # weak-transaction-password: why
            "role": STRING,  # actor-limit-exceeded: the acting role
            "cap_minor": INT,  # actor-limit-exceeded: the role's cap
            "roles": {"type": "array", "items": STRING},  # actor-*: the channel's roles
            # Deposits' refusals (docs/deposits.md): the figures a client may act on.
            "terms": {"type": "array", "items": STRING},  # deposit-term-unknown
            "minimum_minor": INT,  # deposit-below-minimum
            "principal_minor": INT,  # deposit-amount-exceeds-principal
            "maturity_date": STRING,  # deposit-matured
            "classes": {"type": "array", "items": STRING},  # account-class-not-allowed
            # Risk control (docs/risk.md): never which rules fired.
            "decision_id": STRING,  # risk-blocked, risk-challenge
            "factors": {"type": "array", "items": STRING},  # risk-challenge: second factors
            # Approvals (docs/approvals.md).
            "kind": STRING,  # approval-required
            "permission": STRING,  # operator-not-permitted
            "request_id": STRING,  # approval-duplicate: the pending request
            "state": STRING,  # approval-not-pending
            "base_version": INT,  # approval-stale
            "version": INT,  # approval-stale: the version in force
            # Loans (core/services/loans.py): the product's figures.
            "products": {"type": "array", "items": STRING},  # loan-product-unknown
            "min_minor": INT,  # loan-amount-out-of-range
            "max_minor": INT,
            "min_months": INT,  # loan-term-out-of-range
            "max_months": INT,
            "methods": {"type": "array", "items": STRING},  # loan-method-not-offered
            "rate_ppm": NULLABLE_INT,  # loan-rate-invalid: what the LPR and spread give
            # Loan accounts (core/services/loan_accounts.py): state, classes, minimum_minor
            # as above; the credit check's figures, what is owed, when a prepayment opens.
            "limit_minor": INT,  # loan-quota-exceeded: the approved credit limit
            "used_minor": INT,  # loan-quota-exceeded: other loans and applications
            "owed_minor": INT,  # loan-repayment-exceeds-owed: everything owed today
            "allowed_from": NULLABLE_STRING,  # loan-prepayment-not-allowed: the first day
            "account_id": STRING,  # loan-already-disbursed: the loan's account
            # Real-name verification (docs/verification.md).
            "provider": STRING,  # provider-unavailable, provider-answer-invalid
            "step": STRING,  # verification-step-not-required, -attempts-exceeded, -expired
            "verification_status": STRING,  # verification-closed: verified or rejected
            "limit_bytes": INT,  # image-too-large
            "allowed": {"type": "array", "items": STRING},  # image-type-not-allowed
            "binding_id": STRING,  # binding-not-verified: the card's binding, if any
        },
        "required": ["type", "title", "status"],
        "additionalProperties": False,
    },
    "Customer": _object(
        {
            "customer_id": STRING,
            "name": STRING,
            "id_number_masked": STRING,
            "mobile_masked": STRING,
            "kyc": KYC,
            "accounts": {
                "type": "array",
                "items": _object({"account_id": STRING, "class": STRING, "closed": BOOL}),
            },
            "created_at": STRING,
        }
    ),
    "Account": _object(
        {
            "account_id": STRING,
            "kind": STRING,
            "status": {"enum": ["active", "frozen", "closed"]},
            "currency": STRING,
            "balance_minor": INT,
            "pending_debits_minor": INT,
            "pending_credits_minor": INT,
            "available_minor": NULLABLE_INT,
            "face_to_face_verified": BOOL,
            "non_bound_inflow_enabled": BOOL,
            "business_day": STRING,
            "quota": {
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {
                            "inflow": _object({"daily": BUCKET, "yearly": BUCKET}),
                            "outflow": _object({"daily": BUCKET, "yearly": BUCKET}),
                            "year": INT,
                            "balance_cap_minor": NULLABLE_INT,
                        }
                    ),
                ],
                "description": "PBoC buckets of a Class II/III account: limit, used, remaining",
            },
            "channel_quota": {
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {"channel": STRING, "daily": BUCKET, "transfer_cap_minor": NULLABLE_INT}
                    ),
                ]
            },
            "customer_id": NULLABLE_STRING,
            "bound_card": {
                "oneOf": [
                    {"type": "null"},
                    _object({"card_number_masked": STRING, "kind": STRING, "card_type": STRING}),
                ]
            },
        }
    ),
    "Verification": VERIFICATION,
    "CardBinding": CARD_BINDING,
    "SmsChallenge": SMS_CHALLENGE,
    "Posting": POSTING,
    "HeldPosting": HELD_POSTING,
    "Transfer": TRANSFER,
    "History": _object(
        {
            "account_id": STRING,
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Transfer"}},
            "next_cursor": NULLABLE_STRING,
        }
    ),
    "Token": _object(
        {"token": STRING, "account_id": STRING, "expires_in_s": INT, "expires_at": STRING}
    ),
    "Session": _object(
        {"session": STRING, "customer_id": STRING, "expires_in_s": INT, "expires_at": STRING}
    ),
    "AccountVerification": _object({"exists": BOOL, "name_matches": BOOL}),
    "BatchResult": _object(
        {
            "count": INT,
            "summary": {"type": "object", "additionalProperties": INT},
            "results": {
                "type": "array",
                "items": _object(
                    {"transfer_id": STRING, "code": INT, "result": STRING, "timestamp_ns": INT}
                ),
            },
        }
    ),
}

RATE = {"type": "string", "pattern": "^[0-9]+\\.[0-9]{2,4}%$", "examples": ["0.95%"]}
DATE = {"type": "string", "format": "date"}
RATE_JSON = _object({"rate": RATE, "rate_ppm": INT})
INTEREST_FIGURE = _object(
    {
        "date": DATE,
        "days_held": INT,
        "rate": RATE,
        "rate_ppm": INT,
        "interest_minor": INT,
        "total_minor": INT,
    }
)
FIXED_DEPOSIT = _object(
    {
        "account_id": STRING,
        "customer_id": NULLABLE_STRING,
        "status": {"enum": ["open", "closed"]},
        "principal_minor": INT,
        "balance_minor": INT,
        "term": STRING,
        "rate": RATE,
        "rate_ppm": INT,
        "day_count": {"enum": ["360", "365", "actual"]},
        "open_date": DATE,
        "maturity_date": DATE,
        "rollover": BOOL,
        "partial_withdrawn": BOOL,
        "payout_account_id": STRING,
        "interest_at_maturity_minor": INT,
        "business_day": DATE,
    }
)
RATE_SET = _object(
    {
        "effective": DATE,
        "demand": RATE_JSON,
        "fixed": {"type": "object", "additionalProperties": RATE_JSON},
    },
    closed=False,
)
# Loans (core/services/loans.py; ledger/loans.py the arithmetic): a product as the
# catalog publishes it, and a trial calculation.
LOAN_METHODS = {"enum": list(LOAN_FIELDS["method"].values)}
RANGE = _object({"min": INT, "max": INT})
LOAN_PRODUCT = _object(
    {
        "id": STRING,
        "version": INT,
        "effective": DATE,
        "name": STRING,
        "kind": {"enum": list(LOAN_KINDS)},
        "methods": {"type": "array", "items": LOAN_METHODS},
        # The rate rule (the file's `rate`) in the quote's terms: the LPR tenor it floats
        # on and the spread (null and 0: a fixed rate); the contract rate on the day the
        # version applies (today, or its effective day) against the LPR table in force,
        # null when the LPR plus the spread leaves 0..100% (a quote: loan-rate-invalid).
        "lpr_term": {"oneOf": [{"type": "null"}, {"enum": [term.value for term in LprTerm]}]},
        "spread_bp": INT,
        "rate": {"oneOf": [{"type": "null"}, RATE]},
        "rate_ppm": NULLABLE_INT,
        "lpr_ppm": NULLABLE_INT,  # the LPR it floats on; null: a fixed rate
        "term_months": RANGE,
        "amount": _object({"min_minor": INT, "max_minor": INT}),
        "repayment_day": {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": REPAYMENT_DAY_MAX},
                {"enum": [REPAYMENT_DAY_DISBURSEMENT]},
            ]
        },
        "grace_days": INT,
        "penalty_uplift": RATE,
        "penalty_uplift_permille": INT,
        "fees": _object({"upfront": RATE, "upfront_ppm": INT, "monthly": RATE, "monthly_ppm": INT}),
        "prepayment": _object(
            {
                "allowed": BOOL,
                "after_months": INT,
                "fee": RATE,
                "fee_ppm": INT,
                "excess": {"enum": list(EXCESS_CHOICES)},
                "mode": {"enum": list(PREPAYMENT_MODES)},
            }
        ),
        "allocation": {"type": "array", "items": {"enum": list(ALLOCATION_DEFAULT)}},
    }
)
LOAN_PRODUCT["description"] = (
    "one published product version (limits/loans.py `LoanProduct.to_json`) with its rate "
    "resolved (core/services/loans.py `Loans.products`)"
)
LOAN_CATALOG = _object(
    {
        "version": INT,
        "digest": STRING,
        "products": {"type": "array", "items": LOAN_PRODUCT},  # the versions in force today
        "upcoming": {"type": "array", "items": LOAN_PRODUCT},  # published, effective later
    }
)
LOAN_INSTALMENT = _object(
    {
        "number": INT,
        "due_date": DATE,
        "principal_minor": INT,
        "interest_minor": INT,
        "fee_minor": INT,
        "total_minor": INT,
        "remaining_minor": INT,
    }
)
LOAN_QUOTE = _object(
    {
        "product_id": STRING,
        "product_version": INT,
        "method": LOAN_METHODS,
        "amount_minor": INT,
        "term_months": INT,
        "rate": RATE,
        "rate_ppm": INT,
        "lpr_ppm": NULLABLE_INT,
        "spread_bp": INT,
        "start_date": DATE,
        "instalments": {"type": "array", "items": LOAN_INSTALMENT},
        "total_interest_minor": INT,
        "total_fees_minor": INT,
        "upfront_fee_minor": INT,
        "total_repaid_minor": INT,
        "received_minor": INT,
        "apr": RATE,
        "apr_ppm": INT,
    }
)
LOAN_QUOTE["description"] = (
    "a trial calculation: the product version priced, the contract rate (LPR + spread, or "
    "fixed), every instalment, the sums, what the customer receives (the amount less the "
    "upfront fee) and the annualised rate including all fees (`apr`, PBoC 年化利率)"
)
# Loan accounts (core/services/loan_accounts.py; results.py the answers' fields).
LOAN_TRANSITION = _object(
    {
        "state": {"enum": list(LOAN_APPLICATION_STATES)},
        "at": STRING,
        "by": STRING,  # the channel, "op:<operator>", or "system" (the quota and the screen)
        "role": STRING,
        "reason": STRING,
    }
)
LOAN_APPLICATION = _object(
    {
        "application_id": {"type": "string", "pattern": LOAN_APPLICATION_ID_PATTERN},
        "state": {"enum": list(LOAN_APPLICATION_STATES)},
        "customer_id": STRING,
        "product_id": STRING,
        "product_version": INT,
        "method": LOAN_METHODS,
        "amount_minor": INT,
        "term_months": INT,
        "repayment_day": INT,
        "disbursement_account_id": STRING,
        "repayment_account_id": STRING,
        "purpose": STRING,
        "rate": RATE,
        "rate_ppm": INT,
        "apr": RATE,
        "apr_ppm": INT,
        "upfront_fee_minor": INT,
        "received_minor": INT,
        "monthly_fee_minor": INT,
        "total_interest_minor": INT,
        "total_repaid_minor": INT,
        "credit_limit_minor": INT,
        "credit_used_minor": INT,
        "risk_outcome": {"enum": ["allow", "challenge", "delay", "review", "block"]},
        "risk_version": INT,
        # Operators only (the decision route); null at a channel, which never learns them.
        "risk_rules": {"oneOf": [{"type": "null"}, {"type": "array", "items": STRING}]},
        "exposure_minor": NULLABLE_INT,
        "reason": STRING,
        "loan_account_id": NULLABLE_STRING,
        "submitted_at": STRING,
        "transitions": {"type": "array", "items": LOAN_TRANSITION},
        "replayed": BOOL,
    }
)
LOAN_APPLICATION["description"] = (
    "a loan application (core/services/results.py `LoanApplicationView`): the terms asked, "
    "the contract they price to on the application day, the credit check, the risk "
    "screen's outcome, the state and every transition"
)
LOAN = _object(
    {
        "account_id": STRING,
        "customer_id": STRING,
        "application_id": {"type": "string", "pattern": LOAN_APPLICATION_ID_PATTERN},
        "status": {"enum": ["open", "overdue", "closed"]},
        "product_id": STRING,
        "product_version": INT,
        "method": LOAN_METHODS,
        "principal_minor": INT,
        "rate": RATE,
        "rate_ppm": INT,
        "term_months": INT,
        "start_date": DATE,
        "repayment_day": INT,
        "repayment_account_id": STRING,
        "disbursement_account_id": STRING,
        "upfront_fee_minor": INT,
        "monthly_fee_minor": INT,
        "grace_days": INT,
        "penalty_uplift_permille": INT,
        "allocation": {"type": "array", "items": {"enum": list(ALLOCATION_DEFAULT)}},
        "prepayment_mode": {"enum": list(PREPAYMENT_MODES)},
        "prepayment_excess": {"enum": list(EXCESS_CHOICES)},
        "outstanding_minor": INT,
        "scheduled_minor": INT,
        "arrears_principal_minor": INT,
        "arrears_interest_minor": INT,
        "penalty_minor": INT,
        "owed_minor": INT,
        "overdue_since": {"oneOf": [{"type": "null"}, DATE]},
        "segment": INT,
        "instalments_fallen_due": INT,
        "next_instalment": {"oneOf": [{"type": "null"}, LOAN_INSTALMENT]},
        "balance_minor": INT,
        "disbursement_transfer_id": {"type": "string", "pattern": TRANSFER_ID_PATTERN},
        "business_day": DATE,
        "replayed": BOOL,
    }
)
LOAN["description"] = (
    "a loan (core/services/results.py `LoanView`): the contract, and its state from the "
    "loan's row in the ledger: principal scheduled and in arrears, interest in arrears, "
    "penalty, what is owed (accrued interest aside) and the next instalment"
)
LOAN_SCHEDULE_ITEM = _object(
    {
        **LOAN_INSTALMENT["properties"],
        "status": {"enum": ["paid", "overdue", "due", "future"]},
    }
)
COMPONENT_SCHEMAS.update(
    {
        "LoanApplication": LOAN_APPLICATION,
        "Loan": LOAN,
        "LoanSchedule": _object(
            {
                "account_id": STRING,
                "segment": INT,
                "method": LOAN_METHODS,
                "principal_minor": INT,
                "rate": RATE,
                "rate_ppm": INT,
                "start_date": DATE,
                "instalments": {"type": "array", "items": LOAN_SCHEDULE_ITEM},
                "business_day": DATE,
            }
        ),
        "LoanRepaid": _object(
            {
                "account_id": STRING,
                "kind": {"enum": ["arrears", "partial", "full"]},
                "transfer_id": {"type": "string", "pattern": TRANSFER_ID_PATTERN},
                "total_minor": INT,
                "penalty_minor": INT,
                "interest_minor": INT,
                "accrued_interest_minor": INT,
                "principal_minor": INT,
                "prepaid_principal_minor": INT,
                "fee_minor": INT,
                "owed_before_minor": INT,
                "loan": {"$ref": "#/components/schemas/Loan"},
                "replayed": BOOL,
            }
        ),
        "LoanList": _object(
            {
                "customer_id": STRING,
                "loans": {"type": "array", "items": {"$ref": "#/components/schemas/Loan"}},
            }
        ),
    }
)
COMPONENT_SCHEMAS.update(
    {
        "Products": {
            "type": "object",
            "description": "the deposit catalog (limits/deposits.py `DepositCatalog.to_json`) "
            "and, under `loans`, the loan catalog (core/services/loans.py `Loans.products`)",
            "properties": {
                "rate_scale": INT,
                "demand": {"type": "object"},
                "fixed": {"type": "object"},
                "history": {"type": "array", "items": RATE_SET},
                "in_force": RATE_SET,
                "digest": STRING,
                "loans": LOAN_CATALOG,
            },
            "required": ["demand", "fixed", "history", "loans"],
        },
        "FixedDepositQuote": _object(
            {
                "account_id": NULLABLE_STRING,
                "principal_minor": INT,
                "term": STRING,
                "rate": RATE,
                "rate_ppm": INT,
                "day_count": {"enum": ["360", "365", "actual"]},
                "open_date": DATE,
                "maturity_date": DATE,
                "today": INTEREST_FIGURE,
                "at_maturity": INTEREST_FIGURE,
                "partial_withdrawal_available": BOOL,
            }
        ),
        "FixedDeposit": FIXED_DEPOSIT,
        "LoanQuote": LOAN_QUOTE,
        "FixedDepositOpened": _object(
            {
                "deposit": {"$ref": "#/components/schemas/FixedDeposit"},
                "transfer_id": {"type": "string", "pattern": TRANSFER_ID_PATTERN},
                "replayed": BOOL,
            }
        ),
        "FixedDepositWithdrawal": _object(
            {
                "account_id": STRING,
                "kind": {"enum": ["full", "partial"]},
                "principal_minor": INT,
                "interest_minor": INT,
                "total_minor": INT,
                "payout_account_id": STRING,
                "transfer_ids": {
                    "type": "array",
                    "items": {"type": "string", "pattern": TRANSFER_ID_PATTERN},
                },
                "deposit": {"$ref": "#/components/schemas/FixedDeposit"},
                "replayed": BOOL,
            }
        ),
        "InterestHistory": _object(
            {
                "account_id": STRING,
                "rate": {"oneOf": [{"type": "null"}, RATE]},
                "rate_ppm": INT,
                "items": {
                    "type": "array",
                    "items": _object(
                        {
                            "transfer_id": {"type": "string", "pattern": TRANSFER_ID_PATTERN},
                            "kind": {
                                "enum": ["settlement", "correction", "deposit_interest"],
                            },
                            "amount_minor": INT,
                            "period": NULLABLE_INT,
                            "timestamp_ns": INT,
                            "business_day": DATE,
                        }
                    ),
                },
                "accrued_minor": INT,
                "accrued_through": {"oneOf": [{"type": "null"}, DATE]},
                "last_settled_period": NULLABLE_INT,
                "interest_paid_total_minor": INT,
            }
        ),
    }
)

# Risk control and approvals: records the services keep (core/services/risk.py,
# core/services/approvals.py), documented there and in docs/risk.md, docs/approvals.md.
APPROVAL = {
    "type": "object",
    "description": "an approval request (docs/approvals.md)",
    "properties": {
        "id": STRING,
        "kind": STRING,
        "object": STRING,
        "maker": STRING,
        "maker_role": STRING,
        "state": {"enum": ["pending", "approved", "applied", "rejected", "expired", "failed"]},
        "payload": OPEN_OBJECT,
        "diff": STRING,
    },
    "required": ["id", "kind", "state"],
}
RISK_DECISION = {
    "type": "object",
    "description": "a recorded risk decision (docs/risk.md)",
    "properties": {
        "id": STRING,
        "transfer_id": STRING,
        "outcome": {"enum": ["allow", "challenge", "delay", "review", "block"]},
        "report": BOOL,
        "rules": {"type": "array", "items": STRING},
        "inputs": OPEN_OBJECT,
        "version": INT,
        "digest": STRING,
        "state": STRING,
    },
    "required": ["transfer_id", "outcome", "rules"],
}
COMPONENT_SCHEMAS.update(
    {
        "RiskDecision": RISK_DECISION,
        "RiskDecisionList": _object({"items": {"type": "array", "items": RISK_DECISION}}),
        "RiskReports": _object({"date": DATE, "items": {"type": "array", "items": RISK_DECISION}}),
        "RiskRules": {
            "type": "object",
            "description": "the risk rule set in force (limits/risk.py `RiskRules.to_json`)",
            "properties": {"version": INT, "digest": STRING, "rules": {"type": "array"}},
            "required": ["version", "digest", "rules"],
        },
        "Approval": APPROVAL,
        "ApprovalList": _object({"items": {"type": "array", "items": APPROVAL}}),
        "Parameter": _object(
            {
                "kind": STRING,
                "current": OPEN_OBJECT,
                "versions": {"type": "array", "items": OPEN_OBJECT},
            }
        ),
        "Audit": _object({"items": {"type": "array", "items": OPEN_OBJECT}}),
    }
)

ACTOR_JSON_PATTERN = '^id="[A-Za-z0-9_-]{1,32}",role="[a-z]{1,16}"$'  # signing.ACTOR_PATTERN
COMMON_STATUSES = (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
DESCRIPTIONS = {
    400: "Malformed request: invalid JSON, missing or malformed Idempotency-Key",
    401: "Unsigned, badly signed, stale or replayed request (or the transaction password, "
    "token or customer session missing or invalid)",
    403: "Operation not allowed for this channel, wrong transaction password, or data "
    "outside the channel's read scope",
    404: "No such route, account, customer or transfer",
    405: "Method not allowed",
    409: "Conflict: Idempotency-Key in flight, account or hold in the wrong state, a "
    "verification step, card binding or SMS code that cannot be taken now",
    413: "Body or batch too large, or an ID document image over its limit",
    415: "Unsupported content type, or an ID document image that is not a JPEG or PNG",
    422: "Valid JSON that breaks the schema or a business rule (ledger result code included)",
    423: "Transaction password locked until a supervisor resets it at a counter",
    429: "Channel over its rate limit, or an SMS code asked for again too soon (Retry-After)",
    503: "Not ready (recovering), overloaded, or a verification provider unavailable (Retry-After)",
}


def _problem_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": DESCRIPTIONS.get(status, "Problem"),
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "required": True}}
    return response


# Reads scoped by a customer session or a token (core.services.policy.READ_SCOPES).
# Where the customer's session or a transaction token proves the customer: reads, and at
# the app and WeChat the settling of a hold (for its payer or merchant).
SESSION_OPERATIONS = frozenset(
    {
        "read_customer",
        "read_account",
        "read_history",
        "read_transfer",
        "end_session",
        "capture",
        "void",
        "read_fixed_deposit",
        "quote_withdrawal",
        "read_interest",
        # Loans: the customer who applies, is paid out and reads (its session).
        "apply_loan",
        "read_loan_application",
        "disburse_loan",
        "read_loan",
        "read_loan_schedule",
        "read_customer_loans",
        # Real-name verification: the registering channel acts for its new customer; the
        # same kind's other channel shows the customer's session.
        "submit_id_document",
        "submit_liveness",
        "read_verification",
        "bind_card",
        "read_card_binding",
        "request_sms_code",
        "confirm_sms_code",
    }
)
# Operator routes whose permission a service checks itself (Operation.permission ""),
# when it is not the approvals service's request:KIND / approve:KIND.
SERVICE_CHECKS = {
    "admin_decide_loan_application": "the loan accounts service checks decide:loans (a loan "
    "officer or an administrator).",
}
TOKEN_READ_OPERATIONS = frozenset(
    {
        "read_account",
        "read_history",
        "read_transfer",
        "capture",
        "void",
        "read_interest",  # a fixed deposit has no password, so no token: a session reads it
    }
)


def _parameters(route: Route) -> list[dict[str, Any]]:
    """The path, query and header parameters of `route` (the proofs come with `_operation`)."""
    parameters: list[dict[str, Any]] = []
    for name in route.params:
        schema: dict[str, Any] = {"type": "string"}
        if name == "account_id":
            schema["pattern"] = ACCOUNT_ID_PATTERN
        elif name in ("transfer_id", "payment_id"):
            schema["pattern"] = TRANSFER_ID_PATTERN
        elif name == "customer_id":
            schema["pattern"] = CUSTOMER_ID_PATTERN
        elif name == "application_id":
            schema["pattern"] = LOAN_APPLICATION_ID_PATTERN
        elif name == "approval_id":
            schema["pattern"] = APPROVAL_ID_PATTERN
        elif name == "binding_id":
            schema["pattern"] = BINDING_ID_PATTERN
        elif name == "challenge_id":
            schema["pattern"] = CHALLENGE_ID_PATTERN
        elif name == "kind":
            schema = {"enum": list(PARAMETER_KINDS)}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    for name, spec in route.query.items():
        parameters.append(
            {"name": name, "in": "query", "required": spec.required, "schema": spec.json_schema()}
        )
    policy = route.policy
    if policy.money:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": True,
                "description": "1-255 visible ASCII characters; "
                "the same key retries the same operation",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^[!-~]+$",
                },
            }
        )
    if route.operation in SESSION_OPERATIONS:
        parameters.append(
            {
                "name": "Tally-Session",
                "in": "header",
                "required": route.operation == "end_session",
                "description": "a customer session from POST /v1/sessions (wechat and app "
                "channels read only that customer's data)",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            }
        )
    if not route.admin:
        parameters.append(actor_parameter())
    return parameters


def actor_parameter() -> dict[str, Any]:
    return {
        "name": "Tally-Actor",
        "in": "header",
        "required": False,
        "description": "who acts at the channel, signed with the request: required at "
        "channels that act for a teller (the counter), refused at others",
        "schema": {"type": "string", "pattern": ACTOR_JSON_PATTERN},
    }


def _operation(route: Route) -> dict[str, Any]:
    parameters = _parameters(route)
    policy = route.policy
    if policy.consent or route.operation in TOKEN_READ_OPERATIONS:
        parameters.append(
            {
                "name": "Tally-Transaction-Token",
                "in": "header",
                "required": False,
                "description": "a token from POST /v1/accounts/{account_id}/tokens, "
                + (
                    "instead of `password`"
                    if policy.consent
                    else "for the account read (at wechat and app, or a Tally-Session; "
                    "at an ATM, required)"
                ),
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            }
        )
    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": route.summary}
    if route.response:
        content: dict[str, Any] = {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{route.response}"}}
        }
        if route.binary:
            content["application/octet-stream"] = {
                "schema": {"type": "string", "format": "binary"},
                "description": "u32 count, 4 zero bytes, count result codes (u8) padded to 8, "
                "count timestamps (u64), little-endian",
            }
        success["content"] = content
    if policy.money:
        success["headers"] = {
            "Idempotent-Replayed": {
                "description": "`true` when this answer replays an earlier request "
                "with the same key",
                "schema": {"type": "string", "enum": ["true"]},
            }
        }
    responses[str(route.status)] = success
    if route.held:
        responses["202"] = {
            "description": "held by the bank's risk control: a pending hold the bank captures "
            "after a delay, or a risk officer releases or returns (docs/risk.md)",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/HeldPosting"}}
            },
            "headers": success.get("headers", {}),
        }
    declared = set(route.problems)
    if policy.kinds:
        declared.add(403)  # channel-kind-not-allowed
    if policy.consent:
        declared.add(401)  # authentication-required: no password or token
    for status in sorted(set(COMMON_STATUSES) | declared):
        responses[str(status)] = _problem_response(status)
    operation: dict[str, Any] = {
        "operationId": route.operation,
        "summary": route.summary,
        "parameters": parameters,
        "responses": responses,
        "security": [{"TallyHmac": []}],
        "x-tally-operation": route.operation,
        # The channel policy (core.services.policy), as every adapter enforces it.
        "x-tally-consent": policy.consent,
    }
    if policy.kinds:
        operation["x-tally-channel-kinds"] = list(policy.kinds)
    if route.admin:
        operation["x-tally-operator-permission"] = policy.permission or None
        operation["description"] = (
            f"{policy.kinds_what}: only at operator signatures "
            '(channel="op:NAME", the operator registry; channels get 401); '
            + (
                f"needs {policy.permission}."
                if policy.permission
                else SERVICE_CHECKS.get(
                    route.operation,
                    "the approvals service checks the role (request:KIND, approve:KIND).",
                )
            )
        )
    elif policy.kinds:
        operation["description"] = (
            f"{policy.kinds_what}: only at {' or '.join(policy.kinds)} channels "
            "(others get 403 channel-kind-not-allowed)."
        )
    if route.body is not None:
        body_schema = object_schema(route.body)
        if route.alternatives:  # exactly one of the field sets
            body_schema = {"oneOf": [object_schema(fields) for fields in route.alternatives]}
        body_content: dict[str, Any] = {"application/json": {"schema": body_schema}}
        if route.binary:
            body_content["application/octet-stream"] = {
                "schema": {"type": "string", "format": "binary"},
                "description": "N x 128-byte transfer records (ledger/types.py TRANSFER_STRUCT) "
                "with id and channel zero: the server derives them",
            }
        operation["requestBody"] = {"required": not route.body_optional, "content": body_content}
    if route.xml:  # ISO 20022: XML in and out (channels/iso20022/http.py says how)
        xml_operation(route, operation)
    return operation


def _unsigned(
    summary: str, content_type: str, schema: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": summary, "content": {content_type: {"schema": schema}}}
    }
    responses.update(extra or {})
    return {
        "get": {
            "operationId": summary.split()[0].lower(),
            "summary": summary,
            "security": [],
            "responses": responses,
        }
    }


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    status_object = {"type": "object", "properties": {"status": STRING}, "required": ["status"]}
    paths["/healthz"] = _unsigned("Healthz: the process answers", "application/json", status_object)
    paths["/readyz"] = _unsigned(
        "Readyz: recovery is done and the engine runs",
        "application/json",
        status_object,
        {
            "503": {
                "description": "still recovering, or recovery failed",
                "content": {"application/json": {"schema": status_object}},
            }
        },
    )
    paths["/metrics"] = _unsigned(
        "Metrics in Prometheus text format", "text/plain", {"type": "string"}
    )
    paths["/openapi.json"] = _unsigned(
        "Openapi: this document", "application/json", {"type": "object"}
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tally",
            "version": "1.0.0",
            "description": (
                "The HTTP face of Tally, a bank transaction core. Money is integer fen. Every /v1 "
                f"request is signed ({SCHEME}: HMAC-SHA256 over channel, key id, method, path, "
                "query, timestamp, nonce, Idempotency-Key, Tally-Actor and the body's SHA-256; "
                "see "
                "channels/http/signing.py). Errors are RFC 9457 problems with stable types under "
                f"{PROBLEM_BASE}. Problem types from ledger result codes: "
                + ", ".join(all_problem_slugs())
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": COMPONENT_SCHEMAS,
            "securitySchemes": {
                "TallyHmac": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": f'{SCHEME} channel="..",key_id="..",timestamp="..",'
                    'nonce="..",signature=".."',
                }
            },
        },
    }
