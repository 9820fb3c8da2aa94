# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Deposit kernels over the KernelLedger's tables: accrual, settlement, maturities, rollover.

The plain-Python twin is `ledger.reference.ReferenceLedger` (`accrue_interest`,
`settlement_parts`, `settle_interest`, `due_fixed_deposits`, `purge_counters`); the
row layouts are ledger/deposits.py's, mirrored by the packed structs below. Each
kernel checks its buffers once, then runs `with nogil` in one sequential pass over
the account table (64 bytes a slot) and the deposit table (32 bytes a slot): at 30
million accounts that is 2.9 GB read, bound by memory bandwidth, not by arithmetic.

Accrued interest is an i128 of units of 1 / UNITS_PER_FEN fen, kept as (u64 lo, i64 hi)
in the row and computed with the compiler's `__int128` (GCC and Clang on 64-bit
targets); a day adds balance * (rate * weight), the product of two int64s.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from cext.ledger_kernel cimport Account, ChannelEntry, Pending, Product, Transfer

cdef extern from *:
    """
    #include <string.h>
    typedef __int128 tally_i128;

    /* A demand row's first 16 bytes: the accrued units, u64 lo then i64 hi. */
    static inline tally_i128 tally_units_load(const void *row) {
        uint64_t lo; int64_t hi;
        memcpy(&lo, row, 8);
        memcpy(&hi, (const char *)row + 8, 8);
        return (tally_i128)(((unsigned __int128)(uint64_t)hi << 64) | lo);
    }

    static inline void tally_units_store(void *row, tally_i128 units) {
        uint64_t lo = (uint64_t)units;
        int64_t hi = (int64_t)(units >> 64);
        memcpy(row, &lo, 8);
        memcpy((char *)row + 8, &hi, 8);
    }

    /* units += balance * factor (factor = rate * weight < 2**53, balance > 0) */
    static inline void tally_units_add(void *row, int64_t balance, int64_t factor) {
        tally_units_store(row, tally_units_load(row) + (tally_i128)balance * factor);
    }

    /* units -= fen * per_fen */
    static inline void tally_units_sub_fen(void *row, int64_t fen, int64_t per_fen) {
        tally_units_store(row, tally_units_load(row) - (tally_i128)fen * per_fen);
    }

    /* The units rounded half up to the fen; -1 when not positive or past int64. */
    static inline int64_t tally_units_fen(const void *row, int64_t per_fen) {
        tally_i128 units = tally_units_load(row);
        tally_i128 fen;
        if (units <= 0) return -1;
        fen = (units + per_fen / 2) / per_fen;
        if (fen > (tally_i128)0x7FFFFFFFFFFFFFFFLL) return -1;
        return (int64_t)fen;
    }
    """
    void tally_units_add(void *row, int64_t balance, int64_t factor) noexcept nogil
    void tally_units_sub_fen(void *row, int64_t fen, int64_t per_fen) noexcept nogil
    int64_t tally_units_fen(const void *row, int64_t per_fen) noexcept nogil

# The layouts and constants this kernel shares with Python (checked at import by
# ledger/kernel.py and tests/unit/test_deposit_kernel.py).
INTEREST_ID_TAG = 0x494E54
INTEREST_ID_MIX = 0x9E3779B97F4A7C15
cdef uint64_t ID_TAG = 0x494E54
cdef uint64_t ID_MIX = 0x9E3779B97F4A7C15
cdef int64_t UNITS_PER_FEN_ = 1000000 * 1603080
UNITS_PER_FEN = UNITS_PER_FEN_

cdef enum:
    ACCOUNT_SIZE = 64
    TRANSFER_SIZE = 128
    PRODUCT_SIZE = 64
    DEPOSIT_SIZE = 32
    RATE_ROW_SIZE = 16
    CHANNEL_ENTRY_SIZE = 16
    META_ACCOUNT_COUNT = 0
    META_ACCOUNT_CAPACITY = 1
    META_LOG_MASK = 5
    META_PRODUCT_COUNT = 12
    META_DIRTY_ENABLED = 15
    META_DIRTY_ACCOUNT_COUNT = 16
    META_SIZE = 24
    KIND_CLASS_I = 1
    KIND_SAVINGS = 4
    KIND_FIXED_DEPOSIT = 5
    STATUS_CLOSED = 2
    ACCOUNT_BOUND_EXTERNAL = 16
    INTERNAL_HAS_PENDING = 1
    PENDING_SIZE = 16
    CODE_INTEREST = 8
    TR_OK = 0
    FD_CLOSED = 4
    FD_OPEN = 8

cdef uint32_t SLOT_NONE = 0xFFFFFFFF


cdef packed struct DemandRow:  # ledger/deposits.py DEMAND_ROW
    uint64_t accrued_lo
    int64_t accrued_hi
    uint32_t period_settled
    uint32_t reserved
    int64_t interest_paid_total

cdef packed struct FixedRow:  # ledger/deposits.py FIXED_ROW
    int64_t principal
    uint32_t rate
    uint16_t open_day
    uint16_t maturity_day
    uint16_t term_months
    uint8_t day_count
    uint8_t flags
    uint32_t payout_slot
    uint32_t product
    uint32_t reserved

cdef packed struct RateRow:  # ledger/deposits.py RATE_ROW
    int64_t rate
    int64_t weight

cdef struct Tables:
    Account *accounts
    DemandRow *deposits
    const Product *products
    int64_t product_count
    int64_t account_count
    int64_t account_capacity
    bint dirty_enabled
    uint32_t *dirty_accounts
    uint8_t *dirty_marks
    int64_t dirty_account_count


cdef int tables_load(Tables *t, unsigned char[::1] accounts, unsigned char[::1] deposits,
                     const unsigned char[::1] products, int64_t[::1] meta) except -1:
    if meta.shape[0] < META_SIZE:
        raise ValueError("meta must hold META_SIZE int64")
    t.account_count = meta[META_ACCOUNT_COUNT]
    t.account_capacity = meta[META_ACCOUNT_CAPACITY]
    t.product_count = meta[META_PRODUCT_COUNT]
    if t.account_capacity < 1 or accounts.shape[0] < t.account_capacity * ACCOUNT_SIZE:
        raise ValueError("account table smaller than its capacity")
    if deposits.shape[0] < t.account_capacity * DEPOSIT_SIZE:
        raise ValueError("deposit table smaller than the account capacity")
    if not 0 <= t.account_count <= t.account_capacity:
        raise ValueError("account count past the capacity")
    if t.product_count < 1 or products.shape[0] != t.product_count * PRODUCT_SIZE:
        raise ValueError("product table size must be product_count * PRODUCT_SIZE")
    t.accounts = <Account *>&accounts[0]
    t.deposits = <DemandRow *>&deposits[0]
    t.products = <const Product *>&products[0]
    t.dirty_enabled = False
    return 0


cdef int dirty_load(Tables *t, unsigned char[::1] dirty, int64_t[::1] meta) except -1:
    """Dirty tracking (ledger kernel `dirty_account`): the slots whose rows a store rewrites."""
    cdef int64_t log_size = meta[META_LOG_MASK] + 1
    t.dirty_enabled = meta[META_DIRTY_ENABLED] != 0
    if not t.dirty_enabled:
        return 0
    if dirty.shape[0] < t.account_capacity * 5 + log_size * 8:
        raise ValueError("dirty table smaller than accounts * 5 + log size * 8")
    t.dirty_accounts = <uint32_t *>&dirty[log_size * 8]
    t.dirty_marks = <uint8_t *>&dirty[log_size * 8 + t.account_capacity * 4]
    t.dirty_account_count = meta[META_DIRTY_ACCOUNT_COUNT]
    return 0


cdef inline void dirty_account(Tables *t, uint32_t slot) noexcept nogil:
    if t.dirty_enabled and not t.dirty_marks[slot]:
        t.dirty_marks[slot] = 1
        t.dirty_accounts[t.dirty_account_count] = slot
        t.dirty_account_count += 1


cdef inline bint is_demand(uint8_t kind) noexcept nogil:
    return KIND_CLASS_I <= kind <= KIND_SAVINGS


cdef inline uint64_t interest_id_lo(const Account *account) noexcept nogil:
    """ledger.deposits.interest_transfer_id, low half: the account's id folded to 64 bits."""
    return account.id_lo ^ (account.id_hi * ID_MIX)


cdef inline uint64_t interest_id_hi(uint32_t period, uint32_t part) noexcept nogil:
    """ledger.deposits.interest_transfer_id, high half: tag, part, period."""
    return (ID_TAG << 40) | (<uint64_t>part << 32) | period


def accrue(const unsigned char[::1] rates, unsigned char[::1] accounts,
           unsigned char[::1] deposits, const unsigned char[::1] products, int64_t[::1] meta,
           unsigned char[::1] dirty):
    """One day's accrual over every demand account; the number of accounts accrued.

    The rates were checked by the caller (ledger.deposits.check_rates): rate * weight
    fits 53 bits, so a day adds an int64 x int64 product to the i128 units.
    """
    cdef Tables t
    cdef int64_t rate_count = rates.shape[0] // RATE_ROW_SIZE
    cdef const RateRow *table
    cdef int64_t *factors
    cdef int64_t slot, balance, factor, accrued = 0
    cdef Account *account
    cdef DemandRow *row
    tables_load(&t, accounts, deposits, products, meta)
    dirty_load(&t, dirty, meta)
    if rates.shape[0] % RATE_ROW_SIZE:
        raise ValueError("rate table must be whole 16-byte rows")
    if rate_count > 65536:
        rate_count = 65536  # product ids are u16
    # rate * weight per product id (all 65536 u16 ids: no bounds check in the loop).
    factors = <int64_t *>malloc(65536 * sizeof(int64_t))
    if factors == NULL:
        raise MemoryError()
    memset(factors, 0, 65536 * sizeof(int64_t))
    if rate_count:
        table = <const RateRow *>&rates[0]
        for slot in range(rate_count):
            if table[slot].rate > 0 and table[slot].weight > 0:
                factors[slot] = table[slot].rate * table[slot].weight
    with nogil:
        for slot in range(t.account_count):
            account = &t.accounts[slot]
            if not is_demand(account.kind):
                continue
            factor = factors[account.product]
            balance = account.credits_posted - account.debits_posted
            if factor == 0 or balance <= 0:
                continue
            row = &t.deposits[slot]
            tally_units_add(row, balance, factor)
            dirty_account(&t, <uint32_t>slot)
            accrued += 1
    free(factors)
    if t.dirty_enabled:
        meta[META_DIRTY_ACCOUNT_COUNT] = t.dirty_account_count
    return accrued


cdef inline void transfer_fill(Transfer *out, const Account *account, uint32_t period,
                               uint32_t part, uint64_t debit_id, uint64_t credit_lo,
                               uint64_t credit_hi, int64_t amount, uint8_t channel) noexcept nogil:
    memset(out, 0, TRANSFER_SIZE)
    out.id_lo = interest_id_lo(account)
    out.id_hi = interest_id_hi(period, part)
    out.debit_account_id_lo = debit_id
    out.credit_account_id_lo = credit_lo
    out.credit_account_id_hi = credit_hi
    out.amount = amount
    out.ledger = account.ledger
    out.code = CODE_INTEREST
    out.channel = channel
    out.user_data = period


def settlement_batch(uint32_t period, int64_t start_slot, int64_t count_max,
                     unsigned char[::1] transfers_out, unsigned char[::1] slots_out,
                     unsigned char[::1] accounts, const unsigned char[::1] pending,
                     unsigned char[::1] deposits, const unsigned char[::1] products,
                     int64_t[::1] meta, uint64_t expense_id, uint64_t clearing_id,
                     uint8_t channel):
    """The next <= count_max settlement transfers of `period` from `start_slot` into
    `transfers_out` / `slots_out`; returns (transfers written, slot to continue from).
    A pure read of the tables (ReferenceLedger.settlement_parts, transfer for transfer)."""
    cdef Tables t
    cdef Transfer *out
    cdef uint32_t *slots
    cdef const Pending *pendings
    cdef int64_t slot, amount, cap, balance, room, written = 0
    cdef int64_t index, needed
    cdef int64_t amounts[2]
    cdef uint64_t credit_lo[2]
    cdef uint64_t credit_hi[2]
    cdef uint64_t bound_lo = 0, bound_hi = 0
    cdef bint bound
    cdef Account *account
    cdef Account *bound_account
    cdef DemandRow *row
    tables_load(&t, accounts, deposits, products, meta)
    if count_max < 2 or start_slot < 0 or period == 0:
        raise ValueError(f"settlement batch of period {period} from {start_slot}, {count_max}")
    if (transfers_out.shape[0] < count_max * TRANSFER_SIZE
            or slots_out.shape[0] < count_max * 4):
        raise ValueError("output buffers smaller than count_max transfers and slots")
    if pending.shape[0] < t.account_capacity * PENDING_SIZE:
        raise ValueError("pending table smaller than the account capacity")
    out = <Transfer *>&transfers_out[0]
    slots = <uint32_t *>&slots_out[0]
    pendings = <const Pending *>&pending[0]
    slot = start_slot
    with nogil:
        while slot < t.account_count:
            account = &t.accounts[slot]
            if not is_demand(account.kind) or account.status == STATUS_CLOSED:
                slot += 1
                continue
            row = &t.deposits[slot]
            amount = tally_units_fen(row, UNITS_PER_FEN_)
            if row.period_settled >= period or amount <= 0:
                slot += 1
                continue
            amounts[0] = amount
            amounts[1] = 0
            credit_lo[1] = 0
            credit_hi[1] = 0
            credit_lo[0] = account.id_lo
            credit_hi[0] = account.id_hi
            cap = 0
            if account.product < t.product_count:
                cap = t.products[account.product].balance_cap_minor
            bound = False
            if account.flags & ACCOUNT_BOUND_EXTERNAL:
                bound = True
                bound_lo = clearing_id
                bound_hi = 0
            elif account.bound_slot != SLOT_NONE:
                bound_account = &t.accounts[account.bound_slot]
                bound = True
                bound_lo = bound_account.id_lo
                bound_hi = bound_account.id_hi
            if cap > 0 and bound:
                # As the posting's balance-cap check sees it: pending credits count.
                balance = account.credits_posted - account.debits_posted
                if account.internal & INTERNAL_HAS_PENDING:
                    balance = balance + pendings[slot].credits_pending
                room = cap - balance
                if room < 0:
                    room = 0
                if amount > room:
                    amounts[0] = room
                    amounts[1] = amount - room
                    credit_lo[1] = bound_lo
                    credit_hi[1] = bound_hi
            needed = (1 if amounts[0] > 0 else 0) + (1 if amounts[1] > 0 else 0)
            if written + needed > count_max:
                break
            for index in range(2):
                if amounts[index] > 0:
                    transfer_fill(&out[written], account, period, <uint32_t>index, expense_id,
                                  credit_lo[index], credit_hi[index], amounts[index], channel)
                    slots[written] = <uint32_t>slot
                    written += 1
            slot += 1
    return written, slot


def check_slots(const unsigned char[::1] slots, int64_t count, int64_t[::1] meta):
    """Settlement slots: `count` of them, each an account's, non-decreasing (an account's
    transfers side by side, as `settlement_batch` gives them). ValueError otherwise."""
    cdef const uint32_t *values
    cdef int64_t i, account_count = meta[META_ACCOUNT_COUNT]
    cdef bint bad = False
    if slots.shape[0] != count * 4:
        raise ValueError("settlement slots must name one existing account a transfer")
    if count == 0:
        return
    values = <const uint32_t *>&slots[0]
    with nogil:
        for i in range(count):
            if values[i] >= account_count or (i > 0 and values[i] < values[i - 1]):
                bad = True
                break
    if bad:
        raise ValueError("settlement slots must name one existing account a transfer, in order")


def mark_settled(uint32_t period, const unsigned char[::1] transfers,
                 const unsigned char[::1] slots, const unsigned char[::1] results,
                 unsigned char[::1] accounts, unsigned char[::1] deposits,
                 const unsigned char[::1] products, int64_t[::1] meta,
                 unsigned char[::1] dirty):
    """After the settlement transfers were posted: settle each slot's row (see
    ReferenceLedger.settle_interest). Slots were checked by `check_slots`."""
    cdef Tables t
    cdef int64_t count = transfers.shape[0] // TRANSFER_SIZE
    cdef const Transfer *records
    cdef const uint32_t *slot_values
    cdef int64_t start, end, i, paid
    cdef uint32_t slot
    cdef uint64_t lo0, hi0, lo1, hi1
    cdef bint ok, all_ok, any_ok
    cdef Account *account
    cdef DemandRow *row
    tables_load(&t, accounts, deposits, products, meta)
    dirty_load(&t, dirty, meta)
    if slots.shape[0] != count * 4 or results.shape[0] != count:
        raise ValueError("one slot and one result a transfer")
    if count == 0:
        return 0
    records = <const Transfer *>&transfers[0]
    slot_values = <const uint32_t *>&slots[0]
    start = 0
    with nogil:
        while start < count:
            slot = slot_values[start]
            end = start + 1
            while end < count and slot_values[end] == slot:
                end += 1
            account = &t.accounts[slot]
            row = &t.deposits[slot]
            if is_demand(account.kind) and row.period_settled < period:
                lo0 = interest_id_lo(account)
                hi0 = interest_id_hi(period, 0)
                lo1 = lo0
                hi1 = interest_id_hi(period, 1)
                paid = 0
                all_ok = True
                any_ok = False
                for i in range(start, end):
                    ok = (results[i] == TR_OK
                          and ((records[i].id_lo == lo0 and records[i].id_hi == hi0)
                               or (records[i].id_lo == lo1 and records[i].id_hi == hi1)))
                    if ok:
                        paid += records[i].amount
                        any_ok = True
                    else:
                        all_ok = False
                if any_ok:
                    if all_ok:
                        row.accrued_lo = 0
                        row.accrued_hi = 0
                    else:
                        tally_units_sub_fen(row, paid, UNITS_PER_FEN_)
                    row.period_settled = period
                    row.interest_paid_total += paid
                    dirty_account(&t, slot)
            start = end
    if t.dirty_enabled:
        meta[META_DIRTY_ACCOUNT_COUNT] = t.dirty_account_count
    return 0


def mark_dirty(uint32_t slot, unsigned char[::1] accounts, unsigned char[::1] deposits,
               const unsigned char[::1] products, int64_t[::1] meta, unsigned char[::1] dirty):
    """Mark `slot`'s row changed for the store (a row written by `post_with_rows`)."""
    cdef Tables t
    tables_load(&t, accounts, deposits, products, meta)
    dirty_load(&t, dirty, meta)
    if slot >= t.account_count:
        raise ValueError("slot past the account count")
    dirty_account(&t, slot)
    if t.dirty_enabled:
        meta[META_DIRTY_ACCOUNT_COUNT] = t.dirty_account_count


def due_fixed_deposits(int64_t day, unsigned char[::1] accounts, unsigned char[::1] deposits,
                       const unsigned char[::1] products, int64_t[::1] meta):
    """Slots (u32 bytes, in slot order) of open fixed deposits maturing on or before `day`."""
    cdef Tables t
    cdef int64_t slot, found = 0
    cdef const FixedRow *row
    cdef uint32_t *out
    tables_load(&t, accounts, deposits, products, meta)
    with nogil:
        for slot in range(t.account_count):
            if t.accounts[slot].kind != KIND_FIXED_DEPOSIT:
                continue
            row = <const FixedRow *>&t.deposits[slot]
            if (row.flags & FD_OPEN) and not (row.flags & FD_CLOSED) and row.maturity_day <= day:
                found += 1
    result = bytearray(found * 4)
    if found == 0:
        return bytes(result)
    out = <uint32_t *><unsigned char *>result
    found = 0
    with nogil:
        for slot in range(t.account_count):
            if t.accounts[slot].kind != KIND_FIXED_DEPOSIT:
                continue
            row = <const FixedRow *>&t.deposits[slot]
            if (row.flags & FD_OPEN) and not (row.flags & FD_CLOSED) and row.maturity_day <= day:
                out[found] = <uint32_t>slot
                found += 1
    return bytes(result)


def purge_counters(int64_t day, unsigned char[::1] channel_counters):
    """Zero the day counters of days before `day` in the channel-counter hash table; the
    number of entries zeroed.

    Lookups already treat an entry of another day like an empty one (ledger kernel
    `channel_position`: today's entry for a key lies before the first stale or empty
    position of its probe sequence), so emptying stale entries in place changes no
    lookup of a later day: no rehash, one sequential pass.
    """
    cdef int64_t count = channel_counters.shape[0] // CHANNEL_ENTRY_SIZE
    cdef ChannelEntry *entries
    cdef int64_t i, dropped = 0
    cdef uint64_t key_day
    if count == 0 or channel_counters.shape[0] % CHANNEL_ENTRY_SIZE:
        raise ValueError("channel counter table must be whole 16-byte entries")
    if not 0 <= day <= 0xFFFF:
        raise ValueError("day out of range")
    entries = <ChannelEntry *>&channel_counters[0]
    with nogil:
        for i in range(count):
            key_day = entries[i].key_day
            if key_day != 0 and <int64_t>(key_day & 0xFFFF) < day:
                entries[i].key_day = 0
                entries[i].used = 0
                dropped += 1
    return dropped


STRUCT_SIZES = {
    "Account": sizeof(Account), "DemandRow": sizeof(DemandRow), "FixedRow": sizeof(FixedRow),
    "Transfer": sizeof(Transfer), "Product": sizeof(Product), "RateRow": sizeof(RateRow),
    "ChannelEntry": sizeof(ChannelEntry), "Pending": sizeof(Pending),
}
