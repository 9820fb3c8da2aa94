"""The clearing services under ISO 20022, without HTTP: `Payments.incoming_credits` (one
engine admission, one outcome per credit, the rule of `incoming_transfer`),
`Payments.payment_return` and `Reads.statement`, on a real engine and journal."""

from __future__ import annotations

from pathlib import Path

from core.services.commands import (
    Caller,
    IncomingCredit,
    IncomingCredits,
    Movement,
    ReturnPayment,
)
from core.services.payments import Payments
from core.services.refusals import Code, Refusal, Refused
from core.services.results import Posted
from ledger.constants import CLEARING_ID
from ledger.types import CreateTransferResult
from tests.services.test_services import (
    COUNTER,
    Clock,
    funded_account,
    payee_account,
    refusal_of,
    run,
    running_bank,
)

R = CreateTransferResult
PARTNER = Caller("open_api", "open_api", 5)
PAYER = {"bank_code": "102100099996", "account_number": "6222020200112233445", "name": "王五"}


def credits(*items: tuple[int, int, str]) -> IncomingCredits:
    return IncomingCredits(
        PARTNER, [IncomingCredit(account, amount, ref, PAYER) for account, amount, ref in items]
    )


async def booked(payments: Payments, account_id: int) -> int:
    def read(ledger: object) -> int:
        from ledger.records import account_view

        view = account_view(ledger.lookup_account(account_id))  # type: ignore[attr-defined]
        return int(view.credits_posted - view.debits_posted)

    return int(await payments.core.read(read))


@run
async def test_incoming_credits_post_once_with_one_outcome_each(tmp_path: Path) -> None:
    """Credits to two accounts, one to no account and one to a bank account: the two post
    (Posted), the others are refused alone; sent again, the posted ones are replayed and
    nothing moves; a reused reference with another amount is a conflict; the same
    reference through `incoming_transfer` meets the batch's posting (one rule)."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        payments = bank.payments
        first = await funded_account(bank, 1)
        second = await payee_account(bank)
        command = credits(
            (first, 100, "A/1"), (second, 200, "A/2"), (6_000_000_000_000_000_007, 5, "A/3"),
            (CLEARING_ID, 7, "A/4"),
        )  # fmt: skip
        result = await payments.incoming_credits(command)
        outcomes = result.outcomes
        assert result.posted == 2
        assert type(outcomes[0]) is Posted and not outcomes[0].replayed
        assert type(outcomes[1]) is Posted and outcomes[1].credit == second
        assert isinstance(outcomes[2], Refusal)
        assert outcomes[2].ledger_code == R.CREDIT_ACCOUNT_NOT_FOUND
        assert isinstance(outcomes[3], Refusal)
        assert outcomes[3].code == Code.INTERNAL_ACCOUNT_NOT_ALLOWED
        assert (await booked(payments, first), await booked(payments, second)) == (101, 200)
        again = await payments.incoming_credits(command)
        assert [type(o) for o in again.outcomes] == [Posted, Posted, Refusal, Refusal]
        assert again.outcomes[0].replayed and again.outcomes[1].replayed  # type: ignore[union-attr]
        failed = again.outcomes[2]
        assert isinstance(failed, Refusal) and failed.ledger_code == R.CREDIT_ACCOUNT_NOT_FOUND
        changed = await payments.incoming_credits(credits((first, 101, "A/1")))
        conflict = changed.outcomes[0]
        assert isinstance(conflict, Refusal)
        assert conflict.ledger_code == R.EXISTS_WITH_DIFFERENT_AMOUNT
        single = await payments.incoming_transfer(
            Movement(PARTNER, "any-key", first, 100, reference="A/1", payer=PAYER)
        )
        assert single.replayed and single.transfer_id_packed == outcomes[0].transfer_id_packed  # type: ignore[union-attr]
        assert (await booked(payments, first), await booked(payments, second)) == (101, 200)
        at_counter = IncomingCredits(COUNTER, command.credits[:1])
        refused = await refusal_of(lambda: payments.incoming_credits(at_counter))
        assert refused == Code.CHANNEL_KIND_NOT_ALLOWED


@run
async def test_a_return_credits_the_original_debit_account_once(tmp_path: Path) -> None:
    """A return of an external transfer out posts back at most its amount, once per
    original; a second return id for the same original is a conflict; a transfer that
    is not an external transfer out is not found."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        payments = bank.payments
        account = await funded_account(bank, 10_000)
        beneficiary = {"bank_code": "102100099996", "account_number": "62220202001122"}
        beneficiary["name"] = "王五"
        move = Movement(COUNTER, "out-1", account, 3_000, beneficiary=beneficiary)
        sent = await payments.external_transfer(move)
        original = int.from_bytes(sent.transfer_id_packed, "little")
        assert await booked(payments, account) == 7_000
        too_much = ReturnPayment(PARTNER, "R1", original, 3_001)
        refused = await refusal_of(lambda: payments.payment_return(too_much))
        assert refused == Code.TRANSFER_REFUSED
        posted = await payments.payment_return(ReturnPayment(PARTNER, "R1", original, 3_000))
        assert not posted.replayed and await booked(payments, account) == 10_000
        again = await payments.payment_return(ReturnPayment(PARTNER, "R1", original, 3_000))
        assert again.replayed and await booked(payments, account) == 10_000
        try:
            await payments.payment_return(ReturnPayment(PARTNER, "R2", original, 3_000))
            raise AssertionError("a second return of one original was posted")
        except Refused as error:
            assert error.refusal.ledger_code == R.EXISTS_WITH_DIFFERENT_USER_DATA
        deposit = await payments.cash_deposit(Movement(COUNTER, "d", account, 1))
        deposit_id = deposit.transfer_id_packed
        try:
            await payments.payment_return(
                ReturnPayment(PARTNER, "R3", int.from_bytes(deposit_id, "little"), 1)
            )
            raise AssertionError("a cash deposit was returned")
        except Refused as error:
            assert error.refusal.ledger_code == R.REVERSAL_TARGET_NOT_FOUND


@run
async def test_a_statement_adds_up(tmp_path: Path) -> None:
    """Today's statement: every posting that moved the balance, opening + entries ==
    closing == the balance; a period that ends yesterday holds none of today's."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        payments = bank.payments
        account = await funded_account(bank, 5_000)
        await payments.incoming_credits(credits((account, 250, "S/1"), (account, 50, "S/2")))
        # The engine's business day (its clock is the system's; the services' is moved).
        today = await bank.core.read(lambda ledger: ledger.last_day)
        statement = await bank.reads.statement(COUNTER, account, today, today)
        signed = [e.amount_minor if e.credit else -e.amount_minor for e in statement.entries]
        assert signed == [5_000, 250, 50]
        assert statement.opening_minor == 0
        assert statement.closing_minor == 5_300 == await booked(payments, account)
        earlier = await bank.reads.statement(COUNTER, account, today - 3, today - 1)
        assert earlier.entries == [] and earlier.opening_minor == earlier.closing_minor == 0
        refused = await refusal_of(lambda: bank.reads.statement(PARTNER, account, today, today))
        assert refused == Code.CHANNEL_KIND_NOT_ALLOWED  # a partner bank reads nothing
