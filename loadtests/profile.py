"""The shape of a campaign day, scaled to a run: plain Python, no Locust (tests import it)."""

from __future__ import annotations

import math


def diurnal_fraction(progress: float) -> float:
    """Fraction of the peak users at `progress` (0..1) of the run: the day, then midnight."""
    if progress < 0.8:
        hour = 6 + 18 * progress / 0.8  # 06:00 .. 24:00
        base = 0.08 + 0.12 * min(1.0, (hour - 6) / 3)  # waking up
        lunch = 0.35 * math.exp(-(((hour - 12.5) / 1.5) ** 2))
        evening = 0.4 * math.exp(-(((hour - 20.5) / 1.8) ** 2))
        return min(1.0, base + lunch + evening)
    minutes = (progress - 0.8) / 0.2  # 0 .. 1 of the campaign's first "minutes"
    if minutes <= 0.25:
        return 1.0  # the burst just after midnight: everyone at once
    return max(0.25, math.exp(-3.0 * (minutes - 0.25)))
