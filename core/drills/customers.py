"""The failover drill's customer load: registrations, openings, password changes.

Clients call the middle office itself (`core.services`, a `Bank` on the
same engine as the transfer load, no HTTP): each round registers a customer
at a counter (a teller named: the customer is verified in the one call, the
identity database asked), opens a Class I account there, binds that Class I
card in the app (with the customer's session: the issuer check on our own
records, then the SMS code, read on the customer's phone at the provider
simulator and entered), opens a Class II account bound to it, and changes the
Class II password. Every acknowledged customer id, account id and password
change is logged; a change whose answer was lost with dc1 is logged as in flight.

`check_customer_state` then looks at what a promoted cluster holds (its
recovered customer state and its ledger): an acknowledged customer or
account missing, or an account whose stored password hash matches neither
its last acknowledged password nor the one in flight, is lost.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson

from core.engine import EngineStopped
from core.errors import TallyError
from core.providers.population import sms_code_in
from core.services.bank import Bank
from core.services.commands import (
    Caller,
    ConfirmSmsCode,
    OpenAccount,
    OpenSession,
    Proof,
    RegisterCustomer,
    SetPassword,
    StartCardBinding,
)
from core.services.identity import resident_id_check_character
from core.services.passwords import check_password, weakness
from core.services.refusals import Code, Refused
from core.services.server_secrets import DEVELOPMENT
from core.services.state import Password

# The counter's registrations name their teller: the teller's face-to-face check is one of
# the counter's verification steps (core/services/policy.py).
COUNTER = Caller("counter", "counter", 3, "T0001", "teller")
APP = Caller("app", "app", 2)
BIND_CARD = "bind_card"
SMS_READ_TIMEOUT_S = 10.0
FIRST_PASSWORD = "135790"
OVERLOADED_PAUSE_S = 0.01


@dataclass
class CustomerLoad:
    """What the customer clients saw acknowledged (and which password changes were in flight)."""

    customers: list[str] = field(default_factory=list)
    accounts: list[int] = field(default_factory=list)
    password_changes: int = 0
    passwords: dict[int, str] = field(default_factory=dict)  # account -> last acknowledged
    in_flight: dict[int, str] = field(default_factory=dict)  # account -> change not answered
    refused: dict[str, int] = field(default_factory=dict)  # refusals by code name

    def counts(self) -> dict[str, int]:
        return {
            "customers": len(self.customers),
            "accounts": len(self.accounts),
            "password_changes": self.password_changes,
            "password_changes_in_flight": len(self.in_flight),
        }


def resident_id(index: int) -> str:
    """A valid resident id, a different one for each index below 13 million."""
    day, sequence = 1 + index % 28, index // 28 % 1000
    month, year = 1 + index // 28_000 % 12, 1960 + index // 336_000 % 40
    first = f"110105{year:04d}{month:02d}{day:02d}{sequence:03d}"
    return first + resident_id_check_character(first)


async def run_customer_clients(
    bank: Bank, load: CustomerLoad, clients: int, simulator_url: str
) -> None:
    """`clients` concurrent rounds until the engine stops (dc1 killed); `simulator_url`:
    the provider simulator whose SMS inboxes (`/sim/sms/{mobile}`) hold the codes."""
    counter = iter(range(10**9))
    phones = httpx.AsyncClient(base_url=simulator_url, timeout=SMS_READ_TIMEOUT_S)

    async def client(c: int) -> None:
        rng = random.Random(c)
        while True:
            try:
                await _round(bank, load, next(counter) * clients + c, rng, phones)
            except EngineStopped:
                return
            except httpx.HTTPError:  # the simulator's phones out of reach (a partition)
                load.refused["sms_inbox_unreachable"] = (
                    load.refused.get("sms_inbox_unreachable", 0) + 1
                )
                await anyio.sleep(OVERLOADED_PAUSE_S)
            except Refused as refusal:
                name = refusal.refusal.code.name.lower()
                load.refused[name] = load.refused.get(name, 0) + 1
                if refusal.refusal.code in (
                    Code.UNAVAILABLE,
                    Code.NOT_READY,
                    Code.STORAGE_UNAVAILABLE,  # the store died: the engine is gone
                ):
                    return
                await anyio.sleep(OVERLOADED_PAUSE_S)

    async with phones, anyio.create_task_group() as task_group:
        for c in range(clients):
            task_group.start_soon(client, c)


async def _round(
    bank: Bank, load: CustomerLoad, index: int, rng: random.Random, phones: httpx.AsyncClient
) -> None:
    id_number = resident_id(index)
    mobile = f"139{rng.randrange(10**8):08d}"
    name = "客户" + str(index)
    view = await bank.customers.register(RegisterCustomer(COUNTER, name, id_number, mobile))
    customer_id = view.customer_id
    load.customers.append(customer_id)
    class_i = (
        await bank.accounts.open(OpenAccount(COUNTER, customer_id, 1, None, FIRST_PASSWORD))
    ).account_id
    load.accounts.append(class_i)
    card = {
        "card_number": str(class_i),
        "card_type": "class_i_debit",
        "holder_name": name,
        "holder_id_number": id_number,
        "reserved_mobile": mobile,
    }
    await _bind_in_app(bank, customer_id, class_i, card, phones)
    class_ii = (
        await bank.accounts.open(OpenAccount(APP, customer_id, 2, card, FIRST_PASSWORD))
    ).account_id
    load.accounts.append(class_ii)
    load.passwords[class_ii] = FIRST_PASSWORD
    new_password = f"{rng.randrange(10**6):06d}"
    while weakness(new_password, id_number) is not None:  # the bank refuses weak ones
        new_password = f"{rng.randrange(10**6):06d}"
    load.in_flight[class_ii] = new_password
    await bank.auth.set_password(
        SetPassword(APP, class_ii, new_password, old_password=FIRST_PASSWORD)
    )
    del load.in_flight[class_ii]
    load.passwords[class_ii] = new_password
    load.password_changes += 1


async def _bind_in_app(
    bank: Bank, customer_id: str, class_i: int, card: dict[str, str], phones: httpx.AsyncClient
) -> None:
    """Bind the Class I card in the app, as its holder (a session bought with the Class I
    password): the issuer step passes on our own records, the SMS code comes back."""
    session = await bank.auth.open_session(OpenSession(APP, class_i, FIRST_PASSWORD))
    proof = Proof(session=session.session)
    verification = bank.verification
    binding = await verification.start_binding(StartCardBinding(APP, customer_id, card, proof))
    if binding.status != "pending" or binding.sms_challenge is None:
        raise TallyError(f"binding {binding.binding_id} is {binding.status}, no SMS sent")
    response = await phones.get(f"/sim/sms/{card['reserved_mobile']}")
    response.raise_for_status()
    messages = response.json()["messages"]
    code = sms_code_in(messages[-1]["text"]) if messages else None
    if code is None:
        raise TallyError(f"no SMS code reached {card['reserved_mobile']}")
    challenge = binding.sms_challenge["challenge_id"]
    confirmed = await verification.confirm_sms_code(
        ConfirmSmsCode(APP, customer_id, challenge, BIND_CARD, binding.binding_id, code, proof)
    )
    if confirmed.status != "confirmed":
        raise TallyError(f"SMS code of binding {binding.binding_id}: {confirmed.status}")


async def check_customer_state(
    state: Mapping[bytes, bytes],
    load: CustomerLoad,
    missing_in_ledger: Callable[[list[int]], Any],
    pepper: bytes = DEVELOPMENT.password_pepper,
) -> dict[str, Any]:
    """What of `load`'s acknowledged work a promoted cluster lacks (`state`: its recovered
    customer state; `missing_in_ledger(ids)`: awaitable set of account ids not in its ledger)."""
    customers_lost = [c for c in load.customers if f"customer/{c}".encode() not in state]
    absent = await missing_in_ledger(load.accounts)
    accounts_lost = [
        a for a in load.accounts if f"account/{a}".encode() not in state or a in absent
    ]
    changed = [a for a, password in load.passwords.items() if password != FIRST_PASSWORD]
    password_lost: list[int] = []
    for account_id in changed:
        value = state.get(f"password/{account_id}".encode())
        if value is None or not await anyio.to_thread.run_sync(
            _matches, value, load.passwords[account_id], load.in_flight.get(account_id), pepper
        ):
            password_lost.append(account_id)
    return {
        "customers_checked": len(load.customers),
        "customers_lost": len(customers_lost),
        "accounts_checked": len(load.accounts),
        "accounts_lost": len(accounts_lost),
        "password_changes_checked": len(changed),
        "password_changes_lost": len(password_lost),
        "customers_lost_ids": customers_lost,
        "accounts_lost_ids": [str(a) for a in accounts_lost],
        "password_changes_lost_ids": [str(a) for a in password_lost],
    }


def _matches(value: bytes, acknowledged: str, in_flight: str | None, pepper: bytes) -> bool:
    record = orjson.loads(value)
    stored = Password(
        bytes.fromhex(record["salt"]),
        bytes.fromhex(record["hash"]),
        record["n"],
        record["r"],
        record["p"],
        record.get("pepper", ""),
    )
    if check_password(acknowledged, stored, pepper):
        return True
    return in_flight is not None and check_password(in_flight, stored, pepper)
