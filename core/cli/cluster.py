"""`tally cluster up|down|status`: the local Patroni + etcd topology (core.drills.patroni).

`up` starts three etcd members and three Patroni members (dc1, dc2 same city,
dc3 remote) in a cluster directory, waits until a leader and a synchronous
standby exist and prints the DSN Tally uses (`tally serve --store-dsn ...`)
and the REST API addresses. The daemons outlive the command; `status` and
`down` find them through the directory's pids.json.
"""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from core.drills.pg_cluster import ClusterError

DIRECTORY_DEFAULT = "/tmp/tally-patroni"


def _add_directory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        default=DIRECTORY_DEFAULT,
        help=f"the cluster directory (default {DIRECTORY_DEFAULT}; under /tmp when root, so"
        " the unprivileged server user can reach it)",
    )


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    from core.drills.patroni import PORT_BASE_DEFAULT

    _add_directory(parser)
    parser.add_argument(
        "--port-base",
        type=int,
        default=PORT_BASE_DEFAULT,
        help="dcN listens on BASE+N (PostgreSQL), BASE+10+N (REST), BASE+20+N and BASE+30+N"
        f" (etcd client, peer); default {PORT_BASE_DEFAULT}",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for health")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    _add_directory(parser)
    parser.add_argument("--json", action="store_true", help="print the status as JSON")


def add_down_arguments(parser: argparse.ArgumentParser) -> None:
    _add_directory(parser)
    parser.add_argument(
        "--remove", action="store_true", help="also delete the cluster directory (all data)"
    )


def _fail(message: str) -> int:
    print(f"tally cluster: {message}", file=sys.stderr)
    return 1


def run_up(args: argparse.Namespace) -> int:
    from core.drills import patroni

    if not 1024 <= args.port_base <= 65535 - 40:
        return _fail(f"--port-base must be in 1024..{65535 - 40}, not {args.port_base}")
    if args.timeout <= 0:
        return _fail(f"--timeout must be > 0, not {args.timeout}")
    try:
        topology = patroni.up(args.dir, args.port_base, timeout_s=args.timeout)
        status = topology.status()
    except ClusterError as error:
        return _fail(str(error))
    _print(status, args.json)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from core.drills import patroni

    try:
        status = patroni.Topology.load(args.dir).status()
    except ClusterError as error:
        return _fail(str(error))
    _print(status, args.json)
    return 0 if any(m.get("role") == "leader" for m in status["members"].values()) else 3


def run_down(args: argparse.Namespace) -> int:
    from core.drills import patroni

    if not os.path.isdir(args.dir):
        return _fail(f"no cluster directory {args.dir}")
    try:
        topology = patroni.Topology.load(args.dir)
    except ClusterError as error:
        return _fail(str(error))
    patroni.down(topology, remove=args.remove)
    print(f"stopped{' and removed' if args.remove else ''}: {topology.directory}")
    return 0


def _print(status: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
        return
    print(f"cluster {status['directory']}")
    print(f"  DSN (leader, read-write): {status['dsn']}")
    print(f"  settings: {status['settings']}")
    members = status["members"]
    assert isinstance(members, dict)
    print(f"  {'member':6} {'region':6} {'role':13} {'state':12} {'TL':>3} {'lag':>6}  REST")
    for name, member in members.items():
        print(
            f"  {name:6} {member.get('region', ''):6} {member.get('role') or '-':13}"
            f" {member.get('state') or '-':12} {member.get('timeline') or '-':>3}"
            f" {'' if member.get('lag') is None else member.get('lag'):>6}  {member.get('rest')}"
        )
