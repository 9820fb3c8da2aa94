"""A small client for Tally's HTTP API that signs every request.

    from channels.client import TallyClient

    with TallyClient("http://127.0.0.1:8080", "app", "dev-app-1",
                     "DEVELOPMENT-ONLY-app-secret-0001-not-for-production") as client:
        response = client.post("/v1/transfers", {...}, idempotency_key="order-42")

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

from channels.http.signing import authorization_header


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
    ) -> dict[str, str]:
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
                timestamp=int(time.time()) if timestamp is None else timestamp,
                nonce=nonce if nonce is not None else secrets.token_hex(16),
            )
        }
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if body:
            headers["Content-Type"] = content_type
        return headers


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
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """`verify`: for an https:// URL, an SSL context that trusts the server's certificate
        (`ssl.create_default_context(cafile=...)`), or True for the system's CAs."""
        import httpx

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
        raw: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> Any:
        """Send one signed request; returns the httpx.Response."""
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
        )
        if token is not None:
            signed["Tally-Transaction-Token"] = token
        if headers:
            signed.update(headers)
        url = path + ("?" + query if query else "")
        return self.http.request(method, url, content=data or None, headers=signed)

    def get(self, path: str, *, query: str = "", **kwargs: Any) -> Any:
        return self.request("GET", path, query=query, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, body, **kwargs)
