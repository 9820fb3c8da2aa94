# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Deterministic record generators for benchmarks and the simulator.

Every record is a pure function of (seed, index): the same seed gives the
same bytes on every machine, and a "retry" of transfer k is simply transfer
k's record generated again. No I/O, no global state; fills caller buffers
with the GIL released. Plain-Python twin for spot checks: ledger/generate.py.
"""

from libc.math cimport cos, exp, log, sqrt
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

from cext.ledger_kernel cimport ACCOUNT_SIZE, TRANSFER_SIZE, AccountInput, Transfer

cdef double TWO_PI = 6.283185307179586
cdef uint64_t ACCOUNT_ID_HI = 0x0001
cdef uint64_t TRANSFER_ID_HI = 0x7A11

cdef enum:
    DISTRIBUTION_UNIFORM = 0
    DISTRIBUTION_ZIPF = 1
    RETRY_WINDOW = 100000


cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    """splitmix64's finalizer: a bijection on 64-bit integers."""
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline double unit(uint64_t bits) noexcept nogil:
    """A double in (0, 1) from 53 random bits."""
    return ((bits >> 11) + 0.5) * (1.0 / 9007199254740992.0)


cdef inline uint64_t account_id_lo(uint64_t seed, uint64_t index) noexcept nogil:
    return mix64(index ^ (seed * <uint64_t>0x9E3779B97F4A7C15))


def account_id(uint64_t seed, uint64_t index):
    """The 128-bit id of generated account `index`."""
    return (<object>ACCOUNT_ID_HI << 64) | account_id_lo(seed, index)


def transfer_id(uint64_t seed, uint64_t seq):
    """The 128-bit id of generated transfer `seq` (before retries are applied)."""
    return (<object>TRANSFER_ID_HI << 64) | mix64(seq ^ (seed * <uint64_t>0xD1B54A32D192ED03))


def fill_accounts(unsigned char[::1] out, uint64_t seed, uint64_t first_index, int kind, int flags,
                  int product, int ledger):
    """Fill `out` with account inputs for indexes first_index.. (no bound account)."""
    cdef int64_t count = out.shape[0] // ACCOUNT_SIZE
    cdef int64_t i
    cdef AccountInput *account
    if out.shape[0] % ACCOUNT_SIZE != 0:
        raise ValueError("out size must be a multiple of ACCOUNT_SIZE")
    if count == 0:
        return 0
    with nogil:
        memset(&out[0], 0, count * ACCOUNT_SIZE)
        for i in range(count):
            account = <AccountInput *>&out[i * ACCOUNT_SIZE]
            account.id_lo = account_id_lo(seed, first_index + <uint64_t>i)
            account.id_hi = ACCOUNT_ID_HI
            account.ledger = <uint16_t>ledger
            account.kind = <uint8_t>kind
            account.flags = <uint16_t>flags
            account.product = <uint16_t>product
    return count


cdef inline uint64_t pick_account(uint64_t bits, uint64_t account_count, int distribution,
                                  double log_count) noexcept nogil:
    cdef uint64_t rank
    if distribution == DISTRIBUTION_UNIFORM:
        return bits % account_count
    # Zipf-like, exponent 1: rank = floor(N^u) has P(rank = k) ~ 1/k. Ranks are
    # scattered over the table so hot accounts are not neighbours in memory.
    rank = <uint64_t>exp(unit(bits) * log_count) - 1
    if rank >= account_count:
        rank = account_count - 1
    return mix64(rank + <uint64_t>0x5DEECE66D) % account_count


def fill_transfers(
    unsigned char[::1] out, uint64_t seed, uint64_t first_seq, uint64_t account_seed,
    uint64_t account_count, int distribution, double retry_fraction, int code, int channel,
    int ledger, int64_t amount_median_minor, double amount_sigma,
):
    """Fill `out` with transfers seq first_seq.. between generated accounts.

    A fraction `retry_fraction` of the records are exact retries of one of the
    previous RETRY_WINDOW transfers (same id, same fields), as a client that
    lost the reply would send. Amounts are log-normal around the median.
    """
    cdef int64_t count = out.shape[0] // TRANSFER_SIZE
    cdef int64_t i
    cdef uint64_t seq, origin, bits, debit, credit, window
    cdef double log_count, z
    cdef int64_t amount
    cdef Transfer *t
    if out.shape[0] % TRANSFER_SIZE != 0:
        raise ValueError("out size must be a multiple of TRANSFER_SIZE")
    if account_count < 2:
        raise ValueError("need at least two accounts")
    if distribution != DISTRIBUTION_UNIFORM and distribution != DISTRIBUTION_ZIPF:
        raise ValueError("distribution must be 0 (uniform) or 1 (zipf)")
    if count == 0:
        return 0
    log_count = log(<double>account_count)
    with nogil:
        memset(&out[0], 0, count * TRANSFER_SIZE)
        for i in range(count):
            seq = first_seq + <uint64_t>i
            origin = seq
            # A retry repeats an earlier transfer; follow retries of retries to the original.
            while origin > 0:
                bits = mix64(origin ^ (seed + <uint64_t>0xA5A5))
                if unit(bits) >= retry_fraction:
                    break
                window = origin if origin < RETRY_WINDOW else RETRY_WINDOW
                origin = origin - 1 - (mix64(bits) % window)
            t = <Transfer *>&out[i * TRANSFER_SIZE]
            t.id_lo = mix64(origin ^ (seed * <uint64_t>0xD1B54A32D192ED03))
            t.id_hi = TRANSFER_ID_HI
            bits = mix64(origin + seed * <uint64_t>0x2545F4914F6CDD1D)
            debit = pick_account(bits, account_count, distribution, log_count)
            bits = mix64(bits)
            credit = pick_account(bits, account_count, distribution, log_count)
            if credit == debit:
                credit = (debit + 1) % account_count
            t.debit_account_id_lo = account_id_lo(account_seed, debit)
            t.debit_account_id_hi = ACCOUNT_ID_HI
            t.credit_account_id_lo = account_id_lo(account_seed, credit)
            t.credit_account_id_hi = ACCOUNT_ID_HI
            bits = mix64(bits)
            z = sqrt(-2.0 * log(unit(bits))) * cos(TWO_PI * unit(mix64(bits)))
            amount = <int64_t>(amount_median_minor * exp(amount_sigma * z))
            t.amount = amount if amount > 0 else 1
            t.ledger = <uint16_t>ledger
            t.code = <uint16_t>code
            t.channel = <uint8_t>channel
    return count


def fill_fundings(unsigned char[::1] out, uint64_t seed, uint64_t first_index, uint64_t account_seed,
                  uint64_t source_id_lo, uint64_t source_id_hi, int64_t amount_minor, int code,
                  int ledger):
    """Fill `out` with one transfer per account index first_index.. from a source account."""
    cdef int64_t count = out.shape[0] // TRANSFER_SIZE
    cdef int64_t i
    cdef Transfer *t
    if out.shape[0] % TRANSFER_SIZE != 0:
        raise ValueError("out size must be a multiple of TRANSFER_SIZE")
    if count == 0:
        return 0
    with nogil:
        memset(&out[0], 0, count * TRANSFER_SIZE)
        for i in range(count):
            t = <Transfer *>&out[i * TRANSFER_SIZE]
            t.id_lo = mix64((first_index + <uint64_t>i) ^ (seed * <uint64_t>0x632BE59BD9B4E019))
            t.id_hi = TRANSFER_ID_HI + 1
            t.debit_account_id_lo = source_id_lo
            t.debit_account_id_hi = source_id_hi
            t.credit_account_id_lo = account_id_lo(account_seed, first_index + <uint64_t>i)
            t.credit_account_id_hi = ACCOUNT_ID_HI
            t.amount = amount_minor
            t.ledger = <uint16_t>ledger
            t.code = <uint16_t>code
    return count
