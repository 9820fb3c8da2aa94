# Chinese labels use Chinese (full-width) punctuation on purpose.
# ruff: noqa: RUF001
"""The console's reports: end-of-day figures per business day, as a page and as CSV, and
the failover simulator's and the drills' saved reports.

Where the figures come from (nothing is decoded by position: `ledger.records`' views):

- the transfer log (`transfer_view`): the day's postings (result OK, not a hold or a
  hold's void: no booked money moves in those), their amounts by transfer code, by
  channel, and by product of the debited and of the credited account; interest paid
  (code INTEREST: the settlement, interest corrections), loans disbursed
  (LOAN_DISBURSEMENT) and collected (LOAN_REPAYMENT: the day-end's collection and the
  customers' own repayments). The log keeps a retention window only (`--retention-s`):
  each day says whether the window holds it `complete`, `partial` or not at all (`none`);
- the day-end's durable record (`dayend/<day>`, core/services/dayend.py): accounts
  accrued, interest transfers of a settlement, deposits matured, and the loan
  collection's figures (principal, interest and penalty taken, loans overdue);
- the demand accounts' deposit rows: interest accrued and not yet settled, now (a scan
  of at most `ACCRUAL_SCAN_ACCOUNTS_MAX` accounts).

Bounded: one day's log range is found by a binary search on the business day and read in
engine reads of `SCAN_CHUNK` records (copied out, aggregated outside the engine), at most
`SCAN_RECORDS_MAX` records a day (beyond: the figures say `truncated`). A finished day
whose window is complete does not change any more: its figures are kept
(`FIGURES_KEPT_MAX` days per bank).

`tally serve --console-reports DIR`: the *.json and *.html files directly in DIR are
listed and served read-only at /console/reports/files/{name}; a name must be a plain
file name (no separator, no `..`, no leading dot) and resolve, symlinks followed, to a
regular file directly inside DIR; anything else is 404.

Routes (permission `read:reports`): `/console/reports` (?day=YYYY-MM-DD),
`/console/reports/{day}.csv`, `/console/reports/files/{name}`.
"""

from __future__ import annotations

import csv
import datetime
import functools
import io
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from channels.console import i18n
from channels.console.app import ConsoleError, ConsoleRequest, ConsoleRoute, Download, Html
from core.services.dayend import StepOutcome, dayend_key, first_log_seq
from core.services.operators import READ_REPORTS
from ledger.deposits import demand_row_view
from ledger.interest import date_of_day, day_of_date
from ledger.records import account_view, transfer_view
from ledger.types import (
    TRANSFER_SIZE,
    AccountKind,
    CreateTransferResult,
    TransferCode,
    TransferFlags,
)

REPORT_DAYS_MAX: Final = 14  # business days listed, back from today
SCAN_CHUNK: Final = 65_536  # log records per engine read (a copy of 8 MiB)
SCAN_RECORDS_MAX: Final = 2_000_000  # log records aggregated for one day
ACCRUAL_SCAN_ACCOUNTS_MAX: Final = 200_000  # accounts scanned for the accrued interest
ACCRUAL_SCAN_CHUNK: Final = 16_384  # accounts per engine read
ACCRUAL_KEPT_S: Final = 60.0  # the accrued-interest figure is recomputed at most this often
FIGURES_KEPT_MAX: Final = 64
FILES_MAX: Final = 500  # files of the reports directory listed
FILE_SIZE_MAX: Final = 32 << 20  # a report file larger than this is not served
FILE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
FILE_TYPES: Final = {".json": "application/json", ".html": "text/html; charset=utf-8"}
DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_BOOKING_FLAGS: Final = TransferFlags.PENDING | TransferFlags.VOID_PENDING  # no money moves
_DEMAND_KINDS: Final = frozenset(
    {AccountKind.CLASS_I, AccountKind.CLASS_II, AccountKind.CLASS_III, AccountKind.SAVINGS}
)
CSV_HEADER: Final = ("date", "section", "key", "count", "amount_minor")

i18n.register(
    {
        "reports.title": ("Reports", "报表"),
        "reports.days": ("Business days", "营业日"),
        "reports.date": ("Business day", "营业日"),
        "reports.dayend": ("Day-end", "日终"),
        "reports.dayend_done": ("done", "已完成"),
        "reports.dayend_partial": ("in progress", "进行中"),
        "reports.dayend_none": ("not run", "未运行"),
        "reports.coverage": ("Transfer log", "交易日志"),
        "reports.coverage_complete": ("complete", "完整"),
        "reports.coverage_partial": ("partial (retention)", "部分（保留期）"),
        "reports.coverage_none": ("outside the retention", "超出保留期"),
        "reports.truncated": ("truncated: too many postings to add up", "已截断：记账笔数过多"),
        "reports.csv": ("CSV", "CSV"),
        "reports.view": ("View", "查看"),
        "reports.figures": ("End-of-day figures", "日终数据"),
        "reports.postings": ("Postings", "记账笔数"),
        "reports.amount": ("Amount (CNY)", "金额（元）"),
        "reports.count": ("Count", "笔数"),
        "reports.by_code": ("By transaction type", "按交易类型"),
        "reports.by_channel": ("By channel", "按渠道"),
        "reports.by_product_debit": ("By product of the debited account", "按借方账户产品"),
        "reports.by_product_credit": ("By product of the credited account", "按贷方账户产品"),
        "reports.interest": ("Interest", "利息"),
        "reports.interest_accrued_accounts": ("Accounts accrued (day-end)", "计提账户数（日终）"),
        "reports.interest_settled": ("Interest paid (postings)", "结息金额（记账）"),
        "reports.interest_settlement_transfers": (
            "Interest transfers of the settlement (day-end)",
            "结息笔数（日终）",
        ),
        "reports.interest_accrued_now": (
            "Interest accrued, not yet settled (now)",
            "已计提未结息利息（当前）",
        ),
        "reports.interest_accrued_unknown": (
            "not computed: more accounts than the bound",
            "未计算：账户数超过上限",
        ),
        "reports.maturities": ("Fixed deposits matured (day-end)", "定期到期（日终）"),
        "reports.loans": ("Loans", "贷款"),
        "reports.loans_disbursed": ("Disbursed", "放款"),
        "reports.loans_collected": ("Collected", "收回"),
        "reports.loans_dayend": ("Day-end collection", "日终扣款"),
        "reports.principal": ("principal", "本金"),
        "reports.interest_part": ("interest", "利息"),
        "reports.penalty": ("penalty", "罚息"),
        "reports.overdue": ("overdue", "逾期"),
        "reports.files": ("Simulation and drill reports", "仿真与演练报告"),
        "reports.file": ("File", "文件"),
        "reports.size": ("Size (bytes)", "大小（字节）"),
        "reports.modified": ("Modified", "修改时间"),
        "reports.no_files": ("No report in the directory.", "目录中没有报告。"),
        "reports.no_dir": (
            "No reports directory (tally serve --console-reports DIR).",
            "未配置报告目录（tally serve --console-reports DIR）。",
        ),
        "reports.none": ("Nothing on this day.", "当日无记录。"),
        "reports.show": ("Show", "显示"),
    }
)


@dataclass(slots=True)
class Tally:
    """A count and an amount in fen."""

    count: int = 0
    amount_minor: int = 0

    def add(self, amount_minor: int) -> None:
        self.count += 1
        self.amount_minor += amount_minor


@dataclass(slots=True)
class DayFigures:
    """One business day's end-of-day figures (module docstring)."""

    day: int
    coverage: str  # "complete" | "partial" | "none": how much of the day the log holds
    truncated: bool = False
    postings: Tally = field(default_factory=Tally)
    by_code: dict[str, Tally] = field(default_factory=dict)
    by_channel: dict[str, Tally] = field(default_factory=dict)
    by_product_debit: dict[str, Tally] = field(default_factory=dict)
    by_product_credit: dict[str, Tally] = field(default_factory=dict)
    interest_paid: Tally = field(default_factory=Tally)
    loans_disbursed: Tally = field(default_factory=Tally)
    loans_collected: Tally = field(default_factory=Tally)
    dayend: dict[str, StepOutcome] = field(default_factory=dict)
    dayend_done: bool = False

    @property
    def date(self) -> datetime.date:
        return date_of_day(self.day)

    def rows(self) -> list[tuple[str, str, int, int]]:
        """(section, key, count, amount_minor): the CSV's rows after the date."""
        rows: list[tuple[str, str, int, int]] = [
            ("coverage", self.coverage, 0, 0),
            ("truncated", "yes" if self.truncated else "no", 0, 0),
            ("postings", "all", self.postings.count, self.postings.amount_minor),
        ]
        for section, table in (
            ("code", self.by_code),
            ("channel", self.by_channel),
            ("product_debit", self.by_product_debit),
            ("product_credit", self.by_product_credit),
        ):
            rows += [(section, key, t.count, t.amount_minor) for key, t in sorted(table.items())]
        rows += [
            ("interest", "paid", self.interest_paid.count, self.interest_paid.amount_minor),
            ("loans", "disbursed", self.loans_disbursed.count, self.loans_disbursed.amount_minor),
            ("loans", "collected", self.loans_collected.count, self.loans_collected.amount_minor),
            ("dayend", "done" if self.dayend_done else "not_done", 0, 0),
        ]
        accrual = self.dayend.get("accrual")
        if accrual is not None:
            rows.append(("dayend", "accrual_accounts", accrual.count, 0))
        settlement = self.dayend.get("settlement")
        if settlement is not None and settlement.due:
            rows.append(("dayend", "settlement_transfers", settlement.count, 0))
        maturities = self.dayend.get("maturities")
        if maturities is not None:
            rows.append(("dayend", "maturities", maturities.count, 0))
        loans = self.dayend.get("loans")
        if loans is not None and loans.due:
            details = loans.details
            for part in ("principal_fen", "interest_fen", "penalty_fen"):
                key = "loan_collection_" + part.removesuffix("_fen")
                rows.append(("dayend", key, details.get("collected", 0), details.get(part, 0)))
            rows.append(("dayend", "loans_overdue", details.get("overdue", 0), 0))
        return rows


def _code_name(code: int) -> str:
    try:
        return TransferCode(code).name.lower()
    except ValueError:
        return f"code_{code}"


class _Names:
    """Names of channels and products from the rules in force, ids where unnamed."""

    def __init__(self, rules: Any) -> None:
        self.channels: dict[int, str] = {
            channel_id: c.name for channel_id, c in rules.channels.items()
        }
        self.products: dict[int, str] = {
            product_id: p.name for product_id, p in rules.products.items()
        }

    def channel(self, channel_id: int) -> str:
        return self.channels.get(channel_id, f"channel_{channel_id}")

    def product(self, product_id: int) -> str:
        return self.products.get(product_id, f"product_{product_id}")


def _first_seq_of_day(ledger: Any, day: int) -> int:
    """The first log seq whose business day is at least `day` (log_count: none)."""
    return first_log_seq(ledger, lambda record: record.business_day < day)


def _oldest_day(ledger: Any) -> int | None:
    """In the engine: the business day of the oldest record the log holds, -1 when none
    ever left it (every day is whole), None when every record left it."""
    if ledger.log_tail == 0:
        return -1
    if ledger.log_tail >= ledger.log_count:
        return None
    return int(transfer_view(ledger.record_at(ledger.log_tail)).business_day)


def coverage_of(day: int, oldest_day: int | None) -> str:
    """How much of `day` the log holds, from the day of its oldest record."""
    if oldest_day is None or oldest_day > day:
        return "none"
    return "partial" if oldest_day == day else "complete"


def _day_range(day: int, ledger: Any) -> tuple[int, int, str]:
    """In the engine: the day's seqs [first, stop) and how much of it the log holds."""
    first = _first_seq_of_day(ledger, day)
    stop = _first_seq_of_day(ledger, day + 1)
    return first, stop, coverage_of(day, _oldest_day(ledger))


def _records(start: int, stop: int, ledger: Any) -> bytes:
    records: bytes = ledger.log_records(start, stop)
    return records


def _products_of(slots: list[int], ledger: Any) -> dict[int, int]:
    return {slot: account_view(row).product for slot, row in ledger.account_rows(slots)}


def _accrued_chunk(start: int, stop: int, ledger: Any) -> int:
    """In the engine: the accrued, unsettled interest (fen) of the demand accounts of
    slots [start, stop)."""
    total = 0
    for slot in range(start, min(stop, ledger.account_count)):
        if account_view(ledger.account_row(slot)).kind in _DEMAND_KINDS:
            total += demand_row_view(ledger.deposit_row_at(slot)).accrued_fen
    return total


class Reports:
    """The figures of one bank, with the finished days' kept."""

    def __init__(self) -> None:
        self.kept: dict[int, DayFigures] = {}
        self.accrued: tuple[float, int | None] | None = None  # (when, fen or None: too many)

    async def figures(self, bank: Any, day: int) -> DayFigures:
        core = bank.core
        kept = self.kept.get(day)
        if kept is not None:
            return kept
        read: Callable[[Callable[[Any], Any]], Any] = core.read
        first, stop, coverage = await read(functools.partial(_day_range, day))
        figures = DayFigures(day, coverage)
        names = _Names(core.rules)
        products: dict[int, int] = {}
        if stop - first > SCAN_RECORDS_MAX:
            figures.truncated = True
            stop = first + SCAN_RECORDS_MAX
        ok = CreateTransferResult.OK
        for start in range(first, stop, SCAN_CHUNK):
            end = min(start + SCAN_CHUNK, stop)
            records = await read(functools.partial(_records, start, end))
            views = [
                view
                for view in (
                    transfer_view(records, offset)
                    for offset in range(0, len(records), TRANSFER_SIZE)
                )
                if view.result == ok
                and view.business_day == day
                and not view.flags & _BOOKING_FLAGS
            ]
            slots = {v.debit_slot for v in views} | {v.credit_slot for v in views}
            unknown = sorted(slots - products.keys())
            if unknown:
                products.update(await read(functools.partial(_products_of, unknown)))
            for view in views:
                amount = view.amount
                figures.postings.add(amount)
                _tally(figures.by_code, _code_name(view.code), amount)
                _tally(figures.by_channel, names.channel(view.channel), amount)
                _tally(figures.by_product_debit, names.product(products[view.debit_slot]), amount)
                _tally(figures.by_product_credit, names.product(products[view.credit_slot]), amount)
                if view.code == TransferCode.INTEREST:
                    figures.interest_paid.add(amount)
                elif view.code == TransferCode.LOAN_DISBURSEMENT:
                    figures.loans_disbursed.add(amount)
                elif view.code == TransferCode.LOAN_REPAYMENT:
                    figures.loans_collected.add(amount)
        figures.dayend, figures.dayend_done = dayend_record(core, day)
        today = core.today()
        if day < today and coverage == "complete" and figures.dayend_done:
            if len(self.kept) >= FIGURES_KEPT_MAX:
                del self.kept[min(self.kept)]
            self.kept[day] = figures
        return figures

    async def accrued_now(self, bank: Any) -> int | None:
        """The demand accounts' accrued, unsettled interest in fen (None: more accounts
        than ACCRUAL_SCAN_ACCOUNTS_MAX), recomputed at most every ACCRUAL_KEPT_S."""
        now = time.monotonic()
        if self.accrued is not None and now - self.accrued[0] < ACCRUAL_KEPT_S:
            return self.accrued[1]
        core = bank.core
        count: int = await core.read(lambda ledger: ledger.account_count)
        total: int | None = None
        if count <= ACCRUAL_SCAN_ACCOUNTS_MAX:
            total = 0
            for start in range(0, count, ACCRUAL_SCAN_CHUNK):
                end = start + ACCRUAL_SCAN_CHUNK
                total += await core.read(functools.partial(_accrued_chunk, start, end))
        self.accrued = (time.monotonic(), total)
        return total


def _tally(table: dict[str, Tally], key: str, amount_minor: int) -> None:
    entry = table.get(key)
    if entry is None:
        entry = table[key] = Tally()
    entry.add(amount_minor)


def dayend_record(core: Any, day: int) -> tuple[dict[str, StepOutcome], bool]:
    """The day-end's durable record of `day` (core/services/dayend.py): its steps by name
    and whether it finished; ({}, False) when it never ran."""
    engine = core.engine
    raw = None if engine is None else engine.state.get(dayend_key(day))
    if raw is None:
        return {}, False
    data = orjson.loads(raw)
    assert data["day"] == day, (data["day"], day)
    steps = {str(item["step"]): StepOutcome.from_json(item) for item in data["steps"]}
    return steps, bool(data["done"])


_REPORTS: weakref.WeakKeyDictionary[Any, Reports] = weakref.WeakKeyDictionary()


def reports_of(bank: Any) -> Reports:
    reports = _REPORTS.get(bank)
    if reports is None:
        reports = _REPORTS[bank] = Reports()
    return reports


def csv_of(figures: DayFigures) -> bytes:
    """The day's figures as CSV: a header row, then (date, section, key, count,
    amount_minor) rows; amounts are integer fen."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    date = figures.date.isoformat()
    for section, key, count, amount_minor in figures.rows():
        writer.writerow((date, section, key, count, amount_minor))
    return out.getvalue().encode()


def parse_day(text: str, today: int) -> int:
    """The day number of an ISO date that is today or before (404 otherwise)."""
    if not DATE.fullmatch(text):
        raise ConsoleError(404, "No such business day", f"{text!r} is not a date (YYYY-MM-DD)")
    try:
        date = datetime.date.fromisoformat(text)
    except ValueError:
        raise ConsoleError(404, "No such business day", f"{text} is not a date") from None
    if date.year < 2000:
        raise ConsoleError(404, "No such business day", f"{text} is before 2000-01-01")
    day = day_of_date(date) if date <= date_of_day(today) else None
    if day is None:
        raise ConsoleError(404, "No such business day", f"{text} is after today")
    return day


def _ready_core(request: ConsoleRequest) -> Any:
    core = request.bank.core
    if core.engine is None or not core.ready:
        raise ConsoleError(503, "The server is recovering", "try again shortly")
    return core


# --- the reports directory --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportFile:
    name: str
    size_bytes: int
    modified: str  # UTC, ISO 8601 to the second


def reports_dir(request: ConsoleRequest) -> Path | None:
    configured = getattr(request.app, "console_reports_dir", None)
    return None if not configured else Path(configured)


def list_report_files(directory: Path) -> list[ReportFile]:
    """The *.json and *.html regular files directly in `directory`, newest first (at
    most FILES_MAX); the ones `safe_report_path` would refuse are left out."""
    found: list[ReportFile] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    for entry in entries:
        path = safe_report_path(directory, entry.name)
        if path is None:
            continue
        stat = path.stat()
        modified = datetime.datetime.fromtimestamp(int(stat.st_mtime), datetime.UTC)
        found.append(ReportFile(entry.name, stat.st_size, modified.isoformat()))
    found.sort(key=lambda report: (report.modified, report.name), reverse=True)
    return found[:FILES_MAX]


def safe_report_path(directory: Path, name: str) -> Path | None:
    """The file `name` of `directory` if it is a plain *.json or *.html name that resolves
    (symlinks followed) to a regular file directly in the resolved directory; else None."""
    if not FILE_NAME.fullmatch(name) or ".." in name or Path(name).suffix not in FILE_TYPES:
        return None
    try:
        root = directory.resolve(strict=True)
        path = (root / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a symlink loop
        return None
    if path.parent != root or not path.is_file():
        return None
    return path


# --- handlers ---------------------------------------------------------------------------


def _day_rows(core: Any, today: int, oldest_day: int | None) -> list[dict[str, Any]]:
    """The days listed: the last REPORT_DAYS_MAX business days, today first."""
    rows = []
    for day in range(today, max(today - REPORT_DAYS_MAX, -1), -1):
        steps, done = dayend_record(core, day)
        coverage = coverage_of(day, oldest_day)
        rows.append(
            {
                "date": date_of_day(day).isoformat(),
                "dayend": "done" if done else ("partial" if steps else "none"),
                "coverage": coverage,
            }
        )
    return rows


def _figures_context(figures: DayFigures) -> dict[str, Any]:
    """The day's figures for reports.html: amounts in fen (the `yuan` filter shows them)."""

    def table(tallies: dict[str, Tally]) -> list[dict[str, Any]]:
        return [
            {"key": key, "count": t.count, "amount_minor": t.amount_minor}
            for key, t in sorted(tallies.items())
        ]

    def pair(tally: Tally) -> dict[str, int]:
        return {"count": tally.count, "amount_minor": tally.amount_minor}

    steps = figures.dayend
    loans = steps.get("loans")
    accrual = steps.get("accrual")
    settlement = steps.get("settlement")
    maturities = steps.get("maturities")
    return {
        "date": figures.date.isoformat(),
        "coverage": figures.coverage,
        "truncated": figures.truncated,
        "postings": pair(figures.postings),
        "by_code": table(figures.by_code),
        "by_channel": table(figures.by_channel),
        "by_product_debit": table(figures.by_product_debit),
        "by_product_credit": table(figures.by_product_credit),
        "interest_paid": pair(figures.interest_paid),
        "loans_disbursed": pair(figures.loans_disbursed),
        "loans_collected": pair(figures.loans_collected),
        "dayend_done": figures.dayend_done,
        "accrual_accounts": None if accrual is None else accrual.count,
        "settlement_transfers": (
            None if settlement is None or not settlement.due else settlement.count
        ),
        "maturities": None if maturities is None else maturities.count,
        "loan_collection": None
        if loans is None or not loans.due
        else {
            "collected": loans.details.get("collected", 0),
            "principal_minor": loans.details.get("principal_fen", 0),
            "interest_minor": loans.details.get("interest_fen", 0),
            "penalty_minor": loans.details.get("penalty_fen", 0),
            "overdue": loans.details.get("overdue", 0),
        },
    }


async def reports_page(request: ConsoleRequest) -> Html:
    core = _ready_core(request)
    today = core.today()
    unknown = set(request.query) - {"day"}
    if unknown:
        raise ConsoleError(400, "Unknown query parameter", ", ".join(sorted(unknown)))
    day = parse_day(request.query["day"], today) if "day" in request.query else today
    reports = reports_of(request.bank)
    figures = await reports.figures(request.bank, day)
    oldest_day = await core.read(_oldest_day)
    accrued = await reports.accrued_now(request.bank)
    directory = reports_dir(request)
    files = list_report_files(directory) if directory is not None else []
    return Html(
        "reports.html",
        {
            "days": _day_rows(core, today, oldest_day),
            "figures": _figures_context(figures),
            "accrued_now_minor": accrued,
            "files_configured": directory is not None,
            "files": files,
        },
    )


async def report_csv(request: ConsoleRequest) -> Download:
    core = _ready_core(request)
    text = request.params["day"].removesuffix(".csv")
    day = parse_day(text, core.today())
    figures = await reports_of(request.bank).figures(request.bank, day)
    return Download(f"tally-report-{text}.csv", "text/csv; charset=utf-8", csv_of(figures))


async def report_file(request: ConsoleRequest) -> Download:
    directory = reports_dir(request)
    name = request.params["name"]
    path = None if directory is None else safe_report_path(directory, name)
    if path is None:
        raise ConsoleError(404, "No such report", name)
    if path.stat().st_size > FILE_SIZE_MAX:
        raise ConsoleError(413, "Report too large to serve", f"over {FILE_SIZE_MAX} bytes")
    try:
        body = path.read_bytes()
    except OSError:
        raise ConsoleError(404, "No such report", name) from None
    return Download(name, FILE_TYPES[path.suffix], body)


ROUTES: Final = [
    ConsoleRoute("GET", "/console/reports", reports_page, READ_REPORTS, "reports"),
    ConsoleRoute("GET", "/console/reports/{day}.csv", report_csv, READ_REPORTS, "report_csv"),
    ConsoleRoute("GET", "/console/reports/files/{name}", report_file, READ_REPORTS, "report_file"),
]
