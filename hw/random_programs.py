"""Random valid card programs for the differential runs (RTL against the functional model).

One generator, ``generate(d)``, draws a machine (queue depth, memory latency) and race-free
programs for one or two clusters through a small drawing interface ``d``:

* ``random_programs()`` is the hypothesis strategy over it (tests/hw/test_differential.py,
  tests/test_trace.py, tests/cocotb/test_verilog_card.py): hypothesis draws, shrinks and replays.
* ``seeded_case(seed)`` draws from ``random.Random(seed)`` only (``mdla regress random``,
  runtime/rtl_regress.py): seed S is the same program in every process, on every Ray node, with
  any hypothesis version and whatever modules are imported. (Hypothesis is not a seeded source: its
  provider mixes in constants collected from the modules loaded at the time of the draw, so a
  ``ConjectureData(random=Random(S))`` gives another program once more modules are imported.)

``program_memory(progs, seed)`` lays a case out in card memory: random input bytes from ``seed``
(``numpy.random.default_rng``) and each cluster's program at ``0x1000 * cluster``.
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np

from arch.isa import Act, Instr, Resid, encode_program
from arch.machine import SMALL
from arch.numerics import reciprocal

DATA = 0x4000          # input data (random bytes)
OUT = 0x8000           # each cluster stores into its own region
MEM = 0xA000

#: (queue_depth, mem_latency) of the Verilator builds the random programs run on: a drawn machine
#: is mapped to the nearer of the two, so that a thousand programs need four builds (two per
#: cluster count)
VERILATOR_BUILDS = ((1, 1), (4, 8))


class Draw:
    """What ``generate`` draws with: integers in [lo, hi], an element of a sequence, a coin."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, seq):
        raise NotImplementedError

    def bool(self) -> bool:
        raise NotImplementedError


class RandomDraw(Draw):
    """Draws from ``random.Random(seed)``: the same sequence for a seed everywhere."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def int(self, lo, hi):
        return self.r.randint(lo, hi)

    def choice(self, seq):
        seq = list(seq)
        return seq[self.r.randrange(len(seq))]

    def bool(self):
        return self.r.randrange(2) == 1


class HypothesisDraw(Draw):
    """Draws through a hypothesis ``draw`` (inside ``st.composite``), so that hypothesis shrinks."""

    def __init__(self, draw):
        from hypothesis import strategies as st
        self.draw, self.st = draw, st

    def int(self, lo, hi):
        return self.draw(self.st.integers(lo, hi))

    def choice(self, seq):
        return self.draw(self.st.sampled_from(list(seq)))

    def bool(self):
        return self.draw(self.st.booleans())


def random_programs():
    """The hypothesis strategy of (machine configuration, {cluster: program})."""
    from hypothesis import strategies as st
    return st.composite(lambda draw: generate(HypothesisDraw(draw)))()


def seeded_case(seed: int, verilator_builds: bool = False):
    """(configuration, memory image, {cluster: program address}) of random program ``seed``;
    ``verilator_builds``: the machine mapped to the nearer of ``VERILATOR_BUILDS``."""
    cfg, progs = generate(RandomDraw(seed))
    if verilator_builds:
        cfg = nearest_build(cfg)
    mem, addrs = program_memory(progs, seed)
    return cfg, mem, addrs


def nearest_build(cfg):
    """``cfg`` with the queue depth and memory latency of the nearer of ``VERILATOR_BUILDS``."""
    q, lat = min(VERILATOR_BUILDS, key=lambda b: abs(b[0] - cfg.queue_depth) + abs(b[1] - cfg.mem_latency))
    return dataclasses.replace(cfg, queue_depth=q, mem_latency=lat)


def program_memory(progs, seed):
    """The card memory of a random case: random input bytes (from ``seed``) and each cluster's
    program at 0x1000 * cluster; returns (memory, {cluster: program address})."""
    rng = np.random.default_rng(seed)
    mem = np.zeros(MEM, dtype=np.uint8)
    mem[DATA:OUT] = rng.integers(0, 256, OUT - DATA, dtype=np.uint8)
    addrs = {}
    for c, p in progs.items():
        code = encode_program(p)
        mem[0x1000 * c:0x1000 * c + len(code)] = np.frombuffer(code, dtype=np.uint8)
        addrs[c] = 0x1000 * c
    return mem, addrs


def generate(d: Draw):
    """Race-free random programs: each cluster runs rounds of LOAD maps (+ LOAD RES) + LOAD kernel ->
    CONV (with or without a residual), MAXPOOL or AVGPOOL -> STORE, with the tokens a correct program
    needs (plus SYNCs), random fields, and random sharing of the memory port between clusters.
    Sometimes every cluster also meets the others at the same number of BARRIERs (mask: all
    generated clusters), each placed between rounds (or before the first) at a random position per
    cluster; the first BARRIER after a round pops its STORE's token (the stores are drained), and the
    next round's compute then relies on the BARRIER for its output buffer."""
    cfg = dataclasses.replace(SMALL, queue_depth=d.int(1, 4), mem_latency=d.int(1, 9))
    M, V = cfg.mv_per_cluster, cfg.vv_per_mv
    progs = {}
    nclusters = d.int(1, cfg.clusters_per_card)
    nbarriers = d.choice([0, 0, 1, 2])
    bmask = (1 << nclusters) - 1
    for c in range(nclusters):
        out = []
        rounds = d.int(1, 3)
        # BARRIER positions: p = before round p (p = rounds: after the last)
        at = sorted([d.int(0, rounds) for _ in range(nbarriers)])
        drained = [p > 0 and d.int(0, 3) > 0 for p in range(rounds + 1)]   # BARRIER pops the store token
        drained = [x and p in at for p, x in enumerate(drained)]

        def barriers(p):
            for k in range(at.count(p)):
                out.append(Instr("BARRIER", mask=bmask, pop_next=1 if drained[p] and k == 0 else 0))

        for r in range(rounds):
            barriers(r)
            mask = d.int(1, (1 << M) - 1)
            wait_store = 1 if r else 0           # do not overwrite buffers the last round still uses
            n0 = d.int(1, 12)
            out.append(Instr("LOAD", buf=0, mv_mask=mask, dram_addr=DATA + 8 * d.int(0, 200),
                             buf_addr=d.int(0, 4), n0=n0, n1=d.int(1, 3),
                             s1=d.int(0, 16), n2=d.int(1, 2), s2=d.int(0, 40),
                             pop_next=wait_store))
            if d.bool():      # residual words (read by a resid CONV, or left unused)
                out.append(Instr("LOAD", buf=2, mv_mask=d.int(1, (1 << M) - 1),
                                 dram_addr=DATA + 8 * d.int(0, 400), buf_addr=d.int(0, 6),
                                 n0=d.int(1, 14), n1=d.int(1, 2), s1=d.int(0, 20),
                                 n2=d.int(1, 2), s2=d.int(0, 40)))
            nvv = d.int(1, V)
            out.append(Instr("LOAD", buf=1, mv_mask=mask, nvv=nvv, dram_addr=DATA + 8 * d.int(0, 300),
                             buf_addr=0, n0=nvv * d.int(1, 20), n1=1, n2=1, push_next=1))
            # compute waits for its loads and for the previous round's STORE (output buffer reuse) and
            # tells the next round's loads when it has read its buffers
            tok = dict(pop_prev=1, push_next=1, pop_next=1 if r and not drained[r] else 0,
                       push_prev=1 if r < rounds - 1 else 0)
            kind = d.choice(["CONV", "CONV", "MAXPOOL", "AVGPOOL"])
            if kind == "CONV":
                oh, ow = d.int(1, 3), d.int(1, 3)
                kh, kw = d.int(1, 2), d.int(1, 2)
                cin = d.int(1, 6)
                cpitch = cin + d.int(0, 2)
                dy, dx, sy, sx = (d.int(1, 2) for _ in range(4))
                in_w = (ow - 1) * sx + (kw - 1) * dx + 1 + d.int(0, 2)
                K = kh * kw * cin
                out_pitch = nvv + d.int(0, 1)
                i = Instr("CONV", mv_mask=mask, nvv=nvv, maps_addr=d.int(0, 7), in_w=in_w,
                          cpitch=cpitch, cin=cin, kh=kh, kw=kw, sy=sy, sx=sx, dy=dy, dx=dx, oh=oh, ow=ow,
                          kern_addr=d.int(0, 20 - min(K, 20)) if K <= 20 else 0,
                          bias_addr=d.int(0, 10), acc_addr=d.int(0, 16 - oh * ow),
                          out_addr=d.int(0, 4), out_pitch=out_pitch, init=d.int(0, 2),
                          write=1, shift=d.int(0, 40), act=d.choice(list(Act)),
                          **tok)
                if i.act == Act.LEAKY:
                    i = i.replace(act_a=d.int(0, (1 << 16) - 1), act_b=d.int(0, 31))
                elif i.act == Act.CLIP:
                    lo, hi = sorted(d.int(-32768, 32767) for _ in range(2))
                    i = i.replace(act_a=lo & 0xFFFF, act_b=hi & 0xFFFF)
                elif i.act in (Act.SIGMOID, Act.TANH, Act.HARDSWISH, Act.SILU, Act.MISH):
                    i = i.replace(act_a=d.int(0, 15))
                if d.bool():
                    i = i.replace(resid=d.choice([Resid.ADD, Resid.MUL]), res_addr=d.int(0, 8),
                                  rshift=d.int(0, 40))
                if K > cfg.kernel_words:
                    i = i.replace(cin=1, cpitch=1)
                n_out = (oh * ow - 1) * out_pitch + nvv
            else:
                oh, ow, kh, kw = (d.int(1, 3) for _ in range(4))
                sy, sx = d.int(1, 2), d.int(1, 2)
                nb = d.int(1, 2)
                ppitch = nb + d.int(0, 1)
                in_w = (ow - 1) * sx + kw + d.int(0, 1)
                out_pitch = nb + d.int(0, 1)
                i = Instr("MAXPOOL", mv_mask=mask, maps_addr=d.int(0, 3), in_w=in_w, ppitch=ppitch,
                          nb=nb, kh=kh, kw=kw, sy=sy, sx=sx, oh=oh, ow=ow, out_addr=d.int(0, 4),
                          out_pitch=out_pitch, **tok)
                if kind == "AVGPOOL":
                    if d.bool():
                        mul, shift = reciprocal(kh * kw)
                    else:
                        mul, shift = d.int(0, (1 << 16) - 1), d.int(0, 40)
                    i = Instr("AVGPOOL", mul=mul, shift=shift, **i.f)
                n_out = (oh * ow - 1) * out_pitch + nb
            if d.bool():
                out.append(Instr("SYNC"))
            out.append(i)
            mv = d.choice([m for m in range(M) if mask >> m & 1])
            base = OUT + 0x800 * c + 0x100 * r
            out.append(Instr("STORE", mv=mv, dram_addr=base, buf_addr=0, n0=n_out, n1=1, n2=1, pop_prev=1,
                             push_prev=1 if r < rounds - 1 or drained[r + 1] else 0))
        barriers(rounds)
        progs[c] = out + [Instr("END")]
    return cfg, progs

