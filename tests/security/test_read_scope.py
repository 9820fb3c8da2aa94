"""Who may read what, tried as an attacker would against a real `tally serve`.

Each test is one finding of issue 12 ("reads are not scoped", the registration
and card-binding leaks, partner banks that may credit and verify, nothing else):
a channel signs its requests correctly (it is a trusted-looking caller) and
asks for data its kind may not see. Every test also checks the legitimate path
next to the refused one, so it cannot pass because the scenario did not happen
(an account that does not exist, a route that is not there).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from channels.client import TallyClient
from ledger.constants import CLEARING_ID
from tests.http_helpers import (
    TallyServer,
    bound_card_of,
    cash_deposit,
    key,
    open_class_i,
    open_remote,
    problem_type,
    register,
    start_binding,
    topup,
)

PASSWORD = "135790"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    running = TallyServer(tmp_path_factory.mktemp("read-scope") / "data").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def clients(server: TallyServer) -> Iterator[dict[str, TallyClient]]:
    names = ("wechat", "app", "counter", "atm", "open_api", "bank")
    opened = {name: server.client(name) for name in names}
    yield opened
    for client in opened.values():
        client.close()


def funded_class_i(counter: TallyClient, amount_minor: int) -> tuple[dict[str, Any], str]:
    customer = register(counter, "张三")
    account = open_class_i(counter, customer)
    cash_deposit(counter, account, amount_minor)
    return customer, account


def said(response: Any) -> str:
    """A problem's text without its `instance`: that echoes the request's own path, which
    the caller sent (and whose random ids may hold any digits: a customer id with "1234"
    in it once failed the check on the amount 1,234)."""
    body = response.json()
    body.pop("instance", None)
    return json.dumps(body, ensure_ascii=False)


def refused(response: Any) -> bool:
    """A refusal problem (401/403/404), and nothing of the account in the answer."""
    return response.status_code in (401, 403, 404) and response.headers["content-type"].startswith(
        "application/problem+json"
    )


def test_partner_bank_cannot_read_a_customer_balance(clients: dict[str, TallyClient]) -> None:
    """A partner bank's channel (open_api) asks for a customer's balance, history and a
    transfer: refused, and no figure of the account comes back. The counter reads the same
    account (it exists, with money in it)."""
    counter, partner = clients["counter"], clients["open_api"]
    _, account = funded_class_i(counter, 77_700)
    assert counter.get(f"/v1/accounts/{account}").json()["balance_minor"] == 77_700
    history = counter.get(f"/v1/accounts/{account}/history").json()
    transfer_id = history["items"][0]["transfer_id"]
    for path in (
        f"/v1/accounts/{account}",
        f"/v1/accounts/{account}/history",
        f"/v1/transfers/{transfer_id}",
    ):
        answer = partner.get(path)
        assert refused(answer), (path, answer.status_code, answer.text)
        assert "77700" not in said(answer) and "balance_minor" not in answer.text


def test_partner_bank_cannot_read_the_banks_own_accounts(clients: dict[str, TallyClient]) -> None:
    """The bank's own positions (the clearing account) are the internal channel's alone: a
    partner bank and a counter are refused; the bank's channel reads it."""
    own = clients["bank"].get(f"/v1/accounts/{CLEARING_ID}")
    assert own.status_code == 200 and "balance_minor" in own.json(), own.text
    for name in ("open_api", "counter"):
        answer = clients[name].get(f"/v1/accounts/{CLEARING_ID}")
        assert refused(answer), (name, answer.status_code, answer.text)
        assert "balance_minor" not in answer.text


def test_atm_reads_a_balance_only_with_a_token(clients: dict[str, TallyClient]) -> None:
    """An ATM without the card's PIN (no token) asks for the balance: refused. With the
    token the PIN buys, it reads that account, and only that one."""
    counter, atm = clients["counter"], clients["atm"]
    _, card = funded_class_i(counter, 5_000)
    _, other_card = funded_class_i(counter, 6_000)
    bare = atm.get(f"/v1/accounts/{card}")
    assert bare.status_code == 401 and "balance_minor" not in bare.text, bare.text
    issued = atm.post(f"/v1/accounts/{card}/tokens", {"password": PASSWORD})
    assert issued.status_code == 201, issued.text
    token = issued.json()["token"]
    read = atm.get(f"/v1/accounts/{card}", token=token)
    assert read.status_code == 200 and read.json()["balance_minor"] == 5_000, read.text
    elsewhere = atm.get(f"/v1/accounts/{other_card}", token=token)
    assert refused(elsewhere) and "balance_minor" not in elsewhere.text, elsewhere.text


def test_one_channel_cannot_read_another_channels_customer(
    clients: dict[str, TallyClient],
) -> None:
    """A customer registered and served by the app: the WeChat channel, without that
    customer's session, asks for their record (name, account ids), their account and its
    history: each refused, with neither the name nor the account id in the answer. The
    customer's own session at the app reads them."""
    app, wechat = clients["app"], clients["wechat"]
    customer = register(app, "欧阳娜娜")
    account = open_remote(app, customer)
    assert topup(app, account, 1_234).status_code == 201
    customer_id = customer["customer_id"]
    for path in (
        f"/v1/customers/{customer_id}",
        f"/v1/accounts/{account}",
        f"/v1/accounts/{account}/history",
    ):
        answer = wechat.get(path)
        assert refused(answer), (path, answer.status_code, answer.text)
        assert "欧阳娜娜" not in said(answer) and "1234" not in said(answer)
        assert account not in said(answer)
    session = app.post("/v1/sessions", {"account_id": account, "password": PASSWORD})
    assert session.status_code == 201, session.text
    own = app.get(f"/v1/customers/{customer_id}", session=session.json()["session"])
    assert own.status_code == 200 and own.json()["accounts"][0]["account_id"] == account
    # The app's session is the app's: WeChat cannot borrow it.
    borrowed = wechat.get(f"/v1/accounts/{account}", session=session.json()["session"])
    assert refused(borrowed) and "balance_minor" not in borrowed.text


def test_a_session_of_one_customer_cannot_read_another(clients: dict[str, TallyClient]) -> None:
    """Customer X opens a session at the app with X's password; with it, the app asks for
    customer Y's record, account and history: refused. X's own account reads."""
    app = clients["app"]
    x = register(app, "王小明")
    x_account = open_remote(app, x)
    y = register(app, "李小红")
    y_account = open_remote(app, y)
    assert topup(app, y_account, 4_321).status_code == 201
    opened = app.post("/v1/sessions", {"account_id": x_account, "password": PASSWORD})
    assert opened.status_code == 201, opened.text
    assert opened.json()["customer_id"] == x["customer_id"]
    session = opened.json()["session"]
    mine = app.get(f"/v1/accounts/{x_account}", session=session)
    assert mine.status_code == 200, mine.text
    for path in (
        f"/v1/customers/{y['customer_id']}",
        f"/v1/accounts/{y_account}",
        f"/v1/accounts/{y_account}/history",
    ):
        answer = app.get(path, session=session)
        assert answer.status_code == 403 and problem_type(answer) == "read-not-in-scope", (
            path,
            answer.text,
        )
        assert "李小红" not in said(answer) and "4321" not in said(answer)


def test_registering_a_known_id_number_does_not_disclose_the_customer(
    clients: dict[str, TallyClient],
) -> None:
    """Another channel registers an ID number the bank already knows: 409, and the answer
    does not carry the existing customer's id (nor their name)."""
    first = register(clients["app"], "赵敏")
    again = clients["wechat"].post(
        "/v1/customers",
        {"name": "冒名", "id_number": first["_id_number"], "mobile": "13912345678"},
    )
    assert again.status_code == 409 and problem_type(again) == "customer-exists", again.text
    assert first["customer_id"] not in again.text and "赵敏" not in again.text
    assert "customer_id" not in again.json()


def test_failed_card_binding_does_not_say_which_field_differed(
    clients: dict[str, TallyClient],
) -> None:
    """An applicant binds a card with one of name, ID number or mobile wrong, at the
    binding and at the opening: the six answers are the same generic refusal, naming no
    field, so guessing one field at a time learns nothing. The right card binds."""
    app = clients["app"]
    customer = register(app, "周芷若")
    card = bound_card_of(customer)
    other_id = register(app, "路人")["_id_number"]
    answers = []
    for wrong in (
        {"holder_name": "周芷"},
        {"holder_id_number": other_id},
        {"reserved_mobile": "13700000000"},
    ):
        for response in (
            start_binding(app, customer, dict(card, **wrong)),
            app.post(
                f"/v1/customers/{customer['customer_id']}/accounts",
                {"class": "class_ii", "bound_card": dict(card, **wrong), "password": PASSWORD},
            ),
        ):
            assert response.status_code == 422, response.text
            body = response.json()
            body.pop("instance", None)
            answers.append(body)
            for field in ("holder_name", "holder_id_number", "reserved_mobile", "fields"):
                assert field not in response.text, (wrong, response.text)
    assert all(answer == answers[0] for answer in answers), answers
    assert "does not match the applicant" in answers[0]["title"]
    assert open_remote(app, customer)  # the applicant's own card binds


def test_partner_credit_by_clearing_reference_posts_once(
    clients: dict[str, TallyClient],
) -> None:
    """A partner bank sends the same clearing credit twice (a retry after a lost answer,
    under a new Idempotency-Key): it posts once, both answers name the same transfer."""
    counter, partner = clients["counter"], clients["open_api"]
    _, account = funded_class_i(counter, 100)
    credit = {
        "credit_account_id": account,
        "amount_minor": 2_500,
        "payer": {"bank_code": "CMB", "account_number": "6225880137001234", "name": "钱七"},
        "clearing_reference": "CMB20261121" + key().replace("-", "")[:20],
    }
    first = partner.post("/v1/incoming-transfers", credit, idempotency_key=key())
    assert first.status_code == 201, first.text
    second = partner.post("/v1/incoming-transfers", credit, idempotency_key=key())
    assert second.status_code == 201, second.text
    assert second.json()["transfer_id"] == first.json()["transfer_id"]
    assert second.headers.get("idempotent-replayed") == "true"
    assert counter.get(f"/v1/accounts/{account}").json()["balance_minor"] == 100 + 2_500


def test_verify_account_answers_only_existence_and_name_match(
    clients: dict[str, TallyClient],
) -> None:
    """A partner bank checks an account before crediting it: the answer is exactly
    {exists, name_matches}: true/true for the holder's name, true/false for another name,
    false/false for an unknown or a bank-internal account."""
    counter, partner = clients["counter"], clients["open_api"]
    customer, account = funded_class_i(counter, 9_900)

    def verify(account_id: str, name: str) -> dict[str, Any]:
        answer = partner.post("/v1/account-verifications", {"account_id": account_id, "name": name})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        assert set(body) == {"exists", "name_matches"}, body
        return body

    assert verify(account, customer["name"]) == {"exists": True, "name_matches": True}
    assert verify(account, "李四四") == {"exists": True, "name_matches": False}
    assert verify("6235019999999999999", customer["name"]) == {
        "exists": False,
        "name_matches": False,
    }
    assert verify(str(CLEARING_ID), customer["name"]) == {"exists": False, "name_matches": False}
