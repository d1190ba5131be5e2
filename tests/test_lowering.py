"""Operators lowered onto the existing instructions (compiler/lowering.py, the grouped-convolution
path of compiler/codegen.py): grouped and depthwise Conv, channel-wise layers, ConvTranspose,
Resize/Upsample and AveragePool with varying divisors.

Each model runs (1) through the SDK API (microndla.MDLA Compile/Run on the functional model)
against onnxruntime in float32 with the SDK metric, budget mean <= 1 %, max <= 5 % of max |ref|
(Q8.8 activations), and (2) compiled for the other configuration, on the functional model, bit for
bit against the golden reference, which evaluates these layers from their definitions (groups,
zero insertion, replicated borders, per-window divisors) rather than from the pieces."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import microndla
from arch.machine import REFERENCE, SMALL
from arch.numerics import sdk_error_metric
from compiler.frontend import load_model
from compiler.ir import CompileError
from zoo import kernels
from zoo._util import init, model, tensor

from tests.test_compiled_kernels import assert_bit_exact, run_both

BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0


def check(m: onnx.ModelProto, tmp_path, bitfile: str = "small", seed: int = 0):
    """SDK run vs onnxruntime (metric) on ``bitfile``; functional model vs golden, bit-exact, on the
    other configuration. Returns the compiled program of the bit-exact run."""
    path = str(tmp_path / "m.onnx")
    onnx.save(m, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", bitfile)
    ie.Compile(path)
    y = ie.Run(x)
    assert y.shape == ref.shape
    mean, mx = sdk_error_metric(y, ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, f"error {mean:.3f} % / {mx:.3f} % exceeds the budget"
    dla, gold, c, _ = run_both(m, REFERENCE if bitfile == "small" else SMALL, seed)
    assert_bit_exact(dla, gold)
    return c


def _ids(case):
    return "-".join(str(v).replace(" ", "") for v in case)


# ---- grouped and depthwise convolutions ---------------------------------------------------------

GROUPED = [
    # cin, cout, group, h, w, k, stride, pad, dilation
    (8, 8, 8, 9, 9, 3, 1, 1, 1),                 # depthwise 3x3
    (24, 24, 24, 8, 7, 3, 2, (0, 1, 1, 2), 1),   # depthwise, strided, asymmetric pads, 24 = 1.5 words (reference)
    (20, 20, 20, 7, 7, 3, 1, 2, 2),              # depthwise, dilated
    (6, 12, 3, 9, 8, 3, 2, (1, 0, 2, 1), 1),     # groups of 2 input channels, inside words
    (16, 32, 2, 6, 6, 3, 1, 1, 1),               # two groups of 8 -> 16
    (12, 6, 2, 5, 5, 1, 1, 0, 1),                # grouped 1x1, fewer outputs than inputs
    (8, 16, 8, 6, 6, 5, 1, (2, 1, 2, 3), 1),     # depth multiplier 2, 5x5
    (36, 36, 6, 6, 6, 3, 1, 1, 1),               # groups of 6: reduction chunks on the small configuration
]


@pytest.mark.parametrize("case", GROUPED, ids=_ids)
def test_grouped_conv(case, tmp_path):
    cin, cout, group, h, w, k, s, p, d = case
    m = kernels.grouped_conv_model(cin, cout, group, h, w, k, s, p, d, relu=group % 2 == 0, seed=cin + cout)
    c = check(m, tmp_path, "small" if cin % 3 else "reference")
    (layer,) = c.layers
    assert layer.macs == (cin // group) * cout * k * k * c.graph.tensors[c.graph.layers[0].output].shape[1] \
        * c.graph.tensors[c.graph.layers[0].output].shape[2]


def test_dense_conv_asymmetric_pads_and_dilation(tmp_path):
    check(kernels.conv_model(5, 9, 9, 10, 3, (2, 1), (0, 2, 1, 1), dilation=(2, 1), seed=3), tmp_path)


# ---- channel-wise layers --------------------------------------------------------------------------

def _chan_model(kind: str, c: int = 6, h: int = 5, w: int = 6, seed: int = 0) -> onnx.ModelProto:
    """A graph input, or a MaxPool/Concat output, followed by what no layer can absorb."""
    rng = np.random.default_rng(seed)
    inits = [init("s", rng.uniform(0.5, 1.5, (c, 1, 1))), init("t", rng.normal(0, 0.3, (1, c, 1, 1))),
             init("g", rng.uniform(0.5, 1.5, c)), init("b", rng.normal(0, 0.2, c)), init("mu", rng.normal(0, 0.2, c)),
             init("var", rng.uniform(0.5, 2, c))]
    if kind == "bn_relu_input":          # BatchNormalization + Relu on the graph input
        nodes = [helper.make_node("BatchNormalization", ["input", "g", "b", "mu", "var"], ["n"], name="bn"),
                 helper.make_node("Relu", ["n"], ["output"], name="relu")]
        oh, ow = h, w
    elif kind == "mul_add_pool":         # per-channel Mul and Add after a pooling layer
        nodes = [helper.make_node("MaxPool", ["input"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Mul", ["p", "s"], ["m"], name="mul"),
                 helper.make_node("Add", ["t", "m"], ["output"], name="add")]
        oh, ow = h // 2, w // 2
    else:                                # Relu after a Concat of two convolutions
        inits += [init("w1", rng.normal(0, 0.2, (16, c, 3, 3))), init("w2", rng.normal(0, 0.3, (4, c, 1, 1)))]
        nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
                 helper.make_node("Conv", ["input", "w2"], ["b2"], name="c2"),
                 helper.make_node("Concat", ["a", "b2"], ["cat"], name="cat", axis=1),
                 helper.make_node("Relu", ["cat"], ["output"], name="relu")]
        c, oh, ow = 20, h, w
    used = {i for n in nodes for i in n.input}
    inits = [t for t in inits if t.name in used]
    return model("chan", nodes, [tensor("input", (1, 6, h, w))], [tensor("output", (1, c, oh, ow))], inits)


@pytest.mark.parametrize("kind", ["bn_relu_input", "mul_add_pool", "relu_after_concat"])
def test_channelwise_layer(kind, tmp_path):
    c = check(_chan_model(kind), tmp_path, "small" if kind != "mul_add_pool" else "reference")
    chan = [l for l in c.graph.layers if getattr(l, "kind", "") == "channelwise"]
    assert len(chan) == 1 and chan[0].groups == c.graph.tensors[chan[0].input].shape[0]


# ---- ConvTranspose ------------------------------------------------------------------------------

DECONV = [
    # cin, cout, h, w, k, stride, pad, output_padding, group
    (4, 6, 5, 5, 3, 2, 1, 1, 1),        # the usual 'x2' decoder layer
    (8, 8, 6, 5, 4, 2, 1, 0, 1),        # k=4, s=2, p=1 (DCGAN, LinkNet)
    (3, 5, 4, 4, 2, 2, 0, 0, 1),        # k = s: no overlap
    (6, 4, 4, 5, 3, 3, (0, 1, 2, 0), 2, 2),   # stride 3, asymmetric pads, grouped
    (4, 4, 3, 3, 1, 2, 0, 1, 1),        # kernel smaller than the stride: phases without taps
    (16, 16, 5, 4, 4, 2, 1, 0, 16),     # depthwise (bilinear-style upsampling layers)
    (5, 7, 4, 4, 3, 1, 1, 0, 1),        # stride 1
]


def _deconv_attrs(m: onnx.ModelProto, **attrs) -> onnx.ModelProto:
    node = m.graph.node[0]
    keep = [a for a in node.attribute if a.name not in ("pads", "output_padding") and a.name not in attrs]
    del node.attribute[:]
    node.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in attrs.items()])
    return m


@pytest.mark.parametrize("attrs", [dict(output_shape=[9, 10]), dict(auto_pad="SAME_UPPER"),
                                   dict(auto_pad="SAME_LOWER", strides=[3, 3])])
def test_conv_transpose_output_shape_and_auto_pad(attrs, tmp_path):
    m = _deconv_attrs(kernels.conv_transpose_model(4, 6, 5, 5, 3, 2, 0, 0, seed=9), **attrs)
    m.graph.output[0].type.tensor_type.ClearField("shape")
    check(m, tmp_path)


@pytest.mark.parametrize("case", DECONV, ids=_ids)
def test_conv_transpose(case, tmp_path):
    cin, cout, h, w, k, s, p, op, g = case
    check(kernels.conv_transpose_model(cin, cout, h, w, k, s, p, op, g, seed=cin * cout), tmp_path,
          "small" if cin % 2 else "reference")


# ---- Resize / Upsample ----------------------------------------------------------------------------

RESIZE = [
    # c, h, w, scales, mode, coordinate_transformation_mode, nearest_mode, sizes
    (3, 5, 6, (2, 2), "nearest", "asymmetric", "floor", False),           # PyTorch nearest
    (3, 5, 6, (2, 2), "nearest", "half_pixel", "round_prefer_floor", True),
    (2, 4, 5, (3, 2), "nearest", "asymmetric", "round_prefer_ceil", False),   # shifted copies, clamped
    (2, 4, 4, (2, 3), "nearest", "tf_half_pixel_for_nn", "ceil", False),
    (3, 5, 6, (2, 2), "linear", "half_pixel", "floor", False),            # bilinear x2: {1,3,9}/16, clamped
    (3, 4, 5, (2, 2), "linear", "pytorch_half_pixel", "floor", True),
    (2, 4, 5, (2, 3), "linear", "asymmetric", "floor", False),
    (2, 4, 4, (3, 3), "linear", "half_pixel", "floor", False),            # weights in sixths
    (5, 3, 4, (1, 2), "linear", "half_pixel", "floor", False),            # one axis only
]


@pytest.mark.parametrize("case", RESIZE, ids=_ids)
def test_resize(case, tmp_path):
    c, h, w, sc, mode, coord, nearest, sizes = case
    check(kernels.resize_model(c, h, w, sc, mode, coord, nearest, sizes), tmp_path,
          "reference" if mode == "linear" else "small")


@pytest.mark.parametrize("opset, mode", [(7, "nearest"), (9, "linear"), (10, "nearest"), (10, "linear")])
def test_upsample_and_resize10(opset, mode, tmp_path):
    check(kernels.upsample_model(3, 4, 5, 2, mode, opset), tmp_path)


def test_nearest_is_a_plain_copy():
    """Nearest x2 (asymmetric, floor) needs no replicated border: one piece per phase, weights 1,
    which runs on the pooling unit (lane-parallel) as a 1x1 AVGPOOL, not as a CONV."""
    from compiler.driver import compile_graph
    from compiler.quantize import quantize
    g = load_model(kernels.resize_model(3, 4, 5, (2, 2)))
    (layer,) = g.layers
    assert layer.edge == 0 and layer.up == (2, 2) and layer.groups == 3 and np.all(layer.weight == 1.0)
    c = compile_graph(quantize(g, SMALL), SMALL)
    ops = [i.op for p in c.programs.values() for i in p]
    assert ops.count("AVGPOOL") >= 4 and "CONV" not in ops


# ---- AveragePool with a varying divisor -------------------------------------------------------

AVG = [
    # c, h, w, k, stride, pad, count_include_pad, ceil_mode
    (3, 7, 7, 3, 1, 1, 0, 0),
    (5, 8, 9, 3, 2, (1, 0, 1, 1), 0, 0),
    (20, 6, 6, 3, 1, 1, 0, 0),             # more than a word of channels
    (4, 7, 7, 2, 2, 0, 1, 1),              # ceil_mode: the last window is partial
    (4, 7, 7, 3, 2, 1, 0, 1),
    (4, 8, 8, 3, 2, 1, 1, 1),              # ceil_mode with counted padding
]


@pytest.mark.parametrize("case", AVG, ids=_ids)
def test_avgpool_varying_divisor(case, tmp_path):
    c, h, w, k, s, p, cip, ceil = case
    check(kernels.avgpool_model(c, h, w, k, s, p, cip, ceil), tmp_path, "small" if c % 2 else "reference")


# ---- rejections -----------------------------------------------------------------------------------

def _one(op, ins, inits, opset=13, **attrs):
    # a Resize of a map of at most 4096 pixels runs as a linear map whatever its mode: a larger one here
    shape = (1, 1, 72, 72) if op == "Resize" else (1, 4, 4, 4)
    nodes = [helper.make_node(op, ["input"] + ins, ["output"], name="n1", **attrs)]
    graph = helper.make_graph(nodes, "bad", [tensor("input", shape)],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


W = init("w", np.ones((4, 4, 3, 3)))
ROI, SC = init("roi", np.zeros(0)), init("sc", np.array([1, 1, 2, 2]))


@pytest.mark.parametrize("op, ins, inits, attrs, match", [
    ("ConvTranspose", ["w"], [W], dict(dilations=[0, 2]), r"dilations \[0, 2\] must be two positive"),
    ("ConvTranspose", ["w"], [W], dict(strides=[2, 2], output_padding=[2, 2]), r"output_padding \[2, 2\]"),
    ("ConvTranspose", ["w"], [W], dict(group=3), r"group=3"),
    ("Resize", ["roi", "sc"], [ROI, SC], dict(mode="cubic"), r"mode 'cubic'"),
    ("Resize", ["roi", "sc"], [ROI, SC], dict(mode="linear", coordinate_transformation_mode="align_corners"),
     r"coordinate_transformation_mode 'align_corners'"),
    ("Resize", ["roi", "sc"], [ROI, SC], dict(coordinate_transformation_mode="tf_crop_and_resize"),
     r"coordinate_transformation_mode 'tf_crop_and_resize'"),
    ("Resize", ["roi", "sc"], [ROI, init("sc", np.array([1, 1, 1.5, 2]))], {}, r"only integer upsampling"),
    ("Resize", ["roi", "sc"], [ROI, init("sc", np.array([1, 2, 2, 2]))], {}, r"batch or channel axis"),
    ("Resize", ["roi", "sc"], [ROI, SC], dict(mode="linear", exclude_outside=1), r"exclude_outside=1"),
])
def test_unsupported_attributes_name_node_and_attribute(op, ins, inits, attrs, match):
    with pytest.raises(CompileError, match=rf"node 'n1' \({op}\): .*{match}"):
        load_model(_one(op, ins, inits, **attrs))


# ---- zero-cost graph ops --------------------------------------------------------------------------

def test_pytorch_interpolate_and_shape_arithmetic_fold(tmp_path):
    """F.interpolate(scale_factor=2) as PyTorch exports it (opset 11+): the Resize sizes come from
    Shape/Gather/Cast/Mul/Cast/Floor/Unsqueeze/Slice/Concat of the input's shape; a ConstantOfShape
    bias, a Squeeze/Unsqueeze round trip and a Cast chain on a weight. All of it folds into
    constants: one depthwise transposed convolution (the Resize) and one Conv remain."""
    from onnx import TensorProto, numpy_helper
    rng = np.random.default_rng(5)
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)   # noqa: E731
    nodes = [
        # the conv's bias: ConstantOfShape, then Squeeze of an Unsqueeze, through a Cast chain
        helper.make_node("ConstantOfShape", ["bshape"], ["b0"], name="zeros",
                         value=numpy_helper.from_array(np.array([0.25], dtype=np.float32))),
        helper.make_node("Cast", ["b0"], ["b1"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["b1"], ["b2"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["b2", "s0"], ["b3"], name="unsq_b"),
        helper.make_node("Squeeze", ["b3", "s0"], ["bias"], name="squeeze_b"),
        helper.make_node("Conv", ["input", "wc", "bias"], ["x"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Slice", ["shp", "s0", "s2", "s0"], ["nc"], name="slice"),
        helper.make_node("Constant", [], ["two"], name="const_two", value=numpy_helper.from_array(np.float32(2))),
    ]
    for axis in ("2", "3"):
        nodes += [helper.make_node("Gather", ["shp", "i" + axis], ["g" + axis], name="gather" + axis, axis=0),
                  helper.make_node("Cast", ["g" + axis], ["f" + axis], name="cast" + axis, to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["f" + axis, "two"], ["m" + axis], name="mul" + axis),
                  helper.make_node("Floor", ["m" + axis], ["fl" + axis], name="floor" + axis),
                  helper.make_node("Cast", ["fl" + axis], ["c" + axis], name="casti" + axis, to=TensorProto.INT64),
                  helper.make_node("Unsqueeze", ["c" + axis, "s0"], ["u" + axis], name="unsq" + axis)]
    nodes += [
        helper.make_node("Concat", ["nc", "u2", "u3"], ["sizes"], name="cat", axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["output"], name="resize", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    ]
    inits = [init("wc", rng.normal(0, 0.3, (4, 3, 3, 3))), i64("s0", [0]), i64("s2", [2]), i64("i2", 2), i64("i3", 3),
             i64("bshape", [4])]
    m = model("interp", nodes, [tensor("input", (1, 3, 5, 6))], [tensor("output", (1, 4, 10, 12))], inits)
    c = check(m, tmp_path)
    conv, resize = c.graph.layers
    assert conv.kind == "conv" and np.allclose(conv.bias, 0.25) and resize.kind == "resize" and resize.up == (2, 2)
    folded = " ".join(c.graph.notes)
    for node in ("shape", "slice", "gather2", "cast3", "mul2", "floor3", "unsq2", "cat", "zeros", "to_double",
                 "squeeze_b", "const_two"):
        assert f"'{node}'" in folded, node


# ---- networks built on these operators --------------------------------------------------------------

def check_network(m: onnx.ModelProto, tmp_path):
    """A whole network on the reference configuration: SDK vs onnxruntime (metric), functional model
    vs golden (bit-exact)."""
    path = str(tmp_path / "net.onnx")
    onnx.save(m, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ie = microndla.MDLA()
    ie.Compile(path)
    y = ie.Run(x)
    mean, mx = sdk_error_metric(y, ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, f"error {mean:.3f} % / {mx:.3f} % exceeds the budget"
    dla, gold, _, _ = run_both(m, REFERENCE)
    assert_bit_exact(dla, gold)


def test_mobilenet_v2(tmp_path):
    import zoo
    m = zoo.build("mobilenet_v2", input_shape=(1, 3, 32, 32), width=0.35, classes=10)
    assert sum(n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
               for n in m.graph.node) == 17          # one depthwise convolution per inverted residual block
    check_network(m, tmp_path)


@pytest.mark.parametrize("up", ["convtranspose", "nearest", "linear"])
def test_unet(up, tmp_path):
    import zoo
    check_network(zoo.build("unet", input_shape=(1, 3, 32, 32), up=up), tmp_path)


def test_linknet(tmp_path):
    """LinkNet's links are Adds of a decoder's output (after ConvTranspose 3x3/2) and an encoder map."""
    import zoo
    m = zoo.build("linknet", input_shape=(1, 3, 64, 64), base=16)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("ConvTranspose") == 5 and ops.count("Add") == 8 + 3     # 8 residual blocks, 3 links
    check_network(m, tmp_path)


def test_tiny_yolo_v2(tmp_path):
    """A YOLO-style detector: LeakyRelu after every 3x3 conv, and a 2x2 max-pool of stride 1 padded
    at the bottom and right only."""
    import zoo
    m = zoo.build("tiny_yolo_v2", input_shape=(1, 3, 64, 64))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("LeakyRelu") == 8
    assert [list(a.ints) for n in m.graph.node if n.op_type == "MaxPool" for a in n.attribute
            if a.name == "pads"][-1] == [0, 0, 1, 1]
    check_network(m, tmp_path)


def test_linknet_refuses_unusable_sizes():
    import zoo
    with pytest.raises(ValueError, match="base must be a positive multiple of 16"):
        zoo.build("linknet", base=24)
    with pytest.raises(ValueError, match=r"multiples of 32 \(five halvings\), got \(100, 100\)"):
        zoo.build("linknet", input_shape=(1, 3, 100, 100))


def test_mdla_zoo_writes_the_new_models(tmp_path):
    from click.testing import CliRunner

    from runtime.cli import main
    for name in ("mobilenet_v2", "unet", "linknet", "tiny_yolo_v2"):
        result = CliRunner().invoke(main, ["zoo", name, "-o", str(tmp_path / f"{name}.onnx")])
        assert result.exit_code == 0, result.output
        onnx.checker.check_model(onnx.load(str(tmp_path / f"{name}.onnx")))


@pytest.mark.parametrize("flags, images", [({"nclusters": 2, "clustersbatchmode": 1}, 1),
                                           ({"imgs_per_cluster": 4, "mvbatch": 1}, 4)])
def test_pieces_in_parallel_modes(flags, images, tmp_path):
    """The pieces of a layer split over clusters (clustersbatchmode) and run per MV image (mvbatch)
    give the bits of the plain run."""
    import zoo
    path = str(tmp_path / "unet.onnx")
    onnx.save(zoo.build("unet", input_shape=(1, 3, 16, 16), up="linear", depth=2), path)
    x = np.random.default_rng(0).random((images, 3, 16, 16), dtype=np.float32)
    ie = microndla.MDLA()
    ie.Compile(path)
    plain = ie.Run(x[:1])
    ie = microndla.MDLA()
    ie.SetFlag(flags)
    ie.Compile(path)
    y = ie.Run(x)
    assert np.array_equal(y[:1], plain)
