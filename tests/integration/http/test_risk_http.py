"""The risk stage over HTTP: every rule type and every outcome against a real server.

Each test starts its own `tally serve` (hypercorn, the journal fsync'd) with a rule set
the test writes (`--risk-rules` in tmp_path), so the only rules that can fire are the
test's; where time matters the server runs on a clock the test moves
(tests/clock_serve.py). Money moves through the app channel with the holder's
password, and sometimes the signed `device` object; the bank's channel reads the
balances and the recorded decisions (GET /v1/risk/decisions/{id}).

Every test checks the money, not only the status: an allowed transfer moved it, a
blocked or challenged one left every balance as it was, a delayed or reviewed one is a
pending hold until the bank releases or returns it.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.admin_helpers import operator_client, risk_rules_text, wait_for
from tests.http_helpers import (
    TallyServer,
    card_number,
    cash_deposit,
    key,
    mobile,
    open_class_i,
    open_session,
    problem_type,
    register,
    resident_id,
)

CNY = 100
PASSWORD = "135790"
SHANGHAI = datetime.timezone(datetime.timedelta(hours=8))


class Bank:
    """One server with its rule set, and the clients the tests use."""

    def __init__(self, server: TallyServer) -> None:
        self.server = server
        self.counter = server.client("counter")
        self.app = server.client("app")
        self.bank = server.client("bank")
        self.offset_s = 0.0

    def close(self) -> None:
        for client in (self.counter, self.app, self.bank):
            client.close()

    def move_clock(self, seconds: float) -> None:
        """Move the services' clock `seconds` further ahead (never back)."""
        assert seconds >= 0
        self.offset_s += seconds
        self.server.move_clock(self.offset_s)

    def account(self, amount_minor: int = 100_000 * CNY, **customer: Any) -> str:
        """A funded Class I account of a new customer (cash at the counter: not screened
        by the default codes)."""
        holder = register(self.counter, **customer)
        account = open_class_i(self.counter, holder)
        if amount_minor:
            cash_deposit(self.counter, account, amount_minor)
        return account

    def balance(self, account: str) -> dict[str, int]:
        response = self.bank.get(f"/v1/accounts/{account}")
        assert response.status_code == 200, response.text
        body = response.json()
        return {
            "balance": int(body["balance_minor"]),
            "pending_debits": int(body["pending_debits_minor"]),
        }

    def transfer(
        self,
        debit: str,
        credit: str,
        amount_minor: int,
        *,
        device: dict[str, str] | None = None,
        second_factor: str | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        body: dict[str, Any] = {
            "debit_account_id": debit,
            "credit_account_id": credit,
            "amount_minor": amount_minor,
            "password": PASSWORD,
        }
        if device is not None:
            body["device"] = device
        if second_factor is not None:
            body["second_factor"] = second_factor
        return self.app.post("/v1/transfers", body, idempotency_key=idempotency_key or key())

    def decision(self, decision_id: str) -> dict[str, Any]:
        response = self.bank.get(f"/v1/risk/decisions/{decision_id}")
        assert response.status_code == 200, response.text
        decision: dict[str, Any] = response.json()
        return decision

    def no_decision(self, transfer_id: str) -> bool:
        response = self.bank.get(f"/v1/risk/decisions/{transfer_id}")
        return response.status_code == 404 and problem_type(response) == "risk-decision-not-found"


@pytest.fixture
def bank_with(tmp_path: Path) -> Iterator[Callable[..., Bank]]:
    """Start a server with the rule set `rules` (lists and [[rules]] tables)."""
    started: list[Bank] = []

    def start(rules: str, *, clock: bool = False, **holds: int) -> Bank:
        index = len(started)
        path = tmp_path / f"risk-{index}.toml"
        path.write_text(risk_rules_text(rules, **holds))
        server = TallyServer(
            tmp_path / f"data-{index}",
            extra=["--risk-rules", str(path)],
            clock_file=tmp_path / f"clock-{index}" if clock else None,
        ).start()
        bank = Bank(server)
        started.append(bank)
        return bank

    yield start
    for bank in started:
        bank.close()
        bank.server.stop()


def posted(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "posted"
    return body


def refused_by(response: Any, slug: str) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    assert problem_type(response) == slug
    body: dict[str, Any] = response.json()
    assert "rules" not in body  # which rules fired is never told to the channel
    return body


def held(response: Any, status: str) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["decision_id"] == body["transfer_id"]
    return body


# --- velocity ----------------------------------------------------------------------------


def test_velocity_by_account_blocks_the_transfer_over_the_count(
    bank_with: Callable[..., Bank],
) -> None:
    bank = bank_with(
        """
[[rules]]
name = "account_burst"
type = "velocity"
scope = "account"
window = "1h"
count_max = 2
outcome = "block"
"""
    )
    payer, payee, other = bank.account(), bank.account(0), bank.account()
    for _ in range(2):
        posted(bank.transfer(payer, payee, 10 * CNY))
    before = bank.balance(payer)
    problem = refused_by(bank.transfer(payer, payee, 10 * CNY), "risk-blocked")
    assert bank.balance(payer) == before  # nothing posted
    decision = bank.decision(problem["decision_id"])
    assert decision["outcome"] == "block" and decision["rules"] == ["account_burst"]
    assert decision["inputs"]["account_burst"] == 3  # the count it saw, this one included
    assert decision["state"] == "refused"
    assert bank.bank.get(f"/v1/transfers/{problem['decision_id']}").status_code == 404
    metrics = httpx.get(bank.server.url + "/metrics").text
    assert 'tally_risk_decisions_total{outcome="block"} 1.0' in metrics
    screened = next(line for line in metrics.splitlines() if line.startswith("tally_risk_screened"))
    assert float(screened.split()[-1]) >= 3
    # Another account's counter is its own.
    posted(bank.transfer(other, payee, 10 * CNY))


def test_velocity_by_amount_sums_the_window(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[[rules]]
name = "account_sum"
type = "velocity"
scope = "account"
window = "1d"
sum_max = "1000.00"
outcome = "block"
"""
    )
    payer, payee = bank.account(), bank.account(0)
    posted(bank.transfer(payer, payee, 600 * CNY))
    posted(bank.transfer(payer, payee, 400 * CNY))  # 1,000.00 in all: at the limit
    problem = refused_by(bank.transfer(payer, payee, 1), "risk-blocked")
    assert bank.decision(problem["decision_id"])["inputs"]["account_sum"] == 100_001


def test_velocity_by_device_and_by_ip_across_accounts(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[[rules]]
name = "device_burst"
type = "velocity"
scope = "device"
window = "10m"
count_max = 2
outcome = "block"

[[rules]]
name = "ip_burst"
type = "velocity"
scope = "ip"
window = "10m"
count_max = 3
outcome = "challenge"
"""
    )
    payee = bank.account(0)
    payers = [bank.account() for _ in range(5)]
    phone = {"id": "android-farm-01", "ip": "198.51.100.20"}
    posted(bank.transfer(payers[0], payee, 10 * CNY, device=phone))
    posted(bank.transfer(payers[1], payee, 10 * CNY, device=phone))
    # A third account on the same device: the device's count, not the account's.
    problem = refused_by(bank.transfer(payers[2], payee, 10 * CNY, device=phone), "risk-blocked")
    assert bank.decision(problem["decision_id"])["rules"] == ["device_burst"]
    # Other devices behind the same address: the IP's count (the blocked one not counted).
    posted(bank.transfer(payers[2], payee, 10 * CNY, device={"id": "ios-2", "ip": "198.51.100.20"}))
    problem = refused_by(
        bank.transfer(payers[3], payee, 10 * CNY, device={"id": "ios-3", "ip": "198.51.100.20"}),
        "risk-challenge",
    )
    decision = bank.decision(problem["decision_id"])
    assert decision["rules"] == ["ip_burst"] and decision["inputs"]["ip_burst"] == 4
    assert decision["context"]["ip"] == "198.51.100.20"
    # Without a device object neither rule can fire.
    posted(bank.transfer(payers[4], payee, 10 * CNY))


def test_velocity_by_payee_sends_a_mule_to_review(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[[rules]]
name = "mule_inflow"
type = "velocity"
scope = "payee"
window = "1h"
count_max = 3
outcome = "review"
""",
        review_s=86_400,
    )
    mule = bank.account(0)
    payers = [bank.account() for _ in range(4)]
    for payer in payers[:3]:
        posted(bank.transfer(payer, mule, 50 * CNY))
    hold = held(bank.transfer(payers[3], mule, 50 * CNY), "review")
    assert bank.balance(mule)["balance"] == 150 * CNY  # the fourth is not there yet
    assert bank.balance(payers[3])["pending_debits"] == 50 * CNY
    assert bank.decision(hold["decision_id"])["rules"] == ["mule_inflow"]


# --- history, new payee, new device, time of day ---------------------------------------


def test_history_challenges_an_amount_far_above_the_usual(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[[rules]]
name = "unusual_amount"
type = "history"
scope = "account"
window = "30d"
multiple = "5"
samples_min = 3
outcome = "challenge"
"""
    )
    payer, payee = bank.account(), bank.account(0)
    for _ in range(3):  # the samples the median is taken of
        posted(bank.transfer(payer, payee, 100 * CNY))
    posted(bank.transfer(payer, payee, 500 * CNY))  # 5x the median: not more than 5x
    problem = refused_by(bank.transfer(payer, payee, 501 * CNY), "risk-challenge")
    decision = bank.decision(problem["decision_id"])
    assert decision["rules"] == ["unusual_amount"]
    assert decision["inputs"]["unusual_amount"] == 100 * CNY  # the median it compared with


def test_new_payee_then_large_transfer_until_the_payee_is_known(
    bank_with: Callable[..., Bank],
) -> None:
    bank = bank_with(
        """
[[rules]]
name = "new_payee_large"
type = "new_payee"
window = "1d"
amount_min = "1000.00"
outcome = "challenge"
""",
        clock=True,
    )
    payer, payee = bank.account(), bank.account(0)
    posted(bank.transfer(payer, payee, 999 * CNY))  # under the amount: not judged
    key_first = key()
    problem = refused_by(
        bank.transfer(payer, payee, 1000 * CNY, idempotency_key=key_first), "risk-challenge"
    )
    assert problem["factors"] and problem["decision_id"]
    # The retry with a second factor meets the challenge: posted, the payee now known.
    posted(bank.transfer(payer, payee, 1000 * CNY, idempotency_key=key_first, second_factor="sms"))
    assert bank.decision(problem["decision_id"])["state"] == "posted"
    bank.move_clock(86_400 + 60)
    posted(bank.transfer(payer, payee, 1000 * CNY))  # known for more than the window


def test_new_device_then_large_transfer(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[[rules]]
name = "new_device_large"
type = "new_device"
window = "1d"
amount_min = "500.00"
outcome = "delay"
""",
        clock=True,
        delay_s=600,
    )
    payer, payee = bank.account(), bank.account(0)
    own = {"id": "ios-own-phone", "ip": "203.0.113.9"}
    posted(bank.transfer(payer, payee, 10 * CNY, device=own))  # small: not judged
    hold = held(bank.transfer(payer, payee, 800 * CNY, device=own), "delayed")
    assert bank.decision(hold["decision_id"])["rules"] == ["new_device_large"]
    bank.move_clock(86_400 + 60)
    posted(bank.transfer(payer, payee, 800 * CNY, device=own))  # the phone is known now
    stolen = {"id": "android-unknown-77", "ip": "192.0.2.66"}
    held(bank.transfer(payer, payee, 800 * CNY, device=stolen), "delayed")


def seconds_until_local(hour: int, now_s: float) -> float:
    """Seconds from `now_s` to the next `hour`:00 in Shanghai (strictly ahead)."""
    now = datetime.datetime.fromtimestamp(now_s, SHANGHAI)
    target = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    if target <= now:
        target += datetime.timedelta(days=1)
    return (target - now).total_seconds()


def test_time_of_day_on_a_moved_clock(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[[rules]]
name = "night_large"
type = "time_of_day"
from = "00:00"
to = "05:00"
amount_min = "500.00"
outcome = "challenge"
""",
        clock=True,
    )
    payer, payee = bank.account(), bank.account(0)
    bank.move_clock(seconds_until_local(12, time.time()) + 30)  # local noon
    posted(bank.transfer(payer, payee, 600 * CNY))
    bank.move_clock(seconds_until_local(2, time.time() + bank.offset_s))  # local 02:00
    problem = refused_by(bank.transfer(payer, payee, 600 * CNY), "risk-challenge")
    decision = bank.decision(problem["decision_id"])
    assert decision["rules"] == ["night_large"]
    assert 2 * 3600 <= decision["inputs"]["night_large"] < 2 * 3600 + 600  # second of day
    posted(bank.transfer(payer, payee, 499 * CNY))  # under the amount


# --- lists -------------------------------------------------------------------------------


def test_device_and_ip_lists(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[lists.stolen_devices]
match = "device"
values = ["android-stolen-1"]

[lists.proxy_ips]
match = "ip"
values = ["192.0.2.13"]

[[rules]]
name = "stolen_device"
type = "list"
list = "stolen_devices"
outcome = "block"

[[rules]]
name = "proxy_ip"
type = "list"
list = "proxy_ips"
outcome = "challenge"
"""
    )
    payer, payee = bank.account(), bank.account(0)
    refused_by(
        bank.transfer(payer, payee, 10 * CNY, device={"id": "android-stolen-1"}), "risk-blocked"
    )
    refused_by(
        bank.transfer(payer, payee, 10 * CNY, device={"id": "ios-1", "ip": "192.0.2.13"}),
        "risk-challenge",
    )
    posted(bank.transfer(payer, payee, 10 * CNY, device={"id": "ios-1", "ip": "192.0.2.14"}))
    assert bank.balance(payee)["balance"] == 10 * CNY


def test_resident_id_watch_list_sends_to_review(bank_with: Callable[..., Bank]) -> None:
    watched = resident_id("19850101")
    bank = bank_with(
        f"""
[lists.watched_people]
match = "resident_id"
values = ["{watched}"]

[[rules]]
name = "watched_person"
type = "list"
list = "watched_people"
outcome = "review"
"""
    )
    response = bank.counter.post(
        "/v1/customers", {"name": "赵六", "id_number": watched, "mobile": mobile()}
    )
    assert response.status_code == 201, response.text
    customer = response.json() | {"_id_number": watched}
    payer = open_class_i(bank.counter, customer)
    cash_deposit(bank.counter, payer, 1000 * CNY)
    payee, other = bank.account(0), bank.account()
    hold = held(bank.transfer(payer, payee, 100 * CNY), "review")
    assert bank.decision(hold["decision_id"])["rules"] == ["watched_person"]
    posted(bank.transfer(other, payee, 100 * CNY))  # someone else: not on the list


def test_counterparty_list_blocks_a_transfer_to_a_listed_card(
    bank_with: Callable[..., Bank],
) -> None:
    mule_card = card_number()
    bank = bank_with(
        f"""
[lists.mule_cards]
match = "counterparty"
values = ["{mule_card}"]

[[rules]]
name = "mule_card"
type = "list"
list = "mule_cards"
outcome = "block"
"""
    )
    payer = bank.account()

    def external(card: str) -> Any:
        return bank.app.post(
            "/v1/external-transfers",
            {
                "debit_account_id": payer,
                "amount_minor": 100 * CNY,
                "beneficiary": {"bank_code": "ICBC", "account_number": card, "name": "王五"},
                "password": PASSWORD,
            },
            idempotency_key=key(),
        )

    before = bank.balance(payer)
    refused_by(external(mule_card), "risk-blocked")
    assert bank.balance(payer) == before
    assert external(card_number()).status_code == 201


def test_account_list_installed_by_an_approved_change(bank_with: Callable[..., Bank]) -> None:
    """A list naming an account that exists only once the server runs: the rule set is
    changed the one way it can be, a risk officer's request approved by another."""
    bank = bank_with("")
    payer, mule = bank.account(), bank.account(0)
    posted(bank.transfer(payer, mule, 10 * CNY))
    text = risk_rules_text(
        f"""
[lists.frozen_accounts]
match = "account"
values = ["{mule}"]

[[rules]]
name = "listed_account"
type = "list"
list = "frozen_accounts"
outcome = "block"
""",
        version=2,
    )
    with (
        operator_client(bank.server, "risk1") as maker,
        operator_client(bank.server, "risk2") as checker,
    ):
        made = maker.post(
            "/v1/admin/approvals",
            {"kind": "risk", "payload": {"text": text, "base_version": 1}, "reason": "mule"},
        )
        assert made.status_code == 201, made.text
        approved = checker.post(f"/v1/admin/approvals/{made.json()['id']}/approve", {})
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] == "applied"
    assert bank.bank.get("/v1/risk/rules").json()["version"] == 2
    problem = refused_by(bank.transfer(payer, mule, 10 * CNY), "risk-blocked")
    assert bank.decision(problem["decision_id"])["version"] == 2
    assert bank.balance(mule)["balance"] == 10 * CNY


# --- outcomes --------------------------------------------------------------------------


def test_large_value_is_allowed_and_reported(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[[rules]]
name = "large_personal_transfer"
type = "large_value"
codes = ["transfer"]
amount_min = "5000.00"
outcome = "allow"
report = true
"""
    )
    payer, payee = bank.account(), bank.account(0)
    small = posted(bank.transfer(payer, payee, 4999 * CNY))
    assert bank.no_decision(small["transfer_id"])  # nothing fired: nothing recorded
    large = posted(bank.transfer(payer, payee, 5000 * CNY))
    assert bank.balance(payee)["balance"] == 9999 * CNY  # reported, not stopped
    decision = bank.decision(large["transfer_id"])
    assert decision["outcome"] == "allow" and decision["report"] is True
    day = datetime.datetime.fromtimestamp(decision["at_ns"] / 1e9, SHANGHAI).date()
    with operator_client(bank.server, "risk1") as officer:
        reports = officer.get("/v1/admin/risk/reports", query=f"date={day.isoformat()}")
        assert reports.status_code == 200, reports.text
        assert [item["transfer_id"] for item in reports.json()["items"]] == [large["transfer_id"]]
        audit = officer.get("/v1/admin/audit")
        assert audit.status_code == 200, audit.text
        reads = [entry for entry in audit.json()["items"] if entry["who"] == "risk1"]
        assert reads and reads[-1]["from"] == "127.0.0.1"


def test_challenge_then_retry_with_a_second_factor(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[[rules]]
name = "step_up"
type = "large_value"
amount_min = "2000.00"
outcome = "challenge"
"""
    )
    payer, payee = bank.account(), bank.account(0)
    operation = key()
    problem = refused_by(
        bank.transfer(payer, payee, 2000 * CNY, idempotency_key=operation), "risk-challenge"
    )
    assert set(problem["factors"]) >= {"sms"}
    assert bank.balance(payee)["balance"] == 0
    retry = posted(
        bank.transfer(payer, payee, 2000 * CNY, idempotency_key=operation, second_factor="ukey")
    )
    assert retry["transfer_id"] == problem["decision_id"]
    assert bank.balance(payee)["balance"] == 2000 * CNY
    # The same key once more: the posting met again, not a second one.
    again = bank.transfer(payer, payee, 2000 * CNY, idempotency_key=operation, second_factor="ukey")
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert bank.balance(payee)["balance"] == 2000 * CNY


def test_delay_is_a_hold_released_by_the_bank_after_the_delay(
    bank_with: Callable[..., Bank],
) -> None:
    bank = bank_with(
        """
[[rules]]
name = "cool_off"
type = "large_value"
amount_min = "3000.00"
outcome = "delay"
""",
        clock=True,
        delay_s=3600,
    )
    payer, payee = bank.account(10_000 * CNY), bank.account(0)
    hold = held(bank.transfer(payer, payee, 3000 * CNY), "delayed")
    assert hold["release_at"] is not None
    assert bank.balance(payer) == {"balance": 10_000 * CNY, "pending_debits": 3000 * CNY}
    assert bank.balance(payee)["balance"] == 0
    # The channel cannot settle the hold itself, even for its holder.
    session = open_session(bank.app, payer)
    capture = bank.app.post(
        f"/v1/payments/{hold['transfer_id']}/capture", {}, idempotency_key=key(), session=session
    )
    assert capture.status_code == 409 and problem_type(capture) == "risk-hold-locked"
    assert bank.balance(payee)["balance"] == 0
    bank.move_clock(3600 + 5)
    wait_for(lambda: bank.decision(hold["decision_id"])["state"] == "released", what="the release")
    assert bank.balance(payer) == {"balance": 7000 * CNY, "pending_debits": 0}
    assert bank.balance(payee)["balance"] == 3000 * CNY


@pytest.mark.parametrize("verdict", ["release_review", "return_review"])
def test_review_is_released_or_returned_by_approved_officers(
    bank_with: Callable[..., Bank], verdict: str
) -> None:
    bank = bank_with(
        """
[[rules]]
name = "officer_looks"
type = "large_value"
amount_min = "4000.00"
outcome = "review"
""",
        review_s=86_400,
    )
    payer, payee = bank.account(10_000 * CNY), bank.account(0)
    hold = held(bank.transfer(payer, payee, 4000 * CNY), "review")
    assert bank.balance(payer)["pending_debits"] == 4000 * CNY
    transfer_id = hold["transfer_id"]
    with (
        operator_client(bank.server, "risk1") as maker,
        operator_client(bank.server, "risk2") as checker,
    ):
        made = maker.post(
            "/v1/admin/approvals",
            {"kind": verdict, "payload": {"transfer_id": transfer_id}},
        )
        assert made.status_code == 201, made.text
        assert made.json()["state"] == "pending"
        assert made.json()["object"] == transfer_id  # what the payload names
        assert bank.balance(payee)["balance"] == 0  # a request alone does nothing
        self_approved = maker.post(f"/v1/admin/approvals/{made.json()['id']}/approve", {})
        assert self_approved.status_code == 403 and problem_type(self_approved) == "approval-self"
        approved = checker.post(f"/v1/admin/approvals/{made.json()['id']}/approve", {})
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"] == "applied"
    decision = bank.decision(hold["decision_id"])
    if verdict == "release_review":
        assert decision["state"] == "released"
        assert bank.balance(payer) == {"balance": 6000 * CNY, "pending_debits": 0}
        assert bank.balance(payee)["balance"] == 4000 * CNY
    else:
        assert decision["state"] == "returned"
        assert bank.balance(payer) == {"balance": 10_000 * CNY, "pending_debits": 0}
        assert bank.balance(payee)["balance"] == 0


def test_device_object_is_strictly_checked(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with("")
    payer, payee = bank.account(), bank.account(0)
    for device, pointer in (
        ({"id": "x" * 65}, "/device/id"),
        ({"ip": "300.1.1.1"}, "/device/ip"),
        ({"ip": "fe80::1%eth0"}, "/device/ip"),
        ({"location": "somewhere\n"}, "/device/location"),
        ({"imei": "1"}, "/device/imei"),
    ):
        response = bank.transfer(payer, payee, 10 * CNY, device=device)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["pointer"] == pointer
    assert bank.balance(payee)["balance"] == 0
    posted(bank.transfer(payer, payee, 10 * CNY, device={"ip": "2001:db8::7", "location": "CN-31"}))


def test_the_batch_is_screened_item_by_item(bank_with: Callable[..., Bank]) -> None:
    bank = bank_with(
        """
[[rules]]
name = "big_block"
type = "large_value"
amount_min = "9000.00"
outcome = "block"

[[rules]]
name = "medium_delay"
type = "large_value"
amount_min = "5000.00"
outcome = "delay"
"""
    )
    payer, payee = bank.account(), bank.account(0)

    def item(amount_minor: int) -> dict[str, Any]:
        return {
            "debit_account_id": payer,
            "credit_account_id": payee,
            "amount_minor": amount_minor,
            "code": "transfer",
        }

    before = bank.balance(payer)
    refused = bank.bank.post(
        "/v1/transfers/batch",
        {"transfers": [item(10 * CNY), item(9000 * CNY)]},
        idempotency_key=key(),
    )
    assert refused.status_code == 403 and problem_type(refused) == "risk-blocked"
    assert refused.json()["errors"][0]["pointer"] == "/transfers/1"
    assert bank.balance(payer) == before  # the whole request refused: nothing posted
    done = bank.bank.post(
        "/v1/transfers/batch",
        {"transfers": [item(10 * CNY), item(5000 * CNY)]},
        idempotency_key=key(),
    )
    assert done.status_code == 200, done.text
    assert [result["result"] for result in done.json()["results"]] == ["ok", "ok"]
    # The second is a hold the bank releases later, not money moved.
    assert bank.balance(payee)["balance"] == 10 * CNY
    assert bank.balance(payer)["pending_debits"] == 5000 * CNY
