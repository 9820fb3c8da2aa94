"""Typed commands: who is calling, the operation key, the fields; nothing of the wire.

Every adapter (HTTP/JSON today; ISO 8583 and ISO 20022 next) parses its
request into one of these and hands it to a service. Account ids are ints,
money is integer minor units, the Idempotency-Key (`key`) names the
operation so a retry meets the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.services.operators import OperatorCaller


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated channel a command comes from."""

    name: str
    kind: str  # "app", "counter", "atm", "open_api", ...
    ledger_id: int  # the channel's id in the ledger (a transfer's `channel`)
    # Who acts at the channel, from the signed request: at the counter the teller's id and
    # role ("teller" or "supervisor"); empty where the channel does not name one.
    actor_id: str = ""
    actor_role: str = ""


@dataclass(slots=True)
class Consent:
    """How the account holder consents to a debit: a live token, else the password; and
    the second factor the channel verified ("ukey", "sms", "face"...; "" if none), which
    counts (strong authentication, above 50,000 CNY a day) only with that consent."""

    token: str = ""
    password: str | None = None
    second_factor: str = ""


@dataclass(frozen=True, slots=True)
class Proof:
    """What a read shows for the customer behind it, as the request carried it: a customer
    session (`Auth.open_session`) or a transaction token (`Auth.issue_token`). Checked by
    `Auth.readable_*` against the channel kind's read scope (`core.services.policy`)."""

    session: str = ""
    token: str = ""


NO_PROOF = Proof()


@dataclass(slots=True)
class RegisterCustomer:
    caller: Caller
    name: str
    id_number: str
    mobile: str


@dataclass(slots=True)
class OpenAccount:
    caller: Caller
    customer_id: str
    account_class: int  # 1, 2, 3
    bound_card: dict[str, Any] | None  # card_number, card_type, holder_*, reserved_mobile
    password: str
    key: str = ""  # the Idempotency-Key, if sent: a retry opens no second account


@dataclass(slots=True)
class ChangeAccount:
    """Face to face, non-bound inflow, close: an account change by its holder or a teller."""

    caller: Caller
    account_id: int
    consent: Consent | None = None
    id_number: str = ""  # face to face: the ID document presented
    enabled: bool = False  # non-bound inflow on or off


@dataclass(slots=True)
class SetPassword:
    caller: Caller
    account_id: int
    new_password: str
    old_password: str = ""  # the holder's change
    id_number: str = ""  # a counter's reset: the ID document presented


@dataclass(slots=True)
class IssueToken:
    caller: Caller
    account_id: int
    password: str


@dataclass(slots=True)
class OpenSession:
    """A customer proves who they are at a customer-facing channel: the transaction
    password of one of their open accounts."""

    caller: Caller
    account_id: int
    password: str


@dataclass(slots=True)
class VerifyAccount:
    """A partner bank asks whether `account_id` is an open account held by `name`."""

    caller: Caller
    account_id: int
    name: str


@dataclass(frozen=True, slots=True)
class RiskContext:
    """What the channel saw of the customer's device for this request, signed with it (the
    Anti-Telecom Fraud Law art. 18 lets the bank collect it for risk control): the device
    id, the client's IP address and its location ("lat,lon" or a region code); "" if the
    channel has none (a counter, an ATM names its terminal as the device)."""

    device_id: str = ""
    ip: str = ""
    location: str = ""


NO_CONTEXT = RiskContext()


@dataclass(slots=True)
class Posting:
    """One money movement; the one shape every single posting takes (`Payments.post`).

    `authorize` is the account whose holder must consent (0: none, e.g. a cash
    deposit or an incoming clearing transfer); `consent` says how.
    """

    caller: Caller
    key: str
    operation: str
    debit: int
    credit: int
    amount_minor: int
    code: int
    flags: int = 0
    pending_id: int = 0
    timeout_s: int = 0
    authorize: int = 0
    consent: Consent | None = None
    # A keyed fingerprint of the instruction's fields the record has no column for (an
    # external transfer's beneficiary, an incoming transfer's payer): `TransferIds.fingerprint`.
    user_data: int = 0
    context: RiskContext = NO_CONTEXT  # for the risk stage (core/services/risk.py)
    counterparty: str = ""  # an external beneficiary's card or account number (risk lists)


@dataclass(slots=True)
class PostingBatch:
    """Up to a channel's batch size of packed 128-byte transfers, ids already derived."""

    caller: Caller
    key: str
    records: bytes
    count: int


@dataclass(slots=True)
class Movement:
    """A movement named by the account and the amount; the service picks the counterpart
    (topup, withdraw, cash, external/incoming, capture, void, reversal)."""

    caller: Caller
    key: str
    account_id: int  # the customer account (or the hold/original transfer id)
    amount_minor: int | None
    consent: Consent | None = None
    counterpart: int = 0  # payment: the merchant
    timeout_s: int = 0  # payment: the hold's lifetime (0: the default)
    beneficiary: dict[str, Any] | None = None  # external: bank_code, account_number, name
    reference: str = ""  # incoming: the clearing reference (the operation key)
    payer: dict[str, Any] | None = None  # incoming: bank_code, account_number, name
    proof: Proof = NO_PROOF  # capture, void at a one-customer channel: whose hold it is
    context: RiskContext = NO_CONTEXT  # device, IP, location for the risk stage


# --- clearing: credits and returns from other banks (ISO 20022) -----------------------


@dataclass(frozen=True, slots=True)
class IncomingCredit:
    """One credit from another bank to `account_id` (a customer account of ours).
    `reference` is the clearing reference, unique per sending bank: the operation key the
    transfer id is derived from (the same reference twice posts once, whatever the
    message carrying it); `payer` (bank_code, account_number, name) is fingerprinted
    into the record, so a reference reused with another payer is a conflict."""

    account_id: int
    amount_minor: int
    reference: str
    payer: dict[str, Any] | None = None


@dataclass(slots=True)
class IncomingCredits:
    """Up to `payments.INCOMING_CREDITS_MAX` credits from another bank, posted in one
    engine admission with one outcome each (`Payments.incoming_credits`)."""

    caller: Caller
    credits: list[IncomingCredit]


@dataclass(slots=True)
class ReturnPayment:
    """A partner bank returns (part of) an external transfer of ours (`original_id`):
    the money goes back to the account it left. `return_id` is the partner's id of the
    return (its retry meets the first); `reason` its return reason code (AC04, MD07...)."""

    caller: Caller
    return_id: str
    original_id: int
    amount_minor: int
    reason: str = ""


# --- deposits (core/services/deposits.py) ----------------------------------------------


@dataclass(slots=True)
class QuoteFixedDeposit:
    """What a fixed deposit of `amount_minor` for `term` ("3m" ... "5y") opened today would
    pay at maturity: no side effects, nothing recorded."""

    caller: Caller
    amount_minor: int
    term: str


@dataclass(slots=True)
class OpenFixedDeposit:
    """Open a fixed deposit for `customer_id` from their Class I or II account `source`:
    `amount_minor` for `term`, at the rate of the opening day. At maturity it pays back to
    `payout_account_id` (0: the source), or renews for the same term when `rollover`.
    `key` is the operation key: a retry answers the first opening, the same key with other
    fields is refused."""

    caller: Caller
    key: str
    customer_id: str
    source_account_id: int
    amount_minor: int
    term: str
    consent: Consent
    payout_account_id: int = 0
    rollover: bool = False


@dataclass(slots=True)
class WithdrawFixedDeposit:
    """An early withdrawal from fixed deposit `account_id`: all of it (`amount_minor` None,
    or the whole principal), or a part of it once. Paid to the deposit's payout account,
    with the demand rate of the day on what is withdrawn; the holder consents with the
    payout account's password or token."""

    caller: Caller
    key: str
    account_id: int
    amount_minor: int | None
    consent: Consent


@dataclass(slots=True)
class CorrectInterest:
    """A backdated correction of an account's demand interest (the bank's internal channel
    only): the account's end-of-day balance was wrong by `balance_delta_minor` (signed) on
    the days `start_day` .. `end_day - 1` of one settled period. The interest on that
    difference, at the demand rate of each day, is posted as an adjustment: > 0 paid from
    the interest-expense account, < 0 taken back by a reversal of part of the period's
    settlement. Never a rewrite; idempotent by `key`."""

    caller: Caller
    key: str
    account_id: int
    balance_delta_minor: int
    start_day: int
    end_day: int
    reason: str = ""


# --- loans (core/services/loans.py) ----------------------------------------------------


@dataclass(slots=True)
class QuoteLoan:
    """A trial calculation: the full schedule of a loan of `amount_minor` over
    `term_months` by `method` ("equal_instalment", "equal_principal") under the version of
    product `product_id` in force today, disbursed today. No side effects, nothing
    recorded. `repayment_day` (1..28) is the customer's choice of collection day where the
    product collects on the disbursement day's date; None: the product's day."""

    caller: Caller
    product_id: str
    amount_minor: int
    term_months: int
    method: str
    repayment_day: int | None = None


@dataclass(slots=True)
class PreviewLoanProducts:
    """A product manager's preview of a DRAFT loan catalog (the full file text, as it
    would be requested for approval): the trial calculation of `product_id`'s newest
    version in the draft, as of the day it takes effect. Nothing recorded."""

    operator: OperatorCaller  # the product manager (needs `request:loans`)
    text: str
    product_id: str
    amount_minor: int
    term_months: int
    method: str
    repayment_day: int | None = None


# --- loan accounts (core/services/loan_accounts.py) ------------------------------------


@dataclass(slots=True)
class ApplyForLoan:
    """Apply for a loan of `amount_minor` over `term_months` by `method` under the version of
    product `product_id` in force today, paid out to the customer's Class I/II/III account
    `disbursement_account_id` and collected from `repayment_account_id` (0: the same
    account). `repayment_day` (1..28) is the customer's collection day where the product
    collects on the disbursement day's date; None: the product's. `key` is the operation
    key: a retry answers the first application, the same key with other fields is
    refused. `proof`: the customer's session at a one-customer channel (wechat, app);
    `context`: the device the channel saw, for the risk screen."""

    caller: Caller
    key: str
    customer_id: str
    product_id: str
    amount_minor: int
    term_months: int
    method: str
    repayment_day: int | None
    disbursement_account_id: int
    repayment_account_id: int = 0
    purpose: str = ""
    proof: Proof = NO_PROOF
    context: RiskContext = NO_CONTEXT


@dataclass(slots=True)
class DecideLoanApplication:
    """An operator's decision on an application the risk screen referred (a role holding
    `decide:loans`: loan officer, administrator): approve it or decline it, with a reason
    (required to decline)."""

    operator: OperatorCaller
    application_id: str
    approve: bool
    reason: str
    key: str


@dataclass(slots=True)
class SignLoanApplication:
    """The customer signs an approved application: the contract as shown by the
    application, consented to like a debit of the repayment account (its transaction
    password or a token, and a second factor when the channel verified one)."""

    caller: Caller
    application_id: str
    key: str
    consent: Consent


@dataclass(slots=True)
class DisburseLoan:
    """Pay out a signed application: the loan's own account is opened and the principal
    (less the upfront fee) credited to the disbursement account, in one entry with the
    loan's first row. `proof` as for `ApplyForLoan`."""

    caller: Caller
    application_id: str
    key: str
    proof: Proof = NO_PROOF


@dataclass(slots=True)
class RepayLoan:
    """An early repayment of loan `account_id` from its repayment account: `amount_minor`
    (arrears first, the rest prepays principal), or None for everything owed today. The
    holder consents like a debit of the repayment account."""

    caller: Caller
    account_id: int
    amount_minor: int | None
    key: str
    consent: Consent


# --- real-name verification (core/services/verification.py) ---------------------------


@dataclass(slots=True)
class SubmitIdDocument:
    """The customer's ID card for the OCR step: the image itself (`media_type` image/png or
    image/jpeg), or `ocr_reference`, the id of an OCR result the channel's app already had
    the provider produce."""

    caller: Caller
    customer_id: str
    image: bytes = b""
    media_type: str = ""
    ocr_reference: str = ""
    proof: Proof = NO_PROOF  # a session of the customer, at a channel that did not register them


@dataclass(slots=True)
class SubmitLiveness:
    """The liveness step: `token`, what the app's liveness SDK returned for the face."""

    caller: Caller
    customer_id: str
    token: str
    proof: Proof = NO_PROOF  # a session of the customer, at a channel that did not register them


@dataclass(slots=True)
class ConfirmInPerson:
    """A teller (the actor the counter's request names) saw the customer and their ID."""

    caller: Caller
    customer_id: str


@dataclass(slots=True)
class StartCardBinding:
    """Bind a card to the customer for a Class II/III opening: `card` holds the
    `BOUND_CARD_FIELDS` of core/services/accounts.py (card number, type, holder name and
    ID number, the reserved mobile)."""

    caller: Caller
    customer_id: str
    card: dict[str, Any]
    proof: Proof = NO_PROOF  # a session of the customer, at a channel that did not register them


@dataclass(slots=True)
class RequestSmsCode:
    """Send (or send again) a one-time code authorizing `operation` ("bind_card") on
    `subject` (the binding id) to the customer's registered mobile."""

    caller: Caller
    customer_id: str
    operation: str
    subject: str
    proof: Proof = NO_PROOF  # a session of the customer, at a channel that did not register them


@dataclass(slots=True)
class ConfirmSmsCode:
    """The code the customer received for challenge `challenge_id`; `operation` and
    `subject` name what the caller means it to authorize (checked against the challenge)."""

    caller: Caller
    customer_id: str
    challenge_id: str
    operation: str
    subject: str
    code: str
    proof: Proof = NO_PROOF  # a session of the customer, at a channel that did not register them
