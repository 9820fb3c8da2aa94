"""A progress bar for long commands (benchmarks, simulator runs): tqdm, drawn on stderr.

It draws only for a person watching a terminal: when the stream is a TTY and CI is unset.
Anywhere else it stays silent, so logs, pipes and captured test output get no carriage
returns. tqdm redraws at most every `mininterval` seconds, so `update` in a hot loop costs
little more than a clock read.

    with progress_bar(transfer_count, "posting") as progress:
        for batch in batches:
            post(batch)
            progress.update(len(batch))
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn, TextIO

from tqdm import tqdm

REDRAW_INTERVAL_S = 0.1


def progress_bar(total: int, label: str, *, stream: TextIO | None = None) -> tqdm[NoReturn]:
    """A bar counting `total` items under `label`, with rate and ETA; silent off a terminal."""
    assert total >= 0, f"total must be >= 0, got {total}"
    out = sys.stderr if stream is None else stream
    return tqdm(
        total=total,
        desc=label,
        file=out,
        disable=not out.isatty() or "CI" in os.environ,
        mininterval=REDRAW_INTERVAL_S,
        unit_scale=True,
        dynamic_ncols=True,
        leave=True,
    )
