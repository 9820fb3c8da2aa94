"""`tally serve` on a clock the test moves, for tests of what time should (not) change.

Usage: python tests/clock_serve.py OFFSET_FILE <tally serve arguments>

The server is the real one; only the services' clock (`Lifecycle.now_ns`:
business days, token expiry, password locks) is the wall clock plus the
seconds written in OFFSET_FILE (none while it is missing), read at every
call. Request signatures are still checked against the wall clock, so a
test moves the bank a day ahead and keeps signing as usual. The wrapper
lives here, in the tests, and reaches the server through the `now_ns`
seam `Bank` already has: production code carries no clock hook.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable

from channels.http import serve
from core.services.bank import Bank


def offset_clock(path: str) -> Callable[[], int]:
    def now_ns() -> int:
        try:
            with open(path) as file:
                offset_s = float(file.read().strip() or 0)
        except FileNotFoundError:
            offset_s = 0.0
        return time.time_ns() + int(offset_s * 1_000_000_000)

    return now_ns


def main() -> int:
    parser = argparse.ArgumentParser(prog="clock_serve")
    serve.add_arguments(parser)
    args = parser.parse_args(sys.argv[2:])
    serve.Bank = functools.partial(Bank, now_ns=offset_clock(sys.argv[1]))  # type: ignore[misc]
    return serve.run(args)


if __name__ == "__main__":
    sys.exit(main())
