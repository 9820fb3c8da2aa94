"""ISO 20022 over HTTP: the partner banks' pacs.008 and pacs.004, the camt statements.

The routes are ordinary /v1 routes (channels/http/routes.py, `Route.xml`): signed like
every channel request, under the channel's body cap, the operation allowed for the
channel, its kind admitted by the policy (core/services/policy.py), an Idempotency-Key
(send the MsgId), the in-flight guard; whatever is refused before the handler is the
same problem+json every route answers (an unverified sender learns nothing of ISO
20022). Then the handler here parses the XML (channels/iso20022/codec.py: hardened
lxml, the XSD subset, the business checks), turns it into one service command and
renders the outcome:

    POST /v1/iso20022/pacs.008  -> `Payments.incoming_credits` (ONE engine admission for
                                   the whole message) -> 200 pacs.002: ACSC per booked
                                   credit, RJCT + reason per refused one, PDNG per credit
                                   the risk controls hold; group ACSC / PART / RJCT / PDNG
    POST /v1/iso20022/pacs.004  -> `Payments.payment_return` per return -> 200 pacs.002
    malformed / schema-invalid  -> 400 pacs.002, group RJCT, the codec's reason (FF01...)
    engine overloaded           -> 503 problem+json with Retry-After: nothing admitted
    GET  /v1/iso20022/camt.053  -> `Reads.statement` -> the camt.053 (camt.054 likewise)

A credit's clearing reference (its operation key: the transfer id derives from it) is
`credit_reference(instructing agent, TxId)`: TxId is unique per instructing agent, so
the same credit sent again, in the same message or a new one (another MsgId), posts
nothing twice and is answered ACSC again; the same TxId with another account, amount
or debtor (agent, account, name) is RJCT AM05. An agent is a BIC or a CNAPS code, never
containing "/", so the reference is unambiguous; it never equals a JSON
`clearing_reference` (which cannot contain "/").
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import anyio

from channels.http.handlers import Context, Reply
from channels.http.metrics import Metrics
from channels.http.problems import Problem
from channels.http.schema import account_id_param, fail
from channels.iso20022 import codec, reasons
from channels.iso20022.messages import (
    PACS_004,
    PACS_008,
    CreditTransfers,
    GroupStatusCode,
    PaymentReturns,
    Statement,
    StatementEntry,
    StatusReport,
    TxStatus,
)
from core.services.bank import Bank
from core.services.commands import IncomingCredit, IncomingCredits, Proof, ReturnPayment
from core.services.records import NS_PER_S
from core.services.refusals import Code, Refusal, Refused
from core.services.results import Posted

XML = b"application/xml"
XML_TYPES = ("application/xml", "text/xml")
_EPOCH_DATE = dt.date(2000, 1, 1)  # day number 0 (limits.calendar)
_ACCOUNT_RE = re.compile(r"[1-9][0-9]{0,37}")
_TRANSFER_ID_RE = re.compile(r"[0-9a-f]{32}")
# Refusals of the service as a whole (the engine shed load, stopped, the store cannot
# write): the message is answered 503 / 429 with Retry-After, no status for any item.
WHOLE_MESSAGE_CODES = frozenset(
    {Code.NOT_READY, Code.OVERLOADED, Code.UNAVAILABLE, Code.STORAGE_UNAVAILABLE}
)
NOT_PROVIDED = "NOTPROVIDED"  # the original MsgId of a message too broken to name one
DETAIL_LENGTH_MAX = 105  # StsRsnInf/AddtlInf (Max105Text)


def credit_reference(instructing_agent: str, tx_id: str) -> str:
    """The clearing reference of one pacs.008 credit: its operation key (see the module)."""
    return f"{instructing_agent}/{tx_id}"


class Iso20022Handlers:
    """One method per ISO 20022 route operation (`Route.operation` of a `Route.xml`)."""

    def __init__(self, bank: Bank, metrics: Metrics) -> None:
        self.bank = bank
        self.payments = bank.payments
        self.metrics = metrics
        self.now_ns = bank.core.now_ns

    # --- pacs.008: credits to our customers -------------------------------------------

    async def incoming_credits(self, ctx: Context) -> Reply:
        body = xml_body(ctx)
        try:
            # In a worker thread: libxml2 parses and validates with the GIL released, so one
            # message's parse overlaps the event loop's work on the others. The codec caches
            # its parsers per thread.
            message = await anyio.to_thread.run_sync(
                _parse_credit_transfers, body, ctx.channel.body_size_max
            )
        except codec.MessageRejected as rejected:
            return self.rejected(rejected, PACS_008)
        statuses, pending = self.credit_statuses(message)
        if pending:
            command = IncomingCredits(ctx.caller, [credit for _, credit in pending])
            posted = await self.payments.incoming_credits(command)
            for (index, _), outcome in zip(pending, posted.outcomes, strict=True):
                transaction = message.transactions[index]
                statuses[index] = tx_status(transaction.end_to_end_id, transaction.tx_id, outcome)
        return self.report(message.msg_id, PACS_008, statuses)

    def credit_statuses(
        self, message: CreditTransfers
    ) -> tuple[list[Any], list[tuple[int, IncomingCredit]]]:
        """Each credit's status where the adapter decides it (an account number that
        cannot be ours: RJCT AC01; another currency: RJCT AM11), and the commands of the
        others with their index."""
        statuses: list[Any] = [None] * len(message.transactions)
        pending: list[tuple[int, IncomingCredit]] = []
        agent = message.instructing_agent
        for index, transaction in enumerate(message.transactions):
            if transaction.currency != "CNY":
                statuses[index] = TxStatus(
                    transaction.end_to_end_id, transaction.tx_id, "RJCT", "AM11",
                    f"currency {transaction.currency}: only CNY",
                )  # fmt: skip
                continue
            number = transaction.creditor_account
            if not _ACCOUNT_RE.fullmatch(number):
                statuses[index] = TxStatus(
                    transaction.end_to_end_id, transaction.tx_id, "RJCT", "AC01",
                    "the creditor account is not an account number of this bank",
                )  # fmt: skip
                continue
            pending.append(
                (
                    index,
                    IncomingCredit(
                        int(number),
                        transaction.amount_minor,
                        credit_reference(agent, transaction.tx_id),
                        {
                            "bank_code": transaction.debtor_agent,
                            "account_number": transaction.debtor_account,
                            "name": transaction.debtor_name,
                        },
                    ),
                )
            )
        return statuses, pending

    # --- pacs.004: returns of our external transfers --------------------------------

    async def payment_return(self, ctx: Context) -> Reply:
        body = xml_body(ctx)
        try:
            message = codec.parse_payment_returns(body, body_size_max=ctx.channel.body_size_max)
        except codec.MessageRejected as rejected:
            return self.rejected(rejected, PACS_004)
        return self.report(message.msg_id, PACS_004, await self.returned(ctx, message))

    async def returned(self, ctx: Context, message: PaymentReturns) -> list[TxStatus]:
        """One service call per return (a pacs.004 carries few; each waits for its own
        posting, none is admitted with another)."""
        statuses: list[TxStatus] = []
        for item in message.returns:
            end_to_end, return_id = item.original_end_to_end_id, item.return_id
            if item.currency != "CNY":
                statuses.append(TxStatus(end_to_end, return_id, "RJCT", "AM11", "only CNY"))
                continue
            original = item.original_tx_id.lower()
            if not _TRANSFER_ID_RE.fullmatch(original):
                statuses.append(
                    TxStatus(
                        end_to_end, return_id, "RJCT", "NARR",
                        "OrgnlTxId is not a transfer id of this bank (32 hex digits)",
                    )
                )  # fmt: skip
                continue
            command = ReturnPayment(
                ctx.caller, return_id, int(original, 16), item.amount_minor, item.reason
            )
            try:
                outcome: Posted | Refusal = await self.payments.payment_return(command)
            except Refused as error:
                if error.refusal.code in WHOLE_MESSAGE_CODES:
                    raise  # the engine's overload or stop: 503 for the message
                outcome = error.refusal
            statuses.append(tx_status(end_to_end, return_id, outcome))
        return statuses

    # --- camt.053 / camt.054 ----------------------------------------------------------

    async def read_statement(self, ctx: Context) -> Reply:
        return await self.statement(ctx, "camt.053")

    async def read_notification(self, ctx: Context) -> Reply:
        return await self.statement(ctx, "camt.054")

    async def statement(self, ctx: Context, kind: Any) -> Reply:
        if xml_body_sent(ctx):
            raise Problem(415, "unsupported-media-type", "This route takes no request body")
        query = ctx.query
        for name in ("account_id", "from", "to"):
            if name not in query:
                raise fail(f"/{name}", "required query parameter")
        account_id = account_id_param(query["account_id"])
        from_date, from_day = _day(query["from"], "/from")
        to_date, to_day = _day(query["to"], "/to")
        if to_day < from_day:
            raise fail("/to", "the period ends before it starts")
        read = await self.bank.reads.statement(
            ctx.caller, account_id, from_day, to_day, Proof(ctx.session, ctx.token)
        )
        entries = tuple(
            StatementEntry(
                line.transfer_id,
                line.amount_minor,
                line.credit,
                line.timestamp_ns,
                dt.date.fromisoformat(line.business_day),
                line.transfer_id,
                line.code.upper(),
            )
            for line in read.entries
        )
        statement = Statement(
            message_id(),
            self.created(),
            account_id,
            str(account_id),
            read.currency,
            from_date,
            to_date,
            read.opening_minor,
            read.closing_minor,
            entries,
            kind,
        )
        return Reply(200, codec.build_statement(statement), [], XML)

    # --- rendering ------------------------------------------------------------------

    def created(self) -> dt.datetime:
        """Now, in the bank's time zone (its business days' and the statements' zone)."""
        now_ns = self.now_ns()
        return dt.datetime.fromtimestamp(now_ns // NS_PER_S, self.bank.rules.timezone).replace(
            microsecond=now_ns % NS_PER_S // 1000
        )

    def report(self, original_msg_id: str, message_type: str, statuses: list[Any]) -> Reply:
        """200 with the pacs.002 of `statuses` (one per transaction, in order)."""
        accepted = rejected = pending = 0
        for status in statuses:
            code = status.status
            if code == "ACSC":
                accepted += 1
            elif code == "RJCT":
                rejected += 1
            else:
                pending += 1
        group: GroupStatusCode
        if accepted == len(statuses):
            group = "ACSC"
        elif rejected == len(statuses):
            group = "RJCT"
        elif pending == len(statuses):
            group = "PDNG"
        else:
            group = "PART"
        report = StatusReport(
            message_id(),
            self.created(),
            original_msg_id,
            message_type,
            group,
            None,
            tuple(statuses),
        )
        return Reply(200, codec.build_status_report(report), [], XML)

    def rejected(self, rejected: Any, message_type: str) -> Reply:
        """400 with a pacs.002 refusing the whole message (the codec's reason: FF01...)."""
        report = StatusReport(
            message_id(),
            self.created(),
            rejected.msg_id or NOT_PROVIDED,
            rejected.message_type or message_type,
            "RJCT",
            rejected.reason,
            (),
            _cut(rejected.detail),
        )
        return Reply(400, codec.build_status_report(report), [], XML)


def _parse_credit_transfers(body: bytes, body_size_max: int) -> CreditTransfers:
    return codec.parse_credit_transfers(body, body_size_max=body_size_max)


# The two kinds of PDNG, told apart in AddtlInf: a credit held by the risk controls (booked
# as a hold: the bank releases or returns it; do not send it again) and one not admitted
# now (send it again later; it posts once).
RISK_HOLD_DETAIL = "held by the risk controls: booked as a hold, do not resend"
NOT_NOW_DETAIL = "not admitted now, resend: "


def tx_status(end_to_end_id: str, tx_id: str, outcome: Posted | Refusal) -> TxStatus:
    """A service outcome as a pacs.002 transaction status (reasons.py: the one table)."""
    if type(outcome) is Posted:
        if outcome.risk_hold:  # the money waits in a hold the bank releases or returns
            return TxStatus(end_to_end_id, tx_id, "PDNG", None, RISK_HOLD_DETAIL)
        return TxStatus(end_to_end_id, tx_id, "ACSC")
    assert isinstance(outcome, Refusal)
    reason, detail = reasons.status_reason(outcome)
    if reason is None:  # "not now" (the channel's share of the log is full): sent again later
        return TxStatus(end_to_end_id, tx_id, "PDNG", None, _cut(NOT_NOW_DETAIL + (detail or "")))
    return TxStatus(end_to_end_id, tx_id, "RJCT", reason, _cut(detail))


def _cut(detail: str | None) -> str | None:
    if not detail:
        return None
    return detail if len(detail) <= DETAIL_LENGTH_MAX else detail[: DETAIL_LENGTH_MAX - 3] + "..."


def message_id() -> str:
    """A MsgId of ours (Max35Text): unique without coordination."""
    return "TALLY" + uuid.uuid4().hex[:30]


def xml_body(ctx: Context) -> bytes:
    """The request's XML body: sent as application/xml or text/xml (else 415)."""
    if ctx.content_type not in XML_TYPES:
        raise Problem(
            415,
            "unsupported-media-type",
            "Send the ISO 20022 message as application/xml",
            f"got {ctx.content_type}",
        )
    body: bytes = ctx.body
    return body


def xml_body_sent(ctx: Context) -> bool:
    return bool(ctx.body)


def _day(text: str, pointer: str) -> tuple[dt.date, int]:
    """A calendar date (YYYY-MM-DD, the schema checked the shape) and its day number."""
    try:
        value = dt.date.fromisoformat(text)
    except ValueError:
        raise fail(pointer, "expected a calendar date YYYY-MM-DD") from None
    day = (value - _EPOCH_DATE).days
    if day < 0:
        raise fail(pointer, "expected a date from 2000-01-01 on")
    return value, day


def xml_operation(route: Any, operation: dict[str, Any]) -> None:
    """The OpenAPI operation of an ISO 20022 route (`Route.xml`): XML in and out."""
    schema = {"type": "string", "contentMediaType": "application/xml"}
    success = operation["responses"][str(route.status)]
    success["content"] = {
        "application/xml": {
            "schema": schema,
            "description": "pacs.002.001.10" if route.method == "POST" else route.xml,
        }
    }
    if route.method == "POST":
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/xml": {"schema": schema, "description": route.xml},
                "text/xml": {"schema": schema, "description": route.xml},
            },
        }
        # 400 is the pacs.002 refusing a message, or the problem of a request that is no
        # message to refuse (no Idempotency-Key): both media types are documented.
        problem = operation["responses"].get("400", {}).get("content", {})
        operation["responses"]["400"] = {
            "description": "malformed or schema-invalid message: a pacs.002.001.10 refusing "
            "the whole message (group RJCT, reason FF01 or the business check's); a request "
            "without an Idempotency-Key: a problem",
            "content": {"application/xml": {"schema": schema}, **problem},
        }
