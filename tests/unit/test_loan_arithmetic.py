"""Loan arithmetic (ledger/loans.py): the worked examples of issue 16 and DOMAIN.md to the
fen, the due-day rule, the annualised rate, allocation, penalty interest and early
repayment, each checked by hand in its docstring, and every refusal of a bad argument."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import pytest

from ledger.interest import RATE_SCALE, date_of_day
from ledger.loans import (
    Instalment,
    Method,
    Schedule,
    allocate,
    apr_ppm,
    due_days,
    level_payment_minor,
    penalty_minor,
    prepay,
    schedule,
)
from limits.calendar import day_of_date

CNY = 100  # fen
RATE_3_45 = 34_500  # 3.45% in ppm
START = day_of_date(2025, 1, 10)  # a Friday; due on the 20th: the first period is 41 days
EI = Method.EQUAL_INSTALMENT
EP = Method.EQUAL_PRINCIPAL


def day(year: int, month: int, day_of_month: int) -> int:
    return day_of_date(year, month, day_of_month)


def worked(method: Method, **fees: int) -> Schedule:
    """100,000 CNY, 12 months, 3.45%, disbursed 2025-01-10, due on the 20th."""
    return schedule(10_000_000, RATE_3_45, 12, method, START, 20, **fees)


def totals(instalments: Sequence[Instalment]) -> list[int]:
    return [instalment.total_minor for instalment in instalments]


def worth(payments: Sequence[int], monthly_rate: Fraction) -> Fraction:
    """An independent oracle: the payments discounted at `monthly_rate`, in Fractions."""
    return sum(
        (Fraction(payment) / (1 + monthly_rate) ** k for k, payment in enumerate(payments, 1)),
        Fraction(0),
    )


# --- The worked examples ---------------------------------------------------------------


def test_equal_instalment_100000_cny_12_months_3_45_percent() -> None:
    """Equal instalment: A* = 848,988.2128 fen rounds to 8,489.88 for instalments 1..11.

    Instalment 1: interest 10,000,000 x 0.002875 = 28,750, principal 820,238. After 11
    instalments 846,559 fen remain; the 12th pays them with 846,559 x 0.002875 = 2,433.86
    -> 2,434 of interest: 848,993 (8,489.93), absorbing the rounding. Total interest
    11 x 848,988 + 848,993 - 10,000,000 = 187,861 fen = 1,878.61 CNY, within 2 fen of the
    1,878.6 of issue 16 (the exact annuity, 12 A* - P, is 187,858.55).
    """
    result = worked(EI)
    assert level_payment_minor(10_000_000, RATE_3_45, 12) == 848_988
    assert totals(result.instalments) == [848_988] * 11 + [848_993]
    first, last = result.instalments[0], result.instalments[-1]
    assert (first.principal_minor, first.interest_minor) == (820_238, 28_750)
    assert (last.principal_minor, last.interest_minor, last.remaining_minor) == (846_559, 2_434, 0)
    assert result.total_interest_minor == 187_861
    assert abs(result.total_interest_minor - 187_860) <= 2
    assert result.total_repaid_minor == 10_187_861
    assert (result.total_fees_minor, result.upfront_fee_minor) == (0, 0)


def test_equal_principal_100000_cny_12_months_3_45_percent() -> None:
    """Equal principal: 8,620.83 first (833,333 principal + 28,750 interest), 8,357.29 last
    (833,333 + 833,333 x 0.002875 = 2,395.83 -> 2,396).

    Total interest: the brief expects 1,868.75 and the rounding rule gives 1,868.76. The
    unrounded interests sum to exactly 186,875 fen (r x the sum of the balances, 65e6), the
    1,868.75 of issue 16; rounding half up per instalment, two of them are exact halves
    (7,500,000 x 0.002875 = 21,562.5 and 2,500,000 x 0.002875 = 7,187.5), both rounded up,
    and the other ten cancel out: 186,876. Rounding the principal by floor, ceiling or
    letting the last absorb it gives the same 186,876 (the balances are the same).
    """
    result = worked(EP)
    first, last = result.instalments[0], result.instalments[-1]
    assert first.total_minor == 862_083
    assert (first.principal_minor, first.interest_minor) == (833_333, 28_750)
    assert last.total_minor == 835_729
    assert (last.principal_minor, last.interest_minor) == (833_333, 2_396)
    principals = [instalment.principal_minor for instalment in result.instalments]
    assert principals == [833_333, 833_334, 833_333] * 4
    assert [instalment.interest_minor for instalment in result.instalments] == [
        28_750, 26_354, 23_958, 21_563, 19_167, 16_771,
        14_375, 11_979, 9_583, 7_188, 4_792, 2_396,
    ]  # fmt: skip
    monthly = Fraction(RATE_3_45, 12 * RATE_SCALE)
    balances = [i.remaining_minor + i.principal_minor for i in result.instalments]
    assert sum(balance * monthly for balance in balances) == 186_875  # unrounded
    assert result.total_interest_minor == 186_876


@pytest.mark.parametrize("method", list(Method))
def test_annualised_rate_without_fees_is_the_contract_rate(method: Method) -> None:
    """Without fees the annualised rate of the worked example is the contract rate 3.45%
    (34_500 ppm) for both methods: interest is the balance times the monthly rate, so
    the IRR is that rate, and rounding to the fen moves it far less than half a ppm."""
    assert worked(method).apr_ppm == RATE_3_45


def test_annualised_rate_with_an_upfront_fee() -> None:
    """10,000 CNY, 12 months, 0%, 100 CNY upfront: 9,900 received, 12 instalments of 833.33
    or 833.34. The monthly IRR i solves 990,000 = sum(p_k / (1+i)^k): 12 i = 1.8595%
    (18_595 ppm), the brief's "about 1.84%" to 0.02 points; a flat 100 / 9,900 over a
    year would say 1.01%, but the balance falls, so the fee weighs about twice as much.
    Checked by the Fraction oracle: the rate rounds to 18_595 and to nothing else."""
    result = schedule(1_000_000, 0, 12, EI, START, 20, upfront_fee_minor=10_000)
    assert result.total_interest_minor == 0
    assert (result.total_fees_minor, result.upfront_fee_minor) == (10_000, 10_000)
    assert result.total_repaid_minor == 1_000_000
    assert result.apr_ppm == 18_595
    payments = totals(result.instalments)
    assert worth(payments, Fraction(2 * 18_595 - 1, 24 * RATE_SCALE)) >= 990_000
    assert worth(payments, Fraction(2 * 18_595 + 1, 24 * RATE_SCALE)) < 990_000


def test_monthly_fee_is_in_every_instalment_and_raises_the_annualised_rate() -> None:
    """A 10 CNY monthly fee and a 50 CNY upfront fee on the worked example: every total is
    principal + interest + 1,000; the fees total 5,000 + 12 x 1,000; the customer repays
    principal + interest + periodic fees; the annualised rate rises above 3.45%."""
    result = worked(EI, upfront_fee_minor=5_000, monthly_fee_minor=1_000)
    assert totals(result.instalments) == [849_988] * 11 + [849_993]
    assert all(instalment.fee_minor == 1_000 for instalment in result.instalments)
    assert result.total_fees_minor == 17_000
    assert result.total_repaid_minor == 10_000_000 + 187_861 + 12_000
    assert result.apr_ppm > worked(EI, monthly_fee_minor=1_000).apr_ppm > RATE_3_45


def test_zero_rate_equal_instalment_splits_the_principal_like_equal_principal() -> None:
    """At 0% the equal instalment is P / n: 1,000,000 fen over 12 months is 83,333.33, paid
    with cumulative rounding (83,333 or 83,334), no interest, an annualised rate of 0."""
    result = schedule(1_000_000, 0, 12, EI, START, 20)
    assert level_payment_minor(1_000_000, 0, 12) == 83_333
    assert totals(result.instalments) == [83_333, 83_334, 83_333] * 4
    assert result.total_interest_minor == 0 and result.apr_ppm == 0


def test_rounding_can_repay_a_small_equal_instalment_loan_before_its_term() -> None:
    """17.82 CNY over 116 months at 0.4684%: A* = 15.715 fen rounds up to 16, so each
    instalment repays about 0.28 fen more than the annuity; the balance reaches zero at
    instalment 114, which pays the 8 fen left and is the last (no negative instalment)."""
    result = schedule(1_782, 4_684, 116, EI, START, 20)
    assert level_payment_minor(1_782, 4_684, 116) == 16
    assert len(result.instalments) == 114 and result.term_months == 116
    assert totals(result.instalments) == [16] * 113 + [8]
    assert result.instalments[-1].remaining_minor == 0


def test_the_last_equal_instalment_can_exceed_the_level_payment_by_more_than_n_fen() -> None:
    """The brief's bound "the last instalment within `term` fen of A" holds at 0% only:
    rounding errors compound at (1+r) a month. 100,000,000 CNY, 360 months, 24%: the last
    instalment is 25,417 fen above A = 200,160,441, against the bound
    sum((1.02)^j, j < 360) = 62,328 fen that the property test checks."""
    result = schedule(10**10, 240_000, 360, EI, START, 20)
    payment = level_payment_minor(10**10, 240_000, 360)
    assert payment == 200_160_441
    assert result.instalments[-1].total_minor - payment == 25_417 > 360


# --- Due days ---------------------------------------------------------------------------


def test_due_days_fall_on_the_repayment_day_from_the_next_month() -> None:
    """Disbursed 2025-01-10, due on the 20th for 12 months: 2025-02-20 (41 days later)
    through 2026-01-20, one a month."""
    days = due_days(START, 12, 20)
    assert [date_of_day(each).isoformat() for each in days] == [
        f"2025-{month:02d}-20" for month in range(2, 13)
    ] + ["2026-01-20"]


@pytest.mark.parametrize(
    ("start", "first_due"),
    [
        ((2025, 1, 21), (2025, 2, 5)),  # 15 days: the minimum, kept
        ((2025, 1, 22), (2025, 3, 5)),  # 14 days: moves a month later
        ((2025, 1, 31), (2025, 3, 5)),  # 5 days: moves
    ],
)
def test_first_due_day_at_least_15_days_after_the_start(
    start: tuple[int, int, int], first_due: tuple[int, int, int]
) -> None:
    """Repayment day 5: a first due day less than 15 days after the start moves one month
    later, and every later due day with it (they stay a month apart)."""
    days = due_days(day(*start), 3, 5)
    assert days[0] == day(*first_due)
    assert days[1] == day(first_due[0], first_due[1] + 1, 5)


def test_due_days_on_the_28th_exist_in_every_month() -> None:
    """Repayment day 28 from 2024-01-31: 2024-02-28 (28 days), then the 28th of every month."""
    days = due_days(day(2024, 1, 31), 13, 28)
    assert days[0] == day(2024, 2, 28)
    assert days[-1] == day(2025, 2, 28)


def test_due_days_past_the_last_day_number_are_refused() -> None:
    """Day numbers end on 2179-06-06: a schedule due on 2179-06-05 fits, one due on
    2179-07-05 is refused with the date named."""
    assert due_days(day(2178, 12, 1), 6, 5)[-1] == day(2179, 6, 5)
    with pytest.raises(ValueError, match=r"ends on 2179-07-05, past the last day number"):
        due_days(day(2178, 12, 1), 7, 5)


# --- Bad arguments ----------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "principal_minor": 10_000_000,
    "annual_rate": RATE_3_45,
    "term_months": 12,
    "method": EI,
    "start_day": START,
    "repayment_day": 20,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"principal_minor": 0}, r"principal_minor must be in 1\.\.10+ fen, not 0"),
        ({"principal_minor": -5}, r"principal_minor must be in 1\.\.10+ fen, not -5"),
        ({"principal_minor": True}, r"principal_minor must be an integer, not bool"),
        ({"principal_minor": 10.0}, r"principal_minor must be an integer, not float"),
        ({"term_months": 0}, r"term_months must be in 1\.\.360, not 0"),
        ({"term_months": 361}, r"term_months must be in 1\.\.360, not 361"),
        ({"annual_rate": -1}, r"annual_rate must be in 0\.\.1000000 ppm .*, not -1"),
        ({"annual_rate": 1_000_001}, r"annual_rate must be in 0\.\.1000000 ppm .*, not 1000001"),
        ({"repayment_day": 0}, r"repayment_day must be in 1\.\.28 .*, not 0"),
        ({"repayment_day": 29}, r"repayment_day must be in 1\.\.28 .*, not 29"),
        ({"method": "bullet"}, r'method must be one of "equal_instalment", "equal_principal"'),
        ({"start_day": -1}, r"start_day must be a day number in 0\.\.65535, not -1"),
        ({"upfront_fee_minor": 10_000_000}, r"upfront_fee_minor 10000000 must be less than"),
        ({"monthly_fee_minor": -1}, r"monthly_fee_minor must be >= 0, not -1"),
    ],
)
def test_bad_schedule_arguments_are_refused_with_a_precise_message(
    change: dict[str, Any], message: str
) -> None:
    """Each argument out of range raises ValueError naming it, its range and the value."""
    with pytest.raises(ValueError, match=message):
        schedule(**{**GOOD, **change})


def test_method_may_be_given_as_its_product_file_spelling() -> None:
    """The catalog holds methods as strings: "equal_principal" is Method.EQUAL_PRINCIPAL."""
    result = schedule(**{**GOOD, "method": "equal_principal"})
    assert result.method is EP
    assert result == worked(EP)


# --- The annualised rate ----------------------------------------------------------------


def test_apr_of_one_payment_and_a_rounding_tie() -> None:
    """One payment of 101 for 100 received is 1% a month, 12% a year (120_000 ppm). A
    monthly rate of 1,999 / 24e6 is 999.5 ppm a year exactly: half up gives 1,000."""
    assert apr_ppm(100, [101]) == 120_000
    assert apr_ppm(24_000_000, [24_001_999]) == 1_000
    assert apr_ppm(24_000_000, [24_001_998]) == 999
    assert apr_ppm(500, [500]) == 0


@pytest.mark.parametrize(
    ("received", "payments", "message"),
    [
        (0, [100], r"received_minor must be > 0"),
        (-1, [100], r"received_minor must be >= 0, not -1"),
        (100, [], r"there must be 1\.\.360 payments, not 0"),
        (100, [1] * 361, r"there must be 1\.\.360 payments, not 361"),
        (100, [101, -1], r"payments\[1\] must be >= 0, not -1"),
        (100, [60, 39], r"the payments \(99 fen\) repay less than was received \(100 fen\)"),
    ],
)
def test_apr_refuses_what_has_no_annualised_rate(
    received: int, payments: list[int], message: str
) -> None:
    """Nothing received, no payments, a negative payment, or payments worth less than the
    amount received (a negative rate) raise ValueError saying which."""
    with pytest.raises(ValueError, match=message):
        apr_ppm(received, payments)


# --- Allocation -------------------------------------------------------------------------


def test_allocation_pays_each_due_in_full_in_the_given_order() -> None:
    """1,000 fen into penalty 120, interest 300, principal 5,000 (Civil Code art. 561's
    order): 120, 300, then the 580 left to principal; nothing over."""
    paid, left = allocate(1_000, (("penalty", 120), ("interest", 300), ("principal", 5_000)))
    assert paid == (("penalty", 120), ("interest", 300), ("principal", 580))
    assert left == 0


def test_allocation_stops_at_a_partly_paid_due_and_returns_the_excess() -> None:
    """200 fen into the same dues pays the penalty, 80 of the interest and no principal;
    6,000 fen pays everything and leaves 580 over (the service refuses or applies it)."""
    dues = (("penalty", 120), ("interest", 300), ("principal", 5_000))
    assert allocate(200, dues) == ((("penalty", 120), ("interest", 80), ("principal", 0)), 0)
    assert allocate(6_000, dues) == (
        (("penalty", 120), ("interest", 300), ("principal", 5_000)),
        580,
    )
    reordered = (("principal", 100), ("penalty", 10))
    assert allocate(50, reordered) == ((("principal", 50), ("penalty", 0)), 0)


@pytest.mark.parametrize(
    ("amount", "dues", "message"),
    [
        (-1, (("interest", 1),), r"amount_minor must be >= 0, not -1"),
        (10, (("interest", -1),), r"due 'interest' must be >= 0, not -1"),
        (10, (("interest", 1), ("interest", 2)), r"each due is named once"),
    ],
)
def test_allocation_refuses_negative_amounts_and_repeated_names(
    amount: int, dues: tuple[tuple[str, int], ...], message: str
) -> None:
    """A negative amount or due, or a due named twice, is a caller's bug: ValueError."""
    with pytest.raises(ValueError, match=message):
        allocate(amount, dues)


# --- Penalty interest -------------------------------------------------------------------


def test_penalty_on_the_first_worked_instalment_10_days_overdue() -> None:
    """Instalment 1 of the equal-instalment example unpaid: 820,238 principal + 28,750
    interest = 848,988 fen, penalty rate 3.45% x 1.5 = 5.175% (uplift 50%), 10 days of a
    360-day year: 848,988 x 0.05175 x 10 / 360 = 1,220.42 -> 1,220 fen. With a 30% uplift
    (4.485%): 848,988 x 0.04485 x 10 / 360 = 1,057.70 -> 1,058."""
    assert penalty_minor(820_238, 28_750, RATE_3_45, 500, 10) == 1_220
    assert penalty_minor(820_238, 28_750, RATE_3_45, 300, 10) == 1_058
    assert penalty_minor(820_238, 28_750, RATE_3_45, 500, 0) == 0
    assert penalty_minor(0, 0, RATE_3_45, 500, 10) == 0


def test_penalty_rounds_once_over_the_span() -> None:
    """100,000 fen at 5.175% for one day is 14.375 -> 14; for two days once, 28.75 -> 29,
    not 14 + 14: the daily loop (days=1 per day) rounds daily, by design of the caller."""
    assert penalty_minor(100_000, 0, RATE_3_45, 500, 1) == 14
    assert penalty_minor(100_000, 0, RATE_3_45, 500, 2) == 29
    assert penalty_minor(60_000, 40_000, RATE_3_45, 500, 2) == 29  # interest accrues alike


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((-1, 0, RATE_3_45, 500, 1), r"overdue_principal_minor must be >= 0, not -1"),
        ((0, -1, RATE_3_45, 500, 1), r"overdue_interest_minor must be >= 0, not -1"),
        ((1, 0, -1, 500, 1), r"annual_rate must be in 0\.\.1000000 ppm"),
        ((1, 0, RATE_3_45, 1_001, 1), r"uplift_permille must be in 0\.\.1000, not 1001"),
        ((1, 0, RATE_3_45, -1, 1), r"uplift_permille must be in 0\.\.1000, not -1"),
        ((1, 0, RATE_3_45, 500, -1), r"days must be >= 0, not -1"),
    ],
)
def test_penalty_refuses_bad_arguments(arguments: tuple[int, ...], message: str) -> None:
    """Each out-of-range argument of `penalty_minor` raises ValueError naming it."""
    with pytest.raises(ValueError, match=message):
        penalty_minor(*arguments)


# --- Early repayment --------------------------------------------------------------------

PREPAY_DAY = day(2025, 5, 5)  # 15 days after instalment 3 (2025-04-20)


def test_prepay_equal_instalment_reduce_instalment() -> None:
    """The equal-instalment example, instalments 1..3 paid, 50,000 CNY on 2025-05-05.

    Remaining after instalment 3: 7,532,205 fen. Interest for 2025-04-20..05-05 (15 days):
    7,532,205 x 3.45% x 15 / 360 = 10,827.54 -> 10,828, paid first; the other 4,989,172
    repay principal: 2,543,033 remain. The 9 remaining instalments keep their numbers
    and days; the level payment over 9 months is A* = 286,636.56 -> 286,637. Instalment 4
    (2025-05-20) charges the 15 days from the prepayment: 2,543,033 x 3.45% x 15 / 360 =
    3,655.61 -> 3,656, so principal 282,981; instalment 5 a month on 2,260,052: 6,497.65
    -> 6,498. The last (12, 2026-01-20) pays the 282,081 left + 810.98 -> 811 = 282,892.
    """
    charged, remainder = prepay(worked(EI), 3, PREPAY_DAY, 5_000_000, "reduce_instalment")
    assert charged == 10_828
    assert remainder.principal_minor == 2_543_033
    assert remainder.start_day == PREPAY_DAY
    assert remainder.term_months == 9
    assert [instalment.number for instalment in remainder.instalments] == list(range(4, 13))
    assert [i.due_day for i in remainder.instalments] == list(due_days(START, 12, 20)[3:])
    fourth, fifth, last = (
        remainder.instalments[0],
        remainder.instalments[1],
        remainder.instalments[-1],
    )
    assert (fourth.principal_minor, fourth.interest_minor, fourth.total_minor) == (
        282_981,
        3_656,
        286_637,
    )
    assert (fifth.interest_minor, fifth.total_minor) == (6_498, 286_637)
    assert totals(remainder.instalments) == [286_637] * 8 + [282_892]
    assert (last.principal_minor, last.interest_minor) == (282_081, 811)
    assert sum(i.principal_minor for i in remainder.instalments) == 2_543_033
    assert remainder.upfront_fee_minor == 0


def test_prepay_equal_instalment_reduce_term() -> None:
    """The same prepayment keeping the payment (8,489.88): 2,543,033 fen over 3 months
    would need 852,556 a month (above it), over 4 months 640,334 (not above): the term
    shrinks to 4 instalments (4..7, last on 2025-08-20) of 640,334, the last 636,649."""
    charged, remainder = prepay(worked(EI), 3, PREPAY_DAY, 5_000_000, "reduce_term")
    assert charged == 10_828
    assert level_payment_minor(2_543_033, RATE_3_45, 3) == 852_556 > 848_988
    assert remainder.term_months == 4
    assert [instalment.number for instalment in remainder.instalments] == [4, 5, 6, 7]
    assert remainder.instalments[-1].due_day == day(2025, 8, 20)
    assert totals(remainder.instalments) == [640_334] * 3 + [636_649]
    assert remainder.instalments[0].interest_minor == 3_656  # the same 15 days


@pytest.mark.parametrize(
    ("mode", "principals"),
    [
        ("reduce_instalment", [278_976, 278_975, 278_976] * 3),  # 2,510,781 / 9 = 278,975.67
        ("reduce_term", [627_695, 627_696, 627_695, 627_695]),  # / 4 = 627,695.25
    ],
)
def test_prepay_equal_principal(mode: Any, principals: list[int]) -> None:
    """Equal principal, instalments 1..3 paid (7,500,000 fen left), 50,000 CNY on
    2025-05-05: interest 7,500,000 x 0.0014375 = 10,781.25 -> 10,781, leaving 2,510,781.
    reduce_instalment spreads it over the 9 remaining months; reduce_term keeps at most
    the per-period principal 833,333.33: ceil(2,510,781 / 833,333.33) = 4 months.
    The first new instalment charges 15 days: 2,510,781 x 0.0014375 = 3,609.25 -> 3,609."""
    charged, remainder = prepay(worked(EP), 3, PREPAY_DAY, 5_000_000, mode)
    assert charged == 10_781
    assert remainder.principal_minor == 2_510_781
    assert [instalment.principal_minor for instalment in remainder.instalments] == principals
    assert remainder.instalments[0].interest_minor == 3_609


@pytest.mark.parametrize("mode", ["reduce_instalment", "reduce_term"])
def test_prepaying_everything_owed_closes_the_loan(mode: Any) -> None:
    """7,532,205 principal + 10,828 interest = 7,543,033 fen on 2025-05-05 clears the loan:
    no instalment is left, nothing more is owed."""
    charged, remainder = prepay(worked(EI), 3, PREPAY_DAY, 7_543_033, mode)
    assert charged == 10_828
    assert remainder.instalments == ()
    assert (remainder.principal_minor, remainder.term_months) == (0, 0)
    assert (remainder.total_repaid_minor, remainder.total_interest_minor) == (0, 0)


def test_prepaying_more_than_is_owed_is_refused_naming_the_maximum() -> None:
    """One fen more than the 7,543,033 owed on 2025-05-05 raises ValueError with the
    maximum, so the service can offer it (or take the excess as full repayment)."""
    with pytest.raises(ValueError, match=r"more than the 7543033 fen owed .*at most 7543033"):
        prepay(worked(EI), 3, PREPAY_DAY, 7_543_034, "reduce_instalment")


@pytest.mark.parametrize(
    ("paid_through", "on_day", "amount", "mode", "message"),
    [
        (3, PREPAY_DAY, 10_828, "reduce_term", r"more than the 10828 fen of interest"),
        (3, day(2025, 4, 19), 100_000, "reduce_term", r"must be in \d+\.\.\d+: on or after"),
        (3, day(2025, 5, 20), 100_000, "reduce_term", r"before instalment 4 falls due"),
        (12, PREPAY_DAY, 100_000, "reduce_term", r"paid_through must be in 0\.\.11"),
        (-1, PREPAY_DAY, 100_000, "reduce_term", r"paid_through must be in 0\.\.11"),
        (3, PREPAY_DAY, 100_000, "shorter", r'mode must be "reduce_instalment" or'),
        (3, PREPAY_DAY, -1, "reduce_term", r"amount_minor must be >= 0, not -1"),
    ],
)
def test_prepay_refuses_bad_arguments(
    paid_through: int, on_day: int, amount: int, mode: Any, message: str
) -> None:
    """An amount that repays no principal, a day outside the current period (before the
    last due day, or on the next one: that instalment is collected first), a paid_through
    outside the schedule, an unknown mode: ValueError saying which."""
    with pytest.raises(ValueError, match=message):
        prepay(worked(EI), paid_through, on_day, amount, mode)


def test_a_remainder_can_be_prepaid_again_and_a_closed_loan_cannot() -> None:
    """After the 2025-05-05 prepayment, 10,000 CNY more on 2025-05-10 (paid_through 0 of
    the remainder, which starts on 05-05): 5 days on 2,543,033 at 3.45% / 360 = 1,218.54
    -> 1,219 of interest; 1,544,252 fen remain over instalments 4..12. A closed loan
    has nothing to prepay."""
    _, remainder = prepay(worked(EI), 3, PREPAY_DAY, 5_000_000, "reduce_instalment")
    charged, again = prepay(remainder, 0, day(2025, 5, 10), 1_000_000, "reduce_instalment")
    assert charged == 1_219
    assert again.principal_minor == 2_543_033 - (1_000_000 - 1_219) == 1_544_252
    assert [instalment.number for instalment in again.instalments] == list(range(4, 13))
    _, closed = prepay(worked(EI), 3, PREPAY_DAY, 7_543_033, "reduce_term")
    with pytest.raises(ValueError, match=r"the loan is repaid"):
        prepay(closed, 0, PREPAY_DAY, 1, "reduce_term")


def test_prepay_on_the_disbursement_day_charges_no_interest() -> None:
    """Prepaying 50,000 CNY on the start day charges 0 days of interest; the first new
    instalment then charges the 41 days to 2025-02-20 on 5,000,000: 5,000,000 x 3.45% x
    41 / 360 = 19,645.83 -> 19,646."""
    charged, remainder = prepay(worked(EI), 0, START, 5_000_000, "reduce_instalment")
    assert charged == 0
    assert remainder.principal_minor == 5_000_000
    assert remainder.instalments[0].interest_minor == 19_646
    assert len(remainder.instalments) == 12
