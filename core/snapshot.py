"""Snapshots: the ledger's state at a journal seq, so recovery replays only what came after.

A snapshot is a cache of a journal prefix, never a second source of truth:
recovery takes the newest snapshot that passes its checksums and replays the
journal records after its seq. Contract for the writer: every record through
`last_seq` is durable in the journal when the snapshot is taken (with the
engine's apply/durable pipeline, snapshot only once the durable stage has
caught up), and no kernel call runs on the ledger while it is copied.

File `snapshot-<last_seq:020d>.tls`, little-endian:

     0  4s  magic b"TLS1"        4  u32 crc32c of bytes 8..end of the section table
     8  u64 last_seq            16  u32 version (2; 1 is read)   20 u32 section_count
    24  u64 created_ns          32  u64 account_count
    40  u64 log_tail            48  u64 log_count     56 u64 reserved (0)
    64  section table, 32 bytes a section: 8s name, u64 offset, u64 size,
        u32 crc32c, u32 reserved (0)
    then the sections, each at a 64-byte aligned offset.

The sections are the ledger's own (`ledger/state.py` names them and says what
each holds): this module writes whatever `ledger.dump_state()` declares, in
its order, and hands what it read back to the twin's `load_state`, which
rebuilds the indexes and checks the result against the recorded digest. A
file whose sections are not the ones this build's ledger declares is
refused, naming both lists. After the ledger's sections comes the
snapshot's own `state` section (version 2): the customer state (the
key/value changes of PUT_STATE entries through last_seq), every key in byte
order, encoded as one PUT_STATE payload (core/entries.py); a version 1
snapshot has no state section and loads with an empty state.

Writing happens in a temp file (0600: it holds customer data), fsync, rename,
directory fsync; a write that fails (a full disk) removes its temp file, and
the engine goes on without that snapshot (a snapshot is a cache). Then older
snapshots are deleted (the newest `SNAPSHOTS_KEPT` stay) and the journal
segments that only hold records covered by the *oldest kept* snapshot, so a
snapshot that later fails its checksums still has the journal to fall back on.
`fork_snapshot` does all of this in a forked child, so the writer only
pauses for the fork itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

from cext import journal_codec as codec
from core import journal
from core.entries import decode_state_changes, encode_state_changes
from core.errors import TallyError
from ledger.kernel import KernelLedger
from ledger.protocol import Ledger
from ledger.reference import ReferenceLedger
from ledger.state import SECTION_NAMES, LedgerState, StateCorrupt, StateTooLarge

MAGIC = b"TLS1"
VERSION = 2
VERSIONS_READ = (1, 2)
STATE_SECTION = b"state"  # the customer state, after the ledger's sections (version 2)
HEADER = struct.Struct("<4sIQIIQQQQQ")
SECTION = struct.Struct("<8sQQII")
assert HEADER.size == 64 and SECTION.size == 32
SNAPSHOT_PATTERN = re.compile(r"snapshot-(\d{20})\.tls")
TEMP_SUFFIX = ".tmp"
SNAPSHOTS_KEPT = 2


class SnapshotError(TallyError):
    """A snapshot cannot be written or used (I/O error, capacity too small)."""


class SnapshotCorrupt(SnapshotError):
    """A snapshot fails its checksums or does not describe a consistent state."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"snapshot corrupt: {path}: {reason}")
        self.path = path


def snapshot_name(last_seq: int) -> str:
    return f"snapshot-{last_seq:020d}.tls"


def list_snapshots(directory: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """(last_seq, path) of every snapshot in `directory`, oldest first."""
    path = os.fspath(directory)
    found = []
    for name in os.listdir(path):
        match = SNAPSHOT_PATTERN.fullmatch(name)
        if match is not None:
            found.append((int(match.group(1)), os.path.join(path, name)))
    found.sort()
    return found


# --- writing ------------------------------------------------------------------


def _write_snapshot_file(
    directory: str,
    ledger: Ledger,
    last_seq: int,
    customer_state: Mapping[bytes, bytes],
    version: int = VERSION,
) -> str:
    """Write, fsync and atomically publish the snapshot in format `version` (1: without the
    customer state, kept so tests can write what older builds wrote); returns its path."""
    assert version in VERSIONS_READ and (version == 2 or not customer_state)
    assert last_seq >= 0
    state = ledger.dump_state()
    sections = [(name.encode(), chunks) for name, chunks in state.sections.items()]
    assert tuple(state.sections) == SECTION_NAMES
    if version == 2:
        encoded_state = encode_state_changes(sorted(customer_state.items()))
        sections.append((STATE_SECTION, [encoded_state]))
    table = bytearray()
    offset = _align(HEADER.size + SECTION.size * len(sections))
    layout: list[tuple[int, Sequence[bytes | bytearray | memoryview]]] = []
    for name, chunks in sections:
        size = sum(len(chunk) for chunk in chunks)
        crc = 0
        for chunk in chunks:
            crc = codec.crc32c(chunk, crc)
        table += SECTION.pack(name, offset, size, crc, 0)
        layout.append((offset, chunks))
        offset = _align(offset + size)
    header = bytearray(
        HEADER.pack(
            MAGIC,
            0,
            last_seq,
            version,
            len(sections),
            time.time_ns(),
            state.account_count,
            state.log_tail,
            state.log_count,
            0,
        )
    )
    header += table
    struct.pack_into("<I", header, 4, codec.crc32c(memoryview(header)[8:]))
    path = os.path.join(directory, snapshot_name(last_seq))
    temp_path = path + TEMP_SUFFIX
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, journal.FILE_MODE)
    try:
        _pwrite_all(fd, header, 0)
        for section_offset, chunks in layout:
            position = section_offset
            for chunk in chunks:
                _pwrite_all(fd, chunk, position)
                position += len(chunk)
        os.fsync(fd)
    except BaseException:
        # A full disk: give back the space the partial snapshot took (the journal needs it).
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
    finally:
        os.close(fd)
    os.rename(temp_path, path)
    journal.fsync_directory(directory)
    return path


def prune(directory: str | os.PathLike[str]) -> list[str]:
    """Delete all but the newest SNAPSHOTS_KEPT snapshots, then the journal they cover.

    Segments are removed only through the oldest kept snapshot's seq, so the
    fallback snapshot can still be replayed forward. Returns removed paths.
    """
    path = os.fspath(directory)
    snapshots = list_snapshots(path)
    removed = []
    for _, old in snapshots[:-SNAPSHOTS_KEPT]:
        os.unlink(old)
        removed.append(old)
    for name in os.listdir(path):
        if SNAPSHOT_PATTERN.fullmatch(name.removesuffix(TEMP_SUFFIX)) and name.endswith(
            TEMP_SUFFIX
        ):
            os.unlink(os.path.join(path, name))
            removed.append(os.path.join(path, name))
    if removed:
        journal.fsync_directory(path)
    kept = snapshots[-SNAPSHOTS_KEPT:]
    if len(kept) == SNAPSHOTS_KEPT:
        removed += journal.remove_segments_through(path, kept[0][0])
    return removed


def write_snapshot(
    directory: str | os.PathLike[str],
    ledger: Ledger,
    last_seq: int,
    state: Mapping[bytes, bytes] | None = None,
) -> str:
    """Write `snapshot-<last_seq>.tls` (with the customer `state`) durably, then prune.

    Blocks for the whole write: the engine uses `fork_snapshot` instead.
    """
    path = os.fspath(directory)
    try:
        written = _write_snapshot_file(path, ledger, last_seq, state or {})
        prune(path)
    except OSError as error:
        raise SnapshotError(f"cannot write snapshot {last_seq} in {path}: {error}") from error
    return written


@dataclass(frozen=True, slots=True)
class SnapshotChild:
    pid: int
    path: str
    fork_pause_s: float  # how long the parent was stopped in fork()


_children: dict[int, SnapshotChild] = {}


def fork_snapshot(
    directory: str | os.PathLike[str],
    ledger: Ledger,
    last_seq: int,
    state: Mapping[bytes, bytes] | None = None,
) -> int:
    """Write the snapshot from a forked child; returns its pid at once (see `wait_snapshot`).

    The child sees the tables as they were at the fork, copy-on-write, and
    writes them while the parent goes on posting; the parent pauses only for
    fork() itself (page tables are copied, not memory). Call it between
    kernel calls, with the journal durable through `last_seq` (module
    docstring). The child takes no lock another thread could hold (no
    imports, no logging, no buffered output), drops every inherited
    descriptor but the journal's writer lock (so sockets and pipes close when
    the parent dies, while the journal stays locked until the child is done),
    and leaves with os._exit.
    """
    path = os.fspath(directory)
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            _child_descriptors(journal.LOCK_FDS_HELD)
            write_snapshot(path, ledger, last_seq, state)
            status = 0
        except BaseException as error:  # report it, then exit without running parent cleanup
            with contextlib.suppress(OSError):
                os.write(2, f"snapshot child failed: {error!r}\n".encode())
        os._exit(status)
    pause_s = time.perf_counter() - started
    _children[pid] = SnapshotChild(pid, os.path.join(path, snapshot_name(last_seq)), pause_s)
    return pid


def _child_descriptors(keep: set[int]) -> None:
    """Point stdin/stdout at /dev/null and close every other inherited descriptor but `keep`."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):  # the descriptor listdir itself used
                os.close(fd)


def fork_pause_s(pid: int) -> float:
    """How long fork() stopped the parent for the snapshot child `pid`."""
    return _children[pid].fork_pause_s


def wait_snapshot(pid: int) -> str:
    """Wait for the snapshot child `pid`; its snapshot's path, or SnapshotError if it failed.

    Blocking: call it from a worker thread.
    """
    _, status = os.waitpid(pid, 0)
    return _reaped(pid, status)


def poll_snapshot(pid: int) -> str | None:
    """The snapshot's path if child `pid` has finished, None while it runs (never blocks)."""
    reaped_pid, status = os.waitpid(pid, os.WNOHANG)
    if reaped_pid == 0:
        return None
    return _reaped(pid, status)


def _reaped(pid: int, status: int) -> str:
    child = _children.pop(pid)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SnapshotError(f"snapshot child {pid} writing {child.path} exited with {code}")
    return child.path


def _align(offset: int) -> int:
    return (offset + 63) // 64 * 64


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        assert written > 0
        view = view[written:]
        offset += written


# --- reading ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotContents:
    """A snapshot's ledger state, every section checked against its checksum and sizes."""

    path: str
    last_seq: int
    created_ns: int
    state: LedgerState
    customer_state: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def account_count(self) -> int:
        return self.state.account_count

    @property
    def log_tail(self) -> int:
        return self.state.log_tail

    @property
    def log_count(self) -> int:
        return self.state.log_count

    @property
    def last_day(self) -> int:
        return self.state.last_day

    @property
    def digest(self) -> str:
        return self.state.digest


def read_snapshot(path: str | os.PathLike[str]) -> SnapshotContents:
    """Read and check every checksum and size of a snapshot file."""
    name = os.fspath(path)
    try:
        with open(name, "rb", buffering=0) as file:
            data = file.read()
    except OSError as error:
        raise SnapshotError(f"cannot read snapshot {name}: {error}") from error
    if len(data) < HEADER.size:
        raise SnapshotCorrupt(name, f"{len(data)} bytes, shorter than the header")
    (
        magic,
        crc,
        last_seq,
        version,
        section_count,
        created_ns,
        account_count,
        log_tail,
        log_count,
        reserved,
    ) = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise SnapshotCorrupt(name, f"magic {magic!r}, expected {MAGIC!r}")
    table_end = HEADER.size + SECTION.size * section_count
    if table_end > len(data) or codec.crc32c(memoryview(data)[8:table_end]) != crc:
        raise SnapshotCorrupt(name, "header checksum mismatch")
    if version not in VERSIONS_READ or reserved != 0:
        raise SnapshotCorrupt(name, f"version {version} is not one of {VERSIONS_READ}")
    match = SNAPSHOT_PATTERN.fullmatch(os.path.basename(name))
    if match is not None and int(match.group(1)) != last_seq:
        raise SnapshotCorrupt(name, f"file is named for seq {match.group(1)}, holds {last_seq}")
    sections: dict[bytes, bytes] = {}
    for index in range(section_count):
        raw_name, offset, size, section_crc, _ = SECTION.unpack_from(
            data, HEADER.size + index * SECTION.size
        )
        section_name = raw_name.rstrip(b"\0")
        if size and offset + size > len(data):  # an empty last section may lie past it
            raise SnapshotCorrupt(name, f"section {section_name!r} runs past the end of the file")
        chunk = data[offset : offset + size]
        if codec.crc32c(chunk) != section_crc:
            raise SnapshotCorrupt(name, f"section {section_name!r} checksum mismatch")
        sections[section_name] = chunk
    customer_state = _customer_state(name, version, sections)
    try:
        state = LedgerState.from_bytes(
            {section_name.decode(): chunk for section_name, chunk in sections.items()}
        )
    except StateCorrupt as error:
        raise SnapshotCorrupt(name, str(error)) from error
    # Pair assertion on what was written: the header and the state agree on the counts.
    if (state.account_count, state.log_tail, state.log_count) != (
        account_count,
        log_tail,
        log_count,
    ):
        raise SnapshotCorrupt(name, "header and meta disagree on the counts")
    return SnapshotContents(
        path=name,
        last_seq=last_seq,
        created_ns=created_ns,
        state=state,
        customer_state=customer_state,
    )


def _customer_state(name: str, version: int, sections: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Take the state section out of `sections` (version 2; version 1 has none) and decode it."""
    if version == 1:
        if STATE_SECTION in sections:
            raise SnapshotCorrupt(name, "a version 1 snapshot with a state section")
        return {}
    if list(sections)[-1:] != [STATE_SECTION]:
        raise SnapshotCorrupt(name, f"sections {list(sections)} do not end with the state")
    encoded = sections.pop(STATE_SECTION)
    try:
        changes = decode_state_changes(encoded)
        assert all(value is not None for _, value in changes), "a delete in a snapshot"
    except AssertionError as error:  # checksummed, yet not what a writer writes
        raise SnapshotCorrupt(name, f"state section does not decode: {error}") from error
    return {key: value for key, value in changes if value is not None}


@overload
def load_snapshot(
    path: str | os.PathLike[str],
    account_capacity: int,
    transfer_capacity: int,
    *,
    backend: Literal["kernel"] = "kernel",
) -> tuple[KernelLedger, int]: ...
@overload
def load_snapshot(
    path: str | os.PathLike[str],
    account_capacity: int,
    transfer_capacity: int,
    *,
    backend: Literal["reference"],
) -> tuple[ReferenceLedger, int]: ...
@overload
def load_snapshot(
    path: str | os.PathLike[str],
    account_capacity: int,
    transfer_capacity: int,
    *,
    backend: str,
) -> tuple[KernelLedger | ReferenceLedger, int]: ...
def load_snapshot(
    path: str | os.PathLike[str],
    account_capacity: int,
    transfer_capacity: int,
    *,
    backend: str = "kernel",
) -> tuple[KernelLedger | ReferenceLedger, int]:
    """Rebuild a ledger from a snapshot file; returns (ledger, last_seq).

    Its `digest()` equals the digest of the ledger the snapshot was taken from
    (checked). Raises SnapshotCorrupt on bad checksums, SnapshotError when the
    capacities are too small for the state.
    """
    ledger, last_seq, _state = load_snapshot_state(
        path, account_capacity, transfer_capacity, backend=backend
    )
    return ledger, last_seq


def load_snapshot_state(
    path: str | os.PathLike[str],
    account_capacity: int,
    transfer_capacity: int,
    *,
    backend: str = "kernel",
) -> tuple[KernelLedger | ReferenceLedger, int, dict[bytes, bytes]]:
    """`load_snapshot`, and the customer state it holds (empty for a version 1 snapshot)."""
    contents = read_snapshot(path)
    twins: dict[str, type[KernelLedger] | type[ReferenceLedger]]
    twins = {"kernel": KernelLedger, "reference": ReferenceLedger}
    if backend not in twins:
        raise ValueError(f"backend must be kernel or reference, not {backend!r}")
    try:
        ledger = twins[backend].load_state(
            contents.state, account_capacity=account_capacity, transfer_capacity=transfer_capacity
        )
    except StateTooLarge as error:
        raise SnapshotError(f"{contents.path} {error}") from error
    except StateCorrupt as error:
        raise SnapshotCorrupt(contents.path, str(error)) from error
    return ledger, contents.last_seq, contents.customer_state
