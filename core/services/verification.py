"""Real-name verification: a workflow of steps per customer and per card binding.

A customer is `verified` only once every step their registering channel's policy
requires has passed (`core.services.policy.VerificationPolicy`: the channel
registry's lists, never below the kind's floor), `rejected` (with reasons) once one
of them failed for good or the workflow's window passed, and `pending` meanwhile.
The steps:

    id_structure         the ID number's check digit, region, birth date and age
                         (core/services/kyc.py), at registration, inside the bank
    identity_database    the citizen database holds this ID under this name (and, for a
                         remote customer, its photo is the face the liveness check saw)
    id_ocr               the ID card photographed (or the app's OCR result) reads the
                         registered name and ID number
    liveness             the liveness SDK's token shows a live person (not a photo)
    teller_confirmation  a teller saw the customer and their ID card (a counter)

and per card binding (a Class II/III account binds a card of the same name):

    issuer_card          the card's issuer confirms its five elements (an own-bank
                         Class I card: our own records, same customer, open)
    sms_code             the bank's one-time code, sent to the registered mobile, came
                         back

A step is `pending`, `passed`, `failed` or `expired`, with its attempts and their
maximum, the reasons of its failed attempts, and who moved it last, when. A failed
attempt is no refusal: the step answers with its state and the attempts remaining;
the last attempt failing fails the step (a name or ID number the identity database
does not hold fails it at once). The windows: 24 h from registration for a
customer's steps, 30 min for a binding, 5 min for an SMS code.

Providers (core/providers/): each provider step asks its provider once per attempt,
with a request id derived from the subject, the step, the attempt number and a keyed
digest of what is asked, so a retry of the same attempt (after a lost answer, after a
crash) is the same request to the provider (its Idempotency-Key). A provider that
gives no answer (timeout, unavailable, not configured: PROVIDER_UNAVAILABLE with
`retry_after_s`) or an answer that does not parse (PROVIDER_ANSWER_INVALID) leaves the
step pending and consumes no attempt; the call is recorded all the same. A step changes
state only with a complete, parsed answer, and in ONE durable commit with the record of
the call that decided it: nothing is ever half-verified. Every provider call is a
durable record for the audit (`kyccall/`): the request id, the provider, a masked
summary of the request, the outcome, the client's attempts and the elapsed time; never
an image, a liveness token, an SMS text or a code.

Order: at a counter the registration itself runs id_structure, passes
teller_confirmation (the teller named in the signed request) and runs
identity_database without a photo, so the counter's customer is verified in one call;
`confirm_in_person` (a teller) passes teller_confirmation and runs a pending
identity_database, and switches a pending remote workflow to the counter's steps (the
face-to-face check replaces OCR and liveness). A remote registration runs id_structure;
identity_database runs with the liveness face once liveness passed (a photo mismatch
sends the customer back to liveness while attempts remain). A customer recorded without
the workflow's steps (the built-in verdict of earlier versions) is pending: the first
step asked for starts a workflow under the asking channel's policy.

Who acts for a customer here: the channel that registered them (a new customer has no
account, so no session exists yet), a channel of the same kinds showing the customer's
session, any counter, the bank's internal channel; anyone else learns nothing
(READ_NOT_IN_SCOPE, whether the customer exists or not).

Card bindings: `start_binding` checks the card against the customer (the same-name
checks accounts.py applied before: `check_card_holder`), records the binding, runs
issuer_card and, when the policy requires it, sends the first SMS code. A second
`start_binding` for the same card resumes a pending binding (a provider that failed is
asked again) instead of starting another, so its attempts count. Opening a Class II/III
account (`Accounts.open`) needs a verified, unused binding of that card; the opening
marks it used in the commit that records the account.

SMS one-time codes are generic challenges for an (operation, subject): the bank draws 6
digits (`secrets`), keeps only an HMAC of them (keyed by a key derived from the
server's password pepper, so a copy of the state does not give them out), sends the
text through the SMS provider and forgets the code. A challenge lives 5 minutes, takes
5 wrong codes, is used once; a new one for the same operation and subject voids the
previous (at most one a minute), at most 5 per binding. A code for another operation
or subject is refused without consuming an attempt. Neither code nor text is ever
logged or recorded.

Records (customer state, `OTHER_SERVICE_PREFIXES`, JSON; the customer's workflow is in
the customer record's `kyc`):

    kyccall/<subject>/<seq>   one provider call (subject: a customer or binding id)
    binding/<binding id>      a card binding, its steps, its SMS challenges sent
    smscode/<challenge id>    an SMS challenge: operation, subject, the code's HMAC

Concurrency: a customer's steps, bindings and challenges change under one lock per
customer (held across the provider call), so two requests never spend one attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson

from core.providers.types import (
    CARD_TYPES,
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
from core.services import identity
from core.services.accounts import BIN_OF_CLASS, BOUND_CARD_FIELDS
from core.services.auth import Auth
from core.services.commands import (
    NO_PROOF,
    Caller,
    ConfirmInPerson,
    ConfirmSmsCode,
    Proof,
    RequestSmsCode,
    StartCardBinding,
    SubmitIdDocument,
    SubmitLiveness,
)
from core.services.kyc import id_structure_reasons
from core.services.lifecycle import Lifecycle
from core.services.policy import (
    COUNTER_KIND,
    COUNTER_ONLY,
    CUSTOMER_KINDS,
    INTERNAL_KIND,
    SERVING_KINDS,
    VerificationPolicy,
)
from core.services.records import NS_PER_S, rfc3339
from core.services.refusals import Code, Refused, kind_refused, refused
from core.services.results import CardBindingRead, SmsChallengeRead, VerificationRead
from core.services.state import Change, Customer, customer_record, kyc_verified

if TYPE_CHECKING:
    from core.providers.types import Providers

logger = logging.getLogger("tally.services")

# The adapter checks an uploaded image's size and type too; the service checks again.
IMAGE_BYTES_MAX: Final = 1 << 20
IMAGE_MEDIA_TYPES: Final = ("image/jpeg", "image/png")
_MAGIC: Final = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
CUSTOMER_WINDOW_S: Final = 24 * 3600  # a customer's steps, from registration
BINDING_WINDOW_S: Final = 30 * 60  # a card binding's steps, from its start
SMS_CODE_TTL_S: Final = 5 * 60
SMS_RESEND_INTERVAL_S: Final = 60  # at most one code a minute per operation and subject
SMS_WRONG_CODES_MAX: Final = 5  # per challenge
SMS_CHALLENGES_MAX: Final = 5  # per binding (the sms_code step's attempts)
SMS_CODE_DIGITS: Final = 6
SMS_OPERATIONS: Final = ("bind_card",)  # what an SMS challenge may authorize
PROVIDER_RETRY_AFTER_S: Final = 5
NOT_CONFIGURED_RETRY_AFTER_S: Final = 60
FORGET_AFTER_S: Final = 86_400  # dead challenges and bindings are deleted a day after
# A provider's 4xx about what it was asked (an unknown OCR reference, a token that is no
# liveness SDK's): an answer about the customer's input, counted as a failed attempt.
INPUT_REFUSED_STATUSES: Final = (404, 422)
_CODE_PATTERN = re.compile(r"[0-9]{6}")

PENDING: Final = "pending"
PASSED: Final = "passed"
FAILED: Final = "failed"
EXPIRED: Final = "expired"
VERIFIED: Final = "verified"
REJECTED: Final = "rejected"
USED: Final = "used"
# Attempts per step (sms_code: challenges per binding; each takes SMS_WRONG_CODES_MAX codes).
ATTEMPTS_MAX: Final = {
    "id_structure": 1,
    "identity_database": 3,  # photo mismatches; a name or ID mismatch fails it at once
    "id_ocr": 3,
    "liveness": 3,
    "teller_confirmation": 1,
    "issuer_card": 3,
    "sms_code": SMS_CHALLENGES_MAX,
}
CALL_PREFIX: Final = b"kyccall/"
BINDING_PREFIX: Final = b"binding/"
CHALLENGE_PREFIX: Final = b"smscode/"
BANK_RECORDS: Final = "bank_records"  # who passed an own-bank card's issuer_card


def image_media_type(image: bytes) -> str | None:
    """ "image/png" or "image/jpeg" by the magic bytes; None for anything else."""
    for magic, media_type in _MAGIC:
        if image.startswith(magic):
            return media_type
    return None


def check_image(image: bytes, media_type: str) -> str:
    """The image's media type, once it is at most IMAGE_BYTES_MAX bytes (IMAGE_TOO_LARGE)
    and a PNG or JPEG by its magic bytes, as declared if declared (IMAGE_TYPE_NOT_ALLOWED)."""
    if len(image) > IMAGE_BYTES_MAX:
        raise refused(
            Code.IMAGE_TOO_LARGE,
            f"{len(image)} bytes; at most {IMAGE_BYTES_MAX}",
            limit_bytes=IMAGE_BYTES_MAX,
        )
    found = image_media_type(image)
    if found is None or (media_type and media_type != found):
        raise refused(
            Code.IMAGE_TYPE_NOT_ALLOWED,
            "not a JPEG or PNG image" if found is None else f"a {found} image sent as {media_type}",
            allowed=IMAGE_MEDIA_TYPES,
        )
    return found


# --- steps ---------------------------------------------------------------------------


def new_step(name: str) -> dict[str, Any]:
    return {
        "state": PENDING,
        "attempts": 0,
        "attempts_max": ATTEMPTS_MAX[name],
        "reasons": [],
        "updated_ns": 0,
        "by": "",
    }


def pass_step(step: dict[str, Any], now_ns: int, by: str) -> None:
    step.update(state=PASSED, attempts=step["attempts"] + 1, updated_ns=now_ns, by=by)


def fail_attempt(
    step: dict[str, Any], reason: str, now_ns: int, by: str, *, final: bool = False
) -> None:
    """One failed attempt; the step fails for good at the last one (or at once: `final`)."""
    step["attempts"] += 1
    step["reasons"] = [*step["reasons"], reason]
    step["updated_ns"] = now_ns
    step["by"] = by
    if final or step["attempts"] >= step["attempts_max"]:
        step["state"] = FAILED


def settle(
    required: list[str], steps: dict[str, dict[str, Any]], expires_ns: int, now_ns: int
) -> tuple[str, list[str]]:
    """The status and its reasons from the required steps; once the window passed, the
    steps still pending become `expired` (in `steps`). Verified is final."""
    if all(steps[name]["state"] == PASSED for name in required):
        return VERIFIED, []
    if now_ns >= expires_ns:
        for name in required:
            step = steps[name]
            if step["state"] == PENDING:
                step.update(state=EXPIRED, reasons=[*step["reasons"], "expired"])
                step["updated_ns"] = expires_ns
    reasons = [
        f"{name}: {steps[name]['reasons'][-1] if steps[name]['reasons'] else steps[name]['state']}"
        for name in required
        if steps[name]["state"] in (FAILED, EXPIRED)
    ]
    return (REJECTED, reasons) if reasons else (PENDING, [])


def settle_kyc(kyc: dict[str, Any], now_ns: int) -> None:
    if kyc["status"] != PENDING:
        return  # verified and rejected are final
    kyc["status"], kyc["reasons"] = settle(kyc["required"], kyc["steps"], kyc["expires_ns"], now_ns)


def new_workflow(
    policy: VerificationPolicy,
    caller: Caller,
    resident_id: identity.ResidentId,
    today: datetime.date,
    now_ns: int,
    minimum_age: int,
) -> dict[str, Any]:
    """The workflow of a customer registering at `caller`: the steps its policy requires,
    id_structure run, teller_confirmation passed at a counter naming its teller."""
    required = list(policy.customer_steps(caller))
    steps = {name: new_step(name) for name in required}
    by = _by(caller)
    if "id_structure" in steps:
        reasons = id_structure_reasons(resident_id, today, minimum_age)
        if reasons:
            step = steps["id_structure"]
            for reason in reasons:
                fail_attempt(step, reason, now_ns, by, final=True)
            step["attempts"] = 1
        else:
            pass_step(steps["id_structure"], now_ns, by)
    if caller.kind == COUNTER_KIND and caller.actor_id and "teller_confirmation" in steps:
        pass_step(steps["teller_confirmation"], now_ns, by)
    kyc: dict[str, Any] = {
        "status": PENDING,
        "required": required,
        "steps": steps,
        "reasons": [],
        "channel": caller.name,
        "kind": caller.kind,
        "expires_ns": now_ns + CUSTOMER_WINDOW_S * NS_PER_S,
        "face_ref": "",
    }
    settle_kyc(kyc, now_ns)
    return kyc


# --- what one provider answer does to its step (None: the provider refused the request).
# The service and the failover simulator's applicants (sim/onboarding.py) share these.


def record_identity(
    kyc: dict[str, Any], result: IdentityResult | None, photo_ref: str, now_ns: int, by: str
) -> str:
    """identity_database's attempt; a photo mismatch sends the customer back to liveness
    (another attempt needs another face) while attempts remain. Returns the outcome."""
    step = kyc["steps"]["identity_database"]
    if result is None:
        fail_attempt(step, "refused_by_provider", now_ns, by)
        return "refused"
    if not result.match:
        reason = ",".join(result.reasons) or "no_match"
        fail_attempt(step, f"identity_mismatch:{reason}", now_ns, by, final=True)
        return "mismatch"
    if photo_ref and not result.photo_match:
        fail_attempt(step, "photo_mismatch", now_ns, by)
        if step["state"] == PENDING:
            liveness = kyc["steps"]["liveness"]
            if liveness["attempts"] >= liveness["attempts_max"]:
                liveness.update(state=FAILED, reasons=[*liveness["reasons"], "photo_mismatch"])
            else:
                liveness["state"] = PENDING
            kyc["face_ref"] = ""
        return "photo_mismatch"
    pass_step(step, now_ns, by)
    return PASSED


def record_ocr(
    step: dict[str, Any],
    result: OcrResult | None,
    name: str,
    id_number: str,
    now_ns: int,
    by: str,
) -> str:
    """id_ocr's attempt: passes when the document reads the registered name and ID."""
    if result is None:
        fail_attempt(step, "refused_by_provider", now_ns, by)
        return "refused"
    if not result.readable:
        fail_attempt(step, "unreadable", now_ns, by)
        return "unreadable"
    if result.name != name or result.id_number != id_number:
        fail_attempt(step, "document_mismatch", now_ns, by)
        return "mismatch"
    pass_step(step, now_ns, by)
    return PASSED


def record_liveness(
    kyc: dict[str, Any], result: LivenessResult | None, now_ns: int, by: str
) -> str:
    """liveness's attempt; a live answer keeps the face identity_database compares."""
    step = kyc["steps"]["liveness"]
    if result is None:
        fail_attempt(step, "refused_by_provider", now_ns, by)
        return "refused"
    if not result.live:
        fail_attempt(step, ",".join(result.reasons) or "not_live", now_ns, by)
        return "not_live"
    pass_step(step, now_ns, by)
    kyc["face_ref"] = result.face_ref
    return PASSED


def record_card(step: dict[str, Any], result: CardResult | None, now_ns: int, by: str) -> str:
    """issuer_card's attempt (the step's reason never says which element differed)."""
    if result is None:
        fail_attempt(step, "refused_by_provider", now_ns, by)
        return "refused"
    if not result.match:
        fail_attempt(step, "issuer_mismatch", now_ns, by)
        return "mismatch:" + ",".join(result.mismatched)
    pass_step(step, now_ns, by)
    return PASSED


def _step_view(name: str, step: Mapping[str, Any], expires_ns: int) -> dict[str, Any]:
    return {
        "step": name,
        "state": step["state"],
        "attempts": step["attempts"],
        "attempts_max": step["attempts_max"],
        "attempts_remaining": max(0, step["attempts_max"] - step["attempts"])
        if step["state"] == PENDING
        else 0,
        "expires_at": rfc3339(expires_ns),
        "reasons": list(step["reasons"]),
        "updated_at": rfc3339(step["updated_ns"]) if step["updated_ns"] else None,
        "by": step["by"] or None,
    }


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (a workflow about to change: the old stays until durable)."""
    return orjson.loads(orjson.dumps(value))


def _by(caller: Caller) -> str:
    """Who acted: the channel, and the teller it named."""
    return f"{caller.name}/{caller.actor_id}" if caller.actor_id else caller.name


def _mask_name(name: str) -> str:
    return name[:1] + "*" * (len(name) - 1)


# --- bindings and challenges ----------------------------------------------------------


@dataclass(slots=True)
class Binding:
    """A card binding: the card as it will be bound (`bound`: kind "external" or
    "internal", card_number, card_type, account_id of an own card), its steps."""

    binding_id: str
    customer_id: str
    bound: dict[str, Any]
    required: list[str]
    steps: dict[str, dict[str, Any]]
    channel: str
    created_ns: int
    expires_ns: int
    challenge_id: str = ""  # the newest SMS challenge
    account_id: int = 0  # the account opened with it (used)

    def status(self, now_ns: int) -> str:
        if self.account_id:
            return USED
        steps = _copy(self.steps)
        status, _ = settle(self.required, steps, self.expires_ns, now_ns)
        if status == REJECTED and all(steps[n]["state"] != FAILED for n in self.required):
            return EXPIRED
        return status

    def key(self) -> bytes:
        return BINDING_PREFIX + self.binding_id.encode()

    def to_record(self) -> dict[str, Any]:
        return {
            "k": "binding",
            "id": self.binding_id,
            "customer": self.customer_id,
            "bound": self.bound,
            "required": self.required,
            "steps": self.steps,
            "channel": self.channel,
            "created_ns": self.created_ns,
            "expires_ns": self.expires_ns,
            "challenge": self.challenge_id,
            "account": str(self.account_id) if self.account_id else "",
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Binding:
        return cls(
            record["id"],
            record["customer"],
            record["bound"],
            record["required"],
            record["steps"],
            record["channel"],
            record["created_ns"],
            record["expires_ns"],
            record["challenge"],
            int(record["account"] or 0),
        )

    def change(self) -> Change:
        return self.key(), orjson.dumps(self.to_record())


@dataclass(slots=True)
class Challenge:
    """An SMS one-time code challenge: what it authorizes and the code's HMAC only."""

    challenge_id: str
    customer_id: str
    operation: str
    subject: str
    digest: str  # HMAC-SHA256 of the challenge id and the code, hex
    created_ns: int
    expires_ns: int
    wrong: int = 0  # wrong codes so far
    state: str = "sent"  # sent, confirmed, exhausted, voided

    def status(self, now_ns: int) -> str:
        if self.state == "sent" and now_ns >= self.expires_ns:
            return EXPIRED
        return self.state

    def key(self) -> bytes:
        return CHALLENGE_PREFIX + self.challenge_id.encode()

    def to_record(self) -> dict[str, Any]:
        return {
            "k": "smscode",
            "id": self.challenge_id,
            "customer": self.customer_id,
            "operation": self.operation,
            "subject": self.subject,
            "hmac": self.digest,
            "created_ns": self.created_ns,
            "expires_ns": self.expires_ns,
            "wrong": self.wrong,
            "state": self.state,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Challenge:
        return cls(
            record["id"],
            record["customer"],
            record["operation"],
            record["subject"],
            record["hmac"],
            record["created_ns"],
            record["expires_ns"],
            record["wrong"],
            record["state"],
        )

    def change(self) -> Change:
        return self.key(), orjson.dumps(self.to_record())


@dataclass(frozen=True, slots=True)
class _Asked:
    """One provider call: about what (`subject`: a customer or binding id), which step,
    which provider, its request id, and the masked summary the audit keeps of it."""

    subject: str
    customer_id: str
    step: str
    provider: str
    request_id: str
    summary: dict[str, Any]


@dataclass(slots=True)
class _Answer:
    """A provider's answer, or None where it refused the request's input (`refused`)."""

    result: Any
    attempts: int
    elapsed_ms: int
    reference: str
    refused: str = ""  # the provider's detail when it refused the input


@dataclass(slots=True)
class _Lock:
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    users: int = 0


class Verification:
    """The verification workflow (see the module doc); `bank.verification`."""

    def __init__(
        self,
        core: Lifecycle,
        auth: Auth,
        providers: Providers | None,
        policy: VerificationPolicy,
    ) -> None:
        self.core = core
        self.auth = auth
        self.providers = providers
        self.policy = policy
        # Derived from the password pepper (a server secret no channel holds): the key of
        # the SMS codes' HMAC and of the request ids' digests.
        pepper = core.settings.secrets.password_pepper
        self._code_key = hmac.new(pepper, b"tally-sms-code-v1", hashlib.sha256).digest()
        self._id_key = hmac.new(pepper, b"tally-provider-request-id-v1", hashlib.sha256).digest()
        self._bindings: dict[str, Binding] = {}
        self._bindings_of: dict[str, list[str]] = {}  # customer -> binding ids, oldest first
        self._challenges: dict[str, Challenge] = {}
        self._latest: dict[tuple[str, str], str] = {}  # (operation, subject) -> challenge id
        self._calls: dict[str, list[dict[str, Any]]] = {}  # subject -> its calls in order
        self._locks: dict[str, _Lock] = {}
        core.on_state_loaded.append(self.on_state_loaded)
        core.on_housekeeping.append(self.forget_expired)

    # --- records -------------------------------------------------------------------

    def on_state_loaded(self, state: Mapping[bytes, bytes]) -> None:
        """Rebuild bindings, challenges and the provider calls from the recovered state."""
        self._bindings, self._bindings_of, self._challenges = {}, {}, {}
        self._latest, self._calls = {}, {}
        calls: list[dict[str, Any]] = []
        for key, value in state.items():
            if key.startswith(BINDING_PREFIX):
                self._put_binding(Binding.from_record(orjson.loads(value)))
            elif key.startswith(CHALLENGE_PREFIX):
                self._put_challenge(Challenge.from_record(orjson.loads(value)))
            elif key.startswith(CALL_PREFIX):
                calls.append(orjson.loads(value))
        for ids in self._bindings_of.values():
            ids.sort(key=lambda binding_id: self._bindings[binding_id].created_ns)
        for call in sorted(calls, key=lambda call: (call["subject"], call["seq"])):
            self._calls.setdefault(call["subject"], []).append(call)

    def _put_binding(self, binding: Binding) -> None:
        if binding.binding_id not in self._bindings:
            self._bindings_of.setdefault(binding.customer_id, []).append(binding.binding_id)
        self._bindings[binding.binding_id] = binding

    def _put_challenge(self, challenge: Challenge) -> None:
        self._challenges[challenge.challenge_id] = challenge
        latest_id = self._latest.get((challenge.operation, challenge.subject))
        latest = self._challenges.get(latest_id) if latest_id else None
        if latest is None or latest.created_ns <= challenge.created_ns:
            self._latest[(challenge.operation, challenge.subject)] = challenge.challenge_id

    def forget_expired(self, now_ns: int) -> None:
        """Delete challenges and bindings dead for a day (a used binding stays: the
        account names it); the deletions ride the next flush."""
        horizon_ns = now_ns - FORGET_AFTER_S * NS_PER_S
        state = self.core.customer_state()
        for challenge in [c for c in self._challenges.values() if c.expires_ns < horizon_ns]:
            del self._challenges[challenge.challenge_id]
            pair = (challenge.operation, challenge.subject)
            if self._latest.get(pair) == challenge.challenge_id:
                del self._latest[pair]
            state.stage_change(challenge.key(), None)
        for binding in [
            b
            for b in self._bindings.values()
            if b.expires_ns < horizon_ns and b.status(now_ns) in (EXPIRED, REJECTED)
        ]:
            del self._bindings[binding.binding_id]
            self._bindings_of[binding.customer_id].remove(binding.binding_id)
            if not self._bindings_of[binding.customer_id]:
                del self._bindings_of[binding.customer_id]
            state.stage_change(binding.key(), None)

    def _call_record(
        self, asked: _Asked, outcome: str, attempts: int, elapsed_ms: int, reference: str = ""
    ) -> dict[str, Any]:
        """The audit record of one provider call (never an image, a token, a code)."""
        return {
            "k": "kyccall",
            "subject": asked.subject,
            "seq": len(self._calls.get(asked.subject, ())),
            "customer": asked.customer_id,
            "at_ns": self.core.now_ns(),
            "step": asked.step,
            "provider": asked.provider,
            "request_id": asked.request_id,
            "summary": asked.summary,
            "outcome": outcome,
            "attempts": attempts,
            "elapsed_ms": elapsed_ms,
            "reference": reference,
        }

    def _answered(self, asked: _Asked, outcome: str, answer: _Answer) -> dict[str, Any]:
        return self._call_record(
            asked, outcome, answer.attempts, answer.elapsed_ms, answer.reference
        )

    @staticmethod
    def _call_change(call: Mapping[str, Any]) -> Change:
        key = CALL_PREFIX + f"{call['subject']}/{call['seq']:08d}".encode()
        return key, orjson.dumps(call)

    async def _commit(
        self,
        records: list[dict[str, Any]] | None = None,
        *,
        bindings: tuple[Binding, ...] = (),
        challenges: tuple[Challenge, ...] = (),
        calls: tuple[dict[str, Any], ...] = (),
    ) -> None:
        """Make `records` (customer records), bindings, challenges and provider calls
        durable in one commit. Like `StateStore.commit`, they are in memory first (a
        cancellation once queued leaves memory as it will be durable) and taken back if
        the engine refuses them."""
        saved_bindings = [(b.binding_id, self._bindings.get(b.binding_id)) for b in bindings]
        saved_challenges = [
            (c.challenge_id, self._challenges.get(c.challenge_id)) for c in challenges
        ]
        saved_latest = {
            (c.operation, c.subject): self._latest.get((c.operation, c.subject)) for c in challenges
        }
        changes = [b.change() for b in bindings] + [c.change() for c in challenges]
        changes += [self._call_change(call) for call in calls]
        for binding in bindings:
            self._put_binding(binding)
        for challenge in challenges:
            self._put_challenge(challenge)
        for call in calls:
            self._calls.setdefault(call["subject"], []).append(call)
        try:
            await self.core.customer_state().commit(records or [], other=changes)
        except Refused:
            for binding_id, before in saved_bindings:
                if before is not None:
                    self._bindings[binding_id] = before
                else:
                    gone = self._bindings.pop(binding_id)
                    self._bindings_of[gone.customer_id].remove(binding_id)
            for challenge_id, earlier in saved_challenges:
                _put(self._challenges, challenge_id, earlier)
            for pair, latest in saved_latest.items():
                _put(self._latest, pair, latest)
            for call in calls:
                self._calls[call["subject"]].remove(call)
            raise

    def _request_id(self, subject: str, step: str, attempt: int, *asked: bytes | str) -> str:
        """Deterministic per step attempt and what it asks (a keyed digest of it)."""
        digest = hmac.new(self._id_key, digestmod=hashlib.sha256)
        for part in asked:
            digest.update(part.encode() if isinstance(part, str) else part)
            digest.update(b"\0")
        return f"{subject}-{step}-{attempt}-{digest.hexdigest()[:12]}"

    @contextlib.asynccontextmanager
    async def _serialized(self, customer_id: str) -> AsyncIterator[None]:
        """One of a customer's verification changes at a time (provider call included)."""
        entry = self._locks.get(customer_id)
        if entry is None:
            entry = self._locks[customer_id] = _Lock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[customer_id]

    # --- providers -----------------------------------------------------------------

    async def _ask(
        self,
        asked: _Asked,
        call: Callable[[Providers], Awaitable[Any]],
        *,
        sane: Callable[[Any], bool],
        extras: Mapping[str, Any] | None = None,
    ) -> _Answer:
        """Ask `provider`; its parsed answer, or the input refusal (404/422). No answer, a
        malformed or insane one (`sane` False), another refusal, or no provider
        configured: the call is recorded (durable) and refused PROVIDER_UNAVAILABLE or
        PROVIDER_ANSWER_INVALID; nothing else changes."""
        extras = dict(extras or {})
        provider = asked.provider
        providers = self.providers
        if providers is None:
            await self._record_failed_call(asked, "not_configured", 0, 0)
            raise refused(
                Code.PROVIDER_UNAVAILABLE,
                "not configured",
                provider=provider,
                retry_after_s=NOT_CONFIGURED_RETRY_AFTER_S,
                **extras,
            )
        try:
            result = await call(providers)
        except ProviderError as error:
            status = error.status
            if error.kind == "refused" and status in INPUT_REFUSED_STATUSES:
                return _Answer(None, error.attempts, error.elapsed_ms, "", error.detail)
            outcome = error.kind if error.kind != "refused" else f"refused_{status or 'other'}"
            await self._record_failed_call(asked, outcome, error.attempts, error.elapsed_ms)
            logger.warning(
                orjson.dumps(
                    {
                        "event": "provider_failed",
                        "provider": provider,
                        "request_id": asked.request_id,
                        "kind": error.kind,
                        "attempts": error.attempts,
                        "elapsed_ms": error.elapsed_ms,
                        "detail": error.detail,
                    }
                ).decode()
            )
            if error.kind == "malformed":
                raise refused(
                    Code.PROVIDER_ANSWER_INVALID,
                    f"the {provider} provider's answer did not parse",
                    provider=provider,
                    retry_after_s=PROVIDER_RETRY_AFTER_S,
                    **extras,
                ) from None
            raise refused(
                Code.PROVIDER_UNAVAILABLE,
                f"the {provider} provider: {error.kind}",
                provider=provider,
                retry_after_s=PROVIDER_RETRY_AFTER_S,
                **extras,
            ) from None
        if not sane(result):
            await self._record_failed_call(asked, "malformed", result.attempts, result.elapsed_ms)
            raise refused(
                Code.PROVIDER_ANSWER_INVALID,
                f"the {provider} provider's answer is inconsistent",
                provider=provider,
                retry_after_s=PROVIDER_RETRY_AFTER_S,
                **extras,
            )
        return _Answer(result, result.attempts, result.elapsed_ms, getattr(result, "reference", ""))

    async def _record_failed_call(
        self, asked: _Asked, outcome: str, attempts: int, elapsed_ms: int
    ) -> None:
        """A call that decided nothing, recorded (durable) on its own."""
        call = self._call_record(asked, outcome, attempts, elapsed_ms)
        await self._commit(calls=(call,))

    # --- who acts ------------------------------------------------------------------

    def _customer_for(self, caller: Caller, customer_id: str, proof: Proof, what: str) -> Customer:
        """The customer `caller` may act for (see the module doc), else refused."""
        customer = self.core.customer_state().customers.get(customer_id)
        if caller.kind in (COUNTER_KIND, INTERNAL_KIND):
            if customer is None:
                raise refused(Code.CUSTOMER_NOT_FOUND, customer_id)
            return customer
        if caller.kind not in CUSTOMER_KINDS:
            raise kind_refused(caller, SERVING_KINDS, what)
        if customer is not None and customer.kyc.get("channel") == caller.name:
            return customer
        if (
            customer is not None
            and proof.session
            and self.auth.session_customer(caller, proof.session) == customer_id
        ):
            return customer
        raise refused(Code.READ_NOT_IN_SCOPE, customer_id)

    def _customer(self, customer_id: str) -> Customer:
        customer = self.core.customer_state().customers.get(customer_id)
        if customer is None:  # registered customers are never deleted
            raise refused(Code.CUSTOMER_NOT_FOUND, customer_id)
        return customer

    # --- the customer's workflow ----------------------------------------------------

    def initial_kyc(
        self, caller: Caller, resident_id: identity.ResidentId, today: datetime.date, now_ns: int
    ) -> dict[str, Any]:
        """The workflow of a customer registering at `caller` (`Customers.register`):
        id_structure run, teller_confirmation passed at a counter naming its teller."""
        return new_workflow(
            self.policy, caller, resident_id, today, now_ns, self.core.settings.minimum_age
        )

    def _workflow(self, customer: Customer, caller: Caller, now_ns: int) -> dict[str, Any]:
        """A copy of the customer's workflow to change; a customer recorded without one
        (the earlier built-in verdict) starts one under `caller`'s policy."""
        if "steps" in customer.kyc:
            return _copy(customer.kyc)  # type: ignore[no-any-return]
        parsed = identity.parse_resident_id(customer.id_number)
        assert not isinstance(parsed, str), parsed  # it was registered with it
        today = datetime.datetime.fromtimestamp(now_ns / NS_PER_S, self.core.rules.timezone)
        return self.initial_kyc(caller, parsed, today.date(), now_ns)

    async def _commit_customer(
        self, customer: Customer, kyc: dict[str, Any], calls: list[dict[str, Any]]
    ) -> Customer:
        """The workflow `kyc` (settled) and the calls that moved it, in one durable commit."""
        settle_kyc(kyc, self.core.now_ns())
        changed = dataclasses.replace(customer, kyc=kyc)
        state = self.core.customer_state()
        await self._commit([customer_record(changed)], calls=tuple(calls))
        if kyc["status"] != customer.kyc.get("status"):
            logger.info(
                orjson.dumps(
                    {
                        "event": "verification_status",
                        "customer_id": customer.customer_id,
                        "status": kyc["status"],
                        "reasons": kyc["reasons"],
                    }
                ).decode()
            )
        return state.customers[customer.customer_id]

    async def _open_step(
        self, customer: Customer, caller: Caller, step: str, now_ns: int
    ) -> dict[str, Any]:
        """The workflow (a copy) with `step` open to an attempt, else refused: closed
        (VERIFICATION_CLOSED), window passed (VERIFICATION_EXPIRED, recorded), not
        required or passed (VERIFICATION_STEP_NOT_REQUIRED), failed (ATTEMPTS_EXCEEDED)."""
        kyc = self._workflow(customer, caller, now_ns)
        self._check_open(kyc, step)
        if now_ns >= kyc["expires_ns"]:
            await self._commit_customer(customer, kyc, [])  # settles: pending steps expire
            raise refused(Code.VERIFICATION_EXPIRED, "the verification window passed", step=step)
        self._check_step(kyc, step)
        return kyc

    @staticmethod
    def _check_open(kyc: Mapping[str, Any], step: str) -> None:
        if kyc["status"] == PENDING:
            return
        steps = kyc["steps"]
        if any(steps[name]["state"] == EXPIRED for name in kyc["required"]):
            raise refused(Code.VERIFICATION_EXPIRED, "the verification window passed", step=step)
        raise refused(
            Code.VERIFICATION_CLOSED, f"the verification is {kyc['status']}", status=kyc["status"]
        )

    @staticmethod
    def _check_step(kyc: Mapping[str, Any], step: str) -> None:
        if step not in kyc["required"]:
            raise refused(
                Code.VERIFICATION_STEP_NOT_REQUIRED,
                f"{step} is not a step of this customer's verification",
                step=step,
            )
        state = kyc["steps"][step]["state"]
        if state == PASSED:
            raise refused(Code.VERIFICATION_STEP_NOT_REQUIRED, f"{step} passed", step=step)
        if state == FAILED:
            raise refused(Code.VERIFICATION_ATTEMPTS_EXCEEDED, f"{step} failed", step=step)

    @staticmethod
    def _identity_ready(kyc: Mapping[str, Any]) -> bool:
        """identity_database is pending and may run: no liveness required, or passed."""
        required = kyc["required"]
        if "identity_database" not in required:
            return False
        if kyc["steps"]["identity_database"]["state"] != PENDING:
            return False
        return "liveness" not in required or kyc["steps"]["liveness"]["state"] == PASSED

    async def start(self, customer: Customer, caller: Caller) -> None:
        """Run what can run at once after registration (`Customers.register`): the
        identity database where the workflow needs no liveness first (a counter). A
        provider that does not answer leaves the step pending (recorded): the
        registration stands, a teller runs it again (`confirm_in_person`)."""
        if customer.kyc.get("status") != PENDING or not self._identity_ready(customer.kyc):
            return
        async with self._serialized(customer.customer_id):
            customer = self._customer(customer.customer_id)
            kyc = self._workflow(customer, caller, self.core.now_ns())
            if kyc["status"] != PENDING or not self._identity_ready(kyc):
                return
            try:
                await self._identity(customer, kyc, caller)
            except Refused as refusal:
                code = refusal.refusal.code
                if code not in (Code.PROVIDER_UNAVAILABLE, Code.PROVIDER_ANSWER_INVALID):
                    raise
                logger.info(
                    orjson.dumps(
                        {
                            "event": "verification_step_deferred",
                            "customer_id": customer.customer_id,
                            "step": "identity_database",
                            "code": code.name.lower(),
                        }
                    ).decode()
                )

    async def _identity(self, customer: Customer, kyc: dict[str, Any], caller: Caller) -> Customer:
        """One attempt at identity_database (with the liveness face if liveness is
        required), committed with its call."""
        customer_id = customer.customer_id
        step = kyc["steps"]["identity_database"]
        photo_ref = kyc["face_ref"] if "liveness" in kyc["required"] else ""
        attempt = step["attempts"] + 1
        request_id = self._request_id(
            customer_id, "identity_database", attempt, customer.name, customer.id_number, photo_ref
        )
        summary = {
            "name": _mask_name(customer.name),
            "id_number": identity.mask_resident_id(customer.id_number),
            "photo": bool(photo_ref),
        }
        request = IdentityCheck(request_id, customer.name, customer.id_number, photo_ref)

        def sane(result: IdentityResult) -> bool:
            if not isinstance(result.match, bool):
                return False
            return not (photo_ref and result.match and not isinstance(result.photo_match, bool))

        asked = _Asked(
            customer_id, customer_id, "identity_database", "identity", request_id, summary
        )
        answer = await self._ask(
            asked,
            lambda providers: providers.identity(request),
            sane=sane,
        )
        outcome = record_identity(kyc, answer.result, photo_ref, self.core.now_ns(), _by(caller))
        call = self._answered(asked, outcome, answer)
        return await self._commit_customer(customer, kyc, [call])

    async def submit_id_document(self, command: SubmitIdDocument) -> VerificationRead:
        """The id_ocr step: an image of the ID card, or the app's OCR reference; passes
        when the document reads the registered name and ID number."""
        caller = command.caller
        customer = self._customer_for(
            caller, command.customer_id, _proof(command), "Submitting an ID document"
        )
        image, reference = command.image, command.ocr_reference
        if bool(image) == bool(reference):
            raise refused(
                Code.INVALID_FIELD,
                "send an image of the ID card or an OCR reference (one of them)",
                pointer="/image_base64" if not image else "/ocr_reference",
            )
        media_type = check_image(image, command.media_type) if image else ""
        async with self._serialized(customer.customer_id):
            customer = self._customer(customer.customer_id)
            now_ns = self.core.now_ns()
            kyc = await self._open_step(customer, caller, "id_ocr", now_ns)
            step = kyc["steps"]["id_ocr"]
            customer_id = customer.customer_id
            attempt = step["attempts"] + 1
            request: OcrRequest | OcrLookup
            if image:
                request_id = self._request_id(customer_id, "id_ocr", attempt, image, media_type)
                request = OcrRequest(request_id, image, media_type)
                summary: dict[str, Any] = {"media_type": media_type, "image_bytes": len(image)}
            else:
                request_id = self._request_id(customer_id, "id_ocr", attempt, "ref", reference)
                request = OcrLookup(request_id, reference)
                summary = {"ocr_reference": reference[:64]}

            def sane(result: OcrResult) -> bool:
                if not isinstance(result.readable, bool):
                    return False
                return not result.readable or bool(result.name and result.id_number)

            asked = _Asked(customer_id, customer_id, "id_ocr", "ocr", request_id, summary)
            answer = await self._ask(
                asked,
                lambda providers: providers.ocr(request),
                sane=sane,
            )
            outcome = record_ocr(
                step, answer.result, customer.name, customer.id_number, self.core.now_ns(),
                _by(caller),
            )  # fmt: skip
            call = self._answered(asked, outcome, answer)
            customer = await self._commit_customer(customer, kyc, [call])
        return self.view(customer)

    async def submit_liveness(self, command: SubmitLiveness) -> VerificationRead:
        """The liveness step (the SDK's token); once it passes, identity_database runs
        with the face it saw. With liveness passed and identity_database still pending
        (its provider did not answer), a new submission runs identity_database again."""
        caller = command.caller
        customer = self._customer_for(
            caller, command.customer_id, _proof(command), "A liveness check"
        )
        if not command.token:
            raise refused(Code.INVALID_FIELD, "the liveness token is empty", pointer="/token")
        async with self._serialized(customer.customer_id):
            customer = self._customer(customer.customer_id)
            now_ns = self.core.now_ns()
            kyc = self._workflow(customer, caller, now_ns)
            if (
                kyc["status"] == PENDING
                and now_ns < kyc["expires_ns"]
                and "liveness" in kyc["required"]
                and kyc["steps"]["liveness"]["state"] == PASSED
                and self._identity_ready(kyc)
            ):
                customer = await self._identity(customer, kyc, caller)
                return self.view(customer)
            kyc = await self._open_step(customer, caller, "liveness", now_ns)
            customer = await self._liveness(customer, kyc, caller, command.token)
            if self._identity_ready(customer.kyc) and customer.kyc["status"] == PENDING:
                kyc = _copy(customer.kyc)
                customer = await self._identity(customer, kyc, caller)
        return self.view(customer)

    async def _liveness(
        self, customer: Customer, kyc: dict[str, Any], caller: Caller, token: str
    ) -> Customer:
        customer_id = customer.customer_id
        step = kyc["steps"]["liveness"]
        request_id = self._request_id(customer_id, "liveness", step["attempts"] + 1, token)
        request = LivenessCheck(request_id, token)
        summary = {"token_chars": len(token)}

        def sane(result: LivenessResult) -> bool:
            return isinstance(result.live, bool) and (not result.live or bool(result.face_ref))

        asked = _Asked(customer_id, customer_id, "liveness", "liveness", request_id, summary)
        answer = await self._ask(
            asked,
            lambda providers: providers.liveness(request),
            sane=sane,
        )
        outcome = record_liveness(kyc, answer.result, self.core.now_ns(), _by(caller))
        call = self._answered(asked, outcome, answer)
        return await self._commit_customer(customer, kyc, [call])

    async def confirm_in_person(self, command: ConfirmInPerson) -> VerificationRead:
        """A teller saw the customer and their ID card: teller_confirmation passes, and a
        pending identity_database runs. A pending remote workflow becomes the counter's
        (the face-to-face check replaces OCR and liveness)."""
        caller = command.caller
        if caller.kind != COUNTER_KIND:
            raise kind_refused(caller, COUNTER_ONLY, "Confirming a customer in person")
        if not caller.actor_id:
            raise refused(
                Code.ACTOR_REQUIRED,
                "name the teller who saw the customer in the signed request",
                roles=("teller", "supervisor"),
            )
        customer = self._customer_for(
            caller, command.customer_id, NO_PROOF, "Confirming a customer in person"
        )
        async with self._serialized(customer.customer_id):
            customer = self._customer(customer.customer_id)
            now_ns = self.core.now_ns()
            kyc = self._workflow(customer, caller, now_ns)
            self._check_open(kyc, "teller_confirmation")
            if now_ns >= kyc["expires_ns"]:
                await self._commit_customer(customer, kyc, [])
                raise refused(
                    Code.VERIFICATION_EXPIRED,
                    "the verification window passed",
                    step="teller_confirmation",
                )
            if "teller_confirmation" not in kyc["required"]:
                required = list(self.policy.customer_steps(caller))
                for name in required:
                    kyc["steps"].setdefault(name, new_step(name))
                kyc["required"] = required
            teller = kyc["steps"]["teller_confirmation"]
            ran = False
            if teller["state"] == PENDING:
                pass_step(teller, now_ns, _by(caller))
                customer = await self._commit_customer(customer, kyc, [])
                kyc = _copy(customer.kyc)
                ran = True
            if kyc["status"] == PENDING and self._identity_ready(kyc):
                customer = await self._identity(customer, kyc, caller)
                ran = True
            if not ran:
                raise refused(
                    Code.VERIFICATION_STEP_NOT_REQUIRED,
                    "teller_confirmation passed; nothing else is pending at a counter",
                    step="teller_confirmation",
                )
        return self.view(customer)

    def read(self, caller: Caller, customer_id: str, proof: Proof = NO_PROOF) -> VerificationRead:
        """The customer's verification and its provider calls (who may: see the module doc)."""
        customer = self._customer_for(caller, customer_id, proof, "Reading a verification")
        return self.view(customer)

    def view(self, customer: Customer) -> VerificationRead:
        kyc = self.kyc_view(customer.kyc)
        history = [
            {
                "at": rfc3339(call["at_ns"]),
                "step": call["step"],
                "provider": call["provider"],
                "request_id": call["request_id"],
                "outcome": call["outcome"],
                "attempts": call["attempts"],
                "elapsed_ms": call["elapsed_ms"],
            }
            for call in self._calls.get(customer.customer_id, ())
        ]
        return VerificationRead(
            customer.customer_id,
            kyc["status"],
            kyc["required"],
            kyc["steps"],
            kyc["reasons"],
            history,
        )

    def kyc_view(self, kyc: Mapping[str, Any]) -> dict[str, Any]:
        """A workflow as channels see it (the customer read model's `kyc`): status,
        required, steps (in order, window passed shown as such), reasons."""
        if "steps" not in kyc:  # the earlier built-in verdict: not a verification
            return {"status": PENDING, "required": [], "steps": [], "reasons": []}
        shown = _copy(kyc)
        settle_kyc(shown, self.core.now_ns())
        return {
            "status": shown["status"],
            "required": list(shown["required"]),
            "steps": [
                _step_view(name, shown["steps"][name], shown["expires_ns"])
                for name in shown["required"]
            ],
            "reasons": list(shown["reasons"]),
        }

    # --- card bindings -------------------------------------------------------------

    def check_card_holder(
        self, caller: Caller, customer: Customer, card: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The card as it would be bound, or one generic refusal whatever failed (which
        of the name, ID number or mobile differed, or that an own card is another
        customer's or not an open Class I card, goes to the server log only: an
        applicant who guesses must not learn which part was right)."""
        number = card["card_number"]
        problem = identity.card_number_problem(number)
        if problem is not None:
            raise refused(Code.BOUND_CARD_INVALID, problem, pointer="/bound_card/card_number")
        mismatches = []
        if card["holder_name"] != customer.name:
            mismatches.append("holder_name")
        if card["holder_id_number"] != customer.id_number:
            mismatches.append("holder_id_number")
        if card["reserved_mobile"] != customer.mobile:
            mismatches.append("reserved_mobile")
        if mismatches:
            raise _binding_refused(caller, customer, number, mismatches)
        own = int(number) if number.startswith(BIN_OF_CLASS[1]) else 0
        if not own:
            return {"kind": "external", "card_number": number, "card_type": card["card_type"]}
        meta = self.core.customer_state().accounts.get(own)
        if meta is None or meta.account_class != 1 or meta.closed:
            raise _binding_refused(caller, customer, number, ["no_open_class_i_card"])
        if meta.customer_id != customer.customer_id:
            raise _binding_refused(caller, customer, number, ["other_customer"])
        return {
            "kind": "internal",
            "card_number": number,
            "account_id": str(own),
            "card_type": "class_i_debit",
        }

    async def start_binding(self, command: StartCardBinding) -> CardBindingRead:
        """Bind a card: the holder checks, issuer_card, then the first SMS code when the
        policy requires one. A pending binding of the same card resumes (the issuer is
        asked again after a provider failure); a verified or rejected one still in its
        window is answered as it stands."""
        caller = command.caller
        customer = self._customer_for(
            caller, command.customer_id, _proof(command), "Binding a card"
        )
        card = _card_fields(command.card)
        if not kyc_verified(customer.kyc):
            status = self.kyc_view(customer.kyc)["status"]
            raise refused(Code.KYC_NOT_VERIFIED, f"KYC status is {status}")
        bound = self.check_card_holder(caller, customer, card)
        async with self._serialized(customer.customer_id):
            customer = self._customer(customer.customer_id)
            now_ns = self.core.now_ns()
            binding = self._resumable(customer.customer_id, bound, now_ns)
            if binding is None:
                required = list(self.policy.binding_steps(caller))
                binding = Binding(
                    "b" + secrets.token_hex(10),
                    customer.customer_id,
                    bound,
                    required,
                    {name: new_step(name) for name in required},
                    caller.name,
                    now_ns,
                    now_ns + BINDING_WINDOW_S * NS_PER_S,
                )
                await self._commit(bindings=(binding,))
                logger.info(
                    orjson.dumps(
                        {
                            "event": "card_binding_started",
                            "binding_id": binding.binding_id,
                            "customer_id": customer.customer_id,
                            "channel": caller.name,
                            "card": identity.mask_card(bound["card_number"]),
                        }
                    ).decode()
                )
            elif binding.status(now_ns) != PENDING:
                return self.binding_view(binding)
            binding = await self._advance_binding(customer, binding, caller)
        return self.binding_view(binding)

    def _resumable(self, customer_id: str, bound: Mapping[str, Any], now_ns: int) -> Binding | None:
        """The customer's newest binding of this card that is not expired or used."""
        for binding_id in reversed(self._bindings_of.get(customer_id, ())):
            binding = self._bindings[binding_id]
            if binding.bound["card_number"] != bound["card_number"]:
                continue
            if binding.bound["card_type"] != bound["card_type"]:
                continue
            if binding.status(now_ns) in (PENDING, VERIFIED, REJECTED):
                return binding
            return None
        return None

    async def _advance_binding(
        self, customer: Customer, binding: Binding, caller: Caller
    ) -> Binding:
        """Run issuer_card if pending, then send the first SMS code if one is due."""
        binding = Binding.from_record(_copy(binding.to_record()))
        steps = binding.steps
        extras = {"binding_id": binding.binding_id}
        if "issuer_card" in steps and steps["issuer_card"]["state"] == PENDING:
            binding = await self._issuer(customer, binding, caller, extras)
            steps = binding.steps
        if (
            "sms_code" in steps
            and steps["sms_code"]["state"] == PENDING
            and ("issuer_card" not in steps or steps["issuer_card"]["state"] == PASSED)
            and binding.status(self.core.now_ns()) == PENDING
            and self._live_challenge(binding) is None
        ):
            binding, _ = await self._send_code(customer, binding, caller, extras)
        return binding

    async def _issuer(
        self, customer: Customer, binding: Binding, caller: Caller, extras: Mapping[str, Any]
    ) -> Binding:
        step = binding.steps["issuer_card"]
        by = _by(caller)
        bound = binding.bound
        calls: list[dict[str, Any]] = []
        if bound["kind"] == "internal":  # checked on our own records (check_card_holder)
            step.update(state=PASSED, attempts=step["attempts"] + 1)
            step.update(updated_ns=self.core.now_ns(), by=BANK_RECORDS)
        else:
            request_id = self._request_id(
                binding.binding_id, "issuer_card", step["attempts"] + 1, bound["card_number"]
            )
            request = CardCheck(
                request_id,
                bound["card_number"],
                bound["card_type"],
                customer.name,
                customer.id_number,
                customer.mobile,
            )
            summary = {
                "card": identity.mask_card(bound["card_number"]),
                "card_type": bound["card_type"],
                "holder_name": _mask_name(customer.name),
                "holder_id_number": identity.mask_resident_id(customer.id_number),
                "reserved_mobile": identity.mask_mobile(customer.mobile),
            }
            asked = _Asked(
                binding.binding_id,
                customer.customer_id,
                "issuer_card",
                "issuer",
                request_id,
                summary,
            )
            answer = await self._ask(
                asked,
                lambda providers: providers.card(request),
                sane=lambda result: isinstance(result.match, bool),
                extras=extras,
            )
            result: CardResult | None = answer.result
            outcome = record_card(step, result, self.core.now_ns(), by)
            if result is not None and not result.match:
                # Which element differed goes to the log and the audit, not to the channel.
                logger.info(
                    orjson.dumps(
                        {
                            "event": "card_issuer_mismatch",
                            "binding_id": binding.binding_id,
                            "customer_id": customer.customer_id,
                            "card": identity.mask_card(bound["card_number"]),
                            "mismatched": list(result.mismatched),
                        }
                    ).decode()
                )
            calls.append(self._answered(asked, outcome, answer))
        await self._commit(bindings=(binding,), calls=tuple(calls))
        return binding

    def read_binding(
        self, caller: Caller, customer_id: str, binding_id: str, proof: Proof = NO_PROOF
    ) -> CardBindingRead:
        self._customer_for(caller, customer_id, proof, "Reading a card binding")
        binding = self._bindings.get(binding_id)
        if binding is None or binding.customer_id != customer_id:
            raise refused(Code.BINDING_NOT_FOUND, binding_id)
        return self.binding_view(binding)

    def binding_view(self, binding: Binding) -> CardBindingRead:
        now_ns = self.core.now_ns()
        steps = _copy(binding.steps)
        if not binding.account_id:
            settle(binding.required, steps, binding.expires_ns, now_ns)
        live = self._live_challenge(binding)
        return CardBindingRead(
            binding.binding_id,
            binding.customer_id,
            identity.mask_card(binding.bound["card_number"]),
            binding.bound["card_type"],
            binding.status(now_ns),
            list(binding.required),
            [_step_view(name, steps[name], binding.expires_ns) for name in binding.required],
            {"challenge_id": live.challenge_id, "expires_at": rfc3339(live.expires_ns)}
            if live is not None
            else None,
        )

    def _live_challenge(self, binding: Binding) -> Challenge | None:
        challenge = self._challenges.get(binding.challenge_id) if binding.challenge_id else None
        if challenge is None or challenge.status(self.core.now_ns()) != "sent":
            return None
        return challenge

    # --- the opening's side (core/services/accounts.py) ----------------------------

    def binding_for_opening(self, customer: Customer, bound: Mapping[str, Any]) -> Binding:
        """The customer's verified, unused binding of this card (the oldest), else
        BINDING_NOT_VERIFIED (`binding_id`: the newest binding of the card, if any)."""
        now_ns = self.core.now_ns()
        newest = ""
        for binding_id in self._bindings_of.get(customer.customer_id, ()):
            binding = self._bindings[binding_id]
            if binding.bound["card_number"] != bound["card_number"]:
                continue
            newest = binding_id
            if (
                binding.bound["card_type"] == bound["card_type"]
                and binding.status(now_ns) == VERIFIED
            ):
                return binding
        extras = {"binding_id": newest} if newest else {}
        raise refused(
            Code.BINDING_NOT_VERIFIED,
            "bind the card first (issuer check and SMS code): POST .../card-bindings",
            **extras,
        )

    def use_binding(self, binding: Binding, account_id: int) -> tuple[dict[str, Any], Change]:
        """Mark `binding` used by `account_id` now, in memory (a second opening cannot
        take it); the account's `bound` record and the change to commit with it.
        `release_binding` undoes it."""
        binding.account_id = account_id
        bound = dict(binding.bound)
        bound["binding_id"] = binding.binding_id
        bound["checks"] = [
            name for name in binding.required if binding.steps[name]["state"] == PASSED
        ]
        return bound, binding.change()

    def release_binding(self, binding: Binding) -> Change:
        """The binding free again (its opening was refused); the change to write."""
        binding.account_id = 0
        return binding.change()

    # --- SMS one-time codes --------------------------------------------------------

    def _code_digest(self, challenge_id: str, code: str) -> str:
        message = f"{challenge_id}\0{code}".encode()
        return hmac.new(self._code_key, message, hashlib.sha256).hexdigest()

    async def _send_code(
        self, customer: Customer, binding: Binding, caller: Caller, extras: Mapping[str, Any]
    ) -> tuple[Binding, Challenge]:
        """Draw a code, send it to the customer's registered mobile, and commit the
        challenge (its HMAC only), the previous challenge voided, the binding's sms_code
        attempt and the call, in one commit. The code is forgotten on return."""
        operation, subject = "bind_card", binding.binding_id
        now_ns = self.core.now_ns()
        latest_id = self._latest.get((operation, subject))
        latest = self._challenges.get(latest_id) if latest_id else None
        if latest is not None:
            wait_ns = latest.created_ns + SMS_RESEND_INTERVAL_S * NS_PER_S - now_ns
            if wait_ns > 0:
                raise refused(
                    Code.SMS_CODE_TOO_FREQUENT,
                    f"one code a minute: wait {-(-wait_ns // NS_PER_S)} s",
                    retry_after_s=-(-wait_ns // NS_PER_S),
                )
        step = binding.steps["sms_code"]
        if step["attempts"] >= step["attempts_max"]:
            raise refused(
                Code.SMS_CODE_ATTEMPTS_EXCEEDED,
                f"{SMS_CHALLENGES_MAX} codes were sent for this binding: start a new one",
            )
        challenge_id = "s" + secrets.token_hex(10)
        code = "".join(secrets.choice("0123456789") for _ in range(SMS_CODE_DIGITS))
        # The request id is the challenge's: a retry of this send is this code's, never
        # another code's (a new code is a new challenge, a new request).
        request_id = f"{challenge_id}-sms"
        card = binding.bound["card_number"]
        request = SmsSend(
            request_id,
            customer.mobile,
            f"[Tally] {code} is your code to bind the card ending {card[-4:]}. It expires in"
            f" {SMS_CODE_TTL_S // 60} minutes. Never share it with anyone.",
        )
        summary = {
            "mobile": identity.mask_mobile(customer.mobile),
            "operation": operation,
            "subject": subject,
            "challenge_id": challenge_id,
        }
        asked = _Asked(subject, customer.customer_id, "sms_code", "sms", request_id, summary)
        answer = await self._ask(
            asked,
            lambda providers: providers.sms(request),
            sane=lambda result: isinstance(result.accepted, bool),
            extras=extras,
        )
        result: SmsResult | None = answer.result
        if result is None or not result.accepted:
            await self._record_failed_call(
                asked, "not_accepted", answer.attempts, answer.elapsed_ms
            )
            raise refused(
                Code.PROVIDER_UNAVAILABLE,
                "the SMS gateway did not accept the message",
                provider="sms",
                retry_after_s=PROVIDER_RETRY_AFTER_S,
                **extras,
            )
        now_ns = self.core.now_ns()
        challenge = Challenge(
            challenge_id,
            customer.customer_id,
            operation,
            subject,
            self._code_digest(challenge_id, code),
            now_ns,
            now_ns + SMS_CODE_TTL_S * NS_PER_S,
        )
        del code
        changed: tuple[Challenge, ...] = (challenge,)
        if latest is not None and latest.state == "sent":
            changed = (dataclasses.replace(latest, state="voided"), challenge)
        step["attempts"] += 1
        step["updated_ns"] = now_ns
        step["by"] = _by(caller)
        binding.challenge_id = challenge_id
        call = self._call_record(
            asked, "sent", answer.attempts, answer.elapsed_ms, result.message_id
        )
        await self._commit(bindings=(binding,), challenges=changed, calls=(call,))
        logger.info(
            orjson.dumps(
                {
                    "event": "sms_code_sent",
                    "challenge_id": challenge_id,
                    "customer_id": customer.customer_id,
                    "operation": operation,
                    "subject": subject,
                    "mobile": identity.mask_mobile(customer.mobile),
                }
            ).decode()
        )
        return binding, challenge

    def _subject_binding(self, customer_id: str, operation: str, subject: str) -> Binding:
        if operation not in SMS_OPERATIONS:
            raise refused(
                Code.INVALID_FIELD,
                f"an SMS code authorizes one of {', '.join(SMS_OPERATIONS)}",
                pointer="/operation",
                allowed=SMS_OPERATIONS,
            )
        binding = self._bindings.get(subject)
        if binding is None or binding.customer_id != customer_id:
            raise refused(Code.BINDING_NOT_FOUND, subject)
        return binding

    async def request_sms_code(self, command: RequestSmsCode) -> SmsChallengeRead:
        """Send a (new) code for `operation` on `subject`: the previous live challenge of
        the pair is voided; at most one a minute (SMS_CODE_TOO_FREQUENT)."""
        caller = command.caller
        customer = self._customer_for(
            caller, command.customer_id, _proof(command), "An SMS one-time code"
        )
        self._subject_binding(customer.customer_id, command.operation, command.subject)
        async with self._serialized(customer.customer_id):
            customer = self._customer(customer.customer_id)
            binding = self._subject_binding(
                customer.customer_id, command.operation, command.subject
            )
            now_ns = self.core.now_ns()
            self._check_binding_open(binding, now_ns)
            steps = binding.steps
            if "sms_code" not in steps or steps["sms_code"]["state"] != PENDING:
                raise refused(
                    Code.VERIFICATION_STEP_NOT_REQUIRED,
                    "this binding needs no SMS code"
                    if "sms_code" not in steps
                    else "sms_code passed",
                    step="sms_code",
                )
            if "issuer_card" in steps and steps["issuer_card"]["state"] != PASSED:
                raise refused(
                    Code.VERIFICATION_STEP_NOT_REQUIRED,
                    "the issuer has not confirmed the card yet: POST the binding again",
                    step="sms_code",
                )
            copy = Binding.from_record(_copy(binding.to_record()))
            _, challenge = await self._send_code(
                customer, copy, caller, {"binding_id": binding.binding_id}
            )
        return self.challenge_view(challenge)

    @staticmethod
    def _check_binding_open(binding: Binding, now_ns: int) -> None:
        status = binding.status(now_ns)
        if status == EXPIRED:
            raise refused(Code.VERIFICATION_EXPIRED, "the binding's window passed", step="sms_code")
        if status != PENDING:
            raise refused(Code.VERIFICATION_CLOSED, f"the binding is {status}", status=status)

    async def confirm_sms_code(self, command: ConfirmSmsCode) -> SmsChallengeRead:
        """Check a code against its challenge (single use, 5 wrong codes, 5 minutes, bound
        to its operation and subject); the right one passes the binding's sms_code."""
        caller = command.caller
        customer = self._customer_for(
            caller, command.customer_id, _proof(command), "Confirming an SMS one-time code"
        )
        async with self._serialized(customer.customer_id):
            now_ns = self.core.now_ns()
            challenge = self._challenges.get(command.challenge_id)
            if challenge is None or challenge.customer_id != customer.customer_id:
                raise refused(Code.SMS_CHALLENGE_NOT_FOUND, command.challenge_id)
            if (command.operation, command.subject) != (challenge.operation, challenge.subject):
                raise refused(
                    Code.SMS_CODE_OTHER_OPERATION,
                    "this code authorizes another operation",
                )
            status = challenge.status(now_ns)
            if status == "confirmed":
                raise refused(Code.SMS_CODE_USED, "this code was used")
            if status == "exhausted":
                raise refused(Code.SMS_CODE_ATTEMPTS_EXCEEDED, "too many wrong codes")
            if status == "voided":
                raise refused(Code.SMS_CODE_EXPIRED, "a newer code replaced this one")
            if status == EXPIRED:
                raise refused(Code.SMS_CODE_EXPIRED, "the code expired")
            if not _CODE_PATTERN.fullmatch(command.code):
                raise refused(Code.INVALID_FIELD, "a code is 6 digits", pointer="/code")
            binding = self._bindings[challenge.subject]
            self._check_binding_open(binding, now_ns)
            binding = Binding.from_record(_copy(binding.to_record()))
            changed = dataclasses.replace(challenge)
            by = _by(caller)
            right = hmac.compare_digest(
                self._code_digest(challenge.challenge_id, command.code), challenge.digest
            )
            step = binding.steps["sms_code"]
            if right:
                changed.state = "confirmed"
                step.update(state=PASSED, updated_ns=now_ns, by=by)
            else:
                changed.wrong += 1
                if changed.wrong >= SMS_WRONG_CODES_MAX:
                    changed.state = "exhausted"
                    step["reasons"] = [*step["reasons"], "code_attempts_exceeded"]
                    step.update(updated_ns=now_ns, by=by)
                    if step["attempts"] >= step["attempts_max"]:
                        step["state"] = FAILED
            await self._commit(bindings=(binding,), challenges=(changed,))
            logger.info(
                orjson.dumps(
                    {
                        "event": "sms_code_confirmed" if right else "sms_code_wrong",
                        "challenge_id": changed.challenge_id,
                        "customer_id": customer.customer_id,
                        "wrong": changed.wrong,
                    }
                ).decode()
            )
            if not right:
                if changed.state == "exhausted":
                    raise refused(Code.SMS_CODE_ATTEMPTS_EXCEEDED, "too many wrong codes")
                raise refused(
                    Code.SMS_CODE_WRONG,
                    "not the code sent",
                    attempts_remaining=SMS_WRONG_CODES_MAX - changed.wrong,
                )
        return self.challenge_view(changed)

    def challenge_view(self, challenge: Challenge) -> SmsChallengeRead:
        status = challenge.status(self.core.now_ns())
        return SmsChallengeRead(
            challenge.challenge_id,
            challenge.operation,
            challenge.subject,
            status,
            rfc3339(challenge.expires_ns),
            SMS_WRONG_CODES_MAX - challenge.wrong if status == "sent" else 0,
        )


def _put(table: dict[Any, Any], key: Any, value: Any) -> None:
    """`table[key] = value`, or the key removed if `value` is None."""
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


def _proof(command: Any) -> Proof:
    proof = getattr(command, "proof", NO_PROOF)
    assert isinstance(proof, Proof)
    return proof


def _card_fields(card: Mapping[str, Any]) -> dict[str, str]:
    """The five elements of a card (`accounts.BOUND_CARD_FIELDS`), each a non-empty string."""
    fields: dict[str, str] = {}
    for name in BOUND_CARD_FIELDS:
        value = card.get(name)
        if not isinstance(value, str) or not value:
            raise refused(Code.INVALID_FIELD, "missing or not a string", pointer=f"/{name}")
        fields[name] = value
    if fields["card_type"] not in CARD_TYPES:
        raise refused(Code.INVALID_FIELD, f"one of {', '.join(CARD_TYPES)}", pointer="/card_type")
    return fields


def _binding_refused(caller: Caller, customer: Customer, number: str, failed: list[str]) -> Refused:
    logger.info(
        orjson.dumps(
            {
                "event": "card_binding_refused",
                "customer_id": customer.customer_id,
                "channel": caller.name,
                "card": identity.mask_card(number),
                "failed": failed,
            }
        ).decode()
    )
    return refused(Code.BOUND_CARD_NOT_SAME_NAME, "the card does not match the applicant")
