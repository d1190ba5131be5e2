"""Progress of long RTL runs: a tqdm bar of simulated cycles against the total the functional model
predicts, with the simulator's cycles/s and the estimated time left.

The schedule of a program does not depend on its data, so :func:`expected_cycles` asks the
functional model for the schedule alone (no data effects: milliseconds for a whole ResNet-18) before
an RTL run starts. The bar appears only for runs that last (``delay``), so tests and short kernels
print nothing.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from tqdm import tqdm

from arch.machine import MachineConfig

__all__ = ["expected_cycles", "expected_total", "CycleProgress", "PROGRESS_DELAY", "Bar"]


class Bar(tqdm):
    """tqdm without its monitor thread (``monitor_interval = 0``), for every progress bar of the
    project: the monitor is a thread that outlives the bar, one more live thread that the streaming
    deadlock check (runtime.streaming) must search for a path to the blocked object, and that a
    process keeps after its work is done. (The monitor only tunes the refresh of bars that stall.)"""
    monitor_interval = 0

#: seconds before the bar appears (``$MDLA_PROGRESS_DELAY``); shorter runs show none
PROGRESS_DELAY = float(os.environ.get("MDLA_PROGRESS_DELAY", 2.0))


class _NoEffects:
    """An effect sink of :func:`sim.card._run_card` that drops the data effects: the schedule only."""

    def __init__(self, clusters):
        self.clusters = list(clusters)

    def effect(self, cluster, op) -> None:
        pass

    def sync(self) -> None:
        pass

    def finish(self):
        return {c: (0, {}) for c in self.clusters}


def expected_cycles(cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int]) -> int:
    """The cycle count of running ``programs`` on a card, from the functional model's schedule
    (timing rules only; ``memory`` is not modified)."""
    from sim.card import _run_card
    return _run_card(cfg, memory, programs, check_hazards=False, sink=_NoEffects(programs)).cycles


def expected_total(cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int]) -> int | None:
    """:func:`expected_cycles`, or None (a bar without a total) when the functional model refuses the
    programs (a deadlock, say): the RTL run then goes ahead and reports what the RTL does."""
    from sim.card import SimError
    try:
        return expected_cycles(cfg, memory, programs)
    except SimError:
        return None


class CycleProgress:
    """``with CycleProgress(total, desc) as p: ... p.update_to(cycle)``: a tqdm bar of cycles (done,
    total, cycles/s, time left), on stderr; ``enabled=False`` (or ``$MDLA_PROGRESS=0``) shows none."""

    def __init__(self, total: int | None, desc: str, *, enabled: bool | None = None, delay: float | None = None):
        if enabled is None:
            enabled = os.environ.get("MDLA_PROGRESS", "1") != "0"
        self.bar = Bar(total=total, desc=desc, unit="cycles", unit_scale=True, dynamic_ncols=True,
                        delay=PROGRESS_DELAY if delay is None else delay, disable=not enabled, file=sys.stderr,
                        smoothing=0.1, mininterval=0.5)
        self.done = 0

    def update_to(self, cycle: int) -> None:
        cycle = int(cycle)
        if cycle > self.done:
            self.bar.update(cycle - self.done)
            self.done = cycle

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "CycleProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
