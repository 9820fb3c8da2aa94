"""Differential tests of the risk kernel: `cext.risk.RiskKernel` against its twin
`limits.risk_reference.ReferenceRiskKernel`, call for call.

Hypothesis draws rule programs (every type, outcome, scope and match, thresholds near
the traffic it draws), lists, and a run of steps: batches of postings (accounts,
devices, IPs, customers and payees from small sets so counters and pairs are shared;
codes in and out of the masks, captures and voids, second factors, amounts at the
edges), clocks that move forward by up to a day and sometimes back, a new program or
list mid-run, `clear()`. The kernel starts with 16-slot tables, so its tables grow,
rehash and reuse expired slots many times in a run. After every call: the same return
value, the same verdict bytes, the same `observed` for every posting, the same
`entries()` and clock. Invalid rows: both refuse with the same message.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cext.risk import RiskKernel
from limits.risk_layout import (
    CONTEXT,
    RULE,
    VERDICT,
    Match,
    Outcome,
    RuleType,
    Scope,
    pack_context,
    pack_rule,
)
from limits.risk_reference import ReferenceRiskKernel

TRANSFER = struct.Struct("<QQQQQQQQqQIHHHBB36x")  # ledger.types.TRANSFER_STRUCT, head
assert TRANSFER.size == 128

CODES = (1, 2, 4, 9, 13)  # transfer, payment, cash withdrawal, reversal, external out
ACCOUNTS = (0, 70_001, 70_002, 70_003, 1 << 63, (1 << 64) + 70_001)  # incl. a 128-bit id
KEYS = (0, 1, 2, 3, 0xFFFF_FFFF_FFFF_FFFF)
WINDOWS = (1, 5, 8, 9, 60, 3_600, 86_400)


def codes_mask() -> st.SearchStrategy[int]:
    return st.lists(st.sampled_from((*CODES, 31)), max_size=4).map(
        lambda codes: sum({1 << code for code in codes}) or (1 << 1)
    )


@st.composite
def rules(draw: st.DrawFn, types: tuple[RuleType, ...] = tuple(RuleType)) -> bytes:
    rule_type = draw(st.sampled_from(types))
    common: dict[str, Any] = {
        "outcome": draw(st.sampled_from(list(Outcome))),
        "report": draw(st.booleans()),
        "codes": draw(codes_mask()),
        "amount_min": draw(st.sampled_from((0, 0, 50, 500, 2_000))),
    }
    if rule_type == RuleType.VELOCITY:
        return pack_rule(
            rule_type,
            scope=draw(st.sampled_from(list(Scope)[1:])),
            window_s=draw(st.sampled_from(WINDOWS)),
            count_max=draw(st.integers(0, 4)),
            sum_max=draw(st.sampled_from((0, 100, 1_000, 5_000, 2**63 - 1))),
            **common,
        )
    if rule_type == RuleType.HISTORY:
        return pack_rule(
            rule_type,
            scope=draw(st.sampled_from((Scope.ACCOUNT, Scope.CUSTOMER))),
            window_s=draw(st.sampled_from(WINDOWS)),
            samples_min=draw(st.integers(0, 5)),
            multiple_permille=draw(st.sampled_from((0, 500, 1_000, 2_000, 5_000, 2**32 - 1))),
            **common,
        )
    if rule_type in (RuleType.NEW_PAYEE, RuleType.NEW_DEVICE):
        return pack_rule(rule_type, window_s=draw(st.sampled_from((0, *WINDOWS))), **common)
    if rule_type == RuleType.TIME_OF_DAY:
        bound = st.sampled_from((0, 1, 3_600, 18_000, 43_200, 86_399, 86_400))
        return pack_rule(rule_type, from_s=draw(bound), to_s=draw(bound), **common)
    if rule_type == RuleType.LIST:
        return pack_rule(
            rule_type,
            match=draw(st.sampled_from(list(Match)[1:])),
            list_id=draw(st.integers(0, 2)),
            **common,
        )
    return pack_rule(rule_type, **common)


programs = st.lists(rules(), max_size=10).map(b"".join)

list_keys = st.lists(st.sampled_from(ACCOUNTS + KEYS), max_size=6).map(
    lambda keys: struct.pack(f"<{len(keys)}Q", *(key & (2**64 - 1) for key in keys))
)


@st.composite
def postings(draw: st.DrawFn) -> tuple[bytes, bytes]:
    debit = draw(st.sampled_from(ACCOUNTS))
    credit = draw(st.sampled_from(ACCOUNTS))
    amount = draw(
        st.one_of(
            st.integers(0, 3_000),
            st.sampled_from((-5, 49, 50, 499, 500, 1_999, 2_000, 2**62, 2**63 - 1)),
        )
    )
    code = draw(st.one_of(st.sampled_from(CODES), st.sampled_from((0, 31, 32, 65_535))))
    flags = draw(st.sampled_from((0, 0, 0, 2, 4, 8, 16)))
    record = TRANSFER.pack(
        7, 0,
        debit & (2**64 - 1), debit >> 64,
        credit & (2**64 - 1), credit >> 64,
        0, 0, amount, 0, 0, 1, code, flags, 3, 0,
    )  # fmt: skip
    context = pack_context(
        customer=draw(st.sampled_from(KEYS)),
        device=draw(st.sampled_from(KEYS)),
        ip=draw(st.sampled_from(KEYS)),
        counterparty=draw(st.sampled_from(KEYS)),
        resident=draw(st.sampled_from(KEYS)),
        local_s=draw(st.sampled_from((0, 1, 3_599, 3_600, 17_999, 43_200, 86_399))),
        second_factor=draw(st.booleans()),
    )
    return record, context


steps = st.one_of(
    st.tuples(
        st.just("screen"),
        st.sampled_from((0, 0, 1, 1, 2, 4, 7, 8, 59, 60, 3_599, 3_600, 86_400, -30)),
        st.lists(postings(), max_size=12),
    ),
    st.tuples(st.just("program"), programs),
    st.tuples(st.just("list"), st.integers(0, 2), list_keys),
    st.tuples(st.just("clear")),
)


def assert_screen_same(
    kernel: RiskKernel, reference: ReferenceRiskKernel, batch: list[tuple[bytes, bytes]],
    now_s: int,
) -> None:  # fmt: skip
    records = b"".join(record for record, _ in batch)
    contexts = b"".join(context for _, context in batch)
    count = len(batch)
    out_kernel = bytearray(b"\xee" * (count * VERDICT.size + 3))
    out_reference = bytearray(out_kernel)
    fired = kernel.screen(records, contexts, count, now_s, out_kernel)
    assert reference.screen(records, contexts, count, now_s, out_reference) == fired
    assert out_kernel == out_reference
    assert fired == sum(
        1 for index in range(count) if VERDICT.unpack_from(out_kernel, index * 16)[3]
    )
    for index in range(count):
        assert kernel.observed(index) == reference.observed(index), index


@settings(max_examples=300)
@given(program=programs, lists=st.lists(list_keys, min_size=3, max_size=3), run=st.lists(steps))
def test_kernel_equals_reference(program: bytes, lists: list[bytes], run: list[tuple]) -> None:
    kernel = RiskKernel(4)
    reference = ReferenceRiskKernel(4)
    for twin in (kernel, reference):
        twin.set_program(program)
        for list_id, keys in enumerate(lists):
            twin.set_list(list_id, keys)
    now_s = 1_767_225_600
    for step in run:
        if step[0] == "screen":
            now_s = max(0, now_s + step[1])
            assert_screen_same(kernel, reference, step[2], now_s)
        elif step[0] == "program":
            kernel.set_program(step[1])
            reference.set_program(step[1])
        elif step[0] == "list":
            kernel.set_list(step[1], step[2])
            reference.set_list(step[1], step[2])
        else:
            kernel.clear()
            reference.clear()
        assert kernel.entries() == reference.entries()
        assert kernel.now_s == reference.now_s
        assert kernel.rule_count == reference.rule_count


@settings(max_examples=100)
@given(
    program=st.lists(rules(), min_size=1, max_size=6).map(b"".join),
    batches=st.lists(st.lists(postings(), min_size=1, max_size=40), min_size=1, max_size=30),
    advance_s=st.sampled_from((1, 3, 30, 600)),
)
def test_long_runs_through_growing_tables(
    program: bytes, batches: list[list[tuple[bytes, bytes]]], advance_s: int
) -> None:
    """Many batches on a clock that keeps moving: slots expire, get reused, tables grow."""
    kernel = RiskKernel(4)
    reference = ReferenceRiskKernel(4)
    kernel.set_program(program)
    reference.set_program(program)
    now_s = 1_000_000
    for batch in batches:
        assert_screen_same(kernel, reference, batch, now_s)
        assert kernel.entries() == reference.entries()
        now_s += advance_s


@st.composite
def focused_postings(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Postings every rule observes, on two accounts, two keys, amounts near thresholds."""
    debit, credit = draw(st.sampled_from(((70_001, 70_002), (70_002, 70_001), (70_001, 70_003))))
    record = TRANSFER.pack(
        7, 0, debit, 0, credit, 0, 0, 0,
        draw(st.sampled_from((100, 200, 300, 400, 499, 500, 501, 1_000, 2_500, 5_000))),
        0, 0, 1, 1, 0, 3, 0,
    )  # fmt: skip
    key = st.sampled_from((1, 2))
    context = pack_context(
        customer=draw(key), device=draw(key), ip=draw(key), counterparty=draw(key),
        resident=draw(key), local_s=draw(st.sampled_from((0, 3_600))),
        second_factor=draw(st.booleans()),
    )  # fmt: skip
    return record, context


@settings(max_examples=150)
@given(
    rule_type=st.sampled_from(
        (RuleType.VELOCITY, RuleType.HISTORY, RuleType.NEW_PAYEE, RuleType.NEW_DEVICE)
    ),
    data=st.data(),
)
def test_counting_rules_focused(rule_type: RuleType, data: st.DataObject) -> None:
    """One counting rule type at a time, every posting observed, clock steps equal to,
    one below and one above the windows: the edges of windows, medians and counts."""
    window_s = data.draw(st.sampled_from((8, 16, 60)))
    rows = []
    for _ in range(data.draw(st.integers(1, 3))):
        row = data.draw(rules((rule_type,)))
        fields = list(RULE.unpack(row))
        fields[5] = 1 << 1  # codes: transfer
        fields[6] = window_s if fields[6] else 0
        rows.append(RULE.pack(*fields))
    kernel = RiskKernel(4)
    reference = ReferenceRiskKernel(4)
    kernel.set_program(b"".join(rows))
    reference.set_program(b"".join(rows))
    now_s = 5_000_000
    steps = st.sampled_from((0, 1, window_s // 8, window_s - 1, window_s, window_s + 1))
    for _ in range(data.draw(st.integers(1, 25))):
        now_s += data.draw(steps)
        batch = data.draw(st.lists(focused_postings(), min_size=1, max_size=4))
        assert_screen_same(kernel, reference, batch, now_s)
        assert kernel.entries() == reference.entries()


@given(row=st.binary(min_size=RULE.size, max_size=RULE.size))
def test_invalid_rows_are_refused_alike(row: bytes) -> None:
    outcomes = []
    for twin in (RiskKernel(), ReferenceRiskKernel()):
        try:
            twin.set_program(row)
        except ValueError as error:
            outcomes.append(str(error))
        else:
            outcomes.append("accepted")
    assert outcomes[0] == outcomes[1]


@given(
    rule_type=st.sampled_from(list(RuleType)),
    scope=st.integers(0, 6),
    match=st.integers(0, 6),
    outcome=st.integers(0, 5),
    window_s=st.sampled_from((0, 60)),
    bounds=st.tuples(st.integers(86_399, 86_401), st.integers(0, 86_401)),
)
def test_rule_checks_agree(
    rule_type: int, scope: int, match: int, outcome: int, window_s: int,
    bounds: tuple[int, int],
) -> None:  # fmt: skip
    row = RULE.pack(rule_type, scope, outcome, 0, match, 2, window_s, 0, 0, 0, 0, 0, 0, *bounds)
    outcomes = []
    for twin in (RiskKernel(), ReferenceRiskKernel()):
        try:
            twin.set_program(row)
        except ValueError as error:
            outcomes.append(str(error))
        else:
            outcomes.append("accepted")
    assert outcomes[0] == outcomes[1]


def test_context_layout_is_what_the_strategy_packs() -> None:
    assert CONTEXT.size == 48 and TRANSFER.size == 128


holder_rows = st.lists(
    st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(KEYS), st.sampled_from(KEYS)),
    max_size=8,
)
context_steps = st.one_of(
    st.tuples(st.just("holders"), holder_rows),
    st.tuples(
        st.just("rows"),
        st.lists(postings(), max_size=40),  # past NOGIL_FROM (32): the nogil loop too
        postings(),  # its context is the template
    ),
    st.tuples(st.just("forget")),
    st.tuples(st.just("clear")),
)


@settings(max_examples=200)
@given(run=st.lists(context_steps, max_size=12))
def test_holder_table_and_context_rows_equal_reference(run: list[tuple]) -> None:
    """The holder table and the context rows built from it, call for call: holders
    added and replaced (account 0 ignored, a 128-bit id apart from its low word), rows
    for batches whose template names a counterparty or not, the table forgotten, and
    `clear()` (which keeps it): the same missing indexes, the same rows, the same count."""
    kernel, reference = RiskKernel(4), ReferenceRiskKernel(4)
    for step in run:
        if step[0] == "holders":
            packed = b"".join(
                struct.pack("<QQQQ", account & (2**64 - 1), account >> 64, customer, resident)
                for account, customer, resident in step[1]
            )
            kernel.set_holders(packed)
            reference.set_holders(packed)
        elif step[0] == "rows":
            batch, (_, template) = step[1], step[2]
            records = b"".join(record for record, _ in batch)
            rows = bytearray(len(batch) * CONTEXT.size)
            expected = bytearray(len(rows))
            misses = kernel.context_rows(records, len(batch), template, rows)
            assert misses == reference.context_rows(records, len(batch), template, expected)
            assert rows == expected
        elif step[0] == "forget":
            kernel.clear_holders()
            reference.clear_holders()
        else:
            kernel.clear()
            reference.clear()
        assert kernel.holder_count == reference.holder_count
