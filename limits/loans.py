"""The loan product catalog: versioned product instances, one catalog for every channel.

A catalog file is TOML (`core/data/loans.toml`, a copy in `examples/`). Each
`[[products]]` entry is one published instance of a product, `(id, version)`, in force
from its `effective` date until the product's next version takes effect:

    version = 1                          # the file's version: increases with every change
    [[products]]
    id = "G-P-loan"                      # 1..32 of A-Z, a-z, 0-9 and -
    version = 1                          # the instance's version (1, 2, ...)
    effective = 2025-06-01               # a TOML date: in force from this day
    name = "Personal consumer loan"
    kind = "personal"                    # personal | business | real_estate
    methods = ["equal_instalment", "equal_principal"]
    rate = { lpr = "1y", spread_bp = 45 }          # or { fixed = "4.35%" }
    term_months = { min = 6, max = 60 }            # 1..360
    amount = { min = "1000.00", max = "300000.00" }   # CNY, exact decimal strings
    repayment_day = 20                   # 1..28, or "disbursement" (the start's day)
    grace_days = 3                       # 0..30 days without penalty after a due day
    penalty_uplift = "50%"               # 30%..50% above the contract rate (PBoC)
    fees = { upfront = "0.00%", monthly = "0.00%" }   # of the principal; optional (0)
    prepayment = { allowed = true, after_months = 0, fee = "0.00%", excess = "refuse",
                   mode = "reduce_instalment" }    # (one line in the file)
    allocation = ["penalty", "interest", "principal"]   # optional: this order
    exposure_max = "50000000.00"         # optional: the most the bank lends on the product

Validated strictly and completely before anything uses it, like the other parameter
files (`limits.filecheck`): every key required except `fees` (and either of its keys),
`allocation` and `exposure_max`, unknown keys refused, rates and fees only as exact
percentage strings (`limits.rates`: ppm of 1 a year, "3.45%" -> 34_500), money only as
CNY decimal strings with at most two decimals (parsed to fen without a float), every
range checked (a minimum above its maximum refused; an amount maximum above
`LOAN_PRINCIPAL_MAX_MINOR`, 42,949,672.95 CNY, refused: a loan's row in the ledger holds
its arrears in u32 fen), two entries with the same (id, version) refused, and the
versions of one product taking effect in the order of their numbers. Every
problem is reported at once, naming the file, the line and the key
(`LoanCatalogError`, a `CatalogError`: the approvals service reports it as
PARAMETER_INVALID with each line).

A floating rate is the LPR of the product's tenor in force on the day plus the spread
(`LoanProduct.contract_rate`); whether that is negative depends on the LPR of the day,
so the loan service checks it, not this file.

`exposure_max` caps the bank's exposure to the product: the outstanding principal of
all of its loans (and of the applications approved and not yet disbursed) plus a new
one; the loan service refuses an application above it (LOAN_EXPOSURE_EXCEEDED). Omitted:
no cap. It is the bank's risk appetite, not a term of the product: the published JSON
(`LoanProduct.to_json`) does not show it.

Publishing is an approved change of the whole file (approval kind `loans`, maker-checker,
applied at once or at an `apply_at` up to the new version's effective date, which takes
it live): a published instance is immutable, a change is a new version with a later
effective date, and nothing is removed or dated in the past (`check_loan_successor`), so
a loan priced under version 1 still finds version 1, and every channel quotes from the
same published instance.

Method, kind and allocation names are strings here: `limits` sits below `ledger`,
whose `ledger.loans.Method` spells the same methods (a test keeps them equal).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .calendar import DAY_COUNT
from .filecheck import (
    VERSION_MAX,
    KeyLines,
    ParameterFileError,
    Problems,
    check_keys,
    date_text,
    describe,
    is_integer,
    parse_date,
    parse_rate_value,
    parse_version,
    required,
    toml_document,
)
from .lpr import LprTable, LprTerm
from .rates import RATE_SCALE, format_rate
from .watched import read_stable

KINDS: Final = ("personal", "business", "real_estate")
METHODS: Final = ("equal_instalment", "equal_principal")  # ledger.loans.Method's values
ALLOCATION_DEFAULT: Final = ("penalty", "interest", "principal")  # Civil Code art. 561
EXCESS_CHOICES: Final = ("refuse", "full")  # an overpayment refused, or full prepayment
PREPAYMENT_MODES: Final = ("reduce_instalment", "reduce_term")
REPAYMENT_DAY_DISBURSEMENT: Final = "disbursement"

PRODUCT_VERSIONS_MAX: Final = 1_024  # entries in one file: every version ever published
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9-]{1,32}")
NAME_LENGTH_MAX: Final = 80
TERM_MONTHS_MAX: Final = 360  # 30 years: the longest mortgage, and ledger.loans' bound
AMOUNT_MINOR_MAX: Final = 10**12  # 10,000,000,000.00 CNY: an exposure cap's bound
# The most one loan lends: its row's arrears fields are u32 fen
# (ledger.loan_book.LOAN_PRINCIPAL_MAX_MINOR, the same number; a test keeps them equal).
LOAN_PRINCIPAL_MAX_MINOR: Final = 0xFFFFFFFF  # 42,949,672.95 CNY
SPREAD_BP_MAX: Final = 10_000  # +-100% a year; the service refuses a negative rate
BP_PPM: Final = 100  # one basis point is 0.01% = 100 ppm
REPAYMENT_DAY_MAX: Final = 28  # every month has it
GRACE_DAYS_MAX: Final = 30
PENALTY_UPLIFT_PERMILLE_MIN: Final = 300  # PBoC: the penalty rate is the contract rate
PENALTY_UPLIFT_PERMILLE_MAX: Final = 500  # plus 30% to 50% of it
PERMILLE_PPM: Final = 1_000

_TOP_LEVEL_KEYS: Final = ("version", "products")
_PRODUCT_KEYS: Final = (
    "id", "version", "effective", "name", "kind", "methods", "rate", "term_months",
    "amount", "repayment_day", "grace_days", "penalty_uplift", "fees", "prepayment",
    "allocation", "exposure_max",
)  # fmt: skip
_RATE_KEYS: Final = ("lpr", "spread_bp", "fixed")
_RANGE_KEYS: Final = ("min", "max")
_FEE_KEYS: Final = ("upfront", "monthly")
_PREPAYMENT_KEYS: Final = ("allowed", "after_months", "fee", "excess", "mode")
_CNY: Final = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?")
_RATE_EXPECTED: Final = 'a table { lpr = "1y", spread_bp = 45 } or { fixed = "4.35%" }'


# --- Errors ---------------------------------------------------------------------------


class LoanCatalogError(ParameterFileError):
    """A loan catalog cannot be used; like `limits.lpr.LprError`: every problem in
    `catalog_problems`, `errors` as (line, message), `source`/`line`/`message` the
    first one's."""


class LoanProductNotInForceError(LookupError):
    """No version of the product is in force on the day asked for: the catalog has no
    such id, or its first version takes effect later."""

    def __init__(self, product_id: str, day: int, first_day: int | None) -> None:
        self.product_id = product_id
        self.day = day
        self.first_day = first_day
        if first_day is None:
            message = f"no loan product {product_id!r} in the catalog"
        else:
            message = (
                f"loan product {product_id!r} is not in force on {date_text(day)}: its "
                f"first version takes effect on {date_text(first_day)}"
            )
        super().__init__(message)


# --- The catalog ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoanProduct:
    """One published product instance `(id, version)`, as parsed: rates and fees in ppm
    (`limits.rates`), money in fen, days as day numbers. Equal to another instance when
    every term is equal (`line`, where it starts in its file, is not compared)."""

    id: str
    version: int
    effective_day: int
    name: str
    kind: str
    methods: tuple[str, ...]
    lpr_term: str | None
    """The LPR tenor ("1y", "5y") of a floating rate; None for a fixed rate."""
    spread_bp: int
    """Basis points over the LPR (may be negative); 0 for a fixed rate."""
    fixed_rate: int | None
    term_min: int
    term_max: int
    amount_min_minor: int
    amount_max_minor: int
    repayment_day: int | None
    """1..28; None: the disbursement day's day of the month (clamped to 28)."""
    grace_days: int
    penalty_uplift_permille: int
    upfront_fee_ppm: int
    monthly_fee_ppm: int
    prepayment_allowed: bool
    prepayment_after_months: int
    prepayment_fee_ppm: int
    prepayment_excess: str
    prepayment_mode: str
    allocation: tuple[str, ...]
    exposure_max_minor: int | None = None
    """The most outstanding on the product's loans (None: no cap)."""
    line: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        assert ID_PATTERN.fullmatch(self.id), self.id
        assert 1 <= self.version <= VERSION_MAX, self.version
        assert 0 <= self.effective_day < DAY_COUNT, self.effective_day
        assert self.kind in KINDS, self.kind
        assert self.methods and set(self.methods) <= set(METHODS), self.methods
        assert (self.lpr_term is None) != (self.fixed_rate is None), (
            self.lpr_term,
            self.fixed_rate,
        )
        assert self.fixed_rate is None or self.spread_bp == 0, self.spread_bp
        assert 1 <= self.term_min <= self.term_max <= TERM_MONTHS_MAX
        assert 1 <= self.amount_min_minor <= self.amount_max_minor <= LOAN_PRINCIPAL_MAX_MINOR
        assert self.exposure_max_minor is None or 1 <= self.exposure_max_minor <= AMOUNT_MINOR_MAX
        assert self.repayment_day is None or 1 <= self.repayment_day <= REPAYMENT_DAY_MAX
        assert sorted(self.allocation) == sorted(ALLOCATION_DEFAULT), self.allocation

    def contract_rate(self, lpr: LprTable, day: int) -> int:
        """The rate in ppm a year of a loan priced on `day`: the fixed rate, or the LPR
        of the product's tenor in force that day plus the spread. May be negative (a
        spread below minus the LPR): the caller refuses it. `LprNotInForceError` before
        the table's first fixing."""
        if self.fixed_rate is not None:
            return self.fixed_rate
        assert self.lpr_term is not None
        return lpr.rate(day, self.lpr_term) + self.spread_bp * BP_PPM

    def to_json(self) -> dict[str, Any]:
        """The instance as `GET /v1/products` shows it (JSON-ready). Rates and fees
        appear twice: the exact percentage ("0.50%") and the ppm integer (5000)."""
        if self.fixed_rate is not None:
            rate: dict[str, Any] = {
                "fixed": format_rate(self.fixed_rate),
                "fixed_ppm": self.fixed_rate,
            }
        else:
            rate = {"lpr": self.lpr_term, "spread_bp": self.spread_bp}
        uplift_ppm = self.penalty_uplift_permille * PERMILLE_PPM
        return {
            "id": self.id,
            "version": self.version,
            "effective": date_text(self.effective_day),
            "name": self.name,
            "kind": self.kind,
            "methods": list(self.methods),
            "rate": rate,
            "term_months": {"min": self.term_min, "max": self.term_max},
            "amount": {"min_minor": self.amount_min_minor, "max_minor": self.amount_max_minor},
            "repayment_day": (
                REPAYMENT_DAY_DISBURSEMENT if self.repayment_day is None else self.repayment_day
            ),
            "grace_days": self.grace_days,
            "penalty_uplift": format_rate(uplift_ppm),
            "penalty_uplift_permille": self.penalty_uplift_permille,
            "fees": {
                "upfront": format_rate(self.upfront_fee_ppm),
                "upfront_ppm": self.upfront_fee_ppm,
                "monthly": format_rate(self.monthly_fee_ppm),
                "monthly_ppm": self.monthly_fee_ppm,
            },
            "prepayment": {
                "allowed": self.prepayment_allowed,
                "after_months": self.prepayment_after_months,
                "fee": format_rate(self.prepayment_fee_ppm),
                "fee_ppm": self.prepayment_fee_ppm,
                "excess": self.prepayment_excess,
                "mode": self.prepayment_mode,
            },
            "allocation": list(self.allocation),
        }


@dataclass(frozen=True, slots=True)
class LoanCatalog:
    """One validated catalog: every product instance ever published, in file order."""

    version: int
    products: tuple[LoanProduct, ...]
    text: str
    digest: str
    """SHA-256 (hex) of the text's UTF-8 bytes."""
    source: str = ""

    def __post_init__(self) -> None:
        assert 1 <= self.version <= VERSION_MAX, self.version
        assert 0 < len(self.products) <= PRODUCT_VERSIONS_MAX
        keys = [(product.id, product.version) for product in self.products]
        assert len(set(keys)) == len(keys), keys
        assert self.digest == hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def product_ids(self) -> tuple[str, ...]:
        """Every product id, in the order of its first entry in the file."""
        return tuple(dict.fromkeys(product.id for product in self.products))

    def versions(self, product_id: str) -> tuple[LoanProduct, ...]:
        """Every version of `product_id`, oldest first (their effective days increase
        with their numbers); empty for an id the catalog does not have."""
        found = [product for product in self.products if product.id == product_id]
        return tuple(sorted(found, key=lambda product: product.version))

    def in_force(self, product_id: str, day: int) -> LoanProduct:
        """The version of `product_id` in force on `day`: the newest one effective on or
        before it. `LoanProductNotInForceError` (a LookupError) for an unknown id or a
        day before its first version."""
        assert 0 <= day < DAY_COUNT, day
        versions = self.versions(product_id)
        for product in reversed(versions):
            if product.effective_day <= day:
                return product
        first_day = versions[0].effective_day if versions else None
        raise LoanProductNotInForceError(product_id, day, first_day)

    def published(self, day: int) -> tuple[LoanProduct, ...]:
        """Each product's version in force on `day` (products not yet in force left
        out), in the order of the products' first entries in the file."""
        found = []
        for product_id in self.product_ids:
            try:
                found.append(self.in_force(product_id, day))
            except LoanProductNotInForceError:
                continue
        return tuple(found)

    def upcoming(self, day: int) -> tuple[LoanProduct, ...]:
        """Every version that takes effect after `day`, soonest first."""
        later = [product for product in self.products if product.effective_day > day]
        return tuple(sorted(later, key=lambda p: (p.effective_day, p.id, p.version)))

    def to_json(self, day: int) -> dict[str, Any]:
        """The catalog every channel shows on `day` (today's business day): the file's
        version and digest, the versions in force (`products`) and those published to
        take effect later (`upcoming`)."""
        return {
            "version": self.version,
            "digest": self.digest,
            "products": [product.to_json() for product in self.published(day)],
            "upcoming": [product.to_json() for product in self.upcoming(day)],
        }


# --- Loading and the successor rule ---------------------------------------------------


def load_loan_catalog(path: str | os.PathLike[str]) -> LoanCatalog:
    """Read and validate the catalog file at `path`; `LoanCatalogError` on any problem
    (an unreadable file included)."""
    source = os.fspath(path)
    _, data = read_stable(source, _at_file, "loan catalog")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"not valid UTF-8 (byte offset {error.start})"
        raise LoanCatalogError.at(source, 0, message) from error
    return parse_loan_catalog(text, source)


def _at_file(path: str, message: str) -> LoanCatalogError:
    return LoanCatalogError.at(path, 0, message)


def parse_loan_catalog(text: str, source: str) -> LoanCatalog:
    """Validate catalog text; `source` names it in messages (a file name, or the
    approval request's name for a submitted draft). `LoanCatalogError` with every
    problem found."""
    document = toml_document(text, source, LoanCatalogError)
    problems = Problems(source, KeyLines(text), LoanCatalogError)
    check_keys(document, _TOP_LEVEL_KEYS, (), problems)
    version = parse_version(document, problems, "the catalog's")
    products = _parse_products(document, problems)
    problems.raise_if_any()
    assert version is not None and products is not None
    return LoanCatalog(
        version=version,
        products=products,
        text=text,
        digest=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        source=source,
    )


def check_loan_successor(
    current: LoanCatalog, new: LoanCatalog, day: int, source: str = ""
) -> None:
    """Refuse (`LoanCatalogError`, at the line of the offending key in `new`) a catalog
    that may not replace `current` with `day` today: its version does not increase; a
    published instance `(id, version)` is missing or changed (immutable: a change is a
    new version; the message names the product and its first differing key); or an
    instance it adds takes effect before `day` (no retroactive product: today at the
    earliest, so a change approved to apply on its version's effective date passes this
    check again when it is applied that day)."""
    problems = Problems(source or new.source, KeyLines(new.text), LoanCatalogError)
    if new.version <= current.version:
        problems.add(("version",), f"{new.version} does not increase the version in force "
                     f"({current.version}): every change is a new, higher version")  # fmt: skip
    new_index = {(product.id, product.version): index for index, product in
                 enumerate(new.products)}  # fmt: skip
    for product in current.products:
        index = new_index.get((product.id, product.version))
        if index is None:
            problems.add_at(
                _removed_line(new, product.id),
                "products",
                f"{product.id} version {product.version} was removed; published versions "
                "stay in the catalog (loans were priced with them)",
            )
            continue
        replacement = new.products[index]
        difference = _first_difference(product, replacement)
        if difference is not None:
            key, before, after = difference
            problems.add(
                ("products", index, *key),
                f"{product.id} version {product.version} is published and cannot change "
                f"({before} -> {after}): publish the change as a new version",
            )
    current_keys = {(product.id, product.version) for product in current.products}
    for index, product in enumerate(new.products):
        if (product.id, product.version) in current_keys or product.effective_day >= day:
            continue
        problems.add(
            ("products", index, "effective"),
            f"{product.id} version {product.version} takes effect "
            f"{date_text(product.effective_day)}, before today ({date_text(day)}): a new "
            "version takes effect from today at the earliest (no retroactive product)",
        )
    problems.raise_if_any()


def _removed_line(new: LoanCatalog, product_id: str) -> int:
    """The line of the product's first remaining entry in `new`, else 1."""
    for product in new.products:
        if product.id == product_id:
            return product.line
    return 1


# The keys of the file in their order, each with the field (or fields) it sets.
_FIELD_KEYS: Final[tuple[tuple[tuple[str, ...], str], ...]] = (
    (("id",), "id"),
    (("version",), "version"),
    (("effective",), "effective_day"),
    (("name",), "name"),
    (("kind",), "kind"),
    (("methods",), "methods"),
    (("rate", "lpr"), "lpr_term"),
    (("rate", "spread_bp"), "spread_bp"),
    (("rate", "fixed"), "fixed_rate"),
    (("term_months", "min"), "term_min"),
    (("term_months", "max"), "term_max"),
    (("amount", "min"), "amount_min_minor"),
    (("amount", "max"), "amount_max_minor"),
    (("repayment_day",), "repayment_day"),
    (("grace_days",), "grace_days"),
    (("penalty_uplift",), "penalty_uplift_permille"),
    (("fees", "upfront"), "upfront_fee_ppm"),
    (("fees", "monthly"), "monthly_fee_ppm"),
    (("prepayment", "allowed"), "prepayment_allowed"),
    (("prepayment", "after_months"), "prepayment_after_months"),
    (("prepayment", "fee"), "prepayment_fee_ppm"),
    (("prepayment", "excess"), "prepayment_excess"),
    (("prepayment", "mode"), "prepayment_mode"),
    (("allocation",), "allocation"),
    (("exposure_max",), "exposure_max_minor"),
)


def _first_difference(
    before: LoanProduct, after: LoanProduct
) -> tuple[tuple[str, ...], str, str] | None:
    """(key, old value, new value) of the first key in file order whose value differs;
    None when the two instances are equal."""
    if before == after:
        return None
    for key, name in _FIELD_KEYS:
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            dotted = ".".join(key)
            return key, f"`{dotted}` was {_shown(name, old)}", f"now {_shown(name, new)}"
    raise AssertionError(f"{before} != {after} but no field differs")  # every field is listed


def _shown(name: str, value: Any) -> str:
    """A field's value as the file spells it."""
    if value is None:
        return "absent" if name != "repayment_day" else f'"{REPAYMENT_DAY_DISBURSEMENT}"'
    if name == "effective_day":
        return date_text(value)
    if name.endswith("_ppm") or name == "fixed_rate":
        return f'"{format_rate(value)}"'
    if name == "penalty_uplift_permille":
        return f'"{format_rate(value * PERMILLE_PPM)}"'
    if name.endswith("_minor"):
        return f'"{value // 100}.{value % 100:02d}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


# --- Parsing: the file ----------------------------------------------------------------


def _parse_products(
    document: Mapping[str, Any], problems: Problems
) -> tuple[LoanProduct, ...] | None:
    """Every `[[products]]` entry, then the rules between entries: no (id, version)
    twice, and each product's versions taking effect in the order of their numbers."""
    if "products" not in document:
        problems.add(("products",), "missing required products ([[products]] with "
                     f"{', '.join(_PRODUCT_KEYS)})")  # fmt: skip
        return None
    tables = document["products"]
    if not isinstance(tables, list) or not all(isinstance(item, dict) for item in tables):
        problems.add(("products",), f"expected products ([[products]]), got {describe(tables)}")
        return None
    if not tables:
        problems.add(("products",), "no product: at least one [[products]] is required")
        return None
    if len(tables) > PRODUCT_VERSIONS_MAX:
        problems.add(("products",), f"{len(tables)} product versions; at most "
                     f"{PRODUCT_VERSIONS_MAX} in one catalog")  # fmt: skip
        return None
    count = len(problems.items)
    parsed = [_parse_product(table, index, problems) for index, table in enumerate(tables)]
    _check_versions(parsed, problems)
    if len(problems.items) > count:
        return None
    return tuple(product for product in parsed if product is not None)


def _check_versions(parsed: Sequence[LoanProduct | None], problems: Problems) -> None:
    seen: dict[tuple[str, int], LoanProduct] = {}
    by_id: dict[str, list[tuple[int, LoanProduct]]] = {}
    for index, product in enumerate(parsed):
        if product is None:
            continue
        key = (product.id, product.version)
        first = seen.get(key)
        if first is not None:
            problems.add(
                ("products", index, "version"),
                f"{product.id} version {product.version} is listed twice (also at line "
                f"{first.line}): each version of a product is one instance",
            )
            continue
        seen[key] = product
        by_id.setdefault(product.id, []).append((index, product))
    for entries in by_id.values():
        entries.sort(key=lambda entry: entry[1].version)
        for (_, earlier), (index, later) in itertools.pairwise(entries):
            if later.effective_day > earlier.effective_day:
                continue
            problems.add(
                ("products", index, "effective"),
                f"{later.id} version {later.version} takes effect "
                f"{date_text(later.effective_day)}, not after version {earlier.version} "
                f"({date_text(earlier.effective_day)}, line {earlier.line}): each new version "
                "of a product takes effect after the one before it",
            )


def _parse_product(table: Mapping[str, Any], index: int, problems: Problems) -> LoanProduct | None:
    """One `[[products]]` entry; None (every problem reported) if anything is wrong."""
    prefix: tuple[Any, ...] = ("products", index)
    count = len(problems.items)
    check_keys(table, _PRODUCT_KEYS, prefix, problems)
    product_id = _parse_id(table, prefix, problems)
    version = _parse_integer(table, "version", prefix, problems, 1, VERSION_MAX,
                             "the product instance's version")  # fmt: skip
    effective_day = parse_date(table, "effective", prefix, problems)
    name = _parse_name(table, prefix, problems)
    kind = _parse_choice(table, "kind", KINDS, prefix, problems)
    methods = _parse_methods(table, prefix, problems)
    rate = _parse_rate(table, prefix, problems)
    terms = _parse_range(table, "term_months", prefix, problems, _parse_term)
    amounts = _check_loan_size(_parse_range(table, "amount", prefix, problems, _parse_cny),
                               prefix, problems)  # fmt: skip
    repayment_day = _parse_repayment_day(table, prefix, problems)
    grace_days = _parse_integer(table, "grace_days", prefix, problems, 0, GRACE_DAYS_MAX,
                                "days without penalty after a due day")  # fmt: skip
    uplift = _parse_uplift(table, prefix, problems)
    fees = _parse_fees(table, prefix, problems)
    prepayment = _parse_prepayment(table, prefix, problems)
    allocation = _parse_allocation(table, prefix, problems)
    exposure_max = _parse_exposure_max(table, prefix, problems)
    if len(problems.items) > count:
        return None
    assert product_id is not None and version is not None and effective_day is not None
    assert name is not None and kind is not None and methods is not None and rate is not None
    assert terms is not None and amounts is not None and repayment_day is not None
    assert grace_days is not None and uplift is not None and fees is not None
    assert prepayment is not None and allocation is not None
    return LoanProduct(
        id=product_id,
        version=version,
        effective_day=effective_day,
        name=name,
        kind=kind,
        methods=methods,
        lpr_term=rate[0],
        spread_bp=rate[1],
        fixed_rate=rate[2],
        term_min=terms[0],
        term_max=terms[1],
        amount_min_minor=amounts[0],
        amount_max_minor=amounts[1],
        repayment_day=None if repayment_day == 0 else repayment_day,
        grace_days=grace_days,
        penalty_uplift_permille=uplift,
        upfront_fee_ppm=fees[0],
        monthly_fee_ppm=fees[1],
        prepayment_allowed=prepayment[0],
        prepayment_after_months=prepayment[1],
        prepayment_fee_ppm=prepayment[2],
        prepayment_excess=prepayment[3],
        prepayment_mode=prepayment[4],
        allocation=allocation,
        exposure_max_minor=exposure_max,
        line=problems.line(prefix),
    )


# --- Parsing: one product's keys ------------------------------------------------------


def _parse_id(table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems) -> str | None:
    expected = 'the product id, 1..32 of A-Z, a-z, 0-9 and -, such as "G-P-loan"'
    value = required(table, "id", prefix, problems, expected)
    if value is None:
        return None
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        problems.add((*prefix, "id"), f"expected {expected}, got {describe(value)}")
        return None
    return value


def _parse_name(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> str | None:
    expected = f"the name customers see, 1..{NAME_LENGTH_MAX} characters"
    value = required(table, "name", prefix, problems, expected)
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > NAME_LENGTH_MAX
        or not value.isprintable()
    ):
        problems.add((*prefix, "name"), f"expected {expected} (printable, not blank), got "
                     f"{describe(value)}")  # fmt: skip
        return None
    return value


def _parse_integer(
    table: Mapping[str, Any], name: str, prefix: tuple[Any, ...], problems: Problems,
    low: int, high: int, meaning: str,
) -> int | None:  # fmt: skip
    """A required integer `low..high` (a float, a boolean or a string refused)."""
    value = required(table, name, prefix, problems, f"{meaning}, an integer {low}..{high}")
    if value is None:
        return None
    if not is_integer(value) or not low <= value <= high:
        problems.add((*prefix, name), f"expected {meaning}, an integer {low}..{high}, got "
                     f"{describe(value)}")  # fmt: skip
        return None
    assert isinstance(value, int)
    return value


def _parse_choice(
    table: Mapping[str, Any], name: str, choices: Sequence[str], prefix: tuple[Any, ...],
    problems: Problems,
) -> str | None:  # fmt: skip
    """A required string, one of `choices`."""
    names = ", ".join(choices)
    value = required(table, name, prefix, problems, f"one of: {names}")
    if value is None:
        return None
    return _choice(value, name, choices, (*prefix, name), problems)


def _choice(
    value: Any, what: str, choices: Sequence[str], key: tuple[Any, ...], problems: Problems
) -> str | None:
    names = ", ".join(choices)
    if not isinstance(value, str):
        problems.add(key, f"expected one of: {names}; got {describe(value)}")
        return None
    if value not in choices:
        problems.add(key, f"unknown {what} {value!r} (expected one of: {names})")
        return None
    return value


def _parse_methods(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> tuple[str, ...] | None:
    expected = f"a list of the repayment methods offered ({', '.join(METHODS)})"
    value = required(table, "methods", prefix, problems, expected)
    if value is None:
        return None
    return _name_list(value, "method", METHODS, (*prefix, "methods"), problems, expected)


def _name_list(
    value: Any, what: str, choices: Sequence[str], key: tuple[Any, ...], problems: Problems,
    expected: str,
) -> tuple[str, ...] | None:  # fmt: skip
    """A non-empty list of distinct names from `choices`, in the file's order."""
    if not isinstance(value, list) or not value:
        problems.add(key, f"expected {expected}, got {describe(value)}")
        return None
    names: list[str] = []
    for item in value:
        name = _choice(item, what, choices, key, problems)
        if name is None:
            return None
        if name in names:
            problems.add(key, f"{what} {name!r} is listed twice")
            return None
        names.append(name)
    return tuple(names)


def _table(
    table: Mapping[str, Any], name: str, allowed: Sequence[str], prefix: tuple[Any, ...],
    problems: Problems, expected: str, *, optional: bool = False,
) -> Mapping[str, Any] | None:  # fmt: skip
    """The inline table `name` with its keys checked; None if missing (reported unless
    `optional`) or not a table (reported)."""
    if optional and name not in table:
        return None
    value = required(table, name, prefix, problems, expected)
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add((*prefix, name), f"expected {expected}, got {describe(value)}")
        return None
    check_keys(value, allowed, (*prefix, name), problems)
    return value


def _parse_rate(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> tuple[str | None, int, int | None] | None:
    """(LPR tenor, spread in bp, fixed rate): (tenor, spread, None) or (None, 0, rate)."""
    rate = _table(table, "rate", _RATE_KEYS, prefix, problems, _RATE_EXPECTED)
    if rate is None:
        return None
    key = (*prefix, "rate")
    if "fixed" in rate:
        if "lpr" in rate or "spread_bp" in rate:
            problems.add(key, "a rate is fixed or floating: give `fixed`, or `lpr` and "
                         "`spread_bp`, not both")  # fmt: skip
            return None
        fixed = parse_rate_value(rate["fixed"], (*key, "fixed"), problems)
        return None if fixed is None else (None, 0, fixed)
    if "lpr" not in rate and "spread_bp" not in rate:
        if not rate:  # otherwise its unknown keys are reported already
            problems.add(key, f"expected {_RATE_EXPECTED}, got an empty table")
        return None
    tenors = tuple(term.value for term in LprTerm)
    tenor = required(rate, "lpr", key, problems, f"the LPR tenor: {', '.join(tenors)}")
    term = None if tenor is None else _choice(tenor, "LPR tenor", tenors, (*key, "lpr"), problems)
    spread = _parse_integer(rate, "spread_bp", key, problems, -SPREAD_BP_MAX, SPREAD_BP_MAX,
                            "basis points over the LPR (0.01% each; may be negative)")  # fmt: skip
    if term is None or spread is None:
        return None
    return term, spread, None


def _parse_term(value: Any, key: tuple[Any, ...], problems: Problems) -> int | None:
    if not is_integer(value) or not 1 <= value <= TERM_MONTHS_MAX:
        problems.add(key, f"expected a number of months 1..{TERM_MONTHS_MAX}, got "
                     f"{describe(value)}")  # fmt: skip
        return None
    assert isinstance(value, int)
    return value


def _parse_cny(value: Any, key: tuple[Any, ...], problems: Problems) -> int | None:
    """An amount in CNY as an exact decimal string ("1000.00") -> fen, 1..AMOUNT_MINOR_MAX;
    parsed digit by digit: no float ever holds it."""
    if not isinstance(value, str):
        if isinstance(value, float) and value >= 0:
            hint = f' (a float cannot hold money exactly: write "{value:.2f}")'
        elif is_integer(value):
            hint = f' (write CNY as a string such as "{value}.00")'
        else:
            hint = ""
        problems.add(key, f"expected an amount in CNY as a string, got {describe(value)}{hint}")
        return None
    if not _CNY.fullmatch(value):
        problems.add(key, f'{value!r} is not an amount in CNY such as "1000.00" (digits, at '
                     "most two decimals, no sign)")  # fmt: skip
        return None
    whole, _, cents = value.partition(".")
    minor = int(whole) * 100 + int(cents.ljust(2, "0"))
    if not 1 <= minor <= AMOUNT_MINOR_MAX:
        largest = f"{AMOUNT_MINOR_MAX // 100}.{AMOUNT_MINOR_MAX % 100:02d}"
        problems.add(key, f"{value!r} is out of range 0.01..{largest} CNY")
        return None
    return minor


def _parse_range(
    table: Mapping[str, Any], name: str, prefix: tuple[Any, ...], problems: Problems,
    parse_bound: Callable[[Any, tuple[Any, ...], Problems], int | None],
) -> tuple[int, int] | None:  # fmt: skip
    """`{ min = ..., max = ... }`, each bound read by `parse_bound`; min <= max."""
    expected = "a table { min = ..., max = ... }"
    bounds = _table(table, name, _RANGE_KEYS, prefix, problems, expected)
    if bounds is None:
        return None
    key = (*prefix, name)
    values = []
    for bound in _RANGE_KEYS:
        value = required(bounds, bound, key, problems, f"the {bound}imum")
        values.append(None if value is None else parse_bound(value, (*key, bound), problems))
    low, high = values
    if low is None or high is None:
        return None
    if low > high:
        problems.add((*key, "min"), f"the minimum {bounds['min']!r} is above the maximum "
                     f"{bounds['max']!r}")  # fmt: skip
        return None
    return low, high


def _parse_repayment_day(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> int | None:
    """1..28, or 0 for "disbursement" (the day of the month the loan was paid out)."""
    expected = (
        f"the day of the month instalments fall due, 1..{REPAYMENT_DAY_MAX}, or "
        f'"{REPAYMENT_DAY_DISBURSEMENT}" (the disbursement day\'s, clamped to 28)'
    )
    value = required(table, "repayment_day", prefix, problems, expected)
    if value is None:
        return None
    if value == REPAYMENT_DAY_DISBURSEMENT:
        return 0
    if not is_integer(value) or not 1 <= value <= REPAYMENT_DAY_MAX:
        problems.add((*prefix, "repayment_day"), f"expected {expected}, got {describe(value)}")
        return None
    assert isinstance(value, int)
    return value


def _parse_uplift(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> int | None:
    """The penalty uplift in permille of the contract rate: "50%" -> 500."""
    low, high = PENALTY_UPLIFT_PERMILLE_MIN, PENALTY_UPLIFT_PERMILLE_MAX
    span = f"{format_rate(low * PERMILLE_PPM)}..{format_rate(high * PERMILLE_PPM)}"
    expected = f'the penalty rate\'s uplift over the contract rate, {span} (PBoC), such as "50%"'
    value = required(table, "penalty_uplift", prefix, problems, expected)
    if value is None:
        return None
    key = (*prefix, "penalty_uplift")
    ppm = parse_rate_value(value, key, problems)
    if ppm is None:
        return None
    if ppm % PERMILLE_PPM != 0:
        problems.add(key, f"{value!r} is finer than 0.1%, the step of a penalty uplift")
        return None
    if not low <= ppm // PERMILLE_PPM <= high:
        problems.add(key, f"{value!r} is outside {span}: the PBoC sets the penalty rate at the "
                     "contract rate plus 30% to 50% of it")  # fmt: skip
        return None
    return ppm // PERMILLE_PPM


def _parse_fees(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> tuple[int, int] | None:
    """(upfront, monthly) in ppm of the principal; a missing table or key is 0."""
    expected = 'a table { upfront = "0.50%", monthly = "0.00%" } (both optional)'
    fees = _table(table, "fees", _FEE_KEYS, prefix, problems, expected, optional=True)
    if fees is None:
        return None if "fees" in table else (0, 0)
    key = (*prefix, "fees")
    values = []
    for name in _FEE_KEYS:
        values.append(0 if name not in fees else parse_rate_value(fees[name], (*key, name),
                                                                  problems))  # fmt: skip
    upfront, monthly = values
    if upfront is not None and upfront >= RATE_SCALE:
        problems.add((*key, "upfront"), f"{fees['upfront']!r}: an upfront fee below 100% of "
                     "the principal (it is deducted from what the customer receives)")  # fmt: skip
        return None
    if upfront is None or monthly is None:
        return None
    return upfront, monthly


def _parse_prepayment(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> tuple[bool, int, int, str, str] | None:
    """(allowed, after months, fee ppm of the amount prepaid, excess rule, mode)."""
    expected = (
        'a table { allowed = true, after_months = 0, fee = "0.00%", excess = "refuse", '
        'mode = "reduce_instalment" }'
    )
    prepayment = _table(table, "prepayment", _PREPAYMENT_KEYS, prefix, problems, expected)
    if prepayment is None:
        return None
    key = (*prefix, "prepayment")
    count = len(problems.items)
    allowed = required(prepayment, "allowed", key, problems, "true or false")
    if allowed is not None and not isinstance(allowed, bool):
        problems.add((*key, "allowed"), f"expected true or false, got {describe(allowed)}")
    after = _parse_integer(prepayment, "after_months", key, problems, 0, TERM_MONTHS_MAX,
                           "months after disbursement before a prepayment")  # fmt: skip
    fee_text = required(prepayment, "fee", key, problems, "the fee in % of the amount prepaid")
    fee = None if fee_text is None else parse_rate_value(fee_text, (*key, "fee"), problems)
    excess = _parse_choice(prepayment, "excess", EXCESS_CHOICES, key, problems)
    mode = _parse_choice(prepayment, "mode", PREPAYMENT_MODES, key, problems)
    if len(problems.items) > count:
        return None
    assert isinstance(allowed, bool) and after is not None and fee is not None
    assert excess is not None and mode is not None
    return allowed, after, fee, excess, mode


def _parse_allocation(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> tuple[str, ...] | None:
    """The order a repayment pays what is due; the default (penalty, interest,
    principal: Civil Code art. 561) when the key is absent."""
    if "allocation" not in table:
        return ALLOCATION_DEFAULT
    key = (*prefix, "allocation")
    expected = f"an order of {', '.join(ALLOCATION_DEFAULT)} (each once)"
    names = _name_list(table["allocation"], "allocation name", ALLOCATION_DEFAULT, key,
                       problems, expected)  # fmt: skip
    if names is None:
        return None
    if len(names) != len(ALLOCATION_DEFAULT):
        missing = [name for name in ALLOCATION_DEFAULT if name not in names]
        problems.add(key, f"missing {', '.join(missing)}: the order names each of "
                     f"{', '.join(ALLOCATION_DEFAULT)} once")  # fmt: skip
        return None
    return names


def _check_loan_size(
    amounts: tuple[int, int] | None, prefix: tuple[Any, ...], problems: Problems
) -> tuple[int, int] | None:
    """The amount range, unless its maximum is more than one loan's row can hold."""
    if amounts is None or amounts[1] <= LOAN_PRINCIPAL_MAX_MINOR:
        return amounts
    largest = f"{LOAN_PRINCIPAL_MAX_MINOR // 100}.{LOAN_PRINCIPAL_MAX_MINOR % 100:02d}"
    problems.add((*prefix, "amount", "max"), f"a loan is at most {largest} CNY (its row in "
                 "the ledger holds arrears in u32 fen)")  # fmt: skip
    return None


def _parse_exposure_max(
    table: Mapping[str, Any], prefix: tuple[Any, ...], problems: Problems
) -> int | None:
    """The optional exposure cap in fen (None when the key is absent or wrong; a wrong
    value is reported)."""
    if "exposure_max" not in table:
        return None
    return _parse_cny(table["exposure_max"], (*prefix, "exposure_max"), problems)
