"""VVUnit block test: a stream of MAC steps in the Amaranth simulator against numpy."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from arch.isa import Init
from arch.machine import REFERENCE, SMALL
from arch.numerics import join_bias, wrap
from hw.vv import VVUnit
from tests.hw.util import pack, unpack


@pytest.mark.parametrize("cfg", [SMALL, REFERENCE], ids=lambda c: c.name)
def test_vv_mac_bias_acc(cfg):
    rng = np.random.default_rng(1)
    L, K, P = cfg.lanes, 5, 3
    kern = rng.integers(-32768, 32768, size=(K + 2, L))
    kern[K:] = rng.integers(-32768, 32768, size=(2, L))          # bias lo, hi at words K, K+1
    x = rng.integers(-32768, 32768, size=(2, P, K))
    dut = VVUnit(cfg)
    got = []

    async def bench(ctx):
        for a, w in enumerate(kern):
            ctx.set(dut.kw_en, 1)
            ctx.set(dut.kw_addr, a)
            ctx.set(dut.kw_data.as_value(), pack(w, 16))
            await ctx.tick()
        ctx.set(dut.kw_en, 0)
        ctx.set(dut.bias_addr, K)
        # two passes: BIAS into accumulators 4.., then ACC adding more products
        steps = [(init, p, k) for init, pas in ((Init.BIAS, 0), (Init.ACC, 1)) for p in range(P) for k in range(K)]
        ops = []
        for n in range(len(steps) + 3):
            if n < len(steps):
                init, p, k = steps[n]
                pas = 0 if init == Init.BIAS else 1
                ctx.set(dut.init, init)
                ctx.set(dut.issue, 1)
                ctx.set(dut.kaddr, k)
                ctx.set(dut.acc_addr, 4 + p)
                ctx.set(dut.first, k == 0)
                ctx.set(dut.last, k == K - 1)
                ops.append(x[pas, p, k])
            else:
                ctx.set(dut.issue, 0)
            if 1 <= n <= len(steps):
                ctx.set(dut.x, int(ops[n - 1]))
            await ctx.tick()
            if ctx.get(dut.out_valid):
                got.append(unpack(ctx.get(dut.out_acc.as_value()), cfg.acc_bits, L))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    bias = join_bias(kern[K], kern[K + 1])
    first = wrap(bias[None] + x[0] @ kern[:K], cfg.acc_bits)
    second = wrap(first + x[1] @ kern[:K], cfg.acc_bits)
    assert len(got) == 2 * P
    np.testing.assert_array_equal(np.array(got), np.concatenate([first, second]))
