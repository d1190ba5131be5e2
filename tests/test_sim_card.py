"""Functional model (sim/): data semantics of hand-written programs against direct numpy
computations written from the format docstrings of arch/isa.py, and rejection of bad input.

The numpy references here are deliberately written differently from the model (explicit loops
over kernel positions on (H, W, C) arrays, requantisation from its textual definition), so a
mistake in the model's im2col/GEMM formulation cannot hide in a shared helper.
"""
from __future__ import annotations

import numpy as np
import pytest

from arch.asm import assemble
from arch.isa import Buf, Instr, encode, encode_program
from arch.machine import REFERENCE, SMALL, MachineConfig
from sim import SimError, run_card
from sim.units import ClusterUnits

CONFIGS = [SMALL, REFERENCE]


PROG = 0x0            # program address in the tests' memory images
MAPS = 0x4000         # input feature map
KERN = 0x10000        # weights and biases
OUT = 0x30000         # results
MEM_BYTES = 0x40000


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def put16(mem: np.ndarray, addr: int, values) -> None:
    b = np.ascontiguousarray(np.asarray(values, dtype="<i2").ravel()).view(np.uint8)
    mem[addr:addr + b.size] = b


def get16(mem: np.ndarray, addr: int, n: int) -> np.ndarray:
    return mem[addr:addr + 2 * n].view("<i2").astype(np.int64)


def image(program, size: int = MEM_BYTES) -> np.ndarray:
    mem = np.zeros(size, dtype=np.uint8)
    code = encode_program(assemble(program) if isinstance(program, str) else program)
    mem[PROG:PROG + len(code)] = np.frombuffer(code, dtype=np.uint8)
    return mem


def ref_requant(acc: np.ndarray, shift: int, relu: bool) -> tuple[np.ndarray, int]:
    """Output stage from its definition: floor((acc + 2**(shift-1)) / 2**shift), clip to int16, ReLU."""
    acc = acc.astype(object)
    q = np.array([(int(a) + (1 << (shift - 1) if shift else 0)) // (1 << shift) for a in acc.ravel()],
                 dtype=object).reshape(acc.shape)
    # below the range ReLU gives 0 either way: no saturation (arch.numerics.saturation_counts)
    sat = int(sum(1 for v in q.ravel() if v > 32767 or (v < -32768 and not relu)))
    q = np.clip(q.astype(np.int64), -32768, 32767)
    return (np.maximum(q, 0) if relu else q), sat


def ref_conv(x: np.ndarray, w: np.ndarray, sy: int, sx: int, dy: int, dx: int, oh: int, ow: int) -> np.ndarray:
    """x: (H, W, C) int, w: (Cout, C, kh, kw) int -> (oh, ow, Cout) exact integer sums."""
    cout, c, kh, kw = w.shape
    out = np.zeros((oh, ow, cout), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            patch = x[ky * dy: ky * dy + (oh - 1) * sy + 1: sy, kx * dx: kx * dx + (ow - 1) * sx + 1: sx, :c]
            out += patch.astype(np.int64) @ w[:, :, ky, kx].T.astype(np.int64)
    return out


def kernel_words(w: np.ndarray, nvv: int, lanes: int) -> np.ndarray:
    """Weights (Cout = nvv*lanes, Cin, kh, kw) as kernel words [k][vv][lane], k = (ky*kw+kx)*cin+ci."""
    cout, cin, kh, kw = w.shape
    assert cout == nvv * lanes
    return w.transpose(2, 3, 1, 0).reshape(kh * kw * cin, nvv, lanes)


def bias_words(b: np.ndarray, nvv: int, lanes: int) -> np.ndarray:
    """32-bit biases as the two kernel words (low, high) of each VV, dealt as [2][vv][lane]."""
    b = b.astype(np.int64)
    lo = (b & 0xFFFF).astype(np.uint16).view(np.int16)
    hi = ((b >> 16) & 0xFFFF).astype(np.uint16).view(np.int16)
    return np.stack([lo, hi]).reshape(2, nvv, lanes)


# ------------------------------------------------------------------------------------------------
# CONV
# ------------------------------------------------------------------------------------------------

CONV_CASES = {
    # name: (H, W, cin, cpitch, kh, kw, sy, sx, dy, dx)
    "3x3": (5, 6, 3, 3, 3, 3, 1, 1, 1, 1),
    "stride2": (7, 7, 4, 4, 3, 3, 2, 2, 1, 1),
    "dilation": (7, 6, 2, 2, 3, 2, 1, 1, 2, 3),
    "cin<cpitch": (4, 5, 3, 8, 2, 2, 1, 2, 1, 1),
    "1x1": (3, 4, 8, 8, 1, 1, 1, 1, 1, 1),
}


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_bias_relu_against_numpy(cfg: MachineConfig, case: str):
    H, W, cin, cpitch, kh, kw, sy, sx, dy, dx = CONV_CASES[case]
    L, nvv = cfg.lanes, cfg.vv_per_mv
    oh, ow = (H - (kh - 1) * dy - 1) // sy + 1, (W - (kw - 1) * dx - 1) // sx + 1
    assert oh * ow <= cfg.acc_entries
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.integers(-300, 300, size=(H, W, cpitch))
    w = rng.integers(-300, 300, size=(nvv * L, cin, kh, kw))
    b = rng.integers(-2**20, 2**20, size=nvv * L)
    K = kh * kw * cin
    maps_words = -(-H * W * cpitch // L)
    shift = 6
    mem = image(f"""
        LOAD buf=MAPS mv_mask=1 dram_addr={MAPS} buf_addr=0 n0={maps_words} n1=1 n2=1
        LOAD buf=KERNEL mv_mask=1 nvv={nvv} dram_addr={KERN} buf_addr=0 n0={(K + 2) * nvv} n1=1 n2=1 push_next=1
        CONV mv_mask=1 nvv={nvv} maps_addr=0 in_w={W} cpitch={cpitch} cin={cin} kh={kh} kw={kw} sy={sy} sx={sx} dy={dy} dx={dx} oh={oh} ow={ow} kern_addr=0 bias_addr={K} acc_addr=0 out_addr=0 out_pitch={nvv} init=BIAS write=1 shift={shift} act=RELU pop_prev=1 push_next=1
        STORE mv=0 dram_addr={OUT} buf_addr=0 n0={oh * ow * nvv} n1=1 n2=1 pop_prev=1
        END""")
    put16(mem, MAPS, x)
    put16(mem, KERN, np.concatenate([kernel_words(w, nvv, L), bias_words(b, nvv, L)]))
    stats = run_card(cfg, mem, {0: PROG})
    acc = ref_conv(x, w, sy, sx, dy, dx, oh, ow) + b
    want, sat = ref_requant(acc, shift, relu=True)
    got = get16(mem, OUT, oh * ow * nvv * L).reshape(oh, ow, nvv * L)
    np.testing.assert_array_equal(got, want)
    st = stats.clusters[0]
    assert st.saturations == sat
    assert st.macs == oh * ow * K * nvv * L
    assert st.mac_slots == oh * ow * K * cfg.macs_per_cluster
    assert st.bytes_stored == oh * ow * nvv * L * 2


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_conv_split_reduction_and_out_pitch(cfg: MachineConfig):
    """Input channels split over two CONVs (BIAS then ACC), written only by the second, with a
    partial nvv and an output pitch larger than nvv."""
    L = cfg.lanes
    nvv = max(1, cfg.vv_per_mv - 1)
    H, W, C, c1, kh, kw = 4, 5, 7, 3, 3, 2
    oh, ow = H - kh + 1, W - kw + 1
    P = oh * ow
    pitch = nvv + 2
    rng = np.random.default_rng(7)
    x = rng.integers(-2000, 2000, size=(H, W, C + 1))      # cpitch C+1: one unused channel
    w = rng.integers(-2000, 2000, size=(nvv * L, C, kh, kw))
    b = rng.integers(-2**24, 2**24, size=nvv * L)
    k1, k2 = kh * kw * c1, kh * kw * (C - c1)
    kw1 = kernel_words(w[:, :c1], nvv, L)
    kw2 = kernel_words(w[:, c1:], nvv, L)
    kblock = np.concatenate([kw1, kw2, bias_words(b, nvv, L)])
    maps_words = -(-x.size // L)
    shift = 12
    mem = image(f"""
        LOAD buf=MAPS mv_mask=1 dram_addr={MAPS} n0={maps_words} n1=1 n2=1
        LOAD buf=KERNEL mv_mask=1 nvv={nvv} dram_addr={KERN} buf_addr=5 n0={kblock.shape[0] * nvv} n1=1 n2=1 push_next=1
        CONV pop_prev=1 mv_mask=1 nvv={nvv} maps_addr=0 in_w={W} cpitch={C + 1} cin={c1} kh={kh} kw={kw} sy=1 sx=1 dy=1 dx=1 oh={oh} ow={ow} kern_addr=5 bias_addr={5 + k1 + k2} acc_addr=3 init=BIAS write=0
        CONV mv_mask=1 nvv={nvv} maps_addr={c1} in_w={W} cpitch={C + 1} cin={C - c1} kh={kh} kw={kw} sy=1 sx=1 dy=1 dx=1 oh={oh} ow={ow} kern_addr={5 + k1} acc_addr=3 out_addr=2 out_pitch={pitch} init=ACC write=1 shift={shift} act=NONE push_next=1
        STORE pop_prev=1 mv=0 dram_addr={OUT} buf_addr=2 n0={P * pitch} n1=1 n2=1
        END""")
    put16(mem, MAPS, x)
    put16(mem, KERN, kblock)
    stats = run_card(cfg, mem, {0: PROG})
    want, sat = ref_requant(ref_conv(x, w, 1, 1, 1, 1, oh, ow) + b, shift, relu=False)
    got = get16(mem, OUT, P * pitch * L).reshape(oh, ow, pitch, L)[:, :, :nvv].reshape(oh, ow, nvv * L)
    np.testing.assert_array_equal(got, want)
    assert stats.clusters[0].saturations == sat


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("mode", ["shared_maps", "shared_kernel", "distinct", "sparse_mask"])
def test_conv_multiple_mv(cfg: MachineConfig, mode: str):
    """Several MVs in lockstep: the same maps and per-MV weights (output-channel split), per-MV
    maps and the same weights (mvbatch), or both distinct; each MV must use its own buffers."""
    L, nvv, M = cfg.lanes, cfg.vv_per_mv, cfg.mv_per_cluster
    mvs = [0, M - 1] if mode == "sparse_mask" else list(range(M))
    mask = sum(1 << m for m in mvs)
    H, W, C, k = 4, 4, 5, 3
    oh, ow = H - k + 1, W - k + 1
    P, K = oh * ow, k * k * C
    rng = np.random.default_rng(11)
    xs = {m: rng.integers(-500, 500, size=(H, W, C)) for m in mvs}
    ws = {m: rng.integers(-500, 500, size=(nvv * L, C, k, k)) for m in mvs}
    if mode == "shared_maps":
        xs = {m: xs[mvs[0]] for m in mvs}
    if mode == "shared_kernel":
        ws = {m: ws[mvs[0]] for m in mvs}
    mw = -(-H * W * C // L)
    lines = []
    for j, m in enumerate(mvs):
        lines.append(f"LOAD buf=MAPS mv_mask={1 << m} dram_addr={MAPS + j * 0x1000} n0={mw} n1=1 n2=1")
        lines.append(f"LOAD buf=KERNEL mv_mask={1 << m} nvv={nvv} dram_addr={KERN + j * 0x4000} n0={K * nvv} n1=1 n2=1"
                     + (" push_next=1" if j == len(mvs) - 1 else ""))
    lines.append(f"CONV pop_prev=1 push_next=1 mv_mask={mask} nvv={nvv} in_w={W} cpitch={C} cin={C} kh={k} kw={k} sy=1 sx=1 "
                 f"dy=1 dx=1 oh={oh} ow={ow} out_pitch={nvv} init=ZERO write=1 shift=4")
    for j, m in enumerate(mvs):
        lines.append(f"STORE mv={m} dram_addr={OUT + j * 0x1000} n0={P * nvv} n1=1 n2=1"
                     + (" pop_prev=1" if j == 0 else ""))
    lines.append("END")
    mem = image("\n".join(lines))
    for j, m in enumerate(mvs):
        put16(mem, MAPS + j * 0x1000, xs[m])
        put16(mem, KERN + j * 0x4000, kernel_words(ws[m], nvv, L))
    stats = run_card(cfg, mem, {0: PROG})
    total_sat = 0
    for j, m in enumerate(mvs):
        want, sat = ref_requant(ref_conv(xs[m], ws[m], 1, 1, 1, 1, oh, ow), 4, relu=False)
        total_sat += sat
        got = get16(mem, OUT + j * 0x1000, P * nvv * L).reshape(oh, ow, nvv * L)
        np.testing.assert_array_equal(got, want, err_msg=f"MV {m}")
    assert stats.clusters[0].saturations == total_sat
    assert stats.clusters[0].macs == P * K * nvv * L * len(mvs)


def test_saturation_counting():
    cfg = SMALL
    L, nvv = cfg.lanes, 1
    # 1x1 conv, one input channel: out = x * w; with shift 0 these clip to int16
    x = np.array([30000, -30000, 100, -100, 2, 3, 32767, -32768], dtype=np.int64)   # 8 pixels
    w = np.array([2, -2, 1, 1], dtype=np.int64)                                        # 4 output channels
    mem = image(f"""
        LOAD buf=MAPS mv_mask=1 dram_addr={MAPS} n0=2 n1=1 n2=1
        LOAD buf=KERNEL mv_mask=1 nvv=1 dram_addr={KERN} n0=1 n1=1 n2=1 push_next=1
        CONV pop_prev=1 push_next=1 mv_mask=1 nvv=1 in_w=8 cpitch=1 cin=1 kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 oh=1 ow=8 out_pitch=1 init=ZERO write=1 shift=0 act=RELU
        STORE pop_prev=1 mv=0 dram_addr={OUT} n0=8 n1=1 n2=1
        END""")
    put16(mem, MAPS, x)
    put16(mem, KERN, w)
    st = run_card(cfg, mem, {0: PROG}).clusters[0]
    prod = x[:, None] * w[None, :]
    # below the range ReLU gives 0 either way, so only the clips above count (numerics.saturation_counts)
    assert st.saturations == int(np.count_nonzero(prod > 32767))
    assert st.saturations == 4
    np.testing.assert_array_equal(get16(mem, OUT, 8 * L).reshape(8, L), np.maximum(np.clip(prod, -32768, 32767), 0))


def test_accumulator_wraps_at_acc_bits():
    """init=ACC sums wrap at acc_bits (two's complement) rather than saturate; the output stage
    then saturates the wrapped value (reaching 2**47 through CONVs would take ~2**17 instructions,
    so the accumulator is preset on the unit directly)."""
    cfg = SMALL
    units = ClusterUnits(cfg)
    units.acc[0, 0, 0, :] = (1 << (cfg.acc_bits - 1)) - 1
    units.kern[0, 0, 0, :] = 1
    units.maps[0, 0] = 1
    conv = Instr("CONV", mv_mask=1, nvv=1, in_w=1, cpitch=1, cin=1, kh=1, kw=1, sy=1, sx=1, dy=1, dx=1,
                 oh=1, ow=1, init=2, write=1, shift=0)
    units.conv(conv)
    assert (units.acc[0, 0, 0] == -(1 << (cfg.acc_bits - 1))).all()
    assert units.saturations == cfg.lanes            # -2**47 clips to -32768
    assert (units.out[0, 0] == -32768).all()


@pytest.mark.parametrize("mode", ["shared_maps", "shared_kernel", "distinct"])
def test_long_reductions_are_split_exactly(mode: str):
    """Reductions longer than the float64-exact length (2**23 terms, unreachable on the predefined
    machines) are summed in exact chunks: force chunking with a tiny limit and check every GEMM
    path against Python integers."""
    cfg = REFERENCE
    rng = np.random.default_rng(1)
    maps = rng.integers(-32768, 32768, size=(cfg.mv_per_cluster, 360))
    kern = rng.integers(-32768, 32768, size=(cfg.mv_per_cluster, 360, 2, cfg.lanes))
    if mode == "shared_maps":
        maps[1] = maps[0]
    elif mode == "shared_kernel":
        kern[1] = kern[0]
    i = Instr("CONV", mv_mask=0b11, nvv=2, in_w=3, cpitch=40, cin=40, kh=3, kw=3, sy=1, sx=1, dy=1, dx=1,
              oh=1, ow=1, out_pitch=2, write=1, shift=20, init=0)
    x, w = maps.astype(object), kern.astype(object)
    want = np.array([[[sum(x[m, k] * w[m, k, v, l] for k in range(360)) for l in range(cfg.lanes)]
                      for v in range(2)] for m in range(2)]).astype(np.int64)
    for k_exact in (None, 7):
        u = ClusterUnits(cfg)
        u.maps[:, :360] = maps
        u.kern[:, :360, :2] = kern
        if k_exact is not None:
            u.k_exact = k_exact
        u.conv(i)
        np.testing.assert_array_equal(u.acc[:2, 0, :2], want)


# ------------------------------------------------------------------------------------------------
# LOAD, STORE, MAXPOOL
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_maxpool_against_numpy(cfg: MachineConfig):
    L = cfg.lanes
    H, W, ppitch, nb, kh, kw, sy, sx = 7, 6, 3, 2, 3, 2, 2, 2
    oh, ow = (H - kh) // sy + 1, (W - kw) // sx + 1
    pitch = nb + 1
    rng = np.random.default_rng(3)
    x = rng.integers(-32768, 32768, size=(H, W, ppitch, L))
    mem = image(f"""
        LOAD buf=MAPS mv_mask=1 dram_addr={MAPS} buf_addr=4 n0={H * W * ppitch} n1=1 n2=1 push_next=1
        MAXPOOL pop_prev=1 push_next=1 mv_mask=1 maps_addr=4 in_w={W} ppitch={ppitch} nb={nb} kh={kh} kw={kw} sy={sy} sx={sx} oh={oh} ow={ow} out_addr=1 out_pitch={pitch}
        STORE pop_prev=1 mv=0 dram_addr={OUT} buf_addr=1 n0={oh * ow * pitch} n1=1 n2=1
        END""")
    put16(mem, MAPS, x)
    run_card(cfg, mem, {0: PROG})
    want = np.full((oh, ow, nb, L), -32769)
    for ky in range(kh):
        for kx in range(kw):
            want = np.maximum(want, x[ky:ky + (oh - 1) * sy + 1:sy, kx:kx + (ow - 1) * sx + 1:sx, :nb])
    got = get16(mem, OUT, oh * ow * pitch * L).reshape(oh, ow, pitch, L)[:, :, :nb]
    np.testing.assert_array_equal(got, want)


def ref_average(total: np.ndarray, mul: int, shift: int) -> tuple[np.ndarray, int]:
    q = (total.astype(object) * mul + ((1 << shift) >> 1)) // (1 << shift)
    sat = int(np.count_nonzero((q > 32767) | (q < -32768)))
    return np.clip(q, -32768, 32767).astype(np.int64), sat


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_avgpool_against_numpy(cfg: MachineConfig):
    L = cfg.lanes
    H, W, ppitch, nb, kh, kw, sy, sx = 6, 7, 2, 2, 3, 3, 2, 2
    oh, ow = (H - kh) // sy + 1, (W - kw) // sx + 1
    mul, shift = 7282, 16                             # ~ 2**16 / 9
    rng = np.random.default_rng(4)
    x = rng.integers(-32768, 32768, size=(H, W, ppitch, L))
    x[0, 0, 0] = 32767                                # a window of large values saturates with mul*9 > 2**16
    x[:3, :3, 0, 0] = 32767
    mem = image(f"""
        LOAD buf=MAPS mv_mask=1 dram_addr={MAPS} n0={H * W * ppitch} n1=1 n2=1 push_next=1
        AVGPOOL pop_prev=1 push_next=1 mv_mask=1 in_w={W} ppitch={ppitch} nb={nb} kh={kh} kw={kw} sy={sy} sx={sx} oh={oh} ow={ow} out_pitch={nb} mul={mul + 10} shift={shift}
        STORE pop_prev=1 mv=0 dram_addr={OUT} n0={oh * ow * nb} n1=1 n2=1
        END""")
    put16(mem, MAPS, x)
    st_ = run_card(cfg, mem, {0: PROG}).clusters[0]
    total = np.zeros((oh, ow, nb, L), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            total += x[ky:ky + (oh - 1) * sy + 1:sy, kx:kx + (ow - 1) * sx + 1:sx, :nb]
    want, sat = ref_average(total, mul + 10, shift)
    np.testing.assert_array_equal(get16(mem, OUT, oh * ow * nb * L).reshape(oh, ow, nb, L), want)
    assert st_.saturations == sat and sat >= 1


def _conv_residual_case(cfg: MachineConfig, rng):
    L, nvv = cfg.lanes, cfg.vv_per_mv
    x = rng.integers(-3000, 3000, size=(2, 3, 4))
    w = rng.integers(-3000, 3000, size=(nvv * L, 4, 2, 2))
    res = rng.integers(-32768, 32768, size=(2 * 2, nvv + 1, L))      # residual words at pitch nvv+1
    instr = dict(nvv=nvv, in_w=3, cpitch=4, cin=4, kh=2, kw=2, sy=1, sx=1, dy=1, dx=1, oh=1, ow=2,
                 out_pitch=nvv + 1, write=1, shift=9, act=1, resid=1, res_addr=3, rshift=5)
    acc = ref_conv(x, w, 1, 1, 1, 1, 1, 2).reshape(2, nvv, L)
    want, sat = ref_requant(acc + (res[:2, :nvv].astype(np.int64) << 5), 9, relu=True)
    return x, w, res, instr, want, sat


def test_conv_residual_on_the_unit():
    """resid=1: act(sat16(round_shift(acc + (res << rshift), shift))), the residual read at
    res_addr + p*out_pitch + v; the accumulator itself keeps the plain sum."""
    cfg = SMALL
    L = cfg.lanes
    x, w, res, f, want, sat = _conv_residual_case(cfg, np.random.default_rng(8))
    u = ClusterUnits(cfg)
    u.maps[0, :x.size] = x.ravel()
    u.kern[0, :16, :f["nvv"]] = kernel_words(w, f["nvv"], L)
    u.res[0, 3:3 + res.shape[0] * res.shape[1]] = res.reshape(-1, L)
    u.conv(Instr("CONV", mv_mask=1, **f))
    got = u.out[0, :2 * (f["nvv"] + 1)].reshape(2, f["nvv"] + 1, L)[:, :f["nvv"]]
    np.testing.assert_array_equal(got, want)
    assert u.saturations == sat
    np.testing.assert_array_equal(u.acc[0, :2, :f["nvv"]], ref_conv(x, w, 1, 1, 1, 1, 1, 2).reshape(2, f["nvv"], L))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_conv_residual_end_to_end(cfg: MachineConfig):
    L = cfg.lanes
    x, w, res, f, want, sat = _conv_residual_case(cfg, np.random.default_rng(9))
    nvv = f["nvv"]
    fields = " ".join(f"{k}={v}" for k, v in f.items())
    mem = image(f"""
        LOAD buf=MAPS mv_mask=1 dram_addr={MAPS} n0={-(-x.size // L)} n1=1 n2=1
        LOAD buf=RES mv_mask=1 dram_addr={MAPS + 0x1000} buf_addr=3 n0={res.size // L} n1=1 n2=1
        LOAD buf=KERNEL mv_mask=1 nvv={nvv} dram_addr={KERN} n0={16 * nvv} n1=1 n2=1 push_next=1
        CONV pop_prev=1 push_next=1 mv_mask=1 {fields}
        STORE pop_prev=1 mv=0 dram_addr={OUT} n0={2 * (nvv + 1)} n1=1 n2=1
        END""")
    put16(mem, MAPS, x)
    put16(mem, MAPS + 0x1000, res)
    put16(mem, KERN, kernel_words(w, nvv, L))
    st_ = run_card(cfg, mem, {0: PROG}).clusters[0]
    got = get16(mem, OUT, 2 * (nvv + 1) * L).reshape(2, nvv + 1, L)[:, :nvv]
    np.testing.assert_array_equal(got, want)
    assert st_.saturations == sat


def test_kernel_load_deals_words_to_vvs():
    cfg = REFERENCE
    L = cfg.lanes
    for nvv in (1, 3, 4):
        mem = np.zeros(0x8000, dtype=np.uint8)
        words = np.arange(12 * L, dtype=np.int64).reshape(12, L)
        put16(mem, 0x1000, words)
        u = ClusterUnits(cfg)
        u.load(Instr("LOAD", buf=Buf.KERNEL, mv_mask=0b0101, nvv=nvv, dram_addr=0x1000, buf_addr=7,
                     n0=12, n1=1, n2=1), mem.view("<i2").reshape(-1, L), 0x1000 // cfg.beat_bytes)
        for m in range(cfg.mv_per_cluster):
            for w in range(12):
                got = u.kern[m, 7 + w // nvv, w % nvv]
                if m in (0, 2):
                    np.testing.assert_array_equal(got, words[w])
                else:
                    assert not got.any()
        assert not u.kern[:, 7 + 12 // nvv:].any() and not u.kern[:, :7].any()


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_strided_load_and_store(cfg: MachineConfig):
    """A 3-level strided LOAD into two MVs and a strided STORE back, round trip through a 1x1
    identity conv: word w of a transfer goes to/from dram_addr + (i2*s2 + i1*s1 + i0) words."""
    L, bb = cfg.lanes, cfg.beat_bytes
    n0, n1, s1, n2, s2 = 2, 3, 5, 2, 17
    n = n0 * n1 * n2
    rng = np.random.default_rng(5)
    src = rng.integers(-32768, 32768, size=(64, L))
    idx = [(i2 * s2 + i1 * s1 + i0) for i2 in range(n2) for i1 in range(n1) for i0 in range(n0)]
    # identity kernel: cin = lanes, one VV, weight[ci][l] = 1 if ci == l
    eye = np.eye(L, dtype=np.int64)
    mem = image(f"""
        LOAD buf=MAPS mv_mask=3 dram_addr={MAPS} buf_addr=1 n0={n0} n1={n1} s1={s1} n2={n2} s2={s2}
        LOAD buf=KERNEL mv_mask=2 nvv=1 dram_addr={KERN} n0={L} n1=1 n2=1 push_next=1
        CONV pop_prev=1 push_next=1 mv_mask=2 nvv=1 maps_addr={L} in_w={n} cpitch={L} cin={L} kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 oh=1 ow={n} out_pitch=1 init=ZERO write=1 shift=0
        STORE pop_prev=1 mv=1 dram_addr={OUT} buf_addr=0 n0={n0} n1={n1} s1={s1} n2={n2} s2={s2}
        END""")
    put16(mem, MAPS, src)
    put16(mem, KERN, eye)
    run_card(cfg, mem, {0: PROG})
    out = get16(mem, OUT, 64 * L).reshape(64, L)
    want = np.zeros_like(out)
    want[idx] = src[idx]
    np.testing.assert_array_equal(out, want)
    assert bb == 2 * L


def test_overlapping_store_last_word_wins():
    """A STORE whose runs overlap in memory (s1 < n0) writes in transfer order."""
    cfg = SMALL
    L = cfg.lanes
    u = ClusterUnits(cfg)
    u.out[0, :6] = np.arange(6 * L).reshape(6, L)
    mem = np.zeros(0x1000, dtype=np.uint8)
    mw = mem.view("<i2").reshape(-1, L)
    u.store(Instr("STORE", mv=0, dram_addr=0, buf_addr=0, n0=3, n1=2, s1=1, n2=1), mw, 0)
    # run 0 writes words 0,1,2 <- out 0,1,2; run 1 writes words 1,2,3 <- out 3,4,5
    np.testing.assert_array_equal(mw[:4], u.out[0, [0, 3, 4, 5]])


def test_buffers_zeroed_each_run_and_memory_modified_in_place():
    cfg = SMALL
    mem = image(f"""
        CONV mv_mask=1 nvv=1 in_w=1 cpitch=1 cin=1 kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 oh=1 ow=1 out_pitch=1 init=BIAS bias_addr=0 write=1 push_next=1
        STORE pop_prev=1 mv=0 dram_addr={OUT} n0=1 n1=1 n2=1
        END""")
    put16(mem, OUT, [9, 9, 9, 9])
    for _ in range(2):
        run_card(cfg, mem, {0: PROG})
        assert not get16(mem, OUT, 4).any()


def test_two_clusters_run_their_own_programs():
    cfg = SMALL
    L = cfg.lanes
    progs = {}
    code = {}
    for c in range(2):
        code[c] = encode_program(assemble(f"""
            LOAD buf=MAPS mv_mask=1 dram_addr={MAPS + c * 0x100} n0=1 n1=1 n2=1
            LOAD buf=KERNEL mv_mask=1 nvv=1 dram_addr={KERN} n0={L} n1=1 n2=1 push_next=1
            CONV pop_prev=1 push_next=1 mv_mask=1 nvv=1 in_w=1 cpitch={L} cin={L} kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 oh=1 ow=1 out_pitch=1 write=1
            STORE pop_prev=1 mv=0 dram_addr={OUT + c * 0x100} n0=1 n1=1 n2=1
            END"""))
        progs[c] = 0x800 * c
    mem = np.zeros(MEM_BYTES, dtype=np.uint8)
    for c in range(2):
        mem[progs[c]:progs[c] + len(code[c])] = np.frombuffer(code[c], dtype=np.uint8)
        put16(mem, MAPS + c * 0x100, [c + 1, 10 * (c + 1), 0, 0])
    put16(mem, KERN, np.eye(L, dtype=np.int64))
    stats = run_card(cfg, mem, progs)
    np.testing.assert_array_equal(get16(mem, OUT, L), [1, 10, 0, 0])
    np.testing.assert_array_equal(get16(mem, OUT + 0x100, L), [2, 20, 0, 0])
    assert set(stats.clusters) == {0, 1}
    assert stats.cycles == max(s.cycles for s in stats.clusters.values())


def test_repeated_runs_reuse_the_decoded_program():
    import sim.card as card
    cfg = SMALL
    mem = image("SYNC\nEND")
    card.clear_program_cache()
    run_card(cfg, mem, {0: PROG})
    run_card(cfg, mem, {0: PROG})
    assert len(card._program_cache) == 1
    mem[PROG + 32:PROG + 64] = np.frombuffer(encode(Instr("SYNC")), dtype=np.uint8)
    mem[PROG + 64:PROG + 96] = np.frombuffer(encode(Instr("END")), dtype=np.uint8)
    assert run_card(cfg, mem, {0: PROG}).clusters[0].instructions == 3
    assert len(card._program_cache) == 2


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------

def test_illegal_opcode():
    mem = image("SYNC\nSYNC\nEND")
    mem[PROG + 32] = (mem[PROG + 32] & 0xF0) | 8       # opcode 8 does not exist
    with pytest.raises(SimError, match=r"cluster 0, pc 1 .*illegal opcode 8"):
        run_card(SMALL, mem, {0: PROG})


def test_reserved_bits_set():
    mem = image("SYNC\nEND")
    mem[PROG + 31] = 0x80
    with pytest.raises(SimError, match=r"cluster 0, pc 0 .*reserved bits"):
        run_card(SMALL, mem, {0: PROG})


def test_missing_end():
    code = encode_program(assemble("SYNC\nSYNC"))
    mem = np.zeros(len(code), dtype=np.uint8)
    mem[:] = np.frombuffer(code, dtype=np.uint8)
    with pytest.raises(SimError, match=r"cluster 0: .*no END"):
        run_card(SMALL, mem, {0: 0})
    big = np.zeros(4096, dtype=np.uint8)
    big[:len(code)] = np.frombuffer(code, dtype=np.uint8)
    big[len(code)] = 1                                # a LOAD with all-zero fields: invalid
    with pytest.raises(SimError):
        run_card(SMALL, big, {0: 0})


def test_access_beyond_memory_image():
    mem = image(f"LOAD buf=MAPS mv_mask=1 dram_addr={MEM_BYTES - 16} n0=4 n1=1 n2=1\nEND")
    with pytest.raises(SimError, match=r"cluster 0, pc 0 \(LOAD\).*0x3fff0\.\.0x4000f.*beyond the end"):
        run_card(SMALL, mem, {0: PROG})
    mem = image(f"STORE mv=0 dram_addr={MEM_BYTES - 64} n0=1 n1=2 s1=10 n2=1\nEND")
    before = mem.copy()
    with pytest.raises(SimError, match=r"pc 0 \(STORE\)"):
        run_card(SMALL, mem, {0: PROG})
    np.testing.assert_array_equal(mem, before)       # nothing ran


def test_field_invalid_for_config():
    prog = [Instr("CONV", mv_mask=1, nvv=3, in_w=1, cpitch=1, cin=1, kh=1, kw=1, sy=1, sx=1, dy=1, dx=1,
                  oh=1, ow=1), Instr("END")]
    mem = image(prog)
    with pytest.raises(SimError, match=r"cluster 0, pc 0 \(CONV\).*nvv 3 not in 1\.\.2"):
        run_card(SMALL, mem, {0: PROG})
    run_card(REFERENCE, mem, {0: PROG})              # fine with 4 VV units


def test_bad_cluster_and_program_address():
    mem = image("END")
    with pytest.raises(SimError, match=r"cluster 0: program address 0x4 is not 8-byte aligned"):
        run_card(SMALL, mem, {0: 4})
    with pytest.raises(SimError, match="cluster 2 does not exist"):
        run_card(SMALL, mem, {2: PROG})
    with pytest.raises(SimError, match="outside"):
        run_card(SMALL, mem, {0: MEM_BYTES})
    with pytest.raises(TypeError):
        run_card(SMALL, mem.view(np.int8), {0: PROG})


def test_no_programs():
    stats = run_card(SMALL, np.zeros(64, dtype=np.uint8), {})
    assert stats.cycles == 0 and stats.clusters == {}
