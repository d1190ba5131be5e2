"""Address generation: a nested-loop counter that walks several address streams at once.

Every trace of the ISA is a loop nest with affine addresses: a DMA transfer is ``(i2, i1, i0)``
with main-memory offset ``i2*s2 + i1*s1 + i0``; a CONV is ``(oy, ox, ky, kx, ci)`` with maps
address ``((oy*sy + ky*dy)*in_w + ox*sx + kx*dx)*cpitch + ci``; a MAXPOOL or AVGPOOL is ``(oy, ox, b, ky, kx)``.
:class:`LoopNest` runs such a nest with one adder per stream and level and no multiplier: it keeps,
for each level, the stream addresses at the start of that level's current iteration, and when a
level advances, the levels inside it restart from its new address.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LoopNest"]


class LoopNest(wiring.Component):
    """A ``levels``-deep loop nest (level 0 outermost) stepping address streams.

    Parameters
    ----------
    levels : int
        Loop depth.
    streams : dict[str, int]
        Address streams: name -> address width in bits. Addresses wrap at that width.
    count_bits : int
        Width of the per-level iteration counts.

    Ports
    -----
    start : In(1)
        Load ``counts``, ``init_<s>`` and ``inc_<s>``; the first step is presented in this same
        cycle (outputs are combinational from the inputs while ``start`` is high), so a consumer may
        take it at once by also asserting ``next``.
    counts : In(ArrayLayout(unsigned(count_bits), levels))
        Iterations of each level (each at least 1). Sampled at ``start``.
    init_<s> : In(unsigned(width))
        Address of stream ``s`` at the first step. Sampled at ``start``.
    inc_<s> : In(ArrayLayout(unsigned(width), levels))
        Increment of stream ``s`` when level ``l`` advances. Sampled at ``start``.
    next : In(1)
        Consume the presented step (ignored when ``valid`` is low).
    valid : Out(1)
        A step is presented (from ``start`` until the step after the last is consumed).
    addr_<s> : Out(unsigned(width))
        Address of stream ``s`` at the presented step.
    first, last : Out(unsigned(levels))
        Bit ``l``: level ``l`` is at its first / last iteration.
    """

    def __init__(self, levels: int, streams: dict[str, int], count_bits: int = 16):
        self.levels = levels
        self.streams = dict(streams)
        self.count_bits = count_bits
        members = {
            "start": In(1),
            "counts": In(data.ArrayLayout(unsigned(count_bits), levels)),
            "next": In(1),
            "valid": Out(1),
            "first": Out(levels),
            "last": Out(levels),
        }
        for s, w in self.streams.items():
            members[f"init_{s}"] = In(w)
            members[f"inc_{s}"] = In(data.ArrayLayout(unsigned(w), levels))
            members[f"addr_{s}"] = Out(w)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        L = self.levels
        counts_r = Signal.like(self.counts)
        ctr = [Signal(self.count_bits, name=f"ctr{l}") for l in range(L)]
        running = Signal()
        base = {s: [Signal(w, name=f"base_{s}{l}") for l in range(L)] for s, w in self.streams.items()}
        incs_r = {s: Signal.like(getattr(self, f"inc_{s}")) for s in self.streams}

        # effective state: the inputs while start is high, the registers otherwise
        counts = [Mux(self.start, self.counts[l], counts_r[l]) for l in range(L)]
        e_ctr = [Mux(self.start, 0, ctr[l]) for l in range(L)]
        e_base = {s: [Mux(self.start, getattr(self, f"init_{s}"), base[s][l]) for l in range(L)]
                  for s in self.streams}
        e_inc = {s: [Mux(self.start, getattr(self, f"inc_{s}")[l], incs_r[s][l]) for l in range(L)]
                 for s in self.streams}
        at_first = [Signal(name=f"at_first{l}") for l in range(L)]
        at_last = [Signal(name=f"at_last{l}") for l in range(L)]
        for l in range(L):
            m.d.comb += [at_first[l].eq(e_ctr[l] == 0),
                         at_last[l].eq(e_ctr[l] == counts[l] - 1)]
        m.d.comb += [
            self.valid.eq(self.start | running),
            self.first.eq(sum(at_first[l] << l for l in range(L))),
            self.last.eq(sum(at_last[l] << l for l in range(L))),
        ]
        for s in self.streams:
            m.d.comb += getattr(self, f"addr_{s}").eq(e_base[s][L - 1])

        with m.If(self.start):
            m.d.sync += [counts_r.eq(self.counts), running.eq(1)]
            m.d.sync += [incs_r[s].eq(getattr(self, f"inc_{s}")) for s in self.streams]
            m.d.sync += [c.eq(0) for c in ctr]
            m.d.sync += [base[s][l].eq(e_base[s][l]) for s in self.streams for l in range(L)]

        with m.If(self.next & self.valid):
            # level l advances when all inner levels are at their last iteration and it is not
            with m.If(sum(at_last[l] << l for l in range(L)) == (1 << L) - 1):
                m.d.sync += running.eq(0)
            for l in range(L):
                inner_last = 1
                for j in range(l + 1, L):
                    inner_last = inner_last & at_last[j]
                with m.If(inner_last & ~at_last[l]):
                    m.d.sync += ctr[l].eq(e_ctr[l] + 1)
                    m.d.sync += [ctr[j].eq(0) for j in range(l + 1, L)]
                    for s in self.streams:
                        nxt = (e_base[s][l] + e_inc[s][l])[:self.streams[s]]
                        m.d.sync += [base[s][j].eq(nxt) for j in range(l, L)]
        return m
