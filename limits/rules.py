"""Limit rule files: products, channels, their caps, and the tables the kernel reads.

A rule file is TOML (see `examples/limits.toml`). It is validated strictly and
completely before anything uses it, because a typo in a limit file is a
compliance failure, not a cosmetic one: an unknown key is refused rather than
ignored (a misspelt `outfow_daily_minor` would otherwise leave the default in
force without anyone noticing), floats are refused for money, and a Class II
or III cap looser than the PBoC ceiling is refused. Every problem is reported
at once, each on one line naming the file, the dotted key and the reason.

The kernel reads three packed little-endian tables built from the rules; their
layouts are contracts with `cext/` and are described on the methods below.
A cap of 0 in a table means "no cap".

Log quotas: each channel may hold at most `log_share_permille` of the
transfer log window and of the failure ring (a burst of one channel's
postings or failures can never fill the log for the others); omitted, the
default of its kind applies (`LOG_SHARE_PERMILLE_DEFAULTS`). A share is
1..900: no channel may be allowed the whole log.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import os
import re
import struct
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeVar

from . import pboc
from .calendar import DEFAULT_TIMEZONE_NAME, business_day, load_timezone, open_timezone
from .errors import RuleFileError
from .watched import WatchedFile, read_stable

PRODUCT_ID_MAX: Final = 65535
CHANNEL_ID_MAX: Final = 255

# Balance floors stay this far from the int64 edge so balance - amount can
# never overflow in the kernel for any amount it accepts.
BALANCE_FLOOR_MAGNITUDE_MAX_MINOR: Final = 2**62
# Caps the kernel compares with an amount or a balance (int64), not with an
# int32 counter: the single-transfer cap and the balance cap.
AMOUNT_CAP_MAX_MINOR: Final = 2**62

# An internal account's floor: how far below zero the bank lets one of its own accounts
# go (how much money it can put out from there). Finite and at most this deep: 100
# trillion CNY, beyond any bank's balance sheet; -2**62 would be "unbounded".
INTERNAL_FLOOR_MAGNITUDE_MAX_MINOR: Final = 10**16

# Table layouts: contracts with the kernel. Do not change without cext/ (ledger/types.py
# describes the rule table; tests/unit/test_kernel_contract.py keeps the two equal).
PRODUCT_ROW: Final = struct.Struct("<8q")
PRODUCT_ROW_SIZE: Final = 64
CHANNEL_ROW: Final = struct.Struct("<qqqII")
CHANNEL_ROW_SIZE: Final = 32
CHANNEL_ROW_COUNT: Final = CHANNEL_ID_MAX + 1
KIND_ROW: Final = struct.Struct("<qIII4xq")
KIND_ROW_SIZE: Final = 32
KIND_ROW_COUNT: Final = 32
BANK_ROW: Final = struct.Struct("<qqIII4x")
BANK_ROW_SIZE: Final = 32
KIND_ROWS_OFFSET: Final = CHANNEL_ROW_COUNT * CHANNEL_ROW_SIZE
BANK_ROW_OFFSET: Final = KIND_ROWS_OFFSET + KIND_ROW_COUNT * KIND_ROW_SIZE
RULE_TABLE_SIZE: Final = BANK_ROW_OFFSET + BANK_ROW_SIZE
LOG_QUOTA_ROW: Final = struct.Struct("<H")  # permille of the log (and failure ring), 0 = none
LOG_SHARE_PERMILLE_MAX: Final = 900
assert PRODUCT_ROW.size == PRODUCT_ROW_SIZE
assert CHANNEL_ROW.size == CHANNEL_ROW_SIZE
assert KIND_ROW.size == KIND_ROW_SIZE and BANK_ROW.size == BANK_ROW_SIZE

# Transfer codes by their names in rule files (ledger.types.TransferCode, lower case;
# limits sits below ledger, so the numbers are repeated here and a test keeps them equal).
TRANSFER_CODES: Final = MappingProxyType(
    {
        "transfer": 1,
        "payment": 2,
        "cash_deposit": 3,
        "cash_withdrawal": 4,
        "topup_bound": 5,
        "withdraw_bound": 6,
        "fee": 7,
        "interest": 8,
        "reversal": 9,
        "wealth": 10,
        "loan_disbursement": 11,
        "loan_repayment": 12,
        "external_transfer_out": 13,
        "external_transfer_in": 14,
        "fixed_deposit": 15,
        "settlement": 16,
    }
)
# The bank's internal account kinds by their names in `[internal_accounts.NAME]`
# (ledger.types.AccountKind.INTERNAL_*).
INTERNAL_ACCOUNT_KINDS: Final = MappingProxyType(
    {
        "cash": 16,
        "clearing": 17,
        "settlement": 18,
        "interest_expense": 19,
        "fees": 20,
        "wealth": 21,
        "loan_funding": 22,
    }
)
CHANNEL_STRONG_AUTH_EXEMPT: Final = 1  # ledger.types.ChannelOption
CHANNEL_CUSTOMER_CAP_EXEMPT: Final = 2
KIND_FLOOR_ENFORCED: Final = 1  # ledger.types.KindOption
KIND_BANK_SIDE: Final = 2


def _codes(*names: str) -> frozenset[str]:
    assert all(name in TRANSFER_CODES for name in names), names
    return frozenset(names)


def code_mask(names: frozenset[str] | Sequence[str]) -> int:
    """The kernel's code set: bit c for the code named c."""
    mask = 0
    for name in names:
        mask |= 1 << TRANSFER_CODES[name]
    return mask


ALL_CODES: Final = frozenset(TRANSFER_CODES)
# Codes that consume the PBoC buckets: DOMAIN.md exempts only money to or from the bound
# account, the bank's own wealth products and loans. A fee leaves the customer: counted.
# Interest, fixed deposits (the customer's own deposit with the bank) and settlement
# (between internal accounts) are not transfers to or from anyone else.
CODES_COUNTED: Final = _codes(
    "transfer", "payment", "cash_deposit", "cash_withdrawal",
    "external_transfer_out", "external_transfer_in", "fee",
)  # fmt: skip
# Credits a channel's daily credit cap counts: money coming in from outside the
# customer's relationship with the bank (a merchant's PAYMENT receipts are not capped).
CODES_INFLOW: Final = _codes("transfer", "cash_deposit", "topup_bound", "external_transfer_in")
# Bucket-exempt codes that need a bank-side account (a product or internal account) on
# one side: between two customers' payment accounts they would dodge the buckets.
CODES_ANCHORED: Final = _codes(
    "fee", "interest", "wealth", "loan_disbursement", "loan_repayment", "fixed_deposit",
    "settlement",
)  # fmt: skip

# What each kind of channel posts when the rule file does not say (`transfer_codes`):
# what its operations post (core/services/payments.py) and the customer's own moves into
# the bank's products. Fees, interest, loans and settlement only from the bank itself.
_CUSTOMER_SELF_SERVICE: Final = _codes(
    "transfer", "payment", "topup_bound", "withdraw_bound", "external_transfer_out",
    "wealth", "fixed_deposit",
)  # fmt: skip
DEFAULT_CHANNEL_CODES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "wechat": _CUSTOMER_SELF_SERVICE,
        "app": _CUSTOMER_SELF_SERVICE,
        "counter": _CUSTOMER_SELF_SERVICE
        | _codes("cash_deposit", "cash_withdrawal", "external_transfer_in", "reversal"),
        "atm": _codes("cash_deposit", "cash_withdrawal"),
        "open_api": _codes("external_transfer_in", "payment"),
        "internal": ALL_CODES,
    }
)

# Which codes may debit and credit an account of each customer kind (not configurable):
# a customer's payment account (Class I/II/III, savings), a fixed deposit, a loan.
_PAYMENT_DEBIT: Final = _codes(
    "transfer", "payment", "cash_withdrawal", "topup_bound", "withdraw_bound", "fee", "wealth",
    "loan_repayment", "external_transfer_out", "fixed_deposit", "reversal",
)  # fmt: skip
_PAYMENT_CREDIT: Final = _codes(
    "transfer", "payment", "cash_deposit", "topup_bound", "withdraw_bound", "interest",
    "wealth", "loan_disbursement", "external_transfer_in", "fixed_deposit", "reversal",
)  # fmt: skip
CUSTOMER_KIND_CODES: Final[Mapping[int, tuple[frozenset[str], frozenset[str], int]]] = (
    MappingProxyType(
        {
            1: (_PAYMENT_DEBIT, _PAYMENT_CREDIT, 0),
            2: (_PAYMENT_DEBIT, _PAYMENT_CREDIT, 0),
            3: (_PAYMENT_DEBIT, _PAYMENT_CREDIT, 0),
            4: (_PAYMENT_DEBIT, _PAYMENT_CREDIT, 0),
            5: (
                _codes("fixed_deposit", "reversal"),
                _codes("fixed_deposit", "interest", "reversal"),
                KIND_BANK_SIDE,
            ),
            6: (
                _codes("loan_disbursement", "reversal"),
                _codes("loan_repayment", "interest", "reversal"),
                KIND_BANK_SIDE,
            ),
        }
    )
)


class ProductKind(enum.StrEnum):
    CLASS_I = "class_i"
    CLASS_II = "class_ii"
    CLASS_III = "class_iii"
    SAVINGS = "savings"
    FIXED_DEPOSIT = "fixed_deposit"
    LOAN = "loan"
    INTERNAL = "internal"


# The account kind code a product is for, as the kernel stores it in the last
# int64 of a product row (ledger.types.AccountKind numbers; 16 = any internal
# kind). The kernel refuses to open an account on a product of another kind,
# so a Class II account can never escape its PBoC buckets.
PRODUCT_ACCOUNT_KIND_CODES = {
    ProductKind.CLASS_I: 1,
    ProductKind.CLASS_II: 2,
    ProductKind.CLASS_III: 3,
    ProductKind.SAVINGS: 4,
    ProductKind.FIXED_DEPOSIT: 5,
    ProductKind.LOAN: 6,
    ProductKind.INTERNAL: 16,
}


class ChannelKind(enum.StrEnum):
    WECHAT = "wechat"
    APP = "app"
    COUNTER = "counter"
    ATM = "atm"
    OPEN_API = "open_api"
    INTERNAL = "internal"


# A channel's share of the transfer log (and of the failure ring) when its rule
# says nothing: customer channels a fifth each, the counter, partner banks and
# ATMs less, the bank's own batch postings half.
LOG_SHARE_PERMILLE_DEFAULTS: Final[Mapping[ChannelKind, int]] = MappingProxyType(
    {
        ChannelKind.WECHAT: 200,
        ChannelKind.APP: 200,
        ChannelKind.COUNTER: 100,
        ChannelKind.ATM: 50,
        ChannelKind.OPEN_API: 100,
        ChannelKind.INTERNAL: 500,
    }
)

BUCKET_FIELDS: Final = (
    "inflow_daily_minor",
    "inflow_yearly_minor",
    "outflow_daily_minor",
    "outflow_yearly_minor",
)

# PBoC ceilings per bucket field, for the kinds that have buckets. An omitted
# bucket cap defaults to its ceiling: the regulation applies whether or not
# the rule file repeats it.
_BUCKET_CEILINGS_MINOR: Final[Mapping[ProductKind, tuple[str, Mapping[str, int]]]] = {
    ProductKind.CLASS_II: (
        "Class II",
        {
            "inflow_daily_minor": pboc.CLASS_II_INFLOW_DAILY_MINOR,
            "inflow_yearly_minor": pboc.CLASS_II_INFLOW_YEARLY_MINOR,
            "outflow_daily_minor": pboc.CLASS_II_OUTFLOW_DAILY_MINOR,
            "outflow_yearly_minor": pboc.CLASS_II_OUTFLOW_YEARLY_MINOR,
        },
    ),
    ProductKind.CLASS_III: (
        "Class III",
        {
            "inflow_daily_minor": pboc.CLASS_III_INFLOW_DAILY_MINOR,
            "inflow_yearly_minor": pboc.CLASS_III_INFLOW_YEARLY_MINOR,
            "outflow_daily_minor": pboc.CLASS_III_OUTFLOW_DAILY_MINOR,
            "outflow_yearly_minor": pboc.CLASS_III_OUTFLOW_YEARLY_MINOR,
        },
    ),
}

_TOP_LEVEL_KEYS: Final = ("timezone", "products", "channels", "internal_accounts", "customers")
_PRODUCT_KEYS: Final = (
    "id",
    "kind",
    "balance_floor_minor",
    "transfer_cap_minor",
    "balance_cap_minor",
    *BUCKET_FIELDS,
)
_CHANNEL_KEYS: Final = (
    "id",
    "kind",
    "transfer_cap_minor",
    "daily_cap_minor",
    "log_share_permille",
    "inflow_daily_cap_minor",
    "transfer_codes",
)
_INTERNAL_ACCOUNT_KEYS: Final = ("balance_floor_minor", "debit_codes", "credit_codes")
_CUSTOMERS_KEYS: Final = ("daily_outflow_cap_minor", "strong_auth_daily_minor")
STRONG_AUTH_DAILY_MINOR_DEFAULT: Final = 5_000_000  # 50,000 CNY: 2016 No. 261


@dataclass(frozen=True, slots=True)
class Product:
    """An account product; its caps become one row of the product table.

    Caps are in fen and 0 means "no cap". A negative `balance_floor_minor`
    allows an overdraft down to that balance.
    """

    id: int
    name: str
    kind: ProductKind
    balance_floor_minor: int = 0
    transfer_cap_minor: int = 0
    balance_cap_minor: int = 0
    inflow_daily_minor: int = 0
    inflow_yearly_minor: int = 0
    outflow_daily_minor: int = 0
    outflow_yearly_minor: int = 0

    def __post_init__(self) -> None:
        # The parser has already reported operator mistakes; these catch
        # programs that build a Product by hand with impossible values.
        assert 1 <= self.id <= PRODUCT_ID_MAX, self.id
        assert isinstance(self.kind, ProductKind), self.kind
        limit = BALANCE_FLOOR_MAGNITUDE_MAX_MINOR
        assert -limit <= self.balance_floor_minor <= limit, self.balance_floor_minor
        assert 0 <= self.transfer_cap_minor <= AMOUNT_CAP_MAX_MINOR
        assert 0 <= self.balance_cap_minor <= AMOUNT_CAP_MAX_MINOR
        for field in BUCKET_FIELDS:
            cap_minor = getattr(self, field)
            assert 0 <= cap_minor <= pboc.COUNTER_LIMIT_MINOR, (field, cap_minor)
            if self.kind in _BUCKET_CEILINGS_MINOR:
                _, ceilings = _BUCKET_CEILINGS_MINOR[self.kind]
                assert 0 < cap_minor <= ceilings[field], (field, cap_minor)
            else:
                assert cap_minor == 0, (field, cap_minor)
        if self.kind is ProductKind.CLASS_III:
            assert 0 < self.balance_cap_minor <= pboc.CLASS_III_BALANCE_CAP_MINOR

    def row(self) -> tuple[int, int, int, int, int, int, int, int]:
        """The product table row, in the order of the kernel's layout."""
        return (
            self.balance_floor_minor,
            self.transfer_cap_minor,
            self.balance_cap_minor,
            self.inflow_daily_minor,
            self.inflow_yearly_minor,
            self.outflow_daily_minor,
            self.outflow_yearly_minor,
            PRODUCT_ACCOUNT_KIND_CODES[self.kind],
        )


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel (app, ATM, counter...); its caps become one channel table row.

    `transfer_cap_minor` bounds one transaction, `daily_cap_minor` the debits
    and `inflow_daily_cap_minor` the credits (CODES_INFLOW) per account per
    business day on this channel; 0 means "no cap". `transfer_codes` are the
    codes it may post (None: its kind's DEFAULT_CHANNEL_CODES).
    `log_share_permille` is its quota of the transfer log and of the failure
    ring; 0 means its kind's default (`LOG_SHARE_PERMILLE_DEFAULTS`).
    """

    id: int
    name: str
    kind: ChannelKind
    transfer_cap_minor: int = 0
    daily_cap_minor: int = 0
    inflow_daily_cap_minor: int = 0
    transfer_codes: frozenset[str] | None = None
    log_share_permille: int = 0

    def __post_init__(self) -> None:
        assert 1 <= self.id <= CHANNEL_ID_MAX, self.id
        assert isinstance(self.kind, ChannelKind), self.kind
        assert 0 <= self.transfer_cap_minor <= AMOUNT_CAP_MAX_MINOR
        assert 0 <= self.daily_cap_minor <= pboc.COUNTER_LIMIT_MINOR
        assert 0 <= self.inflow_daily_cap_minor <= pboc.COUNTER_LIMIT_MINOR
        assert self.transfer_codes is None or self.transfer_codes <= ALL_CODES
        assert 0 <= self.log_share_permille <= LOG_SHARE_PERMILLE_MAX, self.log_share_permille

    @property
    def log_share_permille_effective(self) -> int:
        """The quota in force: the rule's, or its kind's default."""
        return self.log_share_permille or LOG_SHARE_PERMILLE_DEFAULTS[self.kind]

    @property
    def codes(self) -> frozenset[str]:
        """The transfer codes the channel may post."""
        if self.transfer_codes is not None:
            return self.transfer_codes
        return DEFAULT_CHANNEL_CODES[self.kind.value]

    @property
    def options(self) -> int:
        """Face to face and the bank itself need no strong authentication; the bank's own
        postings are outside a customer's daily cap."""
        if self.kind is ChannelKind.INTERNAL:
            return CHANNEL_STRONG_AUTH_EXEMPT | CHANNEL_CUSTOMER_CAP_EXEMPT
        if self.kind is ChannelKind.COUNTER:
            return CHANNEL_STRONG_AUTH_EXEMPT
        return 0

    def row(self) -> tuple[int, int, int, int, int]:
        """The channel table row, in the order of the kernel's layout."""
        return (
            self.transfer_cap_minor,
            self.daily_cap_minor,
            self.inflow_daily_cap_minor,
            code_mask(self.codes),
            self.options,
        )


@dataclass(frozen=True, slots=True)
class InternalAccountRule:
    """What the bank's internal accounts of one kind may do: a finite floor (how far
    below zero, i.e. how much money may leave from there) and the codes that may debit
    and credit them."""

    name: str
    kind: int
    balance_floor_minor: int
    debit_codes: frozenset[str]
    credit_codes: frozenset[str]

    def __post_init__(self) -> None:
        assert INTERNAL_ACCOUNT_KINDS[self.name] == self.kind, (self.name, self.kind)
        assert -INTERNAL_FLOOR_MAGNITUDE_MAX_MINOR <= self.balance_floor_minor <= 0
        assert self.debit_codes <= ALL_CODES and self.credit_codes <= ALL_CODES

    def row(self) -> tuple[int, int, int, int, int]:
        return (
            self.balance_floor_minor,
            code_mask(self.debit_codes),
            code_mask(self.credit_codes),
            KIND_FLOOR_ENFORCED | KIND_BANK_SIDE,
            0,
        )


def _internal(
    name: str, floor: int, debit: frozenset[str], credit: frozenset[str]
) -> InternalAccountRule:
    own = _codes("settlement", "reversal")
    return InternalAccountRule(name, INTERNAL_ACCOUNT_KINDS[name], floor, debit | own, credit | own)


# The defaults of `[internal_accounts.NAME]`: each kind takes the codes of its own
# business, settlement between internal accounts and reversals.
DEFAULT_INTERNAL_ACCOUNTS: Final[Mapping[str, InternalAccountRule]] = MappingProxyType(
    {
        rule.name: rule
        for rule in (
            _internal(
                "cash", -1_000_000_000_000, _codes("cash_deposit"), _codes("cash_withdrawal")
            ),
            _internal(
                "clearing",
                -1_000_000_000_000_000,
                _codes("external_transfer_in", "topup_bound", "fixed_deposit"),
                # interest: a Class III account's settled interest past its balance cap
                # goes to the card it is bound to at another bank (ledger/deposits.py).
                _codes("external_transfer_out", "withdraw_bound", "interest"),
            ),
            _internal("settlement", -10_000_000_000, frozenset(), frozenset()),
            _internal("interest_expense", -100_000_000_000, _codes("interest"), frozenset()),
            _internal("fees", 0, frozenset(), _codes("fee")),
            _internal("wealth", -100_000_000_000, _codes("wealth"), _codes("wealth")),
            _internal(
                "loan_funding",
                -1_000_000_000_000_000,
                _codes("loan_disbursement"),
                _codes("loan_repayment", "interest"),
            ),
        )
    }
)


@dataclass(frozen=True, slots=True)
class CustomerLimits:
    """`[customers]`: one customer's debits per business day across all channels but the
    bank's own (0 = none), and the non-counter daily total above which a debit needs
    strong authentication (DOMAIN.md, 2016 No. 261; 0 = never)."""

    daily_outflow_cap_minor: int = 0
    strong_auth_daily_minor: int = STRONG_AUTH_DAILY_MINOR_DEFAULT

    def __post_init__(self) -> None:
        assert 0 <= self.daily_outflow_cap_minor <= AMOUNT_CAP_MAX_MINOR
        assert 0 <= self.strong_auth_daily_minor <= AMOUNT_CAP_MAX_MINOR


@dataclass(frozen=True, slots=True)
class RuleSet:
    """One validated rule file.

    `digest` is the SHA-256 (hex) of the file's bytes: the journal records
    it with the batches the rules applied to, so a replay can prove it used
    the same rules.
    """

    products: Mapping[int, Product]
    channels: Mapping[int, Channel]
    timezone_name: str
    source_path: str
    digest: str
    internal_accounts: Mapping[str, InternalAccountRule] = dataclasses.field(
        default_factory=lambda: DEFAULT_INTERNAL_ACCOUNTS
    )
    customers: CustomerLimits = dataclasses.field(default_factory=CustomerLimits)

    @property
    def timezone(self) -> zoneinfo.ZoneInfo:
        return load_timezone(self.timezone_name)

    def business_day(self, timestamp_ns: int) -> int:
        """The business day of `timestamp_ns` in this rule set's time zone."""
        return business_day(timestamp_ns, self.timezone)

    def product_table(self) -> bytearray:
        """Pack the products for the kernel.

        `(max_product_id + 1) * 64` bytes; the row of product id i starts at
        byte i * 64 and holds 8 little-endian int64: balance_floor_minor,
        transfer_cap_minor, balance_cap_minor, inflow_daily_minor,
        inflow_yearly_minor, outflow_daily_minor, outflow_yearly_minor,
        account_kind (PRODUCT_ACCOUNT_KIND_CODES). Rows of unused ids (and
        id 0) are zeros: no caps, floor 0, no kind (unknown to the kernel;
        id 0 means "no product" and cannot carry Class II/III accounts).
        """
        row_count = max(self.products, default=0) + 1
        table = bytearray(row_count * PRODUCT_ROW_SIZE)
        for product_id, product in self.products.items():
            assert product_id == product.id
            PRODUCT_ROW.pack_into(table, product_id * PRODUCT_ROW_SIZE, *product.row())
        for product_id, product in self.products.items():
            unpacked = PRODUCT_ROW.unpack_from(table, product_id * PRODUCT_ROW_SIZE)
            assert unpacked == product.row(), (product_id, unpacked)
        return table

    def channel_table(self) -> bytearray:
        """Pack the rule table for the kernel (RULE_TABLE_SIZE bytes; ledger/types.py).

        256 channel rows of 32 bytes, row i channel id i: int64 transfer_cap_minor,
        daily_cap_minor, inflow_daily_cap_minor (0 = none), uint32 codes, uint32
        options. Channel 0 means "unspecified/internal": no caps, every code, exempt
        (the registry never gives a caller id 0). Then 32 account-kind rows: int64
        balance floor, uint32 debit codes, credit codes, options (customer kinds from
        CUSTOMER_KIND_CODES, internal kinds from `internal_accounts`; other rows
        allow nothing). Then the bank row: the customer cap, the strong-authentication
        threshold and the counted, inflow and anchored code sets.
        """
        table = bytearray(RULE_TABLE_SIZE)
        everything = code_mask(ALL_CODES)
        exempt = CHANNEL_STRONG_AUTH_EXEMPT | CHANNEL_CUSTOMER_CAP_EXEMPT
        CHANNEL_ROW.pack_into(table, 0, 0, 0, 0, everything, exempt)
        for channel_id, channel in self.channels.items():
            assert channel_id == channel.id
            CHANNEL_ROW.pack_into(table, channel_id * CHANNEL_ROW_SIZE, *channel.row())
        for channel_id, channel in self.channels.items():
            unpacked = CHANNEL_ROW.unpack_from(table, channel_id * CHANNEL_ROW_SIZE)
            assert unpacked == channel.row(), (channel_id, unpacked)
        for kind, (debit, credit, options) in CUSTOMER_KIND_CODES.items():
            row = (0, code_mask(debit), code_mask(credit), options, 0)
            KIND_ROW.pack_into(table, KIND_ROWS_OFFSET + kind * KIND_ROW_SIZE, *row)
        for name, default in DEFAULT_INTERNAL_ACCOUNTS.items():
            rule = self.internal_accounts.get(name, default)
            KIND_ROW.pack_into(table, KIND_ROWS_OFFSET + rule.kind * KIND_ROW_SIZE, *rule.row())
        BANK_ROW.pack_into(
            table,
            BANK_ROW_OFFSET,
            self.customers.daily_outflow_cap_minor,
            self.customers.strong_auth_daily_minor,
            code_mask(CODES_COUNTED),
            code_mask(CODES_INFLOW),
            code_mask(CODES_ANCHORED),
        )
        return table

    def log_quota_table(self) -> bytearray:
        """Pack the log quotas for the kernel.

        Exactly 256 little-endian uint16, entry i for channel id i: its share of
        the transfer log window and of the failure ring, in permille. Channel 0
        (unspecified/internal postings) and unused ids have 0: no quota.
        """
        table = bytearray(CHANNEL_ROW_COUNT * LOG_QUOTA_ROW.size)
        for channel_id, channel in self.channels.items():
            share = channel.log_share_permille_effective
            assert 1 <= share <= LOG_SHARE_PERMILLE_MAX, (channel_id, share)
            LOG_QUOTA_ROW.pack_into(table, channel_id * LOG_QUOTA_ROW.size, share)
        assert LOG_QUOTA_ROW.unpack_from(table, 0) == (0,)
        return table


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Read and validate the rule file at `path`; raise `RuleFileError` on any problem."""
    source_path = os.fspath(path)
    _, data = read_stable(source_path, WatchedFile._error_of, RuleFile.KIND)
    return _parse_bytes(data, source_path)


def parse_rules(text: str, source_name: str) -> RuleSet:
    """Validate rule file text; `source_name` is the file name used in messages."""
    return _parse_bytes(text.encode("utf-8"), source_name)


class RuleFile(WatchedFile[RuleSet]):
    """A rule file that can be re-read while the bank runs.

    `reload_if_changed()` only *prepares* a new `RuleSet`; it never puts one
    into force by itself. The engine must install the new rules between two
    batches and journal the new digest with that batch boundary. Replay and
    replicas apply the same batches to the same state, and they must also
    apply them under the same rules, or a transfer accepted under the old
    caps would be rejected on replay under the new ones (or the reverse) and
    the ledgers would diverge. A rule change applied in the middle of a
    batch, or outside the engine's single writer, breaks that determinism.

    A file that fails validation never replaces the rules in force: the old
    rules stay, the `RuleFileError` is raised to the caller to log (once per
    version of the file; `last_error` keeps it), and the next version of the
    file is tried on a later call. A reload may also not remove a product or
    a channel, nor change a product's kind: accounts opened on that product
    would otherwise fall back to the all-zero row (no caps at all, including
    the PBoC ones) until restart. Retire a product with a restart, after
    moving its accounts.

    Operators should replace the file atomically (write a temporary file in
    the same directory, then rename it over the old one); a file seen to
    change while it is being read is left for the next call.

    Not thread-safe: call it from the engine's owner only.
    """

    KIND = "rule"

    def _parse(self, data: bytes, path: str) -> RuleSet:
        return _parse_bytes(data, path)

    @property
    def rules(self) -> RuleSet:
        return self._value

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; return True if new rules are ready.

        Raises `RuleFileError` (keeping the current rules) the first time a
        new version of the file is bad or unreadable.
        """
        return self._reload(lambda current, new, _data: _check_reload(current, new))


def check_replacement(current: RuleSet, new: RuleSet) -> None:
    """Raise `RuleFileError` when `new` may not replace `current` while the bank runs
    (a product or channel removed, a product's kind changed): the reload check, for an
    approved change of the limit rules (core/services/approvals.py)."""
    _check_reload(current, new)


def _check_reload(current: RuleSet, new: RuleSet) -> None:
    """Refuse reloads that would silently strip accounts of their caps."""
    problems = _Problems(new.source_path)
    for product_id, product in current.products.items():
        replacement = new.products.get(product_id)
        key = f"products.{_key_part(product.name)}"
        if replacement is None:
            problems.add(
                key,
                f"product id {product_id} was removed; a reload cannot remove a product "
                "that accounts may use (restart to retire it)",
            )
        elif replacement.kind is not product.kind:
            problems.add(
                f"products.{_key_part(replacement.name)}.kind",
                f"product id {product_id} changed kind from {product.kind} to "
                f"{replacement.kind}; a reload cannot change a product's kind",
            )
    for channel_id, channel in current.channels.items():
        if channel_id not in new.channels:
            problems.add(
                f"channels.{_key_part(channel.name)}",
                f"channel id {channel_id} was removed; a reload cannot remove a channel "
                "(restart to retire it)",
            )
    problems.raise_if_any()


class _Problems:
    """Collects every problem of one file so they are reported together."""

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self.lines: list[str] = []

    def add(self, key: str, reason: str) -> None:
        self.lines.append(f"{self.source_name}: `{key}`: {reason}")

    def add_line(self, line: str) -> None:
        self.lines.append(f"{self.source_name}{line}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise RuleFileError(self.lines)


class _Absent:
    """Marks a key the file leaves out (distinct from an invalid value)."""


_ABSENT: Final = _Absent()

_KindT = TypeVar("_KindT", ProductKind, ChannelKind)

_TOML_POSITION = re.compile(r"^(?P<reason>.*) \(at line (?P<line>\d+), column (?P<column>\d+)\)$")
_TOML_AT_END = re.compile(r"^(?P<reason>.*) \(at end of document\)$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _parse_bytes(data: bytes, source_name: str) -> RuleSet:
    problems = _Problems(source_name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        problems.add_line(f": not valid UTF-8 (byte offset {error.start})")
        raise RuleFileError(problems.lines) from error
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        problems.add_line(_describe_toml_error(str(error)))
        raise RuleFileError(problems.lines) from error

    _check_unknown_keys(document, _TOP_LEVEL_KEYS, "", problems)
    timezone_name = _parse_timezone(document, problems)
    products = _parse_products(document, problems)
    channels = _parse_channels(document, problems)
    internal_accounts = _parse_internal_accounts(document, problems)
    customers = _parse_customers(document, problems)
    problems.raise_if_any()

    return RuleSet(
        products=MappingProxyType(products),
        channels=MappingProxyType(channels),
        timezone_name=timezone_name,
        source_path=source_name,
        digest=hashlib.sha256(data).hexdigest(),
        internal_accounts=MappingProxyType(internal_accounts),
        customers=customers,
    )


def _describe_toml_error(message: str) -> str:
    match = _TOML_POSITION.match(message)
    if match is not None:
        return f":{match['line']}:{match['column']}: invalid TOML: {match['reason']}"
    match = _TOML_AT_END.match(message)
    if match is not None:
        return f": at end of file: invalid TOML: {match['reason']}"
    return f": invalid TOML: {message}"


def _parse_timezone(document: Mapping[str, Any], problems: _Problems) -> str:
    value = document.get("timezone", DEFAULT_TIMEZONE_NAME)
    if not isinstance(value, str):
        problems.add("timezone", f"expected a time zone name string, got {_describe(value)}")
        return DEFAULT_TIMEZONE_NAME
    zone = open_timezone(value)
    if isinstance(zone, str):
        problems.add("timezone", f"{value!r}: {zone}")
    return value


def _named_tables(
    document: Mapping[str, Any], group: str, noun: str, problems: _Problems
) -> list[tuple[str, str, Mapping[str, Any]]]:
    """Return (name, dotted prefix, table) for every `[group.NAME]` table."""
    tables = document.get(group, {})
    if not isinstance(tables, dict):
        expected = f"expected a table of named {noun}s ([{group}.NAME])"
        problems.add(group, f"{expected}, got {_describe(tables)}")
        return []
    named: list[tuple[str, str, Mapping[str, Any]]] = []
    for name, table in tables.items():
        prefix = f"{group}.{_key_part(name)}"
        if not isinstance(table, dict):
            problems.add(prefix, f"expected a table ([{prefix}]), got {_describe(table)}")
            continue
        named.append((name, prefix, table))
    return named


def _claim_id(
    names_by_id: dict[int, str],
    group: str,
    noun: str,
    item_id: int,
    prefix: str,
    name: str,
    problems: _Problems,
) -> bool:
    other = names_by_id.get(item_id)
    if other is not None:
        problems.add(
            f"{prefix}.id",
            f"duplicate {noun} id {item_id} (already used by `{group}.{_key_part(other)}`)",
        )
        return False
    names_by_id[item_id] = name
    return True


def _parse_products(document: Mapping[str, Any], problems: _Problems) -> dict[int, Product]:
    products: dict[int, Product] = {}
    names_by_id: dict[int, str] = {}
    for name, prefix, table in _named_tables(document, "products", "product", problems):
        product_id = _parse_id(table, prefix, PRODUCT_ID_MAX, problems)
        product = _parse_product(name, table, prefix, product_id, problems)
        if product_id is None:
            continue
        claimed = _claim_id(names_by_id, "products", "product", product_id, prefix, name, problems)
        if claimed and product is not None:
            products[product_id] = product
    return products


def _parse_channels(document: Mapping[str, Any], problems: _Problems) -> dict[int, Channel]:
    channels: dict[int, Channel] = {}
    names_by_id: dict[int, str] = {}
    for name, prefix, table in _named_tables(document, "channels", "channel", problems):
        channel_id = _parse_id(table, prefix, CHANNEL_ID_MAX, problems)
        channel = _parse_channel(name, table, prefix, channel_id, problems)
        if channel_id is None:
            continue
        claimed = _claim_id(names_by_id, "channels", "channel", channel_id, prefix, name, problems)
        if claimed and channel is not None:
            channels[channel_id] = channel
    return channels


def _parse_product(
    name: str, table: Mapping[str, Any], prefix: str, product_id: int | None, problems: _Problems
) -> Product | None:
    """Validate one product; None if it has a problem (already reported)."""
    problem_count = len(problems.lines)
    _check_unknown_keys(table, _PRODUCT_KEYS, prefix, problems)
    kind = _parse_kind(table, ProductKind, prefix, problems)

    floor_key = f"{prefix}.balance_floor_minor"
    balance_floor = _read_money(table, "balance_floor_minor", floor_key, problems)
    if isinstance(balance_floor, _Absent):
        balance_floor = 0
    elif balance_floor is not None and kind is ProductKind.INTERNAL:
        limit = INTERNAL_FLOOR_MAGNITUDE_MAX_MINOR
        if not -limit <= balance_floor <= limit:
            problems.add(
                floor_key,
                f"{balance_floor} is outside -{limit}..{limit}: an internal product's floor "
                "is finite (see [internal_accounts] for each internal kind's own floor)",
            )
            balance_floor = None
    elif balance_floor is not None:
        limit = BALANCE_FLOOR_MAGNITUDE_MAX_MINOR
        if not -limit <= balance_floor <= limit:
            problems.add(
                floor_key,
                f"{balance_floor} is outside -{limit}..{limit} "
                "(2**62 keeps balance arithmetic inside int64)",
            )
            balance_floor = None

    transfer_cap = _read_cap(table, "transfer_cap_minor", prefix, AMOUNT_CAP_MAX_MINOR, problems)
    if isinstance(transfer_cap, _Absent):
        transfer_cap = 0

    balance_cap = _parse_balance_cap(table, prefix, kind, problems)
    if (
        balance_floor is not None
        and balance_cap is not None
        and balance_cap > 0
        and balance_floor > balance_cap
    ):
        problems.add(
            floor_key,
            f"{balance_floor} is above balance_cap_minor {balance_cap}: "
            "no balance would be allowed",
        )

    buckets = _parse_buckets(table, prefix, kind, problems)

    if len(problems.lines) > problem_count or product_id is None or kind is None:
        return None
    assert balance_floor is not None and transfer_cap is not None and balance_cap is not None
    assert buckets is not None
    return Product(
        id=product_id,
        name=name,
        kind=kind,
        balance_floor_minor=balance_floor,
        transfer_cap_minor=transfer_cap,
        balance_cap_minor=balance_cap,
        **buckets,
    )


def _parse_balance_cap(
    table: Mapping[str, Any], prefix: str, kind: ProductKind | None, problems: _Problems
) -> int | None:
    key = f"{prefix}.balance_cap_minor"
    value = _read_cap(table, "balance_cap_minor", prefix, AMOUNT_CAP_MAX_MINOR, problems)
    if kind is not ProductKind.CLASS_III:
        return 0 if isinstance(value, _Absent) else value
    ceiling = pboc.CLASS_III_BALANCE_CAP_MINOR
    if isinstance(value, _Absent):
        return ceiling
    if value is None:
        return None
    if value == 0:
        problems.add(
            key,
            f"0 (no cap) is looser than the PBoC Class III balance ceiling {ceiling}; "
            "omit the key to apply the ceiling",
        )
        return None
    if value > ceiling:
        problems.add(key, f"{value} exceeds the PBoC Class III balance ceiling {ceiling}")
        return None
    return value


def _parse_buckets(
    table: Mapping[str, Any], prefix: str, kind: ProductKind | None, problems: _Problems
) -> dict[str, int] | None:
    """Return the four bucket caps, defaulting Class II/III ones to the PBoC ceilings."""
    buckets: dict[str, int] = {}
    valid = True
    for field in BUCKET_FIELDS:
        key = f"{prefix}.{field}"
        value = _read_cap(table, field, prefix, pboc.COUNTER_LIMIT_MINOR, problems)
        if value is None:
            valid = False
            continue
        if kind is None:
            continue  # the kind is already reported; nothing to compare with
        entry = _BUCKET_CEILINGS_MINOR.get(kind)
        if entry is None:
            if not isinstance(value, _Absent):
                problems.add(
                    key,
                    f"kind {kind} has no inflow/outflow buckets (only class_ii and class_iii do); "
                    "remove this key",
                )
                valid = False
            buckets[field] = 0
            continue
        label, ceilings = entry
        ceiling = ceilings[field]
        if isinstance(value, _Absent):
            buckets[field] = ceiling
        elif value == 0:
            problems.add(
                key,
                f"0 (no cap) is looser than the PBoC {label} ceiling {ceiling}; "
                "omit the key to apply the ceiling",
            )
            valid = False
        elif value > ceiling:
            problems.add(key, f"{value} exceeds the PBoC {label} ceiling {ceiling}")
            valid = False
        else:
            buckets[field] = value
    return buckets if valid and kind is not None else None


def _parse_channel(
    name: str, table: Mapping[str, Any], prefix: str, channel_id: int | None, problems: _Problems
) -> Channel | None:
    """Validate one channel; None if it has a problem (already reported)."""
    problem_count = len(problems.lines)
    _check_unknown_keys(table, _CHANNEL_KEYS, prefix, problems)
    kind = _parse_kind(table, ChannelKind, prefix, problems)
    transfer_cap = _read_cap(table, "transfer_cap_minor", prefix, AMOUNT_CAP_MAX_MINOR, problems)
    daily_cap = _read_cap(table, "daily_cap_minor", prefix, pboc.COUNTER_LIMIT_MINOR, problems)
    inflow_cap = _read_cap(
        table, "inflow_daily_cap_minor", prefix, pboc.COUNTER_LIMIT_MINOR, problems
    )
    codes = _read_codes(table, "transfer_codes", prefix, problems)
    log_share = _read_log_share(table, prefix, problems)
    if len(problems.lines) > problem_count or channel_id is None or kind is None:
        return None
    assert transfer_cap is not None and daily_cap is not None and inflow_cap is not None
    assert log_share is not None
    return Channel(
        id=channel_id,
        name=name,
        kind=kind,
        transfer_cap_minor=0 if isinstance(transfer_cap, _Absent) else transfer_cap,
        daily_cap_minor=0 if isinstance(daily_cap, _Absent) else daily_cap,
        inflow_daily_cap_minor=0 if isinstance(inflow_cap, _Absent) else inflow_cap,
        transfer_codes=None if isinstance(codes, _Absent) else codes,
        log_share_permille=log_share,
    )


def _read_codes(
    table: Mapping[str, Any], field: str, prefix: str, problems: _Problems
) -> frozenset[str] | _Absent | None:
    """A list of transfer code names (TRANSFER_CODES), each at most once."""
    key = f"{prefix}.{field}"
    if field not in table:
        return _ABSENT
    value = table[field]
    expected = "a list of transfer code names (" + ", ".join(TRANSFER_CODES) + ")"
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.add(key, f"expected {expected}, got {_describe(value)}")
        return None
    unknown = [item for item in value if item not in TRANSFER_CODES]
    if unknown:
        problems.add(key, f"unknown transfer code {unknown[0]!r} (expected one of: "
                     + ", ".join(TRANSFER_CODES) + ")")  # fmt: skip
        return None
    if len(set(value)) != len(value):
        problems.add(key, "a transfer code is listed twice")
        return None
    return frozenset(value)


def _parse_internal_accounts(
    document: Mapping[str, Any], problems: _Problems
) -> dict[str, InternalAccountRule]:
    """`[internal_accounts.NAME]` over the defaults; every floor finite and at most
    INTERNAL_FLOOR_MAGNITUDE_MAX_MINOR deep."""
    rules = dict(DEFAULT_INTERNAL_ACCOUNTS)
    for name, prefix, table in _named_tables(
        document, "internal_accounts", "internal account kind", problems
    ):
        default = DEFAULT_INTERNAL_ACCOUNTS.get(name)
        if default is None:
            problems.add(
                prefix,
                "unknown internal account kind (expected one of: "
                + ", ".join(INTERNAL_ACCOUNT_KINDS) + ")",
            )  # fmt: skip
            continue
        problem_count = len(problems.lines)
        _check_unknown_keys(table, _INTERNAL_ACCOUNT_KEYS, prefix, problems)
        floor_key = f"{prefix}.balance_floor_minor"
        floor = _read_money(table, "balance_floor_minor", floor_key, problems)
        if isinstance(floor, _Absent):
            floor = default.balance_floor_minor
        elif floor is not None and not -INTERNAL_FLOOR_MAGNITUDE_MAX_MINOR <= floor <= 0:
            problems.add(
                floor_key,
                f"{floor} is outside -{INTERNAL_FLOOR_MAGNITUDE_MAX_MINOR}..0: an internal "
                "account's floor is finite (how much may leave it), never above zero",
            )
        debit = _read_codes(table, "debit_codes", prefix, problems)
        credit = _read_codes(table, "credit_codes", prefix, problems)
        if len(problems.lines) > problem_count:
            continue
        assert floor is not None and debit is not None and credit is not None
        rules[name] = InternalAccountRule(
            name,
            default.kind,
            floor,
            default.debit_codes if isinstance(debit, _Absent) else debit,
            default.credit_codes if isinstance(credit, _Absent) else credit,
        )
    return rules


def _parse_customers(document: Mapping[str, Any], problems: _Problems) -> CustomerLimits:
    table = document.get("customers", {})
    if not isinstance(table, dict):
        problems.add("customers", f"expected a table ([customers]), got {_describe(table)}")
        return CustomerLimits()
    _check_unknown_keys(table, _CUSTOMERS_KEYS, "customers", problems)
    cap = _read_cap(table, "daily_outflow_cap_minor", "customers", AMOUNT_CAP_MAX_MINOR, problems)
    strong = _read_cap(
        table, "strong_auth_daily_minor", "customers", AMOUNT_CAP_MAX_MINOR, problems
    )
    if cap is None or strong is None:
        return CustomerLimits()
    return CustomerLimits(
        daily_outflow_cap_minor=0 if isinstance(cap, _Absent) else cap,
        strong_auth_daily_minor=(
            STRONG_AUTH_DAILY_MINOR_DEFAULT if isinstance(strong, _Absent) else strong
        ),
    )


def _read_log_share(table: Mapping[str, Any], prefix: str, problems: _Problems) -> int | None:
    """A channel's share of the transfer log: an integer 1..900 permille (0: its kind's)."""
    key = f"{prefix}.log_share_permille"
    if "log_share_permille" not in table:
        return 0
    value = table["log_share_permille"]
    if not _is_integer(value):
        problems.add(
            key, f"expected an integer 1..{LOG_SHARE_PERMILLE_MAX}, got {_describe(value)}"
        )
        return None
    assert isinstance(value, int)
    if not 1 <= value <= LOG_SHARE_PERMILLE_MAX:
        problems.add(
            key,
            f"{value} is out of range 1..{LOG_SHARE_PERMILLE_MAX} (permille of the transfer "
            "log; no channel may hold all of it)",
        )
        return None
    return value


def _parse_id(
    table: Mapping[str, Any], prefix: str, id_max: int, problems: _Problems
) -> int | None:
    key = f"{prefix}.id"
    if "id" not in table:
        problems.add(key, f"missing required key (an integer 1..{id_max})")
        return None
    value = table["id"]
    if not _is_integer(value):
        problems.add(key, f"expected an integer 1..{id_max}, got {_describe(value)}")
        return None
    assert isinstance(value, int)
    if not 1 <= value <= id_max:
        problems.add(key, f"{value} is out of range 1..{id_max}")
        return None
    return value


def _parse_kind(
    table: Mapping[str, Any], kinds: type[_KindT], prefix: str, problems: _Problems
) -> _KindT | None:
    key = f"{prefix}.kind"
    names = [kind.value for kind in kinds]
    expected = ", ".join(names)
    if "kind" not in table:
        problems.add(key, f"missing required key (one of: {expected})")
        return None
    value = table["kind"]
    if not isinstance(value, str):
        problems.add(key, f"expected a string (one of: {expected}), got {_describe(value)}")
        return None
    if value not in names:
        problems.add(key, f"unknown kind {value!r} (expected one of: {expected})")
        return None
    return kinds(value)


def _read_cap(
    table: Mapping[str, Any], field: str, prefix: str, cap_max: int, problems: _Problems
) -> int | _Absent | None:
    """Read a cap: an integer number of fen in 0..cap_max, 0 meaning none."""
    key = f"{prefix}.{field}"
    value = _read_money(table, field, key, problems)
    if value is None or isinstance(value, _Absent):
        return value
    if value < 0:
        problems.add(key, f"{value} is negative; caps are >= 0 (0 = no cap)")
        return None
    if value > cap_max:
        if cap_max == pboc.COUNTER_LIMIT_MINOR:
            problems.add(key, f"{value} exceeds the int32 limit-counter range {cap_max}")
        else:
            problems.add(key, f"{value} exceeds the largest allowed cap {cap_max}")
        return None
    return value


def _read_money(
    table: Mapping[str, Any], field: str, key: str, problems: _Problems
) -> int | _Absent | None:
    if field not in table:
        return _ABSENT
    value = table[field]
    if isinstance(value, float):
        reason = "money is an integer number of fen (1 CNY = 100 fen)"
        problems.add(key, f"{reason}, got {_describe(value)}")
        return None
    if not _is_integer(value):
        problems.add(key, f"expected an integer number of fen, got {_describe(value)}")
        return None
    assert isinstance(value, int)
    return value


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # bool is an int subclass


def _check_unknown_keys(
    table: Mapping[str, Any], allowed: Sequence[str], prefix: str, problems: _Problems
) -> None:
    for name in table:
        if name in allowed:
            continue
        key = f"{prefix}.{_key_part(name)}" if prefix else _key_part(name)
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            problems.add(key, f"unknown key (did you mean `{close[0]}`?)")
        else:
            problems.add(key, f"unknown key (expected one of: {', '.join(allowed)})")


def _key_part(name: str) -> str:
    """Spell a key as TOML would, so dotted keys in messages stay unambiguous."""
    return name if _BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)


def _describe(value: object) -> str:
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
    return f"a {type(value).__name__} ({value})"  # TOML dates and times
