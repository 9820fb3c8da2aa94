"""Property-based fuzzing of the live server against its own /openapi.json (schemathesis).

Every operation gets schema-valid requests (positive mode) and schema-breaking
ones (negative mode), each signed like a real channel's so they reach the
handlers, not just the signature check. Every response is checked: no 5xx,
a status the document lists, the documented content type and headers, a
body that matches the documented schema, and every schema-breaking request
rejected with a 4xx. At least 1,000 requests in all.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from channels.client import Signer
from tests.http_helpers import TallyServer, cash_deposit, channel_secret, open_class_i, register

EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 25}
REQUESTS_MIN = 1_000


class SignAuth(requests.auth.AuthBase):
    """Signs the prepared request exactly as sent (path, query, body, Idempotency-Key)."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = urlsplit(request.path_url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        key = request.headers.get("Idempotency-Key")
        signed = self.signer.headers(
            str(request.method),
            parts.path,
            body,
            query=parts.query,
            idempotency_key=key if isinstance(key, str) else None,
        )
        request.headers["Authorization"] = signed["Authorization"]
        return request


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    # Negative cases the signer cannot sign as sent get 401s; without a generous limit on
    # failed authentications the fuzzer's address would soon get nothing but 429.
    running = TallyServer(data, extra=["--auth-failures-burst", "1000000"]).start()
    yield running
    running.stop()


class Fuzzer:
    """Sends generated cases signed, validates each response, and keeps the tally."""

    def __init__(self, server: TallyServer, schema: Any) -> None:
        key_id, secret = channel_secret("bank")
        self.server = server
        self.schema = schema
        self.signed = requests.Session()
        self.signed.auth = SignAuth(Signer("bank", key_id, secret.encode()))
        self.unsigned = requests.Session()  # for cases whose negated part is Authorization
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []

    def run(
        self, operation: Any, mode: GenerationMode, examples: int, path: dict[str, str]
    ) -> None:
        checks: list[Any] = [
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ]
        if mode is GenerationMode.NEGATIVE:
            checks.append(negative_data_rejection)
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=path or None)

        @given(case=strategy)
        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        def one(case: Any) -> None:
            # A case without its Authorization header had it removed on purpose (negative
            # mode): send it unsigned, so the server's 401 is what is being checked.
            carries = any(name.lower() == "authorization" for name in case.headers or {})
            negated = self.schema.is_security_param_negated(case) or not carries
            session = self.unsigned if negated else self.signed
            response = case.call(base_url=self.server.url, session=session)
            self.sent += 1
            self.statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=checks)
            except Exception as error:  # collect, report all at the end
                self.failures.append(
                    f"{operation.label} [{mode.value}] {response.status_code}: {str(error)[:600]}"
                )

        try:
            one()
        except hypothesis.errors.Unsatisfiable:
            # An operation with no parameters and no body has no schema-violating request.
            assert mode is GenerationMode.NEGATIVE, operation.label


def test_fuzz_against_openapi(server: TallyServer) -> None:
    """>= 1,000 generated, signed requests: zero 5xx, zero responses outside the document."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    # A schema-breaking request sent unsigned with a body over the pre-authentication cap
    # (4 KiB) is refused 413 before it is read: a rejection, which schemathesis' default
    # list for negative data lacks.
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    fuzzer = Fuzzer(server, schema)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25
    with server.client("counter") as counter:
        customer = register(counter)
        class_i = open_class_i(counter, customer)
        cash_deposit(counter, class_i, 1_000_000)
    # Real ids for path parameters, so generated bodies also reach existing accounts.
    known = {"account_id": class_i, "customer_id": customer["customer_id"]}
    started = time.monotonic()
    for operation in operations:
        for mode, examples in EXAMPLES_PER_OPERATION.items():
            fuzzer.run(operation, mode, examples, {})
        names = {parameter.name for parameter in operation.path_parameters} & set(known)
        if names:
            fuzzer.run(operation, GenerationMode.POSITIVE, 20, {n: known[n] for n in names})
    elapsed = time.monotonic() - started
    failures, sent, statuses = fuzzer.failures, fuzzer.sent, fuzzer.statuses
    assert not failures, "\n\n".join(failures[:10]) + f"\n({len(failures)} failures)"
    assert sent >= REQUESTS_MIN, f"only {sent} requests in {elapsed:.1f} s"
    print(f"schemathesis: {sent} requests in {elapsed:.1f} s, 0 failures, {dict(statuses)}")
    assert sum(count for status, count in statuses.items() if status < 300) >= 50
