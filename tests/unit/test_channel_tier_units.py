"""The channel tier's small parts without a server: DSN redaction, the failed-authentication
bucket per address."""

from __future__ import annotations

import pytest

from channels.tier import AuthFailures
from core.dsn import redact_secrets


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://tally:s3cr%40t@db:5432/tally", "postgresql://tally:***@db:5432/tally"),
        ("postgres://u:p@w@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        (
            "postgresql://h/db?user=u&password=x&sslmode=a",
            "postgresql://h/db?user=u&password=***&sslmode=a",
        ),
        ("host=h password='a b' user=u", "host=h password=*** user=u"),
        (
            "PostgreSQL store: cannot connect to postgresql://a:b@127.0.0.1:1/x: refused",
            "PostgreSQL store: cannot connect to postgresql://a:***@127.0.0.1:1/x: refused",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("journal:/var/lib/tally", "journal:/var/lib/tally"),
    ],
)
def test_dsn_passwords_are_redacted(text: str, shown: str) -> None:
    """The password of a URL, a ?password= parameter or a libpq password= keyword becomes
    ***; everything else is kept, so the message still says where."""
    assert redact_secrets(text) == shown


def test_auth_failures_burst_then_refill() -> None:
    """An address may fail `burst` times; then it waits for the refill; others are free."""
    failures = AuthFailures(rate_per_s=1.0, burst=3)
    for _ in range(3):
        assert failures.wait_s("10.0.0.1", 100.0) == 0
        failures.failed("10.0.0.1", 100.0)
    assert failures.wait_s("10.0.0.1", 100.0) == pytest.approx(1.0)
    assert failures.wait_s("10.0.0.2", 100.0) == 0
    assert failures.wait_s("10.0.0.1", 101.0) == 0  # one token back after a second
    failures.prune(200.0)  # refilled long ago: forgotten
    assert not failures.buckets


def test_auth_failures_memory_is_bounded() -> None:
    """Many failing addresses keep at most `addresses_max` buckets."""
    failures = AuthFailures(rate_per_s=0.001, burst=2, addresses_max=100)
    for index in range(1000):
        failures.failed(f"10.0.{index // 256}.{index % 256}", 5.0)
    assert len(failures.buckets) <= 100
