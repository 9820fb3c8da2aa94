"""The terminal registry: which ATMs and POS terminals may speak ISO 8583 to Tally.

A TOML file (core/data/terminals.toml, examples/terminals.toml), one table per
terminal id (field 41, exactly 8 printable characters):

    [terminals.ATM00001]
    channel = "atm"            # the channel registry's channel it posts as
    kind = "atm"               # "atm" or "pos": which transactions it may ask for
    pin_key_id = "dev-atm-tpk" # its PIN key (TPK) in the key store
    mac_key_id = "dev-atm-tak" # its MAC key (TAK)

    [terminals.POS00001]
    channel = "pos"
    kind = "pos"
    merchant_account_id = "6235010000000000010"  # whom its purchases pay
    ...

Validated completely before the listener starts, every problem listed at once
(`TerminalRegistryError`): an unknown key, a terminal id that cannot be a
field 41, a channel the channel registry does not have (or has disabled, or of
a kind that does not serve terminals), a POS without a merchant account (or an
ATM with one), a key id the key store does not hold for that usage.

Each terminal is resolved against the channel registry into its `Caller` (as
channels/http/app.py makes one per channel) and the transactions it may ask
for: those of its kind (`TRANSACTIONS_OF_KIND`) whose operations the channel
is granted (the registry) and offered (`core.services.policy`). The adapter
then checks a message with one set lookup. A replaced channel registry (an
approved `channels` change) is taken by `Terminals.resolve` again
(`BankServices.install_registry`, which the adapter's terminals follow).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from channels.iso8583 import spec
from channels.iso8583.keys import KeyStore, UnknownKeyError
from channels.registry import Registry
from core.data import DATA_DIRECTORY
from core.errors import TallyError
from core.services import policy
from core.services.commands import Caller
from ledger.constants import BANK_ACCOUNT_ID_LIMIT

DEFAULT_TERMINALS_PATH: Final = DATA_DIRECTORY / "terminals.toml"
TERMINAL_ID_SIZE: Final = 8  # field 41, ans8
ACCOUNT_ID_DIGITS_MAX: Final = 19  # an account number is a card number (field 2, n..19)
TERMINAL_KINDS: Final = ("atm", "pos")
# Terminals post as channels of these kinds: a customer-facing kind whose holder proves
# consent with the PIN (the transaction password), one account per card.
CHANNEL_KINDS: Final = ("atm",)
_TERMINAL_KEYS: Final = frozenset(
    {
        "channel",
        "kind",
        "pin_key_id",
        "mac_key_id",
        "master_key_id",
        "merchant_account_id",
        "disabled",
    }
)

# The transactions: (request MTI, processing type: field 3's first two digits; "" for a
# reversal or network management, which name no transaction type of their own).
CASH_WITHDRAWAL: Final = (spec.MTI_FINANCIAL_REQUEST, spec.PROCESSING_CASH_WITHDRAWAL)
PURCHASE: Final = (spec.MTI_FINANCIAL_REQUEST, spec.PROCESSING_PURCHASE)
BALANCE_ENQUIRY: Final = (spec.MTI_FINANCIAL_REQUEST, spec.PROCESSING_BALANCE_ENQUIRY)
TRANSFER: Final = (spec.MTI_FINANCIAL_REQUEST, spec.PROCESSING_TRANSFER)
AUTHORIZATION: Final = (spec.MTI_AUTHORIZATION_REQUEST, spec.PROCESSING_PURCHASE)
REVERSAL: Final = (spec.MTI_REVERSAL_REQUEST, "")
# The services' operations each transaction uses (core/services/policy.py names them). A
# PIN buys a transaction token for the card's account (`issue_token`): the adapter's
# consent to every debit, and a balance enquiry's proof.
OPERATIONS_OF_TRANSACTION: Final[Mapping[tuple[str, str], frozenset[str]]] = MappingProxyType(
    {
        CASH_WITHDRAWAL: frozenset({"issue_token", "cash_withdrawal"}),
        PURCHASE: frozenset({"issue_token", "payment"}),  # Payments.purchase
        BALANCE_ENQUIRY: frozenset({"issue_token", "read_account"}),
        TRANSFER: frozenset({"issue_token", "transfer"}),
        AUTHORIZATION: frozenset({"issue_token", "payment"}),
        REVERSAL: frozenset({"reversal"}),
    }
)
# What each kind of terminal does: an ATM pays out cash, shows balances and transfers
# between accounts; a POS terminal takes purchases and authorizations (holds) for its
# merchant and shows balances. Both reverse what they sent.
TRANSACTIONS_OF_KIND: Final[Mapping[str, frozenset[tuple[str, str]]]] = MappingProxyType(
    {
        "atm": frozenset({CASH_WITHDRAWAL, BALANCE_ENQUIRY, TRANSFER, REVERSAL}),
        "pos": frozenset({PURCHASE, AUTHORIZATION, BALANCE_ENQUIRY, REVERSAL}),
    }
)


class TerminalRegistryError(TallyError):
    """The terminal registry cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TerminalEntry:
    """One terminal as its file declares it (before the channel registry resolves it)."""

    terminal_id: str
    channel: str
    kind: str  # "atm" or "pos"
    pin_key_id: str
    mac_key_id: str
    merchant_account_id: int = 0  # a POS terminal's merchant; 0 for an ATM
    disabled: bool = False
    master_key_id: str = ""  # its master key (TMK) for key exchanges; "" none (161: 40)


@dataclass(frozen=True, slots=True)
class Terminal:
    """A terminal resolved against the channel registry: what the adapter needs per message.

    `pin_key_id` and `mac_key_id` make it a `keys.TerminalKeys` (the key store's lookup).
    `allowed` holds the transactions (`TRANSACTIONS_OF_KIND`) it may ask for at its
    channel; `voids` whether its channel may void a hold (a reversal of a purchase whose
    capture never happened, or of an authorization)."""

    terminal_id: str
    kind: str
    caller: Caller
    pin_key_id: str
    mac_key_id: str
    merchant_account_id: int
    allowed: frozenset[tuple[str, str]]
    voids: bool
    master_key_id: str = ""  # the key exchange's master key (TMK); "": no key exchange


@dataclass(frozen=True, slots=True)
class Terminals:
    """The terminals by id (`get`), resolved against one channel registry."""

    entries: Mapping[str, TerminalEntry]
    by_id: Mapping[str, Terminal]
    source: str = ""

    def get(self, terminal_id: str) -> Terminal | None:
        return self.by_id.get(terminal_id)

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[Terminal]:
        return iter(self.by_id.values())

    def resolve(self, registry: Registry, keys: KeyStore | None = None) -> Terminals:
        """The same terminals under another channel registry (an approved change)."""
        return resolve(self.entries, registry, keys, self.source)


def load_terminals(
    path: str | os.PathLike[str], registry: Registry, keys: KeyStore | None = None
) -> Terminals:
    """Read, check and resolve a terminal registry file (`keys`: also check its key ids)."""
    return resolve(load_terminal_entries(path), registry, keys, os.fspath(path))


def load_terminal_entries(path: str | os.PathLike[str]) -> dict[str, TerminalEntry]:
    """Read and check a terminal registry file on its own, to be resolved (`resolve`)
    once the channel registry is known (a front-end's: the core's, over the link)."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            text = file.read().decode("utf-8")
        document = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as error:
        raise TerminalRegistryError([f"{source}: cannot read: {error}"]) from None
    except tomllib.TOMLDecodeError as error:
        raise TerminalRegistryError([f"{source}: invalid TOML: {error}"]) from None
    return parse_entries(document, source)


def parse_terminals_text(
    text: str, source: str, registry: Registry, keys: KeyStore | None = None
) -> Terminals:
    """`load_terminals` from the file's text (`source` names it in the problems)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TerminalRegistryError([f"{source}: invalid TOML: {error}"]) from None
    return resolve(parse_entries(document, source), registry, keys, source)


def parse_entries(document: Mapping[str, Any], source: str) -> dict[str, TerminalEntry]:
    """The `[terminals.ID]` tables of a parsed file, checked on their own."""
    problems: list[str] = []

    def problem(key: str, reason: str) -> None:
        problems.append(f"{source}: `{key}`: {reason}")

    for key in document:
        if key != "terminals":
            problem(key, "unknown key (expected only [terminals.ID] tables)")
    tables = document.get("terminals", {})
    if not isinstance(tables, dict) or not tables:
        raise TerminalRegistryError([f"{source}: expected at least one [terminals.ID] table"])
    entries: dict[str, TerminalEntry] = {}
    for terminal_id, table in tables.items():
        prefix = f"terminals.{terminal_id}"
        if (
            len(terminal_id) != TERMINAL_ID_SIZE
            or not terminal_id.isascii()
            or not terminal_id.isprintable()
        ):
            problem(
                prefix,
                f"a terminal id is field 41: exactly {TERMINAL_ID_SIZE} printable ASCII characters",
            )
            continue
        if not isinstance(table, dict):
            problem(prefix, "expected a table")
            continue
        for key in table:
            if key not in _TERMINAL_KEYS:
                problem(
                    f"{prefix}.{key}", f"unknown key (expected {', '.join(sorted(_TERMINAL_KEYS))})"
                )
        texts = {}
        for name in ("channel", "kind", "pin_key_id", "mac_key_id"):
            value = table.get(name)
            if not isinstance(value, str) or not value:
                problem(f"{prefix}.{name}", "expected a non-empty string")
            texts[name] = value if isinstance(value, str) else ""
        kind = texts["kind"]
        if kind and kind not in TERMINAL_KINDS:
            problem(f"{prefix}.kind", f"expected one of {', '.join(TERMINAL_KINDS)}")
        merchant = table.get("merchant_account_id")
        merchant_id = 0
        if kind == "pos":
            if (
                not isinstance(merchant, str)
                or not merchant.isdigit()
                or not merchant.isascii()
                or len(merchant) > ACCOUNT_ID_DIGITS_MAX
                or int(merchant) < BANK_ACCOUNT_ID_LIMIT
            ):
                problem(
                    f"{prefix}.merchant_account_id",
                    "a POS terminal names its merchant's customer account: a string of"
                    f" up to {ACCOUNT_ID_DIGITS_MAX} digits",
                )
            else:
                merchant_id = int(merchant)
        elif merchant is not None:
            problem(f"{prefix}.merchant_account_id", "only a POS terminal has a merchant")
        disabled = table.get("disabled", False)
        if not isinstance(disabled, bool):
            problem(f"{prefix}.disabled", "expected true or false")
            disabled = False
        master_key_id = table.get("master_key_id", "")
        if not isinstance(master_key_id, str):
            problem(f"{prefix}.master_key_id", "expected a string")
            master_key_id = ""
        entries[terminal_id] = TerminalEntry(
            terminal_id,
            texts["channel"],
            kind,
            texts["pin_key_id"],
            texts["mac_key_id"],
            merchant_id,
            disabled,
            master_key_id,
        )
    if problems:
        raise TerminalRegistryError(problems)
    return entries


def resolve(
    entries: Mapping[str, TerminalEntry],
    registry: Registry,
    keys: KeyStore | None = None,
    source: str = "",
) -> Terminals:
    """The terminals of `entries` under `registry`: each one's caller and transactions."""
    problems: list[str] = []
    by_id: dict[str, Terminal] = {}
    for terminal_id, entry in entries.items():
        prefix = f"{source}: `terminals.{terminal_id}"
        channel = registry.get(entry.channel)
        if channel is None:
            problems.append(f"{prefix}.channel`: no channel {entry.channel!r} in the registry")
            continue
        if channel.kind not in CHANNEL_KINDS:
            problems.append(
                f"{prefix}.channel`: channel {entry.channel!r} is of kind"
                f" {channel.kind!r}; terminals post as {', '.join(CHANNEL_KINDS)}"
            )
            continue
        if keys is not None:
            for usage, lookup in (("pin", keys.pin_key), ("mac", keys.mac_key)):
                try:
                    lookup(entry)
                except UnknownKeyError as error:
                    problems.append(f"{prefix}.{usage}_key_id`: {error}")
            if entry.master_key_id and keys.usage(entry.master_key_id) != "master":
                problems.append(
                    f"{prefix}.master_key_id`: no master key {entry.master_key_id!r} in the"
                    " key store"
                )
        if entry.disabled or channel.disabled:
            continue  # known, refused like an unknown terminal (03)
        granted = channel.operations
        allowed = frozenset(
            transaction
            for transaction in TRANSACTIONS_OF_KIND[entry.kind]
            if all(
                operation in granted and policy.offered(operation, channel.kind)
                for operation in OPERATIONS_OF_TRANSACTION[transaction]
            )
        )
        by_id[terminal_id] = Terminal(
            terminal_id,
            entry.kind,
            Caller(channel.name, channel.kind, channel.ledger_id),
            entry.pin_key_id,
            entry.mac_key_id,
            entry.merchant_account_id,
            allowed,
            "void" in granted and policy.offered("void", channel.kind),
            entry.master_key_id,
        )
    if problems:
        raise TerminalRegistryError(problems)
    return Terminals(MappingProxyType(dict(entries)), MappingProxyType(by_id), source)
