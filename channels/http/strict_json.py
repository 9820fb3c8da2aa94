"""Strict JSON bodies: a key repeated within one object is refused (400), not resolved.

orjson, like most parsers, keeps the last value of a repeated key; a gateway,
a WAF or an audit log that reads the first would see another request than
the ledger posts. `repeated_key(body, parsed)` is run on every JSON body after
orjson accepted it: a fast proof that no key repeats (cext/json_keys.pyx, two
counts compared; about 0.1 us for a single transfer's body), and only when
that proof fails the exact check (`json.loads` with an `object_pairs_hook`),
which also names the key.

The kernel is used unless TALLY_KERNEL=reference asks for the plain-Python
twins below (chosen explicitly, never as a fallback on a missing build).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

may_repeat_keys: Callable[[bytes, Any], bool]


def loose_candidates_reference(text: bytes) -> int:
    """Quotes followed by ':' or a byte <= 0x20: at least the member names written."""
    count = 0
    index = text.find(b'"')
    while 0 <= index < len(text) - 1:
        following = text[index + 1]
        if following == 0x3A or following <= 0x20:  # ':' or whitespace
            count += 1
        index = text.find(b'"', index + 1)
    return count


def candidates_reference(text: bytes) -> int:
    """Quotes followed by optional whitespace and ':': at least the member names written."""
    count = 0
    index = text.find(b'"')
    while index >= 0:
        after = index + 1
        while after < len(text) and text[after] <= 0x20:
            after += 1
        if after < len(text) and text[after] == 0x3A:
            count += 1
        index = text.find(b'"', index + 1)
    return count


def member_count_reference(value: Any, depth: int = 0) -> int:
    """Entries of the dicts of the parsed JSON `value` at depths 0-2 (values at 2 unseen)."""
    total = 0
    if type(value) is dict:
        total = len(value)
        if depth < 2:
            for item in value.values():
                if type(item) is dict or type(item) is list:
                    total += member_count_reference(item, depth + 1)
    elif type(value) is list and depth < 2:
        for item in value:
            if type(item) is dict:
                total += len(item)
            elif type(item) is list:
                total += member_count_reference(item, depth + 1)
    return total


def may_repeat_keys_reference(text: bytes, value: Any) -> bool:
    members = member_count_reference(value)
    if loose_candidates_reference(text) == members:
        return False
    return candidates_reference(text) != members


if os.environ.get("TALLY_KERNEL", "kernel") != "reference":
    from cext.json_keys import may_repeat_keys
else:
    may_repeat_keys = may_repeat_keys_reference


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Repeated(key)
        seen[key] = value
    return seen


def first_repeated_key(body: bytes) -> str | None:
    """The first key that some object of `body` (valid JSON) repeats, or None: exact."""
    try:
        json.loads(body, object_pairs_hook=_refuse_repeats)
    except _Repeated as repeated:
        return repeated.key
    return None


def repeated_key(body: bytes, parsed: Any) -> str | None:
    """The key repeated within one object of `body` (orjson's `parsed` of it), or None."""
    if not may_repeat_keys(body, parsed):
        return None
    return first_repeated_key(body)
