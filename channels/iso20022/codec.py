"""ISO 20022 XML <-> the typed messages of `channels/iso20022/messages.py`.

Reading a partner's message (`parse_credit_transfers`, `parse_payment_returns`) runs,
in order: the byte-size limit the caller passes; a refusal of any DTD (`<!DOCTYPE`:
a partner never needs one, and it is where XXE and the billion laughs live); lxml with
a hardened parser (`resolve_entities=False, no_network=True, load_dtd=False,
huge_tree=False`) that validates against the cached XSD subset (`xsd/`) while it
parses, in one pass; then the checks a schema cannot express (NbOfTxs == the count,
CtrlSum and the total == the sum, CNY only, exact amounts with at most 2 decimals, at
most `MAX_TRANSACTIONS`, TxId unique in the message, an agent named). Any failure
raises `MessageRejected` with an ISO status reason (ExternalStatusReason1Code) and,
when they could be read, the message's MsgId and type, so the pacs.002 that rejects
it can name it. A message is one unit of format: a fault anywhere rejects the whole
message (group RJCT) and nothing of it is booked; business refusals (an unknown
account...) are per transaction and are the services' (channels/iso20022/reasons.py).

Speed (the service must post 20,000 credits/s from messages of 1,000 on 2 cores): the
extraction walks each element's children once, in schema order, with no XPath; XML is
built from string templates with `xml.sax.saxutils.escape`, which is several times
cheaper than building an element tree (tests/unit/test_iso20022_codec.py validates every
builder's output against its XSD and prints the measured costs; docs/iso20022.md has the
figures).

Parsers and schemas are cached per thread: lxml parsers may not be shared between
threads, and the HTTP layer may parse in worker threads.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, Literal, cast
from xml.sax.saxutils import escape

from lxml import etree

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

XSD_DIR: Final = Path(__file__).parent / "xsd"
NAMESPACE_PREFIX: Final = "urn:iso:std:iso:20022:tech:xsd:"
# A message of 1,000 credits is about 0.8 MB; 10,000 (MAX_TRANSACTIONS) about 8 MB. The
# HTTP layer passes its own (smaller) cap; this default only bounds a caller that passes none.
BODY_SIZE_MAX: Final = 16 << 20
MAX_TRANSACTIONS: Final = 10_000
CURRENCIES: Final = frozenset({"CNY"})
CURRENCY_DECIMALS: Final = 2
ADDITIONAL_INFO_SIZE_MAX: Final = 105  # Max105Text: StsRsnInf/AddtlInf
CNAPS: Final = "CNAPS"  # ExternalClearingSystemIdentification1Code of China's CNAPS

# ExternalStatusReason1Code values the codec raises (the services' are in reasons.py).
INVALID_FILE_FORMAT: Final = "FF01"  # malformed, schema-invalid, a DTD, over the size limit
ZERO_AMOUNT: Final = "AM01"
INVALID_AMOUNT: Final = "AM12"  # a sign, "1.", ".5": not a plain decimal amount
DUPLICATION: Final = "AM05"  # a TxId (RtrId) twice in one message
INVALID_CONTROL_SUM: Final = "AM10"  # CtrlSum or the total != the sum of the amounts
INVALID_CURRENCY: Final = "AM11"
INVALID_NUMBER_OF_TRANSACTIONS: Final = "AM18"  # more than MAX_TRANSACTIONS
INVALID_GROUP_NUMBER_OF_TRANSACTIONS: Final = "AM19"  # NbOfTxs != the count
DECIMALS_NOT_COMPATIBLE: Final = "CH20"  # more decimals than the currency has (CNY: 2)
INVALID_DATE: Final = "DT01"  # schema-valid but not a date Python holds (24:00:00, year 0)
BANK_IDENTIFIER_INCORRECT: Final = "RC01"  # an agent with neither BICFI nor ClrSysMmbId


class MessageRejected(Exception):
    """The whole message is refused: `reason` is an ExternalStatusReason1Code (FF01...),
    `detail` says what and where for a human; `msg_id` and `message_type` are set when the
    message could be read that far, so the rejecting pacs.002 can name its original."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        msg_id: str | None = None,
        message_type: str | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.msg_id = msg_id
        self.message_type = message_type


def namespace(message_type: str) -> str:
    if message_type not in MESSAGE_TYPES:
        raise ValueError(f"not a message type of the profile: {message_type!r}")
    return NAMESPACE_PREFIX + message_type


# --- parsers and schemas (per thread) ------------------------------------------------------
_local = threading.local()


def _hardened_parser(schema: etree.XMLSchema | None = None) -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
        schema=schema,
    )


def _parsers() -> dict[str, tuple[etree.XMLSchema, etree.XMLParser]]:
    cache: dict[str, tuple[etree.XMLSchema, etree.XMLParser]] | None = getattr(
        _local, "parsers", None
    )
    if cache is None:
        cache = _local.parsers = {}
    return cache


def schema(message_type: str) -> etree.XMLSchema:
    """The XSD subset of `message_type`, loaded once per thread."""
    return _validating(message_type)[0]


def _validating(message_type: str) -> tuple[etree.XMLSchema, etree.XMLParser]:
    """The schema and the hardened (non-validating) parser of `message_type`.

    Parsing then validating costs less than a parser that validates as it reads (a
    1,000-credit pacs.008: about 5 + 5 ms against 16 ms), so the two are separate."""
    cache = _parsers()
    entry = cache.get(message_type)
    if entry is None:
        namespace(message_type)  # ValueError for a type outside the profile
        parser = _hardened_parser()
        loaded = etree.XMLSchema(etree.parse(str(XSD_DIR / f"{message_type}.xsd"), parser))
        entry = cache[message_type] = (loaded, parser)
    return entry


def _read(body: bytes, message_type: str, body_size_max: int) -> Any:
    """Parse and schema-validate `body`; its `Document` element (FF01 otherwise)."""
    if len(body) > body_size_max:
        raise MessageRejected(
            INVALID_FILE_FORMAT,
            f"the message is {len(body)} bytes, over the limit of {body_size_max}",
            message_type=message_type,
        )
    if b"<!DOCTYPE" in body:
        raise MessageRejected(
            INVALID_FILE_FORMAT,
            "a DTD (<!DOCTYPE) is not accepted",
            message_type=message_type,
        )
    loaded, parser = _validating(message_type)
    try:
        document = etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise MessageRejected(
            INVALID_FILE_FORMAT, _error_detail(exc.error_log, str(exc)), message_type=message_type
        ) from None
    # A DTD in another encoding (UTF-16) escapes the byte check above; not this one.
    if document.getroottree().docinfo.internalDTD is not None:
        raise MessageRejected(
            INVALID_FILE_FORMAT, "a DTD is not accepted", message_type=message_type
        )
    if not loaded.validate(document):
        raise MessageRejected(
            INVALID_FILE_FORMAT,
            _error_detail(loaded.error_log, "not valid against the schema"),
            msg_id=_identify(document),
            message_type=message_type,
        )
    return document


def _error_detail(entries: Any, fallback: str) -> str:
    if not len(entries):
        return fallback
    first = entries[0]
    return f"line {first.line}: {first.message}"


def _identify(document: Any) -> str | None:
    """The GrpHdr/MsgId of a message that failed validation, when it has a usable one."""
    if len(document) == 0:
        return None
    for element in document[0].iterchildren():
        if _local_name(element) == "GrpHdr":
            for field in element.iterchildren():
                if _local_name(field) == "MsgId":
                    text = field.text
                    return text if text and 0 < len(text) <= 35 else None
    return None


def _local_name(element: Any) -> str:
    tag = element.tag
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def validate(body: bytes, message_type: str, *, body_size_max: int = BODY_SIZE_MAX) -> None:
    """Raise `MessageRejected` (FF01) unless `body` is a well-formed `message_type`
    valid against its XSD subset; ValueError for a type outside the profile."""
    _read(body, message_type, body_size_max)


# --- exact values --------------------------------------------------------------------------
_AMOUNT: Final = re.compile(r"([0-9]+)(?:\.([0-9]{1,2}))?")
_MANY_DECIMALS: Final = re.compile(r"[0-9]*\.[0-9]{3,}")


def parse_amount_minor(text: str | None, where: str, *, zero_allowed: bool = False) -> int:
    """A decimal amount in minor units, exactly: "123.45" -> 12345. More than 2 decimals
    is CH20; a sign, an exponent or a float form ("1.", ".5") is AM12; 0 is AM01 unless
    `zero_allowed` (a balance)."""
    text = (text or "").strip()
    match = _AMOUNT.fullmatch(text)
    if match is None:
        if _MANY_DECIMALS.fullmatch(text):
            raise MessageRejected(
                DECIMALS_NOT_COMPATIBLE,
                f"amount {text!r} has more than {CURRENCY_DECIMALS} decimals at {where}",
            )
        raise MessageRejected(INVALID_AMOUNT, f"amount {text!r} is not a plain decimal at {where}")
    whole, fraction = match.groups()
    minor = int(whole) * 100 + (int(fraction.ljust(2, "0")) if fraction else 0)
    if minor == 0 and not zero_allowed:
        raise MessageRejected(ZERO_AMOUNT, f"amount is zero at {where}")
    return minor


def format_amount(minor: int) -> str:
    """Minor units as the ISO decimal: 12345 -> "123.45" (never negative: the side of a
    balance or an entry is its CdtDbtInd)."""
    assert minor >= 0, minor
    return f"{minor // 100}.{minor % 100:02d}"


def _datetime(text: str | None, where: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text or "")
    except ValueError:
        raise MessageRejected(
            INVALID_DATE, f"{text!r} is not a date-time Tally reads at {where}"
        ) from None


def _date(text: str | None, where: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text or "")
    except ValueError:
        raise MessageRejected(
            INVALID_DATE, f"{text!r} is not a date Tally reads at {where}"
        ) from None


def _control_sum(text: str | None, total_minor: int, where: str) -> None:
    try:
        value = Decimal((text or "").strip())
    except InvalidOperation:  # the schema lets only decimals through: a defect otherwise
        raise AssertionError(f"schema let a non-decimal {text!r} through at {where}") from None
    if value != Decimal(total_minor).scaleb(-CURRENCY_DECIMALS):
        raise MessageRejected(
            INVALID_CONTROL_SUM,
            f"{where} is {text}, the transactions add up to {format_amount(total_minor)}",
        )


def _agent(financial_institution: Any, where: str) -> str:
    """A FinInstnId's BICFI, else its ClrSysMmbId/MmbId (RC01 if neither)."""
    for field in financial_institution.iterchildren():
        name = _local_name(field)
        if name == "BICFI":
            return cast(str, field.text)
        if name == "ClrSysMmbId":
            return cast(str, field[len(field) - 1].text)  # MmbId is its last child
    raise MessageRejected(BANK_IDENTIFIER_INCORRECT, f"no BICFI or ClrSysMmbId at {where}")


# --- pacs.008 ------------------------------------------------------------------------------
def parse_credit_transfers(body: bytes, *, body_size_max: int = BODY_SIZE_MAX) -> CreditTransfers:
    """Read a pacs.008.001.08 (see the module docstring for the checks).

    Raises `MessageRejected` for anything that makes the whole message unacceptable.
    Measured hot path: walk each CdtTrfTxInf's children once in schema order.
    """
    document = _read(body, PACS_008, body_size_max)
    message = document[0]
    header = message[0]
    msg_id: str | None = None
    try:
        fields = {_local_name(field): field for field in header.iterchildren()}
        msg_id = cast(str, fields["MsgId"].text)
        count = len(message) - 1
        number = int(fields["NbOfTxs"].text)
        if count > MAX_TRANSACTIONS:
            raise MessageRejected(
                INVALID_NUMBER_OF_TRANSACTIONS,
                f"{count} transactions, more than the {MAX_TRANSACTIONS} accepted",
            )
        if number != count:
            raise MessageRejected(
                INVALID_GROUP_NUMBER_OF_TRANSACTIONS,
                f"GrpHdr/NbOfTxs is {number}, the message holds {count} transactions",
            )
        transactions = _credit_transfers(message)
        _unique_tx_ids(transactions)
        total_minor = sum(transaction.amount_minor for transaction in transactions)
        control_sum_minor: int | None = None
        if "CtrlSum" in fields:
            _control_sum(fields["CtrlSum"].text, total_minor, "GrpHdr/CtrlSum")
            control_sum_minor = total_minor
        if "TtlIntrBkSttlmAmt" in fields:
            total = fields["TtlIntrBkSttlmAmt"]
            _currency(total.get("Ccy"), "GrpHdr/TtlIntrBkSttlmAmt")
            if parse_amount_minor(total.text, "GrpHdr/TtlIntrBkSttlmAmt") != total_minor:
                raise MessageRejected(
                    INVALID_CONTROL_SUM,
                    f"GrpHdr/TtlIntrBkSttlmAmt is {total.text}, the transactions add up to "
                    f"{format_amount(total_minor)}",
                )
        return CreditTransfers(
            msg_id=msg_id,
            created=_datetime(fields["CreDtTm"].text, "GrpHdr/CreDtTm"),
            number=number,
            control_sum_minor=control_sum_minor,
            settlement_date=_date(fields["IntrBkSttlmDt"].text, "GrpHdr/IntrBkSttlmDt"),
            instructing_agent=_agent(fields["InstgAgt"][0], "GrpHdr/InstgAgt"),
            transactions=transactions,
        )
    except MessageRejected as exc:
        exc.msg_id = msg_id
        exc.message_type = PACS_008
        raise


def _currency(code: str | None, where: str) -> str:
    if code not in CURRENCIES:
        raise MessageRejected(INVALID_CURRENCY, f"currency {code!r} is not accepted at {where}")
    return code


_N8: Final = f"{{{NAMESPACE_PREFIX}{PACS_008}}}"
_INSTRUCTION_TAG: Final = f"{_N8}InstrId"
_BICFI_TAG: Final = f"{_N8}BICFI"
_MEMBER_TAG: Final = f"{_N8}ClrSysMmbId"


def _credit_transfers(message: Any) -> tuple[CreditTransfer, ...]:
    """The CdtTrfTxInf of a schema-valid pacs.008, read by position.

    Measured hot path (1,000 transactions, tests/unit/test_iso20022_codec.py prints it):
    the schema fixed every child's place (PmtId, IntrBkSttlmAmt, ChrgBr, Dbtr, DbtrAcct,
    DbtrAgt, CdtrAgt, Cdtr, CdtrAcct, [RmtInf]; PmtId: [InstrId], EndToEndId, TxId,
    [UETR]), so only the optional ones are told apart by their tag: reading `.tag` builds
    a string each time, and a walk that dispatched on every element's tag cost about
    twice as much; per-field XPath and an XSLT to text cost about the same as this.
    """
    transactions: list[CreditTransfer] = []
    append = transactions.append
    amount_match = _AMOUNT.fullmatch
    currencies = CURRENCIES
    instruction_tag = _INSTRUCTION_TAG
    bicfi_tag = _BICFI_TAG
    children = message.iterchildren()
    next(children)  # GrpHdr
    for index, element in enumerate(children):
        fields = element.getchildren()
        payment_id = fields[0]
        first = payment_id[0]
        if first.tag == instruction_tag:
            instruction_id = first.text
            end_to_end_id = payment_id[1].text
            tx_id = payment_id[2].text
        else:
            instruction_id = None
            end_to_end_id = first.text
            tx_id = payment_id[1].text
        amount = fields[1]
        text = amount.text
        match = amount_match(text)
        if match is None:
            amount_minor = _slow_amount(text, index)
        else:
            whole, fraction = match.groups()
            amount_minor = int(whole) * 100
            if fraction:
                amount_minor += int(fraction) * (10 if len(fraction) == 1 else 1)
            if amount_minor == 0:
                _slow_amount(text, index)
        currency = amount.get("Ccy")
        if currency not in currencies:
            _currency(currency, f"CdtTrfTxInf[{index + 1}]/IntrBkSttlmAmt")
        debtor_agent = fields[5][0]
        first = debtor_agent[0] if len(debtor_agent) else None
        if first is not None and first.tag == bicfi_tag:
            debtor_bank = first.text
        else:
            debtor_bank = _agent_at(debtor_agent, index, "DbtrAgt")
        creditor_agent = fields[6][0]
        first = creditor_agent[0] if len(creditor_agent) else None
        if first is not None and first.tag == bicfi_tag:
            creditor_bank = first.text
        else:
            creditor_bank = _agent_at(creditor_agent, index, "CdtrAgt")
        remittance = None
        if len(fields) == 10 and len(fields[9]):
            remittance = fields[9][0].text
        append(
            CreditTransfer(
                instruction_id,
                end_to_end_id,
                tx_id,
                amount_minor,
                currency,
                fields[3][0].text,  # Dbtr/Nm
                fields[4][0][0][0].text,  # DbtrAcct/Id/Othr/Id
                debtor_bank,
                fields[7][0].text,  # Cdtr/Nm
                fields[8][0][0][0].text,  # CdtrAcct/Id/Othr/Id
                creditor_bank,
                remittance,
            )
        )
    return tuple(transactions)


def _slow_amount(text: str | None, index: int) -> int:
    """Raise the rejection of an amount the fast path did not take (a zero, or not a
    plain decimal with at most 2 decimals)."""
    return parse_amount_minor(text, f"CdtTrfTxInf[{index + 1}]/IntrBkSttlmAmt")


def _agent_at(financial_institution: Any, index: int, name: str) -> str:
    """A FinInstnId's BICFI, else its ClrSysMmbId/MmbId (RC01 if neither): both are
    optional in the schema, BICFI first."""
    if len(financial_institution):
        first = financial_institution[0]
        tag = first.tag
        if tag == _BICFI_TAG:
            return cast(str, first.text)
        if tag == _MEMBER_TAG:
            return cast(str, first[len(first) - 1].text)  # MmbId is its last child
    raise MessageRejected(
        BANK_IDENTIFIER_INCORRECT,
        f"no BICFI or ClrSysMmbId at CdtTrfTxInf[{index + 1}]/{name}/FinInstnId",
    )


def _unique_tx_ids(transactions: tuple[CreditTransfer, ...]) -> None:
    seen: set[str] = set()
    for index, transaction in enumerate(transactions):
        if transaction.tx_id in seen:
            raise MessageRejected(
                DUPLICATION,
                f"TxId {transaction.tx_id!r} appears twice (CdtTrfTxInf[{index + 1}])",
            )
        seen.add(transaction.tx_id)


_XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>\n'
_ILLEGAL_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _text(value: str) -> str:
    """Element text: escaped (a carriage return as a reference, or the reader would read
    a line feed); characters XML 1.0 cannot carry become U+FFFD (no parsed message holds
    one; a name from elsewhere might), so the output is always well-formed."""
    if not value.isprintable():
        if _ILLEGAL_XML.search(value):
            value = _ILLEGAL_XML.sub("\ufffd", value)
        return escape(value, _CARRIAGE_RETURN)
    return escape(value)


_CARRIAGE_RETURN: Final = {"\r": "&#13;"}


def _attribute(value: str) -> str:
    return escape(value, {'"': "&quot;"})


def _timestamp(value: dt.datetime) -> str:
    return value.isoformat()


def _financial_institution(agent: str) -> str:
    if agent.isdigit():  # a CNAPS bank code (12 digits)
        return (
            f"<FinInstnId><ClrSysMmbId><ClrSysId><Cd>{CNAPS}</Cd></ClrSysId>"
            f"<MmbId>{agent}</MmbId></ClrSysMmbId></FinInstnId>"
        )
    return f"<FinInstnId><BICFI>{_text(agent)}</BICFI></FinInstnId>"


def build_credit_transfers(message: CreditTransfers) -> bytes:
    """A pacs.008.001.08 of `message` (the partner-bank simulator's and the tests').

    NbOfTxs and CtrlSum are written as given (a test may build a wrong one);
    TtlIntrBkSttlmAmt is the sum, written when every transaction has one currency.
    """
    transactions = message.transactions
    currencies = {transaction.currency for transaction in transactions}
    parts = [
        _XML_DECLARATION,
        f'<Document xmlns="{NAMESPACE_PREFIX}{PACS_008}"><FIToFICstmrCdtTrf><GrpHdr>'
        f"<MsgId>{_text(message.msg_id)}</MsgId>"
        f"<CreDtTm>{_timestamp(message.created)}</CreDtTm>"
        f"<NbOfTxs>{message.number}</NbOfTxs>",
    ]
    if message.control_sum_minor is not None:
        parts.append(f"<CtrlSum>{format_amount(message.control_sum_minor)}</CtrlSum>")
    if len(currencies) == 1:
        total_minor = sum(transaction.amount_minor for transaction in transactions)
        parts.append(
            f'<TtlIntrBkSttlmAmt Ccy="{_attribute(currencies.pop())}">'
            f"{format_amount(total_minor)}</TtlIntrBkSttlmAmt>"
        )
    parts.append(
        f"<IntrBkSttlmDt>{message.settlement_date.isoformat()}</IntrBkSttlmDt>"
        f"<SttlmInf><SttlmMtd>CLRG</SttlmMtd></SttlmInf>"
        f"<InstgAgt>{_financial_institution(message.instructing_agent)}</InstgAgt></GrpHdr>"
    )
    for t in transactions:
        instruction = (
            f"<InstrId>{_text(t.instruction_id)}</InstrId>" if t.instruction_id is not None else ""
        )
        remittance = (
            f"<RmtInf><Ustrd>{_text(t.remittance)}</Ustrd></RmtInf>"
            if t.remittance is not None
            else ""
        )
        parts.append(
            f"<CdtTrfTxInf><PmtId>{instruction}<EndToEndId>{_text(t.end_to_end_id)}</EndToEndId>"
            f"<TxId>{_text(t.tx_id)}</TxId></PmtId>"
            f'<IntrBkSttlmAmt Ccy="{_attribute(t.currency)}">{format_amount(t.amount_minor)}'
            f"</IntrBkSttlmAmt><ChrgBr>SLEV</ChrgBr>"
            f"<Dbtr><Nm>{_text(t.debtor_name)}</Nm></Dbtr>"
            f"<DbtrAcct><Id><Othr><Id>{_text(t.debtor_account)}</Id></Othr></Id></DbtrAcct>"
            f"<DbtrAgt>{_financial_institution(t.debtor_agent)}</DbtrAgt>"
            f"<CdtrAgt>{_financial_institution(t.creditor_agent)}</CdtrAgt>"
            f"<Cdtr><Nm>{_text(t.creditor_name)}</Nm></Cdtr>"
            f"<CdtrAcct><Id><Othr><Id>{_text(t.creditor_account)}</Id></Othr></Id></CdtrAcct>"
            f"{remittance}</CdtTrfTxInf>"
        )
    parts.append("</FIToFICstmrCdtTrf></Document>\n")
    return "".join(parts).encode()


# --- pacs.004 ------------------------------------------------------------------------------
def parse_payment_returns(body: bytes, *, body_size_max: int = BODY_SIZE_MAX) -> PaymentReturns:
    """Read a pacs.004.001.09: the same checks as a pacs.008 (count, sums, CNY, exact
    amounts, RtrId unique in the message)."""
    document = _read(body, PACS_004, body_size_max)
    message = document[0]
    msg_id: str | None = None
    try:
        fields = {_local_name(field): field for field in message[0].iterchildren()}
        msg_id = cast(str, fields["MsgId"].text)
        elements = list(message)
        del elements[0]
        number = int(fields["NbOfTxs"].text)
        if len(elements) > MAX_TRANSACTIONS:
            raise MessageRejected(
                INVALID_NUMBER_OF_TRANSACTIONS,
                f"{len(elements)} returns, more than the {MAX_TRANSACTIONS} accepted",
            )
        if number != len(elements):
            raise MessageRejected(
                INVALID_GROUP_NUMBER_OF_TRANSACTIONS,
                f"GrpHdr/NbOfTxs is {number}, the message holds {len(elements)} returns",
            )
        returns = _payment_returns(elements)
        total_minor = sum(item.amount_minor for item in returns)
        if "CtrlSum" in fields:
            _control_sum(fields["CtrlSum"].text, total_minor, "GrpHdr/CtrlSum")
        if "TtlRtrdIntrBkSttlmAmt" in fields:
            total = fields["TtlRtrdIntrBkSttlmAmt"]
            _currency(total.get("Ccy"), "GrpHdr/TtlRtrdIntrBkSttlmAmt")
            if parse_amount_minor(total.text, "GrpHdr/TtlRtrdIntrBkSttlmAmt") != total_minor:
                raise MessageRejected(
                    INVALID_CONTROL_SUM,
                    f"GrpHdr/TtlRtrdIntrBkSttlmAmt is {total.text}, the returns add up to "
                    f"{format_amount(total_minor)}",
                )
        return PaymentReturns(
            msg_id=msg_id,
            created=_datetime(fields["CreDtTm"].text, "GrpHdr/CreDtTm"),
            instructing_agent=_agent(fields["InstgAgt"][0], "GrpHdr/InstgAgt"),
            returns=returns,
        )
    except MessageRejected as exc:
        exc.msg_id = msg_id
        exc.message_type = PACS_004
        raise


def _payment_returns(elements: list[Any]) -> tuple[PaymentReturn, ...]:
    returns = []
    seen: set[str] = set()
    for index, element in enumerate(elements):
        where = f"TxInf[{index + 1}]"
        fields = {_local_name(field): field for field in element.iterchildren()}
        return_id = cast(str, fields["RtrId"].text)
        if return_id in seen:
            raise MessageRejected(DUPLICATION, f"RtrId {return_id!r} appears twice ({where})")
        seen.add(return_id)
        amount = fields["RtrdIntrBkSttlmAmt"]
        returns.append(
            PaymentReturn(
                return_id=return_id,
                original_msg_id=fields["OrgnlGrpInf"][0].text,
                original_end_to_end_id=fields["OrgnlEndToEndId"].text,
                original_tx_id=fields["OrgnlTxId"].text,
                amount_minor=parse_amount_minor(amount.text, f"{where}/RtrdIntrBkSttlmAmt"),
                currency=_currency(amount.get("Ccy"), f"{where}/RtrdIntrBkSttlmAmt"),
                reason=fields["RtrRsnInf"][0][0].text,
            )
        )
    return tuple(returns)


def build_payment_returns(message: PaymentReturns) -> bytes:
    """A pacs.004.001.09 of `message` (a partner's return, for the tests and simulators)."""
    total_minor = sum(item.amount_minor for item in message.returns)
    parts = [
        _XML_DECLARATION,
        f'<Document xmlns="{NAMESPACE_PREFIX}{PACS_004}"><PmtRtr><GrpHdr>'
        f"<MsgId>{_text(message.msg_id)}</MsgId>"
        f"<CreDtTm>{_timestamp(message.created)}</CreDtTm>"
        f"<NbOfTxs>{len(message.returns)}</NbOfTxs>"
        f"<CtrlSum>{format_amount(total_minor)}</CtrlSum>"
        f"<SttlmInf><SttlmMtd>CLRG</SttlmMtd></SttlmInf>"
        f"<InstgAgt>{_financial_institution(message.instructing_agent)}</InstgAgt></GrpHdr>",
    ]
    for item in message.returns:
        parts.append(
            f"<TxInf><RtrId>{_text(item.return_id)}</RtrId>"
            f"<OrgnlGrpInf><OrgnlMsgId>{_text(item.original_msg_id)}</OrgnlMsgId>"
            f"<OrgnlMsgNmId>{PACS_008}</OrgnlMsgNmId></OrgnlGrpInf>"
            f"<OrgnlEndToEndId>{_text(item.original_end_to_end_id)}</OrgnlEndToEndId>"
            f"<OrgnlTxId>{_text(item.original_tx_id)}</OrgnlTxId>"
            f'<RtrdIntrBkSttlmAmt Ccy="{_attribute(item.currency)}">'
            f"{format_amount(item.amount_minor)}</RtrdIntrBkSttlmAmt>"
            f"<RtrRsnInf><Rsn><Cd>{_text(item.reason)}</Cd></Rsn></RtrRsnInf></TxInf>"
        )
    parts.append("</PmtRtr></Document>\n")
    return "".join(parts).encode()


# --- pacs.002 ------------------------------------------------------------------------------
def _reason(code: str | None, detail: str | None) -> str:
    if code is None and not detail:
        return ""
    reason = f"<Rsn><Cd>{_text(code)}</Cd></Rsn>" if code is not None else ""
    more = f"<AddtlInf>{_text(detail[:ADDITIONAL_INFO_SIZE_MAX])}</AddtlInf>" if detail else ""
    return f"<StsRsnInf>{reason}{more}</StsRsnInf>"


def build_status_report(report: StatusReport) -> bytes:
    """A pacs.002.001.10 of `report`: our answer to a pacs.008 or pacs.004. A detail
    longer than Max105Text is cut to 105 characters."""
    parts = [
        _XML_DECLARATION,
        f'<Document xmlns="{NAMESPACE_PREFIX}{PACS_002}"><FIToFIPmtStsRpt><GrpHdr>'
        f"<MsgId>{_text(report.msg_id)}</MsgId>"
        f"<CreDtTm>{_timestamp(report.created)}</CreDtTm></GrpHdr>"
        f"<OrgnlGrpInfAndSts><OrgnlMsgId>{_text(report.original_msg_id)}</OrgnlMsgId>"
        f"<OrgnlMsgNmId>{_text(report.original_msg_type)}</OrgnlMsgNmId>"
        f"<GrpSts>{report.group_status}</GrpSts>"
        f"{_reason(report.group_reason, report.group_detail)}</OrgnlGrpInfAndSts>",
    ]
    append = parts.append
    for status in report.transactions:
        reason = (
            _reason(status.reason, status.detail)
            if status.reason is not None or status.detail
            else ""
        )
        append(
            f"<TxInfAndSts><OrgnlEndToEndId>{_text(status.original_end_to_end_id)}"
            f"</OrgnlEndToEndId><OrgnlTxId>{_text(status.original_tx_id)}</OrgnlTxId>"
            f"<TxSts>{status.status}</TxSts>{reason}</TxInfAndSts>"
        )
    append("</FIToFIPmtStsRpt></Document>\n")
    return "".join(parts).encode()


def parse_status_report(body: bytes, *, body_size_max: int = BODY_SIZE_MAX) -> StatusReport:
    """Read a pacs.002.001.10 (Tally's own answers: for partners' simulators and tests).
    Several AddtlInf are joined with no separator; a Prtry reason is read as the reason."""
    document = _read(body, PACS_002, body_size_max)
    message = document[0]
    header = {_local_name(field): field for field in message[0].iterchildren()}
    group = message[1]
    group_fields: dict[str, Any] = {}
    group_reason: tuple[str | None, str | None] = (None, None)
    for field in group.iterchildren():
        name = _local_name(field)
        if name == "StsRsnInf":
            group_reason = _read_reason(field)
        else:
            group_fields[name] = field
    statuses = []
    for element in message.iterchildren(f"{{{NAMESPACE_PREFIX}{PACS_002}}}TxInfAndSts"):
        fields: dict[str, Any] = {}
        reason: tuple[str | None, str | None] = (None, None)
        for field in element.iterchildren():
            name = _local_name(field)
            if name == "StsRsnInf":
                reason = _read_reason(field)
            else:
                fields[name] = field.text
        statuses.append(
            TxStatus(
                original_end_to_end_id=fields.get("OrgnlEndToEndId", ""),
                original_tx_id=fields.get("OrgnlTxId", ""),
                status=fields.get("TxSts", ""),
                reason=reason[0],
                detail=reason[1],
            )
        )
    return StatusReport(
        msg_id=header["MsgId"].text,
        created=_datetime(header["CreDtTm"].text, "GrpHdr/CreDtTm"),
        original_msg_id=group_fields["OrgnlMsgId"].text,
        original_msg_type=group_fields["OrgnlMsgNmId"].text,
        group_status=group_fields["GrpSts"].text if "GrpSts" in group_fields else "RJCT",
        group_reason=group_reason[0],
        transactions=tuple(statuses),
        group_detail=group_reason[1],
    )


def _read_reason(element: Any) -> tuple[str | None, str | None]:
    code = None
    details = []
    for field in element.iterchildren():
        if _local_name(field) == "Rsn":
            code = field[0].text
        else:
            details.append(field.text)
    return code, "".join(details) if details else None


# --- camt.053 / camt.054 -------------------------------------------------------------------
_STATEMENT_ROOT: Final = {
    "camt.053": (CAMT_053, "BkToCstmrStmt", "Stmt"),
    "camt.054": (CAMT_054, "BkToCstmrDbtCdtNtfctn", "Ntfctn"),
}
_NS_PER_S: Final = 1_000_000_000


def _booked(booked_ns: int, zone: dt.tzinfo) -> str:
    seconds, nanoseconds = divmod(booked_ns, _NS_PER_S)
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC).astimezone(zone)
    text = moment.isoformat()  # no microseconds: whole seconds
    return f"{text[:19]}.{nanoseconds:09d}{text[19:]}"


def _balance(code: str, amount_minor: int, currency: str, day: dt.date) -> str:
    side = "CRDT" if amount_minor >= 0 else "DBIT"
    return (
        f"<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp>"
        f'<Amt Ccy="{_attribute(currency)}">{format_amount(abs(amount_minor))}</Amt>'
        f"<CdtDbtInd>{side}</CdtDbtInd><Dt><Dt>{day.isoformat()}</Dt></Dt></Bal>"
    )


def _entries_summary(entries: Iterable[StatementEntry]) -> str:
    credits = [entry.amount_minor for entry in entries if entry.credit]
    debits = [entry.amount_minor for entry in entries if not entry.credit]
    return (
        f"<TxsSummry><TtlCdtNtries><NbOfNtries>{len(credits)}</NbOfNtries>"
        f"<Sum>{format_amount(sum(credits))}</Sum></TtlCdtNtries>"
        f"<TtlDbtNtries><NbOfNtries>{len(debits)}</NbOfNtries>"
        f"<Sum>{format_amount(sum(debits))}</Sum></TtlDbtNtries></TxsSummry>"
    )


def build_statement(statement: Statement) -> bytes:
    """A camt.053.001.08 (`kind` "camt.053": balances OPBD and CLBD) or camt.054.001.08
    (`kind` "camt.054": no balances) of one account and period. Times are written in the
    zone of `statement.created` (UTC when it is naive); BookgDt keeps the nanoseconds."""
    message_type, root, item = _STATEMENT_ROOT[statement.kind]
    zone = statement.created.tzinfo or dt.UTC
    created = _timestamp(statement.created)
    currency = _attribute(statement.currency)
    start = dt.datetime.combine(statement.from_date, dt.time(0, 0, 0), statement.created.tzinfo)
    end = dt.datetime.combine(statement.to_date, dt.time(23, 59, 59), statement.created.tzinfo)
    parts = [
        _XML_DECLARATION,
        f'<Document xmlns="{NAMESPACE_PREFIX}{message_type}"><{root}><GrpHdr>'
        f"<MsgId>{_text(statement.msg_id)}</MsgId><CreDtTm>{created}</CreDtTm></GrpHdr>"
        f"<{item}><Id>{_text(statement.msg_id)}</Id><CreDtTm>{created}</CreDtTm>"
        f"<FrToDt><FrDtTm>{_timestamp(start)}</FrDtTm><ToDtTm>{_timestamp(end)}</ToDtTm>"
        f"</FrToDt><Acct><Id><Othr><Id>{_text(statement.account_number)}</Id></Othr></Id>"
        f"<Ccy>{currency}</Ccy></Acct>",
    ]
    if statement.kind == "camt.053":
        parts.append(
            _balance("OPBD", statement.opening_minor, statement.currency, statement.from_date)
        )
        parts.append(
            _balance("CLBD", statement.closing_minor, statement.currency, statement.to_date)
        )
    parts.append(_entries_summary(statement.entries))
    for entry in statement.entries:
        parts.append(_entry(entry, currency, zone))
    parts.append(f"</{item}></{root}></Document>\n")
    return "".join(parts).encode()


def _entry(entry: StatementEntry, currency: str, zone: dt.tzinfo) -> str:
    details = ""
    if entry.counterparty is not None or entry.remittance is not None:
        party = ""
        if entry.counterparty is not None:
            role = "Dbtr" if entry.credit else "Cdtr"  # money in: the payer is the debtor
            name = _text(entry.counterparty)
            party = f"<RltdPties><{role}><Pty><Nm>{name}</Nm></Pty></{role}></RltdPties>"
        remittance = (
            f"<RmtInf><Ustrd>{_text(entry.remittance)}</Ustrd></RmtInf>"
            if entry.remittance is not None
            else ""
        )
        details = f"<NtryDtls><TxDtls>{party}{remittance}</TxDtls></NtryDtls>"
    return (
        f"<Ntry><NtryRef>{_text(entry.entry_ref)}</NtryRef>"
        f'<Amt Ccy="{currency}">{format_amount(entry.amount_minor)}</Amt>'
        f"<CdtDbtInd>{'CRDT' if entry.credit else 'DBIT'}</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>"
        f"<BookgDt><DtTm>{_booked(entry.booked_ns, zone)}</DtTm></BookgDt>"
        f"<ValDt><Dt>{entry.value_date.isoformat()}</Dt></ValDt>"
        f"<AcctSvcrRef>{_text(entry.transfer_id_hex)}</AcctSvcrRef>"
        f"<BkTxCd><Prtry><Cd>{_text(entry.code_name)}</Cd><Issr>TALLY</Issr></Prtry></BkTxCd>"
        f"{details}</Ntry>"
    )


def parse_statement(body: bytes, *, body_size_max: int = BODY_SIZE_MAX) -> Statement:
    """Read a camt.053.001.08 or camt.054.001.08 Tally built (for tests and simulators):
    the first statement of the message. `account_id` is the account number read as an
    integer (0 when it is not one); a camt.054 has no balances: both are 0."""
    kind: Literal["camt.053", "camt.054"] = (
        "camt.054" if b"camt.054.001.08" in body[:4096] else "camt.053"
    )
    message_type, _root, _item = _STATEMENT_ROOT[kind]
    document = _read(body, message_type, body_size_max)
    message = document[0]
    header = {_local_name(field): field for field in message[0].iterchildren()}
    report = message[1]
    balances: dict[str, tuple[int, dt.date]] = {}
    entries = []
    fields: dict[str, Any] = {}
    for field in report.iterchildren():
        name = _local_name(field)
        if name == "Bal":
            balances[field[0][0][0].text] = _read_balance(field)
        elif name == "Ntry":
            entries.append(_read_entry(field))
        else:
            fields[name] = field
    account_number = fields["Acct"][0][0][0].text
    period = fields["FrToDt"]
    opening = balances.get("OPBD", (0, None))[0]
    closing = balances.get("CLBD", (0, None))[0]
    return Statement(
        msg_id=header["MsgId"].text,
        created=_datetime(header["CreDtTm"].text, "GrpHdr/CreDtTm"),
        account_id=int(account_number) if account_number.isdigit() else 0,
        account_number=account_number,
        currency=fields["Acct"][1].text if len(fields["Acct"]) > 1 else "",
        from_date=_datetime(period[0].text, "FrToDt/FrDtTm").date(),
        to_date=_datetime(period[1].text, "FrToDt/ToDtTm").date(),
        opening_minor=opening,
        closing_minor=closing,
        entries=tuple(entries),
        kind=kind,
    )


def _read_balance(element: Any) -> tuple[int, dt.date]:
    _type, amount, side, day = element
    minor = parse_amount_minor(amount.text, "Bal/Amt", zero_allowed=True)
    return (minor if side.text == "CRDT" else -minor), _date(day[0].text, "Bal/Dt")


def _read_entry(element: Any) -> StatementEntry:
    fields = {_local_name(field): field for field in element.iterchildren()}
    booked = fields["BookgDt"][0].text
    moment = _datetime(booked[:19] + booked[29:], "Ntry/BookgDt")
    booked_ns = int(moment.timestamp()) * _NS_PER_S + int(booked[20:29])
    counterparty = remittance = None
    if "NtryDtls" in fields:
        for detail in fields["NtryDtls"][0].iterchildren():
            if _local_name(detail) == "RltdPties":
                counterparty = detail[0][0][0].text
            else:
                remittance = detail[0].text
    credit = fields["CdtDbtInd"].text == "CRDT"
    return StatementEntry(
        entry_ref=fields["NtryRef"].text,
        amount_minor=parse_amount_minor(fields["Amt"].text, "Ntry/Amt"),
        credit=credit,
        booked_ns=booked_ns,
        value_date=_date(fields["ValDt"][0].text, "Ntry/ValDt"),
        transfer_id_hex=fields["AcctSvcrRef"].text,
        code_name=fields["BkTxCd"][0][0].text,
        counterparty=counterparty,
        remittance=remittance,
    )
