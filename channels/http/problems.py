"""RFC 9457 problem details: one stable `type` URI per failure, ledger codes included.

Every refusal the HTTP face gives is a `Problem`: raised anywhere in a
handler, turned into `application/problem+json` by the app. Ledger result
codes map to a status and a type derived from the code's name
(`exceeds_daily_outflow` -> `https://tally.example/problems/exceeds-daily-outflow`),
so a client can switch on the type and never parse the `detail` text.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from core.services.refusals import LOG_QUOTA_RETRY_AFTER_S, Code, Refusal
from ledger.types import AccountUpdateResult, CreateAccountResult, CreateTransferResult

PROBLEM_BASE = "https://tally.example/problems/"
PROBLEM_CONTENT_TYPE = b"application/problem+json"

R = CreateTransferResult


def problem_type(slug: str) -> str:
    return PROBLEM_BASE + slug


def slug_of(name: str) -> str:
    return name.lower().replace("_", "-")


class Problem(Exception):
    """A refusal: status, stable type slug, human title and detail, optional extras."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str = "",
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(f"{status} {slug}: {detail or title}")
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or []
        self.extensions = extensions

    def body(self, instance: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": problem_type(self.slug),
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body

    def encode(self, instance: str = "") -> bytes:
        return orjson.dumps(self.body(instance))


def invalid(detail: str, pointer: str) -> Problem:
    """A request body or parameter that breaks the schema (422), naming where."""
    return Problem(
        422,
        "validation-failed",
        "The request does not match the schema",
        detail,
        errors=[{"pointer": pointer, "detail": detail}],
    )


# --- ledger result codes -> HTTP ----------------------------------------------

_TRANSFER_NOT_FOUND = {
    R.DEBIT_ACCOUNT_NOT_FOUND,
    R.CREDIT_ACCOUNT_NOT_FOUND,
    R.PENDING_TRANSFER_NOT_FOUND,
    R.REVERSAL_TARGET_NOT_FOUND,
}
_TRANSFER_CONFLICT = {
    R.PENDING_TRANSFER_NOT_PENDING,
    R.PENDING_TRANSFER_ALREADY_POSTED,
    R.PENDING_TRANSFER_ALREADY_VOIDED,
    R.PENDING_TRANSFER_EXPIRED,
    R.REVERSAL_TARGET_NOT_POSTED,
    R.DEBIT_ACCOUNT_FROZEN,
    R.CREDIT_ACCOUNT_FROZEN,
    R.DEBIT_ACCOUNT_CLOSED,
    R.CREDIT_ACCOUNT_CLOSED,
}

# Authorization refusals: the caller may not do this at all (or not without a second factor).
_TRANSFER_FORBIDDEN = {
    R.CHANNEL_CODE_NOT_ALLOWED,
    R.DEBIT_ACCOUNT_CODE_NOT_ALLOWED,
    R.CREDIT_ACCOUNT_CODE_NOT_ALLOWED,
    R.CODE_NEEDS_BANK_ACCOUNT,
    R.STRONG_AUTH_REQUIRED,
}

_TRANSFER_TITLES = {
    R.EXCEEDS_CREDITS: "Insufficient funds",
    R.EXCEEDS_DAILY_OUTFLOW: "The account's daily outflow quota is used up (PBoC)",
    R.EXCEEDS_YEARLY_OUTFLOW: "The account's yearly outflow quota is used up (PBoC)",
    R.EXCEEDS_DAILY_INFLOW: "The account's daily inflow quota is used up (PBoC)",
    R.EXCEEDS_YEARLY_INFLOW: "The account's yearly inflow quota is used up (PBoC)",
    R.EXCEEDS_BALANCE_CAP: "The account's balance cap would be passed (PBoC Class III)",
    R.EXCEEDS_TRANSFER_CAP: "The amount passes the product's single-transfer cap",
    R.EXCEEDS_CHANNEL_TRANSFER_CAP: "The amount passes this channel's single-transfer cap",
    R.EXCEEDS_CHANNEL_DAILY_CAP: "The amount passes this channel's daily cap for the account",
    R.CASH_NOT_ALLOWED: "Cash is not allowed on this account (PBoC account class rules)",
    R.NON_BOUND_INFLOW_DISABLED: "The account does not accept money from non-bound accounts",
    R.NO_BOUND_ACCOUNT: "The account has no bound card for this movement",
    R.DEBIT_ACCOUNT_NOT_FOUND: "The debit account does not exist",
    R.CREDIT_ACCOUNT_NOT_FOUND: "The credit account does not exist",
    R.EXISTS_WITH_DIFFERENT_AMOUNT: "The Idempotency-Key was used for another amount",
    R.EXISTS_WITH_DIFFERENT_USER_DATA: (
        "The Idempotency-Key was used for another instruction (beneficiary, payer or user data)"
    ),
    R.CHANNEL_CODE_NOT_ALLOWED: "This channel may not post this kind of transfer",
    R.DEBIT_ACCOUNT_CODE_NOT_ALLOWED: (
        "The debit account may not be debited for this kind of transfer"
    ),
    R.CREDIT_ACCOUNT_CODE_NOT_ALLOWED: (
        "The credit account may not be credited for this kind of transfer"
    ),
    R.CODE_NEEDS_BANK_ACCOUNT: "This kind of transfer needs one of the bank's own accounts",
    R.EXCEEDS_INTERNAL_FLOOR: "The bank's internal account would pass its floor",
    R.EXCEEDS_CHANNEL_DAILY_INFLOW_CAP: (
        "The amount passes this channel's daily cap on money into the account"
    ),
    R.EXCEEDS_CUSTOMER_DAILY_CAP: "The amount passes the customer's daily cap across channels",
    R.STRONG_AUTH_REQUIRED: (
        "Above 50,000 CNY a day off the counter: strong authentication (a second factor) needed"
    ),
    R.CHANNEL_LOG_QUOTA_EXCEEDED: "This channel holds its share of the transfer log; retry "
    "after the time in Retry-After",
}


def transfer_status(code: int) -> int:
    if code == R.CHANNEL_LOG_QUOTA_EXCEEDED:
        return 429  # this channel only: it holds its share of the transfer log
    if code in _TRANSFER_NOT_FOUND:
        return 404
    if code in _TRANSFER_CONFLICT:
        return 409
    if code in _TRANSFER_FORBIDDEN:
        return 403
    return 422


def transfer_problem(code: int, detail: str = "") -> Problem:
    """The problem for a failed transfer, carrying the ledger result code."""
    result = R(code)
    assert result not in (R.OK, R.EXISTS), result
    name = result.name.lower()
    title = _TRANSFER_TITLES.get(result)
    if title is None:
        if name.startswith("exists_with_different_"):
            field = name.removeprefix("exists_with_different_").replace("_", " ")
            title = f"The Idempotency-Key was already used with a different {field}"
        else:
            title = "The ledger refused the transfer: " + name.replace("_", " ")
    headers = []
    if result == R.CHANNEL_LOG_QUOTA_EXCEEDED:
        headers.append((b"retry-after", str(LOG_QUOTA_RETRY_AFTER_S).encode()))
    return Problem(
        transfer_status(code),
        slug_of(name),
        title,
        detail,
        headers=headers,
        ledger_result={"code": int(result), "name": name},
    )


def account_update_problem(code: int) -> Problem:
    result = AccountUpdateResult(code)
    assert result != AccountUpdateResult.OK
    name = result.name.lower()
    status = {
        AccountUpdateResult.ACCOUNT_NOT_FOUND: 404,
        AccountUpdateResult.ACCOUNT_CLOSED: 409,
        AccountUpdateResult.BALANCE_NOT_ZERO: 409,
        AccountUpdateResult.PENDING_NOT_ZERO: 409,
    }.get(result, 422)
    return Problem(
        status,
        "account-" + slug_of(name) if not name.startswith("account") else slug_of(name),
        "The ledger refused the account change: " + name.replace("_", " "),
        ledger_result={"code": int(result), "name": name},
    )


def account_create_problem(code: int) -> Problem:
    result = CreateAccountResult(code)
    assert result not in (CreateAccountResult.OK, CreateAccountResult.EXISTS)
    name = result.name.lower()
    status = 409 if name.startswith("exists") else 422
    return Problem(
        status,
        "account-create-" + slug_of(name),
        "The ledger refused to open the account: " + name.replace("_", " "),
        ledger_result={"code": int(result), "name": name},
    )


def all_problem_slugs() -> list[str]:
    """Every ledger-derived slug (documented in the OpenAPI document)."""
    slugs = [slug_of(r.name) for r in R if r not in (R.OK, R.EXISTS)]
    slugs += [account_update_problem(int(u)).slug for u in AccountUpdateResult if u != 0]
    slugs += [
        account_create_problem(int(a)).slug
        for a in CreateAccountResult
        if a not in (CreateAccountResult.OK, CreateAccountResult.EXISTS)
    ]
    return slugs


# --- service refusals -> HTTP: the one table ------------------------------------------

C = Code
# code -> (status, problem type slug, title); a title with {fields} is filled from extras.
REFUSALS: dict[Code, tuple[int, str, str]] = {
    C.NOT_READY: (503, "not-ready", "The server is still recovering"),
    C.OVERLOADED: (503, "overloaded", "The engine's queue is full"),
    C.UNAVAILABLE: (503, "unavailable", "The ledger cannot take this now"),
    C.STORAGE_UNAVAILABLE: (503, "storage-unavailable", "The store cannot write now"),
    C.INVALID_FIELD: (422, "validation-failed", "The request does not match the schema"),
    C.CHANNEL_KIND_NOT_ALLOWED: (
        403,
        "channel-kind-not-allowed",
        "{what} is only available at {kinds_text} channels",
    ),
    C.CUSTOMER_NOT_FOUND: (404, "customer-not-found", "No customer with this id"),
    C.CUSTOMER_EXISTS: (409, "customer-exists", "A customer with this ID number is registered"),
    C.INVALID_RESIDENT_ID: (422, "invalid-resident-id", "The resident ID number is not valid"),
    C.KYC_NOT_VERIFIED: (409, "kyc-not-verified", "The customer's KYC is not verified"),
    C.ACCOUNT_CLASS_LIMIT: (
        409,
        "account-class-limit",
        "The customer already holds {open_count} open {class_name} account(s) at this bank",
    ),
    C.ACCOUNT_NOT_FOUND: (404, "account-not-found", "No account with this id"),
    C.CUSTOMER_ACCOUNT_NOT_FOUND: (404, "account-not-found", "No customer account with this id"),
    C.DEBIT_ACCOUNT_NOT_CUSTOMER: (
        404,
        "account-not-found",
        "No customer account with this id (only customer accounts "
        "can be debited by this operation)",
    ),
    C.BOUND_CARD_INVALID: (422, "invalid-card-number", "The bound card number is not valid"),
    # One answer to every failed binding: which check failed is in the server log only.
    C.BOUND_CARD_NOT_SAME_NAME: (
        422,
        "bound-card-not-same-name",
        "The card does not match the applicant",
    ),
    C.BOUND_CARD_OTHER_CUSTOMER: (
        422,
        "bound-card-not-same-name",
        "The card does not match the applicant",
    ),
    C.BOUND_CARD_NOT_FOUND: (
        422,
        "bound-card-not-same-name",
        "The card does not match the applicant",
    ),
    C.BENEFICIARY_CARD_INVALID: (
        422,
        "invalid-card-number",
        "The beneficiary card number is not valid",
    ),
    C.PASSWORD_NOT_SET: (
        409,
        "transaction-password-not-set",
        "The account has no transaction password",
    ),
    C.PASSWORD_WRONG: (403, "wrong-transaction-password", "The transaction password is wrong"),
    C.PASSWORD_LOCKED: (
        423,
        "transaction-password-locked",
        "Too many wrong transaction passwords: locked until reset at a counter",
    ),
    C.TOKEN_INVALID: (
        401,
        "transaction-token-invalid",
        "The transaction token is unknown or expired",
    ),
    C.TOKEN_NOT_FOR_ACCOUNT: (
        403,
        "transaction-token-not-for-account",
        "The transaction token was issued for another account or channel",
    ),
    C.AUTHENTICATION_REQUIRED: (
        401,
        "transaction-authentication-required",
        "This debit needs the transaction password or a transaction token",
    ),
    C.IDENTITY_MISMATCH: (
        422,
        "identity-mismatch",
        "The ID number presented is not the account holder's",
    ),
    C.FACE_TO_FACE_REQUIRED: (
        409,
        "face-to-face-required",
        "A Class II account takes money from non-bound accounts only after a "
        "face-to-face identity check (PBoC)",
    ),
    C.NOT_APPLICABLE: (409, "not-applicable", "Class I accounts have no inflow restriction"),
    C.CARD_STILL_BOUND: (
        409,
        "card-still-bound",
        "Class II/III accounts are still bound to this Class I card",
    ),
    C.TRANSFER_NOT_FOUND: (404, "transfer-not-found", "No transfer with this id"),
    C.SESSION_INVALID: (
        401,
        "session-invalid",
        "The customer session is unknown, expired or was opened at another channel",
    ),
    C.READ_AUTHENTICATION_REQUIRED: (
        401,
        "read-authentication-required",
        "Reading a customer's data at this channel needs the customer's session or a "
        "transaction token",
    ),
    C.CUSTOMER_PROOF_REQUIRED: (
        401,
        "customer-proof-required",
        "At this channel a hold is settled for its payer or its merchant: send that "
        "customer's Tally-Session or a Tally-Transaction-Token for one of its accounts",
    ),
    C.READ_NOT_IN_SCOPE: (
        403,
        "read-not-in-scope",
        "The customer of this session does not hold what was asked for",
    ),
    C.ACTOR_REQUIRED: (
        401,
        "actor-required",
        "This channel acts for a teller: send a signed Tally-Actor header",
    ),
    C.ACTOR_ROLE_NOT_ALLOWED: (
        403,
        "actor-role-not-allowed",
        "The Tally-Actor role is not one this channel declares",
    ),
    C.ACTOR_LIMIT_EXCEEDED: (
        403,
        "actor-limit-exceeded",
        "The amount is over what a {role} may post; a supervisor must act",
    ),
    C.SUPERVISOR_REQUIRED: (
        403,
        "supervisor-required",
        "Only a supervisor at the counter may do this",
    ),
    C.PASSWORD_WEAK: (
        422,
        "weak-transaction-password",
        "The transaction password is too easy to guess",
    ),
    C.PASSWORD_CHECKS_BUSY: (
        503,
        "password-checks-busy",
        "Too many transaction passwords are being checked; retry shortly",
    ),
    C.INTERNAL_ACCOUNT_NOT_ALLOWED: (
        403,
        "internal-account-not-allowed",
        "Only the bank's internal channel may post to or from the bank's own accounts",
    ),
    C.IDEMPOTENCY_KEY_REUSED: (
        422,
        "idempotency-key-reused",
        "The Idempotency-Key was already used for a request with other fields",
    ),
    # Deposits (core/services/deposits.py; docs/deposits.md).
    C.DEPOSIT_TERM_UNKNOWN: (
        422,
        "deposit-term-unknown",
        "Not a fixed-deposit term of the catalog",
    ),
    C.DEPOSIT_BELOW_MINIMUM: (
        422,
        "deposit-below-minimum",
        "A fixed deposit holds at least {minimum_minor} fen",
    ),
    C.DEPOSIT_AMOUNT_EXCEEDS_PRINCIPAL: (
        422,
        "deposit-amount-exceeds-principal",
        "The withdrawal is larger than the deposit",
    ),
    C.DEPOSIT_PARTIAL_ALREADY_TAKEN: (
        409,
        "deposit-partial-already-taken",
        "This deposit's one partial early withdrawal was taken",
    ),
    C.DEPOSIT_MATURED: (
        409,
        "deposit-matured",
        "The deposit has matured: the day-end pays it to its payout account",
    ),
    C.DEPOSIT_CLOSED: (409, "deposit-closed", "The deposit is closed (paid out)"),
    C.ACCOUNT_NOT_CUSTOMERS: (
        422,
        "account-not-customers",
        "The account is not this customer's",
    ),
    C.ACCOUNT_CLASS_NOT_ALLOWED: (
        422,
        "account-class-not-allowed",
        "The account's class cannot be used for this",
    ),
    C.FIXED_DEPOSIT_NOT_FOUND: (404, "fixed-deposit-not-found", "No fixed deposit with this id"),
    # Risk control (core/services/risk.py; docs/risk.md). Which rules fired is never told
    # to the channel: `decision_id` names the decision the bank recorded.
    C.RISK_BLOCKED: (403, "risk-blocked", "The bank's risk control refused this payment"),
    C.RISK_CHALLENGE: (
        403,
        "risk-challenge",
        "Step-up authentication needed: retry with the same Idempotency-Key and one of "
        "`factors` as second_factor",
    ),
    C.RISK_HOLD_LOCKED: (
        409,
        "risk-hold-locked",
        "The bank's risk control holds this payment: only the bank releases or returns it",
    ),
    C.RISK_DECISION_NOT_FOUND: (
        404,
        "risk-decision-not-found",
        "No risk decision is recorded for this transfer (no rule fired, or no such transfer)",
    ),
    # Maker-checker approvals (core/services/approvals.py; docs/approvals.md).
    C.APPROVAL_REQUIRED: (
        403,
        "approval-required",
        "This needs a request approved by a second operator (POST /v1/admin/approvals)",
    ),
    C.OPERATOR_NOT_PERMITTED: (
        403,
        "operator-not-permitted",
        "The operator's role may not do this",
    ),
    C.APPROVAL_SELF: (403, "approval-self", "The maker of a request cannot approve it"),
    C.APPROVAL_DUPLICATE: (
        409,
        "approval-duplicate",
        "A request for the same object is already pending",
    ),
    C.APPROVAL_NOT_FOUND: (404, "approval-not-found", "No approval request with this id"),
    C.APPROVAL_NOT_PENDING: (409, "approval-not-pending", "The request is no longer pending"),
    C.PARAMETER_INVALID: (
        422,
        "parameter-invalid",
        "The proposed parameters do not validate: every problem is in `errors`",
    ),
    C.APPROVAL_STALE: (
        409,
        "approval-stale",
        "The change was made against an older version than the one in force",
    ),
    # Loans (core/services/loans.py): the product's figures come as extensions (`products`,
    # `min_minor`/`max_minor`, `min_months`/`max_months`, `methods`, `rate_ppm`).
    C.LOAN_PRODUCT_UNKNOWN: (404, "loan-product-unknown", "No loan product with this id"),
    C.LOAN_AMOUNT_OUT_OF_RANGE: (
        422,
        "loan-amount-out-of-range",
        "The amount is outside the loan product's range",
    ),
    C.LOAN_TERM_OUT_OF_RANGE: (
        422,
        "loan-term-out-of-range",
        "The term is outside the loan product's range",
    ),
    C.LOAN_METHOD_NOT_OFFERED: (
        422,
        "loan-method-not-offered",
        "The loan product does not offer this repayment method",
    ),
    C.LOAN_RATE_INVALID: (
        422,
        "loan-rate-invalid",
        "The loan product's rate is not valid today: the LPR plus its spread is out of range",
    ),
    # Loan accounts (core/services/loan_accounts.py): applications, disbursement and
    # repayment; the figures a client acts on come as extensions (`state`, `limit_minor`,
    # `used_minor`, `owed_minor`, `minimum_minor`, `classes`, `allowed_from`).
    C.LOAN_APPLICATION_NOT_FOUND: (
        404,
        "loan-application-not-found",
        "No loan application with this id",
    ),
    C.LOAN_APPLICATION_STATE: (
        409,
        "loan-application-state",
        "The loan application is not in a state this step starts from",
    ),
    C.LOAN_QUOTA_EXCEEDED: (
        422,
        "loan-quota-exceeded",
        "The loan would take the customer over their approved credit limit",
    ),
    C.LOAN_EXPOSURE_EXCEEDED: (
        422,
        "loan-exposure-exceeded",
        "The bank lends no more on this loan product at present",
    ),
    C.LOAN_ALREADY_DISBURSED: (
        409,
        "loan-already-disbursed",
        "The loan of this application is paid out already",
    ),
    C.LOAN_NOT_FOUND: (404, "loan-not-found", "No loan with this account id"),
    C.LOAN_CLOSED: (409, "loan-closed", "The loan is repaid in full"),
    C.LOAN_REPAYMENT_EXCEEDS_OWED: (
        422,
        "loan-repayment-exceeds-owed",
        "The repayment is more than everything owed today (`owed_minor`)",
    ),
    C.LOAN_REPAYMENT_TOO_SMALL: (
        422,
        "loan-repayment-too-small",
        "The repayment repays no principal beyond the interest due (`minimum_minor`)",
    ),
    C.LOAN_ACCOUNT_NOT_ALLOWED: (
        422,
        "loan-account-not-allowed",
        "A loan is paid out to and repaid from the customer's Class I, II or III account",
    ),
    C.LOAN_PREPAYMENT_NOT_ALLOWED: (
        409,
        "loan-prepayment-not-allowed",
        "The loan product takes no early repayment (or not yet: `allowed_from`)",
    ),
    # Real-name verification (core/services/verification.py; docs/verification.md). A failed
    # attempt at a step is no refusal (200 with the step's state); these are requests the
    # workflow cannot take. A provider that did not answer (or answered what does not
    # parse) is the bank's trouble, not the client's: 503 with Retry-After, the step
    # still pending. `provider`, `step`, `verification_status` name what is meant.
    C.PROVIDER_UNAVAILABLE: (
        503,
        "provider-unavailable",
        "A verification provider is unavailable; the step stays pending: retry after the "
        "time in Retry-After",
    ),
    C.PROVIDER_ANSWER_INVALID: (
        503,
        "provider-answer-invalid",
        "A verification provider's answer could not be read; the step stays pending: retry "
        "after the time in Retry-After",
    ),
    C.VERIFICATION_STEP_NOT_REQUIRED: (
        409,
        "verification-step-not-required",
        "This step is not required of the customer here, or has passed already",
    ),
    C.VERIFICATION_ATTEMPTS_EXCEEDED: (
        409,
        "verification-attempts-exceeded",
        "This verification step has failed for good: no attempt is left",
    ),
    C.VERIFICATION_EXPIRED: (
        409,
        "verification-expired",
        "The verification's time window has passed",
    ),
    C.VERIFICATION_CLOSED: (
        409,
        "verification-closed",
        "The customer's verification is already decided (`verification_status`)",
    ),
    C.IMAGE_TOO_LARGE: (413, "image-too-large", "The image is larger than `limit_bytes`"),
    C.IMAGE_TYPE_NOT_ALLOWED: (
        415,
        "image-type-not-allowed",
        "The image is not one of the `allowed` types (checked by its content)",
    ),
    C.BINDING_NOT_FOUND: (404, "binding-not-found", "No card binding with this id"),
    C.BINDING_NOT_VERIFIED: (
        409,
        "binding-not-verified",
        "The card has no verified, unused binding for this customer: bind it first "
        "(the customer's card-bindings)",
    ),
    C.SMS_CODE_WRONG: (422, "sms-code-wrong", "The SMS code is wrong"),
    C.SMS_CODE_EXPIRED: (409, "sms-code-expired", "The SMS code has expired: request a new one"),
    C.SMS_CODE_USED: (409, "sms-code-used", "The SMS code was already used"),
    C.SMS_CODE_OTHER_OPERATION: (
        409,
        "sms-code-other-operation",
        "The SMS code authorizes another operation",
    ),
    C.SMS_CODE_ATTEMPTS_EXCEEDED: (
        409,
        "sms-code-attempts-exceeded",
        "Too many wrong SMS codes: request a new one",
    ),
    C.SMS_CODE_TOO_FREQUENT: (
        429,
        "sms-code-too-frequent",
        "An SMS code was sent moments ago: retry after the time in Retry-After",
    ),
    C.SMS_CHALLENGE_NOT_FOUND: (
        404,
        "sms-challenge-not-found",
        "No SMS code challenge with this id",
    ),
    C.ACCOUNT_NOT_EMPTY: (
        409,
        "account-not-empty",
        "The account still holds money or a hold: the holder empties it first",
    ),
}
# Extras that fill a title or a header rather than appear in the problem body.
_TITLE_EXTRAS = frozenset({"what", "kinds", "open_count", "class_name", "retry_after_s", "pointer"})
# Refusals answered with Retry-After from their `retry_after_s` (at least 1 s).
_RETRY_AFTER_CODES = frozenset(
    {
        C.OVERLOADED,
        C.PASSWORD_CHECKS_BUSY,
        C.PROVIDER_UNAVAILABLE,
        C.PROVIDER_ANSWER_INVALID,
        C.SMS_CODE_TOO_FREQUENT,
    }
)
# Extras renamed on the wire: RFC 9457 gives `status` to the HTTP status.
_RENAMED_EXTRAS = {"status": "verification_status"}
REPLAY_HEADER = (b"idempotent-replayed", b"true")


def refusal_problem(refusal: Refusal) -> Problem:
    """The HTTP answer to a service refusal (the only place refusals meet HTTP)."""
    code = refusal.code
    if code == C.TRANSFER_REFUSED or code == C.TRANSFER_OF_ANOTHER_CHANNEL:
        # Another channel's hold or transfer is answered as one that does not exist.
        problem = transfer_problem(refusal.ledger_code, refusal.detail)
        if refusal.replayed:
            problem.headers.append(REPLAY_HEADER)
        return problem
    if code == C.ACCOUNT_CREATE_REFUSED:
        return account_create_problem(refusal.ledger_code)
    if code == C.ACCOUNT_UPDATE_REFUSED:
        return account_update_problem(refusal.ledger_code)
    extras = refusal.extras
    if code == C.INVALID_FIELD:
        return invalid_at(extras["pointer"], refusal.detail)
    if code == C.PARAMETER_INVALID:
        return parameter_invalid(refusal)
    status, slug, title = REFUSALS[code]
    if "{" in title:
        title = title.format(kinds_text=" or ".join(extras.get("kinds", ())), **extras)
    detail = refusal.detail
    headers: list[tuple[bytes, bytes]] = []
    if code in _RETRY_AFTER_CODES:
        if code == C.OVERLOADED:
            detail = "retry after the time in Retry-After"
        retry = max(1, math.ceil(extras.get("retry_after_s", 1)))
        headers.append((b"retry-after", str(retry).encode()))
    elif code == C.STORAGE_UNAVAILABLE:
        headers.append((b"retry-after", str(extras["retry_after_s"]).encode()))
    elif status == 503:
        headers.append((b"retry-after", b"1"))
    if code == C.NOT_READY:
        detail = ""
    extensions = {
        _RENAMED_EXTRAS.get(name, name): value
        for name, value in extras.items()
        if name not in _TITLE_EXTRAS
    }
    if "pointer" in extras:
        extensions["errors"] = [{"pointer": extras["pointer"], "detail": refusal.detail}]
    return Problem(status, slug, title, detail, headers=headers, **extensions)


def parameter_invalid(refusal: Refusal) -> Problem:
    """422 naming every problem of a proposed parameter file, each with its line: `errors`
    items {pointer, detail, line} (line 0: the file as a whole). The pointer is where the
    request carried the text: "/payload/text" (an approval request), or the refusal's own
    `pointer` ("/text": a loan catalog draft previewed)."""
    status, slug, title = REFUSALS[C.PARAMETER_INVALID]
    pointer = str(refusal.extras.get("pointer", "/payload/text"))
    errors = []
    for item in refusal.extras.get("errors", ()):
        if isinstance(item, dict):
            line, message = int(item.get("line", 0)), str(item.get("message", ""))
        else:
            line, message = int(item[0]), str(item[1])
        detail = f"line {line}: {message}" if line else message
        errors.append({"pointer": pointer, "detail": detail, "line": line})
    extensions = {
        name: value
        for name, value in refusal.extras.items()
        if name not in ("errors", "pointer") and name not in _TITLE_EXTRAS
    }
    return Problem(status, slug, title, refusal.detail, errors=errors, **extensions)


def invalid_at(path: str, message: str) -> Problem:
    """`invalid` at a JSON pointer `path` ("/a/3/b"), naming it as `$.a[3].b` too."""
    dollar = "$"
    for part in path.split("/")[1:]:
        dollar += f"[{part}]" if part.isdigit() else f".{part}"
    return invalid(f"{message} at `{dollar}`", path or "/")
