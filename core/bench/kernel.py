"""`tally bench kernel`: post generated transfers through the ledger kernels in memory.

What it measures, precisely:

- `bytes_per_account`: growth of the process's resident set while the
  account table and its id index are filled, divided by the number of
  accounts (the transfer log and the other tables are mapped but untouched).
- `transfers_per_s`: transfers posted per second of kernel time (only the
  `create_transfers` calls are timed; generating batches is not) with
  uniformly chosen Class II accounts, the PBoC Class II limits and a
  per-transaction channel cap checked on every transfer, the idempotency
  index on, unique ids and `--retry-fraction` exact retries. The log and
  indexes are pre-faulted first, as an engine does at start.
- `transfers_per_s_daily_channel_cap`: the same on a channel that also caps
  what one account may send per day, which costs one more random memory
  access per transfer (the per-account, per-channel day counter).
- `transfers_per_s_zipf`: as `transfers_per_s`, accounts Zipf-skewed
  (exponent 1); hot accounts run into their PBoC daily caps.
- `reference_transfers_per_s`: the plain-Python reference ledger on the same
  kind of traffic, in the same run, on a smaller sample.

Each figure is the median over `--runs` passes of (transfers / kernel
seconds); all pass rates are in `passes_transfers_per_s`. The last line of
output is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections import Counter
from typing import Any

import orjson

from cext import gen
from core.progress import progress_bar
from core.reports import machine_description, save_report
from ledger.constants import LEDGER_CNY
from ledger.kernel import KernelLedger
from ledger.records import pack_account_input
from ledger.reference import ReferenceLedger
from ledger.types import (
    ACCOUNT_SIZE,
    TRANSFER_SIZE,
    AccountFlags,
    AccountKind,
    CreateAccountResult,
    CreateTransferResult,
    TransferCode,
    split_id,
)
from limits.calendar import day_of_date
from limits.rules import parse_rules

ACCOUNT_SEED = 11
TRANSFER_SEED = 23
FUNDING_SEED = 37
CHANNEL_WECHAT = 1  # per-transaction cap only
CHANNEL_DAILY_CAP = 2  # per-transaction cap and a per-account daily cap
FUNDING_MINOR = 800_000  # 8,000 CNY each
AMOUNT_MEDIAN_MINOR = 4_000  # DOMAIN.md: payments log-normal around 40 CNY
AMOUNT_SIGMA = 1.0
TIMESTAMP_START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
CLEARING_ID = (0xC1EA << 64) | 1

BENCH_RULES = """
timezone = "Asia/Shanghai"

[products.class_ii_standard]
id = 1
kind = "class_ii"

[products.internal_ledger]
id = 2
kind = "internal"
balance_floor_minor = -10_000_000_000_000_000

[channels.wechat]
id = 1
kind = "wechat"
transfer_cap_minor = 5_000_000

[channels.app]
id = 2
kind = "app"
transfer_cap_minor = 5_000_000
daily_cap_minor = 20_000_000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accounts", type=int, default=1_000_000, help="Class II accounts")
    parser.add_argument("--transfers", type=int, default=2_000_000, help="transfers per timed run")
    parser.add_argument("--batch", type=int, default=8189, help="transfers per kernel call")
    parser.add_argument(
        "--retry-fraction",
        type=float,
        default=0.01,
        help="share of transfers that are exact retries of an earlier one",
    )
    parser.add_argument("--reference-accounts", type=int, default=100_000)
    parser.add_argument("--reference-transfers", type=int, default=100_000)
    parser.add_argument(
        "--channel",
        type=int,
        default=CHANNEL_WECHAT,
        help="channel of the main passes: 1 (wechat) has a per-transaction cap, "
        "2 (app) also a per-account daily cap, 0 (internal) none",
    )
    parser.add_argument("--seed", type=int, default=TRANSFER_SEED)
    parser.add_argument(
        "--runs", type=int, default=3, help="timed passes of each kind; figures are the median pass"
    )
    parser.add_argument(
        "--save",
        metavar="DIR",
        default=None,
        help="also write the report as JSON into DIR (source of BENCHMARKS.md)",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_ledger(
    ledger: KernelLedger | ReferenceLedger,
    accounts: int,
    batch: int,
    progress_label: str,
    quiet: bool,
) -> None:
    """Create the clearing account and `accounts` Class II accounts, all checked ok."""
    rules = parse_rules(BENCH_RULES, "bench-rules.toml")
    ledger.set_rules(rules.product_table(), rules.channel_table())
    clearing = pack_account_input(id=CLEARING_ID, kind=AccountKind.INTERNAL_CLEARING, product=2)
    assert ledger.create_accounts(clearing) == bytearray([CreateAccountResult.OK])
    flags = (
        AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        | AccountFlags.NON_BOUND_INFLOW_ENABLED
        | AccountFlags.BOUND_EXTERNAL
    )
    buffer = bytearray(batch * ACCOUNT_SIZE)
    with progress_bar(accounts, progress_label) as progress:
        for first in range(0, accounts, batch):
            count = min(batch, accounts - first)
            view = memoryview(buffer)[: count * ACCOUNT_SIZE]
            gen.fill_accounts(view, ACCOUNT_SEED, first, AccountKind.CLASS_II, flags, 1, LEDGER_CNY)
            results = ledger.create_accounts(view)
            assert results.count(0) == count, Counter(results)
            if not quiet:
                progress.update(count)


class Clock:
    """Engine time for the benchmark: strictly increasing; one business day per pass."""

    def __init__(self) -> None:
        self.now_ns = TIMESTAMP_START_NS
        self.day = day_of_date(2026, 1, 1)

    def next_day(self) -> None:
        self.day += 1
        self.now_ns += 86_400 * 10**9

    def take(self, count: int) -> int:
        first = self.now_ns
        self.now_ns += count
        return first


def fund(
    ledger: KernelLedger | ReferenceLedger, accounts: int, batch: int, clock: Clock, quiet: bool
) -> float:
    """Top up every account from the bound card (exempt from the PBoC buckets)."""
    buffer = bytearray(batch * TRANSFER_SIZE)
    clearing_lo, clearing_hi = split_id(CLEARING_ID)
    elapsed_s = 0.0
    with progress_bar(accounts, "funding") as progress:
        for first in range(0, accounts, batch):
            count = min(batch, accounts - first)
            view = memoryview(buffer)[: count * TRANSFER_SIZE]
            gen.fill_fundings(
                view,
                FUNDING_SEED,
                first,
                ACCOUNT_SEED,
                clearing_lo,
                clearing_hi,
                FUNDING_MINOR,
                TransferCode.TOPUP_BOUND,
                LEDGER_CNY,
            )
            started = time.perf_counter()
            results, _, _ = ledger.create_transfers(view, clock.take(count), clock.day)
            elapsed_s += time.perf_counter() - started
            assert results.count(0) == count, Counter(results)
            if not quiet:
                progress.update(count)
    return accounts / elapsed_s


def post_run(
    ledger: KernelLedger | ReferenceLedger,
    *,
    accounts: int,
    transfers: int,
    batch: int,
    distribution: int,
    retry_fraction: float,
    seed: int,
    first_seq: int,
    clock: Clock,
    channel: int,
    label: str,
    quiet: bool,
) -> dict[str, Any]:
    """Post `transfers` generated transfers; time only the kernel calls."""
    buffer = bytearray(batch * TRANSFER_SIZE)
    results = bytearray(batch)
    timestamps = bytearray(batch * 8)
    balances = bytearray(batch * 16)
    outcomes: Counter[int] = Counter()
    elapsed_s = 0.0
    with progress_bar(transfers, label) as progress:
        for first in range(0, transfers, batch):
            count = min(batch, transfers - first)
            view = memoryview(buffer)[: count * TRANSFER_SIZE]
            gen.fill_transfers(
                view,
                seed,
                first_seq + first,
                ACCOUNT_SEED,
                accounts,
                distribution,
                retry_fraction,
                TransferCode.TRANSFER,
                channel,
                LEDGER_CNY,
                AMOUNT_MEDIAN_MINOR,
                AMOUNT_SIGMA,
            )
            if isinstance(ledger, KernelLedger):
                started = time.perf_counter()
                ledger.create_transfers_into(
                    view, clock.take(count), clock.day, results, timestamps, balances
                )
                batch_s = time.perf_counter() - started
                outcomes.update(results[:count])
            else:
                started = time.perf_counter()
                reference_results, _, _ = ledger.create_transfers(
                    view, clock.take(count), clock.day
                )
                batch_s = time.perf_counter() - started
                outcomes.update(reference_results)
            elapsed_s += batch_s
            if not quiet:
                progress.update(count)
    return {
        "transfers": transfers,
        "kernel_seconds": elapsed_s,
        "transfers_per_s": transfers / elapsed_s,
        "results": {
            CreateTransferResult(code).name.lower(): n for code, n in sorted(outcomes.items())
        },
    }


def run(args: argparse.Namespace) -> int:
    quiet = bool(args.json)
    assert 1 <= args.batch <= 8189, "--batch must be 1..8189"
    assert args.accounts >= 2 and args.transfers >= 1 and args.runs >= 1
    log_capacity = max(args.accounts + 1, args.transfers)
    gc.collect()
    rss_before = rss_bytes()
    ledger = KernelLedger(account_capacity=args.accounts + 1, transfer_capacity=log_capacity)
    build_started = time.perf_counter()
    build_ledger(ledger, args.accounts, args.batch, "accounts", quiet)
    build_s = time.perf_counter() - build_started
    bytes_per_account = (rss_bytes() - rss_before) / args.accounts
    ledger.prefault()
    clock = Clock()
    funding_per_s = fund(ledger, args.accounts, args.batch, clock, quiet)
    ledger.evict(clock.now_ns, 1 << 62)

    # Each pass posts fresh ids (its own seed); passes of the three kinds alternate
    # so that a noisy neighbour hits all of them alike.
    passes: dict[str, list[dict[str, Any]]] = {"uniform": [], "uniform_daily_cap": [], "zipf": []}
    kinds = (
        ("uniform", 0, args.channel),
        ("uniform_daily_cap", 0, CHANNEL_DAILY_CAP),
        ("zipf", 1, args.channel),
    )
    for run_index in range(args.runs):
        for kind_index, (name, distribution, channel) in enumerate(kinds):
            passes[name].append(
                post_run(
                    ledger,
                    accounts=args.accounts,
                    transfers=args.transfers,
                    batch=args.batch,
                    distribution=distribution,
                    retry_fraction=args.retry_fraction,
                    seed=args.seed + 1000 * run_index + kind_index,
                    first_seq=0,
                    clock=clock,
                    channel=channel,
                    label=f"{name} {run_index + 1}/{args.runs}",
                    quiet=quiet,
                )
            )
            ledger.evict(clock.now_ns, 1 << 62)
            clock.next_day()  # every pass starts with fresh daily quotas
    rss_peak = rss_bytes()
    del ledger
    gc.collect()

    reference = ReferenceLedger(
        account_capacity=args.reference_accounts + 1, transfer_capacity=args.reference_transfers
    )
    build_ledger(reference, args.reference_accounts, args.batch, "reference accounts", quiet)
    reference_clock = Clock()
    fund(reference, args.reference_accounts, args.batch, reference_clock, quiet)
    reference.evict(reference_clock.now_ns, 1 << 62)
    reference_run = post_run(
        reference,
        accounts=args.reference_accounts,
        transfers=args.reference_transfers,
        batch=args.batch,
        distribution=0,
        retry_fraction=args.retry_fraction,
        seed=args.seed,
        first_seq=0,
        clock=reference_clock,
        channel=args.channel,
        label="reference",
        quiet=quiet,
    )

    def median_rate(name: str) -> int:
        return round(statistics.median(float(p["transfers_per_s"]) for p in passes[name]))

    report: dict[str, Any] = {
        "benchmark": "kernel",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "command": "tally " + " ".join(sys.argv[1:]),
        "accounts": args.accounts,
        "transfers": args.transfers,
        "batch": args.batch,
        "runs": args.runs,
        "retry_fraction": args.retry_fraction,
        "channel": args.channel,
        "transfers_per_s": median_rate("uniform"),
        "transfers_per_s_daily_channel_cap": median_rate("uniform_daily_cap"),
        "transfers_per_s_zipf": median_rate("zipf"),
        "bytes_per_account": round(bytes_per_account, 1),
        "account_build_s": round(build_s, 2),
        "funding_transfers_per_s": round(funding_per_s),
        "reference_accounts": args.reference_accounts,
        "reference_transfers": args.reference_transfers,
        "reference_transfers_per_s": round(reference_run["transfers_per_s"]),
        "kernel_vs_reference": round(median_rate("uniform") / reference_run["transfers_per_s"], 1),
        "rss_peak_gib": round(rss_peak / 2**30, 2),
        "passes_transfers_per_s": {
            name: [round(p["transfers_per_s"]) for p in runs] for name, runs in passes.items()
        },
        "results": {name: runs[-1]["results"] for name, runs in passes.items()}
        | {"reference": reference_run["results"]},
    }
    if not quiet:
        for key, value in report.items():
            if not isinstance(value, dict):
                print(f"{key:34} {value}")
    if args.save:
        save_report(report, args.save)
    print(orjson.dumps(report).decode())
    return 0
