"""`tally drill failover`: the dual-region, three-data-center topology with real PostgreSQL.

Three throwaway clusters on this machine, each in its own directory and Unix socket:

- dc1: the primary, `synchronous_standby_names = 'FIRST 1 (dc2)'`,
  `synchronous_commit = on`: a COMMIT returns once dc2 has the WAL on disk.
- dc2: the same-city synchronous standby (streaming, application_name dc2).
- dc3: the remote asynchronous standby (application_name dc3) with
  `recovery_min_apply_delay` standing in for the ~30 ms distance: what dc3 has
  *applied* is what a data center that far away would have received.

Scenario 1, losing dc1: Tally runs on dc1 (an engine in this process on the
PostgreSQL store) under steady load from concurrent clients that log every
acknowledged transfer. Mid-load dc3's lag is sampled (seqs, transfers and WAL
bytes behind dc1) and dc1's postmaster and backends are SIGKILLed. dc2 is
promoted, Tally restarts on it (a new fencing epoch) and the clock stops at its
first successful transfer: the RTO. Every acknowledged transfer is re-sent
with its own id: each must answer `exists` with its original timestamp (none
lost, none posted twice), and transfers whose outcome was unknown at the kill
are resolved the same way. `tally db verify` runs on dc2.

Scenario 2, losing region A (dc1 and dc2): dc3 is promoted at exactly the WAL
position it had applied when dc1 died (`recovery_target_lsn`), Tally starts on
it, and every acknowledged transfer missing there is listed by id: the RPO of
losing the whole city, measured.

Writes drill.json and prints a human summary. Every cluster it created is
stopped and removed on the way out, whatever happened.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from core.data import DEFAULT_RULES_PATH
from core.drills.customers import CustomerLoad, check_customer_state, run_customer_clients
from core.drills.pg_cluster import Cluster, create_cluster, create_standby
from core.engine import Engine, EngineStopped
from core.errors import TallyError
from core.services.bank import Bank
from core.services.lifecycle import Settings
from ledger.records import pack_account_input
from ledger.reference import Transfer
from ledger.types import (
    AccountFlags,
    AccountKind,
    CreateTransferResult,
    TransferCode,
)
from limits.rules import load_rules

R = CreateTransferResult
LEDGER_CNY = 156
CLEARING_ID = 1_000
FIRST_ACCOUNT = 1 << 16  # the transfer load's accounts: above the bank's own (below 2**16)
ACCOUNTS = 256
ACCOUNT_CAPACITY = 4096
TRANSFER_CAPACITY = 1 << 21
FUNDING_MINOR = 1_000_000_000
WAIT_POLL_S = 0.01
DRILL_SCRYPT_N = 1 << 12  # cheap password hashes: the drill measures the store, not scrypt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=8.0, help="load before the kill")
    parser.add_argument("--clients", type=int, default=64, help="concurrent transfer clients")
    parser.add_argument(
        "--customer-clients",
        type=int,
        default=4,
        help="concurrent clients registering customers, opening accounts, changing passwords",
    )
    parser.add_argument("--dc3-delay-ms", type=float, default=30.0, help="dc3's apply delay")
    parser.add_argument("--output", default="drill.json", help="where to write the report")
    parser.add_argument("--rules", default=str(DEFAULT_RULES_PATH))
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")


def _transfer(transfer_id: int, debit: int, credit: int, amount: int, code: int) -> bytes:
    return Transfer(
        id=transfer_id,
        debit_account_id=debit,
        credit_account_id=credit,
        pending_id=0,
        amount=amount,
        timestamp=0,
        timeout_s=0,
        ledger=LEDGER_CNY,
        code=code,
        flags=0,
        channel=0,
        result=0,
        debit_slot=0,
        credit_slot=0,
        business_day=0,
        counted=0,
        state=0,
        user_data=0,
        amount_posted=0,
        amount_reversed=0,
    ).pack()


def client_transfer(client: int, n: int) -> tuple[int, bytes]:
    """Transfer n of client c: a pure function of (c, n), so a re-send is a retry."""
    transfer_id = (client + 1) << 40 | n
    debit = FIRST_ACCOUNT + (client * 7 + n) % ACCOUNTS
    credit = FIRST_ACCOUNT + (client * 7 + n * 3 + 1) % ACCOUNTS
    if credit == debit:
        credit = FIRST_ACCOUNT + (credit - FIRST_ACCOUNT + 1) % ACCOUNTS
    return transfer_id, _transfer(
        transfer_id, debit, credit, 1 + (n * 37 + client) % 500, TransferCode.TRANSFER
    )


async def setup_accounts(engine: Engine) -> None:
    clearing = pack_account_input(id=CLEARING_ID, kind=AccountKind.INTERNAL_CLEARING, product=7)
    flags = (
        AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        | AccountFlags.NON_BOUND_INFLOW_ENABLED
        | AccountFlags.BOUND_EXTERNAL
    )
    customers = b"".join(
        pack_account_input(id=FIRST_ACCOUNT + i, kind=AccountKind.CLASS_II, product=2, flags=flags)
        for i in range(ACCOUNTS)
    )
    await engine.submit_accounts(clearing)
    await engine.submit_accounts(customers)
    fundings = b"".join(
        _transfer(
            1 << 60 | i, CLEARING_ID, FIRST_ACCOUNT + i, FUNDING_MINOR, TransferCode.TOPUP_BOUND
        )
        for i in range(ACCOUNTS)
    )
    results = await engine.submit_transfers(fundings)
    assert set(results.result_codes()) <= {R.OK, R.EXISTS}


@dataclass
class Load:
    """What the clients saw: acknowledged ids (result, timestamp) and unknown outcomes."""

    acknowledged: dict[int, tuple[int, int]] = field(default_factory=dict)
    unknown: dict[int, bytes] = field(default_factory=dict)
    records: dict[int, bytes] = field(default_factory=dict)


async def run_clients(engine: Engine, load: Load, clients: int) -> None:
    async def client(c: int) -> None:
        n = 0
        while True:
            transfer_id, record = client_transfer(c, n)
            load.records[transfer_id] = record
            try:
                outcome = await engine.submit_transfer(record)
            except EngineStopped:
                load.unknown[transfer_id] = record
                return
            load.acknowledged[transfer_id] = (outcome.result, outcome.timestamp)
            n += 1

    async with anyio.create_task_group() as task_group:
        for c in range(clients):
            task_group.start_soon(client, c)


async def fetch_state(dsn: str) -> dict[str, Any]:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT (SELECT last_seq FROM tally_epoch) AS last_seq,"
            " (SELECT count(*) FROM tally_transfer_records) AS transfers,"
            " CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
            " ELSE pg_current_wal_lsn() END AS lsn"
        )
        return {"last_seq": row["last_seq"], "transfers": row["transfers"], "lsn": int(row["lsn"])}
    finally:
        await connection.close()


async def pause_replay(dsn: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SELECT pg_wal_replay_pause()")
    finally:
        await connection.close()


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll `condition` every 10 ms, at most `timeout_s`."""
    for _ in range(int(timeout_s / WAIT_POLL_S)):
        if condition():
            return
        await anyio.sleep(WAIT_POLL_S)
    raise TallyError(f"timed out after {timeout_s} s waiting for {what}")


@contextlib.asynccontextmanager
async def open_bank_on(dc1: Cluster, args: argparse.Namespace) -> AsyncIterator[Bank]:
    """A `Bank` (the services, its lifecycle and engine) running on dc1, once ready."""
    with tempfile.TemporaryDirectory(prefix="tally-drill-") as data_dir:
        settings = Settings(
            data_dir=data_dir,  # holds nothing: the customer state is in PostgreSQL
            store_dsn=dc1.dsn(),
            account_capacity=ACCOUNT_CAPACITY,
            transfer_capacity=TRANSFER_CAPACITY,
            scrypt_n=DRILL_SCRYPT_N,
            pg_options={"reconnect_timeout_s": 1.0, "commit_timeout_s": 10.0},
        )
        bank = Bank(settings, load_rules(args.rules))
        async with anyio.create_task_group() as task_group:
            await task_group.start(bank.serve)
            await wait_until(lambda: bank.core.ready, "the bank on dc1 to be ready")
            yield bank
            task_group.cancel_scope.cancel()


async def scenario_dc1(
    dc1: Cluster,
    dc3: Cluster,
    args: argparse.Namespace,
    load: Load,
    customer_load: CustomerLoad,
) -> dict[str, Any]:
    """Load on dc1 (transfers on the engine, customer work through the services of a
    `Bank` on the same engine), sample dc3's lag, SIGKILL dc1; returns the kill's facts."""
    async with open_bank_on(dc1, args) as bank:
        return await _load_and_kill(bank, (dc1, dc3), args, load, customer_load)


async def _load_and_kill(
    bank: Bank,
    clusters: tuple[Cluster, Cluster],
    args: argparse.Namespace,
    load: Load,
    customer_load: CustomerLoad,
) -> dict[str, Any]:
    dc1, dc3 = clusters
    engine = bank.core.running_engine()
    facts: dict[str, Any] = {"epoch_dc1": bank.core.recovery_info.get("epoch")}
    await setup_accounts(engine)
    async with anyio.create_task_group() as clients:
        clients.start_soon(run_clients, engine, load, args.clients)
        clients.start_soon(run_customer_clients, bank, customer_load, args.customer_clients)
        await anyio.sleep(args.seconds)
        # Freeze what dc3 has applied (what a DC 30 ms away has received), then sample.
        await pause_replay(dc3.dsn())
        remote = await fetch_state(dc3.dsn())
        primary = await fetch_state(dc1.dsn())
        facts["acknowledged_before_kill"] = len(load.acknowledged)
        facts["customer_work_before_kill"] = customer_load.counts()
        facts["dc3_lag_at_kill"] = {
            "seqs": primary["last_seq"] - remote["last_seq"],
            "transfers": primary["transfers"] - remote["transfers"],
            "wal_bytes": primary["lsn"] - remote["lsn"],
            "dc1_lsn": lsn_text(primary["lsn"]),
            "dc3_applied_lsn": lsn_text(remote["lsn"]),
        }
        facts["dc3_target_lsn"] = lsn_text(remote["lsn"])
        facts["kill_ns"] = time.time_ns()
        facts["kill_monotonic"] = time.monotonic()
        facts["dc1_postmaster_pid"] = await anyio.to_thread.run_sync(dc1.kill)
        # The engine stops once its store gives up; every client then sees its outcome.
        await wait_until(lambda: bank.core.failed is not None, "the engine on dc1 to stop")
    facts["dc1_engine_stopped_by"] = bank.core.failed
    facts["acknowledged_total_dc1"] = len(load.acknowledged)
    facts["unknown_outcome_at_kill"] = len(load.unknown)
    facts["customer_work_acknowledged"] = customer_load.counts()
    facts["customer_refusals"] = dict(customer_load.refused)
    return facts


async def check_on(
    dsn: str,
    args: argparse.Namespace,
    load: Load,
    customer_load: CustomerLoad,
    owner: str,
    kill_monotonic: float,
    resend: bool,
) -> dict[str, Any]:
    """Start Tally on a promoted standby; RTO, lost and duplicate acknowledged transfers,
    and the acknowledged customers, accounts and password changes it lacks."""
    import asyncpg

    from core.pg_store import open_pg_store, verify

    opened = await open_pg_store(
        dsn, account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY, owner=owner
    )
    engine = Engine(opened.ledger, opened.store, load_rules(args.rules), linger_s=0.001)
    result: dict[str, Any] = {"epoch": opened.store.epoch, "load_s": round(opened.load_s, 3)}
    lost: list[int] = []
    duplicates: list[int] = []
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        probe = await engine.submit_transfer(
            _transfer(
                1 << 62 | os.getpid(), CLEARING_ID, FIRST_ACCOUNT, 1, TransferCode.TOPUP_BOUND
            )
        )
        result["rto_s"] = round(time.monotonic() - kill_monotonic, 3)
        result["first_transfer_result"] = int(probe.result)

        async def missing_in_ledger(ids: list[int]) -> set[int]:
            found: set[int] = await engine.read(
                lambda ledger: {i for i in ids if ledger.lookup_account(i) is None}
            )
            return found

        result.update(await check_customer_state(opened.state, customer_load, missing_in_ledger))
        ok_ids = [i for i, (code, _) in load.acknowledged.items() if code == R.OK]
        present = await engine.read(lambda ledger: {i: ledger.lookup_transfer(i) for i in ok_ids})
        for transfer_id in ok_ids:
            record = present[transfer_id]
            if record is None:
                lost.append(transfer_id)
            elif Transfer.unpack(record).timestamp != load.acknowledged[transfer_id][1]:
                duplicates.append(transfer_id)
        if resend:
            # Every acknowledged transfer and every unknown outcome, re-sent with its own id.
            ids = ok_ids + sorted(load.unknown)
            resolved_unknown = {"posted_now": 0, "was_committed": 0, "other": 0}
            for start in range(0, len(ids), 8189):
                chunk = ids[start : start + 8189]
                batch = b"".join(load.records[i] for i in chunk)
                answers = await engine.submit_transfers(batch)
                for index, transfer_id in enumerate(chunk):
                    answer = answers[index]
                    if transfer_id in load.unknown:
                        key = {R.OK: "posted_now", R.EXISTS: "was_committed"}.get(
                            CreateTransferResult(answer.result), "other"
                        )
                        resolved_unknown[key] += 1
                    elif answer.result == R.OK:
                        duplicates.append(transfer_id)
                    elif answer.result != R.EXISTS:
                        lost.append(transfer_id)
            result["unknown_outcomes_resolved"] = resolved_unknown
        await engine.wait_durable()
        task_group.cancel_scope.cancel()
    await opened.store.close()
    connection = await asyncpg.connect(dsn)
    try:
        report = await verify(connection, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    finally:
        await connection.close()
    result.update(
        {
            "acknowledged_checked": len(load.acknowledged),
            "lost": len(set(lost)),
            "acknowledged_lost": len(set(lost)),
            "lost_ids": sorted(set(lost)),
            "duplicates": len(set(duplicates)),
            "duplicate_ids": sorted(set(duplicates)),
            "verify_ok": report.ok,
            "verify": report.as_dict(),
        }
    )
    return result


def _wait_promoted(cluster: Cluster, timeout_s: float = 60.0) -> None:
    import subprocess

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        completed = subprocess.run(
            [
                os.path.join(cluster.bin_directory, "psql"),
                "-X",
                "-At",
                cluster.dsn(),
                "-c",
                "SELECT pg_is_in_recovery()",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.stdout.strip() == "f":
            return
        time.sleep(0.1)
    raise TallyError(f"{cluster.directory} was not promoted within {timeout_s} s")


def promote_at(cluster: Cluster, target_lsn: str) -> None:
    """Stop a standby, then recover it to `target_lsn` exactly and promote it."""
    cluster.stop("fast")
    data = cluster.data_directory
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(data, "standby.signal"))
    signal_path = os.path.join(data, "recovery.signal")
    with open(signal_path, "w", encoding="ascii"):
        pass
    stat = os.stat(data)
    os.chown(signal_path, stat.st_uid, stat.st_gid)
    cluster.write_settings(
        {
            "primary_conninfo": "''",
            "restore_command": "'false'",  # nothing archived: recover from dc3's own pg_wal
            "recovery_min_apply_delay": "0",
            "recovery_target_lsn": f"'{target_lsn}'",
            "recovery_target_action": "'promote'",
        }
    )
    cluster.start()
    _wait_promoted(cluster)


def wait_sync(primary: Cluster, timeout_s: float = 60.0) -> None:
    import subprocess

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        completed = subprocess.run(
            [
                os.path.join(primary.bin_directory, "psql"),
                "-X",
                "-At",
                primary.dsn(),
                "-c",
                "SELECT application_name || ':' || sync_state FROM pg_stat_replication",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        states = set(completed.stdout.split())
        if {"dc2:sync", "dc3:async"} <= states:
            return
        time.sleep(0.1)
    raise TallyError("dc2 and dc3 did not start streaming from dc1 in time")


def run(args: argparse.Namespace) -> int:
    clusters: list[Cluster] = []
    report: dict[str, Any] = {"drill": "failover", "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    status = 1
    try:
        primary_settings = {
            "wal_level": "replica",
            "max_wal_senders": "10",
            "hot_standby": "on",
            "fsync": "on",
            "synchronous_commit": "on",
            "synchronous_standby_names": "'FIRST 1 (dc2)'",
            "shared_buffers": "'64MB'",
        }
        dc1 = create_cluster("dc1", primary_settings)
        clusters.append(dc1)
        dc1.start()
        dc2 = create_standby("dc2", dc1, {"synchronous_standby_names": "''"})
        clusters.append(dc2)
        dc3 = create_standby(
            "dc3",
            dc1,
            {
                "synchronous_standby_names": "''",
                "recovery_min_apply_delay": f"'{int(args.dc3_delay_ms)}ms'",
            },
        )
        clusters.append(dc3)
        dc2.start()
        dc3.start()
        wait_sync(dc1)
        report["topology"] = {
            "dc1": "primary, synchronous_standby_names = 'FIRST 1 (dc2)', synchronous_commit = on",
            "dc2": "synchronous standby (same city)",
            "dc3": f"asynchronous standby, recovery_min_apply_delay = {args.dc3_delay_ms} ms",
        }
        load = Load()
        customer_load = CustomerLoad()
        kill = anyio.run(scenario_dc1, dc1, dc3, args, load, customer_load, backend="asyncio")
        report["kill"] = {k: v for k, v in kill.items() if k != "kill_monotonic"}
        dc2.promote()
        _wait_promoted(dc2)
        report["scenario_dc2"] = anyio.run(
            check_on,
            dc2.dsn(),
            args,
            load,
            customer_load,
            "drill dc2",
            kill["kill_monotonic"],
            True,
            backend="asyncio",
        )
        promote_at(dc3, kill["dc3_target_lsn"])
        report["scenario_dc3"] = anyio.run(
            check_on,
            dc3.dsn(),
            args,
            load,
            customer_load,
            "drill dc3",
            kill["kill_monotonic"],
            False,
            backend="asyncio",
        )
        report["scenario_dc3"].pop("duplicate_ids", None)
        dc3_result = report["scenario_dc3"]
        dc3_result["rpo_by_kind"] = {
            "transfers": dc3_result["lost"],
            "customers": dc3_result["customers_lost"],
            "accounts": dc3_result["accounts_lost"],
            "password_changes": dc3_result["password_changes_lost"],
        }
        work = kill["customer_work_acknowledged"]
        passed = (
            report["scenario_dc2"]["lost"] == 0
            and report["scenario_dc2"]["duplicates"] == 0
            and report["scenario_dc2"]["customers_lost"] == 0
            and report["scenario_dc2"]["accounts_lost"] == 0
            and report["scenario_dc2"]["password_changes_lost"] == 0
            and min(work["customers"], work["accounts"], work["password_changes"]) > 0
            and report["scenario_dc2"]["verify_ok"]
            and report["scenario_dc3"]["duplicates"] == 0
            and report["scenario_dc3"]["verify_ok"]
        )
        report["passed"] = passed
        status = 0 if passed else 1
    except (TallyError, OSError) as error:
        report["error"] = f"{type(error).__name__}: {error}"
    finally:
        for cluster in reversed(clusters):
            with contextlib.suppress(Exception):
                cluster.remove()
        with open(args.output, "wb") as out:
            out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        print(summary(report))
    return status


def summary(report: dict[str, Any]) -> str:
    if "error" in report and "scenario_dc2" not in report:
        return f"drill failed: {report['error']}"
    kill = report.get("kill", {})
    lag = kill.get("dc3_lag_at_kill", {})
    dc2 = report.get("scenario_dc2", {})
    dc3 = report.get("scenario_dc3", {})
    lines = [
        f"failover drill {report['date']}: {'PASSED' if report.get('passed') else 'FAILED'}",
        f"  load on dc1: {kill.get('acknowledged_total_dc1', 0):,} transfers acknowledged,"
        f" {kill.get('unknown_outcome_at_kill', 0)} in flight (outcome unknown) at the kill",
        f"  dc3 behind dc1 at the kill: {lag.get('seqs')} entries, {lag.get('transfers')}"
        f" transfers, {lag.get('wal_bytes')} WAL bytes",
        f"  dc1 lost -> dc2 promoted: RTO {dc2.get('rto_s')} s (kill to first transfer on dc2),"
        f" acknowledged lost {dc2.get('lost')}, duplicates {dc2.get('duplicates')},"
        f" verify {'ok' if dc2.get('verify_ok') else 'FAILED'}, epoch {dc2.get('epoch')}",
        f"    unknown outcomes re-sent on dc2: {dc2.get('unknown_outcomes_resolved')}",
        f"    customer work acknowledged on dc1: {kill.get('customer_work_acknowledged')};"
        f" lost on dc2: customers {dc2.get('customers_lost')}, accounts"
        f" {dc2.get('accounts_lost')}, password changes {dc2.get('password_changes_lost')}",
        f"  region A lost -> dc3 promoted: acknowledged lost {dc3.get('lost')}"
        f" (the RPO of losing the city), verify {'ok' if dc3.get('verify_ok') else 'FAILED'}",
        f"    RPO by kind: {dc3.get('rpo_by_kind')}",
    ]
    if dc3.get("lost_ids"):
        shown = ", ".join(str(i) for i in dc3["lost_ids"][:20])
        more = len(dc3["lost_ids"]) - 20
        lines.append(f"    lost on dc3: {shown}{f' and {more} more' if more > 0 else ''}")
    if "error" in report:
        lines.append(f"  error: {report['error']}")
    return "\n".join(lines)
