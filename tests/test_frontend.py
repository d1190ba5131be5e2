"""ONNX front end: every rejection names what is wrong; every supported construct computes what
onnxruntime computes (through the golden float path)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import zoo
from compiler.frontend import load_model, parse_inshapes
from compiler.ir import CompileError, Conv, MaxPool
from sim.golden import output_array, run_float


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def make(nodes, inputs, outputs, inits=(), opset=13) -> onnx.ModelProto:
    """A model from nodes; inputs/outputs as (name, shape) with shape None for 'unknown'."""
    def vi(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None if shape is None else list(shape))
    graph = helper.make_graph(nodes, "t", [vi(*i) for i in inputs], [vi(*o) for o in outputs],
                              initializer=[numpy_helper.from_array(np.asarray(a, dtype=np.float32), n)
                                           for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_against_ort(model: onnx.ModelProto, inshapes: str | None = None, seed: int = 1, rtol=1e-4, atol=1e-5):
    """Compile, run the float golden path and onnxruntime on the same random inputs; compare all outputs."""
    graph = load_model(model, inshapes)
    feeds = {gi.name: rand(gi.onnx_shape, seed) for gi in graph.inputs}
    refs = ort_run(model, feeds)
    tensors = run_float(graph, {k: v.reshape(graph.tensors[k].shape) for k, v in feeds.items()})
    for out, ref in zip(graph.outputs, refs):
        np.testing.assert_allclose(output_array(out, tensors[out.tensor]), ref, rtol=rtol, atol=atol)
    return graph


def conv_node(name, x, w, out, b=None, **attrs):
    return helper.make_node("Conv", [x, w] + ([b] if b else []), [out], name=name, **attrs)


# ------------------------------------------------------------------------------------------------
# loading errors
# ------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load_model(path)


@pytest.mark.parametrize("content", [b"\x00\xff\xfe garbage \x01\x02", b"", b"hello, not a model\n"])
def test_not_an_onnx_file(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(CompileError, match=r"bad\.onnx is not an ONNX model"):
        load_model(str(path))


def test_loads_from_path_and_does_not_modify_proto(tmp_path):
    model = make([helper.make_node("Relu", ["x"], ["y"], name="r0"),
                  conv_node("c", "x", "w", "y2")],
                 [("x", ("N", 2, 5, 5))], [("y2", None)], [("w", rand((3, 2, 3, 3)))])
    before = model.SerializeToString()
    graph = load_model(model, "1x2x5x5")
    assert model.SerializeToString() == before
    assert graph.inputs[0].onnx_shape == (1, 2, 5, 5)
    path = zoo.save("small_cnn", tmp_path / "m" / "small.onnx")
    assert [l.name for l in load_model(path).layers] == ["conv1", "pool1", "conv2", "pool2", "fc"]
    assert [l.name for l in load_model(str(path)).layers] == ["conv1", "pool1", "conv2", "pool2", "fc"]


# ------------------------------------------------------------------------------------------------
# unsupported ops and attributes
# ------------------------------------------------------------------------------------------------

def fc_then(node) -> onnx.ModelProto:
    return make([helper.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1), node],
                [("x", (1, 8))], [("y", (1, 4))], [("w", rand((4, 8)))])


def fc_then_fc(node) -> onnx.ModelProto:
    """Gemm -> node -> Gemm: the node is in the middle of the DLA part."""
    return make([helper.make_node("Gemm", ["x", "w"], ["h"], name="fc", transB=1), node,
                 helper.make_node("Gemm", ["m", "w2"], ["y"], name="fc2", transB=1)],
                [("x", (1, 8))], [("y", (1, 4))], [("w", rand((4, 8))), ("w2", rand((4, 4)))])


def test_unsupported_op_in_the_middle_names_node_and_op():
    with pytest.raises(CompileError, match=r"node 'sm' \(Softmax\) is not supported on the DLA, and DLA layers "
                                           r"follow it \(node 'fc2' \(Gemm\)\).*heterogeneous.*supported on the DLA: Conv"):
        load_model(fc_then_fc(helper.make_node("Softmax", ["h"], ["m"], name="sm")))


def test_unsupported_op_after_the_dla_runs_on_the_host():
    g = load_model(fc_then(helper.make_node("Softmax", ["h"], ["y"], name="sm")))
    assert g.host is not None and g.host.nodes == ["node 'sm' (Softmax)"]
    assert [o.name for o in g.outputs] == ["h"] and [o.name for o in g.host.outputs] == ["y"]
    assert g.output_order == ["y"]


def test_unsupported_op_without_name_gets_index_name():
    with pytest.raises(CompileError, match=r"node 'Erf_1' \(Erf\) is not supported on the DLA, and DLA layers"):
        load_model(fc_then_fc(helper.make_node("Erf", ["h"], ["m"])))
    assert load_model(fc_then(helper.make_node("Erf", ["h"], ["y"]))).host.nodes == ["node 'Erf_1' (Erf)"]


def test_unsupported_custom_domain():
    model = fc_then(helper.make_node("Gelu", ["h"], ["y"], name="g", domain="com.example"))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(CompileError, match=r"node 'g' \(com\.example\.Gelu\) runs neither on the DLA nor on the host"):
        load_model(model)


def test_grouped_conv_with_bad_group_rejected():
    model = make([conv_node("gc", "x", "w", "y", group=3)], [("x", (1, 4, 6, 6))], [("y", None)],
                 [("w", rand((4, 2, 3, 3)))])
    with pytest.raises(CompileError, match=r"node 'gc' \(Conv\): group=3 must be a positive divisor"):
        load_model(model)


@pytest.mark.parametrize("group, cin, cout", [(2, 4, 6), (8, 8, 8), (4, 8, 16)])
def test_grouped_conv_matches_onnxruntime(group, cin, cout):
    model = make([conv_node("gc", "x", "w", "y", "b", group=group, pads=[1, 0, 2, 1], dilations=[2, 1])],
                 [("x", (1, cin, 7, 6))], [("y", None)],
                 [("w", rand((cout, cin // group, 3, 3))), ("b", rand((cout,), 2))])
    (conv,) = check_against_ort(model).layers
    assert conv.groups == group


def test_3d_conv_rejected():
    model = make([conv_node("c3", "x", "w", "y")], [("x", (1, 2, 4, 6, 6))], [("y", None)],
                 [("w", rand((3, 2, 3, 3, 3)))])
    with pytest.raises(CompileError, match=r"node 'c3' \(Conv\): only 2-D convolutions.*3-D"):
        load_model(model)


def test_conv_weight_must_be_constant():
    model = make([conv_node("c", "x", "w", "y")], [("x", (1, 2, 6, 6)), ("w", (3, 2, 3, 3))], [("y", None)])
    with pytest.raises(CompileError, match=r"node 'c' \(Conv\): weight 'w' must be a constant"):
        load_model(model)


@pytest.mark.parametrize("op, attrs, what", [("MaxPool", {"dilations": [2, 2]}, "dilations"),
                                             ("AveragePool", {"dilations": [2, 2]}, "dilations")])
def test_pool_attributes_rejected(op, attrs, what):
    model = make([helper.make_node(op, ["x"], ["y"], name="mp", kernel_shape=[2, 2], strides=[2, 2], **attrs)],
                 [("x", (1, 2, 7, 7))], [("y", None)])
    with pytest.raises(CompileError, match=rf"node 'mp' \({op}\): {what}"):
        load_model(model)


def test_maxpool_ceil_mode_pads_the_end():
    model = make([helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
                 [("x", (1, 2, 7, 7))], [("y", None)])
    (mp,) = load_model(model).layers
    assert mp.pads == (0, 0, 1, 1)        # the 4th window of each row/column hangs one pixel over


def test_gemm_transA_rejected():
    model = make([helper.make_node("Gemm", ["x", "w"], ["y"], name="g", transA=1)],
                 [("x", (1, 8))], [("y", None)], [("w", rand((8, 4)))])
    with pytest.raises(CompileError, match=r"node 'g' \(Gemm\): transA=1"):
        load_model(model)


def test_matmul_needs_constant_right_operand():
    model = make([helper.make_node("MatMul", ["x", "z"], ["y"], name="mm")],
                 [("x", (1, 8)), ("z", (8, 4))], [("y", None)])
    with pytest.raises(CompileError, match=r"node 'mm' \(MatMul\): the right operand 'z' must be a constant"):
        load_model(model)


def bn_inits(c, prefix="bn"):
    rng = np.random.default_rng(3)
    return [(f"{prefix}.s", rng.uniform(0.5, 1.5, c)), (f"{prefix}.b", rng.normal(0, 0.1, c)),
            (f"{prefix}.m", rng.normal(0, 0.1, c)), (f"{prefix}.v", rng.uniform(0.5, 2, c))]


def bn_node(name, x, out, prefix="bn", **attrs):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in "sbmv"], [out], name=name, **attrs)


def _channelwise(graph, name):
    (layer,) = [l for l in graph.layers if l.name == name]
    assert isinstance(layer, Conv) and layer.kind == "channelwise" and layer.groups == layer.weight.shape[0]
    assert any(f"runs as channel-wise layer '{name}'" in n for n in graph.notes)
    return layer


def test_batchnorm_not_after_conv_is_a_channelwise_layer():
    model = make([bn_node("bn0", "x", "y")], [("x", (1, 3, 4, 4))], [("y", None)], bn_inits(3))
    _channelwise(check_against_ort(model), "bn0")
    model = make([helper.make_node("MaxPool", ["x"], ["p"], name="mp", kernel_shape=[2, 2]), bn_node("bn1", "p", "b"),
                  helper.make_node("Relu", ["b"], ["y"], name="r")], [("x", (1, 3, 4, 4))], [("y", None)], bn_inits(3))
    graph = check_against_ort(model)
    assert _channelwise(graph, "bn1").act == "relu"          # the Relu fuses into the channel-wise layer
    assert len(graph.layers) == 2


def test_batchnorm_after_conv_with_other_consumer_is_a_channelwise_layer():
    model = make([conv_node("c", "x", "w", "h"), bn_node("bn", "h", "y")],
                 [("x", (1, 2, 5, 5))], [("y", None), ("h", None)], [("w", rand((3, 2, 3, 3)))] + bn_inits(3))
    _channelwise(check_against_ort(model), "bn")


def test_relu_and_constants_not_after_conv_are_channelwise_layers():
    model = make([helper.make_node("MaxPool", ["x"], ["p"], name="mp", kernel_shape=[2, 2]),
                  helper.make_node("Relu", ["p"], ["y"], name="r")], [("x", (1, 3, 4, 4))], [("y", None)])
    assert _channelwise(check_against_ort(model), "r").act == "relu"
    model = make([conv_node("c", "x", "w", "h"), helper.make_node("Relu", ["h"], ["r1"], name="ra"),
                  helper.make_node("Relu", ["r1"], ["y"], name="rb")],
                 [("x", (1, 2, 5, 5))], [("y", None)], [("w", rand((3, 2, 3, 3)))])
    _channelwise(check_against_ort(model), "rb")
    model = make([helper.make_node("Mul", ["x", "s"], ["m"], name="mul"), helper.make_node("Add", ["m", "t"], ["y"], name="add")],
                 [("x", (1, 3, 4, 5))], [("y", None)], [("s", rand((3, 1, 1), 3)), ("t", rand((1, 3, 1, 1), 4))])
    graph = check_against_ort(model)
    assert len(graph.layers) == 1 and _channelwise(graph, "mul").nodes == ["mul", "add"]


def test_reshape_of_feature_map_into_conv_rejected():
    model = make([helper.make_node("Reshape", ["x", "s"], ["r"], name="rs"), conv_node("c", "r", "w", "y")],
                 [("x", (1, 4, 4, 4))], [("y", None)],
                 [("s", np.array([1, 1, 8, 8])), ("w", rand((2, 1, 3, 3)))])
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([1, 1, 8, 8], dtype=np.int64), "s"))
    with pytest.raises(CompileError, match=r"node 'c' \(Conv\).*node 'rs' \(Reshape\)"):
        load_model(model)


# ------------------------------------------------------------------------------------------------
# input shapes and inshapes
# ------------------------------------------------------------------------------------------------

def conv_model_with_input(shape):
    return make([conv_node("c", "img", "w", "y", pads=[1, 1, 1, 1])], [("img", shape)], [("y", None)],
                [("w", rand((4, 3, 3, 3)))])


def test_dynamic_input_needs_inshapes():
    """A dynamic batch alone is compiled as 1 (the runtime's flags give the images per call); any
    other dynamic dimension needs inshapes."""
    graph = load_model(conv_model_with_input(("N", 3, 8, 8)))
    assert graph.tensors["img"].shape == (3, 8, 8) and graph.inputs[0].onnx_shape == (1, 3, 8, 8)
    assert any("dynamic batch dimension 'N' is compiled as 1" in n for n in graph.notes)
    model = conv_model_with_input(("N", 3, "H", 8))
    with pytest.raises(CompileError, match=r"input 'img' has a dynamic or unknown shape \(N, 3, H, 8\); pass inshapes"):
        load_model(model)
    graph = load_model(model, inshapes="1x3x8x8")
    assert graph.tensors["img"].shape == (3, 8, 8)
    assert graph.tensors["y"].shape == (4, 8, 8)
    with pytest.raises(CompileError, match=r"input 'img'.*pass inshapes"):
        load_model(conv_model_with_input(None))


def test_inshapes_overrides_static_shape():
    graph = load_model(conv_model_with_input((1, 3, 8, 8)), inshapes="1x3x12x10")
    assert graph.tensors["y"].shape == (4, 12, 10)
    assert graph.outputs[0].onnx_shape == (1, 4, 12, 10)
    graph = check_against_ort(conv_model_with_input(("N", 3, "H", "W")), inshapes="1x3x7x9")
    assert graph.outputs[0].onnx_shape == (1, 4, 7, 9)


def test_batch_other_than_one_rejected():
    """A model exported for a fixed batch whose nodes keep the images apart compiles per image (the
    runtime takes its batch per call); inshapes of another batch, or a model that combines its
    images, are refused naming the input (and the node)."""
    graph = load_model(conv_model_with_input((4, 3, 8, 8)))
    assert graph.inputs[0].onnx_shape == (1, 3, 8, 8) and any("fixed batch 4" in n for n in graph.notes)
    mixed = conv_model_with_input((4, 3, 8, 8))
    mixed.graph.node.append(helper.make_node("Softmax", ["y"], ["p"], name="over_batch", axis=0))
    mixed.graph.output[0].name = "p"
    with pytest.raises(CompileError, match=r"input 'img' has batch dimension 4.*node 'over_batch' \(Softmax\) "
                                           r"combines the images.*1x3x8x8"):
        load_model(mixed)
    with pytest.raises(CompileError, match=r"input 'img' has batch dimension 2"):
        load_model(conv_model_with_input(("N", 3, 8, 8)), inshapes="2x3x8x8")


@pytest.mark.parametrize("inshapes, match", [
    ("", "empty"),
    ("1x3xax8", "'1x3xax8' is not a shape"),
    ("1x0x8x8", "positive integers"),
    ("1x3x8", "rank 4.*rank 3"),
    ("1x3x8x8;1x3x8x8", "2 shape.*1 input"),
    (42, "must be a string"),
])
def test_bad_inshapes(inshapes, match):
    with pytest.raises(CompileError, match=match):
        load_model(conv_model_with_input(("N", 3, 8, 8)), inshapes=inshapes)


def test_parse_inshapes():
    assert parse_inshapes("1x3x224x224") == [(1, 3, 224, 224)]
    assert parse_inshapes(" 1X3x8x8 ; 1x10 ;") == [(1, 3, 8, 8), (1, 10)]


def test_initializer_listed_as_input_is_not_an_input():
    model = conv_model_with_input((1, 3, 8, 8))
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]))
    graph = load_model(model, inshapes="1x3x8x8")
    assert [gi.name for gi in graph.inputs] == ["img"]


# ------------------------------------------------------------------------------------------------
# translation: fusion, Gemm/MatMul, padding, folding, aliases
# ------------------------------------------------------------------------------------------------

def test_small_cnn_structure_and_float_path():
    graph = check_against_ort(zoo.build("small_cnn", seed=2))
    conv1, pool1, conv2, pool2, fc = graph.layers
    assert isinstance(conv1, Conv) and conv1.nodes == ["conv1", "bn1", "relu1"] and conv1.act == "relu"
    assert isinstance(pool2, MaxPool) and pool2.pads == (1, 1, 1, 1) and pool2.kernel == (3, 3)
    assert conv2.stride == (2, 2) and conv2.output == "relu2_out"
    assert fc.kind == "fc" and fc.act == "none" and fc.weight.shape == (10, 24, 4, 4) and fc.input == "pool2_out"
    assert graph.tensors["output"].shape == (10, 1, 1) and graph.outputs[0].onnx_shape == (1, 10)
    assert "conv1_out" not in graph.tensors and "bn1_out" not in graph.tensors
    assert any("bn1" in n for n in graph.notes) and any("flatten" in n for n in graph.notes)


def test_batchnorm_folding_matches_onnxruntime():
    # conv without bias, BN with large statistics, no ReLU
    rng = np.random.default_rng(5)
    inits = [("w", rand((6, 3, 3, 3))), ("bn.s", rng.uniform(0.2, 3, 6)), ("bn.b", rng.normal(0, 1, 6)),
             ("bn.m", rng.normal(0, 2, 6)), ("bn.v", rng.uniform(0.1, 5, 6))]
    model = make([conv_node("c", "x", "w", "h", strides=[2, 1]), bn_node("bn", "h", "y", epsilon=1e-3)],
                 [("x", (1, 3, 9, 8))], [("y", None)], inits)
    graph = check_against_ort(model)
    (conv,) = graph.layers
    assert conv.nodes == ["c", "bn"] and conv.act == "none"


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [(5,), (1, 5), (), None])
def test_gemm(trans_b, bias_shape):
    w = rand((5, 12) if trans_b else (12, 5), seed=7)
    inits = [("w", w)]
    ins = ["x", "w"]
    if bias_shape is not None:
        inits.append(("c", rand(bias_shape, seed=8)))
        ins.append("c")
    model = make([helper.make_node("Gemm", ins, ["h"], name="g", transB=trans_b, alpha=0.7, beta=1.3),
                  helper.make_node("Relu", ["h"], ["y"], name="r")], [("x", (1, 12))], [("y", None)], inits)
    graph = check_against_ort(model)
    (fc,) = graph.layers
    assert fc.kind == "fc" and fc.weight.shape == (5, 12, 1, 1) and fc.act == "relu" and fc.nodes == ["g", "r"]


def test_gemm_after_flatten_of_feature_map_and_matmul():
    model = make([conv_node("c", "x", "w", "h", pads=[1, 1, 1, 1]),
                  helper.make_node("Flatten", ["h"], ["f"], name="fl"),
                  helper.make_node("MatMul", ["f", "m"], ["y"], name="mm")],
                 [("x", (1, 2, 3, 4))], [("y", None)], [("w", rand((3, 2, 3, 3))), ("m", rand((36, 7), seed=2))])
    graph = check_against_ort(model)
    assert graph.layers[1].kind == "fc" and graph.layers[1].weight.shape == (7, 3, 3, 4)
    assert graph.outputs[0].onnx_shape == (1, 7)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("size", [(9, 10), (8, 7)])
def test_auto_pad(auto_pad, size):
    h, w = size
    model = make([conv_node("c", "x", "w", "h", auto_pad=auto_pad, strides=[2, 2]),
                  helper.make_node("MaxPool", ["h"], ["y"], name="mp", kernel_shape=[2, 3], strides=[2, 1],
                                   auto_pad=auto_pad)],
                 [("x", (1, 2, h, w))], [("y", None)], [("w", rand((3, 2, 4, 3)))])
    graph = check_against_ort(model)
    conv, pool = graph.layers
    if auto_pad == "VALID":
        assert conv.pads == (0, 0, 0, 0) and pool.pads == (0, 0, 0, 0)
    else:
        top, left, bottom, right = conv.pads
        assert (top <= bottom and left <= right) if auto_pad == "SAME_UPPER" else (top >= bottom and left >= right)
        assert conv.weight.shape[0] == graph.tensors[conv.output].shape[0]
        assert graph.tensors[conv.output].shape[1:] == (-(-h // 2), -(-w // 2))


def test_conv_dilation_and_asymmetric_pads():
    model = make([conv_node("c", "x", "w", "y", dilations=[2, 3], pads=[0, 2, 1, 1], strides=[1, 2])],
                 [("x", (1, 3, 11, 12))], [("y", None)], [("w", rand((4, 3, 3, 3)))])
    graph = check_against_ort(model)
    assert graph.layers[0].dilation == (2, 3) and graph.layers[0].pads == (0, 2, 1, 1)


def test_constant_folding_and_aliases():
    """PyTorch-style flatten (Shape/Gather/Unsqueeze/Concat/Reshape), a weight computed from constants,
    Identity and Dropout."""
    nodes = [
        helper.make_node("Constant", [], ["two"], name="k2", value=numpy_helper.from_array(np.float32(2.0))),
        helper.make_node("Mul", ["w0", "two"], ["w"], name="scale_w"),
        conv_node("c", "x", "w", "h", b="b"),
        helper.make_node("Dropout", ["h"], ["d"], name="drop"),
        helper.make_node("Shape", ["d"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="cat", axis=0),
        helper.make_node("Reshape", ["d", "target"], ["f"], name="flat"),
        helper.make_node("Identity", ["f"], ["y"], name="id"),
    ]
    model = make(nodes, [("x", (1, 2, 5, 5))], [("y", None)],
                 [("w0", rand((3, 2, 3, 3))), ("b", rand((3,), seed=4))])
    for name, value in (("zero", np.array(0)), ("axes", np.array([0])), ("minus1", np.array([-1]))):
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.int64), name))
    graph = check_against_ort(model)
    (conv,) = graph.layers
    assert conv.output == "h" and graph.outputs[0].tensor == "h" and graph.outputs[0].onnx_shape == (1, 27)
    folded = " ".join(graph.notes)
    for node in ("k2", "scale_w", "shape", "gather", "unsq", "cat"):
        assert f"'{node}'" in folded
    assert "alias" in folded


def test_unused_branch_dropped():
    model = make([conv_node("c", "x", "w", "y"), conv_node("dead", "x", "w", "z")],
                 [("x", (1, 2, 5, 5))], [("y", None)], [("w", rand((3, 2, 3, 3)))])
    graph = load_model(model)
    assert [l.name for l in graph.layers] == ["c"] and "z" not in graph.tensors
    assert any("dead" in n for n in graph.notes)


def test_constant_output_rejected():
    model = make([helper.make_node("Identity", ["w"], ["y"], name="i"), conv_node("c", "x", "w", "z")],
                 [("x", (1, 2, 5, 5))], [("y", None), ("z", None)], [("w", rand((3, 2, 3, 3)))])
    with pytest.raises(CompileError, match="graph output 'y' is a constant"):
        load_model(model)


def test_nodes_out_of_order_are_sorted_and_cycles_rejected():
    nodes = [helper.make_node("Relu", ["h"], ["y"], name="r"), conv_node("c", "x", "w", "h")]
    model = make(nodes, [("x", (1, 2, 5, 5))], [("y", None)], [("w", rand((3, 2, 3, 3)))])
    (conv,) = load_model(model).layers
    assert conv.nodes == ["c", "r"] and conv.act == "relu"
    cyclic = make([helper.make_node("Relu", ["b"], ["a"], name="ra"), helper.make_node("Relu", ["a"], ["b"], name="rb")],
                  [("x", (1, 2, 5, 5))], [("a", None)])
    with pytest.raises(CompileError, match=r"node '(ra|rb)' \(Relu\) is part of a cycle"):
        load_model(cyclic)


def test_input_of_unsupported_rank_rejected():
    model = make([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", (1, 3, 2, 2, 2))], [("y", None)])
    with pytest.raises(CompileError, match=r"node 'r' \(Relu\): input 'x' has shape \(1, 3, 2, 2, 2\)"):
        load_model(model)


def test_fusion_through_identity_and_fc_batchnorm():
    """Relu reached through an Identity alias fuses; a BatchNormalization after a Gemm folds too."""
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], name="g", transB=1),
             bn_node("bn", "h", "b"),
             helper.make_node("Identity", ["b"], ["i"], name="id"),
             helper.make_node("Relu", ["i"], ["y"], name="r")]
    model = make(nodes, [("x", (1, 6))], [("y", None)], [("w", rand((4, 6)))] + bn_inits(4))
    (fc,) = check_against_ort(model).layers
    assert fc.nodes == ["g", "bn", "r"] and fc.act == "relu"


def test_per_channel_mul_and_add_fold_into_the_convolution():
    """Conv -> Mul(per-channel scale) -> Add(per-channel shift) -> Relu, as some exporters write a
    folded BatchNormalization: one layer, numerically equal to onnxruntime."""
    import onnxruntime as ort
    from sim.golden import run_float
    w = rand((6, 3, 3, 3))
    scale = np.linspace(0.5, 2.0, 6).astype(np.float32).reshape(1, 6, 1, 1)
    shift = np.linspace(-0.3, 0.3, 6).astype(np.float32).reshape(6, 1, 1)
    model = make([conv_node("c", "x", "w", "c_out", pads=[1, 1, 1, 1]),
                  helper.make_node("Mul", ["c_out", "s"], ["m"], name="scale"),
                  helper.make_node("Add", ["sh", "m"], ["a"], name="shift"),
                  helper.make_node("Relu", ["a"], ["y"], name="relu")],
                 [("x", (1, 3, 5, 5))], [("y", None)], [("w", w), ("s", scale), ("sh", shift)])
    g = load_model(model)
    assert len(g.layers) == 1 and g.layers[0].nodes == ["c", "scale", "shift", "relu"]
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 5)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y = run_float(g, {"x": x[0]})[g.outputs[0].tensor]
    np.testing.assert_allclose(y, ref[0], rtol=1e-5, atol=1e-5)


def test_tensor_times_tensor_is_fused_into_the_later_conv():
    model = make([conv_node("c", "x", "w", "a"), conv_node("d", "x", "w", "b"),
                  helper.make_node("Mul", ["a", "b"], ["y"], name="prod")],
                 [("x", (1, 3, 5, 5))], [("y", None)], [("w", rand((2, 3, 3, 3)))])
    g = load_model(model)
    assert [(l.name, l.residual, l.res_op) for l in g.layers] == [("c", None, "add"), ("d", "a", "mul")]


def test_mul_of_shapes_that_do_not_broadcast_per_channel_is_refused():
    model = make([conv_node("c", "x", "w", "a"), helper.make_node("GlobalAveragePool", ["x"], ["p"], name="gap"),
                  helper.make_node("Mul", ["a", "p"], ["y"], name="prod")],
                 [("x", (1, 3, 5, 5))], [("y", None)], [("w", rand((2, 3, 3, 3)))])
    with pytest.raises(CompileError, match=r"node 'prod' \(Mul\): multiplies 'a' \(1, 2, 3, 3\) and 'p' "
                                           r"\(1, 3, 1, 1\); only tensors of the same shape, a feature map and "
                                           r"a per-channel"):
        load_model(model)


def test_operator_table_is_the_front_ends_and_the_partitioners():
    """One table of operators (compiler/ops.py): every entry has its handler, every handler an entry,
    and the partitioner's categories come from it."""
    from compiler import ops, partition
    from compiler.frontend import _FrontEnd
    handlers = {n[len("_op_"):] for n in dir(_FrontEnd) if n.startswith("_op_")}
    translated = {op.name for op in ops.OPS.values() if not op.canonical}
    assert handlers == translated and set(ops.SUPPORTED_OPS) <= translated
    assert partition.LAYER_OPS | partition.FUSED_OPS | partition.VIEW_OPS == translated
    assert all(op.category in ops.CATEGORIES for op in ops.OPS.values())
