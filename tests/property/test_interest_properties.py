"""Properties of the interest arithmetic (hypothesis).

- For any catalog that validates and any deposit, an early withdrawal never pays more
  than holding the deposit to maturity (issue 14, "Must show").
- The kernel's way (one day's units at a time, one rounding) and `interest_for_days`
  agree to the fen for every span, rate, balance and day count; units are additive.
- Rounding is half away from zero, and within half a unit of the exact value.
"""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from ledger.interest import (
    RATE_MAX,
    RATE_SCALE,
    DayCount,
    accrued_units,
    daily_units,
    day_weight,
    early_withdrawal_interest,
    fen_of_units,
    format_rate,
    interest_for_days,
    maturity_day,
    parse_rate,
    round_half_up,
    term_interest,
)
from limits.calendar import civil_of_day, day_of_date, days_in_year
from limits.deposits import DepositCatalog, Term, load_catalog, parse_catalog
from tests.repo_paths import REPO_ROOT

FIRST_DAY = day_of_date(2020, 1, 1)
LAST_OPEN_DAY = day_of_date(2040, 1, 1)
PRINCIPAL_MAX_MINOR = 10**14  # a trillion CNY: far above any one deposit
day_counts = st.sampled_from(list(DayCount))
rates = st.integers(min_value=0, max_value=RATE_MAX)
principals = st.integers(min_value=0, max_value=PRINCIPAL_MAX_MINOR)


@st.composite
def catalog_texts(draw: st.DrawFn) -> str:
    """A catalog file that validates: 1..4 rate sets in date order, any day counts, and
    in each set every fixed rate at or above the set's demand rate (which the catalog
    requires), though a later set's demand rate may exceed an earlier set's fixed rates."""
    count = draw(st.integers(min_value=1, max_value=4))
    days = sorted(
        draw(
            st.sets(
                st.integers(min_value=FIRST_DAY, max_value=LAST_OPEN_DAY),
                min_size=count,
                max_size=count,
            )
        )
    )
    labels = [day_count.label for day_count in DayCount]
    lines = [
        "[demand]",
        f'day_count = "{draw(st.sampled_from(labels))}"',
        'kinds = ["class_i", "class_ii", "class_iii", "savings"]',
        "[settlement]",
        "months = [3, 6, 9, 12]",
        "day = 20",
        "[fixed]",
        f'day_count = "{draw(st.sampled_from(labels))}"',
        f"minimum_minor = {draw(st.integers(min_value=1, max_value=10**6))}",
    ]
    for effective_day in days:
        demand = draw(st.integers(min_value=0, max_value=200_000))
        # Fixed rates often equal or just above the demand rate: the edge of the property.
        margins = st.one_of(
            st.just(0),
            st.integers(min_value=0, max_value=200),
            st.integers(min_value=0, max_value=RATE_MAX - demand),
        )
        fixed = {term.value: demand + draw(margins) for term in Term}
        year, month, day_of_month = civil_of_day(effective_day)
        lines += [
            "[[rates]]",
            f"effective = {year:04d}-{month:02d}-{day_of_month:02d}",
            f'demand = "{format_rate(demand)}"',
            "fixed = { "
            + ", ".join(f'"{name}" = "{format_rate(rate)}"' for name, rate in fixed.items())
            + " }",
        ]
    return "\n".join(lines) + "\n"


@st.composite
def deposits(draw: st.DrawFn, catalog: DepositCatalog) -> tuple[int, Term, int, int]:
    """(principal, term, open day, withdrawal day) with the withdrawal before maturity."""
    first = catalog.history[0].effective_day
    open_day = draw(st.integers(min_value=first, max_value=LAST_OPEN_DAY))
    term = draw(st.sampled_from(list(Term)))
    last_day = maturity_day(open_day, term.months) - 1
    withdrawal_day = draw(
        st.one_of(
            st.integers(min_value=max(open_day, last_day - 3), max_value=last_day),
            st.integers(min_value=open_day, max_value=last_day),
        )
    )
    return draw(principals), term, open_day, withdrawal_day


def _early(catalog: DepositCatalog, principal: int, term: Term, open_day: int, on: int) -> int:
    return early_withdrawal_interest(
        principal,
        open_day=open_day,
        withdrawal_day=on,
        demand_rate=catalog.demand_rate(on),
        day_count=catalog.fixed_day_count,
        fixed_rate=catalog.fixed_rate(term, open_day),
        term_months=term.months,
    )


@given(data=st.data(), text=catalog_texts())
def test_early_withdrawal_never_pays_more_than_maturity(data: st.DataObject, text: str) -> None:
    """Any valid catalog, any deposit, any day before maturity: the early-withdrawal
    interest is at most the interest at maturity, and at least zero."""
    catalog = parse_catalog(text, "generated.toml")
    principal, term, open_day, withdrawal_day = data.draw(deposits(catalog))
    early = _early(catalog, principal, term, open_day, withdrawal_day)
    at_maturity = term_interest(principal, catalog.fixed_rate(term, open_day), term.months)
    assert 0 <= early <= at_maturity


SHIPPED = load_catalog(REPO_ROOT / "core" / "data" / "deposits.toml")


@given(deposit=deposits(SHIPPED))
def test_shipped_rates_never_need_the_cap(deposit: tuple[int, Term, int, int]) -> None:
    """With the shipped rates the demand-rate interest itself is below maturity's: the cap
    in `early_withdrawal_interest` never changes what a customer is paid today."""
    principal, term, open_day, withdrawal_day = deposit
    uncapped = interest_for_days(
        principal,
        SHIPPED.demand_rate(withdrawal_day),
        open_day,
        withdrawal_day,
        SHIPPED.fixed_day_count,
    )
    assert uncapped == _early(SHIPPED, principal, term, open_day, withdrawal_day)
    assert uncapped <= term_interest(principal, SHIPPED.fixed_rate(term, open_day), term.months)


@given(
    principal=principals,
    rate=rates,
    start=st.integers(min_value=FIRST_DAY, max_value=LAST_OPEN_DAY),
    length=st.integers(min_value=0, max_value=800),
    day_count=day_counts,
)
def test_daily_units_sum_to_interest_for_days(
    principal: int, rate: int, start: int, length: int, day_count: DayCount
) -> None:
    """Accruing one day at a time (the kernel) and settling once gives exactly
    `interest_for_days`, across year ends and leap days."""
    units = sum(
        daily_units(principal, rate, day_weight(day_count, day))
        for day in range(start, start + length)
    )
    assert units == accrued_units(principal, rate, start, start + length, day_count)
    assert fen_of_units(units) == interest_for_days(
        principal, rate, start, start + length, day_count
    )


@given(
    principal=principals,
    rate=rates,
    start=st.integers(min_value=FIRST_DAY, max_value=LAST_OPEN_DAY),
    first=st.integers(min_value=0, max_value=800),
    second=st.integers(min_value=0, max_value=800),
    day_count=day_counts,
)
def test_units_are_additive_and_rounding_is_once(
    principal: int, rate: int, start: int, first: int, second: int, day_count: DayCount
) -> None:
    """Units of two adjacent spans add up to the units of the whole; paying the spans
    separately differs from paying the whole by at most one fen (two roundings)."""
    middle, end = start + first, start + first + second
    whole = accrued_units(principal, rate, start, end, day_count)
    assert whole == accrued_units(principal, rate, start, middle, day_count) + accrued_units(
        principal, rate, middle, end, day_count
    )
    parts = interest_for_days(principal, rate, start, middle, day_count) + interest_for_days(
        principal, rate, middle, end, day_count
    )
    assert abs(parts - interest_for_days(principal, rate, start, end, day_count)) <= 1


@given(
    principal=principals,
    rate=rates,
    year=st.integers(min_value=2000, max_value=2178),
)
def test_a_calendar_year_pays_the_annual_rate_on_actual_actual(
    principal: int, rate: int, year: int
) -> None:
    """On actual/actual every calendar year, leap or not, pays exactly its annual rate;
    on 365 a common year does."""
    start, end = day_of_date(year, 1, 1), day_of_date(year + 1, 1, 1)
    expected = round_half_up(principal * rate, RATE_SCALE)
    assert interest_for_days(principal, rate, start, end, DayCount.ACT_ACT) == expected
    if days_in_year(year) == 365:
        assert interest_for_days(principal, rate, start, end, DayCount.ACT_365) == expected


@given(
    principal=principals,
    rate=rates,
    start=st.integers(min_value=FIRST_DAY, max_value=LAST_OPEN_DAY),
    length=st.integers(min_value=0, max_value=400),
    day_count=day_counts,
)
def test_interest_is_monotonic(
    principal: int, rate: int, start: int, length: int, day_count: DayCount
) -> None:
    """One more day, one more fen of principal or one more unit of rate never pays less."""
    paid = interest_for_days(principal, rate, start, start + length, day_count)
    assert interest_for_days(principal, rate, start, start + length + 1, day_count) >= paid
    assert interest_for_days(principal + 1, rate, start, start + length, day_count) >= paid
    if rate < RATE_MAX:
        assert interest_for_days(principal, rate + 1, start, start + length, day_count) >= paid


@given(
    numerator=st.integers(min_value=-(2**130), max_value=2**130),
    denominator=st.integers(min_value=1, max_value=2**80),
)
def test_round_half_up(numerator: int, denominator: int) -> None:
    """The nearest integer, halves away from zero, symmetric in sign; checked against
    exact fractions."""
    exact = Fraction(numerator, denominator)
    rounded = round_half_up(numerator, denominator)
    assert abs(exact - rounded) <= Fraction(1, 2)
    if abs(exact - rounded) == Fraction(1, 2):
        assert abs(rounded) > abs(exact)  # a half goes away from zero
    assert round_half_up(-numerator, denominator) == -rounded


@given(rate=rates)
def test_rates_round_trip_through_text(rate: int) -> None:
    """Every rate is written exactly and read back to the same integer."""
    assert parse_rate(format_rate(rate)) == rate


@given(principal=principals, rate=rates, term=st.sampled_from(list(Term)))
def test_term_interest_is_the_exact_fraction_rounded_half_up(
    principal: int, rate: int, term: Term
) -> None:
    """A term's interest is principal x rate x months / 12, rounded half up once."""
    exact = Fraction(principal * rate * term.months, RATE_SCALE * 12)
    paid = term_interest(principal, rate, term.months)
    assert abs(exact - paid) <= Fraction(1, 2)
    assert paid == int(exact + Fraction(1, 2))
