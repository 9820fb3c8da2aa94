"""Type stub for cext/http_fast.pyx (driven by channels/bank.py, the JSON batch route)."""

from collections.abc import Callable
from typing import Any

TRANSFER_SIZE: int

def blake2b(data: bytes, key: bytes, digest_size: int) -> bytes: ...
def derive_ids_into(mac_key: bytes, prefix: bytes, count: int, records: bytearray) -> None: ...
def pack_json_items(
    items: list[Any],
    records: bytearray,
    code_of_name: dict[str, int],
    channel: int,
    ledger: int,
    slow: Callable[[Any, int], tuple[int, int, int, int, int, int, int, int]],
) -> None: ...
def render_results(
    records: bytes | bytearray | memoryview,
    codes: bytes | bytearray | memoryview,
    timestamps: Any,
    names: list[str | None],
) -> bytes: ...
def stamp_binary_records(records: bytearray, channel: int) -> int: ...
