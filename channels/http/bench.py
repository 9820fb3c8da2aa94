"""`tally bench http`: the HTTP API under wrk, against the ceiling of the bare server.

One run, a fresh data directory per phase, the journal fdatasync'd as always:

1. `bare_hypercorn_requests_per_s`: a minimal ASGI app on hypercorn (asyncio)
   that only reads the body, parses it with orjson and answers a small JSON,
   driven by the same wrk script with the same pre-signed requests: the
   ceiling of the server itself.
2. `single_transfer_requests_per_s`, `latency_ms_p50`, `latency_ms_p99`:
   `tally serve` (hypercorn, asyncio, embedded journal) taking signed,
   idempotent POST /v1/transfers between funded accounts, each with its own
   nonce and Idempotency-Key and a transaction token (the password was
   exchanged for it once per account, as a real client does).
3. `batch_transfers_per_s` (JSON) and `batch_binary_transfers_per_s`
   (128-byte records): POST /v1/transfers/batch, 8189 transfers a request.
4. The same keys with a `_uvicorn` suffix for the optional faster server.
5. The risk stage's cost (`--risk-pairs N`, issue 15): single transfers on two Tally
   servers side by side, one with the risk rules of `--risk-rules` (the shipped 20 by
   default) and one with an empty rule set, measured in N pairs of passes that
   alternate which of the two goes first; `single_risk_requests_per_s` and
   `single_no_risk_requests_per_s` (medians of the passes, each listed), and
   `risk_rate_ratio`, the median of the pairs' ratios with / without (the issue's
   target: >= 0.9; `risk_rate_ratio_of_medians` beside it), and the server CPU per
   request the rules add (`risk_server_cpu_us_added_per_request`, the steadier
   figure on a shared machine). Each request names a device
   and an IP (the app's signed `device` field), each phone sending a few transfers
   (`device_of`), so this legitimate-looking traffic trips no rule and both servers
   do the same ledger work: the difference is the screening (every rule evaluated,
   every counter updated). The risk stage's counters in /metrics are reported
   (`risk_decisions`; `risk_fired_in_passes`: postings of the timed passes a rule
   fired on, 0 when the traffic is as meant). `--risk-only` runs this phase alone.

wrk (Debian's `wrk` package: `apt-get install -y wrk`) runs in its own
process with one thread; its CPU time is reported (`client_cpu_percent`),
and so is the server's CPU per request. Requests are signed ahead of time
(nonces and keys are single-use, so each request is distinct); the timed
phase only sends them. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from channels.client import Signer, TallyClient
from core.bench.server import Server, children_of, cpu_seconds, free_port
from core.data import DEFAULT_CHANNELS_PATH, DEFAULT_RISK_PATH
from core.providers.sim import running_simulator
from core.reports import machine_description, save_report

BATCH_SIZE = 8189
ACCOUNTS = 64
# Each account's cash at setup: the supervisor's cash cap of the example registry (one
# deposit); the measured transfers (1-97 fen) go round the accounts and never drain one,
# and 64 such deposits stay far inside the cash vault's floor (examples/limits.toml).
FUNDING_MINOR = 50_000_000
SETUP_ACTOR = ("S0001", "supervisor")
BENCH_SIMULATOR_SEED = 17  # the providers' simulator: no latency, no fraud (its defaults)
CHANNELS_FILE = DEFAULT_CHANNELS_PATH
RISK_PAIRS_DEFAULT = 3
RISK_ACCOUNTS_DEFAULT = ACCOUNTS
# The "without" server's rule set: a valid rule file with no rules (the stage runs, no
# rule is evaluated), so the comparison is the 20 rules' cost, nothing else.
EMPTY_RISK_RULES = "version = 1\n\n[holds]\ndelay_s = 3600\nreview_s = 259200\n"

WRK_SCRIPT = r"""
local requests = {}
local shared = nil
local index = 0
local wrapped = 0

init = function(args)
  if args[2] ~= nil then
    local handle = io.open(args[2], "rb")
    shared = handle:read("*a")
    handle:close()
  end
  for line in io.lines(args[1]) do
    local method, path, ctype, auth, key, token, body =
      line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {["Content-Type"] = ctype, ["Authorization"] = auth}
    if key ~= "" then headers["Idempotency-Key"] = key end
    if token ~= "" then headers["Tally-Transaction-Token"] = token end
    if shared ~= nil then
      requests[#requests + 1] = {method, path, headers}
    else
      requests[#requests + 1] = wrk.format(method, path, headers, body)
    end
  end
end

request = function()
  index = index + 1
  if index > #requests then
    index = 1
    wrapped = wrapped + 1
  end
  local r = requests[index]
  if shared ~= nil then
    return wrk.format(r[1], r[2], r[3], shared)
  end
  return r
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=15.0, help="timed load per phase")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (single)")
    parser.add_argument("--batch-connections", type=int, default=4, help="wrk connections (batch)")
    parser.add_argument(
        "--servers",
        default="hypercorn,uvicorn",
        help="comma-separated ASGI servers to measure (hypercorn first)",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the asyncio event loop (uvicorn and hypercorn), for Tally, its front-ends and its"
        " bare peer alike (tally serve --loop)",
    )
    parser.add_argument("--data", default=None, help="working directory (default: a temp dir)")
    parser.add_argument(
        "--risk-pairs",
        type=int,
        default=RISK_PAIRS_DEFAULT,
        help="pairs of single-transfer passes with and without risk rules (0: skip)",
    )
    parser.add_argument(
        "--risk-rules",
        default=str(DEFAULT_RISK_PATH),
        help="the rule set of the 'with' server ('none': an empty set, an A/A comparison)",
    )
    parser.add_argument(
        "--risk-accounts",
        type=int,
        default=RISK_ACCOUNTS_DEFAULT,
        help="funded accounts of each risk-phase server",
    )
    parser.add_argument(
        "--risk-seconds",
        type=float,
        default=None,
        help="timed load per risk pass (default: --seconds)",
    )
    parser.add_argument(
        "--risk-only", action="store_true", help="only the risk comparison (first server)"
    )
    parser.add_argument(
        "--workers",
        default="",
        help="comma-separated front-end counts (e.g. 1,2): single transfers through `tally"
        " serve --workers N` beside the one-process server, instead of the other phases",
    )
    parser.add_argument("--save", metavar="DIR", default=None)
    parser.add_argument("--json", action="store_true")


# --- processes ----------------------------------------------------------------------


def start_tally(
    work: Path,
    server: str,
    name: str,
    loop: str,
    transfers_max: int = 1 << 24,
    extra: tuple[str, ...] = (),
    *,
    providers: str,
) -> Server:
    """A fresh `tally serve`; `providers`: the run's provider simulator (the setup
    registers its customers at the counter, verified by the identity database)."""
    port = free_port()
    data = work / f"data-{name}"
    command = [
        sys.executable,
        "-m",
        "core",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data",
        str(data),
        "--server",
        server,
        "--dev",  # the example registry's public secrets: the load is signed with them
        "--providers",
        providers,
        "--loop",
        loop,
        "--access-log",
        str(work / f"access-{name}.jsonl"),
        "--accounts-max",
        "4096",
        "--scrypt-n",
        "1024",  # setup speed only: password hashing is not on the measured path
        "--transfers-max",
        str(transfers_max),
        # The binary batch phase posts over 1M transfers/s: 16M slots hold about 12 s of
        # it, so postings older than this are evicted to make room (a production server
        # keeps a day: --transfers-max sized for its peak rate times a day).
        "--retention-s",
        "5",
        # A server backs its tables once at start, as a production one does; without it
        # the first posting into each page of the 16M-slot log and index pays the OS for
        # zeroing it, which on a short run is most postings (a steady state has none).
        "--prefault",
        *extra,
    ]
    return Server(command, port, work / f"server-{name}.log", "/readyz")


def start_bare(work: Path, server: str, loop: str) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "channels.http.bench", "bare", server, str(port), loop]
    return Server(command, port, work / f"bare-{server}.log", "/")


# --- the bare ASGI app -----------------------------------------------------------------


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the body, parses it, answers a small JSON: what any JSON API must do at least."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    parsed = orjson.loads(body) if body else None
    answer = orjson.dumps({"ok": True, "fields": len(parsed) if isinstance(parsed, dict) else 0})
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


def serve_bare(server: str, port: int, loop: str) -> None:
    if server == "uvicorn":
        import uvicorn

        from channels.http.serve import uvicorn_config

        uvicorn.Server(uvicorn_config(bare_app, "127.0.0.1", port, loop)).run()
        return
    import anyio
    from hypercorn.asyncio import serve

    from channels.http.serve import hypercorn_config, wait_for_signal

    config = hypercorn_config("127.0.0.1", port)
    anyio.run(
        lambda: serve(bare_app, config, shutdown_trigger=wait_for_signal),  # type: ignore[arg-type]
        backend_options={"use_uvloop": loop != "asyncio"},
    )


# --- setup and pre-signed requests ---------------------------------------------------------


def secret_of(channel: str) -> tuple[str, str]:
    import tomllib

    with open(CHANNELS_FILE, "rb") as file:
        entry = tomllib.load(file)["channels"][channel]["secrets"][0]
    return entry["key_id"], entry["secret"]


def setup_accounts(
    url: str, count: int = ACCOUNTS, first_index: int = 0
) -> tuple[list[str], dict[str, str]]:
    """`count` funded Class I accounts, each a customer of its own, and an app-channel
    transaction token for each (customers numbered from `first_index`)."""
    from core.services.identity import resident_id_check_character

    accounts: list[str] = []
    tokens: dict[str, str] = {}
    with (
        TallyClient(url, "counter", *secret_of("counter"), actor=SETUP_ACTOR) as counter,
        TallyClient(url, "app", *secret_of("app")) as app,
    ):
        for index in range(first_index, first_index + count):
            born = datetime.date(1980, 1, 1) + datetime.timedelta(days=index // 1000)
            first = "110105" + born.strftime("%Y%m%d") + f"{index % 1000:03d}"
            id_number = first + resident_id_check_character(first)
            customer = counter.post(
                "/v1/customers",
                {
                    "name": "测试" + chr(0x4E00 + index % 20_000),
                    "id_number": id_number,
                    "mobile": f"139{index:08d}",
                },
            )
            assert customer.status_code == 201, customer.text
            opened = counter.post(
                f"/v1/customers/{customer.json()['customer_id']}/accounts",
                {"class": "class_i", "password": "135790"},
            )
            assert opened.status_code == 201, opened.text
            account = opened.json()["account_id"]
            funded = counter.post(
                f"/v1/accounts/{account}/cash-deposits",
                {"amount_minor": FUNDING_MINOR},
                idempotency_key=secrets.token_hex(16),
            )
            assert funded.status_code == 201, funded.text
            token = app.post(f"/v1/accounts/{account}/tokens", {"password": "135790"})
            assert token.status_code == 201, token.text
            accounts.append(account)
            tokens[account] = token.json()["token"]
    return accounts, tokens


def setup_accounts_parallel(
    url: str, count: int, threads: int = 4
) -> tuple[list[str], dict[str, str]]:
    """`setup_accounts` of `count` in `threads` client threads (the server hashes the
    passwords on its own threads: a serial client would leave it idle)."""
    from concurrent.futures import ThreadPoolExecutor

    share = -(-count // threads)
    ranges = [(first, min(share, count - first)) for first in range(0, count, share)]
    accounts: list[str] = []
    tokens: dict[str, str] = {}
    with ThreadPoolExecutor(len(ranges)) as pool:
        for part_accounts, part_tokens in pool.map(
            lambda span: setup_accounts(url, span[1], span[0]), ranges
        ):
            accounts += part_accounts
            tokens.update(part_tokens)
    return accounts, tokens


def write_single_requests(
    path: Path, count: int, accounts: list[str], tokens: dict[str, str], device: str = ""
) -> None:
    """`count` signed single transfers round the accounts; with a `device` tag, each names
    a phone and an IP, as an app sends them for the risk stage (`device_of`)."""
    key_id, secret = secret_of("app")
    signer = Signer("app", key_id, secret.encode())
    now = int(time.time())
    with open(path, "w") as file:
        for index in range(count):
            debit = accounts[index % len(accounts)]
            credit = accounts[(index * 7 + 1) % len(accounts)]
            if credit == debit:
                credit = accounts[(index + 1) % len(accounts)]
            fields: dict[str, Any] = {
                "debit_account_id": debit,
                "credit_account_id": credit,
                "amount_minor": 1 + index % 97,
            }
            if device:
                fields["device"] = device_of(debit, device, index // len(accounts))
            body = orjson.dumps(fields)
            key = secrets.token_hex(12)
            headers = signer.headers(
                "POST",
                "/v1/transfers",
                body,
                idempotency_key=key,
                timestamp=now,
                nonce=secrets.token_hex(12),
            )
            file.write(
                f"POST\t/v1/transfers\tapplication/json\t{headers['Authorization']}\t{key}\t"
                f"{tokens[debit]}\t{body.decode()}\n"
            )


DEVICE_REUSE = 25  # transfers per phone and IP in the risk phase: under every velocity rule


def device_of(account: str, tag: str, sent: int) -> dict[str, str]:
    """The phone and IP of the `sent`-th transfer from `account` in the requests tagged
    `tag`. The bench reuses a few accounts for many transfers, which real customers do
    not; so that this traffic looks like many customers' to the risk rules (a device or
    an IP sending more than 30 transfers an hour is challenged by the shipped rules),
    each phone (and its IP, in 10/8) sends `DEVICE_REUSE` of them and no more, in this
    file or any other (the tag is the file's)."""
    device_id = f"bench-{tag}-{sent // DEVICE_REUSE}-{account}"
    number = int.from_bytes(hashlib.blake2b(device_id.encode(), digest_size=3).digest(), "big")
    return {
        "id": device_id,
        "ip": f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}",
        "location": "CN-11",
    }


def batch_body(accounts: list[str], binary: bool) -> bytes:
    if binary:
        from ledger.reference import Transfer
        from ledger.types import TransferCode

        records = []
        for index in range(BATCH_SIZE):
            debit = int(accounts[index % len(accounts)])
            credit = int(accounts[(index + 1) % len(accounts)])
            records.append(
                Transfer(
                    0,
                    debit,
                    credit,
                    0,
                    1,
                    0,
                    0,
                    156,
                    TransferCode.TRANSFER,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ).pack()
            )
        return b"".join(records)
    items = [
        {
            "debit_account_id": accounts[index % len(accounts)],
            "credit_account_id": accounts[(index + 1) % len(accounts)],
            "amount_minor": 1,
            "code": "transfer",
        }
        for index in range(BATCH_SIZE)
    ]
    return orjson.dumps({"transfers": items})


def write_batch_requests(path: Path, count: int, body: bytes, content_type: str) -> None:
    key_id, secret = secret_of("bank")
    signer = Signer("bank", key_id, secret.encode())
    now = int(time.time())
    with open(path, "w") as file:
        for _ in range(count):
            key = secrets.token_hex(12)
            headers = signer.headers(
                "POST",
                "/v1/transfers/batch",
                body,
                idempotency_key=key,
                timestamp=now,
                nonce=secrets.token_hex(12),
                content_type=content_type,
            )
            file.write(
                f"POST\t/v1/transfers/batch\t{content_type}\t{headers['Authorization']}\t"
                f"{key}\t\t\n"
            )


# --- wrk ----------------------------------------------------------------------------------


def run_wrk(
    work: Path,
    url: str,
    requests_file: Path,
    seconds: float,
    connections: int,
    shared_body: Path | None = None,
    server_pid: int | None = None,
    cpu_groups: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """One wrk run; `cpu_groups`: processes whose CPU per request to report, by name
    (`{name}_cpu_us_per_request`), beside the server's (`server_pid`)."""
    script = work / "tally.lua"
    script.write_text(WRK_SCRIPT)
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(requests_file),
    ]
    if shared_body is not None:
        command.append(str(shared_body))
    server_cpu_before = cpu_seconds([server_pid]) if server_pid else 0.0
    groups = cpu_groups or {}
    groups_before = {name: cpu_seconds(pids) for name, pids in groups.items()}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    assert process.stdout is not None and process.stderr is not None
    output = process.stdout.read().decode()
    error = process.stderr.read().decode()
    server_cpu = (cpu_seconds([server_pid]) - server_cpu_before) if server_pid else 0.0
    groups_cpu = {name: cpu_seconds(pids) - groups_before[name] for name, pids in groups.items()}
    if status != 0 or "WRKJSON" not in output:
        raise RuntimeError(f"wrk failed ({status}): {output}\n{error}")
    line = next(line for line in output.splitlines() if line.startswith("WRKJSON "))
    result: dict[str, Any] = orjson.loads(line.removeprefix("WRKJSON "))
    duration_s = result["duration_us"] / 1e6
    result["requests_per_s"] = result["requests"] / duration_s
    result["client_cpu_percent"] = 100 * (usage.ru_utime + usage.ru_stime) / duration_s
    if server_pid:
        result["server_cpu_percent"] = 100 * server_cpu / duration_s
        result["server_cpu_us_per_request"] = 1e6 * server_cpu / max(1, result["requests"])
    for name, seconds in groups_cpu.items():
        result[f"{name}_cpu_us_per_request"] = 1e6 * seconds / max(1, result["requests"])
        result[f"{name}_cpu_percent"] = 100 * seconds / duration_s
    return result


def check_metrics(url: str) -> dict[str, int]:
    """Ledger results of the run, from /metrics: every transfer must have been ok."""
    text = httpx.get(url + "/metrics", timeout=10).text
    results: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("tally_ledger_results_total{"):
            name = line.split('result="', 1)[1].split('"', 1)[0]
            results[name] = int(float(line.rsplit(" ", 1)[1]))
    return results


def scrape(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """These samples of /metrics (unlabelled ones), 0 for those absent."""
    text = httpx.get(url + "/metrics", timeout=10).text
    found = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] = float(value)
    return found


# What tells how many requests share the core's fixed costs: a journal group's commit
# (its write and fdatasync) and, behind front-ends, a frame of the core link.
BATCHING_SAMPLES = ("tally_store_commit_seconds_count", "tally_link_requests_total",
                    "tally_link_frames_total")  # fmt: skip


def measure_server(
    work: Path, server: str, args: argparse.Namespace, report: dict[str, Any]
) -> None:
    suffix = "" if server == "hypercorn" else f"_{server}"
    seconds = args.seconds
    expected_rate = 6_000 if server == "hypercorn" else 20_000
    single_count = int(expected_rate * (seconds + 2) * 1.2)

    bare = start_bare(work, server, args.loop)
    try:
        # The bare app answers the very same signed requests (it ignores the headers).
        bare_file = work / f"bare-{server}.tsv"
        accounts_stub = ["1", "2"]
        write_single_requests(
            bare_file, min(single_count, 200_000), accounts_stub, {"1": "t", "2": "t"}
        )
        run_wrk(work, bare.url, bare_file, 2, args.connections)
        result = run_wrk(
            work, bare.url, bare_file, seconds, args.connections, server_pid=bare.process.pid
        )
        report[f"bare_{server}_requests_per_s"] = round(result["requests_per_s"])
        report[f"bare_{server}_latency_ms_p99"] = round(result["p99_us"] / 1000, 2)
        report[f"bare_{server}_server_cpu_us_per_request"] = round(
            result["server_cpu_us_per_request"], 1
        )
    finally:
        bare.stop()

    # Each phase gets a fresh server and data directory: a batch phase posts millions of
    # transfers, more than one ledger's log window holds before its retention day ends.
    tally = start_tally(work, server, f"{server}-single", args.loop, providers=args.providers)
    try:
        accounts, tokens = setup_accounts(tally.url)
        warm = work / f"warm-{server}.tsv"
        write_single_requests(warm, 20_000, accounts, tokens)
        run_wrk(work, tally.url, warm, 2, args.connections)
        single_file = work / f"single-{server}.tsv"
        write_single_requests(single_file, single_count, accounts, tokens)
        result = run_wrk(
            work, tally.url, single_file, seconds, args.connections, server_pid=tally.process.pid
        )
        report[f"single_transfer_requests_per_s{suffix}"] = round(result["requests_per_s"])
        report[f"latency_ms_p50{suffix}"] = round(result["p50_us"] / 1000, 2)
        report[f"latency_ms_p99{suffix}"] = round(result["p99_us"] / 1000, 2)
        report[f"single_non_2xx{suffix}"] = result["status_errors"]
        report[f"single_wrapped{suffix}"] = result["requests"] > single_count
        report[f"server_cpu_us_per_request{suffix}"] = round(result["server_cpu_us_per_request"], 1)
        report[f"client_cpu_percent{suffix}"] = round(result["client_cpu_percent"], 1)
        report[f"single_ledger_results{suffix}"] = check_metrics(tally.url)
    finally:
        tally.stop()
    for binary in (False, True):
        kind = "bin" if binary else "json"
        tally = start_tally(
            work, server, f"{server}-batch-{kind}", args.loop, providers=args.providers
        )
        try:
            accounts, _ = setup_accounts(tally.url)
            content_type = "application/octet-stream" if binary else "application/json"
            body_path = work / f"batch-{server}-{kind}.body"
            body_path.write_bytes(batch_body(accounts, binary))
            batch_file = work / f"batch-{server}-{kind}.tsv"
            write_batch_requests(
                batch_file, int((seconds + 2) * 150), body_path.read_bytes(), content_type
            )
            result = run_wrk(
                work,
                tally.url,
                batch_file,
                seconds,
                args.batch_connections,
                shared_body=body_path,
                server_pid=tally.process.pid,
            )
            key = "batch_binary_transfers_per_s" if binary else "batch_transfers_per_s"
            # Only answered batches count: a refused one (non-2xx) posted nothing.
            posted_requests = result["requests"] - result["status_errors"]
            report[key + suffix] = round(
                posted_requests / (result["duration_us"] / 1e6) * BATCH_SIZE
            )
            report[key.replace("transfers_per_s", "latency_ms_p99") + suffix] = round(
                result["p99_us"] / 1000, 1
            )
            report[key.replace("transfers_per_s", "non_2xx") + suffix] = result["status_errors"]
            report[key.replace("transfers_per_s", "ledger_results") + suffix] = check_metrics(
                tally.url
            )
        finally:
            tally.stop()
    bare_rate = report[f"bare_{server}_requests_per_s"]
    report[f"single_vs_bare_percent{suffix}"] = round(
        100 * report[f"single_transfer_requests_per_s{suffix}"] / bare_rate, 1
    )


def wait_front_ends(tally: Server, count: int, timeout_s: float = 30.0) -> list[int]:
    """The pids of the `count` front-ends of a `--workers` server, once each is connected
    to the core (every one of `count` requests to /readyz answered by the core)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = children_of(tally.process.pid)
        if len(pids) >= count:
            try:
                if all(
                    httpx.get(tally.url + "/readyz", timeout=2).status_code == 200
                    for _ in range(4 * count)
                ):
                    return pids
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"{count} front-ends not ready after {timeout_s} s")


def measure_workers(
    work: Path, server: str, counts: list[int], args: argparse.Namespace, report: dict[str, Any]
) -> None:
    """Signed single transfers through N front-end processes and one core
    (`tally serve --workers N`), beside the one-process server of the same run: per
    configuration the rate, p99 and the CPU per request of the front-ends and of the
    core, from /proc; the capacity of a 16-core machine by those costs (15 cores of
    front-ends, one core process). Beside them, how many requests shared the core's fixed
    costs (`requests_per_commit`: a journal group's write and fdatasync;
    `requests_per_link_frame`: a frame from a front-end), from /metrics around the run."""
    seconds = args.seconds
    single_count = int(30_000 * (seconds + 2))
    configurations = [0, *counts]  # 0: the one process, the baseline of this run
    for workers in configurations:
        name = f"{server}-workers{workers}"
        extra = ("--workers", str(workers)) if workers else ()
        tally = start_tally(work, server, name, args.loop, extra=extra, providers=args.providers)
        try:
            front_ends = wait_front_ends(tally, workers) if workers else []
            accounts, tokens = setup_accounts(tally.url)
            warm = work / f"warm-{name}.tsv"
            write_single_requests(warm, 20_000, accounts, tokens)
            run_wrk(work, tally.url, warm, 2, args.connections)
            single_file = work / f"single-{name}.tsv"
            write_single_requests(single_file, single_count, accounts, tokens)
            core_pid = tally.process.pid
            before = scrape(tally.url, BATCHING_SAMPLES)
            result = run_wrk(
                work, tally.url, single_file, seconds, args.connections,
                server_pid=core_pid, cpu_groups={"front_ends": front_ends} if workers else None,
            )  # fmt: skip
            after = scrape(tally.url, BATCHING_SAMPLES)
            moved = {name: after[name] - before[name] for name in BATCHING_SAMPLES}
            prefix = f"{server}_single_process" if not workers else f"{server}_workers{workers}"
            report[f"{prefix}_requests_per_commit"] = round(
                result["requests"] / max(1.0, moved["tally_store_commit_seconds_count"]), 2
            )
            if workers:
                report[f"{prefix}_requests_per_link_frame"] = round(
                    moved["tally_link_requests_total"] / max(1.0, moved["tally_link_frames_total"]),
                    2,
                )
            report[f"{prefix}_single_per_s"] = round(result["requests_per_s"])
            report[f"{prefix}_latency_ms_p99"] = round(result["p99_us"] / 1000, 2)
            report[f"{prefix}_non_2xx"] = result["status_errors"]
            report[f"{prefix}_wrapped"] = result["requests"] > single_count
            core_us = result["server_cpu_us_per_request"]
            if workers:
                front_us = result["front_ends_cpu_us_per_request"]
                report[f"{prefix}_front_end_cpu_us_per_request"] = round(front_us, 1)
                report[f"{prefix}_core_cpu_us_per_request"] = round(core_us, 1)
                report[f"{prefix}_projected_single_per_s_16_cores"] = round(
                    min(15e6 / front_us, 1e6 / core_us)
                )
            else:
                report[f"{prefix}_cpu_us_per_request"] = round(core_us, 1)
            report[f"{prefix}_client_cpu_percent"] = round(result["client_cpu_percent"], 1)
            report[f"{prefix}_ledger_results"] = check_metrics(tally.url)
        finally:
            tally.stop()
    single = report[f"{server}_single_process_single_per_s"]
    for workers in counts:
        report[f"{server}_workers{workers}_vs_single_process"] = round(
            report[f"{server}_workers{workers}_single_per_s"] / single, 2
        )


def risk_metrics(url: str) -> dict[str, int]:
    """The risk stage's counters in /metrics (`tally_risk_*` samples), by sample name."""
    text = httpx.get(url + "/metrics", timeout=10).text
    counters: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("tally_risk_"):
            name, _, value = line.rpartition(" ")
            counters[name] = int(float(value))
    return counters


def measure_risk(work: Path, server: str, args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Single transfers with and without the risk rules: two servers side by side, pairs
    of passes alternating which goes first (the machine's drift falls on both alike)."""
    suffix = "" if server == "hypercorn" else f"_{server}"
    seconds = args.risk_seconds if args.risk_seconds is not None else args.seconds
    expected_rate = 6_000 if server == "hypercorn" else 20_000
    count = int(expected_rate * (seconds + 2) * 1.2)
    empty = work / "risk-empty.toml"
    empty.write_text(EMPTY_RISK_RULES)
    rules = str(empty) if args.risk_rules == "none" else args.risk_rules
    sides = {"risk": rules, "no_risk": str(empty)}
    servers: dict[str, Server] = {}
    try:
        for side, path in sides.items():
            servers[side] = start_tally(
                work, server, f"{server}-{side}", args.loop,
                # Two servers at once: a log of 2M slots each (5 s retention) is plenty.
                transfers_max=1 << 21,
                # The passes and their setup outlast the default 300 s token lifetime.
                extra=("--risk-rules", path, "--token-ttl-s", "86400"),
                providers=args.providers,
            )  # fmt: skip
        setups = {
            side: setup_accounts_parallel(tally.url, args.risk_accounts)
            for side, tally in servers.items()
        }
        for side, tally in servers.items():
            warm = work / f"warm-{server}-{side}.tsv"
            write_single_requests(warm, 20_000, *setups[side], device=f"warm{side}")
            run_wrk(work, tally.url, warm, 2, args.connections)
        fired_before = risk_metrics(servers["risk"].url).get("tally_risk_fired_total", 0)
        rates: dict[str, list[int]] = {side: [] for side in sides}
        cpu_us: dict[str, list[float]] = {side: [] for side in sides}
        p99_ms: dict[str, list[float]] = {side: [] for side in sides}
        non_2xx = {side: 0 for side in sides}
        for pair in range(args.risk_pairs):
            order = ("risk", "no_risk") if pair % 2 == 0 else ("no_risk", "risk")
            for side in order:
                tally = servers[side]
                requests = work / f"risk-{server}-{side}-{pair}.tsv"
                write_single_requests(requests, count, *setups[side], device=f"p{pair}{side}")
                result = run_wrk(
                    work, tally.url, requests, seconds, args.connections,
                    server_pid=tally.process.pid,
                )  # fmt: skip
                requests.unlink()
                rates[side].append(round(result["requests_per_s"]))
                cpu_us[side].append(round(result["server_cpu_us_per_request"], 1))
                p99_ms[side].append(round(result["p99_us"] / 1000, 2))
                non_2xx[side] += result["status_errors"]
                if not args.json:
                    print(
                        f"  risk pair {pair + 1}/{args.risk_pairs} {side:8}"
                        f" {rates[side][-1]:>8,} requests/s",
                        file=sys.stderr,
                    )
        for side in sides:
            report[f"single_{side}_requests_per_s{suffix}"] = round(statistics.median(rates[side]))
            report[f"single_{side}_server_cpu_us_per_request{suffix}"] = round(
                statistics.median(cpu_us[side]), 1
            )
            report[f"single_{side}_latency_ms_p99{suffix}"] = statistics.median(p99_ms[side])
            report[f"single_{side}_non_2xx{suffix}"] = non_2xx[side]
            report[f"single_{side}_ledger_results{suffix}"] = check_metrics(servers[side].url)
            report.setdefault("passes_requests_per_s", {})[f"single_{side}{suffix}"] = rates[side]
        # Each pair's ratio (its two passes ran back to back, so the machine's drift falls
        # on both alike), and their median: the headline. The ratio of the two medians
        # and the server CPU per request added by the rules are beside it.
        pair_ratios = [
            round(with_rules / max(1, without), 3)
            for with_rules, without in zip(rates["risk"], rates["no_risk"], strict=True)
        ]
        report[f"risk_pair_ratios{suffix}"] = pair_ratios
        report[f"risk_rate_ratio{suffix}"] = round(statistics.median(pair_ratios), 3)
        report[f"risk_rate_ratio_of_medians{suffix}"] = round(
            report[f"single_risk_requests_per_s{suffix}"]
            / max(1, report[f"single_no_risk_requests_per_s{suffix}"]),
            3,
        )
        report[f"risk_server_cpu_us_added_per_request{suffix}"] = round(
            report[f"single_risk_server_cpu_us_per_request{suffix}"]
            - report[f"single_no_risk_server_cpu_us_per_request{suffix}"],
            1,
        )
        counters = risk_metrics(servers["risk"].url)
        report[f"risk_decisions{suffix}"] = counters
        # Postings of the timed passes a rule fired on (the setup's large cash deposits
        # are reported by the large_cash rule; the passes' traffic should trip none).
        report[f"risk_fired_in_passes{suffix}"] = (
            counters.get("tally_risk_fired_total", 0) - fired_before
        )
        report["risk_rules"] = "none" if args.risk_rules == "none" else args.risk_rules
        report["risk_accounts"] = args.risk_accounts
        report["risk_pairs"] = args.risk_pairs
        report["risk_seconds"] = seconds
    finally:
        for tally in servers.values():
            tally.stop()


def run(args: argparse.Namespace) -> int:
    try:
        worker_counts = [int(part) for part in args.workers.split(",") if part.strip()]
    except ValueError:
        worker_counts = [0]
    if any(not 1 <= count <= 64 for count in worker_counts):
        print("tally bench http: --workers takes counts of 1 to 64, e.g. 1,2", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print(
            "tally bench http: wrk is not installed; install it with `apt-get install -y wrk` "
            "(Debian's package) and run again",
            file=sys.stderr,
        )
        return 2
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    for name in servers:
        if name not in ("hypercorn", "uvicorn"):
            print(f"tally bench http: unknown server {name!r}", file=sys.stderr)
            return 2
    work = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="tally-bench-http-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "http_workers" if worker_counts else "http",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_description(),
        "command": "tally bench http "
        + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "http"] else []),
        "seconds": args.seconds,
        "connections": args.connections,
        "batch_connections": args.batch_connections,
        "batch_size": BATCH_SIZE,
        "client": "wrk -t1, pre-signed requests",
        "fsync": True,
        "uvicorn_loop": args.loop,
        "workers": args.workers,
    }
    # The setup registers its customers at the counter: the identity database check runs
    # on a provider simulator with no latency and no fraud (every customer verified).
    try:
        with running_simulator(BENCH_SIMULATOR_SEED) as providers:
            args.providers = providers
            for name in servers:
                if worker_counts:
                    if not args.json:
                        print(f"measuring {name} with front-ends {worker_counts} ...",
                              file=sys.stderr)  # fmt: skip
                    measure_workers(work, name, worker_counts, args, report)
                    continue
                if not args.json and not args.risk_only:
                    print(f"measuring {name} ...", file=sys.stderr)
                if not args.risk_only:
                    measure_server(work, name, args, report)
                if args.risk_pairs > 0 and (name == servers[0] or not args.risk_only):
                    if not args.json:
                        print(f"measuring {name} with and without risk rules ...", file=sys.stderr)
                    measure_risk(work, name, args, report)
    finally:
        if not args.data:
            shutil.rmtree(work, ignore_errors=True)
    if args.save:
        save_report(report, args.save)
    if not args.json:
        for name, value in report.items():
            print(f"{name:42} {value}")
    print(orjson.dumps(report).decode())
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "bare":
        serve_bare(sys.argv[2], int(sys.argv[3]), sys.argv[4])
