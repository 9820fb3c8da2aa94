"""The typed commands and results of the core link, and their bodies on the wire.

A request's body is its command's fields as a compact JSON array (orjson, in C both
ways); a reply's status says how to read its body: the result's fields (OK), a
`Refusal` ( what the service refused, the same value an in-process adapter
catches; REFUSAL), or nothing (OVERLOADED: the connection's window was full, nothing was done;
FAILED: the core hit a defect, logged there).

Commands are the services' own (core/services/commands.py): the front-end does what
an adapter does in-process (authenticates the channel, parses and checks the request)
and sends the command; the core runs the service, with every business rule. A command
names its `Caller` in full: the core trusts what an authenticated front-end says of
the channel, as the services trust an in-process adapter.

A body that is not what its op says is a protocol error (`FrameError`): the core closes
that connection, runs nothing of it and logs why.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from core.link.frames import FrameError
from core.services.commands import NO_CONTEXT, Caller, Consent, RiskContext
from core.services.refusals import Code, Refusal
from core.services.results import Posted

# Ops (a request's `op`). Never renumbered; new ones go at the end.
TRANSFER = 1
HTTP = 2  # an HTTP request passed through whole, for the core's own HTTP app to answer
REGISTRY = 3  # the channel registry in force, when it is newer than the front-end's
CALL = 4  # a service call by name, its typed arguments and result (core/link/calls.py)
OPS = {TRANSFER: "transfer", HTTP: "http", REGISTRY: "registry", CALL: "call"}
U32_MAX = (1 << 32) - 1
I63_MAX = (1 << 63) - 1

# Statuses (a reply's `status`).
OK = 0
REFUSAL = 1
OVERLOADED = 2
FAILED = 3
PROBLEM = 4  # the channel tier refused it in the core (rate, nonce): `ChannelProblem`


class Transfer:
    """A customer's transfer between two accounts of this bank, as the HTTP route and
    `Payments.transfer` take it: the core builds the posting and posts it."""

    __slots__ = ("amount_minor", "caller", "consent", "context", "credit", "debit", "key",
                 "nonce", "timestamp_s")  # fmt: skip

    def __init__(
        self,
        caller: Caller,
        key: str,
        debit: int,
        credit: int,
        amount_minor: int,
        consent: Consent,
        context: RiskContext = NO_CONTEXT,
        nonce: str = "",
        timestamp_s: int = 0,
    ) -> None:
        """`nonce` and `timestamp_s`: the signed request's, for the core's replay check
        (kept in the core so that it holds across front-ends); "" when none was signed."""
        self.caller = caller
        self.key = key
        self.debit = debit
        self.credit = credit
        self.amount_minor = amount_minor
        self.consent = consent
        self.context = context
        self.nonce = nonce
        self.timestamp_s = timestamp_s


def encode_transfer(command: Transfer) -> bytes:
    caller, consent, context = command.caller, command.consent, command.context
    return orjson.dumps(
        [
            caller.name, caller.kind, caller.ledger_id, caller.actor_id, caller.actor_role,
            command.key, command.debit, command.credit, command.amount_minor,
            consent.token, consent.password, consent.second_factor,
            None if context is NO_CONTEXT else [context.device_id, context.ip, context.location],
            command.nonce, command.timestamp_s,
        ]
    )  # fmt: skip


def decode_transfer(body: bytes, callers: dict[tuple[Any, ...], Caller]) -> Transfer:
    """The command of a TRANSFER body; `FrameError` if it is not one. `callers`: the
    `Caller`s met so far by their fields (one object per channel and actor, not one per
    request); the caller bounds its size."""
    fields = _array(body, "transfer", 15)
    (name, kind, ledger_id, actor_id, actor_role, key, debit, credit, amount_minor,
     token, password, second_factor, device, nonce, timestamp_s) = fields  # fmt: skip
    # Exact types (a bool is not an int here), in ranges the ledger's records hold.
    if not (
        type(name) is str and type(kind) is str and type(ledger_id) is int
        and type(actor_id) is str and type(actor_role) is str and type(key) is str
        and type(debit) is int and type(credit) is int and type(amount_minor) is int
        and type(token) is str and (password is None or type(password) is str)
        and type(second_factor) is str and type(nonce) is str and type(timestamp_s) is int
    ):  # fmt: skip
        raise FrameError("transfer fields of the wrong types")
    if not (0 <= ledger_id <= U32_MAX and 0 <= debit <= I63_MAX and 0 <= credit <= I63_MAX
            and 0 <= amount_minor <= I63_MAX and 0 <= timestamp_s <= I63_MAX):  # fmt: skip
        raise FrameError("transfer field out of range (ledger id, account ids or amount)")
    if device is None:
        context = NO_CONTEXT
    elif type(device) is list and len(device) == 3 and all(type(v) is str for v in device):
        context = RiskContext(*device)
    else:
        raise FrameError("transfer field 12 (device) is not three strings")
    caller_key = (name, kind, ledger_id, actor_id, actor_role)
    caller = callers.get(caller_key)
    if caller is None:
        caller = callers[caller_key] = Caller(name, kind, ledger_id, actor_id, actor_role)
    return Transfer(
        caller, key, debit, credit, amount_minor, Consent(token, password, second_factor),
        context, nonce, timestamp_s,
    )  # fmt: skip


def encode_posted(posted: Posted) -> bytes:
    return orjson.dumps(
        [
            posted.transfer_id_packed.hex(), posted.operation, posted.debit, posted.credit,
            posted.amount_minor, posted.code, posted.flags, posted.pending_id,
            posted.timeout_s, posted.channel, posted.timestamp_ns, posted.replayed,
            posted.risk_hold, posted.release_at_ns, posted.decision_id,
        ]
    )  # fmt: skip


def decode_posted(body: bytes) -> Posted:
    fields = _array(body, "posted", 15)
    fields[0] = bytes.fromhex(fields[0])
    return Posted(*fields)


def encode_refusal(refusal: Refusal) -> bytes:
    return orjson.dumps(
        [int(refusal.code), refusal.detail, refusal.ledger_code, refusal.replayed, refusal.extras]
    )


def decode_refusal(body: bytes) -> Refusal:
    code, detail, ledger_code, replayed, extras = _array(body, "refusal", 5)
    try:
        return Refusal(Code(code), detail, ledger_code, replayed, extras)
    except ValueError:  # a newer core's code: not a refusal this front-end can word
        raise FrameError(f"unknown refusal code {code}") from None


def _array(body: bytes, what: str, length: int) -> list[Any]:
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise FrameError(f"{what} body is not JSON: {error}") from None
    if type(fields) is not list or len(fields) != length:
        raise FrameError(f"{what} body is not an array of {length} fields")
    return fields


class ChannelProblem(Exception):
    """What the channel tier in the core refused a command for (over the channel's rate,
    a reused nonce): the HTTP problem to answer, as the core's HTTP app would."""

    def __init__(
        self, status: int, slug: str, title: str, detail: str = "",
        headers: list[tuple[str, str]] | None = None, ticket: int = 0,
    ) -> None:  # fmt: skip
        """`ticket`: the customer-state ticket the answer waits for (a nonce staged
        before the refusal); not sent."""
        super().__init__(f"{status} {slug}")
        self.ticket = ticket
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or []


def encode_problem(problem: ChannelProblem) -> bytes:
    return orjson.dumps(
        [problem.status, problem.slug, problem.title, problem.detail, problem.headers]
    )


def decode_problem(body: bytes) -> ChannelProblem:
    status, slug, title, detail, headers = _array(body, "problem", 5)
    return ChannelProblem(status, slug, title, detail, [(name, value) for name, value in headers])


class HttpRequest:
    """An HTTP request as the front-end received it, passed through to the core's app."""

    __slots__ = ("body", "client", "headers", "method", "path", "query", "raw_path", "scheme")

    def __init__(
        self, method: str, path: str, raw_path: bytes, query: bytes,
        headers: list[tuple[bytes, bytes]], body: bytes, client: tuple[str, int] | None,
        scheme: str = "http",
    ) -> None:  # fmt: skip
        self.method = method
        self.path = path
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.body = body
        self.client = client
        self.scheme = scheme


class HttpResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


_LENGTH = struct.Struct("<I")


def encode_http_request(request: HttpRequest) -> bytes:
    head = orjson.dumps(
        [
            request.method, request.path, request.raw_path.decode("latin-1"),
            request.query.decode("latin-1"),
            [[name.decode("latin-1"), value.decode("latin-1")] for name, value in request.headers],
            None if request.client is None else list(request.client), request.scheme,
        ]
    )  # fmt: skip
    return _LENGTH.pack(len(head)) + head + request.body


def decode_http_request(body: bytes) -> HttpRequest:
    head, rest = _split(body, "http request")
    fields = _array(head, "http request", 7)
    method, path, raw_path, query, headers, client, scheme = fields
    try:
        return HttpRequest(
            method, path, raw_path.encode("latin-1"), query.encode("latin-1"),
            [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
            rest, None if client is None else (str(client[0]), int(client[1])), str(scheme),
        )  # fmt: skip
    except (AttributeError, TypeError, ValueError, IndexError, UnicodeEncodeError):
        raise FrameError("http request head of the wrong shape") from None


def encode_http_response(response: HttpResponse) -> bytes:
    head = orjson.dumps(
        [
            response.status,
            [[name.decode("latin-1"), value.decode("latin-1")] for name, value in response.headers],
        ]
    )
    return _LENGTH.pack(len(head)) + head + response.body


def decode_http_response(body: bytes) -> HttpResponse:
    head, rest = _split(body, "http response")
    status, headers = _array(head, "http response", 2)
    return HttpResponse(
        status, [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers], rest
    )


def _split(body: bytes, what: str) -> tuple[bytes, bytes]:
    if len(body) < 4:
        raise FrameError(f"{what} body too short")
    (length,) = _LENGTH.unpack_from(body)
    if 4 + length > len(body):
        raise FrameError(f"{what} head runs past its body")
    return body[4 : 4 + length], body[4 + length :]
