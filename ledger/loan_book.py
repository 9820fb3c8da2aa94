"""The loan book in the ledger: a loan's row, its terms, and the day-end collection's twin.

Every loan has its own ledger account (`AccountKind.LOAN`) whose balance stays 0: money
moves between the customer's accounts and the bank's loan-funding account
(`LOAN_FUNDING_ID`), and the loan's state is its 32-byte row in the ledger's deposit
table (`LOAN_ROW`), written by the same POST_WITH_ROWS entry that moves the money, so a
disbursement, a collection or a prepayment and the loan's state change together or not
at all. Which layout a row has follows from the account's kind, never from the row.

The row (`LoanRow`):

     0  i64 scheduled_minor          principal of instalments not yet fallen due
     8  u32 arrears_principal_minor  principal fallen due, unpaid
    12  u32 arrears_interest_minor   interest (and periodic fees) fallen due, unpaid
    16  u32 penalty_minor            penalty accrued, unpaid
    20  u16 fallen_due               instalments of the current segment fallen due
    22  u16 next_due_day             day number of the next instalment (0: none left)
    24  u16 overdue_since            due day of the oldest instalment in arrears (0: none)
    26  u16 penalty_through          last day penalty accrued for (0: none)
    28  u8  segment                  the terms segment in force (+1 per prepayment)
    29  u8  flags                    `LoanFlags`
    30  u16 collected_day            last day-end day that processed the loan (0: none)

The schedule itself is not stored. A loan's terms (`LOAN_TERMS`, 48 bytes, one entry a
segment: what a disbursement or a prepayment fixed) let the day-end compute instalment k
of the current segment by the recurrence of `ledger.loans` (equal principal:
cumulative rounding of k P / n; equal instalment: the level payment minus a month's
interest on what remains, the last instalment taking the rest), so 1,000,000 loans cost
48 MB of terms, not their schedules. The terms live in the customer state (durable,
immutable per segment); a *terms table* is their concatenation sorted by (slot,
segment), which the day-end hands to the collection kernel (`cext/loans.pyx`).

Nobody outside `ledger/` (and the kernel, which mirrors these offsets) decodes a row or
a terms entry by position: use `loan_row_view` / `pack_loan_row` and `loan_terms_view`
/ `pack_loan_terms`.

Day-end collection of day D (`collect_one`, one loan; the kernel `cext.loans.collect`
runs it over a terms table, `ReferenceLedger.loan_collection_batch` is its twin), for
every OPEN, not CLOSED loan with `collected_day < D` (a rerun of D does nothing):

1. fall due: while `next_due_day` is set and on or before D, instalment `fallen_due + 1`
   moves into arrears (its principal out of `scheduled_minor`, its interest plus the
   monthly fee into the interest arrears); `overdue_since` is that due day if it was 0;
   `next_due_day` is the same day of the next month, 0 after the last instalment;
2. collect: what the repayment account has (`available`, given by the caller: posted
   credits minus posted debits minus pending debits, less what earlier loans of the same
   call took from it; 0 when the account is not active) up to everything owed, paid in
   the terms' allocation order, each part in full before the next;
3. penalty: arrears left and D past `overdue_since + grace_days`: each day from
   `max(penalty_through, overdue_since) + 1` to D adds a day's `ledger.loans.penalty_minor`
   on the arrears left (rounded each day; so, once the grace has passed, retroactively
   over the grace days too); `penalty_through = D`;
4. arrears all paid: `overdue_since = 0`, OVERDUE off; else OVERDUE on when D is past
   `overdue_since`; nothing scheduled or left to fall due, no arrears, no penalty: CLOSED;
5. `collected_day = D`, and the row is written: a loan with nothing fallen due, no
   arrears and no penalty is not touched at all (no write, `collected_day` unchanged).

The penalty is accrued on the arrears as they are after D's collection, also for days
a missed day-end skipped. The u32 fields saturate at `LOAN_PRINCIPAL_MAX_MINOR`
instead of wrapping: a principal fits (the catalog's bound), and interest or penalty
that large in arrears is beyond any loan the catalog allows in practice.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from typing import Final, NamedTuple

from ledger.constants import BANK_CHANNEL, LEDGER_CNY
from ledger.deposits import DEPOSIT_WRITE_ALWAYS, pack_deposit_write
from ledger.interest import RATE_MAX, round_half_up
from ledger.loans import (
    TERM_MONTHS_MAX,
    UPLIFT_PERMILLE_MAX,
    Method,
    allocate,
    level_payment_minor,
    penalty_minor,
    period_interest_minor,
)
from ledger.records import pack_transfer
from ledger.types import DEPOSIT_SIZE, UINT64_MAX, TransferCode
from limits.calendar import DAY_COUNT, civil_of_day, day_of_date, days_in_month

LOAN_ROW: Final = struct.Struct("<qIIIHHHHBBH")
LOAN_TERMS: Final = struct.Struct("<IIqqIIHHBBBBQ")
assert LOAN_ROW.size == DEPOSIT_SIZE and LOAN_TERMS.size == 48

# The arrears fields are u32: a loan's principal is at most this (42,949,672.95 CNY);
# the catalog refuses a product whose amount range reaches above it.
LOAN_PRINCIPAL_MAX_MINOR: Final = 0xFFFFFFFF

# Terms `method` codes (ledger.loans.Method); a rate of 0 is always split like equal
# principal (`ledger.loans._rows`), so its terms say METHOD_EQUAL_PRINCIPAL.
METHOD_EQUAL_INSTALMENT: Final = 1
METHOD_EQUAL_PRINCIPAL: Final = 2

# Allocation parts: three 2-bit codes, the first paid in the low bits.
PART_PENALTY: Final = 0
PART_INTEREST: Final = 1
PART_PRINCIPAL: Final = 2
PART_NAMES: Final = ("penalty", "interest", "principal")
ALLOCATION_DEFAULT: Final = PART_PENALTY | PART_INTEREST << 2 | PART_PRINCIPAL << 4
NO_FIRST_INTEREST: Final = -1  # terms `first_interest_minor`: the first period is a month

# Collection transfer ids, like `core.services.dayend.maturity_transfer_id` with their
# own tag: id_lo = the loan account's id mixed to 64 bits, id_hi = tag << 40 | day.
COLLECTION_ID_TAG: Final = 0x4C4E43  # "LNC"
COLLECTION_ID_MIX: Final = 0x9E3779B97F4A7C15


class LoanFlags(enum.IntFlag):
    """A loan row's `flags` byte."""

    NONE = 0
    OPEN = 1  # written by the disbursement: a live loan
    OVERDUE = 2  # arrears unpaid past their due day
    CLOSED = 4  # everything repaid: nothing scheduled, no arrears, no penalty


class LoanRow(NamedTuple):
    """A loan account's row, by name (module docstring)."""

    scheduled_minor: int
    arrears_principal_minor: int
    arrears_interest_minor: int
    penalty_minor: int
    fallen_due: int
    next_due_day: int
    overdue_since: int
    penalty_through: int
    segment: int
    flags: int
    collected_day: int

    @property
    def outstanding_minor(self) -> int:
        """Principal not yet repaid: scheduled plus in arrears."""
        return self.scheduled_minor + self.arrears_principal_minor

    @property
    def owed_minor(self) -> int:
        """Everything owed today: outstanding principal, interest in arrears, penalty."""
        return self.outstanding_minor + self.arrears_interest_minor + self.penalty_minor

    @property
    def is_live(self) -> bool:
        return bool(self.flags & LoanFlags.OPEN) and not self.flags & LoanFlags.CLOSED


class LoanTerms(NamedTuple):
    """One segment's terms, by name (module docstring and `LOAN_TERMS`)."""

    slot: int  # the loan account's ledger slot
    repayment_slot: int  # the account instalments are collected from
    level_minor: int  # equal instalment: the level payment A; equal principal: P
    first_interest_minor: int  # the first instalment's interest, NO_FIRST_INTEREST: a month
    rate_ppm: int  # the contract's annual rate
    monthly_fee_minor: int
    count: int  # type: ignore[assignment]  # instalments of the segment (shadows tuple.count)
    uplift_permille: int  # the penalty rate's uplift over the contract rate
    method: int  # METHOD_*
    grace_days: int
    segment: int
    allocation: int  # three 2-bit PART_* codes, first paid in the low bits
    loan_id_lo: int  # the low 64 bits of the loan account's id (checked against the slot)


def loan_row_view(raw: bytes | bytearray | memoryview, offset: int = 0) -> LoanRow:
    """The loan row at `offset` of `raw`, by name."""
    return LoanRow(*LOAN_ROW.unpack_from(raw, offset))


def pack_loan_row(
    *,
    scheduled_minor: int,
    arrears_principal_minor: int = 0,
    arrears_interest_minor: int = 0,
    penalty_minor: int = 0,
    fallen_due: int = 0,
    next_due_day: int,
    overdue_since: int = 0,
    penalty_through: int = 0,
    segment: int = 0,
    flags: int = LoanFlags.OPEN,
    collected_day: int = 0,
) -> bytes:
    """A loan row (32 bytes)."""
    return LOAN_ROW.pack(
        scheduled_minor, arrears_principal_minor, arrears_interest_minor, penalty_minor,
        fallen_due, next_due_day, overdue_since, penalty_through, segment, int(flags),
        collected_day,
    )  # fmt: skip


def loan_terms_view(raw: bytes | bytearray | memoryview, offset: int = 0) -> LoanTerms:
    """The terms entry at `offset` of `raw`, by name."""
    return LoanTerms(*LOAN_TERMS.unpack_from(raw, offset))


def pack_loan_terms(terms: LoanTerms) -> bytes:
    """A terms entry (48 bytes)."""
    return LOAN_TERMS.pack(*terms)


def allocation_code(order: tuple[str, ...] | list[str]) -> int:
    """The terms' allocation byte of an order of part names (each of PART_NAMES once)."""
    assert sorted(order) == sorted(PART_NAMES), order
    code = 0
    for position, name in enumerate(order):
        code |= PART_NAMES.index(name) << (2 * position)
    return code


def allocation_order(code: int) -> tuple[str, ...]:
    """The part names of an allocation byte, first paid first."""
    return tuple(PART_NAMES[(code >> (2 * position)) & 3] for position in range(3))


def collection_transfer_id(loan_account_id: int, day: int) -> int:
    """The id of the day-end collection of a loan on `day`: one per loan and day, so a
    rerun (or a crash and a rerun) can never collect twice; tagged so no channel's id can
    be one."""
    assert 0 < day < 65536, day
    lo = (loan_account_id & UINT64_MAX) ^ (
        ((loan_account_id >> 64) * COLLECTION_ID_MIX) & UINT64_MAX
    )
    hi = (COLLECTION_ID_TAG << 40) | day
    return (hi << 64) | lo


# --- Terms of a segment -----------------------------------------------------------------

SEGMENT_MAX: Final = 0xFF  # u8: a loan can be prepaid 255 times
_MONTHLY_DENOMINATOR: Final = 12_000_000  # a month's interest: remaining * rate / this
_LAST_CIVIL_DAY: Final = civil_of_day(DAY_COUNT - 1)
U16_MAX: Final = 0xFFFF
# A level payment or a first interest is at most this (a u32 principal plus a month's
# interest, or 58 days' at 100%, fits): the kernel's products stay far inside an i64.
TERMS_AMOUNT_MAX_MINOR: Final = 1 << 40


def terms_of_segment(
    *,
    slot: int,
    repayment_slot: int,
    loan_account_id: int,
    principal_minor: int,
    annual_rate: int,
    count: int,
    method: Method | str,
    first_period_days: int | None = None,
    monthly_fee_minor: int = 0,
    uplift_permille: int = 0,
    grace_days: int = 0,
    segment: int = 0,
    allocation: int = ALLOCATION_DEFAULT,
) -> LoanTerms:
    """The terms of one segment: what lets the day-end compute its instalments the way
    `ledger.loans.schedule` (segment 0: `first_period_days` None) or `ledger.loans.prepay`
    (a remainder: `principal_minor` its principal, `count` its `term_months`,
    `first_period_days` its first due day minus the prepayment day) does.

    Raises ValueError for an argument out of range (`check_terms`, and the ranges of
    `ledger.loans.level_payment_minor`).
    """
    method = Method(method)
    equal_principal = method is Method.EQUAL_PRINCIPAL or annual_rate == 0
    if equal_principal:
        level = principal_minor
    else:
        level = level_payment_minor(principal_minor, annual_rate, count)
    first_interest = NO_FIRST_INTEREST
    if first_period_days is not None:
        first_interest = period_interest_minor(principal_minor, annual_rate, first_period_days)
    terms = LoanTerms(
        slot=slot,
        repayment_slot=repayment_slot,
        level_minor=level,
        first_interest_minor=first_interest,
        rate_ppm=annual_rate,
        monthly_fee_minor=monthly_fee_minor,
        count=count,
        uplift_permille=uplift_permille,
        method=METHOD_EQUAL_PRINCIPAL if equal_principal else METHOD_EQUAL_INSTALMENT,
        grace_days=grace_days,
        segment=segment,
        allocation=allocation,
        loan_id_lo=loan_account_id & UINT64_MAX,
    )
    packed_terms(terms)
    return terms


def allocation_valid(code: int) -> bool:
    """True iff `code` names each part once in its three 2-bit fields (and nothing above)."""
    return code in _ALLOCATIONS


_ALLOCATIONS: Final = frozenset(
    first | second << 2 | third << 4
    for first in range(3)
    for second in range(3)
    for third in range(3)
    if len({first, second, third}) == 3
)


def check_terms(terms: LoanTerms) -> None:
    """What the kernel checks of each entry it reads (`cext.loans.collect` refuses a
    table with an entry out of these ranges). ValueError naming the field."""
    if terms.method not in (METHOD_EQUAL_INSTALMENT, METHOD_EQUAL_PRINCIPAL):
        raise ValueError(f"terms method must be 1 or 2, not {terms.method}")
    if not 1 <= terms.count <= TERM_MONTHS_MAX:
        raise ValueError(f"terms count must be in 1..{TERM_MONTHS_MAX}, not {terms.count}")
    if not 0 <= terms.level_minor <= TERMS_AMOUNT_MAX_MINOR:
        raise ValueError(
            f"terms level_minor must be in 0..{TERMS_AMOUNT_MAX_MINOR}, not {terms.level_minor}"
        )
    if not NO_FIRST_INTEREST <= terms.first_interest_minor <= TERMS_AMOUNT_MAX_MINOR:
        raise ValueError(f"terms first_interest_minor out of range: {terms.first_interest_minor}")
    if not 0 <= terms.rate_ppm <= RATE_MAX:
        raise ValueError(f"terms rate_ppm must be in 0..{RATE_MAX}, not {terms.rate_ppm}")
    if not 0 <= terms.uplift_permille <= UPLIFT_PERMILLE_MAX:
        raise ValueError(f"terms uplift_permille must be in 0..1000, not {terms.uplift_permille}")
    if terms.allocation not in _ALLOCATIONS:
        raise ValueError(f"terms allocation {terms.allocation:#x} must name each part once")


def packed_terms(terms: LoanTerms) -> bytes:
    """`pack_loan_terms` after `check_terms`, the struct's own ranges (u32 slots and fee,
    u8 grace and segment) a ValueError too."""
    check_terms(terms)
    try:
        return pack_loan_terms(terms)
    except struct.error as error:
        raise ValueError(f"terms out of range: {error} ({terms})") from None


# --- One loan's collection (the kernel's twin) ------------------------------------------


def next_due_day(due_day: int) -> int:
    """The same day of the month after `due_day`'s (a repayment day is 1..28, so it is
    there; clamped to a shorter month all the same, like `limits.calendar.add_months`);
    U16_MAX when that is past the last day number (no schedule reaches it)."""
    year, month, day_of_month = civil_of_day(due_day)
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    civil = (year, month, min(day_of_month, days_in_month(year, month)))
    if civil > _LAST_CIVIL_DAY:
        return U16_MAX
    return day_of_date(*civil)


def _instalment(terms: LoanTerms, number: int, remaining_minor: int) -> tuple[int, int, bool]:
    """(principal, interest without the fee, is the last) of instalment `number` of the
    segment, `remaining_minor` the principal not yet fallen due before it
    (`ledger.loans._rows`' recurrence)."""
    if number == 1 and terms.first_interest_minor >= 0:
        interest = terms.first_interest_minor
    else:
        interest = round_half_up(remaining_minor * terms.rate_ppm, _MONTHLY_DENOMINATOR)
    if terms.method == METHOD_EQUAL_PRINCIPAL:
        principal = round_half_up(number * terms.level_minor, terms.count) - round_half_up(
            (number - 1) * terms.level_minor, terms.count
        )
        # Never more than remains (only a prepaid row and a mismatched segment differ).
        principal = min(principal, remaining_minor)
        return principal, interest, number >= terms.count
    principal = max(terms.level_minor - interest, 0)
    if number >= terms.count or principal >= remaining_minor:
        return remaining_minor, interest, True
    return principal, interest, False


def instalment(terms: LoanTerms, row: LoanRow) -> tuple[int, int]:
    """(principal, interest including the monthly fee) of the row's next instalment."""
    principal, interest, _last = _instalment(terms, row.fallen_due + 1, row.scheduled_minor)
    return principal, interest + terms.monthly_fee_minor


def _saturated(value: int) -> int:
    return min(value, LOAN_PRINCIPAL_MAX_MINOR)


def collect_one(
    day: int, terms: LoanTerms, row: LoanRow, available: int
) -> tuple[LoanRow | None, int, tuple[int, int, int]]:
    """Day-end collection of day `day` for one loan (module docstring, steps 1-5).

    Args:
        day: the day whose day-end runs (it has ended).
        terms: the entry of the row's segment.
        row: the loan's row before.
        available: what the repayment account can pay (>= 0), net of what earlier loans
            of the same call took from it.

    Returns:
        (the new row, or None when the loan is not touched; the amount taken from the
        repayment account; (principal, interest, penalty) paid out of it).
    """
    assert 0 < day < DAY_COUNT and available >= 0, (day, available)
    nothing: tuple[LoanRow | None, int, tuple[int, int, int]] = (None, 0, (0, 0, 0))
    if not row.flags & LoanFlags.OPEN or row.flags & LoanFlags.CLOSED or row.collected_day >= day:
        return nothing
    scheduled = row.scheduled_minor
    arrears_principal = row.arrears_principal_minor
    arrears_interest = row.arrears_interest_minor
    penalty = row.penalty_minor
    fallen_due = row.fallen_due
    due_day = row.next_due_day
    overdue_since = row.overdue_since
    fell_due = 0
    while due_day != 0 and due_day <= day:  # 1. fall due
        principal, interest, last = _instalment(terms, fallen_due + 1, scheduled)
        scheduled -= principal
        arrears_principal = _saturated(arrears_principal + principal)
        arrears_interest = _saturated(arrears_interest + interest + terms.monthly_fee_minor)
        if overdue_since == 0:
            overdue_since = due_day
        fallen_due = min(fallen_due + 1, U16_MAX)
        fell_due += 1
        due_day = 0 if last else next_due_day(due_day)
    if fell_due == 0 and arrears_principal + arrears_interest + penalty == 0:
        return nothing
    # 2. collect, in the terms' order, each part in full before the next.
    owed = penalty + arrears_interest + arrears_principal
    taken = min(available, owed)
    dues = {"penalty": penalty, "interest": arrears_interest, "principal": arrears_principal}
    paid_parts, _left = allocate(
        taken, [(name, dues[name]) for name in allocation_order(terms.allocation)]
    )
    paid = dict(paid_parts)
    penalty -= paid["penalty"]
    arrears_interest -= paid["interest"]
    arrears_principal -= paid["principal"]
    penalty_through = row.penalty_through
    arrears = arrears_principal + arrears_interest
    # 3. penalty, once the grace has passed, from the first day not yet charged.
    if arrears > 0 and day > overdue_since + terms.grace_days:
        first = max(penalty_through, overdue_since) + 1
        if first <= day:
            daily = penalty_minor(
                arrears_principal, arrears_interest, terms.rate_ppm, terms.uplift_permille, 1
            )
            penalty = _saturated(penalty + daily * (day - first + 1))
        penalty_through = day
    # 4. flags.
    flags = row.flags
    if arrears == 0:
        overdue_since = 0
        flags &= ~LoanFlags.OVERDUE
    elif day > overdue_since:
        flags |= LoanFlags.OVERDUE
    if due_day == 0 and scheduled == 0 and arrears == 0 and penalty == 0:
        flags |= LoanFlags.CLOSED
    new_row = LoanRow(
        scheduled_minor=scheduled,
        arrears_principal_minor=arrears_principal,
        arrears_interest_minor=arrears_interest,
        penalty_minor=penalty,
        fallen_due=fallen_due,
        next_due_day=due_day,
        overdue_since=overdue_since,
        penalty_through=penalty_through,
        segment=row.segment,
        flags=int(flags),
        collected_day=day,  # 5.
    )
    return new_row, taken, (paid["principal"], paid["interest"], paid["penalty"])


def check_collection_args(
    day: int, terms: bytes | bytearray | memoryview, start: int, count_max: int
) -> int:
    """`loan_collection_batch`'s arguments; the number of terms entries. ValueError."""
    if len(terms) % LOAN_TERMS.size:
        raise ValueError("terms table must be whole 48-byte entries")
    entry_count = len(terms) // LOAN_TERMS.size
    if not 0 < day <= U16_MAX or count_max < 1 or not 0 <= start <= entry_count:
        raise ValueError(f"collection of day {day} from entry {start}, count_max {count_max}")
    return entry_count


def terms_error(index: int) -> ValueError:
    """The error of a terms table with a bad entry at `index` (the kernel's words)."""
    return ValueError(
        f"terms entry {index}: out of range, or not after the entry before it in "
        "(slot, segment) order"
    )


def terms_valid(terms: LoanTerms) -> bool:
    """`check_terms` as a test (the kernel's `terms_valid`)."""
    return (
        terms.method in (METHOD_EQUAL_INSTALMENT, METHOD_EQUAL_PRINCIPAL)
        and 1 <= terms.count <= TERM_MONTHS_MAX
        and 0 <= terms.level_minor <= TERMS_AMOUNT_MAX_MINOR
        and NO_FIRST_INTEREST <= terms.first_interest_minor <= TERMS_AMOUNT_MAX_MINOR
        and terms.rate_ppm <= RATE_MAX
        and terms.uplift_permille <= UPLIFT_PERMILLE_MAX
        and terms.allocation in _ALLOCATIONS
    )


def collection_transfer(
    loan_account_id: int,
    repayment_account_id: int,
    funding_id: int,
    day: int,
    amount_minor: int,
    *,
    ledger: int,
    channel: int = BANK_CHANNEL,
) -> bytes:
    """The day-end collection's transfer of one loan on `day` (what the kernel writes)."""
    return pack_transfer(
        id=collection_transfer_id(loan_account_id, day),
        debit_account_id=repayment_account_id,
        credit_account_id=funding_id,
        amount=amount_minor,
        code=TransferCode.LOAN_REPAYMENT,
        ledger=ledger,
        channel=channel,
        user_data=day,
    )


# --- The terms table --------------------------------------------------------------------


class LoanTermsTable:
    """Every loan's terms entries, packed for the day-end: sorted by (slot, segment).

    A loan has one entry a segment it may be in: the current one and, while a prepayment
    is on its way, the tentative next one (the kernel uses the entry whose segment is
    the row's). `packed()` is cached until the next change.
    """

    def __init__(self) -> None:
        self._entries: dict[int, dict[int, bytes]] = {}  # account id -> segment -> entry
        self._slots: dict[int, int] = {}  # account id -> its slot
        self._size = 0
        self._packed: bytes | None = None

    def put(self, account_id: int, terms: bytes | bytearray | memoryview | LoanTerms) -> None:
        """Add, or replace, the entry of `account_id` for the terms' segment. ValueError
        for terms out of range (`check_terms`), of another loan id, or of another slot
        than the loan's other entries."""
        if isinstance(terms, LoanTerms):
            view, raw = terms, packed_terms(terms)
        else:
            raw = bytes(terms)
            view = LoanTerms._make(LOAN_TERMS.unpack(raw))
            check_terms(view)
        if view.loan_id_lo != account_id & UINT64_MAX:
            raise ValueError(f"terms of loan id lo {view.loan_id_lo:#x} put for {account_id}")
        if self._slots.setdefault(account_id, view.slot) != view.slot:
            raise ValueError(f"terms of account {account_id} name two slots")
        segments = self._entries.setdefault(account_id, {})
        if view.segment not in segments:
            self._size += 1
        segments[view.segment] = raw
        self._packed = None

    def drop_after(self, account_id: int, segment: int) -> None:
        """Forget the account's entries of segments after `segment` (a tentative segment
        whose prepayment did not post)."""
        segments = self._entries.get(account_id, {})
        for later in [each for each in segments if each > segment]:
            del segments[later]
            self._size -= 1
            self._packed = None
        if account_id in self._entries and not segments:
            self.remove(account_id)

    def remove(self, account_id: int) -> None:
        """Forget every entry of the account (a closed loan needs none)."""
        segments = self._entries.pop(account_id, {})
        self._slots.pop(account_id, None)
        if segments:
            self._size -= len(segments)
            self._packed = None

    def get(self, account_id: int, segment: int) -> LoanTerms | None:
        raw = self._entries.get(account_id, {}).get(segment)
        return None if raw is None else loan_terms_view(raw)

    def entries(self) -> Iterable[LoanTerms]:
        """Every entry, in the packed order."""
        packed = self.packed()
        return (
            loan_terms_view(packed, offset) for offset in range(0, len(packed), LOAN_TERMS.size)
        )

    def packed(self) -> bytes:
        """The table for the kernel: entries sorted by (slot, segment)."""
        if self._packed is None:
            # One int key a (slot, segment): a sort on ints, then one join (about four
            # times faster than tuples and a key function, at 1,000,000 loans).
            slots = self._slots
            keyed = {
                slots[account_id] << 8 | segment: raw
                for account_id, segments in self._entries.items()
                for segment, raw in segments.items()
            }
            self._packed = b"".join(map(keyed.__getitem__, sorted(keyed)))
        return self._packed

    def __len__(self) -> int:
        return self._size


# --- Shared pure helpers: the first row, disbursement and repayment parts ---------------


def first_row(principal_minor: int, first_due_day: int) -> bytes:
    """A loan's row at disbursement: everything scheduled, OPEN, segment 0."""
    assert 0 < principal_minor <= LOAN_PRINCIPAL_MAX_MINOR, principal_minor
    assert 0 < first_due_day < DAY_COUNT, first_due_day
    return pack_loan_row(scheduled_minor=principal_minor, next_due_day=first_due_day)


def disbursement_parts(
    transfer_id: int,
    funding_id: int,
    customer_account_id: int,
    loan_account_id: int,
    net_minor: int,
    row: bytes | bytearray,
    *,
    transfer_index: int = 0,
    ledger: int = LEDGER_CNY,
    user_data: int = 0,
) -> tuple[bytes, bytes]:
    """(the disbursement transfer: funding -> the customer's account, the loan's first
    row write, depending on the transfer at `transfer_index` of the entry)."""
    return _movement_parts(
        transfer_id, funding_id, customer_account_id, net_minor,
        TransferCode.LOAN_DISBURSEMENT, loan_account_id, row, transfer_index, ledger, user_data,
    )  # fmt: skip


def repayment_parts(
    transfer_id: int,
    repayment_account_id: int,
    funding_id: int,
    loan_account_id: int,
    amount_minor: int,
    new_row: bytes | bytearray,
    *,
    transfer_index: int = 0,
    ledger: int = LEDGER_CNY,
    user_data: int = 0,
) -> tuple[bytes, bytes]:
    """(a repayment transfer: the repayment account -> funding, the loan's new row
    write, depending on the transfer at `transfer_index` of the entry)."""
    return _movement_parts(
        transfer_id, repayment_account_id, funding_id, amount_minor,
        TransferCode.LOAN_REPAYMENT, loan_account_id, new_row, transfer_index, ledger,
        user_data,
    )  # fmt: skip


def _movement_parts(
    transfer_id: int,
    debit_account_id: int,
    credit_account_id: int,
    amount_minor: int,
    code: TransferCode,
    loan_account_id: int,
    row: bytes | bytearray,
    transfer_index: int,
    ledger: int,
    user_data: int,
) -> tuple[bytes, bytes]:
    """One money movement of a loan at the bank's channel and the loan's row written
    with it (iff the transfer at `transfer_index` of the entry posts)."""
    assert amount_minor > 0, amount_minor
    record = pack_transfer(
        id=transfer_id,
        debit_account_id=debit_account_id,
        credit_account_id=credit_account_id,
        amount=amount_minor,
        code=code,
        channel=BANK_CHANNEL,
        ledger=ledger,
        user_data=user_data,
    )
    return record, pack_deposit_write(loan_account_id, transfer_index, row)


def row_write(loan_account_id: int, row: LoanRow, transfer_index: int | None) -> bytes:
    """A collection's row write: after the loan's transfer, or unconditional (None)."""
    index = DEPOSIT_WRITE_ALWAYS if transfer_index is None else transfer_index
    return pack_deposit_write(loan_account_id, index, LOAN_ROW.pack(*row))
