"""Executors: what runs a compiled program on a card memory image.

Every executor takes the same inputs (machine configuration, memory image, program start
addresses) and returns the same ``sim.card.CardStats``; they must agree on every memory bit and
every cycle. ``functional`` is the vectorised functional model in ``sim/``; the RTL executors
(Amaranth, Icarus, Verilator) register here when they exist.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from arch.machine import MachineConfig


class Executor(Protocol):
    name: str

    def run(self, cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int], *,
            check_hazards: bool = True): ...


class FunctionalExecutor:
    """The functional model: one vectorised numpy operation per compute instruction."""
    name = "functional"

    def __init__(self, trace: bool = False):
        self.trace = trace

    def run(self, cfg, memory, programs, *, check_hazards=True):
        from sim.card import run_card
        return run_card(cfg, memory, programs, check_hazards=check_hazards, trace=self.trace)


class AmaranthExecutor:
    """The card RTL (``hw/``) in the Amaranth simulator: every cycle of every unit, bit for bit.

    ``vcd``: path of a waveform file to write for each run (None: no waveform). ``check_hazards``
    is accepted for interface compatibility; the RTL simply does what the program says (run the
    functional model to have a program's races checked). ``trace``: the statistics carry the
    per-instruction timeline read from the RTL's signals."""
    name = "amaranth"

    def __init__(self, vcd: str | None = None, trace: bool = False):
        self.vcd = vcd
        self.trace = trace

    def run(self, cfg, memory, programs, *, check_hazards=True):
        from hw.run import run_rtl
        return run_rtl(cfg, memory, programs, vcd=self.vcd, trace=self.trace)


EXECUTORS: dict[str, type] = {"functional": FunctionalExecutor, "amaranth": AmaranthExecutor}


def get_executor(name: str) -> Executor:
    try:
        return EXECUTORS[name]()
    except KeyError:
        raise ValueError(f"unknown simulator {name!r}; available: {sorted(EXECUTORS)}") from None


from .verilog_executors import IcarusExecutor, VerilatorExecutor  # noqa: E402 - registered after EXECUTORS exists
EXECUTORS.update(icarus=IcarusExecutor, verilator=VerilatorExecutor)
