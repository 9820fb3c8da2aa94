"""The refusal -> ISO 20022 status reason table (channels/iso20022/reasons.py).

What is proved here: the table is total (every service refusal and every failed ledger
result has a reason or is a "not now"); the decisions docs/iso20022.md states hold
(unknown account AC01, closed AC04, frozen AC06, inflow caps AM02, what the account may
not receive at all AG01, duplicates AM05, a return's original missing AG09 and over its
amount AM09, the clearing account short AM04); the load-shedding refusals are PDNG with
no reason, never RJCT; every reason is a 4-character ExternalStatusReason1Code.
"""

from __future__ import annotations

import pytest

from channels.iso20022 import reasons
from core.services.refusals import Code, Refusal
from ledger.types import CreateTransferResult as R


def ledger(result: R) -> Refusal:
    return Refusal(Code.TRANSFER_REFUSED, ledger_code=int(result))


def test_every_refusal_and_result_is_mapped() -> None:
    """No refusal reaches a partner unmapped: both tables cover their enums."""
    for code in Code:
        if code in (Code.TRANSFER_REFUSED, Code.TRANSFER_OF_ANOTHER_CHANNEL):
            continue
        assert code in reasons.BY_CODE, code
    assert set(reasons.BY_RESULT) == set(R) - {R.OK, R.EXISTS}
    for reason in [*reasons.BY_CODE.values(), *reasons.BY_RESULT.values()]:
        assert reason is None or (len(reason) == 4 and reason.isalnum() and reason.isupper())


@pytest.mark.parametrize(
    ("refusal", "expected"),
    [
        (Refusal(Code.ACCOUNT_NOT_FOUND), ("RJCT", "AC01")),
        (Refusal(Code.INTERNAL_ACCOUNT_NOT_ALLOWED), ("RJCT", "AC01")),
        (ledger(R.CREDIT_ACCOUNT_NOT_FOUND), ("RJCT", "AC01")),
        (ledger(R.CREDIT_ACCOUNT_CLOSED), ("RJCT", "AC04")),
        (ledger(R.CREDIT_ACCOUNT_FROZEN), ("RJCT", "AC06")),
        (ledger(R.EXCEEDS_DAILY_INFLOW), ("RJCT", "AM02")),
        (ledger(R.EXCEEDS_YEARLY_INFLOW), ("RJCT", "AM02")),
        (ledger(R.EXCEEDS_BALANCE_CAP), ("RJCT", "AM02")),
        (ledger(R.NON_BOUND_INFLOW_DISABLED), ("RJCT", "AG01")),
        (Refusal(Code.RISK_BLOCKED), ("RJCT", "AG01")),
        (ledger(R.EXISTS_WITH_DIFFERENT_AMOUNT), ("RJCT", "AM05")),
        (ledger(R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID), ("RJCT", "AM05")),
        (Refusal(Code.TRANSFER_NOT_FOUND), ("RJCT", "AG09")),
        (
            Refusal(Code.TRANSFER_OF_ANOTHER_CHANNEL, ledger_code=int(R.REVERSAL_TARGET_NOT_FOUND)),
            ("RJCT", "AG09"),
        ),
        (ledger(R.EXCEEDS_REVERSIBLE_AMOUNT), ("RJCT", "AM09")),
        (ledger(R.EXCEEDS_CREDITS), ("RJCT", "AM04")),
        (Refusal(Code.OVERLOADED), ("PDNG", None)),
        (Refusal(Code.NOT_READY), ("PDNG", None)),
        (Refusal(Code.STORAGE_UNAVAILABLE), ("PDNG", None)),
        (ledger(R.CHANNEL_LOG_QUOTA_EXCEEDED), ("PDNG", None)),
    ],
)
def test_the_documented_decisions(refusal: Refusal, expected: tuple[str, str | None]) -> None:
    """Each decision of the module docstring, one refusal each."""
    assert reasons.status(refusal) == expected


def test_the_detail_is_the_refusals_or_the_results_name() -> None:
    """status_reason gives the AddtlInf text: the refusal's detail, else a stable name."""
    assert reasons.status_reason(Refusal(Code.ACCOUNT_NOT_FOUND, "no account 622...")) == (
        "AC01",
        "no account 622...",
    )
    assert reasons.status_reason(ledger(R.CREDIT_ACCOUNT_FROZEN)) == (
        "AC06",
        "credit_account_frozen",
    )
    assert reasons.status_reason(Refusal(Code.OVERLOADED)) == (None, "overloaded")
