"""Fast unit tests on generated data."""
