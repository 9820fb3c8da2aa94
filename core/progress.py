"""A progress bar for long commands (benchmarks, simulator runs), drawn on stderr.

It draws only for a person watching a terminal: when stderr is a TTY and CI is unset. Anywhere
else it stays silent, so logs, pipes and captured test output get no carriage returns. It
redraws at most every `redraw_interval_s`, so calling `advance` in a hot loop costs a clock read.

    with Progress(total=transfer_count, label="posting") as progress:
        for batch in batches:
            post(batch)
            progress.advance(len(batch))
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """Counts items done out of `total` and shows percent, rate and ETA while it runs."""

    def __init__(
        self,
        total: int,
        label: str,
        *,
        stream: TextIO | None = None,
        redraw_interval_s: float = 0.1,
    ) -> None:
        assert total >= 0, f"total must be >= 0, got {total}"
        assert redraw_interval_s >= 0, f"redraw_interval_s must be >= 0, got {redraw_interval_s}"
        self.total = total
        self.label = label
        self.done_count = 0
        self._stream = sys.stderr if stream is None else stream
        self.enabled = self._stream.isatty() and "CI" not in os.environ
        self._redraw_interval_s = redraw_interval_s
        self._start_s = time.monotonic()
        self._drawn_s = self._start_s

    def __enter__(self) -> Progress:
        self._start_s = time.monotonic()
        self._drawn_s = self._start_s
        if self.enabled:
            self._draw(self._start_s, finished=False)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.enabled:
            # Leave the last figures on screen and the cursor on a fresh line, error or not.
            self._draw(time.monotonic(), finished=exc_type is None)
            self._stream.write("\n")
            self._stream.flush()

    def advance(self, count: int = 1) -> None:
        """Record `count` more items done."""
        assert count >= 0, f"count must be >= 0, got {count}"
        self.done_count += count
        if self.enabled:
            now_s = time.monotonic()
            if now_s - self._drawn_s >= self._redraw_interval_s:
                self._draw(now_s, finished=False)

    def _draw(self, now_s: float, *, finished: bool) -> None:
        self._drawn_s = now_s
        elapsed_s = now_s - self._start_s
        done_count = min(self.done_count, self.total)
        percent = 100.0 if self.total == 0 else 100.0 * done_count / self.total
        rate_per_s = self.done_count / elapsed_s if elapsed_s > 0 else 0.0
        if finished:
            timing = f"in {_duration(elapsed_s)}"
        elif rate_per_s > 0:
            timing = f"ETA {_duration((self.total - done_count) / rate_per_s)}"
        else:
            timing = "ETA --:--"
        line = (
            f"{self.label} {percent:5.1f}% {done_count}/{self.total}"
            f" {_quantity(rate_per_s)}/s {timing}"
        )
        # \r returns to the line start, \x1b[K erases what a longer previous line left behind.
        self._stream.write(f"\r{line}\x1b[K")
        self._stream.flush()


def _quantity(value: float) -> str:
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return f"{value:.0f}"


def _duration(duration_s: float) -> str:
    minutes, seconds = divmod(round(duration_s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
