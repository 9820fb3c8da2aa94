"""Properties of the loan arithmetic (ledger/loans.py), for any principal 1..10^10 fen,
term 1..360 months, rate 0..24% and both methods (hypothesis).

- A schedule repays exactly the principal, the balance only falls and ends at 0, no
  interest is negative, each interest is the balance times the monthly rate rounded half
  up, and the customer repays principal + interest + periodic fees.
- Equal instalment: every instalment but the last is the level payment, and the last is
  within the compounded rounding bound of it: sum((1+r)^j, j < n) fen (n fen at r = 0;
  the brief's "within term fen" is that bound at r = 0 only, see the unit tests).
- Equal principal: each principal is P / n rounded down or up.
- The annualised rate is the IRR rounded half up, checked against a Fraction oracle.
- Allocation conserves the amount and never pays a due while an earlier one is unpaid.
- After any early repayment, the remainder schedule repays exactly the principal left.
"""

from __future__ import annotations

from fractions import Fraction
from typing import get_args

from hypothesis import assume, given
from hypothesis import strategies as st

from ledger.interest import RATE_SCALE, round_half_up
from ledger.loans import (
    Instalment,
    Method,
    PrepaymentMode,
    Schedule,
    allocate,
    apr_ppm,
    due_days,
    level_payment_minor,
    prepay,
    schedule,
)
from limits.calendar import day_of_date

RATE_MAX_TESTED = 240_000  # 24% a year
PRINCIPAL_MAX_TESTED = 10**10  # 100 million CNY
principals = st.integers(min_value=1, max_value=PRINCIPAL_MAX_TESTED)
terms = st.integers(min_value=1, max_value=360)
rates = st.integers(min_value=0, max_value=RATE_MAX_TESTED)
methods = st.sampled_from(list(Method))
start_days = st.integers(min_value=day_of_date(2020, 1, 1), max_value=day_of_date(2100, 12, 31))
repayment_days = st.integers(min_value=1, max_value=28)
fees = st.integers(min_value=0, max_value=100_000)


@st.composite
def schedules(draw: st.DrawFn, term_max: int = 360) -> Schedule:
    principal = draw(principals)
    return schedule(
        principal,
        draw(rates),
        draw(st.integers(min_value=1, max_value=term_max)),
        draw(methods),
        draw(start_days),
        draw(repayment_days),
        upfront_fee_minor=draw(st.integers(min_value=0, max_value=principal - 1)),
        monthly_fee_minor=draw(fees),
    )


def check_repays_exactly(result: Schedule, *, remainder: bool) -> None:
    """The invariants every schedule keeps. A remainder's first instalment charges the
    days from the prepayment, not a month: its interest is checked by the caller."""
    monthly = Fraction(result.annual_rate, 12 * RATE_SCALE)
    balance = result.principal_minor
    for index, instalment in enumerate(result.instalments):
        assert instalment.principal_minor >= 0 and instalment.interest_minor >= 0
        assert instalment.total_minor == (
            instalment.principal_minor + instalment.interest_minor + instalment.fee_minor
        )
        if index > 0 or not remainder:
            expected = balance * monthly
            assert instalment.interest_minor == round_half_up(
                expected.numerator, expected.denominator
            )
        assert instalment.remaining_minor == balance - instalment.principal_minor
        balance = instalment.remaining_minor
    assert balance == 0
    assert sum(i.principal_minor for i in result.instalments) == result.principal_minor
    assert sum(i.interest_minor for i in result.instalments) == result.total_interest_minor
    periodic = sum(i.fee_minor for i in result.instalments)
    assert result.total_fees_minor == result.upfront_fee_minor + periodic
    assert result.total_repaid_minor == (
        result.principal_minor + result.total_interest_minor + periodic
    )
    assert result.total_repaid_minor == sum(i.total_minor for i in result.instalments)
    assert len(result.instalments) <= result.term_months


@given(principals, rates, terms, methods, start_days, repayment_days, fees, fees)
def test_a_schedule_repays_exactly_the_principal(
    principal: int,
    rate: int,
    term: int,
    method: Method,
    start: int,
    repayment_day: int,
    monthly_fee: int,
    upfront_fee: int,
) -> None:
    """The principals sum to the principal, the balance falls to 0, no interest is
    negative, each is the balance times the monthly rate rounded half up, totals add
    up, and the due days are the schedule's and increase."""
    upfront_fee = min(upfront_fee, principal - 1)
    fees_minor = {"upfront_fee_minor": upfront_fee, "monthly_fee_minor": monthly_fee}
    result = schedule(principal, rate, term, method, start, repayment_day, **fees_minor)
    check_repays_exactly(result, remainder=False)
    days = due_days(start, term, repayment_day)
    assert list(days) == sorted(set(days)) and days[0] - start >= 15
    assert [i.due_day for i in result.instalments] == list(days[: len(result.instalments)])
    assert [i.number for i in result.instalments] == list(range(1, len(result.instalments) + 1))
    if method is Method.EQUAL_PRINCIPAL:
        assert len(result.instalments) == term
        for instalment in result.instalments:
            assert principal // term <= instalment.principal_minor <= -(-principal // term)


@given(principals, st.integers(min_value=1, max_value=RATE_MAX_TESTED), terms, start_days)
def test_equal_instalments_are_level_and_the_last_within_the_rounding_bound(
    principal: int, rate: int, term: int, start: int
) -> None:
    """Every equal instalment but the last is A; the last differs from A by at most
    sum((1+r)^j, j < n) fen (each instalment's rounding, at most a fen with A's, compounds
    to the end), and when the rounding repays the loan early the last is at most A."""
    result = schedule(principal, rate, term, Method.EQUAL_INSTALMENT, start, 20)
    payment = level_payment_minor(principal, rate, term)
    paid = [i.principal_minor + i.interest_minor for i in result.instalments]
    assert paid[:-1] == [payment] * (len(paid) - 1)
    growth = 1 + Fraction(rate, 12 * RATE_SCALE)
    bound = sum((growth**j for j in range(term)), Fraction(0))
    assert abs(paid[-1] - payment) <= bound
    if len(paid) < term:
        assert paid[-1] <= payment


@given(principals, terms, start_days)
def test_zero_rate_equal_instalments_are_within_a_fen_of_the_level_payment(
    principal: int, term: int, start: int
) -> None:
    """At 0% every instalment, the last included, is P / n rounded down or up: within
    term fen (indeed 1 fen) of the level payment, as the brief asks."""
    result = schedule(principal, 0, term, Method.EQUAL_INSTALMENT, start, 20)
    payment = level_payment_minor(principal, 0, term)
    assert len(result.instalments) == term
    for instalment in result.instalments:
        assert abs(instalment.total_minor - payment) <= 1 <= term


@given(schedules(term_max=60))
def test_the_annualised_rate_is_the_irr_rounded_half_up(result: Schedule) -> None:
    """The Fraction oracle: the payments discounted at (N - 1/2) / 12e6 a month are worth
    at least what was received, at (N + 1/2) / 12e6 less (N the rate in ppm a year).
    Fees never lower it below the contract rate by more than rounding."""
    received = result.principal_minor - result.upfront_fee_minor
    payments = [i.total_minor for i in result.instalments]
    ppm = result.apr_ppm
    assert apr_ppm(received, payments) == ppm

    def worth(numerator: int) -> Fraction:
        monthly = Fraction(numerator, 24 * RATE_SCALE)
        return sum(
            (Fraction(p) / (1 + monthly) ** k for k, p in enumerate(payments, 1)), Fraction(0)
        )

    if ppm > 0:
        assert worth(2 * ppm - 1) >= received
    assert worth(2 * ppm + 1) < received


@given(principals, rates, terms, methods, start_days)
def test_without_fees_the_annualised_rate_is_the_contract_rate_up_to_rounding(
    principal: int, rate: int, term: int, method: Method, start: int
) -> None:
    """Every instalment's interest is its balance B_k times r plus a rounding d_k (|d_k|
    <= 1/2), and the balance identity P = sum((principal_k + B_k i) / (1+i)^k) holds at
    any i; at the IRR i this gives (i - r) sum(B_k v^k) = sum(d_k v^k), so |i - r| <=
    1/2 / (smallest positive balance). In ppm a year, plus the final rounding:
    |apr - rate| <= 6e6 / B_min + 1: within 1 ppm for balances above 6 million fen."""
    result = schedule(principal, rate, term, method, start, 20)
    balances = [i.remaining_minor + i.principal_minor for i in result.instalments]
    smallest = min(balance for balance in balances if balance > 0)
    assert abs(result.apr_ppm - rate) <= Fraction(6 * RATE_SCALE, smallest) + 1


@given(
    st.integers(min_value=0, max_value=10**8),
    st.lists(
        st.tuples(
            st.sampled_from(["penalty", "interest", "principal", "fee"]), st.integers(0, 10**7)
        ),
        max_size=4,
        unique_by=lambda due: due[0],
    ),
)
def test_allocation_conserves_the_amount_and_respects_the_order(
    amount: int, dues: list[tuple[str, int]]
) -> None:
    """What is paid plus what is left is the amount; no due gets more than is due; a due
    is paid at all only when every earlier one is paid in full; money is left over only
    when every due is paid."""
    paid, left = allocate(amount, dues)
    assert [name for name, _ in paid] == [name for name, _ in dues]
    assert sum(portion for _, portion in paid) + left == amount
    assert left >= 0
    for index, ((_, portion), (_, due)) in enumerate(zip(paid, dues, strict=True)):
        assert 0 <= portion <= due
        if portion > 0:
            assert all(p == d for (_, p), (_, d) in zip(paid[:index], dues[:index], strict=True))
    if left > 0:
        assert paid == tuple(dues)


@st.composite
def prepayments(draw: st.DrawFn) -> tuple[Schedule, int, int, int, PrepaymentMode]:
    """A schedule with at least one instalment left, a day in the current period, an
    amount that repays 1 fen of principal up to everything owed, and a mode."""
    result = draw(schedules())
    paid_through = draw(st.integers(min_value=0, max_value=len(result.instalments) - 1))
    previous: Instalment | None = result.instalments[paid_through - 1] if paid_through else None
    last_due = previous.due_day if previous else result.start_day
    remaining = previous.remaining_minor if previous else result.principal_minor
    on_day = draw(
        st.integers(min_value=last_due, max_value=result.instalments[paid_through].due_day - 1)
    )
    assume(remaining > 0)  # equal principal of P < n fen ends with instalments of 0 principal
    accrued = Fraction(remaining * result.annual_rate * (on_day - last_due), 360 * RATE_SCALE)
    interest = round_half_up(accrued.numerator, accrued.denominator)
    amount = draw(st.integers(min_value=interest + 1, max_value=interest + remaining))
    mode = draw(st.sampled_from(get_args(PrepaymentMode)))
    return result, paid_through, on_day, amount, mode


def level(result: Schedule) -> int:
    """The current level payment (equal instalment) or per-period principal, rounded up."""
    if result.method is Method.EQUAL_PRINCIPAL or result.annual_rate == 0:
        return -(-result.principal_minor // result.term_months)
    return level_payment_minor(result.principal_minor, result.annual_rate, result.term_months)


@given(prepayments(), st.data())
def test_after_a_prepayment_the_remainder_repays_exactly_what_is_left(
    case: tuple[Schedule, int, int, int, PrepaymentMode], data: st.DataObject
) -> None:
    """The interest charged comes out first and the rest of the amount repays principal:
    the remainder repays exactly the balance left, on the original due days and numbers,
    never more instalments than were left (reduce_term: a shorter term at no more than
    the current payment, when one exists),
    and it can itself be prepaid again, down to closing the loan."""
    result, paid_through, on_day, amount, mode = case
    previous = result.instalments[paid_through - 1] if paid_through else None
    remaining = previous.remaining_minor if previous else result.principal_minor
    charged, remainder = prepay(result, paid_through, on_day, amount, mode)
    assert 0 <= charged < amount
    assert remainder.principal_minor == remaining - (amount - charged)
    check_repays_exactly(remainder, remainder=True)
    if remainder.instalments:
        days = remainder.instalments[0].due_day - on_day
        accrued = Fraction(remainder.principal_minor * result.annual_rate * days, 360 * RATE_SCALE)
        assert remainder.instalments[0].interest_minor == round_half_up(
            accrued.numerator, accrued.denominator
        )
    following = result.instalments[paid_through:]
    assert len(remainder.instalments) <= len(following)
    for new, old in zip(remainder.instalments, following, strict=False):
        assert (new.number, new.due_day, new.fee_minor) == (old.number, old.due_day, old.fee_minor)
    if remainder.principal_minor == 0:
        assert remainder.instalments == ()
        return
    if mode == "reduce_term":
        if remainder.term_months < len(following):
            assert level(remainder) <= level(result)
        else:  # no shorter term keeps the payment: the instalment is recomputed instead
            assert prepay(result, paid_through, on_day, amount, "reduce_instalment")[1] == remainder
    # Prepay the remainder once more, on a day of its first period: everything owed.
    again_day = data.draw(
        st.integers(min_value=on_day, max_value=remainder.instalments[0].due_day - 1)
    )
    accrued = Fraction(
        remainder.principal_minor * remainder.annual_rate * (again_day - on_day), 360 * RATE_SCALE
    )
    owed = remainder.principal_minor + round_half_up(accrued.numerator, accrued.denominator)
    _, closed = prepay(remainder, 0, again_day, owed, "reduce_term")
    assert closed.instalments == () and closed.principal_minor == 0
