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
    """Scalar Python-int model of the output stage, written from the ISA text."""
    def rsh(v, s):
        return v if s == 0 else (v + (1 << (s - 1))) >> s

    def sat(v):
        return max(-32768, min(32767, v))
    if mode == nx.RES_ADD:
        acc += r << rshift
    y = sat(rsh(acc, shift))
    if act == nx.ACT_RELU:
        y = max(y, 0)
    elif act == nx.ACT_LEAKY and y < 0:
        y = sat(rsh(y * a, b))
    elif act == nx.ACT_CLIP:
        y = min(max(y, nx.s16(a)), nx.s16(b))
    elif act in (nx.ACT_SIGMOID, nx.ACT_TANH):
        y = int(nx.lut_eval(np.array([y]), act)[0])
    if mode == nx.RES_MUL:
        y = sat(rsh(y * r, rshift))
    return y


@pytest.mark.parametrize("mode", [nx.RES_NONE, nx.RES_ADD, nx.RES_MUL])
@pytest.mark.parametrize("act", range(len(nx.ACT_NAMES)))
def test_requantize_matches_naive_formula(act, mode):
    rng = np.random.default_rng(act * 3 + mode)
    acc = rng.integers(-2 ** 30, 2 ** 30, 400)
    r = rng.integers(-32768, 32768, 400)
    a, b = {nx.ACT_LEAKY: nx.leaky_fields(0.1), nx.ACT_CLIP: nx.clip_fields(-3000, 9000)}.get(act, (0, 0))
    shift, rshift = 14, 15 if mode == nx.RES_MUL else 3
    y, sat = nx.requantize(acc, shift, act, None if mode == nx.RES_NONE else r, rshift, act_a=a, act_b=b,
                           mode=mode)
    want = [_naive(int(v), shift, act, a, b, int(w) if mode else 0, rshift, mode) for v, w in zip(acc, r)]
    assert y.dtype == np.int16 and y.tolist() == want
    assert sat > 0    # the ranges drawn overflow 16 bits often


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
    (dict(act=Act.SIGMOID, act_a=1), "act_a and act_b must be 0 for act SIGMOID"),
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
