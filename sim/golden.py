"""The golden reference: a numpy evaluation of the graph IR, independent of the ISA, the tiling and
the memory layout (it imports nothing from ``arch.isa`` or ``compiler.codegen``).

* :func:`run_quantized` evaluates the *quantised* graph exactly as the DLA's numerics define it
  (:mod:`arch.numerics`): zero padding, exact integer convolution, ``acc = bq + sum(wq * x)``,
  plus a fused residual shifted into the accumulator's format, then ``requantize`` (round-half-up
  right shift, saturate to 16 bits, the activation, and for a fused Mul the product with the second
  operand, broadcast over the pixels when it is (C, 1, 1)); average pooling as an exact window sum times a 16-bit
  reciprocal (``arch.numerics.average``). The functional model
  and the RTL must match it bit for bit.
* :func:`run_float` evaluates the same graph in float32 with the float weights: the SDK's
  ``Run_th`` (float CPU) path, and the bridge between the compiler and onnxruntime.

Convolutions are one matrix product per layer over an im2col matrix. In the integer path the
product is taken in float64, which is exact here: every product of two int16 values is below
2**30 in magnitude and :mod:`compiler.quantize` rejects reductions longer than
``MachineConfig.max_reduction`` (2**15 terms for a 48-bit accumulator), so every partial sum is an
integer below 2**45 < 2**53 whatever the summation order. For the same reason the accumulator
never wraps, so no ``wrap`` is applied.
"""
from __future__ import annotations

import numpy as np

from arch.numerics import ACT_NAMES, DATA_MAX, DATA_MIN, RES_ADD, RES_MUL, average, float_to_fixed, requantize
from compiler.ir import AvgPool, Conv, Graph, GraphOutput, MaxPool

__all__ = ["run_quantized", "run_float", "output_array", "fixed_inputs"]

_EXACT_LIMIT = 2.0 ** 53


# --------------------------------------------------------------------------------------------
# shared kernels (dtype-generic)
# --------------------------------------------------------------------------------------------

def _pad(x: np.ndarray, pads: tuple[int, int, int, int], value) -> np.ndarray:
    top, left, bottom, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right)), mode="constant", constant_values=value)


def _out_size(n: int, k: int, stride: int, dilation: int) -> int:
    return (n - (k - 1) * dilation - 1) // stride + 1


def _im2col(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
            dtype) -> tuple[np.ndarray, int, int]:
    """(C*kh*kw, OH*OW) matrix of a padded (C, H, W) map, rows in (c, i, j) order like a
    (Cout, C, kh, kw) weight reshaped to (Cout, C*kh*kw)."""
    c, h, w = xp.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh, ow = _out_size(h, kh, sh, dh), _out_size(w, kw, sw, dw)
    if (kh, kw, sh, sw) == (1, 1, 1, 1):
        return xp.reshape(c, h * w).astype(dtype, copy=False), oh, ow
    if (kh, kw) == (h, w) and (dh, dw) == (1, 1):   # the kernel covers the whole map (fully connected)
        return xp.reshape(c * h * w, 1).astype(dtype, copy=False), 1, 1
    cols = np.empty((c, kh, kw, oh, ow), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]
    return cols.reshape(c * kh * kw, oh * ow), oh, ow


def _conv_cols(x: np.ndarray, layer: Conv, dtype) -> tuple[np.ndarray, int, int]:
    """im2col of a Conv's input as the layer defines it: border pixels replicated (``edge``), zeros
    inserted (``up``, a transposed convolution), then the zero padding (negative pads crop)."""
    if layer.edge:
        x = np.pad(x, ((0, 0), (layer.edge, layer.edge), (layer.edge, layer.edge)), mode="edge")
    if layer.up != (1, 1):
        c, h, w = x.shape
        z = np.zeros((c, (h - 1) * layer.up[0] + 1, (w - 1) * layer.up[1] + 1), dtype=x.dtype)
        z[:, ::layer.up[0], ::layer.up[1]] = x
        x = z
    top, left, bottom, right = layer.pads
    x = x[:, max(0, -top):x.shape[1] - max(0, -bottom), max(0, -left):x.shape[2] - max(0, -right)]
    x = _pad(x, tuple(max(0, p) for p in layer.pads), 0)
    return _im2col(x, layer.kernel, layer.stride, layer.dilation, dtype)


def _grouped(w: np.ndarray, cols: np.ndarray, groups: int) -> np.ndarray:
    """(Cout, P) product of a (Cout, Cin/groups, kh, kw) weight with the im2col matrix, group by
    group (output channel group g reads input channel group g only)."""
    cout = w.shape[0]
    if groups == 1:
        return w.reshape(cout, -1) @ cols
    wg = w.reshape(groups, cout // groups, -1)
    return np.matmul(wg, cols.reshape(groups, wg.shape[2], -1)).reshape(cout, -1)


def _counts(layer: AvgPool, hw: tuple[int, int]) -> np.ndarray:
    """(OH, OW) divisor of each window of an AvgPool with ``count_pads``: its pixels inside the
    input extended by count_pads."""
    cp = layer.count_pads
    ones = np.ones((1, hw[0] + cp[0] + cp[2], hw[1] + cp[1] + cp[3]), dtype=np.int64)
    region = AvgPool(layer.name, [], "", "", layer.kernel, layer.stride,
                     tuple(p - c for p, c in zip(layer.pads, cp)))
    return _pool(ones, region, 0, np.add, np.int64)[0]


def _pool(x: np.ndarray, layer: MaxPool | AvgPool, pad_value, reduce=np.maximum, dtype=None) -> np.ndarray:
    """Max (or, with reduce=np.add, sum) over each window of the padded map."""
    xp = _pad(x, layer.pads, pad_value)
    if dtype is not None:
        xp = xp.astype(dtype)
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    oh, ow = _out_size(xp.shape[1], kh, sh, 1), _out_size(xp.shape[2], kw, sw, 1)
    out = None
    for i in range(kh):
        for j in range(kw):
            window = xp[:, i: i + (oh - 1) * sh + 1: sh, j: j + (ow - 1) * sw + 1: sw]
            out = window.copy() if out is None else reduce(out, window, out=out)
    return out


def _check_inputs(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs by GraphInput name (or tensor name), as (C, H, W) arrays; the ONNX shape with batch 1
    is accepted too."""
    result = {}
    for gi in graph.inputs:
        key = gi.name if gi.name in inputs else gi.tensor
        if key not in inputs:
            raise ValueError(f"missing input {gi.name!r}; given: {sorted(inputs)}")
        x = np.asarray(inputs[key])
        shape = graph.tensors[gi.tensor].shape
        if x.shape != shape:
            if x.shape != tuple(gi.onnx_shape):
                raise ValueError(f"input {gi.name!r} has shape {x.shape}; expected {shape} (or {tuple(gi.onnx_shape)})")
            x = x.reshape(shape)
        result[gi.tensor] = x
    return result


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def _concats(graph: Graph, tensors: dict[str, np.ndarray]) -> None:
    """Evaluate every concatenation whose inputs all exist (channel axis)."""
    done = True
    while done:
        done = False
        for cat in graph.concats:
            if cat.output not in tensors and all(t in tensors for t in cat.inputs):
                tensors[cat.output] = np.concatenate([tensors[t] for t in cat.inputs], axis=0)
                done = True


def _residual(tensors: dict[str, np.ndarray], layer: Conv, oh: int, ow: int) -> np.ndarray | None:
    """A Conv's second operand as (Cout, OH*OW); a (C, 1, 1) operand is broadcast over the pixels."""
    if not layer.residual:
        return None
    r = tensors[layer.residual]
    return np.broadcast_to(r, (r.shape[0], oh, ow)).reshape(r.shape[0], -1)


def _float_act(y: np.ndarray, layer: Conv) -> np.ndarray:
    """The float activation of a Conv (what the fixed-point output stage approximates)."""
    if layer.act == "relu":
        return np.maximum(y, 0.0)
    if layer.act == "leaky":
        return np.where(y < 0, y * np.float32(layer.alpha), y)
    if layer.act == "clip":
        lo, hi = layer.clip
        return np.clip(y, -np.inf if lo is None else lo, np.inf if hi is None else hi)
    if layer.act == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    if layer.act == "tanh":
        return np.tanh(y)
    if layer.act == "hardswish":
        return y * np.clip(y + np.float32(3.0), 0.0, 6.0) / np.float32(6.0)
    if layer.act == "silu":
        return y / (np.float32(1.0) + np.exp(-y))
    if layer.act == "mish":
        return (y * np.tanh(np.logaddexp(np.float32(0.0), y))).astype(np.float32)
    return y


def run_quantized(graph: Graph, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """Evaluate the quantised graph on int16 (C, H, W) inputs (keyed by input name).

    Returns (every tensor as int16 (C, H, W), total number of saturations at requantisation)."""
    if not graph.quantized or any(l.wq is None for l in graph.layers if isinstance(l, Conv)):
        raise ValueError(f"graph {graph.name!r} is not quantised; run compiler.quantize.quantize first")
    tensors: dict[str, np.ndarray] = {}
    for name, x in _check_inputs(graph, inputs).items():
        if not np.issubdtype(x.dtype, np.integer) or x.min(initial=0) < DATA_MIN or x.max(initial=0) > DATA_MAX:
            raise ValueError(f"input {name!r} must hold int16 fixed-point values, got {x.dtype}")
        tensors[name] = x.astype(np.int16, copy=False)
    saturations = 0
    for layer in graph.layers:
        _concats(graph, tensors)
        x = tensors[layer.input]
        if isinstance(layer, MaxPool):
            tensors[layer.output] = _pool(x, layer, DATA_MIN)   # int16 minimum == "padding is ignored"
            continue
        if isinstance(layer, AvgPool):   # exact window sum (zero padding), 16-bit reciprocal of the count
            sums = _pool(x, layer, 0, np.add, np.int64)
            if layer.count_pads is None:
                y, sat = average(sums, layer.mul, layer.shift)
            else:
                counts = _counts(layer, x.shape[1:])
                y = np.empty(sums.shape, dtype=np.int16)
                sat = 0
                for n in np.unique(counts):
                    sel = counts == n
                    y[:, sel], s_ = average(sums[:, sel], *layer.muls[int(n)])
                    sat += s_
            tensors[layer.output] = y
            saturations += sat
            continue
        cout = layer.wq.shape[0]
        cols, oh, ow = _conv_cols(x, layer, np.float64)
        w = layer.wq.astype(np.float64)
        assert w[0].size * float(DATA_MAX + 1) ** 2 < _EXACT_LIMIT, "reduction too long for exact float64"
        acc = _grouped(w, cols, layer.groups).astype(np.int64) + layer.bq.astype(np.int64)[:, None]
        res = _residual(tensors, layer, oh, ow)
        y, sat = requantize(acc, layer.shift, ACT_NAMES.index(layer.act), res, layer.res_shift or 0,
                            act_a=layer.act_a, act_b=layer.act_b, mode=RES_MUL if layer.res_op == "mul" else RES_ADD)
        tensors[layer.output] = y.reshape(cout, oh, ow)
        saturations += sat
    _concats(graph, tensors)
    return tensors, saturations


#: run_float's probes: the value a Conv's requantising shift produces (before the activation), where
#: its range matters (the positive side only before ReLU, HardSwish and SiLU, which absorb negative
#: saturation), keyed ``output + PRE``; and a fused Mul's first factor, keyed ``output + GATED``
PRE, GATED = "@pre", "@gated"
_PRE_SIGNED, _PRE_POSITIVE = ("none", "leaky"), ("relu", "hardswish", "silu", "mish")


def run_float(graph: Graph, inputs: dict[str, np.ndarray], probes: dict[str, np.ndarray] | None = None
              ) -> dict[str, np.ndarray]:
    """Evaluate the graph in float32 with its float weights (the SDK's ``Run_th``) on float
    (C, H, W) inputs; returns every tensor as float32 (C, H, W). With ``probes`` (a dict), also
    stores each Conv's fused intermediates there (:data:`PRE`, :data:`GATED`), whose formats
    calibration chooses too."""
    tensors = {name: np.asarray(x, dtype=np.float32) for name, x in _check_inputs(graph, inputs).items()}
    for layer in graph.layers:
        _concats(graph, tensors)
        x = tensors[layer.input]
        if isinstance(layer, MaxPool):
            tensors[layer.output] = _pool(x, layer, -np.inf)
            continue
        if isinstance(layer, AvgPool):
            n = layer.kernel[0] * layer.kernel[1] if layer.count_pads is None else _counts(layer, x.shape[1:])
            tensors[layer.output] = (_pool(x, layer, 0.0, np.add, np.float32) / np.float32(n)).astype(np.float32)
            continue
        cout = layer.weight.shape[0]
        cols, oh, ow = _conv_cols(x, layer, np.float32)
        y = _grouped(layer.weight.astype(np.float32), cols, layer.groups) + layer.bias.astype(np.float32)[:, None]
        res = _residual(tensors, layer, oh, ow)
        if res is not None and layer.res_op == "add":
            y = y + res
        if probes is not None and layer.act in _PRE_SIGNED + _PRE_POSITIVE:
            probes[layer.output + PRE] = y if layer.act in _PRE_SIGNED else np.maximum(y, 0.0)
        y = _float_act(y, layer)
        if res is not None and layer.res_op == "mul":
            if probes is not None:
                probes[layer.output + GATED] = y
            y = y * res
        tensors[layer.output] = y.reshape(cout, oh, ow).astype(np.float32, copy=False)
    _concats(graph, tensors)
    return tensors


def output_array(graph_output: GraphOutput, tensor_chw: np.ndarray) -> np.ndarray:
    """One image's output tensor (C, H, W) in the output's ONNX shape (with its batch dimension 1);
    C-major order, which is the order of ONNX's Flatten/Reshape of NCHW."""
    return np.asarray(tensor_chw).reshape(graph_output.onnx_shape)


def fixed_inputs(graph: Graph, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """Float inputs -> int16 (C, H, W) in each input tensor's format (what the runtime does on the
    host); returns (inputs by name, saturation count)."""
    result, total = {}, 0
    for name, x in _check_inputs(graph, inputs).items():
        frac = graph.tensors[name].frac
        if frac is None:
            raise ValueError(f"graph {graph.name!r} is not quantised; run compiler.quantize.quantize first")
        result[name], sat = float_to_fixed(x, frac)
        total += sat
    return result, total
