"""The banking rules, end to end, as a reader would check them against DOMAIN.md.

Each test tells one story with the example rule file (examples/limits.toml:
PBoC ceilings, Asia/Shanghai days) and runs on both backends, so a rule that
the kernel and the reference both got wrong in the same way is still caught.
Amounts are in fen: 1,000,000 fen = 10,000 CNY.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.reference import Transfer
from ledger.types import (
    AccountFlags,
    AccountKind,
    AccountStatus,
    AccountUpdateResult,
    CreateAccountResult,
    CreateTransferResult,
    PendingState,
    TransferCode,
    TransferFlags,
)
from limits.calendar import day_of_date
from tests.ledger_helpers import (
    EXAMPLE_RULES,
    NS_PER_DAY,
    NS_PER_S,
    AccountView,
    Ledger,
    account_input,
    account_view,
    make_ledger,
    transfer,
    transfer_view,
)

R = CreateTransferResult
K = AccountKind
C = TransferCode
F = TransferFlags
D = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
NON_BOUND_INFLOW = AccountFlags.NON_BOUND_INFLOW_ENABLED
FACE_TO_FACE = AccountFlags.FACE_TO_FACE_VERIFIED

CNY = 100  # fen
CLEARING = 1  # the bank's clearing account (internal, unbounded)
CASH = 2  # the branch's cash
CARD = 3  # the customer's Class I card: the account Class II/III are bound to
CLASS_II = 4  # bound to CARD, may receive from non-bound accounts
CLASS_III = 5  # bound to CARD, may receive from non-bound accounts
MERCHANT = 6  # a Class I account of somebody else
CLASS_II_COUNTER = 7  # a Class II account whose holder was verified face to face
CLASS_II_CLOSED_TO_OTHERS = 8  # a Class II account without non-bound inflow

PRODUCT_CLASS_I = 1
PRODUCT_CLASS_II = 2
PRODUCT_CLASS_III = 3
PRODUCT_INTERNAL = 7
CHANNEL_COUNTER = 3
CHANNEL_ATM = 4  # 20,000 CNY per transaction and per account per day

DAY_FIRST = day_of_date(2025, 6, 2)


class Bank:
    """One ledger with the accounts above, a clock, and short verbs for the stories."""

    def __init__(self, backend: str) -> None:
        self.ledger: Ledger = make_ledger(backend, EXAMPLE_RULES)
        self.day = DAY_FIRST
        self.ts = 1_748_800_000 * NS_PER_S
        self.next_id = 1_000
        accounts = [
            account_input(CLEARING, K.INTERNAL_CLEARING, product=PRODUCT_INTERNAL),
            account_input(CASH, K.INTERNAL_CASH, product=PRODUCT_INTERNAL),
            account_input(CARD, K.CLASS_I, flags=D, product=PRODUCT_CLASS_I),
            account_input(CLASS_II, K.CLASS_II, flags=D | NON_BOUND_INFLOW,
                          product=PRODUCT_CLASS_II, bound_id=CARD),
            account_input(CLASS_III, K.CLASS_III, flags=D | NON_BOUND_INFLOW,
                          product=PRODUCT_CLASS_III, bound_id=CARD),
            account_input(MERCHANT, K.CLASS_I, flags=D, product=PRODUCT_CLASS_I),
            account_input(CLASS_II_COUNTER, K.CLASS_II, flags=D | NON_BOUND_INFLOW | FACE_TO_FACE,
                          product=PRODUCT_CLASS_II, bound_id=CARD),
            account_input(CLASS_II_CLOSED_TO_OTHERS, K.CLASS_II, flags=D,
                          product=PRODUCT_CLASS_II, bound_id=CARD),
        ]
        results = self.ledger.create_accounts(b"".join(accounts))
        assert set(results) == {CreateAccountResult.OK}
        # Money in from another bank funds the customer's card; Class II funds come from it.
        self.ok(self.pay(CLEARING, CARD, 100_000_000 * CNY, code=C.EXTERNAL_TRANSFER_IN))

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def send(self, *records: bytes) -> list[tuple[int, int]]:
        """One batch; (result, timestamp) per transfer. The clock moves 1 s per batch."""
        results, timestamps, _ = self.ledger.create_transfers(b"".join(records), self.ts, self.day)
        self.ts += len(records) + NS_PER_S
        return [(result, timestamp) for result, timestamp in zip(results, timestamps, strict=True)]

    def pay(self, debit: int, credit: int, amount: int, **fields: object) -> bytes:
        fields.setdefault("code", C.TRANSFER)
        return transfer(self.new_id(), debit, credit, amount, **fields)  # type: ignore[arg-type]

    def result(self, record: bytes) -> R:
        ((result, _),) = self.send(record)
        return R(result)

    def ok(self, record: bytes) -> int:
        """Send one transfer that must succeed; return its id."""
        result = self.result(record)
        assert result == R.OK, result.name
        return Transfer.unpack(record).id

    def next_day(self, days: int = 1) -> None:
        self.day += days
        self.ts += days * NS_PER_DAY

    def account(self, account_id: int) -> AccountView:
        return account_view(self.ledger, account_id)

    def outflow(self, account_id: int) -> tuple[int, int]:
        """(daily, yearly) outflow counters as stored."""
        counters = self.ledger.account_counters(account_id)
        assert counters is not None
        return counters[2], counters[3]

    def inflow(self, account_id: int) -> tuple[int, int]:
        counters = self.ledger.account_counters(account_id)
        assert counters is not None
        return counters[0], counters[1]

    def top_up(self, account_id: int, amount: int) -> None:
        """From the bound card: exempt from the buckets (DOMAIN.md)."""
        self.ok(self.pay(CARD, account_id, amount, code=C.TOPUP_BOUND))


@pytest.fixture(params=["kernel", "reference"])
def bank(request: pytest.FixtureRequest) -> Iterator[Bank]:
    yield Bank(request.param)


# --- idempotency ------------------------------------------------------------------


def test_identical_retry_answers_exists_with_the_original_timestamp(bank: Bank) -> None:
    """A retried transfer (same id, same fields) is not posted again: EXISTS, with the
    timestamp of the first posting, and the balances do not move."""
    record = bank.pay(CARD, MERCHANT, 500 * CNY)
    ((first, timestamp_first),) = bank.send(record)
    assert first == R.OK
    balance = bank.account(MERCHANT).balance
    bank.next_day()
    ((again, timestamp_again),) = bank.send(record)
    assert again == R.EXISTS
    assert timestamp_again == timestamp_first
    assert bank.account(MERCHANT).balance == balance == 500 * CNY


def test_retry_with_a_different_amount_is_a_conflict(bank: Bank) -> None:
    """Reusing an id with another amount is EXISTS_WITH_DIFFERENT_AMOUNT, not a replay of the
    first answer and not a second posting (the Fineract lesson in DOMAIN.md)."""
    record = bank.pay(CARD, MERCHANT, 500 * CNY)
    bank.ok(record)
    changed = Transfer.unpack(record)
    changed.amount += 1
    assert bank.result(changed.pack()) == R.EXISTS_WITH_DIFFERENT_AMOUNT
    assert bank.account(MERCHANT).balance == 500 * CNY


def test_failure_on_funds_consumes_the_id_forever(bank: Bank) -> None:
    """A transfer refused for lack of funds stays refused: after the account is funded the
    same id answers ID_ALREADY_FAILED instead of suddenly succeeding."""
    record = bank.pay(CLASS_II, MERCHANT, 100 * CNY)
    assert bank.result(record) == R.EXCEEDS_CREDITS
    bank.top_up(CLASS_II, 1_000 * CNY)
    assert bank.result(record) == R.ID_ALREADY_FAILED
    bank.next_day(3)
    assert bank.result(record) == R.ID_ALREADY_FAILED
    assert bank.account(MERCHANT).balance == 0


def test_validation_failure_does_not_consume_the_id(bank: Bank) -> None:
    """A transfer refused on its own fields (here a zero ledger) can be corrected and sent
    again under the same id."""
    transfer_id = bank.new_id()
    broken = transfer(transfer_id, CARD, MERCHANT, 100 * CNY, ledger=0)
    assert bank.result(broken) == R.LEDGER_MUST_NOT_BE_ZERO
    assert transfer_view(bank.ledger, transfer_id) is None
    assert bank.result(transfer(transfer_id, CARD, MERCHANT, 100 * CNY)) == R.OK


# --- Class II buckets ------------------------------------------------------------------


def test_class_ii_daily_outflow_boundary_is_exactly_10000_cny(bank: Bank) -> None:
    """Class II pays out at most 10,000 CNY a day: a total of exactly 10,000.00 passes,
    one fen more is EXCEEDS_DAILY_OUTFLOW."""
    bank.top_up(CLASS_II, 30_000 * CNY)
    bank.ok(bank.pay(CLASS_II, MERCHANT, 6_000 * CNY, code=C.PAYMENT))
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 4_000 * CNY + 1)) == R.EXCEEDS_DAILY_OUTFLOW
    bank.ok(bank.pay(CLASS_II, MERCHANT, 4_000 * CNY))
    assert bank.outflow(CLASS_II) == (10_000 * CNY, 10_000 * CNY)
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 1)) == R.EXCEEDS_DAILY_OUTFLOW


def test_class_ii_daily_outflow_resets_the_next_day(bank: Bank) -> None:
    """The daily bucket is per business day: after midnight the full 10,000 CNY is available
    again, while the yearly total keeps counting."""
    bank.top_up(CLASS_II, 30_000 * CNY)
    bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY))
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 1)) == R.EXCEEDS_DAILY_OUTFLOW
    bank.next_day()
    bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY))
    assert bank.outflow(CLASS_II) == (10_000 * CNY, 20_000 * CNY)


def test_class_ii_yearly_outflow_cap_and_new_year(bank: Bank) -> None:
    """Twenty days at the daily cap use up the 200,000 CNY yearly outflow: the next fen is
    EXCEEDS_YEARLY_OUTFLOW, until 1 January resets the year."""
    bank.day = day_of_date(2025, 12, 1)
    bank.top_up(CLASS_II, 250_000 * CNY)
    for _ in range(20):
        bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY))
        bank.next_day()
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 1)) == R.EXCEEDS_YEARLY_OUTFLOW
    bank.day = day_of_date(2025, 12, 31)
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 1)) == R.EXCEEDS_YEARLY_OUTFLOW
    bank.day = day_of_date(2026, 1, 1)
    bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY))
    assert bank.outflow(CLASS_II) == (10_000 * CNY, 10_000 * CNY)


def test_class_ii_inflow_from_non_bound_accounts_is_capped(bank: Bank) -> None:
    """Money in from accounts other than the bound one shares one 10,000 CNY daily bucket;
    an account without non-bound inflow enabled refuses it altogether."""
    bank.ok(bank.pay(CLEARING, MERCHANT, 50_000 * CNY, code=C.EXTERNAL_TRANSFER_IN))
    bank.ok(bank.pay(MERCHANT, CLASS_II, 7_000 * CNY))
    bank.ok(bank.pay(CLEARING, CLASS_II, 3_000 * CNY, code=C.EXTERNAL_TRANSFER_IN))
    assert bank.result(bank.pay(MERCHANT, CLASS_II, 1)) == R.EXCEEDS_DAILY_INFLOW
    assert bank.inflow(CLASS_II) == (10_000 * CNY, 10_000 * CNY)
    assert bank.result(bank.pay(MERCHANT, CLASS_II_CLOSED_TO_OTHERS, 1)) == (
        R.NON_BOUND_INFLOW_DISABLED)
    bank.ok(bank.pay(CARD, CLASS_II_CLOSED_TO_OTHERS, 1, code=C.TOPUP_BOUND))


def test_transfers_with_the_bound_account_are_exempt(bank: Bank) -> None:
    """Money to and from the bound Class I card counts in no bucket, whatever the code, so
    amounts far above the daily caps move freely (DOMAIN.md: bound account exempt)."""
    bank.top_up(CLASS_II, 50_000 * CNY)
    bank.ok(bank.pay(CLASS_II, CARD, 20_000 * CNY, code=C.WITHDRAW_BOUND))
    bank.ok(bank.pay(CLASS_II, CARD, 20_000 * CNY, code=C.TRANSFER))
    bank.ok(bank.pay(CARD, CLASS_II, 20_000 * CNY, code=C.TRANSFER))
    assert bank.outflow(CLASS_II) == (0, 0)
    assert bank.inflow(CLASS_II) == (0, 0)
    assert bank.account(CLASS_II).balance == 30_000 * CNY
    # The same amount to a stranger is counted and refused.
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 20_000 * CNY)) == R.EXCEEDS_DAILY_OUTFLOW


def test_bound_codes_need_the_bound_account(bank: Bank) -> None:
    """TOPUP_BOUND / WITHDRAW_BOUND only work against the account's own bound card."""
    bank.top_up(CLASS_II, 1_000 * CNY)
    assert bank.result(bank.pay(MERCHANT, CLASS_II, 1, code=C.TOPUP_BOUND)) == R.NO_BOUND_ACCOUNT
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 1, code=C.WITHDRAW_BOUND)) == (
        R.NO_BOUND_ACCOUNT)


# --- Class III -----------------------------------------------------------------------


def test_class_iii_balance_cap_is_2000_cny(bank: Bank) -> None:
    """A Class III account never holds more than 2,000 CNY, even from its bound card, and
    money on its way in (a hold) counts against the cap."""
    bank.top_up(CLASS_III, 1_500 * CNY)
    bank.top_up(CLASS_III, 500 * CNY)
    assert bank.account(CLASS_III).balance == 2_000 * CNY
    assert bank.result(bank.pay(CARD, CLASS_III, 1, code=C.TOPUP_BOUND)) == R.EXCEEDS_BALANCE_CAP
    bank.ok(bank.pay(CLASS_III, CARD, 300 * CNY, code=C.WITHDRAW_BOUND))
    bank.ok(bank.pay(CARD, CLASS_III, 300 * CNY, code=C.TOPUP_BOUND, flags=F.PENDING))
    assert bank.result(bank.pay(CARD, CLASS_III, 1, code=C.TOPUP_BOUND)) == R.EXCEEDS_BALANCE_CAP


def test_class_iii_never_handles_cash(bank: Bank) -> None:
    """Class III accounts take no cash deposit and pay out no cash: CASH_NOT_ALLOWED."""
    bank.top_up(CLASS_III, 500 * CNY)
    assert bank.result(bank.pay(CASH, CLASS_III, 100 * CNY, code=C.CASH_DEPOSIT)) == (
        R.CASH_NOT_ALLOWED)
    assert bank.result(bank.pay(CLASS_III, CASH, 100 * CNY, code=C.CASH_WITHDRAWAL)) == (
        R.CASH_NOT_ALLOWED)


def test_class_ii_cash_needs_face_to_face_verification(bank: Bank) -> None:
    """A Class II account handles cash only if its holder was verified face to face; the
    cash then counts in the inflow/outflow buckets."""
    assert bank.result(bank.pay(CASH, CLASS_II, 100 * CNY, code=C.CASH_DEPOSIT)) == (
        R.CASH_NOT_ALLOWED)
    bank.ok(bank.pay(CASH, CLASS_II_COUNTER, 100 * CNY, code=C.CASH_DEPOSIT))
    bank.ok(bank.pay(CLASS_II_COUNTER, CASH, 40 * CNY, code=C.CASH_WITHDRAWAL))
    assert bank.inflow(CLASS_II_COUNTER) == (100 * CNY, 100 * CNY)
    assert bank.outflow(CLASS_II_COUNTER) == (40 * CNY, 40 * CNY)


# --- reversals and holds restore quota ------------------------------------------------


def test_same_day_reversal_restores_daily_and_yearly_quota(bank: Bank) -> None:
    """Reversing a payment on the day it was made gives back both the daily and the yearly
    quota, so the customer can pay the full 10,000 CNY again that day."""
    bank.top_up(CLASS_II, 30_000 * CNY)
    payment = bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY))
    assert bank.outflow(CLASS_II) == (10_000 * CNY, 10_000 * CNY)
    bank.ok(bank.pay(MERCHANT, CLASS_II, 10_000 * CNY, code=C.REVERSAL, pending_id=payment))
    assert bank.outflow(CLASS_II) == (0, 0)
    bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY))


def test_next_day_reversal_restores_only_yearly_quota(bank: Bank) -> None:
    """Reversing yesterday's payment gives back its yearly quota only: today's daily bucket
    keeps what was spent today (bank practice, DOMAIN.md)."""
    bank.top_up(CLASS_II, 30_000 * CNY)
    payment = bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY))
    bank.next_day()
    bank.ok(bank.pay(CLASS_II, MERCHANT, 6_000 * CNY))
    assert bank.outflow(CLASS_II) == (6_000 * CNY, 16_000 * CNY)
    bank.ok(bank.pay(MERCHANT, CLASS_II, 10_000 * CNY, code=C.REVERSAL, pending_id=payment))
    assert bank.outflow(CLASS_II) == (6_000 * CNY, 6_000 * CNY)
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 4_000 * CNY + 1)) == R.EXCEEDS_DAILY_OUTFLOW
    bank.ok(bank.pay(CLASS_II, MERCHANT, 4_000 * CNY))


def test_reversals_are_bounded_by_what_was_posted(bank: Bank) -> None:
    """Partial reversals add up to at most the original amount; more is
    EXCEEDS_REVERSIBLE_AMOUNT, and the accounts must be the original ones swapped."""
    bank.top_up(CLASS_II, 2_000 * CNY)
    payment = bank.ok(bank.pay(CLASS_II, MERCHANT, 1_000 * CNY))
    bank.ok(bank.pay(MERCHANT, CLASS_II, 300 * CNY, code=C.REVERSAL, pending_id=payment))
    assert bank.result(bank.pay(MERCHANT, CLASS_II, 700 * CNY + 1, code=C.REVERSAL,
                                pending_id=payment)) == R.EXCEEDS_REVERSIBLE_AMOUNT
    assert bank.result(bank.pay(CARD, CLASS_II, 100, code=C.REVERSAL, pending_id=payment)) == (
        R.REVERSAL_ACCOUNTS_MISMATCH)
    bank.ok(bank.pay(MERCHANT, CLASS_II, 700 * CNY, code=C.REVERSAL, pending_id=payment))
    assert bank.account(CLASS_II).balance == 2_000 * CNY
    assert bank.outflow(CLASS_II) == (0, 0)


def test_partial_capture_of_a_hold_restores_the_unused_quota(bank: Bank) -> None:
    """A hold takes quota up front; capturing only part of it gives the rest back the same
    day, and only the captured amount leaves the account."""
    bank.top_up(CLASS_II, 20_000 * CNY)
    hold = bank.ok(bank.pay(CLASS_II, MERCHANT, 8_000 * CNY, flags=F.PENDING))
    assert bank.outflow(CLASS_II) == (8_000 * CNY, 8_000 * CNY)
    assert bank.account(CLASS_II).debits_pending == 8_000 * CNY
    bank.ok(transfer(bank.new_id(), 0, 0, 5_000 * CNY, ledger=0, code=0, pending_id=hold,
                     flags=F.POST_PENDING))
    assert bank.outflow(CLASS_II) == (5_000 * CNY, 5_000 * CNY)
    view = bank.account(CLASS_II)
    assert (view.debits_pending, view.balance) == (0, 15_000 * CNY)
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 5_000 * CNY + 1)) == R.EXCEEDS_DAILY_OUTFLOW
    bank.ok(bank.pay(CLASS_II, MERCHANT, 5_000 * CNY))


def test_reversing_a_capture_the_next_day_gives_back_only_yearly_quota(bank: Bank) -> None:
    """A hold placed and captured on day D, reversed on D+1: the quota belongs to the
    hold's day, so D+1's daily bucket gets nothing back (only the yearly one does), and
    the customer still cannot move more than 10,000 CNY to others on D+1."""
    bank.top_up(CLASS_II, 40_000 * CNY)
    hold = bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY, flags=F.PENDING))
    capture = bank.ok(transfer(bank.new_id(), 0, 0, 0, ledger=0, code=0, pending_id=hold,
                               flags=F.POST_PENDING))
    bank.next_day()
    bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY))
    assert bank.outflow(CLASS_II) == (10_000 * CNY, 20_000 * CNY)
    bank.ok(bank.pay(MERCHANT, CLASS_II, 10_000 * CNY, code=C.REVERSAL, pending_id=capture))
    assert bank.outflow(CLASS_II) == (10_000 * CNY, 10_000 * CNY)
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 1)) == R.EXCEEDS_DAILY_OUTFLOW


def test_class_ii_and_iii_accounts_need_their_own_kind_of_product(bank: Bank) -> None:
    """An account opened on a product of another kind is refused: a Class II account on a
    Class I product (no buckets) would escape the PBoC limits; so would one on no product."""
    R_A = CreateAccountResult
    cases = [
        (account_input(90, K.CLASS_II, flags=D, product=PRODUCT_CLASS_I, bound_id=CARD),
         R_A.PRODUCT_KIND_MISMATCH),
        (account_input(91, K.CLASS_III, flags=D, product=0, bound_id=CARD),
         R_A.PRODUCT_KIND_MISMATCH),
        (account_input(92, K.CLASS_I, flags=D, product=PRODUCT_INTERNAL),
         R_A.PRODUCT_KIND_MISMATCH),
        (account_input(93, K.INTERNAL_FEES, product=PRODUCT_CLASS_II), R_A.PRODUCT_KIND_MISMATCH),
        (account_input(94, K.CLASS_I, flags=D, product=6), R_A.PRODUCT_KIND_MISMATCH),
        (account_input(95, K.CLASS_I, flags=D, product=0), R_A.OK),
        (account_input(96, K.INTERNAL_FEES, product=PRODUCT_INTERNAL), R_A.OK),
    ]
    for record, expected in cases:
        assert bank.ledger.create_accounts(record) == bytearray([expected])


def test_void_releases_the_hold_and_its_quota(bank: Bank) -> None:
    """Voiding a hold returns the held funds and the whole quota; the hold cannot be posted
    afterwards."""
    bank.top_up(CLASS_II, 10_000 * CNY)
    hold = bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY, flags=F.PENDING))
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 1)) == R.EXCEEDS_CREDITS
    bank.ok(transfer(bank.new_id(), 0, 0, 0, ledger=0, code=0, pending_id=hold,
                     flags=F.VOID_PENDING))
    view = bank.account(CLASS_II)
    assert (view.debits_pending, view.balance) == (0, 10_000 * CNY)
    assert bank.outflow(CLASS_II) == (0, 0)
    assert bank.result(transfer(bank.new_id(), 0, 0, 0, ledger=0, code=0, pending_id=hold,
                                flags=F.POST_PENDING)) == R.PENDING_TRANSFER_ALREADY_VOIDED
    bank.ok(bank.pay(CLASS_II, MERCHANT, 10_000 * CNY))


def test_expiry_releases_the_hold_and_its_quota(bank: Bank) -> None:
    """A hold with a timeout expires once its time has passed: the funds and quota come
    back and a late capture is PENDING_TRANSFER_EXPIRED."""
    bank.top_up(CLASS_II, 10_000 * CNY)
    hold = bank.ok(bank.pay(CLASS_II, MERCHANT, 6_000 * CNY, flags=F.PENDING, timeout_s=5))
    assert bank.ledger.expire_pending(bank.ts, bank.day) == 0
    bank.ts += 5 * NS_PER_S
    assert bank.ledger.expire_pending(bank.ts, bank.day) == 1
    record = transfer_view(bank.ledger, hold)
    assert record is not None and record.state == PendingState.EXPIRED
    view = bank.account(CLASS_II)
    assert (view.debits_pending, view.credits_pending, view.balance) == (0, 0, 10_000 * CNY)
    assert bank.outflow(CLASS_II) == (0, 0)
    assert bank.result(transfer(bank.new_id(), 0, 0, 0, ledger=0, code=0, pending_id=hold,
                                flags=F.POST_PENDING)) == R.PENDING_TRANSFER_EXPIRED


def test_a_batch_expires_due_holds_before_its_transfers(bank: Bank) -> None:
    """Every batch (even an empty one) first expires the holds that are due, so a capture
    sent after the timeout fails even if nobody called expire_pending."""
    bank.top_up(CLASS_II, 1_000 * CNY)
    hold = bank.ok(bank.pay(CLASS_II, MERCHANT, 600 * CNY, flags=F.PENDING, timeout_s=1))
    bank.ts += 2 * NS_PER_S
    bank.send()
    assert bank.account(CLASS_II).debits_pending == 0
    assert bank.result(transfer(bank.new_id(), 0, 0, 0, ledger=0, code=0, pending_id=hold,
                                flags=F.POST_PENDING)) == R.PENDING_TRANSFER_EXPIRED


# --- linked chains -------------------------------------------------------------------


def test_linked_chain_is_all_or_nothing(bank: Bank) -> None:
    """If one transfer of a linked chain fails, none of the chain is posted or logged: the
    culprit carries its own result, the rest LINKED_EVENT_FAILED, and their ids stay free."""
    bank.top_up(CLASS_II, 30_000 * CNY)
    first = bank.pay(CARD, CLASS_II, 500 * CNY, code=C.TOPUP_BOUND, flags=F.LINKED)
    second = bank.pay(CLASS_II, MERCHANT, 10_000 * CNY + 1, flags=F.LINKED)  # 1 fen too many
    third = bank.pay(MERCHANT, CARD, 1 * CNY)
    log_count = bank.ledger.log_count
    results = [R(result) for result, _ in bank.send(first, second, third)]
    assert results == [R.LINKED_EVENT_FAILED, R.EXCEEDS_DAILY_OUTFLOW, R.LINKED_EVENT_FAILED]
    assert bank.ledger.log_count == log_count
    assert bank.account(CLASS_II).balance == 30_000 * CNY
    assert bank.outflow(CLASS_II) == (0, 0)
    # The ids were not consumed: the first transfer alone now goes through.
    unlinked = Transfer.unpack(first)
    unlinked.flags = 0
    assert bank.result(unlinked.pack()) == R.OK


def test_linked_chain_succeeds_as_a_whole(bank: Bank) -> None:
    """A chain whose members all pass is posted in full, in order."""
    first = bank.pay(CARD, CLASS_II, 500 * CNY, code=C.TOPUP_BOUND, flags=F.LINKED)
    second = bank.pay(CLASS_II, MERCHANT, 500 * CNY)
    assert [R(result) for result, _ in bank.send(first, second)] == [R.OK, R.OK]
    assert bank.account(MERCHANT).balance == 500 * CNY
    assert bank.outflow(CLASS_II) == (500 * CNY, 500 * CNY)


def test_chain_left_open_at_the_end_of_a_batch_fails(bank: Bank) -> None:
    """A batch whose last transfer still says LINKED has an unterminated chain: nothing of it
    is applied and the last member reports LINKED_EVENT_CHAIN_OPEN."""
    lone = bank.pay(CARD, MERCHANT, 100 * CNY)
    first = bank.pay(CARD, MERCHANT, 100 * CNY, flags=F.LINKED)
    second = bank.pay(CARD, MERCHANT, 100 * CNY, flags=F.LINKED)
    results = [R(result) for result, _ in bank.send(lone, first, second)]
    assert results == [R.OK, R.LINKED_EVENT_FAILED, R.LINKED_EVENT_CHAIN_OPEN]
    assert bank.account(MERCHANT).balance == 100 * CNY


# --- channels ------------------------------------------------------------------------


def test_channel_daily_cap_is_per_account_and_per_day(bank: Bank) -> None:
    """The ATM channel allows 20,000 CNY per account per day: the card reaches it exactly and
    is refused one fen more, another account still has its own 20,000 CNY, the counter
    channel is unaffected, and the next day starts afresh."""
    bank.ok(bank.pay(CLEARING, MERCHANT, 50_000 * CNY, code=C.EXTERNAL_TRANSFER_IN))
    bank.ok(bank.pay(CARD, CASH, 15_000 * CNY, code=C.CASH_WITHDRAWAL, channel=CHANNEL_ATM))
    bank.ok(bank.pay(CARD, CASH, 5_000 * CNY, code=C.CASH_WITHDRAWAL, channel=CHANNEL_ATM))
    assert bank.ledger.channel_used(CARD, CHANNEL_ATM, bank.day) == 20_000 * CNY
    assert bank.result(bank.pay(CARD, CASH, 1, code=C.CASH_WITHDRAWAL, channel=CHANNEL_ATM)) == (
        R.EXCEEDS_CHANNEL_DAILY_CAP)
    bank.ok(bank.pay(MERCHANT, CASH, 20_000 * CNY, code=C.CASH_WITHDRAWAL, channel=CHANNEL_ATM))
    bank.ok(bank.pay(CARD, CASH, 30_000 * CNY, code=C.CASH_WITHDRAWAL, channel=CHANNEL_COUNTER))
    bank.next_day()
    assert bank.ledger.channel_used(CARD, CHANNEL_ATM, bank.day) == 0
    bank.ok(bank.pay(CARD, CASH, 20_000 * CNY, code=C.CASH_WITHDRAWAL, channel=CHANNEL_ATM))


def test_channel_transfer_cap_applies_per_transaction(bank: Bank) -> None:
    """One ATM transaction may not exceed 20,000 CNY, whatever the daily headroom."""
    assert bank.result(bank.pay(CARD, CASH, 20_000 * CNY + 1, code=C.CASH_WITHDRAWAL,
                                channel=CHANNEL_ATM)) == R.EXCEEDS_CHANNEL_TRANSFER_CAP
    assert bank.ledger.channel_used(CARD, CHANNEL_ATM, bank.day) == 0


# --- account status ------------------------------------------------------------------


def test_frozen_account_neither_pays_nor_receives_until_unfrozen(bank: Bank) -> None:
    """A frozen account refuses debits (DEBIT_ACCOUNT_FROZEN) and credits
    (CREDIT_ACCOUNT_FROZEN); a hold on it can still be voided; unfreezing restores it."""
    bank.top_up(CLASS_II, 1_000 * CNY)
    hold = bank.ok(bank.pay(CLASS_II, MERCHANT, 100 * CNY, flags=F.PENDING))
    flags = bank.account(CLASS_II).flags
    assert bank.ledger.update_account(CLASS_II, AccountStatus.FROZEN, flags) == (
        AccountUpdateResult.OK)
    assert bank.result(bank.pay(CLASS_II, MERCHANT, 1)) == R.DEBIT_ACCOUNT_FROZEN
    assert bank.result(bank.pay(CARD, CLASS_II, 1, code=C.TOPUP_BOUND)) == R.CREDIT_ACCOUNT_FROZEN
    assert bank.result(transfer(bank.new_id(), 0, 0, 0, ledger=0, code=0, pending_id=hold,
                                flags=F.POST_PENDING)) == R.DEBIT_ACCOUNT_FROZEN
    bank.ok(transfer(bank.new_id(), 0, 0, 0, ledger=0, code=0, pending_id=hold,
                     flags=F.VOID_PENDING))
    assert bank.ledger.update_account(CLASS_II, AccountStatus.ACTIVE, flags) == (
        AccountUpdateResult.OK)
    bank.ok(bank.pay(CLASS_II, MERCHANT, 1))


def test_closing_needs_a_zero_balance_and_is_final(bank: Bank) -> None:
    """An account closes only with a zero balance and no holds; once closed it takes no
    transfer and no further status change."""
    flags = bank.account(CLASS_II).flags
    bank.top_up(CLASS_II, 100 * CNY)
    assert bank.ledger.update_account(CLASS_II, AccountStatus.CLOSED, flags) == (
        AccountUpdateResult.BALANCE_NOT_ZERO)
    bank.ok(bank.pay(CLASS_II, CARD, 40 * CNY, code=C.WITHDRAW_BOUND))
    hold = bank.ok(bank.pay(CLASS_II, CARD, 60 * CNY, code=C.WITHDRAW_BOUND, flags=F.PENDING))
    assert bank.ledger.update_account(CLASS_II, AccountStatus.CLOSED, flags) == (
        AccountUpdateResult.BALANCE_NOT_ZERO)
    bank.ok(transfer(bank.new_id(), 0, 0, 0, ledger=0, code=0, pending_id=hold,
                     flags=F.POST_PENDING))
    assert bank.ledger.update_account(CLASS_II, AccountStatus.CLOSED, flags) == (
        AccountUpdateResult.OK)
    assert bank.result(bank.pay(CLASS_II, CARD, 1, code=C.WITHDRAW_BOUND)) == (
        R.DEBIT_ACCOUNT_CLOSED)
    assert bank.result(bank.pay(CARD, CLASS_II, 1, code=C.TOPUP_BOUND)) == R.CREDIT_ACCOUNT_CLOSED
    assert bank.ledger.update_account(CLASS_II, AccountStatus.ACTIVE, flags) == (
        AccountUpdateResult.ACCOUNT_CLOSED)


def test_closing_refuses_an_account_with_holds(bank: Bank) -> None:
    """A zero posted balance is not enough: an open hold blocks closing (PENDING_NOT_ZERO)."""
    flags = bank.account(MERCHANT).flags
    bank.ok(bank.pay(CARD, MERCHANT, 100 * CNY, flags=F.PENDING))
    assert bank.ledger.update_account(MERCHANT, AccountStatus.CLOSED, flags) == (
        AccountUpdateResult.PENDING_NOT_ZERO)


# --- retention window ------------------------------------------------------------------


def test_eviction_stops_at_a_pending_transfer(bank: Bank) -> None:
    """Eviction forgets old transfers in log order but stops at the first one still pending,
    so a hold's id stays resolvable until it is posted, voided or expired."""
    assert bank.ledger.log_count == 1  # the funding of the card
    before = bank.ok(bank.pay(CARD, MERCHANT, 100 * CNY))
    hold = bank.ok(bank.pay(CARD, MERCHANT, 200 * CNY, flags=F.PENDING))
    after = bank.ok(bank.pay(CARD, MERCHANT, 300 * CNY))
    far_future = bank.ts + 365 * NS_PER_DAY
    assert bank.ledger.evict(far_future, 1_000) == 2  # the funding and `before`
    assert transfer_view(bank.ledger, before) is None
    assert transfer_view(bank.ledger, hold) is not None
    assert transfer_view(bank.ledger, after) is not None
    bank.ok(transfer(bank.new_id(), 0, 0, 0, ledger=0, code=0, pending_id=hold,
                     flags=F.POST_PENDING))
    assert bank.ledger.evict(far_future, 1) == 1  # count_max bounds the work
    assert transfer_view(bank.ledger, hold) is None
    after_record = transfer_view(bank.ledger, after)
    assert after_record is not None
    assert bank.ledger.evict(after_record.timestamp + 1, 1_000) == 1  # only old enough ones
    assert transfer_view(bank.ledger, after) is None
    assert bank.ledger.log_tail == bank.ledger.log_count - 1  # only the recent post is left
