"""Test-wide fixtures: a real PostgreSQL and the Microsoft 365 sandbox (never mocks).

Hypothesis runs the `quick` profile by default (a fast inner loop) and the `thorough` profile
when HYPOTHESIS_PROFILE=thorough, which `.ci/run` sets: CI keeps the full example counts.

A test run stopped with SIGTERM (a CI timeout, `timeout`, `kill`) unwinds as Ctrl-C does, so the
fixtures stop the PostgreSQL, sandbox and servers they started instead of leaving them running.
"""

import os
import signal

from hypothesis import HealthCheck, settings

settings.register_profile("quick", max_examples=50, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

signal.signal(signal.SIGTERM, signal.default_int_handler)

pytest_plugins = ("tests.fixtures.database", "tests.fixtures.api", "tests.fixtures.sandbox")
