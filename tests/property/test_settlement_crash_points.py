"""Whatever the crash point, a settlement posts each account's interest once per period.

A bank of random accounts (Class III near its cap and bound to a Class I or to another
bank's card, savings, Class I and II, fixed deposits, frozen ones) accrues interest
for a random number of days through ACCRUE_INTEREST entries. The settlement then runs
as the day-end runs it: SETTLE_INTEREST entries, each formed by `settlement_batch`
from the state after the entries before it, in chunks of random size. The engine
"crashes" after a random number of them: a new ledger is rebuilt by replaying the
surviving journal through `apply_entry` (as recovery does), and the settlement is run
again, to completion, in chunks of another size; sometimes the rerun itself crashes
and is rerun, and sometimes it runs twice more.

Then: every account that had accrued at least one fen has, in the log, exactly one
posting per interest id of the period (part 0 to the account, part 1 a Class III
account's excess to its bound account or the clearing account), together the amount
its accrued units round to (or, if its credit failed, no posting and its units kept);
no interest posting names another account or period; and the sum of all balances is
zero. Both twins, the rebuilt ledger equal to a ledger that never crashed.
"""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from collections.abc import Callable

from hypothesis import given, note, settings
from hypothesis import strategies as st

from core.entries import (
    UPDATE_ACCOUNT_PAYLOAD,
    Entry,
    EntryKind,
    apply_entry,
    pack_accrue_payload,
    pack_settle_payload,
)
from ledger.constants import INTERNAL_ACCOUNTS, INTERNAL_PRODUCT
from ledger.deposits import RATE_ROW, demand_row_view, interest_transfer_id
from ledger.kernel import KernelLedger
from ledger.records import transfer_view
from ledger.reference import ReferenceLedger
from ledger.types import AccountFlags, AccountKind, AccountStatus, TransferCode
from tests.ledger_helpers import account_input, make_ledger, rule_tables, transfer
from tests.unit.test_deposit_kernel import DEPOSIT_RULES

T0 = 1_767_225_600_000_000_000
DAY0 = 9_500
PERIOD = 8_104
Ledger = KernelLedger | ReferenceLedger


class Journal:
    """The entries so far, and a ledger that applied them (the engine's view)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.entries: list[Entry] = []
        self.clock = T0
        self.ledger = self.fresh()

    def fresh(self) -> Ledger:
        return make_ledger(self.backend, DEPOSIT_RULES, account_capacity=64,
                           transfer_capacity=1 << 12)  # fmt: skip

    def append(self, kind: EntryKind, day: int, count: int, payload: bytes) -> object:
        self.clock += 1_000 + count
        entry = Entry(kind, self.clock, day, count, payload)
        entry.check()
        self.entries.append(entry)
        return apply_entry(self.ledger, entry)

    def rebuilt(self, surviving: int) -> Ledger:
        """Recovery: a new ledger from the first `surviving` entries."""
        ledger = self.fresh()
        for entry in self.entries[:surviving]:
            apply_entry(ledger, entry)
        return ledger

    def settle(self, count_max: int, crash_after: int | None = None) -> bool:
        """Run the settlement in chunks of `count_max`, each chunk formed from the state
        after the chunks before it; False if it "crashed" after `crash_after` chunks."""
        slot = chunks = 0
        while slot < self.ledger.account_count:
            if crash_after is not None and chunks == crash_after:
                return False
            transfers, slots, slot = self.ledger.settlement_batch(PERIOD, slot, count_max)
            if transfers:
                self.append(EntryKind.SETTLE_INTEREST, DAY_SETTLED, len(transfers) // 128,
                            pack_settle_payload(PERIOD, transfers, slots))  # fmt: skip
                chunks += 1
        return True


DAY_SETTLED = DAY0 + 200


def open_bank(journal: Journal, rng: random.Random) -> list[int]:
    """Rules, internal accounts and random customer accounts with their money in."""
    products, channels = rule_tables(DEPOSIT_RULES)
    journal.append(EntryKind.SET_RULES, DAY0, 1,
                   struct.pack("<I", len(products)) + products + channels)  # fmt: skip
    batch = b"".join(
        account_input(account_id, kind, product=INTERNAL_PRODUCT)
        for account_id, kind in INTERNAL_ACCOUNTS
    )
    accounts: list[int] = []
    class_i: list[int] = []
    fundings = b""
    for index in range(rng.randint(3, 24)):
        account_id = 1_000 + index
        kind = rng.choice([AccountKind.CLASS_I, AccountKind.CLASS_II, AccountKind.CLASS_III,
                           AccountKind.SAVINGS, AccountKind.FIXED_DEPOSIT])  # fmt: skip
        product = {AccountKind.CLASS_I: 1, AccountKind.CLASS_II: 2, AccountKind.CLASS_III: 3,
                   AccountKind.SAVINGS: 4, AccountKind.FIXED_DEPOSIT: 5}[kind]  # fmt: skip
        flags, bound = 0, 0
        if kind in (AccountKind.CLASS_II, AccountKind.CLASS_III):
            if class_i and rng.random() < 0.7:
                bound = rng.choice(class_i)
            else:
                flags = AccountFlags.BOUND_EXTERNAL
        batch += account_input(account_id, kind, product=product, flags=flags, bound_id=bound)
        accounts.append(account_id)
        if kind == AccountKind.CLASS_I:
            class_i.append(account_id)
        if kind not in (AccountKind.CLASS_II, AccountKind.CLASS_III):
            fundings += transfer(5_000 + index, 1, account_id, rng.randint(0, 10**8),
                                 code=TransferCode.CASH_DEPOSIT, channel=3)  # fmt: skip
        else:
            fundings += transfer(5_000 + index, bound or 2, account_id,
                                 rng.choice([0, 1, 150_000, 199_999, 200_000]) or 1,
                                 code=TransferCode.TOPUP_BOUND, channel=6)  # fmt: skip
    journal.append(EntryKind.CREATE_ACCOUNTS, DAY0, len(batch) // 64, batch)
    fundings = b"".join(  # Class I accounts first: the others' top-ups come from them
        sorted((fundings[o : o + 128] for o in range(0, len(fundings), 128)),
               key=lambda record: transfer_view(record).debit_account_id > 2)
    )  # fmt: skip
    journal.append(EntryKind.CREATE_TRANSFERS, DAY0, len(fundings) // 128, fundings)
    return accounts


def freeze(journal: Journal, account_id: int, status: int) -> None:
    journal.append(EntryKind.UPDATE_ACCOUNT, DAY0 + 1, 1,
                   UPDATE_ACCOUNT_PAYLOAD.pack(account_id, 0, status, 0))  # fmt: skip


def check_settled_once(ledger: Ledger, accounts: list[int], owed: dict[int, int]) -> None:
    """One posting per interest id, together what was owed; the units of an account
    whose credit failed are kept; nothing else posted as this period's interest; the
    books balance."""
    posted: dict[int, list[tuple[int, int]]] = defaultdict(list)
    expected_ids = {
        interest_transfer_id(account, PERIOD, part): account
        for account in accounts
        for part in (0, 1)
    }
    for seq in range(ledger.log_tail, ledger.log_count):
        view = transfer_view(ledger.record_at(seq))
        if view.code != TransferCode.INTEREST or view.result != 0:
            continue
        assert view.user_data == PERIOD and view.id in expected_ids, view
        posted[view.id].append((view.credit_account_id, view.amount))
    for transfer_id, postings in posted.items():
        assert len(postings) == 1, (hex(transfer_id), postings)
    for account in accounts:
        paid = sum(
            postings[0][1]
            for part in (0, 1)
            for postings in [posted.get(interest_transfer_id(account, PERIOD, part), [])]
            if postings
        )
        row = demand_row_view(ledger.deposit_row(account) or bytes(32))
        if account not in owed:
            assert paid == 0, account
            continue
        if paid == 0:  # its credit failed (frozen): every unit kept for the next period
            assert row.period_settled == 0 and row.accrued_fen == owed[account], account
            continue
        assert row.period_settled == PERIOD and row.interest_paid_total == paid, account
        # All parts posted (paid == owed, units zero) or some failed (the rest kept).
        assert paid + row.accrued_fen == owed[account], account
        assert paid == owed[account] or row.accrued_units > 0, account
    total = 0
    for slot in range(ledger.account_count):
        record = ledger.lookup_account(ledger.account_id_at(slot))
        assert record is not None
        debits, credits = struct.unpack_from("<qq", record, 16)
        total += credits - debits
    assert total == 0


def run_scenario(
    rng: random.Random,
    backend: str,
    chunk: int,
    rerun_chunk: int,
    crash_after: int,
    rerun_crash: int | None,
    days: int,
    note: Callable[[str], None] = note,
) -> dict[str, int]:
    """Accrue, settle with a crash, recover, rerun to completion; check; what happened
    (`note`: where to say it, Hypothesis's note inside a property)."""
    journal = Journal(backend)
    accounts = open_bank(journal, rng)
    frozen = [account for account in accounts if rng.random() < 0.1]
    for account in frozen:
        freeze(journal, account, AccountStatus.FROZEN)
    rate = rng.choice([500, 13_000, 100_000])
    rates = b"".join(RATE_ROW.pack(rate if 1 <= p <= 4 else 0, 4_453) for p in range(8))
    for day in range(DAY0 + 2, DAY0 + 2 + days):
        journal.append(EntryKind.ACCRUE_INTEREST, day, 0, pack_accrue_payload(day, rates))
    owed = {}
    for account in accounts:
        row = demand_row_view(journal.ledger.deposit_row(account) or bytes(32))
        if row.accrued_fen > 0:
            owed[account] = row.accrued_fen
    note(f"{len(accounts)} accounts, {len(owed)} owed, frozen {frozen}")

    # The first run crashes after `crash_after` chunks (or completes first).
    prefix = len(journal.entries)
    completed = journal.settle(chunk, crash_after)
    survived = len(journal.entries)
    note(f"first run: {survived - prefix} chunks, completed={completed}")
    journal.ledger = journal.rebuilt(survived)
    # The rerun, perhaps crashing too, then run to completion (and once more: a no-op).
    if rerun_crash is not None and not journal.settle(rerun_chunk, rerun_crash):
        journal.ledger = journal.rebuilt(len(journal.entries))
    assert journal.settle(rerun_chunk)
    done = journal.ledger.digest()
    assert journal.settle(chunk) and journal.ledger.digest() == done
    check_settled_once(journal.ledger, accounts, owed)

    # Recovery from the whole journal, on the other twin, is the same ledger.
    other = Journal("reference" if backend == "kernel" else "kernel")
    for entry in journal.entries:
        apply_entry(other.ledger, entry)
    assert other.ledger.digest() == done
    excess = 0
    for seq in range(journal.ledger.log_tail, journal.ledger.log_count):
        view = transfer_view(journal.ledger.record_at(seq))
        if view.code == TransferCode.INTEREST:
            excess += view.result == 0 and (view.id >> 96) & 0xFF == 1
    failed = journal.ledger.failed_count - journal.ledger.failed_tail
    return {
        "owed": len(owed),
        "crashed_midway": int(not completed and survived > prefix),
        "excess_parts": excess,
        "failed_credits": failed,
    }


@settings(max_examples=150, deadline=None)
@given(
    rng=st.randoms(use_true_random=False),
    backend=st.sampled_from(["kernel", "reference"]),
    chunk=st.integers(2, 7),
    rerun_chunk=st.integers(2, 7),
    crash_after=st.integers(0, 12),
    rerun_crash=st.one_of(st.none(), st.integers(0, 4)),
    days=st.integers(1, 100),
)
def test_a_crashed_settlement_rerun_posts_each_interest_once(
    rng: random.Random,
    backend: str,
    chunk: int,
    rerun_chunk: int,
    crash_after: int,
    rerun_crash: int | None,
    days: int,
) -> None:
    run_scenario(rng, backend, chunk, rerun_chunk, crash_after, rerun_crash, days)


def test_the_scenarios_reach_midway_crashes_splits_and_failed_credits() -> None:
    """The property is not vacuous: seeded runs owe interest, crash in the middle of a
    settlement, split Class III excess to bound accounts and meet failed credits."""
    totals: dict[str, int] = defaultdict(int)
    for seed in range(30):
        rng = random.Random(seed)
        stats = run_scenario(rng, "kernel", 2 + seed % 3, 3, 1 + seed % 3, None, 60, print)
        for name, value in stats.items():
            totals[name] += value
    assert all(value > 0 for value in totals.values()), dict(totals)
