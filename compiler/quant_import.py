"""Front end, quantised ONNX models: 8-bit graphs imported as float graphs, which the compiler then
quantises to the DLA's own 16-bit formats (canonicalisation steps, :mod:`compiler.frontend_canon`).

The DLA computes in 16-bit fixed point with 48-bit accumulators, finer than any 8-bit model, so an
8-bit model is taken for what it approximates: its weights are dequantised (exact: ``(q - zero
point) x scale`` of 8-bit integers is a float the DLA's weight format then rounds to 16 bits), and
its activation quantisation (the 8-bit rounding onnxruntime would apply between layers) is
dropped; the activations' scales are kept as hints of their ranges (noted, and left in the model
metadata for ``Graph.range_hints``), from which the formats are chosen as from calibrated ranges:
the hinted tensors from their hints and the others Q8.8 when ``Compile`` has no samples, every
tensor from the larger of its calibrated range and its hint when it has (:func:`activation_ranges`
states the rule). What is rewritten:

* **QDQ** (``QuantizeLinear -> DequantizeLinear`` on an activation): the pair is the identity
  (``DequantizeLinear`` of constant weights and biases is folded into float constants by the
  constant folding before);
* **QOperator** ``QLinearConv``, ``QLinearMatMul``, ``com.microsoft.QGemm``: ``DequantizeLinear``
  of the input, the float Conv/MatMul/Gemm with dequantised weights and bias, ``QuantizeLinear``
  of the output (which the QDQ rule then removes where a ``DequantizeLinear`` follows);
* **dynamic** ``DynamicQuantizeLinear -> ConvInteger/MatMulInteger -> Cast -> Mul(x_scale x
  w_scale)`` (what ``onnxruntime.quantization.quantize_dynamic`` writes): the float Conv/MatMul of
  the unquantised input by the dequantised weights;
* ``com.microsoft.DynamicQuantizeLSTM``: an ONNX LSTM with dequantised weights (then split as
  every LSTM is, :mod:`compiler.frontend_seq`).
"""
from __future__ import annotations

import numpy as np
from onnx import helper

__all__ = ["QUANT_STEPS", "PRE_FOLD_STEPS", "constant_dequantise", "save_hints", "read_hints", "hinted_ranges", "activation_ranges", "qdq_pairs", "qoperators", "dynamic_products", "dynamic_lstm", "activation_hints"]

_MS = "com.microsoft"


def _where(node) -> str:
    dom = "" if node.domain in ("", "ai.onnx") else node.domain + "."
    return f"node '{node.name or node.op_type}' ({dom}{node.op_type})"


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dequantise(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int = 0) -> np.ndarray:
    """(q - zero) * scale in float32, with per-axis scale/zero point broadcast along ``axis``."""
    q = q.astype(np.float64)
    scale = np.asarray(scale, np.float64)
    zero = np.zeros_like(scale) if zero is None else np.asarray(zero, np.float64)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _const(g, name: str):
    return None if not name else g.consts.get(name)


def constant_dequantise(g) -> bool:
    """DequantizeLinear of constant weights and biases into float constants (numpy: onnx.reference
    has no DequantizeLinear before opset 19, so the general constant folding cannot evaluate it)."""
    from onnx import numpy_helper
    changed = False
    for node in list(g.g.node):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx", _MS):
            continue
        ins = [i for i in node.input if i]
        if not all(i in g.consts for i in ins) or node.output[0] in g.outputs:
            continue
        attrs = _attrs(node)
        if attrs.get("block_size", 0):
            continue
        q = np.asarray(g.consts[node.input[0]])
        axis = int(attrs.get("axis", 1)) % max(q.ndim, 1)
        value = _dequantise(q, g.consts[node.input[1]], _const(g, node.input[2] if len(node.input) > 2 else ""), axis)
        out = node.output[0]
        g.consts[out] = value
        g.g.initializer.append(numpy_helper.from_array(value, out))
        g.remove(node)
        g.notes.append(f"folded {_where(node)} of constants into float constant {out!r}")
        changed = True
    return changed


def qdq_pairs(g) -> bool:
    """DequantizeLinear(QuantizeLinear(x)) with the same scale and zero point: x (a range hint)."""
    changed = False
    producers = g.producers()
    for node in list(g.g.node):
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx", _MS):
            continue
        q = producers.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in g.consts:
            continue
        same = all(_same(g, a, b) for a, b in zip(list(q.input[1:3]) + [""] * 2, list(node.input[1:3]) + [""] * 2))
        if not same:
            continue
        lo_hi = _hint(g, q)
        if lo_hi is not None:
            g.activation_hints[node.output[0]] = max(abs(lo_hi[0]), abs(lo_hi[1]))
        if lo_hi is not None and lo_hi[0] >= 0 and not _bounded(g, q.input[0], *lo_hi, producers):
            # an unsigned range starting at 0 clamps the negatives: the ReLU (or ReLU6) the
            # quantiser fused into it (onnxruntime.quantization drops such Relu nodes)
            base = node.name or "qdq"
            g.insert_before(node, [helper.make_node(
                "Clip", [q.input[0], g.const(np.float32(lo_hi[0]), base + "_lo"), g.const(np.float32(lo_hi[1]), base + "_hi")],
                [node.output[0]], name=base + "_clip")])
            g.remove(node)
            g.notes.append(f"{_where(node)}: the QuantizeLinear -> DequantizeLinear pair of an unsigned range is "
                           f"Clip({lo_hi[0]:.4g}, {lo_hi[1]:.4g}) (the ReLU the quantiser fused into it)")
        else:
            g.alias(node, q.input[0], "a QuantizeLinear -> DequantizeLinear pair (8-bit rounding of a signed range; "
                                      "the DLA keeps 16 bits)")
        if q.output[0] not in g.outputs and not any(q.output[0] in n.input for n in g.g.node):
            g.remove(q)
        changed = True
        producers = g.producers()
    return changed


#: ops whose output lies within the range of their (first) input
_RANGE_KEEPING = ("MaxPool", "Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Transpose", "GlobalMaxPool")


def _bounded(g, t: str, lo: float, hi: float, producers) -> bool:
    """Whether tensor t already lies in [lo, hi]: a Clip within the bounds, seen through ops that
    keep their input's range (the Clip of an earlier pair before a MaxPool)."""
    for _ in range(16):
        n = producers.get(t)
        if n is None:
            return False
        if n.op_type == "Clip" and len(n.input) >= 3:
            a, b = g.scalar(n.input[1]), g.scalar(n.input[2])
            return a is not None and b is not None and a >= lo - 1e-6 * abs(lo) and b <= hi + 1e-6 * abs(hi)
        if n.op_type not in _RANGE_KEEPING:
            return False
        t = n.input[0]
    return False


def _same(g, a: str, b: str) -> bool:
    if a == b:
        return True
    va, vb = _const(g, a), _const(g, b)
    if va is None and vb is None:
        return not a and not b
    if va is None or vb is None:
        return bool(np.all(np.asarray(va if va is not None else vb) == 0))      # absent zero point is 0
    return va.shape == vb.shape and bool(np.array_equal(va, vb))


def _hint(g, qnode) -> tuple[float, float] | None:
    """Record the range QuantizeLinear's scale and zero point give its input (a calibration hint);
    the range, or None if the scale is not a constant."""
    scale, zero = _const(g, qnode.input[1]), _const(g, qnode.input[2] if len(qnode.input) > 2 else "")
    if scale is None:
        return None
    dtype = zero.dtype if zero is not None else np.dtype(np.uint8)
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is None:
        return None
    z = np.asarray(0 if zero is None else zero, np.float64)
    s = np.asarray(scale, np.float64)
    lo, hi = float(np.min((info.min - z) * s)), float(np.max((info.max - z) * s))
    hints = g.activation_hints
    hints[qnode.input[0]] = max(abs(lo), abs(hi))
    g.notes.append(f"activation range hint of {qnode.input[0]!r} from {_where(qnode)}: [{lo:.4g}, {hi:.4g}]")
    return lo, hi


#: the model metadata key under which canonicalisation leaves the hints for the front end
HINTS_KEY = "com.microndla.activation_ranges"


def activation_hints(g) -> dict[str, float]:
    return dict(getattr(g, "activation_hints", {}) or {})


#: ops whose output holds the same values as their first input, rearranged
_VIEWS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")


def _spread_hints(g, hints: dict[str, float]) -> None:
    """A view's input and output have the same max |value|: a hint on either is one on both (the
    channel form of a token tensor that canonicalisation wrote, a DLA stage's tensor, gets the
    hint of the token tensor the QDQ pair was on; ``g.range_aliases`` lists such pairs whose views
    canonicalisation has removed since)."""
    pairs = [(n.input[0], n.output[0]) for n in g.g.node
             if n.op_type in _VIEWS and n.domain in ("", "ai.onnx") and n.input and n.output]
    pairs += list(getattr(g, "range_aliases", ()))      # layouts of one tensor whose views are gone
    changed = True
    while changed:
        changed = False
        for a, b in pairs:
            if a in hints and b not in hints:
                hints[b] = hints[a]
                changed = True
            elif b in hints and a not in hints and a not in g.consts:
                hints[a] = hints[b]
                changed = True


def save_hints(g) -> None:
    """Leave the activation range hints (tensor -> max |value|) in the model's metadata, where the
    front end reads them into ``Graph.range_hints``."""
    import json
    hints = activation_hints(g)
    if not hints:
        return
    _spread_hints(g, hints)
    for prop in list(g.proto.metadata_props):
        if prop.key == HINTS_KEY:
            g.proto.metadata_props.remove(prop)
    g.proto.metadata_props.add(key=HINTS_KEY, value=json.dumps(hints))


def read_hints(proto) -> dict[str, float]:
    import json
    return next((json.loads(p.value) for p in proto.metadata_props if p.key == HINTS_KEY), {})


def hinted_ranges(graph) -> dict[str, float] | None:
    """Calibration hints from a quantised model's activation scales: max |value| of every activation
    tensor of the graph that has one (a QDQ pair on it, or on what it equals after the import), or
    None if none has. The coverage may be partial (a model quantised with some nodes or operator
    types excluded): :func:`activation_ranges` says what the other tensors get."""
    hints = getattr(graph, "range_hints", None) or {}
    found = {t: float(hints[t]) for t in graph.tensors if t in hints}
    return found or None


def activation_ranges(graph, calibrated: dict[str, float] | None) -> tuple[dict[str, float] | None, str | None]:
    """The ranges :func:`compiler.quantize.quantize` chooses the activation formats from, and a note
    saying where they came from. The rule:

    * neither hints nor samples: None (every activation Q8.8);
    * hints only: the hinted tensors' formats from their hints, every other tensor Q8.8 (the
      ranges are partial; ``quantize(..., missing_frac=cfg.default_frac)``);
    * samples only: the calibrated ranges (every tensor);
    * both: per tensor the larger of the calibrated range and the hint, so the format holds the
      samples' values and the range the quantised model was calibrated for (8-bit scales are
      chosen on the quantiser's own calibration set, which the samples may not cover, and the
      samples may go beyond it: the larger of the two saturates on neither)."""
    hints = hinted_ranges(graph)
    if calibrated is None:
        if hints is None:
            return None, None
        n, total = len(hints), len(graph.tensors)
        return hints, (f"activation formats from the quantised model's activation scales (calibration hints) "
                       f"for {n} of {total} tensors" + ("" if n == total else "; the others Q8.8"))
    if hints is None:
        return calibrated, None
    ranges = dict(calibrated)
    raised = 0
    for t, h in hints.items():
        if h > ranges.get(t, 0.0):
            ranges[t] = h
            raised += 1
    return ranges, (f"activation formats from the calibration samples and the quantised model's activation scales "
                    f"(calibration hints for {len(hints)} of {len(graph.tensors)} tensors; each tensor's range is "
                    f"the larger of the two, the hint for {raised})")


def qoperators(g) -> bool:
    """QLinearConv / QLinearMatMul / com.microsoft.QGemm with constant weights: DQ -> float op -> Q."""
    changed = False
    for node in list(g.g.node):
        op = node.op_type
        if op not in ("QLinearConv", "QLinearMatMul", "QGemm") or (op == "QGemm") != (node.domain == _MS):
            continue
        ins = list(node.input) + [""] * (9 - len(node.input))
        if op in ("QLinearConv", "QLinearMatMul"):
            x, xs, xz, w, ws, wz, ys, yz = ins[:8]
            bias = ins[8] if op == "QLinearConv" else ""
        else:                                           # QGemm: A, a_s, a_zp, B, b_s, b_zp, C, y_s, y_zp
            x, xs, xz, w, ws, wz, bias, ys, yz = ins[:9]
        if any(_const(g, n) is None for n in (xs, w, ws)) or (wz and _const(g, wz) is None) or (
                bias and _const(g, bias) is None):
            continue
        attrs = _attrs(node)
        W = np.asarray(g.consts[w])
        if op == "QLinearConv":
            wf, axis = _dequantise(W, g.consts[ws], _const(g, wz), 0), 0
        elif op == "QLinearMatMul":
            wf = _dequantise(W, g.consts[ws], _const(g, wz), W.ndim - 1)
        else:
            wf = _dequantise(W, g.consts[ws], _const(g, wz), 0 if attrs.get("transB", 0) else W.ndim - 1)
        base = node.name or op
        xf = g.fresh(base + "_x")
        new = [helper.make_node("DequantizeLinear", [x, xs] + ([xz] if xz else []), [xf], name=base + "_dequantise")]
        float_ins = [xf, g.const(wf, base + "_w")]
        if bias:
            b = np.asarray(g.consts[bias], np.float64)
            if op == "QGemm":
                alpha = float(attrs.get("alpha", 1.0))
                bf = b * np.asarray(g.consts[xs], np.float64) * np.asarray(g.consts[ws], np.float64) * alpha
            else:
                bf = b * np.asarray(g.consts[xs], np.float64) * np.asarray(g.consts[ws], np.float64)
            float_ins.append(g.const(bf.astype(np.float32), base + "_b"))
        out = node.output[0]
        y = g.fresh(base + "_y") if ys else out
        float_op = {"QLinearConv": "Conv", "QLinearMatMul": "MatMul", "QGemm": "Gemm"}[op]
        fnode = helper.make_node(float_op, float_ins, [y], name=base)
        keep = {"Conv": ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"), "MatMul": (),
                "Gemm": ("alpha", "transA", "transB")}[float_op]
        fnode.attribute.extend(a for a in node.attribute if a.name in keep)
        new.append(fnode)
        if ys:
            new.append(helper.make_node("QuantizeLinear", [y, ys] + ([yz] if yz else []), [out], name=base + "_quantise"))
        g.insert_before(node, new)
        g.remove(node)
        g.notes.append(f"{_where(node)}: dequantised to {float_op} (8-bit weights as floats; the DLA requantises "
                       f"them to its 16-bit formats)")
        changed = True
    return changed


def dynamic_products(g) -> bool:
    """DynamicQuantizeLinear -> ConvInteger/MatMulInteger -> Cast -> Mul(x_scale * w_scale): the
    float product of the unquantised input by the dequantised weights."""
    changed = False
    producers, consumers = g.producers(), g.consumers()
    for node in list(g.g.node):
        if node.op_type not in ("ConvInteger", "MatMulInteger") or node.domain not in ("", "ai.onnx"):
            continue
        ins = list(node.input) + [""] * (4 - len(node.input))
        a, w, az, wz = ins[:4]
        dql = producers.get(a)
        if dql is None or dql.op_type != "DynamicQuantizeLinear" or (az and az != dql.output[2]) or \
                _const(g, w) is None or (wz and _const(g, wz) is None):
            continue
        cast = consumers.get(node.output[0], [])
        if len(cast) != 1 or cast[0].op_type != "Cast":
            continue
        muls = consumers.get(cast[0].output[0], [])
        if len(muls) != 1 or muls[0].op_type != "Mul":
            continue
        mul = muls[0]
        scale_in = mul.input[1] if mul.input[0] == cast[0].output[0] else mul.input[0]
        sm = producers.get(scale_in)
        if sm is None or sm.op_type != "Mul" or dql.output[1] not in sm.input:
            continue
        ws_name = sm.input[1] if sm.input[0] == dql.output[1] else sm.input[0]
        if _const(g, ws_name) is None:
            continue
        W = np.asarray(g.consts[w])
        ws = np.asarray(g.consts[ws_name], np.float64)
        if node.op_type == "ConvInteger":
            wf = _dequantise(W, ws.reshape(-1), _const(g, wz), 0)
            fnode = helper.make_node("Conv", [dql.input[0], g.const(wf, (node.name or "conv") + "_w")], [mul.output[0]],
                                     name=node.name or "conv")
            fnode.attribute.extend(node.attribute)
        else:
            wz_v = _const(g, wz)
            wf = _dequantise(W, ws.reshape(-1), None if wz_v is None else wz_v.reshape(-1), W.ndim - 1)
            fnode = helper.make_node("MatMul", [dql.input[0], g.const(wf, (node.name or "matmul") + "_w")],
                                     [mul.output[0]], name=node.name or "matmul")
        g.insert_before(mul, [fnode])
        for n in (mul, cast[0], node):
            g.remove(n)
        if not any(o in {i for n in g.g.node for i in n.input} for o in sm.output):
            g.remove(sm)
        if not any(o in {i for n in g.g.node for i in n.input} for o in dql.output if o):
            g.remove(dql)
        g.notes.append(f"{_where(node)} of {_where(dql)}: the float {fnode.op_type} of the unquantised input by the "
                       f"dequantised weights")
        changed = True
        producers, consumers = g.producers(), g.consumers()
    return changed


def dynamic_lstm(g) -> bool:
    """com.microsoft.DynamicQuantizeLSTM: an ONNX LSTM with dequantised W (D, I, 4H) -> (D, 4H, I)."""
    changed = False
    for node in list(g.g.node):
        if node.op_type != "DynamicQuantizeLSTM" or node.domain != _MS:
            continue
        ins = list(node.input) + [""] * (12 - len(node.input))
        x, w, r, b, seq, h0, c0, p, ws, wz, rs, rz = ins[:12]
        if any(_const(g, n) is None for n in (w, r, ws, rs)):
            continue

        def deq(q, s, z):
            q = np.asarray(g.consts[q])
            s = np.asarray(g.consts[s], np.float64)
            zv = _const(g, z)
            zv = np.zeros_like(s) if zv is None else np.asarray(zv, np.float64)
            shape = (q.shape[0], 1, -1) if s.ndim == 2 else (q.shape[0], 1, 1)
            return ((q.astype(np.float64) - zv.reshape(shape)) * s.reshape(shape)).transpose(0, 2, 1).astype(np.float32)
        base = node.name or "lstm"
        new_ins = [x, g.const(deq(w, ws, wz), base + "_W"), g.const(deq(r, rs, rz), base + "_R"), b, seq, h0, c0, p]
        while new_ins and not new_ins[-1]:
            new_ins.pop()
        lstm = helper.make_node("LSTM", new_ins, list(node.output), name=base)
        lstm.attribute.extend(node.attribute)
        g.insert_before(node, [lstm])
        g.remove(node)
        g.notes.append(f"{_where(node)}: an LSTM with dequantised weights")
        changed = True
    return changed


#: the canonicalisation steps of this module, in order (constant_dequantise runs before the
#: general constant folding of each round)
QUANT_STEPS = (dynamic_lstm, dynamic_products, qoperators, qdq_pairs)
PRE_FOLD_STEPS = (constant_dequantise,)
