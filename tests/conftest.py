"""Shared pytest configuration. Server fixtures (moto S3, throwaway PostgreSQL) live in
tests/fixtures/servers.py."""

pytest_plugins = ["tests.fixtures.servers"]
