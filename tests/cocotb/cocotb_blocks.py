"""cocotb tests of RTL blocks exported to Verilog, against numpy (run by test_verilog_blocks.py).

* ``vv_mac_bias_acc``: a VV unit (top ``vv_unit``) runs two passes of MAC steps over P pixels, the first
  starting from the bias, the second accumulating onto the first; the sums must equal numpy's,
  wrapped at ``acc_bits`` (the cocotb twin of tests/hw/test_vv.py).
* ``mv_traces``: a trace generator driving MV unit 0 (top ``mv_trace``, wrapper in
  test_verilog_blocks.py) runs CONV and MAXPOOL instructions; the output buffer at the instruction's
  end cycle and the saturations must equal the functional model's numpy units (sim.units).

Inputs are driven after a falling edge and outputs read after the next one (one rising edge in
between), which is the Amaranth testbench's ``set; await tick(); get``. The configuration is
``$MDLA_BLOCK_CFG`` (a name of arch.machine.CONFIGS).
"""
from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, Timer

from arch import isa
from arch.isa import Init, Instr
from arch.machine import CONFIGS
from arch.numerics import join_bias, wrap
from arch.timing import compute_cycles
from tests.hw.util import pack, unpack


def _cfg():
    return CONFIGS[os.environ.get("MDLA_BLOCK_CFG", "small")]


async def _start(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def vv_mac_bias_acc(dut):
    cfg = _cfg()
    rng = np.random.default_rng(1)
    L, K, P = cfg.lanes, 5, 3
    kern = rng.integers(-32768, 32768, size=(K + 2, L))        # bias lo, hi at words K, K+1
    x = rng.integers(-32768, 32768, size=(2, P, K))
    for name in ("kw_en", "issue", "first", "last", "kaddr", "acc_addr", "init", "bias_addr", "x"):
        getattr(dut, name).value = 0
    await _start(dut)
    for a, w in enumerate(kern):
        dut.kw_en.value = 1
        dut.kw_addr.value = a
        dut.kw_data.value = pack(w, 16)
        await FallingEdge(dut.clk)
    dut.kw_en.value = 0
    dut.bias_addr.value = K
    steps = [(init, p, k) for init in (Init.BIAS, Init.ACC) for p in range(P) for k in range(K)]
    ops, got = [], []
    for n in range(len(steps) + 3):
        if n < len(steps):
            init, p, k = steps[n]
            dut.init.value = int(init)
            dut.issue.value = 1
            dut.kaddr.value = k
            dut.acc_addr.value = 4 + p
            dut.first.value = int(k == 0)
            dut.last.value = int(k == K - 1)
            ops.append(x[0 if init == Init.BIAS else 1, p, k])
        else:
            dut.issue.value = 0
        if 1 <= n <= len(steps):
            dut.x.value = int(ops[n - 1]) & 0xFFFF
        await FallingEdge(dut.clk)
        if int(dut.out_valid.value):
            got.append(unpack(int(dut.out_acc.value), cfg.acc_bits, L))
    bias = join_bias(kern[K], kern[K + 1])
    first = wrap(bias[None] + x[0] @ kern[:K], cfg.acc_bits)
    second = wrap(first + x[1] @ kern[:K], cfg.acc_bits)
    assert len(got) == 2 * P, f"{len(got)} results, want {2 * P}"
    np.testing.assert_array_equal(np.array(got), np.concatenate([first, second]))


MV_CASES = [
    Instr("CONV", mv_mask=1, nvv=2, maps_addr=3, in_w=5, cpitch=6, cin=5, kh=2, kw=3, sy=1, sx=1, dy=1, dx=1,
          oh=2, ow=2, kern_addr=0, bias_addr=40, acc_addr=1, out_addr=2, out_pitch=3, init=1, write=1, shift=14,
          act=1),
    Instr("CONV", mv_mask=1, nvv=1, maps_addr=0, in_w=7, cpitch=4, cin=3, kh=2, kw=2, sy=2, sx=2, dy=2, dx=2,
          oh=2, ow=2, kern_addr=5, bias_addr=0, acc_addr=0, out_addr=0, out_pitch=1, init=0, write=1, shift=0,
          act=0),
    Instr("MAXPOOL", mv_mask=1, maps_addr=2, in_w=5, ppitch=3, nb=2, kh=2, kw=3, sy=1, sx=2, oh=2, ow=2,
          out_addr=1, out_pitch=3),
]


def _reference(u, instr, maps, kern):
    """The functional model's units ``u`` (kept across cases, like the RTL's buffers)."""
    sat0 = u.saturations
    u.maps_w[0, :len(maps)] = maps
    u.kern[0, :kern.shape[0]] = kern
    getattr(u, instr.op.lower())(instr)
    return u.out[0].copy(), u.saturations - sat0


@cocotb.test()
async def mv_traces(dut):
    from sim.units import ClusterUnits
    cfg = _cfg()
    L = cfg.lanes
    units = ClusterUnits(cfg)
    for name in ("maps_w_en", "kern_w_en", "res_w_en", "start", "instr", "out_r_addr"):
        getattr(dut, name).value = 0
    await _start(dut)
    for n, instr in enumerate(MV_CASES):
        isa.validate(instr, cfg)
        rng = np.random.default_rng(10 + n)
        amp = 32768 if instr.op == "MAXPOOL" else 3000
        maps = rng.integers(-amp, amp, size=(cfg.maps_words // 2, L))
        kern = rng.integers(-3000, 3000, size=(48, cfg.vv_per_mv, L))
        for a, w in enumerate(maps):
            dut.maps_w_en.value = 1
            dut.maps_w_addr.value = a
            dut.maps_w_data.value = pack(w, 16)
            await FallingEdge(dut.clk)
        dut.maps_w_en.value = 0
        for a in range(kern.shape[0]):
            for v in range(cfg.vv_per_mv):
                dut.kern_w_en.value = 1 << v
                dut.kern_w_addr.value = a
                dut.kern_w_data.value = pack(kern[a, v], 16)
                await FallingEdge(dut.clk)
        dut.kern_w_en.value = 0
        dut.instr.value = int.from_bytes(isa.encode(instr), "little")
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        sat = 0
        for _ in range(1, compute_cycles(instr, cfg)):      # cycles s+1 .. e-1; the buffer is read at e
            # stage O's results are stable from mid-cycle in a simulator build (the output stages' copies
            # are made at the falling edge, hw.mv.SimulatorBuild): sample just after it
            await Timer(1, unit="ns")
            sat += int(dut.sat_count.value)
            await FallingEdge(dut.clk)
        out = []
        for a in range(cfg.out_words):
            dut.out_r_addr.value = a
            await Timer(1, unit="ns")
            out.append(unpack(int(dut.out_r_data.value), 16, L))
        await FallingEdge(dut.clk)
        want, want_sat = _reference(units, instr, maps, kern)
        np.testing.assert_array_equal(np.array(out, dtype=np.int16), want, err_msg=f"case {n}: {instr.op}")
        assert sat == want_sat, f"case {n}: {sat} saturations, want {want_sat}"
        dut._log.info("case %d (%s): %d output words equal numpy, %d saturations", n, instr.op, cfg.out_words, sat)
