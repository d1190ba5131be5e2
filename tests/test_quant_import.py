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
from arch.numerics import sdk_error_metric
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
        else:
            fmt = quantization.QuantFormat.QDQ if how == "qdq" else quantization.QuantFormat.QOperator
            quantization.quantize_static(f, q, _Reader(inp.name, shape), quant_format=fmt)
    return f, q


def _feeds(model: onnx.ModelProto, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    return {i.name: rng.random([d.dim_value for d in i.type.tensor_type.shape.dim], dtype=np.float32)
            for i in model.graph.input}


CASES = [("small_cnn", "qdq", {"QuantizeLinear", "DequantizeLinear"}),
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
