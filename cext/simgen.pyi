"""Type stub for cext/simgen.pyx: the failover simulator's generators and bulk loops."""

from array import array
from mmap import mmap
from typing import Any, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]

ACCOUNT_ID_HI_BASE: int
REQUEST_ID_HI: int
FUNDING_ID_HI_BASE: int
TAG_CLASS_II: int
TAG_CLASS_III: int
TAG_FIXED_DEPOSIT: int
TAG_MERCHANT: int
TAG_OPENING: int
TAG_INTERNAL: int
INTERNAL_CLEARING_INDEX: int
INTERNAL_WEALTH_INDEX: int
KIND_NAMES: tuple[str, ...]
NOT_ACKED: int
GAVE_UP: int
SETTLE_COMMIT: int
SETTLE_TIMEOUT: int
SETTLE_REFUSED: int
LATENCY_BUCKETS: int
LATENCY_BUCKETS_PER_DECADE: int
ERROR_KINDS: tuple[str, ...]
ERROR_CHANNEL_SLOTS: int
LATENCY_US_MAX: int

def account_id(seed: int, tag: int, index: int) -> int: ...
def request_id(seq: int) -> int: ...
def user_has_account(seed: int, tag: int, user: int, fraction: float) -> bool: ...
def fill_user_accounts(
    out: Buffer,
    seed: int,
    tag: int,
    first_user: int,
    user_count: int,
    fraction: float,
    kind: int,
    product: int,
    ledger: int,
    inflow_enabled_fraction: float,
    face_to_face_fraction: float,
) -> int: ...
def fill_fundings(
    out: Buffer,
    seed: int,
    tag: int,
    first_user: int,
    user_count: int,
    fraction: float,
    source_lo: int,
    source_hi: int,
    code: int,
    median_minor: float,
    sigma: float,
    amount_max_minor: int,
    ledger: int,
) -> int: ...
def fill_merchants(
    out: Buffer, seed: int, first: int, count: int, kind: int, product: int, ledger: int
) -> int: ...
def fill_step_counts(
    counts: Buffer, seed: int, first_step: int, step_ns: int, rate_per_s: Buffer, rate_point_ns: int
) -> int: ...
def prefix_sums(counts: Buffer, out: Buffer, start: int) -> int: ...

class TrafficModel:
    seed: int
    account_seed: int
    users: int
    merchants: int
    class_iii_fraction: float
    fixed_deposit_fraction: float
    zipf_s: float
    ledger: int
    def __init__(
        self,
        seed: int,
        account_seed: int,
        users: int,
        merchants: int,
        class_iii_fraction: float,
        fixed_deposit_fraction: float,
        zipf_s: float,
        mix: list[float] | tuple[float, ...],
        medians_minor: list[float] | tuple[float, ...],
        sigmas: list[float] | tuple[float, ...],
        ledger: int,
        amount_max_minor: int,
    ) -> None: ...
    def fill_range(self, out: Buffer, offset: int, first_seq: int, count: int) -> int: ...
    def fill_packed(self, out: Buffer, offset: int, packed: Buffer, count: int) -> int: ...
    def kind_counts(self, first_seq: int, count: int) -> list[int]: ...
    def channels(self, first_seq: int, count: int) -> bytes: ...

def gather_records(
    out: Buffer, offset: int, records: Buffer, packed: Buffer, count: int
) -> int: ...
def region_of_request(seed: int, seq: int, region_a_share: float) -> int: ...
def partition_requests(
    seed: int,
    region_a_share: float,
    stale_fraction: float,
    new_first: int,
    new_count: int,
    packed: Buffer,
    packed_count: int,
    out0: Buffer,
    out1: Buffer,
    out2: Buffer,
    out3: Buffer,
) -> tuple[int, int, int, int]: ...

class Clients:
    ack_result_buffer: Any
    ack_ms_buffer: Any
    hist_phase_buffer: Any
    hist_series_buffer: Any
    acked_per_s_buffer: Any
    attempts_per_s_buffer: Any
    offered_per_s_buffer: Any
    retries_per_s_buffer: Any
    gave_up_per_s_buffer: Any
    result_counts_buffer: Any
    seed: int
    step_ns: int
    linger_ns: int
    timeout_ns: int
    backoff_base_ns: int
    backoff_cap_ns: int
    attempts_max: int
    reply_loss: float
    region_a_share: float
    series_bucket_ns: int
    series_count: int
    seconds: int
    acked: int
    acked_first_attempt: int
    answered_exists: int
    retries: int
    gave_up: int
    timeouts: int
    refusals: int
    def __init__(
        self,
        *,
        seed: int,
        request_count: int,
        step_first_seq: Buffer,
        arrivals: Buffer | None,
        phase_starts: Buffer,
        step_ns: int,
        linger_ns: int,
        timeout_ns: int,
        backoff_base_ns: int,
        backoff_cap_ns: int,
        attempts_max: int,
        reply_loss: float,
        region_a_share: float,
        seconds: int,
        series_bucket_ns: int,
        series_count: int,
        ack_result_buffer: Buffer,
        ack_ms_buffer: Buffer,
        hist_phase_buffer: Buffer,
        hist_series_buffer: Buffer,
        acked_per_s_buffer: Buffer,
        attempts_per_s_buffer: Buffer,
        offered_per_s_buffer: Buffer,
        retries_per_s_buffer: Buffer,
        gave_up_per_s_buffer: Buffer,
        result_counts_buffer: Buffer,
    ) -> None: ...
    latency_us_buffer: Any
    errors_buffer: Any
    def record_samples(
        self,
        latency_us_buffer: Buffer,
        errors_buffer: Buffer,
        model: TrafficModel | None = None,
        records: Buffer | None = None,
    ) -> None: ...
    def count_attempts(
        self, step: int, new_first: int, new_count: int, packed: Buffer, packed_count: int
    ) -> int: ...
    def settle(
        self,
        mode: int,
        step: int,
        new_first: int,
        new_count: int,
        packed: Buffer,
        packed_count: int,
        results: Buffer,
        commit_delay_ns: int,
        client_a_ns: int,
        client_b_ns: int,
        retry_out: Buffer,
        retry_step_out: Buffer,
    ) -> int: ...

def group_latencies(
    latency_us: Buffer,
    ack_result: Buffer,
    ack_ms: Buffer,
    seed: int,
    region_a_share: float,
    bucket_ms: int,
    bucket_count: int,
    offsets: Buffer,
    out: Buffer,
) -> int: ...
def scan_log(
    log_table: Buffer,
    meta: Buffer,
    from_seq: int,
    seen: Buffer,
    accounts: Buffer,
    sample_stride: int,
    sample_totals: Buffer,
    last_timestamp: int,
) -> tuple[int, int, int, int, int]: ...
def scan_failed(
    failed_table: Buffer, meta: Buffer, from_seq: int, seen: Buffer
) -> tuple[int, int, int]: ...
def verify_acked(
    ack_result: Buffer, seen: Buffer, first: int, end: int, list_max: int
) -> tuple[int, int, int, list[int], list[int]]: ...
def count_seen(seen: Buffer, end: int) -> tuple[int, int]: ...
def check_accounts(accounts: Buffer, meta: Buffer, products: Buffer) -> dict[str, int]: ...
def check_sample_limits(
    sample_totals: Buffer,
    sample_stride: int,
    accounts: Buffer,
    meta: Buffer,
    products: Buffer,
    channels: Buffer,
) -> tuple[int, int, int]: ...
def check_channel_counters(
    channel_counters: Buffer, channels: Buffer, day: int
) -> tuple[int, int]: ...
def pack_channel_entries(
    channel_counters: Buffer, day: int, first: int, end: int, out: Buffer
) -> int: ...
def merge_seen(dst: Buffer, src: Buffer) -> int: ...
def fill_arrivals(
    out: Buffer, seed: int, step_first_seq: Buffer, step_ns: int, first_step: int, step_count: int
) -> int: ...
def all_zero(data: Buffer, start: int, end: int) -> bool: ...
