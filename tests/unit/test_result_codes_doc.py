"""docs/result-codes.md is the one reference table: it must match the enums exactly."""

from __future__ import annotations

import re
from enum import IntEnum

import pytest

from ledger.types import AccountUpdateResult, CreateAccountResult, CreateTransferResult
from tests.repo_paths import REPO_ROOT

DOC = REPO_ROOT / "docs" / "result-codes.md"


def table_rows(section: str) -> list[tuple[int, str]]:
    text = DOC.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else len(text)]
    return [
        (int(code), name) for code, name in re.findall(r"^\| (\d+) \| `([a-z_]+)` \|", body, re.M)
    ]


@pytest.mark.parametrize(
    ("section", "enum"),
    [
        ("Transfers (`CreateTransferResult`)", CreateTransferResult),
        ("Accounts (`CreateAccountResult`)", CreateAccountResult),
        ("Account updates (`AccountUpdateResult`)", AccountUpdateResult),
    ],
)
def test_doc_table_matches_enum(section: str, enum: type[IntEnum]) -> None:
    """Every code is documented once, with its number and name, in enum order."""
    documented = table_rows(section)
    expected = [(int(member), member.name.lower()) for member in enum]
    assert documented == expected


def test_doc_table_of_service_refusals_matches_the_adapter() -> None:
    """Every service refusal code is documented once, in enum order, with the status and
    problem type the HTTP adapter answers it with (`channels/http/problems.py`)."""
    from channels.http.problems import REFUSALS
    from core.services.refusals import Code

    text = DOC.read_text()
    start = text.index("## Service refusals (`Code`)")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else len(text)]
    rows = re.findall(r"^\| (\d+) \| `([a-z_]+)` \| (\d+|ledger) \| `?([a-z-]+)`? \|", body, re.M)
    assert [(int(code), name) for code, name, _, _ in rows] == [
        (int(member), member.name.lower()) for member in Code
    ]
    for code, _, status, slug in rows:
        entry = REFUSALS.get(Code(int(code)))
        if entry is None:  # answered from the ledger's own tables
            assert (status, slug) == ("ledger", "ledger")
        else:
            assert (int(status), slug) == entry[:2]
