"""The services' runtime: recover or open the store, run the engine, keep house.

`Lifecycle.serve` brings the core up in the order recovery needs: the store
opened through `open_store(url)` (`journal:DATA_DIR`, or the PostgreSQL URL
of `Settings.store_dsn`: the ledger rebuilt and the customer state
recovered from the same store), the customer state's maps loaded, the
engine started, a legacy `channels-state.jsonl` imported once, the bank's
internal accounts ensured, account openings whose ledger half was lost in a
crash completed; only then is it `ready`. Until then every service refuses
with `NOT_READY`.

`open_store` is a constructor argument (default `core.store.open_store`):
the seam through which tests wrap the store (a slow disk).

Storage faults. A store that cannot write (a full disk, a quota, an I/O
error, a read-only or full PostgreSQL) stops the engine: the requests of
the failing group and every one behind it are answered 503
`storage-unavailable` (outcome unknown: retry with the same
Idempotency-Key), `/readyz` answers 503 with the reason and every /v1
route 503 with Retry-After. The server then recovers by itself: it waits
until the store can write again (`check_writable`: the journal zeroes the
failed group's unsynced tail and checks that a new segment fits; PostgreSQL
is simply opened again, which writes its fencing epoch), closes the store
and opens it again, rebuilding the ledger and the customer state from what
is durable, so the new engine's memory is exactly the durable state:
nothing acknowledged is lost (it was fsynced or committed), nothing is
applied twice (the failed group is either durable, and then read back,
or gone). Only a fenced-off PostgreSQL store (another engine took over) and
a damaged journal are final: they need an operator.

The deposit catalog (`Settings.deposits_path`, limits/deposits.py) is read
at construction (a bad file refuses the start): it is the catalog's first
version, in force until an approved one (core/services/approvals.py, kind
`deposits`) is put in force (`install_catalog`). An edit of the file while
serving is not picked up: parameters change only through approvals. The limit
rules, the LPR table and the loan product catalog are approved parameters too
(`install_rules`, `install_lpr`, `install_loans`): the approvals service puts
the last applied version of each in force from `on_state_loaded`, before the
engine is built. With
`Settings.dayend_automatic` the day-end (core/services/dayend.py) runs by
itself once each business day has ended.

The data directory is private: 0700, every file 0600 (the process umask is
077 under `tally serve`); an existing directory with wider permissions is
tightened at start, and the tightening is logged (`data_dir_tightened`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from core.data import (
    DEFAULT_DEPOSITS_PATH,
    DEFAULT_LOANS_PATH,
    DEFAULT_LPR_PATH,
    DEFAULT_OPERATORS_PATH,
    DEFAULT_RISK_PATH,
)
from core.dsn import redact_secrets
from core.engine import (
    Clock,
    Engine,
    EngineFull,
    EngineOverloaded,
    EngineStopped,
    StoreFailed,
)
from core.journal import (
    SEGMENT_SIZE_DEFAULT,
    JournalError,
    JournalWriteError,
    ensure_private_directory,
)
from core.pg_store import PgStoreError, StoreFenced
from core.services import passwords
from core.services.dayend import accrual_rates
from core.services.records import NS_PER_S, TransferIds
from core.services.refusals import Code, Refused, refused
from core.services.server_secrets import DEVELOPMENT, ServerSecrets
from core.services.state import (
    LEGACY_STATE_FILE,
    StateStore,
    legacy_records_to_import,
    read_legacy_file,
    rename_imported,
)
from core.store import JOURNAL_SCHEME, OpenedStore, Store, open_store
from ledger.constants import INTERNAL_ACCOUNTS, INTERNAL_PRODUCT
from ledger.loan_book import LoanTermsTable
from ledger.records import pack_account_input
from ledger.types import CreateAccountResult
from limits.deposits import CatalogFile, DepositCatalog
from limits.loans import LoanCatalog, load_loan_catalog
from limits.rules import RuleSet

logger = logging.getLogger("tally.services")

HOUSEKEEPING_TICK_S = 0.05
PRUNE_EVERY_TICKS = 200
# The server's garbage-collector thresholds (young, middle, old generation; Python's
# defaults: 700, 10, 10): `tally serve` sets them, and the benchmarks that time a part of
# the server in a process of their own (`tally bench risk`) set the same.
GC_THRESHOLDS = (5000, 20, 20)
TICK_EVERY_TICKS = 20  # the services' `on_tick` work, once a second
STORE_RETRY_S = 1.0
STORAGE_RETRY_AFTER_S = 5  # what a 503 storage-unavailable asks a client to wait
STOP_FLUSH_TIMEOUT_S = 5.0  # the last write of staged state at a clean stop
PATIENT_ATTEMPTS_MAX = 100  # full-queue retries of one customer operation (about 5 s)
LEGACY_IMPORT_CHUNK = 1000  # records per PUT_STATE change list when importing a legacy file
LEGACY_IMPORT_ORDER = (
    "customer", "account", "password", "failures", "token", "nonce", "opening",
)  # fmt: skip


@dataclass(slots=True)
class Settings:
    data_dir: str
    account_capacity: int = 1 << 20
    transfer_capacity: int = 1 << 22
    queue_size: int = 65536
    linger_s: float = 0.001
    token_ttl_s: int = 300
    session_ttl_s: int = 900  # a customer session (reads at wechat/app channels)
    # Wrong transaction passwords in a row before the lock (reset at a counter only).
    password_failures_max: int = 5
    # The keyed password hash's scrypt parameters, stored with each hash: raising them
    # rehashes each password at its next correct use.
    scrypt_n: int = passwords.SCRYPT_N_DEFAULT
    scrypt_r: int = passwords.SCRYPT_R
    scrypt_p: int = passwords.SCRYPT_P
    # Password hashing's own threads (0: half the CPUs, at least one) and how many checks
    # may wait for them; beyond that a check is refused 503 with Retry-After.
    password_hash_threads: int = 0
    password_hash_queue_max: int = 64
    minimum_age: int = 16
    nonce_window_s: int = 300
    snapshot_every_entries: int = 0
    # The journal's appends of small groups run on the event loop unless one there took
    # longer than this (core/journal_store.py); 0: every append in a worker thread.
    journal_append_on_loop_max_s: float = 0.010
    prefault: bool = False
    store_dsn: str | None = None  # postgresql://...: the PostgreSQL store, not the journal
    # More keywords for `open_pg_store` (reconnect_timeout_s, commit_timeout_s, ...).
    pg_options: dict[str, Any] = field(default_factory=dict)
    # How long a posted transfer stays in the log (and a retry meets it by id) before it
    # may be evicted to make room: a log of `transfer_capacity` must hold this much.
    retention_s: float = 86_400.0
    # How long a failed transfer is remembered (a retry answered ID_ALREADY_FAILED with the
    # first refusal) in the failure ring, unless the ring needs its room sooner.
    failed_retention_s: float = 900.0
    # The server's own keys (transfer-id hash, password pepper): a file outside the data
    # directory in production; the public development values only with `--dev`.
    secrets: ServerSecrets = DEVELOPMENT
    # The journal's segment size (preallocated): a new one is allocated when the last fills.
    journal_segment_size: int = SEGMENT_SIZE_DEFAULT
    # The deposit catalog (limits/deposits.py): rates, terms, day counts, settlement days.
    # The first version: later ones only through approvals (`Lifecycle.install_catalog`).
    deposits_path: str = str(DEFAULT_DEPOSITS_PATH)
    # Run the day-end (core/services/dayend.py) by itself once each business day has
    # ended, catching up the days missed while stopped; off: `tally dayend --date D`.
    dayend_automatic: bool = False
    # The engine accrues each ended day's interest before the first entry of the next day
    # (on the end-of-day balances, whenever the rest of the day-end runs). Off: the
    # day-end's accrual step accrues when it runs, on the balances of that moment (the
    # day-end benchmark times that step; a bank keeps it on).
    accrue_at_day_boundary: bool = True
    # How long the engine idles before it expires pending holds past their timeout (the
    # day-end's last step expires them too).
    expire_interval_s: float = 1.0
    # Risk control (core/services/risk.py): the rule set a store without an approved
    # version starts from (a parameter: changed through approvals, then kept in the store).
    risk_rules_path: str = str(DEFAULT_RISK_PATH)
    # The loan prime rate table (limits/lpr.py): the same, a parameter.
    lpr_path: str = str(DEFAULT_LPR_PATH)
    # The loan product catalog (limits/loans.py): the same, a parameter (kind `loans`).
    loans_path: str = str(DEFAULT_LOANS_PATH)
    # The operators and their roles (core/services/operators.py): who may request and
    # approve parameter changes and sensitive operations.
    operators_path: str = str(DEFAULT_OPERATORS_PATH)
    # A pending approval request expires (kept, state "expired") after this long.
    approval_expiry_s: int = 3 * 86_400
    # A counter reversal above this (fen) needs an approved request (0: every one does).
    reversal_approval_minor: int = 5_000_000


def engine_refusal(error: EngineOverloaded | EngineFull | EngineStopped) -> Refused:
    """An engine refusal as a service refusal (overloaded: retry after the engine's hint)."""
    if isinstance(error, EngineOverloaded):
        return refused(Code.OVERLOADED, retry_after_s=error.retry_after_s)
    if isinstance(error, StoreFailed):
        return storage_refusal(
            "the store failed while this request was being made durable: its outcome is"
            " unknown; retry it with the same Idempotency-Key once the server is ready"
        )
    return refused(Code.UNAVAILABLE, str(error))


def storage_refusal(detail: str) -> Refused:
    return refused(Code.STORAGE_UNAVAILABLE, detail, retry_after_s=STORAGE_RETRY_AFTER_S)


class Lifecycle:
    """The engine, its store and the customer state, and whether they are ready."""

    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        open_store: Callable[..., contextlib.AbstractAsyncContextManager[OpenedStore]] = open_store,
        engine_clock: Clock | None = None,
    ) -> None:
        """`now_ns` tells the services' time (business day, token and nonce ages);
        `engine_clock` the engine's entry timestamps (None: the system clock). Tests
        that move time give both the same clock."""
        self.settings = settings
        self.rules = rules
        self.now_ns = now_ns
        self.engine_clock = engine_clock
        self.open_store = open_store
        # Transfer ids and instruction fingerprints, keyed by the server's transfer-id key.
        self.ids = TransferIds(settings.secrets.transfer_id_key)
        self.engine: Engine | None = None
        self.store: Store | None = None  # the store whose commit latency /metrics reports
        # Loaded from the store each time it opens (a new StateStore then) and written
        # through the engine once it runs.
        self.state = StateStore()
        self.ready = False
        self.failed: str | None = None
        # Set while the store cannot write (at start, or from the moment it failed until
        # it was opened again), with `failed`: the routes answer 503 storage-unavailable.
        self.storage_failure: str | None = None
        self.recoveries = 0  # times the store was opened again after a failure
        self.recovery_info: dict[str, Any] = {}
        self.on_housekeeping: list[Callable[[int], None]] = []  # called with now_ns
        # Called with the recovered state (key -> value) each time the store opens, after
        # the customer state loaded and before the engine is built (so a service may put
        # an approved version of the rules in `self.rules` first).
        self.on_state_loaded: list[Callable[[Mapping[bytes, bytes]], None]] = []
        # Awaited once a second by the housekeeping task with now_ns, while the engine
        # runs (approvals due, delayed risk holds to release); an exception is logged.
        self.on_tick: list[Callable[[int], Awaitable[None]]] = []
        # The deposit catalog in force; a bad file refuses the start (CatalogError, a
        # RuleFileError), a bad new version while serving keeps the running one.
        self.catalog_file = CatalogFile(settings.deposits_path)
        # An approved catalog version (core/services/approvals.py, kind `deposits`): once
        # one is in force it is THE catalog, and the file is no longer looked at.
        self.approved_catalog: DepositCatalog | None = None
        # The loan prime rate table in force (limits/lpr.py; kind `lpr`): read from
        # `Settings.lpr_path` at first use, replaced by approved versions.
        self._lpr: Any = None
        # The loan product catalog in force (limits/loans.py; kind `loans`): the same,
        # from `Settings.loans_path`.
        self._loans: LoanCatalog | None = None
        # Every live loan's terms segments (ledger/loan_book.py), kept in step with the
        # `loan/` records by core/services/loan_accounts.py (rebuilt each time the store
        # opens, before the server is ready): the day-end hands `loan_terms.packed()` to
        # the collection kernel.
        self.loan_terms = LoanTermsTable()

    # --- what services use ------------------------------------------------------

    def running_engine(self) -> Engine:
        if self.storage_failure is not None:
            raise storage_refusal("the store cannot write; the server recovers by itself")
        if self.engine is None:
            raise refused(Code.NOT_READY, "the server is still recovering")
        return self.engine

    def customer_state(self) -> StateStore:
        return self.state

    def today(self) -> int:
        return self.rules.business_day(self.now_ns())

    @property
    def catalog(self) -> DepositCatalog:
        """The deposit catalog in force: the last approved version, else the last good
        version of `Settings.deposits_path`."""
        if self.approved_catalog is not None:
            return self.approved_catalog
        return self.catalog_file.catalog

    def install_catalog(self, catalog: DepositCatalog) -> None:
        """Put an approved catalog version in force (core/services/approvals.py): from
        now on the file is no longer reloaded. Nothing is journaled here: the approval's
        `param/deposits/<version>` record is, and every entry that depends on a rate
        carries it."""
        self.approved_catalog = catalog
        logger.info(orjson.dumps({"event": "catalog_installed", "digest": catalog.digest}).decode())

    @property
    def lpr(self) -> Any:
        """The loan prime rate table in force (`limits.lpr.LprTable`): the last approved
        version, else `Settings.lpr_path` (read at the first use)."""
        if self._lpr is None:
            from limits.lpr import load_lpr

            self._lpr = load_lpr(self.settings.lpr_path)
        return self._lpr

    def install_lpr(self, table: Any) -> None:
        """Put an approved LPR table version in force (core/services/approvals.py)."""
        self._lpr = table

    @property
    def loans(self) -> LoanCatalog:
        """The loan product catalog in force (`limits.loans.LoanCatalog`, every
        published version of every product): the last approved version, else
        `Settings.loans_path` (read at the first use)."""
        if self._loans is None:
            self._loans = load_loan_catalog(self.settings.loans_path)
        return self._loans

    def install_loans(self, catalog: LoanCatalog) -> None:
        """Put an approved loan catalog version in force (core/services/approvals.py,
        kind `loans`). Nothing is journaled here: the approval's `param/loans/<version>`
        record is, and the next opening of the store installs it again."""
        self._loans = catalog
        logger.info(
            orjson.dumps(
                {"event": "loans_installed", "version": catalog.version, "digest": catalog.digest}
            ).decode()
        )

    def install_rules(self, rules: RuleSet) -> None:
        """Put approved limit rules in force (core/services/approvals.py, kind `limits`):
        the rules the next engine is built with, and, while one runs, the engine's at its
        next batch boundary (`Engine.set_rules`: a SET_RULES entry, so replay and a
        failover apply the same change at the same point of the journal)."""
        self.rules = rules
        engine = self.engine
        if engine is not None and engine.running:
            engine.set_rules(rules)

    def _accrual_rates(self, day: int, rules: RuleSet) -> bytes:
        """The engine's day-boundary accrual table of `day` (the catalog in force)."""
        return accrual_rates(self.catalog, day, rules)

    async def call_engine(self, function: Callable[..., Any], *args: Any) -> Any:
        """An engine call; engine refusals become `Refused`.

        No per-request deadline here, on purpose: the engine answers every
        request it accepted (its durable stage is shielded and a full queue is
        refused at once), so a deadline could only turn a wait on the disk into
        an "outcome unknown" that the client's own timeout already gives, and a
        cancel scope per request costs about 15% of the HTTP layer's CPU on the
        single-transfer path (measured with `tally bench http`).
        """
        try:
            return await function(*args)
        except (EngineOverloaded, EngineFull, EngineStopped) as error:
            raise engine_refusal(error) from None

    async def call_engine_patiently(self, function: Callable[..., Any], *args: Any) -> Any:
        """`call_engine` for the customer operations (openings, account changes): few,
        so a full queue is waited out at the engine's hint, at most `PATIENT_ATTEMPTS_MAX`
        times, instead of shedding them like postings. Only for calls refused at once
        when the queue is full (nothing was done): a retry repeats nothing."""
        for attempt in range(1, PATIENT_ATTEMPTS_MAX + 1):
            try:
                return await function(*args)
            except EngineOverloaded as error:
                if attempt == PATIENT_ATTEMPTS_MAX:
                    raise engine_refusal(error) from None
                retry_after_s = error.retry_after_s
            except (EngineFull, EngineStopped) as error:
                raise engine_refusal(error) from None
            await anyio.sleep(retry_after_s)
        raise AssertionError("unreachable")

    async def read(self, function: Callable[[Any], Any]) -> Any:
        """Run `function(ledger)` in the engine on a durable state.

        The engine runs reads inside its writer task, where an exception would
        stop the engine for every caller; a read's defect is carried back here
        and raised in this request alone, never in the engine.
        """

        def guarded(ledger: Any) -> tuple[bool, Any]:
            try:
                return True, function(ledger)
            except Exception as error:
                return False, error

        ok, value = await self.call_engine(self.running_engine().read, guarded)
        if not ok:
            raise value
        return value

    # --- serving ----------------------------------------------------------------

    def store_url(self) -> str:
        """`journal:DATA_DIR`, or the PostgreSQL store's URL when one is set."""
        return self.settings.store_dsn or JOURNAL_SCHEME + self.settings.data_dir

    async def serve(
        self,
        complete_openings: Callable[[], Any],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the store, start the engine, then run until cancelled. Ready once
        recovered; `complete_openings` (a coroutine function) runs once the engine does.

        A store that cannot be opened because it cannot write (PostgreSQL away or
        refusing writes, a full disk under the journal) is retried, not ready until
        then; a journal that cannot be recovered fails the start. A store that fails
        later stops the engine; the store is then opened again as soon as it can
        write (module docstring), `failed` and `storage_failure` saying why
        meanwhile. A fenced-off PostgreSQL store stays failed until a restart.
        """
        task_status.started()
        if self.settings.store_dsn is None:
            tightened = await anyio.to_thread.run_sync(
                ensure_private_directory, self.settings.data_dir
            )
            if tightened:
                logger.warning(
                    orjson.dumps({"event": "data_dir_tightened", "changed": tightened}).decode()
                )
        try:
            while True:
                started = time.perf_counter()
                async with contextlib.AsyncExitStack() as stack:
                    opened = await self._open_store(stack)
                    failure = await self._serve_opened(opened, started, complete_openings)
                    await self._wait_writable(opened, failure)
                self.recoveries += 1
        finally:
            self.ready = False

    async def _open_store(self, stack: contextlib.AsyncExitStack) -> OpenedStore:
        settings = self.settings
        url = self.store_url()
        while True:
            try:
                opened: OpenedStore = await stack.enter_async_context(
                    self.open_store(
                        url,
                        account_capacity=settings.account_capacity,
                        transfer_capacity=settings.transfer_capacity,
                        snapshot_every_entries=settings.snapshot_every_entries,
                        journal_options={"segment_size": settings.journal_segment_size},
                        journal_store_options={
                            "inline_append_max_s": settings.journal_append_on_loop_max_s
                        },
                        pg_options={
                            "owner": f"tally serve pid {os.getpid()}",
                            **settings.pg_options,
                        },
                    )
                )
            except (PgStoreError, JournalWriteError) as error:
                kind = "PostgreSQL" if isinstance(error, PgStoreError) else "journal"
                reason = redact_secrets(str(error))  # a driver's message may quote the DSN
                self.failed = self.storage_failure = f"{kind} store: {reason}"
                logger.error(orjson.dumps({"event": "store_unavailable", "error": reason}).decode())
                await anyio.sleep(STORE_RETRY_S)
                continue
            except Exception as error:
                reason = redact_secrets(str(error))
                self.failed = f"recovery failed: {reason}"
                logger.error(orjson.dumps({"event": "recovery_failed", "error": reason}).decode())
                raise
            self.failed = self.storage_failure = None
            return opened

    async def _serve_opened(
        self, opened: OpenedStore, started: float, complete_openings: Callable[[], Any]
    ) -> str:
        """Run the engine on the opened store until the store fails; why it failed."""
        settings = self.settings
        if settings.prefault and hasattr(opened.ledger, "prefault"):
            await anyio.to_thread.run_sync(opened.ledger.prefault)
        self.store = opened.store
        # A new state for each opening, so nothing of a failed group stays in memory; its
        # tickets go on from the old one's (a ticket taken before stays comparable).
        self.state = StateStore(self.state.staged_ticket)
        self.state.load(
            opened.state,
            now_s=self.now_ns() // NS_PER_S,
            nonce_window_s=settings.nonce_window_s,
        )
        # Services that keep their own records in the state (risk decisions, approvals,
        # parameter versions) rebuild their views from it, before the engine takes rules.
        for loaded in self.on_state_loaded:
            loaded(opened.state)
        engine = Engine(
            opened.ledger,
            opened.store,
            self.rules,
            clock=self.engine_clock,
            queue_size=settings.queue_size,
            linger_s=settings.linger_s,
            retention_s=settings.retention_s,
            failed_retention_s=settings.failed_retention_s,
            expire_interval_s=settings.expire_interval_s,
            state=opened.state,
            state_source=self.state,
            on_store_failure=self._store_failed,
            accrual_rates=self._accrual_rates if settings.accrue_at_day_boundary else None,
        )
        recovery = opened.recovery
        info: dict[str, Any] = {"store": recovery.kind}
        if recovery.kind == "journal":
            info.update(
                records_replayed=recovery.records_replayed,
                transfers_replayed=recovery.transfers_replayed,
                snapshot=recovery.snapshot_path,
            )
        else:
            info.update(epoch=recovery.epoch, entries_replayed=recovery.records_replayed)
        if self.recoveries:
            info["reopened_after_store_failures"] = self.recoveries
        caught: list[BaseException] = []
        try:
            await self._run_engine(engine, started, info, complete_openings)
        except* (PgStoreError, JournalError) as group:
            caught.append(group)
        assert caught, "the engine returned"
        error: BaseException = caught[0]
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        failure = redact_secrets(f"{type(error).__name__}: {error}")
        self.ready = False
        self.engine = None
        if isinstance(error, StoreFenced) or not isinstance(
            error, (PgStoreError, JournalWriteError)
        ):
            self.failed = f"{recovery.kind} store failed, restart needed: {failure}"
            logger.error(orjson.dumps({"event": "store_failed", "error": failure}).decode())
            await anyio.sleep_forever()
        self.failed = self.storage_failure = (
            f"{recovery.kind} store cannot write ({failure}); the server recovers by"
            " itself once it can"
        )
        logger.error(
            orjson.dumps({"event": "store_failed", "error": failure, "recovering": True}).decode()
        )
        return failure

    def _store_failed(self, error: StoreFailed) -> None:
        """The engine's store failed: refuse at once (the engine is still unwinding)."""
        self.ready = False
        reason = redact_secrets(str(error))
        self.failed = self.storage_failure = f"{reason}; the server recovers by itself once it can"

    async def _wait_writable(self, opened: OpenedStore, failure: str) -> None:
        """Wait until the failed store can write again (module docstring), then return so
        that it is closed and opened again."""
        store = opened.store
        check = getattr(store, "check_writable", None)
        while check is not None:
            try:
                await check()
            except JournalWriteError as error:
                self.failed = self.storage_failure = (
                    f"{opened.recovery.kind} store cannot write ({error}); the server"
                    f" recovers by itself once it can (first failure: {failure})"
                )
                await anyio.sleep(STORE_RETRY_S)
                continue
            break
        logger.info(orjson.dumps({"event": "store_writable", "reopening": True}).decode())

    async def _run_engine(
        self,
        engine: Engine,
        started: float,
        info: dict[str, Any],
        complete_openings: Callable[[], Any],
    ) -> None:
        async with anyio.create_task_group() as task_group:
            await task_group.start(engine.serve)
            self.engine = engine
            self.state.attach(
                functools.partial(self.call_engine, engine.submit_state),
                functools.partial(self.call_engine, engine.read, _nothing),
            )
            imported = await self._import_legacy_state()
            if imported is not None:
                info["legacy_state_imported"] = imported
            await self._ensure_internal_accounts()
            await complete_openings()
            self.recovery_info = {**info, "seconds": round(time.perf_counter() - started, 3)}
            self.ready = True
            logger.info(orjson.dumps({"event": "ready", **self.recovery_info}).decode())
            task_group.start_soon(self._serve_housekeeping)
            if self.settings.dayend_automatic:
                from core.services.dayend import DayEnd  # it builds on this module

                await task_group.start(DayEnd(self).serve_automatic)
            await anyio.sleep_forever()

    async def _import_legacy_state(self) -> int | None:
        """Import a legacy `channels-state.jsonl` of the data directory into the store
        once (durably), then rename it `.imported`; the number of records imported."""
        path = os.path.join(self.settings.data_dir, LEGACY_STATE_FILE)
        legacy = await anyio.to_thread.run_sync(read_legacy_file, path)
        if legacy is None:
            return None
        records = legacy_records_to_import(
            legacy,
            now_s=self.now_ns() // NS_PER_S,
            nonce_window_s=self.settings.nonce_window_s,
        )
        # An account after its customer, as at load; bounded changes per entry.
        records.sort(key=lambda record: LEGACY_IMPORT_ORDER.index(record["k"]))
        for index in range(0, len(records), LEGACY_IMPORT_CHUNK):
            await self.state.commit(records[index : index + LEGACY_IMPORT_CHUNK])
        # A crash before the rename imports the same records again: the same keys, the
        # same values, nothing else written in between.
        await anyio.to_thread.run_sync(rename_imported, path)
        logger.info(
            orjson.dumps({"event": "legacy_state_imported", "records": len(records)}).decode()
        )
        return len(records)

    async def _serve_housekeeping(self) -> None:
        """Write staged nonces; now and then forget expired nonces (and, through
        `on_housekeeping`, expired tokens)."""
        state = self.state
        ticks = 0
        while True:
            await anyio.sleep(HOUSEKEEPING_TICK_S)
            await state.flush()
            ticks += 1
            if ticks % TICK_EVERY_TICKS == 0:
                await self._tick(self.now_ns())
            if ticks % PRUNE_EVERY_TICKS == 0:
                now_ns = self.now_ns()
                state.prune_nonces(now_ns // NS_PER_S, self.settings.nonce_window_s)
                for prune in self.on_housekeeping:
                    prune(now_ns)

    async def _tick(self, now_ns: int) -> None:
        """Run the services' once-a-second work (`on_tick`) while the engine runs; one
        that fails is logged and tried again at the next tick, never stops the others."""
        if self.engine is None or not self.engine.running:
            return
        for tick in self.on_tick:
            try:
                await tick(now_ns)
            except Refused as refusal:  # overloaded, storage unavailable: next tick
                logger.warning(
                    orjson.dumps({"event": "tick_refused", "error": str(refusal)}).decode()
                )
            except Exception as error:
                logger.exception(
                    orjson.dumps({"event": "tick_failed", "error": repr(error)}).decode()
                )

    async def flush_at_stop(self) -> None:
        """A clean stop: write what is staged (nonces, deletions) while the engine still
        runs, under a deadline and shielded (the stop is a cancellation)."""
        if self.engine is None or not self.engine.running:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_FLUSH_TIMEOUT_S):
            await self.state.flush()

    async def _ensure_internal_accounts(self) -> None:
        """The bank's own accounts (ledger.constants.INTERNAL_ACCOUNTS: cash vault,
        clearing, settlement, interest expense), created if missing."""
        batch = b"".join(
            pack_account_input(id=account_id, kind=kind, product=INTERNAL_PRODUCT, status=0)
            for account_id, kind in INTERNAL_ACCOUNTS
        )
        results = await self.running_engine().submit_accounts(batch)
        for (account_id, _), code in zip(INTERNAL_ACCOUNTS, results, strict=True):
            if code not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
                raise RuntimeError(
                    f"internal account {account_id}: {CreateAccountResult(code).name.lower()}"
                )


def _nothing(ledger: Any) -> None:
    """A read that reads nothing: the engine answers it once every group before it is
    durable (a barrier)."""
    return None
