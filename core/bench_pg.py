"""`tally bench pg`: Tally on PostgreSQL against the ledger most teams write first.

One throwaway cluster (Unix socket, fsync on, synchronous_commit on), two
measurements on it in the same run:

- `tally_pg_transfers_per_s`: the engine with the PostgreSQL store. A few
  tasks keep batches of generated transfers in flight; a transfer counts once
  its group's transaction has committed (entries + binary COPY of the
  transfers + one set-based upsert of the accounts, one COMMIT).
- `naive_pg_transfers_per_s`: one transaction per transfer over 32 concurrent
  connections: INSERT the transfer, SELECT both accounts FOR UPDATE (in id
  order, so no deadlocks), check the balance and the daily limit, UPDATE both
  accounts, COMMIT.

Both use the same number of accounts and the same kind of random transfers.
The last line of output is one JSON object (with --json, the only output).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson

from core import bench_engine, bench_kernel
from core.bench_kernel import machine_description, save_report
from core.engine import Engine, latency_quantile
from core.pg_cluster import DURABLE_SETTINGS, open_cluster
from limits.rules import parse_rules

NAIVE_CONNECTIONS = 32
NAIVE_DAILY_LIMIT_MINOR = 5_000_000_00


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="timed load, split in two")
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--inflight", type=int, default=4, help="Tally batches in flight")
    parser.add_argument("--connections", type=int, default=NAIVE_CONNECTIONS)
    parser.add_argument("--save", metavar="DIR", default=None)
    parser.add_argument("--json", action="store_true")


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        print(message, file=sys.stderr, flush=True)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (threads included)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def bench_tally(
    dsn: str,
    accounts: int,
    seconds: float,
    inflight: int,
    server_pids: Callable[[], list[int]] | None = None,
) -> dict[str, Any]:
    from core.pg_store import open_pg_store

    opened = await open_pg_store(
        dsn, account_capacity=accounts + 16, transfer_capacity=1 << 23, owner="bench"
    )
    rules = parse_rules(bench_kernel.BENCH_RULES, "bench-rules.toml")
    engine = Engine(opened.ledger, opened.store, rules, linger_s=0.001, queue_size=1 << 17)
    store = opened.store
    source = bench_engine.Generator(accounts)
    result: dict[str, Any] = {}
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        setup_started = time.perf_counter()
        await bench_engine.setup(engine, accounts)
        result["setup_s"] = round(time.perf_counter() - setup_started, 2)
        pids = [os.getpid(), *(server_pids() if server_pids else [])]
        cpu_before = (cpu_seconds(pids[:1]), cpu_seconds(pids[1:]))
        committed_before = store.stats.transfers
        measured = await _durable_batches(engine, source, seconds, inflight)
        committed = store.stats.transfers - committed_before
        cpu_tally = cpu_seconds(pids[:1]) - cpu_before[0]
        cpu_server = cpu_seconds(pids[1:]) - cpu_before[1]
        task_group.cancel_scope.cancel()
    if committed:
        # CPU per transfer is steadier than wall-clock throughput on a shared machine, and
        # says what two dedicated cores could do: about 2 / (tally + server) per second.
        result["tally_pg_cpu_us_per_transfer_tally"] = round(cpu_tally / committed * 1e6, 2)
        if server_pids:
            result["tally_pg_cpu_us_per_transfer_postgres"] = round(cpu_server / committed * 1e6, 2)
    await store.close()
    latencies = measured["latencies"]
    result.update(
        {
            "tally_pg_transfers_per_s": round(measured["transfers_per_s"]),
            "tally_pg_batch_latency_ms_p50": round(latency_quantile(latencies, 0.5) * 1000, 1),
            "tally_pg_batch_latency_ms_p99": round(latency_quantile(latencies, 0.99) * 1000, 1),
            "tally_pg_commits": store.stats.commits,
            "tally_pg_compactions": store.stats.compactions,
            "tally_pg_commit_ms_p50": round(
                latency_quantile(store.stats.commit_latency_s, 0.5) * 1000, 1
            ),
            "tally_pg_phase_s": {k: round(v, 2) for k, v in store.stats.phase_s.items()},
            "tally_pg_transfers_per_commit": round(
                store.stats.transfers / max(1, store.stats.commits)
            ),
        }
    )
    return result


async def _durable_batches(
    engine: Engine, source: bench_engine.Generator, seconds: float, inflight: int
) -> dict[str, Any]:
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def submitter() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            batch = source.batch(bench_engine.BATCH)
            sent = time.perf_counter()
            results = await engine.submit_transfers(batch)
            latencies.append(time.perf_counter() - sent)
            done += len(results)

    async with anyio.create_task_group() as task_group:
        for _ in range(inflight):
            task_group.start_soon(submitter)
    return {"transfers_per_s": done / (time.perf_counter() - started), "latencies": latencies}


NAIVE_SCHEMA = """
CREATE TABLE naive_accounts (
    id bigint PRIMARY KEY,
    balance bigint NOT NULL,
    daily_out bigint NOT NULL,
    day integer NOT NULL
);
CREATE TABLE naive_transfers (
    id bigint PRIMARY KEY,
    debit_id bigint NOT NULL,
    credit_id bigint NOT NULL,
    amount bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""


async def bench_naive(
    dsn: str,
    accounts: int,
    seconds: float,
    connections: int,
    server_pids: Callable[[], list[int]] | None = None,
) -> dict[str, Any]:
    """One transaction per transfer, the way most first ledgers are written."""
    import asyncpg

    setup = await asyncpg.connect(dsn)
    await setup.execute(NAIVE_SCHEMA)
    await setup.execute(
        "INSERT INTO naive_accounts SELECT g, 1000000000, 0, 0 FROM generate_series(1, $1) g",
        accounts,
    )
    await setup.execute("VACUUM ANALYZE naive_accounts")
    await setup.close()
    pool = [await asyncpg.connect(dsn) for _ in range(connections)]
    done = rejected = 0
    latencies: list[float] = []
    next_id = 0
    pids = [os.getpid(), *(server_pids() if server_pids else [])]
    cpu_before = cpu_seconds(pids)
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker(connection: Any, seed: int) -> None:
        nonlocal done, rejected, next_id
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            next_id += 1
            transfer_id = next_id
            debit = rng.randrange(1, accounts + 1)
            credit = rng.randrange(1, accounts)
            credit = credit + 1 if credit >= debit else credit
            amount = rng.randrange(1, 2_000)
            sent = time.perf_counter()
            async with connection.transaction():
                await connection.execute(
                    "INSERT INTO naive_transfers (id, debit_id, credit_id, amount)"
                    " VALUES ($1, $2, $3, $4)",
                    transfer_id,
                    debit,
                    credit,
                    amount,
                )
                rows = await connection.fetch(
                    "SELECT id, balance, daily_out FROM naive_accounts WHERE id = ANY($1::bigint[])"
                    " ORDER BY id FOR UPDATE",
                    [debit, credit],
                )
                source = next(row for row in rows if row["id"] == debit)
                if (
                    source["balance"] < amount
                    or source["daily_out"] + amount > NAIVE_DAILY_LIMIT_MINOR
                ):
                    rejected += 1
                    raise _Rejected
                await connection.execute(
                    "UPDATE naive_accounts SET balance = balance - $2, daily_out = daily_out + $2"
                    " WHERE id = $1",
                    debit,
                    amount,
                )
                await connection.execute(
                    "UPDATE naive_accounts SET balance = balance + $2 WHERE id = $1",
                    credit,
                    amount,
                )
            latencies.append(time.perf_counter() - sent)
            done += 1

    async def guarded(connection: Any, seed: int) -> None:
        while time.perf_counter() < deadline:
            try:
                await worker(connection, seed)
            except _Rejected:
                seed += 1_000_003

    async with anyio.create_task_group() as task_group:
        for index, connection in enumerate(pool):
            task_group.start_soon(guarded, connection, index)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pids) - cpu_before
    for connection in pool:
        await connection.close()
    return {
        "naive_pg_transfers_per_s": round(done / elapsed),
        "naive_pg_latency_ms_p50": round(latency_quantile(latencies, 0.5) * 1000, 2),
        "naive_pg_latency_ms_p99": round(latency_quantile(latencies, 0.99) * 1000, 2),
        "naive_pg_rejected": rejected,
        "naive_pg_connections": connections,
        "naive_pg_cpu_us_per_transfer": round(cpu / max(1, done) * 1e6, 2),
    }


class _Rejected(Exception):
    """The naive ledger's check failed: the transaction rolls back."""


def run(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {
        "benchmark": "pg",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "accounts": args.accounts,
        "seconds": args.seconds,
        "settings": "fsync=on synchronous_commit=on full_page_writes=on, Unix socket",
    }
    with open_cluster("bench", DURABLE_SETTINGS) as cluster:
        import subprocess

        version = subprocess.run(
            [f"{cluster.bin_directory}/postgres", "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        report["postgres"] = version
        for name in ("tally", "naive"):
            subprocess.run(
                [
                    f"{cluster.bin_directory}/psql",
                    "-X",
                    "-q",
                    cluster.dsn(),
                    "-c",
                    f"CREATE DATABASE {name}",
                ],
                check=True,
                capture_output=True,
            )
        _say(args, f"tally: {args.accounts} accounts, {args.seconds / 2:.0f} s of batches")
        report.update(
            anyio.run(
                bench_tally,
                cluster.dsn("tally"),
                args.accounts,
                args.seconds / 2,
                args.inflight,
                cluster.server_pids,
            )
        )
        _say(args, f"  {report['tally_pg_transfers_per_s']:,} transfers/s")
        _say(args, f"naive: {args.connections} connections, {args.seconds / 2:.0f} s")
        report.update(
            anyio.run(
                bench_naive,
                cluster.dsn("naive"),
                args.accounts,
                args.seconds / 2,
                args.connections,
                cluster.server_pids,
            )
        )
        _say(args, f"  {report['naive_pg_transfers_per_s']:,} transfers/s")
    report["tally_over_naive"] = round(
        report["tally_pg_transfers_per_s"] / max(1, report["naive_pg_transfers_per_s"]), 1
    )
    if args.save:
        save_report(report, args.save)
    print(orjson.dumps(report).decode())
    return 0
