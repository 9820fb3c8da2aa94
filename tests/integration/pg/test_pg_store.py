"""The engine on the PostgreSQL store, against a real server the fixture starts.

The essentials of the engine suite (posting, retries answered `exists`, reads
after durability, recovery to the same digest) plus what only this store has:
migrations under a lock, the row tables checked by `verify`, fencing epochs,
commit outcomes resolved by reading back, and the unreplicated-commit warning.
"""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg
import pytest

from core.engine import Engine, EngineStopped
from core.pg_schema import current_version, latest_version, migrate
from core.pg_store import (
    CommitUnsafe,
    Link,
    PgStore,
    StoreFenced,
    open_pg_store,
    verify,
)
from ledger.types import CreateTransferResult, TransferCode, TransferFlags
from tests.engine_helpers import (
    CLEARING_ID,
    class_ii_accounts,
    clearing_account,
    example_rules,
    transfer,
)
from tests.pg_helpers import fresh_database_dsn

pytestmark = pytest.mark.pg

R = CreateTransferResult
ACCOUNTS = 4096
TRANSFERS = 1 << 16


@pytest.fixture
def pg_dsn() -> str:
    return fresh_database_dsn()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg is an asyncio driver


async def open_engine(dsn: str, **options: Any) -> tuple[Engine, PgStore]:
    opened = await open_pg_store(
        dsn, account_capacity=ACCOUNTS, transfer_capacity=TRANSFERS, **options
    )
    engine = Engine(opened.ledger, opened.store, example_rules(), linger_s=0.0005)
    return engine, opened.store


async def fund(engine: Engine, first_id: int, count: int, amount: int) -> None:
    assert set(await engine.submit_accounts(clearing_account())) <= {0, 18}
    assert set(await engine.submit_accounts(class_ii_accounts(first_id, count))) <= {0, 18}
    for i in range(count):
        outcome = await engine.submit_transfer(
            transfer(10_000_000 + i, CLEARING_ID, first_id + i, amount, TransferCode.TOPUP_BOUND)
        )
        assert outcome.result in (R.OK, R.EXISTS)


async def verify_ok(dsn: str) -> Any:
    connection = await asyncpg.connect(dsn)
    try:
        report = await verify(connection, ACCOUNTS, TRANSFERS)
    finally:
        await connection.close()
    assert report.ok, report.as_dict()
    return report


@pytest.mark.anyio
async def test_migrations_apply_once_even_when_two_engines_start_together(pg_dsn: str) -> None:
    """Two connections migrating at the same moment: the advisory lock serializes them,
    every migration is applied exactly once, and a third run applies nothing."""
    first = await asyncpg.connect(pg_dsn)
    second = await asyncpg.connect(pg_dsn)
    applied: list[list[int]] = []

    async def run(connection: Any) -> None:
        applied.append(await migrate(connection))

    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(run, first)
            task_group.start_soon(run, second)
        assert sorted(applied, key=len) == [[], list(range(1, latest_version() + 1))]
        assert await migrate(first) == []
        assert await current_version(first) == latest_version()
    finally:
        await first.close()
        await second.close()


@pytest.mark.anyio
async def test_posting_retries_reads_and_recovery(pg_dsn: str) -> None:
    """Concurrent single transfers are batched into group transactions; a retry answers
    `exists` with the first timestamp; a read sees the durable balance; after a restart
    the ledger rebuilt from PostgreSQL has the same digest, and verify finds the
    accounts table equal to the sums of the transfers and to the kernel's rows."""
    engine, store = await open_engine(pg_dsn)
    outcomes: dict[int, int] = {}
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 40, 1_000_000)

        async def client(worker: int) -> None:
            for i in range(30):
                transfer_id = 1_000_000 + worker * 1000 + i
                outcome = await engine.submit_transfer(
                    transfer(transfer_id, 1 + worker, 1 + (worker + i + 1) % 40, 100 + i)
                )
                outcomes[transfer_id] = outcome.result

        async with anyio.create_task_group() as clients:
            for worker in range(40):
                clients.start_soon(client, worker)
        first = await engine.submit_transfer(transfer(77, 1, 2, 1_000))
        again = await engine.submit_transfer(transfer(77, 1, 2, 1_000))
        changed = await engine.submit_transfer(transfer(77, 1, 2, 2_000))
        account = await engine.read(lambda ledger: ledger.lookup_account(2))
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    await store.close()
    assert set(outcomes.values()) == {R.OK} and len(outcomes) == 1200
    assert store.stats.commit_count < 1200, "single submits were not grouped into transactions"
    assert first.result == R.OK
    assert again.result == R.EXISTS and again.timestamp == first.timestamp
    assert changed.result == R.EXISTS_WITH_DIFFERENT_AMOUNT
    assert account is not None
    report = await verify_ok(pg_dsn)
    assert report.digest == digest and report.transfers >= 1241

    engine, store = await open_engine(pg_dsn)
    assert engine.ledger.digest() == digest
    assert store.epoch == 2
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        retried = await engine.submit_transfer(transfer(77, 1, 2, 1_000))
        task_group.cancel_scope.cancel()
    await store.close()
    assert (retried.result, retried.timestamp) == (R.EXISTS, first.timestamp)


@pytest.mark.anyio
async def test_holds_posts_voids_expiry_and_reversals_update_existing_rows(pg_dsn: str) -> None:
    """Holds that are captured, voided or expire and transfers that are reversed change
    rows written by earlier groups: the set-based UPDATE keeps the table equal to the
    kernel (verify), and a restart rebuilds the same digest."""
    engine, store = await open_engine(pg_dsn)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 10, 1_000_000)
        for i in range(10):
            hold = await engine.submit_transfer(
                transfer(
                    500 + i,
                    1 + i,
                    1 + (i + 1) % 10,
                    10_000,
                    flags=TransferFlags.PENDING,
                    timeout_s=3600 if i < 8 else 1,
                )
            )
            assert hold.result == R.OK
        for i in range(3):
            post = await engine.submit_transfer(
                transfer(
                    600 + i, 0, 0, 0, code=0, flags=TransferFlags.POST_PENDING, pending_id=500 + i
                )
            )
            assert post.result == R.OK, post
        for i in range(3, 6):
            void = await engine.submit_transfer(
                transfer(
                    600 + i, 0, 0, 0, code=0, flags=TransferFlags.VOID_PENDING, pending_id=500 + i
                )
            )
            assert void.result == R.OK, void
        paid = await engine.submit_transfer(transfer(700, 3, 4, 5_000))
        assert paid.result == R.OK
        reversal = await engine.submit_transfer(
            transfer(701, 4, 3, 2_000, code=TransferCode.REVERSAL, pending_id=700)
        )
        assert reversal.result == R.OK, reversal
        # A hold and its capture in the same group: the new row is written once, captured.
        async with anyio.create_task_group() as same_group:
            same_group.start_soon(
                engine.submit_transfers,
                transfer(800, 5, 6, 1_000, flags=TransferFlags.PENDING, timeout_s=60)
                + transfer(801, 0, 0, 0, code=0, flags=TransferFlags.POST_PENDING, pending_id=800),
            )
        await anyio.sleep(1.5)  # the two 1-second holds expire (expire_interval_s = 1)
        await engine.submit_transfer(transfer(900, 7, 8, 1))
        await engine.wait_durable()
        digest = await engine.read(lambda ledger: ledger.digest())
        pending = await engine.read(lambda ledger: ledger.account_pending(10))
        task_group.cancel_scope.cancel()
    await store.close()
    assert pending == (0, 0), "the 1-second holds of account 10 did not expire"
    report = await verify_ok(pg_dsn)
    assert report.digest == digest
    engine, store = await open_engine(pg_dsn)
    assert engine.ledger.digest() == digest
    await store.close()


async def versions_count(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM tally_account_versions"))
    finally:
        await connection.close()


@pytest.mark.anyio
async def test_account_versions_compact_even_while_a_reader_holds_them(pg_dsn: str) -> None:
    """Groups append account versions and every few dozen rows one compacts them into
    tally_accounts_compacted: the view tally_accounts equals the kernel (verify) before
    and after. A compaction while a reader holds the versions table does not wait for
    it (DELETE instead of TRUNCATE: the engine would otherwise hang on its own reader);
    versions left at shutdown are compacted by the next start, same digest."""
    engine, store = await open_engine(pg_dsn, compact_versions_max=30)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 20, 1_000_000)
        compactions = store.stats.compactions
        assert compactions >= 1
        reader = await asyncpg.connect(pg_dsn)
        try:
            async with reader.transaction(isolation="repeatable_read"):
                before = await reader.fetchval("SELECT sum(credits_posted) FROM tally_accounts")
                with anyio.fail_after(30):
                    for i in range(60):
                        outcome = await engine.submit_transfer(
                            transfer(2_000 + i, 1 + i % 20, 1 + (i + 7) % 20, 10 + i)
                        )
                        assert outcome.result == R.OK
                assert store.stats.compactions > compactions, "no compaction under the reader"
                assert (
                    await reader.fetchval("SELECT sum(credits_posted) FROM tally_accounts")
                    == before
                )
        finally:
            await reader.close()
        await verify_ok(pg_dsn)
        for i in range(3):
            await engine.submit_transfer(transfer(3_000 + i, 1 + i, 2 + i, 5))
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    await store.close()
    assert await versions_count(pg_dsn) > 0, "nothing left to compact at the next start"
    report = await verify_ok(pg_dsn)
    assert report.digest == digest
    engine, store = await open_engine(pg_dsn)
    await store.close()
    assert await versions_count(pg_dsn) == 0
    assert engine.ledger.digest() == digest
    report = await verify_ok(pg_dsn)
    assert report.accounts == 21


@pytest.mark.anyio
async def test_a_newer_epoch_fences_the_old_engine_off(pg_dsn: str) -> None:
    """Once a second engine has started (new epoch), the first one's next group is
    refused inside its own transaction: its callers get EngineStopped, nothing of it
    is written, and the new engine goes on."""
    old, old_store = await open_engine(pg_dsn)
    with pytest.raises(BaseExceptionGroup) as raised:
        async with anyio.create_task_group() as task_group:
            await task_group.start(old.serve)
            await fund(old, 1, 2, 50_000)
            new, new_store = await open_engine(pg_dsn)
            assert new_store.epoch == old_store.epoch + 1
            with pytest.raises(EngineStopped):
                await old.submit_transfer(transfer(42, 1, 2, 100))
    assert raised.group_contains(StoreFenced)
    await old_store.close()
    async with anyio.create_task_group() as task_group:
        await task_group.start(new.serve)
        outcome = await new.submit_transfer(transfer(42, 1, 2, 100))
        task_group.cancel_scope.cancel()
    await new_store.close()
    assert outcome.result == R.OK, "the fenced group must not have been written"
    await verify_ok(pg_dsn)


class LosingStore(PgStore):
    """Drops the connection around one COMMIT: before it is sent, or after it succeeded."""

    lose: str = ""

    async def _commit(self, link: Link, transaction: Any, first_seq: int) -> None:
        mode, self.lose = self.lose, ""
        if mode == "before":
            link.connection.terminate()
            raise asyncpg.exceptions.ConnectionDoesNotExistError("lost before COMMIT (test)")
        await super()._commit(link, transaction, first_seq)
        if mode == "after":
            link.connection.terminate()
            raise asyncpg.exceptions.ConnectionDoesNotExistError("lost after COMMIT (test)")


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["before", "after"])
async def test_lost_commit_is_resolved_by_reading_back(pg_dsn: str, mode: str) -> None:
    """The connection drops around COMMIT: the store reconnects, reads the epoch row back
    and either finds the group committed (answers it, writes nothing again) or not (writes
    it once, same seqs). Every transfer is then in PostgreSQL exactly once."""
    opened = await open_pg_store(pg_dsn, account_capacity=ACCOUNTS, transfer_capacity=TRANSFERS)
    store = opened.store
    store.__class__ = LosingStore
    engine = Engine(opened.ledger, store, example_rules())
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 1, 4, 50_000)
        assert isinstance(store, LosingStore)
        store.lose = mode
        outcome = await engine.submit_transfer(transfer(4242, 1, 2, 300))
        after = await engine.submit_transfer(transfer(4243, 2, 3, 100))
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    await store.close()
    assert outcome.result == R.OK and after.result == R.OK
    if mode == "after":
        assert store.stats.resolved_committed == 1 and store.stats.resolved_rewritten == 0
    else:
        assert store.stats.resolved_committed == 0 and store.stats.resolved_rewritten == 1
    report = await verify_ok(pg_dsn)
    assert report.digest == digest


@pytest.mark.anyio
async def test_unreplicated_commit_warning_is_not_acknowledged(pg_dsn: str) -> None:
    """With a synchronous standby named but absent, COMMIT waits; cancelling the wait
    makes PostgreSQL commit locally and warn that it might not be replicated. The engine
    must not acknowledge that transfer: its caller gets EngineStopped and the store
    raises CommitUnsafe."""
    engine, store = await open_engine(pg_dsn)
    admin = await asyncpg.connect(pg_dsn)
    caught: list[BaseException] = []
    try:
        with pytest.raises(BaseExceptionGroup) as raised:
            async with anyio.create_task_group() as task_group:
                await task_group.start(engine.serve)
                await fund(engine, 1, 2, 50_000)
                await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
                await admin.execute("SELECT pg_reload_conf()")
                await anyio.sleep(0.3)
                pids = [link.server_pid for link in store._links]

                async def cancel_when_waiting() -> None:
                    for _ in range(200):
                        pid = await admin.fetchval(
                            "SELECT pid FROM pg_stat_activity"
                            " WHERE pid = ANY($1::int[]) AND wait_event = 'SyncRep'",
                            pids,
                        )
                        if pid is not None:
                            await admin.execute("SELECT pg_cancel_backend($1)", pid)
                            return
                        await anyio.sleep(0.02)
                    raise AssertionError("the commit never waited for the standby")

                task_group.start_soon(cancel_when_waiting)
                try:
                    await engine.submit_transfer(transfer(31, 1, 2, 100))
                except EngineStopped as error:
                    caught.append(error)
    finally:
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()
        await store.close()
    assert caught, "the transfer was acknowledged"
    assert raised.group_contains(CommitUnsafe)


def test_capture_merge_keeps_the_latest_row() -> None:
    """A row changed twice in one group is written once, as the last entry left it."""
    from core.pg_store import TRANSFER_ROW, Changes, merge_changes, transfer_rows

    record = bytearray(128)
    later = bytearray(128)
    later[103] = 2
    rows = merge_changes(
        [
            Changes(10, transfer_rows(bytes(record), 10), [(3, bytes(record))], [(1, b"a" * 80)]),
            Changes(11, [], [(10, bytes(later)), (3, bytes(later))], [(1, b"b" * 80)]),
        ]
    )
    assert len(rows.transfers) == 1 and rows.transfers[0][2] == 10
    assert rows.transfers[0][3][103] == 2  # state, from the later capture
    assert rows.changed == [bytes(later)]
    assert rows.accounts == [(1, b"b" * 80)]
    assert rows.transfers[0][3] == bytes(later)
    assert rows.transfers[0][:2] == TRANSFER_ROW.unpack(bytes(later))[:2]


@pytest.mark.anyio
async def test_version_rows_decode_to_the_kernel_fields_at_every_bit(pg_dsn: str) -> None:
    """The SQL decoding of the raw 112-byte account versions (account, pending, deposit
    rows) gives the same signed values as the store's struct (high bits, sign bits, the
    unsigned byte fields), so the view tally_accounts packs back to the exact kernel row."""
    import random

    from core.pg_schema import ACCOUNT_COLUMNS
    from core.pg_store import account_record, account_row_values

    rows = [bytes(112), b"\xff" * 112, bytes(range(112)), bytes(range(112, 224))]
    rows += [random.Random(seed).randbytes(112) for seed in range(20)]
    connection = await asyncpg.connect(pg_dsn)
    try:
        await migrate(connection)
        await connection.copy_records_to_table(
            "tally_account_versions",
            records=[(1, slot, row) for slot, row in enumerate(rows)],
            columns=("seq", "slot", "row"),
        )
        stored = await connection.fetch(
            f"SELECT slot, {', '.join(ACCOUNT_COLUMNS)}, debits_pending, credits_pending,"
            " deposit FROM tally_accounts ORDER BY slot"
        )
    finally:
        await connection.close()
    assert [tuple(values) for values in stored] == [
        account_row_values(slot, row) for slot, row in enumerate(rows)
    ]
    assert [account_record(list(values)[1:]) for values in stored] == rows


@pytest.mark.anyio
async def test_transfer_records_convert_and_decode_at_every_bit(pg_dsn: str) -> None:
    """Rows written in the typed layout (migrations 1-3) are converted by migration 4 to
    the exact 128-byte records the store now writes, and the view tally_transfers decodes
    records back to the same signed columns (high bits, sign bits, byte fields)."""
    import random

    from core.pg_schema import TRANSFER_COLUMNS
    from core.pg_store import TRANSFER_ROW

    records = [bytes(128), b"\xff" * 128, bytes(range(128)), bytes(range(128, 256))]
    records += [random.Random(seed).randbytes(128) for seed in range(20)]
    connection = await asyncpg.connect(pg_dsn)
    try:
        await migrate(connection, through=3)
        await connection.copy_records_to_table(
            "tally_transfers",
            records=[(*TRANSFER_ROW.unpack(record), seq) for seq, record in enumerate(records)],
            columns=(*TRANSFER_COLUMNS, "seq"),
        )
        assert await migrate(connection) == list(range(4, latest_version() + 1))
        converted = await connection.fetch(
            "SELECT seq, record FROM tally_transfer_records ORDER BY seq"
        )
        decoded = await connection.fetch(
            f"SELECT {', '.join(TRANSFER_COLUMNS)}, seq FROM tally_transfers ORDER BY seq"
        )
    finally:
        await connection.close()
    assert [bytes(row["record"]) for row in converted] == records
    assert [tuple(row)[:-1] for row in decoded] == [TRANSFER_ROW.unpack(r) for r in records]


@pytest.mark.anyio
async def test_account_versions_before_deposits_read_with_a_zero_deposit_row(
    pg_dsn: str,
) -> None:
    """An 80-byte account version written before migration 6 (no deposit row) still
    reads, through the view and a compaction, as its row with a zero deposit row; a
    112-byte one keeps its deposit row."""
    from core.pg_schema import ACCOUNT_COLUMNS
    from core.pg_store import COMPACT_VERSIONS, account_record

    old_row = bytes(range(80))
    new_row = bytes(range(1, 81)) + bytes(range(200, 232))
    connection = await asyncpg.connect(pg_dsn)
    try:
        await migrate(connection, through=5)
        await connection.copy_records_to_table(
            "tally_account_versions", records=[(1, 0, old_row)], columns=("seq", "slot", "row")
        )
        assert await migrate(connection) == [6]
        await connection.copy_records_to_table(
            "tally_account_versions", records=[(2, 1, new_row)], columns=("seq", "slot", "row")
        )
        query = (
            f"SELECT {', '.join(ACCOUNT_COLUMNS)}, debits_pending, credits_pending, deposit"
            " FROM tally_accounts ORDER BY slot"
        )
        viewed = [account_record(list(values)) for values in await connection.fetch(query)]
        await connection.execute(COMPACT_VERSIONS)
        await connection.execute("TRUNCATE tally_account_versions")
        compacted = [account_record(list(values)) for values in await connection.fetch(query)]
    finally:
        await connection.close()
    assert viewed == compacted == [old_row + bytes(32), new_row]


@pytest.mark.anyio
async def test_deposit_entries_write_the_rows_they_change(pg_dsn: str) -> None:
    """Accrual, settlement chunks and a row write, formed by the engine from its state
    (`submit_generated`), reach the account rows: verify finds every row, deposit rows
    included, equal to the kernel's (before and after a compaction), and a restart
    rebuilds the same digest from `tally_entries`."""
    from core.entries import (
        EntryKind,
        pack_accrue_payload,
        pack_post_with_rows_payload,
        pack_settle_payload,
    )
    from ledger.constants import INTEREST_EXPENSE_ID, INTERNAL_PRODUCT
    from ledger.deposits import DEPOSIT_WRITE_ALWAYS, RATE_ROW, pack_deposit_write
    from ledger.deposits import pack_demand_row as demand_row
    from ledger.records import pack_account_input
    from ledger.types import AccountKind

    rates = b"".join(RATE_ROW.pack(130_000 if 1 <= p <= 4 else 0, 4_453) for p in range(8))
    period = 8_104
    engine, store = await open_engine(pg_dsn, compact_versions_max=40)
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await fund(engine, 100, 12, 1_000_000)
        expense = pack_account_input(
            id=INTEREST_EXPENSE_ID, kind=AccountKind.INTERNAL_INTEREST_EXPENSE,
            product=INTERNAL_PRODUCT,
        )  # fmt: skip
        assert set(await engine.submit_accounts(expense)) <= {0, 18}
        for day in range(1, 4):
            accrual = pack_accrue_payload(engine.ledger.last_day + day, rates)
            assert (
                await engine.submit_generated(
                    lambda ledger, payload=accrual: (EntryKind.ACCRUE_INTEREST, 0, payload, 1)
                )
                == 12
            )
        slot = 0
        while slot < engine.ledger.account_count:

            def chunk(ledger: Any, start: int = slot) -> Any:
                transfers, slots, _ = ledger.settlement_batch(period, start, 5)
                if not transfers:
                    return None
                count = len(transfers) // 128
                return (
                    EntryKind.SETTLE_INTEREST,
                    count,
                    pack_settle_payload(period, transfers, slots),
                    count,
                )

            outcome = await engine.submit_generated(chunk)
            assert outcome is None or set(outcome[0]) == {R.OK}
            slot = engine.ledger.settlement_batch(period, slot, 5)[2]
        row = pack_deposit_write(102, DEPOSIT_WRITE_ALWAYS, demand_row(7, 8, 9))
        payload = pack_post_with_rows_payload(transfer(4_000, 100, 101, 5), row)
        outcome = await engine.submit_generated(
            lambda ledger: (EntryKind.POST_WITH_ROWS, 1, payload, 1)
        )
        assert outcome[0][0] == R.OK
        rows = await engine.read(lambda ledger: [ledger.deposit_row(i) for i in range(100, 112)])
        digest = await engine.read(lambda ledger: ledger.digest())
        task_group.cancel_scope.cancel()
    await store.close()
    assert all(row != bytes(32) for row in rows) and rows[2] == demand_row(7, 8, 9)
    report = await verify_ok(pg_dsn)
    assert report.digest == digest
    engine, store = await open_engine(pg_dsn)
    await store.close()
    assert engine.ledger.digest() == digest
    report = await verify_ok(pg_dsn)
    connection = await asyncpg.connect(pg_dsn)
    try:
        stored = await connection.fetchval("SELECT deposit FROM tally_accounts WHERE id_lo = 102")
    finally:
        await connection.close()
    assert bytes(stored) == demand_row(7, 8, 9)
