# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
"""The JSON batch route's per-item work in C: check, pack, derive ids, answer.

`POST /v1/transfers/batch` with a JSON body carries up to 8189 items; in
Python each costs a few microseconds to check and pack, another to derive
its transfer id (keyed BLAKE2b) and another to render its result. This module
does the same work per item in C:

- `derive_ids_into` writes the 16-byte ids of items 0..count-1 (BLAKE2b with
  a 16-byte digest, keyed by the server's transfer-id key, over
  `prefix + decimal(index)`; `core.services.records.TransferIds.packed_many`
  is the reference) at offset 0 of each 128-byte record.
- `pack_json_items` packs the usual item (exactly the four required fields,
  all well-formed) straight into the record; any other item goes to the
  caller's `slow(item, index)`, the Python checker, which raises the exact
  problem for a bad item or returns its eight fields. So the errors, their
  order and their wording are the Python ones by construction.
- `render_results` writes the `results` array of the JSON answer, byte for
  byte what orjson gives for the same list of dicts.

BLAKE2b is RFC 7693, written out below (no library to link); tests check
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
        uint64_t h[8]; uint64_t t[2]; uint8_t b[128]; size_t c; size_t outlen;
    } tally_blake2b;

    static const uint64_t TALLY_B2B_IV[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
        0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
        0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

    static const uint8_t TALLY_B2B_SIGMA[12][16] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
        {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
        {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
        {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
        {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
        {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
        {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
        {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
        {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

    #define TALLY_ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
    #define TALLY_B2B_G(a, b, c, d, x, y) do { \
        v[a] = v[a] + v[b] + (x); v[d] = TALLY_ROTR64(v[d] ^ v[a], 32); \
        v[c] = v[c] + v[d];       v[b] = TALLY_ROTR64(v[b] ^ v[c], 24); \
        v[a] = v[a] + v[b] + (y); v[d] = TALLY_ROTR64(v[d] ^ v[a], 16); \
        v[c] = v[c] + v[d];       v[b] = TALLY_ROTR64(v[b] ^ v[c], 63); } while (0)

    static void tally_blake2b_compress(tally_blake2b *s, int last) {
        uint64_t v[16], m[16];
        int i, j;
        for (i = 0; i < 8; i++) { v[i] = s->h[i]; v[i + 8] = TALLY_B2B_IV[i]; }
        v[12] ^= s->t[0];
        v[13] ^= s->t[1];
        if (last) v[14] = ~v[14];
        for (i = 0; i < 16; i++) {
            m[i] = 0;
            for (j = 7; j >= 0; j--) m[i] = (m[i] << 8) | s->b[8 * i + j];
        }
        for (i = 0; i < 12; i++) {
            const uint8_t *z = TALLY_B2B_SIGMA[i];
            TALLY_B2B_G(0, 4, 8, 12, m[z[0]], m[z[1]]);
            TALLY_B2B_G(1, 5, 9, 13, m[z[2]], m[z[3]]);
            TALLY_B2B_G(2, 6, 10, 14, m[z[4]], m[z[5]]);
            TALLY_B2B_G(3, 7, 11, 15, m[z[6]], m[z[7]]);
            TALLY_B2B_G(0, 5, 10, 15, m[z[8]], m[z[9]]);
            TALLY_B2B_G(1, 6, 11, 12, m[z[10]], m[z[11]]);
            TALLY_B2B_G(2, 7, 8, 13, m[z[12]], m[z[13]]);
            TALLY_B2B_G(3, 4, 9, 14, m[z[14]], m[z[15]]);
        }
        for (i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
    }

    static void tally_blake2b_update(tally_blake2b *s, const uint8_t *p, size_t n) {
        while (n > 0) {
            size_t take;
            if (s->c == 128) {
                s->t[0] += 128;
                if (s->t[0] < 128) s->t[1]++;
                tally_blake2b_compress(s, 0);
                s->c = 0;
            }
            take = 128 - s->c;
            if (take > n) take = n;
            memcpy(s->b + s->c, p, take);
            s->c += take; p += take; n -= take;
        }
    }

    /* RFC 7693 init: digest of `outlen` bytes (1..64), key of `keylen` bytes (0..64) taking
       the whole first block; no salt or personalization (hashlib's defaults). */
    static void tally_blake2b_init(tally_blake2b *s, size_t outlen,
                                   const uint8_t *key, size_t keylen) {
        int i;
        for (i = 0; i < 8; i++) s->h[i] = TALLY_B2B_IV[i];
        s->h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ (uint64_t)outlen;
        s->t[0] = 0; s->t[1] = 0; s->c = 0; s->outlen = outlen;
        memset(s->b, 0, 128);
        if (keylen > 0) {
            tally_blake2b_update(s, key, keylen);
            s->c = 128;
        }
    }

    static void tally_blake2b_final(tally_blake2b *s, uint8_t *out) {
        size_t i;
        s->t[0] += s->c;
        if (s->t[0] < s->c) s->t[1]++;
        if (s->c < 128) memset(s->b + s->c, 0, 128 - s->c);
        tally_blake2b_compress(s, 1);
        for (i = 0; i < s->outlen; i++) out[i] = (uint8_t)(s->h[i >> 3] >> (8 * (i & 7)));
    }
    """
    ctypedef struct tally_blake2b:
        pass
    void tally_blake2b_init(tally_blake2b *s, size_t outlen, const uint8_t *key,
                            size_t keylen) nogil
    void tally_blake2b_update(tally_blake2b *s, const uint8_t *p, size_t n) nogil
    void tally_blake2b_final(tally_blake2b *s, uint8_t *out) nogil

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


def blake2b(bytes data, bytes key, Py_ssize_t digest_size) -> bytes:
    """Keyed BLAKE2b of `data` (tests compare it with hashlib's `blake2b(key=...)`)."""
    if not 1 <= digest_size <= 64 or len(key) > 64:
        raise ValueError("digest_size must be 1..64 and the key at most 64 bytes")
    cdef tally_blake2b state
    cdef uint8_t out[64]
    tally_blake2b_init(&state, digest_size, <const uint8_t *>PyBytes_AS_STRING(key), len(key))
    tally_blake2b_update(&state, <const uint8_t *>PyBytes_AS_STRING(data), len(data))
    tally_blake2b_final(&state, out)
    return PyBytes_FromStringAndSize(<char *>out, digest_size)


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


def derive_ids_into(
    bytes mac_key, bytes prefix, Py_ssize_t count, uint8_t[::1] records
) -> None:
    """Item i's id: BLAKE2b-128 keyed by `mac_key` over prefix + decimal(i), written at
    byte 0 of record i (`core.services.records.TransferIds` is the reference)."""
    if count < 0 or records.shape[0] < count * TRANSFER_SIZE_:
        raise ValueError(f"{count} records do not fit in {records.shape[0]} bytes")
    if not 1 <= len(mac_key) <= 64:
        raise ValueError("the key must be 1..64 bytes")
    cdef tally_blake2b base, state
    cdef uint8_t decimal[24]
    cdef Py_ssize_t index, size
    cdef const uint8_t *key = <const uint8_t *>PyBytes_AS_STRING(mac_key)
    cdef Py_ssize_t key_size = len(mac_key)
    cdef const uint8_t *raw = <const uint8_t *>PyBytes_AS_STRING(prefix)
    cdef Py_ssize_t raw_size = len(prefix)
    with nogil:
        tally_blake2b_init(&base, 16, key, key_size)
        tally_blake2b_update(&base, raw, raw_size)
        for index in range(count):
            state = base
            size = write_decimal(decimal, <uint64_t>index)
            tally_blake2b_update(&state, decimal, size)
            tally_blake2b_final(&state, &records[index * TRANSFER_SIZE_])


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
