"""Variable fixed point (``Compile(model, samples=[...])``): per-tensor formats from calibration,
the constraints pooling, concatenation and residuals put on them, saturation warnings, and the
functional model staying bit-exact with the golden reference in these formats."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import microndla
import zoo
from arch.machine import REFERENCE, SMALL
from arch.numerics import frac_for_range, sdk_error_metric
from compiler.calibrate import HEADROOM, calibrate, calibration_feeds
from compiler.driver import compile_graph
from compiler.frontend import load_model
from compiler.ir import CompileError, Conv, MaxPool
from compiler.quantize import SaturationWarning, quantize
from sim.card import run_card
from sim.golden import run_quantized
from zoo import kernels


def images(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random(shape, dtype=np.float32) for _ in range(n)]


def calibrated(model, cfg=REFERENCE, n=3, seed=0):
    graph = load_model(model)
    shape = graph.inputs[0].onnx_shape
    ranges = calibrate(graph, images(shape, n, seed))
    return quantize(graph, cfg, ranges=ranges), ranges


def test_formats_follow_the_ranges_and_the_hardware_constraints():
    graph, ranges = calibrated(zoo.build("inception", input_shape=(1, 3, 64, 64)))
    fracs = {t.frac for t in graph.tensors.values()}
    assert len(fracs) > 1 and all(0 <= f <= 15 for f in fracs)
    limit = 2 ** 15 - 1
    for name, t in graph.tensors.items():
        # never finer than the range allows with the headroom (so nothing calibrated saturates)
        assert round(ranges[name] * HEADROOM * 2.0 ** t.frac) <= limit, name
    for layer in graph.layers:
        if isinstance(layer, MaxPool):
            assert graph.tensors[layer.input].frac == graph.tensors[layer.output].frac
        if isinstance(layer, Conv):
            assert layer.shift >= 0 and (layer.res_shift is None or layer.res_shift >= 0)
    assert graph.concats
    for cat in graph.concats:
        assert len({graph.tensors[t].frac for t in cat.inputs + [cat.output]}) == 1
        # the group takes the coarsest format a member needs
        need = min(max(0, frac_for_range(ranges[t] * HEADROOM, max_frac=15)) for t in cat.inputs)
        assert graph.tensors[cat.output].frac <= need
    # an unconstrained Conv output gets exactly the finest format that holds its range
    free = [l for l in graph.layers if isinstance(l, Conv) and l.output == graph.outputs[0].tensor]
    assert free and graph.tensors[free[0].output].frac == max(0, frac_for_range(ranges[free[0].output] * HEADROOM, max_frac=15))


def test_residual_formats_keep_the_shifts_non_negative():
    graph, _ = calibrated(kernels.residual_model(16, 8, 8, seed=3))
    convs = [l for l in graph.layers if isinstance(l, Conv)]
    assert any(c.residual for c in convs)
    for c in convs:
        in_frac, out_frac = graph.tensors[c.input].frac, graph.tensors[c.output].frac
        assert c.shift == in_frac + c.w_frac - out_frac >= 0
        if c.residual:
            assert c.res_shift == in_frac + c.w_frac - graph.tensors[c.residual].frac >= 0


def one_conv_model(weight: float, cin: int = 4) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, cin, 1, 1], np.full(2 * cin, weight, np.float32))
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="bigconv")
    return helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 13)])


def test_output_format_coarsened_when_the_accumulator_is_coarser(recwarn):
    # inputs of range 1000 get frac 4, weights 20000 get w_frac 0: the accumulator has 4 fractional
    # bits, so the output (range 1, which alone would get frac 14) can have at most 4
    graph = load_model(one_conv_model(20000.0, cin=1))
    quantize(graph, REFERENCE, ranges={"x": 1000.0, "y": 1.0})
    (conv,) = graph.layers
    assert graph.tensors["x"].frac == 4 and conv.w_frac == 0
    assert graph.tensors["y"].frac == 4 and conv.shift == 0
    assert not [w for w in recwarn if issubclass(w.category, SaturationWarning)]


def test_saturation_warning_names_the_layer_and_runs_count_it():
    model = one_conv_model(1000.0)
    x = np.full((1, 4, 1, 1), 10.0, np.float32)          # output 4e4 > 32767 even in Q16.0
    ie = microndla.MDLA()
    with pytest.warns(SaturationWarning, match=r"layer 'bigconv' \(conv, nodes bigconv\) saturates"):
        ie.Compile(model, samples=[x])
    ie.Run(x)
    assert ie.GetInfo("saturations") == 2


def _conv_pool_model(act: str, weight: float, bound: float = 2.388) -> onnx.ModelProto:
    """Conv (4 -> 2 channels, 1x1, every weight ``weight``) -> Clip(0, bound) or Relu -> MaxPool 2x2."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [2, 4, 1, 1], np.full(8, weight, np.float32)),
             helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("hi", TensorProto.FLOAT, [], [bound])]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["a"], name="clip") if act == "clip" else
             helper.make_node("Relu", ["c"], ["a"], name="relu"),
             helper.make_node("MaxPool", ["a"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)])


def test_no_saturation_warning_on_a_pool_after_a_bounded_clip(recwarn):
    """Regression: a Clip whose upper bound only just fits its format (Q3.13 for 2.388, as a
    quantised model's range hint gives it) followed by a MaxPool, the pool's range equal to the
    bound: the pool keeps the Clip's format and cannot exceed the bound, so no warning (it warned
    'likely to saturate', the range being within the headroom factor of the format's top)."""
    graph = load_model(_conv_pool_model("clip", 1.0))
    quantize(graph, REFERENCE, ranges={"x": 1.0, "a": 2.388, "y": 2.388})
    assert graph.tensors["y"].frac == graph.tensors["a"].frac == 13
    assert not [w for w in recwarn if issubclass(w.category, SaturationWarning)]


def test_a_saturating_pool_after_an_unbounded_activation_still_warns():
    """The same pool after a Relu (bounded below only) whose range exceeds even Q16.0 warns, naming it."""
    graph = load_model(_conv_pool_model("relu", 1000.0))
    with pytest.warns(SaturationWarning) as caught:
        quantize(graph, REFERENCE, ranges={"x": 10.0, "a": 4e4, "y": 4e4})
    msgs = [str(w.message) for w in caught if issubclass(w.category, SaturationWarning)]
    assert any(m.startswith("layer 'pool' (MaxPool) saturates") for m in msgs), msgs


def test_no_warning_when_everything_fits(recwarn):
    graph, _ = calibrated(zoo.build("small_cnn"))
    assert not [w for w in recwarn if issubclass(w.category, SaturationWarning)]


BIT_EXACT_CASES = [
    (REFERENCE, "small_cnn", {"input_shape": (1, 3, 16, 16)}),
    (REFERENCE, "inception", {"input_shape": (1, 3, 32, 32)}),        # concatenations
    (REFERENCE, "resnet18", {"input_shape": (1, 3, 32, 32)}),         # residuals
    (SMALL, "small_cnn", {"input_shape": (1, 3, 16, 16)}),
    (SMALL, "residual", {}),
    pytest.param(SMALL, "inception", {"input_shape": (1, 3, 32, 32)}, marks=pytest.mark.slow),
    pytest.param(SMALL, "resnet18", {"input_shape": (1, 3, 32, 32)}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("cfg,name,kw", BIT_EXACT_CASES, ids=lambda v: getattr(v, "name", v) if not isinstance(v, dict) else "")
def test_functional_model_bit_exact_with_golden_in_calibrated_formats(cfg, name, kw):
    model = kernels.residual_model(16, 8, 8, seed=1) if name == "residual" else zoo.build(name, **kw)
    graph, _ = calibrated(model, cfg)
    c = compile_graph(graph, cfg)
    mem, feeds = c.seeded_image(1)
    run_card(cfg, mem, c.program_addresses())
    gold, _ = run_quantized(graph, feeds)
    for t, ref in gold.items():
        got = c.memmap.tensors[t].read(mem, c.memmap.tensor_addr(t), cfg.lanes)
        assert np.array_equal(got, ref), t


def test_sdk_compile_with_samples_is_more_accurate(tmp_path):
    path = str(tmp_path / "small_cnn.onnx")
    onnx.save(zoo.build("small_cnn", seed=2), path)
    x = images((1, 3, 32, 32), 1, seed=9)[0]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": x})[0]
    errors = {}
    for mode, samples in (("q88", None), ("varfp", images((1, 3, 32, 32), 4))):
        ie = microndla.MDLA()
        ie.Compile(path, samples=samples)
        errors[mode] = sdk_error_metric(ie.Run(x), ref)
    assert errors["varfp"][0] <= 1.0 and errors["varfp"][1] <= 5.0
    assert errors["varfp"][0] < errors["q88"][0] / 3, errors


def test_calibration_rescues_a_network_that_saturates_in_q88():
    # unnormalised 0..255 pixels do not fit Q8.8 (max 127.996): Q8.8 saturates and fails the budget,
    # calibrated formats hold them
    model = zoo.build("small_cnn", seed=0)
    rng = np.random.default_rng(3)
    x = 255 * rng.random((1, 3, 32, 32), dtype=np.float32)
    samples = [255 * rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(2)]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    q88, cal = microndla.MDLA(), microndla.MDLA()
    q88.Compile(model)
    cal.Compile(model, samples=samples)
    mean, mx = sdk_error_metric(q88.Run(x), ref)
    assert mean > 5.0 and q88.GetInfo("saturations") > 1000
    mean, mx = sdk_error_metric(cal.Run(x), ref)
    assert mean <= 1.0 and mx <= 5.0 and cal.GetInfo("saturations") == 0


def test_samples_forms_and_the_binfile_keep_the_formats(tmp_path):
    model = zoo.build("small_cnn", input_shape=(1, 3, 16, 16))
    imgs = images((1, 3, 16, 16), 3)
    forms = [imgs, np.concatenate(imgs), [i[0] for i in imgs], tuple(imgs), [[i] for i in imgs]]
    fracs = []
    for samples in forms:
        graph = load_model(model)
        quantize(graph, REFERENCE, ranges=calibrate(graph, samples))
        fracs.append({k: t.frac for k, t in graph.tensors.items()})
    assert all(f == fracs[0] for f in fracs)
    ie = microndla.MDLA()
    ie.Compile(model, samples=imgs, outfile=str(tmp_path / "m.bin"))
    ie.Init(str(tmp_path / "m.bin"))
    assert {k: t.frac for k, t in ie._compiled.graph.tensors.items()} == fracs[0]
    assert ie._compiled.memmap.tensors["input"].frac == fracs[0]["input"]
    direct = microndla.MDLA()
    direct.Compile(model, samples=imgs)
    assert np.array_equal(ie.Run(imgs[0]), direct.Run(imgs[0]))


def test_debug_Q_prints_the_formats(capsys):
    ie = microndla.MDLA()
    ie.SetFlag("debug", "Q")
    ie.Compile(zoo.build("small_cnn", input_shape=(1, 3, 16, 16)), samples=images((1, 3, 16, 16), 2))
    out = capsys.readouterr().out
    assert "variable fixed point" in out and "conv1 (Conv): in Q" in out and "weights Q" in out


@pytest.mark.parametrize("samples,match", [
    ([], "samples is empty"),
    ("img.png", "samples must be a list"),
    ([np.zeros((1, 3, 16, 15), np.float32)], r"samples\[0\] for input 'input' must have shape .* got \(1, 3, 16, 15\)"),
    ([np.full((1, 3, 16, 16), np.nan, np.float32)], r"samples\[0\] for input 'input' contains NaN"),
    ([np.zeros((1, 3, 16, 16), np.complex64)], "must be a real float array"),
])
def test_bad_samples(samples, match):
    with pytest.raises(CompileError, match=match):
        microndla.MDLA().Compile(zoo.build("small_cnn", input_shape=(1, 3, 16, 16)), samples=samples)


def test_multi_input_samples():
    graph = load_model(zoo.build("small_cnn", input_shape=(1, 3, 16, 16)))
    graph.inputs = graph.inputs * 2          # only the feed layout is under test here
    a, b = images((1, 3, 16, 16), 2)
    nested = calibration_feeds(graph, [[a, b], [b, a]])
    flat = calibration_feeds(graph, [a, b, b, a])
    assert len(nested) == len(flat) == 2
    with pytest.raises(CompileError, match="multiple of 2"):
        calibration_feeds(graph, [a, b, a])


def two_layer_model() -> onnx.ModelProto:
    """conv 'quiet' (weights 0.5) then conv 'loud' (weights 100): only 'loud' saturates in Q8.8."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])
    inits = [helper.make_tensor("w0", TensorProto.FLOAT, [4, 4, 1, 1], np.full(16, 0.5, np.float32)),
             helper.make_tensor("w1", TensorProto.FLOAT, [4, 4, 1, 1], np.full(16, 100.0, np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], name="quiet"),
             helper.make_node("Conv", ["h", "w1"], ["y"], name="loud")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("flags", [{}, {"nclusters": 2, "imgs_per_cluster": 2}], ids=["one", "batched"])
def test_debug_w_reports_saturations_per_layer(capsys, flags):
    ie = microndla.MDLA()
    ie.SetFlag(dict(flags, debug="w"))
    ie.Compile(two_layer_model())
    batch = ie.GetInfo("batch")
    x = np.full((batch, 4, 2, 2), 1.0, np.float32)
    x[0, 0, 0, 0] = 200.0                                  # beyond Q8.8: the input conversion saturates once
    y = ie.Run(x)
    err = capsys.readouterr().err
    # 'quiet' gives 2 (or 101.5 at the big pixel), 'loud' 4 * 100 * 2 = 800 > 128 everywhere
    loud = 4 * 2 * 2 * batch
    assert ie.GetInfo("saturations") == loud + 1
    assert f"layer loud (conv): {loud} values saturated" in err
    assert "layer quiet" not in err and "inputs: 1 values saturated" in err
    assert np.all(y == np.float32(32767 / 256))
    # a calibrated compile of the same model has formats wide enough: nothing to report
    ie = microndla.MDLA()
    ie.SetFlag(dict(flags, debug="w"))
    x[0, 0, 0, 0] = 1.0
    ie.Compile(two_layer_model(), samples=[x])
    ie.Run(x)
    assert ie.GetInfo("saturations") == 0 and "saturated" not in capsys.readouterr().err


def test_cli_compile_with_samples(tmp_path):
    from click.testing import CliRunner

    from runtime.cli import main
    model, samples, out = tmp_path / "m.onnx", tmp_path / "s.npy", tmp_path / "m.bin"
    onnx.save(zoo.build("small_cnn", input_shape=(1, 3, 16, 16)), str(model))
    np.save(samples, np.concatenate(images((1, 3, 16, 16), 2)))
    r = CliRunner().invoke(main, ["compile", str(model), "-o", str(out), "--samples", str(samples)])
    assert r.exit_code == 0, r.output
    ie = microndla.MDLA()
    ie.Init(str(out))
    assert ie._compiled.meta["varfp"] and len({t.frac for t in ie._compiled.graph.tensors.values()}) > 1


# ------------------------------------------------------------------------------------------------
# numerics that never fail silently: run-time SaturationWarnings, fused intermediates, bounded
# activations, raw 0..255 inputs
# ------------------------------------------------------------------------------------------------

def _sdk_errors(ie, path, xs):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.max([sdk_error_metric(ie.Run(x), sess.run(None, {"input": x})[0]) for x in xs], axis=0)


def _small_gate_model(path) -> str:
    """mul_model('gate') whose gate is about sigmoid(-4) = 0.018: the gated product is ~55x smaller
    than the feature map it gates, so its format is ~6 bits finer than the map needs."""
    m = kernels.mul_model("gate", seed=1)
    producer = {o: n for n in m.graph.node for o in n.output}
    (sig,) = [n for n in m.graph.node if n.op_type == "Sigmoid"]
    bias = producer[sig.input[0]].input[2]
    for t in m.graph.initializer:
        if t.name == bias:
            t.CopyFrom(onnx.numpy_helper.from_array(np.full(onnx.numpy_helper.to_array(t).shape, -4.0, np.float32), bias))
    onnx.save(m, path)
    return path


def test_calibration_gives_a_gated_value_its_own_format(tmp_path, recwarn):
    """The value before a fused gate gets the format of its own calibrated range, not the gated
    product's (where it saturated): calibration is never worse than Q8.8 on its own images."""
    path = _small_gate_model(str(tmp_path / "gate.onnx"))
    xs = [x * 3 for x in images((1, 20, 6, 6), 3, seed=4)]
    q88, cal = microndla.MDLA(), microndla.MDLA()
    q88.Compile(path)
    cal.Compile(path, samples=xs)
    e88, ecal = _sdk_errors(q88, path, xs), _sdk_errors(cal, path, xs)
    assert ecal[0] <= e88[0] and ecal[1] <= e88[1] and ecal[1] <= 5.0
    assert cal.GetInfo("saturations") == 0
    g = cal._compiled.graph
    (gated,) = [l for l in g.layers if isinstance(l, Conv) and l.res_op == "mul"]
    target = g.tensors[gated.input].frac + gated.w_frac - gated.shift
    assert target < g.tensors[gated.output].frac        # the map's format is coarser than the product's
    assert not [w for w in recwarn if issubclass(w.category, SaturationWarning)]


def test_run_warns_once_per_layer_naming_count_and_remedy(tmp_path):
    path = str(tmp_path / "relu.onnx")
    onnx.save(kernels.activation_model("leaky", seed=1), path)
    ie = microndla.MDLA()
    ie.Compile(path)
    x = np.random.default_rng(0).standard_normal((1, 6, 7, 7)).astype(np.float32) * 60
    for _ in range(2):       # every Run that saturates warns again
        with pytest.warns(SaturationWarning) as caught:
            ie.Run(x)
        msgs = [str(w.message) for w in caught if issubclass(w.category, SaturationWarning)]
        (layer,) = [m for m in msgs if m.startswith("layer 'conv'")]
        n = ie.GetInfo("layer_saturations")["conv"]
        assert f"saturated {n} values of the 980 it wrote" in layer and "samples=" in layer and n > 0
        assert ie.GetInfo("saturations") == sum(ie.GetInfo("layer_saturations").values())
    ie.Run(x / 1000)
    assert ie.GetInfo("saturations") == 0 and ie.GetInfo("layer_saturations") == {}


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "relu6", "relu", "clip_attr"])
def test_no_false_warning_for_bounded_activations(kind, tmp_path, recwarn):
    """Values beyond the format that the activation maps to its bound anyway are no saturation."""
    path = str(tmp_path / f"{kind}.onnx")
    onnx.save(kernels.activation_model(kind, seed=1), path)
    x = np.random.default_rng(0).standard_normal((1, 6, 7, 7)).astype(np.float32) * 20
    if kind == "relu":
        x = -np.abs(x) * 0.3      # large negative pre-activations only: ReLU gives 0 either way
    for samples in (None, [x]):
        ie = microndla.MDLA()
        ie.Compile(path, samples=samples)
        ie.Run(x)
        assert ie.GetInfo("saturations") == 0, ie.GetInfo("layer_saturations")
    assert not [w for w in recwarn if issubclass(w.category, SaturationWarning)]


def test_raw_pixel_inputs_get_a_format_that_holds_them(tmp_path):
    path = str(tmp_path / "pixels.onnx")
    onnx.save(kernels.activation_model("relu", cin=3, seed=2), path)
    rng = np.random.default_rng(3)
    xs = [rng.integers(0, 256, (1, 3, 7, 7)).astype(np.float32) for _ in range(3)]
    xs[0][0, 0] = 255.0
    q88 = microndla.MDLA()
    q88.Compile(path)
    with pytest.warns(SaturationWarning, match="the inputs: .* saturated converting them to fixed point"):
        q88.Run(xs[0])
    cal = microndla.MDLA()
    cal.Compile(path, samples=xs)
    assert 255 * 2 ** cal._compiled.graph.tensors[cal._compiled.graph.inputs[0].tensor].frac <= 32767
    e = _sdk_errors(cal, path, xs)
    assert cal.GetInfo("saturations") == 0 and e[0] <= 1.0 and e[1] <= 5.0


def test_cli_run_prints_the_saturation_warning(tmp_path):
    from click.testing import CliRunner

    from runtime.cli import main
    path, inp = tmp_path / "m.onnx", tmp_path / "x.npy"
    onnx.save(kernels.activation_model("leaky", seed=1), str(path))
    np.save(inp, np.random.default_rng(0).standard_normal((1, 6, 7, 7)).astype(np.float32) * 60)
    r = CliRunner().invoke(main, ["run", str(path), "--input", str(inp)])
    assert r.exit_code == 0, r.output
    assert "warning: layer 'conv' (conv) saturated" in r.output and "samples=" in r.output
