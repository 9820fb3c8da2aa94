"""The simulated bank's customers and accounts, built straight into a ledger's tables.

Users are arrays, never Python objects: user `u` is an index, and whether
they hold a Class III account or a fixed deposit, their flags, opening
balance and preferred channel are hashes of (seed, u) computed by the Cython
generators in `cext.simgen`, the same ones the traffic uses. The ledger is
built once, in the primary; the replicas start as byte copies of it (a base
backup), as a real standby does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from cext import simgen
from core.data import DATA_DIRECTORY, DEFAULT_RULES_PATH
from core.progress import progress_bar
from ledger.constants import CLEARING_ID, INTEREST_EXPENSE_ID, LEDGER_CNY, LOAN_FUNDING_ID
from ledger.deposits import FD_OPEN, FD_ROLLOVER, RATE_ROW, pack_deposit_write, pack_fixed_row
from ledger.interest import add_months, day_weight, period_start_day
from ledger.kernel import KernelLedger
from ledger.records import pack_account_input, transfer_view
from ledger.types import (
    ACCOUNT_SIZE,
    TRANSFER_SIZE,
    AccountFlags,
    AccountKind,
    CreateAccountResult,
    TransferCode,
    split_id,
)
from limits.deposits import DepositCatalog, Term, load_catalog
from limits.rules import RuleSet, load_rules

from .model import SimError

PRODUCT_CLASS_II = 2
PRODUCT_CLASS_III = 3
PRODUCT_SAVINGS = 4
PRODUCT_FIXED_DEPOSIT = 5
PRODUCT_INTERNAL = 7
RULES_PATH = DEFAULT_RULES_PATH
CATALOG_PATH = DATA_DIRECTORY / "deposits.toml"
# Fixed-deposit terms by share of the population's deposits (percent), and the share
# that rolls over at maturity.
TERM_SHARES = (
    (Term.M3, 40),
    (Term.M6, 25),
    (Term.Y1, 25),
    (Term.Y2, 5),
    (Term.Y3, 3),
    (Term.Y5, 2),
)
ROLLOVER_PERCENT = 30
BUILD_BATCH = 8189
# 30M users hold about 34M accounts (Class II, III, fixed deposits, loans): the account
# index is then 2**27 entries of 4 bytes (512 MiB) per DC.
ACCOUNT_CAPACITY_MAX = 40_000_000


@dataclass(frozen=True)
class Population:
    """Who banks here. Counts are derived; every per-user fact is a hash of the seed."""

    users: int
    seed: int
    class_iii_fraction: float = 0.06
    fixed_deposit_fraction: float = 0.04
    inflow_enabled_fraction: float = 0.95
    face_to_face_fraction: float = 0.1
    users_per_merchant: int = 200
    openings_per_user_day: float = 0.0005  # DOMAIN.md: ~0.05% of users open an account a day
    class_ii_balance_median_minor: float = 300_000.0  # 3,000 CNY
    class_ii_balance_sigma: float = 1.3
    class_iii_balance_median_minor: float = 50_000.0
    fixed_deposit_median_minor: float = 5_000_000.0
    # Loans (sim/loans.py): holders of one disbursed before the day, the share of those
    # with an instalment due on the first simulated day and of those already in arrears,
    # and new loans disbursed during the run per user and day (a book of 3% of the users
    # repaid over about 18 months disburses about 0.00006 a user a day).
    loan_fraction: float = 0.03
    loan_due_today_fraction: float = 0.2
    loan_overdue_fraction: float = 0.08
    loan_disbursements_per_user_day: float = 0.0001

    @property
    def merchants(self) -> int:
        return max(16, self.users // self.users_per_merchant)

    def openings_capacity(self, days: float) -> int:
        return int(self.users * self.openings_per_user_day * max(days, 1.0) * 2) + 64

    def loans_capacity(self, days: float) -> int:
        """Loan accounts the disbursements of a run of `days` may open (twice the rate)."""
        return int(self.users * self.loan_disbursements_per_user_day * max(days, 1.0) * 2) + 64

    def account_capacity(self, days: float) -> int:
        expected = self.users * (
            1.0 + self.class_iii_fraction + self.fixed_deposit_fraction + self.loan_fraction
        )
        return (
            int(expected * 1.002)
            + 1024
            + self.merchants
            + self.openings_capacity(days)
            + self.loans_capacity(days)
        )

    def describe(self) -> dict[str, object]:
        return asdict(self) | {"merchants": self.merchants}


def bank_rules() -> RuleSet:
    """The rule file the simulated bank runs: the project's example limits."""
    if not RULES_PATH.exists():
        raise SimError(f"{RULES_PATH}: the limit rules the simulator uses are missing")
    return load_rules(RULES_PATH)


def deposit_catalog() -> DepositCatalog:
    """The deposit catalog the simulated bank runs: the project's default one."""
    if not CATALOG_PATH.exists():
        raise SimError(f"{CATALOG_PATH}: the deposit catalog the simulator uses is missing")
    return load_catalog(CATALOG_PATH)


def clearing_id() -> int:
    return simgen.account_id(0, simgen.TAG_INTERNAL, simgen.INTERNAL_CLEARING_INDEX)


def wealth_id() -> int:
    return simgen.account_id(0, simgen.TAG_INTERNAL, simgen.INTERNAL_WEALTH_INDEX)


def new_ledger(
    account_capacity: int, log_capacity: int, channel_capacity: int | None
) -> KernelLedger:
    """A ledger for one DC; `channel_capacity` None: the kernel's default (2 per account)."""
    if account_capacity > ACCOUNT_CAPACITY_MAX:
        raise SimError(
            f"{account_capacity} accounts exceed this simulator's {ACCOUNT_CAPACITY_MAX}"
            " (about 35M users)"
        )
    return KernelLedger(
        account_capacity=account_capacity,
        transfer_capacity=log_capacity,
        channel_counter_capacity=channel_capacity,
    )


def build(
    ledger: KernelLedger,
    population: Population,
    rules: RuleSet,
    timestamp_ns: int,
    business_day: int,
    *,
    quiet: bool,
    catalog: DepositCatalog | None = None,
) -> tuple[int, dict[str, int]]:
    """Open every account and fund it; returns (the next free timestamp, counts).

    Opening balances come from the clearing account (money arriving from the
    customers' bound cards), so the total of all balances is zero and money
    conservation is checkable from the first transfer on.

    With a deposit `catalog` the population's deposits are real: each fixed deposit
    is funded together with its row (`post_with_rows`: principal, the term's rate of
    its opening day, opening and maturity days, rollover or not, the holder's Class II
    account as payout), opened on a day drawn so that its maturity falls within one
    term after `business_day` (some mature in the simulated day); and every demand
    account holds the interest its opening balance accrued since the settlement period
    began (`accrue_interest` once, with the period-to-date day weight), as if the
    population had banked here all quarter. The bank's interest-expense account
    (`INTEREST_EXPENSE_ID`), the clearing account a Class III excess settles to
    (`CLEARING_ID`) and the loan-funding account (`LOAN_FUNDING_ID`; the loans are
    sim/loans.py's, built after this) are opened too.
    """
    ledger.set_rules(rules.product_table(), rules.channel_table())
    internal_accounts = [
        (clearing_id(), AccountKind.INTERNAL_CLEARING),
        (wealth_id(), AccountKind.INTERNAL_WEALTH),
    ]
    if catalog is not None:
        internal_accounts += [
            (INTEREST_EXPENSE_ID, AccountKind.INTERNAL_INTEREST_EXPENSE),
            (CLEARING_ID, AccountKind.INTERNAL_CLEARING),
            (LOAN_FUNDING_ID, AccountKind.INTERNAL_LOAN_FUNDING),
        ]
    internal = b"".join(
        pack_account_input(id=account_id, kind=kind, product=PRODUCT_INTERNAL)
        for account_id, kind in internal_accounts
    )
    _create(ledger, internal, len(internal_accounts))
    buffer = bytearray(BUILD_BATCH * TRANSFER_SIZE)
    view = memoryview(buffer)
    merchants = population.merchants
    for first in range(0, merchants, BUILD_BATCH):
        count = min(BUILD_BATCH, merchants - first)
        simgen.fill_merchants(
            view, population.seed, first, count, AccountKind.SAVINGS, PRODUCT_SAVINGS, LEDGER_CNY
        )
        _create(ledger, view[: count * ACCOUNT_SIZE], count)
    kinds = (
        (simgen.TAG_CLASS_II, 1.0, AccountKind.CLASS_II, PRODUCT_CLASS_II),
        (
            simgen.TAG_CLASS_III,
            population.class_iii_fraction,
            AccountKind.CLASS_III,
            PRODUCT_CLASS_III,
        ),
        (
            simgen.TAG_FIXED_DEPOSIT,
            population.fixed_deposit_fraction,
            AccountKind.FIXED_DEPOSIT,
            PRODUCT_FIXED_DEPOSIT,
        ),
    )
    counts: Counter[str] = Counter()
    clearing_lo, clearing_hi = split_id(clearing_id())
    fundings = {
        simgen.TAG_CLASS_II: (
            TransferCode.TOPUP_BOUND,
            population.class_ii_balance_median_minor,
            population.class_ii_balance_sigma,
            50_000_000,
        ),
        simgen.TAG_CLASS_III: (
            TransferCode.TOPUP_BOUND,
            population.class_iii_balance_median_minor,
            0.8,
            190_000,
        ),
        simgen.TAG_FIXED_DEPOSIT: (
            TransferCode.FIXED_DEPOSIT,
            population.fixed_deposit_median_minor,
            1.0,
            1_000_000_000,
        ),
    }
    users = population.users
    with progress_bar(users * len(kinds), "opening accounts") as progress:
        for tag, fraction, kind, product in kinds:
            for first in range(0, users, BUILD_BATCH):
                count = min(BUILD_BATCH, users - first)
                written = simgen.fill_user_accounts(
                    view,
                    population.seed,
                    tag,
                    first,
                    count,
                    fraction,
                    kind,
                    product,
                    LEDGER_CNY,
                    population.inflow_enabled_fraction,
                    population.face_to_face_fraction,
                )
                if written:
                    _create(ledger, view[: written * ACCOUNT_SIZE], written)
                counts[kind.name.lower()] += written
                if not quiet:
                    progress.update(count)
    with progress_bar(users * len(kinds), "funding") as progress:
        for tag, fraction, _kind, _product in kinds:
            code, median, sigma, amount_max = fundings[tag]
            for first in range(0, users, BUILD_BATCH):
                count = min(BUILD_BATCH, users - first)
                written = simgen.fill_fundings(
                    view,
                    population.seed,
                    tag,
                    first,
                    count,
                    fraction,
                    clearing_lo,
                    clearing_hi,
                    code,
                    median,
                    sigma,
                    amount_max,
                    LEDGER_CNY,
                )
                if written:
                    transfers = view[: written * TRANSFER_SIZE]
                    if tag == simgen.TAG_FIXED_DEPOSIT and catalog is not None:
                        rows = fixed_deposit_rows(
                            ledger, population, catalog, business_day, transfers, written
                        )
                        results, _, _ = ledger.post_with_rows(
                            transfers, rows, timestamp_ns, business_day
                        )
                    else:
                        results, _, _ = ledger.create_transfers(
                            transfers, timestamp_ns, business_day
                        )
                    assert results.count(0) == written, Counter(results)
                    timestamp_ns += written
                    # The setup transfers are not the day's traffic: keep the log window empty.
                    ledger.evict(timestamp_ns, 1 << 62)
                if not quiet:
                    progress.update(count)
    counts["merchants"] = merchants
    counts["internal"] = len(internal_accounts)
    if catalog is not None:
        first, last = accrued_span(catalog, business_day)
        if last >= first:
            ledger.accrue_interest(last, period_to_date_rates(catalog, rules, first, last))
    return timestamp_ns, dict(counts)


def accrued_span(catalog: DepositCatalog, business_day: int) -> tuple[int, int]:
    """The days of the current settlement period before `business_day` (first, last):
    what the population's demand accounts have accrued when the simulation starts."""
    first = period_start_day(catalog.settlement_period(business_day), catalog.settlement)
    return first, business_day - 1


def period_to_date_rates(catalog: DepositCatalog, rules: RuleSet, first: int, last: int) -> bytes:
    """The accrual rate table of `last` with each earning product's weight the sum of the
    day weights of days `first`..`last`: accruing it once gives an unchanged balance the
    units of accruing every one of those days (the demand rate must not change in
    between; asserted)."""
    rate = catalog.demand_rate(last)
    assert all(catalog.demand_rate(day) == rate for day in range(first, last + 1))
    weight = sum(day_weight(catalog.demand_day_count, day) for day in range(first, last + 1))
    table = bytearray(catalog.accrual_rates(last, rules))
    for offset in range(0, len(table), RATE_ROW.size):
        row_rate, _row_weight = RATE_ROW.unpack_from(table, offset)
        if row_rate:
            RATE_ROW.pack_into(table, offset, row_rate, weight)
    return bytes(table)


def _mix(value: int) -> int:
    """splitmix64's finalizer: a per-user hash for the deposits' terms and dates."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


def fixed_deposit_terms(seed: int, user: int) -> tuple[Term, bool, int]:
    """A user's fixed deposit: (term, rolls over, a hash for its opening day)."""
    hashed = _mix(seed * 0x100000001B3 ^ user ^ 0xFD)
    share = hashed % 100
    term = TERM_SHARES[-1][0]
    for term, percent in TERM_SHARES:  # noqa: B007 (the term the share falls in)
        if share < percent:
            break
        share -= percent
    return term, (hashed >> 8) % 100 < ROLLOVER_PERCENT, hashed >> 20


def fixed_deposit_rows(
    ledger: KernelLedger,
    population: Population,
    catalog: DepositCatalog,
    business_day: int,
    transfers: memoryview,
    count: int,
) -> bytes:
    """The row writes (ledger.deposits DEPOSIT_WRITE) of `count` fixed-deposit fundings.

    The deposit matures within one term after `business_day` (uniformly: about one in
    a term's days matures the day after, when the day-end pays it), and was opened one
    term before that, at that day's rate (not before the catalog's first rate set).
    """
    first_rates = catalog.history[0].effective_day
    due_from = business_day + 1
    writes = []
    for index in range(count):
        transfer = transfer_view(transfers, index * TRANSFER_SIZE)
        user = (transfer.id & 0xFFFFFFFFFFFFFFFF) - 1
        term, rollover, hashed = fixed_deposit_terms(population.seed, user)
        months = term.months
        span = add_months(due_from, months) - due_from
        open_day = max(add_months(due_from + hashed % span, -months), first_rates)
        payout = simgen.account_id(population.seed, simgen.TAG_CLASS_II, user)
        row = pack_fixed_row(
            principal=transfer.amount,
            rate=catalog.fixed_rate(term, open_day),
            open_day=open_day,
            maturity_day=add_months(open_day, months),
            term_months=months,
            day_count=int(catalog.fixed_day_count),
            flags=FD_OPEN | (FD_ROLLOVER if rollover else 0),
            payout_slot=ledger.account_slot(payout),
            product=PRODUCT_FIXED_DEPOSIT,
        )
        writes.append(pack_deposit_write(transfer.credit_account_id, index, row))
    return b"".join(writes)


def opening_accounts(population: Population, indexes: list[int]) -> bytes:
    """Inputs of accounts opened during the day (the applicants `indexes` of
    sim/onboarding.py): Class II, bound to an external card."""
    flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.BOUND_EXTERNAL
    return b"".join(
        pack_account_input(
            id=simgen.account_id(population.seed, simgen.TAG_OPENING, index),
            kind=AccountKind.CLASS_II,
            flags=int(flags),
            product=PRODUCT_CLASS_II,
        )
        for index in indexes
    )


def copy_ledger(target: KernelLedger, source: KernelLedger) -> int:
    """Make `target` a byte copy of `source` (a base backup or a resync); returns bytes copied.

    The ledger copies the live part of each of its tables (`copy_state_from`).
    Both ledgers must have been made with the same capacities.
    """
    return target.copy_state_from(source)


def _create(ledger: KernelLedger, batch: bytes | memoryview, count: int) -> None:
    results = ledger.create_accounts(batch)
    assert results.count(CreateAccountResult.OK) == count, Counter(results)
