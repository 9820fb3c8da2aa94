"""core.engine_policy: the rules for clocks, batching and eviction the engine follows and
the simulator models (pure functions: no engine, no store, no clock)."""

from __future__ import annotations

from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from cext import simgen
from core import engine_policy as policy
from core.engine_policy import (
    BATCH_SIZE_MAX,
    EVICT_INTERVAL_NS,
    NS_PER_S,
    Eviction,
    EvictionPolicy,
)

WALL = st.integers(min_value=0, max_value=1 << 62)


# --- clocks -----------------------------------------------------------------------


@given(st.lists(st.tuples(WALL, st.integers(min_value=1, max_value=BATCH_SIZE_MAX)), max_size=60))
def test_timestamps_strictly_increase_whatever_the_clock_does(
    entries: list[tuple[int, int]],
) -> None:
    """A clock that jumps back, stands still or is skewed never makes a timestamp repeat
    or go back; an entry of n records takes n consecutive ones."""
    last = 0
    taken: list[int] = []
    for wall, records in entries:
        first = policy.next_timestamp(wall, last)
        assert first > last
        assert first >= wall
        assert first == wall or first == last + 1  # the clock, unless it is behind
        last = policy.last_timestamp(first, records)
        assert last - first + 1 == records
        taken.extend(range(first, min(last, first + 3) + 1))
    assert taken == sorted(set(taken))


@given(WALL, WALL)
def test_next_timestamp_is_the_engine_formula(wall: int, last: int) -> None:
    assert policy.next_timestamp(wall, last) == max(wall, last + 1)


def test_an_entry_without_records_takes_one_timestamp() -> None:
    assert policy.last_timestamp(1000, 0) == 1000
    assert policy.last_timestamp(1000, 1) == 1000
    assert policy.last_timestamp(1000, 8189) == 1000 + 8188


@given(st.lists(st.integers(min_value=0, max_value=40_000), min_size=1, max_size=50))
def test_business_day_never_goes_back(days: list[int]) -> None:
    """A clock stepped back over midnight does not reopen a closed business day."""
    last = 0
    for day in days:
        new = policy.entry_business_day(day, last)
        assert new == max(day, last)
        last = new


# --- batching ---------------------------------------------------------------------


def batches(sizes: list[int], size_max: int) -> list[list[int]]:
    """Form batches from queued requests the way the engine does: a request that does
    not fit is carried into the next batch."""
    formed: list[list[int]] = []
    current: list[int] = []
    total = 0
    for size in sizes:
        if current and not policy.batch_fits(total, size, size_max):
            formed.append(current)
            current, total = [], 0
        current.append(size)
        total += size
    if current:
        formed.append(current)
    return formed


@given(
    st.integers(min_value=1, max_value=BATCH_SIZE_MAX).flatmap(
        lambda size_max: st.tuples(
            st.just(size_max),
            st.lists(st.integers(min_value=1, max_value=size_max), max_size=80),
        )
    )
)
def test_batches_never_pass_the_maximum_and_close_only_when_full(
    case: tuple[int, list[int]],
) -> None:
    size_max, sizes = case
    formed = batches(sizes, size_max)
    assert [size for batch in formed for size in batch] == sizes  # order kept, none lost
    for index, batch in enumerate(formed):
        assert sum(batch) <= size_max
        if index + 1 < len(formed):  # closed because the next request did not fit
            assert not policy.batch_fits(sum(batch), formed[index + 1][0], size_max)


def test_batch_fits_at_the_boundary() -> None:
    assert policy.batch_fits(0, BATCH_SIZE_MAX)
    assert policy.batch_fits(BATCH_SIZE_MAX - 1, 1)
    assert not policy.batch_fits(BATCH_SIZE_MAX, 1)
    assert not policy.batch_fits(0, BATCH_SIZE_MAX + 1)
    assert policy.batch_fits(3, 2, size_max=5)
    assert not policy.batch_fits(3, 3, size_max=5)


def test_linger_deadline_and_overload_retry_after() -> None:
    assert policy.linger_deadline(10.0, 0.002) == 10.002
    assert policy.linger_deadline(5_000, 2_000) == 7_000
    assert policy.overload_retry_after_s(0.001) == 0.05  # at least 50 ms
    assert policy.overload_retry_after_s(0.02) == 0.2  # ten lingers


@given(
    step=st.integers(min_value=0, max_value=10_000),
    step_ns=st.integers(min_value=1, max_value=10 * NS_PER_S),
    linger_ns=st.integers(min_value=0, max_value=NS_PER_S),
    offset=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_linger_close_is_the_end_of_the_attempts_window_within_its_step(
    step: int, step_ns: int, linger_ns: int, offset: float
) -> None:
    start, end = step * step_ns, (step + 1) * step_ns
    arrival = start + int(offset * step_ns)
    close = policy.linger_close_ns(arrival, start, end, linger_ns)
    assert arrival < close <= end
    assert close == end or close - arrival <= max(linger_ns, 1)
    assert close == end or (close - start) % max(linger_ns, 1) == 0


def clients_for_one_request(arrival_ns: int, step_ns: int, linger_ns: int) -> simgen.Clients:
    seconds = 4
    return simgen.Clients(
        seed=1,
        request_count=1,
        step_first_seq=array("q", [0, 1]),
        arrivals=array("Q", [arrival_ns]),
        phase_starts=array("q"),
        step_ns=step_ns,
        linger_ns=linger_ns,
        timeout_ns=10 * NS_PER_S,
        backoff_base_ns=NS_PER_S,
        backoff_cap_ns=NS_PER_S,
        attempts_max=8,
        reply_loss=0.0,
        region_a_share=1.0,
        seconds=seconds,
        series_bucket_ns=NS_PER_S,
        series_count=seconds,
        ack_result_buffer=bytearray([simgen.NOT_ACKED]),
        ack_ms_buffer=array("I", [0]),
        hist_phase_buffer=array("q", bytes(8 * 2 * simgen.LATENCY_BUCKETS)),
        hist_series_buffer=array("q", bytes(8 * seconds * simgen.LATENCY_BUCKETS)),
        acked_per_s_buffer=array("q", bytes(8 * 2 * seconds)),
        attempts_per_s_buffer=array("q", bytes(8 * 2 * seconds)),
        offered_per_s_buffer=array("q", bytes(8 * 2 * seconds)),
        retries_per_s_buffer=array("q", bytes(8 * seconds)),
        gave_up_per_s_buffer=array("q", bytes(8 * seconds)),
        result_counts_buffer=array("q", bytes(8 * 256)),
    )


@settings(max_examples=60)
@given(
    step_ms=st.integers(min_value=1, max_value=200),
    linger_ms=st.integers(min_value=1, max_value=250),
    offset_us=st.integers(min_value=0, max_value=199_999),
)
def test_the_simulators_compiled_linger_is_the_policys(
    step_ms: int, linger_ms: int, offset_us: int
) -> None:
    """`Clients.settle` (Cython, no Python in its loop) answers an attempt when the
    policy's linger window closes: with no commit delay and no link, at that instant."""
    step_ns, linger_ns = step_ms * 1_000_000, linger_ms * 1_000_000
    arrival = step_ns + (offset_us * 1000) % step_ns  # in step 1
    clients = clients_for_one_request(arrival, step_ns, linger_ns)
    ack_ms = clients.ack_ms_buffer
    written = clients.settle(
        simgen.SETTLE_COMMIT,
        1,
        0,
        1,
        array("Q", [0]),
        0,
        bytes([0]),
        0,
        0,
        0,
        array("Q", [0]),
        array("q", [0]),
    )
    assert written == 0 and clients.acked == 1
    close = policy.linger_close_ns(arrival, step_ns, 2 * step_ns, linger_ns)
    assert ack_ms[0] == close // 1_000_000


@given(
    oldest=st.integers(min_value=0, max_value=1 << 50),
    now=st.integers(min_value=0, max_value=1 << 50),
    bound=st.integers(min_value=0, max_value=1 << 40),
)
def test_backlog_bound(oldest: int, now: int, bound: int) -> None:
    assert policy.backlog_exceeded(oldest, now, bound) == (now - oldest > bound)


# --- eviction ---------------------------------------------------------------------


@given(
    capacity=st.integers(min_value=16, max_value=1 << 24),
    window_share=st.floats(min_value=0, max_value=1),
    incoming=st.integers(min_value=0, max_value=BATCH_SIZE_MAX),
)
def test_log_pressure_evicts_down_to_80_percent_past_90(
    capacity: int, window_share: float, incoming: int
) -> None:
    window = int(window_share * capacity)
    needed = policy.log_pressure(window, incoming, capacity)
    assert (needed > 0) == policy.under_pressure(window, incoming, capacity)
    if window + incoming > capacity * 9 // 10:
        assert window + incoming - needed == capacity * 8 // 10
    else:
        assert needed == 0


def test_expired_and_cutoff() -> None:
    assert policy.retention_cutoff_ns(5, 10) == 0  # never negative
    assert policy.retention_cutoff_ns(100, 10) == 90
    assert not policy.expired(0, 90)  # empty
    assert policy.expired(89, 90)
    assert not policy.expired(90, 90)  # exactly the retention: kept


RETENTION = 300 * NS_PER_S
FAILED_RETENTION = 60 * NS_PER_S


def plan(now: int, due: int, **kwargs: int) -> policy.EvictionPlan:
    state = {
        "window": 1000,
        "incoming": 1,
        "capacity": 1 << 20,
        "log_oldest_ns": 0,
        "failed_window": 0,
        "failed_oldest_ns": 0,
    }
    state.update(kwargs)
    return EvictionPolicy(RETENTION, FAILED_RETENTION).plan(now, due, **state)


def test_a_quiet_ledger_journals_nothing_but_the_interval_advances() -> None:
    now = 1_000 * NS_PER_S
    quiet = plan(now, 0, log_oldest_ns=now - 10 * NS_PER_S)
    assert quiet == policy.EvictionPlan(None, None, now + EVICT_INTERVAL_NS)


def test_eviction_by_age_once_per_interval() -> None:
    now = 1_000 * NS_PER_S
    old = now - RETENTION - 1
    due = plan(now, now, log_oldest_ns=old, failed_window=7, failed_oldest_ns=old)
    assert due.log == Eviction(now - RETENTION, 1000)  # all of the window past retention
    assert due.failed == Eviction(now - FAILED_RETENTION, 7)
    assert due.due_ns == now + EVICT_INTERVAL_NS
    not_yet = plan(now + 1, due.due_ns, log_oldest_ns=old, failed_oldest_ns=old)
    assert not_yet == policy.EvictionPlan(None, None, due.due_ns)


def test_pressure_evicts_even_when_not_due_and_only_past_the_retention() -> None:
    now = 1_000 * NS_PER_S
    capacity = 1000
    pressed = plan(now, now + 1, window=900, incoming=10, capacity=capacity)
    assert pressed.log == Eviction(now - RETENTION, 910 - 800)  # the kernel stops at before_ns
    assert pressed.failed is None
    assert pressed.due_ns == now + 1  # not due: the interval is untouched


@given(
    events=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3 * NS_PER_S),  # time to the next entry
            st.integers(min_value=0, max_value=1 << 20),  # window
        ),
        max_size=40,
    )
)
def test_evictions_by_age_are_at_least_an_interval_apart(events: list[tuple[int, int]]) -> None:
    now, due = 10**15, 0
    last_by_age: int | None = None
    for gap, window in events:
        now += gap
        result = plan(now, due, window=window, log_oldest_ns=1)
        if result.due_ns != due:  # an eviction by age was due
            assert last_by_age is None or now - last_by_age >= EVICT_INTERVAL_NS
            last_by_age = now
            # under pressure what is needed to get back to 80%, else the whole window
            count = policy.log_pressure(window, 1, 1 << 20) or window
            assert result.log == (Eviction(now - RETENTION, count) if count else None)
        due = result.due_ns
