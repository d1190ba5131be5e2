"""The test suite (a package, so that tests/hw is tests.hw and never shadows the RTL package hw)."""
