"""`tally providers serve`: the provider simulator (core/providers/sim.py) over HTTP.

    tally providers serve --port 8091 --seed 7 --latency-ms identity=40,ocr=120 \\
        --jitter-ms 20 --failure-rate 0.01 --photo-mismatch-rate 0.05

All five providers answer under one base URL (`tally serve --providers URL`). With
`--port 0` the system picks a free port; `--port-file FILE` receives it once the socket
listens, so a script or a test fixture knows where to connect. The URL is printed on
standard output, a start line logged on standard error.

`--token` is the bearer token the providers require: "env:NAME" reads it from the
environment; the default is the public development token (core.providers.population
SIM_TOKEN). Exit status: 0 after SIGINT/SIGTERM, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from core.providers.population import SIM_TOKEN
from core.providers.types import PROVIDERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8091, help="TCP port (0: a free one)")
    parser.add_argument(
        "--port-file", default=None, help="write the port here once listening (for --port 0)"
    )
    parser.add_argument("--seed", type=int, default=1, help="every draw is a function of it")
    parser.add_argument(
        "--latency-ms",
        default="",
        help=f"latency per provider, NAME=MS,... ({', '.join(PROVIDERS)}), or MS for all",
    )
    parser.add_argument(
        "--jitter-ms", type=int, default=0, help="plus a draw in [0, JITTER) ms per request"
    )
    rates = {
        "--failure-rate": "share of provider calls answered 503",
        "--timeout-rate": "share of provider calls answered only after 30 s",
        "--malformed-rate": "share of provider calls answered 200 with a body off the schema",
        "--photo-mismatch-rate": "share of IDs whose database photo is somebody else's",
        "--card-mismatch-rate": "share of cards whose reserved mobile is not the one given",
        "--sms-loss-rate": "share of SMS accepted and never delivered",
    }
    for option, text in rates.items():
        parser.add_argument(option, type=float, default=0.0, help=f"{text} (0..1)")
    parser.add_argument(
        "--token",
        default=SIM_TOKEN,
        help="bearer token the providers require (env:NAME reads the environment);"
        " default: the public development token",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=0,
        help="stop when this process has exited (running_simulator passes its own)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from core.providers.sim import SimOptions, parse_latency, serve

    token = args.token
    if token.startswith("env:"):
        token = os.environ.get(token[4:], "")
        if not token:
            print(f"tally providers serve: --token: {args.token[4:]} is not set", file=sys.stderr)
            return 2
    try:
        latency_ms = parse_latency(args.latency_ms)
    except ValueError as error:
        print(f"tally providers serve: --latency-ms: {error}", file=sys.stderr)
        return 2
    options = SimOptions(
        seed=args.seed,
        token=token,
        latency_ms=latency_ms,
        jitter_ms=args.jitter_ms,
        failure_rate=args.failure_rate,
        timeout_rate=args.timeout_rate,
        malformed_rate=args.malformed_rate,
        photo_mismatch_rate=args.photo_mismatch_rate,
        card_mismatch_rate=args.card_mismatch_rate,
        sms_loss_rate=args.sms_loss_rate,
    )
    problem = options.problem()
    if problem is not None:
        print(f"tally providers serve: {problem}", file=sys.stderr)
        return 2
    try:
        return serve(
            options,
            args.host,
            args.port,
            port_file=args.port_file,
            backend=args.backend,
            parent_pid=args.parent_pid,
        )
    except OSError as error:  # the address is taken or cannot be bound
        print(f"tally providers serve: {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
