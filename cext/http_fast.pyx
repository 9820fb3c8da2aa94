# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
"""The JSON batch route's per-item work in C: check, pack, derive ids, answer.

`POST /v1/transfers/batch` with a JSON body carries up to 8189 items; in
Python each costs a few microseconds to check and pack, another to derive
its transfer id (SHA-256) and another to render its result. This module
does the same work per item in C:

- `derive_ids_into` writes the 16-byte ids of items 0..count-1 (the first
  16 bytes of SHA-256 over `prefix + decimal(index)`; channels/bank.py,
  `derive_transfer_ids_packed`, is the reference) at offset 0 of each
  128-byte record.
- `pack_json_items` packs the usual item (exactly the four required fields,
  all well-formed) straight into the record; any other item goes to the
  caller's `slow(item, index)`, the Python checker, which raises the exact
  problem for a bad item or returns its eight fields. So the errors, their
  order and their wording are the Python ones by construction.
- `render_results` writes the `results` array of the JSON answer, byte for
  byte what orjson gives for the same list of dicts.

SHA-256 is FIPS 180-4, written out below (no library to link); tests check
it against hashlib.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from *:
    """
    typedef struct {
        uint32_t h[8]; uint64_t length; uint8_t block[64]; uint32_t used;
    } tally_sha256;

    static const uint32_t TALLY_K[64] = {
        0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
        0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
        0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
        0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
        0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
        0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
        0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
        0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};

    #define TALLY_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

    static void tally_sha256_block(tally_sha256 *s, const uint8_t *p) {
        uint32_t w[64], a, b, c, d, e, f, g, h, t1, t2;
        int i;
        for (i = 0; i < 16; i++)
            w[i] = ((uint32_t)p[4*i] << 24) | ((uint32_t)p[4*i+1] << 16)
                 | ((uint32_t)p[4*i+2] << 8) | (uint32_t)p[4*i+3];
        for (i = 16; i < 64; i++) {
            uint32_t s0 = TALLY_ROR(w[i-15], 7) ^ TALLY_ROR(w[i-15], 18) ^ (w[i-15] >> 3);
            uint32_t s1 = TALLY_ROR(w[i-2], 17) ^ TALLY_ROR(w[i-2], 19) ^ (w[i-2] >> 10);
            w[i] = w[i-16] + s0 + w[i-7] + s1;
        }
        a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3];
        e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
        for (i = 0; i < 64; i++) {
            t1 = h + (TALLY_ROR(e, 6) ^ TALLY_ROR(e, 11) ^ TALLY_ROR(e, 25))
                 + ((e & f) ^ (~e & g)) + TALLY_K[i] + w[i];
            t2 = (TALLY_ROR(a, 2) ^ TALLY_ROR(a, 13) ^ TALLY_ROR(a, 22))
                 + ((a & b) ^ (a & c) ^ (b & c));
            h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
        s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
    }

    static void tally_sha256_init(tally_sha256 *s) {
        static const uint32_t H0[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,
                                       0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
        memcpy(s->h, H0, sizeof H0);
        s->length = 0;
        s->used = 0;
    }

    static void tally_sha256_update(tally_sha256 *s, const uint8_t *p, size_t n) {
        s->length += n;
        while (n > 0) {
            size_t take = 64 - s->used;
            if (take > n) take = n;
            memcpy(s->block + s->used, p, take);
            s->used += (uint32_t)take; p += take; n -= take;
            if (s->used == 64) { tally_sha256_block(s, s->block); s->used = 0; }
        }
    }

    static void tally_sha256_final(tally_sha256 *s, uint8_t out[32]) {
        uint64_t bits = s->length * 8;
        uint8_t pad = 0x80, zero = 0, length[8];
        int i;
        tally_sha256_update(s, &pad, 1);
        while (s->used != 56) tally_sha256_update(s, &zero, 1);
        for (i = 0; i < 8; i++) length[i] = (uint8_t)(bits >> (56 - 8 * i));
        tally_sha256_update(s, length, 8);
        for (i = 0; i < 8; i++) {
            out[4*i] = (uint8_t)(s->h[i] >> 24); out[4*i+1] = (uint8_t)(s->h[i] >> 16);
            out[4*i+2] = (uint8_t)(s->h[i] >> 8); out[4*i+3] = (uint8_t)s->h[i];
        }
    }
    """
    ctypedef struct tally_sha256:
        pass
    void tally_sha256_init(tally_sha256 *s) nogil
    void tally_sha256_update(tally_sha256 *s, const uint8_t *p, size_t n) nogil
    void tally_sha256_final(tally_sha256 *s, uint8_t *out) nogil

cdef extern from *:
    """
    typedef unsigned __int128 tally_u128;
    """
    ctypedef unsigned long long tally_u128  # the C side is 128 bits wide

cdef enum:
    TRANSFER_SIZE_ = 128
    ACCOUNT_DIGITS_MAX = 38

cdef int64_t INT64_MAX_ = 0x7FFFFFFFFFFFFFFF

TRANSFER_SIZE = TRANSFER_SIZE_


def sha256(data: bytes) -> bytes:
    """SHA-256 of `data` (tests compare it with hashlib)."""
    cdef tally_sha256 state
    cdef uint8_t out[32]
    tally_sha256_init(&state)
    tally_sha256_update(&state, <const uint8_t *>PyBytes_AS_STRING(data), len(data))
    tally_sha256_final(&state, out)
    return PyBytes_FromStringAndSize(<char *>out, 32)


cdef inline Py_ssize_t write_decimal(uint8_t *out, uint64_t value) noexcept nogil:
    cdef uint8_t digits[24]
    cdef Py_ssize_t count = 0, index
    while True:
        digits[count] = <uint8_t>(48 + value % 10)
        count += 1
        value //= 10
        if value == 0:
            break
    for index in range(count):
        out[index] = digits[count - 1 - index]
    return count


def derive_ids_into(bytes prefix, Py_ssize_t count, uint8_t[::1] records) -> None:
    """Item i's id: SHA-256(prefix + decimal(i))[:16], written at byte 0 of record i."""
    if count < 0 or records.shape[0] < count * TRANSFER_SIZE_:
        raise ValueError(f"{count} records do not fit in {records.shape[0]} bytes")
    cdef tally_sha256 base, state
    cdef uint8_t digest[32]
    cdef uint8_t decimal[24]
    cdef Py_ssize_t index, size
    cdef const uint8_t *raw = <const uint8_t *>PyBytes_AS_STRING(prefix)
    cdef Py_ssize_t raw_size = len(prefix)
    with nogil:
        tally_sha256_init(&base)
        tally_sha256_update(&base, raw, raw_size)
        for index in range(count):
            state = base
            size = write_decimal(decimal, <uint64_t>index)
            tally_sha256_update(&state, decimal, size)
            tally_sha256_final(&state, digest)
            memcpy(&records[index * TRANSFER_SIZE_], digest, 16)


cdef inline bint parse_account(object text, tally_u128 *out):
    """The Python fast path's check: a str of 1-38 ASCII digits, not starting with 0."""
    if type(text) is not str:
        return False
    cdef str value = <str>text
    cdef Py_ssize_t size = len(value), index
    if size < 1 or size > ACCOUNT_DIGITS_MAX:
        return False
    cdef tally_u128 number = 0
    cdef uint32_t character
    for index in range(size):
        character = <uint32_t>(<Py_UCS4>value[index])
        if character < 48 or character > 57 or (index == 0 and character == 48):
            return False
        number = number * 10 + <tally_u128>(character - 48)
    out[0] = number
    return True


cdef inline void put_u16(uint8_t *p, uint16_t value) noexcept nogil:
    memcpy(p, &value, 2)


cdef inline void put_u32(uint8_t *p, uint32_t value) noexcept nogil:
    memcpy(p, &value, 4)


cdef inline void put_u64(uint8_t *p, uint64_t value) noexcept nogil:
    memcpy(p, &value, 8)


cdef inline void put_u128(uint8_t *p, tally_u128 value) noexcept nogil:
    put_u64(p, <uint64_t>value)
    put_u64(p + 8, <uint64_t>(value >> 64))


def pack_json_items(
    list items,
    uint8_t[::1] records,
    dict code_of_name,
    int channel,
    int ledger,
    slow,
) -> None:
    """Pack `items` into 128-byte records (ids untouched); `slow(item, index)` for the rest.

    The fields and their offsets are those of ledger.types.TRANSFER_STRUCT;
    the record must be zero before (only non-zero fields are written).
    """
    cdef Py_ssize_t count = len(items), index
    if records.shape[0] < count * TRANSFER_SIZE_:
        raise ValueError(f"{count} records do not fit in {records.shape[0]} bytes")
    if not 0 <= channel <= 255 or not 0 <= ledger <= 0xFFFF:
        raise ValueError("channel or ledger out of range")
    cdef object item, amount_object, code_object, fields
    cdef PyObject *found
    cdef tally_u128 debit = 0, credit = 0, pending = 0
    cdef int64_t amount = 0
    cdef uint64_t user_data = 0
    cdef uint32_t timeout_s = 0
    cdef uint16_t code = 0, flags = 0
    cdef uint8_t *record
    cdef bint fast
    for index in range(count):
        item = items[index]
        fast = False
        if type(item) is dict and len(<dict>item) == 4:
            found = PyDict_GetItem(<dict>item, "amount_minor")
            amount_object = <object>found if found is not NULL else None
            found = PyDict_GetItem(<dict>item, "code")
            code_object = None
            if found is not NULL and type(<object>found) is str:
                found = PyDict_GetItem(code_of_name, <object>found)
                if found is not NULL:
                    code_object = <object>found
            if (
                type(amount_object) is int
                and code_object is not None
                and 0 <= amount_object <= INT64_MAX_
                and parse_account((<dict>item).get("debit_account_id"), &debit)
                and parse_account((<dict>item).get("credit_account_id"), &credit)
            ):
                amount = amount_object
                code = code_object
                flags = 0
                pending = 0
                timeout_s = 0
                user_data = 0
                fast = True
        if not fast:
            fields = slow(item, index)
            debit = parse_u128(fields[0])
            credit = parse_u128(fields[1])
            amount = fields[2]
            code = fields[3]
            flags = fields[4]
            pending = parse_u128(fields[5])
            timeout_s = fields[6]
            user_data = fields[7]
        record = &records[index * TRANSFER_SIZE_]
        put_u128(record + 16, debit)
        put_u128(record + 32, credit)
        put_u128(record + 48, pending)
        put_u64(record + 64, <uint64_t>amount)
        put_u32(record + 80, timeout_s)
        put_u16(record + 84, <uint16_t>ledger)
        put_u16(record + 86, code)
        put_u16(record + 88, flags)
        record[90] = <uint8_t>channel
        put_u64(record + 104, user_data)


cdef tally_u128 parse_u128(object number) except? 0:
    if not 0 <= number < (1 << 128):
        raise ValueError(f"{number} is not a u128")
    cdef uint64_t low = number & 0xFFFFFFFFFFFFFFFF
    cdef uint64_t high = number >> 64
    return (<tally_u128>high << 64) | low


cdef const char *HEX_DIGITS = b"0123456789abcdef"


def render_results(
    const uint8_t[::1] records,
    const uint8_t[::1] codes,
    const uint64_t[::1] timestamps,
    list names,
) -> bytes:
    """The JSON array of per-item results, as orjson renders the same list of dicts:

        [{"transfer_id":"<32 hex>","code":N,"result":"<name>","timestamp_ns":T},...]

    The id is the record's 16 little-endian bytes written big-endian in hex;
    `names[code]` is the result's name (ASCII, no character JSON escapes).
    """
    cdef Py_ssize_t count = codes.shape[0], index, byte, size = 2
    if records.shape[0] < count * TRANSFER_SIZE_ or timestamps.shape[0] < count:
        raise ValueError("records, codes and timestamps disagree in length")
    cdef list encoded = []
    cdef bytes name
    cdef Py_ssize_t name_sizes[256]
    cdef const char *name_data[256]
    for index in range(256):
        name_sizes[index] = -1
    for index in range(min(len(names), 256)):
        if names[index] is not None:
            name = (<str>names[index]).encode("ascii")
            encoded.append(name)
            name_sizes[index] = len(name)
            name_data[index] = PyBytes_AS_STRING(name)
    for index in range(count):
        if name_sizes[codes[index]] < 0:
            raise ValueError(f"no name for result code {codes[index]}")
        # ,{"transfer_id":"<32>","code":<3>,"result":"<name>","timestamp_ns":<20>}
        size += 88 + 3 + name_sizes[codes[index]] + 20
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
    cdef uint8_t *start = p
    cdef const uint8_t *record
    cdef uint8_t value
    with nogil:
        p[0] = 91  # [
        p += 1
        for index in range(count):
            if index:
                p[0] = 44  # ,
                p += 1
            memcpy(p, b'{"transfer_id":"', 16)
            p += 16
            record = &records[index * TRANSFER_SIZE_]
            for byte in range(15, -1, -1):
                value = record[byte]
                p[0] = HEX_DIGITS[value >> 4]
                p[1] = HEX_DIGITS[value & 15]
                p += 2
            memcpy(p, b'","code":', 9)
            p += 9
            p += write_decimal(p, codes[index])
            memcpy(p, b',"result":"', 11)
            p += 11
            memcpy(p, name_data[codes[index]], name_sizes[codes[index]])
            p += name_sizes[codes[index]]
            memcpy(p, b'","timestamp_ns":', 17)
            p += 17
            p += write_decimal(p, timestamps[index])
            p[0] = 125  # }
            p += 1
        p[0] = 93  # ]
        p += 1
    return out[: p - start]


def stamp_binary_records(uint8_t[::1] records, int channel) -> Py_ssize_t:
    """Check that no record names its id (bytes 0-15) or channel (byte 90), then write
    the channel into each; returns the index of the first record that does, or -1."""
    cdef Py_ssize_t count = records.shape[0] // TRANSFER_SIZE_, index, byte
    cdef uint8_t *record
    if records.shape[0] % TRANSFER_SIZE_ or not 0 <= channel <= 255:
        raise ValueError("whole 128-byte records and a channel 0-255 expected")
    cdef Py_ssize_t bad = -1
    with nogil:
        for index in range(count):
            record = &records[index * TRANSFER_SIZE_]
            if record[90]:
                bad = index
                break
            for byte in range(16):
                if record[byte]:
                    bad = index
                    break
            if bad >= 0:
                break
        if bad < 0:
            for index in range(count):
                records[index * TRANSFER_SIZE_ + 90] = <uint8_t>channel
    return bad
