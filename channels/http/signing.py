"""Request signing: HMAC-SHA256 over the request, in the spirit of WeChat Pay API v3.

The channel signs, with one of its active secrets, the string

    TALLY-HMAC-SHA256 \\n channel \\n key_id \\n METHOD \\n path \\n query \\n
    timestamp \\n nonce \\n idempotency_key \\n actor \\n hex(SHA-256(body)) \\n

(each part followed by one newline, no spaces; `query` is the raw query
string without `?`, empty if none; `idempotency_key` and `actor` are the
values of the Idempotency-Key and Tally-Actor headers, or empty) and sends

    Authorization: TALLY-HMAC-SHA256 channel="wechat",key_id="k1",
        timestamp="1767225600",nonce="4f1c...",signature="<base64>"

`Tally-Actor` names who acts at the channel (a counter's teller), in exactly
this form, and only this form (ACTOR_PATTERN):

    Tally-Actor: id="T0001",role="teller"

`id` is 1-32 characters of A-Z a-z 0-9 _ - (the bank's staff number), `role`
one of the roles the channel registry declares for the channel ("teller",
"supervisor"). Being in the string to sign, the actor cannot be added,
removed or changed after the channel signed the request.

`timestamp` is Unix seconds; the server refuses one more than 300 s from its
clock and a nonce it has seen inside that window. The key id names which of
the channel's (at most two) active secrets signed, so secrets rotate without
a flag day. Both sides use this module: the server verifies with
`hmac.compare_digest` (constant time), the client helper signs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

SCHEME = "TALLY-HMAC-SHA256"
SCHEME_BYTES = SCHEME.encode()
TIMESTAMP_WINDOW_S = 300
NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ACTOR_PATTERN = re.compile(r'id="([A-Za-z0-9_-]{1,32})",role="([a-z]{1,16})"')
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def string_to_sign(
    channel: str,
    key_id: str,
    method: str,
    path: str,
    query: str,
    timestamp: str,
    nonce: str,
    idempotency_key: str,
    actor: str,
    body_sha256_hex: str,
) -> bytes:
    return (
        f"{SCHEME}\n{channel}\n{key_id}\n{method}\n{path}\n{query}\n"
        f"{timestamp}\n{nonce}\n{idempotency_key}\n{actor}\n{body_sha256_hex}\n"
    ).encode()


def actor_header(actor_id: str, role: str) -> str:
    """The Tally-Actor header value naming `actor_id` acting in `role`."""
    value = f'id="{actor_id}",role="{role}"'
    assert ACTOR_PATTERN.fullmatch(value), value
    return value


def parse_actor(value: str) -> tuple[str, str] | None:
    """(actor id, role) of a Tally-Actor header value, or None if it is not well formed."""
    matched = ACTOR_PATTERN.fullmatch(value)
    return None if matched is None else (matched[1], matched[2])


def signature(secret: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.digest(secret, message, "sha256")).decode()


def authorization_header(
    channel: str,
    key_id: str,
    secret: bytes,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    *,
    idempotency_key: str = "",
    actor: str = "",
    timestamp: int,
    nonce: str | None = None,
) -> str:
    """The Authorization header value for one request."""
    nonce = nonce if nonce is not None else secrets.token_hex(16)
    digest = hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256
    message = string_to_sign(
        channel, key_id, method, path, query, str(timestamp), nonce, idempotency_key, actor, digest
    )
    return (
        f'{SCHEME} channel="{channel}",key_id="{key_id}",timestamp="{timestamp}",'
        f'nonce="{nonce}",signature="{signature(secret, message)}"'
    )


@dataclass(slots=True)
class Credentials:
    """The parsed Authorization header (not yet verified)."""

    channel: str
    key_id: str
    timestamp: str
    nonce: str
    signature: str


# The canonical header, as a pattern: the spec `parse_authorization` implements by splitting
# on '"' (faster than matching this on every request; tests hold the two equal).
_CANONICAL = re.compile(
    r'TALLY-HMAC-SHA256 channel="([^",]*)",key_id="([^",]*)",timestamp="([^",]*)",'
    r'nonce="([^",]*)",signature="([^",]*)"'
)


_CANONICAL_NAMES = (
    "TALLY-HMAC-SHA256 channel=",
    ",key_id=",
    ",timestamp=",
    ",nonce=",
    ",signature=",
)


def parse_authorization(value: str) -> Credentials | str:
    """The header's parts, or the reason it cannot be parsed."""
    pieces = value.split('"')
    if (
        len(pieces) == 11
        and pieces[10] == ""
        and (pieces[0], pieces[2], pieces[4], pieces[6], pieces[8]) == _CANONICAL_NAMES
        and "," not in pieces[1] + pieces[3] + pieces[5] + pieces[7] + pieces[9]
    ):  # the order the client helper writes: exactly what _CANONICAL matches, no regex
        return Credentials(pieces[1], pieces[3], pieces[5], pieces[7], pieces[9])
    return parse_parameters(value)


def parse_parameters(value: str) -> Credentials | str:
    """Any other order or spacing of the parameters, or the reason the header is malformed."""
    scheme, _, rest = value.partition(" ")
    if scheme != SCHEME:
        return f"the Authorization scheme must be {SCHEME}"
    parts: dict[str, str] = {}
    for item in rest.split(","):
        name, equals, quoted = item.strip().partition("=")
        if not equals or len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"':
            return f'malformed parameter {name[:32]!r}: expected name="value"'
        if name in parts:
            return f"parameter {name[:32]!r} given twice"
        parts[name] = quoted[1:-1]
    missing = [
        name
        for name in ("channel", "key_id", "timestamp", "nonce", "signature")
        if name not in parts
    ]
    if missing:
        return "missing parameter(s): " + ", ".join(missing)
    if len(parts) != 5:
        unknown = sorted(set(parts) - {"channel", "key_id", "timestamp", "nonce", "signature"})
        return "unknown parameter(s): " + ", ".join(name[:32] for name in unknown)
    return Credentials(
        parts["channel"], parts["key_id"], parts["timestamp"], parts["nonce"], parts["signature"]
    )


def verify_request(
    secret: bytes,
    channel: str,
    key_id: str,
    method: str,
    path: str,
    query: str,
    timestamp: str,
    nonce: str,
    idempotency_key: str,
    actor: str,
    body: bytes,
    claimed: str,
) -> bool:
    """Whether `claimed` signs this request: the reference of cext/http_auth.pyx's twin."""
    message = string_to_sign(
        channel,
        key_id,
        method,
        path,
        query,
        timestamp,
        nonce,
        idempotency_key,
        actor,
        hashlib.sha256(body).hexdigest(),
    )
    return verify(secret, message, claimed)


_KEYED: dict[bytes, Any] = {}  # secret -> HMAC keyed with it (copied per request)
_KEYED_MAX = 64


def verify(secret: bytes, message: bytes, claimed: str) -> bool:
    """Constant-time comparison of the expected and the claimed signature."""
    keyed = _KEYED.get(secret)
    if keyed is None:
        if len(_KEYED) >= _KEYED_MAX:
            _KEYED.clear()
        keyed = _KEYED[secret] = hmac.new(secret, digestmod=hashlib.sha256)
    mac = keyed.copy()  # a third cheaper than keying a fresh HMAC each time
    mac.update(message)
    expected = mac.digest()
    try:
        raw = binascii.a2b_base64(claimed.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    return hmac.compare_digest(expected, raw)
