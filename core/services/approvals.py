"""Maker-checker approvals: every parameter change and sensitive operation, two people.

Anchor: Apache Fineract's maker-checker. An action an operator (the maker)
asks for waits as a *pending* request (Fineract: AWAITING_APPROVAL) until
another operator (the checker) with the right role approves or rejects it;
the maker can never approve their own, and a role that only holds
`approve:<kind>` (a checker-only role) cannot initiate that kind. Operators
and roles: core/services/operators.py.

Two families of kinds, each registered by the service that owns the thing
changed:

- **parameters** (`register_parameter`): a versioned file put in force whole.
  `limits` (the limit rules: `engine.set_rules`, journaled as a SET_RULES
  entry), `deposits` (the deposit catalog), `lpr` (the loan prime rate
  table), `loans` (the loan product catalog: every published version of every
  product, core/services/loans.py), registered here; `risk`
  (core/services/risk.py) and `channels`
  (the HTTP adapter's registry and keys) by their owners. The payload is
  `{"text": new file text, "base_version": N}`: the text is validated at
  once (PARAMETER_INVALID lists every error with its line), the unified diff
  against the version in force is kept with the request, and a request made
  against a version that is no longer in force is stale (APPROVAL_STALE).
- **operations** (`register_operation`): a sensitive act done once, when
  approved: `reversal` (a counter reversal above
  `Settings.reversal_approval_minor`), `unlock_password` (lift a password
  lock: core/services/auth.py `Auth.unlock_password`), `credit_limit` (a
  customer's credit limit, a durable `credit/<customer>` record read by
  `credit_limit(customer_id)`), registered here; `release_review` and
  `return_review` (core/services/risk.py) by the risk service.

A request's life: pending -> approved -> applied (or failed), or pending ->
rejected, or pending -> expired (after `Settings.approval_expiry_s`); every
request is kept in every state. An approved request applies at its
`apply_at_ns` (at once when that is 0 or past; else by `on_tick`, once a
second, and at the first tick after a restart when the server was down at
that moment).

Atomic and journaled. A parameter version is applied by ONE
`engine.submit_state`: the version record `param/<kind>/<version>` (the text,
its digest, who asked and approved), the request as "applied" and its audit
record, durable together in one PUT_STATE entry; only then is it installed
(for `limits`: `engine.set_rules`, whose SET_RULES entry the engine writes
at its next group, waited for before the call returns). On every opening of
the store `on_state_loaded` puts the last applied version of each kind in
force before the engine is built, so replay, a restart and a failover all
run under the approved versions (the engine's first SET_RULES entry carries
the approved limits). A crash between the durable record and the install is
thus harmless: the record is the truth and the next opening installs it.

An operation's execution comes first (`execute`, its own durable change:
a reversal posting, the password failures record), then the request is
recorded "applied" with the result. Executors are idempotent (a reversal's
transfer id derives from the request id; an unlock sets the count to 0; a
release or return of a hold that is no longer held says so), so a crash in
between re-executes it at the next tick without doing anything twice.
Executors whose change is only state records (`credit_limit`, the unlock)
stage it (`StateStore.stage` / `stage_change`) without awaiting, so it rides
in the same PUT_STATE entry as the applied request.

Records (all under `OTHER_SERVICE_PREFIXES`, JSON):

    approval/<id>             {id, seq, kind, object, maker, maker_role, made_ns, from,
                               apply_at_ns, expires_ns, payload, diff, base_version,
                               version, state, checker, checker_role, decided_ns,
                               reason, decision_reason, applied_ns, result}
    param/<kind>/<version>    {kind, version, digest, text, request_id, maker,
                               checker, applied_ns}
    audit/<ns 20 digits>-<seq 6 digits>
                              {who, role, what, object, when, from, request_id,
                               detail}
    credit/<customer id>      {customer_id, limit_minor, request_id, applied_ns}

The audit log holds every operator action: request, approve, reject,
applied, expired, failed (the system acting on a request is `who = "system"`)
and the reads of audit and risk data (`record_read`), and the acts other services
let one operator do alone and record here (`audit_action`: a loan officer's decision on
a referred loan application, core/services/loan_accounts.py).
"""

from __future__ import annotations

import bisect
import difflib
import functools
import hashlib
import inspect
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson

from core.services.lifecycle import Lifecycle
from core.services.operators import (
    OPERATION_KINDS,
    PARAMETER_KINDS,
    READ_APPROVALS,
    OperatorCaller,
    Operators,
    load_operators,
    permitted,
)
from core.services.records import NS_PER_S
from core.services.refusals import Code, Refused, refused

if TYPE_CHECKING:
    from core.services.auth import Auth
    from core.services.payments import Payments

logger = logging.getLogger("tally.approvals")

APPROVAL_PREFIX: Final = b"approval/"
PARAM_PREFIX: Final = b"param/"
AUDIT_PREFIX: Final = b"audit/"
CREDIT_PREFIX: Final = b"credit/"
SYSTEM: Final = "system"  # the `who` of what the server does by itself (apply, expire)

PENDING: Final = "pending"
APPROVED: Final = "approved"
APPLIED: Final = "applied"
REJECTED: Final = "rejected"
EXPIRED: Final = "expired"
FAILED: Final = "failed"
STATES: Final = (PENDING, APPROVED, APPLIED, REJECTED, EXPIRED, FAILED)

OBJECT_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:-]{1,80}")
REASON_LENGTH_MAX: Final = 500
TEXT_BYTES_MAX: Final = 1 << 20  # a parameter file of up to 1 MiB
DIFF_LINES_MAX: Final = 5000
LIST_LIMIT_MAX: Final = 1000
# Refusals of an executor that leave the request approved, tried again at the next tick.
TRANSIENT: Final = frozenset(
    {Code.NOT_READY, Code.OVERLOADED, Code.UNAVAILABLE, Code.STORAGE_UNAVAILABLE}
)

Parse = Callable[[str, str], Any]  # (text, source) -> value; raises the kind's error
Install = Callable[[Any], None]  # put a value in force (at load: before the engine)
Text = Callable[[], str]  # the text in force before any approval (the configured file)
VersionOf = Callable[[Any], int]  # the version a value declares (its file's `version`)
Replaces = Callable[[Any, Any, str], None]  # (current, new, new text): raise if refused
Check = Callable[[dict[str, Any]], Awaitable[None] | None]
Execute = Callable[[dict[str, Any], OperatorCaller], Awaitable[dict[str, Any]]]
ObjectOf = Callable[[dict[str, Any]], str]
Change = tuple[bytes, bytes | None]
Changes = list[Change]
Records = list[dict[str, Any]]  # (`Approvals.list` shadows the builtin in the class)


@dataclass(slots=True)
class ParameterKind:
    """A registered parameter kind (`Approvals.register_parameter`) and its version in
    force: the shipped file's until an approved version is applied."""

    kind: str
    parse: Parse
    install: Install
    text: Text
    version_of: VersionOf | None
    replaces: Replaces | None
    value: Any = None  # None until known (`Approvals._initial`)
    version: int = 0
    digest: str = ""
    current_text: str = ""
    request_id: str = ""  # the request that put it in force ("": the shipped file)
    initial: dict[str, Any] | None = None  # the shipped file's version entry
    failure: str = ""  # why the shipped file could not be read (the kind is unusable)


@dataclass(slots=True)
class OperationKind:
    """A registered operation kind (`Approvals.register_operation`)."""

    kind: str
    check: Check
    execute: Execute
    object_of: ObjectOf | None


_LINE_IN_PROBLEM = re.compile(r"^[^\n]*?:(\d+)(?::\d+)?: ")


def parameter_errors(error: Exception) -> list[dict[str, Any]]:
    """Every problem of a parse error as `{"line": N, "message": "..."}` (line 0: the
    whole file or unknown): `errors` as (line, message) (limits.risk, limits.lpr), a
    `CatalogError`'s problems, a `RuleFileError`'s / `RegistryError`'s lines (their
    `:LINE:` when they name one)."""
    errors = getattr(error, "errors", None)
    if isinstance(errors, list) and errors:
        return [{"line": int(line), "message": str(message)} for line, message in errors]
    problems = getattr(error, "catalog_problems", None)
    if problems:
        return [
            {
                "line": problem.line,
                "message": f"`{problem.key}`: {problem.message}"
                if problem.key
                else problem.message,
            }
            for problem in problems
        ]
    lines = getattr(error, "problems", None)
    if lines:
        found = []
        for line in lines:
            match = _LINE_IN_PROBLEM.match(str(line))
            found.append({"line": int(match[1]) if match else 0, "message": str(line)})
        return found
    return [{"line": 0, "message": str(error) or type(error).__name__}]


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def approval_key(request_id: str) -> bytes:
    return APPROVAL_PREFIX + request_id.encode()


def param_key(kind: str, version: int) -> bytes:
    return b"param/%s/%d" % (kind.encode(), version)


def credit_key(customer_id: str) -> bytes:
    return CREDIT_PREFIX + customer_id.encode()


def _dumps(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _version_line(text: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"\s*version\s*=", line):
            return number
    return 0


def _nothing(ledger: Any) -> None:
    return None


def _read_file(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


class Approvals:
    """The requests, the parameter versions in force, the audit log, credit limits.

    Built with the lifecycle (its `on_state_loaded` and `on_tick` hooks are taken
    here), the operator registry (default: `Settings.operators_path`), and the
    services whose operations it registers itself (`auth`: unlock_password,
    `payments`: reversal). Other kinds are registered by their owners before the
    bank serves (`register_parameter`, `register_operation`).
    """

    def __init__(
        self,
        core: Lifecycle,
        auth: Auth | None = None,
        payments: Payments | None = None,
        *,
        operators: Operators | None = None,
    ) -> None:
        self.core = core
        self.operators = operators or load_operators(core.settings.operators_path)
        self.auth = auth
        self.payments = payments
        self.parameters: dict[str, ParameterKind] = {}
        self.operations: dict[str, OperationKind] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, list[dict[str, Any]]] = {}  # kind -> applied, by version
        self._audit: dict[bytes, dict[str, Any]] = {}
        self._audit_keys: list[bytes] = []  # sorted (time order)
        self._credit: dict[str, dict[str, Any]] = {}
        self._audit_seq = 0
        self._loaded = False
        self._lock = anyio.Lock()
        core.on_state_loaded.append(self.on_state_loaded)
        core.on_tick.append(self.on_tick)
        self._register_builtin()

    # --- registration -------------------------------------------------------------

    def register_parameter(
        self,
        kind: str,
        *,
        parse: Parse,
        install: Install,
        text: Text,
        version_of: VersionOf | None = None,
        replaces: Replaces | None = None,
    ) -> None:
        """Make `kind` (one of `operators.PARAMETER_KINDS`) changeable by approval.

        Args:
          parse: `(text, source) -> value`, raising the kind's validation error (every
            problem with its line: `parameter_errors` turns it into PARAMETER_INVALID).
          install: put a value in force. Called by `on_state_loaded` (before the engine
            is built) with the last applied version, if any, and after an approved
            version is durable; at once when registered after the state was loaded and
            an approved version exists. Must not await or fail.
          text: the text in force before any approval (the shipped or configured file);
            read when first needed.
          version_of: the version the value declares (risk, lpr: the file's `version`,
            which must increase); None: versions are numbered by the approvals, the
            shipped file being 0 and each applied change the next number.
          replaces: `(current, new, new_text)` raising the kind's error when `new` may
            not replace `current` (limits: no product or channel removed; deposits and
            lpr: no rate in force rewritten; loans: no published version changed or
            removed, a new one effective from tomorrow; risk: the version increases):
            checked at the request and again when applied.
        """
        assert kind in PARAMETER_KINDS, kind
        assert kind not in self.parameters, f"parameter kind {kind} registered twice"
        parameter = ParameterKind(kind, parse, install, text, version_of, replaces)
        self.parameters[kind] = parameter
        if self._loaded:
            self._initial(parameter)
            if self._versions.get(kind):
                self._install_last(parameter)

    def register_operation(
        self,
        kind: str,
        *,
        check: Check,
        execute: Execute,
        object_of: ObjectOf | None = None,
    ) -> None:
        """Make `kind` (one of `operators.OPERATION_KINDS`) a request.

        Args:
          check: validates a payload at the request (raise `Refused`: INVALID_FIELD with
            `pointer`, TRANSFER_NOT_FOUND, ...); may be a coroutine function.
          execute: `(payload, checker) -> result` does it once approved and due;
            `payload` is the request's payload plus "request_id" and "maker"; `checker`
            the approving operator. Must be idempotent (a crash after it and before the
            applied record re-runs it at the next tick). A `Refused` fails the request
            (kept with the refusal), except the transient ones (TRANSIENT: retried at
            the next tick). What it only stages (`StateStore.stage`, `stage_change`,
            without an await) is durable with the applied record.
          object_of: the object a payload acts on (its duplicate key: an account, a
            transfer, a customer), when the maker names none.
        """
        assert kind in OPERATION_KINDS, kind
        assert kind not in self.operations, f"operation kind {kind} registered twice"
        self.operations[kind] = OperationKind(kind, check, execute, object_of)

    def _register_builtin(self) -> None:
        """The kinds whose things the core keeps: limits, deposits, lpr, loans, credit_limit,
        and unlock_password / reversal when built with `auth` / `payments`."""
        core = self.core
        from limits.deposits import check_replacement as check_catalog
        from limits.deposits import parse_catalog
        from limits.rules import check_replacement as check_rules
        from limits.rules import parse_rules

        self.register_parameter(
            "limits",
            parse=parse_rules,
            install=core.install_rules,
            text=functools.partial(_read_file, core.rules.source_path),
            replaces=lambda current, new, _text: check_rules(current, new),
        )
        self.register_parameter(
            "deposits",
            parse=parse_catalog,
            install=core.install_catalog,
            text=lambda: _read_file(core.settings.deposits_path),
            replaces=lambda current, new, text: check_catalog(current, new, core.today(), text),
        )
        from limits import lpr

        self.register_parameter(
            "lpr",
            parse=lpr.parse_lpr,
            install=core.install_lpr,
            text=lambda: _read_file(core.settings.lpr_path),
            version_of=lambda table: int(table.version),
            replaces=lambda current, new, _text: lpr.check_lpr_successor(
                current, new, core.today()
            ),
        )
        from limits import loans

        self.register_parameter(
            "loans",
            parse=loans.parse_loan_catalog,
            install=core.install_loans,
            text=lambda: _read_file(core.settings.loans_path),
            version_of=lambda catalog: int(catalog.version),
            replaces=lambda current, new, _text: loans.check_loan_successor(
                current, new, core.today()
            ),
        )
        self.register_operation(
            "credit_limit",
            check=self._check_credit_limit,
            execute=self._execute_credit_limit,
            object_of=lambda payload: str(payload.get("customer_id", "")),
        )
        if self.auth is not None:
            self.register_operation(
                "unlock_password",
                check=self._check_unlock,
                execute=self._execute_unlock,
                object_of=lambda payload: str(payload.get("account_id", "")),
            )
        if self.payments is not None:
            self.register_operation(
                "reversal",
                check=self._check_reversal,
                execute=self._execute_reversal,
                object_of=lambda payload: str(payload.get("transfer_id", "")),
            )

    # --- the operator's actions ------------------------------------------------------

    async def request(
        self,
        operator: OperatorCaller,
        kind: str,
        object: str,
        payload: dict[str, Any],
        apply_at_ns: int = 0,
        reason: str = "",
    ) -> dict[str, Any]:
        """Make a request (the maker); its record, state "pending".

        Refusals: OPERATOR_NOT_PERMITTED (no `request:<kind>`: `role`, `permission`),
        INVALID_FIELD (unknown kind, bad object/payload/reason/apply time, with
        `pointer`), PARAMETER_INVALID (`errors`: [{line, message}]), APPROVAL_STALE
        (`base_version` is not the version in force: `base_version`, `version`),
        APPROVAL_DUPLICATE (a pending, or approved and not yet applied, request for the
        same kind and object: `request_id`), and what the kind's `check` raises.
        Durable (with its audit record) before it returns.
        """
        self.permit(operator, f"request:{kind}")
        if kind not in self.parameters and kind not in self.operations:
            raise refused(
                Code.INVALID_FIELD,
                f"no such kind here: {kind}",
                pointer="/kind",
                kinds=sorted([*self.parameters, *self.operations]),
            )
        if not isinstance(payload, dict):
            raise refused(Code.INVALID_FIELD, "expected an object", pointer="/payload")
        _check_reason(reason, required=False)
        if type(apply_at_ns) is not int or apply_at_ns < 0:
            raise refused(Code.INVALID_FIELD, "expected a time", pointer="/apply_at")
        now = self.core.now_ns()
        record: dict[str, Any] = {
            "id": "",
            "kind": kind,
            "object": "",
            "maker": operator.name,
            "maker_role": operator.role,
            "from": operator.address,
            "made_ns": now,
            "apply_at_ns": apply_at_ns,
            "expires_ns": now + self.core.settings.approval_expiry_s * NS_PER_S,
            "payload": payload,
            "reason": reason,
            "diff": "",
            "base_version": None,
            "version": None,
            "state": PENDING,
            "checker": "",
            "checker_role": "",
            "checker_from": "",
            "decided_ns": 0,
            "decision_reason": "",
            "applied_ns": 0,
            "result": None,
        }
        if kind in self.parameters:
            record.update(self._parameter_request(kind, object, payload))
        else:
            record["object"] = await self._operation_request(kind, object, payload)
        async with self._lock:
            self._refuse_duplicate(kind, record["object"])
            record["seq"] = len(self.requests) + 1
            record["id"] = self._new_id(operator.name, now)
            audit = self._audit_record(operator, "request", record, now)
            await self._write([(approval_key(record["id"]), _dumps(record)), audit])
            self.requests[record["id"]] = record
        logger.info(
            orjson.dumps(
                {
                    "event": "approval_requested",
                    "id": record["id"],
                    "kind": kind,
                    "maker": operator.name,
                }
            ).decode()
        )
        return dict(record)

    async def approve(
        self, operator: OperatorCaller, request_id: str, reason: str = ""
    ) -> dict[str, Any]:
        """Approve a pending request (the checker); applied at once when due.

        Refusals: APPROVAL_NOT_FOUND, OPERATOR_NOT_PERMITTED (no `approve:<kind>`),
        APPROVAL_SELF (the maker), APPROVAL_NOT_PENDING (`state`; a request past its
        expiry is refused as "expired" at once, and recorded so by the next tick).
        Returns the request's record after the approval and, when due, its
        application: "applied", "failed" (a stale base version: `result.code`
        "approval_stale"; an executor's refusal) or still "approved" (due later, or a
        transient refusal the tick retries).
        """
        _check_reason(reason, required=False)
        async with self._lock:
            record = self._decidable(operator, request_id)
            now = self.core.now_ns()
            record = {
                **record,
                "state": APPROVED,
                "checker": operator.name,
                "checker_role": operator.role,
                "checker_from": operator.address,
                "decided_ns": now,
                "decision_reason": reason,
            }
            audit = self._audit_record(operator, "approve", record, now)
            await self._write([(approval_key(request_id), _dumps(record)), audit])
            self.requests[request_id] = record
            logger.info(
                orjson.dumps(
                    {"event": "approval_approved", "id": request_id, "checker": operator.name}
                ).decode()
            )
            if record["apply_at_ns"] <= now:
                record = await self._apply(record)
            return dict(record)

    async def reject(
        self, operator: OperatorCaller, request_id: str, reason: str
    ) -> dict[str, Any]:
        """Reject a pending request (the checker, with a reason); kept as "rejected".
        Refusals as `approve`, and INVALID_FIELD (`/reason`) for an empty reason."""
        _check_reason(reason, required=True)
        async with self._lock:
            record = self._decidable(operator, request_id)
            now = self.core.now_ns()
            record = {
                **record,
                "state": REJECTED,
                "checker": operator.name,
                "checker_role": operator.role,
                "checker_from": operator.address,
                "decided_ns": now,
                "decision_reason": reason,
            }
            audit = self._audit_record(operator, "reject", record, now)
            await self._write([(approval_key(request_id), _dumps(record)), audit])
            self.requests[request_id] = record
            return dict(record)

    # --- the server's own work -------------------------------------------------------

    async def on_tick(self, now_ns: int) -> None:
        """Apply the approved requests that are due (oldest apply time first); expire the
        pending ones past their `expires_ns` (kept, state "expired"). A request whose
        kind is not registered in this process stays as it is."""
        due = [
            r
            for r in self.requests.values()
            if r["state"] == APPROVED and r["apply_at_ns"] <= now_ns
        ]
        stale = [
            r for r in self.requests.values() if r["state"] == PENDING and r["expires_ns"] <= now_ns
        ]
        if not due and not stale:
            return
        async with self._lock:
            expired: list[Change] = []
            records: list[dict[str, Any]] = []
            for record in sorted(stale, key=lambda r: r["made_ns"]):
                current = self.requests[record["id"]]
                if current["state"] != PENDING:
                    continue
                changed = self._expired(current, now_ns)
                expired += [
                    (approval_key(changed["id"]), _dumps(changed)),
                    self._audit_record(None, "expired", changed, now_ns),
                ]
                records.append(changed)
            if expired:
                await self._write(expired)
                for changed in records:
                    self.requests[changed["id"]] = changed
            for record in sorted(due, key=lambda r: (r["apply_at_ns"], r["made_ns"])):
                current = self.requests[record["id"]]
                if current["state"] == APPROVED and current["apply_at_ns"] <= now_ns:
                    await self._apply(current)

    def on_state_loaded(self, state: Mapping[bytes, bytes]) -> None:
        """Rebuild requests, versions, the audit index and credit limits from the
        recovered state, and install the last applied version of every registered
        parameter kind (limits: `lifecycle.rules`, before the engine is built)."""
        self.requests = {}
        self._versions = {}
        self._audit = {}
        self._credit = {}
        seq = 0
        for key, value in state.items():
            if key.startswith(APPROVAL_PREFIX):
                record = orjson.loads(value)
                self.requests[record["id"]] = record
            elif key.startswith(PARAM_PREFIX):
                version = orjson.loads(value)
                self._versions.setdefault(version["kind"], []).append(version)
            elif key.startswith(AUDIT_PREFIX):
                self._audit[key] = orjson.loads(value)
                seq = max(seq, int(key.rsplit(b"-", 1)[1]))
            elif key.startswith(CREDIT_PREFIX):
                credit = orjson.loads(value)
                self._credit[credit["customer_id"]] = credit
        for versions in self._versions.values():
            versions.sort(key=lambda version: version["version"])
        self._audit_keys = sorted(self._audit)
        self._audit_seq = max(self._audit_seq, seq)
        self._loaded = True
        for kind, parameter in self.parameters.items():
            self._initial(parameter)  # the shipped file as it is now, at start
            if self._versions.get(kind):
                self._install_last(parameter)

    def _install_last(self, parameter: ParameterKind) -> None:
        """Put the last applied version of a parameter kind in force (at load)."""
        last = self._versions[parameter.kind][-1]
        if parameter.request_id == last["request_id"] and parameter.value is not None:
            return  # already in force (a store opened again after a failure)
        value = parameter.parse(last["text"], f"{parameter.kind} version {last['version']}")
        self._initial(parameter)  # the shipped file's entry, before it is replaced
        parameter.install(value)
        self._in_force(parameter, value, last)
        logger.info(
            orjson.dumps(
                {
                    "event": "parameter_installed",
                    "kind": parameter.kind,
                    "version": last["version"],
                    "at": "load",
                }
            ).decode()
        )

    # --- reads -----------------------------------------------------------------------

    def get(self, request_id: str) -> dict[str, Any]:
        """One request's record (APPROVAL_NOT_FOUND)."""
        record = self.requests.get(request_id)
        if record is None:
            raise refused(Code.APPROVAL_NOT_FOUND, request_id)
        return dict(record)

    def list(
        self, state: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Requests, newest first, filtered by state and kind (INVALID_FIELD for an
        unknown state)."""
        if state is not None and state not in STATES:
            raise refused(
                Code.INVALID_FIELD, f"expected one of {', '.join(STATES)}", pointer="/state"
            )
        chosen = [
            record
            for record in self.requests.values()
            if (state is None or record["state"] == state)
            and (kind is None or record["kind"] == kind)
        ]
        chosen.sort(key=lambda record: (record["made_ns"], record["seq"]), reverse=True)
        return [dict(record) for record in chosen[: max(0, min(limit, LIST_LIMIT_MAX))]]

    def versions(self, kind: str) -> Records:
        """The versions of a parameter kind, oldest first, without their text: the
        shipped file's (request_id "", applied_ns 0) then each applied one: {version,
        digest, request_id, maker, checker, applied_ns}."""
        parameter = self._parameter(kind)
        entries = []
        initial = self._initial(parameter)
        if initial is not None:
            entries.append(initial)
        for version in self._versions.get(kind, []):
            entries.append({key: value for key, value in version.items() if key != "text"})
        return entries

    def current(self, kind: str) -> dict[str, Any]:
        """The version in force of a parameter kind: {kind, version, digest, text,
        request_id}. INVALID_FIELD for a kind not registered; UNAVAILABLE when the
        shipped file cannot be read."""
        parameter = self._parameter(kind)
        self._known(parameter)
        return {
            "kind": kind,
            "version": parameter.version,
            "digest": parameter.digest,
            "text": parameter.current_text,
            "request_id": parameter.request_id,
        }

    def current_text(self, kind: str) -> str:
        """The text of the version in force of a parameter kind."""
        text: str = self.current(kind)["text"]
        return text

    def audit(self, since_ns: int = 0, limit: int = 100) -> Records:
        """Audit records at or after `since_ns`, oldest first, at most `limit`."""
        start = bisect.bisect_left(self._audit_keys, b"audit/%020d" % max(0, since_ns))
        keys = self._audit_keys[start : start + max(0, min(limit, LIST_LIMIT_MAX))]
        return [dict(self._audit[key]) for key in keys]

    def credit_limit(self, customer_id: str) -> int:
        """The customer's approved credit limit in fen (0: none approved)."""
        credit = self._credit.get(customer_id)
        return 0 if credit is None else int(credit["limit_minor"])

    def authorize_read(
        self,
        operator: OperatorCaller,
        permission: str,
        what: str,
        object: str = "",
    ) -> None:
        """Check that `operator` holds `permission` (`read:audit`, `read:risk`,
        `read:approvals`; OPERATOR_NOT_PERMITTED) and, for audit and risk data, record
        the read in the audit log (staged: durable with the next group, no write of
        its own). The HTTP adapter calls it before each operator read; `what` names the
        read ("read_audit", "read_decisions", ...), `object` what was read."""
        self.permit(operator, permission)
        if permission == READ_APPROVALS:
            return
        now = self.core.now_ns()
        key, value = self._audit_entry(operator, what, object, "", now, {})
        assert value is not None
        self.core.customer_state().stage_change(key, value)

    def audit_action(
        self, operator: OperatorCaller, what: str, object: str, detail: dict[str, Any]
    ) -> Change:
        """The audit record of an act another service lets `operator` do alone (a loan
        application decided: `what` "loan_decision"), indexed at once; the caller writes
        the change in the same durable commit as the act itself."""
        return self._audit_entry(operator, what, object, "", self.core.now_ns(), detail)

    # --- parameters ----------------------------------------------------------------

    def _parameter(self, kind: str) -> ParameterKind:
        parameter = self.parameters.get(kind)
        if parameter is None:
            raise refused(
                Code.INVALID_FIELD,
                f"no such parameter kind here: {kind}",
                pointer="/kind",
                kinds=sorted(self.parameters),
            )
        return parameter

    def _initial(self, parameter: ParameterKind) -> dict[str, Any] | None:
        """The shipped file's version entry of a kind (read, parsed and, when nothing
        else is in force, made its current version at the first need); None when the
        file cannot be used (`failure` says why)."""
        if parameter.initial is not None or parameter.failure:
            return parameter.initial
        try:
            text = parameter.text()
            value = parameter.parse(text, f"{parameter.kind} (shipped)")
        except Exception as error:
            parameter.failure = f"{type(error).__name__}: {error}"
            logger.error(
                orjson.dumps(
                    {
                        "event": "parameter_unreadable",
                        "kind": parameter.kind,
                        "error": parameter.failure,
                    }
                ).decode()
            )
            return None
        version = parameter.version_of(value) if parameter.version_of else 0
        parameter.initial = {
            "kind": parameter.kind,
            "version": version,
            "digest": digest_of(text),
            "request_id": "",
            "maker": "",
            "checker": "",
            "applied_ns": 0,
        }
        if parameter.value is None:
            parameter.value = value
            parameter.version = version
            parameter.digest = digest_of(text)
            parameter.current_text = text
        return parameter.initial

    def _known(self, parameter: ParameterKind) -> None:
        """Make sure the version in force is known (UNAVAILABLE when it cannot be)."""
        if parameter.value is None:
            self._initial(parameter)
        if parameter.value is None:
            raise refused(
                Code.UNAVAILABLE, f"the {parameter.kind} file cannot be used: {parameter.failure}"
            )

    @staticmethod
    def _in_force(parameter: ParameterKind, value: Any, version: dict[str, Any]) -> None:
        parameter.value = value
        parameter.version = version["version"]
        parameter.digest = version["digest"]
        parameter.current_text = version["text"]
        parameter.request_id = version["request_id"]

    def _parameter_request(
        self,
        kind: str,
        object: str,
        payload: dict[str, Any],
    ) -> dict[str, Any]:
        """Validate a parameter change: the fields of its record (object, diff,
        base_version, version), or the refusal."""
        parameter = self.parameters[kind]
        if object not in ("", kind):
            raise refused(
                Code.INVALID_FIELD, f"a {kind} change acts on {kind!r}", pointer="/object"
            )
        unknown = set(payload) - {"text", "base_version"}
        if unknown:
            raise refused(
                Code.INVALID_FIELD, "unknown field", pointer=f"/payload/{sorted(unknown)[0]}"
            )
        text = payload.get("text")
        if not isinstance(text, str) or not text:
            raise refused(
                Code.INVALID_FIELD, "expected the new file's text", pointer="/payload/text"
            )
        if len(text.encode("utf-8")) > TEXT_BYTES_MAX:
            raise refused(
                Code.INVALID_FIELD, f"at most {TEXT_BYTES_MAX} bytes", pointer="/payload/text"
            )
        base_version = payload.get("base_version")
        if type(base_version) is not int:
            raise refused(
                Code.INVALID_FIELD,
                "expected the version the change was made against (an integer)",
                pointer="/payload/base_version",
            )
        self._known(parameter)
        if base_version != parameter.version:
            raise _stale(kind, base_version, parameter.version)
        _value, version = self._validated(parameter, text)
        diff = "".join(
            itertools.islice(
                difflib.unified_diff(
                    parameter.current_text.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=f"{kind} version {parameter.version}",
                    tofile=f"{kind} version {version}",
                ),
                DIFF_LINES_MAX,
            )
        )
        return {"object": kind, "diff": diff, "base_version": base_version, "version": version}

    def _validated(self, parameter: ParameterKind, text: str) -> tuple[Any, int]:
        """Parse and check a proposed text against the version in force: the value and
        the version it becomes (PARAMETER_INVALID with every error)."""
        kind = parameter.kind
        source = f"{kind} (proposed)"
        try:
            value = parameter.parse(text, source)
        except Exception as error:
            raise parameter_invalid(kind, parameter_errors(error)) from None
        if digest_of(text) == parameter.digest:
            raise parameter_invalid(
                kind,
                [
                    {
                        "line": 0,
                        "message": f"the text is the {kind} version in"
                        f" force ({parameter.version}): nothing to change",
                    }
                ],
            )
        if parameter.version_of is None:
            version = parameter.version + 1
        else:
            version = parameter.version_of(value)
            if version <= parameter.version:
                raise parameter_invalid(
                    kind,
                    [
                        {
                            "line": _version_line(text),
                            "message": f"`version`: {version} must be greater than the version in"
                            f" force ({parameter.version})",
                        }
                    ],
                )
        if parameter.replaces is not None:
            try:
                parameter.replaces(parameter.value, value, text)
            except Exception as error:
                raise parameter_invalid(kind, parameter_errors(error)) from None
        return value, version

    async def _apply_parameter(self, record: dict[str, Any]) -> dict[str, Any]:
        """Apply an approved, due parameter change: its version record and the request
        "applied" in one PUT_STATE entry, then the install (module docstring)."""
        parameter = self.parameters[record["kind"]]
        now = self.core.now_ns()
        self._known(parameter)
        text = record["payload"]["text"]
        if record["base_version"] != parameter.version:
            stale = _stale(parameter.kind, record["base_version"], parameter.version)
            return await self._failed(record, stale, now)
        try:
            value, version = self._validated(parameter, text)
        except Refused as refusal:
            return await self._failed(record, refusal, now)
        entry = {
            "kind": parameter.kind,
            "version": version,
            "digest": digest_of(text),
            "text": text,
            "request_id": record["id"],
            "maker": record["maker"],
            "checker": record["checker"],
            "applied_ns": now,
        }
        applied = {
            **record,
            "state": APPLIED,
            "applied_ns": now,
            "version": version,
            "result": {"version": version, "digest": entry["digest"]},
        }
        await self._write(
            [
                (param_key(parameter.kind, version), _dumps(entry)),
                (approval_key(record["id"]), _dumps(applied)),
                self._audit_record(None, "applied", applied, now, {"version": version}),
            ]
        )
        self.requests[record["id"]] = applied
        self._versions.setdefault(parameter.kind, []).append(entry)
        parameter.install(value)
        self._in_force(parameter, value, entry)
        engine = self.core.engine
        if engine is not None and engine.running:
            # A barrier: what the install queued (the engine's SET_RULES entry) is
            # durable before the caller hears "applied".
            await self.core.call_engine(engine.read, _nothing)
        logger.info(
            orjson.dumps(
                {
                    "event": "parameter_applied",
                    "kind": parameter.kind,
                    "version": version,
                    "id": record["id"],
                }
            ).decode()
        )
        return applied

    # --- operations ------------------------------------------------------------------

    async def _operation_request(
        self,
        kind: str,
        object: str,
        payload: dict[str, Any],
    ) -> str:
        """Check an operation's payload; the object it acts on."""
        operation = self.operations[kind]
        checked = operation.check(payload)
        if inspect.isawaitable(checked):
            await checked
        if not object and operation.object_of is not None:
            object = operation.object_of(payload)
        if not isinstance(object, str) or not OBJECT_PATTERN.fullmatch(object):
            raise refused(
                Code.INVALID_FIELD,
                "expected what the request acts on: 1-80 characters of A-Z, a-z, 0-9, _ . : -",
                pointer="/object",
            )
        return object

    async def _apply_operation(self, record: dict[str, Any]) -> dict[str, Any]:
        """Execute an approved, due operation, then record it applied (or failed)."""
        operation = self.operations[record["kind"]]
        checker = OperatorCaller(
            record["checker"], record["checker_role"], record.get("checker_from", "")
        )
        payload = {**record["payload"], "request_id": record["id"], "maker": record["maker"]}
        try:
            result = await operation.execute(payload, checker)
        except Refused as refusal:
            if refusal.refusal.code in TRANSIENT:
                logger.warning(
                    orjson.dumps(
                        {"event": "approval_retry", "id": record["id"], "error": str(refusal)}
                    ).decode()
                )
                return record
            return await self._failed(record, refusal, self.core.now_ns())
        now = self.core.now_ns()
        applied = {**record, "state": APPLIED, "applied_ns": now, "result": result}
        # No await between the executor's staged changes and this write: one group.
        await self._write(
            [
                (approval_key(record["id"]), _dumps(applied)),
                self._audit_record(None, "applied", applied, now),
            ]
        )
        self.requests[record["id"]] = applied
        logger.info(
            orjson.dumps(
                {"event": "operation_applied", "kind": record["kind"], "id": record["id"]}
            ).decode()
        )
        return applied

    async def _apply(self, record: dict[str, Any]) -> dict[str, Any]:
        """Apply an approved, due request (under the lock); its record afterwards."""
        kind = record["kind"]
        if kind in self.parameters:
            return await self._apply_parameter(record)
        if kind in self.operations:
            return await self._apply_operation(record)
        logger.warning(
            orjson.dumps(
                {"event": "approval_kind_unregistered", "kind": kind, "id": record["id"]}
            ).decode()
        )
        return record

    async def _failed(self, record: dict[str, Any], refusal: Refused, now: int) -> dict[str, Any]:
        """Record a request that could not be applied, with its refusal."""
        why = refusal.refusal
        result = {"code": why.code.name.lower(), "detail": why.detail, **why.extras}
        if why.ledger_code:
            result["ledger_code"] = why.ledger_code
        failed = {**record, "state": FAILED, "applied_ns": now, "result": result}
        await self._write(
            [
                (approval_key(record["id"]), _dumps(failed)),
                self._audit_record(None, "failed", failed, now, {"code": result["code"]}),
            ]
        )
        self.requests[record["id"]] = failed
        logger.warning(
            orjson.dumps(
                {"event": "approval_failed", "id": record["id"], "code": result["code"]}
            ).decode()
        )
        return failed

    # --- the built-in operations -----------------------------------------------------

    def _check_credit_limit(self, payload: dict[str, Any]) -> None:
        unknown = set(payload) - {"customer_id", "limit_minor"}
        if unknown:
            raise refused(
                Code.INVALID_FIELD, "unknown field", pointer=f"/payload/{sorted(unknown)[0]}"
            )
        customer_id = payload.get("customer_id")
        if not isinstance(customer_id, str) or not OBJECT_PATTERN.fullmatch(customer_id):
            raise refused(
                Code.INVALID_FIELD, "expected a customer id", pointer="/payload/customer_id"
            )
        if customer_id not in self.core.customer_state().customers:
            raise refused(Code.CUSTOMER_NOT_FOUND, customer_id)
        limit = payload.get("limit_minor")
        if type(limit) is not int or not 0 <= limit <= CREDIT_LIMIT_MAX_MINOR:
            raise refused(
                Code.INVALID_FIELD,
                f"expected fen, an integer 0..{CREDIT_LIMIT_MAX_MINOR}",
                pointer="/payload/limit_minor",
            )

    async def _execute_credit_limit(
        self, payload: dict[str, Any], checker: OperatorCaller
    ) -> dict[str, Any]:
        """Stage `credit/<customer>` (durable with the applied record: no await here)."""
        customer_id = payload["customer_id"]
        before = self.credit_limit(customer_id)
        credit = {
            "customer_id": customer_id,
            "limit_minor": payload["limit_minor"],
            "request_id": payload["request_id"],
            "applied_ns": self.core.now_ns(),
        }
        self.core.customer_state().stage_change(credit_key(customer_id), _dumps(credit))
        self._credit[customer_id] = credit
        return {
            "customer_id": customer_id,
            "limit_minor": payload["limit_minor"],
            "limit_before_minor": before,
        }

    def _check_unlock(self, payload: dict[str, Any]) -> None:
        assert self.auth is not None
        self.auth.unlock_check(payload_account_id(payload))

    async def _execute_unlock(
        self, payload: dict[str, Any], checker: OperatorCaller
    ) -> dict[str, Any]:
        assert self.auth is not None
        return dict(self.auth.unlock_password(payload_account_id(payload)))

    async def _check_reversal(self, payload: dict[str, Any]) -> None:
        """A posted counter transfer of this bank, more than `reversal_approval_minor`
        reversed (below it the counter reverses it itself)."""
        unknown = set(payload) - {"transfer_id", "amount_minor"}
        if unknown:
            raise refused(
                Code.INVALID_FIELD, "unknown field", pointer=f"/payload/{sorted(unknown)[0]}"
            )
        transfer_id = _transfer_id(payload)
        amount = payload.get("amount_minor")
        if amount is not None and (type(amount) is not int or amount <= 0):
            raise refused(
                Code.INVALID_FIELD,
                "expected fen, an integer > 0, or null (all)",
                pointer="/payload/amount_minor",
            )
        original = await self._original(transfer_id)
        reversed_minor = original.amount_posted if amount is None else amount
        if reversed_minor <= self.core.settings.reversal_approval_minor:
            raise refused(
                Code.INVALID_FIELD,
                "at or below the reversal approval threshold"
                f" ({self.core.settings.reversal_approval_minor} fen): the counter"
                " reverses it itself",
                pointer="/payload/amount_minor",
            )

    async def _original(self, transfer_id: int) -> Any:
        from ledger.records import transfer_view
        from ledger.types import CreateTransferResult

        raw = await self.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
        if raw is None:
            raise refused(Code.TRANSFER_NOT_FOUND, f"{transfer_id:032x}")
        original = transfer_view(raw)
        channel = self.core.rules.channels.get(original.channel)
        if channel is None or channel.kind.value != "counter":
            raise refused(Code.TRANSFER_NOT_FOUND, f"{transfer_id:032x}: not a counter transfer")
        if original.result != CreateTransferResult.OK:
            raise refused(Code.TRANSFER_NOT_FOUND, f"{transfer_id:032x}: not posted")
        return original

    async def _execute_reversal(
        self, payload: dict[str, Any], checker: OperatorCaller
    ) -> dict[str, Any]:
        """Reverse the counter transfer as its channel, with an operation key derived
        from the request (a re-run meets the first reversal in the ledger)."""
        from core.services.commands import Caller, Movement

        assert self.payments is not None
        transfer_id = _transfer_id(payload)
        original = await self._original(transfer_id)
        channel = self.core.rules.channels[original.channel]
        caller = Caller(
            channel.name,
            channel.kind.value,
            original.channel,
            actor_id=checker.name,
            actor_role="supervisor",
        )
        move = Movement(
            caller, f"approval/{payload['request_id']}", transfer_id, payload.get("amount_minor")
        )
        posted = await self.payments.reversal(move, approved=True)
        return {
            "transfer_id": int.from_bytes(posted.transfer_id_packed, "little").__format__("032x"),
            "reversed_id": f"{transfer_id:032x}",
            "amount_minor": posted.amount_minor,
            "replayed": posted.replayed,
        }

    # --- records -----------------------------------------------------------------------

    def permit(self, operator: OperatorCaller, permission: str) -> None:
        """Check that `operator` is an operator in force whose role holds `permission`
        (OPERATOR_NOT_PERMITTED, with `role` and `permission`, otherwise). Records
        nothing: the loan product preview (core/services/loans.py) checks its maker here."""
        registered = self.operators.get(operator.name)
        if registered is None or registered.disabled or registered.role != operator.role:
            raise refused(
                Code.OPERATOR_NOT_PERMITTED,
                f"{operator.name} is not an operator in force",
                role=operator.role,
                permission=permission,
            )
        if not permitted(operator.role, permission):
            raise refused(
                Code.OPERATOR_NOT_PERMITTED,
                f"the role {operator.role} does not hold {permission}",
                role=operator.role,
                permission=permission,
            )

    def _decidable(self, operator: OperatorCaller, request_id: str) -> dict[str, Any]:
        """A request `operator` may approve or reject now (the refusals otherwise)."""
        record = self.requests.get(request_id)
        if record is None:
            raise refused(Code.APPROVAL_NOT_FOUND, request_id)
        self.permit(operator, f"approve:{record['kind']}")
        if operator.name == record["maker"]:
            raise refused(Code.APPROVAL_SELF, "the maker of a request cannot decide it")
        if record["state"] != PENDING:
            raise refused(
                Code.APPROVAL_NOT_PENDING,
                f"the request is {record['state']}",
                state=record["state"],
            )
        if record["expires_ns"] <= self.core.now_ns():
            raise refused(
                Code.APPROVAL_NOT_PENDING,
                "the request expired (the tick records it)",
                state=EXPIRED,
            )
        return record

    @staticmethod
    def _expired(record: dict[str, Any], now: int) -> dict[str, Any]:
        return {**record, "state": EXPIRED, "decided_ns": now}

    def _refuse_duplicate(self, kind: str, object: str) -> None:
        for record in self.requests.values():
            if (
                record["kind"] == kind
                and record["object"] == object
                and record["state"] in (PENDING, APPROVED)
            ):
                raise refused(
                    Code.APPROVAL_DUPLICATE,
                    f"request {record['id']} for {kind} {object} is {record['state']}",
                    request_id=record["id"],
                )

    def _new_id(self, maker: str, now: int) -> str:
        """ "A" + 12 hex digits from the number of requests, the maker and the time."""
        sequence = len(self.requests) + 1
        while True:  # (a collision of 48 bits: practically never, but never reused)
            digest = hashlib.sha256(f"{sequence}/{maker}/{now}".encode()).hexdigest()
            request_id = "A" + digest[:12]
            if request_id not in self.requests:
                return request_id
            sequence += 1

    def _audit_record(
        self,
        operator: OperatorCaller | None,
        what: str,
        record: dict[str, Any],
        now: int,
        detail: dict[str, Any] | None = None,
    ) -> Change:
        """The audit change of an action on a request (`operator` None: the server)."""
        return self._audit_entry(
            operator, what, f"{record['kind']}:{record['object']}", record["id"], now, detail or {}
        )

    def _audit_entry(
        self,
        operator: OperatorCaller | None,
        what: str,
        object: str,
        request_id: str,
        now: int,
        detail: dict[str, Any],
    ) -> Change:
        """A new audit record (indexed in memory at once; written by the caller)."""
        self._audit_seq += 1
        key = b"audit/%020d-%06d" % (now, self._audit_seq)
        entry = {
            "who": operator.name if operator else SYSTEM,
            "role": operator.role if operator else SYSTEM,
            "from": operator.address if operator else "",
            "what": what,
            "object": object,
            "when": now,
            "request_id": request_id,
            "detail": detail,
        }
        self._audit[key] = entry
        bisect.insort(self._audit_keys, key)
        return key, _dumps(entry)

    async def _write(self, changes: Changes) -> None:
        """One durable PUT_STATE of `changes` (a full queue waited out, bounded)."""
        engine = self.core.running_engine()
        await self.core.call_engine_patiently(engine.submit_state, changes)


CREDIT_LIMIT_MAX_MINOR: Final = 10**15  # 10 trillion CNY: beyond any customer


def _check_reason(reason: str, *, required: bool) -> None:
    if not isinstance(reason, str) or len(reason) > REASON_LENGTH_MAX:
        raise refused(
            Code.INVALID_FIELD, f"at most {REASON_LENGTH_MAX} characters", pointer="/reason"
        )
    if required and not reason.strip():
        raise refused(Code.INVALID_FIELD, "a rejection says why", pointer="/reason")


def _stale(kind: str, base_version: int, version: int) -> Refused:
    return refused(
        Code.APPROVAL_STALE,
        f"the change was made against {kind} version"
        f" {base_version}; version {version} is in force: make it again against"
        " it",
        base_version=base_version,
        version=version,
    )


def parameter_invalid(kind: str, errors: list[dict[str, Any]]) -> Refused:
    """PARAMETER_INVALID for a proposed `kind` file, with every problem (`errors`, as
    `parameter_errors` gives them)."""
    return refused(
        Code.PARAMETER_INVALID,
        f"the proposed {kind} do not validate"
        f" ({len(errors)} problem{'s' if len(errors) != 1 else ''})",
        errors=errors,
    )


def payload_account_id(payload: dict[str, Any]) -> int:
    """The `account_id` of an operation's payload (INVALID_FIELD: missing, not a decimal id,
    or another field beside it)."""
    unknown = set(payload) - {"account_id", "request_id", "maker"}
    if unknown:
        raise refused(Code.INVALID_FIELD, "unknown field", pointer=f"/payload/{sorted(unknown)[0]}")
    value = payload.get("account_id")
    if isinstance(value, str) and re.fullmatch(r"[1-9][0-9]{0,37}", value):
        return int(value)
    if type(value) is int and value > 0:
        return value
    raise refused(
        Code.INVALID_FIELD, "expected an account id (decimal string)", pointer="/payload/account_id"
    )


def _transfer_id(payload: dict[str, Any]) -> int:
    value = payload.get("transfer_id")
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value):
        number = int(value, 16)
        if 0 < number < (1 << 128) - 1:
            return number
    raise refused(
        Code.INVALID_FIELD,
        "expected a transfer id: 32 lowercase hex digits",
        pointer="/payload/transfer_id",
    )
