"""Test-wide fixtures: a real PostgreSQL and the Microsoft 365 sandbox (never mocks)."""

pytest_plugins = ("tests.fixtures.database", "tests.fixtures.api", "tests.fixtures.sandbox")
