"""Loan accounts without HTTP (core/services/loan_accounts.py): a real engine on a real
journal in a tmp dir, a test catalog of fixed-rate products (so every figure can be
checked by hand), the shipped operators plus a loan officer, credit limits granted
through the approvals (a teller asks, a risk officer approves), typed commands, and a
clock the tests move (the services' and the engine's) so months pass without sleeping.

Each test ends by checking the ledger's invariants: the balances of all accounts, the
bank's own included, sum to zero, and every loan account's balance is 0 (a loan is its
row, never a balance).

The worked examples all use product T-LOAN: 6.00% a year fixed (0.5% a month), due on
the 20th, 3 grace days, penalty at the contract rate + 50% (9.00% a year), no fees,
arrears paid penalty, interest, principal. A loan of 12,000.00 CNY over 12 months,
equal principal, disbursed on 2026-01-05 (the first due date 2026-02-20, 46 days later)
repays 1,000.00 CNY of principal a month; instalment 1 is 1,000.00 + 60.00 interest
(12,000 x 0.5%) = 1,060.00 CNY.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from core.data import DEFAULT_OPERATORS_PATH, DEFAULT_RULES_PATH
from core.services.bank import Bank
from core.services.commands import (
    ApplyForLoan,
    Caller,
    Consent,
    DecideLoanApplication,
    DisburseLoan,
    Movement,
    OpenAccount,
    OpenSession,
    Proof,
    RepayLoan,
    SignLoanApplication,
)
from core.services.dayend import DayEnd
from core.services.lifecycle import Settings
from core.services.loan_accounts import LOAN_CLASS
from core.services.operators import OperatorCaller, load_operators
from core.services.refusals import Code, Refused
from ledger.constants import LOAN_FUNDING_ID
from ledger.loan_book import LoanFlags, LoanRow, loan_row_view
from ledger.records import account_view
from ledger.types import AccountKind, AccountStatus, CreateTransferResult
from limits.calendar import day_of_date
from limits.risk import parse_risk_rules
from limits.rules import load_rules
from tests.provider_helpers import bind_card, providers, register_at_counter, session_proof

R = CreateTransferResult
NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S
# 2026-01-05 02:00 UTC: 10:00 in Shanghai, inside the business day 2026-01-05.
START_NS = 1_767_578_400_000_000_000
START = datetime.date(2026, 1, 5)
COUNTER = Caller("counter", "counter", 3)
APP = Caller("app", "app", 2)
PASSWORD = "135790"
ID_NUMBERS = ("11010519491231002X", "110105198501010012", "110105199003070017")
CNY = 100

PRODUCT = """
[[products]]
id = "{id}"
version = 1
effective = 2025-06-01
name = "Test loan {id}"
kind = "personal"
methods = ["equal_instalment", "equal_principal"]
rate = {{ fixed = "6.00%" }}
term_months = {{ min = 6, max = 60 }}
amount = {{ min = "1000.00", max = "300000.00" }}
repayment_day = 20
grace_days = 3
penalty_uplift = "50%"
prepayment = {{ allowed = {allowed}, after_months = {after}, fee = "{fee}", excess = "{excess}", mode = "{mode}" }}
{extra}
"""  # noqa: E501 (one product line as the file has it)


def product(
    id: str,
    *,
    allowed: str = "true",
    after: int = 0,
    fee: str = "0.00%",
    excess: str = "refuse",
    mode: str = "reduce_instalment",
    extra: str = "",
) -> str:
    return PRODUCT.format(
        id=id, allowed=allowed, after=after, fee=fee, excess=excess, mode=mode, extra=extra
    )


CATALOG = "version = 1\n" + "".join(
    [
        product("T-LOAN"),
        product("T-FULL", excess="full", mode="reduce_term", fee="1.00%"),
        product("T-LATER", after=3),
        product("T-CAPPED", extra='exposure_max = "20000.00"'),
    ]
)
OPERATORS_TEXT = Path(DEFAULT_OPERATORS_PATH).read_text(encoding="utf-8")  # has loan1
OPERATORS = load_operators(DEFAULT_OPERATORS_PATH)


class Clock:
    """The services' and the engine's clock: moved by the tests, never slept on."""

    def __init__(self) -> None:
        self.now = START_NS

    def now_ns(self) -> int:
        return self.now

    def at(self, date: datetime.date) -> None:
        """10:00 in Shanghai on `date` (never backwards)."""
        target = START_NS + (date - START).days * NS_PER_DAY
        assert target >= self.now, date
        self.now = target


@asynccontextmanager
async def running_bank(directory: Path, clock: Clock) -> AsyncIterator[Bank]:
    """A bank on `directory`/data with the test catalog and operators; the day-end's
    accrual is left to the day-end (so its first run may be any ended day)."""
    catalog = directory / "loans.toml"
    catalog.write_text(CATALOG, encoding="utf-8")
    operators = directory / "operators.toml"
    operators.write_text(OPERATORS_TEXT, encoding="utf-8")
    settings = Settings(
        str(directory / "data"), scrypt_n=1 << 10, loans_path=str(catalog),
        operators_path=str(operators), accrue_at_day_boundary=False,
    )  # fmt: skip
    async with providers() as simulated, anyio.create_task_group() as task_group:
        bank = Bank(
            settings,
            load_rules(DEFAULT_RULES_PATH),
            providers=simulated,
            now_ns=clock.now_ns,
            engine_clock=clock,
        )
        await task_group.start(bank.serve)
        with anyio.fail_after(30):
            while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        yield bank
        await check_invariants(bank)
        task_group.cancel_scope.cancel()


def run(test: Callable[[Path], object]) -> Callable[[Path], None]:
    def runner(tmp_path: Path) -> None:
        anyio.run(test, tmp_path)  # type: ignore[arg-type]

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


def op(name: str) -> OperatorCaller:
    if name == "loan1":
        return OperatorCaller("loan1", "loan_officer", "192.0.2.7")
    caller = OPERATORS.caller(name, "192.0.2.7")
    assert caller is not None, name
    return caller


async def refusal_of(call: Callable[[], Any]) -> Refused:
    with pytest.raises(Refused) as caught:
        await call()
    return caught.value


# --- the bank's figures ------------------------------------------------------------------


async def check_invariants(bank: Bank) -> None:
    """Money is conserved (every balance, the bank's own included, sums to 0) and every
    loan account's balance is 0."""

    def read(ledger: Any) -> tuple[int, list[int]]:
        total, loans = 0, []
        for slot in range(ledger.account_count):
            view = account_view(ledger.lookup_account(ledger.account_id_at(slot)))
            balance = view.credits_posted - view.debits_posted
            total += balance
            if view.kind == AccountKind.LOAN:
                loans.append(balance)
        return total, loans

    total, loans = await bank.core.read(read)
    assert total == 0
    assert all(balance == 0 for balance in loans), loans


async def balance(bank: Bank, account_id: int) -> int:
    raw = await bank.core.read(lambda ledger: ledger.lookup_account(account_id))
    assert raw is not None, account_id
    view = account_view(raw)
    return int(view.credits_posted - view.debits_posted)


async def loan_row(bank: Bank, account_id: int) -> LoanRow:
    raw = await bank.core.read(lambda ledger: ledger.deposit_row(account_id))
    assert raw is not None, account_id
    return loan_row_view(raw)


async def log_count(bank: Bank) -> int:
    count: int = await bank.core.read(lambda ledger: ledger.log_count)
    return count


def day(date: datetime.date) -> int:
    return day_of_date(date.year, date.month, date.day)


# --- customers, credit, applications -----------------------------------------------------


async def customer(bank: Bank, cash_minor: int = 0, index: int = 0) -> tuple[str, int]:
    """A registered customer with a Class I account (funded in cash at the counter)."""
    mobile = f"1380013800{index}"
    registered = await register_at_counter(bank, "张三", ID_NUMBERS[index], mobile)
    opened = await bank.accounts.open(
        OpenAccount(COUNTER, registered.customer_id, 1, None, PASSWORD)
    )
    if cash_minor:
        move = Movement(COUNTER, f"fund-{opened.account_id}", opened.account_id, cash_minor)
        await bank.payments.cash_deposit(move)
    return registered.customer_id, opened.account_id


async def linked_account(bank: Bank, customer_id: str, class_i: int, account_class: int) -> int:
    """A Class II or III account of the customer, bound to their Class I card."""
    meta = bank.core.customer_state().accounts[class_i]
    person = bank.core.customer_state().customers[meta.customer_id]
    card = {
        "card_number": str(class_i), "card_type": "class_i_debit", "holder_name": person.name,
        "holder_id_number": person.id_number, "reserved_mobile": person.mobile,
    }  # fmt: skip
    proof = await session_proof(bank, APP, class_i, PASSWORD)
    await bind_card(bank, APP, customer_id, card, proof=proof)
    opening = OpenAccount(APP, customer_id, account_class, card, PASSWORD)
    return (await bank.accounts.open(opening)).account_id


async def grant_credit(bank: Bank, customer_id: str, limit_minor: int) -> None:
    """The customer's credit limit, as the approvals grant it (a teller asks, a risk
    officer approves)."""
    payload = {"customer_id": customer_id, "limit_minor": limit_minor}
    made = await bank.approvals.request(op("teller1"), "credit_limit", "", payload)
    await bank.approvals.approve(op("risk1"), made["id"])
    assert bank.approvals.credit_limit(customer_id) == limit_minor


def applying(
    customer_id: str,
    account_id: int,
    amount_minor: int = 12_000 * CNY,
    *,
    key: str = "apply-1",
    product_id: str = "T-LOAN",
    term_months: int = 12,
    method: str = "equal_principal",
    **fields: Any,
) -> ApplyForLoan:
    return ApplyForLoan(
        COUNTER, key, customer_id, product_id, amount_minor, term_months, method, None,
        account_id, **fields,
    )  # fmt: skip


def signing(application_id: str, key: str = "sign-1") -> SignLoanApplication:
    return SignLoanApplication(COUNTER, application_id, key, Consent(password=PASSWORD))


def repaying(account_id: int, amount_minor: int | None, key: str) -> RepayLoan:
    return RepayLoan(COUNTER, account_id, amount_minor, key, Consent(password=PASSWORD))


async def disbursed_loan(
    bank: Bank, customer_id: str, account_id: int, tag: str = "1", **fields: Any
) -> int:
    """Apply, sign and disburse (keys tagged `tag`): the loan account's id."""
    applied = await bank.loan_accounts.apply(
        applying(customer_id, account_id, key=f"apply-{tag}", **fields)
    )
    assert applied.state == "approved", applied
    await bank.loan_accounts.sign(signing(applied.application_id, f"sign-{tag}"))
    loan = await bank.loan_accounts.disburse(
        DisburseLoan(COUNTER, applied.application_id, f"pay-{tag}")
    )
    return int(loan.account_id)


# --- applications: the state machine, idempotency, wrong states ---------------------------


@run
async def test_apply_sign_disburse_each_once_and_every_retry_answered(tmp_path: Path) -> None:
    """The happy path, each step retried with its key (the same answer, `replayed`, nothing
    posted twice) and each step asked from the wrong state.

    12,000.00 CNY over 12 months, equal principal, at 6.00%: approved at once (nothing
    fired in the risk screen; the quota figures are the limit 50,000.00 and 0 in use);
    signed with the password; paid out in full (no upfront fee) from the loan-funding
    account into the Class I account, the loan's own account at 0 and its row OPEN
    with everything scheduled; the next instalment 1,060.00 CNY on 2026-02-20. A second
    disbursement under another key is LOAN_ALREADY_DISBURSED; the customer's accounts list
    the loan; the terms table holds the loan's segment 0 at its ledger slot.
    """
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        loans = bank.loan_accounts
        customer_id, account_id = await customer(bank)
        await grant_credit(bank, customer_id, 50_000 * CNY)
        applied = await loans.apply(applying(customer_id, account_id))
        assert (applied.state, applied.replayed) == ("approved", False)
        assert [(t.state, t.by) for t in applied.transitions] == [
            ("submitted", "counter"), ("approved", "system"),
        ]  # fmt: skip
        assert (applied.credit_limit_minor, applied.credit_used_minor) == (5_000_000, 0)
        assert (applied.risk_outcome, applied.risk_rules, applied.exposure_minor) == (
            "allow", None, None,
        )  # fmt: skip
        assert (applied.rate, applied.received_minor, applied.upfront_fee_minor) == (
            "6.00%", 1_200_000, 0,
        )  # fmt: skip
        # 12 x 1,000.00 principal; interest 60.00 + 55.00 + ... + 5.00 = 390.00 CNY.
        assert (applied.total_interest_minor, applied.total_repaid_minor) == (39_000, 1_239_000)
        assert applied.to_json()["transitions"][0]["state"] == "submitted"
        application_id = applied.application_id
        again = await loans.apply(applying(customer_id, account_id))
        assert again.replayed and again.application_id == application_id
        assert again.transitions == applied.transitions

        # Wrong states before signing: nothing to decide (not referred), nothing to pay.
        decided = await refusal_of(
            lambda: loans.decide(
                DecideLoanApplication(op("loan1"), application_id, True, "", "d-1")
            )
        )
        assert decided.refusal.code == Code.LOAN_APPLICATION_STATE
        assert decided.refusal.extras["state"] == "approved"
        early = await refusal_of(
            lambda: loans.disburse(DisburseLoan(COUNTER, application_id, "pay-early"))
        )
        assert (early.refusal.code, early.refusal.extras["state"]) == (
            Code.LOAN_APPLICATION_STATE, "approved",
        )  # fmt: skip

        signed = await loans.sign(signing(application_id))
        assert signed.state == "signed" and not signed.replayed
        assert (await loans.sign(signing(application_id))).replayed
        wrong = await refusal_of(lambda: loans.sign(signing(application_id, "sign-2")))
        assert (wrong.refusal.code, wrong.refusal.extras["state"]) == (
            Code.LOAN_APPLICATION_STATE, "signed",
        )  # fmt: skip

        funding_before = await balance(bank, LOAN_FUNDING_ID)
        logged = await log_count(bank)
        loan = await loans.disburse(DisburseLoan(COUNTER, application_id, "pay-1"))
        assert await log_count(bank) == logged + 1
        loan_id = int(loan.account_id)
        assert str(loan_id).startswith("623506") and len(str(loan_id)) == 19
        assert (loan.status, loan.principal_minor, loan.outstanding_minor) == (
            "open", 1_200_000, 1_200_000,
        )  # fmt: skip
        assert (loan.balance_minor, loan.segment, loan.start_date) == (0, 0, "2026-01-05")
        assert loan.next_instalment is not None
        assert (loan.next_instalment.due_date, loan.next_instalment.total_minor) == (
            "2026-02-20", 106_000,
        )  # fmt: skip
        assert await balance(bank, account_id) == 1_200_000
        assert await balance(bank, LOAN_FUNDING_ID) == funding_before - 1_200_000
        row = await loan_row(bank, loan_id)
        assert row == LoanRow(1_200_000, 0, 0, 0, 0, day(datetime.date(2026, 2, 20)), 0, 0, 0,
                              LoanFlags.OPEN, 0)  # fmt: skip

        replayed = await loans.disburse(DisburseLoan(COUNTER, application_id, "pay-1"))
        assert replayed.replayed and replayed.account_id == loan.account_id
        second = await refusal_of(
            lambda: loans.disburse(DisburseLoan(COUNTER, application_id, "pay-2"))
        )
        assert second.refusal.code == Code.LOAN_ALREADY_DISBURSED
        assert second.refusal.extras["account_id"] == loan.account_id
        assert await log_count(bank) == logged + 1
        assert await balance(bank, account_id) == 1_200_000
        late = await refusal_of(lambda: loans.sign(signing(application_id, "sign-3")))
        assert late.refusal.extras["state"] == "disbursed"

        shown = loans.application(COUNTER, application_id)
        assert (shown.state, shown.loan_account_id) == ("disbursed", loan.account_id)
        assert [t.state for t in shown.transitions] == [
            "submitted", "approved", "signed", "disbursed",
        ]  # fmt: skip
        listed = await loans.loans_of(COUNTER, customer_id)
        assert [view.account_id for view in listed.loans] == [loan.account_id]
        read = bank.customers.read(COUNTER, customer_id)
        assert {"account_id": loan.account_id, "class": "loan", "closed": False} in [
            {key: item[key] for key in ("account_id", "class", "closed")} for item in read.accounts
        ]
        assert bank.core.customer_state().accounts[loan_id].account_class == LOAN_CLASS
        plan = await loans.schedule(COUNTER, loan_id)
        assert [item.status for item in plan.instalments] == ["due"] + ["future"] * 11
        assert sum(item.interest_minor for item in plan.instalments) == 39_000
        entries = list(bank.core.loan_terms.entries())
        slot = await bank.core.read(lambda ledger: ledger.account_slot(loan_id))
        assert [(t.slot, t.segment, t.level_minor, t.count) for t in entries] == [
            (slot, 0, 1_200_000, 12)
        ]


@run
async def test_an_operation_key_is_one_request(tmp_path: Path) -> None:
    """The same key with other fields is IDEMPOTENCY_KEY_REUSED for every step: an apply
    with another amount, a signature key reused for another application, a disbursement
    key reused for another application, a repayment key with another amount; nothing is
    recorded or posted by them."""
    async with running_bank(tmp_path, Clock()) as bank:
        loans = bank.loan_accounts
        customer_id, account_id = await customer(bank, 10_000 * CNY)
        await grant_credit(bank, customer_id, 100_000 * CNY)
        first = await loans.apply(applying(customer_id, account_id, key="k-a"))
        other = await refusal_of(
            lambda: loans.apply(applying(customer_id, account_id, 13_000 * CNY, key="k-a"))
        )
        assert other.refusal.code == Code.IDEMPOTENCY_KEY_REUSED
        second = await loans.apply(applying(customer_id, account_id, key="k-b"))
        await loans.sign(signing(first.application_id, "k-sign"))
        reused = await refusal_of(lambda: loans.sign(signing(second.application_id, "k-sign")))
        assert reused.refusal.code == Code.IDEMPOTENCY_KEY_REUSED
        assert loans.application(COUNTER, second.application_id).state == "approved"
        await loans.sign(signing(second.application_id, "k-sign-2"))
        loan = await loans.disburse(DisburseLoan(COUNTER, first.application_id, "k-pay"))
        logged = await log_count(bank)
        reused = await refusal_of(
            lambda: loans.disburse(DisburseLoan(COUNTER, second.application_id, "k-pay"))
        )
        assert reused.refusal.code == Code.IDEMPOTENCY_KEY_REUSED
        assert loans.application(COUNTER, second.application_id).state == "signed"
        loan_id = int(loan.account_id)
        await loans.repay(repaying(loan_id, 100_000, "k-repay"))
        reused = await refusal_of(lambda: loans.repay(repaying(loan_id, 200_000, "k-repay")))
        assert reused.refusal.code == Code.IDEMPOTENCY_KEY_REUSED
        assert await log_count(bank) == logged + 1


# --- quota, exposure, accounts -----------------------------------------------------------


@run
async def test_quota_and_exposure_refusals(tmp_path: Path) -> None:
    """Without an approved credit limit nothing is lent (LOAN_QUOTA_EXCEEDED, limit 0);
    with 20,000.00 CNY, 15,000.00 is approved and then 6,000.00 more is over the limit
    (15,000.00 in use) while 5,000.00 fits exactly; a declined application frees its
    share. The product T-CAPPED lends at most 20,000.00 CNY in all: one customer's
    12,000.00 and another's 9,000.00 would pass it (LOAN_EXPOSURE_EXCEEDED), 8,000.00
    fits. Refusals record nothing; the account checks name the field."""
    async with running_bank(tmp_path, Clock()) as bank:
        loans = bank.loan_accounts
        customer_id, account_id = await customer(bank)
        none = await refusal_of(lambda: loans.apply(applying(customer_id, account_id)))
        assert none.refusal.code == Code.LOAN_QUOTA_EXCEEDED
        assert (none.refusal.extras["limit_minor"], none.refusal.extras["used_minor"]) == (0, 0)
        await grant_credit(bank, customer_id, 20_000 * CNY)
        first = await loans.apply(applying(customer_id, account_id, 15_000 * CNY, key="q1"))
        assert first.state == "approved"
        over = await refusal_of(
            lambda: loans.apply(applying(customer_id, account_id, 6_000 * CNY, key="q2"))
        )
        assert over.refusal.code == Code.LOAN_QUOTA_EXCEEDED
        assert over.refusal.extras == {
            "limit_minor": 2_000_000, "used_minor": 1_500_000, "pointer": "/amount_minor",
        }  # fmt: skip
        exact = await loans.apply(applying(customer_id, account_id, 5_000 * CNY, key="q3"))
        assert (exact.state, exact.credit_used_minor) == ("approved", 1_500_000)

        other_id, other_account = await customer(bank, index=1)
        await grant_credit(bank, other_id, 50_000 * CNY)
        foreign = await refusal_of(
            lambda: loans.apply(applying(other_id, account_id, key="x1", product_id="T-CAPPED"))
        )
        assert foreign.refusal.code == Code.ACCOUNT_NOT_CUSTOMERS
        assert foreign.refusal.extras["pointer"] == "/disbursement_account_id"
        capped = await loans.apply(
            applying(other_id, other_account, key="c1", product_id="T-CAPPED")
        )
        assert capped.state == "approved"
        third_id, third_account = await customer(bank, index=2)
        await grant_credit(bank, third_id, 50_000 * CNY)
        exposed = await refusal_of(
            lambda: loans.apply(
                applying(third_id, third_account, 9_000 * CNY, key="c2", product_id="T-CAPPED")
            )
        )
        assert exposed.refusal.code == Code.LOAN_EXPOSURE_EXCEEDED
        fits = await loans.apply(
            applying(third_id, third_account, 8_000 * CNY, key="c3", product_id="T-CAPPED")
        )
        assert (fits.state, fits.exposure_minor) == ("approved", None)  # operators only

        # A declined application holds no share of the limit (the operator's decline of a
        # referred one): the risk screen refers the next application, an officer declines.
        install_rules(bank, review=[other_account])
        referred = await loans.apply(applying(other_id, other_account, 30_000 * CNY, key="d1"))
        assert (referred.state, referred.credit_used_minor) == ("referred", 1_200_000)
        blocked = await refusal_of(
            lambda: loans.apply(applying(other_id, other_account, 10_000 * CNY, key="d2"))
        )
        assert blocked.refusal.extras["used_minor"] == 4_200_000
        await loans.decide(
            DecideLoanApplication(op("loan1"), referred.application_id, False, "income", "dd")
        )
        fits_now = await loans.apply(applying(other_id, other_account, 10_000 * CNY, key="d3"))
        assert (fits_now.credit_used_minor, fits_now.state) == (1_200_000, "referred")


# --- the risk screen -------------------------------------------------------------------


def install_rules(bank: Bank, *, block: Sequence[int] = (), review: Sequence[int] = ()) -> None:
    """Risk rules on loan disbursements: one into an account of `block` is blocked, one
    into an account of `review` waits for a review."""
    blocked = ", ".join(f'"{account}"' for account in block) or '"1"'
    watched = ", ".join(f'"{account}"' for account in review) or '"1"'
    text = f"""
version = {bank.risk.rules.version + 1}

[holds]
delay_s = 60
review_s = 600

[lists.frozen]
match = "account"
values = [{blocked}]

[lists.watched]
match = "account"
values = [{watched}]

[[rules]]
name = "loan_to_frozen"
type = "list"
outcome = "block"
codes = ["loan_disbursement"]
list = "frozen"

[[rules]]
name = "loan_to_watched"
type = "list"
outcome = "review"
codes = ["loan_disbursement"]
list = "watched"
"""
    bank.risk.install(parse_risk_rules(text, "test rules"))


@run
async def test_risk_block_declines_and_review_refers_to_an_operator(tmp_path: Path) -> None:
    """The would-be disbursement is screened at apply: into a blocked account the
    application is declined (reason "risk"; the channel sees the outcome, never the
    rules; an operator's view lists them with the rule set's version); into a watched
    one it is referred. A referred application cannot be signed; a risk officer may not
    decide it (OPERATOR_NOT_PERMITTED), a loan officer approves it (a retry of the key
    answers again; deciding again is LOAN_APPLICATION_STATE), an administrator declines
    another (a decline needs a reason); a declined application cannot be signed."""
    async with running_bank(tmp_path, Clock()) as bank:
        loans = bank.loan_accounts
        customer_id, account_id = await customer(bank)
        watched = await linked_account(bank, customer_id, account_id, 2)
        await grant_credit(bank, customer_id, 100_000 * CNY)
        install_rules(bank, block=[account_id], review=[watched])
        version = bank.risk.rules.version
        declined = await loans.apply(applying(customer_id, account_id, key="r1"))
        assert (declined.state, declined.reason, declined.risk_outcome) == (
            "declined", "risk", "block",
        )  # fmt: skip
        assert (declined.risk_rules, declined.risk_version) == (None, version)
        refused_sign = await refusal_of(lambda: loans.sign(signing(declined.application_id)))
        assert refused_sign.refusal.extras["state"] == "declined"

        referred = await loans.apply(applying(customer_id, watched, key="r2"))
        assert (referred.state, referred.risk_outcome) == ("referred", "review")
        early = await refusal_of(lambda: loans.sign(signing(referred.application_id, "s2")))
        assert early.refusal.extras["state"] == "referred"
        application_id = referred.application_id
        approve = DecideLoanApplication(op("loan1"), application_id, True, "", "decide-1")
        not_allowed = await refusal_of(
            lambda: loans.decide(DecideLoanApplication(op("risk1"), application_id, True, "", "x"))
        )
        assert not_allowed.refusal.code == Code.OPERATOR_NOT_PERMITTED
        decided = await loans.decide(approve)
        assert (decided.state, decided.risk_rules) == ("approved", ["loan_to_watched"])
        assert (decided.transitions[-1].by, decided.transitions[-1].role) == (
            "op:loan1", "loan_officer",
        )  # fmt: skip
        assert (await loans.decide(approve)).replayed
        (audited,) = [e for e in bank.approvals.audit() if e["what"] == "loan_decision"]
        assert (audited["who"], audited["object"], audited["detail"]) == (
            "loan1", f"loan_application:{application_id}", {"state": "approved", "reason": ""},
        )  # fmt: skip
        twice = await refusal_of(
            lambda: loans.decide(
                DecideLoanApplication(op("admin1"), application_id, False, "no", "decide-2")
            )
        )
        assert twice.refusal.extras["state"] == "approved"
        assert (await loans.sign(signing(application_id, "s3"))).state == "signed"

        other = await loans.apply(applying(customer_id, watched, key="r3"))
        silent = await refusal_of(
            lambda: loans.decide(
                DecideLoanApplication(op("admin1"), other.application_id, False, " ", "d3")
            )
        )
        assert silent.refusal.code == Code.INVALID_FIELD
        no = await loans.decide(
            DecideLoanApplication(op("admin1"), other.application_id, False, "income", "d4")
        )
        assert (no.state, no.reason) == ("declined", "income")
        missing = await refusal_of(
            lambda: loans.decide(DecideLoanApplication(op("admin1"), "LA00", True, "", "d5"))
        )
        assert missing.refusal.code == Code.LOAN_APPLICATION_NOT_FOUND


# --- disbursement ----------------------------------------------------------------------


@run
async def test_disbursement_into_class_ii_and_a_class_iii_cap_refusal(tmp_path: Path) -> None:
    """A loan pays out into a Class II account (loans are outside the PBoC buckets), and
    is repaid from another account of the customer. Into a Class III account 3,000.00
    CNY passes its 2,000.00 balance cap: the ledger refuses the credit
    (EXCEEDS_BALANCE_CAP), nothing is posted, the loan account opened for it is closed
    again and the application stays signed; the same key is answered with the same
    refusal, another key refused the same way. A loan account is not a payment account
    for another loan (LOAN_ACCOUNT_NOT_ALLOWED)."""
    async with running_bank(tmp_path, Clock()) as bank:
        loans = bank.loan_accounts
        customer_id, class_i = await customer(bank)
        class_ii = await linked_account(bank, customer_id, class_i, 2)
        class_iii = await linked_account(bank, customer_id, class_i, 3)
        await grant_credit(bank, customer_id, 100_000 * CNY)
        loan_id = await disbursed_loan(
            bank, customer_id, class_ii, "ii", amount_minor=20_000 * CNY,
            repayment_account_id=class_i,
        )  # fmt: skip
        assert await balance(bank, class_ii) == 2_000_000
        view = await loans.loan(COUNTER, loan_id)
        assert (view.disbursement_account_id, view.repayment_account_id) == (
            str(class_ii), str(class_i),
        )  # fmt: skip

        applied = await loans.apply(applying(customer_id, class_iii, 3_000 * CNY, key="a3"))
        await loans.sign(signing(applied.application_id, "s3"))
        logged = await log_count(bank)
        state = bank.core.customer_state()
        before = set(state.accounts)
        capped = await refusal_of(
            lambda: loans.disburse(DisburseLoan(COUNTER, applied.application_id, "p3"))
        )
        assert (capped.refusal.code, capped.refusal.ledger_code) == (
            Code.TRANSFER_REFUSED, R.EXCEEDS_BALANCE_CAP,
        )  # fmt: skip
        assert await balance(bank, class_iii) == 0
        assert await log_count(bank) == logged
        (opened,) = set(state.accounts) - before
        assert state.accounts[opened].closed
        closed = await bank.core.read(lambda ledger: ledger.lookup_account(opened))
        assert account_view(closed).status == AccountStatus.CLOSED
        assert loans.application(COUNTER, applied.application_id).state == "signed"
        assert loans.application(COUNTER, applied.application_id).loan_account_id is None
        assert len(bank.core.loan_terms) == 1
        again = await refusal_of(
            lambda: loans.disburse(DisburseLoan(COUNTER, applied.application_id, "p3"))
        )
        assert (again.refusal.ledger_code, again.refusal.replayed) == (
            R.EXCEEDS_BALANCE_CAP, True,
        )  # fmt: skip
        other_key = await refusal_of(
            lambda: loans.disburse(DisburseLoan(COUNTER, applied.application_id, "p4"))
        )
        assert other_key.refusal.ledger_code == R.EXCEEDS_BALANCE_CAP
        assert await balance(bank, class_iii) == 0
        gone = await refusal_of(lambda: loans.loan(COUNTER, opened))
        assert gone.refusal.code == Code.LOAN_NOT_FOUND

        into_loan = await refusal_of(
            lambda: loans.apply(
                applying(customer_id, class_i, key="a5", repayment_account_id=loan_id)
            )
        )
        assert into_loan.refusal.code == Code.LOAN_ACCOUNT_NOT_ALLOWED
        assert into_loan.refusal.extras["pointer"] == "/repayment_account_id"


# --- early repayment ---------------------------------------------------------------------


@run
async def test_prepayment_worked_example(tmp_path: Path) -> None:
    """A partial early repayment, then everything owed.

    The loan: 12,000.00 CNY, 12 months, equal principal, 6.00%, disbursed 2026-01-05,
    instalments due on the 20th from 2026-02-20 (the module docstring).

    2026-01-25, 6,040.00 CNY (product T-LOAN: reduce the instalment): no arrears; the
    interest accrued since the disbursement, 20 days / 360: 12,000 x 6% x 20/360 = 40.00
    comes first, the other 6,000.00 repays principal: 6,000.00 left, over the same 12
    instalments (segment 1): 500.00 principal each; the first (2026-02-20) charges the
    26 days from the prepayment: 6,000 x 6% x 26/360 = 26.00, so 526.00; the second
    (2026-03-20) a month on 5,500.00: 27.50, so 527.50.

    2026-02-10: owed is 6,000.00 + 16 days' interest (6,000 x 6% x 16/360 = 16.00) =
    6,016.00. 6,016.01 is refused (LOAN_REPAYMENT_EXCEEDS_OWED, owed 601,600 fen);
    16.00 repays no principal (LOAN_REPAYMENT_TOO_SMALL, at least 16.01); "all" takes
    6,016.00 and closes the loan (its terms leave the table); a retry of either key
    answers the same figures without posting; after that LOAN_CLOSED.
    """
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        loans = bank.loan_accounts
        customer_id, account_id = await customer(bank, 100 * CNY)
        await grant_credit(bank, customer_id, 50_000 * CNY)
        loan_id = await disbursed_loan(bank, customer_id, account_id)
        funding = await balance(bank, LOAN_FUNDING_ID)

        clock.at(datetime.date(2026, 1, 25))
        partial = await loans.repay(repaying(loan_id, 604_000, "pre-1"))
        assert (partial.kind, partial.total_minor, partial.accrued_interest_minor) == (
            "partial", 604_000, 4_000,
        )  # fmt: skip
        assert (partial.prepaid_principal_minor, partial.principal_minor) == (600_000, 600_000)
        assert (partial.penalty_minor, partial.interest_minor, partial.fee_minor) == (0, 0, 0)
        assert partial.owed_before_minor == 1_204_000
        assert (partial.loan.segment, partial.loan.outstanding_minor) == (1, 600_000)
        assert partial.loan.next_instalment is not None
        assert (
            partial.loan.next_instalment.number, partial.loan.next_instalment.due_date,
            partial.loan.next_instalment.principal_minor,
            partial.loan.next_instalment.interest_minor,
        ) == (1, "2026-02-20", 50_000, 2_600)  # fmt: skip
        plan = await loans.schedule(COUNTER, loan_id)
        assert (plan.segment, plan.principal_minor, plan.start_date) == (1, 600_000, "2026-01-25")
        assert [i.total_minor for i in plan.instalments[:2]] == [52_600, 52_750]
        assert len(plan.instalments) == 12
        row = await loan_row(bank, loan_id)
        assert (row.scheduled_minor, row.segment, row.fallen_due) == (600_000, 1, 0)
        assert await balance(bank, account_id) == 10_000 + 1_200_000 - 604_000
        assert await balance(bank, LOAN_FUNDING_ID) == funding + 604_000
        (terms,) = bank.core.loan_terms.entries()
        assert (terms.segment, terms.level_minor, terms.first_interest_minor) == (1, 600_000, 2_600)
        logged = await log_count(bank)
        again = await loans.repay(repaying(loan_id, 604_000, "pre-1"))
        assert again.replayed and again.total_minor == 604_000 and again.loan.segment == 1
        assert await log_count(bank) == logged

        clock.at(datetime.date(2026, 2, 10))
        over = await refusal_of(lambda: loans.repay(repaying(loan_id, 601_601, "pre-2")))
        assert over.refusal.code == Code.LOAN_REPAYMENT_EXCEEDS_OWED
        assert over.refusal.extras["owed_minor"] == 601_600
        small = await refusal_of(lambda: loans.repay(repaying(loan_id, 1_600, "pre-3")))
        assert small.refusal.code == Code.LOAN_REPAYMENT_TOO_SMALL
        assert small.refusal.extras["minimum_minor"] == 1_601
        assert await log_count(bank) == logged
        full = await loans.repay(repaying(loan_id, None, "pre-4"))
        assert (full.kind, full.total_minor, full.accrued_interest_minor) == (
            "full", 601_600, 1_600,
        )  # fmt: skip
        assert (full.loan.status, full.loan.owed_minor, full.loan.next_instalment) == (
            "closed", 0, None,
        )  # fmt: skip
        assert (await loan_row(bank, loan_id)).flags == LoanFlags.OPEN | LoanFlags.CLOSED
        assert len(bank.core.loan_terms) == 0
        plan = await loans.schedule(COUNTER, loan_id)
        assert {item.status for item in plan.instalments} == {"prepaid"}
        assert await balance(bank, account_id) == 10_000 + 1_200_000 - 604_000 - 601_600
        assert (await loans.repay(repaying(loan_id, None, "pre-4"))).replayed
        closed = await refusal_of(lambda: loans.repay(repaying(loan_id, 100, "pre-5")))
        assert closed.refusal.code == Code.LOAN_CLOSED
        listed = await loans.loans_of(COUNTER, customer_id)
        assert [view.status for view in listed.loans] == ["closed"]


@run
async def test_excess_is_full_repayment_where_the_product_says_so(tmp_path: Path) -> None:
    """T-FULL takes an overpayment as full repayment, with its 1.00% prepayment fee: on
    2026-01-25 a loan of 12,000.00 owes 12,040.00 (20 days' interest 40.00); 20,000.00
    asked takes 12,040.00 + 1% of the 12,000.00 prepaid (120.00) = 12,160.00. T-LATER
    takes prepayments from three months after the disbursement only
    (LOAN_PREPAYMENT_NOT_ALLOWED, `allowed_from` 2026-04-05); the ledger refusing the
    debit (insufficient funds) posts nothing and leaves the row and the terms table as
    they were."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        loans = bank.loan_accounts
        customer_id, account_id = await customer(bank, 1_000 * CNY)
        await grant_credit(bank, customer_id, 100_000 * CNY)
        full_id = await disbursed_loan(bank, customer_id, account_id, "f", product_id="T-FULL")
        later_id = await disbursed_loan(bank, customer_id, account_id, "l", product_id="T-LATER")
        clock.at(datetime.date(2026, 1, 25))
        taken = await loans.repay(repaying(full_id, 2_000_000, "full-1"))
        assert (taken.kind, taken.total_minor, taken.fee_minor, taken.owed_before_minor) == (
            "full", 1_216_000, 12_000, 1_204_000,
        )  # fmt: skip
        assert taken.loan.status == "closed"
        early = await refusal_of(lambda: loans.repay(repaying(later_id, 100_000, "later-1")))
        assert early.refusal.code == Code.LOAN_PREPAYMENT_NOT_ALLOWED
        assert early.refusal.extras["allowed_from"] == "2026-04-05"

        other_id, other_account = await customer(bank, index=1)
        await grant_credit(bank, other_id, 100_000 * CNY)
        poor_loan = await disbursed_loan(bank, other_id, other_account, "p")
        spent = Movement(COUNTER, "spend", other_account, 1_100_000, Consent(password=PASSWORD))
        await bank.payments.cash_withdrawal(spent)
        row = await loan_row(bank, poor_loan)
        table = bank.core.loan_terms.packed()
        poor = await refusal_of(lambda: loans.repay(repaying(poor_loan, 200_000, "poor-1")))
        assert (poor.refusal.code, poor.refusal.ledger_code) == (
            Code.TRANSFER_REFUSED, R.EXCEEDS_CREDITS,
        )  # fmt: skip
        assert await loan_row(bank, poor_loan) == row
        assert bank.core.loan_terms.packed() == table


# --- overdue ----------------------------------------------------------------------------


@run
async def test_overdue_worked_example(tmp_path: Path) -> None:
    """An instalment the repayment account cannot pay, the grace days, the penalty, and
    the arrears repaid early with a prepayment, through the real day-end.

    The loan of the module docstring (12,000.00 CNY, equal principal, 6.00%, due on the
    20th, 3 grace days, penalty rate 6% x 1.5 = 9%); the customer spends all but 500.00
    CNY of it.

    - Day-end of 2026-02-20: instalment 1 falls due: 1,000.00 principal + 60.00
      interest. The account holds 500.00: interest first (60.00), then 440.00 of
      principal. Arrears: 560.00 principal, 0 interest; overdue since 2026-02-20; not
      yet flagged overdue (not past the due day); no penalty.
    - 2026-02-21..23: flagged OVERDUE; within the grace (20 + 3), no penalty.
    - Day-end of 2026-02-24: the grace is over: penalty from 2026-02-21 through 02-24,
      4 days of 560.00 x 9% / 360 = 0.14 CNY a day = 0.56 CNY.
    - 2026-02-25 the customer pays 1,569.73 CNY: the arrears first (penalty 0.56, interest
      0, principal 560.00), then 5 days' interest since 2026-02-20 on the 11,000.00
      scheduled (11,000 x 6% x 5/360 = 9.1667 -> 9.17), then 1,000.00 of principal:
      10,000.00 left over the remaining 11 instalments (numbers 2..12), 909.09 principal
      each (rounded cumulatively), the next (2026-03-20) charging 23 days:
      10,000 x 6% x 23/360 = 38.333 -> 38.33. The loan is no longer overdue.
    """
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        loans = bank.loan_accounts
        customer_id, account_id = await customer(bank)
        await grant_credit(bank, customer_id, 50_000 * CNY)
        loan_id = await disbursed_loan(bank, customer_id, account_id)
        spent = Movement(COUNTER, "spend", account_id, 1_150_000, Consent(password=PASSWORD))
        await bank.payments.cash_withdrawal(spent)
        funding = await balance(bank, LOAN_FUNDING_ID)
        dayend = DayEnd(bank.core)
        february = [datetime.date(2026, 2, d) for d in range(20, 25)]
        clock.at(datetime.date(2026, 2, 21))
        await dayend.run(february[0])
        row = await loan_row(bank, loan_id)
        assert (row.arrears_principal_minor, row.arrears_interest_minor, row.penalty_minor) == (
            56_000, 0, 0,
        )  # fmt: skip
        assert (row.fallen_due, row.next_due_day, row.overdue_since) == (
            1, day(datetime.date(2026, 3, 20)), day(february[0]),
        )  # fmt: skip
        assert row.flags == LoanFlags.OPEN and row.collected_day == day(february[0])
        assert await balance(bank, account_id) == 0
        assert await balance(bank, LOAN_FUNDING_ID) == funding + 50_000
        penalties = []
        for date in february[1:]:
            clock.at(date + datetime.timedelta(days=1))
            await dayend.run(date)
            penalties.append((await loan_row(bank, loan_id)).penalty_minor)
        assert penalties == [0, 0, 0, 56]
        row = await loan_row(bank, loan_id)
        assert row.flags == LoanFlags.OPEN | LoanFlags.OVERDUE
        assert row.penalty_through == day(february[-1])
        view = await loans.loan(COUNTER, loan_id)
        assert (view.status, view.overdue_since, view.owed_minor) == (
            "overdue", "2026-02-20", 56_000 + 1_100_000 + 56,
        )  # fmt: skip
        plan = await loans.schedule(COUNTER, loan_id)
        assert [item.status for item in plan.instalments[:3]] == ["overdue", "due", "future"]

        clock.at(datetime.date(2026, 2, 25))
        cash = Movement(COUNTER, "cash-2", account_id, 200_000)
        await bank.payments.cash_deposit(cash)
        repaid = await loans.repay(repaying(loan_id, 156_973, "late-1"))
        assert (repaid.penalty_minor, repaid.interest_minor) == (56, 0)
        assert (repaid.accrued_interest_minor, repaid.prepaid_principal_minor) == (917, 100_000)
        assert (repaid.principal_minor, repaid.kind) == (156_000, "partial")
        assert repaid.loan.status == "open" and repaid.loan.overdue_since is None
        row = await loan_row(bank, loan_id)
        assert row == LoanRow(
            1_000_000, 0, 0, 0, 0, day(datetime.date(2026, 3, 20)), 0, day(february[-1]), 1,
            LoanFlags.OPEN, day(february[-1]),
        )  # fmt: skip
        nxt = repaid.loan.next_instalment
        assert nxt is not None
        assert (nxt.number, nxt.principal_minor, nxt.interest_minor) == (2, 90_909, 3_833)
        assert await balance(bank, account_id) == 200_000 - 156_973
        assert await balance(bank, LOAN_FUNDING_ID) == funding + 50_000 + 156_973
        (terms,) = bank.core.loan_terms.entries()
        assert (terms.segment, terms.count, terms.first_interest_minor) == (1, 11, 3_833)
        # The day-end of the 25th finds nothing due: the row is not touched.
        clock.at(datetime.date(2026, 2, 26))
        await dayend.run(datetime.date(2026, 2, 25))
        assert await loan_row(bank, loan_id) == row


# --- restart -----------------------------------------------------------------------------


@run
async def test_records_and_terms_survive_a_restart(tmp_path: Path) -> None:
    """Everything the service keeps is durable in the customer state: after a restart
    the application, the loan (with its prepayment's segment) and the terms table are
    as before, and retries of the keys are answered as before, posting nothing."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        customer_id, account_id = await customer(bank)
        await grant_credit(bank, customer_id, 50_000 * CNY)
        loan_id = await disbursed_loan(bank, customer_id, account_id)
        clock.at(datetime.date(2026, 1, 25))
        first = await bank.loan_accounts.repay(repaying(loan_id, 604_000, "pre-1"))
        application_id = first.loan.application_id
        shown = bank.loan_accounts.application(COUNTER, application_id)
        view = await bank.loan_accounts.loan(COUNTER, loan_id)
        table = bank.core.loan_terms.packed()
        logged = await log_count(bank)
    async with running_bank(tmp_path, clock) as bank:
        loans = bank.loan_accounts
        assert loans.application(COUNTER, application_id) == shown
        assert await loans.loan(COUNTER, loan_id) == view
        assert bank.core.loan_terms.packed() == table
        again = await loans.repay(repaying(loan_id, 604_000, "pre-1"))
        assert again.replayed and again.total_minor == first.total_minor
        paid = await loans.disburse(DisburseLoan(COUNTER, application_id, "pay-1"))
        assert paid.replayed
        assert await log_count(bank) == logged


@run
async def test_a_disbursement_whose_answer_was_lost_is_completed_at_start(tmp_path: Path) -> None:
    """The disbursement's entry posts and the server stops before the application records
    it (simulated: that last write fails): the next start finds the loan's row open and
    records the application disbursed by that attempt; its key is answered again
    (replayed), another key is LOAN_ALREADY_DISBURSED, nothing is paid twice."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        customer_id, account_id = await customer(bank)
        await grant_credit(bank, customer_id, 50_000 * CNY)
        applied = await bank.loan_accounts.apply(applying(customer_id, account_id))
        application_id = applied.application_id
        await bank.loan_accounts.sign(signing(application_id))

        async def crash(record: dict[str, Any]) -> None:
            raise RuntimeError("the server stopped")

        bank.loan_accounts._record_disbursed = crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await bank.loan_accounts.disburse(DisburseLoan(COUNTER, application_id, "pay-1"))
        assert bank.loan_accounts.application(COUNTER, application_id).state == "signed"
        assert await balance(bank, account_id) == 1_200_000
        logged = await log_count(bank)
    async with running_bank(tmp_path, clock) as bank:
        loans = bank.loan_accounts
        shown = loans.application(COUNTER, application_id)
        assert shown.state == "disbursed" and shown.loan_account_id is not None
        assert len(bank.core.loan_terms) == 1
        again = await loans.disburse(DisburseLoan(COUNTER, application_id, "pay-1"))
        assert again.replayed and again.account_id == shown.loan_account_id
        other = await refusal_of(
            lambda: loans.disburse(DisburseLoan(COUNTER, application_id, "pay-2"))
        )
        assert other.refusal.code == Code.LOAN_ALREADY_DISBURSED
        assert await balance(bank, account_id) == 1_200_000
        assert await log_count(bank) == logged


@run
async def test_reads_are_scoped_to_the_customer(tmp_path: Path) -> None:
    """At a one-customer channel (the app) an application needs the customer's session,
    and another customer's application or loan is not readable; an unknown application
    or loan is not found."""
    async with running_bank(tmp_path, Clock()) as bank:
        loans = bank.loan_accounts
        customer_id, account_id = await customer(bank)
        await grant_credit(bank, customer_id, 50_000 * CNY)
        loan_id = await disbursed_loan(bank, customer_id, account_id)
        application_id = (await loans.loan(COUNTER, loan_id)).application_id
        _other, other_account = await customer(bank, index=1)
        session = await bank.auth.open_session(OpenSession(APP, other_account, PASSWORD))
        proof = Proof(session=session.session)
        nosy = await refusal_of(lambda: _sync(loans.application, APP, application_id, proof))
        assert nosy.refusal.code == Code.READ_NOT_IN_SCOPE
        bare = await refusal_of(lambda: _sync(loans.application, APP, application_id))
        assert bare.refusal.code == Code.READ_AUTHENTICATION_REQUIRED
        peek = await refusal_of(lambda: loans.loan(APP, loan_id, proof))
        assert peek.refusal.code == Code.READ_NOT_IN_SCOPE
        mine = await bank.auth.open_session(OpenSession(APP, account_id, PASSWORD))
        own = Proof(session=mine.session)
        assert loans.application(APP, application_id, own).state == "disbursed"
        assert (await loans.loans_of(APP, customer_id, own)).loans[0].account_id == str(loan_id)
        unknown = await refusal_of(lambda: _sync(loans.application, COUNTER, "LA0"))
        assert unknown.refusal.code == Code.LOAN_APPLICATION_NOT_FOUND
        missing = await refusal_of(lambda: loans.loan(COUNTER, account_id))
        assert missing.refusal.code == Code.LOAN_NOT_FOUND
        applying_elsewhere = applying(customer_id, account_id, key="app-1", proof=proof)
        applying_elsewhere.caller = APP
        foreign = await refusal_of(lambda: loans.apply(applying_elsewhere))
        assert foreign.refusal.code == Code.READ_NOT_IN_SCOPE


async def _sync(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)
