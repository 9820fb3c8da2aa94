# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
"""Whether a JSON body may repeat a key within one object: counts compared.

orjson keeps the last value of a repeated key, silently; a gateway or an
audit that reads the first sees another amount. Every JSON body is checked
after orjson has accepted it (so the text is valid JSON) by comparing

- `loose_candidates(text)`: the '"' followed by ':' or by a byte <= 0x20
  (in valid JSON every such byte is whitespace: control characters inside
  strings must be escaped). Each member name ends with a quote followed by
  optional whitespace and ':', a distinct quote per name, so this is at least
  the number of names written; escaped quotes, strings starting with ':' and
  string values followed by whitespace only add to it;
- `member_count(value)`: the entries of the dicts in the parsed value (the
  distinct names per object), counted for the dicts at depth 0 to 2: the top
  object, its values, and their values or items (a batch's transfers, an
  account opening's bound card). Deeper dicts are not counted, which can only
  lower the count.

Names written >= candidates is always true and members <= distinct names <=
names written, so equal counts prove that no object repeats a name. If they
differ, `candidates(text)` counts exactly the quotes followed by optional
whitespace and ':' (for pretty-printed JSON) and is compared again; only if
that differs too is the answer "maybe", and the caller runs the exact check
(channels/http/strict_json.py: `json.loads` with an `object_pairs_hook`).

The text pass is SSE2 (16 bytes a step: about 0.1 ns a byte, 90 us for a
900 KB batch of 8189 transfers); the walk visits each dict once without
iterating the values of those at depth 2 (about 2 ns a transfer).
channels/http/strict_json.py holds the plain-Python twins.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE


cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    static Py_ssize_t tally_loose_candidates(const unsigned char *text, Py_ssize_t size) {
        Py_ssize_t count = 0, index = 0;
    #if defined(__SSE2__)
        const __m128i quote = _mm_set1_epi8('"');
        const __m128i colon = _mm_set1_epi8(':');
        const __m128i space = _mm_set1_epi8(' ');
        for (; index + 17 <= size; index += 16) {
            __m128i here = _mm_loadu_si128((const __m128i *)(text + index));
            __m128i next = _mm_loadu_si128((const __m128i *)(text + index + 1));
            __m128i after = _mm_or_si128(
                _mm_cmpeq_epi8(next, colon),
                _mm_cmpeq_epi8(_mm_min_epu8(next, space), next));  /* next <= 0x20 */
            count += __builtin_popcount(
                _mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(here, quote), after)));
        }
    #endif
        for (; index + 1 < size; index++) {
            unsigned char next = text[index + 1];
            count += (text[index] == '"') & ((next == ':') | (next <= ' '));
        }
        return count;
    }

    static Py_ssize_t tally_candidates(const unsigned char *text, Py_ssize_t size) {
        Py_ssize_t count = 0, index, after;
        for (index = 0; index + 1 < size; index++) {
            if (text[index] == '"') {
                after = index + 1;
                while (after < size && text[after] <= ' ') {
                    after++;
                }
                count += after < size && text[after] == ':';
            }
        }
        return count;
    }

    /* Entries of the dicts in `value` at depth `depth` and below, down to depth 2 (whose
       values are not looked at). Dicts and lists are the only containers in parsed JSON. */
    static Py_ssize_t tally_member_count(PyObject *value, int depth) {
        Py_ssize_t total = 0, index, count;
        PyObject *key, *item;
        if (PyDict_CheckExact(value)) {
            total = PyDict_GET_SIZE(value);
            if (depth < 2) {
                index = 0;
                while (PyDict_Next(value, &index, &key, &item)) {
                    if (PyDict_CheckExact(item) || PyList_CheckExact(item)) {
                        total += tally_member_count(item, depth + 1);
                    }
                }
            }
        } else if (PyList_CheckExact(value) && depth < 2) {
            count = PyList_GET_SIZE(value);
            for (index = 0; index < count; index++) {
                item = PyList_GET_ITEM(value, index);
                if (PyDict_CheckExact(item)) {
                    total += PyDict_GET_SIZE(item);
                } else if (PyList_CheckExact(item)) {
                    total += tally_member_count(item, depth + 1);
                }
            }
        }
        return total;
    }
    """
    Py_ssize_t tally_loose_candidates(const unsigned char *text, Py_ssize_t size) nogil
    Py_ssize_t tally_candidates(const unsigned char *text, Py_ssize_t size) nogil
    Py_ssize_t tally_member_count(object value, int depth)


def loose_candidates(bytes text) -> int:
    """Quotes followed by ':' or a byte <= 0x20: at least the member names written."""
    return tally_loose_candidates(
        <const unsigned char *>PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text)
    )


def candidates(bytes text) -> int:
    """Quotes followed by optional whitespace and ':': at least the member names written."""
    return tally_candidates(<const unsigned char *>PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))


def member_count(value) -> int:
    """Entries of the dicts of the parsed JSON `value` at depths 0-2, summed."""
    return tally_member_count(value, 0)


def may_repeat_keys(bytes text, value) -> bool:
    """False when `value` (orjson's parse of the valid JSON `text`) proves that no object
    repeats a key; True when the exact check must decide."""
    cdef const unsigned char *raw = <const unsigned char *>PyBytes_AS_STRING(text)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(text)
    cdef Py_ssize_t members = tally_member_count(value, 0)
    if tally_loose_candidates(raw, size) == members:
        return False
    return tally_candidates(raw, size) != members
