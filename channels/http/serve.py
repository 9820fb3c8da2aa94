"""`tally serve`: the HTTP API on hypercorn over the embedded journal or PostgreSQL.

`--data DIR` is the store `journal:DIR`. With `--store postgresql://...` (or
`TALLY_PG_DSN`) the ledger and the customer state (customers, accounts,
passwords, tokens, nonces) live in PostgreSQL instead (core/pg_store.py:
asyncpg, so asyncio only), and fail over with it; the data directory is
then only read for a legacy `channels-state.jsonl` to import.

The process binds its socket at once and answers /healthz; /readyz and every
/v1 route say 503 until the store is opened, the ledger and the customer
state recovered and the engine started (see core/services/lifecycle.py).
SIGINT or SIGTERM stops it: the server stops accepting, the engine finishes
and answers the batch it was making durable, staged customer state (nonce
batches, deletions) is written, the store is closed. The process runs under
umask 077: the data directory is 0700 and its files 0600.

It refuses to start with development secrets: channel secrets that are
public (those of the example registry, examples/channels.toml, or any marked
DEVELOPMENT-ONLY) or no `--secrets FILE` (the server's own keys, see
core/services/server_secrets.py), unless `--dev` says this is a development
server, which is then logged loudly. `--certfile/--keyfile` serve HTTPS.
`--iso8583 HOST:PORT` also listens for ATMs and POS terminals (ISO 8583 over TCP,
channels/iso8583/server.py) in the same process, with the same bank and lifecycle:
the terminal registry (`--terminals`) and key file (`--iso8583-keys`) are checked
before the start, and the shipped development keys need `--dev`. With `--workers N`
the front-ends listen for the terminals instead (each runs the adapter and calls this
process's services over the core link: channels/iso8583/services.py).

Real-name verification calls five providers (identity database, OCR, liveness, card
issuer, SMS gateway; core/providers): `--providers URL` puts all five under one base
URL (a gateway, or the simulator), `--providers-config FILE` names each with its
credentials, timeout and retries. `--providers-simulator` (with `--dev` only: what
`make run` starts) runs the provider simulator in a subprocess for the server's life,
and the log says the identity checks are simulated. With none of them the server still
starts, with a warning: a step that needs a provider answers 503 and new customers
stay pending. The providers' client is closed with the bank at shutdown.
Before the app sees a request both servers bound its head (`--header-size-max`
bytes, 431; hypercorn closes a head not complete within the keep-alive
timeout, uvicorn within `--read-timeout-s`, 408); the app bounds the body
(channels/http/app.py).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import ssl
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

import anyio
import orjson

from channels.http.app import (
    AUTH_FAILURES_BURST,
    AUTH_FAILURES_PER_S,
    PREAUTH_BODY_SIZE_MAX,
    READ_TIMEOUT_S,
    App,
    access_log_stream,
)
from channels.http.metrics import Iso8583Collector, LinkCollector
from channels.iso8583.keys import DEFAULT_KEYS_PATH, SoftwareKeyStore, load_keys
from channels.iso8583.server import AppWithIso8583, parse_address
from channels.iso8583.services import BankServices
from channels.iso8583.terminals import (
    DEFAULT_TERMINALS_PATH,
    Terminals,
    load_terminals,
)
from channels.link import AppWithLink, link_server
from channels.registry import Registry, RegistryError, load_registry
from channels.workers import WORKERS_MAX, Workers, listening_socket
from core.data import (
    DEFAULT_CHANNELS_PATH,
    DEFAULT_DEPOSITS_PATH,
    DEFAULT_LPR_PATH,
    DEFAULT_OPERATORS_PATH,
    DEFAULT_RISK_PATH,
    DEFAULT_RULES_PATH,
)
from core.dsn import redact_dsn
from core.errors import TallyError
from core.journal import SEGMENT_SIZE_DEFAULT
from core.link.address import (
    LinkAddress,
    TlsFiles,
    parse_link_address,
    read_secret,
    server_context,
)
from core.link.calls import CallTable
from core.link.server import LinkLimits
from core.providers.client import HttpProviders
from core.providers.config import ProvidersConfig
from core.providers.population import SIM_TOKEN
from core.providers.types import PROVIDERS
from core.services.bank import Bank
from core.services.lifecycle import GC_THRESHOLDS, Settings
from core.services.operators import Operators, load_operators
from core.services.server_secrets import DEVELOPMENT, ServerSecrets, load_server_secrets
from limits.deposits import load_catalog
from limits.errors import RuleFileError
from limits.lpr import load_lpr
from limits.risk import load_risk_rules
from limits.rules import RuleSet, load_rules

SERVERS = ("hypercorn", "uvicorn")
LOOPS = ("uvloop", "asyncio")
DSN_ENV = "TALLY_PG_DSN"
HEADER_SIZE_MAX = 16 * 1024  # request line and headers, bytes (hypercorn's h11 default)
KEEP_ALIVE_TIMEOUT_S = 75  # above the usual load balancer's idle timeout (60 s)
DEVELOPMENT_MARK = "DEVELOPMENT-ONLY"
# The registries whose secrets are public: the packaged one and the example (identical).
PUBLIC_REGISTRIES = (DEFAULT_CHANNELS_PATH, Path(__file__).parents[2] / "examples/channels.toml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    parser.add_argument(
        "--data",
        default=".tally-data",
        help="data directory: the journal (ledger and customer state); with --store,"
        " only read for a legacy channels-state.jsonl to import",
    )
    parser.add_argument(
        "--store",
        default=os.environ.get(DSN_ENV) or None,
        metavar="postgresql://...",
        help=f"keep the ledger and the customer state in PostgreSQL instead of the journal"
        f" (default: ${DSN_ENV});"
        " asyncio only",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default="hypercorn",
        help="ASGI server (uvicorn only with --backend asyncio)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=None,
        help="the asyncio event loop (uvicorn, and hypercorn with --backend asyncio): uvloop"
        " (libuv, the default) or the standard library's",
    )
    parser.add_argument("--rules", default=str(DEFAULT_RULES_PATH), help="limit rule file")
    parser.add_argument("--channels", default=str(DEFAULT_CHANNELS_PATH), help="channel registry")
    parser.add_argument(
        "--deposits", default=str(DEFAULT_DEPOSITS_PATH), help="deposit catalog (rates, terms)"
    )
    parser.add_argument(
        "--risk-rules",
        default=str(DEFAULT_RISK_PATH),
        help="risk rule set a store without an approved version starts from (docs/risk.md)",
    )
    parser.add_argument(
        "--lpr",
        default=str(DEFAULT_LPR_PATH),
        help="loan prime rate table a store without an approved version starts from",
    )
    parser.add_argument(
        "--operators",
        default=str(DEFAULT_OPERATORS_PATH),
        help='operator registry: who signs the /v1/admin/ routes (channel="op:NAME"), roles',
    )
    parser.add_argument(
        "--approval-expiry-s",
        type=int,
        default=3 * 86_400,
        help="a pending approval request expires (kept, state expired) after this long",
    )
    parser.add_argument(
        "--reversal-approval-minor",
        type=int,
        default=5_000_000,
        help="a counter reversal above this many fen needs an approved request",
    )
    parser.add_argument(
        "--dayend-automatic",
        action="store_true",
        help="run the day-end by itself once each business day has ended (else tally dayend)",
    )
    parser.add_argument("--access-log", default="-", help="'-' for stderr, 'off', or a file path")
    parser.add_argument("--accounts-max", type=int, default=1 << 20, help="account capacity")
    parser.add_argument(
        "--transfers-max",
        type=int,
        default=1 << 22,
        help="transfer log capacity (transfers held in memory; 128 bytes each plus index)",
    )
    parser.add_argument(
        "--retention-s",
        type=float,
        default=86_400.0,
        help="how long a transfer stays in the log, so that a retry of its Idempotency-Key "
        "is answered from it, before it may be evicted for room; a log that fills within "
        "this time answers 503 (size --transfers-max for the peak rate times this)",
    )
    parser.add_argument(
        "--failed-retention-s",
        type=float,
        default=900.0,
        help="how long a failed transfer is remembered, so that a retry of its "
        "Idempotency-Key gets the first refusal again (sooner forgotten if the failure "
        "ring, a quarter of --transfers-max, needs the room); it never holds the log's",
    )
    parser.add_argument(
        "--prefault",
        action="store_true",
        help="back the whole transfer log and its index with memory at start (slower start, "
        "more resident memory), so that no posting pays for the OS zeroing a fresh page",
    )
    parser.add_argument("--queue-size", type=int, default=65536, help="engine queue (then 503)")
    parser.add_argument("--linger-ms", type=float, default=1.0, help="engine batch linger")
    parser.add_argument("--token-ttl-s", type=int, default=300, help="transaction token lifetime")
    parser.add_argument(
        "--session-ttl-s",
        type=int,
        default=900,
        help="customer session lifetime (reads at wechat and app channels)",
    )
    parser.add_argument(
        "--password-failures-max",
        type=int,
        default=5,
        help="wrong transaction passwords in a row before the lock (lifted only by a"
        " supervisor's reset at a counter)",
    )
    parser.add_argument("--scrypt-n", type=int, default=1 << 14, help="scrypt cost (power of 2)")
    parser.add_argument("--scrypt-r", type=int, default=8, help="scrypt block size")
    parser.add_argument("--scrypt-p", type=int, default=1, help="scrypt parallelism")
    parser.add_argument(
        "--password-hash-threads",
        type=int,
        default=0,
        help="threads that hash transaction passwords, apart from the engine's"
        " (0: half the CPUs, at least one)",
    )
    parser.add_argument(
        "--password-hash-queue",
        type=int,
        default=64,
        help="password checks that may wait for those threads; beyond, 503 + Retry-After",
    )
    parser.add_argument(
        "--body-size-max",
        type=int,
        default=0,
        help="request body cap in bytes (default: the largest channel cap)",
    )
    parser.add_argument(
        "--secrets",
        default=None,
        metavar="FILE",
        help="the server's own keys (transfer-id key, password pepper; TOML, mode 0600, outside"
        " the data directory; see core/services/server_secrets.py); without it only --dev"
        " starts, with public development keys",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="a development server: allow the public development secrets (the example"
        " channel registry, no --secrets), with a warning; never in production",
    )
    parser.add_argument(
        "--iso8583",
        default=None,
        metavar="HOST:PORT",
        help="also serve ATMs and POS terminals: ISO 8583 over TCP on HOST:PORT, 2-byte"
        " length framing ([::1]:PORT for IPv6; docs/iso8583.md)",
    )
    parser.add_argument(
        "--terminals",
        default=str(DEFAULT_TERMINALS_PATH),
        help="terminal registry of --iso8583: terminal ids, their channel, kind, merchant"
        " account and key ids",
    )
    parser.add_argument(
        "--iso8583-keys",
        default=str(DEFAULT_KEYS_PATH),
        metavar="FILE",
        help="the terminals' PIN and MAC keys (mode 0600; the shipped file holds public"
        " development keys, accepted only with --dev)",
    )
    parser.add_argument("--certfile", default=None, help="TLS certificate chain (PEM): HTTPS")
    parser.add_argument("--keyfile", default=None, help="TLS private key (PEM) of --certfile")
    parser.add_argument(
        "--header-size-max",
        type=int,
        default=HEADER_SIZE_MAX,
        help="request line and headers, bytes (over it: 431)",
    )
    parser.add_argument(
        "--read-timeout-s",
        type=float,
        default=READ_TIMEOUT_S,
        help="a request's body must arrive within this after its head (else 408); under"
        " uvicorn its head too (hypercorn: within the keep-alive timeout)",
    )
    parser.add_argument(
        "--keep-alive-timeout-s",
        type=int,
        default=KEEP_ALIVE_TIMEOUT_S,
        help="an idle connection (and under hypercorn an unfinished head) is closed after this",
    )
    parser.add_argument(
        "--preauth-body-size-max",
        type=int,
        default=PREAUTH_BODY_SIZE_MAX,
        help="body bytes read before the Authorization header names a channel, a key id and a"
        " current timestamp (then the channel's cap)",
    )
    parser.add_argument(
        "--auth-failures-burst",
        type=int,
        default=AUTH_FAILURES_BURST,
        help="failed authentications in a row from one client address before 429",
    )
    parser.add_argument(
        "--auth-failures-per-s",
        type=float,
        default=AUTH_FAILURES_PER_S,
        help="failed authentications forgiven per second and address",
    )
    parser.add_argument(
        "--journal-segment-kb",
        type=int,
        default=SEGMENT_SIZE_DEFAULT >> 10,
        help="journal segment size in KiB, a multiple of 4, preallocated (a full disk refuses"
        " the next one: the server then answers 503 until there is room, and recovers by"
        " itself)",
    )
    add_providers_arguments(parser)
    parser.add_argument(
        "--console-reports",
        default=None,
        metavar="DIR",
        help="a directory of reports (the failover simulator's, the drills': *.json, *.html)"
        " the operations console lists and serves read-only at /console/reports",
    )
    parser.add_argument(
        "--snapshot-every-entries",
        type=int,
        default=0,
        help="fork a ledger snapshot every N journal entries (0: never)",
    )
    parser.add_argument(
        "--journal-append-on-loop-ms",
        type=float,
        default=10.0,
        help="make a small group durable on the event loop unless two appends in a row there"
        " took longer than this in the last 10 s (a slow disk: a worker thread); 0: always in"
        " a worker thread (core/journal_store.py)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="N front-end processes accept HTTP and forward to this process over the core link"
        " (channels/workers.py); 0 (the default): this one process serves everything",
    )
    parser.add_argument(
        "--link",
        default=None,
        metavar="ADDRESS",
        help="also serve front-end processes over the core link (core/link): unix:PATH, or"
        " tls:HOST:PORT with --link-cert, --link-key and --link-ca (mutual TLS)",
    )
    parser.add_argument(
        "--link-secret-file",
        default=None,
        help="the link's shared secret (at least 16 ASCII characters) every front-end shows",
    )
    parser.add_argument("--link-cert", default=None, help="the core's certificate chain (PEM)")
    parser.add_argument("--link-key", default=None, help="the private key of --link-cert")
    parser.add_argument("--link-ca", default=None, help="the CA that signs front-ends (PEM)")
    parser.add_argument(
        "--link-window",
        type=int,
        default=4096,
        help="commands running at once per front-end connection (more: refused at once)",
    )
    parser.add_argument(
        "--link-connections-max",
        type=int,
        default=256,
        help="front-end connections open at once (more: closed at once, logged; they retry)",
    )


def add_providers_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--providers",
        default=None,
        metavar="URL",
        help="the verification providers (identity database, OCR, liveness, card issuer, SMS)"
        " all under one base URL: URL/identity, URL/ocr, ... (docs/providers.md)",
    )
    parser.add_argument(
        "--providers-token",
        default=None,
        metavar="TOKEN",
        help="the bearer token of --providers (default: the simulator's public token);"
        " env:NAME reads it from the environment",
    )
    parser.add_argument(
        "--providers-config",
        default=None,
        metavar="FILE",
        help="the providers one by one: URL, credentials, timeout and retries of each (TOML,"
        " core/providers/config.py)",
    )
    parser.add_argument(
        "--providers-simulator",
        action="store_true",
        help="start the provider simulator (tally providers serve) in a subprocess and use"
        " it: simulated identity checks, development only (--dev; what make run does)",
    )


def providers_config(args: argparse.Namespace) -> ProvidersConfig | None:
    """The providers the arguments name (None: none; --providers-simulator is resolved by
    `run`, which starts the simulator first). TallyError for arguments that conflict."""
    given = [
        option
        for option, value in (
            ("--providers", args.providers),
            ("--providers-config", args.providers_config),
            ("--providers-simulator", args.providers_simulator or None),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise TallyError(f"{' and '.join(given)} exclude each other: give one")
    if args.providers_token is not None and args.providers is None:
        raise TallyError("--providers-token goes with --providers")
    if args.providers_simulator and not args.dev:
        raise TallyError("--providers-simulator simulates identity checks: only with --dev")
    if args.providers_config is not None:
        return ProvidersConfig.from_file(args.providers_config)
    if args.providers is None:
        return None
    if not args.providers.startswith(("http://", "https://")):
        raise TallyError(f"--providers must be an http:// or https:// URL, not {args.providers!r}")
    token = args.providers_token
    if token is None:
        token = SIM_TOKEN
    elif token.startswith("env:"):
        token = os.environ.get(token[4:], "")
        if not token:
            raise TallyError(f"--providers-token {args.providers_token}: the variable is not set")
    return ProvidersConfig.at(args.providers, token)


def log_providers(config: ProvidersConfig | None, simulated: bool) -> None:
    """Say where the verification steps' providers are, and loudly when there are none."""
    log = logging.getLogger("tally.serve")
    if config is None:
        log.warning(
            "no verification providers (--providers URL or --providers-config FILE): every "
            "step that needs one (identity database, OCR, liveness, card issuer, SMS) answers "
            "503 provider-unavailable, so new customers stay pending and no card is bound"
        )
        return
    endpoints = {name: config.endpoint(name).url for name in PROVIDERS}
    if simulated:
        log.warning(
            "IDENTITY CHECKS ARE SIMULATED: the provider simulator (tally providers serve) "
            f"answers at {config.identity.url.rsplit('/', 1)[0]}; never for real customers"
        )
    log.info(orjson.dumps({"event": "providers", "simulated": simulated, **endpoints}).decode())


def build_app(
    args: argparse.Namespace,
    rules: RuleSet,
    registry: Registry,
    secrets: ServerSecrets,
    providers: ProvidersConfig | None = None,
) -> App:
    settings = Settings(
        data_dir=args.data,
        account_capacity=args.accounts_max,
        transfer_capacity=args.transfers_max,
        queue_size=args.queue_size,
        linger_s=args.linger_ms / 1000,
        token_ttl_s=args.token_ttl_s,
        session_ttl_s=args.session_ttl_s,
        password_failures_max=args.password_failures_max,
        scrypt_n=args.scrypt_n,
        scrypt_r=args.scrypt_r,
        scrypt_p=args.scrypt_p,
        password_hash_threads=args.password_hash_threads,
        password_hash_queue_max=args.password_hash_queue,
        snapshot_every_entries=args.snapshot_every_entries,
        journal_append_on_loop_max_s=args.journal_append_on_loop_ms / 1000,
        journal_segment_size=args.journal_segment_kb << 10,
        store_dsn=args.store,
        retention_s=args.retention_s,
        failed_retention_s=args.failed_retention_s,
        prefault=args.prefault,
        secrets=secrets,
        deposits_path=args.deposits,
        dayend_automatic=args.dayend_automatic,
        risk_rules_path=args.risk_rules,
        lpr_path=args.lpr,
        operators_path=args.operators,
        approval_expiry_s=args.approval_expiry_s,
        reversal_approval_minor=args.reversal_approval_minor,
    )
    client = HttpProviders(providers) if providers is not None else None
    bank = Bank(
        settings,
        rules,
        actors=registry.actors(),
        providers=client,
        verification_policy=registry.verification_policy(),
    )
    app = App(
        bank,
        registry,
        providers=client,  # closed with the bank at shutdown (the app's lifespan)
        access_log=access_log_stream(args.access_log),
        body_size_max=args.body_size_max,
        preauth_body_size_max=args.preauth_body_size_max,
        read_timeout_s=args.read_timeout_s,
        auth_failures_per_s=args.auth_failures_per_s,
        auth_failures_burst=args.auth_failures_burst,
    )
    app.console_reports_dir = getattr(args, "console_reports", None)
    return app


def development_operators(operators: Operators) -> list[str]:
    """Why operator keys in use are public ones: marked DEVELOPMENT-ONLY (those of the
    example operator registry are)."""
    mark = DEVELOPMENT_MARK.encode()
    return [
        f"operator {name}, key {key_id}: marked {DEVELOPMENT_MARK}"
        for name, operator in operators.operators.items()
        for key_id, secret in operator.secrets.items()
        if mark in secret
    ]


def load_secrets(args: argparse.Namespace) -> ServerSecrets:
    """The --secrets file (refused if others may read it or it is in the data directory),
    or the public development keys when there is none."""
    if args.secrets is None:
        return DEVELOPMENT
    path = Path(args.secrets).resolve()
    if path.is_relative_to(Path(args.data).resolve()):
        raise TallyError(
            f"secrets file {args.secrets} is inside the data directory {args.data}:"
            " keep it apart (a copy of the data must not carry the keys)"
        )
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise TallyError(f"secrets file {args.secrets}: {error}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TallyError(
            f"secrets file {args.secrets} is open to other users (mode {stat.filemode(mode)}):"
            f" chmod 600 {args.secrets}"
        )
    return load_server_secrets(path)


def development_secrets(registry: Registry, secrets: ServerSecrets) -> list[str]:
    """Why the secrets in use are public ones (empty: none is)."""
    public: set[bytes] = set()
    for path in PUBLIC_REGISTRIES:
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except OSError:
            continue
        for entry in document.get("channels", {}).values():
            public.update(secret["secret"].encode() for secret in entry.get("secrets", []))
    mark = DEVELOPMENT_MARK.encode()
    reasons = []
    for name, entry in registry.channels.items():
        for key_id, secret in entry.secrets.items():
            why = [f"marked {DEVELOPMENT_MARK}"] if mark in secret else []
            why += ["a secret of the example registry"] if secret in public else []
            if why:
                reasons.append(f"channel {name}, key {key_id}: {' and '.join(why)}")
    if secrets.development:
        reasons.append("no --secrets FILE: the public development transfer-id key and pepper")
    elif any(
        DEVELOPMENT_MARK.encode() in value
        or value in (DEVELOPMENT.transfer_id_key, DEVELOPMENT.password_pepper)
        for value in (secrets.transfer_id_key, secrets.password_pepper)
    ):
        reasons.append(f"--secrets {DEVELOPMENT_MARK} keys")
    return reasons


def check_tls(args: argparse.Namespace) -> str | None:
    """Why --certfile/--keyfile cannot serve HTTPS, or None (also None without them)."""
    if args.certfile is None and args.keyfile is None:
        return None
    if args.certfile is None or args.keyfile is None:
        return "--certfile and --keyfile go together"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            args.certfile, args.keyfile
        )
    except (OSError, ssl.SSLError) as error:
        return f"cannot load --certfile/--keyfile: {error}"
    return None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.store and args.backend != "asyncio":
        print(
            "tally serve: --store (PostgreSQL through asyncpg) runs on --backend asyncio only",
            file=sys.stderr,
        )
        return 2
    if args.store and not args.store.startswith(("postgresql://", "postgres://")):
        print(
            f"tally serve: --store must be a postgresql:// URL, not {redact_dsn(args.store)!r}",
            file=sys.stderr,
        )
        return 2
    problem = password_arguments_problem(args)
    if problem:
        print(f"tally serve: {problem}", file=sys.stderr)
        return 2
    tls_problem = check_tls(args)
    if tls_problem is not None:
        print(f"tally serve: {tls_problem}", file=sys.stderr)
        return 2
    iso8583: tuple[str, int] | None = None
    if args.iso8583 is None and (
        args.terminals != str(DEFAULT_TERMINALS_PATH) or args.iso8583_keys != str(DEFAULT_KEYS_PATH)
    ):
        print("tally serve: --terminals and --iso8583-keys go with --iso8583", file=sys.stderr)
        return 2
    if args.iso8583 is not None:
        try:
            iso8583 = parse_address(args.iso8583)
        except ValueError as error:
            print(f"tally serve: --iso8583: {error}", file=sys.stderr)
            return 2
    link = link_arguments(args)
    if isinstance(link, str):
        print(f"tally serve: {link}", file=sys.stderr)
        return 2
    if args.workers and (link is not None or not 1 <= args.workers <= WORKERS_MAX):
        print(
            f"tally serve: --workers takes 1 to {WORKERS_MAX} front-ends and makes its own"
            " link (not with --link)",
            file=sys.stderr,
        )
        return 2
    if args.console_reports is not None and not os.path.isdir(args.console_reports):
        print(
            f"tally serve: --console-reports {args.console_reports}: no such directory",
            file=sys.stderr,
        )
        return 2
    if args.journal_segment_kb < 4 or args.journal_segment_kb % 4:
        print("tally serve: --journal-segment-kb must be a multiple of 4", file=sys.stderr)
        return 2
    if not 0 <= args.journal_append_on_loop_ms <= 1000:
        print("tally serve: --journal-append-on-loop-ms must be 0 to 1000", file=sys.stderr)
        return 2
    try:
        rules = load_rules(args.rules)
        load_catalog(args.deposits)  # a bad deposit catalog refuses the start, precisely
        load_risk_rules(args.risk_rules)  # so do a bad risk rule set and LPR table
        load_lpr(args.lpr)
        providers = providers_config(args)  # a bad providers file refuses the start too
        registry = load_registry(args.channels, rules)
        operators = load_operators(args.operators)
        secrets = load_secrets(args)
        terminals, iso8583_keys = None, None
        if iso8583 is not None:  # a bad key file or terminal registry: TallyError, precisely
            iso8583_keys = load_keys(args.iso8583_keys)
            terminals = load_terminals(args.terminals, registry, iso8583_keys)
    except (RuleFileError, RegistryError, TallyError) as error:
        print(f"tally serve: {error}", file=sys.stderr)
        return 2
    public = development_secrets(registry, secrets) + development_operators(operators)
    if iso8583_keys is not None and iso8583_keys.development:
        public.append(f"--iso8583-keys {args.iso8583_keys}: public development terminal keys")
    if public and not args.dev:
        print(
            "tally serve: refusing to start with development secrets, which are public:\n  "
            + "\n  ".join(public)
            + "\nGive the channels your own secrets (--channels FILE) and the server its own"
            " keys (--secrets FILE), or pass --dev for a development server.",
            file=sys.stderr,
        )
        return 2
    if args.dev:
        logging.getLogger("tally.serve").warning(
            "\n".join(
                [
                    "!" * 78,
                    "!!! DEVELOPMENT SERVER (--dev): do not use it for real money.",
                    *(f"!!! {reason}" for reason in public or ["(no public secret in use)"]),
                    "!" * 78,
                ]
            )
        )
    if args.providers_simulator:
        from core.providers.sim import running_simulator  # development only

        with running_simulator() as url:
            config = ProvidersConfig.at(url)
            return serve(
                args, rules, registry, secrets, config, iso8583, terminals, iso8583_keys, link
            )
    return serve(args, rules, registry, secrets, providers, iso8583, terminals, iso8583_keys, link)


def serve(
    args: argparse.Namespace,
    rules: RuleSet,
    registry: Registry,
    secrets: ServerSecrets,
    providers: ProvidersConfig | None,
    iso8583: tuple[str, int] | None,
    terminals: Terminals | None,
    iso8583_keys: SoftwareKeyStore | None,
    link: tuple[LinkAddress, TlsFiles | None, bytes] | None = None,
) -> int:
    """Build the app on the checked arguments and serve it until a signal stops it."""
    log_providers(providers, simulated=args.providers_simulator)
    # Everything the server creates is its own alone: the data directory holds names, id
    # numbers and password hashes (the lifecycle also tightens an existing one).
    os.umask(0o077)
    app = build_app(args, rules, registry, secrets, providers)
    os.makedirs(args.data, mode=0o700, exist_ok=True)
    # Every request allocates a few dozen short-lived containers; collecting the young
    # generation every 700 allocations (Python's default) cost about 4% of a single
    # transfer's server CPU under `tally bench http`. What exists now (modules, rules,
    # registry) is never garbage: freeze it out of every later collection.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if args.loop is not None and args.backend != "asyncio":
        print("tally serve: --loop is for --backend asyncio (trio has its own)", file=sys.stderr)
        return 2
    served: App | AppWithIso8583 | AppWithLink = app
    services: BankServices | None = None
    if iso8583 is not None:
        assert terminals is not None and iso8583_keys is not None
        services = iso8583_services(app, terminals, iso8583_keys)
        if not args.workers:  # else the front-ends listen for the terminals
            served = iso8583_app(app, iso8583, services, iso8583_keys)
    workers: Workers | None = None
    if args.workers:
        workers = Workers(args, iso8583)
        link = LinkAddress("unix", path=workers.link_path), None, workers.secret
    if link is not None:
        address, tls, secret = link
        limits = LinkLimits(window=args.link_window, connections_max=args.link_connections_max)
        calls = None if services is None else CallTable(services.call_table())
        server = link_server(app, secret, limits, calls)
        app.metrics.registry.register(LinkCollector(server.stats))
        served = AppWithLink(served, server, address, tls)
    if workers is not None:
        # The front-ends take the public address; this process answers them alone, on a
        # Unix socket.
        try:
            workers.start()
        except OSError as error:
            workers.stop()
            return cannot_listen(error)
        try:
            if args.server == "uvicorn":
                return _run_uvicorn(served, args, unix_socket=workers.http_path)
            return _run_hypercorn(served, args, unix_socket=workers.http_path)
        finally:
            workers.stop()
    if args.server == "uvicorn" and args.backend != "asyncio":
        print("tally serve: uvicorn runs on asyncio only", file=sys.stderr)
        return 2
    # Bound now, before the bank recovers (minutes at 30M accounts): an address in use is
    # said at once, not as the server's traceback after the recovery.
    try:
        listener = listening_socket(args.host, args.port)
    except OSError as error:
        return cannot_listen(error)
    if args.server == "uvicorn":
        with listener:
            return _run_uvicorn(served, args, listener=listener)
    return _run_hypercorn(served, args, listener=listener)


def cannot_listen(error: OSError) -> int:
    """Say which address could not be taken (`listening_socket`'s error) and why: exit 2."""
    print(f"tally serve: cannot listen on {error.filename}: {error.strerror}", file=sys.stderr)
    return 2


def iso8583_app(
    app: App, address: tuple[str, int], services: BankServices, keys: SoftwareKeyStore
) -> AppWithIso8583:
    """The HTTP app with the ISO 8583 listener in its lifespan, on the app's bank
    (`services`: `iso8583_services`)."""
    from channels.iso8583.adapter import Iso8583Adapter  # only a server with --iso8583

    adapter = Iso8583Adapter(services, services.terminals, keys)
    channels = app.bank.approvals.parameters["channels"]
    install_before = channels.install

    def install(registry: Registry) -> None:
        install_before(registry)  # the services' terminals, resolved under it
        adapter.terminals = services.terminals

    channels.install = install
    host, port = address
    served = AppWithIso8583(app, adapter, host, port)
    app.metrics.registry.register(Iso8583Collector(served.stats, adapter.answered))
    return served


def iso8583_services(app: App, terminals: Terminals, keys: SoftwareKeyStore) -> BankServices:
    """The services terminals use, on the app's bank: for its own listener, and for the
    front-ends' over the core link (their `CALL`s).

    A channel registry proposed for approval must also resolve every terminal (else it is
    invalid, its problems listed like the registry's own), and once applied it is in force
    for the terminals too (`BankServices.install_registry`); a terminal's 0100 and 0200
    take from its channel's rate limit, the bucket of the channel's HTTP requests."""
    services = BankServices(app.bank, keys, terminals, lambda channel: app.over_rate(channel) > 0)
    channels = app.bank.approvals.parameters["channels"]
    parse_for_http, install_for_http = channels.parse, channels.install

    def parse(text: str, source: str) -> Registry:
        registry: Registry = parse_for_http(text, source)
        services.terminals.resolve(registry, keys)  # TerminalRegistryError lists the problems
        return registry

    def install(registry: Registry) -> None:
        install_for_http(registry)
        services.install_registry(registry)

    channels.parse, channels.install = parse, install
    return services


def link_arguments(
    args: argparse.Namespace,
) -> tuple[LinkAddress, TlsFiles | None, bytes] | str | None:
    """`--link` and its files, checked: None without it, a problem as a string."""
    given = [args.link_secret_file, args.link_cert, args.link_key, args.link_ca]
    if args.link is None:
        return "--link-* options go with --link" if any(given) else None
    try:
        address = parse_link_address(args.link)
    except ValueError as error:
        return f"--link: {error}"
    if not 1 <= args.link_window <= 65535:
        return "--link-window must be 1 to 65535"
    if not 1 <= args.link_connections_max <= 65535:
        return "--link-connections-max must be 1 to 65535"
    if args.link_secret_file is None:
        return "--link needs --link-secret-file (the secret every front-end shows)"
    try:
        secret = read_secret(args.link_secret_file)
    except (OSError, ValueError) as error:
        return f"--link-secret-file: {error}"
    tls_files = given[1:]
    if address.kind == "unix":
        if any(tls_files):
            return "--link-cert, --link-key and --link-ca are for a tls: link"
        return address, None, secret
    if not all(tls_files):
        return "a tls: link needs --link-cert, --link-key and --link-ca (mutual TLS)"
    tls = TlsFiles(args.link_cert, args.link_key, args.link_ca)
    try:
        server_context(tls)
    except (OSError, ssl.SSLError) as error:
        return f"--link-cert/--link-key/--link-ca: {error}"
    return address, tls, secret


def password_arguments_problem(args: argparse.Namespace) -> str:
    """What is wrong with the password-hashing arguments ("" if nothing)."""
    n, r, p = args.scrypt_n, args.scrypt_r, args.scrypt_p
    if n < 2 or n & (n - 1):
        return f"--scrypt-n must be a power of 2 above 1, not {n}"
    if r < 1 or p < 1 or r * p >= 1 << 30 or 128 * r * n > 1 << 28:
        return f"--scrypt-r {r} --scrypt-p {p} --scrypt-n {n} are out of range"
    if args.password_hash_threads < 0 or args.password_hash_queue < 0:
        return "--password-hash-threads and --password-hash-queue must be >= 0"
    return ""


def hypercorn_config(
    host: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    header_size_max: int = HEADER_SIZE_MAX,
    keep_alive_timeout_s: int = KEEP_ALIVE_TIMEOUT_S,
) -> Any:
    """hypercorn as Tally runs it. Its idle timer runs from a connection's start (and from
    each response) until a request head is complete, so a head that trickles is closed
    after `keep_alive_timeout_s`; `read_timeout` is left off (an `asyncio.wait_for` per read
    costs about 17 us); the app bounds the body."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None  # Tally writes its own structured access log
    config.errorlog = logging.getLogger("hypercorn.error")  # one handler: the root's
    config.keep_alive_max_requests = 1 << 30
    config.keep_alive_timeout = keep_alive_timeout_s
    config.h11_max_incomplete_size = header_size_max  # a larger head: 431
    config.h2_max_header_list_size = header_size_max
    config.backlog = 1024
    config.graceful_timeout = 10
    config.certfile = certfile
    config.keyfile = keyfile
    return config


def _run_hypercorn(
    app: App | AppWithIso8583 | AppWithLink,
    args: argparse.Namespace,
    *,
    unix_socket: str | None = None,
    listener: socket.socket | None = None,
) -> int:
    """Serve `app` on hypercorn until a signal; on `unix_socket` instead of the
    arguments' address when given (`--workers`: the front-ends have the address), or on
    `listener`, bound already."""
    config = hypercorn_config(
        args.host,
        args.port,
        certfile=args.certfile,
        keyfile=args.keyfile,
        header_size_max=args.header_size_max,
        keep_alive_timeout_s=args.keep_alive_timeout_s,
    )
    if unix_socket is not None:
        config.bind = [f"unix:{unix_socket}"]
    elif listener is not None:  # hypercorn's from here: it closes the descriptor (trio)
        config.bind = [f"fd://{listener.detach()}"]

    async def main() -> None:
        if args.backend == "trio":
            from hypercorn.trio import serve as serve_trio

            await serve_trio(app, config, shutdown_trigger=wait_for_signal)  # type: ignore[arg-type]
        else:
            from hypercorn.asyncio import serve as serve_asyncio

            await serve_asyncio(app, config, shutdown_trigger=wait_for_signal)  # type: ignore[arg-type]

    options = {"use_uvloop": args.loop != "asyncio"} if args.backend == "asyncio" else {}
    anyio.run(main, backend=args.backend, backend_options=options)
    return 0


def uvicorn_config(
    app: Any,
    host: str,
    port: int,
    loop: str | None,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    header_size_max: int = HEADER_SIZE_MAX,
    read_timeout_s: float = READ_TIMEOUT_S,
    keep_alive_timeout_s: int = KEEP_ALIVE_TIMEOUT_S,
) -> Any:
    """uvicorn as Tally runs it (and `tally bench http` runs its bare peer): httptools, and
    uvloop unless `loop` says asyncio. uvloop's C event loop and transports take about
    a quarter off the server's CPU per request (`tally bench http`, bare and Tally alike).
    The protocol is httptools' with a cap and a deadline on the request head
    (channels/http/uvicorn_protocol.py): uvicorn has neither."""
    import uvicorn

    from channels.http.uvicorn_protocol import bounded_protocol

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        lifespan="on",
        log_level="warning",
        http=bounded_protocol(header_size_max, read_timeout_s),
        loop=loop or "uvloop",
        backlog=1024,
        timeout_keep_alive=keep_alive_timeout_s,
        proxy_headers=False,  # Tally reads no X-Forwarded-* header; the middleware costs CPU
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )


def _run_uvicorn(
    app: App | AppWithIso8583 | AppWithLink,
    args: argparse.Namespace,
    *,
    unix_socket: str | None = None,
    listener: socket.socket | None = None,
) -> int:
    """Serve `app` on uvicorn until a signal; on `unix_socket` or `listener` when given
    (as `_run_hypercorn`)."""
    import uvicorn

    config = uvicorn_config(
        app,
        args.host,
        args.port,
        args.loop,
        certfile=args.certfile,
        keyfile=args.keyfile,
        header_size_max=args.header_size_max,
        read_timeout_s=args.read_timeout_s,
        keep_alive_timeout_s=args.keep_alive_timeout_s,
    )
    if unix_socket is not None:
        config.uds = unix_socket
    server = uvicorn.Server(config)
    server.run(sockets=None if listener is None else [listener])
    return 0 if server.started else 3  # 3: uvicorn's own exit status for a failed startup


async def wait_for_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return
