"""ISO 8583 response codes (field 39): the one table from the services' refusals.

As channels/http/problems.py is for HTTP, this is the only place a refusal of
the services (`core.services.refusals.Code`) or a ledger result code
(`ledger.types.CreateTransferResult`, carried by `TRANSFER_REFUSED`) meets
ISO 8583. The codes are ISO 8583:1987's as China UnionPay-style hosts use them.
Both tables are total (every refusal and every failed ledger result has its
code: a test checks it), so a new refusal cannot reach a terminal unmapped.

A few answers depend on what the message asked rather than on the refusal, and
are the adapter's (channels/iso8583/adapter.py): a reversal whose original is
already reversed, was declined or lapsed is approved (00: nothing is left
posted, which is what the terminal asks for); a reversal whose original is not
in the ledger is 25; an original that meets its reversal is 94.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from core.services.refusals import VERIFICATION_CODES, Code, Refusal
from ledger.types import CODES_MALFORMED_RECORD, CreateTransferResult

R = CreateTransferResult

APPROVED: Final = "00"
INVALID_MERCHANT: Final = "03"  # an unknown (or disabled) terminal
DO_NOT_HONOUR: Final = "05"  # the risk controls held the money instead of moving it
INVALID_TRANSACTION: Final = "12"
INVALID_AMOUNT: Final = "13"
INVALID_CARD: Final = "14"  # no such customer account
UNABLE_TO_LOCATE: Final = "25"  # a reversal's original is not in the ledger
FORMAT_ERROR: Final = "30"
FUNCTION_NOT_SUPPORTED: Final = "40"
INSUFFICIENT_FUNDS: Final = "51"
EXPIRED_CARD: Final = "54"  # the card's account is closed
INCORRECT_PIN: Final = "55"
NOT_PERMITTED_CARDHOLDER: Final = "57"  # the account's class or kind may not do this
NOT_PERMITTED_TERMINAL: Final = "58"  # the terminal's channel may not do this
SUSPECTED_FRAUD: Final = "59"  # the risk controls blocked it
EXCEEDS_WITHDRAWAL_LIMIT: Final = "61"  # a cap: channel, product, PBoC bucket, customer
RESTRICTED_CARD: Final = "62"  # the account is frozen
SECURITY_VIOLATION: Final = "63"  # a missing or wrong MAC
EXCEEDS_FREQUENCY: Final = "65"  # the risk controls want a second factor (velocity...)
PIN_TRIES_EXCEEDED: Final = "75"
ISSUER_UNAVAILABLE: Final = "91"  # not ready, overloaded, storage down: try again
DUPLICATE: Final = "94"
SYSTEM_MALFUNCTION: Final = "96"

C = Code
# --- service refusals ----------------------------------------------------------------------
_BY_CODE: dict[Code, str] = {
    # Load and availability: the terminal may try again (or reverse).
    C.NOT_READY: ISSUER_UNAVAILABLE,
    C.OVERLOADED: ISSUER_UNAVAILABLE,
    C.UNAVAILABLE: ISSUER_UNAVAILABLE,
    C.STORAGE_UNAVAILABLE: ISSUER_UNAVAILABLE,
    C.PASSWORD_CHECKS_BUSY: ISSUER_UNAVAILABLE,
    # The card and its account.
    C.ACCOUNT_NOT_FOUND: INVALID_CARD,
    C.CUSTOMER_ACCOUNT_NOT_FOUND: INVALID_CARD,
    C.DEBIT_ACCOUNT_NOT_CUSTOMER: INVALID_CARD,
    C.CUSTOMER_NOT_FOUND: INVALID_CARD,
    C.INTERNAL_ACCOUNT_NOT_ALLOWED: INVALID_CARD,
    C.FIXED_DEPOSIT_NOT_FOUND: INVALID_CARD,
    C.LOAN_NOT_FOUND: INVALID_CARD,
    # The PIN (the account's transaction password) and the consent it buys.
    C.PASSWORD_NOT_SET: INCORRECT_PIN,
    C.PASSWORD_WRONG: INCORRECT_PIN,
    C.PASSWORD_WEAK: INCORRECT_PIN,
    C.PASSWORD_LOCKED: PIN_TRIES_EXCEEDED,
    C.TOKEN_INVALID: INCORRECT_PIN,
    C.TOKEN_NOT_FOR_ACCOUNT: INCORRECT_PIN,
    C.AUTHENTICATION_REQUIRED: INCORRECT_PIN,
    C.READ_AUTHENTICATION_REQUIRED: INCORRECT_PIN,
    C.CUSTOMER_PROOF_REQUIRED: INCORRECT_PIN,
    C.SESSION_INVALID: INCORRECT_PIN,
    C.IDENTITY_MISMATCH: INCORRECT_PIN,
    # What the channel (the terminal's) may not do.
    C.CHANNEL_KIND_NOT_ALLOWED: NOT_PERMITTED_TERMINAL,
    C.ACTOR_REQUIRED: NOT_PERMITTED_TERMINAL,
    C.ACTOR_ROLE_NOT_ALLOWED: NOT_PERMITTED_TERMINAL,
    C.SUPERVISOR_REQUIRED: NOT_PERMITTED_TERMINAL,
    C.APPROVAL_REQUIRED: NOT_PERMITTED_TERMINAL,
    C.OPERATOR_NOT_PERMITTED: NOT_PERMITTED_TERMINAL,
    # What the account (its class, kind, flags) may not do.
    C.READ_NOT_IN_SCOPE: NOT_PERMITTED_CARDHOLDER,
    C.FACE_TO_FACE_REQUIRED: NOT_PERMITTED_CARDHOLDER,
    C.KYC_NOT_VERIFIED: NOT_PERMITTED_CARDHOLDER,
    C.ACCOUNT_CLASS_NOT_ALLOWED: NOT_PERMITTED_CARDHOLDER,
    C.ACCOUNT_NOT_CUSTOMERS: NOT_PERMITTED_CARDHOLDER,
    C.LOAN_ACCOUNT_NOT_ALLOWED: NOT_PERMITTED_CARDHOLDER,
    C.ACCOUNT_CLASS_LIMIT: NOT_PERMITTED_CARDHOLDER,
    C.CARD_STILL_BOUND: NOT_PERMITTED_CARDHOLDER,
    # Limits.
    C.ACTOR_LIMIT_EXCEEDED: EXCEEDS_WITHDRAWAL_LIMIT,
    C.LOAN_QUOTA_EXCEEDED: EXCEEDS_WITHDRAWAL_LIMIT,
    C.LOAN_EXPOSURE_EXCEEDED: EXCEEDS_WITHDRAWAL_LIMIT,
    # Risk control: which rules fired is never told (docs/risk.md).
    C.RISK_BLOCKED: SUSPECTED_FRAUD,
    C.RISK_CHALLENGE: EXCEEDS_FREQUENCY,
    C.RISK_HOLD_LOCKED: DO_NOT_HONOUR,
    C.RISK_DECISION_NOT_FOUND: UNABLE_TO_LOCATE,
    # Something named that is not there.
    C.TRANSFER_NOT_FOUND: UNABLE_TO_LOCATE,
    C.APPROVAL_NOT_FOUND: UNABLE_TO_LOCATE,
    C.LOAN_APPLICATION_NOT_FOUND: UNABLE_TO_LOCATE,
    # An operation key used before with other fields.
    C.IDEMPOTENCY_KEY_REUSED: DUPLICATE,
    C.CUSTOMER_EXISTS: DUPLICATE,
    C.APPROVAL_DUPLICATE: DUPLICATE,
    # Amounts.
    C.DEPOSIT_BELOW_MINIMUM: INVALID_AMOUNT,
    C.DEPOSIT_AMOUNT_EXCEEDS_PRINCIPAL: INVALID_AMOUNT,
    C.LOAN_AMOUNT_OUT_OF_RANGE: INVALID_AMOUNT,
    C.LOAN_REPAYMENT_EXCEEDS_OWED: INVALID_AMOUNT,
    C.LOAN_REPAYMENT_TOO_SMALL: INVALID_AMOUNT,
    # The request itself: a field the profile has but the service refuses.
    C.INVALID_FIELD: FORMAT_ERROR,
    C.PARAMETER_INVALID: FORMAT_ERROR,
    C.INVALID_RESIDENT_ID: FORMAT_ERROR,
    C.BOUND_CARD_INVALID: INVALID_CARD,
    C.BENEFICIARY_CARD_INVALID: INVALID_CARD,
    # Not something a terminal asks for (no ISO 8583 transaction reaches these); mapped so
    # the table is total.
    C.BOUND_CARD_NOT_SAME_NAME: INVALID_TRANSACTION,
    C.BOUND_CARD_OTHER_CUSTOMER: INVALID_TRANSACTION,
    C.BOUND_CARD_NOT_FOUND: INVALID_TRANSACTION,
    C.NOT_APPLICABLE: INVALID_TRANSACTION,
    C.ACCOUNT_CREATE_REFUSED: INVALID_TRANSACTION,
    C.ACCOUNT_UPDATE_REFUSED: INVALID_TRANSACTION,
    C.APPROVAL_SELF: INVALID_TRANSACTION,
    C.APPROVAL_NOT_PENDING: INVALID_TRANSACTION,
    C.APPROVAL_STALE: INVALID_TRANSACTION,
    C.DEPOSIT_TERM_UNKNOWN: INVALID_TRANSACTION,
    C.DEPOSIT_PARTIAL_ALREADY_TAKEN: INVALID_TRANSACTION,
    C.DEPOSIT_MATURED: INVALID_TRANSACTION,
    C.DEPOSIT_CLOSED: INVALID_TRANSACTION,
    C.LOAN_PRODUCT_UNKNOWN: INVALID_TRANSACTION,
    C.LOAN_TERM_OUT_OF_RANGE: INVALID_TRANSACTION,
    C.LOAN_METHOD_NOT_OFFERED: INVALID_TRANSACTION,
    C.LOAN_RATE_INVALID: INVALID_TRANSACTION,
    C.LOAN_APPLICATION_STATE: INVALID_TRANSACTION,
    C.LOAN_ALREADY_DISBURSED: INVALID_TRANSACTION,
    C.LOAN_CLOSED: INVALID_TRANSACTION,
    C.LOAN_PREPAYMENT_NOT_ALLOWED: INVALID_TRANSACTION,
    C.ACCOUNT_NOT_EMPTY: INVALID_TRANSACTION,  # the bank's closing of an account: no terminal's
    # Real-name verification (core/services/verification.py): no terminal verifies a
    # customer or binds a card; mapped so the table is total. A provider that did not
    # answer is the issuer's side being unavailable (try again), the rest a transaction
    # the terminal cannot make.
    C.PROVIDER_UNAVAILABLE: ISSUER_UNAVAILABLE,
    C.PROVIDER_ANSWER_INVALID: ISSUER_UNAVAILABLE,
    **dict.fromkeys(VERIFICATION_CODES, INVALID_TRANSACTION),
}
# TRANSFER_REFUSED and TRANSFER_OF_ANOTHER_CHANNEL carry a ledger code (below): another
# channel's transfer is answered exactly as one that does not exist.
_LEDGER_CARRIERS: Final = frozenset({C.TRANSFER_REFUSED, C.TRANSFER_OF_ANOTHER_CHANNEL})

# --- ledger result codes -------------------------------------------------------------------
_BY_RESULT: dict[CreateTransferResult, str] = {
    R.EXCEEDS_CREDITS: INSUFFICIENT_FUNDS,
    # Caps: per transaction, per day, PBoC Class II/III buckets, the customer's daily cap,
    # strong authentication above 50,000 CNY a day (a terminal has no second factor).
    R.EXCEEDS_TRANSFER_CAP: EXCEEDS_WITHDRAWAL_LIMIT,
    R.EXCEEDS_CHANNEL_TRANSFER_CAP: EXCEEDS_WITHDRAWAL_LIMIT,
    R.EXCEEDS_CHANNEL_DAILY_CAP: EXCEEDS_WITHDRAWAL_LIMIT,
    R.EXCEEDS_DAILY_OUTFLOW: EXCEEDS_WITHDRAWAL_LIMIT,
    R.EXCEEDS_YEARLY_OUTFLOW: EXCEEDS_WITHDRAWAL_LIMIT,
    R.EXCEEDS_CUSTOMER_DAILY_CAP: EXCEEDS_WITHDRAWAL_LIMIT,
    R.STRONG_AUTH_REQUIRED: EXCEEDS_WITHDRAWAL_LIMIT,
    # The other side's caps (a transfer's target): a limit all the same.
    R.EXCEEDS_DAILY_INFLOW: EXCEEDS_WITHDRAWAL_LIMIT,
    R.EXCEEDS_YEARLY_INFLOW: EXCEEDS_WITHDRAWAL_LIMIT,
    R.EXCEEDS_BALANCE_CAP: EXCEEDS_WITHDRAWAL_LIMIT,
    R.EXCEEDS_CHANNEL_DAILY_INFLOW_CAP: EXCEEDS_WITHDRAWAL_LIMIT,
    # The account's class or kind may not do this (cash on Class II without a face-to-face
    # check, or on Class III; a deposit or loan account debited).
    R.CASH_NOT_ALLOWED: NOT_PERMITTED_CARDHOLDER,
    R.DEBIT_ACCOUNT_CODE_NOT_ALLOWED: NOT_PERMITTED_CARDHOLDER,
    R.CREDIT_ACCOUNT_CODE_NOT_ALLOWED: NOT_PERMITTED_CARDHOLDER,
    R.CODE_NEEDS_BANK_ACCOUNT: NOT_PERMITTED_CARDHOLDER,
    R.NON_BOUND_INFLOW_DISABLED: NOT_PERMITTED_CARDHOLDER,
    R.NO_BOUND_ACCOUNT: NOT_PERMITTED_CARDHOLDER,
    R.EXCEEDS_DEBITS: NOT_PERMITTED_CARDHOLDER,
    # The terminal's channel may not post this code.
    R.CHANNEL_CODE_NOT_ALLOWED: NOT_PERMITTED_TERMINAL,
    # Accounts.
    R.DEBIT_ACCOUNT_NOT_FOUND: INVALID_CARD,
    R.CREDIT_ACCOUNT_NOT_FOUND: INVALID_CARD,
    R.CREDIT_ACCOUNT_CLOSED: INVALID_CARD,
    R.DEBIT_ACCOUNT_CLOSED: EXPIRED_CARD,
    R.DEBIT_ACCOUNT_FROZEN: RESTRICTED_CARD,
    R.CREDIT_ACCOUNT_FROZEN: RESTRICTED_CARD,
    # A reversal's or a capture's target.
    R.REVERSAL_TARGET_NOT_FOUND: UNABLE_TO_LOCATE,
    R.PENDING_TRANSFER_NOT_FOUND: UNABLE_TO_LOCATE,
    R.REVERSAL_TARGET_NOT_POSTED: INVALID_TRANSACTION,
    R.REVERSAL_ACCOUNTS_MISMATCH: INVALID_TRANSACTION,
    R.PENDING_TRANSFER_NOT_PENDING: INVALID_TRANSACTION,
    R.PENDING_TRANSFER_ALREADY_POSTED: INVALID_TRANSACTION,
    R.PENDING_TRANSFER_ALREADY_VOIDED: INVALID_TRANSACTION,
    R.PENDING_TRANSFER_EXPIRED: EXPIRED_CARD,
    R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID: INVALID_TRANSACTION,
    R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID: INVALID_TRANSACTION,
    R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER: INVALID_TRANSACTION,
    R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT: INVALID_AMOUNT,
    R.EXCEEDS_PENDING_TRANSFER_AMOUNT: INVALID_AMOUNT,
    R.EXCEEDS_REVERSIBLE_AMOUNT: INVALID_AMOUNT,
    # Amounts out of range.
    R.AMOUNT_MUST_BE_POSITIVE: INVALID_AMOUNT,
    R.OVERFLOWS_DEBITS_PENDING: INVALID_AMOUNT,
    R.OVERFLOWS_CREDITS_PENDING: INVALID_AMOUNT,
    R.OVERFLOWS_DEBITS_POSTED: INVALID_AMOUNT,
    R.OVERFLOWS_CREDITS_POSTED: INVALID_AMOUNT,
    R.OVERFLOWS_DEBITS: INVALID_AMOUNT,
    R.OVERFLOWS_CREDITS: INVALID_AMOUNT,
    R.OVERFLOWS_TIMEOUT: INVALID_AMOUNT,
    R.ACCOUNTS_MUST_BE_DIFFERENT: INVALID_TRANSACTION,
    # The operation key was used before for another message (another amount, account...),
    # or its first message failed and is remembered without its fields.
    **{result: DUPLICATE for result in R if result.name.startswith("EXISTS_WITH_DIFFERENT_")},
    R.ID_ALREADY_FAILED: DUPLICATE,
    # Load shedding: this channel holds its share of the transfer log; try again later.
    R.CHANNEL_LOG_QUOTA_EXCEEDED: ISSUER_UNAVAILABLE,
    # The bank's own side (an internal account's floor): not the cardholder's doing.
    R.EXCEEDS_INTERNAL_FLOOR: SYSTEM_MALFUNCTION,
    # Validation codes the adapter's postings cannot produce (the services build them):
    # a defect if one does.
    **{result: SYSTEM_MALFUNCTION for result in CODES_MALFORMED_RECORD},
}

BY_CODE: Final[Mapping[Code, str]] = MappingProxyType(_BY_CODE)
BY_RESULT: Final[Mapping[CreateTransferResult, str]] = MappingProxyType(_BY_RESULT)
# Every refusal is mapped (the two carriers through BY_RESULT); every result but the two
# successes (OK, EXISTS) is. Checked at import, so a new code cannot ship unmapped.
assert set(BY_CODE) | _LEDGER_CARRIERS == set(Code), set(Code) - set(BY_CODE) - _LEDGER_CARRIERS
assert set(BY_RESULT) == set(R) - {R.OK, R.EXISTS}, set(R) - set(BY_RESULT)


def response_code(refusal: Refusal) -> str:
    """Field 39 for a refusal of the services (the only place refusals meet ISO 8583)."""
    code = refusal.code
    if code in _LEDGER_CARRIERS:
        return _BY_RESULT.get(R(refusal.ledger_code), SYSTEM_MALFUNCTION)
    return _BY_CODE[code]


# --- risk outcomes that are not refusals ----------------------------------------------------
# The risk stage's DELAY or REVIEW turns a posting into a hold (`Posted.risk_hold`). At a
# terminal the cardholder waits at the counter or the ATM: cash not dispensed now, or a sale
# not made now, is never settled later, so the services return that hold at once
# (`Payments.return_risk_hold`) and the terminal is told no: 05, do not honour (nothing was
# paid; which rule fired is never told). The other outcomes are refusals (BY_CODE above): a
# BLOCK is 59 (suspected fraud), an unmet CHALLENGE 65 (the networks' "soft decline": the
# cardholder may try again with a second factor, which a terminal over this profile cannot
# give, so in effect the issuer's app or a counter), none of them 1xx (a 1987 host has no
# approve-with-conditions for cash).
RISK_HOLD_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {"delayed": DO_NOT_HONOUR, "review": DO_NOT_HONOUR, "returned": DO_NOT_HONOUR}
)


def risk_hold_code(risk_hold: str) -> str:
    """Field 39 for a posting the risk stage held instead of moving (`Posted.risk_hold`)."""
    return RISK_HOLD_CODES.get(risk_hold, DO_NOT_HONOUR)


def ledger_result(refusal: Refusal) -> int:
    """The ledger code a refusal carries (0 when it carries none): the adapter's reversal
    logic asks which target was missing or already settled."""
    return refusal.ledger_code if refusal.code in _LEDGER_CARRIERS else 0
