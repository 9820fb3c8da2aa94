"""`tally serve --workers 2`: front-end processes before one core answer as the one
process does, and the channel tier kept in the core holds across them.

The requests open a new connection each, so the kernel spreads them over both
front-ends: a figure that holds across them (a nonce, a channel's rate) is checked
against requests that reached both.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import httpx
import orjson
import pytest

from channels.client import Signer, TallyClient
from channels.http.bench import secret_of, setup_accounts
from core.bench.server import children_of
from tests.http_helpers import CHANNELS_FILE, TallyServer

WECHAT_BURST = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    """Two front-ends; the wechat channel at a burst of 3 and a trickle of a rate."""
    directory = tmp_path_factory.mktemp("workers")
    text = CHANNELS_FILE.read_text()
    wechat = text.index("[channels.wechat]")
    end = text.index("[channels.", wechat + 1)
    section = re.sub(r"rate_per_s = \d+", "rate_per_s = 0.001", text[wechat:end])
    section = re.sub(r"burst = \d+", f"burst = {WECHAT_BURST}", section)
    channels = directory / "channels.toml"
    channels.write_text(text[:wechat] + section + text[end:])
    running = TallyServer(
        directory / "data", channels_file=channels, extra=["--workers", "2"]
    ).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def funded(server: TallyServer) -> tuple[list[str], dict[str, str]]:
    return setup_accounts(server.url, 2)


def test_two_front_ends_run_beside_the_core(server: TallyServer) -> None:
    """The core started two front-end processes, children of its own."""
    assert server.process is not None
    assert len(children_of(server.process.pid)) == 2


def test_a_transfer_through_the_front_ends_is_posted_once(
    server: TallyServer, funded: tuple[list[str], dict[str, str]]
) -> None:
    """A single transfer is 201; its retry (another connection, maybe the other
    front-end) is the same transfer, replayed; the balance moved once; a read passed
    through to the core says so."""
    (debit, credit), tokens = funded
    body = {"debit_account_id": debit, "credit_account_id": credit, "amount_minor": 250}
    key = secrets.token_hex(8)
    answers = []
    for _ in range(3):
        with TallyClient(server.url, "app", *secret_of("app")) as client:
            answers.append(
                client.post("/v1/transfers", body, idempotency_key=key, token=tokens[debit])
            )
    assert [answer.status_code for answer in answers] == [201, 201, 201]
    assert answers[0].headers.get("idempotent-replayed") is None
    assert all(answer.headers.get("idempotent-replayed") == "true" for answer in answers[1:])
    assert len({answer.json()["transfer_id"] for answer in answers}) == 1
    with TallyClient(server.url, "app", *secret_of("app")) as client:
        read = client.get(f"/v1/accounts/{credit}", token=tokens[credit])
    assert read.status_code == 200, read.text
    assert read.json()["balance_minor"] == 50_000_000 + 250


def test_refusals_are_the_core_apps_own(
    server: TallyServer, funded: tuple[list[str], dict[str, str]]
) -> None:
    """Unsigned: 401 with WWW-Authenticate; over the balance: 422 exceeds-credits; an
    unknown token: 401; a malformed body: 422 naming the field; an unauthenticated body
    over 4 KiB: 413 before it is read; all problem+json."""
    (debit, credit), tokens = funded
    body = {"debit_account_id": debit, "credit_account_id": credit, "amount_minor": 10**12}
    unsigned = httpx.post(server.url + "/v1/transfers", json=body)
    assert unsigned.status_code == 401
    assert unsigned.headers["www-authenticate"].startswith("TALLY-HMAC")
    assert unsigned.headers["content-type"] == "application/problem+json"
    large = httpx.post(server.url + "/v1/transfers", content=b"x" * 8192)
    assert large.status_code == 413
    with TallyClient(server.url, "app", *secret_of("app")) as client:
        over = client.post("/v1/transfers", body, idempotency_key="k" + secrets.token_hex(8),
                           token=tokens[debit])  # fmt: skip
        assert over.status_code == 422 and over.json()["type"].endswith("/exceeds-credits")
        one = dict(body, amount_minor=1)
        unknown = client.post(
            "/v1/transfers", one, idempotency_key="k" + secrets.token_hex(8), token="nosuchtoken"
        )
        assert unknown.status_code == 401, unknown.text
        assert unknown.json()["type"].endswith("/transaction-token-invalid")
        negative = dict(body, amount_minor=-5)
        bad = client.post(
            "/v1/transfers", negative, idempotency_key="k" + secrets.token_hex(8),
            token=tokens[debit],
        )  # fmt: skip
        assert bad.status_code == 422 and "amount_minor" in bad.json()["detail"]


def test_an_empty_proof_header_is_refused_as_the_one_process_refuses_it(
    server: TallyServer, funded: tuple[list[str], dict[str, str]]
) -> None:
    """An empty Tally-Transaction-Token (and an empty Tally-Session) on a signed transfer:
    400 proof-header-malformed naming the header, as the core's own app answers it,
    and nothing posted. The front-end reads the proof headers with the app's function;
    its own check once took an empty token for none and forwarded the transfer."""
    (debit, credit), _ = funded
    key_id, secret = secret_of("app")
    signer = Signer("app", key_id, secret.encode())
    data = orjson.dumps({"debit_account_id": debit, "credit_account_id": credit,
                         "amount_minor": 1})  # fmt: skip
    for header in ("Tally-Transaction-Token", "Tally-Session"):
        headers = signer.headers(
            "POST", "/v1/transfers", data, idempotency_key="e" + secrets.token_hex(8)
        )
        headers[header] = ""
        with httpx.Client(base_url=server.url) as client:
            answer = client.post("/v1/transfers", content=data, headers=headers)
        assert answer.status_code == 400, answer.text
        assert answer.json()["type"].endswith("/proof-header-malformed")
        assert header in answer.json()["title"]


def test_a_nonce_is_used_once_across_front_ends(
    server: TallyServer, funded: tuple[list[str], dict[str, str]]
) -> None:
    """The same signed request sent again on new connections (the other front-end, by
    the kernel's choice, as often as not): the first is posted, every resend is 401
    nonce-reused. The nonce is checked in the core, for all front-ends."""
    (debit, credit), tokens = funded
    key_id, secret = secret_of("app")
    data = orjson.dumps({"debit_account_id": debit, "credit_account_id": credit,
                         "amount_minor": 1})  # fmt: skip
    headers = Signer("app", key_id, secret.encode()).headers(
        "POST", "/v1/transfers", data, idempotency_key="n" + secrets.token_hex(8)
    )
    headers["Tally-Transaction-Token"] = tokens[debit]
    statuses = []
    types = []
    for _ in range(4):
        with httpx.Client(base_url=server.url) as client:
            answer = client.post("/v1/transfers", content=data, headers=headers)
        statuses.append(answer.status_code)
        types.append(answer.json().get("type", ""))
    # 2xx: posted, or held by the risk stage (the account has posted before in this module)
    assert statuses[0] in (201, 202) and statuses[1:] == [401, 401, 401], statuses
    assert all(kind.endswith("/nonce-reused") for kind in types[1:])


def test_a_channels_rate_is_one_bucket_across_front_ends(
    server: TallyServer, funded: tuple[list[str], dict[str, str]]
) -> None:
    """The wechat channel at a burst of 3: of 6 transfers on new connections (both
    front-ends), the first 3 reach the services (refused there for their unknown token)
    and the next 3 are 429 with Retry-After; the core's /metrics counts the 3."""
    (debit, credit), _ = funded
    body = {"debit_account_id": debit, "credit_account_id": credit, "amount_minor": 1}
    statuses = []
    retry_after = []
    for _ in range(2 * WECHAT_BURST):
        with TallyClient(server.url, "wechat", *secret_of("wechat")) as client:
            answer = client.post("/v1/transfers", body, idempotency_key="r" + secrets.token_hex(8),
                                 token="notawechattoken")  # fmt: skip
        statuses.append(answer.status_code)
        retry_after.append(answer.headers.get("retry-after"))
    assert statuses == [401] * WECHAT_BURST + [429] * WECHAT_BURST, statuses
    assert all(retry_after[WECHAT_BURST:]), retry_after
    metrics = httpx.get(server.url + "/metrics").text
    assert f'tally_channel_rate_limited_total{{channel="wechat"}} {WECHAT_BURST}' in metrics or (
        f'tally_channel_rate_limited{{channel="wechat"}} {WECHAT_BURST}' in metrics
    ), [line for line in metrics.splitlines() if "rate_limited" in line]
