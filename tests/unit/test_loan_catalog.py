"""The loan product catalog (limits/loans.py): the shipped products and their resolved
rates, versions in force by effective date, the published JSON, every refusal of a bad
file (naming the source, the line and the key, all at once), and the successor rule
that keeps published versions immutable and new ones in the future."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from limits.calendar import day_of_date
from limits.errors import RuleFileError
from limits.filecheck import CatalogError
from limits.loans import (
    ALLOCATION_DEFAULT,
    METHODS,
    LoanCatalog,
    LoanCatalogError,
    LoanProductNotInForceError,
    check_loan_successor,
    load_loan_catalog,
    parse_loan_catalog,
)
from limits.lpr import load_lpr
from tests.repo_paths import REPO_ROOT

SHIPPED = REPO_ROOT / "core" / "data" / "loans.toml"
SOURCE = "bank/loans.toml"

# One product entry, a key a line, in the order of `KEYS`; `entry()` edits it.
KEYS = (
    "id",
    "version",
    "effective",
    "name",
    "kind",
    "methods",
    "rate",
    "term_months",
    "amount",
    "repayment_day",
    "grace_days",
    "penalty_uplift",
    "fees",
    "prepayment",
    "allocation",
)
VALUES = {
    "id": '"T-loan"',
    "version": "1",
    "effective": "2025-06-01",
    "name": '"Test loan"',
    "kind": '"personal"',
    "methods": '["equal_instalment", "equal_principal"]',
    "rate": '{ fixed = "3.45%" }',
    "term_months": "{ min = 6, max = 60 }",
    "amount": '{ min = "1000.00", max = "300000.00" }',
    "repayment_day": "20",
    "grace_days": "3",
    "penalty_uplift": '"50%"',
    "fees": '{ upfront = "0.00%", monthly = "0.00%" }',
    "prepayment": '{ allowed = true, after_months = 0, fee = "0.00%", excess = "refuse", '
    'mode = "reduce_instalment" }',
    "allocation": '["penalty", "interest", "principal"]',
}
# In `catalog(entry(...))`: line 1 the version, line 3 the [[products]] header, then KEYS.
LINE = {key: 4 + index for index, key in enumerate(KEYS)}


def entry(**values: str | None) -> str:
    """A [[products]] entry: VALUES with `values` replacing them (None drops the key)."""
    merged = {**VALUES, **values}
    lines = [f"{key} = {merged[key]}" for key in KEYS if merged[key] is not None]
    lines += [f"{key} = {value}" for key, value in values.items() if key not in KEYS]
    return "[[products]]\n" + "\n".join(lines) + "\n"


def catalog(*entries: str, version: int = 1) -> str:
    return f"version = {version}\n\n" + "\n".join(entries)


def day(year: int, month: int, day_of_month: int) -> int:
    return day_of_date(year, month, day_of_month)


def refused(text: str) -> LoanCatalogError:
    with pytest.raises(LoanCatalogError) as caught:
        parse_loan_catalog(text, SOURCE)
    return caught.value


# --- The shipped catalog ----------------------------------------------------------------


def test_examples_copy_is_the_shipped_file() -> None:
    """examples/loans.toml is byte for byte the packaged default."""
    assert (REPO_ROOT / "examples" / "loans.toml").read_bytes() == SHIPPED.read_bytes()


def test_shipped_catalog_has_the_three_products() -> None:
    """G-P-loan, G-B-loan and G-T-loan, version 1 each from 2025-06-01, with the ranges,
    rates and fees of the brief, parsed to fen and ppm."""
    loans = load_loan_catalog(SHIPPED)
    assert loans.version == 1
    assert loans.digest == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert loans.product_ids == ("G-P-loan", "G-B-loan", "G-T-loan")
    personal, business, mortgage = loans.products
    assert {product.version for product in loans.products} == {1}
    assert {product.effective_day for product in loans.products} == {day(2025, 6, 1)}
    assert (personal.kind, business.kind, mortgage.kind) == ("personal", "business", "real_estate")
    assert (personal.lpr_term, personal.spread_bp, personal.fixed_rate) == ("1y", 45, None)
    assert (business.lpr_term, business.spread_bp) == ("1y", 80)
    assert (mortgage.lpr_term, mortgage.spread_bp) == ("5y", -30)
    assert (personal.term_min, personal.term_max) == (6, 60)
    assert (business.term_min, business.term_max) == (12, 120)
    assert (mortgage.term_min, mortgage.term_max) == (60, 360)
    assert (personal.amount_min_minor, personal.amount_max_minor) == (100_000, 30_000_000)
    assert (business.amount_min_minor, business.amount_max_minor) == (1_000_000, 500_000_000)
    assert (mortgage.amount_min_minor, mortgage.amount_max_minor) == (10_000_000, 1_000_000_000)
    assert business.upfront_fee_ppm == 5_000 and personal.upfront_fee_ppm == 0
    assert mortgage.methods == ("equal_instalment", "equal_principal")
    assert mortgage.repayment_day is None and personal.repayment_day == 20
    assert all(product.allocation == ALLOCATION_DEFAULT for product in loans.products)


def test_shipped_rates_resolve_against_the_shipped_lpr() -> None:
    """With the 1-year LPR at 3.00% and the over-5-year at 3.50% (since 2025-05-20):
    G-P 3.45%, G-B 3.80%, G-T 3.20% (5y - 30 bp stays >= 0); a fixed rate is itself."""
    lpr = load_lpr(REPO_ROOT / "core" / "data" / "lpr.toml")
    loans = load_loan_catalog(SHIPPED)
    today = day(2026, 12, 6)
    rates = [product.contract_rate(lpr, today) for product in loans.published(today)]
    assert rates == [34_500, 38_000, 32_000]
    fixed = parse_loan_catalog(catalog(entry()), SOURCE).products[0]
    assert fixed.contract_rate(lpr, today) == 34_500


def test_methods_are_the_ledger_methods() -> None:
    """The method names the file accepts are exactly `ledger.loans.Method`'s values
    (limits cannot import ledger, so the names are written twice)."""
    from ledger.loans import Method

    assert set(METHODS) == {method.value for method in Method}


# --- Versions in force ------------------------------------------------------------------

TWO_VERSIONS = catalog(
    entry(),
    entry(version="2", effective="2027-01-01", rate='{ fixed = "3.95%" }'),
    entry(id='"U-loan"', effective="2027-03-01", kind='"business"'),
)


def test_in_force_picks_the_newest_version_effective_on_the_day() -> None:
    """Version 1 until the day before version 2's effective date, version 2 from it;
    a product whose first version is later is not in force, an unknown id neither
    (both LookupErrors naming the product)."""
    loans = parse_loan_catalog(TWO_VERSIONS, SOURCE)
    assert loans.in_force("T-loan", day(2025, 6, 1)).version == 1
    assert loans.in_force("T-loan", day(2026, 12, 31)).version == 1
    assert loans.in_force("T-loan", day(2027, 1, 1)).fixed_rate == 39_500
    assert loans.in_force("T-loan", day(2030, 1, 1)).version == 2
    with pytest.raises(
        LoanProductNotInForceError, match="first version takes effect on 2025-06-01"
    ):
        loans.in_force("T-loan", day(2025, 5, 31))
    with pytest.raises(LookupError, match="'U-loan' is not in force on 2027-02-28"):
        loans.in_force("U-loan", day(2027, 2, 28))
    with pytest.raises(LookupError, match="no loan product 'G-X-loan' in the catalog"):
        loans.in_force("G-X-loan", day(2027, 2, 28))
    assert [product.version for product in loans.versions("T-loan")] == [1, 2]
    assert loans.versions("G-X-loan") == ()


def test_published_and_to_json_split_in_force_from_upcoming() -> None:
    """`products` lists each product's version in force (file order), `upcoming` every
    version taking effect later, soonest first; rates and fees as text and ppm."""
    loans = parse_loan_catalog(TWO_VERSIONS, SOURCE)
    document = json.loads(json.dumps(loans.to_json(day(2026, 12, 6))))
    assert document["version"] == 1
    assert document["digest"] == hashlib.sha256(TWO_VERSIONS.encode()).hexdigest()
    assert [(p["id"], p["version"]) for p in document["products"]] == [("T-loan", 1)]
    assert [(p["id"], p["version"], p["effective"]) for p in document["upcoming"]] == [
        ("T-loan", 2, "2027-01-01"),
        ("U-loan", 1, "2027-03-01"),
    ]
    assert document["products"][0] == {
        "id": "T-loan",
        "version": 1,
        "effective": "2025-06-01",
        "name": "Test loan",
        "kind": "personal",
        "methods": ["equal_instalment", "equal_principal"],
        "rate": {"fixed": "3.45%", "fixed_ppm": 34_500},
        "term_months": {"min": 6, "max": 60},
        "amount": {"min_minor": 100_000, "max_minor": 30_000_000},
        "repayment_day": 20,
        "grace_days": 3,
        "penalty_uplift": "50.00%",
        "penalty_uplift_permille": 500,
        "fees": {"upfront": "0.00%", "upfront_ppm": 0, "monthly": "0.00%", "monthly_ppm": 0},
        "prepayment": {
            "allowed": True,
            "after_months": 0,
            "fee": "0.00%",
            "fee_ppm": 0,
            "excess": "refuse",
            "mode": "reduce_instalment",
        },
        "allocation": ["penalty", "interest", "principal"],
    }
    later = parse_loan_catalog(TWO_VERSIONS, SOURCE).to_json(day(2027, 3, 1))
    assert [(p["id"], p["version"]) for p in later["products"]] == [("T-loan", 2), ("U-loan", 1)]
    assert later["upcoming"] == []


def test_optional_keys_take_their_defaults() -> None:
    """Without `fees` and `allocation`: no fees, and penalty, interest, principal (Civil
    Code art. 561); an LPR rate and "disbursement" as the repayment day are read too."""
    text = catalog(
        entry(
            fees=None,
            allocation=None,
            rate='{ lpr = "5y", spread_bp = -350 }',
            repayment_day='"disbursement"',
        )
    )
    product = parse_loan_catalog(text, SOURCE).products[0]
    assert (product.upfront_fee_ppm, product.monthly_fee_ppm) == (0, 0)
    assert product.allocation == ("penalty", "interest", "principal")
    assert (product.lpr_term, product.spread_bp, product.fixed_rate) == ("5y", -350, None)
    assert product.repayment_day is None
    assert product.to_json()["repayment_day"] == "disbursement"
    assert product.to_json()["rate"] == {"lpr": "5y", "spread_bp": -350}
    partial = catalog(
        entry(fees='{ monthly = "0.10%" }', allocation='["interest", "principal", "penalty"]')
    )
    product = parse_loan_catalog(partial, SOURCE).products[0]
    assert (product.upfront_fee_ppm, product.monthly_fee_ppm) == (0, 1_000)
    assert product.allocation == ("interest", "principal", "penalty")


# --- Refusals ---------------------------------------------------------------------------

P = "products[0]"
CASES = [
    # (edit of the entry, dotted key, line, a fragment of the message)
    ({"grace_day": "3"}, f"{P}.grace_day", 19, "unknown key (did you mean `grace_days`?)"),
    ({"name": None}, f"{P}.name", 3, "missing required key (the name customers see"),
    ({"name": '"   "'}, f"{P}.name", LINE["name"], "not blank), got a string ('   ')"),
    ({"id": '"G P loan"'}, f"{P}.id", LINE["id"], "1..32 of A-Z, a-z, 0-9 and -"),
    ({"id": '"' + "X" * 33 + '"'}, f"{P}.id", LINE["id"], "1..32 of A-Z"),
    (
        {"version": "0"},
        f"{P}.version",
        LINE["version"],
        "an integer 1..2147483647, got an integer (0)",
    ),
    (
        {"effective": '"2025-06-01"'},
        f"{P}.effective",
        LINE["effective"],
        "expected a TOML date such as 2025-05-20 (not quoted), got a string",
    ),
    (
        {"kind": '"mortgage"'},
        f"{P}.kind",
        LINE["kind"],
        "unknown kind 'mortgage' (expected one of: personal, business, real_estate)",
    ),
    (
        {"methods": '["equal_instalment", "bullet"]'},
        f"{P}.methods",
        LINE["methods"],
        "unknown method 'bullet' (expected one of: equal_instalment, equal_principal)",
    ),
    (
        {"methods": '["equal_principal", "equal_principal"]'},
        f"{P}.methods",
        LINE["methods"],
        "method 'equal_principal' is listed twice",
    ),
    (
        {"methods": "[]"},
        f"{P}.methods",
        LINE["methods"],
        "expected a list of the repayment "
        "methods offered (equal_instalment, equal_principal), got an array",
    ),
    (
        {"rate": "{ fixed = 4.35 }"},
        f"{P}.rate.fixed",
        LINE["rate"],
        'a rate is an exact percentage string such as "0.05%", got a float (4.35)',
    ),
    ({"rate": "{ fixed = 4 }"}, f"{P}.rate.fixed", LINE["rate"], "got an integer (4)"),
    ({"rate": '{ fixed = "-1%" }'}, f"{P}.rate.fixed", LINE["rate"], "is negative"),
    (
        {"rate": '{ fixed = "4.35%", lpr = "1y", spread_bp = 10 }'},
        f"{P}.rate",
        LINE["rate"],
        "give `fixed`, or `lpr` and `spread_bp`, not both",
    ),
    (
        {"rate": '{ lpr = "3y", spread_bp = 10 }'},
        f"{P}.rate.lpr",
        LINE["rate"],
        "unknown LPR tenor '3y' (expected one of: 1y, 5y)",
    ),
    (
        {"rate": '{ lpr = "1y" }'},
        f"{P}.rate.spread_bp",
        LINE["rate"],
        "missing required key (basis points over the LPR",
    ),
    (
        {"rate": '{ lpr = "1y", spread_bp = 0.45 }'},
        f"{P}.rate.spread_bp",
        LINE["rate"],
        "an integer -10000..10000, got a float (0.45)",
    ),
    (
        {"rate": "{ }"},
        f"{P}.rate",
        LINE["rate"],
        'expected a table { lpr = "1y", spread_bp = '
        '45 } or { fixed = "4.35%" }, got an empty table',
    ),
    ({"rate": '{ fixd = "4.35%" }'}, f"{P}.rate.fixd", LINE["rate"], "did you mean `fixed`?"),
    (
        {"term_months": "{ min = 60, max = 6 }"},
        f"{P}.term_months.min",
        LINE["term_months"],
        "the minimum 60 is above the maximum 6",
    ),
    (
        {"term_months": "{ min = 0, max = 6 }"},
        f"{P}.term_months.min",
        LINE["term_months"],
        "expected a number of months 1..360, got an integer (0)",
    ),
    (
        {"term_months": "{ min = 6, max = 361 }"},
        f"{P}.term_months.max",
        LINE["term_months"],
        "1..360, got an integer (361)",
    ),
    (
        {"term_months": "{ min = 6 }"},
        f"{P}.term_months.max",
        LINE["term_months"],
        "missing required key (the maximum)",
    ),
    (
        {"amount": '{ min = 1000.0, max = "300000.00" }'},
        f"{P}.amount.min",
        LINE["amount"],
        'got a float (1000.0) (a float cannot hold money exactly: write "1000.00")',
    ),
    (
        {"amount": '{ min = 1000, max = "300000.00" }'},
        f"{P}.amount.min",
        LINE["amount"],
        'got an integer (1000) (write CNY as a string such as "1000.00")',
    ),
    (
        {"amount": '{ min = "1000.001", max = "300000.00" }'},
        f"{P}.amount.min",
        LINE["amount"],
        "'1000.001' is not an amount in CNY such as \"1000.00\"",
    ),
    (
        {"amount": '{ min = "-5.00", max = "300000.00" }'},
        f"{P}.amount.min",
        LINE["amount"],
        "no sign",
    ),
    (
        {"amount": '{ min = "0.00", max = "300000.00" }'},
        f"{P}.amount.min",
        LINE["amount"],
        "'0.00' is out of range 0.01..10000000000.00 CNY",
    ),
    (
        {"amount": '{ min = "300000.01", max = "300000.00" }'},
        f"{P}.amount.min",
        LINE["amount"],
        "the minimum '300000.01' is above the maximum '300000.00'",
    ),
    (
        {"repayment_day": "29"},
        f"{P}.repayment_day",
        LINE["repayment_day"],
        'day of the month instalments fall due, 1..28, or "disbursement"',
    ),
    (
        {"repayment_day": '"first"'},
        f"{P}.repayment_day",
        LINE["repayment_day"],
        "got a string ('first')",
    ),
    (
        {"grace_days": "31"},
        f"{P}.grace_days",
        LINE["grace_days"],
        "an integer 0..30, got an integer (31)",
    ),
    ({"grace_days": "true"}, f"{P}.grace_days", LINE["grace_days"], "got a boolean (true)"),
    (
        {"penalty_uplift": '"20%"'},
        f"{P}.penalty_uplift",
        LINE["penalty_uplift"],
        "'20%' is outside 30.00%..50.00%: the PBoC sets the penalty rate",
    ),
    (
        {"penalty_uplift": '"60%"'},
        f"{P}.penalty_uplift",
        LINE["penalty_uplift"],
        "outside 30.00%..50.00%",
    ),
    (
        {"penalty_uplift": '"35.05%"'},
        f"{P}.penalty_uplift",
        LINE["penalty_uplift"],
        "finer than 0.1%",
    ),
    (
        {"penalty_uplift": "0.5"},
        f"{P}.penalty_uplift",
        LINE["penalty_uplift"],
        "got a float (0.5)",
    ),
    (
        {"fees": '{ upfront = "100%" }'},
        f"{P}.fees.upfront",
        LINE["fees"],
        "an upfront fee below 100% of the principal",
    ),
    (
        {"fees": '{ upfront = "0.5%", yearly = "1%" }'},
        f"{P}.fees.yearly",
        LINE["fees"],
        "unknown key",
    ),
    ({"fees": '"0.5%"'}, f"{P}.fees", LINE["fees"], "got a string ('0.5%')"),
    (
        {"prepayment": '{ allowed = true, after_months = 0, fee = "0.00%", excess = "refuse" }'},
        f"{P}.prepayment.mode",
        LINE["prepayment"],
        "missing required key (one of: reduce_instalment, reduce_term)",
    ),
    (
        {
            "prepayment": '{ allowed = "yes", after_months = 0, fee = "0.00%", excess = "refuse", '
            'mode = "reduce_term" }'
        },
        f"{P}.prepayment.allowed",
        LINE["prepayment"],
        "expected true or false, got a string ('yes')",
    ),
    (
        {
            "prepayment": '{ allowed = true, after_months = 0, fee = "0.00%", excess = "keep", '
            'mode = "reduce_term" }'
        },
        f"{P}.prepayment.excess",
        LINE["prepayment"],
        "unknown excess 'keep' (expected one of: refuse, full)",
    ),
    (
        {
            "prepayment": '{ allowed = true, after_months = 0, fee = "0.00%", excess = "full", '
            'mode = "shorter" }'
        },
        f"{P}.prepayment.mode",
        LINE["prepayment"],
        "unknown mode 'shorter' (expected one of: reduce_instalment, reduce_term)",
    ),
    (
        {
            "prepayment": '{ allowed = true, after_months = -1, fee = "0.00%", excess = "full", '
            'mode = "reduce_term" }'
        },
        f"{P}.prepayment.after_months",
        LINE["prepayment"],
        "an integer 0..360, got an integer (-1)",
    ),
    (
        {"allocation": '["interest", "principal"]'},
        f"{P}.allocation",
        LINE["allocation"],
        "missing penalty: the order names each of penalty, interest, principal once",
    ),
    (
        {"allocation": '["penalty", "costs", "principal"]'},
        f"{P}.allocation",
        LINE["allocation"],
        "unknown allocation name 'costs'",
    ),
    (
        {"allocation": '["penalty", "penalty", "interest", "principal"]'},
        f"{P}.allocation",
        LINE["allocation"],
        "allocation name 'penalty' is listed twice",
    ),
]


@pytest.mark.parametrize(("edit", "key", "line", "fragment"), CASES)
def test_refusal_names_source_line_and_key(
    edit: dict[str, str | None], key: str, line: int, fragment: str
) -> None:
    """Each bad value is refused with the file, the line of its key, the dotted key and
    why; the error is the one problem (nothing else about the entry is reported)."""
    error = refused(catalog(entry(**edit)))
    assert len(error.catalog_problems) == 1, error.problems
    problem = error.catalog_problems[0]
    assert (problem.path, problem.line, problem.key) == (SOURCE, line, key), problem
    assert fragment in problem.message, problem.message
    assert str(error).startswith(f"{SOURCE}:{line}: `{key}`: ")


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        (catalog(entry(), version=0), 1, "version", "expected an integer 1..2147483647"),
        (
            "[[products]]\n" + entry()[13:],
            1,
            "version",
            "missing required key (the catalog's version",
        ),
        ("version = 1\n", 1, "products", "missing required products ([[products]] with id"),
        ("version = 1\nproducts = []\n", 2, "products", "no product: at least one"),
        (
            "version = 1\nproducts = 3\n",
            2,
            "products",
            "expected products ([[products]]), got an integer (3)",
        ),
        (catalog(entry()) + "owner = 1\n", 19, "products[0].owner", "unknown key"),
        ("version = 1\nproduct = 1\n" + entry(), 2, "product", "did you mean `products`?"),
    ],
)
def test_refusals_of_the_file(text: str, line: int, key: str, fragment: str) -> None:
    """The file's own keys: its version, the products array, unknown top-level keys."""
    problems = refused(text).catalog_problems
    assert [(problem.line, problem.key) for problem in problems] == [(line, key)], problems
    assert fragment in problems[0].message, problems[0].message


def test_same_instance_twice_is_refused() -> None:
    """Two entries with the same (id, version): the second is refused, naming the first's
    line."""
    error = refused(catalog(entry(), entry(effective="2026-01-01")))
    assert [(p.line, p.key) for p in error.catalog_problems] == [(22, "products[1].version")]
    assert "T-loan version 1 is listed twice (also at line 3)" in error.message


def test_versions_must_take_effect_in_order() -> None:
    """A higher version effective on or before a lower one's day is refused at its
    `effective`, wherever it sits in the file."""
    error = refused(catalog(entry(version="2", effective="2025-06-01"), entry()))
    assert [(p.line, p.key) for p in error.catalog_problems] == [(6, "products[0].effective")]
    assert error.message == (
        "T-loan version 2 takes effect 2025-06-01, not after version 1 (2025-06-01, line 20): "
        "each new version of a product takes effect after the one before it"
    )
    later_first = catalog(entry(version="2", effective="2025-01-01"), entry())
    assert "version 2 takes effect 2025-01-01" in refused(later_first).message
    parse_loan_catalog(catalog(entry(version="2", effective="2025-06-02"), entry()), SOURCE)


def test_every_problem_is_reported_at_once() -> None:
    """Problems in several entries and keys come together, in file order, each with its
    line; the error is a CatalogError and a RuleFileError (the approvals service reports
    it as PARAMETER_INVALID) with (line, message) pairs."""
    text = catalog(
        entry(kind='"car"', grace_days="99"),
        entry(id='"U-loan"', rate="{ fixed = 3.5 }", amount='{ min = "5.00", max = "1.00" }'),
    )
    error = refused(text)
    assert isinstance(error, CatalogError) and isinstance(error, RuleFileError)
    assert [(p.line, p.key) for p in error.catalog_problems] == [
        (LINE["kind"], "products[0].kind"),
        (LINE["grace_days"], "products[0].grace_days"),
        (17 + LINE["rate"], "products[1].rate.fixed"),
        (17 + LINE["amount"], "products[1].amount.min"),
    ]
    assert error.errors[0] == (
        LINE["kind"],
        "`products[0].kind`: unknown kind 'car' (expected one of: personal, business, real_estate)",
    )
    assert error.source == SOURCE and len(error.problems) == 4


def test_invalid_toml_and_unreadable_files(tmp_path: Path) -> None:
    """A TOML syntax error names its line; a missing file, a directory and bytes that are
    not UTF-8 are refused as the file's problem (line 0)."""
    error = refused('version = 1\n[[products]]\nid = "T-loan\n')
    assert error.line == 3 and error.message.startswith("invalid TOML: ")
    with pytest.raises(LoanCatalogError):
        load_loan_catalog(tmp_path / "missing.toml")
    with pytest.raises(LoanCatalogError, match="cannot read the loan catalog file"):
        load_loan_catalog(tmp_path)
    bad = tmp_path / "loans.toml"
    bad.write_bytes(b"version = 1\n# \xff\n")
    with pytest.raises(LoanCatalogError, match=r"not valid UTF-8 \(byte offset 14\)"):
        load_loan_catalog(bad)


# --- The successor rule (an approved change) --------------------------------------------

TODAY = day(2026, 12, 6)
CURRENT = catalog(entry(), entry(id='"U-loan"', kind='"business"'))


def current() -> LoanCatalog:
    return parse_loan_catalog(CURRENT, "in force")


def successor_problems(text: str) -> list[tuple[int, str, str]]:
    new = parse_loan_catalog(text, "approval A1")
    with pytest.raises(LoanCatalogError) as caught:
        check_loan_successor(current(), new, TODAY)
    return [(p.line, p.key, p.message) for p in caught.value.catalog_problems]


def test_successor_adds_versions_and_products_from_tomorrow() -> None:
    """A higher file version keeping every published instance may add a new version
    and a new product, both effective tomorrow or later."""
    new = catalog(
        entry(),
        entry(id='"U-loan"', kind='"business"'),
        entry(version="2", effective="2026-12-07", rate='{ fixed = "3.95%" }'),
        entry(id='"V-loan"', effective="2027-01-01"),
        version=2,
    )
    check_loan_successor(current(), parse_loan_catalog(new, "approval A1"), TODAY)


def test_successor_must_increase_the_version() -> None:
    """The same catalog under the same version number is refused at `version`."""
    assert successor_problems(CURRENT) == [
        (
            1,
            "version",
            "1 does not increase the version in force (1): every change is a new, higher version",
        ),
    ]


def test_published_version_is_immutable() -> None:
    """Changing anything of a published instance is refused at the first differing key,
    naming the product, the key and both values."""
    changed = catalog(
        entry(term_months="{ min = 6, max = 72 }", grace_days="5"),
        entry(id='"U-loan"', kind='"business"', fees='{ upfront = "0.50%" }'),
        version=2,
    )
    assert successor_problems(changed) == [
        (
            LINE["term_months"],
            "products[0].term_months.max",
            "T-loan version 1 is published and "
            "cannot change (`term_months.max` was 60 -> now 72): publish the change as a new "
            "version",
        ),
        (
            17 + LINE["fees"],
            "products[1].fees.upfront",
            "U-loan version 1 is published and "
            'cannot change (`fees.upfront` was "0.00%" -> now "0.50%"): publish the change as a '
            "new version",
        ),
    ]
    floating = catalog(
        entry(rate='{ lpr = "1y", spread_bp = 45 }'),
        entry(id='"U-loan"', kind='"business"'),
        version=2,
    )
    assert successor_problems(floating)[0][1:] == (
        "products[0].rate.lpr",
        'T-loan version 1 is published and cannot change (`rate.lpr` was absent -> now "1y"): '
        "publish the change as a new version",
    )
    reformatted = catalog(
        entry(rate='{ fixed = "3.450%" }', fees=None),
        entry(id='"U-loan"', kind='"business"'),
        version=2,
    )
    check_loan_successor(current(), parse_loan_catalog(reformatted, "approval A1"), TODAY)


def test_published_versions_and_products_cannot_be_removed() -> None:
    """Dropping a published version or a whole product is refused, at the product's
    remaining entry (or line 1 when none is left)."""
    dropped_product = catalog(entry(), version=2)
    assert successor_problems(dropped_product) == [
        (
            1,
            "products",
            "U-loan version 1 was removed; published versions stay in the "
            "catalog (loans were priced with them)",
        ),
    ]
    renumbered = catalog(entry(version="2"), entry(id='"U-loan"', kind='"business"'), version=2)
    assert successor_problems(renumbered) == [
        (
            3,
            "products",
            "T-loan version 1 was removed; published versions stay in the catalog "
            "(loans were priced with them)",
        ),
        (
            LINE["effective"],
            "products[0].effective",
            "T-loan version 2 takes effect 2025-06-01, "
            "before today (2026-12-06): a new version takes effect from today at the "
            "earliest (no retroactive product)",
        ),
    ]


def test_new_version_effective_before_today_is_refused_and_today_passes() -> None:
    """A new version or product effective before today would reprice retroactively:
    refused at its `effective`. One effective today passes, so a change approved to
    apply on its effective date passes the same check when it is applied that day."""
    yesterday = catalog(CURRENT[13:], entry(version="2", effective="2026-12-05"), version=2)
    assert successor_problems(yesterday) == [
        (
            34 + LINE["effective"],
            "products[2].effective",
            "T-loan version 2 takes effect "
            "2026-12-05, before today (2026-12-06): a new version takes effect from today "
            "at the earliest (no retroactive product)",
        ),
    ]
    today = catalog(CURRENT[13:], entry(version="2", effective="2026-12-06"), version=2)
    check_loan_successor(current(), parse_loan_catalog(today, "approval A1"), TODAY)


# --- The loan book's bounds: one loan's size and the product's exposure -------------------


def test_loan_size_bound_is_the_ledger_rows() -> None:
    """The catalog's bound on one loan is the loan row's (ledger.loan_book: arrears in u32
    fen), the same number in both layers (limits does not import the ledger)."""
    from ledger.loan_book import LOAN_PRINCIPAL_MAX_MINOR as LEDGER_BOUND
    from limits.loans import LOAN_PRINCIPAL_MAX_MINOR

    assert LOAN_PRINCIPAL_MAX_MINOR == LEDGER_BOUND == 0xFFFFFFFF


def test_amount_max_above_the_row_bound_is_refused() -> None:
    """A product lending more than 42,949,672.95 CNY is refused at `amount.max`, naming the
    bound; exactly the bound is accepted."""
    error = refused(catalog(entry(amount='{ min = "1000.00", max = "42949672.96" }')))
    assert [(p.line, p.key) for p in error.catalog_problems] == [
        (LINE["amount"], "products[0].amount.max")
    ]
    assert "at most 42949672.95 CNY" in error.catalog_problems[0].message
    text = catalog(entry(amount='{ min = "1000.00", max = "42949672.95" }'))
    assert parse_loan_catalog(text, SOURCE).products[0].amount_max_minor == 0xFFFFFFFF


def test_exposure_max_is_optional_and_kept_out_of_the_json() -> None:
    """`exposure_max` (CNY) caps the product's outstanding loans: absent, no cap (None);
    present, in fen; a bad value is refused at its key. It is the bank's risk appetite,
    not a product term: the published JSON leaves it out. Like every key, it is part of
    the published instance (a change is a new version)."""
    assert parse_loan_catalog(catalog(entry()), SOURCE).products[0].exposure_max_minor is None
    capped = catalog(entry(exposure_max='"50000000.00"'))
    product = parse_loan_catalog(capped, SOURCE).products[0]
    assert product.exposure_max_minor == 5_000_000_000
    assert "exposure_max" not in json.dumps(product.to_json())
    error = refused(catalog(entry(exposure_max="50000000")))
    assert [p.key for p in error.catalog_problems] == ["products[0].exposure_max"]
    assert "write CNY as a string" in error.catalog_problems[0].message
    changed = catalog(entry(exposure_max='"60000000.00"'), version=2)
    with pytest.raises(LoanCatalogError) as caught:
        check_loan_successor(
            parse_loan_catalog(capped, SOURCE), parse_loan_catalog(changed, SOURCE), TODAY
        )
    assert '`exposure_max` was "50000000.00" -> now "60000000.00"' in str(caught.value)
