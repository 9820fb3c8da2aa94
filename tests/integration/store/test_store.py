"""The one store interface: `open_store`, customer state, commit statistics, on both stores.

Customer state (PUT_STATE entries) must be as durable as the money: changes
acknowledged by `Engine.submit_state` survive a SIGKILL and come back from
`open_store`, on the journal (through snapshots too) and on PostgreSQL
(`tally_state`, written in the group's transaction). A damaged PUT_STATE
record is refused like any other; replay is deterministic.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from core.engine import Engine
from core.entries import (
    STATE_CHANGE_HEADER,
    Entry,
    EntryKind,
    apply_entry,
    encode_state_changes,
)
from core.journal import HEADER_SIZE, JournalCorrupt, JournalScan
from core.pg_store import PgStoreError
from core.store import open_store, read_entries, replay_store
from ledger.kernel import KernelLedger
from tests.engine_helpers import (
    FrozenClock,
    ListStore,
    example_rules,
    replay,
)
from tests.pg_helpers import fresh_database_dsn
from tests.repo_paths import TESTS_DIR
from tests.state_process import ACCOUNT_CAPACITY, TRANSFER_CAPACITY, state_changes

HERE = TESTS_DIR
CLIENTS = 4  # as state_process.py's delete rule assumes: change n deletes key n - 8
ACKS_PER_ROUND = 300


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the PostgreSQL store needs asyncpg's asyncio


# --- the payload ------------------------------------------------------------------


def test_put_state_payload_is_checked() -> None:
    """Entry.check() accepts exactly encoded changes and refuses a count that disagrees,
    bytes left over, a cut value and an empty key."""
    changes = [(b"a", b"1"), (b"b", None), (b"c", b"")]
    payload = encode_state_changes(changes)
    Entry(EntryKind.PUT_STATE, 1, 0, 3, payload).check()
    bad = [
        Entry(EntryKind.PUT_STATE, 1, 0, 2, payload),
        Entry(EntryKind.PUT_STATE, 1, 0, 3, payload + b"\0"),
        Entry(EntryKind.PUT_STATE, 1, 0, 3, payload[:-1]),
        Entry(EntryKind.PUT_STATE, 1, 0, 1, STATE_CHANGE_HEADER.pack(0, 1) + b"x"),
    ]
    for entry in bad:
        with pytest.raises(AssertionError):
            entry.check()


@pytest.mark.anyio
async def test_state_submits_coalesce_and_replay_the_same() -> None:
    """Many concurrent submit_state calls become fewer PUT_STATE entries (one per group)
    and the engine's state equals the state replayed from its entries; a delete removes."""
    store = ListStore()
    ledger = KernelLedger(account_capacity=4096, transfer_capacity=1 << 16)
    engine = Engine(ledger, store, example_rules(), clock=FrozenClock())
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        async with anyio.create_task_group() as clients:
            for n in range(200):
                clients.start_soon(engine.submit_state, [(b"k%d" % n, b"v%d" % n)])
        await engine.submit_state([(b"k7", None), (b"k8", b"again")])
        task_group.cancel_scope.cancel()
    put_entries = [entry for entry in store.entries if entry.kind == EntryKind.PUT_STATE]
    assert 1 <= len(put_entries) < 100, len(put_entries)
    assert sum(entry.count for entry in put_entries) == 202
    assert b"k7" not in engine.state and engine.state[b"k8"] == b"again"
    assert len(engine.state) == 199
    replayed: dict[bytes, bytes] = {}
    replay(store.entries, "reference", replayed)
    assert replayed == engine.state
    again: dict[bytes, bytes] = {}
    replay(store.entries, "kernel", again)
    assert again == engine.state


# --- kill and reopen, both stores ---------------------------------------------------


def run_and_kill(url: str, start: int, snapshot_every: int) -> tuple[set[int], list[str]]:
    """Run state_process.py until ACKS_PER_ROUND changes are acknowledged, then SIGKILL it.
    Returns the acknowledged change numbers and its READY line's fields."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "state_process.py"), url, str(CLIENTS), str(start),
         str(snapshot_every)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )  # fmt: skip
    acked: set[int] = set()
    ready: list[str] = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.startswith("READY"):
                ready = line.split()[1:]
            elif line.startswith("ACK"):
                acked.add(int(line.split()[1]))
                if len(acked) >= ACKS_PER_ROUND:
                    break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL, "the process ended before it was killed"
    assert len(acked) >= ACKS_PER_ROUND and ready, "killed before enough were acknowledged"
    return acked, ready


def check_acknowledged(state: dict[bytes, bytes], acked: set[int]) -> None:
    """Every acknowledged change is there: key n as set, unless an acknowledged change
    n + 8 deleted it (an unacknowledged one may or may not have)."""
    for n in acked:
        key = b"customer:%d" % n
        deleter = n + 2 * CLIENTS
        deleted_by_acked = deleter in acked and deleter % 5 == 0
        if deleted_by_acked:
            assert key not in state, n
        elif deleter % 5 != 0:
            assert state.get(key) == state_changes(n)[0][1], n


async def kill_rounds(url: str, snapshot_every: int) -> tuple[dict[bytes, bytes], set[int], Any]:
    """Two kill rounds on one store, then the state open_store recovers (checked)."""
    first, _ = await anyio.to_thread.run_sync(run_and_kill, url, 0, snapshot_every)
    second, ready = await anyio.to_thread.run_sync(
        run_and_kill, url, max(first) + 1000, snapshot_every
    )
    acked = first | second
    async with open_store(
        url, account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY
    ) as opened:
        check_acknowledged(opened.state, acked)
        recovery = opened.recovery
        state = dict(opened.state)
    assert int(ready[0]) >= 1, "the second round recovered nothing"
    return state, acked, recovery


@pytest.mark.anyio
async def test_journal_state_survives_kills_through_snapshots(tmp_path: Path) -> None:
    """Journal store: state changes acknowledged before two SIGKILLs are all recovered,
    the second round from a snapshot that carries the state; replaying the journal
    (read_entries) from seq 1 gives the same state."""
    url = f"journal:{tmp_path}"
    state, _acked, recovery = await kill_rounds(url, snapshot_every=40)
    assert recovery.snapshot_path is not None, "no snapshot was taken and used"
    replayed = replay_store(url, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    assert replayed.state == state


@pytest.mark.anyio
async def test_pg_state_survives_kills_and_is_in_tally_state() -> None:
    """PostgreSQL store: acknowledged state changes survive two SIGKILLs; tally_state
    holds exactly the recovered state, which also equals the entries replayed."""
    dsn = fresh_database_dsn()
    state, _acked, recovery = await kill_rounds(dsn, snapshot_every=0)
    assert recovery.kind == "postgresql" and recovery.epoch is not None and recovery.epoch >= 3
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT key, value FROM tally_state")
    finally:
        await connection.close()
    assert {bytes(row["key"]): bytes(row["value"]) for row in rows} == state
    replayed = await anyio.to_thread.run_sync(
        replay_store, dsn, ACCOUNT_CAPACITY, TRANSFER_CAPACITY
    )
    assert replayed.state == state


# --- damage, deletes, statistics ------------------------------------------------------


async def run_engine(url: str, changes: list[list[tuple[bytes, bytes | None]]]) -> Any:
    """Open the store, submit each change list in turn, return the engine's stats view."""
    async with open_store(
        url, account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY
    ) as opened:
        engine = Engine(opened.ledger, opened.store, example_rules(), state=opened.state)
        async with anyio.create_task_group() as task_group:
            await task_group.start(engine.serve)
            for change in changes:
                await engine.submit_state(change)
            task_group.cancel_scope.cancel()
        stats = opened.store.stats
        return stats, dict(engine.state)


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.anyio
async def test_flipped_byte_in_a_put_state_record_is_refused_with_its_offset(
    tmp_path: Path,
) -> None:
    """A byte changed in the payload of a journaled PUT_STATE record (not the last group)
    makes recovery refuse the journal, naming the segment and the record's offset."""
    url = f"journal:{tmp_path}"
    await run_engine(url, [[(b"customer:1", b"alice")], [(b"customer:2", b"bob")]])
    scan = JournalScan(tmp_path)
    stored = [record for record in scan if record.entry.kind == EntryKind.PUT_STATE]
    assert len(stored) == 2
    target = stored[0]
    flip_byte(target.segment, target.offset + HEADER_SIZE + STATE_CHANGE_HEADER.size)
    with pytest.raises(JournalCorrupt) as refused:
        async with open_store(
            url, account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY
        ):
            pass
    assert refused.value.offset == target.offset and refused.value.segment == target.segment


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
async def test_deletes_reopen_and_commit_stats_on_both_stores(tmp_path: Path, kind: str) -> None:
    """On either store: a delete removes a key, the state reopens as it was left, both
    stores count their commits with latency samples, and read_entries yields the
    PUT_STATE entries in seq order."""
    url = f"journal:{tmp_path}" if kind == "journal" else fresh_database_dsn()
    changes: list[list[tuple[bytes, bytes | None]]] = [
        [(b"a", b"1"), (b"b", b"2")],
        [(b"a", None)],
        [(b"c", b"3"), (b"b", b"22")],
    ]
    stats, state = await run_engine(url, changes)
    assert state == {b"b": b"22", b"c": b"3"}
    assert stats.commit_count >= 4  # the rules entry's group, then one group per change
    assert len(stats.commit_latency_s) == stats.commit_count
    assert stats.commit_seconds_total == pytest.approx(sum(stats.commit_latency_s))
    _, reopened = await run_engine(url, [])
    assert reopened == state
    seqs = [seq for seq, _ in await anyio.to_thread.run_sync(list, read_entries(url))]
    assert seqs == list(range(1, len(seqs) + 1))


@pytest.mark.anyio
async def test_pg_refuses_a_state_table_that_disagrees_with_its_entries() -> None:
    """Opening PostgreSQL checks tally_state against the PUT_STATE entries replayed: a
    row changed behind the store's back is refused, not loaded."""
    dsn = fresh_database_dsn()
    await run_engine(dsn, [[(b"customer:1", b"alice")]])
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("UPDATE tally_state SET value = 'mallory'")
    finally:
        await connection.close()
    with pytest.raises(PgStoreError, match="tally_state"):
        await run_engine(dsn, [])


def test_replay_without_a_state_leaves_the_ledger_alone() -> None:
    """apply_entry with no state (audit, the simulator) applies a PUT_STATE entry as a
    no-op on the ledger: the digest does not change."""
    ledger = KernelLedger(account_capacity=16, transfer_capacity=16)
    before = ledger.digest()
    payload = encode_state_changes([(b"k", b"v")])
    assert apply_entry(ledger, Entry(EntryKind.PUT_STATE, 1, 0, 1, payload)) is None
    assert ledger.digest() == before


def test_snapshots_carry_the_state_and_version_1_loads_empty(tmp_path: Path) -> None:
    """A snapshot (format 2) holds the customer state and gives it back; a format 1
    snapshot (written as before this change: no state section) still loads, with an
    empty state and the same ledger."""
    from core import snapshot

    ledger = KernelLedger(account_capacity=16, transfer_capacity=16)
    state = {b"customer:1": b"alice", b"customer:2": b""}
    (tmp_path / "v2").mkdir()
    (tmp_path / "v1").mkdir()
    path = snapshot.write_snapshot(tmp_path / "v2", ledger, 0, state)
    assert snapshot.load_snapshot_state(path, 16, 16)[2] == state
    old = snapshot._write_snapshot_file(str(tmp_path / "v1"), ledger, 0, {}, version=1)
    assert snapshot.read_snapshot(old).customer_state == {}
    loaded, seq, loaded_state = snapshot.load_snapshot_state(old, 16, 16)
    assert (seq, loaded_state, loaded.digest()) == (0, {}, ledger.digest())
