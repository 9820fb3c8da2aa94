"""A journal writer to be killed: tests/crash/test_journal_crash.py runs it and SIGKILLs it.

    python tests/journal_writer_process.py DIR --seed N [--snapshot-every N]

It opens the journal in DIR (recovering whatever the last kill left), prints
`ready <last_seq>`, then appends groups of one to four entries until killed.
Entry `seq` is a pure function of (seed, seq) (`expected_entry`), so the test
can check every record it finds byte for byte. Before each `append` it
prints `w <first seq>` (the group is in flight from then on), after it
returns (the group is fdatasync'd) the group's last seq, each line in one
unbuffered write: a printed seq is acknowledged and must survive any kill,
and everything before the last group in flight was synced.

With `--snapshot-every N` it also keeps the ledger (recovered from the
newest snapshot plus the journal at start) and forks a snapshot child about
every N records, so kills also land while snapshots are written and pruned.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

from cext import gen
from core.entries import EVICT_PAYLOAD, RULES_HEADER, Entry, EntryKind
from core.journal import Journal
from core.replay import apply_record, recover_ledger
from core.snapshot import fork_snapshot, poll_snapshot, wait_snapshot
from ledger.constants import LEDGER_CNY
from ledger.kernel import KernelLedger
from ledger.records import pack_account_input
from ledger.types import (
    ACCOUNT_SIZE,
    TRANSFER_SIZE,
    AccountFlags,
    AccountKind,
    TransferCode,
    split_id,
)
from limits.calendar import day_of_date
from limits.rules import parse_rules

ACCOUNT_COUNT = 2000
ACCOUNT_CAPACITY = 4096
TRANSFER_CAPACITY = 1 << 18
ACCOUNT_SEED = 11
FUNDING_SEED = 37
FUNDING_MINOR = 800_000
TRANSFERS_PER_RECORD_MAX = 128
EVICT_EVERY = 64
EXPIRE_EVERY = 97
CLEARING_ID = (0xC1EA << 64) | 1
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
NS_PER_RECORD = 1_000_000
DAY0 = day_of_date(2026, 1, 1)
SEQS_PER_DAY = 400
SEGMENT_SIZE = 1 << 20
MASK64 = (1 << 64) - 1

RULES = parse_rules(
    """
timezone = "Asia/Shanghai"

[products.class_ii_standard]
id = 1
kind = "class_ii"

[products.internal_ledger]
id = 2
kind = "internal"
balance_floor_minor = -10_000_000_000_000_000

[channels.wechat]
id = 1
kind = "wechat"
transfer_cap_minor = 5_000_000

[channels.app]
id = 2
kind = "app"
transfer_cap_minor = 5_000_000
daily_cap_minor = 2_000_000
""",
    "crash-test-rules.toml",
)


def mix(value: int) -> int:
    """splitmix64's finalizer: a well-spread hash of a seq."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def expected_entry(seed: int, seq: int) -> Entry:
    """The entry the writer journals as `seq`: rules, accounts, funding, then traffic."""
    timestamp = T0 + seq * NS_PER_RECORD
    day = DAY0 + seq // SEQS_PER_DAY
    if seq == 1:
        products, channels = bytes(RULES.product_table()), bytes(RULES.channel_table())
        payload = RULES_HEADER.pack(len(products)) + products + channels
        return Entry(EntryKind.SET_RULES, timestamp, day, 1, payload)
    if seq == 2:
        clearing = pack_account_input(id=CLEARING_ID, kind=AccountKind.INTERNAL_CLEARING, product=2)
        accounts = bytearray(ACCOUNT_COUNT * ACCOUNT_SIZE)
        flags = (
            AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
            | AccountFlags.NON_BOUND_INFLOW_ENABLED
            | AccountFlags.BOUND_EXTERNAL
        )
        gen.fill_accounts(accounts, ACCOUNT_SEED, 0, AccountKind.CLASS_II, flags, 1, LEDGER_CNY)
        payload = clearing + bytes(accounts)
        return Entry(EntryKind.CREATE_ACCOUNTS, timestamp, day, ACCOUNT_COUNT + 1, payload)
    if seq == 3:
        fundings = bytearray(ACCOUNT_COUNT * TRANSFER_SIZE)
        gen.fill_fundings(
            fundings,
            FUNDING_SEED,
            0,
            ACCOUNT_SEED,
            *split_id(CLEARING_ID),
            FUNDING_MINOR,
            TransferCode.TOPUP_BOUND,
            LEDGER_CNY,
        )
        return Entry(EntryKind.CREATE_TRANSFERS, timestamp, day, ACCOUNT_COUNT, bytes(fundings))
    if seq % EVICT_EVERY == 0:
        payload = EVICT_PAYLOAD.pack(timestamp - EVICT_EVERY // 2 * NS_PER_RECORD, 1 << 40)
        return Entry(EntryKind.EVICT, timestamp, day, 0, payload)
    if seq % EXPIRE_EVERY == 0:
        return Entry(EntryKind.EXPIRE_PENDING, timestamp, day, 0, b"")
    count = 1 + mix(seed * 1_000_003 + seq) % TRANSFERS_PER_RECORD_MAX
    transfers = bytearray(count * TRANSFER_SIZE)
    gen.fill_transfers(
        transfers,
        seed,
        seq * TRANSFERS_PER_RECORD_MAX,
        ACCOUNT_SEED,
        ACCOUNT_COUNT,
        0,
        0.02,
        TransferCode.TRANSFER,
        1 + seq % 2,
        LEDGER_CNY,
        4_000,
        1.0,
    )
    return Entry(EntryKind.CREATE_TRANSFERS, timestamp, day, count, bytes(transfers))


def group_size(seed: int, seq: int) -> int:
    return 1 + mix(seed + 7 * seq) % 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--snapshot-every", type=int, default=0)
    parser.add_argument("--pause-s-max", type=float, default=0.0005)
    parser.add_argument("--segment-size", type=int, default=SEGMENT_SIZE)
    args = parser.parse_args()
    journal = Journal.open(args.directory, segment_size=args.segment_size)
    ledger: KernelLedger | None = None
    if args.snapshot_every:
        recovered = recover_ledger(args.directory, ACCOUNT_CAPACITY, TRANSFER_CAPACITY)
        assert recovered.last_seq == journal.last_seq, (recovered.last_seq, journal.last_seq)
        assert isinstance(recovered.ledger, KernelLedger)
        ledger = recovered.ledger
    os.write(1, f"ready {journal.last_seq}\n".encode())
    seq = journal.last_seq + 1
    pauses = random.Random(args.seed * 7919 + seq)
    child: int | None = None
    while True:
        size = group_size(args.seed, seq)
        entries = [expected_entry(args.seed, s) for s in range(seq, seq + size)]
        os.write(1, f"w {seq}\n".encode())  # in flight
        journal.append(entries)
        os.write(1, f"{journal.last_seq}\n".encode())  # acknowledged
        if ledger is not None:
            for entry in entries:
                apply_record(ledger, entry)
            if child is not None and poll_snapshot(child) is not None:
                child = None
            every = args.snapshot_every
            if child is None and (journal.last_seq // every) > ((seq - 1) // every):
                child = fork_snapshot(args.directory, ledger, journal.last_seq)
        seq += size
        time.sleep(pauses.uniform(0, args.pause_s_max))
        if seq > 1 << 40:  # never: the test kills it long before
            break
    if child is not None:
        wait_snapshot(child)
    journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
