"""The ledger kernel's own money authorization, attacked through a real `tally serve`.

Each test is one item of issue 12's "who may move what" that the kernel enforces,
whatever route or service a posting came through: transfer codes allowed per
channel and per kind of account, finite floors on the bank's internal accounts,
daily caps on money in per channel, a daily cap per customer across channels,
and strong authentication above 50,000 CNY a day off the counter. The batch
route of the bank's internal channel is the sharpest tool an attacker with a
channel key has (it names the code and both accounts), so the code and floor
tests use it: a refusal there is the kernel's, not a service's.

Every scenario is checked to have happened: the refused posting left the
balances as they were, and the posting just inside the limit went through.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels.client import TallyClient
from ledger.constants import CLEARING_ID, SETTLEMENT_ID
from tests.admin_helpers import no_risk_rules
from tests.http_helpers import (
    REPO_ROOT,
    TallyServer,
    balance,
    cash_deposit,
    key,
    open_class_i,
    open_remote,
    problem_type,
    register,
)

CNY = 100  # fen
PASSWORD = "135790"
PAYER = {"bank_code": "CMB", "account_number": "6225880137001234", "name": "钱七"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    """`tally serve` with the packaged example rules (core/data/limits.toml), without the
    risk rules (the shipped ones delay a large transfer to a new payee)."""
    directory = tmp_path_factory.mktemp("kernel-limits")
    running = TallyServer(directory / "data", extra=no_risk_rules(directory)).start()
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


@pytest.fixture(scope="module")
def bank(server: TallyServer) -> Iterator[TallyClient]:
    with server.client("bank") as client:
        yield client


# The most one cash deposit at the counter may be (the supervisor's cash cap in the example
# actor registry): larger sums are deposited in parts.
COUNTER_DEPOSIT_MAX = 500_000 * CNY


def class_i(counter: TallyClient, app: TallyClient, amount_minor: int = 0) -> str:
    account = open_class_i(counter, register(app))
    while amount_minor > 0:
        part = min(amount_minor, COUNTER_DEPOSIT_MAX)
        cash_deposit(counter, account, part)
        amount_minor -= part
    return account


def batch(bank: TallyClient, *items: tuple[int | str, int | str, int, str]) -> list[str]:
    """Post (debit, credit, amount, code) items on the bank's batch route; their results."""
    transfers = [
        {
            "debit_account_id": str(debit),
            "credit_account_id": str(credit),
            "amount_minor": amount,
            "code": code,
        }
        for debit, credit, amount, code in items
    ]
    response = bank.post("/v1/transfers/batch", {"transfers": transfers}, idempotency_key=key())
    assert response.status_code == 200, response.text
    return [result["result"] for result in response.json()["results"]]


def transfer(client: TallyClient, debit: str, credit: str, amount_minor: int, **extra: Any) -> Any:
    body = {
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount_minor": amount_minor,
        "password": PASSWORD,
        **extra,
    }
    return client.post("/v1/transfers", body, idempotency_key=key())


def refused_with(response: Any, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert problem_type(response) == slug, response.text


def test_transfer_codes_are_allowed_per_channel_and_per_kind_of_account(
    server: TallyServer, counter: TallyClient, app: TallyClient, bank: TallyClient, tmp_path: Path
) -> None:
    """The issue's attack: 60,000 CNY out of a Class II account under the code `fee`, past
    its 10,000 CNY daily cap. Even the bank's own channel, which may post fees, cannot:
    a fee goes only to the fees account (not to a customer, not to settlement), a
    bucket-exempt code like `wealth` needs one of the bank's own accounts on one side,
    and settlement never touches a customer. Where the rule file does not give a channel
    the code `fee`, the kernel refuses that channel the code outright."""
    customer = register(app)
    class_ii = open_remote(app, customer, password=PASSWORD)
    other = class_i(counter, app)
    funding = 70_000 * CNY
    assert batch(bank, (CLEARING_ID, class_ii, funding, "topup_bound")) == ["ok"]
    assert balance(counter, class_ii) == funding
    assert batch(
        bank,
        (class_ii, other, 60_000 * CNY, "fee"),
        (class_ii, SETTLEMENT_ID, 60_000 * CNY, "fee"),
        (class_ii, other, 60_000 * CNY, "wealth"),
        (class_ii, other, 60_000 * CNY, "settlement"),
        (SETTLEMENT_ID, other, 60_000 * CNY, "transfer"),
    ) == [
        "credit_account_code_not_allowed",
        "credit_account_code_not_allowed",
        "code_needs_bank_account",
        "debit_account_code_not_allowed",
        "debit_account_code_not_allowed",
    ]
    assert balance(counter, class_ii) == funding and balance(counter, other) == 0

    # The same channel under a rule file that does not let it post fees at all.
    rules = tmp_path / "limits.toml"
    text = (REPO_ROOT / "examples" / "limits.toml").read_text()
    batch_channel = 'kind = "internal"                    # interest settlement and other'
    assert batch_channel in text
    codes = 'transfer_codes = ["topup_bound", "settlement"]\n'
    rules.write_text(text.replace(batch_channel, codes + batch_channel))
    strict = TallyServer(tmp_path / "strict", extra=["--rules", str(rules)]).start()
    try:
        with (
            strict.client("counter") as desk,
            strict.client("app") as phone,
            strict.client("bank") as own,
        ):
            target = class_i(desk, phone, 100 * CNY)
            source = class_i(desk, phone, 1_000 * CNY)
            assert batch(own, (source, target, 600 * CNY, "fee")) == ["channel_code_not_allowed"]
            assert balance(desk, source) == 1_000 * CNY
            assert balance(desk, target) == 100 * CNY
    finally:
        strict.stop()


def test_the_settlement_account_stops_at_its_floor(
    counter: TallyClient, app: TallyClient, bank: TallyClient
) -> None:
    """Money made from nothing: the bank channel debits the settlement account. Its floor
    is finite (100 million CNY in the example rules, not -2**62): the posting that reaches
    it goes through, one fen more does not, and neither settlement nor the cash vault can
    pay a customer directly under an ordinary transfer code."""
    floor = 100_000_000 * CNY
    assert batch(
        bank,
        (SETTLEMENT_ID, CLEARING_ID, floor, "settlement"),
        (SETTLEMENT_ID, CLEARING_ID, 1, "settlement"),
    ) == ["ok", "exceeds_internal_floor"]
    assert batch(bank, (SETTLEMENT_ID, CLEARING_ID, 2**62, "settlement")) == [
        "exceeds_internal_floor"
    ]
    customer = class_i(counter, app)
    assert batch(bank, (SETTLEMENT_ID, customer, 1_000 * CNY, "transfer")) == [
        "debit_account_code_not_allowed"
    ]
    assert balance(counter, customer) == 0
    # Put it back: the floor bounds the balance, not a count of postings.
    assert batch(bank, (CLEARING_ID, SETTLEMENT_ID, floor, "settlement")) == ["ok"]


def test_credits_are_capped_per_channel_and_day(
    server: TallyServer, counter: TallyClient, app: TallyClient
) -> None:
    """Money in counts against a channel's daily cap per account, like money out: a partner
    bank's incoming transfers stop at 100,000 CNY a day (5,000 CNY a transfer) and an
    ATM's cash deposits at 50,000 CNY a day (20,000 CNY a deposit)."""
    account = class_i(counter, app)
    with server.client("open_api") as partner:
        for _ in range(20):
            response = partner.post(
                "/v1/incoming-transfers",
                {
                    "credit_account_id": account,
                    "amount_minor": 5_000 * CNY,
                    "payer": PAYER,
                    "clearing_reference": "CMB" + key().replace("-", ""),
                },
                idempotency_key=key(),
            )
            assert response.status_code == 201, response.text
        one_more = partner.post(
            "/v1/incoming-transfers",
            {
                "credit_account_id": account,
                "amount_minor": 1,
                "payer": PAYER,
                "clearing_reference": "CMB" + key().replace("-", ""),
            },
            idempotency_key=key(),
        )
    refused_with(one_more, 422, "exceeds-channel-daily-inflow-cap")
    assert balance(counter, account) == 100_000 * CNY

    with server.client("atm") as atm:
        for _ in range(2):
            response = atm.post(
                f"/v1/accounts/{account}/cash-deposits",
                {"amount_minor": 20_000 * CNY},
                idempotency_key=key(),
            )
            assert response.status_code == 201, response.text
        third = atm.post(
            f"/v1/accounts/{account}/cash-deposits",
            {"amount_minor": 20_000 * CNY},
            idempotency_key=key(),
        )
    refused_with(third, 422, "exceeds-channel-daily-inflow-cap")
    assert balance(counter, account) == 140_000 * CNY


def test_one_customer_is_capped_across_channels(counter: TallyClient, app: TallyClient) -> None:
    """1,000,000 CNY a customer a day, whatever the channel: 960,000 CNY out at the counter
    leaves 40,000 CNY for the app, so 50,000 CNY from the app is refused and 40,000 CNY
    goes through. Another customer's cap is their own."""
    source = class_i(counter, app, 1_100_000 * CNY)
    payee = class_i(counter, app)
    assert transfer(counter, source, payee, 960_000 * CNY).status_code == 201
    refused_with(transfer(app, source, payee, 50_000 * CNY), 422, "exceeds-customer-daily-cap")
    assert balance(counter, source) == 140_000 * CNY
    assert transfer(app, source, payee, 40_000 * CNY).status_code == 201
    refused_with(transfer(app, source, payee, 1), 422, "exceeds-customer-daily-cap")
    assert balance(counter, payee) == 1_000_000 * CNY
    # The payee is another customer: their own day is untouched.
    assert transfer(app, payee, source, 10_000 * CNY).status_code == 201


def test_strong_authentication_above_50000_a_day_off_the_counter(
    counter: TallyClient, app: TallyClient
) -> None:
    """DOMAIN.md (2016 No. 261): off the counter, a customer's debits past 50,000 CNY a day
    need a second factor. With the password alone the 30,000 + 30,000 CNY second transfer
    is refused (403); the same transfer with the password and a second factor the channel
    verified goes through; the counter itself is face to face and needs none."""
    source = class_i(counter, app, 200_000 * CNY)
    payee = class_i(counter, app)
    assert transfer(app, source, payee, 30_000 * CNY).status_code == 201
    second = transfer(app, source, payee, 30_000 * CNY)
    refused_with(second, 403, "strong-auth-required")
    assert balance(counter, source) == 170_000 * CNY
    strong = transfer(app, source, payee, 30_000 * CNY, second_factor="ukey")
    assert strong.status_code == 201, strong.text
    assert balance(counter, source) == 140_000 * CNY
    assert transfer(counter, source, payee, 30_000 * CNY).status_code == 201
