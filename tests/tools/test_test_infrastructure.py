"""The test suite's own safety nets: crash seeds, PostgreSQL failing rather than skipping,
per-test timeouts."""

from __future__ import annotations

import pytest

from tests import pg_helpers
from tests.conftest import CRASH_SEED_ENV, SLOW_TEST_TIMEOUT_S, crash_seed_for
from tests.repo_paths import TESTS_DIR

pytest_plugins = ["pytester"]

CONFTEST = TESTS_DIR / "conftest.py"
# An in-process run of pytest inside this one: without pytest-playwright (the console's
# browser tests), whose soft-assertion scope around every test cannot nest.
IN_PROCESS = ("-p", "no:cacheprovider", "-p", "no:playwright")


def test_crash_seed_is_fixed_by_default_random_on_demand_and_replayable() -> None:
    """Unset, each crash test gets the same seed every run (CI repeats its kills); `random`
    draws fresh ones; a number replays exactly that seed."""
    assert crash_seed_for("test_a", "") == crash_seed_for("test_a", "")
    assert crash_seed_for("test_a", "") != crash_seed_for("test_b", "")
    drawn = {crash_seed_for("test_a", "random") for _ in range(8)}
    assert len(drawn) > 1
    assert crash_seed_for("test_a", "12345") == 12345


def test_failing_crash_test_names_its_seed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash test that fails has a report section giving the TALLY_CRASH_SEED that
    replays it; one that passes has none."""
    monkeypatch.setenv(CRASH_SEED_ENV, "777")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        "def test_fails(crash_seed):\n"
        "    assert crash_seed == 0\n"
        "def test_passes(crash_seed):\n"
        "    assert crash_seed == 777\n"
    )
    result = pytester.runpytest(*IN_PROCESS)
    result.assert_outcomes(passed=1, failed=1)
    section_headers = [line for line in result.outlines if "- crash test seed -" in line]
    assert len(section_headers) == 1, result.outlines
    result.stdout.fnmatch_lines(["*- crash test seed -*", f"{CRASH_SEED_ENV}=777 replays this run"])


def test_slow_tests_get_the_longer_timeout(pytester: pytest.Pytester) -> None:
    """A test marked slow without its own timeout gets SLOW_TEST_TIMEOUT_S; one that
    names its timeout keeps it; the others keep pyproject's default."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    slow: long\n")
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.slow\n"
        "def test_slow(request):\n"
        f"    assert request.node.get_closest_marker('timeout').args == ({SLOW_TEST_TIMEOUT_S},)\n"
        "@pytest.mark.slow\n"
        "@pytest.mark.timeout(5)\n"
        "def test_own(request):\n"
        "    assert request.node.get_closest_marker('timeout').args == (5,)\n"
        "def test_plain(request):\n"
        "    assert request.node.get_closest_marker('timeout') is None\n"
    )
    pytester.runpytest(*IN_PROCESS).assert_outcomes(passed=3)


def test_hang_fails_under_the_timeout(pytester: pytest.Pytester) -> None:
    """With a per-test timeout set, a test that hangs fails instead of stalling the run."""
    pytester.makepyfile("import time\ndef test_hangs():\n    time.sleep(60)\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--timeout", "1")
    result.assert_outcomes(failed=1)


def test_missing_postgresql_fails_unless_opted_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without initdb/pg_ctl a PostgreSQL test fails (CI never passes by skipping it); only
    TALLY_PG_OPTIONAL=1, a developer's opt-out, turns that into a skip."""
    monkeypatch.setattr(pg_helpers, "find_bin_directory", lambda: None)
    monkeypatch.delenv(pg_helpers.PG_OPTIONAL_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL binaries"):
        pg_helpers.require_postgresql_binaries()
    monkeypatch.setenv(pg_helpers.PG_OPTIONAL_ENV, "1")
    with pytest.raises(pytest.skip.Exception):
        pg_helpers.require_postgresql_binaries()
