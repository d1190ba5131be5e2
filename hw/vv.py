"""VV unit: ``lanes`` signed 16x16-bit MACs with their kernel buffer and accumulator memory.

One VV unit computes ``lanes`` output channels of a convolution: every reduction step it multiplies
the maps element broadcast by its MV unit with one kernel word (one weight per lane) and adds the
products to ``lanes`` accumulators, which wrap at ``acc_bits`` (:mod:`arch.numerics`). At the first
step of an output pixel the accumulators start from zero, from the 32-bit bias of each lane (two
kernel words, low and high halves, :func:`arch.numerics.join_bias`) or from the accumulator memory
entry of the pixel (partial sums of an earlier CONV); after its last step the sums are written to that
entry and presented to the MV unit's output stage.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from arch.isa import Init
from arch.machine import MachineConfig

from .isa import field_shape

__all__ = ["VVUnit", "word_layout", "acc_layout"]


def word_layout(cfg: MachineConfig) -> data.ArrayLayout:
    """One buffer word: ``lanes`` signed 16-bit elements, lane 0 in the low bits."""
    return data.ArrayLayout(signed(cfg.data_bits), cfg.lanes)


def acc_layout(cfg: MachineConfig) -> data.ArrayLayout:
    """One accumulator entry: ``lanes`` signed ``acc_bits`` values."""
    return data.ArrayLayout(signed(cfg.acc_bits), cfg.lanes)


class VVUnit(wiring.Component):
    """``lanes`` MACs, a ``kernel_words``-word kernel buffer and ``acc_entries`` accumulator entries.

    The compute pipeline has three stages: a step is *issued* in cycle I (buffer addresses), its
    maps element ``x`` is presented in cycle R = I+1 (when the kernel word has been read, and the
    multiply-accumulate happens), and the sums of a pixel's last step appear in cycle O = I+2.

    Ports
    -----
    kw_en, kw_addr, kw_data : In
        Kernel-buffer write port (the load engine's DMA), one word per cycle.
    init : In(2)
        :class:`arch.isa.Init` of the running CONV; held for the whole instruction.
    bias_addr : In
        Kernel word of the bias low half (the high half follows); held from the cycle before the
        first issue to the end of the instruction.
    issue, kaddr, acc_addr, first, last : In (stage I)
        A step: the kernel word, the pixel's accumulator entry, and whether the step is the first or
        last of its pixel's reduction.
    x : In(signed(16)) (stage R)
        The maps element of the step issued in the previous cycle.
    out_valid, out_acc : Out (stage O)
        The final sums of a pixel (``out_valid`` for one cycle after its last step).
    """

    def __init__(self, cfg: MachineConfig):
        self.cfg = cfg
        kbits = cfg.addr_bits(cfg.kernel_words)
        abits = cfg.addr_bits(cfg.acc_entries)
        super().__init__({
            "kw_en": In(1), "kw_addr": In(kbits), "kw_data": In(word_layout(cfg)),
            "init": In(field_shape(("CONV", "init"))), "bias_addr": In(kbits),
            "issue": In(1), "kaddr": In(kbits), "acc_addr": In(abits), "first": In(1), "last": In(1),
            "x": In(signed(cfg.data_bits)),
            "out_valid": Out(1), "out_acc": Out(acc_layout(cfg)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        m.submodules.kernel = kernel = Memory(shape=word_layout(cfg), depth=cfg.kernel_words, init=[])
        m.submodules.accmem = accmem = Memory(shape=acc_layout(cfg), depth=cfg.acc_entries, init=[])
        kwp = kernel.write_port()
        krp = kernel.read_port()
        blo = kernel.read_port()
        bhi = kernel.read_port()
        awp = accmem.write_port()
        arp = accmem.read_port()
        # the bias words and the accumulator entry matter only at a pixel's first step (and only for
        # its init mode): reading them just then spares a simulator two words and an entry per cycle
        pixel_start = self.issue & self.first
        m.d.comb += [
            kwp.en.eq(self.kw_en), kwp.addr.eq(self.kw_addr), kwp.data.eq(self.kw_data),
            krp.addr.eq(self.kaddr),
            blo.addr.eq(self.bias_addr), bhi.addr.eq(self.bias_addr + 1),
            blo.en.eq(pixel_start & (self.init == Init.BIAS)), bhi.en.eq(pixel_start & (self.init == Init.BIAS)),
            arp.addr.eq(self.acc_addr), arp.en.eq(pixel_start & (self.init == Init.ACC)),
        ]
        # stage I -> R
        v1, first1, last1 = Signal(), Signal(), Signal()
        acc_addr1 = Signal.like(self.acc_addr)
        m.d.sync += [v1.eq(self.issue), first1.eq(self.first), last1.eq(self.last),
                     acc_addr1.eq(self.acc_addr)]
        # stage R: multiply-accumulate
        acc = Signal(acc_layout(cfg))
        total = Signal(acc_layout(cfg))
        for l in range(cfg.lanes):
            bias = Cat(blo.data[l].as_unsigned(), bhi.data[l]).as_signed()
            start = Mux(self.init == Init.ZERO, 0, Mux(self.init == Init.BIAS, bias, arp.data[l]))
            base = Mux(first1, start, acc[l])
            m.d.comb += total[l].eq(base + self.x * krp.data[l])   # wraps at acc_bits
        with m.If(v1):
            m.d.sync += acc.eq(total)
        m.d.comb += [awp.en.eq(v1 & last1), awp.addr.eq(acc_addr1), awp.data.eq(total)]
        # stage O
        m.d.sync += self.out_valid.eq(v1 & last1)
        with m.If(v1 & last1):          # read only with out_valid
            m.d.sync += self.out_acc.eq(total)
        return m
