"""`tally journal verify` and `tally journal dump`: support tools over a data directory.

Both only read: a torn tail is reported (and left for `Journal.open` to zero),
corruption is printed precisely (file, byte offset, reason) with exit status 1.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import sys
from collections.abc import Iterator

from core.entries import (
    EVICT_PAYLOAD,
    UPDATE_ACCOUNT_PAYLOAD,
    Entry,
    EntryKind,
    rules_payload_tables,
)
from core.errors import TallyError
from core.journal import JournalScan, StoredRecord
from core.replay import recover_ledger
from ledger.constants import LEDGER_CNY
from ledger.records import account_input_view, transfer_view
from ledger.types import (
    ACCOUNT_SIZE,
    TRANSFER_SIZE,
    AccountFlags,
    AccountKind,
    AccountStatus,
    TransferCode,
    TransferFlags,
    join_id,
)

ACCOUNT_CAPACITY_DEFAULT = 1 << 20
TRANSFER_CAPACITY_DEFAULT = 1 << 22
EPOCH_DATE = datetime.date(2000, 1, 1)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="data directory (journal and snapshots)")
    parser.add_argument(
        "--account-capacity",
        type=int,
        default=ACCOUNT_CAPACITY_DEFAULT,
        help=f"accounts the replayed ledger can hold (default {ACCOUNT_CAPACITY_DEFAULT})",
    )
    parser.add_argument(
        "--transfer-capacity",
        type=int,
        default=TRANSFER_CAPACITY_DEFAULT,
        help=f"transfers in the ledger's log window (default {TRANSFER_CAPACITY_DEFAULT})",
    )
    parser.add_argument(
        "--backend",
        choices=("kernel", "reference"),
        default="kernel",
        help="ledger to replay into (default kernel)",
    )


def run_verify(args: argparse.Namespace) -> int:
    """Check every record and snapshot, replay to the end, print what was found."""
    directory = args.directory
    try:
        recovered = recover_ledger(
            directory, args.account_capacity, args.transfer_capacity, backend=args.backend
        )
    except TallyError as error:
        print(f"tally journal verify: {error}", file=sys.stderr)
        return 1
    scan = recovered.journal
    print(f"journal    {os.path.abspath(directory)}")
    for segment in scan.segments:
        print(
            f"segment    {os.path.basename(segment.path)}  records {segment.record_count}"
            f"  seqs {_seq_range(segment.first_seq, segment.last_seq)}"
            f"  bytes used {segment.end_offset} of {segment.file_size}"
        )
    if not scan.segments:
        print("segment    none")
    print(
        f"records    {scan.record_count} (seqs {_seq_range(scan.first_seq, scan.last_seq)}),"
        f" {scan.byte_count} bytes"
    )
    print(f"first seq  {scan.first_seq if scan.record_count else '-'}")
    print(f"last seq   {scan.last_seq if scan.record_count else '-'}")
    for kind in EntryKind:
        print(f"  {kind.name:18} {scan.kind_counts.get(kind, 0)}")
    if scan.torn_tail is None:
        print("torn tail  none")
    else:
        torn = scan.torn_tail
        print(
            f"torn tail  {os.path.basename(torn.segment)} at byte offset {torn.offset}:"
            f" {torn.reason}; {torn.dirty_end - torn.offset} bytes to zero on open"
            + (
                f", whole records of the torn group dropped: {list(torn.dropped_records)}"
                if torn.dropped_records
                else ""
            )
        )
    for warning in recovered.warnings:
        print(f"warning    {warning}")
    if recovered.snapshot_path is None:
        print("snapshot   none (replayed from an empty ledger)")
    else:
        print(
            f"snapshot   {os.path.basename(recovered.snapshot_path)} (seq"
            f" {recovered.snapshot_seq}), loaded in {recovered.snapshot_load_s:.3f} s"
        )
    print(
        f"replay     {recovered.records_replayed} records, {recovered.transfers_replayed}"
        f" transfers in {recovered.replay_s:.3f} s ({recovered.records_per_s:,.0f} records/s,"
        f" {recovered.transfers_per_s:,.0f} transfers/s)"
    )
    ledger = recovered.ledger
    print(
        f"state      last seq {recovered.last_seq}, accounts {ledger.account_count},"
        f" log window {ledger.log_tail}..{ledger.log_count}, business day"
        f" {_date_of_day(ledger.last_day)}"
    )
    print(f"digest     {ledger.digest()}")
    print("ok")
    return 0


def add_dump_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="data directory (journal)")
    parser.add_argument("--from-seq", type=int, default=1, help="first seq to print (default 1)")
    parser.add_argument("--limit", type=int, default=None, help="print at most N records")


def run_dump(args: argparse.Namespace) -> int:
    """Print records one line each, transfers and accounts indented below their record."""
    if args.limit is not None and args.limit < 0:
        print("tally journal dump: --limit must be >= 0", file=sys.stderr)
        return 2
    printed = 0
    try:
        if args.limit == 0:
            return 0
        for stored in JournalScan(args.directory, from_seq=args.from_seq):
            for line in describe_record(stored):
                print(line)
            printed += 1
            if args.limit is not None and printed >= args.limit:
                break
    except TallyError as error:
        sys.stdout.flush()
        print(f"tally journal dump: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def describe_record(stored: StoredRecord) -> Iterator[str]:
    entry = stored.entry
    yield (
        f"seq {stored.seq} {entry.kind.name} count={entry.count}"
        f" time={format_ns(entry.timestamp_first)} day={_date_of_day(entry.business_day)}"
        f" bytes={len(entry.payload)} epoch={stored.epoch} group={stored.group_first_seq}"
        f" at={os.path.basename(stored.segment)}:{stored.offset}"
    )
    yield from _describe_payload(entry)


def _describe_payload(entry: Entry) -> Iterator[str]:
    payload = entry.payload
    if entry.kind == EntryKind.CREATE_TRANSFERS:
        for offset in range(0, len(payload), TRANSFER_SIZE):
            yield "  " + describe_transfer(payload, offset)
    elif entry.kind == EntryKind.CREATE_ACCOUNTS:
        for offset in range(0, len(payload), ACCOUNT_SIZE):
            account = account_input_view(payload, offset)
            bound_id = account.bound_id
            yield (
                f"  account id={account.id:#x} kind={_name(AccountKind, account.kind)}"
                f" ledger={account.ledger} flags={_flags(AccountFlags, account.flags)}"
                f" product={account.product}" + (f" bound={bound_id:#x}" if bound_id else "")
            )
    elif entry.kind == EntryKind.UPDATE_ACCOUNT:
        id_lo, id_hi, status, flags = UPDATE_ACCOUNT_PAYLOAD.unpack(payload)
        yield (
            f"  account id={join_id(id_lo, id_hi):#x} status={_name(AccountStatus, status)}"
            f" flags={_flags(AccountFlags, flags)}"
        )
    elif entry.kind == EntryKind.EXPIRE_PENDING:
        yield f"  expire holds due at {format_ns(entry.timestamp_first)}"
    elif entry.kind == EntryKind.SET_RULES:
        products, channels, quotas = rules_payload_tables(payload)
        yield (
            f"  rules products={len(products) // 64} channel_table_bytes={len(channels)}"
            f" log_quota_bytes={len(quotas)}"
            f" sha256={hashlib.sha256(payload).hexdigest()}"
        )
    elif entry.kind in (EntryKind.EVICT, EntryKind.EVICT_FAILED):
        before_ns, count_max = EVICT_PAYLOAD.unpack(payload)
        what = "evict" if entry.kind == EntryKind.EVICT else "evict failures"
        yield f"  {what} before={format_ns(before_ns)} count_max={count_max}"


def describe_transfer(payload: bytes, offset: int) -> str:
    t = transfer_view(payload, offset)
    amount = t.amount
    currency = "CNY" if t.ledger == LEDGER_CNY else f"ledger {t.ledger}"
    text = (
        f"id={t.id:#x} debit={t.debit_account_id:#x} credit={t.credit_account_id:#x}"
        f" amount={amount} fen ({format_minor(amount)} {currency})"
        f" code={_name(TransferCode, t.code)} flags={_flags(TransferFlags, t.flags)}"
        f" channel={t.channel}"
    )
    if t.pending_id:
        text += f" pending_id={t.pending_id:#x}"
    if t.timeout_s:
        text += f" timeout={t.timeout_s}s"
    if t.user_data:
        text += f" user_data={t.user_data:#x}"
    return text


def format_ns(timestamp_ns: int) -> str:
    """UTC ISO 8601 with nanoseconds: 2026-01-01T00:00:00.000000123Z."""
    seconds, nanoseconds = divmod(timestamp_ns, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{nanoseconds:09d}Z"


def format_minor(amount_minor: int) -> str:
    """Fen as yuan with two decimals, by integer arithmetic: 123456 -> 1234.56."""
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 100)
    return f"{sign}{whole}.{fraction:02d}"


def _date_of_day(day: int) -> str:
    return (EPOCH_DATE + datetime.timedelta(days=day)).isoformat()


def _seq_range(first: int, last: int) -> str:
    return f"{first}..{last}" if last >= first else "none"


def _name(
    enum_type: type[AccountKind] | type[AccountStatus] | type[TransferCode], value: int
) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return f"UNKNOWN({value})"


def _flags(flag_type: type[AccountFlags] | type[TransferFlags], value: int) -> str:
    if value == 0:
        return "0"
    names = [flag.name for flag in flag_type if flag.value and value & flag.value and flag.name]
    unknown = value & ~sum(flag.value for flag in flag_type)
    if unknown:
        names.append(f"{unknown:#x}")
    return "|".join(names)
