"""Quantised ONNX models (issue 12, compiler/quant_import.py), built offline with
onnxruntime.quantization from float zoo models: QDQ and QOperator (QLinearConv, QGemm) static
quantisation, dynamic quantisation (DynamicQuantizeLinear -> ConvInteger/MatMulInteger, and
com.microsoft.DynamicQuantizeLSTM). Each is imported with dequantised weights and run on the DLA
in its 16-bit formats; the result is compared with onnxruntime running the quantised model (SDK
metric, budget mean <= 1 %, max <= 5 %), and every DLA program is bit-exact with the golden
reference. The DLA keeps 16 bits where the quantised model rounds activations to 8, so its error
against the float model is no worse than the quantised model's own (plus a margin)."""
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import microndla
from arch.numerics import frac_for_range, sdk_error_metric
from compiler.quantize import SaturationWarning
from zoo import sequence, small_cnn

from tests.test_families import assert_bit_exact_with_golden

quantization = pytest.importorskip("onnxruntime.quantization")

BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0


class _Reader(quantization.CalibrationDataReader):
    def __init__(self, name, shape, n=4):
        self.it = iter([{name: np.random.default_rng(k).random(shape, dtype=np.float32)} for k in range(n)])

    def get_next(self):
        return next(self.it, None)


def _token_mlp(T: int = 10, K: int = 32) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    w1 = (rng.standard_normal((K, 48)) / np.sqrt(K)).astype(np.float32)
    w2 = (rng.standard_normal((48, 16)) / np.sqrt(48)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    g = helper.make_graph(nodes, "token_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, 16])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _quantise(tmp_path, model: onnx.ModelProto, how: str) -> tuple[str, str]:
    f, q = str(tmp_path / "float.onnx"), str(tmp_path / f"{how}.onnx")
    onnx.save(model, f)
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "dynamic":
            quantization.quantize_dynamic(f, q, weight_type=quantization.QuantType.QInt8)
        else:       # qdq-conv: QDQ on the Conv operators only (the activation hints cover part of the graph)
            fmt = quantization.QuantFormat.QDQ if how.startswith("qdq") else quantization.QuantFormat.QOperator
            quantization.quantize_static(f, q, _Reader(inp.name, shape), quant_format=fmt,
                                         op_types_to_quantize=["Conv"] if how == "qdq-conv" else None)
    return f, q


def _feeds(model: onnx.ModelProto, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    return {i.name: rng.random([d.dim_value for d in i.type.tensor_type.shape.dim], dtype=np.float32)
            for i in model.graph.input}


CASES = [("small_cnn", "qdq", {"QuantizeLinear", "DequantizeLinear"}),
         ("small_cnn", "qdq-conv", {"QuantizeLinear", "DequantizeLinear"}),
         ("small_cnn", "qoperator", {"QLinearConv", "QGemm"}),
         ("small_cnn", "dynamic", {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}),
         ("token_mlp", "dynamic", {"MatMulInteger"}),
         ("lstm", "dynamic", {"DynamicQuantizeLSTM"})]


@pytest.mark.parametrize("name,how,ops", CASES, ids=[f"{n}-{h}" for n, h, _ in CASES])
def test_quantised_model_within_budget_of_onnxruntime(tmp_path, name, how, ops):
    model = {"small_cnn": small_cnn, "token_mlp": _token_mlp,
             "lstm": lambda: sequence.rnn_layer("LSTM", direction="bidirectional", states=True)}[name]()
    fpath, qpath = _quantise(tmp_path, model, how)
    qmodel = onnx.load(qpath)
    assert ops <= {n.op_type for n in qmodel.graph.node}, {n.op_type for n in qmodel.graph.node}
    feeds = _feeds(model)
    ref_q = ort.InferenceSession(qpath, providers=["CPUExecutionProvider"]).run(None, feeds)
    ref_f = ort.InferenceSession(fpath, providers=["CPUExecutionProvider"]).run(None, feeds)
    ie = microndla.MDLA()
    ie.SetFlag("heterogeneous", 1)
    ie.Compile(qpath)
    ys = ie.Run([feeds[i.name] for i in model.graph.input])
    ys = ys if isinstance(ys, list) else [ys]
    for y, rq, rf in zip(ys, ref_q, ref_f):
        mean, mx = sdk_error_metric(np.asarray(y).reshape(rq.shape), rq)
        assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, f"{name} {how}: {mean:.3f} % / {mx:.3f} % vs quantised ort"
        ours = sdk_error_metric(np.asarray(y).reshape(rf.shape), rf)[0]
        theirs = sdk_error_metric(rq, rf)[0]
        assert ours <= theirs + 0.25, f"{name} {how}: {ours:.3f} % from float, the quantised model {theirs:.3f} %"
    assert ie.GetInfo("hwcycles") > 0
    assert_bit_exact_with_golden(ie)


def test_qdq_pair_of_an_unsigned_range_keeps_the_fused_relu(tmp_path):
    """onnxruntime's quantiser drops a Relu before an unsigned QuantizeLinear (the zero point at 0
    clamps the negatives): the import keeps the clamp as a Clip, and notes the range hints."""
    from compiler.frontend import load_model
    _, qpath = _quantise(tmp_path, small_cnn(), "qdq")
    assert "Relu" not in {n.op_type for n in onnx.load(qpath).graph.node}
    graph = load_model(qpath)
    assert any("activation range hint" in n for n in graph.notes)
    assert any(layer.act == "clip" or layer.act == "relu" for layer in graph.layers if hasattr(layer, "act"))


def test_qdq_activation_scales_choose_the_formats(tmp_path):
    """Without samples, a QDQ model whose activation scales cover every activation tensor gets its
    formats from them (finer than Q8.8 for its small ranges), as calibration would choose them."""
    _, qpath = _quantise(tmp_path, small_cnn(), "qdq")
    ie = microndla.MDLA()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ie.Compile(qpath)
    # the MaxPools after the hint-bounded Clips cannot saturate (no spurious warning)
    assert not [w for w in caught if issubclass(w.category, SaturationWarning)], [str(w.message) for w in caught]
    graph = ie._compiled.graph
    assert any("calibration hints" in n for n in graph.notes)
    assert graph.range_hints and all(t in graph.range_hints for t in graph.tensors)
    assert max(t.frac for t in graph.tensors.values()) > 8
    feeds = _feeds(small_cnn())
    ref = ort.InferenceSession(qpath, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    mean, mx = sdk_error_metric(ie.Run(feeds["input"]), ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX


# ---- activation scales as calibration hints: partial coverage, with samples ----------------------
def _partial_qdq(tmp_path) -> tuple[onnx.ModelProto, str]:
    """small_cnn quantised with QDQ on the Conv operators only (op_types_to_quantize): the
    activations around the convolutions have scales, those of the Relus, pools and the Gemm none."""
    model = small_cnn()
    f, q = str(tmp_path / "float.onnx"), str(tmp_path / "partial.onnx")
    onnx.save(model, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.quantize_static(f, q, _Reader("input", [1, 3, 32, 32]), quant_format=quantization.QuantFormat.QDQ,
                                     op_types_to_quantize=["Conv"])
    return model, q


def _within_budget_of_ort(ie, qpath, model, seeds=(7, 8)) -> list[tuple[float, float]]:
    sess = ort.InferenceSession(qpath, providers=["CPUExecutionProvider"])
    errors = []
    for seed in seeds:
        feeds = _feeds(model, seed)
        ref = sess.run(None, feeds)[0]
        mean, mx = sdk_error_metric(np.asarray(ie.Run(feeds["input"])).reshape(ref.shape), ref)
        assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, f"{mean:.3f} % / {mx:.3f} % vs quantised ort"
        errors.append((mean, mx))
    return errors


def test_partial_qdq_hints_where_present_q88_elsewhere(tmp_path):
    """Hints for the tensors a QDQ pair covers, Q8.8 for the others (the constraints still apply:
    a pool's input and output share the coarser of their formats); within the SDK budget of
    onnxruntime running the quantised model, bit-exact with the golden reference."""
    from arch.machine import REFERENCE
    from compiler.calibrate import HEADROOM
    model, qpath = _partial_qdq(tmp_path)
    ie = microndla.MDLA()
    ie.Compile(qpath)
    graph = ie._compiled.graph
    hinted = {t for t in graph.tensors if t in graph.range_hints}
    assert hinted and hinted != set(graph.tensors)
    assert any(f"for {len(hinted)} of {len(graph.tensors)} tensors; the others Q8.8" in n for n in graph.notes)
    clipped = {l.output for l in graph.layers if getattr(l, "act", None) == "clip"}   # a Clip chooses its own
    for t, tensor in graph.tensors.items():
        if t in clipped:
            continue
        if t in hinted:        # from its hint, or coarser where a constraint makes it
            assert tensor.frac <= frac_for_range(graph.range_hints[t] * HEADROOM, max_frac=15)
        else:
            assert tensor.frac <= REFERENCE.default_frac, t
    assert graph.tensors[graph.outputs[0].tensor].frac == REFERENCE.default_frac
    assert max(t.frac for t in graph.tensors.values()) > REFERENCE.default_frac     # the hints were used
    assert ie._compiled.meta["varfp"]
    _within_budget_of_ort(ie, qpath, model)
    assert_bit_exact_with_golden(ie)


def test_hints_and_samples_combine_to_the_larger_range(tmp_path):
    """With samples, each tensor's range is the larger of its calibrated range and its hint: samples
    three times the quantiser's calibration images raise the hinted ranges, in-range samples leave
    the hints; either way within the SDK budget of onnxruntime on the quantised model (whose 8-bit
    activations saturate beyond their scales just as the DLA's formats would not)."""
    from compiler.calibrate import calibrate
    from compiler.quant_import import activation_ranges
    model, qpath = _partial_qdq(tmp_path)
    for scale, raised in ((1.0, True), (3.0, False)):
        samples = [np.random.default_rng(50 + k).random((1, 3, 32, 32), dtype=np.float32) * scale for k in range(4)]
        ie = microndla.MDLA()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SaturationWarning)
            ie.Compile(qpath, samples=samples)
        graph = ie._compiled.graph
        cal = calibrate(graph, samples)
        ranges, note = activation_ranges(graph, cal)
        assert "each tensor's range is the larger of the two" in note
        for t in graph.tensors:
            assert ranges[t] == max(cal[t], graph.range_hints.get(t, 0.0))
        hinted = [t for t in graph.tensors if t in graph.range_hints]
        assert any(graph.range_hints[t] > cal[t] for t in hinted) == raised
        assert any(graph.range_hints[t] < cal[t] for t in hinted) == (not raised)
        if scale == 1.0:
            _within_budget_of_ort(ie, qpath, model)
        assert_bit_exact_with_golden(ie)


def test_activation_ranges_rule():
    """The rule itself: none -> None; hints only -> the hints (partial); samples only -> them; both
    -> the larger per tensor."""
    from types import SimpleNamespace

    from compiler.quant_import import activation_ranges
    graph = SimpleNamespace(tensors={"a": 0, "b": 0, "c": 0}, range_hints={"a": 2.0, "b": 0.5, "zz": 9.0})
    assert activation_ranges(SimpleNamespace(tensors={"a": 0}, range_hints={}), None) == (None, None)
    hints, note = activation_ranges(graph, None)
    assert hints == {"a": 2.0, "b": 0.5} and "for 2 of 3 tensors; the others Q8.8" in note
    cal = {"a": 1.0, "b": 1.0, "c": 3.0}
    assert activation_ranges(SimpleNamespace(tensors=graph.tensors, range_hints={}), cal) == (cal, None)
    both, note = activation_ranges(graph, cal)
    assert both == {"a": 2.0, "b": 1.0, "c": 3.0} and "the hint for 1" in note


def test_hints_reach_a_dla_stage_through_the_token_layout(tmp_path):
    """A QDQ token MLP under heterogeneous: the hints on the token tensors reach the channel-form
    tensors of the DLA stage (the views between the two forms keep the values), which get their
    formats from them."""
    model = _token_mlp()
    fpath, qpath = str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx")
    onnx.save(model, fpath)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.quantize_static(fpath, qpath, _Reader("x", [1, 10, 32]), quant_format=quantization.QuantFormat.QDQ)
    ie = microndla.MDLA()
    ie.SetFlag("heterogeneous", 1)
    ie.Compile(qpath)
    c = ie._compiled
    graphs = [s.graph for s in getattr(c, "stages", []) if hasattr(s, "graph")] or [c.graph]
    assert any(t.startswith("MatMul") or "_conv" in t for g in graphs for t in g.tensors)
    for g in graphs:
        assert any("calibration hints" in n for n in g.notes), g.notes
        assert all(t in g.range_hints for t in g.tensors), set(g.tensors) - set(g.range_hints)
    feeds = _feeds(model)
    ref = ort.InferenceSession(qpath, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    mean, mx = sdk_error_metric(np.asarray(ie.Run(feeds["x"])).reshape(ref.shape), ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, (mean, mx)
    assert_bit_exact_with_golden(ie)
