"""Type stubs for cext/loans.pyx (loan kernels; see ledger/kernel.py and ledger/loan_book.py)."""

from array import array
from mmap import mmap
from typing import Any, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]

COLLECTION_ID_TAG: int
COLLECTION_ID_MIX: int
STRUCT_SIZES: dict[str, int]

def collect(
    day: int, terms: Buffer, start: int, count_max: int, transfers_out: Buffer,
    writes_out: Buffer, parts_out: array[int], accounts: Buffer, pending: Buffer,
    deposits: Buffer, meta: array[int], funding_id_lo: int, channel: int,
) -> tuple[int, int, int, int]: ...
def write_rows(
    rows: Buffer, results: Buffer, accounts: Buffer, account_index: Buffer, deposits: Buffer,
    meta: array[int], dirty: Buffer,
) -> int: ...
