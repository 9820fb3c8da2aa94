"""Channel policy, declared once per operation and protocol-neutral.

Each business operation a channel can ask for is declared here exactly once:
which channel kinds may call it, whether the account holder must consent
(the transaction password or a token from it), and whether it moves money
(and so needs an operation key: HTTP's Idempotency-Key, ISO 8583's STAN +
RRN). Every adapter names its operations by these names and calls `admit`
before the service, so a kind restriction added here holds on every wire;
the HTTP adapter generates its OpenAPI document (`x-tally-channel-kinds`,
`x-tally-consent`, the 403/401 answers) from the same declaration.

Which channels may use an operation at all is the channel registry's
(`channels/registry.py`, per channel); this module says which *kinds* of
channel the bank offers the operation at (cash only at counters and ATMs).
Rules that depend on the command's fields (a Class I opening only face to
face) stay with the service that knows the fields.

Whose data a channel may read is declared here too, per kind (`READ_SCOPES`),
and enforced by the services (`Auth.readable_account`, `readable_customer`,
`transfer_reader`) for every protocol: the bank's internal channel reads
everything, its own positions included; a counter (a teller acts) reads any
customer's data but no bank-internal account; a customer-facing channel
(wechat, app) reads one customer's data, proven by that customer's session
(`open_session`) or a transaction token for the account; an ATM reads the
account of the card inserted, proven by the token its PIN bought; a partner
bank (open_api) reads nothing: it may credit (`incoming_transfer`, idempotent
by its clearing reference, and `incoming_credits`, ISO 20022 pacs.008), return a
transfer of ours (`payment_return`, pacs.004) and check an account
(`verify_account`), nothing else; an account's statement (`read_statement`,
camt.053; `read_notification`, camt.054) is read under the read scope like its
history.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.services.commands import Caller
from core.services.refusals import kind_refused

CHANNEL_KINDS = ("wechat", "app", "counter", "atm", "open_api", "internal")
COUNTER_ONLY = ("counter",)
CASH_KINDS = ("counter", "atm")
CUSTOMER_KINDS = ("wechat", "app")  # act for one customer: a session or a token proves it
# Every kind but the partner banks': they may credit and verify, nothing else.
BANK_KINDS = ("wechat", "app", "counter", "atm", "internal")
# Who acts for a customer or reads customers: the customer-facing channels, a teller, the bank.
SERVING_KINDS = ("wechat", "app", "counter", "internal")
PARTNER_KINDS = ("open_api", "internal")  # clearing in, account verification


class ReadScope(enum.Enum):
    """Whose data a channel kind may read (enforced by `core.services.auth.Auth`)."""

    BANK = "bank"  # everything, the bank's own (internal) accounts included
    CUSTOMERS = "customers"  # any customer's data; no bank-internal account (a teller acts)
    CUSTOMER = "customer"  # one customer: a customer session, or a token for one account
    ACCOUNT = "account"  # one account: a transaction token (an ATM: card + PIN)
    NONE = "none"  # no reads at all


READ_SCOPES: dict[str, ReadScope] = {
    "wechat": ReadScope.CUSTOMER,
    "app": ReadScope.CUSTOMER,
    "counter": ReadScope.CUSTOMERS,
    "atm": ReadScope.ACCOUNT,
    "open_api": ReadScope.NONE,
    "internal": ReadScope.BANK,
}
assert tuple(READ_SCOPES) == CHANNEL_KINDS
# The kinds that may read accounts, histories and transfers at all (each within its scope).
READ_KINDS = tuple(kind for kind, scope in READ_SCOPES.items() if scope != ReadScope.NONE)
INTERNAL_KIND = "internal"  # the bank's own back office: the one kind trusted with the ledger
COUNTER_KIND = "counter"  # a branch counter: tellers and supervisors act there
INTERNAL_ONLY = (INTERNAL_KIND,)
# Operators (core/services/operators.py) are not channels: they sign as `op:NAME` and reach
# only the operations offered at this pseudo-kind (the /v1/admin/ routes), which no channel
# kind is offered (so a registry's "*" never grants them). What an operator may do there is
# their role's (`permission`, checked by the adapter for reads; the approvals service
# checks `request:<kind>` and `approve:<kind>` itself).
OPERATOR_KIND = "operator"
OPERATOR_ONLY = (OPERATOR_KIND,)
# The steps of real-name verification (core/services/verification.py), in the order a
# customer meets them. Each step is one check with its own state, attempts and expiry; the
# customer is `verified` once every step their channel's policy requires has passed.
CUSTOMER_STEPS = ("id_structure", "identity_database", "id_ocr", "liveness", "teller_confirmation")
# A card binding's steps: the issuer's five-element check, then the bank's SMS code.
BINDING_STEPS = ("issuer_card", "sms_code")
# A remote opening proves the person by their ID document and their live face; at a counter
# the teller sees both, so the teller's confirmation replaces the OCR and the liveness.
REMOTE = ("id_structure", "identity_database", "id_ocr", "liveness")
# The floor per kind: a channel registry may add steps to a channel, never drop one of these.
VERIFICATION_OF_KIND: dict[str, tuple[str, ...]] = {
    "wechat": REMOTE,
    "app": REMOTE,
    "internal": REMOTE,
    "counter": ("id_structure", "identity_database", "teller_confirmation"),
    "atm": (),
    "open_api": (),
}
BINDING_OF_KIND: dict[str, tuple[str, ...]] = {
    "wechat": BINDING_STEPS,
    "app": BINDING_STEPS,
    "internal": BINDING_STEPS,
    "counter": ("issuer_card",),
    "atm": (),
    "open_api": (),
}
assert set(VERIFICATION_OF_KIND) == set(BINDING_OF_KIND) == set(CHANNEL_KINDS)


def _with_floor(
    steps: tuple[str, ...] | None, floor: tuple[str, ...], order: tuple[str, ...]
) -> tuple[str, ...]:
    """`steps` (None: none declared) and `floor` together, in the canonical `order`."""
    wanted = set(floor) | set(steps or ())
    return tuple(step for step in order if step in wanted)


@dataclass(frozen=True, slots=True)
class VerificationPolicy:
    """Which verification steps each channel requires, by the channel's ledger id (from
    the channel registry's `verification` and `card_binding` keys); a channel absent
    here requires its kind's floor, and a declared list never drops a floor step."""

    customer: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    binding: Mapping[int, tuple[str, ...]] = field(default_factory=dict)

    def customer_steps(self, caller: Caller) -> tuple[str, ...]:
        """The steps a customer registered at `caller`'s channel must pass."""
        return _with_floor(
            self.customer.get(caller.ledger_id),
            VERIFICATION_OF_KIND.get(caller.kind, ()),
            CUSTOMER_STEPS,
        )

    def binding_steps(self, caller: Caller) -> tuple[str, ...]:
        """The steps a card binding started at `caller`'s channel must pass."""
        return _with_floor(
            self.binding.get(caller.ledger_id), BINDING_OF_KIND.get(caller.kind, ()), BINDING_STEPS
        )


DEFAULT_VERIFICATION_POLICY = VerificationPolicy()


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation's channel policy."""

    name: str
    kinds: tuple[str, ...] = ()  # channel kinds that may call it (empty: any kind)
    kinds_what: str = ""  # what a refused channel is told it cannot do ("Cash")
    consent: bool = False  # the holder consents: transaction password or token
    money: bool = False  # moves money: an operation key (Idempotency-Key) is required
    # Operator operations: the permission the operator's role needs ("read:audit"...;
    # "" = the service decides, e.g. request:<kind> / approve:<kind>).
    permission: str = ""

    def __post_init__(self) -> None:
        assert bool(self.kinds) == bool(self.kinds_what), self.name


def _declare(*operations: Operation) -> dict[str, Operation]:
    declared = {operation.name: operation for operation in operations}
    assert len(declared) == len(operations), "an operation declared twice"
    return declared


OPERATIONS: dict[str, Operation] = _declare(
    Operation("register_customer", kinds=SERVING_KINDS, kinds_what="Registering a customer"),
    Operation("read_customer", kinds=SERVING_KINDS, kinds_what="Reading a customer"),
    Operation(
        "open_session", kinds=CUSTOMER_KINDS, kinds_what="A customer session (acting for one)"
    ),
    Operation("end_session", kinds=CUSTOMER_KINDS, kinds_what="A customer session"),
    Operation("open_account", kinds=SERVING_KINDS, kinds_what="Opening an account"),
    Operation("read_account", kinds=READ_KINDS, kinds_what="Reading an account"),
    Operation("read_history", kinds=READ_KINDS, kinds_what="Reading an account's history"),
    Operation("read_transfer", kinds=READ_KINDS, kinds_what="Reading a transfer"),
    Operation(
        "verify_account", kinds=PARTNER_KINDS, kinds_what="Verifying an account holder's name"
    ),
    Operation("set_password", kinds=BANK_KINDS, kinds_what="Changing a transaction password"),
    Operation(
        "reset_password",
        kinds=COUNTER_ONLY,
        kinds_what="Resetting a transaction password (face to face)",
    ),
    Operation("issue_token", kinds=BANK_KINDS, kinds_what="A transaction token"),
    Operation("close_account", kinds=BANK_KINDS, kinds_what="Closing an account", consent=True),
    Operation("face_to_face", kinds=COUNTER_ONLY, kinds_what="Face-to-face verification"),
    Operation(
        "set_non_bound_inflow",
        kinds=BANK_KINDS,
        kinds_what="Changing an account's inflow setting",
        consent=True,
    ),
    Operation("topup", kinds=BANK_KINDS, kinds_what="A top-up", consent=True, money=True),
    Operation("withdraw", kinds=BANK_KINDS, kinds_what="A withdrawal", consent=True, money=True),
    Operation("cash_deposit", kinds=CASH_KINDS, kinds_what="Cash", money=True),
    Operation("cash_withdrawal", kinds=CASH_KINDS, kinds_what="Cash", consent=True, money=True),
    Operation("transfer", kinds=BANK_KINDS, kinds_what="A transfer", consent=True, money=True),
    # Any accounts, codes and flags, no holder's consent: a ledger API, the bank's own.
    Operation("batch", kinds=INTERNAL_ONLY, kinds_what="The batch route", money=True),
    Operation("reversal", money=True),
    Operation(
        "external_transfer",
        kinds=BANK_KINDS,
        kinds_what="A transfer to another bank",
        consent=True,
        money=True,
    ),
    Operation(
        "incoming_transfer",
        kinds=PARTNER_KINDS,
        kinds_what="Crediting money from another bank (clearing)",
        money=True,
    ),
    # ISO 20022 (channels/iso20022/http.py): a partner's pacs.008 credits our customers
    # (each credit idempotent by its sender and TxId, like incoming_transfer's clearing
    # reference), its pacs.004 returns an external transfer of ours; statements (camt.053)
    # and notifications (camt.054) are reads, scoped like an account's history.
    Operation(
        "incoming_credits",
        kinds=PARTNER_KINDS,
        kinds_what="Crediting money from another bank (ISO 20022 pacs.008)",
        money=True,
    ),
    Operation(
        "payment_return",
        kinds=PARTNER_KINDS,
        kinds_what="Returning a transfer from this bank (ISO 20022 pacs.004)",
        money=True,
    ),
    Operation("read_statement", kinds=READ_KINDS, kinds_what="An account statement (camt.053)"),
    Operation(
        "read_notification", kinds=READ_KINDS, kinds_what="An account notification (camt.054)"
    ),
    Operation("payment", kinds=BANK_KINDS, kinds_what="A payment", consent=True, money=True),
    Operation("capture", kinds=BANK_KINDS, kinds_what="Capturing a payment", money=True),
    Operation("void", kinds=BANK_KINDS, kinds_what="Voiding a payment", money=True),
    # Deposits (core/services/deposits.py): the catalog and a quote are public figures; a
    # fixed deposit is opened and withdrawn where a customer is served (an ATM posts cash
    # only), with the holder's consent; interest is corrected by the bank alone.
    Operation("read_products"),
    Operation("quote_fixed_deposit"),
    Operation(
        "open_fixed_deposit",
        kinds=SERVING_KINDS,
        kinds_what="Opening a fixed deposit",
        consent=True,
        money=True,
    ),
    Operation(
        "withdraw_fixed_deposit",
        kinds=SERVING_KINDS,
        kinds_what="Withdrawing a fixed deposit early",
        consent=True,
        money=True,
    ),
    Operation("read_fixed_deposit", kinds=READ_KINDS, kinds_what="Reading a fixed deposit"),
    Operation(
        "quote_withdrawal", kinds=READ_KINDS, kinds_what="Quoting a fixed deposit's withdrawal"
    ),
    Operation("read_interest", kinds=READ_KINDS, kinds_what="Reading an account's interest"),
    Operation(
        "correct_interest", kinds=INTERNAL_ONLY, kinds_what="An interest correction", money=True
    ),
    # Loans (core/services/loans.py): the catalog (in read_products) and a trial
    # calculation are public figures, like the deposits': any channel granted them.
    Operation("quote_loan"),
    # Loan accounts (core/services/loan_accounts.py): applied for, signed, disbursed and
    # repaid where a customer is served; each transition is one operation with an operation
    # key (`money`: the Idempotency-Key, so a retry meets the first answer), the signature
    # and a repayment with the holder's consent. The reads are scoped like a fixed
    # deposit's (wechat/app: the customer's session).
    Operation("apply_loan", kinds=SERVING_KINDS, kinds_what="Applying for a loan", money=True),
    Operation(
        "read_loan_application", kinds=SERVING_KINDS, kinds_what="Reading a loan application"
    ),
    Operation(
        "sign_loan",
        kinds=SERVING_KINDS,
        kinds_what="Signing a loan contract",
        consent=True,
        money=True,
    ),
    Operation("disburse_loan", kinds=SERVING_KINDS, kinds_what="Disbursing a loan", money=True),
    Operation("read_loan", kinds=SERVING_KINDS, kinds_what="Reading a loan"),
    Operation("read_loan_schedule", kinds=SERVING_KINDS, kinds_what="Reading a loan's schedule"),
    Operation(
        "repay_loan", kinds=SERVING_KINDS, kinds_what="Repaying a loan", consent=True, money=True
    ),
    Operation("read_customer_loans", kinds=SERVING_KINDS, kinds_what="Reading a customer's loans"),
    # Real-name verification (core/services/verification.py): the steps of a customer's
    # verification and of a card binding, and the bank's SMS codes. A new customer has no
    # account and so no session: their registering channel acts for them (or a counter,
    # or the bank's internal channel); the service checks which.
    Operation(
        "submit_id_document",
        kinds=(*CUSTOMER_KINDS, INTERNAL_KIND),
        kinds_what="Submitting an ID document",
    ),
    Operation(
        "submit_liveness",
        kinds=(*CUSTOMER_KINDS, INTERNAL_KIND),
        kinds_what="A liveness check",
    ),
    Operation(
        "confirm_in_person", kinds=COUNTER_ONLY, kinds_what="Confirming a customer in person"
    ),
    Operation("read_verification", kinds=SERVING_KINDS, kinds_what="Reading a verification"),
    Operation("bind_card", kinds=SERVING_KINDS, kinds_what="Binding a card"),
    Operation("read_card_binding", kinds=SERVING_KINDS, kinds_what="Reading a card binding"),
    Operation(
        "request_sms_code",
        kinds=(*CUSTOMER_KINDS, INTERNAL_KIND),
        kinds_what="An SMS one-time code",
    ),
    Operation(
        "confirm_sms_code",
        kinds=(*CUSTOMER_KINDS, INTERNAL_KIND),
        kinds_what="Confirming an SMS one-time code",
    ),
    # Risk control (core/services/risk.py): what the rules decided and which rules are in
    # force stay inside the bank (a fraudster must not learn them): the internal channel,
    # and operators with read:risk (the admin routes below).
    Operation("read_risk_decision", kinds=INTERNAL_ONLY, kinds_what="Reading a risk decision"),
    Operation("read_risk_rules", kinds=INTERNAL_ONLY, kinds_what="Reading the risk rules"),
    # Maker-checker approvals and the operators' reads (core/services/approvals.py), at
    # the /v1/admin/ routes, signed by an operator.
    *(
        Operation(name, kinds=OPERATOR_ONLY, kinds_what="Administration", permission=permission)
        for name, permission in (
            ("admin_request", ""),
            ("admin_list_approvals", "read:approvals"),
            ("admin_read_approval", "read:approvals"),
            ("admin_approve", ""),
            ("admin_reject", ""),
            ("admin_read_parameter", "read:approvals"),
            ("admin_read_audit", "read:audit"),
            ("admin_risk_decisions", "read:risk"),
            ("admin_risk_decision", "read:risk"),
            ("admin_risk_reports", "read:risk"),
            # A draft loan catalog's trial calculation: the loans service checks
            # request:loans (the product manager who will request the change).
            ("admin_preview_loan_product", ""),
        )
    ),
    # A referred loan application's decision (a loan officer or an administrator: the loan
    # accounts service checks the role); with an operation key like every transition.
    Operation(
        "admin_decide_loan_application",
        kinds=OPERATOR_ONLY,
        kinds_what="Administration",
        money=True,
    ),
)


def admit(caller: Caller, operation: Operation) -> None:
    """The generic guard every adapter calls before the service: the caller's channel
    kind must be one the operation is offered at (`Refused` CHANNEL_KIND_NOT_ALLOWED)."""
    if operation.kinds and caller.kind not in operation.kinds:
        raise kind_refused(caller, operation.kinds, operation.kinds_what)


def offered(operation: str, kind: str) -> bool:
    """Whether `operation` is offered at channels of `kind` (the registry refuses a channel
    granted an operation its kind is not offered, and expands "*" to the offered ones)."""
    kinds = OPERATIONS[operation].kinds
    return not kinds or kind in kinds


def read_scope(caller: Caller) -> ReadScope:
    """Whose data `caller` may read (an unknown kind reads nothing)."""
    return READ_SCOPES.get(caller.kind, ReadScope.NONE)
