"""The deposit product catalog: demand and fixed-deposit rates, effective-dated.

A catalog file is TOML (`core/data/deposits.toml`, a copy in `examples/`). It says
how demand (savings) interest is counted and settled, which account products earn
it, the fixed-deposit terms' rules, and a list of rate sets, each in force from its
`effective` date until the next one's:

    [demand]
    day_count = "360"                                  # "360", "365" or "actual"
    kinds = ["class_i", "class_ii", "class_iii", "savings"]
    [settlement]
    months = [3, 6, 9, 12]                             # four months three apart
    day = 20
    [fixed]
    day_count = "360"                                  # early withdrawal interest
    minimum_minor = 5_000                              # smallest deposit, fen
    [[rates]]
    effective = 2025-05-20                             # a TOML date, not a string
    demand = "0.05%"
    fixed = { "3m" = "0.65%", "6m" = "0.85%", "1y" = "0.95%", "2y" = "1.05%",
              "3y" = "1.25%", "5y" = "1.30%" }               # (one line in the file)

Validated strictly and completely before anything uses it (the limit rule files'
policy, `limits.rules`): every key required, unknown keys refused, rates only as
exact percentage strings (a float or an integer rate is refused, as is a negative
one), every term given in every rate set and no other, rate sets in date order with
no two on the same day, no fixed rate below the demand rate of its own set. Every
problem is reported at once, one line each naming the file, the line and the key
(`CatalogError`).

History is kept: every rate set stays in the file and in `DepositCatalog.history`,
so a deposit opened in 2024 is still quoted at its 2024 rate and a backdated
correction finds the rate of its day. A reload (`CatalogFile.reload_if_changed`)
may add rate sets for the future, never rewrite the past.

Rates and day counts are integers (`limits.rates`); the money arithmetic that uses
them is `ledger.interest`.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from .calendar import DAY_COUNT
from .filecheck import (
    CatalogError,
    CatalogProblem,
    KeyLines,
    Problems,
    check_keys,
    date_text,
    describe,
    is_integer,
    parse_date,
    parse_rate_value,
    required,
    toml_document,
)
from .rates import (
    DAY_COUNT_LABELS,
    RATE_SCALE,
    DayCount,
    SettlementSchedule,
    day_weight,
    format_rate,
    is_settlement_day,
    period_end_day,
    settlement_period,
)
from .rules import ProductKind, RuleSet
from .watched import WatchedFile, read_stable

# The accrual kernel's rate table: row i for product id i, `<qq` (rate, day weight).
ACCRUAL_ROW: Final = struct.Struct("<qq")
ACCRUAL_ROW_SIZE: Final = 16
assert ACCRUAL_ROW.size == ACCRUAL_ROW_SIZE

# The product kinds that may earn the demand rate: the customer's payment accounts.
# A fixed deposit earns its term rate at maturity, a loan charges interest, an internal
# account is the bank's own.
DEMAND_KINDS: Final = (
    ProductKind.CLASS_I,
    ProductKind.CLASS_II,
    ProductKind.CLASS_III,
    ProductKind.SAVINGS,
)
MINIMUM_FIXED_MINOR_MAX: Final = 2**62


class Term(enum.StrEnum):
    """A fixed-deposit term, spelt as in the catalog file and on the wire."""

    M3 = "3m"
    M6 = "6m"
    Y1 = "1y"
    Y2 = "2y"
    Y3 = "3y"
    Y5 = "5y"

    @property
    def months(self) -> int:
        """The term in months: 3, 6, 12, 24, 36, 60."""
        count, unit = int(self.value[:-1]), self.value[-1]
        return count if unit == "m" else 12 * count

    @classmethod
    def of_months(cls, months: int) -> Term:
        """The term of `months` months (a fixed-deposit row stores months); ValueError
        if no term has that length."""
        for term in cls:
            if term.months == months:
                return term
        raise ValueError(f"no term of {months} months (terms: {TERM_NAMES})")


TERM_NAMES: Final = ", ".join(term.value for term in Term)


# --- Errors ---------------------------------------------------------------------------


class RateNotInForceError(LookupError):
    """No rate set is in force on the day asked for (it is before the first one)."""

    def __init__(self, day: int, first_day: int) -> None:
        self.day = day
        self.first_day = first_day
        super().__init__(
            f"no deposit rate is in force on {date_text(day)}: the catalog's first rate set "
            f"takes effect on {date_text(first_day)}"
        )


# --- The catalog --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateSet:
    """The rates in force from `effective_day` until the next set's day.

    `line` is where the set starts in its file (for messages).
    """

    effective_day: int
    demand_rate: int
    fixed_rates: Mapping[Term, int]
    line: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.effective_day < DAY_COUNT, self.effective_day
        assert 0 <= self.demand_rate <= RATE_SCALE, self.demand_rate
        assert set(self.fixed_rates) == set(Term), self.fixed_rates
        assert all(self.demand_rate <= rate <= RATE_SCALE for rate in self.fixed_rates.values())

    def same_rates(self, other: RateSet) -> bool:
        """Equal but for the line they were read from."""
        return (
            self.effective_day == other.effective_day
            and self.demand_rate == other.demand_rate
            and dict(self.fixed_rates) == dict(other.fixed_rates)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "effective": date_text(self.effective_day),
            "demand": _rate_json(self.demand_rate),
            "fixed": {term.value: _rate_json(self.fixed_rates[term]) for term in Term},
        }


@dataclass(frozen=True, slots=True)
class DepositCatalog:
    """One validated catalog file: the deposit products and every rate set they ever had.

    Rates are ints (`limits.rates`: 0.05% is 500); days are day numbers. Immutable:
    a reload makes a new catalog (`CatalogFile`).
    """

    demand_day_count: DayCount
    """Day count of demand interest: the kernel's weights (`accrual_rates`)."""
    fixed_day_count: DayCount
    """Day count of a fixed deposit's early-withdrawal interest (the demand rule)."""
    settlement: SettlementSchedule
    """When demand interest is settled (the 20th of Mar/Jun/Sep/Dec by default)."""
    minimum_fixed_minor: int
    """The smallest fixed deposit, in fen."""
    demand_kinds: frozenset[ProductKind]
    """The product kinds whose accounts earn the demand rate."""
    history: tuple[RateSet, ...]
    """Every rate set, oldest first; each in force until the next one's day."""
    source_path: str = ""
    digest: str = ""
    """SHA-256 (hex) of the file's bytes, like `RuleSet.digest`."""

    def __post_init__(self) -> None:
        assert len(self.history) > 0
        days = [rate_set.effective_day for rate_set in self.history]
        assert days == sorted(set(days)), days
        assert self.demand_kinds <= frozenset(DEMAND_KINDS), self.demand_kinds
        assert 1 <= self.minimum_fixed_minor <= MINIMUM_FIXED_MINOR_MAX

    @property
    def terms(self) -> tuple[Term, ...]:
        """The fixed-deposit terms offered, shortest first."""
        return tuple(Term)

    def rate_set(self, day: int) -> RateSet:
        """The rate set in force on `day`; `RateNotInForceError` before the first one."""
        assert 0 <= day < DAY_COUNT, day
        found: RateSet | None = None
        for rate_set in self.history:  # a handful of sets: a scan is clearer than bisect
            if rate_set.effective_day > day:
                break
            found = rate_set
        if found is None:
            raise RateNotInForceError(day, self.history[0].effective_day)
        return found

    def demand_rate(self, day: int) -> int:
        """The demand rate in force on `day` (0.05% is 500)."""
        return self.rate_set(day).demand_rate

    def fixed_rate(self, term: Term, day: int) -> int:
        """The rate of a `term` deposit opened on `day`: it keeps it to maturity."""
        return self.rate_set(day).fixed_rates[Term(term)]

    def accrual_rates(self, day: int, rules: RuleSet) -> bytes:
        """The accrual kernel's table for `day` (`Ledger.accrue_interest(day, rates)`).

        `(max product id + 1) * 16` bytes; the row of product id i starts at byte
        i * 16 and holds two little-endian int64: the demand rate in force on `day`
        and `day_weight(demand_day_count, day)`. Products whose kind does not earn
        demand interest (fixed deposits, loans, internal; `demand_kinds`), unused ids
        and id 0 have the row (0, 0): their accounts gain nothing.
        """
        rate = self.demand_rate(day)
        weight = day_weight(self.demand_day_count, day)
        row_count = max(rules.products, default=0) + 1
        table = bytearray(row_count * ACCRUAL_ROW_SIZE)
        for product_id, product in rules.products.items():
            if product.kind in self.demand_kinds:
                ACCRUAL_ROW.pack_into(table, product_id * ACCRUAL_ROW_SIZE, rate, weight)
        for product_id, product in rules.products.items():
            expected = (rate, weight) if product.kind in self.demand_kinds else (0, 0)
            unpacked = ACCRUAL_ROW.unpack_from(table, product_id * ACCRUAL_ROW_SIZE)
            assert unpacked == expected, (product_id, unpacked)
        return bytes(table)

    def settlement_period(self, day: int) -> int:
        """The settlement period `day` accrues into (`year * 4 + q`)."""
        return settlement_period(day, self.settlement)

    def period_end_day(self, period: int) -> int:
        """The settlement day closing `period` (its last day)."""
        return period_end_day(period, self.settlement)

    def is_settlement_day(self, day: int) -> bool:
        """True on a settlement day: the day-end settles demand interest that night."""
        return is_settlement_day(day, self.settlement)

    def to_json(self, day: int | None = None) -> dict[str, Any]:
        """The catalog as `GET /v1/products` publishes it (JSON-ready: str, int, list,
        dict). With `day` (today's business day) it includes `in_force`, the rate set
        of that day; `history` always lists every rate set, oldest first.

        Rates appear twice: `rate` the exact percentage ("0.05%"), `rate_ppm` the
        integer the arithmetic uses (parts per million a year: 500).
        """
        document: dict[str, Any] = {
            "rate_scale": RATE_SCALE,
            "demand": {
                "day_count": self.demand_day_count.label,
                "account_kinds": [kind.value for kind in DEMAND_KINDS if kind in self.demand_kinds],
                "settlement": {
                    "months": list(self.settlement.months),
                    "day": self.settlement.day_of_month,
                },
            },
            "fixed": {
                "day_count": self.fixed_day_count.label,
                "minimum_minor": self.minimum_fixed_minor,
                "terms": [{"term": term.value, "months": term.months} for term in self.terms],
            },
            "history": [rate_set.to_json() for rate_set in self.history],
            "digest": self.digest,
        }
        if day is not None:
            document["in_force"] = self.rate_set(day).to_json()
        return document


def _rate_json(rate: int) -> dict[str, Any]:
    return {"rate": format_rate(rate), "rate_ppm": rate}


# --- Loading --------------------------------------------------------------------------


def load_catalog(path: str | os.PathLike[str]) -> DepositCatalog:
    """Read and validate the catalog file at `path`; `CatalogError` on any problem."""
    source_path = os.fspath(path)
    _, data = read_stable(source_path, CatalogFile._error_of, CatalogFile.KIND)
    return _parse_bytes(data, source_path)


def parse_catalog(text: str, source_name: str) -> DepositCatalog:
    """Validate catalog text; `source_name` is the file name used in messages."""
    return _parse_bytes(text.encode("utf-8"), source_name)


class CatalogFile(WatchedFile[DepositCatalog]):
    """A catalog file that can be re-read while the bank runs, like `limits.rules.RuleFile`.

    `reload_if_changed()` reads a changed file and, if it is good, makes it the catalog
    `catalog` returns (True). Catalog values reach the ledger only inside entries (the
    accrual's rate table, a deposit row's rate), so replay never needs the catalog. A
    file that fails validation never replaces the catalog in force: the old one stays,
    the `CatalogError` is raised to the caller to log (once per version of the file;
    `last_error` keeps it), and the next version is tried on a later call.

    History cannot be rewritten by a reload: the settlement schedule stays, and every
    rate set of the running catalog must be in the new file unchanged, except sets that
    take effect after `day` (today's business day, when the caller gives it); a new set
    must take effect after `day`. Interest already accrued, deposits already opened and
    quotes already given used the old rates: a rate change is a new set with a future
    date.

    Replace the file atomically (write a copy, rename it over the old one). Not
    thread-safe: call it from the engine's owner only.
    """

    KIND = "catalog"

    @staticmethod
    def _error_of(path: str, message: str) -> CatalogError:
        return CatalogError([CatalogProblem(path, 0, "", message)])

    def _parse(self, data: bytes, path: str) -> DepositCatalog:
        return _parse_bytes(data, path)

    @property
    def catalog(self) -> DepositCatalog:
        """The catalog in force (the last good version of the file)."""
        return self._value

    def reload_if_changed(self, day: int | None = None) -> bool:
        """Re-read the file if it changed; return True if a new catalog is in `catalog`.

        `day`: today's business day; rate sets up to it are history and must stay as
        they are (None: every existing rate set must stay). Raises `CatalogError`
        (keeping the running catalog) the first time a new version of the file is bad,
        unreadable or would rewrite history.
        """
        return self._reload(lambda current, new, data: _check_reload(current, new, day, data))


def check_replacement(
    current: DepositCatalog, new: DepositCatalog, day: int | None, text: str
) -> None:
    """Raise `CatalogError` when `new` (parsed from `text`) may not replace `current`
    with `day` today: the reload check (no rate in force rewritten, no settlement day
    moved), for an approved change of the catalog (core/services/approvals.py)."""
    _check_reload(current, new, day, text.encode("utf-8"))


def _check_reload(
    current: DepositCatalog, new: DepositCatalog, day: int | None, data: bytes
) -> None:
    """Refuse a new file that rewrites or removes a rate set already in force, or moves
    the settlement days."""
    problems = Problems(new.source_path, KeyLines(data.decode("utf-8")))
    if new.settlement != current.settlement:
        problems.add(
            ("settlement",),
            "the settlement schedule changed; a reload cannot move settlement days (the "
            "periods already settled are numbered by it): change it at a restart, after a "
            "settlement day",
        )
    new_by_day = {rate_set.effective_day: rate_set for rate_set in new.history}
    for rate_set in current.history:
        if day is not None and rate_set.effective_day > day:
            continue  # not in force yet: it may still change
        replacement = new_by_day.get(rate_set.effective_day)
        when = date_text(rate_set.effective_day)
        if replacement is None:
            problems.add_at(
                1,
                "rates",
                f"the rate set effective {when} was removed; a reload keeps history "
                "(rates already in force stay in the file unchanged)",
            )
        elif not replacement.same_rates(rate_set):
            problems.add_at(
                replacement.line,
                "rates",
                f"the rate set effective {when} was changed; a reload cannot rewrite rates "
                "already in force (add a new rate set with a later effective date)",
            )
    if day is not None:
        current_days = {rate_set.effective_day for rate_set in current.history}
        for rate_set in new.history:
            if rate_set.effective_day <= day and rate_set.effective_day not in current_days:
                problems.add_at(
                    rate_set.line,
                    "rates.effective",
                    f"{date_text(rate_set.effective_day)} is not after today "
                    f"({date_text(day)}); a new rate set takes effect in the future",
                )
    problems.raise_if_any()


# --- Parsing --------------------------------------------------------------------------

_TOP_LEVEL_KEYS: Final = ("demand", "settlement", "fixed", "rates")
_DEMAND_KEYS: Final = ("day_count", "kinds")
_SETTLEMENT_KEYS: Final = ("months", "day")
_FIXED_KEYS: Final = ("day_count", "minimum_minor")
_RATE_SET_KEYS: Final = ("effective", "demand", "fixed")


def _parse_bytes(data: bytes, source_name: str) -> DepositCatalog:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"not valid UTF-8 (byte offset {error.start})"
        raise CatalogError([CatalogProblem(source_name, 0, "", message)]) from error
    document = toml_document(text, source_name, CatalogError)

    problems = Problems(source_name, KeyLines(text))
    check_keys(document, _TOP_LEVEL_KEYS, (), problems)
    demand = _table(document, "demand", _DEMAND_KEYS, problems)
    settlement_table = _table(document, "settlement", _SETTLEMENT_KEYS, problems)
    fixed = _table(document, "fixed", _FIXED_KEYS, problems)
    demand_day_count = _parse_day_count(demand, ("demand",), problems)
    demand_kinds = _parse_kinds(demand, problems)
    settlement = _parse_settlement(settlement_table, problems)
    fixed_day_count = _parse_day_count(fixed, ("fixed",), problems)
    minimum = _parse_minimum(fixed, problems)
    history = _parse_rate_sets(document, problems)
    problems.raise_if_any()
    assert demand_day_count is not None and fixed_day_count is not None
    assert demand_kinds is not None and settlement is not None and minimum is not None
    assert history is not None
    return DepositCatalog(
        demand_day_count=demand_day_count,
        fixed_day_count=fixed_day_count,
        settlement=settlement,
        minimum_fixed_minor=minimum,
        demand_kinds=demand_kinds,
        history=history,
        source_path=source_name,
        digest=hashlib.sha256(data).hexdigest(),
    )


def _table(
    document: Mapping[str, Any], name: str, allowed: Sequence[str], problems: Problems
) -> Mapping[str, Any] | None:
    """The table `[name]` with its keys checked; None (reported) if missing or not a table."""
    if name not in document:
        problems.add((name,), f"missing required table [{name}] (keys: {', '.join(allowed)})")
        return None
    table = document[name]
    if not isinstance(table, dict):
        problems.add((name,), f"expected a table [{name}], got {describe(table)}")
        return None
    check_keys(table, allowed, (name,), problems)
    return table


def _parse_day_count(
    table: Mapping[str, Any] | None, prefix: tuple[Any, ...], problems: Problems
) -> DayCount | None:
    expected = f"one of {DAY_COUNT_LABELS}"
    value = required(table, "day_count", prefix, problems, expected)
    if value is None:
        return None
    if not isinstance(value, str):
        hint = ' (write it as a string: "360")' if isinstance(value, int) else ""
        problems.add((*prefix, "day_count"), f"expected {expected}, got {describe(value)}{hint}")
        return None
    try:
        return DayCount.from_label(value)
    except ValueError as error:
        problems.add((*prefix, "day_count"), str(error))
        return None


def _parse_kinds(
    table: Mapping[str, Any] | None, problems: Problems
) -> frozenset[ProductKind] | None:
    names = ", ".join(kind.value for kind in DEMAND_KINDS)
    expected = f"a list of product kinds that earn the demand rate ({names})"
    value = required(table, "kinds", ("demand",), problems, expected)
    if value is None:
        return None
    key = ("demand", "kinds")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.add(key, f"expected {expected}, got {describe(value)}")
        return None
    allowed = {kind.value: kind for kind in DEMAND_KINDS}
    for item in value:
        if item not in allowed:
            problems.add(key, f"{item!r} cannot earn the demand rate (expected one of: {names})")
            return None
    if len(set(value)) != len(value):
        problems.add(key, "a kind is listed twice")
        return None
    return frozenset(allowed[item] for item in value)


def _parse_settlement(
    table: Mapping[str, Any] | None, problems: Problems
) -> SettlementSchedule | None:
    expected_months = "four months three apart, such as [3, 6, 9, 12]"
    months = required(table, "months", ("settlement",), problems, expected_months)
    day = required(table, "day", ("settlement",), problems, "a day of the month, 1..28")
    valid = months is not None and day is not None
    if months is not None and not (
        isinstance(months, list)
        and len(months) == 4
        and all(is_integer(month) for month in months)
        and 1 <= months[0] <= 3
        and all(months[q] == months[0] + 3 * q for q in range(4))
    ):
        problems.add(("settlement", "months"), f"expected {expected_months}, got {months!r}")
        valid = False
    if day is not None and not (is_integer(day) and 1 <= day <= 28):
        problems.add(
            ("settlement", "day"),
            f"expected a day of the month 1..28 (every month has it), got {describe(day)}",
        )
        valid = False
    if not valid:
        return None
    return SettlementSchedule(first_month=months[0], day_of_month=day)


def _parse_minimum(table: Mapping[str, Any] | None, problems: Problems) -> int | None:
    expected = "the smallest fixed deposit, an integer number of fen"
    value = required(table, "minimum_minor", ("fixed",), problems, expected)
    if value is None:
        return None
    key = ("fixed", "minimum_minor")
    if isinstance(value, float):
        problems.add(key, f"money is an integer number of fen, got {describe(value)}")
        return None
    if not is_integer(value):
        problems.add(key, f"expected {expected}, got {describe(value)}")
        return None
    if not 1 <= value <= MINIMUM_FIXED_MINOR_MAX:
        problems.add(key, f"{value} is out of range 1..{MINIMUM_FIXED_MINOR_MAX}")
        return None
    assert isinstance(value, int)
    return value


def _parse_rate_sets(document: Mapping[str, Any], problems: Problems) -> tuple[RateSet, ...] | None:
    """Every `[[rates]]` set, then their order: dates strictly increasing."""
    if "rates" not in document:
        problems.add(("rates",), "missing required rate sets ([[rates]] with effective, "
                     "demand, fixed)")  # fmt: skip
        return None
    tables = document["rates"]
    if not isinstance(tables, list) or not all(isinstance(item, dict) for item in tables):
        problems.add(("rates",), f"expected rate sets ([[rates]]), got {describe(tables)}")
        return None
    if not tables:
        problems.add(("rates",), "no rate set: at least one [[rates]] is required")
        return None
    parsed = [_parse_rate_set(table, index, problems) for index, table in enumerate(tables)]
    previous: tuple[int, int] | None = None  # (effective day, line) of the latest set so far
    for index, (effective_day, line, _) in enumerate(parsed):
        if effective_day is None:
            continue
        if previous is not None and effective_day <= previous[0]:
            when = date_text(effective_day)
            before, before_line = date_text(previous[0]), previous[1]
            if effective_day == previous[0]:
                reason = (
                    f"duplicate effective date {when} (also the rate set at line "
                    f"{before_line}): two rate sets would be in force on the same day"
                )
            else:
                reason = (
                    f"{when} overlaps the rate set effective {before} at line {before_line}: "
                    "list rate sets in date order, each in force until the next one's date"
                )
            problems.add(("rates", index, "effective"), reason)
        else:
            previous = (effective_day, line)
    rate_sets = [rate_set for _, _, rate_set in parsed if rate_set is not None]
    if len(rate_sets) < len(parsed) or len(problems.items) > 0:
        return None
    return tuple(rate_sets)


def _parse_rate_set(
    table: Mapping[str, Any], index: int, problems: Problems
) -> tuple[int | None, int, RateSet | None]:
    """(effective day or None, line of the set, the set or None if it has a problem)."""
    prefix: tuple[Any, ...] = ("rates", index)
    line = problems.key_lines.line(prefix) if problems.key_lines is not None else 0
    problem_count = len(problems.items)
    check_keys(table, _RATE_SET_KEYS, prefix, problems)
    effective = parse_date(table, "effective", prefix, problems)
    demand = required(table, "demand", prefix, problems, 'the demand rate, such as "0.05%"')
    demand_rate = (
        None if demand is None else parse_rate_value(demand, (*prefix, "demand"), problems)
    )
    fixed_rates = _parse_fixed_rates(table, prefix, problems)
    if fixed_rates is not None and demand_rate is not None:
        for term, rate in fixed_rates.items():
            if rate < demand_rate:
                problems.add(
                    (*prefix, "fixed", term.value),
                    f"{format_rate(rate)} is below the demand rate {format_rate(demand_rate)} "
                    "of the same rate set: a fixed deposit never earns less than demand",
                )
    if len(problems.items) > problem_count:
        return effective, line, None
    assert effective is not None and demand_rate is not None and fixed_rates is not None
    return effective, line, RateSet(effective, demand_rate, MappingProxyType(fixed_rates), line)


def _parse_fixed_rates(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> dict[Term, int] | None:
    expected = 'a table of every term\'s rate, such as { "3m" = "0.65%", ... }'
    value = required(table, "fixed", prefix, problems, f"{expected}; terms {TERM_NAMES}")
    if value is None:
        return None
    key = (*prefix, "fixed")
    if not isinstance(value, dict):
        problems.add(key, f"expected {expected}, got {describe(value)}")
        return None
    rates: dict[Term, int] = {}
    valid = True
    for name, text in value.items():
        if name not in {term.value for term in Term}:
            problems.add((*key, name), f"unknown term {name!r} (expected one of: {TERM_NAMES})")
            valid = False
            continue
        rate = parse_rate_value(text, (*key, name), problems)
        if rate is None:
            valid = False
        else:
            rates[Term(name)] = rate
    missing = [term.value for term in Term if term.value not in value]
    if missing:
        problems.add(key, f"missing term(s) {', '.join(missing)}: every rate set gives every "
                     f"term ({TERM_NAMES})")  # fmt: skip
        valid = False
    return rates if valid else None
