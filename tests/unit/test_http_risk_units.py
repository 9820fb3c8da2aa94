"""Units of the HTTP adapter's risk and operator parts: the `device` object, the problems
of the risk stage and the approvals, operator credentials, the registry's version."""

from __future__ import annotations

import orjson
import pytest

from channels.http.admin import approval_id_param, operator_name, rfc3339_ns
from channels.http.handlers import held_reply, risk_context
from channels.http.problems import Problem, refusal_problem
from channels.http.routes import ROUTES, TRANSFER_NEW
from channels.http.schema import check_object, ip_address_ok
from channels.http.signing import Credentials
from channels.registry import RegistryError, parse_registry_text
from core.services.commands import NO_CONTEXT, RiskContext
from core.services.refusals import Code, Refusal
from core.services.results import Posted
from tests.http_helpers import CHANNELS_FILE

BODY = {"debit_account_id": "7", "credit_account_id": "8", "amount_minor": 1}


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("203.0.113.7", True),
        ("2001:db8::7", True),
        ("::ffff:192.0.2.1", True),
        ("300.1.1.1", False),
        ("fe80::1%eth0", False),  # a zone means nothing off the client's own link
        ("1.2.3", False),
        (" 1.2.3.4", False),
        ("", False),
    ],
)
def test_ip_syntax(text: str, ok: bool) -> None:
    assert ip_address_ok(text) is ok


def test_device_object_is_optional_and_strict() -> None:
    check_object(BODY, TRANSFER_NEW)
    check_object(BODY | {"device": {}}, TRANSFER_NEW)
    check_object(
        BODY | {"device": {"id": "ios-1", "ip": "192.0.2.1", "location": "39.9,116.4"}},
        TRANSFER_NEW,
    )
    for device, pointer in (
        ({"id": ""}, "/device/id"),
        ({"id": "has space"}, "/device/id"),
        ({"ip": 7}, "/device/ip"),
        ({"location": "x" * 17}, "/device/location"),
        ({"model": "x"}, "/device/model"),
        ("ios-1", "/device"),
    ):
        with pytest.raises(Problem) as raised:
            check_object(BODY | {"device": device}, TRANSFER_NEW)
        assert raised.value.extensions["errors"][0]["pointer"] == pointer


def test_risk_context_costs_nothing_without_a_device() -> None:
    assert risk_context(None) is NO_CONTEXT
    assert risk_context({}) is NO_CONTEXT
    assert risk_context({"id": "a", "ip": "192.0.2.1"}) == RiskContext("a", "192.0.2.1", "")


def test_held_posting_answers_202_with_its_hold() -> None:
    posted = Posted(
        bytes(range(16)), "transfer", 7, 8, 100, 1, 2, 0, 90_000, "app", 10**18, False,
        risk_hold="review", release_at_ns=2 * 10**18, decision_id="ab" * 16,
    )  # fmt: skip
    reply = held_reply(posted)
    assert reply.status == 202
    body = orjson.loads(reply.body)
    assert body["status"] == "review" and body["decision_id"] == "ab" * 16
    assert body["release_at"].startswith("2033-05-18T")


def test_risk_and_approval_problems() -> None:
    challenge = refusal_problem(
        Refusal(Code.RISK_CHALLENGE, "", extras={"decision_id": "d", "factors": ("sms",)})
    )
    assert (challenge.status, challenge.slug) == (403, "risk-challenge")
    assert challenge.body()["factors"] == ("sms",) and challenge.body()["decision_id"] == "d"
    invalid = refusal_problem(
        Refusal(Code.PARAMETER_INVALID, "2 problems", extras={"errors": [(3, "bad"), (0, "x")]})
    )
    assert invalid.status == 422
    assert invalid.body()["errors"] == [
        {"pointer": "/payload/text", "detail": "line 3: bad", "line": 3},
        {"pointer": "/payload/text", "detail": "x", "line": 0},
    ]
    stale = refusal_problem(
        Refusal(Code.APPROVAL_STALE, "", extras={"base_version": 1, "version": 2})
    )
    assert (stale.status, stale.slug, stale.body()["version"]) == (409, "approval-stale", 2)


def test_operator_credentials_and_parameters() -> None:
    assert operator_name(Credentials("op:risk1", "k", "1", "n", "s")) == "risk1"
    assert operator_name(Credentials("wechat", "k", "1", "n", "s")) == ""
    assert rfc3339_ns("1970-01-01T00:00:01Z", "/apply_at") == 1_000_000_000
    assert rfc3339_ns("1970-01-01T08:00:01.5+08:00", "/apply_at") == 1_500_000_000
    with pytest.raises(Problem):
        rfc3339_ns("1970-01-01T00:00:01", "/apply_at")  # no offset
    assert approval_id_param("A0123456789ab") == "A0123456789ab"
    with pytest.raises(Problem):
        approval_id_param("A0123456789AB")


def test_admin_routes_are_the_operator_routes() -> None:
    for route in ROUTES:
        assert route.admin is route.path.startswith("/v1/admin/"), route.path


def test_registry_version_and_text() -> None:
    text = CHANNELS_FILE.read_text()
    assert parse_registry_text(text, "x", None).version == 0
    registry = parse_registry_text("version = 4\n" + text, "x", None)
    assert registry.version == 4 and registry.text.startswith("version = 4")
    with pytest.raises(RegistryError) as raised:
        parse_registry_text("version = -1\n" + text, "x", None)
    assert raised.value.errors[0][0] == 0 and "version" in raised.value.errors[0][1]
