"""`tally loadtest` (what `make loadtest` runs): the CI smoke run, the shape, the tags.

Locust runs in its own process (it monkey-patches with gevent): it is never imported
here, so the locustfile's day shape lives in `loadtests/profile.py`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from loadtests.profile import diurnal_fraction
from tests.repo_paths import REPO_ROOT


def loadtest(*words: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
    return subprocess.run(
        [sys.executable, "-m", "core", "loadtest", *words], capture_output=True, text=True,
        cwd=REPO_ROOT, timeout=900, check=False, env=env,
    )  # fmt: skip


def loadtest_against_server(
    tmp_path: Path, serve_args: list[str], loadtest_args: list[str], *, disk_delay_ms: int = 0
) -> subprocess.CompletedProcess[str]:
    """`tally loadtest --host` against a `tally serve` started here with `serve_args`, so
    the test can give the server a fault (`disk_delay_ms` > 0: the real server on a journal
    slowed by tests/slow_disk_serve.py); reports go to tmp_path/out. The server calls a
    provider simulator started here (no latency, no fraud), which the run is told of
    (`--providers`: the new customers read their SMS codes there)."""
    from loadtests.verification import bench_simulator

    with bench_simulator() as providers:
        serve_args = [*serve_args, "--providers", providers]
        loadtest_args = [*loadtest_args, "--providers", providers]
        return _loadtest_against(tmp_path, serve_args, loadtest_args, disk_delay_ms)


def _loadtest_against(
    tmp_path: Path, serve_args: list[str], loadtest_args: list[str], disk_delay_ms: int
) -> subprocess.CompletedProcess[str]:
    from core.bench.server import Server, free_port

    port = free_port()
    serve = (
        [str(REPO_ROOT / "tests" / "slow_disk_serve.py"), str(disk_delay_ms)]
        if disk_delay_ms
        else ["-m", "core", "serve"]
    )
    command = [sys.executable, *serve, "--port", str(port),
               "--data", str(tmp_path / "data"), "--access-log", "off", "--scrypt-n", "1024",
               "--dev", *serve_args]  # fmt: skip
    server = Server(command, port, tmp_path / "server.log", "/readyz")
    try:
        return loadtest("--host", server.url, *loadtest_args, "--out", str(tmp_path / "out"))
    finally:
        server.stop()


def stats_names(out: Path) -> set[str]:
    with open(out / "locust_stats.csv", newline="") as file:
        return {row["Name"] for row in csv.DictReader(file)} - {"Aggregated"}


def test_smoke_run_30_s_is_clean(tmp_path: Path) -> None:
    """The CI smoke run: 30 s, 100 users, every channel; no failure, the audit clean."""
    out = tmp_path / "out"
    done = loadtest("--seconds", "30", "--users", "100", "--customers", "100", "--out", str(out))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in ("locust.html", "locust_stats.csv", "audit.json", "report.json", "dataset.json"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["failures"] == 0 and report["money_unknown"] == 0
    assert report["requests"] > 0 and report["money_acknowledged"] > 0
    assert report["audit_clean"] is True and report["audit_errors"] == 0
    audit = json.loads((out / "audit.json").read_text())
    # Everything acknowledged (the run's and the setup's) was found in the replayed journal.
    acknowledged = report["money_acknowledged"] + 2 * report["customers"] + 10
    assert audit["counts"]["acknowledged_found"] == acknowledged
    assert audit["sums"]["balances_minor"] == 0
    names = stats_names(out)
    for route in ("POST /v1/payments", "POST /v1/accounts/{id}/cash-deposits",
                  "POST /v1/incoming-transfers", "GET /v1/accounts/{id}"):  # fmt: skip
        assert route in names, names
    outcome_files = list(out.glob("outcomes-*.jsonl"))
    assert len(outcome_files) == 2  # the setup's and the one Locust process's
    # The benchmark page renders the report: the Locust section with its verdicts.
    from core.bench.page import render

    page = render([{**report, "_file": "locust-test.json"}])
    assert "## `tally loadtest`" in page and "**100 users for 30 s (flat):" in page
    assert "audit clean" in page
    assert "| `failures` | 0 | <= 0: met |" in page
    assert "| `audit_errors` | 0 | <= 0: met |" in page


def test_shape_and_tags_run_one_flow(tmp_path: Path) -> None:
    """--shape drives the users by the day profile; --tags pay runs payments alone."""
    out = tmp_path / "out"
    done = loadtest("--seconds", "20", "--users", "20", "--customers", "20", "--shape",
                    "--tags", "pay", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    names = stats_names(out)
    assert "POST /v1/payments" in names
    assert names <= {
        "POST /v1/payments",
        "POST /v1/payments/{id}/capture",
        "POST /v1/payments/{id}/void",
        "POST /v1/accounts/{id}/tokens",
    }, names
    assert json.loads((out / "report.json").read_text())["shape"] == "diurnal campaign day"
    with open(out / "locust_stats_history.csv", newline="") as file:
        users = [int(row["User Count"]) for row in csv.DictReader(file)]
    half, tail = users[: len(users) // 2], users[len(users) * 65 // 100 :]
    assert max(tail) > max(half) > 0, users  # the midnight burst tops the daytime waves


def test_day_profile_peaks_at_the_campaign_midnight() -> None:
    """Night trough, two daytime waves below the peak, the full peak right after midnight."""
    points = [diurnal_fraction(step / 1000) for step in range(1000)]
    assert all(0 < value <= 1 for value in points)
    day, campaign = points[:800], points[800:]
    assert max(day) < 0.75 and points[0] < 0.1
    assert max(campaign) == 1.0 and campaign[0] == 1.0
    assert campaign[-1] < 0.5  # the burst decays
    lunch = max(points[250:400])
    afternoon = min(points[400:550])
    assert lunch > afternoon < max(points[550:800])  # two waves


def test_request_failures_make_the_run_fail(tmp_path: Path) -> None:
    """A server that no longer knows wechat's secret: every wechat request is a 401 (then,
    its failed authentications over the limit, a 429), an unexpected status, so the run
    fails although the audit of what was booked is clean."""
    registry = (REPO_ROOT / "examples" / "channels.toml").read_text()
    assert registry.count("DEVELOPMENT-ONLY-wechat-secret-0001") == 1
    rotated = tmp_path / "channels.toml"
    rotated.write_text(registry.replace("DEVELOPMENT-ONLY-wechat-secret-0001", "rotated-away-0001"))
    out = tmp_path / "out"
    done = loadtest_against_server(
        tmp_path,
        ["--channels", str(rotated)],
        ["--seconds", "6", "--users", "20", "--customers", "10"],
    )
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["failures"] > 0 and report["audit_clean"] is True
    assert all(
        "unexpected 401" in error or "429 authentication-failures" in error
        for error in report["failures_by_error"]
    ), report
    assert report["audit_source"] == "HTTP API"


def test_shed_requests_are_retried_with_the_same_key_and_booked_once(tmp_path: Path) -> None:
    """A server on a slow disk (every journal append waits 100 ms) with a 10-request engine
    queue sheds with 503 under 100 users, and only then: the setup's 8 threads, each
    waiting for its answer, hold at most 8 requests in the queue (9 with a housekeeping
    one), so the dataset is built without a shed opening (openings are not retried). The
    users retry with the same Idempotency-Key. The 503s are failures (the run fails), but
    the audit proves every acknowledged retry was booked exactly once."""
    out = tmp_path / "out"
    done = loadtest_against_server(
        tmp_path,
        ["--queue-size", "10"],
        ["--seconds", "8", "--users", "100", "--customers", "20"],
        disk_delay_ms=100,
    )
    assert (out / "report.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["money_retried"] > 0, report
    assert report["failures"] > 0 and done.returncode == 1
    assert all(" 503 " in f" {error} " or "503" in error for error in report["failures_by_error"])
    assert report["audit_clean"] is True, done.stdout[-3000:]
    assert report["audit_acknowledged_found"] == report["money_acknowledged"] + 2 * 20 + 10


def test_risk_summary_counts_what_the_rules_stopped_from_the_answers() -> None:
    """The report's risk section from outcome lines: a fraudster's request counts as
    stopped when blocked, challenged (never met) or held; one that posted is not; a
    legitimate customer's challenge (met or not), hold or block is a false positive."""
    from loadtests.fraud import risk_summary

    def line(outcome: str, risk: str = "", fraud: str = "") -> dict[str, str]:
        fields = {"key": "k", "channel": "app", "operation": "transfer", "outcome": outcome}
        return fields | ({"risk": risk} if risk else {}) | ({"fraud": fraud} if fraud else {})

    summary = risk_summary(
        [
            line("refused", "challenge", "stolen_device"),
            line("refused", "challenge", "stolen_device"),
            line("acknowledged", "", "stolen_device"),  # got through
            line("acknowledged", "review", "mule"),
            line("refused", "blocked", "mule"),
            line("acknowledged"),
            line("acknowledged", "challenge_met"),
            line("refused", "challenge"),  # a customer who could not pass the step-up
            line("acknowledged", "delayed"),
            line("refused", ""),  # insufficient funds: nothing of the risk stage
            {"operation": "open_account", "outcome": "opened"},  # no money: not counted
        ]
    )
    fraud = summary["fraud"]
    assert (fraud["total"], fraud["stopped"]) == (5, 4)
    assert fraud["by_pattern"] == {
        "stolen_device": {"total": 3, "stopped": 2},
        "mule": {"total": 2, "stopped": 2},
    }
    assert fraud["by_answer"] == {"blocked": 1, "challenge": 2, "posted": 1, "review": 1}
    assert summary["stopped_share"] == 0.8
    assert summary["legitimate"] == {
        "total": 5,
        "challenged": 2,
        "challenge_met": 1,
        "held": 1,
        "blocked": 0,
    }
    assert summary["false_positive_share"] == 0.6


def test_fraudsters_are_stopped_and_customers_pass_their_challenges(tmp_path: Path) -> None:
    """A run with 30% fraudsters (`--fraud-share 0.3`, transfers only): every request
    carries its device; the stolen-device thieves' large transfers on a new device are
    challenged and, without a second factor, refused (none posted); the mule's payers pass
    its 30-an-hour inflow and are held for review; legitimate customers who are challenged
    retry with a second factor and post. No Locust failure, the audit clean, every refused
    request absent from the ledger, the server's decision behind every risk answer."""
    out = tmp_path / "out"
    done = loadtest("--seconds", "25", "--users", "30", "--customers", "40", "--fraud-share",
                    "0.3", "--tags", "fraud,transfer", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["fraud_share"] == 0.3 and report["failures"] == 0
    risk = report["risk"]
    stolen = risk["fraud"]["by_pattern"]["stolen_device"]
    mule = risk["fraud"]["by_pattern"]["mule"]
    assert stolen["total"] > 0 and stolen["stopped"] == stolen["total"], risk
    assert mule["total"] > 30 and 0 < mule["stopped"] < mule["total"], risk
    assert risk["fraud"]["by_answer"].get("challenge", 0) >= stolen["total"], risk
    assert risk["fraud"]["by_answer"].get("review", 0) == mule["stopped"], risk
    assert risk["legitimate"]["total"] > 0
    assert "risk fraud stopped" in done.stdout.replace("risk       fraud", "risk fraud")
    assert report["refusals"].get("risk-challenge", 0) >= stolen["total"]
    assert report["audit_clean"] is True, done.stdout[-3000:]
    audit = json.loads((out / "audit.json").read_text())
    assert audit["counts"]["risk_refused_not_applied"] >= stolen["total"]
    # Holds in the ledger: the mule's payers (and any customer who paid the mule too).
    assert audit["counts"]["risk_holds_found"] == mule["stopped"] + risk["legitimate"]["held"]
    # The audit counts the same fraud; its legitimate requests include the setup's own.
    assert audit["risk"]["fraud"] == risk["fraud"]
    setup = 2 * report["customers"] + 10
    assert audit["risk"]["legitimate"]["total"] == risk["legitimate"]["total"] + setup
    lines = [
        json.loads(text)
        for path in out.glob("outcomes-*.jsonl")
        for text in path.read_text().splitlines()
    ]
    refused = [item for item in lines if item.get("risk") == "challenge" and item.get("fraud")]
    assert refused and all(item.get("decision_id") for item in refused)
    # The server's decisions (replayed from the journal) say what each answer said, and the
    # thieves' transfers came from their own devices, as the requests' `device` told it.
    answered = [item for item in lines if item.get("risk")]
    assert audit["counts"]["risk_decisions_as_answered"] == len(answered)
    assert audit["counts"]["risk_stolen_devices_seen"] == stolen["stopped"]
    # A legitimate customer's challenge is met by the second factor (the same key, retried).
    met = [item for item in lines if item.get("risk") == "challenge_met"]
    assert len(met) == risk["legitimate"]["challenge_met"] == risk["legitimate"]["challenged"]
    assert all(item["attempts"] >= 2 and not item.get("fraud") for item in met)


def test_new_customers_verify_in_the_mix_and_the_audit_proves_it(tmp_path: Path) -> None:
    """A run with many new app customers (`--verify-weight 30`), 30% of them fraudsters,
    against a real server calling the provider simulator with realistic latencies and the
    world's fraud: every step is its own request; honest customers open and fund a Class
    II account; no fraudster gets through (their refusals are no failures); the audit
    proves every Class II holder and binding verified and no code the phones received
    written down, and catches a holder made unverified in a copy of the run's books."""
    from loadtests.verification import STEP_REQUESTS

    out = tmp_path / "out"
    done = loadtest("--seconds", "20", "--users", "30", "--customers", "20", "--protocols",
                    "http", "--verify-weight", "30", "--verify-fraud-share", "0.3",
                    "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["failures"] == 0 and report["audit_clean"] is True, report
    names = stats_names(out)
    for step in ("register", "id_document", "liveness", "bind_card", "confirm_sms_code",
                 "open_class_ii"):  # fmt: skip
        assert STEP_REQUESTS[step] in names, (step, names)
        assert f"verification_p99_ms_{step}" in report
    lines = [
        json.loads(text)
        for path in out.glob("outcomes-*.jsonl")
        for text in path.read_text().splitlines()
    ]
    workflows = [line for line in lines if line.get("operation") == "verification"]
    verified = [line for line in workflows if line["result"] == "verified"]
    frauds = [line for line in workflows if line["pattern"] and "customer_id" in line]
    assert verified and frauds, workflows
    assert report["verifications"] == len(workflows)
    assert report["verifications_verified"] == len(verified)
    assert report["verifications_completed"] >= len(verified) + len(frauds)
    assert report["verifications_per_s"] > 0 and report["verification_steps_per_s"] > 0
    assert report["verification_fraud_attempted"] >= len(frauds)
    assert report["verification_fraud_passed"] == 0
    # Each fraud is refused at its step (another's card: unless the world's own fraud, a
    # stolen identity, refused the customer first).
    expected = {
        "spoof": {"customer:liveness"},
        "other_face": {"customer:identity_database"},
        "other_card": {"binding:issuer_card", "customer:identity_database"},
    }
    assert all(line["reason"] in expected[line["pattern"]] for line in frauds), frauds
    refusals = sum(v for k, v in report.items() if k.startswith("verification_refusals_"))
    assert refusals == report["verifications_rejected"] + report["verifications_refused"]
    # Every verified customer's account was opened on their binding, and money moved in.
    opened = {line["account_id"]: line for line in lines if line.get("outcome") == "opened"}
    for line in verified:
        assert opened[line["account_id"]]["binding_id"] == line["binding_id"]
    credited = {
        line["credit_account_id"]
        for line in lines
        if line.get("operation") == "topup" and line["outcome"] == "acknowledged"
    }
    assert {line["account_id"] for line in verified} & credited
    audit = json.loads((out / "audit.json").read_text())
    counts = audit["counts"]
    holders = report["customers"] + report["accounts_opened"]
    assert counts["class_ii_holders_verified"] == holders
    assert counts["opening_bindings_verified"] == holders
    assert counts["fraud_refused"] == len(frauds)
    codes = [line for line in lines if line.get("operation") == "sms_code"]
    assert codes and counts["sms_codes_checked"] == len({line["code"] for line in codes})
    assert counts["sms_codes_not_leaked"] == counts["sms_codes_checked"]
    assert counts["server_log_lines_checked"] > 0 and counts["state_values_checked"] > 0

    # A copy of the books in which one new customer's verification is pending again.
    from core.entries import Entry, EntryKind, encode_state_changes
    from core.journal import Journal
    from core.store import read_entries, replay_store

    data = tmp_path / "planted"
    shutil.copytree(out / "data", data, ignore=shutil.ignore_patterns("*.lock"))
    state = replay_store(str(data), 1 << 16, 1 << 20).state
    key = f"customer/{verified[0]['customer_id']}".encode()
    customer = json.loads(state[key])
    customer["kyc"]["status"] = "pending"
    *_, (_, last) = read_entries(str(data))
    change = encode_state_changes([(key, json.dumps(customer).encode())])
    with Journal.open(str(data)) as journal:
        journal.append(
            [Entry(EntryKind.PUT_STATE, last.timestamp_first + 1, last.business_day, 1, change)]
        )
    planted = subprocess.run(
        [sys.executable, "-m", "core", "audit", str(data), "--outcomes", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, check=False,
    )  # fmt: skip
    assert planted.returncode == 1, planted.stdout[-3000:] + planted.stderr[-3000:]
    assert f"account {verified[0]['account_id']}" in planted.stdout
    assert "unverified_holder" in planted.stdout
