"""Kill -9 on the PostgreSQL store: the engine process, and (separately) the postmaster.

Same contract as tests/crash/test_engine_crash.py: every transfer a client saw
acknowledged is in PostgreSQL afterwards with its original result and
timestamp, a retried id is answered `exists` with the first timestamp (never
posted twice), and `verify` finds the accounts equal to the sums of the
transfers and to the replayed kernels.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import anyio
import asyncpg
import pytest

from core.drills.pg_cluster import TEST_SETTINGS, create_cluster
from core.pg_store import replay_ledger, verify
from ledger.reference import Transfer
from ledger.types import CreateTransferResult
from tests.crash.test_engine_crash import check_answer
from tests.pg_helpers import require_postgresql_binaries
from tests.repo_paths import TESTS_DIR

pytestmark = pytest.mark.pg

HERE = TESTS_DIR
CLIENTS = 8
OVERLAP = 5
R = CreateTransferResult


def parse_acks(stdout: str, answers: dict[int, tuple[int, int]], next_n: list[int]) -> None:
    for line in stdout.splitlines():
        words = line.split()
        if len(words) != 4 or words[0] != "ACK":
            continue
        transfer_id, result, timestamp = int(words[1]), int(words[2]), int(words[3])
        check_answer(answers, transfer_id, result, timestamp)
        client = (transfer_id >> 40) - 1
        if 0 <= client < CLIENTS:
            next_n[client] = max(next_n[client], (transfer_id & ((1 << 40) - 1)) + 1)


def start_engine(dsn: str, next_n: list[int], timeout_s: float = 30.0) -> subprocess.Popen[str]:
    starts = [max(0, n - OVERLAP) for n in next_n]
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE / "pg_engine_process.py"),
            dsn,
            str(CLIENTS),
            ",".join(map(str, starts)),
            str(timeout_s),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )


def check_database(dsn: str, answers: dict[int, tuple[int, int]]) -> None:
    async def main() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            last_seq = await connection.fetchval("SELECT last_seq FROM tally_epoch")
            ledger = await replay_ledger(connection, 1024, 1 << 20, last_seq)
            report = await verify(connection, 1024, 1 << 20, ledger)
            stored_ids = await connection.fetchval("SELECT count(*) FROM tally_transfer_records")
        finally:
            await connection.close()
        assert report.ok, report.as_dict()
        assert stored_ids == ledger.log_count
        lost = []
        for transfer_id, (result, timestamp) in answers.items():
            record = ledger.lookup_transfer(transfer_id)
            if result == R.OK:
                if record is None:
                    lost.append(transfer_id)
                    continue
                stored = Transfer.unpack(record)
                assert stored.result == R.OK and stored.timestamp == timestamp, transfer_id
            elif result >= R.PENDING_TRANSFER_NOT_FOUND:
                assert record is not None and Transfer.unpack(record).result == result
        assert not lost, f"{len(lost)} acknowledged transfers lost, e.g. {lost[:5]}"

    anyio.run(main, backend="asyncio")


def crash_cluster(name: str) -> object:
    require_postgresql_binaries()
    cluster = create_cluster(name, {**TEST_SETTINGS, "fsync": "on", "synchronous_commit": "on"})
    cluster.start()
    return cluster


def engine_rounds(rounds: int, seed: int) -> None:
    from core.drills.pg_cluster import Cluster

    cluster = crash_cluster("crash-engine")
    assert isinstance(cluster, Cluster)
    try:
        rng = random.Random(seed)
        dsn = cluster.dsn()
        answers: dict[int, tuple[int, int]] = {}
        next_n = [0] * CLIENTS
        for round_index in range(rounds):
            process = start_engine(dsn, next_n)
            time.sleep(rng.uniform(0.8, 2.0))
            process.send_signal(signal.SIGKILL)
            stdout, stderr = process.communicate(timeout=60)
            assert process.returncode == -signal.SIGKILL, (
                f"round {round_index}: engine exited by itself ({process.returncode}):"
                f" {stderr[-3000:]}"
            )
            parse_acks(stdout, answers, next_n)
        acknowledged = sum(1 for result, _ in answers.values() if result == R.OK)
        assert acknowledged > rounds * 10, acknowledged
        check_database(dsn, answers)
    finally:
        cluster.remove()


def test_kill_9_engine_process_loses_nothing_acknowledged(crash_seed: int) -> None:
    """20 SIGKILLs of the engine process (on PostgreSQL) at random moments under
    concurrent load: nothing acknowledged is lost, nothing is posted twice."""
    engine_rounds(20, crash_seed)


def postmaster_rounds(kills: int, seed: int) -> None:
    """One engine process; the postmaster (and its children) SIGKILLed `kills` times and
    restarted; the engine resolves the group it was committing and goes on, or stops
    and is restarted (its outcome then known to PostgreSQL alone)."""
    from core.drills.pg_cluster import Cluster

    cluster = crash_cluster("crash-postmaster")
    assert isinstance(cluster, Cluster)
    rng = random.Random(seed)
    dsn = cluster.dsn()
    answers: dict[int, tuple[int, int]] = {}
    next_n = [0] * CLIENTS
    outputs: list[str] = []
    resolved_restarts = 0
    try:
        process = start_engine(dsn, next_n, timeout_s=20.0)
        reader = _Reader(process)
        for _ in range(kills):
            time.sleep(rng.uniform(0.8, 2.0))
            if process.poll() is not None:  # the engine gave up: restart it
                outputs.append(reader.finish())
                parse_acks(outputs[-1], answers, next_n)
                process = start_engine(dsn, next_n, timeout_s=20.0)
                reader = _Reader(process)
                resolved_restarts += 1
                time.sleep(1.0)
            cluster.kill()
            time.sleep(rng.uniform(0.05, 0.5))
            cluster.start()
        time.sleep(1.5)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        outputs.append(reader.finish())
        parse_acks(outputs[-1], answers, next_n)
        acknowledged = sum(1 for result, _ in answers.values() if result == R.OK)
        assert acknowledged > kills * 10, (acknowledged, outputs[-1][-2000:])
        check_database(dsn, answers)
        print(
            f"{kills} postmaster kills, {acknowledged} acknowledged,"
            f" {resolved_restarts} engine restarts"
        )
    finally:
        if process.poll() is None:
            process.kill()
            reader.finish()
        cluster.remove()


class _Reader:
    """Reads a child's stdout in a thread, so a long run cannot fill the pipe."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.chunks: list[str] = []
        self.errors: list[str] = []
        assert process.stdout is not None and process.stderr is not None
        self.threads = [
            threading.Thread(target=self._read, args=(process.stdout, self.chunks), daemon=True),
            threading.Thread(target=self._read, args=(process.stderr, self.errors), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def finish(self) -> str:
        self.process.wait(timeout=60)
        for thread in self.threads:
            thread.join(timeout=60)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.process.stdout.close()
        self.process.stderr.close()
        return "".join(self.chunks)


def test_kill_9_postmaster_loses_nothing_acknowledged(crash_seed: int) -> None:
    """The database server is SIGKILLed (postmaster and backends) and restarted 6 times
    under load: the engine's commits in flight are resolved by reading back; every
    acknowledged transfer survives, none is posted twice."""
    postmaster_rounds(6, crash_seed)


@pytest.mark.slow
def test_kill_9_many_rounds_on_postgresql(crash_seed: int) -> None:
    """The same, 100 engine kills and 30 postmaster kills."""
    engine_rounds(100, crash_seed)
    postmaster_rounds(30, crash_seed)
