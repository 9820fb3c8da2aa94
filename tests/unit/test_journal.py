"""The embedded journal, snapshots and recovery: nothing acknowledged is lost, nothing is guessed.

Most tests build a small journal from a scripted scenario (accounts, funding,
capped-channel payments, failed transfers, holds with and without timeouts,
a reversal, a freeze, retries, an eviction, a day change), damage it in a
precise way, and check what `Journal.open`, `JournalScan` and
`recover_ledger` make of it.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cext import journal_codec as codec
from cext import ledger_kernel as kernel
from core import journal as journal_module
from core.entries import (
    EVICT_PAYLOAD,
    RULES_HEADER,
    UPDATE_ACCOUNT_PAYLOAD,
    Entry,
    EntryKind,
    apply_entry,
)
from core.journal import (
    HEADER_SIZE,
    SEGMENT_SIZE_MIN,
    Journal,
    JournalCorrupt,
    JournalError,
    JournalLocked,
    JournalScan,
    JournalWriteError,
    list_segments,
)
from core.replay import recover_ledger
from core.snapshot import (
    SnapshotCorrupt,
    SnapshotError,
    fork_pause_s,
    fork_snapshot,
    list_snapshots,
    load_snapshot,
    wait_snapshot,
    write_snapshot,
)
from ledger.kernel import KernelLedger
from ledger.records import pack_account_input, pack_transfer, transfer_view
from ledger.reference import ReferenceLedger
from ledger.types import (
    AccountFlags,
    AccountKind,
    AccountStatus,
    CreateTransferResult,
    TransferCode,
    TransferFlags,
    split_id,
)
from limits.calendar import day_of_date
from limits.rules import load_rules
from tests.repo_paths import REPO_ROOT

REPO = REPO_ROOT
RULES = load_rules(REPO / "examples" / "limits.toml")
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
DAY0 = day_of_date(2026, 1, 1)
NS_PER_S = 1_000_000_000
ACCOUNT_CAPACITY = 1024
TRANSFER_CAPACITY = 1 << 12

CLEARING = 0xC1EA
CLASS_I = [0x1000 + i for i in range(10)]
CLASS_II = [0x2000 + i for i in range(4)]
LATE_ACCOUNT = 0x3000
CHANNEL_WECHAT = 1  # 20,000 CNY per transfer, 50,000 CNY per account per day
CHANNEL_APP = 2
R = CreateTransferResult

Ledger = KernelLedger | ReferenceLedger


# --- building entries ---------------------------------------------------------


def account_input(
    account_id: int, kind: int, product: int, flags: int = 0, bound: int = 0
) -> bytes:
    return pack_account_input(
        id=account_id, kind=kind, product=product, flags=flags, bound_id=bound
    )


def transfer(
    transfer_id: int,
    debit: int,
    credit: int,
    amount: int,
    *,
    code: int = TransferCode.TRANSFER,
    flags: int = 0,
    pending_id: int = 0,
    timeout_s: int = 0,
    channel: int = 0,
) -> bytes:
    return pack_transfer(
        id=transfer_id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        code=code,
        pending_id=pending_id,
        timeout_s=timeout_s,
        flags=flags,
        channel=channel,
        user_data=transfer_id * 7,
    )


class Script:
    """Entries with strictly increasing engine timestamps, as the engine forms them."""

    def __init__(self) -> None:
        self.now_ns = T0
        self.day = DAY0
        self.entries: list[Entry] = []

    def _next(self, count: int) -> int:
        first = self.now_ns
        self.now_ns += max(1, count)
        return first

    def rules(self) -> None:
        products, channels = bytes(RULES.product_table()), bytes(RULES.channel_table())
        payload = RULES_HEADER.pack(len(products)) + products + channels
        self.entries.append(Entry(EntryKind.SET_RULES, self._next(1), self.day, 1, payload))

    def accounts(self, *inputs: bytes) -> None:
        entry = Entry(
            EntryKind.CREATE_ACCOUNTS, self._next(1), self.day, len(inputs), b"".join(inputs)
        )
        self.entries.append(entry)

    def transfers(self, *transfers: bytes) -> None:
        count = len(transfers)
        payload = b"".join(transfers)
        self.entries.append(
            Entry(EntryKind.CREATE_TRANSFERS, self._next(count), self.day, count, payload)
        )

    def update(self, account_id: int, status: int, flags: int) -> None:
        payload = UPDATE_ACCOUNT_PAYLOAD.pack(*split_id(account_id), status, flags)
        self.entries.append(Entry(EntryKind.UPDATE_ACCOUNT, self._next(1), self.day, 1, payload))

    def expire(self, now_ns: int) -> None:
        self.now_ns = max(self.now_ns, now_ns)
        self.entries.append(Entry(EntryKind.EXPIRE_PENDING, self._next(1), self.day, 0, b""))

    def evict(self, before_ns: int, count_max: int) -> None:
        payload = EVICT_PAYLOAD.pack(before_ns, count_max)
        self.entries.append(Entry(EntryKind.EVICT, self._next(1), self.day, 0, payload))

    def next_day(self) -> None:
        self.day += 1
        self.now_ns = max(self.now_ns, T0 + (self.day - DAY0) * 86_400 * NS_PER_S)


CLASS_I_FLAGS = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
CLASS_II_FLAGS = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.NON_BOUND_INFLOW_ENABLED
FIRST_PAYMENT = 0x5000
HOLD_EXPIRES = 0x6001  # 60 s timeout: expired by the EXPIRE_PENDING after the snapshot
HOLD_LONG = 0x6002  # one hour: still pending at the end
HOLD_FOREVER = 0x6003  # no timeout: voided after the snapshot
HOLD_POSTED = 0x6004  # ten minutes: partly posted after the snapshot
HOLD_CLASS_II = 0x6005  # a class II hold on a capped channel: expires, gives quota back


def scenario() -> tuple[list[Entry], list[Entry]]:
    """(before, after): the snapshot is taken between the two.

    Before leaves live state behind that only rebuilt indexes can serve after:
    holds to post, void and expire (transfer index, expiry heap), a channel
    nearly at its daily cap (channel counters), an id to retry (idempotency).
    """
    s = Script()
    s.rules()
    s.accounts(
        account_input(CLEARING, AccountKind.INTERNAL_CLEARING, 7),
        *(account_input(i, AccountKind.CLASS_I, 1, CLASS_I_FLAGS) for i in CLASS_I),
    )
    s.accounts(
        *(
            account_input(account, AccountKind.CLASS_II, 2, CLASS_II_FLAGS, bound=CLASS_I[n])
            for n, account in enumerate(CLASS_II)
        )
    )
    s.transfers(
        *(
            transfer(
                0x4000 + n, CLEARING, account, 20_000_000, code=TransferCode.EXTERNAL_TRANSFER_IN
            )
            for n, account in enumerate(CLASS_I)
        ),
        *(
            transfer(0x4100 + n, CLASS_I[n], account, 2_000_000, code=TransferCode.TOPUP_BOUND)
            for n, account in enumerate(CLASS_II)
        ),
    )
    # Three 15,000 CNY payments on WeChat (50,000 CNY/day cap); the fourth fails and is logged.
    s.transfers(
        *(
            transfer(FIRST_PAYMENT + n, CLASS_I[0], CLASS_I[1], 1_500_000, channel=CHANNEL_WECHAT)
            for n in range(4)
        ),
        transfer(0x5010, CLASS_II[2], CLASS_I[5], 50_000, channel=CHANNEL_APP),
        transfer(0x5011, CLASS_I[3], CLASS_I[4], 99_000_000),  # exceeds credits
        transfer(0x5012, CLASS_I[3], CLASS_I[4], 0),  # invalid: not logged
        transfer(0x5013, CLASS_I[3], 0xDEAD, 100),  # unknown account: not logged
        transfer(0x5014, CLASS_I[3], CLASS_I[4], 100, flags=TransferFlags.LINKED),
        transfer(0x5015, CLASS_I[3], CLASS_I[4], 99_000_000),  # fails: the chain rolls back
    )
    s.transfers(
        transfer(
            HOLD_EXPIRES,
            CLASS_I[6],
            CLASS_I[7],
            100_000,
            flags=TransferFlags.PENDING,
            timeout_s=60,
            channel=CHANNEL_WECHAT,
        ),
        transfer(
            HOLD_LONG, CLASS_I[8], CLEARING, 200_000, flags=TransferFlags.PENDING, timeout_s=3600
        ),
        transfer(HOLD_FOREVER, CLASS_I[9], CLASS_I[0], 300_000, flags=TransferFlags.PENDING),
        transfer(
            HOLD_POSTED,
            CLASS_I[2],
            CLASS_I[3],
            400_000,
            flags=TransferFlags.PENDING,
            timeout_s=600,
            channel=CHANNEL_APP,
        ),
        transfer(
            HOLD_CLASS_II,
            CLASS_II[0],
            CLASS_I[5],
            200_000,
            flags=TransferFlags.PENDING,
            timeout_s=60,
            channel=CHANNEL_WECHAT,
        ),
    )
    s.update(CLASS_I[5], AccountStatus.FROZEN, CLASS_I_FLAGS)
    s.transfers(
        transfer(0x5020, CLASS_I[4], CLASS_I[5], 1_000),  # credit account frozen: logged
        transfer(
            0x5021,
            CLASS_I[1],
            CLASS_I[0],
            700_000,
            code=TransferCode.REVERSAL,
            pending_id=FIRST_PAYMENT + 1,
        ),
        transfer(FIRST_PAYMENT, CLASS_I[0], CLASS_I[1], 1_500_000, channel=CHANNEL_WECHAT),
    )
    s.evict(T0 + 6, 3)  # the first three funding transfers leave the window
    before = s.entries
    s.entries = []
    # WeChat: 45,000 used today; 4,000 more fits, then 2,000 more does not.
    s.transfers(
        transfer(0x7001, CLASS_I[0], CLASS_I[2], 400_000, channel=CHANNEL_WECHAT),
        transfer(0x7002, CLASS_I[0], CLASS_I[2], 200_000, channel=CHANNEL_WECHAT),
        transfer(FIRST_PAYMENT + 2, CLASS_I[0], CLASS_I[1], 1_500_000, channel=CHANNEL_WECHAT),
        transfer(FIRST_PAYMENT + 3, CLASS_I[0], CLASS_I[1], 1_500_000, channel=CHANNEL_WECHAT),
        transfer(0x7003, 0, 0, 50_000, flags=TransferFlags.POST_PENDING, pending_id=HOLD_POSTED),
        transfer(0x7004, 0, 0, 0, flags=TransferFlags.VOID_PENDING, pending_id=HOLD_FOREVER),
    )
    s.expire(T0 + 120 * NS_PER_S)
    s.update(CLASS_I[5], AccountStatus.ACTIVE, CLASS_I_FLAGS)
    s.accounts(account_input(LATE_ACCOUNT, AccountKind.CLASS_I, 1, CLASS_I_FLAGS))
    s.transfers(
        transfer(0x7005, 0, 0, 0, flags=TransferFlags.POST_PENDING, pending_id=HOLD_EXPIRES),
        transfer(0x7006, CLASS_I[4], LATE_ACCOUNT, 5_000),
        transfer(0x7007, CLASS_I[4], CLASS_I[5], 5_000),
        # 9,000 CNY fits the 10,000 CNY class II day only if the expired hold gave 2,000 back.
        transfer(0x7008, CLASS_II[0], CLASS_I[6], 900_000, channel=CHANNEL_WECHAT),
    )
    s.next_day()
    s.transfers(
        transfer(0x7009, CLASS_I[0], CLASS_I[2], 1_500_000, channel=CHANNEL_WECHAT),
        transfer(0x700A, CLASS_I[7], CLASS_I[8], 10_000, channel=CHANNEL_WECHAT),
    )
    return before, s.entries


# The results the `after` entries must give: each depends on state rebuilt from a snapshot.
AFTER_TRANSFER_RESULTS = [
    [R.OK, R.EXCEEDS_CHANNEL_DAILY_CAP, R.EXISTS, R.ID_ALREADY_FAILED, R.OK, R.OK],
    [R.PENDING_TRANSFER_EXPIRED, R.OK, R.OK, R.OK],
    [R.OK, R.OK],
]


def new_ledger(backend: str = "kernel") -> Ledger:
    if backend == "kernel":
        return KernelLedger(account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY)
    return ReferenceLedger(account_capacity=ACCOUNT_CAPACITY, transfer_capacity=TRANSFER_CAPACITY)


def replayed(entries: Sequence[Entry], backend: str = "kernel") -> Ledger:
    ledger = new_ledger(backend)
    for entry in entries:
        apply_entry(ledger, entry)
    return ledger


def transfer_results(ledger: Ledger, entries: Sequence[Entry]) -> list[list[int]]:
    """Apply `entries`; the result codes of each transfer batch."""
    results = []
    for entry in entries:
        outcome: Any = apply_entry(ledger, entry)
        if entry.kind == EntryKind.CREATE_TRANSFERS:
            results.append(list(outcome[0]))
    return results


def write_journal(
    directory: Path, entries: Sequence[Entry], groups: Sequence[int] | None = None, **options: Any
) -> None:
    """Append `entries`, one group each unless `groups` gives the group sizes."""
    sizes = list(groups) if groups is not None else [1] * len(entries)
    assert sum(sizes) == len(entries)
    with Journal.open(directory, **options) as journal:
        index = 0
        for size in sizes:
            journal.append(entries[index : index + size])
            index += size


def read_entries(directory: Path) -> list[tuple[int, Entry]]:
    return [(stored.seq, stored.entry) for stored in JournalScan(directory)]


def small_entries(count: int, transfers_each: int = 1, first: int = 0) -> list[Entry]:
    """Small CREATE_TRANSFERS entries (never applied) for the framing tests."""
    return [
        Entry(
            EntryKind.CREATE_TRANSFERS,
            T0 + 1000 * (first + n),
            DAY0,
            transfers_each,
            b"".join(
                transfer(0x9000 + 100 * (first + n) + k, CLASS_I[0], CLASS_I[1], 1 + n + k)
                for k in range(transfers_each)
            ),
        )
        for n in range(count)
    ]


def record_offsets(directory: Path) -> list[tuple[str, int, int]]:
    """(segment path, byte offset, size) of every record."""
    return [(stored.segment, stored.offset, stored.size) for stored in JournalScan(directory)]


def flip_bit(path: str, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        value = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([value ^ (1 << bit)]))


def zero_range(path: str, start: int, end: int) -> None:
    with open(path, "r+b") as file:
        file.seek(start)
        file.write(bytes(end - start))


def directory_bytes(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


# --- codec --------------------------------------------------------------------


def crc32c_bitwise(data: bytes, crc: int = 0) -> int:
    register = crc ^ 0xFFFFFFFF
    for byte in data:
        register ^= byte
        for _ in range(8):
            register = (register >> 1) ^ (0x82F63B78 if register & 1 else 0)
    return register ^ 0xFFFFFFFF


def test_crc32c_known_vectors() -> None:
    """crc32c is CRC-32C (Castagnoli): the check value and the RFC 3720 iSCSI vectors."""
    assert codec.crc32c(b"123456789") == 0xE3069283
    assert codec.crc32c(b"") == 0
    assert codec.crc32c(bytes(32)) == 0x8A9136AA
    assert codec.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert codec.crc32c(bytes(range(32))) == 0x46DD794E
    assert codec.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_crc32c_matches_bitwise_at_every_length_and_alignment() -> None:
    """The SSE4.2 loop (head bytes, 8-byte words, tail bytes) equals the bitwise definition,
    for every length 0..80 at every start alignment, and chains: crc(b, crc(a)) == crc(a+b)."""
    data = random.Random(7).randbytes(128)
    for start in range(8):
        for length in range(81):
            chunk = data[start : start + length]
            view = memoryview(data)[start : start + length]
            assert codec.crc32c(view) == crc32c_bitwise(chunk), (start, length)
    for cut in range(0, 128, 5):
        assert codec.crc32c(data[cut:], codec.crc32c(data[:cut])) == codec.crc32c(data)


def test_crc32c_large_buffer_releases_gil_and_agrees() -> None:
    """Above the GIL-release size the result is the same as computed in pieces."""
    data = random.Random(3).randbytes(3 << 20)
    crc = 0
    for start in range(0, len(data), 4096):
        crc = codec.crc32c(data[start : start + 4096], crc)
    assert codec.crc32c(data) == crc


def test_header_round_trip_and_record_crc() -> None:
    """encode_header writes every field and the checksum record_crc recomputes."""
    payload = b"x" * 200
    out = bytearray(HEADER_SIZE + len(payload))
    crc = codec.encode_header(out, 7, T0, len(payload), 2, DAY0, 3, 9, 5, payload)
    out[HEADER_SIZE:] = payload
    assert out[:4] == b"TLJ1"
    assert codec.decode_header(out, 0) == (True, crc, 7, T0, 200, 2, DAY0, 3, 0, 9, 5, 0)
    assert codec.record_crc(out, 0, len(payload)) == crc
    assert crc == codec.crc32c(payload, codec.crc32c(bytes(out[8:HEADER_SIZE])))
    with pytest.raises(ValueError):
        codec.encode_header(out, 7, T0, 199, 2, DAY0, 3, 9, 5, payload)


# --- appending and reading back -------------------------------------------------


def test_append_reopen_round_trip_across_segment_rotation(tmp_path: Path) -> None:
    """Entries come back identical with seqs 1..n, across many small segments, each named
    for its first seq; appends continue after a reopen; a group larger than a segment
    gets a segment of its own, sized to fit."""
    before, after = scenario()
    entries = before + after
    write_journal(tmp_path, entries[:10], segment_size=SEGMENT_SIZE_MIN)
    write_journal(tmp_path, entries[10:], segment_size=SEGMENT_SIZE_MIN)
    big = small_entries(40, transfers_each=2, first=100)  # 40 x 320 bytes > 4096 in one group
    write_journal(tmp_path, big, groups=[40], segment_size=SEGMENT_SIZE_MIN)
    stored = read_entries(tmp_path)
    assert stored == list(enumerate(entries + big, start=1))
    segments = list_segments(str(tmp_path))
    assert len(segments) >= 4
    scan = JournalScan(tmp_path).run()
    assert [segment.first_seq for segment in scan.segments] == [first for first, _ in segments]
    assert scan.segments[-1].first_seq == len(entries) + 1  # the big group starts a segment
    assert scan.segments[-1].file_size >= 40 * 320
    assert scan.torn_tail is None and scan.last_seq == len(entries) + 40
    with Journal.open(tmp_path, segment_size=SEGMENT_SIZE_MIN) as journal:
        assert (journal.first_seq, journal.last_seq) == (1, len(entries) + 40)
        assert [stored.seq for stored in journal.read(from_seq=len(entries))][:2] == [
            len(entries),
            len(entries) + 1,
        ]


def test_group_commit_is_one_write_and_one_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group of N records costs one pwritev and one fdatasync, also past IOV_MAX buffers;
    every fdatasync is reported to the metrics hook and kept as a latency sample."""
    observed: list[tuple[float, int]] = []
    journal = Journal.open(
        tmp_path, on_fsync=lambda seconds, size: observed.append((seconds, size))
    )
    calls = {"fdatasync": 0, "pwritev": 0}
    real_fdatasync, real_pwritev = os.fdatasync, os.pwritev

    def counting_fdatasync(fd: int) -> None:
        calls["fdatasync"] += 1
        real_fdatasync(fd)

    def counting_pwritev(fd: int, buffers: Sequence[bytes], offset: int) -> int:
        calls["pwritev"] += 1
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(journal_module.os, "fdatasync", counting_fdatasync)
    monkeypatch.setattr(journal_module.os, "pwritev", counting_pwritev)
    for size in (1, 100, 3 * journal_module.IOV_MAX):
        calls.update(fdatasync=0, pwritev=0)
        first = journal.last_seq + 1
        journal.append(small_entries(size, first=first))
        assert calls == {"fdatasync": 1, "pwritev": 1}, size
        assert journal.last_seq == first + size - 1
    assert len(journal.fsync_latency_s) == 3 and len(observed) == 3
    assert [size for _, size in observed] == [
        n * (HEADER_SIZE + 128) for n in (1, 100, 3 * journal_module.IOV_MAX)
    ]
    journal.close()
    monkeypatch.undo()
    assert len(read_entries(tmp_path)) == 1 + 100 + 3 * journal_module.IOV_MAX


def test_append_refuses_malformed_entries(tmp_path: Path) -> None:
    """The pair assertion before writing: an entry whose payload disagrees with its count
    is refused and nothing is written."""
    with Journal.open(tmp_path) as journal:
        bad = Entry(EntryKind.CREATE_TRANSFERS, T0, DAY0, 2, b"\0" * 128)
        with pytest.raises(AssertionError):
            journal.append([bad])
        assert journal.last_seq == 0
    assert read_entries(tmp_path) == []


def test_second_writer_is_locked_out(tmp_path: Path) -> None:
    """Only one Journal may be open for appends on a directory."""
    with Journal.open(tmp_path), pytest.raises(JournalLocked):
        Journal.open(tmp_path, lock_timeout_s=0.05)
    Journal.open(tmp_path).close()  # released on close


def test_fenced_writer_cannot_open(tmp_path: Path) -> None:
    """A writer whose epoch is older than the journal's last record is refused: its records
    would break the epoch order that the scan checks."""
    write_journal(tmp_path, small_entries(2), epoch=3)
    assert {stored.epoch for stored in JournalScan(tmp_path)} == {3}
    with pytest.raises(JournalError, match="fenced off"):
        Journal.open(tmp_path, epoch=2)
    write_journal(tmp_path, small_entries(1, first=2), epoch=4)
    assert [stored.epoch for stored in JournalScan(tmp_path)] == [3, 3, 4]


def test_failed_fdatasync_poisons_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an fdatasync error (injected) every later append is refused: the page cache
    cannot be trusted, so the group's bytes (written, never synced) are the unsynced tail;
    they are zeroed before the journal is released, and reopening finds exactly the
    acknowledged records (never the unacknowledged group read back from the cache)."""
    journal = Journal.open(tmp_path)
    journal.append(small_entries(2))

    def failing_fdatasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal_module.os, "fdatasync", failing_fdatasync)
    with pytest.raises(JournalWriteError, match=r"seq 3\.\.3") as raised:
        journal.append(small_entries(1, first=2))
    assert raised.value.errno == 5 and journal.has_unsynced
    with pytest.raises(JournalWriteError):
        journal.discard_unsynced()  # the disk still refuses: kept for the next try
    monkeypatch.undo()
    with pytest.raises(JournalError, match="unusable"):
        journal.append(small_entries(1, first=2))
    journal.discard_unsynced()
    assert not journal.has_unsynced
    journal.close()
    with Journal.open(tmp_path) as reopened:
        assert reopened.last_seq == 2
        assert reopened.recovery.torn_tail is None  # zeros: a clean end, not a torn tail


# --- recovery: torn tails and corruption ---------------------------------------


@pytest.mark.parametrize("damage", ["zero", "truncate"])
def test_torn_last_record_at_every_byte_offset(tmp_path: Path, damage: str) -> None:
    """For EVERY byte offset inside the last record, zeroing (or truncating the file) from
    there is a torn tail: recovery keeps records 1..n-1, zeroes the rest, and the next
    append gets seq n and reads back intact."""
    entries = small_entries(4)
    # Never applied, so any payload will do: one without zero bytes, so that zeroing from
    # any offset really changes the record.
    noise = bytes(1 + byte % 255 for byte in random.Random(5).randbytes(256))
    last = Entry(EntryKind.CREATE_TRANSFERS, T0 + 10_000, DAY0, 2, noise)  # 64 + 256 bytes
    base = tmp_path / "base"
    write_journal(base, [*entries, last], segment_size=SEGMENT_SIZE_MIN * 2)
    segment, record_offset, record_size = record_offsets(base)[-1]
    name = os.path.basename(segment)
    replacement = small_entries(1, first=50)[0]
    for cut in range(record_size):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(base, work)
        if damage == "zero":
            zero_range(str(work / name), record_offset + cut, record_offset + record_size)
        else:
            os.truncate(work / name, record_offset + cut)
        with Journal.open(work, segment_size=SEGMENT_SIZE_MIN * 2) as journal:
            assert journal.last_seq == 4, cut
            torn = journal.recovery.torn_tail
            assert (torn is None) == (cut == 0), cut
            if torn is not None:
                assert (torn.offset, torn.missing_seq) == (record_offset, 5)
            journal.append([replacement])
        assert read_entries(work) == [*enumerate(entries, start=1), (5, replacement)], cut
        assert JournalScan(work).run().torn_tail is None
        shutil.rmtree(work)


def test_torn_last_group_persisted_out_of_order(tmp_path: Path) -> None:
    """A crash during the last group's write may persist a later record of the group and
    not an earlier one: recovery drops the whole rest of that unacknowledged group."""
    entries = small_entries(6)
    write_journal(tmp_path, entries, groups=[2, 4], segment_size=SEGMENT_SIZE_MIN)
    offsets = record_offsets(tmp_path)
    segment, offset, size = offsets[3]  # seq 4, inside the group 3..6
    zero_range(segment, offset, offset + size)
    scan = JournalScan(tmp_path).run()
    assert scan.torn_tail is not None and scan.torn_tail.dropped_records == (5, 6)
    with Journal.open(tmp_path, segment_size=SEGMENT_SIZE_MIN) as journal:
        assert journal.last_seq == 3
        journal.append(small_entries(1, first=40))
    assert [seq for seq, _ in read_entries(tmp_path)] == [1, 2, 3, 4]


def test_damage_before_a_later_group_is_corruption(tmp_path: Path) -> None:
    """The same hole is JournalCorrupt once a later group exists: that group was only
    written after the damaged one was acknowledged. Nothing is changed on disk."""
    entries = small_entries(8)
    write_journal(tmp_path, entries, groups=[2, 4, 2], segment_size=SEGMENT_SIZE_MIN)
    segment, offset, size = record_offsets(tmp_path)[3]
    zero_range(segment, offset, offset + size)
    before = directory_bytes(tmp_path)
    with pytest.raises(JournalCorrupt) as error:
        Journal.open(tmp_path, segment_size=SEGMENT_SIZE_MIN)
    assert os.path.basename(segment) in str(error.value)
    assert f"byte offset {offset}" in str(error.value)
    assert directory_bytes(tmp_path) == before


HEADER_AND_PAYLOAD_POSITIONS = [0, 3, 4, 8, 15, 16, 24, 27, 28, 30, 32, 36, 40, 48, 56, 63]


@pytest.mark.parametrize(
    "position", [*HEADER_AND_PAYLOAD_POSITIONS, "payload_first", "payload_middle", "payload_last"]
)
def test_bit_flip_in_a_middle_record_is_corruption(tmp_path: Path, position: int | str) -> None:
    """One flipped bit anywhere in a record (every header field, the payload's first, middle
    and last byte) with acknowledged records after it raises JournalCorrupt naming the
    segment and the record's byte offset, and recovery changes nothing."""
    entries = small_entries(5, transfers_each=2)
    write_journal(tmp_path, entries, segment_size=SEGMENT_SIZE_MIN)
    segment, offset, size = record_offsets(tmp_path)[2]
    byte = {
        "payload_first": HEADER_SIZE,
        "payload_middle": HEADER_SIZE + (size - HEADER_SIZE) // 2,
        "payload_last": size - 1,
    }.get(str(position), position)
    assert isinstance(byte, int)
    flip_bit(segment, offset + byte, bit=byte % 8)
    before = directory_bytes(tmp_path)
    for attempt in (lambda: JournalScan(tmp_path).run(), lambda: Journal.open(tmp_path)):
        with pytest.raises(JournalCorrupt) as error:
            attempt()
        assert error.value.segment == segment and error.value.offset == offset
        assert f"{os.path.basename(segment)} at byte offset {offset}" in str(error.value)
    assert directory_bytes(tmp_path) == before


def test_damage_in_an_earlier_segment_is_corruption(tmp_path: Path) -> None:
    """The last record of a segment that is not the last one was acknowledged before the
    next segment was created: damage to it is corruption, not a torn tail."""
    entries = small_entries(60)
    write_journal(tmp_path, entries, segment_size=SEGMENT_SIZE_MIN)
    offsets = record_offsets(tmp_path)
    first_segment = list_segments(str(tmp_path))[0][1]
    segment, offset, _ = [entry for entry in offsets if entry[0] == first_segment][-1]
    flip_bit(segment, offset + HEADER_SIZE + 5)
    with pytest.raises(JournalCorrupt, match="a later segment exists") as error:
        Journal.open(tmp_path, segment_size=SEGMENT_SIZE_MIN)
    assert error.value.offset == offset


def test_damage_to_the_last_group_reads_as_a_torn_tail(tmp_path: Path) -> None:
    """The one case no log can tell from a crash: damage inside the last group is
    truncated like a torn write (documented in core/journal.py)."""
    entries = small_entries(4)
    write_journal(tmp_path, entries, segment_size=SEGMENT_SIZE_MIN)
    segment, offset, _ = record_offsets(tmp_path)[-1]
    flip_bit(segment, offset + HEADER_SIZE + 1)
    with Journal.open(tmp_path) as journal:
        assert journal.last_seq == 3 and journal.recovery.torn_tail is not None


def raw_record(seq: int, entry: Entry, *, group_first_seq: int | None = None) -> bytes:
    header = bytearray(HEADER_SIZE)
    codec.encode_header(
        header,
        seq,
        entry.timestamp_first,
        len(entry.payload),
        int(entry.kind),
        entry.business_day,
        entry.count,
        0,
        seq if group_first_seq is None else group_first_seq,
        entry.payload,
    )
    return bytes(header) + entry.payload


def write_raw_segment(directory: Path, first_seq: int, records: Sequence[bytes]) -> str:
    path = directory / journal_module.segment_name(first_seq)
    data = b"".join(records)
    path.write_bytes(data + bytes(SEGMENT_SIZE_MIN - len(data) % SEGMENT_SIZE_MIN))
    return str(path)


@pytest.mark.parametrize("seqs", [[1, 2, 4, 5], [1, 2, 2, 3], [1, 2, 0, 3]])
def test_seq_gap_or_repeat_is_corruption(tmp_path: Path, seqs: list[int]) -> None:
    """Records with valid checksums whose seqs skip, repeat or go back raise JournalCorrupt
    at the first one out of order."""
    entries = small_entries(len(seqs))
    records = [raw_record(seq, entry) for seq, entry in zip(seqs, entries, strict=True)]
    segment = write_raw_segment(tmp_path, 1, records)
    with pytest.raises(JournalCorrupt, match="expected seq 3") as error:
        Journal.open(tmp_path)
    assert error.value.segment == segment
    assert error.value.offset == sum(len(record) for record in records[:2])


def test_segment_names_must_continue_the_sequence(tmp_path: Path) -> None:
    """A segment named for a seq that does not follow the previous segment is corruption
    (a lost or misnamed segment), reported at its byte offset 0."""
    entries = small_entries(4)
    write_raw_segment(tmp_path, 1, [raw_record(seq, entries[seq - 1]) for seq in (1, 2)])
    second = write_raw_segment(tmp_path, 4, [raw_record(seq, entries[seq - 2]) for seq in (4, 5)])
    with pytest.raises(JournalCorrupt, match="should start at seq 3") as error:
        JournalScan(tmp_path).run()
    assert (error.value.segment, error.value.offset) == (second, 0)


def test_unknown_kind_with_valid_checksum_is_corruption(tmp_path: Path) -> None:
    """A checksummed record of a kind this version does not know is never skipped."""
    entry = small_entries(1)[0]
    header = bytearray(HEADER_SIZE)
    codec.encode_header(header, 1, T0, len(entry.payload), 99, DAY0, 1, 0, 1, entry.payload)
    write_raw_segment(tmp_path, 1, [bytes(header) + entry.payload])
    with pytest.raises(JournalCorrupt, match="unknown kind 99"):
        Journal.open(tmp_path)


# --- snapshots and replay ---------------------------------------------------------


def test_scenario_leaves_state_that_needs_rebuilt_indexes() -> None:
    """The scenario does what the snapshot tests rely on: at the snapshot point there are
    live holds with timeouts, channel counters, failed transfers in the log and evicted
    ones; afterwards its transfers give the expected results."""
    before, after = scenario()
    ledger = replayed(before)
    assert isinstance(ledger, KernelLedger)
    assert ledger.heap_size >= 3
    assert kernel.channel_entries_live(ledger.channel_counters, ledger.last_day)
    assert ledger.log_tail == 3
    results = [ledger.lookup_transfer(0x4000 + n) for n in range(4)]
    assert results[:3] == [None, None, None] and results[3] is not None
    failed = ledger.lookup_transfer(FIRST_PAYMENT + 3)
    assert failed is not None and transfer_view(failed).result == R.EXCEEDS_CHANNEL_DAILY_CAP
    assert transfer_results(ledger, after) == AFTER_TRANSFER_RESULTS


def test_snapshot_round_trip_keeps_the_digest_and_the_behaviour(tmp_path: Path) -> None:
    """load_snapshot rebuilds a KernelLedger whose digest equals the original's, and which
    then answers every later entry exactly like the original (holds posted, voided and
    expired, channel caps, idempotent retries, new accounts)."""
    before, after = scenario()
    original = replayed(before)
    assert isinstance(original, KernelLedger)
    path = write_snapshot(tmp_path, original, len(before))
    assert os.path.basename(path) == f"snapshot-{len(before):020d}.tls"
    loaded, last_seq = load_snapshot(path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    assert last_seq == len(before)
    assert loaded.digest() == original.digest()
    assert transfer_results(loaded, after) == AFTER_TRANSFER_RESULTS
    assert transfer_results(original, after) == AFTER_TRANSFER_RESULTS
    assert loaded.digest() == original.digest()


def test_snapshot_loads_into_other_capacities_and_the_reference(tmp_path: Path) -> None:
    """The snapshot does not depend on the capacities it was taken with: a larger ledger
    (another ring position for every seq) and the reference ledger load it to the same
    digest and go on identically."""
    before, after = scenario()
    original = replayed(before)
    assert isinstance(original, KernelLedger)
    path = write_snapshot(tmp_path, original, len(before))
    expected = transfer_results(replayed(before), after)
    bigger, _ = load_snapshot(path, 5000, 3 * TRANSFER_CAPACITY)
    reference, _ = load_snapshot(path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY, backend="reference")
    assert isinstance(reference, ReferenceLedger)
    for ledger in (bigger, reference):
        assert ledger.digest() == original.digest()
        assert transfer_results(ledger, after) == expected


def test_snapshot_loads_when_an_account_product_was_retired(tmp_path: Path) -> None:
    """Accounts on a product that later rules no longer list (retired at a restart) still
    load: the account index is rebuilt independently of the rules in force."""
    before, _ = scenario()
    ledger = replayed(before)
    assert isinstance(ledger, KernelLedger)
    products = bytes(RULES.product_table())[: 2 * 64]  # products 0 and 1 only
    ledger.set_rules(products, bytes(RULES.channel_table()))
    path = write_snapshot(tmp_path, ledger, len(before))
    loaded, _ = load_snapshot(path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    assert loaded.digest() == ledger.digest()
    assert bytes(loaded.products) == products


def test_snapshot_refuses_capacities_too_small(tmp_path: Path) -> None:
    """A ledger too small for the snapshot's state is an operating error naming the file."""
    before, _ = scenario()
    original = replayed(before)
    assert isinstance(original, KernelLedger)
    path = write_snapshot(tmp_path, original, len(before))
    with pytest.raises(SnapshotError, match="account capacity is 4"):
        load_snapshot(path, 4, TRANSFER_CAPACITY)


def test_snapshot_refuses_a_flipped_byte_and_sections_it_does_not_know(tmp_path: Path) -> None:
    """A flipped byte in a section fails that section's checksum, and a file whose section
    table names other sections than the ledger declares (another layout version) is
    refused with both lists named, not loaded half-way."""
    before, _ = scenario()
    ledger = replayed(before)
    path = write_snapshot(tmp_path, ledger, len(before))
    data = bytearray(Path(path).read_bytes())
    flipped = bytearray(data)
    flipped[-1] ^= 1  # the last byte of the last section (digest)
    Path(path).write_bytes(flipped)
    with pytest.raises(SnapshotCorrupt, match="checksum mismatch"):
        load_snapshot(path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    renamed = bytearray(data)
    position = renamed.index(b"chanlive", 64)
    renamed[position : position + 8] = b"chanold\0"
    section_count = struct.unpack_from("<I", renamed, 20)[0]
    table_end = 64 + 32 * section_count
    struct.pack_into("<I", renamed, 4, codec.crc32c(memoryview(renamed)[8:table_end]))
    Path(path).write_bytes(renamed)
    with pytest.raises(SnapshotCorrupt, match=r"expected .*chanlive"):
        load_snapshot(path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)


def journal_with_snapshot(directory: Path, **options: Any) -> tuple[list[Entry], str]:
    """Journal the scenario with a snapshot between its halves; (all entries, snapshot)."""
    before, after = scenario()
    ledger = new_ledger()
    assert isinstance(ledger, KernelLedger)
    with Journal.open(directory, **options) as journal:
        for entry in before:
            journal.append([entry])
            apply_entry(ledger, entry)
        path = write_snapshot(directory, ledger, journal.last_seq)
        journal.append(after)
    return before + after, path


def test_snapshot_plus_journal_tail_equals_full_replay(tmp_path: Path) -> None:
    """recover_ledger loads the snapshot and replays only the records after it, and the
    result equals replaying every entry from an empty ledger, on both backends."""
    entries, path = journal_with_snapshot(tmp_path)
    full = replayed(entries).digest()
    recovered = recover_ledger(tmp_path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    assert recovered.snapshot_path == path
    assert recovered.records_replayed == len(scenario()[1])
    assert recovered.last_seq == len(entries)
    assert recovered.ledger.digest() == full
    reference = recover_ledger(tmp_path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY, backend="reference")
    assert isinstance(reference.ledger, ReferenceLedger)
    assert reference.ledger.digest() == full


def test_reference_replay_equals_kernel_replay(tmp_path: Path) -> None:
    """Replaying the whole journal (no snapshot) gives the same digest on the reference and
    the kernel backends: replay is deterministic and backend-independent."""
    before, after = scenario()
    write_journal(tmp_path, before + after, groups=[3, len(before) - 3, len(after)])
    kernel_run = recover_ledger(tmp_path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    reference_run = recover_ledger(
        tmp_path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY, backend="reference"
    )
    assert kernel_run.snapshot_path is None and kernel_run.records_replayed == len(before + after)
    assert kernel_run.ledger.digest() == reference_run.ledger.digest()
    assert kernel_run.ledger.digest() == replayed(before + after).digest()


def test_fork_snapshot_captures_the_state_at_the_fork(tmp_path: Path) -> None:
    """The forked child writes the state as of the fork even though the parent goes on
    posting at once (copy-on-write); the parent only pauses for fork()."""
    before, after = scenario()
    ledger = replayed(before)
    assert isinstance(ledger, KernelLedger)
    digest_at_fork = ledger.digest()
    pid = fork_snapshot(tmp_path, ledger, len(before))
    assert 0 <= fork_pause_s(pid) < 5
    for entry in after:
        apply_entry(ledger, entry)
    path = wait_snapshot(pid)
    loaded, last_seq = load_snapshot(path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    assert last_seq == len(before) and loaded.digest() == digest_at_fork
    assert ledger.digest() != digest_at_fork


def test_prune_keeps_two_snapshots_and_the_journal_after_the_older(tmp_path: Path) -> None:
    """After a third snapshot only the newest two remain, and only segments wholly covered
    by the OLDER of them are removed, so falling back to it can still replay forward."""
    before, after = scenario()
    entries = before + after
    ledger = new_ledger()
    assert isinstance(ledger, KernelLedger)
    points = [6, 10, 14]
    with Journal.open(tmp_path, segment_size=SEGMENT_SIZE_MIN) as journal:
        for seq, entry in enumerate(entries, start=1):
            journal.append([entry])
            apply_entry(ledger, entry)
            if seq in points:
                write_snapshot(tmp_path, ledger, seq)
    assert [seq for seq, _ in list_snapshots(tmp_path)] == points[1:]
    scan = JournalScan(tmp_path).run()
    assert 1 < scan.first_seq <= points[1] + 1
    assert scan.last_seq == len(entries)


def test_corrupt_newest_snapshot_falls_back_to_the_previous(tmp_path: Path) -> None:
    """A newest snapshot failing its checksum is skipped with a warning for the previous
    one plus a longer replay; the result still equals the full replay. With both bad and
    the journal's start removed, recovery refuses rather than guess."""
    before, after = scenario()
    entries = before + after
    ledger = new_ledger()
    assert isinstance(ledger, KernelLedger)
    with Journal.open(tmp_path, segment_size=SEGMENT_SIZE_MIN) as journal:
        for seq, entry in enumerate(entries, start=1):
            journal.append([entry])
            apply_entry(ledger, entry)
            if seq in (5, 9, 13):
                write_snapshot(tmp_path, ledger, seq)
    (_, older), (_, newest) = list_snapshots(tmp_path)
    flip_bit(newest, os.path.getsize(newest) // 2)
    recovered = recover_ledger(tmp_path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
    assert recovered.snapshot_path == older and recovered.snapshot_seq == 9
    assert len(recovered.warnings) == 1 and os.path.basename(newest) in recovered.warnings[0]
    assert recovered.ledger.digest() == replayed(entries).digest()
    flip_bit(older, os.path.getsize(older) - 10)  # inside the digest section
    with pytest.raises(JournalCorrupt, match="journal starts at seq"):
        recover_ledger(tmp_path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)


def test_snapshot_ahead_of_the_journal_is_refused(tmp_path: Path) -> None:
    """A snapshot covering seqs the journal no longer has means durable records were lost:
    recovery refuses to start."""
    before, _ = scenario()
    write_journal(tmp_path, before[:-2])
    ledger = replayed(before)
    assert isinstance(ledger, KernelLedger)
    write_snapshot(tmp_path, ledger, len(before))
    with pytest.raises(JournalCorrupt, match="ends at seq"):
        recover_ledger(tmp_path, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)


# --- the command line -----------------------------------------------------------------


def run_tally(*arguments: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
    return subprocess.run(
        [sys.executable, "-m", "core", *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_verify_reports_the_journal_and_the_state(tmp_path: Path) -> None:
    """`tally journal verify DIR` prints the segments, record counts by kind, first and
    last seq, the snapshot used, replay time and rate, and the final digest (exit 0)."""
    entries, snapshot = journal_with_snapshot(tmp_path, segment_size=SEGMENT_SIZE_MIN)
    result = run_tally(
        "journal",
        "verify",
        str(tmp_path),
        "--account-capacity",
        str(ACCOUNT_CAPACITY),
        "--transfer-capacity",
        str(TRANSFER_CAPACITY),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for _, path in list_segments(str(tmp_path)):
        assert f"segment    {os.path.basename(path)}  records" in out
    transfers = sum(entry.kind == EntryKind.CREATE_TRANSFERS for entry in entries)
    assert f"  CREATE_TRANSFERS   {transfers}\n" in out
    assert f"records    {len(entries)} (seqs 1..{len(entries)})" in out
    assert "first seq  1\n" in out and f"last seq   {len(entries)}\n" in out
    assert f"snapshot   {os.path.basename(snapshot)} (seq {len(scenario()[0])})" in out
    assert "records/s" in out and "torn tail  none" in out
    assert f"digest     {replayed(entries).digest()}\n" in out
    assert out.endswith("ok\n")


def test_cli_verify_fails_precisely_on_corruption(tmp_path: Path) -> None:
    """On a corrupt journal verify exits 1 and says which file, which byte offset, why."""
    write_journal(tmp_path, small_entries(5))
    segment, offset, _ = record_offsets(tmp_path)[1]
    flip_bit(segment, offset + HEADER_SIZE + 3)
    result = run_tally("journal", "verify", str(tmp_path))
    assert result.returncode == 1
    assert f"{os.path.basename(segment)} at byte offset {offset}" in result.stderr
    assert "seq 2 is torn or fails its checksum" in result.stderr


def test_cli_dump_prints_records_and_transfers(tmp_path: Path) -> None:
    """`tally journal dump DIR --from-seq N --limit M` prints M records from seq N: seq, kind,
    count, UTC time, business day, then one line per transfer with hex ids, the amount in
    fen and in CNY, the code name, flags and channel."""
    before, _ = scenario()
    write_journal(tmp_path, before)
    payments_seq = 5
    assert before[payments_seq - 1].kind == EntryKind.CREATE_TRANSFERS
    result = run_tally(
        "journal", "dump", str(tmp_path), "--from-seq", str(payments_seq), "--limit", "2"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    entry = before[payments_seq - 1]
    assert lines[0].startswith(
        f"seq {payments_seq} CREATE_TRANSFERS count={entry.count} time=2026-01-01T00:00:00.0000000"
    )
    assert " day=2026-01-01 " in lines[0]
    assert lines[1] == (
        f"  id={FIRST_PAYMENT:#x} debit={CLASS_I[0]:#x} credit={CLASS_I[1]:#x}"
        f" amount=1500000 fen (15000.00 CNY) code=TRANSFER flags=0 channel=1"
        f" user_data={FIRST_PAYMENT * 7:#x}"
    )
    assert any("flags=LINKED" in line for line in lines)
    headers = [line for line in lines if not line.startswith("  ")]
    assert len(headers) == 2 and headers[1].startswith(f"seq {payments_seq + 1} CREATE_TRANSFERS")
    assert any("flags=PENDING" in line and "timeout=60s" in line for line in lines)


def test_cli_dump_describes_every_kind(tmp_path: Path) -> None:
    """Every record kind has a readable line: rules, accounts, updates, expiry, eviction."""
    before, after = scenario()
    write_journal(tmp_path, before + after)
    result = run_tally("journal", "dump", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SET_RULES count=1" in out and "  rules products=8 " in out
    assert f"  account id={CLASS_II[0]:#x} kind=CLASS_II ledger=156" in out
    assert f"bound={CLASS_I[0]:#x}" in out
    assert f"  account id={CLASS_I[5]:#x} status=FROZEN" in out
    assert "EXPIRE_PENDING count=0" in out and "  expire holds due at 2026-01-01T00:02:00" in out
    assert "  evict before=2026-01-01T00:00:00.000000006Z count_max=3" in out
    assert len([line for line in out.splitlines() if line.startswith("seq ")]) == len(
        before + after
    )
