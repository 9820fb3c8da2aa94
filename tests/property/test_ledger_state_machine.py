"""Stateful tests: the ledger keeps its invariants under any sequence of operations.

A Hypothesis `RuleBasedStateMachine` opens accounts, moves money (plain,
held, posted, voided, reversed, retried, in linked chains), lets time pass
and days roll over, and after every step checks what must always hold:

- money is conserved: the debits and credits posted (and pending) over all
  accounts are equal, and every account's totals equal a model built only
  from the transfers that were answered OK;
- no account flagged debits_must_not_exceed_credits is below its floor;
- no Class II/III counter is above its product cap, and no Class III balance
  (with incoming holds) is above its cap;
- every id has exactly one record, a posting in the log, a consumed failure in
  the failure ring: a retry never posts again, an `EXISTS` retry returns the
  original timestamp, and a consumed failure stays failed;
- each channel's records in the log and in the failure ring are counted
  exactly and stay within its quota (`log_share_permille`, installed by a rule
  at shares the machine reaches): a refusal for the quota consumes nothing.

The machine runs on the kernel; a subclass runs the very same machine on the
reference, so both backends are held to the invariants, not only to each other.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from ledger.reference import Transfer
from ledger.types import (
    CHANNEL_COUNT,
    AccountFlags,
    AccountKind,
    AccountStatus,
    AccountUpdateResult,
    CounterSpace,
    CreateAccountResult,
    CreateTransferResult,
    PendingState,
    TransferCode,
    TransferFlags,
    account_counter_key,
    customer_counter_key,
    id_consumed,
)
from limits.calendar import day_of_date
from limits.reference import counters_effective
from tests.ledger_helpers import (
    NS_PER_DAY,
    NS_PER_S,
    TIGHT_RULES,
    account_input,
    account_view,
    make_ledger,
    product_caps,
    remaining_limits,
    rule_tables,
    slot_of,
    transfer,
    transfer_view,
)

R = CreateTransferResult
K = AccountKind
F = TransferFlags
C = TransferCode
D = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS

CLEARING = 1
CASH = 2
CARD = 3
START_DAY = day_of_date(2025, 12, 30)  # day rollovers cross into 2026 early on
START_TS = 1_767_000_000 * NS_PER_S

CODES = (C.TRANSFER, C.PAYMENT, C.EXTERNAL_TRANSFER_OUT, C.EXTERNAL_TRANSFER_IN,
         C.TOPUP_BOUND, C.WITHDRAW_BOUND, C.CASH_DEPOSIT, C.CASH_WITHDRAWAL, C.FEE, C.INTEREST,
         C.SETTLEMENT, C.WEALTH)
CHANNELS = (0, 1, 3, 4, 6, 7, 8, 9)  # 9: a channel the rules do not know (no code allowed)
CUSTOMERS = (0, 1, 2)  # account holders; 0: none (strong authentication per account)
PRODUCTS = {  # (kind, tight) -> product id in TIGHT_RULES
    (K.CLASS_I, False): 1, (K.CLASS_I, True): 10,
    (K.CLASS_II, False): 2, (K.CLASS_II, True): 8,
    (K.CLASS_III, False): 3, (K.CLASS_III, True): 9,
    (K.SAVINGS, False): 4, (K.SAVINGS, True): 4,
}
STATIC_CAPS = (8_000, 10_000, 12_000, 15_000, 20_000, 25_000, 30_000, 45_000, 50_000)


@dataclass(frozen=True)
class AccountSpec:
    kind: int
    tight: bool  # the product with small caps (TIGHT_RULES ids 8, 9, 10)
    limited: bool  # debits_must_not_exceed_credits
    face_to_face: bool
    non_bound_inflow: bool
    binding: str  # "card" (bound to CARD), "external" (BOUND_EXTERNAL) or "none"
    funding: int
    customer: int


account_specs = st.builds(
    AccountSpec,
    kind=st.sampled_from((K.CLASS_II, K.CLASS_III, K.CLASS_II, K.CLASS_III, K.CLASS_I, K.SAVINGS)),
    tight=st.sampled_from((True, True, False)),
    limited=st.sampled_from((True, True, False)),
    face_to_face=st.booleans(),
    non_bound_inflow=st.sampled_from((True, True, False)),
    binding=st.sampled_from(("card", "external", "none")),
    funding=st.sampled_from((0, 5_000, 20_000, 200_000)),
    customer=st.sampled_from(CUSTOMERS),
)


@dataclass
class Hold:
    debit: int
    credit: int
    amount: int


@dataclass
class Posting:
    """A transfer answered OK that moved money, and what of it may still be reversed."""

    debit: int
    credit: int
    remaining: int


@dataclass(frozen=True)
class Answer:
    """The first answer to an id: its record (as sent), result and timestamp."""

    record: bytes
    result: int
    timestamp: int
    retryable: bool  # chain members are not: alone, their LINKED flag opens a chain


@dataclass(frozen=True)
class Intent:
    """What a submitted transfer is meant to do, for the model."""

    kind: str  # plain, hold, post, void, reversal
    record: bytes
    debit: int = 0
    credit: int = 0
    amount: int = 0
    target: int = 0


class KernelLedgerMachine(RuleBasedStateMachine):
    backend = "kernel"
    accounts = Bundle("accounts")

    def __init__(self) -> None:
        super().__init__()
        self.ledger = make_ledger(self.backend, TIGHT_RULES, account_capacity=64,
                                  transfer_capacity=4096)
        self.ts = START_TS
        self.products: dict[int, int] = {}
        self.kinds: dict[int, int] = {}
        self.flags: dict[int, int] = {}
        self.customers: dict[int, int] = {}
        self.next_account_id = 100
        self.next_transfer_id = 1
        self.debits_posted: Counter[int] = Counter()
        self.credits_posted: Counter[int] = Counter()
        self.holds: dict[int, Hold] = {}
        self.postings: dict[int, Posting] = {}
        self.answers: dict[int, Answer] = {}
        self.debited: set[int] = set()  # accounts that have had a debit (or a held one)
        self.bound: dict[int, int] = {}  # account -> where its bound-card money comes from
        # Per channel: the model's count of its records in the log and the failure ring.
        self.channel_records: dict[int, list[int]] = {channel: [0, 0] for channel in CHANNELS}
        self.quota_permille: dict[int, int] = dict.fromkeys(CHANNELS, 0)
        self.held_at_quota: dict[int, tuple[int, ...]] = dict.fromkeys(CHANNELS, (0, 0))

    def failure_answers(self, result: int) -> tuple[int, ...]:
        """A failure with `result`, or the refusal for the failure ring's quota instead."""
        if any(self.quota_permille.values()):
            return (result, R.CHANNEL_LOG_QUOTA_EXCEEDED)
        return (result,)

    @property
    def day(self) -> int:
        return START_DAY + (self.ts - START_TS) // NS_PER_DAY

    # --- plumbing ------------------------------------------------------------------

    def open(self, account_id: int, kind: int, product: int, flags: int = 0,
             bound_id: int = 0, customer: int = 0) -> None:
        results = self.ledger.create_accounts(account_input(
            account_id, kind, flags=flags, product=product, bound_id=bound_id, customer=customer))
        assert results[0] == CreateAccountResult.OK, CreateAccountResult(results[0])
        self.products[account_id] = product
        self.kinds[account_id] = kind
        self.flags[account_id] = flags
        self.customers[account_id] = customer
        assert self.ledger.account_customer(account_id) == customer

    def new_id(self) -> int:
        self.next_transfer_id += 1
        return self.next_transfer_id

    def plain(self, debit: int, credit: int, amount: int, **fields: object) -> Intent:
        record = transfer(self.new_id(), debit, credit, amount, **fields)  # type: ignore[arg-type]
        return Intent("plain", record, debit, credit, amount)

    def submit(self, intents: list[Intent], *, chained: bool = False) -> list[int]:
        """Send one batch, fold the answers into the model, and return the results."""
        if chained:
            intents = [
                Intent(i.kind, _with_flags(i.record, F.LINKED) if n < len(intents) - 1
                       else i.record, i.debit, i.credit, i.amount, i.target)
                for n, i in enumerate(intents)
            ]
        log_count_before = self.ledger.log_count
        results, timestamps, _ = self.ledger.create_transfers(
            b"".join(i.record for i in intents), self.ts, self.day)
        self.ts += len(intents) + 1
        for intent, result in zip(intents, results, strict=True):
            event(f"{intent.kind}{' in chain' if chained else ''}: {R(result).name}")
        if chained and any(r != R.OK for r in results):
            # All or nothing: one member names the failure, the others LINKED_EVENT_FAILED,
            # and nothing was logged or posted.
            failures = [r for r in results if r != R.LINKED_EVENT_FAILED]
            assert len(failures) == 1, [R(r).name for r in results]
            assert self.ledger.log_count == log_count_before
            assert list(timestamps) == [0] * len(intents)
            self.reconcile_holds()
            return list(results)
        for intent, result, timestamp in zip(intents, results, timestamps, strict=True):
            self.fold(intent, result, timestamp, retryable=not chained)
        self.reconcile_holds()
        return list(results)

    def fold(self, intent: Intent, result: int, timestamp: int, *, retryable: bool) -> None:
        transfer_id = Transfer.unpack(intent.record).id
        assert transfer_id not in self.answers, "the machine never reuses an id by accident"
        channel = Transfer.unpack(intent.record).channel
        if result == R.OK:
            self.channel_records[channel][0] += 1
        elif id_consumed(result):
            self.channel_records[channel][1] += 1
        if result != R.OK:
            if id_consumed(result):
                self.answers[transfer_id] = Answer(intent.record, result, 0, retryable)
            return
        assert timestamp != 0
        self.answers[transfer_id] = Answer(intent.record, result, timestamp, retryable)
        match intent.kind:
            case "plain":
                self.move(intent.debit, intent.credit, intent.amount)
                self.postings[transfer_id] = Posting(intent.debit, intent.credit, intent.amount)
            case "hold":
                self.holds[transfer_id] = Hold(intent.debit, intent.credit, intent.amount)
                self.debited.add(intent.debit)
            case "post":
                hold = self.holds.pop(intent.target)
                amount = intent.amount or hold.amount
                assert amount <= hold.amount
                self.move(hold.debit, hold.credit, amount)
                self.postings[transfer_id] = Posting(hold.debit, hold.credit, amount)
            case "void":
                self.holds.pop(intent.target)
            case "reversal":
                posting = self.postings[intent.target]
                assert intent.amount <= posting.remaining
                posting.remaining -= intent.amount
                self.move(posting.credit, posting.debit, intent.amount)
            case _:
                raise AssertionError(intent.kind)

    def move(self, debit: int, credit: int, amount: int) -> None:
        self.debits_posted[debit] += amount
        self.credits_posted[credit] += amount
        self.debited.add(debit)

    def reconcile_holds(self) -> None:
        """Holds leave the model only through our posts and voids, or by expiring."""
        for hold_id in list(self.holds):
            record = transfer_view(self.ledger, hold_id)
            assert record is not None, hold_id
            assert record.state in (PendingState.PENDING, PendingState.EXPIRED), record
            if record.state == PendingState.EXPIRED:
                del self.holds[hold_id]

    def draw_amount(self, data: st.DataObject, debit: int, credit: int, channel: int) -> int:
        mode = data.draw(st.sampled_from(("small", "limit", "cap", "large")), label="amount mode")
        if mode == "limit":
            limits = remaining_limits(self.ledger, TIGHT_RULES, debit, credit, channel, self.day)
            if limits:
                limit = data.draw(st.sampled_from(sorted(limits)), label="limit")
                return max(1, limit + data.draw(st.sampled_from((0, -1, 1)), label="delta"))
        if mode == "cap":
            cap = data.draw(st.sampled_from(STATIC_CAPS), label="cap")
            return cap + data.draw(st.sampled_from((0, -1, 1)), label="delta")
        if mode == "large":
            return data.draw(st.integers(1, 10_000_000), label="amount")
        return data.draw(st.integers(1, 5_000), label="amount")

    def sides(self, code: int, debit: int, credit: int) -> tuple[int, int]:
        """Put the counterparty a code expects (cash desk, bound card, clearing) in place."""
        debit, credit = self.other_side(debit, credit)
        if code == C.CASH_DEPOSIT:
            return CASH, credit
        if code == C.CASH_WITHDRAWAL:
            return debit, CASH
        if code == C.TOPUP_BOUND and credit in self.bound:
            return self.bound[credit], credit
        if code == C.WITHDRAW_BOUND and debit in self.bound:
            return debit, self.bound[debit]
        if code == C.EXTERNAL_TRANSFER_OUT:
            return debit, CLEARING
        if code == C.EXTERNAL_TRANSFER_IN:
            return CLEARING, credit
        return debit, credit

    # --- rules ---------------------------------------------------------------------

    def open_customer(self, spec: AccountSpec) -> int:
        account_id = self.next_account_id
        self.next_account_id += 1
        flags = ((D if spec.limited else 0)
                 | (AccountFlags.FACE_TO_FACE_VERIFIED if spec.face_to_face else 0)
                 | (AccountFlags.NON_BOUND_INFLOW_ENABLED if spec.non_bound_inflow else 0))
        bound_id = 0
        if spec.kind in (K.CLASS_II, K.CLASS_III):
            if spec.binding == "card":
                bound_id = CARD
                self.bound[account_id] = CARD
            elif spec.binding == "external":
                flags |= AccountFlags.BOUND_EXTERNAL
                self.bound[account_id] = CLEARING
        self.open(account_id, spec.kind, PRODUCTS[(spec.kind, spec.tight)], flags, bound_id,
                  spec.customer)
        if spec.funding:
            self.submit([self.plain(CLEARING, account_id, spec.funding, code=C.INTEREST)])
        return account_id

    def other_side(self, debit: int, credit: int) -> tuple[int, int]:
        """Two different accounts: a pair drawn twice from the bundle may coincide."""
        if debit == credit:
            credit = CARD if debit != CARD else CLEARING
        return debit, credit

    # --- rules ---------------------------------------------------------------------

    @initialize(target=accounts, specs=st.lists(account_specs, min_size=2, max_size=5))
    def open_bank(self, specs: list[AccountSpec]) -> object:
        """The bank's own accounts, the bound Class I card, and a few customers.

        The clearing account funds everyone; it stays out of the bundle so that
        no rule freezes it.
        """
        self.open(CLEARING, K.INTERNAL_CLEARING, 7)
        self.open(CASH, K.INTERNAL_CASH, 7)
        self.open(CARD, K.CLASS_I, 1, D)
        self.submit([self.plain(CLEARING, CARD, 10_000_000, code=C.INTEREST)])
        return multiple(CARD, *(self.open_customer(spec) for spec in specs))

    @precondition(lambda self: len(self.kinds) < 24)
    @rule(target=accounts, spec=account_specs)
    def open_account(self, spec: AccountSpec) -> int:
        return self.open_customer(spec)

    @rule(debit=accounts, credit=accounts, code=st.sampled_from(CODES),
          channel=st.sampled_from(CHANNELS), strong=st.booleans(), data=st.data())
    def transfer(self, debit: int, credit: int, code: int, channel: int, strong: bool,
                 data: st.DataObject) -> None:
        debit, credit = self.sides(code, debit, credit)
        amount = self.draw_amount(data, debit, credit, channel)
        flags = F.STRONG_AUTH if strong else 0
        [result] = self.submit([self.plain(debit, credit, amount, code=code, channel=channel,
                                           flags=flags)])
        if result == R.OK and not strong and self.strong_counted(debit, channel):
            # Without a second factor, a debit never takes the day's total past the line.
            used = self.ledger.counter_used(self.strong_key(debit), self.day)
            assert used <= TIGHT_RULES.customers.strong_auth_daily_minor, (debit, used)

    def strong_counted(self, debit: int, channel: int) -> bool:
        rule = TIGHT_RULES.channels.get(channel)
        return (rule is not None and rule.kind.value not in ("counter", "internal")
                and self.kinds[debit] <= K.LOAN)

    def strong_key(self, debit: int) -> int:
        customer = self.customers[debit]
        if customer:
            return customer_counter_key(CounterSpace.STRONG_CUSTOMER, customer)
        return account_counter_key(CounterSpace.STRONG_ACCOUNT, slot_of(self.ledger, debit), 0)

    def limited_accounts(self) -> list[int]:
        return sorted(a for a, kind in self.kinds.items() if kind in (K.CLASS_II, K.CLASS_III))

    @precondition(lambda self: self.limited_accounts())
    @rule(data=st.data(), outflow=st.booleans(), delta=st.sampled_from((0, 1, -1)))
    def use_up_a_bucket(self, data: st.DataObject, outflow: bool, delta: int) -> None:
        """Move the Class II/III bucket's remaining quota (+1 fen, or -1): never OK past it."""
        account = data.draw(st.sampled_from(self.limited_accounts()), label="account")
        view = account_view(self.ledger, account)
        caps = product_caps(TIGHT_RULES, view.product)
        counters = counters_effective(list(self.ledger.account_counters(account) or (0,) * 4),
                                      view.counters_day, max(self.day, self.ledger.last_day))
        if outflow:
            remaining = min(caps.outflow_daily - counters[2], caps.outflow_yearly - counters[3])
        else:
            remaining = min(caps.inflow_daily - counters[0], caps.inflow_yearly - counters[1])
        amount = remaining + delta
        if amount <= 0:
            return
        # In pieces no larger than the product's single-transfer cap.
        piece_max = caps.transfer_cap or amount
        pieces = [piece_max] * (amount // piece_max) + ([amount % piece_max] if amount % piece_max
                                                        else [])
        if outflow:
            self.submit([self.plain(CLEARING, account, amount, code=C.INTEREST)])
            intents = [self.plain(account, CLEARING, piece, code=C.EXTERNAL_TRANSFER_OUT)
                       for piece in pieces]
        else:
            intents = [self.plain(CLEARING, account, piece, code=C.EXTERNAL_TRANSFER_IN)
                       for piece in pieces]
        results = self.submit(intents)
        if amount > remaining:
            assert any(result != R.OK for result in results), (account, amount, remaining)

    @rule(account=accounts, amount=st.integers(1, 50_000))
    def fund(self, account: int, amount: int) -> None:
        if account != CLEARING:
            self.submit([self.plain(CLEARING, account, amount, code=C.INTEREST)])

    @rule(debit=accounts, credit=accounts, code=st.sampled_from(CODES),
          timeout_s=st.sampled_from((0, 1, 5)), channel=st.sampled_from(CHANNELS),
          data=st.data())
    def hold(self, debit: int, credit: int, code: int, timeout_s: int, channel: int,
             data: st.DataObject) -> None:
        debit, credit = self.sides(code, debit, credit)
        amount = self.draw_amount(data, debit, credit, channel)
        record = transfer(self.new_id(), debit, credit, amount, code=code, channel=channel,
                          flags=F.PENDING, timeout_s=timeout_s)
        self.submit([Intent("hold", record, debit, credit, amount)])

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), void=st.booleans())
    def resolve(self, data: st.DataObject, void: bool) -> None:
        hold_id = data.draw(st.sampled_from(sorted(self.holds)), label="hold")
        full = self.holds[hold_id].amount
        if void:
            amount = data.draw(st.sampled_from((0, full)), label="void amount")
        else:
            amount = data.draw(st.one_of(st.just(0), st.just(full), st.integers(1, full + 1)),
                               label="post amount")
        record = transfer(self.new_id(), 0, 0, amount, code=0, ledger=0, pending_id=hold_id,
                          flags=F.VOID_PENDING if void else F.POST_PENDING)
        results = self.submit([Intent("void" if void else "post", record, amount=amount,
                                      target=hold_id)])
        if amount > full:
            assert results[0] in self.failure_answers(R.EXCEEDS_PENDING_TRANSFER_AMOUNT)

    @precondition(lambda self: any(p.remaining for p in self.postings.values()))
    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(
            sorted(i for i, p in self.postings.items() if p.remaining)), label="reversal target")
        posting = self.postings[target]
        remaining = posting.remaining
        amount = data.draw(st.integers(1, remaining + 1), label="reversal amount")
        record = transfer(self.new_id(), posting.credit, posting.debit, amount,
                          code=C.REVERSAL, pending_id=target)
        results = self.submit([Intent("reversal", record, amount=amount, target=target)])
        if amount > remaining:
            assert results[0] in self.failure_answers(R.EXCEEDS_REVERSIBLE_AMOUNT)

    @precondition(lambda self: any(a.retryable for a in self.answers.values()))
    @rule(data=st.data())
    def retry_identical(self, data: st.DataObject) -> None:
        """An identical retry answers EXISTS with the original timestamp (or stays failed)
        and logs and posts nothing."""
        transfer_id = data.draw(st.sampled_from(
            sorted(i for i, a in self.answers.items() if a.retryable)), label="retried id")
        answer = self.answers[transfer_id]
        log_count = self.ledger.log_count
        results, timestamps, _ = self.ledger.create_transfers(answer.record, self.ts, self.day)
        self.ts += 2
        if answer.result == R.OK:
            assert results[0] == R.EXISTS, R(results[0])
            assert timestamps[0] == answer.timestamp
        else:
            assert results[0] == R.ID_ALREADY_FAILED, R(results[0])
            assert timestamps[0] == 0
        assert self.ledger.log_count == log_count
        self.reconcile_holds()

    @precondition(lambda self: any(a.retryable and a.result == R.OK
                                   for a in self.answers.values()))
    @rule(data=st.data())
    def retry_with_different_amount(self, data: st.DataObject) -> None:
        """A retry of an OK id with another amount is a conflict, never a second posting."""
        transfer_id = data.draw(st.sampled_from(sorted(
            i for i, a in self.answers.items() if a.retryable and a.result == R.OK)),
            label="retried id")
        t = Transfer.unpack(self.answers[transfer_id].record)
        t.amount += 1
        log_count = self.ledger.log_count
        results, _, _ = self.ledger.create_transfers(t.pack(), self.ts, self.day)
        self.ts += 2
        assert results[0] == R.EXISTS_WITH_DIFFERENT_AMOUNT, R(results[0])
        assert self.ledger.log_count == log_count
        self.reconcile_holds()

    @rule(first=accounts, second=accounts, third=accounts, data=st.data(),
          length=st.sampled_from((2, 3)))
    def linked_chain(self, first: int, second: int, third: int, data: st.DataObject,
                     length: int) -> None:
        """A chain of plain transfers moves money all or nothing."""
        pairs = [self.other_side(first, second), self.other_side(second, third),
                 self.other_side(third, first)][:length]
        intents = []
        for debit, credit in pairs:
            channel = data.draw(st.sampled_from(CHANNELS), label="channel")
            amount = self.draw_amount(data, debit, credit, channel)
            code = data.draw(st.sampled_from((C.TRANSFER, C.PAYMENT, C.INTEREST)), label="code")
            intents.append(self.plain(debit, credit, amount, code=code, channel=channel))
        self.submit(intents, chained=True)

    @rule(seconds=st.sampled_from((0, 1, 2, 5, 6, 3_600)))
    def advance_time_and_expire(self, seconds: int) -> None:
        self.ts += seconds * NS_PER_S
        expired_before = len(self.holds)
        expired = self.ledger.expire_pending(self.ts, self.day)
        self.reconcile_holds()
        assert expired <= expired_before
        assert expired_before - len(self.holds) == expired

    @rule(days=st.sampled_from((1, 1, 2, 30, 200)), offset_ns=st.integers(0, 1_000))
    def day_rollover(self, days: int, offset_ns: int) -> None:
        start_of_today = START_TS + (self.day - START_DAY) * NS_PER_DAY
        self.ts = start_of_today + days * NS_PER_DAY + offset_ns
        self.ledger.expire_pending(self.ts, self.day)
        self.reconcile_holds()

    @rule(account=accounts, frozen=st.sampled_from((False, True, False)))
    def freeze_or_unfreeze(self, account: int, frozen: bool) -> None:
        status = AccountStatus.FROZEN if frozen else AccountStatus.ACTIVE
        result = self.ledger.update_account(account, status, self.flags[account])
        assert result == AccountUpdateResult.OK, AccountUpdateResult(result)

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def money_is_conserved_and_matches_the_model(self) -> None:
        views = {account_id: account_view(self.ledger, account_id) for account_id in self.kinds}
        assert sum(v.debits_posted for v in views.values()) == sum(
            v.credits_posted for v in views.values())
        assert sum(v.debits_pending for v in views.values()) == sum(
            v.credits_pending for v in views.values())
        debits_pending: Counter[int] = Counter()
        credits_pending: Counter[int] = Counter()
        for hold in self.holds.values():
            debits_pending[hold.debit] += hold.amount
            credits_pending[hold.credit] += hold.amount
        for account_id, view in views.items():
            actual = (view.debits_posted, view.credits_posted,
                      view.debits_pending, view.credits_pending)
            expected = (self.debits_posted[account_id], self.credits_posted[account_id],
                        debits_pending[account_id], credits_pending[account_id])
            assert actual == expected, (account_id, actual, expected)

    @invariant()
    def no_account_is_below_its_floor(self) -> None:
        for account_id, flags in self.flags.items():
            if not flags & D:
                continue
            view = account_view(self.ledger, account_id)
            floor = product_caps(TIGHT_RULES, self.products[account_id]).balance_floor
            # Credits alone never trip the floor: a positive floor (a minimum balance)
            # binds only once the account has been debited.
            floor_now = floor if account_id in self.debited else min(floor, 0)
            assert view.available >= floor_now, (account_id, view, floor)

    @invariant()
    def class_ii_and_iii_stay_within_their_caps(self) -> None:
        for account_id, kind in self.kinds.items():
            if kind not in (K.CLASS_II, K.CLASS_III):
                continue
            caps = product_caps(TIGHT_RULES, self.products[account_id])
            counters = self.ledger.account_counters(account_id)
            assert counters is not None
            inflow_daily, inflow_yearly, outflow_daily, outflow_yearly = counters
            assert 0 <= inflow_daily <= caps.inflow_daily, (account_id, counters)
            assert 0 <= inflow_yearly <= caps.inflow_yearly, (account_id, counters)
            assert 0 <= outflow_daily <= caps.outflow_daily, (account_id, counters)
            assert 0 <= outflow_yearly <= caps.outflow_yearly, (account_id, counters)
            if kind == K.CLASS_III:
                view = account_view(self.ledger, account_id)
                incoming = view.credits_posted + view.credits_pending - view.debits_posted
                assert incoming <= caps.balance_cap, (account_id, view)

    @invariant()
    def day_counters_stay_within_their_caps(self) -> None:
        """A channel's credit cap per account and the customer cap are never exceeded, and the
        internal accounts never pass their kind's floor."""
        for account_id in self.kinds:
            slot = slot_of(self.ledger, account_id)
            for channel_id, channel in TIGHT_RULES.channels.items():
                if channel.inflow_daily_cap_minor:
                    key = account_counter_key(CounterSpace.CHANNEL_CREDIT, slot, channel_id)
                    used = self.ledger.counter_used(key, self.day)
                    assert 0 <= used <= channel.inflow_daily_cap_minor, (account_id, channel_id)
        cap = TIGHT_RULES.customers.daily_outflow_cap_minor
        for customer in CUSTOMERS[1:]:
            key = customer_counter_key(CounterSpace.CUSTOMER_DEBIT, customer)
            assert 0 <= self.ledger.counter_used(key, self.day) <= cap, customer
        for account_id, internal in ((CLEARING, "clearing"), (CASH, "cash")):
            view = account_view(self.ledger, account_id)
            floor = TIGHT_RULES.internal_accounts[internal].balance_floor_minor
            assert view.credits_posted - view.debits_posted - view.debits_pending >= floor

    @invariant()
    def one_log_record_per_id(self) -> None:
        """Postings in the log, failures in the failure ring (never evicted here: the
        machine makes fewer failures than the ring holds), each id once."""
        assert self.ledger.log_tail == 0 and self.ledger.failed_tail == 0
        posted = sum(1 for answer in self.answers.values() if answer.result == R.OK)
        assert self.ledger.log_count == posted
        assert self.ledger.failed_count == len(self.answers) - posted
        for transfer_id, answer in self.answers.items():
            record = transfer_view(self.ledger, transfer_id)
            assert record is not None and record.result == answer.result, transfer_id

    @invariant()
    def no_channel_passes_its_log_quota(self) -> None:
        """Each channel's records in the log and the failure ring are counted exactly, and
        none holds more than its share (`log_share_permille`) of either."""
        ledger = self.ledger
        log_size = ledger.transfer_capacity
        failed_size = max(4, log_size // 4)
        for channel in CHANNELS:
            in_log, in_failed = ledger.channel_records(channel)
            assert [in_log, in_failed] == self.channel_records[channel], channel
            permille = self.quota_permille[channel]
            if permille:  # it may hold more only if it did when the quota came in
                held_log, held_failed = self.held_at_quota[channel]
                bound_log = max(held_log, -(-permille * log_size // 1000))
                bound_failed = max(held_failed, -(-permille * failed_size // 1000))
                assert in_log <= bound_log, (channel, in_log, bound_log)
                assert in_failed <= bound_failed, (channel, in_failed, bound_failed)

    @rule(permille=st.sampled_from((1, 2, 3, 900)), channels=st.sets(st.sampled_from(CHANNELS)))
    def set_log_quotas(self, permille: int, channels: set[int]) -> None:
        """Install log quotas (the rules' `log_share_permille`): small enough that the
        machine's postings and failures reach them (1 permille of the 4096-record log is
        5 records, of the 1024-record failure ring 2)."""
        table = bytearray(CHANNEL_COUNT * 2)
        for channel in channels:
            struct.pack_into("<H", table, 2 * channel, permille)
            self.quota_permille[channel] = permille
            self.held_at_quota[channel] = tuple(self.channel_records[channel])
        for channel in set(CHANNELS) - channels:
            self.quota_permille[channel] = 0
        products, channel_table = rule_tables(TIGHT_RULES)
        self.ledger.set_rules(products, channel_table, table)


def _with_flags(record: bytes, flags: int) -> bytes:
    t = Transfer.unpack(record)
    t.flags |= flags
    return t.pack()


class ReferenceLedgerMachine(KernelLedgerMachine):
    backend = "reference"


MACHINE_SETTINGS = settings(stateful_step_count=80)
KernelLedgerMachine.TestCase.settings = MACHINE_SETTINGS
ReferenceLedgerMachine.TestCase.settings = MACHINE_SETTINGS


class TestKernelLedgerMachine(KernelLedgerMachine.TestCase):
    """The kernel keeps every invariant above under generated operation sequences."""


class TestReferenceLedgerMachine(ReferenceLedgerMachine.TestCase):
    """The reference keeps the same invariants under the same machine."""
