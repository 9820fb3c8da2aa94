"""`tally bench dayend`: the day-end batch at N accounts, on the embedded journal (fdatasync on).

What it builds, untimed: a ledger of `--accounts` Class II accounts, each funded
with 8,000 CNY from its bound card on the day before `--date` (so one day of
0.05% demand interest on a 360-day year rounds to 1 fen: every account gets one
settlement transfer), built straight through the kernels as `tally bench kernel`
does; those funding postings are past the log's retention by the day-end and
are evicted before it starts. The transfer log is sized so the whole settlement
fits in the batch channel's share of it (900 permille here, `BENCH_RULES`).

What it times: the production day-end, `DayEnd.run(--date)` on a `Lifecycle`
whose store is a fresh journal in `--data` (real fdatasync on every group) and
whose clock stands just after midnight ending `--date` (a settlement day by
default, 2026-03-20):

- `accrual_s`: the accrual step: one ACCRUE_INTEREST entry, the kernel over every
  account, made durable;
- `settlement_s`: the settlement step: the check that the log has room (a count
  of the period's transfers), then N interest transfers in SETTLE_INTEREST
  entries of 8189, each formed from the state in the apply stage, posted by the
  kernel and made durable (the answer of the last one is the end);
- `peak_rss_gib`: the process's peak resident set (getrusage), the ledger
  included.

Afterwards it checks what was paid: N transfers posted, the interest-expense
account down by exactly their sum. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import resource
import shutil
import sys
import tempfile
import time
import zoneinfo
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson

from cext import gen
from core.bench.kernel import ACCOUNT_SEED, FUNDING_MINOR, FUNDING_SEED
from core.journal import Journal
from core.journal_store import JournalStore
from core.progress import progress_bar
from core.reports import machine_description, save_report
from core.services.dayend import DayEnd, Step
from core.services.lifecycle import Lifecycle, Settings
from core.store import OpenedStore, StoreRecovery
from ledger.constants import CLEARING_ID, INTEREST_EXPENSE_ID, INTERNAL_ACCOUNTS, LEDGER_CNY
from ledger.kernel import KernelLedger, power_of_two_at_least
from ledger.records import account_view, pack_account_input
from ledger.types import ACCOUNT_SIZE, TRANSFER_SIZE, AccountFlags, AccountKind, TransferCode
from ledger.types import split_id as split
from limits.rules import RuleSet, parse_rules

BATCH = 8189
CLASS_II_PRODUCT = 2
INTERNAL_PRODUCT = 7
BANK_LOG_SHARE_PERMILLE = 900
DATE_DEFAULT = datetime.date(2026, 3, 20)  # a settlement day: accrual, then settlement

BENCH_RULES = f"""
timezone = "Asia/Shanghai"

[products.class_ii_standard]
id = {CLASS_II_PRODUCT}
kind = "class_ii"

[products.internal_ledger]
id = {INTERNAL_PRODUCT}
kind = "internal"

[internal_accounts.clearing]
balance_floor_minor = -10_000_000_000_000_000

[internal_accounts.interest_expense]
balance_floor_minor = -10_000_000_000_000_000

[channels.batch]
id = 6
kind = "internal"
log_share_permille = {BANK_LOG_SHARE_PERMILLE}
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accounts", type=int, default=1_000_000, help="Class II accounts")
    parser.add_argument(
        "--date",
        type=datetime.date.fromisoformat,
        default=DATE_DEFAULT,
        help=f"the day-end's date (default {DATE_DEFAULT}, a settlement day)",
    )
    parser.add_argument("--data", default=None, help="data directory (default: a temp dir)")
    parser.add_argument("--save", metavar="DIR", default=None)
    parser.add_argument("--json", action="store_true")


class BenchClock:
    """The services' and the engine's time: set once, then strictly increasing by itself
    (the engine forces that anyway)."""

    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now


def midnight_ns(date: datetime.date, rules: RuleSet, minutes: int = 0) -> int:
    """`minutes` after the start of `date` in the rules' time zone, in ns."""
    zone = zoneinfo.ZoneInfo(rules.timezone_name)
    start = datetime.datetime(date.year, date.month, date.day, tzinfo=zone)
    return (int(start.timestamp()) + 60 * minutes) * 1_000_000_000


def build_ledger(accounts: int, rules: RuleSet, funded_ns: int, quiet: bool) -> KernelLedger:
    """The bank's internal accounts and `accounts` funded Class II accounts, through the
    kernels directly (not journaled: this is the state the day-end starts from); the
    fundings are then evicted from the log, as the retention would have by then."""
    needed = -(-accounts * 1000 // BANK_LOG_SHARE_PERMILLE) + 1024
    ledger = KernelLedger(
        account_capacity=accounts + 64,  # room for the lifecycle's check of the internal ones
        transfer_capacity=power_of_two_at_least(needed),
    )
    ledger.prefault()
    ledger.set_rules(rules.product_table(), rules.channel_table(), rules.log_quota_table())
    internal = b"".join(
        pack_account_input(id=account_id, kind=kind, product=INTERNAL_PRODUCT)
        for account_id, kind in INTERNAL_ACCOUNTS
    )
    assert set(ledger.create_accounts(internal)) == {0}
    flags = (
        AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        | AccountFlags.NON_BOUND_INFLOW_ENABLED
        | AccountFlags.BOUND_EXTERNAL
    )
    clearing_lo, clearing_hi = split(CLEARING_ID)
    business_day = rules.business_day(funded_ns)
    timestamp = funded_ns
    account_buffer = bytearray(BATCH * ACCOUNT_SIZE)
    funding_buffer = bytearray(BATCH * TRANSFER_SIZE)
    with progress_bar(0 if quiet else accounts, "accounts") as progress:
        for first in range(0, accounts, BATCH):
            count = min(BATCH, accounts - first)
            view = memoryview(account_buffer)[: count * ACCOUNT_SIZE]
            gen.fill_accounts(
                view, ACCOUNT_SEED, first, AccountKind.CLASS_II, flags, CLASS_II_PRODUCT, LEDGER_CNY
            )
            assert ledger.create_accounts(view).count(0) == count
            fundings = memoryview(funding_buffer)[: count * TRANSFER_SIZE]
            gen.fill_fundings(
                fundings, FUNDING_SEED, first, ACCOUNT_SEED, clearing_lo, clearing_hi,
                FUNDING_MINOR, TransferCode.TOPUP_BOUND, LEDGER_CNY,
            )  # fmt: skip
            results, _timestamps, _balances = ledger.create_transfers(
                fundings, timestamp, business_day
            )
            assert results.count(0) == count
            timestamp += count
            if not quiet:
                progress.update(count)
    evicted = ledger.evict(timestamp + 1, accounts)
    assert evicted == accounts and ledger.log_count == ledger.log_tail, evicted
    return ledger


def prebuilt_store(ledger: KernelLedger, directory: str) -> Any:
    """An `open_store` for the Lifecycle: a fresh journal beside the prebuilt ledger."""

    @contextlib.asynccontextmanager
    async def open_store(url: str, **options: Any) -> AsyncIterator[OpenedStore]:
        journal = Journal.open(directory)
        store = JournalStore(journal)
        recovery = StoreRecovery(
            kind="journal", last_seq=0, records_replayed=0, transfers_replayed=0
        )
        try:
            yield OpenedStore(store, ledger, {}, recovery)
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()

    return open_store


async def timed_dayend(
    ledger: KernelLedger, rules: RuleSet, directory: str, date: datetime.date, quiet: bool
) -> dict[str, Any]:
    """Run the day-end of `date` on a Lifecycle over the prebuilt ledger; its figures."""
    clock = BenchClock(midnight_ns(date + datetime.timedelta(days=1), rules, minutes=5))
    settings = Settings(
        data_dir=directory,
        account_capacity=ledger.account_capacity,
        transfer_capacity=ledger.transfer_capacity,
        expire_interval_s=3600.0,
        # The day-end's accrual step accrues (and is timed) instead of the engine at the
        # day boundary: the same ACCRUE_INTEREST entry either way.
        accrue_at_day_boundary=False,
    )
    lifecycle = Lifecycle(
        settings,
        rules,
        now_ns=clock.now_ns,
        engine_clock=clock,
        open_store=prebuilt_store(ledger, os.path.join(directory, "journal")),
    )

    async def no_openings() -> None:
        return None

    figures: dict[str, Any] = {}
    async with anyio.create_task_group() as task_group:
        await task_group.start(lifecycle.serve, no_openings)
        with anyio.fail_after(600):
            while not lifecycle.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        started = time.perf_counter()
        result = await DayEnd(lifecycle).run(date, progress=not quiet)
        figures["dayend_s"] = time.perf_counter() - started
        figures["result"] = result
        figures["expense_minor"] = await lifecycle.read(
            lambda ledger: _balance(ledger, INTEREST_EXPENSE_ID)
        )
        task_group.cancel_scope.cancel()
    return figures


def _balance(ledger: Any, account_id: int) -> int:
    view = account_view(ledger.lookup_account(account_id))
    return int(view.credits_posted - view.debits_posted)


def run(args: argparse.Namespace) -> int:
    quiet = args.json
    owned = args.data is None
    directory = args.data or tempfile.mkdtemp(prefix="tally-bench-dayend-")
    rules = parse_rules(BENCH_RULES, "bench-dayend-rules.toml")
    started = time.perf_counter()
    try:
        funded_ns = midnight_ns(args.date - datetime.timedelta(days=1), rules, minutes=600)
        ledger = build_ledger(args.accounts, rules, funded_ns, quiet)
        build_s = time.perf_counter() - started
        figures = anyio.run(timed_dayend, ledger, rules, directory, args.date, quiet)
        journal_directory = os.path.join(directory, "journal")
        journal_bytes = sum(
            os.path.getsize(os.path.join(journal_directory, name))
            for name in os.listdir(journal_directory)
        )
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
    result = figures["result"]
    accrual = result.step(Step.ACCRUAL)
    settlement = result.step(Step.SETTLEMENT)
    assert settlement.due, f"{args.date} is not a settlement day: nothing to settle"
    assert accrual.count == args.accounts, (accrual.count, args.accounts)
    assert settlement.count == args.accounts and settlement.details["failed"] == 0, settlement
    assert figures["expense_minor"] == -settlement.count, figures["expense_minor"]
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    report: dict[str, Any] = {
        "benchmark": "dayend",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "command": "tally " + " ".join(sys.argv[1:]),
        "accounts": args.accounts,
        "dayend_date": args.date.isoformat(),
        "accrual_s": round(accrual.seconds, 3),
        "settlement_s": round(settlement.seconds, 3),
        "settlement_transfers_per_s": round(settlement.count / settlement.seconds),
        "peak_rss_gib": round(peak_rss_gib, 2),
        "accounts_accrued": accrual.count,
        "settlement_transfers": settlement.count,
        "settlement_chunks": settlement.details["chunks"],
        "settlement_sizing_s": round(settlement.details.get("sizing_ms", 0) / 1000, 3),
        "interest_paid_minor": -figures["expense_minor"],
        "maturities_s": round(result.step(Step.MATURITIES).seconds, 3),
        "counters_s": round(result.step(Step.COUNTERS).seconds, 3),
        "holds_s": round(result.step(Step.HOLDS).seconds, 3),
        "dayend_s": round(figures["dayend_s"], 3),
        "build_s": round(build_s, 1),
        "log_capacity": ledger.transfer_capacity,
        "journal_bytes": journal_bytes,
    }
    if not args.json:
        for key, value in report.items():
            print(f"{key:30} {value}")
    if args.save:
        save_report(report, args.save)
    print(orjson.dumps(report).decode())
    return 0
