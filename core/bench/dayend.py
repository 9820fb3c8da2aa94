"""`tally bench dayend`: the day-end batch at N accounts, on the embedded journal (fdatasync on).

What it builds, untimed: a ledger of `--accounts` Class II accounts, each funded
with 8,000 CNY from its bound card on the day before `--date` (so one day of
0.05% demand interest on a 360-day year rounds to 1 fen: every account gets one
settlement transfer), built straight through the kernels as `tally bench kernel`
does; those funding postings are past the log's retention by the day-end and
are evicted before it starts. Then `--loans` loans (default 1,000,000, at most
one per account): a loan account each (kind LOAN), repaid from its own Class II
account, 12 months at 4.35% equal instalment, its first instalment due on
`--date` (its row written by POST_WITH_ROWS through the kernel, its terms in a
`LoanTermsTable` the Lifecycle hands to the day-end). Two loans in three owe
about 2,560 CNY and are paid in full; every third owes about 10,250 CNY and its
account holds 8,000: a partial collection; one in 900 of those is already a
month overdue (penalty accrues on the day). The transfer log is sized so the
whole settlement and every collection fit in the batch channel's share of it
(900 permille here, `BENCH_RULES`).

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
- `loan_collection_s`: the loans step: the terms table packed (`loan_terms_packed_s`,
  the Lifecycle's `LoanTermsTable.packed()`, sorted by slot), then every loan
  through the collection kernel in POST_WITH_ROWS entries of 8189 loans (one
  LOAN_REPAYMENT transfer and the loan's row each), posted and made durable, a
  few in flight;
- `peak_rss_gib`: the process's peak resident set (getrusage), the ledger
  included.

Afterwards it checks what was paid: N transfers posted, the interest-expense
account down by exactly their sum; every loan collected (in full or in part),
the loan-funding account up by exactly what was taken, the short accounts
emptied, the overdue loans still overdue. The last line of output is one JSON
object.
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
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from cext import gen
from core.bench.kernel import ACCOUNT_SEED, FUNDING_MINOR, FUNDING_SEED
from core.entries import Entry, EntryKind, apply_entry, pack_post_with_rows_payload
from core.journal import Journal
from core.journal_store import JournalStore
from core.progress import progress_bar
from core.reports import machine_description, save_report
from core.services.dayend import DayEnd, Step, StepOutcome
from core.services.lifecycle import Lifecycle, Settings
from core.store import OpenedStore, StoreRecovery
from ledger.constants import (
    CLEARING_ID,
    INTEREST_EXPENSE_ID,
    INTERNAL_ACCOUNTS,
    LEDGER_CNY,
    LOAN_FUNDING_ID,
)
from ledger.deposits import DEPOSIT_WRITE, DEPOSIT_WRITE_ALWAYS
from ledger.interest import date_of_day, day_of_date
from ledger.kernel import KernelLedger, power_of_two_at_least
from ledger.loan_book import (
    ALLOCATION_DEFAULT,
    METHOD_EQUAL_INSTALMENT,
    NO_FIRST_INTEREST,
    LoanFlags,
    LoanTerms,
    LoanTermsTable,
    loan_row_view,
    pack_loan_row,
    pack_loan_terms,
)
from ledger.loans import Method, level_payment_minor, penalty_minor, schedule
from ledger.records import account_view, pack_account_input
from ledger.types import ACCOUNT_SIZE, TRANSFER_SIZE, AccountFlags, AccountKind, TransferCode
from ledger.types import split_id as split
from limits.calendar import add_months
from limits.rules import RuleSet, parse_rules

BATCH = 8189
CLASS_II_PRODUCT = 2
LOAN_PRODUCT = 6
INTERNAL_PRODUCT = 7
BANK_LOG_SHARE_PERMILLE = 900
DATE_DEFAULT = datetime.date(2026, 3, 20)  # a settlement day: accrual, then settlement
LOANS_DEFAULT = 1_000_000
LOAN_SEED = 53  # the loan accounts' ids (gen.account_id), apart from the Class II ones
LOAN_RATE_PPM = 43_500  # 4.35% a year
LOAN_TERM_MONTHS = 12
LOAN_UPLIFT_PERMILLE = 500  # the penalty rate: the contract rate + 50%
LOAN_GRACE_DAYS = 3
LOAN_FULL_MINOR = 3_000_000  # 30,000 CNY: about 2,560 CNY due, paid in full from 8,000
LOAN_SHORT_MINOR = 12_000_000  # 120,000 CNY: about 10,250 CNY due, 8,000 there: partial
LOAN_SHORT_EVERY = 3  # loan i is short of funds when i % 3 == 2
LOAN_OVERDUE_EVERY = 900  # ... and already a month overdue when i % 900 == 2

BENCH_RULES = f"""
timezone = "Asia/Shanghai"

[products.class_ii_standard]
id = {CLASS_II_PRODUCT}
kind = "class_ii"

[products.consumer_loan]
id = {LOAN_PRODUCT}
kind = "loan"

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
        "--loans",
        type=int,
        default=None,
        help=f"loans, each repaid from its own Class II account, every one with an instalment"
        f" due on --date (default {LOANS_DEFAULT:,}, at most --accounts)",
    )
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


def build_ledger(
    accounts: int, rules: RuleSet, funded_ns: int, quiet: bool, loans: int = 0
) -> KernelLedger:
    """The bank's internal accounts and `accounts` funded Class II accounts, through the
    kernels directly (not journaled: this is the state the day-end starts from); the
    fundings are then evicted from the log, as the retention would have by then. Room is
    made for `loans` loan accounts and their collections (`build_loans`)."""
    needed = -(-(accounts + loans) * 1000 // BANK_LOG_SHARE_PERMILLE) + 1024
    ledger = KernelLedger(
        account_capacity=accounts + loans + 64,  # room for the lifecycle's internal ones
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


@dataclass(frozen=True, slots=True)
class LoanBook:
    """The bench's loans: their terms (what the Lifecycle keeps) and how many of each."""

    table: LoanTermsTable
    loans: int
    short: int  # repayment account short of the instalment: a partial collection
    overdue: int  # of those, already a month overdue: penalty accrues on the day
    full_minor: int  # what each fully paid loan owes on the day (its first instalment)


def loan_templates(day: int) -> tuple[list[bytes], list[LoanTerms], int]:
    """The three kinds of bench loan on `day` (paid in full, short, overdue and short):
    their rows, their terms (slots and id to be filled in) and the first instalment of a
    full one, from `ledger.loans.schedule` (the kernel computes it from the terms)."""
    rows: list[bytes] = []
    terms: list[LoanTerms] = []
    full_minor = 0
    repayment_day = date_of_day(day).day
    assert repayment_day <= 28, "the bench's --date must be on day 1..28 of its month"
    for principal, overdue in (
        (LOAN_FULL_MINOR, False), (LOAN_SHORT_MINOR, False), (LOAN_SHORT_MINOR, True),
    ):  # fmt: skip
        start = add_months(day, -2 if overdue else -1)
        plan = schedule(
            principal, LOAN_RATE_PPM, LOAN_TERM_MONTHS, Method.EQUAL_INSTALMENT, start,
            repayment_day,
        )  # fmt: skip
        first = plan.instalments[0]
        if overdue:  # instalment 1 fell due a month ago, nothing paid; penalty through D-1
            since = first.due_day
            assert plan.instalments[1].due_day == day, (since, day)
            rows.append(pack_loan_row(
                scheduled_minor=principal - first.principal_minor,
                arrears_principal_minor=first.principal_minor,
                arrears_interest_minor=first.interest_minor,
                penalty_minor=penalty_minor(
                    first.principal_minor, first.interest_minor, LOAN_RATE_PPM,
                    LOAN_UPLIFT_PERMILLE, day - 1 - since,
                ),
                fallen_due=1, next_due_day=day, overdue_since=since, penalty_through=day - 1,
                flags=LoanFlags.OPEN | LoanFlags.OVERDUE, collected_day=day - 1,
            ))  # fmt: skip
        else:
            assert first.due_day == day, (first.due_day, day)
            rows.append(pack_loan_row(scheduled_minor=principal, next_due_day=day))
            if principal == LOAN_FULL_MINOR:
                full_minor = first.total_minor
        terms.append(LoanTerms(
            slot=0, repayment_slot=0,
            level_minor=level_payment_minor(principal, LOAN_RATE_PPM, LOAN_TERM_MONTHS),
            first_interest_minor=NO_FIRST_INTEREST,
            rate_ppm=LOAN_RATE_PPM, monthly_fee_minor=0, count=LOAN_TERM_MONTHS,
            uplift_permille=LOAN_UPLIFT_PERMILLE, method=METHOD_EQUAL_INSTALMENT,
            grace_days=LOAN_GRACE_DAYS, segment=0, allocation=ALLOCATION_DEFAULT, loan_id_lo=0,
        ))  # fmt: skip
    # Two in three are paid in full, the others are short (ample / too little in 8,000).
    assert full_minor == terms[0].level_minor < FUNDING_MINOR < terms[1].level_minor, terms
    return rows, terms, full_minor


def build_loans(
    ledger: KernelLedger, loans: int, rules: RuleSet, day: int, built_ns: int, quiet: bool
) -> LoanBook:
    """`loans` loan accounts, loan i repaid from Class II account i (built first, right
    after the internal accounts), with their rows written by POST_WITH_ROWS entries of
    row writes through the kernel and their terms in a `LoanTermsTable`."""
    internal = len(INTERNAL_ACCOUNTS)
    assert ledger.account_slot(gen.account_id(ACCOUNT_SEED, 0)) == internal
    assert ledger.account_slot(gen.account_id(ACCOUNT_SEED, loans - 1)) == internal + loans - 1
    rows, templates, full_minor = loan_templates(day)
    table = LoanTermsTable()
    business_day = rules.business_day(built_ns)
    account_buffer = bytearray(BATCH * ACCOUNT_SIZE)
    short = overdue = 0
    with progress_bar(0 if quiet else loans, "loans") as progress:
        for first in range(0, loans, BATCH):
            count = min(BATCH, loans - first)
            view = memoryview(account_buffer)[: count * ACCOUNT_SIZE]
            gen.fill_accounts(view, LOAN_SEED, first, AccountKind.LOAN, 0, LOAN_PRODUCT, LEDGER_CNY)
            slot = ledger.account_count
            assert ledger.create_accounts(view).count(0) == count
            words = view.cast("Q")
            writes = bytearray()
            for offset in range(count):
                index = first + offset
                kind = 0
                if index % LOAN_SHORT_EVERY == LOAN_SHORT_EVERY - 1:
                    kind = 2 if index % LOAN_OVERDUE_EVERY == LOAN_SHORT_EVERY - 1 else 1
                    short += 1
                    overdue += kind == 2
                lo, hi = words[8 * offset], words[8 * offset + 1]
                writes += DEPOSIT_WRITE.pack(lo, hi, DEPOSIT_WRITE_ALWAYS, rows[kind])
                terms = templates[kind]._replace(
                    slot=slot + offset, repayment_slot=internal + index, loan_id_lo=lo
                )
                table.put((hi << 64) | lo, pack_loan_terms(terms))
            payload = pack_post_with_rows_payload(b"", writes)
            outcome = apply_post_with_rows(ledger, payload, built_ns + first, business_day)
            assert len(outcome[0]) == 0, outcome
            if not quiet:
                progress.update(count)
    assert ledger.account_slot(LOAN_FUNDING_ID) >= 0
    return LoanBook(table, loans, short, overdue, full_minor)


def apply_post_with_rows(
    ledger: KernelLedger, payload: bytes, timestamp: int, business_day: int
) -> Any:
    """A POST_WITH_ROWS entry applied as replay applies it (`core.entries.apply_entry`)."""
    entry = Entry(EntryKind.POST_WITH_ROWS, timestamp, business_day, 0, payload)
    return apply_entry(ledger, entry)


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
    ledger: KernelLedger,
    rules: RuleSet,
    directory: str,
    date: datetime.date,
    quiet: bool,
    book: LoanBook | None = None,
) -> dict[str, Any]:
    """Run the day-end of `date` on a Lifecycle over the prebuilt ledger (and its loans'
    terms, as the Lifecycle keeps them); its figures."""
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
        if book is not None:
            lifecycle.loan_terms = book.table  # what the Lifecycle loads from `loan/` records
        started = time.perf_counter()
        result = await DayEnd(lifecycle).run(date, progress=not quiet)
        figures["dayend_s"] = time.perf_counter() - started
        figures["result"] = result
        figures["expense_minor"] = await lifecycle.read(
            lambda ledger: _balance(ledger, INTEREST_EXPENSE_ID)
        )
        figures["funding_minor"] = await lifecycle.read(
            lambda ledger: _balance(ledger, LOAN_FUNDING_ID)
        )
        if book is not None and book.short:
            short = LOAN_SHORT_EVERY - 1  # the first short loan and its repayment account
            figures["short_balance_minor"] = await lifecycle.read(
                lambda ledger: _balance(ledger, gen.account_id(ACCOUNT_SEED, short))
            )
            figures["short_row"] = await lifecycle.read(
                lambda ledger: loan_row_view(ledger.deposit_row(gen.account_id(LOAN_SEED, short)))
            )
        task_group.cancel_scope.cancel()
    return figures


def check_loans(
    step: StepOutcome, book: LoanBook | None, figures: dict[str, Any]
) -> dict[str, Any]:
    """The loans step's figures for the report, after checking them: every loan touched
    and collected from (in full or in part), the funding account up by exactly what was
    taken, the short accounts emptied, the overdue loans still overdue with penalty."""
    if book is None:
        assert not step.due and figures["funding_minor"] == 0, step
        return {"loans": 0}
    details = step.details
    taken = details["principal_fen"] + details["interest_fen"] + details["penalty_fen"]
    assert step.due and step.count == book.loans, step
    assert details["collected"] == book.loans and details["failed"] == details["skipped"] == 0
    assert details["overdue"] == book.overdue and details["closed"] == 0, details
    assert figures["funding_minor"] == taken, (figures["funding_minor"], taken)
    assert taken >= (book.loans - book.short) * book.full_minor, taken
    if book.short:
        row = figures["short_row"]
        assert figures["short_balance_minor"] == 0 and row.collected_day > 0, figures
        assert row.arrears_principal_minor + row.arrears_interest_minor > 0, row
    return {
        "loans": book.loans,
        "loans_due": book.loans,
        "loans_short": book.short,
        "loans_overdue_before": book.overdue,
        "loan_collection_s": round(step.seconds, 3),
        "loan_terms_packed_s": round(details["terms_ms"] / 1000, 3),
        "loans_per_s": round(book.loans / step.seconds) if step.seconds else 0,
        "loans_collected": details["collected"],
        "loans_overdue": details["overdue"],
        "collected_minor": taken,
        "collected_principal_minor": details["principal_fen"],
        "collected_interest_minor": details["interest_fen"],
        "collected_penalty_minor": details["penalty_fen"],
        "loan_chunks": details["chunks"],
    }


def _balance(ledger: Any, account_id: int) -> int:
    view = account_view(ledger.lookup_account(account_id))
    return int(view.credits_posted - view.debits_posted)


def run(args: argparse.Namespace) -> int:
    quiet = args.json
    loans = min(LOANS_DEFAULT, args.accounts) if args.loans is None else args.loans
    if not 0 <= loans <= args.accounts:
        print(f"tally bench dayend: --loans {loans} must be 0..--accounts ({args.accounts}):"
              " each loan is repaid from its own account", file=sys.stderr)  # fmt: skip
        return 2
    owned = args.data is None
    directory = args.data or tempfile.mkdtemp(prefix="tally-bench-dayend-")
    rules = parse_rules(BENCH_RULES, "bench-dayend-rules.toml")
    started = time.perf_counter()
    try:
        funded_ns = midnight_ns(args.date - datetime.timedelta(days=1), rules, minutes=600)
        ledger = build_ledger(args.accounts, rules, funded_ns, quiet, loans)
        book = None
        if loans:
            book = build_loans(
                ledger, loans, rules, day_of_date(args.date), funded_ns + args.accounts + 1, quiet
            )
        build_s = time.perf_counter() - started
        figures = anyio.run(timed_dayend, ledger, rules, directory, args.date, quiet, book)
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
    loan_figures = check_loans(result.step(Step.LOANS), book, figures)
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
        **loan_figures,
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
