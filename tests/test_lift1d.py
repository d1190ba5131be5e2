"""1-D models (rank-3 (N, C, L) tensors) run as (N, C, L, 1) images: compiler/lift1d.py. Against
onnxruntime in float32 with the SDK metric, budget mean <= 1 %, max <= 5 %."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import microndla
from arch.numerics import sdk_error_metric
from compiler.lift1d import lift_1d


def _t(name, shape):
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))


def conv1d_net(seed=0, c=6, length=40):
    """Conv1d (pads, stride, dilation) -> BatchNormalization -> Relu -> MaxPool1d (ceil) -> Conv1d ->
    Sigmoid, and a per-channel (C, 1) scale, ConvTranspose1d, GlobalAveragePool."""
    rng = np.random.default_rng(seed)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)
    inits = [init("w1", rng.standard_normal((12, c, 5)) * 0.3), init("b1", rng.standard_normal(12) * 0.1),
             init("g", rng.uniform(0.5, 1.5, 12)), init("be", rng.standard_normal(12) * 0.1),
             init("m", rng.standard_normal(12) * 0.1), init("v", rng.uniform(0.5, 1.5, 12)),
             init("w2", rng.standard_normal((8, 12, 3)) * 0.3), init("s", rng.uniform(0.5, 2.0, (8, 1))),
             init("wt", rng.standard_normal((8, 4, 4)) * 0.3)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[5], pads=[2, 1], strides=[2],
                              dilations=[1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["n1"], name="bn"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3], strides=[2], ceil_mode=1, name="pool"),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], kernel_shape=[3], pads=[2, 2], dilations=[2], name="conv2"),
             helper.make_node("Sigmoid", ["c2"], ["a2"], name="sig"),
             helper.make_node("Mul", ["a2", "s"], ["m2"], name="scale"),
             helper.make_node("ConvTranspose", ["m2", "wt"], ["y"], kernel_shape=[4], strides=[2], pads=[1, 1],
                              name="up")]
    g = helper.make_graph(nodes, "conv1d", [_t("x", (1, c, length))], [_t("y", (1, 4, 20))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m)
    return m


def test_a_1d_network_runs_as_2d_within_budget():
    m = conv1d_net()
    out = m.graph.output[0]
    x = np.random.default_rng(1).standard_normal((1, 6, 40)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ie = microndla.MDLA()
    ie.Compile(m)
    y = ie.Run(x)
    assert y.shape == ref.shape and ie.GetInfo("outshapes") == "x".join(str(d.dim_value) for d in out.type.tensor_type.shape.dim)
    mean, mx = sdk_error_metric(y, ref)
    assert mean <= 1.0 and mx <= 5.0, (mean, mx)
    np.testing.assert_allclose(ie.Run_th(x), ref, rtol=1e-4, atol=1e-4)
    ie.Free()


def test_the_user_model_is_not_modified_and_rank_dependent_ops_are_not_lifted():
    m = conv1d_net()
    before = m.SerializeToString()
    ie = microndla.MDLA()
    ie.Compile(m)
    assert m.SerializeToString() == before
    soft = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)], "s",
        [_t("x", (1, 3, 8))], [_t("y", (1, 3, 8))]), opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert not lift_1d(soft)          # Softmax over the last axis would change meaning
    bcast = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["x", "l"], ["y"])], "b", [_t("x", (1, 3, 8))], [_t("y", (1, 3, 8))],
        [numpy_helper.from_array(np.ones(8, dtype=np.float32), "l")]),
        opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert not lift_1d(bcast)         # a constant broadcast along L has no (L, 1) equivalent here


def _vector_net(length=24):
    """An element-wise model on unbatched (L,) vectors: a per-element scale and offset (constants of
    shape (L,)), Sigmoid, a product with a second input, a Sum of three, Clip."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 2.0, length).astype(np.float32), "s"),
             numpy_helper.from_array(rng.standard_normal(length).astype(np.float32), "o")]
    nodes = [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Add", ["xs", "o"], ["xo"]),
             helper.make_node("Sigmoid", ["xo"], ["g"]), helper.make_node("Mul", ["g", "u"], ["gu"]),
             helper.make_node("Sum", ["gu", "x", "u"], ["t"]),
             helper.make_node("Clip", ["t", "lo", "hi"], ["y"])]
    inits += [numpy_helper.from_array(np.float32(-3), "lo"), numpy_helper.from_array(np.float32(3), "hi")]
    g = helper.make_graph(nodes, "vec", [_t("x", (length,)), _t("u", (length,))], [_t("y", (length,))], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_an_elementwise_model_on_unbatched_vectors_runs_on_the_dla(tmp_path):
    from compiler.partition import Staged
    m = _vector_net()
    rng = np.random.default_rng(4)
    x, u = (rng.standard_normal(24).astype(np.float32) for _ in range(2))
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x, "u": u})[0]
    ie = microndla.MDLA()
    ie.Compile(m, outfile=str(tmp_path / "vec.bin"))
    ie.Init(str(tmp_path / "vec.bin"))           # the .bin keeps that the vectors have no batch axis
    assert not isinstance(ie._compiled, Staged) and ie._compiled.layers   # DLA layers, no host stage
    y = ie.Run([x, u])
    assert y.shape == ref.shape == (24,)
    mean, mx = sdk_error_metric(y, ref)
    assert mean <= 1.0 and mx <= 5.0, (mean, mx)
    np.testing.assert_allclose(ie.Run_th([x, u]), ref, rtol=1e-4, atol=1e-4)
    ie.Free()


def test_vectors_outside_elementwise_models_are_not_lifted():
    from compiler.lift1d import lift_vectors
    cat = helper.make_model(helper.make_graph(
        [helper.make_node("Concat", ["x", "x"], ["y"], axis=0)], "c", [_t("x", (4,))], [_t("y", (8,))]),
        opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert not lift_vectors(cat)
    wide = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])], "w", [_t("x", (4,))], [_t("y", (2, 4))],
        [numpy_helper.from_array(np.ones((2, 4), dtype=np.float32), "c")]),
        opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert not lift_vectors(wide)     # a rank-2 constant makes a rank-2 result: not a vector model
    ints = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "i", [helper.make_tensor_value_info("x", onnx.TensorProto.INT8, [4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT8, [4])]),
        opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert not lift_vectors(ints)
