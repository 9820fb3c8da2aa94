# Records and status codes of the ledger kernel. Mirrored by ledger/types.py
# (IntEnums and struct layouts); tests/test_kernel_contract.py checks that the
# two agree. Never renumber a status code.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    ACCOUNT_SIZE = 64
    TRANSFER_SIZE = 128
    PENDING_SIZE = 16
    PRODUCT_SIZE = 64
    CHANNEL_SIZE = 32
    CHANNEL_COUNT = 256
    KIND_RULE_SIZE = 32
    KIND_RULE_COUNT = 32
    BANK_RULE_SIZE = 32
    RULES_SIZE = 9248  # the rule table: 256 channel rows, 32 account-kind rows, the bank row
    CUSTOMER_SIZE = 8
    INDEX_ENTRY_SIZE = 16
    HEAP_ENTRY_SIZE = 16
    CHANNEL_ENTRY_SIZE = 16
    LOG_QUOTA_SIZE = 2  # one uint16 permille a channel: the quota table is 512 bytes
    CHANNEL_LIVE_SIZE = 16  # int64 log records + int64 failed records, one row a channel

cdef enum:  # meta fields (int64 array shared with ledger/kernel.py)
    META_ACCOUNT_COUNT = 0
    META_ACCOUNT_CAPACITY = 1
    META_ACCOUNT_INDEX_MASK = 2
    META_LOG_TAIL = 3
    META_LOG_COUNT = 4
    META_LOG_MASK = 5
    META_TRANSFER_INDEX_MASK = 6
    META_TRANSFER_INDEX_COUNT = 7
    META_HEAP_SIZE = 8
    META_HEAP_CAPACITY = 9
    META_CHANNEL_MASK = 10
    META_LAST_DAY = 11
    META_PRODUCT_COUNT = 12
    META_CHANNEL_TABLE_FULL = 13
    META_ACCOUNT_SLOT_BITS = 14
    META_DIRTY_ENABLED = 15
    META_DIRTY_ACCOUNT_COUNT = 16
    META_DIRTY_TRANSFER_COUNT = 17
    META_DIRTY_OVERFLOW = 18
    META_FAILED_TAIL = 19
    META_FAILED_COUNT = 20
    META_FAILED_MASK = 21
    META_SIZE = 24

cdef enum AccountKind:
    KIND_CLASS_I = 1
    KIND_CLASS_II = 2
    KIND_CLASS_III = 3
    KIND_SAVINGS = 4
    KIND_FIXED_DEPOSIT = 5
    KIND_LOAN = 6
    KIND_INTERNAL_CASH = 16
    KIND_INTERNAL_CLEARING = 17
    KIND_INTERNAL_SETTLEMENT = 18
    KIND_INTERNAL_INTEREST_EXPENSE = 19
    KIND_INTERNAL_FEES = 20
    KIND_INTERNAL_WEALTH = 21
    KIND_INTERNAL_LOAN_FUNDING = 22

cdef enum AccountStatus:
    STATUS_ACTIVE = 0
    STATUS_FROZEN = 1
    STATUS_CLOSED = 2

cdef enum AccountFlag:
    ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS = 2
    ACCOUNT_FACE_TO_FACE_VERIFIED = 4
    ACCOUNT_NON_BOUND_INFLOW_ENABLED = 8
    ACCOUNT_BOUND_EXTERNAL = 16
    ACCOUNT_FLAGS_KNOWN = 0x1F

cdef enum TransferFlag:
    TRANSFER_LINKED = 1
    TRANSFER_PENDING = 2
    TRANSFER_POST_PENDING = 4
    TRANSFER_VOID_PENDING = 8
    TRANSFER_STRONG_AUTH = 16  # the channel verified a second factor with the holder's consent
    TRANSFER_FLAGS_KNOWN = 0x1F

cdef enum ChannelOption:
    CHANNEL_STRONG_AUTH_EXEMPT = 1  # face to face or the bank itself: no strong-auth tally
    CHANNEL_CUSTOMER_CAP_EXEMPT = 2  # the bank's own postings: not in the customer's daily cap

cdef enum KindOption:
    KIND_FLOOR_ENFORCED = 1  # debits of this kind stop at the kind row's balance floor
    KIND_BANK_SIDE = 2  # a bank-side account: may anchor an anchored (bucket-exempt) code

cdef enum CounterSpace:  # the top byte of a channel-counter key
    SPACE_CHANNEL_DEBIT = 0  # (account, channel): the channel's daily cap on debits
    SPACE_CHANNEL_CREDIT = 1  # (account, channel): the channel's daily cap on credits
    SPACE_CUSTOMER_DEBIT = 2  # customer: the daily cap across all channels
    SPACE_STRONG_CUSTOMER = 3  # customer: non-counter debits (strong authentication)
    SPACE_STRONG_ACCOUNT = 4  # account without a customer: the same per account

cdef enum:
    CUSTOMER_NUMBER_MAX = 0xFFFFFFFFFF  # 40 bits: a customer number fits a counter key

cdef enum TransferCode:
    CODE_TRANSFER = 1
    CODE_PAYMENT = 2
    CODE_CASH_DEPOSIT = 3
    CODE_CASH_WITHDRAWAL = 4
    CODE_TOPUP_BOUND = 5
    CODE_WITHDRAW_BOUND = 6
    CODE_FEE = 7
    CODE_INTEREST = 8
    CODE_REVERSAL = 9
    CODE_WEALTH = 10
    CODE_LOAN_DISBURSEMENT = 11
    CODE_LOAN_REPAYMENT = 12
    CODE_EXTERNAL_TRANSFER_OUT = 13
    CODE_EXTERNAL_TRANSFER_IN = 14
    CODE_FIXED_DEPOSIT = 15
    CODE_SETTLEMENT = 16
    CODE_MAX = 16

cdef enum PendingState:
    STATE_NONE = 0
    STATE_PENDING = 1
    STATE_POSTED = 2
    STATE_VOIDED = 3
    STATE_EXPIRED = 4

cdef enum Counted:
    COUNTED_DEBIT_OUTFLOW = 1
    COUNTED_CREDIT_INFLOW = 2

cdef enum CreateTransferResult:
    TR_OK = 0
    TR_LINKED_EVENT_FAILED = 1
    TR_LINKED_EVENT_CHAIN_OPEN = 2
    TR_TIMESTAMP_MUST_BE_ZERO = 3
    TR_RESERVED_FIELD = 4
    TR_RESERVED_FLAG = 5
    TR_ID_MUST_NOT_BE_ZERO = 6
    TR_ID_MUST_NOT_BE_INT_MAX = 7
    TR_FLAGS_ARE_MUTUALLY_EXCLUSIVE = 8
    TR_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 9
    TR_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 10
    TR_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 11
    TR_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 12
    TR_ACCOUNTS_MUST_BE_DIFFERENT = 13
    TR_PENDING_ID_MUST_BE_ZERO = 14
    TR_PENDING_ID_MUST_NOT_BE_ZERO = 15
    TR_PENDING_ID_MUST_NOT_BE_INT_MAX = 16
    TR_PENDING_ID_MUST_BE_DIFFERENT = 17
    TR_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 18
    TR_LEDGER_MUST_NOT_BE_ZERO = 19
    TR_CODE_MUST_NOT_BE_ZERO = 20
    TR_CODE_UNKNOWN = 21
    TR_AMOUNT_MUST_BE_POSITIVE = 22
    TR_DEBIT_ACCOUNT_NOT_FOUND = 23
    TR_CREDIT_ACCOUNT_NOT_FOUND = 24
    TR_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 25
    TR_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 26
    TR_EXISTS_WITH_DIFFERENT_FLAGS = 27
    TR_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 28
    TR_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 29
    TR_EXISTS_WITH_DIFFERENT_AMOUNT = 30
    TR_EXISTS_WITH_DIFFERENT_PENDING_ID = 31
    TR_EXISTS_WITH_DIFFERENT_TIMEOUT = 32
    TR_EXISTS_WITH_DIFFERENT_LEDGER = 33
    TR_EXISTS_WITH_DIFFERENT_CODE = 34
    TR_EXISTS_WITH_DIFFERENT_CHANNEL = 35
    TR_EXISTS_WITH_DIFFERENT_USER_DATA = 36
    TR_EXISTS = 37
    TR_ID_ALREADY_FAILED = 38
    TR_PENDING_TRANSFER_NOT_FOUND = 39
    TR_PENDING_TRANSFER_NOT_PENDING = 40
    TR_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 41
    TR_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 42
    TR_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 43
    TR_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 44
    TR_EXCEEDS_PENDING_TRANSFER_AMOUNT = 45
    TR_PENDING_TRANSFER_ALREADY_POSTED = 46
    TR_PENDING_TRANSFER_ALREADY_VOIDED = 47
    TR_PENDING_TRANSFER_EXPIRED = 48
    TR_REVERSAL_TARGET_NOT_FOUND = 49
    TR_REVERSAL_TARGET_NOT_POSTED = 50
    TR_REVERSAL_ACCOUNTS_MISMATCH = 51
    TR_EXCEEDS_REVERSIBLE_AMOUNT = 52
    TR_DEBIT_ACCOUNT_FROZEN = 53
    TR_CREDIT_ACCOUNT_FROZEN = 54
    TR_DEBIT_ACCOUNT_CLOSED = 55
    TR_CREDIT_ACCOUNT_CLOSED = 56
    TR_NO_BOUND_ACCOUNT = 57
    TR_CASH_NOT_ALLOWED = 58
    TR_NON_BOUND_INFLOW_DISABLED = 59
    TR_OVERFLOWS_DEBITS_PENDING = 60
    TR_OVERFLOWS_CREDITS_PENDING = 61
    TR_OVERFLOWS_DEBITS_POSTED = 62
    TR_OVERFLOWS_CREDITS_POSTED = 63
    TR_OVERFLOWS_DEBITS = 64
    TR_OVERFLOWS_CREDITS = 65
    TR_OVERFLOWS_TIMEOUT = 66
    TR_EXCEEDS_CREDITS = 67
    TR_EXCEEDS_DEBITS = 68
    TR_EXCEEDS_TRANSFER_CAP = 69
    TR_EXCEEDS_CHANNEL_TRANSFER_CAP = 70
    TR_EXCEEDS_CHANNEL_DAILY_CAP = 71
    TR_EXCEEDS_DAILY_OUTFLOW = 72
    TR_EXCEEDS_YEARLY_OUTFLOW = 73
    TR_EXCEEDS_DAILY_INFLOW = 74
    TR_EXCEEDS_YEARLY_INFLOW = 75
    TR_EXCEEDS_BALANCE_CAP = 76
    TR_CHANNEL_CODE_NOT_ALLOWED = 77
    TR_DEBIT_ACCOUNT_CODE_NOT_ALLOWED = 78
    TR_CREDIT_ACCOUNT_CODE_NOT_ALLOWED = 79
    TR_CODE_NEEDS_BANK_ACCOUNT = 80
    TR_EXCEEDS_INTERNAL_FLOOR = 81
    TR_EXCEEDS_CHANNEL_DAILY_INFLOW_CAP = 82
    TR_EXCEEDS_CUSTOMER_DAILY_CAP = 83
    TR_STRONG_AUTH_REQUIRED = 84
    TR_CHANNEL_LOG_QUOTA_EXCEEDED = 85  # the transfer log: the channel holds its share

cdef enum CreateAccountResult:
    AR_OK = 0
    AR_RESERVED_FIELD = 1
    AR_RESERVED_FLAG = 2
    AR_ID_MUST_NOT_BE_ZERO = 3
    AR_ID_MUST_NOT_BE_INT_MAX = 4
    AR_FLAGS_ARE_MUTUALLY_EXCLUSIVE = 5
    AR_LEDGER_MUST_NOT_BE_ZERO = 6
    AR_KIND_UNKNOWN = 7
    AR_STATUS_MUST_BE_ACTIVE = 8
    AR_PRODUCT_UNKNOWN = 9
    AR_BOUND_ACCOUNT_NOT_FOUND = 10
    AR_BOUND_ACCOUNT_MUST_BE_CLASS_I = 11
    AR_BOUND_ACCOUNT_MUST_HAVE_THE_SAME_LEDGER = 12
    AR_EXISTS_WITH_DIFFERENT_LEDGER = 13
    AR_EXISTS_WITH_DIFFERENT_KIND = 14
    AR_EXISTS_WITH_DIFFERENT_FLAGS = 15
    AR_EXISTS_WITH_DIFFERENT_PRODUCT = 16
    AR_EXISTS_WITH_DIFFERENT_BOUND_ACCOUNT_ID = 17
    AR_EXISTS = 18
    AR_PRODUCT_KIND_MISMATCH = 19
    AR_EXISTS_WITH_DIFFERENT_CUSTOMER = 20

cdef enum AccountUpdateResult:
    UR_OK = 0
    UR_ACCOUNT_NOT_FOUND = 1
    UR_STATUS_UNKNOWN = 2
    UR_RESERVED_FLAG = 3
    UR_FLAGS_ARE_MUTUALLY_EXCLUSIVE = 4
    UR_ACCOUNT_CLOSED = 5
    UR_BALANCE_NOT_ZERO = 6
    UR_PENDING_NOT_ZERO = 7

cdef enum AccountInternal:
    INTERNAL_HAS_PENDING = 1  # the account's row in the pending table is not all zero

cdef packed struct Counters:
    int32_t inflow_daily
    int32_t inflow_yearly
    int32_t outflow_daily
    int32_t outflow_yearly

# One cache line: what every posting reads. Pending balances, touched only by
# accounts with holds, live in the side table `Pending` (same slot), and are
# read only when `internal` has INTERNAL_HAS_PENDING.
cdef packed struct Account:
    uint64_t id_lo
    uint64_t id_hi
    int64_t debits_posted
    int64_t credits_posted
    Counters counters
    uint32_t bound_slot
    uint16_t ledger
    uint8_t kind
    uint8_t status
    uint16_t flags
    uint16_t product
    uint16_t counters_day
    uint16_t internal

cdef packed struct Pending:
    int64_t debits_pending
    int64_t credits_pending

cdef packed struct AccountInput:
    uint64_t id_lo
    uint64_t id_hi
    uint64_t bound_id_lo
    uint64_t bound_id_hi
    uint16_t ledger
    uint8_t kind
    uint8_t status
    uint16_t flags
    uint16_t product
    uint64_t customer  # the holder's customer number (< 2**40), 0 = none
    uint64_t reserved[2]

cdef packed struct Transfer:
    uint64_t id_lo
    uint64_t id_hi
    uint64_t debit_account_id_lo
    uint64_t debit_account_id_hi
    uint64_t credit_account_id_lo
    uint64_t credit_account_id_hi
    uint64_t pending_id_lo
    uint64_t pending_id_hi
    int64_t amount
    uint64_t timestamp
    uint32_t timeout_s
    uint16_t ledger
    uint16_t code
    uint16_t flags
    uint8_t channel
    uint8_t result
    uint32_t debit_slot
    uint32_t credit_slot
    uint16_t business_day
    uint8_t counted
    uint8_t state
    uint64_t user_data
    int64_t amount_posted
    int64_t amount_reversed

cdef packed struct Product:
    int64_t balance_floor_minor
    int64_t transfer_cap_minor
    int64_t balance_cap_minor
    int64_t inflow_daily_minor
    int64_t inflow_yearly_minor
    int64_t outflow_daily_minor
    int64_t outflow_yearly_minor
    int64_t account_kind  # the AccountKind it is for; 16 = any internal kind; 0 = none

cdef packed struct ChannelRule:
    int64_t transfer_cap_minor
    int64_t daily_cap_minor  # debits, per account per day
    int64_t inflow_daily_cap_minor  # credits, per account per day
    uint32_t codes  # bit c: the channel may post transfer code c
    uint32_t options  # ChannelOption

cdef packed struct KindRule:  # row k of the kind rows: accounts of AccountKind k
    int64_t balance_floor_minor  # with KIND_FLOOR_ENFORCED
    uint32_t debit_codes  # bit c: an account of this kind may be debited under code c
    uint32_t credit_codes
    uint32_t options  # KindOption
    uint32_t reserved32
    int64_t reserved

cdef packed struct BankRule:
    int64_t customer_daily_cap_minor  # debits of one customer per day, all channels; 0 = none
    int64_t strong_auth_daily_minor  # non-counter debits per customer per day without it; 0 = none
    uint32_t counted_codes  # codes that consume the PBoC buckets
    uint32_t inflow_codes  # codes a channel's credit cap counts
    uint32_t anchored_codes  # codes that need a bank-side account on one side
    uint32_t reserved

cdef packed struct IndexEntry:
    uint64_t fingerprint  # the id's 64-bit hash, never 0; 0 marks an empty entry
    uint64_t seq

cdef packed struct HeapEntry:
    uint64_t expires_at
    uint64_t seq

cdef packed struct ChannelEntry:
    uint64_t key_day  # ((slot + 1) << 8 | channel) << 16 | business day; 0 marks an empty entry
    int64_t used
