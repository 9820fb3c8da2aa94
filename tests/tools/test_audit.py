"""`tally audit`: clean on real books, and failing on every planted fault.

The books are real: `tally loadtest --setup-only` creates customers, accounts
and opening balances over the API on a fresh server, whose journal stays in
OUT/data and whose acknowledged answers are in OUT/outcomes-setup.jsonl. The
faults are planted in copies of the outcomes (what the clients claim to have
been told), never in the ledger.
"""

from __future__ import annotations

import base64
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
    # The holders and bindings read through the API (the bindings the dataset names).
    assert "class_ii_holders_verified    6" in clean.stdout
    assert "opening_bindings_verified    6" in clean.stdout
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


# --- real-name verification (issue 17): faults planted in a copy of the books ------------
#
# The server never opens a Class II account for a holder who is not verified, on a
# binding that did not pass, nor writes an SMS code down: so the faults are planted
# the only way they could get there, as one more state entry appended to a copy of the
# journal (what a bug in the services would have written).


def planted_copy(books: Path, tmp_path: Path, changes: list[tuple[bytes, bytes]]) -> Path:
    """A copy of the books' data directory with `changes` appended as a PUT_STATE entry."""
    from core.entries import Entry, EntryKind, encode_state_changes
    from core.journal import Journal
    from core.store import read_entries

    data = tmp_path / "data"
    shutil.copytree(books / "data", data, ignore=shutil.ignore_patterns("*.lock"))
    *_, (_, last) = read_entries(str(data))
    entry = Entry(
        EntryKind.PUT_STATE, last.timestamp_first + 1, last.business_day, len(changes),
        encode_state_changes(changes),
    )  # fmt: skip
    with Journal.open(str(data)) as journal:
        journal.append([entry])
    return data


def state_records(books: Path) -> dict[bytes, dict[str, object]]:
    from core.store import replay_store

    replayed = replay_store(str(books / "data"), 1 << 16, 1 << 16)
    return {key: json.loads(value) for key, value in replayed.state.items() if value}


def class_ii_holder(records: dict[bytes, dict[str, object]]) -> tuple[str, dict[str, object]]:
    """A Class II account of the books and its account record."""
    for key, record in records.items():
        if key.startswith(b"account/") and record["class"] == 2:
            return str(record["id"]), record
    raise AssertionError("the books hold no Class II account")


def test_setup_books_have_verified_holders_on_verified_bindings(
    books: Path, tmp_path: Path
) -> None:
    """The 6 Class II accounts of the setup: each holder verified at the counter, each
    opened on its Class I card's binding, which passed and is marked used by it."""
    summary_path = tmp_path / "audit.json"
    done = audit(books, books, "--exclusive", "--json", str(summary_path))
    assert done.returncode == 0, done.stdout + done.stderr
    counts = json.loads(summary_path.read_text())["counts"]
    assert counts["class_ii_holders_verified"] == 6
    assert counts["opening_bindings_verified"] == 6
    records = state_records(books)
    _, account = class_ii_holder(records)
    bound = account["bound"]
    assert isinstance(bound, dict) and bound["binding_id"]
    binding = records[f"binding/{bound['binding_id']}".encode()]
    assert binding["account"] == account["id"]


def test_class_ii_holder_not_verified_fails(books: Path, tmp_path: Path) -> None:
    """A Class II holder whose verification is pending again (a step's result lost, say):
    the audit names the account and the customer."""
    records = state_records(books)
    account_id, account = class_ii_holder(records)
    key = f"customer/{account['customer']}".encode()
    customer = records[key]
    assert isinstance(customer["kyc"], dict) and customer["kyc"]["status"] == "verified"
    customer["kyc"] = {**customer["kyc"], "status": "pending"}
    data = planted_copy(books, tmp_path, [(key, json.dumps(customer).encode())])
    done = tally("audit", str(data), "--outcomes", str(books), "--exclusive")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unverified_holder" in done.stdout
    assert f"account {account_id}" in done.stdout and "verification is pending" in done.stdout
    assert "1 error(s): unverified_holder 1" in done.stdout


def test_account_on_a_binding_that_did_not_pass_fails(books: Path, tmp_path: Path) -> None:
    """The binding an account was opened on, its issuer check failed: unverified_binding."""
    records = state_records(books)
    account_id, account = class_ii_holder(records)
    bound = account["bound"]
    assert isinstance(bound, dict)
    key = f"binding/{bound['binding_id']}".encode()
    binding = records[key]
    steps = binding["steps"]
    assert isinstance(steps, dict) and steps["issuer_card"]["state"] == "passed"
    steps["issuer_card"] = {**steps["issuer_card"], "state": "failed"}
    data = planted_copy(books, tmp_path, [(key, json.dumps(binding).encode())])
    done = tally("audit", str(data), "--outcomes", str(books), "--exclusive")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"unverified_binding: account {account_id}" in done.stdout
    assert "steps did not all pass" in done.stdout


def test_sms_codes_images_and_tokens_written_down_fail(books: Path, tmp_path: Path) -> None:
    """A code a customer received (an `sms_code` outcome line) in a state record and in the
    server's log, an ID card image and a liveness token in the log: each a `leak`. The same
    digits as a JSON number (an amount) are no code: the clean log passes."""
    from core.providers.population import face_of, id_card_image, liveness_token

    code = "480213"
    data = planted_copy(
        books, tmp_path,
        [(b"kyccall/cplanted/1", json.dumps({"outcome": "ok", "note": f"code {code}"}).encode())],
    )  # fmt: skip
    directory, lines = outcomes_copy(books, tmp_path)
    sms = {"channel": "app", "operation": "sms_code", "outcome": "sms_received", "code": code}
    write(directory, [*lines, sms])
    clean_log = tmp_path / "clean.log"
    clean_log.write_text(json.dumps({"event": "payment", "amount_minor": int(code)}) + "\n")
    done = tally("audit", str(books / "data"), "--outcomes", str(directory),
                 "--server-log", str(clean_log))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sms_codes_not_leaked         1" in done.stdout
    image = base64.b64encode(id_card_image("张三", "110105199001011234")).decode()
    leaky_log = tmp_path / "server.log"
    leaky_log.write_text(
        json.dumps({"event": "sms_sent", "text": f"Your code is {code}."}) + "\n"
        + json.dumps({"event": "ocr", "image": image}) + "\n"
        + json.dumps({"event": "liveness", "token": liveness_token(face_of("x"))}) + "\n"
    )  # fmt: skip
    summary_path = tmp_path / "audit.json"
    done = tally("audit", str(data), "--outcomes", str(directory), "--server-log",
                 str(leaky_log), "--json", str(summary_path))  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    summary = json.loads(summary_path.read_text())
    shown = "\n".join(summary["errors_shown"])
    assert f"server.log:1: the SMS code {code}" in shown
    assert "server.log:2: an image or token ('iVBORw0KGgo')" in shown
    assert "server.log:3: an image or token ('lv1.face-')" in shown
    assert "state kyccall/cplanted/1" in shown  # the code, found though the log had it too
    assert summary["counts"]["sms_codes_not_leaked"] == 0


def test_verification_checks_on_planted_records() -> None:
    """`check_verification` given the books as data: a holder not verified, an account
    bound without a binding, a binding of another customer, one not used, one used by
    another account, a client told another binding, a fraudster verified, another
    person's card bound: each its error; the right books pass."""
    from loadtests.audit import Audit, VerificationRecords, check_verification

    def books_of() -> VerificationRecords:
        return VerificationRecords(
            customers={"c1": {"verified": True, "status": "verified"},
                       "c2": {"verified": True, "status": "verified"}},
            accounts={20: {"customer": "c1", "class": 2, "closed": False, "bound": True,
                           "binding_id": "b1"},
                      10: {"customer": "c1", "class": 1, "closed": False, "bound": False,
                           "binding_id": ""}},
            bindings={"b1": {"customer": "c1", "status": "used", "steps_passed": True,
                             "account": 20, "card_number": "6228480000000001"},
                      "b2": {"customer": "c2", "status": "unused", "steps_passed": False,
                             "account": 0, "card_number": "6228480000000002"}},
        )  # fmt: skip

    opened = {"outcome": "opened", "account_id": "20", "customer_id": "c1", "binding_id": "b1"}
    frauds = [
        {"operation": "verification", "customer_id": "c2", "pattern": "other_card",
         "card_number": "6228480000000002", "result": "rejected"},
        {"operation": "verification", "customer_id": "c2", "pattern": "spoof",
         "customer_status": "rejected", "result": "rejected"},
    ]  # fmt: skip
    right = books_of()
    right.customers["c2"] = {"verified": False, "status": "rejected"}
    audit = Audit()
    check_verification(right, [opened, *frauds], audit)
    assert audit.clean, audit.errors
    assert audit.counts["class_ii_holders_verified"] == 1
    assert audit.counts["opening_bindings_verified"] == 1
    assert audit.counts["fraud_refused"] == 2

    def errors(plant: object, lines: list[dict[str, object]] | None = None) -> dict[str, int]:
        books = books_of()
        books.customers["c2"] = {"verified": False, "status": "rejected"}
        plant(books)  # type: ignore[operator]
        audit = Audit()
        check_verification(books, [opened, *frauds] if lines is None else lines, audit)
        return dict(audit.error_counts)

    def pending(books: VerificationRecords) -> None:
        books.customers["c1"] = {"verified": False, "status": "pending"}

    def no_binding(books: VerificationRecords) -> None:
        books.accounts[20]["binding_id"] = ""

    def others(books: VerificationRecords) -> None:
        books.bindings["b1"]["customer"] = "c2"

    def unused(books: VerificationRecords) -> None:
        books.bindings["b1"].update(status="unused", account=0)

    def elsewhere(books: VerificationRecords) -> None:
        books.bindings["b1"]["account"] = 21

    def told_other(books: VerificationRecords) -> None:
        books.accounts[20]["binding_id"] = "b9"
        books.bindings["b9"] = dict(books.bindings["b1"])

    def fraud_verified(books: VerificationRecords) -> None:
        books.customers["c2"] = {"verified": True, "status": "verified"}

    def card_bound(books: VerificationRecords) -> None:
        books.bindings["b2"]["steps_passed"] = True

    assert errors(pending) == {"unverified_holder": 1}
    assert errors(no_binding) == {"unverified_binding": 2}  # none named; the client's claim
    assert errors(others) == {"unverified_binding": 1}
    assert errors(unused) == {"unverified_binding": 1}
    assert errors(elsewhere) == {"unverified_binding": 1}
    assert errors(told_other) == {"unverified_binding": 1}
    assert errors(fraud_verified) == {"fraud_verified": 1}
    assert errors(card_bound) == {"fraud_verified": 1}
    closed = books_of()
    closed.accounts[20]["closed"] = True
    closed.customers["c1"] = {"verified": False, "status": "rejected"}
    audit = Audit()
    check_verification(closed, [], audit)
    assert audit.clean  # a closed account's holder may be anyone now
