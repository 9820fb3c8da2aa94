"""Risk rules as data: the bank's fraud rule set, its validation and its compiled program.

A rule set is TOML (`core/data/risk.toml`, a copy in `examples/`; the language is
described in full in `docs/risk.md`). It is versioned and changed only through an
approved request (`core/services/approvals.py`), so the text an operator submits is
validated strictly and completely here before anything uses it: unknown keys,
unknown rule types, outcomes, scopes, transfer codes or lists, a key missing for the
rule's type or given to a type that has no use for it, money as a float, a negative
threshold, two rules of the same name, more than `RULES_MAX` rules, a report rule
whose outcome is not allow... every problem is reported at once, each naming the
file, the line and the dotted key (`RiskRulesError`), so a risk officer fixes the
file in one pass and the approval request shows every error.

    version = 7                        # increases with every approved change
    [holds]
    delay_s = 3600                     # how long a delayed payment is held
    review_s = 259200                  # how long a reviewed hold waits for an officer
    [lists.blocked_devices]
    match = "device"                   # device, account, resident_id, counterparty, ip
    values = ["a1f0c3d2-stolen"]
    [[rules]]
    name = "blocked_device"
    type = "list"
    outcome = "block"
    list = "blocked_devices"

The compiled form is `limits.risk_layout` (its docstring is the specification of
what each rule type does): `RiskRules.program()` packs the rules in file order with
`pack_rule`, `RiskRules.list_values()` packs each list's keys for the kernel's
`set_list`. The kernel (`cext/risk.pyx`) and its twin (`limits/risk_reference.py`)
evaluate it; `core/services/risk.py` runs it in the posting path.

`limits` sits below `ledger` in the import layers, so transfer codes are the names
and numbers of `limits.rules.TRANSFER_CODES` (a test keeps them equal to
`ledger.types.TransferCode`).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar

from .filecheck import (
    VERSION_MAX,
    CatalogProblem,
    KeyLines,
    ParameterFileError,
    Problems,
    check_keys,
    describe,
    is_integer,
    parse_version,
    toml_document,
)
from .risk_layout import (
    HISTORY_SAMPLES,
    RULES_MAX,
    Match,
    Outcome,
    RuleType,
    Scope,
    key_of,
    pack_rule,
)
from .rules import TRANSFER_CODES, code_mask
from .watched import read_stable

# The transfer codes a rule applies to when it does not say (`codes`): the debits a
# customer initiates, where fraud takes money out. Deposits, incoming clearing,
# the bank's own entries (fees, interest, settlement) and moves into the customer's
# own products are not screened unless a rule names them.
DEFAULT_CODES: Final = frozenset(
    {"transfer", "payment", "cash_withdrawal", "withdraw_bound", "external_transfer_out"}
)
WINDOW_S_MAX: Final = 366 * 86_400  # a year and a day: longer windows keep stale counters
HOLD_S_MAX: Final = 90 * 86_400  # a hold's timeout (+1 day) must fit the record's u32
LISTS_MAX: Final = 64
LIST_VALUES_MAX: Final = 100_000  # per list: the kernel keeps a list as a sorted array
AMOUNT_MINOR_MAX: Final = 2**62
COUNT_MAX_MAX: Final = 2**32 - 1
MULTIPLE_PERMILLE_MAX: Final = 1_000_000  # 1000x the median
DAY_S: Final = 86_400
ACCOUNT_ID_MAX: Final = 2**64 - 2  # u64, and never the ledger's reserved all-ones id
DEVICE_ID_LENGTH_MAX: Final = 128

# A list value's key kind (`risk_layout.key_of(kind, value)`); account ids are the ids.
# Counterparty values are beneficiary card or account numbers at other banks (the
# service keys an external transfer's beneficiary as "card"); an account of this bank
# is listed with match = "account".
LIST_KEY_KINDS: Final[Mapping[Match, str]] = MappingProxyType(
    {
        Match.DEVICE: "device",
        Match.IP: "ip",
        Match.RESIDENT_ID: "resident_id",
        Match.COUNTERPARTY: "card",
    }
)
_LIST_KEY: Final = struct.Struct("<Q")

# Spellings in the file (lower-case enum names), and back.
TYPE_NAMES: Final[Mapping[str, RuleType]] = MappingProxyType(
    {rule_type.name.lower(): rule_type for rule_type in RuleType}
)
OUTCOME_NAMES: Final[Mapping[str, Outcome]] = MappingProxyType(
    {outcome.name.lower(): outcome for outcome in Outcome}
)
SCOPE_NAMES: Final[Mapping[str, Scope]] = MappingProxyType(
    {scope.name.lower(): scope for scope in Scope if scope is not Scope.NONE}
)
MATCH_NAMES: Final[Mapping[str, Match]] = MappingProxyType(
    {match.name.lower(): match for match in Match if match is not Match.NONE}
)
HISTORY_SCOPES: Final = (Scope.ACCOUNT, Scope.CUSTOMER)

_TOP_LEVEL_KEYS: Final = ("version", "holds", "lists", "rules")
_HOLDS_KEYS: Final = ("delay_s", "review_s")
_LIST_KEYS: Final = ("match", "values")
_COMMON_KEYS: Final = ("name", "type", "outcome", "report", "codes", "amount_min",
                       "amount_min_minor")  # fmt: skip
_TYPE_KEYS: Final[Mapping[RuleType, tuple[str, ...]]] = MappingProxyType(
    {
        RuleType.VELOCITY: ("scope", "window", "count_max", "sum_max", "sum_max_minor"),
        RuleType.HISTORY: ("scope", "window", "multiple", "samples_min"),
        RuleType.NEW_PAYEE: ("window",),
        RuleType.NEW_DEVICE: ("window",),
        RuleType.TIME_OF_DAY: ("from", "to"),
        RuleType.LIST: ("list",),
        RuleType.LARGE_VALUE: (),
    }
)
_NAME: Final = re.compile(r"[a-z0-9_]{1,40}")
_WINDOW: Final = re.compile(r"(?P<count>[1-9][0-9]{0,7})(?P<unit>[smhd])")
_WINDOW_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": DAY_S}
_CNY: Final = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?")
_MULTIPLE: Final = re.compile(r"[0-9]+(?:\.[0-9]{1,3})?")
_TIME: Final = re.compile(r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2}))?")
_RESIDENT_ID: Final = re.compile(r"[0-9]{17}[0-9X]")
_RESIDENT_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RESIDENT_ID_CHECK: Final = "10X98765432"  # GB 11643-1999 (ISO 7064 MOD 11-2)
_COUNTERPARTY: Final = re.compile(r"[0-9]{8,32}")  # the HTTP schema's account_number
_ACCOUNT_ID: Final = re.compile(r"[1-9][0-9]{0,19}")


# --- Errors ---------------------------------------------------------------------------


class RiskRulesError(ParameterFileError):
    """A risk rule set cannot be used. Every problem is in `catalog_problems` (one line
    each in `str(error)`, `problems` as strings, `errors` as (line, message));
    `source`, `line` and `message` are the first one's.

    A `CatalogError` (hence a `limits.errors.RuleFileError`): code that handles a bad
    parameter file handles this one alike.
    """


class _RiskProblems(Problems):
    def raise_if_any(self) -> None:
        """Raise every problem found, in file order (a stable sort: problems about the
        whole file first, those of one line in the order they were found)."""
        if self.items:
            raise RiskRulesError(sorted(self.items, key=lambda problem: problem.line))


# --- The rule set ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RiskRule:
    """One validated rule: the fields of its `[[rules]]` table, money in fen, windows
    and times of day in seconds. Fields a type does not use are 0 / NONE / ""."""

    name: str
    type: RuleType
    outcome: Outcome
    report: bool
    codes: frozenset[str]
    amount_min_minor: int = 0
    scope: Scope = Scope.NONE
    window_s: int = 0
    count_max: int = 0
    sum_max_minor: int = 0
    samples_min: int = 0
    multiple_permille: int = 0
    from_s: int = 0
    to_s: int = 0
    list_name: str = ""
    match: Match = Match.NONE  # a list rule's: its list's
    line: int = 0  # where its [[rules]] table starts (for messages)

    def __post_init__(self) -> None:
        assert _NAME.fullmatch(self.name), self.name
        assert self.codes and self.codes <= frozenset(TRANSFER_CODES), self.codes
        assert not self.report or self.outcome is Outcome.ALLOW, self
        assert 0 <= self.amount_min_minor <= AMOUNT_MINOR_MAX, self
        assert (self.list_name != "") == (self.type is RuleType.LIST), self
        assert (self.match is not Match.NONE) == (self.type is RuleType.LIST), self
        uses_scope = self.type in (RuleType.VELOCITY, RuleType.HISTORY)
        assert (self.scope is not Scope.NONE) == uses_scope, self
        assert (self.window_s > 0) == (self.type in _WINDOWED), self

    @property
    def code_mask(self) -> int:
        """The kernel's code set: bit c for each transfer code c the rule applies to."""
        return code_mask(self.codes)

    def pack(self, list_id: int = 0) -> bytes:
        """The compiled `risk_layout.RULE` row; `list_id` is the id of `list_name`."""
        return pack_rule(
            self.type,
            scope=self.scope,
            outcome=self.outcome,
            report=self.report,
            match=self.match,
            codes=self.code_mask,
            window_s=self.window_s,
            amount_min=self.amount_min_minor,
            sum_max=self.sum_max_minor,
            count_max=self.count_max,
            samples_min=self.samples_min,
            multiple_permille=self.multiple_permille,
            list_id=list_id if self.type is RuleType.LIST else 0,
            from_s=self.from_s,
            to_s=self.to_s,
        )

    def to_json(self) -> dict[str, Any]:
        """The rule for the API and the console (JSON-ready); money in fen, windows and
        times of day both as written ("1h", "05:00") and in seconds."""
        document: dict[str, Any] = {
            "name": self.name,
            "type": self.type.name.lower(),
            "outcome": self.outcome.name.lower(),
            "report": self.report,
            "codes": sorted(self.codes, key=TRANSFER_CODES.__getitem__),
            "amount_min_minor": self.amount_min_minor,
        }
        if self.scope is not Scope.NONE:
            document["scope"] = self.scope.name.lower()
        if self.window_s:
            document["window"] = format_window(self.window_s)
            document["window_s"] = self.window_s
        if self.type is RuleType.VELOCITY:
            document["count_max"] = self.count_max
            document["sum_max_minor"] = self.sum_max_minor
        if self.type is RuleType.HISTORY:
            document["multiple"] = format_multiple(self.multiple_permille)
            document["multiple_permille"] = self.multiple_permille
            document["samples_min"] = self.samples_min
        if self.type is RuleType.TIME_OF_DAY:
            document["from"] = format_time(self.from_s)
            document["to"] = format_time(self.to_s)
            document["from_s"] = self.from_s
            document["to_s"] = self.to_s
        if self.type is RuleType.LIST:
            document["list"] = self.list_name
            document["match"] = self.match.name.lower()
        return document


_WINDOWED: Final = frozenset(
    {RuleType.VELOCITY, RuleType.HISTORY, RuleType.NEW_PAYEE, RuleType.NEW_DEVICE}
)


class RiskList(NamedTuple):
    """A list's compiled form: what it matches and its keys (sorted, unique u64: account
    ids as they are, other values as `key_of(LIST_KEY_KINDS[match], value)`)."""

    match: Match
    keys: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RiskRules:
    """One validated rule set. Immutable: a change is a new version (an approval).

    `rules` in file order (the program's order, rule index = position); `lists` by
    name; a list's id in the program is its index in the sorted list names (`list_ids`).
    """

    version: int
    digest: str
    """SHA-256 (hex) of the text's UTF-8 bytes."""
    text: str
    """The file's text as submitted (the approval diff and `param/risk/<version>`)."""
    rules: tuple[RiskRule, ...]
    lists: Mapping[str, RiskList]
    delay_s: int
    """How long a DELAY hold is kept before the bank captures it."""
    review_s: int
    """How long a REVIEW hold waits for a risk officer before it is returned."""
    source: str = ""

    def __post_init__(self) -> None:
        assert 1 <= self.version <= VERSION_MAX, self.version
        assert len(self.rules) <= RULES_MAX, len(self.rules)
        assert len({rule.name for rule in self.rules}) == len(self.rules)
        assert all(rule.list_name in self.lists for rule in self.rules if rule.list_name)
        assert 1 <= self.delay_s <= HOLD_S_MAX and 1 <= self.review_s <= HOLD_S_MAX
        assert self.digest == hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def names(self) -> tuple[str, ...]:
        """Rule names by rule index (the bit of a verdict's fired mask)."""
        return tuple(rule.name for rule in self.rules)

    @property
    def list_ids(self) -> Mapping[str, int]:
        """List name -> list id (index in the sorted names)."""
        return {name: index for index, name in enumerate(sorted(self.lists))}

    def rule(self, name: str) -> RiskRule:
        """The rule named `name`; KeyError if there is none."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    def program(self) -> bytes:
        """The rules packed with `risk_layout.pack_rule`, in file order
        (`len(rules) * RULE.size` bytes): the kernel's `set_program` argument."""
        list_ids = self.list_ids
        return b"".join(rule.pack(list_ids.get(rule.list_name, 0)) for rule in self.rules)

    def list_values(self) -> list[tuple[int, bytes]]:
        """Every list as (list id, its keys packed `<Q`, sorted): `set_list` arguments,
        in list-id order (an empty list packs as b"")."""
        return [
            (list_id, b"".join(_LIST_KEY.pack(key) for key in self.lists[name].keys))
            for list_id, name in enumerate(sorted(self.lists))
        ]

    def fired_names(self, mask: int) -> tuple[str, ...]:
        """The names of the rules whose bits are set in a verdict's fired `mask`."""
        assert 0 <= mask < 1 << len(self.rules), (mask, len(self.rules))
        return tuple(rule.name for index, rule in enumerate(self.rules) if mask >> index & 1)

    def to_json(self) -> dict[str, Any]:
        """The rule set for `GET /v1/risk/rules` and the console: version, digest,
        holds, rules and lists (name, match, id, size: not the values, which are
        the bank's intelligence; the text is with the approvals)."""
        list_ids = self.list_ids
        return {
            "version": self.version,
            "digest": self.digest,
            "holds": {"delay_s": self.delay_s, "review_s": self.review_s},
            "rules": [rule.to_json() for rule in self.rules],
            "lists": {
                name: {
                    "id": list_ids[name],
                    "match": self.lists[name].match.name.lower(),
                    "size": len(self.lists[name].keys),
                }
                for name in sorted(self.lists)
            },
        }


def value_key(kind: str, value: str) -> int:
    """The 64-bit key of a context value of `kind` ("device", "ip", "resident_id",
    "card", "customer"): `risk_layout.key_of`, with an IP address keyed in its canonical
    form ("2001:DB8::0:1" and "2001:db8::1" are one address), so a list entry and a
    request's address meet whatever their spelling. The service keys contexts with it;
    lists hold canonical addresses already (the file must write them so)."""
    if kind == "ip":
        with contextlib.suppress(ValueError):  # not an address: keyed as sent
            value = str(ipaddress.ip_address(value))
    return key_of(kind, value)


def format_window(window_s: int) -> str:
    """A window as the file writes it, in the largest unit that divides it: "1h"."""
    for unit in ("d", "h", "m"):
        size = _WINDOW_UNITS[unit]
        if window_s % size == 0:
            return f"{window_s // size}{unit}"
    return f"{window_s}s"


def format_multiple(permille: int) -> str:
    """A history multiple as the file writes it: 10_000 -> "10", 2_500 -> "2.5"."""
    whole, fraction = divmod(permille, 1000)
    return f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") if fraction else str(whole)


def format_time(second_of_day: int) -> str:
    """A local time of day as the file writes it: 18_000 -> "05:00"."""
    hours, rest = divmod(second_of_day, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")


# --- Loading --------------------------------------------------------------------------


def load_risk_rules(path: str | os.PathLike[str]) -> RiskRules:
    """Read and validate the rule-set file at `path`; `RiskRulesError` on any problem
    (an unreadable file included)."""
    source = os.fspath(path)
    _, data = read_stable(source, _at_file, "risk rule")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RiskRulesError.at(
            source, 0, f"not valid UTF-8 (byte offset {error.start})"
        ) from error
    return parse_risk_rules(text, source)


def parse_risk_rules(text: str, source: str) -> RiskRules:
    """Validate rule-set text; `source` names it in messages (a file name, or
    "approval A1b2..." for a submitted change). Raises `RiskRulesError` with every
    problem found."""
    document = toml_document(text, source, RiskRulesError)
    problems = _RiskProblems(source, KeyLines(text))
    check_keys(document, _TOP_LEVEL_KEYS, (), problems)
    version = parse_version(document, problems, "the rule set's")
    holds = _parse_holds(document, problems)
    lists, list_matches = _parse_lists(document, problems)
    rules = _parse_rules(document, list_matches, problems)
    problems.raise_if_any()
    assert version is not None and holds is not None and rules is not None
    return RiskRules(
        version=version,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        text=text,
        rules=rules,
        lists=MappingProxyType(dict(sorted(lists.items()))),
        delay_s=holds[0],
        review_s=holds[1],
        source=source,
    )


def check_risk_successor(current: RiskRules, new: RiskRules, source: str = "") -> None:
    """Refuse (`RiskRulesError`) a new rule set that does not increase the version:
    every approved change is a new version, and decisions name the one they ran."""
    if new.version <= current.version:
        raise RiskRulesError(
            [
                CatalogProblem(
                    source or new.source,
                    KeyLines(new.text).line(("version",)),
                    "version",
                    f"{new.version} does not increase the version in force ({current.version}): "
                    "every change of the rule set is a new, higher version",
                )
            ]
        )


def _at_file(path: str, message: str) -> RiskRulesError:
    return RiskRulesError.at(path, 0, message)


# --- Parsing: the top level -----------------------------------------------------------


def _parse_holds(document: Mapping[str, Any], problems: Problems) -> tuple[int, int] | None:
    if "holds" not in document:
        problems.add(("holds",), "missing required table [holds] (delay_s, review_s)")
        return None
    table = document["holds"]
    if not isinstance(table, dict):
        problems.add(("holds",), f"expected a table [holds], got {describe(table)}")
        return None
    check_keys(table, _HOLDS_KEYS, ("holds",), problems)
    values = []
    for name, meaning in (
        ("delay_s", "how long a delayed payment is held before it settles"),
        ("review_s", "how long a reviewed hold waits for an officer before it is returned"),
    ):
        key = ("holds", name)
        if name not in table:
            problems.add(key, f"missing required key ({meaning}, seconds)")
            continue
        value = table[name]
        if not is_integer(value) or not 1 <= value <= HOLD_S_MAX:
            problems.add(key, f"expected seconds 1..{HOLD_S_MAX} (90 days), got {describe(value)}")
            continue
        values.append(value)
    return (values[0], values[1]) if len(values) == 2 else None


# --- Parsing: lists -------------------------------------------------------------------


def _parse_lists(
    document: Mapping[str, Any], problems: Problems
) -> tuple[dict[str, RiskList], dict[str, Match | None]]:
    """The valid lists, and every declared list name with its match (None if the match
    itself is bad): rules naming a declared but broken list are not reported again."""
    if "lists" not in document:
        return {}, {}
    tables = document["lists"]
    if not isinstance(tables, dict):
        problems.add(("lists",), f"expected tables [lists.NAME], got {describe(tables)}")
        return {}, {}
    if len(tables) > LISTS_MAX:
        problems.add(("lists",), f"{len(tables)} lists; at most {LISTS_MAX}")
    lists: dict[str, RiskList] = {}
    matches: dict[str, Match | None] = {}
    for name, table in tables.items():
        prefix = ("lists", name)
        if not _NAME.fullmatch(name):
            problems.add(prefix, "a list name is 1..40 of a-z, 0-9 and _")
        if not isinstance(table, dict):
            problems.add(prefix, f"expected a table [lists.{name}], got {describe(table)}")
            matches[name] = None
            continue
        count = len(problems.items)
        check_keys(table, _LIST_KEYS, prefix, problems)
        match = _parse_match(table, prefix, problems)
        matches[name] = match
        keys = _parse_list_values(table, match, prefix, problems)
        if keys is not None and match is not None and len(problems.items) == count:
            lists[name] = RiskList(match, keys)
    return lists, matches


def _parse_match(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> Match | None:
    expected = "one of " + ", ".join(f'"{name}"' for name in MATCH_NAMES)
    if "match" not in table:
        problems.add((*prefix, "match"), f"missing required key (what the list holds: {expected})")
        return None
    value = table["match"]
    if not isinstance(value, str) or value not in MATCH_NAMES:
        problems.add((*prefix, "match"), f"expected {expected}, got {describe(value)}")
        return None
    return MATCH_NAMES[value]


def _parse_list_values(
    table: Mapping[str, Any], match: Match | None, prefix: tuple[Any, ...], problems: Problems
) -> tuple[int, ...] | None:
    key = (*prefix, "values")
    if "values" not in table:
        problems.add(key, "missing required key (the list's values, strings; [] for none)")
        return None
    values = table["values"]
    if not isinstance(values, list):
        problems.add(key, f"expected an array of strings, got {describe(values)}")
        return None
    if len(values) > LIST_VALUES_MAX:
        problems.add(key, f"{len(values)} values; at most {LIST_VALUES_MAX} in one list")
        return None
    if match is None:
        return None
    keys: set[int] = set()
    seen: set[str] = set()
    valid = True
    for index, value in enumerate(values):
        reason = _list_value_problem(value, match)
        if reason is None and value in seen:
            reason = "is listed twice"
        if reason is not None:
            problems.add(key, f"value {index + 1} ({describe(value)}) {reason}")
            valid = False
            continue
        seen.add(value)
        keys.add(int(value) if match is Match.ACCOUNT else value_key(LIST_KEY_KINDS[match], value))
    return tuple(sorted(keys)) if valid else None


def _list_value_problem(value: object, match: Match) -> str | None:
    """Why `value` cannot be in a list of `match` values (None: it can)."""
    if not isinstance(value, str):
        hint = ' (write account ids as strings: "6235010000000000017")' if is_integer(value) else ""
        return f"is not a string{hint}"
    if match is Match.ACCOUNT:
        if not _ACCOUNT_ID.fullmatch(value) or int(value) > ACCOUNT_ID_MAX:
            return f"is not an account id (decimal digits, 1..{ACCOUNT_ID_MAX})"
    elif match is Match.DEVICE:
        if not 1 <= len(value) <= DEVICE_ID_LENGTH_MAX or not value.isprintable():
            return f"is not a device id (1..{DEVICE_ID_LENGTH_MAX} printable characters)"
        if value != value.strip():
            return "has leading or trailing spaces (a device id is matched exactly)"
    elif match is Match.IP:
        try:
            canonical = str(ipaddress.ip_address(value))
        except ValueError:
            return "is not an IPv4 or IPv6 address"
        if canonical != value:
            return (
                f"is not written canonically (write {canonical!r}: addresses are matched exactly)"
            )
    elif match is Match.RESIDENT_ID:
        if not _RESIDENT_ID.fullmatch(value):
            return "is not a resident id (17 digits and a digit or X)"
        weighted = sum(
            int(digit) * weight
            for digit, weight in zip(value[:17], _RESIDENT_ID_WEIGHTS, strict=True)
        )
        if value[17] != _RESIDENT_ID_CHECK[weighted % 11]:
            return "has a wrong check character (GB 11643-1999): a typo would watch nobody"
    else:
        assert match is Match.COUNTERPARTY, match
        if not _COUNTERPARTY.fullmatch(value):
            return "is not a card or account number (8..32 digits)"
    return None


# --- Parsing: rules -------------------------------------------------------------------


def _parse_rules(
    document: Mapping[str, Any], list_matches: Mapping[str, Match | None], problems: Problems
) -> tuple[RiskRule, ...] | None:
    if "rules" not in document:
        return ()  # a bank may run with no rule at all (the stage then allows everything)
    tables = document["rules"]
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        problems.add(("rules",), f"expected rules ([[rules]]), got {describe(tables)}")
        return None
    count = len(problems.items)
    if len(tables) > RULES_MAX:
        problems.add(("rules", RULES_MAX), f"{len(tables)} rules; at most {RULES_MAX} (a "
                     "verdict's fired-rules mask is 64 bits)")  # fmt: skip
    rules: list[RiskRule] = []
    first_line: dict[str, int] = {}  # name -> line of the first rule so named, valid or not
    for index, table in enumerate(tables):
        rule = _parse_rule(table, index, list_matches, problems)
        name = table.get("name")
        if not isinstance(name, str):
            continue
        if name in first_line:
            problems.add(
                ("rules", index, "name"),
                f"duplicate rule name {name!r} (also the rule at line {first_line[name]}): "
                "decisions name the rules that fired",
            )
            continue
        first_line[name] = problems.key_lines.line(("rules", index)) if problems.key_lines else 0
        if rule is not None:
            rules.append(rule)
    return tuple(rules) if len(problems.items) == count else None


def _parse_rule(
    table: Mapping[str, Any],
    index: int,
    list_matches: Mapping[str, Match | None],
    problems: Problems,
) -> RiskRule | None:
    """One `[[rules]]` table; None (with its problems reported) if it has any."""
    prefix: tuple[Any, ...] = ("rules", index)
    line = problems.key_lines.line(prefix) if problems.key_lines is not None else 0
    count = len(problems.items)
    name = _parse_name(table, prefix, problems)
    rule_type = _parse_enum(table, "type", TYPE_NAMES, prefix, problems)
    outcome = _parse_enum(table, "outcome", OUTCOME_NAMES, prefix, problems)
    report = _parse_report(table, prefix, problems)
    if report and outcome is not None and outcome is not Outcome.ALLOW:
        problems.add(
            (*prefix, "report"),
            f'a reporting rule allows (outcome = "allow"), got {outcome.name.lower()!r}: a '
            "large-value report is made, not a payment stopped; stop it with another rule",
        )
    codes = _parse_codes(table, prefix, problems)
    amount_min = _parse_money(table, "amount_min", prefix, problems)
    if rule_type is None:
        check_keys(table, _COMMON_KEYS + _ALL_TYPE_KEYS, prefix, problems)
        return None
    _check_rule_keys(table, rule_type, prefix, problems)
    fields = _TYPE_PARSERS[rule_type](table, prefix, list_matches, problems)
    if rule_type is RuleType.LARGE_VALUE and amount_min == 0:
        problems.add((*prefix, "amount_min"), "a large_value rule needs amount_min > 0 (its "
                     "reporting threshold)")  # fmt: skip
    if len(problems.items) > count:
        return None
    assert name is not None and outcome is not None and codes is not None
    assert fields is not None and amount_min is not None
    return RiskRule(
        name=name, type=rule_type, outcome=outcome, report=report, codes=codes,
        amount_min_minor=amount_min, line=line, **fields,
    )  # fmt: skip


_ALL_TYPE_KEYS: Final = tuple(dict.fromkeys(key for keys in _TYPE_KEYS.values() for key in keys))


def _check_rule_keys(
    table: Mapping[str, Any], rule_type: RuleType, prefix: tuple[Any, ...], problems: Problems
) -> None:
    allowed = _COMMON_KEYS + _TYPE_KEYS[rule_type]
    type_name = rule_type.name.lower()
    for name in table:
        if name in allowed:
            continue
        if name in _ALL_TYPE_KEYS:
            own = ", ".join(_TYPE_KEYS[rule_type]) or "none beyond the common ones"
            problems.add((*prefix, name), f"not a key of a {type_name} rule (its keys: {own})")
        else:
            check_keys({name: None}, allowed, prefix, problems)


def _parse_name(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> str | None:
    if "name" not in table:
        problems.add((*prefix, "name"), "missing required key (the rule's name, unique)")
        return None
    value = table["name"]
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        problems.add((*prefix, "name"), f"expected 1..40 of a-z, 0-9 and _, got {describe(value)}")
        return None
    return value


_T = TypeVar("_T")


def _parse_enum(
    table: Mapping[str, Any], field: str, names: Mapping[str, _T], prefix: tuple[Any, ...],
    problems: Problems,
) -> _T | None:  # fmt: skip
    expected = "one of " + ", ".join(f'"{name}"' for name in names)
    if field not in table:
        problems.add((*prefix, field), f"missing required key ({expected})")
        return None
    value = table[field]
    if not isinstance(value, str) or value not in names:
        problems.add(
            (*prefix, field), f"unknown {field}: expected {expected}, got {describe(value)}"
        )
        return None
    return names[value]


def _parse_report(table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems) -> bool:
    value = table.get("report", False)
    if not isinstance(value, bool):
        problems.add((*prefix, "report"), f"expected true or false, got {describe(value)}")
        return False
    return value


def _parse_codes(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> frozenset[str] | None:
    if "codes" not in table:
        return DEFAULT_CODES
    value = table["codes"]
    key = (*prefix, "codes")
    names = ", ".join(TRANSFER_CODES)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.add(key, f"expected a list of transfer codes ({names}), got {describe(value)}")
        return None
    unknown = [item for item in value if item not in TRANSFER_CODES]
    if unknown:
        problems.add(key, f"unknown transfer code {unknown[0]!r} (expected one of: {names})")
        return None
    if not value:
        defaults = ", ".join(sorted(DEFAULT_CODES))
        problems.add(
            key,
            f"an empty list: the rule would never apply (omit `codes` for the "
            f"customer-initiated debits: {defaults})",
        )
        return None
    if len(set(value)) != len(value):
        problems.add(key, "a transfer code is listed twice")
        return None
    return frozenset(value)


def _parse_money(
    table: Mapping[str, Any], field: str, prefix: tuple[Any, ...], problems: Problems
) -> int | None:
    """`field` as a CNY decimal string ("50000.00") or `field_minor` as integer fen;
    0 when neither is given; None (reported) when invalid or both are given."""
    minor_field = f"{field}_minor"
    if field in table and minor_field in table:
        problems.add((*prefix, minor_field), f"give {field} (CNY) or {minor_field} (fen), not both")
        return None
    if minor_field in table:
        value = table[minor_field]
        key = (*prefix, minor_field)
        if isinstance(value, float) or not is_integer(value):
            problems.add(key, f"money is an integer number of fen, got {describe(value)}")
            return None
        if not 0 <= value <= AMOUNT_MINOR_MAX:
            reason = "is negative" if value < 0 else f"is above {AMOUNT_MINOR_MAX}"
            problems.add(key, f"{value} {reason}; a threshold is 0..{AMOUNT_MINOR_MAX} fen")
            return None
        assert isinstance(value, int)
        return value
    if field not in table:
        return 0
    value = table[field]
    key = (*prefix, field)
    if not isinstance(value, str):
        hint = (
            f' (a float cannot hold money exactly: write "{value:.2f}")'
            if isinstance(value, float) and value >= 0
            else f' (write CNY as a string such as "50000.00", or fen as {minor_field})'
        )
        problems.add(key, f"expected an amount in CNY as a string, got {describe(value)}{hint}")
        return None
    if value.startswith("-"):
        problems.add(key, f"{value!r} is negative; a threshold is >= 0")
        return None
    if not _CNY.fullmatch(value):
        problems.add(key, f'{value!r} is not an amount in CNY such as "50000.00" (digits, at '
                     "most two decimals)")  # fmt: skip
        return None
    minor = int(Decimal(value) * 100)
    if minor > AMOUNT_MINOR_MAX:
        problems.add(key, f"{value!r} is above the largest threshold ({AMOUNT_MINOR_MAX} fen)")
        return None
    return minor


def _parse_window(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> int | None:
    key = (*prefix, "window")
    expected = 'a duration such as "30s", "10m", "1h", "1d" or "30d"'
    if "window" not in table:
        problems.add(key, f"missing required key ({expected})")
        return None
    value = table["window"]
    match = _WINDOW.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        problems.add(key, f"expected {expected}, got {describe(value)}")
        return None
    window_s = int(match["count"]) * _WINDOW_UNITS[match["unit"]]
    if window_s > WINDOW_S_MAX:
        problems.add(key, f"{value!r} is longer than {WINDOW_S_MAX // DAY_S} days")
        return None
    return window_s


def _parse_count(
    table: Mapping[str, Any], field: str, low: int, high: int, prefix: tuple[Any, ...],
    problems: Problems,
) -> int | None:  # fmt: skip
    value = table[field]
    if not is_integer(value) or not low <= value <= high:
        problems.add((*prefix, field), f"expected an integer {low}..{high}, got {describe(value)}")
        return None
    assert isinstance(value, int)
    return value


def _parse_scope(
    table: Mapping[str, Any], allowed: Sequence[Scope], prefix: tuple[Any, ...],
    problems: Problems,
) -> Scope | None:  # fmt: skip
    names = {name: scope for name, scope in SCOPE_NAMES.items() if scope in allowed}
    return _parse_enum(table, "scope", names, prefix, problems)


_TypeFields = dict[str, Any]


def _velocity(
    table: Mapping[str, Any], prefix: tuple[Any, ...], _: Mapping[str, Match | None],
    problems: Problems,
) -> _TypeFields | None:  # fmt: skip
    scope = _parse_scope(table, tuple(Scope)[1:], prefix, problems)
    window_s = _parse_window(table, prefix, problems)
    count_max = (
        _parse_count(table, "count_max", 1, COUNT_MAX_MAX, prefix, problems)
        if "count_max" in table
        else 0
    )
    sum_max = _parse_money(table, "sum_max", prefix, problems)
    if not {"count_max", "sum_max", "sum_max_minor"} & set(table) or sum_max == 0 == count_max:
        problems.add(prefix, "a velocity rule needs count_max (postings in the window) or "
                     "sum_max (their amount), or both")  # fmt: skip
    if None in (scope, window_s, count_max, sum_max):
        return None
    return {"scope": scope, "window_s": window_s, "count_max": count_max, "sum_max_minor": sum_max}


def _history(
    table: Mapping[str, Any], prefix: tuple[Any, ...], _: Mapping[str, Match | None],
    problems: Problems,
) -> _TypeFields | None:  # fmt: skip
    scope = _parse_scope(table, HISTORY_SCOPES, prefix, problems)
    window_s = _parse_window(table, prefix, problems)
    multiple = _parse_multiple(table, prefix, problems)
    samples_min: int | None = None
    if "samples_min" not in table:
        problems.add((*prefix, "samples_min"), f"missing required key (how many earlier amounts "
                     f"make a history, 1..{HISTORY_SAMPLES})")  # fmt: skip
    else:
        samples_min = _parse_count(table, "samples_min", 1, HISTORY_SAMPLES, prefix, problems)
    if None in (scope, window_s, multiple, samples_min):
        return None
    return {"scope": scope, "window_s": window_s, "multiple_permille": multiple,
            "samples_min": samples_min}  # fmt: skip


def _parse_multiple(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> int | None:
    key = (*prefix, "multiple")
    expected = 'how many times the median, a decimal string above 1 such as "5" or "2.5"'
    if "multiple" not in table:
        problems.add(key, f"missing required key ({expected})")
        return None
    value = table["multiple"]
    if is_integer(value):
        value = str(value)  # an integer is exact
    if not isinstance(value, str) or not _MULTIPLE.fullmatch(value):
        hint = " (a float is not exact)" if isinstance(value, float) else ""
        problems.add(key, f"expected {expected} (at most 3 decimals), got "
                     f"{describe(table['multiple'])}{hint}")  # fmt: skip
        return None
    permille = int(Decimal(value) * 1000)
    if not 1000 < permille <= MULTIPLE_PERMILLE_MAX:
        problems.add(key, f"{value!r} is out of range: above 1 (the median itself is not "
                     f"unusual), at most {MULTIPLE_PERMILLE_MAX // 1000}")  # fmt: skip
        return None
    return permille


def _first_seen(
    table: Mapping[str, Any], prefix: tuple[Any, ...], _: Mapping[str, Match | None],
    problems: Problems,
) -> _TypeFields | None:  # fmt: skip
    window_s = _parse_window(table, prefix, problems)
    return None if window_s is None else {"window_s": window_s}


def _time_of_day(
    table: Mapping[str, Any], prefix: tuple[Any, ...], _: Mapping[str, Match | None],
    problems: Problems,
) -> _TypeFields | None:  # fmt: skip
    from_s = _parse_time(table, "from", prefix, problems)
    to_s = _parse_time(table, "to", prefix, problems)
    if from_s is None or to_s is None:
        return None
    if from_s == to_s or (from_s, to_s) == (0, DAY_S):
        problems.add((*prefix, "to"), "from and to make an empty or a whole day; a rule for "
                     'every hour is another type ("large_value" or "velocity")')  # fmt: skip
        return None
    return {"from_s": from_s, "to_s": to_s}


def _parse_time(
    table: Mapping[str, Any], field: str, prefix: tuple[Any, ...], problems: Problems
) -> int | None:
    key = (*prefix, field)
    expected = '"HH:MM" or "HH:MM:SS", local time (the limit rules\' time zone)'
    if field not in table:
        problems.add(key, f"missing required key ({expected})")
        return None
    value = table[field]
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        problems.add(key, f"expected {expected}, got {describe(value)}")
        return None
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"] or 0)
    seconds = hour * 3600 + minute * 60 + second
    end_of_day = field == "to" and seconds == DAY_S  # "24:00": up to midnight
    if not end_of_day and (hour > 23 or minute > 59 or second > 59):
        problems.add(key, f"{value!r} is not a time of day (00:00..23:59:59; to may be 24:00)")
        return None
    return seconds


def _list_rule(
    table: Mapping[str, Any], prefix: tuple[Any, ...], list_matches: Mapping[str, Match | None],
    problems: Problems,
) -> _TypeFields | None:  # fmt: skip
    key = (*prefix, "list")
    if "list" not in table:
        problems.add(key, "missing required key (the name of a [lists.NAME] table)")
        return None
    value = table["list"]
    if not isinstance(value, str) or value not in list_matches:
        declared = ", ".join(sorted(list_matches)) or "none declared"
        problems.add(key, f"unknown list {describe(value)} (lists: {declared})")
        return None
    match = list_matches[value]
    if match is None:
        problems.add(key, f"the list {value!r} is invalid (see its own problems)")
        return None
    return {"list_name": value, "match": match}


def _large_value(
    table: Mapping[str, Any], prefix: tuple[Any, ...], _: Mapping[str, Match | None],
    problems: Problems,
) -> _TypeFields | None:  # fmt: skip
    return {}


_TYPE_PARSERS: Final = MappingProxyType(
    {
        RuleType.VELOCITY: _velocity,
        RuleType.HISTORY: _history,
        RuleType.NEW_PAYEE: _first_seen,
        RuleType.NEW_DEVICE: _first_seen,
        RuleType.TIME_OF_DAY: _time_of_day,
        RuleType.LIST: _list_rule,
        RuleType.LARGE_VALUE: _large_value,
    }
)
