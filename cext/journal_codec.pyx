# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
"""Journal record codec: CRC-32C and the fixed 64-byte record header. Pure functions, no I/O.

The journal (core/journal.py) frames every engine batch as a 64-byte
little-endian header followed by the opaque payload:

     0  u32 magic b"TLJ1"      4  u32 crc32c over bytes 8..63, then the payload
     8  u64 seq               16  u64 timestamp_first (engine ns)
    24  u32 payload_size      28  u16 kind      30 u16 business_day
    32  u32 count             36  u32 reserved (0)
    40  u64 epoch             48  u64 group_first_seq
    56  u64 reserved (0)

`group_first_seq` is the seq of the first record of the group written with
the same write and fdatasync: recovery uses it to tell a torn last group
(pages of one unacknowledged write persisted out of order) from damage to an
acknowledged record (see core/journal.py).

CRC-32C (Castagnoli, reflected, init and final xor 0xFFFFFFFF) runs on the
SSE4.2 `crc32` instruction eight bytes at a time; the build targets
x86-64-v2, which has it. `crc32c(b, crc32c(a)) == crc32c(a + b)`, so a
record's checksum is computed over its two parts without joining them.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "<nmmintrin.h>" nogil:
    uint32_t _mm_crc32_u8(uint32_t crc, uint8_t value)
    uint64_t _mm_crc32_u64(uint64_t crc, uint64_t value)

cdef enum:
    HEADER_SIZE_ = 64
    GIL_RELEASE_SIZE_MIN = 65536  # below this, releasing the GIL costs more than it frees

cdef uint32_t MAGIC_ = 0x314A4C54  # b"TLJ1" read as a little-endian u32

HEADER_SIZE = HEADER_SIZE_
MAGIC = b"TLJ1"


cdef packed struct Header:
    uint32_t magic
    uint32_t crc
    uint64_t seq
    uint64_t timestamp_first
    uint32_t payload_size
    uint16_t kind
    uint16_t business_day
    uint32_t count
    uint32_t reserved_a
    uint64_t epoch
    uint64_t group_first_seq
    uint64_t reserved_b


cdef uint32_t crc32c_run(uint32_t crc, const uint8_t *data, int64_t size) noexcept nogil:
    """The CRC register (not inverted) after `size` more bytes."""
    cdef uint64_t crc64 = crc
    cdef uint64_t word
    while size > 0 and (<size_t>data & 7) != 0:
        crc64 = _mm_crc32_u8(<uint32_t>crc64, data[0])
        data += 1
        size -= 1
    while size >= 8:
        memcpy(&word, data, 8)
        crc64 = _mm_crc32_u64(crc64, word)
        data += 8
        size -= 8
    while size > 0:
        crc64 = _mm_crc32_u8(<uint32_t>crc64, data[0])
        data += 1
        size -= 1
    return <uint32_t>crc64


def crc32c(const unsigned char[::1] data, uint32_t crc=0):
    """CRC-32C of `data`, continuing from `crc` (the CRC of what came before)."""
    cdef int64_t size = data.shape[0]
    cdef uint32_t register = ~crc
    cdef const uint8_t *start
    if size == 0:
        return crc
    start = &data[0]
    if size >= GIL_RELEASE_SIZE_MIN:
        with nogil:
            register = crc32c_run(register, start, size)
    else:
        register = crc32c_run(register, start, size)
    return ~register


def encode_header(unsigned char[::1] out, uint64_t seq, uint64_t timestamp_first,
                  uint32_t payload_size, uint16_t kind, uint16_t business_day, uint32_t count,
                  uint64_t epoch, uint64_t group_first_seq, const unsigned char[::1] payload):
    """Write a complete header (checksum included) for `payload` into the first 64 bytes of `out`.

    Returns the checksum. `payload` must be exactly `payload_size` bytes.
    """
    cdef Header *header
    cdef uint32_t register
    if out.shape[0] < HEADER_SIZE_:
        raise ValueError("out must hold 64 bytes")
    if payload.shape[0] != payload_size:
        raise ValueError(f"payload is {payload.shape[0]} bytes, header says {payload_size}")
    header = <Header *>&out[0]
    header.magic = MAGIC_
    header.crc = 0
    header.seq = seq
    header.timestamp_first = timestamp_first
    header.payload_size = payload_size
    header.kind = kind
    header.business_day = business_day
    header.count = count
    header.reserved_a = 0
    header.epoch = epoch
    header.group_first_seq = group_first_seq
    header.reserved_b = 0
    register = crc32c_run(0xFFFFFFFF, &out[8], HEADER_SIZE_ - 8)
    if payload_size >= GIL_RELEASE_SIZE_MIN:
        with nogil:
            register = crc32c_run(register, &payload[0], payload_size)
    elif payload_size > 0:
        register = crc32c_run(register, &payload[0], payload_size)
    header.crc = ~register
    return header.crc


def decode_header(const unsigned char[::1] data, int64_t offset):
    """The header fields at `offset` as a tuple, without judging them:

    (magic_ok, crc, seq, timestamp_first, payload_size, kind, business_day, count,
     reserved_a, epoch, group_first_seq, reserved_b)
    """
    cdef Header header
    if offset < 0 or offset + HEADER_SIZE_ > data.shape[0]:
        raise ValueError("header out of range")
    memcpy(&header, &data[offset], HEADER_SIZE_)
    return (header.magic == MAGIC_, header.crc, header.seq, header.timestamp_first,
            header.payload_size, header.kind, header.business_day, header.count,
            header.reserved_a, header.epoch, header.group_first_seq, header.reserved_b)


def record_crc(const unsigned char[::1] data, int64_t offset, int64_t payload_size):
    """CRC-32C over header bytes 8..63 and the payload of the record at `offset` in `data`."""
    cdef uint32_t register = 0xFFFFFFFF
    cdef const uint8_t *start
    if offset < 0 or payload_size < 0 or offset + HEADER_SIZE_ + payload_size > data.shape[0]:
        raise ValueError("record out of range")
    start = &data[offset]
    if payload_size >= GIL_RELEASE_SIZE_MIN:
        with nogil:
            register = crc32c_run(register, start + 8, HEADER_SIZE_ - 8 + payload_size)
    else:
        register = crc32c_run(register, start + 8, HEADER_SIZE_ - 8 + payload_size)
    return ~register


def first_nonzero(const unsigned char[::1] data, int64_t start=0):
    """Index of the first non-zero byte at or after `start`, or len(data) if there is none."""
    cdef int64_t size = data.shape[0]
    cdef int64_t i = start
    cdef const uint8_t *base
    cdef uint64_t word
    if start < 0:
        raise ValueError("start must be >= 0")
    if i >= size:
        return size
    base = &data[0]
    with nogil:
        while i < size and (<size_t>(base + i) & 7) != 0 and base[i] == 0:
            i += 1
        if i < size and base[i] == 0:
            while i + 8 <= size:
                memcpy(&word, base + i, 8)
                if word != 0:
                    break
                i += 8
            while i < size and base[i] == 0:
                i += 1
    return i


def last_nonzero_end(const unsigned char[::1] data, int64_t start=0):
    """One past the last non-zero byte at or after `start`, or `start` if all are zero."""
    cdef int64_t size = data.shape[0]
    cdef int64_t end = size
    cdef const uint8_t *base
    cdef uint64_t word
    if start < 0:
        raise ValueError("start must be >= 0")
    if start >= size:
        return start
    base = &data[0]
    with nogil:
        while end > start and (end & 7) != 0 and base[end - 1] == 0:
            end -= 1
        if end > start and base[end - 1] == 0:
            while end - 8 >= start:
                memcpy(&word, base + end - 8, 8)
                if word != 0:
                    break
                end -= 8
            while end > start and base[end - 1] == 0:
                end -= 1
    return end
