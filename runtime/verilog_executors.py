"""Executors on the exported Verilog of the card: ``icarus`` and ``verilator``.

Both run the card RTL (``hw/``) exported to Verilog (``hw/export.py``) in a Verilog simulator
(``hw/verilog_run.py``): same inputs and same ``sim.card.CardStats`` as the functional model and the
``amaranth`` executor, bit for bit and cycle for cycle. Icarus runs under cocotb; Verilator runs the
free-running C++ harness of ``hw/verilator_main.py`` by default (``harness='cocotb'``, or
``$MDLA_VERILATOR_HARNESS=cocotb``, selects cocotb). The export holds the clusters the programs use.
The simulator build is done once per configuration, cluster count and RTL version and cached on disk
(``$MDLA_RTL_CACHE``, default ``~/.cache/open-mdla/rtl``): the first Verilator run of the small
configuration compiles for about 30-60 s (the reference card's one cluster several minutes), Icarus
in seconds. Long runs show a progress bar (cycles of the functional model's total, cycles/s, time
left; ``$MDLA_PROGRESS=0`` hides it).

    ie = microndla.MDLA(); ie.SetFlag("bitfile", "small"); ie.SetFlag("simulator", "verilator")

``check_hazards`` is accepted for interface compatibility: the RTL does what the program says (run
the functional model to have a program's races checked).
"""
from __future__ import annotations

from .executors import Executor

__all__ = ["VerilogExecutor", "IcarusExecutor", "VerilatorExecutor"]


class VerilogExecutor(Executor):
    """Common part: ``sim`` names the simulator. ``verbose`` streams the simulator's output;
    ``harness``: 'cocotb' or (Verilator) 'main', None for the simulator's default
    (:func:`hw.verilog_run.default_harness`); ``progress``: the progress bar (None: for long runs);
    ``last_run`` holds the cycles, wall times and build time of the last run."""
    name = "verilog"
    sim = ""
    OPTIONS = {"verbose": False, "harness": None, "progress": None}

    def __init__(self, verbose: bool = False, harness: str | None = None, progress: bool | None = None,
                 check_hazards: bool = True, **options):
        from hw.verilog_run import HARNESSES
        if harness is not None and harness not in HARNESSES:
            raise ValueError(f"unknown harness {harness!r}; known: {HARNESSES}")
        if harness == "main" and self.sim != "verilator":
            raise ValueError(f"the C++ harness is Verilator's; {self.sim} runs under cocotb")
        super().__init__(check_hazards, verbose=verbose, harness=harness, progress=progress, **options)
        self.last_run: dict = {}

    def build(self, cfg, clusters: int | None = None):
        """Export and compile the card for ``cfg`` now (otherwise the first run does it), with clusters
        ``0 .. clusters - 1`` (default all; a run builds the clusters its programs use), for this
        executor's harness."""
        from hw.export import mem_words_for
        from hw.verilog_run import build, default_harness
        n = cfg.clusters_per_card if clusters is None else int(clusters)
        if (self.harness or default_harness(self.sim)) == "main":
            from hw.verilator_main import build_main
            return build_main(cfg, mem_words_for(cfg), n, verbose=self.verbose)
        return build(self.sim, cfg, clusters=n, verbose=self.verbose)

    def run(self, cfg, memory, programs, *, check_hazards=None):
        from hw.verilog_run import LAST_RUN, run_verilog
        stats = run_verilog(self.sim, cfg, memory, programs, verbose=self.verbose, harness=self.harness,
                            progress=self.progress)
        self.last_run = dict(LAST_RUN)
        return stats


class IcarusExecutor(VerilogExecutor):
    """The exported card in Icarus Verilog (``iverilog``/``vvp``, with cocotb)."""
    name = sim = "icarus"


class VerilatorExecutor(VerilogExecutor):
    """The exported card compiled by Verilator (the C++ harness by default, or cocotb)."""
    name = sim = "verilator"
