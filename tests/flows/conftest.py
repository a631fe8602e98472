"""Flow tests use the session-wide ``prefect_harness`` of tests/conftest.py."""
