"""The ISO 20022 codec (channels/iso20022/codec.py) and its XSD subsets.

What is proved here: the hand-written example of every message type
(examples/iso20022/*.xml) validates against its XSD subset and reads as expected; every
builder's output validates against its XSD (checked with a schema loaded here, apart from
the codec's cache) and parses back to the value it was built from, for 1,000 credits and
for generated amounts and texts (CJK, & < >, carriage returns); a message that is
malformed, schema-invalid, inconsistent (NbOfTxs, CtrlSum, the total), in another
currency, with 3 decimals, a zero, a sign, a duplicated TxId, an agent with no identifier,
too many transactions or too many bytes is refused with the right ISO reason and, where
it could be read, its MsgId; an external entity is never resolved and the billion laughs
never expand (in UTF-8 and in UTF-16, which the byte check cannot see); parsing works
from several threads at once. The cost of parsing and building 1,000 is printed, never
asserted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from channels.iso20022 import codec
from channels.iso20022.codec import MessageRejected
from channels.iso20022.messages import (
    CAMT_053,
    CAMT_054,
    MESSAGE_TYPES,
    PACS_002,
    PACS_004,
    PACS_008,
    CreditTransfer,
    CreditTransfers,
    PaymentReturn,
    PaymentReturns,
    Statement,
    StatementEntry,
    StatusReport,
    TxStatus,
)
from tests.repo_paths import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "iso20022"
XSD = REPO_ROOT / "channels" / "iso20022" / "xsd"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
CREATED = dt.datetime(2026, 12, 7, 10, 30, tzinfo=SHANGHAI)


def independent_schema(message_type: str) -> etree.XMLSchema:
    """The XSD loaded here, not through the codec's cache: the builders are checked
    against the files themselves."""
    return etree.XMLSchema(etree.parse(str(XSD / f"{message_type}.xsd")))


def assert_valid(body: bytes, message_type: str) -> None:
    schema = independent_schema(message_type)
    document = etree.fromstring(body)
    assert schema.validate(document), schema.error_log
    codec.validate(body, message_type)


def credit(index: int, **changes: object) -> CreditTransfer:
    transfer = CreditTransfer(
        instruction_id=f"INSTR-{index}" if index % 2 else None,
        end_to_end_id=f"E2E-{index}",
        tx_id=f"TX-{index:010d}",
        amount_minor=100 + index,
        currency="CNY",
        debtor_name="上海某某科技有限公司 & <Co>",
        debtor_account="1001200300400500600",
        debtor_agent="ICBKCNBJXXX" if index % 3 else "102100099996",
        creditor_name="张三",
        creditor_account=f"622202{index:013d}",
        creditor_agent="TALYCNSHXXX",
        remittance=f"工资 {index}" if index % 4 else None,
    )
    return dataclasses.replace(transfer, **changes)  # type: ignore[arg-type]


def credits(count: int, **changes: object) -> CreditTransfers:
    transactions = tuple(credit(index) for index in range(count))
    message = CreditTransfers(
        msg_id="MSG-20261207-0001",
        created=CREATED,
        number=count,
        control_sum_minor=sum(t.amount_minor for t in transactions),
        settlement_date=dt.date(2026, 12, 7),
        instructing_agent="ICBKCNBJXXX",
        transactions=transactions,
    )
    return dataclasses.replace(message, **changes)  # type: ignore[arg-type]


def rejected(body: bytes, parse=codec.parse_credit_transfers, **kwargs: object) -> MessageRejected:
    with pytest.raises(MessageRejected) as caught:
        parse(body, **kwargs)
    return caught.value


# --- examples ------------------------------------------------------------------------------
def test_every_example_validates_against_its_subset() -> None:
    """One hand-written example per message type, each valid against its XSD subset."""
    found = sorted(path.name.removesuffix(".xml") for path in EXAMPLES.glob("*.xml"))
    assert found == sorted(MESSAGE_TYPES)
    for message_type in MESSAGE_TYPES:
        assert_valid((EXAMPLES / f"{message_type}.xml").read_bytes(), message_type)


def test_the_pacs008_example_reads_field_by_field() -> None:
    """The example's three credits, including a CNAPS agent, an entity in a name, an
    amount with one decimal and one with none, and the optional elements ignored."""
    message = codec.parse_credit_transfers((EXAMPLES / f"{PACS_008}.xml").read_bytes())
    assert message.msg_id == "ICBK20261207-000001"
    assert message.created == dt.datetime(2026, 12, 7, 10, 30, tzinfo=SHANGHAI)
    assert (message.number, message.control_sum_minor) == (3, 1_260_050)
    assert message.settlement_date == dt.date(2026, 12, 7)
    assert message.instructing_agent == "ICBKCNBJXXX"
    first, second, third = message.transactions
    assert first == CreditTransfer(
        instruction_id="INSTR-0001",
        end_to_end_id="SALARY-2026-12-0001",
        tx_id="ICBK-TX-0000000001",
        amount_minor=1_000_000,
        currency="CNY",
        debtor_name="上海某某科技有限公司",
        debtor_account="1001200300400500600",
        debtor_agent="ICBKCNBJSHI",
        creditor_name="张三",
        creditor_account="6222020000000000018",
        creditor_agent="323290000016",
        remittance="12月工资 salary December",
    )
    assert (second.amount_minor, second.instruction_id, second.remittance) == (250_050, None, None)
    assert second.debtor_name == "Li & Wang Trading Co. <HK>"
    assert second.debtor_agent == "102100099996"
    assert (third.amount_minor, third.debtor_agent) == (10_000, "ICBKCNBJ")


def test_the_other_examples_read() -> None:
    """pacs.004, pacs.002 and both statements read back what they say; the statement adds
    up (opening + credits - debits = closing)."""
    returns = codec.parse_payment_returns((EXAMPLES / f"{PACS_004}.xml").read_bytes())
    assert returns.returns == (
        PaymentReturn(
            return_id="ICBK-RTR-0000000001",
            original_msg_id="TALLY-OUT-20261206-0042",
            original_end_to_end_id="RENT-2026-12",
            original_tx_id="0000000000000000a1b2c3d4e5f60718",
            amount_minor=8_800,
            currency="CNY",
            reason="AC04",
        ),
    )
    report = codec.parse_status_report((EXAMPLES / f"{PACS_002}.xml").read_bytes())
    assert report.group_status == "PART"
    assert [(s.status, s.reason) for s in report.transactions] == [
        ("ACSC", None),
        ("ACSC", None),
        ("RJCT", "AC01"),
    ]
    statement = codec.parse_statement((EXAMPLES / f"{CAMT_053}.xml").read_bytes())
    moved = sum(e.amount_minor if e.credit else -e.amount_minor for e in statement.entries)
    assert statement.opening_minor + moved == statement.closing_minor == 1_111_200
    notification = codec.parse_statement((EXAMPLES / f"{CAMT_054}.xml").read_bytes())
    assert notification.kind == "camt.054"
    assert notification.entries == statement.entries


# --- round trips ---------------------------------------------------------------------------
def test_a_thousand_credits_round_trip_and_validate() -> None:
    """build_credit_transfers of 1,000 credits (BIC and CNAPS agents, optional InstrId and
    RmtInf present and absent) validates and parses back to the same value."""
    message = credits(1_000)
    body = codec.build_credit_transfers(message)
    assert_valid(body, PACS_008)
    assert codec.parse_credit_transfers(body) == message


def test_returns_status_reports_and_statements_round_trip_and_validate() -> None:
    """Every other builder: its output validates and parses back to its input."""
    returns = PaymentReturns(
        msg_id="RTR-1",
        created=CREATED,
        instructing_agent="102100099996",
        returns=tuple(
            PaymentReturn(f"R{i}", "OUT-1", f"E{i}", f"{i:032x}", 1 + i, "CNY", "AC04")
            for i in range(5)
        ),
    )
    body = codec.build_payment_returns(returns)
    assert_valid(body, PACS_004)
    assert codec.parse_payment_returns(body) == returns

    report = StatusReport(
        msg_id="TALLY-1",
        created=CREATED,
        original_msg_id="MSG-1",
        original_msg_type=PACS_008,
        group_status="PART",
        group_reason=None,
        transactions=(
            TxStatus("E1", "T1", "ACSC"),
            TxStatus("E2", "T2", "RJCT", "AC01", "account_not_found"),
            TxStatus("E3", "T3", "PDNG"),
        ),
    )
    body = codec.build_status_report(report)
    assert_valid(body, PACS_002)
    assert codec.parse_status_report(body) == report

    entries = (
        StatementEntry(
            "1",
            8_800,
            False,
            1_796_519_702_123_456_789,
            dt.date(2026, 12, 6),
            "a1" * 16,
            "EXTERNAL_TRANSFER_OUT",
            "房东",
            "12月房租",
        ),
        StatementEntry(
            "2",
            1_000_000,
            True,
            1_796_610_600_000_000_001,
            dt.date(2026, 12, 7),
            "b2" * 16,
            "EXTERNAL_TRANSFER_IN",
            None,
            None,
        ),
    )
    for kind, message_type in (("camt.053", CAMT_053), ("camt.054", CAMT_054)):
        statement = Statement(
            msg_id="STMT-1",
            created=dt.datetime(2026, 12, 7, 18, 0, tzinfo=SHANGHAI),
            account_id=6222020000000000018,
            account_number="6222020000000000018",
            currency="CNY",
            from_date=dt.date(2026, 12, 1),
            to_date=dt.date(2026, 12, 7),
            opening_minor=-5_000 if kind == "camt.053" else 0,  # overdrawn: a DBIT balance
            closing_minor=986_200 if kind == "camt.053" else 0,
            entries=entries,
            kind=kind,  # type: ignore[arg-type]
        )
        body = codec.build_statement(statement)
        assert_valid(body, message_type)
        assert codec.parse_statement(body) == statement


def test_a_group_rejection_names_the_original_and_cuts_the_detail() -> None:
    """A whole-message rejection pacs.002 (no transactions, group reason FF01) validates,
    with a detail longer than Max105Text cut to 105 characters."""
    report = StatusReport(
        msg_id="TALLY-2",
        created=CREATED,
        original_msg_id="MSG-BAD",
        original_msg_type=PACS_008,
        group_status="RJCT",
        group_reason="FF01",
        group_detail="x" * 300,
    )
    body = codec.build_status_report(report)
    assert_valid(body, PACS_002)
    read = codec.parse_status_report(body)
    assert (read.group_status, read.group_reason, read.group_detail) == ("RJCT", "FF01", "x" * 105)
    assert read.transactions == ()


# Texts XML 1.0 can carry (no control characters but tab, line feed, carriage return; no
# surrogates), CJK and the markup characters included.
xml_text = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff"),
        st.sampled_from("&<>\"'\t\n\r张三李四工资"),
    ),
    min_size=1,
)


@settings(max_examples=200, deadline=None)
@given(
    amounts=st.lists(st.integers(min_value=1, max_value=10**16 - 1), min_size=1, max_size=20),
    names=st.lists(xml_text.filter(lambda text: len(text) <= 140), min_size=1, max_size=20),
    ids=st.lists(xml_text.filter(lambda text: len(text) <= 35), min_size=1, max_size=20),
)
def test_amounts_and_texts_round_trip_exactly(
    amounts: list[int], names: list[str], ids: list[str]
) -> None:
    """Any amount in fen (to 16 digits before the point) and any text XML can carry
    survive build -> XML -> parse unchanged: no float, no whitespace or newline lost."""
    transactions = tuple(
        credit(
            index,
            amount_minor=amount,
            debtor_name=names[index % len(names)],
            creditor_name=names[(index + 1) % len(names)],
            end_to_end_id=ids[index % len(ids)],
            remittance=names[(index + 2) % len(names)],
        )
        for index, amount in enumerate(amounts)
    )
    message = credits(
        0, transactions=transactions, number=len(transactions), control_sum_minor=sum(amounts)
    )
    body = codec.build_credit_transfers(message)
    assert codec.parse_credit_transfers(body) == message


@pytest.mark.parametrize(
    ("text", "minor"),
    [
        ("123.45", 12345),
        ("0.01", 1),
        ("7", 700),
        ("7.5", 750),
        ("007.10", 710),
        (" 12.00 ", 1200),
        ("9999999999999999.99", 999999999999999999),
    ],
)
def test_decimal_amounts_are_read_exactly(text: str, minor: int) -> None:
    """Plain decimals with at most 2 decimals become fen exactly (no float)."""
    assert codec.parse_amount_minor(text, "here") == minor


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1.005", "CH20"),
        ("1.500", "CH20"),
        (".125", "CH20"),
        ("+1.00", "AM12"),
        ("-1.00", "AM12"),
        ("1e3", "AM12"),
        ("1.", "AM12"),
        (".5", "AM12"),
        ("1,00", "AM12"),
        ("", "AM12"),
        ("0", "AM01"),
        ("0.00", "AM01"),
    ],
)
def test_amounts_that_are_not_plain_cny_are_refused(text: str, reason: str) -> None:
    """More than 2 decimals is CH20, a sign, exponent or float form AM12, zero AM01."""
    with pytest.raises(MessageRejected) as caught:
        codec.parse_amount_minor(text, "CdtTrfTxInf[1]/IntrBkSttlmAmt")
    assert caught.value.reason == reason
    assert "CdtTrfTxInf[1]/IntrBkSttlmAmt" in caught.value.detail


# --- refusals ------------------------------------------------------------------------------
def small() -> bytes:
    return codec.build_credit_transfers(credits(3))


def test_malformed_xml_is_ff01_without_an_id() -> None:
    """Not well-formed: FF01, the line named, no MsgId (none could be read)."""
    error = rejected(small()[:-40])
    assert (error.reason, error.msg_id, error.message_type) == ("FF01", None, PACS_008)
    assert "line" in error.detail


def test_schema_invalid_is_ff01_and_names_the_message() -> None:
    """An element the subset does not declare, a missing required one, a bad BIC, a text
    over Max35Text, another message's namespace: FF01, with the MsgId when readable."""
    body = small()
    cases = {
        "unknown element": body.replace(b"<ChrgBr>", b"<Purp><Cd>SALA</Cd></Purp><ChrgBr>", 1),
        "missing Cdtr": body.replace(b"<Cdtr><Nm>\xe5\xbc\xa0\xe4\xb8\x89</Nm></Cdtr>", b"", 1),
        "bad BIC": body.replace(b"<BICFI>ICBKCNBJXXX</BICFI>", b"<BICFI>icbk</BICFI>", 1),
        "long TxId": body.replace(
            b"<TxId>TX-0000000000</TxId>", b"<TxId>" + b"T" * 36 + b"</TxId>"
        ),
        "another namespace": body.replace(PACS_008.encode(), PACS_004.encode(), 1),
    }
    for name, case in cases.items():
        assert case != body, name
        error = rejected(case)
        assert error.reason == "FF01", name
        assert error.msg_id == "MSG-20261207-0001", name
        assert error.message_type == PACS_008


def test_inconsistent_groups_are_refused_with_their_reasons() -> None:
    """NbOfTxs != the count AM19; CtrlSum or TtlIntrBkSttlmAmt != the sum AM10; every
    one names the message."""
    message = credits(3)
    wrong_count = codec.build_credit_transfers(dataclasses.replace(message, number=4))
    wrong_sum = codec.build_credit_transfers(
        dataclasses.replace(message, control_sum_minor=message.control_sum_minor + 1)
    )
    wrong_total = small().replace(
        b'<TtlIntrBkSttlmAmt Ccy="CNY">3.03<', b'<TtlIntrBkSttlmAmt Ccy="CNY">3.04<'
    )
    assert wrong_total != small()
    for body, reason in ((wrong_count, "AM19"), (wrong_sum, "AM10"), (wrong_total, "AM10")):
        error = rejected(body)
        assert (error.reason, error.msg_id) == (reason, "MSG-20261207-0001")
    # A CtrlSum written with more decimals but the same value is the same sum.
    same = small().replace(b"<CtrlSum>3.03</CtrlSum>", b"<CtrlSum>3.0300</CtrlSum>")
    assert same != small() and codec.parse_credit_transfers(same).control_sum_minor == 303


def test_transaction_faults_reject_the_whole_message() -> None:
    """3 decimals CH20, another currency AM11, a zero AM01, a TxId twice AM05, an agent
    with neither BICFI nor ClrSysMmbId RC01, a date-time Python cannot hold DT01."""
    body = small()
    message = credits(3)
    duplicate = codec.build_credit_transfers(
        dataclasses.replace(
            message,
            transactions=(
                *message.transactions[:2],
                credit(2, tx_id=message.transactions[0].tx_id),
            ),
        )
    )
    cases = [
        (body.replace(b">1.02</IntrBkSttlmAmt>", b">1.025</IntrBkSttlmAmt>"), "CH20"),
        (
            body.replace(b'<IntrBkSttlmAmt Ccy="CNY">1.01', b'<IntrBkSttlmAmt Ccy="USD">1.01'),
            "AM11",
        ),
        (body.replace(b">1.01</IntrBkSttlmAmt>", b">0.00</IntrBkSttlmAmt>"), "AM01"),
        (duplicate, "AM05"),
        (
            body.replace(
                b"<DbtrAgt><FinInstnId><BICFI>ICBKCNBJXXX</BICFI>",
                b"<DbtrAgt><FinInstnId><Nm>Some bank</Nm>",
                1,
            ),
            "RC01",
        ),
        (
            body.replace(
                b"<CreDtTm>2026-12-07T10:30:00+08:00", b"<CreDtTm>2026-12-07T24:00:00+08:00"
            ),
            "DT01",
        ),
    ]
    for case, reason in cases:
        assert case != body, reason
        error = rejected(case)
        assert (error.reason, error.msg_id, error.message_type) == (
            reason,
            "MSG-20261207-0001",
            PACS_008,
        ), error


def test_more_than_max_transactions_is_am18() -> None:
    """10,001 credits (valid otherwise) are refused AM18 after the schema passed them."""
    body = codec.build_credit_transfers(credits(codec.MAX_TRANSACTIONS + 1))
    error = rejected(body)
    assert (error.reason, error.msg_id) == ("AM18", "MSG-20261207-0001")


def test_oversize_is_refused_before_parsing() -> None:
    """A body over the caller's limit is FF01 by its size, whatever it holds."""
    body = small()
    error = rejected(body, body_size_max=len(body) - 1)
    assert error.reason == "FF01" and "over the limit" in error.detail
    assert codec.parse_credit_transfers(body, body_size_max=len(body)).number == 3


def test_an_external_entity_is_never_resolved(tmp_path: Path) -> None:
    """XXE: a DOCTYPE declaring an entity on a local file is refused (FF01) and the
    file's content is in no answer; in UTF-16 (which the byte check cannot see) the
    parser does not resolve it either and the DTD is refused after parsing."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-KEY")
    body = (
        small()
        .replace(
            b'<?xml version="1.0" encoding="UTF-8"?>\n',
            b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE Document [<!ENTITY xxe SYSTEM "'
            + secret.as_uri().encode()
            + b'">]>',
        )
        .replace(b"<MsgId>MSG-20261207-0001</MsgId>", b"<MsgId>&xxe;</MsgId>")
    )
    assert b"&xxe;" in body
    error = rejected(body)
    assert error.reason == "FF01" and "TOP-SECRET" not in str(error) + repr(error.msg_id)

    wide = body.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    assert b"<!DOCTYPE" not in wide
    error = rejected(wide)
    assert error.reason == "FF01" and "TOP-SECRET" not in str(error) + repr(error.msg_id)
    # What the parser itself does with it: the entity stays a reference.
    document = etree.fromstring(wide, codec._hardened_parser())
    assert "TOP-SECRET" not in etree.tostring(document, encoding="unicode")


def test_the_billion_laughs_never_expand() -> None:
    """The billion laughs (10 levels of 10 references) are refused at once, in UTF-8 and
    in UTF-16; the hardened parser alone refuses to expand them too."""
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    ]
    dtd = "<!DOCTYPE Document [" + "".join(levels) + "]>"
    text = (
        small()
        .decode()
        .replace("<Document ", dtd + "<Document ", 1)
        .replace("<MsgId>MSG-20261207-0001</MsgId>", "<MsgId>&lol9;</MsgId>")
    )
    for body in (
        text.encode(),
        text.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"),
    ):
        started = time.perf_counter()
        error = rejected(body)
        assert error.reason == "FF01"
        assert time.perf_counter() - started < 60  # a bound against a hang, not a timing claim
    # The parser alone (no DOCTYPE check before it): libxml2 refuses the amplification
    # even though entities are not substituted.
    with pytest.raises(etree.XMLSyntaxError, match="amplification"):
        etree.fromstring(text.encode(), codec._hardened_parser())


def test_comments_cdata_and_whitespace_read_as_the_text() -> None:
    """A partner's formatting is not content: comments and processing instructions are
    dropped, CDATA is text, pretty-printing whitespace between elements is ignored."""
    body = (
        small()
        .replace(
            b"<Cdtr><Nm>\xe5\xbc\xa0\xe4\xb8\x89</Nm></Cdtr>",
            "<Cdtr>\n  <!-- a note -->\n  <Nm>张<![CDATA[三 & co]]></Nm>\n</Cdtr>".encode(),
            1,
        )
        .replace(b"<ChrgBr>", b"<?partner hint?><ChrgBr>", 1)
    )
    message = codec.parse_credit_transfers(body)
    assert message.transactions[0].creditor_name == "张三 & co"
    assert message.transactions[1].creditor_name == "张三"


def test_parsing_from_several_threads_at_once() -> None:
    """Parsers and schemas are per thread: 4 threads parsing 1,000 credits each at once
    read the same value."""
    message = credits(1_000)
    body = codec.build_credit_transfers(message)
    results: list[bool] = []

    def work() -> None:
        for _ in range(3):
            results.append(codec.parse_credit_transfers(body) == message)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 12


def test_validate_refuses_a_type_outside_the_profile() -> None:
    """validate() names only the profile's message types."""
    with pytest.raises(ValueError, match=r"pain\.001"):
        codec.validate(small(), "pain.001.001.09")
    with pytest.raises(MessageRejected):
        codec.validate(small(), PACS_004)


def test_costs_of_a_thousand(capsys: pytest.CaptureFixture[str]) -> None:
    """Measures (prints, never asserts) parse+validate+extract of a 1,000-credit pacs.008
    and build_status_report of 1,000 statuses: the figures in docs/iso20022.md."""
    message = credits(1_000)
    body = codec.build_credit_transfers(message)
    report = StatusReport(
        "TALLY-3",
        CREATED,
        message.msg_id,
        PACS_008,
        "PART",
        None,
        tuple(
            TxStatus(
                t.end_to_end_id,
                t.tx_id,
                "RJCT" if i % 10 == 0 else "ACSC",
                "AC01" if i % 10 == 0 else None,
            )
            for i, t in enumerate(message.transactions)
        ),
    )

    def best_ms(function, *args) -> float:  # type: ignore[no-untyped-def]
        samples = []
        for _ in range(15):
            started = time.process_time()
            function(*args)
            samples.append(time.process_time() - started)
        return min(samples) * 1e3

    figures = {
        "parse_pacs008_1000_ms": best_ms(codec.parse_credit_transfers, body),
        "build_pacs002_1000_ms": best_ms(codec.build_status_report, report),
        "build_pacs008_1000_ms": best_ms(codec.build_credit_transfers, message),
        "pacs008_1000_bytes": len(body),
    }
    with capsys.disabled():
        print(f"\niso20022 codec costs (best of 15, CPU time): {figures}")
    assert figures["pacs008_1000_bytes"] > 0
