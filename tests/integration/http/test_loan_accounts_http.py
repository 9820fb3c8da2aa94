"""The loan account routes end to end: a real `tally serve` (hypercorn), signed channel and
operator clients, problem+json refusals.

A customer gets a credit limit the way a bank gives one (a teller's `credit_limit`
request, approved by a risk officer), applies at WeChat with their session, signs with
their transaction password, is paid out, reads the loan and its schedule, repays a part
and then everything; every transition answered again, byte for byte, when retried with
its Idempotency-Key. Bad input of every kind is a 4xx problem, never a 500. A loan
officer's decision settles an application the risk screen referred.

One server for the module, with a risk rule set of two rules that look only at loan
disbursements (a device on a review list refers the application, one on a block list
declines it), so the rest of the journey is never held by the shipped rules. Each test
registers its own customers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from channels.client import TallyClient
from channels.http.openapi import openapi_document
from core.services.results import (
    LoanApplicationView,
    LoanRepaid,
    LoanScheduleItem,
    LoanScheduleView,
    LoanView,
)
from ledger.loans import Method, schedule
from limits.calendar import day_of_date
from tests.admin_helpers import operator_client, risk_rules_text
from tests.http_helpers import (
    TELLER,
    TallyServer,
    balance,
    key,
    open_class_i,
    open_session,
    problem_type,
    register,
)

CNY = 100
APPLICATIONS = "/v1/loan-applications"
FUNDING = "5"  # ledger.constants.LOAN_FUNDING_ID: the bank's loan-funding account
REVIEW_DEVICE = {"id": "loan-review-0001"}
BLOCKED_DEVICE = {"id": "loan-block-0001"}
# Two rules on loan disbursements only (the screen of an application), by device.
LOAN_RULES = """
[lists.loan_review_devices]
match = "device"
values = ["loan-review-0001"]

[lists.loan_blocked_devices]
match = "device"
values = ["loan-block-0001"]

[[rules]]
name = "loan_review_device"
type = "list"
outcome = "review"
list = "loan_review_devices"
codes = ["loan_disbursement"]

[[rules]]
name = "loan_blocked_device"
type = "list"
outcome = "block"
list = "loan_blocked_devices"
codes = ["loan_disbursement"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    directory = tmp_path_factory.mktemp("loan-accounts")
    rules = directory / "loan-risk.toml"
    rules.write_text(risk_rules_text(LOAN_RULES))
    running = TallyServer(directory / "data", extra=["--risk-rules", str(rules)]).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter") as client:
        yield client


@pytest.fixture(scope="module")
def wechat(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("wechat") as client:
        yield client


@pytest.fixture(scope="module")
def bank(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("bank") as client:
        yield client


@pytest.fixture(scope="module")
def officer(server: TallyServer) -> Iterator[TallyClient]:
    """An operator who decides referred applications (an administrator holds
    decide:loans, as a loan officer does)."""
    with operator_client(server, "admin1") as client:
        yield client


@dataclasses.dataclass
class Borrower:
    customer: dict[str, Any]
    account_id: str

    @property
    def customer_id(self) -> str:
        return str(self.customer["customer_id"])


def borrower(server: TallyServer, counter: TallyClient, limit_minor: int) -> Borrower:
    """A registered customer with a Class I account and, when `limit_minor` > 0, a credit
    limit granted through maker-checker (a teller asks, a risk officer approves)."""
    customer = register(counter)
    account_id = open_class_i(counter, customer)
    if limit_minor:
        with (
            operator_client(server, "teller1") as maker,
            operator_client(server, "risk1") as checker,
        ):
            payload = {"customer_id": customer["customer_id"], "limit_minor": limit_minor}
            made = maker.post("/v1/admin/approvals", {"kind": "credit_limit", "payload": payload})
            assert made.status_code == 201, made.text
            approved = checker.post(f"/v1/admin/approvals/{made.json()['id']}/approve", {})
            assert approved.status_code == 200, approved.text
            assert approved.json()["state"] == "applied", approved.text
    return Borrower(customer, account_id)


def application_body(who: Borrower, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": who.customer_id,
        "product_id": "G-P-loan",
        "amount_minor": 100_000 * CNY,
        "term_months": 12,
        "method": "equal_instalment",
        "disbursement_account_id": who.account_id,
        "purpose": "home renovation",
    }
    body.update(fields)
    return body


def ok(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def refused(response: Any, status: int, slug: str, pointer: str | None = None) -> dict[str, Any]:
    """The problem+json of a refusal: status, type and (if given) the one error's pointer."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert problem_type(response) == slug, response.text
    body: dict[str, Any] = response.json()
    if pointer is not None:
        assert [error["pointer"] for error in body["errors"]] == [pointer], body
    return body


def replayed(first: Any, again: Any) -> None:
    """A retry with the same key answers the same status and body, marked as a replay
    (the first answer was not)."""
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == first.status_code, again.text
    assert again.headers["idempotent-replayed"] == "true"
    expected = {**first.json(), "replayed": True}
    if "loan" in expected:  # a repayment's loan view: read again, as it is now
        expected["loan"] = {**expected["loan"], "replayed": False}
        assert again.json()["loan"]["account_id"] == first.json()["loan"]["account_id"]
        expected["loan"] = again.json()["loan"]
    assert again.json() == expected


def day_of_text(text: str) -> int:
    year, month, day = (int(part) for part in text.split("-"))
    return day_of_date(year, month, day)


# --- the journey ---------------------------------------------------------------------------


def test_journey_apply_sign_disburse_read_and_repay_at_wechat(
    server: TallyServer, counter: TallyClient, wechat: TallyClient, bank: TallyClient
) -> None:
    """At WeChat, with the customer's session: apply (approved at once: within the
    credit limit, nothing fired), sign with the transaction password, be paid out 100,000
    CNY, read the loan and its 12 instalments (ledger.loans's schedule to the fen), repay
    20,000 CNY early (a new segment, same count, smaller instalments), then everything
    owed (the loan closes). Each transition retried with its key answers the same; the
    money moved is conserved between the customer's account and the bank's loan funding."""
    who = borrower(server, counter, 200_000 * CNY)
    session = open_session(wechat, who.account_id)
    funding_before = balance(bank, FUNDING)

    apply_key = key()
    first = wechat.post(
        APPLICATIONS, application_body(who), idempotency_key=apply_key, session=session
    )
    application = ok(first, 201)
    application_id = application["application_id"]
    assert application["state"] == "approved" and application["risk_outcome"] == "allow"
    assert [step["state"] for step in application["transitions"]] == ["submitted", "approved"]
    assert (application["rate"], application["apr"]) == ("3.45%", "3.45%")
    assert application["credit_limit_minor"] == 200_000 * CNY
    assert application["risk_rules"] is None  # never told to a channel
    assert application["loan_account_id"] is None and application["replayed"] is False
    again = wechat.post(
        APPLICATIONS, application_body(who), idempotency_key=apply_key, session=session
    )
    replayed(first, again)
    read = ok(wechat.get(f"{APPLICATIONS}/{application_id}", session=session), 200)
    assert read == application

    sign_key = key()
    signed = wechat.post(
        f"{APPLICATIONS}/{application_id}/sign", {"password": "135790"}, idempotency_key=sign_key
    )
    assert ok(signed, 200)["state"] == "signed"
    replayed(
        signed,
        wechat.post(
            f"{APPLICATIONS}/{application_id}/sign",
            {"password": "135790"},
            idempotency_key=sign_key,
        ),
    )

    pay_key = key()
    path = f"{APPLICATIONS}/{application_id}/disbursement"
    paid = wechat.post(path, idempotency_key=pay_key, session=session)
    loan = ok(paid, 201)
    loan_id = loan["account_id"]
    assert (loan["status"], loan["principal_minor"], loan["outstanding_minor"]) == (
        "open", 100_000 * CNY, 100_000 * CNY,
    )  # fmt: skip
    assert loan["balance_minor"] == 0 and loan["owed_minor"] == 100_000 * CNY
    assert loan["application_id"] == application_id and loan["customer_id"] == who.customer_id
    replayed(paid, wechat.post(path, idempotency_key=pay_key, session=session))
    assert balance(bank, who.account_id) == 100_000 * CNY
    assert balance(bank, FUNDING) == funding_before - 100_000 * CNY
    after = ok(wechat.get(f"{APPLICATIONS}/{application_id}", session=session), 200)
    assert (after["state"], after["loan_account_id"]) == ("disbursed", loan_id)

    assert ok(wechat.get(f"/v1/loans/{loan_id}", session=session), 200) == loan
    plan = ok(wechat.get(f"/v1/loans/{loan_id}/schedule", session=session), 200)
    items = plan["instalments"]
    assert (plan["segment"], plan["principal_minor"], len(items)) == (0, 100_000 * CNY, 12)
    assert [item["status"] for item in items] == ["due"] + ["future"] * 11
    expected = schedule(
        100_000 * CNY, 34_500, 12, Method.EQUAL_INSTALMENT, day_of_text(plan["start_date"]), 20
    )
    assert [
        (day_of_text(i["due_date"]), i["principal_minor"], i["interest_minor"]) for i in items
    ] == [
        (item.due_day, item.principal_minor, item.interest_minor) for item in expected.instalments
    ]
    assert loan["next_instalment"] == {
        name: value for name, value in items[0].items() if name != "status"
    }

    part_key = key()
    repayments = f"/v1/loans/{loan_id}/repayments"
    body = {"amount_minor": 20_000 * CNY, "password": "135790"}
    part = wechat.post(repayments, body, idempotency_key=part_key)
    repaid = ok(part, 201)
    assert (repaid["kind"], repaid["total_minor"], repaid["prepaid_principal_minor"]) == (
        "partial", 20_000 * CNY, 20_000 * CNY,
    )  # fmt: skip
    assert repaid["loan"]["outstanding_minor"] == 80_000 * CNY
    assert repaid["loan"]["segment"] == 1
    replayed(part, wechat.post(repayments, body, idempotency_key=part_key))
    assert balance(bank, who.account_id) == 80_000 * CNY
    smaller = ok(wechat.get(f"/v1/loans/{loan_id}/schedule", session=session), 200)
    assert smaller["segment"] == 1 and smaller["principal_minor"] == 80_000 * CNY
    assert smaller["instalments"][0]["total_minor"] < items[0]["total_minor"]

    full_key = key()
    full = wechat.post(repayments, {"password": "135790"}, idempotency_key=full_key)
    closed = ok(full, 201)
    assert (closed["kind"], closed["total_minor"]) == ("full", 80_000 * CNY)
    assert closed["loan"]["status"] == "closed" and closed["loan"]["owed_minor"] == 0
    replayed(full, wechat.post(repayments, {"password": "135790"}, idempotency_key=full_key))
    assert balance(bank, who.account_id) == 0
    assert balance(bank, FUNDING) == funding_before  # lent and repaid: no interest, no fee
    again_closed = wechat.post(repayments, {"password": "135790"}, idempotency_key=key())
    refused(again_closed, 409, "loan-closed")

    listed = ok(wechat.get(f"/v1/customers/{who.customer_id}/loans", session=session), 200)
    assert [(entry["account_id"], entry["status"]) for entry in listed["loans"]] == [
        (loan_id, "closed")
    ]


def test_counter_acts_for_any_customer(server: TallyServer, counter: TallyClient) -> None:
    """A teller at the counter applies, signs (the customer's password, typed at the
    counter), pays out and reads for a customer it holds no session of; a second payout
    of the same application with another key is refused; the customer's loans list it,
    and so do the customer's accounts (class "loan")."""
    who = borrower(server, counter, 50_000 * CNY)
    with server.client("counter", actor=TELLER) as teller:
        made = ok(
            teller.post(
                APPLICATIONS,
                application_body(who, amount_minor=10_000 * CNY, method="equal_principal"),
                idempotency_key=key(),
            ),
            201,
        )
        application_id = made["application_id"]
        sign = f"{APPLICATIONS}/{application_id}/sign"
        ok(teller.post(sign, {"password": "135790"}, idempotency_key=key()), 200)
        path = f"{APPLICATIONS}/{application_id}/disbursement"
        loan = ok(teller.post(path, idempotency_key=key()), 201)
        problem = refused(teller.post(path, idempotency_key=key()), 409, "loan-already-disbursed")
        assert problem["account_id"] == loan["account_id"]
        read = ok(teller.get(f"/v1/loans/{loan['account_id']}"), 200)
        assert read["method"] == "equal_principal" and read["principal_minor"] == 10_000 * CNY
        listed = ok(teller.get(f"/v1/customers/{who.customer_id}/loans"), 200)
        assert [entry["account_id"] for entry in listed["loans"]] == [loan["account_id"]]
        accounts = ok(teller.get(f"/v1/customers/{who.customer_id}"), 200)["accounts"]
        assert {"account_id": loan["account_id"], "class": "loan", "closed": False} in accounts


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "slug", "pointer"),
    [
        pytest.param(
            {"amount_minor": 300_000 * CNY + 1}, 422, "loan-amount-out-of-range",
            "/amount_minor", id="amount-above-product",
        ),
        pytest.param(
            {"amount_minor": 999 * CNY}, 422, "loan-amount-out-of-range", "/amount_minor",
            id="amount-below-product",
        ),
        pytest.param(
            {"product_id": "G-X-loan"}, 404, "loan-product-unknown", "/product_id",
            id="unknown-product",
        ),
        pytest.param({"term_months": 61}, 422, "loan-term-out-of-range", "/term_months",
                     id="term-above-product"),
        pytest.param({"colour": "red"}, 422, "validation-failed", "/colour", id="unknown-field"),
        pytest.param({"amount_minor": 1.5}, 422, "validation-failed", "/amount_minor",
                     id="amount-float"),
        pytest.param({"amount_minor": "100"}, 422, "validation-failed", "/amount_minor",
                     id="amount-string"),
        pytest.param({"amount_minor": 0}, 422, "validation-failed", "/amount_minor",
                     id="amount-zero"),
        pytest.param({"method": "balloon"}, 422, "validation-failed", "/method",
                     id="method-unknown"),
        pytest.param({"customer_id": "c1"}, 422, "validation-failed", "/customer_id",
                     id="customer-id-shape"),
        pytest.param({"disbursement_account_id": "01"}, 422, "validation-failed",
                     "/disbursement_account_id", id="account-id-shape"),
        pytest.param({"purpose": ""}, 422, "validation-failed", "/purpose", id="purpose-empty"),
        pytest.param({"purpose": "x\ny"}, 422, "validation-failed", "/purpose",
                     id="purpose-two-lines"),
        pytest.param({"device": {"id": "bad device"}}, 422, "validation-failed", "/device/id",
                     id="device-id-shape"),
        pytest.param({"amount_minor": 250_000 * CNY}, 422, "loan-quota-exceeded", None,
                     id="over-credit-limit"),
    ],
)  # fmt: skip
def test_application_refusals(
    server: TallyServer,
    counter: TallyClient,
    fields: dict[str, Any],
    status: int,
    slug: str,
    pointer: str | None,
) -> None:
    """Each bad application is its own 4xx problem, pointed at the field where there is
    one: the product's ranges and catalog, the strict schema (unknown fields, no floats
    or strings for money, shapes of ids, a one-line purpose), the credit limit with its
    figures; nothing is recorded (the same key then applies for a good loan)."""
    who = borrower(server, counter, 200_000 * CNY)
    used = key()
    problem = refused(
        counter.post(APPLICATIONS, application_body(who, **fields), idempotency_key=used),
        status,
        slug,
        pointer,
    )
    if slug == "loan-quota-exceeded":
        assert (problem["limit_minor"], problem["used_minor"]) == (200_000 * CNY, 0)
    good = counter.post(APPLICATIONS, application_body(who), idempotency_key=used)
    assert ok(good, 201)["state"] == "approved"


def test_malformed_bodies_missing_keys_and_other_fields_for_a_key(
    server: TallyServer, counter: TallyClient
) -> None:
    """Not JSON (400), a key repeated (400), another content type (415), a missing
    required field (422); every transition without an Idempotency-Key is 400 before
    anything happens; the apply key reused with another amount is 422."""
    who = borrower(server, counter, 200_000 * CNY)
    refused(counter.post(APPLICATIONS, raw=b'{"customer_id": ', idempotency_key=key()), 400,
            "malformed-json")  # fmt: skip
    repeated = b'{"purpose": "a", "purpose": "b"}'
    refused(counter.post(APPLICATIONS, raw=repeated, idempotency_key=key()), 400,
            "duplicate-json-key")  # fmt: skip
    form = counter.post(APPLICATIONS, raw=b"a=1", content_type="text/plain", idempotency_key=key())
    refused(form, 415, "unsupported-media-type")
    missing = {name: value for name, value in application_body(who).items() if name != "purpose"}
    refused(counter.post(APPLICATIONS, missing, idempotency_key=key()), 422,
            "validation-failed", "/purpose")  # fmt: skip
    refused(counter.post(APPLICATIONS, [application_body(who)], idempotency_key=key()), 422,
            "validation-failed", "/")  # fmt: skip

    refused(counter.post(APPLICATIONS, application_body(who)), 400, "idempotency-key-missing")
    used = key()
    made = ok(counter.post(APPLICATIONS, application_body(who), idempotency_key=used), 201)
    other = counter.post(
        APPLICATIONS, application_body(who, amount_minor=50_000 * CNY), idempotency_key=used
    )
    refused(other, 422, "idempotency-key-reused")
    base = f"{APPLICATIONS}/{made['application_id']}"
    refused(counter.post(f"{base}/sign", {"password": "135790"}), 400, "idempotency-key-missing")
    refused(counter.post(f"{base}/disbursement"), 400, "idempotency-key-missing")
    refused(counter.post(f"{base}/disbursement", idempotency_key=key()), 409,
            "loan-application-state")  # fmt: skip
    assert ok(counter.get(base), 200)["state"] == "approved"  # nothing moved it
    refused(counter.post(f"/v1/loans/{who.account_id}/repayments", {"password": "135790"}),
            400, "idempotency-key-missing")  # fmt: skip
    refused(
        counter.post(f"{base}/sign", {"password": "135790", "pin": 1}, idempotency_key=key()),
        422, "validation-failed", "/pin",
    )  # fmt: skip


def test_wrong_customer_and_unknown_ids(
    server: TallyServer, counter: TallyClient, wechat: TallyClient
) -> None:
    """At WeChat a session proves one customer: applying for, paying out or reading
    another customer's loan is 403 read-not-in-scope, no session is 401; the money goes
    only to the applicant's own account (422); an application id of the wrong shape is
    422, an unknown one 404, a customer account that is no loan 404; a repayment without
    the password or token is 401, with a wrong one 403."""
    alice = borrower(server, counter, 200_000 * CNY)
    bob = borrower(server, counter, 200_000 * CNY)
    alice_session = open_session(wechat, alice.account_id)
    refused(
        wechat.post(
            APPLICATIONS, application_body(bob), idempotency_key=key(), session=alice_session
        ),
        403,
        "read-not-in-scope",
    )
    refused(wechat.post(APPLICATIONS, application_body(alice), idempotency_key=key()), 401,
            "read-authentication-required")  # fmt: skip
    refused(
        counter.post(
            APPLICATIONS,
            application_body(alice, disbursement_account_id=bob.account_id),
            idempotency_key=key(),
        ),
        422,
        "account-not-customers",
        "/disbursement_account_id",
    )
    made = ok(counter.post(APPLICATIONS, application_body(bob), idempotency_key=key()), 201)
    base = f"{APPLICATIONS}/{made['application_id']}"
    refused(wechat.get(base, session=alice_session), 403, "read-not-in-scope")
    refused(wechat.get(base), 401, "read-authentication-required")
    ok(counter.post(f"{base}/sign", {"password": "135790"}, idempotency_key=key()), 200)
    refused(wechat.post(f"{base}/disbursement", idempotency_key=key(), session=alice_session),
            403, "read-not-in-scope")  # fmt: skip
    loan = ok(counter.post(f"{base}/disbursement", idempotency_key=key()), 201)
    loan_path = f"/v1/loans/{loan['account_id']}"
    refused(wechat.get(loan_path, session=alice_session), 403, "read-not-in-scope")
    refused(wechat.get(f"{loan_path}/schedule", session=alice_session), 403, "read-not-in-scope")
    refused(wechat.get(f"/v1/customers/{bob.customer_id}/loans", session=alice_session), 403,
            "read-not-in-scope")  # fmt: skip
    repay = f"{loan_path}/repayments"
    refused(wechat.post(repay, {"amount_minor": 100}, idempotency_key=key()), 401,
            "transaction-authentication-required")  # fmt: skip
    refused(wechat.post(repay, {"amount_minor": 100, "password": "000000"},
                        idempotency_key=key()), 403, "wrong-transaction-password")  # fmt: skip
    refused(counter.post(repay, {"amount_minor": 100 * 1_000_000 * CNY, "password": "135790"},
                         idempotency_key=key()), 422, "loan-repayment-exceeds-owed")  # fmt: skip

    refused(counter.get(f"{APPLICATIONS}/nope"), 422, "validation-failed", "/application_id")
    refused(counter.get(f"{APPLICATIONS}/LA0123456789abcdef"), 404, "loan-application-not-found")
    refused(counter.get(f"/v1/loans/{bob.account_id}"), 404, "loan-not-found")
    refused(counter.get("/v1/loans/0"), 422, "validation-failed", "/account_id")
    with server.client("atm") as atm:
        refused(atm.get(loan_path), 403, "operation-not-allowed")


def test_no_credit_limit_is_refused_with_the_figures(
    server: TallyServer, counter: TallyClient
) -> None:
    """Without an approved credit limit (0) every application is over the quota:
    422 loan-quota-exceeded, limit 0 and nothing used."""
    who = borrower(server, counter, 0)
    problem = refused(
        counter.post(APPLICATIONS, application_body(who, amount_minor=1_000 * CNY),
                     idempotency_key=key()),
        422,
        "loan-quota-exceeded",
    )  # fmt: skip
    assert (problem["limit_minor"], problem["used_minor"]) == (0, 0)


# --- the operator's decision ------------------------------------------------------------------


def test_operator_decides_a_referred_application(
    server: TallyServer, counter: TallyClient, officer: TallyClient
) -> None:
    """A device on the review list refers the application (the channel sees the outcome,
    never the rule); it cannot be signed yet (409). An operator without decide:loans is
    refused (403), a channel's signature reaches no admin route (401), a decision needs
    an Idempotency-Key (400) and a decline a reason (422). The officer approves: the
    operator sees the rule that fired; the same key answers the same; a second decision
    is 409; then the customer signs. A blocked device declines at once."""
    who = borrower(server, counter, 200_000 * CNY)
    made = ok(
        counter.post(APPLICATIONS, application_body(who, device=REVIEW_DEVICE),
                     idempotency_key=key()),
        201,
    )  # fmt: skip
    assert (made["state"], made["risk_outcome"], made["risk_rules"]) == (
        "referred", "review", None,
    )  # fmt: skip
    application_id = made["application_id"]
    base = f"{APPLICATIONS}/{application_id}"
    problem = refused(
        counter.post(f"{base}/sign", {"password": "135790"}, idempotency_key=key()),
        409,
        "loan-application-state",
    )
    assert problem["state"] == "referred"

    decision = f"/v1/admin/loan-applications/{application_id}/decision"
    with operator_client(server, "teller1") as teller:
        refused(teller.post(decision, {"approve": True}, idempotency_key=key()), 403,
                "operator-not-permitted")  # fmt: skip
    refused(counter.post(decision, {"approve": True}, idempotency_key=key()), 401,
            "operator-required")  # fmt: skip
    refused(officer.post(decision, {"approve": True}), 400, "idempotency-key-missing")
    refused(officer.post(decision, {"approve": False}, idempotency_key=key()), 422,
            "validation-failed", "/reason")  # fmt: skip
    refused(officer.post(decision, {"approve": "yes"}, idempotency_key=key()), 422,
            "validation-failed", "/approve")  # fmt: skip
    refused(officer.post("/v1/admin/loan-applications/x/decision", {"approve": True},
                         idempotency_key=key()), 422, "validation-failed")  # fmt: skip

    used = key()
    body = {"approve": True, "reason": "income verified by phone"}
    first = officer.post(decision, body, idempotency_key=used)
    approved = ok(first, 200)
    assert approved["state"] == "approved" and approved["risk_rules"] == ["loan_review_device"]
    assert approved["transitions"][-1]["by"] == "op:admin1"
    assert approved["transitions"][-1]["reason"] == "income verified by phone"
    replayed(first, officer.post(decision, body, idempotency_key=used))
    problem = refused(officer.post(decision, body, idempotency_key=key()), 409,
                      "loan-application-state")  # fmt: skip
    assert problem["state"] == "approved"
    signed = counter.post(f"{base}/sign", {"password": "135790"}, idempotency_key=key())
    assert ok(signed, 200)["state"] == "signed"
    assert ok(counter.get(base), 200)["risk_rules"] is None  # a channel never learns them

    declined = ok(
        counter.post(APPLICATIONS, application_body(who, device=BLOCKED_DEVICE),
                     idempotency_key=key()),
        201,
    )  # fmt: skip
    assert (declined["state"], declined["risk_outcome"]) == ("declined", "block")


def test_operator_declines_a_referred_application(
    server: TallyServer, counter: TallyClient, officer: TallyClient
) -> None:
    """A decline with its reason ends the application: declined, the reason recorded;
    signing it is 409 with its state."""
    who = borrower(server, counter, 200_000 * CNY)
    made = ok(
        counter.post(APPLICATIONS, application_body(who, device=REVIEW_DEVICE),
                     idempotency_key=key()),
        201,
    )  # fmt: skip
    decision = f"/v1/admin/loan-applications/{made['application_id']}/decision"
    body = {"approve": False, "reason": "purpose not credible"}
    declined = ok(officer.post(decision, body, idempotency_key=key()), 200)
    assert (declined["state"], declined["reason"]) == ("declined", "purpose not credible")
    sign = f"{APPLICATIONS}/{made['application_id']}/sign"
    problem = refused(counter.post(sign, {"password": "135790"}, idempotency_key=key()), 409,
                      "loan-application-state")  # fmt: skip
    assert problem["state"] == "declined"


# --- the contract -----------------------------------------------------------------------------


def test_openapi_documents_the_loan_account_routes(server: TallyServer) -> None:
    """The served document has the nine routes, a strict body on each that takes one,
    an Idempotency-Key required exactly on the transitions, the customer session on the
    reads, and answers whose fields are exactly the service's results."""
    document = httpx.get(server.url + "/openapi.json").json()
    assert document == openapi_document()
    paths = document["paths"]
    transitions = {
        (APPLICATIONS, "post"),
        (APPLICATIONS + "/{application_id}/sign", "post"),
        (APPLICATIONS + "/{application_id}/disbursement", "post"),
        ("/v1/loans/{account_id}/repayments", "post"),
        ("/v1/admin/loan-applications/{application_id}/decision", "post"),
    }
    reads = {
        (APPLICATIONS + "/{application_id}", "get"),
        ("/v1/loans/{account_id}", "get"),
        ("/v1/loans/{account_id}/schedule", "get"),
        ("/v1/customers/{customer_id}/loans", "get"),
    }
    for path, method in transitions | reads:
        operation = paths[path][method]
        headers = {p["name"]: p["required"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers.get("Idempotency-Key", False) is ((path, method) in transitions), path
        if "requestBody" in operation:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema["additionalProperties"] is False, path
        if method == "get":
            assert "Tally-Session" in headers, path
    apply_schema = paths[APPLICATIONS]["post"]["requestBody"]["content"]["application/json"]
    assert apply_schema["schema"]["required"] == [
        "customer_id", "product_id", "amount_minor", "term_months", "method",
        "disbursement_account_id", "purpose",
    ]  # fmt: skip
    schemas = document["components"]["schemas"]
    for name, result in (
        ("LoanApplication", LoanApplicationView),
        ("Loan", LoanView),
        ("LoanSchedule", LoanScheduleView),
        ("LoanRepaid", LoanRepaid),
    ):
        fields = [field.name for field in dataclasses.fields(result)]
        assert list(schemas[name]["properties"]) == fields, name
    item = schemas["LoanSchedule"]["properties"]["instalments"]["items"]
    assert list(item["properties"]) == [
        field.name for field in dataclasses.fields(LoanScheduleItem)
    ]
