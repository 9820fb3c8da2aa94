"""The benchmark commands run end to end and the page is rendered from what they saved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def tally(*words: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *words], capture_output=True, text=True, cwd=cwd,
        timeout=300, check=False,
    )


def test_bench_kernel_small_run_reports_every_promised_figure(tmp_path: Path) -> None:
    """`tally bench kernel --json` ends with one JSON object holding the issue's keys,
    with plausible values (all transfers accounted for in the result counts)."""
    reports = tmp_path / "reports"
    done = tally("bench", "kernel", "--accounts", "5000", "--transfers", "20000", "--runs", "1",
                 "--reference-accounts", "500", "--reference-transfers", "2000", "--json",
                 "--save", str(reports))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("accounts", "transfers", "transfers_per_s", "transfers_per_s_zipf",
                "bytes_per_account", "reference_transfers_per_s"):
        assert key in report, key
    assert report["accounts"] == 5000 and report["transfers"] == 20000
    assert report["transfers_per_s"] > report["reference_transfers_per_s"] > 0
    for name, counts in report["results"].items():
        expected = 2000 if name == "reference" else 20000
        assert sum(counts.values()) == expected, (name, counts)
        assert counts.get("ok", 0) > expected // 2, (name, counts)
    assert len(list(reports.glob("kernel-*.json"))) == 1

    page = tmp_path / "BENCHMARKS.md"
    rendered = tally("bench", "page", "--reports", str(reports), "--out", str(page))
    assert rendered.returncode == 0, rendered.stderr
    text = page.read_text()
    assert "`tally bench kernel`" in text
    assert f"| `transfers_per_s` | {report['transfers_per_s']:,} |" in text
    assert report["machine"] in text


def test_bench_engine_small_run_reports_the_engine_and_its_naive_peer(tmp_path: Path) -> None:
    """`tally bench engine --json` reports the durable figures, the recovery (whose digest it
    checks itself) and the naive fdatasync-per-transfer peer with the ratio between them."""
    done = tally("bench", "engine", "--accounts", "5000", "--seconds", "1", "--single-tasks",
                 "50", "--snapshot-accounts", "5000", "--data", str(tmp_path / "data"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("durable_transfers_per_s", "commit_latency_ms_p99",
                "single_submit_transfers_per_s", "recovery_records_per_s"):
        assert report[key] > 0, key
    assert report["snapshot_accounts"] == 5000 and report["snapshot_bytes"] > 0
    assert report["recovered_digest_matches"] is True
    naive = report["naive_durable_transfers_per_s"]
    assert naive > 0
    # The ratio is of the unrounded rates, rounded to 0.1; the reported naive rate is
    # rounded to a whole transfer, which on a slow, shared disk (a few hundred per second)
    # moves the ratio by up to ratio / (2 * naive): the two errors add up.
    ratio = report["durable_transfers_per_s"] / naive
    assert abs(report["engine_vs_naive"] - ratio) <= 0.05 + ratio / naive + 1e-9


def test_bench_dayend_collects_every_loan_in_full_or_in_part(tmp_path: Path) -> None:
    """`tally bench dayend --loans N --json` times the day-end's loans step: every loan
    has an instalment due on the day and is collected from (two in three in full, every
    third short of funds in part, one in 900 of those already overdue: its penalty is
    paid first and it stays overdue); what was taken adds up by part. More loans than
    accounts is a usage error; `--loans 0` has no loans step to run."""
    done = tally("bench", "dayend", "--accounts", "3000", "--loans", "2000", "--data",
                 str(tmp_path / "data"), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loans"] == report["loans_due"] == report["loans_collected"] == 2000
    assert report["loans_short"] == 666  # loans 2, 5, ..., 1997
    assert report["loans_overdue_before"] == report["loans_overdue"] == 3  # 2, 902, 1802
    assert report["loan_collection_s"] > 0 and report["loans_per_s"] > 0
    assert report["loan_collection_s"] >= report["loan_terms_packed_s"] >= 0
    parts = ("principal", "interest", "penalty")
    assert report["collected_minor"] == sum(report[f"collected_{p}_minor"] for p in parts)
    assert report["collected_penalty_minor"] > 0 and report["loan_chunks"] == 1
    assert report["settlement_transfers"] == 3000  # the settlement ran as before

    too_many = tally("bench", "dayend", "--accounts", "100", "--loans", "101", "--json")
    assert too_many.returncode == 2 and "--loans 101" in too_many.stderr
    none = tally("bench", "dayend", "--accounts", "100", "--loans", "0", "--json")
    assert none.returncode == 0, none.stderr
    assert json.loads(none.stdout.strip().splitlines()[-1])["loans"] == 0


def test_page_judges_targets_on_the_median_of_runs_of_the_same_code() -> None:
    """Three runs of one command on one commit: the page lists them and judges the target on
    their median (here met although one run missed); a run of other code stands alone."""
    from core.bench.page import render

    def run(name: str, rate: int, version: str) -> dict[str, object]:
        return {"_file": name, "benchmark": "engine", "date": "2026-11-22",
                "machine": "m", "command": "tally bench engine", "code_version": version,
                "durable_transfers_per_s": rate}  # fmt: skip

    reports = [run("a.json", 1_200_000, "c1"), run("b.json", 900_000, "c1"),
               run("c.json", 1_100_000, "c1")]  # fmt: skip
    page = render(reports)
    assert "The 3 runs of this command" in page
    assert "| `durable_transfers_per_s` | 1,200,000 | 900,000 | 1,100,000 | 1,100,000 |" in page
    assert ">= 1,000,000: met |" in page.split("The 3 runs")[1]
    alone = render([*reports, run("d.json", 900_000, "c2")])
    assert "runs of this command" not in alone
    assert "| `durable_transfers_per_s` | 900,000 | >= 1,000,000: NOT met |" in alone


def test_page_sets_this_code_against_other_code_run_the_same_day() -> None:
    """Runs of the same command on two commits the same day, saved to different
    directories: the newest code's section has a before/after table of medians and their
    ratio; a run on another day, or of another command, is left out of it."""
    from core.bench.page import render

    def run(name: str, rate: int, version: str, **changes: str) -> dict[str, object]:
        report: dict[str, object] = {
            "_file": name, "benchmark": "engine", "date": "2026-12-06", "machine": "m",
            "command": f"tally bench engine --seconds 10 --save /tmp/{version}",
            "code_version": version, "durable_transfers_per_s": rate,
        }  # fmt: skip
        report.update(changes)
        return report

    reports = [
        run("a.json", 1_000_000, "before"), run("b.json", 1_100_000, "after"),
        run("c.json", 1_200_000, "before"), run("d.json", 1_300_000, "after"),
        run("e.json", 5_000_000, "older", date="2026-12-05"),
        run("f.json", 9_000_000, "other", command="tally bench engine --seconds 99"),
        run("g.json", 1_200_000, "after"),
    ]  # fmt: skip
    page = render(reports)
    assert "This code (`after`, 3 runs) against `before` (2 runs)" in page
    assert "| `durable_transfers_per_s` | 1,100,000 | 1,200,000 | 1.091 |" in page
    assert "`older`" not in page.split("## History")[0]
    assert "`other`" not in page.split("## History")[0]


def test_simulator_reports_without_importing_a_benchmark() -> None:
    """The simulator's report and command line get the machine, code version and report
    saving from core.reports: importing them loads no module of core.bench."""
    probe = (
        "import sys\n"
        "import sim.cli, sim.report\n"
        "print(sorted(m for m in sys.modules if m.startswith('core.bench')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_saved_report_records_machine_code_version_and_a_timestamped_name(
    tmp_path: Path,
) -> None:
    """save_report writes `<benchmark>-<timestamp>.json` holding the figures and the code
    version of this checkout (a commit, possibly -dirty, never "unknown" inside git)."""
    from core.reports import code_version, machine_description, save_report

    assert "cores" in machine_description()
    save_report({"benchmark": "probe", "figure": 1}, str(tmp_path))
    (saved,) = tmp_path.glob("probe-*.json")
    report = json.loads(saved.read_text())
    assert report["figure"] == 1
    assert report["code_version"] == code_version() != "unknown"
    assert len(report["code_version"].removesuffix("-dirty")) == 40


def test_page_keeps_a_section_per_server_of_the_front_end_benchmark() -> None:
    """`tally bench http --workers` runs of hypercorn and of uvicorn each keep their
    section (the newest of each), so a uvicorn run saved last does not hide the
    hypercorn figures (the 1.4x target is hypercorn's)."""
    from core.bench.page import render

    def run(name: str, servers: str, ratio: float) -> dict[str, object]:
        return {"_file": name, "benchmark": "http_workers", "date": "2026-12-08",
                "machine": "m", "code_version": "c1",
                "command": f"tally bench http --servers {servers} --workers 1,2",
                "hypercorn_workers2_vs_single_process": ratio}  # fmt: skip

    page = render([run("h.json", "hypercorn", 1.5), run("u.json", "uvicorn", 0.9)])
    sections = page.split("## History")[0]
    assert "(hypercorn)\n" in sections and "(uvicorn)\n" in sections, sections
    assert "`benchmarks/h.json`" in sections and "`benchmarks/u.json`" in sections
