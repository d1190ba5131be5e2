"""MVUnit block tests: whole CONV (with and without a residual), MAXPOOL and AVGPOOL traces, driven by
the trace generator, against the functional model's numpy units (:class:`sim.units.ClusterUnits`),
with the pipeline's latency; the output stage and the average stage alone against
:mod:`arch.numerics`."""
import numpy as np
import pytest
from amaranth.hdl import Cat, Const, Fragment, Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from arch import isa
from arch import numerics
from arch.isa import Instr
from arch.machine import SMALL
from arch.timing import compute_cycles
from hw.compute import TraceGenerator, drive_mv
from hw.mv import AverageStage, MVUnit, OutputStage, SimulatorBuild, round_saturate, shift_left_wrapping, sum_bits
from sim.units import ClusterUnits
from tests.hw.util import pack, unpack

CFG = SMALL


#: the two elaborations of the MV unit: the hardware one and the one for cycle-based simulators (stage O
#: on its gated clock, hw.mv.SimulatorBuild); the trace tests run both
VARIANTS = pytest.mark.parametrize("platform", [None, SimulatorBuild()], ids=["hw", "simulator"])


def run_trace(cfg, instr: Instr, maps: np.ndarray, kern: np.ndarray, resid: np.ndarray | None = None,
              platform=None):
    """Load MV 0's buffers (maps, kernel, residual), run one trace starting in cycle s; return the output buffer as it is at
    the trace's end cycle ``e = s + compute_cycles`` (so results must be written in time) and the
    saturations counted. ``platform``: the elaboration (None: hardware; :class:`hw.mv.SimulatorBuild`)."""
    L = cfg.lanes
    m = Module()
    m.submodules.tg = tg = TraceGenerator(cfg)
    m.submodules.mv = mv = MVUnit(cfg)
    m.d.comb += drive_mv(tg, mv, 0)
    res = {}

    async def bench(ctx):
        for a, w in enumerate(maps):
            ctx.set(mv.maps_w_en, 1)
            ctx.set(mv.maps_w_addr, a)
            ctx.set(mv.maps_w_data.as_value(), pack(w, 16))
            await ctx.tick()
        ctx.set(mv.maps_w_en, 0)
        for a in range(kern.shape[0]):
            for v in range(cfg.vv_per_mv):
                ctx.set(mv.kern_w_en, 1 << v)
                ctx.set(mv.kern_w_addr, a)
                ctx.set(mv.kern_w_data.as_value(), pack(kern[a, v], 16))
                await ctx.tick()
        ctx.set(mv.kern_w_en, 0)
        for a, w in enumerate(resid if resid is not None else ()):
            ctx.set(mv.res_w_en, 1)
            ctx.set(mv.res_w_addr, a)
            ctx.set(mv.res_w_data.as_value(), pack(w, 16))
            await ctx.tick()
        ctx.set(mv.res_w_en, 0)
        ctx.set(tg.instr, int.from_bytes(isa.encode(instr), "little"))
        ctx.set(tg.start, 1)
        await ctx.tick()
        ctx.set(tg.start, 0)
        cycles = compute_cycles(instr, cfg)
        sat = 0
        for t in range(1, cycles):          # cycles s+1 .. e-1; the buffer is read at e
            # sampled after the falling edge: in the simulator elaboration stage O settles there
            await ctx.delay(0.75e-6)
            sat += ctx.get(mv.sat_count)
            await ctx.tick()
        res["sat"] = sat
        out = []
        for a in range(cfg.out_words):
            ctx.set(mv.out_r_addr, a)
            out.append(unpack(ctx.get(mv.out_r_data.as_value()), 16, L))
        res["out"] = np.array(out, dtype=np.int16)

    sim = Simulator(Fragment.get(m, platform))
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return res


def reference(cfg, instr, maps, kern, res=None):
    u = ClusterUnits(cfg)
    u.maps_w[0, :len(maps)] = maps
    u.kern[0, :kern.shape[0]] = kern
    if res is not None:
        u.res[0, :len(res)] = res
    getattr(u, instr.op.lower())(instr)
    return u.out[0], u.saturations


CONVS = [
    dict(nvv=2, maps_addr=3, in_w=5, cpitch=6, cin=5, kh=2, kw=3, sy=1, sx=1, dy=1, dx=1, oh=2, ow=2,
         kern_addr=0, bias_addr=40, acc_addr=1, out_addr=2, out_pitch=3, init=1, write=1, shift=14, act=1),
    dict(nvv=1, maps_addr=0, in_w=7, cpitch=4, cin=3, kh=2, kw=2, sy=2, sx=2, dy=2, dx=2, oh=2, ow=2,
         kern_addr=5, bias_addr=0, acc_addr=0, out_addr=0, out_pitch=1, init=0, write=1, shift=0, act=0),
]


@VARIANTS
@pytest.mark.parametrize("fields", CONVS)
def test_conv_trace(fields, platform):
    cfg = CFG
    rng = np.random.default_rng(len(str(fields)))
    instr = Instr("CONV", mv_mask=1, **fields)
    isa.validate(instr, cfg)
    maps = rng.integers(-3000, 3000, size=(cfg.maps_words // 2, cfg.lanes))
    kern = rng.integers(-3000, 3000, size=(48, cfg.vv_per_mv, cfg.lanes))
    got = run_trace(cfg, instr, maps, kern, platform=platform)
    want, sat = reference(cfg, instr, maps, kern)
    np.testing.assert_array_equal(got["out"], want)
    assert got["sat"] == sat


@VARIANTS
def test_maxpool_trace(platform):
    cfg = CFG
    rng = np.random.default_rng(7)
    instr = Instr("MAXPOOL", mv_mask=1, maps_addr=2, in_w=5, ppitch=3, nb=2, kh=2, kw=3, sy=1, sx=2,
                  oh=2, ow=2, out_addr=1, out_pitch=3)
    isa.validate(instr, cfg)
    maps = rng.integers(-32768, 32768, size=(cfg.maps_words // 2, cfg.lanes))
    kern = np.zeros((1, cfg.vv_per_mv, cfg.lanes), dtype=np.int64)
    got = run_trace(cfg, instr, maps, kern, platform=platform)
    want, _ = reference(cfg, instr, maps, kern)
    np.testing.assert_array_equal(got["out"], want)


# ------------------------------------------------------------------------------------------------
# residual path of the output stage
# ------------------------------------------------------------------------------------------------

RESID_CONVS = [
    # pitch > nvv, ReLU, residual in the accumulator's format (the compiler's case)
    dict(nvv=2, maps_addr=1, in_w=4, cpitch=3, cin=3, kh=2, kw=2, sy=1, sx=1, dy=1, dx=1, oh=2, ow=3,
         kern_addr=0, bias_addr=30, acc_addr=2, out_addr=1, out_pitch=3, init=1, write=1, shift=12, act=1,
         resid=1, res_addr=5, rshift=12),
    # no ReLU, shift 0 and rshift 0: saturates often; strided, dilated
    dict(nvv=1, maps_addr=0, in_w=7, cpitch=4, cin=4, kh=2, kw=2, sy=2, sx=2, dy=2, dx=2, oh=2, ow=2,
         kern_addr=3, bias_addr=0, acc_addr=0, out_addr=0, out_pitch=1, init=0, write=1, shift=0, act=0,
         resid=1, res_addr=0, rshift=0, amp=60),
    # a large rshift (the residual's high bits wrap away at acc_bits)
    dict(nvv=2, maps_addr=2, in_w=3, cpitch=2, cin=2, kh=1, kw=1, sy=1, sx=1, dy=1, dx=1, oh=3, ow=3,
         kern_addr=1, bias_addr=0, acc_addr=0, out_addr=3, out_pitch=2, init=0, write=1, shift=40, act=0,
         resid=1, res_addr=7, rshift=45),
]


@VARIANTS
@pytest.mark.parametrize("fields", RESID_CONVS)
def test_conv_trace_residual(fields, platform):
    cfg = CFG
    rng = np.random.default_rng(len(str(fields)) + 11)
    instr = Instr("CONV", mv_mask=1, **{k: v for k, v in fields.items() if k != "amp"})
    isa.validate(instr, cfg)
    amp = fields.get("amp", 3000)
    maps = rng.integers(-amp, amp, size=(cfg.maps_words // 2, cfg.lanes))
    kern = rng.integers(-amp, amp, size=(48, cfg.vv_per_mv, cfg.lanes))
    res = rng.integers(-32768, 32768, size=(cfg.res_words, cfg.lanes))
    got = run_trace(cfg, instr, maps, kern, res, platform=platform)
    want, sat = reference(cfg, instr, maps, kern, res)
    np.testing.assert_array_equal(got["out"], want)
    assert got["sat"] == sat
    # the residual matters: without it the outputs differ
    plain, _ = reference(cfg, instr.replace(resid=0), maps, kern, res)
    assert not np.array_equal(plain, want)


def _comb_vectors(dut, cases, setter, getter):
    out = []

    async def bench(ctx):
        for c in cases:
            setter(ctx, c)
            out.append(getter(ctx))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return out


def test_output_stage_residual_vectors():
    """OutputStage alone against arch.numerics.requantize on random (acc, res, shift, rshift, act),
    over the whole 48-bit accumulator range and every shift."""
    cfg = CFG
    L, A = cfg.lanes, cfg.acc_bits
    rng = np.random.default_rng(3)
    cases = []
    for k in range(160):
        mag = int(rng.integers(1, A))
        acc = rng.integers(-(1 << (mag - 1)), 1 << (mag - 1), size=L, dtype=np.int64)
        res = rng.integers(-32768, 32768, size=L, dtype=np.int64)
        shift = int(rng.integers(0, 64)) if k % 4 == 0 else int(rng.integers(0, 24))
        rshift = int(rng.integers(0, 64)) if k % 5 == 0 else int(rng.integers(0, 24))
        cases.append((acc, res, shift, rshift, int(rng.integers(0, 2)), k % 7 != 0))
    dut = OutputStage(cfg)

    def setter(ctx, c):
        acc, res, shift, rshift, act, resid = c
        ctx.set(dut.acc.as_value(), pack(acc, A))
        ctx.set(dut.res.as_value(), pack(res, 16))
        ctx.set(dut.shift, shift)
        ctx.set(dut.rshift, rshift)
        ctx.set(dut.act, act)
        ctx.set(dut.resid, int(resid))

    got = _comb_vectors(dut, cases, setter,
                        lambda ctx: (unpack(ctx.get(dut.out.as_value()), 16, L), ctx.get(dut.sat)))
    for (acc, res, shift, rshift, act, resid), (out, sat) in zip(cases, got):
        with np.errstate(over="ignore"):
            want, nsat = numerics.requantize(acc, shift, act, res if resid else None, rshift, A)
        np.testing.assert_array_equal(out, want, err_msg=str((acc, res, shift, rshift, act, resid)))
        assert bin(sat).count("1") == nsat


def test_output_stage_activation_vectors():
    """OutputStage alone against arch.numerics.requantize for every activation (random LEAKY and
    CLIP parameters, the SIGMOID/TANH ROM over its segment boundaries and tails, every format of
    HARDSWISH, SILU and MISH and output shift of SIGMOID/TANH) and every residual mode, MUL included."""
    cfg = CFG
    L, A = cfg.lanes, cfg.acc_bits
    rng = np.random.default_rng(4)
    edges = np.array([0, 1, -1, 127, 128, -128, -127, -129, 16383, 16384, 16385, -16383, -16384, -16385, 32767, -32768,
                      4095, -4096])
    cases = []
    nact = len(numerics.ACT_NAMES)
    for k in range(40 * nact):
        act = k % nact
        mode = (k // nact) % 3
        shift = int(rng.integers(0, 20))
        if k % 5 == 0:   # table edges and saturation, exactly
            y = rng.choice(edges, size=L)
            acc = (y.astype(np.int64) << shift) + (rng.integers(0, 1 << shift, size=L) if shift else 0)
        else:
            acc = rng.integers(-(1 << (shift + 16)), 1 << (shift + 16), size=L, dtype=np.int64)
        res = rng.integers(-32768, 32768, size=L, dtype=np.int64)
        rshift = int(rng.integers(0, 24)) if mode != numerics.RES_MUL else int(rng.integers(0, 40))
        a = b = 0
        if act == numerics.ACT_LEAKY:
            a, b = int(rng.integers(0, 1 << 16)), int(rng.integers(0, 32))
        elif act == numerics.ACT_CLIP:
            lo, hi = sorted(int(v) for v in rng.integers(-32768, 32768, size=2))
            a, b = numerics.clip_fields(lo, hi)
        elif act in (numerics.ACT_SIGMOID, numerics.ACT_TANH, numerics.ACT_HARDSWISH, numerics.ACT_SILU,
                     numerics.ACT_MISH):
            a = int(rng.integers(0, numerics.ACT_MAX_FRAC + 1))     # output shift / the format
        cases.append((acc, res, shift, rshift, act, mode, a, b))
    dut = OutputStage(cfg)

    def setter(ctx, c):
        acc, res, shift, rshift, act, mode, a, b = c
        ctx.set(dut.acc.as_value(), pack(acc, A))
        ctx.set(dut.res.as_value(), pack(res, 16))
        for port, v in ((dut.shift, shift), (dut.rshift, rshift), (dut.act, act), (dut.resid, mode),
                        (dut.act_a, a), (dut.act_b, b)):
            ctx.set(port, v)

    got = _comb_vectors(dut, cases, setter,
                        lambda ctx: (unpack(ctx.get(dut.out.as_value()), 16, L), ctx.get(dut.sat)))
    for c, (out, sat) in zip(cases, got):
        acc, res, shift, rshift, act, mode, a, b = c
        want, nsat = numerics.requantize(acc, shift, act, res if mode else None, rshift, A, act_a=a, act_b=b,
                                         mode=mode)
        np.testing.assert_array_equal(out, want, err_msg=str(c))
        assert bin(sat).count("1") == nsat


# ------------------------------------------------------------------------------------------------
# average pooling
# ------------------------------------------------------------------------------------------------

def test_output_stage_mish_table_sweep():
    """MISH in the RTL against arch.numerics over every segment of its gate table (both ends and the
    middle of each, and the steps at x = -8 and 8) in Q4.11, and over random inputs in the other
    formats (x brought to Q4.11 by a left or a rounding right shift)."""
    cfg = CFG
    L, A = cfg.lanes, cfg.acc_bits
    seg, edge = numerics.LUT_SEG_BITS, numerics.LUT_SEGMENTS << numerics.LUT_SEG_BITS
    xs = [(k << seg) - edge + d for k in range(numerics.MISH_SEGMENTS) for d in (0, 1, 64, (1 << seg) - 1)]
    xs += [-edge - 1, -edge, edge - 1, edge, edge + 1, -32768, 32767]
    xs += [0] * (-len(xs) % L)
    rng = np.random.default_rng(9)
    cases = [(np.array(xs[j:j + L], dtype=np.int64), numerics.LUT_IN_FRAC) for j in range(0, len(xs), L)]
    cases += [(rng.integers(-32768, 32768, size=L, dtype=np.int64), int(f)) for f in range(numerics.ACT_MAX_FRAC + 1)
              for _ in range(2)]
    dut = OutputStage(cfg)

    def setter(ctx, c):
        y, f = c
        ctx.set(dut.acc.as_value(), pack(y, A))
        for port, v in ((dut.shift, 0), (dut.rshift, 0), (dut.act, numerics.ACT_MISH), (dut.resid, 0),
                        (dut.act_a, f), (dut.act_b, 0)):
            ctx.set(port, v)

    got = _comb_vectors(dut, cases, setter, lambda ctx: unpack(ctx.get(dut.out.as_value()), 16, L))
    for (y, f), out in zip(cases, got):
        want, _ = numerics.requantize(y, 0, numerics.ACT_MISH, act_a=f, acc_bits=A)
        np.testing.assert_array_equal(out, want, err_msg=str((y, f)))


def test_average_stage_vectors():
    """AverageStage alone against arch.numerics.average on random window sums (up to 255 x 255
    extreme elements), multipliers and shifts, and the reciprocals the compiler uses."""
    cfg = CFG
    L = cfg.lanes
    lim = 255 * 255 * 32768
    rng = np.random.default_rng(5)
    cases = []
    for k in range(120):
        if k % 3 == 0:
            n = int(rng.integers(1, 255 * 255 + 1))
            mul, shift = numerics.reciprocal(n)
            s = rng.integers(-32768, 32768, size=L, dtype=np.int64) * n
        else:
            mul, shift = int(rng.integers(0, 1 << 16)), int(rng.integers(0, 64))
            s = rng.integers(-lim, lim + 1, size=L, dtype=np.int64)
        if k < 2:
            s = np.full(L, lim if k == 0 else -lim, dtype=np.int64)
        cases.append((s, mul, shift))
    dut = AverageStage(cfg)

    def setter(ctx, c):
        s, mul, shift = c
        ctx.set(dut.sum.as_value(), pack(s, sum_bits(cfg)))
        ctx.set(dut.mul, mul)
        ctx.set(dut.shift, shift)

    got = _comb_vectors(dut, cases, setter,
                        lambda ctx: (unpack(ctx.get(dut.out.as_value()), 16, L), ctx.get(dut.sat)))
    for (s, mul, shift), (out, sat) in zip(cases, got):
        want, nsat = numerics.average(s, mul, shift)
        np.testing.assert_array_equal(out, want, err_msg=str((s, mul, shift)))
        assert bin(sat).count("1") == nsat


AVGPOOLS = [
    # 2x3 windows, strided, two words per pixel; reciprocal of 6
    dict(maps_addr=2, in_w=5, ppitch=3, nb=2, kh=2, kw=3, sy=1, sx=2, oh=2, ow=2, out_addr=1, out_pitch=3,
         mul=numerics.reciprocal(6)[0], shift=numerics.reciprocal(6)[1]),
    # global average of a 4x4 map; a multiplier that saturates (counted)
    dict(maps_addr=0, in_w=4, ppitch=1, nb=1, kh=4, kw=4, sy=1, sx=1, oh=1, ow=1, out_addr=0, out_pitch=1,
         mul=3000, shift=3),
    # 1x1 window, shift 0
    dict(maps_addr=1, in_w=3, ppitch=2, nb=2, kh=1, kw=1, sy=1, sx=1, oh=2, ow=3, out_addr=2, out_pitch=2,
         mul=1, shift=0),
]


@VARIANTS
@pytest.mark.parametrize("fields", AVGPOOLS)
def test_avgpool_trace(fields, platform):
    cfg = CFG
    rng = np.random.default_rng(len(str(fields)))
    instr = Instr("AVGPOOL", mv_mask=1, **fields)
    isa.validate(instr, cfg)
    maps = rng.integers(-32768, 32768, size=(cfg.maps_words // 2, cfg.lanes))
    kern = np.zeros((1, cfg.vv_per_mv, cfg.lanes), dtype=np.int64)
    got = run_trace(cfg, instr, maps, kern, platform=platform)
    want, sat = reference(cfg, instr, maps, kern)
    np.testing.assert_array_equal(got["out"], want)
    assert got["sat"] == sat
    # and against numpy directly: the window sums of output pixel 0, word 0
    i = instr
    win = np.array([maps[i.maps_addr + (ky * i.in_w + kx) * i.ppitch] for ky in range(i.kh) for kx in range(i.kw)])
    y, _ = numerics.average(win.sum(axis=0), i.mul, i.shift)
    np.testing.assert_array_equal(got["out"][i.out_addr], y)


# ------------------------------------------------------------------------------------------------
# the narrow arithmetic of the output stages
# ------------------------------------------------------------------------------------------------

class _Vectorised(wiring.Component):
    """``fn`` applied to every value of a ``width``-bit signed input at once, with one shared shift:
    exhaustive checks in one simulation step per shift."""

    def __init__(self, width: int, out_bits: int, fn):
        self.width, self.fn, self.n = width, fn, 1 << width
        super().__init__({"shift": In(6), "out": Out(data.ArrayLayout(signed(out_bits), self.n)),
                          "flag": Out(self.n)})

    def elaborate(self, platform):
        m = Module()
        flags = []
        for i in range(self.n):
            x = Const(i - (self.n >> 1), signed(self.width))
            value, flag = self.fn(m, x, self.shift, i)
            m.d.comb += self.out[i].eq(value)
            flags.append(flag)
        m.d.comb += self.flag.eq(Cat(*flags))
        return m


def _exhaustive(dut):
    got = []

    async def bench(ctx):
        for s in range(64):
            ctx.set(dut.shift, s)
            got.append((unpack(ctx.get(dut.out.as_value()), len(dut.out[0]), dut.n), ctx.get(dut.flag)))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return got


def test_round_saturate_exhaustive():
    """round_saturate on every 9-bit value and every shift 0..63, saturating to 5 bits, against
    arch.numerics.round_shift and saturate (the identity it relies on, at its edges)."""
    def fn(m, x, shift, i):
        v, over, under = round_saturate(m, x, shift, 5, f"_{i}")
        return v, over | under

    xs = np.arange(-256, 256, dtype=np.int64)
    for s, (out, flags) in enumerate(_exhaustive(_Vectorised(9, 5, fn))):
        want, _ = numerics.saturate(numerics.round_shift(xs, s), 5)
        np.testing.assert_array_equal(out, want, err_msg=f"shift {s}")
        clipped = (numerics.round_shift(xs, s) > 15) | (numerics.round_shift(xs, s) < -16)
        assert flags == sum(1 << int(i) for i in np.flatnonzero(clipped)), f"shift {s}"


def test_shift_left_wrapping_exhaustive():
    """The truncated barrel shifter on every 7-bit value and every shift 0..63, wrapping at 10 bits,
    against arch.numerics.wrap of the exact shift."""
    def fn(m, x, shift, i):
        return shift_left_wrapping(m, x, shift, 10, f"_{i}"), Const(0)

    xs = np.arange(-64, 64, dtype=np.int64)
    for s, (out, _) in enumerate(_exhaustive(_Vectorised(7, 10, fn))):
        want = numerics.wrap(xs << s, 10) if s < 57 else np.zeros_like(xs)
        np.testing.assert_array_equal(out, want, err_msg=f"shift {s}")


@pytest.mark.parametrize("stage", [OutputStage, AverageStage])
def test_output_stages_stay_within_64_bits(stage):
    """Every signal and every cell output of the output stages other than the packed ports fits 64 bits,
    so Verilator evaluates them in native words (wider ones go through slow out-of-line helpers)."""
    from amaranth.back import rtlil
    dut = stage(CFG)
    ports = {name for name, _ in dut.signature.members.items()}
    text = rtlil.convert(dut, name="stage")
    wide = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens[:2] == ["wire", "width"] and int(tokens[2]) > 64 and tokens[-1].lstrip("\\") not in ports:
            wide.append(line.strip())
    assert not wide, wide
