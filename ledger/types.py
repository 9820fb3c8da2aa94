"""The ledger's vocabulary: record layouts, flags, kinds, codes and result codes.

Everything here is a contract shared by three parties that must agree byte
for byte: the Cython kernels in `cext/`, the plain-Python reference in
`ledger/reference.py`, and the journal that stores batches on disk. The
enums mirror the `cdef enum`s in `cext/ledger_kernel.pxd`; a test checks
that the two agree. Numbers are never renumbered: new values go at the end
of their precedence group's reserved range or at the end of the enum.
"""

from __future__ import annotations

import enum
import struct

INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
ID_MAX = (1 << 128) - 1
SLOT_NONE = 0xFFFFFFFF

ACCOUNT_SIZE = 64
TRANSFER_SIZE = 128
PENDING_SIZE = 16
PRODUCT_SIZE = 64
CHANNEL_SIZE = 32
CHANNEL_COUNT = 256
CHANNEL_LIVE_SIZE = 16  # per channel: int64 log records, int64 failure ring records
KIND_RULE_SIZE = 32
KIND_RULE_COUNT = 32  # rows for AccountKind 0..31
BANK_RULE_SIZE = 32
# The rule table the kernel reads beside the products (the "channel table"): 256 channel
# rows, then 32 account-kind rows, then the bank row. Layouts below.
RULES_SIZE = CHANNEL_COUNT * CHANNEL_SIZE + KIND_RULE_COUNT * KIND_RULE_SIZE + BANK_RULE_SIZE
# Before per-code authorization the table was 256 rows of two int64 caps: journals and
# snapshots written then carry that; `rules_table_upgraded` reads it as it behaved.
RULES_LEGACY_SIZE = CHANNEL_COUNT * 16
CUSTOMER_SIZE = 8  # the per-slot customer table: u64 customer number, 0 = none
DEPOSIT_SIZE = 32  # the per-slot deposit table: layouts in ledger/deposits.py
CUSTOMER_NUMBER_MAX = (1 << 40) - 1  # a customer number fits a day-counter key

NS_PER_S = 1_000_000_000


class AccountKind(enum.IntEnum):
    """What an account is for; drives which PBoC rules apply."""

    CLASS_I = 1
    CLASS_II = 2
    CLASS_III = 3
    SAVINGS = 4
    FIXED_DEPOSIT = 5
    LOAN = 6
    INTERNAL_CASH = 16
    INTERNAL_CLEARING = 17
    INTERNAL_SETTLEMENT = 18
    INTERNAL_INTEREST_EXPENSE = 19
    INTERNAL_FEES = 20
    INTERNAL_WEALTH = 21
    INTERNAL_LOAN_FUNDING = 22


ACCOUNT_KIND_MAX = 22
ACCOUNT_KINDS_VALID = frozenset(int(kind) for kind in AccountKind)


class AccountStatus(enum.IntEnum):
    ACTIVE = 0
    FROZEN = 1
    CLOSED = 2


class AccountFlags(enum.IntFlag):
    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 0
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 1
    FACE_TO_FACE_VERIFIED = 1 << 2
    NON_BOUND_INFLOW_ENABLED = 1 << 3
    BOUND_EXTERNAL = 1 << 4  # bound to a card at another bank (reached via clearing)


ACCOUNT_FLAGS_KNOWN = 0x1F
PRODUCT_KIND_ANY_INTERNAL = 16  # a product row's account kind that fits every internal kind


class TransferFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING = 1 << 2
    VOID_PENDING = 1 << 3
    STRONG_AUTH = 1 << 4  # the channel verified a second factor with the holder's consent


TRANSFER_FLAGS_KNOWN = 0x1F


class TransferCode(enum.IntEnum):
    """What a transfer is, as far as the PBoC buckets care.

    `counted` codes consume the inflow bucket of a Class II/III credit account
    and the outflow bucket of a Class II/III debit account, unless the
    counterparty is the account's bound account. Exempt codes never count.
    Which codes count is a rule (the bank row's `counted_codes`): the rules
    in force count FEE too (DOMAIN.md exempts only the bound account, the
    bank's wealth products and loans); `CODES_COUNTED_LEGACY` is the set
    journals written before then were applied with.
    """

    TRANSFER = 1  # counted: between customers of this bank
    PAYMENT = 2  # counted: to a merchant
    CASH_DEPOSIT = 3  # counted, cash rules
    CASH_WITHDRAWAL = 4  # counted, cash rules
    TOPUP_BOUND = 5  # exempt: from the account's bound card
    WITHDRAW_BOUND = 6  # exempt: to the account's bound card
    FEE = 7  # counted (outflow) under the current rules; legacy: exempt
    INTEREST = 8  # exempt
    REVERSAL = 9  # compensates a posted transfer named by pending_id
    WEALTH = 10  # exempt: the bank's own wealth products
    LOAN_DISBURSEMENT = 11  # exempt
    LOAN_REPAYMENT = 12  # exempt
    EXTERNAL_TRANSFER_OUT = 13  # counted: to a non-bound account at another bank
    EXTERNAL_TRANSFER_IN = 14  # counted: from a non-bound account at another bank
    FIXED_DEPOSIT = 15  # exempt: to or from the customer's own fixed deposit
    SETTLEMENT = 16  # exempt: between internal accounts


TRANSFER_CODE_MAX = 16
CODES_COUNTED_LEGACY = frozenset(
    {
        TransferCode.TRANSFER,
        TransferCode.PAYMENT,
        TransferCode.CASH_DEPOSIT,
        TransferCode.CASH_WITHDRAWAL,
        TransferCode.EXTERNAL_TRANSFER_OUT,
        TransferCode.EXTERNAL_TRANSFER_IN,
    }
)
CODES_CASH = frozenset({TransferCode.CASH_DEPOSIT, TransferCode.CASH_WITHDRAWAL})
CODES_ALL = frozenset(TransferCode)


def code_mask(codes: frozenset[TransferCode] | set[TransferCode]) -> int:
    """A rule table's code set: bit c for transfer code c."""
    mask = 0
    for code in codes:
        mask |= 1 << int(code)
    return mask


def codes_of_mask(mask: int) -> frozenset[TransferCode]:
    return frozenset(code for code in TransferCode if mask >> int(code) & 1)


class ChannelOption(enum.IntFlag):
    NONE = 0
    STRONG_AUTH_EXEMPT = 1 << 0  # the counter, the bank itself: no strong-auth tally
    CUSTOMER_CAP_EXEMPT = 1 << 1  # the bank's own postings: outside the customer's daily cap


class KindOption(enum.IntFlag):
    NONE = 0
    FLOOR_ENFORCED = 1 << 0  # debits stop at the kind row's balance floor
    BANK_SIDE = 1 << 1  # may anchor a bucket-exempt code (a product or internal account)


class CounterSpace(enum.IntEnum):
    """The top byte of a day counter's key (the channel-counter hash table)."""

    CHANNEL_DEBIT = 0  # (account, channel): the channel's daily cap on debits
    CHANNEL_CREDIT = 1  # (account, channel): the channel's daily cap on credits
    CUSTOMER_DEBIT = 2  # customer: the daily cap across all channels
    STRONG_CUSTOMER = 3  # customer: non-counter debits, for strong authentication
    STRONG_ACCOUNT = 4  # an account without a customer: the same, per account


def account_counter_key(space: int, slot: int, channel: int) -> int:
    return (space << 40) | ((slot + 1) << 8) | channel


def customer_counter_key(space: int, customer: int) -> int:
    return (space << 40) | customer


CODES_BOUND = frozenset({TransferCode.TOPUP_BOUND, TransferCode.WITHDRAW_BOUND})


class PendingState(enum.IntEnum):
    """Lifecycle of a transfer in the log (`state` byte)."""

    NONE = 0  # single-phase, post, void, reversal, or failed
    PENDING = 1
    POSTED = 2
    VOIDED = 3
    EXPIRED = 4


class CreateTransferResult(enum.IntEnum):
    """Result of one transfer, in precedence order: the first failing check wins.

    Dense and stable: never renumber. Codes below `ID_CONSUMED_FIRST` are
    validation failures: the id is not consumed and a corrected retry may
    succeed. Codes from `PENDING_TRANSFER_NOT_FOUND` on depend on ledger
    state: the failure is recorded (in the failure ring) and the id answers
    `ID_ALREADY_FAILED` while it is remembered (the failure retention, or
    until the ring needs its room) -- except `CHANNEL_LOG_QUOTA_EXCEEDED`,
    a capacity refusal checked before the posting: the id is not consumed
    (see `id_consumed`). See docs/result-codes.md.
    """

    OK = 0
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    TIMESTAMP_MUST_BE_ZERO = 3
    RESERVED_FIELD = 4
    RESERVED_FLAG = 5
    ID_MUST_NOT_BE_ZERO = 6
    ID_MUST_NOT_BE_INT_MAX = 7
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 8
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 9
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 10
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 11
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 12
    ACCOUNTS_MUST_BE_DIFFERENT = 13
    PENDING_ID_MUST_BE_ZERO = 14
    PENDING_ID_MUST_NOT_BE_ZERO = 15
    PENDING_ID_MUST_NOT_BE_INT_MAX = 16
    PENDING_ID_MUST_BE_DIFFERENT = 17
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 18
    LEDGER_MUST_NOT_BE_ZERO = 19
    CODE_MUST_NOT_BE_ZERO = 20
    CODE_UNKNOWN = 21
    AMOUNT_MUST_BE_POSITIVE = 22
    DEBIT_ACCOUNT_NOT_FOUND = 23
    CREDIT_ACCOUNT_NOT_FOUND = 24
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 25
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 26
    EXISTS_WITH_DIFFERENT_FLAGS = 27
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 28
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 29
    EXISTS_WITH_DIFFERENT_AMOUNT = 30
    EXISTS_WITH_DIFFERENT_PENDING_ID = 31
    EXISTS_WITH_DIFFERENT_TIMEOUT = 32
    EXISTS_WITH_DIFFERENT_LEDGER = 33
    EXISTS_WITH_DIFFERENT_CODE = 34
    EXISTS_WITH_DIFFERENT_CHANNEL = 35
    EXISTS_WITH_DIFFERENT_USER_DATA = 36
    EXISTS = 37
    ID_ALREADY_FAILED = 38
    PENDING_TRANSFER_NOT_FOUND = 39
    PENDING_TRANSFER_NOT_PENDING = 40
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 41
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 42
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 43
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 44
    EXCEEDS_PENDING_TRANSFER_AMOUNT = 45
    PENDING_TRANSFER_ALREADY_POSTED = 46
    PENDING_TRANSFER_ALREADY_VOIDED = 47
    PENDING_TRANSFER_EXPIRED = 48
    REVERSAL_TARGET_NOT_FOUND = 49
    REVERSAL_TARGET_NOT_POSTED = 50
    REVERSAL_ACCOUNTS_MISMATCH = 51
    EXCEEDS_REVERSIBLE_AMOUNT = 52
    DEBIT_ACCOUNT_FROZEN = 53
    CREDIT_ACCOUNT_FROZEN = 54
    DEBIT_ACCOUNT_CLOSED = 55
    CREDIT_ACCOUNT_CLOSED = 56
    NO_BOUND_ACCOUNT = 57
    CASH_NOT_ALLOWED = 58
    NON_BOUND_INFLOW_DISABLED = 59
    OVERFLOWS_DEBITS_PENDING = 60
    OVERFLOWS_CREDITS_PENDING = 61
    OVERFLOWS_DEBITS_POSTED = 62
    OVERFLOWS_CREDITS_POSTED = 63
    OVERFLOWS_DEBITS = 64
    OVERFLOWS_CREDITS = 65
    OVERFLOWS_TIMEOUT = 66
    EXCEEDS_CREDITS = 67
    EXCEEDS_DEBITS = 68
    EXCEEDS_TRANSFER_CAP = 69
    EXCEEDS_CHANNEL_TRANSFER_CAP = 70
    EXCEEDS_CHANNEL_DAILY_CAP = 71
    EXCEEDS_DAILY_OUTFLOW = 72
    EXCEEDS_YEARLY_OUTFLOW = 73
    EXCEEDS_DAILY_INFLOW = 74
    EXCEEDS_YEARLY_INFLOW = 75
    EXCEEDS_BALANCE_CAP = 76
    # Appended with per-code authorization; checked where their comments say.
    CHANNEL_CODE_NOT_ALLOWED = 77  # first of the state checks: the channel may not post the code
    DEBIT_ACCOUNT_CODE_NOT_ALLOWED = 78  # the debit account's kind may not be debited so
    CREDIT_ACCOUNT_CODE_NOT_ALLOWED = 79  # the credit account's kind may not be credited so
    CODE_NEEDS_BANK_ACCOUNT = 80  # a bucket-exempt code between two payment accounts
    EXCEEDS_INTERNAL_FLOOR = 81  # after EXCEEDS_DEBITS: an internal account's floor
    EXCEEDS_CHANNEL_DAILY_INFLOW_CAP = 82  # after EXCEEDS_CHANNEL_DAILY_CAP
    EXCEEDS_CUSTOMER_DAILY_CAP = 83  # after 82, before the PBoC buckets
    STRONG_AUTH_REQUIRED = 84  # after the PBoC buckets, before EXCEEDS_BALANCE_CAP
    # The channel holds its share of the transfer log or of the failure ring:
    # refused before posting, the id not consumed; retry after Retry-After.
    CHANNEL_LOG_QUOTA_EXCEEDED = 85


ID_CONSUMED_FIRST = CreateTransferResult.PENDING_TRANSFER_NOT_FOUND
# Codes from ID_CONSUMED_FIRST on that leave the id free all the same.
CODES_ID_NOT_CONSUMED = frozenset({CreateTransferResult.CHANNEL_LOG_QUOTA_EXCEEDED})

# The record-validation results a posting the services built cannot produce (ids, flags,
# ledgers and codes are theirs to get right): a channel answers them as the bank's fault.
CODES_MALFORMED_RECORD = frozenset(
    {
        CreateTransferResult.LINKED_EVENT_FAILED,
        CreateTransferResult.LINKED_EVENT_CHAIN_OPEN,
        CreateTransferResult.TIMESTAMP_MUST_BE_ZERO,
        CreateTransferResult.RESERVED_FIELD,
        CreateTransferResult.RESERVED_FLAG,
        CreateTransferResult.ID_MUST_NOT_BE_ZERO,
        CreateTransferResult.ID_MUST_NOT_BE_INT_MAX,
        CreateTransferResult.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
        CreateTransferResult.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
        CreateTransferResult.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX,
        CreateTransferResult.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
        CreateTransferResult.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX,
        CreateTransferResult.PENDING_ID_MUST_BE_ZERO,
        CreateTransferResult.PENDING_ID_MUST_NOT_BE_ZERO,
        CreateTransferResult.PENDING_ID_MUST_NOT_BE_INT_MAX,
        CreateTransferResult.PENDING_ID_MUST_BE_DIFFERENT,
        CreateTransferResult.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER,
        CreateTransferResult.LEDGER_MUST_NOT_BE_ZERO,
        CreateTransferResult.CODE_MUST_NOT_BE_ZERO,
        CreateTransferResult.CODE_UNKNOWN,
        CreateTransferResult.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER,
        CreateTransferResult.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS,
    }
)


def id_consumed(result: int) -> bool:
    """Whether a transfer that failed with `result` is remembered (ID_ALREADY_FAILED)."""
    return result >= ID_CONSUMED_FIRST and result not in CODES_ID_NOT_CONSUMED


class CreateAccountResult(enum.IntEnum):
    """Result of one account creation, in precedence order. Never renumber."""

    OK = 0
    RESERVED_FIELD = 1
    RESERVED_FLAG = 2
    ID_MUST_NOT_BE_ZERO = 3
    ID_MUST_NOT_BE_INT_MAX = 4
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 5
    LEDGER_MUST_NOT_BE_ZERO = 6
    KIND_UNKNOWN = 7
    STATUS_MUST_BE_ACTIVE = 8
    PRODUCT_UNKNOWN = 9
    BOUND_ACCOUNT_NOT_FOUND = 10
    BOUND_ACCOUNT_MUST_BE_CLASS_I = 11
    BOUND_ACCOUNT_MUST_HAVE_THE_SAME_LEDGER = 12
    EXISTS_WITH_DIFFERENT_LEDGER = 13
    EXISTS_WITH_DIFFERENT_KIND = 14
    EXISTS_WITH_DIFFERENT_FLAGS = 15
    EXISTS_WITH_DIFFERENT_PRODUCT = 16
    EXISTS_WITH_DIFFERENT_BOUND_ACCOUNT_ID = 17
    EXISTS = 18
    PRODUCT_KIND_MISMATCH = 19  # appended later: checked right after PRODUCT_UNKNOWN
    EXISTS_WITH_DIFFERENT_CUSTOMER = 20  # appended: checked right before EXISTS


class AccountUpdateResult(enum.IntEnum):
    """Result of a status/flag change on an existing account. Never renumber."""

    OK = 0
    ACCOUNT_NOT_FOUND = 1
    STATUS_UNKNOWN = 2
    RESERVED_FLAG = 3
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 4
    ACCOUNT_CLOSED = 5
    BALANCE_NOT_ZERO = 6
    PENDING_NOT_ZERO = 7


# --- record layouts ---------------------------------------------------------
#
# Account (64 bytes, one cache line: everything a posting reads):
#   0  u64 id_lo          8  u64 id_hi
#  16  i64 debits_posted  24  i64 credits_posted
#  32  i32 inflow_daily   36  i32 inflow_yearly  40 i32 outflow_daily  44 i32 outflow_yearly
#  48  u32 bound_slot     52  u16 ledger   54 u8 kind   55 u8 status
#  56  u16 flags          58  u16 product  60 u16 counters_day  62 u16 internal
# The limit counters hold the totals of `counters_day` (days since 2000-01-01).
# `internal` bit 0 (ACCOUNT_INTERNAL_HAS_PENDING) is set exactly while the
# account's row in the pending side table is not all zero.
ACCOUNT_STRUCT = struct.Struct("<QQqqiiiiIHBBHHHH")
assert ACCOUNT_STRUCT.size == ACCOUNT_SIZE
ACCOUNT_INTERNAL_HAS_PENDING = 1

# Pending side table (16 bytes per account slot), read only for accounts with
# holds: i64 debits_pending, i64 credits_pending.
PENDING_STRUCT = struct.Struct("<qq")
assert PENDING_STRUCT.size == PENDING_SIZE

# Account creation input (64 bytes): the bound account is named by its id.
#   0  u64 id_lo        8  u64 id_hi
#  16  u64 bound_id_lo 24  u64 bound_id_hi
#  32  u16 ledger      34  u8 kind   35 u8 status (must be ACTIVE)
#  36  u16 flags       38  u16 product
#  40  u64 customer (the holder's customer number, < 2**40; 0 = none)  48..63 reserved (zero)
ACCOUNT_INPUT_STRUCT = struct.Struct("<QQQQHBBHHQ16x")
assert ACCOUNT_INPUT_STRUCT.size == ACCOUNT_SIZE

# Transfer (128 bytes). Offsets 0..90 and 104..111 are the caller's input;
# the rest (result, slots, business_day, counted, state, amount_posted,
# amount_reversed) are written by the kernel when the transfer is recorded in
# the log and must be zero on input (`reserved_field` otherwise).
#   0  u64 id_lo                 8  u64 id_hi
#  16  u64 debit_account_id_lo  24  u64 debit_account_id_hi
#  32  u64 credit_account_id_lo 40  u64 credit_account_id_hi
#  48  u64 pending_id_lo        56  u64 pending_id_hi
#  64  i64 amount               72  u64 timestamp (input: 0)
#  80  u32 timeout_s            84  u16 ledger   86 u16 code
#  88  u16 flags                90  u8 channel   91 u8 result (log)
#  92  u32 debit_slot (log)     96  u32 credit_slot (log)
# 100  u16 business_day (log): the day whose quota the transfer consumed: the day
#      it was applied, or for a capture (post_pending) the day of its hold
# 100  u16 business_day (log)  102  u8 counted (log) 103 u8 state (log)
# 104  u64 user_data           112  i64 amount_posted (log) 120 i64 amount_reversed (log)
TRANSFER_STRUCT = struct.Struct("<QQQQQQQQqQIHHHBBIIHBBQqq")
assert TRANSFER_STRUCT.size == TRANSFER_SIZE

COUNTED_DEBIT_OUTFLOW = 1
COUNTED_CREDIT_INFLOW = 2

# The rule table's rows (RULES_SIZE bytes; built by limits.rules.RuleSet.channel_table):
# channel row (32 bytes, channel id i at i * 32):
#   i64 transfer_cap_minor, i64 daily_cap_minor (debits), i64 inflow_daily_cap_minor
#   (credits), u32 codes (bit c: may post code c), u32 options (ChannelOption)
# kind row (32 bytes, AccountKind k at 8192 + k * 32):
#   i64 balance_floor_minor (with FLOOR_ENFORCED), u32 debit_codes, u32 credit_codes,
#   u32 options (KindOption), u32 reserved, i64 reserved
# bank row (32 bytes at 9216):
#   i64 customer_daily_cap_minor, i64 strong_auth_daily_minor (0 = none),
#   u32 counted_codes (consume the PBoC buckets), u32 inflow_codes (a channel's credit cap
#   counts them), u32 anchored_codes (need a BANK_SIDE account on one side), u32 reserved
CHANNEL_RULE_STRUCT = struct.Struct("<qqqII")
KIND_RULE_STRUCT = struct.Struct("<qIII4xq")
BANK_RULE_STRUCT = struct.Struct("<qqIII4x")
assert CHANNEL_RULE_STRUCT.size == CHANNEL_SIZE
assert KIND_RULE_STRUCT.size == KIND_RULE_SIZE and BANK_RULE_STRUCT.size == BANK_RULE_SIZE
KIND_RULES_OFFSET = CHANNEL_COUNT * CHANNEL_SIZE
BANK_RULE_OFFSET = KIND_RULES_OFFSET + KIND_RULE_COUNT * KIND_RULE_SIZE
_LEGACY_CHANNEL_ROW = struct.Struct("<qq")


def rules_table_upgraded(table: bytes | bytearray | memoryview) -> bytes:
    """The rule table as the kernel reads it; a legacy table (two caps a channel, before
    per-code authorization) becomes one that behaves exactly as it did: every code allowed
    everywhere, no floors on kinds, no credit, customer or strong-authentication counters."""
    if len(table) == RULES_SIZE:
        return bytes(table)
    assert len(table) == RULES_LEGACY_SIZE, len(table)
    everything = code_mask(set(CODES_ALL))
    exempt = ChannelOption.STRONG_AUTH_EXEMPT | ChannelOption.CUSTOMER_CAP_EXEMPT
    out = bytearray(RULES_SIZE)
    for channel in range(CHANNEL_COUNT):
        transfer_cap, daily_cap = _LEGACY_CHANNEL_ROW.unpack_from(table, channel * 16)
        CHANNEL_RULE_STRUCT.pack_into(
            out, channel * CHANNEL_SIZE, transfer_cap, daily_cap, 0, everything, exempt
        )
    for kind in range(KIND_RULE_COUNT):
        KIND_RULE_STRUCT.pack_into(
            out, KIND_RULES_OFFSET + kind * KIND_RULE_SIZE, 0, everything, everything, 0, 0
        )
    BANK_RULE_STRUCT.pack_into(
        out, BANK_RULE_OFFSET, 0, 0, code_mask(set(CODES_COUNTED_LEGACY)), 0, 0
    )
    return bytes(out)


def split_id(value: int) -> tuple[int, int]:
    """A 128-bit id as (lo, hi) 64-bit halves."""
    assert 0 <= value <= ID_MAX, value
    return value & UINT64_MAX, value >> 64


def join_id(lo: int, hi: int) -> int:
    return (hi << 64) | lo
