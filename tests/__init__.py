"""Test package (a package so that pytest puts the repository root, not tests/, on sys.path: tests/hw
would otherwise shadow the top-level hw package)."""
