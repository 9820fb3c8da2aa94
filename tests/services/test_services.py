"""The middle office without HTTP: a real engine on a real journal in a tmp dir,
driven through typed commands, with an injected clock so nothing sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from core.services.bank import Bank
from core.services.commands import (
    Caller,
    Consent,
    IssueToken,
    Movement,
    OpenAccount,
    PostingBatch,
    RegisterCustomer,
)
from core.services.lifecycle import Settings
from core.services.payments import PostingCheck
from core.services.records import derive_transfer_id
from core.services.refusals import Code, Refused, refused
from ledger.constants import CASH_VAULT_ID
from ledger.records import pack_transfer, transfer_view
from ledger.types import TRANSFER_SIZE, CreateTransferResult, TransferCode
from limits.rules import load_rules

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
COUNTER = Caller("counter", "counter", 3)
APP = Caller("app", "app", 1)
ID_NUMBER = "11010519491231002X"  # a valid resident ID (check digit X)
PASSWORD = "135790"
PAYEE_ID_NUMBER = "110105198001010016"  # another valid resident ID


class Clock:
    def __init__(self) -> None:
        self.now = START_NS

    def now_ns(self) -> int:
        return self.now


@asynccontextmanager
async def running_bank(
    directory: Path, clock: Clock, posting_checks: tuple[PostingCheck, ...] = ()
) -> AsyncIterator[Bank]:
    settings = Settings(str(directory), scrypt_n=1 << 10, token_ttl_s=60)
    bank = Bank(
        settings,
        load_rules("examples/limits.toml"),
        now_ns=clock.now_ns,
        posting_checks=posting_checks,
    )
    async with anyio.create_task_group() as task_group:
        await task_group.start(bank.serve)
        with anyio.fail_after(30):
            while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        yield bank
        task_group.cancel_scope.cancel()


async def funded_account(bank: Bank, amount_minor: int) -> int:
    customer = await bank.customers.register(
        RegisterCustomer(COUNTER, "张三", ID_NUMBER, "13800138000")
    )
    account_id = await bank.accounts.open(
        OpenAccount(COUNTER, customer.customer_id, 1, None, PASSWORD)
    )
    await bank.payments.cash_deposit(Movement(COUNTER, "fund", account_id, amount_minor))
    return account_id


async def payee_account(bank: Bank) -> int:
    """Another customer's Class I account: the other side of a customer's transfer (the
    bank's own accounts take only the codes of their business)."""
    customer = await bank.customers.register(
        RegisterCustomer(COUNTER, "李四", PAYEE_ID_NUMBER, "13900139000")
    )
    return await bank.accounts.open(OpenAccount(COUNTER, customer.customer_id, 1, None, PASSWORD))


async def refusal_of(call: Callable[[], object]) -> Code:
    with pytest.raises(Refused) as caught:
        await call()  # type: ignore[misc]
    return caught.value.refusal.code


def run(test: Callable[[Path], object]) -> Callable[[Path], None]:
    def runner(tmp_path: Path) -> None:
        anyio.run(test, tmp_path)  # type: ignore[arg-type]

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


@run
async def test_register_open_deposit_transfer_and_read(tmp_path: Path) -> None:
    """A customer registers, opens a Class I account at a counter, takes cash, and moves
    money by the one posting path; the read models show the balances; a retry with the
    same key is met by id (replayed), not posted twice."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        source = await funded_account(bank, 10_000)
        target = await payee_account(bank)
        posting = bank.payments.transfer(
            COUNTER, "t1", source, target, 2_500, Consent(password=PASSWORD)
        )
        first = await bank.payments.post(posting)
        again = await bank.payments.post(posting)
        assert not first.replayed and again.replayed
        assert first.transfer_id_packed == again.transfer_id_packed
        view = await bank.reads.account(COUNTER, source)
        assert view.balance_minor == 7_500
        page = await bank.reads.history(source, 10)
        assert [item.amount_minor for item in page.items] == [2_500, 10_000]
        assert bank.payments.results["ok"] == 2 and bank.payments.results["exists"] == 1


@run
async def test_refusals_are_typed_values(tmp_path: Path) -> None:
    """Business refusals come back as codes: insufficient funds (the ledger's code),
    a Class I opening at an app channel, an unknown customer, a missing consent."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        source = await funded_account(bank, 100)
        payee = await payee_account(bank)
        posting = bank.payments.transfer(
            COUNTER, "big", source, payee, 1_000, Consent("", PASSWORD)
        )
        with pytest.raises(Refused) as caught:
            await bank.payments.post(posting)
        assert caught.value.refusal.code == Code.TRANSFER_REFUSED
        assert caught.value.refusal.ledger_code == CreateTransferResult.EXCEEDS_CREDITS
        customer_id = bank.core.customer_state().accounts[source].customer_id
        opening = OpenAccount(APP, customer_id, 1, None, PASSWORD)
        assert await refusal_of(lambda: bank.accounts.open(opening)) == (
            Code.CHANNEL_KIND_NOT_ALLOWED
        )
        assert await refusal_of(lambda: bank.reads.transfer(12345)) == Code.TRANSFER_NOT_FOUND
        silent = bank.payments.transfer(COUNTER, "no-consent", source, payee, 1, Consent())
        assert await refusal_of(lambda: bank.payments.post(silent)) == (
            Code.AUTHENTICATION_REQUIRED
        )


@run
async def test_token_expires_on_the_injected_clock(tmp_path: Path) -> None:
    """A transaction token authorizes a debit until its TTL passes on the injected clock,
    then it is refused as invalid (no sleep: the clock is moved)."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        source = await funded_account(bank, 1_000)
        payee = await payee_account(bank)
        issued = await bank.auth.issue_token(IssueToken(COUNTER, source, PASSWORD))
        with_token = Consent(token=issued.token)
        posting = bank.payments.transfer(COUNTER, "tok-1", source, payee, 10, with_token)
        assert (await bank.payments.post(posting)).amount_minor == 10
        clock.now += 61 * 1_000_000_000
        late = bank.payments.transfer(COUNTER, "tok-2", source, payee, 10, with_token)
        assert await refusal_of(lambda: bank.payments.post(late)) == Code.TOKEN_INVALID


@run
async def test_the_store_keeps_a_token_digest_never_the_token(tmp_path: Path) -> None:
    """An issued token is durable in the store (so it fails over), but what the store
    holds is its SHA-256: no key or value written carries the bearer token itself."""
    async with running_bank(tmp_path, Clock()) as bank:
        source = await funded_account(bank, 1_000)
        issued = await bank.auth.issue_token(IssueToken(COUNTER, source, PASSWORD))
        stored = bank.core.running_engine().state
        token_keys = [key for key in stored if key.startswith(b"token/")]
        assert len(token_keys) == 1, token_keys
        secret = issued.token.encode()
        assert all(secret not in key and secret not in value for key, value in stored.items())


@run
async def test_wrong_passwords_lock_until_the_next_business_day(tmp_path: Path) -> None:
    """Five wrong passwords lock the account (with the seconds to the next business day);
    the right one is refused while locked; a day later on the clock it works again."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        source = await funded_account(bank, 1_000)
        payee = await payee_account(bank)
        codes = []
        for attempt in range(5):
            wrong = bank.payments.transfer(
                COUNTER, f"w{attempt}", source, payee, 1, Consent(password="000000")
            )
            codes.append(await refusal_of(lambda wrong=wrong: bank.payments.post(wrong)))
        assert codes == [Code.PASSWORD_WRONG] * 4 + [Code.PASSWORD_LOCKED]
        right = bank.payments.transfer(COUNTER, "r1", source, payee, 1, Consent(password=PASSWORD))
        with pytest.raises(Refused) as caught:
            await bank.payments.post(right)
        assert caught.value.refusal.code == Code.PASSWORD_LOCKED
        assert 0 < caught.value.refusal.extras["retry_after_s"] <= 86_400
        clock.now += 86_400 * 1_000_000_000
        assert (await bank.payments.post(right)).amount_minor == 1


@run
async def test_payment_hold_capture_void_and_reversal(tmp_path: Path) -> None:
    """A payment holds money, a capture posts part of it, a second hold is voided, and a
    reversal returns the captured amount: every step through `Payments.post`."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        payer = await funded_account(bank, 1_000)
        merchant = await payee_account(bank)
        consent = Consent(password=PASSWORD)
        hold = await bank.payments.payment(
            Movement(COUNTER, "p1", payer, 300, consent, counterpart=merchant)
        )
        hold_id = int.from_bytes(hold.transfer_id_packed, "little")
        captured = await bank.payments.capture(Movement(COUNTER, "c1", hold_id, 200))
        assert captured.amount_minor == 200
        second = await bank.payments.payment(
            Movement(COUNTER, "p2", payer, 100, consent, counterpart=merchant)
        )
        second_id = int.from_bytes(second.transfer_id_packed, "little")
        await bank.payments.void(Movement(COUNTER, "v1", second_id, None))
        captured_id = int.from_bytes(captured.transfer_id_packed, "little")
        reversed_ = await bank.payments.reversal(Movement(COUNTER, "r1", captured_id, None))
        assert reversed_.amount_minor == 200 and reversed_.credit == payer
        view = await bank.reads.account(COUNTER, payer)
        assert view.balance_minor == 1_000 and view.pending_debits_minor == 0


class Blocklist:
    """A posting check that refuses any posting debiting a blocked account (a fake risk rule)."""

    def __init__(self) -> None:
        self.blocked: set[int] = set()
        self.seen = 0  # postings the check looked at

    def __call__(self, caller: Caller, records: bytes, count: int) -> None:
        for index in range(count):
            self.seen += 1
            if transfer_view(records, index * TRANSFER_SIZE).debit_account_id in self.blocked:
                raise refused(Code.NOT_APPLICABLE, "blocked", pointer=f"/transfers/{index}")


@run
async def test_a_posting_check_applies_to_single_transfers_holds_and_batches(
    tmp_path: Path,
) -> None:
    """A check installed at the one posting point (`Payments.admit`) sees every posting:
    once the account is blocked, a single transfer, a payment hold and a batch naming it
    in its second item are all refused, and none of them moved money; before the block,
    the same kinds of posting went through."""
    clock = Clock()
    blocklist = Blocklist()
    async with running_bank(tmp_path, clock, (blocklist,)) as bank:
        source = await funded_account(bank, 10_000)
        payee = await payee_account(bank)
        consent = Consent(password=PASSWORD)

        def batch(key: str) -> PostingBatch:
            records = b"".join(
                pack_transfer(
                    id=derive_transfer_id(COUNTER.ledger_id, key, index),
                    debit_account_id=debit,
                    credit_account_id=payee,
                    amount=100,
                    code=code,
                    channel=COUNTER.ledger_id,
                )
                for index, (debit, code) in enumerate(
                    ((CASH_VAULT_ID, TransferCode.CASH_DEPOSIT), (source, TransferCode.TRANSFER))
                )
            )
            return PostingBatch(COUNTER, key, records, 2)

        posted = await bank.payments.post(
            bank.payments.transfer(COUNTER, "ok", source, payee, 100, consent)
        )
        assert posted.amount_minor == 100
        assert (await bank.payments.post_batch(batch("batch-ok"))).histogram == {0: 2}
        blocklist.blocked.add(source)
        seen = blocklist.seen
        single = bank.payments.transfer(COUNTER, "single", source, payee, 100, consent)
        assert await refusal_of(lambda: bank.payments.post(single)) == Code.NOT_APPLICABLE
        hold = Movement(COUNTER, "hold", source, 100, consent, counterpart=payee)
        assert await refusal_of(lambda: bank.payments.payment(hold)) == Code.NOT_APPLICABLE
        with pytest.raises(Refused) as caught:
            await bank.payments.post_batch(batch("batch"))
        assert caught.value.refusal.extras["pointer"] == "/transfers/1"
        assert blocklist.seen == seen + 1 + 1 + 2
        view = await bank.reads.account(COUNTER, source)
        assert view.balance_minor == 10_000 - 100 - 100
