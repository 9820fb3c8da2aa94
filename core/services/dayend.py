"""The day-end batch: what the bank does once a business day has ended.

`DayEnd.run(date)` runs six steps for that day, in this order:

1. **accrual**: one ACCRUE_INTEREST entry; the kernel adds one day of interest
   to every demand account with a positive balance, at the catalog's demand
   rate of that day (`DepositCatalog.accrual_rates`: per product, 0 for
   products that earn nothing).
2. **settlement**, on a settlement day only (the 20th of Mar/Jun/Sep/Dec with
   the default catalog): the period's interest is paid as transfers from the
   bank's interest-expense account, in SETTLE_INTEREST entries of at most
   8189 transfers. Each chunk is read off the state by
   `Ledger.settlement_batch` in the same apply step that posts it
   (`Engine.submit_generated`), so nothing slips in between; a few chunks are
   kept in flight so that one chunk is applied while the one before it is
   made durable. The day-end runs after the day ended, so the transfers land
   on the next business day: settled on the 20th, credited on the 21st.
   Before the first chunk the transfer log is checked for room for the whole
   period (`LOG_FULL` names both figures), so the batch is refused whole
   instead of meeting EngineFull half way.
3. **maturities**: fixed deposits maturing the next day (when the day-end has
   run, that day has begun: "on the day"). Each pays principal plus the
   term's simple interest to its payout account, or, when the customer chose
   rollover, earns its interest into the deposit and starts a new term at the
   term's rate of that day. One POST_WITH_ROWS entry per chunk: the transfers
   and the rewritten rows in one atomic entry (a row is written iff its
   transfers posted; a payout's two transfers are linked).
4. **loans**: the loan instalments of the day (`ledger/loan_book.py`): for every
   open loan of the terms table (`Lifecycle.loan_terms`; none: nothing to do)
   not yet processed for the day, the instalments due by the day fall into
   arrears, as much of the arrears as the repayment account holds is taken (one
   LOAN_REPAYMENT transfer to the loan-funding account, split into penalty,
   interest and principal in the product's order), penalty accrues on what is
   left once the grace days have passed, and the loan's row is rewritten.
   `LoanCollectionMaker`: POST_WITH_ROWS entries of at most 8189 loans, each
   read off the state by `Ledger.loan_collection_batch` in the apply step that
   posts it (a chunk where nothing was taken has row writes and no transfer),
   a few in flight like the settlement's.
5. **counters**: the limit-counter rollover (PURGE_COUNTERS): day counters of
   days before the next day are dropped, so the counter table never fills
   with stale days.
6. **holds**: pending holds whose timeout has passed are expired
   (EXPIRE_PENDING).

Exactly once. Each step that changes money is idempotent in the ledger itself:
accrual runs only when `accrued_day` is before the day; settlement skips every
account already settled for the period (`period_settled`), and its transfer
ids are derived from account and period (`interest_transfer_id`); a matured
deposit's row is closed (or moved to its next term) in the entry that pays it,
with ids derived from deposit and maturity day; a loan's row records the last
day that processed it (`collected_day`) in the entry that takes its instalment,
whose id is derived from loan and day (`collection_transfer_id`). So a crash at
any point, followed by a rerun, posts each interest payment, each maturity and
each day's collection of a loan once.

Each finished step is recorded durably in the customer state, under
`dayend/<day>` (JSON: each step's counts and seconds); when the last step is
recorded, `dayend/last` names the day. A rerun of a day that is done changes
nothing and says so (`DayEndResult.already_done`); a run after a crash resumes
at the first step not recorded (`resumed_from`).

Refusals (`DayEndRefused`, typed by `DayEndRefusal`): a day that has not ended
(today or later), a day after a day whose day-end has not run (`SKIPPED`,
naming the missing day), a day before the last day-end that was never run
(`SUPERSEDED`), and a transfer log without room for the settlement
(`LOG_FULL`).

Each step's entries are formed by a *maker*, a function of the ledger's state
that `Engine.submit_generated` runs in the apply stage (`accrual_maker`,
`SettlementMaker`, `MaturityMaker`, `LoanCollectionMaker`,
`purge_counters_maker`, `expire_holds_maker`); they hold no I/O, so the
simulator can form the very same entries with them.

`serve_automatic` runs the day-end by itself once each business day has ended
(`Settings.dayend_automatic`), catching up every day missed while the server
was down, in order.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import logging
import struct
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import orjson
from anyio.abc import TaskStatus

from core.engine import BATCH_SIZE_MAX, Engine, Generated, MakeEntry, policy
from core.entries import (
    EntryKind,
    pack_accrue_payload,
    pack_post_with_rows_payload,
    pack_purge_payload,
    pack_settle_payload,
)
from core.errors import TallyError
from core.progress import progress_bar
from ledger.constants import BANK_CHANNEL, INTEREST_EXPENSE_ID
from ledger.deposits import (
    DEPOSIT_WRITE_SIZE,
    FD_CLOSED,
    FD_PARTIAL_DONE,
    FD_ROLLOVER,
    fixed_row_view,
    pack_deposit_write,
    pack_fixed_row,
    with_fixed_flags,
)
from ledger.interest import (
    add_months,
    date_of_day,
    day_of_date,
    term_interest,
)
from ledger.loan_book import LOAN_ROW, LOAN_TERMS, LoanFlags, LoanRow
from ledger.records import TransferView, pack_transfer, transfer_view
from ledger.types import (
    DEPOSIT_SIZE,
    TRANSFER_SIZE,
    UINT64_MAX,
    CreateTransferResult,
    TransferCode,
    TransferFlags,
)
from limits.deposits import DepositCatalog, RateNotInForceError, Term
from limits.rules import RuleSet

if TYPE_CHECKING:
    from core.services.lifecycle import Lifecycle

logger = logging.getLogger("tally.dayend")

DAYEND_KEY_PREFIX = b"dayend/"
DAYEND_LAST_KEY = b"dayend/last"  # the last day whose day-end finished (ASCII decimal)
SETTLEMENT_CHUNK_MAX = BATCH_SIZE_MAX  # transfers per SETTLE_INTEREST entry (8189)
SETTLEMENT_CHUNKS_IN_FLIGHT = 3  # one applied while the one before is made durable, + slack
SETTLEMENT_COUNT_CHUNK = 1 << 16  # transfers per settlement_batch call when sizing the period
MATURITY_DEPOSITS_MAX = BATCH_SIZE_MAX // 2  # deposits per POST_WITH_ROWS entry (2 transfers)
LOAN_COLLECTION_CHUNK_MAX = BATCH_SIZE_MAX  # loans per POST_WITH_ROWS entry (<= 1 transfer each)
LOAN_CHUNKS_IN_FLIGHT = 3  # like the settlement's: one applied while one is made durable
AUTOMATIC_CHECK_S = 1.0  # how often the automatic day-end looks at the business day
AUTOMATIC_RETRY_S = 60.0  # after a refusal (a full log, a store away), try again this late

# Maturity transfer ids, like `ledger.deposits.interest_transfer_id` with their own tag:
# id_lo = the deposit account's id mixed to 64 bits, id_hi = tag << 40 | part << 32 | day.
MATURITY_ID_TAG = 0x4D4154  # "MAT"
MATURITY_ID_MIX = 0x9E3779B97F4A7C15
MATURITY_PART_PRINCIPAL = 0  # the deposit account to the payout account
MATURITY_PART_INTEREST = 1  # interest expense to the payout account
MATURITY_PART_ROLLOVER = 2  # interest expense into the deposit (a rollover)


class Step(enum.StrEnum):
    """The day-end's steps, in the order they run."""

    ACCRUAL = "accrual"
    SETTLEMENT = "settlement"
    MATURITIES = "maturities"
    LOANS = "loans"
    COUNTERS = "counters"
    HOLDS = "holds"


STEPS = tuple(Step)


class DayEndRefusal(enum.IntEnum):
    """Why a day-end was refused. Never renumbered."""

    NOT_ENDED = 1  # the day is today or later: it has not ended
    SKIPPED = 2  # an earlier day's day-end has not run: `missing_day` names it
    SUPERSEDED = 3  # a later day's day-end has run; this one never did and cannot now
    LOG_FULL = 4  # the transfer log has no room for the period's settlement


class DayEndRefused(TallyError):
    """A day-end that cannot run; nothing was changed. `extras` carries the figures."""

    def __init__(self, reason: DayEndRefusal, detail: str, **extras: Any) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.extras = extras

    def to_json(self) -> dict[str, Any]:
        return {"refused": self.reason.name.lower(), "detail": self.detail, **self.extras}


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """One step's work: `count` of what it did (accounts accrued, transfers posted,
    deposits matured, counters purged, holds expired), whether it was due at all
    (settlement off a settlement day is not), and figures by name."""

    step: Step
    due: bool
    count: int
    seconds: float
    details: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": str(self.step),
            "due": self.due,
            "count": self.count,
            "seconds": round(self.seconds, 6),
            **self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepOutcome:
        details = {
            key: int(value)
            for key, value in data.items()
            if key not in ("step", "due", "count", "seconds")
        }
        return cls(Step(data["step"]), bool(data["due"]), int(data["count"]),
                   float(data["seconds"]), details)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DayEndResult:
    """What a day-end did (or, `already_done`, what the finished one did before)."""

    day: int
    already_done: bool
    resumed_from: Step | None
    steps: tuple[StepOutcome, ...]

    @property
    def date(self) -> datetime.date:
        return date_of_day(self.day)

    def step(self, step: Step) -> StepOutcome:
        for outcome in self.steps:
            if outcome.step == step:
                return outcome
        raise KeyError(step)

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(),
            "day": self.day,
            "already_done": self.already_done,
            "resumed_from": None if self.resumed_from is None else str(self.resumed_from),
            "steps": [outcome.to_json() for outcome in self.steps],
        }


@dataclass(slots=True)
class _Record:
    """The durable record of one day's day-end (`dayend/<day>`)."""

    day: int
    steps: dict[Step, StepOutcome]
    done: bool = False

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "day": self.day,
                "done": self.done,
                "steps": [self.steps[step].to_json() for step in STEPS if step in self.steps],
            }
        )

    @classmethod
    def decode(cls, day: int, raw: bytes | None) -> _Record:
        if raw is None:
            return cls(day, {})
        data = orjson.loads(raw)
        assert data["day"] == day, (data["day"], day)
        steps = {Step(item["step"]): StepOutcome.from_json(item) for item in data["steps"]}
        return cls(day, steps, bool(data["done"]))


def dayend_key(day: int) -> bytes:
    return DAYEND_KEY_PREFIX + b"%d" % day


def maturity_transfer_id(account_id: int, maturity_day: int, part: int) -> int:
    """The id of a maturity's transfer: from the deposit account, its maturity day and the
    part, so a rerun (or a crash and a rerun) can never pay one maturity twice; tagged
    like the settlement ids so no channel's id can be one."""
    assert 0 <= maturity_day < 65536 and part in (0, 1, 2), (maturity_day, part)
    lo = (account_id & UINT64_MAX) ^ (((account_id >> 64) * MATURITY_ID_MIX) & UINT64_MAX)
    hi = (MATURITY_ID_TAG << 40) | (part << 32) | maturity_day
    return (hi << 64) | lo


class DayEnd:
    """The day-end batch over a running `Lifecycle` (module docstring).

    One day-end runs at a time in a process (a lock); across processes the
    store's own lock keeps a second writer out.
    """

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self._lock = anyio.Lock()

    # --- the public entry points --------------------------------------------------

    async def run(self, date: datetime.date, *, progress: bool = False) -> DayEndResult:
        """Run the day-end of `date` (or resume it, or say it was done).

        Args:
          date: the business day that ended (in the rules' time zone).
          progress: draw a progress bar on a terminal (`core.progress`; silent elsewhere).

        Returns:
          A `DayEndResult` with each step's outcome; `already_done` when the day's
          day-end had finished before (nothing was changed).

        Raises:
          DayEndRefused: NOT_ENDED, SKIPPED, SUPERSEDED or LOG_FULL (nothing changed
            by the refused step; steps finished before it stay recorded).
          Refused: the engine's refusals (not ready, overloaded, storage unavailable).
        """
        day = day_of_date(date)
        async with self._lock:
            engine = self.lifecycle.running_engine()
            record = _Record.decode(day, engine.state.get(dayend_key(day)))
            if record.done:
                # A day done before a step was added (the loans) has no record of it.
                steps = tuple(record.steps[step] for step in STEPS if step in record.steps)
                return DayEndResult(day, True, None, steps)
            self._check_day(engine, day)
            resumed_from = next((s for s in STEPS if s not in record.steps), None)
            if not record.steps:
                resumed_from = None
            for step in STEPS:
                if step in record.steps:
                    continue
                outcome = await self._run_step(engine, step, day, progress)
                record.steps[step] = outcome
                record.done = step == STEPS[-1]
                changes: list[tuple[bytes, bytes | None]] = [(dayend_key(day), record.encode())]
                if record.done:
                    changes.append((DAYEND_LAST_KEY, b"%d" % day))
                await self.lifecycle.call_engine(engine.submit_state, changes)
                logger.info(orjson.dumps({"event": "dayend_step", "day": day,
                                          **outcome.to_json()}).decode())  # fmt: skip
            steps = tuple(record.steps[step] for step in STEPS)
            return DayEndResult(day, False, resumed_from, steps)

    def last_done(self) -> int | None:
        """The last day whose day-end finished, or None when none ever did."""
        engine = self.lifecycle.running_engine()
        raw = engine.state.get(DAYEND_LAST_KEY)
        return None if raw is None else int(raw)

    async def serve_automatic(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the day-end of each business day once it has ended, until cancelled.

        The first day is the one after the last finished day-end; with none ever
        run, the day after the last accrual, else the business day this started
        on. Days missed while the server was down are caught up in order. A
        refusal (a full transfer log, the store away) is logged and tried again
        `AUTOMATIC_RETRY_S` later; anything else is a defect and propagates.
        """
        task_status.started()
        start_day: int | None = None
        while True:
            await anyio.sleep(AUTOMATIC_CHECK_S)
            lifecycle = self.lifecycle
            if not lifecycle.ready or lifecycle.engine is None:
                continue
            today = lifecycle.today()
            if start_day is None:
                start_day = today
            next_day = self._next_day(lifecycle.engine, start_day)
            if next_day >= today:
                continue
            try:
                result = await self.run(date_of_day(next_day))
            except DayEndRefused as error:
                logger.error(orjson.dumps({"event": "dayend_refused", "day": next_day,
                                           **error.to_json()}).decode())  # fmt: skip
                await anyio.sleep(AUTOMATIC_RETRY_S)
                continue
            except TallyError as error:  # Refused: not ready, storage away, overloaded
                logger.error(orjson.dumps({"event": "dayend_failed", "day": next_day,
                                           "error": str(error)}).decode())  # fmt: skip
                await anyio.sleep(AUTOMATIC_CHECK_S)
                continue
            logger.info(orjson.dumps({"event": "dayend", **result.to_json()}).decode())

    # --- checks -------------------------------------------------------------------

    def _next_day(self, engine: Engine, start_day: int) -> int:
        raw = engine.state.get(DAYEND_LAST_KEY)
        if raw is not None:
            return int(raw) + 1
        accrued_day = engine.ledger.accrued_day
        return accrued_day + 1 if accrued_day else start_day

    def _check_day(self, engine: Engine, day: int) -> None:
        """Refuse a day that has not ended, that skips one, or that can no longer run."""
        today = self.lifecycle.today()
        if day >= today:
            raise DayEndRefused(
                DayEndRefusal.NOT_ENDED,
                f"the business day {date_of_day(day).isoformat()} has not ended"
                f" (today is {date_of_day(today).isoformat()})",
                today=date_of_day(today).isoformat(),
            )
        raw = engine.state.get(DAYEND_LAST_KEY)
        last = int(raw) if raw is not None else None
        if last is None and engine.ledger.accrued_day:
            last = engine.ledger.accrued_day  # a state without records: the ledger's word
            if day == last:
                return  # the accrual is done; the other steps resume
        if last is None:
            return
        if day > last + 1:
            missing = date_of_day(last + 1).isoformat()
            raise DayEndRefused(
                DayEndRefusal.SKIPPED,
                f"the day-end of {missing} has not run: run it before"
                f" {date_of_day(day).isoformat()}",
                missing_date=missing,
            )
        if day <= last:
            raise DayEndRefused(
                DayEndRefusal.SUPERSEDED,
                f"the day-end of {date_of_day(day).isoformat()} never ran and cannot now:"
                f" the day-end has run up to {date_of_day(last).isoformat()}",
                last_date=date_of_day(last).isoformat(),
            )

    # --- the steps ----------------------------------------------------------------

    @property
    def catalog(self) -> DepositCatalog:
        return self.lifecycle.catalog

    async def _run_step(self, engine: Engine, step: Step, day: int, progress: bool) -> StepOutcome:
        run: Callable[[Engine, int, bool], Awaitable[tuple[bool, int, dict[str, int]]]] = {
            Step.ACCRUAL: self._accrue,
            Step.SETTLEMENT: self._settle,
            Step.MATURITIES: self._mature,
            Step.LOANS: self._collect_loans,
            Step.COUNTERS: self._purge_counters,
            Step.HOLDS: self._expire_holds,
        }[step]
        started = time.perf_counter()
        due, count, details = await run(engine, day, progress)
        seconds = round(time.perf_counter() - started, 6)  # as recorded: a rerun shows the same
        return StepOutcome(step, due, count, seconds, details)

    async def _generate(self, engine: Engine, make: Callable[[Any], Generated | None]) -> Any:
        return await self.lifecycle.call_engine(engine.submit_generated, make)

    async def _accrue(
        self, engine: Engine, day: int, progress: bool
    ) -> tuple[bool, int, dict[str, int]]:
        make = accrual_maker(self.catalog, engine.rules, day)
        with _bar(progress, 1, "accrual") as bar:
            accrued = await self._generate(engine, make)
            bar.update(1)
        if accrued is None:
            # Accrued already: by the engine at the day's end (on the end-of-day balances,
            # before anything of the next day; its count is known until a restart), or by
            # a day-end run that crashed after this step.
            return True, engine.accrued_counts.get(day, 0), {"accrued_before": 1}
        return True, int(accrued), {}

    async def _settle(
        self, engine: Engine, day: int, progress: bool
    ) -> tuple[bool, int, dict[str, int]]:
        catalog = self.catalog
        if not catalog.is_settlement_day(day):
            return False, 0, {}
        period = catalog.settlement_period(day)
        sizing_started = time.perf_counter()
        await self._check_log_room(engine, period)
        sizing_ms = round((time.perf_counter() - sizing_started) * 1000)
        cursor = SettlementMaker(period)
        with _bar(progress, engine.ledger.account_count, "settlement") as bar:
            cursor.bar = bar
            async with anyio.create_task_group() as task_group:
                for _ in range(SETTLEMENT_CHUNKS_IN_FLIGHT):
                    task_group.start_soon(self._settle_chunks, engine, cursor)
        return True, cursor.posted, {
            "period": period, "chunks": cursor.chunks, "failed": cursor.failed,
            "sizing_ms": sizing_ms,
        }  # fmt: skip

    async def _settle_chunks(self, engine: Engine, cursor: SettlementMaker) -> None:
        """Submit chunks until the cursor has passed the last account (one of a few
        such tasks: the engine forms their chunks one after another, in order)."""
        while not cursor.finished:
            outcome = await self._generate(engine, cursor.make)
            if outcome is not None:
                cursor.count(outcome[0])

    async def _check_log_room(self, engine: Engine, period: int) -> None:
        """Refuse the settlement (LOG_FULL) unless the log and the bank channel's share
        of it have room for every transfer of the period (read in the apply stage: a
        count of `settlement_batch`'s transfers, no posting)."""
        sizing: dict[str, int] = {}

        def measure(ledger: Any) -> None:
            sizing["needed"] = settlement_transfer_count(ledger, period)
            sizing.update(log_room(ledger, engine))
            return None

        await self._generate(engine, measure)
        needed, room = sizing["needed"], sizing["room"]
        if needed > room:
            raise DayEndRefused(
                DayEndRefusal.LOG_FULL,
                f"settlement of period {period} needs {needed} transfers; the transfer log"
                f" has room for {room} (capacity {sizing['capacity']}, {sizing['held']} held"
                f" within the retention; the batch channel's share {sizing['channel_room']}):"
                " enlarge --transfer-capacity or the batch channel's log_share_permille",
                period=period,
                **sizing,
            )

    async def _mature(
        self, engine: Engine, day: int, progress: bool
    ) -> tuple[bool, int, dict[str, int]]:
        maturing = MaturityMaker(self.catalog, day + 1)
        with _bar(progress, 0, "maturities") as bar:
            while True:
                outcome = await self._generate(engine, maturing.make)
                if outcome is None:
                    break
                maturing.count(outcome[0])
                bar.update(maturing.last_chunk)
        return True, maturing.matured, {
            "paid_out": maturing.paid_out, "rolled_over": maturing.rolled_over,
            "failed": maturing.failed,
        }  # fmt: skip

    async def _collect_loans(
        self, engine: Engine, day: int, progress: bool
    ) -> tuple[bool, int, dict[str, int]]:
        """The loans' instalments of `day` over the terms table as it stands when the step
        starts. A loan disbursed later has no instalment due for 15 days. A prepayment in
        flight has both segments in the table (the next one is written before it posts)
        and the kernel takes the row's; one begun after the table was read leaves a row
        whose segment is not in it: that loan is left for the next day's collection (its
        instalment falls due then, overdue counted from its due day all the same).

        Seconds: `terms_ms` is `LoanTermsTable.packed()` (a Python sort by slot), part of
        the step's time; the rest is the kernel, the apply and the journal.
        """
        packing_started = time.perf_counter()
        table = getattr(self.lifecycle, "loan_terms", None)
        terms = b"" if table is None else table.packed()
        if not terms:
            return False, 0, {}
        terms_ms = round((time.perf_counter() - packing_started) * 1000)
        collecting = LoanCollectionMaker(terms, day, LOAN_COLLECTION_CHUNK_MAX)
        with _bar(progress, collecting.entries, "loans") as bar:
            collecting.bar = bar
            async with anyio.create_task_group() as task_group:
                for _ in range(LOAN_CHUNKS_IN_FLIGHT):
                    task_group.start_soon(self._collect_loan_chunks, engine, collecting)
        return True, collecting.touched, {**collecting.details(), "terms_ms": terms_ms}

    async def _collect_loan_chunks(self, engine: Engine, collecting: LoanCollectionMaker) -> None:
        """Submit chunks until the maker has passed the table's end (one of a few such
        tasks; each counts the chunk its own `make` formed)."""
        while not collecting.finished:
            formed: list[LoanChunk | None] = [None]

            def make(ledger: Any, formed: list[LoanChunk | None] = formed) -> Generated | None:
                made = collecting.make(ledger)
                formed[0] = collecting.last
                return made

            outcome = await self._generate(engine, make)
            if outcome is not None:
                collecting.count(outcome[0], formed[0])

    async def _purge_counters(
        self, engine: Engine, day: int, progress: bool
    ) -> tuple[bool, int, dict[str, int]]:
        purged = await self._generate(engine, purge_counters_maker(day + 1))
        return True, int(purged), {}

    async def _expire_holds(
        self, engine: Engine, day: int, progress: bool
    ) -> tuple[bool, int, dict[str, int]]:
        expired = await self._generate(engine, expire_holds_maker)
        return True, int(expired or 0), {}


# --- the step makers: `Engine.submit_generated` functions, shared with the simulator ------


def accrual_rates(catalog: DepositCatalog, day: int, rules: RuleSet) -> bytes:
    """The accrual table of `day`: the catalog's demand rate of that day per product of
    `rules`; empty before the catalog's first rate set (nothing earns, the day passes)."""
    try:
        return catalog.accrual_rates(day, rules)
    except RateNotInForceError:
        return b""


def accrual_maker(catalog: DepositCatalog, rules: RuleSet, day: int) -> MakeEntry:
    """The accrual of `day` at the catalog's demand rate of that day (per product of
    `rules`); nothing when the ledger has accrued that day already (at the day's end, by
    the engine's day-boundary accrual, or before a crash)."""
    payload = pack_accrue_payload(day, accrual_rates(catalog, day, rules))

    def make(ledger: Any) -> Generated | None:
        if ledger.accrued_day >= day:
            return None  # accrued before a crash: never twice
        return EntryKind.ACCRUE_INTEREST, 0, payload, 1

    return make


def purge_counters_maker(first_day_kept: int) -> MakeEntry:
    """The limit-counter rollover: drop the day counters of days before `first_day_kept`."""
    payload = pack_purge_payload(first_day_kept)

    def make(ledger: Any) -> Generated:
        return EntryKind.PURGE_COUNTERS, 0, payload, 1

    return make


def expire_holds_maker(ledger: Any) -> Generated | None:
    """Expire the pending holds past their timeout (nothing when there is none)."""
    if not ledger.pending_expiry_count:
        return None
    return EntryKind.EXPIRE_PENDING, 0, b"", 1


class SettlementMaker:
    """The settlement of `period` in chunks of at most `chunk` transfers: each `make`
    reads the next chunk off the state (`settlement_batch` from where the last one
    stopped), None for a stretch of accounts with nothing to settle (call again until
    `finished`). It runs in the engine's apply stage, one chunk after another, so the
    shared cursor needs no lock; `count` adds a chunk's result codes once it is
    answered."""

    def __init__(self, period: int, chunk: int = SETTLEMENT_CHUNK_MAX) -> None:
        self.period = period
        self.chunk = chunk
        self.slot = 0
        self.finished = False
        self.chunks = 0
        self.posted = 0
        self.failed = 0
        self.bar: Any = None

    def make(self, ledger: Any) -> Generated | None:
        if self.finished:
            return None
        start = self.slot
        transfers, slots, next_slot = ledger.settlement_batch(self.period, start, self.chunk)
        assert next_slot > start or next_slot >= ledger.account_count, (start, next_slot)
        self.slot = next_slot
        if next_slot >= ledger.account_count:
            self.finished = True
        if self.bar is not None:
            self.bar.update(next_slot - start)
        if not transfers:
            return None
        count = len(transfers) // TRANSFER_SIZE
        self.chunks += 1
        payload = pack_settle_payload(self.period, transfers, slots)
        return EntryKind.SETTLE_INTEREST, count, payload, count

    def count(self, results: bytearray) -> None:
        ok = results.count(CreateTransferResult.OK)
        self.posted += ok
        self.failed += len(results) - ok


class MaturityMaker:
    """The maturities of fixed deposits due by `due_day`, a POST_WITH_ROWS entry of at
    most `MATURITY_DEPOSITS_MAX` deposits per `make` (None when none is left untried);
    `count` adds an entry's result codes once it is answered: the deposits matured
    (paid out or rolled over), failed, and the fen of the matured ones (`principal_fen`
    paid out, `interest_fen` paid out or earned into a renewed deposit)."""

    def __init__(self, catalog: DepositCatalog, due_day: int) -> None:
        self.catalog = catalog
        self.due_day = due_day
        self.attempted: set[int] = set()  # slots tried: a failed one is not tried again
        self.matured = self.paid_out = self.rolled_over = self.failed = 0
        self.principal_fen = self.interest_fen = 0
        self.last_chunk = 0
        # (slot, rollover, last transfer index, principal paid out, interest)
        self._chunk: list[tuple[int, bool, int, int, int]] = []

    def make(self, ledger: Any) -> Generated | None:
        transfers: list[bytes] = []
        writes: list[bytes] = []
        self._chunk = []
        self.last_chunk = 0
        while not transfers:
            due = [s for s in ledger.due_fixed_deposits(self.due_day) if s not in self.attempted]
            if not due:
                return None
            for slot in due[:MATURITY_DEPOSITS_MAX]:
                self.attempted.add(slot)
                self.last_chunk += 1
                formed = self._one(ledger, slot, len(transfers))
                if formed is None:
                    self.failed += 1
                    continue
                parts, write, rollover, principal, interest = formed
                transfers.extend(parts)
                writes.append(write)
                self._chunk.append((slot, rollover, len(transfers) - 1, principal, interest))
        payload = pack_post_with_rows_payload(b"".join(transfers), b"".join(writes))
        return EntryKind.POST_WITH_ROWS, len(transfers), payload, len(transfers)

    def _one(
        self, ledger: Any, slot: int, first_index: int
    ) -> tuple[list[bytes], bytes, bool, int, int] | None:
        """One deposit's transfers, row write, whether it rolls over, the principal paid
        out and the interest; None when it cannot mature (no interest to carry a
        rollover: left open, counted as failed)."""
        raw = ledger.deposit_row_at(slot)
        row = fixed_row_view(raw)
        account_id = ledger.account_id_at(slot)
        interest = term_interest(row.principal, row.rate, row.term_months)
        maturity = row.maturity_day
        rate: int | None = None
        if row.flags & FD_ROLLOVER:
            if interest <= 0:
                return None
            rate = self._rollover_rate(row.term_months, maturity)
        if row.flags & FD_ROLLOVER and rate is not None:
            renewed = pack_fixed_row(
                principal=row.principal + interest,
                rate=rate,
                open_day=maturity,
                maturity_day=add_months(maturity, row.term_months),
                term_months=row.term_months,
                day_count=int(row.day_count),
                flags=row.flags & ~FD_PARTIAL_DONE,
                payout_slot=row.payout_slot,
                product=row.product,
            )
            into = pack_transfer(
                id=maturity_transfer_id(account_id, maturity, MATURITY_PART_ROLLOVER),
                debit_account_id=INTEREST_EXPENSE_ID, credit_account_id=account_id,
                amount=interest, code=TransferCode.INTEREST, channel=BANK_CHANNEL,
                user_data=maturity,
            )  # fmt: skip
            return [into], pack_deposit_write(account_id, first_index, renewed), True, 0, interest
        payout_id = ledger.account_id_at(row.payout_slot)
        closed = with_fixed_flags(raw, row.flags | FD_CLOSED)
        principal = pack_transfer(
            id=maturity_transfer_id(account_id, maturity, MATURITY_PART_PRINCIPAL),
            debit_account_id=account_id, credit_account_id=payout_id, amount=row.principal,
            code=TransferCode.FIXED_DEPOSIT, channel=BANK_CHANNEL, user_data=maturity,
            flags=TransferFlags.LINKED if interest > 0 else 0,
        )  # fmt: skip
        parts = [principal]
        if interest > 0:
            parts.append(pack_transfer(
                id=maturity_transfer_id(account_id, maturity, MATURITY_PART_INTEREST),
                debit_account_id=INTEREST_EXPENSE_ID, credit_account_id=payout_id,
                amount=interest, code=TransferCode.INTEREST, channel=BANK_CHANNEL,
                user_data=maturity,
            ))  # fmt: skip
        write = pack_deposit_write(account_id, first_index + len(parts) - 1, closed)
        return parts, write, False, row.principal, interest

    def _rollover_rate(self, months: int, day: int) -> int | None:
        """The term's rate on `day` for a renewal, or None (paid out instead) when the
        catalog has no such term or no rate in force that day."""
        try:
            return self.catalog.fixed_rate(Term.of_months(months), day)
        except (ValueError, RateNotInForceError):
            return None

    def count(self, results: bytearray) -> None:
        for _slot, rollover, last_index, principal, interest in self._chunk:
            if results[last_index] == CreateTransferResult.OK:
                self.matured += 1
                self.principal_fen += principal
                self.interest_fen += interest
                if rollover:
                    self.rolled_over += 1
                else:
                    self.paid_out += 1
            else:
                self.failed += 1


class LoanChunk(NamedTuple):
    """What one collection entry carries, kept to count it once it is answered: the row
    writes (DEPOSIT_WRITE each) and the batch's parts (4 per write: the index of the
    loan's transfer or -1, principal, interest and penalty paid)."""

    writes: bytes
    parts: array[int]


def _field_offset(layout: struct.Struct, names: tuple[str, ...], name: str) -> int:
    """The offset of field `name` in a one-letter-per-field `struct` layout."""
    return struct.calcsize(layout.format[0] + layout.format[1 : 1 + names.index(name)])


# Where a written loan row's flags byte sits in a DEPOSIT_WRITE (the row is its last field),
# so `LoanCollectionMaker.count` reads a whole chunk's flags with one slice.
_WRITE_FLAGS_OFFSET = (
    DEPOSIT_WRITE_SIZE - DEPOSIT_SIZE + _field_offset(LOAN_ROW, LoanRow._fields, "flags")
)
_OVERDUE_BYTES = bytes(int(bool(flags & LoanFlags.OVERDUE)) for flags in range(256))
_CLOSED_BYTES = bytes(int(bool(flags & LoanFlags.CLOSED)) for flags in range(256))


class LoanCollectionMaker:
    """The day-end collection of the loans' instalments of `day` over a terms table
    (`ledger.loan_book`, sorted by slot and segment): each `make` reads the next chunk
    off the state, `loan_collection_batch` from the terms entry where the last one
    stopped until `chunk` loans were touched, as one POST_WITH_ROWS entry (its transfers
    may be none: a chunk where nothing was taken only rewrites rows); None once the
    table's end is passed with nothing more to write. The chunks are formed one after
    another in the engine's apply stage, so the cursor needs no lock.

    `count(results, chunk)` adds an answered entry: loans `touched` (rows written),
    `collected` (their transfer posted) and the fen taken by part, `failed` (their
    transfer refused: row not written, the loan is tried again the next day), and of
    the rows written those now `overdue` or `closed`; `skipped` counts terms entries
    whose loan id did not match the account at their slot (the kernel's word).
    """

    def __init__(self, terms: bytes, day: int, chunk: int = LOAN_COLLECTION_CHUNK_MAX) -> None:
        assert len(terms) % LOAN_TERMS.size == 0, len(terms)
        assert 1 <= chunk <= BATCH_SIZE_MAX, chunk
        self.terms = terms
        self.day = day
        self.chunk = chunk
        self.entries = len(terms) // LOAN_TERMS.size  # terms entries (a loan may have two)
        self.index = 0
        self.finished = self.entries == 0
        self.chunks = self.touched = self.collected = self.failed = 0
        self.overdue = self.closed = self.skipped = 0
        self.principal_fen = self.interest_fen = self.penalty_fen = 0
        self.last: LoanChunk | None = None  # what the last `make` formed
        self.bar: Any = None

    def make(self, ledger: Any) -> Generated | None:
        self.last = None
        while not self.finished:
            start = self.index
            transfers, writes, parts, next_index, skipped = ledger.loan_collection_batch(
                self.day, self.terms, start, self.chunk
            )
            assert start < next_index <= self.entries, (start, next_index, self.entries)
            self.index = next_index
            self.finished = next_index == self.entries
            self.skipped += skipped
            if self.bar is not None:
                self.bar.update(next_index - start)
            if not writes:
                continue  # a stretch with nothing due
            count = len(transfers) // TRANSFER_SIZE
            self.chunks += 1
            self.last = LoanChunk(bytes(writes), parts)
            payload = pack_post_with_rows_payload(transfers, writes)
            return EntryKind.POST_WITH_ROWS, count, payload, max(count, 1)
        return None

    def count(self, results: bytearray, chunk: LoanChunk | None = None) -> None:
        if chunk is None:
            chunk = self.last
        assert chunk is not None
        writes, parts = chunk
        loans = len(writes) // DEPOSIT_WRITE_SIZE
        assert len(parts) == 4 * loans, (len(parts), loans)
        ok = CreateTransferResult.OK
        if results.count(ok) == len(results):
            # Every transfer posted, so every row was written: whole-chunk sums (a loan
            # that took nothing has its parts 0). 8189 loans cost microseconds this way.
            flags = writes[_WRITE_FLAGS_OFFSET::DEPOSIT_WRITE_SIZE]
            self.touched += loans
            self.collected += len(results)
            self.principal_fen += sum(parts[1::4])
            self.interest_fen += sum(parts[2::4])
            self.penalty_fen += sum(parts[3::4])
            self.overdue += flags.translate(_OVERDUE_BYTES).count(1)
            self.closed += flags.translate(_CLOSED_BYTES).count(1)
            return
        for loan in range(loans):
            index = parts[4 * loan]
            if index >= 0 and results[index] != ok:
                self.failed += 1
                continue
            self.touched += 1
            if index >= 0:
                self.collected += 1
                self.principal_fen += parts[4 * loan + 1]
                self.interest_fen += parts[4 * loan + 2]
                self.penalty_fen += parts[4 * loan + 3]
            row_flags = writes[loan * DEPOSIT_WRITE_SIZE + _WRITE_FLAGS_OFFSET]
            self.overdue += bool(row_flags & LoanFlags.OVERDUE)
            self.closed += bool(row_flags & LoanFlags.CLOSED)

    def details(self) -> dict[str, int]:
        """The step's figures by name (the day-end's record)."""
        return {
            "terms_entries": self.entries, "collected": self.collected, "failed": self.failed,
            "overdue": self.overdue, "closed": self.closed, "skipped": self.skipped,
            "principal_fen": self.principal_fen, "interest_fen": self.interest_fen,
            "penalty_fen": self.penalty_fen, "chunks": self.chunks,
        }  # fmt: skip


def settlement_transfer_count(ledger: Any, period: int) -> int:
    """How many transfers the settlement of `period` would post from this state (a pure
    read, in chunks of `SETTLEMENT_COUNT_CHUNK`)."""
    slot, total = 0, 0
    account_count = ledger.account_count
    while slot < account_count:
        transfers, _slots, slot = ledger.settlement_batch(period, slot, SETTLEMENT_COUNT_CHUNK)
        total += len(transfers) // TRANSFER_SIZE
    return total


def log_room(ledger: Any, engine: Engine) -> dict[str, int]:
    """Room for new transfers in the log: its capacity less what it must keep (what is
    within the retention; what is past it the engine evicts as needed), and the batch
    channel's share of it less what that channel holds."""
    capacity = ledger.transfer_capacity
    cutoff_ns = policy.retention_cutoff_ns(engine.clock.now_ns(), engine.retention_ns)
    held = ledger.log_count - first_log_seq(ledger, lambda record: record.timestamp < cutoff_ns)
    channel = engine.rules.channels.get(BANK_CHANNEL)
    share = 1000 if channel is None else channel.log_share_permille_effective
    channel_held, _failed = ledger.channel_records(BANK_CHANNEL)
    channel_room = capacity * share // 1000 - channel_held
    room = max(0, min(capacity - held, channel_room))
    return {"room": room, "capacity": capacity, "held": held, "channel_room": channel_room}


def first_log_seq(ledger: Any, before: Callable[[TransferView], bool]) -> int:
    """The first log seq whose record is not `before` (log_count: none): a binary search,
    `before` holding of a prefix of the log (the log is in timestamp order, so a time or a
    business day cut-off does)."""
    low: int = ledger.log_tail
    high: int = ledger.log_count
    while low < high:
        middle = (low + high) // 2
        if before(transfer_view(ledger.record_at(middle))):
            low = middle + 1
        else:
            high = middle
    return low


@contextlib.contextmanager
def _bar(progress: bool, total: int, label: str) -> Iterator[Any]:
    """A progress bar on a terminal when asked, else one that draws nothing."""
    if not progress:
        yield _NoBar()
        return
    with progress_bar(total, label) as bar:
        yield bar


class _NoBar:
    def update(self, count: int) -> None:
        return None
