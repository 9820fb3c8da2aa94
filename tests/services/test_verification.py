"""Real-name verification through the services, against the provider simulator over HTTP.

Each test drives a real Bank (engine, journal in a tmp dir) whose providers are
`HttpProviders` talking to a simulator subprocess (`core.providers.sim`), so every step
crosses the real client, its timeouts, retries and parsing. The simulator's test routes
are the customer's phone (`/sim/sms/{mobile}`), the citizen database's pinned names
(`/sim/citizens`) and the faults (`/sim/faults`: the next calls matching a string time
out, fail or answer garbage). The services' clock is injected: expiry is tested by
moving it, never by sleeping.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from core.providers import population
from core.providers.client import HttpProviders
from core.providers.config import ProvidersConfig
from core.providers.sim import running_simulator
from core.services import identity
from core.services.bank import Bank
from core.services.commands import (
    Caller,
    ConfirmInPerson,
    ConfirmSmsCode,
    Consent,
    Movement,
    OpenAccount,
    PostingBatch,
    RegisterCustomer,
    RequestSmsCode,
    StartCardBinding,
    SubmitIdDocument,
    SubmitLiveness,
)
from core.services.lifecycle import Settings
from core.services.refusals import Code, Refused
from core.services.results import CardBindingRead, SmsChallengeRead, VerificationRead
from core.services.state import customer_record
from core.services.verification import IMAGE_BYTES_MAX
from ledger.constants import CASH_VAULT_ID
from ledger.records import pack_transfer
from ledger.types import TransferCode
from limits.rules import load_rules

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
NS_PER_S = 1_000_000_000
TELLER = Caller("counter", "counter", 3, "T0001", "teller")
COUNTER = Caller("counter", "counter", 3)  # no teller named
APP = Caller("app", "app", 1)
OTHER_APP = Caller("app2", "app", 7)
ATM = Caller("atm", "atm", 4)
PASSWORD = "135790"
BIND = "bind_card"


class Clock:
    def __init__(self) -> None:
        self.now = START_NS

    def now_ns(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * NS_PER_S)


_serial = iter(range(100, 999))


def new_person() -> tuple[str, str, str]:
    """(name, a fresh valid resident ID, a fresh mobile): each test its own people, so
    the shared simulator's inboxes and faults never mix tests."""
    serial = next(_serial)
    first = "110105" + "19850101" + f"{serial:03d}"
    return "张三", first + identity.resident_id_check_character(first), f"139{serial:08d}"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with running_simulator(seed=17) as url:
        yield url


def config(url: str) -> ProvidersConfig:
    # Short timeouts and backoff: a timed-out call fails in about a second, not thirty.
    return ProvidersConfig.at(
        url, timeout_s=0.5, attempts_max=2, backoff_s=0.01, backoff_max_s=0.05
    )


@asynccontextmanager
async def running_bank(
    directory: Path, clock: Clock, url: str | None, on_loaded: dict[bytes, bytes] | None = None
) -> AsyncIterator[Bank]:
    settings = Settings(str(directory), scrypt_n=1 << 10, token_ttl_s=60)
    providers = HttpProviders(config(url)) if url is not None else None
    bank = Bank(
        settings, load_rules("examples/limits.toml"), now_ns=clock.now_ns, providers=providers
    )
    if on_loaded is not None:
        bank.core.on_state_loaded.append(on_loaded.update)
    try:
        async with anyio.create_task_group() as task_group:
            await task_group.start(bank.serve)
            with anyio.fail_after(30):
                while not bank.core.ready:  # noqa: ASYNC110 (readiness is a flag)
                    await anyio.sleep(0.01)
            yield bank
            task_group.cancel_scope.cancel()
    finally:
        if providers is not None:
            await providers.aclose()


def scenario(
    test: Callable[[Path, str], Awaitable[None]],
) -> Callable[[Path, str], None]:
    def runner(tmp_path: Path, sim_url: str) -> None:
        anyio.run(test, tmp_path, sim_url)

    runner.__doc__ = test.__doc__
    runner.__name__ = test.__name__
    return runner


async def refusal(call: Awaitable[Any]) -> Refused:
    with pytest.raises(Refused) as caught:
        await call
    return caught.value


def step(read: VerificationRead | CardBindingRead, name: str) -> dict[str, Any]:
    return next(item for item in read.steps if item["step"] == name)


def sim(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    answer = httpx.request(method, url + path, json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def fault(url: str, provider: str, match: str, mode: str, count: int = 2) -> None:
    """The next `count` calls of `provider` whose request holds `match` fail by `mode`
    (2: both attempts of the tests' client)."""
    sim(
        url,
        "POST",
        "/sim/faults",
        {"provider": provider, "match": match, "mode": mode, "count": count},
    )


def last_code(url: str, mobile: str) -> str:
    messages = sim(url, "GET", f"/sim/sms/{mobile}")["messages"]
    code = population.sms_code_in(messages[-1]["text"])
    assert code is not None
    return code


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def register_remote(bank: Bank, person: tuple[str, str, str]) -> str:
    name, id_number, mobile = person
    customer = await bank.customers.register(RegisterCustomer(APP, name, id_number, mobile))
    assert customer.kyc["status"] == "pending"
    return customer.customer_id


async def verify_remote(bank: Bank, customer_id: str, person: tuple[str, str, str]) -> None:
    name, id_number, _ = person
    image = population.id_card_image(name, id_number)
    await bank.verification.submit_id_document(
        SubmitIdDocument(APP, customer_id, image, "image/png")
    )
    token = population.liveness_token(population.face_of(id_number))
    read = await bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, token))
    assert read.status == "verified", read


def card_of(person: tuple[str, str, str], number: str = "") -> dict[str, str]:
    name, id_number, mobile = person
    return {
        "card_number": number or population.card_for(id_number),
        "card_type": "class_i_debit",
        "holder_name": name,
        "holder_id_number": id_number,
        "reserved_mobile": mobile,
    }


async def verified_binding(
    bank: Bank, url: str, customer_id: str, person: tuple[str, str, str]
) -> tuple[str, dict[str, str]]:
    card = card_of(person)
    binding = await bank.verification.start_binding(StartCardBinding(APP, customer_id, card))
    assert binding.sms_challenge is not None
    code = last_code(url, person[2])
    await bank.verification.confirm_sms_code(
        ConfirmSmsCode(
            APP, customer_id, binding.sms_challenge["challenge_id"], BIND, binding.binding_id, code
        )
    )
    return binding.binding_id, card


# --- the customer's steps ---------------------------------------------------------------


@scenario
async def test_counter_registration_is_verified_in_one_call(tmp_path: Path, url: str) -> None:
    """At a counter naming its teller, registration runs id_structure, the identity
    database (name + ID, no photo) and the teller's confirmation: verified at once; the
    provider call is in the history, with its request id and attempts."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        name, id_number, mobile = new_person()
        customer = await bank.customers.register(RegisterCustomer(TELLER, name, id_number, mobile))
        assert customer.kyc["status"] == "verified"
        assert customer.kyc["required"] == [
            "id_structure",
            "identity_database",
            "teller_confirmation",
        ]
        assert [s["state"] for s in customer.kyc["steps"]] == ["passed"] * 3
        assert "not_checked" not in customer.kyc
        read = bank.verification.read(TELLER, customer.customer_id)
        assert step(read, "teller_confirmation")["by"] == "counter/T0001"
        [call] = read.history
        assert call["provider"] == "identity" and call["outcome"] == "passed"
        assert call["request_id"].startswith(customer.customer_id + "-identity_database-1-")
        assert call["attempts"] == 1
        # Verified: Class I opens; the workflow is closed to further steps.
        opened = await bank.accounts.open(
            OpenAccount(TELLER, customer.customer_id, 1, None, PASSWORD)
        )
        assert opened.account_id
        closed = await refusal(
            bank.verification.confirm_in_person(ConfirmInPerson(TELLER, customer.customer_id))
        )
        assert closed.refusal.code == Code.VERIFICATION_CLOSED
        assert closed.refusal.extras["status"] == "verified"


@scenario
async def test_counter_without_teller_waits_for_the_confirmation(tmp_path: Path, url: str) -> None:
    """A counter request naming no teller leaves teller_confirmation pending (the
    customer pending: no account opens); confirm_in_person needs a named teller and then
    verifies."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        name, id_number, mobile = new_person()
        customer = await bank.customers.register(RegisterCustomer(COUNTER, name, id_number, mobile))
        assert customer.kyc["status"] == "pending"
        read = bank.verification.read(COUNTER, customer.customer_id)
        assert step(read, "identity_database")["state"] == "passed"
        assert step(read, "teller_confirmation")["state"] == "pending"
        no_kyc = await refusal(
            bank.accounts.open(OpenAccount(COUNTER, customer.customer_id, 1, None, PASSWORD))
        )
        assert no_kyc.refusal.code == Code.KYC_NOT_VERIFIED
        nobody = await refusal(
            bank.verification.confirm_in_person(ConfirmInPerson(COUNTER, customer.customer_id))
        )
        assert nobody.refusal.code == Code.ACTOR_REQUIRED
        not_counter = await refusal(
            bank.verification.confirm_in_person(ConfirmInPerson(APP, customer.customer_id))
        )
        assert not_counter.refusal.code == Code.CHANNEL_KIND_NOT_ALLOWED
        read = await bank.verification.confirm_in_person(
            ConfirmInPerson(TELLER, customer.customer_id)
        )
        assert read.status == "verified"
        assert step(read, "teller_confirmation")["by"] == "counter/T0001"


@scenario
async def test_remote_workflow_passes_step_by_step(tmp_path: Path, url: str) -> None:
    """A remote registration runs id_structure only; the ID document's OCR, then the
    liveness check pass, and the identity database runs with the liveness face: verified.
    The status moves pending -> verified only with the last step."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        person = new_person()
        name, id_number, _ = person
        customer_id = await register_remote(bank, person)
        read = bank.verification.read(APP, customer_id)
        assert read.required == ["id_structure", "identity_database", "id_ocr", "liveness"]
        assert [s["state"] for s in read.steps] == ["passed", "pending", "pending", "pending"]
        assert step(read, "id_ocr")["attempts_max"] == 3
        jpeg = population.id_card_image(name, id_number, "image/jpeg")
        read = await bank.verification.submit_id_document(
            SubmitIdDocument(APP, customer_id, jpeg, "image/jpeg")
        )
        assert step(read, "id_ocr")["state"] == "passed" and read.status == "pending"
        token = population.liveness_token(population.face_of(id_number))
        read = await bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, token))
        assert read.status == "verified"
        assert [h["provider"] for h in read.history] == ["ocr", "liveness", "identity"]
        assert all(h["outcome"] == "passed" for h in read.history)
        again = await refusal(
            bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, token))
        )
        assert again.refusal.code == Code.VERIFICATION_CLOSED
        # The customer read model shows the same workflow.
        shown = bank.customers.read(TELLER, customer_id)
        assert shown.kyc["status"] == "verified" and len(shown.kyc["steps"]) == 4


@scenario
async def test_ocr_failures_and_bad_images(tmp_path: Path, url: str) -> None:
    """An unreadable image and a document of somebody else each cost an attempt (200, the
    attempts remaining shown); the third failure fails the step and rejects the customer.
    An image too large or of the wrong type is refused before anything is asked, and
    costs nothing."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        person = new_person()
        name, id_number, _ = person
        customer_id = await register_remote(bank, person)
        too_large = population.PNG_SIGNATURE + b"\0" * IMAGE_BYTES_MAX
        large = await refusal(
            bank.verification.submit_id_document(
                SubmitIdDocument(APP, customer_id, too_large, "image/png")
            )
        )
        assert large.refusal.code == Code.IMAGE_TOO_LARGE
        assert large.refusal.extras["limit_bytes"] == IMAGE_BYTES_MAX
        gif = await refusal(
            bank.verification.submit_id_document(
                SubmitIdDocument(APP, customer_id, b"GIF89a" + b"\0" * 32, "image/png")
            )
        )
        assert gif.refusal.code == Code.IMAGE_TYPE_NOT_ALLOWED
        png = population.id_card_image(name, id_number)
        mislabelled = await refusal(
            bank.verification.submit_id_document(
                SubmitIdDocument(APP, customer_id, png, "image/jpeg")
            )
        )
        assert mislabelled.refusal.code == Code.IMAGE_TYPE_NOT_ALLOWED
        read = bank.verification.read(APP, customer_id)
        assert step(read, "id_ocr")["attempts"] == 0 and read.history == []

        unreadable = population.PNG_SIGNATURE + b"not an ID card at all"
        read = await bank.verification.submit_id_document(
            SubmitIdDocument(APP, customer_id, unreadable, "image/png")
        )
        ocr = step(read, "id_ocr")
        assert ocr["state"] == "pending" and ocr["attempts_remaining"] == 2
        assert ocr["reasons"] == ["unreadable"]
        somebody_else = population.id_card_image("李四", new_person()[1])
        read = await bank.verification.submit_id_document(
            SubmitIdDocument(APP, customer_id, somebody_else, "image/png")
        )
        assert step(read, "id_ocr")["reasons"] == ["unreadable", "document_mismatch"]
        assert read.status == "pending"
        read = await bank.verification.submit_id_document(
            SubmitIdDocument(APP, customer_id, unreadable + b"!", "image/png")
        )
        assert step(read, "id_ocr")["state"] == "failed"
        assert read.status == "rejected" and read.reasons == ["id_ocr: unreadable"]
        closed = await refusal(
            bank.verification.submit_id_document(
                SubmitIdDocument(APP, customer_id, png, "image/png")
            )
        )
        assert closed.refusal.code == Code.VERIFICATION_CLOSED


@scenario
async def test_ocr_reference_from_the_app(tmp_path: Path, url: str) -> None:
    """The app's SDK produced the OCR result: the step looks it up by reference. An
    unknown reference is the provider's 404: a failed attempt."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        person = new_person()
        name, id_number, _ = person
        customer_id = await register_remote(bank, person)
        read = await bank.verification.submit_id_document(
            SubmitIdDocument(APP, customer_id, ocr_reference="ocr-000000000000000000000000")
        )
        assert step(read, "id_ocr")["reasons"] == ["refused_by_provider"]
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{url}/ocr/v1/id-card",
                json={
                    "image_base64": base64.b64encode(
                        population.id_card_image(name, id_number)
                    ).decode(),
                    "media_type": "image/png",
                },
                headers={"Authorization": f"Bearer {population.SIM_TOKEN}"},
            )
        reference = answer.json()["reference"]
        read = await bank.verification.submit_id_document(
            SubmitIdDocument(APP, customer_id, ocr_reference=reference)
        )
        assert step(read, "id_ocr")["state"] == "passed"
        both = await refusal(
            bank.verification.submit_id_document(
                SubmitIdDocument(APP, customer_id, b"x", "image/png", reference)
            )
        )
        assert both.refusal.code == Code.INVALID_FIELD


@scenario
async def test_spoofed_liveness_rejects_after_three(tmp_path: Path, url: str) -> None:
    """A spoof (a photo held up to the camera) fails the attempt; a token that is no
    SDK's is the provider's 422, a failed attempt too; the third failure rejects."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        person = new_person()
        customer_id = await register_remote(bank, person)
        spoof = population.liveness_token(population.face_of(person[1]), live=False)
        read = await bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, spoof))
        live = step(read, "liveness")
        assert live["state"] == "pending" and live["reasons"] == ["spoof"]
        assert live["attempts_remaining"] == 2
        read = await bank.verification.submit_liveness(
            SubmitLiveness(APP, customer_id, "lv1.forged.token.value")
        )
        assert step(read, "liveness")["reasons"] == ["spoof", "refused_by_provider"]
        read = await bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, spoof))
        assert step(read, "liveness")["state"] == "failed"
        assert read.status == "rejected"
        exceeded = await refusal(
            bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, spoof))
        )
        assert exceeded.refusal.code == Code.VERIFICATION_CLOSED
        assert exceeded.refusal.extras["status"] == "rejected"


def test_photo_mismatch_sends_back_to_liveness_then_rejects(tmp_path: Path) -> None:
    """An ID whose database photo is somebody else's (a stolen identity: this simulator
    steals every one): each liveness pass meets a photo mismatch and goes back to
    liveness; the third mismatch fails identity_database for good."""

    async def test() -> None:
        with running_simulator(seed=3, photo_mismatch_rate=1.0) as url:
            async with running_bank(tmp_path, Clock(), url) as bank:
                person = new_person()
                customer_id = await register_remote(bank, person)
                token = population.liveness_token(population.face_of(person[1]))
                for attempt in (1, 2):
                    read = await bank.verification.submit_liveness(
                        SubmitLiveness(APP, customer_id, token)
                    )
                    identity_step = step(read, "identity_database")
                    assert identity_step["state"] == "pending"
                    assert identity_step["attempts"] == attempt
                    assert identity_step["reasons"][-1] == "photo_mismatch"
                    assert step(read, "liveness")["state"] == "pending"
                read = await bank.verification.submit_liveness(
                    SubmitLiveness(APP, customer_id, token)
                )
                assert step(read, "identity_database")["state"] == "failed"
                assert read.status == "rejected"
                assert [h["outcome"] for h in read.history if h["provider"] == "identity"] == [
                    "photo_mismatch"
                ] * 3

    anyio.run(test)


@scenario
async def test_identity_name_mismatch_fails_at_once(tmp_path: Path, url: str) -> None:
    """The identity database holds this ID under another name: identity_database fails
    at its first attempt and the customer is rejected."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        name, id_number, mobile = new_person()
        sim(url, "POST", "/sim/citizens", {"id_number": id_number, "name": "王五"})
        customer = await bank.customers.register(RegisterCustomer(TELLER, name, id_number, mobile))
        assert customer.kyc["status"] == "rejected"
        assert customer.kyc["reasons"] == ["identity_database: identity_mismatch:name"]
        identity_step = next(s for s in customer.kyc["steps"] if s["step"] == "identity_database")
        assert identity_step["state"] == "failed" and identity_step["attempts"] == 1


@scenario
async def test_provider_timeout_leaves_the_step_pending(tmp_path: Path, url: str) -> None:
    """The identity database times out (both attempts of the client): the registration
    stands, pending, no attempt consumed, the timeout in the history; the teller runs the
    step again (confirm_in_person) and the customer is verified."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        name, id_number, mobile = new_person()
        fault(url, "identity", id_number, "timeout")
        customer = await bank.customers.register(RegisterCustomer(TELLER, name, id_number, mobile))
        assert customer.kyc["status"] == "pending"
        read = bank.verification.read(TELLER, customer.customer_id)
        assert step(read, "identity_database")["attempts"] == 0
        assert step(read, "teller_confirmation")["state"] == "passed"
        [timeout] = read.history
        assert timeout["outcome"] == "timeout" and timeout["attempts"] == 2
        read = await bank.verification.confirm_in_person(
            ConfirmInPerson(TELLER, customer.customer_id)
        )
        assert read.status == "verified"
        assert step(read, "identity_database")["attempts"] == 1
        # The same attempt asked again: the same request id.
        assert read.history[1]["request_id"] == timeout["request_id"]
        assert read.history[1]["outcome"] == "passed"


@scenario
async def test_provider_unavailable_is_refused_and_retried(tmp_path: Path, url: str) -> None:
    """A liveness provider answering 5xx: PROVIDER_UNAVAILABLE with retry_after_s, the step
    unchanged; a retry passes. When the identity database fails after liveness passed,
    submitting liveness again runs the identity database."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        person = new_person()
        customer_id = await register_remote(bank, person)
        token = population.liveness_token(population.face_of(person[1]))
        fault(url, "liveness", population.face_of(person[1]), "error")
        unavailable = await refusal(
            bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, token))
        )
        assert unavailable.refusal.code == Code.PROVIDER_UNAVAILABLE
        assert unavailable.refusal.extras["provider"] == "liveness"
        assert unavailable.refusal.extras["retry_after_s"] > 0
        assert step(bank.verification.read(APP, customer_id), "liveness")["attempts"] == 0
        fault(url, "identity", person[1], "error")
        failed = await refusal(
            bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, token))
        )
        assert failed.refusal.extras["provider"] == "identity"
        read = bank.verification.read(APP, customer_id)
        assert step(read, "liveness")["state"] == "passed"
        assert step(read, "identity_database")["state"] == "pending"
        read = await bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, token))
        assert step(read, "identity_database")["state"] == "passed"
        assert [h["outcome"] for h in read.history] == [
            "unavailable", "passed", "unavailable", "passed",
        ]  # fmt: skip


@scenario
async def test_malformed_provider_answer(tmp_path: Path, url: str) -> None:
    """An OCR answer that does not parse: PROVIDER_ANSWER_INVALID, nothing half-verified
    (the step unchanged, no attempt), the call recorded as malformed; the next answer
    decides."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        person = new_person()
        customer_id = await register_remote(bank, person)
        fault(url, "ocr", "image_base64", "malformed", count=1)
        image = population.id_card_image(person[0], person[1])
        invalid = await refusal(
            bank.verification.submit_id_document(
                SubmitIdDocument(APP, customer_id, image, "image/png")
            )
        )
        assert invalid.refusal.code == Code.PROVIDER_ANSWER_INVALID
        assert invalid.refusal.extras["provider"] == "ocr"
        read = bank.verification.read(APP, customer_id)
        assert step(read, "id_ocr")["attempts"] == 0 and step(read, "id_ocr")["state"] == "pending"
        assert [h["outcome"] for h in read.history] == ["malformed"]
        read = await bank.verification.submit_id_document(
            SubmitIdDocument(APP, customer_id, image, "image/png")
        )
        assert step(read, "id_ocr")["state"] == "passed"


def test_provider_not_configured(tmp_path: Path) -> None:
    """No providers: a counter registration stays pending (identity_database recorded as
    not configured); a step that needs a provider is refused PROVIDER_UNAVAILABLE."""

    async def test() -> None:
        async with running_bank(tmp_path, Clock(), None) as bank:
            name, id_number, mobile = new_person()
            customer = await bank.customers.register(
                RegisterCustomer(TELLER, name, id_number, mobile)
            )
            assert customer.kyc["status"] == "pending"
            read = bank.verification.read(TELLER, customer.customer_id)
            assert [h["outcome"] for h in read.history] == ["not_configured"]
            remote = await register_remote(bank, new_person())
            token = population.liveness_token(population.face_of(id_number))
            refused = await refusal(
                bank.verification.submit_liveness(SubmitLiveness(APP, remote, token))
            )
            assert refused.refusal.code == Code.PROVIDER_UNAVAILABLE
            assert refused.refusal.detail == "not configured"
            assert step(bank.verification.read(APP, remote), "liveness")["attempts"] == 0

    anyio.run(test)


@scenario
async def test_workflow_expires_after_a_day(tmp_path: Path, url: str) -> None:
    """24 h after registration the steps still pending are expired and the customer
    rejected; a step submitted then is refused VERIFICATION_EXPIRED."""
    clock = Clock()
    async with running_bank(tmp_path, clock, url) as bank:
        person = new_person()
        customer_id = await register_remote(bank, person)
        clock.advance(24 * 3600 - 1)
        assert bank.verification.read(APP, customer_id).status == "pending"
        clock.advance(1)
        read = bank.verification.read(APP, customer_id)
        assert read.status == "rejected"
        assert step(read, "liveness")["state"] == "expired"
        token = population.liveness_token(population.face_of(person[1]))
        expired = await refusal(
            bank.verification.submit_liveness(SubmitLiveness(APP, customer_id, token))
        )
        assert expired.refusal.code == Code.VERIFICATION_EXPIRED
        assert bank.core.customer_state().customers[customer_id].kyc["status"] == "rejected"


@scenario
async def test_who_may_act_for_a_customer(tmp_path: Path, url: str) -> None:
    """The registering channel, any counter and the internal channel act for a new
    customer; another app learns nothing (READ_NOT_IN_SCOPE, existing or not); an ATM is
    not a serving channel."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        customer_id = await register_remote(bank, new_person())
        assert bank.verification.read(APP, customer_id).status == "pending"
        assert bank.verification.read(TELLER, customer_id).status == "pending"
        assert bank.verification.read(Caller("bank", "internal", 6), customer_id)
        for missing in (customer_id, "c0000000000000000000"):
            with pytest.raises(Refused) as caught:
                bank.verification.read(OTHER_APP, missing)
            assert caught.value.refusal.code == Code.READ_NOT_IN_SCOPE
        with pytest.raises(Refused) as caught:
            bank.verification.read(TELLER, "c0000000000000000000")
        assert caught.value.refusal.code == Code.CUSTOMER_NOT_FOUND
        with pytest.raises(Refused) as caught:
            bank.verification.read(ATM, customer_id)
        assert caught.value.refusal.code == Code.CHANNEL_KIND_NOT_ALLOWED
        other = await refusal(
            bank.verification.submit_liveness(SubmitLiveness(OTHER_APP, customer_id, "x"))
        )
        assert other.refusal.code == Code.READ_NOT_IN_SCOPE


# --- card bindings and SMS codes --------------------------------------------------------


@scenario
async def test_binding_sms_code_and_opening(tmp_path: Path, url: str) -> None:
    """Without a verified binding a Class II opening is refused; the binding passes the
    issuer and sends a code to the registered mobile; a wrong code costs an attempt, a
    code for another operation costs none, the right one verifies the binding, the
    same code again is a replay. The opening takes the binding (used), a second opening
    with that card is refused, the opening's retry answers the first account."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        person = new_person()
        customer_id = await register_remote(bank, person)
        await verify_remote(bank, customer_id, person)
        card = card_of(person)
        opening = OpenAccount(APP, customer_id, 2, card, PASSWORD, key="open-1")
        unbound = await refusal(bank.accounts.open(opening))
        assert unbound.refusal.code == Code.BINDING_NOT_VERIFIED
        assert "binding_id" not in unbound.refusal.extras

        binding = await bank.verification.start_binding(StartCardBinding(APP, customer_id, card))
        assert binding.status == "pending" and binding.required == ["issuer_card", "sms_code"]
        assert step(binding, "issuer_card")["state"] == "passed"
        assert binding.card_masked == identity.mask_card(card["card_number"])
        assert binding.sms_challenge is not None
        challenge_id = binding.sms_challenge["challenge_id"]
        pending = await refusal(bank.accounts.open(opening))
        assert pending.refusal.code == Code.BINDING_NOT_VERIFIED
        assert pending.refusal.extras["binding_id"] == binding.binding_id

        code = last_code(url, person[2])
        confirm = ConfirmSmsCode(APP, customer_id, challenge_id, BIND, binding.binding_id, code)
        bad = await refusal(
            bank.verification.confirm_sms_code(
                ConfirmSmsCode(
                    APP, customer_id, challenge_id, BIND, binding.binding_id, wrong(code)
                )
            )
        )
        assert bad.refusal.code == Code.SMS_CODE_WRONG
        assert bad.refusal.extras["attempts_remaining"] == 4
        for operation, subject in (("transfer", binding.binding_id), (BIND, "b-another")):
            other = await refusal(
                bank.verification.confirm_sms_code(
                    ConfirmSmsCode(APP, customer_id, challenge_id, operation, subject, code)
                )
            )
            assert other.refusal.code == Code.SMS_CODE_OTHER_OPERATION
        confirmed = await bank.verification.confirm_sms_code(confirm)
        assert confirmed.status == "confirmed"
        replayed = await refusal(bank.verification.confirm_sms_code(confirm))
        assert replayed.refusal.code == Code.SMS_CODE_USED
        read = bank.verification.read_binding(APP, customer_id, binding.binding_id)
        assert read.status == "verified" and read.sms_challenge is None
        assert step(read, "sms_code")["state"] == "passed"

        opened = await bank.accounts.open(opening)
        assert not opened.replayed
        meta = bank.core.customer_state().accounts[opened.account_id]
        assert meta.bound is not None and meta.bound["binding_id"] == binding.binding_id
        assert meta.bound["checks"] == ["issuer_card", "sms_code"]
        assert bank.verification.read_binding(APP, customer_id, binding.binding_id).status == "used"
        again = await bank.accounts.open(opening)
        assert again.replayed and again.account_id == opened.account_id
        second = await refusal(
            bank.accounts.open(OpenAccount(APP, customer_id, 2, card, PASSWORD, key="open-2"))
        )
        assert second.refusal.code == Code.BINDING_NOT_VERIFIED
        with pytest.raises(Refused) as caught:
            bank.verification.read_binding(OTHER_APP, customer_id, binding.binding_id)
        assert caught.value.refusal.code == Code.READ_NOT_IN_SCOPE
        with pytest.raises(Refused) as caught:
            bank.verification.read_binding(APP, customer_id, "b-nothing")
        assert caught.value.refusal.code == Code.BINDING_NOT_FOUND


@scenario
async def test_binding_needs_a_verified_customer_and_the_same_name(
    tmp_path: Path, url: str
) -> None:
    """A pending customer binds nothing; a card in another name is refused generically
    before any provider is asked."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        person = new_person()
        customer_id = await register_remote(bank, person)
        pending = await refusal(
            bank.verification.start_binding(StartCardBinding(APP, customer_id, card_of(person)))
        )
        assert pending.refusal.code == Code.KYC_NOT_VERIFIED
        await verify_remote(bank, customer_id, person)
        other_name = {**card_of(person), "holder_name": "李四"}
        refused = await refusal(
            bank.verification.start_binding(StartCardBinding(APP, customer_id, other_name))
        )
        assert refused.refusal.code == Code.BOUND_CARD_NOT_SAME_NAME
        bad_type = await refusal(
            bank.verification.start_binding(
                StartCardBinding(APP, customer_id, {**card_of(person), "card_type": "gold"})
            )
        )
        assert bad_type.refusal.code == Code.INVALID_FIELD


@scenario
async def test_issuer_mismatch_and_resumed_binding(tmp_path: Path, url: str) -> None:
    """A card the issuer says is somebody else's: an attempt each time the binding is
    posted again (no second binding), rejected at the third; the reason does not say
    which element differed. An issuer timeout refuses with the binding's id and costs
    no attempt."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        person = new_person()
        customer_id = await register_remote(bank, person)
        await verify_remote(bank, customer_id, person)
        stolen = card_of(person, population.card_for(new_person()[1]))
        first = await bank.verification.start_binding(StartCardBinding(APP, customer_id, stolen))
        issuer = step(first, "issuer_card")
        assert issuer["state"] == "pending" and issuer["reasons"] == ["issuer_mismatch"]
        assert first.sms_challenge is None
        fault(url, "issuer", stolen["card_number"], "timeout")
        timeout = await refusal(
            bank.verification.start_binding(StartCardBinding(APP, customer_id, stolen))
        )
        assert timeout.refusal.code == Code.PROVIDER_UNAVAILABLE
        assert timeout.refusal.extras["binding_id"] == first.binding_id
        for attempts in (2, 3):
            again = await bank.verification.start_binding(
                StartCardBinding(APP, customer_id, stolen)
            )
            assert again.binding_id == first.binding_id
            assert step(again, "issuer_card")["attempts"] == attempts
        assert again.status == "rejected"
        answered = await bank.verification.start_binding(StartCardBinding(APP, customer_id, stolen))
        assert answered.binding_id == first.binding_id and answered.status == "rejected"


@scenario
async def test_counter_binding_and_own_class_i_card(tmp_path: Path, url: str) -> None:
    """At a counter a binding needs the issuer only (the teller sees the customer); an
    own-bank Class I card passes issuer_card on the bank's records, no provider asked."""
    async with running_bank(tmp_path, Clock(), url) as bank:
        name, id_number, mobile = new_person()
        customer = await bank.customers.register(RegisterCustomer(TELLER, name, id_number, mobile))
        customer_id = customer.customer_id
        class_i = await bank.accounts.open(OpenAccount(TELLER, customer_id, 1, None, PASSWORD))
        person = (name, id_number, mobile)
        own = {**card_of(person, str(class_i.account_id)), "card_type": "class_i_debit"}
        binding = await bank.verification.start_binding(StartCardBinding(TELLER, customer_id, own))
        assert binding.required == ["issuer_card"] and binding.status == "verified"
        assert step(binding, "issuer_card")["by"] == "bank_records"
        assert [h["provider"] for h in bank.verification.read(TELLER, customer_id).history] == [
            "identity"
        ]
        opened = await bank.accounts.open(OpenAccount(TELLER, customer_id, 2, own, PASSWORD))
        meta = bank.core.customer_state().accounts[opened.account_id]
        assert meta.bound is not None and meta.bound["kind"] == "internal"


@scenario
async def test_sms_code_expiry_resend_and_limits(tmp_path: Path, url: str) -> None:
    """A code lives 5 minutes; a new one waits a minute and voids the previous; five
    wrong codes exhaust a challenge; a binding takes five challenges, the sms_code step
    fails when the fifth is exhausted."""
    clock = Clock()
    async with running_bank(tmp_path, clock, url) as bank:
        person = new_person()
        customer_id = await register_remote(bank, person)
        await verify_remote(bank, customer_id, person)
        binding = await bank.verification.start_binding(
            StartCardBinding(APP, customer_id, card_of(person))
        )
        assert binding.sms_challenge is not None
        first_id = binding.sms_challenge["challenge_id"]
        subject = binding.binding_id
        request = RequestSmsCode(APP, customer_id, BIND, subject)
        too_soon = await refusal(bank.verification.request_sms_code(request))
        assert too_soon.refusal.code == Code.SMS_CODE_TOO_FREQUENT
        assert too_soon.refusal.extras["retry_after_s"] == 60
        clock.advance(5 * 60)
        code = last_code(url, person[2])
        expired = await refusal(
            bank.verification.confirm_sms_code(
                ConfirmSmsCode(APP, customer_id, first_id, BIND, subject, code)
            )
        )
        assert expired.refusal.code == Code.SMS_CODE_EXPIRED
        second = await bank.verification.request_sms_code(request)
        assert second.status == "sent" and second.attempts_remaining == 5
        clock.advance(61)
        third = await bank.verification.request_sms_code(request)
        voided = await refusal(
            bank.verification.confirm_sms_code(
                ConfirmSmsCode(APP, customer_id, second.challenge_id, BIND, subject, code)
            )
        )
        assert voided.refusal.code == Code.SMS_CODE_EXPIRED
        code = last_code(url, person[2])
        for remaining in (4, 3, 2, 1):
            bad = await refusal(
                bank.verification.confirm_sms_code(
                    ConfirmSmsCode(APP, customer_id, third.challenge_id, BIND, subject, wrong(code))
                )
            )
            assert bad.refusal.extras["attempts_remaining"] == remaining
        exhausted = await refusal(
            bank.verification.confirm_sms_code(
                ConfirmSmsCode(APP, customer_id, third.challenge_id, BIND, subject, wrong(code))
            )
        )
        assert exhausted.refusal.code == Code.SMS_CODE_ATTEMPTS_EXCEEDED
        right_too_late = await refusal(
            bank.verification.confirm_sms_code(
                ConfirmSmsCode(APP, customer_id, third.challenge_id, BIND, subject, code)
            )
        )
        assert right_too_late.refusal.code == Code.SMS_CODE_ATTEMPTS_EXCEEDED
        challenge: SmsChallengeRead | None = None
        for _ in (4, 5):
            clock.advance(61)
            challenge = await bank.verification.request_sms_code(request)
        assert challenge is not None
        clock.advance(61)
        sixth = await refusal(bank.verification.request_sms_code(request))
        assert sixth.refusal.code == Code.SMS_CODE_ATTEMPTS_EXCEEDED
        for _ in range(5):
            with pytest.raises(Refused):
                await bank.verification.confirm_sms_code(
                    ConfirmSmsCode(APP, customer_id, challenge.challenge_id, BIND, subject, wrong(
                        last_code(url, person[2])
                    ))
                )  # fmt: skip
        read = bank.verification.read_binding(APP, customer_id, subject)
        assert step(read, "sms_code")["state"] == "failed" and read.status == "rejected"
        missing = await refusal(
            bank.verification.confirm_sms_code(
                ConfirmSmsCode(APP, customer_id, "s-nothing", BIND, subject, code)
            )
        )
        assert missing.refusal.code == Code.SMS_CHALLENGE_NOT_FOUND
        unknown = await refusal(
            bank.verification.request_sms_code(
                RequestSmsCode(APP, customer_id, "transfer", subject)
            )
        )
        assert unknown.refusal.code == Code.INVALID_FIELD


# --- durability, debits, secrecy --------------------------------------------------------


@scenario
async def test_verification_survives_a_restart(tmp_path: Path, url: str) -> None:
    """Close the bank and open it again on the same data: the workflow, its history, the
    binding and its live SMS challenge are all back; the code sent before the restart
    confirms after it, and the account opens."""
    person = new_person()
    async with running_bank(tmp_path, Clock(), url) as bank:
        customer_id = await register_remote(bank, person)
        await verify_remote(bank, customer_id, person)
        before = bank.verification.read(APP, customer_id)
        binding = await bank.verification.start_binding(
            StartCardBinding(APP, customer_id, card_of(person))
        )
        assert binding.sms_challenge is not None
    async with running_bank(tmp_path, Clock(), url) as bank:
        after = bank.verification.read(APP, customer_id)
        assert after == before
        read = bank.verification.read_binding(APP, customer_id, binding.binding_id)
        assert read == binding
        code = last_code(url, person[2])
        await bank.verification.confirm_sms_code(
            ConfirmSmsCode(
                APP,
                customer_id,
                binding.sms_challenge["challenge_id"],
                BIND,
                binding.binding_id,
                code,
            )
        )
        opened = await bank.accounts.open(
            OpenAccount(APP, customer_id, 2, card_of(person), PASSWORD)
        )
        assert opened.account_id


@scenario
async def test_no_debit_from_an_unverified_holder(tmp_path: Path, url: str) -> None:
    """A customer recorded without the workflow (an earlier version's built-in verdict)
    is pending: debits from their account are refused KYC_NOT_VERIFIED (single and
    batch), credits still land; after a restart too; a teller's confirmation verifies
    them and the debit goes through."""
    clock = Clock()
    async with running_bank(tmp_path, clock, url) as bank:
        name, id_number, mobile = new_person()
        customer = await bank.customers.register(RegisterCustomer(TELLER, name, id_number, mobile))
        customer_id = customer.customer_id
        account_id = (
            await bank.accounts.open(OpenAccount(TELLER, customer_id, 1, None, PASSWORD))
        ).account_id
        state = bank.core.customer_state()
        assert not state.unverified_accounts
        old = state.customers[customer_id]
        old.kyc = {"status": "verified", "checks": [], "reasons": [], "not_checked": []}
        await state.commit([customer_record(old)])
        assert state.unverified_accounts == {account_id}
        assert bank.customers.read(TELLER, customer_id).kyc["status"] == "pending"
        await bank.payments.cash_deposit(Movement(TELLER, "in-1", account_id, 10_000))
        withdrawal = Movement(TELLER, "out-1", account_id, 1_000, Consent(password=PASSWORD))
        refused = await refusal(bank.payments.cash_withdrawal(withdrawal))
        assert refused.refusal.code == Code.KYC_NOT_VERIFIED
    async with running_bank(tmp_path, clock, url) as bank:
        assert bank.core.customer_state().unverified_accounts == {account_id}
        records = pack_transfer(
            id=1, debit_account_id=account_id, credit_account_id=CASH_VAULT_ID,
            amount=100, code=int(TransferCode.CASH_WITHDRAWAL), channel=6,
        ) + pack_transfer(
            id=2, debit_account_id=CASH_VAULT_ID, credit_account_id=account_id,
            amount=100, code=int(TransferCode.CASH_DEPOSIT), channel=6,
        )  # fmt: skip
        batch = await refusal(
            bank.payments.post_batch(
                PostingBatch(Caller("bank", "internal", 6), "batch-1", records, 2)
            )
        )
        assert batch.refusal.code == Code.KYC_NOT_VERIFIED
        assert batch.refusal.extras["pointer"] == "/transfers/0"
        read = await bank.verification.confirm_in_person(ConfirmInPerson(TELLER, customer_id))
        assert read.status == "verified"
        assert not bank.core.customer_state().unverified_accounts
        posted = await bank.payments.cash_withdrawal(
            Movement(TELLER, "out-2", account_id, 1_000, Consent(password=PASSWORD))
        )
        assert posted.amount_minor == 1_000


def test_sms_codes_are_never_logged_or_recorded(
    tmp_path: Path, sim_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The code and the text that carried it appear in no log record (every logger, every
    level), in no state record the store recovers, and in no file of the data directory."""
    caplog.set_level(logging.DEBUG)
    url = sim_url
    person = new_person()
    recovered: dict[bytes, bytes] = {}

    async def test() -> None:
        async with running_bank(tmp_path, Clock(), url) as bank:
            customer_id = await register_remote(bank, person)
            await verify_remote(bank, customer_id, person)
            binding_id, _ = await verified_binding(bank, url, customer_id, person)
            read = bank.verification.read_binding(APP, customer_id, binding_id)
            assert read.status == "verified"
        async with running_bank(tmp_path, Clock(), url, recovered):
            pass

    anyio.run(test)
    text = sim(url, "GET", f"/sim/sms/{person[2]}")["messages"][-1]["text"]
    code = population.sms_code_in(text)
    assert code is not None
    assert any("sms_code_sent" in record.getMessage() for record in caplog.records)
    assert any("sms_code_confirmed" in record.getMessage() for record in caplog.records)
    standalone = re.compile(r"(?<![0-9])" + code + r"(?![0-9])")
    for record in caplog.records:
        message = record.getMessage()
        assert not standalone.search(message) and "your code" not in message, message
    assert any(key.startswith(b"smscode/") for key in recovered)
    data_standalone = re.compile(rb"(?<![0-9])" + code.encode() + rb"(?![0-9])")
    for key, value in recovered.items():
        assert not data_standalone.search(value), key
        assert b"your code" not in value
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not data_standalone.search(data), path
            assert b"your code" not in data, path
