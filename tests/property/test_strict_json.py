"""The duplicate-key check (cext/json_keys.pyx and its twins in channels/http/strict_json.py)
against `json.loads(object_pairs_hook=...)` on generated JSON texts.

The texts are written out by hand from generated trees, so that they can repeat keys
(within one object, or only across objects), spell a key with JSON escapes, put
whitespace before and after colons, and carry quotes, colons and backslashes inside
strings: everything that could make counting quotes wrong.
"""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from cext import json_keys
from channels.http import strict_json


class Obj(list[tuple[str, Any]]):
    """A JSON object as written: its (key, value) pairs in order, repeats allowed."""


KEYS = st.text(alphabet='ab_:" \\\n\u00e9\u4e09', max_size=3)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.text(alphabet='x:" \\,{}[]\t', max_size=4),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(st.tuples(KEYS, children), max_size=5).map(Obj),
    ),
    max_leaves=20,
)


def write_string(text: str, rng: random.Random) -> str:
    out = ['"']
    for char in text:
        escaped = json.dumps(char)[1:-1]  # what JSON requires (\", \\, \n) or allows raw
        choice = rng.random()
        if choice < 0.2:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else escaped)
        elif escaped != char or choice < 0.6:
            out.append(escaped)
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def write(value: Any, rng: random.Random) -> str:
    def space() -> str:
        return rng.choice(["", "", "", " ", "\n  ", "\t", " \r\n"])

    if isinstance(value, Obj):
        members = [
            space() + write_string(name, rng) + space() + ":" + space() + write(item, rng)
            for name, item in value
        ]
        return "{" + ",".join(members) + space() + "}"
    if isinstance(value, list):
        return "[" + ",".join(space() + write(item, rng) for item in value) + space() + "]"
    if isinstance(value, str):
        return write_string(value, rng)
    return json.dumps(value)


def repeats(value: Any) -> bool:
    """The ground truth from the tree: does some object repeat a key?"""
    if isinstance(value, Obj):
        names = [name for name, _ in value]
        return len(set(names)) != len(names) or any(repeats(item) for _, item in value)
    if isinstance(value, list):
        return any(repeats(item) for item in value)
    return False


def exact(text: bytes) -> bool:
    seen_repeat = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal seen_repeat
        names = [name for name, _ in pairs]
        seen_repeat |= len(set(names)) != len(names)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return seen_repeat


@given(TREES, st.randoms(use_true_random=False))
def test_repeated_keys_are_found_exactly(tree: Any, rng: random.Random) -> None:
    """For any text: the check names a key iff json.loads' pairs show a repeat (and the
    tree has one); "no repeat possible" from the counts is never wrong; the kernel and
    its Python twin give the same counts."""
    text = write(tree, rng).encode()
    parsed = orjson.loads(text)
    truth = exact(text)
    assert truth == repeats(tree)
    assert (strict_json.repeated_key(text, parsed) is not None) == truth
    if truth:
        assert json_keys.may_repeat_keys(text, parsed)
        assert strict_json.may_repeat_keys_reference(text, parsed)
    assert json_keys.loose_candidates(text) == strict_json.loose_candidates_reference(text)
    assert json_keys.candidates(text) == strict_json.candidates_reference(text)
    assert json_keys.member_count(parsed) == strict_json.member_count_reference(parsed)
    assert json_keys.may_repeat_keys(text, parsed) == strict_json.may_repeat_keys_reference(
        text, parsed
    )


def test_compact_bodies_take_the_fast_proof() -> None:
    """The bodies channels send (orjson/json.dumps output, a batch) are proven free of
    repeats by the counts alone: the exact (slow) check is not run for them."""
    transfer = {"debit_account_id": "1", "credit_account_id": "2", "amount_minor": 5}
    batch = {"transfers": [dict(transfer, code="transfer", flags=["linked"])] * 100}
    opening = {"class": "class_ii", "bound_card": {"card_number": "6", "holder_name": "张三"}}
    for body in (transfer, batch, opening):
        for text in (
            orjson.dumps(body),
            json.dumps(body).encode(),
            json.dumps(body, indent=1).encode(),
        ):
            assert not json_keys.may_repeat_keys(text, orjson.loads(text)), text[:80]
