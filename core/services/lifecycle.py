"""The services' runtime: recover or open the store, run the engine, keep house.

`Lifecycle.serve` brings the core up in the order recovery needs (journal
open and torn-tail repair, ledger rebuilt from snapshot + journal, customer
state replayed, engine started, the bank's internal accounts ensured,
account openings whose ledger half was lost in a crash completed) and only
then sets `ready`. Until then every service refuses with `NOT_READY`.

The journal is opened through `open_journal` (a constructor argument), the
seam where the store-neutral `open_store(url)` will plug in.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from anyio.abc import TaskStatus

from core.engine import Engine, EngineFull, EngineOverloaded, EngineStopped
from core.journal import Journal
from core.replay import recover_ledger
from core.services import passwords
from core.services.records import NS_PER_S, account_input
from core.services.refusals import Code, Refused, refused
from core.services.state import StateStore
from ledger.types import AccountKind, CreateAccountResult
from limits.rules import RuleSet

logger = logging.getLogger("tally.services")

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
HOUSEKEEPING_TICK_S = 0.05
PRUNE_EVERY_TICKS = 200


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
    snapshot_every_entries: int = 0
    prefault: bool = False
    store_dsn: str | None = None  # postgresql://...: the PostgreSQL store, not the journal
    # How long a posted transfer stays in the log (and a retry meets it by id) before it
    # may be evicted to make room: a log of `transfer_capacity` must hold this much.
    retention_s: float = 86_400.0


def engine_refusal(error: EngineOverloaded | EngineFull | EngineStopped) -> Refused:
    """An engine refusal as a service refusal (overloaded: retry after the engine's hint)."""
    if isinstance(error, EngineOverloaded):
        return refused(Code.OVERLOADED, retry_after_s=error.retry_after_s)
    return refused(Code.UNAVAILABLE, str(error))


class Lifecycle:
    """The engine, its store and the customer state, and whether they are ready."""

    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        open_journal: Callable[[str], Any] = Journal.open,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.now_ns = now_ns
        self.open_journal = open_journal
        self.engine: Engine | None = None
        self.journal: Any = None  # the store whose commit latency /metrics reports
        self.state: StateStore | None = None
        self.ready = False
        self.failed: str | None = None
        self.recovery_info: dict[str, Any] = {}
        self.on_housekeeping: list[Callable[[int], None]] = []  # called with now_ns

    # --- what services use ------------------------------------------------------

    def running_engine(self) -> Engine:
        if self.engine is None:
            raise refused(Code.NOT_READY, "the server is still recovering")
        return self.engine

    def customer_state(self) -> StateStore:
        assert self.state is not None
        return self.state

    def today(self) -> int:
        return self.rules.business_day(self.now_ns())

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

    async def serve(
        self,
        complete_openings: Callable[[], Any],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Recover, start the engine, then run until cancelled. Ready once recovered;
        `complete_openings` (a coroutine function) runs once the engine does."""
        task_status.started()
        if self.settings.store_dsn:
            await self._serve_pg(self.settings.store_dsn, complete_openings)
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
        engine = Engine(
            recovered.ledger,
            journal,
            self.rules,
            queue_size=settings.queue_size,
            linger_s=settings.linger_s,
            retention_s=settings.retention_s,
            snapshot_directory=settings.data_dir if settings.snapshot_every_entries else None,
            snapshot_every_entries=settings.snapshot_every_entries,
        )
        info = {
            "records_replayed": recovered.records_replayed,
            "transfers_replayed": recovered.transfers_replayed,
            "snapshot": recovered.snapshot_path,
        }
        try:
            await self._run_engine(engine, started, info, complete_openings)
        finally:
            self.ready = False
            if self.state is not None:
                with anyio.CancelScope(shield=True):
                    await self.state.flush()
                self.state.close()
            journal.close()

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
            await self._ensure_internal_accounts()
            await complete_openings()
            self.recovery_info = {**info, "seconds": round(time.perf_counter() - started, 3)}
            self.ready = True
            logger.info(orjson.dumps({"event": "ready", **self.recovery_info}).decode())
            task_group.start_soon(self._serve_housekeeping)
            await anyio.sleep_forever()

    async def _serve_pg(self, dsn: str, complete_openings: Callable[[], Any]) -> None:
        """`serve` on the PostgreSQL store (core/pg_store.py); the customer state stays in
        the data directory. A store that cannot be reached at start is retried (not ready
        until then); a store that fails later stops the engine: every service refuses and
        `failed` says why, until the process is restarted."""
        from core.pg_store import PgStoreError, open_pg_store

        settings = self.settings
        started = time.perf_counter()
        self.state = await anyio.to_thread.run_sync(self._open_state)
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
            info = {
                "store": "postgresql",
                "epoch": opened.store.epoch,
                "entries_replayed": opened.store.last_seq,
            }
            try:
                await self._run_engine(engine, started, info, complete_openings)
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

    def _open_state(self) -> StateStore:
        return StateStore.open(
            self.settings.data_dir,
            now_s=self.now_ns() // NS_PER_S,
            nonce_window_s=self.settings.nonce_window_s,
        )

    def _recover_sync(self) -> tuple[Any, Any]:
        settings = self.settings
        journal = self.open_journal(settings.data_dir)
        try:
            recovered = recover_ledger(
                settings.data_dir, settings.account_capacity, settings.transfer_capacity
            )
            if settings.prefault and hasattr(recovered.ledger, "prefault"):
                recovered.ledger.prefault()
            self.state = self._open_state()
        except BaseException:
            journal.close()
            raise
        return journal, recovered

    async def _serve_housekeeping(self) -> None:
        """Write staged nonces; now and then forget expired nonces (and, through
        `on_housekeeping`, expired tokens)."""
        state = self.customer_state()
        ticks = 0
        while True:
            await anyio.sleep(HOUSEKEEPING_TICK_S)
            await state.flush()
            ticks += 1
            if ticks % PRUNE_EVERY_TICKS == 0:
                now_ns = self.now_ns()
                state.prune_nonces(now_ns // NS_PER_S, self.settings.nonce_window_s)
                for prune in self.on_housekeeping:
                    prune(now_ns)

    async def _ensure_internal_accounts(self) -> None:
        batch = b"".join(
            account_input(account_id, 0, kind, 0, 0, INTERNAL_PRODUCT)
            for account_id, kind in INTERNAL_ACCOUNTS
        )
        results = await self.running_engine().submit_accounts(batch)
        for (account_id, _), code in zip(INTERNAL_ACCOUNTS, results, strict=True):
            if code not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
                raise RuntimeError(
                    f"internal account {account_id}: {CreateAccountResult(code).name.lower()}"
                )
