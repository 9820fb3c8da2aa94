"""The engine's policy for clocks, batching and eviction, sans IO.

One copy of the rules the single-writer engine (`core/engine.py`) follows and
the failover simulator (`sim/simulation.py`) models: plain functions and small
frozen dataclasses, no I/O, no clock of their own (every time is passed in, in
nanoseconds unless a name says otherwise), no state (the callers keep the last
timestamp, the last business day and when eviction is next due).

Clocks (a hybrid clock):
- `next_timestamp`: an entry's first timestamp is the wall clock, or one past
  the last timestamp handed out if the clock is behind it (a clock stepped
  back, a skewed clock, a burst within one nanosecond tick); an entry of n
  records takes n consecutive timestamps (`last_timestamp`). So timestamps
  strictly increase along a log whatever the clock does.
- `entry_business_day`: the business day of an entry is that of its first
  timestamp in the rules' time zone, never before the last one journaled.

Batching:
- A batch closes at `linger_deadline` (the linger window after its first
  request), or when the next request would not fit (`batch_fits`: at most
  `BATCH_SIZE_MAX` transfers; that request starts the next batch), or earlier
  when the engine is idle (the engine's event-loop passes: `core/engine.py`).
- Overload: a full queue is refused at once with `overload_retry_after_s`; the
  simulator, which does not queue requests, refuses while its oldest
  uncommitted batch is older than its backlog bound (`backlog_exceeded`).
- The simulator's clients close each attempt's batch on a grid of linger
  windows within a step (`linger_close_ns`; compiled in `cext/simgen.pyx`,
  `Clients.settle`, whose loop cannot call Python: tests hold the two equal).

Eviction (the transfer log and the failure ring):
- Pressure: when the log window plus an incoming entry would pass 90% of the
  log's capacity, evict down to 80%, but only what is past the retention
  (`log_pressure`): nothing within the retention is ever forgotten, a full log
  refuses instead (EngineFull).
- By age: at most once per interval (`evict_due`, `next_evict_due_ns`) all that
  is older than the retention (`retention_cutoff_ns`), and the failures older
  than the failure retention, each only if there is one (`expired`): a quiet
  ledger journals nothing. `EvictionPolicy.plan` puts these together.
"""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_S = 1_000_000_000
BATCH_SIZE_MAX = 8189  # transfers in one batch (one kernel call, one journal entry)
EVICT_INTERVAL_NS = NS_PER_S  # the engine's: how often what is past the retention is evicted
LOG_HIGH_PERMILLE = 900  # a log window past this share of its capacity evicts ...
LOG_LOW_PERMILLE = 800  # ... down to this share (of what is past the retention)
OVERLOAD_RETRY_AFTER_MIN_S = 0.05
OVERLOAD_RETRY_AFTER_LINGERS = 10  # a full queue drains in about (queue / throughput)


# --- clocks -----------------------------------------------------------------------


def next_timestamp(wall_ns: int, last_ns: int) -> int:
    """The first timestamp of a new entry: the wall clock, never at or below the last."""
    return wall_ns if wall_ns > last_ns else last_ns + 1


def last_timestamp(first_ns: int, records: int) -> int:
    """The last timestamp an entry of `records` records starting at `first_ns` takes
    (an entry with no record of its own, e.g. an eviction, takes one)."""
    return first_ns + max(records, 1) - 1


def entry_business_day(day_of_first: int, last_day: int) -> int:
    """An entry's business day: its first timestamp's (`day_of_first`, in the rules'
    time zone), never before the last business day journaled."""
    return day_of_first if day_of_first > last_day else last_day


def accrual_days(accrued_through: int, last_day: int, day: int) -> range:
    """The ended days to accrue before an entry of business day `day`: every day after the
    last one accrued (`accrued_through`; 0: never) up to the day before `day`. A ledger
    that never accrued starts at the business day of its newest entry (`last_day`; 0: a
    new ledger, nothing ended with a balance). Balances do not change between entries,
    so the days an idle engine slept through accrue on the balances they ended with."""
    if accrued_through:
        return range(accrued_through + 1, day)
    if last_day:
        return range(last_day, day)
    return range(0)


# --- batching ---------------------------------------------------------------------


def batch_fits(transfers: int, incoming: int, size_max: int = BATCH_SIZE_MAX) -> bool:
    """Whether a request of `incoming` transfers joins a batch that holds `transfers`."""
    return transfers + incoming <= size_max


def linger_deadline(first_at: float, linger: float) -> float:
    """When a batch whose first request came at `first_at` closes at the latest (any
    unit, the same for both)."""
    return first_at + linger


def linger_close_ns(arrival_ns: int, slot_start_ns: int, slot_end_ns: int, linger_ns: int) -> int:
    """The simulator's batch close for an attempt arriving at `arrival_ns` within a step
    [slot_start_ns, slot_end_ns): the end of its linger window on a grid of windows from
    the step's start, at the latest the step's end."""
    linger_ns = max(linger_ns, 1)
    close = slot_start_ns + ((arrival_ns - slot_start_ns) // linger_ns + 1) * linger_ns
    return min(close, slot_end_ns)


def overload_retry_after_s(linger_s: float) -> float:
    """The Retry-After of a request refused because the engine's queue is full."""
    return max(OVERLOAD_RETRY_AFTER_MIN_S, linger_s * OVERLOAD_RETRY_AFTER_LINGERS)


def backlog_exceeded(oldest_open_ns: int, now_ns: int, backlog_max_ns: int) -> bool:
    """Whether a primary whose oldest uncommitted batch opened at `oldest_open_ns` refuses
    new requests at `now_ns` (the simulator's backlog bound)."""
    return now_ns - oldest_open_ns > backlog_max_ns


# --- eviction ---------------------------------------------------------------------


def log_pressure(window: int, incoming: int, capacity: int) -> int:
    """How many log records to evict before `incoming` more join a window of `window`:
    down to 80% of the capacity once it would pass 90% (0: none)."""
    if window + incoming > capacity * LOG_HIGH_PERMILLE // 1000:
        return window + incoming - capacity * LOG_LOW_PERMILLE // 1000
    return 0


def under_pressure(window: int, incoming: int, capacity: int) -> bool:
    """Whether `log_pressure` would ask for an eviction."""
    return window + incoming > capacity * LOG_HIGH_PERMILLE // 1000


def retention_cutoff_ns(now_ns: int, retention_ns: int) -> int:
    """What is older than this is past the retention at `now_ns`."""
    return max(0, now_ns - retention_ns)


def expired(oldest_ns: int, cutoff_ns: int) -> bool:
    """Whether a log (or ring) whose oldest record has `oldest_ns` (0: empty) holds
    something past the cutoff."""
    return 0 < oldest_ns < cutoff_ns


def evict_due(now_ns: int, due_ns: int) -> bool:
    """Whether an eviction by age is due (at most one per interval)."""
    return now_ns >= due_ns


def next_evict_due_ns(now_ns: int, interval_ns: int = EVICT_INTERVAL_NS) -> int:
    return now_ns + interval_ns


@dataclass(frozen=True, slots=True)
class Eviction:
    """Forget up to `count` of the oldest records older than `before_ns` (an EVICT or
    EVICT_FAILED entry's payload)."""

    before_ns: int
    count: int


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    log: Eviction | None
    failed: Eviction | None
    due_ns: int  # when the next eviction by age is due


@dataclass(frozen=True, slots=True)
class EvictionPolicy:
    """Retention of the transfer log and the failure ring, and the interval of
    evictions by age."""

    retention_ns: int
    failed_retention_ns: int
    interval_ns: int = EVICT_INTERVAL_NS

    def plan(
        self,
        now_ns: int,
        due_ns: int,
        *,
        window: int,
        incoming: int,
        capacity: int,
        log_oldest_ns: int,
        failed_window: int,
        failed_oldest_ns: int,
    ) -> EvictionPlan:
        """What to evict before an entry of `incoming` transfers timestamped `now_ns`,
        with an eviction by age due from `due_ns`; `window`/`capacity` of the log,
        `log_oldest_ns` and `failed_oldest_ns` the oldest record's timestamp of the log
        and of the failure ring (0: empty)."""
        before_ns = retention_cutoff_ns(now_ns, self.retention_ns)
        needed = log_pressure(window, incoming, capacity)
        failed: Eviction | None = None
        due = evict_due(now_ns, due_ns)
        if due:
            due_ns = next_evict_due_ns(now_ns, self.interval_ns)
            if needed == 0 and expired(log_oldest_ns, before_ns):
                needed = window
            failed_before_ns = retention_cutoff_ns(now_ns, self.failed_retention_ns)
            if expired(failed_oldest_ns, failed_before_ns):
                failed = Eviction(failed_before_ns, failed_window)
        log = Eviction(before_ns, needed) if needed else None
        return EvictionPlan(log, failed, due_ns)
