"""The bank behind the routes: engine, journal, channel state, and every operation.

`Bank.serve` brings the core up in the order recovery needs (journal open
and torn-tail repair, ledger rebuilt from snapshot + journal, channel state
replayed, engine started, the bank's internal accounts ensured, account
openings whose ledger half was lost in a crash completed) and only then
sets `ready`. Until then `/readyz` says 503 and every `/v1` route answers 503.

Every operation takes a `Context` (the authenticated channel, the validated
body, the Idempotency-Key) and returns a `Reply` or raises a `Problem`.
Money movements build exactly one 128-byte transfer (or, for the batch
route, up to 8189) whose id is derived from the channel and the
Idempotency-Key, so a retry, even after a crash, meets the original in the
ledger's own idempotency index and is answered from it.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
import re
import secrets
import struct
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from channels import identity, passwords
from channels.kyc import BuiltinVerifier, Verifier
from channels.metrics import Metrics
from channels.problems import (
    Problem,
    account_create_problem,
    account_update_problem,
    transfer_problem,
)
from channels.registry import ChannelEntry, Registry
from channels.schema import account_id_param, fail, transfer_id_param, transfer_id_text
from channels.state import AccountMeta, Customer, StateStore, account_record, customer_record
from core.engine import (
    Engine,
    EngineFull,
    EngineOverloaded,
    EngineStopped,
    latency_quantile,
    transfer_result,
)
from core.engine import Request as EngineRequest
from core.journal import Journal
from core.journal_store import JournalStore
from core.replay import recover_ledger
from ledger.types import (
    ACCOUNT_INPUT_STRUCT,
    ACCOUNT_STRUCT,
    SLOT_NONE,
    TRANSFER_SIZE,
    TRANSFER_STRUCT,
    AccountFlags,
    AccountKind,
    AccountStatus,
    AccountUpdateResult,
    CreateAccountResult,
    CreateTransferResult,
    PendingState,
    TransferCode,
    TransferFlags,
    split_id,
)
from limits.calendar import year_of_day
from limits.reference import counters_effective
from limits.rules import RuleSet

# The JSON batch route's item loop in C, unless TALLY_KERNEL=reference asks for the
# plain-Python twin (chosen explicitly, never as a fallback on a missing build).
http_fast: ModuleType | None = None
if os.environ.get("TALLY_KERNEL", "kernel") != "reference":
    from cext import http_fast

logger = logging.getLogger("tally.channels")

R = CreateTransferResult
LEDGER_CNY = 156
NS_PER_S = 1_000_000_000
EPOCH_DATE = datetime.date(2000, 1, 1)

# The bank's own accounts, created at start if missing (ids below 2**16 are the bank's).
CASH_VAULT_ID = 1
CLEARING_ID = 2
SETTLEMENT_ID = 3
INTERNAL_PRODUCT = 7
INTERNAL_ACCOUNTS = (
    (CASH_VAULT_ID, AccountKind.INTERNAL_CASH),
    (CLEARING_ID, AccountKind.INTERNAL_CLEARING),
    (SETTLEMENT_ID, AccountKind.INTERNAL_SETTLEMENT),
)
PRODUCT_OF_CLASS = {1: 1, 2: 2, 3: 3}
CLASS_NAMES = {1: "class_i", 2: "class_ii", 3: "class_iii"}
CLASS_OF_NAME = {name: number for number, name in CLASS_NAMES.items()}
# Bank identification numbers of the cards and account numbers this bank issues
# (development values: a real bank uses the BINs assigned to it).
BIN_OF_CLASS = {1: "623501", 2: "623502", 3: "623503"}
ACCOUNTS_PER_CLASS_MAX = {1: 1, 2: 5, 3: 5}
IDEMPOTENCY_KEY_LENGTH_MAX = 255
REPLAY_HEADER = (b"idempotent-replayed", b"true")
CASH_CHANNEL_KINDS = ("counter", "atm")


@dataclass(slots=True)
class Settings:
    data_dir: str
    account_capacity: int = 1 << 20
    transfer_capacity: int = 1 << 22
    queue_size: int = 65536
    linger_s: float = 0.001
    token_ttl_s: int = 300
    password_failures_max: int = 5
    scrypt_n: int = passwords.SCRYPT_N_DEFAULT
    minimum_age: int = 16
    nonce_window_s: int = 300
    journal_delay_s: float = 0.0  # tests only: a slow disk, to provoke overload
    snapshot_every_entries: int = 0
    prefault: bool = False
    store_dsn: str | None = None  # postgresql://...: the PostgreSQL store, not the journal
    # How long a posted transfer stays in the log (and a retry meets it by id) before it
    # may be evicted to make room: a log of `transfer_capacity` must hold this much.
    retention_s: float = 86_400.0


@dataclass(slots=True)
class Context:
    channel: ChannelEntry
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    idempotency_key: str
    token: str
    content_type: str = "application/json"


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"application/json"


def engine_problem(error: EngineOverloaded | EngineFull | EngineStopped) -> Problem:
    """An engine refusal as the 503 a client sees."""
    if isinstance(error, EngineOverloaded):
        retry = max(1, math.ceil(error.retry_after_s))
        return Problem(
            503,
            "overloaded",
            "The engine's queue is full",
            "retry after the time in Retry-After",
            headers=[(b"retry-after", str(retry).encode())],
        )
    return Problem(
        503,
        "unavailable",
        "The ledger cannot take this now",
        str(error),
        headers=[(b"retry-after", b"1")],
    )


def json_reply(status: int, value: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    return Reply(status, orjson.dumps(value), headers or [])


@dataclass(slots=True)
class Token:
    account_id: int
    channel: str
    expires_ns: int


class SlowStore(JournalStore):
    """Tests only: a journal whose every group first waits (a slow disk)."""

    def __init__(self, journal: Journal, delay_s: float) -> None:
        super().__init__(journal)
        self.delay_s = delay_s

    async def finish_group(self, pending: list[Any]) -> None:
        await anyio.to_thread.run_sync(time.sleep, self.delay_s)
        await super().finish_group(pending)


def derive_transfer_id(channel_ledger_id: int, key: str, index: int) -> int:
    """The transfer id of item `index` of the operation sent with Idempotency-Key `key`.

    First 16 bytes of SHA-256 over the channel, the key and the index: the
    same request always names the same transfer, on any server, after any
    crash; two channels never collide on the same key.
    """
    return int.from_bytes(derive_transfer_id_packed(channel_ledger_id, key, index), "little")


def derive_transfer_id_packed(channel_ledger_id: int, key: str, index: int) -> bytes:
    """`derive_transfer_id` as the 16 little-endian bytes a transfer record starts with."""
    packed = hashlib.sha256(
        b"tally-transfer\0%d\0%s\0%d" % (channel_ledger_id, key.encode(), index)
    ).digest()[:16]
    assert packed != _ID_ZERO and packed != _ID_MAX_PACKED
    return packed


def transfer_id_prefix(channel_ledger_id: int, key: str) -> bytes:
    """What SHA-256 hashes before the item's decimal index (see `derive_transfer_id`)."""
    return b"tally-transfer\0%d\0%s\0" % (channel_ledger_id, key.encode())


def derive_transfer_ids_packed(channel_ledger_id: int, key: str, count: int) -> list[bytes]:
    """The 16-byte little-endian ids of items 0..count-1 (the batch route's fast path)."""
    prefix = hashlib.sha256(transfer_id_prefix(channel_ledger_id, key))
    ids = []
    for index in range(count):
        hasher = prefix.copy()
        hasher.update(b"%d" % index)
        ids.append(hasher.digest()[:16])
    return ids


def date_of_day(day: int) -> str:
    return (EPOCH_DATE + datetime.timedelta(days=day)).isoformat()


def money_name(code: int) -> str:
    try:
        return TransferCode(code).name.lower()
    except ValueError:
        return str(code)


class RateLimiter:
    """A token bucket per channel: `rate_per_s` sustained, `burst` at once."""

    __slots__ = ("burst", "last_s", "rate_per_s", "tokens")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last_s = time.monotonic()

    def take(self, now_s: float) -> float:
        """0 if the request may go, else the seconds until a token is due."""
        if self.rate_per_s <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now_s - self.last_s) * self.rate_per_s)
        self.last_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class Bank:
    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        registry: Registry,
        *,
        verifier: Verifier | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.registry = registry
        self.verifier = verifier or BuiltinVerifier(settings.minimum_age)
        self.metrics = metrics or Metrics()
        self.engine: Engine | None = None
        self.journal: Journal | None = None
        self.state: StateStore | None = None
        self.ready = False
        self.failed: str | None = None
        self.in_flight: set[tuple[int, str]] = set()
        self.tokens: dict[str, Token] = {}
        self.limiters = {
            name: RateLimiter(entry.rate_per_s, entry.burst)
            for name, entry in registry.channels.items()
        }
        self.recovery_info: dict[str, Any] = {}
        self._timezone = rules.timezone
        self._register_collectors()

    # --- lifecycle ----------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Recover, start the engine, then run until cancelled. Ready once recovered."""
        task_status.started()
        if self.settings.store_dsn:
            await self._serve_pg(self.settings.store_dsn)
            return
        settings = self.settings
        started = time.perf_counter()
        try:
            journal, recovered = await anyio.to_thread.run_sync(self._recover_sync)
        except Exception as error:
            self.failed = f"recovery failed: {error}"
            logger.error(orjson.dumps({"event": "recovery_failed", "error": str(error)}).decode())
            raise
        self.journal = journal
        store: Any = (
            journal
            if settings.journal_delay_s <= 0
            else SlowStore(journal, settings.journal_delay_s)
        )
        engine = Engine(
            recovered.ledger,
            store,
            self.rules,
            queue_size=settings.queue_size,
            linger_s=settings.linger_s,
            retention_s=settings.retention_s,
            snapshot_directory=settings.data_dir if settings.snapshot_every_entries else None,
            snapshot_every_entries=settings.snapshot_every_entries,
        )
        try:
            await self._run_engine(
                engine,
                started,
                {
                    "records_replayed": recovered.records_replayed,
                    "transfers_replayed": recovered.transfers_replayed,
                    "snapshot": recovered.snapshot_path,
                },
            )
        finally:
            self.ready = False
            if self.state is not None:
                with anyio.CancelScope(shield=True):
                    await self.state.flush()
                self.state.close()
            journal.close()

    async def _run_engine(self, engine: Engine, started: float, info: dict[str, Any]) -> None:
        """Run `engine` until cancelled: the bank's own accounts, unfinished openings, then
        ready (with `info` on how the state was recovered) and the housekeeping loop."""
        async with anyio.create_task_group() as task_group:
            await task_group.start(engine.serve)
            self.engine = engine
            await self._ensure_internal_accounts()
            await self._complete_openings()
            self.recovery_info = {**info, "seconds": round(time.perf_counter() - started, 3)}
            self.ready = True
            logger.info(orjson.dumps({"event": "ready", **self.recovery_info}).decode())
            task_group.start_soon(self._serve_housekeeping)
            await anyio.sleep_forever()

    async def _serve_pg(self, dsn: str) -> None:
        """`serve` on the PostgreSQL store (core/pg_store.py); the channel state stays in
        the data directory. A store that cannot be reached at start is retried (503 until
        then); a store that fails later stops the engine: every route answers 503 with
        Retry-After and /readyz says why, until the process is restarted."""
        from core.pg_store import PgStoreError, open_pg_store

        settings = self.settings
        started = time.perf_counter()
        self.state = await anyio.to_thread.run_sync(
            lambda: StateStore.open(
                settings.data_dir,
                now_s=time.time_ns() // NS_PER_S,
                nonce_window_s=settings.nonce_window_s,
            )
        )
        opened = None
        try:
            while opened is None:
                try:
                    opened = await open_pg_store(
                        dsn,
                        account_capacity=settings.account_capacity,
                        transfer_capacity=settings.transfer_capacity,
                        owner=f"tally serve pid {os.getpid()}",
                    )
                except PgStoreError as error:
                    self.failed = f"PostgreSQL store: {error}"
                    logger.error(
                        orjson.dumps({"event": "store_unavailable", "error": str(error)}).decode()
                    )
                    await anyio.sleep(1)
            self.failed = None
            if settings.prefault and hasattr(opened.ledger, "prefault"):
                await anyio.to_thread.run_sync(opened.ledger.prefault)
            engine = Engine(
                opened.ledger,
                opened.store,
                self.rules,
                queue_size=settings.queue_size,
                linger_s=settings.linger_s,
                retention_s=settings.retention_s,
            )
            try:
                await self._run_engine(
                    engine,
                    started,
                    {
                        "store": "postgresql",
                        "epoch": opened.store.epoch,
                        "entries_replayed": opened.store.last_seq,
                    },
                )
            except* PgStoreError as group:
                failure = str(group.exceptions[0])
                self.ready = False
                self.failed = f"PostgreSQL store failed, restart needed: {failure}"
                logger.error(orjson.dumps({"event": "store_failed", "error": failure}).decode())
                await anyio.sleep_forever()
        finally:
            self.ready = False
            with anyio.CancelScope(shield=True):
                if self.state is not None:
                    await self.state.flush()
                    self.state.close()
                if opened is not None:
                    await opened.store.close()

    def _recover_sync(self) -> tuple[Journal, Any]:
        settings = self.settings
        journal = Journal.open(settings.data_dir)
        try:
            recovered = recover_ledger(
                settings.data_dir, settings.account_capacity, settings.transfer_capacity
            )
            if settings.prefault and hasattr(recovered.ledger, "prefault"):
                recovered.ledger.prefault()
            self.state = StateStore.open(
                settings.data_dir,
                now_s=time.time_ns() // NS_PER_S,
                nonce_window_s=settings.nonce_window_s,
            )
        except BaseException:
            journal.close()
            raise
        return journal, recovered

    async def _serve_housekeeping(self) -> None:
        """Write staged nonces, forget expired nonces and tokens."""
        state = self.state
        assert state is not None
        ticks = 0
        while True:
            await anyio.sleep(0.05)
            await state.flush()
            ticks += 1
            if ticks % 200 == 0:
                now_ns = time.time_ns()
                state.prune_nonces(now_ns // NS_PER_S, self.settings.nonce_window_s)
                for token, entry in list(self.tokens.items()):
                    if entry.expires_ns <= now_ns:
                        del self.tokens[token]

    async def _ensure_internal_accounts(self) -> None:
        batch = b"".join(
            ACCOUNT_INPUT_STRUCT.pack(
                *split_id(account_id), 0, 0, LEDGER_CNY, kind, 0, 0, INTERNAL_PRODUCT
            )
            for account_id, kind in INTERNAL_ACCOUNTS
        )
        results = await self._engine().submit_accounts(batch)
        for (account_id, _), code in zip(INTERNAL_ACCOUNTS, results, strict=True):
            if code not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
                raise RuntimeError(
                    f"internal account {account_id}: {CreateAccountResult(code).name.lower()}"
                )

    async def _complete_openings(self) -> None:
        """Create in the ledger any account whose opening was recorded but not posted."""
        state = self._state()
        metas = [meta for meta in state.accounts.values() if not meta.closed]
        if not metas:
            return
        ids = [meta.account_id for meta in metas]
        missing = await self.read(
            lambda ledger: {i for i in ids if ledger.lookup_account(i) is None}
        )
        for meta in metas:
            if meta.account_id in missing:
                code = await self._create_ledger_account(meta)
                logger.info(
                    orjson.dumps(
                        {
                            "event": "opening_completed",
                            "account_id": str(meta.account_id),
                            "result": code,
                        }
                    ).decode()
                )

    def _register_collectors(self) -> None:
        metrics = self.metrics

        def queue() -> list[tuple[str, float]]:
            return [("", float(self.engine.queue_depth() if self.engine else 0))]

        def engine_counters() -> list[tuple[str, float]]:
            if self.engine is None:
                return []
            m = self.engine.metrics
            return [
                ('kind="batches"', m.batches),
                ('kind="transfers"', m.transfers),
                ('kind="requests"', m.requests),
                ('kind="overloaded"', m.overloaded),
            ]

        def batch_sizes() -> list[tuple[str, float]]:
            if self.engine is None:
                return []
            samples = [float(size) for size in self.engine.metrics.batch_sizes]
            return [
                (f'quantile="{q}"', latency_quantile(samples, q) if samples else math.nan)
                for q in (0.5, 0.9, 0.99)
            ] + [("_count", float(self.engine.metrics.batches))]

        def fsync() -> list[tuple[str, float]]:
            if self.journal is None:
                return []
            samples = list(self.journal.fsync_latency_s)
            stats = self.journal.stats
            return [
                (f'quantile="{q}"', latency_quantile(samples, q) if samples else math.nan)
                for q in (0.5, 0.9, 0.99)
            ] + [("_sum", stats.fsync_seconds_total), ("_count", float(stats.append_count))]

        def durable() -> list[tuple[str, float]]:
            if self.engine is None:
                return []
            samples = self.engine.metrics.durable_latency_s
            return [
                (f'quantile="{q}"', latency_quantile(samples, q) if samples else math.nan)
                for q in (0.5, 0.9, 0.99)
            ]

        def ready() -> list[tuple[str, float]]:
            return [("", 1.0 if self.ready else 0.0)]

        metrics.add_collector(
            "tally_ready", "gauge: 1 once recovery is done and the engine runs.", ready
        )
        metrics.add_collector(
            "tally_engine_queue_depth", "gauge: Requests waiting in the engine queue.", queue
        )
        metrics.add_collector(
            "tally_engine_total",
            "counter: Engine batches, transfers, requests, overloads.",
            engine_counters,
        )
        metrics.add_collector(
            "tally_engine_batch_size",
            "summary: Transfers per engine batch (recent batches).",
            batch_sizes,
        )
        metrics.add_collector(
            "tally_journal_fsync_seconds", "summary: Journal write+fdatasync time per group.", fsync
        )
        metrics.add_collector(
            "tally_engine_durable_seconds",
            "summary: Applied-to-durable time per group (recent).",
            durable,
        )

    # --- helpers ------------------------------------------------------------------

    def _engine(self) -> Engine:
        if self.engine is None or (not self.ready and self.engine is None):
            raise Problem(
                503, "not-ready", "The server is still recovering", headers=[(b"retry-after", b"1")]
            )
        return self.engine

    def _state(self) -> StateStore:
        assert self.state is not None
        return self.state

    def today(self, now_ns: int | None = None) -> int:
        return self.rules.business_day(time.time_ns() if now_ns is None else now_ns)

    async def call_engine(self, function: Callable[..., Any], *args: Any) -> Any:
        """An engine call; engine refusals become 503s.

        No per-request deadline here, on purpose: the engine answers every
        request it accepted (its durable stage is shielded and a full queue is
        refused at once with 503), so a deadline could only turn a wait on the
        disk into an "outcome unknown" that the client's own timeout already
        gives, and a cancel scope per request costs about 15% of this layer's
        CPU on the single-transfer path (measured with `tally bench http`).
        """
        try:
            return await function(*args)
        except (EngineOverloaded, EngineFull, EngineStopped) as error:
            raise engine_problem(error) from None

    async def read(self, function: Callable[[Any], Any]) -> Any:
        """Run `function(ledger)` in the engine on a durable state.

        The engine runs reads inside its writer task, where an exception would
        stop the engine for every caller; a read's defect is carried back here
        and raised in this request alone (a logged 500), never in the engine.
        """

        def guarded(ledger: Any) -> tuple[bool, Any]:
            try:
                return True, function(ledger)
            except Exception as error:
                return False, error

        ok, value = await self.call_engine(self._engine().read, guarded)
        if not ok:
            raise value
        return value

    def channel_allowed(self, ctx: Context, kinds: Sequence[str], what: str) -> None:
        if ctx.channel.kind not in kinds:
            raise Problem(
                403,
                "channel-kind-not-allowed",
                f"{what} is only available at {' or '.join(kinds)} channels",
                f"channel {ctx.channel.name} is of kind {ctx.channel.kind}",
            )

    def meta_of(self, account_id: int) -> AccountMeta:
        meta = self._state().accounts.get(account_id)
        if meta is None:
            raise Problem(
                404, "account-not-found", "No customer account with this id", str(account_id)
            )
        return meta

    # --- customers ----------------------------------------------------------------

    async def register_customer(self, ctx: Context) -> Reply:
        body = ctx.body
        parsed = identity.parse_resident_id(body["id_number"])
        if isinstance(parsed, str):
            raise Problem(
                422,
                "invalid-resident-id",
                "The resident ID number is not valid",
                parsed,
                errors=[{"pointer": "/id_number", "detail": parsed}],
            )
        state = self._state()
        existing = state.customer_by_id_number.get(parsed.number)
        if existing is not None:
            raise Problem(
                409,
                "customer-exists",
                "A customer with this ID number is registered",
                customer_id=existing,
            )
        now_ns = time.time_ns()
        today = datetime.datetime.fromtimestamp(now_ns / NS_PER_S, self._timezone).date()
        verdict = self.verifier.verify_customer(body["name"], parsed, body["mobile"], today)
        customer = Customer(
            "c" + secrets.token_hex(10),
            body["name"],
            parsed.number,
            body["mobile"],
            verdict.as_record(),
            now_ns,
        )
        await state.commit([customer_record(customer)])
        logger.info(
            orjson.dumps(
                {
                    "event": "customer_registered",
                    "customer_id": customer.customer_id,
                    "id_number": identity.mask_resident_id(parsed.number),
                    "kyc": verdict.status,
                }
            ).decode()
        )
        return json_reply(201, self.customer_view(state.customers[customer.customer_id]))

    def customer_view(self, customer: Customer) -> dict[str, Any]:
        return {
            "customer_id": customer.customer_id,
            "name": customer.name,
            "id_number_masked": identity.mask_resident_id(customer.id_number),
            "mobile_masked": identity.mask_mobile(customer.mobile),
            "kyc": customer.kyc,
            "accounts": [
                {
                    "account_id": str(account_id),
                    "class": CLASS_NAMES[self._state().accounts[account_id].account_class],
                    "closed": self._state().accounts[account_id].closed,
                }
                for account_id in customer.accounts
            ],
            "created_at": _rfc3339(customer.created_ns),
        }

    def customer_of(self, customer_id: str) -> Customer:
        customer = self._state().customers.get(customer_id)
        if customer is None:
            raise Problem(404, "customer-not-found", "No customer with this id", customer_id)
        return customer

    async def read_customer(self, ctx: Context) -> Reply:
        return json_reply(200, self.customer_view(self.customer_of(ctx.params["customer_id"])))

    # --- accounts -----------------------------------------------------------------

    def _new_account_number(self, account_class: int) -> int:
        state = self._state()
        while True:
            partial = BIN_OF_CLASS[account_class] + f"{secrets.randbelow(10**12):012d}"
            number = int(partial + identity.luhn_check_digit(partial))
            if number not in state.accounts:
                return number

    async def open_account(self, ctx: Context) -> Reply:
        body = ctx.body
        customer = self.customer_of(ctx.params["customer_id"])
        account_class = CLASS_OF_NAME[body["class"]]
        if account_class == 1:
            self.channel_allowed(ctx, ("counter",), "Opening a Class I account (face to face)")
            if "bound_card" in body:
                raise fail("/bound_card", "a Class I account binds no card")
        elif "bound_card" not in body:
            raise fail("/bound_card", "missing required field (Class II and III bind a card)")
        if customer.kyc["status"] != "verified":
            raise Problem(
                409,
                "kyc-not-verified",
                "The customer's KYC is not verified",
                f"KYC status is {customer.kyc['status']}",
            )
        # The password is hashed before the class count is checked: from the count to the
        # staged record below there is no await, so concurrent openings for one customer
        # cannot all pass the PBoC per-class limit.
        hashed = await anyio.to_thread.run_sync(
            passwords.hash_password, body["password"], self.settings.scrypt_n
        )
        state = self._state()
        open_count = sum(
            1
            for a in customer.accounts
            if state.accounts[a].account_class == account_class and not state.accounts[a].closed
        )
        if open_count >= ACCOUNTS_PER_CLASS_MAX[account_class]:
            raise Problem(
                409,
                "account-class-limit",
                f"The customer already holds {open_count} open {CLASS_NAMES[account_class]} "
                "account(s) at this bank",
                f"PBoC allows at most {ACCOUNTS_PER_CLASS_MAX[account_class]}",
            )
        bound: dict[str, Any] | None = None
        if account_class != 1:
            bound = self._check_binding(customer, body["bound_card"])
        account_id = self._new_account_number(account_class)
        meta = AccountMeta(account_id, customer.customer_id, account_class, bound, time.time_ns())
        from channels.state import password_record

        await state.commit([account_record(meta), password_record(account_id, hashed)])
        try:
            code = await self._create_ledger_account(meta)
        except Problem:
            # The engine refused (503): the ledger has no such account, so the opening is
            # recorded as closed and does not hold one of the customer's class slots.
            meta.closed = True
            await state.commit([account_record(meta)])
            raise
        if code not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
            meta.closed = True
            await state.commit([account_record(meta)])
            raise account_create_problem(code)
        logger.info(
            orjson.dumps(
                {
                    "event": "account_opened",
                    "account_id": str(account_id),
                    "class": CLASS_NAMES[account_class],
                    "customer_id": customer.customer_id,
                    "bound_card": identity.mask_card(bound["card_number"]) if bound else None,
                }
            ).decode()
        )
        return json_reply(201, await self._account_view(account_id, ctx.channel))

    def _check_binding(self, customer: Customer, card: dict[str, Any]) -> dict[str, Any]:
        number = card["card_number"]
        problem = identity.card_number_problem(number)
        if problem is not None:
            raise Problem(
                422,
                "invalid-card-number",
                "The bound card number is not valid",
                problem,
                errors=[{"pointer": "/bound_card/card_number", "detail": problem}],
            )
        mismatches = []
        if card["holder_name"] != customer.name:
            mismatches.append("holder_name")
        if card["holder_id_number"] != customer.id_number:
            mismatches.append("holder_id_number")
        if card["reserved_mobile"] != customer.mobile:
            mismatches.append("reserved_mobile")
        if mismatches:
            raise Problem(
                422,
                "bound-card-not-same-name",
                "The bound card must be the customer's own (same name, ID number, mobile)",
                "differs: " + ", ".join(mismatches),
                fields=mismatches,
            )
        state = self._state()
        own = int(number) if number.startswith(BIN_OF_CLASS[1]) else 0
        if own:
            meta = state.accounts.get(own)
            if meta is None or meta.account_class != 1 or meta.closed:
                raise Problem(
                    422,
                    "bound-card-not-found",
                    "No open Class I card of this bank has this number",
                    identity.mask_card(number),
                )
            if meta.customer_id != customer.customer_id:
                raise Problem(
                    422,
                    "bound-card-not-same-name",
                    "The bound card belongs to another customer",
                )
            return {
                "kind": "internal",
                "card_number": number,
                "account_id": str(own),
                "card_type": "class_i_debit",
                "checks": ["luhn", "same_customer"],
            }
        return {
            "kind": "external",
            "card_number": number,
            "card_type": card["card_type"],
            "checks": ["luhn", "holder_name", "holder_id_number", "reserved_mobile"],
            "not_checked": ["issuer_card_verification"],
        }

    async def _create_ledger_account(self, meta: AccountMeta) -> int:
        flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        bound_id = 0
        if meta.account_class == 1:
            flags |= AccountFlags.FACE_TO_FACE_VERIFIED
        elif meta.bound is not None and meta.bound["kind"] == "internal":
            bound_id = int(meta.bound["account_id"])
        else:
            flags |= AccountFlags.BOUND_EXTERNAL
        record = ACCOUNT_INPUT_STRUCT.pack(
            *split_id(meta.account_id),
            *split_id(bound_id),
            LEDGER_CNY,
            meta.account_class,
            AccountStatus.ACTIVE,
            flags,
            PRODUCT_OF_CLASS[meta.account_class],
        )
        results = await self.call_engine(self._engine().submit_accounts, record)
        return int(results[0])

    async def _account_view(self, account_id: int, channel: ChannelEntry) -> dict[str, Any]:
        today = self.today()

        def read(ledger: Any) -> Any:
            raw = ledger.lookup_account(account_id)
            if raw is None:
                return None
            return (
                raw,
                ledger.account_pending(account_id),
                ledger.channel_used(account_id, channel.ledger_id, today),
            )

        found = await self.read(read)
        if found is None:
            raise Problem(404, "account-not-found", "No account with this id", str(account_id))
        raw, pending, channel_used = found
        (
            _,
            _,
            debits_posted,
            credits_posted,
            inflow_daily,
            inflow_yearly,
            outflow_daily,
            outflow_yearly,
            bound_slot,
            _ledger,
            kind,
            status,
            flags,
            product_id,
            counters_day,
            _internal,
        ) = ACCOUNT_STRUCT.unpack(raw)
        debits_pending, credits_pending = pending
        product = self.rules.products.get(product_id)
        floor = product.balance_floor_minor if product else 0
        balance = credits_posted - debits_posted
        view: dict[str, Any] = {
            "account_id": str(account_id),
            "kind": _kind_name(kind),
            "status": AccountStatus(status).name.lower(),
            "currency": "CNY",
            "balance_minor": balance,
            "pending_debits_minor": debits_pending,
            "pending_credits_minor": credits_pending,
            "available_minor": balance - debits_pending - floor
            if flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
            else None,
            "face_to_face_verified": bool(flags & AccountFlags.FACE_TO_FACE_VERIFIED),
            "non_bound_inflow_enabled": bool(flags & AccountFlags.NON_BOUND_INFLOW_ENABLED),
            "business_day": date_of_day(today),
            "quota": None,
            "channel_quota": None,
            "customer_id": None,
            "bound_card": None,
        }
        if product is not None and product.kind.value in ("class_ii", "class_iii"):
            effective = (
                counters_effective(
                    [inflow_daily, inflow_yearly, outflow_daily, outflow_yearly],
                    counters_day,
                    max(today, counters_day),
                )
                if counters_day <= today
                else [inflow_daily, inflow_yearly, outflow_daily, outflow_yearly]
            )
            view["quota"] = {
                "inflow": {
                    "daily": _bucket(product.inflow_daily_minor, effective[0]),
                    "yearly": _bucket(product.inflow_yearly_minor, effective[1]),
                },
                "outflow": {
                    "daily": _bucket(product.outflow_daily_minor, effective[2]),
                    "yearly": _bucket(product.outflow_yearly_minor, effective[3]),
                },
                "year": year_of_day(today),
                "balance_cap_minor": product.balance_cap_minor or None,
            }
        ruled = self.rules.channels.get(channel.ledger_id)
        if ruled is not None and ruled.daily_cap_minor and kind <= AccountKind.LOAN:
            view["channel_quota"] = {
                "channel": channel.name,
                "daily": _bucket(ruled.daily_cap_minor, channel_used),
                "transfer_cap_minor": ruled.transfer_cap_minor or None,
            }
        meta = self._state().accounts.get(account_id)
        if meta is not None:
            view["customer_id"] = meta.customer_id
            if meta.bound is not None:
                view["bound_card"] = {
                    "card_number_masked": identity.mask_card(meta.bound["card_number"]),
                    "kind": meta.bound["kind"],
                    "card_type": meta.bound["card_type"],
                }
        elif bound_slot != SLOT_NONE:
            view["bound_card"] = None
        return view

    async def read_account(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        return json_reply(200, await self._account_view(account_id, ctx.channel))

    async def read_history(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        limit_text = ctx.query.get("limit", "50")
        cursor_text = ctx.query.get("cursor", "")
        if not _LIMIT_RE.fullmatch(limit_text) or not 1 <= int(limit_text) <= 500:
            raise fail("/limit", "limit must be an integer 1..500")
        if cursor_text and not _CURSOR_RE.fullmatch(cursor_text):
            raise fail("/cursor", "cursor must be the next_cursor of the previous page")
        limit = int(limit_text)
        before = int(cursor_text) if cursor_text else -1

        def read(ledger: Any) -> Any:
            if ledger.lookup_account(account_id) is None:
                return None
            return ledger.account_history(account_id, before, limit)

        page = await self.read(read)
        if page is None:
            raise Problem(404, "account-not-found", "No account with this id", str(account_id))
        items = [transfer_view(record) for _, record in page]
        next_cursor = str(page[-1][0]) if len(page) == limit and page[-1][0] > 0 else None
        return json_reply(
            200, {"account_id": str(account_id), "items": items, "next_cursor": next_cursor}
        )

    async def read_transfer(self, ctx: Context) -> Reply:
        transfer_id = transfer_id_param(ctx.params["transfer_id"])
        record = await self.read(lambda ledger: ledger.lookup_transfer(transfer_id))
        if record is None:
            raise Problem(
                404, "transfer-not-found", "No transfer with this id", ctx.params["transfer_id"]
            )
        return json_reply(200, transfer_view(record))

    # --- passwords, tokens, account changes ----------------------------------------

    async def verify_password(self, account_id: int, password: str) -> None:
        """Check a transaction password; count failures per business day; lock at the max."""
        state = self._state()
        stored = state.passwords.get(account_id)
        if stored is None:
            raise Problem(
                409, "transaction-password-not-set", "The account has no transaction password"
            )
        today = self.today()
        day, failures = state.failures.get(account_id, (today, 0))
        if day != today:
            failures = 0
        maximum = self.settings.password_failures_max
        if failures >= maximum:
            raise self._locked()
        ok = await anyio.to_thread.run_sync(passwords.check_password, password, stored)
        if ok:
            if failures:
                await state.commit(
                    [{"k": "failures", "account": str(account_id), "day": today, "count": 0}]
                )
            return
        failures += 1
        await state.commit(
            [{"k": "failures", "account": str(account_id), "day": today, "count": failures}]
        )
        logger.info(
            orjson.dumps(
                {
                    "event": "password_failed",
                    "account_id": str(account_id),
                    "failures": failures,
                }
            ).decode()
        )
        if failures >= maximum:
            raise self._locked()
        raise Problem(
            403,
            "wrong-transaction-password",
            "The transaction password is wrong",
            attempts_remaining=maximum - failures,
        )

    def _locked(self) -> Problem:
        now = datetime.datetime.now(self._timezone)
        midnight = datetime.datetime.combine(
            now.date() + datetime.timedelta(days=1), datetime.time(), self._timezone
        )
        seconds = max(1, int((midnight - now).total_seconds()))
        return Problem(
            423,
            "transaction-password-locked",
            "Too many wrong transaction passwords today",
            "the lock lifts at the start of the next business day, or at a counter",
            headers=[(b"retry-after", str(seconds).encode())],
        )

    async def authorize_debit(self, ctx: Context, account_id: int) -> None:
        """The customer behind a debit proves it: a live token for this account, or the password."""
        if not self.debit_token_checked(ctx, account_id):
            await self.verify_password(account_id, ctx.body["password"])

    def debit_token_checked(self, ctx: Context, account_id: int) -> bool:
        """`authorize_debit` up to the password: True if a valid token authorized the
        debit, False if the body's password must still be verified; raises the refusals."""
        meta = self._state().accounts.get(account_id)
        if meta is None:
            raise Problem(
                404,
                "account-not-found",
                "No customer account with this id (only customer accounts "
                "can be debited by this operation)",
                str(account_id),
            )
        body = ctx.body
        password = body.get("password") if isinstance(body, dict) else None
        if ctx.token:
            token = self.tokens.get(ctx.token)
            if token is None or token.expires_ns <= time.time_ns():
                raise Problem(
                    401, "transaction-token-invalid", "The transaction token is unknown or expired"
                )
            if token.account_id != account_id or token.channel != ctx.channel.name:
                raise Problem(
                    403,
                    "transaction-token-not-for-account",
                    "The transaction token was issued for another account or channel",
                )
            return True
        if password is None:
            raise Problem(
                401,
                "transaction-authentication-required",
                "This debit needs the transaction password or a transaction token",
                "send `password` in the body or a Tally-Transaction-Token header",
            )
        return False

    async def issue_token(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        self.meta_of(account_id)
        await self.verify_password(account_id, ctx.body["password"])
        ttl = self.settings.token_ttl_s
        token = secrets.token_urlsafe(24)
        expires_ns = time.time_ns() + ttl * NS_PER_S
        self.tokens[token] = Token(account_id, ctx.channel.name, expires_ns)
        return json_reply(
            201,
            {
                "token": token,
                "account_id": str(account_id),
                "expires_in_s": ttl,
                "expires_at": _rfc3339(expires_ns),
            },
        )

    async def set_password(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        self.meta_of(account_id)
        await self.verify_password(account_id, ctx.body["old_password"])
        return await self._store_password(account_id, ctx.body["new_password"])

    async def reset_password(self, ctx: Context) -> Reply:
        self.channel_allowed(ctx, ("counter",), "Resetting a transaction password (face to face)")
        account_id = account_id_param(ctx.params["account_id"])
        meta = self.meta_of(account_id)
        customer = self.customer_of(meta.customer_id)
        if ctx.body["id_number"] != customer.id_number:
            raise Problem(
                422, "identity-mismatch", "The ID number presented is not the account holder's"
            )
        return await self._store_password(account_id, ctx.body["new_password"], reset=True)

    async def _store_password(
        self, account_id: int, password: str, *, reset: bool = False
    ) -> Reply:
        from channels.state import password_record

        hashed = await anyio.to_thread.run_sync(
            passwords.hash_password, password, self.settings.scrypt_n
        )
        records: list[dict[str, Any]] = [password_record(account_id, hashed)]
        if reset:
            records.append(
                {"k": "failures", "account": str(account_id), "day": self.today(), "count": 0}
            )
        await self._state().commit(records)
        for token, entry in list(self.tokens.items()):
            if entry.account_id == account_id:
                del self.tokens[token]
        logger.info(
            orjson.dumps(
                {"event": "password_set", "account_id": str(account_id), "reset": reset}
            ).decode()
        )
        return Reply(204, b"")

    async def _update_flags(
        self, account_id: int, set_flags: int, clear_flags: int = 0, status: int | None = None
    ) -> int:
        raw = await self.read(lambda ledger: ledger.lookup_account(account_id))
        if raw is None:
            raise Problem(404, "account-not-found", "No account with this id", str(account_id))
        fields = ACCOUNT_STRUCT.unpack(raw)
        current_status, current_flags = fields[11], fields[12]
        flags = (current_flags | set_flags) & ~clear_flags
        code = await self.call_engine(
            self._engine().update_account,
            account_id,
            current_status if status is None else status,
            flags,
        )
        if code != AccountUpdateResult.OK:
            raise account_update_problem(code)
        return int(fields[10])

    async def face_to_face(self, ctx: Context) -> Reply:
        self.channel_allowed(ctx, ("counter",), "Face-to-face verification")
        account_id = account_id_param(ctx.params["account_id"])
        meta = self.meta_of(account_id)
        customer = self.customer_of(meta.customer_id)
        if ctx.body["id_number"] != customer.id_number:
            raise Problem(
                422, "identity-mismatch", "The ID number presented is not the account holder's"
            )
        flags = AccountFlags.FACE_TO_FACE_VERIFIED
        if meta.account_class == 2:
            flags |= AccountFlags.NON_BOUND_INFLOW_ENABLED  # PBoC: Class II after face to face
        await self._update_flags(account_id, flags)
        return json_reply(200, await self._account_view(account_id, ctx.channel))

    async def set_non_bound_inflow(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        meta = self.meta_of(account_id)
        await self.authorize_debit(ctx, account_id)
        enabled = ctx.body["enabled"]
        if enabled and meta.account_class == 2:
            raw = await self.read(lambda ledger: ledger.lookup_account(account_id))
            if (
                raw is None
                or not ACCOUNT_STRUCT.unpack(raw)[12] & AccountFlags.FACE_TO_FACE_VERIFIED
            ):
                raise Problem(
                    409,
                    "face-to-face-required",
                    "A Class II account takes money from non-bound accounts only after a "
                    "face-to-face identity check (PBoC)",
                )
        if meta.account_class == 1:
            raise Problem(409, "not-applicable", "Class I accounts have no inflow restriction")
        if enabled:
            await self._update_flags(account_id, AccountFlags.NON_BOUND_INFLOW_ENABLED)
        else:
            await self._update_flags(account_id, 0, AccountFlags.NON_BOUND_INFLOW_ENABLED)
        return json_reply(200, await self._account_view(account_id, ctx.channel))

    async def close_account(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        meta = self.meta_of(account_id)
        await self.authorize_debit(ctx, account_id)
        if meta.account_class == 1:
            state = self._state()
            for other in state.accounts.values():
                if (
                    not other.closed
                    and other.bound is not None
                    and other.bound.get("account_id") == str(account_id)
                ):
                    raise Problem(
                        409,
                        "card-still-bound",
                        "Class II/III accounts are still bound to this Class I card",
                        f"close or rebind account {other.account_id} first",
                    )
        await self._update_flags(account_id, 0, 0, status=AccountStatus.CLOSED)
        meta.closed = True
        await self._state().commit([account_record(meta)])
        for token, entry in list(self.tokens.items()):
            if entry.account_id == account_id:
                del self.tokens[token]
        return json_reply(200, await self._account_view(account_id, ctx.channel))

    # --- money ------------------------------------------------------------------

    async def post(
        self,
        ctx: Context,
        operation: str,
        debit: int,
        credit: int,
        amount: int,
        code: int,
        *,
        flags: int = 0,
        pending_id: int = 0,
        timeout_s: int = 0,
    ) -> Reply:
        """Post one transfer whose id is derived from the Idempotency-Key; answer once durable."""
        packed_id, request = self.enqueue_posting(
            ctx, debit, credit, amount, code, flags, pending_id, timeout_s
        )
        await request.done.wait()
        reply = self.posted(
            ctx,
            request,
            operation,
            packed_id,
            debit,
            credit,
            amount,
            code,
            flags,
            pending_id,
            timeout_s,
        )
        if reply is None:
            raise await self.replayed_failure(packed_id)
        return reply

    def enqueue_posting(
        self,
        ctx: Context,
        debit: int,
        credit: int,
        amount: int,
        code: int,
        flags: int,
        pending_id: int,
        timeout_s: int,
    ) -> tuple[bytes, EngineRequest]:
        """`post`'s first half: the transfer record, queued in the engine (or a 503)."""
        ledger_id = ctx.channel.ledger_id
        packed_id = derive_transfer_id_packed(ledger_id, ctx.idempotency_key, 0)
        record = packed_id + _TRANSFER_AFTER_ID.pack(
            debit & UINT64_MASK,
            debit >> 64,
            credit & UINT64_MASK,
            credit >> 64,
            pending_id & UINT64_MASK,
            pending_id >> 64,
            amount,
            0,
            timeout_s,
            LEDGER_CNY,
            code,
            flags,
            ledger_id,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        )
        try:
            return packed_id, self._engine().enqueue_transfer(record)
        except (EngineOverloaded, EngineFull, EngineStopped) as error:
            raise engine_problem(error) from None

    def posted(
        self,
        ctx: Context,
        request: EngineRequest,
        operation: str,
        packed_id: bytes,
        debit: int,
        credit: int,
        amount: int,
        code: int,
        flags: int,
        pending_id: int,
        timeout_s: int,
    ) -> Reply | None:
        """`post`'s second half, once durable: the reply, the refusal raised, or None for a
        retry of a key whose first request failed (`replayed_failure` reads why)."""
        try:
            result = transfer_result(request)
        except (EngineOverloaded, EngineFull, EngineStopped) as error:
            raise engine_problem(error) from None
        status = result.result
        headers: list[tuple[bytes, bytes]] = []
        if status == R.EXISTS:
            headers.append(REPLAY_HEADER)
            self.metrics.count_result("exists")
        elif status == R.ID_ALREADY_FAILED:
            self.metrics.count_result("id_already_failed")
            return None
        elif status != R.OK:
            self.metrics.count_result(R(status).name.lower())
            raise transfer_problem(status)
        else:
            self.metrics.count_result("ok")
        body = {
            "transfer_id": packed_id[::-1].hex(),
            "operation": operation,
            "status": _POSTING_STATE[flags & 0x0E],
            "debit_account_id": str(debit),
            "credit_account_id": str(credit),
            "amount_minor": amount,
            "code": _CODE_NAMES.get(code) or money_name(code),
            "pending_id": transfer_id_text(pending_id) if pending_id else None,
            "timeout_s": timeout_s,
            "channel": ctx.channel.name,
            "timestamp_ns": result.timestamp,
        }
        return Reply(201, orjson.dumps(body), headers)

    async def replayed_failure(self, packed_id: bytes) -> Problem:
        """The refusal replayed to a retry of a key whose first request failed."""
        transfer_id = int.from_bytes(packed_id, "little")
        original = await self.read(lambda ledger: ledger.lookup_transfer(transfer_id))
        first = (
            TRANSFER_STRUCT.unpack(original)[15]
            if original is not None
            else int(R.ID_ALREADY_FAILED)
        )
        problem = transfer_problem(
            first, "replayed: the first request with this Idempotency-Key failed"
        )
        problem.headers.append(REPLAY_HEADER)
        return problem

    def _bound(self, account_id: int) -> tuple[AccountMeta, int]:
        meta = self.meta_of(account_id)
        if meta.bound is None:
            raise transfer_problem(R.NO_BOUND_ACCOUNT, "this account has no bound card")
        if meta.bound["kind"] == "internal":
            return meta, int(meta.bound["account_id"])
        return meta, CLEARING_ID

    async def topup(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        _, source = self._bound(account_id)
        await self.authorize_debit(ctx, account_id)
        return await self.post(
            ctx, "topup", source, account_id, ctx.body["amount_minor"], TransferCode.TOPUP_BOUND
        )

    async def withdraw(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        _, target = self._bound(account_id)
        await self.authorize_debit(ctx, account_id)
        return await self.post(
            ctx,
            "withdraw",
            account_id,
            target,
            ctx.body["amount_minor"],
            TransferCode.WITHDRAW_BOUND,
        )

    async def cash_deposit(self, ctx: Context) -> Reply:
        self.channel_allowed(ctx, CASH_CHANNEL_KINDS, "Cash")
        account_id = account_id_param(ctx.params["account_id"])
        return await self.post(
            ctx,
            "cash_deposit",
            CASH_VAULT_ID,
            account_id,
            ctx.body["amount_minor"],
            TransferCode.CASH_DEPOSIT,
        )

    async def cash_withdrawal(self, ctx: Context) -> Reply:
        self.channel_allowed(ctx, CASH_CHANNEL_KINDS, "Cash")
        account_id = account_id_param(ctx.params["account_id"])
        await self.authorize_debit(ctx, account_id)
        return await self.post(
            ctx,
            "cash_withdrawal",
            account_id,
            CASH_VAULT_ID,
            ctx.body["amount_minor"],
            TransferCode.CASH_WITHDRAWAL,
        )

    async def transfer(self, ctx: Context) -> Reply:
        # `authorize_debit` and `post` written out: the hottest route, one coroutine frame.
        body = ctx.body
        debit = account_id_param(body["debit_account_id"], "debit_account_id")
        credit = account_id_param(body["credit_account_id"], "credit_account_id")
        if debit == credit:
            raise transfer_problem(R.ACCOUNTS_MUST_BE_DIFFERENT)
        if not self.debit_token_checked(ctx, debit):
            await self.verify_password(debit, body["password"])
        amount = body["amount_minor"]
        code = TransferCode.TRANSFER
        packed_id, request = self.enqueue_posting(ctx, debit, credit, amount, code, 0, 0, 0)
        await request.done.wait()
        reply = self.posted(
            ctx, request, "transfer", packed_id, debit, credit, amount, code, 0, 0, 0
        )
        if reply is None:
            raise await self.replayed_failure(packed_id)
        return reply

    async def external_transfer(self, ctx: Context) -> Reply:
        body = ctx.body
        debit = account_id_param(body["debit_account_id"], "debit_account_id")
        problem = (
            identity.card_number_problem(body["beneficiary"]["account_number"])
            if body["beneficiary"]["account_number"].isdigit()
            and len(body["beneficiary"]["account_number"]) >= 16
            else None
        )
        if problem is not None:
            raise Problem(
                422,
                "invalid-card-number",
                "The beneficiary card number is not valid",
                problem,
                errors=[{"pointer": "/beneficiary/account_number", "detail": problem}],
            )
        await self.authorize_debit(ctx, debit)
        reply = await self.post(
            ctx,
            "external_transfer",
            debit,
            CLEARING_ID,
            body["amount_minor"],
            TransferCode.EXTERNAL_TRANSFER_OUT,
        )
        logger.info(
            orjson.dumps(
                {
                    "event": "clearing_out",
                    "transfer_id": orjson.loads(reply.body)["transfer_id"],
                    "beneficiary_bank": body["beneficiary"]["bank_code"],
                    "beneficiary_account": identity.mask_card(
                        body["beneficiary"]["account_number"]
                    ),
                }
            ).decode()
        )
        return reply

    async def incoming_transfer(self, ctx: Context) -> Reply:
        body = ctx.body
        credit = account_id_param(body["credit_account_id"], "credit_account_id")
        return await self.post(
            ctx,
            "incoming_transfer",
            CLEARING_ID,
            credit,
            body["amount_minor"],
            TransferCode.EXTERNAL_TRANSFER_IN,
        )

    async def payment(self, ctx: Context) -> Reply:
        body = ctx.body
        debit = account_id_param(body["debit_account_id"], "debit_account_id")
        merchant = account_id_param(body["merchant_account_id"], "merchant_account_id")
        if debit == merchant:
            raise transfer_problem(R.ACCOUNTS_MUST_BE_DIFFERENT)
        await self.authorize_debit(ctx, debit)
        return await self.post(
            ctx,
            "payment",
            debit,
            merchant,
            body["amount_minor"],
            TransferCode.PAYMENT,
            flags=TransferFlags.PENDING,
            timeout_s=body.get("timeout_s", 900),
        )

    async def _hold(self, payment_id: int) -> tuple[Any, ...]:
        record = await self.read(lambda ledger: ledger.lookup_transfer(payment_id))
        if record is None:
            raise transfer_problem(R.PENDING_TRANSFER_NOT_FOUND)
        fields = TRANSFER_STRUCT.unpack(record)
        return fields

    async def capture(self, ctx: Context) -> Reply:
        payment_id = transfer_id_param(ctx.params["payment_id"], "payment_id")
        hold = await self._hold(payment_id)
        debit, credit, amount = (hold[3] << 64) | hold[2], (hold[5] << 64) | hold[4], hold[8]
        captured = ctx.body.get("amount_minor", amount)
        return await self.post(
            ctx,
            "capture",
            debit,
            credit,
            captured,
            hold[12],
            flags=TransferFlags.POST_PENDING,
            pending_id=payment_id,
        )

    async def void(self, ctx: Context) -> Reply:
        payment_id = transfer_id_param(ctx.params["payment_id"], "payment_id")
        hold = await self._hold(payment_id)
        debit, credit, amount = (hold[3] << 64) | hold[2], (hold[5] << 64) | hold[4], hold[8]
        return await self.post(
            ctx,
            "void",
            debit,
            credit,
            amount,
            hold[12],
            flags=TransferFlags.VOID_PENDING,
            pending_id=payment_id,
        )

    async def reversal(self, ctx: Context) -> Reply:
        original_id = transfer_id_param(ctx.params["transfer_id"])
        record = await self.read(lambda ledger: ledger.lookup_transfer(original_id))
        if record is None:
            raise transfer_problem(R.REVERSAL_TARGET_NOT_FOUND)
        fields = TRANSFER_STRUCT.unpack(record)
        debit, credit = (fields[3] << 64) | fields[2], (fields[5] << 64) | fields[4]
        if fields[15] != R.OK:
            raise transfer_problem(R.REVERSAL_TARGET_NOT_POSTED, "the original transfer failed")
        amount = ctx.body.get("amount_minor", fields[22])  # default: all that was posted
        if amount <= 0:
            raise transfer_problem(R.EXCEEDS_REVERSIBLE_AMOUNT, "nothing left to reverse")
        # A capture names its accounts through its hold; take them from there.
        if debit == 0 or credit == 0:
            hold = await self._hold((fields[7] << 64) | fields[6])
            debit, credit = (hold[3] << 64) | hold[2], (hold[5] << 64) | hold[4]
        return await self.post(
            ctx, "reversal", credit, debit, amount, TransferCode.REVERSAL, pending_id=original_id
        )

    # --- batch ------------------------------------------------------------------

    async def batch(self, ctx: Context) -> Reply:
        binary = ctx.content_type == "application/octet-stream"
        payload = self._batch_binary(ctx) if binary else self._batch_json(ctx)
        count = len(payload) // TRANSFER_SIZE
        self.metrics.batch_sizes.observe(count)
        results = await self.call_engine(self._engine().submit_transfers, payload)
        codes = results.result_codes()
        timestamps = results.timestamps[results.offset : results.offset + count]
        histogram: dict[int, int] = {}
        for code in set(codes):
            histogram[code] = codes.count(code)
        for code, number in histogram.items():
            self.metrics.count_result(R(code).name.lower(), number)
        headers: list[tuple[bytes, bytes]] = []
        if histogram.get(R.EXISTS, 0) == count:
            headers.append(REPLAY_HEADER)
        if binary:
            body = (
                struct.pack("<I4x", count)
                + codes
                + bytes(-count % 8)
                + array("Q", timestamps).tobytes()
            )
            return Reply(200, body, headers, b"application/octet-stream")
        names = {code: R(code).name.lower() for code in histogram}
        summary = {name: histogram[code] for code, name in names.items()}
        return Reply(
            200,
            b'{"count":%d,"summary":%s,"results":%s}'
            % (count, orjson.dumps(summary), render_batch_results(payload, codes, timestamps)),
            headers,
        )

    def _batch_binary(self, ctx: Context) -> bytes:
        raw: bytes = ctx.body
        count, remainder = divmod(len(raw), TRANSFER_SIZE)
        if remainder or count == 0:
            raise Problem(
                422,
                "batch-malformed",
                "A binary batch is whole 128-byte transfer records",
                f"{len(raw)} bytes is not a positive multiple of {TRANSFER_SIZE}",
            )
        self._check_batch_size(ctx, count)
        return stamp_binary_batch(raw, ctx.channel.ledger_id, ctx.idempotency_key)

    def _batch_json(self, ctx: Context) -> bytes:
        transfers = ctx.body["transfers"]
        self._check_batch_size(ctx, len(transfers))
        return pack_json_batch(transfers, ctx.channel.ledger_id, ctx.idempotency_key)

    def _check_batch_size(self, ctx: Context, count: int) -> None:
        if count > ctx.channel.batch_size_max:
            raise Problem(
                413,
                "batch-too-large",
                "Too many transfers in one batch",
                f"{count} transfers; channel {ctx.channel.name} allows "
                f"{ctx.channel.batch_size_max}",
            )


UINT64_MASK = 0xFFFFFFFFFFFFFFFF
_ID_ZERO = bytes(16)
_ID_MAX_PACKED = b"\xff" * 16
# A transfer record after its 16-byte id (the single-transfer route packs the id as bytes).
_TRANSFER_AFTER_ID = struct.Struct("<" + TRANSFER_STRUCT.format.removeprefix("<QQ"))
assert _TRANSFER_AFTER_ID.size == TRANSFER_SIZE - 16
_BINARY_ID_DETAIL = (
    "id (bytes 0-15) and channel (byte 90) must be zero: "
    "the server derives them from the Idempotency-Key and the channel"
)
_CODE_OF_NAME = {code.name.lower(): int(code) for code in TransferCode}
_RESULT_NAMES: list[str | None] = [
    R(code).name.lower() if code in R._value2member_map_ else None for code in range(256)
]
_CODE_NAMES = {int(code): code.name.lower() for code in TransferCode}
_POSTING_STATE = {0: "posted", 2: "pending", 4: "captured", 8: "voided"}
_FLAG_OF_NAME = {"linked": 1, "pending": 2, "post_pending": 4, "void_pending": 8}
_BATCH_KEYS = frozenset(
    {
        "debit_account_id",
        "credit_account_id",
        "amount_minor",
        "code",
        "flags",
        "pending_id",
        "timeout_s",
        "user_data",
    }
)
_DIGITS = frozenset("0123456789")
_ACCOUNT_RE = re.compile(r"[1-9][0-9]{0,37}")
_LIMIT_RE = re.compile(r"[0-9]{1,3}")
_CURSOR_RE = re.compile(r"[0-9]{1,18}")
HEX = frozenset("0123456789abcdef")
INT64_MAX = (1 << 63) - 1


# --- the batch route's item loops: C (cext/http_fast.pyx) and their Python twins -----------


def pack_json_batch(transfers: list[Any], channel_ledger_id: int, key: str) -> bytes:
    """The packed records of a JSON batch, ids derived; a bad item raises its 422."""
    if http_fast is None:
        return pack_json_batch_reference(transfers, channel_ledger_id, key)
    buffer = bytearray(len(transfers) * TRANSFER_SIZE)
    http_fast.pack_json_items(
        transfers, buffer, _CODE_OF_NAME, channel_ledger_id, LEDGER_CNY, _batch_item
    )
    http_fast.derive_ids_into(transfer_id_prefix(channel_ledger_id, key), len(transfers), buffer)
    return bytes(buffer)


def pack_json_batch_reference(transfers: list[Any], channel_ledger_id: int, key: str) -> bytes:
    count = len(transfers)
    ids = derive_transfer_ids_packed(channel_ledger_id, key, count)
    channel = channel_ledger_id
    buffer = bytearray(count * TRANSFER_SIZE)
    pack_into = TRANSFER_STRUCT.pack_into
    account_re = _ACCOUNT_RE.fullmatch
    codes = _CODE_OF_NAME
    for index, item in enumerate(transfers):
        # Fast path: the four required fields only, all well-formed (the usual item).
        if type(item) is dict and len(item) == 4:
            debit_text = item.get("debit_account_id")
            credit_text = item.get("credit_account_id")
            amount = item.get("amount_minor")
            code_name = item.get("code")
            code = codes.get(code_name) if type(code_name) is str else None
            if (
                type(debit_text) is str
                and type(credit_text) is str
                and type(amount) is int
                and 0 <= amount <= INT64_MAX
                and code is not None
                and account_re(debit_text)
                and account_re(credit_text)
            ):
                debit, credit = int(debit_text), int(credit_text)
                flags = pending = timeout_s = user_data = 0
            else:
                debit, credit, amount, code, flags, pending, timeout_s, user_data = _batch_item(
                    item, index
                )
        else:
            debit, credit, amount, code, flags, pending, timeout_s, user_data = _batch_item(
                item, index
            )
        offset = index * TRANSFER_SIZE
        pack_into(
            buffer, offset, 0, 0,
            debit & UINT64_MASK, debit >> 64, credit & UINT64_MASK, credit >> 64,
            pending & UINT64_MASK, pending >> 64,
            amount, 0, timeout_s, LEDGER_CNY, code, flags, channel,
            0, 0, 0, 0, 0, 0, user_data, 0, 0,
        )  # fmt: skip
        buffer[offset : offset + 16] = ids[index]
    return bytes(buffer)


def stamp_binary_batch(raw: bytes, channel_ledger_id: int, key: str) -> bytes:
    """Client records with the server's ids and channel written in; 422 if a client set them."""
    if http_fast is None:
        return stamp_binary_batch_reference(raw, channel_ledger_id, key)
    buffer = bytearray(raw)
    bad = http_fast.stamp_binary_records(buffer, channel_ledger_id)
    if bad >= 0:
        raise fail(f"/{bad}", _BINARY_ID_DETAIL)
    http_fast.derive_ids_into(
        transfer_id_prefix(channel_ledger_id, key), len(raw) // TRANSFER_SIZE, buffer
    )
    return bytes(buffer)


def stamp_binary_batch_reference(raw: bytes, channel_ledger_id: int, key: str) -> bytes:
    count = len(raw) // TRANSFER_SIZE
    buffer = bytearray(raw)
    view = memoryview(buffer)
    ids = derive_transfer_ids_packed(channel_ledger_id, key, count)
    channel = channel_ledger_id
    for index in range(count):
        offset = index * TRANSFER_SIZE
        if any(view[offset : offset + 16]) or buffer[offset + 90]:
            raise fail(f"/{index}", _BINARY_ID_DETAIL)
        view[offset : offset + 16] = ids[index]
        buffer[offset + 90] = channel
    return bytes(buffer)


def render_batch_results(payload: bytes, codes: bytes, timestamps: Any) -> bytes:
    """The `results` array of the JSON batch answer: one object per posted record."""
    if http_fast is None:
        return render_batch_results_reference(payload, codes, timestamps)
    rendered: bytes = http_fast.render_results(payload, codes, timestamps, _RESULT_NAMES)
    return rendered


def render_batch_results_reference(payload: bytes, codes: bytes, timestamps: Any) -> bytes:
    return orjson.dumps(
        [
            {
                "transfer_id": payload[index * TRANSFER_SIZE : index * TRANSFER_SIZE + 16][
                    ::-1
                ].hex(),
                "code": code,
                "result": R(code).name.lower(),
                "timestamp_ns": timestamps[index],
            }
            for index, code in enumerate(codes)
        ]
    )


def _batch_item(item: Any, index: int) -> tuple[int, int, int, int, int, int, int, int]:
    """One JSON batch item, checked field by field (the hot loop of the JSON batch route)."""
    path = f"/transfers/{index}"
    if type(item) is not dict:
        raise fail(path, "expected an object")
    if not item.keys() <= _BATCH_KEYS:
        unknown = sorted(set(item) - _BATCH_KEYS)[0]
        raise fail(f"{path}/{unknown}", f"unknown field {unknown[:64]!r}")
    try:
        debit_text = item["debit_account_id"]
        credit_text = item["credit_account_id"]
        amount = item["amount_minor"]
        code_name = item["code"]
    except KeyError as missing:
        raise fail(f"{path}/{missing.args[0]}", "missing required field") from None
    debit = _batch_account(debit_text, f"{path}/debit_account_id")
    credit = _batch_account(credit_text, f"{path}/credit_account_id")
    if type(amount) is not int or not 0 <= amount <= INT64_MAX:
        from channels.schema import F, check_value

        check_value(amount, F("amount", minimum=0), f"{path}/amount_minor")
    code = _CODE_OF_NAME.get(code_name) if type(code_name) is str else None
    if code is None:
        raise fail(f"{path}/code", "expected one of " + ", ".join(_CODE_OF_NAME))
    flags = 0
    flag_names = item.get("flags")
    if flag_names is not None:
        if type(flag_names) is not list:
            raise fail(f"{path}/flags", "expected an array of flag names")
        if len(flag_names) > len(_FLAG_OF_NAME):
            raise fail(f"{path}/flags", f"at most {len(_FLAG_OF_NAME)} flags")
        for position, name in enumerate(flag_names):
            bit = _FLAG_OF_NAME.get(name) if type(name) is str else None
            if bit is None:
                raise fail(
                    f"{path}/flags/{position}", "expected one of " + ", ".join(_FLAG_OF_NAME)
                )
            flags |= bit
    pending = 0
    pending_text = item.get("pending_id")
    if pending_text is not None:
        if (
            type(pending_text) is not str
            or len(pending_text) != 32
            or not HEX.issuperset(pending_text)
        ):
            raise fail(f"{path}/pending_id", "expected a transfer id: 32 lowercase hex digits")
        pending = int(pending_text, 16)
    timeout_s = item.get("timeout_s", 0)
    if type(timeout_s) is not int or not 0 <= timeout_s <= 0xFFFFFFFF:
        raise fail(f"{path}/timeout_s", "expected an integer 0..4294967295")
    user_data = item.get("user_data", 0)
    if type(user_data) is not int or not 0 <= user_data <= 0xFFFFFFFFFFFFFFFF:
        raise fail(f"{path}/user_data", "expected an integer 0..18446744073709551615")
    return debit, credit, amount, code, flags, pending, timeout_s, user_data


def _batch_account(text: Any, path: str) -> int:
    if (
        type(text) is not str
        or not 1 <= len(text) <= 38
        or text[0] == "0"
        or not _DIGITS.issuperset(text)
    ):
        raise fail(path, "expected an account id: a string of 1-38 digits, not starting with 0")
    return int(text)


def _bucket(limit: int, used: int) -> dict[str, Any]:
    return {
        "limit_minor": limit or None,
        "used_minor": used,
        "remaining_minor": max(0, limit - used) if limit else None,
    }


def _kind_name(kind: int) -> str:
    try:
        return AccountKind(kind).name.lower()
    except ValueError:
        return str(kind)


def _rfc3339(ns: int) -> str:
    return (
        datetime.datetime.fromtimestamp(ns / NS_PER_S, datetime.UTC)
        .isoformat()
        .replace("+00:00", "Z")
    )


def transfer_view(record: bytes) -> dict[str, Any]:
    f = TRANSFER_STRUCT.unpack(record)
    flags = f[13]
    if flags & TransferFlags.PENDING:
        kind = "hold"
    elif flags & TransferFlags.POST_PENDING:
        kind = "capture"
    elif flags & TransferFlags.VOID_PENDING:
        kind = "void"
    elif f[12] == TransferCode.REVERSAL:
        kind = "reversal"
    else:
        kind = "single"
    result = f[15]
    if result != R.OK:
        state = "failed"
    elif kind == "hold":
        state = {
            PendingState.PENDING: "pending",
            PendingState.POSTED: "captured",
            PendingState.VOIDED: "voided",
            PendingState.EXPIRED: "expired",
        }.get(PendingState(f[20]), "pending")
    else:
        state = "posted"
    pending_id = (f[7] << 64) | f[6]
    return {
        "transfer_id": f"{(f[1] << 64) | f[0]:032x}",
        "kind": kind,
        "state": state,
        "result": {"code": result, "name": R(result).name.lower()},
        "debit_account_id": str((f[3] << 64) | f[2]),
        "credit_account_id": str((f[5] << 64) | f[4]),
        "amount_minor": f[8],
        "amount_posted_minor": f[22],
        "amount_reversed_minor": f[23],
        "pending_id": f"{pending_id:032x}" if pending_id else None,
        "code": money_name(f[12]),
        "channel_id": f[14],
        "timeout_s": f[10],
        "timestamp_ns": f[9],
        "business_day": date_of_day(f[18]),
        "user_data": f[21],
    }
