"""Every way a request can fail channel authentication, on asyncio and on trio.

The signature covers method, path, query, timestamp, nonce, Idempotency-Key
and the body's SHA-256; each of them altered after signing must be refused,
as must a stale or future timestamp, a reused nonce (also after a restart),
an unknown channel or key, and an operation the channel may not use.
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
from tests.http_helpers import TallyServer, channel_secret, key, problem_type

BODY = {"name": "周八", "id_number": "11010519491231002X", "mobile": "13800138000"}


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TallyServer]:
    data = tmp_path_factory.mktemp(f"auth-{request.param}") / "data"
    running = TallyServer(data, backend=request.param).start()
    yield running
    running.stop()


def signer(channel: str = "bank", index: int = 0) -> Signer:
    """The bank's internal channel by default: it reads any customer and acts for no
    teller, so a signed read of an unknown customer is answered 404 once the signature
    passes."""
    import tomllib

    from tests.http_helpers import CHANNELS_FILE

    with open(CHANNELS_FILE, "rb") as file:
        entry = tomllib.load(file)["channels"][channel]["secrets"][index]
    return Signer(channel, entry["key_id"], entry["secret"].encode())


def send(
    server: TallyServer, method: str, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return httpx.request(method, server.url + path, content=body or None, headers=headers)


def refused(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert problem_type(response) == slug
    if status == 401:
        assert response.headers["www-authenticate"] == "TALLY-HMAC-SHA256"


def test_signed_request_passes(server: TallyServer) -> None:
    """The reference: a correctly signed read is answered (404 for an unknown customer)."""
    headers = signer().headers("GET", "/v1/customers/c00000000000000000000")
    response = send(server, "GET", "/v1/customers/c00000000000000000000", b"", headers)
    assert response.status_code == 404 and problem_type(response) == "customer-not-found"


def test_missing_and_malformed_authorization(server: TallyServer) -> None:
    """No header, another scheme, missing or duplicated parameters: 401 with the reason."""
    path = "/v1/customers/c00000000000000000000"
    refused(send(server, "GET", path, b"", {}), 401, "signature-missing")
    refused(
        send(server, "GET", path, b"", {"Authorization": "Bearer abc"}),
        401,
        "authorization-malformed",
    )
    good = signer().headers("GET", path)["Authorization"]
    refused(
        send(server, "GET", path, b"", {"Authorization": good.replace('nonce="', 'nonc="')}),
        401,
        "authorization-malformed",
    )
    refused(
        send(server, "GET", path, b"", {"Authorization": good + ',nonce="abcdefgh"'}),
        401,
        "authorization-malformed",
    )
    short_nonce = signer().headers("GET", path, nonce="abc")
    refused(send(server, "GET", path, b"", short_nonce), 401, "authorization-malformed")
    text_time = good.replace('timestamp="', 'timestamp="x')
    refused(
        send(server, "GET", path, b"", {"Authorization": text_time}), 401, "authorization-malformed"
    )


def test_unknown_channel_and_key(server: TallyServer) -> None:
    """A channel or key id the registry does not know is a 401; a retired key too."""
    path = "/v1/customers/c00000000000000000000"
    stranger = Signer("mallory", "k", b"x" * 32).headers("GET", path)
    refused(send(server, "GET", path, b"", stranger), 401, "channel-unknown")
    wrong_key = Signer("app", "dev-app-9", b"x" * 32).headers("GET", path)
    refused(send(server, "GET", path, b"", wrong_key), 401, "key-unknown")


def test_rotation_second_secret_works(server: TallyServer) -> None:
    """During rotation both of a channel's secrets sign valid requests."""
    path = "/v1/customers/c00000000000000000000"
    for index in (0, 1):
        response = send(server, "GET", path, b"", signer("app", index).headers("GET", path))
        # Past the signature: the service asks the app for the customer's session.
        assert problem_type(response) == "read-authentication-required", response.text


@pytest.mark.parametrize("offset_s", [-310, 310, -100000])
def test_timestamp_outside_window(server: TallyServer, offset_s: int) -> None:
    """Timestamps more than 300 s from the server's clock, either way, are refused."""
    path = "/v1/customers/c00000000000000000000"
    headers = signer().headers("GET", path, timestamp=int(time.time()) + offset_s)
    refused(send(server, "GET", path, b"", headers), 401, "timestamp-out-of-window")


def test_timestamp_inside_window(server: TallyServer) -> None:
    """A timestamp 250 s off (client clock skew) is still accepted."""
    path = "/v1/customers/c00000000000000000000"
    for offset_s in (-250, 250):
        headers = signer().headers("GET", path, timestamp=int(time.time()) + offset_s)
        assert send(server, "GET", path, b"", headers).status_code == 404


def test_wrong_secret(server: TallyServer) -> None:
    """A signature made with another secret under a valid key id is refused."""
    path = "/v1/customers/c00000000000000000000"
    forged = Signer("counter", "dev-counter-1", b"y" * 40).headers("GET", path)
    refused(send(server, "GET", path, b"", forged), 401, "signature-invalid")


def test_tampering_with_any_signed_part(server: TallyServer) -> None:
    """Body, path, query and Idempotency-Key are all covered by the signature."""
    body = orjson.dumps(BODY)
    headers = signer().headers("POST", "/v1/customers", body)
    refused(
        send(
            server, "POST", "/v1/customers", body.replace(b"13800138000", b"13800138001"), headers
        ),
        401,
        "signature-invalid",
    )
    signed_path = "/v1/customers/c00000000000000000001/accounts"
    other_path = "/v1/customers/c00000000000000000002/accounts"
    refused(
        send(server, "POST", other_path, body, signer().headers("POST", signed_path, body)),
        401,
        "signature-invalid",
    )
    path = "/v1/accounts/1/history"
    signed = signer().headers("GET", path, query="limit=5")
    refused(send(server, "GET", path + "?limit=500", b"", signed), 401, "signature-invalid")
    money = orjson.dumps({"amount_minor": 1})
    with_key = signer("counter").headers(
        "POST", "/v1/accounts/1/cash-deposits", money, idempotency_key="a"
    )
    with_key["Idempotency-Key"] = "b"
    refused(
        send(server, "POST", "/v1/accounts/1/cash-deposits", money, with_key),
        401,
        "signature-invalid",
    )


def test_nonce_reuse_refused_even_after_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A replayed request (same nonce) is refused, and still is after the server restarts."""
    data = tmp_path_factory.mktemp("nonce") / "data"
    server = TallyServer(data).start()
    path = "/v1/customers/c00000000000000000000"
    nonce = secrets.token_hex(16)
    headers = signer().headers("GET", path, nonce=nonce)
    assert send(server, "GET", path, b"", headers).status_code == 404
    refused(send(server, "GET", path, b"", headers), 401, "nonce-reused")
    fresh = signer().headers("GET", path)
    assert send(server, "GET", path, b"", fresh).status_code == 404
    time.sleep(0.3)  # the nonce flusher writes within 50 ms
    server.stop()
    server.start()
    refused(send(server, "GET", path, b"", headers), 401, "nonce-reused")
    server.stop()


def test_operation_not_allowed_for_channel(server: TallyServer) -> None:
    """An ATM may not register customers or pay a merchant: 403 naming the operation."""
    with server.client("atm") as atm:
        response = atm.post("/v1/customers", BODY)
        refused(response, 403, "operation-not-allowed")
        payment = atm.post(
            "/v1/payments",
            {"debit_account_id": "1", "merchant_account_id": "2", "amount_minor": 1},
            idempotency_key=key(),
        )
        refused(payment, 403, "operation-not-allowed")


def test_unsigned_routes_need_no_signature(server: TallyServer) -> None:
    """Health, readiness, metrics and the OpenAPI document are open (no money, no customer data)."""
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(server.url + path).status_code == 200


def test_client_helper_signs_like_the_server_checks(server: TallyServer) -> None:
    """The client helper's header is the one documented in channels/signing.py."""
    key_id, secret = channel_secret("app")
    header = authorization_header(
        "app", key_id, secret.encode(), "GET", "/v1/x", timestamp=1, nonce="abcdefgh"
    )
    assert header.startswith(
        'TALLY-HMAC-SHA256 channel="app",key_id="dev-app-1",timestamp="1",nonce="abcdefgh",'
    )
    with TallyClient(server.url, "app", key_id, secret) as client:
        answered = client.get("/v1/customers/c00000000000000000000")
        # Past the signature: the service asks the app for the customer's session.
        assert problem_type(answered) == "read-authentication-required", answered.text
