"""Channel-tier services every protocol adapter shares: rate limits, replay
protection, the limit on failed authentication per client address, and the
guard that lets one Idempotency-Key be in flight at a time.

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


class AuthFailures:
    """A token bucket of failed authentications per client address (the HTTP app keys
    it by address and the channel the request names).

    Each failed authentication (bad or missing signature, unknown channel or
    key, stale timestamp, reused nonce) takes a token from its address's
    bucket (`burst` tokens, refilled at `rate_per_s`); an address whose bucket
    is empty is refused before anything else is done for it (429 with
    Retry-After) until a token is due. An address that never fails has no
    bucket, so the check on every request is one lookup in a dict that is
    empty while nobody fails. At most `addresses_max` buckets are kept: when
    full, the full ones are dropped (they would refuse nothing), then the
    oldest (an attacker with that many addresses is not slowed further by a
    per-address limit, and the memory stays bounded).
    """

    __slots__ = ("addresses_max", "buckets", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, addresses_max: int = 65536) -> None:
        assert rate_per_s > 0 and burst >= 1 and addresses_max >= 1
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.addresses_max = addresses_max
        self.buckets: dict[str, list[float]] = {}  # address -> [tokens, last_s]

    def wait_s(self, address: str, now_s: float) -> float:
        """0 if `address` may be heard, else the seconds until its next token is due."""
        bucket = self.buckets.get(address)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket[0] + (now_s - bucket[1]) * self.rate_per_s)
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / self.rate_per_s

    def failed(self, address: str, now_s: float) -> None:
        """Count one failed authentication from `address`."""
        bucket = self.buckets.get(address)
        if bucket is None:
            if len(self.buckets) >= self.addresses_max:
                self.prune(now_s)
            self.buckets[address] = [self.burst - 1.0, now_s]
            return
        tokens = min(self.burst, bucket[0] + (now_s - bucket[1]) * self.rate_per_s)
        bucket[0] = max(0.0, tokens - 1.0)
        bucket[1] = now_s

    def prune(self, now_s: float) -> None:
        """Drop the buckets that have refilled; if none has, the oldest half."""
        full = [
            address
            for address, (tokens, last_s) in self.buckets.items()
            if tokens + (now_s - last_s) * self.rate_per_s >= self.burst
        ]
        if not full and len(self.buckets) >= self.addresses_max:
            full = list(self.buckets)[: max(1, len(self.buckets) // 2)]
        for address in full:
            del self.buckets[address]


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
