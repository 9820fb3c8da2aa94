"""Loan accounts: applications, signing, disbursement, early repayment, and the reads of a
loan. Typed commands in, typed results out, nothing of HTTP.

Slice 2 of issue 16. The products and the arithmetic are slice 1's (limits/loans.py,
ledger/loans.py, core/services/loans.py); the loan's state in the ledger, its terms and
the day-end collection's twin are the loan book's (ledger/loan_book.py).

Applications
------------

`apply` prices the request exactly as a quote does (`Loans.quote`: the product version
in force today, its rate, fees, repayment day and schedule), then decides at once:

- **quota**: the principal plus what the customer already owes or has been granted
  (the outstanding principal of their live loans, and the principal of their
  applications approved, referred or signed and not yet paid out) must not pass their
  credit limit (`Approvals.credit_limit`, an approved `credit_limit` request; 0: none
  approved). Over it: refused LOAN_QUOTA_EXCEEDED (`limit_minor`, `used_minor`).
- **exposure**: where the product has an `exposure_max`, the same sum over every
  customer's loans and applications of the product, plus this one, must not pass it
  (LOAN_EXPOSURE_EXCEEDED). Refusals record nothing.
- **anti-fraud**: the would-be disbursement (loan funding -> the disbursement account,
  code LOAN_DISBURSEMENT, the amount paid out) is screened by the risk stage
  (`Risk.screen`) at the caller, with the device context the channel sent: nothing
  fired -> approved; block -> declined; challenge, delay or review -> referred, for an
  operator with `decide:loans` (a loan officer or an administrator) to approve or
  decline (`decide`). The outcome, the rules that fired and the rule set's version are
  recorded with the application (the rules are shown to operators only, like every
  risk decision).

States and transitions, each a typed command with an operation key:

    submitted -> approved | declined | referred        (apply: the quota and the screen)
    referred  -> approved | declined                   (decide: an operator)
    approved  -> signed                                (sign: the customer consents)
    signed    -> disbursed                             (disburse)

Each transition is durable before it is answered, and recorded with who, when, the
digest of its operation key and the fingerprint of its fields: a retry of the key
answers the application as it is now (`replayed`), the key with other fields is
IDEMPOTENCY_KEY_REUSED, and a transition from another state is LOAN_APPLICATION_STATE
(with `state`). The application id derives from the channel and the apply key, so two
applies with one key are one application. Signing is consented to like a debit of the
repayment account (`Auth.authorize_debit`: its transaction password or a token, and the
channel's second factor, recorded). Commands of one application run one at a time.

Disbursement
------------

Like a fixed deposit's opening (core/services/deposits.py): the loan gets its own
ledger account (kind LOAN, the rules' loan product, a number with the development BIN
623506 and a Luhn digit), recorded with the customer (class `LOAN_CLASS`) in the same
durable change as the loan's record (`loan/<account id>`: the contract and its segment
0); then ONE `POST_WITH_ROWS` entry formed from the ledger's state when it is applied
(`make(ledger)`): the transfer funding -> the customer's account of the principal less
the upfront fee (`ledger.loan_book.disbursement_parts`, at the bank's channel, the
operation key's transfer id) and the loan's first row, written iff the transfer posts.
The kernel enforces a Class III balance cap by itself: then nothing is posted, the loan
account is closed again and the application stays signed (a retry with another key
tries again). A second disbursement is refused LOAN_ALREADY_DISBURSED; `make` also
returns nothing when the row is open already. The loan account's balance stays 0
forever: the loan's state is its row.

The contract: the application's product version, rate, method, term, repayment day and
fees; the schedule starts on the disbursement day (`ledger.loans.schedule`). The terms
table (`Lifecycle.loan_terms`, `ledger.loan_book.LoanTermsTable`) holds each live loan's
current segment (and, while an early repayment is on its way, the tentative next one),
kept in step with the `loan/` records: rebuilt when the store opens (`complete_start`,
before the server is ready: the slots of the loan and repayment accounts read from the
ledger), put before a disbursement's entry is queued, and dropped when a loan closes.
The day-end hands `loan_terms.packed()` to the collection kernel.

Early repayment
---------------

`repay` takes `amount_minor` (or everything owed today) from the repayment account, with
its holder's consent, as ONE transfer repayment account -> loan funding
(`repayment_parts`, LOAN_REPAYMENT, the bank's channel) with the loan's new row:

1. the instalments due on or before today that the day-end has not yet moved into
   arrears fall due first (the day-end's step 1, from the current segment's schedule);
2. the arrears are paid, in the product's order (penalty, interest, principal by
   default), each in full before the next (`ledger.loans.allocate`);
3. what is left prepays the current segment (`ledger.loans.prepay`): the interest
   accrued on the remaining principal since the last due day (actual days / 360) first,
   the rest reduces the principal; the remaining instalments are recomputed in the
   product's mode (`reduce_instalment`, `reduce_term`) as a new segment, whose terms are
   recorded (tentative) before the entry is queued. The product's prepayment fee (% of
   the principal prepaid) is taken on top, in the same transfer.

More than everything owed today is refused LOAN_REPAYMENT_EXCEEDS_OWED (`owed_minor`)
unless the product's `excess` is `full` (then only what is owed is taken); a remainder
after the arrears that does not exceed the accrued interest is LOAN_REPAYMENT_TOO_SMALL
(`minimum_minor`); a prepayment the product does not take (or not yet:
`after_months`) is LOAN_PREPAYMENT_NOT_ALLOWED. Everything owed paid: the row is CLOSED
and its terms leave the table. The entry's `make` checks that the row is the one the
figures were computed from; if the day-end changed it meanwhile the figures are
computed and recorded again (at most `STALE_ATTEMPTS_MAX` times).

Idempotency: the transfer id derives from the channel and the key; the repayment's
record (`loanpay/<channel>/<key digest>`: the fingerprint of loan and amount, and the
figures) is durable before the entry is queued. A retry of the key is answered from it
and the ledger's transfer (the same figures, or the first refusal), the key with other
fields is IDEMPOTENCY_KEY_REUSED.

Records (customer state, `OTHER_SERVICE_PREFIXES`, JSON)
-------------------------------------------------------

    loanapp/<application id>         the application (`_application_record`)
    loan/<loan account id>           contract and segments (`Loan.to_record`)
    loanpay/<channel>/<key digest>   one early repayment (`_repayment_record`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson

from core.entries import EntryKind, pack_post_with_rows_payload
from core.services import identity
from core.services.accounts import LOAN_CLASS, Accounts
from core.services.auth import Auth
from core.services.commands import (
    NO_PROOF,
    ApplyForLoan,
    Caller,
    DecideLoanApplication,
    DisburseLoan,
    Proof,
    QuoteLoan,
    RepayLoan,
    RiskContext,
    SignLoanApplication,
)
from core.services.customers import Customers
from core.services.lifecycle import Lifecycle
from core.services.loans import Loans, fee_minor, percent_text
from core.services.operators import DECIDE_LOANS
from core.services.payments import Payments
from core.services.records import date_of_day, rfc3339
from core.services.refusals import Code, Refusal, Refused, refused, transfer_refused
from core.services.results import (
    LoanApplicationView,
    LoanInstalment,
    LoanList,
    LoanRepaid,
    LoanScheduleItem,
    LoanScheduleView,
    LoanTransition,
    LoanView,
)
from core.services.serial import OneAtATime
from core.services.state import AccountMeta, Change, operation_key_digest
from core.services.state import account_record as meta_record
from ledger.constants import BANK_CHANNEL, LOAN_FUNDING_ID
from ledger.loan_book import (
    SEGMENT_MAX,
    LoanFlags,
    LoanRow,
    LoanTerms,
    LoanTermsTable,
    allocation_code,
    disbursement_parts,
    first_row,
    instalment,
    loan_row_view,
    pack_loan_row,
    repayment_parts,
    terms_of_segment,
)
from ledger.loans import (
    Method,
    Schedule,
    allocate,
    level_payment_minor,
    period_interest_minor,
    prepay,
)
from ledger.loans import schedule as loan_schedule
from ledger.records import account_view, pack_transfer, transfer_view
from ledger.types import (
    AccountFlags,
    AccountStatus,
    AccountUpdateResult,
    CreateAccountResult,
    CreateTransferResult,
    TransferCode,
)
from limits.calendar import add_months, civil_of_day
from limits.loans import LoanProduct
from limits.rates import format_rate
from limits.risk_layout import Outcome

if TYPE_CHECKING:
    from core.services.approvals import Approvals
    from core.services.risk import Risk

logger = logging.getLogger("tally.services")
R = CreateTransferResult

# A customer's loans are accounts too (AccountKind.LOAN): listed with their accounts.
LOAN_BIN: Final = "623506"  # development BIN of loan account numbers (fixed deposits: 623505)
PAYMENT_CLASSES: Final = (1, 2, 3)  # a loan pays out to and is repaid from these
PAYMENT_CLASS_NAMES: Final = ("class_i", "class_ii", "class_iii")
# No transfer ever touches a loan account: its balance stays 0 (the loan is its row).
LOAN_ACCOUNT_FLAGS: Final = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS

SUBMITTED: Final = "submitted"
APPROVED: Final = "approved"
DECLINED: Final = "declined"
REFERRED: Final = "referred"
SIGNED: Final = "signed"
DISBURSED: Final = "disbursed"
STATES: Final = (SUBMITTED, APPROVED, DECLINED, REFERRED, SIGNED, DISBURSED)
RESERVING: Final = frozenset({SUBMITTED, APPROVED, REFERRED, SIGNED})  # count in the quota
SYSTEM: Final = "system"  # who moves an application by itself (the quota and the screen)
OPERATOR_PREFIX: Final = "op:"  # the `by` of an operator's transition

APPLICATION_PREFIX: Final = b"loanapp/"
LOAN_PREFIX: Final = b"loan/"
REPAYMENT_PREFIX: Final = b"loanpay/"
PURPOSE_LENGTH_MAX: Final = 200
REASON_LENGTH_MAX: Final = 500
STALE_ATTEMPTS_MAX: Final = 3  # a repayment recomputed when the day-end changed its row
SCHEDULE_CACHE_MAX: Final = 4096  # current segments' schedules kept (each a few KB)
SCREEN_KEY_PREFIX: Final = "\0loan-application\0"  # the screened transfer's id, apart


# --- The loan's record: contract and segments --------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """One terms segment of a loan: segment 0 from the disbursement, each next one from an
    early repayment (`prepay` of the segment before with these arguments). The derived
    figures (principal, count, first period, first due day, level) are what its terms
    entry is made of; replaying the prepayments reproduces them (asserted)."""

    number: int
    principal_minor: int
    count: int  # the segment's term in months (the terms' `count`)
    first_period_days: int | None  # None: the first instalment charges a month
    first_due_day: int
    first_number: int  # the first instalment's number in the original schedule
    level_minor: int  # equal instalment: the level payment; equal principal: the principal
    start_day: int  # the disbursement day, or the early repayment's
    paid_through: int  # instalments of the segment before that had fallen due
    prepay_minor: int  # the amount `prepay` was given (accrued interest + principal)
    mode: str  # the prepayment mode ("" for segment 0)

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Loan:
    """A loan's contract as recorded at disbursement (`loan/<account id>`), its segments."""

    account_id: int
    application_id: str
    customer_id: str
    product_id: str
    product_version: int
    method: str
    principal_minor: int
    rate_ppm: int
    term_months: int
    start_day: int
    repayment_day: int
    repayment_account_id: int
    disbursement_account_id: int
    grace_days: int
    uplift_permille: int
    allocation: tuple[str, ...]
    prepayment_allowed: bool
    prepayment_after_months: int
    prepayment_fee_ppm: int
    prepayment_excess: str
    prepayment_mode: str
    upfront_fee_minor: int
    monthly_fee_minor: int
    transfer_id: int  # the disbursement's
    segments: tuple[Segment, ...]

    def to_record(self) -> dict[str, Any]:
        record = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        record.update(
            account_id=str(self.account_id),
            repayment_account_id=str(self.repayment_account_id),
            disbursement_account_id=str(self.disbursement_account_id),
            allocation=list(self.allocation),
            transfer_id=f"{self.transfer_id:032x}",
            segments=[segment.to_record() for segment in self.segments],
        )
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Loan:
        fields = dict(record)
        fields.update(
            account_id=int(record["account_id"]),
            repayment_account_id=int(record["repayment_account_id"]),
            disbursement_account_id=int(record["disbursement_account_id"]),
            allocation=tuple(record["allocation"]),
            transfer_id=int(record["transfer_id"], 16),
            segments=tuple(Segment(**segment) for segment in record["segments"]),
        )
        return cls(**fields)

    def key(self) -> bytes:
        return LOAN_PREFIX + str(self.account_id).encode()

    def segment(self, number: int) -> Segment:
        found = self.segments[number]
        assert found.number == number, (found, number)
        return found


@dataclass(frozen=True, slots=True)
class RepaymentPlan:
    """What an early repayment of one loan on one day takes and leaves (`plan_repayment`)."""

    kind: str  # "arrears", "partial", "full"
    total_minor: int  # taken from the repayment account (the fee included)
    penalty_minor: int
    interest_minor: int  # arrears interest paid
    accrued_interest_minor: int  # since the last due day, paid with a prepayment
    principal_minor: int  # arrears principal paid
    prepaid_principal_minor: int
    fee_minor: int
    owed_minor: int  # everything owed that day, before
    row: LoanRow  # the row after
    remainder: Schedule | None  # the new segment's schedule (a partial prepayment)
    prepay_minor: int  # what `prepay` was given (accrued interest + principal)
    paid_through: int  # instalments of the current segment fallen due (prepay's argument)


# --- The arithmetic, as functions --------------------------------------------------------


def segment_schedule(loan: Loan, number: int) -> Schedule:
    """The schedule of segment `number` of `loan`: the disbursement's schedule, then each
    recorded early repayment replayed by `ledger.loans.prepay` (deterministic), each
    checked against its recorded figures."""
    plan = loan_schedule(
        loan.principal_minor, loan.rate_ppm, loan.term_months, Method(loan.method),
        loan.start_day, loan.repayment_day, upfront_fee_minor=loan.upfront_fee_minor,
        monthly_fee_minor=loan.monthly_fee_minor,
    )  # fmt: skip
    _check_segment(loan.segment(0), plan)
    for segment in loan.segments[1 : number + 1]:
        _, plan = prepay(
            plan, segment.paid_through, segment.start_day, segment.prepay_minor,
            "reduce_term" if segment.mode == "reduce_term" else "reduce_instalment",
        )  # fmt: skip
        _check_segment(segment, plan)
    return plan


def _check_segment(segment: Segment, plan: Schedule) -> None:
    assert plan.principal_minor == segment.principal_minor, (segment, plan.principal_minor)
    assert plan.term_months == segment.count, (segment, plan.term_months)
    assert plan.instalments[0].due_day == segment.first_due_day, segment
    assert plan.instalments[0].number == segment.first_number, segment


def level_of(method: str, rate_ppm: int, principal_minor: int, count: int) -> int:
    """A segment's terms level: the level payment (equal instalment), or the principal
    (equal principal, or any method at a rate of 0): `terms_of_segment`'s rule."""
    if Method(method) is Method.EQUAL_PRINCIPAL or rate_ppm == 0:
        return principal_minor
    return level_payment_minor(principal_minor, rate_ppm, count)


def fall_due(row: LoanRow, plan: Schedule, day: int) -> LoanRow:
    """The row once the instalments due on or before `day` (not yet moved by the day-end)
    are in arrears: the day-end's step 1, from the segment's schedule `plan`."""
    scheduled, fallen = row.scheduled_minor, row.fallen_due
    arrears_principal, arrears_interest = row.arrears_principal_minor, row.arrears_interest_minor
    due_day, overdue_since = row.next_due_day, row.overdue_since
    while due_day != 0 and due_day <= day:
        item = plan.instalments[fallen]
        assert item.due_day == due_day, (item, row)
        scheduled -= item.principal_minor
        arrears_principal += item.principal_minor
        arrears_interest += item.interest_minor + item.fee_minor
        overdue_since = overdue_since or due_day
        fallen += 1
        due_day = plan.instalments[fallen].due_day if fallen < len(plan.instalments) else 0
    remaining = plan.instalments[fallen - 1].remaining_minor if fallen else plan.principal_minor
    assert scheduled == remaining, (row, scheduled, remaining)
    return row._replace(
        scheduled_minor=scheduled, arrears_principal_minor=arrears_principal,
        arrears_interest_minor=arrears_interest, fallen_due=fallen, next_due_day=due_day,
        overdue_since=overdue_since,
    )  # fmt: skip


def plan_repayment(
    loan: Loan, plan: Schedule, row: LoanRow, day: int, requested: int | None
) -> RepaymentPlan:
    """An early repayment of `requested` fen (None: everything owed) of `loan` on `day`,
    its row `row` in segment `plan` (module docstring: arrears first in the product's
    order, the rest prepays). Refusals: LOAN_REPAYMENT_EXCEEDS_OWED,
    LOAN_PREPAYMENT_NOT_ALLOWED, LOAN_REPAYMENT_TOO_SMALL."""
    due = fall_due(row, plan, day)
    dues = {
        "penalty": due.penalty_minor,
        "interest": due.arrears_interest_minor,
        "principal": due.arrears_principal_minor,
    }
    arrears = sum(dues.values())
    paid_through = due.fallen_due
    accrued = 0
    if due.scheduled_minor > 0:
        last_day = plan.instalments[paid_through - 1].due_day if paid_through else plan.start_day
        accrued = period_interest_minor(due.scheduled_minor, loan.rate_ppm, day - last_day)
    owed = arrears + due.scheduled_minor + accrued
    amount = owed if requested is None else requested
    if amount > owed:
        if loan.prepayment_excess != "full":
            raise refused(
                Code.LOAN_REPAYMENT_EXCEEDS_OWED,
                f"{amount} fen asked; {owed} fen is owed today",
                owed_minor=owed,
                pointer="/amount_minor",
            )
        amount = owed
    paid_parts, _ = allocate(min(amount, arrears), [(name, dues[name]) for name in loan.allocation])
    paid = dict(paid_parts)
    rest = amount - sum(paid.values())
    scheduled, fallen, next_due, segment = (
        due.scheduled_minor, due.fallen_due, due.next_due_day, due.segment,
    )  # fmt: skip
    remainder: Schedule | None = None
    prepaid = fee = 0
    if rest > 0:
        _check_prepayment(loan, day, segment)
        if rest <= accrued:
            raise refused(
                Code.LOAN_REPAYMENT_TOO_SMALL,
                f"after the arrears ({arrears} fen) the {rest} fen left do not cover the "
                f"{accrued} fen of interest accrued since the last due day",
                minimum_minor=arrears + accrued + 1,
                pointer="/amount_minor",
            )
        interest, after = prepay(
            plan, paid_through, day, rest,
            "reduce_term" if loan.prepayment_mode == "reduce_term" else "reduce_instalment",
        )  # fmt: skip
        assert interest == accrued, (interest, accrued)
        prepaid = rest - accrued
        fee = fee_minor(prepaid, loan.prepayment_fee_ppm)
        scheduled = after.principal_minor
        if after.instalments:
            remainder = after
            segment, fallen, next_due = segment + 1, 0, after.instalments[0].due_day
        else:
            next_due = 0
    penalty = due.penalty_minor - paid["penalty"]
    arrears_interest = due.arrears_interest_minor - paid["interest"]
    arrears_principal = due.arrears_principal_minor - paid["principal"]
    flags, overdue_since = due.flags, due.overdue_since
    if arrears_interest + arrears_principal == 0:
        flags, overdue_since = flags & ~LoanFlags.OVERDUE, 0
    if scheduled == 0 and next_due == 0 and arrears_interest + arrears_principal + penalty == 0:
        flags |= LoanFlags.CLOSED
    after_row = due._replace(
        scheduled_minor=scheduled, arrears_principal_minor=arrears_principal,
        arrears_interest_minor=arrears_interest, penalty_minor=penalty, fallen_due=fallen,
        next_due_day=next_due, overdue_since=overdue_since, segment=segment, flags=int(flags),
    )  # fmt: skip
    kind = "full" if flags & LoanFlags.CLOSED else "partial" if prepaid else "arrears"
    return RepaymentPlan(
        kind, amount + fee, paid["penalty"], paid["interest"], accrued if rest else 0,
        paid["principal"], prepaid, fee, owed, after_row, remainder, rest, paid_through,
    )  # fmt: skip


def _check_prepayment(loan: Loan, day: int, segment: int) -> None:
    """LOAN_PREPAYMENT_NOT_ALLOWED unless the product takes a prepayment on `day` (and a
    new segment is still possible: the row's segment is a u8)."""
    if not loan.prepayment_allowed:
        raise refused(
            Code.LOAN_PREPAYMENT_NOT_ALLOWED,
            f"{loan.product_id} takes no early repayment beyond what is due",
            allowed_from=None,
        )
    allowed_from = add_months(loan.start_day, loan.prepayment_after_months)
    if day < allowed_from:
        raise refused(
            Code.LOAN_PREPAYMENT_NOT_ALLOWED,
            f"{loan.product_id} takes an early repayment from {date_of_day(allowed_from)}",
            allowed_from=date_of_day(allowed_from),
        )
    if segment >= SEGMENT_MAX:
        raise refused(
            Code.LOAN_PREPAYMENT_NOT_ALLOWED,
            f"the loan was prepaid {SEGMENT_MAX} times: repay all of it instead",
            allowed_from=None,
        )


class _Stale(Exception):
    """Raised by a repayment's `make`: the row is not the one its figures came from."""


# --- The service --------------------------------------------------------------------------


class LoanAccounts:
    """Loan applications, disbursement, early repayment and the reads of loans, over the
    bank's runtime and the services they take figures and consent from (module
    docstring)."""

    def __init__(
        self,
        core: Lifecycle,
        auth: Auth,
        customers: Customers,
        accounts: Accounts,
        payments: Payments,
        approvals: Approvals,
        loans: Loans,
        risk: Risk,
    ) -> None:
        self.core = core
        self.auth = auth
        self.customers = customers
        self.accounts = accounts
        self.payments = payments
        self.approvals = approvals
        self.loans = loans
        self.risk = risk
        self.ids = core.ids
        self._applications: dict[str, dict[str, Any]] = {}
        self._loans: dict[int, Loan] = {}
        self._repayments: dict[tuple[str, str], dict[str, Any]] = {}
        # (who, key digest) -> (step, application id, fingerprint) of every transition.
        self._keys: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._slots: dict[int, tuple[int, int]] = {}  # loan -> (its slot, repayment slot)
        self._schedules: dict[tuple[int, tuple[Segment, ...]], Schedule] = {}
        self._in_flight: dict[Hashable, anyio.Event] = {}
        # Quota and exposure are checked and the application recorded under this lock, so
        # two applications cannot both pass on the same headroom.
        self._admitting = anyio.Lock()
        core.on_state_loaded.append(self.on_state_loaded)

    # --- start ------------------------------------------------------------------------

    def on_state_loaded(self, state: Mapping[bytes, bytes]) -> None:
        """Rebuild the applications, loans and repayments from the recovered state (each
        time the store opens); the terms table waits for the ledger (`complete_start`)."""
        self._applications, self._loans, self._repayments, self._keys = {}, {}, {}, {}
        self._slots, self._schedules = {}, {}
        self.core.loan_terms = LoanTermsTable()
        for key, value in state.items():
            if key.startswith(APPLICATION_PREFIX):
                self._index_application(orjson.loads(value))
            elif key.startswith(LOAN_PREFIX):
                loan = Loan.from_record(orjson.loads(value))
                assert loan.key() == key, key
                self._loans[loan.account_id] = loan
            elif key.startswith(REPAYMENT_PREFIX):
                record = orjson.loads(value)
                self._repayments[(record["c"], record["h"])] = record

    async def complete_start(self) -> None:
        """Once the engine runs, before the server is ready: create the loan accounts a
        crash left unopened in the ledger, rebuild the terms table of every live loan
        from the records and the ledger's slots, and complete the disbursements whose
        entry posted before their application recorded it."""
        state = self.core.customer_state()
        metas = [
            meta
            for meta in state.accounts.values()
            if meta.account_class == LOAN_CLASS and not meta.closed
        ]
        ids = [meta.account_id for meta in metas]
        missing = await self.core.read(
            lambda ledger: {i for i in ids if ledger.lookup_account(i) is None}
        )
        for meta in metas:
            if meta.account_id in missing:
                await self._create_in_ledger(meta)
        loans = list(self._loans.values())

        def read(ledger: Any) -> list[tuple[int, int, bytes | None]]:
            return [
                (
                    ledger.account_slot(loan.account_id),
                    ledger.account_slot(loan.repayment_account_id),
                    ledger.deposit_row(loan.account_id),
                )
                for loan in loans
            ]

        table = LoanTermsTable()
        for loan, (slot, repayment_slot, raw) in zip(
            loans, await self.core.read(read), strict=True
        ):
            if slot < 0 or raw is None:
                continue
            self._slots[loan.account_id] = (slot, repayment_slot)
            row = loan_row_view(raw)
            assert row.segment < len(loan.segments), (loan.account_id, row)
            if row.is_live:
                table.put(loan.account_id, self._terms(loan, loan.segment(row.segment)))
        self.core.loan_terms = table
        await self._complete_disbursements()

    async def _complete_disbursements(self) -> None:
        """Applications still `signed` whose loan's row is open: their entry posted and the
        answer was lost (a crash); recorded as disbursed by the attempt that posted it."""
        signed = [
            record
            for record in self._applications.values()
            if record["state"] == SIGNED and record.get("account")
        ]
        ids = [int(record["account"]) for record in signed]
        rows = await self.core.read(lambda ledger: [ledger.deposit_row(i) for i in ids])
        for record, raw in zip(signed, rows, strict=True):
            if raw is not None and loan_row_view(raw).flags & LoanFlags.OPEN:
                await self._record_disbursed(record)

    # --- applications ---------------------------------------------------------------

    async def apply(self, command: ApplyForLoan) -> LoanApplicationView:
        """Apply for a loan (module docstring: pricing, quota, exposure, the risk screen);
        the application once durable, in its state after the screen: approved,
        declined or referred.

        Refusals, in this order: the read scope of a one-customer channel (a session);
        IDEMPOTENCY_KEY_REUSED; CUSTOMER_NOT_FOUND; INVALID_FIELD (`purpose` too long);
        CUSTOMER_ACCOUNT_NOT_FOUND, ACCOUNT_NOT_CUSTOMERS, LOAN_ACCOUNT_NOT_ALLOWED for the
        disbursement or repayment account; the quote's (LOAN_PRODUCT_UNKNOWN,
        LOAN_AMOUNT_OUT_OF_RANGE, LOAN_TERM_OUT_OF_RANGE, LOAN_METHOD_NOT_OFFERED,
        INVALID_FIELD for the repayment day, LOAN_RATE_INVALID); LOAN_QUOTA_EXCEEDED;
        LOAN_EXPOSURE_EXCEEDED. A refusal records nothing.
        """
        caller = command.caller
        self.auth.readable_customer(caller, command.customer_id, command.proof)
        digest = operation_key_digest(command.key)
        application_id = application_id_of(caller.name, digest)
        repayment_id = command.repayment_account_id or command.disbursement_account_id
        fingerprint = self._fingerprint(
            "loan_application", command.customer_id, command.product_id,
            str(command.amount_minor), str(command.term_months), command.method,
            str(command.repayment_day or ""), str(command.disbursement_account_id),
            str(repayment_id), command.purpose,
        )  # fmt: skip
        async with self._admitting:
            first = self._applications.get(application_id)
            if first is not None:
                if first["f"] != fingerprint:
                    raise refused(
                        Code.IDEMPOTENCY_KEY_REUSED, "a loan application with other fields"
                    )
                return self._view(first, replayed=True)
            customer_id = self.customers.customer_of(command.customer_id).customer_id
            if len(command.purpose) > PURPOSE_LENGTH_MAX or not command.purpose.isprintable():
                raise refused(
                    Code.INVALID_FIELD,
                    f"at most {PURPOSE_LENGTH_MAX} printable characters",
                    pointer="/purpose",
                )
            self._payment_account(customer_id, command.disbursement_account_id, "disbursement")
            self._payment_account(customer_id, repayment_id, "repayment")
            asked = QuoteLoan(
                caller, command.product_id, command.amount_minor, command.term_months,
                command.method, command.repayment_day,
            )  # fmt: skip
            quote = self.loans.quote(asked)
            product = self._product(quote.product_id, quote.product_version)
            quota = await self._quota(customer_id, product, command.amount_minor)
            screened = self._screen(
                caller, command.key, command.disbursement_account_id, quote.received_minor,
                command.context,
            )  # fmt: skip
            record = _application_record(
                application_id, command, fingerprint, digest, repayment_id, quote, product,
                self._repayment_day(product, command.repayment_day), quota, screened,
                self.core.now_ns(),
            )  # fmt: skip
            await self._commit(applications=[record])
        logger.info(
            orjson.dumps(
                {
                    "event": "loan_application",
                    "application_id": application_id,
                    "customer_id": customer_id,
                    "product_id": product.id,
                    "amount_minor": command.amount_minor,
                    "state": record["state"],
                    "risk": screened["outcome"],
                    "channel": caller.name,
                }
            ).decode()
        )
        return self._view(record)

    async def decide(self, command: DecideLoanApplication) -> LoanApplicationView:
        """An operator's decision on a referred application: approved or declined.

        Refusals: OPERATOR_NOT_PERMITTED (no `decide:loans`); LOAN_APPLICATION_NOT_FOUND;
        INVALID_FIELD (a decline without a reason, a reason too long); then, unless the
        key was used for this very decision (answered again), IDEMPOTENCY_KEY_REUSED or
        LOAN_APPLICATION_STATE (`state`: only a referred application is decided).
        """
        operator = command.operator
        self.approvals.permit(operator, DECIDE_LOANS)
        application_id = command.application_id
        self._application(application_id)
        _check_reason(command.reason, required=not command.approve)
        who = OPERATOR_PREFIX + operator.name
        digest = operation_key_digest(command.key)
        fingerprint = self._fingerprint(
            "loan_decision", application_id, "approve" if command.approve else "decline",
            command.reason,
        )  # fmt: skip
        async with self._serial(("application", application_id)):
            record = self._application(application_id)
            if self._met_key(who, digest, "decide", application_id, fingerprint):
                return self._view(record, replayed=True, operator=True)
            _check_state(record, REFERRED)
            state = APPROVED if command.approve else DECLINED
            after = _transition(
                record, state, who, operator.role, self.core.now_ns(), reason=command.reason,
                step="decide", key=digest, fingerprint=fingerprint,
            )  # fmt: skip
            audit = self.approvals.audit_action(
                operator, "loan_decision", f"loan_application:{application_id}",
                {"state": state, "reason": command.reason},
            )  # fmt: skip
            await self._commit(applications=[after], extra=[audit])
        logger.info(
            orjson.dumps(
                {
                    "event": "loan_application_decided",
                    "application_id": application_id,
                    "state": state,
                    "operator": operator.name,
                    "role": operator.role,
                }
            ).decode()
        )
        return self._view(after, operator=True)

    async def sign(self, command: SignLoanApplication) -> LoanApplicationView:
        """The customer signs an approved application, consenting like a debit of its
        repayment account (`Auth.authorize_debit`; a second factor is recorded).

        Refusals: LOAN_APPLICATION_NOT_FOUND; the consent's (password, token); then, unless
        the key was used for this signature (answered again), IDEMPOTENCY_KEY_REUSED or
        LOAN_APPLICATION_STATE (`state`).
        """
        caller = command.caller
        application_id = command.application_id
        record = self._application(application_id)
        await self.auth.authorize_debit(caller, int(record["repayment"]), command.consent)
        digest = operation_key_digest(command.key)
        fingerprint = self._fingerprint("loan_signature", application_id)
        async with self._serial(("application", application_id)):
            record = self._application(application_id)
            if self._met_key(caller.name, digest, "sign", application_id, fingerprint):
                return self._view(record, replayed=True)
            _check_state(record, APPROVED)
            consent = command.consent
            after = _transition(
                record, SIGNED, caller.name, caller.kind, self.core.now_ns(), step="sign",
                key=digest, fingerprint=fingerprint,
                consent={
                    "by": "token" if consent.token else "password",
                    "second_factor": consent.second_factor,
                    "actor": caller.actor_id,
                },
            )  # fmt: skip
            await self._commit(applications=[after])
        return self._view(after)

    # --- disbursement ------------------------------------------------------------------

    async def disburse(self, command: DisburseLoan) -> LoanView:
        """Pay out a signed application (module docstring); the loan once durable.

        Refusals: LOAN_APPLICATION_NOT_FOUND; the read scope of a one-customer channel;
        then, unless the key was used for this disbursement (answered again):
        IDEMPOTENCY_KEY_REUSED; LOAN_ALREADY_DISBURSED (`account_id`);
        LOAN_APPLICATION_STATE (`state`); ACCOUNT_CREATE_REFUSED; the ledger's refusal of
        the credit (TRANSFER_REFUSED: a Class III balance cap, a closed or frozen
        account; nothing posted, the application stays signed); the key's transfer id
        naming another instruction (TRANSFER_REFUSED, EXISTS_WITH_DIFFERENT_*).
        """
        caller = command.caller
        application_id = command.application_id
        record = self._application(application_id)
        self.auth.readable_customer(caller, record["customer"], command.proof)
        digest = operation_key_digest(command.key)
        fingerprint = self._fingerprint("loan_disbursement", application_id)
        async with self._serial(("application", application_id)):
            record = self._application(application_id)
            if self._met_key(caller.name, digest, "disburse", application_id, fingerprint):
                return await self._loan_view(int(record["account"]), replayed=True)
            if record["state"] == DISBURSED:
                raise refused(
                    Code.LOAN_ALREADY_DISBURSED,
                    f"application {application_id} is paid out",
                    account_id=record["account"],
                )
            _check_state(record, SIGNED)
            return await self._disburse(command, record, digest, fingerprint)

    async def _disburse(
        self, command: DisburseLoan, record: dict[str, Any], digest: str, fingerprint: str
    ) -> LoanView:
        caller = command.caller
        transfer_id = self.ids.id(caller.ledger_id, command.key, 0)
        # An earlier attempt that opened the loan's account and did not finish (its
        # answer lost in a crash, or the engine refused its entry): its entry may have
        # posted; if not, its account is used again.
        reused = int(record["account"]) if record.get("account") else None
        if reused is not None:
            raw = await self.core.read(lambda ledger: ledger.deposit_row(reused))
            if raw is not None and loan_row_view(raw).flags & LoanFlags.OPEN:
                return await self._disbursed_meanwhile(record, caller.name, digest)
        first = await self.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
        if first is not None:  # the key's transfer: a retry of a refused disbursement
            raise _replayed_refusal(first, self._disbursement_record(record, 0, transfer_id))
        today = self.core.today()
        account_id = reused if reused is not None else self._new_account_number()
        loan = self._new_loan(record, account_id, today, transfer_id)
        net = loan.principal_minor - loan.upfront_fee_minor
        transfer = self._disbursement_record(record, net, transfer_id)
        for check in self.payments.checks:  # what every posting passes, before an account
            check(caller, transfer, 1)
        attempt = {"by": caller.name, "role": caller.kind, "key": digest, "f": fingerprint,
                   "transfer_id": f"{transfer_id:032x}"}  # fmt: skip
        state = self.core.customer_state()
        meta = state.accounts.get(account_id) or AccountMeta(
            account_id, loan.customer_id, LOAN_CLASS, None, self.core.now_ns()
        )
        pending = {**record, "account": str(account_id), "attempt": attempt}
        await self._commit(applications=[pending], loans=[loan], metas=[meta])
        await self._create_in_ledger(meta)
        await self._put_terms(loan, 0)
        row = first_row(loan.principal_minor, loan.segment(0).first_due_day)
        parts = disbursement_parts(
            transfer_id, LOAN_FUNDING_ID, loan.disbursement_account_id, account_id, net, row,
            user_data=int(fingerprint, 16),
        )  # fmt: skip

        def make(ledger: Any) -> tuple[EntryKind, int, bytes, int] | None:
            if ledger.lookup_transfer(transfer_id) is not None:
                return None
            raw = ledger.deposit_row(account_id)
            assert raw is not None, account_id
            if loan_row_view(raw).flags & LoanFlags.OPEN:
                return None
            return EntryKind.POST_WITH_ROWS, 1, pack_post_with_rows_payload(*parts), 1

        outcome = await self._submit(make)
        if outcome is None:
            raw = await self.core.read(lambda ledger: ledger.deposit_row(account_id))
            if raw is not None and loan_row_view(raw).flags & LoanFlags.OPEN:
                return await self._disbursed_meanwhile(pending, caller.name, digest)
            found = await self.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
            assert found is not None, transfer_id
            await self._undo_disbursement(pending, loan)
            raise _replayed_refusal(found, parts[0])
        status = int(outcome[0][0])
        self.payments.count_result(R(status).name.lower())
        if status != R.OK:
            await self._undo_disbursement(pending, loan)
            raise transfer_refused(status)
        await self._record_disbursed(pending)
        view = await self._loan_view(account_id)
        logger.info(
            orjson.dumps(
                {
                    "event": "loan_disbursed",
                    "application_id": record["id"],
                    "account_id": str(account_id),
                    "principal_minor": loan.principal_minor,
                    "paid_out_minor": net,
                    "channel": caller.name,
                }
            ).decode()
        )
        return view

    def _new_loan(
        self, record: Mapping[str, Any], account_id: int, today: int, transfer_id: int
    ) -> Loan:
        """The contract of `record` disbursed on `today` into loan account `account_id`."""
        product = self._product(record["product"], record["version"])
        principal, rate, term = record["amount"], record["quote"]["rate_ppm"], record["term"]
        monthly_fee = record["quote"]["monthly_fee"]
        plan = loan_schedule(
            principal, rate, term, Method(record["method"]), today, record["repayment_day"],
            upfront_fee_minor=record["quote"]["upfront_fee"], monthly_fee_minor=monthly_fee,
        )  # fmt: skip
        first = plan.instalments[0]
        segment = Segment(
            0, principal, term, None, first.due_day, first.number,
            level_of(record["method"], rate, principal, term), today, 0, 0, "",
        )  # fmt: skip
        return Loan(
            account_id, record["id"], record["customer"], product.id, product.version,
            record["method"], principal, rate, term, today, record["repayment_day"],
            int(record["repayment"]), int(record["disbursement"]), product.grace_days,
            product.penalty_uplift_permille, product.allocation, product.prepayment_allowed,
            product.prepayment_after_months, product.prepayment_fee_ppm,
            product.prepayment_excess, product.prepayment_mode,
            record["quote"]["upfront_fee"], monthly_fee, transfer_id, (segment,),
        )  # fmt: skip

    def _disbursement_record(self, record: Mapping[str, Any], net: int, transfer_id: int) -> bytes:
        """The disbursement transfer of `record` (the fields a retry is compared on)."""
        return pack_transfer(
            id=transfer_id, debit_account_id=LOAN_FUNDING_ID,
            credit_account_id=int(record["disbursement"]), amount=net,
            code=TransferCode.LOAN_DISBURSEMENT, channel=BANK_CHANNEL,
        )  # fmt: skip

    async def _disbursed_meanwhile(self, record: dict[str, Any], who: str, digest: str) -> LoanView:
        """The loan of `record` is paid out by its recorded attempt: the application is
        recorded disbursed; this answers that attempt's key again, and refuses another
        (LOAN_ALREADY_DISBURSED)."""
        await self._record_disbursed(record)
        attempt = record["attempt"]
        if (attempt["by"], attempt["key"]) != (who, digest):
            raise refused(
                Code.LOAN_ALREADY_DISBURSED,
                f"application {record['id']} is paid out",
                account_id=record["account"],
            )
        return await self._loan_view(int(record["account"]), replayed=True)

    async def _record_disbursed(self, record: dict[str, Any]) -> None:
        """`record` (signed, its attempt's entry posted) recorded as disbursed."""
        attempt = record["attempt"]
        after = _transition(
            record, DISBURSED, attempt["by"], attempt["role"], self.core.now_ns(),
            step="disburse", key=attempt["key"], fingerprint=attempt["f"],
            transfer_id=attempt["transfer_id"],
        )  # fmt: skip
        await self._commit(applications=[after])

    async def _undo_disbursement(self, record: dict[str, Any], loan: Loan) -> None:
        """A refused disbursement: its terms forgotten, the loan account closed (it holds
        nothing; closed in the ledger and with the customer), its record deleted, and the
        application left signed without an account (a retry opens a new one)."""
        account_id = loan.account_id
        self.core.loan_terms.remove(account_id)
        self._slots.pop(account_id, None)
        state = self.core.customer_state()
        meta = state.accounts[account_id]
        engine = self.core.running_engine()
        code = await self.core.call_engine_patiently(
            engine.update_account, account_id, AccountStatus.CLOSED, LOAN_ACCOUNT_FLAGS
        )
        if code != AccountUpdateResult.OK:
            logger.warning(
                orjson.dumps(
                    {"event": "loan_account_close_failed", "account_id": str(account_id),
                     "result": int(code)}
                ).decode()
            )  # fmt: skip
        meta.closed = True
        back = {key: value for key, value in record.items() if key not in ("account", "attempt")}
        await self._commit(applications=[back], metas=[meta], deleted_loans=[loan])

    async def _create_in_ledger(self, meta: AccountMeta) -> None:
        """The loan's account in the ledger (`Accounts.create_in_ledger`: kind LOAN, the
        rules' loan product; EXISTS is fine: a retry). ACCOUNT_CREATE_REFUSED otherwise."""
        code = await self.accounts.create_in_ledger(meta)
        if code not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
            raise Refused(Refusal(Code.ACCOUNT_CREATE_REFUSED, ledger_code=code))

    def _new_account_number(self) -> int:
        state = self.core.customer_state()
        while True:
            partial = LOAN_BIN + f"{secrets.randbelow(10**12):012d}"
            number = int(partial + identity.luhn_check_digit(partial))
            if number not in state.accounts:
                return number

    # --- early repayment ---------------------------------------------------------------

    async def repay(self, command: RepayLoan) -> LoanRepaid:
        """An early repayment of loan `account_id` (module docstring), once durable.

        Refusals: LOAN_NOT_FOUND; INVALID_FIELD (an amount below 1 fen); the consent's
        for the repayment account; then, unless the key was used for this repayment
        (answered again with its figures, or its refusal): IDEMPOTENCY_KEY_REUSED;
        LOAN_CLOSED; LOAN_REPAYMENT_EXCEEDS_OWED (`owed_minor`);
        LOAN_PREPAYMENT_NOT_ALLOWED (`allowed_from`); LOAN_REPAYMENT_TOO_SMALL
        (`minimum_minor`); the ledger's refusal of the debit (TRANSFER_REFUSED:
        insufficient funds, a frozen account). Nothing moves on a refusal.
        """
        caller, account_id = command.caller, command.account_id
        loan = self._loan(account_id)
        requested = command.amount_minor
        if requested is not None and (type(requested) is not int or requested < 1):
            raise refused(
                Code.INVALID_FIELD, "at least 1 fen, or none for all", pointer="/amount_minor"
            )
        await self.auth.authorize_debit(caller, loan.repayment_account_id, command.consent)
        digest = operation_key_digest(command.key)
        fingerprint = self._fingerprint(
            "loan_repayment", str(account_id), "all" if requested is None else str(requested)
        )
        transfer_id = self.ids.id(caller.ledger_id, command.key, 0)
        async with self._serial(("loan", account_id)):
            first = self._repayments.get((caller.name, digest))
            if first is not None:
                if first["f"] != fingerprint:
                    raise refused(Code.IDEMPOTENCY_KEY_REUSED, "a loan repayment with other fields")
                met = await self._repayment_met(first)
                if met is not None:
                    return met
            for _ in range(STALE_ATTEMPTS_MAX):
                try:
                    return await self._repay_once(command, digest, fingerprint, transfer_id)
                except _Stale:
                    continue
            raise refused(Code.OVERLOADED, "the loan kept changing: retry", retry_after_s=1)

    async def _repay_once(
        self, command: RepayLoan, digest: str, fingerprint: str, transfer_id: int
    ) -> LoanRepaid:
        caller, account_id = command.caller, command.account_id
        loan = self._loan(account_id)
        raw = await self._live_row(account_id)
        row = loan_row_view(raw)
        today = self.core.today()
        current = self._segment_schedule(loan, row.segment)
        plan = plan_repayment(loan, current, row, today, command.amount_minor)
        if plan.remainder is not None:
            segments = (*loan.segments[: row.segment + 1], _segment_after(loan, plan, today))
            loan = dataclasses.replace(loan, segments=segments)
        repayment = _repayment_record(
            caller.name, digest, fingerprint, loan, transfer_id, today, command, plan
        )
        await self._commit(loans=[loan] if plan.remainder else [], repayments=[repayment])
        if plan.remainder is not None:
            await self._put_terms(loan, plan.row.segment)
        new_row = pack_loan_row(**plan.row._asdict())
        parts = repayment_parts(
            transfer_id, loan.repayment_account_id, LOAN_FUNDING_ID, account_id,
            plan.total_minor, new_row, user_data=int(fingerprint, 16),
        )  # fmt: skip
        checks = self.payments.checks

        def make(ledger: Any) -> tuple[EntryKind, int, bytes, int] | None:
            if ledger.lookup_transfer(transfer_id) is not None:
                return None  # met meanwhile: answered as a retry
            if ledger.deposit_row(account_id) != raw:
                raise _Stale()
            for check in checks:
                check(caller, parts[0], 1)
            return EntryKind.POST_WITH_ROWS, 1, pack_post_with_rows_payload(*parts), 1

        try:
            outcome = await self._submit(make)
        except (_Stale, Refused):  # not applied (a store failure rebuilds the table anyway)
            self.core.loan_terms.drop_after(account_id, row.segment)
            raise
        if outcome is None:
            met = await self._repayment_met(repayment)
            assert met is not None
            return met
        status = int(outcome[0][0])
        self.payments.count_result(R(status).name.lower())
        if status != R.OK:
            self.core.loan_terms.drop_after(account_id, row.segment)
            raise transfer_refused(status)
        self._after_repayment(loan, plan.row)
        logger.info(
            orjson.dumps(
                {
                    "event": "loan_repaid",
                    "account_id": str(account_id),
                    "kind": plan.kind,
                    "total_minor": plan.total_minor,
                    "prepaid_principal_minor": plan.prepaid_principal_minor,
                    "segment": plan.row.segment,
                    "channel": caller.name,
                }
            ).decode()
        )
        return await self._repaid(repayment, replayed=False)

    def _after_repayment(self, loan: Loan, row: LoanRow) -> None:
        """The terms table once a repayment posted: nothing for a closed loan, else only
        the row's segment."""
        table = self.core.loan_terms
        if not row.is_live:
            table.remove(loan.account_id)
            return
        current = table.get(loan.account_id, row.segment)
        table.remove(loan.account_id)
        if current is not None:
            table.put(loan.account_id, current)

    async def _repayment_met(self, record: dict[str, Any]) -> LoanRepaid | None:
        """The answer to a retry of a repayment whose record exists: its figures if the
        ledger holds its transfer posted, its refusal if the transfer failed, None if the
        transfer was never applied (the repayment is then made anew)."""
        transfer_id = int(record["transfer_id"], 16)
        raw = await self.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
        if raw is None:
            return None
        view = transfer_view(raw)
        if (view.code, view.debit_account_id) != (
            TransferCode.LOAN_REPAYMENT,
            int(record["repayment_account"]),
        ) or view.user_data != int(record["f"], 16):
            raise transfer_refused(
                R.EXISTS_WITH_DIFFERENT_USER_DATA, "the operation key names another instruction"
            )
        if view.result != R.OK:
            raise transfer_refused(view.result, "replayed: the first request failed", replayed=True)
        return await self._repaid(record, replayed=True)

    async def _repaid(self, record: Mapping[str, Any], *, replayed: bool) -> LoanRepaid:
        parts = record["parts"]
        account_id = int(record["loan"])
        return LoanRepaid(
            str(account_id), record["kind"], record["transfer_id"], record["total"],
            parts["penalty"], parts["interest"], parts["accrued_interest"],
            parts["principal"] + parts["prepaid_principal"], parts["prepaid_principal"],
            parts["fee"], record["owed"], await self._loan_view(account_id), replayed,
        )  # fmt: skip

    # --- reads ---------------------------------------------------------------------------

    def application(
        self, caller: Caller, application_id: str, proof: Proof = NO_PROOF
    ) -> LoanApplicationView:
        """Application `application_id`, scoped like reading its customer
        (LOAN_APPLICATION_NOT_FOUND; the read scope's refusals)."""
        record = self._application(application_id)
        self.auth.readable_customer(caller, record["customer"], proof)
        return self._view(record)

    async def loan(self, caller: Caller, account_id: int, proof: Proof = NO_PROOF) -> LoanView:
        """Loan `account_id`: its contract, its row's figures, the next instalment (scoped
        like reading the account; LOAN_NOT_FOUND)."""
        self.auth.readable_account(caller, account_id, proof)
        self._loan(account_id)
        return await self._loan_view(account_id)

    async def schedule(
        self, caller: Caller, account_id: int, proof: Proof = NO_PROOF
    ) -> LoanScheduleView:
        """The instalments of loan `account_id`'s current segment with where each stands:
        "paid", "overdue" (fallen due, not all paid: the arrears are the newest
        instalments'), "due" (the next), "future", or "prepaid" (a closed loan's
        instalments that never fell due). Scoped like reading the account; LOAN_NOT_FOUND."""
        self.auth.readable_account(caller, account_id, proof)
        loan = self._loan(account_id)
        row = loan_row_view(await self._open_row(account_id))
        plan = self._segment_schedule(loan, row.segment)
        unpaid = row.arrears_principal_minor + row.arrears_interest_minor
        statuses: list[str] = []
        closed = bool(row.flags & LoanFlags.CLOSED)
        for index in range(len(plan.instalments) - 1, -1, -1):
            item = plan.instalments[index]
            if closed:
                statuses.append("paid" if index < row.fallen_due else "prepaid")
            elif index < row.fallen_due:
                statuses.append("overdue" if unpaid > 0 else "paid")
                unpaid -= item.total_minor
            elif index == row.fallen_due and row.next_due_day:
                statuses.append("due")
            else:
                statuses.append("future")
        statuses.reverse()
        items = [
            _schedule_item(item, status)
            for item, status in zip(plan.instalments, statuses, strict=True)
        ]
        return LoanScheduleView(
            str(account_id), row.segment, loan.method, plan.principal_minor,
            format_rate(loan.rate_ppm), loan.rate_ppm, date_of_day(plan.start_day), items,
            date_of_day(self.core.today()),
        )  # fmt: skip

    async def loans_of(self, caller: Caller, customer_id: str, proof: Proof = NO_PROOF) -> LoanList:
        """The customer's disbursed loans, live and closed, newest first (scoped like
        reading the customer; CUSTOMER_NOT_FOUND)."""
        self.auth.readable_customer(caller, customer_id, proof)
        self.customers.customer_of(customer_id)
        ids = sorted(
            (loan.account_id for loan in self._loans.values() if loan.customer_id == customer_id),
            key=lambda i: (-self._loans[i].start_day, i),
        )
        rows = await self.core.read(lambda ledger: [ledger.deposit_row(i) for i in ids])
        views = []
        for account_id, raw in zip(ids, rows, strict=True):
            if raw is not None and loan_row_view(raw).flags & LoanFlags.OPEN:
                views.append(await self._loan_view(account_id))
        return LoanList(customer_id, views)

    async def _loan_view(self, account_id: int, *, replayed: bool = False) -> LoanView:
        loan = self._loan(account_id)

        def read(ledger: Any) -> tuple[bytes | None, bytes | None]:
            return ledger.deposit_row(account_id), ledger.lookup_account(account_id)

        raw, account = await self.core.read(read)
        if raw is None or account is None or not loan_row_view(raw).flags & LoanFlags.OPEN:
            raise refused(Code.LOAN_NOT_FOUND, str(account_id))
        row = loan_row_view(raw)
        balance = account_view(account)
        next_item: LoanInstalment | None = None
        if row.next_due_day:
            item = self._segment_schedule(loan, row.segment).instalments[row.fallen_due]
            next_item = LoanInstalment(
                item.number, date_of_day(item.due_day), item.principal_minor,
                item.interest_minor, item.fee_minor, item.total_minor, item.remaining_minor,
            )  # fmt: skip
        if row.flags & LoanFlags.CLOSED:
            status = "closed"
        elif row.flags & LoanFlags.OVERDUE:
            status = "overdue"
        else:
            status = "open"
        return LoanView(
            str(account_id), loan.customer_id, loan.application_id, status, loan.product_id,
            loan.product_version, loan.method, loan.principal_minor, format_rate(loan.rate_ppm),
            loan.rate_ppm, loan.term_months, date_of_day(loan.start_day), loan.repayment_day,
            str(loan.repayment_account_id), str(loan.disbursement_account_id),
            loan.upfront_fee_minor, loan.monthly_fee_minor, loan.grace_days,
            loan.uplift_permille, list(loan.allocation), loan.prepayment_mode,
            loan.prepayment_excess, row.outstanding_minor, row.scheduled_minor,
            row.arrears_principal_minor, row.arrears_interest_minor, row.penalty_minor,
            row.owed_minor, date_of_day(row.overdue_since) if row.overdue_since else None,
            row.segment, row.fallen_due, next_item,
            balance.credits_posted - balance.debits_posted, f"{loan.transfer_id:032x}",
            date_of_day(self.core.today()), replayed,
        )  # fmt: skip

    def _view(
        self, record: Mapping[str, Any], *, replayed: bool = False, operator: bool = False
    ) -> LoanApplicationView:
        quote, quota, risk = record["quote"], record["quota"], record["risk"]
        transitions = [
            LoanTransition(s["state"], rfc3339(s["at_ns"]), s["by"], s["role"], s["reason"])
            for s in record["transitions"]
        ]
        return LoanApplicationView(
            record["id"], record["state"], record["customer"], record["product"],
            record["version"], record["method"], record["amount"], record["term"],
            record["repayment_day"], record["disbursement"], record["repayment"],
            record["purpose"], format_rate(quote["rate_ppm"]), quote["rate_ppm"],
            percent_text(quote["apr_ppm"]), quote["apr_ppm"], quote["upfront_fee"],
            quote["received"], quote["monthly_fee"], quote["interest"], quote["repaid"],
            quota["limit"], quota["used"], risk["outcome"], risk["version"],
            list(risk["rules"]) if operator else None,
            quota["exposure"] if operator else None, record["reason"],
            record.get("account"), rfc3339(record["submitted_ns"]), transitions, replayed,
        )  # fmt: skip

    # --- the figures -------------------------------------------------------------------

    async def _quota(
        self, customer_id: str, product: LoanProduct, amount_minor: int
    ) -> dict[str, Any]:
        """The quota and exposure figures of a new application (module docstring), or the
        refusal: LOAN_QUOTA_EXCEEDED, LOAN_EXPOSURE_EXCEEDED."""
        limit = self.approvals.credit_limit(customer_id)
        capped = product.exposure_max_minor is not None
        mine = [
            loan.account_id
            for loan in self._loans.values()
            if loan.customer_id == customer_id or (capped and loan.product_id == product.id)
        ]
        rows = await self.core.read(lambda ledger: [ledger.deposit_row(i) for i in mine])
        outstanding: dict[int, int] = {}
        for account_id, raw in zip(mine, rows, strict=True):
            if raw is not None and loan_row_view(raw).is_live:
                outstanding[account_id] = loan_row_view(raw).outstanding_minor
        used = exposure = 0
        for account_id, owed in outstanding.items():
            loan = self._loans[account_id]
            used += owed if loan.customer_id == customer_id else 0
            exposure += owed if loan.product_id == product.id else 0
        for record in self._applications.values():
            account = record.get("account")
            if record["state"] not in RESERVING or (account and int(account) in outstanding):
                continue
            used += record["amount"] if record["customer"] == customer_id else 0
            exposure += record["amount"] if record["product"] == product.id else 0
        if limit == 0 or amount_minor + used > limit:
            raise refused(
                Code.LOAN_QUOTA_EXCEEDED,
                "no credit limit is approved for the customer"
                if limit == 0
                else f"{amount_minor} fen with {used} fen in use passes the limit of {limit}",
                limit_minor=limit,
                used_minor=used,
                pointer="/amount_minor",
            )
        exposure += amount_minor
        if product.exposure_max_minor is not None and exposure > product.exposure_max_minor:
            raise refused(
                Code.LOAN_EXPOSURE_EXCEEDED,
                f"{product.id} is at its exposure cap",
                pointer="/product_id",
            )
        return {
            "limit": limit, "used": used, "exposure": exposure,
            "exposure_max": product.exposure_max_minor,
        }  # fmt: skip

    def _screen(
        self, caller: Caller, key: str, account_id: int, amount_minor: int, context: RiskContext
    ) -> dict[str, Any]:
        """The risk stage's decision on the would-be disbursement (nothing recorded there:
        the application records it)."""
        transfer_id = self.ids.id(caller.ledger_id, SCREEN_KEY_PREFIX + key, 0)
        record = pack_transfer(
            id=transfer_id, debit_account_id=LOAN_FUNDING_ID, credit_account_id=account_id,
            amount=amount_minor, code=TransferCode.LOAN_DISBURSEMENT, channel=BANK_CHANNEL,
        )  # fmt: skip
        screening = self.risk.screen(caller, record, 1, context)
        rules = self.risk.rules
        if screening is None:
            return {"outcome": "allow", "rules": [], "report": False,
                    "version": rules.version, "digest": rules.digest}  # fmt: skip
        fired = screening.fired[0]
        return {
            "outcome": Outcome(fired.outcome).name.lower(), "rules": list(fired.rules),
            "report": fired.report, "version": screening.version, "digest": screening.digest,
        }  # fmt: skip

    def _segment_schedule(self, loan: Loan, number: int) -> Schedule:
        """`segment_schedule`, cached by the loan and the segments it replays (a tentative
        segment replaced by another is another key)."""
        key = (loan.account_id, loan.segments[: number + 1])
        found = self._schedules.get(key)
        if found is None:
            if len(self._schedules) >= SCHEDULE_CACHE_MAX:
                self._schedules.clear()
            found = self._schedules[key] = segment_schedule(loan, number)
        return found

    def _terms(self, loan: Loan, segment: Segment) -> LoanTerms:
        slot, repayment_slot = self._slots[loan.account_id]
        terms = terms_of_segment(
            slot=slot, repayment_slot=repayment_slot, loan_account_id=loan.account_id,
            principal_minor=segment.principal_minor, annual_rate=loan.rate_ppm,
            count=segment.count, method=loan.method,
            first_period_days=segment.first_period_days,
            monthly_fee_minor=loan.monthly_fee_minor, uplift_permille=loan.uplift_permille,
            grace_days=loan.grace_days, segment=segment.number,
            allocation=allocation_code(loan.allocation),
        )  # fmt: skip
        assert terms.level_minor == segment.level_minor, (terms, segment)
        return terms

    async def _put_terms(self, loan: Loan, number: int) -> None:
        """Put segment `number`'s terms in the table (the slots read once per loan), and
        check its first instalment against the schedule's (the kernel's recurrence and
        `ledger.loans` agree)."""
        account_id = loan.account_id
        if account_id not in self._slots:
            slots = await self.core.read(
                lambda ledger: (
                    ledger.account_slot(account_id),
                    ledger.account_slot(loan.repayment_account_id),
                )
            )
            assert min(slots) >= 0, (account_id, slots)
            self._slots[account_id] = slots
        segment = loan.segment(number)
        terms = self._terms(loan, segment)
        first = self._segment_schedule(loan, number).instalments[0]
        fresh = LoanRow(segment.principal_minor, 0, 0, 0, 0, first.due_day, 0, 0, number, 1, 0)
        assert instalment(terms, fresh) == (
            first.principal_minor,
            first.interest_minor + first.fee_minor,
        ), (terms, first)
        self.core.loan_terms.put(account_id, terms)

    def _repayment_day(self, product: LoanProduct, requested: int | None) -> int:
        """The day of the month instalments fall due (`Loans.quote` checked it)."""
        if product.repayment_day is not None:
            return product.repayment_day
        if requested is not None:
            return requested
        return min(civil_of_day(self.core.today())[2], 28)

    # --- records and plumbing ----------------------------------------------------------

    def _product(self, product_id: str, version: int) -> LoanProduct:
        for product in self.core.loans.versions(product_id):
            if product.version == version:
                return product
        raise AssertionError(f"{product_id} version {version} left the catalog")

    def _application(self, application_id: str) -> dict[str, Any]:
        record = self._applications.get(application_id)
        if record is None:
            raise refused(Code.LOAN_APPLICATION_NOT_FOUND, str(application_id))
        return record

    def _loan(self, account_id: int) -> Loan:
        loan = self._loans.get(account_id)
        if loan is None:
            raise refused(Code.LOAN_NOT_FOUND, str(account_id))
        return loan

    async def _open_row(self, account_id: int) -> bytes:
        raw = await self.core.read(lambda ledger: ledger.deposit_row(account_id))
        if raw is None or not loan_row_view(raw).flags & LoanFlags.OPEN:
            raise refused(Code.LOAN_NOT_FOUND, str(account_id))
        result: bytes = raw
        return result

    async def _live_row(self, account_id: int) -> bytes:
        raw = await self._open_row(account_id)
        if loan_row_view(raw).flags & LoanFlags.CLOSED:
            raise refused(Code.LOAN_CLOSED, str(account_id))
        return raw

    def _payment_account(self, customer_id: str, account_id: int, role: str) -> int:
        """`account_id` if it is an open Class I, II or III account of `customer_id`."""
        pointer = f"/{role}_account_id"
        meta = self.core.customer_state().accounts.get(account_id)
        if meta is None or meta.closed:
            raise refused(Code.CUSTOMER_ACCOUNT_NOT_FOUND, str(account_id), pointer=pointer)
        if meta.customer_id != customer_id:
            raise refused(
                Code.ACCOUNT_NOT_CUSTOMERS, f"the {role} account is not this customer's",
                pointer=pointer,
            )  # fmt: skip
        if meta.account_class not in PAYMENT_CLASSES:
            raise refused(
                Code.LOAN_ACCOUNT_NOT_ALLOWED,
                f"the {role} account must be a Class I, II or III account",
                pointer=pointer,
                classes=PAYMENT_CLASS_NAMES,
            )
        return account_id

    def _fingerprint(self, *fields: str) -> str:
        return f"{self.ids.fingerprint(*fields):016x}"

    def _met_key(
        self, who: str, digest: str, step: str, application_id: str, fingerprint: str
    ) -> bool:
        """True if `who` used the key for exactly this transition (a retry); refuses the key
        used for anything else (IDEMPOTENCY_KEY_REUSED)."""
        met = self._keys.get((who, digest))
        if met is None:
            return False
        if met != (step, application_id, fingerprint):
            raise refused(Code.IDEMPOTENCY_KEY_REUSED, "the operation key named another request")
        return True

    def _index_application(self, record: dict[str, Any]) -> None:
        self._applications[record["id"]] = record
        for step in record["transitions"]:
            if step.get("key"):
                self._keys[(step["by"], step["key"])] = (step["step"], record["id"], step["f"])

    async def _commit(
        self,
        *,
        applications: Sequence[dict[str, Any]] = (),
        loans: Sequence[Loan] = (),
        repayments: Sequence[dict[str, Any]] = (),
        metas: Sequence[AccountMeta] = (),
        deleted_loans: Sequence[Loan] = (),
        extra: Sequence[Change] = (),
    ) -> None:
        """Make records durable in one PUT_STATE (with the account records `metas` and
        another service's `extra` changes), applied in memory first and undone if the
        engine refuses them."""
        changes: list[Change] = list(extra)
        saved_applications = {r["id"]: self._applications.get(r["id"]) for r in applications}
        saved_loans = {
            x.account_id: self._loans.get(x.account_id) for x in (*loans, *deleted_loans)
        }
        saved_repayments = {
            (r["c"], r["h"]): self._repayments.get((r["c"], r["h"])) for r in repayments
        }
        for record in applications:
            changes.append((APPLICATION_PREFIX + record["id"].encode(), orjson.dumps(record)))
            self._replace_application(record["id"], record)
        for loan in loans:
            changes.append((loan.key(), orjson.dumps(loan.to_record())))
            self._loans[loan.account_id] = loan
        for loan in deleted_loans:
            changes.append((loan.key(), None))
            self._loans.pop(loan.account_id, None)
        for record in repayments:
            changes.append((_repayment_key(record["c"], record["h"]), orjson.dumps(record)))
            self._repayments[(record["c"], record["h"])] = record
        try:
            await self.core.customer_state().commit(
                [meta_record(meta) for meta in metas], other=changes
            )
        except Refused:
            for application_id, previous in saved_applications.items():
                self._replace_application(application_id, previous)
            for account_id, saved in saved_loans.items():
                _put(self._loans, account_id, saved)
            for key, repayment in saved_repayments.items():
                _put(self._repayments, key, repayment)
            raise

    def _replace_application(self, application_id: str, record: dict[str, Any] | None) -> None:
        """Application `application_id` in memory becomes `record` (None: forgotten), its
        transitions' keys indexed."""
        previous = self._applications.pop(application_id, None)
        if previous is not None:
            for step in previous["transitions"]:
                if step.get("key"):
                    self._keys.pop((step["by"], step["key"]), None)
        if record is not None:
            self._index_application(record)

    async def _submit(self, make: Callable[[Any], Any]) -> Any:
        """One generated entry through the engine (a full queue waited out, bounded);
        `make`'s own exception is raised here."""
        engine = self.core.running_engine()
        return await self.core.call_engine_patiently(engine.submit_generated, make)

    def _serial(self, key: Hashable) -> OneAtATime:
        return OneAtATime(self._in_flight, key)


def _put(table: dict[Any, Any], key: Any, value: Any) -> None:
    """`table[key] = value`, or the key removed when `value` is None."""
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


# --- Records -------------------------------------------------------------------------------


def _schedule_item(item: Any, status: str) -> LoanScheduleItem:
    return LoanScheduleItem(
        item.number, date_of_day(item.due_day), item.principal_minor, item.interest_minor,
        item.fee_minor, item.total_minor, item.remaining_minor, status,
    )  # fmt: skip


def application_id_of(channel: str, key_digest: str) -> str:
    """An application's id: from the channel and its apply key's digest (one application
    per key), "LA" and 16 hex digits."""
    return "LA" + hashlib.sha256(f"{channel}/{key_digest}".encode()).hexdigest()[:16]


def _application_record(
    application_id: str,
    command: ApplyForLoan,
    fingerprint: str,
    digest: str,
    repayment_id: int,
    quote: Any,
    product: LoanProduct,
    repayment_day: int,
    quota: dict[str, Any],
    screened: dict[str, Any],
    now_ns: int,
) -> dict[str, Any]:
    """A new application's record, submitted and then moved by the screen."""
    caller = command.caller
    record: dict[str, Any] = {
        "id": application_id, "customer": command.customer_id, "product": product.id,
        "version": product.version, "method": quote.method, "amount": command.amount_minor,
        "term": command.term_months, "repayment_day": repayment_day,
        "disbursement": str(command.disbursement_account_id), "repayment": str(repayment_id),
        "purpose": command.purpose, "channel": caller.name, "f": fingerprint,
        "quote": {
            "rate_ppm": quote.rate_ppm, "apr_ppm": quote.apr_ppm,
            "upfront_fee": quote.upfront_fee_minor, "received": quote.received_minor,
            "monthly_fee": quote.instalments[0].fee_minor,
            "interest": quote.total_interest_minor, "repaid": quote.total_repaid_minor,
            "count": len(quote.instalments),
        },
        "quota": quota, "risk": screened, "state": SUBMITTED, "reason": "",
        "submitted_ns": now_ns, "transitions": [],
    }  # fmt: skip
    record = _transition(
        record, SUBMITTED, caller.name, caller.kind, now_ns, step="apply", key=digest,
        fingerprint=fingerprint,
    )  # fmt: skip
    outcome = screened["outcome"]
    if outcome == "block":
        return _transition(record, DECLINED, SYSTEM, SYSTEM, now_ns, reason="risk")
    if outcome != "allow":
        return _transition(record, REFERRED, SYSTEM, SYSTEM, now_ns, reason="risk")
    return _transition(record, APPROVED, SYSTEM, SYSTEM, now_ns)


def _transition(
    record: Mapping[str, Any],
    state: str,
    by: str,
    role: str,
    now_ns: int,
    *,
    reason: str = "",
    step: str = "",
    key: str = "",
    fingerprint: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """`record` moved to `state` (a new dict), the step appended to its transitions."""
    assert state in STATES, state
    entry = {"state": state, "by": by, "role": role, "at_ns": now_ns, "reason": reason,
             "step": step, "key": key, "f": fingerprint, **extra}  # fmt: skip
    after = {**record, "state": state, "transitions": [*record["transitions"], entry]}
    if state == DECLINED or (reason and state == APPROVED):
        after["reason"] = reason
    return after


def _check_state(record: Mapping[str, Any], expected: str) -> None:
    if record["state"] != expected:
        raise refused(
            Code.LOAN_APPLICATION_STATE,
            f"the application is {record['state']}; this step starts from {expected}",
            state=record["state"],
        )


def _check_reason(reason: str, *, required: bool) -> None:
    if not isinstance(reason, str) or len(reason) > REASON_LENGTH_MAX:
        raise refused(
            Code.INVALID_FIELD, f"at most {REASON_LENGTH_MAX} characters", pointer="/reason"
        )
    if required and not reason.strip():
        raise refused(Code.INVALID_FIELD, "a decline says why", pointer="/reason")


def _segment_after(loan: Loan, plan: RepaymentPlan, day: int) -> Segment:
    """The segment a partial prepayment starts (tentative until its entry posts)."""
    remainder = plan.remainder
    assert remainder is not None
    first = remainder.instalments[0]
    return Segment(
        plan.row.segment, remainder.principal_minor, remainder.term_months,
        first.due_day - day, first.due_day, first.number,
        level_of(loan.method, loan.rate_ppm, remainder.principal_minor, remainder.term_months),
        day, plan.paid_through, plan.prepay_minor, loan.prepayment_mode,
    )  # fmt: skip


def _repayment_key(channel: str, digest: str) -> bytes:
    assert "/" not in channel, channel
    return REPAYMENT_PREFIX + f"{channel}/{digest}".encode()


def _repayment_record(
    channel: str,
    digest: str,
    fingerprint: str,
    loan: Loan,
    transfer_id: int,
    day: int,
    command: RepayLoan,
    plan: RepaymentPlan,
) -> dict[str, Any]:
    """An early repayment's record, durable before its entry is queued: a retry of the
    key is answered from it (with the ledger's transfer)."""
    loan_row = plan.row
    return {
        "c": channel, "h": digest, "f": fingerprint, "loan": str(loan.account_id),
        "repayment_account": str(loan.repayment_account_id),
        "transfer_id": f"{transfer_id:032x}", "day": day,
        "requested": command.amount_minor, "kind": plan.kind, "total": plan.total_minor,
        "owed": plan.owed_minor,
        "parts": {
            "penalty": plan.penalty_minor, "interest": plan.interest_minor,
            "accrued_interest": plan.accrued_interest_minor, "principal": plan.principal_minor,
            "prepaid_principal": plan.prepaid_principal_minor, "fee": plan.fee_minor,
        },
        "segment": loan_row.segment,
    }  # fmt: skip


def _replayed_refusal(raw: bytes, record: bytes) -> Refused:
    """The refusal a retry meets when the key's transfer is in the ledger: another
    instruction under the key (EXISTS_WITH_DIFFERENT_*, in the kernel's order), or the
    first attempt's own refusal (replayed)."""
    first, retry = transfer_view(raw), transfer_view(record)
    for field, code in (
        ("debit_account_id", R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID),
        ("credit_account_id", R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID),
        ("code", R.EXISTS_WITH_DIFFERENT_CODE),
    ):
        if getattr(retry, field) != getattr(first, field):
            return transfer_refused(code, "the operation key names another instruction")
    if first.result == R.OK:
        return transfer_refused(R.EXISTS, "the operation key's disbursement posted")
    return transfer_refused(first.result, "replayed: the first request failed", replayed=True)


__all__ = [
    "LOAN_CLASS",
    "Loan",
    "LoanAccounts",
    "RepaymentPlan",
    "Segment",
    "application_id_of",
    "fall_due",
    "plan_repayment",
    "segment_schedule",
]
