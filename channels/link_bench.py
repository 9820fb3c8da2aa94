"""`tally bench link`: transfers over the core link (core/link) from front-end processes.

    tally bench link --clients 2 --concurrency 512 --seconds 10 --runs 3 --json [--save DIR]

One run, on a fresh data directory (the journal fdatasync'd as always):

1. Setup. One `tally serve --link unix:SOCKET --link-secret-file FILE` (a random
   32-character secret, mode 0600, in the work directory), on the development channel
   registry with the app channel's rate unlimited (`bench_channels`); `--accounts` Class
   I accounts opened and funded at the counter over HTTP, each with an app-channel
   transaction token (`setup_accounts_parallel` of `tally bench http`).
2. Load. `--clients` front-end processes (`python -m channels.link_bench client`), each
   with one `LinkClient` connection and `--concurrency` callers, each caller posting
   transfers of 1 fen as the app channel, one after another (closed loop), round the
   accounts (caller i's n-th transfer debits account i + n and credits the next one),
   each with its own operation key and, as a front-end forwards a signed request's, a
   nonce and a timestamp that the core checks and keeps (`--no-nonces`: none). The load
   runs without a pause through a warm-up (`--warmup-seconds`) and `--runs` timed
   windows of `--seconds` each; a reply counts in the window it arrived in. The client
   processes freeze their garbage and collect none while loaded (a collection's pause
   would be timed as the link's latency).
3. Figures of each window: `transfers_per_s` (Posted replies), `latency_ms_p50/p99/max`
   (one call, from the caller's send to its reply, client side; with every caller
   always waiting, Little's law makes it about clients x concurrency / rate: a
   closed loop measures capacity, the latency follows), `core_cpu_us_per_request` (the
   core process's CPU, /proc/<pid>/stat, over the window's Posted replies; the issue's
   target: <= 20), `client_cpu_us_per_request` (all client processes'),
   `core_cpu_percent`, `client_cpu_percent` and `other_cpu_percent` (the machine's CPU
   that neither the core, the clients nor this process used, 100 = one core: a run on
   a busy machine shows it). With several runs each figure is the median, every run's
   listed in `passes`.
4. Check. A call of unknown outcome (the connection lost after sending it, or no reply
   `CALL_TIMEOUT_S` after the end) is sent again with its operation key and a fresh
   nonce until it has one (the repeat meets the first's outcome, or posts it if the
   first never arrived): `outcomes_unknown`, `outcomes_resolved`, `outcomes_unresolved`.
   Then each account's balance is read over HTTP: it must be its funding less its
   acknowledged debits plus its acknowledged credits (`ledger_exact`; a risk hold
   counts as moved: balance less pending debits plus pending credits), and all of them
   must add up to the funding (`money_conserved`). The server's ledger results
   (/metrics) are reported as they are (`ledger_results`; `ledger_ok_during_load`: the
   ok results counted after the setup's).

`refused`, `problem` (the channel tier's refusals: rate, nonce), `unavailable`,
`overloaded`, `failed` and `outcomes_unresolved` are 0 in a clean run; the exit status
is 1 unless the run was clean and the ledger exact. The last line of output is one JSON
object. A progress bar is drawn on a terminal only (stderr, CI unset).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import secrets
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from array import array
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

from channels.client import TallyClient
from channels.http.bench import (
    BENCH_SIMULATOR_SEED,
    CHANNELS_FILE,
    FUNDING_MINOR,
    SETUP_ACTOR,
    check_metrics,
    secret_of,
    setup_accounts_parallel,
    start_tally,
)
from core.bench.server import REPO_ROOT, Server, cpu_seconds
from core.link.address import read_secret
from core.link.client import LinkClient, LinkFailed, LinkOverloaded, LinkUnavailable, connect_unix
from core.link.ops import ChannelProblem, Transfer
from core.progress import progress_bar
from core.providers.sim import running_simulator
from core.reports import code_version, machine_description, save_report
from core.services.commands import NO_CONTEXT, Caller, Consent
from core.services.refusals import Refused

CHANNEL = "app"
AMOUNT_MINOR = 1
ACCOUNTS_DEFAULT = 64
CLIENTS_DEFAULT = 1
CONCURRENCY_DEFAULT = 512
SECONDS_DEFAULT = 10.0
WARMUP_S_DEFAULT = 2.0
RUNS_DEFAULT = 1
SECRET_CHARS = 32
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes
TOKEN_TTL_S = 86_400  # the tokens outlive every run (the default is 300 s)
CLIENT_READY_TIMEOUT_S = 30.0  # a client process started and connected
START_LEAD_S = 0.5  # from the start line to the load's start: every client has read it
CALL_TIMEOUT_S = 10.0  # one call without a reply: its outcome is unknown
RESOLVE_ATTEMPTS_MAX = 5
RESOLVE_BACKOFF_S = 0.2
RETRY_PAUSE_S = 0.01  # after a call that did nothing (no connection, window full)
CLIENT_EXIT_TIMEOUT_S = CALL_TIMEOUT_S + RESOLVE_ATTEMPTS_MAX * (CALL_TIMEOUT_S + 1) + 30
PROGRESS_TICK_S = 0.5
# Counts that are 0 in a clean run (the exit status is 1 otherwise).
UNCLEAN_COUNTS = (
    "refused",
    "problem",
    "unavailable",
    "overloaded",
    "failed",
    "outcomes_unresolved",
)
# Outcomes of a call, counted per window (a refusal's code is counted apart as well).
OUTCOMES = ("acknowledged", "refused", "problem", "unavailable", "overloaded", "failed",
            "unknown", "held")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clients",
        type=int,
        default=CLIENTS_DEFAULT,
        help="front-end processes, one link connection each",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=CONCURRENCY_DEFAULT,
        help="callers per client, each with one transfer in flight",
    )
    parser.add_argument("--seconds", type=float, default=SECONDS_DEFAULT, help="each timed run")
    parser.add_argument("--warmup-seconds", type=float, default=WARMUP_S_DEFAULT)
    parser.add_argument(
        "--runs",
        type=int,
        default=RUNS_DEFAULT,
        help="timed runs on the same server, back to back (medians reported)",
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=ACCOUNTS_DEFAULT,
        help="funded accounts the transfers go round",
    )
    parser.add_argument(
        "--server",
        choices=("hypercorn", "uvicorn"),
        default="hypercorn",
        help="the core's ASGI server (tally serve --server): the link runs on its event loop",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the core's asyncio event loop (tally serve --loop)",
    )
    parser.add_argument(
        "--no-nonces",
        action="store_true",
        help="send the transfers without a nonce (a front-end forwards the signed"
        " request's; the core checks and keeps it): the replay guard's cost, by difference",
    )
    parser.add_argument(
        "--data", default=None, help="working directory, kept (default: a temp dir)"
    )
    parser.add_argument("--save", metavar="DIR", default=None)
    parser.add_argument("--json", action="store_true")


# --- a client process ------------------------------------------------------------------


@dataclass
class ClientPlan:
    """What a client process is told (a JSON file): where the core is and what to send."""

    socket: str
    secret_file: str
    caller: tuple[str, str, int]  # name, kind, ledger id
    accounts: list[int]
    tokens: list[str]
    concurrency: int
    warmup_s: float
    seconds: float
    runs: int
    key_prefix: str
    nonces: bool  # each transfer with a nonce (its key) and a timestamp, as a front-end's
    results: str  # the file the client writes its results to (and `.latencies` beside it)


class Load:
    """One client process's callers and what they saw, by window: 0 the warm-up, 1..runs
    the timed runs, runs + 1 the replies that arrived after the end."""

    def __init__(self, plan: ClientPlan, client: LinkClient, start: float) -> None:
        self.plan = plan
        self.client = client
        self.caller = Caller(*plan.caller)
        self.consents = [Consent(token) for token in plan.tokens]
        self.start = start
        self.timed_start = start + plan.warmup_s
        self.end = self.timed_start + plan.runs * plan.seconds
        windows = plan.runs + 2
        self.counts = [dict.fromkeys(OUTCOMES, 0) for _ in range(windows)]
        self.latencies_s: list[list[float]] = [[] for _ in range(windows)]
        self.refusals: Counter[str] = Counter()
        # Transfers that moved (or held) money, by their debit account's index: account j
        # lost debited[j] fen and gained debited[j - 1] (AMOUNT_MINOR each).
        self.debited = [0] * len(plan.accounts)
        self.in_flight: list[Transfer | None] = [None] * plan.concurrency
        self.unknown: list[Transfer] = []
        self.resolved_posted = 0  # of the unknown: posted (now or before), or refused
        self.resolved_held = 0
        self.resolved_refused = 0

    def window_of(self, now: float) -> int:
        if now < self.timed_start:
            return 0
        return min(self.plan.runs + 1, 1 + int((now - self.timed_start) / self.plan.seconds))

    async def serve_caller(self, index: int) -> None:
        """Transfers one after another until the end (a hot loop: kept lean)."""
        client, accounts, consents = self.client, self.plan.accounts, self.consents
        count = len(accounts)
        prefix = f"{self.plan.key_prefix}{index}."
        nonces = self.plan.nonces
        sequence = 0
        while True:
            sent = time.monotonic()
            if sent >= self.end:
                return
            debit = (index + sequence) % count
            key = prefix + str(sequence)
            command = Transfer(
                self.caller, key, accounts[debit], accounts[(debit + 1) % count],
                AMOUNT_MINOR, consents[debit], NO_CONTEXT,
                key if nonces else "", int(time.time()) if nonces else 0,
            )  # fmt: skip
            sequence += 1
            self.in_flight[index] = command
            try:
                posted = await client.transfer(command)
            except Refused as refused:
                self._count("refused", time.monotonic())
                self.refusals[refused.refusal.code.name] += 1
            except ChannelProblem as problem:
                self._count("problem", time.monotonic())
                self.refusals[f"{problem.status} {problem.slug}"] += 1
            except LinkUnavailable as error:
                self.in_flight[index] = None  # answered: not in flight while pausing
                self._count("unknown" if error.unknown else "unavailable", time.monotonic())
                if error.unknown:
                    self.unknown.append(command)
                await anyio.sleep(RETRY_PAUSE_S)
            except LinkOverloaded:
                self.in_flight[index] = None
                self._count("overloaded", time.monotonic())
                await anyio.sleep(RETRY_PAUSE_S)
            except LinkFailed:
                self._count("failed", time.monotonic())
            else:
                arrived = time.monotonic()
                window = self.window_of(arrived)
                counts = self.counts[window]
                counts["acknowledged"] += 1
                if posted.risk_hold:
                    counts["held"] += 1
                self.latencies_s[window].append(arrived - sent)
                self.debited[debit] += 1
            self.in_flight[index] = None

    def _count(self, outcome: str, now: float) -> None:
        self.counts[self.window_of(now)][outcome] += 1

    async def resolve_unknown(self) -> int:
        """Send each call of unknown outcome again with its key (and a fresh nonce, as a
        client re-signs a retry) until it has one: the repeat meets the first's outcome,
        or posts it if the first never arrived. Returns how many are still unknown."""
        unresolved = 0
        for command in self.unknown:
            for attempt in range(RESOLVE_ATTEMPTS_MAX):
                if command.nonce:
                    command.nonce = f"{command.key}.r{attempt}"
                    command.timestamp_s = int(time.time())
                try:
                    with anyio.fail_after(CALL_TIMEOUT_S):
                        await self.client.connected.wait()
                        posted = await self.client.transfer(command)
                except Refused as refused:
                    self.refusals[refused.refusal.code.name] += 1
                    self.resolved_refused += 1
                except (ChannelProblem, LinkUnavailable, LinkOverloaded, LinkFailed,
                        TimeoutError):  # fmt: skip
                    await anyio.sleep(RESOLVE_BACKOFF_S)
                    continue
                else:
                    self.debited[self.plan.accounts.index(command.debit)] += 1
                    self.resolved_posted += 1
                    self.resolved_held += bool(posted.risk_hold)
                break
            else:
                unresolved += 1
        return unresolved


async def drive_client(plan: ClientPlan, name: str) -> dict[str, Any]:
    """Connect, say `ready` on stdout, read the start time (time.monotonic, shared by the
    machine's processes) on stdin, run the load, resolve the unknown, return the results."""
    client = LinkClient(connect_unix(plan.socket), read_secret(plan.secret_file), name)
    async with anyio.create_task_group() as task_group:
        await task_group.start(client.serve_link_client)
        with anyio.fail_after(CLIENT_READY_TIMEOUT_S):
            await client.connected.wait()
        print("ready", flush=True)
        with anyio.fail_after(CLIENT_READY_TIMEOUT_S):
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
        words = line.split()
        assert len(words) == 2 and words[0] == "start", f"expected `start T`, got {line!r}"
        load = Load(plan, client, float(words[1]))
        await anyio.sleep(max(0.0, load.start - time.monotonic()))
        with _no_collections():
            # In flight at the end plus this: unknown (cancelled here, resolved below).
            with anyio.move_on_after(load.end - time.monotonic() + CALL_TIMEOUT_S):
                async with anyio.create_task_group() as callers:
                    for index in range(plan.concurrency):
                        callers.start_soon(load.serve_caller, index)
            for command in load.in_flight:
                if command is not None:
                    load.counts[-1]["unknown"] += 1
                    load.unknown.append(command)
        unresolved = await load.resolve_unknown()
        task_group.cancel_scope.cancel()
    return {
        "counts": load.counts,
        "latency_counts": [len(values) for values in load.latencies_s],
        "latencies": load.latencies_s,
        "refusals": dict(load.refusals),
        "debited": load.debited,
        "resolved_posted": load.resolved_posted,
        "resolved_held": load.resolved_held,
        "resolved_refused": load.resolved_refused,
        "unresolved": unresolved,
        "connections": client.connections,
    }


@contextmanager
def _no_collections() -> Iterator[None]:
    """No cyclic garbage collection while the load runs: the latencies are timed in this
    process, so a collection's pause would be counted as the link's (the iso8583 bench
    measured 30-90 ms pauses). What the load frees, reference counting frees as before."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def client_main(plan_path: str, name: str) -> int:
    plan = ClientPlan(**orjson.loads(Path(plan_path).read_bytes()))
    results = anyio.run(
        drive_client, plan, name, backend="asyncio", backend_options={"use_uvloop": True}
    )
    latencies = array("d")
    for values in results.pop("latencies"):
        latencies.extend(values)
    Path(plan.results + ".latencies").write_bytes(latencies.tobytes())
    Path(plan.results).write_bytes(orjson.dumps(results))
    return 0


# --- the core and the client processes ---------------------------------------------------


def app_caller() -> tuple[str, str, int]:
    """The app channel as the channel registry names it (its kind and ledger id)."""
    with open(CHANNELS_FILE, "rb") as file:
        entry = tomllib.load(file)["channels"][CHANNEL]
    return CHANNEL, str(entry["kind"]), int(entry["id"])


def bench_channels(work: Path) -> Path:
    """The development channel registry with the app channel unlimited in rate: the
    bench measures what the core carries, not the 20,000/s the shipped registry allows
    the channel (the core takes every forwarded transfer from the channel's one bucket).
    Everything else is as shipped."""
    text = CHANNELS_FILE.read_text(encoding="utf-8")
    pattern = re.compile(rf"(\[channels\.{CHANNEL}\]\n(?:(?!\[).*\n)*?)rate_per_s = [0-9_]+\n")
    text, replaced = pattern.subn(r"\1rate_per_s = 0  # tally bench link: unlimited\n", text)
    if replaced != 1:
        raise RuntimeError(f"{CHANNELS_FILE}: no rate_per_s for channel {CHANNEL}")
    path = work / "channels.toml"
    path.write_text(text, encoding="utf-8")
    return path


def write_secret(path: Path) -> None:
    secret = secrets.token_hex(SECRET_CHARS // 2)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secret + "\n")


class Clients:
    """The client processes: started, told when to start, waited for, stopped."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def launch(self, plans: list[ClientPlan]) -> None:
        work = self.work
        env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
        for index, plan in enumerate(plans):
            plan_path = work / f"client-{index}.plan.json"
            self.logs.append(work / f"client-{index}.log")
            plan_path.write_bytes(orjson.dumps(plan.__dict__))
            with open(self.logs[index], "ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "channels.link_bench",
                            "client",
                            str(plan_path),
                            f"bench-{index}",
                        ],
                        cwd=REPO_ROOT,
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                    )
                )

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + CLIENT_READY_TIMEOUT_S
        for index, process in enumerate(self.processes):
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
            line = process.stdout.readline() if ready else b""
            if line.strip() != b"ready":
                raise RuntimeError(f"client {index} not ready: {self.tail(index)}")

    def start(self, start: float) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(f"start {start!r}\n".encode())
            process.stdin.flush()

    def check_alive(self) -> None:
        for index, process in enumerate(self.processes):
            if process.poll() is not None:
                raise RuntimeError(f"client {index} exited early: {self.tail(index)}")

    def wait(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for index, process in enumerate(self.processes):
            status = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if status != 0:
                raise RuntimeError(f"client {index} failed ({status}): {self.tail(index)}")

    def tail(self, index: int) -> str:
        return self.logs[index].read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Sample:
    """CPU seconds so far, at one boundary of the windows."""

    at: float
    core_s: float
    clients_s: float
    machine_s: float
    own_s: float


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def sample(core: Server, clients: Clients) -> Sample:
    times = os.times()
    return Sample(
        time.monotonic(),
        cpu_seconds([core.process.pid]),
        cpu_seconds(clients.pids),
        machine_cpu_s(),
        times.user + times.system,
    )


def watch_load(core: Server, clients: Clients, boundaries: list[float], show: bool) -> list[Sample]:
    """Sleep through the load, sampling the CPU at each boundary; a client or the core
    that dies ends the run."""
    samples = []
    total_s = boundaries[-1] - boundaries[0]
    with progress_bar(math.ceil(total_s), "link load (s)") as bar:
        bar.disable = bar.disable or not show
        shown = 0.0
        for boundary in boundaries:
            while (left := boundary - time.monotonic()) > 0:
                time.sleep(min(left, PROGRESS_TICK_S))
                clients.check_alive()
                if core.process.poll() is not None:
                    raise RuntimeError("the core exited during the load")
                elapsed = min(total_s, max(0.0, time.monotonic() - boundaries[0]))
                bar.update(elapsed - shown)
                shown = elapsed
            samples.append(sample(core, clients))
    return samples


def percentile_ms(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return round(ordered[index] * 1000, 2)


def read_results(plans: list[ClientPlan]) -> list[dict[str, Any]]:
    results = []
    for plan in plans:
        result: dict[str, Any] = orjson.loads(Path(plan.results).read_bytes())
        latencies = array("d")
        latencies.frombytes(Path(plan.results + ".latencies").read_bytes())
        result["latencies"], offset = [], 0
        for count in result["latency_counts"]:
            result["latencies"].append(latencies[offset : offset + count])
            offset += count
        results.append(result)
    return results


def run_figures(
    results: list[dict[str, Any]], samples: list[Sample], runs: int
) -> list[dict[str, Any]]:
    """Each timed run's figures (window k: samples k and k + 1, the warm-up is 0)."""
    figures = []
    for window in range(1, runs + 1):
        before, after = samples[window], samples[window + 1]
        window_s = after.at - before.at
        acknowledged = sum(result["counts"][window]["acknowledged"] for result in results)
        latencies = sorted(value for result in results for value in result["latencies"][window])
        core_s = after.core_s - before.core_s
        clients_s = after.clients_s - before.clients_s
        others_s = after.machine_s - before.machine_s - core_s - clients_s
        others_s -= after.own_s - before.own_s
        figures.append(
            {
                "transfers_per_s": round(acknowledged / window_s),
                "latency_ms_p50": percentile_ms(latencies, 0.50),
                "latency_ms_p99": percentile_ms(latencies, 0.99),
                "latency_ms_max": percentile_ms(latencies, 1.0),
                "core_cpu_us_per_request": round(1e6 * core_s / max(1, acknowledged), 1),
                "client_cpu_us_per_request": round(1e6 * clients_s / max(1, acknowledged), 1),
                "core_cpu_percent": round(100 * core_s / window_s, 1),
                "client_cpu_percent": round(100 * clients_s / window_s, 1),
                "other_cpu_percent": round(max(0.0, 100 * others_s / window_s), 1),
            }
        )
    return figures


def summarize(
    report: dict[str, Any], results: list[dict[str, Any]], passes: list[dict[str, Any]]
) -> None:
    for name in passes[0]:
        values = [figures[name] for figures in passes]
        median = statistics.median(values)
        report[name] = round(median, 2) if isinstance(median, float) else median
    report["passes_transfers_per_s"] = {"link": [figures["transfers_per_s"] for figures in passes]}
    report["passes"] = {name: [figures[name] for figures in passes] for name in passes[0]}
    totals: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    for result in results:
        for counts in result["counts"]:
            totals.update(counts)
        refusals.update(result["refusals"])
    resolved = Counter[str]()
    for result in results:
        resolved.update(
            {name: result[f"resolved_{name}"] for name in ("posted", "held", "refused")}
        )
    report["acknowledged_total"] = totals["acknowledged"] + resolved["posted"]
    for outcome in ("refused", "problem", "unavailable", "overloaded", "failed"):
        report[outcome] = totals[outcome]
    report["risk_held"] = totals["held"] + resolved["held"]
    report["refusals"] = dict(refusals)
    report["outcomes_unknown"] = totals["unknown"]
    report["outcomes_resolved"] = resolved["posted"] + resolved["refused"]
    report["outcomes_unresolved"] = sum(result["unresolved"] for result in results)
    report["reconnects"] = sum(result["connections"] - 1 for result in results)


def check_ledger(url: str, accounts: list[str], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each account at its funding, less its acknowledged debits, plus its acknowledged
    credits (a hold counted as moved); and the total at the funding (money conserved)."""
    count = len(accounts)
    debited = [sum(result["debited"][index] for result in results) for index in range(count)]
    mismatches: list[str] = []
    total = 0
    with TallyClient(
        url, "counter", *secret_of("counter"), timeout_s=60.0, actor=SETUP_ACTOR
    ) as counter:
        for index, account in enumerate(accounts):
            response = counter.get(f"/v1/accounts/{account}")
            if response.status_code != 200:
                raise RuntimeError(f"reading {account}: {response.status_code} {response.text}")
            body = response.json()
            held = (
                body["balance_minor"] - body["pending_debits_minor"] + body["pending_credits_minor"]
            )
            expected = FUNDING_MINOR + AMOUNT_MINOR * (debited[index - 1] - debited[index])
            total += held
            if held != expected:
                mismatches.append(f"{account}: {held}, expected {expected}")
    return {
        "ledger_accounts_checked": count,
        "ledger_mismatches": len(mismatches),
        "ledger_mismatch_examples": mismatches[:5],
        "ledger_exact": not mismatches,
        "money_conserved": total == count * FUNDING_MINOR,
    }


# --- the run -------------------------------------------------------------------------------


def check_arguments(args: argparse.Namespace) -> str | None:
    if args.clients < 1 or args.concurrency < 1 or args.runs < 1 or args.accounts < 2:
        return "needs --clients, --concurrency, --runs >= 1 and --accounts >= 2"
    if args.seconds <= 0 or args.warmup_seconds < 0:
        return "needs --seconds > 0 and --warmup-seconds >= 0"
    return None


def new_report(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "benchmark": "link",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_description(),
        "code_version": code_version(),
        "command": "tally bench link "
        + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "link"] else sys.argv[1:]),
        "clients": args.clients,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup_seconds,
        "runs": args.runs,
        "accounts": args.accounts,
        "amount_minor": AMOUNT_MINOR,
        "nonces": not args.no_nonces,
        "channel_rate": "unlimited (the app channel's rate_per_s = 0)",
        "server": args.server,
        "loop": args.loop,
        "link": "unix socket",
        "client": "python -m channels.link_bench client: one LinkClient each, anyio on uvloop",
        "fsync": True,
    }


def measure(work: Path, args: argparse.Namespace, report: dict[str, Any], show: bool) -> None:
    def say(text: str) -> None:
        if show:
            print(text, file=sys.stderr)

    socket = work / "link.sock"
    if len(str(socket)) > SOCKET_PATH_MAX:
        raise RuntimeError(f"{socket}: too long for a Unix socket; use a shorter --data")
    secret_file = work / "link-secret"
    write_secret(secret_file)
    channels = bench_channels(work)
    with running_simulator(BENCH_SIMULATOR_SEED) as providers:
        link = ("--link", f"unix:{socket}", "--link-secret-file", str(secret_file))
        core = start_tally(
            work,
            args.server,
            "link",
            args.loop,
            extra=(*link, "--token-ttl-s", str(TOKEN_TTL_S), "--channels", str(channels)),
            providers=providers,
        )
        clients = Clients(work)
        try:
            say(f"setting up {args.accounts} accounts ...")
            accounts, tokens = setup_accounts_parallel(core.url, args.accounts)
            report["ledger_results_setup"] = check_metrics(core.url)
            prefix = secrets.token_hex(4)
            plans = [
                ClientPlan(
                    str(socket),
                    str(secret_file),
                    app_caller(),
                    [int(a) for a in accounts],
                    [tokens[a] for a in accounts],
                    args.concurrency,
                    args.warmup_seconds,
                    args.seconds,
                    args.runs,
                    f"{prefix}-{index}-",
                    not args.no_nonces,
                    str(work / f"client-{index}.json"),
                )
                for index in range(args.clients)
            ]
            say(f"starting {args.clients} client process(es) ...")
            clients.launch(plans)
            clients.wait_ready()
            start = time.monotonic() + START_LEAD_S
            clients.start(start)
            boundaries = [start, start + args.warmup_seconds]
            boundaries += [boundaries[1] + k * args.seconds for k in range(1, args.runs + 1)]
            samples = watch_load(core, clients, boundaries, show)
            say("waiting for the clients' last replies ...")
            clients.wait(CLIENT_EXIT_TIMEOUT_S)
            results = read_results(plans)
            summarize(report, results, run_figures(results, samples, args.runs))
            report.update(check_ledger(core.url, accounts, results))
            ledger = check_metrics(core.url)
            report["ledger_results"] = ledger
            report["ledger_ok_during_load"] = ledger.get("ok", 0) - report[
                "ledger_results_setup"
            ].get("ok", 0)
        finally:
            clients.stop()
            core.stop()


def run(args: argparse.Namespace) -> int:
    problem = check_arguments(args)
    if problem:
        print(f"tally bench link: {problem}", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() and "CI" not in os.environ
    work = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="tally-bench-link-"))
    work.mkdir(parents=True, exist_ok=True)
    report = new_report(args)
    try:
        measure(work, args, report, show)
    finally:
        if not args.data:
            shutil.rmtree(work, ignore_errors=True)
    clean = (
        report["ledger_exact"]
        and report["money_conserved"]
        and not any(report[name] for name in UNCLEAN_COUNTS)
    )
    report["clean"] = clean
    if args.save:
        save_report(report, args.save)
    if not args.json:
        for name, value in report.items():
            print(f"{name:34} {value}")
    print(orjson.dumps(report).decode())
    return 0 if clean else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "client":
        sys.exit(client_main(sys.argv[2], sys.argv[3]))
    print(
        "usage: python -m channels.link_bench client PLAN NAME (or: tally bench link)",
        file=sys.stderr,
    )
    sys.exit(2)
