"""`Engine.submit_generated`: entries formed in the apply stage from the state of that moment."""

from __future__ import annotations

import anyio
import pytest

from core.engine import Engine, EngineFull
from core.entries import EntryKind
from ledger.kernel import KernelLedger
from ledger.records import account_view
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


def new_engine(store: ListStore, transfer_capacity: int = 1 << 16) -> Engine:
    ledger = KernelLedger(account_capacity=4096, transfer_capacity=transfer_capacity)
    return Engine(ledger, store, example_rules(), clock=FrozenClock())


async def open_and_fund(engine: Engine, count: int, amount: int) -> None:
    assert set(await engine.submit_accounts(clearing_account())) == {0}
    assert set(await engine.submit_accounts(class_ii_accounts(1, count))) == {0}
    for i in range(count):
        outcome = await engine.submit_transfer(
            transfer(10_000_000 + i, CLEARING_ID, 1 + i, amount, TransferCode.TOPUP_BOUND)
        )
        assert outcome.result == CreateTransferResult.OK


def credit_balance(ledger: object, account_id: int) -> int:
    raw = ledger.lookup_account(account_id)  # type: ignore[attr-defined]
    assert raw is not None
    view = account_view(raw)
    return int(view.credits_posted - view.debits_posted)


def sweep_all(account_ids: list[int], target: int, first_transfer_id: int) -> object:
    """A `make` that moves each account's whole balance, as it is when applied, to target."""

    def make(ledger: object) -> tuple[EntryKind, int, bytes, int] | None:
        parts = []
        for index, account_id in enumerate(account_ids):
            balance = credit_balance(ledger, account_id)
            if balance > 0:
                parts.append(transfer(first_transfer_id + index, account_id, target, balance))
        if not parts:
            return None
        return EntryKind.CREATE_TRANSFERS, len(parts), b"".join(parts), len(parts)

    return make


@pytest.mark.anyio
async def test_generated_entry_sees_what_was_queued_before_it_and_replays() -> None:
    """A generated entry is formed from the state after every request queued before it
    (here a transfer queued, not yet answered, when it was submitted): it sweeps that
    transfer's money too; it is journaled with strictly increasing timestamps, and the
    journaled entries replay to the engine's state."""
    store = ListStore()
    engine = new_engine(store)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await open_and_fund(engine, 3, 10_000)
        queued = engine.enqueue_transfers(transfer(55, 1, 2, 2_500))
        outcome = await engine.submit_generated(sweep_all([2], 3, 900))
        await queued.done.wait()
        balances = await engine.read(lambda ledger: [credit_balance(ledger, i) for i in (1, 2, 3)])
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    results, timestamps, _balances = outcome
    assert list(results[:1]) == [CreateTransferResult.OK]
    assert balances == [7_500, 0, 22_500]  # 10,000 + the queued 2,500 swept to account 3
    generated = [e for e in store.entries if e.kind == EntryKind.CREATE_TRANSFERS][-1]
    assert generated.count == 1 and timestamps[0] == generated.timestamp_first
    firsts = [e.timestamp_first for e in store.entries]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)
    assert replay(store.entries).digest() == digest
    assert replay(store.entries, "reference").digest() == digest


@pytest.mark.anyio
async def test_nothing_to_do_journals_nothing_and_a_failing_make_stays_its_callers() -> None:
    """`make` returning None answers None and journals nothing; `make` raising raises in
    its caller only: the engine keeps serving the next request."""
    store = ListStore()
    engine = new_engine(store)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await open_and_fund(engine, 2, 1_000)
        entries_before = len(store.entries)
        assert await engine.submit_generated(lambda ledger: None) is None
        assert len(store.entries) == entries_before

        def broken(ledger: object) -> None:
            raise LookupError("no such thing")

        with pytest.raises(LookupError, match="no such thing"):
            await engine.submit_generated(broken)
        assert engine.running
        outcome = await engine.submit_transfer(transfer(77, 1, 2, 10))
        task_group.cancel_scope.cancel()
    assert outcome.result == CreateTransferResult.OK
    assert len(store.entries) == entries_before + 1


@pytest.mark.anyio
async def test_generated_entries_in_a_stream_of_transfers_keep_order() -> None:
    """Generated requests interleaved with concurrent transfers: every generated entry is
    journaled alone, in submission order relative to the transfers that were queued
    before it, and the whole journal replays to the engine's state."""
    store = ListStore()
    engine = new_engine(store)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await open_and_fund(engine, 10, 100_000)

        async def client(worker: int) -> None:
            for i in range(30):
                await engine.submit_transfer(
                    transfer(1_000_000 + worker * 100 + i, 1 + worker, 1 + (worker + 1) % 9, 7)
                )

        swept: list[object] = []
        async with anyio.create_task_group() as clients:
            for worker in range(9):
                clients.start_soon(client, worker)
            for round_index in range(5):
                swept.append(await engine.submit_generated(sweep_all([10], 1, 5000 + round_index)))
                await engine.submit_transfer(transfer(6000 + round_index, 1, 10, 100))
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    assert swept[0] is not None and all(outcome is not None for outcome in swept)
    firsts = [e.timestamp_first for e in store.entries]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)
    assert replay(store.entries).digest() == digest


@pytest.mark.anyio
async def test_a_generated_entry_too_big_for_the_log_is_engine_full_and_not_journaled() -> None:
    """A generated transfers entry the kernel refuses for the log's capacity (before
    changing anything) is answered EngineFull and journals no posting (only the eviction
    the log's pressure asked for first, as before any transfers entry)."""
    store = ListStore()
    engine = new_engine(store, transfer_capacity=64)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await open_and_fund(engine, 2, 1_000)
        entries_before = len(store.entries)

        def too_many(ledger: object) -> tuple[EntryKind, int, bytes, int]:
            parts = b"".join(transfer(90_000 + i, 1, 2, 1) for i in range(200))
            return EntryKind.CREATE_TRANSFERS, 200, parts, 200

        with pytest.raises(EngineFull):
            await engine.submit_generated(too_many)
        assert engine.running
        task_group.cancel_scope.cancel()
    kinds = {entry.kind for entry in store.entries[entries_before:]}
    assert kinds <= {EntryKind.EVICT, EntryKind.EVICT_FAILED}
