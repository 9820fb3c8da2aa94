"""What the bank asks the outside parties of real-name verification, and what they answer.

Five providers, one request type and one result type each:

    identity   the citizen identity database (name + ID number, optionally the face)
    ocr        reads the printed name and ID number off a photo of the ID card
    liveness   says whether a liveness SDK's token shows a live person, and whose face
    issuer     the card network: the issuing bank confirms the five elements of a card
    sms        the SMS gateway: delivers a text to a mobile

Every request carries `request_id`, sent as the Idempotency-Key: a retry of the same
request id is the same call to the provider, so a lost answer is fetched again instead
of being asked twice (STYLE: retries reuse the same id). Every result says how many
attempts it took and how long the whole call lasted (`attempts`, `elapsed_ms`, set by
the client), and `reference`, the provider's own id of its answer, which the audit
records beside the request id.

A call that produced no answer after its retries raises `ProviderError`, an operating
error (core.errors.TallyError): its `kind` says whether the provider was slow
("timeout"), away ("unavailable"), answered something that is not the schema
("malformed") or refused the request ("refused", a 4xx, with the provider's detail).
What a provider *decided* (no match, a spoof, an unreadable image) is a result, never
an exception.

The images and SMS texts are left out of the dataclasses' repr: a request logged by
accident shows neither a customer's ID card nor a one-time code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from core.errors import TallyError

PROVIDERS = ("identity", "ocr", "liveness", "issuer", "sms")
ERROR_KINDS = ("timeout", "unavailable", "malformed", "refused")
MEDIA_TYPES = ("image/png", "image/jpeg")
CARD_TYPES = ("class_i_debit", "credit")
SCORE_PPM_MAX = 1_000_000  # liveness scores are parts per million


@dataclass(frozen=True, slots=True)
class IdentityCheck:
    request_id: str
    name: str
    id_number: str
    photo_ref: str = ""  # a face ref (liveness); "" = no photo comparison


@dataclass(frozen=True, slots=True)
class IdentityResult:
    match: bool  # the database holds this ID number under this name
    photo_match: bool | None  # the database photo is `photo_ref`'s face; None: not compared
    reasons: tuple[str, ...]  # "name", "not_found", "photo"
    reference: str
    attempts: int
    elapsed_ms: int


@dataclass(frozen=True, slots=True)
class OcrRequest:
    request_id: str
    image: bytes = field(repr=False)
    media_type: str  # "image/png" | "image/jpeg"


@dataclass(frozen=True, slots=True)
class OcrLookup:
    """An OCR result the app produced with the provider's SDK, fetched by its reference."""

    request_id: str
    reference: str


@dataclass(frozen=True, slots=True)
class OcrResult:
    readable: bool
    name: str  # "" when not readable
    id_number: str
    reasons: tuple[str, ...]  # "unreadable"
    reference: str
    attempts: int
    elapsed_ms: int


@dataclass(frozen=True, slots=True)
class LivenessCheck:
    request_id: str
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class LivenessResult:
    live: bool
    face_ref: str  # the face the SDK saw: compare it with the identity database's photo
    score_ppm: int  # 0 .. 1,000,000
    reasons: tuple[str, ...]  # "spoof"
    reference: str
    attempts: int
    elapsed_ms: int


@dataclass(frozen=True, slots=True)
class CardCheck:
    """The five elements: card number, card type, holder's name, ID number, reserved mobile."""

    request_id: str
    card_number: str
    card_type: str
    holder_name: str
    holder_id_number: str
    reserved_mobile: str


@dataclass(frozen=True, slots=True)
class CardResult:
    match: bool  # every element matches the issuer's records
    mismatched: tuple[str, ...]  # "holder", "holder_name", "reserved_mobile", "card_number"
    issuer: str  # the issuing bank ("" if unknown)
    reference: str
    attempts: int
    elapsed_ms: int


@dataclass(frozen=True, slots=True)
class SmsSend:
    request_id: str
    mobile: str
    text: str = field(repr=False)  # holds a one-time code: never logged


@dataclass(frozen=True, slots=True)
class SmsResult:
    accepted: bool  # the gateway took it (delivery is not confirmed)
    message_id: str
    attempts: int
    elapsed_ms: int


class ProviderError(TallyError):
    """A provider call that produced no answer after its retries.

    `provider`: one of PROVIDERS. `kind`: "timeout" (no answer within the timeout on the
    last attempt), "unavailable" (connection refused or reset, 5xx, 429), "malformed"
    (an answer that is not the schema: never retried, the provider is broken),
    "refused" (a 4xx other than 429: the provider's `detail` says why; never retried).
    `status`: the HTTP status of the last answer (0: none came).
    """

    def __init__(
        self,
        provider: str,
        kind: str,
        *,
        attempts: int,
        elapsed_ms: int,
        detail: str,
        request_id: str = "",
        status: int = 0,
    ) -> None:
        assert provider in PROVIDERS, provider
        assert kind in ERROR_KINDS, kind
        super().__init__(
            f"{provider} provider: {kind} after {attempts} attempt(s) in {elapsed_ms} ms: {detail}"
        )
        self.provider = provider
        self.kind = kind
        self.attempts = attempts
        self.elapsed_ms = elapsed_ms
        self.detail = detail
        self.request_id = request_id
        self.status = status


class Providers(Protocol):
    """The five providers; `core.providers.client.HttpProviders` speaks to them over HTTP."""

    async def identity(self, request: IdentityCheck) -> IdentityResult: ...

    async def ocr(self, request: OcrRequest | OcrLookup) -> OcrResult: ...

    async def liveness(self, request: LivenessCheck) -> LivenessResult: ...

    async def card(self, request: CardCheck) -> CardResult: ...

    async def sms(self, request: SmsSend) -> SmsResult: ...

    async def aclose(self) -> None: ...
