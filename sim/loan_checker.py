"""The loan checker: what the day-end should have collected, against what the ledger holds.

Independent of the collection kernel (`cext/loans.pyx`), of its twin
(`ledger.loan_book.collect_one`) and of the terms table the day-end is handed: the
checker keeps its own model of every loan, computed from the loan's contract
(principal, rate, term, method, start and repayment day, fees, grace, uplift,
allocation) with `ledger.loans` -- the instalments and due days of
`ledger.loans.schedule`, `ledger.loans.allocate`, `ledger.loans.penalty_minor` --
following the day-end's rules (the loans slice's brief, "Day-end collection of day D"):

1. **fall due**: every instalment whose due day is on or before the day moves into
   arrears (principal out of what is scheduled; interest and the monthly fee into
   interest arrears); the first unpaid one's due day is the loan's `overdue_since`;
2. **collect**: what the repayment account can pay (posted credits less posted and
   pending debits, nothing from an account that is not active), net of what earlier
   loans of the day-end took from it (loans in slot order), up to everything owed,
   allocated in the contract's order, each part in full before the next;
3. **penalty**: arrears left after the collection, once the grace days after
   `overdue_since` have passed, accrue `penalty_minor(.., days=1)` for each day not yet
   charged (the grace days too, once it has passed);
4. flags: OVERDUE while arrears are left past their due day, CLOSED once nothing is
   scheduled, in arrears or owed as penalty; the loan's row records the day.

What it checks, on the primary that ran the day-end (`before` reads the ledger before
the loan step, `after` after it):

- before: every loan's row is the model's (as the last day-end or the disbursement left
  it), or, on a primary finishing a day-end its predecessor began, the model's row of
  this day for the loans whose collection reached it (`collected_day` is the day);
- after: each loan the model collects from has exactly one LOAN_REPAYMENT posting, of
  `collection_transfer_id(loan, day)`, for the model's amount, from its repayment
  account to the loan-funding account on the bank's batch channel, with the day as its
  user data; no other loan posting is in the step's log records; every row is the
  model's (the untouched ones unchanged); the loan-funding account moved by the sum
  taken;
- per loan, always: principal repaid (before the run and by the model's collections)
  plus outstanding equals the principal disbursed.

And on every data center at the end (`final`): every loan's row is the model's, the
principal identity holds, the loan-funding account's balance is exactly what the loans
present there were lent less everything collected from them (a disbursement or a
collection posted twice anywhere shows here), and every acknowledged disbursement is
there (`verify_disbursements` checks it on each new primary too: one missing after a
cross-region failover is counted as RPO, like a lost transfer).

Each failed comparison is one line in `failures` (the first LINES_MAX) and counts in
`mismatches`; the report's `loans_as_expected` invariant is `mismatches == 0`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ledger.constants import BANK_CHANNEL, LOAN_FUNDING_ID
from ledger.loan_book import (
    LOAN_ROW,
    METHOD_EQUAL_INSTALMENT,
    LoanFlags,
    LoanRow,
    allocation_order,
    collection_transfer_id,
)
from ledger.loans import Method, allocate, due_days, penalty_minor, schedule
from ledger.types import PENDING_STRUCT, AccountStatus, TransferCode

from .interest import accounts_of, dtype_of, log_segments

if TYPE_CHECKING:
    from .loans import LoanBook

LINES_MAX = 50
LOAN_DTYPE = dtype_of(LOAN_ROW, list(LoanRow._fields))
PENDING_DTYPE = dtype_of(PENDING_STRUCT, ["debits_pending", "credits_pending"])
# A schedule's amounts do not depend on its days (every period is charged a month): they
# are computed once per shape, at this start and repayment day, and the days per loan.
_SHAPE_START_DAY = 9_132  # 2025-01-01
_SHAPE_REPAYMENT_DAY = 1
_OPEN, _OVERDUE, _CLOSED = int(LoanFlags.OPEN), int(LoanFlags.OVERDUE), int(LoanFlags.CLOSED)


class Outcome(NamedTuple):
    """The model's day-end of one loan: the row after, what it took from the repayment
    account (principal, interest and penalty paid), and what it owed when it did."""

    row: LoanRow
    taken: int
    principal: int
    interest: int
    penalty: int
    owed: int


class Contract(NamedTuple):
    """What the model needs of a loan's contract (a row of `LoanBook.contracts`)."""

    principal: int
    rate: int  # ppm a year
    term: int  # months
    method: int  # ledger.loan_book METHOD_*
    monthly_fee: int
    start_day: int
    repayment_day: int
    grace: int  # days
    uplift: int  # permille
    allocation: int  # ledger.loan_book's allocation byte


def contract_of(record: Any) -> Contract:
    """The `Contract` of a `LoanBook.contracts` row."""
    return Contract(*(int(record[name]) for name in Contract._fields))


@dataclass(frozen=True, slots=True)
class Plan:
    """A loan's instalments as `ledger.loans.schedule` computes them: principal, the
    charge into interest arrears (interest plus the monthly fee) and the due day of each,
    and the principal still scheduled after each number of instalments (0..n)."""

    principals: tuple[int, ...]
    charges: tuple[int, ...]
    due_days: tuple[int, ...]
    remaining: tuple[int, ...]


class Plans:
    """Each loan's `Plan`, cached by shape: (principal, rate, term, method, monthly fee)
    for the amounts, (start, term, repayment day) for the due days. The population draws
    its loans from a few amounts, terms and start offsets, so both caches stay small."""

    def __init__(self) -> None:
        self._amounts: dict[tuple[int, ...], tuple[tuple[int, ...], ...]] = {}
        self._days: dict[tuple[int, int, int], tuple[int, ...]] = {}

    def of(self, contract: Contract) -> Plan:
        key = contract[:5]
        amounts = self._amounts.get(key)
        if amounts is None:
            plan = schedule(
                contract.principal,
                contract.rate,
                contract.term,
                Method.EQUAL_INSTALMENT
                if contract.method == METHOD_EQUAL_INSTALMENT
                else Method.EQUAL_PRINCIPAL,
                _SHAPE_START_DAY,
                _SHAPE_REPAYMENT_DAY,
                monthly_fee_minor=contract.monthly_fee,
            )
            amounts = self._amounts[key] = (
                tuple(item.principal_minor for item in plan.instalments),
                tuple(item.interest_minor + item.fee_minor for item in plan.instalments),
                (plan.principal_minor, *(item.remaining_minor for item in plan.instalments)),
            )
        day_key = (contract.start_day, contract.term, contract.repayment_day)
        days = self._days.get(day_key)
        if days is None:
            days = self._days[day_key] = due_days(*day_key)
        return Plan(amounts[0], amounts[1], days[: len(amounts[0])], amounts[2])


def first_state(plan: Plan) -> LoanRow:
    """A loan's row at disbursement: everything scheduled, the first due day next."""
    return LoanRow(plan.remaining[0], 0, 0, 0, 0, plan.due_days[0], 0, 0, 0,
                   int(LoanFlags.OPEN), 0)  # fmt: skip


def collect(
    plan: Plan, contract: Contract, row: LoanRow, day: int, available: int
) -> Outcome | None:
    """The model's day-end of `day` for one loan (module docstring, steps 1-4), taking at
    most `available`; None when the day-end leaves the loan alone."""
    if not row.flags & _OPEN or row.flags & _CLOSED:
        return None
    if row.collected_day >= day:
        return None  # processed for this day already: a rerun does nothing
    assert row.segment == 0, row  # the simulated loans are never prepaid
    scheduled = row.scheduled_minor
    arrears_principal = row.arrears_principal_minor
    arrears_interest = row.arrears_interest_minor
    penalty = row.penalty_minor
    fallen, due, since = row.fallen_due, row.next_due_day, row.overdue_since
    count = len(plan.due_days)
    newly_due = 0
    while due != 0 and due <= day:
        assert plan.due_days[fallen] == due, (plan, row)
        scheduled -= plan.principals[fallen]
        arrears_principal += plan.principals[fallen]
        arrears_interest += plan.charges[fallen]
        since = since or due
        fallen += 1
        newly_due += 1
        due = plan.due_days[fallen] if fallen < count else 0
    if not newly_due and not arrears_principal + arrears_interest + penalty:
        return None
    owed = {"penalty": penalty, "interest": arrears_interest, "principal": arrears_principal}
    taken = min(available, sum(owed.values()))
    order = allocation_order(contract.allocation)
    paid = dict(allocate(taken, [(name, owed[name]) for name in order])[0])
    penalty -= paid["penalty"]
    arrears_interest -= paid["interest"]
    arrears_principal -= paid["principal"]
    through = row.penalty_through
    left = arrears_principal + arrears_interest
    if left and day > since + contract.grace:
        days = day - max(through, since)
        daily = penalty_minor(
            arrears_principal, arrears_interest, contract.rate, contract.uplift, 1
        )
        penalty += daily * max(days, 0)  # rounded each day, as the day-end charges it
        through = day
    flags = row.flags
    if not left:
        since = 0
        flags &= ~_OVERDUE
    elif day > since:
        flags |= _OVERDUE
    if due == 0 and scheduled == 0 and not left and penalty == 0:
        flags |= _CLOSED
    after = LoanRow(scheduled, arrears_principal, arrears_interest, penalty, fallen, due, since,
                    through, 0, flags, day)  # fmt: skip
    return Outcome(after, taken, paid["principal"], paid["interest"], paid["penalty"],
                   sum(owed.values()))  # fmt: skip


def history_state(plan: Plan, contract: Contract, paid: int, unpaid: int, today: int) -> LoanRow:
    """The row a loan has before the day-end of `today` when its first `paid`
    instalments were collected in full at their due days and the next `unpaid` (all due
    before `today`) found nothing to take since: the model run over the day-ends that
    changed it (each due day, the day before it, the first day past the grace, and the
    last day before `today`; between them its arrears stay the same, so each of those
    runs charges the days skipped as the daily runs would have)."""
    due = plan.due_days[paid] if paid < len(plan.due_days) else 0
    collected = plan.due_days[paid - 1] if paid else 0
    row = LoanRow(plan.remaining[paid], 0, 0, 0, paid, due, 0, 0, 0, _OPEN, collected)
    if not unpaid:
        return row
    first_unpaid = plan.due_days[paid]
    events = {first_unpaid + contract.grace + 1, today - 1}
    for due in plan.due_days[paid : paid + unpaid]:
        events.update((due - 1, due))
    for day in sorted(events):
        if first_unpaid <= day < today:
            outcome = collect(plan, contract, row, day, 0)
            if outcome is not None:
                assert outcome.taken == 0
                row = outcome.row
    return row


def rows_of(ledger: Any) -> np.ndarray:
    """The deposit table as loan rows (only loan accounts' slots mean anything)."""
    return np.frombuffer(ledger.deposits, dtype=LOAN_DTYPE, count=ledger.account_count)


def available_of(ledger: Any, slots: np.ndarray) -> np.ndarray:
    """What each account at `slots` can pay: posted credits less posted debits less
    pending debits, at least 0; 0 for an account that is not active."""
    accounts = accounts_of(ledger)[slots]
    pending = np.frombuffer(ledger.pending, dtype=PENDING_DTYPE, count=ledger.account_count)
    balances = (
        accounts["credits_posted"].astype(np.int64)
        - accounts["debits_posted"].astype(np.int64)
        - pending["debits_pending"][slots]
    )
    return np.where(accounts["status"] == AccountStatus.ACTIVE, np.maximum(balances, 0), 0)


def _row(record: Any) -> LoanRow:
    return LoanRow(*(int(record[name]) for name in LoanRow._fields))


@dataclass
class LoanSnapshot:
    """What the checker read and expects for one day-end's loan step."""

    day: int
    loans: np.ndarray  # loan indexes present on the primary (an OPEN row), in slot order
    slots: np.ndarray
    rows: np.ndarray  # their rows before the step (copies)
    expected: dict[int, Outcome]  # loan -> the model's run of it
    funding_net: int  # the loan-funding account's debits - credits before
    log_count: int


@dataclass
class LoanFindings:
    """What the loan checker found, for the report."""

    mismatches: int = 0
    failures: list[str] = field(default_factory=list)
    runs: int = 0
    loans_touched: int = 0
    collections: int = 0
    collected_fen: int = 0
    principal_fen: int = 0
    interest_fen: int = 0
    penalty_fen: int = 0
    fell_due: int = 0
    short_of_funds: int = 0  # loans the model took less than they owed
    overdue_after: int = 0  # of the touched loans, overdue after the run
    closed: int = 0
    disbursements_verified: int = 0
    disbursements_lost_rpo: int = 0
    disbursements_lost: int = 0
    checks: int = 0

    def fail(self, line: str, count: int = 1) -> None:
        self.mismatches += count
        if len(self.failures) < LINES_MAX:
            self.failures.append(line)


class LoanChecker:
    """Checks each day-end's loan step on the primary that ran it, the disbursements on
    each new primary, and every DC at the end (module docstring)."""

    def __init__(self, book: LoanBook) -> None:
        self.book = book
        self.plans = Plans()
        self.findings = LoanFindings()
        # The model, per loan index: the row and the principal repaid and money collected
        # on the current timeline; `start_*` as they were when the current day's
        # day-end began (a successor finishing it starts from there).
        self.expected = np.zeros(0, dtype=LOAN_DTYPE)
        self.repaid = np.zeros(0, dtype=np.int64)
        self.collected = np.zeros(0, dtype=np.int64)
        self.collections = np.zeros(0, dtype=np.int32)  # collections on the timeline
        self.start = self.expected.copy()
        self.start_repaid = self.repaid.copy()
        self.start_collected = self.collected.copy()
        self.start_collections = self.collections.copy()
        self.day = 0
        self.lost: set[int] = set()  # acknowledged disbursements lost at a failover

    # --- the model's loans ---------------------------------------------------------

    def _grow(self, count: int) -> None:
        if count <= len(self.expected):
            return
        size = max(count, len(self.expected) + len(self.expected) // 8 + 1024)
        for name in ("expected", "start", "repaid", "start_repaid", "collected",
                     "start_collected", "collections", "start_collections"):  # fmt: skip
            old = getattr(self, name)
            grown = np.zeros(size, dtype=old.dtype)
            grown[: len(old)] = old
            setattr(self, name, grown)

    def register_population(self, rows: np.ndarray, reserve: int = 0) -> None:
        """The population's loans (the book's first `len(rows)`) start from these rows,
        what the day-ends before the run left (the book computed them with this model:
        `history_state`); the principal they repaid is what is no longer outstanding.
        Room is made for `reserve` more loans."""
        count = len(rows)
        self._grow(count + reserve)
        self.expected[:count] = rows
        self.start[:count] = rows
        outstanding = rows["scheduled_minor"] + rows["arrears_principal_minor"].astype(np.int64)
        self.repaid[:count] = self.book.contracts["principal"][:count] - outstanding
        self.start_repaid[:count] = self.repaid[:count]

    def register_new(self, loan: int, row: LoanRow) -> None:
        """A loan disbursed during the run starts from `row`: its plan's first row."""
        self._grow(loan + 1)
        expected = first_state(self.plans.of(contract_of(self.book.contracts[loan])))
        if row != expected:
            self.findings.fail(f"loan {loan}: first row {row} is not its plan's {expected}")
        self.expected[loan] = self.start[loan] = tuple(expected)

    def baseline(self, ledger: Any) -> None:
        """After the population was built: its loans' rows are the model's."""
        self.findings.checks += 1
        count = self.book.population_count
        slots = self.book.contracts["slot"][:count].astype(np.int64)
        rows = rows_of(ledger)[slots]
        wrong = np.flatnonzero(rows != self.expected[:count])
        if len(wrong):
            self.findings.fail(
                f"population: {len(wrong)} loan rows are not the model's (loan {int(wrong[0])})",
                len(wrong),
            )

    # --- one day-end's loan step -------------------------------------------------------

    def before(self, ledger: Any, day: int) -> LoanSnapshot:
        """Read the loans before the loan step of `day`'s day-end and run the model."""
        self.findings.checks += 1
        self._grow(self.book.count)
        if day != self.day:
            self.day = day
            count = self.book.count
            self.start[:count] = self.expected[:count]
            self.start_repaid[:count] = self.repaid[:count]
            self.start_collected[:count] = self.collected[:count]
            self.start_collections[:count] = self.collections[:count]
        loans, slots = self.book.present_on(ledger)
        rows = rows_of(ledger)[slots].copy()
        at_start = rows == self.start[loans]
        done_here = (rows["collected_day"] == day) & (rows == self.expected[loans])
        wrong = np.flatnonzero(~at_start & ~done_here)
        if len(wrong):
            loan = int(loans[wrong[0]])
            self.findings.fail(
                f"day {day}: before the loan step {len(wrong)} rows are not the model's"
                f" (loan {loan}: {_row(rows[wrong[0]])}, expected {_row(self.start[loan])})",
                len(wrong),
            )
        contracts = self.book.contracts
        repayment_slots = contracts["repayment_slot"][loans].astype(np.int64)
        available = available_of(ledger, repayment_slots)
        live = (
            ((rows["flags"] & LoanFlags.OPEN) != 0)
            & ((rows["flags"] & LoanFlags.CLOSED) == 0)
            & (rows["collected_day"] < day)
        )
        falls_due = (rows["next_due_day"] != 0) & (rows["next_due_day"] <= day)
        owing = (
            (rows["arrears_principal_minor"] > 0)
            | (rows["arrears_interest_minor"] > 0)
            | (rows["penalty_minor"] > 0)
        )
        # The loans the step must touch, in slot order, read out of numpy once (a Python
        # object a loan costs microseconds; at 30M users a quarter million are due).
        positions = np.flatnonzero(live & at_start & (falls_due | owing))
        chosen = loans[positions]
        taken_from: dict[int, int] = {}
        expected: dict[int, Outcome] = {}
        for loan, fields, state, account, funds in zip(
            chosen.tolist(),
            contracts[list(Contract._fields)][chosen].tolist(),
            self.start[chosen].tolist(),
            repayment_slots[positions].tolist(),
            available[positions].tolist(),
            strict=True,
        ):
            contract = Contract(*fields)
            can_pay = max(0, funds - taken_from.get(account, 0))
            outcome = collect(self.plans.of(contract), contract, LoanRow(*state), day, can_pay)
            if outcome is None:
                continue
            taken_from[account] = taken_from.get(account, 0) + outcome.taken
            expected[loan] = outcome
        return LoanSnapshot(
            day=day,
            loans=loans,
            slots=slots,
            rows=rows,
            expected=expected,
            funding_net=self._funding_net(ledger),
            log_count=ledger.log_count,
        )

    def after(self, snapshot: LoanSnapshot, ledger: Any, log_start: int, log_stop: int) -> None:
        """Check the loan step: its postings (log records [log_start, log_stop)), every
        row, the loan-funding account; then the model moves on to the rows after."""
        findings = self.findings
        findings.checks += 1
        findings.runs += 1
        day = snapshot.day
        contracts = self.book.contracts
        wanted: dict[int, int] = {}  # collection id -> loan
        for loan, outcome in snapshot.expected.items():
            if outcome.taken:
                wanted[collection_transfer_id(self.book.account_id(loan), day)] = loan
        funding = int(ledger.account_slot(LOAN_FUNDING_ID))
        seen: dict[int, int] = {}
        for segment in log_segments(ledger, log_start, log_stop):
            loan_codes = (segment["code"] == TransferCode.LOAN_REPAYMENT) | (
                segment["code"] == TransferCode.LOAN_DISBURSEMENT
            )
            for record in segment[loan_codes & (segment["result"] == 0)]:
                transfer_id = (int(record["id_hi"]) << 64) | int(record["id_lo"])
                found = wanted.get(transfer_id)
                if found is None or int(record["code"]) != TransferCode.LOAN_REPAYMENT:
                    findings.fail(
                        f"day {day}: a loan posting no collection explains"
                        f" (id {transfer_id:#x}, {int(record['amount_posted'])} fen)"
                    )
                    continue
                loan = found
                seen[loan] = seen.get(loan, 0) + 1
                taken = snapshot.expected[loan].taken
                if (
                    int(record["amount_posted"]) != taken
                    or int(record["debit_slot"]) != int(contracts[loan]["repayment_slot"])
                    or int(record["credit_slot"]) != funding
                    or int(record["channel"]) != BANK_CHANNEL
                    or int(record["user_data"]) != day
                ):
                    findings.fail(
                        f"day {day}: loan {loan}'s collection is {int(record['amount_posted'])}"
                        f" fen from slot {int(record['debit_slot'])} to slot"
                        f" {int(record['credit_slot'])}, expected {taken} fen from slot"
                        f" {int(contracts[loan]['repayment_slot'])} to {funding}"
                    )
        for loan in wanted.values():
            if seen.get(loan, 0) != 1:
                findings.fail(
                    f"day {day}: loan {loan} collected {seen.get(loan, 0)} times, expected once"
                    f" ({snapshot.expected[loan].taken} fen)"
                )
        self._check_rows(snapshot, ledger)
        moved = snapshot.funding_net - self._funding_net(ledger)
        taken_total = sum(outcome.taken for outcome in snapshot.expected.values())
        if moved != taken_total:
            findings.fail(
                f"day {day}: the loan-funding account took in {moved} fen in the loan step,"
                f" the model's collections sum to {taken_total}"
            )
        for loan, outcome in snapshot.expected.items():
            row = outcome.row
            self.expected[loan] = tuple(row)
            self.repaid[loan] = self.start_repaid[loan] + outcome.principal
            self.collected[loan] = self.start_collected[loan] + outcome.taken
            self.collections[loan] = self.start_collections[loan] + bool(outcome.taken)
            if self.repaid[loan] + row.outstanding_minor != int(contracts[loan]["principal"]):
                findings.fail(f"day {day}: loan {loan}: repaid + outstanding != disbursed")
            findings.loans_touched += 1
            findings.collections += bool(outcome.taken)
            findings.collected_fen += outcome.taken
            findings.principal_fen += outcome.principal
            findings.interest_fen += outcome.interest
            findings.penalty_fen += outcome.penalty
            findings.fell_due += row.fallen_due - int(self.start[loan]["fallen_due"])
            findings.short_of_funds += outcome.taken < outcome.owed
            findings.overdue_after += bool(row.flags & LoanFlags.OVERDUE)
            findings.closed += bool(row.flags & LoanFlags.CLOSED)

    def _check_rows(self, snapshot: LoanSnapshot, ledger: Any) -> None:
        """Every row after the step is the model's: the collected ones its new row, the
        others as they were."""
        rows = rows_of(ledger)[snapshot.slots]
        expected = snapshot.rows.copy()
        position_of = {int(loan): position for position, loan in enumerate(snapshot.loans)}
        for loan, outcome in snapshot.expected.items():
            expected[position_of[loan]] = tuple(outcome.row)
        wrong = np.flatnonzero(rows != expected)
        if len(wrong):
            position = int(wrong[0])
            loan = int(snapshot.loans[position])
            self.findings.fail(
                f"day {snapshot.day}: {len(wrong)} loan rows differ from the model after the"
                f" loan step (loan {loan}: {_row(rows[position])}, expected"
                f" {_row(expected[position])})",
                len(wrong),
            )

    def _funding_net(self, ledger: Any) -> int:
        slot = int(ledger.account_slot(LOAN_FUNDING_ID))
        if slot < 0:
            return 0
        account = accounts_of(ledger)[slot]
        return int(account["debits_posted"]) - int(account["credits_posted"])

    # --- disbursements ------------------------------------------------------------------

    def verify_disbursements(
        self, name: str, ledger: Any, acknowledged: Sequence[int], cross_region: bool
    ) -> list[int]:
        """Every acknowledged disbursement is on the new primary `name`; returns the ones
        lost (RPO when the failover crossed regions, else a mismatch)."""
        self.findings.checks += 1
        loans, _slots = self.book.present_on(ledger)
        present = self._new_present(loans)
        lost = [loan for loan in acknowledged if loan not in present and loan not in self.lost]
        self.findings.disbursements_verified += len(acknowledged) - len(lost)
        for loan in lost:
            self.lost.add(loan)
            if cross_region:
                self.findings.disbursements_lost_rpo += 1
            else:
                self.findings.disbursements_lost += 1
                self.findings.fail(f"{name}: acknowledged disbursement of loan {loan} lost")
        return lost

    def _new_present(self, loans: np.ndarray) -> set[int]:
        """Of `loans`, those disbursed during the run (every acknowledged one is)."""
        return set(loans[loans >= self.book.population_count].tolist())

    # --- the end -------------------------------------------------------------------------

    def final(self, name: str, ledger: Any, acknowledged: Sequence[int]) -> dict[str, Any]:
        """Every DC at the end: rows, the principal identity, the loan-funding account,
        every acknowledged disbursement present."""
        self.findings.checks += 1
        self._grow(self.book.count)
        loans, slots = self.book.present_on(ledger)
        rows = rows_of(ledger)[slots]
        wrong = np.flatnonzero(rows != self.expected[loans])
        if len(wrong):
            loan = int(loans[wrong[0]])
            self.findings.fail(
                f"{name}: {len(wrong)} loan rows are not the model's at the end (loan {loan}:"
                f" {_row(rows[wrong[0]])}, expected {_row(self.expected[loan])})",
                len(wrong),
            )
        contracts = self.book.contracts
        outstanding = rows["scheduled_minor"] + rows["arrears_principal_minor"].astype(np.int64)
        repaid = self.repaid[loans] + outstanding
        unbalanced = np.flatnonzero(repaid != contracts["principal"][loans])
        if len(unbalanced):
            self.findings.fail(
                f"{name}: {len(unbalanced)} loans' principal repaid + outstanding is not the"
                f" principal disbursed (loan {int(loans[unbalanced[0]])})",
                len(unbalanced),
            )
        lent = int(np.sum(contracts["ledger_amount"][loans]))
        collected = int(np.sum(self.collected[loans]))
        funding = self._funding_net(ledger)
        if funding != lent - collected:
            self.findings.fail(
                f"{name}: the loan-funding account's balance is {funding} fen; the loans"
                f" here were lent {lent} and repaid {collected}: expected {lent - collected}"
            )
        present = self._new_present(loans)
        missing = [loan for loan in acknowledged if loan not in present and loan not in self.lost]
        if missing:
            self.findings.disbursements_lost += len(missing)
            self.findings.fail(
                f"{name}: {len(missing)} acknowledged disbursements missing (loan {missing[0]})",
                len(missing),
            )
        flags = rows["flags"]
        return {
            "loans": len(loans),
            "collections": int(np.sum(self.collections[loans])),
            "collected_fen": collected,
            "open": int(np.count_nonzero((flags & LoanFlags.CLOSED) == 0)),
            "overdue": int(np.count_nonzero((flags & LoanFlags.OVERDUE) != 0)),
            "closed": int(np.count_nonzero((flags & LoanFlags.CLOSED) != 0)),
            "outstanding_fen": int(np.sum(outstanding)),
            "funding_net_fen": funding,
        }

    def report(self) -> dict[str, Any]:
        return {key: value for key, value in self.findings.__dict__.items()}
