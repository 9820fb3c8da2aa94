"""New customers during the simulated day: real-name verification before an account.

The failover simulator's population banked here before the day (sim/population.py);
the people who open an account during the day are applicants, and each one goes
through what `tally serve` makes a new customer go through
(core/services/verification.py, docs/verification.md) before a Class II account exists:

- the steps the applicant's channel requires, from the bank's verification policy
  (`core.services.policy.DEFAULT_VERIFICATION_POLICY`, the floors the shipped channel
  registry declares): a remote channel (wechat, app) runs id_structure, id_ocr,
  liveness and identity_database with the liveness face; a counter runs id_structure,
  teller_confirmation and identity_database; then a card binding, issuer_card (the
  five elements) and, remotely, sms_code;
- every provider answer comes from the provider simulator's world, in process
  (`core.providers.sim.Simulator.answer`: the decisions `tally providers serve` makes
  over HTTP, from the run's seed), parsed as strictly as over HTTP;
- each answer moves its step through the service's own functions
  (`new_workflow`, `record_ocr`, `record_liveness`, `record_identity`, `record_card`,
  `settle`), so the status is the one the bank would reach.

Who applies (a hash of the seed and the applicant's index, like every per-user fact):
the channel (a counter for `face_to_face_fraction`, else wechat or the app), an ID
number, a mobile, and the fraud the population's rates put in: a stolen identity (the
identity database holds another face: `photo_mismatch_rate`, drawn by the provider
world from the ID number), a spoofed liveness check, somebody else's card, a card whose
reserved mobile differs (the issuer's world), a code the SMS gateway loses (resent) and
an applicant who never enters the code. A teller confirms a face only when it is the
ID card's (the stolen identity is caught at the counter, the step never passes).

Only an applicant verified with a verified binding gets an account (the opening that
`Accounts.open` makes: Class II, bound to the external card). Every applicant then
tries a first top-up and payment on the account they asked for; the rejected ones'
are refused by the ledger (no such account). `check` reads each data center's
ledger, independently of these decisions' bookkeeping beyond the verified set: no
account of an applicant who is not verified exists, and none is debited. The planted
bug `kyc-gate-skipped` (sim/bugs.py) opens every applicant's account; the check must
fail it.

What this leaves out (noted): providers failing or timing out (a step stays pending
and is retried; the wire faults are the HTTP load test's), re-verification, and the
minutes the steps take (an applicant is decided at the tick they apply).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cext import simgen
from core.providers.population import card_for, face_of, id_card_image, liveness_token
from core.providers.sim import SimOptions, Simulator
from core.providers.types import (
    CardCheck,
    CardResult,
    IdentityCheck,
    IdentityResult,
    LivenessCheck,
    LivenessResult,
    OcrRequest,
    OcrResult,
    ProviderError,
    SmsResult,
    SmsSend,
)
from core.services import identity
from core.services.commands import Caller
from core.services.lifecycle import Settings
from core.services.policy import DEFAULT_VERIFICATION_POLICY, VerificationPolicy
from core.services.records import EPOCH_DATE, NS_PER_S
from core.services.verification import (
    BINDING_WINDOW_S,
    PASSED,
    PENDING,
    VERIFIED,
    new_step,
    new_workflow,
    record_card,
    record_identity,
    record_liveness,
    record_ocr,
    settle,
    settle_kyc,
)
from ledger.kernel import KernelLedger
from ledger.records import account_view, pack_transfer
from ledger.types import TransferCode, join_id

from .population import Population, clearing_id

# The channels applicants come through (core/data/channels.toml: name, kind, ledger id).
CALLERS = {
    "wechat": Caller("wechat", "wechat", 1),
    "app": Caller("app", "app", 2),
    "counter": Caller("counter", "counter", 3, actor_id="t-sim", actor_role="teller"),
}
COUNTER_UNCONFIRMED = Caller("counter", "counter", 3)  # the teller did not confirm
CHANNEL_IDS = {name: caller.ledger_id for name, caller in CALLERS.items()}
# An applicant's outcome, by index (`Onboarding.outcomes`).
NOT_APPLIED = 0
OPENED = 1  # verified, card bound: the account was opened
REJECTED_CUSTOMER = 2  # the customer's verification was rejected
REJECTED_BINDING = 3  # verified, the card binding rejected
OUTCOME_NAMES = {
    OPENED: "opened",
    REJECTED_CUSTOMER: "rejected",
    REJECTED_BINDING: "binding_rejected",
}
TRANSFER_ID_HI = 0x51A40000  # the applicants' first transfers (sim ids: see cext/simgen.pyx)
TOPUP_MINOR = 50_000  # 500 CNY from the bound card
PAYMENT_MINOR = 5_000  # then 50 CNY to a merchant
AGE_MIN, AGE_MAX = 18, 70
REGIONS = ("110105", "310104", "440305", "330106", "510107", "420106")
FRAUDS = ("spoof", "foreign_card", "abandons_sms")
# `tally serve`'s default (Settings.minimum_age).
_AGE = next(f.default for f in dataclasses.fields(Settings) if f.name == "minimum_age")
assert isinstance(_AGE, int)
MINIMUM_AGE: int = _AGE


@dataclass(frozen=True)
class OnboardingMix:
    """How many people apply, and the fraud among them (shares of the applicants)."""

    openings_per_user_day: float | None = None  # None: the population's (0.05% a day)
    photo_mismatch_rate: float = 0.01  # stolen identities: the database photo is another face
    spoof_rate: float = 0.005  # a photo held up to the liveness camera
    foreign_card_rate: float = 0.01  # somebody else's card bound
    card_mismatch_rate: float = 0.005  # the card's reserved mobile is not the applicant's
    sms_loss_rate: float = 0.01  # the gateway loses a code (the applicant asks again)
    abandon_rate: float = 0.02  # the code arrives and is never entered

    def to_json(self) -> dict[str, float | None]:
        return dict(self.__dict__)


MIX_KEYS = tuple(OnboardingMix.__dataclass_fields__)


def parse_onboarding_table(data: Any) -> tuple[OnboardingMix | None, list[str]]:
    """A scenario's `[onboarding]` table (each key of OnboardingMix, a number in 0..1;
    `openings_per_user_day` in 0..2); returns (mix, problems as "onboarding.KEY: ...")."""
    if not isinstance(data, dict):
        return None, ["onboarding: expected a table"]
    problems = [
        f"onboarding.{key}: unknown key (known: {', '.join(MIX_KEYS)})"
        for key in data
        if key not in MIX_KEYS
    ]
    values: dict[str, float] = {}
    for key in MIX_KEYS:
        if key not in data:
            continue
        value, high = data[key], 2.0 if key == "openings_per_user_day" else 1.0
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
            problems.append(f"onboarding.{key}: {value!r}: expected a number in 0..{high:g}")
            continue
        values[key] = float(value)
    return (None if problems else OnboardingMix(**values)), problems


@dataclass(frozen=True)
class Applicant:
    index: int
    channel: str  # a CALLERS name
    name: str
    id_number: str
    mobile: str
    face: str  # the applicant's own face (face_of their ID, unless they stole it)
    fraud: str  # "" or one of FRAUDS (a stolen identity is the world's, not the applicant's)


def _unit(seed: int, index: int, salt: str) -> float:
    digest = hashlib.sha256(f"tally-onboarding\x00{seed}\x00{index}\x00{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def applicant(
    population: Population, mix: OnboardingMix, index: int, today: datetime.date
) -> Applicant:
    """Applicant `index` of the run (a pure function of the seed and the index)."""
    seed = population.seed
    channel = applicant_channel(population, index)
    age_days = int((AGE_MIN + (AGE_MAX - AGE_MIN) * _unit(seed, index, "age")) * 365.25)
    birth = today - datetime.timedelta(days=age_days)
    region = REGIONS[int(_unit(seed, index, "region") * len(REGIONS))]
    sequence = f"{int(_unit(seed, index, 'sequence') * 1000):03d}"
    first_17 = f"{region}{birth:%Y%m%d}{sequence}"
    id_number = first_17 + identity.resident_id_check_character(first_17)
    mobile = f"13{int(_unit(seed, index, 'mobile') * 10**9):09d}"
    draw, fraud = _unit(seed, index, "fraud"), ""
    for kind, rate in zip(
        FRAUDS, (mix.spoof_rate, mix.foreign_card_rate, mix.abandon_rate), strict=True
    ):
        if draw < rate:
            fraud = kind
            break
        draw -= rate
    return Applicant(
        index, channel, f"Applicant {index}", id_number, mobile, face_of(id_number), fraud
    )


class Onboarding:
    """The day's applicants through verification; what was decided for each (`outcomes`)."""

    def __init__(
        self,
        population: Population,
        mix: OnboardingMix,
        *,
        policy: VerificationPolicy = DEFAULT_VERIFICATION_POLICY,
        minimum_age: int = MINIMUM_AGE,
        skip_gate: bool = False,
    ) -> None:
        self.population = population
        self.mix = mix
        self.policy = policy
        self.minimum_age = minimum_age
        self.skip_gate = skip_gate  # the planted bug kyc-gate-skipped
        self.world = Simulator(
            SimOptions(
                seed=population.seed,
                photo_mismatch_rate=mix.photo_mismatch_rate,
                card_mismatch_rate=mix.card_mismatch_rate,
                sms_loss_rate=mix.sms_loss_rate,
            )
        )
        self.outcomes = bytearray()  # by applicant index
        self.reasons: Counter[str] = Counter()  # "step: reason" of the rejected
        self.channels: Counter[str] = Counter()
        self.provider_calls: Counter[str] = Counter()
        self.first_transfers: Counter[str] = Counter()

    # --- one applicant ------------------------------------------------------------------

    def _ask(self, request: Any) -> Any:
        self.provider_calls[type(request).__name__] += 1
        return self.world.answer(request)

    def decide(self, person: Applicant, today: datetime.date, now_ns: int) -> tuple[int, list[str]]:
        """The applicant's workflow and binding, decided: (OPENED (verified and bound),
        REJECTED_CUSTOMER or REJECTED_BINDING, the reasons of the rejected one)."""
        caller = CALLERS[person.channel]
        if caller.kind == "counter" and self.world.database_photo(person.id_number) != person.face:
            caller = COUNTER_UNCONFIRMED  # the teller compares the face with the ID card's
        parsed = identity.parse_resident_id(person.id_number)
        assert not isinstance(parsed, str), (person.id_number, parsed)
        kyc = new_workflow(self.policy, caller, parsed, today, now_ns, self.minimum_age)
        by = caller.name
        steps = kyc["steps"]
        rid = f"sim-{self.population.seed}-{person.index}"
        for _ in range(sum(step["attempts_max"] for step in steps.values()) + 1):
            if kyc["status"] != PENDING:
                break
            if "id_ocr" in steps and steps["id_ocr"]["state"] == PENDING:
                image = id_card_image(person.name, person.id_number)
                n = steps["id_ocr"]["attempts"] + 1
                ocr: OcrResult = self._ask(OcrRequest(f"{rid}-ocr-{n}", image, "image/png"))
                record_ocr(steps["id_ocr"], ocr, person.name, person.id_number, now_ns, by)
            elif "liveness" in steps and steps["liveness"]["state"] == PENDING:
                token = liveness_token(person.face, live=person.fraud != "spoof")
                n = steps["liveness"]["attempts"] + 1
                live: LivenessResult = self._ask(LivenessCheck(f"{rid}-liveness-{n}", token))
                record_liveness(kyc, live, now_ns, by)
            elif steps["identity_database"]["state"] == PENDING and (
                "liveness" not in steps or steps["liveness"]["state"] == PASSED
            ):
                photo = kyc["face_ref"] if "liveness" in steps else ""
                n = steps["identity_database"]["attempts"] + 1
                check = IdentityCheck(f"{rid}-identity-{n}", person.name, person.id_number, photo)
                found: IdentityResult = self._ask(check)
                record_identity(kyc, found, photo, now_ns, by)
            else:
                break  # nothing the applicant can do (a teller who will not confirm)
            settle_kyc(kyc, now_ns)
        settle_kyc(kyc, kyc["expires_ns"] if kyc["status"] == PENDING else now_ns)
        if kyc["status"] != VERIFIED:
            return REJECTED_CUSTOMER, list(kyc["reasons"])
        return self._bind(person, caller, rid, now_ns)

    def _bind(
        self, person: Applicant, caller: Caller, rid: str, now_ns: int
    ) -> tuple[int, list[str]]:
        required = list(self.policy.binding_steps(caller))
        steps = {name: new_step(name) for name in required}
        expires_ns = now_ns + BINDING_WINDOW_S * NS_PER_S
        if person.fraud == "foreign_card":
            card = card_for(person.id_number + "/someone-else", 0)
        else:
            card = card_for(person.id_number, person.index % 4)
        issuer = steps.get("issuer_card")
        while issuer is not None and issuer["state"] == PENDING:
            n = issuer["attempts"] + 1
            check = CardCheck(
                f"{rid}-issuer-{n}",
                card,
                "class_i_debit",
                person.name,
                person.id_number,
                person.mobile,
            )
            answer: CardResult = self._ask(check)
            record_card(issuer, answer, now_ns, caller.name)
        sms = steps.get("sms_code")
        if sms is not None and (issuer is None or issuer["state"] == PASSED):
            # As the service: each code sent is an attempt (at most attempts_max), the
            # right code passes the step; a lost code is sent again, one never entered
            # leaves the step pending until the binding's window passes.
            while sms["state"] == PENDING and sms["attempts"] < sms["attempts_max"]:
                n = sms["attempts"] + 1
                text = f"[Tally] {100000 + n} is your code to bind the card ending {card[-4:]}."
                sent: SmsResult = self._ask(SmsSend(f"{rid}-sms-{n}", person.mobile, text))
                sms["attempts"] += 1
                inbox = self.world.inboxes.get(person.mobile) or ()
                if not (sent.accepted and any(m["message_id"] == sent.message_id for m in inbox)):
                    continue  # lost: the applicant asks for another code
                if person.fraud == "abandons_sms":
                    break
                sms.update(state=PASSED, updated_ns=now_ns, by=caller.name)
        status, reasons = settle(required, steps, expires_ns, now_ns)
        if status == PENDING:
            status, reasons = settle(required, steps, expires_ns, expires_ns)
        if status != VERIFIED:
            return REJECTED_BINDING, [f"binding {reason}" for reason in reasons]
        return OPENED, []

    # --- a tick's applicants -----------------------------------------------------------

    def apply(self, first: int, count: int, day: int, now_ns: int) -> list[int]:
        """Applicants first..first+count-1 decided; returns the indexes whose account opens."""
        today = EPOCH_DATE + datetime.timedelta(days=day)
        opened = []
        for index in range(first, first + count):
            person = applicant(self.population, self.mix, index, today)
            self.channels[person.channel] += 1
            try:
                outcome, reasons = self.decide(person, today, now_ns)
            except ProviderError as error:  # the world refused a request: a defect here
                raise AssertionError(f"applicant {index}: {error}") from error
            if len(self.outcomes) <= index:
                self.outcomes.extend(bytes(index + 1 - len(self.outcomes)))
            self.outcomes[index] = outcome
            self.reasons.update(reasons)
            if outcome == OPENED or self.skip_gate:
                opened.append(index)
        return opened

    def first_transfers_payload(self, first: int, count: int) -> bytes:
        """Each applicant's first top-up from the bound card and first payment, on the
        account they applied for (the rejected ones have none: the ledger refuses)."""
        population = self.population
        parts = []
        for index in range(first, first + count):
            account = simgen.account_id(population.seed, simgen.TAG_OPENING, index)
            merchant = simgen.account_id(
                population.seed, simgen.TAG_MERCHANT, index % population.merchants
            )
            channel = CHANNEL_IDS[applicant_channel(population, index)]
            parts.append(
                pack_transfer(
                    id=join_id(2 * index + 1, TRANSFER_ID_HI), debit_account_id=clearing_id(),
                    credit_account_id=account, amount=TOPUP_MINOR,
                    code=TransferCode.TOPUP_BOUND, channel=channel,
                )
                + pack_transfer(
                    id=join_id(2 * index + 2, TRANSFER_ID_HI), debit_account_id=account,
                    credit_account_id=merchant, amount=PAYMENT_MINOR,
                    code=TransferCode.PAYMENT, channel=channel,
                )
            )  # fmt: skip
        return b"".join(parts)

    def count_results(self, results: Any) -> None:
        for index, result in enumerate(results):
            what = "topup" if index % 2 == 0 else "payment"
            self.first_transfers[f"{what}_{'posted' if result == 0 else 'refused'}"] += 1

    # --- the report and the check ------------------------------------------------------

    def report(self) -> dict[str, Any]:
        by_outcome = Counter(self.outcomes)
        applicants = len(self.outcomes) - by_outcome[NOT_APPLIED]
        return {
            "mix": self.mix.to_json(),
            "applicants": applicants,
            "by_channel": dict(sorted(self.channels.items())),
            **{name: by_outcome[code] for code, name in OUTCOME_NAMES.items()},
            "reasons": dict(sorted(self.reasons.items())),
            "provider_calls": dict(sorted(self.provider_calls.items())),
            "first_transfers": dict(sorted(self.first_transfers.items())),
        }

    def check(self, ledger: KernelLedger) -> dict[str, int]:
        """What one data center's ledger holds of the applicants' accounts: opened for a
        verified applicant, opened for one who is not (must be 0), and debited while
        the holder is not verified (must be 0)."""
        counts = {"accounts_verified": 0, "accounts_unverified": 0, "unverified_debited": 0}
        for index, outcome in enumerate(self.outcomes):
            if outcome == NOT_APPLIED:
                continue
            account_id = simgen.account_id(self.population.seed, simgen.TAG_OPENING, index)
            record = ledger.lookup_account(account_id)
            if record is None:
                continue
            if outcome == OPENED:
                counts["accounts_verified"] += 1
                continue
            counts["accounts_unverified"] += 1
            if account_view(record).debits_posted:
                counts["unverified_debited"] += 1
        return counts


def applicant_channel(population: Population, index: int) -> str:
    """The channel applicant `index` applies through (as `applicant` draws it)."""
    if _unit(population.seed, index, "counter") < population.face_to_face_fraction:
        return "counter"
    return "wechat" if _unit(population.seed, index, "channel") < 0.6 else "app"
