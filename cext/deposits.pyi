"""Type stubs for cext/deposits.pyx (deposit kernels; see ledger/kernel.py)."""

from array import array
from mmap import mmap
from typing import Any, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]

INTEREST_ID_TAG: int
INTEREST_ID_MIX: int
UNITS_PER_FEN: int
STRUCT_SIZES: dict[str, int]

def accrue(
    rates: Buffer, accounts: Buffer, deposits: Buffer, products: Buffer, meta: array[int],
    dirty: Buffer,
) -> int: ...
def settlement_batch(
    period: int, start_slot: int, count_max: int, transfers_out: Buffer, slots_out: Buffer,
    accounts: Buffer, pending: Buffer, deposits: Buffer, products: Buffer, meta: array[int],
    expense_id: int, clearing_id: int, channel: int,
) -> tuple[int, int]: ...
def check_slots(slots: Buffer, count: int, meta: array[int]) -> None: ...
def mark_settled(
    period: int, transfers: Buffer, slots: Buffer, results: Buffer, accounts: Buffer,
    deposits: Buffer, products: Buffer, meta: array[int], dirty: Buffer,
) -> int: ...
def mark_dirty(
    slot: int, accounts: Buffer, deposits: Buffer, products: Buffer, meta: array[int],
    dirty: Buffer,
) -> None: ...
def due_fixed_deposits(
    day: int, accounts: Buffer, deposits: Buffer, products: Buffer, meta: array[int]
) -> bytes: ...
def purge_counters(day: int, channel_counters: Buffer) -> int: ...
