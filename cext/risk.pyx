# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The risk stage's kernel: a compiled rule program evaluated over postings, with the
velocity, history and first-seen counters it keeps in open-addressing tables.

Layouts and semantics: limits/risk_layout.py (RULE, CONTEXT, VERDICT). The readings
taken where that text leaves room (what feeds a counter, counter keys, the monotonic
clock, the velocity window's sub-buckets...) are in the module docstring of the twin,
limits/risk_reference.py, which this file follows step for step (same names, same
order); tests/property/test_risk_differential.py holds the two to each other.

Storage: three tables of fixed-size slots keyed by a u64 (`mix64` of the counter's
group and the entity; 0 marks an empty slot), linear probing, allocated on the first
count and rehashed at 70% load into a table sized for 50% of the live keys (slots
whose data has expired are dropped then, and reused by an insert meanwhile):

- velocity: key, expire_s, 8 sub-buckets (index u32, count u32, sum i64): 144 bytes;
- history: key, expire_s, head, count, 16 samples (second u32, amount i64): 216 bytes;
- pairs: key, first counted second: 16 bytes (a first sighting never expires).

`screen` checks its buffers once (with the GIL), then runs the postings in C with no
Python object (the GIL released from 32 postings on: for one posting the release costs
more than the work). A lookup is the slot of `key & mask` and its neighbours; in a
batch the slots of posting i + PREFETCH_AHEAD are prefetched while posting i is
evaluated, so the cache misses of a batch overlap (about 2x the rate at 100,000
accounts). Each posting is evaluated (lookups only), then counted (upserts: the lines
are hot by then). Lists are open-addressing sets of u64 (`set_list`).

Memory: a key costs its slot over a load of 35%..70% (a table doubles at 70%): about
200..400 bytes a velocity key, 300..600 a history key, 25..45 a pair. A rehash copies
the live slots at once, in the call that crossed 70%: about 0.25 us a live key (measured:
390 ms at 1.5 million velocity keys, 49 ms at 184,000), rare (at each doubling) but a
pause on the hot path, so a service expecting millions of keys passes a
`capacity_log2` that holds them from the start (21: 2 million slots a table).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset

from cext.ledger_kernel cimport Transfer

cdef extern from *:
    """
    typedef __int128 tally_risk_i128;

    static inline int64_t tally_risk_clamp64(tally_risk_i128 value) {
        if (value > (tally_risk_i128)INT64_MAX) return INT64_MAX;
        if (value < (tally_risk_i128)INT64_MIN) return INT64_MIN;
        return (int64_t)value;
    }

    /* amount * 1000 > multiple_permille * median, exactly */
    static inline int tally_risk_over_median(int64_t amount, uint32_t multiple, int64_t median) {
        return (tally_risk_i128)amount * 1000 > (tally_risk_i128)multiple * median;
    }

    /* A prefetch hint. GCC drops calls to a function that only prefetches (it deems
       them free of side effects), so on x86-64 it is a volatile asm it must keep. */
    static inline void tally_risk_prefetch(const void *address) {
    #if defined(__x86_64__) && defined(__GNUC__)
        __asm__ volatile("prefetcht0 (%0)" : : "r"(address));
    #else
        __builtin_prefetch(address, 0, 3);
    #endif
    }
    """
    ctypedef long long i128 "tally_risk_i128"
    void tally_risk_prefetch(const void *address) noexcept nogil
    int64_t tally_risk_clamp64(i128 value) noexcept nogil
    bint tally_risk_over_median(int64_t amount, uint32_t multiple, int64_t median) noexcept nogil

cdef enum:
    RULE_SIZE_ = 64
    CONTEXT_SIZE_ = 48
    VERDICT_SIZE_ = 16
    TRANSFER_SIZE_ = 128
    RULES_MAX_ = 64
    HISTORY_SAMPLES_ = 16
    VELOCITY_BUCKETS_ = 8
    DAY_S = 86400
    NOGIL_FROM = 32  # postings: below this the GIL is kept (its release costs more)
    PREFETCH_AHEAD = 8  # postings: how far ahead a batch's counter slots are prefetched

cdef enum RuleType:
    VELOCITY = 1
    HISTORY = 2
    NEW_PAYEE = 3
    NEW_DEVICE = 4
    TIME_OF_DAY = 5
    LIST = 6
    LARGE_VALUE = 7

cdef enum Scope:
    SCOPE_NONE = 0
    SCOPE_ACCOUNT = 1
    SCOPE_CUSTOMER = 2
    SCOPE_DEVICE = 3
    SCOPE_IP = 4
    SCOPE_PAYEE = 5

cdef enum Match:
    MATCH_NONE = 0
    MATCH_ACCOUNT = 1
    MATCH_DEVICE = 2
    MATCH_RESIDENT_ID = 3
    MATCH_COUNTERPARTY = 4
    MATCH_IP = 5

cdef enum Outcome:
    ALLOW = 0
    CHALLENGE = 1
    DELAY = 2
    REVIEW = 3
    BLOCK = 4

cdef enum:
    FLAG_POST_PENDING = 4
    FLAG_VOID_PENDING = 8

cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15
cdef uint64_t NOW_S_MAX_ = 0xFFFFFFFF
cdef uint32_t U32_MAX = 0xFFFFFFFF
cdef uint64_t CAPACITY_MAX = 1ULL << 36

RULE_SIZE = RULE_SIZE_
CONTEXT_SIZE = CONTEXT_SIZE_
VERDICT_SIZE = VERDICT_SIZE_
TRANSFER_SIZE = TRANSFER_SIZE_
RULES_MAX = RULES_MAX_
HISTORY_SAMPLES = HISTORY_SAMPLES_
VELOCITY_BUCKETS = VELOCITY_BUCKETS_
NOW_S_MAX = NOW_S_MAX_


cdef packed struct RuleRow:  # risk_layout.RULE
    uint8_t rule_type
    uint8_t scope
    uint8_t outcome
    uint8_t report
    uint8_t match
    uint8_t pad0[3]
    uint32_t codes
    uint32_t window_s
    int64_t amount_min
    int64_t sum_max
    uint32_t count_max
    uint32_t samples_min
    uint32_t multiple_permille
    uint32_t list_id
    uint32_t from_s
    uint32_t to_s
    uint8_t pad1[8]

cdef packed struct ContextRow:  # risk_layout.CONTEXT
    uint64_t customer
    uint64_t device
    uint64_t ip
    uint64_t counterparty
    uint64_t resident
    uint32_t local_s
    uint8_t second_factor
    uint8_t pad[3]

cdef packed struct VerdictRow:  # risk_layout.VERDICT
    uint8_t outcome
    uint8_t report
    uint8_t challenge_met
    uint8_t pad[5]
    uint64_t mask

STRUCT_SIZES = {
    "RULE": sizeof(RuleRow),
    "CONTEXT": sizeof(ContextRow),
    "VERDICT": sizeof(VerdictRow),
    "TRANSFER": sizeof(Transfer),
}


cdef struct Rule:  # a decoded row with the plan set_program derives (limits _Rule)
    uint8_t rule_type
    uint8_t scope
    uint8_t outcome
    uint8_t report
    uint8_t match
    bint counts  # the first rule of its group: it feeds the counter
    uint32_t codes
    uint32_t window_s
    int64_t amount_min
    int64_t sum_max
    uint32_t count_max
    uint32_t samples_min
    uint32_t multiple_permille
    uint32_t list_id
    uint32_t from_s
    uint32_t to_s
    uint64_t group
    uint64_t width_s  # a velocity sub-bucket's width
    const uint64_t *list_slots  # the list's set (NULL: empty)
    uint64_t list_mask

cdef struct Posting:  # what the rules read of one posting (limits _Posting)
    uint64_t debit
    uint64_t credit
    int64_t amount
    uint16_t code
    uint16_t flags
    uint64_t customer
    uint64_t device
    uint64_t ip
    uint64_t counterparty
    uint64_t resident
    uint32_t local_s
    uint8_t second_factor

cdef struct Bucket:
    uint32_t index
    uint32_t count
    int64_t sum

cdef struct VelocitySlot:
    uint64_t key
    uint64_t expire_s
    Bucket buckets[VELOCITY_BUCKETS_]

cdef struct HistorySlot:
    uint64_t key
    uint64_t expire_s
    uint32_t head
    uint32_t count
    uint32_t times[HISTORY_SAMPLES_]
    int64_t amounts[HISTORY_SAMPLES_]

cdef struct PairSlot:
    uint64_t key
    int64_t first_s_plus1  # the second first counted + 1 (0: made by the upsert just now)

cdef struct Table:
    char *slots  # NULL until the first insert
    uint64_t mask
    uint64_t used  # slots holding a key (live or expired)
    size_t slot_size
    bint expires  # slots carry expire_s at offset 8 (velocity, history)


# -- keys ------------------------------------------------------------------------------

cdef inline uint64_t mix64_(uint64_t value) noexcept nogil:
    cdef uint64_t z = value + GOLDEN
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


def mix64(value):
    """The SplitMix64 finalizer of `value` mod 2**64 (limits.risk_reference.mix64)."""
    return mix64_(<uint64_t>(value & 0xFFFFFFFFFFFFFFFF))


cdef inline uint64_t account_key(uint64_t lo, uint64_t hi) noexcept nogil:
    return lo ^ (hi * GOLDEN)


cdef inline uint64_t group_of(uint64_t rule_type, uint64_t scope, uint64_t window_s,
                              uint64_t codes, int64_t amount_min) noexcept nogil:
    cdef uint64_t group = mix64_(rule_type | scope << 8 | window_s << 16)
    group = mix64_(group ^ codes)
    return mix64_(group ^ <uint64_t>amount_min)


cdef inline uint64_t counter_key(uint64_t group, uint64_t entity) noexcept nogil:
    cdef uint64_t key = mix64_(group ^ entity)
    return key if key else 1


cdef inline uint64_t pair_key(uint64_t group, uint64_t customer, uint64_t other) noexcept nogil:
    cdef uint64_t key = mix64_(mix64_(group ^ customer) ^ other)
    return key if key else 1


cdef inline int64_t clamp_add(int64_t a, int64_t b) noexcept nogil:
    return tally_risk_clamp64(<i128>a + b)


# -- tables ----------------------------------------------------------------------------

cdef inline char *slot_at(const Table *t, uint64_t position) noexcept nogil:
    return t.slots + position * t.slot_size


cdef inline uint64_t slot_key(const char *slot) noexcept nogil:
    return (<const uint64_t *>slot)[0]


cdef inline bint slot_live(const Table *t, const char *slot, uint64_t now) noexcept nogil:
    return slot_key(slot) != 0 and (not t.expires or now < (<const uint64_t *>slot)[1])


cdef inline char *table_find(const Table *t, uint64_t key) noexcept nogil:
    """The slot holding `key`, or NULL."""
    cdef uint64_t position
    cdef char *slot
    cdef uint64_t k
    if t.slots == NULL:
        return NULL
    position = key & t.mask
    while True:
        slot = slot_at(t, position)
        k = slot_key(slot)
        if k == key:
            return slot
        if k == 0:
            return NULL
        position = (position + 1) & t.mask


cdef bint table_rehash(Table *t, uint64_t now, int capacity_log2) noexcept nogil:
    """A new slot array sized for 50% of the live keys (at least the old size), the
    expired slots dropped; False when out of memory (the table unchanged)."""
    cdef uint64_t live = 0
    cdef uint64_t capacity
    cdef uint64_t old_capacity = 0
    cdef uint64_t i, position, mask
    cdef char *slots
    cdef char *slot
    if t.slots == NULL:
        capacity = 1ULL << capacity_log2
    else:
        old_capacity = t.mask + 1
        for i in range(old_capacity):
            if slot_live(t, slot_at(t, i), now):
                live += 1
        capacity = old_capacity
        while (live + 1) * 2 > capacity:
            capacity *= 2
    if capacity > CAPACITY_MAX:
        return False
    slots = <char *>calloc(capacity, t.slot_size)
    if slots == NULL:
        return False
    mask = capacity - 1
    for i in range(old_capacity):
        slot = slot_at(t, i)
        if not slot_live(t, slot, now):
            continue
        position = slot_key(slot) & mask
        while (<uint64_t *>(slots + position * t.slot_size))[0] != 0:
            position = (position + 1) & mask
        memcpy(slots + position * t.slot_size, slot, t.slot_size)
    free(t.slots)
    t.slots = slots
    t.mask = mask
    t.used = live
    return True


cdef char *table_upsert(Table *t, uint64_t key, uint64_t now, int capacity_log2) noexcept nogil:
    """The slot holding `key`, made (zeroed, keyed) when missing: the first expired slot
    on its probe path, else the empty slot ending it (rehashing at 70% load); NULL when
    out of memory."""
    cdef uint64_t position
    cdef char *slot
    cdef char *reusable = NULL
    cdef uint64_t k
    if t.slots == NULL and not table_rehash(t, now, capacity_log2):
        return NULL
    position = key & t.mask
    while True:
        slot = slot_at(t, position)
        k = slot_key(slot)
        if k == key:
            return slot
        if k == 0:
            break
        if reusable == NULL and t.expires and now >= (<uint64_t *>slot)[1]:
            reusable = slot
        position = (position + 1) & t.mask
    if reusable != NULL:
        slot = reusable
    elif (t.used + 1) * 10 > (t.mask + 1) * 7:
        if not table_rehash(t, now, capacity_log2):
            return NULL
        return table_upsert(t, key, now, capacity_log2)
    else:
        t.used += 1
    memset(slot, 0, t.slot_size)
    (<uint64_t *>slot)[0] = key
    return slot


cdef uint64_t table_live(const Table *t, uint64_t now) noexcept nogil:
    cdef uint64_t live = 0
    cdef uint64_t i
    if t.slots == NULL:
        return 0
    for i in range(t.mask + 1):
        if slot_live(t, slot_at(t, i), now):
            live += 1
    return live


cdef inline uint64_t table_bytes(const Table *t) noexcept nogil:
    return 0 if t.slots == NULL else (t.mask + 1) * t.slot_size


cdef void table_free(Table *t) noexcept nogil:
    free(t.slots)
    t.slots = NULL
    t.mask = 0
    t.used = 0


# -- lists -----------------------------------------------------------------------------

cdef class _KeySet:
    """One list: an open-addressing set of nonzero u64 keys at `mix64(key) & mask`."""

    cdef uint64_t *slots
    cdef uint64_t mask
    cdef Py_ssize_t size

    def __dealloc__(self):
        free(self.slots)


cdef inline bint keyset_has(const uint64_t *slots, uint64_t mask, uint64_t value) noexcept nogil:
    cdef uint64_t position
    cdef uint64_t k
    if value == 0 or slots == NULL:
        return False
    position = mix64_(value) & mask
    while True:
        k = slots[position]
        if k == value:
            return True
        if k == 0:
            return False
        position = (position + 1) & mask


# -- evaluation ------------------------------------------------------------------------

cdef inline bint observes(const Rule *rule, const Posting *posting) noexcept nogil:
    """The rule's codes hold the posting's code (the flags are checked per posting)."""
    return posting.code < 32 and (rule.codes >> posting.code) & 1


cdef inline uint64_t scope_key(uint8_t scope, const Posting *posting) noexcept nogil:
    if scope == SCOPE_ACCOUNT:
        return posting.debit
    if scope == SCOPE_CUSTOMER:
        return posting.customer
    if scope == SCOPE_DEVICE:
        return posting.device
    if scope == SCOPE_IP:
        return posting.ip
    return posting.credit


cdef inline uint64_t match_key(uint8_t match, const Posting *posting) noexcept nogil:
    if match == MATCH_DEVICE:
        return posting.device
    if match == MATCH_RESIDENT_ID:
        return posting.resident
    if match == MATCH_COUNTERPARTY:
        return posting.counterparty
    return posting.ip


cdef struct Kernel:  # what the nogil loop reads and writes
    Rule rules[RULES_MAX_]
    int rule_count
    bint has_counters  # a rule that counts (velocity, history, pairs)
    Table velocity
    Table history
    Table pairs
    int capacity_log2
    bint out_of_memory


cdef bint rule_fires(Kernel *k, const Rule *rule, const Posting *posting, uint64_t now,
                     int64_t *value) noexcept nogil:
    cdef uint64_t entity, other, current, count
    cdef i128 total
    cdef int i, j, n
    cdef int64_t amounts[HISTORY_SAMPLES_]
    cdef int64_t amount, age
    cdef const VelocitySlot *velocity
    cdef const HistorySlot *history
    cdef const PairSlot *pair
    cdef uint8_t rule_type = rule.rule_type
    if rule_type == VELOCITY:
        entity = scope_key(rule.scope, posting)
        if entity == 0:
            return False
        velocity = <const VelocitySlot *>table_find(&k.velocity, counter_key(rule.group, entity))
        count = 0
        total = 0
        if velocity != NULL:
            current = now // rule.width_s
            for i in range(VELOCITY_BUCKETS_):
                if <int64_t>current - <int64_t>velocity.buckets[i].index < VELOCITY_BUCKETS_:
                    count += velocity.buckets[i].count
                    total += velocity.buckets[i].sum
        if rule.count_max > 0 and count + 1 > rule.count_max:
            value[0] = <int64_t>(count + 1)
            return True
        if rule.sum_max > 0 and total + posting.amount > rule.sum_max:
            value[0] = tally_risk_clamp64(total + posting.amount)
            return True
        return False
    if rule_type == HISTORY:
        entity = scope_key(rule.scope, posting)
        if entity == 0:
            return False
        history = <const HistorySlot *>table_find(&k.history, counter_key(rule.group, entity))
        if history == NULL:
            return False
        n = 0
        for i in range(<int>history.count):
            if <int64_t>now - <int64_t>history.times[i] < <int64_t>rule.window_s:
                amount = history.amounts[i]
                j = n
                while j > 0 and amounts[j - 1] > amount:
                    amounts[j] = amounts[j - 1]
                    j -= 1
                amounts[j] = amount
                n += 1
        if n == 0 or <uint32_t>n < rule.samples_min:
            return False
        if tally_risk_over_median(posting.amount, rule.multiple_permille, amounts[(n - 1) // 2]):
            value[0] = amounts[(n - 1) // 2]
            return True
        return False
    if rule_type == NEW_PAYEE or rule_type == NEW_DEVICE:
        other = posting.counterparty if rule_type == NEW_PAYEE else posting.device
        if posting.customer == 0 or other == 0:
            return False
        pair = <const PairSlot *>table_find(&k.pairs, pair_key(rule.group, posting.customer, other))
        if pair == NULL:
            value[0] = -1
            return True
        age = <int64_t>now - (pair.first_s_plus1 - 1)
        if age < <int64_t>rule.window_s:
            value[0] = age
            return True
        return False
    if rule_type == TIME_OF_DAY:
        value[0] = posting.local_s
        if rule.from_s < rule.to_s:
            return rule.from_s <= posting.local_s < rule.to_s
        if rule.from_s > rule.to_s:
            return posting.local_s >= rule.from_s or posting.local_s < rule.to_s
        return False
    if rule_type == LIST:
        value[0] = 1
        if rule.match == MATCH_ACCOUNT:
            return (keyset_has(rule.list_slots, rule.list_mask, posting.debit)
                    or keyset_has(rule.list_slots, rule.list_mask, posting.credit))
        return keyset_has(rule.list_slots, rule.list_mask, match_key(rule.match, posting))
    value[0] = posting.amount  # LARGE_VALUE: the amount and the codes said it all
    return True


cdef void count_posting(Kernel *k, const Posting *posting, uint64_t now) noexcept nogil:
    """Feed every counter the posting is counted in (the first rule of each group)."""
    cdef int r
    cdef const Rule *rule
    cdef uint64_t entity, other, current
    cdef VelocitySlot *velocity
    cdef HistorySlot *history
    cdef PairSlot *pair
    cdef Bucket *bucket
    for r in range(k.rule_count):
        rule = &k.rules[r]
        if not rule.counts or not observes(rule, posting):
            continue
        if rule.rule_type == VELOCITY:
            if posting.amount < rule.amount_min:
                continue
            entity = scope_key(rule.scope, posting)
            if entity == 0:
                continue
            velocity = <VelocitySlot *>table_upsert(
                &k.velocity, counter_key(rule.group, entity), now, k.capacity_log2)
            if velocity == NULL:
                k.out_of_memory = True
                continue
            current = now // rule.width_s
            bucket = &velocity.buckets[current % VELOCITY_BUCKETS_]
            if bucket.index != current:
                bucket.index = <uint32_t>current
                bucket.count = 0
                bucket.sum = 0
            if bucket.count != U32_MAX:
                bucket.count += 1
            bucket.sum = clamp_add(bucket.sum, posting.amount)
            velocity.expire_s = (current + VELOCITY_BUCKETS_) * rule.width_s
        elif rule.rule_type == HISTORY:
            entity = scope_key(rule.scope, posting)
            if entity == 0:
                continue
            history = <HistorySlot *>table_upsert(
                &k.history, counter_key(rule.group, entity), now, k.capacity_log2)
            if history == NULL:
                k.out_of_memory = True
                continue
            history.times[history.head] = <uint32_t>now
            history.amounts[history.head] = posting.amount
            history.head = (history.head + 1) % HISTORY_SAMPLES_
            if history.count < HISTORY_SAMPLES_:
                history.count += 1
            history.expire_s = now + rule.window_s
        else:
            other = posting.counterparty if rule.rule_type == NEW_PAYEE else posting.device
            if posting.customer == 0 or other == 0:
                continue
            pair = <PairSlot *>table_upsert(
                &k.pairs, pair_key(rule.group, posting.customer, other), now, k.capacity_log2)
            if pair == NULL:
                k.out_of_memory = True
                continue
            if pair.first_s_plus1 == 0:  # just made: first counted now
                pair.first_s_plus1 = <int64_t>now + 1


cdef inline void load_posting(Posting *posting, const Transfer *record,
                              const ContextRow *context) noexcept nogil:
    """What the rules read of one posting: its record's accounts, amount, code and flags
    and its context row (screen_one and prefetch_posting alike)."""
    posting.debit = account_key(record.debit_account_id_lo, record.debit_account_id_hi)
    posting.credit = account_key(record.credit_account_id_lo, record.credit_account_id_hi)
    posting.amount = record.amount
    posting.code = record.code
    posting.flags = record.flags
    posting.customer = context.customer
    posting.device = context.device
    posting.ip = context.ip
    posting.counterparty = context.counterparty
    posting.resident = context.resident
    posting.local_s = context.local_s
    posting.second_factor = context.second_factor


cdef bint screen_one(Kernel *k, const Transfer *record, const ContextRow *context,
                     uint64_t now, VerdictRow *verdict, int64_t *values) noexcept nogil:
    """Evaluate one posting, write its verdict and the values its fired rules saw, count
    it; whether any rule fired."""
    cdef Posting posting
    cdef int r
    cdef const Rule *rule
    cdef uint64_t mask = 0
    cdef uint8_t outcome = ALLOW
    cdef uint8_t report = 0
    cdef uint8_t met = 0
    cdef int64_t value
    verdict.outcome = ALLOW
    verdict.report = 0
    verdict.challenge_met = 0
    memset(verdict.pad, 0, 5)
    verdict.mask = 0
    if record.flags & (FLAG_POST_PENDING | FLAG_VOID_PENDING):
        return False  # a capture or a void: no rule observes it, nothing is counted
    load_posting(&posting, record, context)
    for r in range(k.rule_count):
        rule = &k.rules[r]
        if not observes(rule, &posting) or posting.amount < rule.amount_min:
            continue
        if not rule_fires(k, rule, &posting, now, &value):
            continue
        mask |= 1ULL << r
        values[r] = value
        if rule.outcome > outcome:
            outcome = rule.outcome
        report |= rule.report
    if outcome == CHALLENGE and posting.second_factor:
        outcome = ALLOW
        met = 1
    verdict.outcome = outcome
    verdict.report = report
    verdict.challenge_met = met
    verdict.mask = mask
    if k.has_counters and outcome != BLOCK and outcome != CHALLENGE:
        count_posting(k, &posting, now)
    return mask != 0


cdef inline void prefetch_slot(const Table *t, uint64_t key) noexcept nogil:
    """Ask for the cache lines of `key`'s home slot (a hint: never faults)."""
    cdef const char *slot
    cdef size_t offset = 0
    if t.slots == NULL:
        return
    slot = t.slots + (key & t.mask) * t.slot_size
    while offset < t.slot_size:
        tally_risk_prefetch(slot + offset)
        offset += 64


cdef void prefetch_posting(const Kernel *k, const Transfer *record,
                           const ContextRow *context) noexcept nogil:
    """Prefetch the counter slots a posting will read, PREFETCH_AHEAD postings before
    it is screened: the lookups of a batch then overlap their cache misses instead of
    waiting for each in turn (the tables are far larger than the caches)."""
    cdef int r
    cdef const Rule *rule
    cdef Posting posting
    cdef uint64_t entity, other
    if record.flags & (FLAG_POST_PENDING | FLAG_VOID_PENDING):
        return
    load_posting(&posting, record, context)
    for r in range(k.rule_count):
        rule = &k.rules[r]
        if not rule.counts or not observes(rule, &posting):
            continue
        if rule.rule_type == VELOCITY or rule.rule_type == HISTORY:
            entity = scope_key(rule.scope, &posting)
            if entity != 0:
                prefetch_slot(&k.velocity if rule.rule_type == VELOCITY else &k.history,
                              counter_key(rule.group, entity))
        else:
            other = posting.counterparty if rule.rule_type == NEW_PAYEE else posting.device
            if posting.customer != 0 and other != 0:
                prefetch_slot(&k.pairs, pair_key(rule.group, posting.customer, other))


cdef Py_ssize_t screen_run(Kernel *k, const unsigned char *records,
                           const unsigned char *contexts, unsigned char *out, Py_ssize_t count,
                           uint64_t now, int64_t *values, int stride,
                           uint64_t *masks) noexcept nogil:
    """Screen `count` postings in order; how many had a rule fire."""
    cdef Py_ssize_t i
    cdef Py_ssize_t fired = 0
    cdef VerdictRow *verdict
    if k.has_counters:
        for i in range(min(count, PREFETCH_AHEAD)):
            prefetch_posting(k, <const Transfer *>(records + i * TRANSFER_SIZE_),
                             <const ContextRow *>(contexts + i * CONTEXT_SIZE_))
    for i in range(count):
        if k.has_counters and i + PREFETCH_AHEAD < count:
            prefetch_posting(k, <const Transfer *>(records + (i + PREFETCH_AHEAD) * TRANSFER_SIZE_),
                             <const ContextRow *>(contexts + (i + PREFETCH_AHEAD) * CONTEXT_SIZE_))
        verdict = <VerdictRow *>(out + i * VERDICT_SIZE_)
        if screen_one(k, <const Transfer *>(records + i * TRANSFER_SIZE_),
                      <const ContextRow *>(contexts + i * CONTEXT_SIZE_), now, verdict,
                      values + i * stride):
            fired += 1
        masks[i] = verdict.mask
    return fired


cdef int rule_decode(Rule *rule, const RuleRow *row, int index) except -1:
    """A RULE row, checked (limits.risk_reference.check_rule, same order and words)."""
    memset(rule, 0, sizeof(Rule))
    rule.rule_type = row.rule_type
    rule.scope = row.scope
    rule.outcome = row.outcome
    rule.report = row.report
    rule.match = row.match
    rule.codes = row.codes
    rule.window_s = row.window_s
    rule.amount_min = row.amount_min
    rule.sum_max = row.sum_max
    rule.count_max = row.count_max
    rule.samples_min = row.samples_min
    rule.multiple_permille = row.multiple_permille
    rule.list_id = row.list_id
    rule.from_s = row.from_s
    rule.to_s = row.to_s
    rule.width_s = 1
    prefix = f"risk program row {index}: "
    if not VELOCITY <= rule.rule_type <= LARGE_VALUE:
        raise ValueError(prefix + f"unknown rule type {rule.rule_type}")
    if rule.outcome > BLOCK:
        raise ValueError(prefix + f"unknown outcome {rule.outcome}")
    if rule.report > 1:
        raise ValueError(prefix + f"report must be 0 or 1, not {rule.report}")
    if rule.rule_type == VELOCITY:
        if not SCOPE_ACCOUNT <= rule.scope <= SCOPE_PAYEE:
            raise ValueError(prefix + f"velocity scope must be 1..5, not {rule.scope}")
    elif rule.rule_type == HISTORY:
        if rule.scope != SCOPE_ACCOUNT and rule.scope != SCOPE_CUSTOMER:
            raise ValueError(
                prefix + f"history scope must be ACCOUNT or CUSTOMER, not {rule.scope}")
    elif rule.scope != SCOPE_NONE:
        raise ValueError(prefix + f"scope {rule.scope} on a rule of type {rule.rule_type}")
    if (rule.rule_type == VELOCITY or rule.rule_type == HISTORY) and rule.window_s == 0:
        raise ValueError(prefix + "velocity and history rules need a window")
    if rule.rule_type == LIST:
        if not MATCH_ACCOUNT <= rule.match <= MATCH_IP:
            raise ValueError(prefix + f"list match must be 1..5, not {rule.match}")
    elif rule.match != MATCH_NONE:
        raise ValueError(prefix + f"match {rule.match} on a rule of type {rule.rule_type}")
    if rule.rule_type == TIME_OF_DAY and (rule.from_s > DAY_S or rule.to_s > DAY_S):
        raise ValueError(prefix + "time of day bounds must be <= 86400")
    return 0


cdef void plan_rules(Rule *rules, int count) noexcept nogil:
    """Each rule's counter group, whether it feeds it, its sub-bucket width
    (limits.risk_reference.plan_rules)."""
    cdef int r, s
    cdef Rule *rule
    for r in range(count):
        rule = &rules[r]
        if rule.rule_type == VELOCITY:
            rule.group = group_of(rule.rule_type, rule.scope, rule.window_s, rule.codes,
                                  rule.amount_min)
            rule.width_s = (<uint64_t>rule.window_s + VELOCITY_BUCKETS_ - 1) // VELOCITY_BUCKETS_
            if rule.width_s == 0:
                rule.width_s = 1
        elif rule.rule_type == HISTORY:
            rule.group = group_of(rule.rule_type, rule.scope, rule.window_s, rule.codes, 0)
        elif rule.rule_type == NEW_PAYEE or rule.rule_type == NEW_DEVICE:
            rule.group = group_of(rule.rule_type, 0, 0, rule.codes, 0)
        else:
            continue
        rule.counts = True
        for s in range(r):
            if rules[s].counts and rules[s].group == rule.group:
                rule.counts = False
                break


# -- the holder table: debit account id -> its holder's customer and resident-id keys ----

cdef struct HolderSlot:
    uint64_t lo  # the account id's low and high 64 bits; 0, 0: empty
    uint64_t hi
    uint64_t customer
    uint64_t resident

cdef struct Holders:
    HolderSlot *slots  # NULL until the first set_holders
    uint64_t mask
    uint64_t used


cdef inline uint64_t holder_position(uint64_t lo, uint64_t hi, uint64_t mask) noexcept nogil:
    return mix64_(account_key(lo, hi)) & mask


cdef inline const HolderSlot *holder_find(const Holders *h, uint64_t lo,
                                          uint64_t hi) noexcept nogil:
    cdef uint64_t position
    cdef const HolderSlot *slot
    if h.slots == NULL or (lo == 0 and hi == 0):
        return NULL
    position = holder_position(lo, hi, h.mask)
    while True:
        slot = &h.slots[position]
        if slot.lo == lo and slot.hi == hi:
            return slot
        if slot.lo == 0 and slot.hi == 0:
            return NULL
        position = (position + 1) & h.mask


cdef bint holder_put(Holders *h, uint64_t lo, uint64_t hi, uint64_t customer,
                     uint64_t resident) noexcept nogil:
    """Add or replace one holder (the table doubled at half full); False: out of memory."""
    cdef uint64_t capacity, old_capacity, i, position
    cdef HolderSlot *old
    cdef HolderSlot *slot
    if lo == 0 and hi == 0:
        return True  # account 0 is no account: never kept
    if h.slots == NULL or 2 * (h.used + 1) > h.mask + 1:
        old = h.slots
        old_capacity = h.mask + 1 if old != NULL else 0
        capacity = 2 * old_capacity if old != NULL else 1024
        h.slots = <HolderSlot *>calloc(capacity, sizeof(HolderSlot))
        if h.slots == NULL:
            h.slots = old
            return False
        h.mask = capacity - 1
        for i in range(old_capacity):
            if old[i].lo != 0 or old[i].hi != 0:
                position = holder_position(old[i].lo, old[i].hi, h.mask)
                while h.slots[position].lo != 0 or h.slots[position].hi != 0:
                    position = (position + 1) & h.mask
                h.slots[position] = old[i]
        free(old)
    position = holder_position(lo, hi, h.mask)
    while True:
        slot = &h.slots[position]
        if slot.lo == lo and slot.hi == hi:
            break
        if slot.lo == 0 and slot.hi == 0:
            slot.lo = lo
            slot.hi = hi
            h.used += 1
            break
        position = (position + 1) & h.mask
    slot.customer = customer
    slot.resident = resident
    return True


cdef Py_ssize_t fill_contexts(const Holders *h, const unsigned char *records,
                              Py_ssize_t count, const ContextRow *template,
                              unsigned char *rows, uint32_t *misses) noexcept nogil:
    """The CONTEXT rows of `count` records (see RiskKernel.context_rows); the indexes
    whose debit account has no holder entry into `misses`; how many there are."""
    cdef Py_ssize_t i
    cdef Py_ssize_t missed = 0
    cdef const Transfer *record
    cdef ContextRow *row
    cdef const HolderSlot *holder
    for i in range(count):
        if h.slots != NULL and i + PREFETCH_AHEAD < count:
            record = <const Transfer *>(records + (i + PREFETCH_AHEAD) * TRANSFER_SIZE_)
            tally_risk_prefetch(&h.slots[holder_position(
                record.debit_account_id_lo, record.debit_account_id_hi, h.mask)])
        record = <const Transfer *>(records + i * TRANSFER_SIZE_)
        row = <ContextRow *>(rows + i * CONTEXT_SIZE_)
        row[0] = template[0]
        if template.counterparty == 0:
            row.counterparty = record.credit_account_id_lo
        holder = holder_find(h, record.debit_account_id_lo, record.debit_account_id_hi)
        if holder != NULL:
            row.customer = holder.customer
            row.resident = holder.resident
        else:
            row.customer = 0
            row.resident = 0
            misses[missed] = <uint32_t>i
            missed += 1
    return missed


cdef class RiskKernel:
    """Risk counters and the rule program; evaluates postings in C (see cext/risk.pyi).

    Not thread-safe: one caller at a time (a concurrent `screen` raises RuntimeError).
    """

    cdef Kernel k
    cdef uint64_t clock_s
    cdef dict lists  # list_id -> _KeySet
    cdef int64_t *values  # last screen: values[index * stride + rule]
    cdef uint64_t *masks  # last screen: each posting's fired mask
    cdef Py_ssize_t values_capacity
    cdef Py_ssize_t masks_capacity
    cdef Py_ssize_t last_count
    cdef int last_stride
    cdef bint busy
    cdef Holders holders
    cdef uint32_t *misses  # the last context_rows' indexes without a holder entry
    cdef Py_ssize_t misses_capacity

    def __cinit__(self, int capacity_log2=16):
        if not 4 <= capacity_log2 <= 30:
            raise ValueError("capacity_log2 must be 4..30")
        memset(&self.k, 0, sizeof(Kernel))
        self.k.capacity_log2 = capacity_log2
        self.k.velocity.slot_size = sizeof(VelocitySlot)
        self.k.velocity.expires = True
        self.k.history.slot_size = sizeof(HistorySlot)
        self.k.history.expires = True
        self.k.pairs.slot_size = sizeof(PairSlot)
        self.k.pairs.expires = False
        self.lists = {}
        self.clock_s = 0

    def __dealloc__(self):
        table_free(&self.k.velocity)
        table_free(&self.k.history)
        table_free(&self.k.pairs)
        free(self.values)
        free(self.masks)
        free(self.holders.slots)
        free(self.misses)

    def set_program(self, const unsigned char[::1] program not None):
        """Install a compiled rule program (rows of `risk_layout.RULE`); counters survive.
        ValueError on a row that is not a valid rule (nothing changed then)."""
        cdef Rule rules[RULES_MAX_]
        cdef Py_ssize_t size = program.shape[0]
        cdef int count, r
        if size % RULE_SIZE_:
            raise ValueError("risk program length must be a multiple of 64")
        if size // RULE_SIZE_ > RULES_MAX_:
            raise ValueError("risk program holds more than 64 rules")
        if self.busy:
            raise RuntimeError("the risk kernel is screening (one caller at a time)")
        count = <int>(size // RULE_SIZE_)
        for r in range(count):
            rule_decode(&rules[r], <const RuleRow *>&program[r * RULE_SIZE_], r)
        plan_rules(rules, count)
        memcpy(self.k.rules, rules, count * sizeof(Rule))
        self.k.rule_count = count
        self.k.has_counters = False
        for r in range(count):
            if self.k.rules[r].counts:
                self.k.has_counters = True
        self._bind_lists()

    def set_list(self, list_id, const unsigned char[::1] keys not None):
        """Replace list `list_id` (u32) by the packed `<Q` keys (zero keys ignored)."""
        cdef _KeySet members
        cdef Py_ssize_t n, i, capacity
        cdef uint64_t value, position, mask
        cdef uint64_t *slots
        if not 0 <= list_id <= 0xFFFFFFFF:
            raise ValueError("list_id must be a u32")
        if keys.shape[0] % 8:
            raise ValueError("list keys must be packed <Q (a multiple of 8 bytes)")
        if self.busy:
            raise RuntimeError("the risk kernel is screening (one caller at a time)")
        n = keys.shape[0] // 8
        capacity = 8
        while capacity < 2 * n:
            capacity *= 2
        slots = <uint64_t *>calloc(capacity, sizeof(uint64_t))
        if slots == NULL:
            raise MemoryError()
        members = _KeySet.__new__(_KeySet)
        members.slots = slots
        members.mask = capacity - 1
        members.size = capacity
        mask = capacity - 1
        with nogil:
            for i in range(n):
                memcpy(&value, &keys[i * 8], 8)
                if value == 0:
                    continue
                position = mix64_(value) & mask
                while slots[position] != 0 and slots[position] != value:
                    position = (position + 1) & mask
                slots[position] = value
        self.lists[int(list_id)] = members
        self._bind_lists()

    cdef _bind_lists(self):
        cdef int r
        cdef _KeySet members
        for r in range(self.k.rule_count):
            if self.k.rules[r].rule_type != LIST:
                continue
            members = self.lists.get(self.k.rules[r].list_id)
            if members is None:
                self.k.rules[r].list_slots = NULL
                self.k.rules[r].list_mask = 0
            else:
                self.k.rules[r].list_slots = members.slots
                self.k.rules[r].list_mask = members.mask

    def screen(self, records, contexts, Py_ssize_t count, now_s, out):
        """Evaluate and count `count` postings in order; VERDICT rows into `out`; how many
        postings had any rule fire (see cext/risk.pyi)."""
        cdef Py_buffer record_buffer
        cdef Py_buffer context_buffer
        cdef Py_buffer out_buffer
        cdef uint64_t now
        cdef Py_ssize_t fired
        cdef int stride
        cdef const unsigned char *record_bytes
        cdef const unsigned char *context_bytes
        cdef unsigned char *out_bytes
        if count < 0:
            raise ValueError("count must be >= 0")
        if not 0 <= now_s <= NOW_S_MAX_:
            raise ValueError("now_s must be 0..2**32-1")
        if self.busy:
            raise RuntimeError("the risk kernel is screening (one caller at a time)")
        PyObject_GetBuffer(records, &record_buffer, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(contexts, &context_buffer, PyBUF_SIMPLE)
            try:
                PyObject_GetBuffer(out, &out_buffer, PyBUF_SIMPLE | PyBUF_WRITABLE)
                try:
                    if record_buffer.len < count * TRANSFER_SIZE_:
                        raise ValueError("records shorter than count transfers")
                    if context_buffer.len < count * CONTEXT_SIZE_:
                        raise ValueError("contexts shorter than count context rows")
                    if out_buffer.len < count * VERDICT_SIZE_:
                        raise ValueError("out shorter than count verdicts")
                    stride = self.k.rule_count
                    self._reserve(count, stride)
                    now = <uint64_t>now_s
                    if now < self.clock_s:
                        now = self.clock_s
                    self.clock_s = now
                    record_bytes = <const unsigned char *>record_buffer.buf
                    context_bytes = <const unsigned char *>context_buffer.buf
                    out_bytes = <unsigned char *>out_buffer.buf
                    self.busy = True
                    self.k.out_of_memory = False
                    if count >= NOGIL_FROM:
                        with nogil:
                            fired = screen_run(&self.k, record_bytes, context_bytes, out_bytes,
                                               count, now, self.values, stride, self.masks)
                    else:
                        fired = screen_run(&self.k, record_bytes, context_bytes, out_bytes,
                                           count, now, self.values, stride, self.masks)
                    self.busy = False
                    self.last_count = count
                    self.last_stride = stride
                    if self.k.out_of_memory:
                        raise MemoryError("risk counter tables: out of memory")
                    return fired
                finally:
                    PyBuffer_Release(&out_buffer)
            finally:
                PyBuffer_Release(&context_buffer)
        finally:
            PyBuffer_Release(&record_buffer)

    cdef int _reserve(self, Py_ssize_t count, int stride) except -1:
        """Room for the observed values and masks of `count` postings (grown, kept)."""
        cdef Py_ssize_t need = count * stride
        cdef void *grown
        self.last_count = 0
        if need > self.values_capacity:
            grown = realloc(self.values, max(need, 1) * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self.values = <int64_t *>grown
            self.values_capacity = need
        if count > self.masks_capacity:
            grown = realloc(self.masks, max(count, 1) * sizeof(uint64_t))
            if grown == NULL:
                raise MemoryError()
            self.masks = <uint64_t *>grown
            self.masks_capacity = count
        return 0

    def set_holders(self, const unsigned char[::1] rows not None):
        """Add or replace holders: packed `<QQQQ` rows (debit account id low and high 64
        bits, customer key, resident-id key); account 0 is ignored."""
        cdef Py_ssize_t i, n
        cdef uint64_t words[4]
        cdef bint ok = True
        if rows.shape[0] % 32:
            raise ValueError("holder rows must be packed <QQQQ (a multiple of 32 bytes)")
        if self.busy:
            raise RuntimeError("the risk kernel is screening (one caller at a time)")
        n = rows.shape[0] // 32
        with nogil:
            for i in range(n):
                memcpy(words, &rows[i * 32], 32)
                if not holder_put(&self.holders, words[0], words[1], words[2], words[3]):
                    ok = False
                    break
        if not ok:
            raise MemoryError("risk holder table: out of memory")

    def context_rows(self, records, Py_ssize_t count, const unsigned char[::1] template not None,
                     rows):
        """Write the `count` CONTEXT rows of `records` into `rows` (see cext/risk.pyi);
        the indexes whose debit account has no holder entry, ascending."""
        cdef Py_buffer record_buffer
        cdef Py_buffer rows_buffer
        cdef Py_ssize_t missed, i
        cdef const unsigned char *record_bytes
        cdef unsigned char *row_bytes
        cdef const ContextRow *context
        cdef void *grown
        if count < 0:
            raise ValueError("count must be >= 0")
        if template.shape[0] != CONTEXT_SIZE_:
            raise ValueError("the template must be one 48-byte CONTEXT row")
        context = <const ContextRow *>&template[0]
        if self.busy:
            raise RuntimeError("the risk kernel is screening (one caller at a time)")
        PyObject_GetBuffer(records, &record_buffer, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(rows, &rows_buffer, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                if record_buffer.len < count * TRANSFER_SIZE_:
                    raise ValueError("records shorter than count transfers")
                if rows_buffer.len < count * CONTEXT_SIZE_:
                    raise ValueError("rows shorter than count context rows")
                if count > self.misses_capacity:
                    grown = realloc(self.misses, max(count, 1) * sizeof(uint32_t))
                    if grown == NULL:
                        raise MemoryError()
                    self.misses = <uint32_t *>grown
                    self.misses_capacity = count
                record_bytes = <const unsigned char *>record_buffer.buf
                row_bytes = <unsigned char *>rows_buffer.buf
                self.busy = True  # the holder table is read without the GIL
                if count >= NOGIL_FROM:
                    with nogil:
                        missed = fill_contexts(&self.holders, record_bytes, count, context,
                                               row_bytes, self.misses)
                else:
                    missed = fill_contexts(&self.holders, record_bytes, count, context,
                                           row_bytes, self.misses)
                self.busy = False
                return [self.misses[i] for i in range(missed)]
            finally:
                PyBuffer_Release(&rows_buffer)
        finally:
            PyBuffer_Release(&record_buffer)

    def clear_holders(self):
        """Forget every holder entry."""
        if self.busy:
            raise RuntimeError("the risk kernel is screening (one caller at a time)")
        free(self.holders.slots)
        memset(&self.holders, 0, sizeof(Holders))

    @property
    def holder_count(self):
        """Accounts in the holder table."""
        return self.holders.used

    def fired(self):
        """The indexes of the last screen's postings any rule fired for, ascending."""
        cdef Py_ssize_t i
        return [i for i in range(self.last_count) if self.masks[i]]

    def observed(self, Py_ssize_t index):
        """(rule index, value seen) of each rule that fired for posting `index` of the
        last screen, in rule order."""
        cdef uint64_t mask
        cdef int r
        if not 0 <= index < self.last_count:
            raise IndexError("posting index past the last screen's count")
        mask = self.masks[index]
        seen = []
        for r in range(self.last_stride):
            if (mask >> r) & 1:
                seen.append((r, self.values[index * self.last_stride + r]))
        return seen

    def entries(self):
        """Counter keys holding data still visible at the kernel's clock."""
        return (table_live(&self.k.velocity, self.clock_s)
                + table_live(&self.k.history, self.clock_s)
                + table_live(&self.k.pairs, self.clock_s))

    def memory_bytes(self):
        """Bytes allocated by the counter tables, the lists and the observed buffers."""
        cdef _KeySet members
        total = (table_bytes(&self.k.velocity) + table_bytes(&self.k.history)
                 + table_bytes(&self.k.pairs))
        for members in self.lists.values():
            total += members.size * 8
        if self.holders.slots != NULL:
            total += (self.holders.mask + 1) * sizeof(HolderSlot)
        return (total + self.values_capacity * 8 + self.masks_capacity * 8
                + self.misses_capacity * 4)

    def clear(self):
        """Forget every counter and the clock (the program and the lists stay)."""
        if self.busy:
            raise RuntimeError("the risk kernel is screening (one caller at a time)")
        table_free(&self.k.velocity)
        table_free(&self.k.history)
        table_free(&self.k.pairs)
        self.clock_s = 0
        self.last_count = 0

    @property
    def now_s(self):
        """The clock: the largest `now_s` screened since the last `clear` (0)."""
        return self.clock_s

    @property
    def rule_count(self):
        """Rules in the program in force."""
        return self.k.rule_count
