"""Kill -9 the day-end during its settlement, restart, rerun: each account is paid once.

A child process (this file, run as a script) opens a data directory through the
real `Lifecycle` (journal, fdatasync) and runs `DayEnd.run` for a settlement day;
its store finishes each group a little late (a slow disk, through the lifecycle's
`open_store` seam), so the settlement of 100,000 accounts spans about a second of
chunks. The parent SIGKILLs it at a random moment after it started, a few times
in a row (each restart resumes the day-end, and is killed again), then lets one
run to the end. Then the data directory is recovered and checked: every account
has exactly one interest transfer for the period (its derived id, the right
amount), its row says the period is settled, the interest-expense account paid
exactly the sum, and the books balance.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import random
import signal
import subprocess
import sys
import time
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

ACCOUNTS = 100_000
FUNDING_MINOR = 800_000  # 8,000 CNY: a day of 0.05% (360) is 1.11 fen
KILLS = 3
GROUP_DELAY_S = 0.05  # the slow disk: every group made durable this much later
SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
SETTLEMENT_DATE = datetime.date(2026, 3, 20)
FIRST_ACCOUNT = 6_222_000_000_000_000_001
CLASS_II_PRODUCT = 2


def at(date: datetime.date, hour: int, minute: int = 0) -> int:
    moment = datetime.datetime(date.year, date.month, date.day, hour, minute, tzinfo=SHANGHAI)
    return int(moment.timestamp()) * 1_000_000_000


def account_ids() -> range:
    return range(FIRST_ACCOUNT, FIRST_ACCOUNT + ACCOUNTS)


# --- the child process -------------------------------------------------------------------


class MovingClock:
    """`start_ns` plus the real time since the parent started (`origin_ns`): strictly
    later in every restarted child, as a server's clock would be."""

    def __init__(self, start_ns: int, origin_ns: int) -> None:
        self.offset = start_ns - origin_ns

    def now_ns(self) -> int:
        return time.time_ns() + self.offset


class SlowStore:
    """The real store, each group finished `GROUP_DELAY_S` late (a slow disk)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def finish_group(self, pending: Any) -> None:
        import anyio

        await anyio.sleep(GROUP_DELAY_S)
        await self.inner.finish_group(pending)


def child(mode: str, data: str, origin_ns: int) -> None:
    import anyio

    from core.data import DEFAULT_RULES_PATH
    from core.services.dayend import DayEnd
    from core.services.lifecycle import Lifecycle, Settings
    from core.store import open_store
    from limits.rules import load_rules

    logging.basicConfig(level=logging.INFO, format="LOG %(message)s", stream=sys.stdout)
    next_day = SETTLEMENT_DATE + datetime.timedelta(days=1)
    start = at(SETTLEMENT_DATE, 10) if mode == "setup" else at(next_day, 0, 5)
    clock = MovingClock(start, origin_ns)

    @contextlib.asynccontextmanager
    async def slow_open_store(url: str, **options: Any) -> AsyncIterator[Any]:
        async with open_store(url, **options) as opened:
            opened.store = SlowStore(opened.store)
            yield opened

    lifecycle = Lifecycle(
        Settings(data, expire_interval_s=3600.0),
        load_rules(DEFAULT_RULES_PATH),
        now_ns=clock.now_ns,
        engine_clock=clock,
        open_store=slow_open_store if mode == "dayend" else open_store,
    )

    async def no_openings() -> None:
        return None

    async def main() -> None:
        async with anyio.create_task_group() as task_group:
            await task_group.start(lifecycle.serve, no_openings)
            while not lifecycle.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
            if mode == "setup":
                await open_and_fund(lifecycle)
                print("SETUP", flush=True)
            else:
                print("RUNNING", flush=True)
                result = await DayEnd(lifecycle).run(SETTLEMENT_DATE)
                print("DONE " + orjson.dumps(result.to_json()).decode(), flush=True)
            task_group.cancel_scope.cancel()

    anyio.run(main)


async def open_and_fund(lifecycle: Any) -> None:
    from ledger.constants import CLEARING_ID
    from ledger.records import pack_account_input, pack_transfer
    from ledger.types import AccountFlags, AccountKind, TransferCode

    engine = lifecycle.running_engine()
    flags = (
        AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        | AccountFlags.NON_BOUND_INFLOW_ENABLED
        | AccountFlags.BOUND_EXTERNAL
    )
    ids = list(account_ids())
    for first in range(0, len(ids), 8189):
        chunk = ids[first : first + 8189]
        accounts = b"".join(
            pack_account_input(
                id=account_id, kind=AccountKind.CLASS_II, flags=flags, product=CLASS_II_PRODUCT
            )
            for account_id in chunk
        )
        assert set(await engine.submit_accounts(accounts)) == {0}
        fundings = b"".join(
            pack_transfer(
                id=(7 << 100) + account_id,
                debit_account_id=CLEARING_ID,
                credit_account_id=account_id,
                amount=FUNDING_MINOR,
                code=TransferCode.TOPUP_BOUND,
            )
            for account_id in chunk
        )
        assert set((await engine.submit_transfers(fundings)).result_codes()) == {0}


# --- the test ----------------------------------------------------------------------------


def start_child(mode: str, data: Path, origin_ns: int) -> subprocess.Popen[str]:
    from tests.repo_paths import REPO_ROOT

    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), mode, str(data), str(origin_ns)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip


def wait_for(process: subprocess.Popen[str], words: tuple[str, ...]) -> str:
    """Read the child's lines until one starts with one of `words`; that line."""
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        if not line:
            _out, err = process.communicate(timeout=60)
            raise AssertionError(
                f"child ended ({process.returncode}) before {words}: {err[-3000:]}"
            )
        if line.startswith(words):
            return line


def settled_in_journal(data: Path) -> int:
    """Interest transfers in the journal's SETTLE_INTEREST entries so far."""
    from core.entries import EntryKind
    from core.journal import JournalScan

    return sum(
        record.entry.count
        for record in JournalScan(data)
        if record.entry.kind == EntryKind.SETTLE_INTEREST
    )


def test_kill_9_during_settlement_then_rerun_pays_every_account_once(
    tmp_path: Path, crash_seed: int
) -> None:
    """Settlement killed by SIGKILL at random points (restarted and killed again, then
    run to the end): every account has exactly one interest transfer for the period,
    with the derived id and the exact amount; at least one kill fell in the middle of
    the settlement (some accounts paid, not all), and the day-end that finished says
    it resumed; the interest paid equals the sum, and debits equal credits."""
    rng = random.Random(crash_seed)
    data = tmp_path / "data"
    origin_ns = time.time_ns()
    setup = start_child("setup", data, origin_ns)
    wait_for(setup, ("SETUP",))
    setup.communicate(timeout=60)
    assert setup.returncode == 0
    killed_mid_settlement = 0
    done_line = None
    for _ in range(KILLS):
        process = start_child("dayend", data, origin_ns)
        wait_for(process, ("RUNNING",))
        time.sleep(rng.uniform(0.05, 0.8))
        process.send_signal(signal.SIGKILL)
        out, _err = process.communicate(timeout=60)
        if process.returncode != -signal.SIGKILL:
            done_line = next(line for line in out.splitlines() if line.startswith("DONE"))
            break
        settled = settled_in_journal(data)
        if 0 < settled < ACCOUNTS:
            killed_mid_settlement += 1
    if done_line is None:
        process = start_child("dayend", data, origin_ns)
        done_line = wait_for(process, ("DONE",))
        process.communicate(timeout=120)
        assert process.returncode == 0
    assert killed_mid_settlement >= 1, "no kill fell inside the settlement: nothing was shown"
    done = orjson.loads(done_line.removeprefix("DONE "))
    # It resumed after the accrual, which was never run twice (the accrual's step is
    # recorded before the settlement starts; a later kill may have let settlement finish).
    assert done["resumed_from"] in ("settlement", "maturities", "loans", "counters", "holds")
    assert not done["already_done"]
    check_paid_once(data)


def check_paid_once(data: Path) -> None:
    from core.data import DEFAULT_DEPOSITS_PATH
    from core.replay import recover_ledger
    from ledger.constants import INTEREST_EXPENSE_ID
    from ledger.deposits import demand_row_view, interest_transfer_id
    from ledger.interest import DayCount, day_of_date, interest_for_days
    from ledger.records import account_view, transfer_view
    from ledger.types import TransferCode
    from limits.deposits import load_catalog

    ledger = recover_ledger(data, 1 << 20, 1 << 22).ledger
    catalog = load_catalog(DEFAULT_DEPOSITS_PATH)
    day = day_of_date(SETTLEMENT_DATE)
    period = catalog.settlement_period(day)
    interest = interest_for_days(FUNDING_MINOR, 500, day, day + 1, DayCount.ACT_360)
    assert interest == 1
    assert settled_in_journal(data) == ACCOUNTS  # no account was even tried twice
    for account_id in account_ids():
        record = ledger.lookup_transfer(interest_transfer_id(account_id, period, 0))
        assert record is not None, account_id
        posted = transfer_view(record)
        assert posted.amount == interest and posted.code == TransferCode.INTEREST
        assert posted.credit_account_id == account_id and posted.result == 0
        row = demand_row_view(ledger.deposit_row(account_id))
        assert row.period_settled == period and row.interest_paid_total == interest, account_id
        account = account_view(ledger.lookup_account(account_id))
        assert account.credits_posted - account.debits_posted == FUNDING_MINOR + interest
    expense = account_view(ledger.lookup_account(INTEREST_EXPENSE_ID))
    assert expense.debits_posted - expense.credits_posted == ACCOUNTS * interest
    debits = credits = 0
    for slot in range(ledger.account_count):
        account = account_view(ledger.account_row(slot))
        debits += account.debits_posted
        credits += account.credits_posted
    assert debits == credits, (debits, credits)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
