"""Business days and years: the clock the limit buckets roll over on.

PBoC buckets are per natural day and calendar year in the bank's local time
zone (Asia/Shanghai unless the rule file says otherwise), so a transfer at
23:59 and one at 00:01 Beijing time land in different daily buckets even
though both are the same UTC date.

A day is a number of days since 2000-01-01 and must fit in a uint16 (the
kernel stores it in one): days 0..65535 cover 2000-01-01..2179-06-06.

`year_of_day` and `day_of_date` are pure integer arithmetic (Howard
Hinnant's `civil_from_days` / `days_from_civil`, "chrono-Compatible
Low-Level Date Algorithms") because the Cython kernel computes the same
years from the same day numbers: the two must agree bit for bit, so this
twin is written to read like the C, with Hinnant's variable names so each
line can be checked against his paper. Every intermediate is non-negative,
so Python's `//` and C's `/` give the same results.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime, tzinfo
from typing import Final

from .errors import RuleFileError

DEFAULT_TIMEZONE_NAME: Final = "Asia/Shanghai"

EPOCH_YEAR: Final = 2000
DAY_COUNT: Final = 65536  # day numbers are uint16 in the kernel
YEAR_MAX: Final = 2179  # year of day DAY_COUNT - 1 (2179-06-06)

NS_PER_S: Final = 1_000_000_000

# Days from 0000-03-01 (Hinnant's era origin) to 2000-01-01: his 719468
# (0000-03-01 to 1970-01-01) plus 10957 (1970-01-01 to 2000-01-01).
DAYS_ERA_ORIGIN_TO_EPOCH: Final = 730425
DAYS_PER_ERA: Final = 146097  # 400 Gregorian years


def year_of_day(day: int) -> int:
    """Return the civil year of a day number.

    The kernel's twin: same names, same steps, integers only.
    """
    assert 0 <= day < DAY_COUNT, day
    z = day + DAYS_ERA_ORIGIN_TO_EPOCH  # days since 0000-03-01, > 0
    era = z // DAYS_PER_ERA
    doe = z - era * DAYS_PER_ERA  # day of era, [0, 146096]
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365  # year of era, [0, 399]
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of year from March 1, [0, 365]
    mp = (5 * doy + 2) // 153  # month from March, [0, 11]
    year = yoe + era * 400
    if mp >= 10:  # January and February close the March-based year
        year += 1
    assert EPOCH_YEAR <= year <= YEAR_MAX, year
    return year


def day_of_date(year: int, month: int, day_of_month: int) -> int:
    """Return the day number of a civil date."""
    assert EPOCH_YEAR <= year <= YEAR_MAX, year
    assert 1 <= month <= 12, month
    assert 1 <= day_of_month <= days_in_month(year, month), (year, month, day_of_month)
    y = year - 1 if month <= 2 else year  # years start on March 1
    era = y // 400
    yoe = y - era * 400  # year of era, [0, 399]
    mp = month - 3 if month > 2 else month + 9  # month from March, [0, 11]
    doy = (153 * mp + 2) // 5 + day_of_month - 1  # day of year from March 1, [0, 365]
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy  # day of era, [0, 146096]
    day = era * DAYS_PER_ERA + doe - DAYS_ERA_ORIGIN_TO_EPOCH
    assert 0 <= day < DAY_COUNT, (year, month, day_of_month)
    return day


def days_in_month(year: int, month: int) -> int:
    assert 1 <= month <= 12, month
    if month == 2:
        leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
        return 29 if leap else 28
    if month in (4, 6, 9, 11):
        return 30
    return 31


def business_day(timestamp_ns: int, tz: tzinfo) -> int:
    """Return the day number of the local date of `timestamp_ns` in `tz`.

    `tz` is normally the `ZoneInfo` of the rule set (`RuleSet.timezone`);
    it is an argument, not a default, so the caller's rule set decides and
    nothing here reads the machine's local time zone.
    """
    assert isinstance(timestamp_ns, int) and not isinstance(timestamp_ns, bool)
    assert isinstance(tz, tzinfo), tz
    # Floor, not truncation: an instant just before midnight stays on its day.
    timestamp_s = timestamp_ns // NS_PER_S
    local = datetime.fromtimestamp(timestamp_s, tz)
    return day_of_date(local.year, local.month, local.day)


def load_timezone(name: str) -> zoneinfo.ZoneInfo:
    """Return the zone called `name`, or raise `RuleFileError`.

    There is deliberately no fallback to UTC: eight hours of error would move
    every midnight bucket rollover in China to 08:00 and let a customer spend
    two days' quota in one night.
    """
    zone = open_timezone(name)
    if isinstance(zone, str):
        raise RuleFileError([f"timezone {name!r}: {zone}"])
    return zone


def open_timezone(name: str) -> zoneinfo.ZoneInfo | str:
    """Return the zone called `name`, or the reason it cannot be loaded.

    Returning the reason lets the rule file parser list a bad time zone
    beside the file's other problems instead of stopping at it.
    """
    assert isinstance(name, str)
    try:
        return zoneinfo.ZoneInfo(name)
    except ValueError as error:  # an absolute path, "..", an invalid TZif file
        return f"not a valid time zone name ({error})"
    except (zoneinfo.ZoneInfoNotFoundError, OSError):
        pass
    if not _tz_database_present():
        search_path = ", ".join(zoneinfo.TZPATH) or "(empty)"
        return (
            "the tz database is missing (no zone files under TZPATH "
            f"{search_path} and no `tzdata` package); install the system "
            "tzdata package or `pip install tzdata`"
        )
    return "unknown time zone (not in the tz database)"


def _tz_database_present() -> bool:
    # Every tz database, the system's or the `tzdata` package, has UTC.
    try:
        zoneinfo.ZoneInfo.no_cache("UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


# --- Civil dates of day numbers, and month arithmetic (deposits: terms, settlement) ---


def civil_of_day(day: int) -> tuple[int, int, int]:
    """Return (year, month, day_of_month) of a day number: `day_of_date` inverted.

    Hinnant's `civil_from_days`, like `year_of_day` but carried to the month and day.
    """
    assert 0 <= day < DAY_COUNT, day
    z = day + DAYS_ERA_ORIGIN_TO_EPOCH
    era = z // DAYS_PER_ERA
    doe = z - era * DAYS_PER_ERA
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day_of_month = doy - (153 * mp + 2) // 5 + 1  # [1, 31]
    month = mp + 3 if mp < 10 else mp - 9  # [1, 12]
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    assert EPOCH_YEAR <= year <= YEAR_MAX, year
    return year, month, day_of_month


def is_leap_year(year: int) -> bool:
    return (year % 4 == 0 and year % 100 != 0) or year % 400 == 0


def days_in_year(year: int) -> int:
    return 366 if is_leap_year(year) else 365


def add_months(day: int, months: int) -> int:
    """The same day of the month `months` later (earlier if negative), clamped to the end
    of a shorter month: Jan 31 + 1 month is Feb 28 (Feb 29 in a leap year), Feb 29 + 12
    months is Feb 28. The rule banks use for a term's maturity date.
    """
    assert isinstance(months, int) and not isinstance(months, bool), months
    year, month, day_of_month = civil_of_day(day)
    month_index = year * 12 + (month - 1) + months
    target_year, target_month = divmod(month_index, 12)
    target_month += 1
    clamped = min(day_of_month, days_in_month(target_year, target_month))
    return day_of_date(target_year, target_month, clamped)
