"""The network families real users bring, written node for node as the frameworks' exporters write them
(seeded random weights; no torch, no downloads):

* :func:`mobilenet_v3` -- MobileNetV3 (Howard et al. 2019; torchvision's ``mobilenet_v3_small`` /
  ``_large`` tables): depthwise convolutions, squeeze-excitation gates, HardSwish. ``exporter='torch'``
  writes what ``torch.onnx.export`` writes in eval mode (opset 17): BatchNormalization folded into the
  Conv's bias, ``HardSwish`` ops, the SE gate as ``HardSigmoid(alpha=1/6, beta=0.5)`` and ``Mul``;
  ``exporter='paddle'`` what Paddle2ONNX writes for PaddleOCR's backbones (opset 11): Conv without bias
  then ``BatchNormalization``, hard_swish as ``x * Clip(x + 3, 0, 6) / 6`` (``Add``, ``Clip``, ``Mul``,
  ``Div`` with ``Constant`` nodes), the gate as ``HardSigmoid(alpha=0.2, beta=0.5)``.
  ``pixels=True`` takes raw 0..255 pixels and normalises them in the graph (``Sub`` mean, ``Div`` std).
* :func:`text_direction` -- PaddleOCR's text-line direction classifier: MobileNetV3-small x0.35 on a
  3x48x192 line image, a 2-class ``Gemm`` and ``Softmax``.
* :func:`dbnet` -- PaddleOCR's DBNet text detector: MobileNetV3-large x0.5 backbone, the DB-FPN neck
  (1x1 reductions, nearest ``Resize`` x2 and ``Add`` top-down, 3x3 smoothing, ``Resize`` x8/x4/x2 and
  ``Concat``), the DB head (3x3 conv, two 2x2/2 ``ConvTranspose``, ``Sigmoid`` probability map);
  736x736 inputs.
* :func:`yolo` -- YOLOv8-style detector as ultralytics exports it (opset 17): Conv+BN folded, SiLU as
  ``x * Sigmoid(x)``, C2f blocks (``Split`` into halves, bottlenecks, ``Concat``), SPPF, a PAN neck
  with ``Resize`` and ``Concat``, and the decoupled head: per level ``Concat`` of box (4 x 16 DFL bins)
  and class channels, ``Reshape`` to (N, C, -1), ``Concat`` of the levels, then the decode tail on
  the host (``Split``, DFL ``Reshape``/``Transpose``/``Softmax``/1x1 ``Conv``, anchor grid from
  ``Range``/``Expand``, ``Sub``/``Add``/``Mul`` by strides, ``Sigmoid`` of the classes).
  ``head='yolox'`` writes YOLOX's head instead: per level ``Concat(box, Sigmoid(objectness),
  Sigmoid(classes))``. ``batch`` > 1 exports a fixed batch; ``batch=None`` a dynamic one (the batch
  dimension a ``dim_param`` and the reshapes' targets computed ``Shape -> Gather -> Concat``).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._util import he

__all__ = ["mobilenet_v3", "text_direction", "dbnet", "yolo"]

IR_VERSION = 8


def _div8(v: float) -> int:
    """torchvision's _make_divisible(v, 8)."""
    n = max(8, int(v + 4) // 8 * 8)
    return n + 8 if n < 0.9 * v else n


class _Net:
    """A graph under construction: nodes, initializers, per-tensor shapes and a seeded generator."""

    def __init__(self, name: str, shape, seed: int, exporter: str, opset: int):
        self.name, self.exporter, self.opset = name, exporter, opset
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.shapes = {"input": tuple(shape)}
        self._n = 0

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"/{kind}_{self._n}" if self.exporter == "torch" else f"{kind.lower()}_{self._n}.tmp_0"

    def node(self, op: str, ins: list[str], shape, outs: int = 1, **attrs) -> str | list[str]:
        name = self._id(op)
        names = [f"{name}_output_{i}" for i in range(outs)]
        self.nodes.append(helper.make_node(op, ins, names, name=name, **attrs))
        for n, s in zip(names, shape if outs > 1 else [shape]):
            self.shapes[n] = tuple(s)
        return names if outs > 1 else names[0]

    def const(self, value, dtype=np.float32) -> str:
        """A constant: an initializer from torch's exporter, a ``Constant`` node from Paddle2ONNX."""
        arr = np.asarray(value, dtype=dtype)
        name = self._id("Constant") + "_value"
        if self.exporter == "torch":
            self.inits.append(numpy_helper.from_array(arr, name))
        else:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name)))
        self.shapes[name] = arr.shape
        return name

    def weight(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    # -------------------------------------------------------------------- layers
    def conv(self, x: str, cout: int, k: int, stride: int = 1, group: int = 1, act: str | None = None,
             gain: float = 2.0, bn: bool | None = None) -> str:
        """Conv (+ BatchNormalization for Paddle, folded into the bias for torch) + activation."""
        n, c, h, w = self.shapes[x]
        pad = k // 2
        name = self._id("conv")
        wt = he(self.rng, (cout, c // group, k, k), c // group * k * k, gain)
        bn = self.exporter == "paddle" if bn is None else bn
        ins = [x, self.weight(f"{name}.weight", wt)]
        if not bn:
            ins.append(self.weight(f"{name}.bias", self.rng.normal(0.0, 0.05, cout)))
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        y = self.node("Conv", ins, (n, cout, oh, ow), kernel_shape=[k, k], strides=[stride, stride],
                      pads=[pad] * 4, group=group, dilations=[1, 1])
        if bn:
            p = [self.weight(f"{name}.bn.{s}", v) for s, v in (
                ("scale", self.rng.uniform(0.5, 1.0, cout) * (gain / 2.0) ** 0.5), ("bias", self.rng.normal(0, 0.1, cout)),
                ("mean", self.rng.normal(0, 0.1, cout)), ("var", self.rng.uniform(0.5, 2.0, cout)))]
            y = self.node("BatchNormalization", [y] + p, self.shapes[y], epsilon=1e-5, momentum=0.9)
        return self.act(y, act)

    def act(self, x: str, act: str | None) -> str:
        s = self.shapes[x]
        if act is None:
            return x
        if act == "relu":
            return self.node("Relu", [x], s)
        if act == "hardswish":
            if self.exporter == "torch":
                return self.node("HardSwish", [x], s)
            t = self.node("Add", [x, self.const(3.0)], s)
            t = self.node("Clip", [t, self.const(0.0), self.const(6.0)], s)
            return self.node("Div", [self.node("Mul", [x, t], s), self.const(6.0)], s)
        if act == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x], s)], s)
        if act == "sigmoid":
            return self.node("Sigmoid", [x], s)
        raise ValueError(f"unknown activation {act!r}")

    def se(self, x: str, squeeze: int) -> str:
        n, c, _, _ = self.shapes[x]
        g = self.node("GlobalAveragePool", [x], (n, c, 1, 1))
        g = self.conv(g, squeeze, 1, act="relu", bn=False)
        g = self.conv(g, c, 1, gain=1.0, bn=False)
        alpha = 1.0 / 6.0 if self.exporter == "torch" else 0.2
        g = self.node("HardSigmoid", [g], self.shapes[g], alpha=alpha, beta=0.5)
        return self.node("Mul", [x, g], self.shapes[x])

    def resize(self, x: str, scale: int) -> str:
        n, c, h, w = self.shapes[x]
        scales = self.const([1.0, 1.0, float(scale), float(scale)])
        roi = self.const(np.zeros(0, np.float32))
        return self.node("Resize", [x, roi, scales], (n, c, h * scale, w * scale), mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    def concat(self, xs: list[str], axis: int = 1) -> str:
        s = list(self.shapes[xs[0]])
        s[axis] = sum(self.shapes[x][axis] for x in xs)
        return self.node("Concat", xs, s, axis=axis)

    def finish(self, outputs: list[str], batch_param: bool = False, out_shapes=None) -> onnx.ModelProto:
        def vi(name, shape):
            dims = ["N" if batch_param and i == 0 else d for i, d in enumerate(shape)]
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
        graph = helper.make_graph(self.nodes, self.name, [vi("input", self.shapes["input"])],
                                  [vi(o, (out_shapes or {}).get(o, self.shapes[o])) for o in outputs],
                                  initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=IR_VERSION,
                              producer_name="pytorch" if self.exporter == "torch" else "PaddlePaddle")
        onnx.checker.check_model(m)
        return m


def _balanced(m: onnx.ModelProto, shape, seed: int, passes: int = 6) -> dict[str, np.ndarray]:
    """Rescale each Conv/Gemm (its weight and bias, or the BatchNormalization after it) so that its
    output has unit standard deviation on a random image, as training leaves a network (LSUV-style):
    random He weights alone let the signal fade or grow through HardSwish, gates and projections
    until the output no longer depends on the input. All layers move at once, each by its own
    correction divided by that of the layer feeding it (which scales it already), a few passes.
    Returns the rescaled parameters by initializer name."""
    import onnxruntime as ort
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layers = []          # (measured tensor, initializer names to scale, data input)
    for n in m.graph.node:
        if n.op_type not in ("Conv", "Gemm") or n.input[1] not in inits or n.name.startswith("dfl"):
            continue
        after = consumers.get(n.output[0], [])
        if len(after) == 1 and after[0].op_type == "BatchNormalization":
            layers.append((after[0].output[0], list(after[0].input[1:3]), n.input[0]))
        else:
            layers.append((n.output[0], [i for i in n.input[1:3] if i], n.input[0]))
    if not layers:
        return {}
    measured = {t: k for k, (t, _, _) in enumerate(layers)}

    def upstream(t: str) -> int | None:
        """The nearest balanced layer on the path of the first data input back from ``t``."""
        while t in producer:
            if t in measured:
                return measured[t]
            n = producer[t]
            ins = [i for i in n.input if i and i not in inits and i in producer or i == "input"]
            if not ins:
                return None
            t = ins[0]
        return None
    ups = [upstream(x) for _, _, x in layers]
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.output.extend([onnx.ValueInfoProto(name=t) for t, _, _ in layers])
    x = np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)
    if m.graph.node[0].op_type == "Sub":        # raw pixels
        x *= 255.0
    params = {t.name: t for t in probe.graph.initializer}
    for _ in range(passes):
        outs = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            [t for t, _, _ in layers], {"input": x})
        f = [1.0 / max(float(np.std(y)), 1e-6) for y in outs]
        for k, (_, names, _) in enumerate(layers):
            g = f[k] / (f[ups[k]] if ups[k] is not None else 1.0)
            for name in names:
                t = params[name]
                t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * g).astype(np.float32), name))
    wanted = {name for _, names, _ in layers for name in names}
    return {name: numpy_helper.to_array(params[name]) for name in wanted}


def _trained(build, seed: int, input_shape, proxy_hw: tuple[int, int], **kw) -> onnx.ModelProto:
    """``build(seed, input_shape, **kw)`` with its layers balanced (:func:`_balanced`) on one image of
    ``proxy_hw`` pixels (the weights do not depend on the image size)."""
    shape = tuple(input_shape)
    proxy = build(seed, shape[:2] + tuple(proxy_hw), **kw)
    arrays = _balanced(proxy, proxy.graph.input[0].type.tensor_type.shape.dim and
                       [d.dim_value or 1 for d in proxy.graph.input[0].type.tensor_type.shape.dim], seed)
    m = proxy if tuple(proxy_hw) == shape[2:] else build(seed, shape, **kw)
    for t in m.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))
    return m


# ------------------------------------------------------------------------------------------------
# MobileNetV3
# ------------------------------------------------------------------------------------------------

#: (kernel, expansion, out, SE, activation, stride): torchvision's inverted residual settings
_V3_SMALL = [(3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
             (5, 96, 40, True, "hardswish", 2), (5, 240, 40, True, "hardswish", 1),
             (5, 240, 40, True, "hardswish", 1), (5, 120, 48, True, "hardswish", 1),
             (5, 144, 48, True, "hardswish", 1), (5, 288, 96, True, "hardswish", 2),
             (5, 576, 96, True, "hardswish", 1), (5, 576, 96, True, "hardswish", 1)]
_V3_LARGE = [(3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
             (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
             (3, 240, 80, False, "hardswish", 2), (3, 200, 80, False, "hardswish", 1),
             (3, 184, 80, False, "hardswish", 1), (3, 184, 80, False, "hardswish", 1),
             (3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1),
             (5, 672, 160, True, "hardswish", 2), (5, 960, 160, True, "hardswish", 1),
             (5, 960, 160, True, "hardswish", 1)]


def _v3_features(b: _Net, x: str, table, width: float, taps: tuple[int, ...] = ()) -> tuple[str, list[str]]:
    """Stem and inverted residual blocks; returns (last map, the maps after the blocks in ``taps``)."""
    x = b.conv(x, _div8(16 * width), 3, 2, act="hardswish")
    tapped = []
    for i, (k, exp, out, use_se, act, stride) in enumerate(table):
        cin, e, cout = b.shapes[x][1], _div8(exp * width), _div8(out * width)
        h = b.conv(x, e, 1, act=act) if e != cin else x
        h = b.conv(h, e, k, stride, group=e, act=act)                      # depthwise
        if use_se:
            h = b.se(h, _div8(e // 4))
        h = b.conv(h, cout, 1, gain=0.5)                                   # linear projection
        x = b.node("Add", [x, h], b.shapes[h]) if stride == 1 and cin == cout else h
        if i in taps:
            tapped.append(x)
    return x, tapped


def _normalised_input(b: _Net) -> str:
    """Raw 0..255 pixels normalised in the graph, as exported preprocessing writes it."""
    mean = b.const(np.array([123.675, 116.28, 103.53], np.float32).reshape(1, 3, 1, 1))
    std = b.const(np.array([58.395, 57.12, 57.375], np.float32).reshape(1, 3, 1, 1))
    x = b.node("Sub", ["input", mean], b.shapes["input"])
    return b.node("Div", [x, std], b.shapes["input"])


def mobilenet_v3(seed: int = 0, input_shape=(1, 3, 224, 224), **kw) -> onnx.ModelProto:
    """MobileNetV3: ``size`` 'small' or 'large', ``width``, ``classes``, ``exporter`` 'torch' or
    'paddle', ``pixels`` (raw 0..255 inputs normalised in the graph), ``dynamic_batch`` (the batch
    dimension a ``dim_param``; ``input_shape[0]`` > 1 exports a fixed batch)."""
    return _trained(_mobilenet_v3, seed, input_shape, (96, 96), **kw)


def _mobilenet_v3(seed: int, input_shape=(1, 3, 224, 224), classes: int = 1000, size: str = "small",
                  width: float = 1.0, exporter: str = "torch", pixels: bool = False,
                  dynamic_batch: bool = False) -> onnx.ModelProto:
    b = _Net(f"mobilenet_v3_{size}", input_shape, seed, exporter, 17 if exporter == "torch" else 11)
    x = _normalised_input(b) if pixels else "input"
    x, _ = _v3_features(b, x, _V3_SMALL if size == "small" else _V3_LARGE, width)
    last = _div8(6 * b.shapes[x][1])
    x = b.conv(x, last, 1, act="hardswish")
    n = b.shapes[x][0]
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], (n, last, 1, 1))], (n, last), axis=1)
    hidden = 1024 if size == "small" else 1280
    x = b.node("Gemm", [x, b.weight("classifier.0.weight", he(b.rng, (hidden, last), last)),
                        b.weight("classifier.0.bias", b.rng.normal(0, 0.05, hidden))], (n, hidden), transB=1)
    x = b.act(x, "hardswish")
    x = b.node("Gemm", [x, b.weight("classifier.3.weight", he(b.rng, (classes, hidden), hidden, 1.0)),
                        b.weight("classifier.3.bias", b.rng.normal(0, 0.05, classes))], (n, classes), transB=1)
    return b.finish([x], batch_param=dynamic_batch)


def text_direction(seed: int = 0, input_shape=(1, 3, 48, 192)) -> onnx.ModelProto:
    """PaddleOCR's direction classifier (0 or 180 degrees): MobileNetV3-small x0.35, Softmax."""
    return _trained(_text_direction, seed, input_shape, (48, 192))


def _text_direction(seed: int, input_shape=(1, 3, 48, 192)) -> onnx.ModelProto:
    b = _Net("text_direction", input_shape, seed, "paddle", 11)
    x, _ = _v3_features(b, "input", _V3_SMALL, 0.35)
    x = b.conv(x, 200, 1, act="hardswish")
    n = b.shapes[x][0]
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x], (n, 200, 1, 1))], (n, 200), axis=1)
    x = b.node("Gemm", [x, b.weight("fc.weight", he(b.rng, (200, 2), 200, 1.0)),
                        b.weight("fc.bias", b.rng.normal(0, 0.05, 2))], (n, 2))
    return b.finish([b.node("Softmax", [x], (n, 2), axis=1)])


# ------------------------------------------------------------------------------------------------
# DBNet
# ------------------------------------------------------------------------------------------------

def dbnet(seed: int = 0, input_shape=(1, 3, 736, 736), **kw) -> onnx.ModelProto:
    """DBNet as PaddleOCR's det_mv3_db exports it (MobileNetV3-large x0.5, DB-FPN, DB head)."""
    return _trained(_dbnet, seed, input_shape, (128, 128), **kw)


def _dbnet(seed: int, input_shape=(1, 3, 736, 736), inner: int = 96) -> onnx.ModelProto:
    b = _Net("dbnet", input_shape, seed, "paddle", 11)
    _, (c2, c3, c4, c5) = _v3_features(b, "input", _V3_LARGE, 0.5, taps=(2, 5, 11, 14))
    in2, in3, in4, in5 = (b.conv(c, inner, 1, bn=False) for c in (c2, c3, c4, c5))
    out4 = b.node("Add", [in4, b.resize(in5, 2)], b.shapes[in4])
    out3 = b.node("Add", [in3, b.resize(out4, 2)], b.shapes[in3])
    out2 = b.node("Add", [in2, b.resize(out3, 2)], b.shapes[in2])
    p5, p4, p3, p2 = (b.conv(t, inner // 4, 3, bn=False) for t in (in5, out4, out3, out2))
    fuse = b.concat([b.resize(p5, 8), b.resize(p4, 4), b.resize(p3, 2), p2])
    h = b.conv(fuse, inner // 4, 3, act="relu")
    n, c, hh, ww = b.shapes[h]
    for cout, last in ((inner // 4, False), (1, True)):
        name = b._id("deconv")
        ins = [h, b.weight(f"{name}.weight", he(b.rng, (b.shapes[h][1], cout, 2, 2), b.shapes[h][1]))]
        ins.append(b.weight(f"{name}.bias", b.rng.normal(0, 0.05, cout)))
        hh, ww = 2 * hh, 2 * ww
        h = b.node("ConvTranspose", ins, (n, cout, hh, ww), kernel_shape=[2, 2], strides=[2, 2])
        if not last:
            p = [b.weight(f"{name}.bn.{s}", v) for s, v in (
                ("scale", b.rng.uniform(0.5, 1.0, cout)), ("bias", b.rng.normal(0, 0.1, cout)),
                ("mean", b.rng.normal(0, 0.1, cout)), ("var", b.rng.uniform(0.5, 2.0, cout)))]
            h = b.node("Relu", [b.node("BatchNormalization", [h] + p, b.shapes[h], epsilon=1e-5)], b.shapes[h])
    return b.finish([b.node("Sigmoid", [h], b.shapes[h])])


# ------------------------------------------------------------------------------------------------
# YOLO
# ------------------------------------------------------------------------------------------------

def _c2f(b: _Net, x: str, cout: int, n: int, shortcut: bool) -> str:
    """ultralytics C2f: 1x1 conv, Split into two halves, n bottlenecks on the second, Concat, 1x1."""
    c = cout // 2
    y = b.conv(x, 2 * c, 1, act="silu")
    nb, _, h, w = b.shapes[y]
    halves = b.node("Split", [y, b.const(np.array([c, c], np.int64), np.int64)], [(nb, c, h, w)] * 2, outs=2,
                    axis=1)
    parts = list(halves)
    for _ in range(n):
        t = b.conv(b.conv(parts[-1], c, 3, act="silu"), c, 3, act="silu", gain=1.0)
        parts.append(b.node("Add", [parts[-1], t], b.shapes[t]) if shortcut else t)
    return b.conv(b.concat(parts), cout, 1, act="silu")


def _sppf(b: _Net, x: str) -> str:
    c = b.shapes[x][1]
    y = b.conv(x, c // 2, 1, act="silu")
    pools = [y]
    for _ in range(3):
        pools.append(b.node("MaxPool", [pools[-1]], b.shapes[y], kernel_shape=[5, 5], strides=[1, 1],
                            pads=[2, 2, 2, 2]))
    return b.conv(b.concat(pools), c, 1, act="silu")


def _grid(b: _Net, h: int, w: int, stride: int) -> str:
    """Anchor centres (2, h*w) of one level built in the graph: Range, Reshape, Expand, Concat."""
    ys = b.node("Range", [b.const(0.5), b.const(float(h)), b.const(1.0)], (h,))
    xs = b.node("Range", [b.const(0.5), b.const(float(w)), b.const(1.0)], (w,))
    ys = b.node("Expand", [b.node("Reshape", [ys, b.const([h, 1], np.int64)], (h, 1)), b.const([h, w], np.int64)],
                (h, w))
    xs = b.node("Expand", [b.node("Reshape", [xs, b.const([1, w], np.int64)], (1, w)), b.const([h, w], np.int64)],
                (h, w))
    g = b.concat([b.node("Reshape", [t, b.const([1, h * w], np.int64)], (1, h * w)) for t in (xs, ys)], axis=0)
    return b.node("Mul", [g, b.const(float(stride))], (2, h * w))


def _batch_reshape(b: _Net, x: str, tail: list[int], shape, dynamic: bool) -> str:
    """Reshape to (N, *tail): the batch from Shape -> Gather -> Unsqueeze -> Concat when dynamic."""
    if not dynamic:
        return b.node("Reshape", [x, b.const([shape[0]] + tail, np.int64)], shape)
    n = b.node("Gather", [b.node("Shape", [x], (4,)), b.const(0, np.int64)], (), axis=0)
    n = b.node("Unsqueeze", [n, b.const([0], np.int64)], (1,))
    target = b.node("Concat", [n, b.const(tail, np.int64)], (1 + len(tail),), axis=0)
    return b.node("Reshape", [x, target], shape)


def yolo(seed: int = 0, input_shape=(1, 3, 640, 640), **kw) -> onnx.ModelProto:
    """YOLOv8-style detector: ``classes``, ``width``/``depth`` (yolov8n's by default), ``head``
    'v8' or 'yolox', ``batch`` (None: dynamic)."""
    return _trained(_yolo, seed, input_shape, (128, 128), **kw)


def _yolo(seed: int, input_shape=(1, 3, 640, 640), classes: int = 80, width: float = 0.25, depth: float = 0.34,
          head: str = "v8", batch: int | None = 1, reg_max: int = 16) -> onnx.ModelProto:
    if head not in ("v8", "yolox"):
        raise ValueError(f"yolo: head must be 'v8' or 'yolox', got {head!r}")
    dynamic = batch is None
    shape = (1 if dynamic else batch,) + tuple(input_shape[1:])
    b = _Net(f"yolo_{head}", shape, seed, "torch", 17)
    ch = [max(16, int(c * width) // 8 * 8) for c in (64, 128, 256, 512, 1024)]

    def reps(n):
        return max(round(n * depth), 1)
    x = b.conv(b.conv("input", ch[0], 3, 2, act="silu"), ch[1], 3, 2, act="silu")
    x = _c2f(b, x, ch[1], reps(3), True)
    p3 = _c2f(b, b.conv(x, ch[2], 3, 2, act="silu"), ch[2], reps(6), True)
    p4 = _c2f(b, b.conv(p3, ch[3], 3, 2, act="silu"), ch[3], reps(6), True)
    p5 = _sppf(b, _c2f(b, b.conv(p4, ch[4], 3, 2, act="silu"), ch[4], reps(3), True))
    n4 = _c2f(b, b.concat([b.resize(p5, 2), p4]), ch[3], reps(3), False)
    n3 = _c2f(b, b.concat([b.resize(n4, 2), p3]), ch[2], reps(3), False)
    m4 = _c2f(b, b.concat([b.conv(n3, ch[2], 3, 2, act="silu"), n4]), ch[3], reps(3), False)
    m5 = _c2f(b, b.concat([b.conv(m4, ch[3], 3, 2, act="silu"), p5]), ch[4], reps(3), False)
    levels = []
    nb = shape[0]
    for f, stride in ((n3, 8), (m4, 16), (m5, 32)):
        _, _, h, w = b.shapes[f]
        cb, cc = max(16, ch[2] // 4, 4 * reg_max // 4), max(ch[2], min(classes, 100))
        box = b.conv(b.conv(b.conv(f, cb, 3, act="silu"), cb, 3, act="silu"), 4 * (reg_max if head == "v8" else 1),
                     1, gain=1.0, bn=False)
        cls = b.conv(b.conv(b.conv(f, cc, 3, act="silu"), cc, 3, act="silu"), classes, 1, gain=1.0, bn=False)
        if head == "v8":
            y = b.concat([box, cls])
        else:
            obj = b.conv(b.conv(f, cb, 3, act="silu"), 1, 1, gain=1.0, bn=False)
            y = b.concat([box, b.act(obj, "sigmoid"), b.act(cls, "sigmoid")])
        c = b.shapes[y][1]
        levels.append((_batch_reshape(b, y, [c, -1], (nb, c, h * w), dynamic), h, w, stride))
    y = b.concat([t for t, *_ in levels], axis=2)
    total = b.shapes[y][2]
    anchors = b.concat([_grid(b, h, w, s) for _, h, w, s in levels], axis=1)          # (2, A), pixels
    strides = b.const(np.concatenate([np.full(h * w, s, np.float32) for _, h, w, s in levels])[None])
    if head == "v8":
        dist, cls = b.node("Split", [y, b.const([4 * reg_max, classes], np.int64)],
                           [(nb, 4 * reg_max, total), (nb, classes, total)], outs=2, axis=1)
        d = _batch_reshape(b, dist, [4, reg_max, total], (nb, 4, reg_max, total), False) if not dynamic else \
            b.node("Reshape", [dist, b.const([-1, 4, reg_max, total], np.int64)], (nb, 4, reg_max, total))
        d = b.node("Softmax", [b.node("Transpose", [d], (nb, reg_max, 4, total), perm=[0, 2, 1, 3])],
                   (nb, reg_max, 4, total), axis=1)
        dfl = b.weight("dfl.conv.weight", np.arange(reg_max, dtype=np.float32).reshape(1, reg_max, 1, 1))
        d = b.node("Conv", [d, dfl], (nb, 1, 4, total), kernel_shape=[1, 1])
        d = b.node("Reshape", [d, b.const([-1, 4, total], np.int64)], (nb, 4, total))
        lt, rb = b.node("Split", [d, b.const([2, 2], np.int64)], [(nb, 2, total)] * 2, outs=2, axis=1)
        grid = b.node("Div", [anchors, strides], (2, total))
        x1y1 = b.node("Sub", [grid, lt], (nb, 2, total))
        x2y2 = b.node("Add", [grid, rb], (nb, 2, total))
        cxy = b.node("Div", [b.node("Add", [x1y1, x2y2], (nb, 2, total)), b.const(2.0)], (nb, 2, total))
        wh = b.node("Sub", [x2y2, x1y1], (nb, 2, total))
        boxes = b.node("Mul", [b.concat([cxy, wh]), strides], (nb, 4, total))
        out = b.concat([boxes, b.node("Sigmoid", [cls], (nb, classes, total))])
    else:
        reg, rest = b.node("Split", [y, b.const([4, 1 + classes], np.int64)],
                           [(nb, 4, total), (nb, 1 + classes, total)], outs=2, axis=1)
        xy, wh = b.node("Split", [reg, b.const([2, 2], np.int64)], [(nb, 2, total)] * 2, outs=2, axis=1)
        xy = b.node("Add", [b.node("Mul", [xy, strides], (nb, 2, total)),
                            b.node("Sub", [anchors, b.node("Mul", [strides, b.const(0.5)], (1, total))], (2, total))],
                    (nb, 2, total))
        wh = b.node("Mul", [b.node("Exp", [wh], (nb, 2, total)), strides], (nb, 2, total))
        out = b.concat([xy, wh, rest])
    out = b.node("Transpose", [out], (nb, total, b.shapes[out][1]), perm=[0, 2, 1])
    return b.finish([out], batch_param=dynamic)
