"""The operators: the bank's staff who request and approve changes, and their roles.

A TOML file (`core/data/operators.toml` = `examples/operators.toml`, DEVELOPMENT
secrets, marked like `channels.toml`), validated completely at start like the
channel registry: every problem at once, one line each naming the file, the
dotted key and the reason (`OperatorsError`).

    [operators.NAME]            NAME: 1-32 characters of a-z, 0-9, _ and -
    role = "risk_officer"       one of ROLES
    disabled = false            optional: a disabled operator cannot sign anything
    console_password = "scrypt$..."   optional: the operator's console password, as a
                                scrypt hash (`hash_console_password`); without one the
                                operator cannot log in to the console (channels/console)
    [[operators.NAME.secrets]]  one or two (two while rotating), like a channel's
    key_id = "dev-rita-1"
    secret = "..."              at least 32 bytes

Operators sign their requests like channels do (channels/http/signing.py),
with `channel="op:NAME"` in the Authorization header: the `op:` prefix selects
this registry instead of the channel registry.

Roles and permissions are code, not data (`PERMISSIONS`): who may do what is
part of the bank's control design and changes with a release, reviewed like
code. A permission is `request:<kind>` (make a request of that kind: the
maker), `approve:<kind>` (approve or reject one: the checker), or `read:audit`,
`read:risk`, `read:approvals`, `read:customers`, `read:monitoring`,
`read:reports` (the operations console's pages), `act:confirm_in_person` (the
counter's face-to-face check, from the console), or `decide:loans` (approve or decline a loan
application the risk screen referred: core/services/loan_accounts.py, one
operator's decision, recorded with the application). The design follows Apache Fineract's
maker-checker: a role holding only `approve:<kind>` is a checker-only role for
that kind and cannot initiate it (a supervisor approves a teller's reversal
but cannot request one), and nobody approves their own request whatever their
role (`core/services/approvals.py`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from core.errors import TallyError
from core.services import passwords
from core.services.state import Password

TELLER: Final = "teller"
SUPERVISOR: Final = "supervisor"
RISK_OFFICER: Final = "risk_officer"
PRODUCT_MANAGER: Final = "product_manager"
ADMINISTRATOR: Final = "administrator"
LOAN_OFFICER: Final = "loan_officer"
ROLES: Final = (TELLER, SUPERVISOR, RISK_OFFICER, PRODUCT_MANAGER, ADMINISTRATOR, LOAN_OFFICER)

# Parameter kinds (a versioned file put in force by an approved change) and operation
# kinds (a sensitive operation done once approved): core/services/approvals.py.
PARAMETER_KINDS: Final = ("limits", "deposits", "risk", "lpr", "channels", "loans")
OPERATION_KINDS: Final = (
    "reversal",
    "unlock_password",
    "release_review",
    "return_review",
    "credit_limit",
    "close_account",
)
KINDS: Final = PARAMETER_KINDS + OPERATION_KINDS
READ_AUDIT: Final = "read:audit"
READ_RISK: Final = "read:risk"
READ_APPROVALS: Final = "read:approvals"
# Decide a loan application the risk screen referred (core/services/loan_accounts.py).
DECIDE_LOANS: Final = "decide:loans"
# The operations console's read-only pages (channels/console): customers, accounts and
# transfers; the live monitoring; the end-of-day and drill reports.
READ_CUSTOMERS: Final = "read:customers"
READ_MONITORING: Final = "read:monitoring"
READ_REPORTS: Final = "read:reports"
# Confirm at the counter, in the console, that a teller saw a pending customer and their
# ID card (core/services/verification.py `confirm_in_person`): the counter's staff.
CONFIRM_IN_PERSON: Final = "act:confirm_in_person"


def _request(*kinds: str) -> frozenset[str]:
    return frozenset(f"request:{kind}" for kind in kinds)


def _approve(*kinds: str) -> frozenset[str]:
    return frozenset(f"approve:{kind}" for kind in kinds)


# Who may do what. Makers and checkers of a kind are different roles, except for the
# risk officers (two risk officers: the rules and the reviewed payments are theirs alone)
# and the administrators' channel registry (two administrators).
PERMISSIONS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        # At the counter: asks for what a teller may not do alone.
        TELLER: _request("reversal", "unlock_password", "credit_limit", "close_account")
        | {READ_APPROVALS, READ_CUSTOMERS, CONFIRM_IN_PERSON},
        # Checker only: approves the counter's requests, never initiates one.
        SUPERVISOR: _approve("reversal", "unlock_password", "close_account")
        | {READ_APPROVALS, READ_AUDIT, READ_CUSTOMERS, READ_MONITORING, READ_REPORTS}
        | {CONFIRM_IN_PERSON},
        # The risk rules and the reviewed payments; approves credit limits.
        RISK_OFFICER: _request("risk", "release_review", "return_review")
        | _approve("risk", "release_review", "return_review", "credit_limit")
        | {READ_RISK, READ_APPROVALS, READ_AUDIT, READ_CUSTOMERS, READ_MONITORING, READ_REPORTS},
        # Products (deposits, loans), rates and limits: proposes, never approves.
        PRODUCT_MANAGER: _request("limits", "deposits", "lpr", "loans")
        | {READ_APPROVALS, READ_MONITORING, READ_REPORTS},
        # Approves the product manager's changes (checker only for those); keeps the
        # channel registry and its keys (maker and checker: two administrators).
        ADMINISTRATOR: _approve("limits", "deposits", "lpr", "loans", "channels")
        | _request("channels")
        | {READ_AUDIT, READ_RISK, READ_APPROVALS, DECIDE_LOANS}
        | {READ_CUSTOMERS, READ_MONITORING, READ_REPORTS},
        # Credit: decides the loan applications the risk screen referred.
        LOAN_OFFICER: frozenset({DECIDE_LOANS, READ_APPROVALS, READ_CUSTOMERS}),
    }
)
assert set(PERMISSIONS) == set(ROLES)
assert all(
    permission.split(":", 1)[1] in KINDS
    for permissions in PERMISSIONS.values()
    for permission in permissions
    if permission.startswith(("request:", "approve:"))
)

SECRET_BYTES_MIN: Final = 32
NAME_PATTERN: Final = re.compile(r"[a-z0-9_-]{1,32}")
KEY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_OPERATOR_KEYS: Final = frozenset({"role", "secrets", "disabled", "console_password"})
# A console password hash: "scrypt$N$r$p$<salt>$<digest>" (salt and digest base64url,
# no padding). Not peppered: the file is configuration, readable without the server's
# secrets file; the cost (N) is what protects it.
CONSOLE_HASH_PATTERN: Final = re.compile(
    r"scrypt\$([0-9]{1,8})\$([0-9]{1,3})\$([0-9]{1,3})\$([A-Za-z0-9_-]{16,64})\$([A-Za-z0-9_-]{32,128})"
)


def permitted(role: str, permission: str) -> bool:
    """Whether `role` holds `permission` (`request:<kind>`, `approve:<kind>`, `read:...`)."""
    return permission in PERMISSIONS.get(role, frozenset())


class OperatorsError(TallyError):
    """The operator file cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Operator:
    """One operator: a name, a role, the keys it signs with (key_id -> secret)."""

    name: str
    role: str
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    disabled: bool = False
    # The console password's scrypt hash (None: this operator cannot use the console).
    console_password_hash: Password | None = field(default=None, repr=False)

    def permitted(self, permission: str) -> bool:
        return not self.disabled and permitted(self.role, permission)


@dataclass(frozen=True, slots=True)
class OperatorCaller:
    """An authenticated operator acting: who, in which role, from where (the client
    address the adapter saw; "" from an in-process caller). What the audit records."""

    name: str
    role: str
    address: str = ""


@dataclass(frozen=True, slots=True)
class Operators:
    """The operator registry: operators by name; `digest` is the file's SHA-256."""

    operators: Mapping[str, Operator]
    source_path: str = ""
    digest: str = ""

    def get(self, name: str) -> Operator | None:
        return self.operators.get(name)

    def secret(self, name: str, key_id: str) -> bytes | None:
        """The secret `name` signs with under `key_id`; None for an unknown or disabled
        operator or key (the adapter answers both alike: existence does not leak)."""
        operator = self.operators.get(name)
        if operator is None or operator.disabled:
            return None
        return operator.secrets.get(key_id)

    def caller(self, name: str, address: str = "") -> OperatorCaller | None:
        """The `OperatorCaller` of an enabled operator (None: unknown or disabled)."""
        operator = self.operators.get(name)
        if operator is None or operator.disabled:
            return None
        return OperatorCaller(operator.name, operator.role, address)

    def permitted(self, role: str, permission: str) -> bool:
        return permitted(role, permission)


def load_operators(path: str | os.PathLike[str]) -> Operators:
    """Read and validate the operator file at `path`; `OperatorsError` on any problem."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read()
    except OSError as error:
        raise OperatorsError([f"{source}: cannot read: {error.strerror}"]) from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise OperatorsError([f"{source}: not valid UTF-8 (byte offset {error.start})"]) from error
    return parse_operators(text, source)


def parse_operators(text: str, source: str) -> Operators:
    """Validate operator file text; `source` names the file in messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise OperatorsError([f"{source}: invalid TOML: {error}"]) from error
    problems: list[str] = []

    def problem(key: str, reason: str) -> None:
        problems.append(f"{source}: `{key}`: {reason}")

    for key in document:
        if key != "operators":
            problem(key, "unknown key (expected only [operators.NAME] tables)")
    tables = document.get("operators", {})
    if not isinstance(tables, dict) or not tables:
        raise OperatorsError(
            [f"{source}: `operators`: expected at least one [operators.NAME] table"]
        )
    operators: dict[str, Operator] = {}
    key_ids: dict[str, str] = {}
    for name, table in tables.items():
        operator = _parse_operator(name, table, problem, key_ids)
        if operator is not None:
            operators[name] = operator
    if problems:
        raise OperatorsError(problems)
    return Operators(MappingProxyType(operators), source, hashlib.sha256(text.encode()).hexdigest())


def parse_secrets(
    secrets_table: Any, prefix: str, problem: Callable[[str, str], None]
) -> dict[str, bytes]:
    """One or two `[[...secrets]]` (two while rotating) of a channel or an operator: key
    id -> secret; each problem reported through `problem(where, reason)` (an entry with
    one is left out). Shared by the operator file and the channel registry."""
    secret_map: dict[str, bytes] = {}
    if not isinstance(secrets_table, list) or not 1 <= len(secrets_table) <= 2:
        problem(f"{prefix}.secrets", "expected one or two [[secrets]] (two during rotation)")
        return secret_map
    for index, entry in enumerate(secrets_table):
        where = f"{prefix}.secrets[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"key_id", "secret"}:
            problem(where, "expected exactly key_id and secret")
            continue
        key_id, secret = entry["key_id"], entry["secret"]
        if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
            problem(f"{where}.key_id", "1-64 characters of A-Z, a-z, 0-9, _, . and -")
            continue
        if not isinstance(secret, str) or len(secret.encode()) < SECRET_BYTES_MIN:
            problem(f"{where}.secret", f"at least {SECRET_BYTES_MIN} bytes")
            continue
        if key_id in secret_map:
            problem(f"{where}.key_id", f"duplicate key id {key_id!r}")
            continue
        secret_map[key_id] = secret.encode()
    return secret_map


def _parse_operator(
    name: str, table: Any, problem: Any, key_ids: dict[str, str]
) -> Operator | None:
    prefix = f"operators.{name}"
    if not NAME_PATTERN.fullmatch(name):
        problem(prefix, "operator names are 1-32 characters of a-z, 0-9, _ and -")
        return None
    if not isinstance(table, dict):
        problem(prefix, "expected a table")
        return None
    for key in table:
        if key not in _OPERATOR_KEYS:
            problem(
                f"{prefix}.{key}", f"unknown key (expected {', '.join(sorted(_OPERATOR_KEYS))})"
            )
    role = table.get("role")
    if role not in ROLES:
        problem(f"{prefix}.role", f"expected one of {', '.join(ROLES)}")
    disabled = table.get("disabled", False)
    if not isinstance(disabled, bool):
        problem(f"{prefix}.disabled", "expected true or false")
        disabled = False
    secret_map = parse_secrets(table.get("secrets", []), prefix, problem)
    for index, key_id in enumerate(secret_map):
        where = f"{prefix}.secrets[{index}]"
        if key_id in key_ids:
            problem(f"{where}.key_id", f"key id {key_id!r} is also {key_ids[key_id]}'s")
            continue
        key_ids[key_id] = name
    console_hash: Password | None = None
    if "console_password" in table:
        console_hash = parse_console_hash(table["console_password"])
        if console_hash is None:
            problem(
                f"{prefix}.console_password",
                'expected a hash "scrypt$N$r$p$<salt>$<digest>" (hash_console_password)',
            )
    if role not in ROLES:
        return None
    return Operator(name, role, MappingProxyType(secret_map), disabled, console_hash)


# --- console passwords ----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_console_password(password: str, n: int = passwords.SCRYPT_N_DEFAULT) -> str:
    """The text of `console_password` for `password` (core/services/passwords.py's scrypt,
    unpeppered: `check_password` verifies it with an empty pepper id)."""
    salt = os.urandom(passwords.SALT_SIZE)
    digest = hashlib.scrypt(
        password.encode(),
        salt=salt,
        n=n,
        r=passwords.SCRYPT_R,
        p=passwords.SCRYPT_P,
        maxmem=passwords.SCRYPT_MAXMEM,
        dklen=passwords.DIGEST_SIZE,
    )
    return f"scrypt${n}${passwords.SCRYPT_R}${passwords.SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def parse_console_hash(text: object) -> Password | None:
    """The `Password` of a `console_password` value (None if it is not one)."""
    if not isinstance(text, str):
        return None
    matched = CONSOLE_HASH_PATTERN.fullmatch(text)
    if matched is None:
        return None
    n, r, p = (int(matched[index]) for index in (1, 2, 3))
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
        return None  # scrypt wants N a power of two above 1
    if n * r * 128 * 2 > passwords.SCRYPT_MAXMEM:
        return None
    return Password(_unb64(matched[4]), _unb64(matched[5]), n, r, p, "")


def check_console_password(operator: Operator | None, password: str) -> bool:
    """Whether `password` is `operator`'s console password (slow on purpose: run it on a
    worker thread). An unknown operator, or one without a console password, costs one
    hash all the same (against a decoy), so timing does not tell which names exist."""
    stored = operator.console_password_hash if operator is not None else None
    if stored is None or operator is None or operator.disabled:
        passwords.check_password(password, _DECOY, b"")
        return False
    return passwords.check_password(password, stored, b"")


_DECOY: Final = Password(bytes(passwords.SALT_SIZE), bytes(passwords.DIGEST_SIZE), 1 << 14, 8, 1)
