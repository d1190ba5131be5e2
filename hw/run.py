"""Run programs on the card RTL in the Amaranth simulator: the engine of the ``amaranth`` executor.

:func:`run_rtl` has the contract of :func:`sim.card.run_card`: it takes the machine, the card's
memory image (modified in place by the STOREs) and the program address of each cluster, and returns
a :class:`sim.card.CardStats` whose cycle counts and counters come from the RTL's own counters.
"""
from __future__ import annotations

import time

import numpy as np
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from arch import isa, timing
from arch.isa import INSTR_BYTES, ISAError
from arch.machine import MachineConfig
from sim.card import CardStats, ClusterStats, InstrTiming, SimError

from .card import Card

__all__ = ["run_rtl", "LAST_RUN", "RTL_OPS"]

#: instructions the RTL executes
RTL_OPS = ("LOAD", "STORE", "CONV", "MAXPOOL", "AVGPOOL", "SYNC", "BARRIER", "END")

#: wall time and cycles of the last run (for reports of simulated cycles per second)
LAST_RUN: dict = {}


def _decode(cfg: MachineConfig, memory: np.ndarray, addr: int, c: int) -> list[isa.Instr]:
    """The cluster's program up to its first END, decoded and validated (the RTL does not check)."""
    if addr % cfg.beat_bytes:
        raise SimError(f"cluster {c}: program address {addr:#x} is not {cfg.beat_bytes}-byte aligned")
    out = []
    pc = 0
    while True:
        a = addr + pc * INSTR_BYTES
        if a + INSTR_BYTES > len(memory):
            raise SimError(f"cluster {c}: the program at byte {addr:#x} has no END instruction before the end "
                           f"of the {len(memory)}-byte memory image")
        try:
            i = isa.decode(memory[a:a + INSTR_BYTES].tobytes())
            isa.validate(i, cfg)
        except ISAError as e:
            raise SimError(f"cluster {c}, pc {pc}: {e}") from None
        if i.op not in RTL_OPS:
            raise SimError(f"cluster {c}, pc {pc} ({i.op}): not implemented in the RTL (it runs {', '.join(RTL_OPS)})")
        if i.op == "BARRIER" and not i.mask >> c & 1:
            raise SimError(f"cluster {c}, pc {pc} (BARRIER): its mask {i.mask:#b} does not include cluster {c} itself")
        if i.op in ("LOAD", "STORE"):
            hi = i.dram_addr + ((i.n2 - 1) * i.s2 + (i.n1 - 1) * i.s1 + i.n0) * cfg.beat_bytes
            if hi > len(memory) // cfg.beat_bytes * cfg.beat_bytes:
                raise SimError(f"cluster {c}, pc {pc} ({i.op}): accesses main memory up to byte {hi - 1:#x}, "
                               f"beyond the end of the {len(memory)}-byte memory image")
        out.append(i)
        if i.op == "END":
            return out
        pc += 1


def _store_words(cfg: MachineConfig, i: isa.Instr) -> np.ndarray:
    base = i.dram_addr // cfg.beat_bytes
    return (base + (np.arange(i.n2)[:, None, None] * i.s2 + np.arange(i.n1)[None, :, None] * i.s1
                    + np.arange(i.n0)[None, None, :])).ravel()


def decode_programs(cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int]) -> dict[int, list]:
    """Check the arguments of an RTL run and decode each cluster's program (shared by the Amaranth
    and Verilog runners): cluster -> instructions, refusing what the RTL does not implement."""
    if not isinstance(memory, np.ndarray) or memory.dtype != np.uint8 or memory.ndim != 1:
        raise TypeError("memory must be a 1-D numpy uint8 array (the card's main-memory image)")
    progs = {}
    for c, a in programs.items():
        if not 0 <= int(c) < cfg.clusters_per_card:
            raise SimError(f"cluster {c!r} does not exist: machine {cfg.name!r} has clusters 0..{cfg.clusters_per_card - 1}")
        if not 0 <= int(a) < len(memory):
            raise SimError(f"cluster {c}: program address {a!r} is outside the {len(memory)}-byte memory image")
        progs[int(c)] = _decode(cfg, memory, int(a), int(c))
    for c, p in progs.items():       # the model's deadlock, found before simulating
        for pc, i in enumerate(p):
            missing = [j for j in range(cfg.clusters_per_card) if i.op == "BARRIER" and i.mask >> j & 1
                       and j not in progs]
            if missing:
                raise SimError(f"deadlock: cluster {c}, pc {pc} (BARRIER, mask {i.mask:#b}) waits for "
                               f"cluster(s) {missing}, which run no program")
    return progs


def cycle_bound(cfg: MachineConfig, progs: dict[int, list]) -> int:
    """A number of cycles no deadlock-free run of these programs can reach (the runners' watchdog)."""
    bound = 100
    for p in progs.values():
        for i in p:
            cost = (timing.transfer_words(i) if i.engine in ("load", "store")
                    else timing.compute_cycles(i, cfg) if i.engine == "compute" else 1)
            bound += 2 * (cost + cfg.mem_latency + 2)
    return bound


def run_rtl(cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int], *, vcd: str | None = None,
            max_cycles: int | None = None, trace: bool = False) -> CardStats:
    """Run the programs of some clusters of one card on the RTL; ``memory`` is updated in place.

    ``vcd``: write a waveform of the whole run to this path. ``max_cycles``: give up (SimError) after
    this many cycles; by default a bound no deadlock-free program can reach. ``trace``: each
    cluster's statistics carry the per-instruction timeline, read cycle by cycle from the RTL's own
    signals (:class:`_Probe`), and ``LAST_RUN['activity']`` the MACs and memory words of each cycle."""
    bb = cfg.beat_bytes
    progs = decode_programs(cfg, memory, programs)
    if not progs:
        return CardStats(cycles=0, clusters={})
    nwords = -(-len(memory) // bb)
    padded = np.zeros(nwords * bb, dtype=np.uint8)
    padded[:len(memory)] = memory
    if bb == 8:
        init = padded.view("<u8").tolist()
    else:
        raw = padded.tobytes()
        init = [int.from_bytes(raw[k * bb:(k + 1) * bb], "little") for k in range(nwords)]
    if max_cycles is None:
        max_cycles = cycle_bound(cfg, progs)
    stored = np.unique(np.concatenate([_store_words(cfg, i) for p in progs.values() for i in p if i.op == "STORE"]
                                      or [np.zeros(0, dtype=np.int64)]))

    card = Card(cfg, init)
    design = Fragment.get(card, None)     # elaborated here so that a probe can find the engines' signals
    probe = _Probe(design, card, progs) if trace else None
    result = {}

    async def bench(ctx):
        ctx.set(card.enable, sum(1 << c for c in progs))
        ctx.set(card.prog_addr.as_value(), sum((programs[c] // bb) << (32 * c) for c in progs))
        if probe is None:
            await ctx.tick().until(card.done | card.error | (card.now >= max_cycles))
        else:
            while True:               # every cycle, the last one (done) included
                probe.sample(ctx)
                if ctx.get(card.done) or ctx.get(card.error) or ctx.get(card.now) >= max_cycles:
                    break
                await ctx.tick()
        result["now"] = ctx.get(card.now)
        result["done"] = ctx.get(card.done)
        result["error"] = ctx.get(card.error)
        result["stats"] = {c: {s: ctx.get(getattr(card.clusters[c], f"stat_{s}")) for s in
                               __import__("hw.cluster", fromlist=["STATS"]).STATS} for c in progs}
        result["words"] = [ctx.get(card.memory.data[int(a)]) for a in stored]

    sim = Simulator(design)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    t0 = time.perf_counter()
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    wall = time.perf_counter() - t0
    LAST_RUN.clear()
    LAST_RUN.update(cycles=result["now"], seconds=wall, cycles_per_second=result["now"] / max(wall, 1e-9))
    if result["error"]:
        raise SimError("an illegal instruction was fetched")
    if not result["done"]:
        raise SimError(f"deadlock: the card did not finish within {max_cycles} cycles")
    # write back the stored words
    if len(stored):
        raw = np.array(result["words"], dtype=object)
        buf = b"".join(int(w).to_bytes(bb, "little") for w in raw)
        vals = np.frombuffer(buf, dtype=np.uint8).reshape(-1, bb)
        for a, row in zip(stored, vals):
            lo = int(a) * bb
            n = min(bb, len(memory) - lo)
            memory[lo:lo + n] = row[:n]
    clusters = {c: cluster_stats(s, bb) for c, s in result["stats"].items()}
    if probe is not None:
        for c, cs in clusters.items():
            cs.timeline = probe.timeline(c)
        LAST_RUN["activity"] = {c: probe.activity(c) for c in progs}
    return CardStats(cycles=max(cs.cycles for cs in clusters.values()), clusters=clusters)


def cluster_stats(s: dict, bb: int) -> ClusterStats:
    """A cluster's performance counters, as read from the RTL, in the functional model's form."""
    return ClusterStats(
        cycles=s["cycles"], instructions=s["instructions"],
        busy={e: s[f"busy_{e}"] for e in ("load", "compute", "store")},
        token_wait={e: s[f"token_wait_{e}"] for e in ("load", "compute", "store")},
        port_wait={e: s[f"port_wait_{e}"] for e in ("load", "store")},
        bytes_loaded=s["words_loaded"] * bb, bytes_stored=s["words_stored"] * bb,
        macs=s["macs"], mac_slots=s["mac_slots"], saturations=s["saturations"])


class _Probe:
    """Reads, each cycle, the signals of the RTL that show what every engine of a cluster does, and
    turns them into the functional model's per-instruction timeline (:class:`sim.card.InstrTiming`).

    Only signals the design already has are observed: each engine queue's read strobe ``r_en`` (the
    engine starts the instruction at its head), the performance counters (``busy_<engine>`` grows
    in every busy cycle, ``instructions`` in every dispatch cycle, ``macs`` and ``words_*`` with
    each MAC step and each word through the memory port) and the memory-port grant returned with a
    LOAD's or STORE's request. An instruction ends at the first cycle after its start in which its
    engine is idle or starts the next instruction."""

    ENGINES = ("load", "compute", "store")
    COUNTERS = ("instructions", "busy_load", "busy_compute", "busy_store", "macs", "words_loaded", "words_stored")

    def __init__(self, design: Fragment, card, progs: dict[int, list]):
        self.progs = progs
        self.signals = [card.now]
        self.columns: dict[tuple[int, str], int] = {}
        for c in progs:
            cl = card.clusters[c]
            frag = next(f for f, _, _ in design.subfragments if cl in getattr(f, "origins", ()))
            queues = {name: f for f, name, _ in frag.subfragments}
            named = {f"start_{e}": next(o for o in queues[f"{e}_queue"].origins if hasattr(o, "r_en")).r_en
                     for e in self.ENGINES}
            named.update({k: getattr(cl, f"stat_{k}") for k in self.COUNTERS})
            named.update(load_grant=cl.load_grant, store_grant=cl.store_grant)
            for k, sig in named.items():
                self.columns[(c, k)] = len(self.signals)
                self.signals.append(sig)
        self.rows: list[list[int]] = []

    def sample(self, ctx) -> None:
        self.rows.append([ctx.get(s) for s in self.signals])

    def _column(self, c: int, name: str) -> np.ndarray:
        return np.array([r[self.columns[(c, name)]] for r in self.rows], dtype=np.int64)

    def _per_cycle(self, c: int, counter: str) -> np.ndarray:
        """The counter's increment in each cycle (a counter is a register: it shows cycle t's
        increment in cycle t + 1; the last cycle sampled is the card's first done cycle)."""
        return np.diff(self._column(c, counter), append=self._column(c, counter)[-1:])

    def activity(self, c: int) -> dict[str, np.ndarray]:
        """Per cycle from 0: MACs issued and words moved through the memory port by cluster ``c``."""
        return {k: self._per_cycle(c, k) for k in ("macs", "words_loaded", "words_stored")}

    def timeline(self, c: int) -> list[InstrTiming]:
        now = np.array([r[0] for r in self.rows], dtype=np.int64)
        assert np.array_equal(now, np.arange(len(now))), "the probe samples every cycle from cycle 0"
        prog = self.progs[c]
        dispatch = np.flatnonzero(self._per_cycle(c, "instructions"))
        out: list[InstrTiming] = []
        starts: dict[str, list[int]] = {}
        ends: dict[str, list[int]] = {}
        for e in self.ENGINES:
            start = self._column(c, f"start_{e}").astype(bool)
            active = self._per_cycle(c, f"busy_{e}").astype(bool)
            s = np.flatnonzero(start)
            stop = np.flatnonzero(start | ~active)     # the engine is idle or starts again
            starts[e] = s.tolist()
            ends[e] = stop[np.searchsorted(stop, s, side="right")].tolist() if len(s) else []
        grants = {e: self._column(c, f"{e}_grant") for e in ("load", "store")}
        seen = dict.fromkeys(self.ENGINES, 0)
        for pc, i in enumerate(prog):
            d = int(dispatch[pc])
            if i.engine not in seen:                      # END: no engine, done one cycle after dispatch
                out.append(InstrTiming(pc, i.op, i.engine, d, d + 1, d + 1, None))
                continue
            k = seen[i.engine]
            seen[i.engine] += 1
            s = starts[i.engine][k]
            g = int(grants[i.engine][s]) if i.engine in grants else None
            out.append(InstrTiming(pc, i.op, i.engine, d, s, ends[i.engine][k], g))
        return out
