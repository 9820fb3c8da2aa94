"""The risk stage: every money movement screened against the bank's fraud rules.

`Risk` holds the rule set in force (`limits.risk.RiskRules`, a parameter: the first
version from `Settings.risk_rules_path`, later ones installed by the approvals
service) and the kernel that evaluates it (`cext.risk.RiskKernel`, or its pure-Python
twin `limits.risk_reference.ReferenceRiskKernel` where the extension is not built).
The kernel keeps the counters (velocity buckets, history samples, first-seen payees
and devices) in fixed-size hash tables: no Python object per account or device.
`limits/risk_layout.py` is the specification of what each rule type does.

Where it runs: `Payments.post` and `Payments.post_batch` (core/services/payments.py)
call `screen` right before `admit`, so every posting of every channel passes it.
Not screened: captures and voids (they settle a movement decided when its hold was
placed; the kernel skips them too), the bank's own generated entries (interest,
day-end: they never reach `Payments`), and the stage's own releases and returns.

The hot path (a request, nothing fires): one 48-byte context template (device, ip,
counterparty, time of day, second factor; their keys cached), one kernel call that
builds every posting's context row from the kernel's holder table (debit account ->
the holder's customer and resident-id keys; an account not in it is looked up in the
customer state once, then kept), ONE kernel call that screens them, `None` back. No
Python runs per posting; no dict or JSON work happens unless a rule fired.

Outcomes (`Outcome`, most severe wins; `Payments` acts on them):

- ALLOW: nothing fired, only allow/report rules fired, or a challenge met by a second
  factor: posted as is; a decision is recorded when a rule fired (large-value reports
  are the decisions with `report`).
- CHALLENGE unmet: refused `RISK_CHALLENGE` (`factors`, `decision_id`); the channel
  retries with the same Idempotency-Key and a second factor.
- DELAY: the record becomes a PENDING hold (same id, accounts, amount, code, user
  data; timeout = delay_s + 1 day) answered `Posted(risk_hold="delayed")`; `on_tick`
  captures it (BANK_CHANNEL, id derived from the hold's) once `release_at_ns` passed.
- REVIEW: the same with a hold of review_s + 1 day; a risk officer releases
  (`release`) or returns (`return_`) it through an approved request (the approvals
  service's `release_review` / `return_review` operations); unreviewed after review_s
  `on_tick` returns it (voids it).
- BLOCK: refused `RISK_BLOCKED` (`decision_id`); nothing posted.

A hold the stage placed is locked: the channel that posted it cannot capture, void
or reverse it (`hold_locked`, `RISK_HOLD_LOCKED`).

Decisions: recorded only when a rule fired (an allow with nothing fired is implied by
the rule-set version in force at the transfer's timestamp, durable in the approvals'
`param/risk/<version>` records), one record per transfer id, `risk/d/<transfer id as
32 hex>`, JSON:

    {"id", "transfer_id", "channel", "outcome", "report", "rules": [names],
     "inputs": {rule: value}, "context": {"device", "ip", "location"}, "version",
     "digest", "at_ns", "release_at_ns", "timeout_s", "amount_minor", "debit",
     "credit", "code", "pending": bool, "state", "settled_ns", "settled_by"}

`id` is the transfer id in hex (the decision of a transfer is found by either);
`state` is "posted" (allowed), "held" (a delay or review hold in place), "released",
"returned" or "refused" (blocked, challenged and not met). A decision is staged
(`StateStore.stage_change`) before its posting is queued, so it is durable in the
posting's own group or an earlier one; a refusal is answered once its decision is
durable (`flush_through`). A retry of a transfer id with a recorded decision reuses
it (the same outcome, counted once) unless it was an unmet challenge (screened again:
the retry may bring the second factor).

Counters are in the kernel's memory. At start (`rebuild_counters`, called by
`Bank.serve` before the server is ready) they are rebuilt from the transfer log the
ledger still holds (the newest REBUILD_POSTINGS_MAX postings, about a second of work
per million): what the log cannot tell (each posting's device and IP) starts empty.
The decisions, the holds and the rule set in force are recovered from the store
(`on_state_loaded`; the approved rule-set version is installed by the approvals).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import struct
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from core.engine_policy import BATCH_SIZE_MAX
from core.services.commands import NO_CONTEXT, Caller, RiskContext
from core.services.lifecycle import Lifecycle
from core.services.records import EPOCH_DATE, NS_PER_S
from core.services.refusals import Code, Refused, refused, transfer_refused
from ledger.constants import BANK_ACCOUNT_ID_LIMIT, BANK_CHANNEL, LEDGER_CNY
from ledger.records import pack_transfer, transfer_view
from ledger.types import (
    TRANSFER_SIZE,
    UINT64_MAX,
    CreateTransferResult,
    PendingState,
    TransferCode,
    TransferFlags,
)
from limits.risk import RiskRules, check_risk_successor, load_risk_rules, parse_risk_rules
from limits.risk_layout import CONTEXT, VERDICT, Outcome, key_of
from limits.risk_reference import new_risk_kernel

if TYPE_CHECKING:
    from core.services.auth import Auth
    from core.services.customers import Customers

logger = logging.getLogger("tally.risk")

R = CreateTransferResult
DECISION_PREFIX: Final = b"risk/d/"
HOLD_GRACE_S: Final = 86_400  # a risk hold's ledger timeout = its hold length + this
CHALLENGE_FACTORS: Final = ("sms", "ukey", "face")
_OUTCOMES: Final = tuple(sorted(Outcome, key=int))  # by value (the kernel's outcome byte)
assert all(outcome == index for index, outcome in enumerate(_OUTCOMES))
_PENDING: Final = int(TransferFlags.PENDING)
OUTCOME_NAMES: Final = {outcome: outcome.name.lower() for outcome in Outcome}
OUTCOME_OF_NAME: Final = {name: outcome for outcome, name in OUTCOME_NAMES.items()}
HOLD_NAMES: Final = {Outcome.DELAY: "delayed", Outcome.REVIEW: "review"}
HOLD_OUTCOMES: Final = frozenset({"delay", "review"})
REFUSING: Final = frozenset({Outcome.CHALLENGE, Outcome.BLOCK})
# A decision's `state`.
POSTED: Final = "posted"  # allowed (a rule fired): posted as is
HELD: Final = "held"  # a delay or review hold in place, waiting for the tick or an officer
RELEASED: Final = "released"  # the hold was captured by the bank (or a payment hold unlocked)
RETURNED: Final = "returned"  # the hold was voided: the money stayed with the payer
EXPIRED: Final = "expired"  # the hold expired in the ledger before it was settled
FAILED: Final = "failed"  # the ledger refused the posting itself (`ledger_code`)
REFUSED: Final = "refused"  # blocked, or challenged and not met: nothing posted
REBUILD_POSTINGS_MAX: Final = 1_000_000  # logged postings replayed into the counters at start
TICK_SETTLES_MAX: Final = 256  # holds released or returned per tick (the rest: next tick)
SETTLE_RETRY_S: Final = 60  # a hold the ledger would not settle (a frozen account): retry then
HOLDER_CACHE_MAX: Final = 1 << 20  # debit accounts whose holder keys are cached
KEY_CACHE_MAX: Final = 1 << 16  # device, ip and card keys cached
OFFSET_VALID_S: Final = 900  # the time zone's offset is looked up once per quarter hour
# Refusals of a release the tick tries again at its next run (the lifecycle logs them).
TRANSIENT: Final = frozenset(
    {Code.NOT_READY, Code.OVERLOADED, Code.UNAVAILABLE, Code.STORAGE_UNAVAILABLE}
)
# A plain int: `flags & SETTLING_FLAGS` runs on every posting, and an IntFlag operand
# makes it an enum operation (about 2 us, measured under the core link's bench).
SETTLING_FLAGS: Final = int(TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING)
_TIMEOUT = struct.Struct("<I")  # a transfer record's timeout_s, at TIMEOUT_OFFSET
_FLAGS = struct.Struct("<H")  # its flags, at FLAGS_OFFSET
TIMEOUT_OFFSET: Final = 80
FLAGS_OFFSET: Final = 88
WORDS_PER_TRANSFER: Final = TRANSFER_SIZE // 8
WORDS_PER_CONTEXT: Final = CONTEXT.size // 8
assert sys.byteorder == "little", "records and context rows are little-endian u64 words"

DEBIT_OFFSET: Final = 16  # a transfer record's debit account id (lo, hi), then credit (lo)
_PAIR = struct.Struct("<QQ")
_HOLDER = struct.Struct("<QQQQ")  # the kernel's holder row: account lo, hi, customer, resident
_WORD = struct.Struct("<Q")
assert CONTEXT.size == 6 * 8
SECOND_FACTOR_OFFSET: Final = 5 * 8 + 4  # a CONTEXT row's second-factor byte


_HEX_DIGITS: Final = "0123456789abcdefABCDEF"
_REPLAY = Caller("risk-replay", "internal", BANK_CHANNEL)  # the caller of replayed postings


def _repeated(word: int, count: int) -> memoryview:
    """`count` copies of the u64 `word`, as a u64 view (for a strided copy)."""
    return memoryview(_WORD.pack(word) * count).cast("Q")


class Kernel(Protocol):
    """`cext.risk.RiskKernel` / `limits.risk_reference.ReferenceRiskKernel`."""

    def set_program(self, program: bytes) -> None: ...
    def set_list(self, list_id: int, keys: bytes) -> None: ...
    def screen(
        self, records: bytes, contexts: bytes | bytearray, count: int, now_s: int,
        out: bytearray,
    ) -> int: ...  # fmt: skip
    def set_holders(self, rows: bytes) -> None: ...
    def context_rows(
        self, records: bytes, count: int, template: bytes, rows: bytearray
    ) -> list[int]: ...
    def clear_holders(self) -> None: ...
    @property
    def holder_count(self) -> int: ...
    def fired(self) -> list[int]: ...
    def observed(self, index: int) -> list[tuple[int, int]]: ...
    def entries(self) -> int: ...
    def memory_bytes(self) -> int: ...
    def clear(self) -> None: ...


def default_kernel() -> Kernel:
    """The compiled kernel (`TALLY_KERNEL=reference`: the pure-Python twin, chosen
    explicitly, never as a silent fallback when the extension is missing)."""
    return new_risk_kernel()


@dataclass(frozen=True, slots=True)
class Fired:
    """One screened posting a rule fired on (or whose recorded decision a retry met)."""

    index: int  # the posting's index in the request's records
    transfer_id: int
    outcome: Outcome  # final: a met challenge is ALLOW (`challenge_met`)
    report: bool  # a large-value report
    challenge_met: bool
    rules: tuple[str, ...]  # the names of the rules that fired
    inputs: Mapping[str, int]  # rule name -> the value it saw (`RiskKernel.observed`)
    decision: dict[str, Any] | None = None  # the recorded decision a retry met (reused)
    timeout_s: int = 0  # DELAY / REVIEW: the hold's ledger timeout
    release_at_ns: int = 0  # DELAY: when the tick captures the hold
    return_at_ns: int = 0  # REVIEW: when the tick returns the hold unreviewed

    @property
    def decision_id(self) -> str:
        return f"{self.transfer_id:032x}"

    @property
    def hold(self) -> str:
        """The hold's name ("delayed", "review"); "" when the outcome is no hold."""
        return HOLD_NAMES.get(self.outcome, "")


@dataclass(slots=True)
class Screening:
    """What the stage decided for one request: the postings a rule fired on (or a
    recorded decision met), in index order; `outcome` the most severe of them."""

    fired: list[Fired]
    outcome: Outcome
    version: int
    digest: str
    now_ns: int


class ApprovalsRegistry(Protocol):
    """What `Risk.register` needs of the approvals service (core/services/approvals.py)."""

    def register_parameter(
        self,
        kind: str,
        *,
        parse: Callable[[str, str], Any],
        install: Callable[[Any], None],
        text: Callable[[], str],
        version_of: Callable[[Any], int] | None = None,
        replaces: Callable[[Any, Any, str], None] | None = None,
    ) -> None: ...

    def register_operation(
        self,
        kind: str,
        *,
        check: Callable[[dict[str, Any]], Awaitable[None] | None],
        execute: Callable[[dict[str, Any], Any], Awaitable[dict[str, Any]]],
        object_of: Callable[[dict[str, Any]], str] | None = None,
    ) -> None: ...


@dataclass(slots=True)
class _Counts:
    """Counts since start (`Risk.stats`)."""

    screened: int = 0
    fired: int = 0
    outcomes: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(OUTCOME_NAMES.values(), 0)
    )
    challenge_met: int = 0
    reports: int = 0
    reused: int = 0
    released: int = 0
    returned: int = 0


class _Decisions:
    """Recorded decisions by transfer id, kept as their JSON bytes: a bytes object is not
    tracked by the garbage collector and takes about a third of the dict it encodes, so
    the millions of decisions a busy day records cost no collection pauses (a dict each
    made every full collection walk them: stalls of milliseconds on the posting path).
    `get` and `values` decode (the rare paths: a retry, a read)."""

    __slots__ = ("_raw",)

    def __init__(self) -> None:
        self._raw: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._raw)

    def __bool__(self) -> bool:
        return bool(self._raw)

    def __contains__(self, transfer_id: int) -> bool:
        return transfer_id in self._raw

    def get(self, transfer_id: int, default: Any = None) -> Any:
        raw = self._raw.get(transfer_id)
        return default if raw is None else orjson.loads(raw)

    def put(self, transfer_id: int, raw: bytes) -> None:
        """Keep `raw` (the decision's JSON) last in order (a new decision of an id moves it)."""
        self._raw.pop(transfer_id, None)
        self._raw[transfer_id] = raw

    def pop(self, transfer_id: int) -> None:
        self._raw.pop(transfer_id, None)

    def values(self) -> Iterator[dict[str, Any]]:
        return (orjson.loads(raw) for raw in self._raw.values())

    def clear(self) -> None:
        self._raw.clear()


class Risk:
    """The risk stage of the posting path (module docstring)."""

    def __init__(
        self,
        core: Lifecycle,
        auth: Auth,
        customers: Customers,
        *,
        rules: RiskRules | None = None,
        kernel: Kernel | None = None,
    ) -> None:
        """`rules`: the first version in force (None: `load_risk_rules(
        core.settings.risk_rules_path)`; a bad file refuses the start); `kernel`: None
        for `default_kernel()`. Hooks itself into `core.on_state_loaded` (rebuild the
        decisions and holds) and `core.on_tick` (release and return due holds)."""
        self.core = core
        self.auth = auth
        self.customers = customers
        self.kernel: Kernel = kernel if kernel is not None else default_kernel()
        self.rules: RiskRules = (
            rules if rules is not None else load_risk_rules(core.settings.risk_rules_path)
        )
        self.initial_text = self.rules.text  # the `risk` parameter before any approval
        self._names: tuple[str, ...] = ()
        self._list_count = 0
        self._out = bytearray(VERDICT.size * BATCH_SIZE_MAX)
        self._keys: dict[tuple[str, str], int] = {}
        self._offset_s = 0
        self._offset_from = 0
        self._offset_until = -1
        # Decisions by transfer id (every recorded one), those a retry reuses (all but an
        # unmet challenge) and their ids' low words (the batch's quick disjointness test),
        # the holds still held.
        self.records = _Decisions()
        self._reusable = _Decisions()
        self._reusable_lo: set[int] = set()
        self.held: dict[int, dict[str, Any]] = {}
        self._settling: set[int] = set()
        self._retry_at: dict[int, int] = {}
        self.counts = _Counts()
        self.install(self.rules)
        core.on_state_loaded.append(self.on_state_loaded)
        core.on_tick.append(self.on_tick)

    # --- the rule set ----------------------------------------------------------

    def install(self, rules: RiskRules) -> None:
        """Put `rules` in force for the next posting (the approvals service calls it for
        an applied `risk` parameter, and at `on_state_loaded` for the last applied
        version). Counters survive: a rule kept from the previous version keeps its
        history. Lists the new version no longer has are emptied."""
        kernel = self.kernel
        kernel.set_program(rules.program())
        values = rules.list_values()
        for list_id, keys in values:
            kernel.set_list(list_id, keys)
        for list_id in range(len(values), self._list_count):
            kernel.set_list(list_id, b"")
        self._list_count = len(values)
        self.rules = rules
        self._names = rules.names
        logger.info(
            orjson.dumps(
                {
                    "event": "risk_rules_installed",
                    "version": rules.version,
                    "digest": rules.digest,
                    "rules": len(rules.rules),
                }
            ).decode()
        )

    def register(self, approvals: ApprovalsRegistry) -> None:
        """Register with the approvals service: the `risk` parameter kind (parse:
        `limits.risk.parse_risk_rules`, install: `install`, text: the text in force at
        construction, version_of: `rules.version`, replaces: `check_risk_successor`: the
        version must increase) and the operations `release_review` and `return_review`
        (payload `{"transfer_id": "<32 hex>"}`: `check` refuses an id that is not 32 hex
        digits (INVALID_FIELD, pointer /payload/transfer_id) and a transfer without a
        held delay or review decision (RISK_DECISION_NOT_FOUND); `execute` calls
        `release` / `return_` with the approving operator's name and answers the
        decision)."""
        approvals.register_parameter(
            "risk",
            parse=parse_risk_rules,
            install=self.install,
            text=lambda: self.initial_text,
            version_of=lambda rules: int(rules.version),
            replaces=lambda current, new, _text: check_risk_successor(current, new, new.source),
        )

        async def execute_release(payload: dict[str, Any], checker: Any) -> dict[str, Any]:
            return await self.release(self._held_id(payload), getattr(checker, "name", ""))

        async def execute_return(payload: dict[str, Any], checker: Any) -> dict[str, Any]:
            return await self.return_(self._held_id(payload), getattr(checker, "name", ""))

        def object_of(payload: dict[str, Any]) -> str:
            return str(payload.get("transfer_id", ""))

        approvals.register_operation(
            "release_review", check=self.check_review, execute=execute_release,
            object_of=object_of,
        )  # fmt: skip
        approvals.register_operation(
            "return_review", check=self.check_review, execute=execute_return,
            object_of=object_of,
        )  # fmt: skip

    def check_review(self, payload: dict[str, Any]) -> None:
        """A `release_review` / `return_review` payload names a transfer the stage holds."""
        transfer_id = self._held_id(payload)
        if transfer_id not in self.held:
            decision = self.records.get(transfer_id)
            state = decision["state"] if decision is not None else ""
            raise refused(
                Code.RISK_DECISION_NOT_FOUND,
                f"no risk hold is held for transfer {transfer_id:032x}"
                + (f" (its decision is {state})" if state else ""),
                **({"state": state} if state else {}),
            )

    @staticmethod
    def _held_id(payload: dict[str, Any]) -> int:
        value = payload.get("transfer_id")
        if not isinstance(value, str) or len(value) != 32 or value.strip(_HEX_DIGITS):
            raise refused(
                Code.INVALID_FIELD, "expected 32 hex digits", pointer="/payload/transfer_id"
            )
        return int(value, 16)

    def rules_json(self) -> dict[str, Any]:
        """The rule set in force (`RiskRules.to_json`) for `GET /v1/risk/rules`."""
        return self.rules.to_json()

    # --- screening (the posting path) -------------------------------------------

    def holder_keys(self, account_id: int) -> tuple[int, int]:
        """(customer key, resident-id key) of `account_id`'s holder; (0, 0) for an account
        without one (the bank's own, or unknown)."""
        state = self.core.customer_state()
        meta = state.accounts.get(account_id)
        if meta is None:
            return 0, 0
        customer = state.customers.get(meta.customer_id)
        resident = key_of("resident_id", customer.id_number) if customer is not None else 0
        return key_of("customer", meta.customer_id), resident

    def _key(self, kind: str, value: str) -> int:
        """`key_of(kind, value)` (0 for ""), cached."""
        if not value:
            return 0
        cache = self._keys
        found = cache.get((kind, value))
        if found is None:
            if len(cache) >= KEY_CACHE_MAX:
                cache.clear()
            found = cache[(kind, value)] = key_of(kind, value)
        return found

    def local_s(self, now_s: int) -> int:
        """The local second of day of unix second `now_s` in the limit rules' time zone
        (the zone's offset looked up once per quarter hour)."""
        if not self._offset_from <= now_s < self._offset_until:
            zone = self.core.rules.timezone
            offset = datetime.datetime.fromtimestamp(now_s, zone).utcoffset()
            self._offset_s = int(offset.total_seconds()) if offset is not None else 0
            self._offset_from = now_s - now_s % OFFSET_VALID_S
            self._offset_until = self._offset_from + OFFSET_VALID_S
        return (now_s + self._offset_s) % 86_400

    def context_rows(
        self,
        caller: Caller,
        records: bytes,
        count: int,
        context: RiskContext,
        counterparty: str,
        second_factor: bool,
        now_s: int,
    ) -> bytearray:
        """The `count` CONTEXT rows of `records` (48 bytes each): the debit holder's
        customer key (`key_of("customer", customer_id)`) and resident-id key, the
        device and ip keys of `context` (0 when not sent), the counterparty (an
        external beneficiary's card `key_of("card", counterparty)` when given, else the
        credit account id's low 64 bits), the local second of day of `now_s` in the
        limit rules' time zone, and whether a second factor came with the holder's
        consent. The kernel builds the rows from its holder table (no Python per
        posting); the accounts it has no entry for are looked up here (`_resolve`)."""
        device = ip = 0
        if context is not NO_CONTEXT:
            device = self._key("device", context.device_id)
            ip = self._key("ip", context.ip)
        card = self._key("card", counterparty) if counterparty else 0
        template = CONTEXT.pack(0, device, ip, card, 0, self.local_s(now_s), second_factor)
        rows = bytearray(CONTEXT.size * count)
        misses = self.kernel.context_rows(records, count, template, rows)
        if misses:
            self._resolve(records, misses, rows)
        return rows

    def _resolve(self, records: bytes, misses: list[int], rows: bytearray) -> None:
        """The holder keys of the postings at `misses`, whose debit accounts the kernel's
        holder table has no entry for: from the customer state into their rows, and into
        the table (an unknown account is not kept: it may be opened later; the table is
        emptied when it would pass HOLDER_CACHE_MAX)."""
        found: dict[int, tuple[int, int]] = {}
        kept = []
        with memoryview(rows).cast("Q") as words:
            for index in misses:
                lo, hi = _PAIR.unpack_from(records, index * TRANSFER_SIZE + DEBIT_OFFSET)
                account_id = lo | hi << 64
                keys = found.get(account_id)
                if keys is None:
                    keys = found[account_id] = self.holder_keys(account_id)
                    if keys[0] or account_id < BANK_ACCOUNT_ID_LIMIT:
                        kept.append(_HOLDER.pack(lo, hi, *keys))
                words[index * WORDS_PER_CONTEXT] = keys[0]
                words[index * WORDS_PER_CONTEXT + 4] = keys[1]
        if kept:
            kernel = self.kernel
            if kernel.holder_count + len(kept) > HOLDER_CACHE_MAX:
                kernel.clear_holders()
            kernel.set_holders(b"".join(kept))

    def screen(
        self,
        caller: Caller,
        records: bytes,
        count: int,
        context: RiskContext = NO_CONTEXT,
        counterparty: str = "",
        second_factor: bool = False,
    ) -> Screening | None:
        """Screen `count` packed transfers (ids derived) before they are queued.

        Returns None when no rule fired on any of them and no recorded decision was
        met (the hot path: one kernel call); else a `Screening` with one `Fired` per
        posting concerned. Captures and voids are not screened (the kernel skips them;
        `Payments.post` does not even call this for them). Counts are taken as the
        kernel evaluates (a blocked or unmet-challenge posting is not counted); a
        posting whose transfer id has a recorded decision reuses it and is not evaluated
        again (unless that decision was an unmet challenge).
        Nothing is recorded here: `Payments` decides, then calls `stage`.
        """
        now_ns = self.core.now_ns()
        now_s = now_ns // NS_PER_S
        self.counts.screened += count
        if self._reusable:
            met = self._met(records, count)
            if met:
                return self._screen_around(
                    caller, records, count, context, counterparty, second_factor, now_ns, met
                )
        contexts = self.context_rows(
            caller, records, count, context, counterparty, second_factor, now_s
        )
        if not self.kernel.screen(records, contexts, count, now_s, self._out):
            return None
        fired = self._fired(records, now_ns)
        return self._screening(fired, now_ns)

    def _met(self, records: bytes, count: int) -> dict[int, dict[str, Any]]:
        """The recorded decisions (reusable) of `records`' transfer ids, by index."""
        reusable = self._reusable
        if count == 1:
            decision = reusable.get(int.from_bytes(records[:16], "little"))
            return {0: decision} if decision is not None else {}
        words = memoryview(records).cast("Q")[: count * WORDS_PER_TRANSFER]
        lows = words[0::WORDS_PER_TRANSFER].tolist()
        if self._reusable_lo.isdisjoint(lows):
            return {}
        met = {}
        for index in range(count):
            if lows[index] in self._reusable_lo:
                offset = index * TRANSFER_SIZE
                decision = reusable.get(int.from_bytes(records[offset : offset + 16], "little"))
                if decision is not None:
                    met[index] = decision
        return met

    def _screen_around(
        self,
        caller: Caller,
        records: bytes,
        count: int,
        context: RiskContext,
        counterparty: str,
        second_factor: bool,
        now_ns: int,
        met: dict[int, dict[str, Any]],
    ) -> Screening | None:
        """`screen` of a request some of whose postings have recorded decisions: those
        reuse them, the others are evaluated (the rare path: a retry)."""
        fired = [self._reused(index, decision) for index, decision in met.items()]
        self.counts.reused += len(fired)
        rest = [index for index in range(count) if index not in met]
        if rest:
            subset = b"".join(
                records[index * TRANSFER_SIZE : (index + 1) * TRANSFER_SIZE] for index in rest
            )
            now_s = now_ns // NS_PER_S
            contexts = self.context_rows(
                caller, subset, len(rest), context, counterparty, second_factor, now_s
            )
            if self.kernel.screen(subset, contexts, len(rest), now_s, self._out):
                evaluated = self._fired(subset, now_ns)
                fired.extend(
                    dataclasses.replace(item, index=rest[item.index]) for item in evaluated
                )
        fired.sort(key=lambda item: item.index)
        return self._screening(fired, now_ns)

    def _reused(self, index: int, decision: dict[str, Any]) -> Fired:
        outcome = OUTCOME_OF_NAME[decision["outcome"]]
        return Fired(
            index, int(decision["transfer_id"], 16), outcome, bool(decision["report"]),
            bool(decision.get("challenge_met")), tuple(decision["rules"]),
            dict(decision["inputs"]), decision, int(decision.get("timeout_s", 0)),
            int(decision.get("release_at_ns", 0)), int(decision.get("return_at_ns", 0)),
        )  # fmt: skip

    def _fired(self, records: bytes, now_ns: int) -> list[Fired]:
        """The postings of the last kernel call a rule fired on."""
        out = self._out
        names = self._names
        rules = self.rules
        kernel = self.kernel
        counts = self.counts
        fired = []
        for index in kernel.fired():
            outcome_code, report, challenge_met, _ = VERDICT.unpack_from(out, VERDICT.size * index)
            outcome = _OUTCOMES[outcome_code]
            seen = kernel.observed(index)
            offset = index * TRANSFER_SIZE
            transfer_id = int.from_bytes(records[offset : offset + 16], "little")
            timeout_s = release_at_ns = return_at_ns = 0
            if outcome == Outcome.DELAY:
                timeout_s = self._hold_timeout(records, offset, rules.delay_s)
                release_at_ns = now_ns + rules.delay_s * NS_PER_S
            elif outcome == Outcome.REVIEW:
                timeout_s = self._hold_timeout(records, offset, rules.review_s)
                return_at_ns = now_ns + rules.review_s * NS_PER_S
            fired.append(
                Fired(
                    index=index,
                    transfer_id=transfer_id,
                    outcome=outcome,
                    report=bool(report),
                    challenge_met=bool(challenge_met),
                    rules=tuple(names[rule] for rule, _ in seen),
                    inputs={names[rule]: value for rule, value in seen},
                    timeout_s=timeout_s,
                    release_at_ns=release_at_ns,
                    return_at_ns=return_at_ns,
                )
            )
            counts.fired += 1
        return fired

    @staticmethod
    def _hold_timeout(records: bytes, offset: int, hold_s: int) -> int:
        """A risk hold's ledger timeout: the hold length and a day of grace (on top of its
        own timeout for a posting that is a hold already: a merchant payment)."""
        timeout_s = hold_s + HOLD_GRACE_S
        (flags,) = _FLAGS.unpack_from(records, offset + FLAGS_OFFSET)
        if flags & _PENDING:
            (own,) = _TIMEOUT.unpack_from(records, offset + TIMEOUT_OFFSET)
            timeout_s += own
        return timeout_s

    def _screening(self, fired: list[Fired], now_ns: int) -> Screening | None:
        if not fired:
            return None
        outcome = max(item.outcome for item in fired)
        return Screening(fired, outcome, self.rules.version, self.rules.digest, now_ns)

    def hold_record(self, record: bytes, fired: Fired) -> bytes:
        """The PENDING hold a DELAY or REVIEW posting becomes: the same record (id,
        accounts, amount, code, channel, user data) with the PENDING flag and the hold's
        timeout (`fired.timeout_s`: delay_s or review_s + HOLD_GRACE_S, or the recorded
        decision's on a retry, so the retry meets the hold in the ledger)."""
        (flags,) = _FLAGS.unpack_from(record, FLAGS_OFFSET)
        return b"".join(
            (
                record[:TIMEOUT_OFFSET],
                _TIMEOUT.pack(fired.timeout_s),
                record[TIMEOUT_OFFSET + 4 : FLAGS_OFFSET],
                _FLAGS.pack(flags | TransferFlags.PENDING),
                record[FLAGS_OFFSET + 2 : TRANSFER_SIZE],
            )
        )

    def stage(
        self,
        caller: Caller,
        records: bytes,
        screening: Screening,
        context: RiskContext,
        state_of: Callable[[Fired], str],
        only: Callable[[Fired], bool] | None = None,
    ) -> int:
        """Record the decisions of `screening` not met from a record (`fired.decision`
        None; and for which `only(fired)`, when given): each staged as `risk/d/<id>` for
        the next group (`StateStore.stage_change`) and kept in memory; `state_of(fired)`
        says its state (POSTED, HELD, REFUSED). `records` are the request's (a hold's
        rewritten or not: the decision takes accounts, amount and code from them).
        Returns the ticket the records are durable at (0: none staged)."""
        ticket = 0
        for fired in screening.fired:
            if fired.decision is not None or (only is not None and not only(fired)):
                continue
            view = transfer_view(records, fired.index * TRANSFER_SIZE)
            decision = {
                "id": fired.decision_id,
                "transfer_id": fired.decision_id,
                "channel": caller.name,
                "outcome": OUTCOME_NAMES[fired.outcome],
                "report": fired.report,
                "challenge_met": fired.challenge_met,
                "rules": list(fired.rules),
                "inputs": dict(fired.inputs),
                "context": {
                    "device": context.device_id,
                    "ip": context.ip,
                    "location": context.location,
                },
                "version": screening.version,
                "digest": screening.digest,
                "at_ns": screening.now_ns,
                "release_at_ns": fired.release_at_ns,
                "return_at_ns": fired.return_at_ns,
                "timeout_s": fired.timeout_s,
                "debit": str(view.debit_account_id),
                "credit": str(view.credit_account_id),
                "amount_minor": view.amount,
                "code": _code_name(view.code),
                "pending": bool(view.flags & TransferFlags.PENDING)
                and fired.outcome not in HOLD_NAMES,
                "state": state_of(fired),
                "settled_ns": 0,
                "settled_by": "",
                "ledger_code": 0,
            }
            ticket = self._put(decision)
            self._count(decision)
        return ticket

    def _count(self, decision: dict[str, Any]) -> None:
        counts = self.counts
        counts.outcomes[decision["outcome"]] += 1
        if decision["challenge_met"]:
            counts.challenge_met += 1
        if decision["report"]:
            counts.reports += 1

    def _put(self, decision: dict[str, Any]) -> int:
        """Stage `decision` for the next group and index it in memory; the ticket."""
        key = DECISION_PREFIX + decision["id"].encode()
        raw = orjson.dumps(decision)
        ticket = self.core.customer_state().stage_change(key, raw)
        self._index(decision, raw)
        return ticket

    def _index(self, decision: dict[str, Any], raw: bytes) -> None:
        transfer_id = int(decision["transfer_id"], 16)
        self.records.put(transfer_id, raw)  # a new decision of the id goes to the end
        if decision["outcome"] == "challenge" and decision["state"] == REFUSED:
            self._reusable.pop(transfer_id)  # screened again at the retry
        else:
            self._reusable.put(transfer_id, raw)
            self._reusable_lo.add(transfer_id & UINT64_MAX)
        if decision["state"] == HELD and decision["outcome"] in HOLD_OUTCOMES:
            self.held[transfer_id] = decision
        else:
            self.held.pop(transfer_id, None)

    def posting_failed(self, transfer_id: int, ledger_code: int) -> None:
        """The ledger refused a posting whose decision was just staged (insufficient
        funds, a limit...): its decision becomes FAILED with the ledger's code (staged,
        not waited for), so the tick does not try to settle a hold that never was."""
        decision = self.records.get(transfer_id)
        if decision is None or decision["state"] not in (POSTED, HELD):
            return
        self._put({**decision, "state": FAILED, "ledger_code": int(ledger_code)})

    def refusal(self, fired: Fired, *, pointer: str = "") -> Refused:
        """The refusal of a BLOCK or an unmet CHALLENGE (the rules are not disclosed)."""
        extras: dict[str, Any] = {"decision_id": fired.decision_id}
        if pointer:
            extras["pointer"] = pointer
        if fired.outcome == Outcome.BLOCK:
            return refused(Code.RISK_BLOCKED, "the risk controls refused this payment", **extras)
        return refused(
            Code.RISK_CHALLENGE,
            "the risk controls ask for a second factor: retry with the same"
            " Idempotency-Key and one of `factors`",
            factors=CHALLENGE_FACTORS,
            **extras,
        )

    def decision_id(self, transfer_id: int) -> str:
        """The id of the decision of `transfer_id` (its 32 hex digits)."""
        return f"{transfer_id:032x}"

    def hold_locked(self, transfer_id: int) -> bool:
        """Whether `transfer_id` is a hold the stage placed (delay or review): the channel
        that posted it may not capture, void or reverse it. A merchant payment the stage
        held is the merchant's again once released."""
        decision = self.records.get(transfer_id)
        if decision is None or decision["outcome"] not in HOLD_OUTCOMES:
            return False
        state = decision["state"]
        if state in (REFUSED, FAILED):
            return False
        return not (decision["pending"] and state == RELEASED)

    # --- releases and returns ---------------------------------------------------

    async def release(self, transfer_id: int, by: str = "") -> dict[str, Any]:
        """Release a risk hold: capture it in full (POST_PENDING, BANK_CHANNEL, id derived
        from the hold's), then record the decision RELEASED (`settled_by` = `by`: "tick"
        or the operator). A merchant payment the stage held is only unlocked (the
        merchant captures or voids it). Idempotent: a retry (or a crash in between)
        meets the capture by its id; a hold released already answers its decision.
        Refuses RISK_DECISION_NOT_FOUND (no delay or review decision, or one settled the
        other way: `state`), and the ledger's refusal while the hold stays pending (a
        frozen account: the tick tries again later). Returns the decision."""
        return await self._settle(transfer_id, by, RELEASED)

    async def return_(self, transfer_id: int, by: str = "") -> dict[str, Any]:
        """Return a risk hold to the payer: void it (VOID_PENDING, BANK_CHANNEL, derived
        id), then record the decision RETURNED. Same answers as `release`."""
        return await self._settle(transfer_id, by, RETURNED)

    async def _settle(self, transfer_id: int, by: str, settled: str) -> dict[str, Any]:
        decision = self.records.get(transfer_id)
        if decision is None or decision["outcome"] not in HOLD_OUTCOMES:
            raise refused(Code.RISK_DECISION_NOT_FOUND, f"no risk hold {transfer_id:032x}")
        if decision["state"] == settled:
            return dict(decision)
        if decision["state"] != HELD:
            raise refused(
                Code.RISK_DECISION_NOT_FOUND,
                f"risk hold {transfer_id:032x} is {decision['state']}, not held",
                state=decision["state"],
            )
        if transfer_id in self._settling:
            raise refused(Code.OVERLOADED, "this hold is being settled", retry_after_s=1)
        self._settling.add(transfer_id)
        try:
            state, ledger_code = await self._settle_in_ledger(decision, settled)
        finally:
            self._settling.discard(transfer_id)
        current = self.records.get(transfer_id, decision)
        if current["state"] != HELD:  # settled meanwhile (a failover reloaded it)
            return dict(current)
        now_ns = self.core.now_ns()
        updated = {
            **current, "state": state, "settled_ns": now_ns, "settled_by": by,
            "ledger_code": ledger_code,
        }  # fmt: skip
        ticket = self._put(updated)
        self._retry_at.pop(transfer_id, None)
        if state == RELEASED:
            self.counts.released += 1
        elif state == RETURNED:
            self.counts.returned += 1
        logger.info(
            orjson.dumps(
                {
                    "event": "risk_hold_settled",
                    "transfer_id": updated["id"],
                    "state": state,
                    "by": by,
                }
            ).decode()
        )
        await self.core.customer_state().flush_through(ticket)
        return dict(updated)

    async def _settle_in_ledger(self, decision: dict[str, Any], settled: str) -> tuple[str, int]:
        """Capture or void the hold (unlock a merchant payment's); the decision's new state
        and the ledger's code when it refused."""
        transfer_id = int(decision["transfer_id"], 16)
        if decision["pending"] and settled == RELEASED:
            return RELEASED, 0  # the merchant's hold again: nothing to post
        operation = "release" if settled == RELEASED else "return"
        flags = TransferFlags.POST_PENDING if settled == RELEASED else TransferFlags.VOID_PENDING
        settle_id = self.core.ids.id(BANK_CHANNEL, f"risk-{operation}:{decision['id']}", 0)
        record = pack_transfer(
            id=settle_id,
            debit_account_id=int(decision["debit"]),
            credit_account_id=int(decision["credit"]),
            amount=int(decision["amount_minor"]),
            code=_code_number(decision["code"]),
            pending_id=transfer_id,
            ledger=LEDGER_CNY,
            flags=flags,
            channel=BANK_CHANNEL,
        )
        engine = self.core.running_engine()
        results = await self.core.call_engine(engine.submit_transfers, record)
        code = int(results[0].result)
        if code in (R.OK, R.EXISTS):
            return settled, 0
        raw = await self.core.read(lambda ledger: ledger.lookup_transfer(transfer_id))
        if raw is None:
            return FAILED, code
        hold = transfer_view(raw)
        if hold.result != R.OK:
            return FAILED, int(hold.result)
        if hold.state == PendingState.POSTED:
            return RELEASED, code
        if hold.state == PendingState.VOIDED:
            return RETURNED, code
        if hold.state == PendingState.EXPIRED or code == R.PENDING_TRANSFER_EXPIRED:
            return EXPIRED, code
        raise transfer_refused(code, f"risk hold {decision['id']} stays held")

    async def on_tick(self, now_ns: int) -> None:
        """Once a second (`Lifecycle.on_tick`): release every DELAY hold whose
        `release_at_ns` has passed, return every REVIEW hold unreviewed past its
        `return_at_ns` (at most TICK_SETTLES_MAX a tick); holds missed while the server
        was down are done at the first ticks. A hold the ledger will not settle now is
        tried again SETTLE_RETRY_S later; a transient refusal (overloaded, storage)
        propagates (the lifecycle logs it and the next tick tries again)."""
        if not self.held:
            return
        retry_at = self._retry_at
        due = [
            (transfer_id, decision)
            for transfer_id, decision in self.held.items()
            if (decision["release_at_ns"] or decision["return_at_ns"]) <= now_ns
            and retry_at.get(transfer_id, 0) <= now_ns
            and transfer_id not in self._settling
        ][:TICK_SETTLES_MAX]
        for transfer_id, decision in due:
            try:
                if decision["outcome"] == "delay":
                    await self.release(transfer_id, "tick")
                else:
                    await self.return_(transfer_id, "tick")
            except Refused as error:
                if error.refusal.code in TRANSIENT:
                    raise
                retry_at[transfer_id] = now_ns + SETTLE_RETRY_S * NS_PER_S
                logger.warning(
                    orjson.dumps(
                        {
                            "event": "risk_hold_not_settled",
                            "transfer_id": decision["id"],
                            "error": str(error),
                        }
                    ).decode()
                )

    async def rebuild_counters(self, limit: int = REBUILD_POSTINGS_MAX) -> int:
        """Rebuild the kernel's counters from the transfer log, once the engine runs and
        before the server is ready (`Bank.serve` calls it after the openings): the
        counters start empty (`clear`), then the newest `limit` records of the log
        window (the retention: a day by default) are fed to the kernel in order, one
        call per second of their timestamps (`replay_ranges`, `replay_log`: the same
        code the simulator's failovers run). What the log cannot tell is not rebuilt:
        the device and IP of each posting (device and IP velocity, first-seen devices
        start empty) and velocity or history beyond the log window. Verdicts of the
        replay are ignored (a challenge counts as met: only a posting the rules would
        now block is left uncounted). Returns the postings fed."""
        self.kernel.clear()
        tail, end = await self.core.read(lambda ledger: (ledger.log_tail, ledger.log_count))
        fed = 0
        for first, stop in replay_ranges(tail, end, limit):
            records = await self.core.read(functools.partial(_log_records, first, stop))
            fed += replay_log(self.kernel, records, stop - first, self._replay_rows, self._out)
        logger.info(orjson.dumps({"event": "risk_counters_rebuilt", "postings": fed}).decode())
        return fed

    def _replay_rows(self, records: bytes, count: int, now_s: int) -> bytearray:
        """The CONTEXT rows of logged records (`replay_log`'s context builder): the debit
        holder's keys, the credit account as the counterparty, no device or IP."""
        return self.context_rows(_REPLAY, records, count, NO_CONTEXT, "", True, now_s)

    def on_state_loaded(self, state: Mapping[bytes, bytes]) -> None:
        """Rebuild the decisions (and the holds still held) from the recovered state,
        each time the store opens (`Lifecycle.on_state_loaded`); the kernel's holder
        entries (a cache of that state) are dropped."""
        self.kernel.clear_holders()
        self.records.clear()
        self._reusable.clear()
        self._reusable_lo.clear()
        self.held.clear()
        self._retry_at.clear()
        decisions = [
            (orjson.loads(value), value)
            for key, value in state.items()
            if key.startswith(DECISION_PREFIX) and value is not None
        ]
        decisions.sort(key=lambda pair: pair[0]["at_ns"])
        for decision, raw in decisions:
            self._index(decision, raw)

    # --- reads --------------------------------------------------------------------

    def decision(self, transfer_id: int) -> dict[str, Any]:
        """The decision recorded for `transfer_id`; RISK_DECISION_NOT_FOUND if none (no
        rule fired on it, or no such transfer)."""
        decision = self.records.get(transfer_id)
        if decision is None:
            raise refused(Code.RISK_DECISION_NOT_FOUND, f"{transfer_id:032x}")
        return dict(decision)

    def decisions(
        self, outcome: str | None = None, since_ns: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Recorded decisions at or after `since_ns` (of `outcome`, a name: "allow",
        "challenge", ...), oldest first, at most `limit`."""
        found = []
        for decision in self.records.values():
            if decision["at_ns"] < since_ns:
                continue
            if outcome is not None and decision["outcome"] != outcome:
                continue
            found.append(dict(decision))
        found.sort(key=lambda decision: decision["at_ns"])
        return found[:limit]

    def reports(self, day: datetime.date) -> list[dict[str, Any]]:
        """The large-value reports of business day `day` (decisions with `report` whose
        posting was not refused), oldest first."""
        number = (day - EPOCH_DATE).days
        business_day = self.core.rules.business_day
        return [
            dict(decision)
            for decision in sorted(self.records.values(), key=lambda d: d["at_ns"])
            if decision["report"]
            and decision["state"] not in (REFUSED, FAILED)
            and business_day(decision["at_ns"]) == number
        ]

    def stats(self) -> dict[str, int]:
        """Counts since start for /metrics and the load-test report: `screened`
        postings, `fired`, per outcome name (`allow`, `challenge`, `delay`, `review`,
        `block`: decisions recorded), `challenge_met`, `reports`, `reused` (retries
        that met a decision), `released`, `returned`, `held` (now), `decisions` (in
        memory), `rules`, `version`, `kernel_entries`, `kernel_bytes`."""
        counts = self.counts
        return {
            "screened": counts.screened,
            "fired": counts.fired,
            **counts.outcomes,
            "challenge_met": counts.challenge_met,
            "reports": counts.reports,
            "reused": counts.reused,
            "released": counts.released,
            "returned": counts.returned,
            "held": len(self.held),
            "decisions": len(self.records),
            "rules": len(self.rules.rules),
            "version": self.rules.version,
            "kernel_entries": self.kernel.entries(),
            "kernel_bytes": self.kernel.memory_bytes(),
        }


ReplayRows = Callable[[bytes, int, int], bytes | bytearray]
"""A context builder for `replay_log`: (records, count, now_s) -> `count` CONTEXT rows."""


def replay_ranges(tail: int, end: int, limit: int = REBUILD_POSTINGS_MAX) -> list[tuple[int, int]]:
    """The (first, stop) ranges of log positions a counter rebuild feeds, oldest first:
    the newest `limit` records of the log window [tail, end), in chunks of at most
    BATCH_SIZE_MAX (a kernel call's size)."""
    start = max(tail, end - limit)
    return [
        (first, min(first + BATCH_SIZE_MAX, end)) for first in range(start, end, BATCH_SIZE_MAX)
    ]


def replay_log(
    kernel: Kernel, records: bytes, count: int, context_rows: ReplayRows, out: bytearray
) -> int:
    """Feed `count` logged transfer records (in log order) to `kernel`, one `screen` call
    per second of their timestamps (each posting counted at its own time): the rebuild
    of the counters after a restart or a failover (`Risk.rebuild_counters`, and the
    simulator's failovers, sim/risk.py). `context_rows` builds the rows from what the
    log tells (the debit holder, the counterparty, the local time); what it cannot tell
    is set here, for every caller alike: no device and no IP (device and IP counters
    and first-seen devices are not rebuilt), and a second factor presented (a replayed
    challenge counts as met: only a posting the rules would now block stays uncounted).
    Verdicts are ignored. `out` holds at least `count` VERDICT rows. Returns `count`."""
    words = memoryview(records).cast("Q")
    seconds = [ns // NS_PER_S for ns in words[9 : count * WORDS_PER_TRANSFER : 16]]
    begin = 0
    for index in range(1, count + 1):
        if index < count and seconds[index] == seconds[begin]:
            continue
        chunk = records[begin * TRANSFER_SIZE : index * TRANSFER_SIZE]
        size = index - begin
        rows = bytearray(context_rows(chunk, size, seconds[begin]))
        with memoryview(rows).cast("Q") as words_of_rows:  # no device, no ip
            words_of_rows[1::WORDS_PER_CONTEXT] = _repeated(0, size)
            words_of_rows[2::WORDS_PER_CONTEXT] = _repeated(0, size)
        rows[SECOND_FACTOR_OFFSET :: CONTEXT.size] = b"\x01" * size  # a factor presented
        kernel.screen(chunk, bytes(rows), size, seconds[begin], out)
        begin = index
    return count


def _log_records(start: int, stop: int, ledger: Any) -> bytes:
    records: bytes = ledger.log_records(start, stop)
    return records


def _code_name(code: int) -> str:
    try:
        return TransferCode(code).name.lower()
    except ValueError:
        return str(code)


def _code_number(name: str) -> int:
    return int(TransferCode[name.upper()]) if not name.isdigit() else int(name)
