"""Real-name verification over HTTP: a real `tally serve` against the provider simulator.

The server calls the simulator (`tally providers serve`, core/providers/sim.py) over HTTP
as it would real providers, through `--providers-config` (short timeouts, two attempts,
so a provider timeout takes seconds, not a minute). The tests act as the customer's app:
they photograph the ID card (`population.id_card_image`), pass the liveness SDK
(`population.liveness_token`), present cards the simulated issuer knows
(`population.card_for`) and read the SMS codes on the customer's phone (`/sim/sms/`);
they make the providers fail on purpose with the simulator's `/sim/faults`, and move
the server's clock (`tests/clock_serve.py`) to let a code expire.

Every refusal is a problem+json with its stable type, and after each one the test reads
the verification (or the binding) back: nothing is half-verified, no attempt is spent
by a request the bank refused or a provider that did not answer.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.client import TallyClient
from core.providers import population
from core.providers.population import SIM_TOKEN
from core.providers.types import PROVIDERS
from core.services.verification import IMAGE_BYTES_MAX, SMS_WRONG_CODES_MAX
from tests.http_helpers import (
    TallyServer,
    bound_card_of,
    cash_deposit,
    key,
    open_class_i,
    problem_type,
    register,
    register_pending,
    resident_id,
    start_binding,
)
from tests.provider_helpers import provider_url, sms_messages

ATTEMPTS_MAX = 2  # per provider call (the client's retries): a timeout costs 2 x TIMEOUT_S
TIMEOUT_S = 2.0
REMOTE_STEPS = ["id_structure", "identity_database", "id_ocr", "liveness"]
COUNTER_STEPS = ["id_structure", "identity_database", "teller_confirmation"]


def providers_file(path: Path, base_url: str) -> Path:
    lines = [
        "[defaults]",
        f"timeout_s = {TIMEOUT_S}",
        f"attempts_max = {ATTEMPTS_MAX}",
        "backoff_s = 0.05",
        "backoff_max_s = 0.1",
    ]
    for name in PROVIDERS:
        lines += [f"[{name}]", f'url = "{base_url}/{name}"', f'token = "{SIM_TOKEN}"']
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    base = tmp_path_factory.mktemp("verification")
    config = providers_file(base / "providers.toml", provider_url())
    running = TallyServer(
        base / "data",
        clock_file=base / "clock",
        extra=["--providers-config", str(config)],
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def app(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("app") as client:
        yield client


@pytest.fixture(scope="module")
def wechat(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("wechat") as client:
        yield client


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter") as client:
        yield client


@pytest.fixture(scope="module")
def bank(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("bank") as client:
        yield client


# --- what the customer's app does ------------------------------------------------------


def path_of(customer: dict[str, Any], tail: str = "") -> str:
    return f"/v1/customers/{customer['customer_id']}{tail}"


def image_body(image: bytes, media_type: str = "image/png") -> dict[str, str]:
    return {"image_base64": base64.b64encode(image).decode(), "media_type": media_type}


def id_card(customer: dict[str, Any], media_type: str = "image/png") -> dict[str, str]:
    image = population.id_card_image(customer["name"], customer["_id_number"], media_type)
    return image_body(image, media_type)


def live_token(customer: dict[str, Any], *, live: bool = True, face_of: str = "") -> str:
    face = population.face_of(face_of or customer["_id_number"])
    return population.liveness_token(face, live)


def submit_document(client: TallyClient, customer: dict[str, Any], body: Any) -> Any:
    return client.post(path_of(customer, "/verification/id-document"), body)


def submit_liveness(client: TallyClient, customer: dict[str, Any], token: str) -> Any:
    return client.post(path_of(customer, "/verification/liveness"), {"token": token})


def verification(client: TallyClient, customer: dict[str, Any]) -> dict[str, Any]:
    response = client.get(path_of(customer, "/verification"))
    assert response.status_code == 200, response.text
    read: dict[str, Any] = response.json()
    return read


def steps_of(read: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step"]: step for step in read["steps"]}


def refused(response: Any, status: int, slug: str) -> dict[str, Any]:
    """The response is the problem+json `slug` with `status`; its body."""
    assert response.status_code == status, response.text
    assert problem_type(response) == slug, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def binding_of(client: TallyClient, customer: dict[str, Any], binding_id: str) -> dict[str, Any]:
    response = client.get(path_of(customer, f"/card-bindings/{binding_id}"))
    assert response.status_code == 200, response.text
    read: dict[str, Any] = response.json()
    return read


def newest_code(customer: dict[str, Any]) -> str:
    messages = sms_messages(customer["_mobile"])
    assert messages, "no SMS reached the customer"
    code = population.sms_code_in(messages[-1]["text"])
    assert code is not None
    return code


def confirm(
    client: TallyClient,
    customer: dict[str, Any],
    challenge_id: str,
    subject: str,
    code: str,
    operation: str = "bind_card",
) -> Any:
    return client.post(
        path_of(customer, f"/sms-codes/{challenge_id}/confirmation"),
        {"operation": operation, "subject": subject, "code": code},
    )


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def arm_fault(provider: str, match: str, mode: str, count: int = ATTEMPTS_MAX) -> None:
    """The simulator fails the next `count` calls of `provider` whose request holds
    `match` (a timeout: no answer within the client's timeout)."""
    armed = httpx.post(
        provider_url() + "/sim/faults",
        json={"provider": provider, "match": match, "mode": mode, "count": count},
        timeout=10,
    )
    assert armed.status_code == 200, armed.text


def started_binding(
    client: TallyClient, customer: dict[str, Any], card: str | None = None
) -> dict[str, Any]:
    """A binding whose issuer check passed and whose first SMS code was sent."""
    response = start_binding(client, customer, bound_card_of(customer, card))
    assert response.status_code == 201, response.text
    binding: dict[str, Any] = response.json()
    assert binding["status"] == "pending" and binding["required"] == ["issuer_card", "sms_code"]
    assert steps_of(binding)["issuer_card"]["state"] == "passed", binding
    assert binding["sms_challenge"] is not None, binding
    return binding


# --- the workflow ----------------------------------------------------------------------


def test_remote_registration_is_pending_until_document_and_liveness_pass(
    app: TallyClient, counter: TallyClient
) -> None:
    """At the app a new customer is pending with the remote steps required and only the
    ID's structure passed; the ID card photo passes the OCR, the live face passes the
    liveness check and the identity database (with that face): verified. The provider
    calls are in the verification's history, with no image, token or code in it."""
    customer = register_pending(app, "王小明")
    kyc = customer["kyc"]
    assert kyc["status"] == "pending" and kyc["required"] == REMOTE_STEPS
    assert {s["step"]: s["state"] for s in kyc["steps"]} == {
        "id_structure": "passed",
        "identity_database": "pending",
        "id_ocr": "pending",
        "liveness": "pending",
    }
    read = submit_document(app, customer, id_card(customer, "image/jpeg"))
    assert read.status_code == 200, read.text
    after_document = read.json()
    assert after_document["status"] == "pending"
    assert steps_of(after_document)["id_ocr"]["state"] == "passed"
    token = live_token(customer)
    live = submit_liveness(app, customer, token)
    assert live.status_code == 200, live.text
    verified = live.json()
    assert verified["status"] == "verified" and verified["reasons"] == []
    assert all(step["state"] == "passed" for step in verified["steps"])
    assert verification(app, customer) == verified
    assert [(call["step"], call["outcome"]) for call in verified["history"]] == [
        ("id_ocr", "passed"),
        ("liveness", "passed"),
        ("identity_database", "passed"),
    ]
    history = str(verified["history"])
    assert token not in history and "image" not in history
    shown = counter.get(path_of(customer))  # the app reads the customer with a session
    assert shown.status_code == 200, shown.text
    assert shown.json()["kyc"]["status"] == "verified"
    # A step that passed is not taken again.
    again = submit_document(app, customer, id_card(customer))
    refused(again, 409, "verification-closed")


def test_counter_registration_is_verified_in_one_call(counter: TallyClient) -> None:
    """At the counter (a teller named) the registration runs the ID's structure, the
    identity database (name and ID number) and the teller's confirmation: verified."""
    customer = register(counter, "赵六")
    kyc = customer["kyc"]
    assert kyc["status"] == "verified" and kyc["required"] == COUNTER_STEPS
    steps = {step["step"]: step for step in kyc["steps"]}
    assert steps["teller_confirmation"]["by"] == "counter/S0001"
    read = verification(counter, customer)
    assert read["status"] == "verified"
    assert [call["provider"] for call in read["history"]] == ["identity"]
    refused(counter.post(path_of(customer, "/verification/in-person")), 409, "verification-closed")


def test_counter_registration_waits_out_a_provider_and_the_teller_finishes_it(
    counter: TallyClient,
) -> None:
    """The identity database times out at a counter registration: the customer is
    registered pending (the step recorded, no attempt spent); the teller's confirmation
    runs it again and the customer is verified."""
    id_number = resident_id("19850412")
    arm_fault("identity", id_number, "timeout")
    customer = register_pending(counter, "钱七", id_number=id_number)
    assert customer["kyc"]["status"] == "pending"
    read = verification(counter, customer)
    identity = steps_of(read)["identity_database"]
    assert identity["state"] == "pending" and identity["attempts"] == 0
    assert [(call["provider"], call["outcome"]) for call in read["history"]] == [
        ("identity", "timeout")
    ]
    assert read["history"][0]["attempts"] == ATTEMPTS_MAX
    confirmed = counter.post(path_of(customer, "/verification/in-person"))
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "verified"


# --- failed attempts: 200 with the step's state ------------------------------------------


def test_spoofed_liveness_and_a_strangers_face_are_failed_attempts(app: TallyClient) -> None:
    """A photo held up to the camera fails a liveness attempt; a live face that is not
    the ID's photo in the identity database sends the customer back to liveness. Each is
    a 200 with the attempt counted; the customer stays pending, then passes."""
    customer = register_pending(app, "孙八")
    assert submit_document(app, customer, id_card(customer)).status_code == 200
    spoof = submit_liveness(app, customer, live_token(customer, live=False))
    assert spoof.status_code == 200, spoof.text
    liveness = steps_of(spoof.json())["liveness"]
    assert liveness["state"] == "pending" and liveness["attempts"] == 1
    assert liveness["reasons"] == ["spoof"] and spoof.json()["status"] == "pending"

    stranger = submit_liveness(app, customer, live_token(customer, face_of=resident_id()))
    assert stranger.status_code == 200, stranger.text
    read = stranger.json()
    steps = steps_of(read)
    assert read["status"] == "pending"
    assert steps["identity_database"]["reasons"] == ["photo_mismatch"]
    assert steps["identity_database"]["attempts"] == 1
    assert steps["liveness"]["state"] == "pending", "back to the liveness check"
    assert verification(app, customer)["status"] == "pending"

    own = submit_liveness(app, customer, live_token(customer))
    assert own.status_code == 200, own.text
    assert own.json()["status"] == "verified"


def test_unreadable_and_mismatched_documents_are_failed_attempts(app: TallyClient) -> None:
    """A PNG without the card's text cannot be read, a card printed with another name
    does not match: failed attempts (200), and the third failure rejects the customer
    with the reasons; a rejected verification takes no more steps."""
    customer = register_pending(app, "周九")
    blank = _png_without_text()
    unreadable = submit_document(app, customer, image_body(blank))
    assert unreadable.status_code == 200, unreadable.text
    ocr = steps_of(unreadable.json())["id_ocr"]
    assert ocr["state"] == "pending" and ocr["reasons"] == ["unreadable"]
    assert ocr["attempts_remaining"] == ocr["attempts_max"] - 1

    other_name = population.id_card_image("吴十", customer["_id_number"])
    mismatch = submit_document(app, customer, image_body(other_name))
    assert mismatch.status_code == 200, mismatch.text
    assert steps_of(mismatch.json())["id_ocr"]["reasons"][-1] == "document_mismatch"
    assert mismatch.json()["status"] == "pending"

    last = submit_document(app, customer, image_body(other_name))
    assert last.status_code == 200, last.text
    rejected = last.json()
    assert rejected["status"] == "rejected"
    assert steps_of(rejected)["id_ocr"]["state"] == "failed"
    assert rejected["reasons"] == ["id_ocr: document_mismatch"]
    closed = refused(
        submit_liveness(app, customer, live_token(customer)), 409, "verification-closed"
    )
    assert closed["verification_status"] == "rejected"
    assert verification(app, customer)["status"] == "rejected"


def test_the_identity_database_refuses_another_name(app: TallyClient) -> None:
    """The citizen database holds this ID under another name: identity_database fails
    at once (no retry helps) and the customer is rejected, whatever the liveness said."""
    customer = register_pending(app, "郑十一")
    pinned = httpx.post(
        provider_url() + "/sim/citizens",
        json={"id_number": customer["_id_number"], "name": "郑十二"},
        timeout=10,
    )
    assert pinned.status_code == 200, pinned.text
    assert submit_document(app, customer, id_card(customer)).status_code == 200
    answer = submit_liveness(app, customer, live_token(customer))
    assert answer.status_code == 200, answer.text
    read = answer.json()
    assert read["status"] == "rejected"
    identity = steps_of(read)["identity_database"]
    assert identity["state"] == "failed" and identity["reasons"] == ["identity_mismatch:name"]


# --- the providers fail: 503, the step still pending ------------------------------------


def test_a_provider_timeout_is_503_and_the_step_stays_pending(app: TallyClient) -> None:
    """The liveness provider does not answer within the timeout, twice (every attempt of
    the client): 503 provider-unavailable with Retry-After; liveness is still pending
    with no attempt spent, the call is in the history; the next try passes."""
    customer = register_pending(app, "冯十三")
    assert submit_document(app, customer, id_card(customer)).status_code == 200
    token = live_token(customer)
    arm_fault("liveness", token, "timeout")
    response = submit_liveness(app, customer, token)
    body = refused(response, 503, "provider-unavailable")
    assert body["provider"] == "liveness"
    assert int(response.headers["retry-after"]) >= 1
    read = verification(app, customer)
    liveness = steps_of(read)["liveness"]
    assert read["status"] == "pending"
    assert liveness["state"] == "pending" and liveness["attempts"] == 0
    assert read["history"][-1]["outcome"] == "timeout"
    answer = submit_liveness(app, customer, token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "verified"


def test_a_malformed_provider_answer_is_503_and_nothing_is_half_verified(
    app: TallyClient,
) -> None:
    """The identity database answers what does not parse (after liveness passed): 503
    provider-answer-invalid; liveness passed, identity_database pending with no attempt
    spent, the customer pending, not verified; sending liveness again runs the
    identity database again and verifies."""
    customer = register_pending(app, "陈十四")
    assert submit_document(app, customer, id_card(customer)).status_code == 200
    arm_fault("identity", customer["_id_number"], "malformed", count=1)
    response = submit_liveness(app, customer, live_token(customer))
    body = refused(response, 503, "provider-answer-invalid")
    assert body["provider"] == "identity" and "retry-after" in response.headers
    read = verification(app, customer)
    steps = steps_of(read)
    assert read["status"] == "pending"
    assert steps["liveness"]["state"] == "passed"
    assert steps["identity_database"]["state"] == "pending"
    assert steps["identity_database"]["attempts"] == 0
    assert read["history"][-1]["outcome"] == "malformed"
    again = submit_liveness(app, customer, live_token(customer))
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "verified"


# --- bad input ---------------------------------------------------------------------


def test_bad_images_are_refused_before_any_provider(app: TallyClient) -> None:
    """An image over the limit is 413 image-too-large, bytes that are no JPEG or PNG
    (or not the declared one) and a type not allowed 415 image-type-not-allowed,
    base64 that is not 422 naming the field, both alternatives at once 422: no OCR
    call is made and no attempt spent."""
    customer = register_pending(app, "褚十五")
    png = population.id_card_image(customer["name"], customer["_id_number"])
    too_large = png + bytes(IMAGE_BYTES_MAX + 1 - len(png))
    body = refused(submit_document(app, customer, image_body(too_large)), 413, "image-too-large")
    assert body["limit_bytes"] == IMAGE_BYTES_MAX
    gif = b"GIF89a" + bytes(64)
    body = refused(submit_document(app, customer, image_body(gif)), 415, "image-type-not-allowed")
    assert body["allowed"] == ["image/jpeg", "image/png"]
    refused(
        submit_document(app, customer, image_body(png, "image/jpeg")),
        415,
        "image-type-not-allowed",
    )
    refused(
        submit_document(app, customer, image_body(png, "image/gif")), 415, "image-type-not-allowed"
    )
    for text in ("not base64!", "QUJD=", "QUJD====", "QQ==QQ==", "QUJ\nD"):
        body = refused(
            submit_document(app, customer, {"image_base64": text, "media_type": "image/png"}),
            422,
            "validation-failed",
        )
        assert body["errors"][0]["pointer"] == "/image_base64", text
    both = {**id_card(customer), "ocr_reference": "ocr-0123"}
    refused(submit_document(app, customer, both), 422, "validation-failed")
    refused(submit_document(app, customer, {}), 422, "validation-failed")
    read = verification(app, customer)
    assert steps_of(read)["id_ocr"]["attempts"] == 0 and read["history"] == []


def test_an_ocr_reference_from_the_app_is_read_from_the_provider(app: TallyClient) -> None:
    """The app had the OCR provider read the card itself and sends its reference: the
    bank fetches that result and the step passes; an unknown reference is a failed
    attempt (the provider does not know it), not a 5xx."""
    customer = register_pending(app, "卫十六")
    unknown = submit_document(app, customer, {"ocr_reference": "ocr-000000000000000000000000"})
    assert unknown.status_code == 200, unknown.text
    assert steps_of(unknown.json())["id_ocr"]["attempts"] == 1
    image = population.id_card_image(customer["name"], customer["_id_number"])
    read_by_app = httpx.post(
        provider_url() + "/ocr/v1/id-card",
        json={"image_base64": base64.b64encode(image).decode(), "media_type": "image/png"},
        headers={"Authorization": f"Bearer {SIM_TOKEN}", "Idempotency-Key": key()},
        timeout=10,
    )
    assert read_by_app.status_code == 200, read_by_app.text
    reference = read_by_app.json()["reference"]
    answer = submit_document(app, customer, {"ocr_reference": reference})
    assert answer.status_code == 200, answer.text
    assert steps_of(answer.json())["id_ocr"]["state"] == "passed"


def test_who_may_act_for_a_customer(
    app: TallyClient, wechat: TallyClient, counter: TallyClient, bank: TallyClient
) -> None:
    """Another remote channel cannot act for the app's customer (403 read-not-in-scope,
    whether the customer exists or not); an unknown customer is 404 at the counter and
    the bank's channel; only a counter confirms in person, and a counter sends no
    liveness token (403: not operations of their kind); the counter's confirmation then
    replaces the remote steps of the pending customer."""
    customer = register_pending(app, "蒋十七")
    refused(submit_document(wechat, customer, id_card(customer)), 403, "read-not-in-scope")
    refused(wechat.get(path_of(customer, "/verification")), 403, "read-not-in-scope")
    ghost = {"customer_id": "c" + "0" * 20}
    refused(submit_liveness(wechat, ghost, "lv1.x"), 403, "read-not-in-scope")
    refused(counter.get(path_of(ghost, "/verification")), 404, "customer-not-found")
    refused(bank.get(path_of(ghost, "/verification")), 404, "customer-not-found")
    refused(app.post(path_of(customer, "/verification/in-person")), 403, "operation-not-allowed")
    refused(counter.post(path_of(customer, "/verification/liveness"), {"token": "x"}), 403,
            "operation-not-allowed")  # fmt: skip
    assert verification(app, customer)["history"] == []
    # The counter's face-to-face check replaces the remote steps of a pending customer.
    confirmed = counter.post(path_of(customer, "/verification/in-person"))
    assert confirmed.status_code == 200, confirmed.text
    read = confirmed.json()
    assert read["status"] == "verified" and read["required"] == COUNTER_STEPS


# --- card bindings and SMS codes ------------------------------------------------------


def test_class_ii_opening_needs_a_verified_binding(app: TallyClient, counter: TallyClient) -> None:
    """A Class II opening with a card that has no binding is refused (409
    binding-not-verified); a card of another holder fails the issuer's check (a failed
    attempt, never verified) and still cannot open; the customer's own card, bound with
    the issuer's check and the SMS code, opens the account and the binding is used."""
    customer = register(app, "沈十八")
    opening = {
        "class": "class_ii",
        "bound_card": bound_card_of(customer),
        "password": "135790",
    }
    accounts = path_of(customer, "/accounts")
    refused(app.post(accounts, opening), 409, "binding-not-verified")

    strangers = population.card_for(resident_id("19770101"))
    other = start_binding(app, customer, bound_card_of(customer, strangers))
    assert other.status_code == 201, other.text
    failed = other.json()
    issuer = steps_of(failed)["issuer_card"]
    assert issuer["state"] == "pending" and issuer["reasons"] == ["issuer_mismatch"]
    assert failed["status"] == "pending" and failed["sms_challenge"] is None
    body = refused(
        app.post(accounts, {**opening, "bound_card": bound_card_of(customer, strangers)}),
        409,
        "binding-not-verified",
    )
    assert body["binding_id"] == failed["binding_id"]

    binding = started_binding(app, customer)
    challenge = binding["sms_challenge"]
    confirmed = confirm(
        app, customer, challenge["challenge_id"], binding["binding_id"], newest_code(customer)
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed"
    assert binding_of(app, customer, binding["binding_id"])["status"] == "verified"
    opened = app.post(accounts, opening)
    assert opened.status_code == 201, opened.text
    assert binding_of(app, customer, binding["binding_id"])["status"] == "used"
    # A used binding opens nothing more.
    refused(app.post(accounts, opening), 409, "binding-not-verified")
    # At the counter the issuer's check alone binds (no SMS code required there).
    own = register(counter, "韩十九")
    at_counter = start_binding(counter, own, bound_card_of(own))
    assert at_counter.status_code == 201, at_counter.text
    assert at_counter.json()["status"] == "verified"
    assert at_counter.json()["required"] == ["issuer_card"]


def test_sms_code_misuse_is_refused_and_spends_nothing_else(app: TallyClient) -> None:
    """A code confirmed for another subject (another binding) is 409
    sms-code-other-operation and spends no attempt; a wrong code is 422 with the
    attempts remaining; the right code confirms; the same code again is 409
    sms-code-used; a new code asked for at once is 429 with Retry-After; an unknown
    challenge 404; a binding that is not the customer's 404."""
    customer = register(app, "杨二十")
    first = started_binding(app, customer)
    second = started_binding(app, customer, population.card_for(customer["_id_number"], 1))
    challenge_id = first["sms_challenge"]["challenge_id"]
    code = newest_code(customer)  # the second binding's code: the newest SMS
    first_code = population.sms_code_in(sms_messages(customer["_mobile"])[-2]["text"])
    assert first_code is not None
    refused(
        confirm(app, customer, challenge_id, second["binding_id"], first_code),
        409,
        "sms-code-other-operation",
    )
    body = refused(
        confirm(app, customer, challenge_id, first["binding_id"], wrong(first_code)),
        422,
        "sms-code-wrong",
    )
    assert body["attempts_remaining"] == SMS_WRONG_CODES_MAX - 1
    assert binding_of(app, customer, first["binding_id"])["status"] == "pending"
    ok = confirm(app, customer, challenge_id, first["binding_id"], first_code)
    assert ok.status_code == 200, ok.text
    refused(
        confirm(app, customer, challenge_id, first["binding_id"], first_code), 409, "sms-code-used"
    )
    assert binding_of(app, customer, first["binding_id"])["status"] == "verified"

    subject = {"operation": "bind_card", "subject": second["binding_id"]}
    again = app.post(path_of(customer, "/sms-codes"), subject)
    refused(again, 429, "sms-code-too-frequent")
    assert int(again.headers["retry-after"]) >= 1
    refused(
        confirm(app, customer, "s" + "0" * 20, second["binding_id"], code),
        404,
        "sms-challenge-not-found",
    )
    other = register(app, "朱二一")
    refused(app.post(path_of(other, "/sms-codes"), subject), 404, "binding-not-found")
    refused(
        app.get(path_of(other, f"/card-bindings/{second['binding_id']}")),
        404,
        "binding-not-found",
    )
    assert binding_of(app, customer, second["binding_id"])["status"] == "pending"


def test_too_many_wrong_codes_and_an_expired_code(server: TallyServer, app: TallyClient) -> None:
    """Five wrong codes exhaust the challenge (the right one is then refused too) and
    the binding stays pending; a minute later (the server's clock moved) a new code is
    sent; five minutes after that it has expired (409 sms-code-expired); a fresh code
    then binds the card."""
    customer = register(app, "秦二二")
    binding = started_binding(app, customer)
    binding_id, challenge_id = binding["binding_id"], binding["sms_challenge"]["challenge_id"]
    code = newest_code(customer)
    for attempt in range(1, SMS_WRONG_CODES_MAX):
        body = refused(
            confirm(app, customer, challenge_id, binding_id, wrong(code)), 422, "sms-code-wrong"
        )
        assert body["attempts_remaining"] == SMS_WRONG_CODES_MAX - attempt
    refused(
        confirm(app, customer, challenge_id, binding_id, wrong(code)),
        409,
        "sms-code-attempts-exceeded",
    )
    refused(
        confirm(app, customer, challenge_id, binding_id, code), 409, "sms-code-attempts-exceeded"
    )
    read = binding_of(app, customer, binding_id)
    assert read["status"] == "pending" and steps_of(read)["sms_code"]["state"] == "pending"

    offset_s = _clock(server) + 61
    server.move_clock(offset_s)
    subject = {"operation": "bind_card", "subject": binding_id}
    sent = app.post(path_of(customer, "/sms-codes"), subject)
    assert sent.status_code == 201, sent.text
    renewed = sent.json()
    assert renewed["status"] == "sent" and renewed["challenge_id"] != challenge_id
    expiring = newest_code(customer)

    server.move_clock(offset_s + 301)
    refused(
        confirm(app, customer, renewed["challenge_id"], binding_id, expiring),
        409,
        "sms-code-expired",
    )
    assert binding_of(app, customer, binding_id)["status"] == "pending"
    fresh = app.post(path_of(customer, "/sms-codes"), subject)
    assert fresh.status_code == 201, fresh.text
    ok = confirm(app, customer, fresh.json()["challenge_id"], binding_id, newest_code(customer))
    assert ok.status_code == 200, ok.text
    assert binding_of(app, customer, binding_id)["status"] == "verified"


def test_a_pending_holder_opens_no_account_and_moves_no_money(
    app: TallyClient, counter: TallyClient
) -> None:
    """A customer still pending cannot bind a card nor open an account (409
    kyc-not-verified), so no account of theirs can be debited; a verified one can."""
    customer = register_pending(app, "尤二三")
    refused(start_binding(app, customer, bound_card_of(customer)), 409, "kyc-not-verified")
    refused(
        counter.post(path_of(customer, "/accounts"), {"class": "class_i", "password": "135790"}),
        409,
        "kyc-not-verified",
    )
    verified = register(counter, "许二四")
    account = open_class_i(counter, verified)
    cash_deposit(counter, account, 10_000)


def test_the_registry_keys_and_openapi_document_the_routes(server: TallyServer) -> None:
    """The served document lists the eight routes with their operations and every
    status they answer, and the problem statuses of the verification refusals."""
    document = httpx.get(server.url + "/openapi.json", timeout=10).json()
    expected = {
        ("post", "/v1/customers/{customer_id}/verification/id-document"): "submit_id_document",
        ("post", "/v1/customers/{customer_id}/verification/liveness"): "submit_liveness",
        ("post", "/v1/customers/{customer_id}/verification/in-person"): "confirm_in_person",
        ("get", "/v1/customers/{customer_id}/verification"): "read_verification",
        ("post", "/v1/customers/{customer_id}/card-bindings"): "bind_card",
        ("get", "/v1/customers/{customer_id}/card-bindings/{binding_id}"): "read_card_binding",
        ("post", "/v1/customers/{customer_id}/sms-codes"): "request_sms_code",
        (
            "post",
            "/v1/customers/{customer_id}/sms-codes/{challenge_id}/confirmation",
        ): "confirm_sms_code",
    }
    for (method, path), operation in expected.items():
        described = document["paths"][path][method]
        assert described["operationId"] == operation
        assert {"404", "409", "503"} <= set(described["responses"])
    id_document = document["paths"]["/v1/customers/{customer_id}/verification/id-document"]["post"]
    assert {"413", "415", "422"} <= set(id_document["responses"])


def _clock(server: TallyServer) -> float:
    assert server.clock_file is not None
    if not server.clock_file.exists():
        return 0.0
    return float(server.clock_file.read_text().strip() or 0)


def _png_without_text() -> bytes:
    """A valid 1 x 1 PNG with nothing printed on it: the OCR cannot read it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
        + chunk(b"IEND", b"")
    )
