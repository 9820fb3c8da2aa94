"""The simulator's parts on their own: input files, generators, the state digest, the charts."""

from __future__ import annotations

import math
from array import array

import pytest

from cext import simgen
from ledger.kernel import KernelLedger
from ledger.records import transfer_view
from ledger.types import TRANSFER_SIZE, AccountKind
from sim import plot, population, traffic
from sim.checker import state_digest
from sim.model import SimError, load_scenario, load_topology, parse_scenario, parse_topology
from sim.population import Population

SEED = 19


def test_default_topology_is_the_architecture() -> None:
    """DC1 primary and DC2 sync in region A, DC3 in region B a synchronous candidate (no
    nosync tag, as tally cluster runs it) but nofailover; cross-region by operator."""
    topology = load_topology()
    assert topology.primary == "dc1"
    assert [(dc.name, dc.region, dc.replication) for dc in topology.data_centers.values()] == [
        ("dc1", "a", "sync"),
        ("dc2", "a", "sync"),
        ("dc3", "b", "sync"),
    ]
    assert topology.data_centers["dc3"].nofailover
    assert topology.link_class("dc1", "dc2").latency_ns == 1_500_000
    assert topology.link_class("dc1", "dc3").latency_ns == 30_000_000
    assert topology.cross_region == "operator"


def test_topology_problems_are_all_reported() -> None:
    """Unknown keys and unsafe settings are refused, every problem on its own line."""
    document = load_topology().document
    broken = {
        **document,
        "failure_detector": {"lease_ms": 5000, "suspect_after_ms": 3000, "hartbeat_ms": 1},
    }
    with pytest.raises(SimError) as error:
        parse_topology(broken, "broken.toml")
    message = str(error.value)
    assert "`failure_detector.hartbeat_ms`: unknown key" in message
    assert "`failure_detector.lease_ms`: must be below suspect_after_ms" in message


def test_scenario_times_and_overrides() -> None:
    """Times are shares of the window or absolute; a scenario may override the topology."""
    scenario = parse_scenario(
        {
            "name": "x",
            "faults": [{"kind": "dc_outage", "target": "dc1", "at": "25%", "duration": "90s"}],
            "topology": {"failover": {"operator_delay_s": 60}},
            "expect": {"acknowledged_lost": 0},
        },
        "x.toml",
    )
    [fault] = scenario.faults
    assert fault.at.resolve_ns(4_000) == 1_000 and fault.duration is not None
    assert fault.duration.resolve_ns(1) == 90_000_000_000
    assert load_topology(None, scenario.topology_overrides).operator_delay_ns == 60_000_000_000
    with pytest.raises(SimError, match="unknown expectation"):
        parse_scenario({"name": "y", "expect": {"lost": 0}}, "y.toml")
    assert load_scenario("region-a-outage").faults[1].kind == "region_outage"


def test_requests_regenerate_identically() -> None:
    """A request's record is a pure function of its number: a retry resends the same bytes."""
    model = traffic.generated(
        Population(50_000, seed=SEED), "normal", None, 60, 50_000_000, SEED
    ).model
    assert model is not None
    first, again = bytearray(TRANSFER_SIZE * 100), bytearray(TRANSFER_SIZE * 100)
    model.fill_range(first, 0, 1_000, 100)
    packed = array("Q", [(seq << 8) | 3 for seq in range(1_000, 1_100)])
    model.fill_packed(again, 0, packed, 100)
    assert first == again
    assert transfer_view(first).id == simgen.request_id(1_000)


def test_mix_follows_domain() -> None:
    """Over 200,000 requests each kind's share is within a point of DOMAIN.md's mix (kinds
    that need a Class III account fall back to Class II for users without one)."""
    model = traffic.generated(
        Population(100_000, seed=SEED), "normal", None, 60, 50_000_000, SEED
    ).model
    assert model is not None
    counts = model.kind_counts(0, 200_000)
    shares = {
        name: 100 * count / 200_000 for name, count in zip(simgen.KIND_NAMES, counts, strict=True)
    }
    assert abs(shares["payment"] + shares["class_iii_payment"] - 59.5) < 1.0, shares
    assert abs(shares["topup_bound"] + shares["class_iii_topup"] - 17.5) < 1.0, shares
    assert abs(shares["withdraw_bound"] - 7) < 1.0 and abs(shares["receipt_external_in"] - 5) < 1.0


def test_traffic_curves_peak_like_the_domain_says() -> None:
    """A normal day peaks about 4x its average, a campaign day about 6-7x just after midnight,
    and the day's total is users x postings per user."""
    curve, info = traffic.rate_curve("normal", 1_000_000, None, 86_400)
    assert 3.5 < info["peak_to_average"] < 5 and abs(sum(curve) - 1_000_000) < 10
    curve, info = traffic.rate_curve("campaign", 1_000_000, None, 86_400)
    assert 6 < info["peak_to_average"] < 7.5 and abs(sum(curve) - 2_400_000) < 30
    assert max(range(86_400), key=curve.__getitem__) < 600


def test_population_is_what_the_predicates_say() -> None:
    """Accounts opened match the generators' own membership predicates, every one funded."""
    people = Population(4_000, seed=SEED)
    ledger = KernelLedger(account_capacity=people.account_capacity(1), transfer_capacity=1 << 16)
    _, counts = population.build(
        ledger, people, population.bank_rules(), 1_790_000_000 * 10**9, 9_000, quiet=True
    )
    class_iii = sum(
        simgen.user_has_account(SEED, simgen.TAG_CLASS_III, user, people.class_iii_fraction)
        for user in range(4_000)
    )
    assert counts["class_iii"] == class_iii and counts["class_ii"] == 4_000
    assert ledger.account_count == sum(counts.values())
    record = ledger.lookup_account(simgen.account_id(SEED, simgen.TAG_CLASS_II, 17))
    assert record is not None and record[54] == AccountKind.CLASS_II


def test_state_digest_agrees_with_the_kernel_digest() -> None:
    """The simulator's bulk state digest and `KernelLedger.digest()` agree on which ledgers are
    equal: a byte copy matches on both, one more transfer changes both."""
    people = Population(2_000, seed=SEED)
    first = KernelLedger(account_capacity=people.account_capacity(1), transfer_capacity=1 << 16)
    population.build(
        first, people, population.bank_rules(), 1_790_000_000 * 10**9, 9_000, quiet=True
    )
    second = KernelLedger(account_capacity=people.account_capacity(1), transfer_capacity=1 << 16)
    population.copy_ledger(second, first)
    assert state_digest(first) == state_digest(second) and first.digest() == second.digest()
    model = traffic.generated(people, "normal", None, 60, 50_000_000, SEED).model
    assert model is not None
    batch = bytearray(TRANSFER_SIZE)
    model.fill_range(batch, 0, 5, 1)
    second.create_transfers(batch, 1_790_000_001 * 10**9, 9_000)
    assert state_digest(first) != state_digest(second) and first.digest() != second.digest()


def test_png_charts_are_valid_images() -> None:
    """matplotlib draws the chart as a PNG of the asked size, NaN gaps and bars included."""
    data = plot.chart(
        "throughput",
        "per s",
        1.0,
        [
            plot.Series("a", [1.0, 2.0, math.nan, 4.0], plot.PALETTE[0]),
            plot.Series("b", [0, 3, 0, 1], plot.PALETTE[1], bars=True),
        ],
        [plot.Span(1.0, 2.0, "fault")],
        [plot.Mark(2.5, "failover")],
        width=320,
        height=160,
    )
    assert plot.read_png_size(data) == (320, 160)
    assert plot.clock_label(3_600 * 25 + 61) == "01:01"
    assert plot.clock_label(59.9, with_seconds=True) == "00:00:59"
