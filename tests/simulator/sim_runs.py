"""The default test scale of the simulator's tests, and one cached run per case.

20,000 customers for a quarter of an hour at 500 postings per customer per day (about 90
transfers a second, so a lost batch is never empty), through the default topology, with a
fixed seed. The cache lives here, in one module every test file imports by the same name,
so a scenario run once serves every test file that asks for it.
"""

from __future__ import annotations

import functools
from typing import Any

from sim.api import simulate
from sim.model import SimConfig
from sim.simulation import Simulation

SEED = 7
USERS = 20_000
HOURS = 0.25
POSTINGS_PER_USER = 500.0


def scaled_config(
    scenario: str, plant_bug: str | None = None, seed: int = SEED, profile: str | None = None
) -> SimConfig:
    """A run of `scenario` (a name or a file) at the default test scale."""
    return SimConfig(
        users=USERS,
        hours=HOURS,
        seed=seed,
        scenario=scenario,
        postings_per_user=POSTINGS_PER_USER,
        quiet=True,
        plant_bug=plant_bug,
        profile=profile,
    )


@functools.cache
def run(
    scenario: str, plant_bug: str | None = None, seed: int = SEED
) -> tuple[dict[str, Any], Simulation]:
    """One run at the default test scale (`plant_bug`: a name of sim/bugs.py)."""
    return simulate(scaled_config(scenario, plant_bug, seed))
