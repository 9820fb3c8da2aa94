"""`tally drill failover`: the dual-region, three-DC topology on Patroni + etcd, for real.

The deployment is `core.drills.patroni` (docs/ha.md): three etcd members and
three Patroni members, dc1 the leader, dc2 (same city) its synchronous
standby under `synchronous_mode_strict`, dc3 (remote, `nofailover`) an
asynchronous replica. Tally reaches the leader through the multi-host DSN
with `target_session_attrs=read-write`; nothing in the drill promotes dc2:
Patroni does. Every process and directory it started is stopped and removed
on the way out, whatever happened.

Scenario `dc1` (the default), losing dc1 under load:

- Tally on dc1 is a real process (a `Bank`: the services and the engine on
  the PostgreSQL store), under steady load from concurrent transfer clients
  and customer clients (registrations, openings, password changes) inside
  it; every answer a client receives is written to the drill on a pipe the
  moment it arrives: that is what was acknowledged. The customers' real-name
  verification asks the providers (core/providers): a provider simulator the
  drill starts (`running_simulator`), or the one `--providers` names.
- Mid-load, dc3's replay is frozen and its lag sampled (what a DC 30 ms away
  had at that moment), then dc1 dies at once: SIGKILL to the Tally process,
  dc1's Patroni, its PostgreSQL (postmaster and backends) and its etcd member.
- Patroni's leader key expires, dc2's Patroni promotes dc2 and makes dc3 the
  new synchronous standby. A Tally beside dc2 (in the drill's process: an
  engine on the PostgreSQL store, opened through the same DSN, retried every
  `STORE_RETRY_S` like the services' lifecycle) takes a new fencing epoch,
  rebuilds its ledger from dc2 and posts a probe transfer: RTO = kill to the
  probe's acknowledgement. The Patroni timings (leader seen on dc2, dc3 sync)
  come from dc2's REST API, polled from the kill on.
- Every acknowledged transfer is re-sent with its own id: each must answer
  `exists` with its original timestamp (none lost, none posted twice); the
  outcomes unknown at the kill (the transfer each client had in flight) are
  resolved the same way; acknowledged customers, accounts and password
  changes must all be on dc2; `tally db verify` runs on dc2.

Region A lost: the RPO had the whole city died at the kill is what dc3 held
then: its replay is paused just before the kill and one snapshot read there;
every acknowledged transfer, customer, account and password change missing in
it is listed by id. Then the operator's promotion is done for real: dc2 killed
too, dc3's Patroni stopped, dc3 promoted by hand (`pg_ctl promote`), Tally
opened on it and checked (dc3 was dc2's synchronous standby by then).

More scenarios (`--scenario`): `old-primary-returns` (dc1 restarted after the
failover: Patroni rewinds it into a replica of dc2; it must be in recovery and
refuse a write), `dc2-then-dc1` (dc2 dies, dc3 becomes the synchronous
standby, then dc1 dies: nothing may be promoted, writes stop; an operator
promotes dc3, which lost nothing because it was synchronous), `partition-dc1`
(each DC in its own network namespace, dc1 cut off under load and alive: it
must stop taking writes, dc2 takes over, dc1 rejoins as a replica when the
link returns, and whatever either Tally acknowledged must be on the final
leader; docs/ha.md records a Patroni 3.0.2 split brain this can expose).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from core.data import DEFAULT_RULES_PATH
from core.drills import patroni
from core.drills.customers import (
    FIRST_PASSWORD,
    CustomerLoad,
    check_customer_state,
    run_customer_clients,
)
from core.drills.pg_cluster import Cluster, ClusterError
from core.engine import Engine, EngineStopped
from core.errors import TallyError
from core.pg_store import PgStoreError, connect
from core.providers.client import HttpProviders
from core.providers.config import ProvidersConfig
from core.providers.sim import running_simulator
from core.services.lifecycle import STORE_RETRY_S
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
PROBE_ID = 1 << 62 | os.getpid()  # the RTO probe's transfer on the promoted member
SCENARIOS = ("dc1", "old-primary-returns", "dc2-then-dc1", "partition-dc1")
TALLY_READY_TIMEOUT_S = 120.0
FAILOVER_TIMEOUT_S = 120.0
SIMULATOR_SEED = 1  # the provider simulator's seed (no fraud drawn: every customer is real)
# dc2-then-dc1: how long to watch for a (forbidden) promotion once dc1 is dead.
NO_PROMOTION_WATCH_S = 3 * patroni.TTL_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=8.0, help="load before the kill")
    parser.add_argument("--clients", type=int, default=64, help="concurrent transfer clients")
    parser.add_argument(
        "--customer-clients",
        type=int,
        default=4,
        help="concurrent clients registering customers, opening accounts, changing passwords",
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="dc1",
        help="dc1: lose dc1 under load (then region A, dc3 promoted by hand); "
        "old-primary-returns: dc1 as well, then dc1 restarted; dc2-then-dc1: dc2 dies, then dc1;"
        " partition-dc1: dc1 cut off from etcd, dc2 and dc3 (network namespaces, root only)",
    )
    parser.add_argument("--output", default="drill.json", help="where to write the report")
    parser.add_argument("--save", metavar="DIR", help="also save DIR/drill-<time>.json")
    parser.add_argument("--dir", help="cluster directory (default: a fresh one under /tmp)")
    parser.add_argument("--port-base", type=int, help="default: a free range")
    parser.add_argument("--rules", default=str(DEFAULT_RULES_PATH))
    parser.add_argument(
        "--providers",
        metavar="URL",
        help="a running provider simulator (`tally providers serve`) for the customers'"
        " verification; its /sim/sms inboxes give the SMS codes (default: the drill starts one)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")


def check_arguments(args: argparse.Namespace) -> str | None:
    """A precise error for bad options, before anything starts (None: fine)."""
    if not args.seconds > 0:
        return f"--seconds must be > 0, not {args.seconds}"
    if args.clients < 1:
        return f"--clients must be >= 1, not {args.clients}"
    if args.customer_clients < 1:
        return f"--customer-clients must be >= 1, not {args.customer_clients}"
    if args.port_base is not None and not 1024 <= args.port_base <= 65535 - 40:
        return f"--port-base must be in 1024..{65535 - 40}, not {args.port_base}"
    if args.dir is not None and os.path.exists(args.dir):
        return f"--dir {args.dir} exists: the drill builds its cluster in a new directory"
    if not os.path.isfile(args.rules):
        return f"--rules {args.rules}: no such file"
    return None


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


async def run_clients(
    engine: Engine, load: Load, clients: int, emit: Callable[..., None] | None = None
) -> None:
    """`clients` clients posting transfers one at a time; `emit("t", c, n, result,
    timestamp)` is called with each answer as it arrives (the drill's pipe)."""

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
            if emit is not None:
                emit("t", c, n, int(outcome.result), outcome.timestamp)
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


async def execute_on(dsn: str, *statements: str) -> None:
    """Run `statements` on one server, outside any transaction (ALTER SYSTEM needs that)."""
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def pause_replay(dsn: str) -> None:
    await execute_on(dsn, "SELECT pg_wal_replay_pause()")


async def resume_replay(dsn: str) -> None:
    await execute_on(dsn, "SELECT pg_wal_replay_resume()")


async def drop_synchronous_standbys(dsn: str) -> None:
    await execute_on(
        dsn, "ALTER SYSTEM SET synchronous_standby_names TO ''", "SELECT pg_reload_conf()"
    )


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll `condition` every 10 ms, at most `timeout_s`."""
    for _ in range(int(timeout_s / WAIT_POLL_S)):
        if condition():
            return
        await anyio.sleep(WAIT_POLL_S)
    raise TallyError(f"timed out after {timeout_s} s waiting for {what}")


# --- Tally on dc1: a child process, SIGKILLed with dc1 -------------------------------


class _Pipe:
    """One line of JSON per event on fd 1, written at once (a single write each): what
    reached the drill before the SIGKILL is what the clients saw acknowledged."""

    def __call__(self, *event: Any) -> None:
        os.write(1, orjson.dumps(event) + b"\n")


class _EmittingList(list[Any]):
    def __init__(self, emit: _Pipe, tag: str) -> None:
        super().__init__()
        self.emit, self.tag = emit, tag

    def append(self, value: Any) -> None:
        super().append(value)
        self.emit(self.tag, value)


class _EmittingDict(dict[int, str]):
    def __init__(self, emit: _Pipe, tag: str) -> None:
        super().__init__()
        self.emit, self.tag = emit, tag

    def __setitem__(self, key: int, value: str) -> None:
        super().__setitem__(key, value)
        self.emit(self.tag, key, value)

    def __delitem__(self, key: int) -> None:
        super().__delitem__(key)
        self.emit(self.tag + "-", key)


def child_main() -> None:
    """The Tally process on dc1 (`python -c ...child_main() OPTIONS`): serves until killed."""
    options = orjson.loads(sys.argv[1])
    anyio.run(_serve_tally_dc1, options, backend="asyncio")


async def _serve_tally_dc1(options: dict[str, Any]) -> None:
    from core.services.bank import Bank
    from core.services.lifecycle import Settings

    emit = _Pipe()
    # The data directory is the drill's (this process dies by SIGKILL): it holds nothing,
    # the ledger and the customer state are in PostgreSQL.
    settings = Settings(
        data_dir=options["data_dir"],
        store_dsn=options["dsn"],
        account_capacity=ACCOUNT_CAPACITY,
        transfer_capacity=TRANSFER_CAPACITY,
        scrypt_n=DRILL_SCRYPT_N,
        pg_options={"reconnect_timeout_s": 1.0, "commit_timeout_s": 10.0},
    )
    providers = HttpProviders(ProvidersConfig.at(options["providers"]))
    bank = Bank(settings, load_rules(options["rules"]), providers=providers)
    customer_load = CustomerLoad()
    customer_load.customers = _EmittingList(emit, "c")
    customer_load.accounts = _EmittingList(emit, "a")
    customer_load.passwords = _EmittingDict(emit, "p")
    customer_load.in_flight = _EmittingDict(emit, "f")
    async with anyio.create_task_group() as task_group:
        await task_group.start(bank.serve)
        await wait_until(lambda: bank.core.ready, "Tally on dc1", TALLY_READY_TIMEOUT_S)
        engine = bank.core.running_engine()
        await setup_accounts(engine)
        emit("ready", bank.core.recovery_info.get("epoch"))
        task_group.start_soon(run_clients, engine, Load(), options["clients"], emit)
        task_group.start_soon(
            run_customer_clients,
            bank,
            customer_load,
            options["customer_clients"],
            options["providers"],
        )


@dataclass
class TallyProcess:
    """The child running Tally on dc1 and what its clients saw acknowledged."""

    process: subprocess.Popen[bytes]
    load: Load = field(default_factory=Load)
    customer_load: CustomerLoad = field(default_factory=CustomerLoad)
    acknowledged_n: dict[int, int] = field(default_factory=dict)  # client -> next n
    ready: threading.Event = field(default_factory=threading.Event)
    epoch: int | None = None
    reader: threading.Thread | None = None
    dc3_snapshot: Dc3Snapshot | None = None
    cut_at: float | None = None  # monotonic time of a partition of dc1
    acknowledged_after_cut: list[int] = field(default_factory=list)

    def read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.apply(orjson.loads(line))

    def apply(self, event: list[Any]) -> None:
        tag, *values = event
        customer_load = self.customer_load
        if tag == "t":
            c, n, result, timestamp = values
            transfer_id, record = client_transfer(c, n)
            self.load.acknowledged[transfer_id] = (result, timestamp)
            self.load.records[transfer_id] = record
            self.acknowledged_n[c] = n + 1
            if self.cut_at is not None:
                self.acknowledged_after_cut.append(transfer_id)
        elif tag == "c":
            customer_load.customers.append(values[0])
        elif tag == "a":
            customer_load.accounts.append(values[0])
        elif tag == "p":
            customer_load.passwords[values[0]] = values[1]
            if values[1] != FIRST_PASSWORD:
                customer_load.password_changes += 1
        elif tag == "f":
            customer_load.in_flight[values[0]] = values[1]
        elif tag == "f-":
            customer_load.in_flight.pop(values[0], None)
        elif tag == "ready":
            self.epoch = values[0]
            self.ready.set()

    def mark_unknown(self, clients: int) -> None:
        """Each client's next transfer after its last acknowledged one: in flight at the
        kill, or not yet sent; either way its outcome is unknown to the client."""
        for c in range(clients):
            transfer_id, record = client_transfer(c, self.acknowledged_n.get(c, 0))
            self.load.unknown[transfer_id] = record
            self.load.records[transfer_id] = record


def start_tally(
    dsn: str, data_dir: str, args: argparse.Namespace, namespace: str | None = None
) -> TallyProcess:
    """Tally on dc1 as a child process (inside dc1's network namespace if given), its
    verification providers at `args.providers`."""
    options = {
        "dsn": dsn,
        "data_dir": data_dir,
        "rules": args.rules,
        "clients": args.clients,
        "customer_clients": args.customer_clients,
        "providers": args.providers,
    }
    code = "from core.drills.failover import child_main; child_main()"
    inside = ["ip", "netns", "exec", namespace] if namespace else []
    process = subprocess.Popen(
        [*inside, sys.executable, "-c", code, orjson.dumps(options).decode()],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    tally = TallyProcess(process)
    tally.reader = threading.Thread(target=tally.read_events, daemon=True)
    tally.reader.start()
    deadline = time.monotonic() + TALLY_READY_TIMEOUT_S
    while not tally.ready.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            tally.reader.join(timeout=30)
            assert process.stdout is not None
            process.stdout.close()
            raise TallyError(f"Tally on dc1 did not start (exit status {process.returncode})")
    return tally


def kill_tally(tally: TallyProcess, clients: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(tally.process.pid, signal.SIGKILL)
    tally.process.wait()
    assert tally.reader is not None and tally.process.stdout is not None
    tally.reader.join(timeout=30)
    tally.process.stdout.close()
    tally.mark_unknown(clients)


# --- watching Patroni ---------------------------------------------------------------


class PatroniWatch(threading.Thread):
    """Polls the members' REST APIs from the kill on: when each (member, role) was first
    seen, in seconds after `since` (monotonic)."""

    def __init__(self, topology: patroni.Topology, since: float, until: Callable[[dict], bool]):
        super().__init__(daemon=True)
        self.topology, self.since, self.until = topology, since, until
        self.first_seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = self.since + FAILOVER_TIMEOUT_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            view = self.topology.cluster_view() or {}
            now = round(time.monotonic() - self.since, 3)
            roles: dict[str, str] = {}
            for member in view.get("members", []):
                role = f"{member['name']}:{member.get('role')}:{member.get('state')}"
                self.first_seen.setdefault(role, now)
                roles[member["name"]] = f"{member.get('role')}:{member.get('state')}"
            if self.until(roles):
                return
            time.sleep(0.05)


# --- scenarios ----------------------------------------------------------------------


async def sample_lag(topology: patroni.Topology) -> dict[str, Any]:
    """Freeze what dc3 has applied (what a DC 30 ms away has), then compare with dc1."""
    await pause_replay(topology.member_dsn("dc3"))
    remote = await fetch_state(topology.member_dsn("dc3"))
    primary = await fetch_state(topology.member_dsn("dc1"))
    return {
        "seqs": primary["last_seq"] - remote["last_seq"],
        "transfers": primary["transfers"] - remote["transfers"],
        "wal_bytes": primary["lsn"] - remote["lsn"],
        "dc1_lsn": lsn_text(primary["lsn"]),
        "dc3_applied_lsn": lsn_text(remote["lsn"]),
    }


@dataclass
class Dc3Snapshot:
    """What dc3 held at one WAL position (replay paused, one REPEATABLE READ snapshot):
    what would survive if region A died at that moment."""

    lsn: str
    last_seq: int
    transfer_ids: set[int]
    account_ids: set[int]
    state: dict[bytes, bytes]


async def snapshot_dc3(dsn: str) -> Dc3Snapshot:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            lsn = int(await connection.fetchval("SELECT pg_last_wal_replay_lsn()"))
            last_seq = int(await connection.fetchval("SELECT last_seq FROM tally_epoch"))
            transfers = await connection.fetch(
                "SELECT id_lo FROM tally_transfer_records WHERE id_hi = 0"
            )
            accounts = await connection.fetch("SELECT id_lo FROM tally_accounts WHERE id_hi = 0")
            state = await connection.fetch("SELECT key, value FROM tally_state")
    finally:
        await connection.close()
    return Dc3Snapshot(
        lsn_text(lsn),
        last_seq,
        {int(row["id_lo"]) for row in transfers},
        {int(row["id_lo"]) for row in accounts},
        {bytes(row["key"]): bytes(row["value"]) for row in state},
    )


async def region_a_rpo(
    snapshot: Dc3Snapshot, load: Load, customer_load: CustomerLoad
) -> dict[str, Any]:
    """Every acknowledged transfer, customer, account and password change that dc3 lacked
    at the snapshot: the RPO of losing region A at that moment."""

    async def missing_in_ledger(ids: list[int]) -> set[int]:
        return {i for i in ids if i not in snapshot.account_ids}

    ok_ids = [i for i, (code, _) in load.acknowledged.items() if code == R.OK]
    lost = sorted(i for i in ok_ids if i not in snapshot.transfer_ids)
    result: dict[str, Any] = {
        "dc3_lsn": snapshot.lsn,
        "dc3_last_seq": snapshot.last_seq,
        "acknowledged_checked": len(ok_ids),
        "lost": len(lost),
        "lost_ids": lost,
    }
    result.update(await check_customer_state(snapshot.state, customer_load, missing_in_ledger))
    result["rpo_by_kind"] = {
        "transfers": result["lost"],
        "customers": result["customers_lost"],
        "accounts": result["accounts_lost"],
        "password_changes": result["password_changes_lost"],
    }
    return result


def load_and_kill_dc1(
    topology: patroni.Topology, args: argparse.Namespace
) -> tuple[TallyProcess, dict[str, Any]]:
    """Tally on dc1 under load for `args.seconds`, dc3 frozen, then dc1 SIGKILLed whole."""
    with tempfile.TemporaryDirectory(prefix="tally-drill-dc1-") as data_dir:
        tally = start_tally(topology.dsn(), data_dir, args)
        facts = _load_and_kill(topology, args, tally)
    facts["killed_dc1"] = topology.kill_dc("dc1")
    facts["tally_dc1_pid"] = tally.process.pid
    facts["acknowledged_total_dc1"] = len(tally.load.acknowledged)
    facts["unknown_outcome_at_kill"] = len(tally.load.unknown)
    facts["customer_work_acknowledged"] = tally.customer_load.counts()
    return tally, facts


def _load_and_kill(
    topology: patroni.Topology, args: argparse.Namespace, tally: TallyProcess
) -> dict[str, Any]:
    facts: dict[str, Any] = {"epoch_dc1": tally.epoch}
    try:
        time.sleep(args.seconds)
        facts["dc3_lag_at_kill"] = anyio.run(sample_lag, topology, backend="asyncio")
        tally.dc3_snapshot = anyio.run(snapshot_dc3, topology.member_dsn("dc3"), backend="asyncio")
        facts["acknowledged_before_kill"] = len(tally.load.acknowledged)
        facts["kill_ns"] = time.time_ns()
        facts["kill_monotonic"] = time.monotonic()
    finally:
        kill_tally(tally, args.clients)
    return facts


def failover_to_dc2(
    topology: patroni.Topology, args: argparse.Namespace, tally: TallyProcess, kill: dict
) -> dict[str, Any]:
    """Patroni promotes dc2 (watched); Tally beside dc2 resumes; the checks."""
    watch = PatroniWatch(
        topology,
        kill["kill_monotonic"],
        lambda roles: (
            roles.get("dc2") == "leader:running" and roles.get("dc3") == "sync_standby:running"
        ),
    )
    watch.start()
    result = anyio.run(
        check_on,
        topology.dsn(),
        args,
        tally.load,
        tally.customer_load,
        "drill beside dc2",
        kill["kill_monotonic"],
        True,
        backend="asyncio",
    )
    watch.join(FAILOVER_TIMEOUT_S)
    watch.stop.set()
    seen = watch.first_seen
    result["patroni"] = {
        "dc2_leader_seen_s": seen.get("dc2:leader:running"),
        "dc3_sync_standby_seen_s": seen.get("dc3:sync_standby:running"),
        "dc1_gone_from_cluster_s": _first_without(seen, "dc1"),
        "first_seen_s": seen,
        "history": _history(topology, "dc2"),
    }
    return result


def _first_without(seen: dict[str, float], name: str) -> float | None:
    """Not observable from the roles alone: the first sighting of a role change elsewhere."""
    times = [t for role, t in seen.items() if not role.startswith(name + ":") and t > 0]
    return min(times) if times else None


def _history(topology: patroni.Topology, name: str) -> Any:
    with contextlib.suppress(TallyError):
        return topology.rest(name, "/history")
    return None


def lose_region_a(
    topology: patroni.Topology, args: argparse.Namespace, tally: TallyProcess
) -> dict[str, Any]:
    """Region A lost. The RPO had it died at the kill: what dc3 lacked then (its frozen
    snapshot). Then the operator's promotion, done for real now: dc2 killed too, dc3's
    Patroni stopped, dc3 promoted by hand (`pg_ctl promote`), Tally opened on it and
    checked (it was dc2's synchronous standby since the failover: nothing may miss)."""
    assert tally.dc3_snapshot is not None
    result = anyio.run(
        region_a_rpo, tally.dc3_snapshot, tally.load, tally.customer_load, backend="asyncio"
    )
    topology.kill_dc("dc2")
    started = time.monotonic()
    dc3 = operator_promotes_dc3(topology)
    operator_s = round(time.monotonic() - started, 3)
    checked = anyio.run(
        check_on,
        dc3.dsn(),
        args,
        tally.load,
        tally.customer_load,
        "drill dc3 (operator)",
        time.monotonic(),
        False,
        backend="asyncio",
    )
    result["operator_promotion"] = {
        "promotion_s": operator_s,
        "acknowledged_lost": checked["acknowledged_lost"],
        "duplicates": checked["duplicates"],
        "customers_lost": checked["customers_lost"],
        "accounts_lost": checked["accounts_lost"],
        "password_changes_lost": checked["password_changes_lost"],
        "verify_ok": checked["verify_ok"],
        "epoch": checked["epoch"],
    }
    return result


def operator_promotes_dc3(topology: patroni.Topology) -> Cluster:
    """The operator's promotion of dc3 without a DCS quorum (docs/ha.md): dc3's Patroni
    stopped (SIGKILL: its PostgreSQL keeps running; SIGTERM would stop PostgreSQL too and
    wait for the DCS), replay resumed, `pg_ctl promote`, and `synchronous_standby_names`
    emptied: alone in region B no synchronous standby can exist, and left as strict mode
    set it every COMMIT would wait forever."""
    topology.kill("patroni-dc3")
    dc3 = topology.postgresql("dc3")
    anyio.run(resume_replay, dc3.dsn(), backend="asyncio")
    dc3.promote()
    anyio.run(drop_synchronous_standbys, dc3.dsn(), backend="asyncio")
    return dc3


def old_primary_returns(topology: patroni.Topology) -> dict[str, Any]:
    """dc1 restarted after the failover: Patroni rewinds it into a replica of the new
    leader; it must be in recovery and refuse a write, and the DSN must not lead to it."""
    started = time.monotonic()
    dc1 = topology.member("dc1")
    topology.start_etcd(dc1, new=False)
    topology.start_patroni(dc1)
    roles = wait_rejoined(topology, "dc1")
    rejoined_s = round(time.monotonic() - started, 3)
    result: dict[str, Any] = {"rejoined_s": rejoined_s, "roles": roles}
    result.update(anyio.run(_probe_old_primary, topology, backend="asyncio"))
    log = os.path.join(topology.member_directory("dc1"), "patroni.log")
    with open(log, encoding="utf-8", errors="replace") as file:
        text = file.read()
    # Patroni logs "running pg_rewind from ..." and "pg_rewind exit code=N" when it rewinds;
    # without a divergence (dc1 had nothing dc2 lacks) it just follows the new timeline.
    result["pg_rewind_ran"] = "running pg_rewind" in text
    result["pg_rewind_exit_codes"] = [
        line.rsplit("=", 1)[1].strip()
        for line in text.splitlines()
        if "pg_rewind exit code" in line
    ]
    result["passed"] = bool(
        result["dc1_in_recovery"]
        and result["write_refused"]
        and result["dsn_leads_to"] == "dc2"
        and roles.get("dc1", "").endswith(":running")
    )
    return result


def wait_rejoined(topology: patroni.Topology, name: str, leader: str = "dc2") -> dict[str, str]:
    """Until `name` runs as a replica again (at most FAILOVER_TIMEOUT_S), as the leader's
    REST API sees it (a returning member's own view may be stale); the roles seen last, as
    "role:state"."""
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    roles: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            view = topology.rest(leader, "/cluster")
        except TallyError:
            view = {}
        roles = {m["name"]: f"{m.get('role')}:{m.get('state')}" for m in view.get("members", [])}
        if roles.get(name) in ("replica:running", "sync_standby:running"):
            break
        time.sleep(0.2)
    return roles


async def _probe_old_primary(topology: patroni.Topology) -> dict[str, Any]:
    import asyncpg

    connection = await asyncpg.connect(topology.member_dsn("dc1"))
    try:
        in_recovery = bool(await connection.fetchval("SELECT pg_is_in_recovery()"))
        try:
            await connection.execute("UPDATE tally_epoch SET owner = 'old primary'")
            refused = ""
        except asyncpg.PostgresError as error:
            refused = f"{type(error).__name__}: {error}"
    finally:
        await connection.close()
    connection = await connect(topology.dsn())
    try:
        port = int(await connection.fetchval("SELECT current_setting('port')"))
    finally:
        await connection.close()
    leads_to = next((m.name for m in topology.members() if m.pg_port == port), str(port))
    return {
        "dc1_in_recovery": in_recovery,
        "write_refused": bool(refused),
        "write_error": refused,
        "dsn_leads_to": leads_to,
    }


def dc2_then_dc1(topology: patroni.Topology, args: argparse.Namespace) -> dict[str, Any]:
    """dc2 dies (dc3 becomes dc1's synchronous standby), then dc1 under load: nothing may
    be promoted (dc3 is nofailover), writes stop; an operator promotes dc3 by hand, which
    has every acknowledged transfer because it was synchronous."""
    result: dict[str, Any] = {"killed_dc2": topology.kill_dc("dc2")}
    started = time.monotonic()
    topology.wait_healthy(FAILOVER_TIMEOUT_S, leader="dc1", sync="dc3")
    result["dc3_sync_after_dc2_lost_s"] = round(time.monotonic() - started, 3)
    tally, kill = load_and_kill_dc1(topology, args)
    result["kill"] = {k: v for k, v in kill.items() if k != "kill_monotonic"}
    time.sleep(NO_PROMOTION_WATCH_S)
    roles = topology.roles()
    result["roles_after_watch"] = roles
    # dc1 and dc2's etcd members are gone: dc3's Patroni has no quorum and its REST view is
    # stale (dc1 may still show as leader); whether dc3 was promoted is asked of dc3 itself.
    dc3_in_recovery = anyio.run(_in_recovery, topology.member_dsn("dc3"), backend="asyncio")
    result["dc3_in_recovery"] = dc3_in_recovery
    result["promoted_automatically"] = roles.get("dc3") == "leader" or not dc3_in_recovery
    result["writes_possible"] = anyio.run(_writable, topology.dsn(), backend="asyncio")
    result["rto_s"] = None
    result["rto"] = "unbounded: writes stop until an operator acts"
    # The operator: dc3 (synchronous until dc1 died) promoted by hand, at its latest WAL.
    dc3 = operator_promotes_dc3(topology)
    checked = anyio.run(
        check_on,
        dc3.dsn(),
        args,
        tally.load,
        tally.customer_load,
        "drill dc3 (operator)",
        kill["kill_monotonic"],
        True,
        backend="asyncio",
    )
    checked.pop("rto_s", None)
    result["after_operator_promoted_dc3"] = checked
    result["acknowledged_lost"] = checked["acknowledged_lost"]
    result["duplicates"] = checked["duplicates"]
    result["customers_lost"] = checked["customers_lost"]
    result["passed"] = bool(
        not result["promoted_automatically"]
        and not result["writes_possible"]
        and checked["acknowledged_lost"] == 0
        and checked["duplicates"] == 0
        and checked["customers_lost"] == checked["accounts_lost"] == 0
        and checked["verify_ok"]
    )
    return result


def partition_dc1(topology: patroni.Topology, args: argparse.Namespace) -> dict[str, Any]:
    """dc1 (its etcd, Patroni, PostgreSQL and Tally, each DC in its own network namespace)
    cut off from everything else under load, alive. Patroni on dc1 cannot renew its key and
    demotes dc1; Patroni promotes dc2 once the key expires; Tally on dc1 can acknowledge
    nothing dc2 lacks (strict synchronous mode); a Tally beside dc2 resumes; healed, dc1
    rejoins as a replica; every transfer Tally on dc1 ever acknowledged is on dc2."""
    with tempfile.TemporaryDirectory(prefix="tally-drill-dc1-") as data_dir:
        tally = start_tally(topology.dsn(), data_dir, args, topology.namespace("dc1"))
        try:
            time.sleep(args.seconds)
            cut_at = tally.cut_at = time.monotonic()
            cut_wall = time.time()
            acknowledged_before = len(tally.load.acknowledged)
            topology.partition("dc1")
            demotion = DemotionWatch(topology.postgresql("dc1").dsn(), cut_at)
            demotion.start()
            result: dict[str, Any] = {"acknowledged_before_cut": acknowledged_before}
            # The Tally beside dc2 checks what was acknowledged up to now and measures the
            # RTO (cut to its first acknowledged transfer); dc1's Tally keeps running.
            snapshot = Load(dict(tally.load.acknowledged), {}, dict(tally.load.records))
            result["beside_dc2"] = anyio.run(
                check_on, topology.dsn(), args, snapshot, tally.customer_load,
                "drill beside dc2", cut_at, True, backend="asyncio",
            )  # fmt: skip
            demotion.join(FAILOVER_TIMEOUT_S)
            result["dc1_demoted_s"] = demotion.demoted_s
            result["dc1_demoted_how"] = demotion.how
            topology.heal("dc1")
            healed = time.monotonic()
            roles = wait_rejoined(topology, "dc1")
            result["dc1_rejoined_s"] = round(time.monotonic() - healed, 3)
            result["roles_after_heal"] = roles
        finally:
            kill_tally(tally, args.clients)
    after = tally.acknowledged_after_cut
    result["acknowledged_by_dc1_after_cut"] = len(after)
    final = anyio.run(_missing_on_leader, topology.dsn(), tally.load, backend="asyncio")
    # What the Tally beside dc2 acknowledged there (its probe) must survive the heal too.
    _, probe_result, probe_timestamp = result["beside_dc2"]["probe"]
    probe = Load({PROBE_ID: (probe_result, probe_timestamp)})
    probe_lost = anyio.run(_missing_on_leader, topology.dsn(), probe, backend="asyncio")
    result["acknowledged_on_dc2_lost_after_heal"] = probe_lost
    final = final + probe_lost
    result["acknowledged_total"] = len(tally.load.acknowledged)
    result["acknowledged_missing_on_dc2"] = final
    checked = result["beside_dc2"]
    result["rto_s"] = checked["rto_s"]
    result["acknowledged_lost"] = checked["acknowledged_lost"] + len(final)
    result["duplicates"] = checked["duplicates"]
    result["customers_lost"] = checked["customers_lost"]
    log = os.path.join(topology.member_directory("dc1"), "patroni.log")
    with open(log, encoding="utf-8", errors="replace") as file:
        text = file.read()
    cut_text = time.strftime("%Y-%m-%d %H:%M", time.gmtime(cut_wall))
    result["dc1_patroni_said"] = [
        line
        for line in text.splitlines()
        if line[:16] >= cut_text
        and any(word in line for word in ("demot", "promot", "rewind", "Lock owner: dc2"))
    ][:20]
    result["passed"] = bool(
        result["acknowledged_lost"] == 0
        and result["duplicates"] == 0
        and result["customers_lost"] == checked["accounts_lost"] == 0
        and checked["verify_ok"]
        and result["dc1_demoted_s"] is not None
        and roles.get("dc1") in ("replica:running", "sync_standby:running")
    )
    return result


class DemotionWatch(threading.Thread):
    """From the cut on, asks dc1 itself (its Unix socket: reachable across namespaces)
    whether it still takes writes; the first time it does not, in seconds after the cut."""

    def __init__(self, dsn: str, since: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.since = dsn, since
        self.demoted_s: float | None = None
        self.how = ""

    def run(self) -> None:
        while time.monotonic() < self.since + FAILOVER_TIMEOUT_S:
            how = anyio.run(_primary_state, self.dsn, backend="asyncio")
            if how != "primary":
                self.demoted_s, self.how = round(time.monotonic() - self.since, 3), how
                return
            time.sleep(0.1)


async def _primary_state(dsn: str) -> str:
    import asyncpg

    try:
        with anyio.fail_after(2):
            connection = await asyncpg.connect(dsn)
            try:
                in_recovery = await connection.fetchval("SELECT pg_is_in_recovery()")
            finally:
                await connection.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return "stopped"
    return "replica" if in_recovery else "primary"


async def _missing_on_leader(dsn: str, load: Load) -> list[int]:
    """Acknowledged transfers (OK) not in the leader's tally_transfer_records."""
    connection = await connect(dsn)
    try:
        rows = await connection.fetch("SELECT id_lo FROM tally_transfer_records WHERE id_hi = 0")
    finally:
        await connection.close()
    stored = {int(row["id_lo"]) for row in rows}
    return sorted(
        i for i, (code, _) in load.acknowledged.items() if code == R.OK and i not in stored
    )


async def _in_recovery(dsn: str) -> bool:

    connection = await connect(dsn)
    try:
        return bool(await connection.fetchval("SELECT pg_is_in_recovery()"))
    finally:
        await connection.close()


async def _writable(dsn: str) -> bool:
    import asyncpg

    try:
        with anyio.fail_after(5):
            connection = await connect(dsn)
            try:
                await connection.execute("UPDATE tally_epoch SET owner = owner")
            finally:
                await connection.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
            asyncpg.exceptions.InternalClientError, PgStoreError):  # fmt: skip
        return False  # no member takes writes (PgStoreError: every host tried)
    return True


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

    from core.pg_store import Opened, open_pg_store, verify

    attempts = 0
    opened: Opened | None = None
    with anyio.move_on_after(FAILOVER_TIMEOUT_S):
        while True:  # as the services' lifecycle does: retried every STORE_RETRY_S
            attempts += 1
            try:
                opened = await open_pg_store(
                    dsn,
                    account_capacity=ACCOUNT_CAPACITY,
                    transfer_capacity=TRANSFER_CAPACITY,
                    owner=owner,
                )
                break
            except PgStoreError:
                await anyio.sleep(STORE_RETRY_S)
    if opened is None:
        raise TallyError(
            f"{owner}: the store could not be opened through {dsn} within"
            f" {FAILOVER_TIMEOUT_S} s ({attempts} attempts)"
        )
    engine = Engine(opened.ledger, opened.store, load_rules(args.rules), linger_s=0.001)
    result: dict[str, Any] = {
        "epoch": opened.store.epoch,
        "store_open_attempts": attempts,
        "store_opened_s": round(time.monotonic() - kill_monotonic, 3),
        "ledger_rebuild_s": round(opened.load_s, 3),
        "entries_replayed": opened.store.last_seq,
    }
    lost: list[int] = []
    duplicates: list[int] = []
    async with anyio.create_task_group() as task_group:
        await task_group.start(engine.serve)
        probe = await engine.submit_transfer(
            _transfer(PROBE_ID, CLEARING_ID, FIRST_ACCOUNT, 1, TransferCode.TOPUP_BOUND)
        )
        result["rto_s"] = round(time.monotonic() - kill_monotonic, 3)
        result["first_transfer_result"] = int(probe.result)
        result["probe"] = [PROBE_ID, int(probe.result), probe.timestamp]

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
    connection = await connect(dsn)
    try:
        report = await verify(connection, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    finally:
        await connection.close()
    result["store_rows"] = {
        "entries": report.last_seq,
        "accounts": report.accounts,
        "transfers": report.transfers,
    }
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


def build_topology(args: argparse.Namespace) -> patroni.Topology:
    directory = args.dir or tempfile.mkdtemp(prefix="tally-drill-patroni-", dir="/tmp")
    port_base = args.port_base if args.port_base is not None else patroni.free_port_base()
    network = "netns" if args.scenario == "partition-dc1" else "loopback"
    return patroni.up(directory, port_base, network=network)


def start_simulator(stack: contextlib.ExitStack, topology: patroni.Topology) -> str:
    """A provider simulator for the drill (stopped when `stack` closes): the URL Tally on
    dc1 reaches it at. In network namespaces dc1 reaches the drill's namespace at the
    bridge's address only, so there the simulator listens on every address."""
    if topology.network == "netns":
        url = stack.enter_context(running_simulator(seed=SIMULATOR_SEED, host="0.0.0.0"))
        return url.replace("//127.0.0.1:", f"//{topology.subnet()}.1:")
    return stack.enter_context(running_simulator(seed=SIMULATOR_SEED))


def run(args: argparse.Namespace) -> int:
    error = check_arguments(args)
    if error is not None:
        print(f"tally drill failover: {error}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "drill": "failover",
        "failover_manager": "patroni",
        "scenario": args.scenario,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    status = 1
    topology: patroni.Topology | None = None
    simulator = contextlib.ExitStack()
    # A SIGTERM (a CI timeout) unwinds like an error: the cluster is still removed.
    signal.signal(signal.SIGTERM, lambda _signal, _frame: sys.exit(128 + signal.SIGTERM))
    try:
        topology = build_topology(args)
        if not args.providers:
            url = start_simulator(simulator, topology)
            args = argparse.Namespace(**{**vars(args), "providers": url})
            report["providers"] = f"simulator (seed {SIMULATOR_SEED}) started by the drill"
        else:
            report["providers"] = args.providers
        report["topology"] = {
            **topology.settings(),
            "roles_at_start": topology.roles(),
            "dsn": topology.dsn(),
            "tally": "dc1: a child process (Bank on the PostgreSQL store) SIGKILLed with dc1;"
            " beside dc2: an engine in the drill's process on the same DSN",
        }
        if args.scenario in ("dc2-then-dc1", "partition-dc1"):
            scenario = dc2_then_dc1 if args.scenario == "dc2-then-dc1" else partition_dc1
            section = scenario(topology, args)
            report["scenario_" + args.scenario.replace("-", "_")] = section
            report.update(
                {k: section[k] for k in ("rto_s", "acknowledged_lost", "duplicates")}
                | {"customers_lost": section["customers_lost"], "passed": section["passed"]}
            )
        else:
            run_dc1_scenarios(topology, args, report)
        status = 0 if report.get("passed") else 1
    except (TallyError, OSError) as failure:
        report["error"] = f"{type(failure).__name__}: {failure}"
        report["passed"] = False
    finally:
        simulator.close()
        if topology is not None:
            with contextlib.suppress(ClusterError, OSError):
                patroni.down(topology, remove=True)
        with open(args.output, "wb") as out:
            out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.save:
        save_drill(report, args.save)
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        print(summary(report))
    return status


def run_dc1_scenarios(
    topology: patroni.Topology, args: argparse.Namespace, report: dict[str, Any]
) -> None:
    tally, kill = load_and_kill_dc1(topology, args)
    report["kill"] = {k: v for k, v in kill.items() if k != "kill_monotonic"}
    dc2 = failover_to_dc2(topology, args, tally, kill)
    report["scenario_dc2"] = dc2
    work = kill["customer_work_acknowledged"]
    timings = dc2["patroni"]
    report.update(
        {
            "rto_s": dc2["rto_s"],
            "acknowledged_lost": dc2["acknowledged_lost"],
            "duplicates": dc2["duplicates"],
            "customers_lost": dc2["customers_lost"],
            "accounts_lost": dc2["accounts_lost"],
            "password_changes_lost": dc2["password_changes_lost"],
            "passed": False,
            "promotion_seen_s": timings["dc2_leader_seen_s"],
            "dc3_sync_standby_seen_s": timings["dc3_sync_standby_seen_s"],
            "store_opened_s": dc2["store_opened_s"],
            "ledger_rebuild_s": dc2["ledger_rebuild_s"],
            "store_entries": dc2["store_rows"]["entries"],
            "store_accounts": dc2["store_rows"]["accounts"],
            "store_transfers": dc2["store_rows"]["transfers"],
            "acknowledged_checked": dc2["acknowledged_checked"],
        }
    )
    if args.scenario == "old-primary-returns":
        report["scenario_old_primary_returns"] = old_primary_returns(topology)
    dc3 = lose_region_a(topology, args, tally)
    report["scenario_dc3"] = dc3
    operator = dc3["operator_promotion"]
    passed = (
        dc2["lost"] == 0
        and dc2["duplicates"] == 0
        and dc2["customers_lost"] == dc2["accounts_lost"] == dc2["password_changes_lost"] == 0
        and min(work["customers"], work["accounts"], work["password_changes"]) > 0
        and dc2["first_transfer_result"] == R.OK
        and dc2["verify_ok"]
        and operator["duplicates"] == 0
        and operator["verify_ok"]
        and report.get("scenario_old_primary_returns", {}).get("passed", True)
    )
    report.update(
        {
            "passed": bool(passed),
            "region_a_rpo_transfers": dc3["lost"],
            "region_a_rpo_customers": dc3["customers_lost"],
        }
    )


DRILL_FIGURES = (
    "failover_manager",
    "scenario",
    "rto_s",
    "acknowledged_lost",
    "duplicates",
    "customers_lost",
    "accounts_lost",
    "password_changes_lost",
    "passed",
    "promotion_seen_s",
    "dc3_sync_standby_seen_s",
    "store_opened_s",
    "ledger_rebuild_s",
    "store_entries",
    "store_accounts",
    "store_transfers",
    "acknowledged_checked",
    "region_a_rpo_transfers",
    "region_a_rpo_customers",
)


def save_drill(report: dict[str, Any], directory: str) -> None:
    """The report as `DIR/drill-<time>.json` for `tally bench page` (flat figures first;
    the sections are kept as they are)."""
    from core.reports import machine_description, save_report

    figures: dict[str, Any] = {key: report[key] for key in DRILL_FIGURES if key in report}
    save_report(
        figures
        | {
            "benchmark": "drill",
            "date": report["date"],
            "machine": machine_description(),
            "command": "tally " + " ".join(sys.argv[1:]),
            "patroni_settings": report.get("topology", {}),
        }
        | {key: value for key, value in report.items() if key.startswith("scenario_")},
        directory,
    )


def summary(report: dict[str, Any]) -> str:
    if "error" in report and "scenario_dc2" not in report:
        return f"drill failed: {report['error']}"
    if report["scenario"] == "dc2-then-dc1":
        section = report["scenario_dc2_then_dc1"]
        return "\n".join(
            [
                f"failover drill (Patroni) {report['date']}, dc2 then dc1:"
                f" {'PASSED' if report.get('passed') else 'FAILED'}",
                f"  dc3 synchronous {section['dc3_sync_after_dc2_lost_s']} s after dc2 died",
                f"  dc1 killed: promoted automatically: {section['promoted_automatically']},"
                f" writes possible: {section['writes_possible']} ({section['rto']})",
                f"  operator promoted dc3: acknowledged lost {section['acknowledged_lost']},"
                f" duplicates {section['duplicates']}, customers lost"
                f" {section['customers_lost']}",
            ]
        )
    if report["scenario"] == "partition-dc1":
        section = report["scenario_partition_dc1"]
        beside = section["beside_dc2"]
        return "\n".join(
            [
                f"failover drill (Patroni) {report['date']}, dc1 partitioned:"
                f" {'PASSED' if report.get('passed') else 'FAILED'}",
                f"  dc1 stopped taking writes {section['dc1_demoted_s']} s after the cut"
                f" ({section['dc1_demoted_how']}); Tally beside dc2 acknowledged a transfer"
                f" {section['rto_s']} s after the cut (store opened {beside['store_opened_s']} s)",
                f"  Tally on dc1 acknowledged {section['acknowledged_by_dc1_after_cut']} transfers"
                f" after the cut; acknowledged missing on dc2:"
                f" {len(section['acknowledged_missing_on_dc2'])}; lost"
                f" {report['acknowledged_lost']}, duplicates {report['duplicates']},"
                f" customers lost {report['customers_lost']}",
                f"  healed: dc1 rejoined in {section['dc1_rejoined_s']} s:"
                f" {section['roles_after_heal']}",
            ]
        )
    kill = report.get("kill", {})
    lag = kill.get("dc3_lag_at_kill", {})
    dc2 = report.get("scenario_dc2", {})
    dc3 = report.get("scenario_dc3", {})
    lines = [
        f"failover drill (Patroni) {report['date']}:"
        f" {'PASSED' if report.get('passed') else 'FAILED'}",
        f"  load on dc1: {kill.get('acknowledged_total_dc1', 0):,} transfers acknowledged,"
        f" {kill.get('unknown_outcome_at_kill', 0)} outcomes unknown at the kill",
        f"  dc3 behind dc1 at the kill: {lag.get('seqs')} entries, {lag.get('transfers')}"
        f" transfers, {lag.get('wal_bytes')} WAL bytes",
        f"  dc1 killed -> Patroni promoted dc2: leader seen {report.get('promotion_seen_s')} s,"
        f" dc3 sync standby {report.get('dc3_sync_standby_seen_s')} s, store opened"
        f" {report.get('store_opened_s')} s (ledger rebuilt in {report.get('ledger_rebuild_s')} s),"
        f" RTO {report.get('rto_s')} s (kill to first acknowledged transfer)",
        f"    acknowledged lost {dc2.get('lost')}, duplicates {dc2.get('duplicates')},"
        f" verify {'ok' if dc2.get('verify_ok') else 'FAILED'}, epoch {dc2.get('epoch')}",
        f"    unknown outcomes re-sent on dc2: {dc2.get('unknown_outcomes_resolved')}",
        f"    customer work acknowledged on dc1: {kill.get('customer_work_acknowledged')};"
        f" lost on dc2: customers {dc2.get('customers_lost')}, accounts"
        f" {dc2.get('accounts_lost')}, password changes {dc2.get('password_changes_lost')}",
    ]
    returning = report.get("scenario_old_primary_returns")
    if returning:
        lines.append(
            f"  dc1 restarted: rejoined in {returning['rejoined_s']} s as"
            f" {returning['roles'].get('dc1')}, in recovery {returning['dc1_in_recovery']},"
            f" write refused {returning['write_refused']}, DSN leads to"
            f" {returning['dsn_leads_to']}: {'ok' if returning['passed'] else 'FAILED'}"
        )
    lines += [
        f"  region A lost at the kill: dc3 (frozen) lacked {dc3.get('lost')} acknowledged"
        f" transfers (the RPO of losing the city, at {dc3.get('dc3_lsn')})",
        f"    RPO by kind: {dc3.get('rpo_by_kind')}",
        f"    then promoted by hand (dc3 was dc2's synchronous standby):"
        f" {dc3.get('operator_promotion')}",
    ]
    if dc3.get("lost_ids"):
        shown = ", ".join(str(i) for i in dc3["lost_ids"][:20])
        more = len(dc3["lost_ids"]) - 20
        lines.append(f"    lost on dc3: {shown}{f' and {more} more' if more > 0 else ''}")
    if "error" in report:
        lines.append(f"  error: {report['error']}")
    return "\n".join(lines)
