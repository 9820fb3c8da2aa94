"""The channel registry's verification keys: `verification` and `card_binding`.

Each channel may declare the real-name verification steps it requires of a customer it
registers and of a card binding it starts; the registry refuses an unknown step, a step
listed twice and a list without one of the kind's floor steps, every problem at once,
and gives the services the declared lists as a `VerificationPolicy`.
"""

from __future__ import annotations

from typing import Any

import pytest

from channels.registry import RegistryError, load_registry, parse_registry
from core.services import policy
from core.services.commands import Caller
from limits.rules import load_rules

RULES = load_rules("examples/limits.toml")
SECRET = [{"key_id": "k", "secret": "x" * 40}]


def document(**channels: dict[str, Any]) -> dict[str, Any]:
    ids = {"wechat": (1, "wechat"), "app": (2, "app"), "counter": (3, "counter")}
    ids |= {"atm": (4, "atm"), "bank": (6, "internal")}
    return {
        "channels": {
            name: {"id": ids[name][0], "kind": ids[name][1], "secrets": SECRET, **keys}
            for name, keys in channels.items()
        }
    }


def test_example_registry_declares_the_floor_and_the_policy_follows() -> None:
    """The example registry loads; the channels that declare lists and those that do not
    require exactly their kind's floor, in the policy's order."""
    registry = load_registry("examples/channels.toml", RULES)
    wechat = registry.channels["wechat"]
    assert wechat.verification == policy.REMOTE
    assert wechat.card_binding == policy.BINDING_STEPS
    assert registry.channels["counter"].verification is None
    verification = registry.verification_policy()
    for name, entry in registry.channels.items():
        caller = Caller(name, entry.kind, entry.ledger_id)
        assert verification.customer_steps(caller) == policy.VERIFICATION_OF_KIND[entry.kind]
        assert verification.binding_steps(caller) == policy.BINDING_OF_KIND[entry.kind]


def test_a_channel_may_require_more_than_its_kind() -> None:
    """A counter that also wants the ID card read by OCR, and an app whose customers also
    see a teller: the policy requires the added steps besides the floor."""
    registry = parse_registry(
        document(
            counter={"verification": ["id_structure", "identity_database", "id_ocr",
                                      "teller_confirmation"],
                     "card_binding": ["issuer_card", "sms_code"]},
            app={"verification": [*policy.REMOTE, "teller_confirmation"]},
        ),
        "test.toml",
        RULES,
    )  # fmt: skip
    verification = registry.verification_policy()
    counter, app = Caller("counter", "counter", 3), Caller("app", "app", 2)
    assert verification.customer_steps(counter) == (
        "id_structure",
        "identity_database",
        "id_ocr",
        "teller_confirmation",
    )
    assert verification.binding_steps(counter) == ("issuer_card", "sms_code")
    assert verification.customer_steps(app) == (*policy.REMOTE, "teller_confirmation")
    assert verification.binding_steps(app) == policy.BINDING_STEPS
    assert dict(verification.customer) == {
        3: registry.channels["counter"].verification,
        2: registry.channels["app"].verification,
    }


def test_every_problem_of_the_verification_keys_is_listed() -> None:
    """An unknown step, a binding step among the customer's, a step twice, a dropped floor
    step, a list that is not one: all refused in one error, each naming its key."""
    with pytest.raises(RegistryError) as error:
        parse_registry(
            document(
                wechat={"verification": ["id_structure", "identity_database", "id_ocr"]},
                app={"verification": [*policy.REMOTE, "retina_scan"],
                     "card_binding": ["issuer_card"]},
                counter={"verification": ["id_structure", "identity_database",
                                          "teller_confirmation", "sms_code", "id_structure"]},
                atm={"verification": "liveness", "card_binding": [1]},
            ),
            "test.toml",
            RULES,
        )  # fmt: skip
    problems = error.value.problems
    expected = [
        ("channels.wechat.verification", "missing liveness"),
        ("channels.app.verification", "unknown step 'retina_scan'"),
        ("channels.app.card_binding", "missing sms_code"),
        ("channels.counter.verification", "unknown step 'sms_code'"),
        ("channels.counter.verification", "step 'id_structure' is listed twice"),
        ("channels.atm.verification", "expected a list of step names"),
        ("channels.atm.card_binding", "expected a list of step names"),
    ]
    for key, fragment in expected:
        assert any(f"`{key}`" in problem and fragment in problem for problem in problems), (
            key,
            fragment,
            problems,
        )
    assert len(problems) == len(expected), problems


def test_floor_steps_are_named_when_missing() -> None:
    """The refusal says which floor the kind has and which steps are missing."""
    with pytest.raises(RegistryError) as error:
        parse_registry(
            document(counter={"verification": ["id_structure"], "card_binding": []}),
            "test.toml",
            RULES,
        )
    text = str(error.value)
    assert "counter channels require id_structure, identity_database, teller_confirmation" in text
    assert "missing identity_database, teller_confirmation" in text
    assert "counter channels require issuer_card: missing issuer_card" in text
