"""The simulated day crosses midnight and runs the real day-end; the interest checker verifies it.

`quarter-end-dayend` opens at 23:50 on 2026-12-20, a settlement day, and crosses into the
21st with the campaign's midnight burst: at midnight the primary accrues the day's
interest, settles the quarter (one INTEREST transfer per account), pays the fixed
deposits maturing on the 21st and rolls the counters over, as replicated entries; the
interest checker (sim/interest.py) recomputes every amount with ledger/interest.py
arithmetic over the balances it read before the day-end. At the default test scale
(tests/simulator/sim_runs.py), except where a test needs a run of its own.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from ledger.constants import INTEREST_EXPENSE_ID
from ledger.deposits import FD_CLOSED, FD_OPEN, demand_row_view, fixed_row_view
from ledger.interest import UNITS_PER_FEN, day_of_date, settlement_period, term_interest
from ledger.records import account_view
from ledger.types import AccountKind
from sim.api import simulate
from sim.model import SimConfig, SimError, load_scenario, load_topology
from sim.simulation import Simulation
from tests.simulator.sim_runs import run, scaled_config

SCENARIO = "quarter-end-dayend"
DAY = day_of_date(datetime.date(2026, 12, 20))
PERIOD = settlement_period(DAY)


def test_the_day_end_runs_at_midnight_and_every_interest_posting_checks_out() -> None:
    """One day-end, for Dec 20, on the primary, before the first posting of the 21st:
    accrual for every earning account, the quarter's settlement, maturities; the checker
    saw them (fails if the day-end did not run: nothing would be accrued or posted) and
    found every amount as expected, on every DC."""
    report, _ = run(SCENARIO)
    assert report["verdict"]["pass"], report["verdict"]["failures"]
    assert report["verdict"]["invariants"]["interest_as_expected"]
    assert report["dayends"] == 1
    [dayend] = report["deposits"]["runs"]
    assert (dayend["day"], dayend["dc"], dayend["resumed"]) == (DAY, "dc1", False)
    assert dayend["at_ns"] == 600 * 10**9  # local midnight, 10 minutes into the window
    assert dayend["settlement_period"] == PERIOD
    findings = report["deposits"]["findings"]
    assert findings["mismatches"] == 0 and findings["failures"] == []
    # Accrual: most of the 20,000 Class II accounts (and the Class III and merchants) earn.
    assert findings["accrued_accounts"] == report["interest_accrued_accounts"] > 20_000
    # Settlement: one posting per settled account (no Class III reached its cap here).
    assert findings["settlement_postings"] == dayend["settlement_transfers"] > 20_000
    assert findings["settled_accounts"] == findings["settlement_postings"]
    assert findings["settlement_fen"] > 0
    # Maturities: the population's deposits due on the 21st were paid or rolled over.
    assert report["maturities_paid"] == dayend["maturities_paid"] + dayend["rollovers"] >= 1
    per_dc = report["deposits"]["per_dc"]
    assert set(per_dc) == {"dc1", "dc2", "dc3"}
    for name, dc in per_dc.items():
        assert dc["accrued_day"] == DAY, name
        assert dc["interest_expense_fen"] == findings["settlement_fen"] + dc["matured_interest_fen"]
        assert dc["settled_fen"] == findings["settlement_fen"], name
    assert report["converged"] and report["money_conserved"] and report["limits_respected"]


def test_the_ledger_agrees_with_an_account_by_account_recount() -> None:
    """Read the final primary's rows one by one (ledger/deposits.py views, no numpy): every
    demand account settled for the period has no units left and was paid once; the
    interest-expense account paid exactly what the rows say; every deposit that matured
    is closed with its principal paid out, or was rolled over for its term."""
    report, sim = run(SCENARIO)
    ledger = sim.dcs[report["final_primary"]].ledger
    paid = settled = 0
    for slot in range(ledger.account_count):
        account = account_view(ledger.account_row(slot))
        row = ledger.deposit_row_at(slot)
        if account.kind in (AccountKind.CLASS_II, AccountKind.CLASS_III, AccountKind.SAVINGS):
            demand = demand_row_view(row)
            if demand.period_settled == PERIOD:
                settled += 1
                assert demand.accrued_units == 0, slot
                assert demand.interest_paid_total > 0, slot
            paid += demand.interest_paid_total
        elif account.kind == AccountKind.FIXED_DEPOSIT:
            fixed = fixed_row_view(row)
            assert fixed.flags & FD_OPEN, slot
            if fixed.flags & FD_CLOSED:
                # Paid out; what the day's traffic added to the account after the opening
                # (the generator's "deposit" postings) is not the row's and stays.
                assert fixed.maturity_day <= DAY + 1
                assert account.credits_posted - account.debits_posted >= 0, slot
            else:
                assert fixed.maturity_day > DAY + 1, slot
    assert settled == report["deposits"]["findings"]["settled_accounts"]
    expense = account_view(ledger.account_row(ledger.account_slot(INTEREST_EXPENSE_ID)))
    matured = report["deposits"]["per_dc"][report["final_primary"]]["matured_interest_fen"]
    assert expense.debits_posted - expense.credits_posted == paid + matured


def test_a_wrong_interest_amount_is_caught() -> None:
    """The planted bug pays one fen too much on the first transfer of each settlement
    chunk: the checker names the accounts, the invariant fails, the verdict fails."""
    report, _ = run(SCENARIO, "interest-one-fen-more")
    assert not report["verdict"]["pass"]
    assert not report["verdict"]["invariants"]["interest_as_expected"]
    failures = report["deposits"]["findings"]["failures"]
    assert any("settlement of period" in line and "expected" in line for line in failures)
    # The settlement entries make one chunk each of at most 8189 transfers: one fen each.
    chunks = report["deposits"]["runs"][0]["settlement_entries"]
    clean, _ = run(SCENARIO)
    assert (
        report["deposits"]["findings"]["settlement_fen"]
        == clean["deposits"]["findings"]["settlement_fen"] + chunks
    )


def test_a_day_end_that_never_ran_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the day-end switched off the run still crosses midnight, and the checker's
    end-of-run check says the day's day-end did not run."""
    monkeypatch.setattr(Simulation, "_run_dayend", lambda *args, **kwargs: None)
    report, _ = simulate(scaled_config(SCENARIO))
    assert report["dayends"] == 0
    assert not report["verdict"]["invariants"]["interest_as_expected"]
    failures = report["deposits"]["findings"]["failures"]
    assert any(f"the day-end of day {DAY} did not run" in line for line in failures)


def test_a_wrong_accrual_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog whose accrual table pays a different rate than the catalog states (the
    kernel then accrues the wrong units): the checker's own arithmetic disagrees."""
    from limits.deposits import DepositCatalog

    real = DepositCatalog.accrual_rates

    def doubled(self: DepositCatalog, day: int, rules: object) -> bytes:
        table = bytearray(real(self, day, rules))  # type: ignore[arg-type]
        for offset in range(0, len(table), 16):
            rate = int.from_bytes(table[offset : offset + 8], "little")
            table[offset : offset + 8] = (rate * 2).to_bytes(8, "little")
        return bytes(table)

    monkeypatch.setattr(DepositCatalog, "accrual_rates", doubled)
    report, _ = simulate(scaled_config(SCENARIO))
    failures = report["deposits"]["findings"]["failures"]
    assert any("accrual wrong on" in line for line in failures), failures
    assert not report["verdict"]["pass"]


def test_same_seed_same_digest_with_the_day_end() -> None:
    """The run is deterministic through the day-end: a second run of the same seed gives the
    same digest and the same day-end figures."""
    first, _ = run(SCENARIO)
    second, _ = simulate(scaled_config(SCENARIO))
    assert second["digest"] == first["digest"]
    assert second["deposits"] == first["deposits"]


def test_a_failover_at_midnight_leaves_one_day_end(tmp_path: Path) -> None:
    """The primary dies right after its day-end, before shipping it: DC2 is promoted, runs
    the day-end of Dec 20 itself (its log has none of DC1's), DC1 comes back and is
    resynced; every DC ends with one accrual and one settlement per account."""
    scenario = tmp_path / "midnight-failover.toml"
    scenario.write_text(
        'name = "midnight-failover"\n'
        'traffic = "campaign"\n'
        "hours = 0.25\n"
        "start = 2026-12-20T23:50:00\n"
        "[[faults]]\n"
        'kind = "dc_outage"\n'
        'target = "dc1"\n'
        'at = "600s"\n'
        'duration = "120s"\n'
    )
    report, _ = simulate(scaled_config(str(scenario)))
    assert report["failovers"] == 1 and report["converged"], report["verdict"]["failures"]
    assert report["verdict"]["invariants"]["interest_as_expected"], report["deposits"]
    runs = report["deposits"]["runs"]
    assert [run["day"] for run in runs] == [DAY] * len(runs)
    assert "dc2" in {run["dc"] for run in runs}
    for name, dc in report["deposits"]["per_dc"].items():
        assert dc["accrued_day"] == DAY, name
    assert report["dayends"] == 1


def test_start_is_validated() -> None:
    """--start and a scenario's `start` are a local date and time, refused otherwise."""
    with pytest.raises(SimError, match="--start"):
        SimConfig(start="2026-13-01T00:00").check()
    with pytest.raises(SimError, match="without an offset"):
        SimConfig(start="2026-12-20T23:50:00+08:00").check()


def test_the_maturity_amounts_are_term_interest() -> None:
    """Each maturity the day-end paid is principal plus `term_interest` of the row the
    deposit was opened with (checked here from the report's total and the rows)."""
    report, sim = run(SCENARIO)
    total = report["deposits"]["findings"]["maturity_interest_fen"]
    assert total > 0
    ledger = sim.dcs[report["final_primary"]].ledger
    recount = 0
    assert sim.interest_checker is not None
    for (slot, maturity), interest in sim.interest_checker.maturity_interest.items():
        row = fixed_row_view(ledger.deposit_row_at(slot))
        if row.flags & FD_CLOSED:
            assert row.maturity_day == maturity
            assert interest == term_interest(row.principal, row.rate, row.term_months)
        recount += interest
    assert recount == total


def test_a_scenario_start_that_is_not_a_local_time_is_refused(tmp_path: Path) -> None:
    """A scenario's `start` is refused before the run, naming the file and the key."""
    scenario = tmp_path / "bad-start.toml"
    scenario.write_text('name = "bad-start"\nstart = "midnight"\n')
    with pytest.raises(SimError, match=r"bad-start\.toml: `start`: expected a local date"):
        simulate(scaled_config(str(scenario)))


def test_a_trace_of_the_quarter_end_replays_with_its_day_end(tmp_path: Path) -> None:
    """A trace keeps the start it was generated with: replayed, the window crosses the
    same midnight and the same day-end runs, checked the same way."""
    trace = tmp_path / "quarter-end.trace"
    config = scaled_config(SCENARIO)
    config.save_trace = str(trace)
    original, _ = simulate(config)
    replayed, _ = simulate(scaled_config(SCENARIO), replay_source=str(trace))
    assert replayed["traffic"] == "trace"
    assert replayed["dayends"] == 1 and replayed["interest_mismatches"] == 0
    assert replayed["deposits"]["findings"] == original["deposits"]["findings"]


def test_a_day_end_cut_short_is_finished_once_by_the_next_primary() -> None:
    """The day-end stops after its accrual and two settlement chunks (a primary lost in
    the middle: the rest never reached its successor); the successor's resumed run
    settles the rest and pays the maturities: every account is settled once, with the
    amount the checker computed before anything ran, and the checker finds no mismatch."""
    import numpy as np

    from sim.dayend import Settlement, accrual_maker
    from sim.interest import DEMAND_DTYPE, rows_of

    config = scaled_config(SCENARIO)
    config.users = 4_000
    sim = Simulation(config, load_scenario(SCENARIO), load_topology(None))
    dc = sim.dcs[sim.topology.primary]
    ledger = dc.ledger
    assert sim.catalog is not None and sim.rules is not None and sim.interest_checker
    checker = sim.interest_checker
    now_ns = 600 * 10**9
    sim.in_dayend = True
    upfront = checker.before(ledger, DAY)  # what every account is owed, before anything ran
    sim._apply_made(dc, accrual_maker(sim.catalog, sim.rules, DAY), now_ns)
    make = Settlement(PERIOD, chunk=500).make
    assert sim._apply_made(dc, make, now_ns)[0] and sim._apply_made(dc, make, now_ns)[0]
    rows = rows_of(ledger, DEMAND_DTYPE)
    assert 0 < int(np.count_nonzero(rows["period_settled"] == PERIOD)) <= 1000
    sim.in_dayend = False
    sim._run_dayend(dc, DAY, now_ns, resumed=True)
    findings = checker.findings
    assert findings.mismatches == 0, findings.failures
    owed = np.where(
        upfront.expected_units > 0,
        (upfront.expected_units + UNITS_PER_FEN // 2) // UNITS_PER_FEN,
        0,
    )
    rows = rows_of(ledger, DEMAND_DTYPE)[: upfront.count]
    due = owed > 0
    assert np.all(rows["period_settled"][due] == PERIOD)
    assert np.array_equal(rows["interest_paid_total"][due], owed[due])
    # The resumed run settled the rest: all but the first two chunks' 1000 accounts.
    assert findings.settled_accounts == int(due.sum()) - 1000
    assert checker.final(dc.name, ledger, None)["interest_expense_fen"] > 0
    assert findings.mismatches == 0, findings.failures


def test_a_class_iii_account_at_its_cap_settles_the_excess_to_clearing() -> None:
    """A Class III account one fen below its 2,000 CNY cap earns more than a fen: the
    settlement pays one fen to it and the rest to the clearing account (it is bound to an
    external card), and the checker accepts exactly that split."""
    from cext import simgen
    from ledger.constants import CLEARING_ID
    from ledger.records import pack_transfer, transfer_view
    from ledger.types import TransferCode

    config = scaled_config(SCENARIO)
    config.users = 4_000
    sim = Simulation(config, load_scenario(SCENARIO), load_topology(None))
    dc = sim.dcs[sim.topology.primary]
    ledger = dc.ledger
    assert sim.rules is not None and sim.interest_checker is not None
    cap = sim.rules.products[3].balance_cap_minor
    slot = next(
        slot
        for slot in range(ledger.account_count)
        if account_view(ledger.account_row(slot)).kind == AccountKind.CLASS_III
    )
    account = account_view(ledger.account_row(slot))
    top_up = cap - 1 - (account.credits_posted - account.debits_posted)
    clearing = simgen.account_id(0, simgen.TAG_INTERNAL, simgen.INTERNAL_CLEARING_INDEX)
    transfer = pack_transfer(
        id=(1 << 100) + 1,
        debit_account_id=clearing,
        credit_account_id=account.id,
        amount=top_up,
        code=TransferCode.TOPUP_BOUND,
    )
    results, _, _ = ledger.create_transfers(transfer, dc.last_timestamp + 1, sim.first_day)
    assert results[0] == 0, results
    dc.last_timestamp += 1
    sim._run_dayend(dc, DAY, 600 * 10**9, resumed=False)
    findings = sim.interest_checker.findings
    assert findings.mismatches == 0, findings.failures
    excess = [
        transfer_view(ledger.record_at(seq))
        for seq in range(ledger.log_tail, ledger.log_count)
        if transfer_view(ledger.record_at(seq)).code == TransferCode.INTEREST
        and transfer_view(ledger.record_at(seq)).credit_slot == ledger.account_slot(CLEARING_ID)
    ]
    assert len(excess) == 1 and excess[0].amount_posted > 0
    after = account_view(ledger.account_row(slot))
    assert after.credits_posted - after.debits_posted == cap
    assert findings.settlement_postings == findings.settled_accounts + 1
