"""The PBoC account-class rules of DOMAIN.md, end to end over HTTP, on asyncio and trio.

Class II: 10,000 CNY a day in each of the inflow and outflow buckets, every
counted kind of movement sharing its bucket; Class III: 2,000 out a day and
never more than 2,000 on the account; money to or from the bound card is
not counted; a same-day reversal (or a void) gives the quota back; channel
caps apply per transaction and per account per day. The quota each bucket
has left is visible on the account.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from channels.client import TallyClient
from tests.http_helpers import (
    TallyServer,
    card_number,
    cash_deposit,
    key,
    open_class_i,
    open_remote,
    open_session,
    problem_type,
    read_as_holder,
    register,
    topup,
)

CNY = 100  # fen


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TallyServer]:
    data = tmp_path_factory.mktemp(f"limits-{request.param}") / "data"
    running = TallyServer(data, backend=request.param).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def counter(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("counter") as client:
        yield client


@pytest.fixture(scope="module")
def app(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("app") as client:
        yield client


def class_ii(
    app: TallyClient, funds_minor: int, account_class: str = "class_ii"
) -> tuple[dict[str, Any], str]:
    customer = register(app)
    account = open_remote(app, customer, account_class)
    if funds_minor:
        response = topup(app, account, funds_minor)
        assert response.status_code == 201, response.text
    return customer, account


def other_account(counter: TallyClient, funds_minor: int = 0) -> str:
    account = open_class_i(counter, register(counter))
    if funds_minor:
        cash_deposit(counter, account, funds_minor)
    return account


def send(client: TallyClient, debit: str, credit: str, amount_minor: int) -> Any:
    return client.post(
        "/v1/transfers",
        {
            "debit_account_id": debit,
            "credit_account_id": credit,
            "amount_minor": amount_minor,
            "password": "135790",
        },
        idempotency_key=key(),
    )


def quota(client: TallyClient, account: str) -> dict[str, Any]:
    result: dict[str, Any] = read_as_holder(client, account)["quota"]
    return result


def test_class_ii_daily_outflow(app: TallyClient, counter: TallyClient) -> None:
    """Class II sends at most 10,000 CNY a day to non-bound accounts; one fen more is refused."""
    _, account = class_ii(app, 20_000 * CNY)
    target = other_account(counter)
    assert send(app, account, target, 10_000 * CNY).status_code == 201
    over = send(app, account, target, 1)
    assert over.status_code == 422 and problem_type(over) == "exceeds-daily-outflow"
    assert over.json()["ledger_result"] == {"code": 72, "name": "exceeds_daily_outflow"}
    left = quota(app, account)["outflow"]
    assert left["daily"] == {
        "limit_minor": 1_000_000,
        "used_minor": 1_000_000,
        "remaining_minor": 0,
    }
    assert left["yearly"]["remaining_minor"] == 19_000_000


def test_outflow_bucket_is_shared_and_bound_card_is_exempt(
    app: TallyClient, counter: TallyClient
) -> None:
    """Payments, external transfers and transfers share one bucket; the bound card is exempt."""
    _, account = class_ii(app, 20_000 * CNY)
    merchant = other_account(counter)
    hold = app.post(
        "/v1/payments",
        {
            "debit_account_id": account,
            "merchant_account_id": merchant,
            "amount_minor": 6_000 * CNY,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    assert hold.status_code == 201, hold.text
    out = app.post(
        "/v1/external-transfers",
        {
            "debit_account_id": account,
            "amount_minor": 4_000 * CNY,
            "password": "135790",
            "beneficiary": {
                "bank_code": "ABC",
                "account_number": card_number("622848"),
                "name": "孙九",
            },
        },
        idempotency_key=key(),
    )
    assert out.status_code == 201, out.text
    over = send(app, account, merchant, 1)
    assert over.status_code == 422 and problem_type(over) == "exceeds-daily-outflow"
    home = app.post(
        f"/v1/accounts/{account}/withdrawals",
        {"amount_minor": 5_000 * CNY, "password": "135790"},
        idempotency_key=key(),
    )
    assert home.status_code == 201, home.text
    assert quota(app, account)["outflow"]["daily"]["used_minor"] == 10_000 * CNY


def test_class_ii_inflow_bucket_cash_and_transfers(app: TallyClient, counter: TallyClient) -> None:
    """Cash deposits and transfers in share the 10,000 CNY inflow bucket; top-ups do not count."""
    customer, account = class_ii(app, 0)
    face = counter.post(
        f"/v1/accounts/{account}/face-to-face", {"id_number": customer["_id_number"]}
    )
    assert face.status_code == 200
    cash_deposit(counter, account, 6_000 * CNY)
    source = other_account(counter, 10_000 * CNY)
    assert send(counter, source, account, 4_000 * CNY).status_code == 201
    over = send(counter, source, account, 1)
    assert over.status_code == 422 and problem_type(over) == "exceeds-daily-inflow"
    assert topup(app, account, 3_000 * CNY).status_code == 201
    bucket = quota(app, account)["inflow"]["daily"]
    assert bucket["used_minor"] == 10_000 * CNY and bucket["remaining_minor"] == 0


def test_class_iii_balance_cap_and_outflow(app: TallyClient, counter: TallyClient) -> None:
    """Class III never holds more than 2,000 CNY and sends at most 2,000 CNY a day."""
    _, account = class_ii(app, 2_000 * CNY, "class_iii")
    over_cap = topup(app, account, 1)
    assert over_cap.status_code == 422 and problem_type(over_cap) == "exceeds-balance-cap"
    target = other_account(counter)
    assert send(app, account, target, 2_000 * CNY).status_code == 201
    assert topup(app, account, 1 * CNY).status_code == 201
    over = send(app, account, target, 1)
    assert over.status_code == 422 and problem_type(over) == "exceeds-daily-outflow"
    view = read_as_holder(app, account)
    assert view["quota"]["outflow"]["daily"]["limit_minor"] == 2_000 * CNY
    assert view["quota"]["balance_cap_minor"] == 2_000 * CNY


def test_same_day_reversal_restores_the_quota(app: TallyClient, counter: TallyClient) -> None:
    """Reversing a counted transfer the same day gives the daily quota back (the counter
    reverses a transfer it made: only a transfer's own channel may reverse it)."""
    _, account = class_ii(app, 20_000 * CNY)
    target = other_account(counter)
    first = send(counter, account, target, 10_000 * CNY)
    assert first.status_code == 201, first.text
    assert send(app, account, target, 1).status_code == 422
    reversed_ = counter.post(
        f"/v1/transfers/{first.json()['transfer_id']}/reversals", idempotency_key=key()
    )
    assert reversed_.status_code == 201, reversed_.text
    assert quota(app, account)["outflow"]["daily"]["used_minor"] == 0
    assert send(app, account, target, 10_000 * CNY).status_code == 201


def test_void_gives_the_hold_quota_back(app: TallyClient, counter: TallyClient) -> None:
    """A hold takes quota when placed; voiding it returns the quota."""
    _, account = class_ii(app, 20_000 * CNY)
    merchant = other_account(counter)
    hold = app.post(
        "/v1/payments",
        {
            "debit_account_id": account,
            "merchant_account_id": merchant,
            "amount_minor": 10_000 * CNY,
            "password": "135790",
        },
        idempotency_key=key(),
    )
    assert quota(app, account)["outflow"]["daily"]["remaining_minor"] == 0
    voided = app.post(
        f"/v1/payments/{hold.json()['transfer_id']}/void",
        idempotency_key=key(),
        session=open_session(app, account),  # the app voids a hold for its payer
    )
    assert voided.status_code == 201
    assert quota(app, account)["outflow"]["daily"]["remaining_minor"] == 10_000 * CNY


def test_non_bound_inflow_needs_face_to_face_on_class_ii(
    app: TallyClient, counter: TallyClient
) -> None:
    """A remote Class II takes no money from non-bound accounts until checked face to face."""
    _, account = class_ii(app, 0)
    source = other_account(counter, 100 * CNY)
    refused = send(counter, source, account, 1 * CNY)
    assert refused.status_code == 422 and problem_type(refused) == "non-bound-inflow-disabled"


def test_channel_caps(counter: TallyClient, server: TallyServer) -> None:
    """WeChat caps one transaction at 20,000 CNY and an account's day at 50,000 CNY."""
    source = other_account(counter, 100_000 * CNY)
    target = other_account(counter)
    with server.client("wechat") as wechat:
        one = send(wechat, source, target, 20_000 * CNY + 1)
        assert one.status_code == 422 and problem_type(one) == "exceeds-channel-transfer-cap"
        assert send(wechat, source, target, 20_000 * CNY).status_code == 201
        assert send(wechat, source, target, 20_000 * CNY).status_code == 201
        day = send(wechat, source, target, 10_000 * CNY + 1)
        assert day.status_code == 422 and problem_type(day) == "exceeds-channel-daily-cap"
        view = read_as_holder(wechat, source)
        assert view["channel_quota"]["daily"]["remaining_minor"] == 10_000 * CNY
    assert send(counter, source, target, 30_000 * CNY).status_code == 201  # the counter has no cap
