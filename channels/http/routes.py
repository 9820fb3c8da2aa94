"""The route table: every /v1 operation, its schema, and what it demands of a request.

One declaration drives the router, the request validation and the OpenAPI
document, so the three cannot drift apart. What a route demands of its caller
(channel kinds, the holder's consent, an Idempotency-Key) is not declared
here: each route names its operation and takes its policy from the one
protocol-neutral declaration in `core/services/policy.py`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from channels.http.schema import F, base64_length
from channels.iso20022.messages import CAMT_053, CAMT_054, PACS_004, PACS_008
from channels.registry import BATCH_SIZE_MAX
from core.services.approvals import TEXT_BYTES_MAX
from core.services.loan_accounts import PURPOSE_LENGTH_MAX, REASON_LENGTH_MAX
from core.services.operators import OPERATION_KINDS, PARAMETER_KINDS
from core.services.passwords import PASSWORD_PATTERN
from core.services.policy import OPERATIONS, OPERATOR_ONLY, Operation
from core.services.refusals import Code
from core.services.verification import IMAGE_BYTES_MAX, IMAGE_MEDIA_TYPES, SMS_OPERATIONS
from ledger.loans import Method
from ledger.types import INT64_MAX, TransferCode
from limits.deposits import Term
from limits.loans import ID_PATTERN as LOAN_PRODUCT_ID_RE
from limits.loans import REPAYMENT_DAY_MAX as LOAN_REPAYMENT_DAY_MAX
from limits.loans import TERM_MONTHS_MAX as LOAN_TERM_MONTHS_MAX

NAME_PATTERN = "^[^0-9\\u0000-\\u001f\\u007f]+$"
ID_NUMBER_PATTERN = "^[0-9]{17}[0-9X]$"
MOBILE_PATTERN = "^1[3-9][0-9]{9}$"
CARD_PATTERN = "^[0-9]{16,19}$"
CUSTOMER_ID_PATTERN = "^c[0-9a-f]{20}$"

PASSWORD = F(
    "string", pattern=PASSWORD_PATTERN, description="6-digit transaction password", example="135790"
)
PASSWORD_OPTIONAL = F(
    "string",
    required=False,
    pattern=PASSWORD_PATTERN,
    description="6-digit transaction password (or send a Tally-Transaction-Token)",
)
SECOND_FACTOR = F(
    "enum",
    required=False,
    values=("ukey", "sms", "face", "certificate", "e_signature"),
    description="the second factor the channel verified with the holder's password or token:"
    " strong authentication, needed off the counter above 50,000 CNY a day (2016 No. 261)",
)
AMOUNT = F("amount", example=1000)
# What the channel saw of the customer's device (core.services.commands.RiskContext), for
# the risk stage; signed with the body like every field. Parsed only when sent.
DEVICE_ID_PATTERN = "^[A-Za-z0-9_.:-]{1,64}$"
LOCATION_PATTERN = (
    "^(-?[0-9]{1,2}(\\.[0-9]{1,7})?,-?[0-9]{1,3}(\\.[0-9]{1,7})?|[A-Z0-9][A-Z0-9-]{1,15})$"
)
DEVICE = F(
    "object",
    required=False,
    description="what the channel saw of the customer's device, for the bank's risk control "
    "(Anti-Telecom Fraud Law art. 18): the device id, the client's IP address, its location "
    '("lat,lon" or a region code such as "CN-11")',
    fields={
        "id": F("string", required=False, pattern=DEVICE_ID_PATTERN, example="ios-5F2A9C0E"),
        "ip": F("ip", required=False, example="203.0.113.7"),
        "location": F(
            "string", required=False, pattern=LOCATION_PATTERN, example="39.9042,116.4074"
        ),
    },
)
COUNTERPARTY = F(
    "object",
    fields={
        "bank_code": F("string", pattern="^[0-9A-Z]{3,12}$", description="the other bank's code"),
        "account_number": F("string", pattern="^[0-9]{8,32}$"),
        "name": F("string", min_length=1, max_length=64, pattern=NAME_PATTERN),
    },
)

CUSTOMER_NEW = {
    "name": F("string", min_length=1, max_length=64, pattern=NAME_PATTERN, example="张三"),
    "id_number": F(
        "string",
        pattern=ID_NUMBER_PATTERN,
        example="11010519491231002X",
        description="18-digit resident ID number (check digit ISO 7064 MOD 11-2)",
    ),
    "mobile": F("string", pattern=MOBILE_PATTERN, example="13800138000"),
}
BOUND_CARD = F(
    "object",
    required=False,
    description="the same-name Class I debit card or credit card to bind (Class II/III only)",
    fields={
        "card_number": F("string", pattern=CARD_PATTERN, description="Luhn-valid, 16-19 digits"),
        "card_type": F("enum", values=("class_i_debit", "credit")),
        "holder_name": F("string", min_length=1, max_length=64, pattern=NAME_PATTERN),
        "holder_id_number": F("string", pattern=ID_NUMBER_PATTERN),
        "reserved_mobile": F("string", pattern=MOBILE_PATTERN),
    },
)
# --- real-name verification (core/services/verification.py; docs/verification.md) ---
# The ID card image travels as base64 in the JSON body: at most IMAGE_BYTES_MAX bytes
# decoded (over: 413 image-too-large), a JPEG or PNG by its media type and its magic
# bytes (else 415 image-type-not-allowed), checked here before any provider is called.
OCR_REFERENCE_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
LIVENESS_TOKEN_PATTERN = "^[!-~]{1,2048}$"  # the liveness SDK's token: visible ASCII
BINDING_ID_PATTERN = "^b[0-9a-f]{20}$"  # core.services.verification.Binding
CHALLENGE_ID_PATTERN = "^s[0-9a-f]{20}$"  # core.services.verification.Challenge
SMS_CODE_PATTERN = "^[0-9]{6}$"
IMAGE = F(
    "base64",
    max_length=IMAGE_BYTES_MAX,
    min_length=4,
    description=f"the photo of the ID card's face, base64 (at most {IMAGE_BYTES_MAX} bytes "
    "decoded; over it: 413 image-too-large, and a body over the route's cap 413 "
    "body-too-large)",
    refusal=Code.IMAGE_TOO_LARGE,
    refusal_extras={"limit_bytes": IMAGE_BYTES_MAX},
)
IMAGE_MEDIA_TYPE = F(
    "enum",
    values=IMAGE_MEDIA_TYPES,
    description="the image's type; it must agree with the image's own bytes (another: "
    "415 image-type-not-allowed)",
    refusal=Code.IMAGE_TYPE_NOT_ALLOWED,
    refusal_extras={"allowed": list(IMAGE_MEDIA_TYPES)},
)
OCR_REFERENCE = F(
    "string",
    pattern=OCR_REFERENCE_PATTERN,
    description="instead of the image: the OCR provider's id of a result the channel's app "
    "already obtained (the bank reads it from the provider)",
)
# Either the image (and its type) or an OCR provider's reference, never both.
ID_DOCUMENT_IMAGE = {"image_base64": IMAGE, "media_type": IMAGE_MEDIA_TYPE}
ID_DOCUMENT_REFERENCE = {"ocr_reference": OCR_REFERENCE}
ID_DOCUMENT = {
    **{name: dataclasses.replace(spec, required=False) for name, spec in ID_DOCUMENT_IMAGE.items()},
    **{
        name: dataclasses.replace(spec, required=False)
        for name, spec in ID_DOCUMENT_REFERENCE.items()
    },
}
# The largest image in base64 and the JSON around it: the id-document route's body cap
# whatever the channel's (a channel's body_size_max is for its other routes).
ID_DOCUMENT_BODY_SIZE_MAX = base64_length(IMAGE_BYTES_MAX) + 1024
LIVENESS = {
    "token": F(
        "string",
        pattern=LIVENESS_TOKEN_PATTERN,
        description="what the app's liveness SDK returned for the customer's face",
    )
}
CARD_BINDING_NEW = dict(BOUND_CARD.fields)
SMS_SUBJECT = {
    "operation": F("enum", values=SMS_OPERATIONS, description="what the code authorizes"),
    "subject": F(
        "string",
        pattern=BINDING_ID_PATTERN,
        description="what it authorizes it on: the card binding's id",
    ),
}
SMS_CONFIRMATION = {
    **SMS_SUBJECT,
    "code": F(
        "string", pattern=SMS_CODE_PATTERN, description="the 6-digit code the customer received"
    ),
}

ACCOUNT_NEW = {
    "class": F("enum", values=("class_i", "class_ii", "class_iii")),
    "bound_card": BOUND_CARD,
    "password": PASSWORD,
}
MONEY_BODY = {
    "amount_minor": AMOUNT,
    "password": PASSWORD_OPTIONAL,
    "second_factor": SECOND_FACTOR,
    "device": DEVICE,
}
CASH_IN_BODY = {"amount_minor": AMOUNT, "device": DEVICE}
TRANSFER_NEW = {
    "debit_account_id": F("account_id"),
    "credit_account_id": F("account_id"),
    "amount_minor": AMOUNT,
    "password": PASSWORD_OPTIONAL,
    "second_factor": SECOND_FACTOR,
    "device": DEVICE,
}
EXTERNAL_NEW = {
    "debit_account_id": F("account_id"),
    "amount_minor": AMOUNT,
    "beneficiary": COUNTERPARTY,
    "password": PASSWORD_OPTIONAL,
    "second_factor": SECOND_FACTOR,
    "device": DEVICE,
}
CLEARING_REFERENCE_PATTERN = "^[0-9A-Za-z][0-9A-Za-z_.:-]{0,63}$"
INCOMING_NEW = {
    "credit_account_id": F("account_id"),
    "amount_minor": AMOUNT,
    "payer": COUNTERPARTY,
    "clearing_reference": F(
        "string",
        pattern=CLEARING_REFERENCE_PATTERN,
        description="the clearing system's reference of the credit: the operation key "
        "(the same reference twice posts once, whatever the Idempotency-Key)",
        example="IBPS20261121000123",
    ),
}
SESSION_NEW = {"account_id": F("account_id"), "password": PASSWORD}
VERIFICATION = {
    "account_id": F("account_id"),
    "name": F("string", min_length=1, max_length=64, pattern=NAME_PATTERN, example="张三"),
}
PAYMENT_NEW = {
    "debit_account_id": F("account_id"),
    "merchant_account_id": F("account_id"),
    "amount_minor": AMOUNT,
    "timeout_s": F(
        "integer",
        required=False,
        minimum=1,
        maximum=7 * 86400,
        description="the hold expires after this many seconds (default 900)",
    ),
    "password": PASSWORD_OPTIONAL,
    "second_factor": SECOND_FACTOR,
    "device": DEVICE,
}
CAPTURE = {"amount_minor": F("amount", required=False, description="default: the whole hold")}
REVERSE = {"amount_minor": F("amount", required=False, description="default: all that was posted")}
BATCH_ITEM = F(
    "object",
    fields={
        "debit_account_id": F("account_id"),
        "credit_account_id": F("account_id"),
        "amount_minor": F("amount", minimum=0, description="0 only for post/void of a hold"),
        "code": F("enum", values=tuple(code.name.lower() for code in TransferCode)),
        "flags": F(
            "array",
            required=False,
            items=F("enum", values=("linked", "pending", "post_pending", "void_pending")),
            max_items=4,
        ),
        "pending_id": F("transfer_id", required=False),
        "timeout_s": F("integer", required=False, minimum=0, maximum=0xFFFFFFFF),
        "user_data": F("integer", required=False, minimum=0, maximum=0xFFFFFFFFFFFFFFFF),
    },
)
BATCH = {"transfers": F("array", items=BATCH_ITEM, min_items=1, max_items=BATCH_SIZE_MAX)}
# A term is checked by the service (deposit-term-unknown names the terms offered), so the
# schema only bounds its shape.
TERM = F(
    "string",
    pattern="^[0-9]{1,3}[my]$",
    description="a fixed-deposit term of the catalog (GET /v1/products): "
    + ", ".join(term.value for term in Term),
    example="1y",
)
FIXED_DEPOSIT_NEW = {
    "source_account_id": F(
        "account_id", description="the customer's own Class I or II account the money comes from"
    ),
    "amount_minor": F("amount", example=5_000_000),
    "term": TERM,
    "payout_account_id": F(
        "account_id",
        required=False,
        description="the customer's Class I or II account paid at maturity (default: the source)",
    ),
    "rollover": F(
        "boolean",
        required=False,
        description="renew at maturity for the same term at that day's rate (default false)",
    ),
    "password": PASSWORD_OPTIONAL,
    "second_factor": SECOND_FACTOR,
}
FIXED_DEPOSIT_WITHDRAWAL = {
    "amount_minor": F(
        "amount",
        required=False,
        description="the principal to withdraw; omitted: all of it. A part only once per deposit",
    ),
    "password": F(
        "string",
        required=False,
        pattern=PASSWORD_PATTERN,
        description="the payout account's 6-digit transaction password (or send a "
        "Tally-Transaction-Token for the payout account)",
    ),
}
DATE_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
INTEREST_CORRECTION = {
    "balance_delta_minor": F(
        "integer",
        minimum=-INT64_MAX,
        maximum=INT64_MAX,
        description="what the end-of-day balance should have been minus what it was, fen "
        "(negative: interest is taken back)",
    ),
    "from": F("string", pattern=DATE_PATTERN, description="first day corrected (counted)"),
    "to": F(
        "string",
        pattern=DATE_PATTERN,
        description="the day after the last one corrected (not counted); one settled period",
    ),
    "reason": F("string", required=False, max_length=200),
}

# --- risk control and approvals (core/services/risk.py, core/services/approvals.py) ---
RFC3339_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?"
    "(Z|[+-][0-9]{2}:[0-9]{2})$"
)
APPROVAL_ID_PATTERN = "^A[0-9a-f]{12}$"
APPROVAL_KINDS = PARAMETER_KINDS + OPERATION_KINDS
APPROVAL_STATES = ("pending", "approved", "applied", "rejected", "expired", "failed")
RISK_OUTCOMES = ("allow", "challenge", "delay", "review", "block")
TEXT_PATTERN = "^[^\\u0000-\\u001f\\u007f]+$"  # one line, no control characters
REASON = F("string", required=False, min_length=1, max_length=500, pattern=TEXT_PATTERN)
APPROVAL_NEW = {
    "kind": F(
        "enum",
        values=APPROVAL_KINDS,
        description="a parameter (limits, deposits, risk, lpr, channels, loans) or a sensitive "
        "operation (reversal, unlock_password, release_review, return_review, credit_limit,"
        " close_account)",
    ),
    "object": F(
        "string",
        required=False,
        pattern="^[A-Za-z0-9_.:-]{1,80}$",
        description="what the request changes (default: the parameter kind; an operation "
        "names its transfer, account or customer)",
    ),
    "payload": F(
        "json_object",
        description='a parameter: {"text": the whole new file, "base_version": the version '
        "it was edited from}; an operation: its fields (docs/approvals.md)",
    ),
    "apply_at": F(
        "string",
        required=False,
        pattern=RFC3339_PATTERN,
        description="apply once approved, at this time (RFC 3339); default: on approval",
        example="2026-12-07T02:00:00+08:00",
    ),
    "reason": REASON,
}
APPROVAL_DECISION = {"reason": REASON}
APPROVAL_REJECTION = {"reason": F("string", min_length=1, max_length=500, pattern=TEXT_PATTERN)}
# --- loans (core/services/loans.py, ledger/loans.py; limits/loans.py the catalog) ---
LOAN_PRODUCT_ID_PATTERN = f"^{LOAN_PRODUCT_ID_RE.pattern}$"  # a catalog product id
# The shape of a quote only: whether the product exists and takes this amount, term and
# method is the service's answer (loan-product-unknown, loan-*-out-of-range, ...), with
# the product's figures.
LOAN_FIELDS = {
    "product_id": F(
        "string",
        pattern=LOAN_PRODUCT_ID_PATTERN,
        description="a loan product of the catalog (GET /v1/products: `loans`)",
        example="G-P-loan",
    ),
    "amount_minor": F("amount", description="the principal", example=10_000_000),
    "term_months": F(
        "integer",
        minimum=1,
        maximum=LOAN_TERM_MONTHS_MAX,
        description="the term in months, within the product's range",
        example=12,
    ),
    "method": F(
        "enum",
        values=tuple(method.value for method in Method),
        description="equal_instalment (等额本息: the same total every month) or "
        "equal_principal (等额本金: the same principal every month), one the product offers",
    ),
    "repayment_day": F(
        "integer",
        required=False,
        minimum=1,
        maximum=LOAN_REPAYMENT_DAY_MAX,
        description="the day of the month instalments fall due, where the product lets the "
        "customer choose (default: the product's day)",
    ),
}
LOAN_QUOTE_NEW = LOAN_FIELDS
LOAN_PREVIEW = {
    "text": F(
        "string",
        min_length=1,
        max_length=TEXT_BYTES_MAX,
        description="the whole draft loan catalog (TOML): the text a `loans` change request "
        "would carry",
    ),
    **LOAN_FIELDS,
}
# --- loan accounts (core/services/loan_accounts.py; docs/loans.md) ---
# An application names its customer, the product terms of a quote, the customer's own
# Class I/II/III account the money goes to and the one instalments are taken from, and
# the purpose (a loan's use is stated and recorded, as the personal-loan rules require).
# Whether the product takes the terms, the accounts are the customer's and the credit
# limit holds is the service's answer, with its figures.
LOAN_APPLICATION_ID_PATTERN = "^LA[0-9a-f]{16}$"  # core.services.loan_accounts.application_id_of
LOAN_PURPOSE = F(
    "string",
    min_length=1,
    max_length=PURPOSE_LENGTH_MAX,
    pattern=TEXT_PATTERN,
    description="what the money is for (one line), recorded with the application",
    example="home renovation",
)
LOAN_APPLICATION_NEW = {
    "customer_id": F(
        "string",
        pattern=CUSTOMER_ID_PATTERN,
        description="the applicant (wechat/app: the customer the channel acts for)",
        example="c0123456789abcdef0123",
    ),
    **LOAN_FIELDS,
    "disbursement_account_id": F(
        "account_id", description="the customer's own account the loan is paid into"
    ),
    "repayment_account_id": F(
        "account_id",
        required=False,
        description="the customer's own account instalments are collected from (default: "
        "the disbursement account)",
    ),
    "purpose": LOAN_PURPOSE,
    "device": DEVICE,
}
LOAN_SIGNATURE = {
    "password": F(
        "string",
        required=False,
        pattern=PASSWORD_PATTERN,
        description="the repayment account's 6-digit transaction password (or send a "
        "Tally-Transaction-Token for that account): the customer signs the contract",
    ),
    "second_factor": SECOND_FACTOR,
}
LOAN_DECISION = {
    "approve": F("boolean", description="true: approve the referred application; false: decline"),
    "reason": F(
        "string",
        required=False,
        min_length=1,
        max_length=REASON_LENGTH_MAX,
        pattern=TEXT_PATTERN,
        description="why, recorded with the application (required to decline)",
    ),
}
LOAN_REPAYMENT = {
    "amount_minor": F(
        "amount",
        required=False,
        description="what to repay now: arrears first (penalty, interest, principal in the "
        "product's order), then principal early; omitted: everything owed (the loan closes)",
    ),
    "password": F(
        "string",
        required=False,
        pattern=PASSWORD_PATTERN,
        description="the repayment account's 6-digit transaction password (or send a "
        "Tally-Transaction-Token for that account)",
    ),
    "second_factor": SECOND_FACTOR,
}
SINCE = F(
    "string", required=False, pattern=RFC3339_PATTERN, description="only what came after (RFC 3339)"
)
LIST_LIMIT = F("integer", required=False, minimum=1, maximum=1000, description="default 100")
STATEMENT_QUERY = {
    "account_id": F("account_id", description="the account (required)"),
    "from": F("string", pattern=DATE_PATTERN, description="the first business day (required)"),
    "to": F("string", pattern=DATE_PATTERN, description="the last business day (required)"),
}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    operation: str  # policy operation name and method of channels.http.handlers.Handlers
    summary: str
    status: int
    response: str  # OpenAPI component schema name of the success body ("" = none)
    policy: Operation  # OPERATIONS[operation]: kinds, consent, money
    body: Mapping[str, F] | None = None
    body_optional: bool = False
    query: Mapping[str, F] = field(default_factory=dict)
    binary: bool = False  # also takes application/octet-stream
    # The body is exactly one of these field sets (`body` is their union, each field
    # optional there): the OpenAPI document gives them as oneOf; the app checks which.
    alternatives: tuple[Mapping[str, F], ...] = ()
    # A body cap above the channel's own for this route (0: the channel's): the ID
    # document's image, under --body-size-max still.
    body_size_max: int = 0
    problems: tuple[int, ...] = ()
    pattern: re.Pattern[str] | None = None
    params: tuple[str, ...] = ()
    # Signed by an operator (`channel="op:NAME"`, the operator registry), not a channel:
    # the /v1/admin/ routes (core.services.policy.OPERATOR_KIND).
    admin: bool = False
    # The risk stage may hold the posting instead of moving the money: 202 with
    # "status": "delayed" | "review" | "returned" (core/services/risk.py, payments.py).
    held: bool = False
    # ISO 20022 (channels/iso20022/http.py): the message the route takes (POST) or answers
    # (GET), e.g. "pacs.008.001.08"; its body and answer are XML, its handler is there.
    xml: str = ""


def _route(
    method: str,
    path: str,
    operation: str,
    summary: str,
    status: int,
    response: str,
    **kwargs: Any,
) -> Route:
    params = tuple(re.findall(r"\{([a-z_]+)\}", path))
    pattern = None
    if params:
        pattern = re.compile("^" + re.sub(r"\{([a-z_]+)\}", r"(?P<\1>[^/]+)", path) + "$")
    policy = OPERATIONS[operation]
    return Route(
        method,
        path,
        operation,
        summary,
        status,
        response,
        policy,
        pattern=pattern,
        params=params,
        admin=policy.kinds == OPERATOR_ONLY,
        held=operation in HELD_OPERATIONS,
        **kwargs,
    )


# The single postings the risk stage screens and may hold (captures and voids settle a
# movement already decided; the batch answers per item).
HELD_OPERATIONS = frozenset(
    {
        "topup",
        "withdraw",
        "cash_deposit",
        "cash_withdrawal",
        "transfer",
        "external_transfer",
        "incoming_transfer",
        "payment",
        "reversal",
    }
)


ROUTES: tuple[Route, ...] = (
    _route(
        "POST",
        "/v1/customers",
        "register_customer",
        "Register a customer with real-name data; the verification starts at once (the "
        "ID's structure and, at a counter, the identity database and the teller's "
        "confirmation: verified in one call). A remote channel then sends the ID document "
        "and the liveness check; `kyc` says which steps are required and where each stands",
        201,
        "Customer",
        body=CUSTOMER_NEW,
        problems=(409, 422),
    ),
    # --- real-name verification (core/services/verification.py; docs/verification.md) ---
    # A new customer has no account and so no session: the registering channel acts for
    # them (or a counter, or the bank's channel); the service checks which. A failed
    # attempt at a step is no refusal: 200 with the step's state and attempts.
    _route(
        "POST",
        "/v1/customers/{customer_id}/verification/id-document",
        "submit_id_document",
        "The ID document step: the photo of the customer's ID card (base64, JPEG or PNG) or "
        "an OCR provider's reference; the printed name and ID number must be the customer's",
        200,
        "Verification",
        body=ID_DOCUMENT,
        alternatives=(ID_DOCUMENT_IMAGE, ID_DOCUMENT_REFERENCE),
        body_size_max=ID_DOCUMENT_BODY_SIZE_MAX,
        problems=(404, 409, 413, 415, 422, 503),
    ),
    _route(
        "POST",
        "/v1/customers/{customer_id}/verification/liveness",
        "submit_liveness",
        "The liveness step: the token of the app's liveness check; a live face that is the "
        "ID's photo in the identity database passes (the database check runs with it)",
        200,
        "Verification",
        body=LIVENESS,
        problems=(404, 409, 422, 503),
    ),
    _route(
        "POST",
        "/v1/customers/{customer_id}/verification/in-person",
        "confirm_in_person",
        "The teller's confirmation: the teller named in Tally-Actor saw the customer and "
        "their ID card face to face (the counter only)",
        200,
        "Verification",
        body={},
        body_optional=True,
        problems=(404, 409, 503),
    ),
    _route(
        "GET",
        "/v1/customers/{customer_id}/verification",
        "read_verification",
        "The customer's real-name verification: the status (pending, verified, rejected), "
        "the steps the registering channel requires and where each stands, the provider "
        "calls made (never an image or a code)",
        200,
        "Verification",
        problems=(404,),
    ),
    _route(
        "POST",
        "/v1/customers/{customer_id}/card-bindings",
        "bind_card",
        "Bind a card (five elements) to the customer for a Class II/III opening: the "
        "issuer's check runs at once; at a remote channel an SMS code to the customer's "
        "mobile is then sent and must be confirmed",
        201,
        "CardBinding",
        body=CARD_BINDING_NEW,
        problems=(404, 409, 422, 503),
    ),
    _route(
        "GET",
        "/v1/customers/{customer_id}/card-bindings/{binding_id}",
        "read_card_binding",
        "A card binding: the card (masked), its status and steps, the live SMS challenge",
        200,
        "CardBinding",
        problems=(404,),
    ),
    _route(
        "POST",
        "/v1/customers/{customer_id}/sms-codes",
        "request_sms_code",
        "Send a one-time code to the customer's registered mobile, bound to the operation "
        "and subject it authorizes (a new one voids the last; not too often: 429)",
        201,
        "SmsChallenge",
        body=SMS_SUBJECT,
        problems=(404, 409, 429, 503),
    ),
    _route(
        "POST",
        "/v1/customers/{customer_id}/sms-codes/{challenge_id}/confirmation",
        "confirm_sms_code",
        "Confirm a one-time code for the operation and subject it was sent for: single use, "
        "short-lived, a few attempts",
        200,
        "SmsChallenge",
        body=SMS_CONFIRMATION,
        problems=(404, 409, 422),
    ),
    _route(
        "GET",
        "/v1/customers/{customer_id}",
        "read_customer",
        "A customer and their accounts (wechat/app: with that customer's Tally-Session)",
        200,
        "Customer",
        problems=(401, 403, 404),
    ),
    _route(
        "POST",
        "/v1/sessions",
        "open_session",
        "Open a customer session at this channel with the transaction password of one of the "
        "customer's accounts; send it as Tally-Session to read that customer's data",
        201,
        "Session",
        body=SESSION_NEW,
        problems=(403, 404, 409, 423),
    ),
    _route(
        "DELETE",
        "/v1/sessions/current",
        "end_session",
        "End the customer session sent in Tally-Session",
        204,
        "",
        problems=(401, 403),
    ),
    _route(
        "POST",
        "/v1/account-verifications",
        "verify_account",
        "Whether an account exists (open, a customer's) and is held by this name: "
        "for a partner bank before it credits; nothing else is disclosed",
        200,
        "AccountVerification",
        body=VERIFICATION,
        problems=(403, 422),
    ),
    _route(
        "POST",
        "/v1/customers/{customer_id}/accounts",
        "open_account",
        "Open an account: Class I face to face at a counter; Class II/III remotely by binding "
        "a same-name Class I debit card or credit card (at most 5 per class)",
        201,
        "Account",
        body=ACCOUNT_NEW,
        problems=(404, 409, 422),
    ),
    _route(
        "GET",
        "/v1/accounts/{account_id}",
        "read_account",
        "Balances, and the remaining daily/yearly quota of each PBoC bucket and of this channel "
        "(wechat/app: with the holder's Tally-Session or a token; ATM: with a token)",
        200,
        "Account",
        problems=(401, 403, 404, 422),
    ),
    _route(
        "GET",
        "/v1/accounts/{account_id}/history",
        "read_history",
        "The account's transfers, newest first; pass next_cursor as cursor for the next page",
        200,
        "History",
        problems=(401, 403, 404, 422),
        query={
            "limit": F("integer", required=False, minimum=1, maximum=500),
            "cursor": F("string", required=False, pattern="^[0-9]{1,18}$"),
        },
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/password",
        "set_password",
        "Change the transaction password (the old one is required)",
        204,
        "",
        body={"old_password": PASSWORD, "new_password": PASSWORD},
        problems=(403, 404, 409, 423),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/password-reset",
        "reset_password",
        "Reset a forgotten or locked password at a counter, after an ID check",
        204,
        "",
        body={"id_number": F("string", pattern=ID_NUMBER_PATTERN), "new_password": PASSWORD},
        problems=(403, 404, 422),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/tokens",
        "issue_token",
        "Exchange the transaction password for a short-lived token for debits",
        201,
        "Token",
        body={"password": PASSWORD},
        problems=(403, 404, 409, 423),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/close",
        "close_account",
        "Close the account (only at zero balance, with no open holds)",
        200,
        "Account",
        body={"password": PASSWORD_OPTIONAL},
        body_optional=True,
        problems=(401, 403, 404, 409, 423),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/face-to-face",
        "face_to_face",
        "Record a face-to-face identity check at a counter (Class II: cash and non-bound inflow)",
        200,
        "Account",
        body={"id_number": F("string", pattern=ID_NUMBER_PATTERN)},
        problems=(403, 404, 422),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/non-bound-inflow",
        "set_non_bound_inflow",
        "Allow or refuse money from non-bound accounts (Class III; Class II once face to face)",
        200,
        "Account",
        body={"enabled": F("boolean"), "password": PASSWORD_OPTIONAL},
        problems=(401, 403, 404, 409, 423),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/topups",
        "topup",
        "Top up from the bound card (not counted in the PBoC buckets)",
        201,
        "Posting",
        body=MONEY_BODY,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/withdrawals",
        "withdraw",
        "Withdraw to the bound card (not counted in the PBoC buckets)",
        201,
        "Posting",
        body=MONEY_BODY,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/cash-deposits",
        "cash_deposit",
        "Cash deposit at a counter or ATM (PBoC: never Class III; Class II face to face only)",
        201,
        "Posting",
        body=CASH_IN_BODY,
        problems=(403, 404, 409, 422),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/cash-withdrawals",
        "cash_withdrawal",
        "Cash withdrawal at a counter or ATM (same PBoC cash rules)",
        201,
        "Posting",
        body=MONEY_BODY,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "POST",
        "/v1/transfers",
        "transfer",
        "Transfer between two accounts of this bank",
        201,
        "Posting",
        body=TRANSFER_NEW,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "POST",
        "/v1/transfers/batch",
        "batch",
        "Post up to 8189 transfers in one request, one result each (JSON, or 128-byte binary "
        "records as application/octet-stream)",
        200,
        "BatchResult",
        body=BATCH,
        binary=True,
        problems=(403, 413, 422),
    ),
    _route(
        "GET",
        "/v1/transfers/{transfer_id}",
        "read_transfer",
        "One transfer by id (one the channel may not read answers 404)",
        200,
        "Transfer",
        problems=(401, 403, 404, 422),
    ),
    _route(
        "POST",
        "/v1/transfers/{transfer_id}/reversals",
        "reversal",
        "Reverse a posted transfer with a new compensating transfer (the original stays)",
        201,
        "Posting",
        body=REVERSE,
        body_optional=True,
        problems=(404, 409, 422),
    ),
    _route(
        "POST",
        "/v1/external-transfers",
        "external_transfer",
        "Transfer to a non-bound account at another bank, via the clearing account",
        201,
        "Posting",
        body=EXTERNAL_NEW,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "POST",
        "/v1/incoming-transfers",
        "incoming_transfer",
        "Credit money arriving from another bank through clearing, once per clearing reference",
        201,
        "Posting",
        body=INCOMING_NEW,
        problems=(403, 404, 409, 422),
    ),
    # ISO 20022 for partner banks (channels/iso20022/http.py, docs/iso20022.md): XML in
    # and out; a message's transactions answer one by one in the pacs.002.
    _route(
        "POST",
        "/v1/iso20022/pacs.008",
        "incoming_credits",
        "Credit our customers from a pacs.008 (up to 10,000 credits, each booked once per "
        "sender and TxId); answers the pacs.002 with each credit's status",
        200,
        "",
        xml=PACS_008,
        problems=(400, 403, 413, 415),
    ),
    _route(
        "POST",
        "/v1/iso20022/pacs.004",
        "payment_return",
        "Return external transfers of ours from a pacs.004 (each at most once, within its "
        "amount); answers the pacs.002 with each return's status",
        200,
        "",
        xml=PACS_004,
        problems=(400, 403, 413, 415),
    ),
    _route(
        "GET",
        "/v1/iso20022/camt.053",
        "read_statement",
        "An account's camt.053 statement of the business days from .. to (inclusive): "
        "opening and closing booked balances and every booked posting between",
        200,
        "",
        xml=CAMT_053,
        query=STATEMENT_QUERY,
        problems=(401, 403, 404, 422),
    ),
    _route(
        "GET",
        "/v1/iso20022/camt.054",
        "read_notification",
        "An account's camt.054 debit/credit notification of the business days from .. to "
        "(inclusive): every booked posting between",
        200,
        "",
        xml=CAMT_054,
        query=STATEMENT_QUERY,
        problems=(401, 403, 404, 422),
    ),
    _route(
        "POST",
        "/v1/payments",
        "payment",
        "Authorize a payment: place a hold that expires unless captured or voided",
        201,
        "Posting",
        body=PAYMENT_NEW,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "POST",
        "/v1/payments/{payment_id}/capture",
        "capture",
        "Capture a held payment, fully or partly (the rest goes back)",
        201,
        "Posting",
        body=CAPTURE,
        body_optional=True,
        problems=(404, 409, 422),
    ),
    _route(
        "POST",
        "/v1/payments/{payment_id}/void",
        "void",
        "Void a held payment",
        201,
        "Posting",
        body={},
        body_optional=True,
        problems=(404, 409, 422),
    ),
    # --- deposits (core/services/deposits.py; docs/deposits.md) ---
    _route(
        "GET",
        "/v1/products",
        "read_products",
        "The products: deposits (demand rate, fixed-deposit terms and rates, every rate set "
        "with its effective date) and, under `loans`, the loan products in force today with "
        "their rates resolved (and the versions taking effect later)",
        200,
        "Products",
    ),
    _route(
        "GET",
        "/v1/fixed-deposit-quotes",
        "quote_fixed_deposit",
        "What a fixed deposit opened today would pay at maturity (nothing is recorded)",
        200,
        "FixedDepositQuote",
        problems=(422,),
        query={
            "amount_minor": F("integer", minimum=1, maximum=INT64_MAX, example=5_000_000),
            "term": TERM,
        },
    ),
    _route(
        "POST",
        "/v1/customers/{customer_id}/fixed-deposits",
        "open_fixed_deposit",
        "Open a fixed deposit from the customer's Class I or II account, for a listed term at "
        "the rate of the day; the money moves to a new fixed-deposit account of the customer",
        201,
        "FixedDepositOpened",
        body=FIXED_DEPOSIT_NEW,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "GET",
        "/v1/fixed-deposits/{account_id}",
        "read_fixed_deposit",
        "A fixed deposit: principal, term, rate, dates, state (wechat/app: with the holder's "
        "Tally-Session or a token)",
        200,
        "FixedDeposit",
        problems=(401, 403, 404, 422),
    ),
    _route(
        "GET",
        "/v1/fixed-deposits/{account_id}/quote",
        "quote_withdrawal",
        "What the fixed deposit pays if withdrawn in full today (demand rate, days held) and "
        "at maturity (its rate)",
        200,
        "FixedDepositQuote",
        problems=(401, 403, 404, 409, 422),
    ),
    _route(
        "POST",
        "/v1/fixed-deposits/{account_id}/withdrawals",
        "withdraw_fixed_deposit",
        "Withdraw a fixed deposit before maturity: all of it, or once a part (the rest keeps "
        "its rate); the part withdrawn earns the demand rate of the day",
        201,
        "FixedDepositWithdrawal",
        body=FIXED_DEPOSIT_WITHDRAWAL,
        body_optional=True,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "GET",
        "/v1/accounts/{account_id}/interest",
        "read_interest",
        "The account's settled interest postings (those still in the transfer log) and the "
        "interest accrued since the last settlement",
        200,
        "InterestHistory",
        problems=(401, 403, 404, 422),
    ),
    _route(
        "POST",
        "/v1/accounts/{account_id}/interest-corrections",
        "correct_interest",
        "A backdated interest correction for one settled period: an adjustment posting from "
        "or to the interest-expense account, never a rewrite (the bank's channel only)",
        201,
        "Posting",
        body=INTEREST_CORRECTION,
        problems=(403, 404, 409, 422),
    ),
    # --- loans (core/services/loans.py) ---
    _route(
        "POST",
        "/v1/loan-quotes",
        "quote_loan",
        "A loan's trial calculation under the product version in force today: the full "
        "schedule, the total interest and fees, and the annualised rate including every fee "
        "(PBoC); nothing is recorded",
        200,
        "LoanQuote",
        body=LOAN_QUOTE_NEW,
        problems=(404, 422),
    ),
    # --- loan accounts (core/services/loan_accounts.py; channels/http/loans.py) ---
    _route(
        "POST",
        "/v1/loan-applications",
        "apply_loan",
        "Apply for a loan: the product's terms are checked and priced as a quote, the "
        "customer's credit limit and the product's exposure are checked and the would-be "
        "disbursement is screened by the bank's risk control; the application is approved, "
        "declined or referred to a loan officer at once",
        201,
        "LoanApplication",
        body=LOAN_APPLICATION_NEW,
        problems=(401, 403, 404, 409, 422),
    ),
    _route(
        "GET",
        "/v1/loan-applications/{application_id}",
        "read_loan_application",
        "A loan application: its terms, the quote, the credit check, the risk decision's "
        "outcome and every transition (wechat/app: with the applicant's Tally-Session)",
        200,
        "LoanApplication",
        problems=(401, 403, 404, 422),
    ),
    _route(
        "POST",
        "/v1/loan-applications/{application_id}/sign",
        "sign_loan",
        "The customer signs the approved application's contract, with the disbursement "
        "account's transaction password or a token (and a second factor where needed)",
        200,
        "LoanApplication",
        body=LOAN_SIGNATURE,
        body_optional=True,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "POST",
        "/v1/loan-applications/{application_id}/disbursement",
        "disburse_loan",
        "Disburse a signed application: a new loan account of the customer, and the "
        "principal less the upfront fee paid from the bank's loan funding into the "
        "disbursement account, in one durable entry",
        201,
        "Loan",
        body={},
        body_optional=True,
        problems=(401, 403, 404, 409, 422),
    ),
    _route(
        "GET",
        "/v1/loans/{account_id}",
        "read_loan",
        "A loan: outstanding principal, arrears, penalty, what is owed, the next instalment, "
        "its status and the contract (wechat/app: with the borrower's Tally-Session)",
        200,
        "Loan",
        problems=(401, 403, 404, 422),
    ),
    _route(
        "GET",
        "/v1/loans/{account_id}/schedule",
        "read_loan_schedule",
        "The instalments of the loan's current terms, each paid, due (in arrears) or future",
        200,
        "LoanSchedule",
        problems=(401, 403, 404, 422),
    ),
    _route(
        "POST",
        "/v1/loans/{account_id}/repayments",
        "repay_loan",
        "Repay from the loan's repayment account, early or to clear arrears: a part or "
        "everything owed; what is left after the arrears is prepaid under the product's rules",
        201,
        "LoanRepaid",
        body=LOAN_REPAYMENT,
        body_optional=True,
        problems=(401, 403, 404, 409, 422, 423),
    ),
    _route(
        "GET",
        "/v1/customers/{customer_id}/loans",
        "read_customer_loans",
        "The customer's loans, open and closed (wechat/app: with that customer's Tally-Session)",
        200,
        "LoanList",
        problems=(401, 403, 404),
    ),
    # --- risk control (core/services/risk.py; docs/risk.md) ---
    _route(
        "GET",
        "/v1/risk/decisions/{transfer_id}",
        "read_risk_decision",
        "The risk decision recorded for a transfer: outcome, the rules that fired and the "
        "inputs they saw, the rule-set version (the bank's channel only)",
        200,
        "RiskDecision",
        problems=(403, 404, 422),
    ),
    _route(
        "GET",
        "/v1/risk/rules",
        "read_risk_rules",
        "The risk rule set in force: version, digest and rules (the bank's channel only)",
        200,
        "RiskRules",
        problems=(403,),
    ),
    # --- operators: maker-checker approvals and reads (core/services/approvals.py) ---
    _route(
        "POST",
        "/v1/admin/approvals",
        "admin_request",
        "Request a parameter change or a sensitive operation (the maker); it waits for a "
        "checker of the right role",
        201,
        "Approval",
        body=APPROVAL_NEW,
        problems=(403, 409, 422),
    ),
    _route(
        "GET",
        "/v1/admin/approvals",
        "admin_list_approvals",
        "Approval requests, newest first, by state and kind",
        200,
        "ApprovalList",
        query={
            "state": F("enum", required=False, values=APPROVAL_STATES),
            "kind": F("enum", required=False, values=APPROVAL_KINDS),
        },
        problems=(403,),
    ),
    _route(
        "GET",
        "/v1/admin/approvals/{approval_id}",
        "admin_read_approval",
        "One approval request: payload, diff, state, maker and checker",
        200,
        "Approval",
        problems=(403, 404, 422),
    ),
    _route(
        "POST",
        "/v1/admin/approvals/{approval_id}/approve",
        "admin_approve",
        "Approve a pending request (the checker: not its maker); it applies at its time",
        200,
        "Approval",
        body=APPROVAL_DECISION,
        body_optional=True,
        problems=(403, 404, 409, 422),
    ),
    _route(
        "POST",
        "/v1/admin/approvals/{approval_id}/reject",
        "admin_reject",
        "Reject a pending request, with the reason (kept)",
        200,
        "Approval",
        body=APPROVAL_REJECTION,
        problems=(403, 404, 409, 422),
    ),
    _route(
        "GET",
        "/v1/admin/parameters/{kind}",
        "admin_read_parameter",
        "A parameter in force (version, digest, text) and its applied versions",
        200,
        "Parameter",
        problems=(403, 404),
    ),
    _route(
        "POST",
        "/v1/admin/loan-products/preview",
        "admin_preview_loan_product",
        "A draft loan catalog's trial calculation (needs request:loans): the quote of a "
        "product's newest version in the draft, as of the day it takes effect; nothing is "
        "recorded. Publishing is a `loans` change request (POST /v1/admin/approvals)",
        200,
        "LoanQuote",
        body=LOAN_PREVIEW,
        problems=(403, 404, 422),
    ),
    _route(
        "POST",
        "/v1/admin/loan-applications/{application_id}/decision",
        "admin_decide_loan_application",
        "Approve or decline a loan application the risk control referred (a loan officer or "
        "an administrator); the decision and its reason are recorded with the application",
        200,
        "LoanApplication",
        body=LOAN_DECISION,
        problems=(400, 403, 404, 409, 422),
    ),
    _route(
        "GET",
        "/v1/admin/audit",
        "admin_read_audit",
        "The operators' audit log: who did what, when and from where",
        200,
        "Audit",
        query={"since": SINCE, "limit": LIST_LIMIT},
        problems=(403, 422),
    ),
    _route(
        "GET",
        "/v1/admin/risk/decisions",
        "admin_risk_decisions",
        "Recorded risk decisions, newest first, by outcome",
        200,
        "RiskDecisionList",
        query={
            "outcome": F("enum", required=False, values=RISK_OUTCOMES),
            "since": SINCE,
            "limit": LIST_LIMIT,
        },
        problems=(403, 422),
    ),
    _route(
        "GET",
        "/v1/admin/risk/decisions/{transfer_id}",
        "admin_risk_decision",
        "The risk decision recorded for a transfer",
        200,
        "RiskDecision",
        problems=(403, 404, 422),
    ),
    _route(
        "GET",
        "/v1/admin/risk/reports",
        "admin_risk_reports",
        "The large-value reports of a day (decisions of report rules)",
        200,
        "RiskReports",
        query={"date": F("string", pattern=DATE_PATTERN, description="the business day")},
        problems=(403, 422),
    ),
)


class Router:
    """Static paths by dict lookup, parametrized ones by a short list of regexes."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.static: dict[str, dict[str, Route]] = {}
        self.dynamic: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        dynamic: dict[str, dict[str, Route]] = {}
        patterns: dict[str, re.Pattern[str]] = {}
        for route in routes:
            if route.pattern is None:
                self.static.setdefault(route.path, {})[route.method] = route
            else:
                dynamic.setdefault(route.path, {})[route.method] = route
                patterns[route.path] = route.pattern
        for path, methods in dynamic.items():
            self.dynamic.append((patterns[path], methods))

    def match(self, path: str) -> tuple[dict[str, Route], dict[str, str]] | None:
        methods = self.static.get(path)
        if methods is not None:
            return methods, {}
        for pattern, methods in self.dynamic:
            found = pattern.match(path)
            if found is not None:
                return methods, found.groupdict()
        return None
