"""Interest arithmetic in integers: what a deposit earns, to the fen, with one rounding.

Every amount here is an `int`. Money is fen; a rate is the annual rate times
`RATE_SCALE` (0.05% is 500); a day is a day number (days since 2000-01-01, the
kernel's business day). No float ever touches a rate or an amount, and `Decimal`
appears only where a rate is read from text (`parse_rate`).

Demand (savings) interest accrues daily and exactly: one day on a balance of
`balance` fen adds `balance * rate * day_weight(day_count, day)` units, a unit being
1 / UNITS_PER_FEN fen (UNITS_PER_FEN = RATE_SCALE * ACCRUAL_DENOMINATOR). The
day-end kernel adds these units per account (an `__int128` in C: a balance near
2**62 fen times a rate and a weight needs more than 64 bits) and settlement turns
the sum into fen once, rounding half up (`fen_of_units`). `interest_for_days` is the
same computation for a span of days, so a quote, an early withdrawal and the
kernel's accrual agree to the fen:

    fen_of_units(sum(daily_units(p, r, day_weight(dc, d)) for d in range(a, b)))
        == interest_for_days(p, r, a, b, dc)

Fixed deposits earn simple interest by months (`term_interest`): a 1-year deposit
earns one year's rate whatever the number of days, as Chinese banks pay it. Early
withdrawal earns the demand rate of the withdrawal day on the days held
(`early_withdrawal_interest`).

Worked examples (DOMAIN.md, issue 14), all in tests/unit/test_interest.py:
10,000 CNY for 91 days at 0.20% is 5.06 on a 360-day year and 4.99 on 365; 50,000
CNY for 1 year at 0.95% is 475.00; that deposit withdrawn after 100 days at the
0.05% demand rate (360) earns 6.94.

Rates, day counts, day weights and the settlement calendar are defined in
`limits.rates` (the deposit catalog, one layer below, needs them) and re-exported
here: import them from this module.
"""

from __future__ import annotations

import datetime
from typing import Final

from limits.calendar import (
    DAY_COUNT,
    EPOCH_YEAR,
    add_months,
    civil_of_day,
    days_in_year,
    year_of_day,
)
from limits.calendar import day_of_date as _day_of_civil_date
from limits.rates import (
    ACCRUAL_DENOMINATOR,
    DAY_COUNT_LABELS,
    QUARTERLY_20TH,
    RATE_MAX,
    RATE_SCALE,
    DayCount,
    SettlementSchedule,
    day_weight,
    format_rate,
    is_settlement_day,
    parse_rate,
    period_end_day,
    period_start_day,
    settlement_period,
    year_basis,
)

__all__ = [
    "ACCRUAL_DENOMINATOR",
    "DAY_COUNT_LABELS",
    "EPOCH_DATE",
    "QUARTERLY_20TH",
    "RATE_MAX",
    "RATE_SCALE",
    "UNITS_PER_FEN",
    "DayCount",
    "SettlementSchedule",
    "accrued_units",
    "add_months",
    "daily_units",
    "date_of_day",
    "day_of_date",
    "day_weight",
    "days_in_year",
    "early_withdrawal_interest",
    "fen_of_units",
    "format_rate",
    "interest_for_days",
    "is_settlement_day",
    "maturity_day",
    "parse_rate",
    "period_end_day",
    "period_start_day",
    "round_half_up",
    "settlement_period",
    "term_interest",
    "year_basis",
]

UNITS_PER_FEN: Final = RATE_SCALE * ACCRUAL_DENOMINATOR  # accrued units in one fen
EPOCH_DATE: Final = datetime.date(EPOCH_YEAR, 1, 1)  # day number 0


# --- Day numbers and dates ---------------------------------------------------------


def day_of_date(value: datetime.date) -> int:
    """The day number of a date (days since 2000-01-01; 0..65535, the kernel's u16)."""
    assert isinstance(value, datetime.date) and not isinstance(value, datetime.datetime), value
    return _day_of_civil_date(value.year, value.month, value.day)


def date_of_day(day: int) -> datetime.date:
    """The date of a day number: `day_of_date` inverted."""
    return datetime.date(*civil_of_day(day))


def maturity_day(open_day: int, term_months: int) -> int:
    """The day a deposit opened on `open_day` for `term_months` matures: the same day of
    the month, clamped to a shorter month's end (opened Aug 31 for 6 months: Feb 28)."""
    assert term_months > 0, term_months
    return add_months(open_day, term_months)


# --- Rounding -----------------------------------------------------------------------


def round_half_up(numerator: int, denominator: int) -> int:
    """`numerator / denominator` rounded to the nearest integer, a half away from zero
    (2.5 -> 3, -2.5 -> -3): the rule for fen. Exact for any size of integer."""
    assert denominator > 0, denominator
    magnitude = (2 * abs(numerator) + denominator) // (2 * denominator)
    return magnitude if numerator >= 0 else -magnitude


def fen_of_units(units: int) -> int:
    """Accrued units (1 / UNITS_PER_FEN fen) to fen, rounded half up: the one rounding
    of a settlement."""
    return round_half_up(units, UNITS_PER_FEN)


# --- Demand interest: exact daily units ---------------------------------------------


def daily_units(balance: int, rate: int, weight: int) -> int:
    """One day's interest on `balance` fen, in units: what the kernel adds per account
    and day (`weight` = `day_weight(day_count, day)`)."""
    return balance * rate * weight


def accrued_units(principal: int, rate: int, start_day: int, end_day: int,
                  day_count: DayCount) -> int:  # fmt: skip
    """The units `principal` earns at `rate` from `start_day` (counted) to `end_day` (not
    counted): the exact sum of `daily_units` over those days, computed a year at a time
    (the weight changes only at a year boundary, and only for actual/actual)."""
    _check_amount_and_rate(principal, rate)
    assert 0 <= start_day <= end_day <= DAY_COUNT, (start_day, end_day)
    assert isinstance(day_count, DayCount), day_count
    units = 0
    day = start_day
    while day < end_day:
        next_year_day = _first_day_of_year(year_of_day(day) + 1)
        stop = min(end_day, next_year_day)
        units += daily_units(principal, rate, day_weight(day_count, day)) * (stop - day)
        day = stop
    return units


def interest_for_days(principal: int, rate: int, start_day: int, end_day: int,
                      day_count: DayCount) -> int:  # fmt: skip
    """Simple interest in fen on `principal` fen at `rate` from `start_day` (counted) to
    `end_day` (not counted), under `day_count`; rounded half up once, at the end.

    Exactly what the day-end accrual of those days followed by one settlement pays.
    10,000 CNY, 91 days, 0.20%: 506 fen (360), 499 fen (365).
    """
    return fen_of_units(accrued_units(principal, rate, start_day, end_day, day_count))


# --- Fixed deposits -----------------------------------------------------------------


def term_interest(principal: int, rate: int, months: int) -> int:
    """A fixed deposit's interest at maturity in fen: `principal * rate * months / 12`,
    rounded half up. 50,000 CNY for 12 months at 0.95%: 47_500 fen."""
    _check_amount_and_rate(principal, rate)
    assert months > 0, months
    return round_half_up(principal * rate * months, RATE_SCALE * 12)


def early_withdrawal_interest(
    principal: int,
    *,
    open_day: int,
    withdrawal_day: int,
    demand_rate: int,
    day_count: DayCount,
    fixed_rate: int,
    term_months: int,
) -> int:
    """What `principal` fen of a fixed deposit earns when withdrawn before maturity.

    The demand rate of the withdrawal day (`demand_rate`, from the catalog) on the days
    held, `open_day` counted and `withdrawal_day` not, under the catalog's fixed-deposit
    `day_count`: `interest_for_days(principal, demand_rate, open_day, withdrawal_day,
    day_count)`. 50,000 CNY after 100 days at 0.05% (360): 694 fen.

    Never more than holding to maturity would pay (`term_interest(principal,
    fixed_rate, term_months)`): the catalog refuses a demand rate above a fixed rate of
    the same rate set, but a later rate set may raise the demand rate above an old
    deposit's fixed rate, and 91 days of a 92-day quarter on a 360-day year are more than
    a quarter's months. The cap makes the guarantee hold in every case.

    For a partial withdrawal pass the withdrawn amount as `principal`; the rest keeps
    its fixed rate and earns `term_interest` on the remaining principal at maturity.
    """
    assert open_day <= withdrawal_day < maturity_day(open_day, term_months), (
        open_day, withdrawal_day, term_months,
    )  # fmt: skip
    _check_amount_and_rate(principal, fixed_rate)
    earned = interest_for_days(principal, demand_rate, open_day, withdrawal_day, day_count)
    return min(earned, term_interest(principal, fixed_rate, term_months))


# --- Helpers -------------------------------------------------------------------------


def _first_day_of_year(year: int) -> int:
    """Day number of Jan 1 of `year`, or DAY_COUNT past the last representable year."""
    if year > year_of_day(DAY_COUNT - 1):
        return DAY_COUNT
    return _day_of_civil_date(year, 1, 1)


def _check_amount_and_rate(principal: int, rate: int) -> None:
    assert isinstance(principal, int) and not isinstance(principal, bool), principal
    assert principal >= 0, principal
    assert isinstance(rate, int) and not isinstance(rate, bool), rate
    assert 0 <= rate <= RATE_MAX, rate
