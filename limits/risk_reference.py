"""The risk kernel's plain-Python twin: `ReferenceRiskKernel`, same API and same answers
as `cext.risk.RiskKernel` (the differential test, tests/property/
test_risk_differential.py, holds the two to each other verdict by verdict).

It reads like the kernel, step for step, with dicts where the kernel has open-addressing
tables: what a rule type does is `limits/risk_layout.py`'s docstring. Where that text
leaves room, both evaluators take these readings (the simplest deterministic ones):

- **Observing and firing.** A rule *observes* a posting when the posting's code is in
  its `codes` mask (a code >= 32 is in no mask) and its flags are neither POST_PENDING
  nor VOID_PENDING; it can *fire* only on an observed posting whose amount is >=
  `amount_min`. What a rule's counters are fed with (when the posting is counted):
  VELOCITY the postings it applies to (observed and >= `amount_min`: "more than 3
  transfers of 10,000 CNY or more in an hour"); HISTORY, NEW_PAYEE and NEW_DEVICE every
  posting they observe, whatever its amount (the median is the holder's usual amount,
  a payee is new until first paid, however little: `amount_min` only says which
  postings are checked against them).
- **Counter keys.** A counter key is `mix64` of a *group* (what the counter counts) and
  the entity: VELOCITY (type, scope, window_s, codes, amount_min) + the scope's key;
  HISTORY (type, scope, window_s, codes) + the scope's key; NEW_PAYEE / NEW_DEVICE
  (type, codes) + the customer key + the counterparty / device key (the window is not
  in it: a first sighting is a fact about the pair). A rule whose thresholds, outcome,
  name or position change keeps its counters across programs; two rules of one group
  share one counter, counted once per posting (by the first of them in the program).
- **Account keys.** The debit / credit account id as a u64: `lo ^ (hi * GOLDEN)` mod
  2**64, i.e. the id itself for ids below 2**64 (every account id the bank issues),
  so a LIST of `match = ACCOUNT` holds plain account ids. A zero key (no device, no
  customer, account 0...) is never counted and never fires, and is in no list.
- **Clock.** The kernel's clock is the largest `now_s` it was given since `clear()`:
  a `now_s` below it is taken as it (a stepped-back wall clock does not reopen a
  window, and data that expired stays expired). 0 <= now_s <= 2**32 - 1.
- **Velocity window.** Sub-buckets of `w = max(1, ceil(window_s / 8))` seconds; the
  sub-bucket of time t is `t // w`; the window at `now` is the sub-buckets
  `now // w - 7 .. now // w`. Fires when `count_max > 0 and count + 1 > count_max`
  (checked first; the value seen is `count + 1`), else when `sum_max > 0 and sum +
  amount > sum_max` (the value seen is `sum + amount`, clamped to int64). A
  sub-bucket's count saturates at 2**32 - 1 and its sum at the int64 bounds.
- **History.** The last 16 (second, amount) samples of the key; those with `now - t <
  window_s` are the history; fires when there are at least `max(samples_min, 1)` and
  `amount * 1000 > multiple_permille * median` (exact integers; the lower middle one
  of an even count). The value seen is the median.
- **New payee / device.** Fires when the pair was never counted (value seen -1) or
  was first counted `age = now - first < window_s` seconds ago (value seen: age).
- **Time of day.** `from_s <= local_s < to_s`, or, when from_s > to_s, `local_s >=
  from_s or local_s < to_s`; from_s == to_s is an empty window (never fires). The
  value seen is local_s. LIST: value seen 1; for `match = ACCOUNT` the debit or the
  credit account id. LARGE_VALUE: the value seen is the amount.
- **Verdict.** The most severe outcome of the rules that fired; `report` when any fired
  rule reports (whatever the outcome); a CHALLENGE that is the most severe outcome
  with the context's second factor: ALLOW with `challenge_met`. Counted (in rule
  order, before the next posting is evaluated) when the outcome is neither BLOCK nor
  an unmet CHALLENGE (a met challenge is counted).
- **Program check.** `set_program` refuses (ValueError) a length that is not a whole
  number of rows, more than 64 rows, an unknown type or outcome, report not 0/1, a
  VELOCITY without scope 1..5 or window, a HISTORY without scope ACCOUNT/CUSTOMER or
  window, a scope on another type, a LIST without match 1..5, a match on another
  type, a TIME_OF_DAY bound past 86,400. Other fields a type has no use for are
  ignored.

`entries()` counts the keys whose data is still visible at the clock (velocity and
history keys whose last window has not passed, every pair): the kernel's count
differs only on a 64-bit key collision. `memory_bytes()` is an estimate here.
"""

from __future__ import annotations

import collections
import os
import struct
import sys
from typing import TYPE_CHECKING

from .risk_layout import (
    CONTEXT,
    HISTORY_SAMPLES,
    RULE,
    RULES_MAX,
    VELOCITY_BUCKETS,
    VERDICT,
    Match,
    Outcome,
    RuleType,
    Scope,
)

if TYPE_CHECKING:
    from cext.risk import RiskKernel

TRANSFER_SIZE = 128
NOW_S_MAX = 2**32 - 1
U64 = 2**64 - 1
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
U32_MAX = 2**32 - 1
GOLDEN = 0x9E3779B97F4A7C15
FLAG_POST_PENDING = 1 << 2
FLAG_VOID_PENDING = 1 << 3
DAY_S = 86_400

# The fields of a 128-byte transfer record the stage reads (ledger/types.TRANSFER_STRUCT):
# debit id lo/hi, credit id lo/hi, amount, code, flags.
_TRANSFER_FIELDS = struct.Struct("<16xQQQQ16xq8x6xHH")
assert _TRANSFER_FIELDS.size == 90
_ACCOUNTS = struct.Struct("<16xQQQ")  # debit id lo/hi, credit id lo
_HOLDER = struct.Struct("<QQQQ")  # a holder row: account id lo/hi, customer, resident keys


def new_risk_kernel(
    capacity_log2: int = 16, backend: str | None = None
) -> RiskKernel | ReferenceRiskKernel:
    """A new risk kernel on the backend named by `backend` or `TALLY_KERNEL`: `kernel`
    (the default: `cext.risk.RiskKernel`) or `reference` (this module's twin); chosen
    explicitly, never as a fallback when the extension is missing."""
    name = backend or os.environ.get("TALLY_KERNEL", "kernel")
    if name == "reference":
        return ReferenceRiskKernel(capacity_log2)
    if name != "kernel":
        raise ValueError(f"unknown kernel backend {name!r} (kernel, reference)")
    from cext.risk import RiskKernel  # only the kernel backend needs the build

    return RiskKernel(capacity_log2)


def mix64(value: int) -> int:
    """The SplitMix64 finalizer of `value` mod 2**64: counter keys and list positions."""
    z = (value + GOLDEN) & U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
    return z ^ (z >> 31)


def account_key(lo: int, hi: int) -> int:
    """An account id as the u64 the rules key and list it by (the id itself below 2**64)."""
    return (lo ^ (hi * GOLDEN)) & U64


def group_of(rule_type: int, scope: int, window_s: int, codes: int, amount_min: int) -> int:
    """The u64 naming what a counter counts (the fields a type does not key by are 0)."""
    group = mix64(rule_type | scope << 8 | window_s << 16)
    group = mix64(group ^ codes)
    return mix64(group ^ (amount_min & U64))


def counter_key(group: int, entity: int) -> int:
    """The key of an entity's counter in a group (never 0: 0 marks an empty slot)."""
    return mix64(group ^ entity) or 1


def pair_key(group: int, customer: int, other: int) -> int:
    """The key of a (customer, payee or device) pair in a group (never 0)."""
    return mix64(mix64(group ^ customer) ^ other) or 1


def _clamp64(value: int) -> int:
    return I64_MIN if value < I64_MIN else I64_MAX if value > I64_MAX else value


class _Rule:
    """One decoded RULE row, with the counting plan `set_program` derives."""

    __slots__ = (
        "amount_min",
        "codes",
        "count_max",
        "counts",
        "from_s",
        "group",
        "list_id",
        "match",
        "multiple_permille",
        "outcome",
        "report",
        "rule_type",
        "samples_min",
        "scope",
        "sum_max",
        "to_s",
        "width_s",
        "window_s",
    )  # fmt: skip

    def __init__(self, row: bytes) -> None:
        (
            self.rule_type, self.scope, self.outcome, self.report, self.match, self.codes,
            self.window_s, self.amount_min, self.sum_max, self.count_max, self.samples_min,
            self.multiple_permille, self.list_id, self.from_s, self.to_s,
        ) = RULE.unpack(row)  # fmt: skip
        self.group = 0
        self.counts = False  # the first rule of its group: it feeds the counter
        self.width_s = 1  # a velocity sub-bucket's width


def check_rule(index: int, rule: _Rule) -> None:
    """ValueError naming the row when it is not a valid rule (the kernel's `rule_check`)."""

    def bad(what: str) -> ValueError:
        return ValueError(f"risk program row {index}: {what}")

    if not RuleType.VELOCITY <= rule.rule_type <= RuleType.LARGE_VALUE:
        raise bad(f"unknown rule type {rule.rule_type}")
    if rule.outcome > Outcome.BLOCK:
        raise bad(f"unknown outcome {rule.outcome}")
    if rule.report > 1:
        raise bad(f"report must be 0 or 1, not {rule.report}")
    if rule.rule_type == RuleType.VELOCITY:
        if not Scope.ACCOUNT <= rule.scope <= Scope.PAYEE:
            raise bad(f"velocity scope must be 1..5, not {rule.scope}")
    elif rule.rule_type == RuleType.HISTORY:
        if rule.scope not in (Scope.ACCOUNT, Scope.CUSTOMER):
            raise bad(f"history scope must be ACCOUNT or CUSTOMER, not {rule.scope}")
    elif rule.scope != Scope.NONE:
        raise bad(f"scope {rule.scope} on a rule of type {rule.rule_type}")
    if rule.rule_type in (RuleType.VELOCITY, RuleType.HISTORY) and rule.window_s == 0:
        raise bad("velocity and history rules need a window")
    if rule.rule_type == RuleType.LIST:
        if not Match.ACCOUNT <= rule.match <= Match.IP:
            raise bad(f"list match must be 1..5, not {rule.match}")
    elif rule.match != Match.NONE:
        raise bad(f"match {rule.match} on a rule of type {rule.rule_type}")
    if rule.rule_type == RuleType.TIME_OF_DAY and (rule.from_s > DAY_S or rule.to_s > DAY_S):
        raise bad("time of day bounds must be <= 86400")


def plan_rules(rules: list[_Rule]) -> None:
    """Each rule's counter group, whether it feeds it, its sub-bucket width."""
    seen: set[int] = set()
    for rule in rules:
        rule_type = rule.rule_type
        if rule_type == RuleType.VELOCITY:
            rule.group = group_of(rule_type, rule.scope, rule.window_s, rule.codes, rule.amount_min)
            rule.width_s = max(1, (rule.window_s + VELOCITY_BUCKETS - 1) // VELOCITY_BUCKETS)
        elif rule_type == RuleType.HISTORY:
            rule.group = group_of(rule_type, rule.scope, rule.window_s, rule.codes, 0)
        elif rule_type in (RuleType.NEW_PAYEE, RuleType.NEW_DEVICE):
            rule.group = group_of(rule_type, 0, 0, rule.codes, 0)
        else:
            continue
        rule.counts = rule.group not in seen
        seen.add(rule.group)


class _Velocity:
    """A velocity key's counter: 8 sub-buckets [index, count, sum] and when it expires."""

    __slots__ = ("buckets", "expire_s")

    def __init__(self) -> None:
        self.buckets = [[0, 0, 0] for _ in range(VELOCITY_BUCKETS)]
        self.expire_s = 0


class _History:
    """A history key's last HISTORY_SAMPLES (second, amount) samples."""

    __slots__ = ("expire_s", "samples")

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[int, int]] = collections.deque(maxlen=HISTORY_SAMPLES)
        self.expire_s = 0


class ReferenceRiskKernel:
    """The twin of `cext.risk.RiskKernel` (see the module docstring for the semantics)."""

    def __init__(self, capacity_log2: int = 16) -> None:
        if not 4 <= capacity_log2 <= 30:
            raise ValueError("capacity_log2 must be 4..30")
        self._capacity_log2 = capacity_log2
        self._rules: list[_Rule] = []
        self._lists: dict[int, frozenset[int]] = {}
        self._velocity: dict[int, _Velocity] = {}
        self._history: dict[int, _History] = {}
        self._pairs: dict[int, int] = {}  # key -> first counted second
        self._now_s = 0
        self._observed: list[list[tuple[int, int]]] = []
        self._holders: dict[tuple[int, int], tuple[int, int]] = {}

    # -- program and lists -------------------------------------------------------------

    def set_program(self, program: bytes) -> None:
        """Install a compiled rule program (rows of `risk_layout.RULE`); counters survive."""
        if len(program) % RULE.size:
            raise ValueError("risk program length must be a multiple of 64")
        if len(program) // RULE.size > RULES_MAX:
            raise ValueError("risk program holds more than 64 rules")
        rules = [
            _Rule(bytes(program[i : i + RULE.size])) for i in range(0, len(program), RULE.size)
        ]
        for index, rule in enumerate(rules):
            check_rule(index, rule)
        plan_rules(rules)
        self._rules = rules

    def set_list(self, list_id: int, keys: bytes) -> None:
        """Replace list `list_id` by the packed `<Q` keys (zero keys ignored)."""
        if not 0 <= list_id <= U32_MAX:
            raise ValueError("list_id must be a u32")
        if len(keys) % 8:
            raise ValueError("list keys must be packed <Q (a multiple of 8 bytes)")
        values = struct.unpack(f"<{len(keys) // 8}Q", keys)
        self._lists[list_id] = frozenset(value for value in values if value)

    # -- holders and context rows ------------------------------------------------------

    def set_holders(self, rows: bytes | bytearray | memoryview) -> None:
        """Add or replace holders: packed `<QQQQ` rows (debit account id low and high 64
        bits, customer key, resident-id key); account 0 is ignored."""
        if len(rows) % _HOLDER.size:
            raise ValueError("holder rows must be packed <QQQQ (a multiple of 32 bytes)")
        for lo, hi, customer, resident in _HOLDER.iter_unpack(rows):
            if lo or hi:
                self._holders[(lo, hi)] = (customer, resident)

    def context_rows(
        self,
        records: bytes | bytearray | memoryview,
        count: int,
        template: bytes | bytearray | memoryview,
        rows: bytearray | memoryview,
    ) -> list[int]:
        """Write the `count` CONTEXT rows of `records` into `rows`; the indexes whose
        debit account has no holder entry, ascending."""
        if count < 0:
            raise ValueError("count must be >= 0")
        if len(template) != CONTEXT.size:
            raise ValueError("the template must be one 48-byte CONTEXT row")
        if len(records) < count * TRANSFER_SIZE:
            raise ValueError("records shorter than count transfers")
        if len(rows) < count * CONTEXT.size:
            raise ValueError("rows shorter than count context rows")
        _, device, ip, counterparty, _, local_s, second_factor = CONTEXT.unpack(template)
        misses = []
        for index in range(count):
            debit_lo, debit_hi, credit_lo = _ACCOUNTS.unpack_from(records, index * TRANSFER_SIZE)
            holder = self._holders.get((debit_lo, debit_hi)) if debit_lo or debit_hi else None
            if holder is None:
                misses.append(index)
                holder = (0, 0)
            CONTEXT.pack_into(
                rows, index * CONTEXT.size, holder[0], device, ip, counterparty or credit_lo,
                holder[1], local_s, second_factor,
            )  # fmt: skip
        return misses

    def clear_holders(self) -> None:
        """Forget every holder entry."""
        self._holders.clear()

    @property
    def holder_count(self) -> int:
        """Accounts in the holder table."""
        return len(self._holders)

    # -- screening ---------------------------------------------------------------------

    def screen(
        self,
        records: bytes | bytearray | memoryview,
        contexts: bytes | bytearray | memoryview,
        count: int,
        now_s: int,
        out: bytearray,
    ) -> int:
        """Evaluate and count `count` postings in order; VERDICT rows into `out`."""
        if count < 0:
            raise ValueError("count must be >= 0")
        if not 0 <= now_s <= NOW_S_MAX:
            raise ValueError("now_s must be 0..2**32-1")
        if len(records) < count * TRANSFER_SIZE:
            raise ValueError("records shorter than count transfers")
        if len(contexts) < count * CONTEXT.size:
            raise ValueError("contexts shorter than count context rows")
        if len(out) < count * VERDICT.size:
            raise ValueError("out shorter than count verdicts")
        now = max(now_s, self._now_s)
        self._now_s = now
        self._observed = []
        fired_postings = 0
        for index in range(count):
            debit_lo, debit_hi, credit_lo, credit_hi, amount, code, flags = (
                _TRANSFER_FIELDS.unpack_from(records, index * TRANSFER_SIZE)
            )
            context = CONTEXT.unpack_from(contexts, index * CONTEXT.size)
            posting = _Posting(
                account_key(debit_lo, debit_hi), account_key(credit_lo, credit_hi), amount,
                code, flags, *context,
            )  # fmt: skip
            outcome, report, met, mask, seen = self._evaluate(posting, now)
            VERDICT.pack_into(out, index * VERDICT.size, outcome, report, met, mask)
            self._observed.append(seen)
            if mask:
                fired_postings += 1
            if outcome != Outcome.BLOCK and outcome != Outcome.CHALLENGE:
                self._count(posting, now)
        return fired_postings

    def _evaluate(
        self, posting: _Posting, now: int
    ) -> tuple[int, int, int, int, list[tuple[int, int]]]:
        outcome = Outcome.ALLOW
        report = 0
        mask = 0
        seen: list[tuple[int, int]] = []
        for index, rule in enumerate(self._rules):
            if not observes(rule, posting) or posting.amount < rule.amount_min:
                continue
            fired, value = self._rule_fires(rule, posting, now)
            if not fired:
                continue
            mask |= 1 << index
            seen.append((index, value))
            outcome = max(outcome, rule.outcome)
            report |= rule.report
        met = 0
        if outcome == Outcome.CHALLENGE and posting.second_factor:
            outcome = Outcome.ALLOW
            met = 1
        return outcome, report, met, mask, seen

    def _rule_fires(self, rule: _Rule, posting: _Posting, now: int) -> tuple[bool, int]:
        rule_type = rule.rule_type
        if rule_type == RuleType.VELOCITY:
            entity = scope_key(rule.scope, posting)
            if not entity:
                return False, 0
            counter = self._velocity.get(counter_key(rule.group, entity))
            count = 0
            total = 0
            if counter is not None:
                current = now // rule.width_s
                for index, bucket_count, bucket_sum in counter.buckets:
                    if current - index < VELOCITY_BUCKETS:
                        count += bucket_count
                        total += bucket_sum
            if rule.count_max > 0 and count + 1 > rule.count_max:
                return True, count + 1
            if rule.sum_max > 0 and total + posting.amount > rule.sum_max:
                return True, _clamp64(total + posting.amount)
            return False, 0
        if rule_type == RuleType.HISTORY:
            entity = scope_key(rule.scope, posting)
            if not entity:
                return False, 0
            history = self._history.get(counter_key(rule.group, entity))
            if history is None:
                return False, 0
            amounts = sorted(a for t, a in history.samples if now - t < rule.window_s)
            if not amounts or len(amounts) < rule.samples_min:
                return False, 0
            median = amounts[(len(amounts) - 1) // 2]
            if posting.amount * 1000 > rule.multiple_permille * median:
                return True, median
            return False, 0
        if rule_type in (RuleType.NEW_PAYEE, RuleType.NEW_DEVICE):
            other = posting.counterparty if rule_type == RuleType.NEW_PAYEE else posting.device
            if not posting.customer or not other:
                return False, 0
            first = self._pairs.get(pair_key(rule.group, posting.customer, other))
            if first is None:
                return True, -1
            age = now - first
            if age < rule.window_s:
                return True, age
            return False, 0
        if rule_type == RuleType.TIME_OF_DAY:
            local = posting.local_s
            if rule.from_s < rule.to_s:
                inside = rule.from_s <= local < rule.to_s
            elif rule.from_s > rule.to_s:
                inside = local >= rule.from_s or local < rule.to_s
            else:
                inside = False
            return inside, local
        if rule_type == RuleType.LIST:
            members = self._lists.get(rule.list_id, frozenset())
            if rule.match == Match.ACCOUNT:
                hit = posting.debit in members or posting.credit in members
            else:
                hit = match_key(rule.match, posting) in members
            return hit, 1
        # LARGE_VALUE: the amount and the codes said it all.
        return True, posting.amount

    def _count(self, posting: _Posting, now: int) -> None:
        """Feed every counter the posting is counted in (first rule of each group)."""
        for rule in self._rules:
            if not rule.counts or not observes(rule, posting):
                continue
            rule_type = rule.rule_type
            if rule_type == RuleType.VELOCITY:
                if posting.amount < rule.amount_min:
                    continue
                entity = scope_key(rule.scope, posting)
                if not entity:
                    continue
                counter = self._velocity.setdefault(counter_key(rule.group, entity), _Velocity())
                current = now // rule.width_s
                bucket = counter.buckets[current % VELOCITY_BUCKETS]
                if bucket[0] != current:
                    bucket[:] = [current, 0, 0]
                bucket[1] = min(bucket[1] + 1, U32_MAX)
                bucket[2] = _clamp64(bucket[2] + posting.amount)
                counter.expire_s = (current + VELOCITY_BUCKETS) * rule.width_s
            elif rule_type == RuleType.HISTORY:
                entity = scope_key(rule.scope, posting)
                if not entity:
                    continue
                history = self._history.setdefault(counter_key(rule.group, entity), _History())
                history.samples.append((now, posting.amount))
                history.expire_s = now + rule.window_s
            else:
                other = posting.counterparty if rule_type == RuleType.NEW_PAYEE else posting.device
                if not posting.customer or not other:
                    continue
                self._pairs.setdefault(pair_key(rule.group, posting.customer, other), now)

    # -- reads -------------------------------------------------------------------------

    def fired(self) -> list[int]:
        """The indexes of the last screen's postings any rule fired for, ascending."""
        return [index for index, seen in enumerate(self._observed) if seen]

    def observed(self, index: int) -> list[tuple[int, int]]:
        """(rule index, value seen) of each rule that fired for posting `index`."""
        if not 0 <= index < len(self._observed):
            raise IndexError("posting index past the last screen's count")
        return list(self._observed[index])

    def entries(self) -> int:
        """Counter keys whose data is still visible at the clock."""
        now = self._now_s
        live = sum(1 for counter in self._velocity.values() if now < counter.expire_s)
        live += sum(1 for history in self._history.values() if now < history.expire_s)
        return live + len(self._pairs)

    def memory_bytes(self) -> int:
        """An estimate of the Python objects' size (not comparable to the kernel's)."""
        size = sys.getsizeof(self._velocity) + sys.getsizeof(self._history)
        size += sys.getsizeof(self._pairs)
        size += len(self._velocity) * 600 + len(self._history) * 1400 + len(self._pairs) * 100
        size += sys.getsizeof(self._holders) + len(self._holders) * 200
        return size + sum(sys.getsizeof(members) for members in self._lists.values())

    def clear(self) -> None:
        """Forget every counter and the clock (the program and the lists stay)."""
        self._velocity.clear()
        self._history.clear()
        self._pairs.clear()
        self._now_s = 0
        self._observed = []

    @property
    def now_s(self) -> int:
        """The clock: the largest `now_s` screened since the last `clear` (0)."""
        return self._now_s

    @property
    def rule_count(self) -> int:
        return len(self._rules)


class _Posting:
    """What the rules read of one posting: the record's fields and its context row."""

    __slots__ = (
        "amount",
        "code",
        "counterparty",
        "credit",
        "customer",
        "debit",
        "device",
        "flags",
        "ip",
        "local_s",
        "resident",
        "second_factor",
    )  # fmt: skip

    def __init__(
        self, debit: int, credit: int, amount: int, code: int, flags: int, customer: int,
        device: int, ip: int, counterparty: int, resident: int, local_s: int,
        second_factor: int,
    ) -> None:  # fmt: skip
        self.debit = debit
        self.credit = credit
        self.amount = amount
        self.code = code
        self.flags = flags
        self.customer = customer
        self.device = device
        self.ip = ip
        self.counterparty = counterparty
        self.resident = resident
        self.local_s = local_s
        self.second_factor = second_factor


def observes(rule: _Rule, posting: _Posting) -> bool:
    """The rule's codes hold the posting's code and it is not a capture or a void."""
    if posting.code >= 32 or not (rule.codes >> posting.code) & 1:
        return False
    return not posting.flags & (FLAG_POST_PENDING | FLAG_VOID_PENDING)


def scope_key(scope: int, posting: _Posting) -> int:
    """The entity a VELOCITY / HISTORY rule of `scope` counts for this posting."""
    if scope == Scope.ACCOUNT:
        return posting.debit
    if scope == Scope.CUSTOMER:
        return posting.customer
    if scope == Scope.DEVICE:
        return posting.device
    if scope == Scope.IP:
        return posting.ip
    return posting.credit  # Scope.PAYEE


def match_key(match: int, posting: _Posting) -> int:
    """The value a LIST rule of `match` (other than ACCOUNT) looks up."""
    if match == Match.DEVICE:
        return posting.device
    if match == Match.RESIDENT_ID:
        return posting.resident
    if match == Match.COUNTERPARTY:
        return posting.counterparty
    return posting.ip  # Match.IP
