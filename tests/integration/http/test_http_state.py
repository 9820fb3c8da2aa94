"""The customer state lives in the store: it survives kill -9 and fails over with the ledger.

Real `tally serve` processes: customers registered, accounts opened (Class I
at the counter, Class II bound to it in the app), a password changed, a
transaction token issued and a failed password attempt counted, then the
server killed with SIGKILL and restarted, on the journal (where a flipped
byte in the PUT_STATE record that holds a customer is refused with its
offset, as the old JSON-lines file never did) and on PostgreSQL (where a
new, empty data directory proves the state is in the database), and a
legacy `channels-state.jsonl` imported once.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from core.entries import EntryKind, decode_state_changes
from core.journal import HEADER_SIZE, JournalScan
from core.services.state import token_digest
from tests.http_helpers import (
    TallyServer,
    balance,
    cash_deposit,
    key,
    open_class_i,
    open_remote,
    open_session,
    register,
    topup,
)

WITHDRAWAL = "/v1/accounts/{}/withdrawals"


def _build_state(server: TallyServer) -> dict[str, Any]:
    """Customers, accounts, a password change, a counted failure and a token."""
    with server.client("counter") as counter, server.client("app") as app:
        first = register(counter, name="张三")
        second = register(app, name="王五")
        class_i = open_class_i(counter, first)
        # The app acts for a customer the counter registered with their session.
        class_ii = open_remote(app, first, session=open_session(app, class_i))
        other = open_class_i(counter, second)
        cash_deposit(counter, class_i, 5_000)
        assert topup(app, class_ii, 1_000).status_code == 201
        changed = app.post(
            f"/v1/accounts/{class_ii}/password",
            {"old_password": "135790", "new_password": "246801"},
        )
        assert changed.status_code == 204, changed.text
        wrong = app.post(f"/v1/accounts/{other}/tokens", {"password": "000000"})
        assert wrong.status_code == 403 and wrong.json()["attempts_remaining"] == 4
        issued = app.post(f"/v1/accounts/{class_ii}/tokens", {"password": "246801"})
        assert issued.status_code == 201, issued.text
    return {
        "customers": [first["customer_id"], second["customer_id"]],
        "class_i": class_i,
        "class_ii": class_ii,
        "other": other,
        "token": issued.json()["token"],
    }


def _check_state(server: TallyServer, built: dict[str, Any]) -> None:
    """Everything `_build_state` made is there, and behaves as it did before the kill."""
    with server.client("counter") as counter, server.client("app") as app:
        first = counter.get(f"/v1/customers/{built['customers'][0]}")
        assert first.status_code == 200, first.text
        accounts = {account["account_id"] for account in first.json()["accounts"]}
        assert accounts == {built["class_i"], built["class_ii"]}
        assert counter.get(f"/v1/customers/{built['customers'][1]}").status_code == 200
        # The changed password: the old one refused, the new one accepted.
        old = app.post(f"/v1/accounts/{built['class_ii']}/tokens", {"password": "135790"})
        assert old.status_code == 403, old.text
        new = app.post(f"/v1/accounts/{built['class_ii']}/tokens", {"password": "246801"})
        assert new.status_code == 201, new.text
        # The failure counter went on from 1: one more wrong attempt leaves 3.
        wrong = app.post(f"/v1/accounts/{built['other']}/tokens", {"password": "000000"})
        assert wrong.status_code == 403 and wrong.json()["attempts_remaining"] == 3, wrong.text
        # The token issued before the kill still authorizes a debit.
        paid = app.post(
            WITHDRAWAL.format(built["class_ii"]),
            {"amount_minor": 100},
            idempotency_key=key(),
            token=built["token"],
        )
        assert paid.status_code == 201, paid.text
        assert balance(app, built["class_ii"], token=built["token"]) == 900  # its token reads it
        assert balance(counter, built["class_i"]) == 5_000


def _state_records(data: Path) -> list[tuple[str, int, dict[bytes, bytes | None]]]:
    """(segment, offset, changes) of every PUT_STATE record in the journal."""
    found = []
    for stored in JournalScan(str(data)):
        if stored.entry.kind == EntryKind.PUT_STATE:
            found.append(
                (stored.segment, stored.offset, dict(decode_state_changes(stored.entry.payload)))
            )
    return found


def test_customer_state_survives_kill_and_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    """Journal mode: after kill -9 and a restart every customer, account, password change,
    failure count and token is back (read from PUT_STATE entries, no side file); then one
    digit changed in the customer's PUT_STATE record makes the restart refuse, naming the
    segment and byte offset of that record."""
    data = tmp_path / "data"
    server = TallyServer(data).start()
    try:
        built = _build_state(server)
        server.kill()
        assert not os.path.exists(data / "channels-state.jsonl")
        customer_key = f"customer/{built['customers'][0]}".encode()
        records = _state_records(data)
        holding = [r for r in records if customer_key in r[2]]
        # Registered, then verified (the identity database's answer, committed with its
        # call); the first is not the last record.
        assert len(holding) == 2 and records[-1] is not holding[0]
        token_key = f"token/{token_digest(built['token'])}".encode()
        assert any(token_key in r[2] for r in records)
        assert not any(built["token"].encode() in r[2] for r in records)  # only its digest
        server.start()
        _check_state(server, built)
        server.stop()
    finally:
        if server.process is not None:
            server.stop()
    segment, offset, changes = holding[0]
    value = changes[customer_key]
    assert value is not None
    id_number = orjson.loads(value)["id_number"].encode()
    raw = Path(segment).read_bytes()
    record_end = raw.index(value, offset + HEADER_SIZE) + len(value)
    where = raw.index(id_number, offset + HEADER_SIZE, record_end)
    flipped = b"1" if raw[where : where + 1] != b"1" else b"2"
    Path(segment).write_bytes(raw[:where] + flipped + raw[where + 1 :])
    server.start(wait_ready=False)
    try:
        ready = _wait_failed(server)
    finally:
        server.stop()
    assert ready.status_code == 503, ready.text
    assert f"{segment} at byte offset {offset}" in ready.json()["error"], ready.text


def _wait_failed(server: TallyServer) -> httpx.Response:
    """The /readyz answer once the server says its start failed."""
    deadline = time.monotonic() + 60
    while True:
        try:
            ready = httpx.get(server.url + "/readyz", timeout=2)
            if ready.json().get("status") == "failed":
                return ready
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)


@pytest.mark.pg
def test_customer_state_lives_in_postgresql(tmp_path: Path) -> None:
    """PostgreSQL mode: the same state, kill -9, restarted on the same database with a new,
    empty data directory (so nothing local can hold it): all there, and the customer rows
    are in `tally_state`."""
    from tests.pg_helpers import fresh_database_dsn, psql, shared_cluster

    dsn = fresh_database_dsn()
    server = TallyServer(tmp_path / "first", extra=["--store", dsn]).start()
    try:
        built = _build_state(server)
        server.kill()
    finally:
        if server.process is not None:
            server.stop()
    shutil.rmtree(tmp_path / "first")
    moved = TallyServer(tmp_path / "second", extra=["--store", dsn]).start()
    try:
        ready = httpx.get(moved.url + "/readyz", timeout=5).json()
        assert ready["recovery"]["store"] == "postgresql"
        _check_state(moved, built)
    finally:
        moved.stop()
    assert not any(name.startswith("journal") for name in os.listdir(tmp_path / "second"))
    database = urllib.parse.urlsplit(dsn).path.lstrip("/")
    count = psql(
        shared_cluster(),
        "SELECT count(*) FROM tally_state WHERE key >= 'customer/'::bytea"
        " AND key < 'customer0'::bytea",
        database,
    )
    assert int(count) == 2


def test_legacy_state_file_is_imported_once(tmp_path: Path) -> None:
    """A data directory with a legacy `channels-state.jsonl` (the records the old server
    wrote): at start they are imported into the journal as PUT_STATE changes and the file
    renamed `.imported`; after a kill -9 the customer is still there, from the journal."""
    source = TallyServer(tmp_path / "source").start()
    try:
        with source.client("counter") as counter:
            customer = register(counter)
        source.kill()
    finally:
        if source.process is not None:
            source.stop()
    customer_key = f"customer/{customer['customer_id']}".encode()
    records = _state_records(tmp_path / "source")
    value = next(r[2][customer_key] for r in records if customer_key in r[2])
    assert value is not None
    data = tmp_path / "data"
    data.mkdir()
    legacy = data / "channels-state.jsonl"
    legacy.write_bytes(
        value + b"\n" + b'{"k":"failures","account":"6235000000000000001","day":1,"count":1}\n'
    )
    server = TallyServer(data).start()
    try:
        ready = httpx.get(server.url + "/readyz", timeout=5).json()
        assert ready["recovery"]["legacy_state_imported"] == 2, ready
        assert not legacy.exists() and (data / "channels-state.jsonl.imported").exists()
        server.kill()
        assert any(customer_key in r[2] for r in _state_records(data))
        server.start()
        ready = httpx.get(server.url + "/readyz", timeout=5).json()
        assert "legacy_state_imported" not in ready["recovery"]
        with server.client("counter") as counter:
            found = counter.get(f"/v1/customers/{customer['customer_id']}")
            assert found.status_code == 200, found.text
            assert found.json()["name"] == customer["name"]
    finally:
        server.stop()
