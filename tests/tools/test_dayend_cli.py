"""`tally dayend` and `tally bench dayend` end to end, as an operator runs them."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import zoneinfo
from pathlib import Path

import anyio

from core.data import DEFAULT_RULES_PATH
from core.services.lifecycle import Lifecycle, Settings
from ledger.constants import CLEARING_ID
from ledger.records import pack_account_input, pack_transfer
from ledger.types import AccountFlags, AccountKind, TransferCode
from limits.rules import load_rules

ACCOUNTS = 50
FIRST_ACCOUNT = 6_222_000_000_000_100_001
SETTLEMENT_DAY = "2026-09-20"  # before this machine's today (the tests run later)
STEP_NAMES = ["accrual", "settlement", "maturities", "loans", "counters", "holds"]


def tally(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *words], capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def prepare(data: Path) -> None:
    """A data directory with `ACCOUNTS` funded Class II accounts (the server's way in)."""

    async def main() -> None:
        lifecycle = Lifecycle(Settings(str(data)), load_rules(DEFAULT_RULES_PATH))

        async def no_openings() -> None:
            return None

        async with anyio.create_task_group() as task_group:
            await task_group.start(lifecycle.serve, no_openings)
            with anyio.fail_after(30):
                while not lifecycle.ready:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            engine = lifecycle.running_engine()
            flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.BOUND_EXTERNAL
            ids = range(FIRST_ACCOUNT, FIRST_ACCOUNT + ACCOUNTS)
            accounts = b"".join(
                pack_account_input(id=i, kind=AccountKind.CLASS_II, flags=flags, product=2)
                for i in ids
            )
            assert set(await engine.submit_accounts(accounts)) == {0}
            fundings = b"".join(
                pack_transfer(id=(5 << 100) + i, debit_account_id=CLEARING_ID,
                              credit_account_id=i, amount=1_000_000,
                              code=TransferCode.TOPUP_BOUND)
                for i in ids
            )  # fmt: skip
            assert set((await engine.submit_transfers(fundings)).result_codes()) == {0}
            task_group.cancel_scope.cancel()

    anyio.run(main)


def test_dayend_runs_reruns_as_a_no_op_and_refuses_what_it_must(tmp_path: Path) -> None:
    """On a data directory: the day-end of a settlement day accrues and settles every
    funded account (--json: each step's counts and seconds, in order); run again it
    changes nothing and says so (exit 0); a day that skips one is refused naming the
    missing day, and today is refused as not ended (exit 1); a bad date is a usage
    error (exit 2)."""
    data = tmp_path / "data"
    prepare(data)
    done = tally("dayend", "--date", SETTLEMENT_DAY, "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["date"] == SETTLEMENT_DAY and not report["already_done"]
    assert [step["step"] for step in report["steps"]] == STEP_NAMES
    steps = {step["step"]: step for step in report["steps"]}
    assert steps["accrual"]["count"] == ACCOUNTS
    assert steps["settlement"]["due"] and steps["settlement"]["count"] == ACCOUNTS
    assert all(step["seconds"] >= 0 for step in report["steps"])

    again = tally("dayend", "--date", SETTLEMENT_DAY, "--data", str(data))
    assert again.returncode == 0, again.stderr
    assert "already done; nothing changed" in again.stdout
    assert "settlement" in again.stdout

    skipped = tally("dayend", "--date", "2026-09-22", "--data", str(data), "--json")
    assert skipped.returncode == 1
    refusal = json.loads(skipped.stdout.strip().splitlines()[-1])
    assert refusal["refused"] == "skipped" and refusal["missing_date"] == "2026-09-21"
    assert "2026-09-21" in skipped.stderr

    today = datetime.datetime.now(zoneinfo.ZoneInfo("Asia/Shanghai")).date().isoformat()
    not_ended = tally("dayend", "--date", today, "--data", str(data), "--json")
    assert not_ended.returncode == 1
    assert json.loads(not_ended.stdout.strip().splitlines()[-1])["refused"] == "not_ended"

    bad = tally("dayend", "--date", "20 Sept", "--data", str(data))
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr


def test_bench_dayend_small_run_reports_the_promised_figures(tmp_path: Path) -> None:
    """`tally bench dayend --json` ends with one JSON object holding accrual_s,
    settlement_s and peak_rss_gib with the counts (every account accrued and paid
    once); the page renders its section, without a verdict below 30M accounts."""
    reports = tmp_path / "reports"
    done = tally("bench", "dayend", "--accounts", "20000", "--json", "--save", str(reports))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("accrual_s", "settlement_s", "peak_rss_gib", "settlement_transfers_per_s"):
        assert report[key] > 0, key
    assert report["accounts_accrued"] == report["settlement_transfers"] == 20000
    assert report["interest_paid_minor"] == 20000
    assert len(list(reports.glob("dayend-*.json"))) == 1
    page = tmp_path / "BENCHMARKS.md"
    rendered = tally("bench", "page", "--reports", str(reports), "--out", str(page))
    assert rendered.returncode == 0, rendered.stderr
    text = page.read_text()
    assert "## `tally bench dayend`" in text
    assert f"| `settlement_s` | {report['settlement_s']} | (target at accounts 30,000,000) |" in (
        text
    )


def test_dayend_refuses_a_data_directory_that_is_not_there(tmp_path: Path) -> None:
    """A mistyped --data is refused (exit 2) and creates nothing: it would otherwise open
    a new, empty bank and record a day-end in it."""
    missing = tmp_path / "no-such-data"
    done = tally("dayend", "--date", "2026-03-20", "--data", str(missing), "--json")
    assert done.returncode == 2, done.stderr
    assert "no server data directory" in done.stderr and not missing.exists()
