"""LoopNest against a Python loop nest."""
import itertools

import numpy as np
from amaranth.sim import Simulator

from hw.agu import LoopNest
from tests.hw.util import pack


def _run(counts, streams, gaps):
    """Walk the nest, consuming a step only when ``gaps`` says so; return the presented steps."""
    L = len(counts)
    dut = LoopNest(L, {s: 20 for s in streams}, count_bits=8)
    seen = []

    async def bench(ctx):
        ctx.set(dut.counts.as_value(), pack(counts, 8))
        for s, (init, inc) in streams.items():
            ctx.set(getattr(dut, f"init_{s}"), init)
            ctx.set(getattr(dut, f"inc_{s}").as_value(), pack(inc, 20))
        ctx.set(dut.start, 1)
        cyc = 0
        while True:
            take = gaps[cyc % len(gaps)]
            ctx.set(dut.next, take)
            if not ctx.get(dut.valid):
                break
            if take:
                seen.append((tuple(ctx.get(getattr(dut, f"addr_{s}")) for s in streams),
                             ctx.get(dut.first), ctx.get(dut.last)))
            await ctx.tick()
            ctx.set(dut.start, 0)
            cyc += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


def test_loop_nest_matches_python():
    counts = (2, 3, 1, 2)
    streams = {"a": (100, (50, 7, 3, 1)), "b": (5, (0, 10, 0, 2))}
    want = []
    for idx in itertools.product(*(range(c) for c in counts)):
        addrs = tuple((init + sum(i * d for i, d in zip(idx, inc))) % (1 << 20) for init, inc in streams.values())
        first = sum((i == 0) << l for l, i in enumerate(idx))
        last = sum((i == c - 1) << l for l, (i, c) in enumerate(zip(idx, counts)))
        want.append((addrs, first, last))
    assert _run(counts, streams, [1]) == want
    assert _run(counts, streams, [0, 1, 1, 0, 0]) == want
