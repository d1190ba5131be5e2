"""Functional and cycle model of one DLA card: its clusters, their engines and the shared memory port.

:func:`run_card` executes the binary programs of some clusters of a card on the card's main-memory
image and returns the cycle counts of :mod:`arch.timing` together with utilisation statistics. The
data semantics are the format docstrings of :mod:`arch.isa`, executed by :mod:`sim.units`; the
timing is exactly the rules in the docstring of :mod:`arch.timing`.

How the schedule is computed (a discrete-event simulation, not a cycle loop): every engine of every
cluster offers its next instruction as soon as all inputs of its start cycle are known (its
dispatch cycle, the end of the previous instruction on the engine, the ends of the instructions
that pushed the tokens it pops). Among the offers the one with the smallest (start, cluster, engine
priority) is scheduled: a LOAD or STORE takes the memory port then, and its data effect (like any
instruction's) is applied at that moment. An instruction not yet offered depends on an unscheduled
one, and since every duration is at least one cycle it starts strictly later than every offer; so
instructions are scheduled in true start order, which makes the port's first-come-first-served
grant exact and lets the data effects be applied in start order. Dispatch is computed eagerly in
program order as far as the start cycles it depends on are known.

Decoded and validated programs are cached (keyed by the machine and a hash of the program bytes),
so repeated runs of one program pay only for execution.
"""
from __future__ import annotations

import hashlib
import heapq
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
from threadpoolctl import ThreadpoolController

from arch import isa, timing
from arch.isa import ENGINE_NEXT, ENGINE_PREV, ENGINES, INSTR_BYTES, Buf, Instr, ISAError
from arch.machine import MachineConfig

from .hazards import MEMORY, Access, HazardChecker
from .replay import ReplayPlan
from .units import ClusterUnits, available_cores, conv_maps_words, dma_offsets, mv_list, pitched_words, pool_maps_words

__all__ = ["SimError", "InstrTiming", "ClusterStats", "CardStats", "run_card", "default_threads", "TOKEN_QUEUES",
           "clear_program_cache", "apply_effect", "memory_words", "program_bytes", "EffectSink"]


class SimError(RuntimeError):
    """A program the model cannot run: an illegal or invalid instruction, a missing END, an access
    outside the memory image, a deadlock or a data race. The message names the cluster, the pc and
    the operation concerned."""


@dataclass
class InstrTiming:
    """Timing of one instruction (times in cycles from the start of the run).

    ``grant`` is the memory-port grant cycle of a LOAD or STORE, else None. END has engine
    ``'control'`` and ``start == end == dispatch + 1``."""
    pc: int
    op: str
    engine: str
    dispatch: int
    start: int
    end: int
    grant: int | None


@dataclass
class ClusterStats:
    """Statistics of one cluster's run.

    * ``cycles``: the largest end cycle of its instructions (END counts as ending at its dispatch
      cycle + 1).
    * ``instructions``: instructions executed, END included.
    * ``busy[engine]``: sum of ``end - start`` over the engine's instructions (for a LOAD or STORE
      this includes the wait for the memory port and the memory latency).
    * ``token_wait[engine]``: sum over the engine's instructions of the cycles its start was delayed
      by dependency tokens alone, ``start - max(dispatch + 1, end of the previous instruction of the
      engine)``: the time an instruction was ready and its engine free but a token was missing.
    * ``port_wait[engine]`` (load, store): sum of ``grant - start``, the wait for the memory port.
    * ``bytes_loaded``, ``bytes_stored``: main-memory traffic.
    * ``macs``, ``mac_slots``: :func:`arch.timing.macs` summed over the CONVs.
    * ``saturations``: values clipped by the output stage (requantisation) during the run;
      ``saturations_by_pc``: the same per instruction (pc -> count, only pcs that saturated; the
      functional model fills it, executors that count only totals leave it empty).
    * ``timeline``: per instruction in program order, only when run with ``trace=True``.
    """
    cycles: int
    instructions: int
    busy: dict[str, int]
    token_wait: dict[str, int]
    port_wait: dict[str, int]
    bytes_loaded: int
    bytes_stored: int
    macs: int
    mac_slots: int
    saturations: int
    timeline: list[InstrTiming] | None = None
    saturations_by_pc: dict[int, int] = field(default_factory=dict)


@dataclass
class CardStats:
    cycles: int                         #: max over the clusters that ran (0 when none)
    clusters: dict[int, ClusterStats]


# ------------------------------------------------------------------------------------------------
# Token queues: one per directed link of the engine chain load <-> compute <-> store.
# ------------------------------------------------------------------------------------------------

#: (from engine, to engine) of each token queue of a cluster, in the model's numbering.
TOKEN_QUEUES: tuple[tuple[str, str], ...] = tuple(
    (a, b) for a in ENGINES for b in (ENGINE_NEXT[a], ENGINE_PREV[a]) if b is not None)
_QUEUE_INDEX = {q: n for n, q in enumerate(TOKEN_QUEUES)}
_QUEUE_NAME = tuple(f"{a}->{b}" for a, b in TOKEN_QUEUES)
_ENG_INDEX = {e: n for n, e in enumerate(ENGINES)}
_CONTROL = len(ENGINES)
_LOAD, _STORE = _ENG_INDEX["load"], _ENG_INDEX["store"]


def _token_queues(i: Instr) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(queues popped, queues pushed) by an instruction (validate() guarantees the links exist)."""
    e = i.engine
    if e not in _ENG_INDEX:
        return (), ()
    pops, pushes = [], []
    if i.pop_prev:
        pops.append(_QUEUE_INDEX[(ENGINE_PREV[e], e)])
    if i.pop_next:
        pops.append(_QUEUE_INDEX[(ENGINE_NEXT[e], e)])
    if i.push_prev:
        pushes.append(_QUEUE_INDEX[(e, ENGINE_PREV[e])])
    if i.push_next:
        pushes.append(_QUEUE_INDEX[(e, ENGINE_NEXT[e])])
    return tuple(pops), tuple(pushes)


# ------------------------------------------------------------------------------------------------
# Decoded programs
# ------------------------------------------------------------------------------------------------

def _memo(fn: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    """A zero-argument function computed at most once."""
    box: list[np.ndarray] = []

    def get() -> np.ndarray:
        if not box:
            box.append(fn())
        return box[0]
    return get


@dataclass(frozen=True, slots=True)
class _Op:
    """One decoded, validated instruction with everything the scheduler needs precomputed."""
    pc: int
    instr: Instr
    op: str
    engine: str
    eng: int                  #: index in ENGINES, _CONTROL for END
    eng_index: int            #: position among the instructions of the same engine
    prio: int                 #: arch.timing.ENGINE_PRIORITY
    pops: tuple[int, ...]
    pushes: tuple[int, ...]
    cycles: int               #: compute-engine cycles (compute instructions)
    words: int                #: words moved (LOAD, STORE)
    mem_lo: int               #: LOAD/STORE: first byte of the bounding main-memory range
    mem_hi: int               #: one past its last byte
    macs: int
    slots: int
    effect: str | None        #: ClusterUnits method applying the data effect
    #: hazard-checker access templates: (kind, mv, lo, hi, write, exact) with kind 'memory' or a buffer
    accesses: tuple[tuple, ...]

    def who(self, cluster: int) -> str:
        return f"cluster {cluster}, pc {self.pc} ({self.op})"


@dataclass(frozen=True)
class _Program:
    key: tuple                                #: program cache key: (machine, length, hash of the bytes)
    ops: tuple[_Op, ...]
    engine_pcs: tuple[tuple[int, ...], ...]   #: pcs of each engine's instructions, in order
    nbytes: int
    mem_hi: int                               #: largest mem_hi over the transfers (0 if none)
    #: (queue, pc, k, pushes) of the first pop that no push can ever match, or None
    unmatched_pop: tuple[int, int, int, int] | None


def _accesses(i: Instr, cfg: MachineConfig) -> tuple[tuple, ...]:
    """Hazard access templates of an instruction (see sim.hazards)."""
    L, bb = cfg.lanes, cfg.beat_bytes
    out: list[tuple] = []
    if i.op in ("LOAD", "STORE"):
        pat = dma_offsets(i.n0, i.n1, i.s1, i.n2, i.s2)
        base = i.dram_addr // bb
        hi = base + (i.n2 - 1) * i.s2 + (i.n1 - 1) * i.s1 + i.n0     # strides are unsigned: the last run ends last
        exact = None if pat.contiguous else _memo(lambda: np.unique(base + pat.offsets))
        out.append(("memory", None, base, hi, i.op == "STORE", exact))
        words = pat.words
        if i.op == "LOAD":
            kind, n = {Buf.MAPS: ("maps", words), Buf.RES: ("residual", words)}.get(
                i.buf, ("kernel", words // max(i.nvv, 1)))
            out += [(kind, m, i.buf_addr, i.buf_addr + n, True, None) for m in mv_list(i.mv_mask)]
        else:
            out.append(("output", i.mv, i.buf_addr, i.buf_addr + words, False, None))
    elif i.op == "CONV":
        P, K = i.oh * i.ow, isa.conv_reduction(i)
        lo = i.maps_addr // L
        hi = -(-(i.maps_addr + isa.maps_extent_conv(i)) // L)
        maps_exact = _memo(lambda: conv_maps_words(i, L))
        out_exact = _memo(lambda: pitched_words(i.out_addr, P, i.out_pitch, i.nvv))
        res_exact = _memo(lambda: pitched_words(i.res_addr, P, i.out_pitch, i.nvv))
        dense = i.out_pitch == i.nvv
        for m in mv_list(i.mv_mask):
            out.append(("maps", m, lo, hi, False, maps_exact))
            out.append(("kernel", m, i.kern_addr, i.kern_addr + K, False, None))
            if i.init == isa.Init.BIAS:
                out.append(("kernel", m, i.bias_addr, i.bias_addr + 2, False, None))
            if i.write:
                out.append(("output", m, i.out_addr, i.out_addr + (P - 1) * i.out_pitch + i.nvv, True,
                            None if dense else out_exact))
            if i.write and i.resid:
                out.append(("residual", m, i.res_addr, i.res_addr + (P - 1) * i.out_pitch + i.nvv, False,
                            None if dense else res_exact))
    elif i.op in ("MAXPOOL", "AVGPOOL"):
        P = i.oh * i.ow
        lo, hi = i.maps_addr, i.maps_addr + isa.maps_extent_pool(i)
        maps_exact = _memo(lambda: pool_maps_words(i))
        out_exact = _memo(lambda: pitched_words(i.out_addr, P, i.out_pitch, i.nb))
        for m in mv_list(i.mv_mask):
            out.append(("maps", m, lo, hi, False, maps_exact))
            out.append(("output", m, i.out_addr, i.out_addr + (P - 1) * i.out_pitch + i.nb, True,
                        None if i.out_pitch == i.nb else out_exact))
    return tuple(out)


#: ClusterUnits method applying each operation's data effect (None: no data effect). An opcode
#: missing here is rejected at decode rather than silently executed as a no-op.
_EFFECTS: dict[str, str | None] = {"LOAD": "load", "STORE": "store", "CONV": "conv", "MAXPOOL": "maxpool",
                                   "AVGPOOL": "avgpool", "SYNC": None, "BARRIER": None, "END": None}


def _make_op(pc: int, i: Instr, eng_index: int, cfg: MachineConfig) -> _Op:
    engine = i.engine
    pops, pushes = _token_queues(i)
    cycles = words = mem_lo = mem_hi = 0
    if engine == "compute":
        cycles = timing.compute_cycles(i, cfg)
    elif engine in ("load", "store"):
        words = timing.transfer_words(i)
        mem_lo = i.dram_addr
        mem_hi = i.dram_addr + ((i.n2 - 1) * i.s2 + (i.n1 - 1) * i.s1 + i.n0) * cfg.beat_bytes
    macs, slots = timing.macs(i, cfg)
    return _Op(pc=pc, instr=i, op=i.op, engine=engine, eng=_ENG_INDEX.get(engine, _CONTROL),
               eng_index=eng_index, prio=timing.ENGINE_PRIORITY[engine], pops=pops, pushes=pushes,
               cycles=cycles, words=words, mem_lo=mem_lo, mem_hi=mem_hi, macs=macs, slots=slots,
               effect=_EFFECTS[i.op], accesses=_accesses(i, cfg))


_END_OPCODE = isa.FORMATS["END"].opcode
_OPCODE_MASK = (1 << isa.OPCODE_BITS) - 1
_CACHE_SIZE = 64
_program_cache: OrderedDict[tuple, _Program] = OrderedDict()
_cache_lock = threading.Lock()   # cards may run in threads


#: Schedules of finished runs, keyed by the machine and the (cluster, address, program) set. The
#: timing is data-independent (arch.timing), so a run of the same programs at the same addresses has
#: the same schedule and the same hazard-check outcome: a repeated run only replays the data effects
#: in the recorded order. Value: (order of (cluster, pc) with a data effect, the finished
#: _ClusterRuns, whether the hazards were checked, the order as a replay plan: _replay_plan).
_schedule_cache: OrderedDict[tuple, tuple] = OrderedDict()


def clear_program_cache() -> None:
    """Forget all decoded programs and recorded schedules (they are otherwise kept for the last
    64 distinct programs and program sets)."""
    with _cache_lock:
        _program_cache.clear()
        _schedule_cache.clear()


def _find_end(memory: np.ndarray, addr: int) -> int | None:
    """Index of the first END instruction of the program at ``addr``, or None if there is none
    before the end of the memory image. The opcode is the low nibble of an instruction's first byte
    and only END has END's opcode, so the first word carrying it is the first END."""
    n = (len(memory) - addr) // INSTR_BYTES
    first_bytes = memory[addr:addr + n * INSTR_BYTES:INSTR_BYTES]
    pos, chunk = 0, 1024
    while pos < n:
        hits = np.flatnonzero((first_bytes[pos:pos + chunk] & _OPCODE_MASK) == _END_OPCODE)
        if hits.size:
            return pos + int(hits[0])
        pos += chunk
        chunk *= 4
    return None


def program_bytes(cfg: MachineConfig, memory: np.ndarray, addr: int, cluster: int) -> tuple[bytes, tuple]:
    """The program at byte ``addr`` up to and including its first END, and its cache key
    (machine, length, hash of the bytes)."""
    end = _find_end(memory, addr)
    if end is None:
        raise SimError(f"cluster {cluster}: the program at byte {addr:#x} has no END instruction before "
                       f"the end of the {len(memory)}-byte memory image")
    raw = memory[addr:addr + (end + 1) * INSTR_BYTES].tobytes()
    return raw, (cfg, len(raw), hashlib.blake2b(raw, digest_size=16).digest())


def _load_program(cfg: MachineConfig, memory: np.ndarray, addr: int, cluster: int) -> _Program:
    raw, key = program_bytes(cfg, memory, addr, cluster)
    with _cache_lock:
        prog = _program_cache.get(key)
        if prog is not None:
            _program_cache.move_to_end(key)
            return prog
    ops: list[_Op] = []
    counts = [0] * len(ENGINES)
    for pc in range(len(raw) // INSTR_BYTES):
        word = raw[pc * INSTR_BYTES:(pc + 1) * INSTR_BYTES]
        try:
            instr = isa.decode(word)
        except ISAError as e:
            raise SimError(f"cluster {cluster}, pc {pc} (opcode {word[0] & _OPCODE_MASK}, at byte "
                           f"{addr + pc * INSTR_BYTES:#x}): cannot decode: {e}") from None
        try:
            isa.validate(instr, cfg)
        except ISAError as e:
            raise SimError(f"cluster {cluster}, pc {pc} ({instr.op}): invalid on machine "
                           f"{cfg.name!r}: {e}") from None
        if instr.op not in _EFFECTS:
            raise SimError(f"cluster {cluster}, pc {pc} ({instr.op}): the functional model does not "
                           f"implement this instruction")
        if instr.op == "BARRIER" and not instr.mask >> cluster & 1:
            raise SimError(f"cluster {cluster}, pc {pc} (BARRIER): its mask {instr.mask:#b} does not include "
                           f"cluster {cluster} itself")
        eng = _ENG_INDEX.get(instr.engine, _CONTROL)
        k = 0
        if eng != _CONTROL:
            k = counts[eng]
            counts[eng] += 1
        ops.append(_make_op(pc, instr, k, cfg))
    engine_pcs = tuple(tuple(o.pc for o in ops if o.eng == e) for e in range(len(ENGINES)))
    # static token balance: the first pop beyond the number of pushes into its queue never completes
    pushes = [0] * len(TOKEN_QUEUES)
    for o in ops:
        for q in o.pushes:
            pushes[q] += 1
    popped = [0] * len(TOKEN_QUEUES)
    unmatched = None
    for o in ops:
        for q in o.pops:
            popped[q] += 1
            if popped[q] > pushes[q] and unmatched is None:
                unmatched = (q, o.pc, popped[q], pushes[q])
    prog = _Program(key=key, ops=tuple(ops), engine_pcs=engine_pcs, nbytes=len(raw),
                    mem_hi=max((o.mem_hi for o in ops), default=0), unmatched_pop=unmatched)
    with _cache_lock:
        _program_cache[key] = prog
        if len(_program_cache) > _CACHE_SIZE:
            _program_cache.popitem(last=False)
    return prog


# ------------------------------------------------------------------------------------------------
# Scheduling state of one cluster
# ------------------------------------------------------------------------------------------------

class _ClusterRun:
    """Dispatch, start and end cycles of one cluster's instructions as they become known."""

    def __init__(self, cluster: int, prog: _Program, cfg: MachineConfig):
        n = len(prog.ops)
        self.cluster = cluster
        self.prog = prog
        self.ops = prog.ops
        self.qd = cfg.queue_depth
        self.d = [0] * n
        self.s = [-1] * n                  # -1: not scheduled yet
        self.e = [0] * n
        self.g: list[int | None] = [None] * n
        self.dispatched = 0                # instructions whose dispatch cycle is known
        self.pos = [0] * len(ENGINES)      # next instruction (index into engine_pcs) per engine
        self.free = [0] * len(ENGINES)     # end of the last scheduled instruction per engine
        self.offered = [False] * len(ENGINES)
        self.push_end: list[list[int]] = [[] for _ in TOKEN_QUEUES]
        self.popped = [0] * len(TOKEN_QUEUES)
        self.left = n
        self.busy = [0] * len(ENGINES)
        self.token_wait = [0] * len(ENGINES)
        self.port_wait = [0] * len(ENGINES)

    def advance_dispatch(self) -> None:
        """Compute dispatch cycles in program order as far as they are determined (rule 1)."""
        ops, d, k = self.ops, self.d, self.dispatched
        while k < len(ops):
            o = ops[k]
            t = d[k - 1] + 1 if k else 0
            if o.eng != _CONTROL and o.eng_index >= self.qd:
                j = self.prog.engine_pcs[o.eng][o.eng_index - self.qd]
                if self.s[j] < 0:
                    break                  # the queue is full until j starts, not known yet
                t = max(t, self.s[j] + 1)
            d[k] = t
            if o.eng == _CONTROL:          # END: no engine; done one cycle after dispatch
                self.s[k] = self.e[k] = t + 1
                self.left -= 1
            k += 1
        self.dispatched = k

    def offer(self, heap: list) -> None:
        """Put the next instruction of each engine on the heap if its start cycle is determined."""
        for eng, pcs in enumerate(self.prog.engine_pcs):
            if self.offered[eng] or self.pos[eng] >= len(pcs):
                continue
            pc = pcs[self.pos[eng]]
            if pc >= self.dispatched:
                continue
            o = self.ops[pc]
            ready = max(self.d[pc] + 1, self.free[eng])
            t_tok = 0
            for q in o.pops:
                k = self.popped[q]
                if k >= len(self.push_end[q]):
                    break
                t_tok = max(t_tok, self.push_end[q][k])
            else:
                start = max(ready, t_tok)
                heapq.heappush(heap, (start, self.cluster, o.prio, pc, start - ready))
                self.offered[eng] = True

    def schedule(self, pc: int, start: int, end: int, grant: int | None, token_wait: int) -> None:
        o = self.ops[pc]
        eng = o.eng
        self.s[pc], self.e[pc], self.g[pc] = start, end, grant
        self.pos[eng] += 1
        self.free[eng] = end
        self.offered[eng] = False
        for q in o.pops:
            self.popped[q] += 1
        for q in o.pushes:
            self.push_end[q].append(end)
        self.left -= 1
        self.busy[eng] += end - start
        self.token_wait[eng] += token_wait
        if grant is not None:
            self.port_wait[eng] += grant - start

    def blocked(self) -> list[str]:
        """Why each unfinished engine cannot proceed (for the deadlock message)."""
        why = []
        for eng, pcs in enumerate(self.prog.engine_pcs):
            if self.pos[eng] >= len(pcs):
                continue
            o = self.ops[pcs[self.pos[eng]]]
            if o.pc >= self.dispatched:
                h = self.ops[self.dispatched]
                j = self.prog.engine_pcs[h.eng][h.eng_index - self.qd]
                why.append(f"{o.who(self.cluster)} is not dispatched: dispatch is stalled at pc {h.pc} "
                           f"({h.op}) because the {h.engine} queue is full until pc {j} "
                           f"({self.ops[j].op}) starts")
                continue
            for q in o.pops:
                if self.popped[q] >= len(self.push_end[q]):
                    why.append(f"{o.who(self.cluster)} waits for token #{self.popped[q] + 1} of the "
                               f"{_QUEUE_NAME[q]} queue ({len(self.push_end[q])} pushed so far)")
                    break
        return why

    def stats(self, trace: bool, beat_bytes: int, saturations: int) -> ClusterStats:
        ops = self.ops
        timeline = None
        if trace:
            timeline = [InstrTiming(o.pc, o.op, o.engine, self.d[o.pc], self.s[o.pc], self.e[o.pc], self.g[o.pc])
                        for o in ops]
        # totals over the program and the finished schedule: computed once per schedule (a replayed
        # run reuses this object), they cost milliseconds per run on programs of thousands of ops
        totals = self.__dict__.get("_totals")
        if totals is None:
            totals = self._totals = (max(self.e), sum(o.words for o in ops if o.eng == _LOAD),
                                     sum(o.words for o in ops if o.eng == _STORE),
                                     sum(o.macs for o in ops), sum(o.slots for o in ops))
        cycles, loaded, stored, macs, slots = totals
        return ClusterStats(
            cycles=cycles, instructions=len(ops),
            busy={e: self.busy[n] for n, e in enumerate(ENGINES)},
            token_wait={e: self.token_wait[n] for n, e in enumerate(ENGINES)},
            port_wait={"load": self.port_wait[_LOAD], "store": self.port_wait[_STORE]},
            bytes_loaded=beat_bytes * loaded, bytes_stored=beat_bytes * stored,
            macs=macs, mac_slots=slots, saturations=saturations, timeline=timeline)


# ------------------------------------------------------------------------------------------------
# The card
# ------------------------------------------------------------------------------------------------

def _check_args(cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int]) -> None:
    if not isinstance(cfg, MachineConfig):
        raise TypeError(f"cfg must be a MachineConfig, got {type(cfg).__name__}")
    if not isinstance(memory, np.ndarray) or memory.dtype != np.uint8 or memory.ndim != 1:
        raise TypeError("memory must be a 1-D numpy uint8 array (the card's main-memory image)")
    if not memory.flags.c_contiguous or not memory.flags.writeable:
        raise ValueError("memory must be a contiguous, writable array (STOREs modify it in place)")
    if len(memory) > cfg.mem_bytes:
        raise SimError(f"the memory image ({len(memory)} bytes) is larger than the card's memory "
                       f"({cfg.mem_bytes} bytes on machine {cfg.name!r})")
    for c, addr in programs.items():
        if not isinstance(c, (int, np.integer)) or not 0 <= c < cfg.clusters_per_card:
            raise SimError(f"cluster {c!r} does not exist: machine {cfg.name!r} has clusters "
                           f"0..{cfg.clusters_per_card - 1}")
        if not isinstance(addr, (int, np.integer)) or not 0 <= addr < len(memory):
            raise SimError(f"cluster {c}: program address {addr!r} is outside the "
                           f"{len(memory)}-byte memory image")
        if addr % cfg.beat_bytes:     # instructions are fetched in whole memory words
            raise SimError(f"cluster {c}: program address {addr:#x} is not {cfg.beat_bytes}-byte aligned")


#: the program loader and argument checks, shared with the RTL's runners (hw/run.py)
load_program, check_run_args = _load_program, _check_args


def run_card(cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int], *,
             check_hazards: bool = True, trace: bool = False, threads: int | None = None) -> CardStats:
    """Run the programs of some clusters of one card to completion (see :func:`_run_card`).

    ``threads``: threads a large CONV (its GEMM on the engine's threads, see :mod:`sim.gemm`, or
    with numpy's engine its rows of output pixels) and the copy of a large LOAD are split over;
    None: :func:`default_threads`. Results and cycles do not depend on it.

    BLAS is held to one thread meanwhile: the model issues many medium-sized GEMMs, for which
    OpenBLAS's threads gain little on an idle machine and thrash when the other cores are busy
    (ResNet-18 took 2.5 s instead of 0.16 s on two cores with one of them loaded)."""
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    with _single_thread_blas() as alone:
        if threads is None:
            threads = default_threads() if alone else 1
        return _run_card(cfg, memory, programs, check_hazards=check_hazards, trace=trace, threads=threads)


def default_threads() -> int:
    """Threads one card's run uses by default: the environment variable ``MDLA_SIM_THREADS`` if set
    (``cores``: the process's cores), else 1. A run that starts while another one is in progress in
    the process (cards in threads) uses one.

    One by default because the split pays only on idle cores: on the shared 2-core machine, with
    other processes keeping both cores busy, ResNet-18 took 2.5 times the wall time with 2 threads
    (the run waits for its descheduled half) and 25 % more CPU time (bench/bench_speed.py)."""
    env = os.environ.get("MDLA_SIM_THREADS", "").strip()
    if not env:
        return 1
    if env == "cores":
        return available_cores()
    if not env.isdigit() or int(env) < 1:
        raise ValueError(f"MDLA_SIM_THREADS must be a positive integer or 'cores', got {env!r}")
    return int(env)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None
_blas_controller = None     #: the process's thread pools, found once (a search costs ~0.3 ms, per run it showed)


def _blas_pools() -> ThreadpoolController:
    """threadpoolctl's controller of the BLAS libraries loaded in the process (numpy's, loaded
    with numpy, before any run); the search of the loaded libraries is done once."""
    global _blas_controller
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller


@contextmanager
def _single_thread_blas():
    """threadpoolctl's limit is process-wide, so concurrent runs (cards in threads) share one:
    the first run in sets it, the last one out restores the original. Yields whether no other run
    was in progress when this one started."""
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _blas_pools().limit(limits=1, user_api="blas")
        _blas_users += 1
        alone = _blas_users == 1
    try:
        yield alone
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def memory_words(cfg: MachineConfig, memory: np.ndarray) -> np.ndarray:
    """The memory image as ``int16[words, lanes]`` (the view LOAD and STORE work on)."""
    bb = cfg.beat_bytes
    return memory[:len(memory) // bb * bb].view("<i2").reshape(-1, cfg.lanes)


def apply_effect(units: ClusterUnits, i: Instr, mem_words: np.ndarray, beat_bytes: int) -> None:
    """Apply the data effect of one instruction to its cluster's units (and, for a LOAD or STORE,
    to the memory image)."""
    effect = _EFFECTS[i.op]
    if effect in ("load", "store"):
        getattr(units, effect)(i, mem_words, i.dram_addr // beat_bytes)
    elif effect is not None:
        getattr(units, effect)(i)


class EffectSink(Protocol):
    """Where :func:`_run_card` sends the data effects when it does not apply them itself.

    ``effect`` receives each instruction with a data effect, in start order (the order the serial
    model applies them); ``sync`` marks the release of a BARRIER group; ``finish`` is called once
    the schedule is complete and returns, per cluster, its saturation count and those per pc."""

    def effect(self, cluster: int, op: _Op) -> None: ...

    def sync(self) -> None: ...

    def finish(self) -> dict[int, tuple[int, dict[int, int]]]: ...


def _run_card(cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int], *,
              check_hazards: bool = True, trace: bool = False, sink: EffectSink | None = None,
              threads: int = 1) -> CardStats:
    """Run the programs of some clusters of one card to completion.

    ``memory``: the card's main-memory image from byte 0 (1-D uint8, modified in place by STOREs).
    ``programs``: cluster index -> byte address of its program (32-byte instructions up to and
    including the first END). Every cluster starts with zeroed buffers at cycle 0. With
    ``check_hazards`` a data race between concurrently running instructions raises SimError; with
    ``trace`` each cluster's statistics carry the per-instruction timeline.

    The schedule does not depend on the data, so the data effects can be left to a ``sink``
    (``hw/progress.py`` drops them to time the schedule alone); without one they are applied here, each
    at its instruction's start.
    """
    _check_args(cfg, memory, programs)
    bb = cfg.beat_bytes
    clusters = sorted(int(c) for c in programs)
    progs = {c: _load_program(cfg, memory, int(programs[c]), c) for c in clusters}
    # static checks, before anything runs
    for c in clusters:
        p = progs[c]
        if p.mem_hi > len(memory):
            o = next(o for o in p.ops if o.mem_hi > len(memory))
            raise SimError(f"{o.who(c)}: accesses main memory bytes {o.mem_lo:#x}..{o.mem_hi - 1:#x}, "
                           f"beyond the end of the {len(memory)}-byte memory image")
        if p.unmatched_pop is not None:
            q, pc, k, n = p.unmatched_pop
            raise SimError(f"deadlock: {p.ops[pc].who(c)} pops token #{k} of the {_QUEUE_NAME[q]} queue, "
                           f"but the program pushes only {n} token(s) into it")

    mem_words = memory_words(cfg, memory)
    units = {c: ClusterUnits(cfg, threads) for c in clusters} if sink is None else {}
    sat_pcs: dict[int, dict[int, int]] = {c: {} for c in clusters}   # per instruction, when applied here

    def apply(c: int, pc: int, o: _Op) -> None:
        """The data effect of one instruction: here, or handed to the sink."""
        if sink is not None:
            sink.effect(c, o)
            return
        u = units[c]
        before = u.saturations
        apply_effect(u, o.instr, mem_words, bb)
        if u.saturations != before:      # per instruction, so the runtime can report them per layer
            sat_pcs[c][pc] = sat_pcs[c].get(pc, 0) + u.saturations - before

    # The schedule does not depend on the data: a rerun of the same programs replays the recorded
    # order of the data effects (and the race check's verdict) instead of scheduling again.
    sched_key = (cfg, tuple((c, int(programs[c]), progs[c].key) for c in clusters))
    with _cache_lock:
        cached = _schedule_cache.get(sched_key)
        if cached is not None:
            _schedule_cache.move_to_end(sched_key)
    if cached is not None and (cached[2] or not check_hazards) and sink is None:
        _, runs, _, plan = cached
        plan.replay(memory, units, mem_words, sat_pcs)
        return _card_stats(runs, units, sat_pcs, None, clusters, trace, bb)

    order: list[tuple[int, int]] = []
    runs = {c: _ClusterRun(c, progs[c], cfg) for c in clusters}
    hz = HazardChecker(bb) if check_hazards else None
    if hz is not None:
        for c in clusters:
            a = int(programs[c])
            hz.add_permanent(f"the program of cluster {c} (fetched throughout the run)",
                             [Access(MEMORY, a // bb, -(-(a + progs[c].nbytes) // bb), False)])

    heap: list = []
    for r in runs.values():
        r.advance_dispatch()
        r.offer(heap)
    port_free = 0
    latency = cfg.mem_latency
    # BARRIERs that have started and wait for their partners: (mask, k) -> {cluster: (pc, start, token_wait)}
    barriers: dict[tuple[int, int], dict[int, tuple[int, int, int]]] = {}
    barrier_count = {c: 0 for c in clusters}
    while heap:
        start, c, _, pc, token_wait = heapq.heappop(heap)
        r = runs[c]
        o = r.ops[pc]
        i = o.instr
        if o.op == "BARRIER":      # rule 6: all partners end together, one cycle after the last starts
            key = (i.mask, barrier_count[c])
            barrier_count[c] += 1
            arrived = barriers.setdefault(key, {})
            arrived[c] = (pc, start, token_wait)
            # It has started: its queue slot is free, so dispatch may go on (rule 1); the compute
            # engine stays held (still offered) until the group is released.
            r.s[pc] = start
            r.advance_dispatch()
            r.offer(heap)
            if all(m in arrived for m in range(cfg.clusters_per_card) if i.mask >> m & 1):
                end = max(s_ for _, s_, _ in arrived.values()) + 1
                for m, (mpc, ms, mtw) in sorted(arrived.items()):
                    runs[m].schedule(mpc, ms, end, None, mtw)
                    runs[m].advance_dispatch()
                    runs[m].offer(heap)
                del barriers[key]
                if sink is not None:
                    sink.sync()
            continue
        grant = None
        if o.words:
            grant = max(start, port_free)
            port_free = grant + o.words
            end = grant + o.words + latency
        else:
            end = start + o.cycles
        if hz is not None and o.accesses:
            msg = hz.check(o.who(c), start, end, [
                Access(MEMORY if kind == "memory" else (kind, c, mv), lo, hi, w, ex)
                for kind, mv, lo, hi, w, ex in o.accesses])
            if msg is not None:
                raise SimError(msg)
        if o.effect is not None:
            apply(c, pc, o)
            order.append((c, pc))
        r.schedule(pc, start, end, grant, token_wait)
        r.advance_dispatch()
        r.offer(heap)

    stuck = [f"cluster {m}, pc {mpc} (BARRIER #{k + 1}, mask {mask:#b}) waits for cluster(s) "
             f"{[x for x in range(cfg.clusters_per_card) if mask >> x & 1 and x not in arrived]}"
             + ("" if all(x in runs for x in range(cfg.clusters_per_card) if mask >> x & 1) else
                " (some of which run no program)")
             for (mask, k), arrived in barriers.items() for m, (mpc, _, _) in arrived.items()]
    stuck += [w for r in runs.values() if r.left for w in r.blocked()
              if "BARRIER" not in w]
    if stuck:
        raise SimError("deadlock: " + "; ".join(stuck))

    with _cache_lock:
        _schedule_cache[sched_key] = (order, runs, check_hazards, _replay_plan(order, runs, bb, cfg))
        if len(_schedule_cache) > _CACHE_SIZE:
            _schedule_cache.popitem(last=False)
    return _card_stats(runs, units, sat_pcs, sink, clusters, trace, bb)


#: the effects that may saturate (their output stage clips): counted per instruction on replay
_SATURATING = frozenset({"conv", "avgpool"})


def _replay_plan(order: list[tuple[int, int]], runs: dict, bb: int, cfg: MachineConfig) -> ReplayPlan:
    """The recorded effect order as a :class:`sim.replay.ReplayPlan` of (cluster, pc, effect,
    instruction, memory word or None, may saturate, memory byte range) entries, built once per
    recorded schedule and kept with it (a replay then looks nothing up per instruction). It applies
    exactly what :func:`apply_effect` applies, keeping the CONVs' kernel operands from run to run
    where the weights they come from are unchanged (see sim/replay.py)."""
    out = []
    for c, pc in order:
        o = runs[c].ops[pc]
        i = o.instr
        out.append((c, pc, o.effect, i, i.dram_addr // bb if o.effect in ("load", "store") else None,
                    o.effect in _SATURATING, o.mem_lo, o.mem_hi))
    return ReplayPlan(out, cfg)


def _card_stats(runs, units, sat_pcs, sink, clusters, trace: bool, bb: int) -> CardStats:
    if sink is not None:
        done = sink.finish()
        sat_pcs = {c: by_pc for c, (_, by_pc) in done.items()}
        saturations = {c: total for c, (total, _) in done.items()}
    else:
        saturations = {c: u.saturations for c, u in units.items()}
    stats = {c: runs[c].stats(trace, bb, saturations[c]) for c in clusters}
    for c in clusters:
        stats[c].saturations_by_pc = sat_pcs[c]
    return CardStats(cycles=max((s.cycles for s in stats.values()), default=0), clusters=stats)
