"""Every operation of the HTTP API, against a real hypercorn server on asyncio and on trio.

Each test builds its own customers and accounts through the API, so the
tests share one server per backend without depending on each other.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from channels.client import TallyClient
from core.services.records import TransferIds
from core.services.server_secrets import DEVELOPMENT
from ledger.reference import Transfer
from ledger.types import TRANSFER_SIZE, TransferCode
from tests.http_helpers import (
    TallyServer,
    balance,
    bound_card_of,
    card_number,
    cash_deposit,
    key,
    open_class_i,
    open_remote,
    open_session,
    problem_type,
    register,
    register_pending,
    resident_id,
    start_binding,
    topup,
    verify_remotely,
)

BANK_CHANNEL_ID = 6


@pytest.fixture(scope="module", params=["asyncio", "trio", "uvicorn"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TallyServer]:
    """hypercorn on asyncio, hypercorn on trio, and the optional uvicorn (on uvloop)."""
    data = tmp_path_factory.mktemp(f"api-{request.param}") / "data"
    if request.param == "uvicorn":
        running = TallyServer(data, server="uvicorn").start()
    else:
        running = TallyServer(data, backend=request.param).start()
    yield running
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
    assert running.stop() in ((0, -15) if request.param == "uvicorn" else (0,)), running.log()


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter") as client:
        yield client


@pytest.fixture(scope="module")
def app(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("app") as client:
        yield client


@pytest.fixture(scope="module")
def bank(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("bank") as client:
        yield client


def class_i_funded(
    counter: TallyClient, app: TallyClient, amount_minor: int
) -> tuple[dict[str, Any], str]:
    customer = register(app)
    account = open_class_i(counter, customer)
    if amount_minor:
        cash_deposit(counter, account, amount_minor)
    return customer, account


# --- unsigned routes ---------------------------------------------------------------


def test_health_ready_metrics_openapi(server: TallyServer) -> None:
    """The unsigned routes answer: health, readiness with recovery figures, metrics, OpenAPI."""
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    for family in (
        "tally_http_requests_total",
        "tally_engine_queue_depth",
        "tally_journal_fsync_seconds",
        "tally_http_request_duration_seconds_bucket",
    ):
        assert family in metrics.text
    document = httpx.get(server.url + "/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert "/v1/transfers/batch" in document["paths"]


def test_unknown_route_and_method(app: TallyClient) -> None:
    """An unknown path is a 404 problem, a wrong method a 405 with Allow."""
    missing = app.get("/v1/nothing-here")
    assert missing.status_code == 404 and problem_type(missing) == "not-found"
    wrong = app.request("DELETE", "/v1/customers")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


# --- customers and KYC ------------------------------------------------------------------


def test_register_customer_runs_the_verification_steps(
    counter: TallyClient, app: TallyClient
) -> None:
    """A remote registration checks the ID number at once and is `pending`, listing the
    steps still to do (identity database, OCR, liveness); the ID card image and the live
    face complete them and the customer is `verified`, every step passed. A counter
    registration (a teller named) is verified in the one call by its own steps."""
    customer = register_pending(app)
    kyc = customer["kyc"]
    assert kyc["status"] == "pending" and "not_checked" not in kyc
    assert kyc["required"] == ["id_structure", "identity_database", "id_ocr", "liveness"]
    states = {step["step"]: step["state"] for step in kyc["steps"]}
    assert states == {
        "id_structure": "passed",
        "identity_database": "pending",
        "id_ocr": "pending",
        "liveness": "pending",
    }
    assert customer["id_number_masked"].count("*") == 14
    verified = verify_remotely(app, customer)
    assert verified["status"] == "verified" and verified["reasons"] == []
    assert {step["state"] for step in verified["steps"]} == {"passed"}
    read = counter.get(f"/v1/customers/{customer['customer_id']}")
    assert read.status_code == 200 and read.json()["customer_id"] == customer["customer_id"]
    assert read.json()["kyc"]["status"] == "verified"
    at_desk = register_pending(counter)
    assert at_desk["kyc"]["status"] == "verified", at_desk["kyc"]
    assert at_desk["kyc"]["required"] == [
        "id_structure",
        "identity_database",
        "teller_confirmation",
    ]
    again = app.post(
        "/v1/customers",
        {"name": "李四", "id_number": customer["_id_number"], "mobile": "13900000000"},
    )
    assert again.status_code == 409 and problem_type(again) == "customer-exists"
    assert customer["customer_id"] not in again.text  # the existing customer is not named


def test_register_rejects_bad_ids_and_minors(counter: TallyClient, app: TallyClient) -> None:
    """A wrong check digit is a 422; a 10-year-old is registered with KYC rejected (the
    ID structure step failed, with its reason) and can bind no card nor open an account."""
    good = "11010519491231002X"
    bad = good[:17] + ("1" if good[17] != "1" else "2")
    response = app.post(
        "/v1/customers", {"name": "王五", "id_number": bad, "mobile": "13800138000"}
    )
    assert response.status_code == 422 and problem_type(response) == "invalid-resident-id"
    assert response.json()["errors"][0]["pointer"] == "/id_number"
    young = time.gmtime().tm_year - 10
    minor = register_pending(app, "小明", birth=f"{young}0101")
    assert minor["kyc"]["status"] == "rejected"
    assert minor["kyc"]["reasons"] and minor["kyc"]["reasons"][0].startswith("id_structure")
    binding = start_binding(app, minor, bound_card_of(minor))
    assert binding.status_code == 409 and problem_type(binding) == "kyc-not-verified"
    opened = app.post(
        f"/v1/customers/{minor['customer_id']}/accounts",
        {"class": "class_ii", "bound_card": bound_card_of(minor), "password": "135790"},
    )
    assert opened.status_code == 409 and problem_type(opened) == "kyc-not-verified"
    assert counter.get("/v1/customers/c00000000000000000000").status_code == 404


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"name": "A", "id_number": "11010519491231002X"}, "/mobile"),
        ({"name": 5, "id_number": "11010519491231002X", "mobile": "13800138000"}, "/name"),
        ({"name": "A", "id_number": "11010519491231002X", "mobile": "13800138000", "x": 1}, "/x"),
        ({"name": "A", "id_number": "1101051949123100", "mobile": "13800138000"}, "/id_number"),
    ],
)
def test_register_schema_violations(app: TallyClient, body: dict[str, Any], pointer: str) -> None:
    """Missing, mistyped, unknown and malformed fields each get a 422 naming the field."""
    response = app.post("/v1/customers", body)
    assert response.status_code == 422, response.text
    assert problem_type(response) == "validation-failed"
    assert response.json()["errors"][0]["pointer"] == pointer


def test_malformed_json_and_content_type(app: TallyClient) -> None:
    """Invalid JSON is a 400, a non-JSON content type a 415, and neither reaches the bank."""
    broken = app.post("/v1/customers", raw=b'{"name": ')
    assert broken.status_code == 400 and problem_type(broken) == "malformed-json"
    text = app.post("/v1/customers", raw=b"name=x", content_type="text/plain")
    assert text.status_code == 415 and problem_type(text) == "unsupported-media-type"


# --- accounts ---------------------------------------------------------------------------


def test_open_class_i_only_face_to_face(counter: TallyClient, app: TallyClient) -> None:
    """Class I opens at a counter only, once per customer, and gets a Luhn-valid card number."""
    customer = register(app)
    refused = app.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_i", "password": "135790"},
    )
    assert refused.status_code == 403 and problem_type(refused) == "channel-kind-not-allowed"
    account = open_class_i(counter, customer)
    from core.services.identity import luhn_valid

    assert luhn_valid(account) and len(account) == 19
    second = counter.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_i", "password": "135790"},
    )
    assert second.status_code == 409 and problem_type(second) == "account-class-limit"


def test_open_class_ii_binding_rules(counter: TallyClient, app: TallyClient) -> None:
    """Class II/III bind a same-name Luhn-valid card whose binding was verified first (the
    issuer's check and the SMS code), one binding per opening; at most 5 per class per
    customer."""
    customer = register(app)
    card = bound_card_of(customer)
    wrong_name = dict(card, holder_name="别人")
    response = app.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_ii", "bound_card": wrong_name, "password": "135790"},
    )
    assert response.status_code == 422 and problem_type(response) == "bound-card-not-same-name"
    binding = start_binding(app, customer, wrong_name)
    assert binding.status_code == 422 and problem_type(binding) == "bound-card-not-same-name"
    unbound = app.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_ii", "bound_card": card, "password": "135790"},
    )
    assert unbound.status_code == 409 and problem_type(unbound) == "binding-not-verified"
    bad_luhn = dict(
        card, card_number=card["card_number"][:-1] + str((int(card["card_number"][-1]) + 1) % 10)
    )
    response = app.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_ii", "bound_card": bad_luhn, "password": "135790"},
    )
    assert response.status_code == 422 and problem_type(response) == "invalid-card-number"
    no_card = app.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_ii", "password": "135790"},
    )
    assert no_card.status_code == 422
    for _ in range(5):
        open_remote(app, customer, "class_ii")
    sixth = app.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_ii", "bound_card": card, "password": "135790"},
    )
    assert sixth.status_code == 409 and problem_type(sixth) == "account-class-limit"
    class_iii = open_remote(app, customer, "class_iii")
    view = counter.get(f"/v1/accounts/{class_iii}").json()
    assert view["kind"] == "class_iii" and view["quota"]["balance_cap_minor"] == 200_000
    number = card["card_number"]
    masked = number[:6] + "*" * (len(number) - 10) + number[-4:]
    assert view["bound_card"]["card_number_masked"] == masked
    used = app.post(
        f"/v1/customers/{customer['customer_id']}/accounts",
        {"class": "class_iii", "bound_card": card, "password": "135790"},
    )  # the binding went with the Class III: another opening binds again
    assert used.status_code == 409 and problem_type(used) == "binding-not-verified"


def test_bind_own_class_i_card(counter: TallyClient, app: TallyClient) -> None:
    """A Class II bound to the customer's own Class I card tops up from it inside the ledger."""
    customer, class_i = class_i_funded(counter, app, 50_000)
    class_ii = open_remote(app, customer, card=class_i)
    assert counter.get(f"/v1/accounts/{class_ii}").json()["bound_card"]["kind"] == "internal"
    assert topup(app, class_ii, 20_000).status_code == 201
    assert balance(counter, class_i) == 30_000 and balance(counter, class_ii) == 20_000
    other = register(app)
    stolen = app.post(
        f"/v1/customers/{other['customer_id']}/accounts",
        {"class": "class_ii", "bound_card": bound_card_of(other, class_i), "password": "135790"},
    )
    assert stolen.status_code == 422 and problem_type(stolen) == "bound-card-not-same-name"
    binding = start_binding(app, other, bound_card_of(other, class_i))
    assert binding.status_code == 422 and problem_type(binding) == "bound-card-not-same-name"


# --- money --------------------------------------------------------------------------------


def test_topup_and_withdrawal_via_clearing(counter: TallyClient, app: TallyClient) -> None:
    """Top-up from and withdrawal to an external bound card go through clearing."""
    customer = register(app)
    account = open_remote(app, customer)
    response = topup(app, account, 12_345)
    assert response.status_code == 201, response.text
    posting = response.json()
    assert posting["status"] == "posted" and posting["code"] == "topup_bound"
    assert posting["debit_account_id"] == "2" and posting["amount_minor"] == 12_345
    assert "idempotent-replayed" not in response.headers
    withdrawal = app.post(
        f"/v1/accounts/{account}/withdrawals",
        {"amount_minor": 345, "password": "135790"},
        idempotency_key=key(),
    )
    assert withdrawal.status_code == 201, withdrawal.text
    assert balance(counter, account) == 12_000
    too_much = app.post(
        f"/v1/accounts/{account}/withdrawals",
        {"amount_minor": 12_001, "password": "135790"},
        idempotency_key=key(),
    )
    assert too_much.status_code == 422 and problem_type(too_much) == "exceeds-credits"
    assert too_much.json()["ledger_result"] == {"code": 67, "name": "exceeds_credits"}


def test_debits_need_password_or_token(
    counter: TallyClient, app: TallyClient, server: TallyServer
) -> None:
    """No password: 401; wrong: 403 with attempts left; a token works, only for its account."""
    customer = register(app)
    account = open_remote(app, customer)
    assert topup(app, account, 1_000).status_code == 201
    path = f"/v1/accounts/{account}/withdrawals"
    missing = app.post(path, {"amount_minor": 1}, idempotency_key=key())
    assert (
        missing.status_code == 401
        and problem_type(missing) == "transaction-authentication-required"
    )
    wrong = app.post(path, {"amount_minor": 1, "password": "000000"}, idempotency_key=key())
    assert wrong.status_code == 403 and problem_type(wrong) == "wrong-transaction-password"
    assert wrong.json()["attempts_remaining"] == 4
    issued = app.post(f"/v1/accounts/{account}/tokens", {"password": "135790"})
    assert issued.status_code == 201, issued.text
    token = issued.json()["token"]
    paid = app.post(path, {"amount_minor": 100}, idempotency_key=key(), token=token)
    assert paid.status_code == 201, paid.text
    other = open_remote(app, customer)
    misuse = app.post(
        f"/v1/accounts/{other}/withdrawals", {"amount_minor": 1}, idempotency_key=key(), token=token
    )
    assert misuse.status_code == 403 and problem_type(misuse) == "transaction-token-not-for-account"
    with server.client("wechat") as wechat:
        elsewhere = wechat.post(path, {"amount_minor": 1}, idempotency_key=key(), token=token)
    assert elsewhere.status_code == 403
    bogus = app.post(path, {"amount_minor": 1}, idempotency_key=key(), token="nope")
    assert bogus.status_code == 401 and problem_type(bogus) == "transaction-token-invalid"
    assert balance(counter, account) == 900


def test_password_change_lockout_and_counter_reset(app: TallyClient, counter: TallyClient) -> None:
    """Five wrong passwords in a day lock the account (423 + Retry-After); a counter resets it."""
    customer = register(app)
    account = open_remote(app, customer)
    changed = app.post(
        f"/v1/accounts/{account}/password", {"old_password": "135790", "new_password": "246801"}
    )
    assert changed.status_code == 204, changed.text
    for attempt in range(4):
        wrong = app.post(f"/v1/accounts/{account}/tokens", {"password": "135790"})
        assert wrong.status_code == 403 and wrong.json()["attempts_remaining"] == 4 - attempt
    locked = app.post(f"/v1/accounts/{account}/tokens", {"password": "135790"})
    assert locked.status_code == 423 and problem_type(locked) == "transaction-password-locked"
    assert "retry-after" not in locked.headers  # it does not lift by itself
    still = app.post(f"/v1/accounts/{account}/tokens", {"password": "246801"})
    assert still.status_code == 423
    not_here = app.post(
        f"/v1/accounts/{account}/password-reset",
        {"id_number": customer["_id_number"], "new_password": "258147"},
    )
    assert not_here.status_code == 403
    reset = counter.post(
        f"/v1/accounts/{account}/password-reset",
        {"id_number": customer["_id_number"], "new_password": "258147"},
    )
    assert reset.status_code == 204, reset.text
    assert app.post(f"/v1/accounts/{account}/tokens", {"password": "258147"}).status_code == 201


def test_cash_rules(counter: TallyClient, app: TallyClient, server: TallyServer) -> None:
    """Cash only at counter/ATM; Class III never; Class II only after a face-to-face check."""
    customer = register(app)
    class_ii = open_remote(app, customer)
    class_iii = open_remote(app, customer, "class_iii")
    not_app = app.post(
        f"/v1/accounts/{class_ii}/cash-deposits", {"amount_minor": 100}, idempotency_key=key()
    )
    assert not_app.status_code == 403 and problem_type(not_app) == "operation-not-allowed"
    refused = counter.post(
        f"/v1/accounts/{class_ii}/cash-deposits", {"amount_minor": 100}, idempotency_key=key()
    )
    assert refused.status_code == 422 and problem_type(refused) == "cash-not-allowed"
    never = counter.post(
        f"/v1/accounts/{class_iii}/cash-deposits", {"amount_minor": 100}, idempotency_key=key()
    )
    assert never.status_code == 422 and problem_type(never) == "cash-not-allowed"
    checked = counter.post(
        f"/v1/accounts/{class_ii}/face-to-face", {"id_number": customer["_id_number"]}
    )
    assert checked.status_code == 200 and checked.json()["face_to_face_verified"]
    assert checked.json()["non_bound_inflow_enabled"]
    cash_deposit(counter, class_ii, 5_000)
    with server.client("atm") as atm:
        out = atm.post(
            f"/v1/accounts/{class_ii}/cash-withdrawals",
            {"amount_minor": 2_000, "password": "135790"},
            idempotency_key=key(),
        )
        assert out.status_code == 201, out.text
    assert balance(counter, class_ii) == 3_000
    quota = counter.get(f"/v1/accounts/{class_ii}").json()["quota"]
    assert quota["inflow"]["daily"]["used_minor"] == 5_000
    assert quota["outflow"]["daily"]["used_minor"] == 2_000


def test_internal_and_external_transfers(
    counter: TallyClient, app: TallyClient, server: TallyServer
) -> None:
    """Internal transfers move money between customers; external ones go out through clearing."""
    _, source = class_i_funded(counter, app, 100_000)
    _, target = class_i_funded(counter, app, 0)
    moved = app.post(
        "/v1/transfers",
        {
            "debit_account_id": source,
            "credit_account_id": target,
            "amount_minor": 40_000,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    assert moved.status_code == 201, moved.text
    assert balance(counter, source) == 60_000 and balance(counter, target) == 40_000
    out = app.post(
        "/v1/external-transfers",
        {
            "debit_account_id": source,
            "amount_minor": 10_000,
            "password": "135790",
            "beneficiary": {
                "bank_code": "ICBC",
                "account_number": card_number("622202"),
                "name": "赵六",
            },
        },
        idempotency_key=key(),
    )
    assert out.status_code == 201, out.text
    assert out.json()["credit_account_id"] == "2" and out.json()["code"] == "external_transfer_out"
    same = app.post(
        "/v1/transfers",
        {
            "debit_account_id": source,
            "credit_account_id": source,
            "amount_minor": 1,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    assert same.status_code == 422 and problem_type(same) == "accounts-must-be-different"
    unknown = app.post(
        "/v1/transfers",
        {
            "debit_account_id": source,
            "credit_account_id": "42424242",
            "amount_minor": 1,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    assert unknown.status_code == 404 and problem_type(unknown) == "credit-account-not-found"
    with server.client("open_api") as partner:
        incoming = partner.post(
            "/v1/incoming-transfers",
            {
                "credit_account_id": target,
                "amount_minor": 5_000,
                "payer": {"bank_code": "CMB", "account_number": "6225880137001234", "name": "钱七"},
                "clearing_reference": "CMB" + key().replace("-", ""),
            },
            idempotency_key=key(),
        )
    assert incoming.status_code == 201, incoming.text
    assert balance(counter, target) == 45_000


@pytest.mark.parametrize(
    ("amount", "detail"),
    [
        (0, "must be > 0"),
        (-5, "must be > 0"),
        (1.5, "must be an integer"),
        (2**63, "int64"),
        ("100", "expected an integer"),
        (True, "expected an integer"),
        (1e30, "int64"),
    ],
)
def test_amounts_are_positive_int64(app: TallyClient, amount: Any, detail: str) -> None:
    """Zero, negative, fractional, oversized, string and boolean amounts are precise 422s."""
    response = app.post(
        "/v1/transfers",
        {
            "debit_account_id": "1",
            "credit_account_id": "2",
            "amount_minor": amount,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["pointer"] == "/amount_minor"
    assert detail in problem["detail"] and "`$.amount_minor`" in problem["detail"]


def test_payment_hold_capture_void_and_expiry(counter: TallyClient, app: TallyClient) -> None:
    """A hold reserves funds; a partial capture posts part; void and expiry free it all."""
    _, payer = class_i_funded(counter, app, 10_000)
    _, merchant = class_i_funded(counter, app, 0)
    hold = app.post(
        "/v1/payments",
        {
            "debit_account_id": payer,
            "merchant_account_id": merchant,
            "amount_minor": 3_000,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    assert hold.status_code == 201 and hold.json()["status"] == "pending"
    payment_id = hold.json()["transfer_id"]
    session = open_session(app, payer)  # the app settles a hold for its payer (or merchant)
    view = counter.get(f"/v1/accounts/{payer}").json()
    assert view["pending_debits_minor"] == 3_000 and view["available_minor"] == 7_000
    captured = app.post(
        f"/v1/payments/{payment_id}/capture",
        {"amount_minor": 1_000},
        idempotency_key=key(),
        session=session,
    )
    assert captured.status_code == 201 and captured.json()["status"] == "captured"
    assert balance(counter, payer) == 9_000 and balance(counter, merchant) == 1_000
    again = app.post(f"/v1/payments/{payment_id}/void", idempotency_key=key(), session=session)
    assert again.status_code == 409 and problem_type(again) == "pending-transfer-already-posted"
    second = app.post(
        "/v1/payments",
        {
            "debit_account_id": payer,
            "merchant_account_id": merchant,
            "amount_minor": 500,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    voided = app.post(
        f"/v1/payments/{second.json()['transfer_id']}/void", idempotency_key=key(), session=session
    )
    assert voided.status_code == 201 and voided.json()["status"] == "voided"
    short = app.post(
        "/v1/payments",
        {
            "debit_account_id": payer,
            "merchant_account_id": merchant,
            "amount_minor": 700,
            "timeout_s": 1,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    assert short.status_code == 201
    time.sleep(2.2)
    late = app.post(
        f"/v1/payments/{short.json()['transfer_id']}/capture",
        idempotency_key=key(),
        session=session,
    )
    assert late.status_code == 409 and problem_type(late) == "pending-transfer-expired"
    assert counter.get(f"/v1/accounts/{payer}").json()["pending_debits_minor"] == 0
    missing = app.post(f"/v1/payments/{'ab' * 16}/capture", idempotency_key=key(), session=session)
    assert missing.status_code == 404 and problem_type(missing) == "pending-transfer-not-found"


def test_reversal_compensates_and_keeps_the_original(
    counter: TallyClient, app: TallyClient
) -> None:
    """A reversal is a new transfer the other way, by the channel that made the original (the
    counter here); the original stays, marked as reversed."""
    _, source = class_i_funded(counter, app, 10_000)
    _, target = class_i_funded(counter, app, 0)
    moved = counter.post(
        "/v1/transfers",
        {
            "debit_account_id": source,
            "credit_account_id": target,
            "amount_minor": 4_000,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    original = moved.json()["transfer_id"]
    partial = counter.post(
        f"/v1/transfers/{original}/reversals", {"amount_minor": 1_500}, idempotency_key=key()
    )
    assert partial.status_code == 201, partial.text
    assert partial.json()["debit_account_id"] == target and partial.json()["code"] == "reversal"
    rest = counter.post(
        f"/v1/transfers/{original}/reversals", {"amount_minor": 2_500}, idempotency_key=key()
    )
    assert rest.status_code == 201
    over = counter.post(
        f"/v1/transfers/{original}/reversals", {"amount_minor": 1}, idempotency_key=key()
    )
    assert over.status_code == 422 and problem_type(over) == "exceeds-reversible-amount"
    assert balance(counter, source) == 10_000 and balance(counter, target) == 0
    stored = counter.get(f"/v1/transfers/{original}").json()
    assert stored["state"] == "posted" and stored["amount_reversed_minor"] == 4_000
    not_allowed = app.post(f"/v1/transfers/{original}/reversals", idempotency_key=key())
    assert not_allowed.status_code == 403


def test_reads_transfer_and_history_pages(counter: TallyClient, app: TallyClient) -> None:
    """History pages newest first with a cursor until it runs out; transfers read back by id."""
    _, source = class_i_funded(counter, app, 10_000)
    _, target = class_i_funded(counter, app, 0)
    holder = open_session(app, target)  # the target's holder reads at the app
    ids = []
    for amount in (1, 2, 3, 4, 5):
        response = app.post(
            "/v1/transfers",
            {
                "debit_account_id": source,
                "credit_account_id": target,
                "amount_minor": amount,
                "password": "135790",
            },
            idempotency_key=key(),
        )
        ids.append(response.json()["transfer_id"])
    seen: list[str] = []
    cursor = ""
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = counter.get(f"/v1/accounts/{target}/history", query=query, session=holder)
        assert page.status_code == 200, page.text
        seen += [item["transfer_id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    one = app.get(f"/v1/transfers/{ids[2]}", session=holder).json()
    assert one["amount_minor"] == 3 and one["kind"] == "single" and one["code"] == "transfer"
    assert app.get(f"/v1/transfers/{'0' * 31}1", session=holder).status_code == 404
    assert app.get("/v1/transfers/not-an-id", session=holder).status_code == 422
    bad_limit = counter.get(f"/v1/accounts/{target}/history", query="limit=0", session=holder)
    assert bad_limit.status_code == 422
    unknown_param = counter.get(f"/v1/accounts/{target}/history", query="sort=asc", session=holder)
    assert unknown_param.status_code == 422
    assert counter.get("/v1/accounts/999999999").status_code == 404


def test_close_account_only_at_zero(counter: TallyClient, app: TallyClient) -> None:
    """Closing needs a zero balance and no holds; a closed account takes no more money."""
    customer = register(app)
    account = open_remote(app, customer)
    assert topup(app, account, 100).status_code == 201
    busy = app.post(f"/v1/accounts/{account}/close", {"password": "135790"})
    assert busy.status_code == 409 and problem_type(busy) == "account-balance-not-zero"
    app.post(
        f"/v1/accounts/{account}/withdrawals",
        {"amount_minor": 100, "password": "135790"},
        idempotency_key=key(),
    )
    closed = app.post(f"/v1/accounts/{account}/close", {"password": "135790"})
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    after = topup(app, account, 1)
    assert after.status_code in (403, 409, 422)


def test_non_bound_inflow_switch(
    counter: TallyClient, app: TallyClient, server: TallyServer
) -> None:
    """Class III accepts non-bound inflow only once enabled; Class II needs face to face first."""
    customer = register(app)
    class_iii = open_remote(app, customer, "class_iii")
    class_ii = open_remote(app, customer)
    with server.client("open_api") as partner:

        def incoming(account: str) -> Any:
            return partner.post(
                "/v1/incoming-transfers",
                {
                    "credit_account_id": account,
                    "amount_minor": 100,
                    "payer": {
                        "bank_code": "CMB",
                        "account_number": "6225880137001234",
                        "name": "钱七",
                    },
                    "clearing_reference": key(),
                },
                idempotency_key=key(),
            )

        refused = incoming(class_iii)
        assert refused.status_code == 422 and problem_type(refused) == "non-bound-inflow-disabled"
        enabled = app.post(
            f"/v1/accounts/{class_iii}/non-bound-inflow", {"enabled": True, "password": "135790"}
        )
        assert enabled.status_code == 200 and enabled.json()["non_bound_inflow_enabled"]
        assert incoming(class_iii).status_code == 201
        not_yet = app.post(
            f"/v1/accounts/{class_ii}/non-bound-inflow", {"enabled": True, "password": "135790"}
        )
        assert not_yet.status_code == 409 and problem_type(not_yet) == "face-to-face-required"


# --- batch --------------------------------------------------------------------------------


def test_batch_json_one_result_each(
    counter: TallyClient, app: TallyClient, bank: TallyClient
) -> None:
    """The batch route posts each transfer on its own and answers one result per transfer."""
    _, source = class_i_funded(counter, app, 1_000)
    _, target = class_i_funded(counter, app, 0)
    items = [
        {
            "debit_account_id": source,
            "credit_account_id": target,
            "amount_minor": 300,
            "code": "transfer",
        },
        {
            "debit_account_id": source,
            "credit_account_id": target,
            "amount_minor": 5_000,
            "code": "transfer",
        },
        {
            "debit_account_id": source,
            "credit_account_id": target,
            "amount_minor": 200,
            "code": "transfer",
        },
    ]
    batch_key = key()
    response = bank.post("/v1/transfers/batch", {"transfers": items}, idempotency_key=batch_key)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["result"] for r in body["results"]] == ["ok", "exceeds_credits", "ok"]
    assert (
        body["results"][0]["transfer_id"]
        == f"{TransferIds(DEVELOPMENT.transfer_id_key).id(BANK_CHANNEL_ID, batch_key, 0):032x}"
    )
    assert balance(counter, target) == 500
    replay = bank.post("/v1/transfers/batch", {"transfers": items}, idempotency_key=batch_key)
    assert [r["result"] for r in replay.json()["results"]] == [
        "exists",
        "id_already_failed",
        "exists",
    ]
    assert balance(counter, target) == 500
    bad = bank.post(
        "/v1/transfers/batch",
        {"transfers": [dict(items[0], amount_minor=-1)]},
        idempotency_key=key(),
    )
    assert (
        bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/transfers/0/amount_minor"
    )
    not_allowed = app.post("/v1/transfers/batch", {"transfers": items}, idempotency_key=key())
    assert not_allowed.status_code == 403


def test_batch_binary_and_full_size(
    counter: TallyClient, app: TallyClient, bank: TallyClient
) -> None:
    """8189 transfers in one binary request, one result code each, and a 8190th is refused."""
    _, source = class_i_funded(counter, app, 10_000_000)
    _, target = class_i_funded(counter, app, 0)
    count = 8189
    record = Transfer(
        0,
        int(source),
        int(target),
        0,
        1,
        0,
        0,
        156,
        TransferCode.TRANSFER,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ).pack()
    response = bank.post(
        "/v1/transfers/batch",
        raw=record * count,
        idempotency_key=key(),
        content_type="application/octet-stream",
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    (answered,) = struct.unpack_from("<I", response.content)
    codes = response.content[8 : 8 + answered]
    assert answered == count and codes == bytes(count)
    assert balance(counter, target) == count
    too_many = bank.post(
        "/v1/transfers/batch",
        raw=record * (count + 1),
        idempotency_key=key(),
        content_type="application/octet-stream",
    )
    assert too_many.status_code == 413
    ragged = bank.post(
        "/v1/transfers/batch",
        raw=record[:100],
        idempotency_key=key(),
        content_type="application/octet-stream",
    )
    assert ragged.status_code == 422
    assert len(record) == TRANSFER_SIZE
    items = [
        {
            "debit_account_id": source,
            "credit_account_id": target,
            "amount_minor": 1,
            "code": "transfer",
        }
    ] * count
    as_json = bank.post("/v1/transfers/batch", {"transfers": items}, idempotency_key=key())
    assert as_json.status_code == 200 and as_json.json()["summary"] == {"ok": count}
    assert balance(counter, target) == 2 * count


def test_oversized_body_is_413(app: TallyClient) -> None:
    """A body over the channel's cap is refused with 413 before it is parsed."""
    response = app.post("/v1/customers", raw=b"{" + b" " * 70_000 + b"}")
    assert response.status_code == 413 and problem_type(response) == "body-too-large"


def test_access_log_has_no_secrets(server: TallyServer) -> None:
    """The access log is JSON lines and never contains a password, a secret or a full card."""
    text = server.access_log.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line]
    assert lines and all("status" in line for line in lines)
    assert "135790" not in text and "DEVELOPMENT-ONLY" not in text
    assert "signature" not in text


def test_http2_prior_knowledge(server: TallyServer) -> None:
    """The same signed API over HTTP/2 (h2c, prior knowledge) on hypercorn."""
    if server.server == "uvicorn":
        pytest.skip("uvicorn speaks HTTP/1.1 only; HTTP/2 is hypercorn's")
    with server.client("app", http2=True) as client:
        response = client.post(
            "/v1/customers",
            {"name": "吴十", "id_number": resident_id(), "mobile": "13700137000"},
        )
        assert response.status_code == 201, response.text
        assert response.http_version == "HTTP/2"
