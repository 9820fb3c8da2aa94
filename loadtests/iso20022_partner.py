"""A partner bank sending ISO 20022 credit transfers (pacs.008) to Tally and reading its
pacs.002 answers: for the Locust `PartnerBankUser` and `tally bench iso20022`.

    partner = PartnerBank("ICBKCNBJXXX", signer)
    body = partner.message([("6235010000000000010", 12_345)])   # one pacs.008, 1 credit
    headers = partner.headers(body)                                # signed like any channel
    report = read_status_report(response_bytes)                    # the pacs.002
    report.by_tx_id["..."].status                                  # "ACSC" | "RJCT" | "PDNG"

What a partner does, as docs/iso20022.md specifies it: every credit carries a TxId that
is unique for this partner (the instructing agent) for good, so a message sent again
(the same MsgId after a lost answer, or a new MsgId carrying the same TxIds) posts
nothing twice: Tally answers ACSC again for the credits it booked. The messages are
built with the channel's own codec (`channels.iso20022.codec.build_credit_transfers`):
the simulator builds values, not XML.

The pacs.002 is read here with lxml, independently of the codec's builder (a partner
reads the wire, not Tally's types): one pass over the elements by local name.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from lxml import etree

from channels.client import Signer

PACS_008_PATH: Final = "/v1/iso20022/pacs.008"
PACS_004_PATH: Final = "/v1/iso20022/pacs.004"
CONTENT_TYPE: Final = "application/xml"
# The partner and its customer (the debtor of every credit it sends).
PARTNER_BIC_DEFAULT: Final = "ICBKCNBJXXX"
DEBTOR_ACCOUNT: Final = "6222020200112233"
DEBTOR_NAME: Final = "付款人"
CURRENCY: Final = "CNY"
# Tally as the creditor agent of every credit (the bank's BIC in docs/iso20022.md).
TALLY_AGENT_DEFAULT: Final = "TALYCNSHXXX"
# What a pacs.002 answer may say of one credit.
ACCEPTED: Final = "ACSC"
REJECTED: Final = "RJCT"
PENDING: Final = "PDNG"
# A pacs.002's reading is refused beyond this size (a partner's own limit).
STATUS_REPORT_SIZE_MAX: Final = 16 * 1024 * 1024
_PARSER: Final = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
)


def credit_reference(instructing_agent: str, tx_id: str) -> str:
    """The clearing reference Tally keys an ISO 20022 credit by (its transfer id is derived
    from it): the instructing agent and the TxId, unique per sender. The same as
    `channels.iso20022.http.credit_reference` (a test keeps the two equal; the load
    tests do not import the server's adapter)."""
    return f"{instructing_agent}/{tx_id}"


@dataclass(frozen=True, slots=True)
class Credit:
    """One credit the partner sends: to `account` (our 19-digit number), `amount_minor` fen."""

    account: str
    amount_minor: int
    tx_id: str
    creditor_name: str = "收款人"


@dataclass(frozen=True, slots=True)
class Sent:
    """A pacs.008 and what it carries (`credits` in message order)."""

    msg_id: str
    body: bytes
    credits: tuple[Credit, ...]


class PartnerBank:
    """Numbers and builds a partner's pacs.008 messages and signs them for Tally.

    `tag` makes this partner's MsgIds and TxIds unique across runs and processes (a
    TxId is unique per instructing agent for good: a TxId reused with other fields is
    refused AM05)."""

    def __init__(
        self,
        signer: Signer,
        *,
        bic: str = PARTNER_BIC_DEFAULT,
        tally_agent: str = TALLY_AGENT_DEFAULT,
        tag: str | None = None,
    ) -> None:
        self.signer = signer
        self.bic = bic
        self.tally_agent = tally_agent
        self.tag = tag if tag is not None else secrets.token_hex(5)
        self._messages = itertools.count(1)
        self._transactions = itertools.count(1)

    def next_tx_id(self) -> str:
        return f"T{self.tag}{next(self._transactions):09d}"

    def next_msg_id(self) -> str:
        return f"M{self.tag}{next(self._messages):09d}"

    def credits(self, targets: Iterable[tuple[str, int]]) -> tuple[Credit, ...]:
        """Fresh credits (new TxIds) of (account, amount_minor)."""
        return tuple(Credit(account, amount, self.next_tx_id()) for account, amount in targets)

    def message(self, credits: Sequence[Credit], msg_id: str | None = None) -> Sent:
        """A pacs.008 carrying `credits` (a new MsgId unless `msg_id` is given: a resend)."""
        from channels.iso20022.codec import build_credit_transfers
        from channels.iso20022.messages import CreditTransfer, CreditTransfers

        msg_id = msg_id or self.next_msg_id()
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        transactions = tuple(
            CreditTransfer(
                instruction_id=None,
                end_to_end_id="E" + credit.tx_id[1:],
                tx_id=credit.tx_id,
                amount_minor=credit.amount_minor,
                currency=CURRENCY,
                debtor_name=DEBTOR_NAME,
                debtor_account=DEBTOR_ACCOUNT,
                debtor_agent=self.bic,
                creditor_name=credit.creditor_name,
                creditor_account=credit.account,
                creditor_agent=self.tally_agent,
                remittance=None,
            )
            for credit in credits
        )
        transfers = CreditTransfers(
            msg_id=msg_id,
            created=now,
            number=len(transactions),
            control_sum_minor=sum(credit.amount_minor for credit in credits),
            settlement_date=now.date(),
            instructing_agent=self.bic,
            transactions=transactions,
        )
        return Sent(msg_id, build_credit_transfers(transfers), tuple(credits))

    def reference(self, credit: Credit) -> str:
        return credit_reference(self.bic, credit.tx_id)

    def headers(self, sent: Sent, path: str = PACS_008_PATH) -> dict[str, str]:
        """The signed headers of a POST of `sent` to `path`, its MsgId as the Idempotency-Key
        (a fresh nonce and timestamp: sign just before sending)."""
        headers = self.signer.headers(
            "POST", path, sent.body, idempotency_key=sent.msg_id, content_type=CONTENT_TYPE
        )
        headers["Accept"] = CONTENT_TYPE
        return headers


# --- the pacs.002 answer -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TxAnswer:
    tx_id: str
    end_to_end_id: str
    status: str
    reason: str | None
    detail: str | None

    @property
    def outcome(self) -> str:
        """What the partner makes of it: "booked" (ACSC), "rejected" (RJCT), "pending"
        (PDNG: not decided; the same TxId goes again later), "" (not a status we know).

        PDNG means one of two things (channels/iso20022/http.py, reasons.py) that the wire
        does not tell apart: the bank shed the credit before admitting it (nothing booked),
        or its risk controls hold the money (a pending transfer the bank releases or
        returns). A partner sends both again with the same TxId: idempotent either way."""
        if self.status == ACCEPTED:
            return "booked"
        if self.status == REJECTED:
            return "rejected"
        if self.status == PENDING:
            return "pending"
        return ""


@dataclass(slots=True)
class StatusAnswer:
    """A pacs.002 as a partner reads it."""

    msg_id: str = ""
    original_msg_id: str = ""
    original_msg_type: str = ""
    group_status: str = ""
    group_reason: str | None = None
    group_detail: str | None = None
    transactions: list[TxAnswer] = field(default_factory=list)

    @property
    def by_tx_id(self) -> dict[str, TxAnswer]:
        return {answer.tx_id: answer for answer in self.transactions}


class StatusReportError(ValueError):
    """The answer is not a pacs.002 this reader understands."""


def read_status_report(body: bytes) -> StatusAnswer:
    """The pacs.002 in `body` (hardened parser; no schema: the tests validate Tally's output
    against the XSD, a partner only reads it). StatusReportError if it is none."""
    if len(body) > STATUS_REPORT_SIZE_MAX:
        raise StatusReportError(f"a pacs.002 of {len(body)} bytes")
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as error:
        raise StatusReportError(f"not XML: {error}") from None
    report = next((child for child in root if _local(child) == "FIToFIPmtStsRpt"), None)
    if _local(root) != "Document" or report is None:
        raise StatusReportError(f"not a pacs.002 Document ({_local(root)})")
    answer = StatusAnswer()
    for part in report:
        name = _local(part)
        if name == "GrpHdr":
            answer.msg_id = _text(part, "MsgId") or ""
        elif name == "OrgnlGrpInfAndSts":
            answer.original_msg_id = _text(part, "OrgnlMsgId") or ""
            answer.original_msg_type = _text(part, "OrgnlMsgNmId") or ""
            answer.group_status = _text(part, "GrpSts") or ""
            answer.group_reason, answer.group_detail = _reason(part)
        elif name == "TxInfAndSts":
            reason, detail = _reason(part)
            answer.transactions.append(
                TxAnswer(
                    tx_id=_text(part, "OrgnlTxId") or "",
                    end_to_end_id=_text(part, "OrgnlEndToEndId") or "",
                    status=_text(part, "TxSts") or "",
                    reason=reason,
                    detail=detail,
                )
            )
    return answer


def _local(element: etree._Element) -> str:
    tag = element.tag
    if not isinstance(tag, str):
        return ""  # a comment or processing instruction
    return tag.rpartition("}")[2]


def _text(parent: etree._Element, name: str) -> str | None:
    for child in parent:
        if _local(child) == name:
            text: str | None = child.text
            return text
    return None


def _reason(parent: etree._Element) -> tuple[str | None, str | None]:
    """StsRsnInf/Rsn/Cd and StsRsnInf/AddtlInf under `parent`, if any."""
    for child in parent:
        if _local(child) != "StsRsnInf":
            continue
        code = detail = None
        for part in child:
            if _local(part) == "Rsn":
                code = _text(part, "Cd")
            elif _local(part) == "AddtlInf" and detail is None:
                detail = part.text
        return code, detail
    return None, None
