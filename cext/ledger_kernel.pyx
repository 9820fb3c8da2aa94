# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Ledger and limit kernels: validate and post whole batches with the GIL released.

The plain-Python twin is ledger/reference.py (with limits/reference.py); the
functions here carry the same names and make the same checks in the same
order. All state lives in caller-owned buffers (see ledger/kernel.py); each
kernel checks its arguments once, then runs `with nogil`.

Memory layout and the prefetch pipeline: while transfer i is applied, the ids
of transfer i + 2 * PIPELINE_DISTANCE are hashed and their index buckets
prefetched, and the candidate account slots of transfer i + PIPELINE_DISTANCE
are read from the (now cached) account index and their account records,
counters and channel counters prefetched; transfers are applied strictly in
order. Interleaving keeps memory busy while the CPU validates and posts. Prefetching is only a hint:
application re-checks every candidate, so the result never depends on it.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #define TALLY_PREFETCH(p) __builtin_prefetch((const void *)(p), 1, 3)
    """
    void TALLY_PREFETCH(const void *p) noexcept nogil

cdef uint32_t SLOT_NONE = 0xFFFFFFFF
cdef int64_t INT64_MAX_ = 0x7FFFFFFFFFFFFFFF
cdef uint64_t UINT64_MAX_ = 0xFFFFFFFFFFFFFFFF
cdef uint64_t NS_PER_S = 1000000000
cdef int64_t PIPELINE_DISTANCE = 16
cdef int KIND_CUSTOMER_MAX = KIND_LOAN
# Transfer index entries of the failure ring carry this bit on their seq (kept
# clear of the sign bit: `transfer_seq` answers a plain int64, -1 for none).
cdef int64_t FAILED_BIT = <int64_t>1 << 62


cdef struct State:
    Account *accounts
    Pending *pending
    uint32_t *account_index
    uint64_t account_index_mask
    uint32_t account_slot_bits
    uint32_t account_slot_mask
    int64_t account_count
    int64_t account_capacity
    Transfer *log
    uint64_t log_mask
    int64_t log_tail
    int64_t log_count
    Transfer *failed  # the failure ring: failed transfers that consumed their id
    uint64_t failed_mask
    int64_t failed_tail
    int64_t failed_count
    int64_t *channel_live  # per channel: records in the log window, records in the failure ring
    const uint16_t *log_quotas  # per channel: its share of each, in permille (0 = no quota)
    IndexEntry *transfer_index
    uint64_t transfer_index_mask
    int64_t transfer_index_count
    HeapEntry *heap
    int64_t heap_size
    int64_t heap_capacity
    ChannelEntry *channel_counters
    uint64_t channel_mask
    int64_t channel_table_full
    const Product *products
    int64_t product_count
    const ChannelRule *channels
    const KindRule *kinds
    const BankRule *bank
    uint64_t *customers  # one per account slot: the holder's customer number, 0 = none
    int64_t last_day
    bint dirty_enabled  # a store wants the slots and seqs each entry changed
    uint8_t *dirty_marks  # one per account slot
    uint32_t *dirty_accounts
    int64_t dirty_account_count
    int64_t *dirty_transfers  # seqs of existing records changed (not new ones)
    int64_t dirty_transfer_count
    int64_t dirty_transfer_capacity
    int64_t dirty_overflow
    int64_t year_first_day  # first day of last_day's year: same_year() without division


cdef struct Undo:
    uint32_t slots[2]
    Account accounts[2]
    Pending pending[2]
    int64_t target_seq
    Transfer target
    int64_t tally_count
    int64_t tally_positions[4]
    ChannelEntry tally_entries[4]
    uint64_t id_lo
    uint64_t id_hi


cdef struct Chain:
    Undo *undo
    int64_t undo_count
    HeapEntry *deferred
    int64_t deferred_count


cdef struct Tallies:
    # The day counters one debit consumes (or one released hold gives back), in check
    # order: the channel's debit cap, its credit cap, the customer's cap, strong auth.
    int64_t count
    uint64_t keys[4]
    int64_t caps[4]
    uint8_t results[4]
    int64_t used[4]


# --- state loading ------------------------------------------------------------

cdef int state_load(
    State *s, unsigned char[::1] accounts, unsigned char[::1] pending,
    unsigned char[::1] account_index, unsigned char[::1] log, unsigned char[::1] failed,
    unsigned char[::1] transfer_index, unsigned char[::1] heap,
    unsigned char[::1] channel_counters, unsigned char[::1] channel_live, unsigned char[::1] dirty,
    unsigned char[::1] customers, const unsigned char[::1] products,
    const unsigned char[::1] channels, const unsigned char[::1] log_quotas, int64_t[::1] meta,
) except -1:
    if meta.shape[0] < META_SIZE:
        raise ValueError("meta must hold META_SIZE int64")
    s.account_count = meta[META_ACCOUNT_COUNT]
    s.account_capacity = meta[META_ACCOUNT_CAPACITY]
    s.account_index_mask = <uint64_t>meta[META_ACCOUNT_INDEX_MASK]
    s.account_slot_bits = <uint32_t>meta[META_ACCOUNT_SLOT_BITS]
    if s.account_slot_bits < 1 or s.account_slot_bits > 32:
        raise ValueError("account slot bits must be 1..32")
    s.account_slot_mask = <uint32_t>((<uint64_t>1 << s.account_slot_bits) - 1)
    s.log_tail = meta[META_LOG_TAIL]
    s.log_count = meta[META_LOG_COUNT]
    s.log_mask = <uint64_t>meta[META_LOG_MASK]
    s.failed_tail = meta[META_FAILED_TAIL]
    s.failed_count = meta[META_FAILED_COUNT]
    s.failed_mask = <uint64_t>meta[META_FAILED_MASK]
    s.transfer_index_mask = <uint64_t>meta[META_TRANSFER_INDEX_MASK]
    s.transfer_index_count = meta[META_TRANSFER_INDEX_COUNT]
    s.heap_size = meta[META_HEAP_SIZE]
    s.heap_capacity = meta[META_HEAP_CAPACITY]
    s.channel_mask = <uint64_t>meta[META_CHANNEL_MASK]
    s.last_day = meta[META_LAST_DAY]
    s.product_count = meta[META_PRODUCT_COUNT]
    s.channel_table_full = meta[META_CHANNEL_TABLE_FULL]
    if accounts.shape[0] < s.account_capacity * ACCOUNT_SIZE or s.account_capacity < 1:
        raise ValueError("account table smaller than its capacity")
    if <uint64_t>s.account_capacity > <uint64_t>s.account_slot_mask:
        raise ValueError("account capacity does not fit the slot bits")
    if pending.shape[0] < s.account_capacity * PENDING_SIZE:
        raise ValueError("pending table smaller than the account capacity")
    if account_index.shape[0] != <int64_t>(s.account_index_mask + 1) * 4 or s.account_index_mask < 15:
        raise ValueError("account index size must be (mask + 1) * 4, at least 16 entries")
    if log.shape[0] != <int64_t>(s.log_mask + 1) * TRANSFER_SIZE:
        raise ValueError("log size must be (mask + 1) * TRANSFER_SIZE")
    if failed.shape[0] != <int64_t>(s.failed_mask + 1) * TRANSFER_SIZE or s.failed_mask < 3:
        raise ValueError("failure ring size must be (mask + 1) * TRANSFER_SIZE, at least 4 records")
    if transfer_index.shape[0] != <int64_t>(s.transfer_index_mask + 1) * INDEX_ENTRY_SIZE or s.transfer_index_mask < 3:
        raise ValueError("transfer index size must be (mask + 1) * INDEX_ENTRY_SIZE, at least 4 entries")
    if channel_live.shape[0] != CHANNEL_COUNT * CHANNEL_LIVE_SIZE:
        raise ValueError("channel live counts must hold 256 rows")
    if log_quotas.shape[0] != CHANNEL_COUNT * LOG_QUOTA_SIZE:
        raise ValueError("log quota table must hold 256 rows")
    if heap.shape[0] < s.heap_capacity * HEAP_ENTRY_SIZE or s.heap_capacity < 1:
        raise ValueError("heap smaller than its capacity")
    if channel_counters.shape[0] != <int64_t>(s.channel_mask + 1) * CHANNEL_ENTRY_SIZE or s.channel_mask < 3:
        raise ValueError("channel counters size must be (mask + 1) * CHANNEL_ENTRY_SIZE, at least 4 entries")
    if products.shape[0] != s.product_count * PRODUCT_SIZE or s.product_count < 1:
        raise ValueError("product table size must be product_count * PRODUCT_SIZE")
    if channels.shape[0] != RULES_SIZE:
        raise ValueError("rule table must hold 256 channel rows, 32 kind rows and the bank row")
    if customers.shape[0] < s.account_capacity * CUSTOMER_SIZE:
        raise ValueError("customer table smaller than the account capacity")
    s.dirty_enabled = meta[META_DIRTY_ENABLED] != 0
    s.dirty_account_count = meta[META_DIRTY_ACCOUNT_COUNT]
    s.dirty_transfer_count = meta[META_DIRTY_TRANSFER_COUNT]
    s.dirty_overflow = meta[META_DIRTY_OVERFLOW]
    s.dirty_transfer_capacity = <int64_t>(s.log_mask + 1)
    if s.dirty_enabled:
        if dirty.shape[0] < s.account_capacity * 5 + s.dirty_transfer_capacity * 8:
            raise ValueError("dirty table smaller than accounts * 5 + log size * 8")
        s.dirty_transfers = <int64_t *>&dirty[0]
        s.dirty_accounts = <uint32_t *>&dirty[s.dirty_transfer_capacity * 8]
        s.dirty_marks = <uint8_t *>&dirty[s.dirty_transfer_capacity * 8 + s.account_capacity * 4]
    s.accounts = <Account *>&accounts[0]
    s.pending = <Pending *>&pending[0]
    s.account_index = <uint32_t *>&account_index[0]
    s.log = <Transfer *>&log[0]
    s.failed = <Transfer *>&failed[0]
    s.transfer_index = <IndexEntry *>&transfer_index[0]
    s.heap = <HeapEntry *>&heap[0]
    s.channel_counters = <ChannelEntry *>&channel_counters[0]
    s.channel_live = <int64_t *>&channel_live[0]
    s.products = <const Product *>&products[0]
    s.channels = <const ChannelRule *>&channels[0]
    s.log_quotas = <const uint16_t *>&log_quotas[0]
    s.kinds = <const KindRule *>&channels[CHANNEL_COUNT * CHANNEL_SIZE]
    s.bank = <const BankRule *>&channels[
        CHANNEL_COUNT * CHANNEL_SIZE + KIND_RULE_COUNT * KIND_RULE_SIZE]
    s.customers = <uint64_t *>&customers[0]
    return 0


cdef void state_store(State *s, int64_t[::1] meta) noexcept:
    meta[META_ACCOUNT_COUNT] = s.account_count
    meta[META_LOG_TAIL] = s.log_tail
    meta[META_LOG_COUNT] = s.log_count
    meta[META_FAILED_TAIL] = s.failed_tail
    meta[META_FAILED_COUNT] = s.failed_count
    meta[META_TRANSFER_INDEX_COUNT] = s.transfer_index_count
    meta[META_HEAP_SIZE] = s.heap_size
    meta[META_LAST_DAY] = s.last_day
    meta[META_CHANNEL_TABLE_FULL] = s.channel_table_full
    meta[META_DIRTY_ACCOUNT_COUNT] = s.dirty_account_count
    meta[META_DIRTY_TRANSFER_COUNT] = s.dirty_transfer_count
    meta[META_DIRTY_OVERFLOW] = s.dirty_overflow


# --- hashing and indexes ------------------------------------------------------

cdef inline uint64_t hash_id(uint64_t lo, uint64_t hi) noexcept nogil:
    cdef uint64_t h = lo * <uint64_t>0x9E3779B97F4A7C15 + hi * <uint64_t>0xC2B2AE3D27D4EB4F
    h ^= h >> 31
    h *= <uint64_t>0xD6E8FEB86659FD93
    h ^= h >> 32
    return h


# The account index is 4 bytes an entry: `slot + 1` in the low `account_slot_bits`
# bits, and the top bits of the id's hash as a tag in the rest. A probe whose tag
# differs is rejected inside the index's cache line, without reading the account.

cdef inline uint32_t account_tag(State *s, uint64_t h) noexcept nogil:
    if s.account_slot_bits == 32:
        return 0
    return <uint32_t>(h >> (32 + s.account_slot_bits))


cdef inline uint64_t account_home(State *s, uint64_t h) noexcept nogil:
    """Probing starts at the first entry of a cache line (16 entries), so a lookup
    almost always settles within the one line the pipeline prefetched."""
    return h & s.account_index_mask & ~(<uint64_t>15)


cdef inline uint32_t account_find(State *s, uint64_t lo, uint64_t hi, uint64_t h) noexcept nogil:
    cdef uint64_t position = account_home(s, h)
    cdef uint32_t tag = account_tag(s, h)
    cdef uint32_t value, slot
    while True:
        value = s.account_index[position]
        if value == 0:
            return SLOT_NONE
        if (value >> s.account_slot_bits) == tag:
            slot = (value & s.account_slot_mask) - 1
            if s.accounts[slot].id_lo == lo and s.accounts[slot].id_hi == hi:
                return slot
        position = (position + 1) & s.account_index_mask


cdef inline uint32_t account_candidate(State *s, uint64_t h) noexcept nogil:
    """The first slot whose tag matches: the account, unless the index says otherwise."""
    cdef uint64_t position = account_home(s, h)
    cdef uint32_t tag = account_tag(s, h)
    cdef uint32_t value
    while True:
        value = s.account_index[position]
        if value == 0:
            return SLOT_NONE
        if (value >> s.account_slot_bits) == tag:
            return (value & s.account_slot_mask) - 1
        position = (position + 1) & s.account_index_mask


cdef inline void account_index_insert(State *s, uint32_t slot, uint64_t h) noexcept nogil:
    cdef uint64_t position = account_home(s, h)
    while s.account_index[position] != 0:
        position = (position + 1) & s.account_index_mask
    if s.account_slot_bits == 32:
        s.account_index[position] = slot + 1
    else:
        s.account_index[position] = (account_tag(s, h) << s.account_slot_bits) | (slot + 1)


# The transfer index is 16 bytes an entry (four to a cache line): the id's
# 64-bit hash as a fingerprint and the log sequence number. A fingerprint match
# is confirmed against the id in the log record; a new id (the common case)
# is settled inside the index.

cdef inline uint64_t fingerprint_of(uint64_t h) noexcept nogil:
    return h if h != 0 else 1


cdef inline uint64_t transfer_home(State *s, uint64_t fingerprint) noexcept nogil:
    """Probing starts at the first entry of a cache line (4 entries): a new id,
    the common case, is settled within the one line the pipeline prefetched."""
    return fingerprint & s.transfer_index_mask & ~(<uint64_t>3)


cdef inline Transfer *log_at(State *s, int64_t seq) noexcept nogil:
    return &s.log[<uint64_t>seq & s.log_mask]


cdef inline Transfer *failed_at(State *s, int64_t seq) noexcept nogil:
    return &s.failed[<uint64_t>seq & s.failed_mask]


cdef inline Transfer *record_of(State *s, int64_t seq) noexcept nogil:
    """The record an index entry names: a log seq, or a failure ring seq | FAILED_BIT."""
    if seq & FAILED_BIT:
        return failed_at(s, seq & ~FAILED_BIT)
    return log_at(s, seq)


cdef inline int64_t transfer_find(State *s, uint64_t lo, uint64_t hi, uint64_t h) noexcept nogil:
    cdef uint64_t fingerprint = fingerprint_of(h)
    cdef uint64_t position = transfer_home(s, fingerprint)
    cdef IndexEntry *entry
    cdef Transfer *record
    while True:
        entry = &s.transfer_index[position]
        if entry.fingerprint == 0:
            return -1
        if entry.fingerprint == fingerprint:
            record = record_of(s, <int64_t>entry.seq)
            if record.id_lo == lo and record.id_hi == hi:
                return <int64_t>entry.seq
        position = (position + 1) & s.transfer_index_mask


cdef inline void transfer_index_insert(State *s, uint64_t lo, uint64_t hi, uint64_t seq) noexcept nogil:
    cdef uint64_t fingerprint = fingerprint_of(hash_id(lo, hi))
    cdef uint64_t position = transfer_home(s, fingerprint)
    while s.transfer_index[position].fingerprint != 0:
        position = (position + 1) & s.transfer_index_mask
    s.transfer_index[position].fingerprint = fingerprint
    s.transfer_index[position].seq = seq
    s.transfer_index_count += 1


cdef void transfer_index_delete(State *s, uint64_t lo, uint64_t hi, uint64_t seq) noexcept nogil:
    """Backward-shift deletion: linear probing stays tombstone-free."""
    cdef uint64_t mask = s.transfer_index_mask
    cdef uint64_t fingerprint = fingerprint_of(hash_id(lo, hi))
    cdef uint64_t hole = transfer_home(s, fingerprint)
    cdef uint64_t probe, home
    cdef IndexEntry *entry
    while not (s.transfer_index[hole].fingerprint == fingerprint and s.transfer_index[hole].seq == seq):
        hole = (hole + 1) & mask
    probe = hole
    while True:
        probe = (probe + 1) & mask
        entry = &s.transfer_index[probe]
        if entry.fingerprint == 0:
            break
        home = transfer_home(s, entry.fingerprint)
        # The entry may move into the hole only if its home is not cyclically in (hole, probe].
        if hole <= probe:
            if hole < home and home <= probe:
                continue
        else:
            if hole < home or home <= probe:
                continue
        s.transfer_index[hole] = entry[0]
        hole = probe
    s.transfer_index[hole].fingerprint = 0
    s.transfer_index[hole].seq = 0
    s.transfer_index_count -= 1


# --- calendar and limits (twin: limits/reference.py) ----------------------------

cdef inline int64_t year_of_day(int64_t day) noexcept nogil:
    """Civil year of a day number (days since 2000-01-01); H. Hinnant's civil_from_days."""
    cdef int64_t z = day + 10957 + 719468
    cdef int64_t era = z // 146097
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    cdef int64_t month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0)


cdef int64_t first_day_of_year(int64_t day) noexcept nogil:
    cdef int64_t year = year_of_day(day)
    while day > 0 and year_of_day(day - 1) == year:
        day -= 1
    return day


cdef inline void state_set_day(State *s, int64_t day) noexcept nogil:
    s.last_day = day
    s.year_first_day = first_day_of_year(day)


cdef inline bint same_year(State *s, int64_t day_earlier) noexcept nogil:
    """year_of_day(day_earlier) == year_of_day(s.last_day), for day_earlier <= s.last_day."""
    return day_earlier >= s.year_first_day


cdef inline Counters counters_effective(State *s, Counters *counters, int64_t counters_day,
                                        int64_t day) noexcept nogil:
    cdef Counters effective
    if counters_day == day:
        return counters[0]
    effective.inflow_daily = 0
    effective.outflow_daily = 0
    if same_year(s, counters_day):
        effective.inflow_yearly = counters.inflow_yearly
        effective.outflow_yearly = counters.outflow_yearly
    else:
        effective.inflow_yearly = 0
        effective.outflow_yearly = 0
    return effective


cdef inline bint exceeds_cap(int64_t used, int64_t cap, int64_t amount) noexcept nogil:
    if cap == 0:
        return False
    if used >= 0:
        return amount > cap - used
    return amount + used > cap


cdef inline int32_t quota_take_back(int32_t used, int64_t amount) noexcept nogil:
    return <int32_t>(used - (amount if amount < used else used))


cdef inline void quota_restore(State *s, Counters *effective, bint outflow, int64_t amount,
                               int64_t day_original, int64_t day) noexcept nogil:
    """Give back `amount` of a bucket consumed on `day_original`, seen on `day`."""
    if day_original == day:
        if outflow:
            effective.outflow_daily = quota_take_back(effective.outflow_daily, amount)
            effective.outflow_yearly = quota_take_back(effective.outflow_yearly, amount)
        else:
            effective.inflow_daily = quota_take_back(effective.inflow_daily, amount)
            effective.inflow_yearly = quota_take_back(effective.inflow_yearly, amount)
    elif same_year(s, day_original):
        if outflow:
            effective.outflow_yearly = quota_take_back(effective.outflow_yearly, amount)
        else:
            effective.inflow_yearly = quota_take_back(effective.inflow_yearly, amount)


cdef inline bint cash_allowed(Account *account) noexcept nogil:
    if account.kind == KIND_CLASS_III:
        return False
    if account.kind == KIND_CLASS_II:
        return (account.flags & ACCOUNT_FACE_TO_FACE_VERIFIED) != 0
    return True


cdef inline bint code_in(uint32_t codes, uint16_t code) noexcept nogil:
    return ((codes >> code) & 1) != 0


cdef inline int transfer_counted(State *s, uint16_t code, Account *debit, Account *credit,
                                 uint32_t debit_slot, uint32_t credit_slot) noexcept nogil:
    cdef int counted = 0
    if not code_in(s.bank.counted_codes, code):
        return 0
    if (debit.kind == KIND_CLASS_II or debit.kind == KIND_CLASS_III) and debit.bound_slot != credit_slot:
        counted |= COUNTED_DEBIT_OUTFLOW
    if (credit.kind == KIND_CLASS_II or credit.kind == KIND_CLASS_III) and credit.bound_slot != debit_slot:
        counted |= COUNTED_CREDIT_INFLOW
    return counted


cdef inline uint64_t channel_key(uint32_t slot, uint8_t channel) noexcept nogil:
    return ((<uint64_t>slot + 1) << 8) | channel


cdef inline uint64_t account_counter_key(uint64_t space, uint32_t slot,
                                        uint8_t channel) noexcept nogil:
    return (space << 40) | ((<uint64_t>slot + 1) << 8) | channel


cdef inline uint64_t customer_counter_key(uint64_t space, uint64_t customer) noexcept nogil:
    return (space << 40) | customer


cdef inline void tally_add(Tallies *tallies, uint64_t key, int64_t cap,
                           uint8_t result) noexcept nogil:
    tallies.keys[tallies.count] = key
    tallies.caps[tallies.count] = cap
    tallies.results[tallies.count] = result
    tallies.used[tallies.count] = 0
    tallies.count += 1


cdef inline void tallies_of(State *s, uint8_t channel, uint16_t code, uint32_t debit_slot,
                            uint32_t credit_slot, Tallies *tallies) noexcept nogil:
    """The day counters a fresh transfer on these accounts consumes under the rules in force."""
    cdef const ChannelRule *rule = &s.channels[channel]
    cdef Account *debit = &s.accounts[debit_slot]
    cdef uint64_t customer
    tallies.count = 0
    if rule.daily_cap_minor != 0 and debit.kind <= KIND_CUSTOMER_MAX:
        tally_add(tallies, account_counter_key(SPACE_CHANNEL_DEBIT, debit_slot, channel),
                  rule.daily_cap_minor, TR_EXCEEDS_CHANNEL_DAILY_CAP)
    if (rule.inflow_daily_cap_minor != 0 and s.accounts[credit_slot].kind <= KIND_CUSTOMER_MAX
            and code_in(s.bank.inflow_codes, code)):
        tally_add(tallies, account_counter_key(SPACE_CHANNEL_CREDIT, credit_slot, channel),
                  rule.inflow_daily_cap_minor, TR_EXCEEDS_CHANNEL_DAILY_INFLOW_CAP)
    if debit.kind > KIND_CUSTOMER_MAX:
        return
    customer = s.customers[debit_slot]
    if (s.bank.customer_daily_cap_minor != 0 and customer != 0
            and not (rule.options & CHANNEL_CUSTOMER_CAP_EXEMPT)):
        tally_add(tallies, customer_counter_key(SPACE_CUSTOMER_DEBIT, customer),
                  s.bank.customer_daily_cap_minor, TR_EXCEEDS_CUSTOMER_DAILY_CAP)
    if s.bank.strong_auth_daily_minor != 0 and not (rule.options & CHANNEL_STRONG_AUTH_EXEMPT):
        if customer != 0:
            tally_add(tallies, customer_counter_key(SPACE_STRONG_CUSTOMER, customer),
                      s.bank.strong_auth_daily_minor, TR_STRONG_AUTH_REQUIRED)
        else:
            tally_add(tallies, account_counter_key(SPACE_STRONG_ACCOUNT, debit_slot, 0),
                      s.bank.strong_auth_daily_minor, TR_STRONG_AUTH_REQUIRED)


cdef inline uint64_t channel_home(State *s, uint64_t key) noexcept nogil:
    return hash_id(key, 0x5A17) & s.channel_mask & ~(<uint64_t>3)


cdef int64_t channel_position(State *s, uint64_t key, int64_t day) noexcept nogil:
    """Position of today's entry for `key`, or where it would go; -1 if the table is full.

    Entries from earlier days count as free: today's entries never go stale
    within the day, so today's entry for a key always lies before the first
    stale or empty position of its probe sequence.
    """
    cdef uint64_t position = channel_home(s, key)
    cdef uint64_t probes = 0
    cdef uint64_t key_day
    while probes <= s.channel_mask:
        key_day = s.channel_counters[position].key_day
        if key_day == 0 or <int64_t>(key_day & 0xFFFF) != day or (key_day >> 16) == key:
            return <int64_t>position
        position = (position + 1) & s.channel_mask
        probes += 1
    return -1


cdef inline int64_t channel_used_at(State *s, int64_t position, uint64_t key, int64_t day) noexcept nogil:
    cdef ChannelEntry *entry = &s.channel_counters[position]
    if entry.key_day == ((key << 16) | <uint64_t>day):
        return entry.used
    return 0


cdef inline bint channel_restorable(Transfer *target, int64_t day) noexcept nogil:
    """A hold released on the day it was taken gives its day counters back."""
    return (target.flags & TRANSFER_PENDING) != 0 and target.business_day == day


cdef inline void tally_change(State *s, int64_t position, uint64_t key, int64_t day, int64_t used,
                              Undo *undo) noexcept nogil:
    """Set today's counter `key` at `position` to `used`, saving the entry for a rollback."""
    if undo != NULL:
        undo.tally_positions[undo.tally_count] = position
        undo.tally_entries[undo.tally_count] = s.channel_counters[position]
        undo.tally_count += 1
    s.channel_counters[position].key_day = (key << 16) | <uint64_t>day
    s.channel_counters[position].used = used


cdef void release_quota(State *s, Transfer *target, int64_t amount, int64_t day,
                        Undo *undo) noexcept nogil:
    cdef Account *account
    cdef Counters effective
    cdef int64_t position, used, i
    cdef Tallies tallies
    if amount == 0:
        return
    if target.counted & COUNTED_DEBIT_OUTFLOW:
        account = &s.accounts[target.debit_slot]
        effective = counters_effective(s, &account.counters, account.counters_day, day)
        quota_restore(s, &effective, True, amount, target.business_day, day)
        account.counters = effective
        account.counters_day = <uint16_t>day
    if target.counted & COUNTED_CREDIT_INFLOW:
        account = &s.accounts[target.credit_slot]
        effective = counters_effective(s, &account.counters, account.counters_day, day)
        quota_restore(s, &effective, False, amount, target.business_day, day)
        account.counters = effective
        account.counters_day = <uint16_t>day
    if channel_restorable(target, day):
        tallies_of(s, target.channel, target.code, target.debit_slot, target.credit_slot, &tallies)
        for i in range(tallies.count):
            position = channel_position(s, tallies.keys[i], day)
            if position < 0:
                continue
            used = channel_used_at(s, position, tallies.keys[i], day)
            if used != 0:
                tally_change(s, position, tallies.keys[i], day,
                             used - (amount if amount < used else used), undo)


# --- dirty tracking (for stores that write changed rows, e.g. PostgreSQL) ----------

cdef inline void dirty_account(State *s, uint32_t slot) noexcept nogil:
    if s.dirty_enabled and not s.dirty_marks[slot]:
        s.dirty_marks[slot] = 1
        s.dirty_accounts[s.dirty_account_count] = slot
        s.dirty_account_count += 1


cdef inline void dirty_transfer(State *s, int64_t seq) noexcept nogil:
    if s.dirty_enabled:
        if s.dirty_transfer_count < s.dirty_transfer_capacity:
            s.dirty_transfers[s.dirty_transfer_count] = seq
            s.dirty_transfer_count += 1
        else:
            s.dirty_overflow = 1


# --- pending side table --------------------------------------------------------

cdef inline Pending pending_of(State *s, uint32_t slot) noexcept nogil:
    """The account's pending balances; the side table is read only if it has any."""
    cdef Pending none
    if s.accounts[slot].internal & INTERNAL_HAS_PENDING:
        return s.pending[slot]
    none.debits_pending = 0
    none.credits_pending = 0
    return none


cdef inline void pending_release(State *s, uint32_t debit_slot, uint32_t credit_slot,
                                 int64_t amount) noexcept nogil:
    s.pending[debit_slot].debits_pending -= amount
    s.pending[credit_slot].credits_pending -= amount
    if s.pending[debit_slot].debits_pending == 0 and s.pending[debit_slot].credits_pending == 0:
        s.accounts[debit_slot].internal &= ~(<uint16_t>INTERNAL_HAS_PENDING)
    if s.pending[credit_slot].debits_pending == 0 and s.pending[credit_slot].credits_pending == 0:
        s.accounts[credit_slot].internal &= ~(<uint16_t>INTERNAL_HAS_PENDING)


# --- expiry heap ----------------------------------------------------------------

cdef inline bint heap_less(HeapEntry *a, HeapEntry *b) noexcept nogil:
    return a.expires_at < b.expires_at or (a.expires_at == b.expires_at and a.seq < b.seq)


cdef void heap_sift_down(State *s, int64_t index) noexcept nogil:
    cdef int64_t child
    cdef HeapEntry swap
    while True:
        child = 2 * index + 1
        if child >= s.heap_size:
            return
        if child + 1 < s.heap_size and heap_less(&s.heap[child + 1], &s.heap[child]):
            child += 1
        if not heap_less(&s.heap[child], &s.heap[index]):
            return
        swap = s.heap[child]
        s.heap[child] = s.heap[index]
        s.heap[index] = swap
        index = child


cdef inline bint heap_entry_live(State *s, HeapEntry *entry) noexcept nogil:
    return (<int64_t>entry.seq >= s.log_tail and <int64_t>entry.seq < s.log_count
            and log_at(s, <int64_t>entry.seq).state == STATE_PENDING)


cdef void heap_push(State *s, uint64_t expires_at, uint64_t seq) noexcept nogil:
    cdef int64_t index, parent, kept, i
    cdef HeapEntry swap
    if s.heap_size == s.heap_capacity:
        # Compact: drop entries of transfers no longer pending, then re-heapify.
        kept = 0
        for i in range(s.heap_size):
            if heap_entry_live(s, &s.heap[i]):
                s.heap[kept] = s.heap[i]
                kept += 1
        s.heap_size = kept
        i = kept // 2 - 1
        while i >= 0:
            heap_sift_down(s, i)
            i -= 1
    # Live pending transfers never outnumber the log window, which the caller
    # bounds by the heap capacity.
    index = s.heap_size
    s.heap[index].expires_at = expires_at
    s.heap[index].seq = seq
    s.heap_size += 1
    while index > 0:
        parent = (index - 1) // 2
        if not heap_less(&s.heap[index], &s.heap[parent]):
            break
        swap = s.heap[parent]
        s.heap[parent] = s.heap[index]
        s.heap[index] = swap
        index = parent


cdef int64_t expire_pending_run(State *s, uint64_t now_ns, int64_t day) noexcept nogil:
    cdef int64_t expired = 0
    cdef HeapEntry top
    cdef Transfer *target
    while s.heap_size > 0 and s.heap[0].expires_at <= now_ns:
        top = s.heap[0]
        s.heap_size -= 1
        s.heap[0] = s.heap[s.heap_size]
        heap_sift_down(s, 0)
        if not heap_entry_live(s, &top):
            continue
        target = log_at(s, <int64_t>top.seq)
        pending_release(s, target.debit_slot, target.credit_slot, target.amount)
        target.state = STATE_EXPIRED
        dirty_account(s, target.debit_slot)
        dirty_account(s, target.credit_slot)
        dirty_transfer(s, <int64_t>top.seq)
        release_quota(s, target, target.amount, day, NULL)
        expired += 1
    return expired


# --- one transfer ---------------------------------------------------------------

cdef inline bint id_zero(uint64_t lo, uint64_t hi) noexcept nogil:
    return lo == 0 and hi == 0


cdef inline bint id_max(uint64_t lo, uint64_t hi) noexcept nogil:
    return lo == UINT64_MAX_ and hi == UINT64_MAX_


cdef inline bint id_equal(uint64_t a_lo, uint64_t a_hi, uint64_t b_lo, uint64_t b_hi) noexcept nogil:
    return a_lo == b_lo and a_hi == b_hi


cdef uint8_t validate(Transfer *t) noexcept nogil:
    """Checks on the transfer alone; a failure here does not consume the id."""
    cdef uint16_t family
    cdef bint resolving
    if t.timestamp != 0:
        return TR_TIMESTAMP_MUST_BE_ZERO
    if (t.result != 0 or t.debit_slot != 0 or t.credit_slot != 0 or t.business_day != 0
            or t.counted != 0 or t.state != 0 or t.amount_posted != 0 or t.amount_reversed != 0):
        return TR_RESERVED_FIELD
    if t.flags & ~(<uint16_t>TRANSFER_FLAGS_KNOWN):
        return TR_RESERVED_FLAG
    if id_zero(t.id_lo, t.id_hi):
        return TR_ID_MUST_NOT_BE_ZERO
    if id_max(t.id_lo, t.id_hi):
        return TR_ID_MUST_NOT_BE_INT_MAX
    family = t.flags & (TRANSFER_PENDING | TRANSFER_POST_PENDING | TRANSFER_VOID_PENDING)
    if family & (family - 1):
        return TR_FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if t.code == CODE_REVERSAL and family:
        return TR_FLAGS_ARE_MUTUALLY_EXCLUSIVE
    resolving = (t.flags & (TRANSFER_POST_PENDING | TRANSFER_VOID_PENDING)) != 0
    if not resolving and id_zero(t.debit_account_id_lo, t.debit_account_id_hi):
        return TR_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if id_max(t.debit_account_id_lo, t.debit_account_id_hi):
        return TR_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    if not resolving and id_zero(t.credit_account_id_lo, t.credit_account_id_hi):
        return TR_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if id_max(t.credit_account_id_lo, t.credit_account_id_hi):
        return TR_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    if (not id_zero(t.debit_account_id_lo, t.debit_account_id_hi)
            and id_equal(t.debit_account_id_lo, t.debit_account_id_hi,
                         t.credit_account_id_lo, t.credit_account_id_hi)):
        return TR_ACCOUNTS_MUST_BE_DIFFERENT
    if resolving or t.code == CODE_REVERSAL:
        if id_zero(t.pending_id_lo, t.pending_id_hi):
            return TR_PENDING_ID_MUST_NOT_BE_ZERO
        if id_max(t.pending_id_lo, t.pending_id_hi):
            return TR_PENDING_ID_MUST_NOT_BE_INT_MAX
        if id_equal(t.pending_id_lo, t.pending_id_hi, t.id_lo, t.id_hi):
            return TR_PENDING_ID_MUST_BE_DIFFERENT
    elif not id_zero(t.pending_id_lo, t.pending_id_hi):
        return TR_PENDING_ID_MUST_BE_ZERO
    if not (t.flags & TRANSFER_PENDING) and t.timeout_s != 0:
        return TR_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
    if not resolving:
        if t.ledger == 0:
            return TR_LEDGER_MUST_NOT_BE_ZERO
        if t.code == 0:
            return TR_CODE_MUST_NOT_BE_ZERO
    if t.code > CODE_MAX:
        return TR_CODE_UNKNOWN
    if t.amount < 0 or (t.amount == 0 and not resolving):
        return TR_AMOUNT_MUST_BE_POSITIVE
    return TR_OK


cdef uint8_t exists(Transfer *t, Transfer *e) noexcept nogil:
    """Idempotency: compare a retry with the first attempt, field by field."""
    if e.result != TR_OK:
        return TR_ID_ALREADY_FAILED
    if t.flags != e.flags:
        return TR_EXISTS_WITH_DIFFERENT_FLAGS
    if not id_equal(t.debit_account_id_lo, t.debit_account_id_hi, e.debit_account_id_lo, e.debit_account_id_hi):
        return TR_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if not id_equal(t.credit_account_id_lo, t.credit_account_id_hi, e.credit_account_id_lo, e.credit_account_id_hi):
        return TR_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    if t.amount != e.amount:
        return TR_EXISTS_WITH_DIFFERENT_AMOUNT
    if not id_equal(t.pending_id_lo, t.pending_id_hi, e.pending_id_lo, e.pending_id_hi):
        return TR_EXISTS_WITH_DIFFERENT_PENDING_ID
    if t.timeout_s != e.timeout_s:
        return TR_EXISTS_WITH_DIFFERENT_TIMEOUT
    if t.ledger != e.ledger:
        return TR_EXISTS_WITH_DIFFERENT_LEDGER
    if t.code != e.code:
        return TR_EXISTS_WITH_DIFFERENT_CODE
    if t.channel != e.channel:
        return TR_EXISTS_WITH_DIFFERENT_CHANNEL
    if t.user_data != e.user_data:
        return TR_EXISTS_WITH_DIFFERENT_USER_DATA
    return TR_EXISTS


cdef uint8_t apply(State *s, Transfer *t, uint64_t timestamp, int64_t day,
                   uint32_t debit_slot, uint32_t credit_slot, Chain *chain) noexcept nogil:
    """State-dependent checks, then the posting. From here a failure consumes the id."""
    cdef int64_t target_seq = -1
    cdef Transfer *target = NULL
    cdef int64_t amount = t.amount
    cdef uint16_t code = t.code
    cdef Account *debit
    cdef Account *credit
    cdef bint fresh
    cdef int counted = 0
    cdef int64_t floor, debits_total, credits_total, balance_projected
    cdef Counters debit_effective, credit_effective
    cdef Pending debit_pending, credit_pending
    cdef const Product *debit_product
    cdef const Product *credit_product
    cdef const KindRule *kind_rule
    cdef int64_t position = -1
    cdef int64_t i
    cdef Tallies tallies
    cdef Undo *undo = NULL
    cdef Transfer *record
    cdef int64_t seq

    if t.flags & (TRANSFER_POST_PENDING | TRANSFER_VOID_PENDING):
        target_seq = transfer_find(s, t.pending_id_lo, t.pending_id_hi, hash_id(t.pending_id_lo, t.pending_id_hi))
        if target_seq < 0:
            return TR_PENDING_TRANSFER_NOT_FOUND
        target = record_of(s, target_seq)
        if target.result != TR_OK or not (target.flags & TRANSFER_PENDING):
            return TR_PENDING_TRANSFER_NOT_PENDING
        if (not id_zero(t.debit_account_id_lo, t.debit_account_id_hi)
                and not id_equal(t.debit_account_id_lo, t.debit_account_id_hi,
                                 target.debit_account_id_lo, target.debit_account_id_hi)):
            return TR_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if (not id_zero(t.credit_account_id_lo, t.credit_account_id_hi)
                and not id_equal(t.credit_account_id_lo, t.credit_account_id_hi,
                                 target.credit_account_id_lo, target.credit_account_id_hi)):
            return TR_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.ledger != 0 and t.ledger != target.ledger:
            return TR_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if t.flags & TRANSFER_VOID_PENDING:
            if amount != 0 and amount != target.amount:
                return TR_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
            amount = target.amount
        else:
            if amount > target.amount:
                return TR_EXCEEDS_PENDING_TRANSFER_AMOUNT
            if amount == 0:
                amount = target.amount
        if target.state == STATE_POSTED:
            return TR_PENDING_TRANSFER_ALREADY_POSTED
        if target.state == STATE_VOIDED:
            return TR_PENDING_TRANSFER_ALREADY_VOIDED
        if target.state == STATE_EXPIRED:
            return TR_PENDING_TRANSFER_EXPIRED
        if target.timeout_s != 0 and timestamp >= target.timestamp + <uint64_t>target.timeout_s * NS_PER_S:
            return TR_PENDING_TRANSFER_EXPIRED
        debit_slot = target.debit_slot
        credit_slot = target.credit_slot
        code = target.code
    elif t.code == CODE_REVERSAL:
        target_seq = transfer_find(s, t.pending_id_lo, t.pending_id_hi, hash_id(t.pending_id_lo, t.pending_id_hi))
        if target_seq < 0:
            return TR_REVERSAL_TARGET_NOT_FOUND
        target = record_of(s, target_seq)
        if (target.result != TR_OK or target.code == CODE_REVERSAL
                or (target.flags & (TRANSFER_PENDING | TRANSFER_VOID_PENDING))):
            return TR_REVERSAL_TARGET_NOT_POSTED
        if debit_slot != target.credit_slot or credit_slot != target.debit_slot:
            return TR_REVERSAL_ACCOUNTS_MISMATCH
        if amount > target.amount_posted - target.amount_reversed:
            return TR_EXCEEDS_REVERSIBLE_AMOUNT
    debit = &s.accounts[debit_slot]
    credit = &s.accounts[credit_slot]
    debit_pending = pending_of(s, debit_slot)
    credit_pending = pending_of(s, credit_slot)
    if not (t.flags & (TRANSFER_POST_PENDING | TRANSFER_VOID_PENDING)):
        # Authorization: who may post this code, on which kinds of account (a capture or
        # void settles a hold that passed these checks when it was taken).
        if not code_in(s.channels[t.channel].codes, code):
            return TR_CHANNEL_CODE_NOT_ALLOWED
        if not code_in(s.kinds[debit.kind].debit_codes, code):
            return TR_DEBIT_ACCOUNT_CODE_NOT_ALLOWED
        if not code_in(s.kinds[credit.kind].credit_codes, code):
            return TR_CREDIT_ACCOUNT_CODE_NOT_ALLOWED
        if (code_in(s.bank.anchored_codes, code)
                and not ((s.kinds[debit.kind].options | s.kinds[credit.kind].options)
                         & KIND_BANK_SIDE)):
            return TR_CODE_NEEDS_BANK_ACCOUNT
    if not (t.flags & TRANSFER_VOID_PENDING):
        if debit.status == STATUS_FROZEN:
            return TR_DEBIT_ACCOUNT_FROZEN
        if credit.status == STATUS_FROZEN:
            return TR_CREDIT_ACCOUNT_FROZEN
        if debit.status == STATUS_CLOSED:
            return TR_DEBIT_ACCOUNT_CLOSED
        if credit.status == STATUS_CLOSED:
            return TR_CREDIT_ACCOUNT_CLOSED
    fresh = not (t.flags & (TRANSFER_POST_PENDING | TRANSFER_VOID_PENDING)) and code != CODE_REVERSAL
    if fresh:
        if code == CODE_TOPUP_BOUND and not (
                (credit.flags & ACCOUNT_BOUND_EXTERNAL) or credit.bound_slot == debit_slot):
            return TR_NO_BOUND_ACCOUNT
        if code == CODE_WITHDRAW_BOUND and not (
                (debit.flags & ACCOUNT_BOUND_EXTERNAL) or debit.bound_slot == credit_slot):
            return TR_NO_BOUND_ACCOUNT
        if code == CODE_CASH_DEPOSIT and not cash_allowed(credit):
            return TR_CASH_NOT_ALLOWED
        if code == CODE_CASH_WITHDRAWAL and not cash_allowed(debit):
            return TR_CASH_NOT_ALLOWED
        counted = transfer_counted(s, code, debit, credit, debit_slot, credit_slot)
        if ((counted & COUNTED_CREDIT_INFLOW) and code != CODE_CASH_DEPOSIT
                and not (credit.flags & ACCOUNT_NON_BOUND_INFLOW_ENABLED)):
            return TR_NON_BOUND_INFLOW_DISABLED
    elif target != NULL and (t.flags & TRANSFER_POST_PENDING):
        counted = target.counted
    if t.flags & TRANSFER_PENDING:
        if amount > INT64_MAX_ - debit_pending.debits_pending:
            return TR_OVERFLOWS_DEBITS_PENDING
        if amount > INT64_MAX_ - credit_pending.credits_pending:
            return TR_OVERFLOWS_CREDITS_PENDING
    if not (t.flags & (TRANSFER_PENDING | TRANSFER_VOID_PENDING)):
        if amount > INT64_MAX_ - debit.debits_posted:
            return TR_OVERFLOWS_DEBITS_POSTED
        if amount > INT64_MAX_ - credit.credits_posted:
            return TR_OVERFLOWS_CREDITS_POSTED
    if fresh or code == CODE_REVERSAL:
        if amount > INT64_MAX_ - debit_pending.debits_pending - debit.debits_posted:
            return TR_OVERFLOWS_DEBITS
        if amount > INT64_MAX_ - credit_pending.credits_pending - credit.credits_posted:
            return TR_OVERFLOWS_CREDITS
    if (t.flags & TRANSFER_PENDING) and <uint64_t>t.timeout_s * NS_PER_S > UINT64_MAX_ - timestamp:
        return TR_OVERFLOWS_TIMEOUT
    if fresh or code == CODE_REVERSAL:
        if debit.flags & ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS:
            floor = s.products[debit.product].balance_floor_minor
            debits_total = debit_pending.debits_pending + debit.debits_posted + amount
            if debits_total - debit.credits_posted > -floor:
                return TR_EXCEEDS_CREDITS
        if credit.flags & ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS:
            floor = s.products[credit.product].balance_floor_minor
            credits_total = credit_pending.credits_pending + credit.credits_posted + amount
            if credits_total - credit.debits_posted > -floor:
                return TR_EXCEEDS_DEBITS
        kind_rule = &s.kinds[debit.kind]
        if kind_rule.options & KIND_FLOOR_ENFORCED:
            debits_total = debit_pending.debits_pending + debit.debits_posted + amount
            if debits_total - debit.credits_posted > -kind_rule.balance_floor_minor:
                return TR_EXCEEDS_INTERNAL_FLOOR
    debit_effective = counters_effective(s, &debit.counters, debit.counters_day, day)
    credit_effective = counters_effective(s, &credit.counters, credit.counters_day, day)
    tallies.count = 0
    if fresh:
        debit_product = &s.products[debit.product]
        credit_product = &s.products[credit.product]
        if exceeds_cap(0, debit_product.transfer_cap_minor, amount):
            return TR_EXCEEDS_TRANSFER_CAP
        if exceeds_cap(0, s.channels[t.channel].transfer_cap_minor, amount):
            return TR_EXCEEDS_CHANNEL_TRANSFER_CAP
        tallies_of(s, t.channel, code, debit_slot, credit_slot, &tallies)
        for i in range(tallies.count):
            position = channel_position(s, tallies.keys[i], day)
            if position < 0:
                s.channel_table_full += 1
                return tallies.results[i]
            tallies.used[i] = channel_used_at(s, position, tallies.keys[i], day)
            if tallies.results[i] == TR_STRONG_AUTH_REQUIRED:
                continue  # checked below, after the hard caps
            if exceeds_cap(tallies.used[i], tallies.caps[i], amount):
                return tallies.results[i]
        if counted & COUNTED_DEBIT_OUTFLOW:
            if exceeds_cap(debit_effective.outflow_daily, debit_product.outflow_daily_minor, amount):
                return TR_EXCEEDS_DAILY_OUTFLOW
            if exceeds_cap(debit_effective.outflow_yearly, debit_product.outflow_yearly_minor, amount):
                return TR_EXCEEDS_YEARLY_OUTFLOW
        if counted & COUNTED_CREDIT_INFLOW:
            if exceeds_cap(credit_effective.inflow_daily, credit_product.inflow_daily_minor, amount):
                return TR_EXCEEDS_DAILY_INFLOW
            if exceeds_cap(credit_effective.inflow_yearly, credit_product.inflow_yearly_minor, amount):
                return TR_EXCEEDS_YEARLY_INFLOW
        i = tallies.count - 1  # strong authentication, when counted, is the last tally
        if (i >= 0 and tallies.results[i] == TR_STRONG_AUTH_REQUIRED
                and not (t.flags & TRANSFER_STRONG_AUTH)
                and exceeds_cap(tallies.used[i], tallies.caps[i], amount)):
            return TR_STRONG_AUTH_REQUIRED
    if fresh or code == CODE_REVERSAL:
        balance_projected = credit.credits_posted + credit_pending.credits_pending - credit.debits_posted
        if exceeds_cap(balance_projected, s.products[credit.product].balance_cap_minor, amount):
            return TR_EXCEEDS_BALANCE_CAP
    if log_quota_exceeded(s, t.channel):
        return TR_CHANNEL_LOG_QUOTA_EXCEEDED

    # --- all checks passed: post --------------------------------------------------
    if chain != NULL:
        undo = &chain.undo[chain.undo_count]
        chain.undo_count += 1
        undo.slots[0] = debit_slot
        undo.slots[1] = credit_slot
        undo.accounts[0] = debit[0]
        undo.accounts[1] = credit[0]
        undo.pending[0] = s.pending[debit_slot]
        undo.pending[1] = s.pending[credit_slot]
        undo.target_seq = target_seq
        if target != NULL:
            undo.target = target[0]
        undo.tally_count = 0
        undo.id_lo = t.id_lo
        undo.id_hi = t.id_hi

    seq = s.log_count
    record = log_at(s, seq)
    memcpy(record, t, TRANSFER_SIZE)
    record.result = TR_OK
    record.timestamp = timestamp
    record.debit_slot = debit_slot
    record.credit_slot = credit_slot
    record.business_day = <uint16_t>day
    if t.flags & TRANSFER_POST_PENDING:
        record.business_day = target.business_day  # the quota was consumed by the hold
    record.counted = <uint8_t>counted
    record.amount_posted = amount
    if t.flags & TRANSFER_PENDING:
        s.pending[debit_slot].debits_pending += amount
        s.pending[credit_slot].credits_pending += amount
        debit.internal |= INTERNAL_HAS_PENDING
        credit.internal |= INTERNAL_HAS_PENDING
        record.state = STATE_PENDING
    elif t.flags & TRANSFER_POST_PENDING:
        pending_release(s, debit_slot, credit_slot, target.amount)
        debit.debits_posted += amount
        credit.credits_posted += amount
        target.state = STATE_POSTED
        release_quota(s, target, target.amount - amount, day, undo)
    elif t.flags & TRANSFER_VOID_PENDING:
        pending_release(s, debit_slot, credit_slot, target.amount)
        target.state = STATE_VOIDED
        release_quota(s, target, target.amount, day, undo)
    else:
        debit.debits_posted += amount
        credit.credits_posted += amount
        if target != NULL:
            target.amount_reversed += amount
            release_quota(s, target, amount, day, undo)
    if fresh:
        if counted & COUNTED_DEBIT_OUTFLOW:
            debit_effective.outflow_daily += <int32_t>amount
            debit_effective.outflow_yearly += <int32_t>amount
            debit.counters = debit_effective
            debit.counters_day = <uint16_t>day
        if counted & COUNTED_CREDIT_INFLOW:
            credit_effective.inflow_daily += <int32_t>amount
            credit_effective.inflow_yearly += <int32_t>amount
            credit.counters = credit_effective
            credit.counters_day = <uint16_t>day
        for i in range(tallies.count):
            # Looked up again: an earlier counter of this transfer may have taken the slot.
            position = channel_position(s, tallies.keys[i], day)
            if position < 0:
                s.channel_table_full += 1  # full only if this very transfer filled it
                continue
            tally_change(s, position, tallies.keys[i], day, tallies.used[i] + amount, undo)
    dirty_account(s, debit_slot)
    dirty_account(s, credit_slot)
    if target != NULL:
        dirty_transfer(s, target_seq)
    transfer_index_insert(s, t.id_lo, t.id_hi, <uint64_t>seq)
    s.log_count += 1
    s.channel_live[2 * t.channel] += 1
    if (t.flags & TRANSFER_PENDING) and t.timeout_s != 0:
        if chain != NULL:
            chain.deferred[chain.deferred_count].expires_at = timestamp + <uint64_t>t.timeout_s * NS_PER_S
            chain.deferred[chain.deferred_count].seq = <uint64_t>seq
            chain.deferred_count += 1
        else:
            heap_push(s, timestamp + <uint64_t>t.timeout_s * NS_PER_S, <uint64_t>seq)
    return TR_OK


cdef void chain_rollback(State *s, Chain *chain) noexcept nogil:
    cdef Undo *undo
    while chain.undo_count > 0:
        chain.undo_count -= 1
        undo = &chain.undo[chain.undo_count]
        s.accounts[undo.slots[1]] = undo.accounts[1]
        s.accounts[undo.slots[0]] = undo.accounts[0]
        s.pending[undo.slots[1]] = undo.pending[1]
        s.pending[undo.slots[0]] = undo.pending[0]
        if undo.target_seq >= 0:
            log_at(s, undo.target_seq)[0] = undo.target
        while undo.tally_count > 0:
            undo.tally_count -= 1
            s.channel_counters[undo.tally_positions[undo.tally_count]] = (
                undo.tally_entries[undo.tally_count])
        transfer_index_delete(s, undo.id_lo, undo.id_hi, <uint64_t>(s.log_count - 1))
        s.channel_live[2 * log_at(s, s.log_count - 1).channel] -= 1
        s.log_count -= 1
    chain.deferred_count = 0


# --- the failure ring and the log quotas ------------------------------------------
#
# A transfer that fails after validation consumes its id: a retry must get the
# first answer (ID_ALREADY_FAILED), so the failure is remembered. It is
# remembered in the failure ring, not in the log: a ring of its own (a quarter
# of the log), whose oldest failure is forgotten when a new one needs the room
# (and, by EVICT_FAILED entries, once older than the failure retention). So
# failures never hold the log's room against successful postings, and their
# eviction depends only on the sequence of calls: replay-identical.
#
# Each channel may hold at most its share (permille, from the rules) of the log
# window and of the failure ring: the last check before a posting (`apply`) is
# that its channel holds less than its share of the log, and a failure is
# remembered only if its channel holds less than its share of the ring.
# Otherwise the answer is CHANNEL_LOG_QUOTA_EXCEEDED, nothing is recorded and
# the id is not consumed (a retry once records have left may succeed); other
# channels are not affected. Inside a linked chain failures are never recorded,
# so only the log's share applies there.

cdef inline bint log_quota_exceeded(State *s, uint8_t channel) noexcept nogil:
    """The channel holds its share of the log window: a posting of it would pass it."""
    cdef int64_t permille = s.log_quotas[channel]
    return (permille != 0
            and s.channel_live[2 * channel] * 1000 >= permille * <int64_t>(s.log_mask + 1))


cdef inline bint failed_quota_exceeded(State *s, uint8_t channel) noexcept nogil:
    """The channel holds its share of the failure ring: a failure of it would pass it."""
    cdef int64_t permille = s.log_quotas[channel]
    return (permille != 0
            and s.channel_live[2 * channel + 1] * 1000 >= permille * <int64_t>(s.failed_mask + 1))


cdef inline void failed_evict_oldest(State *s) noexcept nogil:
    cdef Transfer *record = failed_at(s, s.failed_tail)
    transfer_index_delete(s, record.id_lo, record.id_hi, <uint64_t>(s.failed_tail | FAILED_BIT))
    s.channel_live[2 * record.channel + 1] -= 1
    s.failed_tail += 1


cdef void failed_record(State *s, Transfer *t, uint8_t result, uint64_t timestamp,
                        int64_t day) noexcept nogil:
    """Remember a failure that consumed its id; a full ring forgets its oldest first."""
    cdef Transfer *record
    if s.failed_count - s.failed_tail == <int64_t>(s.failed_mask + 1):
        failed_evict_oldest(s)
    record = failed_at(s, s.failed_count)
    memcpy(record, t, TRANSFER_SIZE)
    record.result = result
    record.timestamp = timestamp
    record.debit_slot = SLOT_NONE
    record.credit_slot = SLOT_NONE
    record.business_day = <uint16_t>day
    transfer_index_insert(s, t.id_lo, t.id_hi, <uint64_t>(s.failed_count | FAILED_BIT))
    s.failed_count += 1
    s.channel_live[2 * t.channel + 1] += 1


cdef uint8_t create_transfer_one(
    State *s, Transfer *t, uint64_t timestamp, int64_t day, uint32_t debit_candidate,
    uint32_t credit_candidate, uint64_t id_hash, uint64_t debit_hash, uint64_t credit_hash,
    uint64_t *timestamp_out, int64_t *balance_out, Chain *chain,
) noexcept nogil:
    cdef uint8_t result = validate(t)
    cdef uint32_t debit_slot = SLOT_NONE
    cdef uint32_t credit_slot = SLOT_NONE
    cdef int64_t seq_existing
    cdef Transfer *record
    if result != TR_OK:
        return result
    if not (t.flags & (TRANSFER_POST_PENDING | TRANSFER_VOID_PENDING)):
        debit_slot = debit_candidate
        if debit_slot == SLOT_NONE or not id_equal(
                s.accounts[debit_slot].id_lo, s.accounts[debit_slot].id_hi,
                t.debit_account_id_lo, t.debit_account_id_hi):
            debit_slot = account_find(s, t.debit_account_id_lo, t.debit_account_id_hi, debit_hash)
        if debit_slot == SLOT_NONE:
            return TR_DEBIT_ACCOUNT_NOT_FOUND
        credit_slot = credit_candidate
        if credit_slot == SLOT_NONE or not id_equal(
                s.accounts[credit_slot].id_lo, s.accounts[credit_slot].id_hi,
                t.credit_account_id_lo, t.credit_account_id_hi):
            credit_slot = account_find(s, t.credit_account_id_lo, t.credit_account_id_hi, credit_hash)
        if credit_slot == SLOT_NONE:
            return TR_CREDIT_ACCOUNT_NOT_FOUND
        if s.accounts[debit_slot].ledger != s.accounts[credit_slot].ledger:
            return TR_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if t.ledger != s.accounts[debit_slot].ledger:
            return TR_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
    seq_existing = transfer_find(s, t.id_lo, t.id_hi, id_hash)
    if seq_existing >= 0:
        result = exists(t, record_of(s, seq_existing))
        if result == TR_EXISTS:
            timestamp_out[0] = record_of(s, seq_existing).timestamp
        return result
    result = apply(s, t, timestamp, day, debit_slot, credit_slot, chain)
    if result != TR_OK:
        if chain == NULL and result != TR_CHANNEL_LOG_QUOTA_EXCEEDED:
            if failed_quota_exceeded(s, t.channel):
                return TR_CHANNEL_LOG_QUOTA_EXCEEDED
            failed_record(s, t, result, timestamp, day)
        return result
    record = log_at(s, s.log_count - 1)
    timestamp_out[0] = timestamp
    balance_out[0] = s.accounts[record.debit_slot].credits_posted - s.accounts[record.debit_slot].debits_posted
    balance_out[1] = s.accounts[record.credit_slot].credits_posted - s.accounts[record.credit_slot].debits_posted
    return TR_OK


# --- the batch pipeline ----------------------------------------------------------

cdef struct Pipeline:
    uint64_t *id_hash
    uint64_t *debit_hash
    uint64_t *credit_hash
    uint32_t *debit_candidate
    uint32_t *credit_candidate
    int64_t hashed
    int64_t resolved


cdef inline void pipeline_hash(State *s, Pipeline *p, Transfer *batch, int64_t count, int64_t until) noexcept nogil:
    cdef int64_t i
    cdef Transfer *t
    if until > count:
        until = count
    for i in range(p.hashed, until):
        t = &batch[i]
        p.id_hash[i] = hash_id(t.id_lo, t.id_hi)
        p.debit_hash[i] = hash_id(t.debit_account_id_lo, t.debit_account_id_hi)
        p.credit_hash[i] = hash_id(t.credit_account_id_lo, t.credit_account_id_hi)
        TALLY_PREFETCH(&s.transfer_index[transfer_home(s, fingerprint_of(p.id_hash[i]))])
        TALLY_PREFETCH(&s.account_index[account_home(s, p.debit_hash[i])])
        TALLY_PREFETCH(&s.account_index[account_home(s, p.credit_hash[i])])
    if until > p.hashed:
        p.hashed = until


cdef inline void pipeline_resolve(State *s, Pipeline *p, Transfer *batch, int64_t count,
                                  int64_t until) noexcept nogil:
    cdef int64_t i
    cdef uint32_t slot
    if until > p.hashed:
        until = p.hashed
    for i in range(p.resolved, until):
        slot = account_candidate(s, p.debit_hash[i])
        p.debit_candidate[i] = slot
        if slot != SLOT_NONE:
            TALLY_PREFETCH(&s.accounts[slot])
            if s.channels[batch[i].channel].daily_cap_minor != 0:
                TALLY_PREFETCH(&s.channel_counters[
                    channel_home(s, channel_key(slot, batch[i].channel))])
            if not (s.channels[batch[i].channel].options & CHANNEL_STRONG_AUTH_EXEMPT):
                TALLY_PREFETCH(&s.customers[slot])  # the customer's day counters' key
        slot = account_candidate(s, p.credit_hash[i])
        p.credit_candidate[i] = slot
        if slot != SLOT_NONE:
            TALLY_PREFETCH(&s.accounts[slot])
            if s.channels[batch[i].channel].inflow_daily_cap_minor != 0:
                TALLY_PREFETCH(&s.channel_counters[channel_home(
                    s, account_counter_key(SPACE_CHANNEL_CREDIT, slot, batch[i].channel))])
    if until > p.resolved:
        p.resolved = until


cdef int64_t create_transfers_run(
    State *s, Transfer *batch, int64_t count, uint64_t timestamp_first, int64_t day,
    uint8_t *results, uint64_t *timestamps, int64_t *balances, Pipeline *p, Chain *chain,
) noexcept nogil:
    cdef int64_t index = 0
    cdef int64_t chain_end, member, failed_at, i
    cdef int64_t ok = 0
    cdef uint8_t result
    while index < count:
        # Interleave: while transfer `index` is applied, the index buckets of
        # index + 2 * distance and the accounts of index + distance are on their way.
        pipeline_hash(s, p, batch, count, index + 2 * PIPELINE_DISTANCE + 1)
        pipeline_resolve(s, p, batch, count, index + PIPELINE_DISTANCE + 1)
        chain_end = index
        while chain_end < count and (batch[chain_end].flags & TRANSFER_LINKED):
            chain_end += 1
        if chain_end == index:
            result = create_transfer_one(
                s, &batch[index], timestamp_first + <uint64_t>index, day,
                p.debit_candidate[index], p.credit_candidate[index],
                p.id_hash[index], p.debit_hash[index], p.credit_hash[index],
                &timestamps[index], &balances[2 * index], NULL)
            results[index] = result
            if result == TR_OK:
                ok += 1
            index += 1
            continue
        if chain_end == count:
            for member in range(index, count):
                results[member] = TR_LINKED_EVENT_FAILED
            results[count - 1] = TR_LINKED_EVENT_CHAIN_OPEN
            index = count
            continue
        # A linked chain: all or nothing. Make sure the pipeline covers it.
        pipeline_hash(s, p, batch, count, chain_end + 1)
        pipeline_resolve(s, p, batch, count, chain_end + 1)
        chain.undo_count = 0
        chain.deferred_count = 0
        failed_at = -1
        for member in range(index, chain_end + 1):
            result = create_transfer_one(
                s, &batch[member], timestamp_first + <uint64_t>member, day,
                p.debit_candidate[member], p.credit_candidate[member],
                p.id_hash[member], p.debit_hash[member], p.credit_hash[member],
                &timestamps[member], &balances[2 * member], chain)
            results[member] = result
            if result != TR_OK:
                failed_at = member
                break
        if failed_at >= 0:
            chain_rollback(s, chain)
            for member in range(index, chain_end + 1):
                if member != failed_at:
                    results[member] = TR_LINKED_EVENT_FAILED
                timestamps[member] = 0
                balances[2 * member] = 0
                balances[2 * member + 1] = 0
        else:
            for i in range(chain.deferred_count):
                heap_push(s, chain.deferred[i].expires_at, chain.deferred[i].seq)
            ok += chain_end + 1 - index
        index = chain_end + 1
    return ok


def create_transfers(
    const unsigned char[::1] batch, uint64_t timestamp_first, int64_t business_day,
    unsigned char[::1] accounts, unsigned char[::1] pending, unsigned char[::1] account_index,
    unsigned char[::1] log, unsigned char[::1] failed, unsigned char[::1] transfer_index,
    unsigned char[::1] heap, unsigned char[::1] channel_counters, unsigned char[::1] channel_live,
    unsigned char[::1] dirty, unsigned char[::1] customers, const unsigned char[::1] products,
    const unsigned char[::1] channels, const unsigned char[::1] log_quotas, int64_t[::1] meta,
    unsigned char[::1] results, unsigned char[::1] timestamps, unsigned char[::1] balances,
):
    """Expire due holds, then validate and post one batch. Returns the count of `ok`."""
    cdef State s
    cdef int64_t count = batch.shape[0] // TRANSFER_SIZE
    cdef Pipeline p
    cdef Chain chain
    cdef int64_t ok = 0
    state_load(&s, accounts, pending, account_index, log, failed, transfer_index, heap,
               channel_counters, channel_live, dirty, customers, products, channels, log_quotas,
               meta)
    if batch.shape[0] % TRANSFER_SIZE != 0:
        raise ValueError("batch size must be a multiple of TRANSFER_SIZE")
    if results.shape[0] < count or timestamps.shape[0] < count * 8 or balances.shape[0] < count * 16:
        raise ValueError("result buffers too small for the batch")
    if business_day < s.last_day or business_day > 0xFFFF:
        raise ValueError(f"business_day {business_day} before {s.last_day} or out of range")
    if s.log_count - s.log_tail + count > <int64_t>(s.log_mask + 1):
        raise ValueError("log window full: evict before posting")
    if s.log_count - s.log_tail + count > s.heap_capacity:
        raise ValueError("heap capacity below the log window")
    if (s.transfer_index_count + count) * 10 > <int64_t>(s.transfer_index_mask + 1) * 7:
        raise ValueError("transfer index over 70% full: evict or grow")
    if count == 0:
        # An empty batch still expires due holds, as every batch does (reference twin).
        with nogil:
            state_set_day(&s, business_day)
            expire_pending_run(&s, timestamp_first, business_day)
        state_store(&s, meta)
        return 0
    memset(&results[0], 0, count)
    memset(&timestamps[0], 0, count * 8)
    memset(&balances[0], 0, count * 16)
    p.id_hash = <uint64_t *>malloc(count * 8 * 3 + count * 4 * 2)
    chain.undo = <Undo *>malloc(count * sizeof(Undo))
    chain.deferred = <HeapEntry *>malloc(count * sizeof(HeapEntry))
    if p.id_hash == NULL or chain.undo == NULL or chain.deferred == NULL:
        free(p.id_hash)
        free(chain.undo)
        free(chain.deferred)
        raise MemoryError()
    p.debit_hash = p.id_hash + count
    p.credit_hash = p.id_hash + 2 * count
    p.debit_candidate = <uint32_t *>(p.id_hash + 3 * count)
    p.credit_candidate = p.debit_candidate + count
    p.hashed = 0
    p.resolved = 0
    chain.undo_count = 0
    chain.deferred_count = 0
    with nogil:
        state_set_day(&s, business_day)
        expire_pending_run(&s, timestamp_first, business_day)
        ok = create_transfers_run(
            &s, <Transfer *>&batch[0], count, timestamp_first, business_day, &results[0],
            <uint64_t *>&timestamps[0], <int64_t *>&balances[0], &p, &chain)
    free(p.id_hash)
    free(chain.undo)
    free(chain.deferred)
    state_store(&s, meta)
    return ok


def expire_pending(
    uint64_t now_ns, int64_t business_day,
    unsigned char[::1] accounts, unsigned char[::1] pending, unsigned char[::1] account_index,
    unsigned char[::1] log, unsigned char[::1] failed, unsigned char[::1] transfer_index,
    unsigned char[::1] heap, unsigned char[::1] channel_counters, unsigned char[::1] channel_live,
    unsigned char[::1] dirty, unsigned char[::1] customers, const unsigned char[::1] products,
    const unsigned char[::1] channels, const unsigned char[::1] log_quotas, int64_t[::1] meta,
):
    """Release every pending transfer whose timeout has passed at `now_ns`."""
    cdef State s
    cdef int64_t expired
    state_load(&s, accounts, pending, account_index, log, failed, transfer_index, heap,
               channel_counters, channel_live, dirty, customers, products, channels, log_quotas,
               meta)
    if business_day < s.last_day or business_day > 0xFFFF:
        raise ValueError(f"business_day {business_day} before {s.last_day} or out of range")
    with nogil:
        state_set_day(&s, business_day)
        expired = expire_pending_run(&s, now_ns, business_day)
    state_store(&s, meta)
    return expired


def evict(
    uint64_t before_ns, int64_t count_max,
    unsigned char[::1] accounts, unsigned char[::1] pending, unsigned char[::1] account_index,
    unsigned char[::1] log, unsigned char[::1] failed, unsigned char[::1] transfer_index,
    unsigned char[::1] heap, unsigned char[::1] channel_counters, unsigned char[::1] channel_live,
    unsigned char[::1] dirty, unsigned char[::1] customers, const unsigned char[::1] products,
    const unsigned char[::1] channels, const unsigned char[::1] log_quotas, int64_t[::1] meta,
):
    """Forget the oldest transfers older than `before_ns`; stops at one still pending."""
    cdef State s
    cdef int64_t evicted = 0
    cdef Transfer *record
    state_load(&s, accounts, pending, account_index, log, failed, transfer_index, heap,
               channel_counters, channel_live, dirty, customers, products, channels, log_quotas,
               meta)
    with nogil:
        while evicted < count_max and s.log_tail < s.log_count:
            record = log_at(&s, s.log_tail)
            if record.timestamp >= before_ns or record.state == STATE_PENDING:
                break
            transfer_index_delete(&s, record.id_lo, record.id_hi, <uint64_t>s.log_tail)
            s.channel_live[2 * record.channel] -= 1
            s.log_tail += 1
            evicted += 1
    state_store(&s, meta)
    return evicted


def evict_failed(
    uint64_t before_ns, int64_t count_max,
    unsigned char[::1] accounts, unsigned char[::1] pending, unsigned char[::1] account_index,
    unsigned char[::1] log, unsigned char[::1] failed, unsigned char[::1] transfer_index,
    unsigned char[::1] heap, unsigned char[::1] channel_counters, unsigned char[::1] channel_live,
    unsigned char[::1] dirty, unsigned char[::1] customers, const unsigned char[::1] products,
    const unsigned char[::1] channels, const unsigned char[::1] log_quotas, int64_t[::1] meta,
):
    """Forget the oldest failures older than `before_ns` (the failure retention)."""
    cdef State s
    cdef int64_t evicted = 0
    state_load(&s, accounts, pending, account_index, log, failed, transfer_index, heap,
               channel_counters, channel_live, dirty, customers, products, channels, log_quotas,
               meta)
    with nogil:
        while (evicted < count_max and s.failed_tail < s.failed_count
               and failed_at(&s, s.failed_tail).timestamp < before_ns):
            failed_evict_oldest(&s)
            evicted += 1
    state_store(&s, meta)
    return evicted


# --- accounts ---------------------------------------------------------------------

cdef inline bint product_fits(int64_t product_kind, uint8_t kind) noexcept nogil:
    """Class II/III need their own kind of product (it carries the PBoC buckets)."""
    if product_kind == 0:
        return kind != KIND_CLASS_II and kind != KIND_CLASS_III
    if product_kind == KIND_INTERNAL_CASH:
        return kind >= KIND_INTERNAL_CASH
    return product_kind == kind


cdef uint8_t create_account(State *s, AccountInput *a) noexcept nogil:
    cdef uint32_t bound_slot = SLOT_NONE
    cdef uint32_t slot
    cdef Account *existing
    cdef Account *account
    cdef uint64_t h
    if a.reserved[0] != 0 or a.reserved[1] != 0 or a.customer > CUSTOMER_NUMBER_MAX:
        return AR_RESERVED_FIELD
    if a.flags & ~(<uint16_t>ACCOUNT_FLAGS_KNOWN):
        return AR_RESERVED_FLAG
    if id_zero(a.id_lo, a.id_hi):
        return AR_ID_MUST_NOT_BE_ZERO
    if id_max(a.id_lo, a.id_hi):
        return AR_ID_MUST_NOT_BE_INT_MAX
    if (a.flags & ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS) and (a.flags & ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS):
        return AR_FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if (a.flags & ACCOUNT_BOUND_EXTERNAL) and not id_zero(a.bound_id_lo, a.bound_id_hi):
        return AR_FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if a.ledger == 0:
        return AR_LEDGER_MUST_NOT_BE_ZERO
    if not ((a.kind >= KIND_CLASS_I and a.kind <= KIND_LOAN)
            or (a.kind >= KIND_INTERNAL_CASH and a.kind <= KIND_INTERNAL_LOAN_FUNDING)):
        return AR_KIND_UNKNOWN
    if a.status != STATUS_ACTIVE:
        return AR_STATUS_MUST_BE_ACTIVE
    if a.product >= s.product_count or (a.product != 0 and s.products[a.product].account_kind == 0):
        return AR_PRODUCT_UNKNOWN
    if not product_fits(s.products[a.product].account_kind, a.kind):
        return AR_PRODUCT_KIND_MISMATCH
    if not id_zero(a.bound_id_lo, a.bound_id_hi):
        bound_slot = account_find(s, a.bound_id_lo, a.bound_id_hi, hash_id(a.bound_id_lo, a.bound_id_hi))
        if bound_slot == SLOT_NONE:
            return AR_BOUND_ACCOUNT_NOT_FOUND
        if s.accounts[bound_slot].kind != KIND_CLASS_I:
            return AR_BOUND_ACCOUNT_MUST_BE_CLASS_I
        if s.accounts[bound_slot].ledger != a.ledger:
            return AR_BOUND_ACCOUNT_MUST_HAVE_THE_SAME_LEDGER
    h = hash_id(a.id_lo, a.id_hi)
    slot = account_find(s, a.id_lo, a.id_hi, h)
    if slot != SLOT_NONE:
        existing = &s.accounts[slot]
        if existing.ledger != a.ledger:
            return AR_EXISTS_WITH_DIFFERENT_LEDGER
        if existing.kind != a.kind:
            return AR_EXISTS_WITH_DIFFERENT_KIND
        if existing.flags != a.flags:
            return AR_EXISTS_WITH_DIFFERENT_FLAGS
        if existing.product != a.product:
            return AR_EXISTS_WITH_DIFFERENT_PRODUCT
        if existing.bound_slot != bound_slot:
            return AR_EXISTS_WITH_DIFFERENT_BOUND_ACCOUNT_ID
        if s.customers[slot] != a.customer:
            return AR_EXISTS_WITH_DIFFERENT_CUSTOMER
        return AR_EXISTS
    slot = <uint32_t>s.account_count
    account = &s.accounts[slot]
    memset(account, 0, ACCOUNT_SIZE)
    account.id_lo = a.id_lo
    account.id_hi = a.id_hi
    account.bound_slot = bound_slot
    account.ledger = a.ledger
    account.kind = a.kind
    account.status = STATUS_ACTIVE
    account.flags = a.flags
    account.product = a.product
    s.customers[slot] = a.customer
    account_index_insert(s, slot, h)
    s.account_count += 1
    dirty_account(s, slot)
    return AR_OK


def create_accounts(
    const unsigned char[::1] batch,
    unsigned char[::1] accounts, unsigned char[::1] pending, unsigned char[::1] account_index,
    unsigned char[::1] log, unsigned char[::1] failed, unsigned char[::1] transfer_index,
    unsigned char[::1] heap, unsigned char[::1] channel_counters, unsigned char[::1] channel_live,
    unsigned char[::1] dirty, unsigned char[::1] customers, const unsigned char[::1] products,
    const unsigned char[::1] channels, const unsigned char[::1] log_quotas, int64_t[::1] meta,
    unsigned char[::1] results,
):
    """Create a batch of accounts. Returns the count of `ok`."""
    cdef State s
    cdef int64_t count = batch.shape[0] // ACCOUNT_SIZE
    cdef int64_t i, ok = 0
    cdef AccountInput *inputs
    state_load(&s, accounts, pending, account_index, log, failed, transfer_index, heap,
               channel_counters, channel_live, dirty, customers, products, channels, log_quotas,
               meta)
    if batch.shape[0] % ACCOUNT_SIZE != 0:
        raise ValueError("batch size must be a multiple of ACCOUNT_SIZE")
    if results.shape[0] < count:
        raise ValueError("results too small for the batch")
    if s.account_count + count > s.account_capacity:
        raise ValueError("account table full")
    if (s.account_count + count) * 2 > <int64_t>(s.account_index_mask + 1):
        raise ValueError("account index would pass 50% load")
    if count == 0:
        return 0
    inputs = <AccountInput *>&batch[0]
    with nogil:
        for i in range(count):
            results[i] = create_account(&s, &inputs[i])
            if results[i] == AR_OK:
                ok += 1
    state_store(&s, meta)
    return ok


def update_account(
    uint64_t id_lo, uint64_t id_hi, int status, int flags,
    unsigned char[::1] accounts, unsigned char[::1] pending, unsigned char[::1] account_index,
    unsigned char[::1] log, unsigned char[::1] failed, unsigned char[::1] transfer_index,
    unsigned char[::1] heap, unsigned char[::1] channel_counters, unsigned char[::1] channel_live,
    unsigned char[::1] dirty, unsigned char[::1] customers, const unsigned char[::1] products,
    const unsigned char[::1] channels, const unsigned char[::1] log_quotas, int64_t[::1] meta,
):
    """Change status (freeze, unfreeze, close) and flags of one account."""
    cdef State s
    cdef uint32_t slot
    cdef Account *account
    state_load(&s, accounts, pending, account_index, log, failed, transfer_index, heap,
               channel_counters, channel_live, dirty, customers, products, channels, log_quotas,
               meta)
    slot = account_find(&s, id_lo, id_hi, hash_id(id_lo, id_hi))
    if slot == SLOT_NONE:
        return UR_ACCOUNT_NOT_FOUND
    if status < 0 or status > STATUS_CLOSED:
        return UR_STATUS_UNKNOWN
    if flags < 0 or flags & ~ACCOUNT_FLAGS_KNOWN:
        return UR_RESERVED_FLAG
    if (flags & ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS) and (flags & ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS):
        return UR_FLAGS_ARE_MUTUALLY_EXCLUSIVE
    account = &s.accounts[slot]
    if (flags & ACCOUNT_BOUND_EXTERNAL) and account.bound_slot != SLOT_NONE:
        return UR_FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if account.status == STATUS_CLOSED:
        return UR_ACCOUNT_CLOSED
    if status == STATUS_CLOSED:
        if account.debits_posted != account.credits_posted:
            return UR_BALANCE_NOT_ZERO
        if account.internal & INTERNAL_HAS_PENDING:
            return UR_PENDING_NOT_ZERO
    account.status = <uint8_t>status
    account.flags = <uint16_t>flags
    dirty_account(&s, slot)
    state_store(&s, meta)
    return UR_OK


# --- reads --------------------------------------------------------------------------

def account_slot(uint64_t id_lo, uint64_t id_hi, const unsigned char[::1] accounts,
                 const unsigned char[::1] account_index, int64_t[::1] meta):
    """Dense slot of an account id, or -1."""
    cdef State s
    cdef uint32_t slot
    s.account_index_mask = <uint64_t>meta[META_ACCOUNT_INDEX_MASK]
    s.account_slot_bits = <uint32_t>meta[META_ACCOUNT_SLOT_BITS]
    if (account_index.shape[0] != <int64_t>(s.account_index_mask + 1) * 4 or s.account_index_mask < 15
            or accounts.shape[0] < ACCOUNT_SIZE):
        raise ValueError("account index size must be (mask + 1) * 4, at least 16 entries")
    if s.account_slot_bits < 1 or s.account_slot_bits > 32:
        raise ValueError("account slot bits must be 1..32")
    s.account_slot_mask = <uint32_t>((<uint64_t>1 << s.account_slot_bits) - 1)
    s.accounts = <Account *>&accounts[0]
    s.account_index = <uint32_t *>&account_index[0]
    slot = account_find(&s, id_lo, id_hi, hash_id(id_lo, id_hi))
    return -1 if slot == SLOT_NONE else <int64_t>slot


def transfer_seq(uint64_t id_lo, uint64_t id_hi, const unsigned char[::1] transfer_index,
                 const unsigned char[::1] log, const unsigned char[::1] failed, int64_t[::1] meta):
    """Log sequence number of a transfer id (a failure ring seq | FAILED_BIT), or -1."""
    cdef State s
    s.transfer_index_mask = <uint64_t>meta[META_TRANSFER_INDEX_MASK]
    s.log_mask = <uint64_t>meta[META_LOG_MASK]
    s.failed_mask = <uint64_t>meta[META_FAILED_MASK]
    if failed.shape[0] != <int64_t>(s.failed_mask + 1) * TRANSFER_SIZE:
        raise ValueError("failure ring size must be (mask + 1) * TRANSFER_SIZE")
    s.failed = <Transfer *>&failed[0]
    if transfer_index.shape[0] != <int64_t>(s.transfer_index_mask + 1) * INDEX_ENTRY_SIZE or s.transfer_index_mask < 3:
        raise ValueError("transfer index size must be (mask + 1) * INDEX_ENTRY_SIZE, at least 4 entries")
    if log.shape[0] != <int64_t>(s.log_mask + 1) * TRANSFER_SIZE:
        raise ValueError("log size must be (mask + 1) * TRANSFER_SIZE")
    s.transfer_index = <IndexEntry *>&transfer_index[0]
    s.log = <Transfer *>&log[0]
    return transfer_find(&s, id_lo, id_hi, hash_id(id_lo, id_hi))


def rebuild_indexes(
    unsigned char[::1] accounts, unsigned char[::1] pending, unsigned char[::1] account_index,
    unsigned char[::1] log, unsigned char[::1] failed, unsigned char[::1] transfer_index,
    unsigned char[::1] heap, unsigned char[::1] channel_counters, unsigned char[::1] channel_live,
    unsigned char[::1] dirty, unsigned char[::1] customers, const unsigned char[::1] products,
    const unsigned char[::1] channels, const unsigned char[::1] log_quotas, int64_t[::1] meta,
):
    """Rebuild the account index, transfer index and expiry heap from restored tables.

    For a ledger restored from a snapshot: the accounts (slots 0..account_count),
    the pending table and the log window (log_tail..log_count) are in place,
    and the failure window (failed_tail..failed_count) are in place, the
    indexes and the heap empty. Inserts slots in order, ids in seq order (the
    log's, then the failure ring's) and every live hold with a timeout, exactly
    as posting them did, and counts each channel's records.
    """
    cdef State s
    cdef int64_t slot, seq
    cdef Transfer *record
    state_load(&s, accounts, pending, account_index, log, failed, transfer_index, heap,
               channel_counters, channel_live, dirty, customers, products, channels, log_quotas,
               meta)
    if s.transfer_index_count != 0 or s.heap_size != 0:
        raise ValueError("rebuild_indexes needs empty indexes")
    if (s.failed_count - s.failed_tail > <int64_t>(s.failed_mask + 1)
            or s.failed_tail > s.failed_count):
        raise ValueError("failure window larger than the failure ring")
    if (s.account_count) * 2 > <int64_t>(s.account_index_mask + 1):
        raise ValueError("account index would pass 50% load")
    with nogil:
        for slot in range(s.account_count):
            account_index_insert(&s, <uint32_t>slot, hash_id(s.accounts[slot].id_lo, s.accounts[slot].id_hi))
        memset(s.channel_live, 0, CHANNEL_COUNT * CHANNEL_LIVE_SIZE)
        for seq in range(s.log_tail, s.log_count):
            record = log_at(&s, seq)
            transfer_index_insert(&s, record.id_lo, record.id_hi, <uint64_t>seq)
            s.channel_live[2 * record.channel] += 1
            if record.state == STATE_PENDING and record.timeout_s != 0:
                heap_push(&s, record.timestamp + <uint64_t>record.timeout_s * NS_PER_S, <uint64_t>seq)
        for seq in range(s.failed_tail, s.failed_count):
            record = failed_at(&s, seq)
            transfer_index_insert(&s, record.id_lo, record.id_hi, <uint64_t>(seq | FAILED_BIT))
            s.channel_live[2 * record.channel + 1] += 1
    state_store(&s, meta)
    return s.transfer_index_count


def dirty_take(unsigned char[::1] dirty, int64_t[::1] meta, int64_t account_capacity):
    """The account slots and changed transfer seqs marked since the last take; clears them.

    Returns (slots, seqs, overflowed): `overflowed` means more transfers changed
    than the list holds, and the caller must rewrite every open hold.
    """
    cdef int64_t log_size = meta[META_LOG_MASK] + 1
    cdef int64_t account_count = meta[META_DIRTY_ACCOUNT_COUNT]
    cdef int64_t transfer_count = meta[META_DIRTY_TRANSFER_COUNT]
    cdef uint32_t *slots
    cdef uint8_t *marks
    cdef int64_t i
    if meta[META_DIRTY_ENABLED] == 0:
        raise ValueError("dirty tracking is off")
    if dirty.shape[0] < account_capacity * 5 + log_size * 8:
        raise ValueError("dirty table smaller than accounts * 5 + log size * 8")
    slots = <uint32_t *>&dirty[log_size * 8]
    marks = <uint8_t *>&dirty[log_size * 8 + account_capacity * 4]
    out_slots = bytes((<unsigned char *>slots)[:account_count * 4])
    out_seqs = bytes(dirty[:transfer_count * 8])
    for i in range(account_count):
        marks[slots[i]] = 0
    overflowed = meta[META_DIRTY_OVERFLOW] != 0
    meta[META_DIRTY_ACCOUNT_COUNT] = 0
    meta[META_DIRTY_TRANSFER_COUNT] = 0
    meta[META_DIRTY_OVERFLOW] = 0
    return out_slots, out_seqs, overflowed


def account_history(uint32_t slot, int64_t before_seq, int64_t limit,
                    const unsigned char[::1] log, int64_t[::1] meta):
    """Log seqs of the account's transfers, newest first, older than `before_seq`.

    At most `limit`; `before_seq` < 0 means from the newest. Scans the log
    window backwards (failed transfers have no slots and never match).
    """
    cdef int64_t tail = meta[META_LOG_TAIL]
    cdef int64_t count = meta[META_LOG_COUNT]
    cdef uint64_t mask = <uint64_t>meta[META_LOG_MASK]
    cdef const Transfer *records = <const Transfer *>&log[0]
    cdef const Transfer *record
    cdef int64_t seq
    if log.shape[0] != <int64_t>(mask + 1) * TRANSFER_SIZE:
        raise ValueError("log size must be (mask + 1) * TRANSFER_SIZE")
    if limit < 0:
        raise ValueError("limit must be >= 0")
    seq = count - 1 if before_seq < 0 or before_seq > count else before_seq - 1
    found = []
    while seq >= tail and len(found) < limit:
        record = &records[<uint64_t>seq & mask]
        if record.debit_slot == slot or record.credit_slot == slot:
            found.append(seq)
        seq -= 1
    return found


def channel_entries_live(const unsigned char[::1] channel_counters, int64_t day):
    """Today's non-zero channel counters as a sorted list of (slot, channel, used)."""
    cdef int64_t count = channel_counters.shape[0] // CHANNEL_ENTRY_SIZE
    cdef const ChannelEntry *entries = <const ChannelEntry *>&channel_counters[0]
    cdef int64_t i
    live = []
    for i in range(count):
        if (entries[i].key_day != 0 and <int64_t>(entries[i].key_day & 0xFFFF) == day
                and entries[i].used != 0):
            # (key >> 8) - 1: the slot for account counters, with the counter space above
            # bit 32 (ledger/state.py CHANNEL_LIVE); a customer's counters decode alike.
            live.append((<int64_t>(entries[i].key_day >> 24) - 1, <int>((entries[i].key_day >> 16) & 0xFF),
                         entries[i].used))
    live.sort()
    return live


def channel_used(uint32_t slot, int channel, int64_t day, const unsigned char[::1] channel_counters):
    """What `slot` has used today on `channel` (0 when nothing)."""
    cdef State s
    cdef uint64_t key
    cdef int64_t position
    if channel < 0 or channel > 255:
        raise ValueError("channel out of range")
    s.channel_counters = <ChannelEntry *>&channel_counters[0]
    s.channel_mask = <uint64_t>(channel_counters.shape[0] // CHANNEL_ENTRY_SIZE - 1)
    key = channel_key(slot, <uint8_t>channel)
    position = channel_position(&s, key, day)
    if position < 0:
        return 0
    return channel_used_at(&s, position, key, day)


def counter_used(uint64_t key, int64_t day, const unsigned char[::1] channel_counters):
    """What day counter `key` (any counter space) holds for `day` (0 when nothing)."""
    cdef State s
    cdef int64_t position
    if key >> 48:
        raise ValueError("counter key out of range")
    s.channel_counters = <ChannelEntry *>&channel_counters[0]
    s.channel_mask = <uint64_t>(channel_counters.shape[0] // CHANNEL_ENTRY_SIZE - 1)
    position = channel_position(&s, key, day)
    if position < 0:
        return 0
    return channel_used_at(&s, position, key, day)


def year_of_day_kernel(int64_t day):
    """The kernel's civil-year function, exposed for the agreement test."""
    return year_of_day(day)


# Every enum value, for tests/test_kernel_contract.py.
TRANSFER_RESULTS = {name: value for name, value in {
    "OK": TR_OK, "LINKED_EVENT_FAILED": TR_LINKED_EVENT_FAILED,
    "LINKED_EVENT_CHAIN_OPEN": TR_LINKED_EVENT_CHAIN_OPEN,
    "TIMESTAMP_MUST_BE_ZERO": TR_TIMESTAMP_MUST_BE_ZERO, "RESERVED_FIELD": TR_RESERVED_FIELD,
    "RESERVED_FLAG": TR_RESERVED_FLAG, "ID_MUST_NOT_BE_ZERO": TR_ID_MUST_NOT_BE_ZERO,
    "ID_MUST_NOT_BE_INT_MAX": TR_ID_MUST_NOT_BE_INT_MAX,
    "FLAGS_ARE_MUTUALLY_EXCLUSIVE": TR_FLAGS_ARE_MUTUALLY_EXCLUSIVE,
    "DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO": TR_DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
    "DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX": TR_DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX,
    "CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO": TR_CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
    "CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX": TR_CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX,
    "ACCOUNTS_MUST_BE_DIFFERENT": TR_ACCOUNTS_MUST_BE_DIFFERENT,
    "PENDING_ID_MUST_BE_ZERO": TR_PENDING_ID_MUST_BE_ZERO,
    "PENDING_ID_MUST_NOT_BE_ZERO": TR_PENDING_ID_MUST_NOT_BE_ZERO,
    "PENDING_ID_MUST_NOT_BE_INT_MAX": TR_PENDING_ID_MUST_NOT_BE_INT_MAX,
    "PENDING_ID_MUST_BE_DIFFERENT": TR_PENDING_ID_MUST_BE_DIFFERENT,
    "TIMEOUT_RESERVED_FOR_PENDING_TRANSFER": TR_TIMEOUT_RESERVED_FOR_PENDING_TRANSFER,
    "LEDGER_MUST_NOT_BE_ZERO": TR_LEDGER_MUST_NOT_BE_ZERO,
    "CODE_MUST_NOT_BE_ZERO": TR_CODE_MUST_NOT_BE_ZERO, "CODE_UNKNOWN": TR_CODE_UNKNOWN,
    "AMOUNT_MUST_BE_POSITIVE": TR_AMOUNT_MUST_BE_POSITIVE,
    "DEBIT_ACCOUNT_NOT_FOUND": TR_DEBIT_ACCOUNT_NOT_FOUND,
    "CREDIT_ACCOUNT_NOT_FOUND": TR_CREDIT_ACCOUNT_NOT_FOUND,
    "ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER": TR_ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER,
    "TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS": TR_TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS,
    "EXISTS_WITH_DIFFERENT_FLAGS": TR_EXISTS_WITH_DIFFERENT_FLAGS,
    "EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID": TR_EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID,
    "EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID": TR_EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID,
    "EXISTS_WITH_DIFFERENT_AMOUNT": TR_EXISTS_WITH_DIFFERENT_AMOUNT,
    "EXISTS_WITH_DIFFERENT_PENDING_ID": TR_EXISTS_WITH_DIFFERENT_PENDING_ID,
    "EXISTS_WITH_DIFFERENT_TIMEOUT": TR_EXISTS_WITH_DIFFERENT_TIMEOUT,
    "EXISTS_WITH_DIFFERENT_LEDGER": TR_EXISTS_WITH_DIFFERENT_LEDGER,
    "EXISTS_WITH_DIFFERENT_CODE": TR_EXISTS_WITH_DIFFERENT_CODE,
    "EXISTS_WITH_DIFFERENT_CHANNEL": TR_EXISTS_WITH_DIFFERENT_CHANNEL,
    "EXISTS_WITH_DIFFERENT_USER_DATA": TR_EXISTS_WITH_DIFFERENT_USER_DATA,
    "EXISTS": TR_EXISTS, "ID_ALREADY_FAILED": TR_ID_ALREADY_FAILED,
    "PENDING_TRANSFER_NOT_FOUND": TR_PENDING_TRANSFER_NOT_FOUND,
    "PENDING_TRANSFER_NOT_PENDING": TR_PENDING_TRANSFER_NOT_PENDING,
    "PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID": TR_PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID,
    "PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID": TR_PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID,
    "PENDING_TRANSFER_HAS_DIFFERENT_LEDGER": TR_PENDING_TRANSFER_HAS_DIFFERENT_LEDGER,
    "PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT": TR_PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT,
    "EXCEEDS_PENDING_TRANSFER_AMOUNT": TR_EXCEEDS_PENDING_TRANSFER_AMOUNT,
    "PENDING_TRANSFER_ALREADY_POSTED": TR_PENDING_TRANSFER_ALREADY_POSTED,
    "PENDING_TRANSFER_ALREADY_VOIDED": TR_PENDING_TRANSFER_ALREADY_VOIDED,
    "PENDING_TRANSFER_EXPIRED": TR_PENDING_TRANSFER_EXPIRED,
    "REVERSAL_TARGET_NOT_FOUND": TR_REVERSAL_TARGET_NOT_FOUND,
    "REVERSAL_TARGET_NOT_POSTED": TR_REVERSAL_TARGET_NOT_POSTED,
    "REVERSAL_ACCOUNTS_MISMATCH": TR_REVERSAL_ACCOUNTS_MISMATCH,
    "EXCEEDS_REVERSIBLE_AMOUNT": TR_EXCEEDS_REVERSIBLE_AMOUNT,
    "DEBIT_ACCOUNT_FROZEN": TR_DEBIT_ACCOUNT_FROZEN, "CREDIT_ACCOUNT_FROZEN": TR_CREDIT_ACCOUNT_FROZEN,
    "DEBIT_ACCOUNT_CLOSED": TR_DEBIT_ACCOUNT_CLOSED, "CREDIT_ACCOUNT_CLOSED": TR_CREDIT_ACCOUNT_CLOSED,
    "NO_BOUND_ACCOUNT": TR_NO_BOUND_ACCOUNT, "CASH_NOT_ALLOWED": TR_CASH_NOT_ALLOWED,
    "NON_BOUND_INFLOW_DISABLED": TR_NON_BOUND_INFLOW_DISABLED,
    "OVERFLOWS_DEBITS_PENDING": TR_OVERFLOWS_DEBITS_PENDING,
    "OVERFLOWS_CREDITS_PENDING": TR_OVERFLOWS_CREDITS_PENDING,
    "OVERFLOWS_DEBITS_POSTED": TR_OVERFLOWS_DEBITS_POSTED,
    "OVERFLOWS_CREDITS_POSTED": TR_OVERFLOWS_CREDITS_POSTED,
    "OVERFLOWS_DEBITS": TR_OVERFLOWS_DEBITS, "OVERFLOWS_CREDITS": TR_OVERFLOWS_CREDITS,
    "OVERFLOWS_TIMEOUT": TR_OVERFLOWS_TIMEOUT, "EXCEEDS_CREDITS": TR_EXCEEDS_CREDITS,
    "EXCEEDS_DEBITS": TR_EXCEEDS_DEBITS, "EXCEEDS_TRANSFER_CAP": TR_EXCEEDS_TRANSFER_CAP,
    "EXCEEDS_CHANNEL_TRANSFER_CAP": TR_EXCEEDS_CHANNEL_TRANSFER_CAP,
    "EXCEEDS_CHANNEL_DAILY_CAP": TR_EXCEEDS_CHANNEL_DAILY_CAP,
    "EXCEEDS_DAILY_OUTFLOW": TR_EXCEEDS_DAILY_OUTFLOW, "EXCEEDS_YEARLY_OUTFLOW": TR_EXCEEDS_YEARLY_OUTFLOW,
    "EXCEEDS_DAILY_INFLOW": TR_EXCEEDS_DAILY_INFLOW, "EXCEEDS_YEARLY_INFLOW": TR_EXCEEDS_YEARLY_INFLOW,
    "EXCEEDS_BALANCE_CAP": TR_EXCEEDS_BALANCE_CAP,
    "CHANNEL_CODE_NOT_ALLOWED": TR_CHANNEL_CODE_NOT_ALLOWED,
    "DEBIT_ACCOUNT_CODE_NOT_ALLOWED": TR_DEBIT_ACCOUNT_CODE_NOT_ALLOWED,
    "CREDIT_ACCOUNT_CODE_NOT_ALLOWED": TR_CREDIT_ACCOUNT_CODE_NOT_ALLOWED,
    "CODE_NEEDS_BANK_ACCOUNT": TR_CODE_NEEDS_BANK_ACCOUNT,
    "EXCEEDS_INTERNAL_FLOOR": TR_EXCEEDS_INTERNAL_FLOOR,
    "EXCEEDS_CHANNEL_DAILY_INFLOW_CAP": TR_EXCEEDS_CHANNEL_DAILY_INFLOW_CAP,
    "EXCEEDS_CUSTOMER_DAILY_CAP": TR_EXCEEDS_CUSTOMER_DAILY_CAP,
    "STRONG_AUTH_REQUIRED": TR_STRONG_AUTH_REQUIRED,
    "CHANNEL_LOG_QUOTA_EXCEEDED": TR_CHANNEL_LOG_QUOTA_EXCEEDED,
}.items()}

ACCOUNT_RESULTS = {
    "OK": AR_OK, "RESERVED_FIELD": AR_RESERVED_FIELD, "RESERVED_FLAG": AR_RESERVED_FLAG,
    "ID_MUST_NOT_BE_ZERO": AR_ID_MUST_NOT_BE_ZERO, "ID_MUST_NOT_BE_INT_MAX": AR_ID_MUST_NOT_BE_INT_MAX,
    "FLAGS_ARE_MUTUALLY_EXCLUSIVE": AR_FLAGS_ARE_MUTUALLY_EXCLUSIVE,
    "LEDGER_MUST_NOT_BE_ZERO": AR_LEDGER_MUST_NOT_BE_ZERO, "KIND_UNKNOWN": AR_KIND_UNKNOWN,
    "STATUS_MUST_BE_ACTIVE": AR_STATUS_MUST_BE_ACTIVE, "PRODUCT_UNKNOWN": AR_PRODUCT_UNKNOWN,
    "BOUND_ACCOUNT_NOT_FOUND": AR_BOUND_ACCOUNT_NOT_FOUND,
    "BOUND_ACCOUNT_MUST_BE_CLASS_I": AR_BOUND_ACCOUNT_MUST_BE_CLASS_I,
    "BOUND_ACCOUNT_MUST_HAVE_THE_SAME_LEDGER": AR_BOUND_ACCOUNT_MUST_HAVE_THE_SAME_LEDGER,
    "EXISTS_WITH_DIFFERENT_LEDGER": AR_EXISTS_WITH_DIFFERENT_LEDGER,
    "EXISTS_WITH_DIFFERENT_KIND": AR_EXISTS_WITH_DIFFERENT_KIND,
    "EXISTS_WITH_DIFFERENT_FLAGS": AR_EXISTS_WITH_DIFFERENT_FLAGS,
    "EXISTS_WITH_DIFFERENT_PRODUCT": AR_EXISTS_WITH_DIFFERENT_PRODUCT,
    "EXISTS_WITH_DIFFERENT_BOUND_ACCOUNT_ID": AR_EXISTS_WITH_DIFFERENT_BOUND_ACCOUNT_ID,
    "EXISTS": AR_EXISTS,
    "PRODUCT_KIND_MISMATCH": AR_PRODUCT_KIND_MISMATCH,
    "EXISTS_WITH_DIFFERENT_CUSTOMER": AR_EXISTS_WITH_DIFFERENT_CUSTOMER,
}

STRUCT_SIZES = {
    "Account": sizeof(Account), "AccountInput": sizeof(AccountInput), "Counters": sizeof(Counters), "Pending": sizeof(Pending),
    "Transfer": sizeof(Transfer), "Product": sizeof(Product), "ChannelRule": sizeof(ChannelRule),
    "KindRule": sizeof(KindRule), "BankRule": sizeof(BankRule),
    "IndexEntry": sizeof(IndexEntry), "HeapEntry": sizeof(HeapEntry), "ChannelEntry": sizeof(ChannelEntry),
}
