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
    then the sections, each at a 64-byte aligned offset:

    meta      the kernel's meta array (int64 x META_SIZE)
    products  the product table     channels  the channel table (4096 bytes)
    accounts  account_count x 64    pending   account_count x 16
    log       the log window: records log_tail..log_count-1 in seq order, 128 bytes each
    chanlive  today's non-zero channel counters, 16 bytes each: u32 slot, u8 channel,
              3 zero bytes, i64 used (in `channel_entries_live` order)
    digest    SHA-256 of the state, equal to `ledger.digest()` when it was taken
    state     version 2: the customer state (the key/value changes of PUT_STATE
              entries through last_seq), every key in byte order, encoded as one
              PUT_STATE payload (core/entries.py); a version 1 snapshot has no
              state section and loads with an empty state

The indexes (account ids, transfer ids), the expiry heap and the channel
counter table are not stored: they are functions of the sections and are
rebuilt on load. The account index is rebuilt by replaying account creation
through the kernel (same ids in the same slot order give the same index,
against a stand-in product table so that retired products do not matter);
the transfer index, heap and channel counters by Python-level inserts that
are each checked against the kernel's own lookups afterwards, and the whole
state against the stored digest.

Writing happens in a temp file, fsync, rename, directory fsync. Then older
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
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, overload

from cext import journal_codec as codec
from cext import ledger_kernel as kernel
from core import journal
from core.entries import decode_state_changes, encode_state_changes
from core.errors import TallyError
from ledger.kernel import (
    META_ACCOUNT_COUNT,
    META_CHANNEL_TABLE_FULL,
    META_LAST_DAY,
    META_LOG_COUNT,
    META_LOG_TAIL,
    META_SIZE,
    KernelLedger,
)
from ledger.reference import Account, ReferenceLedger, Transfer
from ledger.types import (
    ACCOUNT_SIZE,
    ACCOUNT_STRUCT,
    CHANNEL_COUNT,
    CHANNEL_SIZE,
    NS_PER_S,
    PENDING_SIZE,
    PENDING_STRUCT,
    PRODUCT_SIZE,
    TRANSFER_SIZE,
    PendingState,
    join_id,
)

MAGIC = b"TLS1"
VERSION = 2
VERSIONS_READ = (1, 2)
HEADER = struct.Struct("<4sIQIIQQQQQ")
SECTION = struct.Struct("<8sQQII")
assert HEADER.size == 64 and SECTION.size == 32
CHANNEL_LIVE = struct.Struct("<IB3xq")
assert CHANNEL_LIVE.size == 16
SNAPSHOT_PATTERN = re.compile(r"snapshot-(\d{20})\.tls")
TEMP_SUFFIX = ".tmp"
SNAPSHOTS_KEPT = 2
SECTION_NAMES = (
    b"meta",
    b"products",
    b"channels",
    b"accounts",
    b"pending",
    b"log",
    b"chanlive",
    b"digest",
    b"state",
)
SECTION_NAMES_V1 = SECTION_NAMES[:-1]

# Offsets in the 128-byte transfer record (ledger/types.py).
TRANSFER_TIMESTAMP_OFFSET = 72
TRANSFER_TIMEOUT_OFFSET = 80
TRANSFER_STATE_OFFSET = 103

UINT64_MASK = (1 << 64) - 1


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


def _log_window(ledger: KernelLedger) -> list[memoryview]:
    """The log records log_tail..log_count-1 in seq order: at most two slices of the ring."""
    log_size = ledger.transfer_capacity
    tail, count = ledger.log_tail, ledger.log_count
    view = memoryview(ledger.log)
    if count == tail:
        return []
    start = tail % log_size
    end = start + (count - tail)
    if end <= log_size:
        return [view[start * TRANSFER_SIZE : end * TRANSFER_SIZE]]
    return [view[start * TRANSFER_SIZE :], view[: (end - log_size) * TRANSFER_SIZE]]


def _sections(
    ledger: KernelLedger, state: Mapping[bytes, bytes]
) -> list[tuple[bytes, list[bytes | bytearray | memoryview]]]:
    """(name, chunks) of every section, reading the tables in place (no copies of big ones)."""
    account_count = ledger.account_count
    live = kernel.channel_entries_live(ledger.channel_counters, ledger.last_day)
    channels_live = bytearray(len(live) * CHANNEL_LIVE.size)
    for index, (slot, channel, used) in enumerate(live):
        CHANNEL_LIVE.pack_into(channels_live, index * CHANNEL_LIVE.size, slot, channel, used)
    accounts = memoryview(ledger.accounts)[: account_count * ACCOUNT_SIZE]
    pending = memoryview(ledger.pending)[: account_count * PENDING_SIZE]
    window = _log_window(ledger)
    # The ledger's own digest, whatever it covers: load checks the rebuilt ledger against it.
    digest = bytes.fromhex(ledger.digest())
    return [
        (b"meta", [ledger.meta.tobytes()]),
        (b"products", [ledger.products]),
        (b"channels", [ledger.channels]),
        (b"accounts", [accounts]),
        (b"pending", [pending]),
        (b"log", list(window)),
        (b"chanlive", [channels_live]),
        (b"digest", [digest]),
        (b"state", [encode_state_changes(sorted(state.items()))]),
    ]


def _write_snapshot_file(
    directory: str, ledger: KernelLedger, last_seq: int, state: Mapping[bytes, bytes]
) -> str:
    """Write, fsync and atomically publish the snapshot; returns its path."""
    assert isinstance(ledger, KernelLedger), type(ledger)
    assert last_seq >= 0
    sections = _sections(ledger, state)
    assert [name for name, _ in sections] == list(SECTION_NAMES)
    table = bytearray()
    offset = _align(HEADER.size + SECTION.size * len(sections))
    layout: list[tuple[int, list[bytes | bytearray | memoryview]]] = []
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
            VERSION,
            len(sections),
            time.time_ns(),
            ledger.account_count,
            ledger.log_tail,
            ledger.log_count,
            0,
        )
    )
    header += table
    struct.pack_into("<I", header, 4, codec.crc32c(memoryview(header)[8:]))
    path = os.path.join(directory, snapshot_name(last_seq))
    temp_path = path + TEMP_SUFFIX
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _pwrite_all(fd, header, 0)
        for section_offset, chunks in layout:
            position = section_offset
            for chunk in chunks:
                _pwrite_all(fd, chunk, position)
                position += len(chunk)
        os.fsync(fd)
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
    ledger: KernelLedger,
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
    ledger: KernelLedger,
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
    """A snapshot's sections, checked against their checksums."""

    path: str
    last_seq: int
    created_ns: int
    meta: array[int]
    products: bytes
    channels: bytes
    accounts: bytes
    pending: bytes
    log: bytes
    channels_live: list[tuple[int, int, int]]
    digest: str
    state: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def account_count(self) -> int:
        return int(self.meta[META_ACCOUNT_COUNT])

    @property
    def log_tail(self) -> int:
        return int(self.meta[META_LOG_TAIL])

    @property
    def log_count(self) -> int:
        return int(self.meta[META_LOG_COUNT])

    @property
    def last_day(self) -> int:
        return int(self.meta[META_LAST_DAY])


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
    expected = SECTION_NAMES if version == VERSION else SECTION_NAMES_V1
    if tuple(sections) != expected:
        raise SnapshotCorrupt(name, f"sections {list(sections)}, expected {expected}")
    try:
        changes = decode_state_changes(sections.get(b"state", b""))
        assert all(value is not None for _, value in changes), "a delete in a snapshot"
    except AssertionError as error:  # checksummed, yet not what a writer writes
        raise SnapshotCorrupt(name, f"state section does not decode: {error}") from error
    meta = array("q")
    meta.frombytes(sections[b"meta"])
    channels_live = [
        (slot, channel, used)
        for slot, channel, used in CHANNEL_LIVE.iter_unpack(sections[b"chanlive"])
    ]
    contents = SnapshotContents(
        path=name,
        last_seq=last_seq,
        created_ns=created_ns,
        meta=meta,
        products=sections[b"products"],
        channels=sections[b"channels"],
        accounts=sections[b"accounts"],
        pending=sections[b"pending"],
        log=sections[b"log"],
        channels_live=channels_live,
        digest=sections[b"digest"].hex(),
        state={key: value for key, value in changes if value is not None},
    )
    # Pair assertions on what was written: the sizes agree with the counts.
    problems = []
    if len(meta) != META_SIZE:
        problems.append(f"meta holds {len(meta)} values, expected {META_SIZE}")
    elif (contents.account_count, contents.log_tail, contents.log_count) != (
        account_count,
        log_tail,
        log_count,
    ):
        problems.append("header and meta disagree on the counts")
    if len(contents.accounts) != account_count * ACCOUNT_SIZE:
        problems.append(f"accounts section is {len(contents.accounts)} bytes")
    if len(contents.pending) != account_count * PENDING_SIZE:
        problems.append(f"pending section is {len(contents.pending)} bytes")
    window = log_count - log_tail
    if not 0 <= log_tail <= log_count or len(contents.log) != window * TRANSFER_SIZE:
        problems.append(f"log section is {len(contents.log)} bytes for {window} transfers")
    if len(contents.products) < PRODUCT_SIZE or len(contents.products) % PRODUCT_SIZE:
        problems.append(f"products section is {len(contents.products)} bytes")
    if len(contents.channels) != CHANNEL_COUNT * CHANNEL_SIZE:
        problems.append(f"channels section is {len(contents.channels)} bytes")
    if problems:
        raise SnapshotCorrupt(name, "; ".join(problems))
    return contents


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
    ledger: KernelLedger | ReferenceLedger
    if backend == "kernel":
        ledger = rebuild_kernel_ledger(contents, account_capacity, transfer_capacity)
    elif backend == "reference":
        ledger = rebuild_reference_ledger(contents, account_capacity, transfer_capacity)
    else:
        raise ValueError(f"backend must be kernel or reference, not {backend!r}")
    digest = ledger.digest()
    if digest != contents.digest:
        raise SnapshotCorrupt(
            contents.path,
            f"rebuilt state has digest {digest}, the snapshot recorded {contents.digest}",
        )
    return ledger, contents.last_seq, contents.state


def _check_capacity(contents: SnapshotContents, account_capacity: int, log_size: int) -> None:
    window = contents.log_count - contents.log_tail
    if contents.account_count > account_capacity:
        raise SnapshotError(
            f"{contents.path} holds {contents.account_count} accounts;"
            f" the account capacity is {account_capacity}"
        )
    if window > log_size:
        raise SnapshotError(
            f"{contents.path} holds a log window of {window} transfers;"
            f" the transfer capacity is {log_size}"
        )


def rebuild_kernel_ledger(
    contents: SnapshotContents, account_capacity: int, transfer_capacity: int
) -> KernelLedger:
    ledger = KernelLedger(account_capacity=account_capacity, transfer_capacity=transfer_capacity)
    _check_capacity(contents, account_capacity, ledger.transfer_capacity)
    account_count = contents.account_count
    ledger.set_rules(contents.products, contents.channels)
    ledger.accounts[: account_count * ACCOUNT_SIZE] = contents.accounts
    ledger.pending[: account_count * PENDING_SIZE] = contents.pending
    tail, count = contents.log_tail, contents.log_count
    _place_log_window(ledger, contents.log, tail, count)
    ledger.meta[META_ACCOUNT_COUNT] = account_count
    ledger.meta[META_LOG_TAIL] = tail
    ledger.meta[META_LOG_COUNT] = count
    ledger.meta[META_LAST_DAY] = contents.last_day
    ledger.meta[META_CHANNEL_TABLE_FULL] = contents.meta[META_CHANNEL_TABLE_FULL]
    ledger.rebuild_indexes()  # the kernel inserts slots, ids and live holds, without the GIL
    _rebuild_channel_counters(ledger, contents.channels_live, contents.last_day, contents.path)
    return ledger


def _place_log_window(ledger: KernelLedger, log: bytes, tail: int, count: int) -> None:
    log_size = ledger.transfer_capacity
    if count == tail:
        return
    start = tail % log_size
    first_part = min(count - tail, log_size - start)
    ledger.log[start * TRANSFER_SIZE : (start + first_part) * TRANSFER_SIZE] = log[
        : first_part * TRANSFER_SIZE
    ]
    rest = count - tail - first_part
    if rest:
        ledger.log[: rest * TRANSFER_SIZE] = log[first_part * TRANSFER_SIZE :]


def hash_id(lo: int, hi: int) -> int:
    """The kernel's id hash (cext/ledger_kernel.pyx `hash_id`), in Python."""
    h = (lo * 0x9E3779B97F4A7C15 + hi * 0xC2B2AE3D27D4EB4F) & UINT64_MASK
    h ^= h >> 31
    h = (h * 0xD6E8FEB86659FD93) & UINT64_MASK
    return h ^ (h >> 32)


def _pending_expiries(log: bytes, tail: int) -> list[tuple[int, int]]:
    """(expires_at, seq) of every pending transfer with a timeout, in heap order."""
    states = log[TRANSFER_STATE_OFFSET::TRANSFER_SIZE]
    expiries = []
    index = states.find(PendingState.PENDING)
    while index >= 0:
        offset = index * TRANSFER_SIZE
        (timestamp,) = struct.unpack_from("<Q", log, offset + TRANSFER_TIMESTAMP_OFFSET)
        (timeout_s,) = struct.unpack_from("<I", log, offset + TRANSFER_TIMEOUT_OFFSET)
        if timeout_s:
            expiries.append((timestamp + timeout_s * NS_PER_S, tail + index))
        index = states.find(PendingState.PENDING, index + 1)
    expiries.sort()
    return expiries


def _rebuild_channel_counters(
    ledger: KernelLedger, live: list[tuple[int, int, int]], day: int, path: str
) -> None:
    """Insert today's counters (kernel `channel_position`), then read each back."""
    table = memoryview(ledger.channel_counters).cast("Q")
    mask = len(ledger.channel_counters) // 16 - 1
    if len(live) > mask + 1:
        raise SnapshotError(
            f"{path} holds {len(live)} channel counters; the table holds {mask + 1}"
        )
    for slot, channel, used in live:
        key = ((slot + 1) << 8) | channel
        position = hash_id(key, 0x5A17) & mask & ~3
        while table[2 * position] != 0:
            position = (position + 1) & mask
        table[2 * position] = (key << 16) | day
        table[2 * position + 1] = used & UINT64_MASK
    table.release()
    for slot, channel, used in live:
        found = kernel.channel_used(slot, channel, day, ledger.channel_counters)
        assert found == used, (slot, channel, found, used)


def rebuild_reference_ledger(
    contents: SnapshotContents, account_capacity: int, transfer_capacity: int
) -> ReferenceLedger:
    ledger = ReferenceLedger(account_capacity=account_capacity, transfer_capacity=transfer_capacity)
    _check_capacity(contents, account_capacity, transfer_capacity)
    ledger.set_rules(contents.products, contents.channels)
    pending_rows = PENDING_STRUCT.iter_unpack(contents.pending)
    for slot, row in enumerate(ACCOUNT_STRUCT.iter_unpack(contents.accounts)):
        (
            id_lo,
            id_hi,
            debits_posted,
            credits_posted,
            inflow_daily,
            inflow_yearly,
            outflow_daily,
            outflow_yearly,
            bound_slot,
            ledger_code,
            kind,
            status,
            flags,
            product,
            counters_day,
            _internal,
        ) = row
        debits_pending, credits_pending = next(pending_rows)
        account_id = join_id(id_lo, id_hi)
        ledger.account_index[account_id] = slot
        ledger.accounts.append(
            Account(
                id=account_id,
                ledger=ledger_code,
                kind=kind,
                flags=flags,
                product=product,
                bound_slot=bound_slot,
                status=status,
                debits_posted=debits_posted,
                credits_posted=credits_posted,
                debits_pending=debits_pending,
                credits_pending=credits_pending,
                counters_day=counters_day,
                counters=[inflow_daily, inflow_yearly, outflow_daily, outflow_yearly],
            )
        )
    tail = contents.log_tail
    for index in range(contents.log_count - tail):
        record = Transfer.unpack(contents.log, index * TRANSFER_SIZE)
        ledger.log[tail + index] = record
        ledger.transfer_index[record.id] = tail + index
    ledger.log_tail = tail
    ledger.log_count = contents.log_count
    ledger.expiry_heap = _pending_expiries(contents.log, tail)
    ledger.channel_counters = {
        (slot, channel): (contents.last_day, used) for slot, channel, used in contents.channels_live
    }
    ledger.last_day = contents.last_day
    return ledger
