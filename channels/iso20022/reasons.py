"""ISO 20022 status reasons (pacs.002 StsRsnInf/Rsn/Cd): the one table from the services'
refusals.

As channels/http/problems.py is for HTTP and channels/iso8583/codes.py for ISO 8583, this
is the only place a refusal of the services (`core.services.refusals.Code`) or a ledger
result code (`ledger.types.CreateTransferResult`, carried by `TRANSFER_REFUSED`) meets
ISO 20022. The values are ExternalStatusReason1Code codes. Both tables are total (checked
at import, and by tests/unit/test_iso20022_reasons.py), so a new refusal cannot reach a
partner unmapped.

Decisions (docs/iso20022.md, "Reasons"):

- A refusal that says "not now" (not ready, overloaded, storage down, the channel's share
  of the log full) is no rejection: `status()` answers PDNG with no reason, the item is
  neither ACSC nor RJCT and the partner sends it again with the same TxId (the HTTP layer
  answers 503 + Retry-After for a message of which nothing was admitted).
- An amount over a cap (a transfer, channel or customer cap, the PBoC Class II/III inflow
  buckets, Class III's 2,000 CNY balance cap) is AM02 NotAllowedAmount: the same credit
  with a smaller amount could pass. What the account may not receive at all, whatever
  the amount (its class or kind, non-bound inflow disabled, the risk controls), is AG01
  TransactionForbidden. Which risk rule fired is never told (docs/risk.md).
- An account Tally does not know, or one the partner may not name (a bank-internal
  account), is AC01 IncorrectAccountNumber (existence is not disclosed); closed AC04;
  frozen AC06.
- Duplication AM05: a TxId (the reference) reused with other fields, or a second return
  of one original. A retry of the same credit is no refusal (ACSC again).
- Returns (pacs.004): the original not found (or not ours to return) AG09
  PaymentNotReceived; more than the original AM09 WrongAmount; the clearing account
  short AM04 InsufficientFunds.
- What a partner's message cannot cause (a defect, the bank's own floor) is MS03
  NotSpecifiedReasonAgentGenerated; a business rule on a field with a pointer is NARR
  with the detail.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from channels.iso20022.messages import TxStatusCode
from core.services.refusals import VERIFICATION_CODES, Code, Refusal
from ledger.types import CODES_MALFORMED_RECORD, CreateTransferResult

R = CreateTransferResult

INCORRECT_ACCOUNT_NUMBER: Final = "AC01"
CLOSED_ACCOUNT_NUMBER: Final = "AC04"
BLOCKED_ACCOUNT: Final = "AC06"
TRANSACTION_FORBIDDEN: Final = "AG01"
PAYMENT_NOT_RECEIVED: Final = "AG09"  # a return's original is not there
ZERO_AMOUNT: Final = "AM01"
NOT_ALLOWED_AMOUNT: Final = "AM02"
INSUFFICIENT_FUNDS: Final = "AM04"
DUPLICATION: Final = "AM05"
WRONG_AMOUNT: Final = "AM09"
NOT_SPECIFIED_AGENT: Final = "MS03"
NARRATIVE: Final = "NARR"

# Refusals that say "not now": PDNG, no reason (see the module docstring).
RETRY: Final = None

C = Code
_BY_CODE: dict[Code, str | None] = {
    C.NOT_READY: RETRY,
    C.OVERLOADED: RETRY,
    C.UNAVAILABLE: RETRY,
    C.STORAGE_UNAVAILABLE: RETRY,
    C.PASSWORD_CHECKS_BUSY: RETRY,
    # Accounts the partner names.
    C.ACCOUNT_NOT_FOUND: INCORRECT_ACCOUNT_NUMBER,
    C.CUSTOMER_ACCOUNT_NOT_FOUND: INCORRECT_ACCOUNT_NUMBER,
    C.INTERNAL_ACCOUNT_NOT_ALLOWED: INCORRECT_ACCOUNT_NUMBER,
    C.DEBIT_ACCOUNT_NOT_CUSTOMER: INCORRECT_ACCOUNT_NUMBER,
    C.CUSTOMER_NOT_FOUND: INCORRECT_ACCOUNT_NUMBER,
    C.FIXED_DEPOSIT_NOT_FOUND: INCORRECT_ACCOUNT_NUMBER,
    C.LOAN_NOT_FOUND: INCORRECT_ACCOUNT_NUMBER,
    C.BOUND_CARD_INVALID: INCORRECT_ACCOUNT_NUMBER,
    C.BENEFICIARY_CARD_INVALID: INCORRECT_ACCOUNT_NUMBER,
    # What the account, the channel or the risk controls do not allow, whatever the amount.
    C.CHANNEL_KIND_NOT_ALLOWED: TRANSACTION_FORBIDDEN,
    C.ACCOUNT_CLASS_NOT_ALLOWED: TRANSACTION_FORBIDDEN,
    C.ACCOUNT_NOT_CUSTOMERS: TRANSACTION_FORBIDDEN,
    C.LOAN_ACCOUNT_NOT_ALLOWED: TRANSACTION_FORBIDDEN,
    C.ACCOUNT_CLASS_LIMIT: TRANSACTION_FORBIDDEN,
    C.FACE_TO_FACE_REQUIRED: TRANSACTION_FORBIDDEN,
    C.KYC_NOT_VERIFIED: TRANSACTION_FORBIDDEN,
    C.CARD_STILL_BOUND: TRANSACTION_FORBIDDEN,
    C.READ_NOT_IN_SCOPE: TRANSACTION_FORBIDDEN,
    C.NOT_APPLICABLE: TRANSACTION_FORBIDDEN,  # e.g. a return of what is no outgoing transfer
    C.RISK_BLOCKED: TRANSACTION_FORBIDDEN,
    C.RISK_CHALLENGE: TRANSACTION_FORBIDDEN,  # a partner has no second factor to offer
    C.RISK_HOLD_LOCKED: TRANSACTION_FORBIDDEN,
    # Consent and identity: a partner's credit needs none; mapped so the table is total.
    C.PASSWORD_NOT_SET: TRANSACTION_FORBIDDEN,
    C.PASSWORD_WRONG: TRANSACTION_FORBIDDEN,
    C.PASSWORD_WEAK: TRANSACTION_FORBIDDEN,
    C.PASSWORD_LOCKED: TRANSACTION_FORBIDDEN,
    C.TOKEN_INVALID: TRANSACTION_FORBIDDEN,
    C.TOKEN_NOT_FOR_ACCOUNT: TRANSACTION_FORBIDDEN,
    C.AUTHENTICATION_REQUIRED: TRANSACTION_FORBIDDEN,
    C.READ_AUTHENTICATION_REQUIRED: TRANSACTION_FORBIDDEN,
    C.CUSTOMER_PROOF_REQUIRED: TRANSACTION_FORBIDDEN,
    C.SESSION_INVALID: TRANSACTION_FORBIDDEN,
    C.IDENTITY_MISMATCH: TRANSACTION_FORBIDDEN,
    C.ACTOR_REQUIRED: TRANSACTION_FORBIDDEN,
    C.ACTOR_ROLE_NOT_ALLOWED: TRANSACTION_FORBIDDEN,
    C.SUPERVISOR_REQUIRED: TRANSACTION_FORBIDDEN,
    C.APPROVAL_REQUIRED: TRANSACTION_FORBIDDEN,
    C.OPERATOR_NOT_PERMITTED: TRANSACTION_FORBIDDEN,
    # Amounts over a cap.
    C.ACTOR_LIMIT_EXCEEDED: NOT_ALLOWED_AMOUNT,
    C.LOAN_QUOTA_EXCEEDED: NOT_ALLOWED_AMOUNT,
    C.LOAN_EXPOSURE_EXCEEDED: NOT_ALLOWED_AMOUNT,
    C.DEPOSIT_BELOW_MINIMUM: NOT_ALLOWED_AMOUNT,
    C.DEPOSIT_AMOUNT_EXCEEDS_PRINCIPAL: NOT_ALLOWED_AMOUNT,
    C.LOAN_AMOUNT_OUT_OF_RANGE: NOT_ALLOWED_AMOUNT,
    C.LOAN_REPAYMENT_EXCEEDS_OWED: NOT_ALLOWED_AMOUNT,
    C.LOAN_REPAYMENT_TOO_SMALL: NOT_ALLOWED_AMOUNT,
    # Something named that is not there (a return's original).
    C.TRANSFER_NOT_FOUND: PAYMENT_NOT_RECEIVED,
    C.RISK_DECISION_NOT_FOUND: PAYMENT_NOT_RECEIVED,
    C.APPROVAL_NOT_FOUND: PAYMENT_NOT_RECEIVED,
    C.LOAN_APPLICATION_NOT_FOUND: PAYMENT_NOT_RECEIVED,
    # A reference used before with other fields.
    C.IDEMPOTENCY_KEY_REUSED: DUPLICATION,
    C.CUSTOMER_EXISTS: DUPLICATION,
    C.APPROVAL_DUPLICATE: DUPLICATION,
    # A business rule on a field: the detail names it.
    C.INVALID_FIELD: NARRATIVE,
    C.PARAMETER_INVALID: NARRATIVE,
    C.INVALID_RESIDENT_ID: NARRATIVE,
    # Nothing a partner's credit or return reaches; mapped so the table is total.
    **{
        code: NOT_SPECIFIED_AGENT
        for code in (
            C.BOUND_CARD_NOT_SAME_NAME,
            C.BOUND_CARD_OTHER_CUSTOMER,
            C.BOUND_CARD_NOT_FOUND,
            C.ACCOUNT_CREATE_REFUSED,
            C.ACCOUNT_UPDATE_REFUSED,
            C.APPROVAL_SELF,
            C.APPROVAL_NOT_PENDING,
            C.APPROVAL_STALE,
            C.DEPOSIT_TERM_UNKNOWN,
            C.DEPOSIT_PARTIAL_ALREADY_TAKEN,
            C.DEPOSIT_MATURED,
            C.DEPOSIT_CLOSED,
            C.LOAN_PRODUCT_UNKNOWN,
            C.LOAN_TERM_OUT_OF_RANGE,
            C.LOAN_METHOD_NOT_OFFERED,
            C.LOAN_RATE_INVALID,
            C.LOAN_APPLICATION_STATE,
            C.LOAN_ALREADY_DISBURSED,
            C.LOAN_CLOSED,
            C.LOAN_PREPAYMENT_NOT_ALLOWED,
            C.ACCOUNT_NOT_EMPTY,
            # Real-name verification (core/services/verification.py): a customer's steps,
            # card bindings and SMS codes, never on a partner's credit or return.
            *VERIFICATION_CODES,
        )
    },
    # A verification provider that did not answer (or not readably) says "not now", as
    # the engine's load does: PDNG, never a rejection (none reaches a credit today).
    C.PROVIDER_UNAVAILABLE: RETRY,
    C.PROVIDER_ANSWER_INVALID: RETRY,
}
# TRANSFER_REFUSED and TRANSFER_OF_ANOTHER_CHANNEL carry a ledger code (below): another
# channel's transfer is answered exactly as one that does not exist.
_LEDGER_CARRIERS: Final = frozenset({C.TRANSFER_REFUSED, C.TRANSFER_OF_ANOTHER_CHANNEL})

_BY_RESULT: dict[CreateTransferResult, str | None] = {
    # Accounts.
    R.DEBIT_ACCOUNT_NOT_FOUND: INCORRECT_ACCOUNT_NUMBER,
    R.CREDIT_ACCOUNT_NOT_FOUND: INCORRECT_ACCOUNT_NUMBER,
    R.DEBIT_ACCOUNT_CLOSED: CLOSED_ACCOUNT_NUMBER,
    R.CREDIT_ACCOUNT_CLOSED: CLOSED_ACCOUNT_NUMBER,
    R.DEBIT_ACCOUNT_FROZEN: BLOCKED_ACCOUNT,
    R.CREDIT_ACCOUNT_FROZEN: BLOCKED_ACCOUNT,
    # Funds (a return is paid from the clearing account).
    R.EXCEEDS_CREDITS: INSUFFICIENT_FUNDS,
    # Caps: the amount is over what the account or the channel may take.
    R.EXCEEDS_TRANSFER_CAP: NOT_ALLOWED_AMOUNT,
    R.EXCEEDS_CHANNEL_TRANSFER_CAP: NOT_ALLOWED_AMOUNT,
    R.EXCEEDS_CHANNEL_DAILY_CAP: NOT_ALLOWED_AMOUNT,
    R.EXCEEDS_CHANNEL_DAILY_INFLOW_CAP: NOT_ALLOWED_AMOUNT,
    R.EXCEEDS_DAILY_OUTFLOW: NOT_ALLOWED_AMOUNT,
    R.EXCEEDS_YEARLY_OUTFLOW: NOT_ALLOWED_AMOUNT,
    R.EXCEEDS_DAILY_INFLOW: NOT_ALLOWED_AMOUNT,
    R.EXCEEDS_YEARLY_INFLOW: NOT_ALLOWED_AMOUNT,
    R.EXCEEDS_BALANCE_CAP: NOT_ALLOWED_AMOUNT,
    R.EXCEEDS_CUSTOMER_DAILY_CAP: NOT_ALLOWED_AMOUNT,
    R.STRONG_AUTH_REQUIRED: NOT_ALLOWED_AMOUNT,
    R.AMOUNT_MUST_BE_POSITIVE: ZERO_AMOUNT,
    **{result: NOT_ALLOWED_AMOUNT for result in R if result.name.startswith("OVERFLOWS_")},
    # What the account's class or kind may not receive at all.
    R.NON_BOUND_INFLOW_DISABLED: TRANSACTION_FORBIDDEN,
    R.NO_BOUND_ACCOUNT: TRANSACTION_FORBIDDEN,
    R.CASH_NOT_ALLOWED: TRANSACTION_FORBIDDEN,
    R.DEBIT_ACCOUNT_CODE_NOT_ALLOWED: TRANSACTION_FORBIDDEN,
    R.CREDIT_ACCOUNT_CODE_NOT_ALLOWED: TRANSACTION_FORBIDDEN,
    R.CODE_NEEDS_BANK_ACCOUNT: TRANSACTION_FORBIDDEN,
    R.CHANNEL_CODE_NOT_ALLOWED: TRANSACTION_FORBIDDEN,
    R.EXCEEDS_DEBITS: TRANSACTION_FORBIDDEN,
    R.ACCOUNTS_MUST_BE_DIFFERENT: TRANSACTION_FORBIDDEN,
    # A return's original.
    R.REVERSAL_TARGET_NOT_FOUND: PAYMENT_NOT_RECEIVED,
    R.PENDING_TRANSFER_NOT_FOUND: PAYMENT_NOT_RECEIVED,
    R.REVERSAL_TARGET_NOT_POSTED: TRANSACTION_FORBIDDEN,
    R.REVERSAL_ACCOUNTS_MISMATCH: TRANSACTION_FORBIDDEN,
    R.EXCEEDS_REVERSIBLE_AMOUNT: WRONG_AMOUNT,
    R.PENDING_TRANSFER_NOT_PENDING: TRANSACTION_FORBIDDEN,
    R.PENDING_TRANSFER_ALREADY_POSTED: TRANSACTION_FORBIDDEN,
    R.PENDING_TRANSFER_ALREADY_VOIDED: TRANSACTION_FORBIDDEN,
    R.PENDING_TRANSFER_EXPIRED: TRANSACTION_FORBIDDEN,
    R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID: TRANSACTION_FORBIDDEN,
    R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID: TRANSACTION_FORBIDDEN,
    R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER: TRANSACTION_FORBIDDEN,
    R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT: WRONG_AMOUNT,
    R.EXCEEDS_PENDING_TRANSFER_AMOUNT: WRONG_AMOUNT,
    # The reference was used before for another credit (or return), or its first message
    # failed and is remembered without its fields.
    **{result: DUPLICATION for result in R if result.name.startswith("EXISTS_WITH_DIFFERENT_")},
    R.ID_ALREADY_FAILED: DUPLICATION,
    # Load shedding: the channel holds its share of the transfer log; send it again later.
    R.CHANNEL_LOG_QUOTA_EXCEEDED: RETRY,
    # The bank's own side, and validation codes the services' postings cannot produce.
    R.EXCEEDS_INTERNAL_FLOOR: NOT_SPECIFIED_AGENT,
    **{result: NOT_SPECIFIED_AGENT for result in CODES_MALFORMED_RECORD},
}

BY_CODE: Final[Mapping[Code, str | None]] = MappingProxyType(_BY_CODE)
BY_RESULT: Final[Mapping[CreateTransferResult, str | None]] = MappingProxyType(_BY_RESULT)
# Every refusal is mapped (the two carriers through BY_RESULT); every result but the two
# successes (OK, EXISTS) is. Checked at import, so a new code cannot ship unmapped.
assert set(BY_CODE) | _LEDGER_CARRIERS == set(Code), set(Code) - set(BY_CODE) - _LEDGER_CARRIERS
assert not set(BY_CODE) & _LEDGER_CARRIERS
assert set(BY_RESULT) == set(R) - {R.OK, R.EXISTS}, set(R) - set(BY_RESULT)


def status_reason(refusal: Refusal) -> tuple[str | None, str | None]:
    """A refusal's ExternalStatusReason1Code and the detail for StsRsnInf/AddtlInf (the
    refusal's own, else the ledger result's name). The code is None when the refusal says
    "not now": the item is PDNG, neither settled nor rejected (`status`)."""
    code = refusal.code
    if code in _LEDGER_CARRIERS:
        try:
            result = R(refusal.ledger_code)
        except ValueError:
            return NOT_SPECIFIED_AGENT, refusal.detail or None
        return _BY_RESULT.get(result, NOT_SPECIFIED_AGENT), (refusal.detail or result.name.lower())
    return _BY_CODE[code], refusal.detail or code.name.lower()


def status(refusal: Refusal) -> tuple[TxStatusCode, str | None]:
    """A refused item's TxSts and reason: ("RJCT", "AC01"), or ("PDNG", None)."""
    reason = status_reason(refusal)[0]
    return ("PDNG", None) if reason is None else ("RJCT", reason)
