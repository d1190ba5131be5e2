"""Executors on the exported Verilog of the card: ``icarus`` and ``verilator``.

Both run the card RTL (``hw/``) exported to Verilog (``hw/export.py``) in a Verilog simulator through
cocotb (``hw/verilog_run.py``): same inputs and same ``sim.card.CardStats`` as the functional model
and the ``amaranth`` executor, bit for bit and cycle for cycle. The simulator build is done once per
configuration and RTL version and cached on disk (``$MDLA_RTL_CACHE``, default
``~/.cache/open-mdla/rtl``): the first Verilator run of a configuration compiles for 10-60 s, Icarus
in under a second.

    ie = microndla.MDLA(); ie.SetFlag("bitfile", "small"); ie.SetFlag("simulator", "verilator")

``check_hazards`` is accepted for interface compatibility: the RTL does what the program says (run
the functional model to have a program's races checked).
"""
from __future__ import annotations

__all__ = ["VerilogExecutor", "IcarusExecutor", "VerilatorExecutor"]


class VerilogExecutor:
    """Common part: ``sim`` names the simulator. ``verbose`` streams the simulator's output (progress
    reports included); ``last_run`` holds the cycles, wall times and build time of the last run."""
    name = "verilog"
    sim = ""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.last_run: dict = {}

    def build(self, cfg, clusters: int | None = None):
        """Export and compile the card for ``cfg`` now (otherwise the first run does it), with clusters
        ``0 .. clusters - 1`` (default all; a run builds the clusters its programs use)."""
        from hw.verilog_run import build
        return build(self.sim, cfg, clusters=clusters, verbose=self.verbose)

    def run(self, cfg, memory, programs, *, check_hazards=True):
        from hw.verilog_run import LAST_RUN, run_verilog
        stats = run_verilog(self.sim, cfg, memory, programs, verbose=self.verbose)
        self.last_run = dict(LAST_RUN)
        return stats


class IcarusExecutor(VerilogExecutor):
    """The exported card in Icarus Verilog (``iverilog``/``vvp``, with cocotb)."""
    name = sim = "icarus"


class VerilatorExecutor(VerilogExecutor):
    """The exported card compiled by Verilator (with cocotb)."""
    name = sim = "verilator"
