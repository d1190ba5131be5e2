"""Fixtures of the Verilog/cocotb tests: one cached card build per simulator for the whole session.

A simulator that is not installed fails the tests that need it when the environment variable CI is
set (CI installs both, see scripts/setup.sh); locally they are skipped with the reason."""
from __future__ import annotations

import pytest

from arch.machine import SMALL
from cocotb_util import require


@pytest.fixture(scope="session")
def card_build():
    """``card_build(sim)``: the SMALL card built for ``sim`` (once per session; cached on disk)."""
    from hw.verilog_run import build
    built = {}

    def get(sim):
        require(sim)
        if sim not in built:
            built[sim] = build(sim, SMALL)
            how = "from the cache" if built[sim].cached else f"built in {built[sim].seconds:.1f} s"
            print(f"\n{sim} card build: {built[sim].build_dir} ({how})")
        return built[sim]
    return get
