"""The loan prime rate table (limits/lpr.py): the shipped history and its effective
dating, the published JSON, every refusal of a bad table (naming the source, the line and
the key, all at once), and the rule that an approved change never rewrites history."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import pytest

from limits.calendar import civil_of_day, day_of_date
from limits.errors import RuleFileError
from limits.lpr import (
    LprError,
    LprNotInForceError,
    LprTable,
    LprTerm,
    check_lpr_successor,
    load_lpr,
    parse_lpr,
)
from tests.repo_paths import REPO_ROOT

SHIPPED = REPO_ROOT / "core" / "data" / "lpr.toml"
SOURCE = "bank/lpr.toml"
TWO = (
    'version = 2\n'
    '[[rates]]\neffective = 2024-10-21\n1y = "3.10%"\n5y = "3.60%"\n'
    '[[rates]]\neffective = 2025-05-20\n1y = "3.00%"\n5y = "3.50%"\n'
)  # fmt: skip
FUTURE = '[[rates]]\neffective = 2027-01-20\n1y = "2.90%"\n5y = "3.40%"\n'


def day(year: int, month: int, day_of_month: int) -> int:
    return day_of_date(year, month, day_of_month)


def refused(text: str) -> LprError:
    with pytest.raises(LprError) as caught:
        parse_lpr(text, SOURCE)
    return caught.value


def test_shipped_table_history_and_rates_in_force() -> None:
    """Since 2025-05-20 the 1-year LPR is 3.00% and the over-5-year 3.50% (DOMAIN.md);
    the day before, 3.10% / 3.60%; every fixing since the 2019 reform is kept, in order,
    and nothing is in force before the first."""
    table = load_lpr(SHIPPED)
    assert table.rate(day(2025, 5, 20), LprTerm.ONE_YEAR) == 30_000
    assert table.rate(day(2026, 12, 6), "5y") == 35_000
    assert table.rate(day(2025, 5, 19), "1y") == 31_000
    assert table.rate(day(2025, 5, 19), LprTerm.OVER_FIVE_YEARS) == 36_000
    assert (
        table.rate(day(2019, 8, 20), "1y") == 42_500
        and table.rate(day(2019, 8, 20), "5y") == 48_500
    )
    assert table.fixing(day(2023, 8, 20)).effective_day == day(2023, 6, 20)
    assert table.fixing(day(2023, 8, 21)).effective_day == day(2023, 8, 21)
    assert len(table.history) == 15
    days = [fixing.effective_day for fixing in table.history]
    assert days == sorted(set(days))
    with pytest.raises(LprNotInForceError, match="first fixing takes effect on 2019-08-20"):
        table.rate(day(2019, 8, 19), "1y")
    with pytest.raises(ValueError):
        table.rate(day(2025, 6, 1), "3y")
    assert table.version == 1 and table.digest == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()


def test_to_json_has_every_fixing_and_the_one_in_force() -> None:
    """The published table: version, digest, both terms, each fixing as text and ppm."""
    table = parse_lpr(TWO, SOURCE)
    document = json.loads(json.dumps(table.to_json(day(2025, 1, 1))))
    assert document == {
        "version": 2,
        "digest": hashlib.sha256(TWO.encode()).hexdigest(),
        "terms": ["1y", "5y"],
        "history": [
            {"effective": "2024-10-21", "1y": {"rate": "3.10%", "rate_ppm": 31_000},
             "5y": {"rate": "3.60%", "rate_ppm": 36_000}},
            {"effective": "2025-05-20", "1y": {"rate": "3.00%", "rate_ppm": 30_000},
             "5y": {"rate": "3.50%", "rate_ppm": 35_000}},
        ],
        "in_force": {"effective": "2024-10-21", "1y": {"rate": "3.10%", "rate_ppm": 31_000},
                     "5y": {"rate": "3.60%", "rate_ppm": 36_000}},
    }  # fmt: skip
    assert "in_force" not in table.to_json()


REFUSALS = [
    # (id, text, fragment on the offending line, key, reason fragment)
    ("rate as a float", TWO.replace('1y = "3.00%"', "1y = 3.0"), "1y = 3.0", "rates[1].1y",
     "a float cannot hold most rates exactly"),
    ("rate as an integer", TWO.replace('5y = "3.50%"', "5y = 3"), "5y = 3", "rates[1].5y",
     "exact percentage string"),
    ("negative rate", TWO.replace('1y = "3.00%"', '1y = "-3.00%"'), "-3.00%", "rates[1].1y",
     "negative"),
    ("rate too fine", TWO.replace('1y = "3.00%"', '1y = "3.00005%"'), "3.00005%",
     "rates[1].1y", "finer than 0.0001%"),
    ("missing term", TWO.replace('5y = "3.50%"\n', ""), "[[rates]]", "rates[1].5y",
     "missing required key"),
    ("unknown key", TWO.replace('5y = "3.50%"', '5y = "3.50%"\n3y = "3.20%"'), "3y",
     "rates[1].3y", "unknown key"),
    ("date as a string", TWO.replace("effective = 2025-05-20", 'effective = "2025-05-20"'),
     '"2025-05-20"', "rates[1].effective", "a TOML date"),
    ("not a publication day", TWO.replace("2025-05-20", "2025-05-15"), "2025-05-15",
     "rates[1].effective", "not a publication day"),
    ("out of order", TWO.replace("2025-05-20", "2024-09-20"), "2024-09-20",
     "rates[1].effective", "is not after 2024-10-21"),
    ("twice in a month", TWO.replace("2025-05-20", "2024-10-25"), "2024-10-25",
     "rates[1].effective", "same month"),
    ("missing version", TWO.replace("version = 2\n", ""), "", "version",
     "missing required key"),
    ("version zero", TWO.replace("version = 2", "version = 0"), "version", "version",
     "expected an integer"),
    ("unknown top-level key", "source = 1\n" + TWO, "source", "source", "unknown key"),
    ("no fixings", "version = 1\nrates = []\n", "rates", "rates", "at least one"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "fragment", "key", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSALS],
)
def test_refusal_names_source_line_and_key(text: str, fragment: str, key: str, reason: str) -> None:
    """A bad table is refused with one problem naming the source, the line (of the key, or
    of its fixing's table) and the key, and saying why; it is a RuleFileError with
    (line, message) pairs for an approval request."""
    error = refused(text)
    assert len(error.catalog_problems) == 1, str(error)
    if fragment == "[[rates]]":
        line = [n for n, text_line in enumerate(text.splitlines(), 1) if text_line == fragment][1]
    elif fragment:
        line = next(n for n, text_line in enumerate(text.splitlines(), 1) if fragment in text_line)
    else:
        line = 1
    assert (error.source, error.line) == (SOURCE, line), str(error)
    assert reason in error.message, str(error)
    assert str(error).startswith(f"{SOURCE}:{line}: `{key}`: "), str(error)
    assert error.errors == [(line, f"`{key}`: {error.message}")]
    assert isinstance(error, RuleFileError)


def test_every_problem_is_reported_at_once() -> None:
    """Two bad fixings and a bad version: three problems, one error."""
    text = TWO.replace("version = 2", "version = -1").replace('1y = "3.10%"', "1y = 3.1")
    text = text.replace("2025-05-20", "2025-05-01")
    error = refused(text)
    assert [line for line, _ in error.errors] == [1, 4, 7]


def test_unreadable_files(tmp_path: Path) -> None:
    """A missing file, or bytes that are not UTF-8, are LprErrors about the whole file."""
    with pytest.raises(LprError, match="cannot read the LPR table file"):
        load_lpr(tmp_path / "absent.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(TWO.encode() + b"# \xe9\n")
    with pytest.raises(LprError, match="not valid UTF-8"):
        load_lpr(latin)
    with pytest.raises(LprError, match="invalid TOML") as caught:
        parse_lpr(TWO + "[[rates]\n", SOURCE)
    assert caught.value.line == 10


def successor(text: str) -> LprTable:
    return parse_lpr(text, "approval A2")


def test_successor_adds_future_fixings_only() -> None:
    """An approved change raises the version and may add (or change) fixings after today;
    it may not change, remove or backdate one on or before today."""
    current = parse_lpr(TWO, SOURCE)
    today = day(2026, 12, 6)
    check_lpr_successor(
        current, successor(TWO.replace("version = 2", "version = 3") + FUTURE), today
    )

    def problems(new_text: str) -> list[str]:
        with pytest.raises(LprError) as caught:
            check_lpr_successor(current, successor(new_text), today)
        assert caught.value.source == "approval A2"
        return [message for _, message in caught.value.errors]

    assert problems(TWO + FUTURE) == [
        "`version`: 2 does not increase the version in force (2): every change is a new, "
        "higher version"
    ]
    changed = TWO.replace("version = 2", "version = 3").replace('5y = "3.50%"', '5y = "3.45%"')
    assert problems(changed) == [
        "`rates`: the fixing effective 2025-05-20 was changed; rates in force cannot be "
        "rewritten (add a new fixing)"
    ]
    removed = 'version = 3\n[[rates]]\neffective = 2025-05-20\n1y = "3.00%"\n5y = "3.50%"\n'
    assert problems(removed) == [
        "`rates`: the fixing effective 2024-10-21 was removed; the table keeps history "
        "(loans were priced with it)"
    ]
    backdated = TWO.replace("version = 2", "version = 3") + FUTURE.replace(
        "2027-01-20", "2026-11-20"
    )
    assert problems(backdated) == [
        "`rates.effective`: 2026-11-20 is not after today (2026-12-06); a new fixing takes "
        "effect in the future"
    ]
    # A fixing not yet in force may still be corrected.
    pending = parse_lpr(TWO + FUTURE, SOURCE)
    corrected = successor(
        TWO.replace("version = 2", "version = 3") + FUTURE.replace("2.90%", "2.85%")
    )
    check_lpr_successor(pending, corrected, today)
    assert corrected.rate(day(2027, 2, 1), "1y") == 28_500


def test_shipped_dates_are_publication_days() -> None:
    """Every shipped fixing is on the 20th or, when that was a weekend, the next Monday."""
    for fixing in load_lpr(SHIPPED).history:
        date = datetime.date(*civil_of_day(fixing.effective_day))
        assert date.day == 20 or (date.weekday() == 0 and date.day in (21, 22)), date
