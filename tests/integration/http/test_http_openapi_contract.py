"""The HTTP contract does not drift: `/openapi.json` matches the committed baseline.

`tests/openapi-baseline.json` was written from the app before the middle office
moved out of the HTTP layer. The document the running app serves must list the
same paths, the same operations on each (parameters, bodies, responses) and the
same component schemas. A deliberate contract change updates the baseline in the
same commit, so the diff shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from channels.http.openapi import openapi_document

BASELINE = Path(__file__).resolve().parent / "openapi-baseline.json"


def served_document() -> dict[str, Any]:
    """The document as the app renders it (the exact bytes `/openapi.json` answers)."""
    return dict(orjson.loads(orjson.dumps(openapi_document())))


def test_openapi_paths_and_operations_match_the_baseline() -> None:
    """Every path and every operation object (method, parameters, request body, responses)
    equals the committed copy; a route added, removed or changed fails here."""
    baseline = orjson.loads(BASELINE.read_bytes())
    document = served_document()
    assert sorted(document["paths"]) == sorted(baseline["paths"])
    for path, operations in baseline["paths"].items():
        assert sorted(document["paths"][path]) == sorted(operations), path
        for method, operation in operations.items():
            assert document["paths"][path][method] == operation, (path, method)


def test_openapi_schemas_match_the_baseline() -> None:
    """The component schemas (bodies, answers, problems) equal the committed copy."""
    baseline = orjson.loads(BASELINE.read_bytes())
    document = served_document()
    assert document["components"] == baseline["components"]
    assert document["openapi"] == baseline["openapi"]


def test_baseline_is_not_empty() -> None:
    """The comparison above cannot pass vacuously: the baseline holds the routes."""
    baseline = orjson.loads(BASELINE.read_bytes())
    assert len(baseline["paths"]) >= 20
    assert "/v1/transfers" in baseline["paths"]
