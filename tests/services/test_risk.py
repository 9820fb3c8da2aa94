"""The risk stage through the services: a real engine on a real journal in a tmp dir,
an injected clock, and a small test rule set whose every rule names the outcome it
tests. Each outcome is driven through `Payments` (the one posting path) and checked in
the ledger itself: what moved, what is a pending hold, what left no trace.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from core.providers.types import Providers
from core.services.bank import Bank
from core.services.commands import (
    Caller,
    Consent,
    Movement,
    OpenAccount,
    OpenSession,
    PostingBatch,
    Proof,
    RiskContext,
)
from core.services.lifecycle import Settings
from core.services.operators import OperatorCaller
from core.services.refusals import Code, Refused
from core.services.results import Posted
from core.services.risk import Risk
from ledger.constants import BANK_CHANNEL
from ledger.records import account_view, pack_transfer, transfer_view
from ledger.types import CreateTransferResult, PendingState, TransferCode, TransferFlags
from limits.risk import parse_risk_rules
from limits.rules import load_rules
from tests.provider_helpers import providers as simulated_providers
from tests.provider_helpers import register_at_counter

NS = 1_000_000_000
START_NS = 1_767_258_000_000_000_000  # 2026-01-01T09:00:00Z: 17:00 in Shanghai
COUNTER = Caller("counter", "counter", 3)
APP = Caller("app", "app", 2)
BANK = Caller("bank", "internal", BANK_CHANNEL)
PASSWORD = "135790"
ID_NUMBERS = ("11010519491231002X", "110105198501010012", "110105199003070017")
WATCHED = ID_NUMBERS[2]
PHONE = RiskContext("phone-1", "192.0.2.10", "31.23,121.47")
CNY = 100  # fen

RULES = f"""
version = 1

[holds]
delay_s = 60
review_s = 600

[lists.blocked_devices]
match = "device"
values = ["bad-device"]

[lists.watched]
match = "resident_id"
values = ["{WATCHED}"]

[[rules]]
name = "blocked_device"
type = "list"
outcome = "block"
list = "blocked_devices"

[[rules]]
name = "watched_resident"
type = "list"
outcome = "review"
list = "watched"

[[rules]]
name = "new_device_large"
type = "new_device"
outcome = "challenge"
amount_min = "100.00"
window = "30s"

[[rules]]
name = "delay_large"
type = "large_value"
outcome = "delay"
codes = ["transfer"]
amount_min = "1000.00"

[[rules]]
name = "review_huge"
type = "large_value"
outcome = "review"
codes = ["transfer"]
amount_min = "2000.00"

[[rules]]
name = "cash_report"
type = "large_value"
outcome = "allow"
report = true
codes = ["cash_deposit"]
amount_min = "500.00"

[[rules]]
name = "account_burst"
type = "velocity"
outcome = "block"
scope = "account"
codes = ["payment"]
window = "1h"
count_max = 2
"""


class Clock:
    def __init__(self) -> None:
        self.now = START_NS

    def now_ns(self) -> int:
        return self.now


def risk_of(bank: Bank) -> Risk:
    return bank.risk


def build_bank(
    directory: Path, clock: Clock, rules_text: str = RULES, providers: Providers | None = None
) -> Bank:
    """A bank whose risk stage starts from `rules_text` (the file
    `Settings.risk_rules_path` names, beside the data directory)."""
    rules_path = directory.parent / f"{directory.name}-risk.toml"
    rules_path.write_text(rules_text)
    settings = Settings(
        str(directory), scrypt_n=1 << 10, token_ttl_s=60, risk_rules_path=str(rules_path)
    )
    bank = Bank(
        settings, load_rules("examples/limits.toml"), providers=providers, now_ns=clock.now_ns
    )
    assert bank.risk.rules.text == rules_text and bank.payments.risk is bank.risk
    return bank


@asynccontextmanager
async def running_bank(
    directory: Path, clock: Clock, rules_text: str = RULES
) -> AsyncIterator[Bank]:
    async with simulated_providers() as simulated, anyio.create_task_group() as task_group:
        bank = build_bank(directory, clock, rules_text, simulated)
        await task_group.start(bank.serve)
        with anyio.fail_after(30):
            while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        yield bank
        await bank.core.flush_at_stop()
        task_group.cancel_scope.cancel()


async def customer_account(bank: Bank, id_number: str, cash_minor: int = 0) -> int:
    customer = await register_at_counter(bank, "张三", id_number, "13800138000")
    opened = await bank.accounts.open(OpenAccount(COUNTER, customer.customer_id, 1, None, PASSWORD))
    if cash_minor:
        await bank.payments.cash_deposit(
            Movement(COUNTER, f"fund-{opened.account_id}", opened.account_id, cash_minor)
        )
    return opened.account_id


async def balances(bank: Bank, account_id: int) -> tuple[int, int, int, int]:
    """(debits_posted, credits_posted, debits_pending, credits_pending) in the ledger."""
    raw = await bank.core.read(lambda ledger: ledger.lookup_account(account_id))
    pending = await bank.core.read(lambda ledger: ledger.account_pending(account_id))
    assert raw is not None and pending is not None
    view = account_view(raw)
    return view.debits_posted, view.credits_posted, pending[0], pending[1]


async def ledger_transfer(bank: Bank, transfer_id: int) -> Any:
    raw = await bank.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
    return None if raw is None else transfer_view(raw)


async def transfer(
    bank: Bank,
    key: str,
    debit: int,
    credit: int,
    amount_minor: int,
    context: RiskContext = PHONE,
    second_factor: str = "",
) -> Posted:
    posting = bank.payments.transfer(
        APP, key, debit, credit, amount_minor,
        Consent(password=PASSWORD, second_factor=second_factor), context,
    )  # fmt: skip
    return await bank.payments.post(posting)


async def refused_with(call: Any) -> Refused:
    with pytest.raises(Refused) as caught:
        await call
    return caught.value


async def familiar(bank: Bank, clock: Clock, debit: int, credit: int) -> None:
    """The holder has used PHONE before (with a second factor), 30 seconds ago: PHONE is
    no new device for the tests of the other outcomes."""
    await transfer(bank, f"familiar-{debit}", debit, credit, 100 * CNY, second_factor="sms")
    clock.now += 30 * NS


async def until(predicate: Any, what: str) -> None:
    with anyio.fail_after(15):
        while not predicate():  # noqa: ASYNC110 (the tick's effect is a record, not an event)
            await anyio.sleep(0.02)
    assert predicate(), what


def transfer_id_of(posted: Posted) -> int:
    return int.from_bytes(posted.transfer_id_packed, "little")


def run(test: Any) -> Any:
    def runner(tmp_path: Path) -> None:
        anyio.run(test, tmp_path)

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


@run
async def test_allow_with_nothing_fired_posts_and_records_nothing(tmp_path: Path) -> None:
    """A small transfer from a device the holder knows: nothing fires, the money moves,
    no decision is recorded (the rule-set version in force says it was allowed)."""
    clock = Clock()
    async with running_bank(tmp_path / "data", clock) as bank:
        payer = await customer_account(bank, ID_NUMBERS[0], 10_000 * CNY)
        payee = await customer_account(bank, ID_NUMBERS[1])
        posted = await transfer(bank, "small", payer, payee, 50 * CNY)
        assert posted.risk_hold == "" and posted.decision_id == ""
        assert (await balances(bank, payee))[1] == 50 * CNY
        with pytest.raises(Refused) as caught:
            risk_of(bank).decision(transfer_id_of(posted))
        assert caught.value.refusal.code == Code.RISK_DECISION_NOT_FOUND
        stats = risk_of(bank).stats()
        assert stats["screened"] >= 2 and stats["block"] == 0


@run
async def test_large_cash_is_allowed_and_reported(tmp_path: Path) -> None:
    """A cash deposit over the reporting threshold is posted and recorded as a report
    (allow, report=true, the rule and the amount it saw), listed for its business day."""
    clock = Clock()
    async with running_bank(tmp_path / "data", clock) as bank:
        account = await customer_account(bank, ID_NUMBERS[0], 600 * CNY)
        risk = risk_of(bank)
        assert (await balances(bank, account))[1] == 600 * CNY
        [decision] = risk.decisions()
        assert decision["outcome"] == "allow" and decision["report"] is True
        assert decision["rules"] == ["cash_report"]
        assert decision["inputs"] == {"cash_report": 600 * CNY}
        assert decision["state"] == "posted" and decision["version"] == 1
        today = datetime.date(2026, 1, 1)
        assert [item["id"] for item in risk.reports(today)] == [decision["id"]]
        assert risk.reports(today + datetime.timedelta(days=1)) == []


@run
async def test_challenge_then_the_retry_with_a_second_factor_posts(tmp_path: Path) -> None:
    """A transfer of 100 CNY or more from a device the holder never used is refused
    RISK_CHALLENGE (with the factors and the decision id) and leaves no trace in the
    ledger; the retry with the same key and a second factor is posted (challenge met)."""
    clock = Clock()
    async with running_bank(tmp_path / "data", clock) as bank:
        payer = await customer_account(bank, ID_NUMBERS[0], 10_000 * CNY)
        payee = await customer_account(bank, ID_NUMBERS[1])
        before = await balances(bank, payer)
        refusal = (await refused_with(transfer(bank, "t1", payer, payee, 150 * CNY))).refusal
        assert refusal.code == Code.RISK_CHALLENGE
        assert refusal.extras["factors"] == ("sms", "ukey", "face")
        transfer_id = int(refusal.extras["decision_id"], 16)
        assert transfer_id == bank.core.ids.id(APP.ledger_id, "t1", 0)
        assert await ledger_transfer(bank, transfer_id) is None
        assert await balances(bank, payer) == before
        decision = risk_of(bank).decision(transfer_id)
        assert decision["outcome"] == "challenge" and decision["state"] == "refused"
        assert decision["rules"] == ["new_device_large"]
        assert decision["context"]["device"] == "phone-1"
        posted = await transfer(bank, "t1", payer, payee, 150 * CNY, second_factor="sms")
        assert posted.risk_hold == "" and not posted.replayed
        assert posted.decision_id == refusal.extras["decision_id"]
        assert (await balances(bank, payer))[0] == before[0] + 150 * CNY
        met = risk_of(bank).decision(transfer_id)
        assert met["outcome"] == "allow" and met["challenge_met"] and met["state"] == "posted"


@run
async def test_block_leaves_no_trace_and_a_retry_meets_the_same_decision(tmp_path: Path) -> None:
    """A device on the blocked list: RISK_BLOCKED, nothing in the ledger; a retry with
    the same key is blocked by the same recorded decision, counted once."""
    clock = Clock()
    async with running_bank(tmp_path / "data", clock) as bank:
        payer = await customer_account(bank, ID_NUMBERS[0], 10_000 * CNY)
        payee = await customer_account(bank, ID_NUMBERS[1])
        bad = RiskContext("bad-device", "192.0.2.66")
        before = await balances(bank, payer)
        first = (await refused_with(transfer(bank, "b1", payer, payee, 10 * CNY, bad))).refusal
        again = (await refused_with(transfer(bank, "b1", payer, payee, 10 * CNY, bad))).refusal
        assert first.code == again.code == Code.RISK_BLOCKED
        assert first.extras["decision_id"] == again.extras["decision_id"]
        transfer_id = int(first.extras["decision_id"], 16)
        assert await ledger_transfer(bank, transfer_id) is None
        assert await balances(bank, payer) == before
        stats = risk_of(bank).stats()
        assert stats["block"] == 1 and stats["reused"] == 1
        assert risk_of(bank).decision(transfer_id)["rules"] == ["blocked_device"]


@run
async def test_delay_is_a_locked_hold_released_by_the_tick(tmp_path: Path) -> None:
    """1,000 CNY or more: posted as a PENDING hold (HTTP 202's `delayed`), the money in
    limbo nowhere: the payer's pending debits hold it; the channel cannot capture, void
    or reverse it (RISK_HOLD_LOCKED); a retry meets the hold; once the clock passes
    `release_at`, the once-a-second tick captures it and the payee has the money."""
    clock = Clock()
    async with running_bank(tmp_path / "data", clock) as bank:
        payer = await customer_account(bank, ID_NUMBERS[0], 10_000 * CNY)
        payee = await customer_account(bank, ID_NUMBERS[1])
        await familiar(bank, clock, payer, payee)
        before = await balances(bank, payer)
        posted = await transfer(bank, "d1", payer, payee, 1_500 * CNY)
        assert posted.risk_hold == "delayed"
        assert posted.release_at_ns == clock.now + 60 * NS
        assert posted.flags & TransferFlags.PENDING and posted.timeout_s == 60 + 86_400
        transfer_id = transfer_id_of(posted)
        assert posted.decision_id == f"{transfer_id:032x}"
        hold = await ledger_transfer(bank, transfer_id)
        assert hold.flags & TransferFlags.PENDING and hold.state == PendingState.PENDING
        after = await balances(bank, payer)
        assert after[0] == before[0] and after[2] == before[2] + 1_500 * CNY
        session = await bank.auth.open_session(OpenSession(APP, payer, PASSWORD))
        proof = Proof(session=session.session)
        for call in (
            bank.payments.capture(Movement(APP, "c1", transfer_id, None, proof=proof)),
            bank.payments.void(Movement(APP, "v1", transfer_id, None, proof=proof)),
            bank.payments.reversal(Movement(APP, "r1", transfer_id, None)),
        ):
            assert (await refused_with(call)).refusal.code == Code.RISK_HOLD_LOCKED
        again = await transfer(bank, "d1", payer, payee, 1_500 * CNY)
        assert again.replayed and again.risk_hold == "delayed"
        assert again.transfer_id_packed == posted.transfer_id_packed
        risk = risk_of(bank)
        assert risk.decision(transfer_id)["state"] == "held"
        clock.now += 61 * NS
        await until(lambda: risk.decision(transfer_id)["state"] == "released", "released")
        released = await ledger_transfer(bank, transfer_id)
        assert released.state == PendingState.POSTED
        assert (await balances(bank, payee))[1] == 100 * CNY + 1_500 * CNY
        decision = risk.decision(transfer_id)
        assert decision["settled_by"] == "tick" and decision["rules"] == ["delay_large"]


@run
async def test_review_is_released_or_returned_by_an_officer_or_returned_by_the_tick(
    tmp_path: Path,
) -> None:
    """2,000 CNY or more waits for a risk officer: `release` captures one hold, `return_`
    voids another (the payer keeps the money); a third, left alone past review_s, goes
    back to the payer by itself. A settled hold cannot be settled the other way."""
    clock = Clock()
    async with running_bank(tmp_path / "data", clock) as bank:
        payer = await customer_account(bank, ID_NUMBERS[0], 10_000 * CNY)
        payee = await customer_account(bank, ID_NUMBERS[1])
        await familiar(bank, clock, payer, payee)
        risk = risk_of(bank)
        holds = []
        for key in ("r1", "r2", "r3"):
            posted = await transfer(bank, key, payer, payee, 2_000 * CNY)
            assert posted.risk_hold == "review"
            assert posted.release_at_ns == clock.now + 600 * NS  # returned then, unless...
            holds.append(transfer_id_of(posted))
        assert risk.stats()["held"] == 3
        released = await risk.release(holds[0], "officer-li")
        assert released["state"] == "released" and released["settled_by"] == "officer-li"
        returned = await risk.return_(holds[1], "officer-li")
        assert returned["state"] == "returned"
        assert (await risk.release(holds[0], "officer-li"))["state"] == "released"
        refusal = (await refused_with(risk.return_(holds[0], "officer-li"))).refusal
        assert refusal.code == Code.RISK_DECISION_NOT_FOUND
        states = [(await ledger_transfer(bank, hold)).state for hold in holds]
        assert states == [PendingState.POSTED, PendingState.VOIDED, PendingState.PENDING]
        clock.now += 601 * NS
        await until(lambda: risk.decision(holds[2])["state"] == "returned", "returned")
        assert (await ledger_transfer(bank, holds[2])).state == PendingState.VOIDED
        payer_now = await balances(bank, payer)
        assert payer_now[0] == 100 * CNY + 2_000 * CNY and payer_now[2] == 0
        assert (await balances(bank, payee))[1] == 100 * CNY + 2_000 * CNY


@run
async def test_watched_resident_and_a_retry_of_an_allowed_posting(tmp_path: Path) -> None:
    """A watched customer's transfer waits for review (resident-id list); a retry of a
    posting allowed before, which a velocity rule would now stop, is answered as the
    ledger does (replayed), not refused."""
    clock = Clock()
    async with running_bank(tmp_path / "data", clock) as bank:
        watched = await customer_account(bank, WATCHED, 1_000 * CNY)
        payee = await customer_account(bank, ID_NUMBERS[1])
        await familiar(bank, clock, watched, payee)
        # `familiar` itself was reviewed: the watched customer's every debit is.
        familiar_id = bank.core.ids.id(APP.ledger_id, f"familiar-{watched}", 0)
        assert risk_of(bank).decision(familiar_id)["outcome"] == "review"
        payer = await customer_account(bank, ID_NUMBERS[0], 1_000 * CNY)
        payments = []
        for key in ("p1", "p2"):
            move = Movement(APP, key, payer, 5 * CNY, Consent(password=PASSWORD), payee)
            payments.append(await bank.payments.payment(move))
        third = Movement(APP, "p3", payer, 5 * CNY, Consent(password=PASSWORD), payee)
        refusal = (await refused_with(bank.payments.payment(third))).refusal
        assert refusal.code == Code.RISK_BLOCKED
        retry = Movement(APP, "p2", payer, 5 * CNY, Consent(password=PASSWORD), payee)
        replayed = await bank.payments.payment(retry)
        assert replayed.replayed and replayed.risk_hold == ""
        assert replayed.transfer_id_packed == payments[1].transfer_id_packed


@run
async def test_a_held_cash_withdrawal_is_returned_at_once(tmp_path: Path) -> None:
    """Cash is given now or never: the watched customer's counter withdrawal, which the
    review rule holds, is returned at once (answered `returned`, the hold voided, the
    decision RETURNED by `now-or-never`), never captured later; a retry meets the
    returned hold and moves nothing."""
    clock = Clock()
    async with running_bank(tmp_path / "data", clock) as bank:
        watched = await customer_account(bank, WATCHED, 1_000 * CNY)
        before = await balances(bank, watched)
        move = Movement(COUNTER, "cash-1", watched, 300 * CNY, Consent(password=PASSWORD))
        posted = await bank.payments.cash_withdrawal(move)
        assert posted.risk_hold == "returned"
        transfer_id = transfer_id_of(posted)
        assert (await ledger_transfer(bank, transfer_id)).state == PendingState.VOIDED
        decision = risk_of(bank).decision(transfer_id)
        assert decision["outcome"] == "review" and decision["state"] == "returned"
        assert decision["settled_by"] == "now-or-never"
        again = await bank.payments.cash_withdrawal(move)
        assert again.replayed and again.risk_hold == "returned"
        assert await balances(bank, watched) == before
        clock.now += 601 * NS  # past review_s: the tick finds nothing left to settle
        await anyio.sleep(1.2)
        assert (await ledger_transfer(bank, transfer_id)).state == PendingState.VOIDED
        assert await balances(bank, watched) == before


@run
async def test_batch_holds_in_place_and_a_blocked_item_refuses_the_batch(tmp_path: Path) -> None:
    """The internal channel's batch is screened too: an item over the review threshold
    becomes a hold in place (the others post); an item from a frozen account (account
    list) refuses the whole request with its pointer, and nothing of it is posted."""
    rules = RULES.replace(
        '[[rules]]\nname = "blocked_device"',
        '[lists.frozen]\nmatch = "account"\nvalues = ["FROZEN"]\n\n'
        '[[rules]]\nname = "frozen"\ntype = "list"\noutcome = "block"\nlist = "frozen"\n\n'
        '[[rules]]\nname = "blocked_device"',
        1,
    )
    clock = Clock()
    directory = tmp_path / "data"
    async with running_bank(directory, clock, rules.replace("FROZEN", "1")) as bank:
        payer = await customer_account(bank, ID_NUMBERS[0], 10_000 * CNY)
        other = await customer_account(bank, ID_NUMBERS[1], 10_000 * CNY)
        payee = await customer_account(bank, ID_NUMBERS[2])
        ids = bank.core.ids
        items = [(payer, 10 * CNY), (payer, 2_500 * CNY), (other, 20 * CNY)]
        records = b"".join(
            pack_transfer(
                id=ids.id(BANK.ledger_id, "batch-1", index),
                debit_account_id=debit,
                credit_account_id=payee,
                amount=amount,
                code=TransferCode.TRANSFER,
                channel=BANK.ledger_id,
            )
            for index, (debit, amount) in enumerate(items)
        )
        posted = await bank.payments.post_batch(PostingBatch(BANK, "batch-1", records, 3))
        assert bytes(posted.codes) == bytes([CreateTransferResult.OK] * 3)
        held = transfer_view(posted.records, 128)
        assert held.flags & TransferFlags.PENDING
        assert not transfer_view(posted.records, 0).flags & TransferFlags.PENDING
        decision = risk_of(bank).decision(held.id)
        assert decision["outcome"] == "review" and decision["state"] == "held"
        assert (await balances(bank, payee))[1] == 30 * CNY
        # The batch sent again: the held item meets its decision (a hold again), the
        # ledger meets every item by id; nothing is counted or posted twice.
        again = await bank.payments.post_batch(PostingBatch(BANK, "batch-1", records, 3))
        assert bytes(again.codes) == bytes([CreateTransferResult.EXISTS] * 3)
        assert transfer_view(again.records, 128).flags & TransferFlags.PENDING
        assert risk_of(bank).stats()["reused"] == 1
        assert (await balances(bank, payee))[1] == 30 * CNY
        # An item from a frozen account refuses the whole batch.
        risk_of(bank).install(parse_risk_rules(
            rules.replace("version = 1", "version = 2").replace("FROZEN", str(other)), "t"
        ))  # fmt: skip
        blocked = b"".join(
            pack_transfer(
                id=ids.id(BANK.ledger_id, "batch-2", index),
                debit_account_id=debit,
                credit_account_id=payee,
                amount=10 * CNY,
                code=TransferCode.TRANSFER,
                channel=BANK.ledger_id,
            )
            for index, debit in enumerate((payer, other))
        )
        refusal = (
            await refused_with(bank.payments.post_batch(PostingBatch(BANK, "b2", blocked, 2)))
        ).refusal
        assert refusal.code == Code.RISK_BLOCKED and refusal.extras["pointer"] == "/transfers/1"
        for index in range(2):
            assert await ledger_transfer(bank, ids.id(BANK.ledger_id, "batch-2", index)) is None
        assert (await balances(bank, payee))[1] == 30 * CNY


@run
async def test_decisions_and_holds_survive_a_restart(tmp_path: Path) -> None:
    """The decisions are durable with their postings: after a restart the held review is
    still held (and still locked), the refused challenge still recorded, the velocity
    counters rebuilt from the transfer log; the tick of the new process returns the
    review once its time has passed."""
    clock = Clock()
    directory = tmp_path / "data"
    async with running_bank(directory, clock) as bank:
        payer = await customer_account(bank, ID_NUMBERS[0], 10_000 * CNY)
        payee = await customer_account(bank, ID_NUMBERS[1])
        await familiar(bank, clock, payer, payee)
        review = transfer_id_of(await transfer(bank, "rv", payer, payee, 2_000 * CNY))
        challenge = await refused_with(
            transfer(bank, "ch", payer, payee, 200 * CNY, RiskContext("phone-2"))
        )
        challenged = int(challenge.refusal.extras["decision_id"], 16)
        for key in ("p1", "p2"):  # the account's payments: at the velocity rule's max
            move = Movement(APP, key, payer, 5 * CNY, Consent(password=PASSWORD), payee)
            await bank.payments.payment(move)
    async with running_bank(directory, clock) as bank:
        risk = risk_of(bank)
        # The counters were rebuilt from the transfer log (`Bank.serve`, before the server
        # was ready): the account's third payment in the hour is blocked.
        third = Movement(APP, "p3", payer, 5 * CNY, Consent(password=PASSWORD), payee)
        assert (await refused_with(bank.payments.payment(third))).refusal.code == (
            Code.RISK_BLOCKED
        )
        assert risk.decision(review)["state"] == "held" and risk.hold_locked(review)
        assert risk.decision(challenged)["state"] == "refused"
        session = await bank.auth.open_session(OpenSession(APP, payer, PASSWORD))
        proof = Proof(session=session.session)
        void = bank.payments.void(Movement(APP, "v", review, None, proof=proof))
        assert (await refused_with(void)).refusal.code == Code.RISK_HOLD_LOCKED
        clock.now += 601 * NS
        await until(lambda: risk.decision(review)["state"] == "returned", "returned")
        assert (await ledger_transfer(bank, review)).state == PendingState.VOIDED


@run
async def test_a_review_is_released_and_the_rules_changed_through_approvals(
    tmp_path: Path,
) -> None:
    """Maker-checker: one risk officer asks to release a reviewed hold, another approves,
    and the hold is captured (the decision names the checker); a request naming a
    transfer the stage does not hold is refused at once. A new rule-set version applied
    through an approval is the one the stage runs, and it stays in force after a restart
    (the stage takes the approved version back from the store)."""
    clock = Clock()
    directory = tmp_path / "data"
    maker = OperatorCaller("risk1", "risk_officer")
    checker = OperatorCaller("risk2", "risk_officer")
    async with running_bank(directory, clock) as bank:
        payer = await customer_account(bank, ID_NUMBERS[0], 10_000 * CNY)
        payee = await customer_account(bank, ID_NUMBERS[1])
        await familiar(bank, clock, payer, payee)
        held = transfer_id_of(await transfer(bank, "rv", payer, payee, 2_000 * CNY))
        approvals = bank.approvals
        unknown = {"transfer_id": f"{held + 1:032x}"}
        refusal = await refused_with(approvals.request(maker, "release_review", "", unknown))
        assert refusal.refusal.code == Code.RISK_DECISION_NOT_FOUND
        payload = {"transfer_id": f"{held:032x}"}
        request = await approvals.request(maker, "release_review", "", payload)
        assert risk_of(bank).decision(held)["state"] == "held"
        applied = await approvals.approve(checker, request["id"])
        assert applied["state"] == "applied", applied
        decision = risk_of(bank).decision(held)
        assert decision["state"] == "released" and decision["settled_by"] == "risk2"
        assert (await ledger_transfer(bank, held)).state == PendingState.POSTED
        # Version 2 raises the review threshold: 2,000 CNY is only delayed now.
        text = RULES.replace("version = 1", "version = 2").replace(
            'amount_min = "2000.00"', 'amount_min = "3000.00"'
        )
        change = await approvals.request(maker, "risk", "risk", {"text": text, "base_version": 1})
        assert (await approvals.approve(checker, change["id"]))["state"] == "applied"
        assert risk_of(bank).rules.version == 2
        later = await transfer(bank, "after", payer, payee, 2_000 * CNY)
        assert later.risk_hold == "delayed"
        assert risk_of(bank).decision(transfer_id_of(later))["version"] == 2
    async with running_bank(directory, clock) as bank:
        assert risk_of(bank).rules.version == 2
        assert risk_of(bank).rules_json()["version"] == 2


@run
async def test_holder_keys_are_looked_up_once_and_unknown_accounts_are_not_kept(
    tmp_path: Path,
) -> None:
    """The context rows take the debit holder's customer and resident-id keys from the
    kernel's holder table; an account not in it is looked up in the customer state and
    kept, an account the bank does not know (yet) is not (its rows say no holder, and it
    is looked up again next time); the table is emptied when it would pass its cap."""
    from core.services import risk as risk_module
    from limits.risk_layout import CONTEXT, key_of

    clock = Clock()
    async with running_bank(tmp_path / "data", clock) as bank:
        risk = risk_of(bank)
        kernel = risk.kernel
        accounts = [await customer_account(bank, number) for number in ID_NUMBERS]
        customers = [bank.auth.meta_of(account).customer_id for account in accounts]
        kernel.clear_holders()
        unknown = accounts[-1] + 1_000

        def record_of(index: int, debit: int) -> bytes:
            return pack_transfer(
                id=index + 1, debit_account_id=debit, credit_account_id=accounts[0],
                amount=1, code=TransferCode.TRANSFER,
            )  # fmt: skip

        def rows_of(*debits: int) -> list[tuple[int, int]]:
            records = b"".join(record_of(index, debit) for index, debit in enumerate(debits))
            rows = risk.context_rows(BANK, records, len(debits), PHONE, "", False, 0)
            return [CONTEXT.unpack_from(rows, i * CONTEXT.size)[0::4] for i in range(len(debits))]

        expected = [
            (key_of("customer", customer), key_of("resident_id", number))
            for customer, number in zip(customers, ID_NUMBERS, strict=True)
        ]
        assert rows_of(accounts[0], unknown, accounts[0]) == [expected[0], (0, 0), expected[0]]
        assert kernel.holder_count == 1  # accounts[0] kept once, `unknown` not kept
        assert rows_of(accounts[0]) == [expected[0]]
        assert kernel.holder_count == 1
        old_cap = risk_module.HOLDER_CACHE_MAX
        risk_module.HOLDER_CACHE_MAX = 2
        try:
            assert rows_of(accounts[1]) == [expected[1]] and kernel.holder_count == 2
            assert rows_of(accounts[2]) == [expected[2]] and kernel.holder_count == 1  # emptied
            assert rows_of(*accounts) == expected and kernel.holder_count == 2
        finally:
            risk_module.HOLDER_CACHE_MAX = old_cap
