"""The Cython kernel and `ledger.types` describe the same contract.

Status codes, record sizes and the calendar are written twice, once in
`cext/ledger_kernel.pxd`/`.pyx` and once in Python; these tests fail the
moment the two copies drift apart, before any differential test has to
discover it the hard way.
"""

from __future__ import annotations

import struct

import pytest

from cext import ledger_kernel
from ledger import BACKENDS, open_ledger
from ledger.kernel import (
    CHANNEL_ENTRY_SIZE,
    HEAP_ENTRY_SIZE,
    INDEX_ENTRY_SIZE,
    KernelLedger,
)
from ledger.reference import ReferenceLedger
from ledger.types import (
    ACCOUNT_INPUT_STRUCT,
    ACCOUNT_SIZE,
    ACCOUNT_STRUCT,
    BANK_RULE_STRUCT,
    CHANNEL_RULE_STRUCT,
    CHANNEL_SIZE,
    KIND_RULE_STRUCT,
    PENDING_SIZE,
    PENDING_STRUCT,
    PRODUCT_SIZE,
    RULES_SIZE,
    TRANSFER_SIZE,
    TRANSFER_STRUCT,
    AccountKind,
    ChannelOption,
    CreateAccountResult,
    CreateTransferResult,
    KindOption,
    TransferCode,
    TransferFlags,
)
from limits import rules as limits_rules
from limits.calendar import DAY_COUNT, day_of_date, year_of_day
from limits.rules import BANK_ROW, CHANNEL_ROW, KIND_ROW, PRODUCT_ROW


def test_transfer_results_match_both_ways() -> None:
    """Every transfer result code has the same name and number in the kernel and in Python."""
    kernel = dict(ledger_kernel.TRANSFER_RESULTS)
    python = {member.name: int(member) for member in CreateTransferResult}
    assert kernel == python
    assert sorted(kernel.values()) == list(range(len(kernel))), "codes must stay dense"


def test_account_results_match_both_ways() -> None:
    """Every account result code has the same name and number in the kernel and in Python."""
    kernel = dict(ledger_kernel.ACCOUNT_RESULTS)
    python = {member.name: int(member) for member in CreateAccountResult}
    assert kernel == python
    assert sorted(kernel.values()) == list(range(len(kernel))), "codes must stay dense"


def test_struct_sizes_match_the_python_layouts() -> None:
    """The kernel's packed structs are exactly the ones Python knows, with the same sizes.

    A struct added to or dropped from the kernel fails this test too: the
    Python side must learn about it (ledger.types, limits.rules, ledger.kernel).
    """
    expected = {
        "Account": ACCOUNT_STRUCT.size,
        "AccountInput": ACCOUNT_INPUT_STRUCT.size,
        "Counters": struct.calcsize("<iiii"),  # the four int32 bucket totals of an account
        "Pending": PENDING_STRUCT.size,
        "Transfer": TRANSFER_STRUCT.size,
        "Product": PRODUCT_ROW.size,
        "ChannelRule": CHANNEL_ROW.size,
        "KindRule": KIND_ROW.size,
        "BankRule": BANK_ROW.size,
        "IndexEntry": INDEX_ENTRY_SIZE,
        "HeapEntry": HEAP_ENTRY_SIZE,
        "ChannelEntry": CHANNEL_ENTRY_SIZE,
    }
    assert dict(ledger_kernel.STRUCT_SIZES) == expected
    assert ACCOUNT_STRUCT.size == ACCOUNT_INPUT_STRUCT.size == ACCOUNT_SIZE
    assert TRANSFER_STRUCT.size == TRANSFER_SIZE
    assert PENDING_STRUCT.size == PENDING_SIZE
    assert PRODUCT_ROW.size == PRODUCT_SIZE
    assert CHANNEL_ROW.size == CHANNEL_SIZE
    assert CHANNEL_ROW.format == CHANNEL_RULE_STRUCT.format
    assert KIND_ROW.format == KIND_RULE_STRUCT.format
    assert BANK_ROW.format == BANK_RULE_STRUCT.format
    assert limits_rules.RULE_TABLE_SIZE == RULES_SIZE


def test_rule_file_names_agree_with_the_ledger_enums() -> None:
    """limits (below ledger) repeats the transfer codes, internal kinds and option bits by
    name: the same names and numbers as ledger.types."""
    codes = {code.name.lower(): int(code) for code in TransferCode}
    assert dict(limits_rules.TRANSFER_CODES) == codes
    assert dict(limits_rules.INTERNAL_ACCOUNT_KINDS) == {
        kind.name.removeprefix("INTERNAL_").lower(): int(kind)
        for kind in AccountKind
        if kind >= AccountKind.INTERNAL_CASH
    }
    assert limits_rules.CHANNEL_STRONG_AUTH_EXEMPT == ChannelOption.STRONG_AUTH_EXEMPT
    assert limits_rules.CHANNEL_CUSTOMER_CAP_EXEMPT == ChannelOption.CUSTOMER_CAP_EXEMPT
    assert limits_rules.KIND_FLOOR_ENFORCED == KindOption.FLOOR_ENFORCED
    assert limits_rules.KIND_BANK_SIDE == KindOption.BANK_SIDE
    assert TransferFlags.STRONG_AUTH == 16


def test_year_of_day_agrees_on_every_representable_day() -> None:
    """The kernel's civil-year function equals the Python twin for all 65,536 day numbers."""
    mismatches = [
        (day, ledger_kernel.year_of_day_kernel(day), year_of_day(day))
        for day in range(DAY_COUNT)
        if ledger_kernel.year_of_day_kernel(day) != year_of_day(day)
    ]
    assert mismatches == []


@pytest.mark.parametrize(
    ("date", "year"),
    [((2000, 1, 1), 2000), ((2025, 12, 31), 2025), ((2026, 1, 1), 2026),
     ((2024, 2, 29), 2024), ((2100, 3, 1), 2100), ((2179, 6, 6), 2179)],
)
def test_year_of_day_at_year_edges(date: tuple[int, int, int], year: int) -> None:
    """Year boundaries, leap days and the last representable day map to the right civil year."""
    day = day_of_date(*date)
    assert ledger_kernel.year_of_day_kernel(day) == year_of_day(day) == year


def test_tally_kernel_reference_selects_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """TALLY_KERNEL=reference makes open_ledger return the plain-Python ReferenceLedger."""
    monkeypatch.setenv("TALLY_KERNEL", "reference")
    ledger = open_ledger(account_capacity=4, transfer_capacity=8)
    assert isinstance(ledger, ReferenceLedger)
    assert ledger.backend == "reference"


def test_default_backend_is_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TALLY_KERNEL (or with TALLY_KERNEL=kernel) open_ledger returns the kernel."""
    monkeypatch.delenv("TALLY_KERNEL", raising=False)
    assert isinstance(open_ledger(account_capacity=4, transfer_capacity=8), KernelLedger)
    monkeypatch.setenv("TALLY_KERNEL", "kernel")
    assert isinstance(open_ledger(account_capacity=4, transfer_capacity=8), KernelLedger)
    assert BACKENDS == ("kernel", "reference")


def test_explicit_backend_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit backend= argument overrides the environment variable."""
    monkeypatch.setenv("TALLY_KERNEL", "kernel")
    ledger = open_ledger(account_capacity=4, transfer_capacity=8, backend="reference")
    assert isinstance(ledger, ReferenceLedger)


@pytest.mark.parametrize("name", ["fast", "Kernel", "cython", "ref"])
def test_unknown_backend_name_raises(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """An unknown TALLY_KERNEL is an error naming the choices, never a silent fallback."""
    monkeypatch.setenv("TALLY_KERNEL", name)
    with pytest.raises(ValueError, match="TALLY_KERNEL must be one of kernel, reference"):
        open_ledger(account_capacity=4, transfer_capacity=8)
