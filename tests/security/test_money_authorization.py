"""Who may move what, tried as an attacker would against a real `tally serve`.

Each test is one item of issue 12's "who may move what": a signed, well-formed
request from a channel that should not be able to do it, then proof from the
books (balances, the hold's state, the account list) that nothing moved. Each
also shows the legitimate twin of the attack succeeding, so a refusal cannot
come from a scenario that never happened.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels.client import TallyClient
from ledger.constants import CLEARING_ID, SETTLEMENT_ID
from tests.http_helpers import (
    TallyServer,
    balance,
    bind_card,
    bound_card_of,
    cash_deposit,
    key,
    open_class_i,
    open_session,
    problem_type,
    register,
)

PASSWORD = "135790"
CHANNEL_IDS = {"wechat": 1, "app": 2, "counter": 3, "atm": 4, "open_api": 5, "bank": 6}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    running = TallyServer(tmp_path_factory.mktemp("money-authorization") / "data").start()
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def clients(server: TallyServer) -> Iterator[dict[str, TallyClient]]:
    opened = {name: server.client(name) for name in CHANNEL_IDS}
    yield opened
    for client in opened.values():
        client.close()


def funded_class_i(counter: TallyClient, amount_minor: int) -> str:
    account = open_class_i(counter, register(counter), PASSWORD)
    if amount_minor:
        cash_deposit(counter, account, amount_minor)
    return account


def item(debit: str | int, credit: str | int, amount_minor: int) -> dict[str, Any]:
    return {
        "debit_account_id": str(debit),
        "credit_account_id": str(credit),
        "amount_minor": amount_minor,
        "code": "transfer",
    }


def hold(client: TallyClient, payer: str, merchant: str, amount_minor: int, **kwargs: Any) -> Any:
    return client.post(
        "/v1/payments",
        {
            "debit_account_id": payer,
            "merchant_account_id": merchant,
            "amount_minor": amount_minor,
            "password": PASSWORD,
        },
        **kwargs,
    )


# --- the batch route and the bank's own accounts ------------------------------------


def test_a_batch_from_the_counter_is_refused(clients: dict[str, TallyClient]) -> None:
    """The counter (its registry entry says "*": every operation offered at its kind, which
    no longer includes the batch) posts a batch debiting a customer's account with no
    transaction password: 403, nothing moves (the services refuse it too, for any adapter:
    tests/services). The same batch from
    the bank's internal channel posts (the route works; only the channel is wrong)."""
    counter, bank = clients["counter"], clients["bank"]
    victim = funded_class_i(counter, 50_000)
    thief = funded_class_i(counter, 0)
    attack = counter.post(
        "/v1/transfers/batch", {"transfers": [item(victim, thief, 40_000)]}, idempotency_key=key()
    )
    assert attack.status_code == 403, attack.text
    assert problem_type(attack) == "operation-not-allowed"
    binary = counter.post(
        "/v1/transfers/batch",
        raw=bytes(128),
        content_type="application/octet-stream",
        idempotency_key=key(),
    )
    assert binary.status_code == 403, binary.text
    assert balance(counter, victim) == 50_000 and balance(counter, thief) == 0
    internal = bank.post(
        "/v1/transfers/batch", {"transfers": [item(victim, thief, 1)]}, idempotency_key=key()
    )
    assert internal.status_code == 200 and internal.json()["summary"] == {"ok": 1}
    assert balance(counter, thief) == 1


def test_the_settlement_account_only_from_the_internal_channel(
    clients: dict[str, TallyClient],
) -> None:
    """Creating money out of the bank's settlement account (its floor is far below zero):
    a batch from the counter or a partner bank is 403; so are the single routes that let a
    channel name one of the bank's own accounts (a transfer into it, a payment to it, a cash
    deposit into clearing). The customer's balance and the bank's books do not move. The
    kernel's rules refuse the same leg from the internal channel too (the settlement account
    is debited only to settle with the bank's other accounts), which it may still post."""
    counter, app, open_api, bank = (
        clients["counter"],
        clients["app"],
        clients["open_api"],
        clients["bank"],
    )
    customer = funded_class_i(counter, 10_000)
    minted = {"transfers": [item(SETTLEMENT_ID, customer, 6_000_000)]}
    for channel in (counter, open_api, app):
        attack = channel.post("/v1/transfers/batch", minted, idempotency_key=key())
        assert attack.status_code == 403, attack.text
    assert balance(counter, customer) == 10_000
    into_settlement = counter.post(
        "/v1/transfers",
        {
            "debit_account_id": customer,
            "credit_account_id": str(SETTLEMENT_ID),
            "amount_minor": 100,
            "password": PASSWORD,
        },
        idempotency_key=key(),
    )
    assert into_settlement.status_code == 403, into_settlement.text
    assert problem_type(into_settlement) == "internal-account-not-allowed"
    pay_the_bank = hold(app, customer, str(SETTLEMENT_ID), 100, idempotency_key=key())
    assert pay_the_bank.status_code == 403, pay_the_bank.text
    vault_to_clearing = counter.post(
        f"/v1/accounts/{CLEARING_ID}/cash-deposits", {"amount_minor": 100}, idempotency_key=key()
    )
    assert vault_to_clearing.status_code == 403, vault_to_clearing.text
    assert balance(counter, customer) == 10_000
    assert balance(bank, str(SETTLEMENT_ID)) == 0 and balance(bank, str(CLEARING_ID)) == 0
    internal = bank.post(
        "/v1/transfers/batch",
        {"transfers": [item(SETTLEMENT_ID, customer, 500)]},
        idempotency_key=key(),
    )
    assert internal.status_code == 200, internal.text
    assert internal.json()["summary"] == {"debit_account_code_not_allowed": 1}
    settle = item(SETTLEMENT_ID, CLEARING_ID, 500) | {"code": "settlement"}
    settled = bank.post("/v1/transfers/batch", {"transfers": [settle]}, idempotency_key=key())
    assert settled.status_code == 200 and settled.json()["summary"] == {"ok": 1}
    assert balance(counter, customer) == 10_000
    assert balance(bank, str(SETTLEMENT_ID)) == -balance(bank, str(CLEARING_ID)) != 0


# --- holds, captures, voids and reversals belong to their channel -------------------


def test_another_channels_hold_cannot_be_captured_or_voided(
    clients: dict[str, TallyClient],
) -> None:
    """The app places a hold; WeChat (allowed to capture and void its own) tries to capture
    it into the merchant's account and to void it: each answer is byte for byte the answer
    for a hold that does not exist (404), and the hold stays pending with the money held.
    The app then captures it."""
    counter, app, wechat = clients["counter"], clients["app"], clients["wechat"]
    payer = funded_class_i(counter, 20_000)
    merchant = funded_class_i(counter, 0)
    placed = hold(app, payer, merchant, 7_000, idempotency_key=key())
    assert placed.status_code == 201, placed.text
    payment_id = placed.json()["transfer_id"]
    missing_id = "0123456789abcdef" * 2
    for action in ("capture", "void"):
        attack = wechat.post(f"/v1/payments/{payment_id}/{action}", {}, idempotency_key=key())
        missing = wechat.post(f"/v1/payments/{missing_id}/{action}", {}, idempotency_key=key())
        assert attack.status_code == 404, attack.text
        assert problem_type(attack) == "pending-transfer-not-found"
        assert {**attack.json(), "instance": ""} == {**missing.json(), "instance": ""}
    assert balance(counter, merchant) == 0
    read = clients["bank"].get(f"/v1/transfers/{payment_id}").json()
    assert read["kind"] == "hold" and read["state"] == "pending"
    captured = app.post(
        f"/v1/payments/{payment_id}/capture",
        {},
        idempotency_key=key(),
        session=open_session(app, payer),
    )
    assert captured.status_code == 201, captured.text
    assert balance(counter, merchant) == 7_000


def test_another_customers_hold_cannot_be_captured_or_voided(
    clients: dict[str, TallyClient],
) -> None:
    """At the app (a channel acting for one customer at a time) a customer who is neither
    the payer nor the merchant of a hold tries to capture and to void it with their own
    session: each answer is the answer for a hold that does not exist; without any session
    the app is told to prove the customer (401). The merchant, with its session, captures."""
    counter, app = clients["counter"], clients["app"]
    payer = funded_class_i(counter, 20_000)
    merchant = funded_class_i(counter, 0)
    stranger = funded_class_i(counter, 0)
    placed = hold(app, payer, merchant, 4_000, idempotency_key=key())
    assert placed.status_code == 201, placed.text
    payment_id = placed.json()["transfer_id"]
    missing_id = "0123456789abcdef" * 2
    strangers = open_session(app, stranger)
    for action in ("capture", "void"):
        path = f"/v1/payments/{payment_id}/{action}"
        attack = app.post(path, {}, idempotency_key=key(), session=strangers)
        missing = app.post(
            f"/v1/payments/{missing_id}/{action}", {}, idempotency_key=key(), session=strangers
        )
        assert attack.status_code == 404, attack.text
        assert {**attack.json(), "instance": ""} == {**missing.json(), "instance": ""}
        anonymous = app.post(path, {}, idempotency_key=key())
        assert anonymous.status_code == 401, anonymous.text
        assert problem_type(anonymous) == "customer-proof-required"
    assert balance(counter, merchant) == 0
    captured = app.post(
        f"/v1/payments/{payment_id}/capture",
        {},
        idempotency_key=key(),
        session=open_session(app, merchant),
    )
    assert captured.status_code == 201, captured.text
    assert balance(counter, merchant) == 4_000


def test_another_channels_transfer_cannot_be_reversed(clients: dict[str, TallyClient]) -> None:
    """The app moves money between two customers; the counter and the bank's channel (both
    allowed to reverse their own) try to reverse it back: 404 as for an unknown transfer,
    nothing moves. The counter reverses a transfer it made itself."""
    counter, app, bank = clients["counter"], clients["app"], clients["bank"]
    source = funded_class_i(counter, 10_000)
    target = funded_class_i(counter, 0)
    moved = app.post(
        "/v1/transfers",
        {
            "debit_account_id": source,
            "credit_account_id": target,
            "amount_minor": 4_000,
            "password": PASSWORD,
        },
        idempotency_key=key(),
    )
    assert moved.status_code == 201, moved.text
    original = moved.json()["transfer_id"]
    for channel in (counter, bank):
        attack = channel.post(f"/v1/transfers/{original}/reversals", {}, idempotency_key=key())
        assert attack.status_code == 404, attack.text
        assert problem_type(attack) == "reversal-target-not-found"
    assert balance(counter, source) == 6_000 and balance(counter, target) == 4_000
    own = counter.post(
        "/v1/transfers",
        {
            "debit_account_id": target,
            "credit_account_id": source,
            "amount_minor": 1_000,
            "password": PASSWORD,
        },
        idempotency_key=key(),
    )
    assert own.status_code == 201, own.text
    undone = counter.post(
        f"/v1/transfers/{own.json()['transfer_id']}/reversals", {}, idempotency_key=key()
    )
    assert undone.status_code == 201, undone.text
    assert balance(counter, source) == 6_000 and balance(counter, target) == 4_000


def unkeyed_transfer_id(channel_ledger_id: int, idempotency_key: str) -> str:
    """The id the server derived before issue 12: SHA-256 of public data, no secret."""
    digest = hashlib.sha256(
        b"tally-transfer\0%d\0%s\0%d" % (channel_ledger_id, idempotency_key.encode(), 0)
    ).digest()[:16]
    return f"{int.from_bytes(digest, 'little'):032x}"


def test_a_holds_id_cannot_be_computed_from_channel_and_key(
    clients: dict[str, TallyClient],
) -> None:
    """An attacker who knows (or guesses) a channel's Idempotency-Key computes the hold's id
    with the old unkeyed formula and tries to capture it: the server's id is another one
    (keyed with its secret), and the computed id names nothing (404 on read and capture)."""
    counter, app = clients["counter"], clients["app"]
    payer = funded_class_i(counter, 5_000)
    merchant = funded_class_i(counter, 0)
    hold_key = key()
    placed = hold(app, payer, merchant, 3_000, idempotency_key=hold_key)
    assert placed.status_code == 201, placed.text
    computed = unkeyed_transfer_id(CHANNEL_IDS["app"], hold_key)
    assert placed.json()["transfer_id"] != computed
    assert clients["bank"].get(f"/v1/transfers/{computed}").status_code == 404
    attack = app.post(
        f"/v1/payments/{computed}/capture",
        {},
        idempotency_key=key(),
        session=open_session(app, payer),
    )
    assert attack.status_code == 404 and problem_type(attack) == "pending-transfer-not-found"
    assert balance(counter, merchant) == 0
    replayed = hold(app, payer, merchant, 3_000, idempotency_key=hold_key)
    assert replayed.status_code == 201 and replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.json()["transfer_id"] == placed.json()["transfer_id"]


# --- the idempotency fingerprint covers every field ---------------------------------


def beneficiary(name: str, account_number: str) -> dict[str, str]:
    return {"bank_code": "ICBC", "account_number": account_number, "name": name}


def test_a_reused_key_with_another_beneficiary_is_a_conflict(
    clients: dict[str, TallyClient],
) -> None:
    """An external transfer, then the same Idempotency-Key with the same amount and account
    but another beneficiary (a gateway that rewrote the payee): refused like any reused key
    with another payload (422 exists-with-different-user-data, as for another amount), and
    the money left once, to the first beneficiary. A true retry is still answered with the
    first transfer."""
    counter, app = clients["counter"], clients["app"]
    source = funded_class_i(counter, 10_000)
    reused = key()
    body = {
        "debit_account_id": source,
        "amount_minor": 2_000,
        "beneficiary": beneficiary("王五", "622202020011"),
        "password": PASSWORD,
    }
    first = app.post("/v1/external-transfers", body, idempotency_key=reused)
    assert first.status_code == 201, first.text
    for changed in (
        beneficiary("赵六", "622202020011"),
        beneficiary("王五", "622202020099"),
        {**beneficiary("王五", "622202020011"), "bank_code": "ABC"},
    ):
        other = app.post(
            "/v1/external-transfers", {**body, "beneficiary": changed}, idempotency_key=reused
        )
        assert other.status_code == 422, other.text
        assert problem_type(other) == "exists-with-different-user-data"
    retry = app.post("/v1/external-transfers", body, idempotency_key=reused)
    assert retry.status_code == 201 and retry.json()["transfer_id"] == first.json()["transfer_id"]
    assert balance(counter, source) == 8_000


def test_a_reused_key_with_another_payer_is_a_conflict(clients: dict[str, TallyClient]) -> None:
    """A partner bank credits a customer from one payer, then sends the same clearing
    reference (the operation key of a credit) and Idempotency-Key with the same amount and
    account but another payer: 422 as for any reused key with another payload, credited
    once."""
    counter, open_api = clients["counter"], clients["open_api"]
    target = funded_class_i(counter, 0)
    reused = key()
    body = {
        "credit_account_id": target,
        "amount_minor": 3_000,
        "payer": beneficiary("付款人", "6222020200112233"),
        "clearing_reference": f"CLR{reused}"[:32],
    }
    first = open_api.post("/v1/incoming-transfers", body, idempotency_key=reused)
    assert first.status_code == 201, first.text
    other = open_api.post(
        "/v1/incoming-transfers",
        {**body, "payer": beneficiary("另一人", "6222020200112233")},
        idempotency_key=reused,
    )
    assert other.status_code == 422, other.text
    assert problem_type(other) == "exists-with-different-user-data"
    retry = open_api.post("/v1/incoming-transfers", body, idempotency_key=reused)
    assert retry.status_code == 201 and retry.json()["transfer_id"] == first.json()["transfer_id"]
    assert balance(counter, target) == 3_000


# --- account opening honours the Idempotency-Key ------------------------------------


def class_ii_body(customer: dict[str, Any], card: str, account_class: str = "class_ii") -> Any:
    return {
        "class": account_class,
        "bound_card": bound_card_of(customer, card),
        "password": PASSWORD,
    }


def accounts_of(client: TallyClient, customer: dict[str, Any]) -> list[str]:
    read = client.get(f"/v1/customers/{customer['customer_id']}")
    assert read.status_code == 200, read.text
    return sorted(str(account["account_id"]) for account in read.json()["accounts"])


def test_two_openings_with_one_key_open_one_account(tmp_path: Path) -> None:
    """The app sends one opening twice with one Idempotency-Key (a retry after a timeout),
    twice more at the same instant, and once more after the server restarted: every answer
    is the first account, and the customer holds exactly one account."""
    server = TallyServer(tmp_path / "data").start()
    try:
        with server.client("counter") as counter, server.client("app") as app:
            customer = register(counter)
            card = open_class_i(counter, customer, PASSWORD)
            # The app binds the card as the customer (the counter registered them).
            session = open_session(app, card, PASSWORD)
            bind_card(app, customer, card, session=session)
            opening_key = key()
            path = f"/v1/customers/{customer['customer_id']}/accounts"
            body = class_ii_body(customer, card)
            first = app.post(path, body, idempotency_key=opening_key)
            assert first.status_code == 201, first.text
            account = first.json()["account_id"]
            again = app.post(path, body, idempotency_key=opening_key)
            assert again.status_code == 201, again.text
            assert again.json()["account_id"] == account
            assert again.headers.get("idempotent-replayed") == "true"
            concurrent_key = key()
            bind_card(app, customer, card, session=session)  # the first opening used its binding
            answers: list[Any] = []

            def send() -> None:
                answers.append(app.post(path, body, idempotency_key=concurrent_key))

            threads = [threading.Thread(target=send) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            # The channel tier answers a duplicate still in flight 409 (its in-flight guard);
            # whichever was answered 201 names the one account, and so does a retry.
            opened = [answer for answer in answers if answer.status_code == 201]
            assert opened, [answer.text for answer in answers]
            for answer in answers:
                if answer.status_code != 201:
                    assert problem_type(answer) == "idempotency-key-in-flight", answer.text
            retried = app.post(path, body, idempotency_key=concurrent_key)
            assert retried.status_code == 201, retried.text
            assert {answer.json()["account_id"] for answer in [*opened, retried]} == {
                retried.json()["account_id"]
            }
            assert len(accounts_of(counter, customer)) == 3  # Class I, and one per key
        assert server.stop() == 0, server.log()
        server.start()
        with server.client("counter") as counter, server.client("app") as app:
            after = app.post(path, body, idempotency_key=opening_key)
            assert after.status_code == 201, after.text
            assert after.json()["account_id"] == account
            assert len(accounts_of(counter, customer)) == 3
    finally:
        if server.process is not None:
            server.stop()


def test_one_key_with_other_opening_fields_is_a_conflict(
    clients: dict[str, TallyClient],
) -> None:
    """The same Idempotency-Key for another class or another password: 422
    idempotency-key-reused each time (as a reused key with another amount), and no second
    account is opened."""
    counter, app = clients["counter"], clients["app"]
    customer = register(counter)
    card = open_class_i(counter, customer, PASSWORD)
    bind_card(app, customer, card, session=open_session(app, card, PASSWORD))
    opening_key = key()
    path = f"/v1/customers/{customer['customer_id']}/accounts"
    body = class_ii_body(customer, card)
    first = app.post(path, body, idempotency_key=opening_key)
    assert first.status_code == 201, first.text
    before = accounts_of(counter, customer)
    for changed in (
        class_ii_body(customer, card, "class_iii"),
        {**body, "password": "246801"},
    ):
        other = app.post(path, changed, idempotency_key=opening_key)
        assert other.status_code == 422, other.text
        assert problem_type(other) == "idempotency-key-reused"
    assert accounts_of(counter, customer) == before
