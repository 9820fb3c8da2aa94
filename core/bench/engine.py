"""`tally bench engine`: the engine with the embedded journal on disk, fdatasync on.

What it measures, in one run on one data directory:

- `durable_transfers_per_s`: batches of 8189 generated transfers submitted
  in process by a few concurrent tasks (so the apply/durable pipeline stays
  full); a transfer counts once its batch is answered, i.e. durable.
- `commit_latency_ms_p50` / `_p99`: submit-to-answer time of one batch when
  batches are offered at half the rate just measured.
- `single_submit_transfers_per_s`: many concurrent tasks each submitting one
  transfer at a time and awaiting its answer (the engine batches them).
- `recovery_records_per_s`: the engine is stopped, then the ledger is
  rebuilt from the data directory (snapshot + journal replay); transfers
  replayed per second of replay (entries per second beside it).
- `naive_durable_transfers_per_s`, the peer in the same run on the same disk:
  what a store without group commit does, one 128-byte transfer record
  written and `fdatasync`ed per transfer (no ledger work at all, so it is an
  upper bound for such a store); `engine_vs_naive` is the ratio.
- `snapshot_seconds_30m_accounts`: writing a snapshot of a ledger of
  `--snapshot-accounts` funded accounts (fsync'd, atomically renamed), and
  `snapshot_fork_pause_ms`, how long fork() stops the engine when the
  snapshot is taken in a child instead.

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import anyio
import orjson

from cext import gen
from core.bench import kernel as bench_kernel
from core.bench.kernel import (
    ACCOUNT_SEED,
    CLEARING_ID,
    FUNDING_MINOR,
    FUNDING_SEED,
    LEDGER_CNY,
    TRANSFER_SEED,
)
from core.engine import Engine, latency_quantile
from core.journal import Journal
from core.journal_store import JournalStore
from core.replay import recover_ledger
from core.reports import machine_description, save_report
from core.snapshot import fork_snapshot, wait_snapshot, write_snapshot
from ledger.kernel import KernelLedger
from ledger.records import pack_account_input
from ledger.types import ACCOUNT_SIZE, TRANSFER_SIZE, AccountFlags, AccountKind, TransferCode
from ledger.types import split_id as split
from limits.rules import parse_rules

BATCH = 8189


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="total timed load")
    parser.add_argument(
        "--single-tasks", type=int, default=2000, help="concurrent single-transfer submitters"
    )
    parser.add_argument("--snapshot-accounts", type=int, default=30_000_000)
    parser.add_argument("--data", default=None, help="data directory (default: a temp dir)")
    parser.add_argument("--save", metavar="DIR", default=None)
    parser.add_argument("--json", action="store_true")


class Generator:
    """Fresh, unique transfers between the generated accounts, a batch at a time."""

    def __init__(self, accounts: int) -> None:
        self.accounts = accounts
        self.seq = 0

    def batch(self, count: int) -> bytes:
        buffer = bytearray(count * TRANSFER_SIZE)
        gen.fill_transfers(
            buffer,
            TRANSFER_SEED,
            self.seq,
            ACCOUNT_SEED,
            self.accounts,
            0,
            0.0,
            TransferCode.TRANSFER,
            0,
            LEDGER_CNY,
            2_000,
            1.0,
        )
        self.seq += count
        return bytes(buffer)


async def setup(engine: Engine, accounts: int) -> None:
    rules_flags = (
        AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        | AccountFlags.NON_BOUND_INFLOW_ENABLED
        | AccountFlags.BOUND_EXTERNAL
    )
    clearing = pack_account_input(id=CLEARING_ID, kind=AccountKind.INTERNAL_CLEARING, product=2)
    assert await engine.submit_accounts(clearing) == b"\0"
    clearing_lo, clearing_hi = split(CLEARING_ID)
    for first in range(0, accounts, BATCH):
        count = min(BATCH, accounts - first)
        buffer = bytearray(count * ACCOUNT_SIZE)
        gen.fill_accounts(
            buffer, ACCOUNT_SEED, first, AccountKind.CLASS_II, rules_flags, 1, LEDGER_CNY
        )
        assert (await engine.submit_accounts(bytes(buffer))).count(0) == count
        fundings = bytearray(count * TRANSFER_SIZE)
        gen.fill_fundings(
            fundings,
            FUNDING_SEED,
            first,
            ACCOUNT_SEED,
            clearing_lo,
            clearing_hi,
            FUNDING_MINOR,
            TransferCode.TOPUP_BOUND,
            LEDGER_CNY,
        )
        results = await engine.submit_transfers(bytes(fundings))
        assert results.result_codes().count(0) == count


async def durable_batches(engine: Engine, source: Generator, seconds: float) -> dict[str, Any]:
    """Keep 4 batches in flight for `seconds`; rate of answered (durable) transfers."""
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def submitter() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            batch = source.batch(BATCH)
            sent = time.perf_counter()
            results = await engine.submit_transfers(batch)
            latencies.append(time.perf_counter() - sent)
            done += len(results)

    async with anyio.create_task_group() as task_group:
        for _ in range(4):
            task_group.start_soon(submitter)
    elapsed = time.perf_counter() - started
    return {"transfers_per_s": done / elapsed, "latencies": latencies}


async def paced_batches(
    engine: Engine, source: Generator, rate_per_s: float, seconds: float
) -> list[float]:
    """Offer one batch every BATCH / rate seconds; the submit-to-answer time of each."""
    interval = BATCH / rate_per_s
    latencies: list[float] = []

    async def one(batch: bytes) -> None:
        sent = time.perf_counter()
        await engine.submit_transfers(batch)
        latencies.append(time.perf_counter() - sent)

    async with anyio.create_task_group() as task_group:
        next_at = time.perf_counter()
        end = next_at + seconds
        while next_at < end:
            batch = source.batch(BATCH)
            await anyio.sleep(max(0.0, next_at - time.perf_counter()))
            task_group.start_soon(one, batch)
            next_at += interval
    return latencies


async def single_submits(
    engine: Engine, source: Generator, tasks: int, seconds: float
) -> dict[str, float]:
    """`tasks` concurrent tasks, each posting one transfer at a time."""
    pool = source.batch(max(tasks * 64, 200_000))
    position = 0
    done = 0
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    started = time.perf_counter()

    async def client() -> None:
        nonlocal position, done
        while time.perf_counter() < deadline:
            if position * TRANSFER_SIZE >= len(pool):
                return
            record = pool[position * TRANSFER_SIZE : (position + 1) * TRANSFER_SIZE]
            position += 1
            sent = time.perf_counter()
            await engine.submit_transfer(record)
            if len(latencies) < 100_000:
                latencies.append(time.perf_counter() - sent)
            done += 1

    async with anyio.create_task_group() as task_group:
        for _ in range(tasks):
            task_group.start_soon(client)
    elapsed = time.perf_counter() - started
    return {
        "transfers_per_s": done / elapsed,
        "latency_ms_p50": latency_quantile(latencies, 0.50) * 1e3,
        "latency_ms_p99": latency_quantile(latencies, 0.99) * 1e3,
    }


async def load_phase(
    directory: str, accounts: int, seconds: float, single_tasks: int
) -> dict[str, Any]:
    rules = parse_rules(bench_kernel.BENCH_RULES, "bench-rules.toml")
    capacity = 1 << 25
    ledger = KernelLedger(account_capacity=accounts + 1, transfer_capacity=capacity)
    ledger.prefault()
    journal = Journal.open(directory)
    engine = Engine(ledger, JournalStore(journal), rules, linger_s=0.001, queue_size=1 << 17)
    source = Generator(accounts)
    results: dict[str, Any] = {}
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        await setup(engine, accounts)
        maximum = await durable_batches(engine, source, seconds * 0.4)
        results["durable_transfers_per_s"] = maximum["transfers_per_s"]
        results["batch_latency_ms_p50_at_max"] = latency_quantile(maximum["latencies"], 0.5) * 1e3
        half = await paced_batches(engine, source, maximum["transfers_per_s"] / 2, seconds * 0.25)
        results["commit_latency_ms_p50"] = latency_quantile(half, 0.50) * 1e3
        results["commit_latency_ms_p99"] = latency_quantile(half, 0.99) * 1e3
        results["commit_latency_samples"] = len(half)
        single = await single_submits(engine, source, single_tasks, seconds * 0.35)
        results["single_submit_transfers_per_s"] = single["transfers_per_s"]
        results["single_submit_latency_ms_p50"] = single["latency_ms_p50"]
        results["single_submit_latency_ms_p99"] = single["latency_ms_p99"]
        results["fsync_ms_p50"] = latency_quantile(list(journal.fsync_latency_s), 0.5) * 1e3
        results["fsync_ms_p99"] = latency_quantile(list(journal.fsync_latency_s), 0.99) * 1e3
        results["batch_size_median"] = statistics.median(engine.metrics.batch_sizes or [0])
        task_group.cancel_scope.cancel()
    journal.close()
    results["digest_before"] = ledger.digest()
    results["capacity"] = capacity
    return results


def recovery_phase(directory: str, accounts: int, capacity: int) -> dict[str, Any]:
    recovered = recover_ledger(directory, accounts + 1, capacity)
    return {
        "recovery_records_per_s": recovered.transfers_per_s,
        "recovery_entries_per_s": recovered.records_per_s,
        "recovery_transfers": recovered.transfers_replayed,
        "recovery_seconds": recovered.replay_s,
        "digest_after": recovered.ledger.digest(),
    }


def naive_phase(directory: str, seconds: float) -> dict[str, Any]:
    """One write + fdatasync per 128-byte transfer record, for `seconds`."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "naive.log")
    record = bytes(TRANSFER_SIZE)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            os.write(descriptor, record)
            os.fdatasync(descriptor)
            count += 1
            now = time.perf_counter()
            if now >= deadline:
                break
    finally:
        os.close(descriptor)
        os.unlink(path)
    return {"naive_durable_transfers_per_s": count / (now - started)}


def snapshot_phase(accounts: int, directory: str) -> dict[str, Any]:
    """Time a snapshot of a funded ledger of `accounts` accounts: written, and forked."""
    os.makedirs(directory, exist_ok=True)
    ledger = KernelLedger(account_capacity=accounts + 1, transfer_capacity=1 << 20)
    bench_kernel.build_ledger(ledger, accounts, BATCH, "snapshot accounts", quiet=True)
    started = time.perf_counter()
    write_snapshot(directory, ledger, 1)
    written_s = time.perf_counter() - started
    size = os.path.getsize(os.path.join(directory, sorted(os.listdir(directory))[-1]))
    started = time.perf_counter()
    pid = fork_snapshot(directory, ledger, 2)
    pause_s = time.perf_counter() - started
    wait_snapshot(pid)
    return {
        "snapshot_accounts": accounts,
        "snapshot_seconds": written_s,
        "snapshot_bytes": size,
        "snapshot_fork_pause_ms": pause_s * 1e3,
        "snapshot_fork_total_s": time.perf_counter() - started,
    }


def run(args: argparse.Namespace) -> int:
    owned = args.data is None
    directory = args.data or tempfile.mkdtemp(prefix="tally-bench-engine-")
    try:
        load = anyio.run(
            load_phase,
            os.path.join(directory, "journal"),
            args.accounts,
            args.seconds,
            args.single_tasks,
        )
        journal_directory = os.path.join(directory, "journal")
        load["journal_bytes"] = sum(
            os.path.getsize(os.path.join(journal_directory, name))
            for name in os.listdir(journal_directory)
        )
        recovery = recovery_phase(
            os.path.join(directory, "journal"), args.accounts, load["capacity"]
        )
        assert recovery["digest_after"] == load["digest_before"], "recovery changed the state"
        naive = naive_phase(os.path.join(directory, "naive"), max(1.0, args.seconds / 5))
        snapshot = snapshot_phase(args.snapshot_accounts, os.path.join(directory, "snapshots"))
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
    report: dict[str, Any] = {
        "benchmark": "engine",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "command": "tally " + " ".join(sys.argv[1:]),
        "accounts": args.accounts,
        "seconds": args.seconds,
        "durable_transfers_per_s": round(load["durable_transfers_per_s"]),
        "naive_durable_transfers_per_s": round(naive["naive_durable_transfers_per_s"]),
        "engine_vs_naive": round(
            load["durable_transfers_per_s"] / naive["naive_durable_transfers_per_s"], 1
        ),
        "commit_latency_ms_p50": round(load["commit_latency_ms_p50"], 2),
        "commit_latency_ms_p99": round(load["commit_latency_ms_p99"], 2),
        "single_submit_transfers_per_s": round(load["single_submit_transfers_per_s"]),
        "single_submit_latency_ms_p50": round(load["single_submit_latency_ms_p50"], 2),
        "single_submit_latency_ms_p99": round(load["single_submit_latency_ms_p99"], 2),
        "recovery_records_per_s": round(recovery["recovery_records_per_s"]),
        "recovery_entries_per_s": round(recovery["recovery_entries_per_s"]),
        "recovery_transfers": recovery["recovery_transfers"],
        "snapshot_seconds_30m_accounts": round(snapshot["snapshot_seconds"], 2),
        "snapshot_accounts": snapshot["snapshot_accounts"],
        "snapshot_bytes": snapshot["snapshot_bytes"],
        "snapshot_fork_pause_ms": round(snapshot["snapshot_fork_pause_ms"], 2),
        "fsync_ms_p50": round(load["fsync_ms_p50"], 3),
        "fsync_ms_p99": round(load["fsync_ms_p99"], 3),
        "batch_latency_ms_p50_at_max": round(load["batch_latency_ms_p50_at_max"], 2),
        "commit_latency_samples": load["commit_latency_samples"],
        "batch_size_median": load["batch_size_median"],
        "journal_bytes": load["journal_bytes"],
        "recovered_digest_matches": True,
    }
    if not args.json:
        for key, value in report.items():
            print(f"{key:34} {value}")
    if args.save:
        save_report(report, args.save)
    print(orjson.dumps(report).decode())
    return 0
