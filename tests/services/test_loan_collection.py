"""The day-end's loans step (core/services/dayend.py, `Step.LOANS`) on a real engine and
journal in a tmp dir: instalments due on the day are collected from the repayment account
into the loan-funding account, a short account pays what it holds and the rest stays in
arrears (overdue the next day, penalty once the grace days have passed), a rerun changes
nothing, and a day-end stopped inside the step resumes and collects each loan once.

The loans are opened the way the loan service disburses them (`ledger.loan_book`:
`disbursement_parts`, `first_row`, `terms_of_segment`, the terms in
`Lifecycle.loan_terms`); the expected figures come from `ledger.loans.schedule`.
"""

from __future__ import annotations

import datetime
from array import array
from pathlib import Path
from typing import Any

import anyio
import pytest

from core.entries import EntryKind, pack_post_with_rows_payload
from core.services import dayend as dayend_module
from core.services.dayend import STEPS, DayEnd, LoanChunk, LoanCollectionMaker, Step
from core.services.lifecycle import Lifecycle
from ledger.constants import BANK_CHANNEL, CLEARING_ID, LOAN_FUNDING_ID
from ledger.interest import day_of_date
from ledger.loan_book import (
    LoanFlags,
    LoanRow,
    LoanTerms,
    LoanTermsTable,
    collection_transfer_id,
    disbursement_parts,
    first_row,
    loan_row_view,
    pack_loan_row,
    row_write,
    terms_of_segment,
)
from ledger.loans import Instalment, Method, penalty_minor, schedule
from ledger.records import account_view, pack_account_input, pack_transfer, transfer_view
from ledger.types import AccountFlags, AccountKind, CreateTransferResult, TransferCode
from tests.services.test_dayend import (
    CLASS_II_PRODUCT,
    Clock,
    at,
    balance,
    open_funded,
    read,
    running,
)

LOAN_PRODUCT = 6
RATE = 43_500  # 4.35% a year
TERM = 12
GRACE_DAYS = 3
UPLIFT_PERMILLE = 500
REPAYMENT_DAY = 12  # not the 20th: no settlement pays interest into the accounts
FIRST_LOAN = 6_235_060_000_000_000_001
FEBRUARY_5 = datetime.date(2026, 2, 5)  # the loans' start: the first instalment on Mar 12
MARCH_12 = datetime.date(2026, 3, 12)
APRIL_12 = datetime.date(2026, 4, 12)


def run(test: Any) -> Any:
    """The test on asyncio and on trio, with pytest's monkeypatch."""

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def runner(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
        anyio.run(test, tmp_path / backend, monkeypatch, backend=backend)

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


def first_instalment(principal: int) -> Instalment:
    """Instalment 1 of a loan of `principal` started on Feb 5 (due Mar 12)."""
    plan = schedule(
        principal, RATE, TERM, Method.EQUAL_INSTALMENT, day_of_date(FEBRUARY_5), REPAYMENT_DAY
    )
    assert plan.instalments[0].due_day == day_of_date(MARCH_12)
    return plan.instalments[0]


def terms_table(lifecycle: Lifecycle) -> LoanTermsTable:
    table: LoanTermsTable = lifecycle.loan_terms
    return table


async def open_loan(
    lifecycle: Lifecycle,
    loan_id: int,
    disbursement_id: int,
    repayment_id: int,
    principal: int,
    first_due: datetime.date = MARCH_12,
) -> LoanTerms:
    """What the loan service's disbursement does: the loan account, then the money and
    the first row in one POST_WITH_ROWS entry, then the terms in the Lifecycle's table."""
    engine = lifecycle.running_engine()
    account = pack_account_input(
        id=loan_id, kind=AccountKind.LOAN, product=LOAN_PRODUCT,
        flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    )  # fmt: skip
    assert await engine.submit_accounts(account) == b"\0"
    record, write = disbursement_parts(
        (0xD15 << 100) + loan_id, LOAN_FUNDING_ID, disbursement_id, loan_id, principal,
        first_row(principal, day_of_date(first_due)),
    )  # fmt: skip

    def make(ledger: Any) -> tuple[EntryKind, int, bytes, int]:
        return EntryKind.POST_WITH_ROWS, 1, pack_post_with_rows_payload(record, write), 1

    results, _timestamps, _balances = await engine.submit_generated(make)
    assert results[0] == CreateTransferResult.OK, CreateTransferResult(results[0])
    return await put_terms(lifecycle, loan_id, repayment_id, principal)


async def put_terms(
    lifecycle: Lifecycle, loan_id: int, repayment_id: int, principal: int
) -> LoanTerms:
    """The loan's segment-0 terms into the Lifecycle's table (as the service keeps them)."""
    slots = await read(
        lifecycle, lambda ledger: (ledger.account_slot(loan_id), ledger.account_slot(repayment_id))
    )
    terms = terms_of_segment(
        slot=slots[0], repayment_slot=slots[1], loan_account_id=loan_id,
        principal_minor=principal, annual_rate=RATE, count=TERM,
        method=Method.EQUAL_INSTALMENT, uplift_permille=UPLIFT_PERMILLE, grace_days=GRACE_DAYS,
    )  # fmt: skip
    terms_table(lifecycle).put(loan_id, terms)
    return terms


async def loan_row(lifecycle: Lifecycle, loan_id: int) -> LoanRow:
    row: LoanRow = await read(lifecycle, lambda ledger: loan_row_view(ledger.deposit_row(loan_id)))
    return row


async def top_up(lifecycle: Lifecycle, account_id: int, amount: int, tag: int) -> None:
    engine = lifecycle.running_engine()
    record = pack_transfer(
        id=(0x70 << 100) + (tag << 64) + account_id, debit_account_id=CLEARING_ID,
        credit_account_id=account_id, amount=amount, code=TransferCode.TOPUP_BOUND,
    )  # fmt: skip
    assert set((await engine.submit_transfers(record)).result_codes()) == {0}


def day_after(date: datetime.date) -> int:
    """Five minutes past the midnight that ends `date` (when its day-end runs)."""
    return at(date + datetime.timedelta(days=1), 0, 5)


@run
async def test_a_due_instalment_is_collected_once_and_a_rerun_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the day-end of its due day, instalment 1 (from `schedule`) moves from the
    repayment account to the loan-funding account in one LOAN_REPAYMENT transfer with
    the derived id; the row moves on to instalment 2; a loan not yet due is untouched.
    The loans step runs after the maturities; a rerun of the day is a no-op, and so is
    the collection maker run again on the same day."""
    clock = Clock(at(MARCH_12, 9))
    async with running(tmp_path, clock) as lifecycle:
        sink, payer, other = await open_funded(
            lifecycle, [0, 2_000_000, 2_000_000], CLASS_II_PRODUCT
        )
        loan, later = FIRST_LOAN, FIRST_LOAN + 1
        await open_loan(lifecycle, loan, sink, payer, 1_200_000)
        await open_loan(lifecycle, later, sink, other, 600_000, first_due=APRIL_12)
        clock.now = day_after(MARCH_12)
        dayend = DayEnd(lifecycle)
        result = await dayend.run(MARCH_12)
        assert [outcome.step for outcome in result.steps] == list(STEPS)
        assert STEPS.index(Step.LOANS) == STEPS.index(Step.MATURITIES) + 1
        loans = result.step(Step.LOANS)
        due = first_instalment(1_200_000)
        assert loans.due and loans.count == 1, loans
        assert loans.details["collected"] == 1 and loans.details["terms_entries"] == 2
        assert loans.details["principal_fen"] == due.principal_minor
        assert loans.details["interest_fen"] == due.interest_minor
        assert loans.details["penalty_fen"] == loans.details["overdue"] == 0
        day = day_of_date(MARCH_12)
        posted = await read(
            lifecycle, lambda ledger: ledger.lookup_transfer(collection_transfer_id(loan, day))
        )
        view = transfer_view(posted)
        assert (view.debit_account_id, view.credit_account_id) == (payer, LOAN_FUNDING_ID)
        assert view.amount == due.total_minor and view.code == TransferCode.LOAN_REPAYMENT
        assert view.channel == BANK_CHANNEL and view.user_data == day
        assert await read(lifecycle, lambda ledger: balance(ledger, payer)) == (
            2_000_000 - due.total_minor
        )
        row = await loan_row(lifecycle, loan)
        assert row.scheduled_minor == 1_200_000 - due.principal_minor
        assert row.arrears_principal_minor == row.arrears_interest_minor == row.penalty_minor == 0
        assert (row.fallen_due, row.next_due_day, row.collected_day) == (
            1, day_of_date(APRIL_12), day,
        )  # fmt: skip
        assert row.flags == LoanFlags.OPEN and row.overdue_since == 0
        untouched = await loan_row(lifecycle, later)
        assert untouched == loan_row_view(first_row(600_000, day_of_date(APRIL_12)))

        digest = await read(lifecycle, lambda ledger: ledger.digest())
        again = await dayend.run(MARCH_12)
        assert again.already_done and again.step(Step.LOANS) == loans
        maker = LoanCollectionMaker(terms_table(lifecycle).packed(), day)
        engine = lifecycle.running_engine()
        assert await engine.submit_generated(maker.make) is None
        assert maker.touched == 0 and maker.index == 2
        assert await read(lifecycle, lambda ledger: ledger.digest()) == digest


@run
async def test_short_funds_pay_part_then_overdue_penalty_after_grace_then_paid_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repayment account holding less than the instalment pays what it holds (interest
    first, then principal; the account is emptied); the rest stays in arrears, not yet
    overdue on the due day. The next day the loan is OVERDUE (its row written with no
    transfer: an entry of zero transfers); penalty starts once the 3 grace days have
    passed and is then charged for every day since the due day, at the contract rate
    plus 50%, rounded each day. Money arriving later pays the penalty first, then the
    arrears: the loan is current again."""
    clock = Clock(at(MARCH_12, 9))
    async with running(tmp_path, clock) as lifecycle:
        sink, payer = await open_funded(lifecycle, [0, 50_000], CLASS_II_PRODUCT)
        loan = FIRST_LOAN
        await open_loan(lifecycle, loan, sink, payer, 1_200_000)
        dayend = DayEnd(lifecycle)
        due = first_instalment(1_200_000)
        assert due.interest_minor < 50_000 < due.total_minor

        clock.now = day_after(MARCH_12)
        loans = (await dayend.run(MARCH_12)).step(Step.LOANS)
        assert loans.details["collected"] == 1 and loans.details["overdue"] == 0
        assert loans.details["interest_fen"] == due.interest_minor
        assert loans.details["principal_fen"] == 50_000 - due.interest_minor
        assert await read(lifecycle, lambda ledger: balance(ledger, payer)) == 0
        row = await loan_row(lifecycle, loan)
        arrears = due.principal_minor - (50_000 - due.interest_minor)
        assert (row.arrears_principal_minor, row.arrears_interest_minor) == (arrears, 0)
        assert row.overdue_since == day_of_date(MARCH_12) and not row.flags & LoanFlags.OVERDUE

        daily = penalty_minor(arrears, 0, RATE, UPLIFT_PERMILLE, 1)
        assert daily > 0
        for offset in range(1, 5):  # Mar 13 .. Mar 16
            date = MARCH_12 + datetime.timedelta(days=offset)
            clock.now = day_after(date)
            loans = (await dayend.run(date)).step(Step.LOANS)
            assert loans.count == 1 and loans.details["collected"] == 0, (date, loans)
            assert loans.details["overdue"] == 1
            row = await loan_row(lifecycle, loan)
            assert row.flags & LoanFlags.OVERDUE and row.collected_day == day_of_date(date)
            within_grace = offset <= GRACE_DAYS
            assert row.penalty_minor == (0 if within_grace else daily * offset), (date, row)
        assert row.penalty_through == day_of_date(MARCH_12) + 4

        clock.now = at(datetime.date(2026, 3, 17), 10)
        await top_up(lifecycle, payer, 200_000, 1)
        clock.now = day_after(datetime.date(2026, 3, 17))
        loans = (await dayend.run(datetime.date(2026, 3, 17))).step(Step.LOANS)
        assert loans.details["penalty_fen"] == 4 * daily
        assert loans.details["principal_fen"] == arrears and loans.details["overdue"] == 0
        row = await loan_row(lifecycle, loan)
        assert row.arrears_principal_minor == row.penalty_minor == row.overdue_since == 0
        assert row.flags == LoanFlags.OPEN
        assert await read(lifecycle, lambda ledger: balance(ledger, payer)) == (
            200_000 - 4 * daily - arrears
        )
        funding = await read(lifecycle, lambda ledger: balance(ledger, LOAN_FUNDING_ID))
        assert funding == -1_200_000 + 50_000 + 4 * daily + arrears


async def open_book(lifecycle: Lifecycle) -> tuple[list[int], list[int]]:
    """Seven loans due on Mar 12, in slot order: two paid in full, two whose accounts
    are empty (a chunk of two with nothing to take: rows only), one short, and two
    sharing one repayment account that covers the first and part of the second."""
    balances = [0, 2_000_000, 2_000_000, 0, 0, 60_000, 150_000]
    sink, *payers = await open_funded(lifecycle, balances, CLASS_II_PRODUCT)
    payers.append(payers[-1])  # the last two loans share the last account
    loans = [FIRST_LOAN + index for index in range(len(payers))]
    for loan, payer in zip(loans, payers, strict=True):
        await open_loan(lifecycle, loan, sink, payer, 1_200_000)
    return loans, sorted(set(payers))


async def book_state(lifecycle: Lifecycle, loans: list[int], payers: list[int]) -> Any:
    """What the collection leaves: rows, repayment balances, funding, collection transfers
    (their timestamps aside)."""
    day = day_of_date(MARCH_12)

    def state(ledger: Any) -> Any:
        transfers = []
        for loan in loans:
            raw = ledger.lookup_transfer(collection_transfer_id(loan, day))
            if raw is not None:
                view = transfer_view(raw)
                transfers.append((view.id, view.debit_account_id, view.amount, view.result))
        return (
            [loan_row_view(ledger.deposit_row(loan)) for loan in loans],
            [balance(ledger, payer) for payer in payers],
            balance(ledger, LOAN_FUNDING_ID),
            transfers,
            account_view(ledger.lookup_account(LOAN_FUNDING_ID)).credits_posted,
        )

    return await read(lifecycle, state)


@run
async def test_a_day_end_stopped_inside_the_loans_step_resumes_and_collects_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loans step in chunks of two loans, stopped once its first chunk is durable
    (the process's end: the server is stopped and started again, the ledger rebuilt from
    the journal, zero-transfer entries included). The rerun resumes at the loans step and
    leaves exactly what a run that never stopped leaves: every row, every balance, one
    collection transfer per loan that took money (the two sharing an account included)."""
    monkeypatch.setattr(dayend_module, "LOAN_COLLECTION_CHUNK_MAX", 2)
    clock = Clock(at(MARCH_12, 9))
    async with running(tmp_path / "whole", clock) as lifecycle:
        loans, payers = await open_book(lifecycle)
        clock.now = day_after(MARCH_12)
        whole = (await DayEnd(lifecycle).run(MARCH_12)).step(Step.LOANS)
        expected = await book_state(lifecycle, loans, payers)
    assert whole.count == 7 and whole.details["chunks"] == 4, whole
    assert whole.details["collected"] == 5 and whole.details["overdue"] == 0

    clock = Clock(at(MARCH_12, 9))
    directory = tmp_path / "stopped"
    counted = LoanCollectionMaker.count

    def stop_after_the_first(self: LoanCollectionMaker, *args: Any) -> None:
        counted(self, *args)
        raise OSError("stopped inside the loans step")

    async with running(directory, clock) as lifecycle:
        loans, payers = await open_book(lifecycle)
        clock.now = day_after(MARCH_12)
        monkeypatch.setattr(LoanCollectionMaker, "count", stop_after_the_first)
        monkeypatch.setattr(dayend_module, "LOAN_CHUNKS_IN_FLIGHT", 1)  # nothing else ahead
        with pytest.raises(ExceptionGroup) as stopped:
            await DayEnd(lifecycle).run(MARCH_12)
        assert stopped.group_contains(OSError, match="stopped inside")
        monkeypatch.setattr(LoanCollectionMaker, "count", counted)
        partial = await book_state(lifecycle, loans, payers)
        assert partial != expected  # stopped part way
    async with running(directory, clock) as lifecycle:
        assert len(terms_table(lifecycle)) == 0  # no `loan/` records here: put them back
        for loan, payer in zip(loans, [*payers, payers[-1]], strict=True):
            await put_terms(lifecycle, loan, payer, 1_200_000)
        result = await DayEnd(lifecycle).run(MARCH_12)
        assert result.resumed_from == Step.LOANS
        resumed = result.step(Step.LOANS)
        assert resumed.count == 5 and resumed.details["chunks"] == 3, resumed
        assert await book_state(lifecycle, loans, payers) == expected


def test_count_adds_only_the_loans_whose_row_was_written() -> None:
    """`LoanCollectionMaker.count` on a chunk whose second transfer was refused: that
    loan is `failed` (its row was not written: neither its fen nor its flags count); a
    loan that took nothing counts as touched; the flags of the written rows give the
    overdue and closed loans. With every transfer posted, the whole-chunk sums agree
    with the loan-by-loan ones."""

    def write(loan: int, flags: int, transfer_index: int | None) -> bytes:
        row = loan_row_view(pack_loan_row(scheduled_minor=100, next_due_day=1, flags=flags))
        return row_write(loan, row, transfer_index)

    open_, overdue, closed = (
        LoanFlags.OPEN,
        LoanFlags.OPEN | LoanFlags.OVERDUE,
        LoanFlags.OPEN | LoanFlags.CLOSED,
    )
    writes = (
        write(1, closed, 0) + write(2, overdue, 1) + write(3, overdue, None) + write(4, open_, 2)
    )
    parts = array("q", [0, 500, 40, 0, 1, 70, 30, 9, -1, 0, 0, 0, 2, 20, 3, 1])
    chunk = LoanChunk(writes, parts)

    maker = LoanCollectionMaker(b"", 1)
    maker.count(bytearray([0, 35, 0]), chunk)  # transfer 1 refused (a reason code)
    figures = {name: maker.details()[name] for name in ("collected", "failed", "overdue", "closed")}
    assert maker.touched == 3 and figures == {
        "collected": 2,
        "failed": 1,
        "overdue": 1,
        "closed": 1,
    }
    assert (maker.principal_fen, maker.interest_fen, maker.penalty_fen) == (520, 43, 1)

    whole, one_by_one = LoanCollectionMaker(b"", 1), LoanCollectionMaker(b"", 1)
    whole.count(bytearray(3), chunk)
    one_by_one.count(bytearray([0, 0, 0, 1]), chunk)  # a 4th, foreign result: the slow path
    assert whole.details() == one_by_one.details()
    assert (whole.touched, whole.collected, whole.overdue, whole.closed) == (4, 3, 2, 1)
    assert (whole.principal_fen, whole.interest_fen, whole.penalty_fen) == (590, 73, 10)
