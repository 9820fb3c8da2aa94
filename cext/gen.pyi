"""Type stub for cext/gen.pyx: deterministic record generators."""

from array import array
from mmap import mmap
from typing import Any, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]

def account_id(seed: int, index: int) -> int: ...
def transfer_id(seed: int, seq: int) -> int: ...
def fill_accounts(
    out: Buffer, seed: int, first_index: int, kind: int, flags: int, product: int, ledger: int
) -> int: ...
def fill_transfers(
    out: Buffer,
    seed: int,
    first_seq: int,
    account_seed: int,
    account_count: int,
    distribution: int,
    retry_fraction: float,
    code: int,
    channel: int,
    ledger: int,
    amount_median_minor: int,
    amount_sigma: float,
) -> int: ...
def fill_fundings(
    out: Buffer,
    seed: int,
    first_index: int,
    account_seed: int,
    source_id_lo: int,
    source_id_hi: int,
    amount_minor: int,
    code: int,
    ledger: int,
) -> int: ...
