"""Where the tests and the repository are, for tests in any tier folder below tests/."""

from __future__ import annotations

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent  # the helpers and process scripts live here
REPO_ROOT = TESTS_DIR.parent
