"""The ledger side of deposits: rows, ids, accrual, settlement, row writes, rollover.

Every test runs on both twins (the Cython kernels of cext/deposits.pyx and the
plain-Python reference) and, where the state changes, checks they end with the
same digest. The rules are examples/limits.toml (Class III balance cap 2,000 CNY;
the internal "batch" channel 6 may post every code), with "interest" among the
clearing account's credit codes: a Class III account bound to another bank's card
settles its excess through clearing (`DEPOSIT_RULES`).
"""

from __future__ import annotations

import struct
from array import array

import pytest

from cext import deposits as deposit_kernel
from core.entries import (
    Entry,
    EntryKind,
    apply_entry,
    pack_accrue_payload,
    pack_post_with_rows_payload,
    pack_purge_payload,
    pack_settle_payload,
)
from ledger import interest
from ledger.constants import (
    BANK_CHANNEL,
    CLEARING_ID,
    INTEREST_EXPENSE_ID,
    INTERNAL_ACCOUNTS,
    INTERNAL_PRODUCT,
)
from ledger.deposits import (
    DEPOSIT_WRITE_ALWAYS,
    FD_CLOSED,
    FD_OPEN,
    FD_ROLLOVER,
    RATE_ROW,
    UNITS_PER_FEN,
    DemandRow,
    demand_row_view,
    deposit_write_view,
    fixed_row_view,
    interest_transfer_id,
    is_interest_transfer_id,
    pack_demand_row,
    pack_deposit_write,
    pack_fixed_row,
)
from ledger.kernel import KernelLedger
from ledger.records import pack_transfer, transfer_view
from ledger.reference import ReferenceLedger
from ledger.state import SECTION_NAMES, SECTION_NAMES_BEFORE_DEPOSITS, LedgerState
from ledger.types import (
    AccountFlags,
    AccountKind,
    AccountStatus,
    CreateTransferResult,
    TransferCode,
    TransferFlags,
    account_counter_key,
)
from limits.rules import RuleSet, parse_rules
from tests.ledger_helpers import REPO, account_input, both, transfer

CLEARING_RULE = "[internal_accounts.clearing]\n"
DEPOSIT_RULES: RuleSet = parse_rules(
    (REPO / "examples" / "limits.toml")
    .read_text()
    .replace(
        CLEARING_RULE,
        CLEARING_RULE + 'credit_codes = ["external_transfer_out", "withdraw_bound", "interest"]\n',
    ),
    "examples/limits.toml (+ interest into clearing)",
)
R = CreateTransferResult
Ledger = KernelLedger | ReferenceLedger
BACKENDS = ("kernel", "reference")

DAY = 9_500  # 2026-01-04
PERIOD = interest.settlement_period(DAY)
T0 = 1_767_225_600_000_000_000

CLASS_I, CLASS_II, CLASS_III, SAVINGS, FIXED = 100, 101, 102, 103, 104
CLASS_III_EXTERNAL, LOAN, CLASS_I_OTHER = 105, 106, 107
PRODUCTS = {CLASS_I: 1, CLASS_II: 2, CLASS_III: 3, SAVINGS: 4, FIXED: 5, LOAN: 6}
DEMAND_RATE = 500  # 0.05%
WEIGHT_360 = interest.ACCRUAL_DENOMINATOR // 360


def rates(rate: int = DEMAND_RATE, weight: int = WEIGHT_360, products: int = 8) -> bytes:
    """The accrual table: `rate` for the demand products 1..4, nothing for the others."""
    return b"".join(
        RATE_ROW.pack(rate if 1 <= product <= 4 else 0, weight) for product in range(products)
    )


def open_bank(backend: str) -> Ledger:
    """Internal accounts (1..4), one customer account of each kind, their money in."""
    kernel, reference = both(DEPOSIT_RULES, account_capacity=64, transfer_capacity=1 << 12)
    ledger: Ledger = kernel if backend == "kernel" else reference
    batch = b"".join(
        account_input(account_id, kind, product=INTERNAL_PRODUCT)
        for account_id, kind in INTERNAL_ACCOUNTS
    )
    batch += account_input(CLASS_I, AccountKind.CLASS_I, product=1)
    batch += account_input(CLASS_II, AccountKind.CLASS_II, product=2, bound_id=CLASS_I)
    batch += account_input(CLASS_III, AccountKind.CLASS_III, product=3, bound_id=CLASS_I)
    batch += account_input(SAVINGS, AccountKind.SAVINGS, product=4)
    batch += account_input(FIXED, AccountKind.FIXED_DEPOSIT, product=5)
    batch += account_input(
        CLASS_III_EXTERNAL, AccountKind.CLASS_III, product=3, flags=AccountFlags.BOUND_EXTERNAL
    )
    batch += account_input(LOAN, AccountKind.LOAN, product=6)
    batch += account_input(CLASS_I_OTHER, AccountKind.CLASS_I, product=1)
    assert set(ledger.create_accounts(batch)) == {0}
    funding = [
        (1, CLASS_I, 5_000_000, TransferCode.CASH_DEPOSIT, 3),
        (CLASS_I, CLASS_II, 300_000, TransferCode.TOPUP_BOUND, 2),
        (1, SAVINGS, 10_000_000, TransferCode.CASH_DEPOSIT, 3),
        (2, CLASS_III_EXTERNAL, 150_000, TransferCode.TOPUP_BOUND, BANK_CHANNEL),
        (1, CLASS_I_OTHER, 1_000, TransferCode.CASH_DEPOSIT, 3),
    ]
    moves = b"".join(
        transfer(900 + index, debit, credit, amount, code=code, channel=channel)
        for index, (debit, credit, amount, code, channel) in enumerate(funding)
    )
    moves += transfer(950, CLASS_I, CLASS_III, 150_000, code=TransferCode.TOPUP_BOUND, channel=2)
    results, _, _ = ledger.create_transfers(moves, T0, DAY)
    assert set(results) == {R.OK}, list(results)
    return ledger


def balance(ledger: Ledger, account_id: int) -> int:
    record = ledger.lookup_account(account_id)
    assert record is not None
    debits, credits = struct.unpack_from("<qq", record, 16)
    return int(credits - debits)


def demand(ledger: Ledger, account_id: int) -> DemandRow:
    row = ledger.deposit_row(account_id)
    assert row is not None
    return demand_row_view(row)


def settle_all(ledger: Ledger, period: int, timestamp: int, count_max: int = 100) -> list[int]:
    """Run a whole settlement in chunks of `count_max`; the results of every transfer."""
    results: list[int] = []
    slot = 0
    while slot < ledger.account_count:
        transfers, slots, slot = ledger.settlement_batch(period, slot, count_max)
        if transfers:
            outcome = ledger.settle_interest(period, transfers, slots, timestamp, DAY + 100)
            results += outcome[0]
            timestamp += len(transfers) // 128
    return results


def interest_records(ledger: Ledger, period: int) -> list[tuple[int, int, int]]:
    """(id, credit account, amount) of every interest posting for `period` in the log."""
    found = []
    for seq in range(ledger.log_tail, ledger.log_count):
        view = transfer_view(ledger.record_at(seq))
        if view.code == TransferCode.INTEREST and view.user_data == period and view.result == 0:
            found.append((view.id, view.credit_account_id, view.amount))
    return found


# --- layouts, ids, constants ------------------------------------------------------------


def test_kernel_and_python_agree_on_layouts_and_constants() -> None:
    """The kernel's structs, id tag and scale are ledger/deposits.py's and ledger/interest.py's."""
    sizes = deposit_kernel.STRUCT_SIZES
    assert sizes["DemandRow"] == sizes["FixedRow"] == 32
    assert sizes["Account"] == 64 and sizes["Transfer"] == 128 and sizes["Product"] == 64
    assert deposit_kernel.UNITS_PER_FEN == UNITS_PER_FEN == interest.UNITS_PER_FEN
    assert interest_transfer_id(0, 0, 0) >> 104 == deposit_kernel.INTEREST_ID_TAG


def test_rows_pack_and_read_back_by_name() -> None:
    """Both row layouts round-trip every field, i128 units (negative too) included."""
    for units in (0, 1, UNITS_PER_FEN * 12_345 + 7, (1 << 100) + 3, -(1 << 90), -1):
        row = pack_demand_row(units, 8_104, 987_654)
        assert len(row) == 32
        assert demand_row_view(row) == DemandRow(units, 8_104, 987_654)
    fields = dict(
        principal=5_000_000, rate=9_500, open_day=9_000, maturity_day=9_365, term_months=12,
        day_count=1, flags=FD_OPEN | FD_ROLLOVER, payout_slot=7, product=5,
    )  # fmt: skip
    row = pack_fixed_row(**fields)
    assert fixed_row_view(row)._asdict() == fields and fixed_row_view(row).is_open
    closed = fixed_row_view(pack_fixed_row(**{**fields, "flags": FD_OPEN | FD_CLOSED}))
    assert not closed.is_open
    write = pack_deposit_write(CLASS_I, 3, row)
    assert len(write) == 64 and deposit_write_view(write) == (CLASS_I, 3, row)


def test_interest_transfer_ids_are_distinct_tagged_and_stable() -> None:
    """One id per (account, period, part), all tagged, none a small tool id; a bank account
    id (below 2**64) is the id's low half as it is."""
    ids = {
        interest_transfer_id(account, period, part)
        for account in (1, CLASS_I, (1 << 64) - 1, 1 << 64, (1 << 64) + 5)
        for period in (1, PERIOD, PERIOD + 1)
        for part in (0, 1)
    }
    assert len(ids) == 5 * 3 * 2
    assert all(is_interest_transfer_id(one) for one in ids)
    assert not any(is_interest_transfer_id(one) for one in (1, CLASS_I, 1 << 100))
    assert interest_transfer_id(CLASS_I, PERIOD, 0) & ((1 << 64) - 1) == CLASS_I
    assert interest_transfer_id(CLASS_I, PERIOD, 1) == interest_transfer_id(CLASS_I, PERIOD, 1)


# --- accrual -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_accrual_adds_exact_units_to_positive_demand_balances_only(backend: str) -> None:
    """A day adds balance * rate * weight units to each demand account with a positive
    balance and a rated product; fixed deposits, loans, internal accounts and empty
    accounts are untouched; accrued_day follows; 91 days on 10,000 CNY at 0.20% (360)
    settle as the issue's 5.06."""
    ledger = open_bank(backend)
    assert ledger.accrued_day == 0
    accrued = ledger.accrue_interest(DAY, rates())
    assert accrued == 6  # Class I, II, III, savings, external Class III, the other Class I
    assert ledger.accrued_day == DAY
    expected = balance(ledger, SAVINGS) * DEMAND_RATE * WEIGHT_360
    assert demand(ledger, SAVINGS).accrued_units == expected
    for untouched in (FIXED, LOAN, INTEREST_EXPENSE_ID, CLEARING_ID):
        assert ledger.deposit_row(untouched) == bytes(32)
    assert ledger.deposit_row(0xDEAD) is None

    worked = open_bank(backend)
    worked.create_transfers(
        transfer(7, 1, CLASS_I_OTHER, 1_000_000 - 1_000, code=TransferCode.CASH_DEPOSIT, channel=3),
        T0 + 100,
        DAY,
    )
    table = rates(rate=2_000)
    for day in range(DAY + 1, DAY + 92):
        worked.accrue_interest(day, table)
    assert demand(worked, CLASS_I_OTHER).accrued_fen == 506


@pytest.mark.parametrize("backend", BACKENDS)
def test_accrual_refuses_a_day_not_after_the_last_and_bad_rate_tables(backend: str) -> None:
    ledger = open_bank(backend)
    ledger.accrue_interest(DAY, rates())
    digest = ledger.digest()
    with pytest.raises(ValueError, match="not after"):
        ledger.accrue_interest(DAY, rates())
    with pytest.raises(ValueError, match="out of range"):
        ledger.accrue_interest(DAY + 1, RATE_ROW.pack(-1, WEIGHT_360))
    with pytest.raises(ValueError, match="out of range"):
        ledger.accrue_interest(DAY + 1, RATE_ROW.pack(500, interest.ACCRUAL_DENOMINATOR + 1))
    with pytest.raises(ValueError, match="whole"):
        ledger.accrue_interest(DAY + 1, rates()[:-1])
    assert ledger.digest() == digest and ledger.accrued_day == DAY


# --- settlement --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_settlement_pays_the_rounded_units_once_from_interest_expense(backend: str) -> None:
    """The batch is one transfer per accruing account: from interest expense, code
    INTEREST on the batch channel, user_data the period, id derived from account and
    period, amount the units rounded half up. Settling zeroes the units, records the
    period and the total paid; the money moves; a second batch is empty."""
    ledger = open_bank(backend)
    for day in range(DAY, DAY + 30):
        ledger.accrue_interest(day, rates())
    before = {account: demand(ledger, account) for account in (CLASS_I, SAVINGS, CLASS_II)}
    transfers, slots, next_slot = ledger.settlement_batch(PERIOD, 0, 100)
    assert next_slot == ledger.account_count
    count = len(transfers) // 128
    assert count == len(slots) // 4 == 5  # 1,000 fen earn under half a fen: carried
    for index in range(count):
        view = transfer_view(transfers, index * 128)
        assert view.debit_account_id == INTEREST_EXPENSE_ID
        assert view.code == TransferCode.INTEREST and view.channel == BANK_CHANNEL
        assert view.user_data == PERIOD
        assert view.id == interest_transfer_id(view.credit_account_id, PERIOD, 0)
        assert ledger.account_id_at(array("I", slots)[index]) == view.credit_account_id
    savings_before = balance(ledger, SAVINGS)
    results, _, _ = ledger.settle_interest(PERIOD, transfers, slots, T0 + 1_000, DAY + 100)
    assert set(results) == {R.OK}
    paid = before[SAVINGS].accrued_fen
    assert paid > 0 and balance(ledger, SAVINGS) == savings_before + paid
    assert demand(ledger, SAVINGS) == DemandRow(0, PERIOD, paid)
    assert demand(ledger, CLASS_I) == DemandRow(0, PERIOD, before[CLASS_I].accrued_fen)
    assert ledger.settlement_batch(PERIOD, 0, 100) == (b"", b"", ledger.account_count)


@pytest.mark.parametrize("backend", BACKENDS)
def test_settlement_twice_posts_once(backend: str) -> None:
    """The same settlement transfers submitted again answer EXISTS and change no row;
    a rerun of the whole settlement finds nothing to do."""
    ledger = open_bank(backend)
    for day in range(DAY, DAY + 10):
        ledger.accrue_interest(day, rates())
    transfers, slots, _ = ledger.settlement_batch(PERIOD, 0, 100)
    ledger.settle_interest(PERIOD, transfers, slots, T0 + 1_000, DAY + 100)
    after_first = ledger.digest()
    rows = [ledger.deposit_row(account) for account in (CLASS_I, SAVINGS)]
    results, _, _ = ledger.settle_interest(PERIOD, transfers, slots, T0 + 2_000, DAY + 100)
    assert set(results) == {R.EXISTS}
    assert [ledger.deposit_row(account) for account in (CLASS_I, SAVINGS)] == rows
    assert ledger.digest() == after_first  # an EXISTS answer changes nothing
    assert settle_all(ledger, PERIOD, T0 + 3_000) == []
    assert len(interest_records(ledger, PERIOD)) == len(transfers) // 128


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_iii_interest_past_the_cap_goes_to_the_bound_account(backend: str) -> None:
    """A Class III account 10 fen below its 2,000 CNY cap is paid 10 fen (part 0) and the
    rest to its bound Class I account (part 1); bound externally, the rest goes to the
    clearing account; both parts settle the one row."""
    ledger = open_bank(backend)
    ledger.create_transfers(
        transfer(960, CLASS_I, CLASS_III, 49_990, code=TransferCode.TOPUP_BOUND, channel=2)
        + transfer(961, 2, CLASS_III_EXTERNAL, 50_000, code=TransferCode.TOPUP_BOUND,
                   channel=BANK_CHANNEL),
        T0 + 100,
        DAY,
    )  # fmt: skip
    assert balance(ledger, CLASS_III) == 199_990
    assert balance(ledger, CLASS_III_EXTERNAL) == 200_000
    table = rates(rate=100_000)  # 10%: a few CNY in a month
    for day in range(DAY + 1, DAY + 31):
        ledger.accrue_interest(day, table)
    owed = demand(ledger, CLASS_III).accrued_fen
    owed_external = demand(ledger, CLASS_III_EXTERNAL).accrued_fen
    assert owed > 10 and owed_external > 0
    transfers, slots, _ = ledger.settlement_batch(PERIOD, 0, 100)
    parts = [transfer_view(transfers, offset) for offset in range(0, len(transfers), 128)]
    by_id = {view.id: view for view in parts}
    part0 = by_id[interest_transfer_id(CLASS_III, PERIOD, 0)]
    part1 = by_id[interest_transfer_id(CLASS_III, PERIOD, 1)]
    assert (part0.credit_account_id, part0.amount) == (CLASS_III, 10)
    assert (part1.credit_account_id, part1.amount) == (CLASS_I, owed - 10)
    external = by_id[interest_transfer_id(CLASS_III_EXTERNAL, PERIOD, 1)]
    assert (external.credit_account_id, external.amount) == (CLEARING_ID, owed_external)
    assert interest_transfer_id(CLASS_III_EXTERNAL, PERIOD, 0) not in by_id  # at its cap
    slot_list = list(array("I", slots))
    assert slot_list == sorted(slot_list)
    results, _, _ = ledger.settle_interest(PERIOD, transfers, slots, T0 + 1_000, DAY + 100)
    assert set(results) == {R.OK}
    assert balance(ledger, CLASS_III) == 200_000
    assert demand(ledger, CLASS_III) == DemandRow(0, PERIOD, owed)
    assert demand(ledger, CLASS_III_EXTERNAL) == DemandRow(0, PERIOD, owed_external)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_credit_keeps_its_units_for_the_next_period(backend: str) -> None:
    """A frozen account's interest transfer fails (CREDIT_ACCOUNT_FROZEN): its row keeps
    every unit and no period; the next period, unfrozen, it is paid everything once."""
    ledger = open_bank(backend)
    for day in range(DAY, DAY + 20):
        ledger.accrue_interest(day, rates())
    assert ledger.update_account(SAVINGS, AccountStatus.FROZEN, 0) == 0
    kept = demand(ledger, SAVINGS)
    results = settle_all(ledger, PERIOD, T0 + 1_000)
    assert R.CREDIT_ACCOUNT_FROZEN in results
    assert demand(ledger, SAVINGS) == kept
    assert demand(ledger, CLASS_I).period_settled == PERIOD
    assert ledger.update_account(SAVINGS, AccountStatus.ACTIVE, 0) == 0
    for day in range(DAY + 20, DAY + 40):
        ledger.accrue_interest(day, rates())
    owed = demand(ledger, SAVINGS).accrued_fen
    assert owed > kept.accrued_fen
    before = balance(ledger, SAVINGS)
    assert set(settle_all(ledger, PERIOD + 1, T0 + 5_000)) == {R.OK}
    assert balance(ledger, SAVINGS) == before + owed
    assert demand(ledger, SAVINGS) == DemandRow(0, PERIOD + 1, owed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_split_whose_excess_fails_keeps_the_unpaid_part(backend: str) -> None:
    """Part 0 posts, part 1 fails (the bound account is frozen): the period counts as
    settled (a rerun must not post part 0 again), the row keeps the units not paid."""
    ledger = open_bank(backend)
    ledger.create_transfers(
        transfer(960, CLASS_I, CLASS_III, 49_990, code=TransferCode.TOPUP_BOUND, channel=2),
        T0 + 100,
        DAY,
    )
    for day in range(DAY + 1, DAY + 31):
        ledger.accrue_interest(day, rates(rate=100_000))
    units = demand(ledger, CLASS_III).accrued_units
    assert ledger.update_account(CLASS_I, AccountStatus.FROZEN, 0) == 0
    settle_all(ledger, PERIOD, T0 + 1_000)
    assert demand(ledger, CLASS_III) == DemandRow(units - 10 * UNITS_PER_FEN, PERIOD, 10)
    settle_all(ledger, PERIOD, T0 + 2_000)  # Class I itself (frozen) is retried
    part0 = interest_transfer_id(CLASS_III, PERIOD, 0)
    assert [record for record in interest_records(ledger, PERIOD) if record[0] == part0] == [
        (part0, CLASS_III, 10)
    ]
    assert demand(ledger, CLASS_III) == DemandRow(units - 10 * UNITS_PER_FEN, PERIOD, 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_settlement_batches_chunk_without_splitting_an_account(backend: str) -> None:
    """Chunks of two: an account's two parts never straddle chunks; the chunks together
    are the one-chunk batch."""
    ledger = open_bank(backend)
    ledger.create_transfers(
        transfer(960, CLASS_I, CLASS_III, 49_990, code=TransferCode.TOPUP_BOUND, channel=2),
        T0 + 100,
        DAY,
    )
    for day in range(DAY + 1, DAY + 31):
        ledger.accrue_interest(day, rates(rate=100_000))
    whole, whole_slots, _ = ledger.settlement_batch(PERIOD, 0, 1_000)
    chunks, chunk_slots, slot = [], [], 0
    while slot < ledger.account_count:
        transfers, slots, slot = ledger.settlement_batch(PERIOD, slot, 2)
        assert len(transfers) <= 256
        chunks.append(transfers)
        chunk_slots.append(slots)
    assert b"".join(chunks) == whole and b"".join(chunk_slots) == whole_slots
    with pytest.raises(ValueError):
        ledger.settlement_batch(PERIOD, 0, 1)
    with pytest.raises(ValueError):
        ledger.settle_interest(PERIOD, whole, whole_slots[4:] + whole_slots[:4], T0, DAY)
    with pytest.raises(ValueError):
        ledger.settle_interest(PERIOD, whole, whole_slots[:-4], T0, DAY)


# --- fixed-deposit rows --------------------------------------------------------------------


def fixed_row(flags: int, maturity_day: int, payout_slot: int = 4) -> bytes:
    return pack_fixed_row(
        principal=5_000_000, rate=9_500, open_day=DAY, maturity_day=maturity_day,
        term_months=12, day_count=1, flags=flags, payout_slot=payout_slot, product=5,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_post_with_rows_writes_a_row_iff_its_transfer_posts(backend: str) -> None:
    """The opening's transfer posts and its row is written; a write tied to a failed
    transfer, or naming no account, is not; an ALWAYS write is."""
    ledger = open_bank(backend)
    opened = fixed_row(FD_OPEN, DAY + 365)
    transfers = transfer(970, CLASS_I, FIXED, 5_000_000, code=TransferCode.FIXED_DEPOSIT,
                         channel=BANK_CHANNEL)  # fmt: skip
    transfers += transfer(971, CLASS_I_OTHER, 0xBEEF, 1_000, code=TransferCode.FIXED_DEPOSIT,
                          channel=BANK_CHANNEL)  # fmt: skip
    rows = pack_deposit_write(FIXED, 0, opened)
    rows += pack_deposit_write(SAVINGS, 1, pack_demand_row(1, 2, 3))
    rows += pack_deposit_write(0xDEAD, DEPOSIT_WRITE_ALWAYS, opened)
    rows += pack_deposit_write(LOAN, DEPOSIT_WRITE_ALWAYS, pack_demand_row(0, 0, 9))
    results, _, _ = ledger.post_with_rows(transfers, rows, T0 + 1_000, DAY)
    assert results[0] == R.OK and results[1] == R.CREDIT_ACCOUNT_NOT_FOUND
    assert ledger.deposit_row(FIXED) == opened
    assert ledger.deposit_row(SAVINGS) == bytes(32)
    assert demand(ledger, LOAN).interest_paid_total == 9
    assert balance(ledger, FIXED) == 5_000_000


@pytest.mark.parametrize("backend", BACKENDS)
def test_due_fixed_deposits_are_open_rows_maturing_by_the_day(backend: str) -> None:
    ledger = open_bank(backend)
    extra = b"".join(
        account_input(200 + index, AccountKind.FIXED_DEPOSIT, product=5) for index in range(4)
    )
    assert set(ledger.create_accounts(extra)) == {0}
    rows = [
        (FIXED, fixed_row(FD_OPEN, DAY + 10)),
        (200, fixed_row(FD_OPEN | FD_ROLLOVER, DAY + 5)),
        (201, fixed_row(FD_OPEN | FD_CLOSED, DAY + 1)),  # paid out
        (202, fixed_row(FD_OPEN, DAY + 11)),  # not yet
        (203, fixed_row(0, DAY)),  # never opened
        (SAVINGS, fixed_row(FD_OPEN, DAY)),  # not a fixed-deposit account
    ]
    writes = b"".join(
        pack_deposit_write(account, DEPOSIT_WRITE_ALWAYS, row) for account, row in rows
    )
    ledger.post_with_rows(transfer(980, 1, CLASS_I, 1, code=TransferCode.CASH_DEPOSIT, channel=3),
                          writes, T0 + 1_000, DAY)  # fmt: skip
    due = ledger.due_fixed_deposits(DAY + 10)
    assert due.typecode == "I"
    assert [ledger.account_id_at(slot) for slot in due] == [FIXED, 200]
    assert list(ledger.due_fixed_deposits(DAY)) == []


# --- limit-counter rollover ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_purge_counters_drops_earlier_days_and_keeps_today(backend: str) -> None:
    """Day counters of earlier days are dropped; today's still read and still cap."""
    ledger = open_bank(backend)
    wechat = transfer(990, CLASS_I, CLASS_I_OTHER, 10_000, code=TransferCode.TRANSFER, channel=1)
    ledger.create_transfers(wechat, T0 + 1_000, DAY)
    ledger.create_transfers(
        transfer(991, CLASS_I, CLASS_I_OTHER, 20_000, code=TransferCode.TRANSFER, channel=1),
        T0 + 90_000 * 10**9,
        DAY + 1,
    )
    key = account_counter_key(0, ledger.account_slot(CLASS_I), 1)
    assert ledger.counter_used(key, DAY + 1) == 20_000
    digest = ledger.digest()
    assert ledger.purge_counters(DAY + 1) >= 1
    assert ledger.counter_used(key, DAY) == 0
    assert ledger.counter_used(key, DAY + 1) == 20_000
    assert ledger.digest() == digest  # only today's counters are state
    ledger.purge_counters(DAY + 2)
    assert ledger.counter_used(key, DAY + 1) == 0
    assert ledger.channels_live() == []


# --- the twins, state and entries --------------------------------------------------------


def deposit_entries() -> list[Entry]:
    """A journal's worth of deposit entries after `open_bank`'s state."""
    entries = []
    clock = T0 + 10_000
    for day in range(DAY, DAY + 5):
        entries.append(Entry(EntryKind.ACCRUE_INTEREST, clock, day, 0,
                             pack_accrue_payload(day, rates())))  # fmt: skip
        clock += 1
    opened = transfer(970, CLASS_I, FIXED, 5_000_000, code=TransferCode.FIXED_DEPOSIT,
                      channel=BANK_CHANNEL)  # fmt: skip
    payload = pack_post_with_rows_payload(
        opened, pack_deposit_write(FIXED, 0, fixed_row(FD_OPEN, DAY + 365))
    )
    entries.append(Entry(EntryKind.POST_WITH_ROWS, clock, DAY + 4, 1, payload))
    entries.append(Entry(EntryKind.PURGE_COUNTERS, clock + 2, DAY + 4, 0,
                         pack_purge_payload(DAY + 4)))  # fmt: skip
    return entries


def test_entries_apply_alike_on_both_twins_and_settlement_replays() -> None:
    """ACCRUE_INTEREST, POST_WITH_ROWS, PURGE_COUNTERS and SETTLE_INTEREST entries check
    their payloads, apply through `apply_entry` to equal digests on both twins."""
    kernel, reference = open_bank("kernel"), open_bank("reference")
    assert kernel.digest() == reference.digest()
    for entry in deposit_entries():
        entry.check()
        apply_entry(kernel, entry)
        apply_entry(reference, entry)
        assert kernel.digest() == reference.digest(), entry.kind
    transfers, slots, _ = kernel.settlement_batch(PERIOD, 0, 100)
    assert (transfers, slots) == reference.settlement_batch(PERIOD, 0, 100)[:2]
    settle = Entry(EntryKind.SETTLE_INTEREST, T0 + 50_000, DAY + 100, len(transfers) // 128,
                   pack_settle_payload(PERIOD, transfers, slots))  # fmt: skip
    settle.check()
    outcomes = [apply_entry(ledger, settle) for ledger in (kernel, reference)]
    assert outcomes[0][0] == outcomes[1][0] and set(outcomes[0][0]) == {R.OK}
    assert kernel.digest() == reference.digest()
    with pytest.raises(AssertionError):
        Entry(EntryKind.SETTLE_INTEREST, T0, DAY, 1, settle.payload[:-4]).check()
    with pytest.raises(AssertionError):
        Entry(EntryKind.ACCRUE_INTEREST, T0, DAY, 0, pack_accrue_payload(DAY, b"")[:-1]).check()
    with pytest.raises(AssertionError):
        Entry(EntryKind.PURGE_COUNTERS, T0, DAY, 1, pack_purge_payload(DAY)).check()


@pytest.mark.parametrize("target", [KernelLedger, ReferenceLedger])
def test_deposit_state_dumps_loads_and_an_older_layout_loads_zero(
    target: type[KernelLedger] | type[ReferenceLedger],
) -> None:
    """The deposit table and accrued_day survive a dump and load into either twin; a
    state of the layout before deposits (no deposits section) loads with the table zero,
    accrued_day 0, and the digest it recorded (a zero table is not digested)."""
    source = open_bank("reference")
    plain = source.dump_state()
    older = {name: plain.section(name) for name in SECTION_NAMES_BEFORE_DEPOSITS}
    assert "deposits" not in older and tuple(older) != SECTION_NAMES
    loaded_older = target.load_state(
        LedgerState.from_bytes(older), account_capacity=64, transfer_capacity=1 << 12
    )
    assert loaded_older.digest() == plain.digest and loaded_older.accrued_day == 0
    assert loaded_older.dump_state().section("deposits") == bytes(32 * source.account_count)
    for entry in deposit_entries():
        apply_entry(source, entry)
    state = source.dump_state()
    assert state.accrued_day == DAY + 4 and state.digest != plain.digest
    loaded = target.load_state(
        LedgerState.from_bytes({name: state.section(name) for name in SECTION_NAMES}),
        account_capacity=64,
        transfer_capacity=1 << 12,
    )
    assert loaded.digest() == source.digest() and loaded.accrued_day == DAY + 4
    assert loaded.deposit_row(FIXED) == source.deposit_row(FIXED)
    assert loaded.account_rows(range(loaded.account_count)) == source.account_rows(
        range(source.account_count)
    )


def test_kernel_marks_every_row_it_changes_for_the_store() -> None:
    """With change tracking on (the PostgreSQL store), accrual, settlement and row writes
    list the slots whose rows they changed."""
    ledger = open_bank("kernel")
    assert isinstance(ledger, KernelLedger)
    ledger.track_changes()
    ledger.take_changes()
    ledger.accrue_interest(DAY, rates())
    slots, _, _ = ledger.take_changes()
    expected = {ledger.account_slot(a) for a in (CLASS_I, CLASS_II, CLASS_III, SAVINGS,
                                                  CLASS_III_EXTERNAL, CLASS_I_OTHER)}  # fmt: skip
    assert set(slots) == expected
    transfers, slot_bytes, _ = ledger.settlement_batch(PERIOD, 0, 100)
    ledger.settle_interest(PERIOD, transfers, slot_bytes, T0 + 1_000, DAY + 1)
    slots, _, _ = ledger.take_changes()
    assert set(array("I", slot_bytes)) <= set(slots)
    ledger.post_with_rows(
        transfer(980, 1, CLASS_I, 1, code=TransferCode.CASH_DEPOSIT, channel=3),
        pack_deposit_write(FIXED, DEPOSIT_WRITE_ALWAYS, fixed_row(FD_OPEN, DAY + 9)),
        T0 + 2_000,
        DAY + 1,
    )
    slots, _, _ = ledger.take_changes()
    assert ledger.account_slot(FIXED) in set(slots)


def test_a_linked_opening_writes_nothing_when_the_chain_fails() -> None:
    """Transfers of a POST_WITH_ROWS entry may be linked: a failed chain writes no row."""
    for backend in BACKENDS:
        ledger = open_bank(backend)
        chain = pack_transfer(
            id=975, debit_account_id=CLASS_I, credit_account_id=FIXED, amount=1_000,
            code=TransferCode.FIXED_DEPOSIT, channel=BANK_CHANNEL, flags=TransferFlags.LINKED,
        ) + transfer(976, CLASS_I_OTHER, 0xBEEF, 1_000, code=TransferCode.FIXED_DEPOSIT,
                     channel=BANK_CHANNEL)  # fmt: skip
        results, _, _ = ledger.post_with_rows(
            chain, pack_deposit_write(FIXED, 0, fixed_row(FD_OPEN, DAY + 9)), T0 + 1_000, DAY
        )
        assert results[0] == R.LINKED_EVENT_FAILED
        assert ledger.deposit_row(FIXED) == bytes(32)
