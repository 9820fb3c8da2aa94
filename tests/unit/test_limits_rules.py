"""Limit rule files, the kernel's packed tables, and the business calendar."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limits import (
    CHANNEL_ROW_COUNT,
    PRODUCT_ROW_SIZE,
    Product,
    ProductKind,
    RuleFile,
    RuleFileError,
    business_day,
    day_of_date,
    load_rules,
    load_timezone,
    parse_rules,
    pboc,
    year_of_day,
)
from limits.rules import BUCKET_FIELDS, TRANSFER_CODES
from tests.repo_paths import REPO_ROOT

REPO = REPO_ROOT
EXAMPLE = REPO / "examples" / "limits.toml"
EPOCH = date(2000, 1, 1)
NS_PER_S = 1_000_000_000

CLASS_II_CEILINGS = {
    "inflow_daily_minor": pboc.CLASS_II_INFLOW_DAILY_MINOR,
    "inflow_yearly_minor": pboc.CLASS_II_INFLOW_YEARLY_MINOR,
    "outflow_daily_minor": pboc.CLASS_II_OUTFLOW_DAILY_MINOR,
    "outflow_yearly_minor": pboc.CLASS_II_OUTFLOW_YEARLY_MINOR,
}
CLASS_III_CEILINGS = {
    "inflow_daily_minor": pboc.CLASS_III_INFLOW_DAILY_MINOR,
    "inflow_yearly_minor": pboc.CLASS_III_INFLOW_YEARLY_MINOR,
    "outflow_daily_minor": pboc.CLASS_III_OUTFLOW_DAILY_MINOR,
    "outflow_yearly_minor": pboc.CLASS_III_OUTFLOW_YEARLY_MINOR,
}
CEILINGS = {"class_ii": CLASS_II_CEILINGS, "class_iii": CLASS_III_CEILINGS}

PRODUCT_MONEY_FIELDS = (
    "balance_floor_minor",
    "transfer_cap_minor",
    "balance_cap_minor",
    *BUCKET_FIELDS,
)
CHANNEL_MONEY_FIELDS = ("transfer_cap_minor", "daily_cap_minor")


def problems_of(text: str) -> list[str]:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(text, "limits.toml")
    assert str(caught.value) == "\n".join(caught.value.problems)
    return list(caught.value.problems)


def product(kind: str, extra: str = "", name: str = "p") -> str:
    return f'[products.{name}]\nid = 1\nkind = "{kind}"\n{extra}'


def channel(extra: str = "", name: str = "c", channel_id: int = 1) -> str:
    return f'[channels.{name}]\nid = {channel_id}\nkind = "app"\n{extra}'


# --- the example file and the packed tables --------------------------------------------


def test_example_file_loads_with_expected_products_and_channels() -> None:
    """The shipped default rules validate, and say what a bank would expect them to say."""
    rules = load_rules(EXAMPLE)
    assert rules.timezone_name == "Asia/Shanghai"
    assert rules.source_path == str(EXAMPLE)
    assert {p.name: p.id for p in rules.products.values()} == {
        "class_i_standard": 1,
        "class_ii_standard": 2,
        "class_iii_standard": 3,
        "savings_demand": 4,
        "fixed_deposit": 5,
        "consumer_loan": 6,
        "internal_ledger": 7,
    }
    assert [c.kind for c in rules.channels.values()] == [
        "wechat",
        "app",
        "counter",
        "atm",
        "open_api",
        "internal",
        "atm",  # pos: POS terminals over ISO 8583 consent with the card's PIN, as ATMs do
    ]
    class_iii = rules.products[3]
    assert class_iii.kind is ProductKind.CLASS_III
    assert class_iii.balance_cap_minor == pboc.CLASS_III_BALANCE_CAP_MINOR


def test_product_table_has_the_kernel_layout() -> None:
    """The product table is (max id + 1) rows of 8 little-endian int64 in the contract order."""
    table = load_rules(EXAMPLE).product_table()
    assert isinstance(table, bytearray)
    assert len(table) == (7 + 1) * 64
    rows = [struct.unpack_from("<qqqqqqqq", table, index * 64) for index in range(8)]
    # floor, transfer cap, balance cap, in/day, in/year, out/day, out/year, account kind
    assert rows == [
        (0, 0, 0, 0, 0, 0, 0, 0),
        (0, 0, 0, 0, 0, 0, 0, 1),
        (0, 0, 0, 1_000_000, 20_000_000, 1_000_000, 20_000_000, 2),
        (0, 0, 200_000, 500_000, 10_000_000, 200_000, 5_000_000, 3),
        (0, 0, 0, 0, 0, 0, 0, 4),
        (0, 0, 0, 0, 0, 0, 0, 5),
        (-100_000_000, 0, 0, 0, 0, 0, 0, 6),
        (0, 0, 0, 0, 0, 0, 0, 16),  # internal accounts: bounded by their kind's floor
    ]
    # Little-endian, byte for byte: Class III's balance cap at offset 3 * 64 + 16.
    assert table[3 * 64 + 16 : 3 * 64 + 24] == (200_000).to_bytes(8, "little", signed=True)
    assert table[6 * 64 : 6 * 64 + 8] == (-100_000_000).to_bytes(8, "little", signed=True)


def test_channel_table_has_the_kernel_layout() -> None:
    """The rule table is 256 channel rows of (int64 transfer cap, daily cap, credit cap,
    uint32 codes, uint32 options), 32 account-kind rows and the bank row, little-endian."""
    table = load_rules(EXAMPLE).channel_table()
    assert isinstance(table, bytearray)
    assert len(table) == 256 * 32 + 32 * 32 + 32 == CHANNEL_ROW_COUNT * 32 + 32 * 32 + 32
    rows = [struct.unpack_from("<qqq", table, index * 32) for index in range(256)]
    assert rows[:8] == [
        (0, 0, 0),  # channel 0: unspecified/internal, no caps
        (2_000_000, 5_000_000, 5_000_000),
        (5_000_000, 20_000_000, 20_000_000),
        (0, 0, 0),
        (2_000_000, 2_000_000, 5_000_000),
        (500_000, 5_000_000, 10_000_000),
        (0, 0, 0),
        (5_000_000, 10_000_000, 0),  # pos
    ]
    assert all(row == (0, 0, 0) for row in rows[8:])
    assert table[4 * 32 + 8 : 4 * 32 + 16] == (2_000_000).to_bytes(8, "little", signed=True)
    codes = {index: struct.unpack_from("<II", table, index * 32 + 24) for index in range(8)}
    atm = sum(
        1 << TRANSFER_CODES[name]
        for name in ("cash_deposit", "cash_withdrawal", "transfer", "reversal")
    )
    assert codes[4] == (atm, 0)  # an ATM: cash, transfers, reversals; strong authentication
    pos = (1 << TRANSFER_CODES["payment"]) | (1 << TRANSFER_CODES["reversal"])
    assert codes[7] == (pos, 0)  # a POS terminal: payments to merchants and their reversals
    assert codes[3][1] == 1  # the counter: face to face, no strong-authentication tally
    assert codes[6] == (0x1FFFE, 3)  # the bank itself: every code, outside customer limits
    assert not codes[1][0] & (1 << TRANSFER_CODES["fee"])
    settlement = struct.unpack_from("<qIII", table, 256 * 32 + 18 * 32)
    assert settlement == (
        -10_000_000_000,
        (1 << TRANSFER_CODES["settlement"]) | (1 << TRANSFER_CODES["reversal"]),
        (1 << TRANSFER_CODES["settlement"]) | (1 << TRANSFER_CODES["reversal"]),
        3,  # floor enforced, bank side
    )
    assert struct.unpack_from("<qq", table, 256 * 32 + 32 * 32) == (100_000_000, 5_000_000)


def test_product_table_size_follows_the_largest_id_and_unused_rows_are_zero() -> None:
    """Rows are indexed by id, so a sparse id set leaves zero rows (no caps, floor 0)."""
    rules = parse_rules(
        '[products.big]\nid = 300\nkind = "class_i"\ntransfer_cap_minor = 7\n', "limits.toml"
    )
    table = rules.product_table()
    assert len(table) == 301 * PRODUCT_ROW_SIZE
    assert struct.unpack_from("<8q", table, 300 * 64) == (0, 7, 0, 0, 0, 0, 0, 1)
    assert table[: 300 * 64] == bytes(300 * 64)
    empty = parse_rules("", "limits.toml")
    assert empty.product_table() == bytearray(64)
    assert len(empty.channel_table()) == 9248
    assert empty.channel_table()[32 : 256 * 32] == bytes(255 * 32)  # no channel but 0
    assert empty.timezone_name == "Asia/Shanghai"


def test_digest_is_the_sha256_of_the_file_bytes(tmp_path: Path) -> None:
    """The digest the journal records identifies the exact bytes the rules came from."""
    path = tmp_path / "rules.toml"
    data = EXAMPLE.read_bytes()
    path.write_bytes(data)
    rules = load_rules(path)
    assert rules.digest == hashlib.sha256(data).hexdigest()
    assert parse_rules(data.decode(), "x.toml").digest == rules.digest
    assert rules.source_path == str(path)


def test_omitted_bucket_caps_default_to_the_pboc_ceilings() -> None:
    """Leaving a Class II/III cap out applies the regulation; it never means 'no cap'."""
    rules = parse_rules(
        product("class_ii", name="two") + '[products.three]\nid = 2\nkind = "class_iii"\n',
        "limits.toml",
    )
    two, three = rules.products[1], rules.products[2]
    assert {field: getattr(two, field) for field in BUCKET_FIELDS} == CLASS_II_CEILINGS
    assert {field: getattr(three, field) for field in BUCKET_FIELDS} == CLASS_III_CEILINGS
    assert two.balance_cap_minor == 0
    assert three.balance_cap_minor == pboc.CLASS_III_BALANCE_CAP_MINOR


def test_stricter_caps_than_pboc_are_accepted() -> None:
    """A bank may be stricter than the regulation: smaller positive caps load unchanged."""
    rules = parse_rules(
        product(
            "class_iii",
            "inflow_daily_minor = 1\n"
            "outflow_yearly_minor = 4_999_999\n"
            "balance_cap_minor = 50_000\n",
        ),
        "limits.toml",
    )
    row = struct.unpack_from("<8q", rules.product_table(), 64)
    assert row == (0, 0, 50_000, 1, 10_000_000, 200_000, 4_999_999, 3)


# --- validation: one precise line per problem -----------------------------------------

INT32_MAX = 2**31 - 1

VALIDATION_CASES = {
    "syntax error": (
        product("class_i", "transfer_cap_minor = 1 2\n"),
        "limits.toml:4:24: invalid TOML: Expected newline or end of document after a statement",
    ),
    "duplicate table": (
        '[products.a]\nid = 1\n[products.a]\nkind = "class_i"\n',
        "limits.toml:3:12: invalid TOML: Cannot declare ('products', 'a') twice",
    ),
    "truncated file": (
        "timezone = ",
        "limits.toml: at end of file: invalid TOML: Invalid value",
    ),
    "unknown top-level key": (
        'timezon = "Asia/Shanghai"\n',
        "limits.toml: `timezon`: unknown key (did you mean `timezone`?)",
    ),
    "unknown product key (typo)": (
        product("class_ii", "outfow_daily_minor = 100\n"),
        "limits.toml: `products.p.outfow_daily_minor`: unknown key "
        "(did you mean `outflow_daily_minor`?)",
    ),
    "unknown product key": (
        product("class_i", 'colour = "red"\n'),
        "limits.toml: `products.p.colour`: unknown key (expected one of: id, kind, "
        "balance_floor_minor, transfer_cap_minor, balance_cap_minor, inflow_daily_minor, "
        "inflow_yearly_minor, outflow_daily_minor, outflow_yearly_minor)",
    ),
    "unknown channel key": (
        channel("daily_limit_minor = 5\n"),
        "limits.toml: `channels.c.daily_limit_minor`: unknown key "
        "(did you mean `daily_cap_minor`?)",
    ),
    "boolean id": (
        '[products.p]\nid = true\nkind = "class_i"\n',
        "limits.toml: `products.p.id`: expected an integer 1..65535, got a boolean (true)",
    ),
    "boolean money": (
        product("class_i", "transfer_cap_minor = false\n"),
        "limits.toml: `products.p.transfer_cap_minor`: expected an integer number of fen, "
        "got a boolean (false)",
    ),
    "float money": (
        product("class_i", "transfer_cap_minor = 100.5\n"),
        "limits.toml: `products.p.transfer_cap_minor`: money is an integer number of fen "
        "(1 CNY = 100 fen), got a float (100.5)",
    ),
    "float money on a channel": (
        channel("daily_cap_minor = 1e6\n"),
        "limits.toml: `channels.c.daily_cap_minor`: money is an integer number of fen "
        "(1 CNY = 100 fen), got a float (1000000.0)",
    ),
    "string money": (
        product("class_i", 'balance_floor_minor = "-500"\n'),
        "limits.toml: `products.p.balance_floor_minor`: expected an integer number of fen, "
        "got a string ('-500')",
    ),
    "float id": (
        '[channels.c]\nid = 1.0\nkind = "atm"\n',
        "limits.toml: `channels.c.id`: expected an integer 1..255, got a float (1.0)",
    ),
    "negative cap": (
        product("class_i", "transfer_cap_minor = -1\n"),
        "limits.toml: `products.p.transfer_cap_minor`: -1 is negative; caps are >= 0 (0 = no cap)",
    ),
    "negative bucket cap": (
        product("class_ii", "inflow_yearly_minor = -20\n"),
        "limits.toml: `products.p.inflow_yearly_minor`: -20 is negative; caps are >= 0 "
        "(0 = no cap)",
    ),
    "channel daily cap above the int32 counter": (
        channel(f"daily_cap_minor = {INT32_MAX + 1}\n"),
        f"limits.toml: `channels.c.daily_cap_minor`: {INT32_MAX + 1} exceeds the int32 "
        f"limit-counter range {INT32_MAX}",
    ),
    "transfer cap above 2**62": (
        channel(f"transfer_cap_minor = {2**62 + 1}\n"),
        f"limits.toml: `channels.c.transfer_cap_minor`: {2**62 + 1} exceeds the largest "
        f"allowed cap {2**62}",
    ),
    "class II inflow above PBoC": (
        '[products.class_ii_standard]\nid = 2\nkind = "class_ii"\ninflow_daily_minor = 2000000\n',
        "limits.toml: `products.class_ii_standard.inflow_daily_minor`: 2000000 exceeds the "
        "PBoC Class II ceiling 1000000",
    ),
    "class II outflow yearly above PBoC": (
        product("class_ii", "outflow_yearly_minor = 20_000_001\n"),
        "limits.toml: `products.p.outflow_yearly_minor`: 20000001 exceeds the PBoC Class II "
        "ceiling 20000000",
    ),
    "class III outflow daily above PBoC": (
        product("class_iii", "outflow_daily_minor = 200_001\n"),
        "limits.toml: `products.p.outflow_daily_minor`: 200001 exceeds the PBoC Class III "
        "ceiling 200000",
    ),
    "class II bucket cap 0 means none": (
        product("class_ii", "outflow_daily_minor = 0\n"),
        "limits.toml: `products.p.outflow_daily_minor`: 0 (no cap) is looser than the PBoC "
        "Class II ceiling 1000000; omit the key to apply the ceiling",
    ),
    "bucket cap on class I": (
        product("class_i", "inflow_daily_minor = 100\n"),
        "limits.toml: `products.p.inflow_daily_minor`: kind class_i has no inflow/outflow "
        "buckets (only class_ii and class_iii do); remove this key",
    ),
    "bucket cap on savings, even 0": (
        product("savings", "outflow_yearly_minor = 0\n"),
        "limits.toml: `products.p.outflow_yearly_minor`: kind savings has no inflow/outflow "
        "buckets (only class_ii and class_iii do); remove this key",
    ),
    "class III balance cap 0": (
        product("class_iii", "balance_cap_minor = 0\n"),
        "limits.toml: `products.p.balance_cap_minor`: 0 (no cap) is looser than the PBoC "
        "Class III balance ceiling 200000; omit the key to apply the ceiling",
    ),
    "class III balance cap above PBoC": (
        product("class_iii", "balance_cap_minor = 200_001\n"),
        "limits.toml: `products.p.balance_cap_minor`: 200001 exceeds the PBoC Class III "
        "balance ceiling 200000",
    ),
    "duplicate product id": (
        product("class_i", name="a") + product("class_ii", name="b"),
        "limits.toml: `products.b.id`: duplicate product id 1 (already used by `products.a`)",
    ),
    "duplicate channel id": (
        channel(name="a", channel_id=9) + channel(name="b", channel_id=9),
        "limits.toml: `channels.b.id`: duplicate channel id 9 (already used by `channels.a`)",
    ),
    "product id 0": (
        '[products.p]\nid = 0\nkind = "class_i"\n',
        "limits.toml: `products.p.id`: 0 is out of range 1..65535",
    ),
    "product id 65536": (
        '[products.p]\nid = 65536\nkind = "class_i"\n',
        "limits.toml: `products.p.id`: 65536 is out of range 1..65535",
    ),
    "channel id 0": (
        channel(channel_id=0),
        "limits.toml: `channels.c.id`: 0 is out of range 1..255",
    ),
    "channel id 256": (
        channel(channel_id=256),
        "limits.toml: `channels.c.id`: 256 is out of range 1..255",
    ),
    "missing id": (
        '[products.p]\nkind = "class_i"\n',
        "limits.toml: `products.p.id`: missing required key (an integer 1..65535)",
    ),
    "missing kind": (
        "[channels.c]\nid = 1\n",
        "limits.toml: `channels.c.kind`: missing required key (one of: wechat, app, counter, "
        "atm, open_api, internal)",
    ),
    "unknown product kind": (
        product("class_iv"),
        "limits.toml: `products.p.kind`: unknown kind 'class_iv' (expected one of: class_i, "
        "class_ii, class_iii, savings, fixed_deposit, loan, internal)",
    ),
    "unknown timezone": (
        'timezone = "Asia/Shanghia"\n',
        "limits.toml: `timezone`: 'Asia/Shanghia': unknown time zone (not in the tz database)",
    ),
    "timezone path escape": (
        'timezone = "../../etc/passwd"\n',
        "limits.toml: `timezone`: '../../etc/passwd': not a valid time zone name (ZoneInfo "
        "keys must refer to subdirectories of TZPATH, got: ../../etc/passwd)",
    ),
    "timezone not a string": (
        "timezone = 8\n",
        "limits.toml: `timezone`: expected a time zone name string, got an integer (8)",
    ),
    "balance floor above 2**62": (
        product("loan", f"balance_floor_minor = {2**62 + 1}\n"),
        f"limits.toml: `products.p.balance_floor_minor`: {2**62 + 1} is outside "
        f"-{2**62}..{2**62} (2**62 keeps balance arithmetic inside int64)",
    ),
    "balance floor below -2**62": (
        product("loan", f"balance_floor_minor = {-(2**62) - 1}\n"),
        f"limits.toml: `products.p.balance_floor_minor`: {-(2**62) - 1} is outside "
        f"-{2**62}..{2**62} (2**62 keeps balance arithmetic inside int64)",
    ),
    "balance floor above the balance cap": (
        product("class_iii", "balance_floor_minor = 300_000\n"),
        "limits.toml: `products.p.balance_floor_minor`: 300000 is above balance_cap_minor "
        "200000: no balance would be allowed",
    ),
    "products not a table": (
        "products = 3\n",
        "limits.toml: `products`: expected a table of named products ([products.NAME]), "
        "got an integer (3)",
    ),
    "products as an array of tables": (
        '[[channels]]\nid = 1\nkind = "atm"\n',
        "limits.toml: `channels`: expected a table of named channels ([channels.NAME]), "
        "got an array",
    ),
    "product not a table": (
        "[products]\nbasic = 1\n",
        "limits.toml: `products.basic`: expected a table ([products.basic]), got an integer (1)",
    ),
    "quoted product name": (
        '[products."class.ii"]\nid = 1\nkind = "class_ii"\ninflow_daily_minor = 1_000_001\n',
        'limits.toml: `products."class.ii".inflow_daily_minor`: 1000001 exceeds the PBoC '
        "Class II ceiling 1000000",
    ),
}


@pytest.mark.parametrize(
    ("text", "expected"), list(VALIDATION_CASES.values()), ids=list(VALIDATION_CASES)
)
def test_each_problem_is_reported_with_file_key_and_reason(text: str, expected: str) -> None:
    """Every validation rule produces exactly one precise line: file, dotted key, reason."""
    assert problems_of(text) == [expected]


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    """A file in the wrong encoding is refused with the byte offset of the first bad byte."""
    path = tmp_path / "limits.toml"
    path.write_bytes(b'timezone = "Asia/Shanghai"\n# \xff\n')
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    assert caught.value.problems == (f"{path}: not valid UTF-8 (byte offset 29)",)


def test_missing_file_is_an_operating_error(tmp_path: Path) -> None:
    """A missing rule file raises RuleFileError saying which file and why, not a bare OSError."""
    path = tmp_path / "nope.toml"
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    assert caught.value.problems == (
        f"{path}: cannot read the rule file: No such file or directory",
    )


def test_all_problems_are_reported_together_in_file_order() -> None:
    """One RuleFileError lists every problem, one per line, so one edit fixes the file."""
    text = (
        'timezone = "Mars/Olympus"\n'
        "[products.two]\n"
        "id = 2\n"
        'kind = "class_ii"\n'
        "inflow_daily_minor = 1_000_001\n"
        "outflow_daily_minor = 10.0\n"
        "overdraft_minor = 5\n"
        "[products.twin]\n"
        "id = 2\n"
        'kind = "class_i"\n'
        "[channels.atm]\n"
        "id = 300\n"
        'kind = "ATM"\n'
    )
    assert problems_of(text) == [
        "limits.toml: `timezone`: 'Mars/Olympus': unknown time zone (not in the tz database)",
        "limits.toml: `products.two.overdraft_minor`: unknown key (expected one of: id, kind, "
        "balance_floor_minor, transfer_cap_minor, balance_cap_minor, inflow_daily_minor, "
        "inflow_yearly_minor, outflow_daily_minor, outflow_yearly_minor)",
        "limits.toml: `products.two.inflow_daily_minor`: 1000001 exceeds the PBoC Class II "
        "ceiling 1000000",
        "limits.toml: `products.two.outflow_daily_minor`: money is an integer number of fen "
        "(1 CNY = 100 fen), got a float (10.0)",
        "limits.toml: `products.twin.id`: duplicate product id 2 (already used by `products.two`)",
        "limits.toml: `channels.atm.id`: 300 is out of range 1..255",
        "limits.toml: `channels.atm.kind`: unknown kind 'ATM' (expected one of: wechat, app, "
        "counter, atm, open_api, internal)",
    ]


# --- properties -------------------------------------------------------------------------


@given(
    kind=st.sampled_from(["class_ii", "class_iii"]),
    field=st.sampled_from(BUCKET_FIELDS),
    value=st.one_of(
        st.integers(min_value=-10, max_value=30_000_000),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
    ),
)
def test_pboc_ceilings_cannot_be_exceeded(kind: str, field: str, value: int) -> None:
    """A Class II/III bucket cap loads only if 0 < cap <= the PBoC ceiling, and then as written."""
    text = product(kind, f"{field} = {value}\n")
    ceiling = CEILINGS[kind][field]
    if 0 < value <= ceiling:
        rules = parse_rules(text, "limits.toml")
        row = struct.unpack_from("<8q", rules.product_table(), 64)
        buckets = dict(zip(BUCKET_FIELDS, row[3:7], strict=True))
        assert buckets == {**CEILINGS[kind], field: value}
        assert all(buckets[name] <= CEILINGS[kind][name] for name in BUCKET_FIELDS)
    else:
        [problem] = problems_of(text)
        assert problem.startswith(f"limits.toml: `products.p.{field}`: ")


@given(balance_cap=st.integers(min_value=-(2**40), max_value=2**40))
def test_class_iii_balance_cap_stays_within_pboc(balance_cap: int) -> None:
    """Class III accounts can never be configured to hold more than 2,000 CNY, or without cap."""
    text = product("class_iii", f"balance_cap_minor = {balance_cap}\n")
    if 0 < balance_cap <= pboc.CLASS_III_BALANCE_CAP_MINOR:
        assert parse_rules(text, "limits.toml").products[1].balance_cap_minor == balance_cap
    else:
        [problem] = problems_of(text)
        assert problem.startswith("limits.toml: `products.p.balance_cap_minor`: ")


@given(
    data=st.data(),
    number=st.floats(allow_nan=True, allow_infinity=True),
)
def test_floats_are_refused_for_every_money_field(data: st.DataObject, number: float) -> None:
    """No float, however round, reaches a cap or a floor: money is an integer number of fen."""
    if data.draw(st.booleans()):
        field = data.draw(st.sampled_from(PRODUCT_MONEY_FIELDS))
        text, key = product("class_iii", f"{field} = {number!r}\n"), f"products.p.{field}"
    else:
        field = data.draw(st.sampled_from(CHANNEL_MONEY_FIELDS))
        text, key = channel(f"{field} = {number!r}\n"), f"channels.c.{field}"
    assert problems_of(text) == [
        f"limits.toml: `{key}`: money is an integer number of fen (1 CNY = 100 fen), "
        f"got a float ({number!r})"
    ]


@given(
    where=st.sampled_from(["top", "product", "channel"]),
    key=st.from_regex(r"[a-z][a-z0-9_]{0,24}", fullmatch=True),
)
def test_unknown_keys_are_refused_at_every_level(where: str, key: str) -> None:
    """A key the schema does not know is an error wherever it appears, never ignored."""
    known = {
        "top": {"timezone", "products", "channels"},
        "product": {"id", "kind", *PRODUCT_MONEY_FIELDS},
        "channel": {"id", "kind", *CHANNEL_MONEY_FIELDS},
    }[where]
    if key in known:
        return
    if where == "top":
        text, dotted = f"{key} = 1\n", key
    elif where == "product":
        text, dotted = product("class_i", f"{key} = 1\n"), f"products.p.{key}"
    else:
        text, dotted = channel(f"{key} = 1\n"), f"channels.c.{key}"
    [problem] = problems_of(text)
    assert problem.startswith(f"limits.toml: `{dotted}`: unknown key (")


def test_hand_built_products_are_held_to_the_same_ceilings() -> None:
    """A program that bypasses the file cannot build a looser Class II product: it asserts."""
    with pytest.raises(AssertionError):
        Product(
            id=1,
            name="x",
            kind=ProductKind.CLASS_II,
            inflow_daily_minor=1_000_001,
            inflow_yearly_minor=1,
            outflow_daily_minor=1,
            outflow_yearly_minor=1,
        )


# --- reload without restart ---------------------------------------------------------------


def write(path: Path, text: str, mtime_ns: int) -> None:
    """Write `text` and pin the mtime, so tests never depend on the clock's granularity."""
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime_ns, mtime_ns))


GOOD = product("class_ii", "outflow_daily_minor = 500_000\n") + channel()
STRICTER = product("class_ii", "outflow_daily_minor = 300_000\n") + channel()


def test_reload_picks_up_a_good_change(tmp_path: Path) -> None:
    """An edited, valid file becomes the new rule set with its own digest; unchanged is a no-op."""
    path = tmp_path / "limits.toml"
    write(path, GOOD, 1_000_000_000)
    rule_file = RuleFile(path)
    first = rule_file.rules
    assert rule_file.reload_if_changed() is False
    assert rule_file.rules is first

    write(path, STRICTER, 2_000_000_000)
    assert rule_file.reload_if_changed() is True
    assert rule_file.rules.products[1].outflow_daily_minor == 300_000
    assert rule_file.rules.digest == hashlib.sha256(STRICTER.encode()).hexdigest()
    assert rule_file.reload_if_changed() is False


def test_reload_ignores_a_touch_that_changes_nothing(tmp_path: Path) -> None:
    """Touching the file (same bytes) does not produce a new rule set for the engine to install."""
    path = tmp_path / "limits.toml"
    write(path, GOOD, 1_000_000_000)
    rule_file = RuleFile(path)
    first = rule_file.rules
    write(path, GOOD, 5_000_000_000)
    assert rule_file.reload_if_changed() is False
    assert rule_file.rules is first


def test_reload_keeps_the_old_rules_when_the_new_file_is_bad(tmp_path: Path) -> None:
    """A bad edit raises once for the caller to log, keeps the old rules, and a fix recovers."""
    path = tmp_path / "limits.toml"
    write(path, GOOD, 1_000_000_000)
    rule_file = RuleFile(path)
    first = rule_file.rules

    bad = product("class_ii", "outflow_daily_minor = 5_000_000\n") + channel()
    write(path, bad, 2_000_000_000)
    with pytest.raises(RuleFileError) as caught:
        rule_file.reload_if_changed()
    assert caught.value.problems == (
        f"{path}: `products.p.outflow_daily_minor`: 5000000 exceeds the PBoC Class II "
        "ceiling 1000000",
    )
    assert rule_file.rules is first
    assert rule_file.last_error is caught.value
    # The same bad version is reported once, not on every poll; the old rules stay.
    assert rule_file.reload_if_changed() is False
    assert rule_file.rules is first

    write(path, STRICTER, 3_000_000_000)
    assert rule_file.reload_if_changed() is True
    assert rule_file.rules.products[1].outflow_daily_minor == 300_000
    assert rule_file.last_error is None


def test_reload_keeps_the_old_rules_when_the_file_disappears(tmp_path: Path) -> None:
    """A deleted rule file is an operating error; the rules in force stay in force."""
    path = tmp_path / "limits.toml"
    write(path, GOOD, 1_000_000_000)
    rule_file = RuleFile(path)
    first = rule_file.rules
    path.unlink()
    with pytest.raises(RuleFileError, match="cannot read the rule file"):
        rule_file.reload_if_changed()
    assert rule_file.reload_if_changed() is False
    assert rule_file.rules is first


def test_reload_follows_an_atomic_rename(tmp_path: Path) -> None:
    """Replacing the file by rename (the recommended way) is seen even with the same mtime."""
    path = tmp_path / "limits.toml"
    write(path, GOOD, 1_000_000_000)
    rule_file = RuleFile(path)
    staged = tmp_path / "limits.toml.new"
    write(staged, STRICTER, 1_000_000_000)
    os.replace(staged, path)
    assert rule_file.reload_if_changed() is True
    assert rule_file.rules.products[1].outflow_daily_minor == 300_000


def test_reload_refuses_to_remove_products_or_channels_or_change_a_kind(tmp_path: Path) -> None:
    """A reload cannot strip accounts of their caps: removed ids and kind changes are refused."""
    path = tmp_path / "limits.toml"
    write(path, GOOD, 1_000_000_000)
    rule_file = RuleFile(path)
    first = rule_file.rules

    write(path, product("class_i"), 2_000_000_000)
    with pytest.raises(RuleFileError) as caught:
        rule_file.reload_if_changed()
    assert caught.value.problems == (
        f"{path}: `products.p.kind`: product id 1 changed kind from class_ii to class_i; "
        "a reload cannot change a product's kind",
        f"{path}: `channels.c`: channel id 1 was removed; a reload cannot remove a channel "
        "(restart to retire it)",
    )
    assert rule_file.rules is first

    write(path, channel(), 3_000_000_000)  # truncated to the channel only
    with pytest.raises(RuleFileError) as caught:
        rule_file.reload_if_changed()
    assert caught.value.problems == (
        f"{path}: `products.p`: product id 1 was removed; a reload cannot remove a product "
        "that accounts may use (restart to retire it)",
    )
    assert rule_file.rules is first

    added = GOOD + product("class_iii", name="extra").replace("id = 1", "id = 2")
    write(path, added, 4_000_000_000)
    assert rule_file.reload_if_changed() is True
    assert sorted(rule_file.rules.products) == [1, 2]


def test_rule_file_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    """Starting with a bad file fails loudly: there is no rule set to fall back on."""
    path = tmp_path / "limits.toml"
    write(path, product("class_iii", "balance_cap_minor = 0.5\n"), 1_000_000_000)
    with pytest.raises(RuleFileError, match=r"products\.p\.balance_cap_minor"):
        RuleFile(path)


# --- the business calendar ----------------------------------------------------------------


def test_year_of_day_matches_datetime_for_every_day() -> None:
    """The integer-only year (the kernel's twin) agrees with the calendar for all 65,536 days."""
    for day in range(65536):
        assert year_of_day(day) == (EPOCH + timedelta(days=day)).year, day


def test_day_of_date_matches_datetime_for_every_day() -> None:
    """day_of_date is the exact inverse of 'days since 2000-01-01' over the whole uint16 range."""
    for day in range(65536):
        civil = EPOCH + timedelta(days=day)
        assert day_of_date(civil.year, civil.month, civil.day) == day, civil


def test_day_numbers_outside_uint16_are_refused() -> None:
    """Day numbers must fit the kernel's uint16: 2000-01-01 is 0, 2179-06-06 is 65535."""
    assert day_of_date(2000, 1, 1) == 0
    assert day_of_date(2179, 6, 6) == 65535
    with pytest.raises(AssertionError):
        day_of_date(2179, 6, 7)
    with pytest.raises(AssertionError):
        day_of_date(1999, 12, 31)
    with pytest.raises(AssertionError):
        day_of_date(2001, 2, 29)
    with pytest.raises(AssertionError):
        year_of_day(65536)
    with pytest.raises(AssertionError):
        year_of_day(-1)


ZONE_NAMES = [
    "Asia/Shanghai",
    "UTC",
    "America/New_York",  # DST
    "Australia/Lord_Howe",  # half-hour DST
    "Pacific/Kiritimati",  # UTC+14
    "America/St_Johns",  # UTC-3:30
]
# Keep a day away from both ends so every zone's local date stays in range.
TIMESTAMP_MIN_NS = int(datetime(2000, 1, 2, tzinfo=UTC).timestamp()) * NS_PER_S
TIMESTAMP_MAX_NS = int(datetime(2179, 6, 5, tzinfo=UTC).timestamp()) * NS_PER_S


@given(
    timestamp_ns=st.integers(min_value=TIMESTAMP_MIN_NS, max_value=TIMESTAMP_MAX_NS),
    zone_name=st.sampled_from(ZONE_NAMES),
)
def test_business_day_matches_datetime(timestamp_ns: int, zone_name: str) -> None:
    """The business day is the local calendar date in the rule set's zone, as datetime says."""
    zone = load_timezone(zone_name)
    instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=timestamp_ns // 1000)
    expected = (instant.astimezone(zone).date() - EPOCH).days
    assert business_day(timestamp_ns, zone) == expected


def test_business_day_rolls_over_at_midnight_beijing_time() -> None:
    """Buckets roll over at 00:00 Beijing time (16:00 UTC) to the nanosecond, not at 00:00 UTC."""
    zone = load_timezone("Asia/Shanghai")
    midnight_ns = int(datetime(2023, 12, 31, 16, 0, tzinfo=UTC).timestamp()) * NS_PER_S
    assert business_day(midnight_ns - 1, zone) == day_of_date(2023, 12, 31)
    assert business_day(midnight_ns, zone) == day_of_date(2024, 1, 1)
    assert year_of_day(business_day(midnight_ns - 1, zone)) == 2023
    assert year_of_day(business_day(midnight_ns, zone)) == 2024
    rules = parse_rules("", "limits.toml")
    assert rules.business_day(midnight_ns) == day_of_date(2024, 1, 1)
    with pytest.raises(AssertionError):
        business_day(int(datetime(1999, 12, 31, 15, 59, tzinfo=UTC).timestamp()) * NS_PER_S, zone)


@pytest.fixture
def no_tz_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hide both the system tz database and the `tzdata` package from zoneinfo."""
    # The package and any of its submodules an earlier test imported (importlib.resources
    # takes an imported `tzdata.zoneinfo` from sys.modules without importing its parent).
    for name in ["tzdata", *(name for name in sys.modules if name.startswith("tzdata."))]:
        monkeypatch.setitem(sys.modules, name, None)
    zoneinfo.reset_tzpath(to=["/nonexistent-tz-database"])
    zoneinfo.ZoneInfo.clear_cache(only_keys=["Asia/Kathmandu"])
    try:
        yield
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache(only_keys=["Asia/Kathmandu"])


@pytest.mark.usefixtures("no_tz_database")
def test_missing_tz_database_is_a_clear_error_not_utc() -> None:
    """Without a tz database the zone load fails loudly; it never falls back to UTC."""
    with pytest.raises(RuleFileError) as caught:
        load_timezone("Asia/Kathmandu")
    assert caught.value.problems == (
        "timezone 'Asia/Kathmandu': the tz database is missing (no zone files under TZPATH "
        "/nonexistent-tz-database and no `tzdata` package); install the system tzdata "
        "package or `pip install tzdata`",
    )
    [problem] = problems_of('timezone = "Asia/Kathmandu"\n')
    assert problem.startswith(
        "limits.toml: `timezone`: 'Asia/Kathmandu': the tz database is missing"
    )


def test_unknown_zone_name_is_refused() -> None:
    """load_timezone refuses a zone the database does not have, naming it."""
    with pytest.raises(RuleFileError) as caught:
        load_timezone("Asia/Peking")
    assert caught.value.problems == (
        "timezone 'Asia/Peking': unknown time zone (not in the tz database)",
    )


# --- layering ---------------------------------------------------------------------------


def test_limits_imports_no_async_or_upper_layer() -> None:
    """limits/ stays synchronous and below core/: importing it loads no anyio, asyncpg, core."""
    code = (
        "import sys, limits, limits.rules, limits.calendar, limits.pboc\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'anyio', 'asyncpg', 'trio', 'asyncio', 'core', 'channels'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_internal_account_floors_are_finite_and_codes_are_known() -> None:
    """An internal kind's floor deeper than 10**16 fen (or above zero), an unknown kind or an
    unknown transfer code is refused, each named by its dotted key."""
    bad = (
        "[internal_accounts.settlement]\nbalance_floor_minor = -4_611_686_018_427_387_904\n"
        "[internal_accounts.fees]\nbalance_floor_minor = 5\n"
        "[internal_accounts.vault]\nbalance_floor_minor = 0\n"
        '[internal_accounts.cash]\ndebit_codes = ["cash_deposit", "gift"]\n'
        '[channels.c]\nid = 1\nkind = "atm"\n'
        'transfer_codes = ["cash_deposit", "cash_deposit"]\n'
        '[products.p]\nid = 7\nkind = "internal"\n'
        "balance_floor_minor = -4_000_000_000_000_000_000\n"
    )
    with pytest.raises(RuleFileError) as caught:
        parse_rules(bad, "limits.toml")
    message = str(caught.value)
    assert (
        "`internal_accounts.settlement.balance_floor_minor`: -4611686018427387904 is outside"
        in message
    )
    assert "`internal_accounts.fees.balance_floor_minor`: 5 is outside" in message
    assert "`internal_accounts.vault`: unknown internal account kind" in message
    assert "`internal_accounts.cash.debit_codes`: unknown transfer code 'gift'" in message
    assert "`channels.c.transfer_codes`: a transfer code is listed twice" in message
    assert "`products.p.balance_floor_minor`: -4000000000000000000 is outside" in message


def test_customer_limits_and_channel_credit_caps_are_read() -> None:
    """`[customers]` and a channel's credit cap and code list reach the rule set."""
    rules = parse_rules(
        "[customers]\ndaily_outflow_cap_minor = 7\nstrong_auth_daily_minor = 0\n"
        '[channels.c]\nid = 1\nkind = "app"\ninflow_daily_cap_minor = 9\n'
        'transfer_codes = ["transfer"]\n',
        "limits.toml",
    )
    assert rules.customers.daily_outflow_cap_minor == 7
    assert rules.customers.strong_auth_daily_minor == 0
    assert rules.channels[1].inflow_daily_cap_minor == 9
    assert rules.channels[1].codes == frozenset({"transfer"})
    assert parse_rules("", "x").customers.strong_auth_daily_minor == 5_000_000
