"""Two groups in flight on the PostgreSQL store (`begin_group` / `finish_group`).

Group N+1 writes its independent rows on the second connection while N is still
open; it may update the epoch row, the transfers N inserted and COMMIT only
after N's COMMIT returned, and its answers go out only after N's. A planted
delay of N (before any of its statements) lets N+1 run ahead as far as the
store allows: if it could take the epoch row or update N's hold before N
committed, N+1 is refused (StoreFenced, or an UPDATE that finds no row) and
these tests fail. A planted failure of N must leave N+1 unanswered by any
claim of durability (EngineStopped) and absent from PostgreSQL. A connection
of N lost around its COMMIT is resolved while N+1 waits behind it.
"""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg
import pytest

from core.engine import EngineStopped
from core.pg_store import Link, PendingGroup, PgStore, PgStoreError
from ledger.types import CreateTransferResult, TransferFlags
from tests.engine_helpers import transfer
from tests.integration.pg.test_pg_store import fund, open_engine, verify_ok
from tests.pg_helpers import fresh_database_dsn

pytestmark = pytest.mark.pg

R = CreateTransferResult
HOLD_ID, POST_ID = 9_001, 9_002


@pytest.fixture
def pg_dsn() -> str:
    return fresh_database_dsn()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class PlantedStore(PgStore):
    """Delays (or fails) one chosen group; records what overlapped and the commit order."""

    planted_seq: int = -1
    fail: bool = False
    lose: str = ""  # "before" or "after": the planted group's connection drops around COMMIT
    delay_s: float = 0.6
    delaying: anyio.Event
    committed: list[int]
    overlapped: list[tuple[int, bool]]
    seen_during_delay: list[int]

    def begin_group(self, entries: Any, captures: Any) -> PendingGroup:
        tail = self._tail
        pending = super().begin_group(entries, captures)
        self.overlapped.append((pending.first_seq, tail is not None and not tail.done.is_set()))
        return pending

    async def _write_group(self, link: Link, pending: PendingGroup, *, resolving: bool) -> None:
        if pending.first_seq == self.planted_seq and not resolving:
            self.delaying.set()
            await anyio.sleep(self.delay_s)
            # What a reader sees at the end of the delay: the next group is not committed.
            admin = await asyncpg.connect(self.dsn)
            try:
                self.seen_during_delay.append(
                    int(await admin.fetchval("SELECT last_seq FROM tally_epoch"))
                )
            finally:
                await admin.close()
            if self.fail:
                raise PgStoreError("planted failure of this group (test)")
        await super()._write_group(link, pending, resolving=resolving)

    async def _commit(self, link: Link, transaction: Any, first_seq: int) -> None:
        mode = self.lose if first_seq == self.planted_seq else ""
        self.lose = "" if mode else self.lose
        if mode == "before":
            link.connection.terminate()
            raise asyncpg.exceptions.ConnectionDoesNotExistError("lost before COMMIT (test)")
        await super()._commit(link, transaction, first_seq)
        self.committed.append(first_seq)
        if mode == "after":
            link.connection.terminate()
            raise asyncpg.exceptions.ConnectionDoesNotExistError("lost after COMMIT (test)")


async def planted_engine(dsn: str, fail: bool) -> tuple[Any, PlantedStore]:
    engine, store = await open_engine(dsn)
    assert store.inflight_groups == 2
    store.__class__ = PlantedStore
    assert isinstance(store, PlantedStore)
    store.fail = fail
    store.delaying = anyio.Event()
    store.committed, store.overlapped, store.seen_during_delay = [], [], []
    return engine, store


async def hold_then_capture(
    engine: Any, store: PlantedStore, answered: list[str]
) -> dict[str, Any]:
    """Group N (planted: a hold) is delayed in the store; once it is, group N+1 (the hold's
    capture) is submitted. Returns both outcomes; `answered` gets their names in answer order."""
    store.planted_seq = store.last_seq + 1
    outcomes: dict[str, Any] = {}

    async def submit(name: str, body: bytes) -> None:
        outcomes[name] = await engine.submit_transfer(body)
        answered.append(name)

    async with anyio.create_task_group() as clients:
        clients.start_soon(
            submit, "hold", transfer(HOLD_ID, 1, 2, 5_000, flags=TransferFlags.PENDING)
        )
        await store.delaying.wait()
        clients.start_soon(
            submit,
            "post",
            transfer(
                POST_ID, 0, 0, 0, code=0, flags=TransferFlags.POST_PENDING, pending_id=HOLD_ID
            ),
        )
    return outcomes


@pytest.mark.anyio
async def test_the_next_group_commits_and_is_answered_only_after_the_one_before(
    pg_dsn: str,
) -> None:
    """N (a hold) is delayed before its first statement; N+1 (the hold's capture) is
    begun meanwhile on the other connection. N+1 commits after N, is answered after
    N, and its UPDATE of N's hold finds the row; the tables verify."""
    engine, store = await planted_engine(pg_dsn, fail=False)
    answered: list[str] = []
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 4, 1_000_000)
        outcomes = await hold_then_capture(engine, store, answered)
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    await store.close()
    assert outcomes["hold"].result == R.OK and outcomes["post"].result == R.OK
    planted = store.planted_seq
    assert (planted + 1, True) in store.overlapped, "the next group was not begun in flight"
    assert store.seen_during_delay == [planted - 1], "a group committed before the one before it"
    assert store.committed == sorted(store.committed)
    assert store.committed.index(planted) < store.committed.index(planted + 1)
    assert answered == ["hold", "post"]
    report = await verify_ok(pg_dsn)
    assert report.digest == digest


@pytest.mark.anyio
async def test_a_failed_group_leaves_the_next_one_unwritten_and_unanswered(
    pg_dsn: str,
) -> None:
    """N fails after N+1 was begun and wrote its rows: N+1 rolls back, its caller gets
    EngineStopped, PostgreSQL holds neither, and a restarted engine has neither."""
    engine, store = await planted_engine(pg_dsn, fail=True)
    outcomes: dict[str, Any] = {}
    with pytest.raises(BaseExceptionGroup) as raised:
        async with anyio.create_task_group() as task_group:
            await task_group.start(engine.serve)
            await fund(engine, 1, 4, 1_000_000)
            before = store.last_seq
            store.planted_seq = before + 1

            async def submit(name: str, body: bytes) -> None:
                try:
                    outcomes[name] = await engine.submit_transfer(body)
                except EngineStopped as error:
                    outcomes[name] = error

            async with anyio.create_task_group() as clients:
                clients.start_soon(submit, "first", transfer(9_101, 1, 2, 700))
                await store.delaying.wait()
                clients.start_soon(submit, "second", transfer(9_102, 2, 3, 300))
    await store.close()
    assert raised.group_contains(PgStoreError)
    assert isinstance(outcomes["first"], EngineStopped)
    assert isinstance(outcomes["second"], EngineStopped)
    assert (before + 2, True) in store.overlapped, "the next group was not begun in flight"
    assert [seq for seq in store.committed if seq > before] == []
    report = await verify_ok(pg_dsn)
    assert report.last_seq == before
    connection = await asyncpg.connect(pg_dsn)
    try:
        stored = await connection.fetchval(
            "SELECT count(*) FROM tally_transfer_records WHERE id_lo IN (9101, 9102)"
        )
    finally:
        await connection.close()
    assert stored == 0
    engine, store = await open_engine(pg_dsn)
    await store.close()
    assert engine.ledger.lookup_transfer(9_101) is None
    assert engine.ledger.lookup_transfer(9_102) is None


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["before", "after"])
async def test_a_lost_commit_is_resolved_while_the_next_group_waits(pg_dsn: str, mode: str) -> None:
    """N's connection drops around its COMMIT while N+1 is in flight on the other one:
    N is resolved by reading the epoch row back (rewritten, or found committed), N+1
    commits after it, both are answered OK, and the tables verify."""
    engine, store = await planted_engine(pg_dsn, fail=False)
    store.lose = mode
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 4, 1_000_000)
        outcomes = await hold_then_capture(engine, store, [])
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    await store.close()
    assert outcomes["hold"].result == R.OK and outcomes["post"].result == R.OK
    planted = store.planted_seq
    assert (planted + 1, True) in store.overlapped, "the next group was not begun in flight"
    if mode == "after":
        assert store.stats.resolved_committed == 1 and store.stats.resolved_rewritten == 0
    else:
        assert store.stats.resolved_committed == 0 and store.stats.resolved_rewritten == 1
    assert store.committed.index(planted + 1) == len(store.committed) - 1
    report = await verify_ok(pg_dsn)
    assert report.digest == digest
