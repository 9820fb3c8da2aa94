"""The simulator's wire, spoken raw (httpx): bad requests get a precise problem, never a
500; the test-only routes refuse bad input too; a port file tells where it listens."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from core.providers.population import SIM_TOKEN, id_card_image
from tests.providers.providers_helpers import resident_id

AUTH = {"Authorization": f"Bearer {SIM_TOKEN}"}


def _post(url: str, path: str, body: Any = None, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else httpx.Request("POST", url, json=body).content
    return httpx.post(
        url + path, content=content, headers={**AUTH, "Content-Type": "application/json"}
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/identity/v1/verify", b"not json", 400, "not JSON"),
        ("/identity/v1/verify", b"[1]", 400, "JSON object"),
        ("/identity/v1/verify", {"name": 5, "id_number": "1"}, 400, "`name`"),
        ("/identity/v1/verify", {"name": "a", "id_number": "1", "photo_ref": 7}, 400, "photo_ref"),
        ("/ocr/v1/id-card", {"image_base64": "@@@", "media_type": "image/png"}, 400, "base64"),
        ("/ocr/v1/id-card", {"image_base64": "AAAA", "media_type": "image/gif"}, 415, "media"),
        ("/liveness/v1/verify", {"token": "lv1.x.live.y"}, 422, "liveness token"),
        ("/issuer/v1/verify-card", {"card_number": "12ab"}, 400, "card_number"),
        ("/sms/v1/messages", {"mobile": "13900000000", "text": ""}, 400, "`text`"),
        ("/sms/v1/messages", {"mobile": "13900000000", "text": "x" * 501}, 400, "`text`"),
    ],
)
def test_bad_requests_get_a_precise_problem(
    sim_url: str, path: str, body: Any, status: int, detail: str
) -> None:
    """Each malformed request: its 4xx, problem+json, a detail naming the field."""
    response = _post(sim_url, path, raw=body if isinstance(body, bytes) else None, body=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


def test_routes_methods_and_sizes(sim_url: str) -> None:
    """Unknown path 404, wrong method 405, an image body over the cap 413."""
    assert httpx.get(f"{sim_url}/nowhere").status_code == 404
    assert httpx.get(f"{sim_url}/identity/v1/verify", headers=AUTH).status_code == 405
    assert httpx.post(f"{sim_url}/ocr/v1/results/x", headers=AUTH).status_code == 405
    huge = base64.b64encode(id_card_image("a", resident_id()) + b"\x00" * (9 << 20)).decode()
    response = _post(sim_url, "/ocr/v1/id-card", {"image_base64": huge, "media_type": "image/png"})
    assert response.status_code == 413, response.text


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"provider": "bank", "mode": "error"}, "`provider`"),
        ({"provider": "sms", "mode": "explode"}, "`mode`"),
        ({"provider": "sms", "mode": "error", "count": 0}, "`count`"),
        ({"provider": "sms", "mode": "error", "count": True}, "`count`"),
        ({"provider": "sms", "mode": "error", "match": 5}, "`match`"),
    ],
)
def test_bad_faults_are_refused(sim_url: str, body: dict[str, Any], detail: str) -> None:
    """/sim/faults arms nothing on a bad request."""
    before = httpx.get(f"{sim_url}/sim/stats").json()["faults_armed"]
    response = httpx.post(f"{sim_url}/sim/faults", json=body)
    assert response.status_code == 400 and detail in response.json()["detail"]
    assert httpx.get(f"{sim_url}/sim/stats").json()["faults_armed"] == before


def test_replay_is_marked_and_byte_identical(sim_url: str) -> None:
    """The second answer to an Idempotency-Key is the first one's bytes, marked replayed."""
    body = {"name": "林二", "id_number": resident_id()}
    headers = {**AUTH, "Idempotency-Key": "wire-replay-" + body["id_number"]}
    first = httpx.post(f"{sim_url}/identity/v1/verify", json=body, headers=headers)
    second = httpx.post(f"{sim_url}/identity/v1/verify", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
