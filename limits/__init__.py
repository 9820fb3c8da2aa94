"""Limit rules: PBoC account-class ceilings, per-product and per-channel caps.

Synchronous and free of I/O except reading the rule file: the engine, the
simulator and the hypothesis state machines drive it with no event loop, and
it never imports from `core/` or `channels/` (they depend on it, not the
reverse).

- `limits.pboc`: the regulatory ceilings, in fen.
- `limits.calendar`: business days and years, twin of the kernel's.
- `limits.rules`: the rule file, its validation and the kernel's tables.
- `limits.reference` (to come): the plain-Python reference limit checker,
  the kernel's twin for differential tests.
"""

from . import pboc
from .calendar import (
    DEFAULT_TIMEZONE_NAME,
    business_day,
    day_of_date,
    load_timezone,
    year_of_day,
)
from .errors import RuleFileError
from .rules import (
    CHANNEL_ROW,
    CHANNEL_ROW_COUNT,
    CHANNEL_ROW_SIZE,
    PRODUCT_ROW,
    PRODUCT_ROW_SIZE,
    Channel,
    ChannelKind,
    Product,
    ProductKind,
    RuleFile,
    RuleSet,
    load_rules,
    parse_rules,
)

__all__ = [
    "CHANNEL_ROW",
    "CHANNEL_ROW_COUNT",
    "CHANNEL_ROW_SIZE",
    "DEFAULT_TIMEZONE_NAME",
    "PRODUCT_ROW",
    "PRODUCT_ROW_SIZE",
    "Channel",
    "ChannelKind",
    "Product",
    "ProductKind",
    "RuleFile",
    "RuleFileError",
    "RuleSet",
    "business_day",
    "day_of_date",
    "load_rules",
    "load_timezone",
    "parse_rules",
    "pboc",
    "year_of_day",
]
