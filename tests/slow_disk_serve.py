"""`tally serve` on a slow disk, for tests that need a request to stay in flight.

Usage: python tests/slow_disk_serve.py DELAY_MS <tally serve arguments>

The server is the real one; only its journal is wrapped so that every append
first waits DELAY_MS (what a slow or saturated disk does). The wrapper lives
here, in the tests, and reaches the server through the services' own
`open_journal` seam: production code carries no delay hook.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Sequence
from typing import Any

from channels.http import serve
from core.journal import Journal
from core.services.bank import Bank


class SlowJournal:
    """A journal whose every append first waits `delay_s`."""

    def __init__(self, journal: Journal, delay_s: float) -> None:
        self.journal = journal
        self.delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self.journal, name)

    def append(self, entries: Sequence[Any]) -> None:
        time.sleep(self.delay_s)
        self.journal.append(entries)


def main() -> int:
    delay_s = float(sys.argv[1]) / 1000
    parser = argparse.ArgumentParser(prog="slow_disk_serve")
    serve.add_arguments(parser)
    args = parser.parse_args(sys.argv[2:])
    serve.Bank = functools.partial(  # type: ignore[misc]
        Bank, open_journal=lambda directory: SlowJournal(Journal.open(directory), delay_s)
    )
    return serve.run(args)


if __name__ == "__main__":
    sys.exit(main())
