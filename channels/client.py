"""A small client for Tally's HTTP API that signs every request.

    from channels.client import TallyClient

    with TallyClient("http://127.0.0.1:8080", "app", "dev-app-1",
                     "DEVELOPMENT-ONLY-app-secret-0001-not-for-production") as client:
        response = client.post("/v1/transfers", {...}, idempotency_key="order-42")
        # wechat/app read a customer's data with that customer's session:
        session = client.post("/v1/sessions", {"account_id": "...", "password": "..."})
        client.get("/v1/accounts/...", session=session.json()["session"])

At a counter the requests name the acting teller, signed with them
(`actor=(teller id, role)`, sent as the Tally-Actor header):

    TallyClient(url, "counter", key_id, secret, actor=("T0001", "teller"))

`Signer.headers(...)` gives the headers alone, for any HTTP library (Locust's
requests session, wrk scripts generated ahead of time): the body must be
sent byte for byte as signed, so sign the encoded bytes you send.
"""

from __future__ import annotations

import secrets
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from channels.http.signing import actor_header, authorization_header


@dataclass(frozen=True, slots=True)
class Signer:
    channel: str
    key_id: str
    secret: bytes

    def headers(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        query: str = "",
        idempotency_key: str | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
        content_type: str = "application/json",
        actor: tuple[str, str] | None = None,
    ) -> dict[str, str]:
        """The signed headers; `actor` (id, role) is sent as Tally-Actor and signed."""
        actor_value = actor_header(*actor) if actor is not None else ""
        headers = {
            "Authorization": authorization_header(
                self.channel,
                self.key_id,
                self.secret,
                method,
                path,
                query,
                body,
                idempotency_key=idempotency_key or "",
                actor=actor_value,
                timestamp=int(time.time()) if timestamp is None else timestamp,
                nonce=nonce if nonce is not None else secrets.token_hex(16),
            )
        }
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if actor_value:
            headers["Tally-Actor"] = actor_value
        if body:
            headers["Content-Type"] = content_type
        return headers


OWN_ACTOR = ("", "")  # `TallyClient.request`'s default: the client's own actor


def new_key() -> str:
    """A fresh Idempotency-Key (a UUID4, as the IETF draft suggests)."""
    return str(uuid.uuid4())


class TallyClient:
    """Signed requests over httpx (HTTP/1.1; `http2=True` for prior-knowledge h2c)."""

    def __init__(
        self,
        base_url: str,
        channel: str,
        key_id: str,
        secret: str | bytes,
        *,
        timeout_s: float = 30.0,
        http2: bool = False,
        actor: tuple[str, str] | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """`verify`: for an https:// URL, an SSL context that trusts the server's certificate
        (`ssl.create_default_context(cafile=...)`), or True for the system's CAs."""
        import httpx

        self.actor = actor  # (teller id, role) named in every request; None: no actor
        self.signer = Signer(
            channel, key_id, secret.encode() if isinstance(secret, str) else secret
        )
        self.http = httpx.Client(
            base_url=base_url, timeout=timeout_s, http2=http2, http1=not http2, verify=verify
        )

    def __enter__(self) -> TallyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: str = "",
        idempotency_key: str | None = None,
        token: str | None = None,
        session: str | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
        actor: tuple[str, str] | None = OWN_ACTOR,
    ) -> Any:
        """Send one signed request; returns the httpx.Response. `actor`: (id, role) for
        this request, None for no Tally-Actor; by default the client's own."""
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else b"")
        signed = self.signer.headers(
            method,
            path,
            data,
            query=query,
            idempotency_key=idempotency_key,
            timestamp=timestamp,
            nonce=nonce,
            content_type=content_type,
            actor=self.actor if actor is OWN_ACTOR else actor,
        )
        if token is not None:
            signed["Tally-Transaction-Token"] = token
        if session is not None:
            signed["Tally-Session"] = session
        if headers:
            signed.update(headers)
        url = path + ("?" + query if query else "")
        return self.http.request(method, url, content=data or None, headers=signed)

    def get(self, path: str, *, query: str = "", **kwargs: Any) -> Any:
        return self.request("GET", path, query=query, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, body, **kwargs)
