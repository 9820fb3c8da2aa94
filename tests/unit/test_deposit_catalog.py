"""The deposit product catalog (limits/deposits.py): the shipped file's rates, effective
dating and history, the accrual kernel's rate table, the published JSON, every refusal
of a bad file (naming file, line and key), and reloads that keep the running catalog."""

from __future__ import annotations

import datetime
import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.interest import DayCount, day_of_date
from limits.deposits import (
    ACCRUAL_ROW_SIZE,
    CatalogError,
    CatalogFile,
    DepositCatalog,
    RateNotInForceError,
    Term,
    load_catalog,
    parse_catalog,
)
from limits.errors import RuleFileError
from limits.rules import load_rules
from tests.repo_paths import REPO_ROOT

SHIPPED = REPO_ROOT / "core" / "data" / "deposits.toml"
TEXT = SHIPPED.read_text(encoding="utf-8")
NEW_RATES = {"3m": 6_500, "6m": 8_500, "1y": 9_500, "2y": 10_500, "3y": 12_500, "5y": 13_000}
OLD_RATES = {"3m": 8_000, "6m": 10_000, "1y": 11_000, "2y": 12_000, "3y": 15_000, "5y": 15_500}


def day(year: int, month: int, day_of_month: int) -> int:
    return day_of_date(datetime.date(year, month, day_of_month))


def shipped() -> DepositCatalog:
    return load_catalog(SHIPPED)


FUTURE_SET = (
    '\n[[rates]]\neffective = 2027-01-01\ndemand = "0.05%"\n'
    'fixed = { "3m" = "0.60%", "6m" = "0.80%", "1y" = "0.90%", '
    '"2y" = "1.00%", "3y" = "1.20%", "5y" = "1.25%" }\n'
)
DEMAND_DAY_COUNT = 'day_count = "360"          # demand'
FIXED_DAY_COUNT = 'day_count = "360"          # early'


# --- The shipped catalog -------------------------------------------------------------------


def test_examples_copy_is_the_shipped_file() -> None:
    """examples/deposits.toml is the same file as the packaged default."""
    assert (REPO_ROOT / "examples" / "deposits.toml").read_bytes() == SHIPPED.read_bytes()


def test_shipped_rates_since_2025_05_20() -> None:
    """The large banks' rates since 2025-05-20 (issue 14): demand 0.05%; fixed 3m 0.65%,
    6m 0.85%, 1y 0.95%, 2y 1.05%, 3y 1.25%, 5y 1.30%; 360-day years; 50 CNY minimum."""
    catalog = shipped()
    today = day(2026, 12, 6)
    assert catalog.demand_rate(today) == 500
    assert {term.value: catalog.fixed_rate(term, today) for term in Term} == NEW_RATES
    assert catalog.demand_day_count is DayCount.ACT_360
    assert catalog.fixed_day_count is DayCount.ACT_360
    assert catalog.minimum_fixed_minor == 5_000
    assert catalog.terms == (Term.M3, Term.M6, Term.Y1, Term.Y2, Term.Y3, Term.Y5)
    assert [term.months for term in catalog.terms] == [3, 6, 12, 24, 36, 60]
    assert Term.of_months(60) is Term.Y5


def test_effective_dating_and_history() -> None:
    """The 2024-10-18 set is in force until 2025-05-19; the 2025-05-20 set from that day;
    both stay in `history`; before the first set no rate is in force."""
    catalog = shipped()
    assert [rate_set.effective_day for rate_set in catalog.history] == [
        day(2024, 10, 18),
        day(2025, 5, 20),
    ]
    assert catalog.demand_rate(day(2024, 10, 18)) == 1_000
    assert catalog.demand_rate(day(2025, 5, 19)) == 1_000
    assert catalog.demand_rate(day(2025, 5, 20)) == 500
    assert {term.value: catalog.fixed_rate(term, day(2025, 5, 19)) for term in Term} == OLD_RATES
    assert catalog.fixed_rate(Term.Y1, day(2025, 5, 20)) == 9_500
    with pytest.raises(RateNotInForceError, match="2024-10-18"):
        catalog.demand_rate(day(2024, 10, 17))


def test_accrual_rates_table() -> None:
    """One `<qq` (rate, weight) row per product id of the rule set: the demand rate of the
    day and its 360-day weight for Class I/II/III and savings products, zeros for the
    fixed-deposit, loan and internal products, id 0 and unused ids."""
    catalog = shipped()
    rules = load_rules(REPO_ROOT / "core" / "data" / "limits.toml")
    table = catalog.accrual_rates(day(2025, 6, 1), rules)
    assert len(table) == (max(rules.products) + 1) * ACCRUAL_ROW_SIZE
    rows = list(struct.iter_unpack("<qq", table))
    earning = {1, 2, 3, 4}  # class_i, class_ii, class_iii, savings in limits.toml
    assert {product.kind.value for pid, product in rules.products.items() if pid in earning} == {
        "class_i",
        "class_ii",
        "class_iii",
        "savings",
    }
    for product_id, row in enumerate(rows):
        assert row == ((500, 4453) if product_id in earning else (0, 0)), product_id
    older = list(struct.iter_unpack("<qq", catalog.accrual_rates(day(2025, 1, 1), rules)))
    assert older[1] == (1_000, 4453)


def test_accrual_rates_follow_the_day_count_and_kinds() -> None:
    """An actual/actual catalog gives a leap day the weight 4380; a product kind left out
    of `kinds` earns nothing."""
    text = TEXT.replace(DEMAND_DAY_COUNT, 'day_count = "actual"  # demand')
    text = text.replace(
        'kinds = ["class_i", "class_ii", "class_iii", "savings"]', 'kinds = ["savings"]'
    )
    catalog = parse_catalog(text, "actual.toml")
    rules = load_rules(REPO_ROOT / "core" / "data" / "limits.toml")
    rows = list(struct.iter_unpack("<qq", catalog.accrual_rates(day(2028, 2, 29), rules)))
    assert rows[4] == (500, 4380)
    assert rows[1] == rows[2] == rows[3] == (0, 0)


def test_settlement_schedule_of_the_catalog() -> None:
    """The catalog's settlement days are the 20th of Mar/Jun/Sep/Dec."""
    catalog = shipped()
    assert catalog.is_settlement_day(day(2025, 12, 20))
    assert not catalog.is_settlement_day(day(2025, 12, 21))
    assert catalog.settlement_period(day(2025, 12, 21)) == 2026 * 4
    assert catalog.period_end_day(2026 * 4) == day(2026, 3, 20)


def test_to_json_for_get_products() -> None:
    """The published document is plain JSON with the rates in force and the history,
    rates both as exact text and as integers."""
    catalog = shipped()
    document = json.loads(json.dumps(catalog.to_json(day(2026, 1, 5))))
    assert document["rate_scale"] == 1_000_000
    assert document["demand"]["day_count"] == "360"
    assert document["demand"]["account_kinds"] == ["class_i", "class_ii", "class_iii", "savings"]
    assert document["demand"]["settlement"] == {"months": [3, 6, 9, 12], "day": 20}
    assert document["fixed"]["minimum_minor"] == 5_000
    assert document["fixed"]["terms"][2] == {"term": "1y", "months": 12}
    in_force = document["in_force"]
    assert in_force["effective"] == "2025-05-20"
    assert in_force["demand"] == {"rate": "0.05%", "rate_ppm": 500}
    assert in_force["fixed"]["5y"] == {"rate": "1.30%", "rate_ppm": 13_000}
    assert [item["effective"] for item in document["history"]] == ["2024-10-18", "2025-05-20"]
    assert document["history"][0]["fixed"]["3y"]["rate"] == "1.50%"
    assert document["digest"] == catalog.digest
    assert "in_force" not in catalog.to_json()


# --- Refusals: file, line and key ------------------------------------------------------------


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the (only) line containing `fragment`."""
    lines = [number for number, line in enumerate(text.splitlines(), 1) if fragment in line]
    assert len(lines) == 1, (fragment, lines)
    return lines[0]


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


NEW_SET_DEMAND = 'demand = "0.05%"'
NEW_FIXED_3M = '"3m" = "0.65%"'

# (name, mutation of the shipped text, fragment of the line the error names, key, reason)
REFUSALS: list[tuple[str, Callable[[str], str], str, str, str]] = [
    (
        "negative rate",
        lambda t: replace_once(t, NEW_SET_DEMAND, 'demand = "-0.05%"'),
        '"-0.05%"', "rates[1].demand", "negative",
    ),
    (
        "negative number rate",
        lambda t: replace_once(t, NEW_SET_DEMAND, "demand = -5"),
        "demand = -5", "rates[1].demand", "negative",
    ),
    (
        "float rate",
        lambda t: replace_once(t, NEW_SET_DEMAND, "demand = 0.05"),
        "demand = 0.05", "rates[1].demand", "a float",
    ),
    (
        "integer rate",
        lambda t: replace_once(t, NEW_SET_DEMAND, "demand = 5"),
        "demand = 5", "rates[1].demand", "exact percentage string",
    ),
    (
        "rate finer than 0.0001%",
        lambda t: replace_once(t, NEW_SET_DEMAND, 'demand = "0.00005%"'),
        '"0.00005%"', "rates[1].demand", "finer than 0.0001%",
    ),
    (
        "float fixed rate",
        lambda t: replace_once(t, NEW_FIXED_3M, '"3m" = 0.0065'),
        '"3m" = 0.0065', "rates[1].fixed.3m", "a float",
    ),
    (
        "unknown term",
        lambda t: replace_once(t, NEW_FIXED_3M, NEW_FIXED_3M + ', "4m" = "0.70%"'),
        '"4m" = "0.70%"', "rates[1].fixed.4m", "unknown term '4m'",
    ),
    (
        "missing term",
        lambda t: replace_once(t, ', "5y" = "1.30%"', ""),
        '"3m" = "0.65%"', "rates[1].fixed", "missing term(s) 5y",
    ),
    (
        "duplicate effective date",
        lambda t: replace_once(t, "effective = 2025-05-20", "effective = 2024-10-18 #dup"),
        "#dup", "rates[1].effective", "duplicate effective date 2024-10-18",
    ),
    (
        "overlapping effective dates (out of order)",
        lambda t: replace_once(t, "effective = 2025-05-20", "effective = 2024-09-01 #early"),
        "#early", "rates[1].effective", "2024-09-01 overlaps the rate set effective 2024-10-18",
    ),
    (
        "fixed rate below the demand rate",
        lambda t: replace_once(t, NEW_FIXED_3M, '"3m" = "0.04%"'),
        '"3m" = "0.04%"', "rates[1].fixed.3m", "below the demand rate 0.05%",
    ),
    (
        "effective date as a string",
        lambda t: replace_once(t, "effective = 2025-05-20", 'effective = "2025-05-20"'),
        'effective = "2025-05-20"', "rates[1].effective", "a TOML date",
    ),
    (
        "effective date with a time",
        lambda t: replace_once(t, "effective = 2025-05-20", "effective = 2025-05-20T08:00:00"),
        "effective = 2025-05-20T08", "rates[1].effective", "date and time",
    ),
    (
        "unknown key in a rate set",
        lambda t: replace_once(t, NEW_SET_DEMAND, NEW_SET_DEMAND + "\ndemnad = 1"),
        "demnad", "rates[1].demnad", "did you mean `demand`",
    ),
    (
        "unknown key in [fixed]",
        lambda t: replace_once(t, "minimum_minor = 5_000", "minimum_minor = 5_000\nmaximum = 1"),
        "maximum = 1", "fixed.maximum", "unknown key",
    ),
    (
        "unknown top-level key",
        lambda t: "currency = 'CNY'\n" + t,
        "currency = 'CNY'", "currency", "unknown key",
    ),
    (
        "missing key",
        lambda t: replace_once(t, "minimum_minor = 5_000      # 50 CNY", "# none"),
        "[fixed]", "fixed.minimum_minor", "missing required key",
    ),
    (
        "missing rate key",
        lambda t: replace_once(
            t, "[[rates]]\neffective = 2025-05-20\n" + NEW_SET_DEMAND,
            "[[rates]] # second\neffective = 2025-05-20",
        ),
        "[[rates]] # second", "rates[1].demand", "missing required key",
    ),
    (
        "unknown day count",
        lambda t: replace_once(t, FIXED_DAY_COUNT, 'day_count = "366" # early'),
        'day_count = "366"', "fixed.day_count", "unknown day count '366'",
    ),
    (
        "day count as a number",
        lambda t: replace_once(t, DEMAND_DAY_COUNT, "day_count = 360 # demand"),
        "day_count = 360 # demand", "demand.day_count", 'write it as a string: "360"',
    ),
    (
        "kind that cannot earn demand interest",
        lambda t: replace_once(t, '"class_iii", "savings"]', '"class_iii", "fixed_deposit"]'),
        "fixed_deposit", "demand.kinds", "'fixed_deposit' cannot earn the demand rate",
    ),
    (
        "settlement months not quarterly",
        lambda t: replace_once(t, "months = [3, 6, 9, 12]", "months = [3, 6, 9]"),
        "months = [3, 6, 9]", "settlement.months", "four months three apart",
    ),
    (
        "settlement day not in every month",
        lambda t: replace_once(t, "day = 20 ", "day = 31 "),
        "day = 31", "settlement.day", "1..28",
    ),
    (
        "minimum as a float",
        lambda t: replace_once(t, "minimum_minor = 5_000", "minimum_minor = 50.0"),
        "minimum_minor = 50.0", "fixed.minimum_minor", "integer number of fen",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "fragment", "key", "reason"),
    [pytest.param(*refusal[1:], id=refusal[0]) for refusal in REFUSALS],
)
def test_refusal_names_file_line_and_key(
    mutate: Callable[[str], str], fragment: str, key: str, reason: str
) -> None:
    """A bad catalog is refused with one problem naming the file, the line of the
    offending key and the key, and saying why."""
    text = mutate(TEXT)
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text, "bank/deposits.toml")
    error = caught.value
    assert len(error.catalog_problems) == 1, str(error)
    line = line_of(text, fragment)
    assert error.path == "bank/deposits.toml"
    assert error.line == line, str(error)
    assert reason in error.message, str(error)
    assert str(error).startswith(f"bank/deposits.toml:{line}: `{key}`: "), str(error)
    assert isinstance(error, RuleFileError)


def test_missing_table() -> None:
    """A misspelt table is both an unknown key and a missing table, each on its line
    (a missing table has no line of its own: line 1)."""
    text = replace_once(TEXT, "[settlement]", "[settlment]")
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text, "deposits.toml")
    problems = [(p.line, p.key, p.message) for p in caught.value.catalog_problems]
    assert problems == [
        (line_of(text, "[settlment]"), "settlment", "unknown key (did you mean `settlement`?)"),
        (1, "settlement", "missing required table [settlement] (keys: months, day)"),
    ]


def test_invalid_toml_names_the_line() -> None:
    """A syntax error is reported with tomllib's line."""
    text = replace_once(TEXT, 'kinds = ["class_i",', 'kinds = [["class_i",')
    with pytest.raises(CatalogError, match="invalid TOML") as caught:
        parse_catalog(text, "deposits.toml")
    assert caught.value.line > 0


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes in one file come back together, each with its own line."""
    text = replace_once(TEXT, NEW_SET_DEMAND, "demand = 0.05")
    text = replace_once(text, '"5y" = "1.55%"', '"5y" = "-1.55%"')
    text = replace_once(text, "day = 20 ", "day = 29 ")
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text, "deposits.toml")
    lines = sorted(problem.line for problem in caught.value.catalog_problems)
    assert lines == sorted(
        [line_of(text, "demand = 0.05"), line_of(text, "-1.55%"), line_of(text, "day = 29")]
    )
    assert len(str(caught.value).splitlines()) == 3


def test_load_catalog_names_the_real_path(tmp_path: Path) -> None:
    """Errors of a file on disk name that file; a missing file is refused too."""
    path = tmp_path / "deposits.toml"
    path.write_text(replace_once(TEXT, NEW_SET_DEMAND, "demand = 0.05"), encoding="utf-8")
    with pytest.raises(CatalogError, match=f"^{path}:"):
        load_catalog(path)
    with pytest.raises(CatalogError, match="cannot read the catalog file"):
        load_catalog(tmp_path / "absent.toml")


# --- Reloads -----------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """Replace the file the way operators are told to: a copy renamed over it."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


@pytest.fixture
def catalog_file(tmp_path: Path) -> CatalogFile:
    path = tmp_path / "deposits.toml"
    path.write_text(TEXT, encoding="utf-8")
    return CatalogFile(path)


def test_reload_adds_a_future_rate_set(catalog_file: CatalogFile) -> None:
    """A new rate set with a future date is picked up; the old ones stay in history."""
    assert catalog_file.reload_if_changed(day(2026, 12, 6)) is False  # unchanged
    write_atomically(Path(catalog_file.path), TEXT + FUTURE_SET)
    assert catalog_file.reload_if_changed(day(2026, 12, 6)) is True
    catalog = catalog_file.catalog
    assert len(catalog.history) == 3
    assert catalog.fixed_rate(Term.Y1, day(2026, 12, 31)) == 9_500
    assert catalog.fixed_rate(Term.Y1, day(2027, 1, 1)) == 9_000
    assert catalog_file.reload_if_changed(day(2026, 12, 6)) is False


def test_bad_file_keeps_the_running_catalog(catalog_file: CatalogFile) -> None:
    """A bad new version raises once with file and line, the running catalog stays, the
    same bad version is not reported again, and a fixed version is then taken."""
    running = catalog_file.catalog
    bad = replace_once(TEXT, NEW_SET_DEMAND, 'demand = "-0.05%"')
    write_atomically(Path(catalog_file.path), bad)
    where = re.escape(f":{line_of(bad, '-0.05%')}: `rates[1].demand`")
    with pytest.raises(CatalogError, match=where):
        catalog_file.reload_if_changed()
    assert catalog_file.catalog is running
    assert catalog_file.last_error is not None
    assert catalog_file.reload_if_changed() is False  # already reported
    assert catalog_file.catalog is running
    write_atomically(Path(catalog_file.path), TEXT + FUTURE_SET)
    assert catalog_file.reload_if_changed() is True
    assert catalog_file.last_error is None
    assert len(catalog_file.catalog.history) == 3


def test_missing_file_keeps_the_running_catalog(catalog_file: CatalogFile) -> None:
    """A file removed under the running bank is an error, not an empty catalog."""
    running = catalog_file.catalog
    os.unlink(catalog_file.path)
    with pytest.raises(CatalogError, match="cannot read the catalog file"):
        catalog_file.reload_if_changed()
    assert catalog_file.catalog is running


def test_reload_cannot_rewrite_history(catalog_file: CatalogFile) -> None:
    """Changing or removing a rate set already in force is refused (deposits and accruals
    used it); so is a new set that would take effect today or earlier."""
    running = catalog_file.catalog
    today = day(2026, 12, 6)
    changed = replace_once(TEXT, '"1y" = "0.95%"', '"1y" = "0.99%"')
    write_atomically(Path(catalog_file.path), changed)
    with pytest.raises(CatalogError, match="effective 2025-05-20 was changed") as caught:
        catalog_file.reload_if_changed(today)
    assert caught.value.line == line_of(changed, "effective = 2025-05-20") - 1  # its [[rates]]
    assert catalog_file.catalog is running

    removed = TEXT[: TEXT.index("# Large state-owned banks' board rates from 2025-05-20.")]
    write_atomically(Path(catalog_file.path), removed)
    with pytest.raises(CatalogError, match="effective 2025-05-20 was removed"):
        catalog_file.reload_if_changed(today)
    assert catalog_file.catalog is running

    backdated = TEXT + FUTURE_SET.replace("2027-01-01", "2026-12-06")
    write_atomically(Path(catalog_file.path), backdated)
    with pytest.raises(CatalogError, match="2026-12-06 is not after today"):
        catalog_file.reload_if_changed(today)
    assert catalog_file.catalog is running
    assert catalog_file.catalog.demand_rate(today) == 500


def test_reload_may_change_a_set_not_yet_in_force(catalog_file: CatalogFile) -> None:
    """A future rate set can still be corrected before its day."""
    write_atomically(Path(catalog_file.path), TEXT + FUTURE_SET)
    assert catalog_file.reload_if_changed(day(2026, 12, 6)) is True
    corrected = TEXT + FUTURE_SET.replace('"1y" = "0.90%"', '"1y" = "0.92%"')
    write_atomically(Path(catalog_file.path), corrected)
    assert catalog_file.reload_if_changed(day(2026, 12, 6)) is True
    assert catalog_file.catalog.fixed_rate(Term.Y1, day(2027, 1, 1)) == 9_200
    # Without today's day, every existing set is history: the same correction is refused.
    write_atomically(Path(catalog_file.path), TEXT + FUTURE_SET)
    with pytest.raises(CatalogError, match="effective 2027-01-01 was changed"):
        catalog_file.reload_if_changed()
    assert catalog_file.catalog.fixed_rate(Term.Y1, day(2027, 1, 1)) == 9_200


def test_reload_cannot_move_settlement_days(catalog_file: CatalogFile) -> None:
    """Periods already settled are numbered by the schedule: a reload may not change it."""
    running = catalog_file.catalog
    moved = replace_once(TEXT, "day = 20 ", "day = 21 ")
    write_atomically(Path(catalog_file.path), moved)
    with pytest.raises(CatalogError, match="settlement schedule changed") as caught:
        catalog_file.reload_if_changed(day(2026, 12, 6))
    assert caught.value.line == line_of(moved, "[settlement]")
    assert catalog_file.catalog is running
