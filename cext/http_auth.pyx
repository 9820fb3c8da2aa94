# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
"""The signature check of every signed request in C: string to sign, body hash, HMAC.

`verify_request` is, by construction and by differential test
(tests/property/test_http_fast.py), exactly

    signing.verify(secret, signing.string_to_sign(channel, key_id, method, path,
        query, timestamp, nonce, idempotency_key, actor, sha256(body).hexdigest()), claimed)

but builds the string to sign in one stack buffer, hashes the body with OpenSSL's SHA-256
(the libcrypto hashlib uses, so SHA-NI where the CPU has it) and signs with
HMAC (RFC 2104) from the SHA-256 states after the secret's inner and outer
pads, computed once per secret: no Python object on the way but the
decoded claim. Parts are str as in Python and are UTF-8 encoded as
Python would: an all-ASCII str (every part of a well-formed request) is
copied as is, any other goes through str.encode(), so a part that Python
cannot encode raises the same UnicodeEncodeError. The claimed signature is
decoded by binascii exactly as in Python and compared in constant time.

libcrypto is linked by its soname (setup.py): the prototypes below are those
of OpenSSL 3, so no development headers are needed to build.
"""

import binascii

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.string cimport memcpy

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    void *PyUnicode_DATA(object)

cdef extern from *:
    """
    /* OpenSSL 3's low-level SHA-256 (sha.h; the one-shot SHA256() and HMAC() look the
       algorithm up by name on every call, which costs more than hashing a request). */
    typedef struct SHA256state_st {
        unsigned int h[8];
        unsigned int Nl, Nh;
        unsigned int data[16];
        unsigned int num, md_len;
    } SHA256_CTX;
    extern int SHA256_Init(SHA256_CTX *c);
    extern int SHA256_Update(SHA256_CTX *c, const void *data, size_t len);
    extern int SHA256_Final(unsigned char *md, SHA256_CTX *c);
    extern int CRYPTO_memcmp(const void *a, const void *b, size_t len);
    """
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX *c)
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t length)
    int SHA256_Final(unsigned char *md, SHA256_CTX *c)
    int CRYPTO_memcmp(const void *a, const void *b, size_t length)


cdef struct Keyed:
    SHA256_CTX inner  # the state after hashing key XOR ipad (RFC 2104)
    SHA256_CTX outer  # the state after hashing key XOR opad


cdef dict _KEYED = {}  # secret -> bytes holding its Keyed states
DEF KEYED_MAX = 64


cdef bytes _keyed(bytes secret):
    cdef unsigned char block[64]
    cdef unsigned char pad[64]
    cdef Keyed keyed
    cdef SHA256_CTX hashed
    cdef Py_ssize_t size = PyBytes_GET_SIZE(secret)
    cdef int i
    for i in range(64):
        block[i] = 0
    if size > 64:  # a key longer than the block is hashed first
        SHA256_Init(&hashed)
        SHA256_Update(&hashed, PyBytes_AS_STRING(secret), size)
        SHA256_Final(block, &hashed)
    else:
        memcpy(block, PyBytes_AS_STRING(secret), size)
    for i in range(64):
        pad[i] = block[i] ^ 0x36
    SHA256_Init(&keyed.inner)
    SHA256_Update(&keyed.inner, pad, 64)
    for i in range(64):
        pad[i] = block[i] ^ 0x5C
    SHA256_Init(&keyed.outer)
    SHA256_Update(&keyed.outer, pad, 64)
    state = (<char *>&keyed)[:sizeof(Keyed)]
    if len(_KEYED) >= KEYED_MAX:
        _KEYED.clear()
    _KEYED[secret] = state
    return state


DEF BUFFER_SIZE = 4096  # a string to sign longer than this takes the heap path (rare)

cdef bytes SCHEME = b"TALLY-HMAC-SHA256\n"
cdef const char *HEX = b"0123456789abcdef"
_a2b_base64 = binascii.a2b_base64
_Error = binascii.Error


cdef inline Py_ssize_t _part_size(object part) except -1:
    if PyUnicode_IS_ASCII(part):
        return PyUnicode_GET_LENGTH(part)
    return PyBytes_GET_SIZE(part.encode())


cdef inline Py_ssize_t _put(char *out, Py_ssize_t at, object part) except -1:
    cdef bytes encoded
    cdef Py_ssize_t size
    if PyUnicode_IS_ASCII(part):
        size = PyUnicode_GET_LENGTH(part)
        memcpy(out + at, PyUnicode_DATA(part), size)
    else:
        encoded = part.encode()
        size = PyBytes_GET_SIZE(encoded)
        memcpy(out + at, PyBytes_AS_STRING(encoded), size)
    out[at + size] = b"\n"
    return at + size + 1


def verify_request(
    bytes secret,
    str channel,
    str key_id,
    str method,
    str path,
    str query,
    str timestamp,
    str nonce,
    str idempotency_key,
    str actor,
    bytes body,
    str claimed,
):
    """True if `claimed` is the request's signature (see the module's docstring)."""
    cdef tuple parts = (
        channel, key_id, method, path, query, timestamp, nonce, idempotency_key, actor
    )
    cdef Py_ssize_t size = PyBytes_GET_SIZE(SCHEME) + 64 + 1
    cdef object part
    for part in parts:
        size += _part_size(part) + 1
    cdef char stack[BUFFER_SIZE]
    cdef bytearray heap
    cdef char *message = stack
    if size > BUFFER_SIZE:
        heap = bytearray(size)
        message = heap
    cdef Py_ssize_t at = PyBytes_GET_SIZE(SCHEME)
    memcpy(message, PyBytes_AS_STRING(SCHEME), at)
    for part in parts:
        at = _put(message, at, part)
    cdef unsigned char digest[32]
    cdef SHA256_CTX context
    SHA256_Init(&context)
    SHA256_Update(&context, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
    SHA256_Final(digest, &context)
    cdef int i
    for i in range(32):
        message[at + 2 * i] = HEX[digest[i] >> 4]
        message[at + 2 * i + 1] = HEX[digest[i] & 15]
    at += 64
    message[at] = b"\n"
    at += 1
    state = _KEYED.get(secret)
    if state is None:
        state = _keyed(secret)
    cdef const Keyed *keyed = <const Keyed *>PyBytes_AS_STRING(state)
    cdef unsigned char expected[32]
    memcpy(&context, &keyed.inner, sizeof(SHA256_CTX))
    SHA256_Update(&context, message, at)
    SHA256_Final(expected, &context)
    memcpy(&context, &keyed.outer, sizeof(SHA256_CTX))
    SHA256_Update(&context, expected, 32)
    SHA256_Final(expected, &context)
    cdef bytes raw
    try:
        raw = _a2b_base64(claimed.encode("ascii"), strict_mode=True)
    except (_Error, UnicodeEncodeError):
        return False
    if PyBytes_GET_SIZE(raw) != 32:
        return False
    return CRYPTO_memcmp(expected, PyBytes_AS_STRING(raw), 32) == 0


def sha256(bytes data):
    """SHA-256 of `data` by the same OpenSSL calls (tests hold it equal to hashlib's)."""
    cdef unsigned char digest[32]
    cdef SHA256_CTX context
    SHA256_Init(&context)
    SHA256_Update(&context, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    SHA256_Final(digest, &context)
    return (<char *>digest)[:32]
