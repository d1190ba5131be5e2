"""The functional model's path for diagonal (depthwise and channel-wise) CONVs gives the bits of the
GEMM it replaces: accumulators, outputs and saturation counts, whatever the weights a later run
brings (a weight off the band found first, a band moved, a kernel written without a LOAD), and a
whole network with depthwise layers, residuals, saturating layers and concatenations gives the
same memory image and statistics cold and replayed. (Its speed is measured in bench/, not here.)"""
import numpy as np
import pytest

import sim.card as card
import sim.units as units
from arch.isa import Act, Buf, Init, Instr
from arch.machine import REFERENCE
from sim import run_card

CFG = REFERENCE
L = CFG.lanes


@pytest.fixture(autouse=True)
def every_size_on_the_diagonal_path(monkeypatch):
    """Small CONVs too (by default they run as GEMMs: the test would cost more than it saves)."""
    monkeypatch.setattr(units, "_BAND_MIN", 0)


def _kernel_load(m: int, buf_addr: int, words: int, nvv: int, dram_word: int) -> Instr:
    return Instr("LOAD", buf=Buf.KERNEL, mv_mask=1 << m, nvv=nvv, dram_addr=dram_word * CFG.beat_bytes,
                 buf_addr=buf_addr, n0=words, n1=1, s1=0, n2=1, s2=0)


def _maps_load(mask: int, words: int, dram_word: int) -> Instr:
    return Instr("LOAD", buf=Buf.MAPS, mv_mask=mask, dram_addr=dram_word * CFG.beat_bytes, buf_addr=0,
                 n0=words, n1=1, s1=0, n2=1, s2=0)


def _diagonal(rng, taps: int, cin: int, nvv: int, c0: int, c1: int, d: int, big: bool) -> np.ndarray:
    """(taps*cin, nvv, lanes) int16 kernel words: weight of input channel c in output column c + d
    for c0 <= c < c1, zero elsewhere."""
    W = np.zeros((taps, cin, nvv * L), dtype=np.int16)
    c = np.arange(c0, c1)
    lim = 1 << 15 if big else 64
    W[:, c, c + d] = rng.integers(-lim, lim, (taps, c1 - c0))
    return W.reshape(taps * cin, nvv, L)


def _units_with(rng, mvs, kernels, maps_same: bool, maps_words: int, bias: bool):
    """A ClusterUnits loaded as a program would (LOADs from a memory image): maps (broadcast or
    per MV), each MV's kernel words at 0 and, with ``bias``, bias words after them."""
    mem = np.zeros((1 << 14, L), dtype=np.int16)
    u = units.ClusterUnits(CFG)
    base = 0
    maps = rng.integers(-(1 << 15), 1 << 15, (len(mvs), maps_words, L)).astype(np.int16)
    if maps_same:
        mem[base:base + maps_words] = maps[0]
        u.load(_maps_load(sum(1 << m for m in mvs), maps_words, base), mem, base)
        base += maps_words
    else:
        for j, m in enumerate(mvs):
            mem[base:base + maps_words] = maps[j]
            u.load(_maps_load(1 << m, maps_words, base), mem, base)
            base += maps_words
    for m, W in zip(mvs, kernels):
        K, nvv = W.shape[:2]
        words = W.reshape(-1, L)
        if bias:
            b = rng.integers(-(1 << 20), 1 << 20, (nvv, L)).astype(np.int64)
            words = np.concatenate([words, (b & 0xFFFF).astype(np.uint16).view(np.int16),
                                    (b >> 16).astype(np.int16)])
        mem[base:base + len(words)] = words
        u.load(_kernel_load(m, 0, len(words), nvv, base), mem, base)
        base += len(words)
    return u


def _conv(kh, kw, cin, nvv, mvs, oh, ow, **f) -> Instr:
    fields = dict(mv_mask=sum(1 << m for m in mvs), nvv=nvv, maps_addr=0, in_w=ow + kw - 1, cpitch=cin,
                  cin=cin, kh=kh, kw=kw, sy=1, sx=1, dy=1, dx=1, oh=oh, ow=ow, kern_addr=0,
                  bias_addr=kh * kw * cin, acc_addr=0, out_addr=0, out_pitch=nvv, init=Init.ZERO, write=1,
                  shift=8, act=Act.NONE)
    fields.update(f)
    return Instr("CONV", **fields)


def _state(u: units.ClusterUnits):
    return u.acc.copy(), u.out.copy(), u.saturations


def _run_both(build, instrs, monkeypatch):
    """The state after ``instrs`` on fresh units from ``build()``: through the default paths and with
    every CONV as a GEMM."""
    got = build()
    for i in instrs:
        got.conv(i)
    monkeypatch.setattr(units, "_FORCE_GEMM", True)
    want = build()
    for i in instrs:
        want.conv(Instr(i.op, **i.f))
    monkeypatch.setattr(units, "_FORCE_GEMM", False)
    return got, want


CASES = [  # kh, kw, cin, nvv, mvs, per-MV (c0, c1, d), maps shared
    (5, 5, 32, 4, (0, 1, 2, 3), [(0, 32, 0), (0, 32, 32), (0, 32, 0), (0, 32, 32)], False),
    (3, 3, 64, 4, (0, 1, 2), [(0, 64, 0)] * 3, True),
    (3, 3, 24, 2, (1, 3), [(0, 24, 0), (0, 24, 8)], False),
    (1, 1, 48, 3, (0, 1, 2, 3), [(0, 40, 0), (0, 40, 3), (0, 0, 0), (0, 40, 8)], True),   # an all-zero MV
    (3, 3, 16, 4, (0,), [(4, 12, 40)], False),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("mode", ["zero", "bias+saturate", "acc", "residual"])
def test_diagonal_conv_equals_the_gemm(case, mode, monkeypatch):
    kh, kw, cin, nvv, mvs, bands, same = CASES[case]
    oh, ow = 3, 5
    maps_words = -(-((oh + kh - 1) * (ow + kw - 1) * cin) // L)
    seed = case * 7 + len(mode)

    def build():
        rng = np.random.default_rng(seed)
        kernels = [_diagonal(rng, kh * kw, cin, nvv, c0, c1, d, big=mode == "bias+saturate")
                   for c0, c1, d in bands]
        u = _units_with(rng, mvs, kernels, same, maps_words, bias=mode in ("bias+saturate", "acc"))
        u.res[:] = rng.integers(-(1 << 15), 1 << 15, u.res.shape)
        return u
    if mode == "zero":
        instrs = [_conv(kh, kw, cin, nvv, mvs, oh, ow)]
    elif mode == "bias+saturate":
        instrs = [_conv(kh, kw, cin, nvv, mvs, oh, ow, init=Init.BIAS, shift=0, act=Act.RELU)]
    elif mode == "acc":
        instrs = [_conv(kh, kw, cin, nvv, mvs, oh, ow, init=Init.BIAS, write=0),
                  _conv(kh, kw, cin, nvv, mvs, oh, ow, init=Init.ACC, shift=2, act=Act.SILU, act_a=8)]
    else:
        instrs = [_conv(kh, kw, cin, nvv, mvs, oh, ow, resid=1, rshift=3, shift=4),
                  _conv(kh, kw, cin, nvv, mvs, oh, ow, resid=2, rshift=9, act=Act.HARDSWISH, act_a=8,
                        out_addr=64, acc_addr=32)]
    got, want = _run_both(build, instrs, monkeypatch)
    assert instrs[0].__dict__["_sim_band"][1] is not None      # the diagonal path was taken
    for a, b in zip(_state(got), _state(want)):
        np.testing.assert_array_equal(a, b)
    if mode == "bias+saturate":
        assert got.saturations > 0


@pytest.mark.parametrize("change", ["off-band weight", "band moved", "dense", "set without a LOAD"])
def test_later_weights_off_the_band_found_first_go_through_the_gemm(change, monkeypatch):
    """The band is found on the first CONV and kept on its instruction; the same instruction on
    other weights gives the GEMM's bits."""
    kh, kw, cin, nvv, mvs = 3, 3, 32, 2, (0, 1)
    i = _conv(kh, kw, cin, nvv, mvs, 4, 4)
    maps_words = -(-(6 * 6 * cin) // L)

    def build(first: bool):
        rng = np.random.default_rng(3)
        kernels = [_diagonal(rng, kh * kw, cin, nvv, 0, 32, 0, False) for _ in mvs]
        if not first:
            W = kernels[1]
            if change == "off-band weight":
                W[4 * cin + 5, 1, 2] = 7          # tap 4, channel 5, column 18
            elif change == "band moved":
                kernels[1] = _diagonal(rng, kh * kw, cin, nvv, 0, 32, 0, False)[:, ::-1].copy()
            elif change == "dense":
                W[...] = rng.integers(-99, 99, W.shape)
        u = _units_with(rng, mvs, kernels, False, maps_words, bias=False)
        if not first and change == "set without a LOAD":
            u.kern[1, 3 * cin + 1, 0, 9] = 5       # a test writing the buffer directly: tag 0
            u.kern_tag[3 * cin + 1, 1] = 0
        return u
    first = build(True)
    first.conv(i)
    assert i.__dict__["_sim_band"][1] is not None
    got = build(False)
    got.conv(i)                                   # the band kept on i does not hold
    monkeypatch.setattr(units, "_FORCE_GEMM", True)
    want = build(False)
    want.conv(Instr(i.op, **i.f))
    for a, b in zip(_state(got), _state(want)):
        np.testing.assert_array_equal(a, b)


def test_lane_nonzero_counts():
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, (50, 3, 1, 16)).astype(np.int16)
    np.testing.assert_array_equal(units._lane_nonzeros(x), np.count_nonzero(x, axis=-1))
    y = rng.integers(-2, 3, (7, 5, 12)).astype(np.int16)          # lanes not a multiple of 8
    np.testing.assert_array_equal(units._lane_nonzeros(y), np.count_nonzero(y, axis=-1))


@pytest.fixture(scope="module")
def mobilenet():
    """MobileNetV3-small (depthwise layers, squeeze-excitation gates, residual adds, HardSwish,
    concatenations of the classifier's pieces) at a small input, compiled."""
    import zoo
    from bench.bench_speed import compile_phases
    compiled, _ = compile_phases(zoo.build("mobilenet_v3_small", input_shape=(1, 3, 64, 64)), CFG)
    return compiled


def test_network_with_depthwise_layers_runs_the_same_on_the_gemm(mobilenet, monkeypatch):
    """Cold and replayed runs through the default paths against every CONV as a GEMM, on images
    whose Q8.8 numerics saturate (so saturation counts per instruction are compared too)."""
    from arch.numerics import float_to_fixed
    from bench.bench_speed import dla_stages
    saturated, split = False, units._SPLIT_MACS
    for s in dla_stages(mobilenet):
        mem0, progs = s.memory_image(), s.program_addresses()
        rng = np.random.default_rng(0)
        for x in s.inputs:                        # inputs 40x the seeded ones: layers saturate
            lay = s.memmap.tensors[x.tensor]
            q, _ = float_to_fixed(40 * rng.standard_normal((lay.channels, lay.height, lay.width)), lay.frac)
            lay.write(mem0, s.memmap.tensor_addr(x.tensor), s.cfg.lanes, q)
        monkeypatch.setattr(units, "_FORCE_GEMM", True)
        card.clear_program_cache()
        ref_mem = mem0.copy()
        ref = run_card(s.cfg, ref_mem, progs, trace=True)
        monkeypatch.setattr(units, "_FORCE_GEMM", False)
        card.clear_program_cache()
        for run, threads in (("cold", 1), ("replayed", 1), ("replayed, split by rows over 3 threads", 3)):
            if threads > 1:                       # numpy's engine: every CONV split by output rows
                monkeypatch.setattr(units, "_SPLIT_MACS", 0)
                monkeypatch.setenv("MDLA_SIM_GEMM", "numpy")
            mem = mem0.copy()
            st = run_card(s.cfg, mem, progs, trace=True, threads=threads)
            assert np.array_equal(mem, ref_mem), run
            assert st == ref, run
        monkeypatch.setattr(units, "_SPLIT_MACS", split)
        monkeypatch.delenv("MDLA_SIM_GEMM")
        saturated |= any(c.saturations_by_pc for c in ref.clusters.values())
    assert saturated
