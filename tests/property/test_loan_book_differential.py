"""Differential and schedule tests of the day-end loan collection.

`cext.loans.collect` (KernelLedger.loan_collection_batch) against its twin
(ReferenceLedger.loan_collection_batch, one loan at a time through
`ledger.loan_book.collect_one`), batch by batch: a generator builds a small loan book
(loans sharing repayment accounts, rows fresh or in the middle of their life with
arrears and penalty, prepaid segments with a tentative next entry, entries whose slot
holds another account) and runs day-ends over days with gaps (missed days), with cash
arriving, holds, repayment accounts frozen and closed in between, in batches of random
size; every batch's outputs must be equal, and the posted state (`digest()`) after.

And the schedule's agreement: the twin, run on every due day with ample funds,
collects exactly `ledger.loans.schedule`'s instalments, and after `ledger.loans.prepay`
exactly the remainder's, from terms built by `terms_of_segment`.
"""

from __future__ import annotations

import random
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from core.entries import Entry, EntryKind, apply_entry, pack_post_with_rows_payload
from ledger.constants import INTERNAL_ACCOUNTS, INTERNAL_PRODUCT
from ledger.deposits import DEPOSIT_WRITE_ALWAYS, pack_deposit_write
from ledger.interest import RATE_MAX
from ledger.kernel import KernelLedger
from ledger.loan_book import (
    LOAN_ROW,
    PART_NAMES,
    LoanFlags,
    LoanRow,
    LoanTerms,
    allocation_code,
    collect_one,
    first_row,
    loan_row_view,
    next_due_day,
    pack_loan_row,
    pack_loan_terms,
    terms_of_segment,
)
from ledger.loans import (
    Instalment,
    Method,
    PrepaymentMode,
    period_interest_minor,
    prepay,
    schedule,
)
from ledger.reference import ReferenceLedger
from ledger.types import TRANSFER_SIZE, AccountKind, AccountStatus, TransferCode, TransferFlags
from limits.calendar import day_of_date
from tests.ledger_helpers import account_input, assert_same, both, transfer

T0 = 1_767_225_600_000_000_000
DAY0 = day_of_date(2026, 1, 5)
NS_PER_DAY = 86_400 * 10**9
REPAYMENT_BASE, LOAN_BASE, OTHER = 100, 200, 300


class Book:
    """Both twins, the loan book's terms table and the generator's clock and day."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.kernel, self.reference = both(account_capacity=128, transfer_capacity=1 << 14)
        self.clock = T0
        self.day = DAY0
        self.next_id = 10_000
        self.repayments = [REPAYMENT_BASE + index for index in range(rng.randint(1, 5))]
        self.loans = [LOAN_BASE + index for index in range(rng.randint(1, 14))]
        batch = b"".join(
            account_input(account_id, kind, product=INTERNAL_PRODUCT)
            for account_id, kind in INTERNAL_ACCOUNTS
        )
        batch += b"".join(account_input(a, AccountKind.CLASS_I, product=1) for a in self.repayments)
        batch += b"".join(account_input(a, AccountKind.LOAN, product=6) for a in self.loans)
        batch += account_input(OTHER, AccountKind.CLASS_I, product=1)
        for ledger in self.ledgers:
            assert set(ledger.create_accounts(batch)) == {0}
        for account_id in self.repayments:
            self.cash(account_id, rng.choice([0, 500, 20_000, 300_000, 10**9]))
        self.entries: list[LoanTerms] = []
        writes = b""
        for account_id in self.loans:
            writes += pack_deposit_write(account_id, DEPOSIT_WRITE_ALWAYS, self.loan(account_id))
        self.misfits()
        self.entries.sort(key=lambda entry: (entry.slot, entry.segment))
        self.table = b"".join(pack_loan_terms(entry) for entry in self.entries)
        self.post(b"", writes)

    @property
    def ledgers(self) -> tuple[KernelLedger, ReferenceLedger]:
        return self.kernel, self.reference

    def tick(self) -> int:
        self.clock += 1_000_000
        return self.clock

    def cash(self, account_id: int, amount: int) -> None:
        if amount <= 0:
            return
        self.next_id += 1
        record = transfer(
            self.next_id, 1, account_id, amount, code=TransferCode.CASH_DEPOSIT, channel=3
        )
        self.transfers(record)

    def transfers(self, records: bytes) -> None:
        now = self.tick()
        outcomes = [ledger.create_transfers(records, now, self.day) for ledger in self.ledgers]
        assert list(outcomes[0][0]) == list(outcomes[1][0])

    def terms(self, account_id: int, segment: int, principal: int) -> LoanTerms:
        rng = self.rng
        order = list(PART_NAMES)
        rng.shuffle(order)
        repayment = rng.choice(self.repayments)
        return terms_of_segment(
            slot=self.kernel.account_slot(account_id),
            repayment_slot=self.kernel.account_slot(repayment),
            loan_account_id=account_id,
            principal_minor=principal,
            annual_rate=rng.choice([0, 34_500, 240_000, RATE_MAX, rng.randint(0, RATE_MAX)]),
            count=rng.randint(1, 24),
            method=rng.choice(list(Method)),
            first_period_days=rng.choice([None, None, rng.randint(0, 58)]),
            monthly_fee_minor=rng.choice([0, 0, rng.randint(1, 5_000)]),
            uplift_permille=rng.randint(0, 1000),
            grace_days=rng.choice([0, 0, 3, rng.randint(0, 255)]),
            segment=segment,
            allocation=allocation_code(order),
        )

    def loan(self, account_id: int) -> bytes:
        """A loan's row (fresh, or in the middle of its life) and its terms entries."""
        rng = self.rng
        principal = rng.choice([1, 7, rng.randint(1, 3_000_000), 0xFFFFFFFF])
        segment = rng.choice([0, 0, 0, 1, 5])
        own = self.terms(account_id, segment, principal)
        self.entries.append(own)
        if rng.random() < 0.3:  # a tentative next segment (a prepayment on its way)
            self.entries.append(self.terms(account_id, segment + 1, max(1, principal // 2)))
        if segment and rng.random() < 0.5:  # the segment before, still in the table
            self.entries.append(self.terms(account_id, segment - 1, principal))
        first_due = DAY0 + rng.randint(-40, 40)
        if rng.random() < 0.5:
            raw = first_row(principal, first_due)
            return pack_loan_row(**{**loan_row_view(raw)._asdict(), "segment": segment})
        overdue_since = rng.choice([0, first_due - rng.randint(0, 60)])
        return pack_loan_row(
            scheduled_minor=rng.randint(0, principal),
            arrears_principal_minor=rng.choice([0, rng.randint(0, principal)]),
            arrears_interest_minor=rng.choice([0, rng.randint(0, 50_000)]),
            penalty_minor=rng.choice([0, rng.randint(0, 5_000)]),
            fallen_due=rng.randint(0, own.count - 1),
            next_due_day=rng.choice([first_due, first_due, 0]),
            overdue_since=overdue_since,
            penalty_through=rng.choice([0, overdue_since, DAY0 - rng.randint(0, 30)]),
            segment=segment,
            flags=rng.choice([LoanFlags.OPEN, LoanFlags.OPEN | LoanFlags.OVERDUE, 0,
                              LoanFlags.OPEN | LoanFlags.CLOSED]),
            collected_day=rng.choice([0, DAY0 - 1, DAY0 + 50]),
        )  # fmt: skip

    def misfits(self) -> None:
        """Entries the kernel must skip: a slot holding another account, a slot past the
        accounts, a loan id that is not the account's."""
        rng = self.rng
        if rng.random() < 0.5:
            other = self.terms(OTHER, 0, 1_000)
            self.entries.append(other)
        if rng.random() < 0.3:
            self.entries.append(self.terms(OTHER, 0, 1_000)._replace(slot=120, loan_id_lo=999))
        used = {(entry.slot, entry.segment) for entry in self.entries}
        if rng.random() < 0.3 and (self.kernel.account_slot(REPAYMENT_BASE), 0) not in used:
            wrong = self.terms(OTHER, 0, 1_000)._replace(
                slot=self.kernel.account_slot(REPAYMENT_BASE), loan_id_lo=REPAYMENT_BASE + 1
            )
            self.entries.append(wrong)

    def post(self, transfers: bytes, writes: bytes) -> None:
        if not transfers and not writes:
            return
        payload = pack_post_with_rows_payload(transfers, writes)
        entry = Entry(
            EntryKind.POST_WITH_ROWS,
            self.tick(),
            self.day,
            len(transfers) // TRANSFER_SIZE,
            payload,
        )
        outcomes = [apply_entry(ledger, entry) for ledger in self.ledgers]
        assert list(outcomes[0][0]) == list(outcomes[1][0])

    def between_days(self) -> None:
        """What happens during a day: cash, holds, freezes and closures."""
        rng = self.rng
        for account_id in rng.sample(self.repayments, rng.randint(0, len(self.repayments))):
            action = rng.random()
            if action < 0.5:
                self.cash(account_id, rng.choice([100, 5_000, 80_000, 2_000_000]))
            elif action < 0.65:
                self.next_id += 1
                hold = transfer(
                    self.next_id, account_id, OTHER, rng.randint(1, 50_000), channel=3,
                    flags=TransferFlags.PENDING, timeout_s=rng.choice([0, 3_600]),
                )  # fmt: skip
                self.transfers(hold)
            elif action < 0.8:
                status = rng.choice([AccountStatus.FROZEN, AccountStatus.ACTIVE])
                results = [ledger.update_account(account_id, status, 0) for ledger in self.ledgers]
                assert results[0] == results[1]
        if rng.random() < 0.2:
            self.prepaid()

    def prepaid(self) -> None:
        """A prepayment posted: a loan whose row is live moves to its next segment (only
        where the table has that entry), with less scheduled, nothing fallen due."""
        candidates = []
        for entry in self.entries:
            if entry.slot >= self.kernel.account_count:
                continue
            current = loan_row_view(self.kernel.deposit_row_at(entry.slot))
            if entry.segment == current.segment + 1 and current.is_live:
                candidates.append((entry, current))
        if not candidates:
            return
        entry, current = self.rng.choice(candidates)
        moved = current._replace(
            scheduled_minor=current.scheduled_minor // 2, fallen_due=0, segment=entry.segment
        )
        account_id = self.kernel.account_id_at(entry.slot)
        self.post(b"", pack_deposit_write(account_id, DEPOSIT_WRITE_ALWAYS, LOAN_ROW.pack(*moved)))

    def day_end(self) -> None:
        """The day's collection in batches of random size, kernel against twin."""
        start, entry_count = 0, len(self.entries)
        while start < entry_count:
            count_max = self.rng.choice([1, 2, 3, 7, 64])
            got = self.kernel.loan_collection_batch(self.day, self.table, start, count_max)
            want = self.reference.loan_collection_batch(self.day, self.table, start, count_max)
            assert got[2].typecode == "q"
            assert (got[0], got[1], list(got[2]), got[3], got[4]) == (
                want[0], want[1], list(want[2]), want[3], want[4],
            ), (self.day, start, count_max)  # fmt: skip
            assert len(got[2]) == 4 * (len(got[1]) // 64) and got[3] > start
            self.post(got[0], got[1])
            start = got[3]
        rerun = self.kernel.loan_collection_batch(self.day, self.table, 0, 64)
        assert rerun[:2] == (b"", b"") and rerun[3] == entry_count


@settings(max_examples=40, deadline=None)
@given(rng=st.randoms(use_true_random=False), days=st.integers(1, 12))
def test_collection_kernel_matches_the_twin(rng: random.Random, days: int) -> None:
    """Batch by batch, the kernel's transfers, row writes, parts, resume index and
    skipped count equal the twin's, and so does the state once they are posted."""
    book = Book(rng)
    for _ in range(days):
        book.day += rng.choice([1, 1, 1, 2, 4, 17, 31])
        book.between_days()
        book.day_end()
    assert_same(book.kernel, book.reference)
    assert book.kernel.digest() == book.reference.digest()


# --- the schedule's agreement -----------------------------------------------------------


def run_due_days(terms: LoanTerms, row: LoanRow, instalments: tuple[Instalment, ...]) -> LoanRow:
    """Collect on each instalment's due day with ample funds: each takes exactly it."""
    for expected in instalments:
        assert row.next_due_day == expected.due_day
        new, taken, paid = collect_one(expected.due_day, terms, row, 10**15)
        assert new is not None
        assert paid == (expected.principal_minor, expected.interest_minor + expected.fee_minor, 0)
        assert taken == expected.total_minor
        assert (
            new.scheduled_minor == expected.remaining_minor
            and new.owed_minor == new.scheduled_minor
        )
        row = new
    return row


@settings(max_examples=150, deadline=None)
@given(
    principal=st.integers(1, 0xFFFFFFFF),
    rate=st.one_of(st.sampled_from([0, 34_500, 240_000, RATE_MAX]), st.integers(0, RATE_MAX)),
    term=st.integers(1, 60),
    method=st.sampled_from(list(Method)),
    start=st.integers(DAY0, DAY0 + 400),
    repayment_day=st.integers(1, 28),
    fee=st.sampled_from([0, 0, 1, 1_000]),
    data=st.data(),
)
def test_the_twin_collects_the_schedule_and_after_prepay_the_remainder(
    principal: int, rate: int, term: int, method: Method, start: int, repayment_day: int,
    fee: int, data: st.DataObject,
) -> None:  # fmt: skip
    """Month after month with ample funds the twin collects exactly the schedule's
    instalments on their due days (CLOSED after the last); prepaid after some of them,
    it collects exactly the remainder schedule's from the new segment's terms."""
    plan = schedule(principal, rate, term, method, start, repayment_day, monthly_fee_minor=fee)

    def terms_for(
        principal_minor: int, count: int, first_period_days: int | None, segment: int
    ) -> LoanTerms:
        return terms_of_segment(
            slot=1, repayment_slot=2, loan_account_id=77, principal_minor=principal_minor,
            annual_rate=rate, count=count, method=method, first_period_days=first_period_days,
            monthly_fee_minor=fee, segment=segment,
        )  # fmt: skip

    terms = terms_for(principal, term, None, 0)
    row = loan_row_view(first_row(principal, plan.instalments[0].due_day))
    count = len(plan.instalments)
    paid_through = data.draw(st.integers(0, count), label="paid_through")
    row = run_due_days(terms, row, plan.instalments[:paid_through])
    if paid_through == count:
        assert row.flags == LoanFlags.OPEN | LoanFlags.CLOSED and row.next_due_day == 0
        return
    following = plan.instalments[paid_through]
    last_due = plan.instalments[paid_through - 1].due_day if paid_through else start
    day = data.draw(st.integers(last_due, following.due_day - 1), label="day")
    remaining = following.remaining_minor + following.principal_minor
    if remaining < 2:
        return
    modes: list[PrepaymentMode] = ["reduce_instalment", "reduce_term"]
    mode = data.draw(st.sampled_from(modes), label="mode")
    fraction = data.draw(st.integers(1, 999), label="permille")
    accrued = period_interest_minor(remaining, rate, day - last_due)
    amount = accrued + max(1, min(remaining - 1, remaining * fraction // 1000))
    interest, remainder = prepay(plan, paid_through, day, amount, mode)
    assert interest == accrued and remainder.instalments
    next_terms = terms_for(
        remainder.principal_minor, remainder.term_months,
        remainder.instalments[0].due_day - day, 1,
    )  # fmt: skip
    moved = row._replace(
        scheduled_minor=remainder.principal_minor, fallen_due=0, segment=1,
        next_due_day=remainder.instalments[0].due_day,
    )  # fmt: skip
    row = run_due_days(next_terms, moved, remainder.instalments)
    assert row.flags == LoanFlags.OPEN | LoanFlags.CLOSED and row.next_due_day == 0


def test_next_due_day_is_the_same_day_next_month() -> None:
    """Month + 1 on the same day of the month, across a year's end and a leap February."""
    assert next_due_day(day_of_date(2025, 12, 28)) == day_of_date(2026, 1, 28)
    assert next_due_day(day_of_date(2028, 1, 28)) == day_of_date(2028, 2, 28)
    assert next_due_day(day_of_date(2028, 1, 31)) == day_of_date(2028, 2, 29)
    assert next_due_day(day_of_date(2179, 5, 10)) == 0xFFFF  # past the last day number


def test_parts_are_int64() -> None:
    """The parts array is an array('q') on both backends (its empty case included)."""
    book = Book(random.Random(7))
    for ledger in book.ledgers:
        parts = ledger.loan_collection_batch(DAY0 - 100, book.table, 0, 4)[2]
        assert isinstance(parts, array) and parts.typecode == "q"
