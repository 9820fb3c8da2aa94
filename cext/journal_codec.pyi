"""Type stub for cext/journal_codec.pyx (see core/journal.py for how it is driven)."""

from array import array
from mmap import mmap
from typing import Any, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]

HEADER_SIZE: int
MAGIC: bytes

def crc32c(data: Buffer, crc: int = 0) -> int: ...
def encode_header(
    out: Buffer,
    seq: int,
    timestamp_first: int,
    payload_size: int,
    kind: int,
    business_day: int,
    count: int,
    epoch: int,
    group_first_seq: int,
    payload: Buffer,
) -> int: ...
def decode_header(
    data: Buffer, offset: int
) -> tuple[bool, int, int, int, int, int, int, int, int, int, int, int]: ...
def record_crc(data: Buffer, offset: int, payload_size: int) -> int: ...
def first_nonzero(data: Buffer, start: int = 0) -> int: ...
def last_nonzero_end(data: Buffer, start: int = 0) -> int: ...
