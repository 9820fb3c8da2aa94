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
from core.data import DEFAULT_RULES_PATH
from core.progress import progress_bar
from ledger.constants import LEDGER_CNY
from ledger.kernel import KernelLedger
from ledger.records import pack_account_input
from ledger.types import (
    ACCOUNT_SIZE,
    TRANSFER_SIZE,
    AccountFlags,
    AccountKind,
    CreateAccountResult,
    TransferCode,
    split_id,
)
from limits.rules import RuleSet, load_rules

from .model import SimError

PRODUCT_CLASS_II = 2
PRODUCT_CLASS_III = 3
PRODUCT_SAVINGS = 4
PRODUCT_FIXED_DEPOSIT = 5
PRODUCT_INTERNAL = 7
RULES_PATH = DEFAULT_RULES_PATH
BUILD_BATCH = 8189
ACCOUNT_CAPACITY_MAX = 1 << 25  # keeps the account index at 2 x 2**25 entries of 4 bytes


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

    @property
    def merchants(self) -> int:
        return max(16, self.users // self.users_per_merchant)

    def openings_capacity(self, days: float) -> int:
        return int(self.users * self.openings_per_user_day * max(days, 1.0) * 2) + 64

    def account_capacity(self, days: float) -> int:
        expected = self.users * (1.0 + self.class_iii_fraction + self.fixed_deposit_fraction)
        return int(expected * 1.002) + 1024 + self.merchants + self.openings_capacity(days)

    def describe(self) -> dict[str, object]:
        return asdict(self) | {"merchants": self.merchants}


def bank_rules() -> RuleSet:
    """The rule file the simulated bank runs: the project's example limits."""
    if not RULES_PATH.exists():
        raise SimError(f"{RULES_PATH}: the limit rules the simulator uses are missing")
    return load_rules(RULES_PATH)


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
            " (about 30M users)"
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
) -> tuple[int, dict[str, int]]:
    """Open every account and fund it; returns (the next free timestamp, counts).

    Opening balances come from the clearing account (money arriving from the
    customers' bound cards), so the total of all balances is zero and money
    conservation is checkable from the first transfer on.
    """
    ledger.set_rules(rules.product_table(), rules.channel_table())
    internal = b"".join(
        pack_account_input(id=account_id, kind=kind, product=PRODUCT_INTERNAL)
        for account_id, kind in (
            (clearing_id(), AccountKind.INTERNAL_CLEARING),
            (wealth_id(), AccountKind.INTERNAL_WEALTH),
        )
    )
    _create(ledger, internal, 2)
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
                    results, _, _ = ledger.create_transfers(
                        view[: written * TRANSFER_SIZE], timestamp_ns, business_day
                    )
                    assert results.count(0) == written, Counter(results)
                    timestamp_ns += written
                    # The setup transfers are not the day's traffic: keep the log window empty.
                    ledger.evict(timestamp_ns, 1 << 62)
                if not quiet:
                    progress.update(count)
    counts["merchants"] = merchants
    counts["internal"] = 2
    return timestamp_ns, dict(counts)


def opening_accounts(population: Population, first_index: int, count: int) -> bytes:
    """Inputs of accounts opened during the day: Class II, bound to an external card."""
    flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.BOUND_EXTERNAL
    return b"".join(
        pack_account_input(
            id=simgen.account_id(population.seed, simgen.TAG_OPENING, first_index + index),
            kind=AccountKind.CLASS_II,
            flags=int(flags),
            product=PRODUCT_CLASS_II,
        )
        for index in range(count)
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
