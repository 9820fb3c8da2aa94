"""`tally loadtest`: Locust against a fresh server, then the audit. What `make loadtest` runs.

    tally loadtest --seconds 30 --users 200 --out loadtest-out

1. starts the provider simulator (`tally providers serve`, loadtests/verification.py:
   each provider's latency, 1% of calls failing, the world's fraud) and `tally serve
   --providers URL` on a free loopback port with a fresh data directory (`OUT/data`),
   unless `--host URL` names a server that already runs (then `--providers URL` names
   the simulator it calls, if the new customers are to read their SMS codes);
2. creates the dataset through the API (`loadtests/dataset.py`: customers registered
   and verified at the counter, Class I and Class II accounts, opening balances) into
   `OUT/dataset.json`;
   With ISO 8583 in `--protocols` (the default: every protocol), the server is then
   restarted on the same data directory with `--iso8583`, a terminal registry of the
   run's own (ATMs and POS terminals paying the dataset's first merchant) and fresh
   random keys for them (`OUT/terminals.toml`, `OUT/iso8583-keys.toml`, and for the
   users `OUT/iso8583.json`); with ISO 20022 the partner-bank users post pacs.008
   files over HTTP (`PartnerBankUser`). Against `--host` only HTTP runs (the run
   does not know an external server's terminals or keys);
3. runs Locust headless in its own process (`loadtests/locustfile.py`,
   `--csv OUT/locust`, `--html OUT/locust.html`, its log in `OUT/locust.log`);
4. stops the server (SIGTERM: the journal is closed cleanly);
5. runs `tally audit` on the data directory (offline replay of the journal;
   online over the API with `--host`) and the server's log (no SMS code, no image in
   it), summary in `OUT/audit.json`;
6. writes `OUT/report.json` (users, requests/s, p50/p95/p99, failures,
   refusals, the audit's result, and `risk`: the fraudulent requests the risk rules
   stopped and the legitimate ones they challenged or held, from the server's answers:
   `--fraud-share`, loadtests/fraud.py; and the real-name verification's figures:
   workflows completed a second, each step's p99 with the provider's latency, refusals
   by reason, fraud attempted and passed: `--verify-weight`, loadtests/verification.py),
   `--save DIR` keeps it for `tally bench page`.

Exit status 0 only when Locust saw no failure (a 5xx, a timeout, a 429 after
the retries, an unexpected status, a fraudster verified: see the locustfile) and
the audit is clean; expected business refusals (insufficient funds, limits, a
fraudster refused, a provider's 503 retried) are counted in the report, not
failures. 2 when the run could not be made at all.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from core.bench.server import Server, free_port
from core.data import DEFAULT_CHANNELS_PATH, DEFAULT_RULES_PATH
from core.providers.sim import running_simulator
from core.reports import machine_description, save_report
from loadtests.fraud import FRAUD_SHARE_DEFAULT, format_summary, risk_summary
from loadtests.verification import (
    SIMULATOR_SEED,
    VERIFY_FRAUD_SHARE_DEFAULT,
    VERIFY_WEIGHT_DEFAULT,
    simulator_options,
    step_stats,
    verification_summary,
)
from loadtests.verification import format_summary as format_verification

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PROTOCOLS = ("http", "iso8583", "iso20022")
# The run's ISO 8583 terminals per Locust process (half ATMs, half POS terminals): the
# terminal users of a process share them round robin (each message takes the terminal's
# next STAN, so keys never repeat), processes never share one.
ISO8583_TERMINALS_PER_PROCESS = 16
# Locust runs from the directory holding the loadtests package: the checkout, or site-packages.
PACKAGES_ROOT = LOCUSTFILE.parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0, help="Locust run time")
    parser.add_argument("--users", type=int, default=200, help="peak concurrent users")
    parser.add_argument(
        "--spawn-rate", type=float, default=0.0, help="users started per second (default users/5)"
    )
    parser.add_argument("--out", default="loadtest-out", help="reports, outcomes, data directory")
    parser.add_argument(
        "--host", default="", help="an already running server (default: start a fresh one)"
    )
    parser.add_argument("--customers", type=int, default=200, help="customers in the dataset")
    parser.add_argument("--merchants", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: the time)")
    parser.add_argument("--server", choices=("hypercorn", "uvicorn"), default="hypercorn")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="serve through N front-end processes (tally serve --workers N); 0: one process",
    )
    parser.add_argument(
        "--shape", action="store_true", help="the diurnal campaign-day shape instead of flat -u"
    )
    parser.add_argument("--tags", default="", help="run only these Locust tags (comma-separated)")
    parser.add_argument("--processes", type=int, default=1, help="Locust worker processes")
    parser.add_argument("--setup-only", action="store_true", help="create the dataset and stop")
    parser.add_argument(
        "--fraud-share",
        type=_fraud_share,
        default=FRAUD_SHARE_DEFAULT,
        help="share of the users that are fraudsters: stolen devices and mules"
        f" (loadtests/fraud.py; default {FRAUD_SHARE_DEFAULT}, 0: none)",
    )
    parser.add_argument("--save", metavar="DIR", default=None, help="keep report.json here")
    parser.add_argument("--channels", default=str(DEFAULT_CHANNELS_PATH))
    parser.add_argument(
        "--protocols",
        type=_protocols,
        default=PROTOCOLS,
        help="the protocols the users speak, comma-separated (default: all of"
        f" {','.join(PROTOCOLS)}; http is always on)",
    )

    parser.add_argument(
        "--verify-weight",
        type=int,
        default=VERIFY_WEIGHT_DEFAULT,
        help="weight of the new app customers who walk the real-name verification"
        f" (VerifyingCustomerUser; default {VERIFY_WEIGHT_DEFAULT}, 0: none)",
    )
    parser.add_argument(
        "--verify-fraud-share",
        type=_fraud_share,
        default=VERIFY_FRAUD_SHARE_DEFAULT,
        help="share of the new customers who present another person's face, a spoof or"
        f" another person's card (default {VERIFY_FRAUD_SHARE_DEFAULT})",
    )
    parser.add_argument(
        "--providers",
        metavar="URL",
        default="",
        help="the provider simulator the --host server calls (its /sim/sms is the new"
        " customers' phone); default: start one and give it to the fresh server",
    )
    parser.add_argument("--rules", default=str(DEFAULT_RULES_PATH))


def _protocols(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(word.strip() for word in text.split(",") if word.strip()))
    unknown = [word for word in chosen if word not in PROTOCOLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown protocol {unknown[0]!r} (of {PROTOCOLS})")
    return tuple(dict.fromkeys(("http", *chosen)))


def _fraud_share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"{text} is not in 0..0.5")
    return value


def start_server(
    out: Path,
    server: str,
    args: argparse.Namespace,
    iso8583: list[str] | None = None,
    *,
    providers: str,
) -> Server:
    """A fresh server (a new data directory), or with `iso8583` (its serve arguments) the
    same data directory served again with the ISO 8583 listener."""
    data = out / "data"
    if data.exists() and iso8583 is None:
        shutil.rmtree(data)
    port = free_port()
    command = [
        sys.executable, "-m", "core", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--data", str(data),
        "--server", server, "--rules", args.rules, "--channels", args.channels,
        "--access-log", "off",
        "--accounts-max", str(1 << 16),
        "--transfers-max", str(1 << 22),
        "--token-ttl-s", "86400",  # tokens outlive the run; the users renew them anyway
        "--scrypt-n", "1024",  # the PIN checks are on the path; keep them cheap here
        "--dev",  # a throwaway server: public development secrets (against a real one: --host)
        "--providers", providers,  # the run's provider simulator
        *(["--workers", str(args.workers)] if args.workers else []),
        *(iso8583 or []),
    ]  # fmt: skip
    log = out / ("server-iso8583.log" if iso8583 else "server.log")
    return Server(command, port, log, "/readyz")


def write_iso8583_fleet(out: Path, dataset: dict[str, Any], processes: int) -> tuple[Path, int]:
    """The run's terminals (registry and key files for the server, OUT/iso8583.json for the
    users): `ISO8583_TERMINALS_PER_PROCESS` per Locust process, fresh random keys, the POS
    terminals paying the dataset's first merchant. Returns (the users' file, the port)."""
    from channels.iso8583 import keys
    from loadtests.iso8583_bench import key_entry, terminal_entry
    from loadtests.iso8583_terminal import TerminalProfile

    merchant = str(dataset["merchants"][0]["class_i"])
    port = free_port()
    registry = ["# `tally loadtest`: the run's terminals (half ATMs, half POS terminals).\n"]
    key_lines = ["# `tally loadtest`: the run's terminal keys (random for this run).\n"]
    terminals = []
    for index in range(ISO8583_TERMINALS_PER_PROCESS * max(1, processes)):
        kind = "atm" if index % 2 == 0 else "pos"
        profile = TerminalProfile(
            f"{'LTA' if kind == 'atm' else 'LTP'}{index:05d}", kind,
            keys.generate_key(), keys.generate_key(),
        )  # fmt: skip
        registry.append(terminal_entry(profile, merchant))
        key_lines.append(key_entry(profile))
        terminals.append(
            {"terminal_id": profile.terminal_id, "kind": kind, "channel": kind,
             "pin_key": profile.pin_key.hex(), "mac_key": profile.mac_key.hex()}
        )  # fmt: skip
    (out / "terminals.toml").write_text("\n".join(registry))
    keys_file = out / "iso8583-keys.toml"
    keys_file.write_text("\n".join(key_lines))
    keys_file.chmod(0o600)
    config = {
        "address": f"127.0.0.1:{port}",
        "merchant_account_id": merchant,
        "processes": max(1, processes),
        "terminals": terminals,
    }
    path = out / "iso8583.json"
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    path.chmod(0o600)  # the terminals' keys
    return path, port


def iso8583_serve_arguments(out: Path, port: int) -> list[str]:
    return [
        "--iso8583", f"127.0.0.1:{port}",
        "--terminals", str(out / "terminals.toml"),
        "--iso8583-keys", str(out / "iso8583-keys.toml"),
    ]  # fmt: skip


def wait_for_listener(port: int, server: Server, timeout_s: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError("the server exited before its ISO 8583 listener was up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the ISO 8583 listener is not up in {timeout_s} s")


def locust_command(url: str, out: Path, args: argparse.Namespace) -> list[str]:
    spawn_rate = args.spawn_rate or max(1.0, args.users / 5)
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
        "--headless", "--host", url,
        "-u", str(args.users), "-r", str(spawn_rate), "-t", f"{max(1, round(args.seconds))}s",
        "--stop-timeout", "15",
        "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
        "--only-summary", "--loglevel", "WARNING",
        "--logfile", str(out / "locust.log"),
    ]  # fmt: skip
    if args.tags:
        command += ["--tags", *[tag.strip() for tag in args.tags.split(",") if tag.strip()]]
    if args.processes > 1:
        command += ["--processes", str(args.processes)]
    return command


def read_stats(out: Path) -> dict[str, Any]:
    """The Aggregated row of Locust's stats CSV, and each failing request's count."""
    aggregated: dict[str, str] = {}
    with open(out / "locust_stats.csv", newline="") as file:
        for row in csv.DictReader(file):
            if row["Name"] == "Aggregated":
                aggregated = row
    failures: dict[str, int] = {}
    failures_path = out / "locust_failures.csv"
    if failures_path.exists():
        with open(failures_path, newline="") as file:
            for row in csv.DictReader(file):
                failures[f"{row['Method']} {row['Name']}: {row['Error']}"] = int(row["Occurrences"])
    if not aggregated:
        return {"requests": 0, "failures": 0, "failures_by_error": failures}

    def number(name: str) -> float:
        value = aggregated.get(name, "") or "0"
        return float(value) if value != "N/A" else 0.0

    return {
        "requests": int(number("Request Count")),
        "failures": int(number("Failure Count")),
        "requests_per_s": round(number("Requests/s"), 1),
        "latency_ms_p50": number("50%"),
        "latency_ms_p95": number("95%"),
        "latency_ms_p99": number("99%"),
        "latency_ms_max": round(number("Max Response Time"), 1),
        "failures_by_error": failures,
    }


def read_outcome_lines(out: Path) -> list[dict[str, Any]]:
    """The outcome lines the Locust users wrote (not the setup's)."""
    from loadtests.audit import read_outcomes

    return read_outcomes([str(path) for path in out.glob("outcomes-*.jsonl")
                          if path.name != "outcomes-setup.jsonl"])  # fmt: skip


def provider_calls(url: str) -> dict[str, Any]:
    """The simulator's counters (`/sim/stats`: calls, drawn failures, SMS delivered and
    lost), {} if it does not answer (an external provider service)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/sim/stats", timeout=10) as answer:
            stats: dict[str, Any] = orjson.loads(answer.read())
    except (OSError, ValueError):
        return {}
    providers: dict[str, Any] = stats.get("providers", {})
    return providers


def _described(options: dict[str, Any]) -> str:
    latency = ", ".join(f"{name} {ms} ms" for name, ms in options["latency_ms"].items())
    return (
        f"{latency}, jitter {options['jitter_ms']} ms; failures {options['failure_rate']:.0%},"
        f" photo mismatch {options['photo_mismatch_rate']:.0%}, card mismatch"
        f" {options['card_mismatch_rate']:.0%}, SMS lost {options['sms_loss_rate']:.0%}"
    )


def outcome_counts(out: Path) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    retried = 0
    by_protocol: dict[str, Counter[str]] = {}
    lines = [line for line in read_outcome_lines(out) if line["outcome"] != "verification"]
    told = {(line["channel"], line["key"]) for line in lines
            if "key" in line and line["outcome"] != "sent"}  # fmt: skip
    unanswered = sum(
        1 for line in lines
        if line["outcome"] == "sent" and (line["channel"], line["key"]) not in told
    )  # fmt: skip
    for line in lines:
        if line["outcome"] == "sent":
            continue  # an ISO user's intent, written before sending (audit.py)
        counts[line["outcome"]] += 1
        if "protocol" in line:
            by_protocol.setdefault(line["protocol"], Counter())[line["outcome"]] += 1
        if line["outcome"] == "refused":
            refusals[line["slug"]] += 1
        if line.get("attempts", 1) > 1:
            retried += 1
    return {
        "money_acknowledged": counts["acknowledged"],
        "money_refused": counts["refused"],
        "money_unknown": counts["unknown"],
        "money_failed": counts["failed"],
        "money_held": counts["held"],  # ISO 20022 credits answered PDNG
        # ISO messages sent whose answer the user never read (stopped at the run's end).
        "money_unanswered": unanswered,
        "accounts_opened": counts["opened"],
        "money_retried": retried,
        "refusals": dict(refusals.most_common()),
        # The ISO 8583 terminals' money messages and the ISO 20022 partners' credits.
        "money_by_protocol": {name: dict(sorted(c.items())) for name, c in by_protocol.items()},
        "risk": risk_summary([line for line in lines if line["outcome"] != "sent"]),
    }


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("outcomes-*.jsonl"), *out.glob("locust*")]:
        old.unlink()
    from loadtests.dataset import create_dataset, write_dataset, write_setup_outcomes

    server: Server | None = None
    simulator = contextlib.ExitStack()
    report: dict[str, Any] = {
        "benchmark": "locust",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_description(),
        "command": "tally loadtest "
        + " ".join(sys.argv[2:] if sys.argv[1:2] == ["loadtest"] else []),
        "users": args.users,
        "seconds": args.seconds,
        "shape": "diurnal campaign day" if args.shape else "flat",
        "fraud_share": args.fraud_share,
        "server": "external " + args.host
        if args.host
        else f"tally serve ({args.server})"
        + (f" --workers {args.workers}" if args.workers and not args.host else ""),
        "protocols": ["http"] if args.host else list(args.protocols),
        "verify_weight": args.verify_weight,
        "verify_fraud_share": args.verify_fraud_share,
    }
    providers = args.providers.rstrip("/")
    try:
        if not providers and not args.host:
            options = simulator_options()
            print(f"starting the provider simulator ({_described(options)}) ...")
            providers = simulator.enter_context(running_simulator(SIMULATOR_SEED, **options))
        report["providers"] = "simulator " + _described(simulator_options())
        if args.host:
            url = args.host.rstrip("/")
            report["providers"] = f"external {providers}" if providers else "unknown"
        else:
            print(f"starting tally serve ({args.server}) with a fresh {out / 'data'} ...")
            server = start_server(out, args.server, args, providers=providers)
            url = server.url
        seed = args.seed or int(time.time()) % 100_000
        print(f"creating the dataset on {url}: {args.customers} customers (seed {seed}) ...")
        started = time.monotonic()
        dataset = create_dataset(
            url,
            customers=args.customers,
            merchants=args.merchants,
            seed=seed,
            channels_file=args.channels,
        )
        write_dataset(dataset, out / "dataset.json")
        write_setup_outcomes(dataset, out)
        report["setup_s"] = round(time.monotonic() - started, 1)
        report["customers"] = len(dataset["customers"])
        # Customers the identity database did not confirm at the counter (or taken IDs).
        report["customers_skipped"] = sum(dataset.get("skipped", {}).values())
        if args.setup_only:
            print(f"dataset in {out / 'dataset.json'}")
            return 0
        iso_env: dict[str, str] = {}
        if not args.host and "iso8583" in args.protocols:
            config, iso_port = write_iso8583_fleet(out, dataset, args.processes)
            print(f"restarting tally serve with --iso8583 on port {iso_port} ...")
            assert server is not None
            server.stop()
            server = None
            server = start_server(
                out, args.server, args, iso8583_serve_arguments(out, iso_port), providers=providers
            )
            wait_for_listener(iso_port, server)
            url = server.url
            iso_env["TALLY_LOADTEST_ISO8583"] = str(config)
        if not args.host and "iso20022" in args.protocols:
            iso_env["TALLY_LOADTEST_ISO20022"] = "1"
        env = {
            name: value
            for name, value in os.environ.items()
            if name != "PYTHONOPTIMIZE" and not name.startswith("TALLY_LOADTEST_ISO")
        }
        env.update(iso_env)
        env.update(
            TALLY_LOADTEST_DATASET=str(out / "dataset.json"),
            TALLY_LOADTEST_OUT=str(out),
            TALLY_CHANNELS=args.channels,
            TALLY_LOADTEST_SECONDS=str(args.seconds),
            TALLY_LOADTEST_USERS=str(args.users),
            TALLY_LOADTEST_FRAUD_SHARE=str(args.fraud_share),
            TALLY_LOADTEST_PROVIDERS=providers,  # "": no new customers (no phone to read)
            TALLY_LOADTEST_VERIFY_WEIGHT=str(args.verify_weight),
            TALLY_LOADTEST_VERIFY_FRAUD_SHARE=str(args.verify_fraud_share),
            PYTHONWARNINGS="ignore",  # gevent's monkey-patching warnings belong in no report
        )
        if args.shape:
            env["TALLY_LOADTEST_SHAPE"] = "diurnal"
        command = locust_command(url, out, args)
        print(f"running locust: {args.users} users, {args.seconds:g} s ...")
        with open(out / "locust.stdout", "wb") as log:
            locust = subprocess.run(
                command,
                cwd=PACKAGES_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=args.seconds + 300,
                check=False,
            )
        report["locust_exit_status"] = locust.returncode
        if providers:
            report["provider_calls"] = provider_calls(providers)
    finally:
        if server is not None:
            server.stop()
        simulator.close()
    if not (out / "locust_stats.csv").exists():
        print(
            f"tally loadtest: Locust wrote no stats; see {out / 'locust.stdout'}", file=sys.stderr
        )
        print((out / "locust.stdout").read_text()[-3000:], file=sys.stderr)
        return 2
    report.update(read_stats(out))
    report.update(outcome_counts(out))
    lines = read_outcome_lines(out)
    report.update(verification_summary(lines, step_stats(out / "locust_stats.csv"), args.seconds))

    from loadtests.audit import main_for_loadtest

    audit_source = url if args.host else str(out / "data")
    summary = main_for_loadtest(
        audit_source,
        out,
        channels=args.channels,
        rules=args.rules,
        exclusive=not args.host,
        server_logs=[] if args.host else sorted(out.glob("server*.log")),
    )
    report["audit_clean"] = summary["clean"]
    report["audit_errors"] = summary["errors_total"]
    report["audit_acknowledged_found"] = summary["counts"].get("acknowledged_found", 0)
    report["audit_ledger_transfers_ok"] = summary["counts"].get("ledger_transfers_ok", 0)
    report["audit_source"] = "journal replay" if not args.host else "HTTP API"
    counts = summary["counts"]
    report["audit_class_ii_holders_verified"] = counts.get("class_ii_holders_verified", 0)
    report["audit_bindings_verified"] = counts.get("opening_bindings_verified", 0)
    report["audit_sms_codes_not_leaked"] = counts.get("sms_codes_not_leaked", 0)
    (out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.save:
        save_report(report, args.save)
    print_report(report, out)
    ok = report["failures"] == 0 and report["money_unknown"] == 0 and summary["clean"]
    if report["verification_fraud_passed"]:
        ok = False  # a Locust failure already; said here too
        print("tally loadtest: a fraudster passed the verification", file=sys.stderr)
    if report["requests"] == 0:
        ok = False
        print("tally loadtest: Locust made no request", file=sys.stderr)
    return 0 if ok else 1


def print_report(report: dict[str, Any], out: Path) -> None:
    print(
        f"locust     {report['requests']:,} requests, {report.get('requests_per_s', 0):,} req/s,"
        f" p50/p95/p99 {report.get('latency_ms_p50', 0):g}/{report.get('latency_ms_p95', 0):g}/"
        f"{report.get('latency_ms_p99', 0):g} ms, failures {report['failures']:,}"
    )
    for name, count in report["failures_by_error"].items():
        print(f"  failure  {count:,} x {name}")
    print(
        f"money      acknowledged {report['money_acknowledged']:,}, refused"
        f" {report['money_refused']:,}, unknown {report['money_unknown']:,}, retried"
        f" {report['money_retried']:,}, accounts opened {report['accounts_opened']:,}"
    )
    for slug, count in report["refusals"].items():
        print(f"  refused  {count:,} x {slug}")
    for protocol, counts in report.get("money_by_protocol", {}).items():
        described = ", ".join(f"{name} {count:,}" for name, count in counts.items())
        print(f"  {protocol:8} {described}")
    if report.get("money_unanswered"):
        unanswered = report["money_unanswered"]
        print(f"  unanswered {unanswered:,} (sent; the user stopped before its answer)")
    if report.get("risk"):
        print(format_summary(report["risk"]))
    print(format_verification(report))
    verdict = "clean" if report["audit_clean"] else "FAILED"
    print(f"audit      {verdict} ({report['audit_errors']} errors)")
    print(f"reports    {out}/locust.html, locust_stats.csv, audit.json, report.json")
