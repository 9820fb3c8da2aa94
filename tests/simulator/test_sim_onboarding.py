"""The day's applicants in the failover simulator (sim/onboarding.py): verified before any account.

`onboarding-fraud` runs a campaign of new customers with fraud in it at the default test
scale (tests/simulator/sim_runs.py); the planted bug `kyc-gate-skipped` (every applicant
gets an account) is in test_sim_planted_bugs.py. The last test drives the real
verification service (a Bank, HttpProviders, a provider simulator subprocess with the same
seed and fraud) through the same applicants and requires the same decision for each: the
simulator's applicants are decided as the bank decides them, not by a model of it.
"""

from __future__ import annotations

import copy
import datetime
from pathlib import Path

import anyio
import pytest

from cext import simgen
from core.providers import population as world
from core.providers.sim import running_simulator
from core.services.bank import Bank
from core.services.commands import (
    ConfirmSmsCode,
    RegisterCustomer,
    RequestSmsCode,
    StartCardBinding,
    SubmitIdDocument,
    SubmitLiveness,
)
from core.services.records import EPOCH_DATE
from core.services.refusals import Refused
from core.services.results import CardBindingRead
from ledger.records import account_view
from sim.model import SimError, load_scenario, parse_scenario
from sim.onboarding import (
    CALLERS,
    COUNTER_UNCONFIRMED,
    OPENED,
    REJECTED_BINDING,
    REJECTED_CUSTOMER,
    Applicant,
    Onboarding,
    OnboardingMix,
    applicant,
)
from sim.population import Population
from tests.provider_helpers import sms_messages
from tests.services.test_verification import Clock, running_bank
from tests.simulator.sim_runs import run

SCENARIO = "onboarding-fraud"
NS_PER_S = 1_000_000_000


def test_onboarding_fraud_opens_accounts_for_the_verified_only() -> None:
    """Every kind of fraud the scenario puts in is rejected with its step's reason; every
    verified applicant's account is on every DC and took its first payment; no DC holds
    an account of a rejected applicant, and their first transfers were refused."""
    report, sim = run(SCENARIO)
    section = report["onboarding"]
    applicants = section["applicants"]
    assert applicants == report["onboarding_applicants"] > 100
    assert applicants == section["opened"] + section["rejected"] + section["binding_rejected"]
    assert section["by_channel"].keys() == {"app", "counter", "wechat"}
    reasons = section["reasons"]
    for reason in (
        "identity_database: photo_mismatch",  # a stolen identity, remotely
        "liveness: spoof",
        "binding issuer_card: issuer_mismatch",  # somebody else's card, or reserved mobile
        "binding sms_code: expired",  # a code never entered
    ):
        assert reasons.get(reason, 0) > 0, (reason, reasons)
    rejected = section["rejected"] + section["binding_rejected"]
    assert rejected == report["onboarding_rejected"] > 10
    assert report["accounts_opened"] == section["opened"]
    assert section["first_transfers"] == {
        "payment_posted": section["opened"],
        "payment_refused": rejected,
        "topup_posted": section["opened"],
        "topup_refused": rejected,
    }
    for name, held in section["ledgers"].items():
        assert held == {
            "accounts_verified": section["opened"],
            "accounts_unverified": 0,
            "unverified_debited": 0,
        }, name
    assert report["onboarding_unverified_accounts"] == report["onboarding_unverified_debited"] == 0
    verdict = report["verdict"]
    assert verdict["invariants"]["only_verified_hold_accounts"] is True
    assert verdict["pass"] is True, verdict["failures"]
    # The check reads the ledger: an opened applicant's account holds the top-up less the
    # payment, on the final primary.
    onboarding = sim.onboarding
    assert onboarding is not None
    ledger = sim.dcs[sim.names[0]].ledger
    index = onboarding.outcomes.index(OPENED)
    record = ledger.lookup_account(
        simgen.account_id(sim.population.seed, simgen.TAG_OPENING, index)
    )
    assert record is not None
    view = account_view(record)
    assert (view.credits_posted, view.debits_posted) == (50_000, 5_000)


def test_every_scenario_runs_its_applicants_through_verification() -> None:
    """Not only the onboarding scenario: the population's own openings (0.05% of the users
    a day) go through verification in every generated run, and the invariant holds."""
    report, _ = run("steady")
    assert "onboarding" in report
    assert report["verdict"]["invariants"]["only_verified_hold_accounts"] is True
    assert report["onboarding"]["mix"] == OnboardingMix().to_json()


def test_onboarding_table_is_validated() -> None:
    """A bad [onboarding] table is refused naming the key, before anything runs."""
    scenario = load_scenario(SCENARIO)
    assert scenario.onboarding is not None and scenario.onboarding.spoof_rate == 0.02
    document = {
        "name": "x",
        "description": "x",
        "traffic": "normal",
        "hours": 0.1,
        "onboarding": {"spoof_rate": 1.5, "photo_rate": 0.1, "openings_per_user_day": True},
    }
    with pytest.raises(SimError) as caught:
        parse_scenario(copy.deepcopy(document), "test.toml")
    text = str(caught.value)
    assert "`onboarding.spoof_rate`: 1.5: expected a number in 0..1" in text
    assert "`onboarding.photo_rate`: unknown key" in text
    assert "`onboarding.openings_per_user_day`: True: expected a number in 0..2" in text


def test_applicants_are_a_function_of_the_seed() -> None:
    """The same seed draws the same applicants and decisions; another seed others."""
    today = datetime.date(2026, 11, 11)
    day = (today - EPOCH_DATE).days
    mix = OnboardingMix(spoof_rate=0.1, foreign_card_rate=0.1)
    first = Onboarding(Population(users=1000, seed=3), mix)
    second = Onboarding(Population(users=1000, seed=3), mix)
    other = Onboarding(Population(users=1000, seed=4), mix)
    assert first.apply(0, 200, day, 0) == second.apply(0, 200, day, 0)
    assert first.outcomes == second.outcomes and first.reasons == second.reasons
    other.apply(0, 200, day, 0)
    assert other.outcomes != first.outcomes
    assert applicant(first.population, mix, 5, today) == applicant(second.population, mix, 5, today)


# --- the simulator's decisions against the bank's ------------------------------------------

SEED = 3  # its first 40 applicants hold every rejection reason, the counter's too
# Fraud high enough that a few dozen applicants hold every kind. The SMS gateway loses
# nothing here: a lost code is drawn from the request id, which the bank draws at random.
MIX = OnboardingMix(
    photo_mismatch_rate=0.15,
    spoof_rate=0.12,
    foreign_card_rate=0.12,
    card_mismatch_rate=0.12,
    sms_loss_rate=0.0,
    abandon_rate=0.12,
)
APPLICANTS = 40
START_NS = 1_794_355_200_000_000_000  # 2026-11-11T00:00:00Z


def test_the_bank_decides_each_applicant_as_the_simulator_does(tmp_path: Path) -> None:
    """40 applicants (every fraud kind among them) through the real service, over HTTP to
    a provider simulator of the same seed and fraud: each ends opened (verified, card
    bound), rejected or binding rejected exactly as sim/onboarding.py decided, with the
    same reasons for the rejected customers."""
    population = Population(users=1000, seed=SEED)
    onboarding = Onboarding(population, MIX)
    today = datetime.datetime.fromtimestamp(START_NS / NS_PER_S, datetime.UTC).date()
    people = [applicant(population, MIX, index, today) for index in range(APPLICANTS)]
    expected = [onboarding.decide(person, today, START_NS) for person in people]
    assert {outcome for outcome, _ in expected} == {OPENED, REJECTED_CUSTOMER, REJECTED_BINDING}
    assert {person.fraud for person in people} >= {"spoof", "foreign_card", "abandons_sms"}
    reasons = {reason for _, why in expected for reason in why}
    assert reasons == {
        "binding issuer_card: issuer_mismatch",
        "binding sms_code: expired",
        "identity_database: photo_mismatch",
        "liveness: spoof",
        "teller_confirmation: expired",
    }, reasons
    options = {
        "photo_mismatch_rate": MIX.photo_mismatch_rate,
        "card_mismatch_rate": MIX.card_mismatch_rate,
    }
    with running_simulator(seed=SEED, **options) as url:
        got = anyio.run(_through_the_bank, tmp_path, url, people, onboarding)
    for person, want, have in zip(people, expected, got, strict=True):
        assert have[0] == want[0], (person, want, have)
        if want[0] == REJECTED_CUSTOMER:
            assert have[1] == want[1], (person, want, have)


async def _through_the_bank(
    directory: Path, url: str, people: list[Applicant], onboarding: Onboarding
) -> list[tuple[int, list[str]]]:
    clock = Clock()
    clock.now = START_NS
    async with running_bank(directory, clock, url) as bank:
        return [await _apply(bank, clock, url, person, onboarding) for person in people]


async def _apply(
    bank: Bank, clock: Clock, url: str, person: Applicant, onboarding: Onboarding
) -> tuple[int, list[str]]:
    """One applicant as a channel's app (or a teller) drives the bank: every step its
    policy requires, retried while the service leaves it pending."""
    caller = CALLERS[person.channel]
    if (
        caller.kind == "counter"
        and onboarding.world.database_photo(person.id_number) != person.face
    ):
        caller = COUNTER_UNCONFIRMED
    verification = bank.verification
    customer = await bank.customers.register(
        RegisterCustomer(caller, person.name, person.id_number, person.mobile)
    )
    cid = customer.customer_id
    read = verification.read(caller, cid)
    if caller.kind != "counter":
        image = world.id_card_image(person.name, person.id_number)
        read = await verification.submit_id_document(
            SubmitIdDocument(caller, cid, image=image, media_type="image/png")
        )
        token = world.liveness_token(person.face, live=person.fraud != "spoof")
        while read.status == "pending":
            try:
                read = await verification.submit_liveness(SubmitLiveness(caller, cid, token))
            except Refused:
                break  # no attempt left at a step: the status says why
    if read.status == "pending":
        clock.now += 24 * 3600 * NS_PER_S + 1  # the window passes (a teller never confirmed)
        read = verification.read(caller, cid)
    if read.status != "verified":
        return REJECTED_CUSTOMER, list(read.reasons)
    if person.fraud == "foreign_card":
        number = world.card_for(person.id_number + "/someone-else", 0)
    else:
        number = world.card_for(person.id_number, person.index % 4)
    card = {
        "card_number": number,
        "card_type": "class_i_debit",
        "holder_name": person.name,
        "holder_id_number": person.id_number,
        "reserved_mobile": person.mobile,
    }
    binding = await verification.start_binding(StartCardBinding(caller, cid, card))
    while binding.status == "pending" and _step(binding, "issuer_card") == "pending":
        binding = await verification.start_binding(StartCardBinding(caller, cid, card))
    if binding.status == "pending" and "sms_code" in binding.required:
        challenge = binding.sms_challenge
        if challenge is None:
            sent = await verification.request_sms_code(
                RequestSmsCode(caller, cid, "bind_card", binding.binding_id)
            )
            challenge = {"challenge_id": sent.challenge_id}
        if person.fraud != "abandons_sms":
            code = world.sms_code_in(sms_messages(person.mobile, url)[-1]["text"])
            assert code is not None
            await verification.confirm_sms_code(
                ConfirmSmsCode(
                    caller, cid, challenge["challenge_id"], "bind_card", binding.binding_id, code
                )
            )
        binding = verification.read_binding(caller, cid, binding.binding_id)
    if binding.status == "pending":
        clock.now += 31 * 60 * NS_PER_S  # the binding's window passes
        binding = verification.read_binding(caller, cid, binding.binding_id)
    if binding.status == "verified":
        return OPENED, []
    return REJECTED_BINDING, [binding.status]


def _step(binding: CardBindingRead, name: str) -> str:
    for step in binding.steps:
        if step["step"] == name:
            return str(step["state"])
    return ""
