"""Channel-tier services every protocol adapter shares: rate limits, replay
protection, and the guard that lets one Idempotency-Key be in flight at a time.

None of them is a business rule: they protect the middle office from a
channel's traffic, whatever protocol it speaks.
"""

from __future__ import annotations

import time

from channels.registry import Registry
from core.services.lifecycle import Lifecycle


class RateLimiter:
    """A token bucket per channel: `rate_per_s` sustained, `burst` at once."""

    __slots__ = ("burst", "last_s", "rate_per_s", "tokens")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last_s = time.monotonic()

    def take(self, now_s: float) -> float:
        """0 if the request may go, else the seconds until a token is due."""
        if self.rate_per_s <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now_s - self.last_s) * self.rate_per_s)
        self.last_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class RateLimits:
    """One `RateLimiter` per registered channel."""

    def __init__(self, registry: Registry) -> None:
        self.limiters = {
            name: RateLimiter(entry.rate_per_s, entry.burst)
            for name, entry in registry.channels.items()
        }

    def take(self, channel: str, now_s: float) -> float:
        return self.limiters[channel].take(now_s)


class ReplayGuard:
    """A signed request's nonce is accepted once within the signature window."""

    def __init__(self, core: Lifecycle) -> None:
        self.core = core  # the nonces live in the customer state, opened by the lifecycle

    def first_use(self, channel: str, nonce: str, timestamp_s: int) -> bool:
        """True (and the nonce remembered) unless `nonce` was already used."""
        state = self.core.customer_state()
        if state.nonce_seen(channel, nonce):
            return False
        state.add_nonce(channel, nonce, timestamp_s)
        return True


class InFlight:
    """The (channel, Idempotency-Key) pairs whose first request is still being answered."""

    __slots__ = ("keys",)

    def __init__(self) -> None:
        self.keys: set[tuple[int, str]] = set()
