"""The HTTP adapter's handlers: a validated request in, a service call, a response out.

Each handler turns a `Context` (the authenticated channel, the schema-checked
body, the Idempotency-Key) into a typed command, calls one service and
renders the typed result. Refusals are raised by the services as `Refused`
and rendered by the app from the one table in `channels/http/problems.py`.
"""

from __future__ import annotations

import datetime
import re
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson

from channels.http import loans
from channels.http.batch import pack_json_batch, render_batch_results, stamp_binary_batch
from channels.http.loans import answer, products_json, quote_command
from channels.http.metrics import Metrics
from channels.http.problems import REPLAY_HEADER, Problem
from channels.http.schema import (
    account_id_param,
    decode_base64,
    fail,
    transfer_id_param,
    transfer_id_text,
)
from channels.registry import ChannelEntry
from core.services.bank import Bank
from core.services.commands import (
    NO_CONTEXT,
    Caller,
    ChangeAccount,
    ConfirmInPerson,
    ConfirmSmsCode,
    Consent,
    CorrectInterest,
    IssueToken,
    Movement,
    OpenAccount,
    OpenFixedDeposit,
    OpenSession,
    PostingBatch,
    Proof,
    QuoteFixedDeposit,
    RegisterCustomer,
    RequestSmsCode,
    RiskContext,
    SetPassword,
    StartCardBinding,
    SubmitIdDocument,
    SubmitLiveness,
    VerifyAccount,
    WithdrawFixedDeposit,
)
from core.services.customers import CLASS_OF_NAME
from core.services.policy import OPERATIONS
from core.services.records import money_name, rfc3339
from core.services.results import BatchPosted, Posted
from core.services.verification import check_image
from ledger.types import TRANSFER_SIZE, CreateTransferResult, TransferCode
from limits.calendar import DAY_COUNT

R = CreateTransferResult
_CODE_NAMES = {int(code): code.name.lower() for code in TransferCode}
_POSTING_STATE = {0: "posted", 2: "pending", 4: "captured", 8: "voided"}
_LIMIT_RE = re.compile(r"[0-9]{1,3}")
_CURSOR_RE = re.compile(r"[0-9]{1,18}")
_EPOCH_DATE = datetime.date(2000, 1, 1)  # day number 0 (limits.calendar)


@dataclass(slots=True)
class Context:
    channel: ChannelEntry
    caller: Caller
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    idempotency_key: str
    token: str
    content_type: str = "application/json"
    session: str = ""  # the Tally-Session header (a customer session), as sent


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"application/json"


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, orjson.dumps(value))


def posted_reply(posted: Posted) -> Reply:
    """201 with the posted transfer (and Idempotent-Replayed when met again by id); 202
    when the risk stage held it instead (`held_reply`)."""
    if posted.risk_hold:
        return held_reply(posted)
    pending_id = posted.pending_id
    body = {
        "transfer_id": posted.transfer_id_packed[::-1].hex(),
        "operation": posted.operation,
        "status": _POSTING_STATE[posted.flags & 0x0E],
        "debit_account_id": str(posted.debit),
        "credit_account_id": str(posted.credit),
        "amount_minor": posted.amount_minor,
        "code": _CODE_NAMES.get(posted.code) or money_name(posted.code),
        "pending_id": transfer_id_text(pending_id) if pending_id else None,
        "timeout_s": posted.timeout_s,
        "channel": posted.channel,
        "timestamp_ns": posted.timestamp_ns,
    }
    return Reply(201, orjson.dumps(body), [REPLAY_HEADER] if posted.replayed else [])


def held_reply(posted: Posted) -> Reply:
    """202: the risk stage placed a pending hold instead of moving the money. `status`
    says which hold ("delayed": the bank captures it at `release_at`; "review": a risk
    officer releases or returns it, else it returns to the payer by `release_at`), and
    `decision_id` names the recorded decision. Which rules fired is not disclosed."""
    pending_id = posted.pending_id
    body = {
        "transfer_id": posted.transfer_id_packed[::-1].hex(),
        "operation": posted.operation,
        "status": posted.risk_hold,
        "debit_account_id": str(posted.debit),
        "credit_account_id": str(posted.credit),
        "amount_minor": posted.amount_minor,
        "code": _CODE_NAMES.get(posted.code) or money_name(posted.code),
        "pending_id": transfer_id_text(pending_id) if pending_id else None,
        "timeout_s": posted.timeout_s,
        "channel": posted.channel,
        "timestamp_ns": posted.timestamp_ns,
        "release_at": rfc3339(posted.release_at_ns) if posted.release_at_ns else None,
        "decision_id": posted.decision_id or None,
    }
    return Reply(202, orjson.dumps(body), [REPLAY_HEADER] if posted.replayed else [])


def risk_context(device: Any) -> RiskContext:
    """The command's risk context from the request's `device` object (schema-checked;
    absent on most requests: then the shared empty one, no allocation)."""
    if not device:
        return NO_CONTEXT
    return RiskContext(device.get("id", ""), device.get("ip", ""), device.get("location", ""))


def transfer_fields(body: dict[str, Any], token: str) -> tuple[int, int, Any, Consent, RiskContext]:
    """A single transfer's debit and credit accounts, amount, the holder's consent and the
    risk context, from its schema-checked body and transaction token: one reading for
    the core's own route and the front-ends' typed command (channels/frontend.py)."""
    return (
        account_id_param(body["debit_account_id"], "debit_account_id"),
        account_id_param(body["credit_account_id"], "credit_account_id"),
        body["amount_minor"],
        Consent(token, body.get("password"), body.get("second_factor") or ""),
        risk_context(body.get("device")),
    )


def proof(ctx: Context) -> Proof:
    """What the request shows for the customer behind a read (checked by the service)."""
    return Proof(ctx.session, ctx.token)


def consent(ctx: Context) -> Consent:
    body = ctx.body
    if not isinstance(body, dict):
        return Consent(ctx.token, None)
    return Consent(ctx.token, body.get("password"), body.get("second_factor") or "")


class Handlers:
    """One method per route operation (`Route.operation`), over the services of `bank`."""

    def __init__(self, bank: Bank, metrics: Metrics) -> None:
        self.bank = bank
        self.payments = bank.payments
        self.metrics = metrics

    # --- customers and accounts -------------------------------------------------------

    async def register_customer(self, ctx: Context) -> Reply:
        body = ctx.body
        command = RegisterCustomer(ctx.caller, body["name"], body["id_number"], body["mobile"])
        return json_reply(201, await self.bank.customers.register(command))

    async def read_customer(self, ctx: Context) -> Reply:
        customer = self.bank.customers.read(ctx.caller, ctx.params["customer_id"], proof(ctx))
        return json_reply(200, customer)

    async def open_session(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.body["account_id"])
        command = OpenSession(ctx.caller, account_id, ctx.body["password"])
        opened = await self.bank.auth.open_session(command)
        return json_reply(
            201,
            {
                "session": opened.session,
                "customer_id": opened.customer_id,
                "expires_in_s": opened.ttl_s,
                "expires_at": rfc3339(opened.expires_ns),
            },
        )

    async def end_session(self, ctx: Context) -> Reply:
        await self.bank.auth.end_session(ctx.caller, ctx.session)
        return Reply(204, b"")

    async def verify_account(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.body["account_id"])
        command = VerifyAccount(ctx.caller, account_id, ctx.body["name"])
        return json_reply(200, self.bank.accounts.verify(command))

    async def open_account(self, ctx: Context) -> Reply:
        body = ctx.body
        command = OpenAccount(
            ctx.caller,
            ctx.params["customer_id"],
            CLASS_OF_NAME[body["class"]],
            body.get("bound_card"),
            body["password"],
            ctx.idempotency_key,
        )
        opened = await self.bank.accounts.open(command)
        account = await self.bank.reads.account_after_change(ctx.caller, opened.account_id)
        reply = json_reply(201, account)
        if opened.replayed:
            reply.headers.append(REPLAY_HEADER)
        return reply

    async def read_account(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        return json_reply(200, await self.bank.reads.account(ctx.caller, account_id, proof(ctx)))

    async def read_history(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        limit_text = ctx.query.get("limit", "50")
        cursor_text = ctx.query.get("cursor", "")
        if not _LIMIT_RE.fullmatch(limit_text) or not 1 <= int(limit_text) <= 500:
            raise fail("/limit", "limit must be an integer 1..500")
        if cursor_text and not _CURSOR_RE.fullmatch(cursor_text):
            raise fail("/cursor", "cursor must be the next_cursor of the previous page")
        before = int(cursor_text) if cursor_text else -1
        page = await self.bank.reads.history(
            ctx.caller, account_id, int(limit_text), before, proof(ctx)
        )
        cursor = str(page.next_cursor) if page.next_cursor is not None else None
        return json_reply(
            200, {"account_id": str(account_id), "items": page.items, "next_cursor": cursor}
        )

    async def read_transfer(self, ctx: Context) -> Reply:
        transfer_id = transfer_id_param(ctx.params["transfer_id"])
        return json_reply(200, await self.bank.reads.transfer(ctx.caller, transfer_id, proof(ctx)))

    async def issue_token(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        command = IssueToken(ctx.caller, account_id, ctx.body["password"])
        issued = await self.bank.auth.issue_token(command)
        return json_reply(
            201,
            {
                "token": issued.token,
                "account_id": str(issued.account_id),
                "expires_in_s": issued.ttl_s,
                "expires_at": rfc3339(issued.expires_ns),
            },
        )

    async def set_password(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        body = ctx.body
        command = SetPassword(ctx.caller, account_id, body["new_password"], body["old_password"])
        await self.bank.auth.set_password(command)
        return Reply(204, b"")

    async def reset_password(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        body = ctx.body
        command = SetPassword(
            ctx.caller, account_id, body["new_password"], id_number=body["id_number"]
        )
        await self.bank.auth.set_password(command)
        return Reply(204, b"")

    async def _changed(self, ctx: Context, change: Any, **fields: Any) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        await change(ChangeAccount(ctx.caller, account_id, **fields))
        return json_reply(200, await self.bank.reads.account_after_change(ctx.caller, account_id))

    async def face_to_face(self, ctx: Context) -> Reply:
        accounts = self.bank.accounts
        return await self._changed(ctx, accounts.face_to_face, id_number=ctx.body["id_number"])

    async def set_non_bound_inflow(self, ctx: Context) -> Reply:
        return await self._changed(
            ctx,
            self.bank.accounts.set_non_bound_inflow,
            consent=consent(ctx),
            enabled=ctx.body["enabled"],
        )

    async def close_account(self, ctx: Context) -> Reply:
        return await self._changed(ctx, self.bank.accounts.close, consent=consent(ctx))

    # --- real-name verification (core/services/verification.py) -----------------------

    async def submit_id_document(self, ctx: Context) -> Reply:
        body = ctx.body  # exactly one alternative (the app checked): image or reference
        customer_id = ctx.params["customer_id"]
        if "ocr_reference" in body:
            command = SubmitIdDocument(
                ctx.caller, customer_id, ocr_reference=body["ocr_reference"], proof=proof(ctx)
            )
        else:
            # Decoded strictly (422), then refused here over IMAGE_BYTES_MAX (413) or when
            # its bytes are not the JPEG or PNG its media type says (415): no provider sees it.
            image = decode_base64(body["image_base64"], "/image_base64")
            media_type = check_image(image, body["media_type"])
            command = SubmitIdDocument(ctx.caller, customer_id, image, media_type, proof=proof(ctx))
        return json_reply(200, await self.bank.verification.submit_id_document(command))

    async def submit_liveness(self, ctx: Context) -> Reply:
        customer_id = ctx.params["customer_id"]
        command = SubmitLiveness(ctx.caller, customer_id, ctx.body["token"], proof=proof(ctx))
        return json_reply(200, await self.bank.verification.submit_liveness(command))

    async def confirm_in_person(self, ctx: Context) -> Reply:
        command = ConfirmInPerson(ctx.caller, ctx.params["customer_id"])
        return json_reply(200, await self.bank.verification.confirm_in_person(command))

    async def read_verification(self, ctx: Context) -> Reply:
        verification = self.bank.verification
        customer_id = ctx.params["customer_id"]
        return json_reply(200, verification.read(ctx.caller, customer_id, proof(ctx)))

    async def bind_card(self, ctx: Context) -> Reply:
        customer_id = ctx.params["customer_id"]
        command = StartCardBinding(ctx.caller, customer_id, dict(ctx.body), proof=proof(ctx))
        return json_reply(201, await self.bank.verification.start_binding(command))

    async def read_card_binding(self, ctx: Context) -> Reply:
        params = ctx.params
        binding = self.bank.verification.read_binding(
            ctx.caller, params["customer_id"], params["binding_id"], proof(ctx)
        )
        return json_reply(200, binding)

    async def request_sms_code(self, ctx: Context) -> Reply:
        body = ctx.body
        command = RequestSmsCode(
            ctx.caller,
            ctx.params["customer_id"],
            body["operation"],
            body["subject"],
            proof=proof(ctx),
        )
        return json_reply(201, await self.bank.verification.request_sms_code(command))

    async def confirm_sms_code(self, ctx: Context) -> Reply:
        body, params = ctx.body, ctx.params
        command = ConfirmSmsCode(
            ctx.caller,
            params["customer_id"],
            params["challenge_id"],
            body["operation"],
            body["subject"],
            body["code"],
            proof=proof(ctx),
        )
        return json_reply(200, await self.bank.verification.confirm_sms_code(command))

    # --- money ---------------------------------------------------------------------

    async def transfer(self, ctx: Context) -> Reply:
        # The hottest route: one service frame, one await on the engine.
        posting = self.payments.transfer(
            ctx.caller, ctx.idempotency_key, *transfer_fields(ctx.body, ctx.token)
        )
        return posted_reply(await self.payments.post(posting))

    def _movement(self, ctx: Context, operation: str, account_id: int, **fields: Any) -> Movement:
        """The movement's command; it carries the holder's consent exactly when the
        operation's policy asks for it (`core.services.policy`), and the service then
        demands it."""
        body = ctx.body if isinstance(ctx.body, dict) else {}
        device = body.get("device")
        if device is not None:
            fields["context"] = risk_context(device)
        return Movement(
            ctx.caller,
            ctx.idempotency_key,
            account_id,
            body.get("amount_minor"),
            consent(ctx) if OPERATIONS[operation].consent else None,
            **fields,
        )

    def _own(self, ctx: Context, operation: str) -> Movement:
        return self._movement(ctx, operation, account_id_param(ctx.params["account_id"]))

    async def topup(self, ctx: Context) -> Reply:
        return posted_reply(await self.payments.topup(self._own(ctx, "topup")))

    async def withdraw(self, ctx: Context) -> Reply:
        return posted_reply(await self.payments.withdraw(self._own(ctx, "withdraw")))

    async def cash_deposit(self, ctx: Context) -> Reply:
        return posted_reply(await self.payments.cash_deposit(self._own(ctx, "cash_deposit")))

    async def cash_withdrawal(self, ctx: Context) -> Reply:
        return posted_reply(await self.payments.cash_withdrawal(self._own(ctx, "cash_withdrawal")))

    async def external_transfer(self, ctx: Context) -> Reply:
        body = ctx.body
        debit = account_id_param(body["debit_account_id"], "debit_account_id")
        move = self._movement(ctx, "external_transfer", debit, beneficiary=body["beneficiary"])
        return posted_reply(await self.payments.external_transfer(move))

    async def incoming_transfer(self, ctx: Context) -> Reply:
        credit = account_id_param(ctx.body["credit_account_id"], "credit_account_id")
        move = self._movement(
            ctx,
            "incoming_transfer",
            credit,
            reference=ctx.body["clearing_reference"],
            payer=ctx.body["payer"],
        )
        return posted_reply(await self.payments.incoming_transfer(move))

    async def payment(self, ctx: Context) -> Reply:
        body = ctx.body
        debit = account_id_param(body["debit_account_id"], "debit_account_id")
        merchant = account_id_param(body["merchant_account_id"], "merchant_account_id")
        move = self._movement(
            ctx, "payment", debit, counterpart=merchant, timeout_s=body.get("timeout_s", 0)
        )
        return posted_reply(await self.payments.payment(move))

    async def capture(self, ctx: Context) -> Reply:
        payment_id = transfer_id_param(ctx.params["payment_id"], "payment_id")
        move = self._movement(ctx, "capture", payment_id, proof=proof(ctx))
        return posted_reply(await self.payments.capture(move))

    async def void(self, ctx: Context) -> Reply:
        payment_id = transfer_id_param(ctx.params["payment_id"], "payment_id")
        move = self._movement(ctx, "void", payment_id, proof=proof(ctx))
        return posted_reply(await self.payments.void(move))

    async def reversal(self, ctx: Context) -> Reply:
        original_id = transfer_id_param(ctx.params["transfer_id"])
        move = self._movement(ctx, "reversal", original_id)
        return posted_reply(await self.payments.reversal(move))

    # --- deposits (core/services/deposits.py) ------------------------------------------

    async def read_products(self, ctx: Context) -> Reply:
        return json_reply(200, products_json(self.bank))  # deposits, and loans

    async def quote_fixed_deposit(self, ctx: Context) -> Reply:
        query = ctx.query
        for name in ("amount_minor", "term"):  # the schema checked them when present
            if name not in query:
                raise fail(f"/{name}", "missing required query parameter")
        command = QuoteFixedDeposit(ctx.caller, int(query["amount_minor"]), query["term"])
        return json_reply(200, self.bank.deposits.quote_new(command))

    async def open_fixed_deposit(self, ctx: Context) -> Reply:
        body = ctx.body
        payout = body.get("payout_account_id")
        command = OpenFixedDeposit(
            ctx.caller,
            ctx.idempotency_key,
            ctx.params["customer_id"],
            account_id_param(body["source_account_id"], "source_account_id"),
            body["amount_minor"],
            body["term"],
            consent(ctx),
            account_id_param(payout, "payout_account_id") if payout is not None else 0,
            body.get("rollover", False),
        )
        opened = await self.bank.deposits.open(command)
        reply = json_reply(201, opened)
        if opened.replayed:
            reply.headers.append(REPLAY_HEADER)
        return reply

    async def read_fixed_deposit(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        deposits = self.bank.deposits
        return json_reply(200, await deposits.deposit(ctx.caller, account_id, proof(ctx)))

    async def quote_withdrawal(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        deposits = self.bank.deposits
        return json_reply(200, await deposits.quote(ctx.caller, account_id, proof(ctx)))

    async def withdraw_fixed_deposit(self, ctx: Context) -> Reply:
        body = ctx.body if isinstance(ctx.body, dict) else {}
        command = WithdrawFixedDeposit(
            ctx.caller,
            ctx.idempotency_key,
            account_id_param(ctx.params["account_id"]),
            body.get("amount_minor"),
            consent(ctx),
        )
        withdrawn = await self.bank.deposits.withdraw(command)
        reply = json_reply(201, withdrawn)
        if withdrawn.replayed:
            reply.headers.append(REPLAY_HEADER)
        return reply

    async def read_interest(self, ctx: Context) -> Reply:
        account_id = account_id_param(ctx.params["account_id"])
        deposits = self.bank.deposits
        return json_reply(200, await deposits.interest(ctx.caller, account_id, proof(ctx)))

    async def correct_interest(self, ctx: Context) -> Reply:
        body = ctx.body
        command = CorrectInterest(
            ctx.caller,
            ctx.idempotency_key,
            account_id_param(ctx.params["account_id"]),
            body["balance_delta_minor"],
            _day_param(body["from"], "/from"),
            _day_param(body["to"], "/to"),
            body.get("reason", ""),
        )
        return posted_reply(await self.bank.deposits.correct_interest(command))

    # --- loans (core/services/loans.py; channels/http/loans.py) ----------------------

    async def quote_loan(self, ctx: Context) -> Reply:
        return json_reply(200, self.bank.loans.quote(quote_command(ctx.caller, ctx.body)))

    # --- loan accounts (core/services/loan_accounts.py; channels/http/loans.py) -------

    async def apply_loan(self, ctx: Context) -> Reply:
        return Reply(*answer(201, await loans.apply(self.bank, ctx)))

    async def read_loan_application(self, ctx: Context) -> Reply:
        return Reply(*answer(200, await loans.read_application(self.bank, ctx)))

    async def sign_loan(self, ctx: Context) -> Reply:
        return Reply(*answer(200, await loans.sign(self.bank, ctx)))

    async def disburse_loan(self, ctx: Context) -> Reply:
        return Reply(*answer(201, await loans.disburse(self.bank, ctx)))

    async def read_loan(self, ctx: Context) -> Reply:
        return Reply(*answer(200, await loans.read_loan(self.bank, ctx)))

    async def read_loan_schedule(self, ctx: Context) -> Reply:
        return Reply(*answer(200, await loans.read_schedule(self.bank, ctx)))

    async def repay_loan(self, ctx: Context) -> Reply:
        return Reply(*answer(201, await loans.repay(self.bank, ctx)))

    async def read_customer_loans(self, ctx: Context) -> Reply:
        return Reply(*answer(200, await loans.customer_loans(self.bank, ctx)))

    # --- risk control (core/services/risk.py) ---------------------------------------

    async def read_risk_decision(self, ctx: Context) -> Reply:
        transfer_id = transfer_id_param(ctx.params["transfer_id"])
        return json_reply(200, self.bank.risk.decision(transfer_id))

    async def read_risk_rules(self, ctx: Context) -> Reply:
        return json_reply(200, self.bank.risk.rules_json())

    # --- batch ---------------------------------------------------------------------

    async def batch(self, ctx: Context) -> Reply:
        binary = ctx.content_type == "application/octet-stream"
        channel, key = ctx.channel, ctx.idempotency_key
        if binary:
            raw: bytes = ctx.body
            count, remainder = divmod(len(raw), TRANSFER_SIZE)
            if remainder or count == 0:
                raise Problem(
                    422,
                    "batch-malformed",
                    "A binary batch is whole 128-byte transfer records",
                    f"{len(raw)} bytes is not a positive multiple of {TRANSFER_SIZE}",
                )
            check_batch_size(channel, count)
            records = stamp_binary_batch(self.payments.ids, raw, channel.ledger_id, key)
        else:
            transfers = ctx.body["transfers"]
            count = len(transfers)
            check_batch_size(channel, count)
            records = pack_json_batch(self.payments.ids, transfers, channel.ledger_id, key)
        self.metrics.batch_sizes.observe(count)
        posted = await self.payments.post_batch(PostingBatch(ctx.caller, key, records, count))
        return batch_reply(posted, binary)


def _day_param(text: str, pointer: str) -> int:
    """A calendar date (YYYY-MM-DD, the schema checked the shape) as a day number."""
    try:
        value = datetime.date.fromisoformat(text)
    except ValueError:
        raise fail(pointer, "expected a calendar date YYYY-MM-DD") from None
    day = (value - _EPOCH_DATE).days
    if not 0 <= day < DAY_COUNT:
        raise fail(pointer, "expected a date from 2000-01-01 to 2179-06-06")
    return day


def check_batch_size(channel: ChannelEntry, count: int) -> None:
    if count > channel.batch_size_max:
        raise Problem(
            413,
            "batch-too-large",
            "Too many transfers in one batch",
            f"{count} transfers; channel {channel.name} allows {channel.batch_size_max}",
        )


def batch_reply(posted: BatchPosted, binary: bool) -> Reply:
    count, codes, histogram = posted.count, posted.codes, posted.histogram
    headers = [REPLAY_HEADER] if histogram.get(R.EXISTS, 0) == count else []
    if binary:
        body = (
            struct.pack("<I4x", count)
            + codes
            + bytes(-count % 8)
            + array("Q", posted.timestamps).tobytes()
        )
        return Reply(200, body, headers, b"application/octet-stream")
    summary = {R(code).name.lower(): number for code, number in histogram.items()}
    results = render_batch_results(posted.records, codes, posted.timestamps)
    return Reply(
        200,
        b'{"count":%d,"summary":%s,"results":%s}' % (count, orjson.dumps(summary), results),
        headers,
    )
