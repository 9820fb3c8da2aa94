"""The provider simulator: the five providers over HTTP, deterministic from a seed.

`tally providers serve --seed N` serves, under one base URL, the wire format of
docs/providers.md (`/identity/v1/verify`, `/ocr/v1/id-card`, `/ocr/v1/results/{ref}`,
`/liveness/v1/verify`, `/issuer/v1/verify-card`, `/sms/v1/messages`) for the world of
`core.providers.population`, plus the test-only routes under `/sim/`: the phones'
inboxes, pinned citizens' names, explicit faults and counters.

Determinism. Every decision is a pure function of sha256(seed, salt, ...) over the
request, never of the clock or of the order in which different requests arrive:

- the world's fraud: whether an ID's database photo is somebody else's (salt "photo",
  the ID number), whether a card's reserved mobile is not the one given ("card", the
  card number), whether an SMS is lost ("sms", the request), a liveness score;
- operating trouble (`--timeout-rate`, `--failure-rate`, `--malformed-rate`) and the
  latency jitter: drawn from the request's Idempotency-Key (or, without one, its body)
  and how many times this simulator has seen that key before, so a retry of a request
  draws afresh (a 503 need not repeat) while the same client behaviour always meets
  the same trouble. Only `/sim/faults` (explicit, for tests) depends on call order.

Idempotency. A provider call with an Idempotency-Key that already has an answer is
answered with the same bytes (a replay, counted in /sim/stats) and does nothing again
(no second SMS); the same key with another body is a 409. The cache is bounded
(KEYS_MAX, least recently used out). Failed attempts (a fault) leave no answer.

Order of a provider request: route (404/405) -> bearer token (401) -> body under its
cap (413) -> an armed /sim/faults fault -> JSON and schema (400, 413, 415, 422) ->
replay or key conflict (409) -> drawn trouble (timeout: the answer comes after
TIMEOUT_SLEEP_S, longer than any client timeout; failure: 503; malformed: a 200 that
is not the schema) -> the answer and its effects -> latency -> the response.

The state lives in one process's memory and is bounded everywhere (keys, OCR results,
inboxes, pinned citizens, faults): a long load test cannot grow it without end.
`running_simulator()` starts one in a subprocess for tests and `tally run-default`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import anyio
import orjson

from core.errors import TallyError
from core.providers.client import Request, Result, parse_answer, wire_request
from core.providers.population import (
    CARDS_PER_PERSON,
    SIM_TOKEN,
    card_for,
    face_of,
    issuer_of,
    media_type_of,
    parse_liveness_token,
    read_id_card_image,
)
from core.providers.types import CARD_TYPES, MEDIA_TYPES, PROVIDERS, ProviderError
from core.services.identity import MOBILE_PATTERN, luhn_valid, parse_resident_id

logger = logging.getLogger("tally.providers.sim")

FAULT_MODES = ("timeout", "error", "malformed")
TIMEOUT_SLEEP_S = 30.0  # a "timeout" answers after this: longer than any client's timeout
BODY_BYTES_MAX = 12 * 1024 * 1024  # a base64 ID card image of IMAGE_BYTES_MAX fits
IMAGE_BYTES_MAX = 8 * 1024 * 1024
KEYS_MAX = 50_000  # idempotency keys remembered (answers and attempt counts)
RESULTS_MAX = 50_000  # OCR results kept for GET /v1/results/{reference}
MOBILES_MAX = 50_000  # phones with an inbox
INBOX_MAX = 20  # messages per phone, newest last
CITIZENS_MAX = 200_000
FAULTS_MAX = 1_000  # armed faults
FAULT_COUNT_MAX = 10_000
NAME_CHARS_MAX = 100
TEXT_CHARS_MAX = 500
KEY_CHARS_MAX = 200
LATENCY_MS_MAX = 60_000
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
PARENT_POLL_S = 1.0
PREFIX = {"identity": "idv", "ocr": "ocr", "liveness": "lvn", "issuer": "card", "sms": "msg"}


class SimulatorError(TallyError):
    """The simulator subprocess did not start or did not answer."""


class Invalid(Exception):
    """A request the simulated provider refuses: its HTTP status and why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SimOptions:
    seed: int = 1
    token: str = field(default=SIM_TOKEN, repr=False)
    latency_ms: Mapping[str, int] = field(default_factory=dict)  # per provider; absent: 0
    jitter_ms: int = 0  # added to the latency: a draw in [0, jitter_ms)
    failure_rate: float = 0.0  # answered 503
    timeout_rate: float = 0.0  # answered after TIMEOUT_SLEEP_S
    malformed_rate: float = 0.0  # answered 200 with a body that is not the schema
    photo_mismatch_rate: float = 0.0  # IDs whose database photo is somebody else's
    card_mismatch_rate: float = 0.0  # cards whose reserved mobile is not the one given
    sms_loss_rate: float = 0.0  # SMS accepted and never delivered

    def problem(self) -> str | None:
        """What is wrong with these options (None if nothing)."""
        rates = {
            "failure-rate": self.failure_rate,
            "timeout-rate": self.timeout_rate,
            "malformed-rate": self.malformed_rate,
            "photo-mismatch-rate": self.photo_mismatch_rate,
            "card-mismatch-rate": self.card_mismatch_rate,
            "sms-loss-rate": self.sms_loss_rate,
        }
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                return f"--{name} must be in [0, 1], not {rate}"
        if self.failure_rate + self.timeout_rate + self.malformed_rate > 1.0:
            return "--failure-rate + --timeout-rate + --malformed-rate must not exceed 1"
        unknown = sorted(set(self.latency_ms) - set(PROVIDERS))
        if unknown:
            return f"--latency-ms: unknown provider(s) {', '.join(unknown)}"
        for name, latency_ms in {**self.latency_ms, "(jitter)": self.jitter_ms}.items():
            if not 0 <= latency_ms <= LATENCY_MS_MAX:
                return f"latency of {name} must be in 0..{LATENCY_MS_MAX} ms, not {latency_ms}"
        if not self.token:
            return "--token must not be empty"
        return None


def parse_latency(text: str) -> dict[str, int]:
    """`--latency-ms`: "identity=40,ocr=120" (absent providers: 0) or "40" for all five."""
    text = text.strip()
    if not text:
        return {}
    if "=" not in text:
        return dict.fromkeys(PROVIDERS, int(text))
    latency = {}
    for item in text.split(","):
        name, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"{item!r} is not NAME=MS")
        latency[name.strip()] = int(value)
    return latency


@dataclass(slots=True)
class KeyState:
    """What the simulator remembers of one Idempotency-Key of one provider."""

    digest: bytes  # of the first body sent with it
    seen: int = 0  # attempts so far
    answer: bytes | None = None  # the 200 body, once there is one


@dataclass(slots=True)
class Fault:
    provider: str
    match: str
    mode: str
    remaining: int


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    replay: bool = False


def _lru_put(table: OrderedDict[Any, Any], key: Any, value: Any, size_max: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > size_max:
        table.popitem(last=False)


class Simulator:
    """The simulated providers' state and decisions, apart from HTTP (see the module doc)."""

    def __init__(self, options: SimOptions) -> None:
        problem = options.problem()
        assert problem is None, problem
        self.options = options
        self.keys: OrderedDict[tuple[str, str], KeyState] = OrderedDict()
        self.results: OrderedDict[str, bytes] = OrderedDict()  # OCR reference -> answer
        self.inboxes: OrderedDict[str, deque[dict[str, str]]] = OrderedDict()
        self.citizens: OrderedDict[str, str] = OrderedDict()  # ID number -> pinned name
        self.faults: list[Fault] = []
        self.counters: dict[str, dict[str, int]] = {name: {} for name in PROVIDERS}

    def count(self, provider: str, what: str) -> None:
        counters = self.counters[provider]
        counters[what] = counters.get(what, 0) + 1

    def draw(self, salt: str, *parts: str) -> float:
        """A number in [0, 1) that depends on the seed, the salt and the parts only."""
        text = "\x00".join((str(self.options.seed), salt, *parts))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64

    def reference(self, provider: str, subject: str) -> str:
        text = f"{self.options.seed}\x00reference\x00{provider}\x00{subject}"
        return f"{PREFIX[provider]}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"

    # --- the explicit faults ---------------------------------------------------------

    def arm(self, fault: Fault) -> int:
        if len(self.faults) >= FAULTS_MAX:
            raise Invalid(409, f"at most {FAULTS_MAX} faults may be armed")
        self.faults.append(fault)
        return sum(fault.remaining for fault in self.faults)

    def take_fault(self, provider: str, request_text: str) -> str | None:
        for fault in self.faults:
            if fault.provider == provider and fault.match in request_text:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self.faults.remove(fault)
                return fault.mode
        return None

    # --- the providers' decisions (a body already checked by `validate_*`) -----------

    def database_photo(self, id_number: str) -> str:
        """The photo the identity database holds for an ID: a stolen one shows another."""
        if self.draw("photo", id_number) < self.options.photo_mismatch_rate:
            return face_of(id_number + "/impostor")
        return face_of(id_number)

    def identity(self, body: dict[str, Any], subject: str) -> dict[str, Any]:
        name, id_number, photo_ref = body["name"], body["id_number"], body["photo_ref"]
        reasons: list[str] = []
        if isinstance(parse_resident_id(id_number), str):
            reasons.append("not_found")
        elif self.citizens.get(id_number, name) != name:
            reasons.append("name")
        photo_match = None
        if photo_ref and not reasons:
            photo_match = photo_ref == self.database_photo(id_number)
            if not photo_match:
                reasons.append("photo")
        return {
            "match": not (set(reasons) & {"not_found", "name"}),
            "photo_match": photo_match,
            "reasons": reasons,
            "reference": self.reference("identity", subject),
        }

    def ocr(self, body: dict[str, Any], subject: str) -> dict[str, Any]:
        printed = read_id_card_image(body["image"])
        reference = self.reference("ocr", subject)
        answer = {
            "readable": printed is not None,
            "name": printed[0] if printed else "",
            "id_number": printed[1] if printed else "",
            "reasons": [] if printed else ["unreadable"],
            "reference": reference,
        }
        _lru_put(self.results, reference, orjson.dumps(answer), RESULTS_MAX)
        return answer

    def liveness(self, body: dict[str, Any], subject: str) -> dict[str, Any]:
        face_ref, live = body["parsed"]
        score = self.draw("score", body["token"])
        return {
            "live": live,
            "face_ref": face_ref,
            "score_ppm": 900_000 + int(score * 99_999) if live else int(score * 300_000),
            "reasons": [] if live else ["spoof"],
            "reference": self.reference("liveness", subject),
        }

    def issuer(self, body: dict[str, Any], subject: str) -> dict[str, Any]:
        number, id_number = body["card_number"], body["holder_id_number"]
        mismatched = []
        if not luhn_valid(number):
            mismatched.append("card_number")
        elif number not in {card_for(id_number, index) for index in range(CARDS_PER_PERSON)}:
            mismatched.append("holder")
        else:
            if self.citizens.get(id_number, body["holder_name"]) != body["holder_name"]:
                mismatched.append("holder_name")
            if self.draw("card", number) < self.options.card_mismatch_rate:
                mismatched.append("reserved_mobile")
        return {
            "match": not mismatched,
            "mismatched": mismatched,
            "issuer": issuer_of(number),
            "reference": self.reference("issuer", subject),
        }

    def sms(self, body: dict[str, Any], subject: str) -> dict[str, Any]:
        message_id = self.reference("sms", subject)
        if self.draw("sms", subject) < self.options.sms_loss_rate:
            self.count("sms", "lost")  # accepted, never delivered
        else:
            inbox = self.inboxes.get(body["mobile"]) or deque(maxlen=INBOX_MAX)
            inbox.append({"text": body["text"], "message_id": message_id})
            _lru_put(self.inboxes, body["mobile"], inbox, MOBILES_MAX)
            self.count("sms", "delivered")
        return {"accepted": True, "message_id": message_id}

    def answer(self, request: Request) -> Result:
        """What this simulated provider answers `request`, in process: the same validation,
        decision and strict parsing (`core.providers.client.parse_answer`) as over HTTP,
        the request id as the Idempotency-Key, without the wire's faults, latency or replay
        cache (the failover simulator's applicants, sim/onboarding.py). A request the
        provider refuses raises ProviderError(kind="refused") with its status."""
        wire = wire_request(request)
        try:
            if wire.method == "GET":
                reference = wire.path.rsplit("/", 1)[-1]
                stored = self.results.get(reference)
                if stored is None:
                    raise Invalid(404, "no OCR result under this reference")
                body = orjson.loads(stored)
            else:
                assert wire.payload is not None
                _, validate, decide = PROVIDER_ROUTES[("POST", f"/{wire.provider}{wire.path}")]
                body = orjson.loads(
                    orjson.dumps(decide(self, validate(wire.payload), request.request_id))
                )
        except Invalid as invalid:
            raise ProviderError(
                wire.provider, "refused", attempts=1, elapsed_ms=0, detail=invalid.detail,
                request_id=request.request_id, status=invalid.status,
            ) from None  # fmt: skip
        return parse_answer(wire.provider, body)

    def stats(self) -> dict[str, Any]:
        return {
            "seed": self.options.seed,
            "providers": {name: dict(sorted(self.counters[name].items())) for name in PROVIDERS},
            "faults_armed": sum(fault.remaining for fault in self.faults),
            "keys": len(self.keys),
        }


# --- request validation: the schema of each provider's request --------------------------


def _string(body: dict[str, Any], key: str, chars_max: int, *, empty: bool = False) -> str:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > chars_max or (not empty and not value):
        raise Invalid(400, f"`{key}` must be a non-empty string of at most {chars_max} characters")
    return value


def validate_identity(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": _string(body, "name", NAME_CHARS_MAX),
        "id_number": _string(body, "id_number", 32),
        "photo_ref": _string(body, "photo_ref", 64, empty=True) if "photo_ref" in body else "",
    }


def validate_ocr(body: dict[str, Any]) -> dict[str, Any]:
    media_type = body.get("media_type")
    if media_type not in MEDIA_TYPES:
        raise Invalid(415, f"`media_type` must be one of {', '.join(MEDIA_TYPES)}")
    text = _string(body, "image_base64", BODY_BYTES_MAX)
    try:
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(400, "`image_base64` is not base64") from None
    if len(image) > IMAGE_BYTES_MAX:
        raise Invalid(413, f"the image is larger than {IMAGE_BYTES_MAX} bytes")
    if media_type_of(image) != media_type:
        raise Invalid(415, f"the image is not {media_type} (by its magic bytes)")
    return {"image": image, "media_type": media_type}


def validate_liveness(body: dict[str, Any]) -> dict[str, Any]:
    token = _string(body, "token", 512)
    parsed = parse_liveness_token(token)
    if parsed is None:
        raise Invalid(422, "`token` is not a liveness token of this SDK")
    return {"token": token, "parsed": parsed}


def validate_issuer(body: dict[str, Any]) -> dict[str, Any]:
    number = _string(body, "card_number", 19)
    if not number.isdigit() or len(number) < 16:
        raise Invalid(400, "`card_number` must be 16 to 19 digits")
    if body.get("card_type") not in CARD_TYPES:
        raise Invalid(400, f"`card_type` must be one of {', '.join(CARD_TYPES)}")
    mobile = _string(body, "reserved_mobile", 11)
    if not MOBILE_PATTERN.fullmatch(mobile):
        raise Invalid(400, "`reserved_mobile` must be an 11-digit mainland mobile number")
    return {
        "card_number": number,
        "card_type": body["card_type"],
        "holder_name": _string(body, "holder_name", NAME_CHARS_MAX),
        "holder_id_number": _string(body, "holder_id_number", 32),
        "reserved_mobile": mobile,
    }


def validate_sms(body: dict[str, Any]) -> dict[str, Any]:
    mobile = _string(body, "mobile", 11)
    if not MOBILE_PATTERN.fullmatch(mobile):
        raise Invalid(400, "`mobile` must be an 11-digit mainland mobile number")
    return {"mobile": mobile, "text": _string(body, "text", TEXT_CHARS_MAX)}


Validate = Callable[[dict[str, Any]], dict[str, Any]]
Decide = Callable[[Simulator, dict[str, Any], str], dict[str, Any]]
# (method, path) -> (provider, validate, decide)
PROVIDER_ROUTES: dict[tuple[str, str], tuple[str, Validate, Decide]] = {
    ("POST", "/identity/v1/verify"): ("identity", validate_identity, Simulator.identity),
    ("POST", "/ocr/v1/id-card"): ("ocr", validate_ocr, Simulator.ocr),
    ("POST", "/liveness/v1/verify"): ("liveness", validate_liveness, Simulator.liveness),
    ("POST", "/issuer/v1/verify-card"): ("issuer", validate_issuer, Simulator.issuer),
    ("POST", "/sms/v1/messages"): ("sms", validate_sms, Simulator.sms),
}
OCR_RESULTS_PREFIX = "/ocr/v1/results/"
MALFORMED_ANSWERS = (
    (b"application/json", b'{"match": "yes", "reasons": "none"}'),  # wrong types, fields missing
    (b"text/html", b"<html><body>upstream gateway error</body></html>"),  # not JSON
    (b"application/json", b"[]"),  # JSON, not an object
)


def _problem(status: int, detail: str) -> Reply:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    return Reply(status, orjson.dumps({**body, "detail": detail}), b"application/problem+json")


def _json(data: Any, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(data))


# --- the ASGI application ----------------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class SimApp:
    """The simulator as a plain ASGI application (no framework: starts fast, any server)."""

    def __init__(self, options: SimOptions) -> None:
        self.sim = Simulator(options)
        self.authorization = f"Bearer {options.token}".encode()
        self.unauthorized = 0

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        reply = await self.handle(scope, receive)
        headers = [(b"content-type", reply.content_type)]
        if reply.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="providers"'))
        if reply.replay:
            headers.append((b"idempotent-replayed", b"true"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def handle(self, scope: dict[str, Any], receive: Receive) -> Reply:
        method, path = scope["method"], scope["path"]
        headers = {name.lower(): value for name, value in scope["headers"]}
        route = PROVIDER_ROUTES.get((method, path))
        if route is None and path.startswith(OCR_RESULTS_PREFIX):
            if method != "GET":
                return _problem(405, f"{path} allows GET")
            route = ("ocr", _no_validation, _no_decision)
        if route is None:
            if path.startswith("/sim/"):
                return await self.handle_sim(method, path, receive)
            if any(path == known for _, known in PROVIDER_ROUTES):
                return _problem(405, f"{path} allows POST")
            return _problem(404, f"no route {method} {path}")
        provider = route[0]
        if not hmac.compare_digest(headers.get(b"authorization", b""), self.authorization):
            self.unauthorized += 1
            return _problem(401, "a valid `Authorization: Bearer <token>` is required")
        try:
            raw = await _read_body(receive)
            key = headers.get(b"idempotency-key", b"").decode("utf-8", "replace")
            if len(key) > KEY_CHARS_MAX:
                raise Invalid(400, f"Idempotency-Key longer than {KEY_CHARS_MAX} characters")
            self.sim.count(provider, "requests")
            reply = await self.call(route, path, key, raw)
        except Invalid as invalid:
            self.sim.count(provider, f"refused_{invalid.status}")
            return _problem(invalid.status, invalid.detail)
        await self.sleep_latency(provider, key or path, raw)
        return reply

    async def call(
        self, route: tuple[str, Validate, Decide], path: str, key: str, raw: bytes
    ) -> Reply:
        provider, validate, decide = route
        sim = self.sim
        fault = sim.take_fault(provider, path + "\n" + raw.decode("utf-8", "replace"))
        if fault is not None:
            return await self.fail(provider, fault, explicit=True, subject=key or path)
        if path.startswith(OCR_RESULTS_PREFIX):
            return await self.lookup_ocr(path, key)
        body = validate(_json_body(raw))
        digest = hashlib.sha256(raw).digest()
        subject = key or "body:" + digest.hex()
        state = sim.keys.get((provider, subject))
        if state is None:
            state = KeyState(digest)
        elif state.digest != digest:
            sim.count(provider, "conflicts")
            raise Invalid(409, "this Idempotency-Key was used with another request body")
        _lru_put(sim.keys, (provider, subject), state, KEYS_MAX)
        if state.answer is not None and key:
            sim.count(provider, "replays")
            return Reply(200, state.answer, replay=True)
        drawn = self.drawn_fault(provider, subject, state.seen)
        state.seen += 1
        if drawn is not None:
            return await self.fail(provider, drawn, explicit=False, subject=subject)
        answer = orjson.dumps(decide(sim, body, subject))
        state.answer = answer if key else None
        sim.count(provider, "answers")
        return Reply(200, answer)

    async def lookup_ocr(self, path: str, key: str) -> Reply:
        """GET /ocr/v1/results/{reference}: a kept result (no replay cache: it is a read)."""
        sim = self.sim
        answer = sim.results.get(path[len(OCR_RESULTS_PREFIX) :])
        if answer is None:
            raise Invalid(404, "no OCR result with this reference")
        subject = key or "path:" + path
        lookups = sim.keys.get(("ocr", subject)) or KeyState(b"")
        _lru_put(sim.keys, ("ocr", subject), lookups, KEYS_MAX)
        drawn = self.drawn_fault("ocr", subject, lookups.seen)
        lookups.seen += 1  # a retry of the lookup draws afresh
        if drawn is not None:
            return await self.fail("ocr", drawn, explicit=False, subject=subject)
        sim.count("ocr", "answers")
        return Reply(200, answer)

    def drawn_fault(self, provider: str, subject: str, seen: int) -> str | None:
        options = self.sim.options
        draw = self.sim.draw("trouble", provider, subject, str(seen))
        for mode, rate in (
            ("timeout", options.timeout_rate),
            ("error", options.failure_rate),
            ("malformed", options.malformed_rate),
        ):
            if draw < rate:
                return mode
            draw -= rate
        return None

    async def fail(self, provider: str, mode: str, *, explicit: bool, subject: str) -> Reply:
        self.sim.count(provider, f"{'fault' if explicit else 'drawn'}_{mode}")
        if mode == "timeout":
            await anyio.sleep(TIMEOUT_SLEEP_S)
            return _problem(504, "simulated timeout")
        if mode == "error":
            return _problem(503, "simulated outage")
        index = int(self.sim.draw("malformed", provider, subject) * len(MALFORMED_ANSWERS))
        content_type, body = MALFORMED_ANSWERS[index]
        return Reply(200, body, content_type)

    async def sleep_latency(self, provider: str, subject: str, raw: bytes) -> None:
        options = self.sim.options
        latency_ms = options.latency_ms.get(provider, 0)
        if options.jitter_ms:
            draw = self.sim.draw("latency", provider, subject, hashlib.sha256(raw).hexdigest())
            latency_ms += int(draw * options.jitter_ms)
        if latency_ms:
            await anyio.sleep(latency_ms / 1000)

    async def handle_sim(self, method: str, path: str, receive: Receive) -> Reply:
        """The test-only routes: no token (they are the test's phone and control panel)."""
        sim = self.sim
        try:
            if path.startswith("/sim/sms/") and method == "GET":
                inbox = sim.inboxes.get(path[len("/sim/sms/") :], ())
                return _json({"messages": list(inbox)})
            if path == "/sim/stats" and method == "GET":
                return _json({**sim.stats(), "unauthorized": self.unauthorized})
            if path == "/sim/citizens" and method == "POST":
                body = _json_body(await _read_body(receive))
                id_number = _string(body, "id_number", 32)
                name = _string(body, "name", NAME_CHARS_MAX)
                _lru_put(sim.citizens, id_number, name, CITIZENS_MAX)
                return _json({"id_number": id_number, "name": name})
            if path == "/sim/faults" and method == "POST":
                return _json({"armed": sim.arm(_fault(_json_body(await _read_body(receive))))})
        except Invalid as invalid:
            return _problem(invalid.status, invalid.detail)
        return _problem(404, f"no route {method} {path}")


def _no_validation(body: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError("GET /ocr/v1/results has no body")


def _no_decision(sim: Simulator, body: dict[str, Any], subject: str) -> dict[str, Any]:
    raise AssertionError("GET /ocr/v1/results decides nothing")


def _fault(body: dict[str, Any]) -> Fault:
    provider, mode, count = body.get("provider"), body.get("mode"), body.get("count", 1)
    if provider not in PROVIDERS:
        raise Invalid(400, f"`provider` must be one of {', '.join(PROVIDERS)}")
    if mode not in FAULT_MODES:
        raise Invalid(400, f"`mode` must be one of {', '.join(FAULT_MODES)}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= FAULT_COUNT_MAX:
        raise Invalid(400, f"`count` must be an integer in 1..{FAULT_COUNT_MAX}")
    match = _string(body, "match", 200, empty=True) if "match" in body else ""
    return Fault(provider, match, mode, count)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Invalid(400, "the client went away before its body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > BODY_BYTES_MAX:
            raise Invalid(413, f"request body larger than {BODY_BYTES_MAX} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Invalid(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Invalid(400, "the body must be a JSON object")
    return body


# --- serving -----------------------------------------------------------------------------


def serve(
    options: SimOptions,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    port_file: str | None = None,
    backend: str = "asyncio",
    parent_pid: int = 0,
) -> int:
    """Serve the simulator under hypercorn until SIGINT/SIGTERM; the exit status.

    The socket is bound and listening before the port file is written (atomically), so
    a caller that reads the port can connect at once; requests wait in the backlog
    until hypercorn accepts them. With `parent_pid` it also stops once that process is
    gone (a test run killed outright leaves no simulator behind)."""
    from hypercorn.config import Config

    listener = socket.create_server((host, port), backlog=1024)
    bound_port = listener.getsockname()[1]
    url = f"http://{host}:{bound_port}"
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]  # hypercorn's socket owns the descriptor now
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1  # a simulated timeout in flight does not hold the exit
    config.keep_alive_max_requests = 1 << 30
    if port_file:
        temporary = f"{port_file}.tmp"
        Path(temporary).write_text(f"{bound_port}\n")
        os.replace(temporary, port_file)
    app = SimApp(options)
    logger.info(
        "tally providers serve: simulator on %s (seed %d, %s token, backend %s)",
        url,
        options.seed,
        "the development" if options.token == SIM_TOKEN else "a custom",
        backend,
    )
    print(url, flush=True)

    async def main() -> None:
        if backend == "trio":
            from hypercorn.trio import serve as serve_trio

            await serve_trio(app, config, shutdown_trigger=stop)  # type: ignore[arg-type]
        else:
            from hypercorn.asyncio import serve as serve_asyncio

            await serve_asyncio(app, config, shutdown_trigger=stop)  # type: ignore[arg-type]

    async def stop() -> None:
        await _wait_for_stop(parent_pid)

    anyio.run(main, backend=backend)
    return 0


async def _wait_for_stop(parent_pid: int) -> None:
    """Until SIGINT or SIGTERM, or until process `parent_pid` (if not 0) has exited."""
    import signal

    async with anyio.create_task_group() as group:

        async def wait_for_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    group.cancel_scope.cancel()

        async def wait_for_parent() -> None:
            while True:  # polled: no event tells a process that its parent has exited
                if os.getppid() != parent_pid:  # re-parented once the parent is gone
                    break
                await anyio.sleep(PARENT_POLL_S)
            logger.info("tally providers serve: parent %d is gone; stopping", parent_pid)
            group.cancel_scope.cancel()

        group.start_soon(wait_for_signal)
        if parent_pid:
            group.start_soon(wait_for_parent)


def simulator_arguments(options: Mapping[str, object]) -> list[str]:
    """`tally providers serve` options from keyword arguments (`failure_rate=0.1`,
    `latency_ms={"ocr": 120}` or "ocr=120" or 40, `token="..."`)."""
    words = []
    for name, value in options.items():
        if isinstance(value, Mapping):
            value = ",".join(f"{provider}={ms}" for provider, ms in value.items())
        words += [f"--{name.replace('_', '-')}", str(value)]
    return words


@contextmanager
def running_simulator(
    seed: int = 1, *, startup_timeout_s: float = STARTUP_TIMEOUT_S, **options: object
) -> Iterator[str]:
    """A simulator in a subprocess (`python -m core providers serve --port 0`) for the
    duration of the block; yields its base URL (give it to `ProvidersConfig.at`).

    Args:
        seed: the simulator's seed.
        options: `tally providers serve` options by their Python names (`simulator_arguments`).

    Error handling: SimulatorError (with the subprocess's output) if it exits or does
    not answer within `startup_timeout_s`. Resource handling: the subprocess is
    terminated (then killed after STOP_TIMEOUT_S) when the block ends, however it ends.
    """
    root = str(Path(__file__).resolve().parents[2])  # the tree this module was imported from
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [root, *filter(None, [environment.get("PYTHONPATH")])]
    )
    with tempfile.TemporaryDirectory(prefix="tally-providers-sim-") as directory:
        port_file, log_path = Path(directory, "port"), Path(directory, "log")
        command = [
            sys.executable,
            *(["-X", "dev"] if sys.flags.dev_mode else []),
            "-m",
            "core",
            "providers",
            "serve",
            *("--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)),
            *("--seed", str(seed), "--parent-pid", str(os.getpid())),
            *simulator_arguments(options),
        ]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=environment
            )
        try:
            url = _wait_ready(process, port_file, log_path, startup_timeout_s)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(
    process: subprocess.Popen[bytes], port_file: Path, log_path: Path, timeout_s: float
) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SimulatorError(
                f"the provider simulator exited with status {process.returncode}:\n"
                + log_path.read_text(errors="replace")
            )
        if port_file.exists():
            url = f"http://127.0.0.1:{int(port_file.read_text())}"
            try:
                with urllib.request.urlopen(f"{url}/sim/stats", timeout=timeout_s) as response:
                    if response.status == 200:
                        return url
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.02)
    raise SimulatorError(
        f"the provider simulator did not answer within {timeout_s} s:\n"
        + log_path.read_text(errors="replace")
    )
