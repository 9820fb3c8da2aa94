"""A file an operator edits while the bank runs: read whole and stable, re-read when changed.

The limit rule file (`limits.rules.RuleFile`) and the deposit catalog
(`limits.deposits.CatalogFile`) are both one of these: `WatchedFile` reads a
version of the file only if it did not change while being read, keeps the
value in force until a new version parses and passes the kind's reload check,
and reports a bad version once (its error raised to the caller, `last_error`
keeping it) while the old value stays. Each kind says how it parses, checks a
reload and words its errors.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from .errors import RuleFileError

# Identity of one version of the file: (st_dev, st_ino, st_mtime_ns, st_size).
# The inode is there because an atomic rename-into-place may keep both the
# size and, on coarse clocks, the mtime.
Stamp = tuple[int, int, int, int]

# Builds the kind's error from one message about the file at `path`.
ErrorOf = Callable[[str, str], RuleFileError]


class Digested(Protocol):
    @property
    def digest(self) -> str: ...


ValueT = TypeVar("ValueT", bound=Digested)


def stamp_of(status: os.stat_result) -> Stamp:
    return (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)


def read_once(path: str, error_of: ErrorOf) -> tuple[Stamp, bytes] | None:
    """Read the file; None if it changed while being read."""
    with open(path, "rb") as file:
        before = os.fstat(file.fileno())
        if not stat.S_ISREG(before.st_mode):
            raise error_of(path, "not a regular file")
        data = file.read()
        after = os.fstat(file.fileno())
    stamp = stamp_of(before)
    if stamp_of(after) != stamp or len(data) != before.st_size:
        return None
    return stamp, data


def read_stable(path: str, error_of: ErrorOf, kind: str) -> tuple[Stamp, bytes]:
    """A version of the file that did not change while it was read (three tries)."""
    for _ in range(3):
        try:
            read = read_once(path, error_of)
        except OSError as error:
            raise read_error(path, error, error_of, kind) from error
        if read is not None:
            return read
    raise error_of(path, "the file kept changing while being read; replace it atomically (rename)")


def read_error(path: str, error: OSError, error_of: ErrorOf, kind: str) -> RuleFileError:
    reason = error.strerror or str(error)
    return error_of(path, f"cannot read the {kind} file: {reason}")


class WatchedFile(Generic[ValueT]):
    """The value of a file in force, and its re-reading (`_reload`).

    Subclasses give `KIND` (the file's name in messages), `_error_of` and `_parse`,
    and call `_reload` with their reload check. Not thread-safe: call it from the
    engine's owner only.
    """

    KIND = "configuration"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        stamp, data = read_stable(self._path, self._error_of, self.KIND)
        self._value: ValueT = self._parse(data, self._path)
        self._stamp: Stamp | None = stamp
        self.last_error: RuleFileError | None = None

    @staticmethod
    def _error_of(path: str, message: str) -> RuleFileError:
        return RuleFileError([f"{path}: {message}"])

    def _parse(self, data: bytes, path: str) -> ValueT:
        raise NotImplementedError

    @property
    def path(self) -> str:
        return self._path

    def _reload(self, check: Callable[[ValueT, ValueT, bytes], None]) -> bool:
        """Re-read the file if it changed; True if a new value is in force. `check(current,
        new, data)` raises the kind's error for a reload it refuses. Raises that error, or a
        parse or read error (keeping the value in force), the first time a new version of
        the file is bad or unreadable."""
        try:
            status = os.stat(self._path)
        except OSError as error:
            return self._reject(None, read_error(self._path, error, self._error_of, self.KIND))
        if stamp_of(status) == self._stamp:
            return False
        try:
            read = read_once(self._path, self._error_of)
        except OSError as error:
            return self._reject(None, read_error(self._path, error, self._error_of, self.KIND))
        except RuleFileError as error:
            return self._reject(None, error)
        if read is None:
            return False  # being written: look again on the next call
        stamp, data = read
        try:
            value = self._parse(data, self._path)
            check(self._value, value, data)
        except RuleFileError as error:
            return self._reject(stamp, error)
        self._stamp = stamp
        self.last_error = None
        if value.digest == self._value.digest:
            return False  # touched, or edited back to what is in force
        self._value = value
        return True

    def _reject(self, stamp: Stamp | None, error: RuleFileError) -> bool:
        if stamp == self._stamp and self.last_error is not None:
            return False  # this version was already reported
        self._stamp = stamp
        self.last_error = error
        raise error
