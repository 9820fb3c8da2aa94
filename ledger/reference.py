"""The plain-Python reference ledger: the oracle the Cython kernels are held to.

It has exactly the kernels' semantics and reads line by line like
`cext/ledger_kernel.pyx`: the same function names, the same check order, the
same state, only kept in Python objects and dicts instead of packed arrays.
It is slow on purpose-free grounds (clarity first) and is selected explicitly
with `TALLY_KERNEL=reference`, never as a silent fallback.

Successful transfers live in the log (evicted by retention); a failure that
consumed its id lives in the failure ring (a quarter of the log's size, its
oldest forgotten when a new one needs the room, or once older than the
failure retention); each channel may hold at most its quota (permille, from
the rules) of either: a posting that would pass its share of the log, or a
failure that would pass its share of the ring, is answered
CHANNEL_LOG_QUOTA_EXCEEDED, nothing recorded, the id not consumed. As in the
kernel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from ledger.constants import BANK_CHANNEL, CLEARING_ID, INTEREST_EXPENSE_ID, LOAN_FUNDING_ID
from ledger.deposits import (
    DEMAND_KINDS,
    DEPOSIT_WRITE_ALWAYS,
    DEPOSIT_WRITE_SIZE,
    RATE_ROW,
    UNITS_PER_FEN,
    FdFlags,
    check_rates,
    check_settle_args,
    check_settlement_args,
    demand_row_view,
    deposit_write_view,
    fen_of_units,
    fixed_row_view,
    interest_transfer_id,
    pack_demand_row,
)
from ledger.loan_book import (
    LOAN_TERMS,
    check_collection_args,
    collect_one,
    collection_transfer,
    loan_row_view,
    loan_terms_view,
    row_write,
    terms_error,
    terms_valid,
)
from ledger.records import TransferView, account_view, pack_transfer, pending_view, transfer_view
from ledger.state import (
    ACCOUNT_TABLES,
    LOG_QUOTA_TABLE_SIZE,
    PER_ACCOUNT_TABLES,
    SECTION_NAMES,
    Buffer,
    LedgerState,
    StateCorrupt,
    pack_channel_live_digest,
    pack_channels_live,
    pack_meta,
)
from ledger.types import (
    ACCOUNT_INPUT_STRUCT,
    ACCOUNT_INTERNAL_HAS_PENDING,
    ACCOUNT_KINDS_VALID,
    ACCOUNT_SIZE,
    ACCOUNT_STRUCT,
    BANK_RULE_OFFSET,
    BANK_RULE_STRUCT,
    CHANNEL_COUNT,
    CHANNEL_RULE_STRUCT,
    CHANNEL_SIZE,
    COUNTED_CREDIT_INFLOW,
    COUNTED_DEBIT_OUTFLOW,
    CUSTOMER_NUMBER_MAX,
    DEPOSIT_SIZE,
    ID_MAX,
    INT64_MAX,
    KIND_RULE_COUNT,
    KIND_RULE_SIZE,
    KIND_RULE_STRUCT,
    KIND_RULES_OFFSET,
    NS_PER_S,
    PENDING_SIZE,
    PENDING_STRUCT,
    PRODUCT_KIND_ANY_INTERNAL,
    PRODUCT_SIZE,
    SLOT_NONE,
    TRANSFER_CODE_MAX,
    TRANSFER_FLAGS_KNOWN,
    TRANSFER_SIZE,
    TRANSFER_STRUCT,
    UINT64_MAX,
    AccountFlags,
    AccountKind,
    AccountStatus,
    AccountUpdateResult,
    ChannelOption,
    CounterSpace,
    CreateAccountResult,
    CreateTransferResult,
    KindOption,
    PendingState,
    TransferCode,
    TransferFlags,
    account_counter_key,
    customer_counter_key,
    join_id,
    rules_table_upgraded,
    split_id,
)
from limits import reference as limits_reference
from limits.reference import (
    INFLOW_DAILY,
    INFLOW_YEARLY,
    OUTFLOW_DAILY,
    OUTFLOW_YEARLY,
    PRODUCT_BALANCE_CAP,
    PRODUCT_BALANCE_FLOOR,
    PRODUCT_INFLOW_DAILY,
    PRODUCT_INFLOW_YEARLY,
    PRODUCT_OUTFLOW_DAILY,
    PRODUCT_OUTFLOW_YEARLY,
    PRODUCT_TRANSFER_CAP,
)

R = CreateTransferResult
A = CreateAccountResult
U = AccountUpdateResult
F = TransferFlags
FLAGS_PENDING_FAMILY = F.PENDING | F.POST_PENDING | F.VOID_PENDING
KIND_CUSTOMER_MAX = int(AccountKind.LOAN)
_PRODUCT_ROW = struct.Struct("<8q")
_CUSTOMER_ROW = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class ChannelRule:
    transfer_cap_minor: int
    daily_cap_minor: int
    inflow_daily_cap_minor: int
    codes: int
    options: int


@dataclass(frozen=True, slots=True)
class KindRule:
    balance_floor_minor: int
    debit_codes: int
    credit_codes: int
    options: int


@dataclass(frozen=True, slots=True)
class BankRule:
    customer_daily_cap_minor: int
    strong_auth_daily_minor: int
    counted_codes: int
    inflow_codes: int
    anchored_codes: int


def code_in(codes: int, code: int) -> bool:
    return (codes >> code) & 1 != 0


@dataclass(slots=True)
class Tallies:
    """The day counters one debit consumes (kernel `Tallies`): key, cap, result, used."""

    keys: list[int] = field(default_factory=list)
    caps: list[int] = field(default_factory=list)
    results: list[int] = field(default_factory=list)
    used: list[int] = field(default_factory=list)

    def add(self, key: int, cap: int, result: int) -> None:
        self.keys.append(key)
        self.caps.append(cap)
        self.results.append(result)
        self.used.append(0)


FAILED_BIT = 1 << 62  # on the index seq of a failure ring record, as in the kernel


def power_of_two_at_least(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def failed_ring_size(log_size: int) -> int:
    """Records of the failure ring beside a log of `log_size` (a power of two): a quarter."""
    return max(4, log_size // 4)


@dataclass(slots=True)
class Account:
    id: int
    ledger: int
    kind: int
    flags: int
    product: int
    bound_slot: int = SLOT_NONE
    status: int = AccountStatus.ACTIVE
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0
    counters_day: int = 0
    counters: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    customer: int = 0
    deposit: bytes = bytes(DEPOSIT_SIZE)  # the deposit row (ledger/deposits.py)

    def pack(self) -> bytes:
        lo, hi = split_id(self.id)
        internal = (
            ACCOUNT_INTERNAL_HAS_PENDING if self.debits_pending or self.credits_pending else 0
        )
        return ACCOUNT_STRUCT.pack(
            lo,
            hi,
            self.debits_posted,
            self.credits_posted,
            *self.counters,
            self.bound_slot,
            self.ledger,
            self.kind,
            self.status,
            self.flags,
            self.product,
            self.counters_day,
            internal,
        )

    def pack_pending(self) -> bytes:
        return PENDING_STRUCT.pack(self.debits_pending, self.credits_pending)

    def pack_customer(self) -> bytes:
        return _CUSTOMER_ROW.pack(self.customer)

    def pack_deposit(self) -> bytes:
        return self.deposit

    def copy(self) -> Account:
        return dataclasses.replace(self, counters=list(self.counters))


@dataclass(slots=True)
class Transfer:
    """One transfer as given by the caller plus what the log adds to it."""

    id: int
    debit_account_id: int
    credit_account_id: int
    pending_id: int
    amount: int
    timestamp: int
    timeout_s: int
    ledger: int
    code: int
    flags: int
    channel: int
    result: int
    debit_slot: int
    credit_slot: int
    business_day: int
    counted: int
    state: int
    user_data: int
    amount_posted: int
    amount_reversed: int

    @classmethod
    def unpack(cls, buffer: bytes | memoryview, offset: int = 0) -> Transfer:
        return cls(*transfer_view(buffer, offset))

    def pack(self) -> bytes:
        return TRANSFER_STRUCT.pack(
            *split_id(self.id),
            *split_id(self.debit_account_id),
            *split_id(self.credit_account_id),
            *split_id(self.pending_id),
            self.amount,
            self.timestamp,
            self.timeout_s,
            self.ledger,
            self.code,
            self.flags,
            self.channel,
            self.result,
            self.debit_slot,
            self.credit_slot,
            self.business_day,
            self.counted,
            self.state,
            self.user_data,
            self.amount_posted,
            self.amount_reversed,
        )

    def copy(self) -> Transfer:
        return dataclasses.replace(self)


assert tuple(field.name for field in dataclasses.fields(Transfer)) == TransferView._fields


def transfer_expires_at(t: Transfer) -> int:
    return t.timestamp + t.timeout_s * NS_PER_S


@dataclass(slots=True)
class _Undo:
    """What one applied event of a linked chain changed, to roll it back."""

    accounts: list[tuple[int, Account]]
    target: tuple[int, Transfer] | None
    channel_entries: list[tuple[int, tuple[int, int] | None]]
    transfer_id: int


class ReferenceLedger:
    """State and batch operations; the same interface as `ledger.kernel.KernelLedger`."""

    backend = "reference"

    def __init__(self, *, account_capacity: int, transfer_capacity: int) -> None:
        self.account_capacity = account_capacity
        self.transfer_capacity = transfer_capacity
        self.accounts: list[Account] = []
        self.account_index: dict[int, int] = {}
        self.log: dict[int, Transfer] = {}
        self.log_tail = 0
        self.log_count = 0
        # The kernel's ring sizes: quotas are shares of these.
        self.log_size = power_of_two_at_least(transfer_capacity)
        self.failed_size = failed_ring_size(self.log_size)
        self.failed: dict[int, Transfer] = {}
        self.failed_tail = 0
        self.failed_count = 0
        # Per channel: records in the log window, records in the failure ring.
        self.log_live = [0] * CHANNEL_COUNT
        self.failed_live = [0] * CHANNEL_COUNT
        self.log_quotas = [0] * CHANNEL_COUNT  # permille; 0 = no quota
        self.transfer_index: dict[int, int] = {}
        self.expiry_heap: list[tuple[int, int]] = []
        # Day counters by key (kernel `account_counter_key`, `customer_counter_key`): (day, used).
        self.channel_counters: dict[int, tuple[int, int]] = {}
        self.last_day = 0
        self.accrued_day = 0  # the business day interest was last accrued for (0: never)
        self.products: list[tuple[int, ...]] = [(0,) * 8]
        self.rules_table = rules_table_upgraded(bytes(CHANNEL_COUNT * 16))
        self.channels: list[ChannelRule] = []
        self.kinds: list[KindRule] = []
        self.bank = BankRule(0, 0, 0, 0, 0)
        self.set_rules(bytes(PRODUCT_SIZE), self.rules_table)

    # --- rules ----------------------------------------------------------------

    def set_rules(
        self,
        product_table: bytes | bytearray,
        channel_table: bytes | bytearray,
        log_quota_table: bytes | bytearray = b"",
    ) -> None:
        assert len(product_table) >= PRODUCT_SIZE and len(product_table) % PRODUCT_SIZE == 0
        assert len(log_quota_table) in (0, LOG_QUOTA_TABLE_SIZE)
        quotas = log_quota_table or bytes(LOG_QUOTA_TABLE_SIZE)
        self.log_quotas = list(struct.unpack(f"<{CHANNEL_COUNT}H", quotas))
        self.products = [
            _PRODUCT_ROW.unpack_from(product_table, offset)
            for offset in range(0, len(product_table), PRODUCT_SIZE)
        ]
        table = rules_table_upgraded(channel_table)
        self.rules_table = table
        self.channels = [
            ChannelRule(*CHANNEL_RULE_STRUCT.unpack_from(table, channel * CHANNEL_SIZE))
            for channel in range(CHANNEL_COUNT)
        ]
        self.kinds = [
            KindRule(
                *KIND_RULE_STRUCT.unpack_from(table, KIND_RULES_OFFSET + kind * KIND_RULE_SIZE)[:4]
            )
            for kind in range(KIND_RULE_COUNT)
        ]
        self.bank = BankRule(*BANK_RULE_STRUCT.unpack_from(table, BANK_RULE_OFFSET))

    # --- accounts -------------------------------------------------------------

    def create_accounts(self, batch: bytes | memoryview) -> bytearray:
        assert len(batch) % ACCOUNT_SIZE == 0
        count = len(batch) // ACCOUNT_SIZE
        assert len(self.accounts) + count <= self.account_capacity, "account table full"
        results = bytearray(count)
        for index in range(count):
            results[index] = self.create_account(batch, index * ACCOUNT_SIZE)
        return results

    def create_account(self, batch: bytes | memoryview, offset: int) -> int:
        (id_lo, id_hi, bound_lo, bound_hi, ledger, kind, status, flags, product, customer) = (
            ACCOUNT_INPUT_STRUCT.unpack_from(batch, offset)
        )
        if any(bytes(batch[offset + 48 : offset + 64])) or customer > CUSTOMER_NUMBER_MAX:
            return A.RESERVED_FIELD
        if flags & ~0x1F:
            return A.RESERVED_FLAG
        account_id = join_id(id_lo, id_hi)
        bound_id = join_id(bound_lo, bound_hi)
        if account_id == 0:
            return A.ID_MUST_NOT_BE_ZERO
        if account_id == ID_MAX:
            return A.ID_MUST_NOT_BE_INT_MAX
        if (flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS) and (
            flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
        ):
            return A.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if (flags & AccountFlags.BOUND_EXTERNAL) and bound_id != 0:
            return A.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if ledger == 0:
            return A.LEDGER_MUST_NOT_BE_ZERO
        if kind not in ACCOUNT_KINDS_VALID:
            return A.KIND_UNKNOWN
        if status != AccountStatus.ACTIVE:
            return A.STATUS_MUST_BE_ACTIVE
        if product >= len(self.products) or (product != 0 and self.products[product][7] == 0):
            return A.PRODUCT_UNKNOWN
        if not product_fits(self.products[product][7], kind):
            return A.PRODUCT_KIND_MISMATCH
        bound_slot = SLOT_NONE
        if bound_id != 0:
            bound_slot = self.account_index.get(bound_id, SLOT_NONE)
            if bound_slot == SLOT_NONE:
                return A.BOUND_ACCOUNT_NOT_FOUND
            if self.accounts[bound_slot].kind != AccountKind.CLASS_I:
                return A.BOUND_ACCOUNT_MUST_BE_CLASS_I
            if self.accounts[bound_slot].ledger != ledger:
                return A.BOUND_ACCOUNT_MUST_HAVE_THE_SAME_LEDGER
        slot = self.account_index.get(account_id, SLOT_NONE)
        if slot != SLOT_NONE:
            existing = self.accounts[slot]
            if existing.ledger != ledger:
                return A.EXISTS_WITH_DIFFERENT_LEDGER
            if existing.kind != kind:
                return A.EXISTS_WITH_DIFFERENT_KIND
            if existing.flags != flags:
                return A.EXISTS_WITH_DIFFERENT_FLAGS
            if existing.product != product:
                return A.EXISTS_WITH_DIFFERENT_PRODUCT
            if existing.bound_slot != bound_slot:
                return A.EXISTS_WITH_DIFFERENT_BOUND_ACCOUNT_ID
            if existing.customer != customer:
                return A.EXISTS_WITH_DIFFERENT_CUSTOMER
            return A.EXISTS
        self.account_index[account_id] = len(self.accounts)
        self.accounts.append(
            Account(
                id=account_id,
                ledger=ledger,
                kind=kind,
                flags=flags,
                product=product,
                bound_slot=bound_slot,
                customer=customer,
            )
        )
        return A.OK

    def update_account(self, account_id: int, status: int, flags: int) -> int:
        """Change status (freeze, unfreeze, close) and flags of one account."""
        slot = self.account_index.get(account_id, SLOT_NONE)
        if slot == SLOT_NONE:
            return U.ACCOUNT_NOT_FOUND
        if status < 0 or status > AccountStatus.CLOSED:
            return U.STATUS_UNKNOWN
        if flags & ~0x1F:
            return U.RESERVED_FLAG
        if (flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS) and (
            flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
        ):
            return U.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        account = self.accounts[slot]
        if (flags & AccountFlags.BOUND_EXTERNAL) and account.bound_slot != SLOT_NONE:
            return U.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if account.status == AccountStatus.CLOSED:
            return U.ACCOUNT_CLOSED
        if status == AccountStatus.CLOSED:
            if account.debits_posted != account.credits_posted:
                return U.BALANCE_NOT_ZERO
            if account.debits_pending != 0 or account.credits_pending != 0:
                return U.PENDING_NOT_ZERO
        account.status = status
        account.flags = flags
        return U.OK

    # --- transfers ------------------------------------------------------------

    def create_transfers(
        self, batch: bytes | memoryview, timestamp_first: int, business_day: int
    ) -> tuple[bytearray, array[int], array[int]]:
        """Apply one batch. Returns (results u8, timestamps u64, balances i64 x2)."""
        assert len(batch) % TRANSFER_SIZE == 0
        count = len(batch) // TRANSFER_SIZE
        assert business_day >= self.last_day, "business day went backwards"
        assert self.log_count - self.log_tail + count <= self.transfer_capacity, "log full"
        self.last_day = business_day
        self.expire_pending(timestamp_first, business_day)
        results = bytearray(count)
        timestamps = array("Q", bytes(8 * count))
        balances = array("q", bytes(16 * count))
        index = 0
        while index < count:
            chain_end = index
            while (
                chain_end < count
                and Transfer.unpack(batch, chain_end * TRANSFER_SIZE).flags & F.LINKED
            ):
                chain_end += 1
            if chain_end == index:
                self.create_transfer_one(
                    batch,
                    index,
                    timestamp_first + index,
                    business_day,
                    results,
                    timestamps,
                    balances,
                    None,
                )
                index += 1
                continue
            if chain_end == count:  # the chain never closes
                for member in range(index, count):
                    results[member] = R.LINKED_EVENT_FAILED
                results[count - 1] = R.LINKED_EVENT_CHAIN_OPEN
                index = count
                continue
            undo: list[_Undo] = []
            deferred: list[tuple[int, int]] = []
            failed_at = -1
            for member in range(index, chain_end + 1):
                result = self.create_transfer_one(
                    batch,
                    member,
                    timestamp_first + member,
                    business_day,
                    results,
                    timestamps,
                    balances,
                    (undo, deferred),
                )
                if result != R.OK:
                    failed_at = member
                    break
            if failed_at >= 0:
                self.chain_rollback(undo)
                for member in range(index, chain_end + 1):
                    if member != failed_at:
                        results[member] = R.LINKED_EVENT_FAILED
                    timestamps[member] = 0
                    balances[2 * member] = 0
                    balances[2 * member + 1] = 0
            else:
                for entry in deferred:
                    heapq.heappush(self.expiry_heap, entry)
            index = chain_end + 1
        return results, timestamps, balances

    def chain_rollback(self, undo: list[_Undo]) -> None:
        for step in reversed(undo):
            for slot, saved in reversed(step.accounts):
                self.accounts[slot] = saved
            if step.target is not None:
                self.log[step.target[0]] = step.target[1]
            for key, previous in reversed(step.channel_entries):
                if previous is None:
                    del self.channel_counters[key]
                else:
                    self.channel_counters[key] = previous
            seq = self.transfer_index.pop(step.transfer_id)
            assert seq == self.log_count - 1
            self.log_live[self.log[seq].channel] -= 1
            del self.log[seq]
            self.log_count -= 1

    def create_transfer_one(
        self,
        batch: bytes | memoryview,
        index: int,
        timestamp: int,
        day: int,
        results: bytearray,
        timestamps: array[int],
        balances: array[int],
        chain: tuple[list[_Undo], list[tuple[int, int]]] | None,
    ) -> int:
        t = Transfer.unpack(batch, index * TRANSFER_SIZE)
        result = self.validate(t)
        if result != R.OK:
            results[index] = result
            return result
        debit_slot = credit_slot = SLOT_NONE
        resolving = bool(t.flags & (F.POST_PENDING | F.VOID_PENDING))
        if not resolving:
            debit_slot = self.account_index.get(t.debit_account_id, SLOT_NONE)
            if debit_slot == SLOT_NONE:
                results[index] = R.DEBIT_ACCOUNT_NOT_FOUND
                return R.DEBIT_ACCOUNT_NOT_FOUND
            credit_slot = self.account_index.get(t.credit_account_id, SLOT_NONE)
            if credit_slot == SLOT_NONE:
                results[index] = R.CREDIT_ACCOUNT_NOT_FOUND
                return R.CREDIT_ACCOUNT_NOT_FOUND
            if self.accounts[debit_slot].ledger != self.accounts[credit_slot].ledger:
                results[index] = R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
                return R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
            if t.ledger != self.accounts[debit_slot].ledger:
                results[index] = R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
                return R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        seq_existing = self.transfer_index.get(t.id)
        if seq_existing is not None:
            result = self.exists(t, self.record_of(seq_existing))
            results[index] = result
            if result == R.EXISTS:
                timestamps[index] = self.record_of(seq_existing).timestamp
            return result
        result = self.apply(t, timestamp, day, debit_slot, credit_slot, chain)
        if result != R.OK:
            if chain is None and result != R.CHANNEL_LOG_QUOTA_EXCEEDED:
                if self.failed_quota_exceeded(t.channel):
                    result = R.CHANNEL_LOG_QUOTA_EXCEEDED
                else:
                    self.failed_record(t, result, timestamp, day)
            results[index] = result
            return result
        record = self.log[self.log_count - 1]
        debit = self.accounts[record.debit_slot]
        credit = self.accounts[record.credit_slot]
        results[index] = R.OK
        timestamps[index] = timestamp
        balances[2 * index] = debit.credits_posted - debit.debits_posted
        balances[2 * index + 1] = credit.credits_posted - credit.debits_posted
        return R.OK

    def validate(self, t: Transfer) -> int:
        """Checks on the transfer alone; a failure here does not consume the id."""
        if t.timestamp != 0:
            return R.TIMESTAMP_MUST_BE_ZERO
        if (
            t.result
            or t.debit_slot
            or t.credit_slot
            or t.business_day
            or t.counted
            or t.state
            or t.amount_posted
            or t.amount_reversed
        ):
            return R.RESERVED_FIELD
        if t.flags & ~TRANSFER_FLAGS_KNOWN:
            return R.RESERVED_FLAG
        if t.id == 0:
            return R.ID_MUST_NOT_BE_ZERO
        if t.id == ID_MAX:
            return R.ID_MUST_NOT_BE_INT_MAX
        family = t.flags & FLAGS_PENDING_FAMILY
        if family & (family - 1):
            return R.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if t.code == TransferCode.REVERSAL and family:
            return R.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        resolving = bool(t.flags & (F.POST_PENDING | F.VOID_PENDING))
        if not resolving and t.debit_account_id == 0:
            return R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if t.debit_account_id == ID_MAX:
            return R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if not resolving and t.credit_account_id == 0:
            return R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if t.credit_account_id == ID_MAX:
            return R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if t.debit_account_id != 0 and t.debit_account_id == t.credit_account_id:
            return R.ACCOUNTS_MUST_BE_DIFFERENT
        if resolving or t.code == TransferCode.REVERSAL:
            if t.pending_id == 0:
                return R.PENDING_ID_MUST_NOT_BE_ZERO
            if t.pending_id == ID_MAX:
                return R.PENDING_ID_MUST_NOT_BE_INT_MAX
            if t.pending_id == t.id:
                return R.PENDING_ID_MUST_BE_DIFFERENT
        elif t.pending_id != 0:
            return R.PENDING_ID_MUST_BE_ZERO
        if not (t.flags & F.PENDING) and t.timeout_s != 0:
            return R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if not resolving:
            if t.ledger == 0:
                return R.LEDGER_MUST_NOT_BE_ZERO
            if t.code == 0:
                return R.CODE_MUST_NOT_BE_ZERO
        if t.code > TRANSFER_CODE_MAX:
            return R.CODE_UNKNOWN
        if t.amount < 0 or (t.amount == 0 and not resolving):
            return R.AMOUNT_MUST_BE_POSITIVE
        return R.OK

    def exists(self, t: Transfer, e: Transfer) -> int:
        """Idempotency: compare a retry with the first attempt, field by field."""
        if e.result != R.OK:
            return R.ID_ALREADY_FAILED
        if t.flags != e.flags:
            return R.EXISTS_WITH_DIFFERENT_FLAGS
        if t.debit_account_id != e.debit_account_id:
            return R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id != e.credit_account_id:
            return R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.amount != e.amount:
            return R.EXISTS_WITH_DIFFERENT_AMOUNT
        if t.pending_id != e.pending_id:
            return R.EXISTS_WITH_DIFFERENT_PENDING_ID
        if t.timeout_s != e.timeout_s:
            return R.EXISTS_WITH_DIFFERENT_TIMEOUT
        if t.ledger != e.ledger:
            return R.EXISTS_WITH_DIFFERENT_LEDGER
        if t.code != e.code:
            return R.EXISTS_WITH_DIFFERENT_CODE
        if t.channel != e.channel:
            return R.EXISTS_WITH_DIFFERENT_CHANNEL
        if t.user_data != e.user_data:
            return R.EXISTS_WITH_DIFFERENT_USER_DATA
        return R.EXISTS

    def apply(
        self,
        t: Transfer,
        timestamp: int,
        day: int,
        debit_slot: int,
        credit_slot: int,
        chain: tuple[list[_Undo], list[tuple[int, int]]] | None,
    ) -> int:
        """State-dependent checks, then the posting. From here a failure consumes the id."""
        target_seq = -1
        target: Transfer | None = None
        amount = t.amount
        code = t.code
        if t.flags & (F.POST_PENDING | F.VOID_PENDING):
            target_seq = self.transfer_index.get(t.pending_id, -1)
            if target_seq < 0:
                return R.PENDING_TRANSFER_NOT_FOUND
            target = self.record_of(target_seq)
            if target.result != R.OK or not (target.flags & F.PENDING):
                return R.PENDING_TRANSFER_NOT_PENDING
            if t.debit_account_id != 0 and t.debit_account_id != target.debit_account_id:
                return R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
            if t.credit_account_id != 0 and t.credit_account_id != target.credit_account_id:
                return R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
            if t.ledger != 0 and t.ledger != target.ledger:
                return R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
            if t.flags & F.VOID_PENDING:
                if amount != 0 and amount != target.amount:
                    return R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
                amount = target.amount
            else:
                if amount > target.amount:
                    return R.EXCEEDS_PENDING_TRANSFER_AMOUNT
                if amount == 0:
                    amount = target.amount
            if target.state == PendingState.POSTED:
                return R.PENDING_TRANSFER_ALREADY_POSTED
            if target.state == PendingState.VOIDED:
                return R.PENDING_TRANSFER_ALREADY_VOIDED
            if target.state == PendingState.EXPIRED:
                return R.PENDING_TRANSFER_EXPIRED
            if target.timeout_s != 0 and timestamp >= transfer_expires_at(target):
                return R.PENDING_TRANSFER_EXPIRED
            debit_slot = target.debit_slot
            credit_slot = target.credit_slot
            code = target.code
        elif t.code == TransferCode.REVERSAL:
            target_seq = self.transfer_index.get(t.pending_id, -1)
            if target_seq < 0:
                return R.REVERSAL_TARGET_NOT_FOUND
            target = self.record_of(target_seq)
            if (
                target.result != R.OK
                or target.code == TransferCode.REVERSAL
                or target.flags & (F.PENDING | F.VOID_PENDING)
            ):
                return R.REVERSAL_TARGET_NOT_POSTED
            if debit_slot != target.credit_slot or credit_slot != target.debit_slot:
                return R.REVERSAL_ACCOUNTS_MISMATCH
            if amount > target.amount_posted - target.amount_reversed:
                return R.EXCEEDS_REVERSIBLE_AMOUNT
        debit = self.accounts[debit_slot]
        credit = self.accounts[credit_slot]
        if not (t.flags & (F.POST_PENDING | F.VOID_PENDING)):
            # Authorization: who may post this code, on which kinds of account.
            if not code_in(self.channels[t.channel].codes, code):
                return R.CHANNEL_CODE_NOT_ALLOWED
            if not code_in(self.kinds[debit.kind].debit_codes, code):
                return R.DEBIT_ACCOUNT_CODE_NOT_ALLOWED
            if not code_in(self.kinds[credit.kind].credit_codes, code):
                return R.CREDIT_ACCOUNT_CODE_NOT_ALLOWED
            if code_in(self.bank.anchored_codes, code) and not (
                (self.kinds[debit.kind].options | self.kinds[credit.kind].options)
                & KindOption.BANK_SIDE
            ):
                return R.CODE_NEEDS_BANK_ACCOUNT
        if not (t.flags & F.VOID_PENDING):
            if debit.status == AccountStatus.FROZEN:
                return R.DEBIT_ACCOUNT_FROZEN
            if credit.status == AccountStatus.FROZEN:
                return R.CREDIT_ACCOUNT_FROZEN
            if debit.status == AccountStatus.CLOSED:
                return R.DEBIT_ACCOUNT_CLOSED
            if credit.status == AccountStatus.CLOSED:
                return R.CREDIT_ACCOUNT_CLOSED
        fresh = not (t.flags & (F.POST_PENDING | F.VOID_PENDING)) and code != TransferCode.REVERSAL
        counted = 0
        if fresh:
            if code == TransferCode.TOPUP_BOUND and not (
                credit.flags & AccountFlags.BOUND_EXTERNAL or credit.bound_slot == debit_slot
            ):
                return R.NO_BOUND_ACCOUNT
            if code == TransferCode.WITHDRAW_BOUND and not (
                debit.flags & AccountFlags.BOUND_EXTERNAL or debit.bound_slot == credit_slot
            ):
                return R.NO_BOUND_ACCOUNT
            if code == TransferCode.CASH_DEPOSIT and not cash_allowed(credit):
                return R.CASH_NOT_ALLOWED
            if code == TransferCode.CASH_WITHDRAWAL and not cash_allowed(debit):
                return R.CASH_NOT_ALLOWED
            counted = transfer_counted(
                self.bank.counted_codes, code, debit, credit, debit_slot, credit_slot
            )
            if (
                counted & COUNTED_CREDIT_INFLOW
                and code != TransferCode.CASH_DEPOSIT
                and not credit.flags & AccountFlags.NON_BOUND_INFLOW_ENABLED
            ):
                return R.NON_BOUND_INFLOW_DISABLED
        elif target is not None and t.flags & F.POST_PENDING:
            counted = target.counted
        if t.flags & F.PENDING:
            if amount > INT64_MAX - debit.debits_pending:
                return R.OVERFLOWS_DEBITS_PENDING
            if amount > INT64_MAX - credit.credits_pending:
                return R.OVERFLOWS_CREDITS_PENDING
        if not (t.flags & (F.PENDING | F.VOID_PENDING)):
            if amount > INT64_MAX - debit.debits_posted:
                return R.OVERFLOWS_DEBITS_POSTED
            if amount > INT64_MAX - credit.credits_posted:
                return R.OVERFLOWS_CREDITS_POSTED
        if fresh or code == TransferCode.REVERSAL:
            if amount > INT64_MAX - debit.debits_pending - debit.debits_posted:
                return R.OVERFLOWS_DEBITS
            if amount > INT64_MAX - credit.credits_pending - credit.credits_posted:
                return R.OVERFLOWS_CREDITS
        if t.flags & F.PENDING and timestamp + t.timeout_s * NS_PER_S > UINT64_MAX:
            return R.OVERFLOWS_TIMEOUT
        if fresh or code == TransferCode.REVERSAL:
            if debit.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS:
                floor = self.products[debit.product][PRODUCT_BALANCE_FLOOR]
                debits_total = debit.debits_pending + debit.debits_posted + amount
                if debits_total - debit.credits_posted > -floor:
                    return R.EXCEEDS_CREDITS
            if credit.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS:
                floor = self.products[credit.product][PRODUCT_BALANCE_FLOOR]
                credits_total = credit.credits_pending + credit.credits_posted + amount
                if credits_total - credit.debits_posted > -floor:
                    return R.EXCEEDS_DEBITS
            kind_rule = self.kinds[debit.kind]
            if kind_rule.options & KindOption.FLOOR_ENFORCED:
                debits_total = debit.debits_pending + debit.debits_posted + amount
                if debits_total - debit.credits_posted > -kind_rule.balance_floor_minor:
                    return R.EXCEEDS_INTERNAL_FLOOR
        debit_effective = limits_reference.counters_effective(
            debit.counters, debit.counters_day, day
        )
        credit_effective = limits_reference.counters_effective(
            credit.counters, credit.counters_day, day
        )
        tallies = Tallies()
        if fresh:
            debit_product = self.products[debit.product]
            credit_product = self.products[credit.product]
            if limits_reference.exceeds_cap(0, debit_product[PRODUCT_TRANSFER_CAP], amount):
                return R.EXCEEDS_TRANSFER_CAP
            if limits_reference.exceeds_cap(0, self.channels[t.channel].transfer_cap_minor, amount):
                return R.EXCEEDS_CHANNEL_TRANSFER_CAP
            tallies = self.tallies_of(t.channel, code, debit_slot, credit_slot)
            for index, key in enumerate(tallies.keys):
                tallies.used[index] = self.counter_today(key, day)
                if tallies.results[index] == R.STRONG_AUTH_REQUIRED:
                    continue  # checked below, after the hard caps
                if limits_reference.exceeds_cap(tallies.used[index], tallies.caps[index], amount):
                    return tallies.results[index]
            if counted & COUNTED_DEBIT_OUTFLOW:
                if limits_reference.exceeds_cap(
                    debit_effective[OUTFLOW_DAILY], debit_product[PRODUCT_OUTFLOW_DAILY], amount
                ):
                    return R.EXCEEDS_DAILY_OUTFLOW
                if limits_reference.exceeds_cap(
                    debit_effective[OUTFLOW_YEARLY], debit_product[PRODUCT_OUTFLOW_YEARLY], amount
                ):
                    return R.EXCEEDS_YEARLY_OUTFLOW
            if counted & COUNTED_CREDIT_INFLOW:
                if limits_reference.exceeds_cap(
                    credit_effective[INFLOW_DAILY], credit_product[PRODUCT_INFLOW_DAILY], amount
                ):
                    return R.EXCEEDS_DAILY_INFLOW
                if limits_reference.exceeds_cap(
                    credit_effective[INFLOW_YEARLY], credit_product[PRODUCT_INFLOW_YEARLY], amount
                ):
                    return R.EXCEEDS_YEARLY_INFLOW
            if (
                tallies.results
                and tallies.results[-1] == R.STRONG_AUTH_REQUIRED
                and not t.flags & F.STRONG_AUTH
                and limits_reference.exceeds_cap(tallies.used[-1], tallies.caps[-1], amount)
            ):
                return R.STRONG_AUTH_REQUIRED
        if fresh or code == TransferCode.REVERSAL:
            balance_cap = self.products[credit.product][PRODUCT_BALANCE_CAP]
            balance_projected = (
                credit.credits_posted + credit.credits_pending - credit.debits_posted
            )
            if limits_reference.exceeds_cap(balance_projected, balance_cap, amount):
                return R.EXCEEDS_BALANCE_CAP
        if self.log_quota_exceeded(t.channel):
            return R.CHANNEL_LOG_QUOTA_EXCEEDED

        # --- all checks passed: post ------------------------------------------
        undo: _Undo | None = None
        if chain is not None:
            saved = [(debit_slot, debit.copy()), (credit_slot, credit.copy())]
            target_saved = (target_seq, target.copy()) if target is not None else None
            undo = _Undo(saved, target_saved, [], t.id)
            chain[0].append(undo)

        record = t.copy()
        record.result = R.OK
        record.timestamp = timestamp
        record.debit_slot = debit_slot
        record.credit_slot = credit_slot
        record.business_day = day
        if t.flags & F.POST_PENDING:
            assert target is not None
            record.business_day = target.business_day  # the quota was consumed by the hold
        record.counted = counted
        record.amount_posted = amount
        if t.flags & F.PENDING:
            debit.debits_pending += amount
            credit.credits_pending += amount
            record.state = PendingState.PENDING
        elif t.flags & F.POST_PENDING:
            assert target is not None
            debit.debits_pending -= target.amount
            credit.credits_pending -= target.amount
            debit.debits_posted += amount
            credit.credits_posted += amount
            target.state = PendingState.POSTED
            self.release_quota(target, target.amount - amount, day, undo)
        elif t.flags & F.VOID_PENDING:
            assert target is not None
            debit.debits_pending -= target.amount
            credit.credits_pending -= target.amount
            target.state = PendingState.VOIDED
            self.release_quota(target, target.amount, day, undo)
        else:
            debit.debits_posted += amount
            credit.credits_posted += amount
            if target is not None:  # reversal
                target.amount_reversed += amount
                self.release_quota(target, amount, day, undo)
        if fresh:
            if counted & COUNTED_DEBIT_OUTFLOW:
                debit_effective[OUTFLOW_DAILY] += amount
                debit_effective[OUTFLOW_YEARLY] += amount
                debit.counters = debit_effective
                debit.counters_day = day
            if counted & COUNTED_CREDIT_INFLOW:
                credit_effective[INFLOW_DAILY] += amount
                credit_effective[INFLOW_YEARLY] += amount
                credit.counters = credit_effective
                credit.counters_day = day
            for index, key in enumerate(tallies.keys):
                self.tally_change(key, day, tallies.used[index] + amount, undo)
        seq = self.log_append(record)
        if t.flags & F.PENDING and t.timeout_s != 0:
            entry_heap = (transfer_expires_at(record), seq)
            if chain is not None:
                chain[1].append(entry_heap)
            else:
                heapq.heappush(self.expiry_heap, entry_heap)
        return R.OK

    def tallies_of(self, channel: int, code: int, debit_slot: int, credit_slot: int) -> Tallies:
        """The day counters a fresh transfer on these accounts consumes under the rules."""
        rule = self.channels[channel]
        debit = self.accounts[debit_slot]
        tallies = Tallies()
        if rule.daily_cap_minor != 0 and debit.kind <= KIND_CUSTOMER_MAX:
            tallies.add(
                account_counter_key(CounterSpace.CHANNEL_DEBIT, debit_slot, channel),
                rule.daily_cap_minor,
                R.EXCEEDS_CHANNEL_DAILY_CAP,
            )
        if (
            rule.inflow_daily_cap_minor != 0
            and self.accounts[credit_slot].kind <= KIND_CUSTOMER_MAX
            and code_in(self.bank.inflow_codes, code)
        ):
            tallies.add(
                account_counter_key(CounterSpace.CHANNEL_CREDIT, credit_slot, channel),
                rule.inflow_daily_cap_minor,
                R.EXCEEDS_CHANNEL_DAILY_INFLOW_CAP,
            )
        if debit.kind > KIND_CUSTOMER_MAX:
            return tallies
        customer = debit.customer
        if (
            self.bank.customer_daily_cap_minor != 0
            and customer != 0
            and not rule.options & ChannelOption.CUSTOMER_CAP_EXEMPT
        ):
            tallies.add(
                customer_counter_key(CounterSpace.CUSTOMER_DEBIT, customer),
                self.bank.customer_daily_cap_minor,
                R.EXCEEDS_CUSTOMER_DAILY_CAP,
            )
        if self.bank.strong_auth_daily_minor != 0 and not (
            rule.options & ChannelOption.STRONG_AUTH_EXEMPT
        ):
            if customer != 0:
                key = customer_counter_key(CounterSpace.STRONG_CUSTOMER, customer)
            else:
                key = account_counter_key(CounterSpace.STRONG_ACCOUNT, debit_slot, 0)
            tallies.add(key, self.bank.strong_auth_daily_minor, R.STRONG_AUTH_REQUIRED)
        return tallies

    def counter_today(self, key: int, day: int) -> int:
        entry = self.channel_counters.get(key)
        return entry[1] if entry is not None and entry[0] == day else 0

    def tally_change(self, key: int, day: int, used: int, undo: _Undo | None) -> None:
        """Set today's counter `key` to `used`, saving the entry for a rollback."""
        if undo is not None:
            undo.channel_entries.append((key, self.channel_counters.get(key)))
        self.channel_counters[key] = (day, used)

    def channel_restorable(self, target: Transfer, day: int) -> bool:
        """A hold released on the day it was taken gives its day counters back."""
        return target.flags & F.PENDING != 0 and target.business_day == day

    def release_quota(
        self, target: Transfer, amount: int, day: int, undo: _Undo | None = None
    ) -> None:
        """Give back the quota `target` consumed, for `amount` of it, seen on `day`."""
        if amount == 0:
            return
        if target.counted & COUNTED_DEBIT_OUTFLOW:
            debit = self.accounts[target.debit_slot]
            effective = limits_reference.counters_effective(debit.counters, debit.counters_day, day)
            limits_reference.quota_restore(
                effective, OUTFLOW_DAILY, amount, target.business_day, day
            )
            debit.counters = effective
            debit.counters_day = day
        if target.counted & COUNTED_CREDIT_INFLOW:
            credit = self.accounts[target.credit_slot]
            effective = limits_reference.counters_effective(
                credit.counters, credit.counters_day, day
            )
            limits_reference.quota_restore(
                effective, INFLOW_DAILY, amount, target.business_day, day
            )
            credit.counters = effective
            credit.counters_day = day
        if self.channel_restorable(target, day):
            tallies = self.tallies_of(
                target.channel, target.code, target.debit_slot, target.credit_slot
            )
            for key in tallies.keys:
                used = self.counter_today(key, day)
                if used != 0:
                    self.tally_change(key, day, used - min(amount, used), undo)

    def log_append(self, record: Transfer) -> int:
        seq = self.log_count
        self.log[seq] = record
        self.transfer_index[record.id] = seq
        self.log_count += 1
        self.log_live[record.channel] += 1
        return seq

    # --- the failure ring and the log quotas (the kernel's section of that name) ------

    def record_of(self, seq: int) -> Transfer:
        """The record an index entry names: a log seq, or a failure ring seq | FAILED_BIT."""
        if seq & FAILED_BIT:
            return self.failed[seq & ~FAILED_BIT]
        return self.log[seq]

    def log_quota_exceeded(self, channel: int) -> bool:
        """The channel holds its share of the log window: a posting of it would pass it."""
        permille = self.log_quotas[channel]
        return permille != 0 and self.log_live[channel] * 1000 >= permille * self.log_size

    def failed_quota_exceeded(self, channel: int) -> bool:
        """The channel holds its share of the failure ring: a failure of it would pass it."""
        permille = self.log_quotas[channel]
        return permille != 0 and self.failed_live[channel] * 1000 >= permille * self.failed_size

    def failed_evict_oldest(self) -> None:
        record = self.failed.pop(self.failed_tail)
        seq = self.transfer_index.pop(record.id)
        assert seq == self.failed_tail | FAILED_BIT
        self.failed_live[record.channel] -= 1
        self.failed_tail += 1

    def failed_record(self, t: Transfer, result: int, timestamp: int, day: int) -> None:
        """Remember a failure that consumed its id; a full ring forgets its oldest first."""
        if self.failed_count - self.failed_tail == self.failed_size:
            self.failed_evict_oldest()
        t.result = result
        t.timestamp = timestamp
        t.debit_slot = SLOT_NONE
        t.credit_slot = SLOT_NONE
        t.business_day = day
        self.failed[self.failed_count] = t
        self.transfer_index[t.id] = self.failed_count | FAILED_BIT
        self.failed_count += 1
        self.failed_live[t.channel] += 1

    def evict_failed(self, before_ns: int, count_max: int) -> int:
        """Forget the oldest failures older than `before_ns` (the failure retention)."""
        evicted = 0
        while (
            evicted < count_max
            and self.failed_tail < self.failed_count
            and self.failed[self.failed_tail].timestamp < before_ns
        ):
            self.failed_evict_oldest()
            evicted += 1
        return evicted

    def failed_timestamp_oldest(self) -> int:
        """The oldest remembered failure's timestamp (0 when the failure ring is empty)."""
        if self.failed_tail == self.failed_count:
            return 0
        return self.failed[self.failed_tail].timestamp

    def channel_records(self, channel: int) -> tuple[int, int]:
        """(records in the log window, records in the failure ring) of `channel`."""
        return self.log_live[channel], self.failed_live[channel]

    def expire_pending(self, now_ns: int, business_day: int) -> int:
        """Release every pending transfer whose timeout has passed at `now_ns`."""
        assert business_day >= self.last_day
        self.last_day = business_day
        expired = 0
        while self.expiry_heap and self.expiry_heap[0][0] <= now_ns:
            _, seq = heapq.heappop(self.expiry_heap)
            target = self.log.get(seq)
            if target is None or target.state != PendingState.PENDING:
                continue
            debit = self.accounts[target.debit_slot]
            credit = self.accounts[target.credit_slot]
            debit.debits_pending -= target.amount
            credit.credits_pending -= target.amount
            target.state = PendingState.EXPIRED
            self.release_quota(target, target.amount, business_day)
            expired += 1
        return expired

    def evict(self, before_ns: int, count_max: int) -> int:
        """Forget the oldest transfers older than `before_ns` (retention window).

        Stops at the first transfer that is still pending: its id must stay
        resolvable until it is posted, voided or expired.
        """
        evicted = 0
        while evicted < count_max and self.log_tail < self.log_count:
            record = self.log[self.log_tail]
            if record.timestamp >= before_ns or record.state == PendingState.PENDING:
                break
            del self.transfer_index[record.id]
            del self.log[self.log_tail]
            self.log_live[record.channel] -= 1
            self.log_tail += 1
            evicted += 1
        return evicted

    # --- deposits (kernel: cext/deposits.pyx) --------------------------------------

    def accrue_interest(self, day: int, rates: bytes | bytearray | memoryview) -> int:
        """One day's accrual (see ledger.protocol.Ledger.accrue_interest)."""
        check_rates(rates)
        if day <= self.accrued_day or day > 0xFFFF:
            raise ValueError(f"accrual day {day} is not after the last one, {self.accrued_day}")
        table = [RATE_ROW.unpack_from(rates, offset) for offset in range(0, len(rates), 16)]
        accrued = 0
        for account in self.accounts:
            if account.kind not in DEMAND_KINDS or account.product >= len(table):
                continue
            rate, weight = table[account.product]
            balance = account.credits_posted - account.debits_posted
            if rate == 0 or weight == 0 or balance <= 0:
                continue
            row = demand_row_view(account.deposit)
            account.deposit = pack_demand_row(
                row.accrued_units + balance * rate * weight,
                row.period_settled,
                row.interest_paid_total,
            )
            accrued += 1
        self.accrued_day = day
        return accrued

    def settlement_batch(
        self, period: int, start_slot: int, count_max: int
    ) -> tuple[bytes, bytes, int]:
        """The next settlement transfers of `period` (ledger.protocol.Ledger)."""
        check_settlement_args(period, start_slot, count_max)
        transfers: list[bytes] = []
        slots: list[int] = []
        slot = start_slot
        while slot < len(self.accounts):
            parts = self.settlement_parts(slot, period)
            if len(transfers) + len(parts) > count_max:
                break
            transfers.extend(parts)
            slots.extend([slot] * len(parts))
            slot += 1
        return b"".join(transfers), array("I", slots).tobytes(), slot

    def settlement_parts(self, slot: int, period: int) -> list[bytes]:
        """The settlement transfers of one account for `period` (none, one or two)."""
        account = self.accounts[slot]
        if account.kind not in DEMAND_KINDS or account.status == AccountStatus.CLOSED:
            return []
        row = demand_row_view(account.deposit)
        amount = fen_of_units(row.accrued_units)
        if row.period_settled >= period or amount <= 0 or amount > INT64_MAX:
            return []
        parts = [(0, account.id, amount)]
        cap = self.products[account.product][PRODUCT_BALANCE_CAP]
        bound_id = 0
        if account.flags & AccountFlags.BOUND_EXTERNAL:
            bound_id = CLEARING_ID
        elif account.bound_slot != SLOT_NONE:
            bound_id = self.accounts[account.bound_slot].id
        if cap > 0 and bound_id:
            balance = account.credits_posted + account.credits_pending - account.debits_posted
            room = max(0, cap - balance)
            if amount > room:
                parts = [(0, account.id, room), (1, bound_id, amount - room)]
        return [
            pack_transfer(
                id=interest_transfer_id(account.id, period, part),
                debit_account_id=INTEREST_EXPENSE_ID,
                credit_account_id=credit_id,
                amount=part_amount,
                code=TransferCode.INTEREST,
                ledger=account.ledger,
                channel=BANK_CHANNEL,
                user_data=period,
            )
            for part, credit_id, part_amount in parts
            if part_amount > 0
        ]

    def settle_interest(
        self,
        period: int,
        transfers: bytes | bytearray | memoryview,
        slots: bytes | bytearray | memoryview,
        timestamp_first: int,
        business_day: int,
    ) -> tuple[bytearray, array[int], array[int]]:
        """Post settlement transfers and settle their slots (ledger.protocol.Ledger)."""
        count = len(transfers) // TRANSFER_SIZE
        slot_list = array("I", bytes(slots))
        check_settle_args(period, transfers, slot_list, len(self.accounts))
        outcome = self.create_transfers(bytes(transfers), timestamp_first, business_day)
        results = outcome[0]
        groups: dict[int, list[tuple[bool, int]]] = {}
        for index in range(count):
            slot = slot_list[index]
            view = transfer_view(transfers, index * TRANSFER_SIZE)
            account_id = self.accounts[slot].id
            own = view.id in (
                interest_transfer_id(account_id, period, 0),
                interest_transfer_id(account_id, period, 1),
            )
            groups.setdefault(slot, []).append((own and results[index] == R.OK, view.amount))
        for slot, group in groups.items():
            account = self.accounts[slot]
            if account.kind not in DEMAND_KINDS:
                continue
            row = demand_row_view(account.deposit)
            paid = sum(amount for ok, amount in group if ok)
            if row.period_settled >= period or not any(ok for ok, _ in group):
                continue
            units = 0 if all(ok for ok, _ in group) else row.accrued_units - paid * UNITS_PER_FEN
            account.deposit = pack_demand_row(units, period, row.interest_paid_total + paid)
        return outcome

    def post_with_rows(
        self,
        transfers: bytes | bytearray | memoryview,
        rows: bytes | bytearray | memoryview,
        timestamp_first: int,
        business_day: int,
    ) -> tuple[bytearray, array[int], array[int]]:
        """Post transfers, then write the rows whose transfer is OK (ledger.protocol.Ledger).
        No transfers (a collection chunk that took nothing): no kernel call, only rows."""
        assert len(rows) % DEPOSIT_WRITE_SIZE == 0, len(rows)
        outcome: tuple[bytearray, array[int], array[int]] = (bytearray(), array("Q"), array("q"))
        if len(transfers):
            outcome = self.create_transfers(bytes(transfers), timestamp_first, business_day)
        results = outcome[0]
        for offset in range(0, len(rows), DEPOSIT_WRITE_SIZE):
            write = deposit_write_view(rows, offset)
            if write.transfer_index != DEPOSIT_WRITE_ALWAYS and (
                write.transfer_index >= len(results) or results[write.transfer_index] != R.OK
            ):
                continue
            slot = self.account_index.get(write.account_id, SLOT_NONE)
            if slot != SLOT_NONE:
                self.accounts[slot].deposit = bytes(write.row)
        return outcome

    def loan_collection_batch(
        self, day: int, terms: bytes | bytearray | memoryview, start: int, count_max: int
    ) -> tuple[bytes, bytes, array[int], int, int]:
        """The day-end collection of `day` from terms entry `start` (ledger.protocol.Ledger;
        the kernel `cext.loans.collect`), a pure read: one loan at a time through
        `ledger.loan_book.collect_one`, in the kernel's check order."""
        entry_count = check_collection_args(day, terms, start, count_max)
        transfers: list[bytes] = []
        writes: list[bytes] = []
        parts: array[int] = array("q")
        taken_by_slot: dict[int, int] = {}  # the kernel's slot hash
        skipped = 0
        index = start
        while index < entry_count:
            if len(writes) == count_max:
                break
            entry = loan_terms_view(terms, index * LOAN_TERMS.size)
            if not terms_valid(entry):
                raise terms_error(index)
            if index > start:
                previous = loan_terms_view(terms, (index - 1) * LOAN_TERMS.size)
                if (previous.slot, previous.segment) >= (entry.slot, entry.segment):
                    raise terms_error(index)
            index += 1
            if entry.slot >= len(self.accounts):
                skipped += 1
                continue
            loan = self.accounts[entry.slot]
            if loan.id & UINT64_MAX != entry.loan_id_lo or loan.kind != AccountKind.LOAN:
                skipped += 1
                continue
            row = loan_row_view(loan.deposit)
            if row.segment != entry.segment:
                continue
            available = self._loan_available(entry.repayment_slot)
            if available > 0:
                available = max(0, available - taken_by_slot.get(entry.repayment_slot, 0))
            new_row, taken, (principal, interest, penalty) = collect_one(day, entry, row, available)
            if new_row is None:
                continue
            transfer_index: int | None = None
            if taken > 0:
                taken_by_slot[entry.repayment_slot] = (
                    taken_by_slot.get(entry.repayment_slot, 0) + taken
                )
                transfer_index = len(transfers)
                transfers.append(
                    collection_transfer(
                        loan.id, self.accounts[entry.repayment_slot].id, LOAN_FUNDING_ID, day,
                        taken, ledger=loan.ledger, channel=BANK_CHANNEL,
                    )
                )  # fmt: skip
            writes.append(row_write(loan.id, new_row, transfer_index))
            parts.extend(
                (-1 if transfer_index is None else transfer_index, principal, interest, penalty)
            )
        return b"".join(transfers), b"".join(writes), parts, index, skipped

    def _loan_available(self, slot: int) -> int:
        """What a repayment account can pay (cext/loans.pyx `account_available`)."""
        if slot >= len(self.accounts):
            return 0
        account = self.accounts[slot]
        if account.status != AccountStatus.ACTIVE:
            return 0
        return max(0, account.credits_posted - account.debits_posted - account.debits_pending)

    def deposit_row(self, account_id: int) -> bytes | None:
        slot = self.account_index.get(account_id, SLOT_NONE)
        return None if slot == SLOT_NONE else self.accounts[slot].deposit

    def deposit_row_at(self, slot: int) -> bytes:
        return self.accounts[slot].deposit

    def due_fixed_deposits(self, day: int) -> array[int]:
        """Slots of open fixed deposits maturing on or before `day`, in slot order."""
        due: array[int] = array("I")
        for slot, account in enumerate(self.accounts):
            if account.kind != AccountKind.FIXED_DEPOSIT:
                continue
            row = fixed_row_view(account.deposit)
            open_row = row.flags & FdFlags.OPEN and not row.flags & FdFlags.CLOSED
            if open_row and row.maturity_day <= day:
                due.append(slot)
        return due

    def purge_counters(self, day: int) -> int:
        """Drop the day counters of days before `day`; the number dropped (the kernel's
        count is of its hash table's entries, which may differ)."""
        if not 0 <= day <= 0xFFFF:
            raise ValueError("day out of range")
        stale = [key for key, (entry_day, _) in self.channel_counters.items() if entry_day < day]
        for key in stale:
            del self.channel_counters[key]
        return len(stale)

    # --- reads ----------------------------------------------------------------

    def account_slot(self, account_id: int) -> int:
        slot = self.account_index.get(account_id, SLOT_NONE)
        return -1 if slot == SLOT_NONE else slot

    def account_id_at(self, slot: int) -> int:
        return self.accounts[slot].id

    def lookup_account(self, account_id: int) -> bytes | None:
        """The account's 64-byte record, or None."""
        slot = self.account_index.get(account_id, SLOT_NONE)
        return None if slot == SLOT_NONE else self.accounts[slot].pack()

    def account_pending(self, account_id: int) -> tuple[int, int] | None:
        """(debits_pending, credits_pending) of an account, or None."""
        slot = self.account_index.get(account_id, SLOT_NONE)
        if slot == SLOT_NONE:
            return None
        account = self.accounts[slot]
        return account.debits_pending, account.credits_pending

    def account_counters(self, account_id: int) -> tuple[int, int, int, int] | None:
        slot = self.account_index.get(account_id, SLOT_NONE)
        if slot == SLOT_NONE:
            return None
        counters = self.accounts[slot].counters
        return (counters[0], counters[1], counters[2], counters[3])

    def lookup_transfer(self, transfer_id: int) -> bytes | None:
        """The transfer's 128-byte log record, or None."""
        seq = self.transfer_index.get(transfer_id)
        return None if seq is None else self.record_of(seq).pack()

    def account_history(
        self, account_id: int, before_seq: int = -1, limit: int = 50
    ) -> list[tuple[int, bytes]]:
        """(seq, 128-byte record) of the account's transfers, newest first, older than
        `before_seq` (the cursor: pass the last seq of the previous page)."""
        slot = self.account_index.get(account_id, SLOT_NONE)
        if slot == SLOT_NONE:
            return []
        seq = (
            self.log_count - 1 if before_seq < 0 or before_seq > self.log_count else before_seq - 1
        )
        found: list[tuple[int, bytes]] = []
        while seq >= self.log_tail and len(found) < limit:
            record = self.log[seq]
            if record.debit_slot == slot or record.credit_slot == slot:
                found.append((seq, record.pack()))
            seq -= 1
        return found

    def channel_used(self, account_id: int, channel: int, day: int) -> int:
        slot = self.account_index.get(account_id, SLOT_NONE)
        if slot == SLOT_NONE:
            return 0
        return self.counter_today(
            account_counter_key(CounterSpace.CHANNEL_DEBIT, slot, channel), day
        )

    def counter_used(self, key: int, day: int) -> int:
        """Day counter `key` (ledger.types account_counter_key / customer_counter_key)."""
        return self.counter_today(key, day)

    def account_customer(self, account_id: int) -> int | None:
        """The account's customer number (0 = none), or None when there is no account."""
        slot = self.account_index.get(account_id, SLOT_NONE)
        return None if slot == SLOT_NONE else self.accounts[slot].customer

    @property
    def account_count(self) -> int:
        return len(self.accounts)

    @property
    def pending_expiry_count(self) -> int:
        """Holds with a timeout not yet posted, voided or expired (the expiry heap)."""
        return len(self.expiry_heap)

    def log_timestamp_oldest(self) -> int:
        """The oldest transfer's timestamp in the log window (0 when it is empty)."""
        if self.log_count == self.log_tail:
            return 0
        return self.log[self.log_tail].timestamp

    def timestamp_last(self) -> int:
        """The newest transfer's timestamp (0 when the log window is empty)."""
        if self.log_count == self.log_tail:
            return 0
        return self.log[self.log_count - 1].timestamp

    def record_at(self, seq: int) -> bytes:
        """The 128-byte log record of `seq` (which must be in the log window)."""
        return self.log[seq].pack()

    def log_records(self, start: int, stop: int) -> bytes:
        """The log records of seqs start..stop-1."""
        return b"".join(self.log[seq].pack() for seq in range(start, stop))

    def account_rows(self, slots: Iterable[int]) -> list[tuple[int, bytes]]:
        """(slot, `account_row(slot)`) of each slot."""
        return [(slot, self.account_row(slot)) for slot in slots]

    def account_row(self, slot: int) -> bytes:
        """Slot `slot`'s rows of every per-account table, concatenated (ACCOUNT_ROW_SIZE)."""
        account = self.accounts[slot]
        return b"".join(_ROW_PACKERS[table.name](account) for table in PER_ACCOUNT_TABLES)

    def channels_live(self) -> list[tuple[int, int, int]]:
        """(slot, channel, used) of today's non-zero channel counters, sorted."""
        return sorted(
            ((key >> 8) - 1, key & 0xFF, entry[1])
            for key, entry in self.channel_counters.items()
            if entry[0] == self.last_day and entry[1] != 0
        )

    def canonical_chunks(self) -> Iterator[bytes]:
        """The state as bytes, identical for every backend: the digest's input."""
        yield struct.pack("<qqqq", len(self.accounts), self.log_tail, self.log_count, self.last_day)
        for account in self.accounts:
            yield account.pack()
        for account in self.accounts:
            yield account.pack_pending()
        if any(account.customer for account in self.accounts):
            for account in self.accounts:
                yield account.pack_customer()
        for seq in range(self.log_tail, self.log_count):
            yield self.log[seq].pack()
        for slot, channel, used in self.channels_live():
            yield pack_channel_live_digest(slot, channel, used)
        if self.failed_count:  # a state from before the failure ring digests as it did
            yield struct.pack("<qq", self.failed_tail, self.failed_count)
            for seq in range(self.failed_tail, self.failed_count):
                yield self.failed[seq].pack()
        zero = bytes(DEPOSIT_SIZE)
        if self.accrued_day or any(account.deposit != zero for account in self.accounts):
            yield struct.pack("<q", self.accrued_day)  # before deposits: digests as it did
            for account in self.accounts:
                yield account.deposit

    def dump_state(self) -> LedgerState:
        """The state's sections, byte for byte what `KernelLedger.dump_state` gives."""
        sections: dict[str, Sequence[Buffer]] = {
            "meta": [
                pack_meta(
                    len(self.accounts),
                    self.log_tail,
                    self.log_count,
                    self.last_day,
                    0,
                    self.failed_tail,
                    self.failed_count,
                    self.accrued_day,
                )
            ],
            "products": [b"".join(_PRODUCT_ROW.pack(*row) for row in self.products)],
            "channels": [self.rules_table],
            "quotas": [struct.pack(f"<{CHANNEL_COUNT}H", *self.log_quotas)],
        }
        for table in ACCOUNT_TABLES:
            pack = _ROW_PACKERS[table.name]
            sections[table.name] = [b"".join(pack(account) for account in self.accounts)]
        sections["log"] = [self.log_records(self.log_tail, self.log_count)]
        sections["failed"] = [
            b"".join(self.failed[seq].pack() for seq in range(self.failed_tail, self.failed_count))
        ]
        sections["chanlive"] = [pack_channels_live(self.channels_live())]
        sections["digest"] = [bytes.fromhex(self.digest())]
        assert tuple(sections) == SECTION_NAMES
        return LedgerState.of(sections)

    @classmethod
    def load_state(
        cls, state: LedgerState, *, account_capacity: int, transfer_capacity: int
    ) -> ReferenceLedger:
        """A ledger holding `state`, checked against its digest (see KernelLedger.load_state)."""
        ledger = cls(account_capacity=account_capacity, transfer_capacity=transfer_capacity)
        state.check_capacity(account_capacity, transfer_capacity, ledger.failed_size)
        ledger.set_rules(
            state.section("products"), state.section("channels"), state.section("quotas")
        )
        accounts, pending = state.section("accounts"), state.section("pending")
        customers, deposits = state.section("owners"), state.section("deposits")
        for slot in range(state.account_count):
            ledger.account_index[account_view(accounts, slot * ACCOUNT_SIZE).id] = slot
            account = _account_of(accounts, pending, slot)
            (account.customer,) = _CUSTOMER_ROW.unpack_from(customers, slot * _CUSTOMER_ROW.size)
            account.deposit = deposits[slot * DEPOSIT_SIZE : (slot + 1) * DEPOSIT_SIZE]
            ledger.accounts.append(account)
        tail, log = state.log_tail, state.section("log")
        for index in range(state.log_count - tail):
            record = Transfer.unpack(log, index * TRANSFER_SIZE)
            ledger.log[tail + index] = record
            ledger.transfer_index[record.id] = tail + index
            ledger.log_live[record.channel] += 1
            if record.state == PendingState.PENDING and record.timeout_s:
                ledger.expiry_heap.append((transfer_expires_at(record), tail + index))
        heapq.heapify(ledger.expiry_heap)
        ledger.log_tail, ledger.log_count = tail, state.log_count
        failed = state.section("failed")
        for index in range(state.failed_count - state.failed_tail):
            record = Transfer.unpack(failed, index * TRANSFER_SIZE)
            seq = state.failed_tail + index
            ledger.failed[seq] = record
            ledger.transfer_index[record.id] = seq | FAILED_BIT
            ledger.failed_live[record.channel] += 1
        ledger.failed_tail, ledger.failed_count = state.failed_tail, state.failed_count
        ledger.last_day = state.last_day
        ledger.accrued_day = state.accrued_day
        ledger.channel_counters = {
            ((slot + 1) << 8) | channel: (state.last_day, used)
            for slot, channel, used in state.channels_live()
        }
        if ledger.digest() != state.digest:
            raise StateCorrupt(
                f"rebuilt state has digest {ledger.digest()}, the state recorded {state.digest}"
            )
        return ledger

    def digest(self) -> str:
        hasher = hashlib.sha256()
        for chunk in self.canonical_chunks():
            hasher.update(chunk)
        return hasher.hexdigest()


_ROW_PACKERS = {
    "accounts": Account.pack,
    "pending": Account.pack_pending,
    "owners": Account.pack_customer,
    "deposits": Account.pack_deposit,
}
assert set(_ROW_PACKERS) == {table.name for table in ACCOUNT_TABLES}


def _account_of(accounts: bytes, pending: bytes, slot: int) -> Account:
    """The reference account of slot `slot` from the accounts and pending sections."""
    view = account_view(accounts, slot * ACCOUNT_SIZE)
    debits_pending, credits_pending = pending_view(pending, slot * PENDING_SIZE)
    return Account(
        id=view.id,
        ledger=view.ledger,
        kind=view.kind,
        flags=view.flags,
        product=view.product,
        bound_slot=view.bound_slot,
        status=view.status,
        debits_posted=view.debits_posted,
        credits_posted=view.credits_posted,
        debits_pending=debits_pending,
        credits_pending=credits_pending,
        counters_day=view.counters_day,
        counters=list(view.counters),
    )


def product_fits(product_kind: int, kind: int) -> bool:
    """Class II/III need their own kind of product (it carries the PBoC buckets)."""
    if product_kind == 0:
        return kind not in (AccountKind.CLASS_II, AccountKind.CLASS_III)
    if product_kind == PRODUCT_KIND_ANY_INTERNAL:
        return kind >= AccountKind.INTERNAL_CASH
    return product_kind == kind


def cash_allowed(account: Account) -> bool:
    """PBoC: Class III never handles cash; Class II only when verified face to face."""
    if account.kind == AccountKind.CLASS_III:
        return False
    if account.kind == AccountKind.CLASS_II:
        return bool(account.flags & AccountFlags.FACE_TO_FACE_VERIFIED)
    return True


def transfer_counted(
    counted_codes: int,
    code: int,
    debit: Account,
    credit: Account,
    debit_slot: int,
    credit_slot: int,
) -> int:
    """Which PBoC buckets a fresh transfer consumes (COUNTED_* bits)."""
    if not code_in(counted_codes, code):
        return 0
    counted = 0
    if (
        debit.kind in (AccountKind.CLASS_II, AccountKind.CLASS_III)
        and debit.bound_slot != credit_slot
    ):
        counted |= COUNTED_DEBIT_OUTFLOW
    if (
        credit.kind in (AccountKind.CLASS_II, AccountKind.CLASS_III)
        and credit.bound_slot != debit_slot
    ):
        counted |= COUNTED_CREDIT_INFLOW
    return counted
