"""Change tracking: after each call the kernel names the accounts it changed
and the existing transfers whose records it changed (what a row store must rewrite)."""

from __future__ import annotations

import random

from ledger.kernel import KernelLedger
from ledger.types import (
    ACCOUNT_SIZE,
    NS_PER_S,
    PENDING_SIZE,
    TRANSFER_SIZE,
    TransferCode,
    TransferFlags,
)
from tests.engine_helpers import (
    CLEARING_ID,
    START_NS,
    class_ii_accounts,
    clearing_account,
    example_rules,
    transfer,
)


def rows(ledger: KernelLedger) -> tuple[list[bytes], list[bytes]]:
    accounts = [
        bytes(ledger.accounts[s * ACCOUNT_SIZE : (s + 1) * ACCOUNT_SIZE])
        + bytes(ledger.pending[s * PENDING_SIZE : (s + 1) * PENDING_SIZE])
        for s in range(ledger.account_count)
    ]
    records = [ledger.record_at(seq) for seq in range(ledger.log_tail, ledger.log_count)]
    return accounts, records


def test_changed_rows_are_exactly_the_ones_reported() -> None:
    """Random batches of transfers, holds (some expiring), captures, voids and reversals:
    the reported slots cover every account whose bytes changed (no duplicates), and the
    reported seqs cover every pre-existing log record whose bytes changed."""
    rng = random.Random(5)
    ledger = KernelLedger(account_capacity=256, transfer_capacity=1 << 14)
    rules = example_rules()
    ledger.set_rules(rules.product_table(), rules.channel_table())
    ledger.track_changes()
    ledger.create_accounts(clearing_account() + class_ii_accounts(1, 40))
    slots, seqs, overflowed = ledger.take_changes()
    assert sorted(slots) == list(range(41)) and not seqs and not overflowed
    now = START_NS
    day = rules.business_day(now)
    ledger.create_transfers(
        b"".join(
            transfer(10_000 + i, CLEARING_ID, 1 + i, 500_000, TransferCode.TOPUP_BOUND)
            for i in range(40)
        ),
        now,
        day,
    )
    ledger.take_changes()
    next_id = 20_000
    holds: list[int] = []
    posted: list[tuple[int, int, int]] = []
    for _ in range(60):
        before_accounts, before_records = rows(ledger)
        log_before = ledger.log_count
        batch = []
        for _ in range(rng.randint(1, 30)):
            next_id += 1
            choice = rng.random()
            if choice < 0.2 and holds:
                flag = rng.choice([TransferFlags.POST_PENDING, TransferFlags.VOID_PENDING])
                batch.append(
                    transfer(
                        next_id,
                        0,
                        0,
                        0,
                        code=0,
                        flags=flag,
                        pending_id=holds.pop(rng.randrange(len(holds))),
                    )
                )
            elif choice < 0.3 and posted:
                original, debit, credit = rng.choice(posted)
                batch.append(
                    transfer(next_id, credit, debit, 1, TransferCode.REVERSAL, pending_id=original)
                )
            else:
                debit, credit = rng.sample(range(1, 41), 2)
                pending = choice < 0.5
                batch.append(
                    transfer(
                        next_id,
                        debit,
                        credit,
                        rng.randint(1, 2_000),
                        flags=TransferFlags.PENDING if pending else 0,
                        timeout_s=rng.choice([1, 100]) if pending else 0,
                    )
                )
                if pending:
                    holds.append(next_id)
                else:
                    posted.append((next_id, debit, credit))
        now += rng.choice([1, NS_PER_S // 2, 2 * NS_PER_S])
        ledger.create_transfers(b"".join(batch), now, day)
        slots, seqs, overflowed = ledger.take_changes()
        after_accounts, after_records = rows(ledger)
        changed_accounts = {
            s for s in range(len(after_accounts)) if after_accounts[s] != before_accounts[s]
        }
        # Every changed account is named, once (a hold voided in its own batch may leave
        # an account named whose bytes came back to what they were).
        assert changed_accounts <= set(slots) and len(slots) == len(set(slots))
        tail = ledger.log_tail
        changed_records = {
            tail + i for i in range(log_before - tail) if after_records[i] != before_records[i]
        }
        assert changed_records <= set(seqs) and not overflowed
        assert all(tail <= seq < ledger.log_count for seq in seqs)  # may name new ones
    assert len(ledger.log) == ledger.transfer_capacity * TRANSFER_SIZE
