"""The risk rule language (limits/risk.py): the shipped rule set, the compiled program and
lists the kernel reads (`limits.risk_layout`), the JSON the API publishes, and every
refusal of a bad rule set, each naming the source, the line and the key, all at once."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.types import TransferCode
from limits.errors import RuleFileError
from limits.risk import (
    DEFAULT_CODES,
    RiskRules,
    RiskRulesError,
    check_risk_successor,
    format_multiple,
    format_time,
    format_window,
    load_risk_rules,
    parse_risk_rules,
    value_key,
)
from limits.risk_layout import RULE, RULES_MAX, Match, Outcome, RuleType, Scope, key_of
from tests.repo_paths import REPO_ROOT

SHIPPED = REPO_ROOT / "core" / "data" / "risk.toml"
TEXT = SHIPPED.read_text(encoding="utf-8")
SOURCE = "bank/risk.toml"
RULE_FIELDS = (
    "type", "scope", "outcome", "report", "match", "codes", "window_s", "amount_min", "sum_max",
    "count_max", "samples_min", "multiple_permille", "list_id", "from_s", "to_s",
)  # fmt: skip
HEADER = "version = 3\n[holds]\ndelay_s = 60\nreview_s = 600\n"


def rows(rules: RiskRules) -> list[dict[str, int]]:
    """The compiled program, unpacked field by field."""
    program = rules.program()
    assert len(program) == RULE.size * len(rules.rules)
    return [
        dict(zip(RULE_FIELDS, RULE.unpack_from(program, offset), strict=True))
        for offset in range(0, len(program), RULE.size)
    ]


def mask(*codes: TransferCode) -> int:
    return sum(1 << code for code in codes)


def refused(text: str) -> RiskRulesError:
    with pytest.raises(RiskRulesError) as caught:
        parse_risk_rules(text, SOURCE)
    return caught.value


def line_of(text: str, fragment: str, start: int = 1) -> int:
    """The first line at or after `start` that contains `fragment`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if number >= start and fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in the text")


# --- The shipped rule set ------------------------------------------------------------------


def test_shipped_rule_set_covers_every_type_and_outcome() -> None:
    """The bank's default: 20 rules, every rule type, every outcome, every scope and every
    list kind used, the large-value reports allowed, holds an hour and three days."""
    rules = load_risk_rules(SHIPPED)
    assert len(rules.rules) == 20
    assert {rule.type for rule in rules.rules} == set(RuleType)
    assert {rule.outcome for rule in rules.rules} == set(Outcome)
    velocity_scopes = {rule.scope for rule in rules.rules if rule.type is RuleType.VELOCITY}
    history_scopes = {rule.scope for rule in rules.rules if rule.type is RuleType.HISTORY}
    assert velocity_scopes | history_scopes == set(Scope) - {Scope.NONE}
    assert {risk_list.match for risk_list in rules.lists.values()} == set(Match) - {Match.NONE}
    reports = [rule for rule in rules.rules if rule.report]
    assert {rule.name for rule in reports} == {
        "large_cash", "large_personal_transfer", "large_incoming_transfer",
    }  # fmt: skip
    assert all(rule.outcome is Outcome.ALLOW for rule in reports)
    assert rules.rule("large_cash").amount_min_minor == 5_000_000  # 50,000 CNY (PBoC)
    assert rules.rule("large_personal_transfer").amount_min_minor == 50_000_000
    assert (rules.delay_s, rules.review_s) == (3_600, 259_200)
    assert rules.digest == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert rules.text == TEXT and rules.source == str(SHIPPED)


def test_every_shipped_rule_and_list_is_commented() -> None:
    """Each [[rules]] and [lists.NAME] table opens with a comment saying what it catches."""
    lines = TEXT.splitlines()
    headers = [
        index
        for index, line in enumerate(lines)
        if line in ("[[rules]]",) or line.startswith("[lists.")
    ]
    assert len(headers) == 20 + 5
    for index in headers:
        assert lines[index + 1].startswith("# "), f"line {index + 1}: {lines[index]} has no comment"


def test_shipped_thresholds_leave_ordinary_traffic_alone() -> None:
    """The shipped rules that stop or hold a payment without a device need far more than
    a person or the test suite's traffic does: velocity counts above 30 an hour or 200
    in 10 minutes with an amount floor, histories of >= 5 samples at >= 10,000 CNY, a
    new payee or the night only from 50,000 CNY; the device and IP rules need a device."""
    rules = load_risk_rules(SHIPPED)
    device_free = [
        rule
        for rule in rules.rules
        if rule.outcome is not Outcome.ALLOW
        and rule.type not in (RuleType.NEW_DEVICE, RuleType.LIST)
        and rule.scope not in (Scope.DEVICE, Scope.IP)
    ]
    assert {rule.name for rule in device_free} == {
        "new_payee_large", "new_card_payee", "mule_inflow", "account_burst",
        "customer_daily_outflow", "account_amount_spike", "customer_amount_spike", "night_large",
    }  # fmt: skip
    for rule in device_free:
        if rule.type is RuleType.VELOCITY:
            assert rule.count_max >= 30 or rule.sum_max_minor >= 100_000_000, rule
            assert rule.amount_min_minor >= 1_000 or rule.count_max == 0, rule
        elif rule.type is RuleType.HISTORY:
            assert rule.samples_min >= 5 and rule.multiple_permille >= 10_000, rule
            assert rule.amount_min_minor >= 1_000_000, rule
        else:
            assert rule.amount_min_minor >= 500_000, rule
    # Pay-ins the customer's own products, the bank's entries and deposits are not stopped.
    for rule in rules.rules:
        if rule.outcome is not Outcome.ALLOW:
            assert rule.codes <= DEFAULT_CODES | {"external_transfer_in"}, rule
            assert "cash_deposit" not in rule.codes and "topup_bound" not in rule.codes


def test_shipped_program_rows() -> None:
    """The compiled rows carry each rule's fields in file order: codes as a bit mask of
    ledger.types.TransferCode, money in fen, windows and times in seconds, permille."""
    rules = load_risk_rules(SHIPPED)
    program = rows(rules)
    by_name = dict(zip(rules.names, program, strict=True))
    assert rules.names[0] == "blocked_device" and rules.names[-1] == "large_incoming_transfer"
    default_mask = mask(
        TransferCode.TRANSFER, TransferCode.PAYMENT, TransferCode.CASH_WITHDRAWAL,
        TransferCode.WITHDRAW_BOUND, TransferCode.EXTERNAL_TRANSFER_OUT,
    )  # fmt: skip
    assert by_name["blocked_device"] == {
        "type": RuleType.LIST, "scope": 0, "outcome": Outcome.BLOCK, "report": 0,
        "match": Match.DEVICE, "codes": default_mask, "window_s": 0, "amount_min": 0,
        "sum_max": 0, "count_max": 0, "samples_min": 0, "multiple_permille": 0,
        "list_id": rules.list_ids["blocked_devices"], "from_s": 0, "to_s": 0,
    }  # fmt: skip
    mule = by_name["mule_inflow"]
    assert (mule["type"], mule["scope"], mule["outcome"]) == (
        RuleType.VELOCITY, Scope.PAYEE, Outcome.REVIEW,
    )  # fmt: skip
    assert (mule["codes"], mule["amount_min"], mule["window_s"], mule["count_max"]) == (
        mask(TransferCode.TRANSFER), 50_000, 3_600, 30,
    )  # fmt: skip
    outflow = by_name["customer_daily_outflow"]
    assert (outflow["scope"], outflow["window_s"], outflow["sum_max"], outflow["count_max"]) == (
        Scope.CUSTOMER, 86_400, 100_000_000, 0,
    )  # fmt: skip
    spike = by_name["account_amount_spike"]
    assert (spike["type"], spike["multiple_permille"], spike["samples_min"]) == (
        RuleType.HISTORY, 10_000, 5,
    )  # fmt: skip
    assert spike["window_s"] == 30 * 86_400 and spike["amount_min"] == 1_000_000
    night = by_name["night_large"]
    assert (night["type"], night["from_s"], night["to_s"]) == (RuleType.TIME_OF_DAY, 0, 18_000)
    new_device = by_name["new_device_large"]
    assert (new_device["type"], new_device["window_s"], new_device["outcome"]) == (
        RuleType.NEW_DEVICE, 86_400, Outcome.CHALLENGE,
    )  # fmt: skip
    cash = by_name["large_cash"]
    assert (cash["type"], cash["report"], cash["outcome"], cash["codes"]) == (
        RuleType.LARGE_VALUE, 1, Outcome.ALLOW,
        mask(TransferCode.CASH_DEPOSIT, TransferCode.CASH_WITHDRAWAL),
    )  # fmt: skip


def test_shipped_lists_are_keyed_like_the_contexts() -> None:
    """List ids are the sorted list names' indexes; accounts are packed as their ids,
    other values as `key_of` of their kind (a beneficiary card as "card"), sorted."""
    rules = load_risk_rules(SHIPPED)
    names = sorted(rules.lists)
    assert rules.list_ids == {name: index for index, name in enumerate(names)}
    packed = dict(rules.list_values())
    assert sorted(packed) == list(range(5))

    def keys(name: str) -> list[int]:
        data = packed[rules.list_ids[name]]
        return [value for (value,) in struct.iter_unpack("<Q", data)]

    assert keys("frozen_accounts") == [6235019382716504821, 6235024177309286155]
    assert keys("blocked_devices") == sorted(
        key_of("device", value)
        for value in (
            "emu-farm-7f3a91c0e2d4",
            "clone-a9c1e2f0-0042-rooted",
            "vm-bluestacks-5d8e11aa",
        )
    )
    assert key_of("card", "6217005812344099376") in keys("fraud_cards")
    assert key_of("ip", "2001:db8:bad::1") in keys("risky_ips")
    assert key_of("resident_id", "440305198506127313") in keys("watched_residents")
    for name in names:
        assert keys(name) == sorted(set(keys(name))) and len(keys(name)) > 0
        assert rules.lists[name].keys == tuple(keys(name))


def test_to_json_publishes_rules_not_list_values() -> None:
    """The API's view: every rule with its parameters as written and in base units, each
    list's match and size; the list values (the bank's intelligence) are not in it."""
    rules = load_risk_rules(SHIPPED)
    document = json.loads(json.dumps(rules.to_json()))
    assert document["version"] == 1 and document["digest"] == rules.digest
    assert document["holds"] == {"delay_s": 3_600, "review_s": 259_200}
    assert [rule["name"] for rule in document["rules"]] == list(rules.names)
    by_name = {rule["name"]: rule for rule in document["rules"]}
    assert by_name["account_amount_spike"] | {} == {
        "name": "account_amount_spike", "type": "history", "outcome": "delay", "report": False,
        "codes": ["transfer", "payment", "cash_withdrawal", "withdraw_bound",
                  "external_transfer_out"],
        "amount_min_minor": 1_000_000, "scope": "account", "window": "30d",
        "window_s": 2_592_000, "multiple": "10", "multiple_permille": 10_000, "samples_min": 5,
    }  # fmt: skip
    assert by_name["night_large"]["from"] == "00:00" and by_name["night_large"]["to"] == "05:00"
    assert document["lists"]["watched_residents"] == {
        "id": rules.list_ids["watched_residents"], "match": "resident_id", "size": 3,
    }  # fmt: skip
    assert "440305198506127313" not in json.dumps(document)


def test_fired_names_follow_rule_indexes() -> None:
    """Bit i of a verdict's fired mask is rule i of the file."""
    rules = load_risk_rules(SHIPPED)
    assert rules.fired_names(0) == ()
    assert rules.fired_names(0b101) == ("blocked_device", "fraud_card_payee")
    assert rules.fired_names(1 << 19) == ("large_incoming_transfer",)


# --- The language ---------------------------------------------------------------------------


def test_each_type_parses_to_its_fields() -> None:
    """Defaults (codes, amount 0, no report), CNY strings and fen integers, every window
    unit, multiples with decimals, times with seconds, wrap past midnight and "24:00"."""
    text = HEADER + (
        '[lists.payees]\nmatch = "account"\nvalues = ["1001", "77"]\n'
        '[[rules]]\nname = "v"\ntype = "velocity"\noutcome = "delay"\nscope = "customer"\n'
        'window = "30s"\nsum_max_minor = 12345\n'
        '[[rules]]\nname = "h"\ntype = "history"\noutcome = "review"\nscope = "customer"\n'
        'window = "2d"\nmultiple = "2.5"\nsamples_min = 16\namount_min = "0.01"\n'
        '[[rules]]\nname = "p"\ntype = "new_payee"\noutcome = "challenge"\nwindow = "10m"\n'
        'codes = ["payment"]\n'
        '[[rules]]\nname = "d"\ntype = "new_device"\noutcome = "allow"\nwindow = "1h"\n'
        '[[rules]]\nname = "t"\ntype = "time_of_day"\noutcome = "challenge"\n'
        'from = "22:30:15"\nto = "02:00"\n'
        '[[rules]]\nname = "t2"\ntype = "time_of_day"\noutcome = "challenge"\n'
        'from = "23:00"\nto = "24:00"\n'
        '[[rules]]\nname = "l"\ntype = "list"\noutcome = "block"\nlist = "payees"\n'
        'amount_min_minor = 0\n'
        '[[rules]]\nname = "big"\ntype = "large_value"\noutcome = "allow"\nreport = true\n'
        'amount_min = "200000"\ncodes = ["reversal"]\n'
    )  # fmt: skip
    rules = parse_risk_rules(text, SOURCE)
    assert rules.version == 3 and (rules.delay_s, rules.review_s) == (60, 600)
    v, h, p, d, t, t2, listed, big = rules.rules
    assert (v.scope, v.window_s, v.sum_max_minor, v.count_max) == (Scope.CUSTOMER, 30, 12345, 0)
    assert v.codes == DEFAULT_CODES and v.amount_min_minor == 0 and not v.report
    assert (h.window_s, h.multiple_permille, h.samples_min, h.amount_min_minor) == (
        172_800, 2_500, 16, 1,
    )  # fmt: skip
    assert (p.window_s, p.codes, d.window_s) == (600, frozenset({"payment"}), 3_600)
    assert (t.from_s, t.to_s) == (22 * 3600 + 30 * 60 + 15, 7_200)  # wraps past midnight
    assert (t2.from_s, t2.to_s) == (82_800, 86_400)
    assert (listed.list_name, listed.match) == ("payees", Match.ACCOUNT)
    assert rules.lists["payees"].keys == (77, 1001)
    assert (big.report, big.amount_min_minor, big.code_mask) == (
        True, 20_000_000, mask(TransferCode.REVERSAL),
    )  # fmt: skip
    unpacked = rows(rules)
    assert unpacked[6]["list_id"] == 0 and unpacked[6]["match"] == Match.ACCOUNT
    assert [row["list_id"] for row in unpacked] == [0] * 8


def test_no_rules_is_a_valid_rule_set() -> None:
    """A bank may run the stage with no rule (it then allows everything): an empty program."""
    rules = parse_risk_rules(HEADER, SOURCE)
    assert rules.rules == () and rules.program() == b"" and rules.list_values() == []


def test_list_ids_are_sorted_names_not_file_order() -> None:
    """Lists get ids by name, so reordering the file does not renumber them."""
    text = HEADER + (
        '[lists.zeta]\nmatch = "ip"\nvalues = ["10.0.0.1"]\n'
        '[lists.alpha]\nmatch = "device"\nvalues = []\n'
        '[[rules]]\nname = "z"\ntype = "list"\noutcome = "review"\nlist = "zeta"\n'
        '[[rules]]\nname = "a"\ntype = "list"\noutcome = "block"\nlist = "alpha"\n'
    )  # fmt: skip
    rules = parse_risk_rules(text, SOURCE)
    assert rules.list_ids == {"alpha": 0, "zeta": 1}
    assert [row["list_id"] for row in rows(rules)] == [1, 0]
    assert rules.list_values() == [(0, b""), (1, struct.pack("<Q", key_of("ip", "10.0.0.1")))]


def test_formatting_round_trips() -> None:
    """Windows, multiples and times are published the way the file writes them."""
    assert [format_window(s) for s in (30, 600, 3_600, 86_400, 2_592_000, 90)] == [
        "30s", "10m", "1h", "1d", "30d", "90s",
    ]  # fmt: skip
    assert [format_multiple(p) for p in (10_000, 2_500, 1_001, 1_250)] == [
        "10", "2.5", "1.001", "1.25",
    ]  # fmt: skip
    assert [format_time(s) for s in (0, 18_000, 81_015, 86_400)] == [
        "00:00", "05:00", "22:30:15", "24:00",
    ]  # fmt: skip


# --- Refusals -------------------------------------------------------------------------------

RULE_V = '[[rules]]\nname = "v"\ntype = "velocity"\noutcome = "review"\nscope = "account"\n'
REFUSALS: list[tuple[str, str | None, str, str, str]] = [
    # (id, text after HEADER, fragment on the offending line, key, reason fragment)
    ("unknown top-level key", None, "colour", "colour", "unknown key"),
    ("unknown holds key", "colour = 1\n", "colour", "holds.colour",
     "expected one of: delay_s, review_s"),
    ("unknown rule key", RULE_V + 'window = "1h"\ncount_max = 5\ncount_mx = 3\n',
     "count_mx", "rules[0].count_mx", "did you mean `count_max`"),
    ("key of another type", RULE_V + 'window = "1h"\ncount_max = 5\nmultiple = "3"\n',
     "multiple", "rules[0].multiple", "not a key of a velocity rule"),
    ("unknown type", '[[rules]]\nname = "x"\ntype = "magic"\noutcome = "block"\n',
     "magic", "rules[0].type", "unknown type"),
    ("unknown outcome", '[[rules]]\nname = "x"\ntype = "large_value"\noutcome = "hold"\n'
     'amount_min = "1.00"\n', 'outcome = "hold"', "rules[0].outcome", "unknown outcome"),
    ("unknown scope", '[[rules]]\nname = "v"\ntype = "velocity"\noutcome = "review"\n'
     'scope = "planet"\nwindow = "1h"\ncount_max = 5\n', "planet", "rules[0].scope",
     "unknown scope"),
    ("history by device", '[[rules]]\nname = "h"\ntype = "history"\noutcome = "review"\n'
     'scope = "device"\nwindow = "30d"\nmultiple = "5"\nsamples_min = 5\n', "device",
     "rules[0].scope", '"account", "customer"'),
    ("unknown code", RULE_V + 'window = "1h"\ncount_max = 5\ncodes = ["teleport"]\n',
     "teleport", "rules[0].codes", "unknown transfer code 'teleport'"),
    ("empty codes", RULE_V + 'window = "1h"\ncount_max = 5\ncodes = []\n', "codes = []",
     "rules[0].codes", "never apply"),
    ("unknown list", '[[rules]]\nname = "l"\ntype = "list"\noutcome = "block"\nlist = "nope"\n',
     "nope", "rules[0].list", "unknown list"),
    ("missing window", RULE_V + "count_max = 5\n", "[[rules]]", "rules[0].window",
     "missing required key"),
    ("no count or sum", RULE_V + 'window = "1h"\n', "[[rules]]", "rules[0]",
     "count_max"),
    ("missing multiple", '[[rules]]\nname = "h"\ntype = "history"\noutcome = "review"\n'
     'scope = "account"\nwindow = "30d"\nsamples_min = 5\n', "[[rules]]",
     "rules[0].multiple", "missing required key"),
    ("multiple of one", '[[rules]]\nname = "h"\ntype = "history"\noutcome = "review"\n'
     'scope = "account"\nwindow = "30d"\nmultiple = "1"\nsamples_min = 5\n',
     'multiple = "1"', "rules[0].multiple", "above 1"),
    ("multiple as a float", '[[rules]]\nname = "h"\ntype = "history"\noutcome = "review"\n'
     'scope = "account"\nwindow = "30d"\nmultiple = 2.5\nsamples_min = 5\n',
     "multiple = 2.5", "rules[0].multiple", "a float is not exact"),
    ("too many samples", '[[rules]]\nname = "h"\ntype = "history"\noutcome = "review"\n'
     'scope = "account"\nwindow = "30d"\nmultiple = "5"\nsamples_min = 17\n',
     "samples_min", "rules[0].samples_min", "1..16"),
    ("bad window", RULE_V + 'window = "1w"\ncount_max = 5\n', "1w", "rules[0].window",
     "duration"),
    ("window too long", RULE_V + 'window = "400d"\ncount_max = 5\n', "400d",
     "rules[0].window", "longer than 366 days"),
    ("negative money", RULE_V + 'window = "1h"\nsum_max = "-5.00"\n', "-5.00",
     "rules[0].sum_max", "negative"),
    ("negative fen", RULE_V + 'window = "1h"\ncount_max = 5\namount_min_minor = -1\n',
     "amount_min_minor", "rules[0].amount_min_minor", "is negative"),
    ("float money", RULE_V + 'window = "1h"\ncount_max = 5\namount_min = 50.5\n',
     "50.5", "rules[0].amount_min", "a float cannot hold money exactly"),
    ("integer CNY", RULE_V + 'window = "1h"\ncount_max = 5\namount_min = 50\n',
     "amount_min = 50", "rules[0].amount_min", "amount_min_minor"),
    ("float fen", RULE_V + 'window = "1h"\ncount_max = 5\namount_min_minor = 5.0\n',
     "amount_min_minor", "rules[0].amount_min_minor", "integer number of fen"),
    ("three decimals", RULE_V + 'window = "1h"\ncount_max = 5\namount_min = "1.005"\n',
     "1.005", "rules[0].amount_min", "at most two decimals"),
    ("both money spellings", RULE_V + 'window = "1h"\ncount_max = 5\namount_min = "1.00"\n'
     "amount_min_minor = 100\n", "amount_min_minor", "rules[0].amount_min_minor", "not both"),
    ("count zero", RULE_V + 'window = "1h"\ncount_max = 0\n', "count_max",
     "rules[0].count_max", "1..4294967295"),
    ("report that blocks", '[[rules]]\nname = "x"\ntype = "large_value"\noutcome = "block"\n'
     'report = true\namount_min = "1.00"\n', "report", "rules[0].report",
     'outcome = "allow"'),
    ("report not a boolean", '[[rules]]\nname = "x"\ntype = "large_value"\n'
     'outcome = "allow"\nreport = "yes"\namount_min = "1.00"\n', "report",
     "rules[0].report", "true or false"),
    ("large value without amount", '[[rules]]\nname = "x"\ntype = "large_value"\n'
     'outcome = "allow"\nreport = true\n', "[[rules]]", "rules[0].amount_min", "amount_min > 0"),
    ("bad name", '[[rules]]\nname = "Big Rule"\ntype = "large_value"\noutcome = "allow"\n'
     'amount_min = "1.00"\n', "Big Rule", "rules[0].name", "a-z, 0-9 and _"),
    ("bad time", '[[rules]]\nname = "t"\ntype = "time_of_day"\noutcome = "challenge"\n'
     'from = "25:00"\nto = "05:00"\n', "25:00", "rules[0].from", "not a time of day"),
    ("from equals to", '[[rules]]\nname = "t"\ntype = "time_of_day"\noutcome = "challenge"\n'
     'from = "05:00"\nto = "05:00"\n', 'to = "05:00"', "rules[0].to", "empty or a whole day"),
    ("24:00 as from", '[[rules]]\nname = "t"\ntype = "time_of_day"\noutcome = "challenge"\n'
     'from = "24:00"\nto = "05:00"\n', "24:00", "rules[0].from", "not a time of day"),
    ("missing holds", None, "", "holds", "missing required table [holds]"),
    ("hold too long", "", "review_s", "holds.review_s", "1..7776000"),
    ("version not an integer", "", "version", "version", "expected an integer"),
    ("bad list match", '[lists.x]\nmatch = "email"\nvalues = []\n', "email",
     "lists.x.match", 'expected one of "account"'),
    ("unknown list key", '[lists.x]\nmatch = "ip"\nvalues = []\nowner = "me"\n', "owner",
     "lists.x.owner", "unknown key"),
    ("account not a string", '[lists.x]\nmatch = "account"\nvalues = [1001]\n', "values",
     "lists.x.values", "write account ids as strings"),
    ("account zero", '[lists.x]\nmatch = "account"\nvalues = ["0"]\n', "values",
     "lists.x.values", "is not an account id"),
    ("ip not canonical", '[lists.x]\nmatch = "ip"\nvalues = ["2001:DB8::1"]\n', "values",
     "lists.x.values", "write '2001:db8::1'"),
    ("ip invalid", '[lists.x]\nmatch = "ip"\nvalues = ["10.0.0.256"]\n', "values",
     "lists.x.values", "not an IPv4 or IPv6 address"),
    ("resident id check", '[lists.x]\nmatch = "resident_id"\nvalues = ["440305198506127314"]\n',
     "values", "lists.x.values", "wrong check character"),
    ("card too short", '[lists.x]\nmatch = "counterparty"\nvalues = ["1234"]\n', "values",
     "lists.x.values", "8..32 digits"),
    ("device padded", '[lists.x]\nmatch = "device"\nvalues = [" phone"]\n', "values",
     "lists.x.values", "leading or trailing spaces"),
    ("duplicate value", '[lists.x]\nmatch = "device"\nvalues = ["a", "a"]\n', "values",
     "lists.x.values", "value 2 (a string ('a')) is listed twice"),
    ("bad list name", '[lists.Bad-Name]\nmatch = "device"\nvalues = []\n', "Bad-Name",
     "lists.Bad-Name", "a list name"),
]  # fmt: skip


def _refusal_text(tail: str | None, case: str) -> str:
    if case == "unknown top-level key":
        return "colour = 1\n" + HEADER
    if case == "missing holds":
        return "version = 1\n"
    if case == "hold too long":
        return HEADER.replace("review_s = 600", "review_s = 9999999")
    if case == "version not an integer":
        return HEADER.replace("version = 3", 'version = "3"')
    assert tail is not None
    return HEADER + tail


@pytest.mark.parametrize(
    ("case", "tail", "fragment", "key", "reason"),
    [pytest.param(case[0], *case[1:], id=case[0]) for case in REFUSALS],
)
def test_refusal_names_source_line_and_key(
    case: str, tail: str | None, fragment: str, key: str, reason: str
) -> None:
    """A bad rule set is refused with one problem naming the source, the line of the
    offending key (or of its rule's table) and the key, and saying why; the error is a
    RuleFileError and carries (line, message) pairs for the approval request."""
    text = _refusal_text(tail, case)
    error = refused(text)
    assert len(error.catalog_problems) == 1, str(error)
    line = line_of(text, fragment, start=5 if fragment == "[[rules]]" else 1)
    assert (error.source, error.line) == (SOURCE, line), str(error)
    assert reason in error.message, str(error)
    assert str(error).startswith(f"{SOURCE}:{line}: `{key}`: "), str(error)
    assert error.errors == [(line, f"`{key}`: {error.message}")]
    assert isinstance(error, RuleFileError)


def test_every_problem_is_reported_at_once() -> None:
    """A file with many mistakes gets them all in one error, in file order, each on its line."""
    text = HEADER + (
        '[lists.devices]\nmatch = "device"\nvalues = ["ok", ""]\n'  # line 7
        '[[rules]]\nname = "a"\ntype = "velocity"\noutcome = "bloc"\nscope = "account"\n'
        'window = "1h"\ncount_max = 5\n'  # outcome line 11
        '[[rules]]\nname = "a"\ntype = "large_value"\noutcome = "allow"\n'
        'amount_min = 5000.0\n'  # amount_min line 19
        '[[rules]]\nname = "a"\ntype = "large_value"\noutcome = "allow"\n'
        'amount_min = "1.00"\n'
        '[[rules]]\nname = "a"\ntype = "large_value"\noutcome = "allow"\n'
        'amount_min = "2.00"\n'  # duplicate names: lines 16, 21, 26
    )  # fmt: skip
    error = refused(text)
    assert error.errors == [
        (7, "`lists.devices.values`: value 2 (a string ('')) is not a device id "
            "(1..128 printable characters)"),
        (11, '`rules[0].outcome`: unknown outcome: expected one of "allow", "challenge", '
             '"delay", "review", "block", got a string (\'bloc\')'),
        (16, "`rules[1].name`: duplicate rule name 'a' (also the rule at line 8): decisions "
             "name the rules that fired"),
        (19, "`rules[1].amount_min`: expected an amount in CNY as a string, got a float "
             "(5000.0) (a float cannot hold money exactly: write \"5000.00\")"),
        (21, "`rules[2].name`: duplicate rule name 'a' (also the rule at line 8): decisions "
             "name the rules that fired"),
        (26, "`rules[3].name`: duplicate rule name 'a' (also the rule at line 8): decisions "
             "name the rules that fired"),
    ]  # fmt: skip
    assert str(error).splitlines()[0].startswith(f"{SOURCE}:7: ")


def test_more_than_64_rules_is_refused() -> None:
    """A verdict's fired mask is 64 bits: the 65th rule is refused at its line."""
    rule = '[[rules]]\nname = "r{}"\ntype = "large_value"\noutcome = "allow"\namount_min = "1"\n'
    text = HEADER + "".join(rule.format(index) for index in range(RULES_MAX + 1))
    error = refused(text)
    assert len(error.catalog_problems) == 1
    assert error.line == line_of(text, f'name = "r{RULES_MAX}"') - 1
    assert "65 rules; at most 64" in error.message
    parse_risk_rules(HEADER + "".join(rule.format(index) for index in range(RULES_MAX)), SOURCE)


def test_invalid_toml_and_unreadable_files(tmp_path: Path) -> None:
    """Broken TOML names its line; a missing file or bytes that are not UTF-8 are refused
    with a RiskRulesError about the whole file, never an OSError or a UnicodeError."""
    error = refused(HEADER + "[[rules]\n")
    assert error.line == 5 and "invalid TOML" in error.message
    with pytest.raises(RiskRulesError, match="cannot read the risk rule file"):
        load_risk_rules(tmp_path / "absent.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(HEADER.encode() + b"# caf\xe9\n")
    with pytest.raises(RiskRulesError, match="not valid UTF-8") as caught:
        load_risk_rules(latin)
    assert caught.value.line == 0 and caught.value.errors[0][0] == 0


def test_successor_must_increase_the_version() -> None:
    """An approved change is a new, higher version; the same or a lower one is refused at
    the version's line."""
    current = parse_risk_rules(HEADER, SOURCE)
    check_risk_successor(current, parse_risk_rules(HEADER.replace("= 3", "= 4"), SOURCE))
    for version in (3, 2):
        stale = parse_risk_rules(HEADER.replace("= 3", f"= {version}"), "approval A1")
        with pytest.raises(RiskRulesError, match="does not increase the version") as caught:
            check_risk_successor(current, stale)
        assert (caught.value.source, caught.value.line) == ("approval A1", 1)


MUTATIONS: list[tuple[str, Callable[[str], str]]] = [
    ("drop the holds table", lambda text: re.sub(r"\[holds\]\n", "[holdz]\n", text)),
    ("misspell a rule key", lambda text: text.replace("count_max = 30", "count_maxx = 30", 1)),
]


@pytest.mark.parametrize(("case", "mutate"), MUTATIONS, ids=[case for case, _ in MUTATIONS])
def test_shipped_file_edits_are_caught(case: str, mutate: Callable[[str], str]) -> None:
    """Typical slips in the real file are refused, not half-applied."""
    with pytest.raises(RiskRulesError):
        parse_risk_rules(mutate(TEXT), SOURCE)


# --- The shipped rules at work (the kernel and its twin) ------------------------------------


class Screen:
    """The shipped program on the compiled kernel (`cext.risk.RiskKernel`) or its twin
    (`limits.risk_reference.ReferenceRiskKernel`), one posting at a time, contexts filled
    the way the service fills them (`key_of` of each string; the counterparty of an
    internal transfer is the credit account id)."""

    START_S = 1_767_225_600  # 2026-01-01 00:00 UTC

    def __init__(self, evaluator: str) -> None:
        from cext.risk import RiskKernel
        from limits.risk_reference import ReferenceRiskKernel

        self.rules = load_risk_rules(SHIPPED)
        self.kernel = RiskKernel() if evaluator == "kernel" else ReferenceRiskKernel()
        self.kernel.set_program(self.rules.program())
        for list_id, keys in self.rules.list_values():
            self.kernel.set_list(list_id, keys)
        self.serial = 0

    def post(
        self,
        debit: int,
        credit: int,
        amount_minor: int,
        *,
        at_s: int,
        code: TransferCode = TransferCode.TRANSFER,
        customer: str = "",
        device: str = "",
        resident: str = "",
        local_s: int = 14 * 3_600,
        second_factor: bool = False,
    ) -> tuple[Outcome, bool, bool, tuple[str, ...]]:
        """(outcome, report, challenge met, names of the rules that fired)."""
        from ledger.records import pack_transfer
        from limits.risk_layout import VERDICT, pack_context

        self.serial += 1
        record = pack_transfer(
            id=self.serial, debit_account_id=debit, credit_account_id=credit,
            amount=amount_minor, code=code,
        )  # fmt: skip
        context = pack_context(
            customer=key_of("customer", customer or f"c{debit}"),
            device=key_of("device", device) if device else 0,
            counterparty=credit,
            resident=key_of("resident_id", resident) if resident else 0,
            local_s=local_s,
            second_factor=second_factor,
        )
        out = bytearray(VERDICT.size)
        self.kernel.screen(record, context, 1, self.START_S + at_s, out)
        outcome, report, met, fired = VERDICT.unpack(out)
        return Outcome(outcome), bool(report), bool(met), self.rules.fired_names(fired)


@pytest.fixture(params=["kernel", "reference"])
def screen(request: pytest.FixtureRequest) -> Screen:
    return Screen(request.param)


CNY = 100
PAYER, SHOP, FRIEND = 6235010000000000001, 6235010000000000002, 6235010000000000003


def test_ordinary_customers_are_left_alone(screen: Screen) -> None:
    """A month of everyday life for 40 customers (three payments a day of up to 3,000 CNY
    to people they pay again, a weekly cash withdrawal, then a 9,000 CNY purchase, from
    their own phone, some at 1 a.m.) fires no rule of the shipped set."""
    fired: list[tuple[int, tuple[str, ...]]] = []

    def post(customer: int, credit: int, amount_minor: int, at_s: int, **context: Any) -> None:
        names = screen.post(6235010000001000000 + customer, credit, amount_minor, at_s=at_s,
                            **context)[3]  # fmt: skip
        fired.extend([(customer, names)] if names else [])

    for day in range(30):  # in time order: the kernel's clock only moves forward
        for k in range(3):
            for customer in range(40):
                payee = 6235010000002000000 + (customer + day + k) % 40
                amount = (50 + (customer * 37 + day * 11 + k * 101) % 2_950) * CNY
                at_s = day * 86_400 + 8 * 3_600 + k * 4_000 + customer
                local_s = (at_s + 8 * 3_600) % 86_400 if k < 2 else 3_600  # some at 1 a.m.
                post(customer, payee, amount, at_s, device=f"phone-{customer}", local_s=local_s)
        if day % 7 == 3:
            for customer in range(40):
                at_s = day * 86_400 + 50_000 + customer
                post(customer, 10, 2_000 * CNY, at_s, code=TransferCode.CASH_WITHDRAWAL)
    for customer in range(40):
        payee = 6235010000002000000 + customer
        post(customer, payee, 9_000 * CNY, 30 * 86_400 + customer, device=f"phone-{customer}")
    assert fired == []


def test_stolen_device_pattern(screen: Screen) -> None:
    """A customer's password on a new phone: 6,000 CNY needs a second factor; with it the
    transfer goes; 60,000 CNY to a new payee from that phone, far above what the customer
    usually sends, waits for a risk officer even with it."""
    for day in range(10):
        screen.post(PAYER, SHOP, 200 * CNY, at_s=day * 86_400, device="own-phone")
    at_s = 10 * 86_400
    assert screen.post(PAYER, FRIEND, 6_000 * CNY, at_s=at_s, device="own-phone")[0] is (
        Outcome.ALLOW
    )
    challenged = screen.post(PAYER, FRIEND, 6_000 * CNY, at_s=at_s + 60, device="thief")
    assert challenged == (Outcome.CHALLENGE, False, False, ("new_device_large",))
    met = screen.post(PAYER, FRIEND, 6_000 * CNY, at_s=at_s + 90, device="thief",
                      second_factor=True)  # fmt: skip
    assert met == (Outcome.ALLOW, False, True, ("new_device_large",))
    mule = 6235010000000000099
    delayed = screen.post(PAYER, mule, 60_000 * CNY, at_s=at_s + 120, device="thief",
                          second_factor=True)  # fmt: skip
    assert delayed[0] is Outcome.REVIEW  # far above this customer's usual amounts
    assert set(delayed[3]) == {
        "new_device_large", "new_device_very_large", "new_payee_large",
        "account_amount_spike", "customer_amount_spike",
    }  # fmt: skip


def test_mule_account_pattern(screen: Screen) -> None:
    """Thirty payers sending 1,000 CNY each to one account within the hour go through;
    the 31st transfer is held for review, and so is the next one."""
    mule = 6235010000000000666
    outcomes = [
        screen.post(6235010000003000000 + payer, mule, 1_000 * CNY, at_s=payer * 60)
        for payer in range(32)
    ]
    assert [outcome for outcome, *_ in outcomes[:30]] == [Outcome.ALLOW] * 30
    assert all(names == () for *_, names in outcomes[:30])
    assert outcomes[30] == (Outcome.REVIEW, False, False, ("mule_inflow",))
    assert outcomes[31][0] is Outcome.REVIEW
    # Small transfers (under 500 CNY) to a popular account are not a mule's pattern.
    popular = 6235010000000000777
    small = [
        screen.post(6235010000004000000 + payer, popular, 100 * CNY, at_s=payer * 10)[0]
        for payer in range(100)
    ]
    assert small == [Outcome.ALLOW] * 100


def test_lists(screen: Screen) -> None:
    """A blocked device, a frozen account (as payer or payee) and a card on the fraud list
    are blocked; a watched resident's 1,000 CNY waits for review, 999.99 CNY does not."""
    frozen = 6235019382716504821
    blocked = screen.post(PAYER, SHOP, 1, at_s=0, device="emu-farm-7f3a91c0e2d4")
    assert blocked == (Outcome.BLOCK, False, False, ("blocked_device",))
    assert screen.post(frozen, SHOP, 1, at_s=1)[3] == ("frozen_account",)
    assert screen.post(PAYER, frozen, 1, at_s=2)[0] is Outcome.BLOCK
    watched = "440305198506127313"
    assert screen.post(PAYER, SHOP, 1_000 * CNY, at_s=3, resident=watched)[:1] == (Outcome.REVIEW,)
    assert screen.post(PAYER, SHOP, 1_000 * CNY - 1, at_s=4, resident=watched)[0] is (Outcome.ALLOW)


def test_history_spike_and_night(screen: Screen) -> None:
    """After five 1,000 CNY transfers, 10,001 CNY (over ten times the median) is delayed;
    60,000 CNY at 2 a.m. to a payee paid before needs a second factor."""
    assert screen.post(FRIEND, SHOP, 100 * CNY, at_s=0)[3] == ()  # SHOP: FRIEND's payee
    for day in range(5):
        assert screen.post(PAYER, SHOP, 1_000 * CNY, at_s=day * 86_400 + 1)[3] == ()
    spike = screen.post(PAYER, SHOP, 10_001 * CNY, at_s=5 * 86_400)
    assert spike == (Outcome.DELAY, False, False, ("account_amount_spike",))
    assert screen.post(PAYER, SHOP, 10_000 * CNY, at_s=5 * 86_400 + 1)[3] == ()
    night = screen.post(FRIEND, SHOP, 60_000 * CNY, at_s=6 * 86_400, local_s=2 * 3_600)
    assert night == (Outcome.CHALLENGE, False, False, ("night_large",))
    morning = screen.post(FRIEND, SHOP, 60_000 * CNY, at_s=6 * 86_400 + 1, local_s=5 * 3_600)
    assert morning == (Outcome.ALLOW, False, False, ())


def test_large_value_reports_allow(screen: Screen) -> None:
    """50,000 CNY of cash and a 500,000 CNY transfer to a known payee are allowed and
    reported; 49,999.99 CNY of cash is not reported."""
    cash = screen.post(PAYER, 10, 50_000 * CNY, at_s=0, code=TransferCode.CASH_WITHDRAWAL)
    assert cash == (Outcome.ALLOW, True, False, ("large_cash",))
    less = screen.post(PAYER, 10, 50_000 * CNY - 1, at_s=1, code=TransferCode.CASH_WITHDRAWAL)
    assert less == (Outcome.ALLOW, False, False, ())
    deposit = screen.post(10, PAYER, 80_000 * CNY, at_s=2, code=TransferCode.CASH_DEPOSIT)
    assert deposit == (Outcome.ALLOW, True, False, ("large_cash",))


def test_value_key_meets_list_entries_whatever_the_spelling() -> None:
    """An IP is keyed in its canonical form, so a request's "2001:DB8:BAD:0::1" matches
    the list's "2001:db8:bad::1"; other kinds are `key_of` as they are."""
    rules = load_risk_rules(SHIPPED)
    keys = rules.lists["risky_ips"].keys
    assert value_key("ip", "2001:DB8:BAD:0::1") in keys
    assert value_key("ip", "198.51.100.250") == key_of("ip", "198.51.100.250") in keys
    assert value_key("ip", "not an address") == key_of("ip", "not an address")
    assert value_key("device", "Phone") == key_of("device", "Phone") != key_of("device", "phone")
