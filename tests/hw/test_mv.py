"""MVUnit block tests: whole CONV and MAXPOOL traces, driven by the trace generator, against the
functional model's numpy units (:class:`sim.units.ClusterUnits`), with the pipeline's latency."""
import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from arch import isa
from arch.isa import Instr
from arch.machine import SMALL
from arch.timing import compute_cycles
from hw.compute import TraceGenerator, drive_mv
from hw.mv import MVUnit
from sim.units import ClusterUnits
from tests.hw.util import pack, unpack

CFG = SMALL


def run_trace(cfg, instr: Instr, maps: np.ndarray, kern: np.ndarray):
    """Load MV 0's buffers, run one trace starting in cycle s; return the output buffer as it is at
    the trace's end cycle ``e = s + compute_cycles`` (so results must be written in time) and the
    saturations counted."""
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
        ctx.set(tg.instr, int.from_bytes(isa.encode(instr), "little"))
        ctx.set(tg.start, 1)
        await ctx.tick()
        ctx.set(tg.start, 0)
        cycles = compute_cycles(instr, cfg)
        sat = 0
        for t in range(1, cycles):          # cycles s+1 .. e-1; the buffer is read at e
            sat += ctx.get(mv.sat_count)
            await ctx.tick()
        res["sat"] = sat
        out = []
        for a in range(cfg.out_words):
            ctx.set(mv.out_r_addr, a)
            out.append(unpack(ctx.get(mv.out_r_data.as_value()), 16, L))
        res["out"] = np.array(out, dtype=np.int16)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return res


def reference(cfg, instr, maps, kern):
    u = ClusterUnits(cfg)
    u.maps_w[0, :len(maps)] = maps
    u.kern[0, :kern.shape[0]] = kern
    if instr.op == "CONV":
        u.conv(instr)
    else:
        u.maxpool(instr)
    return u.out[0], u.saturations


CONVS = [
    dict(nvv=2, maps_addr=3, in_w=5, cpitch=6, cin=5, kh=2, kw=3, sy=1, sx=1, dy=1, dx=1, oh=2, ow=2,
         kern_addr=0, bias_addr=40, acc_addr=1, out_addr=2, out_pitch=3, init=1, write=1, shift=14, act=1),
    dict(nvv=1, maps_addr=0, in_w=7, cpitch=4, cin=3, kh=2, kw=2, sy=2, sx=2, dy=2, dx=2, oh=2, ow=2,
         kern_addr=5, bias_addr=0, acc_addr=0, out_addr=0, out_pitch=1, init=0, write=1, shift=0, act=0),
]


@pytest.mark.parametrize("fields", CONVS)
def test_conv_trace(fields):
    cfg = CFG
    rng = np.random.default_rng(len(str(fields)))
    instr = Instr("CONV", mv_mask=1, **fields)
    isa.validate(instr, cfg)
    maps = rng.integers(-3000, 3000, size=(cfg.maps_words // 2, cfg.lanes))
    kern = rng.integers(-3000, 3000, size=(48, cfg.vv_per_mv, cfg.lanes))
    got = run_trace(cfg, instr, maps, kern)
    want, sat = reference(cfg, instr, maps, kern)
    np.testing.assert_array_equal(got["out"], want)
    assert got["sat"] == sat


def test_maxpool_trace():
    cfg = CFG
    rng = np.random.default_rng(7)
    instr = Instr("MAXPOOL", mv_mask=1, maps_addr=2, in_w=5, ppitch=3, nb=2, kh=2, kw=3, sy=1, sx=2,
                  oh=2, ow=2, out_addr=1, out_pitch=3)
    isa.validate(instr, cfg)
    maps = rng.integers(-32768, 32768, size=(cfg.maps_words // 2, cfg.lanes))
    kern = np.zeros((1, cfg.vv_per_mv, cfg.lanes), dtype=np.int64)
    got = run_trace(cfg, instr, maps, kern)
    want, _ = reference(cfg, instr, maps, kern)
    np.testing.assert_array_equal(got["out"], want)
