"""The simulated bank's loans: a loan book before the day, disbursements during it, the
day-end's collection at midnight, and the loan checker's verdict on all of them.

`quarter-end-dayend` opens at 23:50 on 2026-12-20 and crosses into the 21st: a fifth of the
population's loans (3% of the users) fall due on the 20th and some were in arrears
already; at midnight the primary's day-end collects them with the engine's
`LoanCollectionMaker` over the population's terms table, and the loan checker
(sim/loan_checker.py) recomputes every loan from its contract with `ledger.loans`. At the
default test scale (tests/simulator/sim_runs.py), except where a test needs a run of its
own (a failover at midnight with many disbursements, a day-end cut short).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from core.entries import EntryKind, post_with_rows_payload_fields
from ledger.constants import LOAN_FUNDING_ID
from ledger.interest import day_of_date
from ledger.loan_book import LoanFlags, loan_row_view
from ledger.loans import Method, schedule
from ledger.records import account_view, transfer_view
from ledger.types import TRANSFER_SIZE, TransferCode
from sim.api import simulate
from sim.cluster import DataCenter
from sim.loan_checker import Contract
from sim.loans import ORIGIN_NEW, LoanBook
from sim.model import SimConfig, SimError, load_scenario, load_topology
from sim.simulation import Simulation
from tests.simulator.sim_runs import SEED, run, scaled_config

SCENARIO = "quarter-end-dayend"
DAY = day_of_date(datetime.date(2026, 12, 20))
MIDNIGHT_FAILOVER = """name = "midnight-failover-loans"
traffic = "campaign"
hours = 0.25
start = 2026-12-20T23:50:00
[[faults]]
kind = "dc_outage"
target = "dc1"
at = "600s"
duration = "120s"
"""


def _loan_rows(book: LoanBook, dc: DataCenter) -> dict[int, bytes]:
    """Every loan's row on `dc` (by loan index), read one by one through the ledger."""
    rows = {}
    for loan in range(book.count):
        slot = dc.ledger.account_slot(book.account_id(loan))
        if slot >= 0:
            rows[loan] = dc.ledger.deposit_row_at(slot)
    return rows


def _collections(dc: DataCenter) -> list[tuple[int, int]]:
    """(id, amount) of the LOAN_REPAYMENT postings in `dc`'s log."""
    found = []
    for seq in range(dc.ledger.log_tail, dc.ledger.log_count):
        record = transfer_view(dc.ledger.record_at(seq))
        if record.code == TransferCode.LOAN_REPAYMENT and record.result == 0:
            found.append((record.id, record.amount_posted))
    return found


def test_the_day_end_collects_the_instalments_due_and_the_checker_agrees() -> None:
    """At midnight the primary collects every instalment due on Dec 20 and the arrears of
    the loans already overdue, as far as their holders' Class II accounts allow; the loan
    checker's model agrees with every posting and row, on every DC (fails if the loan
    step did not run: nothing would be collected)."""
    report, _ = run(SCENARIO)
    verdict = report["verdict"]
    assert verdict["pass"] and verdict["invariants"]["loans_as_expected"], verdict["failures"]
    loans = report["loans"]
    population = loans["population"]
    # 3% of 20,000 users hold a loan; a fifth are due on the 20th, some were overdue.
    assert 500 <= population["loans"] <= 700, population
    assert population["due_today"] > 50 and population["overdue"] > 10, population
    findings = loans["findings"]
    assert findings["mismatches"] == 0 and findings["failures"] == []
    assert findings["runs"] == 1
    assert findings["fell_due"] >= population["due_today"]
    assert report["loans_collected"] == findings["collections"] > 100
    assert 0 < findings["short_of_funds"] < findings["loans_touched"]
    assert findings["principal_fen"] > 0 and findings["interest_fen"] > 0
    assert findings["penalty_fen"] > 0  # the overdue loans' penalty, on top of arrears
    [dayend] = report["deposits"]["runs"]
    assert dayend["loans_touched"] == findings["loans_touched"]
    assert dayend["loans_collected"] == findings["collections"]
    assert dayend["loan_collected_fen"] == findings["collected_fen"]
    assert dayend["loan_terms_skipped"] == 0
    per_dc = loans["per_dc"]
    assert set(per_dc) == {"dc1", "dc2", "dc3"}
    assert len({str(sorted(dc.items())) for dc in per_dc.values()}) == 1, per_dc
    assert report["loans_overdue"] == per_dc["dc1"]["overdue"] > 0


def test_each_instalment_collected_in_full_is_the_schedules() -> None:
    """For every population loan that paid its Dec 20 instalment in full, recomputed here
    with `ledger.loans.schedule` from its contract: the row moved to the next instalment
    with exactly the schedule's remaining principal, and the money collected was the
    instalment's total (principal, interest and monthly fee)."""
    report, sim = run(SCENARIO)
    book, checker = sim.loan_book, sim.loan_checker
    assert book is not None and checker is not None
    ledger = sim.dcs[report["final_primary"]].ledger
    checked = 0
    for loan in range(book.population_count):
        record = book.contracts[loan]
        contract = Contract(*(int(record[name]) for name in Contract._fields))
        paid, unpaid = int(record["paid"]), int(record["unpaid"])
        plan = schedule(
            contract.principal,
            contract.rate,
            contract.term,
            Method.EQUAL_INSTALMENT if contract.method == 1 else Method.EQUAL_PRINCIPAL,
            contract.start_day,
            contract.repayment_day,
            monthly_fee_minor=contract.monthly_fee,
        )
        if unpaid or paid >= len(plan.instalments) or plan.instalments[paid].due_day != DAY:
            continue
        row = loan_row_view(ledger.deposit_row_at(int(record["slot"])))
        assert row.collected_day == DAY, (loan, row)
        if row.arrears_principal_minor or row.arrears_interest_minor:
            continue  # short of funds: checked by the model, not here
        instalment = plan.instalments[paid]
        following = plan.instalments[paid + 1 :]
        assert row.scheduled_minor == instalment.remaining_minor, (loan, row)
        assert row.fallen_due == paid + 1 and row.overdue_since == 0, (loan, row)
        assert row.next_due_day == (following[0].due_day if following else 0), (loan, row)
        assert bool(row.flags & LoanFlags.CLOSED) == (not following), (loan, row)
        assert int(checker.collected[loan]) == instalment.total_minor, loan
        checked += 1
    assert checked > 50


def test_a_collection_whose_row_is_not_written_is_caught() -> None:
    """The planted bug drops the row write of the first paying loan of each collection
    chunk (its money moves, its row still says the instalment is due): the checker names
    the row, the principal identity breaks, the verdict fails on `loans_as_expected`."""
    report, _ = run(SCENARIO, "loan-row-not-written")
    verdict = report["verdict"]
    assert not verdict["pass"]
    assert not verdict["invariants"]["loans_as_expected"]
    assert all(ok for name, ok in verdict["invariants"].items() if name != "loans_as_expected")
    failures = report["loans"]["findings"]["failures"]
    assert any("differ from the model after the loan step" in line for line in failures)
    assert any("repaid + outstanding" in line for line in failures), failures
    clean, _ = run(SCENARIO)
    assert clean["verdict"]["invariants"]["loans_as_expected"]


def test_loans_disbursed_and_collected_across_a_failover(tmp_path: Path) -> None:
    """With many disbursements during the window, DC1 runs the day-end at midnight and
    dies: DC2 is promoted, finds every disbursement acknowledged before (the checker
    looks), resumes the day-end (nothing is collected twice: its part that reached DC2 is
    left alone), and the disbursements DC1 never answered are retried there with the same
    ids; at the end every acknowledged disbursement is on every DC once, the loan-funding
    account lent and took back exactly the model's amounts, and every loan is the
    model's. (A day-end cut short half way: the next test.)"""
    scenario = tmp_path / "midnight-failover-loans.toml"
    scenario.write_text(MIDNIGHT_FAILOVER)
    config = scaled_config(str(scenario))
    config.loans_per_user_day = 0.5  # 10,000 a day: about 100 in the window
    report, sim = simulate(config)
    verdict = report["verdict"]
    context = f"seed={SEED} failures={verdict['failures']}"
    assert report["failovers"] == 1 and report["converged"], context
    assert verdict["pass"] and verdict["invariants"]["loans_as_expected"], context
    loans = report["loans"]
    made = loans["disbursements"]
    assert made["made"] > 50, made
    assert made["acknowledged"] == report["loans_disbursed"] > 50, made
    assert made["gave_up"] == made["refused"] == 0, made
    assert made["retried"] > 0, made  # the ones in flight when DC1 died
    findings = loans["findings"]
    assert findings["disbursements_verified"] > 0  # acknowledged before the failover, found
    assert findings["disbursements_lost"] == findings["disbursements_lost_rpo"] == 0
    assert findings["runs"] == 2  # DC1's, lost with it, and DC2's
    assert {run["dc"] for run in report["deposits"]["runs"]} == {"dc1", "dc2"}
    assert report["loans_collected"] > 100
    book, disbursements = sim.loan_book, sim.disbursements
    assert book is not None and disbursements is not None
    acknowledged = disbursements.acknowledged_loans()
    final = sim.dcs[report["final_primary"]]
    rows = {name: _loan_rows(book, dc) for name, dc in sim.dcs.items()}
    assert rows["dc1"] == rows["dc2"] == rows["dc3"]
    for loan in acknowledged:
        assert int(book.contracts[loan]["origin"]) == ORIGIN_NEW
        row = loan_row_view(rows[final.name][loan])
        assert row.flags == LoanFlags.OPEN and row == book.row_of(loan), (loan, row)
    # The loan-funding account lent exactly the book's amounts and took back the model's.
    funding = account_view(final.ledger.account_row(final.ledger.account_slot(LOAN_FUNDING_ID)))
    per_dc = loans["per_dc"][final.name]
    assert funding.debits_posted - funding.credits_posted == per_dc["funding_net_fen"]
    lent = sum(int(book.contracts[loan]["ledger_amount"]) for loan in rows[final.name])
    assert per_dc["funding_net_fen"] == lent - per_dc["collected_fen"]


def _is_collection(entry: object) -> bool:
    kind = getattr(entry, "kind", None)
    if kind != EntryKind.POST_WITH_ROWS:
        return False
    transfers, _writes = post_with_rows_payload_fields(entry.payload)  # type: ignore[attr-defined]
    codes = {
        transfer_view(transfers, offset).code for offset in range(0, len(transfers), TRANSFER_SIZE)
    }
    return TransferCode.LOAN_REPAYMENT in codes


def test_a_loan_step_cut_short_is_finished_once_by_the_next_primary() -> None:
    """DC1 runs the day-end in chunks of 10 loans; DC2 receives it only up to its second
    collection chunk (the rest never left DC1) and, promoted, finishes it: the loans
    collected in the chunks it holds are left alone, every other one is collected once,
    and both DCs end with the same rows and the same collections, none twice."""
    config = scaled_config(SCENARIO)
    config.users = 4_000
    sim = Simulation(config, load_scenario(SCENARIO), load_topology(None))
    sim.loan_chunk = 10
    first, second = sim.dcs["dc1"], sim.dcs["dc2"]
    now_ns = 600 * 10**9
    sim._run_dayend(first, DAY, now_ns, resumed=False)
    chunks = [record.lsn for record in first.wal if _is_collection(record.entry)]
    assert len(chunks) >= 3, chunks
    for record in list(first.wal):
        if record.lsn > chunks[1]:
            break
        second.apply(record)
    held = len(_collections(second))
    assert 0 < held < len(_collections(first))
    sim._run_dayend(second, DAY, now_ns, resumed=True)
    checker, book = sim.loan_checker, sim.loan_book
    assert checker is not None and book is not None
    assert checker.findings.mismatches == 0, checker.findings.failures
    assert checker.findings.runs == 2
    assert _loan_rows(book, first) == _loan_rows(book, second)
    collected = _collections(second)
    assert sorted(collected) == sorted(_collections(first))
    assert len({transfer_id for transfer_id, _ in collected}) == len(collected)
    for dc in (first, second):
        checker.final(dc.name, dc.ledger, [])
    assert checker.findings.mismatches == 0, checker.findings.failures


def test_the_loans_are_deterministic() -> None:
    """The same seed gives the same loans, disbursements, collections and digest; another
    seed another population of loans."""

    def small(seed: int) -> dict[str, object]:
        config = scaled_config(SCENARIO, seed=seed)
        config.users = 4_000
        config.loans_per_user_day = 0.5
        return simulate(config)[0]

    first, again, other = small(11), small(11), small(12)
    assert first["digest"] == again["digest"], "seed=11"
    assert first["loans"] == again["loans"], "seed=11"
    assert first["loans"] != other["loans"], "seeds 11, 12"


def test_the_loan_options_are_validated() -> None:
    """--loan-share and --loans-per-user-day are refused out of range, before the run."""
    with pytest.raises(SimError, match="--loan-share"):
        SimConfig(loan_share=0.9).check()
    with pytest.raises(SimError, match="--loans-per-user-day"):
        SimConfig(loans_per_user_day=-1.0).check()
    overrides = SimConfig(loan_share=0.05, loans_per_user_day=0.01).population_overrides()
    assert overrides == {"loan_fraction": 0.05, "loan_disbursements_per_user_day": 0.01}
