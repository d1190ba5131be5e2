"""Executors: what runs a loaded program on the simulated cards.

The contract (adding an executor is one class and one entry of :data:`EXECUTORS`):

* An executor takes its options at construction (``make_executor(name, **options)``); the options
  a class takes are its ``OPTIONS`` (besides ``check_hazards``, which every executor accepts), and
  asking a class for one it does not take is refused (:class:`ExecutorOptionError`), never ignored.
* :meth:`Executor.run` runs the programs of some clusters of one card memory image (machine
  configuration, memory, ``{cluster: program address}``) and returns ``sim.card.CardStats``. This is
  the one method a new executor must write; every executor must agree on every memory bit and
  every cycle.
* :meth:`Executor.execute` runs a loaded program (``jobs``: (compiled, input arrays, batch) per
  model sharing the cards) on ``cards`` to a :class:`RunResult`: outputs, cycles, counters,
  saturations. The base class writes the images, runs each card (:meth:`run_card`) and reads the
  outputs back; :meth:`run_card` and :meth:`card_threads` are the hooks for how a card runs.
  Cards run in this process; with ``SetFlag('workers', 'ray')`` the driver runs each card's
  ``run`` in a Ray actor instead (``runtime.ray_cards``), for every executor.

``functional`` is the vectorised functional model in ``sim/``. The RTL executors (Amaranth here;
Icarus and Verilator in ``runtime.verilog_executors``) register here too.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from arch.machine import MachineConfig


class ExecutorOptionError(ValueError):
    """An option the executor does not have (or a bad value for one it has)."""


@dataclass
class RunResult:
    """One run of a loaded program on its cards.

    ``stats``: ``sim.card.CardStats`` per card (index = card); ``outputs``: per job, per image, the
    float outputs (ONNX shapes without the batch axis); ``input_saturations``: per job, the input
    values clipped converting them to fixed point."""
    stats: list
    outputs: list = field(default_factory=list)
    input_saturations: list = field(default_factory=list)

    def _mine(self, clusters=None):
        return [cs for s in self.stats for cl, cs in s.clusters.items() if clusters is None or cl in clusters]

    def cycles(self, clusters=None) -> int:
        """Modelled cycles of ``clusters`` (default all) on the slowest card."""
        return max((cs.cycles for cs in self._mine(clusters)), default=0)

    def saturations(self, clusters=None) -> int:
        """Values the output stages of ``clusters`` (default all) clipped to the data range."""
        return sum(cs.saturations for cs in self._mine(clusters))

    def cluster_stats(self, clusters=None) -> list:
        """(ClusterStats, cluster) of ``clusters`` on every card."""
        return [(s.clusters[cl], cl) for s in self.stats for cl in sorted(s.clusters)
                if clusters is None or cl in clusters]

    def counters(self, clusters=None) -> dict:
        """Summed counters of ``clusters``: instructions, bytes loaded and stored, MACs, MAC slots."""
        mine = self._mine(clusters)
        return {k: sum(getattr(cs, k) for cs in mine)
                for k in ("instructions", "bytes_loaded", "bytes_stored", "macs", "mac_slots")}


class Executor:
    """Base class of the executors (see the module's docstring for the contract)."""
    name = ""
    #: construction options besides ``check_hazards`` (attribute of the same name, its default here)
    OPTIONS: dict[str, object] = {}

    def __init__(self, check_hazards: bool = True, **options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ExecutorOptionError(f"the {self.name} simulator has no option {', '.join(unknown)} "
                                      f"(its options: {', '.join(['check_hazards', *self.OPTIONS])})")
        self.check_hazards = bool(check_hazards)
        for k, default in self.OPTIONS.items():
            setattr(self, k, options.get(k, default))

    # ---------------------------------------------------------------- one card memory
    def run(self, cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int], *,
            check_hazards: bool | None = None):
        """Run ``programs`` ({cluster: program address}) on ``memory`` to completion: CardStats."""
        raise NotImplementedError

    def _check(self, check_hazards: bool | None) -> bool:
        return self.check_hazards if check_hazards is None else bool(check_hazards)

    # ---------------------------------------------------------------- how a card runs
    def card_threads(self, nfpgas: int) -> int:
        """Threads that drive the cards of one run: an executor that runs outside this interpreter
        (an external simulator) may use other cores, so one thread per card up to the core count."""
        return min(nfpgas, os.cpu_count() or 1)

    def run_card(self, card, cfg, programs):
        """Run ``programs`` on ``card`` (its lock held): CardStats."""
        return self.run(cfg, card.memory, programs)

    # ---------------------------------------------------------------- a loaded program
    def execute(self, cards, jobs) -> RunResult:
        """Run ``jobs`` ((compiled, arrays, batch) per model sharing ``cards``) on ``cards``: every image
        written to its card, cluster and slot, one run per card, the outputs read back."""
        from .card_plan import card_images, card_plan, run_plan
        cfg = jobs[0][0].cfg
        programs = program_addresses(jobs)
        nfpgas = jobs[0][0].parallel.nfpgas

        def run_card(f: int):
            card = cards[f]
            plan = card_plan(jobs, f)
            with card.lock:
                return run_plan(lambda: self.run_card(card, cfg, programs), cfg, card.memory,
                                plan, card_images(jobs, plan), len(jobs))

        threads = self.card_threads(nfpgas)
        if nfpgas > 1 and threads > 1:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mdla-card") as pool:
                per_card = list(pool.map(run_card, range(nfpgas)))
        else:
            per_card = [run_card(f) for f in range(nfpgas)]
        return merge_cards(per_card, jobs)


def program_addresses(jobs) -> dict[int, int]:
    """{cluster: program address} of every job's clusters."""
    return {cl: c.memmap.code_addr(cl) for c, _, _ in jobs for cl in c.parallel.clusters}


def image(c, arrays, k: int, n: int) -> np.ndarray:
    """Image n of input k of ``c`` as the (C, H, W) tensor its first layer reads."""
    lay = c.memmap.tensors[c.inputs[k].tensor]
    return arrays[k][n].reshape(lay.channels, lay.height, lay.width)


def merge_cards(per_card, jobs) -> RunResult:
    """The RunResult of each card's (statistics, {(job, image): outputs}, saturations per job)."""
    all_stats = [s for s, _, _ in per_card]
    merged = {key: value for _, outs, _ in per_card for key, value in outs.items()}
    results = [[merged[(j, n)] for n in range(batch)] for j, (_, _, batch) in enumerate(jobs)]
    sat = [sum(x[j] for _, _, x in per_card) for j in range(len(jobs))]
    return RunResult(all_stats, results, sat)


class FunctionalExecutor(Executor):
    """The functional model: one vectorised numpy operation per compute instruction.

    Option: ``trace`` (the statistics carry the per-instruction timeline). Cards run one after
    another in this process (threads of one process would only contend for the GIL); cards in
    parallel are Ray actors (``SetFlag('workers', 'ray')``)."""
    name = "functional"
    OPTIONS = {"trace": False}

    def run(self, cfg, memory, programs, *, check_hazards=None):
        from sim.card import run_card
        return run_card(cfg, memory, programs, check_hazards=self._check(check_hazards), trace=self.trace)

    def card_threads(self, nfpgas):
        return 1


class AmaranthExecutor(Executor):
    """The card RTL (``hw/``) in the Amaranth simulator: every cycle of every unit, bit for bit.

    ``vcd``: path of a waveform file to write for each run (None: no waveform). ``check_hazards``
    is accepted for interface compatibility; the RTL simply does what the program says (run the
    functional model to have a program's races checked). ``trace``: the statistics carry the
    per-instruction timeline read from the RTL's signals."""
    name = "amaranth"
    OPTIONS = {"vcd": None, "trace": False}

    def run(self, cfg, memory, programs, *, check_hazards=None):
        from hw.run import run_rtl
        return run_rtl(cfg, memory, programs, vcd=self.vcd, trace=self.trace)


#: name -> executor class (the 'simulator' flag's values)
EXECUTORS: dict[str, type] = {"functional": FunctionalExecutor, "amaranth": AmaranthExecutor}


def executor_class(name: str) -> type:
    try:
        return EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown simulator {name!r}; available: {sorted(EXECUTORS)}") from None


def make_executor(name: str, **options) -> Executor:
    """The executor ``name`` with ``options`` (refused when the class does not take one)."""
    return executor_class(name)(**options)


def get_executor(name: str) -> Executor:
    """The executor ``name`` with its default options."""
    return make_executor(name)


from .verilog_executors import IcarusExecutor, VerilatorExecutor  # noqa: E402 - registered after EXECUTORS exists
EXECUTORS.update(icarus=IcarusExecutor, verilator=VerilatorExecutor)
