"""The embedded journal: an append-only, checksummed log of engine entries in segment files.

Durability is the point: an entry the journal has acknowledged (its `append`
returned) survives any crash, and recovery never guesses.

Layout on disk. The data directory holds segment files
`journal-<first_seq:020d>.tlj`, each preallocated (`posix_fallocate`, 64 MiB
by default, so appends do not grow the file and the unwritten part reads as
zeros) and holding whole records back to back. A record is one engine entry
(`core.entries.Entry`): a 64-byte little-endian header and the opaque payload.

     0  u32 magic b"TLJ1"      4  u32 crc32c over bytes 8..63, then the payload
     8  u64 seq (+1 per record from 1)   16  u64 timestamp_first (engine ns)
    24  u32 payload_size      28  u16 kind      30 u16 business_day
    32  u32 count             36  u32 reserved (0)
    40  u64 epoch (fencing, 0 for now)   48  u64 group_first_seq   56 u64 reserved (0)

`group_first_seq` is the seq of the first record of the group the record was
written with (one write, one fdatasync). The end of the log is the first
position in the last segment that does not hold a valid record; a record
never spans segments, and a group never does either (a segment is rotated
before a group that does not fit, and sized to fit a larger one).

Recovery (`Journal.open`, read-only: `JournalScan`) reads every segment in
order and checks every record (checksum, seq + 1, header fields, the entry's
own assertions). Where the valid records stop it tells a crash from damage:

- Only zeros follow: the clean end of the log.
- Non-zero bytes follow, in the last segment, and every valid record found
  after the stop point belongs to the group of the missing seq
  (`group_first_seq <= missing seq`): a torn last group. The disk may
  persist the pages of one write in any order, so a crash during the last
  group's write can leave a later record of it whole and an earlier one
  not; none of that group was acknowledged (its fdatasync did not return).
  `Journal.open` zeroes from the stop point to the last non-zero byte and
  fdatasyncs, so the next append lands on a clean tail.
- Anything else is `JournalCorrupt`, naming the segment file and byte
  offset: damage in a segment that is not the last, a valid record of a
  *later* group after the stop point (that later group was only written
  after the damaged record's group was acknowledged), a valid record with
  the wrong seq, a segment whose name does not continue the sequence.

The one case no log can tell apart is damage inside the last group after it
was acknowledged: it reads exactly like a torn write and is truncated. Bit
flips anywhere else are caught.

`Journal.append` is synchronous and blocking (a write and an fdatasync): the
store calls it on the event loop while the disk is fast, else from a worker
thread (core/journal_store.py), one call at a time. One process
appends: `Journal.open` takes an flock on `journal.lock`. Epochs never
decrease along the log; a writer with an older epoch than the last record
is refused (fencing).

A write that fails (`JournalWriteError`: ENOSPC, EDQUOT, EIO, EFBIG on the
write, the fdatasync or a new segment) poisons the writer: after a failed
fdatasync the page cache may hold bytes that never reached the disk, marked
clean, so a later fdatasync proves nothing about them and a scan would read
them back as if they were durable. The bytes of the failed group are the
*unsynced tail*: never acknowledged, and never to be trusted.
`discard_unsynced` zeroes that range (new dirty pages over whatever the
cache holds) and fdatasyncs; only once that returned may the journal be
closed and reopened (the engine's state is then rebuilt from what is on
disk, so nothing unacknowledged is kept and nothing is applied twice).
`probe_writable` checks that the disk can take a new segment again.

Files are private: the directory is 0700 and every file 0600
(`ensure_private_directory`), because the journal holds customer data.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import itertools
import os
import re
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from cext import journal_codec as codec
from core.entries import Entry, EntryKind
from core.errors import TallyError

HEADER_SIZE = 64
assert codec.HEADER_SIZE == HEADER_SIZE
MAGIC = b"TLJ1"
SEGMENT_SIZE_DEFAULT = 64 << 20
SEGMENT_SIZE_MIN = 4096
PAYLOAD_SIZE_MAX = 0xFFFFFFFF
SEGMENT_PATTERN = re.compile(r"journal-(\d{20})\.tlj")
TEMP_SUFFIX = ".tmp"
LOCK_NAME = "journal.lock"
LOCK_TIMEOUT_S_DEFAULT = 30.0
LOCK_POLL_S = 0.01
ZERO_CHUNK_SIZE = 1 << 20
FSYNC_SAMPLES_MAX = 65536
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
DIRECTORY_MODE = 0o700  # the data directory: customer data, password hashes
FILE_MODE = 0o600  # every file in it
PROBE_NAME = "journal-probe.tmp"  # removed with the other temp files at open

# Descriptors of the writer locks this process holds: a forked snapshot child keeps
# these open (and with them the lock) and closes everything else it inherited.
LOCK_FDS_HELD: set[int] = set()

# The journal's record kinds are the engine's entry kinds: one enum, never renumbered.
RecordKind = EntryKind
Record = Entry
KIND_VALUES = frozenset(int(kind) for kind in EntryKind)


class JournalError(TallyError):
    """The journal cannot be opened, read or written (I/O error, lock held)."""


class JournalWriteError(JournalError):
    """A write, an fdatasync or a new segment failed (disk full, quota, I/O error).

    The journal is not damaged: what was acknowledged is on disk. `errno` is
    the OS error number. See the module docstring for what must happen next.
    """

    def __init__(self, message: str, errno_value: int | None) -> None:
        super().__init__(message)
        self.errno = errno_value


class JournalLocked(JournalError):
    """Another process has the journal open for writing."""


class JournalCorrupt(JournalError):
    """Damage a crash cannot explain: the engine must refuse to start.

    `segment` is the file and `offset` the byte offset of the first bad record.
    """

    def __init__(self, segment: str, offset: int, reason: str) -> None:
        super().__init__(f"journal corrupt: {segment} at byte offset {offset}: {reason}")
        self.segment = segment
        self.offset = offset
        self.reason = reason


def segment_name(first_seq: int) -> str:
    assert first_seq >= 1, first_seq
    return f"journal-{first_seq:020d}.tlj"


def list_segments(directory: str) -> list[tuple[int, str]]:
    """(first_seq, path) of every segment file in `directory`, in seq order."""
    segments = []
    for name in os.listdir(directory):
        match = SEGMENT_PATTERN.fullmatch(name)
        if match is not None:
            segments.append((int(match.group(1)), os.path.join(directory, name)))
    segments.sort()
    return segments


def fsync_directory(directory: str) -> None:
    """Make the directory's entries (created, renamed, removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_private_directory(directory: str) -> list[str]:
    """Create `directory` 0700, or tighten an existing one to 0700 and its files to 0600.

    Returns what was tightened (for the log). A directory another user owns
    is refused: its owner could read what is written in it whatever its mode.
    Only the directory's own entries are tightened, not subdirectories' (the
    journal and its snapshots are flat).
    """
    try:
        os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
        status = os.stat(directory)
        if status.st_uid != os.geteuid():
            raise JournalError(
                f"data directory {directory} is owned by uid {status.st_uid}, not by this"
                f" process (uid {os.geteuid()}): refusing to keep customer data in it"
            )
        tightened = []
        if status.st_mode & 0o777 != DIRECTORY_MODE:
            os.chmod(directory, DIRECTORY_MODE)
            tightened.append(f"{directory} {status.st_mode & 0o777:o}->{DIRECTORY_MODE:o}")
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            entry = os.stat(path, follow_symlinks=False)
            if stat.S_ISREG(entry.st_mode) and entry.st_mode & 0o077:
                os.chmod(path, entry.st_mode & 0o700)
                tightened.append(f"{path} {entry.st_mode & 0o777:o}->{entry.st_mode & 0o700:o}")
    except OSError as error:
        raise JournalError(f"cannot make data directory {directory} private: {error}") from error
    return tightened


def probe_writable(directory: str, size: int) -> None:
    """Raise `JournalWriteError` unless a `size`-byte file can be allocated, written and
    fdatasynced in `directory` now (the next segment's worth: what a full disk refuses)."""
    path = os.path.join(directory, PROBE_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            os.posix_fallocate(fd, 0, size)
            os.pwrite(fd, b"probe", 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError as error:
        raise JournalWriteError(
            f"journal directory {directory} cannot take {size} bytes: {error}", error.errno
        ) from error


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as read back: its entry and where it lives."""

    seq: int
    epoch: int
    group_first_seq: int
    entry: Entry
    segment: str
    offset: int

    @property
    def size(self) -> int:
        return HEADER_SIZE + len(self.entry.payload)


@dataclass(slots=True)
class SegmentInfo:
    path: str
    first_seq: int
    file_size: int
    record_count: int = 0
    end_offset: int = 0  # byte offset just past the last valid record

    @property
    def last_seq(self) -> int:
        """Seq of the segment's last record (first_seq - 1 if it has none)."""
        return self.first_seq + self.record_count - 1


@dataclass(frozen=True, slots=True)
class TornTail:
    """Where a crash cut the last group short; everything from `offset` on is dropped."""

    segment: str
    offset: int  # first byte that is not part of a valid record
    dirty_end: int  # one past the last non-zero byte of the segment
    missing_seq: int  # the first seq that is not there
    reason: str
    dropped_records: tuple[int, ...]  # seqs of whole records of the torn group found past it


class JournalScan:
    """Read and check a journal directory without changing it.

    Iterate over it for the records (seq order, each checked), or call `run()`;
    afterwards `segments`, `first_seq`, `last_seq`, `kind_counts` and
    `torn_tail` describe what was found. Raises `JournalCorrupt` on damage.
    Records with seq below `from_seq` are checked but not yielded.
    """

    def __init__(self, directory: str | os.PathLike[str], *, from_seq: int = 1) -> None:
        self.directory = os.fspath(directory)
        self.from_seq = from_seq
        self.segments: list[SegmentInfo] = []
        self.first_seq = 0  # first seq the journal holds (or would hold next, when empty)
        self.last_seq = 0
        self.record_count = 0
        self.byte_count = 0
        self.kind_counts: Counter[EntryKind] = Counter()
        self.torn_tail: TornTail | None = None
        self.epoch_last = 0  # epoch of the last record
        self.temp_files: list[str] = []
        self.complete = False

    def run(self) -> JournalScan:
        for _ in self:
            pass
        return self

    def __iter__(self) -> Iterator[StoredRecord]:
        if not os.path.isdir(self.directory):
            raise JournalError(f"journal directory {self.directory} does not exist")
        self.temp_files = sorted(
            os.path.join(self.directory, name)
            for name in os.listdir(self.directory)
            if name.startswith("journal-") and name.endswith(TEMP_SUFFIX)
        )
        found = list_segments(self.directory)
        expected_seq = found[0][0] if found else 1
        self.first_seq = expected_seq
        self.last_seq = expected_seq - 1
        epoch_last = 0
        for index, (first_seq, path) in enumerate(found):
            is_last = index == len(found) - 1
            if first_seq != expected_seq:
                raise JournalCorrupt(
                    path,
                    0,
                    f"segment should start at seq {expected_seq} (the previous segment ends at"
                    f" seq {expected_seq - 1}) but is named for seq {first_seq}",
                )
            data = _read_file(path)
            segment = SegmentInfo(path, first_seq, len(data))
            self.segments.append(segment)
            offset = 0
            while True:
                record = _decode_record(data, offset, path)
                if record is None:
                    break
                seq, epoch, group_first_seq, entry = record
                if seq != expected_seq:
                    raise JournalCorrupt(
                        path, offset, f"record has seq {seq}, expected seq {expected_seq}"
                    )
                if not (1 <= group_first_seq <= seq):
                    raise JournalCorrupt(
                        path, offset, f"seq {seq} names group first seq {group_first_seq}"
                    )
                if epoch < epoch_last:
                    raise JournalCorrupt(
                        path, offset, f"seq {seq} has epoch {epoch} after epoch {epoch_last}"
                    )
                epoch_last = self.epoch_last = epoch
                entry.check()  # pair assertion: checked before it was written, and now
                size = HEADER_SIZE + len(entry.payload)
                segment.record_count += 1
                segment.end_offset = offset + size
                self.record_count += 1
                self.byte_count += size
                self.kind_counts[entry.kind] += 1
                self.last_seq = seq
                if seq >= self.from_seq:
                    yield StoredRecord(seq, epoch, group_first_seq, entry, path, offset)
                offset += size
                expected_seq += 1
            self.torn_tail = _judge_tail(data, offset, path, expected_seq, is_last)
            del data
        self.complete = True


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb", buffering=0) as file:
            return file.read()
    except FileNotFoundError as error:
        raise JournalError(
            f"journal segment {path} disappeared while being read (removed after a snapshot"
            " by a running writer?): read again"
        ) from error
    except OSError as error:
        raise JournalError(f"cannot read journal segment {path}: {error}") from error


def _decode_record(data: bytes, offset: int, path: str) -> tuple[int, int, int, Entry] | None:
    """The valid record at `offset`, or None where the valid records stop."""
    if offset + HEADER_SIZE > len(data):
        return None
    (
        magic_ok,
        crc,
        seq,
        timestamp_first,
        payload_size,
        kind,
        business_day,
        count,
        reserved_a,
        epoch,
        group_first_seq,
        reserved_b,
    ) = codec.decode_header(data, offset)
    if not magic_ok or offset + HEADER_SIZE + payload_size > len(data):
        return None
    if codec.record_crc(data, offset, payload_size) != crc:
        return None
    # The checksum holds: what follows was written by a journal. A field it would
    # never write means a newer format or a bug, not a torn write.
    if reserved_a != 0 or reserved_b != 0:
        raise JournalCorrupt(path, offset, f"seq {seq} has non-zero reserved header fields")
    if kind not in KIND_VALUES:
        raise JournalCorrupt(path, offset, f"seq {seq} has unknown kind {kind}")
    payload = data[offset + HEADER_SIZE : offset + HEADER_SIZE + payload_size]
    entry = Entry(EntryKind(kind), timestamp_first, business_day, count, payload)
    return seq, epoch, group_first_seq, entry


def _judge_tail(
    data: bytes, stop: int, path: str, missing_seq: int, is_last: bool
) -> TornTail | None:
    """Decide what the bytes after the last valid record of a segment are (module docstring)."""
    dirty_start = codec.first_nonzero(data, stop)
    if dirty_start == len(data):
        return None  # zeros to the end: the clean end of the segment
    if data[stop : stop + 4] == MAGIC:
        reason = f"record for seq {missing_seq} is torn or fails its checksum"
    elif dirty_start >= stop + HEADER_SIZE:
        reason = f"zero header where seq {missing_seq} belongs, with data after it"
    else:
        reason = f"no valid record header where seq {missing_seq} belongs"
    if not is_last:
        raise JournalCorrupt(path, stop, f"{reason}, and a later segment exists")
    dirty_end = codec.last_nonzero_end(data, stop)
    dropped = []
    group_first_seq_torn = 0
    candidate = data.find(MAGIC, stop + 1, dirty_end)
    while candidate >= 0:
        record = _peek_valid(data, candidate)
        if record is not None:
            seq, group_first_seq = record
            if seq <= missing_seq or group_first_seq > missing_seq:
                raise JournalCorrupt(
                    path,
                    stop,
                    f"{reason}, but a whole record follows at byte offset {candidate}"
                    f" (seq {seq}, written in the group from seq {group_first_seq}):"
                    f" seq {missing_seq} was acknowledged before it",
                )
            if group_first_seq_torn and group_first_seq != group_first_seq_torn:
                raise JournalCorrupt(
                    path,
                    stop,
                    f"{reason}; records of two groups follow it (from seq"
                    f" {group_first_seq_torn} and from seq {group_first_seq})",
                )
            group_first_seq_torn = group_first_seq
            dropped.append(seq)
        candidate = data.find(MAGIC, candidate + 1, dirty_end)
    return TornTail(
        segment=path,
        offset=stop,
        dirty_end=dirty_end,
        missing_seq=missing_seq,
        reason=reason,
        dropped_records=tuple(dropped),
    )


def _peek_valid(data: bytes, offset: int) -> tuple[int, int] | None:
    """(seq, group_first_seq) if a record with a valid checksum starts at `offset`."""
    if offset + HEADER_SIZE > len(data):
        return None
    header = codec.decode_header(data, offset)
    magic_ok, crc, seq, payload_size, group_first_seq = (
        header[0],
        header[1],
        header[2],
        header[4],
        header[10],
    )
    if not magic_ok or offset + HEADER_SIZE + payload_size > len(data):
        return None
    if codec.record_crc(data, offset, payload_size) != crc:
        return None
    return seq, group_first_seq


@dataclass(slots=True)
class JournalStats:
    append_count: int = 0
    record_count: int = 0
    byte_count: int = 0
    fsync_seconds_total: float = 0.0
    segments_created: int = 0


@dataclass(slots=True)
class _Active:
    """The segment appends go to."""

    path: str
    first_seq: int
    fd: int
    capacity: int  # file size
    offset: int  # where the next record goes
    record_count: int


@dataclass(slots=True)
class Recovery:
    """What `Journal.open` found and did."""

    scan: JournalScan
    torn_tail: TornTail | None
    zeroed_bytes: int
    removed_temp_files: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Journal:
    """The writer side: open (recovering), then `append` groups of entries.

    Not thread-safe by design: one writer calls `append` at a time (it
    asserts so). Implements the engine's `Store` protocol.
    """

    def __init__(
        self,
        directory: str,
        active: _Active,
        lock_fd: int,
        *,
        segment_size: int,
        epoch: int,
        zero_fill: bool,
        on_fsync: Callable[[float, int], None] | None,
        last_seq: int,
        first_seq: int,
        recovery: Recovery,
    ) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.epoch = epoch
        self.zero_fill = zero_fill
        self.on_fsync = on_fsync
        self.recovery = recovery
        self.stats = JournalStats()
        self.fsync_latency_s: collections.deque[float] = collections.deque(maxlen=FSYNC_SAMPLES_MAX)
        self._active: _Active | None = active
        self._lock_fd = lock_fd
        self._last_seq = last_seq
        self._first_seq = first_seq
        self._append_lock = threading.Lock()
        self._failure: str | None = None
        # (start, end) byte range of the active segment written by a failed append and
        # never made durable: to be zeroed before the journal is reopened.
        self._unsynced: tuple[int, int] | None = None

    # --- opening --------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        segment_size: int = SEGMENT_SIZE_DEFAULT,
        epoch: int = 0,
        zero_fill: bool = False,
        on_fsync: Callable[[float, int], None] | None = None,
        lock_timeout_s: float = LOCK_TIMEOUT_S_DEFAULT,
    ) -> Journal:
        """Open (creating the directory if needed), recover and lock the journal for appends.

        Raises `JournalCorrupt` if recovery finds damage, `JournalLocked` if
        another process still holds the journal after `lock_timeout_s`.
        `zero_fill` writes new segments' zeros for real instead of only
        reserving them: on ext4 that makes each later fdatasync cheaper (no
        extent conversion) at the cost of writing the segment once more when
        it is created.
        """
        started = time.perf_counter()
        path = os.fspath(directory)
        assert segment_size >= SEGMENT_SIZE_MIN and segment_size % 4096 == 0, segment_size
        assert 0 <= epoch < 1 << 64
        ensure_private_directory(path)
        lock_fd = _lock_directory(path, lock_timeout_s)
        try:
            removed = []
            for name in sorted(os.listdir(path)):
                if name.startswith("journal-") and name.endswith(TEMP_SUFFIX):  # probe too
                    os.unlink(os.path.join(path, name))
                    removed.append(os.path.join(path, name))
            if removed:
                fsync_directory(path)
            scan = JournalScan(path).run()
            if epoch < scan.epoch_last:
                raise JournalError(
                    f"journal {path} was last written in epoch {scan.epoch_last}; a writer"
                    f" of epoch {epoch} has been fenced off and must not append"
                )
            zeroed = 0
            if scan.torn_tail is not None:
                zeroed = _zero_range(
                    scan.torn_tail.segment, scan.torn_tail.offset, scan.torn_tail.dirty_end
                )
            recovery = Recovery(scan, scan.torn_tail, zeroed, removed)
            if scan.segments:
                last = scan.segments[-1]
                fd = os.open(last.path, os.O_RDWR | os.O_CLOEXEC)
                active = _Active(
                    last.path,
                    last.first_seq,
                    fd,
                    last.file_size,
                    last.end_offset,
                    last.record_count,
                )
            else:
                try:
                    active = _create_segment(path, 1, segment_size, zero_fill)
                except OSError as error:
                    raise JournalWriteError(
                        f"cannot create the first journal segment in {path}: {error}", error.errno
                    ) from error
            journal = cls(
                path,
                active,
                lock_fd,
                segment_size=segment_size,
                epoch=epoch,
                zero_fill=zero_fill,
                on_fsync=on_fsync,
                last_seq=scan.last_seq,
                first_seq=scan.first_seq,
                recovery=recovery,
            )
        except BaseException:
            LOCK_FDS_HELD.discard(lock_fd)
            os.close(lock_fd)
            raise
        recovery.seconds = time.perf_counter() - started
        return journal

    # --- state ----------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """Seq of the last durable record (0 when there is none)."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """Seq of the first record still kept (older segments may have been removed)."""
        return self._first_seq

    @property
    def segment_path(self) -> str:
        assert self._active is not None, "journal closed"
        return self._active.path

    def read(self, from_seq: int = 1) -> Iterator[StoredRecord]:
        """The durable records from `from_seq` on, read back from disk and checked."""
        return iter(JournalScan(self.directory, from_seq=from_seq))

    # --- appending ------------------------------------------------------------

    @staticmethod
    def group_size(entries: Sequence[Entry]) -> int:
        """The bytes `append(entries)` writes."""
        return sum(HEADER_SIZE + len(entry.payload) for entry in entries)

    @property
    def room(self) -> int:
        """The bytes the active segment still holds: a group up to this size is one write
        and one fdatasync, with no new segment to create (`_rotate`). 0 once unusable."""
        active = self._active
        if active is None or self._failure is not None:
            return 0
        return active.capacity - active.offset

    def append(self, entries: Sequence[Entry]) -> None:
        """Make `entries` durable, in order: one write and one fdatasync for the group.

        Synchronous and blocking (the store calls it on the event loop while the
        disk is fast, else from a worker thread), never twice at once. On return
        every entry is on disk with seqs `last_seq - n + 1 .. last_seq`. On an
        I/O error it raises `JournalWriteError` and refuses every later append:
        after a failed fdatasync the page cache can no longer be trusted, so the
        group's bytes are the unsynced tail (`discard_unsynced`) and the journal
        must be reopened from disk.
        """
        if not self._append_lock.acquire(blocking=False):
            raise AssertionError("Journal.append called concurrently: it has one writer")
        try:
            if self._failure is not None:
                raise JournalError(f"journal unusable after an earlier failure: {self._failure}")
            assert self._active is not None, "journal closed"
            assert len(entries) >= 1
            group_first_seq = self._last_seq + 1
            buffers: list[bytes | bytearray] = []
            total = 0
            for index, entry in enumerate(entries):
                entry.check()  # pair assertion: checked again when read back
                assert isinstance(entry.kind, EntryKind), entry.kind
                payload_size = len(entry.payload)
                assert payload_size <= PAYLOAD_SIZE_MAX, payload_size
                header = bytearray(HEADER_SIZE)
                codec.encode_header(
                    header,
                    group_first_seq + index,
                    entry.timestamp_first,
                    payload_size,
                    int(entry.kind),
                    entry.business_day,
                    entry.count,
                    self.epoch,
                    group_first_seq,
                    entry.payload,
                )
                buffers.append(header)
                if payload_size:
                    buffers.append(entry.payload)
                total += HEADER_SIZE + payload_size
            seq_last = group_first_seq + len(entries) - 1
            try:
                if self._active.offset + total > self._active.capacity:
                    self._rotate(total)
                active = self._active
                # From here on the range may hold bytes of this group that never become
                # durable: remembered until the write and its fdatasync both returned.
                self._unsynced = (active.offset, active.offset + total)
                _write_all(active.fd, buffers, total, active.offset)
                started = time.perf_counter()
                os.fdatasync(active.fd)
                fsync_s = time.perf_counter() - started
                self._unsynced = None
            except OSError as error:
                self._failure = (
                    f"append of seq {group_first_seq}..{seq_last} ({total} bytes) to"
                    f" {self._active.path} at byte offset {self._active.offset} failed: {error}"
                )
                raise JournalWriteError(self._failure, error.errno) from error
            active.offset += total
            active.record_count += len(entries)
            self._last_seq = seq_last
            self.stats.append_count += 1
            self.stats.record_count += len(entries)
            self.stats.byte_count += total
            self.stats.fsync_seconds_total += fsync_s
            self.fsync_latency_s.append(fsync_s)
            if self.on_fsync is not None:
                self.on_fsync(fsync_s, total)
        finally:
            self._append_lock.release()

    @property
    def failure(self) -> str | None:
        """Why appends are refused (an earlier write failed), or None."""
        return self._failure

    def discard_unsynced(self) -> None:
        """Zero the unsynced tail a failed append left (if any) and fdatasync it.

        Blocking. Raises `JournalWriteError` while the disk still refuses; call
        again later. Once it returned, the segment from the last acknowledged
        record on reads as zeros on disk, whatever the page cache held, so the
        journal can be closed and reopened.
        """
        if self._unsynced is None:
            return
        assert self._active is not None, "journal closed"
        start, end = self._unsynced
        try:
            _write_zeros(self._active.fd, start, end)
            os.fdatasync(self._active.fd)
        except OSError as error:
            raise JournalWriteError(
                f"cannot discard the unsynced tail of {self._active.path} (bytes {start}..{end}):"
                f" {error}",
                error.errno,
            ) from error
        self._unsynced = None

    @property
    def has_unsynced(self) -> bool:
        return self._unsynced is not None

    def _rotate(self, group_size: int) -> None:
        """Continue in a new segment big enough for the group (or grow an empty one)."""
        active = self._active
        assert active is not None
        size = max(self.segment_size, _round_up(group_size, 4096))
        if active.record_count == 0:
            # An empty segment is already named for the next seq: grow it in place.
            os.posix_fallocate(active.fd, 0, size)
            if self.zero_fill:
                _write_zeros(active.fd, active.capacity, size)
            os.fsync(active.fd)
            active.capacity = os.fstat(active.fd).st_size
            return
        new = _create_segment(self.directory, self._last_seq + 1, size, self.zero_fill)
        os.close(active.fd)
        self._active = new
        self.stats.segments_created += 1

    def close(self) -> None:
        """Release the segment and the lock. After a failed append, first try once to
        discard the unsynced tail; if that fails too the journal must not be reopened
        by this process before `discard_unsynced` succeeded (the store's
        `wait_writable` sees to it), and a new process recovers it as a torn tail."""
        if self._unsynced is not None:
            with contextlib.suppress(JournalWriteError):
                self.discard_unsynced()
        if self._active is not None:
            os.close(self._active.fd)
            self._active = None
        if self._lock_fd >= 0:
            LOCK_FDS_HELD.discard(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _lock_directory(path: str, timeout_s: float) -> int:
    """Take the journal's writer lock, waiting up to `timeout_s` for the holder to go.

    A snapshot child shares its parent's lock: if the parent dies first, the
    child keeps the journal locked until it has finished, so a new writer
    never starts while an old snapshot is still being published and pruned.
    """
    lock_path = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as error:
        raise JournalError(f"cannot open journal lock {lock_path}: {error}") from error
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise JournalError(f"cannot lock {lock_path}: {error}") from error
            if time.monotonic() >= deadline:
                os.close(fd)
                raise JournalLocked(
                    f"journal {path} is open for writing by another process"
                    f" ({lock_path} still locked after {timeout_s:g} s)"
                ) from error
            time.sleep(LOCK_POLL_S)
            continue
        LOCK_FDS_HELD.add(fd)
        return fd


def _create_segment(directory: str, first_seq: int, size: int, zero_fill: bool) -> _Active:
    """Create a preallocated segment atomically: temp file, fsync, rename, fsync directory."""
    path = os.path.join(directory, segment_name(first_seq))
    temp_path = path + TEMP_SUFFIX
    assert not os.path.exists(path), path
    fd = os.open(temp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.posix_fallocate(fd, 0, size)
        if zero_fill:
            _write_zeros(fd, 0, size)
        os.fsync(fd)
        os.rename(temp_path, path)
        fsync_directory(directory)
    except BaseException:
        os.close(fd)
        # A disk too full for the segment: do not leave the temp file taking what space
        # there is (nor in the way of the next attempt's O_EXCL).
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
    return _Active(path, first_seq, fd, size, 0, 0)


def _write_all(fd: int, buffers: list[bytes | bytearray], total: int, offset: int) -> None:
    """One pwritev for the whole group (a short write, which regular files rarely do, loops)."""
    if len(buffers) > IOV_MAX:
        buffers = [b"".join(buffers)]
    written = os.pwritev(fd, buffers, offset)
    if written == total:
        return
    data = memoryview(b"".join(buffers))
    while written < total:
        step = os.pwrite(fd, data[written:], offset + written)
        if step <= 0:
            raise OSError(errno.EIO, f"pwrite wrote {step} bytes")
        written += step


def _write_zeros(fd: int, start: int, end: int) -> None:
    zeros = bytes(ZERO_CHUNK_SIZE)
    offset = start
    while offset < end:
        step = min(ZERO_CHUNK_SIZE, end - offset)
        written = os.pwrite(fd, zeros[:step] if step < ZERO_CHUNK_SIZE else zeros, offset)
        assert written > 0
        offset += written


def _zero_range(path: str, start: int, end: int) -> int:
    """Zero bytes start..end of a segment and fdatasync: the torn tail is gone for good."""
    if end <= start:
        return 0
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            _write_zeros(fd, start, end)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        raise JournalError(f"cannot truncate the torn tail of {path}: {error}") from error
    return end - start


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def remove_segments_through(directory: str | os.PathLike[str], seq: int) -> list[str]:
    """Remove the segments whose every record has a seq <= `seq` (never the last one).

    Called once a snapshot covering `seq` is durable. Returns the removed paths.
    """
    path = os.fspath(directory)
    segments = list_segments(path)
    removed = []
    for (_, segment_path), (next_first_seq, _) in itertools.pairwise(segments):
        if next_first_seq - 1 > seq:
            break
        os.unlink(segment_path)
        removed.append(segment_path)
    if removed:
        fsync_directory(path)
    return removed
