"""The day-end batch (core/services/dayend.py) on a real engine and journal in a tmp dir,
with an injected clock for the services and the engine, so days pass without sleeping."""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from core.data import DEFAULT_RULES_PATH
from core.entries import EntryKind, pack_post_with_rows_payload
from core.journal import JournalScan
from core.services.dayend import (
    DAYEND_LAST_KEY,
    STEPS,
    DayEnd,
    DayEndRefusal,
    DayEndRefused,
    DayEndResult,
    Step,
)
from core.services.lifecycle import Lifecycle, Settings
from ledger.constants import BANK_CHANNEL, CLEARING_ID, INTEREST_EXPENSE_ID
from ledger.deposits import (
    FD_CLOSED,
    FD_OPEN,
    FD_ROLLOVER,
    demand_row_view,
    fixed_row_view,
    interest_transfer_id,
    pack_deposit_write,
    pack_fixed_row,
)
from ledger.interest import (
    DayCount,
    add_months,
    daily_units,
    day_of_date,
    day_weight,
    interest_for_days,
    term_interest,
)
from ledger.records import account_view, pack_account_input, pack_transfer, transfer_view
from ledger.types import (
    AccountFlags,
    AccountKind,
    CreateTransferResult,
    TransferCode,
    TransferFlags,
)
from limits.deposits import Term
from limits.rules import load_rules

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
CLASS_II_PRODUCT = 2
SAVINGS_PRODUCT = 4
FIXED_PRODUCT = 5
CLASS_II_FLAGS = (
    AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    | AccountFlags.NON_BOUND_INFLOW_ENABLED
    | AccountFlags.BOUND_EXTERNAL
)
FIRST_ACCOUNT = 6_222_000_000_000_000_001
DEMAND_RATE = 500  # 0.05%: the catalog's demand rate since 2025-05-20
WECHAT = 1


def at(date: datetime.date, hour: int, minute: int = 0) -> int:
    """`date` at hour:minute in Shanghai (the rules' time zone), in ns."""
    moment = datetime.datetime(date.year, date.month, date.day, hour, minute, tzinfo=SHANGHAI)
    return int(moment.timestamp()) * 1_000_000_000


class Clock:
    """The services' and the engine's time, moved by the test."""

    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def now_ns(self) -> int:
        return self.now


@asynccontextmanager
async def running(directory: Path, clock: Clock, **options: Any) -> AsyncIterator[Lifecycle]:
    settings = Settings(str(directory), expire_interval_s=3600.0, **options)
    lifecycle = Lifecycle(
        settings, load_rules(DEFAULT_RULES_PATH), now_ns=clock.now_ns, engine_clock=clock
    )

    async def no_openings() -> None:
        return None

    async with anyio.create_task_group() as task_group:
        await task_group.start(lifecycle.serve, no_openings)
        with anyio.fail_after(30):
            while not lifecycle.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        yield lifecycle
        task_group.cancel_scope.cancel()


async def open_funded(lifecycle: Lifecycle, balances: list[int], product: int) -> list[int]:
    """Demand accounts funded from their bound card; their ids."""
    engine = lifecycle.running_engine()
    kind = AccountKind.CLASS_II if product == CLASS_II_PRODUCT else AccountKind.SAVINGS
    first = FIRST_ACCOUNT + 1000 * product + engine.ledger.account_count
    ids = [first + index for index in range(len(balances))]
    accounts = b"".join(
        pack_account_input(id=account_id, kind=kind, flags=CLASS_II_FLAGS, product=product)
        for account_id in ids
    )
    assert set(await engine.submit_accounts(accounts)) == {0}
    fundings = b"".join(
        pack_transfer(
            id=(7 << 100) + account_id,
            debit_account_id=CLEARING_ID,
            credit_account_id=account_id,
            amount=amount,
            code=TransferCode.TOPUP_BOUND,
        )
        for account_id, amount in zip(ids, balances, strict=True)
        if amount
    )
    if fundings:
        results = await engine.submit_transfers(fundings)
        assert set(results.result_codes()) == {CreateTransferResult.OK}
    return ids


async def open_fixed_deposit(
    lifecycle: Lifecycle, payout_id: int, deposit_id: int, principal: int, open_day: int,
    term: Term, rollover: bool,
) -> None:  # fmt: skip
    """What the deposits service's opening does: the money and the row in one entry."""
    engine = lifecycle.running_engine()
    account = pack_account_input(
        id=deposit_id,
        kind=AccountKind.FIXED_DEPOSIT,
        flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
        product=FIXED_PRODUCT,
    )
    assert await engine.submit_accounts(account) == b"\0"
    rate = lifecycle.catalog.fixed_rate(term, open_day)

    def make(ledger: Any) -> tuple[EntryKind, int, bytes, int]:
        row = pack_fixed_row(
            principal=principal, rate=rate, open_day=open_day,
            maturity_day=add_months(open_day, term.months), term_months=term.months,
            day_count=DayCount.ACT_360, flags=FD_OPEN | (FD_ROLLOVER if rollover else 0),
            payout_slot=ledger.account_slot(payout_id), product=FIXED_PRODUCT,
        )  # fmt: skip
        move = pack_transfer(
            id=(9 << 100) + deposit_id, debit_account_id=payout_id,
            credit_account_id=deposit_id, amount=principal,
            code=TransferCode.FIXED_DEPOSIT, channel=BANK_CHANNEL,
        )  # fmt: skip
        payload = pack_post_with_rows_payload(move, pack_deposit_write(deposit_id, 0, row))
        return EntryKind.POST_WITH_ROWS, 1, payload, 1

    results, _timestamps, _balances = await engine.submit_generated(make)
    assert results[0] == CreateTransferResult.OK, CreateTransferResult(results[0])


async def read(lifecycle: Lifecycle, function: Any) -> Any:
    return await lifecycle.read(function)


def balance(ledger: Any, account_id: int) -> int:
    view = account_view(ledger.lookup_account(account_id))
    return int(view.credits_posted - view.debits_posted)


def run(test: Any) -> Any:
    """The test on asyncio and on trio (the engine and the services run on both)."""

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def runner(tmp_path: Path, backend: str) -> None:
        anyio.run(test, tmp_path / backend, backend=backend)

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


MARCH_19 = datetime.date(2026, 3, 19)
MARCH_20 = datetime.date(2026, 3, 20)
MARCH_21 = datetime.date(2026, 3, 21)


@run
async def test_steps_in_order_and_the_20th_settles_interest_credited_on_the_21st(
    tmp_path: Path,
) -> None:
    """Two day-ends (the 19th, then the 20th, a settlement day): each runs accrual,
    settlement, maturities, counters, holds in that order; the 19th settles nothing;
    the 20th pays every account its two days of interest, exactly what
    `interest_for_days` gives, from the interest-expense account, as transfers of the
    21st with the id derived from account and period; accounts with no balance get none;
    the sum of all balances stays zero."""
    clock = Clock(at(MARCH_19, 9))
    async with running(tmp_path, clock) as lifecycle:
        balances = [10_000_000, 123_456_789, 3_000_000, 0]
        class_ii = await open_funded(lifecycle, balances, CLASS_II_PRODUCT)
        savings = await open_funded(lifecycle, [50_000_000], SAVINGS_PRODUCT)
        dayend = DayEnd(lifecycle)
        clock.now = at(MARCH_20, 0, 5)
        first = await dayend.run(MARCH_19)
        assert [outcome.step for outcome in first.steps] == list(STEPS)
        assert not first.already_done and first.resumed_from is None
        assert first.step(Step.ACCRUAL).count == 4  # the empty account earns nothing
        assert not first.step(Step.SETTLEMENT).due and first.step(Step.SETTLEMENT).count == 0
        clock.now = at(MARCH_21, 0, 5)
        second = await dayend.run(MARCH_20)
        settlement = second.step(Step.SETTLEMENT)
        assert settlement.due and settlement.count == 4 and settlement.details["failed"] == 0
        period = lifecycle.catalog.settlement_period(day_of_date(MARCH_20))
        assert settlement.details["period"] == period

        def look(ledger: Any) -> dict[str, Any]:
            ids = [*class_ii, *savings]
            return {
                "balances": [balance(ledger, i) for i in ids],
                "transfers": [
                    ledger.lookup_transfer(interest_transfer_id(i, period, 0)) for i in ids
                ],
                "rows": [demand_row_view(ledger.deposit_row(i)) for i in ids],
                "expense": balance(ledger, INTEREST_EXPENSE_ID),
                "total": sum(
                    balance(ledger, ledger.account_id_at(slot))
                    for slot in range(ledger.account_count)
                ),
            }

        seen = await read(lifecycle, look)
    start, end = day_of_date(MARCH_19), day_of_date(MARCH_21)
    paid = 0
    for index, amount in enumerate([*balances, 50_000_000]):
        interest = interest_for_days(amount, DEMAND_RATE, start, end, DayCount.ACT_360)
        assert seen["balances"][index] == amount + interest
        if amount == 0:
            assert seen["transfers"][index] is None
            continue
        assert interest > 0
        paid += interest
        posted = transfer_view(seen["transfers"][index])
        assert posted.amount == interest and posted.code == TransferCode.INTEREST
        assert posted.debit_account_id == INTEREST_EXPENSE_ID
        assert posted.business_day == day_of_date(MARCH_21)  # credited on the 21st
        row = seen["rows"][index]
        assert row.period_settled == period and row.accrued_units == 0
        assert row.interest_paid_total == interest
    assert seen["expense"] == -paid
    assert seen["total"] == 0


@run
async def test_a_rerun_changes_nothing_and_says_so(tmp_path: Path) -> None:
    """The day-end of a day already done answers `already_done` with the first run's
    figures and journals nothing: the ledger's digest and the journal are unchanged."""
    clock = Clock(at(MARCH_19, 9))
    async with running(tmp_path, clock) as lifecycle:
        await open_funded(lifecycle, [10_000_000, 20_000_000], CLASS_II_PRODUCT)
        dayend = DayEnd(lifecycle)
        clock.now = at(MARCH_21, 0, 5)
        await dayend.run(MARCH_19)
        done = await dayend.run(MARCH_20)
        digest = await read(lifecycle, lambda ledger: ledger.digest())
        last_seq = lifecycle.running_engine().store.last_seq
        again = await dayend.run(MARCH_20)
        assert again.already_done and not done.already_done
        assert again.steps == done.steps
        assert await read(lifecycle, lambda ledger: ledger.digest()) == digest
        assert lifecycle.running_engine().store.last_seq == last_seq
        assert dayend.last_done() == day_of_date(MARCH_20)


@run
async def test_refusals_name_the_day(tmp_path: Path) -> None:
    """Today and a future day are refused as not ended; a day after a missing one is
    refused naming the missing day; a day before the last day-end that never ran is
    refused; none of them changes anything."""
    clock = Clock(at(MARCH_19, 9))
    async with running(tmp_path, clock) as lifecycle:
        await open_funded(lifecycle, [10_000_000], CLASS_II_PRODUCT)
        dayend = DayEnd(lifecycle)
        digest = await read(lifecycle, lambda ledger: ledger.digest())
        for day in (MARCH_19, MARCH_20):
            with pytest.raises(DayEndRefused) as caught:
                await dayend.run(day)
            assert caught.value.reason == DayEndRefusal.NOT_ENDED
        assert await read(lifecycle, lambda ledger: ledger.digest()) == digest
        clock.now = at(datetime.date(2026, 3, 23), 1)
        await dayend.run(MARCH_19)
        with pytest.raises(DayEndRefused) as caught:
            await dayend.run(MARCH_21)
        assert caught.value.reason == DayEndRefusal.SKIPPED
        assert caught.value.extras["missing_date"] == "2026-03-20"
        assert "2026-03-20" in str(caught.value)
        with pytest.raises(DayEndRefused) as caught:
            await dayend.run(datetime.date(2026, 3, 18))
        assert caught.value.reason == DayEndRefusal.SUPERSEDED
        assert dayend.last_done() == day_of_date(MARCH_19)
        assert lifecycle.running_engine().state.get(b"dayend/%d" % day_of_date(MARCH_21)) is None


@run
async def test_maturity_pays_out_and_rollover_renews_at_the_rate_of_that_day(
    tmp_path: Path,
) -> None:
    """A deposit maturing on the 20th is handled by the day-end of the 19th (which runs
    once the 20th has begun): without rollover, principal and the term's interest go to
    the payout account and the row is closed; with rollover, the interest goes into the
    deposit and a new term starts on the maturity day at that day's rate. A rerun pays
    nothing twice."""
    clock = Clock(at(datetime.date(2025, 12, 20), 10))
    async with running(tmp_path, clock) as lifecycle:
        payout, other = await open_funded(lifecycle, [9_000_000, 9_000_000], CLASS_II_PRODUCT)
        open_day = day_of_date(datetime.date(2025, 12, 20))
        paid, renewed = FIRST_ACCOUNT + 900_001, FIRST_ACCOUNT + 900_002
        await open_fixed_deposit(lifecycle, payout, paid, 5_000_000, open_day, Term.M3, False)
        await open_fixed_deposit(lifecycle, other, renewed, 5_000_000, open_day, Term.M3, True)
        maturity = add_months(open_day, 3)
        assert maturity == day_of_date(MARCH_20)
        dayend = DayEnd(lifecycle)
        clock.now = at(MARCH_19, 9)
        with pytest.raises(DayEndRefused):
            await dayend.run(MARCH_19)
        clock.now = at(MARCH_20, 0, 5)
        result = await dayend.run(datetime.date(2026, 3, 18))  # the first day-end: not yet
        assert result.step(Step.MATURITIES).count == 0
        result = await dayend.run(MARCH_19)
        maturities = result.step(Step.MATURITIES)
        assert maturities.count == 2
        assert maturities.details == {"paid_out": 1, "rolled_over": 1, "failed": 0}
        rerun = await dayend.run(MARCH_19)
        assert rerun.already_done

        def look(ledger: Any) -> dict[str, Any]:
            return {
                "payout": balance(ledger, payout), "other": balance(ledger, other),
                "paid": balance(ledger, paid), "renewed": balance(ledger, renewed),
                "paid_row": fixed_row_view(ledger.deposit_row(paid)),
                "renewed_row": fixed_row_view(ledger.deposit_row(renewed)),
                "due": list(ledger.due_fixed_deposits(maturity)),
            }  # fmt: skip

        seen = await read(lifecycle, look)
        rate_then = lifecycle.catalog.fixed_rate(Term.M3, maturity)
    first_rate = 6_500  # 0.65% for 3 months since 2025-05-20
    interest = term_interest(5_000_000, first_rate, 3)
    assert interest == 8_125
    assert seen["payout"] == 9_000_000 + interest
    assert seen["paid"] == 0 and seen["paid_row"].flags & FD_CLOSED
    assert seen["other"] == 4_000_000
    assert seen["renewed"] == 5_000_000 + interest
    row = seen["renewed_row"]
    assert row.principal == 5_000_000 + interest and row.rate == rate_then
    assert row.open_day == maturity and row.maturity_day == add_months(maturity, 3)
    assert not row.flags & FD_CLOSED and row.flags & FD_ROLLOVER
    assert seen["due"] == []


@run
async def test_counters_purged_and_holds_expired(tmp_path: Path) -> None:
    """The limit-counter rollover drops the ended day's channel counters (the wechat
    day counter of the 19th reads 0 afterwards) and the expiry step voids a hold whose
    timeout passed (the engine's own idle expiry is an hour away in this test)."""
    clock = Clock(at(MARCH_19, 9))
    async with running(tmp_path, clock) as lifecycle:
        payer, payee = await open_funded(lifecycle, [1_000_000, 1_000_000], CLASS_II_PRODUCT)
        engine = lifecycle.running_engine()
        spent = pack_transfer(
            id=501,
            debit_account_id=payer,
            credit_account_id=payee,
            amount=1_234,
            code=TransferCode.TRANSFER,
            channel=WECHAT,
        )
        hold = pack_transfer(id=502, debit_account_id=payer, credit_account_id=payee,
                             amount=777, code=TransferCode.TRANSFER, channel=WECHAT,
                             flags=TransferFlags.PENDING, timeout_s=60)  # fmt: skip
        results = await engine.submit_transfers(spent + hold)
        assert set(results.result_codes()) == {CreateTransferResult.OK}
        day = day_of_date(MARCH_19)
        used = await read(lifecycle, lambda ledger: ledger.channel_used(payer, WECHAT, day))
        assert used == 1_234 + 777
        clock.now = at(MARCH_20, 0, 5)
        result = await DayEnd(lifecycle).run(MARCH_19)
        assert result.step(Step.COUNTERS).count >= 1
        assert result.step(Step.HOLDS).count == 1
        after = await read(lifecycle, lambda ledger: (
            ledger.channel_used(payer, WECHAT, day), ledger.account_pending(payer),
            ledger.pending_expiry_count,
        ))  # fmt: skip
    assert after[0] == 0
    assert after[1] == (0, 0) and after[2] == 0


@run
async def test_a_failed_step_resumes_where_it_stopped(tmp_path: Path) -> None:
    """A day-end that stops after its accrual (here the settlement step fails once)
    resumes at the settlement on the rerun: the accrual is recorded and not repeated
    (one ACCRUE_INTEREST entry in the journal), and the interest is paid once."""
    clock = Clock(at(MARCH_20, 9))
    async with running(tmp_path, clock) as lifecycle:
        (account,) = await open_funded(lifecycle, [10_000_000], CLASS_II_PRODUCT)
        dayend = DayEnd(lifecycle)
        clock.now = at(MARCH_21, 0, 5)
        failing = dayend._settle

        async def crash(*args: Any) -> Any:
            raise OSError("the settlement step stopped")

        dayend._settle = crash  # type: ignore[method-assign]
        with pytest.raises(OSError, match="stopped"):
            await dayend.run(MARCH_20)
        dayend._settle = failing  # type: ignore[method-assign]
        result = await dayend.run(MARCH_20)
        assert result.resumed_from == Step.SETTLEMENT
        assert result.step(Step.SETTLEMENT).count == 1
        accrued_day = await read(lifecycle, lambda ledger: ledger.accrued_day)
        assert accrued_day == day_of_date(MARCH_20)
        period = lifecycle.catalog.settlement_period(day_of_date(MARCH_20))
        posted = await read(
            lifecycle,
            lambda ledger: ledger.lookup_transfer(interest_transfer_id(account, period, 0)),
        )
        assert transfer_view(posted).amount == interest_for_days(
            10_000_000, DEMAND_RATE, day_of_date(MARCH_20), day_of_date(MARCH_21), DayCount.ACT_360
        )
    accruals = journal_kinds(tmp_path).count(EntryKind.ACCRUE_INTEREST)
    assert accruals == 1


def journal_kinds(directory: Path) -> list[int]:
    """The kinds of every entry in the data directory's journal, in order."""
    return [record.entry.kind for record in JournalScan(directory)]


@run
async def test_a_log_without_room_refuses_the_settlement_whole(tmp_path: Path) -> None:
    """With a transfer log too small for the period's interest transfers, the settlement
    is refused before its first chunk (LOG_FULL, naming both figures): no interest
    transfer is posted and the accrual stays recorded."""
    clock = Clock(at(MARCH_20, 9))
    async with running(tmp_path, clock, transfer_capacity=64) as lifecycle:
        ids = await open_funded(lifecycle, [5_000_000] * 40, CLASS_II_PRODUCT)
        dayend = DayEnd(lifecycle)
        clock.now = at(MARCH_21, 0, 5)
        with pytest.raises(DayEndRefused) as caught:
            await dayend.run(MARCH_20)
        refusal = caught.value
        assert refusal.reason == DayEndRefusal.LOG_FULL
        assert refusal.extras["needed"] == 40 and refusal.extras["room"] < 40
        period = lifecycle.catalog.settlement_period(day_of_date(MARCH_20))
        posted = await read(lifecycle, lambda ledger: [
            ledger.lookup_transfer(interest_transfer_id(i, period, 0)) for i in ids
        ])  # fmt: skip
        assert posted == [None] * 40
        accrued_day = await read(lifecycle, lambda ledger: ledger.accrued_day)
        assert accrued_day == day_of_date(MARCH_20)


@run
async def test_the_engine_runs_the_day_end_itself_when_configured(tmp_path: Path) -> None:
    """With `dayend_automatic`, once the business day has ended the day-end of that day
    runs by itself (and is recorded done), without anyone calling it."""
    clock = Clock(at(MARCH_19, 23, 50))
    async with running(tmp_path, clock, dayend_automatic=True) as lifecycle:
        await open_funded(lifecycle, [10_000_000], CLASS_II_PRODUCT)
        engine = lifecycle.running_engine()
        await anyio.sleep(1.5)
        assert engine.state.get(DAYEND_LAST_KEY) is None  # the 19th has not ended
        clock.now = at(MARCH_20, 0, 1)
        with anyio.fail_after(20):
            while engine.state.get(DAYEND_LAST_KEY) is None:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert int(engine.state[DAYEND_LAST_KEY]) == day_of_date(MARCH_19)
        assert await read(lifecycle, lambda ledger: ledger.accrued_day) == day_of_date(MARCH_19)


def test_result_json_names_every_step() -> None:
    """The JSON form (the CLI's --json) carries the date and each step's figures."""
    from core.services.dayend import StepOutcome

    steps = tuple(StepOutcome(step, True, 3, 0.5, {}) for step in STEPS)
    data = DayEndResult(day_of_date(MARCH_20), False, None, steps).to_json()
    assert data["date"] == "2026-03-20"
    assert [step["step"] for step in data["steps"]] == [str(step) for step in STEPS]


def test_an_edited_catalog_file_is_not_put_in_force_only_an_approved_version(
    tmp_path: Path,
) -> None:
    """The catalog file is the first version: an edit while serving is not picked up
    (parameters change through approvals only); an approved version put in force
    (`install_catalog`, what the approvals service calls) is."""
    from core.data import DEFAULT_DEPOSITS_PATH
    from limits.deposits import parse_catalog

    path = tmp_path / "deposits.toml"
    original = DEFAULT_DEPOSITS_PATH.read_text()
    path.write_text(original)
    clock = Clock(at(MARCH_19, 9))
    lifecycle = Lifecycle(
        Settings(str(tmp_path / "data"), deposits_path=str(path)),
        load_rules(DEFAULT_RULES_PATH),
        now_ns=clock.now_ns,
    )
    assert lifecycle.catalog.demand_rate(day_of_date(MARCH_19)) == DEMAND_RATE
    new_set = (
        '\n[[rates]]\neffective = 2026-06-01\ndemand = "0.04%"\nfixed = { "3m" = "0.60%",'
        ' "6m" = "0.80%", "1y" = "0.90%", "2y" = "1.00%", "3y" = "1.20%", "5y" = "1.25%" }\n'
    )
    path.write_text(original + new_set)
    june = day_of_date(datetime.date(2026, 6, 2))
    assert lifecycle.catalog.demand_rate(june) == DEMAND_RATE  # the edit is not in force
    lifecycle.install_catalog(parse_catalog(original + new_set, "approved"))
    assert lifecycle.catalog.demand_rate(june) == 400
    assert lifecycle.catalog.demand_rate(day_of_date(MARCH_19)) == DEMAND_RATE


@pytest.mark.pg
def test_on_postgresql_the_day_end_recovers_to_the_same_state(tmp_path: Path) -> None:
    """On the PostgreSQL store: a day-end with settlement and a maturity, then the store
    opened again (the ledger rebuilt from PostgreSQL): the same digest, the interest
    transfers and the closed deposit row are there, and the rerun says it was done."""
    from tests.pg_helpers import fresh_database_dsn

    dsn = fresh_database_dsn()

    async def main() -> None:
        clock = Clock(at(datetime.date(2025, 12, 20), 10))
        async with running(tmp_path, clock, store_dsn=dsn) as lifecycle:
            payout, other = await open_funded(lifecycle, [9_000_000, 7_000_000], CLASS_II_PRODUCT)
            open_day = day_of_date(datetime.date(2025, 12, 20))
            deposit = FIRST_ACCOUNT + 900_001
            await open_fixed_deposit(
                lifecycle, payout, deposit, 5_000_000, open_day, Term.M3, False
            )
            dayend = DayEnd(lifecycle)
            clock.now = at(MARCH_20, 0, 5)
            await dayend.run(datetime.date(2026, 3, 18))
            await dayend.run(MARCH_19)
            clock.now = at(MARCH_21, 0, 5)
            done = await dayend.run(MARCH_20)
            assert done.step(Step.SETTLEMENT).count == 2
            digest = await read(lifecycle, lambda ledger: ledger.digest())
        async with running(tmp_path, clock, store_dsn=dsn) as lifecycle:
            assert lifecycle.recovery_info["store"] == "postgresql"
            assert await read(lifecycle, lambda ledger: ledger.digest()) == digest
            assert (await DayEnd(lifecycle).run(MARCH_20)).already_done
            period = lifecycle.catalog.settlement_period(day_of_date(MARCH_20))
            ids = [interest_transfer_id(i, period, 0) for i in (payout, other)]
            seen = await read(lifecycle, lambda ledger: (
                [ledger.lookup_transfer(transfer_id) for transfer_id in ids],
                fixed_row_view(ledger.deposit_row(deposit)).flags,
            ))  # fmt: skip
        assert None not in seen[0] and seen[1] & FD_CLOSED

    anyio.run(main)


@run
async def test_the_engine_accrues_an_ended_day_on_its_end_of_day_balance(tmp_path: Path) -> None:
    """The day boundary: a top-up posted just after midnight, before the day-end of the
    day that ended runs, does not earn that day's interest: the engine accrued the ended
    day before applying anything of the next one. With the boundary accrual off (the
    benchmark's setting) the late day-end accrues on the balance it finds: the top-up
    then earns a day it was not there, which is what the boundary accrual prevents."""
    weight = day_weight(DayCount.ACT_360, day_of_date(MARCH_19))
    for at_boundary in (True, False):
        clock = Clock(at(MARCH_19, 9))
        directory = tmp_path / f"boundary-{at_boundary}"
        async with running(directory, clock, accrue_at_day_boundary=at_boundary) as lifecycle:
            (account,) = await open_funded(lifecycle, [10_000_000], CLASS_II_PRODUCT)
            clock.now = at(MARCH_20, 0, 1)
            (late,) = await open_funded(lifecycle, [0], CLASS_II_PRODUCT)
            topup = pack_transfer(
                id=(8 << 100) + account, debit_account_id=CLEARING_ID,
                credit_account_id=account, amount=90_000_000, code=TransferCode.TOPUP_BOUND,
            )  # fmt: skip
            engine = lifecycle.running_engine()
            assert set((await engine.submit_transfers(topup)).result_codes()) == {0}
            assert late  # an account opened after midnight: nothing to accrue for the 19th
            clock.now = at(MARCH_20, 0, 5)
            result = await DayEnd(lifecycle).run(MARCH_19)
            assert result.step(Step.ACCRUAL).count == 1
            row = await read(
                lifecycle,
                lambda ledger, account=account: demand_row_view(ledger.deposit_row(account)),
            )
            end_of_day = daily_units(10_000_000, DEMAND_RATE, weight)
            if at_boundary:
                assert row.accrued_units == end_of_day
            else:
                assert row.accrued_units == daily_units(100_000_000, DEMAND_RATE, weight)
