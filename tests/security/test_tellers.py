"""The counter acts for an authenticated teller, against a real `tally serve` (issue 12).

The counter channel names the teller or supervisor acting in every request,
in the `Tally-Actor` header, inside the signed string; the registry
(examples/channels.toml) requires it at the counter and gives each role its
caps. Tried as an attacker would: no actor, an actor header added or changed
after signing, a role the channel does not have, a teller over the cap.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from channels.client import Signer, TallyClient
from channels.http.signing import authorization_header
from tests.admin_helpers import no_risk_rules
from tests.http_helpers import (
    SUPERVISOR,
    TELLER,
    TallyServer,
    balance,
    channel_secret,
    key,
    open_class_i,
    problem_type,
    register,
)

CNY = 100
TELLER_CASH_CAP_MINOR = 50_000 * CNY  # examples/channels.toml, [channels.counter.roles.teller]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    directory = tmp_path_factory.mktemp("tellers")
    tally = TallyServer(directory / "data", extra=no_risk_rules(directory)).start()
    yield tally
    tally.stop()


@pytest.fixture(scope="module")
def supervisor(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter", actor=SUPERVISOR) as client:
        yield client


@pytest.fixture(scope="module")
def account(supervisor: TallyClient) -> str:
    return open_class_i(supervisor, register(supervisor))


def counter_signer() -> Signer:
    key_id, secret = channel_secret("counter")
    return Signer("counter", key_id, secret.encode())


def signed_with_actor(path: str, body: bytes, actor: str) -> dict[str, str]:
    """A counter POST correctly signed over `actor`, whatever its form."""
    key_id, secret = channel_secret("counter")
    idempotency_key = key()
    return {
        "Authorization": authorization_header(
            "counter", key_id, secret.encode(), "POST", path, "", body,
            idempotency_key=idempotency_key, actor=actor, timestamp=int(time.time()),
            nonce=secrets.token_hex(16),
        ),
        "Idempotency-Key": idempotency_key,
        "Tally-Actor": actor,
        "Content-Type": "application/json",
    }  # fmt: skip


def deposit_body(amount_minor: int) -> bytes:
    return orjson.dumps({"amount_minor": amount_minor})


def test_a_counter_request_without_a_teller_is_refused(
    server: TallyServer, supervisor: TallyClient, account: str
) -> None:
    """A correctly signed counter cash deposit that names no teller: 401 actor-required,
    and no money moved."""
    before = balance(supervisor, account)
    with server.client("counter", actor=None) as bare:
        response = bare.post(
            f"/v1/accounts/{account}/cash-deposits", {"amount_minor": 100}, idempotency_key=key()
        )
        registered = bare.post(
            "/v1/customers", {"name": "王五", "id_number": "x", "mobile": "13800138000"}
        )
    assert response.status_code == 401, response.text
    assert problem_type(response) == "actor-required"
    assert registered.status_code == 401 and problem_type(registered) == "actor-required"
    assert balance(supervisor, account) == before


def test_an_actor_header_changed_or_added_after_signing_is_refused(
    server: TallyServer, supervisor: TallyClient, account: str
) -> None:
    """The actor is in the signed string: a teller's request whose Tally-Actor is raised to
    a supervisor after signing, and a request signed without an actor to which one is
    added, are both 401 signature-invalid; nothing moved."""
    path = f"/v1/accounts/{account}/cash-deposits"
    body = deposit_body(TELLER_CASH_CAP_MINOR + CNY)
    before = balance(supervisor, account)
    raised = counter_signer().headers("POST", path, body, idempotency_key=key(), actor=TELLER)
    raised["Tally-Actor"] = 'id="S0001",role="supervisor"'
    added = counter_signer().headers("POST", path, body, idempotency_key=key())
    added["Tally-Actor"] = 'id="S0001",role="supervisor"'
    for headers in (raised, added):
        response = httpx.post(server.url + path, content=body, headers=headers)
        assert response.status_code == 401, response.text
        assert problem_type(response) == "signature-invalid"
    assert balance(supervisor, account) == before


def test_a_malformed_or_unknown_actor_is_refused(
    server: TallyServer, supervisor: TallyClient, account: str
) -> None:
    """A signed actor header in another form is 400 actor-malformed; a role the counter
    does not declare is 403 actor-role-not-allowed; at a channel that names no actors any
    actor is refused."""
    path = f"/v1/accounts/{account}/cash-deposits"
    body = deposit_body(100)
    for value, status, slug in (
        ('id="T0001", role="teller"', 400, "actor-malformed"),
        ("teller", 400, "actor-malformed"),
        ('id="T0001",role="manager"', 403, "actor-role-not-allowed"),
    ):
        headers = signed_with_actor(path, body, value)
        response = httpx.post(server.url + path, content=body, headers=headers)
        assert response.status_code == status, (value, response.text)
        assert problem_type(response) == slug
    with server.client("app", actor=TELLER) as app:
        read = app.get(f"/v1/accounts/{account}")
    assert read.status_code == 403 and problem_type(read) == "actor-role-not-allowed"


def test_a_teller_over_the_role_cap_is_refused_and_a_supervisor_is_allowed(
    server: TallyServer, supervisor: TallyClient, account: str
) -> None:
    """A teller's cash deposit over the teller's cash cap is 403 actor-limit-exceeded and
    moves nothing, as does a teller's transfer over the transfer cap; the same deposit
    by a supervisor is posted; a teller's deposit within the cap is posted."""
    amount = TELLER_CASH_CAP_MINOR + CNY
    path = f"/v1/accounts/{account}/cash-deposits"
    other = open_class_i(supervisor, register(supervisor))
    before = balance(supervisor, account)
    with server.client("counter", actor=TELLER) as teller:
        over = teller.post(path, {"amount_minor": amount}, idempotency_key=key())
        assert over.status_code == 403, over.text
        assert problem_type(over) == "actor-limit-exceeded"
        assert over.json()["role"] == "teller"
        assert balance(supervisor, account) == before
        within = teller.post(path, {"amount_minor": TELLER_CASH_CAP_MINOR}, idempotency_key=key())
        assert within.status_code == 201, within.text
    allowed = supervisor.post(path, {"amount_minor": amount}, idempotency_key=key())
    assert allowed.status_code == 201, allowed.text
    assert balance(supervisor, account) == before + TELLER_CASH_CAP_MINOR + amount
    transfer = {
        "debit_account_id": account,
        "credit_account_id": other,
        "amount_minor": amount,
        "password": "135790",
    }
    with server.client("counter", actor=TELLER) as teller:
        refused = teller.post("/v1/transfers", transfer, idempotency_key=key())
    assert refused.status_code == 403 and problem_type(refused) == "actor-limit-exceeded"
    moved = supervisor.post("/v1/transfers", transfer, idempotency_key=key())
    assert moved.status_code == 201, moved.text
