"""`tally audit`: clean on real books, and failing on every planted fault.

The books are real: `tally loadtest --setup-only` creates customers, accounts
and opening balances over the API on a fresh server, whose journal stays in
OUT/data and whose acknowledged answers are in OUT/outcomes-setup.jsonl. The
faults are planted in copies of the outcomes (what the clients claim to have
been told), never in the ledger.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.bench.server import Server, free_port
from tests.repo_paths import REPO_ROOT


def tally(*words: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
    return subprocess.run(
        [sys.executable, "-m", "core", *words], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=600, check=False, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit")
    done = tally(
        "loadtest", "--setup-only", "--customers", "6", "--merchants", "2", "--seed", "7",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def outcomes_copy(books: Path, tmp_path: Path) -> tuple[Path, list[dict[str, object]]]:
    lines = [json.loads(line) for line in (books / "outcomes-setup.jsonl").read_text().split("\n")
             if line]  # fmt: skip
    directory = tmp_path / "outcomes"
    directory.mkdir()
    return directory, lines


def write(directory: Path, lines: list[dict[str, object]]) -> None:
    (directory / "outcomes-planted.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines)
    )


def audit(books: Path, outcomes: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return tally("audit", str(books / "data"), "--outcomes", str(outcomes), *extra)


def test_setup_books_are_clean_and_fully_explained(books: Path, tmp_path: Path) -> None:
    """12 acknowledged setup postings (6 deposits + 6 top-ups + 2 merchant deposits)."""
    summary_path = tmp_path / "audit.json"
    done = audit(books, books, "--exclusive", "--json", str(summary_path))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["clean"]
    assert summary["counts"]["acknowledged_found"] == 6 + 6 + 2
    assert summary["counts"]["ledger_transfers_ok"] == 6 + 6 + 2
    assert summary["sums"]["balances_minor"] == 0
    assert "audit: clean" in done.stdout


def test_acknowledged_transfer_missing_from_the_ledger_fails(books: Path, tmp_path: Path) -> None:
    directory, lines = outcomes_copy(books, tmp_path)
    ghost = dict(lines[0])
    ghost["key"] = "a-key-the-server-never-saw"
    from core.services.records import TransferIds
    from core.services.server_secrets import DEVELOPMENT

    ids = TransferIds(DEVELOPMENT.transfer_id_key)
    ghost["transfer_id"] = f"{ids.id(3, str(ghost['key']), 0):032x}"
    write(directory, [*lines, ghost])
    done = audit(books, directory)
    assert done.returncode == 1, done.stdout
    assert "missing: acknowledged cash_deposit" in done.stdout
    assert "is not in the ledger" in done.stdout


def test_doctored_amount_fails(books: Path, tmp_path: Path) -> None:
    directory, lines = outcomes_copy(books, tmp_path)
    doctored = [dict(line) for line in lines]
    doctored[1]["amount_minor"] = int(str(doctored[1]["amount_minor"])) + 1
    write(directory, doctored)
    done = audit(books, directory)
    assert done.returncode == 1, done.stdout
    assert "mismatch" in done.stdout and "1 error(s): mismatch 1" in done.stdout


def test_answer_with_an_id_not_derived_from_its_key_fails(books: Path, tmp_path: Path) -> None:
    directory, lines = outcomes_copy(books, tmp_path)
    swapped = [dict(line) for line in lines]
    swapped[0]["transfer_id"], swapped[1]["transfer_id"] = (
        swapped[1]["transfer_id"],
        swapped[0]["transfer_id"],
    )
    write(directory, swapped)
    done = audit(books, directory)
    assert done.returncode == 1
    assert "identity" in done.stdout


def test_refused_request_that_was_applied_fails(books: Path, tmp_path: Path) -> None:
    directory, lines = outcomes_copy(books, tmp_path)
    refused = {**lines[2], "outcome": "refused", "slug": "exceeds-credits", "status": 422}
    write(directory, [*lines[:2], refused, *lines[3:]])
    done = audit(books, directory)
    assert done.returncode == 1
    assert "refused_applied" in done.stdout


def test_applied_transfer_no_client_was_told_of_fails_when_exclusive(
    books: Path, tmp_path: Path
) -> None:
    directory, lines = outcomes_copy(books, tmp_path)
    write(directory, lines[1:])
    assert audit(books, directory).returncode == 0  # a shared server: not provable
    done = audit(books, directory, "--exclusive")
    assert done.returncode == 1
    assert "unexplained" in done.stdout


def test_unknown_outcome_is_resolved_by_lookup(books: Path, tmp_path: Path) -> None:
    directory, lines = outcomes_copy(books, tmp_path)
    unknown = {"channel": "counter", "key": lines[0]["key"], "operation": "cash_deposit",
               "status": 0, "attempts": 4, "outcome": "unknown", "slug": ""}  # fmt: skip
    write(directory, [unknown, *lines[1:]])
    summary_path = tmp_path / "audit.json"
    done = audit(books, directory, "--exclusive", "--json", str(summary_path))
    assert done.returncode == 0, done.stdout
    assert json.loads(summary_path.read_text())["counts"]["unknown_applied"] == 1


@pytest.fixture()
def server(books: Path, tmp_path: Path) -> Iterator[Server]:
    data = tmp_path / "data"
    shutil.copytree(books / "data", data)
    port = free_port()
    command = [sys.executable, "-m", "core", "serve", "--port", str(port), "--data", str(data),
               "--access-log", "off", "--accounts-max", "65536", "--dev"]  # fmt: skip
    running = Server(command, port, tmp_path / "server.log", "/readyz")
    try:
        yield running
    finally:
        running.stop()


def test_online_audit_over_http(books: Path, tmp_path: Path, server: Server) -> None:
    """Against the running server: the same verdicts, read through the API."""
    dataset = str(books / "dataset.json")
    clean = tally("audit", server.url, "--outcomes", str(books), "--dataset", dataset,
                  "--exclusive")  # fmt: skip
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "acknowledged_found           14" in clean.stdout
    directory, lines = outcomes_copy(books, tmp_path)
    doctored = [dict(line) for line in lines]
    doctored[0]["credit_account_id"] = doctored[1]["credit_account_id"]
    write(directory, doctored)
    done = tally("audit", server.url, "--outcomes", str(directory), "--dataset", dataset)
    assert done.returncode == 1
    assert "mismatch" in done.stdout


def test_unusable_source_exits_2(tmp_path: Path) -> None:
    done = tally("audit", str(tmp_path / "nowhere"), "--outcomes", str(tmp_path))
    assert done.returncode == 2
    assert "neither a URL nor a data directory" in done.stderr


# --- the checks on planted books (the same functions, given the books as data) -------------


def view(
    transfer_id: int, debit: int, credit: int, amount: int, *, kind: str = "single",
    code: str = "transfer", state: str = "posted", channel_id: int = 1, day: str = "2026-11-22",
) -> dict[str, object]:  # fmt: skip
    return {
        "transfer_id": f"{transfer_id:032x}", "kind": kind, "state": state,
        "debit_account_id": str(debit), "credit_account_id": str(credit),
        "amount_minor": amount, "code": code, "channel_id": channel_id, "business_day": day,
        "pending_id": None, "result": {"code": 0, "name": "ok"},
    }  # fmt: skip


def class_ii(account_id: int, balance: int, outflow_daily_cap: int) -> object:
    from loadtests.audit import AccountState

    return AccountState(
        account_id, "class_ii", balance, 0, 0, balance,
        buckets=[("outflow_daily", 0, outflow_daily_cap), ("outflow_yearly", 0, 0),
                 ("inflow_daily", 0, 0), ("inflow_yearly", 0, 0)],
    )  # fmt: skip


def test_outflow_over_the_daily_cap_is_found_from_the_transfers_alone() -> None:
    """The ledger's own counters say 0 used; the transfers prove 10,000.01 CNY went out."""
    from limits.rules import load_rules
    from loadtests.audit import AccountState, Audit, check_limits_recomputed

    rules = load_rules(str(REPO_ROOT / "examples" / "limits.toml"))
    accounts = {20: class_ii(20, 0, 1_000_000), 10: AccountState(10, "class_i", 0, 0, 0, 0)}
    over = {1: view(1, 20, 30, 600_000, channel_id=3), 2: view(2, 20, 31, 400_001, channel_id=3)}
    audit = Audit()
    check_limits_recomputed(accounts, over, {20: 10}, rules, audit)
    assert audit.error_counts == {"limit_recomputed": 1}
    assert "outflow_daily 2026-11-22" in audit.errors[0]
    # To the bound card it does not count; on two days it does not add up; reversed, neither.
    for books in (
        {1: view(1, 20, 10, 600_000, channel_id=3), 2: view(2, 20, 31, 400_001, channel_id=3)},
        {1: view(1, 20, 30, 600_000, channel_id=3),
         2: view(2, 20, 31, 400_001, channel_id=3, day="2026-11-23")},
        {**over, 3: view(3, 31, 20, 1, kind="reversal", code="reversal", channel_id=3)},
    ):  # fmt: skip
        audit = Audit()
        check_limits_recomputed(accounts, books, {20: 10}, rules, audit)
        assert audit.clean, audit.errors


def test_channel_daily_cap_passed_is_found() -> None:
    """wechat allows 50,000 CNY a day per account: 50,000.01 CNY in single transfers is over."""
    from limits.rules import load_rules
    from loadtests.audit import AccountState, Audit, check_limits_recomputed

    rules = load_rules(str(REPO_ROOT / "examples" / "limits.toml"))
    accounts = {10: AccountState(10, "class_i", 0, 0, 0, 0)}
    books = {n: view(n, 10, 40 + n, 1_000_000) for n in range(1, 6)}
    audit = Audit()
    check_limits_recomputed(accounts, books, {}, rules, audit)
    assert audit.clean
    books[6] = view(6, 10, 50, 1)
    check_limits_recomputed(accounts, books, {}, rules, audit)
    assert audit.error_counts == {"limit_recomputed": 1} and "wechat" in audit.errors[0]


def test_balance_that_its_transfers_do_not_explain_is_found() -> None:
    from loadtests.audit import AccountState, Audit, check_conservation

    books = {1: view(1, 10, 20, 500), 2: view(2, 20, 10, 200, kind="hold", state="pending")}
    right = {  # the hold: 20 owes 10 another 200, pending
        10: AccountState(10, "class_i", -500, 0, 200, None),
        20: AccountState(20, "class_i", 500, 200, 0, None),
    }
    audit = Audit()
    check_conservation(right, books, audit, complete_history=True)
    assert audit.clean, audit.errors
    wrong = {
        10: AccountState(10, "class_i", -501, 0, 200, None),
        20: AccountState(20, "class_i", 501, 200, 0, None),
    }
    check_conservation(wrong, books, audit, complete_history=True)
    assert audit.error_counts == {"recomputed": 2}  # sums still 0: only recomputing sees it
    lost = {10: right[10], 20: AccountState(20, "class_i", 499, 200, 0, None)}
    audit = Audit()
    check_conservation(lost, books, audit, complete_history=True)
    assert audit.error_counts["conservation"] == 1
