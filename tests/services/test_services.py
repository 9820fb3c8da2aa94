"""The middle office without HTTP: a real engine on a real journal in a tmp dir,
driven through typed commands, with an injected clock so nothing sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from core.services import passwords
from core.services.actors import Actors, ChannelActors, RoleLimits
from core.services.bank import Bank
from core.services.commands import (
    Caller,
    Consent,
    IssueToken,
    Movement,
    OpenAccount,
    OpenSession,
    PostingBatch,
    Proof,
    RegisterCustomer,
    SetPassword,
)
from core.services.lifecycle import Settings
from core.services.payments import PostingCheck
from core.services.refusals import Code, Refused, refused
from core.services.state import Password, password_record
from ledger.constants import CASH_VAULT_ID, SETTLEMENT_ID
from ledger.records import pack_transfer, transfer_view
from ledger.types import TRANSFER_SIZE, CreateTransferResult, TransferCode
from limits.rules import load_rules
from tests.provider_helpers import bind_card, providers, register_at_counter, session_proof

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
COUNTER = Caller("counter", "counter", 3)
TELLER = Caller("counter", "counter", 3, "T0001", "teller")
SUPERVISOR = Caller("counter", "counter", 3, "S0001", "supervisor")
APP = Caller("app", "app", 1)
BANK = Caller("bank", "internal", 6)
ID_NUMBER = "11010519491231002X"  # a valid resident ID (check digit X)
PAYEE_ID_NUMBER = "110105198501010012"
PASSWORD = "135790"


class Clock:
    def __init__(self) -> None:
        self.now = START_NS

    def now_ns(self) -> int:
        return self.now


@asynccontextmanager
async def running_bank(
    directory: Path,
    clock: Clock,
    posting_checks: tuple[PostingCheck, ...] = (),
    actors: Actors | None = None,
) -> AsyncIterator[Bank]:
    settings = Settings(str(directory), scrypt_n=1 << 10, token_ttl_s=60)
    async with providers() as simulated, anyio.create_task_group() as task_group:
        bank = Bank(
            settings,
            load_rules("examples/limits.toml"),
            providers=simulated,
            now_ns=clock.now_ns,
            posting_checks=posting_checks,
            actors=actors,
        )
        await task_group.start(bank.serve)
        with anyio.fail_after(30):
            while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        yield bank
        task_group.cancel_scope.cancel()


async def funded_account(bank: Bank, amount_minor: int) -> int:
    customer = await register_at_counter(bank, "张三", ID_NUMBER, "13800138000")
    opened = await bank.accounts.open(OpenAccount(COUNTER, customer.customer_id, 1, None, PASSWORD))
    account_id = opened.account_id
    await bank.payments.cash_deposit(Movement(COUNTER, "fund", account_id, amount_minor))
    return account_id


async def payee_account(bank: Bank) -> int:
    """Another customer's account to pay into (the bank's own accounts are the internal
    channel's)."""
    customer = await register_at_counter(bank, "李四", PAYEE_ID_NUMBER, "13800138001")
    opening = OpenAccount(COUNTER, customer.customer_id, 1, None, PASSWORD)
    return (await bank.accounts.open(opening)).account_id


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
        page = await bank.reads.history(COUNTER, source, 10)
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
        assert await refusal_of(lambda: bank.reads.transfer(COUNTER, 12345)) == (
            Code.TRANSFER_NOT_FOUND
        )
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
async def test_customer_sessions_are_scoped_expire_and_end_with_a_password_change(
    tmp_path: Path,
) -> None:
    """A session bought with an account's password reads that customer's account at its own
    channel only (not another channel's, not a bank account); the store keeps its digest;
    a password change revokes it; a new one stops at its TTL on the injected clock."""
    clock = Clock()
    wechat = Caller("wechat", "wechat", 1)
    async with running_bank(tmp_path, clock) as bank:
        source = await funded_account(bank, 1_000)
        opened = await bank.auth.open_session(OpenSession(APP, source, PASSWORD))
        proof = Proof(session=opened.session)
        assert (await bank.reads.account(APP, source, proof)).balance_minor == 1_000
        customer_id = bank.core.customer_state().accounts[source].customer_id
        assert bank.customers.read(APP, customer_id, proof).customer_id == customer_id
        for caller, account, expected in (
            (wechat, source, Code.SESSION_INVALID),
            (APP, SETTLEMENT_ID, Code.READ_NOT_IN_SCOPE),
        ):
            refusal = await refusal_of(lambda: bank.reads.account(caller, account, proof))  # noqa: B023
            assert refusal == expected, (caller, account)
        bare = await refusal_of(lambda: bank.reads.account(APP, source))
        assert bare == Code.READ_AUTHENTICATION_REQUIRED
        stored = bank.core.running_engine().state
        secret = opened.session.encode()
        assert any(key.startswith(b"session/") for key in stored)
        assert all(secret not in key and secret not in value for key, value in stored.items())
        await bank.auth.set_password(SetPassword(APP, source, "246813", old_password=PASSWORD))
        revoked = await refusal_of(lambda: bank.reads.account(APP, source, proof))
        assert revoked == Code.SESSION_INVALID
        renewed = Proof(
            session=(await bank.auth.open_session(OpenSession(APP, source, "246813"))).session
        )
        assert (await bank.reads.account(APP, source, renewed)).balance_minor == 1_000
        clock.now += 901 * 1_000_000_000
        expired = await refusal_of(lambda: bank.reads.account(APP, source, renewed))
        assert expired == Code.SESSION_INVALID


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
async def test_wrong_passwords_lock_until_a_supervisor_resets(tmp_path: Path) -> None:
    """Five wrong passwords lock the account; the right one is refused while locked, still
    a day later on the clock and a week later; a teller's reset is refused, a supervisor's
    (with the holder's ID number) lifts the lock and the new password works."""
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
        assert await refusal_of(lambda: bank.payments.post(right)) == Code.PASSWORD_LOCKED
        for days in (1, 7):
            clock.now = START_NS + days * 86_400 * 1_000_000_000
            assert await refusal_of(lambda: bank.payments.post(right)) == Code.PASSWORD_LOCKED
        reset = SetPassword(TELLER, source, "246813", id_number=ID_NUMBER)
        assert await refusal_of(lambda: bank.auth.set_password(reset)) == Code.SUPERVISOR_REQUIRED
        reset.caller = SUPERVISOR
        await bank.auth.set_password(reset)
        again = bank.payments.transfer(COUNTER, "r2", source, payee, 1, Consent(password="246813"))
        assert (await bank.payments.post(again)).amount_minor == 1


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
                    id=bank.core.ids.id(BANK.ledger_id, key, index),
                    debit_account_id=debit,
                    credit_account_id=payee,
                    amount=100,
                    code=code,
                    channel=BANK.ledger_id,
                )
                for index, (debit, code) in enumerate(
                    ((CASH_VAULT_ID, TransferCode.CASH_DEPOSIT), (source, TransferCode.TRANSFER))
                )
            )
            return PostingBatch(BANK, key, records, 2)

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


@run
async def test_concurrent_wrong_passwords_are_reserved_before_the_hash(tmp_path: Path) -> None:
    """40 wrong passwords checked at once through the service: at most 5 hashes are
    computed, the account ends locked with a count of 5, and the right password is then
    refused as locked."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        source = await funded_account(bank, 1_000)
        hashes_before = bank.auth.pool.hashes
        codes: list[Code] = []

        async def guess() -> None:
            codes.append(await refusal_of(lambda: bank.auth.verify_password(source, "864209")))

        async with anyio.create_task_group() as task_group:
            for _ in range(40):
                task_group.start_soon(guess)
        assert bank.auth.pool.hashes - hashes_before <= 5
        assert codes.count(Code.PASSWORD_WRONG) <= 4
        assert set(codes) <= {Code.PASSWORD_WRONG, Code.PASSWORD_LOCKED, Code.PASSWORD_CHECKS_BUSY}
        assert bank.core.customer_state().failures[source][1] == 5
        locked = bank.auth.verify_password(source, PASSWORD)
        assert await refusal_of(lambda: locked) == Code.PASSWORD_LOCKED


@run
async def test_an_unpeppered_hash_checks_once_and_is_rehashed(tmp_path: Path) -> None:
    """A password stored before the pepper (no pepper id, older parameters) still checks,
    and the correct check stores it again keyed with the pepper and the settings' cost."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        source = await funded_account(bank, 1_000)
        salt = b"s" * 16
        legacy = Password(
            salt, passwords._scrypt(PASSWORD.encode(), salt, 1 << 9, 8, 1), 1 << 9, 8, 1
        )
        state = bank.core.customer_state()
        await state.commit([password_record(source, legacy)])
        await bank.auth.verify_password(source, PASSWORD)
        stored = state.passwords[source]
        pepper = bank.settings.secrets.password_pepper
        assert stored.pepper_id == passwords.pepper_id(pepper) and stored.n == 1 << 10
        assert passwords.check_password(PASSWORD, stored, pepper)
        assert await refusal_of(lambda: bank.auth.verify_password(source, "864209")) == (
            Code.PASSWORD_WRONG
        )


@run
async def test_role_caps_hold_on_every_posting_route(tmp_path: Path) -> None:
    """With actor rules for the counter: a posting naming no actor is refused at the one
    posting point; a teller's cash deposit and transfer over the teller's caps are refused
    and move nothing; a supervisor's are posted; a void is never capped. (The batch route
    is the internal channel's alone, which acts for no teller.)"""
    clock = Clock()
    rules = ChannelActors(
        True,
        {"teller": RoleLimits(1_000, 500), "supervisor": RoleLimits(100_000, 50_000)},
    )
    async with running_bank(tmp_path, clock, actors=Actors({3: rules})) as bank:
        customer = await bank.customers.register(
            RegisterCustomer(SUPERVISOR, "张三", ID_NUMBER, "13800138000")
        )
        opened = await bank.accounts.open(
            OpenAccount(SUPERVISOR, customer.customer_id, 1, None, PASSWORD)
        )
        source = opened.account_id
        payee = await payee_account(bank)
        deposit = Movement(COUNTER, "d0", source, 100)
        assert await refusal_of(lambda: bank.payments.cash_deposit(deposit)) == Code.ACTOR_REQUIRED
        over = Movement(TELLER, "d1", source, 501)
        assert await refusal_of(lambda: bank.payments.cash_deposit(over)) == (
            Code.ACTOR_LIMIT_EXCEEDED
        )
        await bank.payments.cash_deposit(Movement(TELLER, "d2", source, 500))
        await bank.payments.cash_deposit(Movement(SUPERVISOR, "d3", source, 20_000))
        consent = Consent(password=PASSWORD)
        big = bank.payments.transfer(TELLER, "t1", source, payee, 1_001, consent)
        assert await refusal_of(lambda: bank.payments.post(big)) == Code.ACTOR_LIMIT_EXCEEDED
        assert (await bank.reads.account(SUPERVISOR, source)).balance_minor == 20_500
        hold = Movement(SUPERVISOR, "h1", source, 5_000, consent, counterpart=payee)
        held = await bank.payments.payment(hold)
        payment_id = int.from_bytes(held.transfer_id_packed, "little")
        await bank.payments.void(Movement(TELLER, "v1", payment_id, None))
        moved = bank.payments.transfer(SUPERVISOR, "t2", source, payee, 1_001, consent)
        assert (await bank.payments.post(moved)).amount_minor == 1_001


@run
async def test_who_may_move_what_is_enforced_by_the_services(tmp_path: Path) -> None:
    """With no adapter in front: `post_batch` refuses a counter's batch itself; a posting
    naming one of the bank's own accounts is refused unless the caller is internal; a hold is
    captured and a transfer reversed only by the channel that created it (another channel is
    told the target does not exist); an opening with a key, retried after a restart, names the
    first account, and the same key with another class is refused."""
    clock = Clock()
    async with running_bank(tmp_path, clock) as bank:
        payer = await funded_account(bank, 1_000)
        merchant = await payee_account(bank)
        consent = Consent(password=PASSWORD)
        record = pack_transfer(
            id=bank.core.ids.id(COUNTER.ledger_id, "b", 0),
            debit_account_id=SETTLEMENT_ID,
            credit_account_id=payer,
            amount=100,
            code=TransferCode.TRANSFER,
            channel=COUNTER.ledger_id,
        )
        minted = PostingBatch(COUNTER, "b", record, 1)
        assert await refusal_of(lambda: bank.payments.post_batch(minted)) == (
            Code.CHANNEL_KIND_NOT_ALLOWED
        )
        with pytest.raises(Refused) as caught:
            bank.payments.transfer(COUNTER, "t", payer, SETTLEMENT_ID, 1, consent)
        assert caught.value.refusal.code == Code.INTERNAL_ACCOUNT_NOT_ALLOWED
        vault = Movement(COUNTER, "v", CASH_VAULT_ID, 1)
        assert await refusal_of(lambda: bank.payments.cash_deposit(vault)) == (
            Code.INTERNAL_ACCOUNT_NOT_ALLOWED
        )
        hold = await bank.payments.payment(
            Movement(COUNTER, "h", payer, 300, consent, counterpart=merchant)
        )
        hold_id = int.from_bytes(hold.transfer_id_packed, "little")
        for settle in (bank.payments.capture, bank.payments.void):
            with pytest.raises(Refused) as caught:
                await settle(Movement(APP, "s", hold_id, None))
            assert caught.value.refusal.code == Code.TRANSFER_OF_ANOTHER_CHANNEL
            assert (
                caught.value.refusal.ledger_code == CreateTransferResult.PENDING_TRANSFER_NOT_FOUND
            )
        captured = await bank.payments.capture(Movement(COUNTER, "c", hold_id, None))
        captured_id = int.from_bytes(captured.transfer_id_packed, "little")
        with pytest.raises(Refused) as caught:
            await bank.payments.reversal(Movement(BANK, "r", captured_id, None))
        assert caught.value.refusal.ledger_code == CreateTransferResult.REVERSAL_TARGET_NOT_FOUND
        assert (await bank.reads.account(COUNTER, merchant)).balance_minor == 300
        customer_id = bank.core.customer_state().accounts[payer].customer_id
        card = {
            "card_number": str(payer),
            "card_type": "class_i_debit",
            "holder_name": "张三",
            "holder_id_number": ID_NUMBER,
            "reserved_mobile": "13800138000",
        }
        # The app binds the Class I card (issuer check on our records, SMS code) with the
        # customer's session (the counter registered them), then opens.
        proof = await session_proof(bank, APP, payer, PASSWORD)
        await bind_card(bank, APP, customer_id, card, proof=proof)
        opening = OpenAccount(APP, customer_id, 2, card, PASSWORD, key="open-1")
        first = await bank.accounts.open(opening)
        assert not first.replayed
    async with running_bank(tmp_path, clock) as bank:
        retried = await bank.accounts.open(opening)
        assert retried.replayed and retried.account_id == first.account_id
        other = OpenAccount(APP, customer_id, 3, card, PASSWORD, key="open-1")
        assert await refusal_of(lambda: bank.accounts.open(other)) == Code.IDEMPOTENCY_KEY_REUSED
        customer = bank.core.customer_state().customers[customer_id]
        assert len(customer.accounts) == 2  # the Class I and the one Class II


@run
async def test_a_barred_operation_is_never_posted_even_after_a_restart(tmp_path: Path) -> None:
    """`Payments.bar` cancels an operation key before it arrives (a reversal that came
    first): a posting under it is refused ID_ALREADY_FAILED and nothing moves, after a
    restart too; another key posts; the bar is forgotten after the log's retention."""
    clock = Clock()
    atm = Caller("atm", "atm", 4)
    async with running_bank(tmp_path, clock) as bank:
        account_id = await funded_account(bank, 10_000)
        issued = await bank.auth.issue_token(IssueToken(atm, account_id, PASSWORD))
        await bank.payments.bar(atm, "T1:000001:0101120000")
    async with running_bank(tmp_path, clock) as bank:
        move = Movement(atm, "T1:000001:0101120000", account_id, 3_000, Consent(issued.token))
        with pytest.raises(Refused) as caught:
            await bank.payments.cash_withdrawal(move)
        assert caught.value.refusal.ledger_code == CreateTransferResult.ID_ALREADY_FAILED
        assert (await bank.reads.account(COUNTER, account_id)).balance_minor == 10_000
        other = Movement(atm, "T1:000002:0101120000", account_id, 3_000, Consent(issued.token))
        assert (await bank.payments.cash_withdrawal(other)).amount_minor == 3_000
        bank.payments._forget_barred(clock.now + int(bank.settings.retention_s * 1e9) + 1)
        assert not bank.payments.barred
