"""`tally db migrate` and `tally db verify`: the PostgreSQL store's schema and books.

`migrate` applies the missing migrations under the advisory lock (engines
also do this at start). `verify` recomputes every account's posted and
pending amounts from `tally_transfers`, compares them with `tally_accounts`
(both views: over the stored transfer records, and over the compacted
accounts and their newer versions),
replays `tally_entries` into the kernels and compares every account row and
every transfer of the idempotency window with the tables byte for byte.
Exit status 0 only if everything agrees.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
import orjson

from core.errors import TallyError

DSN_ENV = "TALLY_PG_DSN"


def _add_dsn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        default=os.environ.get(DSN_ENV),
        help=f"postgresql://... (default: ${DSN_ENV})",
    )


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_dsn(parser)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    _add_dsn(parser)
    parser.add_argument("--accounts-max", type=int, default=1 << 20, help="account capacity")
    parser.add_argument("--transfers-max", type=int, default=1 << 22, help="transfer log capacity")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _dsn(args: argparse.Namespace) -> str | None:
    if not args.dsn:
        print(f"tally db: no database: pass --dsn or set {DSN_ENV}", file=sys.stderr)
        return None
    return str(args.dsn)


def run_migrate(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    if dsn is None:
        return 2

    async def main() -> list[int]:
        import asyncpg

        from core.pg_schema import migrate

        connection = await asyncpg.connect(dsn)
        try:
            return await migrate(connection)
        finally:
            await connection.close()

    try:
        applied = anyio.run(main)
    except (TallyError, OSError) as error:
        print(f"tally db migrate: {error}", file=sys.stderr)
        return 1
    print(f"applied migrations {applied}" if applied else "schema is up to date")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    if dsn is None:
        return 2

    async def main() -> dict[str, object]:
        import asyncpg

        from core.pg_store import verify

        connection = await asyncpg.connect(dsn)
        try:
            report = await verify(connection, args.accounts_max, args.transfers_max)
        finally:
            await connection.close()
        return report.as_dict()

    try:
        report = anyio.run(main)
    except (TallyError, OSError) as error:
        print(f"tally db verify: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(
            f"{'OK' if report['ok'] else 'MISMATCH'}: epoch {report['epoch']}, last seq"
            f" {report['last_seq']}, {report['accounts']} accounts, {report['transfers']}"
            f" transfers, debits {report['debits_posted_total']} = credits"
            f" {report['credits_posted_total']}, digest {report['digest']}"
            f" ({report['seconds']} s)"
        )
        for line in [*report["balance_mismatches"], *report["kernel_mismatches"]]:  # type: ignore[misc]
            print(f"  {line}")
    return 0 if report["ok"] else 1
