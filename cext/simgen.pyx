# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Deterministic generators and bulk loops of the failover simulator (`sim/`).

Everything the simulator does per account or per transfer runs here, over
caller-owned buffers: the population, the offered load, the clients' view of
each batch (latency, timeouts, retries, acknowledgements) and the checker's
scans of each data center's log and tables. Python in `sim/` only handles
batches and events.

Every value is a pure function of (seed, index): a request's record can be
regenerated from its request number alone (a client retry resends the same
bytes, so the ledger answers `exists`), and two runs with one seed are
identical on every machine. No I/O, no global state.

Ids. Request `seq` is transfer id (REQUEST_ID_HI, seq + 1), so the checker
maps every log record back to the request that made it without an index.
Population accounts are (ACCOUNT_ID_HI_BASE | tag, mix64(index, seed, tag)).
"""

from libc.math cimport cos, exp, log, log10, pow, sqrt
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from cext.ledger_kernel cimport (
    ACCOUNT_BOUND_EXTERNAL,
    ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS,
    ACCOUNT_FACE_TO_FACE_VERIFIED,
    ACCOUNT_NON_BOUND_INFLOW_ENABLED,
    ACCOUNT_SIZE,
    CHANNEL_COUNT,
    CHANNEL_SIZE,
    CHANNEL_ENTRY_SIZE,
    CODE_EXTERNAL_TRANSFER_IN,
    CODE_EXTERNAL_TRANSFER_OUT,
    CODE_FIXED_DEPOSIT,
    CODE_PAYMENT,
    CODE_TOPUP_BOUND,
    CODE_TRANSFER,
    CODE_WEALTH,
    CODE_WITHDRAW_BOUND,
    COUNTED_CREDIT_INFLOW,
    COUNTED_DEBIT_OUTFLOW,
    KIND_CLASS_II,
    KIND_CLASS_III,
    KIND_LOAN,
    META_ACCOUNT_COUNT,
    META_LAST_DAY,
    META_FAILED_COUNT,
    META_FAILED_MASK,
    META_FAILED_TAIL,
    META_LOG_COUNT,
    META_LOG_MASK,
    META_LOG_TAIL,
    PRODUCT_SIZE,
    SPACE_CHANNEL_DEBIT,
    TR_EXISTS,
    TR_ID_ALREADY_FAILED,
    TR_OK,
    TR_PENDING_TRANSFER_NOT_FOUND,
    TRANSFER_SIZE,
    Account,
    AccountInput,
    ChannelEntry,
    ChannelRule,
    Product,
    Transfer,
)

cdef double TWO_PI = 6.283185307179586

# --- ids ------------------------------------------------------------------------

ACCOUNT_ID_HI_BASE = 0x51A00000
REQUEST_ID_HI = 0x51A10000
FUNDING_ID_HI_BASE = 0x51A20000
cdef uint64_t C_ACCOUNT_ID_HI_BASE = 0x51A00000
cdef uint64_t C_REQUEST_ID_HI = 0x51A10000
cdef uint64_t C_FUNDING_ID_HI_BASE = 0x51A20000

# Account tags (the low bits of an account id's high half).
TAG_CLASS_II = 2
TAG_CLASS_III = 3
TAG_FIXED_DEPOSIT = 5
TAG_MERCHANT = 0x10
TAG_OPENING = 0x20
TAG_INTERNAL = 0xFF
cdef enum:
    T_CLASS_II = 2
    T_CLASS_III = 3
    T_FIXED_DEPOSIT = 5
    T_MERCHANT = 0x10
    T_INTERNAL = 0xFF

INTERNAL_CLEARING_INDEX = 1
INTERNAL_WEALTH_INDEX = 2
cdef uint64_t C_CLEARING_INDEX = 1
cdef uint64_t C_WEALTH_INDEX = 2

# Request kinds of the transaction mix (DOMAIN.md "Mix (model)").
KIND_NAMES = (
    "payment",
    "topup_bound",
    "withdraw_bound",
    "transfer_internal",
    "transfer_external_out",
    "receipt_external_in",
    "deposit_or_wealth",
    "class_iii_payment",
    "class_iii_topup",
)
cdef enum:
    MIX_PAYMENT = 0
    MIX_TOPUP = 1
    MIX_WITHDRAW = 2
    MIX_TRANSFER = 3
    MIX_EXTERNAL_OUT = 4
    MIX_EXTERNAL_IN = 5
    MIX_DEPOSIT = 6
    MIX_CLASS_III_PAYMENT = 7
    MIX_CLASS_III_TOPUP = 8
    MIX_COUNT = 9

# Client outcomes kept per request besides the ledger's result codes.
NOT_ACKED = 255
GAVE_UP = 254
cdef uint8_t C_NOT_ACKED = 255
cdef uint8_t C_GAVE_UP = 254

# Settle modes: what happened to one batch of client attempts.
SETTLE_COMMIT = 0    # the batch committed: answer every attempt still waiting
SETTLE_TIMEOUT = 1   # nobody answered: every attempt times out and is retried
SETTLE_REFUSED = 2   # answered at once with "not the primary" / 503: retried after backoff
cdef enum:
    M_COMMIT = 0
    M_TIMEOUT = 1
    M_REFUSED = 2

# The clients' errors per (series bucket, client region, channel slot, kind): `errors`.
ERROR_KINDS = ("refused", "timeout", "gave_up")
ERROR_CHANNEL_SLOTS = 8  # channel 0..6 (ledger/rules channel ids), 7 = any other
cdef enum:
    E_REFUSED = 0
    E_TIMEOUT = 1
    E_GAVE_UP = 2
    E_KINDS = 3
    E_SLOTS = 8
LATENCY_US_MAX = 0xFFFFFFFF
cdef int64_t C_LATENCY_US_MAX = 0xFFFFFFFF

LATENCY_BUCKETS = 160  # 20 per decade from 1 us to 100 s
LATENCY_BUCKETS_PER_DECADE = 20
cdef enum:
    NB = 160
    NB_PER_DECADE = 20

cdef enum:
    CHANNEL_WECHAT = 1
    CHANNEL_APP = 2
    CHANNEL_OPEN_API = 5


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    """splitmix64's finalizer: a bijection on 64-bit integers."""
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline double unit(uint64_t bits) noexcept nogil:
    """A double in (0, 1) from 53 random bits."""
    return ((bits >> 11) + 0.5) * (1.0 / 9007199254740992.0)


cdef inline uint64_t account_lo(uint64_t seed, uint64_t tag, uint64_t index) noexcept nogil:
    return mix64(index + seed * <uint64_t>0x9E3779B97F4A7C15 + tag * <uint64_t>0xD1B54A32D192ED03)


cdef inline bint user_has(uint64_t seed, uint64_t tag, uint64_t user,
                          double fraction) noexcept nogil:
    cdef uint64_t key = seed * <uint64_t>0x632BE59BD9B4E019 + tag * <uint64_t>0x8CB92BA72F3D8DD7
    if fraction >= 1.0:
        return True
    return unit(mix64(user ^ key)) < fraction


cdef inline uint64_t user_bits(uint64_t seed, uint64_t user, uint64_t salt) noexcept nogil:
    return mix64(user * <uint64_t>0xA24BAED4963EE407 + seed + salt * <uint64_t>0x9FB21C651E98DF25)


cdef inline double lognormal(uint64_t bits, double median, double sigma) noexcept nogil:
    cdef double z = sqrt(-2.0 * log(unit(bits))) * cos(TWO_PI * unit(mix64(bits)))
    return median * exp(sigma * z)


def account_id(uint64_t seed, int tag, uint64_t index):
    """The 128-bit id of population account `index` with tag `tag`."""
    if tag == T_INTERNAL:
        return ((<object>(C_ACCOUNT_ID_HI_BASE | <uint64_t>tag)) << 64) | index
    cdef object high = C_ACCOUNT_ID_HI_BASE | <uint64_t>tag
    return (high << 64) | account_lo(seed, <uint64_t>tag, index)


def request_id(uint64_t seq):
    """The 128-bit transfer id of request `seq`."""
    return ((<object>C_REQUEST_ID_HI) << 64) | (seq + 1)


def user_has_account(uint64_t seed, int tag, uint64_t user, double fraction):
    """Whether `user` holds an account of kind `tag` (the population's own predicate)."""
    return bool(user_has(seed, <uint64_t>tag, user, fraction))


# --- population -------------------------------------------------------------------

def fill_user_accounts(
    unsigned char[::1] out, uint64_t seed, int tag, uint64_t first_user, int64_t user_count,
    double fraction, int kind, int product, int ledger, double inflow_enabled_fraction,
    double face_to_face_fraction,
):
    """Account inputs for the users in [first_user, first_user + user_count) holding `tag`.

    Returns how many were written (one per holder, in user order). Class II and
    III accounts are bound to an external Class I card (BOUND_EXTERNAL) and may
    not go below zero; a share of Class II holders has non-bound inflow enabled
    and a smaller share was verified face to face.
    """
    cdef int64_t written = 0
    cdef int64_t i
    cdef uint64_t user
    cdef uint16_t flags
    cdef AccountInput *a
    if out.shape[0] < user_count * ACCOUNT_SIZE:
        raise ValueError("out too small for user_count accounts")
    if user_count <= 0:
        return 0
    with nogil:
        memset(&out[0], 0, user_count * ACCOUNT_SIZE)
        for i in range(user_count):
            user = first_user + <uint64_t>i
            if not user_has(seed, <uint64_t>tag, user, fraction):
                continue
            a = <AccountInput *>&out[written * ACCOUNT_SIZE]
            a.id_lo = account_lo(seed, <uint64_t>tag, user)
            a.id_hi = C_ACCOUNT_ID_HI_BASE | <uint64_t>tag
            a.ledger = <uint16_t>ledger
            a.kind = <uint8_t>kind
            a.product = <uint16_t>product
            flags = ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS
            if kind == KIND_CLASS_II or kind == KIND_CLASS_III:
                flags |= ACCOUNT_BOUND_EXTERNAL
            if kind == KIND_CLASS_II:
                if unit(user_bits(seed, user, 1)) < inflow_enabled_fraction:
                    flags |= ACCOUNT_NON_BOUND_INFLOW_ENABLED
                if unit(user_bits(seed, user, 2)) < face_to_face_fraction:
                    flags |= ACCOUNT_FACE_TO_FACE_VERIFIED
            a.flags = flags
            written += 1
    return written


def fill_fundings(
    unsigned char[::1] out, uint64_t seed, int tag, uint64_t first_user, int64_t user_count,
    double fraction, uint64_t source_lo, uint64_t source_hi, int code, double median_minor,
    double sigma, int64_t amount_max_minor, int ledger,
):
    """Opening balances: one transfer from `source` to each holder of `tag` in the range.

    Amounts are log-normal around `median_minor`, at most `amount_max_minor`.
    Returns how many were written.
    """
    cdef int64_t written = 0
    cdef int64_t i
    cdef uint64_t user
    cdef int64_t amount
    cdef Transfer *t
    if out.shape[0] < user_count * TRANSFER_SIZE:
        raise ValueError("out too small for user_count transfers")
    if user_count <= 0:
        return 0
    with nogil:
        memset(&out[0], 0, user_count * TRANSFER_SIZE)
        for i in range(user_count):
            user = first_user + <uint64_t>i
            if not user_has(seed, <uint64_t>tag, user, fraction):
                continue
            t = <Transfer *>&out[written * TRANSFER_SIZE]
            t.id_lo = user + 1
            t.id_hi = C_FUNDING_ID_HI_BASE | <uint64_t>tag
            t.debit_account_id_lo = source_lo
            t.debit_account_id_hi = source_hi
            t.credit_account_id_lo = account_lo(seed, <uint64_t>tag, user)
            t.credit_account_id_hi = C_ACCOUNT_ID_HI_BASE | <uint64_t>tag
            amount = <int64_t>lognormal(user_bits(seed, user, 3), median_minor, sigma)
            if amount > amount_max_minor:
                amount = amount_max_minor
            t.amount = amount if amount > 0 else 1
            t.ledger = <uint16_t>ledger
            t.code = <uint16_t>code
            written += 1
    return written


def fill_merchants(unsigned char[::1] out, uint64_t seed, uint64_t first, int64_t count, int kind,
                   int product, int ledger):
    """Merchant settlement accounts [first, first + count): credited by payments."""
    cdef int64_t i
    cdef AccountInput *a
    if out.shape[0] < count * ACCOUNT_SIZE:
        raise ValueError("out too small")
    if count <= 0:
        return 0
    with nogil:
        memset(&out[0], 0, count * ACCOUNT_SIZE)
        for i in range(count):
            a = <AccountInput *>&out[i * ACCOUNT_SIZE]
            a.id_lo = account_lo(seed, T_MERCHANT, first + <uint64_t>i)
            a.id_hi = C_ACCOUNT_ID_HI_BASE | T_MERCHANT
            a.ledger = <uint16_t>ledger
            a.kind = <uint8_t>kind
            a.product = <uint16_t>product
    return count


# --- offered load -------------------------------------------------------------------

cdef inline int64_t poisson(double mean, uint64_t bits) noexcept nogil:
    """A Poisson draw from hashed bits: inversion below 64, normal approximation above."""
    cdef double limit, product, z
    cdef int64_t k = 0
    cdef int64_t value
    if mean <= 0.0:
        return 0
    if mean < 64.0:
        limit = exp(-mean)
        product = unit(bits)
        while product > limit:
            k += 1
            bits = mix64(bits + <uint64_t>0x9E3779B97F4A7C15)
            product *= unit(bits)
        return k
    z = sqrt(-2.0 * log(unit(bits))) * cos(TWO_PI * unit(mix64(bits)))
    value = <int64_t>(mean + sqrt(mean) * z + 0.5)
    return value if value > 0 else 0


def fill_step_counts(uint32_t[::1] counts, uint64_t seed, int64_t first_step, int64_t step_ns,
                     const double[::1] rate_per_s, int64_t rate_point_ns):
    """Arrivals per step: Poisson around the rate curve (per second, one point each
    `rate_point_ns`, linearly interpolated) at each step's midpoint."""
    cdef int64_t n = counts.shape[0]
    cdef int64_t points = rate_per_s.shape[0]
    cdef int64_t i, index
    cdef double t, frac, rate
    cdef uint64_t bits
    if points < 1:
        raise ValueError("empty rate curve")
    with nogil:
        for i in range(n):
            t = ((first_step + i) * <double>step_ns + 0.5 * step_ns) / <double>rate_point_ns
            index = <int64_t>t
            if index >= points - 1:
                rate = rate_per_s[points - 1]
            else:
                frac = t - index
                rate = rate_per_s[index] * (1.0 - frac) + rate_per_s[index + 1] * frac
            bits = mix64(<uint64_t>(first_step + i) ^ (seed * <uint64_t>0x2545F4914F6CDD1D))
            counts[i] = <uint32_t>poisson(rate * step_ns * 1e-9, bits)
    return n


def prefix_sums(const uint32_t[::1] counts, int64_t[::1] out, int64_t start):
    """out[i] = start + sum(counts[:i]) for i in 0..len(counts): the first request of each step."""
    cdef int64_t n = counts.shape[0]
    cdef int64_t i
    cdef int64_t total = start
    if out.shape[0] < n + 1:
        raise ValueError("out must hold len(counts) + 1 values")
    with nogil:
        for i in range(n):
            out[i] = total
            total += counts[i]
        out[n] = total
    return total


cdef inline int64_t stratified_arrival(uint64_t seed, int64_t step, int64_t step_ns, int64_t first,
                                       int64_t count, uint64_t seq) noexcept nogil:
    """Attempt 0 of `seq`, the (seq - first)-th of `count` arrivals in `step`: stratified."""
    if count < 1:
        count = 1
    cdef double position = (<int64_t>seq - first) + unit(mix64(seq ^ seed))
    return step * step_ns + <int64_t>(position * step_ns / count)


def fill_arrivals(uint64_t[::1] out, uint64_t seed, const int64_t[::1] step_first_seq,
                  int64_t step_ns, int64_t first_step, int64_t step_count):
    """When each request of steps first_step.. first reaches a gateway (simulated ns),
    written to out[seq - step_first_seq[first_step]]; the same times the clients use."""
    cdef int64_t step, first, count, i, base
    if first_step < 0 or first_step + step_count + 1 > step_first_seq.shape[0]:
        raise ValueError("steps out of range")
    base = step_first_seq[first_step]
    if out.shape[0] < step_first_seq[first_step + step_count] - base:
        raise ValueError("out too small")
    with nogil:
        for step in range(first_step, first_step + step_count):
            first = step_first_seq[step]
            count = step_first_seq[step + 1] - first
            for i in range(count):
                out[first + i - base] = <uint64_t>stratified_arrival(
                    seed, step, step_ns, first, count, <uint64_t>(first + i))
    return step_first_seq[first_step + step_count] - base


cdef class TrafficModel:
    """The transaction mix of DOMAIN.md over a generated population.

    Request `seq` always yields the same record. Users are chosen with a
    power law (a continuous Zipf with exponent `zipf_s` < 1: the top 1% of
    users make a large share of the traffic), amounts are log-normal per
    kind, and each user sticks to one preferred channel.
    """

    cdef public uint64_t seed
    cdef public uint64_t account_seed
    cdef public int64_t users
    cdef public int64_t merchants
    cdef public double class_iii_fraction
    cdef public double fixed_deposit_fraction
    cdef public double zipf_s
    cdef public int ledger
    cdef double power
    cdef double thresholds[9]
    cdef double medians[9]
    cdef double sigmas[9]
    cdef int64_t amount_max

    def __init__(self, uint64_t seed, uint64_t account_seed, int64_t users, int64_t merchants,
                 double class_iii_fraction, double fixed_deposit_fraction, double zipf_s,
                 mix, medians_minor, sigmas, int ledger, int64_t amount_max_minor):
        cdef int i
        cdef double total = 0.0
        cdef double running = 0.0
        if users < 2 or merchants < 1:
            raise ValueError("need at least two users and one merchant")
        if not 0.0 <= zipf_s < 1.0:
            raise ValueError("zipf_s must be in [0, 1)")
        if len(mix) != MIX_COUNT or len(medians_minor) != MIX_COUNT or len(sigmas) != MIX_COUNT:
            raise ValueError(f"mix, medians and sigmas need {MIX_COUNT} values each")
        self.seed = seed
        self.account_seed = account_seed
        self.users = users
        self.merchants = merchants
        self.class_iii_fraction = class_iii_fraction
        self.fixed_deposit_fraction = fixed_deposit_fraction
        self.zipf_s = zipf_s
        self.power = 1.0 / (1.0 - zipf_s)
        self.ledger = ledger
        self.amount_max = amount_max_minor
        for i in range(MIX_COUNT):
            if mix[i] < 0:
                raise ValueError("mix shares must be >= 0")
            total += mix[i]
        if total <= 0:
            raise ValueError("mix shares must not all be 0")
        for i in range(MIX_COUNT):
            running += mix[i] / total
            self.thresholds[i] = running
            self.medians[i] = medians_minor[i]
            self.sigmas[i] = sigmas[i]
        self.thresholds[MIX_COUNT - 1] = 2.0

    cdef inline uint64_t pick(self, uint64_t bits, int64_t count, uint64_t salt) noexcept nogil:
        # Continuous power law on [0, count): density ~ rank^-s, rank = count * u^(1/(1-s)).
        cdef int64_t rank = <int64_t>(count * pow(unit(bits), self.power))
        if rank >= count:
            rank = count - 1
        return mix64(<uint64_t>rank + salt) % <uint64_t>count

    cdef int channel_of(self, uint64_t seq) noexcept nogil:
        """The channel `make` gives request `seq`, without making it (the clients' error
        counts per channel): the user's preferred channel, Open API for receipts."""
        cdef uint64_t h = mix64(seq ^ (self.seed * <uint64_t>0xD1B54A32D192ED03))
        cdef double u = unit(h)
        cdef int kind = 0
        cdef uint64_t user
        while u >= self.thresholds[kind]:
            kind += 1
        if kind == MIX_EXTERNAL_IN:
            return CHANNEL_OPEN_API
        user = self.pick(mix64(h + 1), self.users, <uint64_t>0x5DEECE66D + self.account_seed)
        return CHANNEL_WECHAT if unit(user_bits(self.account_seed, user, 4)) < 0.6 else CHANNEL_APP

    def channels(self, uint64_t first_seq, int64_t count):
        """channel_of for requests first_seq.. (for tests: it must agree with `make`)."""
        return bytes([self.channel_of(first_seq + <uint64_t>i) for i in range(count)])

    cdef int make(self, Transfer *t, uint64_t seq) noexcept nogil:
        cdef uint64_t h = mix64(seq ^ (self.seed * <uint64_t>0xD1B54A32D192ED03))
        cdef double u = unit(h)
        cdef int kind = 0
        cdef uint64_t user, other, tag
        cdef uint64_t s = self.account_seed
        cdef int64_t amount
        cdef int channel
        while u >= self.thresholds[kind]:
            kind += 1
        h = mix64(h + 1)
        user = self.pick(h, self.users, <uint64_t>0x5DEECE66D + s)
        channel = CHANNEL_WECHAT if unit(user_bits(s, user, 4)) < 0.6 else CHANNEL_APP
        if kind == MIX_CLASS_III_PAYMENT or kind == MIX_CLASS_III_TOPUP:
            if not user_has(s, T_CLASS_III, user, self.class_iii_fraction):
                kind = MIX_PAYMENT if kind == MIX_CLASS_III_PAYMENT else MIX_TOPUP
        tag = T_CLASS_II
        if kind == MIX_CLASS_III_PAYMENT or kind == MIX_CLASS_III_TOPUP:
            tag = T_CLASS_III
        memset(t, 0, TRANSFER_SIZE)
        t.id_lo = seq + 1
        t.id_hi = C_REQUEST_ID_HI
        t.ledger = <uint16_t>self.ledger
        t.channel = <uint8_t>channel
        h = mix64(h + 2)
        amount = <int64_t>lognormal(h, self.medians[kind], self.sigmas[kind])
        if amount > self.amount_max:
            amount = self.amount_max
        t.amount = amount if amount > 0 else 1
        h = mix64(h + 3)
        if kind == MIX_PAYMENT or kind == MIX_CLASS_III_PAYMENT:
            t.debit_account_id_lo = account_lo(s, tag, user)
            t.debit_account_id_hi = C_ACCOUNT_ID_HI_BASE | tag
            other = self.pick(h, self.merchants, <uint64_t>0x1234567 + s)
            t.credit_account_id_lo = account_lo(s, T_MERCHANT, other)
            t.credit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_MERCHANT
            t.code = CODE_PAYMENT
        elif kind == MIX_TOPUP or kind == MIX_CLASS_III_TOPUP:
            t.debit_account_id_lo = C_CLEARING_INDEX
            t.debit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_INTERNAL
            t.credit_account_id_lo = account_lo(s, tag, user)
            t.credit_account_id_hi = C_ACCOUNT_ID_HI_BASE | tag
            t.code = CODE_TOPUP_BOUND
        elif kind == MIX_WITHDRAW:
            t.debit_account_id_lo = account_lo(s, T_CLASS_II, user)
            t.debit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_CLASS_II
            t.credit_account_id_lo = C_CLEARING_INDEX
            t.credit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_INTERNAL
            t.code = CODE_WITHDRAW_BOUND
        elif kind == MIX_TRANSFER:
            other = h % <uint64_t>self.users
            if other == user:
                other = (user + 1) % <uint64_t>self.users
            t.debit_account_id_lo = account_lo(s, T_CLASS_II, user)
            t.debit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_CLASS_II
            t.credit_account_id_lo = account_lo(s, T_CLASS_II, other)
            t.credit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_CLASS_II
            t.code = CODE_TRANSFER
        elif kind == MIX_EXTERNAL_OUT:
            t.debit_account_id_lo = account_lo(s, T_CLASS_II, user)
            t.debit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_CLASS_II
            t.credit_account_id_lo = C_CLEARING_INDEX
            t.credit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_INTERNAL
            t.code = CODE_EXTERNAL_TRANSFER_OUT
        elif kind == MIX_EXTERNAL_IN:
            t.debit_account_id_lo = C_CLEARING_INDEX
            t.debit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_INTERNAL
            t.credit_account_id_lo = account_lo(s, T_CLASS_II, user)
            t.credit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_CLASS_II
            t.code = CODE_EXTERNAL_TRANSFER_IN
            t.channel = CHANNEL_OPEN_API
        else:  # MIX_DEPOSIT: into the user's fixed deposit, else the bank's wealth product
            t.debit_account_id_lo = account_lo(s, T_CLASS_II, user)
            t.debit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_CLASS_II
            if user_has(s, T_FIXED_DEPOSIT, user, self.fixed_deposit_fraction):
                t.credit_account_id_lo = account_lo(s, T_FIXED_DEPOSIT, user)
                t.credit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_FIXED_DEPOSIT
                t.code = CODE_FIXED_DEPOSIT
            else:
                t.credit_account_id_lo = C_WEALTH_INDEX
                t.credit_account_id_hi = C_ACCOUNT_ID_HI_BASE | T_INTERNAL
                t.code = CODE_WEALTH
        return kind

    def fill_range(self, unsigned char[::1] out, int64_t offset, uint64_t first_seq, int64_t count):
        """Records of requests first_seq.. into `out` from record `offset` on."""
        cdef int64_t i
        if count < 0 or out.shape[0] < (offset + count) * TRANSFER_SIZE:
            raise ValueError("out too small")
        with nogil:
            for i in range(count):
                self.make(<Transfer *>&out[(offset + i) * TRANSFER_SIZE], first_seq + <uint64_t>i)
        return count

    def fill_packed(self, unsigned char[::1] out, int64_t offset, const uint64_t[::1] packed,
                    int64_t count):
        """Records of the requests named by packed (seq << 8 | attempt) values."""
        cdef int64_t i
        if count < 0 or count > packed.shape[0] or out.shape[0] < (offset + count) * TRANSFER_SIZE:
            raise ValueError("out too small or count too large")
        with nogil:
            for i in range(count):
                self.make(<Transfer *>&out[(offset + i) * TRANSFER_SIZE], packed[i] >> 8)
        return count

    def kind_counts(self, uint64_t first_seq, int64_t count):
        """How many of requests first_seq.. fall in each kind of the mix (for tests and reports)."""
        cdef Transfer t
        cdef int64_t i
        cdef int64_t counts[9]
        memset(counts, 0, sizeof(counts))
        with nogil:
            for i in range(count):
                counts[self.make(&t, first_seq + <uint64_t>i)] += 1
        return [counts[i] for i in range(MIX_COUNT)]


def gather_records(unsigned char[::1] out, int64_t offset, const unsigned char[::1] records,
                   const uint64_t[::1] packed, int64_t count):
    """Copy stored request records (a trace or journal) named by packed seqs into `out`."""
    cdef int64_t i
    cdef uint64_t seq
    cdef int64_t stored = records.shape[0] // TRANSFER_SIZE
    if count < 0 or count > packed.shape[0] or out.shape[0] < (offset + count) * TRANSFER_SIZE:
        raise ValueError("out too small or count too large")
    for i in range(count):
        if <int64_t>(packed[i] >> 8) >= stored:
            raise ValueError("request seq beyond the stored records")
    with nogil:
        for i in range(count):
            seq = packed[i] >> 8
            memcpy(&out[(offset + i) * TRANSFER_SIZE], &records[seq * TRANSFER_SIZE], TRANSFER_SIZE)
    return count


cdef inline int region_of(uint64_t seed, uint64_t seq, double region_a_share) noexcept nogil:
    cdef double u = unit(mix64(seq * <uint64_t>0x9E3779B97F4A7C15 + seed + <uint64_t>0xBEEF))
    return 0 if u < region_a_share else 1


cdef inline bint stale_of(uint64_t seed, uint64_t seq, double stale_fraction) noexcept nogil:
    cdef double u = unit(mix64(seq * <uint64_t>0xC2B2AE3D27D4EB4F + seed + <uint64_t>0x57A1E))
    return u < stale_fraction


def region_of_request(uint64_t seed, uint64_t seq, double region_a_share):
    """0 for a client in region A, 1 for region B."""
    return region_of(seed, seq, region_a_share)


def partition_requests(uint64_t seed, double region_a_share, double stale_fraction,
                       int64_t new_first, int64_t new_count, const uint64_t[::1] packed,
                       int64_t packed_count, uint64_t[::1] out0, uint64_t[::1] out1,
                       uint64_t[::1] out2, uint64_t[::1] out3):
    """Split a step's attempts into groups by (client region, stale route): group =
    region * 2 + stale. Each group's packed list goes to out<group>; returns the counts."""
    cdef int64_t n[4]
    cdef int64_t i, total = new_count + packed_count
    cdef uint64_t value, seq
    cdef int group
    cdef uint64_t *outs[4]
    if (out0.shape[0] < total or out1.shape[0] < total or out2.shape[0] < total
            or out3.shape[0] < total or packed_count > packed.shape[0]):
        raise ValueError("outputs too small")
    n[0] = n[1] = n[2] = n[3] = 0
    if total == 0:
        return (0, 0, 0, 0)
    outs[0] = &out0[0]
    outs[1] = &out1[0]
    outs[2] = &out2[0]
    outs[3] = &out3[0]
    with nogil:
        for i in range(total):
            if i < packed_count:
                value = packed[i]
            else:
                value = (<uint64_t>(new_first + i - packed_count)) << 8
            seq = value >> 8
            group = region_of(seed, seq, region_a_share) * 2
            if stale_fraction > 0.0 and stale_of(seed, seq, stale_fraction):
                group += 1
            outs[group][n[group]] = value
            n[group] += 1
    return (n[0], n[1], n[2], n[3])


# --- clients --------------------------------------------------------------------------

cdef class Clients:
    """The clients' side of history: what each request was answered, when, and how long
    it took, plus the latency histograms and per-second series of the report.

    `ack_result[seq]` is the result the client accepted (NOT_ACKED until then,
    GAVE_UP when it stopped retrying) and `ack_ms[seq]` when it received it
    (simulated milliseconds). The checker compares these with the ledgers.
    """

    cdef public object ack_result_buffer
    cdef public object ack_ms_buffer
    cdef uint8_t[::1] ack_result
    cdef uint32_t[::1] ack_ms
    cdef const int64_t[::1] step_first_seq
    cdef const uint64_t[::1] arrivals
    cdef bint has_arrivals
    cdef const int64_t[::1] phase_starts
    cdef int64_t phase_count
    cdef public object hist_phase_buffer
    cdef public object hist_series_buffer
    cdef public object acked_per_s_buffer
    cdef public object attempts_per_s_buffer
    cdef public object offered_per_s_buffer
    cdef public object retries_per_s_buffer
    cdef public object gave_up_per_s_buffer
    cdef public object result_counts_buffer
    cdef int64_t[::1] hist_phase
    cdef int64_t[::1] hist_series
    cdef int64_t[::1] acked_per_s
    cdef int64_t[::1] attempts_per_s
    cdef int64_t[::1] offered_per_s
    cdef int64_t[::1] retries_per_s
    cdef int64_t[::1] gave_up_per_s
    cdef int64_t[::1] result_counts
    cdef public uint64_t seed
    cdef public int64_t step_ns
    cdef public int64_t linger_ns
    cdef public int64_t timeout_ns
    cdef public int64_t backoff_base_ns
    cdef public int64_t backoff_cap_ns
    cdef public int64_t attempts_max
    cdef public double reply_loss
    cdef public double region_a_share
    cdef public int64_t series_bucket_ns
    cdef public int64_t series_count
    cdef public int64_t seconds
    cdef public int64_t acked
    cdef public int64_t acked_first_attempt
    cdef public int64_t answered_exists
    cdef public int64_t retries
    cdef public int64_t gave_up
    cdef public int64_t timeouts
    cdef public int64_t refusals
    # Exact samples: each acknowledged request's latency in microseconds (0: none), and
    # the errors per series bucket, region, channel slot and kind (see ERROR_KINDS).
    cdef public object latency_us_buffer
    cdef public object errors_buffer
    cdef uint32_t[::1] latency_us
    cdef int64_t[::1] errors
    cdef bint has_latency_us
    cdef bint has_errors
    cdef TrafficModel channel_model
    cdef const unsigned char[::1] channel_records
    cdef int channel_source  # 0: none (slot 0), 1: the model, 2: stored records

    def __init__(self, *, uint64_t seed, int64_t request_count, step_first_seq, arrivals,
                 phase_starts, int64_t step_ns, int64_t linger_ns, int64_t timeout_ns,
                 int64_t backoff_base_ns, int64_t backoff_cap_ns, int64_t attempts_max,
                 double reply_loss, double region_a_share, int64_t seconds,
                 int64_t series_bucket_ns, int64_t series_count,
                 ack_result_buffer, ack_ms_buffer, hist_phase_buffer, hist_series_buffer,
                 acked_per_s_buffer, attempts_per_s_buffer, offered_per_s_buffer,
                 retries_per_s_buffer,
                 gave_up_per_s_buffer, result_counts_buffer):
        self.seed = seed
        self.step_first_seq = step_first_seq
        self.has_arrivals = arrivals is not None
        if arrivals is not None:
            self.arrivals = arrivals
            if self.arrivals.shape[0] < request_count:
                raise ValueError("arrivals shorter than the requests")
        self.phase_starts = phase_starts
        self.phase_count = self.phase_starts.shape[0] + 1
        self.step_ns = step_ns
        self.linger_ns = linger_ns if linger_ns > 0 else 1
        self.timeout_ns = timeout_ns
        self.backoff_base_ns = backoff_base_ns
        self.backoff_cap_ns = backoff_cap_ns
        self.attempts_max = attempts_max
        self.reply_loss = reply_loss
        self.region_a_share = region_a_share
        self.seconds = seconds
        self.series_bucket_ns = series_bucket_ns
        self.series_count = series_count
        self.ack_result_buffer = ack_result_buffer
        self.ack_ms_buffer = ack_ms_buffer
        self.hist_phase_buffer = hist_phase_buffer
        self.hist_series_buffer = hist_series_buffer
        self.acked_per_s_buffer = acked_per_s_buffer
        self.attempts_per_s_buffer = attempts_per_s_buffer
        self.offered_per_s_buffer = offered_per_s_buffer
        self.retries_per_s_buffer = retries_per_s_buffer
        self.gave_up_per_s_buffer = gave_up_per_s_buffer
        self.result_counts_buffer = result_counts_buffer
        self.ack_result = ack_result_buffer
        self.ack_ms = ack_ms_buffer
        self.hist_phase = hist_phase_buffer
        self.hist_series = hist_series_buffer
        self.acked_per_s = acked_per_s_buffer
        self.attempts_per_s = attempts_per_s_buffer
        self.offered_per_s = offered_per_s_buffer
        self.retries_per_s = retries_per_s_buffer
        self.gave_up_per_s = gave_up_per_s_buffer
        self.result_counts = result_counts_buffer
        if self.ack_result.shape[0] < request_count or self.ack_ms.shape[0] < request_count:
            raise ValueError("ack arrays shorter than the requests")
        if self.hist_phase.shape[0] != self.phase_count * 2 * NB:
            raise ValueError("hist_phase must hold (phases) * 2 regions * LATENCY_BUCKETS")
        if self.hist_series.shape[0] != series_count * NB:
            raise ValueError("hist_series must hold series_count * LATENCY_BUCKETS")
        if (self.acked_per_s.shape[0] != 2 * seconds or self.attempts_per_s.shape[0] != 2 * seconds
                or self.offered_per_s.shape[0] != 2 * seconds
                or self.retries_per_s.shape[0] != seconds
                or self.gave_up_per_s.shape[0] != seconds):
            raise ValueError("per-second series have the wrong size")
        if self.result_counts.shape[0] != 256:
            raise ValueError("result_counts must hold 256 values")
        self.channel_source = 0

    def record_samples(self, latency_us_buffer, errors_buffer, model=None, records=None):
        """Keep exact samples: `latency_us_buffer` (uint32 per request) gets each
        acknowledged request's latency in microseconds; `errors_buffer` (int64,
        series_count * 2 * ERROR_CHANNEL_SLOTS * 3) counts refusals, timeouts and
        give-ups per series bucket, client region and channel, the channel read from
        the traffic `model` or the stored `records`."""
        self.latency_us_buffer = latency_us_buffer
        self.errors_buffer = errors_buffer
        self.latency_us = latency_us_buffer
        self.errors = errors_buffer
        if self.latency_us.shape[0] < self.ack_result.shape[0]:
            raise ValueError("latency_us shorter than the requests")
        if self.errors.shape[0] != self.series_count * 2 * E_SLOTS * E_KINDS:
            raise ValueError("errors must hold series_count * 2 * 8 * 3 counters")
        self.has_latency_us = True
        self.has_errors = True
        if model is not None:
            self.channel_model = model
            self.channel_source = 1
        elif records is not None:
            self.channel_records = records
            self.channel_source = 2

    cdef inline int channel_slot(self, uint64_t seq) noexcept nogil:
        cdef int channel = 0
        if self.channel_source == 1:
            channel = self.channel_model.channel_of(seq)
        elif self.channel_source == 2:
            channel = (<const Transfer *>&self.channel_records[seq * TRANSFER_SIZE]).channel
        return channel if channel < E_SLOTS - 1 else E_SLOTS - 1

    cdef inline void add_error(self, uint64_t seq, int region, int kind, int64_t at_ns) noexcept nogil:
        cdef int64_t series
        if not self.has_errors:
            return
        series = at_ns // self.series_bucket_ns
        if series >= self.series_count:
            series = self.series_count - 1
        if series < 0:
            series = 0
        self.errors[((series * 2 + region) * E_SLOTS + self.channel_slot(seq)) * E_KINDS
                    + kind] += 1

    cdef inline int64_t arrival_first(self, uint64_t seq) noexcept nogil:
        """When attempt 0 of `seq` reached its gateway: stratified inside its step."""
        cdef int64_t low, high, middle, step, first, count
        if self.has_arrivals:
            return <int64_t>self.arrivals[seq]
        low = 0
        high = self.step_first_seq.shape[0] - 1
        while high - low > 1:  # step_first_seq[low] <= seq < step_first_seq[high]
            middle = (low + high) >> 1
            if self.step_first_seq[middle] <= <int64_t>seq:
                low = middle
            else:
                high = middle
        step = low
        first = self.step_first_seq[step]
        count = self.step_first_seq[step + 1] - first
        return stratified_arrival(self.seed, step, self.step_ns, first, count, seq)

    cdef inline int64_t arrival_of(self, uint64_t seq, int attempt, int64_t step) noexcept nogil:
        if attempt == 0:
            return self.arrival_first(seq)
        cdef uint64_t bits = mix64(seq * <uint64_t>0x9E3779B97F4A7C15
                                   + <uint64_t>attempt + self.seed)
        return step * self.step_ns + <int64_t>(unit(bits) * self.step_ns)

    cdef inline int64_t backoff(self, uint64_t seq, int attempt) noexcept nogil:
        cdef int64_t wait = self.backoff_base_ns
        cdef int _
        for _ in range(1, attempt):
            wait *= 2
            if wait >= self.backoff_cap_ns:
                wait = self.backoff_cap_ns
                break
        # Full jitter on half the wait, so retries after a failover do not arrive in lockstep.
        cdef double jitter = unit(mix64(seq + <uint64_t>attempt * <uint64_t>0x51ED27))
        return wait // 2 + <int64_t>(jitter * (wait // 2))

    cdef inline int phase_of(self, int64_t t) noexcept nogil:
        cdef int phase = 0
        while phase < self.phase_count - 1 and t >= self.phase_starts[phase]:
            phase += 1
        return phase

    cdef inline void add_latency(self, int64_t latency_ns, int phase, int region,
                                 int64_t at_ns) noexcept nogil:
        cdef double micros = latency_ns / 1000.0
        cdef int64_t bucket = 0
        cdef int64_t series
        if micros > 1.0:
            bucket = <int64_t>(log10(micros) * NB_PER_DECADE)
            if bucket >= NB:
                bucket = NB - 1
        self.hist_phase[(phase * 2 + region) * NB + bucket] += 1
        series = at_ns // self.series_bucket_ns
        if series >= self.series_count:
            series = self.series_count - 1
        if series < 0:
            series = 0
        self.hist_series[series * NB + bucket] += 1

    cdef inline int64_t second_of(self, int64_t t) noexcept nogil:
        cdef int64_t s = t // 1000000000
        if s < 0:
            return 0
        if s >= self.seconds:
            return self.seconds - 1
        return s

    def count_attempts(self, int64_t step, int64_t new_first, int64_t new_count,
                       const uint64_t[::1] packed, int64_t packed_count):
        """Count the attempts that arrive in `step` (and the first ones among them: the
        offered load), per client region and second."""
        cdef int64_t i, index
        cdef uint64_t value, seq
        cdef int attempt
        if packed_count > packed.shape[0]:
            raise ValueError("packed_count too large")
        with nogil:
            for i in range(packed_count + new_count):
                if i < packed_count:
                    value = packed[i]
                else:
                    value = (<uint64_t>(new_first + i - packed_count)) << 8
                seq = value >> 8
                attempt = <int>(value & 0xFF)
                index = (region_of(self.seed, seq, self.region_a_share) * self.seconds
                         + self.second_of(self.arrival_of(seq, attempt, step)))
                self.attempts_per_s[index] += 1
                if attempt == 0:
                    self.offered_per_s[index] += 1
        return packed_count + new_count

    def settle(self, int mode, int64_t step, int64_t new_first, int64_t new_count,
               const uint64_t[::1] packed, int64_t packed_count, const uint8_t[::1] results,
               int64_t commit_delay_ns, int64_t client_a_ns, int64_t client_b_ns,
               uint64_t[::1] retry_out, int64_t[::1] retry_step_out):
        """Tell the clients of one batch what happened to their attempts.

        The batch holds `packed` attempts first (seq << 8 | attempt), then
        attempt 0 of requests new_first.. . With SETTLE_COMMIT, `results` are
        the ledger's answers in batch order and `commit_delay_ns` is when the
        batch committed, after the end of its step: an attempt is answered when
        its own linger window closes plus that delay, plus the gateway link
        `client_<region>_ns` each way. An answer that arrives after the
        client's timeout (or is lost on the way, `reply_loss`) is not an
        acknowledgement: the client retries, with the same id, after the
        timeout and a jittered exponential backoff. SETTLE_TIMEOUT: nobody
        answers. SETTLE_REFUSED: an immediate refusal, retried after backoff.
        Returns how many retries were written to retry_out / retry_step_out
        (the step in which each reaches a gateway again).
        """
        cdef int64_t total = packed_count + new_count
        cdef int64_t i, written = 0
        cdef uint64_t value, seq
        cdef int attempt, region, result
        cdef int64_t arrival, client_ns, send, close, received, step_start, step_end, retry_at
        cdef int64_t first_send, next_step
        cdef bint answered, lost_reply
        if packed_count > packed.shape[0]:
            raise ValueError("packed_count too large")
        if mode == M_COMMIT and results.shape[0] < total:
            raise ValueError("results shorter than the batch")
        if retry_out.shape[0] < total or retry_step_out.shape[0] < total:
            raise ValueError("retry outputs too small")
        step_start = step * self.step_ns
        step_end = step_start + self.step_ns
        with nogil:
            for i in range(total):
                if i < packed_count:
                    value = packed[i]
                else:
                    value = (<uint64_t>(new_first + i - packed_count)) << 8
                seq = value >> 8
                attempt = <int>(value & 0xFF)
                if self.ack_result[seq] != C_NOT_ACKED:
                    continue  # already answered or given up: a stale duplicate attempt
                region = region_of(self.seed, seq, self.region_a_share)
                client_ns = client_a_ns if region == 0 else client_b_ns
                arrival = self.arrival_of(seq, attempt, step)
                send = arrival - client_ns
                answered = False
                if mode == M_COMMIT:
                    close = (step_start
                             + ((arrival - step_start) // self.linger_ns + 1) * self.linger_ns)
                    if close > step_end:
                        close = step_end
                    received = close + commit_delay_ns + client_ns
                    lost_reply = unit(mix64(seq * <uint64_t>0x2545F4914F6CDD1D
                                            + <uint64_t>attempt + self.seed)) < self.reply_loss
                    if received - send <= self.timeout_ns and not lost_reply:
                        answered = True
                        result = results[i]
                        self.ack_result[seq] = <uint8_t>result
                        self.ack_ms[seq] = <uint32_t>(received // 1000000)
                        self.result_counts[result] += 1
                        self.acked += 1
                        if attempt == 0:
                            self.acked_first_attempt += 1
                        if result == TR_EXISTS:
                            self.answered_exists += 1
                        first_send = self.arrival_first(seq) - client_ns if attempt > 0 else send
                        self.add_latency(received - first_send, self.phase_of(first_send),
                                         region, received)
                        if self.has_latency_us:
                            if (received - first_send) // 1000 >= C_LATENCY_US_MAX:
                                self.latency_us[seq] = <uint32_t>C_LATENCY_US_MAX
                            else:
                                self.latency_us[seq] = <uint32_t>((received - first_send) // 1000)
                        self.acked_per_s[region * self.seconds + self.second_of(received)] += 1
                if answered:
                    continue
                if attempt + 1 >= self.attempts_max or attempt + 1 > 255:
                    self.ack_result[seq] = C_GAVE_UP
                    self.gave_up += 1
                    self.gave_up_per_s[self.second_of(send + self.timeout_ns)] += 1
                    self.add_error(seq, region, E_GAVE_UP, send + self.timeout_ns)
                    continue
                if mode == M_REFUSED:
                    self.refusals += 1
                    self.add_error(seq, region, E_REFUSED, send)
                    retry_at = send + 2 * client_ns + self.backoff(seq, attempt + 1)
                else:
                    self.timeouts += 1
                    self.add_error(seq, region, E_TIMEOUT, send)
                    retry_at = send + self.timeout_ns + self.backoff(seq, attempt + 1)
                next_step = (retry_at + client_ns) // self.step_ns
                if next_step <= step:
                    next_step = step + 1
                retry_out[written] = (seq << 8) | <uint64_t>(attempt + 1)
                retry_step_out[written] = next_step
                written += 1
                self.retries += 1
                self.retries_per_s[self.second_of(retry_at)] += 1
        return written


cdef extern from "stdlib.h":
    void qsort(void *base, size_t count, size_t size,
               int (*compare)(const void *, const void *) noexcept nogil) noexcept nogil


cdef int compare_u32(const void *a, const void *b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t *>a)[0]
    cdef uint32_t y = (<const uint32_t *>b)[0]
    return (x > y) - (x < y)


cdef inline int64_t latency_group(int64_t seq, uint32_t ack_ms, uint64_t seed,
                                  double region_a_share, int64_t bucket_ms,
                                  int64_t bucket_count) noexcept nogil:
    cdef int64_t bucket = ack_ms // bucket_ms
    if bucket >= bucket_count:
        bucket = bucket_count - 1
    return region_of(seed, seq, region_a_share) * bucket_count + bucket


def group_latencies(const uint32_t[::1] latency_us, const uint8_t[::1] ack_result,
                    const uint32_t[::1] ack_ms, uint64_t seed, double region_a_share,
                    int64_t bucket_ms, int64_t bucket_count, int64_t[::1] offsets,
                    uint32_t[::1] out):
    """The acknowledged requests' exact latencies grouped by (client region, series bucket
    of the acknowledgement) and sorted within each group: group g = region * bucket_count
    + bucket holds out[offsets[g]:offsets[g + 1]] (a counting sort, then qsort per group).
    `offsets` holds 2 * bucket_count + 1 values, `out` one per acknowledged request
    (results below GAVE_UP). Returns how many samples were written."""
    cdef int64_t count = ack_result.shape[0]
    cdef int64_t groups = 2 * bucket_count
    cdef int64_t seq, group, total = 0, n
    if offsets.shape[0] != groups + 1 or latency_us.shape[0] < count or ack_ms.shape[0] < count:
        raise ValueError("offsets must hold 2 * bucket_count + 1 values")
    if bucket_ms < 1 or bucket_count < 1:
        raise ValueError("bucket_ms and bucket_count must be >= 1")
    with nogil:
        memset(&offsets[0], 0, (groups + 1) * 8)
        for seq in range(count):
            if ack_result[seq] >= C_GAVE_UP:
                continue
            group = latency_group(seq, ack_ms[seq], seed, region_a_share, bucket_ms, bucket_count)
            offsets[group + 1] += 1
            total += 1
    if out.shape[0] < total:
        raise ValueError("out shorter than the acknowledged requests")
    cursor_buffer = bytearray(8 * groups + 8)
    cdef int64_t[::1] cursors = memoryview(cursor_buffer).cast("q")
    with nogil:
        for group in range(groups):
            offsets[group + 1] += offsets[group]
            cursors[group] = offsets[group]
        for seq in range(count):
            if ack_result[seq] >= C_GAVE_UP:
                continue
            group = latency_group(seq, ack_ms[seq], seed, region_a_share, bucket_ms, bucket_count)
            out[cursors[group]] = latency_us[seq]
            cursors[group] += 1
        for group in range(groups):
            n = offsets[group + 1] - offsets[group]
            if n > 1:
                qsort(&out[offsets[group]], <size_t>n, sizeof(uint32_t), compare_u32)
    return total


# --- checker -------------------------------------------------------------------------

def scan_log(const unsigned char[::1] log_table, const int64_t[::1] meta, int64_t from_seq,
             uint8_t[::1] seen, const unsigned char[::1] accounts, int64_t sample_stride,
             int64_t[::1] sample_totals, int64_t last_timestamp):
    """Read one data center's log records [from_seq, log_count) once, as the checker.

    For each request record, `seen[seq]` becomes result + 1; a second record of
    the same request is a duplicate. Timestamps must strictly increase along
    the log. For accounts whose slot is a multiple of `sample_stride`, what the
    posted transfers of each business day consumed is summed into
    `sample_totals`, 9 int64 per sampled account: the day, the counted outflow
    and inflow (the PBoC buckets), and what was debited on each channel 1..6
    (reset when the day changes), to recheck the limits independently of the
    kernel's own counters.

    Returns (next from_seq, duplicates, timestamp violations, last timestamp,
    records scanned). Raises if records were evicted before they were scanned.
    """
    cdef int64_t tail = meta[META_LOG_TAIL]
    cdef int64_t count = meta[META_LOG_COUNT]
    cdef uint64_t mask = <uint64_t>meta[META_LOG_MASK]
    cdef const Transfer *records = <const Transfer *>&log_table[0]
    cdef const Transfer *r
    cdef int64_t seq, request
    cdef int64_t duplicates = 0, violations = 0, scanned = 0
    cdef uint64_t last = <uint64_t>last_timestamp
    cdef int64_t limit = seen.shape[0]
    cdef int64_t sample_count = sample_totals.shape[0] // 9
    cdef int64_t index
    cdef int64_t *totals
    cdef const Account *account_kinds = <const Account *>&accounts[0]
    if from_seq < tail:
        raise ValueError(f"log records {from_seq}..{tail} were evicted before they were read")
    if log_table.shape[0] != <int64_t>(mask + 1) * TRANSFER_SIZE:
        raise ValueError("log size does not match its mask")
    if sample_stride < 1:
        raise ValueError("sample_stride must be >= 1")
    with nogil:
        for seq in range(from_seq, count):
            r = &records[<uint64_t>seq & mask]
            scanned += 1
            if r.timestamp <= last:
                violations += 1
            last = r.timestamp
            if r.id_hi == C_REQUEST_ID_HI and r.id_lo >= 1:
                request = <int64_t>r.id_lo - 1
                if request < limit:
                    if seen[request] != 0:
                        duplicates += 1
                    else:
                        seen[request] = <uint8_t>(r.result + 1)
            if r.result != TR_OK:
                continue
            if r.debit_slot % sample_stride == 0:
                index = r.debit_slot // sample_stride
                if index < sample_count:
                    totals = &sample_totals[index * 9]
                    if totals[0] != r.business_day:
                        memset(totals, 0, 9 * 8)
                        totals[0] = r.business_day
                    if r.counted & COUNTED_DEBIT_OUTFLOW:
                        totals[1] += r.amount_posted
                    # The kernel charges a channel's daily cap to any customer account it debits.
                    if 1 <= r.channel <= 6 and account_kinds[r.debit_slot].kind <= KIND_LOAN:
                        totals[2 + r.channel] += r.amount_posted
            if (r.counted & COUNTED_CREDIT_INFLOW) and r.credit_slot % sample_stride == 0:
                index = r.credit_slot // sample_stride
                if index < sample_count:
                    totals = &sample_totals[index * 9]
                    if totals[0] != r.business_day:
                        memset(totals, 0, 9 * 8)
                        totals[0] = r.business_day
                    totals[2] += r.amount_posted
    return (count, duplicates, violations, <int64_t>last, scanned)


def scan_failed(const unsigned char[::1] failed_table, const int64_t[::1] meta, int64_t from_seq,
                uint8_t[::1] seen):
    """Read one data center's failure ring records [from_seq, failed_count) once.

    Failed transfers that consumed their id live in the ledger's failure ring,
    not in the log; for each request record `seen[seq]` becomes result + 1 (a
    second record of the same request is a duplicate). Call it as often as the
    log's scan: a ring that turned over before it was read raises.

    Returns (next from_seq, duplicates, records scanned).
    """
    cdef int64_t tail = meta[META_FAILED_TAIL]
    cdef int64_t count = meta[META_FAILED_COUNT]
    cdef uint64_t mask = <uint64_t>meta[META_FAILED_MASK]
    cdef const Transfer *records = <const Transfer *>&failed_table[0]
    cdef const Transfer *r
    cdef int64_t seq, request
    cdef int64_t duplicates = 0, scanned = 0
    cdef int64_t limit = seen.shape[0]
    if from_seq < tail:
        raise ValueError(f"failure records {from_seq}..{tail} were forgotten before they were read")
    if failed_table.shape[0] != <int64_t>(mask + 1) * TRANSFER_SIZE:
        raise ValueError("failure ring size does not match its mask")
    with nogil:
        for seq in range(from_seq, count):
            r = &records[<uint64_t>seq & mask]
            scanned += 1
            if r.id_hi == C_REQUEST_ID_HI and r.id_lo >= 1:
                request = <int64_t>r.id_lo - 1
                if request < limit:
                    if seen[request] != 0:
                        duplicates += 1
                    else:
                        seen[request] = <uint8_t>(r.result + 1)
    return (count, duplicates, scanned)


cdef inline bint ack_matches(uint8_t acked, uint8_t seen) noexcept nogil:
    if acked == TR_OK or acked == TR_EXISTS:
        return seen == TR_OK + 1
    if acked == TR_ID_ALREADY_FAILED:
        return seen >= 2
    if acked >= TR_PENDING_TRANSFER_NOT_FOUND:
        return seen == acked + 1
    return seen == 0  # a validation failure consumes no id and leaves no record


def verify_acked(const uint8_t[::1] ack_result, const uint8_t[::1] seen, int64_t first,
                 int64_t end, int64_t list_max):
    """Every request the clients saw acknowledged in [first, end) must be in `seen`
    (one data center's history) with the acknowledged result.

    Returns (checked, missing, mismatched, missing seqs, mismatched seqs); the
    lists hold at most `list_max` seqs each.
    """
    cdef int64_t i, checked = 0, missing = 0, mismatched = 0
    cdef uint8_t acked
    if end > ack_result.shape[0] or end > seen.shape[0]:
        raise ValueError("range beyond the arrays")
    missing_list = []
    mismatched_list = []
    for i in range(first, end):
        acked = ack_result[i]
        if acked >= C_GAVE_UP:
            continue
        checked += 1
        if ack_matches(acked, seen[i]):
            continue
        if seen[i] == 0:
            missing += 1
            if len(missing_list) < list_max:
                missing_list.append(i)
        else:
            mismatched += 1
            if len(mismatched_list) < list_max:
                mismatched_list.append(i)
    return (checked, missing, mismatched, missing_list, mismatched_list)


def count_seen(const uint8_t[::1] seen, int64_t end):
    """(records of requests, of which posted ok) in one data center's history."""
    cdef int64_t i, present = 0, ok = 0
    if end > seen.shape[0]:
        raise ValueError("end beyond seen")
    with nogil:
        for i in range(end):
            if seen[i] != 0:
                present += 1
                if seen[i] == TR_OK + 1:
                    ok += 1
    return (present, ok)


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


def check_accounts(const unsigned char[::1] accounts, const int64_t[::1] meta,
                   const unsigned char[::1] products):
    """Jepsen's bank invariants over one data center's account table.

    Returns a dict: the totals of debits and credits posted (equal when money
    is conserved), accounts below their product's floor although they may not
    go negative, Class III balances above the cap, and limit counters of the
    current day/year above their product's caps.
    """
    cdef int64_t count = meta[META_ACCOUNT_COUNT]
    cdef int64_t day = meta[META_LAST_DAY]
    cdef int64_t year = year_of_day(day) if day > 0 else 0
    cdef int64_t product_count = products.shape[0] // PRODUCT_SIZE
    cdef const Account *a
    cdef const Product *p
    cdef int64_t i, balance
    cdef uint64_t debits_lo = 0, credits_lo = 0, debits_hi = 0, credits_hi = 0, before
    cdef int64_t below_floor = 0, above_balance_cap = 0, over_daily = 0, over_yearly = 0
    cdef int64_t negative_counters = 0
    if accounts.shape[0] < count * ACCOUNT_SIZE:
        raise ValueError("account table smaller than its count")
    with nogil:
        for i in range(count):
            a = <const Account *>&accounts[i * ACCOUNT_SIZE]
            before = debits_lo
            debits_lo += <uint64_t>a.debits_posted
            if debits_lo < before:
                debits_hi += 1
            before = credits_lo
            credits_lo += <uint64_t>a.credits_posted
            if credits_lo < before:
                credits_hi += 1
            if a.product >= product_count:
                continue
            p = <const Product *>&products[a.product * PRODUCT_SIZE]
            balance = a.credits_posted - a.debits_posted
            if (a.flags & ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS
                    and balance < p.balance_floor_minor):
                below_floor += 1
            if p.balance_cap_minor != 0 and balance > p.balance_cap_minor:
                above_balance_cap += 1
            if a.kind != KIND_CLASS_II and a.kind != KIND_CLASS_III:
                continue
            if (a.counters.inflow_daily < 0 or a.counters.outflow_daily < 0
                    or a.counters.inflow_yearly < 0 or a.counters.outflow_yearly < 0):
                negative_counters += 1
            if a.counters_day == day:
                if (a.counters.outflow_daily > p.outflow_daily_minor
                        or a.counters.inflow_daily > p.inflow_daily_minor):
                    over_daily += 1
            if a.counters_day > 0 and year_of_day(a.counters_day) == year:
                if (a.counters.outflow_yearly > p.outflow_yearly_minor
                        or a.counters.inflow_yearly > p.inflow_yearly_minor):
                    over_yearly += 1
    return {
        "accounts": count,
        "debits_posted": (<object>debits_hi << 64) | debits_lo,
        "credits_posted": (<object>credits_hi << 64) | credits_lo,
        "below_floor": below_floor,
        "above_balance_cap": above_balance_cap,
        "over_daily_limit": over_daily,
        "over_yearly_limit": over_yearly,
        "negative_counters": negative_counters,
    }


def check_sample_limits(const int64_t[::1] sample_totals, int64_t sample_stride,
                        const unsigned char[::1] accounts, const int64_t[::1] meta,
                        const unsigned char[::1] products, const unsigned char[::1] channels):
    """Recheck daily limits from the checker's own sums (see scan_log), for the sample
    of accounts, against the product and channel caps. Returns (sampled accounts
    with traffic today, over product daily caps, over channel daily caps)."""
    cdef int64_t day = meta[META_LAST_DAY]
    cdef int64_t count = meta[META_ACCOUNT_COUNT]
    cdef int64_t product_count = products.shape[0] // PRODUCT_SIZE
    cdef int64_t sample_count = sample_totals.shape[0] // 9
    cdef int64_t i, slot, c, active = 0, over_product = 0, over_channel = 0
    cdef const int64_t *totals
    cdef const Account *a
    cdef const Product *p
    cdef const ChannelRule *rule
    if channels.shape[0] < CHANNEL_COUNT * CHANNEL_SIZE:
        raise ValueError("channel table too small")
    with nogil:
        for i in range(sample_count):
            slot = i * sample_stride
            if slot >= count:
                break
            totals = &sample_totals[i * 9]
            if totals[0] != day:
                continue
            active += 1
            a = <const Account *>&accounts[slot * ACCOUNT_SIZE]
            if a.product < product_count:
                p = <const Product *>&products[a.product * PRODUCT_SIZE]
                if ((p.outflow_daily_minor != 0 and totals[1] > p.outflow_daily_minor)
                        or (p.inflow_daily_minor != 0 and totals[2] > p.inflow_daily_minor)):
                    over_product += 1
            for c in range(1, 7):
                rule = <const ChannelRule *>&channels[c * CHANNEL_SIZE]
                if rule.daily_cap_minor != 0 and totals[2 + c] > rule.daily_cap_minor:
                    over_channel += 1
    return (active, over_product, over_channel)


def check_channel_counters(const unsigned char[::1] channel_counters,
                           const unsigned char[::1] channels, int64_t day):
    """Today's per-account channel counters above their channel's daily cap (must be 0)."""
    cdef int64_t n = channel_counters.shape[0] // CHANNEL_ENTRY_SIZE
    cdef const ChannelEntry *entries = <const ChannelEntry *>&channel_counters[0]
    cdef const ChannelRule *rule
    cdef int64_t i, live = 0, over = 0
    cdef int channel
    if channels.shape[0] < CHANNEL_COUNT * CHANNEL_SIZE:
        raise ValueError("channel table too small")
    with nogil:
        for i in range(n):
            if entries[i].key_day == 0 or <int64_t>(entries[i].key_day & 0xFFFF) != day:
                continue
            if (entries[i].key_day >> 56) != SPACE_CHANNEL_DEBIT:
                continue  # credit, customer and strong-authentication counters
            live += 1
            channel = <int>((entries[i].key_day >> 16) & 0xFF)
            rule = <const ChannelRule *>&channels[channel * CHANNEL_SIZE]
            if rule.daily_cap_minor != 0 and entries[i].used > rule.daily_cap_minor:
                over += 1
    return (live, over)


def pack_channel_entries(const unsigned char[::1] channel_counters, int64_t day, int64_t first,
                         int64_t end, unsigned char[::1] out):
    """Today's non-zero channel counters in [first, end) of the table, packed as
    (key_day u64, used i64) in table order into `out`; returns the bytes written.
    Replicas that applied the same entries have the same table, entry for entry."""
    cdef const ChannelEntry *entries = <const ChannelEntry *>&channel_counters[0]
    cdef int64_t n = channel_counters.shape[0] // CHANNEL_ENTRY_SIZE
    cdef int64_t i, written = 0
    if end > n:
        end = n
    if out.shape[0] < (end - first) * 16:
        raise ValueError("out too small")
    with nogil:
        for i in range(first, end):
            if (entries[i].key_day != 0 and <int64_t>(entries[i].key_day & 0xFFFF) == day
                    and entries[i].used != 0):
                memcpy(&out[written], &entries[i], 16)
                written += 16
    return written


def merge_seen(uint8_t[::1] dst, const uint8_t[::1] src):
    """dst = src (a resynced data center takes over its source's history)."""
    if dst.shape[0] != src.shape[0]:
        raise ValueError("size mismatch")
    if dst.shape[0] > 0:
        memcpy(&dst[0], &src[0], dst.shape[0])
    return dst.shape[0]


def all_zero(const unsigned char[::1] data, int64_t start, int64_t end):
    """Whether data[start:end] holds only zero bytes (untouched pages stay unbacked)."""
    cdef int64_t i
    cdef bint zero = True
    if start < 0 or end > data.shape[0] or start > end:
        raise ValueError("range out of bounds")
    with nogil:
        i = start
        while i + 8 <= end and (i & 7) == 0:
            if (<const uint64_t *>&data[i])[0] != 0:
                zero = False
                break
            i += 8
        if zero:
            while i < end:
                if data[i] != 0:
                    zero = False
                    break
                i += 1
    return zero
