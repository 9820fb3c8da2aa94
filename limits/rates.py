"""Interest rates, day counts and the settlement calendar, as integers.

The parts of interest arithmetic the deposit catalog (`limits.deposits`) needs to
validate a product file and to build the accrual kernel's rate table. `limits` sits
below `ledger` (the import layers forbid the reverse), so they live here;
`ledger.interest` re-exports every name beside the money arithmetic (units,
rounding, interest for a span of days), and the rest of the code imports them from
there.

- A rate is an `int`: the annual rate as a fraction times `RATE_SCALE` (1e6), so
  0.05% is 500 and 1.30% is 13_000. Rates never pass through a float: a product file
  writes them as exact decimal strings (`"0.05%"`) and `parse_rate` reads them with
  `Decimal`, refusing anything finer than 0.0001% instead of rounding it away.
- A day count is `DayCount`. Every basis (360, 365, 366) divides
  `ACCRUAL_DENOMINATOR`, so one day's share of a year is an integer weight
  (`day_weight`) and a day's interest `balance * rate * weight` is exact, in units of
  1 / (RATE_SCALE * ACCRUAL_DENOMINATOR) fen. Nothing is rounded until settlement.
- A settlement period is `year * 4 + q`, q the quarter whose settlement day closes it
  (Mar/Jun/Sep/Dec 20 by default, inclusive): the number the settlement transfer id
  and the demand row's `period_settled` carry. 0 is never a period (year 0 is outside
  the day range), so 0 can mean "none settled yet".
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from .calendar import civil_of_day, day_of_date, days_in_year, year_of_day

RATE_SCALE: Final = 1_000_000  # a rate of 1 is 0.0001% a year
RATE_MAX: Final = RATE_SCALE  # 100% a year: far above any deposit rate, and fits a u32
# lcm(360, 365, 366) = 2**3 * 3**2 * 5 * 61 * 73: every year basis divides it.
ACCRUAL_DENOMINATOR: Final = 1_603_080
assert all(ACCRUAL_DENOMINATOR % basis == 0 for basis in (360, 365, 366))

_RATE_TEXT: Final = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)%$")


class DayCount(enum.IntEnum):
    """How a year is counted for interest: the numbers are the kernel's and the rows'.

    ACT_360: actual days over a 360-day year (the Chinese banks' demand rule);
    ACT_365: over 365 days whatever the year; ACT_ACT: over the days of the
    calendar year each day falls in (365 or 366).
    """

    ACT_360 = 1
    ACT_365 = 2
    ACT_ACT = 3

    @property
    def label(self) -> str:
        """The spelling in product files and on the wire: "360", "365", "actual"."""
        return _DAY_COUNT_LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> DayCount:
        """The day count spelt `label`; ValueError naming the accepted spellings."""
        for day_count, name in _DAY_COUNT_LABELS.items():
            if name == label:
                return day_count
        raise ValueError(f"unknown day count {label!r} (expected one of: {DAY_COUNT_LABELS})")


_DAY_COUNT_LABELS: Final = {
    DayCount.ACT_360: "360",
    DayCount.ACT_365: "365",
    DayCount.ACT_ACT: "actual",
}
DAY_COUNT_LABELS: Final = ", ".join(f'"{label}"' for label in _DAY_COUNT_LABELS.values())


def year_basis(day_count: DayCount, day: int) -> int:
    """The number of days in the year `day` is counted in: 360, 365 or 366."""
    if day_count is DayCount.ACT_360:
        return 360
    if day_count is DayCount.ACT_365:
        return 365
    assert day_count is DayCount.ACT_ACT, day_count
    return days_in_year(year_of_day(day))


def day_weight(day_count: DayCount, day: int) -> int:
    """One day's share of a year, times ACCRUAL_DENOMINATOR: 4453 (360), 4392 (365),
    4392 or 4380 (actual, in a common or a leap year). Exact: the basis divides it."""
    basis = year_basis(day_count, day)
    assert ACCRUAL_DENOMINATOR % basis == 0, basis
    return ACCRUAL_DENOMINATOR // basis


def parse_rate(text: str) -> int:
    """Read an annual rate written as an exact percentage: "0.05%" -> 500.

    Refuses (ValueError, the message says why) anything that is not a string of
    digits with an optional decimal part and a percent sign: floats and integers
    (a float cannot hold 0.05% exactly), signs, exponents, spaces, rates finer than
    0.0001% (they would have to be rounded) and rates above 100%.
    """
    if not isinstance(text, str):
        raise ValueError(
            f'a rate is a string with a percent sign such as "0.05%", got {type(text).__name__}'
        )
    match = _RATE_TEXT.match(text)
    if match is None:
        if text.startswith("-"):
            raise ValueError(f"{text!r} is negative; a rate is >= 0%")
        raise ValueError(f'{text!r} is not a rate such as "0.05%" (digits, a point, a % sign)')
    try:
        percent = Decimal(match["number"])
    except InvalidOperation as error:  # pragma: no cover - the pattern admits only digits
        raise ValueError(f"{text!r} is not a decimal number") from error
    scaled = percent * RATE_SCALE / 100
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{text!r} is finer than 0.0001%, the smallest step of a rate")
    rate = int(scaled)
    if rate > RATE_MAX:
        raise ValueError(f"{text!r} is above 100%")
    return rate


def format_rate(rate: int) -> str:
    """Write a rate as `parse_rate` reads it, with at least two decimals: 500 -> "0.05%",
    13_000 -> "1.30%", 1 -> "0.0001%". `parse_rate(format_rate(r)) == r`."""
    assert isinstance(rate, int) and 0 <= rate <= RATE_MAX, rate
    whole, fraction = divmod(rate, RATE_SCALE // 100)  # fraction in 1e-4 percent
    digits = f"{fraction:04d}".rstrip("0").ljust(2, "0")
    return f"{whole}.{digits}%"


@dataclass(frozen=True, slots=True)
class SettlementSchedule:
    """When demand interest is settled: on `day_of_month` of four months three apart,
    the first being `first_month` (1..3). The default is the Chinese banks' rule:
    the 20th of March, June, September and December (credited on the 21st)."""

    first_month: int = 3
    day_of_month: int = 20

    def __post_init__(self) -> None:
        assert 1 <= self.first_month <= 3, self.first_month
        assert 1 <= self.day_of_month <= 28, self.day_of_month  # every month has it

    @property
    def months(self) -> tuple[int, int, int, int]:
        first = self.first_month
        return (first, first + 3, first + 6, first + 9)


QUARTERLY_20TH: Final = SettlementSchedule()


def settlement_period(day: int, schedule: SettlementSchedule = QUARTERLY_20TH) -> int:
    """The settlement period `day` accrues into: `year * 4 + q`.

    q is the index of the first settlement day on or after `day` in its year
    (0: Mar 20 ... 3: Dec 20 by default); a day after the year's last settlement
    day (Dec 21..31) belongs to next year's q 0.
    """
    year, month, day_of_month = civil_of_day(day)
    for q, settlement_month in enumerate(schedule.months):
        if (month, day_of_month) <= (settlement_month, schedule.day_of_month):
            return year * 4 + q
    return (year + 1) * 4


def period_end_day(period: int, schedule: SettlementSchedule = QUARTERLY_20TH) -> int:
    """The settlement day that closes `period` (inclusive: it is the period's last day)."""
    year, q = divmod(period, 4)
    return day_of_date(year, schedule.months[q], schedule.day_of_month)


def period_start_day(period: int, schedule: SettlementSchedule = QUARTERLY_20TH) -> int:
    """The first day of `period`: the day after the previous period's settlement day."""
    return period_end_day(period - 1, schedule) + 1


def is_settlement_day(day: int, schedule: SettlementSchedule = QUARTERLY_20TH) -> bool:
    """True on the day that closes a period (interest settled that night, credited next day)."""
    _, month, day_of_month = civil_of_day(day)
    return month in schedule.months and day_of_month == schedule.day_of_month
