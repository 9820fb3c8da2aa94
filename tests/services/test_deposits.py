"""The deposit services without HTTP: a real engine on a real journal in a tmp dir, the
catalog of core/data/deposits.toml, typed commands, and a clock the tests move (the
services' and the engine's) so a deposit is held for 100 days without sleeping.

Each test ends by checking that the ledger still balances: the balances of all accounts,
the bank's own included, sum to zero."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from core.services.actors import Actors, ChannelActors, RoleLimits
from core.services.bank import Bank
from core.services.commands import (
    Caller,
    Consent,
    CorrectInterest,
    Movement,
    OpenAccount,
    OpenFixedDeposit,
    QuoteFixedDeposit,
    RegisterCustomer,
    WithdrawFixedDeposit,
)
from core.services.lifecycle import Settings
from core.services.refusals import Code, Refused
from ledger.constants import INTEREST_EXPENSE_ID
from ledger.deposits import FD_CLOSED, FD_OPEN, FD_PARTIAL_DONE, fixed_row_view
from ledger.records import account_view
from ledger.types import CreateTransferResult
from limits.calendar import day_of_date
from limits.rules import load_rules
from tests.provider_helpers import bind_card, providers, register_at_counter, session_proof

R = CreateTransferResult
NS_PER_DAY = 86_400 * 1_000_000_000
# 2026-01-05 02:00 UTC: 10:00 in Shanghai, well inside the business day 2026-01-05.
START_NS = 1_767_578_400_000_000_000
COUNTER = Caller("counter", "counter", 3)
APP = Caller("app", "app", 2)
BANK = Caller("bank", "internal", 6)
ID_NUMBER = "11010519491231002X"
OTHER_ID_NUMBER = "110105198501010012"
PASSWORD = "135790"
CNY = 100


class Clock:
    """The services' and the engine's clock: moved by the tests, never slept on."""

    def __init__(self) -> None:
        self.now = START_NS

    def now_ns(self) -> int:
        return self.now

    def advance_days(self, days: int) -> None:
        self.now += days * NS_PER_DAY


@asynccontextmanager
async def running_bank(
    directory: Path, clock: Clock, actors: Actors | None = None
) -> AsyncIterator[Bank]:
    settings = Settings(str(directory), scrypt_n=1 << 10, token_ttl_s=60)
    async with providers() as simulated, anyio.create_task_group() as task_group:
        bank = Bank(
            settings,
            load_rules("examples/limits.toml"),
            providers=simulated,
            now_ns=clock.now_ns,
            engine_clock=clock,
            actors=actors,
        )
        await task_group.start(bank.serve)
        with anyio.fail_after(30):
            while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        yield bank
        task_group.cancel_scope.cancel()


def run(test: Callable[[Path], object]) -> Callable[[Path], None]:
    def runner(tmp_path: Path) -> None:
        anyio.run(test, tmp_path)  # type: ignore[arg-type]

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


async def customer_with_account(
    bank: Bank, amount_minor: int, id_number: str = ID_NUMBER, name: str = "张三"
) -> tuple[str, int]:
    """A registered customer with a funded Class I account (cash at the counter)."""
    mobile = "13800138000" if id_number == ID_NUMBER else "13800138001"
    customer = await register_at_counter(bank, name, id_number, mobile)
    opening = OpenAccount(COUNTER, customer.customer_id, 1, None, PASSWORD)
    account_id = (await bank.accounts.open(opening)).account_id
    if amount_minor:
        move = Movement(COUNTER, f"fund-{account_id}", account_id, amount_minor)
        await bank.payments.cash_deposit(move)
    return customer.customer_id, account_id


def opening(
    customer_id: str,
    source: int,
    amount_minor: int = 50_000 * CNY,
    term: str = "1y",
    key: str = "fd-1",
    **fields: Any,
) -> OpenFixedDeposit:
    return OpenFixedDeposit(
        COUNTER, key, customer_id, source, amount_minor, term, Consent(password=PASSWORD),
        **fields,
    )  # fmt: skip


def withdrawal(account_id: int, amount_minor: int | None, key: str) -> WithdrawFixedDeposit:
    return WithdrawFixedDeposit(COUNTER, key, account_id, amount_minor, Consent(password=PASSWORD))


async def refusal_of(call: Callable[[], Any]) -> Refused:
    with pytest.raises(Refused) as caught:
        await call()
    return caught.value


async def balance(bank: Bank, account_id: int) -> int:
    raw = await bank.core.read(lambda ledger: ledger.lookup_account(account_id))
    assert raw is not None, account_id
    view = account_view(raw)
    return int(view.credits_posted - view.debits_posted)


async def balances_sum(bank: Bank) -> int:
    """The sum of every account's posted balance, the bank's own accounts included."""

    def read(ledger: Any) -> int:
        total = 0
        for slot in range(ledger.account_count):
            view = account_view(ledger.lookup_account(ledger.account_id_at(slot)))
            total += view.credits_posted - view.debits_posted
        return total

    total: int = await bank.core.read(read)
    return total


async def fixed_row(bank: Bank, account_id: int) -> Any:
    raw = await bank.core.read(lambda ledger: ledger.deposit_row(account_id))
    assert raw is not None
    return fixed_row_view(raw)


@run
async def test_products_and_the_quote_of_the_worked_example(tmp_path: Path) -> None:
    """The catalog is published with its history and the rates in force; a quote for
    50,000 CNY for 1 year at 0.95% (the rate since 2025-05-20) pays 475.00 at maturity,
    and records nothing."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        products = bank.deposits.products()
        assert products["in_force"]["demand"] == {"rate": "0.05%", "rate_ppm": 500}
        assert products["in_force"]["fixed"]["1y"] == {"rate": "0.95%", "rate_ppm": 9_500}
        assert [item["effective"] for item in products["history"]][-1] == "2025-05-20"
        before = await bank.core.read(lambda ledger: ledger.log_count)
        quote = bank.deposits.quote_new(QuoteFixedDeposit(COUNTER, 50_000 * CNY, "1y"))
        assert (quote.rate, quote.rate_ppm, quote.term) == ("0.95%", 9_500, "1y")
        assert quote.at_maturity.interest_minor == 47_500
        assert quote.at_maturity.total_minor == 5_047_500
        assert (quote.open_date, quote.maturity_date) == ("2026-01-05", "2027-01-05")
        assert quote.today.interest_minor == 0 and quote.today.total_minor == 50_000 * CNY
        assert await bank.core.read(lambda ledger: ledger.log_count) == before
        unknown = await refusal_of(
            lambda: anyio.to_thread.run_sync(
                bank.deposits.quote_new, QuoteFixedDeposit(COUNTER, 50_000 * CNY, "7y")
            )
        )
        assert unknown.refusal.code == Code.DEPOSIT_TERM_UNKNOWN
        small = await refusal_of(
            lambda: anyio.to_thread.run_sync(
                bank.deposits.quote_new, QuoteFixedDeposit(COUNTER, 49 * CNY, "3m")
            )
        )
        assert small.refusal.code == Code.DEPOSIT_BELOW_MINIMUM


@run
async def test_open_moves_the_money_writes_the_row_and_is_idempotent(tmp_path: Path) -> None:
    """Opening moves the principal from the customer's Class I account to a new
    fixed-deposit account the customer owns (listed with their accounts), in one entry
    that also writes the deposit row; a retry with the key answers the first opening
    (replayed, nothing moves again), also on a later day; the key with another amount
    is refused as reused."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        customer_id, source = await customer_with_account(bank, 60_000 * CNY)
        log_before = await bank.core.read(lambda ledger: ledger.log_count)
        opened = await bank.deposits.open(opening(customer_id, source))
        deposit = opened.deposit
        account_id = int(deposit.account_id)
        assert not opened.replayed
        assert (deposit.status, deposit.principal_minor, deposit.balance_minor) == (
            "open", 5_000_000, 5_000_000,
        )  # fmt: skip
        assert (deposit.rate, deposit.term, deposit.day_count) == ("0.95%", "1y", "360")
        assert (deposit.open_date, deposit.maturity_date) == ("2026-01-05", "2027-01-05")
        assert deposit.payout_account_id == str(source) and not deposit.rollover
        assert deposit.interest_at_maturity_minor == 47_500
        assert await balance(bank, source) == 1_000_000
        assert await balance(bank, account_id) == 5_000_000
        assert await bank.core.read(lambda ledger: ledger.log_count) == log_before + 1
        row = await fixed_row(bank, account_id)
        assert row.flags == FD_OPEN and row.principal == 5_000_000 and row.rate == 9_500
        assert row.open_day == day_of_date(2026, 1, 5)
        assert row.maturity_day == day_of_date(2027, 1, 5)
        listed = bank.customers.read(COUNTER, customer_id).accounts
        assert {"account_id": str(account_id), "class": "fixed_deposit", "closed": False} in [
            dict(item) for item in listed
        ]

        clock.advance_days(1)
        again = await bank.deposits.open(opening(customer_id, source))
        assert again.replayed and again.deposit.account_id == deposit.account_id
        assert again.transfer_id == opened.transfer_id
        assert again.deposit.rate == "0.95%" and again.deposit.open_date == "2026-01-05"
        assert await balance(bank, source) == 1_000_000
        assert await bank.core.read(lambda ledger: ledger.log_count) == log_before + 1
        other = await refusal_of(
            lambda: bank.deposits.open(opening(customer_id, source, 40_000 * CNY))
        )
        assert other.refusal.code == Code.IDEMPOTENCY_KEY_REUSED
        assert await balances_sum(bank) == 0


@run
async def test_full_early_withdrawal_after_100_days_pays_6_94(tmp_path: Path) -> None:
    """The worked example: 50,000 CNY withdrawn after 100 days earns the demand rate of
    the day, 0.05% on a 360-day year: 6.94 CNY from the interest-expense account; the
    deposit is closed; a retry (even a day later) answers the same figures and moves
    nothing; any further withdrawal is refused as closed."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        customer_id, source = await customer_with_account(bank, 50_000 * CNY)
        opened = await bank.deposits.open(opening(customer_id, source))
        account_id = int(opened.deposit.account_id)
        clock.advance_days(100)
        quote = await bank.deposits.quote(COUNTER, account_id)
        assert quote.today.days_held == 100 and quote.today.rate == "0.05%"
        assert quote.today.interest_minor == 694 and quote.today.total_minor == 5_000_694
        assert quote.at_maturity.interest_minor == 47_500

        done = await bank.deposits.withdraw(withdrawal(account_id, None, "w-1"))
        assert (done.kind, done.principal_minor, done.interest_minor) == ("full", 5_000_000, 694)
        assert done.total_minor == 5_000_694 and not done.replayed
        assert len(done.transfer_ids) == 2
        assert done.deposit.status == "closed"
        assert await balance(bank, source) == 5_000_694
        assert await balance(bank, account_id) == 0
        assert await balance(bank, INTEREST_EXPENSE_ID) == -694
        row = await fixed_row(bank, account_id)
        assert row.flags & FD_CLOSED

        clock.advance_days(1)
        again = await bank.deposits.withdraw(withdrawal(account_id, None, "w-1"))
        assert again.replayed and again.interest_minor == 694
        assert again.transfer_ids == done.transfer_ids
        assert await balance(bank, source) == 5_000_694
        closed = await refusal_of(
            lambda: bank.deposits.withdraw(withdrawal(account_id, None, "w-2"))
        )
        assert closed.refusal.code == Code.DEPOSIT_CLOSED
        quote_closed = await refusal_of(lambda: bank.deposits.quote(COUNTER, account_id))
        assert quote_closed.refusal.code == Code.DEPOSIT_CLOSED
        history = await bank.deposits.interest(COUNTER, source)
        assert [(item.kind, item.amount_minor) for item in history.items] == [
            ("deposit_interest", 694)
        ]
        assert await balances_sum(bank) == 0


@run
async def test_one_partial_withdrawal_the_rest_keeps_its_rate(tmp_path: Path) -> None:
    """A partial withdrawal pays the part at the demand rate for the days held (20,000
    CNY, 100 days, 0.05%, 360: 2.78 CNY); the rest keeps 0.95% and its maturity. A
    second partial is refused, as is more than the deposit holds and a part that
    would leave less than the minimum; withdrawing all of the rest is allowed."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        customer_id, source = await customer_with_account(bank, 50_000 * CNY)
        opened = await bank.deposits.open(opening(customer_id, source))
        account_id = int(opened.deposit.account_id)
        clock.advance_days(100)
        too_much = await refusal_of(
            lambda: bank.deposits.withdraw(withdrawal(account_id, 50_000 * CNY + 1, "w-big"))
        )
        assert too_much.refusal.code == Code.DEPOSIT_AMOUNT_EXCEEDS_PRINCIPAL
        assert too_much.refusal.extras["principal_minor"] == 5_000_000
        leaves_too_little = await refusal_of(
            lambda: bank.deposits.withdraw(withdrawal(account_id, 5_000_000 - 1, "w-rest"))
        )
        assert leaves_too_little.refusal.code == Code.DEPOSIT_BELOW_MINIMUM

        part = await bank.deposits.withdraw(withdrawal(account_id, 20_000 * CNY, "w-part"))
        assert (part.kind, part.principal_minor, part.interest_minor) == ("partial", 2_000_000, 278)
        deposit = part.deposit
        assert deposit.status == "open" and deposit.partial_withdrawn
        assert (deposit.principal_minor, deposit.rate, deposit.maturity_date) == (
            3_000_000, "0.95%", "2027-01-05",
        )  # fmt: skip
        assert deposit.interest_at_maturity_minor == 28_500
        row = await fixed_row(bank, account_id)
        assert row.flags == FD_OPEN | FD_PARTIAL_DONE and row.principal == 3_000_000
        assert await balance(bank, account_id) == 3_000_000
        assert await balance(bank, source) == 2_000_278

        second = await refusal_of(
            lambda: bank.deposits.withdraw(withdrawal(account_id, 10_000 * CNY, "w-part-2"))
        )
        assert second.refusal.code == Code.DEPOSIT_PARTIAL_ALREADY_TAKEN
        retried = await bank.deposits.withdraw(withdrawal(account_id, 20_000 * CNY, "w-part"))
        assert retried.replayed and retried.kind == "partial" and retried.interest_minor == 278
        conflict = await refusal_of(
            lambda: bank.deposits.withdraw(withdrawal(account_id, 10_000 * CNY, "w-part"))
        )
        assert conflict.refusal.code == Code.TRANSFER_REFUSED
        assert conflict.refusal.ledger_code == R.EXISTS_WITH_DIFFERENT_USER_DATA

        rest = await bank.deposits.withdraw(withdrawal(account_id, None, "w-all"))
        assert (rest.kind, rest.principal_minor) == ("full", 3_000_000)
        assert rest.interest_minor == 417  # 30,000 CNY, 100 days, 0.05%, 360: 4.1667
        assert await balance(bank, source) == 2_000_278 + 3_000_417
        assert await balances_sum(bank) == 0


@run
async def test_refusals_are_typed_and_change_nothing(tmp_path: Path) -> None:
    """Every refusal of the issue, each a typed code and no money moved: an unknown term,
    below the minimum, another customer's account, a Class III source, a withdrawal from
    a matured deposit, from an account that is not a fixed deposit, a wrong password;
    a debit the ledger refuses (funds) closes the empty deposit account and its key
    answers the same refusal again."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        customer_id, source = await customer_with_account(bank, 10_000 * CNY)
        _, other_source = await customer_with_account(bank, 10_000 * CNY, OTHER_ID_NUMBER, "李四")
        checks = [
            (opening(customer_id, source, term="7y", key="k1"), Code.DEPOSIT_TERM_UNKNOWN),
            (opening(customer_id, source, 49 * CNY, key="k2"), Code.DEPOSIT_BELOW_MINIMUM),
            (opening(customer_id, other_source, key="k3"), Code.ACCOUNT_NOT_CUSTOMERS),
            (
                opening(customer_id, source, key="k4", payout_account_id=other_source),
                Code.ACCOUNT_NOT_CUSTOMERS,
            ),
            (opening("c" + "0" * 20, source, key="k5"), Code.CUSTOMER_NOT_FOUND),
        ]
        for command, code in checks:
            assert (await refusal_of(lambda c=command: bank.deposits.open(c))).refusal.code == code
        wrong = opening(customer_id, source, 1_000 * CNY, key="k6")
        wrong.consent = Consent(password="246801")
        assert (await refusal_of(lambda: bank.deposits.open(wrong))).refusal.code == (
            Code.PASSWORD_WRONG
        )
        # A Class III account of the customer, bound to their Class I card.
        card = {
            "card_number": str(source),
            "card_type": "class_i_debit",
            "holder_name": "张三",
            "holder_id_number": ID_NUMBER,
            "reserved_mobile": "13800138000",
        }
        proof = await session_proof(bank, APP, source, PASSWORD)
        await bind_card(bank, APP, customer_id, card, proof=proof)
        class_iii = (
            await bank.accounts.open(OpenAccount(APP, customer_id, 3, card, PASSWORD))
        ).account_id
        refused_class = await refusal_of(
            lambda: bank.deposits.open(opening(customer_id, class_iii, 1_000 * CNY, key="k7"))
        )
        assert refused_class.refusal.code == Code.ACCOUNT_CLASS_NOT_ALLOWED
        assert (await balance(bank, source), await balance(bank, other_source)) == (
            1_000_000, 1_000_000,
        )  # fmt: skip

        poor = opening(customer_id, source, 20_000 * CNY, key="k-poor")
        first = await refusal_of(lambda: bank.deposits.open(poor))
        assert (first.refusal.code, first.refusal.ledger_code) == (
            Code.TRANSFER_REFUSED, R.EXCEEDS_CREDITS,
        )  # fmt: skip
        again = await refusal_of(lambda: bank.deposits.open(poor))
        assert again.refusal.ledger_code == R.EXCEEDS_CREDITS and again.refusal.replayed
        state = bank.core.customer_state()
        empty = [
            meta for meta in state.accounts.values() if meta.account_class == 5 and meta.closed
        ]
        assert len(empty) == 1

        not_deposit = await refusal_of(
            lambda: bank.deposits.withdraw(withdrawal(source, None, "k8"))
        )
        assert not_deposit.refusal.code == Code.FIXED_DEPOSIT_NOT_FOUND

        short = await bank.deposits.open(opening(customer_id, source, 5_000 * CNY, "3m", "k9"))
        short_id = int(short.deposit.account_id)
        assert short.deposit.maturity_date == "2026-04-05"
        clock.advance_days(90)  # 2026-04-05: the maturity day
        matured = await refusal_of(
            lambda: bank.deposits.withdraw(withdrawal(short_id, None, "k10"))
        )
        assert matured.refusal.code == Code.DEPOSIT_MATURED
        assert matured.refusal.extras["maturity_date"] == "2026-04-05"
        assert await balance(bank, short_id) == 500_000
        assert await balances_sum(bank) == 0


@run
async def test_a_key_of_another_posting_is_a_conflict(tmp_path: Path) -> None:
    """An operation key already used for a transfer names that transfer: a withdrawal or
    an opening sent with it is refused (EXISTS_WITH_DIFFERENT_*), never run."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        customer_id, source = await customer_with_account(bank, 60_000 * CNY)
        _, payee = await customer_with_account(bank, 0, OTHER_ID_NUMBER, "李四")
        opened = await bank.deposits.open(opening(customer_id, source))
        account_id = int(opened.deposit.account_id)
        posting = bank.payments.transfer(
            COUNTER, "shared", source, payee, 100, Consent(password=PASSWORD)
        )
        await bank.payments.post(posting)
        used = await refusal_of(
            lambda: bank.deposits.withdraw(withdrawal(account_id, None, "shared"))
        )
        assert used.refusal.code == Code.TRANSFER_REFUSED
        assert used.refusal.ledger_code == R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
        reopened = await refusal_of(
            lambda: bank.deposits.open(opening(customer_id, source, key="shared"))
        )
        assert reopened.refusal.code == Code.TRANSFER_REFUSED
        assert await balance(bank, account_id) == 5_000_000
        assert await balances_sum(bank) == 0


@run
async def test_backdated_correction_is_an_adjustment_posting(tmp_path: Path) -> None:
    """A correction of a settled period's balance posts the interest on the difference at
    each day's demand rate (1,000,000 CNY... here 10,000 CNY for 30 days at 0.05%, 360:
    0.42 CNY) from the interest-expense account, listed in the account's interest with
    its period; a retry with the key posts nothing more. Only the bank's channel may
    correct; a span that crosses a period end, or a period not yet settled, is refused;
    taking interest back needs the period's settlement in the log."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        _, account_id = await customer_with_account(bank, 1_000 * CNY)
        start = day_of_date(2025, 10, 1)
        correction = CorrectInterest(
            BANK, "corr-1", account_id, 10_000 * CNY, start, start + 30, "balance fixed"
        )
        posted = await bank.deposits.correct_interest(correction)
        assert posted.amount_minor == 42 and not posted.replayed
        again = await bank.deposits.correct_interest(correction)
        assert again.replayed
        assert await balance(bank, account_id) == 100_042
        history = await bank.deposits.interest(COUNTER, account_id)
        assert [(i.kind, i.amount_minor, i.period) for i in history.items] == [
            ("correction", 42, 2025 * 4 + 3)
        ]
        assert history.rate == "0.05%"

        def command(**fields: Any) -> CorrectInterest:
            base = {
                "caller": BANK, "key": "corr-x", "account_id": account_id,
                "balance_delta_minor": 10_000 * CNY, "start_day": start, "end_day": start + 30,
            }  # fmt: skip
            return CorrectInterest(**{**base, **fields})

        cases = [
            (command(caller=COUNTER), Code.CHANNEL_KIND_NOT_ALLOWED),
            (command(end_day=day_of_date(2025, 12, 25)), Code.INVALID_FIELD),
            (
                command(start_day=day_of_date(2025, 12, 22), end_day=day_of_date(2026, 1, 2)),
                Code.INVALID_FIELD,
            ),
            (command(balance_delta_minor=1), Code.INVALID_FIELD),
        ]
        for case, code in cases:
            refusal = await refusal_of(lambda c=case: bank.deposits.correct_interest(c))
            assert refusal.refusal.code == code, case
        back = await refusal_of(
            lambda: bank.deposits.correct_interest(
                command(key="corr-back", balance_delta_minor=-10_000 * CNY)
            )
        )
        assert back.refusal.ledger_code == R.REVERSAL_TARGET_NOT_FOUND
        assert await balance(bank, account_id) == 100_042
        assert await balances_sum(bank) == 0


def test_dates_of_the_tests() -> None:
    """The clock starts where the tests say: 2026-01-05 in Shanghai."""
    moment = datetime.datetime.fromtimestamp(START_NS // 10**9, datetime.UTC)
    assert moment.date() == datetime.date(2026, 1, 5)


@run
async def test_interest_after_a_real_settlement_and_taking_some_back(tmp_path: Path) -> None:
    """With the real day-end (accrual each day, settlement on 20 March): the account's
    interest shows the units accrued before the settlement, then the settlement posting
    of period 2026q0 (3 days of 100,000 CNY at 0.05%, 360: 0.42 CNY) and nothing
    accrued; a correction that the balance was 100,000 CNY lower on those days takes the
    interest back as a reversal of that settlement, never a rewrite; a retry takes
    nothing more."""
    from core.services.dayend import DayEnd

    clock = Clock()
    clock.now = START_NS + (day_of_date(2026, 3, 18) - day_of_date(2026, 1, 5)) * NS_PER_DAY
    async with running_bank(tmp_path, clock) as bank:
        _, account_id = await customer_with_account(bank, 100_000 * CNY)
        dayend = DayEnd(bank.core)
        for day in (18, 19):
            clock.advance_days(1)
            await dayend.run(datetime.date(2026, 3, day))
        accrued = await bank.deposits.interest(COUNTER, account_id)
        assert accrued.accrued_through == "2026-03-19" and accrued.items == []
        assert accrued.accrued_minor == 28  # 2 days: 0.2778 CNY, not yet paid
        clock.advance_days(1)
        await dayend.run(datetime.date(2026, 3, 20))  # the settlement day
        settled = await bank.deposits.interest(COUNTER, account_id)
        period = 2026 * 4
        assert [(i.kind, i.amount_minor, i.period) for i in settled.items] == [
            ("settlement", 42, period)
        ]
        assert settled.accrued_minor == 0 and settled.last_settled_period == period
        assert settled.interest_paid_total_minor == 42
        assert await balance(bank, account_id) == 10_000_042

        back = CorrectInterest(
            BANK, "corr-back", account_id, -100_000 * CNY,
            day_of_date(2026, 3, 18), day_of_date(2026, 3, 21),
        )  # fmt: skip
        posted = await bank.deposits.correct_interest(back)
        assert posted.amount_minor == 42 and posted.code == 9  # TransferCode.REVERSAL
        assert (await bank.deposits.correct_interest(back)).replayed
        assert await balance(bank, account_id) == 10_000_000
        history = await bank.deposits.interest(COUNTER, account_id)
        assert [(i.kind, i.amount_minor, i.period) for i in history.items] == [
            ("correction", -42, period),
            ("settlement", 42, period),
        ]
        assert await balances_sum(bank) == 0


@run
async def test_a_tellers_cap_refuses_before_any_account_is_opened(tmp_path: Path) -> None:
    """The per-posting checks every posting passes apply to a deposit's postings too: a
    teller over their cap is refused before a deposit account exists (the customer's
    accounts are unchanged), a supervisor may open it, and a teller may not pay out a
    withdrawal over the cap either."""
    clock = Clock()
    roles = {"teller": RoleLimits(1_000_000, 500_000), "supervisor": RoleLimits(10**9, 10**8)}
    actors = Actors({3: ChannelActors(True, roles)})
    teller = Caller("counter", "counter", 3, "T0001", "teller")
    supervisor = Caller("counter", "counter", 3, "S0001", "supervisor")
    async with running_bank(tmp_path, clock, actors) as bank:
        customer = await bank.customers.register(
            RegisterCustomer(supervisor, "张三", ID_NUMBER, "13800138000")
        )
        opened = await bank.accounts.open(
            OpenAccount(supervisor, customer.customer_id, 1, None, PASSWORD)
        )
        source = opened.account_id
        await bank.payments.cash_deposit(Movement(supervisor, "fund", source, 50_000 * CNY))
        command = opening(customer.customer_id, source, 20_000 * CNY, key="teller-1")
        command.caller = teller
        over = await refusal_of(lambda: bank.deposits.open(command))
        assert over.refusal.code == Code.ACTOR_LIMIT_EXCEEDED
        assert bank.core.customer_state().customers[customer.customer_id].accounts == [source]
        command.caller, command.key = supervisor, "supervisor-1"
        account_id = int((await bank.deposits.open(command)).deposit.account_id)
        clock.advance_days(10)
        payout = WithdrawFixedDeposit(
            teller, "w-teller", account_id, None, Consent(password=PASSWORD)
        )
        refused_payout = await refusal_of(lambda: bank.deposits.withdraw(payout))
        assert refused_payout.refusal.code == Code.ACTOR_LIMIT_EXCEEDED
        assert await balance(bank, account_id) == 20_000 * CNY
        assert await balances_sum(bank) == 0


@run
async def test_deposits_and_their_keys_survive_a_restart(tmp_path: Path) -> None:
    """The journal holds the deposit entries: after a restart the rows, balances and
    accounts are as they were, and retries of the opening and of the partial withdrawal
    are answered from the ledger (replayed), moving nothing."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        customer_id, source = await customer_with_account(bank, 50_000 * CNY)
        opened = await bank.deposits.open(opening(customer_id, source))
        account_id = int(opened.deposit.account_id)
        clock.advance_days(100)
        part = await bank.deposits.withdraw(withdrawal(account_id, 20_000 * CNY, "w-part"))
        row_before = await fixed_row(bank, account_id)
    clock.advance_days(1)
    async with running_bank(tmp_path, clock) as bank:
        assert await fixed_row(bank, account_id) == row_before
        assert row_before.principal == 3_000_000 and row_before.flags & FD_PARTIAL_DONE
        assert await balance(bank, source) == 2_000_000 + part.interest_minor
        again = await bank.deposits.open(opening(customer_id, source))
        assert again.replayed and again.deposit.account_id == str(account_id)
        retried = await bank.deposits.withdraw(withdrawal(account_id, 20_000 * CNY, "w-part"))
        assert retried.replayed and retried.interest_minor == part.interest_minor == 278
        assert await balance(bank, source) == 2_000_278
        assert await balances_sum(bank) == 0
