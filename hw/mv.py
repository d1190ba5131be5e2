"""MV unit: maps buffer, residual buffer, ``vv_per_mv`` VV units, the pooling unit, output stages and
output buffer.

The compute engine of the cluster drives all MV units in lockstep with the same step stream (a CONV,
MAXPOOL or AVGPOOL trace from :class:`hw.agu.LoopNest`); each MV works on its own buffers. Pipeline
(see :class:`hw.vv.VVUnit`): stage I issues the maps-buffer read, stage R selects the maps element and
the VV units multiply-accumulate (or the pooling unit compares or adds a word) while the residual
buffer is read for a pixel's output, stage O requantises (adding or multiplying by the residual),
activates or averages and writes the output buffer. So a step's result is in the output buffer two cycles after it was issued, and a trace whose
last step is issued in cycle ``s + T`` (``s`` its start, ``T`` its steps) has written everything by
``s + T + 3``: that is why the machine needs ``conv_pipeline >= 3`` and ``pool_pipeline >= 3``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from arch import numerics
from arch.isa import Act, Resid
from arch.machine import MachineConfig

from .isa import field_shape
from .vv import VVUnit, acc_layout, word_layout

__all__ = ["MVUnit", "OutputStage", "AverageStage", "round_saturate", "shift_left_wrapping", "sum_bits", "lut_rom_init",
           "MV_PIPELINE", "SimulatorBuild", "gates_output_clock"]

#: Cycles from a trace's start to the first cycle its last result is visible, minus the steps.
MV_PIPELINE = 3


class SimulatorBuild:
    """The ``platform`` of an elaboration for a cycle-based simulator (Verilator, Icarus: the exports of
    :mod:`hw.verilog_run` and :mod:`hw.verilator_main`), which makes :class:`MVUnit` evaluate its output
    and average stages only in the cycles whose result is written (:func:`gates_output_clock`). Same
    bits and cycles as the hardware elaboration (``platform=None``: ``mdla hw build``, Amaranth's
    simulator), which keeps the stages combinational on the registers of stage O."""

    output_clock_gate = True


def gates_output_clock(platform) -> bool:
    """Whether an elaboration for ``platform`` puts copies of stage O's inputs on a gated clock
    (:class:`SimulatorBuild`)."""
    return bool(getattr(platform, "output_clock_gate", False))


def lut_rom_init() -> list[int]:
    """The activation ROM, from :func:`arch.numerics.lut_table` and :func:`arch.numerics.mish_table`:
    entry ``t * LUT_SEGMENTS + i`` (t = 0 sigmoid, 1 tanh) holds ``base[i] | delta[i] << 16``, then
    from ``2 * LUT_SEGMENTS`` on MISH's gate table (``MISH_SEGMENTS`` entries) the same way."""
    words = []
    for base, delta in (numerics.lut_table(numerics.ACT_SIGMOID), numerics.lut_table(numerics.ACT_TANH),
                        numerics.mish_table()):
        words += [int(b) | int(d) << 16 for b, d in zip(base, delta)]
    return words


def _conv_ports(*names: str) -> dict:
    """In ports carrying CONV fields, as wide as the fields (:mod:`arch.isa`)."""
    return {name: In(field_shape(("CONV", name))) for name in names}


#: ROM word: 16-bit base (up to 32768) and 12-bit delta (up to 2**12 - 1)
_LUT_BASE_BITS, _LUT_DELTA_BITS = 16, 12


class OutputStage(wiring.Component):
    """Requantisation and activation of one accumulator word (combinational), per lane:

    ``y = sat16(round_shift(wrap(acc + (res << rshift)), shift))`` (the residual term only when
    ``resid`` is ADD; the sum wraps at ``acc_bits``), then ``a = act(y)`` with the parameters
    ``act_a``/``act_b`` (:func:`arch.numerics.activate`: RELU, LEAKY, CLIP, SIGMOID/TANH from a
    ROM holding :func:`arch.numerics.lut_table` rounded right by act_a, HARDSWISH, SILU with its
    gate from the same ROM, and MISH with its gate from :func:`arch.numerics.mish_table`, in the
    same ROM after those), then ``out = a``, or with ``resid`` MUL
    ``out = sat16(round_shift(a * res, rshift))``. ``sat`` has bit ``l`` set when lane ``l`` was
    clipped by either saturation (the first only where the activation does not absorb the clip,
    :meth:`counted`).

    No per-lane signal is wider than the accumulator plus two bits (:func:`round_saturate`,
    :func:`shift_left_wrapping`): a simulator then evaluates it in native 64-bit words.

    The activations are the cases of :meth:`activations` (code -> value of one lane); a new
    activation is one more entry there.

    Ports: ``acc`` In(acc word), ``shift``, ``act``, ``act_a``, ``act_b``, ``resid``, ``rshift`` In (as wide as
    the CONV fields, :mod:`arch.isa`), ``res`` In(word), ``out`` Out(word), ``sat`` Out(lanes).
    """

    def __init__(self, cfg: MachineConfig):
        self.cfg = cfg
        super().__init__({"acc": In(acc_layout(cfg)), **_conv_ports("shift", "act", "act_a", "act_b", "resid", "rshift"),
                          "res": In(word_layout(cfg)), "out": Out(word_layout(cfg)), "sat": Out(cfg.lanes)})

    def activations(self, m: Module, y, lane: int, lut_port) -> dict:
        """The activation cases of one lane: {Act code or tuple of codes: build}, ``y`` the lane's
        saturated int16; ``build()``, called inside the code's ``Case``, adds that activation's
        statements and returns its value; codes not listed pass ``y`` through (NONE).

        Every activation's arithmetic sits in the ``Case`` of the codes that use it (here and in the
        two table switches below), so that an event-driven simulator (Amaranth's, Icarus) evaluates
        only the selected activation's statements, not all of them for every output word."""
        D = self.cfg.data_bits
        seg, nseg = numerics.LUT_SEG_BITS, numerics.LUT_SEGMENTS
        edge = nseg << seg                      # |x| = 8 in Q4.11: the table's end
        f = self.act_a[:4]                      # HARDSWISH/SILU/MISH: the format; SIGMOID/TANH: output shift
        half = 1 << (seg - 1)
        x11 = Signal(signed(D + numerics.LUT_IN_FRAC), name=f"x11{lane}")     # SILU, MISH: y in Q4.11
        ypos = Signal(D + 1, name=f"ypos{lane}")           # the table's value at |input|
        curve = Signal(signed(D + 2), name=f"curve{lane}")  # SIGMOID/TANH/SILU: the signed curve
        base, delta = lut_port.data[:_LUT_BASE_BITS], lut_port.data[_LUT_BASE_BITS:]
        with m.Switch(self.act):
            with m.Case(Act.SILU, Act.MISH):
                # y in Q4.11 (exact left shift by 11 - f, or rounded right for f > 11)
                up = Signal(signed(D + numerics.LUT_IN_FRAC), name=f"x11u{lane}")
                m.d.comb += up.eq(y << (numerics.LUT_IN_FRAC - f)[:4])
                down, _, _ = round_saturate(m, y, (f - numerics.LUT_IN_FRAC)[:4], D + 1, f"x11d{lane}")
                m.d.comb += x11.eq(Mux(f <= numerics.LUT_IN_FRAC, up, down))
        with m.Switch(self.act):
            with m.Case(Act.SIGMOID, Act.TANH, Act.SILU):
                # |input| in Q4.11 -> segment i and offset r; base + (delta * r) >> seg. The input: y,
                # or SILU's x11 clamped to the table
                src = Signal(signed(D + 2), name=f"lutin{lane}")
                m.d.comb += src.eq(Mux(self.act == Act.SILU, Mux(x11 > edge, edge, Mux(x11 < -edge, -edge, x11)), y))
                mag = Signal(D + 1, name=f"mag{lane}")
                m.d.comb += mag.eq(Mux(src < 0, -src, src))
                mc = Signal(D + 1, name=f"mc{lane}")
                m.d.comb += mc.eq(Mux(mag > (nseg << seg), nseg << seg, mag))
                idx = Signal(range(nseg), name=f"idx{lane}")
                m.d.comb += idx.eq(Mux(mc[seg:] >= nseg, nseg - 1, mc[seg:]))
                off = Signal(seg + 1, name=f"off{lane}")
                m.d.comb += off.eq(mc - (idx << seg))
                m.d.comb += lut_port.addr.eq(Cat(idx, self.act == Act.TANH))
                m.d.comb += ypos.eq(base + ((delta * off + half) >> seg))
                m.d.comb += curve.eq(Mux(src < 0, Mux(self.act == Act.TANH, -ypos, (1 << numerics.LUT_OUT_FRAC) - ypos),
                                         ypos))
            with m.Case(Act.MISH):
                # x11 + 8 (inside the table, 1 .. 2 * edge - 1) -> segment and offset of its own table
                mu = Signal(D + 1, name=f"mu{lane}")
                m.d.comb += mu.eq(Mux(x11 >= edge, 2 * edge - 1, Mux(x11 <= -edge, 1, x11 + edge)))
                midx = Signal(range(numerics.MISH_SEGMENTS), name=f"midx{lane}")
                m.d.comb += midx.eq(mu[seg:])
                moff = Signal(seg + 1, name=f"moff{lane}")
                m.d.comb += moff.eq(mu[:seg])
                m.d.comb += lut_port.addr.eq(2 * nseg + midx)
                m.d.comb += ypos.eq(base + ((delta * moff + half) >> seg))

        def leaky():            # the negative side times act_a (unsigned), rounded right by act_b
            lprod = Signal(signed(D + 17), name=f"lprod{lane}")
            m.d.comb += lprod.eq(y * self.act_a)
            value, _, _ = round_saturate(m, lprod, self.act_b[:6], D, f"l{lane}")
            return Mux(y < 0, value, y)

        def clip():             # the fields as int16 bounds
            lo, hi = self.act_a.as_signed(), self.act_b.as_signed()
            return Mux(y < lo, lo, Mux(y > hi, hi, y))

        def lut():              # the table's Q0.15 value (at most 32767) rounded right by act_a
            capped = Signal(signed(D + 2), name=f"capped{lane}")
            m.d.comb += capped.eq(Mux(curve > numerics.DATA_MAX, numerics.DATA_MAX, curve))
            return round_saturate(m, capped, f, D, f"t{lane}")[0]

        def silu():             # y * gate, the gate exactly 1 or 0 beyond the table, rounded right by 15
            gate = Signal(numerics.LUT_OUT_FRAC + 2, name=f"gate{lane}")
            m.d.comb += gate.eq(Mux(x11 >= edge, numerics.SILU_GATE_ONE,
                                    Mux(x11 <= -edge, 0, curve[:numerics.LUT_OUT_FRAC + 1])))
            sprod = Signal(signed(2 * D + 2), name=f"sprod{lane}")
            m.d.comb += sprod.eq(y * gate)
            return round_saturate(m, sprod, numerics.LUT_OUT_FRAC, D, f"s{lane}")[0]

        def mish():             # y * its gate from the table, exactly 1 or 0 beyond |x| = 8, rounded right by 15
            mgate = Signal(numerics.LUT_OUT_FRAC + 2, name=f"mgate{lane}")
            m.d.comb += mgate.eq(Mux(x11 >= edge, numerics.SILU_GATE_ONE, Mux(x11 <= -edge, 0, ypos)))
            mishp = Signal(signed(2 * D + 2), name=f"mishp{lane}")
            m.d.comb += mishp.eq(y * mgate)
            return round_saturate(m, mishp, numerics.LUT_OUT_FRAC, D, f"mi{lane}")[0]

        def hardswish():        # y * clip(y + 3, 0, 6) * (1/6 as HSWISH_MUL >> HSWISH_SHIFT), rounded once
            three, six = Signal(D + 2, name=f"three{lane}"), Signal(D + 3, name=f"six{lane}")
            m.d.comb += [three.eq(Const(3, 2) << f), six.eq(Const(6, 3) << f)]
            tsum = Signal(signed(D + 4), name=f"tsum{lane}")
            m.d.comb += tsum.eq(y + three)
            t = Signal(D + 3, name=f"hst{lane}")
            m.d.comb += t.eq(Mux(tsum < 0, 0, Mux(tsum > six, six, tsum)))
            hprod = Signal(signed(3 * D + 4), name=f"hprod{lane}")
            m.d.comb += hprod.eq(y * t * numerics.HSWISH_MUL)
            return round_saturate(m, hprod, f + numerics.HSWISH_SHIFT, D, f"h{lane}")[0]

        return {
            Act.RELU: lambda: Mux(y < 0, 0, y),
            Act.LEAKY: leaky,
            Act.CLIP: clip,
            (Act.SIGMOID, Act.TANH): lut,
            Act.HARDSWISH: hardswish,
            Act.SILU: silu,
            Act.MISH: mish,
        }

    def counted(self, m: Module):
        """(below, above): whether a clip below / above the 16-bit range before the activation counts
        as a saturation (:func:`arch.numerics.saturation_counts`: not where the activation absorbs it)."""
        below, above = Signal(name="sat_below"), Signal(name="sat_above")
        f = self.act_a[:5]
        with m.Switch(self.act):
            with m.Case(Act.SIGMOID, Act.TANH):
                m.d.comb += [below.eq(0), above.eq(0)]
            with m.Case(Act.RELU):
                m.d.comb += [below.eq(0), above.eq(1)]
            with m.Case(Act.CLIP):
                m.d.comb += [below.eq(self.act_a == 0x8000), above.eq(self.act_b == 0x7FFF)]
            with m.Case(Act.HARDSWISH):     # 3 << f > 32768: the format does not reach -3
                m.d.comb += [below.eq(f >= 14), above.eq(1)]
            with m.Case(Act.SILU, Act.MISH):    # 8 << f > 32768: the format does not reach -8
                m.d.comb += [below.eq(f >= 13), above.eq(1)]
            with m.Default():
                m.d.comb += [below.eq(1), above.eq(1)]
        return below, above

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        A, D = cfg.acc_bits, cfg.data_bits
        m.submodules.rom = rom = Memory(shape=_LUT_BASE_BITS + _LUT_DELTA_BITS, depth=2 * numerics.LUT_SEGMENTS + numerics.MISH_SEGMENTS,
                                        init=lut_rom_init())
        sat = []
        below, above = self.counted(m)
        for l in range(cfg.lanes):
            # the residual shifted into the accumulator's format, wrapped at acc_bits like the sum
            # (each optional step in the branch that uses it: an event-driven simulator skips the others)
            rsh = Signal(signed(A), name=f"rsh{l}")
            with m.If(self.resid == Resid.ADD):
                m.d.comb += rsh.eq(shift_left_wrapping(m, self.res[l].as_signed(), self.rshift, A, f"{l}"))
            total = Signal(signed(A), name=f"total{l}")
            m.d.comb += total.eq(self.acc[l] + rsh)                                 # wraps at acc_bits
            yv, over, under = round_saturate(m, total, self.shift, D, f"{l}")
            y = Signal(signed(D), name=f"y{l}")
            m.d.comb += y.eq(yv)
            a = Signal(signed(D), name=f"a{l}")
            cases = self.activations(m, y, l, rom.read_port(domain="comb"))
            with m.Switch(self.act):
                for codes, build in cases.items():
                    with m.Case(*(codes if isinstance(codes, tuple) else (codes,))):
                        m.d.comb += a.eq(build())
                with m.Default():
                    m.d.comb += a.eq(y)
            # MUL: the activated value times the residual, rounded right by rshift
            is_mul = self.resid == Resid.MUL
            mul_sat = Signal(name=f"msat{l}")
            with m.If(is_mul):
                mprod = Signal(signed(2 * D), name=f"mprod{l}")
                m.d.comb += mprod.eq(a * self.res[l].as_signed())
                mv, mover, munder = round_saturate(m, mprod, self.rshift, D, f"m{l}")
                m.d.comb += [self.out[l].eq(mv), mul_sat.eq(mover | munder)]
            with m.Else():
                m.d.comb += self.out[l].eq(a)
            sat.append((over & above) | (under & below) | mul_sat)
        m.d.comb += self.sat.eq(Cat(*sat))
        return m


def shift_left_wrapping(m: Module, x, shift, bits: int, suffix: str = ""):
    """``(x << shift)`` wrapped to ``bits`` signed (:func:`arch.numerics.wrap`) for a signed ``x`` of
    at most ``bits`` bits and an unsigned ``shift``: a barrel shifter whose every stage keeps only the
    low ``bits`` bits (the bits shifted out can never come back), so nothing is wider than ``bits``."""
    v = Signal(signed(bits), name=f"bsh{suffix}_0")
    m.d.comb += v.eq(x)
    for k in range(len(shift)):
        step = 1 << k
        nxt = Signal(signed(bits), name=f"bsh{suffix}_{k + 1}")
        shifted = Cat(Const(0, step), v[:bits - step]) if step < bits else Const(0, bits)
        m.d.comb += nxt.eq(Mux(shift[k], shifted, v))
        v = nxt
    return v


def round_saturate(m: Module, x, shift, bits: int, suffix: str = ""):
    """``sat(round_shift(x, shift))`` (:func:`arch.numerics.round_shift`, round-half-up, then saturation
    to ``bits`` signed) for a signed ``x`` of ``W`` bits and an unsigned ``shift`` (any value); returns
    (value, over, under).

    Round-half-up without the wide ``x + 2**(shift-1)``: ``floor((x + 2**(s-1)) / 2**s)`` equals
    ``(floor(2x / 2**s) + 1) >> 1`` for every ``s >= 0`` (for ``s = 0`` both are ``x``), and
    ``floor(2x / 2**s) + 1`` fits ``W + 1`` bits signed, so no intermediate is wider than ``W + 2``."""
    W = len(x)
    hi, lo = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
    twice = Signal(signed(W + 1), name=f"twice{suffix}")
    m.d.comb += twice.eq(x.as_signed() << 1)
    # floor(2x / 2**shift) as an arithmetic shift made of a logical one: ~(~v >> s) for v < 0 (same bits;
    # a simulator does a logical shift in native words, the arithmetic one of > 32 bits in a helper)
    sign = Mux(twice[W], Const((1 << (W + 1)) - 1, W + 1), Const(0, W + 1))
    halves = Signal(signed(W + 1), name=f"halves{suffix}")
    m.d.comb += halves.eq(((twice.as_unsigned() ^ sign) >> shift) ^ sign)
    up = Signal(signed(W + 1), name=f"up{suffix}")                         # cannot overflow: halves <= 2**W - 2
    m.d.comb += up.eq(halves + 1)
    r = Signal(signed(W), name=f"round{suffix}")
    m.d.comb += r.eq(up[1:])
    over, under = r > hi, r < lo
    return Mux(over, hi, Mux(under, lo, r)), over, under


#: bits of a window sum: up to 255 x 255 16-bit elements
def sum_bits(cfg: MachineConfig) -> int:
    return cfg.data_bits + 16 + 1


class AverageStage(wiring.Component):
    """Average-pool output stage of one word of window sums (combinational).

    ``out = sat16(round_shift(sum * mul, shift))`` per lane (:func:`arch.numerics.average`); ``sat``
    has bit ``l`` set when lane ``l`` was clipped.

    Ports: ``sum`` In(ArrayLayout(signed(sum_bits), lanes)), ``mul`` In(16), ``shift`` In(6),
    ``out`` Out(word), ``sat`` Out(lanes).
    """

    def __init__(self, cfg: MachineConfig):
        self.cfg = cfg
        super().__init__({"sum": In(data.ArrayLayout(signed(sum_bits(cfg)), cfg.lanes)),
                          "mul": In(field_shape(("AVGPOOL", "mul"))), "shift": In(field_shape(("AVGPOOL", "shift"))),
                          "out": Out(word_layout(cfg)), "sat": Out(cfg.lanes)})

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        sat = []
        for l in range(cfg.lanes):
            prod = Signal(signed(sum_bits(cfg) + 17), name=f"prod{l}")
            m.d.comb += prod.eq(self.sum[l] * self.mul)
            y, over, under = round_saturate(m, prod, self.shift, cfg.data_bits, f"{l}")
            m.d.comb += self.out[l].eq(y)
            sat.append(over | under)
        m.d.comb += self.sat.eq(Cat(*sat))
        return m


class MVUnit(wiring.Component):
    """One MV unit.

    Ports
    -----
    maps_w_en, maps_w_addr, maps_w_data : In
        Maps-buffer write port (load engine), one word per cycle.
    kern_w_en : In(vv_per_mv), kern_w_addr, kern_w_data : In
        Kernel-buffer write port; bit ``v`` of ``kern_w_en`` writes VV ``v``.
    res_w_en, res_w_addr, res_w_data : In
        Residual-buffer write port (load engine, ``LOAD buf=RES``).
    out_r_addr : In, out_r_data : Out
        Output-buffer read port for the store engine (combinational read).
    pool : In(1)
        The running trace is a MAXPOOL or AVGPOOL (else a CONV). Held with the fields below for the
        whole instruction, from the cycle before its first issue.
    avg : In(1)
        The pooling trace is an AVGPOOL (window sums, then :class:`AverageStage`), else a MAXPOOL.
    nvv, init, bias_addr, write, shift, act, act_a, act_b, resid, rshift : In
        CONV fields (:mod:`arch.isa`); ``shift`` is AVGPOOL's shift during an AVGPOOL.
    mul : In(16)
        AVGPOOL's multiplier.
    issue, maddr, kaddr, acc_addr, out_addr, res_addr, first, last : In (stage I)
        One step: ``maddr`` is a maps *element* address for a CONV, a maps *word* address for a
        pooling trace; ``out_addr`` is the output word of the step's pixel (VV ``v`` writes
        ``out_addr + v``), ``res_addr`` its residual word (VV ``v`` adds ``res_addr + v``);
        ``first``/``last``: first/last step of the pixel's reduction or window.
    sat_count : Out (stage O)
        Lanes clipped by the output stages in this cycle.
    """

    def __init__(self, cfg: MachineConfig):
        self.cfg = cfg
        kbits = cfg.addr_bits(cfg.kernel_words)
        rbits = cfg.addr_bits(cfg.res_words)
        super().__init__({
            "maps_w_en": In(1), "maps_w_addr": In(cfg.addr_bits(cfg.maps_words)),
            "maps_w_data": In(word_layout(cfg)),
            "kern_w_en": In(cfg.vv_per_mv), "kern_w_addr": In(kbits), "kern_w_data": In(word_layout(cfg)),
            "res_w_en": In(1), "res_w_addr": In(rbits), "res_w_data": In(word_layout(cfg)),
            "out_r_addr": In(cfg.addr_bits(cfg.out_words)), "out_r_data": Out(word_layout(cfg)),
            "pool": In(1), "avg": In(1), "bias_addr": In(kbits),
            **_conv_ports("nvv", "init", "write", "act", "act_a", "act_b", "resid", "rshift"),
            "shift": In(field_shape(("CONV", "shift"), ("AVGPOOL", "shift"))),
            "mul": In(field_shape(("AVGPOOL", "mul"))),
            "issue": In(1), "maddr": In(cfg.addr_bits(cfg.maps_words * cfg.lanes)), "kaddr": In(kbits),
            "acc_addr": In(cfg.addr_bits(cfg.acc_entries)), "out_addr": In(cfg.addr_bits(cfg.out_words)),
            "res_addr": In(rbits),
            "first": In(1), "last": In(1),
            "sat_count": Out(range(cfg.vv_per_mv * cfg.lanes + 1)),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        V, L = cfg.vv_per_mv, cfg.lanes
        lane_bits = (L - 1).bit_length()
        m = Module()
        m.submodules.maps = maps = Memory(shape=word_layout(cfg), depth=cfg.maps_words, init=[])
        m.submodules.resbuf = resbuf = Memory(shape=word_layout(cfg), depth=cfg.res_words, init=[])
        m.submodules.outbuf = outbuf = Memory(shape=word_layout(cfg), depth=cfg.out_words, init=[])
        mwp = maps.write_port()
        mrp = maps.read_port()
        m.d.comb += [mwp.en.eq(self.maps_w_en), mwp.addr.eq(self.maps_w_addr), mwp.data.eq(self.maps_w_data)]
        rwp = resbuf.write_port()
        m.d.comb += [rwp.en.eq(self.res_w_en), rwp.addr.eq(self.res_w_addr), rwp.data.eq(self.res_w_data)]
        rrps = [resbuf.read_port() for _ in range(V)]
        owps = [outbuf.write_port() for _ in range(V)]
        orp = outbuf.read_port(domain="comb")
        m.d.comb += [orp.addr.eq(self.out_r_addr), self.out_r_data.eq(orp.data)]

        # stage I: maps read (element -> word and lane for a CONV)
        m.d.comb += mrp.addr.eq(Mux(self.pool, self.maddr, self.maddr >> lane_bits))
        lane1 = Signal(max(1, lane_bits))
        v1, first1, last1 = Signal(), Signal(), Signal()
        out1, out2 = Signal.like(self.out_addr), Signal.like(self.out_addr)
        res1 = Signal.like(self.res_addr)
        m.d.sync += [v1.eq(self.issue), first1.eq(self.first), last1.eq(self.last),
                     out1.eq(self.out_addr), out2.eq(out1), res1.eq(self.res_addr)]
        if lane_bits:
            m.d.sync += lane1.eq(self.maddr[:lane_bits])

        # stage R: VV units (CONV), the pooling unit (MAXPOOL, AVGPOOL), residual-buffer reads
        x = mrp.data[lane1] if lane_bits else mrp.data[0]
        vvs = []
        for v in range(V):
            vv = VVUnit(cfg)
            m.submodules[f"vv{v}"] = vv
            vvs.append(vv)
            m.d.comb += [
                vv.kw_en.eq(self.kern_w_en[v]), vv.kw_addr.eq(self.kern_w_addr), vv.kw_data.eq(self.kern_w_data),
                vv.init.eq(self.init), vv.bias_addr.eq(self.bias_addr),
                vv.issue.eq(self.issue & ~self.pool & (v < self.nvv)),
                vv.kaddr.eq(self.kaddr), vv.acc_addr.eq(self.acc_addr),
                vv.first.eq(self.first), vv.last.eq(self.last),
                vv.x.eq(x),
            ]
            # the residual word matters only for a pixel's output (stage O after its last step): read then
            m.d.comb += [rrps[v].addr.eq(res1 + v), rrps[v].en.eq(v1 & last1)]
        # one register per lane: the running maximum (MAXPOOL) or the exact window sum (AVGPOOL)
        pacc = Signal(data.ArrayLayout(signed(sum_bits(cfg)), L))
        with m.If(v1 & self.pool):
            for l in range(L):
                cur = mrp.data[l]
                nxt = Mux(self.avg, pacc[l] + cur, Mux(cur > pacc[l], cur, pacc[l]))
                m.d.sync += pacc[l].eq(Mux(first1, cur, nxt))
        pool_out = Signal()
        m.d.sync += pool_out.eq(v1 & last1 & self.pool)

        # stage O: output stages and output-buffer writes. For a cycle-based simulator (SimulatorBuild)
        # the stages' arithmetic reads copies of its inputs made at the falling clock edge of the cycles
        # whose results are written: a clock that falls only then (clk | ~outputting: outputting changes
        # just after rising edges, while clk is high, so the clock does not glitch). Verilator evaluates
        # logic only on its clock's edges, so the stages then cost nothing in the other cycles (a clock
        # enable would not do: Verilator evaluates everything downstream of clk's registers at every
        # edge of clk, measured); the results are stable from mid-cycle and written at the rising edge
        # that ends stage O, as in the hardware elaboration (the inputs themselves, no copies)
        gate = gates_output_clock(platform)
        if gate:
            m.domains.ostage = ostage = ClockDomain("ostage", local=True, clk_edge="neg", reset_less=True)
            outputting = Signal()
            m.d.comb += outputting.eq(Cat(*(vv.out_valid for vv in vvs), pool_out).any())
            m.d.comb += ostage.clk.eq(ClockSignal("sync") | ~outputting)

        def held(sig, name):
            """``sig`` as stage O's arithmetic sees it: itself, or its copy on the gated clock."""
            if not gate:
                return sig
            copy = Signal.like(sig, name=f"o_{name}")
            m.d.ostage += copy.eq(sig)
            return copy

        fields = {name: held(getattr(self, name), name)
                  for name in ("shift", "act", "act_a", "act_b", "resid", "rshift", "mul")}
        sats = []
        for v, vv in enumerate(vvs):
            os_ = OutputStage(cfg)
            m.submodules[f"outstage{v}"] = os_
            m.d.comb += [os_.acc.eq(held(vv.out_acc, f"acc{v}")), os_.res.eq(held(rrps[v].data, f"res{v}")),
                         *(getattr(os_, name).eq(fields[name])
                           for name in ("shift", "act", "act_a", "act_b", "resid", "rshift"))]
            wr = vv.out_valid & self.write
            m.d.comb += [owps[v].addr.eq(out2 + v), owps[v].data.eq(os_.out), owps[v].en.eq(wr)]
            sats.append(Mux(wr, sum(os_.sat[l] for l in range(L)), 0))
        m.submodules.avgstage = avs = AverageStage(cfg)
        m.d.comb += [avs.sum.eq(held(pacc, "pacc")), avs.mul.eq(fields["mul"]), avs.shift.eq(fields["shift"])]
        pmax = Signal(word_layout(cfg))
        for l in range(L):
            m.d.comb += pmax[l].eq(pacc[l][:cfg.data_bits])
        with m.If(pool_out):
            m.d.comb += [owps[0].addr.eq(out2), owps[0].data.eq(Mux(self.avg, avs.out.as_value(), pmax.as_value())),
                         owps[0].en.eq(1)]
        sats.append(Mux(pool_out & self.avg, sum(avs.sat[l] for l in range(L)), 0))
        m.d.comb += self.sat_count.eq(sum(sats))
        return m
