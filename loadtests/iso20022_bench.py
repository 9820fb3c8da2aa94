"""`tally bench iso20022`: a partner bank's pacs.008 files against a real server.

    tally bench iso20022 --json [--messages 100 --transactions 1000 --save benchmarks]

One run, on a fresh data directory (the journal fdatasync'd as always):

1. Setup. `tally serve` (hypercorn by default) opens `--accounts` Class I accounts at
   the counter (one customer each, no money: a credit needs none).
2. Messages. `--messages` pacs.008 files of `--transactions` credits each (1..999.99
   CNY to a random account of the setup; a share, `--unknown-share`, to an account
   number no account has: RJCT AC01 expected) are built ahead with the channel's codec
   (loadtests/iso20022_partner.py), as a partner's clearing system has them ready; each
   is signed just before it is sent (the signature carries a timestamp and a nonce).
3. Warm-up (`--warmup-messages`), then the timed phase: `--connections` partner
   connections (threads, one keep-alive HTTP connection each, closed loop) post the
   messages to `POST /v1/iso20022/pacs.008` as the open_api channel and read each
   pacs.002. `pacs008_transactions_per_s` (target >= 20,000): credits decided (ACSC or
   RJCT) over the timed phase's wall time; `messages_per_s`; `latency_ms_p50/p99` per
   message (send to the whole pacs.002 read); `server_cpu_us_per_transaction`.
4. Resolution. A message answered 503 (or not at all) is sent again unchanged, PDNG
   credits again in a new message with the same TxIds, until every credit is decided
   (`outcomes_unknown` counts those that never were). Then one message is sent again
   twice (the same MsgId, then a new MsgId with the same TxIds): every credit must be
   answered as the first time and nothing may be booked twice (`repeat_consistent`).
5. Check. Every account's balance is read over HTTP: it must equal the sum of its ACSC
   credits exactly (`ledger_exact`), the RJCT ones booked nowhere.

The last line of output is one JSON object. Client (this process) and server share the
machine: `client_cpu_percent`, `server_cpu_percent` and `other_cpu_percent` (CPU other
processes used meanwhile) are reported beside the rate.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import queue
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from channels.client import Signer, TallyClient
from core.bench.server import Server, cpu_seconds, free_port
from core.progress import progress_bar
from core.reports import code_version, machine_description, save_report
from loadtests.dataset import channel_secrets
from loadtests.iso20022_partner import (
    ACCEPTED,
    PACS_008_PATH,
    REJECTED,
    Credit,
    PartnerBank,
    Sent,
    StatusAnswer,
    StatusReportError,
    read_status_report,
)
from loadtests.verification import bench_simulator

MESSAGES_DEFAULT = 100
TRANSACTIONS_DEFAULT = 1_000
CONNECTIONS_DEFAULT = 4
ACCOUNTS_DEFAULT = 200
WARMUP_MESSAGES_DEFAULT = 4
UNKNOWN_SHARE_DEFAULT = 0.001
UNKNOWN_ACCOUNT = "6235019999999999996"  # a well-formed number no account has
AMOUNT_MINOR_MAX = 99_999
# The open_api channel's incoming clearing per account per day (core/data/limits.toml,
# `inflow_daily_cap_minor`): the amounts are drawn so that each account's credits of the
# run stay near INFLOW_BUDGET_SHARE of it (a credit over it is RJCT AM02, not measured).
OPEN_API_INFLOW_DAILY_CAP_MINOR = 10_000_000
INFLOW_BUDGET_SHARE = 0.6
# The transfer log: open_api may hold 10% of it (`log_share_permille`), and a refused
# credit takes room too (the ring of failed transfers): room for every credit 12 times.
TRANSFERS_MAX_FACTOR = 12
CHANNEL = "open_api"
SETUP_ACTOR = ("S0001", "supervisor")
SEED = 20022
REQUEST_TIMEOUT_S = 60.0
RESOLVE_ROUNDS_MAX = 8
RETRY_SLEEP_S_MAX = 2.0
SCRYPT_N = 1024  # the account openings' transaction passwords: cheap here
# Room in the transfer log for every credit of the run, the warm-up's and the repeats'.
TRANSFERS_MAX_MIN = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=MESSAGES_DEFAULT,
                        help="pacs.008 messages in the timed phase")  # fmt: skip
    parser.add_argument("--transactions", type=int, default=TRANSACTIONS_DEFAULT,
                        help="credits per message")  # fmt: skip
    parser.add_argument("--connections", type=int, default=CONNECTIONS_DEFAULT,
                        help="concurrent partner connections (closed loop)")  # fmt: skip
    parser.add_argument("--accounts", type=int, default=ACCOUNTS_DEFAULT,
                        help="Class I accounts the credits go to")  # fmt: skip
    parser.add_argument("--warmup-messages", type=int, default=WARMUP_MESSAGES_DEFAULT)
    parser.add_argument("--unknown-share", type=float, default=UNKNOWN_SHARE_DEFAULT,
                        help="share of the credits to a number no account has (AC01)")  # fmt: skip
    parser.add_argument("--server", choices=("hypercorn", "uvicorn"), default="hypercorn")
    parser.add_argument("--data", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--save", metavar="DIR", default=None)
    parser.add_argument("--json", action="store_true")


# --- setup ---------------------------------------------------------------------------------


def server_command(data: Path, port: int, args: argparse.Namespace) -> list[str]:
    total = (args.messages + args.warmup_messages + 2) * args.transactions
    transfers_max = max(
        TRANSFERS_MAX_MIN, 1 << math.ceil(math.log2(TRANSFERS_MAX_FACTOR * total + 1))
    )
    return [
        sys.executable, "-m", "core", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--data", str(data),
        "--server", args.server,
        "--dev",  # the example registry's public secrets: the partner signs with them
        "--providers", args.providers,  # the setup's counter registrations: identity checks
        "--access-log", "off",
        "--accounts-max", str(max(4096, 4 * args.accounts)),
        "--transfers-max", str(transfers_max),
        "--scrypt-n", str(SCRYPT_N),
    ]  # fmt: skip


def open_accounts(url: str, count: int) -> list[str]:
    """`count` Class I accounts (empty), one customer each, opened at the counter."""
    from loadtests.iso8583_bench import open_accounts_parallel

    return open_accounts_parallel(url, count, 1, funded=False)


# --- the load ------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What the partner was told, credit by credit, and how each message went."""

    decided: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # tx -> status
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # HTTP status of each answer
    group_statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    retry: list[Sent] = field(default_factory=list)  # whole messages to send again
    pending: list[Credit] = field(default_factory=list)  # PDNG credits to send again
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def book(self, sent: Sent, status: int, answer: StatusAnswer | None, latency_s: float,
             timed: bool) -> None:  # fmt: skip
        with self.lock:
            self.statuses[str(status)] += 1
            if timed:
                self.latencies_s.append(latency_s)
            if status != 200 or answer is None:
                if status in (0, 429, 503):
                    self.retry.append(sent)  # the same message again, later
                else:
                    self.problems.append(f"{sent.msg_id}: HTTP {status}")
                return
            self.group_statuses[answer.group_status] += 1
            if answer.original_msg_id != sent.msg_id:
                self.problems.append(f"{sent.msg_id}: pacs.002 names {answer.original_msg_id}")
            by_tx_id = answer.by_tx_id
            for credit in sent.credits:
                tx = by_tx_id.get(credit.tx_id)
                outcome = tx.outcome if tx is not None else ""
                if tx is None or not outcome:
                    self.problems.append(f"{sent.msg_id}: {credit.tx_id} answered {tx}")
                    self.pending.append(credit)
                elif outcome == "pending":
                    self.pending.append(credit)  # PDNG: the same TxId again, later
                else:
                    self.decided[credit.tx_id] = (tx.status, tx.reason)
                    if tx.status == REJECTED:
                        self.reasons[tx.reason or "?"] += 1


class Connection:
    """One partner connection: a keep-alive HTTP client posting signed pacs.008 files."""

    def __init__(self, url: str, partner: PartnerBank) -> None:
        self.client = httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S)
        self.partner = partner

    def post(self, sent: Sent) -> tuple[int, StatusAnswer | None, float, bytes]:
        """(HTTP status (0: no answer), the pacs.002 read, seconds, the raw answer)."""
        started = time.perf_counter()
        try:
            response = self.client.post(
                PACS_008_PATH, content=sent.body, headers=self.partner.headers(sent)
            )
            content = response.content
        except httpx.HTTPError:
            return 0, None, time.perf_counter() - started, b""
        answer = None
        if response.status_code in (200, 400):
            try:
                answer = read_status_report(content)
            except StatusReportError:
                answer = None
        return response.status_code, answer, time.perf_counter() - started, content

    def close(self) -> None:
        self.client.close()


def drive(connections: list[Connection], messages: list[Sent], tally: Tally, timed: bool,
          progress: Any = None) -> float:  # fmt: skip
    """Send `messages` over the connections, closed loop; the wall time it took."""
    work: queue.SimpleQueue[Sent] = queue.SimpleQueue()
    for sent in messages:
        work.put(sent)

    def worker(connection: Connection) -> None:
        while True:
            try:
                sent = work.get_nowait()
            except queue.Empty:
                return
            status, answer, latency_s, _ = connection.post(sent)
            tally.book(sent, status, answer, latency_s, timed)
            if progress is not None:
                progress.update(len(sent.credits))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def resolve(connections: list[Connection], partner: PartnerBank, tally: Tally,
            transactions: int) -> int:  # fmt: skip
    """Send again what is undecided (whole messages unchanged, PDNG credits in new messages
    with the same TxIds) until nothing is; returns the messages sent."""
    sent_count = 0
    for round_index in range(RESOLVE_ROUNDS_MAX + 1):
        with tally.lock:
            pending = [credit for credit in tally.pending if credit.tx_id not in tally.decided]
            if round_index == RESOLVE_ROUNDS_MAX or (not tally.retry and not pending):
                tally.pending = pending  # still PDNG: held by the risk controls, or shed
                break
            again, tally.retry = tally.retry, []
            tally.pending = []
        if round_index:
            time.sleep(min(RETRY_SLEEP_S_MAX, 0.1 * 2**round_index))
        again += [
            partner.message(pending[start : start + transactions])
            for start in range(0, len(pending), transactions)
        ]
        sent_count += len(again)
        drive(connections, again, tally, timed=False)
    return sent_count


def check_repeat(connection: Connection, partner: PartnerBank, first: Sent,
                 tally: Tally) -> tuple[bool, list[str]]:  # fmt: skip
    """`first` sent again with its MsgId, then its credits in a new message: every credit
    must be answered as the first time (ACSC again for a booked one)."""
    problems = []
    for sent in (first, partner.message(first.credits)):
        status, answer, _, content = connection.post(sent)
        if status != 200 or answer is None:
            problems.append(f"repeat of {first.msg_id}: HTTP {status} {content[:200]!r}")
            continue
        by_tx_id = answer.by_tx_id
        for credit in first.credits:
            tx = by_tx_id.get(credit.tx_id)
            told = tally.decided.get(credit.tx_id)
            now = (tx.status, tx.reason) if tx is not None else None
            if told is not None and now is not None and now[0] != told[0]:
                problems.append(f"repeat of {credit.tx_id}: {now} now, {told} first")
    return not problems, problems[:5]


# --- the books -----------------------------------------------------------------------------


def check_ledger(url: str, accounts: list[str], messages: list[Sent],
                 tally: Tally) -> dict[str, Any]:  # fmt: skip
    """Every account's balance == the sum of its ACSC credits; its pending credits at most
    the sum of its credits still PDNG (a risk hold is a pending credit, a shed credit
    nothing); no RJCT credit booked."""
    expected: Counter[str] = Counter()
    held: Counter[str] = Counter()
    still_pending = {credit.tx_id for credit in tally.pending}
    for sent in messages:
        for credit in sent.credits:
            if tally.decided.get(credit.tx_id, ("",))[0] == ACCEPTED:
                expected[credit.account] += credit.amount_minor
            elif credit.tx_id in still_pending:
                held[credit.account] += credit.amount_minor
    entry = channel_secrets()["counter"]
    mismatches: list[str] = []
    with TallyClient(url, "counter", entry["key_id"], entry["secret"], timeout_s=60.0,
                     actor=SETUP_ACTOR) as counter:  # fmt: skip
        for account in accounts:
            response = counter.get(f"/v1/accounts/{account}")
            if response.status_code != 200:
                raise RuntimeError(f"reading {account}: {response.status_code} {response.text}")
            view = response.json()
            balance, pending = view["balance_minor"], view["pending_credits_minor"]
            if balance != expected[account]:
                mismatches.append(f"{account}: balance {balance}, ACSC credits {expected[account]}")
            if pending > held[account]:
                mismatches.append(f"{account}: pending credits {pending}, PDNG {held[account]}")
    unknown_acsc = expected.get(UNKNOWN_ACCOUNT, 0)
    if unknown_acsc:
        mismatches.append(f"{UNKNOWN_ACCOUNT} (no such account): ACSC credits {unknown_acsc}")
    return {
        "ledger_accounts_checked": len(accounts),
        "ledger_credited_minor": sum(expected.values()),
        "ledger_mismatches": len(mismatches),
        "ledger_mismatch_examples": mismatches[:5],
        "ledger_exact": not mismatches,
    }


# --- the run -------------------------------------------------------------------------------


def amount_minor_max(accounts: int, credits: int) -> int:
    """The largest amount drawn: uniform amounts in 1..this keep an account's expected
    credits of the run at INFLOW_BUDGET_SHARE of the channel's daily inflow cap."""
    per_account = max(1.0, credits / accounts)
    budget = INFLOW_BUDGET_SHARE * OPEN_API_INFLOW_DAILY_CAP_MINOR
    return max(1, min(AMOUNT_MINOR_MAX, int(2 * budget / per_account)))


def build_messages(partner: PartnerBank, accounts: list[str], count: int, transactions: int,
                   unknown_share: float, rng: random.Random,
                   amount_max: int) -> list[Sent]:  # fmt: skip
    messages = []
    for _ in range(count):
        targets = [
            (
                UNKNOWN_ACCOUNT if rng.random() < unknown_share else rng.choice(accounts),
                rng.randint(1, amount_max),
            )
            for _ in range(transactions)
        ]
        messages.append(partner.message(partner.credits(targets)))
    return messages


def percentile_ms(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return round(ordered[index] * 1000, 2)


def _machine_cpu_s() -> float:
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(url: str, server_pid: int, accounts: list[str], args: argparse.Namespace,
            report: dict[str, Any], say: Callable[[str], None]) -> None:  # fmt: skip
    entry = channel_secrets()[CHANNEL]
    signer = Signer(CHANNEL, entry["key_id"], entry["secret"].encode())
    partner = PartnerBank(signer, tag=f"B{int(time.time()) % 10**8:08d}")
    rng = random.Random(SEED)
    say(f"building {args.warmup_messages + args.messages} messages of {args.transactions} ...")
    started = time.perf_counter()
    amount_max = amount_minor_max(
        len(accounts), (args.warmup_messages + args.messages) * args.transactions
    )
    report["amount_minor_max"] = amount_max
    warmup = build_messages(partner, accounts, args.warmup_messages, args.transactions,
                            args.unknown_share, rng, amount_max)  # fmt: skip
    timed = build_messages(partner, accounts, args.messages, args.transactions,
                           args.unknown_share, rng, amount_max)  # fmt: skip
    build_s = time.perf_counter() - started
    report["client_build_ms_per_message"] = round(1000 * build_s / max(1, len(warmup + timed)), 2)
    report["message_bytes"] = len(timed[0].body) if timed else 0
    tally = Tally()
    connections = [Connection(url, partner) for _ in range(args.connections)]
    try:
        if warmup:
            drive(connections, warmup, tally, timed=False)
        cpu_before = cpu_seconds([server_pid])
        client_before = _own_cpu_s()
        machine_before = _machine_cpu_s()
        decided_before = len(tally.decided)
        with progress_bar(args.messages * args.transactions, "pacs.008 credits") as progress:
            wall_s = drive(connections, timed, tally, timed=True, progress=progress)
        server_cpu_s = cpu_seconds([server_pid]) - cpu_before
        client_cpu_s = _own_cpu_s() - client_before
        machine_cpu_s = _machine_cpu_s() - machine_before
        decided_timed = len(tally.decided) - decided_before
        say(f"timed: {decided_timed / wall_s:,.0f} credits/s")
        report["pacs008_transactions_per_s"] = round(decided_timed / wall_s)
        report["messages_per_s"] = round(len(timed) / wall_s, 1)
        report["latency_ms_p50"] = percentile_ms(tally.latencies_s, 0.50)
        report["latency_ms_p99"] = percentile_ms(tally.latencies_s, 0.99)
        report["latency_ms_max"] = percentile_ms(tally.latencies_s, 1.0)
        report["timed_s"] = round(wall_s, 2)
        report["server_cpu_us_per_transaction"] = round(
            1e6 * server_cpu_s / max(1, decided_timed), 2
        )
        report["server_cpu_percent"] = round(100 * server_cpu_s / wall_s, 1)
        report["client_cpu_percent"] = round(100 * client_cpu_s / wall_s, 1)
        others_s = machine_cpu_s - server_cpu_s - client_cpu_s
        report["other_cpu_percent"] = round(max(0.0, 100 * others_s / wall_s), 1)
        report["answers_503_or_lost"] = len(tally.retry)
        report["pending_credits"] = len(tally.pending)
        report["resend_messages"] = resolve(connections, partner, tally, args.transactions)
        everything = warmup + timed
        if timed:
            consistent, problems = check_repeat(connections[0], partner, timed[0], tally)
            report["repeat_consistent"] = consistent
            tally.problems += problems
    finally:
        for connection in connections:
            connection.close()
    statuses = Counter(status for status, _ in tally.decided.values())
    all_tx = {credit.tx_id for sent in everything for credit in sent.credits}
    report["acsc"] = statuses[ACCEPTED]
    report["rjct"] = statuses[REJECTED]
    report["pdng_final"] = len({credit.tx_id for credit in tally.pending})
    report["rjct_by_reason"] = dict(sorted(tally.reasons.items()))
    report["outcomes_unknown"] = len(all_tx - set(tally.decided)) - report["pdng_final"]
    report["http_statuses"] = dict(sorted(tally.statuses.items()))
    report["group_statuses"] = dict(sorted(tally.group_statuses.items()))
    report["problems"] = len(tally.problems)
    report["problem_examples"] = tally.problems[:5]
    report.update(check_ledger(url, accounts, everything, tally))


def run(args: argparse.Namespace) -> int:
    if args.messages < 1 or args.transactions < 1 or args.connections < 1 or args.accounts < 1:
        print("tally bench iso20022: --messages, --transactions, --connections and --accounts"
              " must be >= 1", file=sys.stderr)  # fmt: skip
        return 2

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr)

    work = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="tally-bench-20022-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "iso20022",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_description(),
        "code_version": code_version(),
        "command": "tally bench iso20022 "
        + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "iso20022"] else []),
        "messages": args.messages,
        "transactions": args.transactions,
        "connections": args.connections,
        "accounts": args.accounts,
        "unknown_share": args.unknown_share,
        "server": args.server,
        "client": "this process: one thread per connection (httpx), messages pre-built",
        "fsync": True,
    }
    simulator = contextlib.ExitStack()
    try:
        # The counter's registrations run the identity database check: on a simulator with
        # no latency and no fraud, every customer is verified at once.
        args.providers = simulator.enter_context(bench_simulator())
        say(f"setting up {args.accounts} accounts ...")
        started = time.perf_counter()
        port = free_port()
        if (work / "data").exists():
            shutil.rmtree(work / "data")
        server = Server(server_command(work / "data", port, args), port,
                        work / "server.log", "/readyz")  # fmt: skip
        try:
            accounts = open_accounts(server.url, args.accounts)
            report["setup_s"] = round(time.perf_counter() - started, 1)
            measure(server.url, server.process.pid, accounts, args, report, say)
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
    ok = (
        report["ledger_exact"]
        and report["outcomes_unknown"] == 0
        and report["problems"] == 0
        and report.get("repeat_consistent", True)
    )
    return 0 if ok else 1
