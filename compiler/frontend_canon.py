"""Front end, canonicalisation: the idioms real exporters (torch.onnx, Paddle2ONNX) write, rewritten
into the few forms the translation knows, before any node is placed on the DLA or the host (the
front end and the host/DLA partitioner both run it, so both see the same static graph).

1. **Shapes to a fixpoint.** Constant folding and ONNX shape inference alternate until nothing
   changes: every node whose inputs are all constants is evaluated (``onnx.reference``) and
   becomes an initializer; ``Shape`` and ``Size`` of a tensor whose shape is known become
   constants. This removes the ``Shape -> Gather -> Concat -> Reshape`` chains of a flatten and the
   ``Range``/``Expand`` grids of a detector's decode, for the compiled input shape.
2. **No-ops go**: ``Identity``, ``Dropout`` (inference), ``Cast`` between float types, a
   ``Reshape`` to its input's own shape, chains of ``Reshape``/``Transpose``/``Flatten``/
   ``Squeeze``/``Unsqueeze`` that give back their 4-D input (cancelling pairs).
3. **Arithmetic by constants**: ``Div(x, c)`` is ``Mul(x, 1/c)``, ``Sub(x, c)`` is ``Add(x, -c)``,
   ``Sub(c, x)`` is ``Add(Mul(x, -1), c)``, ``Neg(x)`` is ``Mul(x, -1)`` (the front end folds Mul and
   Add by per-channel constants into the producing layer's weights and bias: exact in float).
4. **Gates**: ``HardSigmoid(x; a, b)`` is ``Clip(Add(Mul(x, a), b), 0, 1)``: the Mul and Add fold into
   the producing layer, so the gate is the producing layer's output stage with a CLIP to 0..1,
   exact. ``HardSwish`` -- the op, or the products exporters write, ``x * Clip(x + 3, 0, 6) / 6``
   (Paddle2ONNX, hand-written MobileNetV3) and ``x * HardSigmoid(x)`` (torch before opset 14) in any
   order of their scalar steps -- becomes the output-stage activation ``hardswish`` where the
   machine has it (:data:`arch.numerics.ACT_NAMES`), else ``x * Clip(x / 6 + 1/2, 0, 1)``, whose
   factor is bounded by 1 (the gated product never exceeds ``|x|``, where ``x * Clip(x + 3, 0, 6)``
   would be 6 times larger before its Div and saturate). ``x * Sigmoid(x)`` (SiLU, Swish) becomes the
   activation ``silu`` where the machine has it, else stays a product of two DLA layers;
   ``x * Tanh(Softplus(x))`` (Mish as exported before opset 18) becomes the activation ``mish`` (an
   ONNX ``Mish`` node) where the machine has it, else stays (Softplus runs on the host).
5. **Reductions**: ``ReduceMean``/``ReduceMax`` over H and W keeping the dimensions is
   ``GlobalAveragePool``/``GlobalMaxPool``.
6. **Quantised models** (:mod:`compiler.quant_import`): QDQ pairs, QLinear* and integer
   products, DynamicQuantizeLSTM become float operators with dequantised weights.
   **Sequences** (:mod:`compiler.frontend_seq`): products over tokens become 1x1 convolutions over
   the token positions; LSTM/GRU are split into the input part of their gates (a product over the
   steps) and the recurrence (the host).
7. **Channel ranges and permutations**: ``Split`` and ``Slice`` along the channels of a 4-D
   tensor, and a channel shuffle (``Reshape -> Transpose -> Reshape`` that permutes channels only,
   or any such view chain), become 1x1 selection convolutions (weights 0/1), which are folded into
   a consumer Conv (``groups=1``) by composing the weights (``W' = W @ S``, exact) and otherwise run
   as layers of their own (exact too: a 0/1 weight times a value needs no rounding).

Every rewrite is recorded in ``notes``.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .frontend_load import _DLA_WEIGHT_BYTES, _SHAPE_CONSTANT_LIMIT, evaluate_node, shape_nodes
from .ir import CompileError
from .ops import MDLA_DOMAIN
from .frontend_seq import SEQUENCE_STEPS
from .quant_import import PRE_FOLD_STEPS, QUANT_STEPS, save_hints

__all__ = ["canonicalise", "act_available", "origin", "describe", "ORIGIN_KEY"]

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
#: view ops whose composite may be the identity or a channel permutation of a 4-D tensor
_VIEW_CHAIN = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")
_MAX_ROUNDS = 16


def act_available(name: str) -> bool:
    """Whether the machine's output stage has activation ``name`` (arch.numerics.ACT_NAMES)."""
    from arch.numerics import ACT_NAMES
    return name in ACT_NAMES


def _where(node: onnx.NodeProto) -> str:
    return f"node '{node.name or node.op_type}' ({node.op_type})"


#: the node metadata key under which canonicalisation notes, on every node it writes, the node of
#: the model as given that it came from (so that messages name what the user wrote)
ORIGIN_KEY = "com.microndla.origin"


def origin(node: onnx.NodeProto) -> str | None:
    """``node 'name' (Op)`` of the user's node a node written by canonicalisation came from, or None
    for a node of the model as given."""
    return next((p.value for p in node.metadata_props if p.key == ORIGIN_KEY), None)


def describe(node: onnx.NodeProto, name: str | None = None) -> str:
    """``node 'name' (Op)``; for a node canonicalisation wrote, the user's node it came from first:
    ``node 'lstm1' (LSTM) (as the compiler's 'lstm1_input_bias_tn__c27' (Transpose))``."""
    name = name or node.name or node.op_type
    dom = "" if node.domain in ("", "ai.onnx") else node.domain + "."
    here = f"'{name}' ({dom}{node.op_type})"
    src = origin(node)
    return f"node {here}" if src is None else f"{src} (as the compiler's {here})"


class _Graph:
    """The model's nodes, constants, shapes and element types while they are rewritten."""

    def __init__(self, proto: onnx.ModelProto, consts: dict[str, np.ndarray], mem_bytes: int, notes: list[str]):
        self.proto = proto
        self.g = proto.graph
        self.consts = consts
        self.mem_bytes = mem_bytes
        self.notes = notes
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.types: dict[str, int] = {}
        self.names = {o for n in self.g.node for o in n.output} | {i.name for i in self.g.input} | set(consts)
        self.user_nodes = {n.name for n in self.g.node if origin(n) is None}   #: the model's own nodes
        self.counter = 0
        self.outputs = {o.name for o in self.g.output}

    # ---- bookkeeping --------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        while True:
            self.counter += 1
            name = f"{base}__c{self.counter}"
            if name not in self.names:
                self.names.add(name)
                return name

    def const(self, value: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        value = np.asarray(value)
        self.consts[name] = value
        self.g.initializer.append(numpy_helper.from_array(value, name))
        return name

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        out: dict[str, list[onnx.NodeProto]] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def producers(self) -> dict[str, onnx.NodeProto]:
        return {o: n for n in self.g.node for o in n.output if o}

    def replace_uses(self, old: str, new: str) -> None:
        for n in self.g.node:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new

    def remove(self, node: onnx.NodeProto) -> None:
        for k, n in enumerate(self.g.node):
            if n is node:
                del self.g.node[k]
                return

    def insert_before(self, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> None:
        """Insert ``nodes`` (written in place of, or for, ``anchor``) before it; each new node notes
        the user's node it came from (:data:`ORIGIN_KEY`), unless it is that node again."""
        k = next(k for k, n in enumerate(self.g.node) if n is anchor)
        src = origin(anchor) or (f"node '{anchor.name}' ({anchor.op_type if anchor.domain in ('', 'ai.onnx') else anchor.domain + '.' + anchor.op_type})"
                                 if anchor.name in self.user_nodes else None)
        for j, n in enumerate(nodes):
            same = n.name == anchor.name and n.op_type == anchor.op_type and origin(anchor) is None
            if src is not None and not same and origin(n) is None:
                n.metadata_props.add(key=ORIGIN_KEY, value=src)
            self.g.node.insert(k + j, n)

    def scalar(self, name: str) -> float | None:
        v = self.consts.get(name)
        if v is None or v.size != 1 or v.dtype.kind not in "fiu":
            return None
        return float(v.reshape(-1)[0])

    def is_float(self, name: str) -> bool:
        t = self.types.get(name)
        return t is None or t in _FLOATS

    def alias(self, node: onnx.NodeProto, src: str, why: str) -> None:
        """Drop a node whose output equals its input ``src`` (an Identity where the output is a graph output)."""
        out = node.output[0]
        if out in self.outputs:
            if node.op_type == "Identity":
                return
            new = helper.make_node("Identity", [src], [out], name=node.name)
            self.insert_before(node, [new])
        else:
            self.replace_uses(out, src)
        self.remove(node)
        self.notes.append(f"removed {_where(node)}: {why}")

    # ---- shapes and folding ---------------------------------------------------------------------
    def infer(self) -> None:
        src = self.proto
        light = onnx.ModelProto(ir_version=src.ir_version, opset_import=src.opset_import, functions=src.functions)
        g = light.graph
        g.node.extend(shape_nodes(self.g.node))
        g.input.extend(self.g.input)
        g.output.extend(self.g.output)
        declared = {i.name for i in self.g.input}
        for init in self.g.initializer:
            if math.prod(init.dims) <= _SHAPE_CONSTANT_LIMIT:
                g.initializer.append(init)
            elif init.name not in declared:
                g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        for o in g.output:
            if o.type.tensor_type.HasField("shape"):
                o.type.tensor_type.ClearField("shape")
        try:
            inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True).graph
        except Exception:  # noqa: BLE001 - the front end reports an inconsistent model itself
            return
        self.shapes, self.types = {}, {}
        for vi in list(inferred.value_info) + list(inferred.output) + list(inferred.input):
            if not vi.type.HasField("tensor_type"):
                continue
            tt = vi.type.tensor_type
            self.types[vi.name] = tt.elem_type
            if tt.HasField("shape") and all(d.HasField("dim_value") and d.dim_value >= 0 for d in tt.shape.dim):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)

    def fold(self) -> bool:
        """Evaluate every node whose inputs are constants (or a Shape/Size of a known shape)."""
        changed = False
        progress = True
        while progress:
            progress = False
            for node in list(self.g.node):
                if node.domain not in ("", "ai.onnx") or node.op_type in ("RandomNormal", "RandomUniform",
                                                                          "RandomNormalLike", "RandomUniformLike"):
                    continue
                ins = [i for i in node.input if i]
                if all(i in self.consts for i in ins):
                    feeds = {i: self.consts[i] for i in ins}
                    note = ""
                elif node.op_type in ("Shape", "Size") and node.input[0] in self.shapes:
                    feeds = {node.input[0]: np.broadcast_to(np.float32(0), self.shapes[node.input[0]])}
                    note = " of a static shape"
                else:
                    continue
                outs = [o for o in node.output if o]
                if any(o in self.outputs for o in outs):
                    continue        # the front end reports a constant graph output
                for o in outs:      # bounded memory: never materialise a constant larger than the card memory
                    if o in self.shapes and math.prod(self.shapes[o]) * _DLA_WEIGHT_BYTES > self.mem_bytes:
                        raise CompileError(f"{_where(node)}: its constant output {o!r} {list(self.shapes[o])} would need "
                                           f"{math.prod(self.shapes[o]) * _DLA_WEIGHT_BYTES} bytes as 16-bit values, "
                                           f"more than the {self.mem_bytes} bytes of card memory")
                values = evaluate_node(node, feeds, self.proto, _where(node))
                for o, v in zip(outs, values):
                    v = np.asarray(v)
                    self.consts[o] = v
                    self.g.initializer.append(numpy_helper.from_array(v, o))
                self.remove(node)
                self.notes.append(f"folded {_where(node)}{note} into constant(s) {', '.join(repr(o) for o in outs)}")
                progress = changed = True
        return changed

    # ---- rewrites -------------------------------------------------------------------------------
    def noops(self) -> bool:
        changed = False
        for node in list(self.g.node):
            op, ins = node.op_type, [i for i in node.input if i]
            if node.domain not in ("", "ai.onnx") or not ins or ins[0] in self.consts:
                continue
            x = ins[0]
            if op == "Identity" and node.output[0] not in self.outputs:
                self.alias(node, x, "an identity")
            elif op == "Dropout" and not any(o for o in node.output[1:]) and (len(ins) < 3 or (
                    ins[2] in self.consts and not bool(self.consts[ins[2]].reshape(-1)[0]))):
                self.alias(node, x, "dropout does nothing in inference")
            elif op == "Cast" and self.is_float(x) and next(
                    (a.i for a in node.attribute if a.name == "to"), None) in _FLOATS:
                self.alias(node, x, "a cast between float types (the DLA computes in its own fixed point)")
            elif op == "Reshape" and x in self.shapes and self.shapes.get(node.output[0]) == self.shapes[x]:
                self.alias(node, x, f"a reshape to its input's own shape {self.shapes[x]}")
            else:
                continue
            changed = True
        return changed

    def arithmetic(self) -> bool:
        changed = False
        for node in list(self.g.node):
            op = node.op_type
            if node.domain not in ("", "ai.onnx") or op not in ("Div", "Sub", "Neg", "Sum"):
                continue
            ins = list(node.input)
            if not all(self.is_float(i) for i in ins) or (op == "Sum" and len(ins) <= 2):
                continue
            out, base = node.output[0], node.name or op
            if op == "Sum":      # a Sum of k > 2 tensors: k - 1 Adds, left to right as onnx sums them
                acc, new = ins[0], []
                for k, term in enumerate(ins[1:], start=1):
                    partial = out if k == len(ins) - 1 else self.fresh(f"{base}_{k}")
                    new.append(helper.make_node("Add", [acc, term], [partial], name=base if partial == out else partial))
                    acc = partial
            elif op == "Neg":
                new = [helper.make_node("Mul", [ins[0], self.const(np.float32(-1), base)], [out], name=base)]
            elif ins[1] in self.consts and ins[0] not in self.consts:
                c = self.consts[ins[1]].astype(np.float64)
                if op == "Div":
                    if np.any(c == 0):
                        continue
                    inv = (1.0 / c).astype(self.consts[ins[1]].dtype)
                    new = [helper.make_node("Mul", [ins[0], self.const(inv, base)], [out], name=base)]
                else:
                    new = [helper.make_node("Add", [ins[0], self.const((-c).astype(self.consts[ins[1]].dtype), base)],
                                            [out], name=base)]
            elif op == "Sub" and ins[0] in self.consts and ins[1] not in self.consts:
                neg = self.fresh(base + "_neg")
                new = [helper.make_node("Mul", [ins[1], self.const(np.float32(-1), base)], [neg], name=base + "_neg"),
                       helper.make_node("Add", [neg, ins[0]], [out], name=base)]
            elif op == "Sub" and ins[1] not in self.consts:
                neg = self.fresh(base + "_neg")
                new = [helper.make_node("Mul", [ins[1], self.const(np.float32(-1), base)], [neg], name=base + "_neg"),
                       helper.make_node("Add", [ins[0], neg], [out], name=base)]
            else:
                continue
            self.insert_before(node, new)
            self.remove(node)
            self.notes.append(f"rewrote {_where(node)} as {' -> '.join(n.op_type for n in new)}")
            changed = True
        return changed

    def reductions(self) -> bool:
        """ReduceMean/ReduceMax over H and W with keepdims of a 4-D tensor (torch's x.mean((2, 3),
        keepdim=True)) is GlobalAveragePool/GlobalMaxPool."""
        changed = False
        for node in list(self.g.node):
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("ReduceMean", "ReduceMax"):
                continue
            x = node.input[0]
            shape = self.shapes.get(x)
            if shape is None or len(shape) != 4 or x in self.consts:
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axes = attrs.get("axes")
            if len(node.input) > 1 and node.input[1]:
                if node.input[1] not in self.consts:
                    continue
                axes = [int(a) for a in self.consts[node.input[1]].reshape(-1)]
            if axes is None or sorted(a % 4 for a in axes) != [2, 3] or not attrs.get("keepdims", 1):
                continue
            op = "GlobalAveragePool" if node.op_type == "ReduceMean" else "GlobalMaxPool"
            self.insert_before(node, [helper.make_node(op, [x], [node.output[0]], name=node.name)])
            self.remove(node)
            self.notes.append(f"rewrote {_where(node)} over H and W as {op}")
            changed = True
        return changed

    def _hardsigmoid_nodes(self, x: str, out: str, alpha: float, beta: float, base: str) -> list[onnx.NodeProto]:
        m, a = self.fresh(base + "_mul"), self.fresh(base + "_add")
        return [helper.make_node("Mul", [x, self.const(np.float32(alpha), base)], [m], name=base + "_mul"),
                helper.make_node("Add", [m, self.const(np.float32(beta), base)], [a], name=base + "_add"),
                helper.make_node("Clip", [a, self.const(np.float32(0), base), self.const(np.float32(1), base)], [out],
                                 name=base)]

    def gates(self) -> bool:
        changed = False
        for node in list(self.g.node):
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("HardSigmoid", "HardSwish"):
                continue
            x, out, base = node.input[0], node.output[0], node.name or node.op_type
            if x in self.consts:
                continue
            if node.op_type == "HardSigmoid":
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                new = self._hardsigmoid_nodes(x, out, float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5)), base)
                how = "Mul -> Add -> Clip(0, 1)"
            elif act_available("hardswish"):
                continue
            else:
                gate = self.fresh(base + "_gate")
                new = self._hardsigmoid_nodes(x, gate, 1 / 6, 0.5, base + "_gate")
                new.append(helper.make_node("Mul", [x, gate], [out], name=base))
                how = "x * Clip(x / 6 + 1/2, 0, 1) (the machine has no hardswish activation)"
            self.insert_before(node, new)
            self.remove(node)
            self.notes.append(f"rewrote {_where(node)} as {how}")
            changed = True
        return changed

    def _affine_clip(self, start: str, x: str, producers, consumers):
        """If tensor ``start`` is ``k * clip(a * x + b, lo, hi) + d`` computed from ``x`` by scalar
        Mul/Add and one Clip, each step read only by the next: ((a, b, lo, hi, k, d), nodes)."""
        chain = []
        t = start
        while t != x:
            n = producers.get(t)
            if n is None or n.domain not in ("", "ai.onnx") or len(consumers.get(t, [])) != 1 or t in self.outputs:
                return None
            chain.append(n)
            if n.op_type in ("Mul", "Add"):
                ins = list(n.input)
                sc = [self.scalar(i) for i in ins]
                if sc[1] is not None and ins[0] not in self.consts:
                    t = ins[0]
                elif sc[0] is not None and ins[1] not in self.consts:
                    t = ins[1]
                else:
                    return None
            elif n.op_type == "Clip" and n.input[0] not in self.consts:
                t = n.input[0]
            else:
                return None
            if len(chain) > 8:
                return None
        if start == x:
            return None
        a, b, lo, hi, k, d, clipped = 1.0, 0.0, None, None, 1.0, 0.0, False
        for n in reversed(chain):           # from x outwards
            if n.op_type == "Clip":
                if clipped:
                    return None
                bounds = self._clip_bounds(n)
                if bounds is None:
                    return None
                lo, hi = bounds
                clipped = True
                continue
            s = next(v for v in (self.scalar(i) for i in n.input) if v is not None)
            if not clipped:
                a, b = (a * s, b * s) if n.op_type == "Mul" else (a, b + s)
            else:
                k, d = (k * s, d * s) if n.op_type == "Mul" else (k, d + s)
        if not clipped:
            return None
        return (a, b, lo, hi, k, d), chain

    def _clip_bounds(self, n: onnx.NodeProto):
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if "min" in attrs or "max" in attrs:
            return attrs.get("min", -np.inf), attrs.get("max", np.inf)
        bounds = []
        for pos in (1, 2):
            name = n.input[pos] if pos < len(n.input) else ""
            if not name:
                bounds.append(-np.inf if pos == 1 else np.inf)
                continue
            v = self.scalar(name)
            if v is None:
                return None
            bounds.append(v)
        return tuple(bounds)

    def _mish_gate(self, q: str, x: str, producers, consumers) -> list[onnx.NodeProto] | None:
        """The nodes Tanh(Softplus(x)) making ``q`` (each read once, no graph output), or None."""
        t = producers.get(q)
        if t is None or t.op_type != "Tanh" or t.domain not in ("", "ai.onnx"):
            return None
        s = producers.get(t.input[0])
        if s is None or s.op_type != "Softplus" or s.domain not in ("", "ai.onnx") or s.input[0] != x:
            return None
        if any(len(consumers.get(v, [])) != 1 or v in self.outputs for v in (q, t.input[0])):
            return None
        return [t, s]

    def products(self) -> bool:
        """x * gate(x): HardSwish in its exporters' forms, SiLU and Mish."""
        changed = False
        for node in list(self.g.node):
            if node.domain not in ("", "ai.onnx") or node.op_type != "Mul" or len(node.input) != 2:
                continue
            if any(i in self.consts for i in node.input) or node.input[0] == node.input[1]:
                continue
            producers, consumers = self.producers(), self.consumers()
            for x, q in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
                qn = producers.get(q)
                if qn is not None and qn.op_type == "Sigmoid" and qn.input[0] == x and len(consumers.get(q, [])) == 1 \
                        and q not in self.outputs and act_available("silu"):
                    base = node.name or "silu"
                    self.insert_before(node, [helper.make_node("Silu", [x], [node.output[0]], name=base, domain=MDLA_DOMAIN)])
                    self.remove(node)
                    self.remove(qn)
                    self._use_domain()
                    self.notes.append(f"fused {_where(qn)} and {_where(node)} into the activation silu")
                    changed = True
                    break
                gate = self._mish_gate(q, x, producers, consumers)
                if gate is not None and act_available("mish"):
                    self.insert_before(node, [helper.make_node("Mish", [x], [node.output[0]], name=node.name or "mish")])
                    for n in [node] + gate:
                        self.remove(n)
                    self.notes.append(f"fused {', '.join(_where(n) for n in gate[::-1])} and {_where(node)} into the "
                                      f"activation mish")
                    changed = True
                    break
                found = self._affine_clip(q, x, producers, consumers)
                if found is None:
                    continue
                (a, b, lo, hi, k, d), chain = found
                if d != 0 or lo != 0 or not hi or not np.isfinite(hi) or hi <= 0 or a <= 0:
                    continue
                # x * k * clip(a x + b, 0, hi) = (k * hi) * x * clip((a / hi) x + b / hi, 0, 1)
                slope, offset, scale = a / hi, b / hi, k * hi
                out, base = node.output[0], node.name or "hardswish"
                tail = None                                    # a scalar Mul right after (the "/ 6")
                cons = consumers.get(out, [])
                if len(cons) == 1 and cons[0].op_type == "Mul" and out not in self.outputs:
                    s = [self.scalar(i) for i in cons[0].input if i != out]
                    if len(s) == 1 and s[0] is not None:
                        tail, scale = cons[0], scale * s[0]
                final = tail.output[0] if tail is not None else out
                is_hswish = abs(slope - 1 / 6) < 1e-6 and abs(offset - 0.5) < 1e-6
                new = []
                core = final if abs(scale - 1) < 1e-6 else self.fresh(base + "_core")
                if is_hswish and act_available("hardswish"):
                    new.append(helper.make_node("HardSwish", [x], [core], name=base))
                    how = "the activation hardswish"
                else:
                    gate = self.fresh(base + "_gate")
                    new += self._hardsigmoid_nodes(x, gate, slope, offset, base + "_gate")
                    new.append(helper.make_node("Mul", [x, gate], [core], name=base))
                    how = f"x * Clip({slope:.6g} x + {offset:.6g}, 0, 1)"
                if core != final:
                    new.append(helper.make_node("Mul", [core, self.const(np.float32(scale), base)], [final],
                                                name=base + "_scale"))
                    how += f" * {scale:.6g}"
                if all(n.op_type in ("Mul", "Add", "Clip") for n in chain) and len(chain) == 3 and tail is None \
                        and abs(scale - 1) < 1e-6 and not (is_hswish and act_available("hardswish")):
                    continue            # already the canonical gate
                self.insert_before(node, new)
                for n in [node] + chain + ([tail] if tail is not None else []):
                    self.remove(n)
                self.notes.append(f"rewrote {_where(node)} (x * gate(x)) as {how}")
                changed = True
                break
        return changed

    def _use_domain(self) -> None:
        if not any(o.domain == MDLA_DOMAIN for o in self.proto.opset_import):
            self.proto.opset_import.append(helper.make_opsetid(MDLA_DOMAIN, 1))

    # ---- channel ranges and permutations --------------------------------------------------------
    def _selector(self, x: str, rows: np.ndarray, out: str, base: str, anchor: onnx.NodeProto) -> None:
        """A 1x1 Conv whose output channel j is input channel rows[j]."""
        c = self.shapes[x][1]
        w = np.zeros((len(rows), c, 1, 1), np.float32)
        w[np.arange(len(rows)), rows, 0, 0] = 1
        name = self.const(w, base + "_select")
        self.selectors.add(name)
        self.insert_before(anchor, [helper.make_node("Conv", [x, name], [out], name=base, kernel_shape=[1, 1])])

    def channel_ranges(self) -> bool:
        changed = False
        for node in list(self.g.node):
            op = node.op_type
            if node.domain not in ("", "ai.onnx") or op not in ("Split", "Slice") or node.input[0] in self.consts:
                continue
            x = node.input[0]
            shape = self.shapes.get(x)
            if shape is None or len(shape) != 4 or shape[0] != 1 or not self.is_float(x):
                continue
            c = shape[1]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            base = node.name or op
            if op == "Split":
                axis = attrs.get("axis", 0)
                if axis not in (1, -3):
                    continue
                outs = list(node.output)
                if len(node.input) > 1 and node.input[1]:
                    if node.input[1] not in self.consts:
                        continue
                    sizes = [int(v) for v in self.consts[node.input[1]].reshape(-1)]
                elif "split" in attrs:
                    sizes = [int(v) for v in attrs["split"]]
                else:
                    n = len(outs)
                    step = -(-c // n)
                    sizes = [min(step, c - k * step) for k in range(n)]
                if sum(sizes) != c or len(sizes) != len(outs) or min(sizes) < 0:
                    continue
                start = 0
                for o, s in zip(outs, sizes):
                    if o:
                        self._selector(x, np.arange(start, start + s), o, f"{base}_{o}", node)
                    start += s
                how = f"{len(outs)} channel selections {sizes}"
            else:
                if self.opset < 10:
                    starts, ends = attrs.get("starts"), attrs.get("ends")
                    axes, steps = attrs.get("axes"), None
                else:
                    vals = []
                    for pos in (1, 2, 3, 4):
                        name = node.input[pos] if pos < len(node.input) else ""
                        if name and name not in self.consts:
                            vals = None
                            break
                        vals.append(None if not name else [int(v) for v in self.consts[name].reshape(-1)])
                    if vals is None:
                        continue
                    starts, ends, axes, steps = vals
                axes = list(range(len(starts))) if axes is None else [a + 4 if a < 0 else a for a in axes]
                steps = [1] * len(starts) if steps is None else steps
                index = [np.arange(d) for d in shape]
                for a, s0, e0, st in zip(axes, starts, ends, steps):
                    index[a] = np.arange(shape[a])[slice(s0, e0, st)] if st > 0 else np.arange(shape[a])[
                        slice(s0 if s0 < shape[a] else None, e0 if e0 >= -shape[a] else None, st)]
                if any(len(index[a]) != shape[a] or np.any(index[a] != np.arange(shape[a])) for a in (0, 2, 3)):
                    continue              # slices spatial axes: not a channel range
                if len(index[1]) == 0:
                    continue
                self._selector(x, index[1], node.output[0], base, node)
                how = f"a channel selection of {len(index[1])} of {c} channels"
            self.remove(node)
            self.notes.append(f"rewrote {_where(node)} as {how} (1x1 convolutions with 0/1 weights)")
            changed = True
        return changed

    def view_chains(self) -> bool:
        """Chains of view ops from a 4-D tensor back to its own shape: the identity or a channel
        permutation (a channel shuffle) are a no-op or a selection."""
        changed = False
        producers, consumers = self.producers(), self.consumers()
        for node in list(self.g.node):
            if node.domain not in ("", "ai.onnx") or node.op_type not in _VIEW_CHAIN:
                continue
            x = node.input[0]
            shape = self.shapes.get(x)
            p = producers.get(x)
            if shape is None or len(shape) != 4 or x in self.consts or (p is not None and p.op_type in _VIEW_CHAIN
                                                                        and len(consumers.get(x, [])) == 1):
                continue
            chain, t = [], x
            n = node
            while True:
                chain.append(n)
                t = n.output[0]
                cons = consumers.get(t, [])
                if t in self.outputs or len(cons) != 1 or cons[0].op_type not in _VIEW_CHAIN or cons[0].domain not in (
                        "", "ai.onnx"):
                    break
                n = cons[0]
            # the longest prefix ending in x's shape
            for end in range(len(chain), 1, -1):
                if self.shapes.get(chain[end - 1].output[0]) != shape:
                    continue
                perm = self._chain_permutation(chain[:end], x, shape)
                if perm is None:
                    continue
                out = chain[end - 1].output[0]
                if np.array_equal(perm, np.arange(shape[1])):
                    if out in self.outputs:
                        self.insert_before(chain[0], [helper.make_node("Identity", [x], [out], name=chain[0].name)])
                    else:
                        self.replace_uses(out, x)
                    how = "cancel (the identity)"
                else:
                    self._selector(x, perm, out, (chain[0].name or "shuffle") + "_perm", chain[0])
                    how = "permute channels only (a channel shuffle): a 1x1 permutation"
                for n in chain[:end]:
                    self.remove(n)
                self.notes.append(f"the view chain {' -> '.join(_where(n) for n in chain[:end])} is removed: "
                                  f"its steps {how}")
                changed = True
                producers, consumers = self.producers(), self.consumers()
                break
        return changed

    def _chain_permutation(self, chain, x: str, shape) -> np.ndarray | None:
        """The channel permutation the chain applies to x, if it moves whole channels only."""
        size = math.prod(shape)
        if size > 1 << 24:
            return None
        env = {x: np.arange(size, dtype=np.int64).reshape(shape)}
        for n in chain:
            ins = [i for i in n.input if i]
            if any(i != ins[0] and i not in self.consts for i in ins):
                return None
            feeds = {i: (env[i] if i in env else self.consts[i]) for i in ins}
            try:
                env[n.output[0]] = np.asarray(evaluate_node(n, feeds, self.proto, _where(n))[0])
            except CompileError:
                return None
        y = env[chain[-1].output[0]]
        if y.shape != tuple(shape):
            return None
        hw = shape[2] * shape[3]
        src = y[0, :, 0, 0] // hw
        expect = src[:, None, None] * hw + np.arange(hw).reshape(shape[2], shape[3])
        if not np.array_equal(y[0], expect):
            return None
        return src

    def merge_selectors(self) -> bool:
        """A selection feeding a Conv (groups=1): the Conv reads the selection's input with composed weights."""
        changed = False
        producers, consumers = self.producers(), self.consumers()
        for node in list(self.g.node):
            if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in self.selectors:
                continue
            s = self.consts[node.input[1]][:, :, 0, 0]            # (n, C)
            x, y = node.input[0], node.output[0]
            if y in self.outputs:
                continue
            merged = 0
            for cons in consumers.get(y, []):
                attrs = {a.name: helper.get_attribute_value(a) for a in cons.attribute}
                if cons.op_type != "Conv" or cons.input[0] != y or attrs.get("group", 1) != 1 or y in cons.input[1:] \
                        or len(cons.input) < 2 or cons.input[1] not in self.consts:
                    continue
                w = self.consts[cons.input[1]]
                if w.ndim != 4 or w.shape[1] != s.shape[0]:
                    continue
                composed = np.einsum("ojhw,jc->ochw", w.astype(np.float64), s).astype(w.dtype)
                cons.input[0] = x
                cons.input[1] = self.const(composed, (cons.name or "conv") + "_w")
                self.notes.append(f"folded the channel selection {_where(node)} into the weights of {_where(cons)}")
                merged += 1
            if merged and not any(i == y for n in self.g.node for i in n.input):
                self.remove(node)
            changed |= bool(merged)
        return changed

    @property
    def opset(self) -> int:
        return next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def canonicalise(proto: onnx.ModelProto, consts: dict[str, np.ndarray], mem_bytes: int) -> list[str]:
    """Rewrite ``proto`` in place (its input shapes already final) as the module docstring says;
    ``consts`` (initializer name -> value) gains the folded constants. Returns the notes."""
    notes: list[str] = []
    for index, node in enumerate(proto.graph.node):     # names stay those of the model as given
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    g = _Graph(proto, consts, mem_bytes, notes)
    g.selectors = set()
    g.activation_hints = {}
    g.range_aliases = []         # (tensor, the same values in another layout): compiler.frontend_seq
    for _ in range(_MAX_ROUNDS):
        g.infer()
        changed = any([step(g) for step in PRE_FOLD_STEPS])
        changed |= g.fold()
        if changed:
            g.infer()
        for step in (g.noops, g.arithmetic, g.reductions, g.gates, g.products, g.view_chains, g.channel_ranges, g.merge_selectors):
            changed |= step()
        for seq_step in QUANT_STEPS + SEQUENCE_STEPS:
            changed |= seq_step(g)
        if not changed:
            break
    save_hints(g)
    _drop_unused_initializers(proto, consts)
    return notes


def _drop_unused_initializers(proto: onnx.ModelProto, consts: dict) -> None:
    """Initializers the rewrites left unread (a folded chain's intermediates, replaced weights)."""
    g = proto.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output} | {i.name for i in g.input}
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        for t in g.initializer:
            if t.name not in used:
                consts.pop(t.name, None)
        del g.initializer[:]
        g.initializer.extend(keep)
