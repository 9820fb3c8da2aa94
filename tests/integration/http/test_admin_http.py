"""Maker-checker approvals over HTTP: the /v1/admin/ routes against a real server.

Operators sign like channels with `channel="op:NAME"` (examples/operators.toml's
development keys). The tests cover the operator signature (who may reach the routes at
all), the approval rules (the maker never approves, a duplicate pending request is
refused, a role without the permission is refused, a stale base version fails, an
invalid file is refused with every error and its line), apply-at-time on a moved clock,
rejection and expiry kept, the audit log (who, what, when, from where), the channel
registry changed by approval (the new key in force at the next request), and a restart
and a kill -9 reproducing the applied change from the journal.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels.client import TallyClient
from tests.admin_helpers import (
    operator_client,
    operator_secret,
    risk_rules_text,
    wait_for,
)
from tests.http_helpers import (
    CHANNELS_FILE,
    TallyServer,
    cash_deposit,
    key,
    open_class_i,
    problem_type,
    register,
)

RULES_V1 = risk_rules_text(
    """
[[rules]]
name = "step_up"
type = "large_value"
amount_min = "2000.00"
outcome = "challenge"
"""
)


def rules(version: int, amount: str = "3000.00") -> str:
    return risk_rules_text(
        f"""
[[rules]]
name = "step_up"
type = "large_value"
amount_min = "{amount}"
outcome = "challenge"
""",
        version=version,
    )


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "risk.toml"
    path.write_text(RULES_V1)
    return path


@pytest.fixture
def server(tmp_path: Path, rules_file: Path) -> Iterator[TallyServer]:
    running = TallyServer(
        tmp_path / "data",
        extra=["--risk-rules", str(rules_file), "--approval-expiry-s", "3600"],
        clock_file=tmp_path / "clock",
    ).start()
    yield running
    if running.process is not None:
        running.stop()


class Operators:
    """Clients for the example operators, opened on demand."""

    def __init__(self, server: TallyServer) -> None:
        self.server = server
        self.clients: dict[str, TallyClient] = {}

    def __getitem__(self, name: str) -> TallyClient:
        if name not in self.clients:
            self.clients[name] = operator_client(self.server, name)
        return self.clients[name]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@pytest.fixture
def ops(server: TallyServer) -> Iterator[Operators]:
    operators = Operators(server)
    yield operators
    operators.close()


def request_risk(maker: TallyClient, text: str, base_version: int, **fields: Any) -> Any:
    return maker.post(
        "/v1/admin/approvals",
        {"kind": "risk", "payload": {"text": text, "base_version": base_version}, **fields},
    )


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["state"] == "pending"
    return body


def rules_version(server: TallyServer) -> int:
    with server.client("bank") as bank:
        response = bank.get("/v1/risk/rules")
        assert response.status_code == 200, response.text
        return int(response.json()["version"])


# --- who may reach the admin routes ---------------------------------------------------


def test_admin_routes_take_operator_signatures_only(server: TallyServer, ops: Operators) -> None:
    with server.client("bank") as bank:  # a channel, even the bank's own
        response = bank.get("/v1/admin/approvals")
        assert response.status_code == 401 and problem_type(response) == "operator-required"
    key_id, _ = operator_secret("risk1")
    with TallyClient(server.url, "op:risk1", key_id, "x" * 40) as forged:
        response = forged.get("/v1/admin/approvals")
        assert response.status_code == 401 and problem_type(response) == "signature-invalid"
    with TallyClient(server.url, "op:nobody", key_id, "x" * 40) as unknown:
        response = unknown.get("/v1/admin/approvals")
        assert response.status_code == 401 and problem_type(response) == "key-unknown"
    # An operator's key opens no channel route.
    response = ops["risk1"].get("/v1/risk/rules")
    assert response.status_code == 401 and problem_type(response) == "channel-unknown"
    # A nonce is good once, for operators as for channels.
    nonce = "n0nce-for-the-replay-test"
    first = ops["risk1"].get("/v1/admin/approvals", nonce=nonce)
    assert first.status_code == 200, first.text
    again = ops["risk1"].get("/v1/admin/approvals", nonce=nonce)
    assert again.status_code == 401 and problem_type(again) == "nonce-reused"
    # A role without read:audit.
    response = ops["teller1"].get("/v1/admin/audit")
    assert response.status_code == 403 and problem_type(response) == "operator-not-permitted"
    assert response.json()["permission"] == "read:audit"


# --- the maker-checker rules ----------------------------------------------------------


def test_request_approve_apply_with_every_refusal_on_the_way(
    server: TallyServer, ops: Operators
) -> None:
    assert rules_version(server) == 1
    # A role that may not request risk rules (a product manager).
    response = request_risk(ops["product1"], rules(2), 1)
    assert response.status_code == 403 and problem_type(response) == "operator-not-permitted"
    request = created(request_risk(ops["risk1"], rules(2), 1, reason="raise the threshold"))
    assert request["maker"] == "risk1" and request["kind"] == "risk"
    assert (
        '-amount_min = "2000.00"' in request["diff"]
        and '+amount_min = "3000.00"' in request["diff"]
    )
    # A second pending request for the same object.
    duplicate = request_risk(ops["risk2"], rules(2, "4000.00"), 1)
    assert duplicate.status_code == 409 and problem_type(duplicate) == "approval-duplicate"
    assert duplicate.json()["request_id"] == request["id"]
    # The maker cannot approve; nor can a role without approve:risk.
    own = ops["risk1"].post(f"/v1/admin/approvals/{request['id']}/approve", {})
    assert own.status_code == 403 and problem_type(own) == "approval-self"
    foreign = ops["admin1"].post(f"/v1/admin/approvals/{request['id']}/approve", {})
    assert foreign.status_code == 403 and problem_type(foreign) == "operator-not-permitted"
    assert rules_version(server) == 1  # nothing applied by any of that
    approved = ops["risk2"].post(
        f"/v1/admin/approvals/{request['id']}/approve", {"reason": "reviewed"}
    )
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["state"] == "applied" and body["checker"] == "risk2"
    assert rules_version(server) == 2
    again = ops["risk2"].post(f"/v1/admin/approvals/{request['id']}/approve", {})
    assert again.status_code == 409 and problem_type(again) == "approval-not-pending"
    assert again.json()["state"] == "applied"
    parameter = ops["risk1"].get("/v1/admin/parameters/risk")
    assert parameter.status_code == 200, parameter.text
    assert parameter.json()["current"]["version"] == 2
    assert [v["version"] for v in parameter.json()["versions"]] == [1, 2]
    # Edited from version 1, now that 2 is in force: stale.
    stale = request_risk(ops["risk1"], rules(3), 1)
    assert stale.status_code == 409 and problem_type(stale) == "approval-stale"
    assert stale.json()["version"] == 2 and stale.json()["base_version"] == 1
    assert rules_version(server) == 2


def test_an_invalid_rule_file_is_refused_with_every_error_and_its_line(
    ops: Operators,
) -> None:
    text = rules(2) + '\n[[rules]]\nname = "Bad Name"\ntype = "teleport"\noutcome = "block"\n'
    response = request_risk(ops["risk1"], text, 1)
    assert response.status_code == 422 and problem_type(response) == "parameter-invalid"
    errors = response.json()["errors"]
    assert len(errors) >= 2
    assert all(error["pointer"] == "/payload/text" and error["line"] > 0 for error in errors)
    listed = ops["risk1"].get("/v1/admin/approvals", query="state=pending")
    assert listed.json()["items"] == []  # nothing was recorded


def test_reject_is_kept_with_its_reason(ops: Operators) -> None:
    request = created(request_risk(ops["risk1"], rules(2), 1))
    no_reason = ops["risk2"].post(f"/v1/admin/approvals/{request['id']}/reject", {})
    assert no_reason.status_code == 422
    rejected = ops["risk2"].post(
        f"/v1/admin/approvals/{request['id']}/reject", {"reason": "threshold too high"}
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["state"] == "rejected"
    shown = ops["risk1"].get(f"/v1/admin/approvals/{request['id']}")
    assert shown.status_code == 200 and shown.json()["state"] == "rejected"
    listed = ops["risk1"].get("/v1/admin/approvals", query="state=rejected&kind=risk")
    assert [item["id"] for item in listed.json()["items"]] == [request["id"]]
    missing = ops["risk1"].get("/v1/admin/approvals/A000000000000")
    assert missing.status_code == 404 and problem_type(missing) == "approval-not-found"


def rfc3339(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.UTC).isoformat()


def test_apply_at_a_stated_time_and_expiry_on_a_moved_clock(
    server: TallyServer, ops: Operators
) -> None:
    apply_at = time.time() + 2 * 3600
    request = created(request_risk(ops["risk1"], rules(2), 1, apply_at=rfc3339(apply_at)))
    approved = ops["risk2"].post(f"/v1/admin/approvals/{request['id']}/approve", {})
    assert approved.status_code == 200 and approved.json()["state"] == "approved"
    assert rules_version(server) == 1  # not before its time
    server.move_clock(2 * 3600 + 5)
    wait_for(lambda: rules_version(server) == 2, what="the approved rules at their time")
    shown = ops["risk1"].get(f"/v1/admin/approvals/{request['id']}").json()
    assert shown["state"] == "applied"


def test_expired_requests_are_kept(server: TallyServer, ops: Operators) -> None:
    request = created(request_risk(ops["risk1"], rules(2), 1))
    server.move_clock(3600 + 5)
    wait_for(
        lambda: (
            ops["risk1"].get(f"/v1/admin/approvals/{request['id']}").json()["state"] == "expired"
        ),
        what="the expiry",
    )
    late = ops["risk2"].post(f"/v1/admin/approvals/{request['id']}/approve", {})
    assert late.status_code == 409 and late.json()["state"] == "expired"
    assert rules_version(server) == 1


def test_audit_names_who_what_when_and_from_where(ops: Operators) -> None:
    request = created(request_risk(ops["risk1"], rules(2), 1))
    ops["risk2"].post(f"/v1/admin/approvals/{request['id']}/reject", {"reason": "no"})
    audit = ops["supervisor1"].get("/v1/admin/audit")
    assert audit.status_code == 200, audit.text
    entries = audit.json()["items"]
    by_what = {(entry["who"], entry["what"]) for entry in entries}
    assert ("risk1", "request") in by_what and ("risk2", "reject") in by_what
    for entry in entries:
        assert entry["from"] in ("127.0.0.1", "")  # "" only for the system's own acts
        assert entry["when"] > 0


# --- the channel registry by approval --------------------------------------------------


def test_channel_keys_rotated_by_approval_are_in_force_at_the_next_request(
    server: TallyServer, ops: Operators
) -> None:
    text = CHANNELS_FILE.read_text()
    assert 'key_id = "dev-atm-1"' in text
    new_secret = "rotated-atm-secret-0002-for-the-approval-test"
    new_text = "version = 1\n" + text.replace(
        'key_id = "dev-atm-1"\nsecret = "DEVELOPMENT-ONLY-atm-secret-0001-not-for-production"',
        f'key_id = "atm-2"\nsecret = "{new_secret}"',
    )
    assert new_text.count("atm-2") == 1
    request = created(
        ops["admin1"].post(
            "/v1/admin/approvals",
            {"kind": "channels", "payload": {"text": new_text, "base_version": 0}},
        )
    )
    with server.client("atm") as atm:  # the old key still works while pending
        assert cash_in(atm).status_code == 404
    approved = ops["admin2"].post(f"/v1/admin/approvals/{request['id']}/approve", {})
    assert approved.status_code == 200 and approved.json()["state"] == "applied", approved.text
    with server.client("atm") as atm:
        response = cash_in(atm)
        assert response.status_code == 401 and problem_type(response) == "key-unknown"
    with TallyClient(server.url, "atm", "atm-2", new_secret) as rotated:
        response = cash_in(rotated)
        assert response.status_code == 404, response.text  # signed, admitted, no such account
    parameter = ops["admin1"].get("/v1/admin/parameters/channels").json()
    assert parameter["current"]["version"] == 1 and "atm-2" in parameter["current"]["text"]
    # A restart on the shipped file (--channels) keeps the approved registry.
    ops.close()
    ops.clients.clear()
    server.stop()
    server.start()
    with server.client("atm") as atm:
        assert cash_in(atm).status_code == 401
    with TallyClient(server.url, "atm", "atm-2", new_secret) as rotated:
        assert cash_in(rotated).status_code == 404


def test_an_invalid_channel_registry_is_refused_whole(ops: Operators) -> None:
    text = "version = 1\n" + CHANNELS_FILE.read_text().replace('kind = "atm"', 'kind = "kiosk"')
    response = ops["admin1"].post(
        "/v1/admin/approvals", {"kind": "channels", "payload": {"text": text, "base_version": 0}}
    )
    assert response.status_code == 422 and problem_type(response) == "parameter-invalid"
    assert any("channels.atm.kind" in error["detail"] for error in response.json()["errors"])


def cash_in(atm: TallyClient) -> Any:
    """An ATM cash deposit to an account that does not exist: 404 once signed and admitted."""
    return atm.post(
        "/v1/accounts/999999999/cash-deposits", {"amount_minor": 100}, idempotency_key=key()
    )


# --- durability ----------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_restart_reproduces_the_applied_change(
    server: TallyServer, ops: Operators, stop: str
) -> None:
    request = created(request_risk(ops["risk1"], rules(2), 1))
    approved = ops["risk2"].post(f"/v1/admin/approvals/{request['id']}/approve", {})
    assert approved.json()["state"] == "applied", approved.text
    assert rules_version(server) == 2
    ops.close()
    ops.clients.clear()
    if stop == "sigkill":
        server.kill()
    else:
        server.stop()
    server.start()  # the same data directory and the same (version 1) rule file
    assert rules_version(server) == 2
    shown = ops["risk1"].get(f"/v1/admin/approvals/{request['id']}")
    assert shown.json()["state"] == "applied"
    # Version 2 in force, not the file's version 1: 2,500 CNY is under its threshold.
    with server.client("counter") as counter, server.client("app") as app:
        payer = open_class_i(counter, register(counter))
        payee = open_class_i(counter, register(counter))
        cash_deposit(counter, payer, 10_000_00)
        body = {
            "debit_account_id": payer,
            "credit_account_id": payee,
            "amount_minor": 2_500_00,
            "password": "135790",
        }
        response = app.post("/v1/transfers", body, idempotency_key=key())
        assert response.status_code == 201, response.text
    versions = ops["risk1"].get("/v1/admin/parameters/risk").json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]
