"""`tally admin` against a real server: maker and checker through the command line, as
operators use it, and its exit statuses (0 done, 1 refused, 2 usage, 3 signature
refused, 4 not found, 5 unreachable)."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tomllib
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.data import DEFAULT_OPERATORS_PATH, DEFAULT_RISK_PATH
from tests.http_helpers import TallyServer, cash_deposit, open_class_i, register
from tests.repo_paths import REPO_ROOT

OPERATOR_ENV = (
    "TALLY_SERVER",
    "TALLY_OPERATOR",
    "TALLY_OPERATOR_KEY_ID",
    "TALLY_OPERATOR_SECRET",
    "TALLY_OPERATOR_SECRET_FILE",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    running = TallyServer(tmp_path_factory.mktemp("admin") / "data").start()
    try:
        yield running
    finally:
        running.stop()


def admin(
    server: TallyServer | None, *words: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`tally admin WORDS` against `server` (its URL first: the common options may come
    before the subcommand)."""
    clean = {name: value for name, value in os.environ.items() if name not in OPERATOR_ENV}
    clean.pop("PYTHONOPTIMIZE", None)
    clean.update(env or {})
    prefix = ["--server", server.url] if server is not None else []
    return subprocess.run(
        [sys.executable, "-m", "core", "admin", *prefix, *words], capture_output=True,
        text=True, cwd=REPO_ROOT, timeout=120, check=False, env=clean,
    )  # fmt: skip


def op(server: TallyServer, operator: str, *words: str) -> subprocess.CompletedProcess[str]:
    """`tally admin WORDS` signed by `operator` with its development key (`--dev`)."""
    return admin(server, *words, "--operator", operator, "--dev")


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def items(body: Any, *names: str) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return body
    assert isinstance(body, dict), body
    for name in names:
        if isinstance(body.get(name), list):
            return list(body[name])
    raise AssertionError(f"no list in {body}")


def approval(body: Any) -> dict[str, Any]:
    """The request in an answer (the answer itself, or its `approval`)."""
    assert isinstance(body, dict), body
    return dict(body.get("approval", body))


def next_rules(tmp_path: Path, version: int, name: str = "risk-next.toml") -> Path:
    """The shipped rule set as version `version`."""
    text = DEFAULT_RISK_PATH.read_text()
    changed, count = re.subn(r"(?m)^version = \d+", f"version = {version}", text)
    assert count == 1
    path = tmp_path / name
    path.write_text(changed)
    return path


def risk_version(server: TallyServer) -> int:
    body = as_json(op(server, "risk1", "parameters", "risk", "--json"))
    return int(body["current"]["version"])


def test_maker_requests_checker_approves_and_the_change_applies(
    server: TallyServer, tmp_path: Path
) -> None:
    """risk1 requests a new rule set from a file; risk1 cannot approve it (exit 1,
    self-approval); risk2 approves; the version in force is the new one, the request is
    applied, and the audit names both operators."""
    before = risk_version(server)
    path = next_rules(tmp_path, before + 1)
    made = approval(
        as_json(
            op(server, "risk1", "request", "risk", "--file", str(path), "--reason", "new", "--json")
        )
    )
    request_id = str(made["id"])
    assert made["state"] == "pending" and made["maker"] == "risk1"

    self_approved = op(server, "risk1", "approve", request_id)
    assert self_approved.returncode == 1, self_approved.stderr
    assert "self" in self_approved.stderr.lower()

    shown = op(server, "risk2", "show", request_id)
    assert shown.returncode == 0, shown.stderr
    assert request_id in shown.stdout and "pending" in shown.stdout
    assert f"+version = {before + 1}" in shown.stdout  # the diff of the file

    approved = approval(
        as_json(op(server, "risk2", "approve", request_id, "--reason", "ok", "--json"))
    )
    assert approved["state"] == "applied"
    assert risk_version(server) == before + 1

    listed = as_json(op(server, "risk2", "list", "--state", "applied", "--json"))
    assert request_id in [row["id"] for row in items(listed, "items")]

    audit = as_json(op(server, "admin1", "audit", "--limit", "1000", "--json"))
    entries = [(row["who"], row["what"]) for row in items(audit, "items")]
    assert ("risk1", "request") in entries and ("risk2", "approve") in entries

    text = op(server, "risk1", "parameters", "risk", "--text")
    assert text.returncode == 0 and text.stdout == path.read_text()


def test_refusals_exit_1_with_the_servers_reason(server: TallyServer, tmp_path: Path) -> None:
    """A duplicate pending request, a role that may not request the kind, an invalid file
    (every error with its line): each refused as the server says, exit 1; a rejection is
    done (exit 0), the request kept as rejected."""
    version = risk_version(server)
    path = next_rules(tmp_path, version + 1)
    first = approval(as_json(op(server, "risk1", "request", "risk", "--file", str(path), "--json")))
    duplicate = op(server, "risk2", "request", "risk", "--file", str(path))
    assert duplicate.returncode == 1 and "409" in duplicate.stderr

    teller = op(server, "teller1", "request", "risk", "--file", str(path))
    assert teller.returncode == 1 and "403" in teller.stderr

    rejected = op(server, "risk2", "reject", str(first["id"]), "--reason", "not now", "--json")
    assert approval(as_json(rejected))["state"] == "rejected"

    bad = tmp_path / "bad.toml"
    bad.write_text(f'version = {version + 1}\n\n[[rules]]\nname = "x"\ntype = "nonsense"\n')
    invalid = op(server, "risk1", "request", "risk", "--file", str(bad))
    assert invalid.returncode == 1 and "422" in invalid.stderr
    assert re.search(r"line [345]: ", invalid.stderr), invalid.stderr  # each error, its line


def test_exit_statuses_name_what_went_wrong(server: TallyServer, tmp_path: Path) -> None:
    """2: no operator, an unreadable secret file, a malformed id; 3: a wrong secret;
    4: no such request; 5: nothing listening. Credentials from the environment work."""
    assert admin(server, "list").returncode == 2
    absent_file = str(tmp_path / "absent")
    missing = admin(
        server, "list", "--operator", "risk1", "--key-id", "k", "--secret-file", absent_file
    )
    assert missing.returncode == 2 and "absent" in missing.stderr
    assert op(server, "risk1", "show", "nonsense").returncode == 2

    wrong = tmp_path / "wrong-secret"
    wrong.write_text("x" * 40)
    unsigned = admin(
        server, "list", "--operator", "risk1", "--key-id", "dev-risk1-1", "--secret-file",
        str(wrong),
    )  # fmt: skip
    assert unsigned.returncode == 3, unsigned.stderr

    absent = op(server, "risk1", "show", "A000000000000")
    assert absent.returncode == 4, absent.stderr

    with open(DEFAULT_OPERATORS_PATH, "rb") as file:
        secret = tomllib.load(file)["operators"]["risk1"]["secrets"][0]
    secret_file = tmp_path / "risk1-secret"
    secret_file.write_text(secret["secret"] + "\n")
    environment = {
        "TALLY_SERVER": server.url,
        "TALLY_OPERATOR": "risk1",
        "TALLY_OPERATOR_KEY_ID": secret["key_id"],
        "TALLY_OPERATOR_SECRET_FILE": str(secret_file),
    }
    from_env = admin(None, "list", "--json", env=environment)
    assert from_env.returncode == 0, from_env.stderr

    down = admin(None, "list", "--server", "http://127.0.0.1:9", "--operator", "risk1", "--dev")
    assert down.returncode == 5 and "cannot reach" in down.stderr


def test_risk_reads_decisions_and_reports(server: TallyServer) -> None:
    """A 50,000 CNY cash deposit at the counter is allowed and reported (the shipped
    `large_cash` rule): a risk officer sees its decision among the allowed ones and in
    that day's large-value reports, in both forms; a teller may not read them (read:risk):
    exit 1."""
    with server.client("counter") as counter:
        account = open_class_i(counter, register(counter))
        cash_deposit(counter, account, 5_000_000)
    decisions = as_json(op(server, "risk1", "decisions", "--outcome", "allow", "--json"))
    mine = [row for row in items(decisions, "items") if str(row["debit"]) == account
            or str(row["credit"]) == account]  # fmt: skip
    assert len(mine) == 1 and mine[0]["rules"] == ["large_cash"] and mine[0]["report"]
    day = datetime.datetime.fromtimestamp(
        mine[0]["at_ns"] / 1e9, zoneinfo.ZoneInfo("Asia/Shanghai")
    ).date()
    reports = as_json(op(server, "risk1", "reports", "--date", day.isoformat(), "--json"))
    assert mine[0]["transfer_id"] in [row["transfer_id"] for row in items(reports, "items")]
    table = op(server, "risk1", "decisions", "--outcome", "allow")
    assert table.returncode == 0 and "large_cash" in table.stdout and "report" in table.stdout
    teller = op(server, "teller1", "decisions")
    assert teller.returncode == 1 and "403" in teller.stderr


def test_apply_at_waits_after_approval(server: TallyServer, tmp_path: Path) -> None:
    """`--apply-at` a day ahead: the request carries that instant; once approved by an
    administrator it waits ("approved"), the LPR table in force unchanged. A time without
    its offset is refused here (exit 2), before anything is sent."""
    body = as_json(op(server, "product1", "parameters", "lpr", "--json"))
    version = int(body["current"]["version"])
    current = body["current"]["text"]
    text, count = re.subn(r"(?m)^version = \d+", f"version = {version + 1}", current)
    assert count == 1
    path = tmp_path / "lpr-next.toml"
    path.write_text(text)
    at = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(days=1)
    request = ("request", "lpr", "--file", str(path), "--apply-at")
    unzoned = op(server, "product1", *request, at.replace(tzinfo=None).isoformat())
    assert unzoned.returncode == 2 and "offset" in unzoned.stderr
    made = approval(as_json(op(server, "product1", *request, at.isoformat(), "--json")))
    assert made["apply_at_ns"] == int(at.timestamp()) * 1_000_000_000
    approved = approval(as_json(op(server, "admin1", "approve", str(made["id"]), "--json")))
    assert approved["state"] == "approved"
    after = as_json(op(server, "product1", "parameters", "lpr", "--json"))
    assert int(after["current"]["version"]) == version
