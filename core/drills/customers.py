"""The failover drill's customer load: registrations, openings, password changes.

Clients call the middle office itself (`core.services`, a `Bank` on the
same engine as the transfer load, no HTTP): each round registers a customer
at a counter, opens a Class I account there, opens a Class II account in
the app bound to that Class I card, and changes the Class II password.
Every acknowledged customer id, account id and password change is logged;
a change whose answer was lost with dc1 is logged as in flight.

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
import orjson

from core.engine import EngineStopped
from core.services.bank import Bank
from core.services.commands import Caller, OpenAccount, RegisterCustomer, SetPassword
from core.services.identity import resident_id_check_character
from core.services.passwords import check_password, weakness
from core.services.refusals import Code, Refused
from core.services.server_secrets import DEVELOPMENT
from core.services.state import Password

COUNTER = Caller("counter", "counter", 3)
APP = Caller("app", "app", 2)
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


async def run_customer_clients(bank: Bank, load: CustomerLoad, clients: int) -> None:
    """`clients` concurrent rounds until the engine stops (dc1 killed)."""
    counter = iter(range(10**9))

    async def client(c: int) -> None:
        rng = random.Random(c)
        while True:
            try:
                await _round(bank, load, next(counter) * clients + c, rng)
            except EngineStopped:
                return
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

    async with anyio.create_task_group() as task_group:
        for c in range(clients):
            task_group.start_soon(client, c)


async def _round(bank: Bank, load: CustomerLoad, index: int, rng: random.Random) -> None:
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
