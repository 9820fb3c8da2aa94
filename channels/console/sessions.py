"""Console sessions, CSRF tokens and login throttling, all in memory and bounded.

A session is a random cookie (`secrets.token_urlsafe(32)`, `tally_console`), kept
here under its SHA-256 (a memory dump gives no usable cookie), with its operator,
the client address that logged in, its CSRF token (another random 32 bytes, put in
every form and in htmx's `X-CSRF-Token` header), and two clocks: idle (15 min since
the last request) and absolute (8 h since the login). At most `SESSIONS_MAX`
sessions: the oldest goes when a new one would exceed it. Sessions do not survive a
restart: operators log in again (the audit log, not the session, is the record).

Login throttling: `FAILURES_MAX` failed logins of one operator name within
`FAILURE_WINDOW_S` and that name is refused (429) until the oldest failure leaves
the window, whoever tries, so guessing one operator's password from many addresses
is as slow as from one. The failure times are kept per name, bounded in count
(names beyond `THROTTLED_NAMES_MAX` push out the least recently failed).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

COOKIE: Final = "tally_console"
LANG_COOKIE: Final = "tally_console_lang"
PRELOGIN_COOKIE: Final = "tally_console_login"  # the login form's double-submit token
SESSIONS_MAX: Final = 10_000
IDLE_S: Final = 15 * 60
ABSOLUTE_S: Final = 8 * 3600
FAILURES_MAX: Final = 5
FAILURE_WINDOW_S: Final = 5 * 60
THROTTLED_NAMES_MAX: Final = 10_000
TOKEN_BYTES: Final = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of two tokens (empty never matches)."""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(slots=True)
class Session:
    operator: str
    role: str
    address: str
    csrf: str
    created_s: float
    seen_s: float


class Sessions:
    """The live console sessions (cookie digest -> `Session`), oldest first."""

    def __init__(
        self,
        sessions_max: int = SESSIONS_MAX,
        idle_s: float = IDLE_S,
        absolute_s: float = ABSOLUTE_S,
    ) -> None:
        assert sessions_max >= 1 and idle_s > 0 and absolute_s >= idle_s
        self.sessions_max = sessions_max
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._live: collections.OrderedDict[bytes, Session] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    def open(self, operator: str, role: str, address: str, now_s: float) -> tuple[str, Session]:
        """A new session: its cookie value (given to the browser once) and its record."""
        while len(self._live) >= self.sessions_max:
            self._live.popitem(last=False)
        token = new_token()
        session = Session(operator, role, address, new_token(), now_s, now_s)
        self._live[_digest(token)] = session
        return token, session

    def get(self, token: str, now_s: float) -> Session | None:
        """The live session of cookie `token` (None: none, idle too long, too old); a
        found session's idle clock restarts."""
        if not token or len(token) > 128:
            return None
        key = _digest(token)
        session = self._live.get(key)
        if session is None:
            return None
        if now_s - session.seen_s > self.idle_s or now_s - session.created_s > self.absolute_s:
            del self._live[key]
            return None
        session.seen_s = now_s
        return session

    def close(self, token: str) -> Session | None:
        return self._live.pop(_digest(token), None) if token else None

    def close_operator(self, operator: str) -> int:
        """End every session of `operator` (disabled, or its role changed)."""
        keys = [key for key, session in self._live.items() if session.operator == operator]
        for key in keys:
            del self._live[key]
        return len(keys)

    def prune(self, now_s: float) -> int:
        """Forget the sessions past their idle or absolute time (the housekeeping tick)."""
        expired = [
            key
            for key, session in self._live.items()
            if now_s - session.seen_s > self.idle_s or now_s - session.created_s > self.absolute_s
        ]
        for key in expired:
            del self._live[key]
        return len(expired)


class LoginThrottle:
    """Failed logins per operator name in a sliding window (see the module docstring)."""

    def __init__(
        self,
        failures_max: int = FAILURES_MAX,
        window_s: float = FAILURE_WINDOW_S,
        names_max: int = THROTTLED_NAMES_MAX,
    ) -> None:
        assert failures_max >= 1 and window_s > 0 and names_max >= 1
        self.failures_max = failures_max
        self.window_s = window_s
        self.names_max = names_max
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )
        self._refused: dict[str, float] = {}  # name -> until when its refusal is recorded

    def wait_s(self, name: str, now_s: float) -> float:
        """0 if `name` may try to log in now, else the seconds until it may."""
        times = self._failures.get(name)
        if times is None:
            return 0.0
        while times and now_s - times[0] >= self.window_s:
            times.popleft()
        if not times:
            del self._failures[name]
            return 0.0
        if len(times) < self.failures_max:
            return 0.0
        return max(0.001, times[0] + self.window_s - now_s)

    def failed(self, name: str, now_s: float) -> None:
        times = self._failures.pop(name, None)
        if times is None:
            times = collections.deque(maxlen=self.failures_max)
            while len(self._failures) >= self.names_max:
                self._failures.popitem(last=False)
        times.append(now_s)
        self._failures[name] = times  # most recently failed last

    def first_refusal(self, name: str, now_s: float) -> bool:
        """Whether this is the first refusal of `name` since its failures filled the
        window (the audit records that one, not every attempt after it)."""
        if self._refused.get(name, 0.0) > now_s:
            return False
        if len(self._refused) >= self.names_max:
            self._refused.clear()
        self._refused[name] = now_s + self.window_s
        return True

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)
        self._refused.pop(name, None)

    def prune(self, now_s: float) -> None:
        stale = [
            name for name, times in self._failures.items() if now_s - times[-1] >= self.window_s
        ]
        for name in stale:
            del self._failures[name]
        for name in [name for name, until in self._refused.items() if until <= now_s]:
            del self._refused[name]
