"""Shared pytest setup: Hypothesis profiles, per-test timeouts, crash-test seeds, the
provider simulator.

The Hypothesis profile is named by HYPOTHESIS_PROFILE (default `dev`):

- dev: quick enough to run on every change.
- ci: fewer examples, to stay inside CI's time budget; prints a blob to reproduce a failure.
- thorough: for a long run before a release or after touching a kernel.

No profile has a deadline: kernel builds, worker threads and a shared 2-core machine make
single-example timings noise, and a flaky deadline failure hides real ones.
"""

import os
import random
import sys
import zlib
from collections.abc import Generator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# --- Per-test timeouts (pytest-timeout) -------------------------------------------------
# pyproject sets `timeout` (300 s) for every test, so a hang fails the run instead of
# eating CI's budget; tests marked slow get longer unless they name their own timeout.
SLOW_TEST_TIMEOUT_S = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))


# --- Crash-test seeds ------------------------------------------------------------------
# The kill moments of the crash tests come from a seed. By default each test has its own
# fixed seed (from its name), so CI runs the same kills every time; TALLY_CRASH_SEED=random
# draws a fresh one (to explore), TALLY_CRASH_SEED=<number> replays a run. A failing test's
# report names its seed.
CRASH_SEED_ENV = "TALLY_CRASH_SEED"
CRASH_SEED_KEY = pytest.StashKey[int]()


def crash_seed_for(test_name: str, setting: str) -> int:
    """The seed a crash test runs with, given its name and the TALLY_CRASH_SEED setting."""
    if setting == "random":
        return random.SystemRandom().randrange(1 << 32)
    if setting:
        return int(setting)
    return zlib.crc32(test_name.encode())


@pytest.fixture
def crash_seed(request: pytest.FixtureRequest) -> int:
    """The seed of this crash test's kill moments (see CRASH_SEED_ENV above)."""
    seed = crash_seed_for(request.node.name, os.environ.get(CRASH_SEED_ENV, ""))
    request.node.stash[CRASH_SEED_KEY] = seed
    print(f"crash test seed {seed} ({CRASH_SEED_ENV}={seed} replays this run)")
    return seed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    seed = item.stash.get(CRASH_SEED_KEY, None)
    if seed is not None and report.failed:
        report.sections.append(("crash test seed", f"{CRASH_SEED_ENV}={seed} replays this run"))
    return report


# --- The provider simulator ------------------------------------------------------------
# Customers are verified against real providers over HTTP: one simulator per test process
# (tests/provider_helpers.py, seed 17), started the first time a test needs it (a
# TallyServer, a Bank with providers, the `provider_url` fixture) and stopped at the end
# of the session. The helpers import core.providers only then, so tests that need no
# provider never start it.


def provider_url() -> str:
    """The base URL of the session's simulator (started now if it is not running)."""
    from tests.provider_helpers import provider_url as url

    return url()


@pytest.fixture(name="provider_url", scope="session")
def provider_url_fixture() -> str:
    return provider_url()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    helpers = sys.modules.get("tests.provider_helpers")
    if helpers is not None:
        helpers.stop_simulator()
