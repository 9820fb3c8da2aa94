"""`tally loadtest` with every protocol: HTTP users, ISO 8583 terminals, ISO 20022 partners.

One short real run (a real `tally serve --iso8583`, Locust headless in its own process)
with every user class, then the audit: clean on the run's own outcome lines, and
catching each way those lines could disagree with the books once they are tampered
with (so a clean audit means the ISO lines were really checked).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.repo_paths import REPO_ROOT

pytestmark = pytest.mark.slow  # about 40 s: setup, a server restart, 20 s of load, the audit


def tally(*words: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
    return subprocess.run(
        [sys.executable, "-m", "core", *words], capture_output=True, text=True,
        cwd=REPO_ROOT, timeout=900, check=False, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("locust-protocols") / "out"
    done = tally("loadtest", "--seconds", "20", "--users", "60", "--customers", "30",
                 "--fraud-share", "0.02", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out


def lines_of(out: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(out.glob("outcomes-*.jsonl")):
        lines += [json.loads(raw) for raw in path.read_bytes().splitlines() if raw.strip()]
    return lines


def test_one_run_covers_every_protocol_and_the_audit_is_clean(run: Path) -> None:
    """Every user class made requests (HTTP routes, ISO 8583 message types, pacs.008); no
    failure; every ISO 8583 approval and every ACSC credit was found booked once, the
    deliberate AC01 credits refused and not booked, the audit clean (exclusive: nothing
    booked that no client was told of)."""
    report = json.loads((run / "report.json").read_text())
    assert report["failures"] == 0 and report["money_unknown"] == 0, report
    assert report["audit_clean"] is True, report
    assert report["protocols"] == ["http", "iso8583", "iso20022"]
    with open(run / "locust_stats.csv", newline="") as file:
        rows = {
            (row["Type"], row["Name"]): int(row["Request Count"]) for row in csv.DictReader(file)
        }
    for key in (("ISO8583", "0200 01 cash withdrawal"), ("ISO8583", "0200 00 purchase"),
                ("ISO8583", "0200 31 balance enquiry"),
                ("POST", "POST /v1/iso20022/pacs.008"), ("POST", "POST /v1/transfers"),
                ("POST", "POST /v1/incoming-transfers")):  # fmt: skip
        assert rows.get(key, 0) > 0, (key, sorted(rows))
    audit = json.loads((run / "audit.json").read_text())
    counts = audit["counts"]
    lines = lines_of(run)
    iso8583 = [line for line in lines if line.get("protocol") == "iso8583"]
    iso20022 = [line for line in lines if line.get("protocol") == "iso20022"]
    approved = [line for line in iso8583 if line["outcome"] == "acknowledged"]
    booked = [line for line in iso20022 if line["outcome"] == "acknowledged"]
    assert approved and booked
    assert counts["acknowledged_found_iso8583"] == len(approved)
    assert counts["acknowledged_found_iso20022"] == len(booked)
    assert {line["operation"] for line in approved} >= {
        "iso8583_cash_withdrawal",
        "iso8583_purchase",
    }
    unknown_account = [line for line in iso20022 if line.get("slug") == "iso20022-AC01"]
    assert unknown_account  # every partner's first file names an account that is not there
    assert counts["refused_not_applied_iso20022"] >= len(unknown_account)
    assert report["money_by_protocol"]["iso20022"]["acknowledged"] == len(booked)
    # Each ISO money message's key was written before it left ("sent"), then its outcome.
    sent = {line["key"] for line in iso8583 + iso20022 if line["outcome"] == "sent"}
    answered = {line["key"] for line in iso8583 + iso20022 if line["outcome"] != "sent"}
    assert answered <= sent and len(sent - answered) == report["money_unanswered"]


def test_the_audit_catches_iso_lines_that_disagree_with_the_books(
    run: Path, tmp_path: Path
) -> None:
    """The run's outcome lines, tampered: an ISO 8583 approval's field 38 changed (identity),
    another's amount (mismatch), a third recorded twice (duplicate); an ACSC credit's lines
    dropped (its booking unexplained); a refused credit's line pointed at a booked credit
    (refused_applied). The offline audit of the same journal finds each."""
    tampered = tmp_path / "outcomes"
    tampered.mkdir()
    for path in run.glob("outcomes-*.jsonl"):
        shutil.copy(path, tampered / path.name)
    locust_file = next(p for p in tampered.glob("outcomes-*.jsonl") if "setup" not in p.name)
    lines = [json.loads(raw) for raw in locust_file.read_bytes().splitlines() if raw.strip()]

    def indexes(protocol: str, outcome: str) -> list[int]:
        return [
            index
            for index, line in enumerate(lines)
            if line.get("protocol") == protocol and line["outcome"] == outcome
        ]

    approved = indexes("iso8583", "acknowledged")
    booked = indexes("iso20022", "acknowledged")
    refused = indexes("iso20022", "refused")
    assert len(approved) >= 3 and len(booked) >= 2 and refused
    first, second, third = approved[:3]
    authorization = lines[first]["authorization"]
    lines[first]["authorization"] = "000000" if authorization != "000000" else "FFFFFF"
    lines[second]["amount_minor"] += 1
    lines[refused[0]]["key"] = lines[booked[1]]["key"]
    lines.append(dict(lines[third]))
    dropped = lines[booked[0]]["key"]  # its outcome and the intent written before sending
    lines = [line for line in lines if line.get("key") != dropped]
    locust_file.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    summary = tmp_path / "audit.json"
    done = tally("audit", str(run / "data"), "--outcomes", str(tampered), "--exclusive",
                 "--dataset", str(run / "dataset.json"), "--json", str(summary))  # fmt: skip
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    errors = json.loads(summary.read_text())["errors_by_kind"]
    assert {"identity", "mismatch", "duplicate", "unexplained", "refused_applied"} <= set(errors)
