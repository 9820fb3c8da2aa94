"""Loan arithmetic in integers: schedules, the annualised rate, allocation, penalty, prepayment.

Pure functions, no I/O, deterministic: the trial calculation (`POST /v1/loan-quotes`),
the product manager's preview, and (next slice) disbursement, collection, overdue and
early repayment all compute a loan here, so a quote and the loan it becomes agree to the
fen. Money is fen (`int`), a rate is ppm of 1 a year (`RATE_SCALE`: 3.45% is 34_500), a
day is a day number (days since 2000-01-01, `limits.calendar`). No float anywhere: exact
`int` arithmetic, big where it must be (the level payment of 360 months raises 12e6 to
the 360th power), rounded half up to the fen with `ledger.interest.round_half_up`.

Rules
-----

- **Periods and interest.** Instalments are monthly. The monthly rate is exactly
  `annual_rate / 12`; an instalment's interest is the principal outstanding before it
  times the monthly rate, rounded half up to the fen, per instalment. Every period is
  charged one month, including the first (15 to 58 days, see `due_days`): the quote
  and the loan use the same rule, and the customer sees it in the schedule.
- **Equal instalment (等额本息).** The level payment `A = P r (1+r)^n / ((1+r)^n - 1)`
  (r the monthly rate) is computed exactly and rounded half up once. Each instalment's
  principal is `A` minus its interest; the LAST instalment pays the whole remaining
  principal and its total absorbs the rounding. `A` is at least the first month's
  interest (A* > P r and rounding is monotone), so no instalment's principal is ever
  negative. Rounding drifts, and the drift compounds: `last - A` is the sum over the
  instalments k of (rounding of interest_k - rounding of A) (1+r)^(n-k), at most
  `sum((1+r)^j for j < n)` fen in size (n fen at r = 0, about 820 fen for 30 years at
  4.90%, 62,000 fen for 30 years at 24%). When the drift overpays (A rounded up on a
  small loan or a long term), paying `A` clears the loan before the term: the instalment
  that can pay everything remaining is the last one, so the schedule then has fewer
  instalments than `term_months` (never a negative instalment). At r = 0 the principal
  is split like equal principal and `A` is P/n rounded half up.
- **Equal principal (等额本金).** Cumulative rounding, so no fen is lost and the rounding
  is spread: `principal_k = round_half_up(k P / n) - round_half_up((k - 1) P / n)`
  (each is P / n rounded down or up; below n fen some instalments repay nothing).
- **Due days** (`due_days`): instalment k falls due on `repayment_day` (1..28, so never
  past a month's end) of the month k months after the start's month; when the first
  such day is less than 15 days after the start (`FIRST_PERIOD_DAYS_MIN`), every due
  day moves one month later (the first period is then 15..58 days, never shorter).
- **Fees.** The upfront fee is deducted at disbursement (the customer receives principal
  minus fee); the monthly fee is added to every instalment.
- **Annualised rate** (`apr_ppm`, 年化利率, the PBoC's IRR method): the monthly internal
  rate of return i solving `received = sum(payment_k / (1+i)^k)`, times 12, in ppm,
  rounded half up. It is found by bisection on the integer answer N with an exact
  integer test (x = 12e6 i rounds to at least N iff the payments discounted at
  (N - 1/2) / 12e6 a month are worth at least `received`), so it is monotone, always
  terminates (about 25 steps), and is exactly the rounded IRR. Each instalment counts
  as one month, like its interest, whatever the length of the first period.
- **Allocation** (`allocate`): dues in the given order (the product's order; the default
  penalty, interest, principal follows Civil Code art. 561), each paid in full before
  the next is touched.
- **Penalty** (`penalty_minor`): overdue principal and overdue interest (unpaid interest
  compounds) accrue at `annual_rate * (1000 + uplift_permille) / 1000` (PBoC: uplift
  300..500) on a 360-day year, per day, for `days` days, rounded half up ONCE over the
  span. The day-end loop (next slice) calls it with `days=1` each day, rounding daily.
- **Early repayment** (`prepay`): on `day`, after instalments 1..paid_through were
  paid, the interest accrued since the last due day (or the start) on the whole
  remaining principal, actual days / 360, rounded half up, is due first; the rest of the
  amount reduces the principal. The remaining instalments keep their numbers and due
  days. The first of them charges the new principal for the actual days from `day` to
  its due day / 360 (the days before `day` were charged at the prepayment: no day is
  charged twice or skipped), later ones a month each. `reduce_instalment` keeps the
  number of remaining instalments and recomputes the level payment (equal principal:
  the per-period principal); `reduce_term` keeps the payment, or lowers it as little as
  possible: the shortest term whose level payment (per-period principal) is not above
  the current one (if even the remaining term's is above it, which rounding can do to a
  tiny prepayment, it is `reduce_instalment`). An equal instalment's principal is never
  below 0: a first period longer than a month can cost more interest than the new level
  payment, and that instalment then repays no principal. The current level payment is
  `A` of (principal_minor, annual_rate, term_months) of the schedule passed in, so a
  remainder schedule can be prepaid again. An amount equal to everything owed closes
  the loan (no instalments left).

Worked examples (tests/unit/test_loan_arithmetic.py)
----------------------------------------------------

100,000 CNY over 12 months at 3.45% (r = 0.002875 a month):

- equal instalment: A* = 8,489.882 -> A = 8,489.88 for instalments 1..11; the 12th
  pays the 8,465.59 left + 24.34 interest = 8,489.93; total interest 1,878.61 (the
  exact annuity's, 12 A* - P, is 1,878.5855; issue 16 says "within a fen or two of
  1,878.6");
- equal principal: first instalment 8,620.83 (8,333.33 + 287.50), last 8,357.29
  (8,333.33 + 23.96); total interest 1,868.76. The unrounded interests sum to exactly
  1,868.75 (issue 16's figure); two of them are exact half fen (215.625 and 71.875
  CNY), both rounded up, the other ten cancel out;
- annualised rate without fees: 3.45% (34_500 ppm) for both methods.

10,000 CNY over 12 months at 0% with a 100 CNY upfront fee: the customer receives
9,900 CNY and repays 10,000 in 12 instalments of 833.33 or 833.34; the annualised rate
is 1.8595% (18_595 ppm): about twice the flat 100 / 9,900 = 1.01%, as the fee is paid
for a balance that falls to zero.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ledger.interest import RATE_MAX, RATE_SCALE, round_half_up
from limits.calendar import DAY_COUNT, civil_of_day, day_of_date, days_in_month

__all__ = [
    "FIRST_PERIOD_DAYS_MIN",
    "PRINCIPAL_MAX_MINOR",
    "REPAYMENT_DAY_MAX",
    "TERM_MONTHS_MAX",
    "UPLIFT_PERMILLE_MAX",
    "Instalment",
    "Method",
    "PrepaymentMode",
    "Schedule",
    "allocate",
    "apr_ppm",
    "due_days",
    "level_payment_minor",
    "penalty_minor",
    "period_interest_minor",
    "prepay",
    "schedule",
]

TERM_MONTHS_MAX: Final = 360  # 30 years: the longest real-estate loan
PRINCIPAL_MAX_MINOR: Final = 10**15  # 10 trillion CNY: every total stays far inside an i64
REPAYMENT_DAY_MAX: Final = 28  # every month has it
FIRST_PERIOD_DAYS_MIN: Final = 15  # a first due day closer than this moves a month later
UPLIFT_PERMILLE_MAX: Final = 1000  # the penalty rate is at most twice the contract rate
MONTHS_PER_YEAR: Final = 12
DAYS_PER_YEAR: Final = 360  # the day basis of accrued and penalty interest
PERMILLE: Final = 1000
_MONTHLY_DENOMINATOR: Final = RATE_SCALE * MONTHS_PER_YEAR  # monthly rate = rate / this
_DAILY_DENOMINATOR: Final = RATE_SCALE * DAYS_PER_YEAR  # one day's rate = rate / this
_LAST_CIVIL_DAY: Final = civil_of_day(DAY_COUNT - 1)

PrepaymentMode = Literal["reduce_instalment", "reduce_term"]


class Method(enum.StrEnum):
    """How the principal is repaid: the names are the product file's and the wire's."""

    EQUAL_INSTALMENT = "equal_instalment"  # 等额本息
    EQUAL_PRINCIPAL = "equal_principal"  # 等额本金


@dataclass(frozen=True, slots=True)
class Instalment:
    """One row of a schedule: what falls due on `due_day`, and the principal left after it."""

    number: int  # 1-based, kept by a remainder schedule after a prepayment
    due_day: int  # day number
    principal_minor: int
    interest_minor: int
    fee_minor: int  # the periodic fee of this instalment (0 without one)
    total_minor: int  # principal + interest + fee
    remaining_minor: int  # principal outstanding after this instalment


@dataclass(frozen=True, slots=True)
class Schedule:
    """A loan's repayment plan, with the totals a quote shows.

    `term_months` is the term the schedule was built for; it has that many instalments,
    or fewer when the rounding of an equal instalment repays the loan early (module
    docstring). A remainder schedule (`prepay`) starts on the prepayment day and holds
    the remaining instalments with their original numbers and due days.
    """

    method: Method
    principal_minor: int
    annual_rate: int  # ppm a year (the contract rate)
    term_months: int
    start_day: int  # the disbursement day (a remainder: the prepayment day)
    instalments: tuple[Instalment, ...]
    total_interest_minor: int
    total_fees_minor: int  # upfront + periodic
    upfront_fee_minor: int  # deducted at disbursement (the customer receives less)
    total_repaid_minor: int  # sum of instalment totals
    apr_ppm: int  # annualised rate including all fees (`apr_ppm`)


# --- Due days ---------------------------------------------------------------------------


def due_days(start_day: int, term_months: int, repayment_day: int) -> tuple[int, ...]:
    """The due days of a loan disbursed on `start_day`: one a month on `repayment_day`.

    Instalment k falls due on `repayment_day` of the month k months after the start's
    month, all one month later when that would put the first less than 15 days after
    the start. Disbursed 2025-01-10, day 20: 2025-02-20, 2025-03-20, ...; disbursed
    2025-01-25, day 5: 2025-03-05 (Feb 5 is 11 days away), 2025-04-05, ...

    Raises ValueError (the message names the argument) for a term outside 1..360, a
    repayment day outside 1..28, or a start day whose last due day would fall past the
    last day number (2179-06-06).
    """
    _check_day("start_day", start_day)
    _check_term(term_months)
    _check_repayment_day(repayment_day)
    year, month, _ = civil_of_day(start_day)
    start_month_index = year * MONTHS_PER_YEAR + (month - 1)
    first = start_month_index + 1
    first_civil = _civil_in_month(first, repayment_day)
    if first_civil <= _LAST_CIVIL_DAY and (
        day_of_date(*first_civil) - start_day < FIRST_PERIOD_DAYS_MIN
    ):
        first += 1
    last_civil = _civil_in_month(first + term_months - 1, repayment_day)
    if last_civil > _LAST_CIVIL_DAY:
        raise ValueError(
            f"a term of {term_months} months from day {start_day} ends on "
            f"{last_civil[0]:04d}-{last_civil[1]:02d}-{last_civil[2]:02d}, past the last "
            f"day number (day {DAY_COUNT - 1})"
        )
    return tuple(
        day_of_date(*_civil_in_month(first + k, repayment_day)) for k in range(term_months)
    )


def _civil_in_month(month_index: int, day_of_month: int) -> tuple[int, int, int]:
    """(year, month, day) of `day_of_month` in month `year * 12 + month - 1`, clamped to
    the month's last day."""
    year, month_zero = divmod(month_index, MONTHS_PER_YEAR)
    month = month_zero + 1
    return year, month, min(day_of_month, days_in_month(year, month))


# --- Schedules --------------------------------------------------------------------------


def schedule(
    principal_minor: int,
    annual_rate: int,
    term_months: int,
    method: Method,
    start_day: int,
    repayment_day: int,
    *,
    upfront_fee_minor: int = 0,
    monthly_fee_minor: int = 0,
) -> Schedule:
    """The full repayment schedule of a loan, with total interest, fees and the APR.

    Args:
        principal_minor: the amount lent, 1..PRINCIPAL_MAX_MINOR fen.
        annual_rate: the contract rate, 0..RATE_SCALE ppm a year.
        term_months: 1..360.
        method: `Method` or its value ("equal_instalment", "equal_principal").
        start_day: the disbursement day (day number).
        repayment_day: 1..28, the day of the month instalments fall due (`due_days`).
        upfront_fee_minor: deducted at disbursement; less than the principal.
        monthly_fee_minor: added to every instalment.

    Returns:
        The `Schedule` (rules in the module docstring). 10,000,000 fen, 3.45%, 12
        months, equal instalment: 11 instalments of 848_988 fen, then 848_993.

    Raises:
        ValueError: an argument out of range, with the argument named and the range.
    """
    _check_principal(principal_minor)
    _check_rate("annual_rate", annual_rate)
    _check_term(term_months)
    method = _method(method)
    _check_fen("upfront_fee_minor", upfront_fee_minor)
    _check_fen("monthly_fee_minor", monthly_fee_minor)
    if upfront_fee_minor >= principal_minor:
        raise ValueError(
            f"upfront_fee_minor {upfront_fee_minor} must be less than principal_minor "
            f"{principal_minor} (the customer would receive nothing)"
        )
    days = due_days(start_day, term_months, repayment_day)
    rows = _rows(method, principal_minor, annual_rate, term_months, first_period_days=None)
    return _assemble(
        method,
        principal_minor,
        annual_rate,
        term_months,
        start_day,
        rows,
        days,
        first_number=1,
        upfront_fee_minor=upfront_fee_minor,
        monthly_fee_minor=monthly_fee_minor,
    )


def level_payment_minor(principal_minor: int, annual_rate: int, term_months: int) -> int:
    """The equal instalment (principal + interest) of a loan: P r (1+r)^n / ((1+r)^n - 1)
    with r = annual_rate / 12, exactly, rounded half up; P / n rounded half up at r = 0.

    10,000,000 fen, 34_500 ppm, 12 months: 848_988 fen. ValueError for an argument out
    of the ranges of `schedule`.
    """
    _check_principal(principal_minor)
    _check_rate("annual_rate", annual_rate)
    _check_term(term_months)
    if annual_rate == 0:
        return round_half_up(principal_minor, term_months)
    # r = rate / D, 1 + r = c / D: A = P (rate / D) c^n / (c^n - D^n), all integers.
    growth = (_MONTHLY_DENOMINATOR + annual_rate) ** term_months
    base = _MONTHLY_DENOMINATOR**term_months
    return round_half_up(
        principal_minor * annual_rate * growth, _MONTHLY_DENOMINATOR * (growth - base)
    )


def _rows(
    method: Method,
    principal_minor: int,
    annual_rate: int,
    term_months: int,
    *,
    first_period_days: int | None,
) -> list[tuple[int, int]]:
    """(principal, interest) of each instalment. `first_period_days`: None charges the
    first instalment a month, a number charges it that many days / 360 (a remainder
    after a prepayment)."""
    if method is Method.EQUAL_PRINCIPAL or annual_rate == 0:
        return _equal_principal_rows(principal_minor, annual_rate, term_months, first_period_days)
    payment_minor = level_payment_minor(principal_minor, annual_rate, term_months)
    return _equal_instalment_rows(
        principal_minor, annual_rate, term_months, payment_minor, first_period_days
    )


def _interest(remaining_minor: int, annual_rate: int, days: int | None) -> int:
    """A month's interest on `remaining_minor`, or `days` days' on a 360-day year."""
    if days is None:
        return round_half_up(remaining_minor * annual_rate, _MONTHLY_DENOMINATOR)
    return round_half_up(remaining_minor * annual_rate * days, _DAILY_DENOMINATOR)


def period_interest_minor(remaining_minor: int, annual_rate: int, days: int | None) -> int:
    """An instalment's interest on `remaining_minor`: a month's (`days` None) or `days`
    days' on a 360-day year, rounded half up: what the schedules charge, public so the
    loan book's terms (ledger/loan_book.py) fix the first interest of a segment the
    schedule's way. ValueError for a negative amount or day count or a rate out of range.
    """
    _check_fen("remaining_minor", remaining_minor)
    _check_rate("annual_rate", annual_rate)
    if days is not None:
        _check_fen("days", days)
    return _interest(remaining_minor, annual_rate, days)


def _equal_principal_rows(
    principal_minor: int, annual_rate: int, count: int, first_period_days: int | None
) -> list[tuple[int, int]]:
    rows = []
    remaining = principal_minor
    repaid_before = 0  # round_half_up((k - 1) P / n)
    for k in range(1, count + 1):
        repaid = round_half_up(k * principal_minor, count)
        interest = _interest(remaining, annual_rate, first_period_days if k == 1 else None)
        rows.append((repaid - repaid_before, interest))
        remaining -= repaid - repaid_before
        repaid_before = repaid
    assert remaining == 0, remaining
    return rows


def _equal_instalment_rows(
    principal_minor: int,
    annual_rate: int,
    count: int,
    payment_minor: int,
    first_period_days: int | None,
) -> list[tuple[int, int]]:
    rows = []
    remaining = principal_minor
    for k in range(1, count + 1):
        interest = _interest(remaining, annual_rate, first_period_days if k == 1 else None)
        # Never negative: after a prepayment a long first period can cost more than A.
        principal = max(payment_minor - interest, 0)
        if k == count or principal >= remaining:
            rows.append((remaining, interest))  # the last instalment absorbs the rounding
            return rows
        rows.append((principal, interest))
        remaining -= principal
    raise AssertionError("unreachable: the loop returns at k == count")


def _assemble(
    method: Method,
    principal_minor: int,
    annual_rate: int,
    term_months: int,
    start_day: int,
    rows: list[tuple[int, int]],
    days: Sequence[int],
    *,
    first_number: int,
    upfront_fee_minor: int,
    monthly_fee_minor: int,
) -> Schedule:
    """The `Schedule` of `rows` due on `days`, numbered from `first_number`, checked."""
    assert len(rows) <= len(days), (len(rows), len(days))
    instalments = []
    remaining = principal_minor
    for index, (principal, interest) in enumerate(rows):
        remaining -= principal
        total = principal + interest + monthly_fee_minor
        instalments.append(
            Instalment(
                number=first_number + index,
                due_day=days[index],
                principal_minor=principal,
                interest_minor=interest,
                fee_minor=monthly_fee_minor,
                total_minor=total,
                remaining_minor=remaining,
            )
        )
    total_repaid = sum(instalment.total_minor for instalment in instalments)
    result = Schedule(
        method=method,
        principal_minor=principal_minor,
        annual_rate=annual_rate,
        term_months=term_months,
        start_day=start_day,
        instalments=tuple(instalments),
        total_interest_minor=sum(interest for _, interest in rows),
        total_fees_minor=upfront_fee_minor + monthly_fee_minor * len(rows),
        upfront_fee_minor=upfront_fee_minor,
        total_repaid_minor=total_repaid,
        apr_ppm=(
            apr_ppm(principal_minor - upfront_fee_minor, [i.total_minor for i in instalments])
            if instalments
            else 0
        ),
    )
    _check_schedule(result)
    return result


def _check_schedule(result: Schedule) -> None:
    """The invariants every schedule keeps; a failure is a bug here, so it asserts."""
    remaining = result.principal_minor
    for previous, instalment in zip((None, *result.instalments), result.instalments, strict=False):
        assert instalment.principal_minor >= 0 and instalment.interest_minor >= 0, instalment
        assert instalment.total_minor == (
            instalment.principal_minor + instalment.interest_minor + instalment.fee_minor
        ), instalment
        remaining -= instalment.principal_minor
        assert instalment.remaining_minor == remaining >= 0, instalment
        if previous is not None:
            assert instalment.number == previous.number + 1, instalment
            assert instalment.due_day > previous.due_day, instalment
    assert remaining == 0, result
    assert len(result.instalments) <= result.term_months, result
    assert result.total_repaid_minor == (
        result.principal_minor
        + result.total_interest_minor
        + result.total_fees_minor
        - result.upfront_fee_minor
    ), result


# --- The annualised rate ----------------------------------------------------------------


def apr_ppm(received_minor: int, payments: Sequence[int]) -> int:
    """The annualised rate (年化利率, IRR method) in ppm, rounded half up.

    The monthly internal rate of return i with `received_minor = sum(payments[k-1] /
    (1+i)^k)`, times 12. 990,000 fen received, 12 payments summing to 1,000,000 fen
    (833.33 or 833.34 CNY): 18_595 (1.8595%).

    Raises ValueError when nothing is received, a payment is negative, there are no
    payments or more than 360, or they repay less than was received (the rate would be
    negative: no fee or interest arrangement here produces that).
    """
    _check_fen("received_minor", received_minor)
    if received_minor == 0:
        raise ValueError("received_minor must be > 0")
    if not 1 <= len(payments) <= TERM_MONTHS_MAX:
        raise ValueError(f"there must be 1..{TERM_MONTHS_MAX} payments, not {len(payments)}")
    for index, payment in enumerate(payments):
        _check_fen(f"payments[{index}]", payment)
    repaid = sum(payments)
    if repaid < received_minor:
        raise ValueError(
            f"the payments ({repaid} fen) repay less than was received ({received_minor} fen)"
        )
    # x = 12e6 i >= 0 and x <= 12e6 (repaid / received - 1), since the payments are worth
    # at most repaid / (1 + i). `low` always rounds at or below x, `high` above it.
    low = 0
    high = -(-_MONTHLY_DENOMINATOR * (repaid - received_minor) // received_minor) + 1
    while high - low > 1:
        middle = (low + high) // 2
        if _worth_at_least(received_minor, payments, middle):
            low = middle
        else:
            high = middle
    return low


def _worth_at_least(received_minor: int, payments: Sequence[int], candidate: int) -> bool:
    """True iff the payments discounted at (candidate - 1/2) / 12e6 a month are worth at
    least `received_minor`: iff the IRR, in annual ppm, rounds half up to >= candidate.

    With 1 + i = a / b (a = 2 * 12e6 + 2 candidate - 1, b = 2 * 12e6), the test
    sum(p_k (b/a)^k) >= R is sum(p_k b^k a^(n-k)) >= R a^n, computed by Horner's rule
    in integers: exact, and monotone in `candidate` (the discounted worth falls as the
    rate rises). About 9 ms for 360 payments over the ~25 calls of a search.
    """
    base = 2 * _MONTHLY_DENOMINATOR
    growth = base + 2 * candidate - 1
    worth = 0
    base_power = 1
    for payment in payments:
        base_power *= base
        worth = worth * growth + payment * base_power
    growth_power: int = growth ** len(payments)  # an int: mypy types int ** int as Any
    return worth >= received_minor * growth_power


# --- Allocation and penalty -------------------------------------------------------------


def allocate(
    amount_minor: int, dues: Sequence[tuple[str, int]]
) -> tuple[tuple[tuple[str, int], ...], int]:
    """Pay `amount_minor` into `dues` (name, amount due) in their order, each in full
    before the next: ((name, paid), ...) in the same order, and the amount left over.

    1,000 fen into (("penalty", 120), ("interest", 300), ("principal", 5_000)):
    (("penalty", 120), ("interest", 300), ("principal", 580)), leftover 0.

    Raises ValueError for a negative amount or due, or a name given twice.
    """
    _check_fen("amount_minor", amount_minor)
    names = [name for name, _ in dues]
    if len(set(names)) != len(names):
        raise ValueError(f"each due is named once, not {names}")
    left = amount_minor
    paid = []
    for name, due in dues:
        _check_fen(f"due {name!r}", due)
        portion = min(left, due)
        paid.append((name, portion))
        left -= portion
    return tuple(paid), left


def penalty_minor(
    overdue_principal_minor: int,
    overdue_interest_minor: int,
    annual_rate: int,
    uplift_permille: int,
    days: int,
) -> int:
    """Penalty interest on overdue principal and interest for `days` days, in fen.

    The penalty rate is `annual_rate * (1000 + uplift_permille) / 1000`; a day is 1/360
    of a year; rounded half up once over the span. 848,988 fen overdue (820,238
    principal, 28,750 interest) at 3.45% + 50% for 10 days: 848,988 * 5.175% * 10 / 360
    = 1,220.42 -> 1_220 fen.

    Raises ValueError for a negative amount or number of days, a rate outside
    0..RATE_SCALE or an uplift outside 0..1000 permille.
    """
    _check_fen("overdue_principal_minor", overdue_principal_minor)
    _check_fen("overdue_interest_minor", overdue_interest_minor)
    _check_rate("annual_rate", annual_rate)
    _check_integer("uplift_permille", uplift_permille)
    if not 0 <= uplift_permille <= UPLIFT_PERMILLE_MAX:
        raise ValueError(
            f"uplift_permille must be in 0..{UPLIFT_PERMILLE_MAX}, not {uplift_permille}"
        )
    _check_fen("days", days)
    overdue = overdue_principal_minor + overdue_interest_minor
    return round_half_up(
        overdue * annual_rate * (PERMILLE + uplift_permille) * days,
        _DAILY_DENOMINATOR * PERMILLE,
    )


# --- Early repayment --------------------------------------------------------------------


def prepay(
    schedule: Schedule, paid_through: int, day: int, amount_minor: int, mode: PrepaymentMode
) -> tuple[int, Schedule]:
    """An early repayment of `amount_minor` on `day`, instalments 1..paid_through paid.

    Returns:
        (interest charged, the remainder schedule): the interest accrued on the remaining
        principal since the last due day (or the start), actual days / 360, rounded half
        up, comes out of the amount first; the rest reduces the principal; the remainder
        schedule (module docstring) starts on `day`, empty when the amount clears the loan.

    Raises:
        ValueError: `paid_through` not in 0..(instalments - 1); `day` before the last due
        day or on or after the next one (that instalment falls due first); an amount not
        above the accrued interest (it would repay no principal), or above everything
        owed (the message names the maximum); an unknown mode.
    """
    if mode not in ("reduce_instalment", "reduce_term"):
        raise ValueError(f'mode must be "reduce_instalment" or "reduce_term", not {mode!r}')
    last_due_day, remaining, following = _position(schedule, paid_through, day)
    interest = _interest(remaining, schedule.annual_rate, day - last_due_day)
    _check_fen("amount_minor", amount_minor)
    owed = remaining + interest
    if amount_minor > owed:
        raise ValueError(
            f"amount_minor {amount_minor} is more than the {owed} fen owed on day {day} "
            f"(principal {remaining} + interest {interest}): at most {owed}"
        )
    if amount_minor <= interest:
        raise ValueError(
            f"amount_minor {amount_minor} must be more than the {interest} fen of interest "
            f"accrued since day {last_due_day}, or it repays no principal"
        )
    new_principal = owed - amount_minor
    if new_principal == 0:
        term, rows = 0, []
    else:
        term = len(following)
        if mode == "reduce_term":
            term = _shorter_term(schedule, new_principal, len(following))
        rows = _rows(
            schedule.method,
            new_principal,
            schedule.annual_rate,
            term,
            first_period_days=following[0].due_day - day,
        )
    remainder = _assemble(
        schedule.method,
        new_principal,
        schedule.annual_rate,
        term,
        day,
        rows,
        [instalment.due_day for instalment in following],
        first_number=following[0].number,
        upfront_fee_minor=0,
        monthly_fee_minor=following[0].fee_minor,
    )
    return interest, remainder


def _position(
    schedule: Schedule, paid_through: int, day: int
) -> tuple[int, int, tuple[Instalment, ...]]:
    """(last due day or start, principal remaining, instalments left) after instalments
    1..paid_through, checking that `day` lies in the current period."""
    count = len(schedule.instalments)
    if count == 0:
        raise ValueError("the loan is repaid (no instalments left): there is nothing to prepay")
    _check_integer("paid_through", paid_through)
    if not 0 <= paid_through < count:
        raise ValueError(
            f"paid_through must be in 0..{count - 1} (instalments left), not {paid_through}"
        )
    previous = schedule.instalments[paid_through - 1] if paid_through else None
    last_due_day = previous.due_day if previous else schedule.start_day
    remaining = previous.remaining_minor if previous else schedule.principal_minor
    following = schedule.instalments[paid_through:]
    _check_day("day", day)
    if not last_due_day <= day < following[0].due_day:
        raise ValueError(
            f"day {day} must be in {last_due_day}..{following[0].due_day - 1}: on or after "
            f"the last due day, before instalment {following[0].number} falls due"
        )
    return last_due_day, remaining, following


def _shorter_term(current: Schedule, principal_minor: int, count: int) -> int:
    """The shortest term, at most `count`, whose level payment (equal principal, zero
    rate: per-period principal) for `principal_minor` is not above the current one."""
    if principal_minor == 0:
        return count
    if current.method is Method.EQUAL_PRINCIPAL or current.annual_rate == 0:
        # ceil(principal / (current principal / current term)), exactly.
        needed = -(-principal_minor * current.term_months // current.principal_minor)
        return max(1, min(count, needed))
    payment = level_payment_minor(current.principal_minor, current.annual_rate, current.term_months)
    low, high = 0, count  # level(principal, high) <= payment, or high == count
    while high - low > 1:
        middle = (low + high) // 2
        if level_payment_minor(principal_minor, current.annual_rate, middle) <= payment:
            high = middle
        else:
            low = middle
    return high


# --- Argument checks --------------------------------------------------------------------


def _check_integer(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not {type(value).__name__}")


def _check_fen(name: str, value: object) -> None:
    _check_integer(name, value)
    assert isinstance(value, int)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")


def _check_principal(principal_minor: object) -> None:
    _check_integer("principal_minor", principal_minor)
    assert isinstance(principal_minor, int)
    if not 0 < principal_minor <= PRINCIPAL_MAX_MINOR:
        raise ValueError(
            f"principal_minor must be in 1..{PRINCIPAL_MAX_MINOR} fen, not {principal_minor}"
        )


def _check_rate(name: str, rate: object) -> None:
    _check_integer(name, rate)
    assert isinstance(rate, int)
    if not 0 <= rate <= RATE_MAX:
        raise ValueError(f"{name} must be in 0..{RATE_MAX} ppm a year (0%..100%), not {rate}")


def _check_term(term_months: object) -> None:
    _check_integer("term_months", term_months)
    assert isinstance(term_months, int)
    if not 1 <= term_months <= TERM_MONTHS_MAX:
        raise ValueError(f"term_months must be in 1..{TERM_MONTHS_MAX}, not {term_months}")


def _check_repayment_day(repayment_day: object) -> None:
    _check_integer("repayment_day", repayment_day)
    assert isinstance(repayment_day, int)
    if not 1 <= repayment_day <= REPAYMENT_DAY_MAX:
        raise ValueError(
            f"repayment_day must be in 1..{REPAYMENT_DAY_MAX} (every month has it), "
            f"not {repayment_day}"
        )


def _check_day(name: str, day: object) -> None:
    _check_integer(name, day)
    assert isinstance(day, int)
    if not 0 <= day < DAY_COUNT:
        raise ValueError(f"{name} must be a day number in 0..{DAY_COUNT - 1}, not {day}")


def _method(method: str) -> Method:
    try:
        return Method(method)
    except ValueError:
        expected = ", ".join(f'"{each.value}"' for each in Method)
        raise ValueError(f"method must be one of {expected}, not {method!r}") from None
