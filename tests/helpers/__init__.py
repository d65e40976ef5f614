"""Shared test helpers (imported by the test files as `helpers.<module>`)."""
