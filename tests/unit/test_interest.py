"""Interest arithmetic (ledger/interest.py, limits/rates.py): the worked examples of
issue 14 and DOMAIN.md to the fen, leap years, settlement-quarter boundaries, month
arithmetic, rounding and rate parsing."""

from __future__ import annotations

import datetime
from fractions import Fraction

import pytest

from ledger.interest import (
    ACCRUAL_DENOMINATOR,
    RATE_MAX,
    RATE_SCALE,
    UNITS_PER_FEN,
    DayCount,
    SettlementSchedule,
    accrued_units,
    add_months,
    daily_units,
    date_of_day,
    day_of_date,
    day_weight,
    early_withdrawal_interest,
    fen_of_units,
    format_rate,
    interest_for_days,
    is_settlement_day,
    maturity_day,
    parse_rate,
    period_end_day,
    period_start_day,
    round_half_up,
    settlement_period,
    term_interest,
)
from limits.deposits import Term, load_catalog
from tests.repo_paths import REPO_ROOT

CNY = 100  # fen


def day(year: int, month: int, day_of_month: int) -> int:
    return day_of_date(datetime.date(year, month, day_of_month))


def accrue_day_by_day(principal: int, rate: int, start: int, end: int, count: DayCount) -> int:
    """What the day-end kernel does: add one day's units per day, round once."""
    units = 0
    for each in range(start, end):
        units += daily_units(principal, rate, day_weight(count, each))
    return fen_of_units(units)


def half_up(value: Fraction) -> int:
    """An independent oracle for rounding half away from zero."""
    magnitude = int(abs(value) + Fraction(1, 2))  # int() truncates toward zero
    return magnitude if value >= 0 else -magnitude


# --- The worked examples ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected_fen"),
    [(DayCount.ACT_360, 506), (DayCount.ACT_365, 499)],
)
def test_demand_10000_cny_91_days_at_0_20_percent(count: DayCount, expected_fen: int) -> None:
    """10,000 CNY for 91 days at 0.20% earns 5.06 on a 360-day year and 4.99 on 365
    (DOMAIN.md), both by the span formula and by the kernel's day-by-day accrual."""
    start = day(2025, 3, 21)
    rate = parse_rate("0.20%")
    assert rate == 2_000
    assert interest_for_days(10_000 * CNY, rate, start, start + 91, count) == expected_fen
    assert accrue_day_by_day(10_000 * CNY, rate, start, start + 91, count) == expected_fen


def test_fixed_50000_cny_1_year_at_0_95_percent() -> None:
    """A 1-year fixed deposit of 50,000 CNY at 0.95% pays 475.00 at maturity, whatever the
    number of days in the year (simple interest by months)."""
    assert term_interest(50_000 * CNY, parse_rate("0.95%"), 12) == 47_500
    assert term_interest(50_000 * CNY, parse_rate("0.95%"), Term.Y1.months) == 47_500


def test_early_withdrawal_after_100_days_at_the_demand_rate() -> None:
    """That deposit withdrawn after 100 days earns the 0.05% demand rate of the withdrawal
    day on a 360-day year: 6.94, taking the rates from the shipped catalog."""
    catalog = load_catalog(REPO_ROOT / "core" / "data" / "deposits.toml")
    open_day = day(2025, 6, 3)
    withdrawal_day = open_day + 100
    assert catalog.demand_rate(withdrawal_day) == 500
    assert catalog.fixed_day_count is DayCount.ACT_360
    fixed_rate = catalog.fixed_rate(Term.Y1, open_day)
    assert fixed_rate == 9_500
    earned = early_withdrawal_interest(
        50_000 * CNY,
        open_day=open_day,
        withdrawal_day=withdrawal_day,
        demand_rate=catalog.demand_rate(withdrawal_day),
        day_count=catalog.fixed_day_count,
        fixed_rate=fixed_rate,
        term_months=Term.Y1.months,
    )
    assert earned == 694
    assert interest_for_days(50_000 * CNY, 500, open_day, withdrawal_day, DayCount.ACT_360) == 694


def test_early_withdrawal_never_pays_more_than_maturity_even_if_demand_rates_rise() -> None:
    """A later rate set may put the demand rate above an old deposit's fixed rate: the
    early-withdrawal interest is then capped at what maturity would pay."""
    open_day = day(2025, 1, 1)  # a 3-month term: 90 days to 2025-04-01
    fixed_rate = parse_rate("0.65%")
    uncapped = interest_for_days(
        1_000_000 * CNY, parse_rate("2.00%"), open_day, open_day + 89, DayCount.ACT_360
    )
    capped = early_withdrawal_interest(
        1_000_000 * CNY,
        open_day=open_day,
        withdrawal_day=open_day + 89,
        demand_rate=parse_rate("2.00%"),
        day_count=DayCount.ACT_360,
        fixed_rate=fixed_rate,
        term_months=3,
    )
    at_maturity = term_interest(1_000_000 * CNY, fixed_rate, 3)
    assert uncapped > at_maturity
    assert capped == at_maturity == 162_500


def test_early_withdrawal_refuses_a_day_at_or_after_maturity() -> None:
    """Withdrawing on the maturity day is a maturity, not an early withdrawal."""
    open_day = day(2025, 5, 20)
    with pytest.raises(AssertionError):
        early_withdrawal_interest(
            100,
            open_day=open_day,
            withdrawal_day=maturity_day(open_day, 3),
            demand_rate=500,
            day_count=DayCount.ACT_360,
            fixed_rate=6_500,
            term_months=3,
        )


# --- Day counts and leap years ------------------------------------------------------------


def test_day_weights() -> None:
    """Every basis divides the accrual denominator: 360 -> 4453, 365 -> 4392, leap-year
    actual -> 4380; actual/actual follows the calendar year of each day."""
    assert ACCRUAL_DENOMINATOR == 1_603_080 == 360 * 4453 == 365 * 4392 == 366 * 4380
    assert UNITS_PER_FEN == RATE_SCALE * ACCRUAL_DENOMINATOR
    assert day_weight(DayCount.ACT_360, day(2024, 2, 29)) == 4453
    assert day_weight(DayCount.ACT_365, day(2024, 2, 29)) == 4392
    assert day_weight(DayCount.ACT_ACT, day(2024, 2, 29)) == 4380
    assert day_weight(DayCount.ACT_ACT, day(2024, 12, 31)) == 4380
    assert day_weight(DayCount.ACT_ACT, day(2025, 1, 1)) == 4392
    assert day_weight(DayCount.ACT_ACT, day(2000, 6, 1)) == 4380  # divisible by 400: leap
    assert day_weight(DayCount.ACT_ACT, day(2100, 6, 1)) == 4392  # divisible by 100: not


@pytest.mark.parametrize(
    ("count", "expected_fen"),
    [
        (DayCount.ACT_ACT, 10_000),  # a whole leap year pays exactly the annual rate
        (DayCount.ACT_365, 10_027),  # 366/365 of it: 10,027.40
        (DayCount.ACT_360, 10_167),  # 366/360 of it: 10,166.67
    ],
)
def test_a_whole_leap_year(count: DayCount, expected_fen: int) -> None:
    """1,000,000 fen at 1% over all 366 days of 2024."""
    start, end = day(2024, 1, 1), day(2025, 1, 1)
    assert end - start == 366
    assert interest_for_days(1_000_000, parse_rate("1%"), start, end, count) == expected_fen
    assert accrue_day_by_day(1_000_000, parse_rate("1%"), start, end, count) == expected_fen


def test_actual_actual_over_february_29() -> None:
    """Feb 28 to Mar 1 2024 is two days (Feb 29 counted) at 1/366 each; the same dates in
    2025 are one day at 1/365."""
    principal, rate = 3_660_000 * CNY, parse_rate("1%")  # 100 CNY a day in 2024
    assert interest_for_days(principal, rate, day(2024, 2, 28), day(2024, 3, 1),
                             DayCount.ACT_ACT) == 20_000  # fmt: skip
    assert (
        interest_for_days(principal, rate, day(2025, 2, 28), day(2025, 3, 1), DayCount.ACT_ACT)
        == 10_027
    )  # 36,600 CNY a year / 365: 100.27 CNY
    assert interest_for_days(principal, rate, day(2024, 2, 29), day(2024, 3, 1),
                             DayCount.ACT_ACT) == 10_000  # fmt: skip


def test_actual_actual_across_january_1_of_a_leap_year() -> None:
    """2023-12-01 to 2024-02-01: 31 days at 1/365 and 31 at 1/366, summed exactly and
    rounded once (12,739.73 + 12,704.92 = 25,444.64 -> 25,445 fen)."""
    principal, rate = 100_000 * CNY, parse_rate("1.50%")
    start, end = day(2023, 12, 1), day(2024, 2, 1)
    expected = half_up(
        Fraction(principal * rate, RATE_SCALE) * (Fraction(31, 365) + Fraction(31, 366))
    )
    assert expected == 25_445
    assert interest_for_days(principal, rate, start, end, DayCount.ACT_ACT) == expected
    assert accrue_day_by_day(principal, rate, start, end, DayCount.ACT_ACT) == expected


def test_one_rounding_not_one_per_day() -> None:
    """Daily interest below half a fen is kept, not rounded away: 100 CNY at 0.05% earns
    0.014 fen a day (0 if each day were rounded) and 5 fen over 360 days; a span's units
    are exactly the sum of its parts' units."""
    principal, rate = 100 * CNY, 500
    start = day(2025, 1, 1)
    assert fen_of_units(daily_units(principal, rate, day_weight(DayCount.ACT_360, start))) == 0
    assert interest_for_days(principal, rate, start, start + 360, DayCount.ACT_360) == 5
    middle, end = start + 100, start + 360
    assert accrued_units(principal, rate, start, middle, DayCount.ACT_ACT) + accrued_units(
        principal, rate, middle, end, DayCount.ACT_ACT
    ) == accrued_units(principal, rate, start, end, DayCount.ACT_ACT)


def test_units_fit_the_kernels_int128() -> None:
    """The largest balance at the largest rate accrues for the whole day range inside a
    signed 128-bit integer (the kernel's `__int128`)."""
    largest_day = daily_units(2**62, RATE_MAX, day_weight(DayCount.ACT_360, 0))
    assert largest_day * 65536 < 2**127


# --- Settlement quarters ------------------------------------------------------------------


def test_quarter_boundaries() -> None:
    """A period ends on the 20th of Mar/Jun/Sep/Dec inclusive; Dec 21..31 belong to the
    next year's first period."""
    assert settlement_period(day(2025, 3, 20)) == 2025 * 4 + 0
    assert settlement_period(day(2025, 3, 21)) == 2025 * 4 + 1
    assert settlement_period(day(2025, 6, 20)) == 2025 * 4 + 1
    assert settlement_period(day(2025, 6, 21)) == 2025 * 4 + 2
    assert settlement_period(day(2025, 9, 20)) == 2025 * 4 + 2
    assert settlement_period(day(2025, 12, 20)) == 2025 * 4 + 3
    assert settlement_period(day(2025, 12, 21)) == 2026 * 4 + 0
    assert settlement_period(day(2025, 12, 31)) == 2026 * 4 + 0
    assert settlement_period(day(2026, 1, 1)) == 2026 * 4 + 0
    assert settlement_period(day(2024, 2, 29)) == 2024 * 4 + 0
    assert date_of_day(period_end_day(2026 * 4 + 0)) == datetime.date(2026, 3, 20)
    assert date_of_day(period_start_day(2026 * 4 + 0)) == datetime.date(2025, 12, 21)
    assert date_of_day(period_end_day(2025 * 4 + 3)) == datetime.date(2025, 12, 20)
    assert is_settlement_day(day(2025, 3, 20)) and is_settlement_day(day(2025, 12, 20))
    assert not is_settlement_day(day(2025, 3, 21)) and not is_settlement_day(day(2025, 1, 20))


def test_periods_tile_the_calendar() -> None:
    """Over 2023..2028, every day is in exactly one period, periods follow each other
    without gaps, and each ends on its settlement day."""
    first, last = day(2023, 1, 1), day(2029, 1, 1)
    for each in range(first, last):
        period = settlement_period(each)
        assert period_start_day(period) <= each <= period_end_day(period)
        if is_settlement_day(each):
            assert period_end_day(period) == each
            assert settlement_period(each + 1) == period + 1
        else:
            assert settlement_period(each + 1) == period


def test_other_settlement_schedule() -> None:
    """A catalog may settle on another day of other quarter months: the 21st of Jan, Apr,
    Jul and Oct closes periods 0..3, and Oct 22.. belong to next year's period 0."""
    schedule = SettlementSchedule(first_month=1, day_of_month=21)
    assert settlement_period(day(2025, 1, 21), schedule) == 2025 * 4
    assert settlement_period(day(2025, 1, 22), schedule) == 2025 * 4 + 1
    assert settlement_period(day(2025, 10, 22), schedule) == 2026 * 4
    assert is_settlement_day(day(2025, 7, 21), schedule)
    assert not is_settlement_day(day(2025, 6, 20), schedule)


# --- Months ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        ((2025, 1, 31), 1, (2025, 2, 28)),
        ((2024, 1, 31), 1, (2024, 2, 29)),
        ((2024, 2, 29), 12, (2025, 2, 28)),
        ((2024, 2, 29), 48, (2028, 2, 29)),
        ((2025, 8, 31), 6, (2026, 2, 28)),
        ((2025, 3, 31), 1, (2025, 4, 30)),
        ((2025, 12, 15), 3, (2026, 3, 15)),
        ((2025, 5, 20), 60, (2030, 5, 20)),
        ((2025, 3, 31), -1, (2025, 2, 28)),
    ],
)
def test_add_months_clamps_to_the_month_end(
    start: tuple[int, int, int], months: int, expected: tuple[int, int, int]
) -> None:
    """Same day of the month, or the last day of a shorter month."""
    assert date_of_day(add_months(day(*start), months)) == datetime.date(*expected)


def test_maturity_day_of_a_term() -> None:
    """A 1-year deposit opened 2025-05-20 matures 2026-05-20; 5 years from a Feb 29 end on
    Feb 28."""
    assert date_of_day(maturity_day(day(2025, 5, 20), Term.Y1.months)) == datetime.date(2026, 5, 20)
    assert date_of_day(maturity_day(day(2024, 2, 29), Term.Y5.months)) == datetime.date(2029, 2, 28)


def test_day_numbers() -> None:
    """Day 0 is 2000-01-01 and day 65535 is 2179-06-06 (the kernel's u16 range)."""
    assert day_of_date(datetime.date(2000, 1, 1)) == 0
    assert date_of_day(65535) == datetime.date(2179, 6, 6)
    assert date_of_day(day(2024, 2, 29)) == datetime.date(2024, 2, 29)


# --- Rounding and rates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [(5, 2, 3), (-5, 2, -3), (4, 2, 2), (7, 3, 2), (-7, 3, -2), (1, 2, 1), (1, 3, 0),
     (-1, 2, -1), (0, 7, 0), (149, 100, 1), (150, 100, 2)],
)  # fmt: skip
def test_round_half_up(numerator: int, denominator: int, expected: int) -> None:
    """Halves go away from zero, everything else to the nearest integer."""
    assert round_half_up(numerator, denominator) == expected


def test_fen_of_units_rounds_half_a_fen_up() -> None:
    """Exactly half a fen of accrued units settles as one fen; a unit less as none."""
    assert UNITS_PER_FEN % 2 == 0
    assert fen_of_units(UNITS_PER_FEN // 2) == 1
    assert fen_of_units(UNITS_PER_FEN // 2 - 1) == 0
    assert fen_of_units(3 * UNITS_PER_FEN) == 3


@pytest.mark.parametrize(
    ("text", "rate"),
    [("0.05%", 500), ("0.95%", 9_500), ("1.30%", 13_000), ("0.20%", 2_000), ("0%", 0),
     ("1%", 10_000), ("0.0001%", 1), ("100%", 1_000_000), ("1.5500%", 15_500)],
)  # fmt: skip
def test_parse_rate(text: str, rate: int) -> None:
    """Exact percentages become integers at RATE_SCALE; format_rate writes them back."""
    assert parse_rate(text) == rate
    assert parse_rate(format_rate(rate)) == rate


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0.05, "string"),
        (5, "string"),
        ("-0.05%", "negative"),
        ("0.00001%", "finer than 0.0001%"),
        ("0.05", "not a rate"),
        ("0.05 %", "not a rate"),
        (" 0.05%", "not a rate"),
        ("+0.05%", "not a rate"),
        ("5e-2%", "not a rate"),
        ("0,05%", "not a rate"),
        ("100.0001%", "above 100%"),
    ],
)
def test_parse_rate_refuses(value: object, reason: str) -> None:
    """Floats, integers, signs, exponents, spaces and sub-0.0001% rates are refused."""
    with pytest.raises(ValueError, match=reason):
        parse_rate(value)  # type: ignore[arg-type]


def test_format_rate() -> None:
    """Rates are shown with at least two decimals, never rounded."""
    assert format_rate(500) == "0.05%"
    assert format_rate(13_000) == "1.30%"
    assert format_rate(1) == "0.0001%"
    assert format_rate(12_345) == "1.2345%"
    assert format_rate(0) == "0.00%"


def test_day_count_labels() -> None:
    """The catalog's spellings map to the numbers the kernel and the rows store."""
    assert DayCount.from_label("360") is DayCount.ACT_360 == 1
    assert DayCount.from_label("365") is DayCount.ACT_365 == 2
    assert DayCount.from_label("actual") is DayCount.ACT_ACT == 3
    assert [count.label for count in DayCount] == ["360", "365", "actual"]
    with pytest.raises(ValueError, match="unknown day count"):
        DayCount.from_label("366")
