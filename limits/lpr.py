"""The loan prime rate (LPR) table: effective-dated 1-year and over-5-year rates.

A loan's floating rate is the LPR in force plus its spread (DOMAIN.md, Loans). The
National Interbank Funding Center publishes the two LPRs on the 20th of each month
(the next business day when the 20th is a weekend or a holiday); the table keeps
only the publications that changed a rate, each in force from its `effective` date
until the next one's:

    version = 3                      # increases with every approved change
    [[rates]]
    effective = 2025-05-20           # a TOML date, not a string
    1y = "3.00%"                     # the 1-year LPR
    5y = "3.50%"                     # the over-5-year LPR (5年期以上)

Changed only through an approved request (kind `lpr`), so it is validated strictly
and completely like the deposit catalog (`limits.deposits`): every key required,
unknown keys refused, rates only as exact percentage strings (`limits.rates`: ppm
ints, "3.00%" -> 30_000; a float or an integer is refused), effective dates strictly
increasing, one per month, on a publication day (the 20th to the 27th), every
problem at once naming the file, the line and the key (`LprError`). History is
kept: a loan priced in 2024 still finds its 2024 rate; an approved change may add a
future row, never rewrite one already in force (`check_lpr_successor`).
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from .calendar import DAY_COUNT, civil_of_day
from .filecheck import (
    VERSION_MAX,
    KeyLines,
    ParameterFileError,
    Problems,
    check_keys,
    date_text,
    describe,
    parse_date,
    parse_rate_value,
    parse_version,
    toml_document,
)
from .rates import format_rate
from .watched import read_stable

PUBLICATION_DAY_FIRST: Final = 20  # the 20th...
PUBLICATION_DAY_LAST: Final = 27  # ...or the first business day after it (weekends, holidays)
_TOP_LEVEL_KEYS: Final = ("version", "rates")


class LprTerm(enum.StrEnum):
    """The two published tenors, spelt as in the file and on the wire."""

    ONE_YEAR = "1y"
    OVER_FIVE_YEARS = "5y"  # "5年期以上": loans longer than five years (mortgages)


_FIXING_KEYS: Final = ("effective", *(term.value for term in LprTerm))
TERM_NAMES: Final = ", ".join(term.value for term in LprTerm)


class LprError(ParameterFileError):
    """An LPR table cannot be used; like `limits.risk.RiskRulesError`: every problem in
    `catalog_problems`, `errors` as (line, message), `source`/`line`/`message` the
    first one's."""


class LprNotInForceError(LookupError):
    """No LPR is in force on the day asked for (it is before the table's first row)."""

    def __init__(self, day: int, first_day: int) -> None:
        self.day = day
        self.first_day = first_day
        super().__init__(
            f"no LPR is in force on {date_text(day)}: the table's first fixing takes "
            f"effect on {date_text(first_day)}"
        )


@dataclass(frozen=True, slots=True)
class LprFixing:
    """The rates in force from `effective_day` (a `limits.calendar` day number) until
    the next fixing's day; rates in ppm a year (`limits.rates`: 3.00% is 30_000)."""

    effective_day: int
    rates: Mapping[LprTerm, int]
    line: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.effective_day < DAY_COUNT, self.effective_day
        assert set(self.rates) == set(LprTerm), self.rates

    def same_rates(self, other: LprFixing) -> bool:
        """Equal but for the line they were read from."""
        return self.effective_day == other.effective_day and dict(self.rates) == dict(other.rates)

    def to_json(self) -> dict[str, Any]:
        return {
            "effective": date_text(self.effective_day),
            **{
                term.value: {"rate": format_rate(self.rates[term]), "rate_ppm": self.rates[term]}
                for term in LprTerm
            },
        }


@dataclass(frozen=True, slots=True)
class LprTable:
    """One validated LPR table: every fixing, oldest first."""

    version: int
    digest: str
    """SHA-256 (hex) of the text's UTF-8 bytes."""
    text: str
    history: tuple[LprFixing, ...]
    source: str = ""

    def __post_init__(self) -> None:
        assert 1 <= self.version <= VERSION_MAX, self.version
        assert len(self.history) > 0
        days = [fixing.effective_day for fixing in self.history]
        assert days == sorted(set(days)), days
        assert self.digest == hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def fixing(self, day: int) -> LprFixing:
        """The fixing in force on `day`; `LprNotInForceError` before the first one."""
        assert 0 <= day < DAY_COUNT, day
        found: LprFixing | None = None
        for fixing in self.history:  # a few dozen rows: a scan is clearer than bisect
            if fixing.effective_day > day:
                break
            found = fixing
        if found is None:
            raise LprNotInForceError(day, self.history[0].effective_day)
        return found

    def rate(self, day: int, term: LprTerm | str) -> int:
        """The `term` LPR in force on `day`, in ppm (3.00% -> 30_000); ValueError for an
        unknown term, `LprNotInForceError` before the first fixing."""
        return self.fixing(day).rates[LprTerm(term)]

    def to_json(self, day: int | None = None) -> dict[str, Any]:
        """Version, digest, every fixing (rate text and ppm), and with `day` the one in
        force that day (`in_force`)."""
        document: dict[str, Any] = {
            "version": self.version,
            "digest": self.digest,
            "terms": [term.value for term in LprTerm],
            "history": [fixing.to_json() for fixing in self.history],
        }
        if day is not None:
            document["in_force"] = self.fixing(day).to_json()
        return document


def load_lpr(path: str | os.PathLike[str]) -> LprTable:
    """Read and validate the table at `path`; `LprError` on any problem."""
    source = os.fspath(path)
    _, data = read_stable(source, _at_file, "LPR table")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LprError.at(source, 0, f"not valid UTF-8 (byte offset {error.start})") from error
    return parse_lpr(text, source)


def _at_file(path: str, message: str) -> LprError:
    return LprError.at(path, 0, message)


def parse_lpr(text: str, source: str) -> LprTable:
    """Validate table text; `source` names it in messages. `LprError` with every problem."""
    document = toml_document(text, source, LprError)
    problems = Problems(source, KeyLines(text), LprError)
    check_keys(document, _TOP_LEVEL_KEYS, (), problems)
    version = parse_version(document, problems, "the table's")
    history = _parse_fixings(document, problems)
    problems.raise_if_any()
    assert version is not None and history is not None
    return LprTable(
        version=version,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        text=text,
        history=history,
        source=source,
    )


def check_lpr_successor(current: LprTable, new: LprTable, day: int, source: str = "") -> None:
    """Refuse (`LprError`) a new table that does not increase the version, removes or
    changes a fixing in force on or before `day` (today's business day), or adds one
    that takes effect on or before `day`: rates already used to price loans are history."""
    problems = Problems(source or new.source, KeyLines(new.text), LprError)
    if new.version <= current.version:
        problems.add(("version",), f"{new.version} does not increase the version in force "
                     f"({current.version}): every change is a new, higher version")  # fmt: skip
    new_by_day = {fixing.effective_day: fixing for fixing in new.history}
    for fixing in current.history:
        if fixing.effective_day > day:
            continue  # not in force yet: it may still change
        replacement = new_by_day.get(fixing.effective_day)
        when = date_text(fixing.effective_day)
        if replacement is None:
            problems.add_at(1, "rates", f"the fixing effective {when} was removed; the table "
                            "keeps history (loans were priced with it)")  # fmt: skip
        elif not replacement.same_rates(fixing):
            problems.add_at(
                replacement.line,
                "rates",
                f"the fixing effective {when} was changed; rates in force cannot be "
                "rewritten (add a new fixing)",
            )
    current_days = {fixing.effective_day for fixing in current.history}
    for fixing in new.history:
        if fixing.effective_day <= day and fixing.effective_day not in current_days:
            problems.add_at(
                fixing.line,
                "rates.effective",
                f"{date_text(fixing.effective_day)} is not after today ({date_text(day)}); "
                "a new fixing takes effect in the future",
            )
    problems.raise_if_any()


def _parse_fixings(document: Mapping[str, Any], problems: Problems) -> tuple[LprFixing, ...] | None:
    """Every `[[rates]]` fixing, then their order: strictly increasing, one a month."""
    if "rates" not in document:
        problems.add(
            ("rates",), f"missing required fixings ([[rates]] with effective, {TERM_NAMES})"
        )
        return None
    tables = document["rates"]
    if not isinstance(tables, list) or not all(isinstance(item, dict) for item in tables):
        problems.add(("rates",), f"expected fixings ([[rates]]), got {describe(tables)}")
        return None
    if not tables:
        problems.add(("rates",), "no fixing: at least one [[rates]] is required")
        return None
    count = len(problems.items)
    fixings = [_parse_fixing(table, index, problems) for index, table in enumerate(tables)]
    previous: LprFixing | None = None
    for index, fixing in enumerate(fixings):
        if fixing is None:
            continue
        if previous is not None:
            reason = _order_problem(previous, fixing)
            if reason is not None:
                problems.add(("rates", index, "effective"), reason)
        previous = fixing
    if len(problems.items) > count:
        return None
    return tuple(fixing for fixing in fixings if fixing is not None)


def _order_problem(previous: LprFixing, fixing: LprFixing) -> str | None:
    """Why `fixing` cannot follow `previous` (None: it can)."""
    when, before = date_text(fixing.effective_day), date_text(previous.effective_day)
    if fixing.effective_day <= previous.effective_day:
        return (
            f"{when} is not after {before} (the fixing at line {previous.line}): list fixings "
            "in date order, each in force until the next one's date"
        )
    if civil_of_day(fixing.effective_day)[:2] == civil_of_day(previous.effective_day)[:2]:
        return (
            f"{when} is in the same month as {before} (line {previous.line}): the LPR is "
            "published once a month"
        )
    return None


def _parse_fixing(table: Mapping[str, Any], index: int, problems: Problems) -> LprFixing | None:
    prefix: tuple[Any, ...] = ("rates", index)
    line = problems.key_lines.line(prefix) if problems.key_lines is not None else 0
    count = len(problems.items)
    check_keys(table, _FIXING_KEYS, prefix, problems)
    effective = _parse_effective(table, prefix, problems)
    rates: dict[LprTerm, int] = {}
    for term in LprTerm:
        if term.value not in table:
            problems.add((*prefix, term.value), f'missing required key (the {term.value} LPR, '
                         'such as "3.00%")')  # fmt: skip
            continue
        rate = parse_rate_value(table[term.value], (*prefix, term.value), problems)
        if rate is not None:
            rates[term] = rate
    if len(problems.items) > count:
        return None
    assert effective is not None
    return LprFixing(effective, MappingProxyType(rates), line)


def _parse_effective(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> int | None:
    day = parse_date(table, "effective", prefix, problems)
    if day is None:
        return None
    if not PUBLICATION_DAY_FIRST <= civil_of_day(day)[2] <= PUBLICATION_DAY_LAST:
        problems.add(
            (*prefix, "effective"),
            f"{date_text(day)} is not a publication day: the LPR is published on the 20th "
            f"(the next business day when the 20th is a weekend or a holiday: "
            f"{PUBLICATION_DAY_FIRST}..{PUBLICATION_DAY_LAST})",
        )
        return None
    return day
