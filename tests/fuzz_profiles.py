"""Hypothesis budgets for the fuzz tests: small in CI, larger on demand.

    STEPRL_FUZZ_PROFILE=long PYTHONPATH=$PWD python -m pytest tests/test_fuzz_parsers.py tests/test_fuzz_server.py

Profiles: ``ci`` (default, 60 examples per test), ``dev`` (500), ``long`` (10,000). Deadlines are off
everywhere: the machine is shared and one slow example is not a failure.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("steprl-ci", max_examples=60, **_COMMON)
settings.register_profile("steprl-dev", max_examples=500, **_COMMON)
settings.register_profile("steprl-long", max_examples=10_000, **_COMMON)

PROFILE = os.environ.get("STEPRL_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "dev", "long"):
    raise ValueError(f"STEPRL_FUZZ_PROFILE must be ci, dev or long, got {PROFILE!r}")
FUZZ = settings(settings.get_profile(f"steprl-{PROFILE}"))
