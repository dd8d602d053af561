"""Shared code of the fast (in-process) tests; fixtures stay in tests/conftest.py."""
