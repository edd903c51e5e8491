"""Development helpers shared by the tests, the benchmark and the local demo (not shipped)."""
