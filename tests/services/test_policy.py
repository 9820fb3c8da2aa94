"""The channel policy is declared once (`core.services.policy`) and every consumer reads
that one declaration: the HTTP routes, the generic guard, the OpenAPI document; and the
services' typed read results match the documented answers."""

from __future__ import annotations

import pytest

from channels.http.openapi import openapi_document
from channels.http.routes import ROUTES
from core.services import policy
from core.services.commands import Caller
from core.services.refusals import Code, Refused

APP = Caller("app", "app", 1)
ATM = Caller("atm", "atm", 4)


def test_every_route_names_a_declared_operation_and_every_operation_has_a_route() -> None:
    """No HTTP route carries a policy of its own: each takes its operation's declaration,
    and no declared operation is left without a route."""
    assert {route.operation for route in ROUTES} == set(policy.OPERATIONS)
    for route in ROUTES:
        assert route.policy is policy.OPERATIONS[route.operation], route.operation


def test_admit_refuses_a_kind_the_operation_is_not_offered_at() -> None:
    """Cash is offered at counters and ATMs: an ATM is admitted, an app channel is refused
    with the declared kinds and wording; a transfer is offered at app channels."""
    cash = policy.OPERATIONS["cash_deposit"]
    policy.admit(ATM, cash)
    with pytest.raises(Refused) as caught:
        policy.admit(APP, cash)
    refusal = caught.value.refusal
    assert refusal.code == Code.CHANNEL_KIND_NOT_ALLOWED
    assert refusal.extras == {"what": "Cash", "kinds": ("counter", "atm")}
    policy.admit(APP, policy.OPERATIONS["transfer"])


def test_openapi_is_generated_from_the_declaration() -> None:
    """Each operation object states the declared policy: the channel kinds (and a 403)
    where they are restricted, the consent flag (with the token header and a 401), and a
    required Idempotency-Key exactly on the money operations."""
    document = openapi_document()
    for route in ROUTES:
        declared = policy.OPERATIONS[route.operation]
        operation = document["paths"][route.path][route.method.lower()]
        headers = {p["name"]: p["required"] for p in operation["parameters"] if p["in"] == "header"}
        assert operation.get("x-tally-channel-kinds") == (list(declared.kinds) or None)
        assert operation["x-tally-consent"] is declared.consent
        token_read = route.operation in (
            "read_account", "read_history", "read_transfer", "capture", "void", "read_interest"
        )  # fmt: skip
        assert ("Tally-Transaction-Token" in headers) is (declared.consent or token_read)
        assert headers.get("Idempotency-Key", False) is declared.money
        if declared.kinds:
            assert "403" in operation["responses"] and "only at" in operation["description"]
        if declared.consent:
            assert "401" in operation["responses"]


def test_typed_read_models_render_the_documented_json_fields() -> None:
    """The typed read results render (orjson, natively) to exactly the properties the
    OpenAPI schemas of the HTTP answers declare: no field renamed, lost or added."""
    import dataclasses

    from core.services.results import AccountRead, CustomerRead, TransferRead

    schemas = openapi_document()["components"]["schemas"]
    for name, result in (
        ("Customer", CustomerRead),
        ("Account", AccountRead),
        ("Transfer", TransferRead),
    ):
        fields = [field.name for field in dataclasses.fields(result)]
        assert set(fields) == set(schemas[name]["properties"]), name
