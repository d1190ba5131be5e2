"""Front end, sequences: products over tokens and recurrent layers, rewritten into DLA layers
and host operators during canonicalisation (:mod:`compiler.frontend_canon` calls the steps here).

**Products over tokens.** A ``MatMul`` of a token tensor by a constant matrix, ``(1, T, K) x (K, N)``
(also ``(T, 1, K)``, ``(1, 1, T, K)``: any shape whose dimensions other than the last are 1 except
one, the token axis; and ``Gemm`` of a ``(T, K)`` matrix), with ``T > 1``, is the same matrix applied
at every token: a 1x1 convolution over T positions. It becomes

    x (.., T, K) -> Reshape (1, T, K, 1) -> Transpose (1, K, T, 1)   [the "channel form"]
      -> Conv 1x1 (N, K, 1, 1) with the bias                        [the DLA layer]
      -> Transpose (1, T, N, 1) -> Reshape (.., T, N)               [back to tokens]

The layout changes are host work (the DLA has no transpose); they are written only where a token
tensor meets something that is not in channel form: when the input of a product is itself the
token form of a channel-form tensor, the product reads the channel form directly, and per-token
operations of a channel-form tensor (activations, a bias or scale along the last axis, the sum or
product of two such tensors) are done in channel form (where the front end fuses them into the
convolution producing them). Token tensors the host needs (a Softmax over tokens, LayerNorm pieces,
the product of two activations in attention) get their token form back.

**Recurrent layers.** ``LSTM`` and ``GRU`` with constant weights are split where the work is: the
input part of every gate of every step, ``X W^T + Wb (+ Rb)``, is one product over the T tokens
(so a 1x1 convolution on the DLA, with all directions' gates as its output channels), and the
recurrence (``H R^T``, the gate nonlinearities, the cell update), which needs the previous step's
result, runs on the host as an ``LSTM``/``GRU`` of its own whose input is the precomputed gates and
whose input weights are a 0/1 selection of each direction's gates (exact). Why the recurrence is
not on the DLA, and what it would cost there, is in ``docs/architecture.md`` (Recurrent layers).
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

__all__ = ["token_products", "token_elementwise", "recurrences", "split_weights", "remove_dead"]

#: per-token functions of one tensor that the front end runs in channel form (fused into the
#: producing convolution's output stage, or a channel-wise layer)
_UNARY = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSwish", "HardSigmoid")
_BINARY = ("Add", "Mul")


def _where(node) -> str:
    return f"node '{node.name or node.op_type}' ({node.op_type})"


def _token_axes(shape) -> tuple[int, int] | None:
    """(T, K) of a token tensor: rank >= 2, at most one dimension besides the last above 1."""
    if shape is None or len(shape) < 2:
        return None
    big = [d for d in shape[:-1] if d != 1]
    if len(big) > 1:
        return None
    return (big[0] if big else 1), shape[-1]


def _channel_source(g, t: str, producers) -> str | None:
    """The channel-form (1, N, T, 1) tensor whose token form ``t`` is (the Transpose -> Reshape
    back-conversion this module writes), or None."""
    cur = t
    for op in ("Reshape", "Transpose"):
        n = producers.get(cur)
        if n is None or n.op_type != op or n.domain not in ("", "ai.onnx"):
            return None
        if op == "Transpose" and [list(a.ints) for a in n.attribute if a.name == "perm"] != [_SWAP]:
            return None
        cur = n.input[0]
    shape, tshape = g.shapes.get(cur), g.shapes.get(t)
    axes = _token_axes(tshape)
    if shape is None or len(shape) != 4 or axes is None or shape != (1, axes[1], axes[0], 1):
        return None
    return cur


#: the permutation between (1, T, K, 1) and the channel form (1, K, T, 1); the tensors at the
#: boundary between a host stage and a DLA stage are then 4-D with batch 1 on either side
_SWAP = [0, 2, 1, 3]


def _same_values(g, token: str, channels: str) -> None:
    """Note that two tensors hold the same values in two layouts (a quantised model's range hint
    on either is one on the other, :func:`compiler.quant_import.save_hints`), also once the views
    between them are gone."""
    if hasattr(g, "range_aliases"):
        g.range_aliases.append((token, channels))


def _to_channels(g, x: str, T: int, K: int, base: str) -> tuple[str, list]:
    """Nodes turning token tensor x into its channel form (1, K, T, 1), and that tensor's name."""
    a, c = g.fresh(base + "_tk"), g.fresh(base + "_chw")
    _same_values(g, x, c)
    nodes = [helper.make_node("Reshape", [x, g.const(np.array([1, T, K, 1], np.int64), base + "_tk")], [a], name=a),
             helper.make_node("Transpose", [a], [c], name=c, perm=_SWAP)]
    return c, nodes


def _to_tokens(g, y: str, T: int, N: int, shape, out: str, base: str) -> list:
    """Nodes turning channel-form y (1, N, T, 1) into the token tensor ``out`` of ``shape``."""
    b = g.fresh(base + "_tn")
    _same_values(g, out, y)
    return [helper.make_node("Transpose", [y], [b], name=b, perm=_SWAP),
            helper.make_node("Reshape", [b, g.const(np.array(shape, np.int64), base + "_tok")], [out],
                             name=base + "_tokens")]


def _product_operands(g, node):
    """(x, W (K, N), bias (N,) or None) of a MatMul/Gemm of a token tensor by constants, or None."""
    ins = list(node.input)
    if len(ins) < 2 or ins[0] in g.consts or ins[1] not in g.consts:
        return None
    w = np.asarray(g.consts[ins[1]])
    if w.dtype.kind != "f":
        return None
    bias = None
    if node.op_type == "MatMul":
        if w.ndim < 2 or any(d != 1 for d in w.shape[:-2]):
            return None
        w = w.reshape(w.shape[-2:])
    else:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or w.ndim != 2:
            return None
        w = (w.T if attrs.get("transB", 0) else w) * float(attrs.get("alpha", 1.0))
        if len(ins) > 2 and ins[2]:
            if ins[2] not in g.consts:
                return None
            c = np.asarray(g.consts[ins[2]], np.float64) * float(attrs.get("beta", 1.0))
            if c.size not in (1, w.shape[1]) or (c.ndim == 2 and c.shape[0] != 1):
                return None             # a per-token bias is not a per-channel one
            bias = np.broadcast_to(c.reshape(-1), (w.shape[1],))
    return ins[0], w, bias


def token_products(g) -> bool:
    """MatMul/Gemm of a token tensor (T > 1) by a constant: a 1x1 convolution over the tokens."""
    changed = False
    producers = g.producers()
    for node in list(g.g.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
            continue
        operands = _product_operands(g, node)
        if operands is None:
            continue
        x, w, bias = operands
        shape = g.shapes.get(x)
        axes = _token_axes(shape)
        if axes is None or axes[0] <= 1 or (node.op_type == "Gemm" and len(shape) != 2):
            continue
        T, K = axes
        if w.shape[0] != K:
            continue
        N = w.shape[1]
        out = node.output[0]
        base = node.name or node.op_type
        src = _channel_source(g, x, producers)
        new = []
        if src is None:
            src, new = _to_channels(g, x, T, K, base)
        conv_out = g.fresh(base + "_conv")
        weights = g.const(np.ascontiguousarray(w.T.reshape(N, K, 1, 1)).astype(np.float32), base + "_w")
        conv_ins = [src, weights] + ([g.const(bias.astype(np.float32), base + "_b")] if bias is not None else [])
        new.append(helper.make_node("Conv", conv_ins, [conv_out], name=base, kernel_shape=[1, 1]))
        out_shape = tuple(shape[:-1]) + (N,)
        new += _to_tokens(g, conv_out, T, N, out_shape, out, base)
        g.insert_before(node, new)
        g.remove(node)
        g.shapes[conv_out] = (1, N, T, 1)
        g.shapes[out] = out_shape
        producers = g.producers()
        g.notes.append(f"{_where(node)}: a product of {T} tokens by a constant ({K} x {N}) is a 1x1 convolution "
                       f"over the {T} positions")
        changed = True
    return changed


def _per_channel(g, c: str, N: int) -> np.ndarray | None:
    """A constant broadcast along the last (channel) axis of a token tensor, as (1, N, 1, 1)."""
    v = np.asarray(g.consts[c])
    if v.dtype.kind != "f" or (v.size != 1 and (v.shape[-1] != N or v.size != N)):
        return None
    return np.broadcast_to(v.reshape(-1), (N,)).reshape(1, N, 1, 1).astype(v.dtype)


def token_elementwise(g) -> bool:
    """Per-token functions of channel-form tensors are done in channel form (fused on the DLA)."""
    changed = False
    producers = g.producers()
    for node in list(g.g.node):
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in _UNARY + _BINARY:
            continue
        out = node.output[0]
        shape = g.shapes.get(out)
        axes = _token_axes(shape)
        if axes is None or axes[0] <= 1:
            continue
        T, N = axes
        ins = list(node.input)
        srcs = [None if (not i or i in g.consts) else _channel_source(g, i, producers) for i in ins]
        if srcs[0] is None and not (op in _BINARY and srcs[1] is not None):
            continue
        new_ins = []
        for i, s in zip(ins, srcs):
            if not i:
                new_ins.append(i)
            elif s is not None:
                new_ins.append(s)
            elif i in g.consts and (op in _UNARY and i != ins[0]):
                new_ins.append(i)                        # Clip's bounds
            elif i in g.consts and op in _BINARY:
                c = _per_channel(g, i, N)
                if c is None:
                    break
                new_ins.append(g.const(c, (node.name or op) + "_c"))
            else:
                break
        else:
            if any(g.shapes.get(i) != shape for i, s in zip(ins, srcs) if s is not None):
                continue                                 # a broadcast between token tensors
            base = node.name or op
            chan = g.fresh(base + "_chw")
            new = [helper.make_node(op, new_ins, [chan], name=base)]
            new[0].attribute.extend(node.attribute)
            new += _to_tokens(g, chan, T, N, shape, out, base)
            g.insert_before(node, new)
            g.remove(node)
            g.shapes[chan] = (1, N, T, 1)
            producers = g.producers()
            g.notes.append(f"{_where(node)} of {T} tokens runs in channel form")
            changed = True
    return changed


def remove_dead(g) -> bool:
    """Drop nodes (the back-conversions left behind) whose outputs nothing reads."""
    changed = False
    while True:
        used = {i for n in g.g.node for i in n.input if i} | g.outputs
        dead = [n for n in g.g.node if n.domain in ("", "ai.onnx") and n.op_type in ("Reshape", "Transpose")
                and not any(o in used for o in n.output)]
        if not dead:
            return changed
        for n in dead:
            g.remove(n)
        changed = True


# ---- recurrent layers ------------------------------------------------------------------------------
_GATES = {"LSTM": 4, "GRU": 3}


def split_weights(W: np.ndarray) -> bool:
    """Whether W (D, G*H, D*G*H) is the 0/1 selection of each direction's gates (an RNN already split)."""
    if W.ndim != 3 or W.shape[2] != W.shape[0] * W.shape[1]:
        return False
    return bool(np.array_equal(W, _selection(W.shape[0], W.shape[1], W.dtype)))


def _selection(D: int, GH: int, dtype) -> np.ndarray:
    sel = np.zeros((D, GH, D * GH), dtype)
    for d in range(D):
        sel[d, :, d * GH:(d + 1) * GH] = np.eye(GH, dtype=dtype)
    return sel


def recurrences(g) -> bool:
    """LSTM/GRU with constant weights: the gates' input part for all steps as one product over the
    tokens (the DLA), the recurrence as an LSTM/GRU of the precomputed gates (the host)."""
    changed = False
    for node in list(g.g.node):
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in _GATES:
            continue
        ins = list(node.input) + [""] * (8 - len(node.input))
        x, w_name, r_name, b_name = ins[:4]
        if x in g.consts or w_name not in g.consts or r_name not in g.consts or (b_name and b_name not in g.consts):
            continue
        W = np.asarray(g.consts[w_name])
        if W.dtype.kind != "f" or split_weights(W):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = g.shapes.get(x)
        layout = int(attrs.get("layout", 0))
        if shape is None or len(shape) != 3 or shape[1 - layout] != 1:
            continue                    # batch 1 only: the per-image program is one sequence
        T = shape[layout]
        D, GH, _ = W.shape
        H = GH // _GATES[op]
        B = np.zeros((D, 2 * GH), W.dtype) if not b_name else np.asarray(g.consts[b_name])
        Wb, Rb = B[:, :GH], B[:, GH:]
        # the input part, all directions' gates as the product's output channels
        w_all = np.concatenate([W[d].T for d in range(D)], axis=1)           # (I, D*G*H)
        if op == "LSTM":
            b_all, b_host = (Wb + Rb).reshape(-1), None
        else:                            # GRU: Rb of the candidate gate is inside the reset (linear_before_reset)
            b_all = Wb.reshape(-1)
            b_host = np.concatenate([np.zeros_like(Rb), Rb], axis=1)
        base = node.name or op
        gates = g.fresh(base + "_gates")
        pre = g.fresh(base + "_xw")
        new = [helper.make_node("MatMul", [x, g.const(w_all.astype(W.dtype), base + "_wx")], [pre], name=base + "_input"),
               helper.make_node("Add", [pre, g.const(b_all.astype(W.dtype), base + "_bx")], [gates],
                                name=base + "_input_bias")]
        host_ins = [gates, g.const(_selection(D, GH, W.dtype), base + "_select"), r_name,
                    g.const(b_host.astype(W.dtype), base + "_brec") if b_host is not None else ""] + ins[4:8]
        while host_ins and not host_ins[-1]:
            host_ins.pop()
        rec = helper.make_node(op, host_ins, list(node.output), name=base + "_recurrence")
        rec.attribute.extend(node.attribute)
        new.append(rec)
        g.insert_before(node, new)
        g.remove(node)
        gshape = (T, 1, D * GH) if layout == 0 else (1, T, D * GH)
        g.shapes[pre] = g.shapes[gates] = gshape
        g.notes.append(f"{_where(node)}: the input part of its gates ({T} steps, {D} direction(s), {GH} gates x "
                       f"{shape[2]} inputs) is a product over the steps (on the DLA); the recurrence (hidden size "
                       f"{H}) runs on the host")
        changed = True
    return changed


#: the canonicalisation steps of this module, in order (compiler.frontend_canon runs them each round)
SEQUENCE_STEPS = (recurrences, token_products, token_elementwise, remove_dead)


# ---- sequence-first inputs and outputs -----------------------------------------------------------
_RECURRENT = ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM")


def sequence_io(proto, inshapes: str | None):
    """A copy of a model with recurrent layers in the sequence-first layout (``layout`` 0: X is
    (T, 1, I), states (D, 1, H), Y (T, D, 1, H): the batch is not axis 0) whose graph inputs and
    outputs of a first dimension other than 1 get a leading unit axis (a Reshape inside the model),
    so that each call's arrays are one sequence (or N of them) as the runtime's per-image contract
    has it: ``Run([x, h0, c0])`` takes x (T, 1, I) as one sequence and returns Y as (1, T, D, 1, H).
    None when the model needs no change (or ``inshapes`` sets the shapes)."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    if any(uses_external_data(t) for t in proto.graph.initializer):
        return None             # a path's external data stays where the path finds it
    if inshapes or not any(n.op_type in _RECURRENT for n in proto.graph.node):
        return None
    if any(n.op_type in _RECURRENT and any(a.name == "layout" and a.i == 1 for a in n.attribute)
           for n in proto.graph.node):
        return None

    def dims(vi):
        t = vi.type.tensor_type
        if not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
            return None
        return [d.dim_value for d in t.shape.dim]

    inits = {i.name for i in proto.graph.initializer}
    wrap_in = [vi for vi in proto.graph.input if vi.name not in inits and (s := dims(vi)) and len(s) >= 2 and s[0] != 1]
    wrap_out = [vi for vi in proto.graph.output if (s := dims(vi)) and len(s) >= 2 and s[0] != 1]
    if not wrap_in and not wrap_out:
        return None
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    taken = {o for n in g.node for o in n.output} | {i.name for i in g.input} | inits
    for o in g.output:
        if o.name in {w.name for w in wrap_in}:
            raise ValueError("a graph input that is also a graph output")     # not for recurrent models
    shapes: list = []

    def wrap(vi, inner_suffix: str, shape_suffix: str, reshape_to: list[int], ins: bool) -> onnx.NodeProto:
        """The Reshape between graph tensor ``vi`` (given a leading unit axis) and the model's own
        ``inner`` tensor, which takes its place inside: inner = Reshape(vi) for an input, vi =
        Reshape(inner) for an output."""
        inner = _free(vi.name + inner_suffix, taken)
        for n in g.node:
            if not ins:
                n.output[:] = [inner if o == vi.name else o for o in n.output]
            n.input[:] = [inner if i == vi.name else i for i in n.input]
        shape = _free(vi.name + shape_suffix, taken)
        shapes.append(onnx.numpy_helper.from_array(np.array(reshape_to, np.int64), shape))
        vi.type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
        if ins:
            return helper.make_node("Reshape", [vi.name, shape], [inner], name=inner)
        return helper.make_node("Reshape", [inner, shape], [vi.name], name=vi.name + "__batch")
    wrapped_in, wrapped_out = {w.name for w in wrap_in}, {w.name for w in wrap_out}
    front = [wrap(vi, "__seq", "__seq_shape", dims(vi), True) for vi in g.input if vi.name in wrapped_in]
    back = [wrap(vi, "__seq", "__batch_shape", [1] + dims(vi), False) for vi in g.output if vi.name in wrapped_out]
    nodes = front + list(g.node) + back
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(shapes)
    return m


def _free(name: str, taken: set) -> str:
    k = 0
    cand = name
    while cand in taken:
        k += 1
        cand = f"{name}{k}"
    taken.add(cand)
    return cand
