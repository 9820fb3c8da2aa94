"""The deposit rows of the ledger's `deposits` table: layouts, named views, packers, ids.

Every account slot has a 32-byte row (`DEPOSIT_SIZE`) in the `deposits` table
(ledger/state.py), zero until a deposit feature writes it. Which layout a row
has follows from the account's kind, never from the row itself:

- demand accounts (`DEMAND_KINDS`: Class I/II/III, savings) keep the interest
  accrued since the last settlement, exactly, in units of
  1 / (RATE_SCALE * ACCRUAL_DENOMINATOR) fen (`UNITS_PER_FEN`; ledger/interest.py):

      0  u64 accrued_lo      8  i64 accrued_hi       (the i128 accrued units)
     16  u32 period_settled (last settled period, 0 none)  20 u32 reserved
     24  i64 interest_paid_total (fen, every settlement ever paid)

- fixed-deposit accounts (AccountKind.FIXED_DEPOSIT):

      0  i64 principal      8  u32 rate (RATE_SCALE)   12 u16 open_day
     14  u16 maturity_day  16  u16 term_months        18 u8 day_count  19 u8 flags (FdFlags)
     20  u32 payout_slot (the account it pays back to) 24 u32 product  28 u32 reserved

Nobody outside `ledger/` (and the kernels in cext/deposits.pyx, which mirror
these offsets) decodes a row by position: read one with `demand_row_view` /
`fixed_row_view`, write one with `pack_demand_row` / `pack_fixed_row`.

A `POST_WITH_ROWS` entry (core/entries.py) carries row writes beside its
transfers (`DEPOSIT_WRITE`, 64 bytes): the account the row belongs to, the index
of the transfer (in the same entry) it depends on, and the 32-byte row; the row
is written iff that transfer's result is OK, so an opening, a withdrawal or a
maturity moves the money and records it in one atomic entry.

Settlement transfers have ids derived from account and period
(`interest_transfer_id`), so a rerun or a crash in the middle posts each once.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import NamedTuple

from ledger.interest import ACCRUAL_DENOMINATOR, RATE_SCALE, fen_of_units
from ledger.types import DEPOSIT_SIZE, TRANSFER_SIZE, UINT64_MAX, AccountKind

# The interest arithmetic (helper modules own it: ledger/interest.py). A row keeps the
# accrued units exactly; settlement rounds them to the fen once (`fen_of_units`).
UNITS_PER_FEN = RATE_SCALE * ACCRUAL_DENOMINATOR

INT128_MIN = -(1 << 127)
INT128_MAX = (1 << 127) - 1

# Kinds whose row is a demand row and that accrue interest (when their product has a rate).
DEMAND_KINDS = frozenset(
    {AccountKind.CLASS_I, AccountKind.CLASS_II, AccountKind.CLASS_III, AccountKind.SAVINGS}
)

DEMAND_ROW = struct.Struct("<QqIIq")
FIXED_ROW = struct.Struct("<qIHHHBBIII")
assert DEMAND_ROW.size == DEPOSIT_SIZE and FIXED_ROW.size == DEPOSIT_SIZE

# The accrual rate table (`accrue_interest(day, rates)`): one row per product id,
# i64 rate (RATE_SCALE), i64 day weight (ACCRUAL_DENOMINATOR // year basis); a product
# past the table's end, or with rate 0, earns nothing.
RATE_ROW = struct.Struct("<qq")

# A row write of a POST_WITH_ROWS entry: u64 account_id_lo, u64 account_id_hi,
# u32 transfer index (the entry's transfer it depends on; DEPOSIT_WRITE_ALWAYS: none),
# 12 reserved (zero) bytes, the 32-byte row.
DEPOSIT_WRITE = struct.Struct("<QQI12x32s")
assert DEPOSIT_WRITE.size == 64
DEPOSIT_WRITE_SIZE = DEPOSIT_WRITE.size
DEPOSIT_WRITE_ALWAYS = 0xFFFFFFFF  # written whatever the transfers' results


RATE_TABLE_MAX = 0xFFFFFFFF  # a rate fits the fixed-deposit row's u32 (429,496% a year)


def check_rates(rates: bytes | bytearray | memoryview) -> None:
    """An accrual rate table: whole RATE_ROWs, each rate in 0..RATE_TABLE_MAX and weight in
    0..ACCRUAL_DENOMINATOR (so a day's units fit far below 2**127). ValueError otherwise."""
    if len(rates) % RATE_ROW.size:
        raise ValueError(f"rate table of {len(rates)} bytes: not whole {RATE_ROW.size}-byte rows")
    for product, (rate, weight) in enumerate(RATE_ROW.iter_unpack(rates)):
        if not 0 <= rate <= RATE_TABLE_MAX or not 0 <= weight <= ACCRUAL_DENOMINATOR:
            raise ValueError(f"product {product}: rate {rate}, weight {weight} out of range")


def check_settlement_args(period: int, start_slot: int, count_max: int) -> None:
    """`settlement_batch`'s arguments (a split account needs room for two transfers)."""
    if not 0 < period <= 0xFFFFFFFF or start_slot < 0 or count_max < 2:
        raise ValueError(f"settlement batch of period {period} from {start_slot}, {count_max}")


def check_settle_args(
    period: int, transfers: bytes | bytearray | memoryview, slots: Sequence[int], account_count: int
) -> None:
    """`settle_interest`'s arguments: one slot a transfer, every slot an account's, in
    non-decreasing order (an account's transfers side by side, as `settlement_batch`
    gives them)."""
    count = len(transfers) // TRANSFER_SIZE
    if not 0 < period <= 0xFFFFFFFF or len(transfers) != count * TRANSFER_SIZE:
        raise ValueError(f"settlement of period {period}: {len(transfers)} bytes of transfers")
    if len(slots) != count or any(slot >= account_count for slot in slots):
        raise ValueError("settlement slots must name one existing account a transfer")
    if any(slots[index] < slots[index - 1] for index in range(1, count)):
        raise ValueError("settlement slots must name one existing account a transfer, in order")


class FdFlags(enum.IntFlag):
    """A fixed-deposit row's `flags` byte."""

    NONE = 0
    ROLLOVER = 1  # at maturity, renew for the same term at that day's rate
    PARTIAL_DONE = 2  # the one partial early withdrawal was taken
    CLOSED = 4  # paid out (maturity or full early withdrawal): nothing left
    OPEN = 8  # written by the opening: the row is a live deposit


FD_ROLLOVER = FdFlags.ROLLOVER
FD_PARTIAL_DONE = FdFlags.PARTIAL_DONE
FD_CLOSED = FdFlags.CLOSED
FD_OPEN = FdFlags.OPEN


class DemandRow(NamedTuple):
    """A demand account's deposit row, by name (the accrued units joined to one int)."""

    accrued_units: int  # i128, 1 / UNITS_PER_FEN fen
    period_settled: int  # last settled period (ledger.interest.settlement_period), 0 none
    interest_paid_total: int  # fen

    @property
    def accrued_fen(self) -> int:
        """The accrued interest rounded half up to the fen, as a settlement would pay it."""
        return fen_of_units(self.accrued_units)


class FixedRow(NamedTuple):
    """A fixed-deposit account's deposit row, by name."""

    principal: int  # fen
    rate: int  # RATE_SCALE
    open_day: int  # days since 2000-01-01
    maturity_day: int
    term_months: int
    day_count: int  # ledger.interest.DayCount
    flags: int  # FdFlags
    payout_slot: int  # the slot of the account it pays back to
    product: int  # the account product id of the deposit

    @property
    def is_open(self) -> bool:
        return bool(self.flags & FD_OPEN) and not self.flags & FD_CLOSED


def split_units(units: int) -> tuple[int, int]:
    """An i128 as (u64 lo, i64 hi), the row's two words."""
    assert INT128_MIN <= units <= INT128_MAX, units
    return units & UINT64_MAX, units >> 64


def join_units(lo: int, hi: int) -> int:
    return (hi << 64) | lo


def pack_demand_row(
    accrued_units: int = 0, period_settled: int = 0, interest_paid_total: int = 0
) -> bytes:
    """A demand row (32 bytes)."""
    lo, hi = split_units(accrued_units)
    return DEMAND_ROW.pack(lo, hi, period_settled, 0, interest_paid_total)


def demand_row_view(raw: bytes | bytearray | memoryview, offset: int = 0) -> DemandRow:
    """The demand row at `offset` of `raw`, by name."""
    lo, hi, period_settled, _reserved, paid = DEMAND_ROW.unpack_from(raw, offset)
    return DemandRow(join_units(lo, hi), period_settled, paid)


def pack_fixed_row(
    *,
    principal: int,
    rate: int,
    open_day: int,
    maturity_day: int,
    term_months: int,
    day_count: int,
    flags: int,
    payout_slot: int,
    product: int,
) -> bytes:
    """A fixed-deposit row (32 bytes)."""
    return FIXED_ROW.pack(
        principal, rate, open_day, maturity_day, term_months, day_count, int(flags),
        payout_slot, product, 0,
    )  # fmt: skip


def fixed_row_view(raw: bytes | bytearray | memoryview, offset: int = 0) -> FixedRow:
    """The fixed-deposit row at `offset` of `raw`, by name."""
    return FixedRow(*FIXED_ROW.unpack_from(raw, offset)[:9])


def with_fixed_flags(row: bytes | bytearray | memoryview, flags: int) -> bytes:
    """A copy of a fixed-deposit row with its flags replaced."""
    return pack_fixed_row(**{**fixed_row_view(row)._asdict(), "flags": int(flags)})


class DepositWrite(NamedTuple):
    """One row write of a POST_WITH_ROWS entry, by name."""

    account_id: int
    transfer_index: int  # DEPOSIT_WRITE_ALWAYS: unconditional
    row: bytes


def pack_deposit_write(account_id: int, transfer_index: int, row: bytes | bytearray) -> bytes:
    """A DEPOSIT_WRITE record (64 bytes): write `row` to the account's deposit row iff the
    entry's transfer `transfer_index` is OK (DEPOSIT_WRITE_ALWAYS: in any case)."""
    assert len(row) == DEPOSIT_SIZE, len(row)
    assert 0 <= transfer_index <= DEPOSIT_WRITE_ALWAYS, transfer_index
    return DEPOSIT_WRITE.pack(account_id & UINT64_MAX, account_id >> 64, transfer_index, bytes(row))


def deposit_write_view(raw: bytes | bytearray | memoryview, offset: int = 0) -> DepositWrite:
    lo, hi, index, row = DEPOSIT_WRITE.unpack_from(raw, offset)
    return DepositWrite((hi << 64) | lo, index, row)


# --- settlement transfer ids ---------------------------------------------------------------
#
# id_lo = the account id's low 64 bits, xor its high 64 bits times an odd constant (so
#         every id the bank issues, all below 2**64, maps to itself);
# id_hi = INTEREST_ID_TAG << 40 | part << 32 | period.
# A channel's transfer ids are keyed BLAKE2b digests (core/services/records.py) and the
# tools' are small counters: neither has this 24-bit tag in its top bits except by a
# 2**-128 accident of a full 128-bit match. The kernel computes the same (cext/deposits.pyx).

INTEREST_ID_TAG = 0x494E54  # "INT"
INTEREST_ID_MIX = 0x9E3779B97F4A7C15
PART_TO_ACCOUNT = 0
PART_EXCESS_TO_BOUND = 1


def interest_transfer_id(account_id: int, period: int, part: int) -> int:
    """The settlement transfer id of `account_id` for `period` (ledger.interest
    settlement_period); part 0 credits the account, part 1 a Class III account's excess
    over its balance cap to its bound account."""
    assert 0 <= period <= 0xFFFFFFFF and part in (PART_TO_ACCOUNT, PART_EXCESS_TO_BOUND)
    lo = (account_id & UINT64_MAX) ^ (((account_id >> 64) * INTEREST_ID_MIX) & UINT64_MAX)
    hi = (INTEREST_ID_TAG << 40) | (part << 32) | period
    return (hi << 64) | lo


def is_interest_transfer_id(transfer_id: int) -> bool:
    return transfer_id >> (64 + 40) == INTEREST_ID_TAG
