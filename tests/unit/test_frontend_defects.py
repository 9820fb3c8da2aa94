"""A front-end's answer to a defect: 500 problem+json, logged, as the core's own app
answers one (never the HTTP server's bare 500), and the front-end keeps serving.

A defect cannot be provoked through valid code paths (that is what makes it one), so
these tests make one function of the front-end or of its link client fail; everything
else (the ASGI app, the link client with no core to reach) is the real one."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import orjson
import pytest

from channels.frontend import FrontEnd
from core.data import DEFAULT_RULES_PATH
from core.link.client import LinkClient, LinkFailed, connect_unix
from limits.rules import load_rules


def front_end() -> FrontEnd:
    link = LinkClient(connect_unix("/nonexistent/link.sock"), b"s" * 32, "test")
    return FrontEnd(link, load_rules(DEFAULT_RULES_PATH))


def request(app: FrontEnd, path: str = "/v1/customers") -> tuple[int, dict[bytes, bytes], Any]:
    """One GET through the ASGI app: (status, headers, decoded body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"x")],
        "client": ("127.0.0.1", 1),
    }
    anyio.run(app, scope, receive, send)
    start, body = sent
    return start["status"], dict(start["headers"]), orjson.loads(body["body"])


def test_a_defect_in_the_front_end_is_a_logged_problem_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = front_end()

    def broken(*_: Any) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(app, "_signed", broken)
    with caplog.at_level(logging.ERROR, logger="tally.frontend"):
        status, headers, problem = request(app)
    assert status == 500
    assert headers[b"content-type"] == b"application/problem+json"
    assert problem["type"].endswith("/internal-error")
    assert "front-end" in problem["detail"]
    assert "frontend_unhandled_exception" in caplog.text and "a defect" in caplog.text


def test_a_defect_in_the_core_is_a_problem_500_not_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The core answered FAILED (a defect, logged there): 500 internal-error, as the core
    answers it in-process; not 503 with Retry-After (retrying would meet the defect)."""
    app = front_end()

    async def failed(*_: Any) -> None:
        raise LinkFailed("the core failed running the command (see its log)")

    monkeypatch.setattr(app.link, "http", failed)
    status, headers, problem = request(app)
    assert status == 500 and b"retry-after" not in headers
    assert problem["type"].endswith("/internal-error")
    assert "logged by the core" in problem["detail"]


def test_without_the_core_it_is_still_503_with_retry_after() -> None:
    """The control: no defect, the core out of reach: 503 and Retry-After."""
    status, headers, problem = request(front_end())
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert problem["type"].endswith("/unavailable")
