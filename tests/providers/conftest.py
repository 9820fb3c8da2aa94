"""Simulators for the provider tests: one per configuration, started once per session.

Each is a real `python -m core providers serve` subprocess on a free port; the tests
speak HTTP to it through `HttpProviders`, exactly as the services do.
"""

from collections.abc import Iterator

import pytest

from core.providers.sim import running_simulator

SEED = 17


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """A simulator with no drawn trouble and no drawn fraud: every answer is the world's."""
    with running_simulator(seed=SEED) as url:
        yield url


@pytest.fixture(scope="session")
def fraud_url() -> Iterator[str]:
    """Every ID's database photo is somebody else's, every card's reserved mobile differs,
    every SMS is lost."""
    with running_simulator(
        seed=SEED, photo_mismatch_rate=1.0, card_mismatch_rate=1.0, sms_loss_rate=1.0
    ) as url:
        yield url
