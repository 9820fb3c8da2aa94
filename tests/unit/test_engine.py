"""The engine on both anyio backends: batching, durability order, overload, determinism."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

from core.engine import Engine, EngineOverloaded, StoreFailed
from core.entries import EntryKind
from core.journal import Journal
from core.journal_store import JournalStore
from core.replay import recover_ledger
from ledger.kernel import KernelLedger
from ledger.types import CreateTransferResult, TransferCode
from tests.engine_helpers import (
    CLEARING_ID,
    FrozenClock,
    ListStore,
    class_ii_accounts,
    clearing_account,
    example_rules,
    replay,
    transfer,
)

BACKENDS = ["asyncio", "trio"]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new_engine(store: ListStore, **options: object) -> Engine:
    ledger = KernelLedger(account_capacity=4096, transfer_capacity=1 << 16)
    return Engine(ledger, store, example_rules(), clock=FrozenClock(), **options)  # type: ignore[arg-type]


async def fund(engine: Engine, first_id: int, count: int, amount: int) -> None:
    assert set(await engine.submit_accounts(clearing_account())) == {0}
    assert set(await engine.submit_accounts(class_ii_accounts(first_id, count))) == {0}
    for i in range(count):
        outcome = await engine.submit_transfer(
            transfer(10_000_000 + i, CLEARING_ID, first_id + i, amount, TransferCode.TOPUP_BOUND)
        )
        assert outcome.result == CreateTransferResult.OK


@pytest.mark.anyio
async def test_concurrent_single_submits_are_batched_and_replay_exactly() -> None:
    """Many tasks each posting one transfer get their own results; the store's
    entries, replayed on the kernel and on the reference, rebuild the same state."""
    store = ListStore()
    engine = new_engine(store)
    outcomes: dict[int, int] = {}
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 50, 100_000)

        async def client(worker: int) -> None:
            for i in range(40):
                transfer_id = 1_000_000 + worker * 1000 + i
                outcome = await engine.submit_transfer(
                    transfer(transfer_id, 1 + worker, 1 + (worker + i + 1) % 50, 100 + i)
                )
                outcomes[transfer_id] = outcome.result
                assert outcome.timestamp > 0

        async with anyio.create_task_group() as clients:
            for worker in range(50):
                clients.start_soon(client, worker)
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    assert len(outcomes) == 2000 and set(outcomes.values()) == {CreateTransferResult.OK}
    transfer_entries = [e for e in store.entries if e.kind == 2]
    assert len(transfer_entries) < 2000 + 50, "single submits were not batched at all"
    assert replay(store.entries, "kernel").digest() == digest
    assert replay(store.entries, "reference").digest() == digest


@pytest.mark.anyio
async def test_retry_returns_first_answer() -> None:
    """A retried transfer id returns `exists` with the first timestamp, posting nothing twice."""
    store = ListStore()
    engine = new_engine(store)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 2, 50_000)
        first = await engine.submit_transfer(transfer(77, 1, 2, 1_000))
        again = await engine.submit_transfer(transfer(77, 1, 2, 1_000))
        changed = await engine.submit_transfer(transfer(77, 1, 2, 2_000))
        task_group.cancel_scope.cancel()
    assert first.result == CreateTransferResult.OK
    assert again.result == CreateTransferResult.EXISTS and again.timestamp == first.timestamp
    assert changed.result == CreateTransferResult.EXISTS_WITH_DIFFERENT_AMOUNT


@pytest.mark.anyio
async def test_answers_and_reads_wait_for_durability() -> None:
    """Neither the answer to a transfer nor a later read is released before the store
    has the batch: with the store blocked, both stay pending; once it opens, both come."""
    gate = threading.Event()
    gate.set()
    store = ListStore(gate)
    engine = new_engine(store)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 2, 50_000)
        gate.clear()
        answered: list[str] = []

        async def post() -> None:
            await engine.submit_transfer(transfer(5, 1, 2, 700))
            answered.append("transfer")

        async def read_balance() -> None:
            await anyio.sleep(0.05)
            balance = await engine.read(lambda ledger: ledger.lookup_account(2))
            assert balance is not None
            answered.append("read")

        async with anyio.create_task_group() as waiters:
            waiters.start_soon(post)
            waiters.start_soon(read_balance)
            await anyio.sleep(0.3)
            assert answered == [], "answered before the batch was durable"
            await anyio.to_thread.run_sync(gate.set)
        task_group.cancel_scope.cancel()
    assert sorted(answered) == ["read", "transfer"]


@pytest.mark.anyio
async def test_full_queue_answers_overloaded_immediately() -> None:
    """With the store stalled and a tiny queue, further submits fail at once with
    EngineOverloaded (the HTTP layer's 503 + Retry-After) instead of queueing forever."""
    gate = threading.Event()
    gate.set()
    store = ListStore(gate)
    engine = new_engine(store, queue_size=4)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 2, 50_000)
        gate.clear()
        overloaded = 0
        async with anyio.create_task_group() as clients:

            async def client(i: int) -> None:
                nonlocal overloaded
                try:
                    await engine.submit_transfer(transfer(100 + i, 1, 2, 1))
                except EngineOverloaded as error:
                    assert error.retry_after_s > 0
                    overloaded += 1

            for i in range(64):
                clients.start_soon(client, i)
            await anyio.sleep(0.2)
            assert overloaded > 0
            await anyio.to_thread.run_sync(gate.set)
        task_group.cancel_scope.cancel()


async def stream_digest() -> str:
    store = ListStore()
    engine = new_engine(store)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 10, 10_000)
        for i in range(200):
            await engine.submit_transfer(transfer(500 + i, 1 + i % 10, 1 + (i * 7 + 1) % 10, 37))
        digest: str = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    assert replay(store.entries).digest() == digest
    return digest


def test_same_stream_same_digest_on_both_backends() -> None:
    """The same command stream gives the same state digest on asyncio and on trio,
    and the same again when the stored entries are replayed."""
    digests = {backend: anyio.run(stream_digest, backend=backend) for backend in BACKENDS}
    assert digests["asyncio"] == digests["trio"]


@pytest.mark.anyio
async def test_history_pages_with_a_cursor_on_both_ledgers() -> None:
    """An account's history comes newest first in pages; the last seq of a page is the
    cursor of the next; kernel and reference ledgers page identically."""
    store = ListStore()
    engine = new_engine(store)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 3, 100_000)
        for i in range(25):
            await engine.submit_transfer(transfer(900 + i, 1 + i % 2, 3, 10 + i))
        pages: list[list[int]] = []
        cursor = -1
        while True:
            page = await engine.read(
                lambda ledger, cursor=cursor: ledger.account_history(3, cursor, 10)
            )
            if not page:
                break
            pages.append([seq for seq, _ in page])
            cursor = page[-1][0]
        task_group.cancel_scope.cancel()
    seqs = [seq for page in pages for seq in page]
    assert [len(page) for page in pages] == [10, 10, 6]  # 25 transfers + its funding
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 26
    reference = replay(store.entries, "reference")
    assert [seq for seq, _ in reference.account_history(3, -1, 100)] == seqs


@pytest.mark.anyio
async def test_engine_on_the_journal_recovers_the_same_state(tmp_path: Path) -> None:
    """With the real journal as store, recovery from the data directory rebuilds a
    ledger whose digest equals the engine's after its last answer."""
    journal = Journal.open(tmp_path)
    ledger = KernelLedger(account_capacity=4096, transfer_capacity=1 << 16)
    engine = Engine(ledger, JournalStore(journal), example_rules(), clock=FrozenClock())
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 20, 50_000)
        for i in range(300):
            await engine.submit_transfer(transfer(7000 + i, 1 + i % 20, 1 + (i + 3) % 20, 11))
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    journal.close()
    assert recover_ledger(tmp_path, 4096, 1 << 16).ledger.digest() == digest


class _Staged:
    """A state source with one staged change at a time (the customer state's role)."""

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, bytes | None]] = []
        self.staged = 0
        self.durable_ticket = 0

    def stage(self, key: bytes) -> int:
        self.pending.append((key, b"1"))
        self.staged += 1
        return self.staged

    def drain(self) -> tuple[list[tuple[bytes, bytes | None]], int] | None:
        if not self.pending:
            return None
        pending, self.pending = self.pending, []
        return pending, self.staged

    def durable(self, ticket: int) -> None:
        self.durable_ticket = max(self.durable_ticket, ticket)


class _FailingStore(ListStore):
    """Fails every group once `fail` is set: a disk that filled up."""

    fail = False

    def append(self, entries: object) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        super().append(entries)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_staged_state_rides_with_the_group_and_a_store_failure_is_reported() -> None:
    """A change staged before a posting is in the PUT_STATE entry of the posting's group
    and marked durable by the time the posting is answered (no write of its own); when the
    store fails, the group's caller gets StoreFailed, the owner is told at once, the staged
    change is not marked durable and later requests are refused with StoreFailed too."""
    store = _FailingStore()
    staged = _Staged()
    failures: list[StoreFailed] = []
    engine = new_engine(store, state_source=staged, on_store_failure=failures.append)
    with pytest.raises(ExceptionGroup):
        async with anyio.create_task_group() as tg:
            await tg.start(engine.serve)
            await fund(engine, 1, 1, 100)
            appends = store.appends
            ticket = staged.stage(b"nonces/1")
            outcome = await engine.submit_transfer(
                transfer(1, 1, CLEARING_ID, 10, TransferCode.TRANSFER)
            )
            assert outcome.result == CreateTransferResult.OK
            assert staged.durable_ticket == ticket and store.appends == appends + 1
            assert engine.state[b"nonces/1"] == b"1"
            store.fail = True
            lost = staged.stage(b"nonces/2")
            with pytest.raises(StoreFailed):
                await engine.submit_transfer(transfer(2, 1, CLEARING_ID, 10, TransferCode.TRANSFER))
            assert len(failures) == 1 and staged.durable_ticket < lost
            with pytest.raises(StoreFailed):
                engine.enqueue_transfers(transfer(3, 1, CLEARING_ID, 10, TransferCode.TRANSFER))
            await anyio.sleep_forever()  # the engine's failure ends the task group


@pytest.mark.anyio
async def test_failures_and_old_postings_are_evicted_by_age_and_replay_exactly() -> None:
    """Failures live in the failure ring, never the log. Once the clock passes the failure
    retention (10 s here) the engine journals an EVICT_FAILED before the next batch, and
    past the retention (20 s) an EVICT: the failed id then posts afresh, and the entries
    replay to the same state on both twins."""
    store = ListStore()
    clock = FrozenClock()
    ledger = KernelLedger(account_capacity=4096, transfer_capacity=1 << 16)
    engine = Engine(
        ledger, store, example_rules(), clock=clock, retention_s=20.0, failed_retention_s=10.0
    )  # type: ignore[arg-type]
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 2, 50_000)
        too_much = await engine.submit_transfer(transfer(88, 1, 2, 10_000_000))
        assert too_much.result == CreateTransferResult.EXCEEDS_CREDITS
        log_count = ledger.log_count
        assert (ledger.failed_tail, ledger.failed_count) == (0, 1)
        clock.now += 15 * 1_000_000_000
        fine = await engine.submit_transfer(transfer(89, 1, 2, 1_000))
        assert fine.result == CreateTransferResult.OK and ledger.log_count == log_count + 1
        assert (ledger.failed_tail, ledger.failed_count) == (1, 1)  # forgotten by age
        again = await engine.submit_transfer(transfer(88, 1, 2, 10_000))  # the id is free
        assert again.result == CreateTransferResult.OK
        clock.now += 30 * 1_000_000_000
        await engine.submit_transfer(transfer(90, 1, 2, 1_000))
        assert ledger.log_tail > 0  # the postings past the retention were evicted
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    kinds = [entry.kind for entry in store.entries]
    assert EntryKind.EVICT_FAILED in kinds and EntryKind.EVICT in kinds
    assert replay(store.entries, "kernel").digest() == digest
    assert replay(store.entries, "reference").digest() == digest
