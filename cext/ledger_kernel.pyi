"""Type stub for cext/ledger_kernel.pyx (see ledger/kernel.py for how it is driven)."""

from array import array
from mmap import mmap
from typing import Any, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]

def create_transfers(
    batch: Buffer,
    timestamp_first: int,
    business_day: int,
    accounts: Buffer,
    pending: Buffer,
    account_index: Buffer,
    log: Buffer,
    failed: Buffer,
    transfer_index: Buffer,
    heap: Buffer,
    channel_counters: Buffer,
    channel_live: Buffer,
    dirty: Buffer,
    customers: Buffer,
    products: Buffer,
    channels: Buffer,
    log_quotas: Buffer,
    meta: Buffer,
    results: Buffer,
    timestamps: Buffer,
    balances: Buffer,
) -> int: ...
def expire_pending(
    now_ns: int,
    business_day: int,
    accounts: Buffer,
    pending: Buffer,
    account_index: Buffer,
    log: Buffer,
    failed: Buffer,
    transfer_index: Buffer,
    heap: Buffer,
    channel_counters: Buffer,
    channel_live: Buffer,
    dirty: Buffer,
    customers: Buffer,
    products: Buffer,
    channels: Buffer,
    log_quotas: Buffer,
    meta: Buffer,
) -> int: ...
def evict(
    before_ns: int,
    count_max: int,
    accounts: Buffer,
    pending: Buffer,
    account_index: Buffer,
    log: Buffer,
    failed: Buffer,
    transfer_index: Buffer,
    heap: Buffer,
    channel_counters: Buffer,
    channel_live: Buffer,
    dirty: Buffer,
    customers: Buffer,
    products: Buffer,
    channels: Buffer,
    log_quotas: Buffer,
    meta: Buffer,
) -> int: ...
def evict_failed(
    before_ns: int,
    count_max: int,
    accounts: Buffer,
    pending: Buffer,
    account_index: Buffer,
    log: Buffer,
    failed: Buffer,
    transfer_index: Buffer,
    heap: Buffer,
    channel_counters: Buffer,
    channel_live: Buffer,
    dirty: Buffer,
    customers: Buffer,
    products: Buffer,
    channels: Buffer,
    log_quotas: Buffer,
    meta: Buffer,
) -> int: ...
def create_accounts(
    batch: Buffer,
    accounts: Buffer,
    pending: Buffer,
    account_index: Buffer,
    log: Buffer,
    failed: Buffer,
    transfer_index: Buffer,
    heap: Buffer,
    channel_counters: Buffer,
    channel_live: Buffer,
    dirty: Buffer,
    customers: Buffer,
    products: Buffer,
    channels: Buffer,
    log_quotas: Buffer,
    meta: Buffer,
    results: Buffer,
) -> int: ...
def update_account(
    id_lo: int,
    id_hi: int,
    status: int,
    flags: int,
    accounts: Buffer,
    pending: Buffer,
    account_index: Buffer,
    log: Buffer,
    failed: Buffer,
    transfer_index: Buffer,
    heap: Buffer,
    channel_counters: Buffer,
    channel_live: Buffer,
    dirty: Buffer,
    customers: Buffer,
    products: Buffer,
    channels: Buffer,
    log_quotas: Buffer,
    meta: Buffer,
) -> int: ...
def account_slot(
    id_lo: int, id_hi: int, accounts: Buffer, account_index: Buffer, meta: Buffer
) -> int: ...
def transfer_seq(
    id_lo: int, id_hi: int, transfer_index: Buffer, log: Buffer, failed: Buffer, meta: Buffer
) -> int: ...
def rebuild_indexes(
    accounts: Buffer,
    pending: Buffer,
    account_index: Buffer,
    log: Buffer,
    failed: Buffer,
    transfer_index: Buffer,
    heap: Buffer,
    channel_counters: Buffer,
    channel_live: Buffer,
    dirty: Buffer,
    customers: Buffer,
    products: Buffer,
    channels: Buffer,
    log_quotas: Buffer,
    meta: Buffer,
) -> int: ...
def dirty_take(dirty: Buffer, meta: Buffer, account_capacity: int) -> tuple[bytes, bytes, bool]: ...
def account_history(
    slot: int, before_seq: int, limit: int, log: Buffer, meta: Buffer
) -> list[int]: ...
def channel_entries_live(channel_counters: Buffer, day: int) -> list[tuple[int, int, int]]: ...
def channel_used(slot: int, channel: int, day: int, channel_counters: Buffer) -> int: ...
def counter_used(key: int, day: int, channel_counters: Buffer) -> int: ...
def year_of_day_kernel(day: int) -> int: ...

TRANSFER_RESULTS: dict[str, int]
ACCOUNT_RESULTS: dict[str, int]
STRUCT_SIZES: dict[str, int]
