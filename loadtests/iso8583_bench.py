"""`tally bench iso8583`: ATMs and POS terminals over ISO 8583 against a real server.

    tally bench iso8583 --terminals 200 --seconds 15 --json [--save benchmarks]

One run, on a fresh data directory (the journal fdatasync'd as always):

1. Setup. `tally serve` (HTTP only) opens, at the counter, two Class I accounts
   per terminal (a funded card, `FUNDING_MINOR` of cash, and an empty one that
   every message declines with 51) and one merchant account; it is stopped, the
   bench writes a terminal registry (half ATMs, half POS terminals paying that
   merchant) and a key file (fresh random keys), and starts `tally serve
   --iso8583` on the same data directory: the listener this bench measures.
2. Messages are built and signed ahead of each phase (a PIN block under the
   terminal's PIN key, a MAC under its MAC key), as `tally bench http`
   pre-signs its requests: the timed phases only send and read frames. An ATM
   sends 0200 cash withdrawals, a POS terminal 0200 purchases, of 1-97 fen (no
   card meets a daily cap); a share (`--empty-share`) goes to the empty card. The
   warm-up uses every card first: its PIN is checked once and the token it buys is
   kept by the adapter, as in a terminal network's steady state.
3. Warm-up (`--warmup-seconds`, closed loop), which also measures the rate that
   sizes the next phase's pre-built messages.
4. Capacity: the N terminals closed loop, each sending its next message as soon
   as the last is answered, over `--connections` TCP connections (terminals
   multiplexed, answers matched by terminal id + STAN): `financial_messages_per_s`
   (answers of 0200s received in the timed window, approved or declined) and
   `capacity_latency_ms_p50/p99`. With N messages always in flight, Little's law
   makes that latency N / rate (200 terminals at 5,000/s: 40 ms) whatever the
   server does, so it measures throughput, not latency.
5. Latency at a rate: the same terminals each sending every N / `--rate` seconds
   (a terminal still waiting for an answer sends its next one when it comes: no
   terminal ever has two messages in flight, none catches up later):
   `latency_ms_p50/p99/max` from the send to the answer, at `paced_messages_per_s`
   achieved (`paced_kept_up` when within 2% of `--rate`).
6. Check. A message left unanswered (timeout) is sent again, the same bytes: the
   bank answers a repeat with the first answer (idempotent by terminal + STAN +
   field 7), so every message's outcome is known. Then every card's balance is
   read over HTTP: it must have gone down by exactly the approved amounts (a 05, the
   risk stage's delay or review, moves and holds nothing at a terminal: its hold is
   returned at once), the empty cards by nothing, and the
   merchant account up by exactly the approved purchases (`ledger_exact`). A sample
   of the answers has its MAC verified.

The last line of output is one JSON object. The client (this process, one thread,
anyio on uvloop) shares the machine with the server: both CPU figures are
reported (`client_cpu_percent`, `server_cpu_us_per_message`), and so is the CPU other
processes used meanwhile (`other_cpu_percent`: a run on a busy machine shows it).
`--profile FILE` records the server with py-spy during the capacity phase, or the paced
one with `--profile-phase paced`. `--workers N` serves the terminals through N front-end
processes (`tally serve --workers N --iso8583`: the adapter in the front-ends, the
services in the core over the core link); the server's CPU is then the core's and its
front-ends' (`core_cpu_us_per_message`, `front_end_cpu_us_per_message` beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson

from channels.client import TallyClient, new_key
from channels.iso8583 import keys
from core.bench.server import Server, children_of, cpu_seconds, free_port
from core.data import DEFAULT_CHANNELS_PATH
from core.reports import code_version, machine_description, save_report
from loadtests.dataset import PASSWORD, channel_secrets, identity_of, post
from loadtests.iso8583_terminal import (
    Card,
    ExchangeTimeout,
    Request,
    Response,
    Terminal,
    TerminalConnection,
    TerminalProfile,
    open_connection,
)
from loadtests.verification import bench_simulator

TERMINALS_DEFAULT = 200
CONNECTIONS_DEFAULT = 4
RATE_DEFAULT = 5_000
WARMUP_S_DEFAULT = 2.0
EMPTY_SHARE_DEFAULT = 0.01
# The cost of the transaction password's scrypt hash on the server (`tally serve
# --scrypt-n`), which every PIN check pays: see docs/iso8583.md, "Throughput".
SCRYPT_N_DEFAULT = 1024
FUNDING_MINOR = 50_000_000  # 500,000 CNY: a supervisor's cash cap at the counter
AMOUNT_MINOR_MAX = 97
SETUP_ACTOR = ("S0001", "supervisor")
SETUP_THREADS = 4
SEED = 18
# Pre-built messages for the capacity phase: this many times the highest of the warm-up's
# rate, --rate and PREBUILD_RATE_MIN (a terminal that runs out builds the rest as it goes,
# counted in `built_while_timed`).
PREBUILD_HEADROOM = 1.6
PREBUILD_RATE_MIN = 6_000  # the warm-up's rate is low (every card's PIN checked in it)
PREBUILD_MIN_PER_TERMINAL = 50
EXCHANGE_TIMEOUT_S = 10.0
REPEATS_MAX = 5
MAC_SAMPLE_SIZE = 2_000
PACED_KEPT_UP_SHARE = 0.98
ISO_READY_TIMEOUT_S = 60.0
# The server's transfer log: a run posts well under 15,000 a second, 8M slots hold them
# with 60 s of retention (a production server keeps a day: its peak rate times that).
TRANSFERS_MAX_DEFAULT = 1 << 23
MOVED_CODES = frozenset({"00"})  # approved (a 05 risk hold is returned at once: nothing)
# What the declines mean, for the report (docs/iso8583.md has the full table).
RESPONSE_NAMES = {
    "05": "do not honour (risk delay/review)", "14": "invalid card", "51": "insufficient funds",
    "55": "incorrect PIN", "59": "suspected fraud (risk)", "61": "exceeds withdrawal limit",
    "65": "exceeds frequency (risk)", "75": "PIN tries exceeded", "91": "issuer unavailable",
    "94": "duplicate", "96": "system malfunction",
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--terminals",
        type=int,
        default=TERMINALS_DEFAULT,
        help="terminals (half ATMs, half POS), each with its cards",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="timed load per phase")
    parser.add_argument(
        "--connections",
        type=int,
        default=CONNECTIONS_DEFAULT,
        help="TCP connections the terminals share",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=RATE_DEFAULT,
        help="messages/s of the latency phase (0: skip it)",
    )
    parser.add_argument("--warmup-seconds", type=float, default=WARMUP_S_DEFAULT)
    parser.add_argument(
        "--empty-share",
        type=float,
        default=EMPTY_SHARE_DEFAULT,
        help="share of the messages sent with an empty card (declined 51)",
    )
    parser.add_argument(
        "--scrypt-n",
        type=int,
        default=SCRYPT_N_DEFAULT,
        help="the server's transaction password cost (every PIN check pays it)",
    )
    parser.add_argument(
        "--server",
        choices=("hypercorn", "uvicorn"),
        default="hypercorn",
        help="the HTTP server beside the listener (tally serve --server)",
    )
    parser.add_argument(
        "--transfers-max",
        type=int,
        default=TRANSFERS_MAX_DEFAULT,
        help="the server's transfer log (tally serve --transfers-max)",
    )
    parser.add_argument(
        "--workers", type=int, default=0,
        help="serve the terminals through N front-end processes (tally serve --workers N)",
    )  # fmt: skip
    parser.add_argument("--data", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--save", metavar="DIR", default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="record the server with py-spy (speedscope JSON) during the "
                             "capacity phase")  # fmt: skip
    parser.add_argument("--profile-phase", choices=("capacity", "paced"), default="capacity",
                        help="the phase --profile records")  # fmt: skip


# --- the fleet ---------------------------------------------------------------------------


@dataclass
class Station:
    """One terminal with its two cards and its bookkeeping."""

    terminal: Terminal
    funded: Card
    empty: Card
    approved_minor: dict[str, int] = field(default_factory=dict)  # pan -> approved debits

    @property
    def kind(self) -> str:
        return self.terminal.profile.kind


@dataclass
class Fleet:
    stations: list[Station]
    merchant_account: str
    terminals_file: Path
    keys_file: Path


def open_accounts(url: str, count: int, first_index: int, funded: bool) -> list[str]:
    """`count` Class I accounts, one customer each (numbered from `first_index`), with the
    bench's PIN as transaction password; funded with `FUNDING_MINOR` of cash if asked."""
    secrets_of = channel_secrets()
    entry = secrets_of["counter"]
    accounts = []
    with TallyClient(url, "counter", entry["key_id"], entry["secret"], timeout_s=60.0,
                     actor=SETUP_ACTOR) as counter:  # fmt: skip
        for index in range(first_index, first_index + count):
            name, id_number, mobile = identity_of(SEED, index)
            body = {"name": name, "id_number": id_number, "mobile": mobile}
            customer = _expect(post(counter, "/v1/customers", body), 201, "register")
            opened = post(
                counter,
                f"/v1/customers/{customer['customer_id']}/accounts",
                {"class": "class_i", "password": PASSWORD},
                retry=False,
            )
            account = _expect(opened, 201, "open account")["account_id"]
            if funded:
                deposit = post(
                    counter,
                    f"/v1/accounts/{account}/cash-deposits",
                    {"amount_minor": FUNDING_MINOR},
                    idempotency_key=new_key(),
                )
                _expect(deposit, 201, "cash deposit")
            accounts.append(account)
    return accounts


def _expect(response: Any, status: int, what: str) -> Any:
    if response.status_code != status:
        raise RuntimeError(f"setup: {what} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def open_accounts_parallel(url: str, count: int, first_index: int, funded: bool) -> list[str]:
    share = -(-count // SETUP_THREADS)
    spans = [(first, min(share, count - first)) for first in range(0, count, share)]
    with ThreadPoolExecutor(len(spans)) as pool:
        parts = pool.map(
            lambda span: open_accounts(url, span[1], first_index + span[0], funded), spans
        )
        return [account for part in parts for account in part]


def terminal_id(index: int) -> str:
    return ("ATM" if index % 2 == 0 else "POS") + f"{index:05d}"


def build_fleet(work: Path, url: str, count: int) -> Fleet:
    """Open the accounts on the server at `url`; write the registry and key files."""
    merchant = open_accounts(url, 1, 0, funded=False)[0]
    funded = open_accounts_parallel(url, count, 1, funded=True)
    empty = open_accounts_parallel(url, count, 1 + count, funded=False)
    stations = []
    registry = ["# `tally bench iso8583`: generated terminals (half ATMs, half POS terminals).\n"]
    key_lines = ["# `tally bench iso8583`: generated development keys (random for this run).\n"]
    for index in range(count):
        name = terminal_id(index)
        kind = "atm" if index % 2 == 0 else "pos"
        pin_key, mac_key = keys.generate_key(), keys.generate_key()
        profile = TerminalProfile(name, kind, pin_key, mac_key)
        terminal = Terminal(profile)
        cards = Card(funded[index], PASSWORD), Card(empty[index], PASSWORD)
        stations.append(Station(terminal, *cards))
        registry.append(terminal_entry(profile, merchant))
        key_lines.append(key_entry(profile))
    terminals_file = work / "terminals.toml"
    keys_file = work / "iso8583-keys.toml"
    terminals_file.write_text("\n".join(registry))
    keys_file.write_text("\n".join(key_lines))
    keys_file.chmod(0o600)
    return Fleet(stations, merchant, terminals_file, keys_file)


def terminal_entry(profile: TerminalProfile, merchant_account: str) -> str:
    """The terminal's entry in the registry (the format of core/data/terminals.toml)."""
    lines = [
        f"[terminals.{profile.terminal_id}]",
        f'channel = "{profile.kind}"',
        f'kind = "{profile.kind}"',
        f'pin_key_id = "{profile.terminal_id}-tpk"',
        f'mac_key_id = "{profile.terminal_id}-tak"',
    ]
    if profile.kind == "pos":
        lines.append(f'merchant_account_id = "{merchant_account}"')
    return "\n".join(lines) + "\n"


def key_entry(profile: TerminalProfile) -> str:
    """The terminal's two keys in the key file (the format of core/data/iso8583-keys.toml)."""
    lines = []
    for usage, key in (("pin", profile.pin_key), ("mac", profile.mac_key)):
        lines += [
            f'[keys."{profile.terminal_id}-{"tpk" if usage == "pin" else "tak"}"]',
            f'usage = "{usage}"',
            f'value = "{key.hex().upper()}"',
            f'check_value = "{keys.check_value(key)}"',
        ]
    return "\n".join(lines) + "\n"


# --- the server ---------------------------------------------------------------------------

BENCH_UNLIMITED_CHANNELS = ("atm", "pos")  # the terminals' channels (terminal_entry)


def bench_channels(work: Path) -> Path:
    """The development channel registry with the terminals' channels (atm, pos) unlimited
    in rate: the bench measures what the server carries, not the 1,000/s the shipped
    registry allows each (docs/iso8583.md, "Rate limit"). Everything else is as shipped."""
    text = DEFAULT_CHANNELS_PATH.read_text(encoding="utf-8")
    for channel in BENCH_UNLIMITED_CHANNELS:
        pattern = re.compile(rf"(\[channels\.{channel}\]\n(?:(?!\[).*\n)*?)rate_per_s = [0-9_]+\n")
        text, replaced = pattern.subn(r"\1rate_per_s = 0  # tally bench iso8583: unlimited\n", text)
        if replaced != 1:
            raise RuntimeError(f"{DEFAULT_CHANNELS_PATH}: no rate_per_s for channel {channel}")
    path = work / "channels.toml"
    path.write_text(text, encoding="utf-8")
    return path


def server_command(
    data: Path, port: int, args: argparse.Namespace, iso: tuple[int, Fleet] | None
) -> list[str]:
    command = [
        sys.executable, "-m", "core", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--data", str(data),
        "--server", args.server,
        "--channels", str(bench_channels(data.parent)),
        "--dev",  # the example registry's public secrets: the setup is signed with them
        "--providers", args.providers,  # the setup's counter registrations: identity checks
        "--access-log", "off",
        "--accounts-max", str(max(4096, 4 * args.terminals)),
        "--scrypt-n", str(args.scrypt_n),
        # Every in-flight message may wait for its PIN check: room for all of them.
        "--password-hash-queue", str(max(64, 2 * args.terminals)),
        "--transfers-max", str(args.transfers_max),
        "--retention-s", "60",
        "--prefault",
    ]  # fmt: skip
    if iso is not None:
        iso_port, fleet = iso
        command += [
            "--iso8583", f"127.0.0.1:{iso_port}",
            "--terminals", str(fleet.terminals_file),
            "--iso8583-keys", str(fleet.keys_file),
            *(["--workers", str(args.workers)] if args.workers else []),
        ]  # fmt: skip
    return command


def start_server(
    work: Path, name: str, args: argparse.Namespace, iso: tuple[int, Fleet] | None = None
) -> Server:
    port = free_port()
    command = server_command(work / "data", port, args, iso)
    server = Server(command, port, work / f"server-{name}.log", "/readyz")
    if iso is not None:
        wait_for_port(iso[0], server)
    return server


def wait_for_port(port: int, server: Server) -> None:
    import socket

    deadline = time.monotonic() + ISO_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError("server exited before its ISO 8583 listener was up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"ISO 8583 listener not up in {ISO_READY_TIMEOUT_S} s")


# --- the load ------------------------------------------------------------------------------


@dataclass(slots=True)
class Planned:
    """A pre-built message and what the bookkeeping needs of it."""

    request: Request
    pan: str
    amount_minor: int
    purchase: bool


@dataclass
class Phase:
    """What one phase saw: answers in the timed window, and every outcome for the books."""

    name: str
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    # The same by message (a purchase and a withdrawal are one posting each).
    withdrawal_latencies_s: list[float] = field(default_factory=list)
    purchase_latencies_s: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    answered: int = 0  # answers in the window
    answered_total: int = 0
    unanswered: list[tuple[Station, Planned]] = field(default_factory=list)
    built_while_timed: int = 0
    sample: list[tuple[Station, Response]] = field(default_factory=list)
    window_s: float = 0.0
    server_cpu_s: float = 0.0  # the core's and its front-ends' (`--workers`)
    core_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    machine_cpu_s: float = 0.0  # every process's, the server's and this one's included


class Planner:
    """Builds each station's next messages: the card, the amount, the signed bytes."""

    def __init__(self, empty_share: float, seed: int = SEED) -> None:
        self.random = random.Random(seed)
        self.empty_share = empty_share

    def next(self, station: Station, card: Card | None = None) -> Planned:
        if card is None:
            card = station.empty if self.random.random() < self.empty_share else station.funded
        amount = self.random.randint(1, AMOUNT_MINOR_MAX)
        terminal = station.terminal
        if station.kind == "atm":
            return Planned(terminal.cash_withdrawal(card, amount), card.pan, amount, False)
        return Planned(terminal.purchase(card, amount), card.pan, amount, True)

    def prebuild(
        self, stations: list[Station], per_station: int, every_card_first: bool = False
    ) -> list[list[Planned]]:
        """`per_station` messages for each station; `every_card_first`: its first two with
        each of its cards, so that each card's PIN is checked (and its token bought) in the
        warm-up, as a terminal network in steady state has (the adapter keeps the token)."""
        planned = []
        for station in stations:
            first = [station.funded, station.empty] if every_card_first else []
            messages = [self.next(station, card) for card in first]
            messages += [self.next(station) for _ in range(per_station - len(messages))]
            planned.append(messages)
        return planned


def record(phase: Phase, station: Station, planned: Planned, response: Response,
           merchant: Counter[str], timed: bool) -> None:  # fmt: skip
    """Book one answer: approved debits per card, approved purchases for the merchant. A
    05 is money the risk stage held instead of moving (a pending transfer): booked too, as
    the ledger check counts pending debits and credits as moved."""
    code = response.code
    phase.answered_total += 1
    if code in MOVED_CODES:
        station.approved_minor[planned.pan] = (
            station.approved_minor.get(planned.pan, 0) + planned.amount_minor
        )
        if planned.purchase:
            merchant["approved_minor"] += planned.amount_minor
    if timed:
        phase.answered += 1
        phase.latencies_s.append(response.latency_s)
        if planned.purchase:
            phase.purchase_latencies_s.append(response.latency_s)
        else:
            phase.withdrawal_latencies_s.append(response.latency_s)
        phase.codes[code] += 1
    if len(phase.sample) < MAC_SAMPLE_SIZE and (code != "00" or phase.answered_total % 7 == 0):
        phase.sample.append((station, response))


async def run_phase(
    phase: Phase,
    stations: list[Station],
    connections: list[TerminalConnection],
    planned: list[list[Planned]],
    planner: Planner,
    merchant: Counter[str],
    period_s: float,
    server_pid: int,
) -> None:
    """Every station sends until the window closes (closed loop; every `period_s` seconds
    if that is > 0); answers arriving in [start, start + seconds) are timed."""
    start = time.perf_counter() + 0.05
    end = start + phase.seconds
    phase_random = random.Random(SEED + len(phase.name))

    async def drive(index: int) -> None:
        station = stations[index]
        connection = connections[index % len(connections)]
        queue = planned[index]
        position = 0
        next_send = start + (phase_random.random() * period_s if period_s else 0.0)
        while True:
            now = time.perf_counter()
            if period_s and next_send > now:
                await anyio.sleep(next_send - now)
                now = time.perf_counter()
            if now >= end:
                return
            if position < len(queue):
                message = queue[position]
                position += 1
            else:
                message = planner.next(station)
                phase.built_while_timed += 1
            try:
                response = await connection.exchange(message.request, EXCHANGE_TIMEOUT_S)
            except ExchangeTimeout:
                phase.unanswered.append((station, message))
                continue
            arrived = time.perf_counter()
            record(phase, station, message, response, merchant, start <= arrived < end)
            if period_s:
                next_send = max(next_send + period_s, arrived)

    front_ends = children_of(server_pid)  # `--workers`: the front-ends (none: [])
    cpu_before = cpu_seconds([server_pid])
    front_ends_before = cpu_seconds(front_ends)
    client_before = _own_cpu_s()
    machine_before = _machine_cpu_s()
    with _no_client_collections():
        async with anyio.create_task_group() as group:
            for index in range(len(stations)):
                group.start_soon(drive, index)
            await anyio.sleep(max(0.0, end - time.perf_counter()))
            phase.window_s = time.perf_counter() - start
            phase.core_cpu_s = cpu_seconds([server_pid]) - cpu_before
            phase.server_cpu_s = phase.core_cpu_s + cpu_seconds(front_ends) - front_ends_before
            phase.client_cpu_s = _own_cpu_s() - client_before
            phase.machine_cpu_s = _machine_cpu_s() - machine_before


@contextlib.contextmanager
def _no_client_collections() -> Iterator[None]:
    """No cyclic garbage collection in this process while a phase is timed.

    The latencies are timed here, so a pause of the client is counted as the server's:
    with the phase's pre-built messages (hundreds of thousands of objects) alive, a
    full collection paused this process for 30-90 ms, several per phase, and a young one
    for up to 27 ms (measured with `gc.callbacks`, 2026-12-07). What exists now is frozen
    out of every collection and collection is off for the phase; what the phase frees is
    freed by reference counting as before, and the cycles it leaves are collected after."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _machine_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def resolve_unanswered(
    phases: list[Phase], connections: list[TerminalConnection], merchant: Counter[str]
) -> tuple[int, int]:
    """Send every unanswered message again (same bytes) until it is answered: the bank
    answers a repeat with the first outcome. Returns (repeated, still unanswered)."""
    repeated = 0
    unresolved = 0
    for phase in phases:
        for station, message in phase.unanswered:
            for _ in range(REPEATS_MAX):
                repeated += 1
                try:
                    response = await connections[0].exchange(
                        station.terminal.repeat(message.request), EXCHANGE_TIMEOUT_S
                    )
                except ExchangeTimeout:
                    continue
                record(phase, station, message, response, merchant, timed=False)
                break
            else:
                unresolved += 1
    return repeated, unresolved


def percentile_ms(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return round(ordered[index] * 1000, 2)


async def drive_load(
    args: argparse.Namespace, fleet: Fleet, iso_port: int, server_pid: int, report: dict[str, Any],
    say: Callable[[str], None],
) -> list[Phase]:  # fmt: skip
    stations = fleet.stations
    count = len(stations)
    planner = Planner(args.empty_share)
    merchant: Counter[str] = Counter()
    phases: list[Phase] = []
    async with _connections(args.connections, iso_port) as connections:
        warmup = Phase("warmup", args.warmup_seconds)
        per_station = max(PREBUILD_MIN_PER_TERMINAL, int(2_000 * args.warmup_seconds / count) + 1)
        say(f"building {per_station * count:,} warm-up messages ...")
        planned = planner.prebuild(stations, per_station, every_card_first=True)
        await run_phase(warmup, stations, connections, planned, planner, merchant, 0.0, server_pid)
        phases.append(warmup)
        warm_rate = warmup.answered / max(warmup.window_s, 1e-9)
        say(f"warm-up: {warm_rate:,.0f} messages/s")

        capacity = Phase("capacity", args.seconds)
        per_station = max(
            PREBUILD_MIN_PER_TERMINAL,
            math.ceil(
                max(warm_rate, args.rate, PREBUILD_RATE_MIN)
                * PREBUILD_HEADROOM
                * (args.seconds + 1)
                / count
            ),
        )
        say(f"building {per_station * count:,} messages for the capacity phase ...")
        planned = planner.prebuild(stations, per_station)
        profiler = _start_profiler(args.profile, server_pid, args.seconds, args, "capacity")
        await run_phase(capacity, stations, connections, planned, planner, merchant, 0.0,
                        server_pid)  # fmt: skip
        _stop_profiler(profiler)
        phases.append(capacity)
        say(f"capacity: {capacity.answered / capacity.window_s:,.0f} messages/s")

        if args.rate > 0:
            paced = Phase("paced", args.seconds)
            period_s = count / args.rate
            per_station = math.ceil(args.seconds / period_s * 1.05) + 2
            say(f"building {per_station * count:,} messages for {args.rate:,.0f}/s ...")
            planned = planner.prebuild(stations, per_station)
            profiler = _start_profiler(args.profile, server_pid, args.seconds, args, "paced")
            await run_phase(paced, stations, connections, planned, planner, merchant, period_s,
                            server_pid)  # fmt: skip
            _stop_profiler(profiler)
            phases.append(paced)
            say(f"paced: {paced.answered / paced.window_s:,.0f} messages/s")
        repeated, unresolved = await resolve_unanswered(phases, connections, merchant)
        report["repeats_sent"] = repeated
        report["outcomes_unknown"] = unresolved
        report["unmatched_answers"] = sum(c.counters.unmatched for c in connections)
        report["unparsable_answers"] = sum(c.counters.unparsable for c in connections)
    report["merchant_approved_minor"] = merchant["approved_minor"]
    return phases


class _connections:
    """`count` connections open at once (an async context manager over a list)."""

    def __init__(self, count: int, port: int) -> None:
        self.count = count
        self.port = port

    async def __aenter__(self) -> list[TerminalConnection]:
        from contextlib import AsyncExitStack

        self.stack = AsyncExitStack()
        await self.stack.__aenter__()
        return [
            await self.stack.enter_async_context(open_connection("127.0.0.1", self.port))
            for _ in range(self.count)
        ]

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self.stack.__aexit__(*exc_info)


PROFILE_FORMATS = {".svg": "flamegraph", ".json": "speedscope", ".txt": "raw"}


def _start_profiler(
    path: str | None, pid: int, seconds: float, args: argparse.Namespace, phase: str
) -> Any:
    """py-spy recording the server for `phase` when it is the one `--profile-phase` names:
    a flame graph (.svg), a speedscope profile (.json) or collapsed stacks (.txt), by the
    file's extension."""
    if path is None or phase != args.profile_phase:
        return None
    import subprocess

    if shutil.which("py-spy") is None:
        print("tally bench iso8583: --profile needs py-spy on PATH", file=sys.stderr)
        return None
    profile_format = PROFILE_FORMATS.get(Path(path).suffix, "speedscope")
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", "250", "--threads", "--format", profile_format, "--output", path,
         "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _stop_profiler(profiler: Any) -> None:
    if profiler is not None:
        profiler.wait(timeout=120)


# --- the books -----------------------------------------------------------------------------


def check_ledger(url: str, fleet: Fleet, merchant_approved_minor: int) -> dict[str, Any]:
    """Every card down by exactly its approved debits, the merchant up by its approved
    purchases (a hold would count as moved: balance minus pending debits, plus pending
    credits; none is left by a terminal's messages)."""
    entry = channel_secrets()["counter"]
    mismatches: list[str] = []
    approved_total = 0
    with TallyClient(url, "counter", entry["key_id"], entry["secret"], timeout_s=60.0,
                     actor=SETUP_ACTOR) as counter:  # fmt: skip

        def read(account: str) -> dict[str, Any]:
            response = counter.get(f"/v1/accounts/{account}")
            if response.status_code != 200:
                raise RuntimeError(f"reading {account}: {response.status_code} {response.text}")
            body: dict[str, Any] = response.json()
            return body

        for station in fleet.stations:
            for card, funding in ((station.funded, FUNDING_MINOR), (station.empty, 0)):
                account = read(card.pan)
                moved = funding - account["balance_minor"] + account["pending_debits_minor"]
                expected = station.approved_minor.get(card.pan, 0)
                approved_total += expected
                if moved != expected:
                    mismatches.append(f"{card.pan}: debited {moved}, approved {expected}")
        account = read(fleet.merchant_account)
        credited = account["balance_minor"] + account["pending_credits_minor"]
        if credited != merchant_approved_minor:
            mismatches.append(
                f"merchant {fleet.merchant_account}: credited {credited},"
                f" approved {merchant_approved_minor}"
            )
    return {
        "ledger_accounts_checked": 2 * len(fleet.stations) + 1,
        "ledger_approved_minor": approved_total,
        "ledger_mismatches": len(mismatches),
        "ledger_mismatch_examples": mismatches[:5],
        "ledger_exact": not mismatches,
    }


def verify_sample(phases: list[Phase]) -> tuple[int, int]:
    """(checked, failed): the MACs of the sampled answers, and their echo of field 41."""
    checked = failed = 0
    for phase in phases:
        for station, response in phase.sample:
            checked += 1
            if not station.terminal.verify(response):
                failed += 1
    return checked, failed


# --- the run -------------------------------------------------------------------------------


def figures(phases: list[Phase], report: dict[str, Any]) -> None:
    by_name = {phase.name: phase for phase in phases}
    capacity = by_name["capacity"]
    rate = capacity.answered / capacity.window_s
    report["financial_messages_per_s"] = round(rate)
    report["capacity_latency_ms_p50"] = percentile_ms(capacity.latencies_s, 0.50)
    report["capacity_latency_ms_p99"] = percentile_ms(capacity.latencies_s, 0.99)
    report["server_cpu_us_per_message"] = round(
        1e6 * capacity.server_cpu_s / max(1, capacity.answered), 1
    )
    report["server_cpu_percent"] = round(100 * capacity.server_cpu_s / capacity.window_s, 1)
    if report.get("workers"):
        answered = max(1, capacity.answered)
        report["core_cpu_us_per_message"] = round(1e6 * capacity.core_cpu_s / answered, 1)
        report["front_end_cpu_us_per_message"] = round(
            1e6 * (capacity.server_cpu_s - capacity.core_cpu_s) / answered, 1
        )
    report["client_cpu_percent"] = round(100 * capacity.client_cpu_s / capacity.window_s, 1)
    # The machine is shared: CPU that neither the server nor this client used in the window
    # (other processes) is reported, so a run disturbed by other work shows it.
    others_s = capacity.machine_cpu_s - capacity.server_cpu_s - capacity.client_cpu_s
    report["other_cpu_percent"] = round(max(0.0, 100 * others_s / capacity.window_s), 1)
    paced = by_name.get("paced")
    if paced is not None:
        paced_rate = paced.answered / paced.window_s
        report["paced_messages_per_s"] = round(paced_rate)
        report["latency_ms_p50"] = percentile_ms(paced.latencies_s, 0.50)
        report["latency_ms_p99"] = percentile_ms(paced.latencies_s, 0.99)
        report["latency_ms_max"] = percentile_ms(paced.latencies_s, 1.0)
        report["paced_kept_up"] = paced_rate >= PACED_KEPT_UP_SHARE * report["rate"]
        others_s = paced.machine_cpu_s - paced.server_cpu_s - paced.client_cpu_s
        report["paced_server_cpu_percent"] = round(100 * paced.server_cpu_s / paced.window_s, 1)
        report["paced_other_cpu_percent"] = round(max(0.0, 100 * others_s / paced.window_s), 1)
        for name, values in (
            ("withdrawal", paced.withdrawal_latencies_s),
            ("purchase", paced.purchase_latencies_s),
        ):
            report[f"latency_ms_p50_{name}"] = percentile_ms(values, 0.50)
            report[f"latency_ms_p99_{name}"] = percentile_ms(values, 0.99)
    timed = [phase for phase in phases if phase.name != "warmup"]
    codes: Counter[str] = Counter()
    for phase in timed:
        codes.update(phase.codes)
    report["approved"] = codes.pop("00", 0)
    report["declined"] = sum(codes.values())
    report["declined_by_code"] = dict(sorted(codes.items()))
    report["refusals"] = {
        f"{code} {RESPONSE_NAMES.get(code, '')}".strip(): count
        for code, count in sorted(codes.items())
    }
    report["timeouts"] = sum(len(phase.unanswered) for phase in phases)
    report["built_while_timed"] = sum(phase.built_while_timed for phase in phases)
    report["passes_messages_per_s"] = {
        phase.name: [round(phase.answered / phase.window_s)] for phase in phases
    }


def run(args: argparse.Namespace) -> int:
    if args.terminals < 2 or args.connections < 1 or args.seconds <= 0:
        print("tally bench iso8583: needs --terminals >= 2, --connections >= 1, --seconds > 0",
              file=sys.stderr)  # fmt: skip
        return 2
    if not 0 <= args.workers <= 64:
        print("tally bench iso8583: --workers takes 0 (one process) to 64", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr)

    work = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="tally-bench-iso-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "iso8583",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_description(),
        "code_version": code_version(),
        "command": "tally bench iso8583 "
        + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "iso8583"] else []),
        "terminals": args.terminals,
        "connections": args.connections,
        "seconds": args.seconds,
        "rate": args.rate,
        "empty_share": args.empty_share,
        "scrypt_n": args.scrypt_n,
        "server": args.server,
        "workers": args.workers,
        "client": "this process: anyio on uvloop, one thread, messages pre-built and signed",
        "fsync": True,
    }
    simulator = contextlib.ExitStack()
    try:
        # The counter's registrations run the identity database check: on a simulator with
        # no latency and no fraud, every customer is verified at once.
        args.providers = simulator.enter_context(bench_simulator())
        say(f"setting up {2 * args.terminals + 1} accounts ...")
        started = time.perf_counter()
        setup = start_server(work, "setup", args)
        try:
            fleet = build_fleet(work, setup.url, args.terminals)
        finally:
            setup.stop()
        iso_port = free_port()
        server = start_server(work, "iso8583", args, (iso_port, fleet))
        report["setup_s"] = round(time.perf_counter() - started, 1)
        try:
            phases = anyio.run(
                drive_load, args, fleet, iso_port, server.process.pid, report, say,
                backend="asyncio", backend_options={"use_uvloop": True},
            )  # fmt: skip
            figures(phases, report)
            checked, failed = verify_sample(phases)
            report["answers_mac_checked"] = checked
            report["answers_mac_failed"] = failed
            report.update(check_ledger(server.url, fleet, report["merchant_approved_minor"]))
        finally:
            server.stop()
    finally:
        simulator.close()
        if not args.data:
            shutil.rmtree(work, ignore_errors=True)
    if args.save:
        save_report(report, args.save)
    if not args.json:
        for name, value in report.items():
            print(f"{name:34} {value}")
    print(orjson.dumps(report).decode())
    ok = report["ledger_exact"] and report["outcomes_unknown"] == 0 and not failed
    return 0 if ok else 1
