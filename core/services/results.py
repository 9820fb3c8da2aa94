"""Typed results: what a service answers, for an adapter to render on its wire.

The read models (`CustomerRead`, `AccountRead`, `TransferRead`) are slotted
dataclasses whose field names and order are the HTTP JSON answer's: orjson
renders a dataclass natively (in C, field order kept), so they cost no more
than the dicts they replace. Their nested parts (quota buckets, the bound
card, a customer's account list with its `class` key) stay plain data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Posted:
    """One transfer durable in the ledger (or met again by its id: `replayed`)."""

    transfer_id_packed: bytes  # 16 little-endian bytes
    operation: str
    debit: int
    credit: int
    amount_minor: int
    code: int
    flags: int
    pending_id: int
    timeout_s: int
    channel: str
    timestamp_ns: int
    replayed: bool
    # The risk stage's outcome when it held the posting instead of moving the money:
    # "delayed" (released by the bank at `release_at_ns`) or "review" (a risk officer
    # releases or returns it); "" when the money moved. `decision_id`: the recorded
    # decision, when one was recorded (a rule fired).
    risk_hold: str = ""
    release_at_ns: int = 0
    decision_id: str = ""


@dataclass(slots=True)
class AccountOpened:
    """An account open in the ledger (or the one a retry of its Idempotency-Key met)."""

    account_id: int
    replayed: bool


@dataclass(slots=True)
class BatchPosted:
    records: bytes  # the posted records, ids derived (for the per-item ids)
    count: int
    codes: bytes  # one CreateTransferResult per record
    timestamps: Any  # a sequence of count u64 timestamps
    histogram: dict[int, int]  # result code -> how many


@dataclass(slots=True)
class TokenIssued:
    token: str
    account_id: int
    ttl_s: int
    expires_ns: int


@dataclass(slots=True)
class SessionOpened:
    """A customer session: the bearer secret, handed out once (the state keeps its digest)."""

    session: str
    customer_id: str
    ttl_s: int
    expires_ns: int


@dataclass(slots=True)
class AccountVerified:
    """What a partner bank learns of an account: whether it exists (an open customer
    account) and whether the name it gave is the holder's; nothing else."""

    exists: bool
    name_matches: bool


@dataclass(slots=True)
class CustomerRead:
    """A customer, identity numbers masked, with their accounts."""

    customer_id: str
    name: str
    id_number_masked: str
    mobile_masked: str
    kyc: dict[str, Any]
    accounts: list[dict[str, Any]]  # account_id, class, closed
    created_at: str  # RFC 3339


@dataclass(slots=True)
class AccountRead:
    """An account as one channel sees it: balances, its quotas, its owner and card."""

    account_id: str
    kind: str
    status: str
    currency: str
    balance_minor: int
    pending_debits_minor: int
    pending_credits_minor: int
    available_minor: int | None  # None: the account may go below zero
    face_to_face_verified: bool
    non_bound_inflow_enabled: bool
    business_day: str
    quota: dict[str, Any] | None = None  # the PBoC buckets (Class II/III)
    channel_quota: dict[str, Any] | None = None  # this channel's daily cap
    customer_id: str | None = None
    bound_card: dict[str, Any] | None = None


@dataclass(slots=True)
class TransferRead:
    """One logged transfer."""

    transfer_id: str  # 32 hex digits
    kind: str  # single, hold, capture, void, reversal
    state: str  # posted, failed, pending, captured, voided, expired
    result: dict[str, Any]  # code, name
    debit_account_id: str
    credit_account_id: str
    amount_minor: int
    amount_posted_minor: int
    amount_reversed_minor: int
    pending_id: str | None
    code: str
    channel_id: int
    timeout_s: int
    timestamp_ns: int
    business_day: str
    user_data: int


@dataclass(slots=True)
class HistoryPage:
    account_id: int
    items: list[TransferRead]
    next_cursor: int | None


# --- clearing (ISO 20022): credits from other banks, statements ------------------------


@dataclass(slots=True)
class CreditsPosted:
    """The outcome of each credit of an `IncomingCredits`, in the command's order: a
    `Posted` (durable; `replayed` when its reference was met again with the same fields;
    `risk_hold` when the risk stage holds it) or the `Refusal` of that credit alone."""

    outcomes: list[Any]  # Posted | Refusal (core.services.refusals), one per credit
    posted: int  # how many are Posted (held ones included)


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One posting that moved an account's booked balance (a hold moves none until captured)."""

    transfer_id: str  # 32 hex digits
    amount_minor: int  # > 0
    credit: bool  # money in (else out)
    timestamp_ns: int  # when the ledger booked it
    business_day: str  # YYYY-MM-DD: the bank's business day it was booked on
    code: str  # the transfer code's name (external_transfer_in, transfer...)


@dataclass(slots=True)
class AccountStatement:
    """An account's booked postings of the business days `from_day` .. `to_day`
    (inclusive), oldest first, with the booked balance before and after them:
    `opening_minor + sum(signed entries) == closing_minor`."""

    account_id: int
    currency: str
    from_day: str  # YYYY-MM-DD
    to_day: str
    opening_minor: int
    closing_minor: int
    entries: list[StatementLine]


# --- deposits (core/services/deposits.py) ----------------------------------------------
# Rates are given twice: exactly as the catalog writes them ("0.95%") and as the integer
# the arithmetic uses (`rate_ppm`: the annual rate as a fraction x 1e6, 0.95% -> 9500).


@dataclass(slots=True)
class InterestFigure:
    """What a deposit pays on one day: the date, the days held, the rate, the interest and
    the total (principal + interest), integer fen."""

    date: str
    days_held: int
    rate: str
    rate_ppm: int
    interest_minor: int
    total_minor: int


@dataclass(slots=True)
class FixedDepositQuote:
    """What a fixed deposit pays if withdrawn today (demand rate, days held) and if held to
    maturity (its term rate); `account_id` None for a deposit not opened yet."""

    account_id: str | None
    principal_minor: int
    term: str
    rate: str
    rate_ppm: int
    day_count: str
    open_date: str
    maturity_date: str
    today: InterestFigure
    at_maturity: InterestFigure
    partial_withdrawal_available: bool


@dataclass(slots=True)
class FixedDepositRead:
    """A fixed deposit: its account, terms and state (open, closed)."""

    account_id: str
    customer_id: str | None
    status: str  # "open", "closed"
    principal_minor: int  # what it holds now (after a partial withdrawal: the rest)
    balance_minor: int  # the account's ledger balance (the principal while open)
    term: str
    rate: str
    rate_ppm: int
    day_count: str
    open_date: str
    maturity_date: str
    rollover: bool
    partial_withdrawn: bool
    payout_account_id: str
    interest_at_maturity_minor: int
    business_day: str


@dataclass(slots=True)
class FixedDepositOpened:
    """A fixed deposit open in the ledger (or the one a retry of its operation key met)."""

    deposit: FixedDepositRead
    transfer_id: str  # the posting that moved the money (32 hex digits)
    replayed: bool


@dataclass(slots=True)
class FixedDepositWithdrawn:
    """An early withdrawal done (or met again by its operation key: `replayed`)."""

    account_id: str
    kind: str  # "full", "partial"
    principal_minor: int  # the principal withdrawn
    interest_minor: int  # at the demand rate for the days held
    total_minor: int
    payout_account_id: str
    transfer_ids: list[str]  # the principal's, then the interest's (when any)
    deposit: FixedDepositRead
    replayed: bool


@dataclass(slots=True)
class InterestPosting:
    """One settled interest posting (or a correction) of an account, from its history."""

    transfer_id: str
    kind: str  # "settlement", "correction", "reversal", "early_withdrawal"
    amount_minor: int  # negative for a reversal taking interest back
    period: int | None
    timestamp_ns: int
    business_day: str


@dataclass(slots=True)
class InterestHistory:
    """An account's interest: the settled postings still in the transfer log (newest first)
    and what has accrued since the last settlement, to date."""

    account_id: str
    rate: str | None  # the demand rate the account earns today (None: it earns none)
    rate_ppm: int
    items: list[InterestPosting]
    accrued_minor: int  # accrued since the last settlement, rounded half up (not yet paid)
    accrued_through: str | None  # the last day accrued (None: never)
    last_settled_period: int | None
    interest_paid_total_minor: int


# --- loans (core/services/loans.py) -----------------------------------------------------
# Rates as for deposits: the text ("3.45%") and the integer (`*_ppm`, ppm of 1 a year).


@dataclass(slots=True)
class LoanInstalment:
    """One instalment of a quoted schedule: when it falls due and what it is made of."""

    number: int  # 1-based
    due_date: str  # ISO 8601 date
    principal_minor: int
    interest_minor: int
    fee_minor: int  # the product's monthly fee (0 without one)
    total_minor: int  # principal + interest + fee
    remaining_minor: int  # principal still owed after this instalment


@dataclass(slots=True)
class LoanQuote:
    """A trial calculation (PBoC: the annualised rate including every fee is shown):
    the product version it was priced with, the rate, the full schedule and its sums."""

    product_id: str
    product_version: int
    method: str  # "equal_instalment" (等额本息), "equal_principal" (等额本金)
    amount_minor: int
    term_months: int
    rate: str  # the contract rate a year, exact ("3.45%")
    rate_ppm: int
    lpr_ppm: int | None  # the LPR it floats on (None: a fixed rate)
    spread_bp: int  # over the LPR, in basis points (0 for a fixed rate)
    start_date: str  # the disbursement day the schedule starts from
    instalments: list[LoanInstalment]
    total_interest_minor: int
    total_fees_minor: int  # upfront + every monthly fee
    upfront_fee_minor: int  # deducted at disbursement
    total_repaid_minor: int  # the sum of the instalments
    received_minor: int  # what the customer receives: amount - upfront fee
    apr: str  # the annualised rate including all fees (年化利率), two decimals ("3.45%")
    apr_ppm: int


# --- loan accounts (core/services/loan_accounts.py) ------------------------------------
# Each answer has `to_json()`: the JSON-ready dict of its fields (nested results
# included), the order kept, for an adapter to render as it is.


class _Json:
    """`to_json()` for a result dataclass."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        """The fields as a dict, nested results and lists included (JSON-ready)."""
        fields: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        return fields


@dataclass(slots=True)
class LoanTransition(_Json):
    """One step of an application's life: the state it reached, when, by whom."""

    state: str  # submitted, approved, declined, referred, signed, disbursed
    at: str  # RFC 3339
    by: str  # the channel, "op:<operator>" or "system" (the quota and risk screen)
    role: str  # the channel's kind, the operator's role, or "system"
    reason: str  # why (a decision's reason; "risk" for a screen's decline or referral)


@dataclass(slots=True)
class LoanApplicationView(_Json):
    """A loan application: what was asked, the contract it prices to (the product version
    and rate of the application day), the quota figures, the risk screen's outcome, its
    state and every transition. `risk_rules` and `exposure_minor` only for an operator
    (the rules that fired are never told to a channel)."""

    application_id: str
    state: str
    customer_id: str
    product_id: str
    product_version: int
    method: str
    amount_minor: int
    term_months: int
    repayment_day: int
    disbursement_account_id: str
    repayment_account_id: str
    purpose: str
    rate: str
    rate_ppm: int
    apr: str  # the annualised rate including every fee, as quoted
    apr_ppm: int
    upfront_fee_minor: int
    received_minor: int  # what the disbursement pays out: amount - upfront fee
    monthly_fee_minor: int
    total_interest_minor: int  # of the schedule quoted on the application day
    total_repaid_minor: int
    credit_limit_minor: int
    credit_used_minor: int  # the customer's other loans and applications when applied
    risk_outcome: str  # allow, challenge, delay, review, block
    risk_version: int  # the rule set's version that screened it
    risk_rules: list[str] | None
    exposure_minor: int | None  # the product's exposure with this loan (operators)
    reason: str  # why it was declined (or the operator's decision)
    loan_account_id: str | None  # once the loan's account is opened (at disbursement)
    submitted_at: str
    transitions: list[LoanTransition]
    replayed: bool = False


@dataclass(slots=True)
class LoanView(_Json):
    """A loan: its contract, and its state from its row in the ledger (what is scheduled,
    in arrears, the penalty) with the next instalment of the current segment."""

    account_id: str
    customer_id: str
    application_id: str
    status: str  # "open", "overdue", "closed"
    product_id: str
    product_version: int
    method: str
    principal_minor: int  # lent
    rate: str
    rate_ppm: int
    term_months: int
    start_date: str  # the disbursement day
    repayment_day: int
    repayment_account_id: str
    disbursement_account_id: str
    upfront_fee_minor: int
    monthly_fee_minor: int
    grace_days: int
    penalty_uplift_permille: int
    allocation: list[str]
    prepayment_mode: str
    prepayment_excess: str
    outstanding_minor: int  # principal not yet repaid
    scheduled_minor: int  # of it, not yet fallen due
    arrears_principal_minor: int
    arrears_interest_minor: int  # interest and monthly fees fallen due, unpaid
    penalty_minor: int
    owed_minor: int  # outstanding + arrears interest + penalty (without the accrued interest)
    overdue_since: str | None  # the due date of the oldest unpaid instalment
    segment: int  # 0, +1 per early repayment
    instalments_fallen_due: int  # of the current segment
    next_instalment: LoanInstalment | None
    balance_minor: int  # the loan account's ledger balance: always 0
    disbursement_transfer_id: str
    business_day: str
    replayed: bool = False


@dataclass(slots=True)
class LoanScheduleItem(_Json):
    """One instalment of the current segment and where it stands: "paid", "overdue"
    (fallen due, not fully paid), "due" (the next one), "future", or "prepaid" (a closed
    loan's instalment that never fell due)."""

    number: int
    due_date: str
    principal_minor: int
    interest_minor: int
    fee_minor: int
    total_minor: int
    remaining_minor: int
    status: str


@dataclass(slots=True)
class LoanScheduleView(_Json):
    """The instalments of a loan's current segment (after an early repayment: the
    remainder, numbered on from the original schedule)."""

    account_id: str
    segment: int
    method: str
    principal_minor: int  # the segment's principal
    rate: str
    rate_ppm: int
    start_date: str  # the disbursement day, or the early repayment's
    instalments: list[LoanScheduleItem]
    business_day: str


@dataclass(slots=True)
class LoanRepaid(_Json):
    """An early repayment done (or met again by its operation key: `replayed`): what was
    taken from the repayment account and how it was applied."""

    account_id: str
    kind: str  # "arrears" (arrears only), "partial" (principal prepaid), "full" (closed)
    transfer_id: str
    total_minor: int  # taken from the repayment account
    penalty_minor: int
    interest_minor: int  # interest in arrears paid
    accrued_interest_minor: int  # interest since the last due day, paid with a prepayment
    principal_minor: int  # arrears principal and prepaid principal
    prepaid_principal_minor: int
    fee_minor: int  # the product's prepayment fee
    owed_before_minor: int  # everything owed that day, before the repayment
    loan: LoanView
    replayed: bool = False


@dataclass(slots=True)
class LoanList(_Json):
    """A customer's loans, newest first."""

    customer_id: str
    loans: list[LoanView]


# --- real-name verification (core/services/verification.py) ---------------------------


@dataclass(slots=True)
class VerificationRead(_Json):
    """A customer's verification: the status, the steps their channel's policy requires and
    where each stands, and the provider calls made for it (no images, no codes).

    A step: {"step", "state" ("pending"|"passed"|"failed"|"expired"), "attempts",
    "attempts_max", "expires_at", "reasons", "updated_at", "by"}; a history entry: {"at",
    "provider", "request_id", "outcome", "attempts", "elapsed_ms"}."""

    customer_id: str
    status: str  # "pending" | "verified" | "rejected"
    required: list[str]
    steps: list[dict[str, Any]]
    reasons: list[str]
    history: list[dict[str, Any]]


@dataclass(slots=True)
class CardBindingRead(_Json):
    """A card binding and its steps (the step dicts as `VerificationRead`'s);
    `sms_challenge` is the live code challenge, {"challenge_id", "expires_at"}, if any."""

    binding_id: str
    customer_id: str
    card_masked: str
    card_type: str
    status: str  # "pending" | "verified" | "rejected" | "expired" | "used"
    required: list[str]
    steps: list[dict[str, Any]]
    sms_challenge: dict[str, Any] | None


@dataclass(slots=True)
class SmsChallengeRead(_Json):
    """An SMS one-time code challenge (never the code)."""

    challenge_id: str
    operation: str
    subject: str
    status: str  # "sent" | "confirmed" | "expired" | "exhausted" | "voided"
    expires_at: str  # RFC 3339
    attempts_remaining: int
