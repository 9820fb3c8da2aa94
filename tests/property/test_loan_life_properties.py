"""A loan's whole life through the day-end collection, whatever the customer's funds.

The collection's twin (`ledger.loan_book.collect_one`, which the kernel equals batch by
batch: tests/property/test_loan_book_differential.py) runs on random days with random
funds in the repayment account (nothing, a part, plenty; days skipped, as a day-end
missed and caught up), until the loan is closed. Issue 16's properties:

- the principal repaid over the loan's life equals the principal disbursed, and at every
  step the principal repaid plus the principal outstanding equals it;
- with the default order (penalty, interest, principal), no collection pays principal
  while penalty or interest fallen due stays unpaid;
- nothing is taken beyond what is available, nothing is taken twice on one day (a rerun
  of the day touches nothing), and what is taken is exactly the parts paid.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.interest import RATE_MAX
from ledger.loan_book import (
    ALLOCATION_DEFAULT,
    LoanFlags,
    collect_one,
    first_row,
    loan_row_view,
    terms_of_segment,
)
from ledger.loans import Method, schedule
from limits.calendar import day_of_date

DAY0 = day_of_date(2026, 1, 5)


@settings(max_examples=200, deadline=None)
@given(
    principal=st.integers(1, 50_000_000),
    rate=st.one_of(st.sampled_from([0, 34_500, 240_000]), st.integers(0, RATE_MAX)),
    term=st.integers(1, 36),
    method=st.sampled_from(list(Method)),
    repayment_day=st.integers(1, 28),
    grace=st.integers(0, 10),
    uplift=st.sampled_from([0, 300, 500]),
    fee=st.sampled_from([0, 0, 500]),
    data=st.data(),
)
def test_a_loan_repays_exactly_its_principal_and_never_principal_before_dues(
    principal: int, rate: int, term: int, method: Method, repayment_day: int, grace: int,
    uplift: int, fee: int, data: st.DataObject,
) -> None:  # fmt: skip
    plan = schedule(principal, rate, term, method, DAY0, repayment_day, monthly_fee_minor=fee)
    terms = terms_of_segment(
        slot=1, repayment_slot=2, loan_account_id=77, principal_minor=principal,
        annual_rate=rate, count=term, method=method, monthly_fee_minor=fee,
        uplift_permille=uplift, grace_days=grace, allocation=ALLOCATION_DEFAULT,
    )  # fmt: skip
    row = loan_row_view(first_row(principal, plan.instalments[0].due_day))
    last_due = plan.instalments[-1].due_day
    day = DAY0
    repaid = 0
    touched = 0
    while not row.flags & LoanFlags.CLOSED:
        day += data.draw(st.integers(1, 40), label="days to the next day-end")
        if day > last_due + 400:  # long past the term: the customer pays everything
            available = 10**15
        else:
            available = data.draw(
                st.one_of(st.just(0), st.integers(0, principal // 4 + 1000), st.just(10**15)),
                label="available",
            )
        before = row
        new, taken, (paid_principal, paid_interest, paid_penalty) = collect_one(
            day, terms, row, available
        )
        if new is None:
            assert taken == 0
            continue
        touched += 1
        assert 0 <= taken <= available
        assert taken == paid_principal + paid_interest + paid_penalty
        if paid_principal:
            # Every penalty unpaid before the day was paid, and no interest fallen due is
            # left (penalty accrued after today's collection is today's, not a due).
            assert paid_penalty == before.penalty_minor
            assert new.arrears_interest_minor == 0
        repaid += paid_principal
        assert repaid + new.outstanding_minor == principal
        again = collect_one(day, terms, new, 10**15)
        assert again == (None, 0, (0, 0, 0))  # a rerun of the day touches nothing
        row = new
    assert repaid == principal
    assert row.owed_minor == 0 and row.next_due_day == 0
    assert touched >= 1
