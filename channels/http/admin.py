"""The operators' routes (/v1/admin/): maker-checker approvals, the bank's own reads, and
the product manager's preview of a draft loan catalog.

Operators are not channels. They sign exactly like a channel does
(channels/http/signing.py: the same string to sign, the same timestamp window
and the same nonce store), naming themselves `channel="op:NAME"` in the
Authorization header: the `op:` prefix selects the operator registry
(core/services/operators.py) instead of the channel registry. An operator
request reaches only these routes, a channel request never does.

The app (channels/http/app.py) authenticates the operator (`OperatorAuth`) and
checks the route's read permission (`Operation.permission`, core/services/policy.py:
read:approvals, read:audit, read:risk); requests, approvals and rejections are
checked by the approvals service itself (request:<kind>, approve:<kind>, the
maker is never the checker), a loan catalog preview by the loans service
(request:loans: who may request the change may preview it). Every operator
action, reads included, lands in the audit log with the operator's client
address ("from where").
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any

from channels.http import loans
from channels.http.handlers import Reply, json_reply
from channels.http.loans import answer, preview_command
from channels.http.problems import Problem
from channels.http.schema import fail, transfer_id_param
from channels.http.signing import NONCE_PATTERN, Credentials
from core.services.approvals import Approvals
from core.services.bank import Bank
from core.services.operators import OperatorCaller, Operators
from core.services.refusals import Code, Refused
from core.services.risk import Risk

OPERATOR_PREFIX = "op:"
ADMIN_BODY_SIZE_MAX = 1 << 20  # a parameter file's whole text, in JSON, and more
_APPROVAL_ID_CHARS = frozenset("0123456789abcdef")


@dataclass(slots=True)
class AdminContext:
    """An authenticated operator's request, schema-checked."""

    operator: OperatorCaller
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    idempotency_key: str = ""  # the signed Idempotency-Key (required where `money`)


def operator_name(credentials: Credentials) -> str:
    """The operator an Authorization header names ("" if it names a channel)."""
    channel = credentials.channel
    return channel[len(OPERATOR_PREFIX) :] if channel.startswith(OPERATOR_PREFIX) else ""


class OperatorAuth:
    """Who signed an admin request: the operator registry's side of the app's signature
    check (the string to sign and the HMAC are the channels')."""

    def __init__(self, operators: Operators, window_s: int) -> None:
        self.operators = operators
        self.window_s = window_s

    def fresh(self, credentials: Credentials) -> bool:
        """Whether `credentials` name an enabled operator's key at a current timestamp."""
        timestamp = credentials.timestamp
        name = operator_name(credentials)
        return (
            bool(name)
            and self.operators.secret(name, credentials.key_id) is not None
            and timestamp.isdigit()
            and len(timestamp) <= 12
            and abs(time.time() - int(timestamp)) <= self.window_s
        )

    def refuse(self, credentials: Credentials | str | None) -> Problem:
        """The 401 for an admin request whose header names no operator key at a fresh time
        (an unknown operator and an unknown key are answered alike)."""
        if credentials is None:
            return Problem(
                401,
                "signature-missing",
                "The request is not signed",
                'admin routes are signed by an operator: channel="op:NAME"',
            )
        if isinstance(credentials, str):
            return Problem(
                401, "authorization-malformed", "The Authorization header is malformed", credentials
            )
        name = operator_name(credentials)
        if not name:
            return Problem(
                401,
                "operator-required",
                "The admin routes are signed by an operator, not a channel",
                'sign with channel="op:NAME" and the operator\'s key',
            )
        if self.operators.secret(name, credentials.key_id) is None:
            return Problem(401, "key-unknown", "Unknown operator, or unknown or retired key id")
        timestamp = credentials.timestamp
        if not timestamp.isdigit() or len(timestamp) > 12:
            return Problem(401, "authorization-malformed", "timestamp must be Unix seconds")
        return Problem(
            401,
            "timestamp-out-of-window",
            "The request timestamp is too far from now",
            f"allowed: +/-{self.window_s} s",
        )

    def secret(self, credentials: Credentials) -> bytes:
        secret = self.operators.secret(operator_name(credentials), credentials.key_id)
        assert secret is not None  # `fresh` said so
        if not NONCE_PATTERN.fullmatch(credentials.nonce):
            raise Problem(
                401, "authorization-malformed", "nonce must be 8-64 characters of A-Z a-z 0-9 _ -"
            )
        return secret

    def caller(self, credentials: Credentials, address: str) -> OperatorCaller:
        caller = self.operators.caller(operator_name(credentials), address)
        if caller is None:  # disabled between the two looks: as unknown
            raise Problem(401, "key-unknown", "Unknown operator, or unknown or retired key id")
        return caller


def rfc3339_ns(text: str, pointer: str) -> int:
    """Unix nanoseconds of an RFC 3339 timestamp (the schema checked its shape)."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail(pointer, "expected an RFC 3339 time, e.g. 2026-12-07T02:00:00+08:00") from None
    if moment.tzinfo is None:
        raise fail(pointer, "the time needs its offset (Z or +08:00)")
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _limit(query: dict[str, str]) -> int:
    return int(query.get("limit", "100"))


def approval_id_param(value: str) -> str:
    if len(value) != 13 or value[0] != "A" or not set(value[1:]) <= _APPROVAL_ID_CHARS:
        raise fail("/approval_id", "expected an approval id: A and 12 lowercase hex digits")
    return value


class AdminHandlers:
    """One method per admin route operation, over the approvals, risk and loans services."""

    def __init__(self, bank: Bank) -> None:
        self.bank = bank

    @property
    def approvals(self) -> Approvals:
        return self.bank.approvals

    @property
    def risk(self) -> Risk:
        return self.bank.risk

    def authorize(self, operator: OperatorCaller, permission: str, what: str, object_: str) -> None:
        """The route's read permission for the operator's role (OPERATOR_NOT_PERMITTED);
        the approvals service checks it and records reads of audit and risk data in the
        audit log (who, what, when, from where)."""
        self.approvals.authorize_read(operator, permission, what, object_)

    # --- approvals --------------------------------------------------------------------

    async def admin_request(self, ctx: AdminContext) -> Reply:
        body = ctx.body
        kind = body["kind"]
        apply_at = body.get("apply_at")
        request = await self.approvals.request(
            ctx.operator,
            kind,
            body.get("object", ""),  # "": the parameter kind, or what the payload names
            body["payload"],
            apply_at_ns=rfc3339_ns(apply_at, "/apply_at") if apply_at else 0,
            reason=body.get("reason", ""),
        )
        return json_reply(201, request)

    async def admin_list_approvals(self, ctx: AdminContext) -> Reply:
        query = ctx.query
        items = self.approvals.list(state=query.get("state"), kind=query.get("kind"))
        return json_reply(200, {"items": items})

    async def admin_read_approval(self, ctx: AdminContext) -> Reply:
        request_id = approval_id_param(ctx.params["approval_id"])
        return json_reply(200, self.approvals.get(request_id))

    async def admin_approve(self, ctx: AdminContext) -> Reply:
        request_id = approval_id_param(ctx.params["approval_id"])
        body = ctx.body if isinstance(ctx.body, dict) else {}
        decided = await self.approvals.approve(ctx.operator, request_id, body.get("reason", ""))
        return json_reply(200, decided)

    async def admin_reject(self, ctx: AdminContext) -> Reply:
        request_id = approval_id_param(ctx.params["approval_id"])
        decided = await self.approvals.reject(ctx.operator, request_id, ctx.body["reason"])
        return json_reply(200, decided)

    async def admin_read_parameter(self, ctx: AdminContext) -> Reply:
        kind = ctx.params["kind"]
        current = self.approvals.current(kind)
        versions = self.approvals.versions(kind)
        return json_reply(200, {"kind": kind, "current": current, "versions": versions})

    async def admin_read_audit(self, ctx: AdminContext) -> Reply:
        since = ctx.query.get("since")
        since_ns = rfc3339_ns(since, "/since") if since else 0
        items = self.approvals.audit(since_ns=since_ns, limit=_limit(ctx.query))
        return json_reply(200, {"items": items})

    # --- loans (core/services/loans.py; channels/http/loans.py) -----------------------

    async def admin_preview_loan_product(self, ctx: AdminContext) -> Reply:
        """The draft's quote: the loans service checks request:loans and validates the
        text as a `loans` change request would (parameter-invalid, its problems pointed at
        this body's `/text`); nothing is recorded."""
        try:
            quote = self.bank.loans.preview(preview_command(ctx.operator, ctx.body))
        except Refused as error:
            if error.refusal.code == Code.PARAMETER_INVALID:
                error.refusal.extras.setdefault("pointer", "/text")
            raise
        return json_reply(200, quote)

    async def admin_decide_loan_application(self, ctx: AdminContext) -> Reply:
        return Reply(*answer(200, await loans.decide(self.bank, ctx)))

    # --- risk (core/services/risk.py) ---------------------------------------------------

    async def admin_risk_decisions(self, ctx: AdminContext) -> Reply:
        query = ctx.query
        since = query.get("since")
        since_ns = rfc3339_ns(since, "/since") if since else 0
        items = self.risk.decisions(
            outcome=query.get("outcome"), since_ns=since_ns, limit=_limit(query)
        )
        return json_reply(200, {"items": items})

    async def admin_risk_decision(self, ctx: AdminContext) -> Reply:
        transfer_id = transfer_id_param(ctx.params["transfer_id"])
        return json_reply(200, self.risk.decision(transfer_id))

    async def admin_risk_reports(self, ctx: AdminContext) -> Reply:
        text = ctx.query.get("date")
        if text is None:
            raise fail("/date", "missing required query parameter")
        try:
            day = datetime.date.fromisoformat(text)
        except ValueError:
            raise fail("/date", "expected a calendar date YYYY-MM-DD") from None
        return json_reply(200, {"date": text, "items": self.risk.reports(day)})
