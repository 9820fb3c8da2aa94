# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Loan kernels over the KernelLedger's tables: the day-end collection, and row writes.

`collect` is the day-end collection of one day over a terms table (ledger/loan_book.py:
the rules, the row and terms layouts mirrored by the packed structs below); its twin is
`ledger.reference.ReferenceLedger.loan_collection_batch`, one loan at a time through
`ledger.loan_book.collect_one`, written to read like this file (same names, same check
order). `write_rows` writes the rows of a POST_WITH_ROWS entry whose transfers posted
(`KernelLedger.post_with_rows`): a day-end chunk carries 8189 of them, one hash lookup
and one 32-byte copy each instead of a Python loop.

Each function checks its buffers once, then runs `with nogil`. The penalty's product
(arrears up to 2**33 fen x rate up to 10**6 x 2000 permille) passes 2**63, so it and a
month's interest are computed with the compiler's `__int128` (GCC and Clang on 64-bit
targets). Day numbers are days since 2000-01-01 (limits/calendar.py), converted to a
civil date and back with Howard Hinnant's `civil_from_days` / `days_from_civil`.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from cext.ledger_kernel cimport Account, Pending, Transfer

cdef extern from *:
    """
    typedef __int128 tally_loan_i128;

    /* numerator / denominator rounded half away from zero (ledger.interest.round_half_up) */
    static inline int64_t tally_loan_rhu(tally_loan_i128 numerator, int64_t denominator) {
        tally_loan_i128 magnitude = numerator < 0 ? -numerator : numerator;
        tally_loan_i128 twice = 2 * (tally_loan_i128)denominator;
        tally_loan_i128 rounded = (2 * magnitude + denominator) / twice;
        return (int64_t)(numerator < 0 ? -rounded : rounded);
    }

    /* A month's interest on `remaining` at `rate` ppm a year (ledger.loans._interest). */
    static inline int64_t tally_loan_month_interest(int64_t remaining, int64_t rate) {
        return tally_loan_rhu((tally_loan_i128)remaining * rate, 12000000);
    }

    /* One day's penalty (ledger.loans.penalty_minor, days=1): the arrears at the rate
       times (1000 + uplift) permille, a 360-day year. */
    static inline int64_t tally_loan_day_penalty(int64_t arrears, int64_t rate, int64_t uplift) {
        return tally_loan_rhu((tally_loan_i128)arrears * rate * (1000 + uplift),
                              (int64_t)360000000 * 1000);
    }
    """
    int64_t tally_loan_rhu(int64_t numerator, int64_t denominator) noexcept nogil
    int64_t tally_loan_month_interest(int64_t remaining, int64_t rate) noexcept nogil
    int64_t tally_loan_day_penalty(int64_t arrears, int64_t rate, int64_t uplift) noexcept nogil

cdef enum:
    ACCOUNT_SIZE = 64
    TRANSFER_SIZE = 128
    DEPOSIT_SIZE = 32
    PENDING_SIZE = 16
    TERMS_SIZE = 48
    WRITE_SIZE = 64
    META_ACCOUNT_COUNT = 0
    META_ACCOUNT_CAPACITY = 1
    META_ACCOUNT_INDEX_MASK = 2
    META_LOG_MASK = 5
    META_ACCOUNT_SLOT_BITS = 14
    META_DIRTY_ENABLED = 15
    META_DIRTY_ACCOUNT_COUNT = 16
    META_SIZE = 24
    KIND_LOAN = 6
    STATUS_ACTIVE = 0
    INTERNAL_HAS_PENDING = 1
    CODE_LOAN_REPAYMENT = 12
    LOAN_OPEN = 1
    LOAN_OVERDUE = 2
    LOAN_CLOSED = 4
    METHOD_EQUAL_INSTALMENT = 1
    METHOD_EQUAL_PRINCIPAL = 2
    PART_PENALTY = 0
    PART_INTEREST = 1
    PART_PRINCIPAL = 2
    TERM_MONTHS_MAX = 360
    UPLIFT_PERMILLE_MAX = 1000
    RATE_MAX = 1000000
    DAY_MAX = 0xFFFF
    FALLEN_DUE_MAX = 0xFFFF

# ledger.loan_book: collection ids, the u32 saturation, the terms' amount bound.
COLLECTION_ID_TAG = 0x4C4E43
COLLECTION_ID_MIX = 0x9E3779B97F4A7C15
cdef uint64_t ID_TAG = 0x4C4E43
cdef uint64_t ID_MIX = 0x9E3779B97F4A7C15
cdef int64_t U32_MAX = 0xFFFFFFFF
cdef int64_t TERMS_AMOUNT_MAX = <int64_t>1 << 40
cdef uint32_t WRITE_ALWAYS = 0xFFFFFFFF
cdef uint32_t SLOT_NONE = 0xFFFFFFFF
# Days from 0000-03-01 to 2000-01-01, and days in 400 years (limits/calendar.py).
cdef int64_t DAYS_ERA_ORIGIN_TO_EPOCH = 730425
cdef int64_t DAYS_PER_ERA = 146097


cdef packed struct LoanRow:  # ledger/loan_book.py LOAN_ROW
    int64_t scheduled_minor
    uint32_t arrears_principal_minor
    uint32_t arrears_interest_minor
    uint32_t penalty_minor
    uint16_t fallen_due
    uint16_t next_due_day
    uint16_t overdue_since
    uint16_t penalty_through
    uint8_t segment
    uint8_t flags
    uint16_t collected_day

cdef packed struct LoanTerms:  # ledger/loan_book.py LOAN_TERMS
    uint32_t slot
    uint32_t repayment_slot
    int64_t level_minor
    int64_t first_interest_minor
    uint32_t rate_ppm
    uint32_t monthly_fee_minor
    uint16_t count
    uint16_t uplift_permille
    uint8_t method
    uint8_t grace_days
    uint8_t segment
    uint8_t allocation
    uint64_t loan_id_lo

cdef packed struct RowWrite:  # ledger/deposits.py DEPOSIT_WRITE
    uint64_t account_id_lo
    uint64_t account_id_hi
    uint32_t transfer_index
    uint8_t reserved[12]
    LoanRow row

cdef struct Taken:  # what the call took from one repayment account (a slot hash entry)
    uint32_t slot_plus_one  # 0: empty
    int64_t amount


# --- days -----------------------------------------------------------------------------

cdef inline int64_t days_in_month(int64_t year, int64_t month) noexcept nogil:
    if month == 2:
        if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0:
            return 29
        return 28
    if month == 4 or month == 6 or month == 9 or month == 11:
        return 30
    return 31


cdef inline int64_t next_due_day(int64_t day) noexcept nogil:
    """ledger.loan_book.next_due_day: the same day of the next month (DAY_MAX past it)."""
    cdef int64_t z, era, doe, yoe, doy, mp, d, m, y, result
    # civil_from_days
    z = day + DAYS_ERA_ORIGIN_TO_EPOCH
    era = z // DAYS_PER_ERA
    doe = z - era * DAYS_PER_ERA
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    # one month on, clamped to a shorter month
    if m == 12:
        y += 1
        m = 1
    else:
        m += 1
    if d > days_in_month(y, m):
        d = days_in_month(y, m)
    # days_from_civil
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    result = era * DAYS_PER_ERA + doe - DAYS_ERA_ORIGIN_TO_EPOCH
    if result > DAY_MAX:
        return DAY_MAX
    return result


# --- one loan -------------------------------------------------------------------------

cdef inline int64_t saturated(int64_t value) noexcept nogil:
    return U32_MAX if value > U32_MAX else value


cdef inline bint allocation_valid(uint8_t code) noexcept nogil:
    cdef int seen = 0, position, part
    if code >= 64:
        return False
    for position in range(3):
        part = (code >> (2 * position)) & 3
        if part > PART_PRINCIPAL:
            return False
        seen |= 1 << part
    return seen == 7


cdef inline bint terms_valid(const LoanTerms *e) noexcept nogil:
    """ledger.loan_book.check_terms."""
    return ((e.method == METHOD_EQUAL_INSTALMENT or e.method == METHOD_EQUAL_PRINCIPAL)
            and 1 <= e.count <= TERM_MONTHS_MAX
            and 0 <= e.level_minor <= TERMS_AMOUNT_MAX
            and -1 <= e.first_interest_minor <= TERMS_AMOUNT_MAX
            and e.rate_ppm <= RATE_MAX
            and e.uplift_permille <= UPLIFT_PERMILLE_MAX
            and allocation_valid(e.allocation))


cdef inline bint instalment(const LoanTerms *e, int64_t number, int64_t remaining,
                            int64_t *principal, int64_t *interest) noexcept nogil:
    """ledger.loan_book._instalment: (principal, interest) of instalment `number`; True
    when it is the segment's last."""
    cdef int64_t part
    if number == 1 and e.first_interest_minor >= 0:
        interest[0] = e.first_interest_minor
    else:
        interest[0] = tally_loan_month_interest(remaining, e.rate_ppm)
    if e.method == METHOD_EQUAL_PRINCIPAL:
        part = (tally_loan_rhu(number * e.level_minor, e.count)
                - tally_loan_rhu((number - 1) * e.level_minor, e.count))
        principal[0] = part if part < remaining else remaining
        return number >= e.count
    part = e.level_minor - interest[0]
    if part < 0:
        part = 0
    if number >= e.count or part >= remaining:
        principal[0] = remaining
        return True
    principal[0] = part
    return False


cdef inline bint collect_one(int64_t day, const LoanTerms *e, const LoanRow *row,
                             int64_t available, LoanRow *out, int64_t *taken,
                             int64_t paid[3]) noexcept nogil:
    """ledger.loan_book.collect_one: False when the loan is not touched; else the new row
    in `out`, the amount taken and paid[PART_*]."""
    cdef int64_t scheduled, arrears_principal, arrears_interest, penalty, fallen_due
    cdef int64_t due_day, overdue_since, fell_due = 0, principal = 0, interest = 0
    cdef int64_t owed, left, pay, arrears, first, daily, penalty_through
    cdef int64_t dues[3]
    cdef int position, part
    cdef uint8_t flags
    cdef bint last
    if not (row.flags & LOAN_OPEN) or (row.flags & LOAN_CLOSED) or row.collected_day >= day:
        return False
    scheduled = row.scheduled_minor
    arrears_principal = row.arrears_principal_minor
    arrears_interest = row.arrears_interest_minor
    penalty = row.penalty_minor
    fallen_due = row.fallen_due
    due_day = row.next_due_day
    overdue_since = row.overdue_since
    while due_day != 0 and due_day <= day:  # 1. fall due
        last = instalment(e, fallen_due + 1, scheduled, &principal, &interest)
        scheduled -= principal
        arrears_principal = saturated(arrears_principal + principal)
        arrears_interest = saturated(arrears_interest + interest + e.monthly_fee_minor)
        if overdue_since == 0:
            overdue_since = due_day
        if fallen_due < FALLEN_DUE_MAX:
            fallen_due += 1
        fell_due += 1
        due_day = 0 if last else next_due_day(due_day)
    if fell_due == 0 and arrears_principal + arrears_interest + penalty == 0:
        return False
    # 2. collect, in the terms' order, each part in full before the next.
    owed = penalty + arrears_interest + arrears_principal
    taken[0] = available if available < owed else owed
    dues[PART_PENALTY] = penalty
    dues[PART_INTEREST] = arrears_interest
    dues[PART_PRINCIPAL] = arrears_principal
    left = taken[0]
    for position in range(3):
        part = (e.allocation >> (2 * position)) & 3
        pay = left if left < dues[part] else dues[part]
        paid[part] = pay
        left -= pay
    penalty -= paid[PART_PENALTY]
    arrears_interest -= paid[PART_INTEREST]
    arrears_principal -= paid[PART_PRINCIPAL]
    penalty_through = row.penalty_through
    arrears = arrears_principal + arrears_interest
    # 3. penalty, once the grace has passed, from the first day not yet charged.
    if arrears > 0 and day > overdue_since + e.grace_days:
        first = (penalty_through if penalty_through > overdue_since else overdue_since) + 1
        if first <= day:
            daily = tally_loan_day_penalty(arrears, e.rate_ppm, e.uplift_permille)
            penalty = saturated(penalty + daily * (day - first + 1))
        penalty_through = day
    # 4. flags.
    flags = row.flags
    if arrears == 0:
        overdue_since = 0
        flags &= ~LOAN_OVERDUE
    elif day > overdue_since:
        flags |= LOAN_OVERDUE
    if due_day == 0 and scheduled == 0 and arrears == 0 and penalty == 0:
        flags |= LOAN_CLOSED
    out.scheduled_minor = scheduled
    out.arrears_principal_minor = <uint32_t>arrears_principal
    out.arrears_interest_minor = <uint32_t>arrears_interest
    out.penalty_minor = <uint32_t>penalty
    out.fallen_due = <uint16_t>fallen_due
    out.next_due_day = <uint16_t>due_day
    out.overdue_since = <uint16_t>overdue_since
    out.penalty_through = <uint16_t>penalty_through
    out.segment = row.segment
    out.flags = flags
    out.collected_day = <uint16_t>day  # 5.
    return True


# --- what the call takes from each repayment account ----------------------------------

cdef inline Taken *taken_entry(Taken *table, uint64_t mask, uint32_t slot) noexcept nogil:
    """The slot's entry, or the empty entry where it would go. Only a loan that takes
    money claims one (`slot_plus_one` set then): at most count_max of the table's
    2 * count_max or more entries are ever used, so a probe always ends."""
    cdef uint64_t position = (<uint64_t>slot * <uint64_t>0x9E3779B97F4A7C15) >> 32
    position &= mask
    while table[position].slot_plus_one != 0 and table[position].slot_plus_one != slot + 1:
        position = (position + 1) & mask
    return &table[position]


cdef inline int64_t account_available(const Account *accounts, const Pending *pendings,
                                      int64_t account_count, uint32_t slot) noexcept nogil:
    """What an account can pay: posted credits - posted debits - pending debits, >= 0;
    0 for an account that is not active (a frozen or closed account is not debited)."""
    cdef const Account *account
    cdef int64_t balance
    if slot >= account_count:
        return 0
    account = &accounts[slot]
    if account.status != STATUS_ACTIVE:
        return 0
    balance = account.credits_posted - account.debits_posted
    if account.internal & INTERNAL_HAS_PENDING:
        balance -= pendings[slot].debits_pending
    return balance if balance > 0 else 0


cdef inline void transfer_fill(Transfer *out, const Account *loan, const Account *repayment,
                               int64_t day, uint64_t funding_id_lo, int64_t amount,
                               uint8_t channel) noexcept nogil:
    """ledger.loan_book.collection_transfer."""
    memset(out, 0, TRANSFER_SIZE)
    out.id_lo = loan.id_lo ^ (loan.id_hi * ID_MIX)
    out.id_hi = (ID_TAG << 40) | <uint64_t>day
    out.debit_account_id_lo = repayment.id_lo
    out.debit_account_id_hi = repayment.id_hi
    out.credit_account_id_lo = funding_id_lo
    out.amount = amount
    out.ledger = loan.ledger
    out.code = CODE_LOAN_REPAYMENT
    out.channel = channel
    out.user_data = <uint64_t>day


def collect(int64_t day, const unsigned char[::1] terms, int64_t start, int64_t count_max,
            unsigned char[::1] transfers_out, unsigned char[::1] writes_out,
            int64_t[::1] parts_out, const unsigned char[::1] accounts,
            const unsigned char[::1] pending, const unsigned char[::1] deposits,
            int64_t[::1] meta, uint64_t funding_id_lo, uint8_t channel):
    """The day-end collection of `day` over the terms entries from `start`, until
    `count_max` loans were touched or the table ends (ledger/loan_book.py, steps 1-5).

    Writes the transfers (128 bytes each) to `transfers_out`, the row writes (64 bytes:
    DEPOSIT_WRITE) to `writes_out`, and per write 4 int64 to `parts_out`: the index of
    its transfer (-1: none), principal, interest and penalty paid. A pure read of the
    tables. Returns (transfers, writes, index to continue from, entries skipped because
    the account at their slot is not their loan). ValueError for a buffer too small, or
    for an entry out of range or out of (slot, segment) order (nothing is returned).
    """
    cdef int64_t entry_count = terms.shape[0] // TERMS_SIZE
    cdef int64_t account_count, capacity, index, written = 0, transfer_count = 0, skipped = 0
    cdef int64_t error_index = -1, available, taken, table_size = 1
    cdef int64_t paid[3]
    cdef uint64_t mask
    cdef const LoanTerms *entries
    cdef const LoanTerms *e
    cdef const LoanTerms *previous
    cdef const Account *account_table
    cdef const Account *loan
    cdef const Pending *pendings
    cdef const LoanRow *rows
    cdef const LoanRow *row
    cdef Transfer *transfer_records
    cdef RowWrite *write_records
    cdef RowWrite *write
    cdef Taken *taken_table
    cdef Taken *slot_taken
    cdef LoanRow new_row
    if terms.shape[0] % TERMS_SIZE:
        raise ValueError("terms table must be whole 48-byte entries")
    if not 0 < day <= DAY_MAX or count_max < 1 or not 0 <= start <= entry_count:
        raise ValueError(f"collection of day {day} from entry {start}, count_max {count_max}")
    if meta.shape[0] < META_SIZE:
        raise ValueError("meta must hold META_SIZE int64")
    account_count = meta[META_ACCOUNT_COUNT]
    capacity = meta[META_ACCOUNT_CAPACITY]
    if capacity < 1 or not 0 <= account_count <= capacity:
        raise ValueError("account count past the capacity")
    if (accounts.shape[0] < capacity * ACCOUNT_SIZE
            or pending.shape[0] < capacity * PENDING_SIZE
            or deposits.shape[0] < capacity * DEPOSIT_SIZE):
        raise ValueError("account, pending or deposit table smaller than the account capacity")
    if (transfers_out.shape[0] < count_max * TRANSFER_SIZE
            or writes_out.shape[0] < count_max * WRITE_SIZE
            or parts_out.shape[0] < count_max * 4):
        raise ValueError("output buffers smaller than count_max transfers, writes and parts")
    if start == entry_count:
        return 0, 0, entry_count, 0
    while table_size < 2 * count_max:
        table_size *= 2
    mask = <uint64_t>(table_size - 1)
    taken_table = <Taken *>calloc(table_size, sizeof(Taken))
    if taken_table == NULL:
        raise MemoryError()
    entries = <const LoanTerms *>&terms[0]
    account_table = <const Account *>&accounts[0]
    pendings = <const Pending *>&pending[0]
    rows = <const LoanRow *>&deposits[0]
    transfer_records = <Transfer *>&transfers_out[0]
    write_records = <RowWrite *>&writes_out[0]
    index = start
    with nogil:
        while index < entry_count:
            if written == count_max:
                break
            e = &entries[index]
            if not terms_valid(e):
                error_index = index
                break
            if index > start:
                previous = &entries[index - 1]
                if (previous.slot > e.slot
                        or (previous.slot == e.slot and previous.segment >= e.segment)):
                    error_index = index
                    break
            index += 1
            if e.slot >= account_count:
                skipped += 1
                continue
            loan = &account_table[e.slot]
            if loan.id_lo != e.loan_id_lo or loan.kind != KIND_LOAN:
                skipped += 1
                continue
            row = &rows[e.slot]
            if row.segment != e.segment:
                continue
            available = account_available(account_table, pendings, account_count,
                                          e.repayment_slot)
            slot_taken = NULL
            if available > 0:
                slot_taken = taken_entry(taken_table, mask, e.repayment_slot)
                available -= slot_taken.amount
                if available < 0:
                    available = 0
            taken = 0
            paid[0] = 0
            paid[1] = 0
            paid[2] = 0
            if not collect_one(day, e, row, available, &new_row, &taken, paid):
                continue
            write = &write_records[written]
            memset(write, 0, WRITE_SIZE)
            write.account_id_lo = loan.id_lo
            write.account_id_hi = loan.id_hi
            write.row = new_row
            parts_out[4 * written] = -1
            if taken > 0:
                slot_taken.slot_plus_one = e.repayment_slot + 1
                slot_taken.amount += taken
                transfer_fill(&transfer_records[transfer_count], loan,
                              &account_table[e.repayment_slot], day, funding_id_lo, taken,
                              channel)
                write.transfer_index = <uint32_t>transfer_count
                parts_out[4 * written] = transfer_count
                transfer_count += 1
            else:
                write.transfer_index = WRITE_ALWAYS
            parts_out[4 * written + 1] = paid[PART_PRINCIPAL]
            parts_out[4 * written + 2] = paid[PART_INTEREST]
            parts_out[4 * written + 3] = paid[PART_PENALTY]
            written += 1
    free(taken_table)
    if error_index >= 0:
        raise ValueError(
            f"terms entry {error_index}: out of range, or not after the entry before it in "
            "(slot, segment) order"
        )
    return transfer_count, written, index, skipped


# --- row writes of a POST_WITH_ROWS entry ---------------------------------------------

cdef inline uint64_t hash_id(uint64_t lo, uint64_t hi) noexcept nogil:
    """cext/ledger_kernel.pyx `hash_id` (ledger.kernel.hash_id)."""
    cdef uint64_t h = lo * <uint64_t>0x9E3779B97F4A7C15 + hi * <uint64_t>0xC2B2AE3D27D4EB4F
    h ^= h >> 31
    h *= <uint64_t>0xD6E8FEB86659FD93
    h ^= h >> 32
    return h


cdef inline uint32_t account_find(const Account *accounts, const uint32_t *index,
                                  uint64_t index_mask, uint32_t slot_bits, uint64_t lo,
                                  uint64_t hi) noexcept nogil:
    """cext/ledger_kernel.pyx `account_find`: the account index's probe, read only."""
    cdef uint64_t h = hash_id(lo, hi)
    cdef uint64_t position = h & index_mask & ~(<uint64_t>15)
    cdef uint32_t tag = 0 if slot_bits == 32 else <uint32_t>(h >> (32 + slot_bits))
    cdef uint32_t slot_mask = <uint32_t>((<uint64_t>1 << slot_bits) - 1)
    cdef uint32_t value, slot
    while True:
        value = index[position]
        if value == 0:
            return SLOT_NONE
        if (value >> slot_bits) == tag:
            slot = (value & slot_mask) - 1
            if accounts[slot].id_lo == lo and accounts[slot].id_hi == hi:
                return slot
        position = (position + 1) & index_mask


def write_rows(const unsigned char[::1] rows, const unsigned char[::1] results,
               const unsigned char[::1] accounts, const unsigned char[::1] account_index,
               unsigned char[::1] deposits, int64_t[::1] meta, unsigned char[::1] dirty):
    """Write each DEPOSIT_WRITE of `rows` whose transfer's result (in `results`, one byte
    a transfer of the entry) is OK, or that is unconditional, to its account's deposit
    row, in order, marking the slot for the store; a write naming an unknown account, or
    a transfer past `results`, is skipped (ReferenceLedger.post_with_rows). Returns the
    rows written."""
    cdef int64_t count = rows.shape[0] // WRITE_SIZE
    cdef int64_t result_count = results.shape[0]
    cdef int64_t account_count, capacity, log_size, dirty_count = 0, i, written = 0
    cdef uint64_t index_mask
    cdef uint32_t slot_bits, slot, transfer_index
    cdef bint dirty_enabled
    cdef const RowWrite *records
    cdef const Account *account_table
    cdef const uint32_t *index_table
    cdef const uint8_t *result_bytes = NULL
    cdef unsigned char *deposit_bytes
    cdef uint32_t *dirty_accounts = NULL
    cdef uint8_t *dirty_marks = NULL
    if rows.shape[0] % WRITE_SIZE:
        raise ValueError("row writes must be whole 64-byte records")
    if meta.shape[0] < META_SIZE:
        raise ValueError("meta must hold META_SIZE int64")
    account_count = meta[META_ACCOUNT_COUNT]
    capacity = meta[META_ACCOUNT_CAPACITY]
    index_mask = <uint64_t>meta[META_ACCOUNT_INDEX_MASK]
    slot_bits = <uint32_t>meta[META_ACCOUNT_SLOT_BITS]
    if not 0 <= account_count <= capacity or accounts.shape[0] < capacity * ACCOUNT_SIZE:
        raise ValueError("account table smaller than its capacity")
    if deposits.shape[0] < capacity * DEPOSIT_SIZE:
        raise ValueError("deposit table smaller than the account capacity")
    if account_index.shape[0] != <int64_t>(index_mask + 1) * 4 or index_mask < 15:
        raise ValueError("account index size must be (mask + 1) * 4, at least 16 entries")
    if slot_bits < 1 or slot_bits > 32:
        raise ValueError("account slot bits must be 1..32")
    dirty_enabled = meta[META_DIRTY_ENABLED] != 0
    if dirty_enabled:
        log_size = meta[META_LOG_MASK] + 1
        if dirty.shape[0] < capacity * 5 + log_size * 8:
            raise ValueError("dirty table smaller than accounts * 5 + log size * 8")
        dirty_accounts = <uint32_t *>&dirty[log_size * 8]
        dirty_marks = <uint8_t *>&dirty[log_size * 8 + capacity * 4]
        dirty_count = meta[META_DIRTY_ACCOUNT_COUNT]
    if count == 0 or account_count == 0:
        return 0
    records = <const RowWrite *>&rows[0]
    account_table = <const Account *>&accounts[0]
    index_table = <const uint32_t *>&account_index[0]
    deposit_bytes = &deposits[0]
    if result_count:
        result_bytes = &results[0]
    with nogil:
        for i in range(count):
            transfer_index = records[i].transfer_index
            if transfer_index != WRITE_ALWAYS and (
                    transfer_index >= result_count or result_bytes[transfer_index] != 0):
                continue
            slot = account_find(account_table, index_table, index_mask, slot_bits,
                                records[i].account_id_lo, records[i].account_id_hi)
            if slot == SLOT_NONE:
                continue
            memcpy(deposit_bytes + <int64_t>slot * DEPOSIT_SIZE, &records[i].row, DEPOSIT_SIZE)
            written += 1
            if dirty_enabled and not dirty_marks[slot]:
                dirty_marks[slot] = 1
                dirty_accounts[dirty_count] = slot
                dirty_count += 1
    if dirty_enabled:
        meta[META_DIRTY_ACCOUNT_COUNT] = dirty_count
    return written


STRUCT_SIZES = {
    "LoanRow": sizeof(LoanRow), "LoanTerms": sizeof(LoanTerms), "RowWrite": sizeof(RowWrite),
    "Account": sizeof(Account), "Transfer": sizeof(Transfer), "Pending": sizeof(Pending),
}
