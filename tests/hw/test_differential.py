"""Differential tests: the card RTL (Amaranth simulator) against the functional model.

Every program runs on both from the same memory image; the final memory images must be equal bit
for bit and every cycle count and counter of every cluster equal. Compiled kernels (small ones by
default, more with --runslow) and random valid multi-cluster programs (hypothesis)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st

from arch.isa import Act, Instr, Resid, encode_program
from arch.machine import SMALL
from hw.run import LAST_RUN, run_rtl
from sim.card import SimError, run_card

FIELDS = ("cycles", "instructions", "busy", "token_wait", "port_wait", "bytes_loaded", "bytes_stored",
          "macs", "mac_slots", "saturations")


def assert_same(cfg, mem, programs):
    """Run on both; compare memory images, cycles and every counter. Returns the model's stats."""
    m_model, m_rtl = mem.copy(), mem.copy()
    want = run_card(cfg, m_model, programs)
    got = run_rtl(cfg, m_rtl, programs)
    assert got.cycles == want.cycles
    for c, w in want.clusters.items():
        g = got.clusters[c]
        for f in FIELDS:
            assert getattr(g, f) == getattr(w, f), f"cluster {c} {f}: RTL {getattr(g, f)} model {getattr(w, f)}"
    diff = np.flatnonzero(m_model != m_rtl)
    assert diff.size == 0, f"{diff.size} memory bytes differ, first at {diff[0]:#x}"
    return want


# ------------------------------------------------------------------------------------------------
# compiled kernels
# ------------------------------------------------------------------------------------------------

def compiled_image(model, cfg, seed=0):
    from compiler.driver import compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    g = quantize(load_model(model), cfg)
    c = compile_graph(g, cfg)
    mem, _ = c.seeded_image(seed)
    return mem, c.program_addresses()


def _kernels():
    from zoo import kernels
    return {
        "conv_3x3": lambda: kernels.conv_model(3, 4, 6, 6, 3, 1, 1, relu=True, seed=1),
        "conv_1x1": lambda: kernels.conv_model(8, 8, 8, 8, 1, 1, 0, seed=3),
        "conv_strided_dilated": lambda: kernels.conv_model(5, 7, 9, 9, 3, 2, 2, dilation=2, seed=4),
        "maxpool": lambda: kernels.maxpool_model(8, 6, 6, 2, 2, 0, seed=2),
        "maxpool_overlap": lambda: kernels.maxpool_model(5, 7, 7, 3, 2, 1, seed=5),
        "fc": lambda: kernels.fc_model(16, 8, seed=1),
        # Conv+BN+Add+Relu fused into CONVs with a residual (LOAD buf=RES, CONV resid=1)
        "residual": lambda: kernels.residual_model(4, 6, 6, 1, seed=1),
        "residual_strided": lambda: kernels.residual_model(6, 7, 7, 2, seed=2),
        # AVGPOOL (count_include_pad=1: zero padding counted in the divisor) and GlobalAveragePool
        "avgpool": lambda: kernels.avgpool_model(5, 6, 6, 2, 2, 0),
        "avgpool_overlap_pad": lambda: kernels.avgpool_model(6, 7, 7, 3, 2, 1),
        "global_avgpool": lambda: kernels.avgpool_model(8, 5, 5, None),
        # the fused Mul (resid=MUL) after TANH, and after SIGMOID with the gate's (C, 1, 1) operand
        # loaded with DMA strides of 0 (LEAKY and CLIP: random programs and tests/hw/test_mv.py)
        "mul_maps": lambda: kernels.mul_model("maps", c=4, h=4, w=4, seed=1),
        "mul_gate": lambda: kernels.mul_model("gate", c=5, h=4, w=4, seed=1),
        # lowered operators (compiler/lowering.py): channels from inside a word (maps_addr), strided
        # STOREs of phases, AVGPOOL pieces with their own multipliers
        "grouped_conv": lambda: kernels.grouped_conv_model(6, 6, 3, 4, 4, 3, 2, 1, relu=True, seed=2),
        "conv_transpose": lambda: kernels.conv_transpose_model(4, 4, 3, 3, 3, 2, 1, 1, seed=4),
        "resize_bilinear": lambda: kernels.resize_model(4, 3, 3, (2, 2), "linear", "half_pixel"),
        "resize_nearest": lambda: kernels.resize_model(4, 3, 3, (2, 2)),     # 1x1 AVGPOOLs, strided STOREs
        "avgpool_exclude_pad": lambda: kernels.avgpool_model(4, 5, 5, 3, 2, 1, count_include_pad=0),
    }


@pytest.mark.parametrize("name", sorted(_kernels()))
def test_compiled_kernel(name):
    mem, programs = compiled_image(_kernels()[name](), SMALL)
    assert_same(SMALL, mem, programs)


@pytest.mark.parametrize("act", ["hardswish", "silu", "mish"])
def test_compiled_hardswish_silu(act):
    """The output-stage functions the front end's canonicalisation produces (set on the IR here)."""
    from compiler.driver import compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    from zoo import kernels
    g = load_model(kernels.activation_model("relu", cin=3, cout=5, h=4, w=4, seed=2))
    g.layers[0].act = act
    c = compile_graph(quantize(g, SMALL, act_frac=10), SMALL)
    mem, _ = c.seeded_image(1)
    assert_same(SMALL, mem, c.program_addresses())


SLOW_KERNELS = [(16, 32, 10, 10, 3, 2, 1, 1), (20, 24, 9, 11, 3, 1, 0, 1), (64, 40, 6, 6, 3, 1, 1, 1),
                (4, 70, 17, 17, 3, 1, 1, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["leaky", "relu6", "clip_attr", "clip_max_only", "sigmoid", "tanh"])
def test_compiled_activation_slow(kind):
    from zoo import kernels
    mem, programs = compiled_image(kernels.activation_model(kind, cin=3, cout=5, h=4, w=4, seed=2), SMALL)
    assert_same(SMALL, mem, programs)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_KERNELS, ids=lambda c: "cin{}_cout{}_{}x{}_k{}_s{}_p{}_d{}".format(*c))
def test_compiled_kernel_slow(case):
    from zoo import kernels
    cin, cout, h, w, k, s, p, d = case
    mem, programs = compiled_image(kernels.conv_model(cin, cout, h, w, k, s, p, dilation=d, relu=True,
                                                      seed=cin + cout), SMALL)
    assert_same(SMALL, mem, programs)


@pytest.mark.slow
def test_small_cnn():
    from zoo.small_cnn import small_cnn
    model = small_cnn(seed=0, input_shape=(1, 3, 8, 8))
    mem, programs = compiled_image(model, SMALL)
    assert_same(SMALL, mem, programs)


def mini_resnet(seed=1):
    """ResNet-18's structure at toy width: 3x3/2 stem + BN + ReLU, 3x3/2 max-pool, a basic block with
    an identity shortcut, one with a strided 1x1 projection, global average pool, flatten, FC."""
    from zoo.builder import Builder
    from zoo.resnet import _basic
    b = Builder("mini_resnet", (1, 3, 12, 12), seed)
    x = b.maxpool(b.relu(b.bn(b.conv("input", 8, 3, 2, 1, name="conv1"))), 3, 2, 1)
    x = _basic(b, x, 8, 1)
    x = _basic(b, x, 12, 2)
    return b.finish(b.gemm(b.flatten(b.global_avgpool(x)), 10, name="fc"))


def test_mini_resnet():
    mem, programs = compiled_image(mini_resnet(), SMALL)
    assert_same(SMALL, mem, programs)


def _split_models():
    from zoo import kernels
    from zoo.small_cnn import small_cnn
    return {
        # one layer (no BARRIER: the clusters split its output channels), 4.4 k cycles
        "conv": lambda: kernels.conv_model(8, 16, 10, 10, 3, 1, 1, seed=1),
        # four layers, each ended by SYNCs and a BARRIER of both clusters
        "small_cnn": lambda: small_cnn(seed=0, input_shape=(1, 3, 8, 8)),
    }


def split_image(model, cfg, seed=0):
    """A model compiled in clustersbatchmode: clusters 0 and 1 split each layer's work and meet at a
    BARRIER between layers."""
    from compiler.driver import Parallel, compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    c = compile_graph(quantize(load_model(model), cfg), cfg, parallel=Parallel(clusters=(0, 1), split=True))
    mem, _ = c.seeded_image(seed)
    return mem, c.program_addresses()


@pytest.mark.parametrize("name", [pytest.param("conv", marks=pytest.mark.slow), "small_cnn"])
def test_clustersbatchmode(name):
    mem, programs = split_image(_split_models()[name](), SMALL)
    assert sorted(programs) == [0, 1]
    assert_same(SMALL, mem, programs)


@pytest.mark.slow
def test_resnet18():
    """A whole ResNet-18 (16x16 input): residual CONVs, MAXPOOL, GlobalAveragePool and the FC layer.
    About 3.7 M cycles: some 40 minutes in pysim."""
    import zoo
    mem, programs = compiled_image(zoo.resnet18(seed=1, input_shape=(1, 3, 16, 16)), SMALL)
    assert_same(SMALL, mem, programs)


# ------------------------------------------------------------------------------------------------
# random programs
# ------------------------------------------------------------------------------------------------

# the generator and the memory layout live in hw/random_programs.py (also used by
# `mdla regress random`, runtime/rtl_regress.py)
from hw.random_programs import DATA, MEM, OUT, program_memory, random_programs  # noqa: E402,F401


@settings(max_examples=int(__import__("os").environ.get("HW_EXAMPLES", 25)), deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_programs(), st.integers(0, 2**32 - 1))
def test_random_programs(case, seed):
    from arch.isa import validate
    cfg, progs = case
    for p in progs.values():
        for i in p:
            validate(i, cfg)
            if i.op == "BARRIER":
                event(f"BARRIER ({len(progs)} cluster(s))")
            if i.op == "AVGPOOL" or (i.op == "CONV" and i.resid) or (i.op == "LOAD" and i.buf == 2):
                event("AVGPOOL" if i.op == "AVGPOOL" else f"CONV resid {Resid(i.resid).name}" if i.op == "CONV"
                      else "LOAD RES")
            if i.op == "CONV":
                event(f"CONV act {Act(i.act).name}")
    mem, addrs = program_memory(progs, seed)
    try:
        run_card(cfg, mem.copy(), addrs)
    except SimError:                 # a race the generator did not avoid: not a valid program
        assume(False)
    assert_same(cfg, mem, addrs)


def test_reports_cycles_per_second():
    mem, programs = compiled_image(_kernels()["conv_3x3"](), SMALL)
    run_rtl(SMALL, mem, programs)
    assert LAST_RUN["cycles"] > 0 and LAST_RUN["cycles_per_second"] > 0
    print(f"RTL simulation: {LAST_RUN['cycles']} cycles in {LAST_RUN['seconds']:.2f} s = "
          f"{LAST_RUN['cycles_per_second']:.0f} cycles/s")


# ------------------------------------------------------------------------------------------------
# timing corner cases (cycles and counters only: some of these programs race on purpose)
# ------------------------------------------------------------------------------------------------

from tests.hw.timing_programs import CONV1, LOAD4, tie_prog  # noqa: E402


CORNERS = {
    "queue_full": (2, {0: f"{LOAD4} push_next=1\n{CONV1} pop_prev=1\n{CONV1}\n{CONV1}\n{CONV1}\n{LOAD4}\nEND"}),
    "port_shared": (4, {0: f"{LOAD4}\n{LOAD4}\nEND", 1: f"{LOAD4}\nEND"}),
    "equal_start_ties": (4, {0: tie_prog(0), 1: tie_prog(1)}),
    "back_tokens": (1, {0: f"{CONV1} push_next=1\nSTORE mv=0 dram_addr=0x8000 n0=2 n1=1 n2=1 pop_prev=1 push_prev=1\n"
                           f"{CONV1} pop_next=1\nSYNC\nEND"}),
}


@pytest.mark.parametrize("name", sorted(CORNERS))
def test_timing_corner_cases(name):
    from arch.asm import assemble
    depth, progs = CORNERS[name]
    cfg = dataclasses.replace(SMALL, queue_depth=depth)
    mem = np.zeros(MEM, dtype=np.uint8)
    addrs = {}
    for c, p in progs.items():
        code = encode_program(assemble(p))
        mem[0x1000 * c:0x1000 * c + len(code)] = np.frombuffer(code, dtype=np.uint8)
        addrs[c] = 0x1000 * c
    want = run_card(cfg, mem.copy(), addrs, check_hazards=False)
    got = run_rtl(cfg, mem.copy(), addrs)
    assert got.cycles == want.cycles
    for c, w in want.clusters.items():
        for f in FIELDS:
            assert getattr(got.clusters[c], f) == getattr(w, f), (c, f)


def test_vcd(tmp_path):
    mem, programs = compiled_image(_kernels()["fc"](), SMALL)
    path = tmp_path / "run.vcd"
    run_rtl(SMALL, mem, programs, vcd=str(path))
    assert path.stat().st_size > 0


# ------------------------------------------------------------------------------------------------
# BARRIER (rule 6): the k-th BARRIERs of the clusters of a mask end together at 1 + max(start)
# ------------------------------------------------------------------------------------------------

LONG = ("CONV mv_mask=1 nvv=1 in_w=10 cpitch=4 cin=1 kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 oh=1 ow={} write=0")

# name -> (clusters_per_card, queue_depth, programs)
BARRIERS = {
    # a waiting BARRIER frees its queue slot when it starts (rule 1): with a queue of 1, cluster 1's
    # LOAD behind its waiting BARRIER starts early and gets the port before cluster 0's second LOAD
    "dispatch_past_waiting_barrier": (2, 1, {
        0: f"{LONG.format(10)}\n{LONG.format(10)}\n{LOAD4} buf_addr=64\n{LOAD4} buf_addr=64\nBARRIER mask=0b11\nEND",
        1: f"BARRIER mask=0b11\nSYNC\n{LOAD4}\nEND"}),
    # tests/test_sim_timing.py::test_barrier_ends_together_one_cycle_after_the_last_arrival
    "two_clusters": (2, 4, {0: f"{LONG.format(10)}\nBARRIER mask=0b11\nSYNC\nEND",
                            1: "BARRIER mask=0b11\nSYNC\nEND"}),
    "both_at_once": (2, 4, {0: "BARRIER mask=0b11\nBARRIER mask=0b11\nEND",
                            1: "BARRIER mask=0b11\nSYNC\nBARRIER mask=0b11\nEND"}),
    "self_only": (2, 4, {0: f"BARRIER mask=0b1\n{LONG.format(3)}\nBARRIER mask=0b1\nEND"}),
    # tokens around the BARRIER: it waits for a LOAD and releases a STORE and the other cluster's LOAD
    "tokens": (2, 4, {0: f"{LOAD4} push_next=1\nBARRIER mask=0b11 pop_prev=1 push_next=1\n"
                         "STORE mv=0 dram_addr=0x8000 n0=2 n1=1 n2=1 pop_prev=1\nEND",
                      1: f"{LONG.format(7)}\nBARRIER mask=0b11 push_prev=1\n{LOAD4} pop_next=1\nEND"}),
    # the compute queue (depth 1) stays full while its head waits at the BARRIER
    "queue_full_behind_barrier": (2, 1, {0: f"BARRIER mask=0b11\n{CONV1}\n{CONV1}\n{LOAD4.replace('mv_mask=1', 'mv_mask=2')}\nEND",
                                         1: f"{LONG.format(6)}\n{LONG.format(6)}\nBARRIER mask=0b11\nEND"}),
    # four clusters: pairs meet, then all; each cluster's count includes its BARRIERs of every mask
    "pairs_then_all": (4, 4, {0: f"{LONG.format(4)}\nBARRIER mask=0b0011\nBARRIER mask=0b1111\nEND",
                              1: "BARRIER mask=0b0011\nBARRIER mask=0b1111\nEND",
                              2: f"BARRIER mask=0b1100\n{LONG.format(9)}\nBARRIER mask=0b1111\nEND",
                              3: f"{LONG.format(2)}\nBARRIER mask=0b1100\nBARRIER mask=0b1111\nEND"}),
    "counted": (4, 4, {0: "BARRIER mask=0b0001\nBARRIER mask=0b0101\nEND",
                       1: f"{LONG.format(5)}\nBARRIER mask=0b0010\nEND",
                       2: f"{LONG.format(3)}\nBARRIER mask=0b0100\nBARRIER mask=0b0101\nEND"}),
}

# programs on which the model reports a deadlock (the RTL: its watchdog, or the decoder)
BARRIER_DEADLOCKS = {
    # cluster 0's second BARRIER (k = 1) never meets cluster 1's first (k = 0)
    "count_mismatch": {0: "BARRIER mask=0b001\nBARRIER mask=0b011\nEND", 1: "BARRIER mask=0b011\nEND"},
    # clusters 1 and 2 meet at mask 0b110; cluster 0 waits for cluster 1 at mask 0b011 forever
    "mask_mismatch": {0: "BARRIER mask=0b011\nEND", 1: "BARRIER mask=0b110\nEND", 2: "BARRIER mask=0b110\nEND"},
    "partner_without_program": {0: f"{LOAD4}\nBARRIER mask=0b11\nEND"},
}


def _image(progs):
    from arch.asm import assemble
    mem = np.zeros(MEM, dtype=np.uint8)
    mem[DATA:OUT] = np.random.default_rng(5).integers(0, 256, OUT - DATA, dtype=np.uint8)
    addrs = {}
    for c, p in progs.items():
        code = encode_program(assemble(p))
        mem[0x1000 * c:0x1000 * c + len(code)] = np.frombuffer(code, dtype=np.uint8)
        addrs[c] = 0x1000 * c
    return mem, addrs


@pytest.mark.parametrize("name", sorted(BARRIERS))
def test_barrier(name):
    clusters, depth, progs = BARRIERS[name]
    cfg = dataclasses.replace(SMALL, queue_depth=depth, clusters_per_card=clusters)
    mem, addrs = _image(progs)
    want = assert_same(cfg, mem, addrs)
    if name == "two_clusters":      # the numbers of tests/test_sim_timing.py
        assert want.cycles == SMALL.conv_pipeline + 10 + 3


@pytest.mark.parametrize("name", sorted(BARRIER_DEADLOCKS))
def test_barrier_deadlock(name):
    progs = BARRIER_DEADLOCKS[name]
    cfg = dataclasses.replace(SMALL, clusters_per_card=4) if max(progs) >= 2 else SMALL
    mem, addrs = _image(progs)
    with pytest.raises(SimError, match="deadlock"):
        run_card(cfg, mem.copy(), addrs)
    with pytest.raises(SimError, match="deadlock"):
        run_rtl(cfg, mem.copy(), addrs)


def test_barrier_mask_without_itself():
    mem, addrs = _image({0: "BARRIER mask=0b10\nEND", 1: "BARRIER mask=0b10\nEND"})
    with pytest.raises(SimError, match="does not include cluster 0"):
        run_card(SMALL, mem.copy(), addrs)
    with pytest.raises(SimError, match="does not include cluster 0"):
        run_rtl(SMALL, mem.copy(), addrs)
