"""Test package (a package so that `from tests.helpers import ...` works)."""
