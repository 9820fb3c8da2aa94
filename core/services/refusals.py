"""Business refusals: a stable code and its details, never a wire answer.

A service that cannot do what a command asks raises `Refused(Refusal(...))`.
Raising (instead of returning `Result | Refusal`) is chosen for the posting
path: the HTTP single transfer awaits one service coroutine, and a refusal is
the rare case, so the common case pays no `isinstance` on every return and no
wrapper object; the adapter catches the one exception type in one place and
looks its code up in its one table (HTTP: `channels/http/problems.py`). The
code is the contract; `detail` is for humans; `extras` carries typed figures
a client may act on (attempts remaining, a retry delay).

Ledger result codes stay the ledger's (`ledger.types`): a refused transfer is
`Code.TRANSFER_REFUSED` with `ledger_code` set, so every adapter maps the
kernel's dense codes itself and the two tables cannot drift apart. One of
them is load shedding rather than a business refusal:
`CHANNEL_LOG_QUOTA_EXCEEDED` (the channel holds its share of the transfer
log or of the failure ring; the id is not consumed) is answered as "too many
requests" with `LOG_QUOTA_RETRY_AFTER_S`, to that channel only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final

# When a channel over its share of the transfer log may try again: records leave the
# log by the retention and failures the failure ring by theirs (or as the ring turns
# over), so there is no exact moment; a few seconds keep a client from hammering.
LOG_QUOTA_RETRY_AFTER_S = 5


class Code(enum.IntEnum):
    """Why a command was refused. Never renumbered; new codes go at the end."""

    NOT_READY = 1
    OVERLOADED = 2  # the engine queue is full: `retry_after_s`
    UNAVAILABLE = 3  # the engine or its store stopped
    INVALID_FIELD = 4  # a field breaks a business rule: `pointer` names it
    CHANNEL_KIND_NOT_ALLOWED = 5
    CUSTOMER_NOT_FOUND = 6
    CUSTOMER_EXISTS = 7  # (the existing customer's id is not disclosed)
    INVALID_RESIDENT_ID = 8
    KYC_NOT_VERIFIED = 9
    ACCOUNT_CLASS_LIMIT = 10
    ACCOUNT_NOT_FOUND = 11  # no account in the ledger
    CUSTOMER_ACCOUNT_NOT_FOUND = 12  # no customer account (bank-internal ids included)
    DEBIT_ACCOUNT_NOT_CUSTOMER = 13  # a debit that needs a customer's consent
    BOUND_CARD_INVALID = 14
    BOUND_CARD_NOT_SAME_NAME = 15  # any failed binding: which check failed is only logged
    BOUND_CARD_OTHER_CUSTOMER = 16  # no longer raised (answered as BOUND_CARD_NOT_SAME_NAME)
    BOUND_CARD_NOT_FOUND = 17  # no longer raised (answered as BOUND_CARD_NOT_SAME_NAME)
    BENEFICIARY_CARD_INVALID = 18
    PASSWORD_NOT_SET = 19
    PASSWORD_WRONG = 20  # `attempts_remaining`
    PASSWORD_LOCKED = 21  # `retry_after_s`
    TOKEN_INVALID = 22
    TOKEN_NOT_FOR_ACCOUNT = 23
    AUTHENTICATION_REQUIRED = 24
    IDENTITY_MISMATCH = 25
    FACE_TO_FACE_REQUIRED = 26
    NOT_APPLICABLE = 27
    CARD_STILL_BOUND = 28
    TRANSFER_NOT_FOUND = 29
    TRANSFER_REFUSED = 30  # `ledger_code`: a CreateTransferResult; `replayed`
    ACCOUNT_CREATE_REFUSED = 31  # `ledger_code`: a CreateAccountResult
    ACCOUNT_UPDATE_REFUSED = 32  # `ledger_code`: an AccountUpdateResult
    SESSION_INVALID = 33  # the customer session is unknown, expired or another channel's
    READ_AUTHENTICATION_REQUIRED = 34  # a scoped read without a session or token
    READ_NOT_IN_SCOPE = 35  # the session's customer does not hold what is read
    ACTOR_REQUIRED = 36  # the channel acts for a teller and named none: `roles`
    ACTOR_ROLE_NOT_ALLOWED = 37  # a role the channel does not declare: `roles`
    ACTOR_LIMIT_EXCEEDED = 38  # over the acting role's cap: `role`, `cap_minor`
    SUPERVISOR_REQUIRED = 39  # only a supervisor at the counter may do this
    PASSWORD_WEAK = 40  # an easily guessed password: `reason`, `pointer`
    PASSWORD_CHECKS_BUSY = 41  # the password-hashing queue is full: `retry_after_s`
    # A capture, void or reversal of a transfer another channel created: `ledger_code` is the
    # not-found code (PENDING_TRANSFER_NOT_FOUND, REVERSAL_TARGET_NOT_FOUND) and every adapter
    # answers exactly as for a transfer that does not exist, so existence does not leak.
    TRANSFER_OF_ANOTHER_CHANNEL = 42
    INTERNAL_ACCOUNT_NOT_ALLOWED = 43  # a bank-internal account named by a non-internal channel
    IDEMPOTENCY_KEY_REUSED = 44  # the operation key was used for an opening with other fields
    # The store cannot write (a full disk, an I/O error, a read-only database): nothing
    # is taken until it can again; the server recovers by itself. `retry_after_s`.
    STORAGE_UNAVAILABLE = 45
    # A channel acting for one customer settles a hold only with that customer's proof (a
    # session, or a token for one of the hold's accounts); none was sent.
    CUSTOMER_PROOF_REQUIRED = 46
    # Deposits (core/services/deposits.py).
    DEPOSIT_TERM_UNKNOWN = 47  # not a term the catalog lists: `terms`
    DEPOSIT_BELOW_MINIMUM = 48  # a fixed deposit (or what a partial leaves) under `minimum_minor`
    DEPOSIT_AMOUNT_EXCEEDS_PRINCIPAL = 49  # a withdrawal larger than the deposit: `principal_minor`
    DEPOSIT_PARTIAL_ALREADY_TAKEN = 50  # the one partial early withdrawal was taken
    DEPOSIT_MATURED = 51  # on or after its maturity date the day-end pays it: `maturity_date`
    DEPOSIT_CLOSED = 52  # paid out (matured, or fully withdrawn)
    ACCOUNT_NOT_CUSTOMERS = 53  # the account named is not this customer's: `pointer`
    ACCOUNT_CLASS_NOT_ALLOWED = 54  # not a class the operation takes: `classes`, `pointer`
    FIXED_DEPOSIT_NOT_FOUND = 55  # no fixed deposit with this account id
    # Risk control (core/services/risk.py). The rules that fired are never disclosed to the
    # channel (a fraudster would learn them): `decision_id` names the recorded decision.
    RISK_BLOCKED = 56  # the risk stage blocked the posting: `decision_id`
    RISK_CHALLENGE = 57  # step-up required: retry with a second factor: `decision_id`, `factors`
    RISK_HOLD_LOCKED = 58  # a hold the risk stage placed: only the bank releases or returns it
    RISK_DECISION_NOT_FOUND = 59
    # Maker-checker approvals (core/services/approvals.py).
    APPROVAL_REQUIRED = 60  # the operation needs an approved request: `kind`
    OPERATOR_NOT_PERMITTED = 61  # the operator's role may not do this: `role`, `permission`
    APPROVAL_SELF = 62  # the maker cannot approve their own request
    APPROVAL_DUPLICATE = 63  # a pending request for the same object exists: `request_id`
    APPROVAL_NOT_FOUND = 64
    APPROVAL_NOT_PENDING = 65  # already decided, applied or expired: `state`
    PARAMETER_INVALID = 66  # the proposed parameters do not validate: `errors` (line, message)
    APPROVAL_STALE = 67  # the change was made against version `base_version`, now `version`
    # Loans (core/services/loans.py): a quote, a preview, and later an application.
    LOAN_PRODUCT_UNKNOWN = 68  # no loan product with this id is in force: `products`
    LOAN_AMOUNT_OUT_OF_RANGE = 69  # outside the product's amount range: `min_minor`, `max_minor`
    LOAN_TERM_OUT_OF_RANGE = 70  # outside the product's term range: `min_months`, `max_months`
    LOAN_METHOD_NOT_OFFERED = 71  # a repayment method the product does not offer: `methods`
    LOAN_RATE_INVALID = 72  # the LPR plus the spread is below 0 (or above 100%): `rate_ppm`
    # Loan accounts (core/services/loan_accounts.py): applications, disbursement, repayment.
    LOAN_APPLICATION_NOT_FOUND = 73  # no application with this id (or not the caller's to see)
    LOAN_APPLICATION_STATE = 74  # the transition does not start from the application's `state`
    LOAN_QUOTA_EXCEEDED = 75  # over the customer's credit limit: `limit_minor`, `used_minor`
    LOAN_EXPOSURE_EXCEEDED = 76  # over the bank's cap on the product's outstanding loans
    LOAN_ALREADY_DISBURSED = 77  # the application's loan is paid out: `account_id`
    LOAN_NOT_FOUND = 78  # no disbursed loan with this account id
    LOAN_CLOSED = 79  # the loan is repaid in full
    LOAN_REPAYMENT_EXCEEDS_OWED = 80  # more than everything owed today: `owed_minor`
    LOAN_REPAYMENT_TOO_SMALL = 81  # repays no principal beyond the interest due: `minimum_minor`
    LOAN_ACCOUNT_NOT_ALLOWED = 82  # not a Class I/II/III account for the loan: `classes`, `pointer`
    LOAN_PREPAYMENT_NOT_ALLOWED = 83  # the product takes no prepayment (yet): `allowed_from`
    # Real-name verification (core/services/verification.py): the workflow's steps, card
    # bindings and the bank's SMS one-time codes. A failed attempt at a step is no refusal
    # (the step answers its state and the attempts remaining); these are the requests the
    # workflow cannot take.
    # A provider timed out, failed or is not configured: `provider`, `retry_after_s`.
    PROVIDER_UNAVAILABLE = 84
    PROVIDER_ANSWER_INVALID = 85  # the provider's answer did not parse: `provider`
    VERIFICATION_STEP_NOT_REQUIRED = 86  # not in this channel's policy, or already passed: `step`
    VERIFICATION_ATTEMPTS_EXCEEDED = 87  # the step failed for good: `step`
    VERIFICATION_EXPIRED = 88  # the workflow's window passed: `step`
    VERIFICATION_CLOSED = 89  # the status is already verified or rejected: `status`
    IMAGE_TOO_LARGE = 90  # over the image size limit: `limit_bytes`
    IMAGE_TYPE_NOT_ALLOWED = 91  # not a JPEG or PNG by its magic bytes: `allowed`
    BINDING_NOT_FOUND = 92  # no card binding with this id (or not this customer's)
    BINDING_NOT_VERIFIED = 93  # the card has no verified, unused binding: `binding_id` if any
    SMS_CODE_WRONG = 94  # not the code sent: `attempts_remaining`
    SMS_CODE_EXPIRED = 95  # the code's short life passed
    SMS_CODE_USED = 96  # the challenge was already confirmed (a replayed code)
    SMS_CODE_OTHER_OPERATION = 97  # the challenge authorizes another operation or subject
    SMS_CODE_ATTEMPTS_EXCEEDED = 98  # too many wrong codes (or challenges): the challenge is dead
    SMS_CODE_TOO_FREQUENT = 99  # a code was sent moments ago: `retry_after_s`
    SMS_CHALLENGE_NOT_FOUND = 100  # no challenge with this id (or not this customer's)
    ACCOUNT_NOT_EMPTY = 101  # the bank closes only an account holding nothing (close_account)


# The refusals of real-name verification's own operations (a customer's steps, card
# bindings, SMS codes: core/services/verification.py), which no money message meets; the
# ISO 8583 and ISO 20022 tables map them as one group.
VERIFICATION_CODES: Final = (
    Code.VERIFICATION_STEP_NOT_REQUIRED,
    Code.VERIFICATION_ATTEMPTS_EXCEEDED,
    Code.VERIFICATION_EXPIRED,
    Code.VERIFICATION_CLOSED,
    Code.IMAGE_TOO_LARGE,
    Code.IMAGE_TYPE_NOT_ALLOWED,
    Code.BINDING_NOT_FOUND,
    Code.BINDING_NOT_VERIFIED,
    Code.SMS_CODE_WRONG,
    Code.SMS_CODE_EXPIRED,
    Code.SMS_CODE_USED,
    Code.SMS_CODE_OTHER_OPERATION,
    Code.SMS_CODE_ATTEMPTS_EXCEEDED,
    Code.SMS_CODE_TOO_FREQUENT,
    Code.SMS_CHALLENGE_NOT_FOUND,
)


@dataclass(slots=True)
class Refusal:
    code: Code
    detail: str = ""
    ledger_code: int = 0
    replayed: bool = False  # the answer repeats the first request's refusal
    extras: dict[str, Any] = field(default_factory=dict)


class Refused(Exception):
    """A command was refused; `refusal` says why (a value, not an error)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.code.name.lower()}: {refusal.detail}")
        self.refusal = refusal


def refused(code: Code, detail: str = "", **extras: Any) -> Refused:
    """`Refused(Refusal(code, detail, extras=extras))`, for `raise refused(...)`."""
    return Refused(Refusal(code, detail, extras=extras))


def transfer_refused(ledger_code: int, detail: str = "", *, replayed: bool = False) -> Refused:
    """A transfer the ledger (or a service check mirroring it) refused with `ledger_code`."""
    return Refused(Refusal(Code.TRANSFER_REFUSED, detail, int(ledger_code), replayed))


def kind_refused(caller: Any, kinds: tuple[str, ...], what: str) -> Refused:
    """`what` is only offered at channels of `kinds`; `caller` (a `Caller`) is not one."""
    return refused(
        Code.CHANNEL_KIND_NOT_ALLOWED,
        f"channel {caller.name} is of kind {caller.kind}",
        what=what,
        kinds=kinds,
    )
