"""Kill -9 the engine process at random moments; nothing acknowledged is ever lost.

Each round starts tests/engine_process.py on the same data directory, lets
its clients post for a random while, and SIGKILLs it. Every acknowledgement
the clients printed is checked against what recovery finds, and the next
round's clients resume a little *before* their last acknowledged transfer,
so every round also retries transfers that were durable but maybe not
acknowledged, and transfers that were acknowledged.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.replay import recover_ledger
from ledger.records import account_view
from ledger.reference import Transfer
from ledger.types import CreateTransferResult, PendingState
from tests.repo_paths import TESTS_DIR

HERE = TESTS_DIR
CLIENTS = 8
OVERLAP = 5  # transfers re-sent before the last acknowledged one, per client
R = CreateTransferResult


def run_rounds(data: Path, rounds: int, seed: int) -> dict[int, tuple[int, int]]:
    """Run `rounds` start/kill rounds; returns every id's first acknowledged (result, ts)."""
    rng = random.Random(seed)
    first_answer: dict[int, tuple[int, int]] = {}
    next_n = [0] * CLIENTS
    for round_index in range(rounds):
        starts = [max(0, n - OVERLAP) for n in next_n]
        process = subprocess.Popen(
            [sys.executable, str(HERE / "engine_process.py"), str(data), str(CLIENTS),
             ",".join(map(str, starts))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE.parent,
        )
        time.sleep(rng.uniform(0.8, 2.0))
        process.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL, (
            f"round {round_index}: engine exited by itself ({process.returncode}): {stderr[-2000:]}"
        )
        for line in stdout.splitlines():
            words = line.split()
            if len(words) != 4 or words[0] != "ACK":
                continue  # READY, or the torn last line of the kill
            transfer_id, result, timestamp = int(words[1]), int(words[2]), int(words[3])
            check_answer(first_answer, transfer_id, result, timestamp)
            client = (transfer_id >> 40) - 1
            if 0 <= client < CLIENTS:
                next_n[client] = max(next_n[client], (transfer_id & ((1 << 40) - 1)) + 1)
    return first_answer


def check_answer(first: dict[int, tuple[int, int]], transfer_id: int, result: int,
                 timestamp: int) -> None:
    """A retry's answer must agree with the first answer for that id."""
    if transfer_id not in first:
        if result == R.EXISTS:
            # Durable in an earlier round but never acknowledged there: now it is.
            first[transfer_id] = (R.OK, timestamp)
        elif result == R.ID_ALREADY_FAILED:
            first[transfer_id] = (result, 0)
        else:
            first[transfer_id] = (result, timestamp)
        return
    first_result, first_timestamp = first[transfer_id]
    if first_result == R.OK:
        assert (result, timestamp) == (R.EXISTS, first_timestamp), (transfer_id, result)
    elif first_result >= R.PENDING_TRANSFER_NOT_FOUND or first_result == R.ID_ALREADY_FAILED:
        assert result == R.ID_ALREADY_FAILED, (transfer_id, first_result, result)


def check_recovered(data: Path, answers: dict[int, tuple[int, int]]) -> None:
    recovered = recover_ledger(data, 1024, 1 << 20)
    ledger = recovered.ledger
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
            assert record is not None and Transfer.unpack(record).result == result, transfer_id
    assert not lost, f"{len(lost)} acknowledged transfers lost, e.g. {lost[:5]}"
    debits = credits = 0
    for slot in range(ledger.account_count):
        account = account_view(ledger.account_row(slot))  # type: ignore[union-attr]
        debits += account.debits_posted
        credits += account.credits_posted
    assert debits == credits, (debits, credits)
    # Every posting is one log record: what the records moved is what the accounts show.
    moved = 0
    for seq in range(ledger.log_tail, ledger.log_count):
        stored = Transfer.unpack(ledger.record_at(seq))  # type: ignore[union-attr]
        if stored.result == R.OK and stored.state == PendingState.NONE:
            moved += stored.amount_posted
    assert moved == debits, (moved, debits)


@pytest.mark.parametrize("rounds", [20])
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path, rounds: int, crash_seed: int) -> None:
    """20 SIGKILLs at random moments under concurrent load: every acknowledged
    transfer is present with its original result and timestamp, retries get
    `exists` with the first timestamp, and debits equal credits."""
    answers = run_rounds(tmp_path / "data", rounds, crash_seed)
    assert sum(1 for result, _ in answers.values() if result == R.OK) > rounds * 10
    check_recovered(tmp_path / "data", answers)


@pytest.mark.slow
def test_kill_9_many_rounds(tmp_path: Path, crash_seed: int) -> None:
    """The same with 100 rounds."""
    check_recovered(tmp_path / "data", run_rounds(tmp_path / "data", 100, crash_seed))
