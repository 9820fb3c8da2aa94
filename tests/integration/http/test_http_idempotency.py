"""Idempotency-Key semantics (IETF httpapi draft) end to end, on asyncio and trio.

Missing key on a money POST: 400. Same key, same payload: the first answer
again, marked `Idempotent-Replayed: true`, money moved once. Same key,
different payload: 422. Same key while the first is still in flight: 409.
And because transfer ids derive from (channel, key), a retry after a
crash, even one that struck while the first attempt was in flight, finds
the original in the ledger: exactly one posting, whatever happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from channels.client import TallyClient
from tests.http_helpers import (
    TallyServer,
    balance,
    cash_deposit,
    key,
    open_class_i,
    open_remote,
    open_session,
    problem_type,
    register,
)

MONEY_ROUTES = [
    ("/v1/accounts/{a}/topups", {"amount_minor": 1}),
    ("/v1/accounts/{a}/withdrawals", {"amount_minor": 1}),
    ("/v1/accounts/{a}/cash-deposits", {"amount_minor": 1}),
    ("/v1/accounts/{a}/cash-withdrawals", {"amount_minor": 1}),
    ("/v1/transfers", {"debit_account_id": "{a}", "credit_account_id": "2", "amount_minor": 1}),
    (
        "/v1/transfers/batch",
        {
            "transfers": [
                {
                    "debit_account_id": "{a}",
                    "credit_account_id": "2",
                    "amount_minor": 1,
                    "code": "transfer",
                }
            ]
        },
    ),
    ("/v1/transfers/" + "ab" * 16 + "/reversals", {}),
    (
        "/v1/external-transfers",
        {
            "debit_account_id": "{a}",
            "amount_minor": 1,
            "beneficiary": {"bank_code": "ICBC", "account_number": "12345678", "name": "A"},
        },
    ),
    (
        "/v1/incoming-transfers",
        {
            "credit_account_id": "{a}",
            "amount_minor": 1,
            "payer": {"bank_code": "ICBC", "account_number": "12345678", "name": "A"},
            "clearing_reference": "REF1",
        },
    ),
    ("/v1/payments", {"debit_account_id": "{a}", "merchant_account_id": "3", "amount_minor": 1}),
    ("/v1/payments/" + "ab" * 16 + "/capture", {}),
    ("/v1/payments/" + "ab" * 16 + "/void", {}),
]


@pytest.fixture(scope="module", params=["asyncio", "trio", "uvicorn-asyncio"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TallyServer]:
    """hypercorn on asyncio and on trio, and uvicorn on the standard library's loop (its
    default, uvloop, runs tests/integration/http/test_http_api.py)."""
    data = tmp_path_factory.mktemp(f"idem-{request.param}") / "data"
    if request.param == "uvicorn-asyncio":
        running = TallyServer(data, server="uvicorn", extra=["--loop", "asyncio"]).start()
    else:
        running = TallyServer(data, backend=request.param).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter") as client:
        yield client


def funded(counter: TallyClient, amount_minor: int) -> str:
    account = open_class_i(counter, register(counter))
    if amount_minor:
        cash_deposit(counter, account, amount_minor)
    return account


def fill(template: Any, account: str) -> Any:
    if isinstance(template, dict):
        return {name: fill(value, account) for name, value in template.items()}
    if isinstance(template, list):
        return [fill(value, account) for value in template]
    return template.replace("{a}", account) if isinstance(template, str) else template


@pytest.mark.parametrize(("path", "body"), MONEY_ROUTES, ids=[route[0] for route in MONEY_ROUTES])
def test_missing_key_is_400_on_every_money_route(
    counter: TallyClient, server: TallyServer, path: str, body: dict[str, Any]
) -> None:
    """Every POST that moves money refuses to run without an Idempotency-Key (incoming
    transfers and the batch are the bank's own or a partner bank's: asked from the bank's
    channel)."""
    if path in ("/v1/incoming-transfers", "/v1/transfers/batch"):
        with server.client("bank") as bank:
            response = bank.post(path, fill(body, "1"))
    else:
        response = counter.post(path.replace("{a}", "1"), fill(body, "1") or None)
    assert response.status_code == 400, response.text
    assert problem_type(response) == "idempotency-key-missing"


def test_malformed_key_is_400(counter: TallyClient) -> None:
    """Keys are 1-255 visible ASCII characters."""
    for bad in ("x" * 256, "a b", ""):
        response = counter.post(
            "/v1/accounts/1/cash-deposits", {"amount_minor": 1}, idempotency_key=bad
        )
        assert response.status_code == 400, (bad, response.text)


def test_same_key_same_payload_replays(counter: TallyClient) -> None:
    """A retry gets the first answer byte for byte, with Idempotent-Replayed, and moves nothing."""
    source, target = funded(counter, 1_000), funded(counter, 0)
    body = {
        "debit_account_id": source,
        "credit_account_id": target,
        "amount_minor": 250,
        "password": "135790",
    }
    retry_key = key()
    first = counter.post("/v1/transfers", body, idempotency_key=retry_key)
    second = counter.post("/v1/transfers", body, idempotency_key=retry_key)
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert first.json() == second.json()
    assert balance(counter, target) == 250
    quoted = counter.post("/v1/transfers", body, idempotency_key=f'"{retry_key}"')
    assert quoted.json() == first.json()


def test_same_key_different_payload_is_422(counter: TallyClient) -> None:
    """Reusing a key for another amount or operation is a conflict, never a replay."""
    source, target = funded(counter, 1_000), funded(counter, 0)
    body = {
        "debit_account_id": source,
        "credit_account_id": target,
        "amount_minor": 100,
        "password": "135790",
    }
    used = key()
    assert counter.post("/v1/transfers", body, idempotency_key=used).status_code == 201
    other_amount = counter.post("/v1/transfers", dict(body, amount_minor=101), idempotency_key=used)
    assert (
        other_amount.status_code == 422
        and problem_type(other_amount) == "exists-with-different-amount"
    )
    assert other_amount.json()["ledger_result"]["code"] == 30
    other_operation = counter.post(
        f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 100}, idempotency_key=used
    )
    assert other_operation.status_code == 422
    assert problem_type(other_operation).startswith("exists-with-different-")
    assert balance(counter, target) == 100


def test_replayed_failure_is_the_same_failure(counter: TallyClient) -> None:
    """A key whose first attempt failed on funds answers that same failure again, as a replay."""
    source, target = funded(counter, 10), funded(counter, 0)
    body = {
        "debit_account_id": source,
        "credit_account_id": target,
        "amount_minor": 11,
        "password": "135790",
    }
    used = key()
    first = counter.post("/v1/transfers", body, idempotency_key=used)
    assert first.status_code == 422 and problem_type(first) == "exceeds-credits"
    cash_deposit(counter, source, 100)  # funds arrive; the key still names the failed attempt
    again = counter.post("/v1/transfers", body, idempotency_key=used)
    assert again.status_code == 422 and problem_type(again) == "exceeds-credits"
    assert again.headers["idempotent-replayed"] == "true"
    assert balance(counter, target) == 0


def test_keys_are_scoped_per_channel(counter: TallyClient, server: TallyServer) -> None:
    """The same key from two channels names two different operations."""
    target = funded(counter, 0)
    shared = key()
    assert (
        counter.post(
            f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 5}, idempotency_key=shared
        ).status_code
        == 201
    )
    with server.client("atm") as atm:
        response = atm.post(
            f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 5}, idempotency_key=shared
        )
    assert response.status_code == 201 and "idempotent-replayed" not in response.headers
    assert balance(counter, target) == 10


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    data = tmp_path_factory.mktemp("slow") / "data"
    running = TallyServer(data, disk_delay_ms=400).start()
    yield running
    running.stop()


def test_in_flight_key_is_409(slow_server: TallyServer) -> None:
    """While the first request with a key waits for the (slow) disk, a second one gets 409."""
    with slow_server.client("counter") as counter:
        target = funded(counter, 0)
    used = key()
    answers: list[Any] = []

    def deposit() -> None:
        with slow_server.client("counter") as client:
            answers.append(
                client.post(
                    f"/v1/accounts/{target}/cash-deposits",
                    {"amount_minor": 7},
                    idempotency_key=used,
                )
            )

    first = threading.Thread(target=deposit)
    first.start()
    time.sleep(0.15)
    with slow_server.client("counter") as client:
        second = client.post(
            f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 7}, idempotency_key=used
        )
    first.join()
    assert second.status_code == 409 and problem_type(second) == "idempotency-key-in-flight"
    assert answers[0].status_code == 201
    with slow_server.client("counter") as client:
        later = client.post(
            f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 7}, idempotency_key=used
        )
        assert later.status_code == 201 and later.headers["idempotent-replayed"] == "true"
        assert balance(client, target) == 7


def test_retry_after_crash_finds_the_original(tmp_path_factory: pytest.TempPathFactory) -> None:
    """kill -9 after an answer, restart, retry: the answer is replayed, nothing posts twice."""
    data = tmp_path_factory.mktemp("crash") / "data"
    server = TallyServer(data).start()
    with server.client("counter") as counter:
        target = funded(counter, 0)
        used = key()
        first = counter.post(
            f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 42}, idempotency_key=used
        )
        assert first.status_code == 201
    server.kill()
    server.start()
    with server.client("counter") as counter:
        again = counter.post(
            f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 42}, idempotency_key=used
        )
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert balance(counter, target) == 42
    server.stop()


def test_crash_while_in_flight_posts_at_most_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    """kill -9 while a deposit waits on the disk; the client's retry posts it exactly once."""
    data = tmp_path_factory.mktemp("crash-flight") / "data"
    server = TallyServer(data, disk_delay_ms=600).start()
    with server.client("counter") as counter:
        target = funded(counter, 0)
    used = key()
    outcome: list[Any] = []

    def deposit() -> None:
        try:
            with server.client("counter") as client:
                outcome.append(
                    client.post(
                        f"/v1/accounts/{target}/cash-deposits",
                        {"amount_minor": 9},
                        idempotency_key=used,
                    )
                )
        except Exception as error:  # the connection dies with the server
            outcome.append(error)

    thread = threading.Thread(target=deposit)
    thread.start()
    time.sleep(0.3)
    server.kill()
    thread.join()
    assert not hasattr(outcome[0], "status_code") or outcome[0].status_code != 201
    server.start()
    with server.client("counter") as counter:
        retry = counter.post(
            f"/v1/accounts/{target}/cash-deposits", {"amount_minor": 9}, idempotency_key=used
        )
        assert retry.status_code == 201, retry.text
        assert balance(counter, target) == 9
        history = counter.get(f"/v1/accounts/{target}/history").json()["items"]
        assert [item["amount_minor"] for item in history] == [9]
    server.stop()


def test_customer_state_survives_kill(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Customers, bound cards, password hashes and failure counts are durable: kill -9, restart."""
    data = tmp_path_factory.mktemp("state") / "data"
    server = TallyServer(data).start()
    with server.client("app") as app:
        customer = register(app)
        account = open_remote(app, customer)
        session = open_session(app, account)
        wrong = app.post(f"/v1/accounts/{account}/tokens", {"password": "000000"})
        assert wrong.json()["attempts_remaining"] == 4
    server.kill()
    server.start()
    with server.client("app") as app:
        # The customer session is durable too: it reads after the crash.
        read = app.get(f"/v1/customers/{customer['customer_id']}", session=session)
        assert read.status_code == 200 and read.json()["accounts"][0]["account_id"] == account
        view = app.get(f"/v1/accounts/{account}", session=session).json()
        assert view["bound_card"]["kind"] == "external"
        again = app.post(f"/v1/accounts/{account}/tokens", {"password": "000000"})
        assert again.json()["attempts_remaining"] == 3
        assert app.post(f"/v1/accounts/{account}/tokens", {"password": "135790"}).status_code == 201
    server.stop()
