"""`HttpProviders`: the providers over HTTP, with deadlines, bounded retries, strict parsing.

One call is at most `attempts_max` attempts, each under the endpoint's `timeout_s`
(connect, send, wait and read together: `anyio.fail_after` around the whole attempt,
and httpx's own timeouts as well), with an exponential backoff between them:

    backoff = min(backoff_max_s, backoff_s * 2 ** (attempt - 1)) * jitter,  jitter in [0.5, 1)

The jitter is drawn from the request id and the attempt (sha256), not from a random
generator, so a run is reproducible and retries of different requests still spread
out. A 429 or 503 with Retry-After waits that long instead, capped at backoff_max_s.

Retried: a timeout, a connection error (refused, reset, DNS), a 5xx, a 429. Never
retried: another 4xx (the provider refused this request: "refused", with its detail)
and an answer that does not parse ("malformed": a provider that answers garbage once
will do it again, and the bank must not act on a guess). Every attempt of a call
sends the same `Idempotency-Key` (the request id), so a provider that already did the
work (sent the SMS) answers the retry with the same result instead of doing it again.

Every answer is parsed strictly into its result type: each field present with its
JSON type (a boolean is `true`/`false`, never 1 or "yes"), strings and lists bounded,
the body a JSON object of at most ANSWER_BYTES_MAX bytes with a JSON content type.
Anything else raises ProviderError(kind="malformed") naming the field; the services
turn that into PROVIDER_ANSWER_INVALID and leave the step pending.

The httpx.AsyncClient is created on the first call, in the event loop that makes it
(asyncio or trio: httpx runs on anyio), so an HttpProviders can be built before any
loop runs; use one instance per event loop and `aclose()` it when done. Nothing here
logs a request body: an ID card image or an SMS code never reaches a log line.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import orjson

from core.providers.config import Endpoint, ProvidersConfig
from core.providers.types import (
    SCORE_PPM_MAX,
    CardCheck,
    CardResult,
    IdentityCheck,
    IdentityResult,
    LivenessCheck,
    LivenessResult,
    OcrLookup,
    OcrRequest,
    OcrResult,
    ProviderError,
    SmsResult,
    SmsSend,
)

logger = logging.getLogger("tally.providers")

ANSWER_BYTES_MAX = 64 * 1024
STRING_CHARS_MAX = 256  # a reference, a name, a reason
REASONS_MAX = 16
DETAIL_CHARS_MAX = 300  # of a refusal's detail quoted in ProviderError
CONNECTIONS_MAX = 64  # per HttpProviders, all providers together
USER_AGENT = "tally-providers/1"

Fields = dict[str, Any]


class Malformed(Exception):
    """An answer that is not the provider's schema: what is wrong, by field."""


class HttpProviders:
    """The `Providers` protocol over HTTP (the wire format of docs/providers.md).

    Args:
        config: one endpoint per provider (`ProvidersConfig.from_file` or `.at(url)`).

    Error handling: every method returns its result or raises `ProviderError` after
    at most `attempts_max` attempts; cancellation propagates untouched.
    Resource handling: the HTTP connection pool lives until `aclose()`.
    """

    def __init__(self, config: ProvidersConfig) -> None:
        self.config = config
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> HttpProviders:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # --- the five providers ------------------------------------------------------------

    async def identity(self, request: IdentityCheck) -> IdentityResult:
        result = await self._request(request)
        assert isinstance(result, IdentityResult)
        return result

    async def ocr(self, request: OcrRequest | OcrLookup) -> OcrResult:
        result = await self._request(request)
        assert isinstance(result, OcrResult)
        return result

    async def liveness(self, request: LivenessCheck) -> LivenessResult:
        result = await self._request(request)
        assert isinstance(result, LivenessResult)
        return result

    async def card(self, request: CardCheck) -> CardResult:
        result = await self._request(request)
        assert isinstance(result, CardResult)
        return result

    async def sms(self, request: SmsSend) -> SmsResult:
        result = await self._request(request)
        assert isinstance(result, SmsResult)
        return result

    async def _request(self, request: Request) -> Result:
        wire = wire_request(request)
        fields, attempts, elapsed_ms = await self._call(
            wire.provider, wire.method, wire.path, request.request_id, wire.payload,
            PARSERS[wire.provider],
        )  # fmt: skip
        return RESULT_TYPES[wire.provider](**fields, attempts=attempts, elapsed_ms=elapsed_ms)

    # --- one call: attempts, backoff, parsing ------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:  # no await between the test and the assignment: one client
            self._http = httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=CONNECTIONS_MAX, max_keepalive_connections=CONNECTIONS_MAX
                ),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                follow_redirects=False,
            )
        return self._http

    async def _call(
        self,
        provider: str,
        method: str,
        path: str,
        request_id: str,
        payload: Fields | None,
        parse: Callable[[Fields], Fields],
    ) -> tuple[Fields, int, int]:
        """(parsed fields, attempts, elapsed ms) of one call; ProviderError if none."""
        assert request_id, "every provider call needs a request id (the Idempotency-Key)"
        endpoint = self.config.endpoint(provider)
        http = self._client()
        body = orjson.dumps(payload) if payload is not None else None
        headers = {"Authorization": f"Bearer {endpoint.token}", "Idempotency-Key": request_id}
        if body is not None:
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()

        def elapsed_ms() -> int:
            return int((time.perf_counter() - started) * 1000)

        def error(kind: str, attempts: int, detail: str, status: int = 0) -> ProviderError:
            return ProviderError(
                provider,
                kind,
                attempts=attempts,
                elapsed_ms=elapsed_ms(),
                detail=detail,
                request_id=request_id,
                status=status,
            )

        kind, detail = "unavailable", ""
        for attempt in range(1, endpoint.attempts_max + 1):
            retry_after_s = 0.0
            try:
                with anyio.fail_after(endpoint.timeout_s):
                    status, response_headers, content = await _exchange(
                        http, method, endpoint.url + path, headers, body, endpoint.timeout_s
                    )
            except (TimeoutError, httpx.TimeoutException):
                kind, detail = "timeout", f"no answer within {endpoint.timeout_s} s"
            except httpx.TransportError as failure:
                kind, detail = "unavailable", f"{type(failure).__name__}: {failure}"
            else:
                if 200 <= status < 300:
                    try:
                        fields = parse(_json_object(response_headers, content))
                    except Malformed as malformed:
                        raise error("malformed", attempt, str(malformed)) from None
                    return fields, attempt, elapsed_ms()
                if status != 429 and status < 500:
                    detail = f"HTTP {status}: {_detail(content)}"
                    raise error("refused", attempt, detail, status)
                kind, detail = "unavailable", f"HTTP {status}: {_detail(content)}"
                retry_after_s = _retry_after_s(response_headers.get("retry-after", ""))
            if attempt < endpoint.attempts_max:
                logger.debug(
                    "provider %s request %s attempt %d: %s (%s)",
                    provider,
                    request_id,
                    attempt,
                    kind,
                    detail,
                )
                await anyio.sleep(backoff_s(endpoint, request_id, attempt, retry_after_s))
        raise error(kind, endpoint.attempts_max, detail)


async def _exchange(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeout_s: float,
) -> tuple[int, httpx.Headers, bytes]:
    """One request; the answer's body read up to ANSWER_BYTES_MAX (+1 to see it is over)."""
    async with http.stream(method, url, headers=headers, content=body, timeout=timeout_s) as r:
        chunks: list[bytes] = []
        size = 0
        async for chunk in r.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > ANSWER_BYTES_MAX:
                break
        return r.status_code, r.headers, b"".join(chunks)


def backoff_s(endpoint: Endpoint, request_id: str, attempt: int, retry_after_s: float) -> float:
    """The wait after failed attempt `attempt` (1-based): exponential, capped, jittered."""
    digest = hashlib.sha256(f"{request_id}\x00{attempt}".encode()).digest()
    jitter = 0.5 + 0.5 * int.from_bytes(digest[:4], "big") / 2**32
    wait_s: float = min(endpoint.backoff_max_s, endpoint.backoff_s * 2.0 ** (attempt - 1)) * jitter
    return min(endpoint.backoff_max_s, max(wait_s, retry_after_s))


def _retry_after_s(value: str) -> float:
    """Retry-After in seconds (delta-seconds only; an HTTP date is ignored)."""
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    return seconds if 0 <= seconds < 1e6 else 0.0


def _detail(content: bytes) -> str:
    """The provider's reason for a 4xx/5xx: its JSON `detail` (or `title`), else the text."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "title", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])[:DETAIL_CHARS_MAX]
    text = content[:DETAIL_CHARS_MAX].decode("utf-8", "replace").strip()
    return text or "(no body)"


# --- strict parsing of the answers -------------------------------------------------------


def _json_object(headers: httpx.Headers, content: bytes) -> Fields:
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Malformed(f"content type {media_type or '(none)'!r} is not JSON")
    if len(content) > ANSWER_BYTES_MAX:
        raise Malformed(f"answer larger than {ANSWER_BYTES_MAX} bytes")
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as error:
        raise Malformed(f"answer is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise Malformed(f"answer must be a JSON object, not {type(body).__name__}")
    return body


def _bool(body: Fields, key: str) -> bool:
    value = body.get(key)
    if not isinstance(value, bool):
        raise Malformed(f"`{key}` must be a boolean, not {_shown(body, key)}")
    return value


def _str(body: Fields, key: str, *, empty: bool = True) -> str:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > STRING_CHARS_MAX or (not empty and not value):
        wanted = "a string" if empty else "a non-empty string"
        raise Malformed(f"`{key}` must be {wanted} of at most {STRING_CHARS_MAX} characters")
    return value


def _strs(body: Fields, key: str) -> tuple[str, ...]:
    value = body.get(key)
    if not isinstance(value, list) or len(value) > REASONS_MAX:
        raise Malformed(f"`{key}` must be a list of at most {REASONS_MAX} strings")
    for item in value:
        if not isinstance(item, str) or not item or len(item) > STRING_CHARS_MAX:
            raise Malformed(f"`{key}` must hold non-empty strings, not {item!r:.40}")
    return tuple(value)


def _shown(body: Fields, key: str) -> str:
    return "missing" if key not in body else f"{body[key]!r:.40}"


def _identity_fields(body: Fields) -> Fields:
    photo_match = body.get("photo_match", ...)
    if photo_match is not None and not isinstance(photo_match, bool):
        raise Malformed(
            f"`photo_match` must be a boolean or null, not {_shown(body, 'photo_match')}"
        )
    return {
        "match": _bool(body, "match"),
        "photo_match": photo_match,
        "reasons": _strs(body, "reasons"),
        "reference": _str(body, "reference", empty=False),
    }


def _ocr_fields(body: Fields) -> Fields:
    fields = {
        "readable": _bool(body, "readable"),
        "name": _str(body, "name"),
        "id_number": _str(body, "id_number"),
        "reasons": _strs(body, "reasons"),
        "reference": _str(body, "reference", empty=False),
    }
    if fields["readable"] and not (fields["name"] and fields["id_number"]):
        raise Malformed("a readable ID card must have `name` and `id_number`")
    return fields


def _liveness_fields(body: Fields) -> Fields:
    score = body.get("score_ppm")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= SCORE_PPM_MAX:
        raise Malformed(
            f"`score_ppm` must be an integer in 0..{SCORE_PPM_MAX}, not {_shown(body, 'score_ppm')}"
        )
    return {
        "live": _bool(body, "live"),
        "face_ref": _str(body, "face_ref"),
        "score_ppm": score,
        "reasons": _strs(body, "reasons"),
        "reference": _str(body, "reference", empty=False),
    }


def _card_fields(body: Fields) -> Fields:
    fields = {
        "match": _bool(body, "match"),
        "mismatched": _strs(body, "mismatched"),
        "issuer": _str(body, "issuer"),
        "reference": _str(body, "reference", empty=False),
    }
    if fields["match"] == bool(fields["mismatched"]):
        raise Malformed("`match` must be true exactly when `mismatched` is empty")
    return fields


def _sms_fields(body: Fields) -> Fields:
    return {"accepted": _bool(body, "accepted"), "message_id": _str(body, "message_id")}


Request = IdentityCheck | OcrRequest | OcrLookup | LivenessCheck | CardCheck | SmsSend
Result = IdentityResult | OcrResult | LivenessResult | CardResult | SmsResult
PARSERS: dict[str, Callable[[Fields], Fields]] = {
    "identity": _identity_fields,
    "ocr": _ocr_fields,
    "liveness": _liveness_fields,
    "issuer": _card_fields,
    "sms": _sms_fields,
}
RESULT_TYPES: dict[str, Callable[..., Result]] = {
    "identity": IdentityResult,
    "ocr": OcrResult,
    "liveness": LivenessResult,
    "issuer": CardResult,
    "sms": SmsResult,
}


@dataclass(frozen=True, slots=True)
class WireRequest:
    """A request as the wire format carries it: the provider, the method, the path under
    the provider's base URL and the JSON body (None for a GET)."""

    provider: str
    method: str
    path: str
    payload: Fields | None


def wire_request(request: Request) -> WireRequest:
    """How `request` goes over the wire (docs/providers.md)."""
    if isinstance(request, IdentityCheck):
        payload: Fields = {
            "name": request.name,
            "id_number": request.id_number,
            "photo_ref": request.photo_ref,
        }
        return WireRequest("identity", "POST", "/v1/verify", payload)
    if isinstance(request, OcrLookup):
        return WireRequest("ocr", "GET", f"/v1/results/{quote(request.reference, safe='')}", None)
    if isinstance(request, OcrRequest):
        payload = {
            "image_base64": base64.b64encode(request.image).decode(),
            "media_type": request.media_type,
        }
        return WireRequest("ocr", "POST", "/v1/id-card", payload)
    if isinstance(request, LivenessCheck):
        return WireRequest("liveness", "POST", "/v1/verify", {"token": request.token})
    if isinstance(request, CardCheck):
        payload = {
            "card_number": request.card_number,
            "card_type": request.card_type,
            "holder_name": request.holder_name,
            "holder_id_number": request.holder_id_number,
            "reserved_mobile": request.reserved_mobile,
        }
        return WireRequest("issuer", "POST", "/v1/verify-card", payload)
    return WireRequest(
        "sms", "POST", "/v1/messages", {"mobile": request.mobile, "text": request.text}
    )


def parse_answer(provider: str, body: Fields, attempts: int = 1, elapsed_ms: int = 0) -> Result:
    """A provider's answer (a decoded JSON object) as its typed result, parsed as strictly
    as over HTTP; ProviderError(kind="malformed") if it is not the schema. For callers
    that hold the answer in process (the failover simulator's applicants)."""
    try:
        fields = PARSERS[provider](body)
    except Malformed as problem:
        raise ProviderError(
            provider, "malformed", attempts=attempts, elapsed_ms=elapsed_ms, detail=str(problem)
        ) from None
    return RESULT_TYPES[provider](**fields, attempts=attempts, elapsed_ms=elapsed_ms)
