"""Single-layer ONNX models for kernel tests (one Conv, one MaxPool, one Gemm, one ConvTranspose,
one Resize, ...), seeded and with weight scales that keep Q8.8 activations O(1) for N(0, 1) inputs."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._util import IR_VERSION, conv_out, he, init, model, tensor

__all__ = ["conv_model", "maxpool_model", "fc_model", "residual_model", "avgpool_model", "activation_model",
           "mul_model", "ACTIVATION_KINDS", "MUL_KINDS", "grouped_conv_model", "conv_transpose_model",
           "resize_model", "upsample_model"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pads(pad: int | tuple[int, ...]) -> tuple[int, int, int, int]:
    """ONNX pads (top, left, bottom, right) from an int, (pad_h, pad_w) or a 4-tuple."""
    if isinstance(pad, int):
        return (pad,) * 4
    if len(pad) == 2:
        return (pad[0], pad[1], pad[0], pad[1])
    return tuple(int(p) for p in pad)


def conv_model(cin: int, cout: int, h: int, w: int, k: int | tuple[int, int], stride: int | tuple[int, int],
               pad: int | tuple[int, ...], dilation: int | tuple[int, int] = 1, bias: bool = True,
               relu: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Input (1, cin, h, w) -> Conv(cout, k, stride, pad, dilation) [-> Relu]."""
    rng = np.random.default_rng(seed)
    kh, kw = _pair(k)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    pads = _pads(pad)
    oh = conv_out(h, kh, sh, pads[0], pads[2], dh)
    ow = conv_out(w, kw, sw, pads[1], pads[3], dw)
    if min(oh, ow) < 1:
        raise ValueError("conv_model: the input is smaller than the kernel window")
    inits = [init("weight", he(rng, (cout, cin, kh, kw), cin * kh * kw))]
    ins = ["input", "weight"]
    if bias:
        inits.append(init("bias", rng.uniform(-0.2, 0.2, cout)))
        ins.append("bias")
    conv_out_name = "conv_out" if relu else "output"
    nodes = [helper.make_node("Conv", ins, [conv_out_name], name="conv", kernel_shape=[kh, kw], strides=[sh, sw],
                              pads=list(pads), dilations=[dh, dw])]
    if relu:
        nodes.append(helper.make_node("Relu", [conv_out_name], ["output"], name="relu"))
    return model("conv", nodes, [tensor("input", (1, cin, h, w))], [tensor("output", (1, cout, oh, ow))], inits)


def maxpool_model(c: int, h: int, w: int, k: int | tuple[int, int], stride: int | tuple[int, int],
                  pad: int | tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
    """Input (1, c, h, w) -> MaxPool(k, stride, pad). ``seed`` is accepted for a uniform interface;
    the model has no weights."""
    kh, kw = _pair(k)
    sh, sw = _pair(stride)
    pads = _pads(pad)
    oh = conv_out(h, kh, sh, pads[0], pads[2])
    ow = conv_out(w, kw, sw, pads[1], pads[3])
    if min(oh, ow) < 1:
        raise ValueError("maxpool_model: the input is smaller than the pooling window")
    nodes = [helper.make_node("MaxPool", ["input"], ["output"], name="pool", kernel_shape=[kh, kw],
                              strides=[sh, sw], pads=list(pads))]
    return model("maxpool", nodes, [tensor("input", (1, c, h, w))], [tensor("output", (1, c, oh, ow))], [])


def fc_model(n_in: int, n_out: int, seed: int = 0) -> onnx.ModelProto:
    """Input (1, n_in) -> Gemm(n_out, transB=1) with bias."""
    rng = np.random.default_rng(seed)
    inits = [init("weight", he(rng, (n_out, n_in), n_in, gain=1.0)),
             init("bias", rng.uniform(-0.2, 0.2, n_out))]
    nodes = [helper.make_node("Gemm", ["input", "weight", "bias"], ["output"], name="fc", transB=1)]
    return model("fc", nodes, [tensor("input", (1, n_in))], [tensor("output", (1, n_out))], inits)


def residual_model(c: int, h: int, w: int, stride: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A residual block's tail, as exported: the input goes through Conv(3x3, stride) ->
    BatchNormalization, a shortcut (the input itself, or a 1x1 strided Conv when the shape changes)
    is added, then Relu. The compiler fuses the Add and the Relu into the 3x3 convolution."""
    from .builder import Builder
    b = Builder("residual", (1, c, h, w), seed)
    y = b.bn(b.conv("input", c, 3, stride, 1))
    short = "input" if stride == 1 else b.conv("input", c, 1, stride, 0)
    return b.finish(b.relu(b.add(y, short)))


def avgpool_model(c: int, h: int, w: int, k: int | None = None, stride: int = 1, pad: int | tuple[int, ...] = 0,
                  count_include_pad: int = 1, ceil_mode: int = 0) -> onnx.ModelProto:
    """Input (1, c, h, w) -> AveragePool(k, stride, pad, count_include_pad, ceil_mode), or
    GlobalAveragePool when ``k`` is None."""
    if k is None:
        nodes = [helper.make_node("GlobalAveragePool", ["input"], ["output"], name="gap")]
        return model("gap", nodes, [tensor("input", (1, c, h, w))], [tensor("output", (1, c, 1, 1))], [])
    pads = _pads(pad)
    size = [(n + b + e - k + (stride - 1 if ceil_mode else 0)) // stride + 1 for n, b, e in ((h, pads[0], pads[2]), (w, pads[1], pads[3]))]
    if ceil_mode:   # a last window starting in the end padding is dropped
        size = [o - 1 if (o - 1) * stride >= n + b else o for o, n, b in zip(size, (h, w), pads[:2])]
    nodes = [helper.make_node("AveragePool", ["input"], ["output"], name="avgpool", kernel_shape=[k, k],
                              strides=[stride, stride], pads=list(pads), count_include_pad=count_include_pad,
                              ceil_mode=ceil_mode)]
    return model("avgpool", nodes, [tensor("input", (1, c, h, w))], [tensor("output", (1, c, *size))], [])


#: activation_model kinds: (ONNX op, attributes, constant inputs (min, max) or None)
ACTIVATION_KINDS = {
    "relu": ("Relu", {}, None),
    "leaky": ("LeakyRelu", {"alpha": 0.1}, None),
    "relu6": ("Clip", {}, (0.0, 6.0)),                       # opset 11+: bounds as constant inputs
    "clip_attr": ("Clip", {"min": -0.5, "max": 1.25}, None),  # opset 10 (Clip-6): bounds as attributes
    "clip_max_only": ("Clip", {}, (None, 0.75)),
    "sigmoid": ("Sigmoid", {}, None),
    "tanh": ("Tanh", {}, None),
}


def activation_model(kind: str, cin: int = 6, cout: int = 20, h: int = 7, w: int = 7, seed: int = 0,
                     **attrs) -> onnx.ModelProto:
    """Input (1, cin, h, w) -> Conv(3x3, pad 1, bias) -> one activation of :data:`ACTIVATION_KINDS`
    (``attrs`` override its attributes, e.g. ``alpha``). ``clip_attr`` is built with opset 10, whose
    Clip (version 6) takes its bounds as attributes; the others with the zoo's opset."""
    op, defaults, bounds = ACTIVATION_KINDS[kind]
    rng = np.random.default_rng(seed)
    inits = [init("weight", he(rng, (cout, cin, 3, 3), cin * 9)), init("bias", rng.uniform(-0.2, 0.2, cout))]
    nodes = [helper.make_node("Conv", ["input", "weight", "bias"], ["conv_out"], name="conv", kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1])]
    ins = ["conv_out"]
    if bounds is not None:
        for name, v in zip(("min", "max"), bounds):
            ins.append("" if v is None else name)
            if v is not None:
                inits.append(numpy_helper.from_array(np.asarray(v, dtype=np.float32), name))
    nodes.append(helper.make_node(op, ins, ["output"], name=kind, **{**defaults, **attrs}))
    io = ([tensor("input", (1, cin, h, w))], [tensor("output", (1, cout, h, w))])
    if kind != "clip_attr":
        return model(kind, nodes, *io, inits)
    m = helper.make_model(helper.make_graph(nodes, kind, *io, initializer=inits),
                          opset_imports=[helper.make_opsetid("", 10)], ir_version=IR_VERSION,
                          producer_name="open-mdla zoo")
    onnx.checker.check_model(m)
    return m


#: mul_model kinds
MUL_KINDS = ("maps", "gate", "se")


def mul_model(kind: str, c: int = 20, h: int = 6, w: int = 6, seed: int = 0) -> onnx.ModelProto:
    """Element-wise products of two computed tensors, from an input (1, c, h, w):

    * ``maps``: Conv(3x3) -> Tanh times Conv(1x1) (two feature maps of the same shape);
    * ``gate``: Conv(3x3) -> Relu times a per-channel gate GlobalAveragePool -> Conv(1x1) -> Relu ->
      Conv(1x1) -> Sigmoid computed from the block's input (C, 1, 1), broadcast over the pixels;
    * ``se``: a true squeeze-excitation block, whose gate is computed from the very feature map it
      multiplies (the DLA cannot fuse that Mul: its operands depend on each other).
    """
    if kind not in MUL_KINDS:
        raise ValueError(f"mul_model: kind must be one of {MUL_KINDS}, got {kind!r}")
    from .builder import Builder
    b = Builder(f"mul_{kind}", (1, c, h, w), seed)
    if kind == "maps":
        x = b.act(b.conv("input", c, 3, 1, 1, bias=True), "Tanh")
        return b.finish(b.mul(x, b.conv("input", c, 1, 1, 0, bias=True)))
    x = b.relu(b.conv("input", c, 3, 1, 1, bias=True))
    src = "input" if kind == "gate" else x
    g = b.relu(b.conv(b.global_avgpool(src), max(1, c // 4), 1, bias=True))
    g = b.act(b.conv(g, c, 1, bias=True), "Sigmoid")
    return b.finish(b.mul(x, g))


def grouped_conv_model(cin: int, cout: int, group: int, h: int, w: int, k: int, stride: int = 1,
                       pad: int | tuple[int, ...] = 0, dilation: int = 1, relu: bool = False,
                       seed: int = 0) -> onnx.ModelProto:
    """Input (1, cin, h, w) -> Conv(cout, k, group) [-> Relu]; group = cin = cout is depthwise."""
    rng = np.random.default_rng(seed)
    pads = _pads(pad)
    oh, ow = conv_out(h, k, stride, pads[0], pads[2], dilation), conv_out(w, k, stride, pads[1], pads[3], dilation)
    fan = cin // group * k * k
    inits = [init("weight", he(rng, (cout, cin // group, k, k), fan)), init("bias", rng.uniform(-0.2, 0.2, cout))]
    out = "conv_out" if relu else "output"
    nodes = [helper.make_node("Conv", ["input", "weight", "bias"], [out], name="conv", group=group, kernel_shape=[k, k],
                              strides=[stride, stride], pads=list(pads), dilations=[dilation, dilation])]
    if relu:
        nodes.append(helper.make_node("Relu", [out], ["output"], name="relu"))
    return model("grouped_conv", nodes, [tensor("input", (1, cin, h, w))], [tensor("output", (1, cout, oh, ow))], inits)


def conv_transpose_model(cin: int, cout: int, h: int, w: int, k: int, stride: int, pad: int | tuple[int, ...] = 0,
                         output_padding: int = 0, group: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Input (1, cin, h, w) -> ConvTranspose(cout, k, stride, pad, output_padding, group)."""
    rng = np.random.default_rng(seed)
    pads = _pads(pad)
    # each output takes about k*k/stride**2 * cin/group terms
    fan = max(1, cin // group * k * k // (stride * stride))
    inits = [init("weight", he(rng, (cin, cout // group, k, k), fan)), init("bias", rng.uniform(-0.2, 0.2, cout))]
    oh = stride * (h - 1) + output_padding + k - pads[0] - pads[2]
    ow = stride * (w - 1) + output_padding + k - pads[1] - pads[3]
    nodes = [helper.make_node("ConvTranspose", ["input", "weight", "bias"], ["output"], name="deconv", group=group,
                              kernel_shape=[k, k], strides=[stride, stride], pads=list(pads),
                              output_padding=[output_padding] * 2)]
    return model("conv_transpose", nodes, [tensor("input", (1, cin, h, w))], [tensor("output", (1, cout, oh, ow))], inits)


def resize_model(c: int, h: int, w: int, scales: tuple[int, int], mode: str = "nearest",
                 coord: str = "asymmetric", nearest_mode: str = "floor", sizes: bool = False) -> onnx.ModelProto:
    """Input (1, c, h, w) -> Resize (opset 13) by integer ``scales`` (given as sizes if ``sizes``)."""
    out = (1, c, h * scales[0], w * scales[1])
    inits = [init("roi", np.zeros(0)), init("scales", np.array([] if sizes else [1, 1, *scales]))]
    ins = ["input", "roi", "scales"]
    if sizes:
        inits.append(onnx.numpy_helper.from_array(np.array(out, dtype=np.int64), "sizes"))
        ins.append("sizes")
    nodes = [helper.make_node("Resize", ins, ["output"], name="resize", mode=mode, coordinate_transformation_mode=coord,
                              nearest_mode=nearest_mode)]
    return model("resize", nodes, [tensor("input", (1, c, h, w))], [tensor("output", out)], inits)


def upsample_model(c: int, h: int, w: int, scale: int, mode: str = "nearest", opset: int = 9) -> onnx.ModelProto:
    """Input (1, c, h, w) -> Upsample (opset 7: scales attribute; 9: scales input) or, with
    opset 10, Resize-10 (asymmetric), by ``scale`` in H and W, as older exporters wrote them."""
    scales = [1.0, 1.0, float(scale), float(scale)]
    if opset == 7:
        nodes, inits = [helper.make_node("Upsample", ["input"], ["output"], name="up", mode=mode, scales=scales)], []
    else:
        op = "Upsample" if opset == 9 else "Resize"
        nodes, inits = [helper.make_node(op, ["input", "scales"], ["output"], name="up", mode=mode)], [init("scales", np.array(scales))]
    graph = helper.make_graph(nodes, "upsample", [tensor("input", (1, c, h, w))],
                              [tensor("output", (1, c, h * scale, w * scale))], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7 if opset < 9 else 8,
                          producer_name="open-mdla zoo")
    onnx.checker.check_model(m)
    return m
