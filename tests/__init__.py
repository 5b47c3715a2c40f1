"""Ketch test suite."""
