"""Card: ``clusters_per_card`` clusters sharing one main memory with a single data port.

The main memory is one :class:`amaranth.lib.memory.Memory` of words (``beat_bytes`` each),
initialised from the memory image at elaboration. It has:

* one data read port and one data write port, which together are *the* memory port of
  :mod:`arch.timing` rule 3: it is granted whole to one LOAD or STORE at a time, first come first
  served by start cycle (ties: lower cluster first, then load before store). A transfer starting in
  cycle ``s`` gets ``g = max(s, port_free)`` and owns the port in ``[g, g + words)``, so at most one
  transfer drives it in any cycle;
* the barrier unit (:class:`BarrierUnit`, rule 6), which ends the matching BARRIERs of the
  clusters in a mask together;
* per cluster, an instruction port of ``INSTR_BYTES / beat_bytes`` combinational read ports that
  return one whole instruction per cycle (instruction fetch never competes with data).

With ``external=True`` the card has no memory of its own: the same ports (a synchronous,
non-transparent data read port, a write port, and per cluster a combinational whole-instruction
fetch port) are brought out as ``mem_*`` ports, for a memory that lives outside the Amaranth design
(the Verilog export's, :mod:`hw.export`, whose depth is then a Verilog parameter and whose address
ports are full 32-bit word addresses).
"""
from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from arch.isa import INSTR_BITS, INSTR_BYTES
from arch.machine import MachineConfig

from .cluster import CYCLE_BITS, Cluster

__all__ = ["Card", "BarrierUnit", "clusters_needed"]


def clusters_needed(programs) -> int:
    """Clusters a card must have to run programs on the clusters in ``programs`` (cluster numbers or
    a dict keyed by them): up to the highest one, so every cluster keeps its number, its port
    priority and its bit in BARRIER masks."""
    return max((int(c) for c in programs), default=0) + 1


class BarrierUnit(wiring.Component):
    """Rule 6, combinationally: releases the BARRIERs of a group of clusters in the cycle the last of
    them starts.

    Cluster ``c`` shows ``wait[c]`` from the start cycle of a BARRIER until its release, with the
    BARRIER's ``mask[c]`` and ``count[c]``, the number of BARRIERs it has finished (so this is its
    ``count[c]``-th BARRIER, counting from 0). ``release[c]`` is true when every cluster ``j`` in
    ``mask[c]`` waits at a BARRIER with the same mask and the same count: the functional model's
    meeting of the k-th BARRIERs with key ``(mask, k)``. A cluster waits at one BARRIER at a time
    (its compute engine is held), so the group completes in the start cycle of its last member, all
    members see ``release`` in that cycle and end in the next one, ``1 + max(s)``; members that do
    not match (another mask, another count, or a cluster that runs no program) are never released,
    as in the model (the runners report a deadlock)."""

    def __init__(self, n: int):
        self.n = n
        super().__init__({"wait": In(n), "mask": In(data.ArrayLayout(n, n)),
                          "count": In(data.ArrayLayout(32, n)), "release": Out(n)})

    def elaborate(self, platform):
        m = Module()
        n = self.n
        for c in range(n):
            partner = []
            for j in range(n):
                if j == c:
                    continue
                same = self.wait[j] & (self.mask[j] == self.mask[c]) & (self.count[j] == self.count[c])
                partner.append(~self.mask[c][j] | same)
            m.d.comb += self.release[c].eq(self.wait[c] & Cat(1, *partner).all())
        return m


class Card(wiring.Component):
    """A card with its clusters and main memory.

    Parameters
    ----------
    cfg : MachineConfig
    init : list[int]
        Initial main-memory words (little-endian, ``beat_bytes`` each); the memory has this depth.
    external : bool
        No memory inside: bring the memory ports out (``mem_*`` below); ``init`` must be empty.
    clusters : int
        Clusters built, ``1 .. clusters_per_card`` (default all): clusters ``0 .. clusters - 1`` of the
        machine, for programs that use no higher cluster (a simulator evaluates idle clusters every
        cycle; the ports below are then ``clusters`` wide). The runners build
        :func:`clusters_needed` of them.

    Ports
    -----
    enable : In(clusters)
        Bit ``c``: cluster ``c`` runs its program (held from cycle 0).
    prog_addr : In(ArrayLayout(32, clusters))
        Word address of each cluster's program (held).
    now : Out(CYCLE_BITS)
        The cycle number (0 in the first cycle).
    done : Out(1)
        Every enabled cluster is done.
    error : Out(1)
        Some cluster fetched an illegal opcode.
    mem_rd_addr : Out(32), mem_rd_data : In(8 * beat_bytes)
        (``external`` only) data read port: ``mem_rd_data`` is the word at the address of the
        previous cycle, read before that cycle's write.
    mem_wr_en : Out(1), mem_wr_addr : Out(32), mem_wr_data : Out(8 * beat_bytes)
        (``external`` only) data write port.
    mem_fetch_addr : Out(ArrayLayout(32, clusters)), mem_fetch_data : In(ArrayLayout(INSTR_BITS, ...))
        (``external`` only) instruction ports: ``mem_fetch_data[c]`` holds the ``INSTR_BYTES /
        beat_bytes`` words from ``mem_fetch_addr[c]`` on (lowest address in the low bits), combinationally.
    """

    def __init__(self, cfg: MachineConfig, init, *, external: bool = False, clusters: int | None = None):
        self.cfg = cfg
        self.n = cfg.clusters_per_card if clusters is None else int(clusters)
        if not 1 <= self.n <= cfg.clusters_per_card:
            raise ValueError(f"machine {cfg.name!r} has 1 .. {cfg.clusters_per_card} clusters, not {clusters!r}")
        self.init = list(init)
        self.depth = max(1, len(self.init))
        self.external = bool(external)
        if self.external and self.init:
            raise ValueError("a card with an external memory takes no initial image")
        n, wbits = self.n, cfg.beat_bytes * 8
        members = {
            "enable": In(n),
            "prog_addr": In(data.ArrayLayout(32, n)),
            "now": Out(CYCLE_BITS), "done": Out(1), "error": Out(1),
        }
        if self.external:
            members.update({
                "mem_rd_addr": Out(32), "mem_rd_data": In(wbits),
                "mem_wr_en": Out(1), "mem_wr_addr": Out(32), "mem_wr_data": Out(wbits),
                "mem_fetch_addr": Out(data.ArrayLayout(32, n)),
                "mem_fetch_data": In(data.ArrayLayout(INSTR_BITS, n)),
            })
        super().__init__(members)
        self.clusters = [Cluster(cfg) for _ in range(n)]
        self.memory = None if self.external else Memory(shape=wbits, depth=self.depth, init=self.init)

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        if self.external:
            # the external port's signals, named like those of an Amaranth memory port
            rp = SimpleNamespace(addr=self.mem_rd_addr, data=self.mem_rd_data)
            wp = SimpleNamespace(en=self.mem_wr_en, addr=self.mem_wr_addr, data=self.mem_wr_data)
        else:
            m.submodules.memory = mem = self.memory
            rp = mem.read_port()
            wp = mem.write_port()
        per_instr = INSTR_BYTES // cfg.beat_bytes
        m.d.sync += self.now.eq(self.now + 1)

        m.submodules.barrier = bar = BarrierUnit(self.n)
        for c, cl in enumerate(self.clusters):
            # a mask names only built clusters (the runners refuse a BARRIER that waits for a cluster
            # without a program), so its bits above the built ones are zero
            m.d.comb += [bar.wait[c].eq(cl.bar_wait), bar.mask[c].eq(cl.bar_mask[:self.n]),
                         bar.count[c].eq(cl.bar_count),
                         cl.bar_release.eq(bar.release[c])]

        port_free = Signal(CYCLE_BITS)
        base = Mux(port_free > self.now, port_free, self.now)
        next_free = base
        for c, cl in enumerate(self.clusters):
            m.submodules[f"cluster{c}"] = cl
            m.d.comb += [cl.enable.eq(self.enable[c]), cl.prog_addr.eq(self.prog_addr[c]), cl.now.eq(self.now)]
            # instruction port
            if self.external:
                m.d.comb += [self.mem_fetch_addr[c].eq(cl.fetch_addr), cl.fetch_data.eq(self.mem_fetch_data[c])]
            else:
                fetch = [mem.read_port(domain="comb") for _ in range(per_instr)]
                for k, p in enumerate(fetch):
                    m.d.comb += p.addr.eq(cl.fetch_addr + k)
                m.d.comb += cl.fetch_data.eq(Cat(*(p.data for p in fetch)))
            # memory-port arbitration in priority order: cluster, then load before store
            for e in ("load", "store"):
                req, words, grant = (getattr(cl, f"{e}_{x}") for x in ("req", "words", "grant"))
                m.d.comb += grant.eq(next_free)
                next_free = Mux(req, next_free + words, next_free)
            # data port: only the owner of the port drives it
            with m.If(cl.mem_r_en):
                m.d.comb += rp.addr.eq(cl.mem_r_addr)
            with m.If(cl.mem_w_en):
                m.d.comb += [wp.en.eq(1), wp.addr.eq(cl.mem_w_addr), wp.data.eq(cl.mem_w_data)]
            m.d.comb += cl.mem_r_data.eq(rp.data)
        any_req = Cat(*(getattr(cl, f"{e}_req") for cl in self.clusters for e in ("load", "store"))).any()
        with m.If(any_req):
            m.d.sync += port_free.eq(next_free)
        m.d.comb += [
            self.done.eq(Cat(*(cl.done for cl in self.clusters)).all()),
            self.error.eq(Cat(*(cl.error for cl in self.clusters)).any()),
        ]
        return m
