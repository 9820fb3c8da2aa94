"""The interest checker: what the day-end should have posted, against what the ledger holds.

Independent of the deposit kernels (cext/deposits.pyx) and of the day-end's own
steps (sim/dayend.py): the checker reads the ledger's tables in bulk (numpy views of
the account table, the deposit rows and the log records the day-end's entries
added; layouts from the ledger's own structs, never hand-written offsets) and
recomputes every amount with the integer arithmetic of `ledger/interest.py` over the
balances it read before the day-end began:

- **accrual**: every account of a demand kind (ledger.deposits.DEMAND_KINDS) whose
  product's kind earns the demand rate (the catalog's `demand_kinds`) and whose posted
  balance is positive gains exactly `balance * rate * day_weight` units
  (`daily_units`), every other account nothing;
- **settlement** (a settlement day): each account whose accrued units round to at
  least one fen gets exactly the transfers of `interest_transfer_id(account, period,
  part)` -- one, or for a Class III account that would pass its balance cap two
  (up to the cap, the rest to its bound account) -- from the interest-expense account
  on the bank's batch channel, summing to `fen_of_units(units)`; nobody else gets
  one; afterwards the row holds no units, `period_settled` is the period and
  `interest_paid_total` grew by the amount; a second read of the period
  (`settlement_batch`) finds nothing left;
- **maturities**: each open fixed deposit maturing on or before the next day pays
  its principal and `term_interest(principal, rate, months)` to its payout account
  (or rolls over: interest added, same term at that day's rate from the maturity
  day), and its row says so;
- **at the end, on every data center**: the interest-expense account paid exactly
  what the rows say was paid (settled interest plus matured term interest) -- an
  interest posting made twice anywhere shows here -- every account settled for a
  period was paid exactly its expected amount once, and the day-end of every ended
  day ran (`accrued_day`).

Each failed comparison is one line in `failures` (the first LINES_MAX kept) and
counts in `mismatches`; the report's `interest_as_expected` invariant is
`mismatches == 0`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ledger.constants import BANK_CHANNEL, CLEARING_ID, INTEREST_EXPENSE_ID
from ledger.deposits import (
    DEMAND_KINDS,
    DEMAND_ROW,
    FD_CLOSED,
    FD_OPEN,
    FD_PARTIAL_DONE,
    FD_ROLLOVER,
    FIXED_ROW,
    INTEREST_ID_MIX,
    INTEREST_ID_TAG,
    PART_EXCESS_TO_BOUND,
    PART_TO_ACCOUNT,
    FixedRow,
)
from ledger.interest import (
    UNITS_PER_FEN,
    add_months,
    daily_units,
    day_weight,
    fen_of_units,
    term_interest,
)
from ledger.records import AccountView, TransferView
from ledger.types import (
    ACCOUNT_SIZE,
    ACCOUNT_STRUCT,
    DEPOSIT_SIZE,
    TRANSFER_SIZE,
    TRANSFER_STRUCT,
    AccountFlags,
    AccountKind,
    TransferCode,
)
from limits.deposits import DepositCatalog, RateNotInForceError, Term
from limits.rules import RuleSet

LINES_MAX = 50
_CODES = {
    "Q": "<u8",
    "q": "<i8",
    "I": "<u4",
    "i": "<i4",
    "H": "<u2",
    "h": "<i2",
    "B": "u1",
    "b": "i1",
}
INT64_SAFE = 1 << 62


def dtype_of(layout: struct.Struct, names: list[str]) -> np.dtype:
    """The numpy dtype of a packed little-endian struct (one code a field, no padding)."""
    codes = layout.format.lstrip("<")
    assert len(codes) == len(names) and all(code in _CODES for code in codes), layout.format
    dtype = np.dtype([(name, _CODES[code]) for name, code in zip(names, codes, strict=True)])
    assert dtype.itemsize == layout.size
    return dtype


ACCOUNT_DTYPE = dtype_of(ACCOUNT_STRUCT, ["id_lo", "id_hi", *AccountView._fields[1:]])
_ID_NAMES = ["id", "debit_account_id", "credit_account_id", "pending_id"]
TRANSFER_DTYPE = dtype_of(
    TRANSFER_STRUCT,
    [f"{name}_{half}" for name in _ID_NAMES for half in ("lo", "hi")]
    + list(TransferView._fields[4:]),
)
DEMAND_DTYPE = dtype_of(
    DEMAND_ROW, ["accrued_lo", "accrued_hi", "period_settled", "reserved", "interest_paid_total"]
)
FIXED_DTYPE = dtype_of(FIXED_ROW, [*FixedRow._fields, "reserved"])
assert ACCOUNT_DTYPE.itemsize == ACCOUNT_SIZE and TRANSFER_DTYPE.itemsize == TRANSFER_SIZE
assert DEMAND_DTYPE.itemsize == DEPOSIT_SIZE == FIXED_DTYPE.itemsize
DEMAND_KIND_CODES = np.array(sorted(int(kind) for kind in DEMAND_KINDS), dtype=np.uint8)


def accounts_of(ledger: Any) -> np.ndarray:
    """The live account table, as records (a view: copy what must outlive a change)."""
    count = ledger.account_count
    return np.frombuffer(ledger.accounts, dtype=ACCOUNT_DTYPE, count=count)


def rows_of(ledger: Any, dtype: np.dtype) -> np.ndarray:
    count = ledger.account_count
    return np.frombuffer(ledger.deposits, dtype=dtype, count=count)


def units_of(rows: np.ndarray, demand: np.ndarray) -> np.ndarray:
    """The accrued units of the demand rows (`demand`: which slots have one) as int64, 0
    elsewhere; raises if any needs more than 62 bits (then the checker would need Python
    ints: not at the simulated sizes)."""
    hi = np.where(demand, rows["accrued_hi"], 0)
    lo = np.where(demand, rows["accrued_lo"], 0).astype(np.uint64)
    if np.any(hi != 0) or np.any(lo >= np.uint64(INT64_SAFE)):
        raise OverflowError("accrued units beyond 2**62: the checker's int64 path does not apply")
    return lo.astype(np.int64)


def log_segments(ledger: Any, start: int, stop: int) -> list[np.ndarray]:
    """Log records [start, stop) as views of the ring (one or two segments, no copy):
    read them before anything else is applied."""
    if stop <= start:
        return []
    ring = np.frombuffer(ledger.log, dtype=TRANSFER_DTYPE)
    size = len(ring)
    assert stop - start <= size, (start, stop)
    first, end = start % size, (stop - 1) % size + 1
    if first < end:
        return [ring[first:end]]
    return [ring[first:], ring[:end]]


CHUNK = 1 << 22  # slots a pass: bounded temporaries at 30M accounts


def chunks(count: int) -> list[slice]:
    return [slice(start, min(count, start + CHUNK)) for start in range(0, count, CHUNK)]


@dataclass
class Snapshot:
    """What the checker read and computed before a day-end began: only what the day-end
    may change (account kinds, products, flags and bindings it cannot, so they are read
    from the ledger afterwards)."""

    day: int
    count: int  # accounts then
    accrues: bool  # the day was not accrued yet: this run must accrue it
    expected_units: np.ndarray  # int64 per slot: the units every row must hold after accrual
    gained: int  # accounts that gain units
    gained_units: int
    unsettled: np.ndarray | None  # bool per slot: a demand row not settled for the period
    period: int  # the period a settlement day closes (0: not a settlement day)
    class_iii_slots: np.ndarray
    class_iii_balances: np.ndarray
    fixed_slots: np.ndarray  # fixed-deposit accounts' slots
    fixed: np.ndarray  # and their rows (copies)
    expense_net: int  # the interest-expense account's debits - credits
    log_count: int


@dataclass
class InterestFindings:
    """What the interest checker found, for the report."""

    mismatches: int = 0
    failures: list[str] = field(default_factory=list)
    accrued_accounts: int = 0
    accrued_units_total: int = 0
    settlement_postings: int = 0
    settlement_fen: int = 0
    settled_accounts: int = 0
    maturities_paid: int = 0
    rollovers: int = 0
    maturity_interest_fen: int = 0
    maturity_postings: int = 0
    checks: int = 0
    baseline_accounts: int = 0

    def fail(self, line: str, count: int = 1) -> None:
        self.mismatches += count
        if len(self.failures) < LINES_MAX:
            self.failures.append(line)


class InterestChecker:
    """Checks each day-end run on the primary that made it, and every DC at the end."""

    def __init__(self, catalog: DepositCatalog, rules: RuleSet) -> None:
        self.catalog = catalog
        self.rules = rules
        self.findings = InterestFindings()
        # Product ids whose accounts earn the demand rate, and Class III balance caps.
        self.earning_products = np.array(
            sorted(pid for pid, p in rules.products.items() if p.kind in catalog.demand_kinds),
            dtype=np.uint16,
        )
        self.balance_caps = {pid: p.balance_cap_minor for pid, p in rules.products.items()}
        # Expected settlement per period: fen per slot (-1: not settled by a checked run).
        self.expected_settled: dict[int, np.ndarray] = {}
        # Term interest of maturities checked: (slot, maturity day) -> interest fen.
        self.maturity_interest: dict[tuple[int, int], int] = {}
        self.ended_days: set[int] = set()

    # --- helpers -----------------------------------------------------------------

    def _earns(self, accounts: np.ndarray) -> np.ndarray:
        return np.isin(accounts["kind"], DEMAND_KIND_CODES) & np.isin(
            accounts["product"], self.earning_products
        )

    def _expense_slot(self, ledger: Any) -> int:
        return int(ledger.account_slot(INTEREST_EXPENSE_ID))

    def _expense_net(self, ledger: Any) -> int:
        slot = self._expense_slot(ledger)
        if slot < 0:
            return 0
        row = accounts_of(ledger)[slot]
        return int(row["debits_posted"]) - int(row["credits_posted"])

    def expected_day_units(self, balances: np.ndarray, earns: np.ndarray, day: int) -> np.ndarray:
        """One day's units per slot by `daily_units` (ledger/interest.py), vectorized."""
        rate = self.catalog.demand_rate(day)
        weight = day_weight(self.catalog.demand_day_count, day)
        positive = earns & (balances > 0)
        if positive.any() and int(balances[positive].max()) * rate * weight >= INT64_SAFE:
            raise OverflowError("a balance too large for the checker's int64 path")
        units = np.where(positive, balances * np.int64(rate * weight), 0).astype(np.int64)
        # The vectorized product is daily_units; spot-check the scalar function agrees.
        if positive.any():
            index = int(np.flatnonzero(positive)[0])
            assert int(units[index]) == daily_units(int(balances[index]), rate, weight)
        return units

    # --- the population's starting point -------------------------------------------

    def baseline(self, ledger: Any, first_day: int, last_day: int) -> None:
        """After the population was built: its demand rows hold exactly the units of
        holding the opening balance from `first_day` to `last_day` inclusive (the sum
        of each day's rate times its day weight, times the balance)."""
        factor = sum(
            self.catalog.demand_rate(day) * day_weight(self.catalog.demand_day_count, day)
            for day in range(first_day, last_day + 1)
        )
        accounts = accounts_of(ledger)
        rows = rows_of(ledger, DEMAND_DTYPE)
        wrong_count, first, expected_first, actual_first = 0, None, 0, 0
        self.findings.checks += 1
        for part in chunks(len(accounts)):
            chunk = accounts[part]
            balances = (chunk["credits_posted"] - chunk["debits_posted"]).astype(np.int64)
            earns = self._earns(chunk) & (balances > 0)
            if earns.any() and int(balances[earns].max()) * factor >= INT64_SAFE:
                raise OverflowError("a balance too large for the checker's int64 path")
            expected = np.where(earns, balances * np.int64(factor), 0)
            actual = units_of(rows[part], np.isin(chunk["kind"], DEMAND_KIND_CODES))
            wrong = np.flatnonzero(actual != expected)
            self.findings.baseline_accounts += int(np.count_nonzero(expected))
            if len(wrong) and first is None:
                first = part.start + int(wrong[0])
                expected_first, actual_first = int(expected[wrong[0]]), int(actual[wrong[0]])
            wrong_count += len(wrong)
        if first is not None:
            self.findings.fail(
                f"population: {wrong_count} demand rows do not hold the period-to-date units"
                f" (slot {first}: {actual_first}, expected {expected_first})",
                wrong_count,
            )

    # --- one day-end run ---------------------------------------------------------------

    def before(self, ledger: Any, day: int) -> Snapshot:
        """Read the ledger before the day-end of `day`: the units each demand row must
        hold once `day` is accrued (unless it was already), who is unsettled, the open
        fixed deposits."""
        accounts = accounts_of(ledger)
        rows = rows_of(ledger, DEMAND_DTYPE)
        count = len(accounts)
        accrues = ledger.accrued_day < day
        expected = np.zeros(count, dtype=np.int64)
        gained = gained_units = 0
        settles = self.catalog.is_settlement_day(day)
        period = self.catalog.settlement_period(day) if settles else 0
        unsettled = np.zeros(count, dtype=bool) if settles else None
        for part in chunks(count):
            chunk = accounts[part]
            demand = np.isin(chunk["kind"], DEMAND_KIND_CODES)
            units = units_of(rows[part], demand)
            if accrues:
                balances = chunk["credits_posted"] - chunk["debits_posted"]
                day_units = self.expected_day_units(balances, self._earns(chunk), day)
                units = units + day_units
                gained += int(np.count_nonzero(day_units))
                gained_units += int(np.sum(day_units))
            expected[part] = units
            if unsettled is not None:
                unsettled[part] = demand & (rows[part]["period_settled"] < period)
        class_iii = np.flatnonzero(accounts["kind"] == AccountKind.CLASS_III)
        fixed_slots = np.flatnonzero(accounts["kind"] == AccountKind.FIXED_DEPOSIT)
        iii = accounts[class_iii]
        return Snapshot(
            day=day,
            count=count,
            accrues=accrues,
            expected_units=expected,
            gained=gained,
            gained_units=gained_units,
            unsettled=unsettled,
            period=period,
            class_iii_slots=class_iii,
            class_iii_balances=(iii["credits_posted"] - iii["debits_posted"]).astype(np.int64),
            fixed_slots=fixed_slots,
            fixed=rows_of(ledger, FIXED_DTYPE)[fixed_slots].copy(),
            expense_net=self._expense_net(ledger),
            log_count=ledger.log_count,
        )

    def after_accrual(self, snapshot: Snapshot, ledger: Any) -> None:
        """Every demand row holds what the checker expects after the accrual of the day
        (its units before plus `daily_units` of its balance, when the day was due)."""
        self.findings.checks += 1
        day = snapshot.day
        accounts = accounts_of(ledger)[: snapshot.count]
        rows = rows_of(ledger, DEMAND_DTYPE)[: snapshot.count]
        wrong_count, first = 0, None
        for part in chunks(snapshot.count):
            demand = np.isin(accounts[part]["kind"], DEMAND_KIND_CODES)
            wrong = np.flatnonzero(units_of(rows[part], demand) != snapshot.expected_units[part])
            if len(wrong) and first is None:
                first = part.start + int(wrong[0])
            wrong_count += len(wrong)
        if first is not None:
            actual = units_of(rows[first : first + 1], np.ones(1, dtype=bool))[0]
            self.findings.fail(
                f"day {day}: accrual wrong on {wrong_count} accounts (slot {first}: the row"
                f" holds {int(actual)} units, expected {int(snapshot.expected_units[first])})",
                wrong_count,
            )
        if snapshot.accrues:
            self.findings.accrued_accounts += snapshot.gained
            self.findings.accrued_units_total += snapshot.gained_units
        if ledger.accrued_day < day:
            self.findings.fail(f"day {day}: the ledger's accrued_day is {ledger.accrued_day}")
        self.ended_days.add(day)

    def after_settlement(
        self, snapshot: Snapshot, ledger: Any, log_start: int, log_stop: int
    ) -> None:
        """Check a settlement day's settlement: the log records [log_start, log_stop) are
        the settlement's entries'."""
        self.findings.checks += 1
        day, period, count = snapshot.day, snapshot.period, snapshot.count
        assert snapshot.unsettled is not None and period
        accounts = accounts_of(ledger)[:count]
        units = snapshot.expected_units
        fen = np.where(units > 0, (units + UNITS_PER_FEN // 2) // UNITS_PER_FEN, 0)
        # Due: some fen accrued and not settled for the period before this run began (a
        # resumed run finds its predecessor's part done).
        due = (fen > 0) & snapshot.unsettled
        paid = np.zeros(count, dtype=np.int64)
        postings = np.zeros(count, dtype=np.int64)
        expense = self._expense_slot(ledger)
        clearing = int(ledger.account_slot(CLEARING_ID))
        # Which account each posting settles, from its id: the account id's low word
        # mixed with its high word (ledger.deposits.interest_transfer_id), looked up.
        derived_lo = accounts["id_lo"] ^ (accounts["id_hi"] * np.uint64(INTEREST_ID_MIX))
        order = np.argsort(derived_lo, kind="stable")
        sorted_lo = derived_lo[order]
        del derived_lo
        posted_fen = 0
        posted = 0
        for segment in log_segments(ledger, log_start, log_stop):
            interest = segment[
                (segment["code"] == TransferCode.INTEREST)
                & (segment["channel"] == BANK_CHANNEL)
                & (segment["result"] == 0)
            ]
            if not len(interest):
                continue
            tag = interest["id_hi"] >> np.uint64(40)
            part = ((interest["id_hi"] >> np.uint64(32)) & np.uint64(0xFF)).astype(np.int64)
            record_period = (interest["id_hi"] & np.uint64(0xFFFFFFFF)).astype(np.int64)
            if np.any(tag != INTEREST_ID_TAG) or np.any(record_period != period):
                self.findings.fail(f"day {day}: settlement postings of another kind or period")
            position = np.minimum(np.searchsorted(sorted_lo, interest["id_lo"]), count - 1)
            settles = order[position]
            found = sorted_lo[position] == interest["id_lo"]
            if not found.all():
                missing = int((~found).sum())
                self.findings.fail(
                    f"day {day}: {missing} settlement postings name no account", missing
                )
            settles, part = settles[found], part[found]
            amounts = interest["amount_posted"][found]
            credit = interest["credit_slot"][found].astype(np.int64)
            np.add.at(paid, settles, amounts)
            np.add.at(postings, settles, 1)
            posted += len(amounts)
            posted_fen += int(np.sum(amounts))
            if np.any(interest["debit_slot"][found] != expense):
                self.findings.fail(f"day {day}: a settlement posting not debiting interest expense")
            to_self = part == PART_TO_ACCOUNT
            if np.any(credit[to_self] != settles[to_self]):
                self.findings.fail(f"day {day}: a settlement posting credits another account")
            excess = part == PART_EXCESS_TO_BOUND
            if excess.any():
                owners = accounts[settles[excess]]
                external = (owners["flags"] & int(AccountFlags.BOUND_EXTERNAL)) != 0
                wanted = np.where(external, clearing, owners["bound_slot"].astype(np.int64))
                if np.any(credit[excess] != wanted) or np.any(
                    owners["kind"] != AccountKind.CLASS_III
                ):
                    self.findings.fail(f"day {day}: a Class III excess posted to the wrong account")
                # What stayed on the account (part 0) keeps it within its cap.
                for slot in np.unique(settles[excess]).tolist():
                    index = np.searchsorted(snapshot.class_iii_slots, slot)
                    balance = int(snapshot.class_iii_balances[index])
                    cap = self.balance_caps.get(int(accounts[slot]["product"]), 0)
                    own = int(np.sum(amounts[(settles == slot) & to_self]))
                    if cap and balance + own > max(cap, balance):
                        self.findings.fail(f"day {day}: Class III slot {slot} settled past its cap")
        wrong = np.flatnonzero(due & (paid != fen))
        if len(wrong):
            slot = int(wrong[0])
            self.findings.fail(
                f"day {day}: settlement of period {period} wrong on {len(wrong)} accounts"
                f" (slot {slot}: paid {int(paid[slot])} fen in {int(postings[slot])}"
                f" postings, expected {int(fen[slot])})",
                len(wrong),
            )
        extra = np.flatnonzero(~due & (postings > 0))
        if len(extra):
            self.findings.fail(
                f"day {day}: {len(extra)} accounts got a settlement posting not due"
                f" (slot {int(extra[0])})",
                len(extra),
            )
        # The rows: settled, no units left, the amount in interest_paid_total.
        rows = rows_of(ledger, DEMAND_DTYPE)[:count]
        settled_now = np.flatnonzero(due)
        marked = rows["period_settled"][settled_now] == period
        if not marked.all():
            self.findings.fail(
                f"day {day}: {int((~marked).sum())} rows paid but not marked settled for {period}",
                int((~marked).sum()),
            )
        left = (rows["accrued_lo"][settled_now] != 0) | (rows["accrued_hi"][settled_now] != 0)
        if left.any():
            self.findings.fail(
                f"day {day}: {int(left.sum())} settled rows still hold units", int(left.sum())
            )
        expected_now = self.expected_settled.get(period)
        if expected_now is None or len(expected_now) < count:
            grown = np.full(count, -1, dtype=np.int64)
            if expected_now is not None:
                grown[: len(expected_now)] = expected_now
            self.expected_settled[period] = expected_now = grown
        expected_now[settled_now] = fen[settled_now]
        # Nothing is left to settle: a second read of the period offers nothing.
        transfers, _slots, _next = ledger.settlement_batch(period, 0, 1 << 16)
        if transfers:
            self.findings.fail(
                f"day {day}: after the settlement {len(transfers) // TRANSFER_SIZE} transfers"
                " are still offered for the period"
            )
        self.findings.settlement_postings += posted
        self.findings.settlement_fen += posted_fen
        self.findings.settled_accounts += len(settled_now)

    def after_maturities(
        self, snapshot: Snapshot, ledger: Any, due_day: int, log_start: int, log_stop: int
    ) -> None:
        """Check the maturities of deposits maturing on or before `due_day`: the log records
        [log_start, log_stop) are the maturity entries'."""
        self.findings.checks += 1
        day = snapshot.day
        fixed = snapshot.fixed
        open_ = ((fixed["flags"] & FD_OPEN) != 0) & ((fixed["flags"] & FD_CLOSED) == 0)
        due = open_ & (fixed["maturity_day"] <= due_day)
        principal_by_fd: dict[int, list[tuple[int, int]]] = {}
        interest_by_credit: dict[int, list[int]] = {}
        for segment in log_segments(ledger, log_start, log_stop):
            for record in segment[(segment["result"] == 0) & (segment["channel"] == BANK_CHANNEL)]:
                if record["code"] == TransferCode.FIXED_DEPOSIT:
                    principal_by_fd.setdefault(int(record["debit_slot"]), []).append(
                        (int(record["credit_slot"]), int(record["amount_posted"]))
                    )
                elif record["code"] == TransferCode.INTEREST:
                    interest_by_credit.setdefault(int(record["credit_slot"]), []).append(
                        int(record["amount_posted"])
                    )
        rows_after = rows_of(ledger, FIXED_DTYPE)[snapshot.fixed_slots]
        postings = 0
        for index in np.flatnonzero(due).tolist():
            slot = int(snapshot.fixed_slots[index])
            row, after = fixed[index], rows_after[index]
            principal, rate, months = (
                int(row["principal"]),
                int(row["rate"]),
                int(row["term_months"]),
            )
            maturity, payout = int(row["maturity_day"]), int(row["payout_slot"])
            interest = term_interest(principal, rate, months)
            rolls = bool(int(row["flags"]) & FD_ROLLOVER)
            expected_rate = self._term_rate(months, maturity) if rolls else None
            if rolls and interest <= 0:
                # Nothing to carry a renewal: the deposit stays as it was (the engine's rule).
                if after != row or interest_by_credit.get(slot):
                    self.findings.fail(f"day {day}: slot {slot} without interest was changed")
                continue
            if rolls and expected_rate is not None:
                got = interest_by_credit.get(slot, [])
                if got != [interest]:
                    self.findings.fail(
                        f"day {day}: rollover of slot {slot} paid {got}, expected [{interest}]"
                    )
                if (
                    int(after["principal"]) != principal + interest
                    or int(after["open_day"]) != maturity
                    or int(after["maturity_day"]) != add_months(maturity, months)
                    or int(after["rate"]) != expected_rate
                    or int(after["flags"]) != int(row["flags"]) & ~FD_PARTIAL_DONE
                ):
                    self.findings.fail(f"day {day}: the rolled-over row of slot {slot} is wrong")
                self.findings.rollovers += 1
                postings += len(got)
            else:
                got_principal = principal_by_fd.get(slot, [])
                got_interest = [
                    amount for amount in interest_by_credit.get(payout, []) if amount == interest
                ]
                if got_principal != [(payout, principal)]:
                    self.findings.fail(
                        f"day {day}: maturity of slot {slot} moved {got_principal},"
                        f" expected [({payout}, {principal})]"
                    )
                if interest and len(got_interest) != 1:
                    self.findings.fail(
                        f"day {day}: maturity of slot {slot}: interest {interest} paid"
                        f" {len(got_interest)} times"
                    )
                if not int(after["flags"]) & FD_CLOSED:
                    self.findings.fail(f"day {day}: matured slot {slot} is not closed")
                self.findings.maturities_paid += 1
                postings += len(got_principal) + len(got_interest)
            self.maturity_interest[(slot, maturity)] = interest
            self.findings.maturity_interest_fen += interest
        self.findings.maturity_postings += postings
        # Nothing else matured: every other deposit's row is unchanged.
        changed = np.flatnonzero(~due & (rows_after != fixed))
        if len(changed):
            self.findings.fail(
                f"day {day}: {len(changed)} deposits not due were changed"
                f" (slot {int(snapshot.fixed_slots[changed[0]])})",
                len(changed),
            )

    def after_run(self, snapshot: Snapshot, ledger: Any) -> None:
        """The run as a whole: the interest-expense account moved by exactly the postings
        the run's entries added to the log (none hidden, none elsewhere)."""
        expense = self._expense_slot(ledger)
        seen = 0
        for segment in log_segments(ledger, snapshot.log_count, ledger.log_count):
            ok = segment[segment["result"] == 0]
            seen += int(np.sum(ok[ok["debit_slot"] == expense]["amount_posted"]))
            seen -= int(np.sum(ok[ok["credit_slot"] == expense]["amount_posted"]))
        paid = self._expense_net(ledger) - snapshot.expense_net
        if paid != seen:
            self.findings.fail(
                f"day {snapshot.day}: interest expense moved {paid} fen in the day-end,"
                f" its postings in the log sum to {seen}"
            )

    def _term_rate(self, months: int, day: int) -> int | None:
        """A renewal's rate: the term's on `day`; None (paid out instead) without one."""
        try:
            return self.catalog.fixed_rate(Term.of_months(months), day)
        except (ValueError, RateNotInForceError):
            return None

    # --- the end -------------------------------------------------------------------------

    def final(self, name: str, ledger: Any, last_ended_day: int | None) -> dict[str, Any]:
        """Every DC at the end: the expense account paid what the rows say, once."""
        accounts = accounts_of(ledger)
        demand = np.isin(accounts["kind"], DEMAND_KIND_CODES)
        rows = rows_of(ledger, DEMAND_DTYPE)
        paid_demand = int(np.sum(rows["interest_paid_total"][demand]))
        fixed = rows_of(ledger, FIXED_DTYPE)
        paid_maturity = 0
        for (slot, maturity), interest in self.maturity_interest.items():
            if slot >= len(fixed):
                continue
            row = fixed[slot]
            closed_then = int(row["flags"]) & FD_CLOSED and int(row["maturity_day"]) == maturity
            rolled_then = int(row["open_day"]) == maturity and int(row["flags"]) & FD_ROLLOVER
            if closed_then or rolled_then:
                paid_maturity += interest
        expense = self._expense_net(ledger)
        if expense != paid_demand + paid_maturity:
            self.findings.fail(
                f"{name}: interest expense paid {expense} fen, the rows account for"
                f" {paid_demand} settled + {paid_maturity} matured"
            )
        # Every account settled here was paid each period's amount exactly once (the
        # population starts with nothing paid).
        owed = np.zeros(len(rows), dtype=np.int64)
        checked = np.zeros(len(rows), dtype=bool)
        for period, expected in sorted(self.expected_settled.items()):
            size = min(len(expected), len(rows))
            settled = (expected[:size] >= 0) & demand[:size]
            settled &= rows["period_settled"][:size] >= period
            owed[:size] += np.where(settled, expected[:size], 0)
            checked[:size] |= settled
        wrong = np.flatnonzero(checked & (rows["interest_paid_total"] != owed))
        if len(wrong):
            slot = int(wrong[0])
            self.findings.fail(
                f"{name}: {len(wrong)} accounts were paid other than their interest once"
                f" (slot {slot}: {int(rows[slot]['interest_paid_total'])} fen, expected"
                f" {int(owed[slot])})",
                len(wrong),
            )
        if last_ended_day is not None and ledger.accrued_day < last_ended_day:
            self.findings.fail(
                f"{name}: the day-end of day {last_ended_day} did not run"
                f" (accrued_day {ledger.accrued_day})"
            )
        return {
            "accrued_day": ledger.accrued_day,
            "interest_expense_fen": expense,
            "settled_fen": paid_demand,
            "matured_interest_fen": paid_maturity,
        }

    def report(self) -> dict[str, Any]:
        findings = self.findings
        return {key: value for key, value in findings.__dict__.items()}


def fen_of(units: int) -> int:
    """ledger.interest.fen_of_units (re-exported for the tests)."""
    return fen_of_units(units)
