"""What the ISO 8583 adapter asks of the bank, in-process or over the core link.

`TerminalServices` is every call the adapter (channels/iso8583/adapter.py) makes: the
payments a terminal posts, the balance it reads, the token a PIN buys, the channel's
rate limit, the id a reversal names its original by, and the terminal keys a key
exchange changes. Two implementations:

- `BankServices`: the services of a `Bank` in this process (the one process, and the
  core behind front-ends, which answers their `CALLS` with it);
- `LinkServices`: a front-end's (channels/frontend.py), each call a typed `CALL` to
  the core over the core link (core/link/calls.py), so the adapter runs in the
  front-ends with every business rule, rate limit and password check in the core.

Rate limits hold across front-ends because the bucket is the core's (the one the
channel's HTTP requests take from). Exchanged terminal keys are the core's too: a
key exchange at one front-end is in force at every other from the terminal's next
message (a POS that dials in for each transaction may land on any of them), because
a front-end asks the core for the exchanged keys of a terminal that has a master key
before it reads that terminal's message. Terminals without a master key never exchange
and cost no such call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from channels.iso8583.keys import KeyStore
from channels.iso8583.terminals import Terminals
from channels.registry import Registry
from core.link.calls import Call, Implementation
from core.services.commands import Caller, Consent, IssueToken, Movement, Proof
from core.services.results import AccountRead, Posted, TokenIssued

if TYPE_CHECKING:
    from core.link.client import LinkClient
    from core.services.bank import Bank

OverRate = Callable[[str], bool]  # channel name -> over its rate (counted), or not


class TerminalServices(Protocol):
    """The adapter's calls (see the module docstring)."""

    @property
    def ready(self) -> bool: ...

    def now_ns(self) -> int: ...

    async def over_rate(self, channel: str) -> bool: ...

    async def transfer_id(self, ledger_id: int, key: str) -> int: ...

    async def cash_withdrawal(self, move: Movement) -> Posted: ...

    async def purchase(self, move: Movement) -> Posted: ...

    async def payment(self, move: Movement) -> Posted: ...

    async def reversal(self, move: Movement) -> Posted: ...

    async def void(self, move: Movement) -> Posted: ...

    async def bar(self, caller: Caller, key: str) -> None: ...

    async def transfer(
        self, caller: Caller, key: str, debit: int, credit: int, amount_minor: int,
        consent: Consent,
    ) -> Posted: ...  # fmt: skip

    async def account(self, caller: Caller, account_id: int, proof: Proof) -> AccountRead: ...

    async def issue_token(self, command: IssueToken) -> TokenIssued: ...

    async def exchange_key(self, terminal_id: str, usage: str) -> tuple[bytes, str] | None: ...

    async def exchanged_keys(self, terminal_id: str) -> dict[str, bytes] | None:
        """The terminal's exchanged keys by usage, to install in this process's key
        store; None when the keys are this process's own (nothing to install)."""


# The calls a front-end's adapter makes of the core: names, argument and result types.
OVER_RATE: Call[bool] = Call("iso8583.over_rate", (str,), bool)
TRANSFER_ID: Call[int] = Call("iso8583.transfer_id", (int, str), int)
CASH_WITHDRAWAL: Call[Posted] = Call("payments.cash_withdrawal", (Movement,), Posted)
PURCHASE: Call[Posted] = Call("payments.purchase", (Movement,), Posted)
PAYMENT: Call[Posted] = Call("payments.payment", (Movement,), Posted)
REVERSAL: Call[Posted] = Call("payments.reversal", (Movement,), Posted)
VOID: Call[Posted] = Call("payments.void", (Movement,), Posted)
BAR: Call[None] = Call("payments.bar", (Caller, str), type(None))
TRANSFER: Call[Posted] = Call("payments.transfer", (Caller, str, int, int, int, Consent), Posted)
ACCOUNT: Call[AccountRead] = Call("reads.account", (Caller, int, Proof), AccountRead)
ISSUE_TOKEN: Call[TokenIssued] = Call("auth.issue_token", (IssueToken,), TokenIssued)
EXCHANGE_KEY: Call[tuple[bytes, str] | None] = Call(
    "iso8583.exchange_key", (str, str), tuple[bytes, str] | None
)
EXCHANGED_KEYS: Call[dict[str, bytes]] = Call("iso8583.exchanged_keys", (str,), dict[str, bytes])


class BankServices:
    """`TerminalServices` on a `Bank` in this process. `keys` and `terminals`: the key
    store and terminal registry key exchanges are made with (`install_registry` keeps
    the terminals resolved under the channel registry in force); `over_rate`: the
    channel tier's rate check (None: unlimited)."""

    def __init__(
        self,
        bank: Bank,
        keys: KeyStore,
        terminals: Terminals,
        over_rate: OverRate | None = None,
    ) -> None:
        self.bank = bank
        self.core = bank.core
        self.payments = bank.payments
        self.keys = keys
        self.terminals = terminals
        self._over_rate = over_rate

    @property
    def ready(self) -> bool:
        return self.core.ready

    def now_ns(self) -> int:
        return self.core.now_ns()

    def install_registry(self, registry: Registry) -> None:
        self.terminals = self.terminals.resolve(registry, self.keys)

    async def over_rate(self, channel: str) -> bool:
        return self.over_rate_now(channel)

    async def transfer_id(self, ledger_id: int, key: str) -> int:
        return self.transfer_id_now(ledger_id, key)

    async def cash_withdrawal(self, move: Movement) -> Posted:
        return await self.payments.cash_withdrawal(move)

    async def purchase(self, move: Movement) -> Posted:
        return await self.payments.purchase(move)

    async def payment(self, move: Movement) -> Posted:
        return await self.payments.payment(move)

    async def reversal(self, move: Movement) -> Posted:
        return await self.payments.reversal(move)

    async def void(self, move: Movement) -> Posted:
        return await self.payments.void(move)

    async def bar(self, caller: Caller, key: str) -> None:
        await self.payments.bar(caller, key)

    async def transfer(
        self, caller: Caller, key: str, debit: int, credit: int, amount_minor: int,
        consent: Consent,
    ) -> Posted:  # fmt: skip
        payments = self.payments
        return await payments.post(
            payments.transfer(caller, key, debit, credit, amount_minor, consent)
        )

    async def account(self, caller: Caller, account_id: int, proof: Proof) -> AccountRead:
        return await self.bank.reads.account(caller, account_id, proof)

    async def issue_token(self, command: IssueToken) -> TokenIssued:
        return await self.bank.auth.issue_token(command)

    async def exchange_key(self, terminal_id: str, usage: str) -> tuple[bytes, str] | None:
        return self.exchange_key_now(terminal_id, usage)

    async def exchanged_keys(self, terminal_id: str) -> dict[str, bytes] | None:
        return None  # this process's key store is the one the exchanges changed

    def exchanged_keys_of(self, terminal_id: str) -> dict[str, bytes]:
        """For a front-end (`EXCHANGED_KEYS`): the keys exchanged here."""
        return self.keys.exchanged(terminal_id)

    def over_rate_now(self, channel: str) -> bool:
        return self._over_rate is not None and self._over_rate(channel)

    def transfer_id_now(self, ledger_id: int, key: str) -> int:
        return self.core.ids.id(ledger_id, key, 0)

    def exchange_key_now(self, terminal_id: str, usage: str) -> tuple[bytes, str] | None:
        terminal = self.terminals.get(terminal_id)
        return None if terminal is None else self.keys.exchange(terminal, usage)

    def call_table(self) -> list[tuple[Call[Any], Implementation]]:
        """The calls of `LinkServices`, answered by these services (a core's): those
        that await nothing as plain functions, run inline (core/link/calls.py)."""
        return [
            (OVER_RATE, self.over_rate_now),
            (TRANSFER_ID, self.transfer_id_now),
            (CASH_WITHDRAWAL, self.cash_withdrawal),
            (PURCHASE, self.purchase),
            (PAYMENT, self.payment),
            (REVERSAL, self.reversal),
            (VOID, self.void),
            (BAR, self.bar),
            (TRANSFER, self.transfer),
            (ACCOUNT, self.account),
            (ISSUE_TOKEN, self.issue_token),
            (EXCHANGE_KEY, self.exchange_key_now),
            (EXCHANGED_KEYS, self.exchanged_keys_of),
        ]


class LinkServices:
    """`TerminalServices` over the core link: each call a `CALL` the core answers with
    its `BankServices`. `ready` is whether the link is up (the core answers NOT_READY
    itself while it recovers)."""

    def __init__(self, link: LinkClient) -> None:
        self.link = link

    @property
    def ready(self) -> bool:
        return self.link.is_connected

    def now_ns(self) -> int:
        return time.time_ns()

    async def over_rate(self, channel: str) -> bool:
        return await self.link.invoke(OVER_RATE, channel)

    async def transfer_id(self, ledger_id: int, key: str) -> int:
        return await self.link.invoke(TRANSFER_ID, ledger_id, key)

    async def cash_withdrawal(self, move: Movement) -> Posted:
        return await self.link.invoke(CASH_WITHDRAWAL, move)

    async def purchase(self, move: Movement) -> Posted:
        return await self.link.invoke(PURCHASE, move)

    async def payment(self, move: Movement) -> Posted:
        return await self.link.invoke(PAYMENT, move)

    async def reversal(self, move: Movement) -> Posted:
        return await self.link.invoke(REVERSAL, move)

    async def void(self, move: Movement) -> Posted:
        return await self.link.invoke(VOID, move)

    async def bar(self, caller: Caller, key: str) -> None:
        await self.link.invoke(BAR, caller, key)

    async def transfer(
        self, caller: Caller, key: str, debit: int, credit: int, amount_minor: int,
        consent: Consent,
    ) -> Posted:  # fmt: skip
        return await self.link.invoke(TRANSFER, caller, key, debit, credit, amount_minor, consent)

    async def account(self, caller: Caller, account_id: int, proof: Proof) -> AccountRead:
        return await self.link.invoke(ACCOUNT, caller, account_id, proof)

    async def issue_token(self, command: IssueToken) -> TokenIssued:
        return await self.link.invoke(ISSUE_TOKEN, command)

    async def exchange_key(self, terminal_id: str, usage: str) -> tuple[bytes, str] | None:
        return await self.link.invoke(EXCHANGE_KEY, terminal_id, usage)

    async def exchanged_keys(self, terminal_id: str) -> dict[str, bytes] | None:
        return await self.link.invoke(EXCHANGED_KEYS, terminal_id)
