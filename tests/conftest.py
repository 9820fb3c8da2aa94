"""Shared pytest setup: the Hypothesis profile named by HYPOTHESIS_PROFILE (default `dev`).

- dev: quick enough to run on every change.
- ci: fewer examples, to stay inside CI's time budget; prints a blob to reproduce a failure.
- thorough: for a long run before a release or after touching a kernel.

No profile has a deadline: kernel builds, worker threads and a shared 2-core machine make
single-example timings noise, and a flaky deadline failure hides real ones.
"""

import os

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
