"""The `tally` command line.

Commands are registered as "module:function" strings in COMMANDS, not as imports, so that
`import core.cli` stays cheap and `tally --help` lists every command with its summary even
while the module behind one is not written yet. Only the module of the command being run
is imported.

To add a command, add one entry to COMMANDS (usually with `module_command`); its module defines

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...  # the exit status
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

REFUSAL_UNDER_OPTIMIZE = (
    "tally: refusing to run under python -O: assertions are part of the safety net"
)


@dataclass(frozen=True)
class Command:
    """A command that runs: its one-line summary and where its two functions live."""

    summary: str
    add_arguments: str  # "package.module:function" given the command's ArgumentParser
    run: str  # "package.module:function" given the parsed Namespace, returning the exit status


@dataclass(frozen=True)
class Group:
    """A command that only holds commands, as `bench` holds `kernel` in `tally bench kernel`."""

    summary: str
    commands: Mapping[str, Command]


def module_command(module: str, summary: str) -> Command:
    """A command whose module defines `add_arguments(parser)` and `run(args)`."""
    return Command(summary, add_arguments=f"{module}:add_arguments", run=f"{module}:run")


COMMANDS: Mapping[str, Command | Group] = {
    "bench": Group(
        "measure one part of Tally in isolation",
        {
            "kernel": module_command(
                "core.bench.kernel",
                "post random transfers through the ledger kernels in memory",
            ),
            "engine": module_command(
                "core.bench.engine",
                "the engine with the embedded journal on disk: durable rates, latency, recovery",
            ),
            "http": module_command(
                "channels.http.bench",
                "the HTTP API under wrk: signed single transfers, batches, the bare-server ceiling",
            ),
            "link": module_command(
                "channels.link_bench",
                "the core link alone: transfers/s, p99 and the core's CPU per forwarded transfer",
            ),
            "iso8583": module_command(
                "loadtests.iso8583_bench",
                "ATMs and POS terminals over ISO 8583: financial messages/s, p99, an exact ledger",
            ),
            "iso20022": module_command(
                "loadtests.iso20022_bench",
                "a partner bank's pacs.008 files of 1,000 credits over HTTP: credits/s, an exact"
                " ledger",
            ),
            "pg": module_command(
                "core.bench.pg",
                "the engine on a throwaway PostgreSQL (fsync, sync commit) vs a naive ledger",
            ),
            "dayend": module_command(
                "core.bench.dayend",
                "the day-end at N accounts on the journal: accrual, settlement made durable, RSS",
            ),
            "risk": module_command(
                "core.bench.risk",
                "the risk stage alone: p99 per decision at the batch route's rate, decisions/s",
            ),
            "page": module_command(
                "core.bench.page",
                "render BENCHMARKS.md from the reports saved with --save",
            ),
        },
    ),
    "journal": Group(
        "check and read the embedded journal of a data directory",
        {
            "verify": Command(
                "check every record and snapshot, replay, print counts, timing and the digest",
                add_arguments="core.cli.journal:add_verify_arguments",
                run="core.cli.journal:run_verify",
            ),
            "dump": Command(
                "print journal records (and their transfers) human-readably",
                add_arguments="core.cli.journal:add_dump_arguments",
                run="core.cli.journal:run_dump",
            ),
        },
    ),
    "db": Group(
        "the PostgreSQL store: schema migrations and a full check of the books",
        {
            "migrate": Command(
                "apply the missing schema migrations (under an advisory lock)",
                add_arguments="core.cli.db:add_migrate_arguments",
                run="core.cli.db:run_migrate",
            ),
            "verify": Command(
                "recompute every balance from the transfers; compare with the accounts and kernels",
                add_arguments="core.cli.db:add_verify_arguments",
                run="core.cli.db:run_verify",
            ),
        },
    ),
    "cluster": Group(
        "the local Patroni + etcd topology (dc1, dc2 same city, dc3 remote) for drills",
        {
            "up": Command(
                "start etcd and Patroni (PostgreSQL 15) in three DCs; wait for leader + sync",
                add_arguments="core.cli.cluster:add_up_arguments",
                run="core.cli.cluster:run_up",
            ),
            "status": Command(
                "members, roles, lag and timeline (from Patroni's REST API)",
                add_arguments="core.cli.cluster:add_status_arguments",
                run="core.cli.cluster:run_status",
            ),
            "down": Command(
                "stop Patroni, PostgreSQL and etcd (--remove: delete the directory too)",
                add_arguments="core.cli.cluster:add_down_arguments",
                run="core.cli.cluster:run_down",
            ),
        },
    ),
    "drill": Group(
        "disaster-recovery drills on real PostgreSQL clusters",
        {
            "failover": module_command(
                "core.drills.failover",
                "dc1 primary, dc2 sync standby, dc3 async: kill dc1, promote, count lost transfers",
            ),
        },
    ),
    "loadtest": module_command(
        "loadtests.runner",
        "Locust against a fresh server (or --host), then the audit: reports and exit status",
    ),
    "dayend": module_command(
        "core.cli.dayend",
        "run the day-end of a business day: accrual, settlement, maturities, rollover, holds",
    ),
    "admin": module_command(
        "channels.admin_cli",
        "operators: request, approve, reject changes and operations; audit, risk decisions",
    ),
    "audit": module_command(
        "loadtests.audit",
        "check the clients' acknowledged outcomes against the ledger (URL or data directory)",
    ),
    "serve": module_command(
        "channels.http.serve",
        "serve the HTTP API (hypercorn, embedded journal): channels post money movements here",
    ),
    "gateway": module_command(
        "channels.gateway",
        "a front-end process: HTTP in front of a core reached over the core link",
    ),
    "sim": Group(
        "the failover simulator: 30M-user traffic across a dual-region, three-DC topology",
        {
            "run": Command(
                "generate a day of traffic and play it through the topology under a scenario",
                add_arguments="sim.cli:add_run_arguments",
                run="sim.cli:run",
            ),
            "scenarios": Command(
                "list the built-in failure scenarios",
                add_arguments="sim.cli:add_scenarios_arguments",
                run="sim.cli:scenarios",
            ),
            "replay": Command(
                "play a saved trace or a real server's journal through the topology",
                add_arguments="sim.cli:add_replay_arguments",
                run="sim.cli:replay",
            ),
            "bugs": Command(
                "list the planted bugs for mutation runs and the scenarios that expose them",
                add_arguments="sim.cli:add_bugs_arguments",
                run="sim.cli:bugs",
            ),
        },
    ),
    "providers": Group(
        "the real-name verification providers: a deterministic simulator for tests and demos",
        {
            "serve": module_command(
                "core.cli.providers",
                "simulate the identity database, OCR, liveness, card issuers and SMS over HTTP",
            ),
        },
    ),
    "run-default": Command(
        "what `make run` starts: `tally serve` once it exists, else a short `tally bench kernel`",
        add_arguments="core.cli:add_run_default_arguments",
        run="core.cli:run_default",
    ),
}

SERVE_MODULE = "channels.http.serve"
RUN_DEFAULT_BENCH_ARGUMENTS = ("--accounts", "100000", "--transfers", "1000000")


class CommandUnavailable(Exception):
    """The selected command is registered but the module behind it does not exist yet."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `tally` command and return its exit status."""
    if sys.flags.optimize > 0:
        print(REFUSAL_UNDER_OPTIMIZE, file=sys.stderr)
        return 2
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(words)
        args = parser.parse_args(words)
        command = args.tally_command
        assert isinstance(command, Command), command
        run = cast(Callable[[argparse.Namespace], int], _load(command.run, args.tally_command_name))
    except CommandUnavailable as error:
        print(error, file=sys.stderr)
        return 1
    status = run(args)
    assert isinstance(status, int), f"tally {args.tally_command_name} returned {status!r}"
    return status


def build_parser(words: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for `words`: every command is listed, only the selected one is loaded."""
    parser = argparse.ArgumentParser(
        prog="tally",
        description="Tally, the transaction core: server, benchmarks and tools.",
    )
    _add_commands(parser, COMMANDS, words, path=())
    return parser


def _add_commands(
    parser: argparse.ArgumentParser,
    commands: Mapping[str, Command | Group],
    words: Sequence[str],
    path: tuple[str, ...],
) -> None:
    selected, words_after = _split_at_command(words)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, entry in commands.items():
        name_path = (*path, name)
        if isinstance(entry, Group):
            subparser = subparsers.add_parser(
                name,
                help=f"{entry.summary} ({', '.join(entry.commands)})",
                description=entry.summary,
            )
            _add_commands(
                subparser, entry.commands, words_after if name == selected else (), name_path
            )
        else:
            subparser = subparsers.add_parser(name, help=entry.summary, description=entry.summary)
            subparser.set_defaults(tally_command=entry, tally_command_name=" ".join(name_path))
            if name == selected:
                add_arguments = _load(entry.add_arguments, " ".join(name_path))
                add_arguments(subparser)


def _split_at_command(words: Sequence[str]) -> tuple[str | None, Sequence[str]]:
    """The command named at this level and the words after it.

    No option above a command takes a value, so the first word that is not an option is it.
    """
    for index, word in enumerate(words):
        if not word.startswith("-"):
            return word, words[index + 1 :]
    return None, ()


def _load(target: str, command_name: str) -> Callable[..., object]:
    """The function named by "package.module:function", imported now."""
    module_name, _, function_name = target.partition(":")
    assert module_name and function_name, f"bad registry target {target!r}"
    try:
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:  # a parent package is missing
        spec = None
    if spec is None:
        raise CommandUnavailable(
            f"tally {command_name}: not available yet: module {module_name} does not exist"
        )
    function = getattr(importlib.import_module(module_name), function_name)
    assert callable(function), f"{target} is not callable"
    return cast(Callable[..., object], function)


def add_run_default_arguments(parser: argparse.ArgumentParser) -> None:
    """Options passed on to `tally serve`; the benchmark fallback ignores them."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    parser.add_argument("--data", default=".tally-data", help="data directory of the server")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="a development server: the example channel secrets (tally serve --dev) and the"
        " identity providers answered by a simulator (tally serve --providers-simulator)",
    )


def run_default(args: argparse.Namespace) -> int:
    """Serve if the server exists; until then show that the kernels build and run."""
    if importlib.util.find_spec(SERVE_MODULE) is not None:
        words = ["serve", "--host", args.host, "--port", str(args.port), "--data", args.data]
        return main(words + (["--dev", "--providers-simulator"] if args.dev else []))
    print(
        f"tally run-default: {SERVE_MODULE} is not written yet, so no server to start;"
        f" running `tally bench kernel {' '.join(RUN_DEFAULT_BENCH_ARGUMENTS)}` instead",
        file=sys.stderr,
    )
    return main(["bench", "kernel", *RUN_DEFAULT_BENCH_ARGUMENTS])
