"""`tally sim` as a user runs it: subprocesses of the real command line.

Listing the scenarios, a tiny run that writes its report, saving a trace and
replaying it (same ledgers), replaying a journal written by `core.journal`,
and the refusals of bad input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.entries import RULES_HEADER, Entry, EntryKind
from core.journal import Journal
from ledger.records import pack_account_input, pack_transfer
from ledger.types import (
    AccountFlags,
    AccountKind,
    TransferCode,
)
from sim.model import builtin_scenarios
from sim.population import PRODUCT_CLASS_II, PRODUCT_INTERNAL, bank_rules
from tests.repo_paths import REPO_ROOT


def tally(*arguments: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONOPTIMIZE"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "core", *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_scenarios_lists_every_builtin() -> None:
    """`tally sim scenarios` names every built-in scenario, the issue's five among them."""
    result = tally("sim", "scenarios")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert listed == set(builtin_scenarios())
    for name in (
        "dc1-outage",
        "region-a-outage",
        "region-link-partition",
        "old-primary-returns",
        "campaign-dc1-outage-link-partition",
    ):
        assert name in listed


def test_tiny_run_writes_a_report_and_trace_replays_identically(tmp_path: Path) -> None:
    """A tiny `tally sim run` (seed 3) passes and writes its files; replaying its saved trace
    through the same scenario reproduces the same ledgers, digest for digest."""
    trace = tmp_path / "day.trace"
    result = tally(
        "sim",
        "run",
        "--users",
        "3000",
        "--hours",
        "0.05",
        "--postings-per-user",
        "300",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "run"),
        "--save-trace",
        str(trace),
        "--json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    headline = json.loads(result.stdout.splitlines()[-1])
    assert headline["pass"] and headline["acknowledged_lost"] == 0 and headline["seed"] == 3
    for name in ("report.json", "report.html", "throughput.png", "lost_transfers.csv"):
        assert (tmp_path / "run" / name).exists(), name
    original = json.loads((tmp_path / "run" / "report.json").read_text())
    replayed = tally(
        "sim", "replay", str(trace), "--seed", "3", "--out", str(tmp_path / "replay"), "--json"
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    again = json.loads((tmp_path / "replay" / "report.json").read_text())
    assert again["traffic"] == "trace"
    assert again["state_digests"] == original["state_digests"]
    assert again["postings"] == original["postings"]


def test_replays_a_journal_from_a_real_server(tmp_path: Path) -> None:
    """A journal directory (rules, accounts, transfer batches, as `tally serve` writes them)
    is replayed through the topology under dc1-outage: nothing acknowledged is lost."""
    journal_dir = tmp_path / "journal"
    write_journal(journal_dir)
    result = tally(
        "sim",
        "replay",
        str(journal_dir),
        "--scenario",
        "dc1-outage",
        "--out",
        str(tmp_path / "out"),
        "--json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["traffic"] == "journal"
    assert report["requests"] == 3000 and report["postings"] > 2000
    assert report["acknowledged_lost"] == 0 and report["converged"] and report["money_conserved"]


def test_bad_input_is_refused_with_a_message(tmp_path: Path) -> None:
    """An unknown scenario or a topology with a misspelt key exits 1 and says what is wrong."""
    result = tally(
        "sim", "run", "--users", "100", "--scenario", "no-such-scenario", "--out", str(tmp_path)
    )
    assert result.returncode == 1 and "unknown scenario 'no-such-scenario'" in result.stderr
    topology = tmp_path / "topology.toml"
    text = (
        (REPO_ROOT / "sim" / "topology.toml")
        .read_text()
        .replace("suspect_after_ms", "suspect_afer_ms")
    )
    topology.write_text(text)
    result = tally(
        "sim", "run", "--users", "100", "--topology", str(topology), "--out", str(tmp_path)
    )
    assert (
        result.returncode == 1
        and "`failure_detector.suspect_afer_ms`: unknown key" in result.stderr
    )


def write_journal(directory: Path) -> None:
    rules = bank_rules()
    products, channels = bytes(rules.product_table()), bytes(rules.channel_table())
    start_ns = 1_790_000_000_000_000_000
    day = rules.business_day(start_ns)
    entries = [
        Entry(
            EntryKind.SET_RULES,
            start_ns,
            day,
            0,
            RULES_HEADER.pack(len(products)) + products + channels,
        )
    ]
    flags = int(
        AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        | AccountFlags.BOUND_EXTERNAL
        | AccountFlags.NON_BOUND_INFLOW_ENABLED
    )
    accounts = [
        pack_account_input(
            id=9 << 64 | 1, kind=AccountKind.INTERNAL_CLEARING, product=PRODUCT_INTERNAL
        )
    ]
    accounts += [
        pack_account_input(
            id=9 << 64 | (100 + i), kind=AccountKind.CLASS_II, flags=flags, product=PRODUCT_CLASS_II
        )
        for i in range(100)
    ]
    entries.append(
        Entry(EntryKind.CREATE_ACCOUNTS, start_ns + 1, day, len(accounts), b"".join(accounts))
    )
    timestamp = start_ns + 10
    transfer_id = 1
    for batch in range(150):
        records = []
        for _ in range(20):
            debit, credit = 100 + (transfer_id * 7) % 100, 100 + (transfer_id * 13 + 1) % 100
            if batch < 5:  # fund every account from clearing first
                debit, code, amount = 1, TransferCode.TOPUP_BOUND, 100_000
            else:
                code, amount = TransferCode.TRANSFER, 1_000 + transfer_id % 500
                if debit == credit:
                    credit = 100 + (credit - 99) % 100
            records.append(
                pack_transfer(
                    id=77 << 64 | transfer_id,
                    debit_account_id=9 << 64 | debit,
                    credit_account_id=9 << 64 | credit,
                    amount=amount,
                    code=code,
                    channel=2,
                )
            )
            transfer_id += 1
        entries.append(
            Entry(EntryKind.CREATE_TRANSFERS, timestamp, day, len(records), b"".join(records))
        )
        timestamp += 100_000_000
    with Journal.open(directory) as journal:
        journal.append(entries)
