"""Shedding load: 429 past a channel's rate, 503 when the engine queue is full; never a 500.

The overload server has a 4-request engine queue and a journal that takes
200 ms per group, so a burst of concurrent deposits overflows the queue.
Every refused request carries Retry-After; every accepted one is posted
exactly once and every refused one not at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.providers import population
from core.services.records import TransferIds
from core.services.server_secrets import DEVELOPMENT
from tests.http_helpers import (
    CHANNELS_FILE,
    TallyServer,
    balance,
    bind_card,
    bound_card_of,
    key,
    open_class_i,
    problem_type,
    register,
)

COUNTER_CHANNEL_ID = 3


def tight_channels(directory: Path) -> Path:
    """The example registry with the open_api channel limited to 2 requests/s, burst 2."""
    text = CHANNELS_FILE.read_text()
    marker = "[channels.open_api]"
    head, tail = text.split(marker)
    tail = tail.replace("rate_per_s = 500\nburst = 1000", "rate_per_s = 2\nburst = 2", 1)
    path = directory / "channels.toml"
    path.write_text(head + marker + tail)
    return path


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TallyServer]:
    directory = tmp_path_factory.mktemp(f"overload-{request.param}")
    running = TallyServer(
        directory / "data",
        backend=request.param,
        channels_file=tight_channels(directory),
        extra=["--queue-size", "1"],
    ).start()
    yield running
    running.stop()


def test_rate_limit_is_429_with_retry_after(server: TallyServer) -> None:
    """A channel over its token bucket gets 429 + Retry-After; other channels are unaffected."""
    verification = {"account_id": "1", "name": "A"}
    with server.client("open_api") as partner:
        statuses = [
            partner.post("/v1/account-verifications", verification).status_code for _ in range(4)
        ]
        assert statuses[:2] == [200, 200]
        limited = partner.post("/v1/account-verifications", verification)
        assert limited.status_code == 429 and problem_type(limited) == "rate-limited"
        assert int(limited.headers["retry-after"]) >= 1
    with server.client("counter") as counter:
        assert counter.get("/v1/transfers/" + "ab" * 16).status_code == 404
    metrics = httpx.get(server.url + "/metrics").text
    assert 'tally_channel_rate_limited_total{channel="open_api"}' in metrics


def test_full_engine_queue_is_503_and_nothing_half_done(server: TallyServer) -> None:
    """A burst past the engine queue: some 201, some 503 + Retry-After, no other status, and
    exactly the answered deposits are in the ledger."""
    with server.client("counter") as counter:
        account = open_class_i(counter, register(counter))
    keys = [key() for _ in range(40)]
    answers: dict[str, Any] = {}

    def deposit(used: str) -> None:
        with server.client("counter") as client:
            answers[used] = client.post(
                f"/v1/accounts/{account}/cash-deposits", {"amount_minor": 1}, idempotency_key=used
            )

    threads = [threading.Thread(target=deposit, args=(used,)) for used in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = [answers[used].status_code for used in keys]
    assert set(statuses) <= {201, 503}, statuses
    assert 503 in statuses and 201 in statuses
    for used in keys:
        if answers[used].status_code == 503:
            assert problem_type(answers[used]) == "overloaded"
            assert int(answers[used].headers["retry-after"]) >= 1
    with server.client("counter") as counter:
        assert balance(counter, account) == statuses.count(201)
        for used in keys:
            transfer_id = TransferIds(DEVELOPMENT.transfer_id_key).id(COUNTER_CHANNEL_ID, used, 0)
            found = counter.get(f"/v1/transfers/{transfer_id:032x}").status_code
            assert found == (200 if answers[used].status_code == 201 else 404)


def test_concurrent_openings_keep_the_class_limit_and_refused_ones_hold_no_slot(
    server: TallyServer,
) -> None:
    """Twelve Class II openings at once for one customer against a 4-deep engine queue,
    over five verified card bindings (the issuer's four cards of the customer and their
    own Class I card, bound at the counter), two or three openings per binding.

    At most 5 may be opened (PBoC), no binding serves two of them (the others are
    refused binding-not-verified), every 503 leaves the opening closed (no slot held, no
    ledger account, its binding free again), and afterwards exactly the missing slots
    can still be opened.
    """
    with server.client("counter") as counter:
        customer = register(counter)
        filler = open_class_i(counter, register(counter))
        own_card = open_class_i(counter, customer)
        cards = [population.card_for(customer["_id_number"], index) for index in range(4)]
        cards.append(own_card)
        for card in cards:
            bind_card(counter, customer, card)
    answers: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def deposit() -> None:  # keeps the engine queue full while the openings arrive
        with server.client("counter") as client:
            client.post(
                f"/v1/accounts/{filler}/cash-deposits", {"amount_minor": 1}, idempotency_key=key()
            )

    def open_one(card: str) -> None:
        with server.client("app") as app:
            response = app.post(
                f"/v1/customers/{customer['customer_id']}/accounts",
                {
                    "class": "class_ii",
                    "bound_card": bound_card_of(customer, card),
                    "password": "135790",
                },
            )
        with lock:
            answers.append((card, response))

    threads = [threading.Thread(target=deposit) for _ in range(24)]
    threads += [
        threading.Thread(target=open_one, args=(cards[index % len(cards)],)) for index in range(12)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(answer.status_code for _, answer in answers)
    assert set(statuses) <= {201, 409, 503}, statuses
    opened = {
        answer.json()["account_id"]: card for card, answer in answers if answer.status_code == 201
    }
    assert len(opened) <= 5, statuses
    assert len(set(opened.values())) == len(opened), opened  # one opening per binding
    for _, answer in answers:
        if answer.status_code == 409:
            assert problem_type(answer) in ("account-class-limit", "binding-not-verified")
    with server.client("app") as app, server.client("counter") as counter:
        view = counter.get(f"/v1/customers/{customer['customer_id']}").json()
        still_open = [
            a["account_id"]
            for a in view["accounts"]
            if not a["closed"] and a["class"] == "class_ii"
        ]
        assert sorted(still_open) == sorted(opened)
        for account_id in opened:
            assert counter.get(f"/v1/accounts/{account_id}").status_code == 200
        later = 0
        while True:
            card = cards[later % len(cards)]
            bind_card(counter, customer, card)  # the free binding again, or a new one
            response = app.post(
                f"/v1/customers/{customer['customer_id']}/accounts",
                {
                    "class": "class_ii",
                    "bound_card": bound_card_of(customer, card),
                    "password": "135790",
                },
            )
            if response.status_code == 503:
                continue
            if response.status_code == 409:
                assert problem_type(response) == "account-class-limit", response.text
                break
            assert response.status_code == 201, response.text
            later += 1
        assert len(opened) + later == 5
