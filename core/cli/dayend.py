"""`tally dayend --date D`: run the day-end batch of one business day on a data directory.

It opens the store the way `tally serve` does (the journal of `--data`, or the
PostgreSQL of `--store`; a running server holds the journal's lock, so stop it
first, or let the server run the day-end itself with `--dayend-automatic`),
runs `core.services.dayend.DayEnd.run` (accrual, settlement when due,
maturities, counter rollover, hold expiry), prints each step's counts and
seconds, and closes the store. A progress bar is drawn on a terminal.

Exit status: 0 when the day-end ran or had already run (it says so: nothing is
changed), 1 when it was refused (a day not ended, a skipped day named, a full
transfer log) or the store could not be opened, 2 for bad arguments.
With `--json` the last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from typing import Any

import anyio
import orjson

from core.data import DEFAULT_DEPOSITS_PATH, DEFAULT_RULES_PATH
from core.errors import TallyError
from core.services.dayend import DayEnd, DayEndRefused, DayEndResult
from core.services.lifecycle import Lifecycle, Settings
from core.services.refusals import Refused
from limits.errors import RuleFileError
from limits.rules import load_rules

READY_TIMEOUT_S_DEFAULT = 3600.0  # recovering a 30M-account journal takes minutes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--date",
        required=True,
        type=_date,
        help="the business day that ended, YYYY-MM-DD (in the rules' time zone)",
    )
    parser.add_argument("--data", default=".tally-data", help="data directory of the server")
    parser.add_argument(
        "--store", default=None, help="postgresql://... : the PostgreSQL store instead"
    )
    parser.add_argument("--rules", default=str(DEFAULT_RULES_PATH), help="limit rule file")
    parser.add_argument(
        "--deposits", default=str(DEFAULT_DEPOSITS_PATH), help="deposit catalog file"
    )
    parser.add_argument(
        "--accounts-max", type=int, default=1 << 20, help="account capacity (as tally serve)"
    )
    parser.add_argument(
        "--transfers-max",
        type=int,
        default=1 << 22,
        help="transfer log capacity (as tally serve): the settlement needs room in it",
    )
    parser.add_argument(
        "--retention-s",
        type=float,
        default=86_400.0,
        help="how long a posted transfer stays in the log (as tally serve)",
    )
    parser.add_argument(
        "--ready-timeout-s",
        type=float,
        default=READY_TIMEOUT_S_DEFAULT,
        help="give up when the store is not recovered after this long",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    if args.store is None and not os.path.isdir(args.data):
        # A mistyped directory would otherwise become a new, empty bank with a day-end.
        print(f"tally dayend: no server data directory at {args.data}", file=sys.stderr)
        return 2
    try:
        rules = load_rules(args.rules)
        settings = Settings(
            data_dir=args.data,
            account_capacity=args.accounts_max,
            transfer_capacity=args.transfers_max,
            retention_s=args.retention_s,
            store_dsn=args.store,
            deposits_path=args.deposits,
        )
        lifecycle = Lifecycle(settings, rules)  # reads the catalog (CatalogError: bad file)
    except RuleFileError as error:
        print(f"tally dayend: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        result = anyio.run(_run_dayend, lifecycle, args.date, not args.json, args.ready_timeout_s)
    except DayEndRefused as error:
        if args.json:
            print(orjson.dumps({"date": args.date.isoformat(), **error.to_json()}).decode())
        print(f"tally dayend: refused: {error}", file=sys.stderr)
        return 1
    except (Refused, TallyError, TimeoutError) as error:
        print(f"tally dayend: {_describe(error)}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:  # the store failed to open (a locked journal, ...)
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        if not isinstance(leaf, TallyError):
            raise
        print(f"tally dayend: cannot open the store: {leaf}", file=sys.stderr)
        return 1
    report = {**result.to_json(), "seconds": round(time.perf_counter() - started, 3)}
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        print(_table(result, report))
    return 0


async def _run_dayend(
    lifecycle: Lifecycle, date: datetime.date, progress: bool, ready_timeout_s: float
) -> DayEndResult:
    """Open the store (recovering it), run the day-end, close the store."""

    async def no_openings() -> None:
        return None  # a pending account opening is completed by the server's next start

    outcome: list[DayEndResult | BaseException] = []
    async with anyio.create_task_group() as task_group:
        await task_group.start(lifecycle.serve, no_openings)
        try:
            with anyio.fail_after(ready_timeout_s):
                while not lifecycle.ready:  # noqa: ASYNC110 (readiness is a flag, not an event)
                    await anyio.sleep(0.02)
            outcome.append(await DayEnd(lifecycle).run(date, progress=progress))
        except (DayEndRefused, Refused, TallyError, TimeoutError) as error:
            outcome.append(error)  # raised below, not wrapped in the task group's group
        await lifecycle.flush_at_stop()
        task_group.cancel_scope.cancel()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _describe(error: BaseException) -> str:
    if isinstance(error, Refused):
        return f"{error.refusal.code.name.lower()}: {error.refusal.detail}"
    if isinstance(error, TimeoutError):
        return "the store was not ready in time (--ready-timeout-s)"
    return str(error)


def _table(result: DayEndResult, report: dict[str, Any]) -> str:
    """The human form: a header line, then one line per step."""
    if result.already_done:
        header = f"day-end {result.date.isoformat()}: already done; nothing changed"
    elif result.resumed_from is not None:
        header = f"day-end {result.date.isoformat()}: resumed at {result.resumed_from}"
    else:
        header = f"day-end {result.date.isoformat()}: done in {report['seconds']} s"
    lines = [header]
    for outcome in result.steps:
        details = " ".join(f"{key}={value}" for key, value in outcome.details.items())
        due = "" if outcome.due else " (not due)"
        lines.append(
            f"  {outcome.step:<11} {outcome.count:>12}  {outcome.seconds:>10.3f} s{due}"
            + (f"  {details}" if details else "")
        )
    return "\n".join(lines)
