"""The loan book: terms, one loan's collection (`collect_one`), the day-end collection
batch (`cext.loans.collect` and its twin), and rows-only POST_WITH_ROWS entries.

Worked examples, checked by hand (12,000.00 CNY, equal principal over 12 months at 6%:
the monthly rate is 0.5%, so instalment 1 is 1,000.00 principal + 60.00 interest):

- a repayment account with 5,000 CNY pays instalment 1 in full on its due day D1:
  106,000 fen taken, 100,000 principal + 6,000 interest, 1,100,000 fen left scheduled;
- a repayment account with 30 CNY pays 3,000 fen, all of it interest (penalty, interest,
  principal: interest comes before principal); 100,000 principal + 3,000 interest stay
  in arrears from D1. Grace 3 days, uplift 50% (penalty rate 9% a year): D1+1..D1+3
  charge nothing (OVERDUE from D1+1); on D1+4 the grace has passed and the four days
  D1+1..D1+4 are charged retroactively, each 103,000 x 9% / 360 = 25.75 -> 26 fen: 104.
  500 CNY arriving on D1+5 pay 104 penalty + 3,000 interest + 46,896 principal, leaving
  53,104 principal in arrears, on which D1+5 is charged 53,104 x 9% / 360 = 13.276 ->
  13 fen;
- two loans repaid from one account holding 1,500 CNY on D1: the first (by slot) takes
  106,000 fen, the second the 44,000 left: 6,000 interest + 38,000 principal.
"""

from __future__ import annotations

import itertools
from array import array
from pathlib import Path

import anyio
import pytest

from cext import loans as loan_kernel
from core.engine import Engine
from core.entries import Entry, EntryKind, apply_entry, pack_post_with_rows_payload
from core.journal import Journal, JournalScan
from ledger.constants import BANK_CHANNEL, INTERNAL_ACCOUNTS, INTERNAL_PRODUCT, LOAN_FUNDING_ID
from ledger.deposits import (
    DEPOSIT_WRITE,
    DEPOSIT_WRITE_ALWAYS,
    deposit_write_view,
    pack_deposit_write,
)
from ledger.kernel import KernelLedger
from ledger.loan_book import (
    ALLOCATION_DEFAULT,
    COLLECTION_ID_MIX,
    COLLECTION_ID_TAG,
    LOAN_ROW,
    LOAN_TERMS,
    METHOD_EQUAL_INSTALMENT,
    METHOD_EQUAL_PRINCIPAL,
    LoanFlags,
    LoanRow,
    LoanTerms,
    LoanTermsTable,
    allocation_code,
    collect_one,
    collection_transfer_id,
    disbursement_parts,
    first_row,
    instalment,
    loan_row_view,
    next_due_day,
    pack_loan_row,
    pack_loan_terms,
    repayment_parts,
    terms_of_segment,
)
from ledger.loans import Method, schedule
from ledger.records import transfer_view
from ledger.reference import ReferenceLedger
from ledger.types import AccountKind, AccountStatus, CreateTransferResult, TransferCode
from limits.calendar import day_of_date
from tests.engine_helpers import FrozenClock, ListStore, example_rules, replay
from tests.ledger_helpers import account_input, both, transfer

R = CreateTransferResult
Ledger = KernelLedger | ReferenceLedger
BACKENDS = ("kernel", "reference")

T0 = 1_767_225_600_000_000_000
CLOCK = itertools.count(1)
D1 = day_of_date(2026, 2, 20)
PRINCIPAL = 1_200_000
RATE = 60_000  # 6% a year: 0.5% a month
FULL, SHORT, SHARED = 100, 101, 102  # Class I repayment accounts
LOAN_FULL, LOAN_SHORT, LOAN_SHARED_A, LOAN_SHARED_B, LOAN_LATER = 200, 201, 202, 203, 204
CASH = [(FULL, 500_000), (SHORT, 3_000), (SHARED, 150_000)]


def open_book(backend: str) -> tuple[Ledger, LoanTermsTable]:
    """The internal accounts, three repayment accounts with their cash, five loans with
    instalment 1 due on D1 (LOAN_LATER: a month later) and their terms."""
    kernel, reference = both(account_capacity=64, transfer_capacity=1 << 12)
    ledger: Ledger = kernel if backend == "kernel" else reference
    batch = b"".join(
        account_input(account_id, kind, product=INTERNAL_PRODUCT)
        for account_id, kind in INTERNAL_ACCOUNTS
    )
    for account_id, _ in CASH:
        batch += account_input(account_id, AccountKind.CLASS_I, product=1)
    loans = [
        (LOAN_FULL, FULL),
        (LOAN_SHORT, SHORT),
        (LOAN_SHARED_A, SHARED),
        (LOAN_SHARED_B, SHARED),
        (LOAN_LATER, FULL),
    ]
    for account_id, _ in loans:
        batch += account_input(account_id, AccountKind.LOAN, product=6)
    assert set(ledger.create_accounts(batch)) == {0}
    cash = b"".join(
        transfer(900 + index, 1, account_id, amount, code=TransferCode.CASH_DEPOSIT, channel=3)
        for index, (account_id, amount) in enumerate(CASH)
    )
    assert set(ledger.create_transfers(cash, now_ns(), D1 - 1)[0]) == {R.OK}
    table = LoanTermsTable()
    writes = b""
    for account_id, repayment_id in loans:
        first_due = next_due_day(D1) if account_id == LOAN_LATER else D1
        writes += pack_deposit_write(
            account_id, DEPOSIT_WRITE_ALWAYS, first_row(PRINCIPAL, first_due)
        )
        table.put(account_id, pack_loan_terms(terms(ledger, account_id, repayment_id)))
    apply(ledger, b"", writes, D1 - 1)  # rows only: no transfer
    return ledger, table


def terms(ledger: Ledger, account_id: int, repayment_id: int) -> LoanTerms:
    """LOAN_*'s terms: 12,000 CNY, 12 months equal principal at 6%, grace 3, uplift 50%."""
    return terms_of_segment(
        slot=ledger.account_slot(account_id), repayment_slot=ledger.account_slot(repayment_id),
        loan_account_id=account_id, principal_minor=PRINCIPAL, annual_rate=RATE, count=12,
        method=Method.EQUAL_PRINCIPAL, grace_days=3, uplift_permille=500,
    )  # fmt: skip


def now_ns() -> int:
    """The tests' clock: a second later at every call."""
    return T0 + next(CLOCK) * 10**9


def apply(ledger: Ledger, transfers: bytes, writes: bytes, day: int) -> bytearray:
    """A POST_WITH_ROWS entry applied as the engine and replay apply it."""
    payload = pack_post_with_rows_payload(transfers, writes)
    count = len(transfers) // 128
    outcome: tuple[bytearray, array[int], array[int]] = apply_entry(
        ledger, Entry(EntryKind.POST_WITH_ROWS, now_ns(), day, count, payload)
    )
    return outcome[0]


def collect_day(ledger: Ledger, table: LoanTermsTable, day: int) -> tuple[bytes, bytes, array[int]]:
    """The day-end collection of `day` in one batch, posted; (transfers, writes, parts)."""
    transfers, writes, parts, next_index, skipped = ledger.loan_collection_batch(
        day, table.packed(), 0, 64
    )
    assert next_index == len(table) and skipped == 0
    if transfers or writes:
        results = apply(ledger, transfers, writes, day)
        assert set(results) <= {R.OK}, list(results)
    return transfers, writes, parts


def row(ledger: Ledger, account_id: int) -> LoanRow:
    raw = ledger.deposit_row(account_id)
    assert raw is not None
    return loan_row_view(raw)


def balance(ledger: Ledger, account_id: int) -> int:
    record = ledger.lookup_account(account_id)
    assert record is not None
    debits, credits = array("q", record[16:32])
    return credits - debits


def written_accounts(writes: bytes) -> list[int]:
    return [deposit_write_view(writes, offset).account_id for offset in range(0, len(writes), 64)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_instalment_falls_due_and_is_collected_in_full(backend: str) -> None:
    """Instalment 1 of LOAN_FULL moves out of the schedule and is paid at once: one
    transfer repayment account -> funding with the collection id, the row advanced a
    month, nothing in arrears; LOAN_LATER (due next month) is not touched."""
    ledger, table = open_book(backend)
    transfers, writes, parts = collect_day(ledger, table, D1)
    assert LOAN_LATER not in written_accounts(writes)
    index = written_accounts(writes).index(LOAN_FULL)
    assert list(parts[4 * index : 4 * index + 4])[1:] == [100_000, 6_000, 0]
    record = transfer_view(transfers, 128 * parts[4 * index])
    assert record.id == collection_transfer_id(LOAN_FULL, D1)
    assert (record.debit_account_id, record.credit_account_id) == (FULL, LOAN_FUNDING_ID)
    assert (record.amount, record.code, record.channel, record.user_data) == (
        106_000, TransferCode.LOAN_REPAYMENT, BANK_CHANNEL, D1,
    )  # fmt: skip
    assert row(ledger, LOAN_FULL) == LoanRow(
        scheduled_minor=1_100_000, arrears_principal_minor=0, arrears_interest_minor=0,
        penalty_minor=0, fallen_due=1, next_due_day=day_of_date(2026, 3, 20), overdue_since=0,
        penalty_through=0, segment=0, flags=LoanFlags.OPEN, collected_day=D1,
    )  # fmt: skip
    assert balance(ledger, FULL) == 500_000 - 106_000
    assert balance(ledger, LOAN_FUNDING_ID) >= 106_000
    assert balance(ledger, LOAN_FULL) == 0  # the loan account's balance stays 0
    assert row(ledger, LOAN_LATER).collected_day == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_funds_then_penalty_after_grace_retroactively(backend: str) -> None:
    """The module docstring's second example, day by day."""
    ledger, table = open_book(backend)
    _, writes, parts = collect_day(ledger, table, D1)
    index = written_accounts(writes).index(LOAN_SHORT)
    assert list(parts[4 * index + 1 : 4 * index + 4]) == [0, 3_000, 0]
    short = row(ledger, LOAN_SHORT)
    assert (short.arrears_principal_minor, short.arrears_interest_minor) == (100_000, 3_000)
    assert (short.overdue_since, short.penalty_minor, short.flags) == (D1, 0, LoanFlags.OPEN)
    for day in (D1 + 1, D1 + 2, D1 + 3):  # within the grace: nothing accrued
        collect_day(ledger, table, day)
        short = row(ledger, LOAN_SHORT)
        assert (short.penalty_minor, short.penalty_through, short.collected_day) == (0, 0, day)
        assert short.flags == LoanFlags.OPEN | LoanFlags.OVERDUE
    collect_day(ledger, table, D1 + 4)
    short = row(ledger, LOAN_SHORT)
    assert (short.penalty_minor, short.penalty_through) == (4 * 26, D1 + 4)
    cash = transfer(990, 1, SHORT, 50_000, code=TransferCode.CASH_DEPOSIT, channel=3)
    assert list(ledger.create_transfers(cash, now_ns(), D1 + 5)[0]) == [R.OK]
    transfers, writes, parts = collect_day(ledger, table, D1 + 5)
    index = written_accounts(writes).index(LOAN_SHORT)
    assert list(parts[4 * index + 1 : 4 * index + 4]) == [46_896, 3_000, 104]
    assert transfer_view(transfers, 128 * parts[4 * index]).amount == 50_000
    short = row(ledger, LOAN_SHORT)
    assert (short.arrears_principal_minor, short.arrears_interest_minor) == (53_104, 0)
    assert (short.penalty_minor, short.penalty_through, short.overdue_since) == (13, D1 + 5, D1)
    assert balance(ledger, SHORT) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_loans_share_one_repayment_account_in_one_call(backend: str) -> None:
    """The second loan sees only what the first left: 150,000 - 106,000 = 44,000, paid
    6,000 interest then 38,000 principal; the account ends at 0, never below."""
    ledger, table = open_book(backend)
    transfers, writes, parts = collect_day(ledger, table, D1)
    accounts = written_accounts(writes)
    first, second = accounts.index(LOAN_SHARED_A), accounts.index(LOAN_SHARED_B)
    assert list(parts[4 * first + 1 : 4 * first + 4]) == [100_000, 6_000, 0]
    assert list(parts[4 * second + 1 : 4 * second + 4]) == [38_000, 6_000, 0]
    assert transfer_view(transfers, 128 * parts[4 * second]).amount == 44_000
    assert balance(ledger, SHARED) == 0
    assert row(ledger, LOAN_SHARED_B).arrears_principal_minor == 62_000


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rerun_on_the_same_day_does_nothing(backend: str) -> None:
    """After D1's collection posted, D1 again finds nothing: no transfer, no write."""
    ledger, table = open_book(backend)
    collect_day(ledger, table, D1)
    before = [ledger.deposit_row(account) for account in (LOAN_FULL, LOAN_SHORT, LOAN_SHARED_B)]
    transfers, writes, parts, next_index, skipped = ledger.loan_collection_batch(
        D1, table.packed(), 0, 64
    )
    assert (transfers, writes, list(parts), next_index, skipped) == (b"", b"", [], len(table), 0)
    after = [ledger.deposit_row(account) for account in (LOAN_FULL, LOAN_SHORT, LOAN_SHARED_B)]
    assert after == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_stop_at_count_max_and_resume(backend: str) -> None:
    """count_max bounds the loans touched a call; the next call resumes at next_index,
    and the calls together give what one call gives."""
    ledger, table = open_book(backend)
    one = ledger.loan_collection_batch(D1, table.packed(), 0, 64)
    first = ledger.loan_collection_batch(D1, table.packed(), 0, 2)
    assert len(first[1]) == 2 * 64 and first[3] == 2
    second = ledger.loan_collection_batch(D1, table.packed(), first[3], 64)

    def rows_of(writes: bytes) -> list[tuple[int, bytes]]:
        views = [deposit_write_view(writes, offset) for offset in range(0, len(writes), 64)]
        return [(view.account_id, view.row) for view in views]

    assert rows_of(first[1]) + rows_of(second[1]) == rows_of(one[1])
    assert first[0] + second[0] == one[0]  # each call numbers its own transfers from 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mismatched_entry_is_skipped_and_a_frozen_account_pays_nothing(backend: str) -> None:
    """An entry whose loan id is not the account's at its slot is counted as skipped;
    a frozen repayment account pays nothing: its loan still falls due, with no transfer
    (the write is unconditional)."""
    ledger, table = open_book(backend)
    wrong = terms(ledger, LOAN_FULL, FULL)._replace(loan_id_lo=999)
    table.remove(LOAN_FULL)
    table.put(999, pack_loan_terms(wrong))
    assert ledger.update_account(SHORT, AccountStatus.FROZEN, 0) == 0
    transfers, writes, parts, _, skipped = ledger.loan_collection_batch(D1, table.packed(), 0, 64)
    assert skipped == 1 and LOAN_FULL not in written_accounts(writes)
    index = written_accounts(writes).index(LOAN_SHORT)
    assert list(parts[4 * index : 4 * index + 4]) == [-1, 0, 0, 0]
    assert deposit_write_view(writes, 64 * index).transfer_index == DEPOSIT_WRITE_ALWAYS
    assert len(transfers) == 2 * 128  # the shared account's two loans only
    apply(ledger, transfers, writes, D1)
    frozen = row(ledger, LOAN_SHORT)
    assert (frozen.arrears_principal_minor, frozen.arrears_interest_minor) == (100_000, 6_000)


def test_a_terms_table_out_of_order_is_refused() -> None:
    """Both backends refuse a table whose entries are not in (slot, segment) order."""
    for backend in BACKENDS:
        ledger, table = open_book(backend)
        packed = table.packed()
        swapped = packed[48:96] + packed[:48] + packed[96:]
        with pytest.raises(ValueError, match="terms entry 1"):
            ledger.loan_collection_batch(D1, swapped, 0, 64)


def test_rows_only_entry_round_trips_through_the_journal_and_replay(tmp_path: Path) -> None:
    """A POST_WITH_ROWS entry with no transfer and row writes is journaled, read back
    equal, and replayed to the same rows and the same ledger digest on both backends
    (a write that depends on a transfer the entry does not have is not applied)."""
    entries = [
        Entry(
            EntryKind.CREATE_ACCOUNTS, T0 + 1, D1, 2,
            account_input(LOAN_FULL, AccountKind.LOAN, product=6)
            + account_input(LOAN_SHORT, AccountKind.LOAN, product=6),
        ),
        Entry(
            EntryKind.POST_WITH_ROWS, T0 + 2, D1, 0,
            pack_post_with_rows_payload(
                b"",
                pack_deposit_write(LOAN_FULL, DEPOSIT_WRITE_ALWAYS, first_row(PRINCIPAL, D1))
                + pack_deposit_write(LOAN_SHORT, 0, first_row(1, D1)),
            ),
        ),
    ]  # fmt: skip
    with Journal.open(tmp_path) as journal:
        journal.append(entries)
    read = [stored.entry for stored in JournalScan(tmp_path)]
    assert read == entries
    kernel, reference = both(account_capacity=64, transfer_capacity=1 << 12)
    for ledger in (kernel, reference):
        for entry in read:
            outcome = apply_entry(ledger, entry)
        assert len(outcome[0]) == 0
        assert ledger.deposit_row(LOAN_FULL) == first_row(PRINCIPAL, D1)
        assert ledger.deposit_row(LOAN_SHORT) == bytes(32)
    assert kernel.digest() == reference.digest()
    recovered, _ = both(account_capacity=64, transfer_capacity=1 << 12)
    for entry in read:
        apply_entry(recovered, entry)
    assert recovered.digest() == kernel.digest()


# --- pure pieces ------------------------------------------------------------------------


def test_terms_of_segment_fix_method_level_and_first_interest() -> None:
    """Equal instalment stores the level payment; a zero rate is split like equal
    principal; a remainder's first period is charged by its days."""
    level = terms_of_segment(
        slot=1, repayment_slot=2, loan_account_id=(7 << 64) | 9, principal_minor=10_000_000,
        annual_rate=34_500, count=12, method=Method.EQUAL_INSTALMENT,
    )  # fmt: skip
    assert (level.method, level.level_minor, level.first_interest_minor) == (
        METHOD_EQUAL_INSTALMENT, 848_988, -1,
    )  # fmt: skip
    assert level.loan_id_lo == 9 and level.allocation == ALLOCATION_DEFAULT
    free = terms_of_segment(
        slot=1, repayment_slot=2, loan_account_id=9, principal_minor=1_000_000, annual_rate=0,
        count=12, method="equal_instalment", first_period_days=40,
    )  # fmt: skip
    assert (free.method, free.level_minor, free.first_interest_minor) == (
        METHOD_EQUAL_PRINCIPAL, 1_000_000, 0,
    )  # fmt: skip
    remainder = terms_of_segment(
        slot=1, repayment_slot=2, loan_account_id=9, principal_minor=3_600_000,
        annual_rate=36_000, count=6, method=Method.EQUAL_PRINCIPAL, first_period_days=20,
    )  # fmt: skip
    assert remainder.first_interest_minor == 7_200  # 3,600,000 x 3.6% x 20 / 360
    with pytest.raises(ValueError, match="allocation"):
        terms_of_segment(
            slot=1, repayment_slot=2, loan_account_id=9, principal_minor=1, annual_rate=0,
            count=1, method=Method.EQUAL_PRINCIPAL, allocation=0,
        )  # fmt: skip


def test_instalment_and_collect_one_follow_the_schedule() -> None:
    """With ample funds, each due day collects exactly the schedule's instalment, and the
    last closes the loan (100,000 CNY, 12 months at 3.45%, equal instalment)."""
    plan = schedule(10_000_000, 34_500, 12, Method.EQUAL_INSTALMENT, D1 - 31, 20)
    loan_terms = terms_of_segment(
        slot=1, repayment_slot=2, loan_account_id=9, principal_minor=10_000_000,
        annual_rate=34_500, count=12, method=Method.EQUAL_INSTALMENT,
    )  # fmt: skip
    current = loan_row_view(first_row(10_000_000, plan.instalments[0].due_day))
    for expected in plan.instalments:
        assert instalment(loan_terms, current) == (
            expected.principal_minor,
            expected.interest_minor,
        )
        new, taken, paid = collect_one(expected.due_day, loan_terms, current, 10**12)
        assert new is not None and taken == expected.total_minor
        assert paid == (expected.principal_minor, expected.interest_minor, 0)
        current = new
    assert current.flags == LoanFlags.OPEN | LoanFlags.CLOSED and current.owed_minor == 0
    assert collect_one(current.collected_day + 40, loan_terms, current, 10**12)[0] is None


def test_collect_one_allocates_in_the_terms_order() -> None:
    """Principal first: 500 fen pay principal before interest and penalty."""
    loan_terms = terms_of_segment(
        slot=1, repayment_slot=2, loan_account_id=9, principal_minor=1_200_000,
        annual_rate=RATE, count=12, method=Method.EQUAL_PRINCIPAL,
        allocation=allocation_code(("principal", "interest", "penalty")),
    )  # fmt: skip
    before = loan_row_view(pack_loan_row(
        scheduled_minor=1_100_000, arrears_principal_minor=300, arrears_interest_minor=400,
        penalty_minor=50, fallen_due=1, next_due_day=D1 + 40, overdue_since=D1 - 5,
        penalty_through=D1 - 1,
    ))  # fmt: skip
    new, taken, paid = collect_one(D1, loan_terms, before, 500)
    assert (taken, paid) == (500, (300, 200, 0))
    assert new is not None and new.arrears_interest_minor == 200
    assert new.penalty_minor == 50 + 0  # 200 fen x 9% / 360 = 0.05 -> 0 a day


def test_disbursement_and_repayment_parts() -> None:
    """The shared helpers: one transfer each (codes, accounts, channel), and the row write
    depending on it."""
    row = first_row(PRINCIPAL, D1)
    record, write = disbursement_parts(77, LOAN_FUNDING_ID, FULL, LOAN_FULL, 1_190_000, row)
    view = transfer_view(record)
    assert (view.id, view.debit_account_id, view.credit_account_id, view.amount) == (
        77, LOAN_FUNDING_ID, FULL, 1_190_000,
    )  # fmt: skip
    assert (view.code, view.channel) == (TransferCode.LOAN_DISBURSEMENT, BANK_CHANNEL)
    assert deposit_write_view(write) == (LOAN_FULL, 0, row)
    record, write = repayment_parts(
        78, FULL, LOAN_FUNDING_ID, LOAN_FULL, 500, row, transfer_index=3
    )
    view = transfer_view(record)
    assert (view.debit_account_id, view.credit_account_id, view.code) == (
        FULL, LOAN_FUNDING_ID, TransferCode.LOAN_REPAYMENT,
    )  # fmt: skip
    assert deposit_write_view(write).transfer_index == 3


def test_terms_table_keeps_entries_sorted_by_slot_and_segment() -> None:
    """put replaces a loan's segment entry, drop_after forgets tentative segments,
    remove forgets the loan; packed() is sorted by (slot, segment)."""
    table = LoanTermsTable()

    def entry(account_id: int, slot: int, segment: int) -> bytes:
        return pack_loan_terms(terms_of_segment(
            slot=slot, repayment_slot=0, loan_account_id=account_id, principal_minor=100,
            annual_rate=0, count=1, method=Method.EQUAL_PRINCIPAL, segment=segment,
        ))  # fmt: skip

    table.put(10, entry(10, 5, 0))
    table.put(11, entry(11, 2, 0))
    table.put(10, entry(10, 5, 1))
    table.put(10, entry(10, 5, 1))  # replaced, not added
    assert len(table) == 3
    assert [(each.slot, each.segment) for each in table.entries()] == [(2, 0), (5, 0), (5, 1)]
    assert len(table.packed()) == 3 * LOAN_TERMS.size
    table.drop_after(10, 0)
    assert len(table) == 2 and table.get(10, 1) is None
    table.remove(10)
    assert len(table) == 1 and table.packed() == entry(11, 2, 0)
    with pytest.raises(ValueError):
        table.put(12, entry(11, 3, 0))  # the entry names another loan


def test_the_kernel_mirrors_the_layouts() -> None:
    """cext/loans.pyx's packed structs have the sizes of ledger/loan_book.py's layouts
    and of a DEPOSIT_WRITE, and its id constants are the ledger's."""
    sizes = loan_kernel.STRUCT_SIZES
    assert (sizes["LoanRow"], sizes["LoanTerms"], sizes["RowWrite"]) == (
        LOAN_ROW.size, LOAN_TERMS.size, DEPOSIT_WRITE.size,
    )  # fmt: skip
    assert (loan_kernel.COLLECTION_ID_TAG, loan_kernel.COLLECTION_ID_MIX) == (
        COLLECTION_ID_TAG, COLLECTION_ID_MIX,
    )  # fmt: skip


def test_kernel_row_writes_are_tracked_for_the_store() -> None:
    """The rows `cext.loans.write_rows` writes are listed as changed accounts (what the
    PostgreSQL store rewrites), rows-only entries included."""
    ledger, _ = open_book("kernel")
    assert isinstance(ledger, KernelLedger)
    ledger.track_changes()
    ledger.take_changes()
    apply(ledger, b"", pack_deposit_write(LOAN_SHORT, DEPOSIT_WRITE_ALWAYS, first_row(5, D1)), D1)
    slots, _, _ = ledger.take_changes()
    assert list(slots) == [ledger.account_slot(LOAN_SHORT)]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_engine_applies_journals_and_replays_a_rows_only_entry(
    anyio_backend: str,
) -> None:
    """A generated POST_WITH_ROWS entry with no transfer (a collection chunk that took
    nothing) is applied (the row written, an empty outcome), journaled with one
    timestamp, and replays to the engine's state on both backends."""
    store = ListStore()
    engine = Engine(
        KernelLedger(account_capacity=4096, transfer_capacity=1 << 16),
        store,
        example_rules(),
        clock=FrozenClock(),
    )
    loan = account_input(LOAN_FULL, AccountKind.LOAN, product=6)
    written = first_row(PRINCIPAL, D1)

    def make(ledger: object) -> tuple[EntryKind, int, bytes, int]:
        write = pack_deposit_write(LOAN_FULL, DEPOSIT_WRITE_ALWAYS, written)
        return EntryKind.POST_WITH_ROWS, 0, pack_post_with_rows_payload(b"", write), 1

    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        assert set(await engine.submit_accounts(loan)) == {0}
        outcome = await engine.submit_generated(make)
        row_after = await engine.read(lambda ledger: ledger.deposit_row(LOAN_FULL))
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    assert len(outcome[0]) == 0 and row_after == written
    (journaled,) = [entry for entry in store.entries if entry.kind == EntryKind.POST_WITH_ROWS]
    assert journaled.count == 0
    assert replay(store.entries).digest() == digest
    assert replay(store.entries, "reference").digest() == digest
