"""HttpProviders against a real simulator: retries, timeouts, malformed and refused
answers, idempotency, the bearer token.

Faults are armed through /sim/faults on a request field unique to the test, so each
test's trouble hits only its own calls; the simulator's counters show what it saw.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from core.providers.client import HttpProviders
from core.providers.config import ProvidersConfig
from core.providers.population import card_for, face_of, liveness_token
from core.providers.sim import running_simulator
from core.providers.types import (
    CardCheck,
    IdentityCheck,
    LivenessCheck,
    ProviderError,
    SmsSend,
)
from tests.providers.conftest import SEED
from tests.providers.providers_helpers import (
    arm,
    counters,
    delta,
    inbox,
    mobile,
    providers,
    request_id,
    resident_id,
    stats,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_retries_a_503_then_succeeds(sim_url: str) -> None:
    """One 503, then the answer: the result says 2 attempts; the simulator saw both."""
    id_number = resident_id()
    arm(sim_url, "identity", "error", id_number)
    before = counters(sim_url, "identity")
    async with providers(sim_url) as client:
        result = await client.identity(IdentityCheck(request_id(), "陈一", id_number))
    assert (result.match, result.attempts) == (True, 2)
    assert delta(before, counters(sim_url, "identity")) == {
        "requests": 2,
        "fault_error": 1,
        "answers": 1,
    }


async def test_gives_up_after_attempts_max(sim_url: str) -> None:
    """A provider that keeps answering 503: ProviderError("unavailable") after exactly
    attempts_max attempts, never more."""
    id_number = resident_id()
    arm(sim_url, "identity", "error", id_number, count=10)
    before = counters(sim_url, "identity")
    async with providers(sim_url, attempts_max=3) as client:
        with pytest.raises(ProviderError) as raised:
            await client.identity(IdentityCheck(request_id(), "陈二", id_number))
    error = raised.value
    assert (error.provider, error.kind, error.attempts) == ("identity", "unavailable", 3)
    assert "HTTP 503" in error.detail and error.request_id
    assert delta(before, counters(sim_url, "identity")) == {"requests": 3, "fault_error": 3}


async def test_a_timeout_is_retried_then_reported(sim_url: str) -> None:
    """An answer slower than the client's timeout: retried; if every attempt is slow,
    ProviderError("timeout")."""
    face = face_of(resident_id())
    arm(sim_url, "liveness", "timeout", face, count=1)
    async with providers(sim_url, timeout_s=0.3, attempts_max=2) as client:
        result = await client.liveness(LivenessCheck(request_id(), liveness_token(face)))
    assert (result.live, result.attempts) == (True, 2)

    other = face_of(resident_id())
    arm(sim_url, "liveness", "timeout", other, count=2)
    async with providers(sim_url, timeout_s=0.3, attempts_max=2) as client:
        with pytest.raises(ProviderError) as raised:
            await client.liveness(LivenessCheck(request_id(), liveness_token(other)))
    assert (raised.value.kind, raised.value.attempts) == ("timeout", 2)


async def test_a_malformed_answer_is_not_retried(sim_url: str) -> None:
    """A 200 whose body is not the schema: ProviderError("malformed") at once."""
    phone = mobile()
    arm(sim_url, "sms", "malformed", phone, count=5)
    before = counters(sim_url, "sms")
    async with providers(sim_url, attempts_max=3) as client:
        with pytest.raises(ProviderError) as raised:
            await client.sms(SmsSend(request_id(), phone, "code 222222"))
    assert (raised.value.kind, raised.value.attempts) == ("malformed", 1)
    assert delta(before, counters(sim_url, "sms")) == {"requests": 1, "fault_malformed": 1}
    assert inbox(sim_url, phone) == []


@pytest.fixture(scope="module")
def malformed_url() -> Iterator[str]:
    with running_simulator(seed=SEED, malformed_rate=1.0) as url:
        yield url


async def test_every_malformed_shape_is_caught(malformed_url: str, anyio_backend: str) -> None:
    """Whichever off-schema body the simulator draws (wrong types and missing fields,
    HTML, a JSON array), the parsers refuse it as malformed, never retried."""
    id_number = resident_id()
    shapes: set[str] = set()
    async with providers(malformed_url) as client:
        for index in range(60):  # the draws are fixed by the seed and the request ids
            key = f"malformed-{anyio_backend}-{index}"
            with pytest.raises(ProviderError) as raised:
                if index % 2:
                    await client.identity(IdentityCheck(key, "陈三", id_number))
                else:
                    await client.card(_card(id_number, key=key))
            assert (raised.value.kind, raised.value.attempts) == ("malformed", 1)
            detail = raised.value.detail
            shapes.add(
                "html" if "text/html" in detail else "array" if "JSON object" in detail else "type"
            )
            if len(shapes) == 3:
                break
    assert shapes == {"html", "array", "type"}


def _card(id_number: str, reserved_mobile: str = "", key: str = "") -> CardCheck:
    return CardCheck(
        key or request_id(),
        card_for(id_number),
        "class_i_debit",
        "陈四",
        id_number,
        reserved_mobile or mobile(),
    )


async def test_a_4xx_is_refused_with_the_providers_detail(sim_url: str) -> None:
    """A request the provider refuses (400): ProviderError("refused"), one attempt, the
    provider's reason quoted."""
    async with providers(sim_url) as client:
        with pytest.raises(ProviderError) as raised:
            await client.card(_card(resident_id(), reserved_mobile="12345"))
    error = raised.value
    assert (error.provider, error.kind, error.attempts) == ("issuer", "refused", 1)
    assert "HTTP 400" in error.detail and "reserved_mobile" in error.detail


async def test_the_token_is_required(sim_url: str) -> None:
    """Without the right bearer token every provider refuses (401)."""
    before = stats(sim_url)["unauthorized"]
    async with providers(sim_url, token="not-the-token") as client:
        with pytest.raises(ProviderError) as raised:
            await client.identity(IdentityCheck(request_id(), "陈五", resident_id()))
    assert raised.value.kind == "refused" and "HTTP 401" in raised.value.detail
    assert stats(sim_url)["unauthorized"] == before + 1


async def test_the_same_request_id_is_answered_once(sim_url: str) -> None:
    """A request id sent twice: the same answer and reference, the second a replay, and
    the SMS delivered once; the same id with another body is refused (409)."""
    id_number, phone, key = resident_id(), mobile(), request_id()
    before = counters(sim_url, "identity")
    async with providers(sim_url) as client:
        first = await client.identity(IdentityCheck(key, "陈六", id_number))
        second = await client.identity(IdentityCheck(key, "陈六", id_number))
        with pytest.raises(ProviderError) as conflict:
            await client.identity(IdentityCheck(key, "陈七", id_number))
        sms_key = request_id()
        sent = [await client.sms(SmsSend(sms_key, phone, "code 333333")) for _ in range(2)]
    assert first.reference == second.reference and first.match and second.match
    assert delta(before, counters(sim_url, "identity")) == {
        "requests": 3,
        "answers": 1,
        "replays": 1,
        "conflicts": 1,
        "refused_409": 1,
    }
    assert conflict.value.kind == "refused" and "HTTP 409" in conflict.value.detail
    assert sent[0].message_id == sent[1].message_id
    assert len(inbox(sim_url, phone)) == 1


async def test_a_provider_that_is_not_there_is_unavailable() -> None:
    """Connection refused on every attempt: ProviderError("unavailable")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ProvidersConfig.at(f"http://127.0.0.1:{port}", backoff_s=0.01, backoff_max_s=0.02)
    async with HttpProviders(config) as client:
        with pytest.raises(ProviderError) as raised:
            await client.sms(SmsSend(request_id(), mobile(), "code 444444"))
    assert (raised.value.kind, raised.value.attempts) == ("unavailable", 3)
    assert "ConnectError" in raised.value.detail


@pytest.fixture(scope="module")
def flaky_url() -> Iterator[str]:
    with running_simulator(seed=SEED, failure_rate=0.5) as url:
        yield url


async def test_drawn_failures_are_retried_to_success(flaky_url: str, anyio_backend: str) -> None:
    """Under --failure-rate 0.5 a retry draws afresh: with 10 attempts every call gets its
    answer, and some took more than one (the draws are fixed by the seed and the ids)."""
    before = counters(flaky_url, "identity")
    async with providers(flaky_url, attempts_max=10) as client:
        results = [
            await client.identity(
                IdentityCheck(f"flaky-{anyio_backend}-{index}", "陈八", resident_id())
            )
            for index in range(12)
        ]
    assert all(result.match for result in results)
    assert any(result.attempts > 1 for result in results)
    assert any(result.attempts == 1 for result in results)
    moved = delta(before, counters(flaky_url, "identity"))
    assert moved["drawn_error"] == sum(result.attempts - 1 for result in results)
    assert moved["answers"] == len(results)
