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
and answers the batch it was making durable, the store is closed.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from typing import Any

import anyio

from channels.http.app import App, access_log_stream
from channels.registry import RegistryError, load_registry
from core.data import DEFAULT_CHANNELS_PATH, DEFAULT_RULES_PATH
from core.services.bank import Bank
from core.services.lifecycle import Settings
from limits.errors import RuleFileError
from limits.rules import load_rules

SERVERS = ("hypercorn", "uvicorn")
LOOPS = ("uvloop", "asyncio")
DSN_ENV = "TALLY_PG_DSN"
GC_THRESHOLDS = (5000, 20, 20)  # young, middle, old generation (defaults: 700, 10, 10)


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
        help="asyncio event loop under uvicorn: uvloop (libuv, the default) or the standard"
        " library's (hypercorn always runs on the standard one)",
    )
    parser.add_argument("--rules", default=str(DEFAULT_RULES_PATH), help="limit rule file")
    parser.add_argument(
        "--channels", default=str(DEFAULT_CHANNELS_PATH), help="channel registry"
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
        "--password-failures-max",
        type=int,
        default=5,
        help="wrong transaction passwords per business day before the lock",
    )
    parser.add_argument("--scrypt-n", type=int, default=1 << 14, help="scrypt cost (power of 2)")
    parser.add_argument(
        "--body-size-max",
        type=int,
        default=0,
        help="request body cap in bytes (default: the largest channel cap)",
    )
    parser.add_argument(
        "--snapshot-every-entries",
        type=int,
        default=0,
        help="fork a ledger snapshot every N journal entries (0: never)",
    )


def build_app(args: argparse.Namespace) -> App:
    rules = load_rules(args.rules)
    registry = load_registry(args.channels, rules)
    settings = Settings(
        data_dir=args.data,
        account_capacity=args.accounts_max,
        transfer_capacity=args.transfers_max,
        queue_size=args.queue_size,
        linger_s=args.linger_ms / 1000,
        token_ttl_s=args.token_ttl_s,
        password_failures_max=args.password_failures_max,
        scrypt_n=args.scrypt_n,
        snapshot_every_entries=args.snapshot_every_entries,
        store_dsn=args.store,
        retention_s=args.retention_s,
        failed_retention_s=args.failed_retention_s,
        prefault=args.prefault,
    )
    bank = Bank(settings, rules)
    return App(
        bank,
        registry,
        access_log=access_log_stream(args.access_log),
        body_size_max=args.body_size_max,
    )


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
            f"tally serve: --store must be a postgresql:// URL, not {args.store!r}", file=sys.stderr
        )
        return 2
    try:
        app = build_app(args)
    except (RuleFileError, RegistryError) as error:
        print(f"tally serve: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.data, exist_ok=True)
    # Every request allocates a few dozen short-lived containers; collecting the young
    # generation every 700 allocations (Python's default) cost about 4% of a single
    # transfer's server CPU under `tally bench http`. What exists now (modules, rules,
    # registry) is never garbage: freeze it out of every later collection.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if args.loop is not None and args.server != "uvicorn":
        print("tally serve: --loop is for --server uvicorn", file=sys.stderr)
        return 2
    if args.server == "uvicorn":
        if args.backend != "asyncio":
            print("tally serve: uvicorn runs on asyncio only", file=sys.stderr)
            return 2
        return _run_uvicorn(app, args)
    return _run_hypercorn(app, args)


def hypercorn_config(host: str, port: int) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None  # Tally writes its own structured access log
    config.errorlog = logging.getLogger("hypercorn.error")  # one handler: the root's
    config.keep_alive_max_requests = 1 << 30
    config.keep_alive_timeout = 75
    config.backlog = 1024
    config.graceful_timeout = 10
    return config


def _run_hypercorn(app: App, args: argparse.Namespace) -> int:
    config = hypercorn_config(args.host, args.port)

    async def main() -> None:
        if args.backend == "trio":
            from hypercorn.trio import serve as serve_trio

            await serve_trio(app, config, shutdown_trigger=wait_for_signal)  # type: ignore[arg-type]
        else:
            from hypercorn.asyncio import serve as serve_asyncio

            await serve_asyncio(app, config, shutdown_trigger=wait_for_signal)  # type: ignore[arg-type]

    anyio.run(main, backend=args.backend)
    return 0


def uvicorn_config(app: Any, host: str, port: int, loop: str | None) -> Any:
    """uvicorn as Tally runs it (and `tally bench http` runs its bare peer): httptools, and
    uvloop unless `loop` says asyncio. uvloop's C event loop and transports take about
    a quarter off the server's CPU per request (`tally bench http`, bare and Tally alike)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        lifespan="on",
        log_level="warning",
        http="httptools",
        loop=loop or "uvloop",
        backlog=1024,
        timeout_keep_alive=75,
        proxy_headers=False,  # Tally reads no X-Forwarded-* header; the middleware costs CPU
    )


def _run_uvicorn(app: App, args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.Server(uvicorn_config(app, args.host, args.port, args.loop)).run()
    return 0


async def wait_for_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return
