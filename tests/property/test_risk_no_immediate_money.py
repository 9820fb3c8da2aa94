"""No outcome of the risk stage other than allow moves money at once.

Hypothesis draws a rule set (every rule type, every outcome, thresholds around the
amounts drawn), then a sequence of postings through the services' one posting path
(single transfers and merchant payments from the app channel with or without a device
and a second factor, and batches from the internal channel) on a real engine and
journal, the clock moving between them. After each, the ledger itself is read:

- allowed (posted with no risk hold): a transfer moved exactly its amount between the
  posted balances; a payment (a merchant hold by nature) only its pending balances;
- delayed or reviewed: the posted balances of both accounts are unchanged, the amount
  is a PENDING hold of the payer (pending debits) and the payee (pending credits), and
  the record in the ledger is a pending hold;
- blocked or challenged (refused): no balance changed and the ledger has no record of
  the transfer id.

And the recorded decision, when there is one, says the same as the answer.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.services.bank import Bank
from core.services.commands import (
    Caller,
    Consent,
    Movement,
    OpenAccount,
    PostingBatch,
    RiskContext,
)
from core.services.lifecycle import Settings
from core.services.refusals import Code, Refused
from ledger.constants import BANK_CHANNEL
from ledger.records import account_view, pack_transfer, transfer_view
from ledger.types import CreateTransferResult, PendingState, TransferCode, TransferFlags
from limits.rules import load_rules
from tests.provider_helpers import providers, register_at_counter

NS = 1_000_000_000
START_NS = 1_767_258_000_000_000_000  # 2026-01-01T09:00:00Z
COUNTER = Caller("counter", "counter", 3)
APP = Caller("app", "app", 2)
BANK = Caller("bank", "internal", BANK_CHANNEL)
PASSWORD = "135790"
ID_NUMBERS = ("11010519491231002X", "110105198501010012", "110105199003070017")
DEVICES = ("", "phone-a", "phone-b", "bad-device")
OUTCOMES = ("allow", "challenge", "delay", "review", "block")
FUNDING_MINOR = 10_000_000  # 100,000 CNY per payer
R = CreateTransferResult


class Clock:
    def __init__(self) -> None:
        self.now = START_NS

    def now_ns(self) -> int:
        return self.now


def _money(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


@st.composite
def rule_sets(draw: st.DrawFn) -> str:
    """A valid rule-set text: 1..7 rules of every type, each with a drawn outcome."""
    kinds = draw(
        st.lists(
            st.sampled_from(
                ("large_value", "list_device", "new_device", "new_payee", "velocity_account",
                 "velocity_payee", "time_of_day", "history", "list_account")
            ),
            min_size=1, max_size=7,
        )
    )  # fmt: skip
    lines = [
        "version = 1",
        "[holds]",
        "delay_s = 3600",
        "review_s = 86400",
        "[lists.devices]",
        'match = "device"',
        'values = ["bad-device"]',
        "[lists.accounts]",
        'match = "account"',
        f'values = ["{draw(st.integers(1, 2))}"]',  # ids of no customer: rarely hit
    ]
    for index, kind in enumerate(kinds):
        outcome = draw(st.sampled_from(OUTCOMES))
        amount_min = draw(st.integers(1, 50_000))
        rule = [
            "[[rules]]",
            f'name = "r{index}_{kind}"',
            f'outcome = "{outcome}"',
            'codes = ["transfer", "payment"]',
        ]
        if outcome == "allow" and draw(st.booleans()):
            rule.append("report = true")
        if kind == "large_value":
            rule += ['type = "large_value"', f'amount_min = "{_money(amount_min)}"']
        elif kind == "list_device":
            rule += ['type = "list"', 'list = "devices"']
        elif kind == "list_account":
            rule += ['type = "list"', 'list = "accounts"']
        elif kind in ("new_device", "new_payee"):
            rule += [f'type = "{kind}"', 'window = "10m"', f'amount_min = "{_money(amount_min)}"']
        elif kind.startswith("velocity"):
            rule += [
                'type = "velocity"',
                f'scope = "{kind.removeprefix("velocity_")}"',
                'window = "1h"',
                f"count_max = {draw(st.integers(1, 4))}",
            ]
        elif kind == "time_of_day":
            start, end = draw(st.integers(0, 23)), draw(st.integers(0, 23))
            rule += ['type = "time_of_day"', f'from = "{start:02d}:00"', f'to = "{end:02d}:30"']
        else:
            rule += [
                'type = "history"',
                'scope = "account"',
                'window = "30d"',
                f'multiple = "{draw(st.sampled_from(("1.5", "2", "3")))}"',
                f"samples_min = {draw(st.integers(1, 3))}",
            ]
        lines += rule
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Step:
    kind: str  # "transfer", "payment", "batch"
    payer: int
    payee: int
    amount_minor: int
    device: str
    second_factor: bool
    advance_s: int


steps = st.builds(
    Step,
    kind=st.sampled_from(("transfer", "transfer", "payment", "batch")),
    payer=st.integers(0, 1),
    payee=st.integers(0, 2),
    amount_minor=st.integers(1, 6_000_000),
    device=st.sampled_from(DEVICES),
    second_factor=st.booleans(),
    advance_s=st.sampled_from((0, 1, 30, 700, 7200)),
)


async def _open(bank: Bank, id_number: str, cash_minor: int) -> int:
    customer = await register_at_counter(bank, "王五", id_number, "13800138000")
    opened = await bank.accounts.open(OpenAccount(COUNTER, customer.customer_id, 1, None, PASSWORD))
    if cash_minor:
        await bank.payments.cash_deposit(
            Movement(COUNTER, f"fund-{opened.account_id}", opened.account_id, cash_minor)
        )
    return opened.account_id


async def _balances(bank: Bank, account_id: int) -> tuple[int, int, int, int]:
    raw = await bank.core.read(lambda ledger: ledger.lookup_account(account_id))
    pending = await bank.core.read(lambda ledger: ledger.account_pending(account_id))
    assert raw is not None and pending is not None
    view = account_view(raw)
    return view.debits_posted, view.credits_posted, pending[0], pending[1]


async def _lookup(bank: Bank, transfer_id: int) -> Any:
    raw = await bank.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
    return None if raw is None else transfer_view(raw)


async def _post(
    bank: Bank, step: Step, key: str, payer: int, payee: int
) -> tuple[int, str, Code | None]:
    """Post `step`; (transfer id, "" / "delayed" / "review" / "ledger", refusal code)."""
    context = RiskContext(step.device, "192.0.2.1" if step.device else "")
    consent = Consent(password=PASSWORD, second_factor="sms" if step.second_factor else "")
    transfer_id = bank.core.ids.id(
        (BANK if step.kind == "batch" else APP).ledger_id, key, 0
    )  # fmt: skip
    try:
        if step.kind == "transfer":
            posting = bank.payments.transfer(
                APP, key, payer, payee, step.amount_minor, consent, context
            )
            posted = await bank.payments.post(posting)
            return transfer_id, posted.risk_hold, None
        if step.kind == "payment":
            move = Movement(
                APP, key, payer, step.amount_minor, consent, payee, context=context
            )  # fmt: skip
            posted = await bank.payments.payment(move)
            return transfer_id, posted.risk_hold, None
        record = pack_transfer(
            id=transfer_id, debit_account_id=payer, credit_account_id=payee,
            amount=step.amount_minor, code=TransferCode.TRANSFER, channel=BANK.ledger_id,
        )  # fmt: skip
        batch = await bank.payments.post_batch(PostingBatch(BANK, key, record, 1))
        if batch.codes[0] != R.OK:
            return transfer_id, "ledger", None
        if not transfer_view(batch.records).flags & TransferFlags.PENDING:
            return transfer_id, "", None
        decision = bank.risk.records.get(transfer_id)
        return transfer_id, "delayed" if decision["outcome"] == "delay" else "review", None
    except Refused as refusal:
        code = refusal.refusal.code
        if code == Code.TRANSFER_REFUSED:
            return transfer_id, "ledger", None
        return transfer_id, "", code


async def _scenario(directory: Path, rules_text: str, plan: list[Step]) -> None:
    clock = Clock()
    rules_path = directory / "risk.toml"
    rules_path.write_text(rules_text)
    settings_ = Settings(str(directory / "data"), scrypt_n=1 << 10, risk_rules_path=str(rules_path))
    async with providers() as simulated, anyio.create_task_group() as task_group:
        bank = Bank(
            settings_, load_rules("examples/limits.toml"), providers=simulated, now_ns=clock.now_ns
        )
        risk = bank.risk
        await task_group.start(bank.serve)
        with anyio.fail_after(30):
            while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        accounts = [
            await _open(bank, ID_NUMBERS[0], FUNDING_MINOR),
            await _open(bank, ID_NUMBERS[1], FUNDING_MINOR),
            await _open(bank, ID_NUMBERS[2], 0),
        ]
        for number, step in enumerate(plan):
            clock.now += step.advance_s * NS
            payer = accounts[step.payer]
            payee = accounts[step.payee]
            if payer == payee:
                payee = accounts[2]
            before = (await _balances(bank, payer), await _balances(bank, payee))
            transfer_id, hold, refusal = await _post(bank, step, f"k{number}", payer, payee)
            after = (await _balances(bank, payer), await _balances(bank, payee))
            record = await _lookup(bank, transfer_id)
            decision = risk.records.get(transfer_id)
            amount = step.amount_minor
            event(f"{step.kind}: {refusal.name if refusal else hold or 'posted'}")
            if refusal is not None:
                assert refusal in (Code.RISK_BLOCKED, Code.RISK_CHALLENGE), refusal
                assert after == before, (step, refusal)
                assert record is None, (step, refusal)
                assert decision is not None and decision["state"] == "refused"
                expected = "block" if refusal == Code.RISK_BLOCKED else "challenge"
                assert decision["outcome"] == expected
            elif hold == "ledger":  # the ledger refused it (funds, limits): nothing moved
                assert after == before, step
            elif hold:
                (payer_before, payee_before), (payer_after, payee_after) = before, after
                assert payer_after[0] == payer_before[0], step  # posted debits unchanged
                assert payee_after[1] == payee_before[1], step  # posted credits unchanged
                assert payer_after[2] == payer_before[2] + amount, step
                assert payee_after[3] == payee_before[3] + amount, step
                assert record.flags & TransferFlags.PENDING, step
                assert record.state == PendingState.PENDING, step
                assert decision is not None and decision["state"] == "held"
                assert decision["outcome"] == ("delay" if hold == "delayed" else "review")
            else:
                assert record is not None and record.result == R.OK, step
                assert decision is None or decision["outcome"] == "allow", (step, decision)
                (payer_before, payee_before), (payer_after, payee_after) = before, after
                if step.kind == "payment":  # a merchant hold: pending, never posted at once
                    assert payer_after[0] == payer_before[0], step
                    assert payer_after[2] == payer_before[2] + amount, step
                else:
                    assert payer_after[0] == payer_before[0] + amount, step
                    assert payee_after[1] == payee_before[1] + amount, step
                    assert payer_after[2] == payer_before[2], step
        await bank.core.flush_at_stop()
        task_group.cancel_scope.cancel()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rules_text=rule_sets(), plan=st.lists(steps, min_size=1, max_size=10))
def test_no_outcome_but_allow_moves_money_at_once(rules_text: str, plan: list[Step]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        anyio.run(_scenario, Path(directory), rules_text, plan)
