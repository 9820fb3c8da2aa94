"""The ISO 8583 adapter against a real Bank on a temporary journal, no TCP.

Messages are built here with the channel's own codec and keys (the public
development keys of core/data/iso8583-keys.toml) and handed to
`Iso8583Adapter.handle` as a frame's payload; answers are parsed and their MACs
checked. Every message type, repeats, reversals (before and after their
original, and crossing it), and the refusal -> response code table.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from channels.iso8583 import keys, spec
from channels.iso8583.adapter import Iso8583Adapter
from channels.iso8583.codes import BY_CODE, BY_RESULT, response_code
from channels.iso8583.keys import SoftwareKeyStore, load_keys
from channels.iso8583.services import BankServices
from channels.iso8583.spec import Message
from channels.iso8583.terminals import (
    TerminalEntry,
    TerminalRegistryError,
    Terminals,
    load_terminals,
    parse_terminals_text,
)
from channels.registry import Registry, load_registry
from core.data import DATA_DIRECTORY
from core.services import identity
from core.services.bank import Bank
from core.services.commands import Caller, Movement, OpenAccount, SetPassword
from core.services.lifecycle import Settings
from core.services.refusals import Code, Refusal
from ledger.types import CreateTransferResult
from limits.rules import load_rules
from tests.provider_helpers import bind_card, providers, register_at_counter
from tests.repo_paths import REPO_ROOT

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
COUNTER = Caller("counter", "counter", 3)
PIN = "135790"
ATM = "ATM00001"
POS = "POS00001"
RULES = load_rules(REPO_ROOT / "examples/limits.toml")
REGISTRY = load_registry(REPO_ROOT / "examples/channels.toml", RULES)
KEYS = load_keys(DATA_DIRECTORY / "iso8583-keys.toml")


class Clock:
    def __init__(self) -> None:
        self.now = START_NS

    def now_ns(self) -> int:
        return self.now


MASTER_KEY_HEX = "04DCB33B67865D194F9DDFF7E6BCFB94"  # dev-pos-tmk, the shipped key file's
KEY_EXCHANGE_MAC: Message = {"70": "161", "53": spec.KEY_EXCHANGE_CONTROL["mac"]}
KEY_EXCHANGE_PIN: Message = {"70": "161", "53": spec.KEY_EXCHANGE_CONTROL["pin"]}
ECHO: Message = {"70": "301"}


def terminals_text(merchant_account_id: int) -> str:
    """The ATM (no master key) and the POS terminal (with one: key exchanges)."""
    return f"""
[terminals.{ATM}]
channel = "atm"
kind = "atm"
pin_key_id = "dev-atm-tpk"
mac_key_id = "dev-atm-tak"

[terminals.{POS}]
channel = "pos"
kind = "pos"
merchant_account_id = "{merchant_account_id}"
pin_key_id = "dev-pos-tpk"
mac_key_id = "dev-pos-tak"
master_key_id = "dev-pos-tmk"
"""


_id_numbers = itertools.count(1)


async def open_account(bank: Bank, cash_minor: int = 0, account_class: int = 1) -> int:
    """A new customer's Class I account (funded with cash at the counter), or a Class III
    account bound to a new Class I card."""
    first17 = f"11010519800101{next(_id_numbers):03d}"
    id_number = first17 + identity.resident_id_check_character(first17)
    customer = await register_at_counter(bank, "张三", id_number, "13800138000")
    opening = OpenAccount(COUNTER, customer.customer_id, 1, None, PIN)
    account_id = (await bank.accounts.open(opening)).account_id
    if account_class == 3:
        card = {
            "card_number": str(account_id),
            "card_type": "class_i_debit",
            "holder_name": "张三",
            "holder_id_number": id_number,
            "reserved_mobile": "13800138000",
        }
        await bind_card(bank, COUNTER, customer.customer_id, card)
        opening = OpenAccount(COUNTER, customer.customer_id, 3, card, PIN)
        account_id = (await bank.accounts.open(opening)).account_id
    if cash_minor:
        await bank.payments.cash_deposit(
            Movement(COUNTER, f"fund-{account_id}", account_id, cash_minor)
        )
    return account_id


async def balances(bank: Bank, account_id: int) -> tuple[int, int]:
    """(posted balance, pending debits) of an account, as the counter reads it."""
    view = await bank.reads.account(COUNTER, account_id)
    return view.balance_minor, view.pending_debits_minor


@dataclass
class Answer:
    fields: Message
    raw: bytes

    @property
    def code(self) -> str:
        return str(self.fields["39"])


class Device:
    """A terminal as the tests drive it: numbers its messages, signs them, checks answers."""

    def __init__(self, entry: TerminalEntry, store: SoftwareKeyStore) -> None:
        self.terminal_id = entry.terminal_id
        self.pin_key = store.pin_key(entry)
        self.mac_key = store.mac_key(entry)
        self.stans = itertools.count(1)

    def message(
        self,
        mti: str,
        processing: str = "",
        pan: str = "",
        *,
        pin: str | None = PIN,
        amount_minor: int | None = None,
        extra: Message | None = None,
        stan: str = "",
    ) -> Message:
        fields: Message = {
            "t": mti,
            "7": "0101120000",
            "11": stan or f"{next(self.stans):06d}",
            "12": "120000",
            "13": "0101",
            "32": "00010000",
            "37": "600112000001",
            "41": self.terminal_id,
            "42": self.terminal_id.ljust(15, "0"),
            "49": spec.CURRENCY_CNY,
        }
        if processing:
            fields["3"] = processing
        if pan:
            fields["2"] = pan
            if pin is not None:
                fields["52"] = keys.pin_block(pin, pan, self.pin_key)
        if amount_minor is not None:
            fields["4"] = spec.amount_field(amount_minor)
        fields.update(extra or {})
        return fields

    def sign(self, fields: Message) -> bytes:
        return spec.build_signed(fields, functools.partial(keys.mac, key=self.mac_key))

    def reversal(self, original: Message, stan: str = "") -> Message:
        fields = self.message(spec.MTI_REVERSAL_REQUEST, str(original["3"]), stan=stan)
        for name in ("2", "4"):
            if name in original:
                fields[name] = original[name]
        fields["90"] = spec.OriginalData(
            str(original["t"]), str(original["11"]), str(original["7"]), "00010000", ""
        ).field()
        return fields


@dataclass
class Rig:
    bank: Bank
    adapter: Iso8583Adapter
    clock: Clock
    merchant: int
    atm: Device
    pos: Device

    async def send(self, device: Device, fields: Message) -> Answer:
        raw = device.sign(fields)
        answer = await self.adapter.handle(raw)
        assert answer is not None
        parsed = spec.parse(answer)
        mac = spec.message_mac(parsed)
        assert mac is not None and keys.verify(spec.mac_data(answer), mac, device.mac_key)
        assert parsed["t"] == spec.response_mti(str(fields["t"]))
        for name in ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49"):
            assert parsed.get(name) == fields.get(name), name
        return Answer(parsed, answer)

    async def cash(self, pan: int, amount_minor: int, **kwargs: Any) -> tuple[Message, Answer]:
        fields = self.atm.message("0200", "010000", str(pan), amount_minor=amount_minor, **kwargs)
        return fields, await self.send(self.atm, fields)


def adapter_on(bank: Bank, terminals: Terminals, store: SoftwareKeyStore) -> Iso8583Adapter:
    """The adapter on `bank`'s services in this process, as `tally serve --iso8583` has it."""
    return Iso8583Adapter(BankServices(bank, store, terminals), terminals, store)


def write_risk_rules(tmp_path: Path, text: str) -> str:
    """The risk stage's rule file beside the data directory (`Settings.risk_rules_path`)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path.parent / f"{tmp_path.name}-risk.toml"
    path.write_text(text)
    return str(path)


@asynccontextmanager
async def rig(tmp_path: Path, risk_rules: str = "") -> AsyncIterator[Rig]:
    """A bank on a journal in `tmp_path`, the two terminals; `risk_rules`: the risk stage's
    rule file (empty: the default rules)."""
    clock = Clock()
    risk_path = write_risk_rules(tmp_path, risk_rules) if risk_rules else ""
    settings = Settings(
        str(tmp_path),
        scrypt_n=1 << 10,
        token_ttl_s=60,
        password_hash_threads=1,
        **({"risk_rules_path": risk_path} if risk_path else {}),
    )
    async with providers() as simulated, anyio.create_task_group() as task_group:
        bank = Bank(settings, RULES, providers=simulated, now_ns=clock.now_ns)
        await task_group.start(bank.serve)
        with anyio.fail_after(30):
            while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                await anyio.sleep(0.01)
        merchant = await open_account(bank)
        store = load_keys(DATA_DIRECTORY / "iso8583-keys.toml")  # its own: key exchanges
        terminals = parse_terminals_text(terminals_text(merchant), "test", REGISTRY, store)
        entries = terminals.entries
        yield Rig(
            bank,
            adapter_on(bank, terminals, store),
            clock,
            merchant,
            Device(entries[ATM], store),
            Device(entries[POS], store),
        )
        task_group.cancel_scope.cancel()


def run(test: Callable[[Path], object]) -> Callable[[Path, str], None]:
    """The test on asyncio and on trio (the adapter, like the services, runs on both)."""

    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def runner(tmp_path: Path, backend: str) -> None:
        anyio.run(test, tmp_path / backend, backend=backend)  # type: ignore[arg-type]

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


# --- each message type ---------------------------------------------------------------------

# Risk rules by amount, each outcome at its own threshold (the most severe that fires wins).
RISK_RULES = """
version = 1

[holds]
delay_s = 60
review_s = 600

[[rules]]
name = "challenge_100"
type = "large_value"
outcome = "challenge"
codes = ["cash_withdrawal", "payment"]
amount_min = "100.00"

[[rules]]
name = "delay_200"
type = "large_value"
outcome = "delay"
codes = ["cash_withdrawal", "payment"]
amount_min = "200.00"

[[rules]]
name = "review_300"
type = "large_value"
outcome = "review"
codes = ["cash_withdrawal", "payment"]
amount_min = "300.00"

[[rules]]
name = "block_400"
type = "large_value"
outcome = "block"
codes = ["cash_withdrawal", "payment"]
amount_min = "400.00"
"""


@run
async def test_risk_outcomes_at_a_terminal_leave_nothing_held(tmp_path: Path) -> None:
    """At an ATM (cash) and a POS (purchase): a risk CHALLENGE is 65, a BLOCK 59, and a
    DELAY or REVIEW 05 with its hold returned at once (its decision RETURNED), so nothing
    is moved, held, or captured later by the bank; a repeat is answered the same and
    returns nothing twice; an amount no rule fires on is approved."""
    async with rig(tmp_path, RISK_RULES) as r:
        card = await open_account(r.bank, 200_000)
        risk = r.bank.risk
        for device, processing in ((r.atm, "010000"), (r.pos, "000000")):
            for amount_minor, code in (
                (10_000, "65"),
                (20_000, "05"),
                (30_000, "05"),
                (40_000, "59"),
            ):
                fields = device.message("0200", processing, str(card), amount_minor=amount_minor)
                assert (await r.send(device, fields)).code == code, (processing, amount_minor)
                assert (await r.send(device, fields)).code == code  # the repeat
                assert await balances(r.bank, card) == (200_000, 0)
            assert not risk.held  # no hold left for the bank's tick to capture
            approved = device.message("0200", processing, str(card), amount_minor=5_000)
            assert (await r.send(device, approved)).code == "00"
            assert (await r.send(device, r.atm.reversal(approved) if device is r.atm
                                 else r.pos.reversal(approved))).code == "00"  # fmt: skip
            assert await balances(r.bank, card) == (200_000, 0)
        returned = [d for d in risk.records.values() if d["state"] == "returned"]
        assert len(returned) == 4 and {d["outcome"] for d in returned} == {"delay", "review"}
        assert await balances(r.bank, r.merchant) == (0, 0)


@run
async def test_cash_withdrawal_posts_once_and_a_repeat_gets_the_first_answer(
    tmp_path: Path,
) -> None:
    """A 0200 cash withdrawal debits the card's account (00 with an authorization id,
    echoed fields, a valid MAC); the same message again meets the first posting and gets
    the same answer, nothing posted twice; the PIN is checked once (a token is kept). Its
    key (terminal, STAN, field 7) with another amount is 94."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 100_000)
        fields, first = await r.cash(card, 30_000)
        assert first.code == "00" and len(str(first.fields["38"])) == 6
        hashes = r.bank.auth.pool.hashes
        again = await r.send(r.atm, fields)
        assert again.raw == first.raw
        assert await balances(r.bank, card) == (70_000, 0)
        _, second = await r.cash(card, 5_000)
        assert second.code == "00" and second.fields["38"] != first.fields["38"]
        assert r.bank.auth.pool.hashes == hashes  # the kept token consented
        other_amount = dict(fields, **{"4": spec.amount_field(30_001)})
        assert (await r.send(r.atm, other_amount)).code == "94"  # the key, another amount
        assert await balances(r.bank, card) == (65_000, 0)


@run
async def test_purchase_pays_the_merchant_and_an_authorization_holds(tmp_path: Path) -> None:
    """At a POS: a purchase (0200 00) moves the money to the terminal's merchant at once
    (a hold captured), a repeat gets the first answer; an authorization (0100) holds the
    amount on the card's account for the merchant, nothing moved yet."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 50_000)
        purchase = r.pos.message("0200", "000000", str(card), amount_minor=12_000)
        paid = await r.send(r.pos, purchase)
        assert paid.code == "00"
        assert (await r.send(r.pos, purchase)).raw == paid.raw
        assert await balances(r.bank, card) == (38_000, 0)
        assert await balances(r.bank, r.merchant) == (12_000, 0)
        authorization = r.pos.message("0100", "000000", str(card), amount_minor=8_000)
        held = await r.send(r.pos, authorization)
        assert held.code == "00" and held.fields["38"]
        assert await balances(r.bank, card) == (38_000, 8_000)
        assert await balances(r.bank, r.merchant) == (12_000, 0)


@run
async def test_balance_enquiry_answers_field_54_and_posts_nothing(tmp_path: Path) -> None:
    """A 0200 31 answers the ledger and available balances in field 54 (a pending hold
    lowers the available one) and posts nothing; it needs the right PIN like a debit."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 20_000)
        hold = r.pos.message("0100", "000000", str(card), amount_minor=5_000)
        assert (await r.send(r.pos, hold)).code == "00"
        enquiry = await r.send(r.atm, r.atm.message("0200", "310000", str(card)))
        assert enquiry.code == "00" and "38" not in enquiry.fields
        amounts = spec.additional_amounts(str(enquiry.fields["54"]))
        assert [(a.amount_type, a.currency, a.amount_minor) for a in amounts] == [
            (spec.AMOUNT_TYPE_LEDGER_BALANCE, "156", 20_000),
            (spec.AMOUNT_TYPE_AVAILABLE_BALANCE, "156", 15_000),
        ]
        wrong = r.atm.message("0200", "310000", str(card), pin="111111")
        assert (await r.send(r.atm, wrong)).code == "55"
        assert await balances(r.bank, card) == (20_000, 5_000)


@run
async def test_transfer_moves_money_from_102_to_103(tmp_path: Path) -> None:
    """A 0200 40 transfers from the card's account (102 = field 2) to 103 (echoed, the
    MAC in 128), and its 0400 moves the money back; 102 naming another account than the
    card's is refused (12), an unknown 103 is 14."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 10_000)
        payee = await open_account(r.bank)
        extra: Message = {"102": str(card), "103": str(payee)}
        fields = r.atm.message("0200", "400000", str(card), amount_minor=2_500, extra=extra)
        moved = await r.send(r.atm, fields)
        assert moved.code == "00" and "128" in moved.fields
        assert moved.fields["102"] == str(card) and moved.fields["103"] == str(payee)
        assert await balances(r.bank, card) == (7_500, 0)
        assert await balances(r.bank, payee) == (2_500, 0)
        assert (await r.send(r.atm, r.atm.reversal(fields))).code == "00"
        assert await balances(r.bank, card) == (10_000, 0)
        assert await balances(r.bank, payee) == (0, 0)
        assert (await r.send(r.atm, fields)).code == "94"  # a repeat of the reversed original
        fields = r.atm.message("0200", "400000", str(card), amount_minor=2_500, extra=extra)
        assert (await r.send(r.atm, fields)).code == "00"
        other: Message = {"102": str(payee), "103": str(card)}
        stolen = r.atm.message("0200", "400000", str(card), amount_minor=100, extra=other)
        assert (await r.send(r.atm, stolen)).code == "12"
        nowhere: Message = {"103": "6235019999999999999"}
        lost = r.atm.message("0200", "400000", str(card), amount_minor=100, extra=nowhere)
        assert (await r.send(r.atm, lost)).code == "14"
        assert await balances(r.bank, card) == (7_500, 0)


@run
async def test_network_management(tmp_path: Path) -> None:
    """0800 sign-on, sign-off and echo are answered 00 (field 70 echoed, MACed); a key
    exchange is 40 for a terminal without a master key (this rig's ATM); an unknown code
    is 12."""
    async with rig(tmp_path) as r:
        for network, expected in (
            ("001", "00"),
            ("002", "00"),
            ("301", "00"),
            ("161", "40"),
            ("999", "12"),
        ):
            fields = r.atm.message("0800", extra={"70": network})
            answer = await r.send(r.atm, fields)
            assert answer.code == expected and answer.fields["70"] == network


@run
async def test_key_exchange_gives_one_terminal_a_new_key(tmp_path: Path) -> None:
    """0800 161 at a POS with a master key: field 53 asks for the MAC key, the answer is 00
    (MACed with the old key), field 48 the new key under the master key with its check
    value; from then on that terminal's messages verify under the new MAC key only (the
    old one: 63), and the new PIN key opens PIN blocks. A 161 without a valid 53 is 30; a
    terminal without a master key (the ATM) is 40. The key store keeps the new keys in
    memory, for that terminal alone."""
    async with rig(tmp_path) as r:
        pos_entry = r.adapter.terminals.entries[POS]
        master = bytes.fromhex(MASTER_KEY_HEX)
        card = await open_account(r.bank, 10_000)
        assert (await r.send(r.atm, r.atm.message("0800", extra=KEY_EXCHANGE_MAC))).code == "40"
        bad = r.pos.message("0800", extra={"70": "161", "53": "9600000000000000"})
        assert (await r.send(r.pos, bad)).code == "30"
        for usage, control in (("mac", KEY_EXCHANGE_MAC), ("pin", KEY_EXCHANGE_PIN)):
            answer = await r.send(r.pos, r.pos.message("0800", extra=control))
            assert answer.code == "00" and answer.fields["53"] == control["53"]
            encrypted, check_value = spec.key_exchange_data(str(answer.fields["48"]))
            new_key = keys.decrypt_key(encrypted, master)
            assert keys.check_value(new_key) == check_value
            old_key = r.pos.mac_key if usage == "mac" else r.pos.pin_key
            assert new_key != old_key
            if usage == "mac":
                stale = await r.adapter.handle(r.pos.sign(r.pos.message("0800", extra=ECHO)))
                assert stale is not None and spec.parse(stale)["39"] == "63"
                r.pos.mac_key = new_key
            else:
                r.pos.pin_key = new_key
            assert (await r.send(r.pos, r.pos.message("0800", extra=ECHO))).code == "00"
        purchase = r.pos.message("0200", "000000", str(card), amount_minor=1_000)
        assert (await r.send(r.pos, purchase)).code == "00"  # PIN block under the new key
        assert await balances(r.bank, card) == (9_000, 0)
        store = r.adapter.keys
        assert store.mac_key(pos_entry) == r.pos.mac_key  # kept in the store, this terminal's
        atm_entry = r.adapter.terminals.entries[ATM]
        assert store.mac_key(atm_entry) == KEYS.mac_key(atm_entry)  # the ATM's: unchanged
        assert KEYS.mac_key(pos_entry) != r.pos.mac_key  # the file's keys: unchanged


# --- reversals -----------------------------------------------------------------------------


@run
async def test_reversal_of_a_cash_withdrawal_is_posted_once(tmp_path: Path) -> None:
    """A 0400 naming a cash withdrawal (field 90) reverses it: 00, the money back; the
    same 0400 again is 00 and posts nothing; another 0400 for the same original is 00 too
    (already reversed), nothing twice. A repeat of the reversed original is 94."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 10_000)
        original, paid = await r.cash(card, 4_000)
        assert paid.code == "00"
        reversal = r.atm.reversal(original)
        undone = await r.send(r.atm, reversal)
        assert undone.code == "00" and undone.fields["90"] == reversal["90"]
        assert await balances(r.bank, card) == (10_000, 0)
        assert (await r.send(r.atm, reversal)).code == "00"
        assert (await r.send(r.atm, r.atm.reversal(original))).code == "00"
        assert await balances(r.bank, card) == (10_000, 0)
        assert (await r.send(r.atm, original)).code == "94"
        assert await balances(r.bank, card) == (10_000, 0)


@run
async def test_reversal_of_a_declined_or_unknown_original(tmp_path: Path) -> None:
    """A 0400 whose original was declined is 00 (nothing is left posted); one whose
    original never reached the bank is 25 (unable to locate)."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 1_000)
        declined, answer = await r.cash(card, 5_000)
        assert answer.code == "51"
        assert (await r.send(r.atm, r.atm.reversal(declined))).code == "00"
        never = r.atm.message("0200", "010000", str(card), amount_minor=10)
        assert (await r.send(r.atm, r.atm.reversal(never))).code == "25"
        assert await balances(r.bank, card) == (1_000, 0)


@run
async def test_reversals_at_a_pos(tmp_path: Path) -> None:
    """A purchase's 0400 reverses its capture (the merchant pays back); an authorization's
    0400 voids its hold (nothing pending any more); a repeated purchase after its reversal
    is 94 and pays nothing again."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 50_000)
        purchase = r.pos.message("0200", "000000", str(card), amount_minor=7_000)
        assert (await r.send(r.pos, purchase)).code == "00"
        assert (await r.send(r.pos, r.pos.reversal(purchase))).code == "00"
        assert await balances(r.bank, card) == (50_000, 0)
        assert await balances(r.bank, r.merchant) == (0, 0)
        assert (await r.send(r.pos, purchase)).code == "94"
        authorization = r.pos.message("0100", "000000", str(card), amount_minor=9_000)
        assert (await r.send(r.pos, authorization)).code == "00"
        assert await balances(r.bank, card) == (50_000, 9_000)
        assert (await r.send(r.pos, r.pos.reversal(authorization))).code == "00"
        assert (await r.send(r.pos, r.pos.reversal(authorization))).code == "00"
        assert await balances(r.bank, card) == (50_000, 0)
        assert await balances(r.bank, r.merchant) == (0, 0)


@run
async def test_reversal_before_its_original_refuses_the_original(tmp_path: Path) -> None:
    """A terminal timed out and its 0400 arrives before the 0200 it reverses: 25 (nothing
    to reverse yet); when the 0200 arrives it is refused 94 and never posted (also a
    purchase and an authorization at a POS); the reversal repeated is still 25."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 10_000)
        original = r.atm.message("0200", "010000", str(card), amount_minor=3_000)
        reversal = r.atm.reversal(original)
        assert (await r.send(r.atm, reversal)).code == "25"
        assert (await r.send(r.atm, original)).code == "94"
        assert (await r.send(r.atm, reversal)).code == "25"
        for mti in ("0200", "0100"):
            late = r.pos.message(mti, "000000", str(card), amount_minor=2_000)
            assert (await r.send(r.pos, r.pos.reversal(late))).code == "25"
            assert (await r.send(r.pos, late)).code == "94"
        assert await balances(r.bank, card) == (10_000, 0)
        assert await balances(r.bank, r.merchant) == (0, 0)
        hold_key = spec.operation_key(POS, str(late["11"]), str(late["7"]))
        hold_id = r.bank.core.ids.id(7, hold_key, 0)
        assert await r.bank.core.read(lambda ledger: ledger.lookup_transfer(hold_id)) is None


@run
async def test_an_original_crossing_its_reversal_is_refused(tmp_path: Path) -> None:
    """The 0200 is in its password check when its 0400 arrives, cancels it and finds
    nothing to reverse (25); when the 0200 reaches the payments service it is refused
    (94) and never posted; the 0400 repeated is 25 again."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 10_000)
        original = r.atm.message("0200", "010000", str(card), amount_minor=3_000)
        reversal = r.atm.reversal(original)
        answers: dict[str, Answer] = {}
        pool = r.bank.auth.pool  # its one hashing thread, held by the test meanwhile
        release = threading.Event()

        async def hold_the_hashing_thread() -> None:
            pool.admit()
            try:
                await pool.run(release.wait, 10)
            finally:
                pool.leave()

        async def send_original() -> None:
            answers["original"] = await r.send(r.atm, original)

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(hold_the_hashing_thread)
            task_group.start_soon(send_original)
            with anyio.fail_after(5):
                while pool.admitted < 2:  # noqa: ASYNC110 (the 0200 waits for the thread)
                    await anyio.sleep(0.001)
            assert r.adapter._issuing  # past its check for a reversal, before its posting
            answers["reversal"] = await r.send(r.atm, reversal)
            release.set()
        assert answers["reversal"].code == "25" and answers["original"].code == "94"
        assert await balances(r.bank, card) == (10_000, 0)
        original_id = r.bank.core.ids.id(4, spec.operation_key(ATM, "000001", "0101120000"), 0)
        assert await r.bank.core.read(lambda ledger: ledger.lookup_transfer(original_id)) is None
        assert (await r.send(r.atm, reversal)).code == "25"
        assert await balances(r.bank, card) == (10_000, 0)


# --- refusals -> response codes ------------------------------------------------------------


@run
async def test_refusals_map_to_response_codes(tmp_path: Path) -> None:
    """Insufficient funds 51, over the ATM channel's per-transaction cap 61, cash on a
    Class III account 57, an unknown card 14, a wrong PIN 55 (and no PIN 55), five wrong
    PINs lock it: 75 even with the right one; a transaction the terminal's kind or channel
    may not do 58, an unknown processing code 12, a zero amount 13, another currency 12."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 5_000_000)
        class_iii = await open_account(r.bank, 0, account_class=3)
        assert (await r.cash(card, 6_000_000))[1].code == "51"
        assert (await r.cash(card, 2_000_001))[1].code == "61"
        assert (await r.cash(class_iii, 100))[1].code == "57"
        assert (await r.cash(6235019999999999999, 100))[1].code == "14"
        assert (await r.cash(card, 100, pin=None))[1].code == "55"
        zero = r.atm.message("0200", "010000", str(card), amount_minor=0)
        assert (await r.send(r.atm, zero)).code == "13"
        yen = r.atm.message("0200", "010000", str(card), amount_minor=100, extra={"49": "392"})
        assert (await r.send(r.atm, yen)).code == "12"
        at_pos = r.pos.message("0200", "010000", str(card), amount_minor=100)
        assert (await r.send(r.pos, at_pos)).code == "58"
        at_atm = r.atm.message("0200", "000000", str(card), amount_minor=100)
        assert (await r.send(r.atm, at_atm)).code == "58"
        odd = r.atm.message("0200", "990000", str(card), amount_minor=100)
        assert (await r.send(r.atm, odd)).code == "12"
        victim = await open_account(r.bank, 1_000)
        for _ in range(4):
            assert (await r.cash(victim, 100, pin="000000"))[1].code == "55"
        assert (await r.cash(victim, 100, pin="000000"))[1].code == "75"
        assert (await r.cash(victim, 100))[1].code == "75"
        assert await balances(r.bank, card) == (5_000_000, 0)
        assert await balances(r.bank, victim) == (1_000, 0)


@run
async def test_a_changed_password_drops_the_kept_token(tmp_path: Path) -> None:
    """A PIN's kept token is revoked with a password change: the old PIN is then 55, the
    new one 00 (checked afresh); a kept token is renewed when it is about to expire."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 10_000)
        assert (await r.cash(card, 100))[1].code == "00"
        await r.bank.auth.set_password(SetPassword(COUNTER, card, "246801", old_password=PIN))
        assert (await r.cash(card, 100))[1].code == "55"
        assert (await r.cash(card, 100, pin="246801"))[1].code == "00"
        hashes = r.bank.auth.pool.hashes
        r.clock.now += 50 * 1_000_000_000  # past the renewal margin of a 60 s token
        assert (await r.cash(card, 100, pin="246801"))[1].code == "00"
        assert r.bank.auth.pool.hashes == hashes + 1
        assert await balances(r.bank, card) == (9_700, 0)


@run
async def test_a_wrong_pin_sends_the_next_one_to_the_password_check(tmp_path: Path) -> None:
    """With a token kept for the card's good PIN, wrong PINs are still counted; the next
    good PIN goes to the password check (not the kept token), so it clears the count:
    four more wrong ones are 55 again, not a lock. Five in a row lock the account, and
    the good PIN is then 75 although a token was kept for it."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 10_000)
        assert (await r.cash(card, 100))[1].code == "00"
        for _round in range(2):
            for _ in range(4):
                assert (await r.cash(card, 100, pin="000000"))[1].code == "55"
            hashes = r.bank.auth.pool.hashes
            assert (await r.cash(card, 100))[1].code == "00"
            assert r.bank.auth.pool.hashes == hashes + 1  # checked, not the kept token
        for _ in range(4):
            assert (await r.cash(card, 100, pin="000000"))[1].code == "55"
        assert (await r.cash(card, 100, pin="000000"))[1].code == "75"
        assert (await r.cash(card, 100))[1].code == "75"
        assert await balances(r.bank, card) == (9_700, 0)


@run
async def test_unknown_terminal_bad_mac_and_malformed_messages(tmp_path: Path) -> None:
    """Refused before anything is posted: an unknown terminal 03 (unsigned: no key), a
    wrong or missing MAC 63, a missing field 30; a malformed message from a known terminal
    is answered 30 (MACed, with what could be read); one that names no terminal, or is not
    a request, is only logged (no answer)."""
    async with rig(tmp_path) as r:
        card = await open_account(r.bank, 10_000)
        stranger = Device(
            TerminalEntry("ATM99999", "atm", "atm", "dev-atm-tpk", "dev-atm-tak"), KEYS
        )
        fields = stranger.message("0200", "010000", str(card), amount_minor=100)
        raw = await r.adapter.handle(stranger.sign(fields))
        assert raw is not None
        unknown = spec.parse(raw)
        assert unknown["39"] == "03" and spec.message_mac(unknown) is None
        forged = bytearray(r.atm.sign(r.atm.message("0200", "010000", str(card), amount_minor=100)))
        forged[-1] ^= 1
        bad = await r.adapter.handle(bytes(forged))
        assert bad is not None and spec.parse(bad)["39"] == "63"
        unsigned = spec.build(r.atm.message("0200", "010000", str(card), amount_minor=100))
        missing_mac = await r.adapter.handle(unsigned)
        assert missing_mac is not None and spec.parse(missing_mac)["39"] == "63"
        no_stan = r.atm.message("0200", "010000", str(card), amount_minor=100)
        del no_stan["7"]
        assert (await r.send(r.atm, no_stan)).code == "30"
        good = r.atm.sign(r.atm.message("0200", "010000", str(card), amount_minor=100))
        truncated = await r.adapter.handle(good[:-12])
        assert truncated is not None
        answer = spec.parse(truncated)
        assert answer["t"] == "0210" and answer["39"] == "30" and answer["41"] == ATM
        mac = spec.message_mac(answer)
        assert mac is not None and keys.verify(spec.mac_data(truncated), mac, r.atm.mac_key)
        assert await r.adapter.handle(b"\x00" * 40) is None
        response = r.atm.sign(r.atm.message("0210", "010000", str(card), amount_minor=1))
        assert await r.adapter.handle(response) is None
        assert await balances(r.bank, card) == (10_000, 0)


def test_a_bank_still_recovering_answers_91(tmp_path: Path) -> None:
    """Until the bank has recovered, a known terminal's signed message is answered 91
    (issuer unavailable: try again), a sign-on too; nothing reaches the services."""
    bank = Bank(Settings(str(tmp_path), scrypt_n=1 << 10), RULES)
    terminals = parse_terminals_text(terminals_text(6235010000000000012), "t", REGISTRY, KEYS)
    adapter = adapter_on(bank, terminals, KEYS)
    atm = Device(terminals.entries[ATM], KEYS)

    async def main() -> None:
        for fields in (
            atm.message("0200", "010000", "6235010000000000012", amount_minor=100),
            atm.message("0800", extra={"70": "001"}),
        ):
            raw = await adapter.handle(atm.sign(fields))
            assert raw is not None and spec.parse(raw)["39"] == "91"

    anyio.run(main)


# --- the tables and the registry -----------------------------------------------------------


def test_every_refusal_and_ledger_result_has_a_response_code() -> None:
    """codes.py is total: every service refusal, and every failed ledger result carried
    by TRANSFER_REFUSED (another channel's transfer answers as a missing one), has its
    two-character code; the codes the brief names land where it says."""
    assert set(BY_CODE) == set(Code) - {Code.TRANSFER_REFUSED, Code.TRANSFER_OF_ANOTHER_CHANNEL}
    R = CreateTransferResult
    assert set(BY_RESULT) == set(R) - {R.OK, R.EXISTS}
    assert all(
        len(code) == 2 and code.isdigit() for code in (*BY_CODE.values(), *BY_RESULT.values())
    )
    expected = [
        (Refusal(Code.TRANSFER_REFUSED, ledger_code=R.EXCEEDS_CREDITS), "51"),
        (Refusal(Code.TRANSFER_REFUSED, ledger_code=R.EXCEEDS_DAILY_OUTFLOW), "61"),
        (Refusal(Code.PASSWORD_WRONG), "55"),
        (Refusal(Code.PASSWORD_LOCKED), "75"),
        (Refusal(Code.CUSTOMER_ACCOUNT_NOT_FOUND), "14"),
        (Refusal(Code.TRANSFER_REFUSED, ledger_code=R.CASH_NOT_ALLOWED), "57"),
        (Refusal(Code.CHANNEL_KIND_NOT_ALLOWED), "58"),
        (Refusal(Code.OVERLOADED), "91"),
        (Refusal(Code.NOT_READY), "91"),
        # Another channel's transfer answers as a missing one.
        (Refusal(Code.TRANSFER_OF_ANOTHER_CHANNEL, ledger_code=R.REVERSAL_TARGET_NOT_FOUND), "25"),
        (Refusal(Code.TRANSFER_REFUSED, ledger_code=R.EXISTS_WITH_DIFFERENT_AMOUNT), "94"),
        (Refusal(Code.RISK_CHALLENGE), "65"),
    ]
    for refusal, code in expected:
        assert response_code(refusal) == code, refusal


def test_the_shipped_terminal_registry_loads_and_equals_the_example() -> None:
    """core/data/terminals.toml is byte for byte examples/terminals.toml and resolves
    against the shipped channel registry and key store: ATMs do cash, balances, transfers
    and reversals at channel atm; the POS terminal purchases, holds and voids at pos."""
    shipped = DATA_DIRECTORY / "terminals.toml"
    assert shipped.read_bytes() == (REPO_ROOT / "examples/terminals.toml").read_bytes()
    registry = load_registry(
        DATA_DIRECTORY / "channels.toml", load_rules(DATA_DIRECTORY / "limits.toml")
    )
    terminals = load_terminals(shipped, registry, KEYS)
    atm, pos = terminals.get(ATM), terminals.get(POS)
    assert atm is not None and pos is not None
    assert atm.caller == Caller("atm", "atm", 4) and pos.caller == Caller("pos", "atm", 7)
    assert {t[1] for t in atm.allowed} == {"01", "31", "40", ""} and not atm.voids
    assert ("0100", "00") in pos.allowed and ("0200", "00") in pos.allowed and pos.voids


def test_terminal_registry_problems_are_listed_at_once() -> None:
    """A terminal id that is not 8 characters, a channel the registry lacks, a POS without
    a merchant, an ATM with one, an unknown key id: every problem in one error."""
    text = """
[terminals.SHORT]
channel = "atm"
kind = "atm"
pin_key_id = "dev-atm-tpk"
mac_key_id = "dev-atm-tak"

[terminals.POS00009]
channel = "pos"
kind = "pos"
pin_key_id = "dev-pos-tpk"
mac_key_id = "dev-pos-tak"

[terminals.ATM00009]
channel = "atm"
kind = "atm"
merchant_account_id = "6235010000000000012"
pin_key_id = "dev-atm-tpk"
mac_key_id = "dev-atm-tak"
"""
    with pytest.raises(TerminalRegistryError) as caught:
        parse_terminals_text(text, "t.toml", REGISTRY, KEYS)
    problems = "\n".join(caught.value.problems)
    assert "terminals.SHORT" in problems and "exactly 8" in problems
    assert "POS00009.merchant_account_id" in problems
    assert "ATM00009.merchant_account_id" in problems
    text = (
        '[terminals.ATM00009]\nchannel = "nope"\nkind = "atm"\npin_key_id = "x"\n'
        'mac_key_id = "dev-atm-tak"\n'
    )
    with pytest.raises(TerminalRegistryError) as caught:
        parse_terminals_text(text, "t.toml", REGISTRY, KEYS)
    assert "no channel 'nope'" in caught.value.problems[0]
    text = text.replace('"nope"', '"atm"')
    with pytest.raises(TerminalRegistryError) as caught:
        parse_terminals_text(text, "t.toml", REGISTRY, KEYS)
    assert "pin_key_id" in caught.value.problems[0]
    bank_channel = text.replace('"atm"\nkind', '"bank"\nkind').replace('"x"', '"dev-atm-tpk"')
    with pytest.raises(TerminalRegistryError) as caught:
        parse_terminals_text(bank_channel, "t.toml", REGISTRY, KEYS)
    assert "of kind 'internal'" in caught.value.problems[0]


def test_a_terminal_without_a_granted_operation_cannot_ask_for_it() -> None:
    """A channel registry that does not grant `transfer` to the ATMs' channel leaves the
    ATM terminals without 0200 40 (answered 58), the rest unchanged."""
    text = (
        (REPO_ROOT / "examples/channels.toml")
        .read_text()
        .replace('  "transfer", "reversal",\n]', '  "reversal",\n]', 1)
    )
    registry: Registry = load_registry_text(text)
    terminals: Terminals = parse_terminals_text(
        terminals_text(6235010000000000012), "t", registry, KEYS
    )
    atm = terminals.get(ATM)
    assert atm is not None and ("0200", "40") not in atm.allowed
    assert ("0200", "01") in atm.allowed and ("0400", "") in atm.allowed


def load_registry_text(text: str) -> Registry:
    from channels.registry import parse_registry_text

    return parse_registry_text(text, "channels.toml", RULES)


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tally.iso8583")
