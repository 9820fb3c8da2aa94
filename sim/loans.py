"""The simulated bank's loans: the population's loan book, the day's disbursements, the
terms table the day-end collects with.

**The book** (`LoanBook`): every loan's contract, one row of a numpy array
(`CONTRACT_DTYPE`, 80 bytes a loan: 900,000 loans of a 30M population take 72 MB, their
terms table 43 MB), never a Python object per loan. A loan is an index into it; the
population's loans come first, in slot order, then the loans disbursed during the run.

**The population's loans** (`LoanBook.build`): a `loan_fraction` of the users (a hash
of the seed and the user) hold one loan of the bank's catalog (`core/data/loans.toml`:
the personal loan, a tenth the business loan, whichever are in force on the first
simulated day), disbursed before the simulated day: its rate is the product's on its
disbursement day (the LPR of `core/data/lpr.toml` then plus the product's spread), the
fees, grace days, penalty uplift and repayment order the product's; the term 6, 12, 24
or 36 months (within the product's range), the method one the product offers, the
principal one of a few amounts (3,000 to 200,000 CNY, clamped to the product's range).
Its repayment day is the simulated day's day of the month for a `loan_due_today_fraction`
of them (the day-end of the simulated day collects their instalment), any of 1..28
otherwise (the product's fixed day is not kept, so that every simulated day has
instalments due); it was disbursed 0..term-1 months before, 16, 25 or 40 days before a
repayment day. Every instalment due before the simulated day was collected on its due
day, except for a `loan_overdue_fraction`: their last one or two found nothing to take
and have been in arrears since, accruing penalty after the grace days. The rows are
what the day-ends before the simulated day left (`sim.loan_checker.history_state`, the
checker's model); each is written with its disbursement in one POST_WITH_ROWS
(`ledger.loan_book.disbursement_parts`): the loan-funding account lends the principal
still outstanding to the holder's Class II account, which spends it straight away (a
withdrawal to the bound card: the money left long ago), so the customer's balance is
unchanged and the funding account holds the outstanding book. Repayments come from the
holder's Class II account: about a third of the loans due find it short.

**Disbursements during the day** (`Disbursements`): `loan_disbursements_per_user_day`
new loans a day, as the loan service disburses them (issue 16, `LoanAccounts.disburse`):
the serving primary opens the loan account (a CREATE_ACCOUNTS entry) and posts the
disbursement with the loan's first row (`disbursement_parts`, a POST_WITH_ROWS entry).
The disbursement is acknowledged when its entry commits (the commit rule of every
batch); one not answered in the client timeout is retried with the same ids at the next
tick, on whichever DC is then the primary (the ledger answers EXISTS for one that
posted), for at most half the log's retention (the ledger's idempotency window), then
given up (its outcome unknown).

**The terms table** (`LoanBook.terms_table`): what the day-end's `LoanCollectionMaker`
is handed: the population's entries (built once: their slots are the same on every DC,
built before the base backup) and the entries of the loans disbursed since whose
account the primary holds, at its slots, sorted by slot.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cext import simgen
from core.data import DEFAULT_LOANS_PATH, DEFAULT_LPR_PATH
from core.progress import progress_bar
from core.services.loans import fee_minor
from ledger.constants import LOAN_FUNDING_ID
from ledger.interest import add_months
from ledger.loan_book import (
    LOAN_ROW,
    LOAN_TERMS,
    METHOD_EQUAL_INSTALMENT,
    METHOD_EQUAL_PRINCIPAL,
    LoanFlags,
    LoanRow,
    LoanTerms,
    allocation_code,
    disbursement_parts,
    pack_loan_terms,
    terms_of_segment,
)
from ledger.loans import REPAYMENT_DAY_MAX, Method, due_days
from ledger.records import pack_account_input, pack_transfer
from ledger.types import AccountKind, CreateTransferResult, TransferCode
from limits.calendar import civil_of_day, day_of_date
from limits.loans import LoanCatalog, LoanProduct, load_loan_catalog
from limits.lpr import LprTable, load_lpr

from .loan_checker import (
    LOAN_DTYPE,
    Contract,
    LoanChecker,
    Plans,
    contract_of,
    first_state,
    history_state,
)
from .model import SimError

PRODUCT_LOAN = 6  # [products.consumer_loan] in core/data/limits.toml
TAG_LOAN = 6  # account tag of a population loan (its index is the user's)
TAG_LOAN_NEW = 0x22  # account tag of a loan disbursed during the run (its number)
LOANS_PATH = DEFAULT_LOANS_PATH
LPR_PATH = DEFAULT_LPR_PATH
BUSINESS_PERCENT = 10  # of the loans, the business loan's (when it is in force)
TERMS_MONTHS = (6, 12, 24, 36)
# Principals (CNY) by share of the loans (percent); clamped to the product's range.
AMOUNT_SHARES = (
    (3_000, 10),
    (5_000, 15),
    (10_000, 20),
    (20_000, 20),
    (30_000, 12),
    (50_000, 10),
    (100_000, 8),
    (200_000, 5),
)
LEAD_DAYS = (16, 25, 40)  # a population loan was disbursed this long before a repayment day
# Transfer ids: tag << 40 | part in the high half, the loan account's low half below.
LOAN_ID_TAG = 0x4C4E44  # "LND"
PART_BOOK = 0  # a population loan's disbursement (the principal still outstanding)
PART_SPENT = 1  # and its holder's spending of it, long ago
PART_NEW = 2  # a disbursement during the run
LOANS_PER_BUILD_ENTRY = 4_000  # two transfers each
BUILD_CHUNK = 1 << 16  # population loans made in Python before they go into the table
DISBURSEMENT_INTERVAL_NS = 30 * 10**9  # the loan service's disbursements reach the primary
MASK64 = (1 << 64) - 1

CONTRACT_DTYPE = np.dtype(
    [
        ("id_lo", "<u8"),
        ("id_hi", "<u8"),
        ("repayment_lo", "<u8"),
        ("repayment_hi", "<u8"),
        ("principal", "<i8"),
        ("ledger_amount", "<i8"),  # what the loan-funding account lent for it
        ("rate", "<u4"),
        ("monthly_fee", "<u4"),
        ("slot", "<i4"),  # a population loan's (the same on every DC); -1: look it up
        ("repayment_slot", "<i4"),
        ("term", "<u2"),
        ("start_day", "<u2"),
        ("uplift", "<u2"),
        ("method", "u1"),  # METHOD_EQUAL_INSTALMENT / METHOD_EQUAL_PRINCIPAL
        ("repayment_day", "u1"),
        ("grace", "u1"),
        ("allocation", "u1"),
        ("paid", "u1"),  # a population loan: instalments collected before the run
        ("unpaid", "u1"),  # and those in arrears since
        ("product", "u1"),  # index into LoanBook.products
        ("origin", "u1"),  # 0 population, 1 disbursed during the run
    ]
)
ORIGIN_POPULATION = 0
ORIGIN_NEW = 1


def _mix(value: int) -> int:
    """splitmix64's finalizer (sim/population.py's), for a loan's facts."""
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def _mix_array(values: np.ndarray) -> np.ndarray:
    """`_mix` over a uint64 array (numpy wraps array products silently)."""
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = values ^ (values >> np.uint64(31))
    return mixed


def holders(seed: int, first: int, count: int, fraction: float) -> np.ndarray:
    """The users in [first, first + count) who hold a population loan (uint64, ordered)."""
    users = np.arange(first, first + count, dtype=np.uint64)
    key = np.uint64((seed * 0x632BE59BD9B4E019 + TAG_LOAN * 0x8CB92BA72F3D8DD7) & MASK64)
    threshold = np.uint64(int(fraction * (1 << 53)))
    chosen: np.ndarray = users[(_mix_array(users ^ key) >> np.uint64(11)) < threshold]
    return chosen


def loan_catalog() -> LoanCatalog:
    if not LOANS_PATH.exists():
        raise SimError(f"{LOANS_PATH}: the loan catalog the simulator uses is missing")
    return load_loan_catalog(LOANS_PATH)


def lpr_table() -> LprTable:
    if not LPR_PATH.exists():
        raise SimError(f"{LPR_PATH}: the LPR table the simulator uses is missing")
    return load_lpr(LPR_PATH)


@dataclass(frozen=True)
class Facts:
    """What a hash decides of a loan."""

    product: int
    term: int
    method: int
    principal: int
    repayment_day: int
    months_back: int
    lead_days: int
    overdue: bool
    unpaid_max: int


class LoanBook:
    """The loans' contracts (module docstring): the population's, then the day's."""

    def __init__(
        self,
        seed: int,
        users: int,
        day: int,
        *,
        due_today_fraction: float,
        overdue_fraction: float,
        catalog: LoanCatalog | None = None,
        lpr: LprTable | None = None,
    ) -> None:
        self.seed = seed
        self.users = users
        self.day = day  # the first simulated day
        self.due_today_fraction = due_today_fraction
        self.overdue_fraction = overdue_fraction
        self.catalog = catalog or loan_catalog()
        self.lpr = lpr or lpr_table()
        published = self.catalog.published(day) or tuple(
            self.catalog.versions(product_id)[0] for product_id in self.catalog.product_ids
        )
        personal = [p for p in published if p.kind == "personal"] or list(published)
        business = [p for p in published if p.kind == "business"]
        self.products: tuple[LoanProduct, ...] = (personal[0], *business[:1])
        self._terms = [
            [t for t in TERMS_MONTHS if spec.term_min <= t <= spec.term_max] or [spec.term_min]
            for spec in self.products
        ]
        self._methods = [
            [
                METHOD_EQUAL_INSTALMENT
                if name == Method.EQUAL_INSTALMENT
                else METHOD_EQUAL_PRINCIPAL
                for name in spec.methods
            ]
            for spec in self.products
        ]
        self._allocations = [allocation_code(spec.allocation) for spec in self.products]
        self._rates: dict[tuple[int, int], int] = {}
        self._starts: dict[tuple[int, int, int], int] = {}
        self.contracts = np.zeros(0, dtype=CONTRACT_DTYPE)
        self.count = 0
        self.population_count = 0
        self.population_terms = b""
        self.plans = Plans()
        self._shapes: dict[tuple[int, ...], int] = {}  # terms shape -> index in _shape_terms
        self._shape_terms: list[LoanTerms] = []
        self.counts: Counter[str] = Counter()

    # --- contracts -------------------------------------------------------------------------

    def _grow(self, count: int) -> None:
        if count <= len(self.contracts):
            return
        size = max(count, len(self.contracts) + len(self.contracts) // 8 + 64)
        grown = np.zeros(size, dtype=CONTRACT_DTYPE)
        grown[: self.count] = self.contracts[: self.count]
        self.contracts = grown

    def account_id(self, loan: int) -> int:
        contract = self.contracts[loan]
        return (int(contract["id_hi"]) << 64) | int(contract["id_lo"])

    def repayment_id(self, loan: int) -> int:
        contract = self.contracts[loan]
        return (int(contract["repayment_hi"]) << 64) | int(contract["repayment_lo"])

    def contract(self, loan: int) -> Contract:
        """The model's view of loan `loan`'s contract."""
        return contract_of(self.contracts[loan])

    def facts(self, key: int) -> Facts:
        """A loan's facts from the hash of `key` (a user's, or a new loan's number)."""
        hashed = _mix(self.seed * 0x100000001B3 ^ key ^ 0x10A4)
        product = 1 if len(self.products) > 1 and hashed % 100 < BUSINESS_PERCENT else 0
        spec = self.products[product]
        terms, methods = self._terms[product], self._methods[product]
        term = terms[(hashed >> 8) % len(terms)]
        share = (hashed >> 16) % 100
        amount_cny = AMOUNT_SHARES[-1][0]
        for amount_cny, percent in AMOUNT_SHARES:  # noqa: B007 (the amount the share falls in)
            if share < percent:
                break
            share -= percent
        principal = min(max(amount_cny * 100, spec.amount_min_minor), spec.amount_max_minor)
        today = civil_of_day(self.day)[2]
        due_today = today <= REPAYMENT_DAY_MAX and (
            (hashed >> 24) % 1000 < self.due_today_fraction * 1000
        )
        return Facts(
            product=product,
            term=term,
            method=methods[(hashed >> 12) % len(methods)],
            principal=principal,
            repayment_day=today if due_today else (hashed >> 34) % REPAYMENT_DAY_MAX + 1,
            months_back=(hashed >> 40) % term,
            lead_days=LEAD_DAYS[(hashed >> 48) % len(LEAD_DAYS)],
            overdue=(hashed >> 52) % 1000 < self.overdue_fraction * 1000,
            unpaid_max=1 + (hashed >> 62) % 2,
        )

    def _contract(self, facts: Facts, start_day: int, repayment_day: int) -> Contract:
        """The contract of a loan with these facts disbursed on `start_day`: the rate the
        product's on that day, its fees, grace, uplift and repayment order."""
        spec = self.products[facts.product]
        rate = self._rates.get((facts.product, start_day))
        if rate is None:
            first = self.lpr.history[0].effective_day
            rate = self._rates[(facts.product, start_day)] = int(
                spec.contract_rate(self.lpr, max(start_day, first))
            )
        return Contract(
            principal=facts.principal,
            rate=rate,
            term=facts.term,
            method=facts.method,
            monthly_fee=fee_minor(facts.principal, spec.monthly_fee_ppm),
            start_day=start_day,
            repayment_day=repayment_day,
            grace=spec.grace_days,
            uplift=spec.penalty_uplift_permille,
            allocation=self._allocations[facts.product],
        )

    def _shape(self, contract: Contract) -> int:
        """The index of the contract's terms shape (`ledger.loan_book.terms_of_segment`
        of its principal, rate, term, method, fees, grace, uplift and order: the level
        payment of a shape is computed once)."""
        key = contract[:5] + contract[7:]
        index = self._shapes.get(key)
        if index is None:
            index = self._shapes[key] = len(self._shape_terms)
            self._shape_terms.append(
                terms_of_segment(
                    slot=0,
                    repayment_slot=0,
                    loan_account_id=0,
                    principal_minor=contract.principal,
                    annual_rate=contract.rate,
                    count=contract.term,
                    method=_METHODS[contract.method],
                    monthly_fee_minor=contract.monthly_fee,
                    uplift_permille=contract.uplift,
                    grace_days=contract.grace,
                    allocation=contract.allocation,
                )
            )
        return index

    def terms_of(self, loan: int, slot: int) -> LoanTerms:
        """The loan's segment-0 terms entry at `slot`."""
        shape = self._shape_terms[self._shape(self.contract(loan))]
        return shape._replace(
            slot=slot,
            repayment_slot=int(self.contracts[loan]["repayment_slot"]),
            loan_id_lo=int(self.contracts[loan]["id_lo"]),
        )

    # --- the population's loans -----------------------------------------------------

    def build(
        self,
        ledger: Any,
        checker: LoanChecker,
        population: Any,
        timestamp_ns: int,
        *,
        reserve: int,
        quiet: bool,
    ) -> int:
        """Open, fund and write the population's loans (module docstring); returns the
        next free timestamp. `checker` learns every row as its model's starting point.
        Room is made for `reserve` loans disbursed later, so the tables are not copied.

        About 30 us a loan in Python (27 s for the 900,000 loans of 30M users): the
        contracts go into the numpy table a chunk at a time, never a Python object a loan.
        """
        users = population.users
        chosen = np.concatenate(
            [
                holders(self.seed, first, min(1 << 20, users - first), population.loan_fraction)
                for first in range(0, users, 1 << 20)
            ]
            or [np.zeros(0, dtype=np.uint64)]
        )
        count = len(chosen)
        self._grow(count + reserve)
        rows = np.zeros(count, dtype=LOAN_DTYPE)
        shapes = np.zeros(count, dtype=np.int32)
        first_slot = ledger.account_count
        with progress_bar(count, "loans") as progress:
            for first in range(0, count, BUILD_CHUNK):
                last = min(count, first + BUILD_CHUNK)
                records, states = [], []
                for offset, user in enumerate(chosen[first:last].tolist()):
                    record, row, shape = self._population_loan(
                        ledger, user, first_slot + first + offset
                    )
                    records.append(record)
                    states.append(row)
                    shapes[first + offset] = shape
                self.contracts[first:last] = np.array(records, dtype=CONTRACT_DTYPE)
                rows[first:last] = np.array(states, dtype=LOAN_DTYPE)
                if not quiet:
                    progress.update(last - first)
        self.count = self.population_count = count
        checker.register_population(rows, reserve)
        for first in range(0, count, LOANS_PER_BUILD_ENTRY):
            last = min(count, first + LOANS_PER_BUILD_ENTRY)
            inputs = b"".join(_opening(account_id) for account_id in self._ids(first, last))
            results = ledger.create_accounts(inputs)
            assert results.count(0) == last - first, Counter(results)
        last_slot = first_slot + count - 1  # opened in order: slot order is loan order
        assert count == 0 or ledger.account_slot(self.account_id(count - 1)) == last_slot
        self.population_terms = self._population_terms(shapes)
        return self._disburse_population(ledger, rows, timestamp_ns)

    def _ids(self, first: int, last: int, prefix: str = "id") -> list[int]:
        """The account ids (`prefix` "id") or repayment account ids ("repayment") of
        loans [first, last)."""
        return [
            (high << 64) | low
            for high, low in zip(
                self.contracts[f"{prefix}_hi"][first:last].tolist(),
                self.contracts[f"{prefix}_lo"][first:last].tolist(),
                strict=True,
            )
        ]

    def _population_terms(self, shapes: np.ndarray) -> bytes:
        """The population's terms table (slot order: the loans' own order)."""
        count = self.population_count
        terms = bytearray(LOAN_TERMS.size * count)
        slots = self.contracts["slot"][:count].tolist()
        repayment_slots = self.contracts["repayment_slot"][:count].tolist()
        ids = self.contracts["id_lo"][:count].tolist()
        for loan, shape in enumerate(shapes.tolist()):
            entry = self._shape_terms[shape]._replace(
                slot=slots[loan], repayment_slot=repayment_slots[loan], loan_id_lo=ids[loan]
            )
            LOAN_TERMS.pack_into(terms, loan * LOAN_TERMS.size, *entry)
        return bytes(terms)

    def _disburse_population(self, ledger: Any, rows: np.ndarray, timestamp_ns: int) -> int:
        """Each population loan's disbursement of what is outstanding, spent at once, with
        its row (module docstring), in POST_WITH_ROWS batches."""
        count = self.population_count
        clearing = simgen.account_id(0, simgen.TAG_INTERNAL, simgen.INTERNAL_CLEARING_INDEX)
        amounts = self.contracts["ledger_amount"][:count].tolist()
        for first in range(0, count, LOANS_PER_BUILD_ENTRY):
            last = min(count, first + LOANS_PER_BUILD_ENTRY)
            transfers, writes = [], []
            account_ids, holders = self._ids(first, last), self._ids(first, last, "repayment")
            for index, state in enumerate(rows[first:last].tolist()):
                loan_id, holder, amount = account_ids[index], holders[index], amounts[first + index]
                record, write = disbursement_parts(
                    loan_transfer_id(loan_id, PART_BOOK), LOAN_FUNDING_ID, holder, loan_id,
                    amount, LOAN_ROW.pack(*state), transfer_index=2 * index,
                )  # fmt: skip
                transfers += [record, pack_transfer(
                    id=loan_transfer_id(loan_id, PART_SPENT), debit_account_id=holder,
                    credit_account_id=clearing, amount=amount, code=TransferCode.WITHDRAW_BOUND,
                )]  # fmt: skip
                writes.append(write)
            results, _, _ = ledger.post_with_rows(
                b"".join(transfers), b"".join(writes), timestamp_ns, self.day
            )
            assert results.count(0) == len(transfers), Counter(results)
            timestamp_ns += len(transfers)
            ledger.evict(timestamp_ns, 1 << 62)  # the setup is not the day's traffic
        return timestamp_ns

    def _population_loan(
        self, ledger: Any, user: int, slot: int
    ) -> tuple[tuple[int, ...], LoanRow, int]:
        """`user`'s loan, to be opened at `slot`: (its CONTRACT_DTYPE record, its row
        before the simulated day, its terms shape)."""
        facts = self.facts(user)
        today = self.day
        months_back = facts.months_back
        while True:
            start = self._start_day(facts.repayment_day, months_back, facts.lead_days)
            contract = self._contract(facts, start, facts.repayment_day)
            plan = self.plans.of(contract)
            fallen = bisect.bisect_left(plan.due_days, today)
            if fallen < len(plan.due_days) or months_back == 0:
                break
            months_back -= 1  # every instalment fell due already: a loan taken later
        unpaid = min(fallen, facts.unpaid_max) if facts.overdue else 0
        row = history_state(plan, contract, fallen - unpaid, unpaid, today)
        loan_id = simgen.account_id(self.seed, TAG_LOAN, user)
        holder = simgen.account_id(self.seed, simgen.TAG_CLASS_II, user)
        counts = self.counts
        counts["loans"] += 1
        counts["due_today"] += fallen < len(plan.due_days) and plan.due_days[fallen] == today
        counts["overdue"] += bool(unpaid)
        counts["outstanding_fen"] += row.outstanding_minor
        record = _record(
            loan_id, holder, contract, row.outstanding_minor, slot,
            ledger.account_slot(holder), fallen - unpaid, unpaid, facts.product,
            ORIGIN_POPULATION,
        )  # fmt: skip
        return record, row, self._shape(contract)

    def _start_day(self, repayment_day: int, months_back: int, lead_days: int) -> int:
        """`lead_days` before the repayment day `months_back` months before the first
        simulated day's month."""
        key = (repayment_day, months_back, lead_days)
        start = self._starts.get(key)
        if start is None:
            year, month, _ = civil_of_day(self.day)
            anchor = day_of_date(year, month, repayment_day)
            start = self._starts[key] = add_months(anchor, -months_back) - lead_days
        return start

    # --- loans disbursed during the run -------------------------------------------------

    def new_loan(self, number: int, start_day: int, ledger: Any) -> int:
        """Contract the run's `number`-th new loan, disbursed on `start_day` to a user's
        Class II account (repaid from it); returns its index."""
        facts = self.facts((1 << 40) + number)
        loan = self.count
        self._grow(loan + 1)
        self.count += 1
        user = _mix(self.seed ^ (number << 20) ^ 0xD15B) % self.users
        loan_id = simgen.account_id(self.seed, TAG_LOAN_NEW, number)
        holder = simgen.account_id(self.seed, simgen.TAG_CLASS_II, user)
        spec = self.products[facts.product]
        repayment_day = spec.repayment_day or min(civil_of_day(start_day)[2], REPAYMENT_DAY_MAX)
        contract = self._contract(facts, start_day, repayment_day)
        net = facts.principal - fee_minor(facts.principal, spec.upfront_fee_ppm)
        self.contracts[loan] = _record(
            loan_id, holder, contract, net, -1, ledger.account_slot(holder), 0, 0,
            facts.product, ORIGIN_NEW,
        )  # fmt: skip
        assert self.row_of(loan).next_due_day == due_days(start_day, facts.term, repayment_day)[0]
        return loan

    def row_of(self, loan: int) -> LoanRow:
        """A new loan's first row: everything scheduled, its first due day next."""
        return first_state(self.plans.of(self.contract(loan)))

    def opening(self, loan: int) -> bytes:
        """The opening of a loan's account."""
        return _opening(self.account_id(loan))

    def disbursement(self, loan: int, transfer_index: int) -> tuple[bytes, bytes]:
        """A new loan's disbursement (`ledger.loan_book.disbursement_parts`): the transfer
        and its first row's write, for the entry's transfer `transfer_index`."""
        loan_id = self.account_id(loan)
        return disbursement_parts(
            loan_transfer_id(loan_id, PART_NEW), LOAN_FUNDING_ID, self.repayment_id(loan),
            loan_id, int(self.contracts[loan]["ledger_amount"]),
            LOAN_ROW.pack(*self.row_of(loan)), transfer_index=transfer_index,
        )  # fmt: skip

    # --- per data center ------------------------------------------------------------------

    def new_slots(self, ledger: Any) -> Iterator[tuple[int, int]]:
        """(loan, slot) of the run's loans whose account `ledger` holds."""
        for loan in range(self.population_count, self.count):
            slot = ledger.account_slot(self.account_id(loan))
            if slot >= 0:
                yield loan, slot

    def present_on(self, ledger: Any) -> tuple[np.ndarray, np.ndarray]:
        """(loan indexes, slots) of the loans `ledger` holds with an OPEN row, in slot
        order: the population's, then the run's whose disbursement posted there."""
        count = self.population_count
        loans = np.arange(count, dtype=np.int64)
        slots = self.contracts["slot"][:count].astype(np.int64)
        found = sorted((slot, loan) for loan, slot in self.new_slots(ledger))
        opened = [
            (slot, loan)
            for slot, loan in found
            if ledger.deposits[slot * LOAN_ROW.size + _FLAGS_OFFSET] & LoanFlags.OPEN
        ]
        if opened:
            slots = np.concatenate([slots, np.array([slot for slot, _ in opened], np.int64)])
            loans = np.concatenate([loans, np.array([loan for _, loan in opened], np.int64)])
        return loans, slots

    def terms_table(self, ledger: Any) -> bytes:
        """The terms table for the day-end on `ledger` (module docstring)."""
        extra = [
            pack_loan_terms(self.terms_of(loan, slot))
            for slot, loan in sorted((slot, loan) for loan, slot in self.new_slots(ledger))
        ]
        return self.population_terms + b"".join(extra)

    def describe(self) -> dict[str, Any]:
        return {
            "products": [f"{spec.id} v{spec.version}" for spec in self.products],
            **dict(self.counts),
        }


def _method_code(method: str) -> int:
    """The terms' METHOD_* code of a `ledger.loans.Method` name."""
    if Method(method) is Method.EQUAL_INSTALMENT:
        return METHOD_EQUAL_INSTALMENT
    return METHOD_EQUAL_PRINCIPAL


def _opening(account_id: int) -> bytes:
    """The opening of a loan's account (its balance stays 0: the row is the loan)."""
    return pack_account_input(id=account_id, kind=AccountKind.LOAN, product=PRODUCT_LOAN)


def _record(
    loan_id: int,
    holder: int,
    contract: Contract,
    ledger_amount: int,
    slot: int,
    repayment_slot: int,
    paid: int,
    unpaid: int,
    product: int,
    origin: int,
) -> tuple[int, ...]:
    """A CONTRACT_DTYPE record, in its field order."""
    return (
        loan_id & MASK64, loan_id >> 64, holder & MASK64, holder >> 64, contract.principal,
        ledger_amount, contract.rate, contract.monthly_fee, slot, repayment_slot,
        contract.term, contract.start_day, contract.uplift, contract.method,
        contract.repayment_day, contract.grace, contract.allocation, paid, unpaid, product,
        origin,
    )  # fmt: skip


_METHODS = {METHOD_EQUAL_INSTALMENT: Method.EQUAL_INSTALMENT,
            METHOD_EQUAL_PRINCIPAL: Method.EQUAL_PRINCIPAL}  # fmt: skip
_FLAGS_OFFSET = LOAN_ROW.size - 3  # a row's flags byte (LoanRow: ..., segment, flags, u16)
assert LOAN_ROW.format.endswith("BBH")


def loan_transfer_id(loan_account_id: int, part: int) -> int:
    """The id of a loan's disbursement (and, for a population loan, its spending): one
    per loan and part, tagged so no channel's id can be one."""
    return (((LOAN_ID_TAG << 40) | part) << 64) | (loan_account_id & MASK64)


@dataclass
class Disbursement:
    """One new loan's disbursement, as the loan service sees it."""

    loan: int
    first_ns: int
    attempts: int = 0
    deadline_ns: int = 0  # the attempt in flight is given up at this time (0: none)
    acked_ns: int | None = None
    result: int | None = None  # the ledger's answer, once acknowledged
    gave_up: bool = False


class Disbursements:
    """The day's new loans and their disbursements' outcomes (module docstring)."""

    def __init__(self, book: LoanBook, per_day: float, seed: int, retry_window_ns: int) -> None:
        self.book = book
        self.per_interval = per_day * DISBURSEMENT_INTERVAL_NS / (86_400 * 10**9)
        self.rng = random.Random(seed * 7_919 + 0x10A4)
        self.retry_window_ns = retry_window_ns
        self.items: dict[int, Disbursement] = {}
        self.made = 0

    def arrivals(self) -> int:
        """How many new loans the loan service disburses in the next interval."""
        count = int(self.per_interval)
        return count + (self.rng.random() < self.per_interval - count)

    def add(self, loan: int, now_ns: int) -> Disbursement:
        self.made += 1
        item = self.items[loan] = Disbursement(loan, now_ns)
        return item

    def due(self, now_ns: int) -> list[Disbursement]:
        """Disbursements to send now: not answered, none in flight (or its time is up),
        still within the retry window (else given up)."""
        ready = []
        for item in self.items.values():
            if item.acked_ns is not None or item.gave_up:
                continue
            if item.deadline_ns and item.deadline_ns > now_ns:
                continue
            if now_ns - item.first_ns > self.retry_window_ns:
                item.gave_up = True
                continue
            ready.append(item)
        return ready

    def acknowledged(self, loans: list[int], results: bytearray, at_ns: int) -> None:
        """A batch of disbursements committed: each answered with its transfer's result."""
        for index, loan in enumerate(loans):
            item = self.items[loan]
            if item.acked_ns is None:
                item.acked_ns = at_ns
                item.result = results[index] if index < len(results) else None

    def acknowledged_loans(self, before_ns: int | None = None) -> list[int]:
        """Loans whose disbursement the service was told posted (OK, or EXISTS on a
        retry), acknowledged before `before_ns` when given."""
        return sorted(
            item.loan
            for item in self.items.values()
            if item.acked_ns is not None
            and item.result in (CreateTransferResult.OK, CreateTransferResult.EXISTS)
            and (before_ns is None or item.acked_ns <= before_ns)
        )

    def report(self) -> dict[str, Any]:
        items = list(self.items.values())
        acked = self.acknowledged_loans()
        return {
            "made": self.made,
            "acknowledged": len(acked),
            "refused": sum(
                1
                for item in items
                if item.acked_ns is not None
                and item.result not in (CreateTransferResult.OK, CreateTransferResult.EXISTS)
            ),
            "retried": sum(max(0, item.attempts - 1) for item in items),
            "gave_up": sum(item.gave_up for item in items),
            "unanswered": sum(1 for item in items if item.acked_ns is None and not item.gave_up),
            "amount_fen": sum(int(self.book.contracts[loan]["ledger_amount"]) for loan in acked),
        }


def disbursement_payloads(book: LoanBook, loans: list[int]) -> tuple[bytes, bytes, bytes]:
    """(account openings, transfers, row writes) of one batch of `loans`' disbursements."""
    transfers, writes = [], []
    for index, loan in enumerate(loans):
        record, write = book.disbursement(loan, index)
        transfers.append(record)
        writes.append(write)
    openings = b"".join(book.opening(loan) for loan in loans)
    return openings, b"".join(transfers), b"".join(writes)
