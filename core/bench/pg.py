"""`tally bench pg`: Tally on PostgreSQL against the ledger most teams write first.

One throwaway cluster (Unix socket, fsync on, synchronous_commit on), two
ledgers on it in the same run, measured in alternating passes (tally, naive,
tally, naive, ...: the machine is shared and its load drifts, so both see it
alike). Each headline is over all of its passes (transfers / seconds, so a
compaction that falls in one pass is paid for, not left out as a median
would); the passes are listed beside:

- `tally_pg_transfers_per_s`: the engine with the PostgreSQL store. A few
  tasks keep batches of generated transfers in flight; a transfer counts once
  its group's transaction has committed (entries, transfer records and
  account versions by binary COPY, compactions included, one COMMIT). The
  store has `--inflight-groups` (2) groups in flight on as many connections:
  the next group's rows are COPYed while the one before commits.
  `--serial-peer` adds to each pass a window of the same engine with each
  group started only once the one before committed (the serial store), in
  alternating order: `tally_pg_serial_transfers_per_s`.
- `naive_pg_transfers_per_s`: one transaction per transfer over 32 concurrent
  connections: INSERT the transfer, SELECT both accounts FOR UPDATE (in id
  order, so no deadlocks), check the balance and the daily limit, UPDATE both
  accounts, COMMIT.

Both use the same number of accounts and the same kind of random transfers
(uniform over the accounts, random 128-bit transfer ids for Tally). CPU
seconds per transfer (this process and every server process, from /proc)
are reported beside: steadier than throughput on a shared machine.
The last line of output is one JSON object (with --json, the only output).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson

from core.bench import engine as bench_engine
from core.bench import kernel as bench_kernel
from core.bench.server import cpu_seconds
from core.drills.pg_cluster import DURABLE_SETTINGS, open_cluster
from core.engine import Engine, latency_quantile
from core.reports import machine_description, save_report
from limits.rules import parse_rules

NAIVE_CONNECTIONS = 32
NAIVE_DAILY_LIMIT_MINOR = 5_000_000_00


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="timed load, both ledgers")
    parser.add_argument("--passes", type=int, default=3, help="alternating passes of each")
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--inflight", type=int, default=4, help="Tally batches in flight")
    parser.add_argument("--connections", type=int, default=NAIVE_CONNECTIONS)
    parser.add_argument(
        "--inflight-groups", type=int, default=2, help="store groups in flight (connections)"
    )
    parser.add_argument(
        "--serial-peer",
        action="store_true",
        help="each pass also a window with the store's groups one at a time (no overlap)",
    )
    parser.add_argument("--save", metavar="DIR", default=None)
    parser.add_argument("--json", action="store_true")


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        print(message, file=sys.stderr, flush=True)


class TallyLoad:
    """The engine on the PostgreSQL store, accounts created, ready for timed windows."""

    def __init__(self, engine: Engine, store: Any, accounts: int, inflight: int) -> None:
        self.engine = engine
        self.store = store
        self.source = bench_engine.Generator(accounts)
        self.inflight = inflight
        self.latencies: list[float] = []

    async def window(self, seconds: float) -> int:
        """Keep batches in flight for `seconds`; returns the transfers answered (durable)."""
        done = 0
        deadline = time.perf_counter() + seconds

        async def submitter() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                batch = self.source.batch(bench_engine.BATCH)
                sent = time.perf_counter()
                results = await self.engine.submit_transfers(batch)
                self.latencies.append(time.perf_counter() - sent)
                done += len(results)

        async with anyio.create_task_group() as task_group:
            for _ in range(self.inflight):
                task_group.start_soon(submitter)
        return done


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


class NaiveLoad:
    """One transaction per transfer, the way most first ledgers are written."""

    def __init__(self, accounts: int, pool: list[Any]) -> None:
        self.accounts = accounts
        self.pool = pool
        self.next_id = 0
        self.rejected = 0
        self.latencies: list[float] = []

    @classmethod
    async def open(cls, dsn: str, accounts: int, connections: int) -> NaiveLoad:
        import asyncpg

        setup = await asyncpg.connect(dsn)
        await setup.execute(NAIVE_SCHEMA)
        await setup.execute(
            "INSERT INTO naive_accounts SELECT g, 1000000000, 0, 0 FROM generate_series(1, $1) g",
            accounts,
        )
        await setup.execute("VACUUM ANALYZE naive_accounts")
        await setup.close()
        return cls(accounts, [await asyncpg.connect(dsn) for _ in range(connections)])

    async def close(self) -> None:
        for connection in self.pool:
            await connection.close()

    async def window(self, seconds: float) -> int:
        done = 0
        deadline = time.perf_counter() + seconds
        accounts = self.accounts

        async def worker(connection: Any, rng: random.Random) -> None:
            nonlocal done
            self.next_id += 1
            transfer_id = self.next_id
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
                    self.rejected += 1
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
            self.latencies.append(time.perf_counter() - sent)
            done += 1

        async def guarded(connection: Any, seed: int) -> None:
            rng = random.Random(seed)
            while time.perf_counter() < deadline:
                with contextlib.suppress(_Rejected):  # rolled back and counted
                    await worker(connection, rng)

        async with anyio.create_task_group() as task_group:
            for index, connection in enumerate(self.pool):
                task_group.start_soon(guarded, connection, self.next_id * 131 + index)
        return done


async def bench_both(
    tally_dsn: str,
    naive_dsn: str,
    args: argparse.Namespace,
    server_pids: Callable[[], list[int]],
) -> dict[str, Any]:
    """Both ledgers set up, then alternating timed windows of each; totals and passes."""
    from core.pg_store import open_pg_store

    opened = await open_pg_store(
        tally_dsn,
        account_capacity=args.accounts + 16,
        transfer_capacity=1 << 23,
        owner="bench",
        inflight_groups=args.inflight_groups,
    )
    rules = parse_rules(bench_kernel.BENCH_RULES, "bench-rules.toml")
    engine = Engine(opened.ledger, opened.store, rules, linger_s=0.001, queue_size=1 << 17)
    store = opened.store
    tally = TallyLoad(engine, store, args.accounts, args.inflight)
    naive = await NaiveLoad.open(naive_dsn, args.accounts, args.connections)
    window_s = args.seconds / (3 if args.serial_peer else 2) / args.passes
    rates: dict[str, list[int]] = {"tally": [], "naive": []}
    serial: dict[str, Any] = {"done": 0, "elapsed": 0.0, "rates": []}

    async def serial_window() -> None:
        store.overlap = False
        started = time.perf_counter()
        try:
            count = await tally.window(window_s)
        finally:
            store.overlap = True
        serial["elapsed"] += time.perf_counter() - started
        serial["rates"].append(round(count / (time.perf_counter() - started)))
        serial["done"] += count

    cpu: dict[str, float] = {"tally": 0.0, "postgres": 0.0, "naive": 0.0}
    done: dict[str, int] = {"tally": 0, "naive": 0}
    elapsed: dict[str, float] = {"tally": 0.0, "naive": 0.0}
    result: dict[str, Any] = {}
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        setup_started = time.perf_counter()
        await bench_engine.setup(engine, args.accounts)
        await engine.wait_durable()
        result["setup_s"] = round(time.perf_counter() - setup_started, 2)
        phases_before = dict(store.stats.phase_s)
        commits_before, compactions_before = store.stats.commit_count, store.stats.compactions
        transfers_before = store.stats.transfers
        for index in range(args.passes):
            if args.serial_peer and index % 2 == 1:
                await serial_window()
            own, server = cpu_seconds([os.getpid()]), cpu_seconds(server_pids())
            started = time.perf_counter()
            count = await tally.window(window_s)
            elapsed["tally"] += time.perf_counter() - started
            rates["tally"].append(round(count / (time.perf_counter() - started)))
            cpu["tally"] += cpu_seconds([os.getpid()]) - own
            cpu["postgres"] += cpu_seconds(server_pids()) - server
            done["tally"] += count
            if args.serial_peer and index % 2 == 0:
                await serial_window()
            before = cpu_seconds([os.getpid(), *server_pids()])
            started = time.perf_counter()
            count = await naive.window(window_s)
            elapsed["naive"] += time.perf_counter() - started
            rates["naive"].append(round(count / (time.perf_counter() - started)))
            cpu["naive"] += cpu_seconds([os.getpid(), *server_pids()]) - before
            done["naive"] += count
            _say(
                args,
                f"  pass {index + 1}: tally {rates['tally'][-1]:,}/s,"
                f" naive {rates['naive'][-1]:,}/s",
            )
        task_group.cancel_scope.cancel()
    await store.close()
    await naive.close()
    phases = {
        name: round(seconds - phases_before.get(name, 0.0), 2)
        for name, seconds in store.stats.phase_s.items()
    }
    commits = store.stats.commit_count - commits_before
    result.update(
        {
            "tally_pg_transfers_per_s": round(done["tally"] / elapsed["tally"]),
            "naive_pg_transfers_per_s": round(done["naive"] / elapsed["naive"]),
            "tally_over_naive": round(
                done["tally"] / elapsed["tally"] / max(1, done["naive"] / elapsed["naive"]), 1
            ),
            # What two dedicated cores could sustain is about 2 / (tally + postgres).
            "tally_pg_cpu_us_per_transfer_tally": round(cpu["tally"] / done["tally"] * 1e6, 2),
            "tally_pg_cpu_us_per_transfer_postgres": round(
                cpu["postgres"] / done["tally"] * 1e6, 2
            ),
            "naive_pg_cpu_us_per_transfer": round(cpu["naive"] / max(1, done["naive"]) * 1e6, 2),
            "tally_pg_batch_latency_ms_p50": round(latency_quantile(tally.latencies, 0.5) * 1e3, 1),
            "tally_pg_batch_latency_ms_p99": round(
                latency_quantile(tally.latencies, 0.99) * 1e3, 1
            ),
            "tally_pg_commits": commits,
            "tally_pg_compactions": store.stats.compactions - compactions_before,
            "tally_pg_commit_ms_p50": round(
                latency_quantile(store.stats.commit_latency_s, 0.5) * 1000, 1
            ),
            "tally_pg_phase_s": phases,
            "tally_pg_transfers_per_commit": round(
                (store.stats.transfers - transfers_before) / max(1, commits)
            ),
            "naive_pg_latency_ms_p50": round(latency_quantile(naive.latencies, 0.5) * 1000, 2),
            "naive_pg_latency_ms_p99": round(latency_quantile(naive.latencies, 0.99) * 1000, 2),
            "naive_pg_rejected": naive.rejected,
            "naive_pg_connections": args.connections,
            "tally_pg_inflight_groups": store.inflight_groups,
            "passes_transfers_per_s": rates,
        }
    )
    if args.serial_peer:
        # The same engine and store, each group started only once the one before
        # committed: the peer of the overlap in the same run (commits and phases above
        # include its windows).
        result["tally_pg_serial_transfers_per_s"] = round(serial["done"] / serial["elapsed"])
        result["tally_pg_overlap_over_serial"] = round(
            done["tally"] / elapsed["tally"] / max(1, serial["done"] / serial["elapsed"]), 2
        )
        rates["tally_serial"] = serial["rates"]
    return result


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
        _say(
            args,
            f"{args.accounts:,} accounts; {args.passes} alternating passes of"
            f" {args.seconds / 2 / args.passes:.1f} s each",
        )
        report.update(
            anyio.run(
                bench_both, cluster.dsn("tally"), cluster.dsn("naive"), args, cluster.server_pids
            )
        )
    if args.save:
        save_report(report, args.save)
    print(orjson.dumps(report).decode())
    return 0
