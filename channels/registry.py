"""The channel registry: who may call Tally, with which secrets, for what, how fast.

A TOML file (see `examples/channels.toml`), validated completely before the
server starts: an unknown key, an unknown operation, an operation the
channel's kind is not offered (`core.services.policy`: a partner bank granted
`read_account`), a secret shorter than 32 bytes or a channel whose ledger id
is not in the limit rules (or is there with another kind) is refused with
every problem listed at once. `operations = ["*"]` is every operation offered
at the channel's kind.

Money caps per channel (single transfer, per account per day) live in the
limit rules under the same channel id, because the ledger enforces them
inside the posting; the registry holds what the gateway enforces before a
request reaches the ledger: allowed operations, request rate, body size and
batch size; and who acts at the channel: `actor_required` (every request names
its teller in the signed Tally-Actor header) and the roles it may name with
each role's caps (`[channels.NAME.roles.ROLE]`), which the services enforce
(`core.services.actors`, built by `Registry.actors()`).

Real-name verification (core/services/verification.py) asks what each channel
requires: `verification = [...]` (the customer's steps) and `card_binding =
[...]` (a card binding's steps), step names of `core.services.policy`. Both are
optional: a channel without them requires its kind's floor
(`policy.VERIFICATION_OF_KIND`, `policy.BINDING_OF_KIND`), and a list that leaves
out a floor step is refused: a registry may ask more of a channel than its kind
does, never less. `Registry.verification_policy()` gives the services the lists.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from core.errors import TallyError
from core.services import policy
from core.services.actors import ROLES, Actors, ChannelActors, RoleLimits
from core.services.operators import parse_secrets
from core.services.policy import VerificationPolicy
from limits.rules import RuleSet

# The operation names and channel kinds are the policy's (core.services.policy): declared once.
OPERATIONS = tuple(policy.OPERATIONS)
OPERATION_SET = frozenset(OPERATIONS)
CHANNEL_KINDS = policy.CHANNEL_KINDS
CHANNEL_NAME_PATTERN = re.compile(r"[a-z0-9_-]{1,32}")
_CHANNEL_KEYS = frozenset(
    {
        "id",
        "kind",
        "operations",
        "secrets",
        "rate_per_s",
        "burst",
        "body_size_max",
        "batch_size_max",
        "disabled",
        "actor_required",
        "roles",
        "verification",
        "card_binding",
    }
)
_ROLE_KEYS = frozenset({"transfer_cap_minor", "cash_cap_minor"})
CAP_MINOR_MAX = (1 << 63) - 1
BODY_SIZE_MAX_DEFAULT = 2 << 20
BATCH_SIZE_MAX = 8189


class RegistryError(TallyError):
    """The channel registry file cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        # (line, message) like the other parameter files' errors; a registry problem names
        # its dotted key instead of a line (0).
        self.errors = [(0, problem) for problem in problems]


@dataclass(frozen=True, slots=True)
class ChannelEntry:
    name: str
    ledger_id: int  # the channel number in the limit rules and on every transfer
    kind: str
    secrets: Mapping[str, bytes]
    operations: frozenset[str]
    rate_per_s: float  # 0 = unlimited
    burst: int
    body_size_max: int
    batch_size_max: int
    disabled: bool = False
    actor_required: bool = False  # every request names its teller (Tally-Actor)
    roles: Mapping[str, RoleLimits] = field(default_factory=dict)  # empty: names no actor
    # The verification steps the channel requires of a customer it registers and of a card
    # binding it starts (None: the kind's floor, core.services.policy); floor steps included.
    verification: tuple[str, ...] | None = None
    card_binding: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Registry:
    channels: Mapping[str, ChannelEntry]
    source_path: str = ""
    by_ledger_id: Mapping[int, ChannelEntry] = field(default_factory=dict)
    # The file's optional top-level `version` (an approved change must raise it:
    # core/services/approvals.py, the `channels` parameter) and its text as read.
    version: int = 0
    text: str = ""

    def get(self, name: str) -> ChannelEntry | None:
        return self.channels.get(name)

    def actors(self) -> Actors:
        """The actor rules of the channels that name actors, for the services."""
        return Actors(
            {
                entry.ledger_id: ChannelActors(entry.actor_required, entry.roles)
                for entry in self.channels.values()
                if entry.roles
            }
        )

    def verification_policy(self) -> VerificationPolicy:
        """The verification steps each channel declares, by ledger id, for the services
        (a channel that declares none requires its kind's floor)."""
        channels = self.channels.values()
        return VerificationPolicy(
            customer=MappingProxyType(
                {e.ledger_id: e.verification for e in channels if e.verification is not None}
            ),
            binding=MappingProxyType(
                {e.ledger_id: e.card_binding for e in channels if e.card_binding is not None}
            ),
        )


def parse_roles(table: Any, prefix: str, problem: Any) -> dict[str, RoleLimits]:
    """`[channels.NAME.roles.ROLE]` tables: each a known role with its caps (0 = none)."""
    roles: dict[str, RoleLimits] = {}
    if not isinstance(table, dict):
        problem(f"{prefix}.roles", "expected [roles.ROLE] tables")
        return roles
    for role, limits in table.items():
        where = f"{prefix}.roles.{role}"
        if role not in ROLES:
            problem(where, f"unknown role (expected {', '.join(ROLES)})")
            continue
        if not isinstance(limits, dict) or not set(limits) <= _ROLE_KEYS:
            problem(where, f"expected a table of {', '.join(sorted(_ROLE_KEYS))}")
            continue
        caps: dict[str, int] = {}
        for name in sorted(_ROLE_KEYS):
            value = limits.get(name, 0)
            if type(value) is not int or not 0 <= value <= CAP_MINOR_MAX:
                problem(f"{where}.{name}", "expected an integer >= 0 (minor units; 0 = no cap)")
                value = 0
            caps[name] = value
        roles[role] = RoleLimits(**caps)
    return roles


def parse_steps(
    value: Any,
    where: str,
    known: tuple[str, ...],
    floor: tuple[str, ...],
    kind: str,
    problem: Any,
) -> tuple[str, ...] | None:
    """A `verification` or `card_binding` list: step names of `known`, each once, holding
    every step of the kind's `floor` (None: the key is absent, or the list was refused)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(step, str) for step in value):
        problem(where, f"expected a list of step names ({', '.join(known)})")
        return None
    steps: list[str] = []
    for step in value:
        if step not in known:
            problem(where, f"unknown step {step[:64]!r} (expected {', '.join(known)})")
        elif step in steps:
            problem(where, f"step {step!r} is listed twice")
        else:
            steps.append(step)
    missing = [step for step in floor if step not in value]
    if missing:
        problem(
            where,
            f"{kind} channels require {', '.join(floor)}: missing {', '.join(missing)}"
            " (a registry may add steps, never drop one)",
        )
    return tuple(steps) if len(steps) == len(value) and not missing else None


def load_registry(path: str | os.PathLike[str], rules: RuleSet | None = None) -> Registry:
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read()
    except OSError as error:
        raise RegistryError([f"{source}: cannot read: {error.strerror}"]) from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RegistryError([f"{source}: not valid UTF-8 (byte offset {error.start})"]) from None
    return parse_registry_text(text, source, rules)


def parse_registry_text(text: str, source: str, rules: RuleSet | None) -> Registry:
    """A registry from the text of its file (`source` names it in the problems): what
    `load_registry` reads, and what an approved change to the `channels` parameter
    proposes (channels/http/app.py registers it with the approvals service)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RegistryError([f"{source}: invalid TOML: {error}"]) from error
    registry = parse_registry(document, source, rules)
    return dataclasses.replace(registry, text=text)


def parse_registry(document: Mapping[str, Any], source: str, rules: RuleSet | None) -> Registry:
    problems: list[str] = []

    def problem(key: str, reason: str) -> None:
        problems.append(f"{source}: `{key}`: {reason}")

    for key in document:
        if key not in ("channels", "version"):
            problem(key, "unknown key (expected only version and [channels.NAME] tables)")
    version = document.get("version", 0)
    if type(version) is not int or version < 0:
        problem("version", "expected an integer >= 0 (raised by every approved change)")
        version = 0
    tables = document.get("channels", {})
    if not isinstance(tables, dict) or not tables:
        raise RegistryError([f"{source}: `channels`: expected at least one [channels.NAME] table"])
    channels: dict[str, ChannelEntry] = {}
    ledger_ids: dict[int, str] = {}
    for name, table in tables.items():
        prefix = f"channels.{name}"
        if not CHANNEL_NAME_PATTERN.fullmatch(name):
            problem(prefix, "channel names are 1-32 characters of a-z, 0-9, _ and -")
            continue
        if not isinstance(table, dict):
            problem(prefix, "expected a table")
            continue
        for key in table:
            if key not in _CHANNEL_KEYS:
                problem(
                    f"{prefix}.{key}", f"unknown key (expected {', '.join(sorted(_CHANNEL_KEYS))})"
                )
        ledger_id = table.get("id")
        if (
            not isinstance(ledger_id, int)
            or isinstance(ledger_id, bool)
            or not 1 <= ledger_id <= 255
        ):
            problem(f"{prefix}.id", "expected the channel's ledger id, an integer 1..255")
            continue
        if ledger_id in ledger_ids:
            problem(f"{prefix}.id", f"id {ledger_id} is already used by {ledger_ids[ledger_id]}")
        ledger_ids[ledger_id] = name
        kind = table.get("kind")
        if kind not in CHANNEL_KINDS:
            problem(f"{prefix}.kind", f"expected one of {', '.join(CHANNEL_KINDS)}")
            continue
        if rules is not None:
            ruled = rules.channels.get(ledger_id)
            if ruled is None:
                problem(f"{prefix}.id", f"channel id {ledger_id} is not in the limit rules")
            elif ruled.kind.value != kind:
                problem(
                    f"{prefix}.kind",
                    f"{kind!r} but the limit rules give channel {ledger_id} "
                    f"kind {ruled.kind.value!r}",
                )
        operations = table.get("operations", [])
        if not isinstance(operations, list) or not all(isinstance(op, str) for op in operations):
            problem(f"{prefix}.operations", "expected a list of operation names")
            operations = []
        if operations == ["*"]:
            operations = [op for op in OPERATIONS if policy.offered(op, kind)]
        for op in operations:
            if op not in OPERATION_SET:
                problem(f"{prefix}.operations", f"unknown operation {op!r}")
            elif not policy.offered(op, kind):
                kinds = policy.OPERATIONS[op].kinds
                problem(
                    f"{prefix}.operations",
                    f"{op!r} is not offered at {kind} channels (only {', '.join(kinds)})",
                )
        secret_map = parse_secrets(table.get("secrets", []), prefix, problem)
        rate = table.get("rate_per_s", 0)
        burst = table.get("burst", 0)
        body_size_max = table.get("body_size_max", BODY_SIZE_MAX_DEFAULT)
        batch_size_max = table.get("batch_size_max", BATCH_SIZE_MAX)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or rate < 0:
            problem(f"{prefix}.rate_per_s", "expected a number >= 0 (0 = unlimited)")
            rate = 0
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
            problem(f"{prefix}.burst", "expected an integer >= 0 (default: one second of rate)")
            burst = 0
        if not isinstance(body_size_max, int) or not 64 <= body_size_max <= 64 << 20:
            problem(f"{prefix}.body_size_max", "expected an integer 64..67108864 (bytes)")
            body_size_max = BODY_SIZE_MAX_DEFAULT
        if not isinstance(batch_size_max, int) or not 1 <= batch_size_max <= BATCH_SIZE_MAX:
            problem(f"{prefix}.batch_size_max", f"expected an integer 1..{BATCH_SIZE_MAX}")
            batch_size_max = BATCH_SIZE_MAX
        disabled = table.get("disabled", False)
        if not isinstance(disabled, bool):
            problem(f"{prefix}.disabled", "expected true or false")
            disabled = False
        actor_required = table.get("actor_required", False)
        if not isinstance(actor_required, bool):
            problem(f"{prefix}.actor_required", "expected true or false")
            actor_required = False
        roles = parse_roles(table.get("roles", {}), prefix, problem)
        verification = parse_steps(
            table.get("verification"),
            f"{prefix}.verification",
            policy.CUSTOMER_STEPS,
            policy.VERIFICATION_OF_KIND[kind],
            kind,
            problem,
        )
        card_binding = parse_steps(
            table.get("card_binding"),
            f"{prefix}.card_binding",
            policy.BINDING_STEPS,
            policy.BINDING_OF_KIND[kind],
            kind,
            problem,
        )
        if actor_required and not roles:
            problem(f"{prefix}.actor_required", "a channel that requires an actor declares roles")
        channels[name] = ChannelEntry(
            name=name,
            ledger_id=ledger_id,
            kind=kind,
            secrets=MappingProxyType(secret_map),
            operations=frozenset(operations),
            rate_per_s=float(rate),
            burst=burst or max(1, int(rate)),
            body_size_max=body_size_max,
            batch_size_max=batch_size_max,
            disabled=disabled,
            actor_required=actor_required,
            roles=MappingProxyType(roles),
            verification=verification,
            card_binding=card_binding,
        )
    if problems:
        raise RegistryError(problems)
    return Registry(
        MappingProxyType(channels),
        source,
        MappingProxyType({entry.ledger_id: entry for entry in channels.values()}),
        version,
    )
