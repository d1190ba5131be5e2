"""Helpers of the Verilog/cocotb tests."""
from __future__ import annotations

import os

import pytest


def require(sim: str) -> None:
    """Fail (when $CI is set: CI installs both simulators) or skip (locally) if ``sim`` is missing."""
    from hw.verilog_run import simulator_available
    why = simulator_available(sim)
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{sim}: {why}", pytrace=False)
        pytest.skip(f"{sim}: {why}")
