"""ISO 20022 against a real `tally serve`: a partner bank's signed pacs.008 credits booked
once (balances), repeated with the same or a new MsgId without posting twice, a partial
rejection, a schema-invalid message answered with a pacs.002 FF01, an unsigned or badly
signed one refused like every route, a pacs.004 return of an external transfer of ours,
camt.053 / camt.054 statements that validate and add up, and a SIGKILL in the middle of
a stream of messages after which every ACSC credit is booked and none twice.

The partner is the `open_api` channel of examples/channels.toml; the accounts are opened
and read at the counter and the bank's internal channel of the same server.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels.client import TallyClient
from channels.iso20022 import codec
from channels.iso20022.messages import (
    CAMT_053,
    CAMT_054,
    PACS_002,
    PACS_004,
    PACS_008,
    CreditTransfer,
    CreditTransfers,
    PaymentReturn,
    PaymentReturns,
    StatusReport,
)
from tests.http_helpers import (
    REPO_ROOT,
    TallyServer,
    balance,
    card_number,
    cash_deposit,
    key,
    open_class_i,
    problem_type,
    register,
)

PARTNER_AGENT = "ICBKCNBJXXX"  # the instructing agent (a BIC) of the partner's messages
OUR_AGENT = "TALYCNSHXXX"
PACS_008_PATH = "/v1/iso20022/pacs.008"
PACS_004_PATH = "/v1/iso20022/pacs.004"
PASSWORD = "135790"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    work = tmp_path_factory.mktemp("iso20022")
    running = TallyServer(work / "data").start()
    try:
        yield running
    finally:
        running.stop()


def open_accounts(server: TallyServer, count: int, funds_minor: int = 0) -> list[str]:
    with server.client("counter") as counter:
        accounts = [open_class_i(counter, register(counter), PASSWORD) for _ in range(count)]
        if funds_minor:
            for account in accounts:
                cash_deposit(counter, account, funds_minor)
    return accounts


def balances(server: TallyServer, accounts: list[str]) -> dict[str, int]:
    with server.client("counter") as counter:
        return {account: balance(counter, account) for account in accounts}


def credit(account: str, amount_minor: int, tx_id: str, debtor: str = "王五") -> CreditTransfer:
    return CreditTransfer(
        instruction_id=None,
        end_to_end_id="E2E-" + tx_id,
        tx_id=tx_id,
        amount_minor=amount_minor,
        currency="CNY",
        debtor_name=debtor,
        debtor_account="6222020200112233445",
        debtor_agent="102100099996",  # a CNAPS bank code
        creditor_name="李四",
        creditor_account=account,
        creditor_agent=OUR_AGENT,
        remittance="货款 & <invoice 7>",
    )


def pacs008(transactions: list[CreditTransfer], msg_id: str | None = None) -> bytes:
    return codec.build_credit_transfers(
        CreditTransfers(
            msg_id=msg_id or "M" + uuid.uuid4().hex[:20],
            created=dt.datetime.now(dt.UTC).replace(microsecond=0),
            number=len(transactions),
            control_sum_minor=sum(t.amount_minor for t in transactions),
            settlement_date=dt.date.today(),
            instructing_agent=PARTNER_AGENT,
            transactions=tuple(transactions),
        )
    )


def post_xml(client: TallyClient, path: str, body: bytes, idempotency_key: str = "") -> Any:
    return client.post(
        path, raw=body, content_type="application/xml", idempotency_key=idempotency_key or key()
    )


def report_of(response: Any, status_code: int = 200) -> StatusReport:
    """The pacs.002 of a response, checked against its XSD."""
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"] == "application/xml"
    codec.validate(response.content, PACS_002)
    return codec.parse_status_report(response.content)


def send(server: TallyServer, transactions: list[CreditTransfer], msg_id: str | None = None) -> Any:
    with server.client("open_api") as partner:
        return report_of(post_xml(partner, PACS_008_PATH, pacs008(transactions, msg_id)))


def statuses(report: StatusReport) -> dict[str, tuple[str, str | None]]:
    return {t.original_tx_id: (t.status, t.reason) for t in report.transactions}


def test_a_pacs008_is_booked_once_and_a_repeat_posts_nothing(server: TallyServer) -> None:
    """N credits over 3 accounts: every one ACSC, each account up by exactly its credits;
    the same message again (same MsgId), and the same TxIds under a new MsgId, answer ACSC
    again for every credit and move no balance."""
    accounts = open_accounts(server, 3)
    before = balances(server, accounts)
    transactions = [
        credit(accounts[i % 3], 100 + i, f"TX-BOOK-{i}") for i in range(30)
    ]  # fmt: skip
    expected = {a: sum(t.amount_minor for t in transactions if t.creditor_account == a)
                for a in accounts}  # fmt: skip
    msg_id = "MSG-BOOK-" + uuid.uuid4().hex[:8]
    report = send(server, transactions, msg_id)
    assert report.original_msg_id == msg_id and report.original_msg_type == PACS_008
    assert report.group_status == "ACSC"
    assert [t.original_tx_id for t in report.transactions] == [t.tx_id for t in transactions]
    assert {t.status for t in report.transactions} == {"ACSC"}
    after = balances(server, accounts)
    assert {a: after[a] - before[a] for a in accounts} == expected
    for again in (msg_id, "MSG-BOOK-NEW-" + uuid.uuid4().hex[:8]):
        repeated = send(server, transactions, again)
        assert repeated.group_status == "ACSC", statuses(repeated)
        assert balances(server, accounts) == after


def test_partial_rejection_names_each_refused_credit(server: TallyServer) -> None:
    """One credit to an account that does not exist (AC01), one reusing a booked TxId with
    another amount (AM05), one to an account number no account of ours can have (AC01):
    group PART, those RJCT with their reasons, the rest ACSC and booked."""
    (account,) = open_accounts(server, 1)
    before = balances(server, [account])[account]
    booked = credit(account, 500, "TX-PART-0")
    assert send(server, [booked]).group_status == "ACSC"
    missing = "6" + "0" * 17 + "7"  # 19 digits, never opened
    transactions = [
        credit(account, 200, "TX-PART-1"),
        credit(missing, 300, "TX-PART-2"),
        credit(account, 999, "TX-PART-0"),  # the booked TxId, another amount
        credit("NOT-AN-ACCOUNT", 400, "TX-PART-3"),
        credit(account, 50, "TX-PART-4"),
    ]
    report = send(server, transactions)
    assert report.group_status == "PART"
    got = statuses(report)
    assert got["TX-PART-1"] == ("ACSC", None) and got["TX-PART-4"] == ("ACSC", None)
    assert got["TX-PART-2"] == ("RJCT", "AC01")
    assert got["TX-PART-0"] == ("RJCT", "AM05")
    assert got["TX-PART-3"] == ("RJCT", "AC01")
    assert balances(server, [account])[account] == before + 500 + 200 + 50
    # The refused credit to the missing account is refused again when resent.
    again = statuses(send(server, [credit(missing, 300, "TX-PART-2")]))
    assert again["TX-PART-2"] == ("RJCT", "AC01")


def test_a_schema_invalid_message_is_answered_400_with_a_pacs002_ff01(
    server: TallyServer,
) -> None:
    """Malformed XML and a message with an element the schema does not allow are each
    refused whole: 400, a pacs.002 with group RJCT and reason FF01; nothing booked."""
    (account,) = open_accounts(server, 1)
    before = balances(server, [account])
    good = pacs008([credit(account, 100, "TX-FF01")], "MSG-FF01")
    invalid = good.replace(b"<TxId>", b"<Unknown>1</Unknown><TxId>", 1)
    with server.client("open_api") as partner:
        for body in (b"<Document><not-closed>", invalid):
            report = report_of(post_xml(partner, PACS_008_PATH, body), 400)
            assert report.group_status == "RJCT" and report.group_reason == "FF01"
            assert report.transactions == ()
        # A message of another type at this route is refused the same way.
        wrong = report_of(post_xml(partner, PACS_004_PATH, good), 400)
        assert wrong.group_reason == "FF01"
        # JSON is not XML: 415 like any route sent the wrong media type.
        response = partner.post(PACS_008_PATH, {"a": 1}, idempotency_key=key())
        assert response.status_code == 415, response.text
    assert balances(server, [account]) == before


def test_an_unsigned_or_badly_signed_message_gets_the_401_of_every_route(
    server: TallyServer,
) -> None:
    """Nothing ISO 20022 is told to an unverified sender: no signature, a wrong secret and
    a body changed after signing are the problem+json 401s of every route; a channel not
    granted the operation (the app) gets 403. Nothing is booked."""
    (account,) = open_accounts(server, 1)
    before = balances(server, [account])
    body = pacs008([credit(account, 100, "TX-AUTH")])
    with server.client("open_api") as partner:
        unsigned = partner.http.post(
            PACS_008_PATH, content=body, headers={"Content-Type": "application/xml"}
        )
        assert unsigned.status_code == 401 and problem_type(unsigned) == "signature-missing"
        with TallyClient(server.url, "open_api", partner.signer.key_id, "x" * 40) as forged:
            response = post_xml(forged, PACS_008_PATH, body)
        assert response.status_code == 401 and problem_type(response) == "signature-invalid"
        headers = partner.signer.headers(
            "POST", PACS_008_PATH, body, idempotency_key="k1", content_type="application/xml"
        )
        changed = body.replace(b">100<", b">1.00<") if b">100<" in body else body + b" "
        response = partner.http.post(PACS_008_PATH, content=changed, headers=headers)
        assert response.status_code == 401 and problem_type(response) == "signature-invalid"
    with server.client("app") as app:
        response = post_xml(app, PACS_008_PATH, body)
        assert response.status_code == 403, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    assert balances(server, [account]) == before


def external_transfer(server: TallyServer, account: str, amount_minor: int) -> str:
    """An external transfer out of `account` at the counter; its transfer id."""
    with server.client("counter") as counter:
        response = counter.post(
            "/v1/external-transfers",
            {
                "debit_account_id": account,
                "amount_minor": amount_minor,
                "beneficiary": {
                    "bank_code": "102100099996",
                    "account_number": card_number(),
                    "name": "王五",
                },
                "password": PASSWORD,
            },
            idempotency_key=key(),
        )
    assert response.status_code == 201, response.text
    return str(response.json()["transfer_id"])


def pacs004(returns: list[PaymentReturn]) -> bytes:
    return codec.build_payment_returns(
        PaymentReturns(
            msg_id="R" + uuid.uuid4().hex[:20],
            created=dt.datetime.now(dt.UTC).replace(microsecond=0),
            instructing_agent=PARTNER_AGENT,
            returns=tuple(returns),
        )
    )


def a_return(return_id: str, original: str, amount_minor: int) -> PaymentReturn:
    return PaymentReturn(
        return_id=return_id,
        original_msg_id="OUT-MSG-1",
        original_end_to_end_id="E2E-OUT",
        original_tx_id=original,
        amount_minor=amount_minor,
        currency="CNY",
        reason="AC04",
    )


def test_a_pacs004_returns_an_external_transfer_once(server: TallyServer) -> None:
    """A partner returns our external transfer: the money is back on the account (ACSC);
    the same return again is ACSC and moves nothing; another return of the same original
    is refused (AM05), as is a return of more than the original, of a transfer that is not
    an external transfer out, or of an id that names nothing."""
    (account,) = open_accounts(server, 1, funds_minor=100_000)
    start = balances(server, [account])[account]
    original = external_transfer(server, account, 30_000)
    other = external_transfer(server, account, 10_000)
    assert balances(server, [account])[account] == start - 40_000
    with server.client("open_api") as partner:

        def returned(*returns: PaymentReturn) -> dict[str, tuple[str, str | None]]:
            report = report_of(post_xml(partner, PACS_004_PATH, pacs004(list(returns))))
            assert report.original_msg_type == PACS_004
            return statuses(report)

        assert returned(a_return("RTR-1", original, 30_000)) == {"RTR-1": ("ACSC", None)}
        assert balances(server, [account])[account] == start - 10_000
        assert returned(a_return("RTR-1", original, 30_000)) == {"RTR-1": ("ACSC", None)}
        assert balances(server, [account])[account] == start - 10_000
        refused = returned(
            a_return("RTR-2", original, 30_000),  # a second return of one original
            a_return("RTR-3", other, 10_001),  # more than the original
            a_return("RTR-4", "0" * 31 + "1", 100),  # no such transfer
        )
        assert refused["RTR-2"] == ("RJCT", "AM05")
        assert refused["RTR-3"] == ("RJCT", "AM09")
        assert refused["RTR-4"] == ("RJCT", "AG09")
        assert balances(server, [account])[account] == start - 10_000
        # A partial return of the other transfer is allowed.
        assert returned(a_return("RTR-5", other, 4_000)) == {"RTR-5": ("ACSC", None)}
    assert balances(server, [account])[account] == start - 6_000


def test_statements_validate_and_add_up(server: TallyServer) -> None:
    """camt.053 and camt.054 of today for an account with credits, a cash deposit and a
    debit: each validates against its XSD; opening + signed entries == closing == the
    balance; the entries are exactly the account's postings. The partner (open_api, which
    reads nothing) is refused; the bank's internal channel and the counter read it."""
    (account,) = open_accounts(server, 1, funds_minor=50_000)
    assert send(server, [credit(account, 1_234, "TX-STMT-1"), credit(account, 66, "TX-STMT-2")]
                ).group_status == "ACSC"  # fmt: skip
    external_transfer(server, account, 300)
    with server.client("counter") as counter:
        read = counter.get(f"/v1/accounts/{account}")
        today = read.json()["business_day"]
        closing = int(read.json()["balance_minor"])
    query = f"account_id={account}&from={today}&to={today}"
    for channel in ("bank", "counter"):
        with server.client(channel) as client:
            response = client.get("/v1/iso20022/camt.053", query=query)
            assert response.status_code == 200, response.text
            codec.validate(response.content, CAMT_053)
            statement = codec.parse_statement(response.content)
            signed = [e.amount_minor if e.credit else -e.amount_minor for e in statement.entries]
            assert sorted(signed) == sorted([50_000, 1_234, 66, -300])
            assert statement.opening_minor == 0  # opened today
            assert statement.opening_minor + sum(signed) == statement.closing_minor == closing
            notification = client.get("/v1/iso20022/camt.054", query=query)
            assert notification.status_code == 200, notification.text
            codec.validate(notification.content, CAMT_054)
            assert len(codec.parse_statement(notification.content).entries) == 4
    with server.client("open_api") as partner:
        response = partner.get("/v1/iso20022/camt.053", query=query)
        assert response.status_code == 403 and problem_type(response) == "operation-not-allowed"
    with server.client("bank") as bank:
        missing = bank.get("/v1/iso20022/camt.053", query=f"account_id={account}&from={today}")
        assert missing.status_code == 422, missing.text


def test_a_sigkill_mid_stream_loses_no_acsc_and_books_none_twice(
    tmp_path: Path,
) -> None:
    """Messages of 200 credits stream from 4 threads while the server is killed: after
    the restart each account holds at least every credit answered ACSC before the kill
    and at most every credit sent; sending every message again then answers ACSC for all
    and leaves each account at exactly the sum of its credits, each booked once."""
    server = TallyServer(tmp_path / "data").start()
    try:
        accounts = open_accounts(server, 8)
        messages = [
            [credit(accounts[(m + i) % 8], 1 + (m * 200 + i) % 97, f"TX-K-{m}-{i}")
             for i in range(200)]
            for m in range(40)
        ]  # fmt: skip
        acked: dict[str, int] = dict.fromkeys(accounts, 0)
        answered: list[int] = []  # the messages answered before the kill
        lock = threading.Lock()
        sent = threading.Semaphore(0)

        def stream(first: int) -> None:
            with server.client("open_api") as partner:
                for m in range(first, len(messages), 4):
                    try:
                        response = post_xml(partner, PACS_008_PATH, pacs008(messages[m]))
                    except Exception:  # the server died under it: the outcome is unknown
                        return
                    sent.release()
                    if response.status_code != 200:
                        return
                    report = codec.parse_status_report(response.content)
                    with lock:
                        answered.append(m)
                        for transaction, status in zip(
                            messages[m], report.transactions, strict=True
                        ):
                            if status.status == "ACSC":
                                acked[transaction.creditor_account] += transaction.amount_minor

        threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for _ in range(6):  # some messages answered, others in flight
            assert sent.acquire(timeout=60)
        server.kill()
        for thread in threads:
            thread.join(timeout=60)
        with lock:
            acknowledged = dict(acked)
            # The kill came mid-stream: some messages answered, not all of them.
            assert 0 < len(answered) < len(messages), len(answered)
        assert sum(acknowledged.values()) > 0
        server.start()
        total = dict.fromkeys(accounts, 0)
        for message in messages:
            for transaction in message:
                total[transaction.creditor_account] += transaction.amount_minor
        recovered = balances(server, accounts)
        for account in accounts:
            assert acknowledged[account] <= recovered[account] <= total[account], account
        for message in messages:
            assert send(server, message).group_status == "ACSC"
        assert balances(server, accounts) == total
    finally:
        if server.process is not None:
            server.stop()


def test_the_shipped_channels_files_match() -> None:
    """The registry the server ships (core/data) and the example one are the same file."""
    shipped = (REPO_ROOT / "core" / "data" / "channels.toml").read_bytes()
    assert (REPO_ROOT / "examples" / "channels.toml").read_bytes() == shipped
