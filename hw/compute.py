"""Trace generator of the compute engine: turns a CONV, MAXPOOL or AVGPOOL instruction into MV steps.

A CONV is the loop nest ``(oy, ox, ky, kx, ci)``, a MAXPOOL or AVGPOOL ``(oy, ox, b, ky, kx)``, all run by one
:class:`hw.agu.LoopNest`; the generator computes the per-level increments from the instruction
fields once, at the start cycle, and then issues one step per cycle to every MV unit.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from arch.isa import INSTR_BITS
from arch.machine import MachineConfig

from .agu import LoopNest
from .isa import LAYOUTS, OPCODES, field_shape

__all__ = ["TraceGenerator", "drive_mv"]

_ADDR = 32
_STREAMS = {"maps": _ADDR, "kern": _ADDR, "acc": _ADDR, "out": _ADDR, "res": _ADDR}
#: CONV fields the generator holds for the MV units (their widths are the ISA's)
_CONV_FIELDS = ("nvv", "init", "bias_addr", "write", "act", "act_a", "act_b", "resid", "rshift")


class TraceGenerator(wiring.Component):
    """Step stream of one CONV, MAXPOOL or AVGPOOL.

    Ports
    -----
    start : In(1)
        Start the instruction in ``instr`` (a raw instruction word). Steps are issued in the
        following cycles, one per cycle, ``oh*ow*kh*kw*cin`` (CONV) or ``oh*ow*nb*kh*kw`` (MAXPOOL,
        AVGPOOL) of them.
    instr : In(INSTR_BITS)
    issue, maddr, kaddr, acc_addr, out_addr, res_addr, first, last : Out
        The step (see :class:`hw.mv.MVUnit`); ``first``/``last`` refer to the pixel's reduction
        (CONV: ``ky, kx, ci``) or window (pooling: ``ky, kx``).
    pool, avg, mv_mask, nvv, init, bias_addr, write, shift, act, act_a, act_b, resid, rshift, mul : Out
        Fields of the running instruction, registered at ``start`` (``pool``: MAXPOOL or AVGPOOL,
        ``avg``: AVGPOOL; ``shift`` is the CONV's or the AVGPOOL's).
    """

    def __init__(self, cfg: MachineConfig):
        self.cfg = cfg
        super().__init__({
            "start": In(1), "instr": In(INSTR_BITS),
            "issue": Out(1), "maddr": Out(_ADDR), "kaddr": Out(_ADDR), "acc_addr": Out(_ADDR),
            "out_addr": Out(_ADDR), "res_addr": Out(_ADDR), "first": Out(1), "last": Out(1),
            "pool": Out(1), "avg": Out(1),
            "mv_mask": Out(field_shape(("CONV", "mv_mask"), ("MAXPOOL", "mv_mask"))),
            **{name: Out(field_shape(("CONV", name))) for name in _CONV_FIELDS},
            "shift": Out(field_shape(("CONV", "shift"), ("AVGPOOL", "shift"))),
            "mul": Out(field_shape(("AVGPOOL", "mul"))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.nest = nest = LoopNest(5, _STREAMS, count_bits=16)
        conv = data.View(LAYOUTS["CONV"], self.instr)
        pool = data.View(LAYOUTS["MAXPOOL"], self.instr)   # AVGPOOL = MAXPOOL's fields + mul, shift
        avgp = data.View(LAYOUTS["AVGPOOL"], self.instr)
        is_avg = conv.opcode == OPCODES["AVGPOOL"]
        is_pool = (conv.opcode == OPCODES["MAXPOOL"]) | is_avg

        def setarr(view, values):
            return [view[l].eq(v) for l, v in enumerate(values)]

        with m.If(is_pool):
            row = pool.in_w * pool.ppitch
            m.d.comb += setarr(nest.counts, (pool.oh, pool.ow, pool.nb, pool.kh, pool.kw))
            m.d.comb += [nest.init_maps.eq(pool.maps_addr), nest.init_out.eq(pool.out_addr),
                         nest.init_kern.eq(0), nest.init_acc.eq(0), nest.init_res.eq(0)]
            m.d.comb += setarr(nest.inc_maps, (pool.sy * row, pool.sx * pool.ppitch, 1, row, pool.ppitch))
            m.d.comb += setarr(nest.inc_out, (pool.ow * pool.out_pitch, pool.out_pitch, 1, 0, 0))
            m.d.comb += setarr(nest.inc_kern, (0,) * 5) + setarr(nest.inc_acc, (0,) * 5)
            m.d.comb += setarr(nest.inc_res, (0,) * 5)
        with m.Else():
            row = conv.in_w * conv.cpitch
            m.d.comb += setarr(nest.counts, (conv.oh, conv.ow, conv.kh, conv.kw, conv.cin))
            m.d.comb += [nest.init_maps.eq(conv.maps_addr), nest.init_out.eq(conv.out_addr),
                         nest.init_kern.eq(conv.kern_addr), nest.init_acc.eq(conv.acc_addr),
                         nest.init_res.eq(conv.res_addr)]
            m.d.comb += setarr(nest.inc_maps, (conv.sy * row, conv.sx * conv.cpitch, conv.dy * row,
                                               conv.dx * conv.cpitch, 1))
            m.d.comb += setarr(nest.inc_out, (conv.ow * conv.out_pitch, conv.out_pitch, 0, 0, 0))
            m.d.comb += setarr(nest.inc_res, (conv.ow * conv.out_pitch, conv.out_pitch, 0, 0, 0))
            m.d.comb += setarr(nest.inc_kern, (0, 0, conv.kw * conv.cin, conv.cin, 1))
            m.d.comb += setarr(nest.inc_acc, (conv.ow, 1, 0, 0, 0))

        held = Signal()   # the loaded instruction is a MAXPOOL or an AVGPOOL
        m.d.comb += [
            nest.start.eq(self.start),
            self.issue.eq(nest.valid & ~self.start),
            nest.next.eq(self.issue),
            self.maddr.eq(nest.addr_maps), self.kaddr.eq(nest.addr_kern), self.acc_addr.eq(nest.addr_acc),
            self.out_addr.eq(nest.addr_out), self.res_addr.eq(nest.addr_res),
            self.pool.eq(held),
            # pixel boundaries: the three inner levels (CONV ky,kx,ci) or two (pooling ky,kx)
            self.first.eq(nest.first[3:5].all() & (held | nest.first[2])),
            self.last.eq(nest.last[3:5].all() & (held | nest.last[2])),
        ]
        with m.If(self.start):
            m.d.sync += [
                held.eq(is_pool), self.avg.eq(is_avg),
                self.mv_mask.eq(Mux(is_pool, pool.mv_mask, conv.mv_mask)),
                self.nvv.eq(conv.nvv), self.init.eq(conv.init), self.bias_addr.eq(conv.bias_addr),
                self.write.eq(conv.write), self.shift.eq(Mux(is_avg, avgp.shift, conv.shift)),
                self.act.eq(conv.act), self.act_a.eq(conv.act_a), self.act_b.eq(conv.act_b),
                self.resid.eq(conv.resid), self.rshift.eq(conv.rshift),
                self.mul.eq(avgp.mul),
            ]
        return m


def drive_mv(tg: TraceGenerator, mv, index: int) -> list:
    """Statements connecting the trace generator to MV unit ``index`` (issuing only if selected)."""
    return [
        mv.pool.eq(tg.pool), mv.avg.eq(tg.avg), mv.nvv.eq(tg.nvv), mv.init.eq(tg.init),
        mv.bias_addr.eq(tg.bias_addr), mv.write.eq(tg.write), mv.shift.eq(tg.shift), mv.act.eq(tg.act),
        mv.act_a.eq(tg.act_a), mv.act_b.eq(tg.act_b), mv.resid.eq(tg.resid), mv.rshift.eq(tg.rshift),
        mv.mul.eq(tg.mul),
        mv.issue.eq(tg.issue & tg.mv_mask[index]),
        mv.maddr.eq(tg.maddr), mv.kaddr.eq(tg.kaddr), mv.acc_addr.eq(tg.acc_addr), mv.out_addr.eq(tg.out_addr),
        mv.res_addr.eq(tg.res_addr), mv.first.eq(tg.first), mv.last.eq(tg.last),
    ]
