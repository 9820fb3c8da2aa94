"""`tally gateway --core ADDRESS`: one front-end process (channels/frontend.py).

On another machine: `--core tls:HOST:PORT` with this front-end's certificate, key and
the link's CA (mutual TLS), and the link's secret. On the core's machine, `tally serve
--workers N` starts N of these itself on a Unix socket, each accepting on the listening
socket it inherits (`--fd`). `--iso8583 HOST:PORT` (or an inherited `--iso8583-fd`)
also serves ATMs and POS terminals: the ISO 8583 adapter runs here on the terminal
registry and key file given, every service call goes to the core
(channels/iso8583/frontend.py).
"""

from __future__ import annotations

import argparse
import gc
import logging
import socket
import sys

import anyio

from channels.frontend import FrontEnd
from channels.http.serve import hypercorn_config, uvicorn_config, wait_for_signal
from channels.iso8583.frontend import TerminalFrontEnd
from channels.iso8583.keys import DEFAULT_KEYS_PATH, KeyFileError, load_keys
from channels.iso8583.server import AppWithIso8583, parse_address
from channels.iso8583.terminals import (
    DEFAULT_TERMINALS_PATH,
    TerminalRegistryError,
    load_terminal_entries,
)
from core.data import DEFAULT_RULES_PATH
from core.link.address import TlsFiles, link_connector, parse_link_address, read_secret
from core.link.client import LinkClient
from core.services.lifecycle import GC_THRESHOLDS
from limits.errors import RuleFileError
from limits.rules import load_rules


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--core", required=True, help="the core's link: unix:PATH or tls:HOST:PORT")
    parser.add_argument("--link-secret-file", required=True, help="the link's shared secret")
    parser.add_argument("--link-cert", default=None, help="this front-end's certificate (tls:)")
    parser.add_argument("--link-key", default=None, help="the private key of --link-cert")
    parser.add_argument("--link-ca", default=None, help="the CA that signs the core (tls:)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    parser.add_argument(
        "--fd", type=int, default=None, help="accept on this inherited listening socket instead"
    )
    parser.add_argument("--server", choices=("hypercorn", "uvicorn"), default="hypercorn")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default=None)
    parser.add_argument("--rules", default=str(DEFAULT_RULES_PATH), help="limit rule file")
    parser.add_argument("--name", default="gateway", help="this front-end, in the core's log")
    parser.add_argument("--certfile", default=None, help="TLS certificate chain (PEM): HTTPS")
    parser.add_argument("--keyfile", default=None, help="TLS private key (PEM) of --certfile")
    parser.add_argument(
        "--iso8583", default=None, metavar="HOST:PORT",
        help="also serve ATMs and POS terminals (ISO 8583 over TCP, docs/iso8583.md): the"
        " adapter runs here, the services at the core",
    )  # fmt: skip
    parser.add_argument(
        "--iso8583-fd", type=int, default=None,
        help="accept terminals on this inherited listening socket instead (tally serve --workers)",
    )  # fmt: skip
    parser.add_argument(
        "--terminals", default=str(DEFAULT_TERMINALS_PATH),
        help="the terminal registry of --iso8583 (resolved against the core's channel registry)",
    )  # fmt: skip
    parser.add_argument(
        "--iso8583-keys", default=str(DEFAULT_KEYS_PATH),
        help="the terminals' PIN, MAC and master keys (the shipped public development keys"
        " need --dev)",
    )  # fmt: skip
    parser.add_argument(
        "--dev", action="store_true", help="allow the public development terminal keys"
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        address = parse_link_address(args.core)
        secret = read_secret(args.link_secret_file)
        rules = load_rules(args.rules)
    except (OSError, ValueError, RuleFileError) as error:
        print(f"tally gateway: {error}", file=sys.stderr)
        return 2
    files = [args.link_cert, args.link_key, args.link_ca]
    tls: TlsFiles | None = None
    if address.kind == "tls":
        if not all(files):
            print("tally gateway: a tls: core needs --link-cert, --link-key and --link-ca",
                  file=sys.stderr)  # fmt: skip
            return 2
        tls = TlsFiles(args.link_cert, args.link_key, args.link_ca)
    elif any(files):
        print("tally gateway: --link-cert, --link-key, --link-ca are for tls:", file=sys.stderr)
        return 2
    try:
        connect = link_connector(address, tls)
    except (OSError, ValueError) as error:
        print(f"tally gateway: {error}", file=sys.stderr)
        return 2
    if args.fd is not None:
        _die_with_parent()
    link = LinkClient(connect, secret, args.name)
    front_end = FrontEnd(link, rules)
    app: FrontEnd | AppWithIso8583 = front_end
    if args.iso8583 is not None or args.iso8583_fd is not None:
        terminals = terminal_front_end(args, link)
        if isinstance(terminals, str):
            print(f"tally gateway: {terminals}", file=sys.stderr)
            return 2
        front_end.registry_listeners.append(terminals.install_registry)
        if args.iso8583_fd is not None:
            app = AppWithIso8583(
                front_end, terminals, "", 0, sock=socket.socket(fileno=args.iso8583_fd)
            )
        else:
            host, port = parse_address(args.iso8583)
            app = AppWithIso8583(front_end, terminals, host, port)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if args.server == "uvicorn":
        import uvicorn

        config = uvicorn_config(
            app, args.host, args.port, args.loop, certfile=args.certfile, keyfile=args.keyfile
        )
        server = uvicorn.Server(config)
        # uvicorn's own `fd=` takes any inherited socket for a Unix one (socket.fromfd with
        # AF_UNIX), so its TCP connections never get TCP_NODELAY and every answer waits
        # for the peer's delayed ACK (40 ms): hand it the socket as the kernel has it.
        server.run(sockets=[socket.socket(fileno=args.fd)] if args.fd is not None else None)
        return 0 if server.started else 3
    hypercorn = hypercorn_config(args.host, args.port, certfile=args.certfile, keyfile=args.keyfile)
    if args.fd is not None:
        hypercorn.bind = [f"fd://{args.fd}"]

    async def main() -> None:
        from hypercorn.asyncio import serve

        await serve(app, hypercorn, shutdown_trigger=wait_for_signal)  # type: ignore[arg-type]

    anyio.run(main, backend_options={"use_uvloop": args.loop != "asyncio"})
    return 0


def terminal_front_end(args: argparse.Namespace, link: LinkClient) -> TerminalFrontEnd | str:
    """The ISO 8583 handler of `--iso8583`/`--iso8583-fd`, or what is wrong with its
    options and files."""
    if args.iso8583 is not None and args.iso8583_fd is not None:
        return "--iso8583 and --iso8583-fd are one or the other"
    if args.iso8583 is not None:
        try:
            parse_address(args.iso8583)
        except ValueError as error:
            return f"--iso8583: {error}"
    try:
        keys = load_keys(args.iso8583_keys)
        entries = load_terminal_entries(args.terminals)
    except (KeyFileError, TerminalRegistryError) as error:
        return str(error)
    if keys.development and not args.dev:
        return (f"--iso8583-keys {args.iso8583_keys}: public development terminal keys;"
                " give the terminals' own keys, or pass --dev")  # fmt: skip
    return TerminalFrontEnd(link, entries, keys, args.terminals)


def _die_with_parent() -> None:
    """A front-end of `tally serve --workers` ends with its core, even a core killed
    with SIGKILL (Linux: PR_SET_PDEATHSIG), so that no orphan holds the listening socket
    the restarted core must bind again."""
    import ctypes
    import os
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)  # stateless: nothing to finish
    if os.getppid() == 1:  # the core died before the call: nobody to serve
        sys.exit(1)
