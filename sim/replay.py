"""Replays of a recorded schedule that keep the CONVs' kernel operands from one run to the next.

A repeated run of the same programs replays the recorded order of the data effects
(:mod:`sim.card`). Most of the kernel words a CONV reads are weights: loaded from main memory that
nothing writes during the run and that the host does not change between runs. Converting them to
the GEMM's float64 operand on every LOAD (and counting their nonzeros for the depthwise path) was a
fifth to a third of a warm run of the small networks. A :class:`ReplayPlan` finds, once per
recorded schedule, which kernel words each CONV reads and which kernel LOAD wrote each of them last
(the addresses are in the instructions, so this does not depend on the data), and keeps, per CONV,
its operands as captured on a run (:class:`sim.units.KernelOperands`). A later run uses them
instead of the kernel buffers when

* every kernel LOAD the CONV depends on reads main memory that no STORE of the plan writes (so the
  bytes it reads are those the run started with), and
* those bytes are equal to the ones of the run that captured the operands: checked at the start of
  every run, one comparison of the merged byte ranges (a LOAD whose bytes were seen to change is
  never relied on again: its CONVs read the kernel buffers as before).

Kernel words no LOAD wrote are zero on every run (the buffers are zeroed when a run starts). A
kernel LOAD all of whose readers use kept operands is then not applied at all: the buffers are
private to the run, so nothing else can see the words it would have written. Everything else (maps,
residual and output buffers, accumulators, STOREs, saturation counts per instruction, the schedule)
is exactly as before; the results are the same bits (tests/test_sim_replay.py compares them with
plain runs). The kept operands take memory: at most :data:`CACHE_BYTES` over all recorded
schedules, the least recently run schedule's dropped first (it captures them again when it runs
again).
"""
from __future__ import annotations

import bisect
import threading
import weakref
from collections import OrderedDict

import numpy as np

from arch.isa import Buf, Init
from arch.machine import MachineConfig

from .units import _mv_index, mv_list

__all__ = ["ReplayPlan", "CACHE_BYTES"]

#: bytes of kept kernel operands over all recorded schedules
CACHE_BYTES = 512 << 20

_lock = threading.Lock()
_kept: OrderedDict[int, weakref.ref] = OrderedDict()   #: plans holding kept operands, least recent first


def _run_starts(x: np.ndarray) -> np.ndarray:
    """Indices where runs of equal values start in the 1-D array ``x`` (non-empty)."""
    return np.concatenate(([0], np.flatnonzero(x[1:] != x[:-1]) + 1))


def _merge(ranges) -> list[list[int]]:
    """Byte ranges [lo, hi) merged into disjoint sorted ones."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


class _State:
    """What one capture found: the plan to run while the memory bytes equal ``snaps``."""

    __slots__ = ("ranges", "snaps", "fast", "loads", "nbytes")

    def __init__(self, ranges, snaps, fast, loads, nbytes):
        self.ranges = ranges        #: merged byte ranges [lo, hi) of the kernel LOADs relied on
        self.snaps = snaps          #: their bytes on the capturing run, as uint64 words
        #: the entries to run: (c, pc, effect, i, word, saturating, kept operands or None, keep the
        #: accumulators, the MVs share the maps)
        self.fast = fast
        self.loads = loads          #: the kernel LOADs relied on (entry indices)
        self.nbytes = nbytes

    def matches(self, memory: np.ndarray) -> bool:
        return all(np.array_equal(memory[lo:hi].view(np.uint64), s) for (lo, hi), s in zip(self.ranges, self.snaps))

    def changed(self, memory: np.ndarray, load_range: dict) -> set[int]:
        """The LOADs relied on whose bytes differ in ``memory``."""
        starts = [lo for lo, _ in self.ranges]
        out = set()
        for k in self.loads:
            lo, hi = load_range[k]
            r = bisect.bisect_right(starts, lo) - 1
            base = self.ranges[r][0]
            snap = self.snaps[r].view(np.uint8)[lo - base:hi - base]
            if not np.array_equal(memory[lo:hi], snap):
                out.add(k)
        return out


class ReplayPlan:
    """A recorded schedule's data effects in start order, with the analysis of its kernel words.

    ``entries``: per effect in start order ``(cluster, pc, effect, instruction, memory word or None,
    may saturate, first byte, one past the last byte of its main-memory range)``."""

    def __init__(self, entries, cfg: MachineConfig):
        self.entries = tuple(e[:6] for e in entries)
        W, M, V = cfg.kernel_words, cfg.mv_per_cluster, cfg.vv_per_mv
        last: dict[int, np.ndarray] = {}     # per cluster: entry index of each kernel word's last writer, -1 none
        self.readers: dict[int, set[int]] = {}   # kernel LOAD -> CONVs reading words it wrote last
        self.deps: dict[int, frozenset[int]] = {}   # CONV -> kernel LOADs that wrote last the words it reads
        self.load_range: dict[int, tuple[int, int]] = {}
        #: CONV -> what determines its kernel operands' values (with the bytes of the LOADs they
        #: depend on): its fields, and per word it reads which LOAD wrote it last, a LOAD being named
        #: by its fields (a tile's reload of a layer's weights is the same values: kept once)
        self.content: dict[int, tuple] = {}
        names: dict[tuple, int] = {}
        name = np.full(len(entries) + 1, -1, dtype=np.int64)    # entry -> its LOAD's name; [-1]: none
        stores = []
        for k, (c, _pc, effect, i, _w, _s, lo, hi) in enumerate(entries):
            if effect == "store":
                stores.append((lo, hi))
            elif effect == "load" and i.buf == Buf.KERNEL:
                w = last.setdefault(c, np.full((W, M, V), -1, dtype=np.int64))
                rows = i.n0 * i.n1 * i.n2 // i.nvv
                w[i.buf_addr:i.buf_addr + rows, _mv_index(mv_list(i.mv_mask)), :i.nvv] = k
                self.readers[k] = set()
                self.load_range[k] = (lo, hi)
                name[k] = names.setdefault((i.dram_addr, i.n0, i.n1, i.s1, i.n2, i.s2, i.nvv, i.buf_addr), len(names))
            elif effect == "conv":
                w = last.get(c)
                deps: set[int] = set()
                mvs = _mv_index(mv_list(i.mv_mask))
                K = i.kh * i.kw * i.cin
                writers: tuple = ()
                if w is not None:
                    read = w[i.kern_addr:i.kern_addr + K, mvs, :i.nvv].ravel()
                    if i.init == Init.BIAS:
                        read = np.concatenate([read, w[i.bias_addr:i.bias_addr + 2, mvs, :i.nvv].ravel()])
                    # both as runs of equal values (a LOAD writes whole rows: a few runs): exact and small
                    deps.update(read[_run_starts(read)].tolist())
                    deps.discard(-1)
                    names_read = name[read]
                    starts = _run_starts(names_read)
                    writers = (read.size, starts.tobytes(), names_read[starts].tobytes())
                for d in deps:
                    self.readers[d].add(k)
                self.deps[k] = frozenset(deps)
                self.content[k] = (i.kern_addr, i.kh, i.kw, i.cin, i.mv_mask, i.nvv, int(i.init),
                                   i.bias_addr if i.init == Init.BIAS else -1, writers)
        # Accumulators only a later CONV with INIT ACC reads: walking back from the end (where the
        # run's buffers are dropped), a CONV's accumulator entries are live when a later INIT ACC
        # CONV reads one of them before another CONV overwrites it.
        #: CONV -> whether a later CONV reads the accumulators it writes (absent: True)
        self.acc_live: dict[int, bool] = {}
        live: dict[int, np.ndarray] = {}
        for k in range(len(entries) - 1, -1, -1):
            c, _pc, effect, i = entries[k][:4]
            if effect != "conv":
                continue
            a = live.setdefault(c, np.zeros((cfg.acc_entries, M, V), dtype=bool))
            region = (slice(i.acc_addr, i.acc_addr + i.oh * i.ow), _mv_index(mv_list(i.mv_mask)), slice(0, i.nvv))
            self.acc_live[k] = bool(a[region].any())
            a[region] = i.init == Init.ACC
        merged = _merge(stores)
        starts = [lo for lo, _ in merged]

        def stored(lo: int, hi: int) -> bool:
            r = bisect.bisect_right(starts, hi - 1) - 1       # the last store range starting before hi
            return r >= 0 and merged[r][1] > lo
        #: kernel LOADs whose bytes no STORE of the plan writes: the bytes the run started with
        self.steady = frozenset(k for k, (lo, hi) in self.load_range.items() if not stored(lo, hi))
        self.volatile: set[int] = set()    #: kernel LOADs whose bytes were seen to change between runs
        self.state: _State | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------
    def replay(self, memory: np.ndarray, units: dict, mem_words: np.ndarray, sat_pcs: dict) -> None:
        """Apply the data effects to ``units`` and ``memory`` (whose int16 word view is ``mem_words``),
        counting the saturations per instruction into ``sat_pcs``."""
        st = self.state
        if st is not None:
            if st.matches(memory):
                _touch(self)
                _run(st.fast, units, mem_words, sat_pcs)
                return
            changed = st.changed(memory, self.load_range)
            with self._lock:
                self.volatile |= changed
                if self.state is st:
                    self.state = None
        self._capture(memory, units, mem_words, sat_pcs)

    def _capture(self, memory: np.ndarray, units: dict, mem_words: np.ndarray, sat_pcs: dict) -> None:
        """A run applying every effect that also captures, just before each CONV that may keep its
        kernel operands, those operands; then publishes the plan that relies on them."""
        ok = self.steady - self.volatile
        kept: dict[tuple, object] = {}
        per_conv: dict[int, object] = {}
        nbytes = 0
        run = []
        bound = _bound(units)
        for k, (c, pc, effect, i, word, saturating) in enumerate(self.entries):
            kc = None
            if effect == "conv" and self.deps[k] <= ok:
                key = self.content[k]
                kc = kept.get(key)
                if kc is None:
                    kc = units[c].capture_kernel(i)     # the kernel buffers as this run's LOADs left them
                    if nbytes + kc.nbytes <= CACHE_BYTES:
                        kept[key] = kc
                        nbytes += kc.nbytes
                    else:
                        kc = None
                if kc is not None:
                    per_conv[k] = kc
            # whether the MVs share the maps depends on which LOADs ran, not on the data (load
            # tags; words no LOAD wrote are zero in every MV): the same on every run of the plan
            same = units[c].maps_shared(i) if effect == "conv" else None
            e = (c, pc, effect, i, word, saturating, kc, self.acc_live.get(k, True), same)
            _run((e,), units, mem_words, sat_pcs, bound)
            run.append(e)
        # the LOADs relied on read bytes that no STORE writes: the same after the run as before
        loads = set().union(*(self.deps[k] for k in per_conv)) if per_conv else set()
        ranges = _merge(self.load_range[k] for k in loads)
        snaps = [memory[lo:hi].view(np.uint64).copy() for lo, hi in ranges]
        skip = {k for k, rd in self.readers.items() if rd <= set(per_conv)}
        fast = tuple(e for k, e in enumerate(run) if k not in skip)
        st = _State([tuple(r) for r in ranges], snaps, fast, frozenset(loads), nbytes + sum(s.nbytes for s in snaps))
        with self._lock:
            self.state = st
        _touch(self)


def _touch(plan: ReplayPlan) -> None:
    """Mark ``plan`` the most recently run; drop the kept operands of the least recent ones while
    all of them take more than CACHE_BYTES."""
    with _lock:
        key = id(plan)
        _kept.pop(key, None)
        _kept[key] = weakref.ref(plan)
        total = 0
        for k in reversed(list(_kept)):
            p = _kept[k]()
            st = None if p is None else p.state
            if st is None:
                del _kept[k]
                continue
            total += st.nbytes
            if total > CACHE_BYTES and p is not plan:
                p.state = None
                del _kept[k]


def _bound(units: dict) -> dict:
    return {c: {"load": u.load, "store": u.store, "conv": u.conv, "maxpool": u.maxpool, "avgpool": u.avgpool}
            for c, u in units.items()}


def _run(entries, units: dict, mem_words: np.ndarray, sat_pcs: dict, bound: dict | None = None) -> None:
    """Apply ``(c, pc, effect, i, word, saturating, kc, keep_acc, same_maps)`` entries in order,
    counting the saturations per instruction as sim.card's ``apply`` does."""
    bound = bound or _bound(units)
    for c, pc, effect, i, word, saturating, kc, keep_acc, same_maps in entries:
        fn = bound[c][effect]
        if word is not None:
            fn(i, mem_words, word)
        elif saturating:
            u = units[c]
            before = u.saturations
            if effect == "conv":
                fn(i, kc, keep_acc, same_maps)
            else:
                fn(i)
            if u.saturations != before:
                by_pc = sat_pcs[c]
                by_pc[pc] = by_pc.get(pc, 0) + u.saturations - before
        else:
            fn(i)
