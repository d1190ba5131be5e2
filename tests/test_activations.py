"""Activations in the CONV output stage (LEAKY, CLIP, SIGMOID, TANH) and the fused Mul: numerics
against naive integer formulas and float, the ISA fields, compiled kernels bit-exact with the golden
reference on both configurations, the SDK path against onnxruntime within the budget, and bad input.

Budget (SDK metric against onnxruntime float32): mean <= 1 %, max <= 5 %."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import microndla
from arch import numerics as nx
from arch.isa import FORMATS, Act, ISAError, Instr, Resid, decode, encode, validate
from arch.machine import REFERENCE, SMALL
from compiler.frontend import load_model
from compiler.ir import CompileError
from compiler.quantize import quantize
from sim.golden import run_quantized
from tests.test_compiled_kernels import assert_bit_exact, run_both
from zoo import kernels
from zoo._util import IR_VERSION, OPSET, init, model, tensor

BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0
KINDS = list(kernels.ACTIVATION_KINDS) + [f"mul_{k}" for k in kernels.MUL_KINDS]


def build(kind: str, seed: int = 0) -> onnx.ModelProto:
    if kind.startswith("mul_"):
        return kernels.mul_model(kind[4:], seed=seed)
    return kernels.activation_model(kind, seed=seed)


# ------------------------------------------------------------------------------------------------
# numerics
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("act,f", [(nx.ACT_SIGMOID, lambda x: 1 / (1 + np.exp(-x))), (nx.ACT_TANH, np.tanh)])
def test_table_error_below_2_to_minus_11_for_every_input(act, f):
    x = np.arange(nx.DATA_MIN, nx.DATA_MAX + 1)
    y = nx.lut_eval(x, act)
    err = np.abs(y / 2.0 ** nx.LUT_OUT_FRAC - f(x / 2.0 ** nx.LUT_IN_FRAC))
    assert err.max() <= 2.0 ** -11 and err.max() == pytest.approx(nx.lut_max_error(act))
    assert np.all(np.diff(y) >= 0), "the approximation must be monotone"
    assert y.min() >= (0 if act == nx.ACT_SIGMOID else -32768) and y.max() <= nx.DATA_MAX
    base, delta = nx.lut_table(act)
    assert base.shape == delta.shape == (nx.LUT_SEGMENTS,) and delta.min() >= 0 and delta.max() < 1 << 12


def test_table_symmetry():
    x = np.arange(1, 20000)
    s, t = nx.lut_eval(x, nx.ACT_SIGMOID), nx.lut_eval(x, nx.ACT_TANH)
    assert np.array_equal(nx.lut_eval(-x, nx.ACT_SIGMOID), 32768 - s)
    ok = t < nx.DATA_MAX   # tanh saturates at 32767 on the positive side only
    assert np.array_equal(nx.lut_eval(-x, nx.ACT_TANH)[ok], -t[ok])
    assert nx.lut_eval(np.array([0]), nx.ACT_SIGMOID)[0] == 16384 and nx.lut_eval(np.array([0]), nx.ACT_TANH)[0] == 0


@pytest.mark.parametrize("alpha", [0.0, 1e-4, 0.01, 0.1, 0.2, 0.3333, 1.0])
def test_leaky_fields_approximate_alpha(alpha):
    mul, shift = nx.leaky_fields(alpha)
    assert 0 <= mul < 1 << 16 and 0 <= shift <= nx.LEAKY_MAX_SHIFT
    assert abs(mul / 2.0 ** shift - alpha) <= max(alpha * 2.0 ** -15, 2.0 ** -32)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_leaky_fields_reject_alpha_out_of_range(alpha):
    with pytest.raises(ValueError, match="outside"):
        nx.leaky_fields(alpha)


def test_clip_fields_reject_bad_bounds():
    assert nx.clip_fields(-5, 7) == (0xFFFB, 7)
    with pytest.raises(ValueError, match="exceeds"):
        nx.clip_fields(3, 2)
    with pytest.raises(ValueError, match="16 bits"):
        nx.clip_fields(0, 40000)


def _naive(acc, shift, act, a, b, r, rshift, mode):
    """Scalar Python-int model of the output stage, written from the ISA text: (y, saturated)."""
    def rsh(v, s):
        return v if s == 0 else (v + (1 << (s - 1))) >> s

    def sat(v):
        return max(-32768, min(32767, v))

    def table(v):      # the SIGMOID table at |v| (Q4.11) without the 32767 cap
        base, delta = nx.lut_table(nx.ACT_SIGMOID)
        m = min(abs(v), 16383)
        i, off = m >> 7, m & 127
        return int(base[i]) + ((int(delta[i]) * off + 64) >> 7)
    if mode == nx.RES_ADD:
        acc += r << rshift
    exact = rsh(acc, shift)
    y = sat(exact)
    # a clip that the activation absorbs is no saturation
    saturated = exact != y and not (
        act in (nx.ACT_SIGMOID, nx.ACT_TANH)
        or (exact < y and act == nx.ACT_RELU)
        or (act == nx.ACT_CLIP and exact < y and nx.s16(a) > -32768)
        or (act == nx.ACT_CLIP and exact > y and nx.s16(b) < 32767)
        or (exact < y and act == nx.ACT_HARDSWISH and 3 * 2 ** a <= 32768)
        or (exact < y and act in (nx.ACT_SILU, nx.ACT_MISH) and 8 * 2 ** a <= 32768))
    if act == nx.ACT_RELU:
        y = max(y, 0)
    elif act == nx.ACT_LEAKY and y < 0:
        y = sat(rsh(y * a, b))
    elif act == nx.ACT_CLIP:
        y = min(max(y, nx.s16(a)), nx.s16(b))
    elif act in (nx.ACT_SIGMOID, nx.ACT_TANH):
        y = rsh(int(nx.lut_eval(np.array([y]), act)[0]), a)
    elif act == nx.ACT_HARDSWISH:       # x * clip(x + 3, 0, 6) / 6, in the format with a fractional bits
        y = rsh(y * min(max(y + 3 * 2 ** a, 0), 6 * 2 ** a) * 43691, a + 18)
    elif act == nx.ACT_SILU:
        x11 = y * 2 ** (11 - a) if a <= 11 else rsh(y, a - 11)
        gate = (32768 if x11 > 0 else 0) if abs(x11) >= 16384 else (table(x11) if x11 >= 0 else 32768 - table(x11))
        y = rsh(y * gate, 15)
    elif act == nx.ACT_MISH:            # the gate tanh(softplus(x)) from its table over -8 <= x < 8
        mbase, mdelta = nx.mish_table()
        x11 = y * 2 ** (11 - a) if a <= 11 else rsh(y, a - 11)
        if abs(x11) >= 16384:
            gate = 32768 if x11 > 0 else 0
        else:
            u = x11 + 16384
            gate = int(mbase[u >> 7]) + ((int(mdelta[u >> 7]) * (u & 127) + 64) >> 7)
        y = rsh(y * gate, 15)
    if mode == nx.RES_MUL:
        p = rsh(y * r, rshift)
        saturated |= p != sat(p)
        y = sat(p)
    return y, saturated


@pytest.mark.parametrize("mode", [nx.RES_NONE, nx.RES_ADD, nx.RES_MUL])
@pytest.mark.parametrize("act", range(len(nx.ACT_NAMES)))
def test_requantize_matches_naive_formula(act, mode):
    rng = np.random.default_rng(act * 3 + mode)
    acc = rng.integers(-2 ** 30, 2 ** 30, 400)
    r = rng.integers(-32768, 32768, 400)
    a, b = {nx.ACT_LEAKY: nx.leaky_fields(0.1), nx.ACT_CLIP: nx.clip_fields(-3000, 9000),
            nx.ACT_SIGMOID: (3, 0), nx.ACT_TANH: (0, 0), nx.ACT_HARDSWISH: (9, 0), nx.ACT_SILU: (13, 0),
            nx.ACT_MISH: (12, 0)}.get(act, (0, 0))
    shift, rshift = 14, 15 if mode == nx.RES_MUL else 3
    y, sat = nx.requantize(acc, shift, act, None if mode == nx.RES_NONE else r, rshift, act_a=a, act_b=b,
                           mode=mode)
    want = [_naive(int(v), shift, act, a, b, int(w) if mode else 0, rshift, mode) for v, w in zip(acc, r)]
    assert y.dtype == np.int16 and y.tolist() == [w[0] for w in want]
    assert sat == sum(w[1] for w in want)
    if act in (nx.ACT_NONE, nx.ACT_LEAKY, nx.ACT_HARDSWISH, nx.ACT_SILU, nx.ACT_MISH):
        assert sat > 0    # the ranges drawn overflow 16 bits often


@pytest.mark.parametrize("frac", [0, 4, 8, 11, 12, 13, 15])
def test_hardswish_and_silu_error_bounds(frac):
    """HARDSWISH: within one LSB of its format; SILU: within the table's error times |x| < 8, the
    gate's step at |x| = 8 (8 * exp(-8)) and half an LSB, for every int16 input."""
    assert nx.act_max_error(nx.ACT_HARDSWISH, frac) < 2.0 ** -frac
    assert nx.act_max_error(nx.ACT_SILU, frac) <= 8 * nx.lut_max_error(nx.ACT_SIGMOID) + 8 * np.exp(-8) + 2.0 ** -(frac + 1)
    x = np.arange(nx.DATA_MIN, nx.DATA_MAX + 1)
    for act in (nx.ACT_HARDSWISH, nx.ACT_SILU):
        y = nx.activate(x, act, frac)
        assert y.min() >= nx.DATA_MIN and y.max() <= nx.DATA_MAX
        assert np.all(np.diff(y[x >= 0]) >= 0), "monotone on the positive side"
    assert nx.activate(np.array([0]), nx.ACT_SILU, frac)[0] == 0 == nx.activate(np.array([0]), nx.ACT_HARDSWISH, frac)[0]


@pytest.mark.parametrize("frac", [0, 4, 8, 11, 12, 13, 15])
def test_mish_error_bound(frac):
    """MISH: within 8 times its gate table's error (below 2**-13), the gate's step at x = -8
    (8 * tanh(softplus(-8)), 2.7e-3) and half an LSB, for every int16 input; monotone from its
    minimum (near x = -1.19) on, and 0 at 0."""
    gate_err = nx.mish_gate_max_error()
    assert gate_err < 2.0 ** -13
    bound = 8 * gate_err + 8 * np.tanh(np.logaddexp(0, -8.0)) + 2.0 ** -(frac + 1)
    assert nx.act_max_error(nx.ACT_MISH, frac) <= bound
    x = np.arange(nx.DATA_MIN, nx.DATA_MAX + 1)
    y = nx.activate(x, nx.ACT_MISH, frac)
    assert y.min() >= nx.DATA_MIN and y.max() <= nx.DATA_MAX
    assert np.all(np.diff(y[x >= 0]) >= 0) and nx.activate(np.array([0]), nx.ACT_MISH, frac)[0] == 0
    base, delta = nx.mish_table()
    assert base.max() < 1 << 16 and 0 <= delta.min() and delta.max() < 1 << 12      # the RTL ROM word's fields


def test_lut_output_shift_and_act_fields():
    x = np.arange(-20000, 20000, 37)
    for act in (nx.ACT_SIGMOID, nx.ACT_TANH):
        full = nx.lut_eval(x, act)
        assert np.array_equal(nx.activate(x, act, 7), (full + 64) >> 7)
        assert nx.act_fields(act, 8) == (7, 0) and nx.act_fields(act, 15) == (0, 0)
    assert nx.act_fields(nx.ACT_SILU, 9) == (9, 0)
    with pytest.raises(ValueError, match="SIGMOID cannot produce"):
        nx.act_fields(nx.ACT_SIGMOID, 16)
    with pytest.raises(ValueError, match="HARDSWISH cannot produce"):
        nx.act_fields(nx.ACT_HARDSWISH, -1)


def test_enums_are_the_numerics_codes():
    assert [a.name.lower() for a in Act] == list(nx.ACT_NAMES)
    assert (Resid.NONE, Resid.ADD, Resid.MUL) == (nx.RES_NONE, nx.RES_ADD, nx.RES_MUL)


# ------------------------------------------------------------------------------------------------
# ISA
# ------------------------------------------------------------------------------------------------

CONV = dict(mv_mask=1, nvv=1, in_w=4, cpitch=4, cin=4, kh=1, kw=1, sy=1, sx=1, dy=1, dx=1, oh=2, ow=2, write=1,
            out_pitch=1)


def test_conv_fields_roundtrip():
    i = Instr("CONV", **CONV, act=Act.CLIP, act_a=0xFFF0, act_b=0x7FFF, resid=Resid.MUL, res_addr=5, rshift=15)
    assert decode(encode(i)) == i
    validate(i, SMALL)


@pytest.mark.parametrize("fields,msg", [
    (dict(act=Act.CLIP, act_a=5, act_b=4), "CLIP lower bound 5 exceeds the upper bound 4"),
    (dict(act=Act.CLIP, act_a=0, act_b=0xFFFF), "CLIP lower bound 0 exceeds the upper bound -1"),
    (dict(act=Act.LEAKY, act_a=100, act_b=40), "LEAKY shift act_b 40 exceeds 31"),
    (dict(act=Act.SIGMOID, act_a=16), "act SIGMOID takes act_a in 0..15 and act_b 0"),
    (dict(act=Act.SILU, act_b=1), "act SILU takes act_a in 0..15 and act_b 0"),
    (dict(act=Act.RELU, act_a=1), "act_a and act_b must be 0 for act RELU"),
    (dict(act=9), "act 9 is not one of"),
    (dict(resid=3), "resid 3 is not NONE, ADD or MUL"),
])
def test_bad_activation_fields_are_refused(fields, msg):
    with pytest.raises(ISAError, match=msg):
        validate(Instr("CONV", **{**CONV, **fields}), SMALL)


@pytest.mark.parametrize("cfg", [REFERENCE, SMALL], ids=lambda c: c.name)
def test_narrowed_conv_address_fields_cover_the_buffers(cfg):
    bits = {f.name: f.bits for f in FORMATS["CONV"].fields}
    need = {"maps_addr": cfg.maps_words * cfg.lanes, "kern_addr": cfg.kernel_words, "bias_addr": cfg.kernel_words,
            "acc_addr": cfg.acc_entries, "out_addr": cfg.out_words, "res_addr": cfg.res_words,
            "oh": cfg.acc_entries + 1, "ow": cfg.acc_entries + 1}
    for name, n in need.items():
        assert (1 << bits[name]) >= n, name


# ------------------------------------------------------------------------------------------------
# compiled kernels: functional model == golden, both configurations
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [REFERENCE, SMALL], ids=lambda c: c.name)
@pytest.mark.parametrize("kind", KINDS)
def test_compiled_kernel_bit_exact(cfg, kind):
    dla, gold, c, _ = run_both(build(kind, seed=5), cfg)
    assert_bit_exact(dla, gold)
    program = [i for p in c.programs.values() for i in p]
    if kind.startswith("mul_"):
        assert any(i.op == "CONV" and i.resid == Resid.MUL for i in program)
    if kind == "mul_gate":   # the (C, 1, 1) gate is broadcast by a zero-stride residual load
        assert any(i.op == "LOAD" and i.buf == 2 and i.s1 == 0 and i.n1 > 1 for i in program)


def test_formats_follow_the_activation():
    g = quantize(load_model(kernels.activation_model("relu6")), REFERENCE)
    (conv,) = g.layers
    assert g.tensors[conv.output].frac == 12 and conv.act == "clip"
    assert (nx.s16(conv.act_a), nx.s16(conv.act_b)) == (0, 6 << 12)
    g = quantize(load_model(kernels.activation_model("sigmoid")), REFERENCE)
    (conv,) = g.layers
    in_frac = g.tensors[conv.input].frac
    assert g.tensors[conv.output].frac == nx.LUT_OUT_FRAC and in_frac + conv.w_frac - conv.shift == nx.LUT_IN_FRAC


# ------------------------------------------------------------------------------------------------
# SDK path against onnxruntime
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_sdk_run_matches_onnxruntime_and_golden(kind, tmp_path):
    m = build(kind, seed=1)
    path = str(tmp_path / f"{kind}.onnx")
    onnx.save(m, path)
    shape = tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": x})[0]
    ie = microndla.MDLA()
    ie.Compile(path)
    y = ie.Run(x)
    ie.Free()
    mean, mx = nx.sdk_error_metric(y, ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, f"{kind}: error {mean:.3f} % / {mx:.3f} % exceeds the budget"
    # the same bits as the golden reference on the same fixed-point input
    g = quantize(load_model(m), REFERENCE)
    q, _ = nx.float_to_fixed(x[0], g.tensors[g.inputs[0].tensor].frac)
    gold, _ = run_quantized(g, {"input": q})
    out = g.outputs[0].tensor
    assert np.array_equal(y.reshape(gold[out].shape), nx.fixed_to_float(gold[out], g.tensors[out].frac))


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------

def _conv_then(node: onnx.NodeProto, extra_inits=(), opset=OPSET) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", kernel_shape=[1, 1]), node]
    graph = helper.make_graph(nodes, "bad", [tensor("input", (1, 3, 4, 4))], [tensor("y", (1, 4, 4, 4))],
                              [init("w", rng.standard_normal((4, 3, 1, 1)))] + list(extra_inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)


def test_clip_min_greater_than_max_names_the_node():
    bounds = [init("lo", np.float32(2.0)), init("hi", np.float32(1.0))]
    with pytest.raises(CompileError, match=r"node 'clip' \(Clip\): min 2 is greater than max 1"):
        load_model(_conv_then(helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip"), bounds))
    with pytest.raises(CompileError, match=r"node 'clip' \(Clip\): min 3 is greater than max -1"):
        load_model(_conv_then(helper.make_node("Clip", ["c"], ["y"], name="clip", min=3.0, max=-1.0), opset=10))


def test_clip_bound_from_a_computed_tensor_is_refused():
    with pytest.raises(CompileError, match=r"node 'clip' \(Clip\): min 'input' must be a constant"):
        load_model(_conv_then(helper.make_node("Clip", ["c", "input"], ["y"], name="clip")))


@pytest.mark.parametrize("alpha", [1.5, -0.1])
def test_leaky_alpha_out_of_range_names_the_node(alpha):
    with pytest.raises(CompileError, match=rf"node 'lr' \(LeakyRelu\): alpha {alpha} is out of range"):
        load_model(_conv_then(helper.make_node("LeakyRelu", ["c"], ["y"], name="lr", alpha=alpha)))


def _channelwise_layers(m) -> list:
    return [L for L in load_model(m).layers if getattr(L, "kind", "") == "channelwise"]


def test_activation_after_a_pool_runs_as_a_channelwise_layer():
    nodes = [helper.make_node("MaxPool", ["input"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Sigmoid", ["p"], ["y"], name="sig")]
    m = model("pool_sigmoid", nodes, [tensor("input", (1, 3, 4, 4))], [tensor("y", (1, 3, 2, 2))], [])
    (layer,) = _channelwise_layers(m)
    assert layer.nodes == ["sig"] and layer.act == "sigmoid" and layer.input == "p"


def test_activation_after_a_fused_mul_runs_as_a_channelwise_layer():
    m = kernels.mul_model("maps")
    out = m.graph.output[0].name
    m.graph.node.append(helper.make_node("Tanh", [out], ["z"], name="after"))
    m.graph.output[0].name = "z"
    (layer,) = _channelwise_layers(m)
    assert layer.nodes == ["after"] and layer.act == "tanh"


def test_squeeze_excitation_multiplies_in_an_identity_channelwise_layer():
    """The gate is computed from the map it multiplies, so the Mul cannot fuse into the map's Conv:
    an identity channel-wise layer reads the map and multiplies by the gate (run against onnxruntime
    in test_sdk_run_matches_onnxruntime_and_golden[mul_se])."""
    (layer,) = _channelwise_layers(kernels.mul_model("se"))
    assert layer.res_op == "mul" and layer.act == "none" and np.all(layer.weight == 1) and np.all(layer.bias == 0)


def test_mul_with_a_gate_of_other_channels_is_refused():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["input", "w2"], ["g0"], name="fc", kernel_shape=[4, 4]),
             helper.make_node("Mul", ["c", "g0"], ["y"], name="gate")]
    m = model("bad", nodes, [tensor("input", (1, 3, 4, 4))], [tensor("y", (1, 4, 4, 4))],
              [init("w", rng.standard_normal((4, 3, 1, 1))), init("w2", rng.standard_normal((2, 3, 4, 4)))])
    with pytest.raises(CompileError, match=r"node 'gate' \(Mul\): multiplies 'c' \(1, 4, 4, 4\) and 'g0' \(1, 2, 1, 1\)"):
        load_model(m)


@pytest.mark.parametrize("kind,ok", [("relu6", True), ("sigmoid", True), ("tanh", False), ("mul_relu", False)])
def test_zero_padding_under_max_pooling_needs_a_non_negative_activation(kind, ok):
    """A tensor padded by both a Conv (zeros) and a MaxPool (-inf) must be known non-negative; ReLU
    followed by a fused Mul is not (the other operand may be negative)."""
    rng = np.random.default_rng(0)
    w = [init(n, rng.standard_normal((4, 4, 3, 3)) * 0.2) for n in ("w1", "w2", "w3")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c"], name="conv", pads=[1] * 4, kernel_shape=[3, 3])]
    if kind == "mul_relu":
        nodes += [helper.make_node("Relu", ["c"], ["r"], name="relu"),
                  helper.make_node("Conv", ["input", "w3"], ["d"], name="other", pads=[1] * 4, kernel_shape=[3, 3]),
                  helper.make_node("Mul", ["r", "d"], ["a"], name="prod")]
    else:
        op, _, bounds = kernels.ACTIVATION_KINDS[kind]
        extra = []
        if bounds:
            w += [init("lo", np.float32(bounds[0])), init("hi", np.float32(bounds[1]))]
            extra = ["lo", "hi"]
        nodes.append(helper.make_node(op, ["c"] + extra, ["a"], name="act"))
    nodes += [helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[3, 3], pads=[1] * 4),
              helper.make_node("Conv", ["a", "w2"], ["q"], name="conv2", pads=[1] * 4, kernel_shape=[3, 3])]
    m = model("pads", nodes, [tensor("input", (1, 4, 5, 5))], [tensor("p", (1, 4, 5, 5)), tensor("q", (1, 4, 5, 5))], w)
    if ok:
        dla, gold, _, _ = run_both(m, SMALL)
        assert_bit_exact(dla, gold)
    else:
        with pytest.raises(CompileError, match="is not known to be non-negative"):
            run_both(m, SMALL)


def test_bin_file_keeps_activations_and_mul(tmp_path):
    """A .bin written by Compile(outfile) runs the same bits, and its float graph (Run_th) keeps the
    activation parameters and the Mul."""
    m = kernels.mul_model("gate", seed=4)
    m.graph.node[1].op_type = "LeakyRelu"            # the main branch's Relu -> LeakyRelu(0.01)
    path, out = str(tmp_path / "m.onnx"), str(tmp_path / "m.bin")
    onnx.save(m, path)
    x = np.random.default_rng(0).standard_normal((1, 20, 6, 6)).astype(np.float32)
    direct = microndla.MDLA()
    direct.Compile(path)
    y = direct.Run(x)
    microndla.MDLA().Compile(path, outfile=out)
    loaded = microndla.MDLA()
    loaded.Init(out)
    assert np.array_equal(loaded.Run(x), y)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(loaded.Run_th(x), ref, rtol=1e-4, atol=1e-5)
    assert nx.sdk_error_metric(y, ref)[0] <= BUDGET_MEAN


# ------------------------------------------------------------------------------------------------
# HARDSWISH, SILU (the front end's canonicalisation names them; here set on the IR directly) and
# a sigmoid writing a Concat group's format
# ------------------------------------------------------------------------------------------------

def _retargeted(act: str):
    """A Conv(3x3) layer whose activation is ``act`` (set on the IR), quantised for REFERENCE."""
    g = load_model(kernels.activation_model("relu", seed=3))
    (conv,) = g.layers
    conv.act = act
    return g


@pytest.mark.parametrize("cfg", [REFERENCE, SMALL], ids=lambda c: c.name)
@pytest.mark.parametrize("act", ["hardswish", "silu", "mish"])
def test_hardswish_and_silu_compile_bit_exact(cfg, act):
    from sim.golden import run_float
    from tests.test_compiled_kernels import compile_graph, run_card
    g = quantize(_retargeted(act), cfg)
    (conv,) = g.layers
    assert conv.act_a == g.tensors[conv.output].frac == g.tensors[conv.input].frac
    c = compile_graph(g, cfg)
    assert any(i.op == "CONV" and i.act == Act[act.upper()] and i.act_a == conv.act_a
               for p in c.programs.values() for i in p)
    mem, feeds = c.seeded_image(4)
    run_card(cfg, mem, c.program_addresses())
    gold, _ = run_quantized(g, feeds)
    dla = {t: c.memmap.tensors[t].read(mem, c.memmap.tensor_addr(t), cfg.lanes) for t in g.tensors}
    assert_bit_exact(dla, gold)
    f = g.tensors[conv.output].frac
    ref = run_float(g, {k: v / 2.0 ** g.tensors[k].frac for k, v in feeds.items()})[conv.output]
    mean, mx = nx.sdk_error_metric(gold[conv.output] / 2.0 ** f, ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX


def _head_model(seed: int = 0) -> onnx.ModelProto:
    """A YOLOX-style head: Concat(box Conv, Sigmoid(objectness Conv), Sigmoid(class Conv))."""
    rng = np.random.default_rng(seed)
    inits = [init(f"w{k}", rng.normal(0, 0.3, (n, 8, 1, 1))) for k, n in (("box", 16), ("obj", 16), ("cls", 32))]
    nodes = [helper.make_node("Conv", ["input", "wbox"], ["box"], name="box"),
             helper.make_node("Conv", ["input", "wobj"], ["obj_logit"], name="obj"),
             helper.make_node("Conv", ["input", "wcls"], ["cls_logit"], name="cls"),
             helper.make_node("Sigmoid", ["obj_logit"], ["obj_p"], name="obj_sigmoid"),
             helper.make_node("Sigmoid", ["cls_logit"], ["cls_p"], name="cls_sigmoid"),
             helper.make_node("Concat", ["box", "obj_p", "cls_p"], ["output"], name="head", axis=1)]
    return model("head", nodes, [tensor("input", (1, 8, 6, 6))], [tensor("output", (1, 64, 6, 6))], inits)


@pytest.mark.parametrize("calibrate", [False, True])
def test_sigmoid_writes_the_concat_groups_format(calibrate, tmp_path):
    m = _head_model()
    path = str(tmp_path / "head.onnx")
    onnx.save(m, path)
    x = (np.random.default_rng(1).standard_normal((1, 8, 6, 6)) * 4).astype(np.float32)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    ie = microndla.MDLA()
    ie.Compile(path, samples=[x] if calibrate else None)
    y = ie.Run(x)
    mean, mx = nx.sdk_error_metric(y, ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX
    g = ie._compiled.graph
    fracs = {g.tensors[t].frac for t in ("box", "obj_p", "cls_p", "output")}
    assert len(fracs) == 1
    sig = [l for l in g.layers if l.act == "sigmoid"]
    assert len(sig) == 2 and all(l.act_a == nx.LUT_OUT_FRAC - fracs.copy().pop() for l in sig)
