"""`tally bench risk`: the risk stage alone, at the batch route's rate and batch size.

The issue's target: the risk stage's own p99 under 1 ms at the batch route's rate.
`p99_us` is that figure: the stage offered `--rate` postings a second (default: the
batch route's target, 500,000/s) open loop on the wall clock, each screen call taking
every posting that has arrived (at most `--batch`, the internal channel's
`batch_size_max` in core/data/channels.toml, the size the batch route accepts); a
decision's latency runs from its posting's arrival to the end of the call it was decided
in, so the time it queued behind the stage counts. A stage slower than the rate falls
behind and its latencies grow without bound; `achieved_per_s` shows whether it kept up.

What it builds, untimed: the rule set (`--rules`, default the shipped
core/data/risk.toml, compiled by `limits/risk.py`), `--accounts` accounts with
their holders (a customer, a resident id, a device and an IP each, as the
service's context rows name them), and `--postings` transfer records between
them: customer-initiated transfers (code TRANSFER) from random accounts to
random payees, 90% of them up to 1,000 CNY, 8% up to 10,000 CNY and 2% up to
600,000 CNY (`AMOUNT_BANDS`), so the amount-gated rules (new payee, new device,
history, time of day, large value) have work and some fire; the list rules look
every posting up (none is on a list). The simulated clock advances at `--rate`
postings per second, so the velocity windows see that rate.

What it times, `--repeat` passes each, medians reported (each pass listed in
`passes_p99_us` and `passes_decisions_per_s`, by path):

- `p50_us`, `p99_us`, `max_us` (path `stream`): per decision, open loop at `rate`, as
  above, on the service's path (`core.services.risk.Risk.screen`: the context rows of
  the call, then one kernel call, then the Screening of the postings a rule fired for)
  from the internal channel (no device: the batch route has none); `achieved_per_s`:
  the postings over the wall time from the first arrival to the last decision;
  `call_size_median`: the postings a call took;
- `decisions_per_s` (path `service`): the service's path on full calls of `batch`
  postings back to back, the stage's capacity; `batch_call_p50_us`,
  `batch_call_p99_us`, `batch_call_max_us`: the duration of those calls, counted once
  per decision (a posting of a full batch waits for its whole call: this scales with
  the batch size, not with the rate);
- `kernel_decisions_per_s`, `kernel_p99_us`, `kernel_ns_per_posting`:
  `RiskKernel.screen` alone on prebuilt context rows, full calls, the same the service
  builds for these batches (the floor of the service's path);
- `single_decisions_per_s`, `single_p50_us`, `single_p99_us`: the single-posting
  path: `Risk.screen` of one posting from the app channel with a device, as
  `Payments.post` calls it for every HTTP single transfer;
- `kernel_entries`, `kernel_memory_mib`: the counter keys and table bytes after the
  last round;
- `fired_percent`, `outcomes`: how many postings a rule fired for, by outcome
  (the share the generated traffic trips, not a measure of the rules);
- with `--sweep 256,1024,...`: `sweep_batch_call_p99_us` and `sweep_decisions_per_s`,
  the service's path on full calls of other sizes (one pass each after the timed ones).

Each path keeps one kernel for the whole run, as a running server does: a first,
untimed round grows its tables (and warms imports and caches), then each timed round
screens the same postings 8 simulated days later, when the windows of the velocity,
new-payee and new-device rules of the round before have passed (their slots are reused,
the tables do not grow) and the 30-day history rules have the earlier rounds' amounts to
compare with (`fired_percent` and `outcomes` are the last round's). The open-loop passes
come after the timed rounds, as further rounds of the service's kernel (the kernel alone
and the service see the same rounds, so their outcomes agree). The service's clock and
its customer state are a `Lifecycle` that is not serving (no engine, no journal:
screening needs none), holding the generated holders.

The bench sets the server's collector thresholds and freezes what it built, as `tally
serve` does after loading, and again (after a collection) before each open-loop pass;
its own bookkeeping in the timed loops is `array('q')`s, which the collector does not
track, so the collections a pass sees are the ones the stage's own allocations cause.
(A tuple per call and the latency lists of earlier passes once cost collections of
1-6 ms inside a pass, which the stage would not see in a server.)

`--reference` times the pure-Python twin instead (a check, not a figure). The last line
of output is one JSON object; `--save DIR` keeps it for `tally bench page`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import random
import statistics
import sys
import time
import tomllib
import zoneinfo
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.data import DEFAULT_CHANNELS_PATH, DEFAULT_RISK_PATH
from core.progress import progress_bar
from core.reports import machine_description, save_report

BATCH_DEFAULT_CHANNEL_KIND = "internal"  # the batch route's channels (core/data/channels.toml)
BATCH_SIZE_FALLBACK = 8189  # channels.registry.BATCH_SIZE_MAX, when the file names none
# Postings per second offered (and of the simulated clock): the batch route's target.
RATE_DEFAULT = 500_000
POSTINGS_DEFAULT = 1_000_000
ACCOUNTS_DEFAULT = 100_000
REPEAT_DEFAULT = 5
SINGLES_DEFAULT = 20_000
# Simulated time between rounds: past every velocity, new-payee and new-device window of
# the shipped rules (at most 7 days), inside the history windows (30 days); whole days,
# so each round screens at the same local time of day.
ROUND_GAP_S = 8 * 86_400
SINGLE_RATE = 10_000  # postings per second of simulated time on the single path
ACCOUNT_BASE = 6_217_000_000_000_000_000  # 19-digit card-like ids, far above the bank's own
START_LOCAL = datetime.datetime(2026, 3, 20, 10, 0)  # a Friday morning, in the rules' zone
TIMEZONE_DEFAULT = "Asia/Shanghai"
NS_PER_S = 1_000_000_000
# The generated amounts (fen): most small, some in the amount-gated rules' reach.
AMOUNT_BANDS = (
    (0.90, 1, 100_000),  # up to 1,000 CNY
    (0.08, 100_000, 1_000_000),  # 1,000-10,000 CNY: new payee / new device territory
    (0.02, 1_000_000, 60_000_000),  # 10,000-600,000 CNY: history, time of day, large value
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rules", default=str(DEFAULT_RISK_PATH), help="risk rule file (default: the shipped one)"
    )
    parser.add_argument(
        "--postings", type=int, default=POSTINGS_DEFAULT, help="postings screened per pass"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="postings per full screen call, and the most an open-loop call takes"
        " (default: the internal channel's batch_size_max)",
    )
    parser.add_argument("--accounts", type=int, default=ACCOUNTS_DEFAULT, help="accounts")
    parser.add_argument(
        "--singles", type=int, default=SINGLES_DEFAULT, help="single postings timed per pass"
    )
    parser.add_argument(
        "--rate",
        type=int,
        default=RATE_DEFAULT,
        help="postings per second offered open loop on the wall clock (p99_us: the latency"
        " at that rate) and of the simulated clock (default: the batch route's target)",
    )
    parser.add_argument(
        "--repeat", type=int, default=REPEAT_DEFAULT, help="timed passes of each path"
    )
    parser.add_argument("--seed", type=int, default=15, help="seed of the generated traffic")
    parser.add_argument(
        "--sweep",
        type=_sizes,
        default=(),
        help="comma-separated batch sizes: the service's path on full calls of each too"
        " (one pass each)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="the pure-Python twin (limits/risk_reference.py) instead of the compiled kernel",
    )
    parser.add_argument("--save", metavar="DIR", default=None)
    parser.add_argument("--json", action="store_true")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(word) for word in text.split(",") if word.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return sizes


def batch_size_max(path: str = str(DEFAULT_CHANNELS_PATH)) -> int:
    """The batch route's batch size: `batch_size_max` of the internal channel in the
    channel registry (the shipped one by default)."""
    with open(path, "rb") as file:
        channels = tomllib.load(file).get("channels", {})
    for entry in channels.values():
        if entry.get("kind") == BATCH_DEFAULT_CHANNEL_KIND:
            return int(entry.get("batch_size_max", BATCH_SIZE_FALLBACK))
    return BATCH_SIZE_FALLBACK


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), as `machine` names it too."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


# --- the generated bank and traffic ----------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """One account's holder as the risk stage sees it."""

    account_id: int
    customer_id: str
    id_number: str
    device: str
    ip: str


@dataclass(frozen=True)
class Traffic:
    """The generated postings: `records` (count x 128 bytes) and, for the kernel-alone
    pass, their context rows (count x 48 bytes, as the service would build them)."""

    records: bytes
    contexts: bytes
    count: int


def holders(accounts: int, seed: int) -> list[Holder]:
    """`accounts` holders, one account each, with a valid resident id, a phone and an IP."""
    from core.services.identity import resident_id_check_character

    generator = random.Random(seed)
    made = []
    for index in range(accounts):
        born = datetime.date(1960, 1, 1) + datetime.timedelta(days=generator.randrange(15_000))
        first = f"110105{born:%Y%m%d}{index % 1000:03d}"
        made.append(
            Holder(
                account_id=ACCOUNT_BASE + index,
                customer_id=f"C{index:012d}",
                id_number=first + resident_id_check_character(first),
                device=f"phone-{index:08x}",
                ip=f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}",
            )
        )
    return made


def amount_of(generator: random.Random) -> int:
    draw = generator.random()
    for share, low, high in AMOUNT_BANDS:
        if draw < share:
            return generator.randrange(low, high)
        draw -= share
    return 1


def traffic(
    people: list[Holder], count: int, seed: int, channel: int, local_s: int, devices: bool
) -> Traffic:
    """`count` customer transfers (code TRANSFER) between random holders, random ids, with
    the context rows the service builds for them (customer, resident, the payee as
    counterparty, the local time of the first posting; with `devices` the holder's own
    device and IP, else none, as on the batch route)."""
    from ledger.records import pack_transfer
    from ledger.types import TransferCode
    from limits.risk_layout import key_of, pack_context

    generator = random.Random(seed)
    keys = [
        (
            key_of("customer", holder.customer_id),
            key_of("device", holder.device),
            key_of("ip", holder.ip),
            key_of("resident_id", holder.id_number),
        )
        for holder in people
    ]
    records = bytearray()
    contexts = bytearray()
    for _ in range(count):
        debit = generator.randrange(len(people))
        credit = generator.randrange(len(people) - 1)
        credit += credit >= debit
        records += pack_transfer(
            id=generator.getrandbits(128) | 1,
            debit_account_id=people[debit].account_id,
            credit_account_id=people[credit].account_id,
            amount=amount_of(generator),
            code=TransferCode.TRANSFER,
            channel=channel,
        )
        customer, device, ip, resident = keys[debit]
        contexts += pack_context(
            customer=customer,
            device=device if devices else 0,
            ip=ip if devices else 0,
            counterparty=people[credit].account_id,
            resident=resident,
            local_s=local_s,
        )
    return Traffic(bytes(records), bytes(contexts), count)


# --- the timed passes -------------------------------------------------------------------


def int64s() -> array[int]:
    """An empty array of int64: appending to it allocates no object the garbage collector
    tracks (a list of tuples per call does, and its collections landed in timed calls)."""
    return array("q")


@dataclass
class Pass:
    """One timed pass: the duration of every screen call (ns) and its posting count."""

    call_ns: array[int] = field(default_factory=int64s)
    call_sizes: array[int] = field(default_factory=int64s)
    fired: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    entries: int = 0  # the kernel's counter keys at the end of the pass
    memory_bytes: int = 0  # and the bytes of its tables

    def decisions_per_s(self) -> float:
        return sum(self.call_sizes) / (sum(self.call_ns) / NS_PER_S)


def latency_percentiles(call_ns: Sequence[int], call_sizes: Sequence[int]) -> dict[str, float]:
    """p50, p99 and max per decision, in microseconds: each call's duration counted once
    per posting it screened (a posting's decision is ready when its call returns)."""
    total = sum(call_sizes)
    ordered = sorted(zip(call_ns, call_sizes, strict=True))
    figures: dict[str, float] = {}
    for name, share in (("p50_us", 0.50), ("p99_us", 0.99)):
        rank = share * total
        seen = 0
        for duration, size in ordered:
            seen += size
            if seen >= rank:
                figures[name] = duration / 1000
                break
    figures["max_us"] = ordered[-1][0] / 1000
    return figures


class BenchClock:
    """The services' clock: moved by the bench, never by itself."""

    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now


def service_bank(people: list[Holder], clock: BenchClock) -> tuple[Any, Any, Any]:
    """A Lifecycle (not serving: the risk stage needs no engine to screen) whose customer
    state holds `people`, with the Auth and Customers services the risk stage reads."""
    from core.data import DEFAULT_RULES_PATH
    from core.services.auth import Auth
    from core.services.customers import Customers
    from core.services.lifecycle import Lifecycle, Settings
    from core.services.policy import VerificationPolicy
    from core.services.state import AccountMeta, Customer
    from core.services.verification import Verification
    from limits.rules import load_rules

    lifecycle = Lifecycle(
        Settings(data_dir="/nonexistent-tally-bench-risk"),
        load_rules(DEFAULT_RULES_PATH),
        now_ns=clock.now_ns,
    )
    state = lifecycle.customer_state()
    for holder in people:
        state.customers[holder.customer_id] = Customer(
            holder.customer_id, "测试", holder.id_number, "13900000000", {}, 0,
            [holder.account_id],
        )  # fmt: skip
        state.customer_by_id_number[holder.id_number] = holder.customer_id
        state.accounts[holder.account_id] = AccountMeta(
            holder.account_id, holder.customer_id, 1, None, 0
        )
    auth = Auth(lifecycle)
    verification = Verification(lifecycle, auth, None, VerificationPolicy())  # no providers
    return lifecycle, auth, Customers(lifecycle, auth, verification)


def new_kernel(rules: Any, reference: bool) -> Any:
    """A fresh kernel with the program and lists of `rules`."""
    if reference:
        from limits.risk_reference import ReferenceRiskKernel

        kernel: Any = ReferenceRiskKernel()
    else:
        from cext.risk import RiskKernel

        kernel = RiskKernel()
    kernel.set_program(rules.program())
    for list_id, keys in rules.list_values():
        kernel.set_list(list_id, keys)
    return kernel


def kernel_pass(
    kernel: Any, work: Traffic, batch: int, start_s: float, rate: int,
    tick: Callable[[int], None],
) -> Pass:  # fmt: skip
    """`RiskKernel.screen` alone over prebuilt context rows, `batch` postings a call."""
    from limits.risk_layout import CONTEXT, VERDICT, Outcome

    out = bytearray(batch * VERDICT.size)
    timed = Pass()
    outcomes = [0] * len(Outcome)
    records, contexts = memoryview(work.records), memoryview(work.contexts)
    for first in range(0, work.count, batch):
        size = min(batch, work.count - first)
        now_s = int(start_s + first / rate)
        record_view = records[first * 128 : (first + size) * 128]
        context_view = contexts[first * CONTEXT.size : (first + size) * CONTEXT.size]
        started = time.perf_counter_ns()
        fired = kernel.screen(record_view, context_view, size, now_s, out)
        timed.call_ns.append(time.perf_counter_ns() - started)
        timed.call_sizes.append(size)
        if fired:
            timed.fired += fired
            for index in range(size):
                outcomes[out[index * VERDICT.size]] += 1
        tick(size)
    timed.entries, timed.memory_bytes = kernel.entries(), kernel.memory_bytes()
    timed.outcomes = {
        outcome.name.lower(): outcomes[outcome] for outcome in Outcome if outcomes[outcome]
    }
    timed.outcomes.pop("allow", None)  # allow: nothing fired, or only report/allow rules
    return timed


def service_pass(
    risk: Any, clock: BenchClock, work: Traffic, batch: int, start_ns: int, rate: int,
    caller: Any, context: Any, tick: Callable[[int], None],
) -> Pass:  # fmt: skip
    """`Risk.screen` (context rows, kernel, the Screening of what fired), `batch` postings
    a call from `caller`, the clock moved at `rate` postings a second."""
    timed = Pass()
    records = work.records
    for first in range(0, work.count, batch):
        size = min(batch, work.count - first)
        clock.now = start_ns + first * NS_PER_S // rate
        chunk = records[first * 128 : (first + size) * 128]
        started = time.perf_counter_ns()
        screening = risk.screen(caller, chunk, size, context)
        timed.call_ns.append(time.perf_counter_ns() - started)
        timed.call_sizes.append(size)
        if screening is not None:
            for fired in screening.fired:
                if fired.rules:
                    timed.fired += 1
                    name = fired.outcome.name.lower() + ("_met" if fired.challenge_met else "")
                    if name != "allow":
                        timed.outcomes[name] = timed.outcomes.get(name, 0) + 1
        tick(size)
    return timed


def stream_pass(
    risk: Any, clock: BenchClock, work: Traffic, cap: int, start_ns: int, rate: int,
    caller: Any, context: Any,
) -> tuple[Pass, array[int]]:  # fmt: skip
    """The stage offered `rate` postings a second, open loop, on the wall clock: posting
    i arrives at `i / rate` s after the start; each screen call takes every posting that
    has arrived and is not screened yet (at most `cap`). Returns the pass (its calls) and
    the end of each call in ns after the start, from which `stream_figures` computes
    every decision's latency once the pass is over (nothing per decision is kept while
    it runs, and nothing the garbage collector tracks is made per call)."""
    timed = Pass()
    call_ends_ns = int64s()
    records = work.records
    count = work.count
    started = time.perf_counter_ns()
    first = 0
    while first < count:
        now = time.perf_counter_ns()
        arrived = min(count, (now - started) * rate // NS_PER_S + 1)
        if arrived <= first:
            continue  # the next posting has not arrived: wait for it (spinning)
        size = min(arrived - first, cap)
        clock.now = start_ns + first * NS_PER_S // rate
        begun = time.perf_counter_ns()
        risk.screen(caller, records[first * 128 : (first + size) * 128], size, context)
        end = time.perf_counter_ns()
        timed.call_ns.append(end - begun)
        timed.call_sizes.append(size)
        call_ends_ns.append(end - started)
        first += size
    return timed, call_ends_ns


def stream_figures(timed: Pass, call_ends_ns: Sequence[int], rate: int) -> dict[str, float]:
    """An open-loop pass's figures: p50, p99 and max per decision (us), a decision's
    latency being from its posting's arrival (posting i at `i / rate` s) to the end of
    its call, so queueing behind the stage counts; what the pass achieved (its postings
    over the wall time to the last decision); its median call size. The per-decision
    latencies live only in here: a pass keeps its figures, not a million latencies."""
    firsts = itertools.accumulate(timed.call_sizes, initial=0)
    latencies = array(
        "q",
        (
            end - index * NS_PER_S // rate
            for first, size, end in zip(firsts, timed.call_sizes, call_ends_ns, strict=False)
            for index in range(first, first + size)
        ),
    )
    ordered = sorted(latencies)
    count = len(ordered)
    assert count == sum(timed.call_sizes) and count > 0, count
    return {
        "p50_us": ordered[count // 2] / 1000,
        "p99_us": ordered[min(count - 1, (99 * count) // 100)] / 1000,
        "max_us": ordered[-1] / 1000,
        "achieved_per_s": count / (call_ends_ns[-1] / NS_PER_S),
        "call_size_median": statistics.median(timed.call_sizes),
    }


def run(args: argparse.Namespace) -> int:
    from core.services.commands import NO_CONTEXT, Caller
    from core.services.lifecycle import GC_THRESHOLDS
    from core.services.risk import Risk
    from limits.risk import RiskRulesError, load_risk_rules

    try:
        rules = load_risk_rules(args.rules)
    except RiskRulesError as error:
        print(f"tally bench risk: {error}", file=sys.stderr)
        return 2
    batch = args.batch or batch_size_max()
    if min(batch, args.postings, args.accounts - 1, args.repeat, args.rate, args.singles) < 1:
        print("tally bench risk: every count must be at least 1 (accounts 2)", file=sys.stderr)
        return 2
    quiet = args.json
    zone = zoneinfo.ZoneInfo(TIMEZONE_DEFAULT)
    start = START_LOCAL.replace(tzinfo=zone)
    start_ns = int(start.timestamp()) * NS_PER_S
    local_s = START_LOCAL.hour * 3600 + START_LOCAL.minute * 60
    built = time.perf_counter()
    people = holders(args.accounts, args.seed)
    internal = Caller("bank", "internal", 6)
    app = Caller("app", "app", 2)
    batch_work = traffic(people, args.postings, args.seed + 1, internal.ledger_id, local_s, False)
    single_work = traffic(people, args.singles, args.seed + 2, app.ledger_id, local_s, True)
    clock = BenchClock(start_ns)
    bank = service_bank(people, clock)
    build_s = time.perf_counter() - built
    single_holder = {holder.account_id: holder for holder in people}

    # The server's collector settings (`tally serve`): what exists now is never garbage.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    passes: dict[str, list[Pass]] = {"service": [], "kernel": [], "single": []}
    streams: list[dict[str, float]] = []
    total = (args.repeat + 1) * (2 * args.postings + args.singles) + args.repeat * args.postings
    with progress_bar(0 if quiet else total, "screened") as progress:

        def tick(count: int) -> None:
            progress.update(count)

        # One kernel per path for the whole run, as in a running server: round 0 grows its
        # tables (and warms imports and caches) and is dropped; each round is the same
        # traffic ROUND_GAP_S of simulated time later, when the velocity windows of the
        # round before have passed (their slots reused) and the 30-day histories hold it.
        # The service's kernel then serves the open-loop passes (the rounds after), then
        # the sweep; the kernel alone and the service see the same rounds until then.
        kernel_alone = new_kernel(rules, args.reference)
        batch_risk = Risk(*bank, rules=rules, kernel=new_kernel(rules, args.reference))
        single_risk = Risk(*bank, rules=rules, kernel=new_kernel(rules, args.reference))
        span_ns = ROUND_GAP_S * NS_PER_S
        contexts = single_contexts(single_work, single_holder)
        for round_ in range(args.repeat + 1):
            round_start_ns = start_ns + round_ * span_ns
            kernel = kernel_pass(
                kernel_alone, batch_work, batch, round_start_ns / NS_PER_S, args.rate, tick
            )
            service = service_pass(
                batch_risk, clock, batch_work, batch, round_start_ns, args.rate, internal,
                NO_CONTEXT, tick,
            )  # fmt: skip
            single = single_path_pass(
                single_risk, clock, single_work, contexts, round_start_ns, app, tick
            )
            if round_:
                passes["kernel"].append(kernel)
                passes["service"].append(service)
                passes["single"].append(single)
        # The headline: the stage at the batch route's rate, open loop. What was built is
        # not garbage: collect and freeze it before each pass (as the server freezes after
        # loading), so the collections inside a pass are the ones the stage's own
        # allocations cause; each pass keeps its figures only.
        for round_ in range(args.repeat + 1, 2 * args.repeat + 1):
            gc.collect()
            gc.freeze()
            timed, call_ends_ns = stream_pass(
                batch_risk, clock, batch_work, batch, start_ns + round_ * span_ns, args.rate,
                internal, NO_CONTEXT,
            )  # fmt: skip
            streams.append(stream_figures(timed, call_ends_ns, args.rate))
            tick(args.postings)
    sweep: dict[int, Pass] = {}
    for index, size in enumerate(args.sweep, start=2 * args.repeat + 1):
        sweep[size] = service_pass(
            batch_risk, clock, batch_work, size, start_ns + index * span_ns, args.rate,
            internal, NO_CONTEXT, lambda _count: None,
        )  # fmt: skip
    report = report_of(args, rules, batch, passes, streams, build_s)
    if sweep:
        report["sweep_batch_call_p99_us"] = {
            str(size): round(latency_percentiles(timed.call_ns, timed.call_sizes)["p99_us"], 1)
            for size, timed in sweep.items()
        }
        report["sweep_decisions_per_s"] = {
            str(size): round(timed.decisions_per_s()) for size, timed in sweep.items()
        }
    if not args.json:
        for key, value in report.items():
            if not isinstance(value, dict | list):
                print(f"{key:32} {value}")
    if args.save:
        save_report(report, args.save)
    print(orjson.dumps(report).decode())
    return 0


def single_contexts(work: Traffic, people: dict[int, Holder]) -> list[Any]:
    """The RiskContext of each posting of `work`: its holder's device and IP."""
    from core.services.commands import RiskContext
    from ledger.records import transfer_view

    contexts = []
    for index in range(work.count):
        holder = people[int(transfer_view(work.records, index * 128).debit_account_id)]
        contexts.append(RiskContext(holder.device, holder.ip, "CN-11"))
    return contexts


def single_path_pass(
    risk: Any, clock: BenchClock, work: Traffic, contexts: list[Any], start_ns: int,
    caller: Any, tick: Callable[[int], None],
) -> Pass:  # fmt: skip
    """`Risk.screen` of one posting at a time from the app channel, each with its
    holder's device and IP (as `Payments.post` screens every HTTP single transfer)."""
    timed = Pass()
    records = work.records
    for index in range(work.count):
        clock.now = start_ns + index * NS_PER_S // SINGLE_RATE
        record = records[index * 128 : index * 128 + 128]
        context = contexts[index]
        started = time.perf_counter_ns()
        screening = risk.screen(caller, record, 1, context)
        timed.call_ns.append(time.perf_counter_ns() - started)
        timed.call_sizes.append(1)
        if screening is not None and screening.fired and screening.fired[0].rules:
            timed.fired += 1
    tick(work.count)
    return timed


def report_of(
    args: argparse.Namespace, rules: Any, batch: int, passes: dict[str, list[Pass]],
    streams: list[dict[str, float]], build_s: float,
) -> dict[str, Any]:  # fmt: skip
    """The JSON report: medians over the passes of each path, each pass listed (the
    open-loop passes as path `stream`, their decisions a second the achieved rate)."""

    def median_of(path: str, figure: Callable[[Pass], float]) -> float:
        return statistics.median(figure(timed) for timed in passes[path])

    def stream_median(name: str) -> float:
        return statistics.median(figures[name] for figures in streams)

    def percentile(path: str, name: str) -> float:
        return median_of(
            path, lambda timed: latency_percentiles(timed.call_ns, timed.call_sizes)[name]
        )

    service = passes["service"][-1]
    report: dict[str, Any] = {
        "benchmark": "risk",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_description(),
        "cpu": cpu_model(),
        "command": "tally bench risk "
        + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "risk"] else []),
        "kernel": "reference (pure Python)" if args.reference else "cext.risk.RiskKernel",
        "rules": len(rules.rules),
        "rules_version": rules.version,
        "rules_digest": rules.digest,
        "batch": batch,
        "postings": args.postings,
        "accounts": args.accounts,
        "rate": args.rate,
        "repeat": args.repeat,
        "p50_us": round(stream_median("p50_us"), 1),
        "p99_us": round(stream_median("p99_us"), 1),
        "max_us": round(stream_median("max_us"), 1),
        "achieved_per_s": round(stream_median("achieved_per_s")),
        "call_size_median": round(stream_median("call_size_median"), 1),
        "decisions_per_s": round(median_of("service", Pass.decisions_per_s)),
        "batch_call_p50_us": round(percentile("service", "p50_us"), 1),
        "batch_call_p99_us": round(percentile("service", "p99_us"), 1),
        "batch_call_max_us": round(percentile("service", "max_us"), 1),
        "kernel_decisions_per_s": round(median_of("kernel", Pass.decisions_per_s)),
        "kernel_p99_us": round(percentile("kernel", "p99_us"), 1),
        "kernel_ns_per_posting": round(1e9 / median_of("kernel", Pass.decisions_per_s)),
        "single_decisions_per_s": round(median_of("single", Pass.decisions_per_s)),
        "single_p50_us": round(percentile("single", "p50_us"), 2),
        "single_p99_us": round(percentile("single", "p99_us"), 2),
        "kernel_entries": passes["kernel"][-1].entries,
        "kernel_memory_mib": round(passes["kernel"][-1].memory_bytes / 2**20, 1),
        "fired_percent": round(100 * service.fired / args.postings, 3),
        "outcomes": dict(sorted(service.outcomes.items())),
        "kernel_outcomes": dict(sorted(passes["kernel"][-1].outcomes.items())),
        "single_fired": passes["single"][-1].fired,
        "build_s": round(build_s, 1),
        "passes_decisions_per_s": {
            "stream": [round(figures["achieved_per_s"]) for figures in streams],
            **{
                path: [round(timed.decisions_per_s()) for timed in timed_passes]
                for path, timed_passes in passes.items()
            },
        },
        "passes_p99_us": {
            "stream": [round(figures["p99_us"], 1) for figures in streams],
            **{
                path: [
                    round(latency_percentiles(timed.call_ns, timed.call_sizes)["p99_us"], 1)
                    for timed in timed_passes
                ]
                for path, timed_passes in passes.items()
            },
        },
    }
    return report
