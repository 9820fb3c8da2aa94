"""Differential tests of the deposit kernels: cext/deposits.pyx is the reference, op for op.

A generator drives a kernel ledger and a reference ledger through the same deposit
operations on a small bank of every account kind (Class III bound to a Class I or to
another bank's card, fixed deposits, loans): postings that move balances up and down
(overdrafts included), accrual at random rates and day weights, settlements run in
chunks of random size, partly, twice, or with chunks replayed, row writes tied to
transfers that post or fail (random rows too: units near the limits, negative ones),
freezes, purges of the day counters, maturities queried, and dumps loaded into the
other twin. After every call the outputs must be equal, and the full canonical state
(`digest()`, which covers the deposit table once it is not zero).
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.constants import INTERNAL_ACCOUNTS, INTERNAL_PRODUCT
from ledger.deposits import (
    DEPOSIT_WRITE_ALWAYS,
    FD_CLOSED,
    FD_OPEN,
    RATE_ROW,
    is_interest_transfer_id,
    pack_demand_row,
    pack_deposit_write,
    pack_fixed_row,
)
from ledger.interest import ACCRUAL_DENOMINATOR, RATE_SCALE
from ledger.kernel import KernelLedger
from ledger.records import transfer_view
from ledger.reference import ReferenceLedger
from ledger.state import SECTION_NAMES, LedgerState
from ledger.types import AccountFlags, AccountKind, AccountStatus, TransferCode
from tests.ledger_helpers import account_input, assert_same, assert_same_outputs, both, transfer
from tests.unit.test_deposit_kernel import DEPOSIT_RULES

T0 = 1_767_225_600_000_000_000
DAY0 = 9_500
KINDS = (
    (AccountKind.CLASS_I, 1),
    (AccountKind.CLASS_II, 2),
    (AccountKind.CLASS_III, 3),
    (AccountKind.SAVINGS, 4),
    (AccountKind.FIXED_DEPOSIT, 5),
    (AccountKind.LOAN, 6),
)
WEIGHTS = (4_453, 4_392, 4_380, 0, ACCRUAL_DENOMINATOR)


class Session:
    """Both twins and the generator's bookkeeping (ids, clock, day, period)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.kernel, self.reference = both(
            DEPOSIT_RULES, account_capacity=64, transfer_capacity=1 << 12
        )
        self.clock = T0
        self.day = DAY0
        self.period = 8_100
        self.next_id = 1_000
        self.accounts: list[int] = []
        batch = b"".join(
            account_input(account_id, kind, product=INTERNAL_PRODUCT)
            for account_id, kind in INTERNAL_ACCOUNTS
        )
        class_i: list[int] = []
        topups: list[tuple[int, int]] = []
        for index in range(rng.randint(4, 14)):
            kind, product = rng.choice(KINDS)
            account_id = 100 + index
            flags, bound = 0, 0
            if kind in (AccountKind.CLASS_II, AccountKind.CLASS_III):
                if class_i and rng.random() < 0.7:
                    bound = rng.choice(class_i)
                else:
                    flags = AccountFlags.BOUND_EXTERNAL
            if kind == AccountKind.CLASS_I:
                class_i.append(account_id)
            batch += account_input(account_id, kind, product=product, flags=flags, bound_id=bound)
            self.accounts.append(account_id)
            if kind == AccountKind.CLASS_III:  # near its 2,000 CNY cap: settlement splits
                topups.append((bound or 2, account_id))
        self.same(self.kernel.create_accounts(batch), self.reference.create_accounts(batch))
        for account_id in self.accounts:
            self.post(transfer(self.new_id(), 1, account_id, rng.randint(0, 3_000_000),
                               code=TransferCode.CASH_DEPOSIT, channel=3))  # fmt: skip
        for source, account_id in topups:
            self.post(transfer(self.new_id(), source, account_id, rng.randint(150_000, 200_000),
                               code=TransferCode.TOPUP_BOUND, channel=6))  # fmt: skip

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def tick(self, count: int = 1) -> int:
        self.clock += count + 1_000
        return self.clock

    def same(self, left: object, right: object) -> None:
        assert bytes(left) == bytes(right) if isinstance(left, bytearray) else left == right
        assert_same(self.kernel, self.reference)

    def post(self, batch: bytes) -> None:
        clock = self.tick(len(batch) // 128)
        k = self.kernel.create_transfers(batch, clock, self.day)
        r = self.reference.create_transfers(batch, clock, self.day)
        assert_same_outputs(k, r, batch)
        assert_same(self.kernel, self.reference)

    # --- operations ----------------------------------------------------------------

    def move_money(self) -> None:
        rng = self.rng
        batch = b""
        for _ in range(rng.randint(1, 4)):
            debit, credit = rng.sample([1, 2, *self.accounts], 2)
            code = rng.choice([TransferCode.TRANSFER, TransferCode.CASH_DEPOSIT,
                               TransferCode.TOPUP_BOUND, TransferCode.FIXED_DEPOSIT])  # fmt: skip
            batch += transfer(self.new_id(), debit, credit, rng.choice([1, 99, 10**4, 10**6]),
                              code=code, channel=rng.choice([3, 6]))  # fmt: skip
        self.post(batch)

    def accrue(self) -> None:
        rng = self.rng
        self.day += rng.randint(1, 3)
        table = b"".join(
            RATE_ROW.pack(rng.choice([0, 500, 13_000, RATE_SCALE]), rng.choice(WEIGHTS))
            for _ in range(rng.randint(0, 10))
        )
        self.same(
            self.kernel.accrue_interest(self.day, table),
            self.reference.accrue_interest(self.day, table),
        )
        assert self.kernel.accrued_day == self.reference.accrued_day == self.day

    def settle(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            self.period += 1
        count_max = rng.randint(2, 6)
        slot = 0
        chunks: list[tuple[bytes, bytes]] = []
        while slot < self.kernel.account_count:
            k = self.kernel.settlement_batch(self.period, slot, count_max)
            r = self.reference.settlement_batch(self.period, slot, count_max)
            assert k == r
            transfers, slots, slot = k
            if not transfers:
                continue
            chunks.append((transfers, slots))
            if rng.random() < 0.15:
                break  # a crash: the rest of the settlement never ran
            self.settle_chunk(transfers, slots)
        if chunks and rng.random() < 0.3:
            self.settle_chunk(*rng.choice(chunks))  # a chunk journaled twice: EXISTS

    def settle_chunk(self, transfers: bytes, slots: bytes) -> None:
        clock = self.tick(len(transfers) // 128)
        k = self.kernel.settle_interest(self.period, transfers, slots, clock, self.day)
        r = self.reference.settle_interest(self.period, transfers, slots, clock, self.day)
        assert_same_outputs(k, r, transfers)
        assert_same(self.kernel, self.reference)

    def random_row(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.5:
            units = rng.choice([0, 1, -1, rng.randint(-(1 << 110), 1 << 110), 1 << 100])
            return pack_demand_row(units, rng.randint(0, self.period + 1), rng.randint(0, 10**6))
        return pack_fixed_row(
            principal=rng.randint(0, 10**7), rate=rng.randint(0, 20_000),
            open_day=self.day, maturity_day=self.day + rng.randint(-5, 30),
            term_months=rng.choice([3, 12]), day_count=1,
            flags=rng.choice([0, FD_OPEN, FD_OPEN | FD_CLOSED]), payout_slot=0, product=5,
        )  # fmt: skip

    def write_rows(self) -> None:
        rng = self.rng
        transfers = b"".join(
            transfer(self.new_id(), rng.choice([1, *self.accounts]), rng.choice(self.accounts),
                     rng.choice([1, 10**9]), code=TransferCode.FIXED_DEPOSIT, channel=6)
            for _ in range(rng.randint(1, 3))
        )  # fmt: skip
        rows = b"".join(
            pack_deposit_write(
                rng.choice([*self.accounts, 0xDEAD]),
                rng.choice([0, 1, 2, 5, DEPOSIT_WRITE_ALWAYS]),
                self.random_row(),
            )
            for _ in range(rng.randint(0, 4))
        )
        clock = self.tick(len(transfers) // 128)
        k = self.kernel.post_with_rows(transfers, rows, clock, self.day)
        r = self.reference.post_with_rows(transfers, rows, clock, self.day)
        assert_same_outputs(k, r, transfers)
        assert_same(self.kernel, self.reference)

    def freeze(self) -> None:
        account = self.rng.choice(self.accounts)
        status = self.rng.choice([AccountStatus.ACTIVE, AccountStatus.FROZEN])
        self.same(
            self.kernel.update_account(account, status, 0),
            self.reference.update_account(account, status, 0),
        )

    def purge(self) -> None:
        day = self.day + self.rng.randint(-2, 1)
        self.kernel.purge_counters(day)  # the counts are of different tables (see docs)
        self.reference.purge_counters(day)
        assert_same(self.kernel, self.reference)
        assert self.kernel.channels_live() == self.reference.channels_live()

    def maturities(self) -> None:
        day = self.day + self.rng.randint(-5, 30)
        assert self.kernel.due_fixed_deposits(day) == self.reference.due_fixed_deposits(day)

    def reload(self) -> None:
        """Each twin dumps, the other loads: state and rows survive the crossing."""
        kernel_state = self.kernel.dump_state()
        reference_state = self.reference.dump_state()
        sections = {name: kernel_state.section(name) for name in SECTION_NAMES}
        assert sections == {
            name: reference_state.section(name) for name in SECTION_NAMES if name != "meta"
        } | {"meta": sections["meta"]}
        self.reference = ReferenceLedger.load_state(
            LedgerState.from_bytes(sections), account_capacity=64, transfer_capacity=1 << 12
        )
        self.kernel = KernelLedger.load_state(
            LedgerState.from_bytes({name: reference_state.section(name) for name in SECTION_NAMES}),
            account_capacity=64,
            transfer_capacity=1 << 12,
        )
        assert_same(self.kernel, self.reference)
        assert self.kernel.accrued_day == self.reference.accrued_day
        for slot in range(self.kernel.account_count):
            assert self.kernel.deposit_row_at(slot) == self.reference.deposit_row_at(slot)

    def run(self, steps: int) -> None:
        operations = [
            (self.move_money, 4), (self.accrue, 5), (self.settle, 3), (self.write_rows, 2),
            (self.freeze, 1), (self.purge, 1), (self.maturities, 1), (self.reload, 1),
        ]  # fmt: skip
        functions = [function for function, _ in operations]
        weights = [weight for _, weight in operations]
        for _ in range(steps):
            self.rng.choices(functions, weights)[0]()


@settings(max_examples=60, deadline=None)
@given(rng=st.randoms(use_true_random=False), steps=st.integers(5, 40))
def test_deposit_kernels_match_the_reference(rng: random.Random, steps: int) -> None:
    Session(rng).run(steps)


def test_generated_sessions_accrue_settle_and_split() -> None:
    """The generator reaches what the property is about: accounts accrue, settlements pay
    (Class III excess parts among them) and rows are written by POST_WITH_ROWS."""
    paid = parts = rows = 0
    for seed in range(40):
        session = Session(random.Random(seed))
        session.run(40)
        for seq in range(session.kernel.log_tail, session.kernel.log_count):
            view = transfer_view(session.kernel.record_at(seq))
            if view.code == TransferCode.INTEREST and view.result == 0:
                paid += 1
                parts += is_interest_transfer_id(view.id) and (view.id >> 96) & 0xFF == 1
        rows += sum(
            session.kernel.deposit_row_at(slot) != bytes(32)
            for slot in range(session.kernel.account_count)
        )
    assert paid > 20 and parts > 0 and rows > 20, (paid, parts, rows)
