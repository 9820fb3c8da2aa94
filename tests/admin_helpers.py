"""Shared pieces of the operator (/v1/admin/) and risk tests: operator clients, rule files.

Operators sign like channels, naming themselves `channel="op:NAME"`; their development
keys are those of examples/operators.toml (which only `tally serve --dev` accepts).
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from channels.client import TallyClient
from tests.http_helpers import REPO_ROOT, TallyServer

OPERATORS_FILE = REPO_ROOT / "examples" / "operators.toml"


def operator_secret(name: str, operators_file: Path = OPERATORS_FILE) -> tuple[str, str]:
    """(key id, secret) of operator `name`'s first key."""
    with open(operators_file, "rb") as file:
        document = tomllib.load(file)
    entry = document["operators"][name]["secrets"][0]
    return entry["key_id"], entry["secret"]


def operator_client(server: TallyServer, name: str) -> TallyClient:
    """A client signing as operator `name` (`channel="op:NAME"`)."""
    key_id, secret = operator_secret(name)
    return TallyClient(server.url, f"op:{name}", key_id, secret, verify=server.verify)


def risk_rules_text(
    rules: str, *, version: int = 1, delay_s: int = 3600, review_s: int = 86_400
) -> str:
    """A rule file: the version, the hold lengths, then `rules` (lists and [[rules]])."""
    return f"version = {version}\n\n[holds]\ndelay_s = {delay_s}\nreview_s = {review_s}\n\n{rules}"


def no_risk_rules(directory: Path) -> list[str]:
    """`tally serve` options for an empty risk rule set (written in `directory`): for the
    tests of other rules (the ledger's limits, the tellers' caps) whose large transfers to
    new payees the shipped risk rules would hold, as a bank's would."""
    path = directory / "no-risk-rules.toml"
    path.write_text(risk_rules_text(""))
    return ["--risk-rules", str(path)]


def wait_for(check: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll `check` until it returns something truthy (the server's tick runs once a
    second); fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.2)
