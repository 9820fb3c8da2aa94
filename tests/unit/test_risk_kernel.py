"""The risk kernel rule by rule, in `cext.risk.RiskKernel` AND its twin
`limits.risk_reference.ReferenceRiskKernel` (every test runs on both): each rule type
fires, and does not fire, at its edge; outcomes combine by severity; what is counted
(allowed, delayed, reviewed, met challenges) and what is not (blocked, unmet
challenges, captures, voids, zero keys); counters across programs; the tables growing
past millions of keys' worth of slots from a 16-slot start; argument checks.

Semantics: limits/risk_layout.py, with the readings listed in limits/risk_reference.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

import cext.risk as risk_kernel_module
from cext.risk import RiskKernel
from ledger.types import TRANSFER_STRUCT, TransferCode, TransferFlags
from limits import risk_layout
from limits.risk_layout import (
    CONTEXT,
    RULE,
    VERDICT,
    Match,
    Outcome,
    RuleType,
    Scope,
    key_of,
    pack_context,
    pack_rule,
)
from limits.risk_reference import ReferenceRiskKernel

Kernel = RiskKernel | ReferenceRiskKernel

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
PAYER = 6_222_020_000_000_000_017  # 19-digit account ids, like the bank's
PAYEE = 6_222_020_000_000_000_025
OTHER = 6_222_020_000_000_000_033
TRANSFER_CODES = 1 << TransferCode.TRANSFER
ALL_CODES = (1 << 32) - 2  # every code 1..31
CUSTOMER = key_of("customer", "C0001")
DEVICE = key_of("device", "phone-1")
NEW_PHONE = key_of("device", "phone-2")
IP = key_of("ip", "203.0.113.7")
CARD = key_of("card", "6222021234567890123")
RESIDENT = key_of("resident_id", "110101199003070011")


@pytest.fixture(params=["kernel", "reference"])
def make(request: pytest.FixtureRequest) -> Callable[..., Kernel]:
    def build(*rules: bytes, capacity_log2: int = 4) -> Kernel:
        kernel: Kernel = (
            RiskKernel(capacity_log2)
            if request.param == "kernel"
            else ReferenceRiskKernel(capacity_log2)
        )
        kernel.set_program(b"".join(rules))
        return kernel

    return build


def record(
    amount: int = 100_00,
    *,
    debit: int = PAYER,
    credit: int = PAYEE,
    code: int = TransferCode.TRANSFER,
    flags: int = 0,
) -> bytes:
    return TRANSFER_STRUCT.pack(
        5, 1, debit & (2**64 - 1), debit >> 64, credit & (2**64 - 1), credit >> 64, 0, 0,
        amount, 0, 0, 1, code, flags, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    )  # fmt: skip


def context(**fields: int | bool) -> bytes:
    fields.setdefault("customer", CUSTOMER)
    return pack_context(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Verdict:
    outcome: int
    report: int
    challenge_met: int
    mask: int
    seen: list[tuple[int, int]]


def screen(
    kernel: Kernel, postings: Sequence[tuple[bytes, bytes]] | tuple[bytes, bytes], now_s: int
) -> list[Verdict]:
    """Screen a batch (or one (record, context) pair); every verdict with its observed."""
    batch = [postings] if isinstance(postings, tuple) else list(postings)
    out = bytearray(len(batch) * VERDICT.size)
    fired = kernel.screen(
        b"".join(r for r, _ in batch), b"".join(c for _, c in batch), len(batch), now_s, out
    )
    verdicts = [
        Verdict(*_verdict_fields(out, i), seen=kernel.observed(i)) for i in range(len(batch))
    ]
    assert fired == sum(1 for verdict in verdicts if verdict.mask)
    return verdicts


def _verdict_fields(out: bytearray, index: int) -> tuple[int, int, int, int]:
    outcome, report, met, mask = VERDICT.unpack_from(out, index * VERDICT.size)
    return outcome, report, met, mask


def one(kernel: Kernel, now_s: int, amount: int = 100_00, **fields: int | bool) -> Verdict:
    """One transfer PAYER -> PAYEE (record keywords: debit, credit, code, flags)."""
    record_fields = {
        name: int(fields.pop(name))
        for name in ("debit", "credit", "code", "flags")
        if name in fields
    }
    return screen(kernel, (record(amount, **record_fields), context(**fields)), now_s)[0]


# -- layout ----------------------------------------------------------------------------


def test_kernel_constants_are_the_layouts() -> None:
    assert risk_kernel_module.RULE_SIZE == RULE.size == 64
    assert risk_kernel_module.CONTEXT_SIZE == CONTEXT.size == 48
    assert risk_kernel_module.VERDICT_SIZE == VERDICT.size == 16
    assert risk_kernel_module.TRANSFER_SIZE == TRANSFER_STRUCT.size == 128
    assert risk_kernel_module.RULES_MAX == risk_layout.RULES_MAX
    assert risk_kernel_module.HISTORY_SAMPLES == risk_layout.HISTORY_SAMPLES
    assert risk_kernel_module.VELOCITY_BUCKETS == risk_layout.VELOCITY_BUCKETS
    assert risk_kernel_module.STRUCT_SIZES == {
        "RULE": 64, "CONTEXT": 48, "VERDICT": 16, "TRANSFER": 128,
    }  # fmt: skip


def test_mix64_is_the_references() -> None:
    from limits.risk_reference import mix64

    for value in (0, 1, PAYER, 2**64 - 1, -1):
        assert risk_kernel_module.mix64(value) == mix64(value & (2**64 - 1))
    assert mix64(0) == 0xE220A8397B1DCDAF  # SplitMix64's first output from seed 0


# -- velocity --------------------------------------------------------------------------


def velocity(**fields: int) -> bytes:
    fields.setdefault("scope", Scope.ACCOUNT)
    fields.setdefault("window_s", 600)
    fields.setdefault("codes", TRANSFER_CODES)
    fields.setdefault("outcome", Outcome.REVIEW)
    return pack_rule(RuleType.VELOCITY, **fields)  # type: ignore[arg-type]


def test_velocity_count_fires_past_count_max(make: Callable[..., Kernel]) -> None:
    kernel = make(velocity(count_max=3))
    assert [one(kernel, T0 + i).mask for i in range(3)] == [0, 0, 0]
    fourth = one(kernel, T0 + 3)
    assert (fourth.outcome, fourth.mask, fourth.seen) == (Outcome.REVIEW, 1, [(0, 4)])
    assert one(kernel, T0 + 4).seen == [(0, 5)]  # the held posting was counted


def test_velocity_sum_fires_past_sum_max(make: Callable[..., Kernel]) -> None:
    kernel = make(velocity(sum_max=1_000_00))
    assert one(kernel, T0, 600_00).mask == 0
    assert one(kernel, T0, 400_00).mask == 0  # 1,000.00 is not past 1,000.00
    assert one(kernel, T0, 1).seen == [(0, 1_000_01)]


def test_velocity_window_slides_by_sub_buckets(make: Callable[..., Kernel]) -> None:
    """window 80 s: sub-buckets of 10 s; the window at t is t//10 - 7 .. t//10."""
    kernel = make(velocity(window_s=80, count_max=1))
    start = T0 - T0 % 10
    assert one(kernel, start).mask == 0
    assert one(kernel, start + 79).seen == [(0, 2)]  # sub-bucket +7: still inside
    assert one(kernel, start + 80).seen == [(0, 2)]  # +8: the first gone, the second in
    assert one(kernel, start + 160).mask == 0  # everything before +9 is gone


def test_velocity_counts_only_what_it_applies_to(make: Callable[..., Kernel]) -> None:
    kernel = make(velocity(count_max=1, amount_min=500_00))
    assert one(kernel, T0, 100_00).mask == 0  # below amount_min: not counted
    assert one(kernel, T0, 100_00).mask == 0
    assert one(kernel, T0, 500_00).mask == 0  # the first one that counts
    assert one(kernel, T0, 100_00, code=TransferCode.PAYMENT).mask == 0  # other code
    assert one(kernel, T0, 500_00).seen == [(0, 2)]


@pytest.mark.parametrize(
    ("scope", "same", "differs"),
    [
        (Scope.ACCOUNT, {"credit": OTHER}, {"debit": OTHER}),
        (Scope.CUSTOMER, {"debit": OTHER}, {"customer": key_of("customer", "C2")}),
        (Scope.DEVICE, {"debit": OTHER}, {"device": NEW_PHONE}),
        (Scope.IP, {"debit": OTHER}, {"ip": key_of("ip", "198.51.100.1")}),
        (Scope.PAYEE, {"debit": OTHER}, {"credit": OTHER}),
    ],
)
def test_velocity_scopes(
    make: Callable[..., Kernel], scope: Scope, same: dict[str, int], differs: dict[str, int]
) -> None:
    kernel = make(velocity(scope=scope, count_max=1))
    base = {"device": DEVICE, "ip": IP}
    assert one(kernel, T0, **base).mask == 0
    assert one(kernel, T0, **(base | differs)).mask == 0  # another entity: its own count
    assert one(kernel, T0, **(base | same)).seen == [(0, 2)]  # the same entity


def test_velocity_zero_key_never_fires_nor_counts(make: Callable[..., Kernel]) -> None:
    kernel = make(velocity(scope=Scope.DEVICE, count_max=1))
    assert [one(kernel, T0, device=0).mask for _ in range(3)] == [0, 0, 0]
    assert kernel.entries() == 0
    assert one(kernel, T0, device=DEVICE).mask == 0
    assert one(kernel, T0, device=DEVICE).mask == 1


def test_batch_postings_see_each_other_in_order(make: Callable[..., Kernel]) -> None:
    kernel = make(velocity(count_max=2))
    verdicts = screen(kernel, [(record(), context())] * 4, T0)
    assert [v.seen for v in verdicts] == [[], [], [(0, 3)], [(0, 4)]]


# -- history ---------------------------------------------------------------------------


def history(**fields: int) -> bytes:
    fields.setdefault("scope", Scope.ACCOUNT)
    fields.setdefault("window_s", 30 * 86_400)
    fields.setdefault("codes", TRANSFER_CODES)
    fields.setdefault("outcome", Outcome.CHALLENGE)
    fields.setdefault("samples_min", 3)
    fields.setdefault("multiple_permille", 5_000)
    return pack_rule(RuleType.HISTORY, **fields)  # type: ignore[arg-type]


def test_history_fires_past_the_multiple_of_the_median(make: Callable[..., Kernel]) -> None:
    kernel = make(history())
    for amount in (100_00, 300_00):
        assert one(kernel, T0, amount).mask == 0
    assert one(kernel, T0, 5_000_00).mask == 0  # 2 samples < samples_min (and now 3)
    # samples 100, 300, 5000: median 300.00; 1,500.00 is 5x, not past it
    assert one(kernel, T0 + 1, 1_500_00).mask == 0
    # samples 100, 300, 1500, 5000: the lower middle one, 300.00
    assert one(kernel, T0 + 2, 1_500_01).seen == [(0, 300_00)]


def test_history_window_forgets_old_samples(make: Callable[..., Kernel]) -> None:
    kernel = make(history(window_s=86_400, samples_min=1))
    assert one(kernel, T0, 100_00).mask == 0
    assert one(kernel, T0 + 86_399, 500_01).seen == [(0, 100_00)]
    kernel2 = make(history(window_s=86_400, samples_min=1))
    assert one(kernel2, T0, 100_00).mask == 0
    assert one(kernel2, T0 + 86_400, 1_000_000_00).mask == 0  # the sample is a day old


def test_history_keeps_sixteen_samples(make: Callable[..., Kernel]) -> None:
    kernel = make(history(samples_min=16, multiple_permille=1_000, outcome=Outcome.DELAY))
    for _ in range(8):
        one(kernel, T0, 1_00)
    for _ in range(8):
        one(kernel, T0, 100_00)
    assert one(kernel, T0, 1_01).seen == [(0, 1_00)]  # 8 x 1.00, 8 x 100.00 (+1.01)
    for _ in range(8):
        one(kernel, T0, 100_00)  # pushes the 1.00s out (delayed postings are counted)
    assert one(kernel, T0, 100_01).seen == [(0, 100_00)]


def test_history_samples_include_amounts_below_amount_min(make: Callable[..., Kernel]) -> None:
    kernel = make(history(samples_min=3, multiple_permille=10_000, amount_min=10_000_00))
    for _ in range(3):
        assert one(kernel, T0, 50_00).mask == 0  # counted, never checked
    assert one(kernel, T0, 10_000_00).seen == [(0, 50_00)]


def test_history_by_customer(make: Callable[..., Kernel]) -> None:
    kernel = make(history(scope=Scope.CUSTOMER, samples_min=1))
    one(kernel, T0, 100_00, debit=OTHER)
    assert one(kernel, T0, 500_01).seen == [(0, 100_00)]
    assert one(kernel, T0, 500_01, customer=key_of("customer", "C2")).mask == 0


# -- new payee, new device -------------------------------------------------------------


def test_new_payee_fires_until_the_window_has_passed(make: Callable[..., Kernel]) -> None:
    rule = pack_rule(
        RuleType.NEW_PAYEE, outcome=Outcome.CHALLENGE, codes=ALL_CODES, window_s=3_600,
        amount_min=5_000_00,
    )  # fmt: skip
    kernel = make(rule)
    assert one(kernel, T0, 1_00, counterparty=CARD).mask == 0  # small: counted, not checked
    assert one(kernel, T0 + 3_599, 5_000_00, counterparty=CARD).seen == [(0, 3_599)]
    assert one(kernel, T0 + 3_600, 5_000_00, counterparty=CARD).mask == 0
    never = one(kernel, T0 + 3_600, 5_000_00, counterparty=key_of("card", "x"))
    assert never.seen == [(0, -1)]
    assert one(kernel, T0, 5_000_00, counterparty=0).mask == 0  # no counterparty
    assert one(kernel, T0, 5_000_00, counterparty=CARD, customer=0).mask == 0


def test_new_payee_window_zero_fires_only_for_never_seen(make: Callable[..., Kernel]) -> None:
    kernel = make(pack_rule(RuleType.NEW_PAYEE, outcome=Outcome.DELAY, codes=ALL_CODES))
    assert one(kernel, T0, counterparty=CARD).seen == [(0, -1)]
    assert one(kernel, T0, counterparty=CARD).mask == 0


def test_new_device_and_a_blocked_posting_is_not_counted(make: Callable[..., Kernel]) -> None:
    new_device = pack_rule(
        RuleType.NEW_DEVICE, outcome=Outcome.CHALLENGE, codes=ALL_CODES, window_s=86_400
    )
    large = pack_rule(
        RuleType.LARGE_VALUE, outcome=Outcome.BLOCK, codes=ALL_CODES, amount_min=1_000_000_00
    )
    kernel = make(new_device, large)
    blocked = one(kernel, T0, 1_000_000_00, device=NEW_PHONE)
    assert (blocked.outcome, blocked.mask) == (Outcome.BLOCK, 0b11)
    unmet = one(kernel, T0 + 10, device=NEW_PHONE)
    assert (unmet.outcome, unmet.seen) == (Outcome.CHALLENGE, [(0, -1)])  # still never seen
    met = one(kernel, T0 + 20, device=NEW_PHONE, second_factor=True)
    assert (met.outcome, met.challenge_met, met.seen) == (Outcome.ALLOW, 1, [(0, -1)])
    assert one(kernel, T0 + 30, device=NEW_PHONE).seen == [(0, 10)]  # counted at T0 + 20
    assert one(kernel, T0 + 20 + 86_400, device=NEW_PHONE).mask == 0
    assert one(kernel, T0, device=0).mask == 0


# -- time of day -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_s", "to_s", "inside", "outside"),
    [
        (3_600, 18_000, (3_600, 17_999), (3_599, 18_000)),
        (82_800, 3_600, (82_800, 0, 3_599), (3_600, 82_799)),  # wraps past midnight
        (0, 86_400, (0, 86_399), ()),
        (7_200, 7_200, (), (7_199, 7_200, 7_201)),  # an empty window
    ],
)
def test_time_of_day(
    make: Callable[..., Kernel], from_s: int, to_s: int, inside: tuple[int, ...],
    outside: tuple[int, ...],
) -> None:  # fmt: skip
    rule = pack_rule(
        RuleType.TIME_OF_DAY, outcome=Outcome.CHALLENGE, codes=TRANSFER_CODES,
        from_s=from_s, to_s=to_s,
    )  # fmt: skip
    kernel = make(rule)
    for local_s in inside:
        assert one(kernel, T0, local_s=local_s).seen == [(0, local_s)]
    for local_s in outside:
        assert one(kernel, T0, local_s=local_s).mask == 0


# -- lists -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "listed", "hit", "miss"),
    [
        (Match.ACCOUNT, PAYEE, {"credit": PAYEE}, {"credit": OTHER}),
        (Match.ACCOUNT, PAYER, {"debit": PAYER}, {"debit": OTHER}),
        (Match.DEVICE, DEVICE, {"device": DEVICE}, {"device": NEW_PHONE}),
        (Match.RESIDENT_ID, RESIDENT, {"resident": RESIDENT}, {"resident": 0}),
        (Match.COUNTERPARTY, CARD, {"counterparty": CARD}, {"counterparty": 1}),
        (Match.IP, IP, {"ip": IP}, {"ip": 0}),
    ],
)
def test_list_matches(
    make: Callable[..., Kernel], match: Match, listed: int, hit: dict[str, int],
    miss: dict[str, int],
) -> None:  # fmt: skip
    rule = pack_rule(
        RuleType.LIST, outcome=Outcome.BLOCK, codes=TRANSFER_CODES, match=match, list_id=2
    )
    kernel = make(rule)
    assert one(kernel, T0, **hit).mask == 0  # list 2 not set: empty
    kernel.set_list(2, struct.pack("<3Q", 0, 12345, listed))
    verdict = one(kernel, T0, **hit)
    assert (verdict.outcome, verdict.seen) == (Outcome.BLOCK, [(0, 1)])
    other = {"debit": OTHER, "credit": OTHER} if match == Match.ACCOUNT else {}
    assert one(kernel, T0, **(other | miss)).mask == 0
    kernel.set_list(2, struct.pack("<Q", 12345))  # replaced
    assert one(kernel, T0, **hit).mask == 0


def test_a_zero_value_is_in_no_list(make: Callable[..., Kernel]) -> None:
    rule = pack_rule(RuleType.LIST, outcome=Outcome.BLOCK, codes=TRANSFER_CODES, match=Match.DEVICE)
    kernel = make(rule)
    kernel.set_list(0, struct.pack("<2Q", 0, 0))
    assert one(kernel, T0, device=0).mask == 0


def test_a_large_list(make: Callable[..., Kernel]) -> None:
    rule = pack_rule(RuleType.LIST, outcome=Outcome.REVIEW, codes=ALL_CODES, match=Match.IP)
    kernel = make(rule)
    kernel.set_list(0, struct.pack("<20000Q", *range(1, 40_001, 2)))
    assert [one(kernel, T0, ip=ip).mask for ip in (1, 2, 39_999, 40_000, 40_001)] == [
        1, 0, 1, 0, 0,
    ]  # fmt: skip


# -- large value, what is screened -----------------------------------------------------


def test_large_value_reports_from_amount_min(make: Callable[..., Kernel]) -> None:
    cash = 1 << TransferCode.CASH_WITHDRAWAL
    kernel = make(
        pack_rule(
            RuleType.LARGE_VALUE, outcome=Outcome.ALLOW, report=True, codes=cash,
            amount_min=50_000_00,
        )
    )  # fmt: skip
    code = TransferCode.CASH_WITHDRAWAL
    assert one(kernel, T0, 49_999_99, code=code).mask == 0
    verdict = one(kernel, T0, 50_000_00, code=code)
    assert (verdict.outcome, verdict.report, verdict.seen) == (0, 1, [(0, 50_000_00)])
    assert one(kernel, T0, 50_000_00).mask == 0  # a transfer: not in the codes


@pytest.mark.parametrize("flags", [TransferFlags.POST_PENDING, TransferFlags.VOID_PENDING])
def test_captures_and_voids_are_not_screened(make: Callable[..., Kernel], flags: int) -> None:
    kernel = make(
        pack_rule(RuleType.LARGE_VALUE, outcome=Outcome.BLOCK, codes=ALL_CODES),
        velocity(codes=ALL_CODES, count_max=1),
    )
    assert one(kernel, T0, flags=flags).mask == 0
    assert one(kernel, T0, flags=flags).mask == 0
    assert kernel.entries() == 0
    assert one(kernel, T0, flags=TransferFlags.PENDING).outcome == Outcome.BLOCK


def test_reversals_only_when_named(make: Callable[..., Kernel]) -> None:
    named = make(
        pack_rule(RuleType.LARGE_VALUE, outcome=Outcome.DELAY, codes=1 << TransferCode.REVERSAL)
    )
    assert one(named, T0, code=TransferCode.REVERSAL).outcome == Outcome.DELAY
    default = make(pack_rule(RuleType.LARGE_VALUE, outcome=Outcome.DELAY, codes=TRANSFER_CODES))
    assert one(default, T0, code=TransferCode.REVERSAL).mask == 0
    assert one(default, T0, code=40).mask == 0  # past the mask's 32 bits


# -- outcomes --------------------------------------------------------------------------


def test_the_most_severe_outcome_wins_and_reports_stick(make: Callable[..., Kernel]) -> None:
    rules = [
        pack_rule(RuleType.LARGE_VALUE, outcome=outcome, report=outcome == Outcome.ALLOW,
                  codes=TRANSFER_CODES, amount_min=index * 100_00)
        for index, outcome in enumerate(
            (Outcome.ALLOW, Outcome.CHALLENGE, Outcome.DELAY, Outcome.REVIEW, Outcome.BLOCK)
        )
    ]  # fmt: skip
    kernel = make(*rules)
    for index, outcome in enumerate(Outcome):
        verdict = one(kernel, T0, index * 100_00)
        assert (verdict.outcome, verdict.report) == (outcome, 1)
        assert verdict.mask == (1 << (index + 1)) - 1


def test_a_second_factor_meets_only_a_challenge(make: Callable[..., Kernel]) -> None:
    challenge = pack_rule(RuleType.LARGE_VALUE, outcome=Outcome.CHALLENGE, codes=TRANSFER_CODES)
    delay = pack_rule(
        RuleType.LARGE_VALUE, outcome=Outcome.DELAY, codes=TRANSFER_CODES, amount_min=1_000_00
    )
    kernel = make(challenge, delay)
    met = one(kernel, T0, second_factor=True)
    assert (met.outcome, met.challenge_met, met.mask) == (Outcome.ALLOW, 1, 1)
    unmet = one(kernel, T0)
    assert (unmet.outcome, unmet.challenge_met) == (Outcome.CHALLENGE, 0)
    delayed = one(kernel, T0, 1_000_00, second_factor=True)
    assert (delayed.outcome, delayed.challenge_met, delayed.mask) == (Outcome.DELAY, 0, 0b11)


def test_what_is_counted(make: Callable[..., Kernel]) -> None:
    """Counted: allowed, met challenges, delayed, reviewed; not: blocked, unmet challenges."""
    codes = TRANSFER_CODES | 1 << TransferCode.PAYMENT
    counter = velocity(codes=codes, count_max=100, outcome=Outcome.ALLOW)
    rules = [
        counter,
        pack_rule(RuleType.LIST, outcome=Outcome.CHALLENGE, codes=codes, match=Match.IP,
                  list_id=1),
        pack_rule(RuleType.LIST, outcome=Outcome.DELAY, codes=codes, match=Match.IP, list_id=2),
        pack_rule(RuleType.LIST, outcome=Outcome.REVIEW, codes=codes, match=Match.IP, list_id=3),
        pack_rule(RuleType.LIST, outcome=Outcome.BLOCK, codes=codes, match=Match.IP, list_id=4),
    ]  # fmt: skip
    kernel = make(*rules)
    for list_id in range(1, 5):
        kernel.set_list(list_id, struct.pack("<Q", list_id))
    ips = ((0, False), (1, False), (2, False), (3, False), (4, False), (1, True), (5, False))
    batch = [(record(), context(ip=ip, second_factor=factor)) for ip, factor in ips]
    verdicts = screen(kernel, batch, T0)
    assert [(v.outcome, v.challenge_met) for v in verdicts] == [
        (Outcome.ALLOW, 0), (Outcome.CHALLENGE, 0), (Outcome.DELAY, 0), (Outcome.REVIEW, 0),
        (Outcome.BLOCK, 0), (Outcome.ALLOW, 1), (Outcome.ALLOW, 0),
    ]  # fmt: skip
    # counted: ip 0 (allow), 2 (delay), 3 (review), 1 with a second factor (met), 5;
    # not counted: ip 1 without one (unmet challenge), 4 (block). Thresholds changed,
    # the same counter:
    kernel.set_program(velocity(codes=codes, count_max=6, outcome=Outcome.REVIEW))
    assert one(kernel, T0).mask == 0  # the 6th
    assert one(kernel, T0).seen == [(0, 7)]


# -- counters across programs ----------------------------------------------------------


def test_counters_survive_a_new_program_unless_what_they_count_changed(
    make: Callable[..., Kernel],
) -> None:
    kernel = make(velocity(count_max=10))
    for _ in range(3):
        one(kernel, T0)
    kernel.set_program(
        pack_rule(RuleType.TIME_OF_DAY, outcome=Outcome.ALLOW, codes=1, from_s=1, to_s=2)
        + velocity(count_max=3, outcome=Outcome.BLOCK)  # moved, new threshold, outcome
    )
    assert one(kernel, T0).seen == [(1, 4)]
    kernel.set_program(velocity(count_max=3, window_s=601))  # another window: new counter
    assert one(kernel, T0).mask == 0


def test_rules_of_one_group_count_once(make: Callable[..., Kernel]) -> None:
    kernel = make(velocity(count_max=2, outcome=Outcome.DELAY), velocity(count_max=3))
    assert [one(kernel, T0).mask for _ in range(4)] == [0, 0, 0b01, 0b11]


# -- clock, tables, arguments ----------------------------------------------------------


def test_the_clock_never_goes_back(make: Callable[..., Kernel]) -> None:
    kernel = make(velocity(window_s=80, count_max=1))
    one(kernel, T0)
    one(kernel, T0 + 1_000)  # the first one's window has passed
    assert kernel.now_s == T0 + 1_000
    assert one(kernel, T0).seen == [(0, 2)]  # taken at T0 + 1000: the second one counts
    kernel.clear()
    assert kernel.now_s == 0 and kernel.entries() == 0
    assert one(kernel, T0).mask == 0


def test_tables_grow_from_sixteen_slots_and_reuse_expired_ones(
    make: Callable[..., Kernel],
) -> None:
    kernel = make(
        velocity(count_max=1, window_s=8),
        history(samples_min=1, window_s=60),
        pack_rule(RuleType.NEW_PAYEE, outcome=Outcome.ALLOW, codes=TRANSFER_CODES,
                  window_s=60),
    )  # fmt: skip
    accounts = 5_000
    postings = [(record(debit=1_000 + i), context(counterparty=1 + i)) for i in range(accounts)]
    verdicts = screen(kernel, postings, T0)
    assert all(v.seen == [(2, -1)] for v in verdicts)  # only the new payee rule fired...
    assert kernel.entries() == 3 * accounts  # ...and every posting has three counters
    memory = kernel.memory_bytes()
    assert memory > 5_000 * (16 + 144 + 216)
    verdicts = screen(kernel, postings, T0 + 7)
    assert all(v.seen == [(0, 2), (2, 7)] for v in verdicts)
    for minute in range(1, 6):  # windows pass: the same number of live keys, no growth
        screen(kernel, [(record(debit=10_000 + minute * accounts + i), context())
                        for i in range(accounts)], T0 + 7 + minute * 61)  # fmt: skip
        assert kernel.entries() == 2 * accounts + accounts  # + the pairs, which stay
    if isinstance(kernel, RiskKernel):
        assert kernel.memory_bytes() <= 2 * memory


def test_observed_index_and_argument_checks(make: Callable[..., Kernel]) -> None:
    kernel = make(velocity(count_max=1))
    screen(kernel, [(record(), context())] * 2, T0)
    with pytest.raises(IndexError):
        kernel.observed(2)
    with pytest.raises(IndexError):
        kernel.observed(-1)
    out = bytearray(32)
    with pytest.raises(ValueError, match="records shorter"):
        kernel.screen(record(), context() * 2, 2, T0, out)
    with pytest.raises(ValueError, match="contexts shorter"):
        kernel.screen(record() * 2, context(), 2, T0, out)
    with pytest.raises(ValueError, match="out shorter"):
        kernel.screen(record() * 2, context() * 2, 2, T0, bytearray(31))
    with pytest.raises(ValueError, match="count"):
        kernel.screen(b"", b"", -1, T0, out)
    for now_s in (-1, 2**32):
        with pytest.raises(ValueError, match="now_s"):
            kernel.screen(b"", b"", 0, now_s, out)
    assert kernel.screen(b"", b"", 0, T0, bytearray()) == 0
    with pytest.raises(ValueError, match="multiple of 8"):
        kernel.set_list(0, b"\x01" * 7)
    with pytest.raises(ValueError, match="u32"):
        kernel.set_list(2**32, b"")


# -- holder table and context rows ----------------------------------------------------

HOLDER = struct.Struct("<QQQQ")
WIDE = 2**64 + 17  # an account id past 64 bits: its high word matters


def holder_row(account_id: int, customer: int, resident: int) -> bytes:
    return HOLDER.pack(account_id & (2**64 - 1), account_id >> 64, customer, resident)


def test_context_rows_come_from_the_holder_table_and_the_template(
    make: Callable[..., Kernel],
) -> None:
    """Each row: the debit account's holder entry (customer, resident), the template's
    device, ip, local second and second factor, the template's counterparty or, when it
    is 0, the credit account's low 64 bits; the accounts without an entry are reported
    (rows 0, 0) in order, an account repeated in the batch each time."""
    kernel = make()
    kernel.set_holders(holder_row(PAYER, CUSTOMER, RESIDENT) + holder_row(WIDE, 7, 8))
    assert kernel.holder_count == 2
    records = (
        record(debit=PAYER)
        + record(debit=OTHER)
        + record(debit=WIDE)
        + record(debit=OTHER, credit=WIDE)
    )
    template = pack_context(customer=99, device=DEVICE, ip=IP, resident=98, local_s=3600,
                            second_factor=True)  # fmt: skip
    rows = bytearray(4 * CONTEXT.size)
    assert kernel.context_rows(records, 4, template, rows) == [1, 3]
    assert [CONTEXT.unpack_from(rows, i * CONTEXT.size) for i in range(4)] == [
        (CUSTOMER, DEVICE, IP, PAYEE, RESIDENT, 3600, 1),
        (0, DEVICE, IP, PAYEE, 0, 3600, 1),
        (7, DEVICE, IP, PAYEE, 8, 3600, 1),
        (0, DEVICE, IP, WIDE & (2**64 - 1), 0, 3600, 1),
    ]
    card = pack_context(customer=0, counterparty=CARD)
    assert kernel.context_rows(record(debit=PAYER), 1, card, rows) == []
    assert CONTEXT.unpack_from(rows) == (CUSTOMER, 0, 0, CARD, RESIDENT, 0, 0)
    # WIDE's low word alone is another account: no entry.
    assert kernel.context_rows(record(debit=17), 1, card, rows) == [0]


def test_holder_entries_are_replaced_kept_across_clear_and_forgotten_on_request(
    make: Callable[..., Kernel],
) -> None:
    kernel = make(velocity(count_max=1, scope=Scope.CUSTOMER))
    template = pack_context(customer=0)
    rows = bytearray(CONTEXT.size)
    kernel.set_holders(holder_row(PAYER, CUSTOMER, RESIDENT))
    kernel.set_holders(holder_row(PAYER, 5, 6) + holder_row(0, 1, 2))  # account 0: ignored
    assert kernel.holder_count == 1
    assert kernel.context_rows(record(), 1, template, rows) == []
    assert CONTEXT.unpack_from(rows)[0::4] == (5, 6)
    kernel.clear()  # counters only
    assert kernel.holder_count == 1
    kernel.clear_holders()
    assert kernel.holder_count == 0
    assert kernel.context_rows(record(), 1, template, rows) == [0]


def test_the_holder_table_grows_past_its_first_size(make: Callable[..., Kernel]) -> None:
    """Thousands of accounts (the kernel's table starts at 1,024 slots, doubled at half
    full): every entry found, with its own keys."""
    kernel = make()
    accounts = 5_000
    kernel.set_holders(
        b"".join(holder_row(PAYER + i, 1_000 + i, 2_000 + i) for i in range(accounts))
    )
    assert kernel.holder_count == accounts
    records = b"".join(record(debit=PAYER + i) for i in range(accounts))
    rows = bytearray(accounts * CONTEXT.size)
    assert kernel.context_rows(records, accounts, pack_context(), rows) == []
    assert all(
        CONTEXT.unpack_from(rows, i * CONTEXT.size)[0::4] == (1_000 + i, 2_000 + i)
        for i in range(accounts)
    )
    if isinstance(kernel, RiskKernel):
        assert kernel.memory_bytes() >= 2 * accounts * HOLDER.size


def test_context_rows_argument_checks(make: Callable[..., Kernel]) -> None:
    kernel = make()
    rows = bytearray(2 * CONTEXT.size)
    with pytest.raises(ValueError, match="48-byte"):
        kernel.context_rows(record(), 1, pack_context()[:47], rows)
    with pytest.raises(ValueError, match="records shorter"):
        kernel.context_rows(record(), 2, pack_context(), rows)
    with pytest.raises(ValueError, match="rows shorter"):
        kernel.context_rows(record() * 2, 2, pack_context(), bytearray(95))
    with pytest.raises(ValueError, match="count"):
        kernel.context_rows(b"", -1, pack_context(), rows)
    with pytest.raises(ValueError, match="multiple of 32"):
        kernel.set_holders(b"\x01" * 31)
    assert kernel.context_rows(b"", 0, pack_context(), bytearray()) == []


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (RULE.pack(8, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0), "unknown rule type 8"),
        (RULE.pack(7, 0, 5, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0), "unknown outcome 5"),
        (RULE.pack(7, 0, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0), "report must be 0 or 1"),
        (RULE.pack(1, 0, 0, 0, 0, 2, 60, 0, 0, 1, 0, 0, 0, 0, 0), "velocity scope"),
        (RULE.pack(1, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0), "need a window"),
        (RULE.pack(2, 3, 0, 0, 0, 2, 60, 0, 0, 0, 0, 0, 0, 0, 0), "history scope"),
        (RULE.pack(7, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0), "scope 1 on a rule"),
        (RULE.pack(6, 0, 0, 0, 6, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0), "list match"),
        (RULE.pack(7, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0), "match 1 on a rule"),
        (RULE.pack(5, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 86_401), "86400"),
        (b"\x07" * 63, "multiple of 64"),
        (pack_rule(RuleType.LARGE_VALUE, outcome=Outcome.ALLOW, codes=2) * 65, "more than 64"),
    ],
)
def test_invalid_programs_are_refused_and_change_nothing(
    make: Callable[..., Kernel], row: bytes, message: str
) -> None:
    kernel = make(pack_rule(RuleType.LARGE_VALUE, outcome=Outcome.BLOCK, codes=TRANSFER_CODES))
    with pytest.raises(ValueError, match=message):
        kernel.set_program(pack_rule(RuleType.LARGE_VALUE, outcome=Outcome.ALLOW, codes=2) + row)
    assert kernel.rule_count == 1
    assert one(kernel, T0).outcome == Outcome.BLOCK


def test_sixty_four_rules_fill_the_mask(make: Callable[..., Kernel]) -> None:
    rule = pack_rule(RuleType.LARGE_VALUE, outcome=Outcome.ALLOW, codes=TRANSFER_CODES)
    kernel = make(*[rule] * 64)
    verdict = one(kernel, T0)
    assert verdict.mask == 2**64 - 1 and len(verdict.seen) == 64


def test_a_concurrent_screen_is_refused_in_the_kernel() -> None:
    """The kernel keeps its busy flag across the nogil loop; the API says one caller at a
    time. A reentrant call is impossible from Python, so this checks the flag is reset."""
    kernel = RiskKernel(4)
    kernel.set_program(velocity(count_max=1))
    big = 100
    out = bytearray(big * VERDICT.size)
    assert kernel.screen(record() * big, context() * big, big, T0, out) == big - 1
    kernel.set_program(velocity(count_max=1))  # not busy any more


def test_the_backend_is_chosen_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    from limits.risk_reference import new_risk_kernel

    monkeypatch.delenv("TALLY_KERNEL", raising=False)
    assert isinstance(new_risk_kernel(4), RiskKernel)
    monkeypatch.setenv("TALLY_KERNEL", "reference")
    assert isinstance(new_risk_kernel(4), ReferenceRiskKernel)
    assert isinstance(new_risk_kernel(4, "kernel"), RiskKernel)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        new_risk_kernel(4, "fast")
