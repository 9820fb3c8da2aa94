"""Strict validation of the TOML parameter files of `limits`, one implementation for all.

The deposit catalog (`limits.deposits`), the LPR table (`limits.lpr`), the risk rule
set (`limits.risk`) and the loan catalog (`limits.loans`) are written by operators
and changed through approved requests, so each is checked the same way: every key
required unless the file's module says otherwise, unknown keys refused with the
nearest known key suggested, rates only as exact percentage strings, and every
problem of the file reported at once, one line each naming the file, the line and
the dotted key (`CatalogProblem`, raised together as a `CatalogError`).

tomllib gives values, not positions, so `KeyLines` finds each key's line by reading
the text; `Problems` collects the problems of one file and raises them as the file
kind's error (a `CatalogError` subclass: `LprError`, `RiskRulesError`,
`LoanCatalogError`), so the approvals service reports all of them alike
(PARAMETER_INVALID, one error per problem with its line).
"""

from __future__ import annotations

import datetime
import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

from .calendar import EPOCH_YEAR, YEAR_MAX, civil_of_day, day_of_date
from .errors import RuleFileError
from .rates import parse_rate

TOML_POSITION: Final = re.compile(
    r"^(?P<reason>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)$"
)
DATE_EXPECTED: Final = "a TOML date such as 2025-05-20 (not quoted)"


# --- Errors ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatalogProblem:
    """One problem of a catalog file: where (file, 1-based line, 0 if it is about the
    whole file, dotted key or "") and why."""

    path: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line > 0 else self.path
        return f"{where}: `{self.key}`: {self.message}" if self.key else f"{where}: {self.message}"


class CatalogError(RuleFileError):
    """A catalog file cannot be used. Every problem of the file is in `problems` (one
    line each in `str(error)`); `path`, `line` and `message` are the first one's.

    A `RuleFileError`, so code that reloads rule files and catalogs handles both alike.
    """

    catalog_problems: tuple[CatalogProblem, ...]

    def __init__(self, problems: Sequence[CatalogProblem]) -> None:
        assert len(problems) > 0
        self.catalog_problems = tuple(problems)
        super().__init__([str(problem) for problem in problems])

    @property
    def path(self) -> str:
        return self.catalog_problems[0].path

    @property
    def line(self) -> int:
        return self.catalog_problems[0].line

    @property
    def message(self) -> str:
        return self.catalog_problems[0].message


class ParameterFileError(CatalogError):
    """A parameter file (risk rules, LPR table, loan catalog) cannot be used. Every
    problem is in `catalog_problems` (one line each in `str(error)`, `errors` as (line,
    message): what an approval request shows); `source`, `line` and `message` are the
    first one's."""

    @property
    def source(self) -> str:
        """The file name (or the approval request's name for the text) in messages."""
        return self.path

    @property
    def errors(self) -> list[tuple[int, str]]:
        """Every problem as (1-based line, 0 if about the whole file; "`key`: reason")."""
        return [
            (
                problem.line,
                f"`{problem.key}`: {problem.message}" if problem.key else problem.message,
            )
            for problem in self.catalog_problems
        ]

    @classmethod
    def at(cls, source: str, line: int, message: str) -> Self:
        """An error with one problem (about the file as a whole when line is 0)."""
        return cls([CatalogProblem(source, line, "", message)])


def toml_error_position(error: tomllib.TOMLDecodeError) -> tuple[int, str]:
    """(line, reason) of a TOML syntax error: tomllib puts the position in the text;
    line 0 when it does not."""
    match = TOML_POSITION.match(str(error))
    return (int(match["line"]), match["reason"]) if match else (0, str(error))


def toml_document(text: str, source: str, error: type[CatalogError]) -> dict[str, Any]:
    """The TOML document `text` is; a syntax error raises `error` with one problem, at
    the line tomllib names ("invalid TOML: <reason>")."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as decode_error:
        line, reason = toml_error_position(decode_error)
        problem = CatalogProblem(source, line, "", f"invalid TOML: {reason}")
        raise error([problem]) from decode_error


# --- Where keys are: line numbers for messages ---------------------------------------

_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]\]?")
_ASSIGNMENT = re.compile(rf"^\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*=(.*)$")
_INLINE_KEY = re.compile(rf"(?:^|[{{,])\s*({_KEY})\s*=")
_KEY_PART = re.compile(_KEY)


def _key_parts(dotted: str) -> tuple[str, ...]:
    parts = []
    for match in _KEY_PART.finditer(dotted):
        text = match.group(0)
        parts.append(text[1:-1] if text[0] in "\"'" else text)
    return tuple(parts)


class KeyLines:
    """The line of each key of a TOML document, found by reading it line by line.

    tomllib gives values, not positions, so messages would otherwise name a key but no
    line. Tables (`[a]`), arrays of tables (`[[rates]]`, the nth one as ("rates", n)),
    keys and the keys of a one-line inline table are recorded; a key it cannot place is
    given its table's line (or line 1). Lines inside multi-line strings are skipped.
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[Any, ...], int] = {}
        array_counts: dict[tuple[str, ...], int] = {}
        table: tuple[Any, ...] = ()
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            header = _HEADER.match(line)
            if header is not None:
                path = _key_parts(header.group(2))
                if header.group(1) == "[[":
                    index = array_counts.get(path, 0)
                    array_counts[path] = index + 1
                    table = (*path, index)
                else:
                    table = path
                self._lines.setdefault(table, number)
                continue
            assignment = _ASSIGNMENT.match(line)
            if assignment is None:
                continue
            key = (*table, *_key_parts(assignment.group(1)))
            self._lines.setdefault(key, number)
            value = assignment.group(2).strip()
            if value.startswith("{"):
                for inline in _INLINE_KEY.finditer(value):
                    self._lines.setdefault((*key, *_key_parts(inline.group(1))), number)
            for quotes in ('"""', "'''"):
                if value.count(quotes) % 2 == 1:
                    in_string = quotes

    def line(self, key: tuple[Any, ...]) -> int:
        """The line of `key`, else of its nearest enclosing key or table, else 1."""
        for length in range(len(key), 0, -1):
            number = self._lines.get(key[:length])
            if number is not None:
                return number
        return 1


class Problems:
    """Collects every problem of one file so they are reported together, as the file
    kind's error (`error`, a `CatalogError` class)."""

    def __init__(
        self,
        source_name: str,
        lines: KeyLines | None,
        error: type[CatalogError] = CatalogError,
    ) -> None:
        self.source_name = source_name
        self.key_lines = lines
        self.error = error
        self.items: list[CatalogProblem] = []

    def add(self, key: tuple[Any, ...], reason: str) -> None:
        line = self.key_lines.line(key) if self.key_lines is not None else 0
        self.add_at(line, dotted(key), reason)

    def add_at(self, line: int, dotted: str, reason: str) -> None:
        self.items.append(CatalogProblem(self.source_name, line, dotted, reason))

    def line(self, key: tuple[Any, ...]) -> int:
        """The line of `key` in the file (0 without the text's lines)."""
        return self.key_lines.line(key) if self.key_lines is not None else 0

    def raise_if_any(self) -> None:
        if self.items:
            raise self.error(self.items)


def dotted(key: tuple[Any, ...]) -> str:
    """`("rates", 1, "fixed", "3m")` -> `rates[1].fixed."3m"`."""
    text = ""
    for part in key:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
        text += f".{name}" if text else name
    return text


# --- Checks of keys and values --------------------------------------------------------


def check_keys(
    table: Mapping[str, Any], allowed: Sequence[str], prefix: tuple[Any, ...], problems: Problems
) -> None:
    """Report every key of `table` not in `allowed`, with the nearest allowed one."""
    for name in table:
        if name in allowed:
            continue
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"expected one of: {', '.join(allowed)}"
        problems.add((*prefix, name), f"unknown key ({hint})")


VERSION_MAX: Final = 2**31 - 1  # a parameter file's `version`


def parse_version(document: Mapping[str, Any], problems: Problems, whose: str) -> int | None:
    """The required top-level `version` of a parameter file (1..VERSION_MAX), or None
    (reported); `whose` names the file's kind in the message ("the catalog's")."""
    if "version" not in document:
        problems.add(("version",), f"missing required key ({whose} version, an integer "
                     "that increases with every approved change)")  # fmt: skip
        return None
    value = document["version"]
    if not is_integer(value) or not 1 <= value <= VERSION_MAX:
        problems.add(("version",), f"expected an integer 1..{VERSION_MAX}, got {describe(value)}")
        return None
    assert isinstance(value, int)
    return value


def required(
    table: Mapping[str, Any] | None, name: str, prefix: tuple[Any, ...], problems: Problems,
    expected: str,
) -> Any:  # fmt: skip
    """The value of a required key; None if the table or the key is missing (reported)."""
    if table is None:
        return None
    if name not in table:
        problems.add((*prefix, name), f"missing required key ({expected})")
        return None
    return table[name]


def parse_date(
    table: Mapping[str, Any], name: str, prefix: tuple[Any, ...], problems: Problems
) -> int | None:
    """The day number of the required TOML date `name` (2000-01-01..2179-06-06); None
    (reported) if it is missing, not a date (a quoted string, a date and time) or out of
    the calendar's range."""
    value = required(table, name, prefix, problems, DATE_EXPECTED)
    if value is None:
        return None
    key = (*prefix, name)
    if isinstance(value, datetime.datetime) or not isinstance(value, datetime.date):
        problems.add(key, f"expected {DATE_EXPECTED}, got {describe(value)}")
        return None
    if not EPOCH_YEAR <= value.year <= YEAR_MAX or (value.year == YEAR_MAX and value.month > 6):
        problems.add(key, f"{value.isoformat()} is outside 2000-01-01..2179-06-06")
        return None
    return day_of_date(value.year, value.month, value.day)


def parse_rate_value(value: Any, key: tuple[Any, ...], problems: Problems) -> int | None:
    """A rate in ppm a year from an exact percentage string ("0.05%" -> 500); None
    (reported) for a float, an integer, a negative or malformed rate."""
    if isinstance(value, float) or is_integer(value):
        sign = "negative; a rate is >= 0%, and " if value < 0 else ""
        problems.add(
            key,
            f'{sign}a rate is an exact percentage string such as "0.05%", got '
            f"{describe(value)} (a float cannot hold most rates exactly)",
        )
        return None
    if not isinstance(value, str):
        problems.add(key, f'expected a rate such as "0.05%", got {describe(value)}')
        return None
    try:
        return parse_rate(value)
    except ValueError as error:
        problems.add(key, str(error))
        return None


def is_integer(value: object) -> bool:
    """An int that is not a bool (TOML's true is not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def describe(value: object) -> str:
    """What a TOML value is, for messages: `an integer (3)`, `a string ('3%')`..."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime.datetime):
        return f"a date and time ({value.isoformat()})"
    return f"a {type(value).__name__} ({value})"


def date_text(day: int) -> str:
    """A day number as an ISO date: 2025-05-20."""
    year, month, day_of_month = civil_of_day(day)
    return f"{year:04d}-{month:02d}-{day_of_month:02d}"
