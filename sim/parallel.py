"""The clusters of one card with their data effects executed in parallel, bit- and cycle-exact.

The schedule of a card (every start, end and port grant, the barriers, the hazard check) does not
depend on the data, so :func:`run_card_parallel` computes it in the calling process with the
serial model's own loop (:func:`sim.card._run_card`) and hands the data effects to *helpers*
(worker processes in the runtime, :class:`LocalHelper` in-process), each owning the buffers of
some clusters and working on the shared memory image.

Correctness: the serial model applies the effects in global start order. Effects of one cluster
touch its own buffers and main memory; buffers are private, so only main-memory transfers of
different clusters can interact. The effects are cut into *phases*, consecutive stretches of the
start order, run one after another; within a phase each helper applies its clusters' effects in
start order. The result equals the serial one as long as no phase holds a LOAD or STORE of one
cluster whose bytes overlap a STORE of another. Phases end at every BARRIER release (the
compiler's only cross-cluster synchronisation) and every ``PHASE_OPS`` effects (so the helpers
start while the schedule is still being computed); a phase that still holds such an overlap (by
bounding byte ranges, then by the contiguous runs of strided transfers) is halved until its parts
are free of it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import numpy as np

from arch import isa
from arch.isa import INSTR_BYTES, Instr
from arch.machine import MachineConfig

from .card import (_CACHE_SIZE, CardStats, _check_args, _load_program, _Op, _run_card, _single_thread_blas,
                   apply_effect, memory_words, program_bytes)
from .units import ClusterUnits

__all__ = ["Helper", "LocalHelper", "ClusterEffects", "run_card_parallel", "PHASE_OPS"]

#: Effects after which a phase is closed even without a barrier: the helpers then run while the
#: schedule of the rest is computed (a cut costs one round trip to every helper).
PHASE_OPS = 256


class Helper(Protocol):
    """Applies the data effects of some clusters of one run. Requests may be asynchronous;
    ``wait`` returns once all are done (raising the first error of any)."""

    def begin(self, cfg: MachineConfig, programs: dict[int, int]) -> None: ...

    def apply(self, ops: np.ndarray) -> None: ...

    def wait(self) -> None: ...

    def end(self) -> dict[int, tuple[int, dict[int, int]]]: ...


class _Instrs:
    """A program's instructions, each decoded at its first use. A helper only applies effects of
    programs the scheduling process has decoded and validated in full (``sim.card._load_program``),
    so plain decoding suffices here (a quarter of the full decoding's cost)."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.instrs: list[Instr | None] = [None] * (len(raw) // INSTR_BYTES)

    def __getitem__(self, pc: int) -> Instr:
        i = self.instrs[pc]
        if i is None:
            i = self.instrs[pc] = isa.decode(self.raw[pc * INSTR_BYTES:(pc + 1) * INSTR_BYTES])
        return i


_instr_cache: OrderedDict[tuple, _Instrs] = OrderedDict()


def _instrs(cfg: MachineConfig, memory: np.ndarray, addr: int, cluster: int) -> _Instrs:
    raw, key = program_bytes(cfg, memory, addr, cluster)
    prog = _instr_cache.pop(key, None) or _Instrs(raw)
    _instr_cache[key] = prog
    if len(_instr_cache) > _CACHE_SIZE:
        _instr_cache.popitem(last=False)
    return prog


class ClusterEffects:
    """The helper side of one run: the buffers of some clusters and their programs.

    ``programs``: cluster -> program address of the clusters this helper owns."""

    def __init__(self, cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int]):
        self.bb = cfg.beat_bytes
        self.mem_words = memory_words(cfg, memory)
        self.instrs = {c: _instrs(cfg, memory, int(a), c) for c, a in programs.items()}
        self.units = {c: ClusterUnits(cfg) for c in programs}
        self.by_pc: dict[int, dict[int, int]] = {c: {} for c in programs}

    def apply(self, ops: np.ndarray) -> None:
        """``ops``: (n, 2) array of (cluster, pc), in start order."""
        for c, pc in ops.tolist():
            u = self.units[c]
            before = u.saturations
            apply_effect(u, self.instrs[c][pc], self.mem_words, self.bb)
            if u.saturations != before:     # per instruction, as the serial model counts them
                self.by_pc[c][pc] = self.by_pc[c].get(pc, 0) + u.saturations - before

    def saturations(self) -> dict[int, tuple[int, dict[int, int]]]:
        """cluster -> (values saturated, those per pc)."""
        return {c: (u.saturations, self.by_pc[c]) for c, u in self.units.items()}


class LocalHelper:
    """A helper in the calling process (tests and the reference for the worker protocol)."""

    def __init__(self, memory: np.ndarray):
        self.memory = memory
        self.state: ClusterEffects | None = None

    def begin(self, cfg, programs):
        self.state = ClusterEffects(cfg, self.memory, programs)

    def apply(self, ops):
        self.state.apply(ops)

    def wait(self):
        pass

    def end(self):
        sat, self.state = self.state.saturations(), None
        return sat


def _merge(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of the intervals [lo, hi) as sorted disjoint intervals."""
    if not len(lo):
        return lo, hi
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    first = np.flatnonzero(np.r_[True, lo[1:] >= reach[:-1]])
    return lo[first], np.maximum.reduceat(hi, first)


def _overlaps(lo: np.ndarray, hi: np.ndarray, mlo: np.ndarray, mhi: np.ndarray) -> bool:
    """Whether any [lo, hi) meets the sorted disjoint intervals [mlo, mhi)."""
    if not len(lo) or not len(mlo):
        return False
    k = np.searchsorted(mhi, lo, side="right")      # the first interval ending after lo
    inside = k < len(mlo)
    return bool(np.any(mlo[k[inside]] < hi[inside]))


def independent(cl: np.ndarray, lo: np.ndarray, hi: np.ndarray, write: np.ndarray) -> bool:
    """Whether transfers of different clusters (cluster, byte range, is a STORE) can run in any
    order: no STORE of one cluster overlaps a LOAD or STORE of another."""
    for c in np.unique(cl):
        mine = (cl == c) & write
        if not mine.any():
            continue
        other = cl != c
        if _overlaps(lo[mine], hi[mine], *_merge(lo[other], hi[other])):
            return False
    return True


class _PhasedSink:
    """Collects the effects in start order, cuts them into phases and runs each on the helpers
    (implements :class:`sim.card.EffectSink`)."""

    def __init__(self, helpers: list[Helper], owner: dict[int, int], phase_ops: int, beat_bytes: int):
        self.helpers = helpers
        self.owner = owner                    # cluster -> index of its helper
        self.phase_ops = phase_ops
        self.bb = beat_bytes
        #: the open phase: (cluster, pc, first byte, end byte, 0 no transfer / 1 LOAD / 2 STORE, position)
        self.open: list[tuple[int, int, int, int, int, int]] = []
        self.instrs: list[Instr] = []         # the open phase's instructions, by position
        self.busy: set[int] = set()           # helpers with a phase in flight

    def effect(self, cluster: int, o: _Op) -> None:
        kind = 0 if not o.words else 2 if o.op == "STORE" else 1
        self.open.append((cluster, o.pc, o.mem_lo, o.mem_hi, kind, len(self.open)))
        self.instrs.append(o.instr)
        if len(self.open) >= self.phase_ops:
            self.sync()

    def sync(self) -> None:
        if not self.open:
            return
        phase = np.array(self.open, dtype=np.int64)
        for part in self._parts(phase):
            self._run(part[:, :2])
        self.open, self.instrs = [], []

    def _parts(self, phase: np.ndarray) -> list[np.ndarray]:
        """``phase`` cut into consecutive parts, each free of cross-cluster memory conflicts."""
        x = phase[phase[:, 4] != 0]
        if len(np.unique(phase[:, 0])) < 2 or independent(x[:, 0], x[:, 2], x[:, 3], x[:, 4] == 2) \
                or independent(*self._runs(x)):
            return [phase]
        half = len(phase) // 2
        return self._parts(phase[:half]) + self._parts(phase[half:])

    def _runs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The transfers ``x`` as the byte ranges of their contiguous runs (cluster, lo, hi, is a
        STORE), exact where a strided transfer's bounding range is not (interleaved stores)."""
        cl, lo, n, wr = [], [], [], []
        for c, pos, kind in x[:, [0, 5, 4]].tolist():
            i = self.instrs[pos]
            starts = (np.arange(i.n2)[:, None] * i.s2 + np.arange(i.n1)[None, :] * i.s1).ravel()
            lo.append(i.dram_addr + starts * self.bb)
            n.append(np.full(starts.size, i.n0 * self.bb))
            cl.append(np.full(starts.size, c))
            wr.append(np.full(starts.size, kind == 2))
        lo_ = np.concatenate(lo)
        return np.concatenate(cl), lo_, lo_ + np.concatenate(n), np.concatenate(wr)

    def _run(self, ops: np.ndarray) -> None:
        """Run one phase: wait until the previous one is done everywhere, then hand each helper
        its clusters' effects (without waiting for them)."""
        for h in sorted(self.busy):
            self.helpers[h].wait()
        self.busy.clear()
        mine = np.array([self.owner[c] for c in ops[:, 0].tolist()])
        for h in np.unique(mine).tolist():
            self.helpers[h].apply(np.ascontiguousarray(ops[mine == h]))
            self.busy.add(h)

    def finish(self) -> dict[int, tuple[int, dict[int, int]]]:
        self.sync()
        for h in sorted(self.busy):
            self.helpers[h].wait()
        self.busy.clear()
        sat: dict[int, int] = {}
        for h in self.helpers:
            sat.update(h.end())
        return sat


def run_card_parallel(cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int],
                      helpers: list[Helper], *, check_hazards: bool = True, trace: bool = False,
                      phase_ops: int = PHASE_OPS) -> CardStats:
    """:func:`sim.card.run_card` with the data effects applied by ``helpers`` (clusters dealt to
    them round-robin). Same memory bits, same statistics; errors of the schedule (hazards,
    deadlocks, bad programs) are the serial model's."""
    clusters = sorted(int(c) for c in programs)
    if not helpers:
        raise ValueError("run_card_parallel needs at least one helper")
    helpers = helpers[:len(clusters)] or helpers[:1]
    owner = {c: n % len(helpers) for n, c in enumerate(clusters)}
    sink = _PhasedSink(helpers, owner, phase_ops, cfg.beat_bytes)
    begun = []
    try:
        # bad arguments and programs are reported here, as the serial model reports them, not by a helper
        _check_args(cfg, memory, programs)
        for c in clusters:
            _load_program(cfg, memory, int(programs[c]), c)
        for h, helper in enumerate(helpers):
            helper.begin(cfg, {c: int(programs[c]) for c in clusters if owner[c] == h})
            begun.append(helper)
        with _single_thread_blas():     # for in-process helpers, as run_card does
            return _run_card(cfg, memory, programs, check_hazards=check_hazards, trace=trace, sink=sink)
    except BaseException:
        for helper in begun:        # leave no half-run state behind in the helpers
            try:
                helper.wait()
            except BaseException:   # noqa: BLE001 - the original error is the one to report
                pass
            try:
                helper.end()
            except BaseException:   # noqa: BLE001
                pass
        raise
