"""Transaction passwords: 6 digits, stored as a keyed, salted scrypt hash, never logged.

scrypt (RFC 7914) is memory-hard, so a stolen state file does not give up
the one million possible passwords cheaply; and its input is
HMAC-SHA256(pepper, password) with the server's `password_pepper`
(`core.services.server_secrets`, a file outside the data directory), so a
stolen data directory alone allows no offline guessing at all. The
parameters (n, r, p) come from the settings and are stored with each hash,
with the pepper's id (a keyed fingerprint, not the pepper), so they can be
raised without invalidating old hashes: a hash with other parameters, or an
unpeppered one from before the pepper, still verifies and is rehashed at
the next correct password.

Verifying costs tens of milliseconds of CPU on purpose, so it never runs on
the event loop nor on the engine's worker threads: `HashPool` runs it on its
own bounded pool (a dedicated capacity limiter), and refuses at once when
its wait queue is full instead of letting a burst of password checks delay
every posting behind it.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from core.services.refusals import Code, refused
from core.services.state import Password

PASSWORD_PATTERN = "^[0-9]{6}$"  # for JSON Schema; matched whole (fullmatch), never searched
_PASSWORD_RE = re.compile(r"[0-9]{6}")
SCRYPT_N_DEFAULT = 1 << 14  # about 16 MiB and 30-60 ms per hash on this class of machine
SCRYPT_R = 8
SCRYPT_P = 1
DIGEST_SIZE = 32
SALT_SIZE = 16
SCRYPT_MAXMEM = 256 << 20
BUSY_RETRY_AFTER_S = 1.0
T = TypeVar("T")


def well_formed(password: object) -> bool:
    """Exactly six ASCII digits: no sign, no space, no trailing newline, no other digits."""
    return type(password) is str and _PASSWORD_RE.fullmatch(password) is not None


def pepper_id(pepper: bytes) -> str:
    """A fingerprint of the pepper stored with each hash: says which pepper a hash needs
    (a wrong secrets file is then an error, not every customer's password 'wrong') and
    gives nothing of the pepper away (a keyed hash of a constant)."""
    return hmac.new(pepper, b"tally transaction password pepper id", "sha256").hexdigest()[:16]


def hash_password(
    password: str, pepper: bytes, n: int = SCRYPT_N_DEFAULT, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> Password:
    salt = os.urandom(SALT_SIZE)
    digest = _scrypt(_keyed(password, pepper), salt, n, r, p)
    return Password(salt, digest, n, r, p, pepper_id(pepper))


def check_password(password: str, stored: Password, pepper: bytes) -> bool:
    """Whether `password` is the stored one (an unpeppered hash is checked unpeppered)."""
    secret = _keyed(password, pepper) if stored.pepper_id else password.encode()
    digest = _scrypt(secret, stored.salt, stored.n, stored.r, stored.p)
    return hmac.compare_digest(digest, stored.digest)


def needs_rehash(stored: Password, pepper: bytes, n: int, r: int, p: int) -> bool:
    """A hash made without the pepper or with other parameters than the settings'."""
    return stored.pepper_id != pepper_id(pepper) or (stored.n, stored.r, stored.p) != (n, r, p)


def _keyed(password: str, pepper: bytes) -> bytes:
    return hmac.digest(pepper, password.encode(), "sha256")


def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=DIGEST_SIZE)


# --- weak passwords ------------------------------------------------------------------------

# The PINs people choose most (after the patterns `weakness` tests for itself).
COMMON = frozenset(
    {
        "000000", "123456", "654321", "123123", "112233", "121212", "123321", "147258",
        "147369", "159357", "168168", "258369", "520520", "520131", "521521", "789456",
        "456789", "111222", "135246", "101010", "202020", "666888", "888666",
    }
)  # fmt: skip
_DIGITS = "0123456789"


def weakness(password: str, id_number: str = "") -> str | None:
    """Why `password` (well formed) is too easy to guess, or None. `id_number`: the
    holder's resident id, whose birth date is guessed first."""
    if password in COMMON:
        return "one of the most common passwords"
    if len(set(password)) == 1:
        return "one digit repeated"
    if password in _DIGITS or password in _DIGITS[::-1]:
        return "sequential digits"
    if password[:2] * 3 == password or password[:3] * 2 == password:
        return "a repeated group of digits"
    if len(set(password)) <= 2:
        return "only two different digits"
    if len(id_number) == 18:
        birth = id_number[6:14]  # YYYYMMDD
        yymmdd, mmdd = birth[2:], birth[4:]
        dates = {yymmdd, mmdd + birth[2:4], birth[6:] + birth[4:6] + birth[2:4]}
        if password in dates:
            return "the holder's birth date"
        if password.startswith(mmdd) or password.endswith(mmdd):
            return "contains the holder's birthday (MMDD)"
    return None


def birth_date_of(id_number: str) -> datetime.date | None:
    """The birth date in an 18-digit resident id (for messages and tests), if any."""
    try:
        return datetime.date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
    except ValueError:
        return None


# --- the pool ---------------------------------------------------------------------------------


class HashPool:
    """Password hashing on its own worker threads, with a bounded wait queue.

    At most `threads` hashes run at once (a dedicated `anyio.CapacityLimiter`, not
    the default one that `anyio.to_thread` shares with the engine's fsyncs and
    snapshots), at most `queue_max` more wait; beyond that a check is refused at
    once with PASSWORD_CHECKS_BUSY (503 + Retry-After). `admit()` takes a place
    synchronously (so a caller can refuse before it changes anything), `run` uses
    it, `leave` gives it back. The counters are read by /metrics: `running_max` is
    the most hashes ever seen running at once, measured in the worker threads.
    """

    def __init__(self, threads: int, queue_max: int) -> None:
        assert threads >= 1 and queue_max >= 0, (threads, queue_max)
        self.threads = threads
        self.queue_max = queue_max
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop
        self._lock = threading.Lock()
        self.admitted = 0  # waiting or running now
        self.admitted_max = 0
        self.running = 0
        self.running_max = 0
        self.hashes = 0
        self.refused_busy = 0

    def admit(self) -> None:
        """Take a place in the pool, or refuse (PASSWORD_CHECKS_BUSY) if it is full."""
        if self.admitted >= self.threads + self.queue_max:
            self.refused_busy += 1
            raise refused(
                Code.PASSWORD_CHECKS_BUSY,
                f"{self.admitted} password checks in progress",
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        self.admitted += 1
        self.admitted_max = max(self.admitted_max, self.admitted)

    def leave(self) -> None:
        assert self.admitted > 0
        self.admitted -= 1

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on one of the pool's threads (the caller was admitted)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(
            self._measured, function, *args, limiter=self._limiter
        )

    def _measured(self, function: Callable[..., T], *args: Any) -> T:
        with self._lock:
            self.running += 1
            self.running_max = max(self.running_max, self.running)
        try:
            return function(*args)
        finally:
            with self._lock:
                self.running -= 1
                self.hashes += 1


def default_hash_threads() -> int:
    """Half the CPUs (at least one): the rest stay for the event loop and the engine."""
    return max(1, (os.cpu_count() or 1) // 2)
