"""Transaction passwords under attack, against a real `tally serve` (issue 12, passwords).

One test per item: concurrent guesses cannot outrun the lockout; the lock does
not lift by itself the next day; only a supervisor at the counter resets; the
ID number alone resets nothing; weak passwords and a trailing newline are
refused; a burst of password checks is held to its own bounded pool. The
server runs on a clock the tests can move (tests/clock_serve.py: the real
server, its services' clock offset by a file) and with the default scrypt
cost, so that a hash takes long enough for requests to overlap.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from channels.client import TallyClient
from tests.http_helpers import (
    SUPERVISOR,
    TELLER,
    TallyServer,
    open_class_i,
    problem_type,
    register,
)

PASSWORD = "135790"
WRONG = "864209"
HASH_THREADS = 1
HASH_QUEUE = 4
DAY_S = 86_400


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    work = tmp_path_factory.mktemp("passwords")
    tally = TallyServer(
        work / "data",
        clock_file=work / "clock-offset",
        extra=[
            "--scrypt-n", str(1 << 14),  # the default cost: a hash takes tens of ms
            "--password-hash-threads", str(HASH_THREADS),
            "--password-hash-queue", str(HASH_QUEUE),
        ],
    ).start()  # fmt: skip
    yield tally
    tally.stop()


@pytest.fixture(scope="module")
def app(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("app") as client:
        yield client


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter", actor=SUPERVISOR) as client:
        yield client


def new_account(counter: TallyClient) -> tuple[dict[str, Any], str]:
    customer = register(counter)
    return customer, open_class_i(counter, customer, PASSWORD)


def at_once(count: int, request: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """`count` requests sent together: each thread waits at a barrier, then sends."""
    barrier = threading.Barrier(count)
    responses: list[httpx.Response | None] = [None] * count

    def send(index: int) -> None:
        barrier.wait()
        responses[index] = request(index)

    threads = [threading.Thread(target=send, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(response is not None for response in responses)
    return [response for response in responses if response is not None]


def metric(server: TallyServer, name: str) -> float | None:
    """A metric's value from /metrics (None: the server does not export it)."""
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found[1]) if found is not None else None


def lock(app: TallyClient, account: str) -> None:
    for _ in range(5):
        app.post(f"/v1/accounts/{account}/tokens", {"password": WRONG})
    locked = app.post(f"/v1/accounts/{account}/tokens", {"password": PASSWORD})
    assert locked.status_code == 423, locked.text


def test_concurrent_guesses_cannot_outrun_the_lockout(
    server: TallyServer, counter: TallyClient
) -> None:
    """40 wrong guesses sent at once: at most 5 are evaluated (each attempt is counted
    before its hash is checked), the others are refused unevaluated, and the account is
    locked: the right password is refused afterwards."""
    _, account = new_account(counter)
    clients = [server.client("app") for _ in range(40)]
    hashes_before = metric(server, "tally_password_hashes_total")
    try:
        responses = at_once(
            40,
            lambda index: clients[index].post(
                f"/v1/accounts/{account}/tokens", {"password": WRONG}
            ),
        )
    finally:
        for client in clients:
            client.close()
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(403) <= 4, statuses  # wrong, attempts remaining: evaluated
    assert set(statuses) <= {403, 423, 503}, statuses
    with server.client("app") as app:
        after = app.post(f"/v1/accounts/{account}/tokens", {"password": PASSWORD})
    assert after.status_code == 423, after.text
    assert problem_type(after) == "transaction-password-locked"
    hashes_after = metric(server, "tally_password_hashes_total")
    assert hashes_before is not None and hashes_after is not None
    assert hashes_after - hashes_before <= 5  # the 40 guesses; the right one was not hashed


def test_the_lock_does_not_lift_the_next_day(
    server: TallyServer, app: TallyClient, counter: TallyClient
) -> None:
    """A locked password stays locked when the bank's clock moves to the next business
    day, and a week on: only a reset at the counter lifts it."""
    _, account = new_account(counter)
    lock(app, account)
    try:
        for days in (1, 2, 7):
            server.move_clock(days * DAY_S)
            later = app.post(f"/v1/accounts/{account}/tokens", {"password": PASSWORD})
            assert later.status_code == 423, (days, later.text)
            assert "retry-after" not in later.headers
    finally:
        server.move_clock(0)


def test_a_reset_needs_a_supervisor(
    server: TallyServer, app: TallyClient, counter: TallyClient
) -> None:
    """A teller alone cannot reset a locked password (403 supervisor-required, the lock
    stays); the same reset with a supervisor named in the signed request lifts the lock."""
    customer, account = new_account(counter)
    lock(app, account)
    reset = {"id_number": customer["_id_number"], "new_password": "258147"}
    with server.client("counter", actor=TELLER) as teller:
        refused = teller.post(f"/v1/accounts/{account}/password-reset", reset)
    assert refused.status_code == 403, refused.text
    assert problem_type(refused) == "supervisor-required"
    assert app.post(f"/v1/accounts/{account}/tokens", {"password": "258147"}).status_code == 423
    done = counter.post(f"/v1/accounts/{account}/password-reset", reset)
    assert done.status_code == 204, done.text
    assert app.post(f"/v1/accounts/{account}/tokens", {"password": "258147"}).status_code == 201


def test_the_id_number_alone_resets_nothing(server: TallyServer, app: TallyClient) -> None:
    """A counter request carrying only the holder's ID number (no teller, no supervisor)
    is refused, and the old password still works."""
    with server.client("counter", actor=SUPERVISOR) as setup:
        customer, account = new_account(setup)
    with server.client("counter", actor=None) as bare:
        response = bare.post(
            f"/v1/accounts/{account}/password-reset",
            {"id_number": customer["_id_number"], "new_password": "258147"},
        )
    assert response.status_code == 401, response.text
    assert problem_type(response) == "actor-required"
    assert app.post(f"/v1/accounts/{account}/tokens", {"password": PASSWORD}).status_code == 201


def test_weak_passwords_are_refused(app: TallyClient, counter: TallyClient) -> None:
    """Common PINs, repeated or sequential digits and the holder's birth date are refused
    with 422 weak-transaction-password, at opening and at a change; the old one stays."""
    customer = register(counter, birth="19900307")
    for weak in ("000000", "123456", "654321", "888888", "900307", "030790"):
        opened = counter.post(
            f"/v1/customers/{customer['customer_id']}/accounts",
            {"class": "class_i", "password": weak},
        )
        assert opened.status_code == 422, (weak, opened.text)
        assert problem_type(opened) == "weak-transaction-password"
    account = open_class_i(counter, customer, PASSWORD)
    changed = app.post(
        f"/v1/accounts/{account}/password",
        {"old_password": PASSWORD, "new_password": "123456"},
    )
    assert changed.status_code == 422, changed.text
    assert problem_type(changed) == "weak-transaction-password"
    assert app.post(f"/v1/accounts/{account}/tokens", {"password": PASSWORD}).status_code == 201


def test_a_trailing_newline_is_not_part_of_a_password(
    app: TallyClient, counter: TallyClient
) -> None:
    """ "135790\\n" is not six digits: refused (422 naming the field) when opening an
    account and when changing a password, instead of being stored or checked."""
    customer = register(counter)
    opened = counter.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_i", "password": PASSWORD + "\n"},
    )
    assert opened.status_code == 422, opened.text
    assert opened.json()["errors"][0]["pointer"] == "/password"
    account = open_class_i(counter, customer, PASSWORD)
    changed = app.post(
        f"/v1/accounts/{account}/password",
        {"old_password": PASSWORD, "new_password": "258147\n"},
    )
    assert changed.status_code == 422, changed.text
    assert changed.json()["errors"][0]["pointer"] == "/new_password"


def test_a_burst_of_password_checks_stays_in_its_own_bounded_pool(
    server: TallyServer, counter: TallyClient
) -> None:
    """40 correct password checks at once on 10 accounts: never more hashes run at once
    than the pool's threads (measured in the threads), the checks did queue up (the
    burst happened), and what does not fit the queue is refused at once with 503 and
    Retry-After instead of waiting behind the others."""
    accounts = [new_account(counter)[1] for _ in range(10)]
    busy_before = metric(server, "tally_password_checks_busy_total")
    clients = [server.client("app") for _ in range(40)]
    try:
        responses = at_once(
            40,
            lambda index: clients[index].post(
                f"/v1/accounts/{accounts[index % 10]}/tokens", {"password": PASSWORD}
            ),
        )
    finally:
        for client in clients:
            client.close()
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {201, 503}, statuses
    busy = [response for response in responses if response.status_code == 503]
    for response in busy:
        assert problem_type(response) == "password-checks-busy"
        assert int(response.headers["retry-after"]) >= 1
    busy_after = metric(server, "tally_password_checks_busy_total")
    assert busy_before is not None and busy_after is not None, "no password pool metrics"
    assert metric(server, "tally_password_hash_admitted_max") == HASH_THREADS + HASH_QUEUE
    assert metric(server, "tally_password_hash_running_max") == HASH_THREADS
    assert busy_after - busy_before == len(busy) > 0
