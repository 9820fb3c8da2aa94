"""Determinism: the same seed and code give the same report digest and the same ledgers;
another seed gives another digest. The seed is in every assertion message."""

from __future__ import annotations

from typing import Any

from sim.api import simulate
from sim.model import SimConfig


def report(seed: int, scenario: str = "dc1-outage") -> dict[str, Any]:
    config = SimConfig(
        users=5_000, hours=0.1, seed=seed, scenario=scenario, postings_per_user=400, quiet=True
    )
    result, _ = simulate(config)
    return result


def test_same_seed_same_digest() -> None:
    """Two runs with seed 11 agree on the report digest, every ledger digest and every count."""
    first, second = report(11), report(11)
    assert first["digest"] == second["digest"], "seed=11"
    assert first["state_digests"] == second["state_digests"], "seed=11"
    assert first["kernel_digests"] == second["kernel_digests"], "seed=11"
    assert first["failover_list"] == second["failover_list"], "seed=11"


def test_different_seed_different_digest() -> None:
    """Seeds 11 and 12 give different traffic, so different ledgers and digests."""
    first, other = report(11), report(12)
    assert first["digest"] != other["digest"], "seeds 11, 12"
    assert first["state_digests"]["dc1"] != other["state_digests"]["dc1"], "seeds 11, 12"


def test_digest_ignores_the_machine() -> None:
    """Wall time, speed, memory and code version are reported but are not part of the digest."""
    from sim.report import report_digest

    result = report(11)
    altered = result | {
        "wall_s": 1e9,
        "simulated_to_wall_ratio": 0.0,
        "peak_rss_gib": 99.0,
        "code_version": "x",
    }
    assert report_digest(altered) == result["digest"]
    assert report_digest(result | {"postings": result["postings"] + 1}) != result["digest"]


def test_random_faults_are_drawn_from_the_seed() -> None:
    """FoundationDB-style faults: the same seed draws the same faults, another seed others."""
    first, again, other = (
        report(5, "random-faults"),
        report(5, "random-faults"),
        report(6, "random-faults"),
    )
    assert first["faults"] == again["faults"], "seed=5"
    assert first["faults"] != other["faults"], "seeds 5, 6"
    assert first["acknowledged_lost"] == 0 and other["acknowledged_lost"] == 0, "seeds 5, 6"
