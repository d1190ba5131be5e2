"""Front end, fusion: BatchNormalization, per-channel constants, activations and element-wise
Add/Mul folded into the output stage of the layer producing their input (the DLA has no separate
units for them), or run as channel-wise layers where they cannot be; and the pruning of nodes no
graph output depends on.

Part of :class:`compiler.frontend._FrontEnd` (the :class:`Fusion` mixin); ``fusion_blocker``,
``fuse_activation`` and ``fuse_binary`` are shared with lowerings that make a Conv first."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import AvgPool, CompileError, Concat, Conv, GraphOutput, MaxPool

__all__ = ["channelwise_layer", "fusion_blocker", "fuse_activation", "fuse_binary", "Fusion"]


def channelwise_layer(name: str, nodes: list[str], x: str, out: str, scale: np.ndarray, bias: np.ndarray,
                      act: str = "none") -> Conv:
    """``out = act(scale * x + bias)`` per channel, as a layer: a depthwise 1x1 convolution (groups =
    channels), which the DLA runs like any convolution (at 1/lanes of its MAC rate, see
    docs/architecture.md). Used for whatever cannot be folded into a producing convolution:
    standalone BatchNormalization, per-channel Mul/Add by constants, an activation after a
    Concat, a pooling layer or the graph input."""
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    c = scale.size
    return Conv(name=name, nodes=list(nodes), input=x, output=out,
                weight=scale.reshape(c, 1, 1, 1).astype(np.float32),
                bias=np.broadcast_to(np.asarray(bias, dtype=np.float64), (c,)).astype(np.float32),
                groups=c, act=act, kind="channelwise")



@dataclass
class _Fusable:
    """A BatchNormalization, Relu, Add or constant Add waiting to be fused into the layer producing
    its input."""
    name: str
    op: str
    input: str                      # IR tensor
    output: str                     # IR tensor (new name, same shape)
    params: tuple = ()              # BN: (gamma, beta, mean, var, eps); Add, Mul: (other IR tensor,);
                                    # AddConst, MulConst: (vector,); activations: (act name, alpha, (lo, hi))

    @property
    def inputs(self) -> list[str]:
        return [self.input, self.params[0]] if self.op in ("Add", "Mul") else [self.input]




def fusion_blocker(op_kind: str, src, consumers: int) -> str:
    """Why the pending fusion ``op_kind`` (an activation, BatchNormalization, AddConst or MulConst)
    cannot be fused into ``src``, the layer producing its input read by ``consumers`` ops ('' if it
    can). Shared with any lowering that first turns the producer into a Conv."""
    if src is None:
        return "it is a graph input"
    if not isinstance(src, Conv):
        return f"it is produced by {type(src).__name__} '{src.name}'"
    if src.act != "none":
        return f"layer '{src.name}' already ends in an activation ({src.act})"
    if consumers > 1:
        return f"layer '{src.name}' producing it has {consumers} consumers (its output is also needed unmodified)"
    if src.residual and src.res_op == "mul":
        return f"layer '{src.name}' already ends in a multiplication by {src.residual!r}"
    if op_kind in ("BatchNormalization", "AddConst", "MulConst") and src.residual:
        return f"layer '{src.name}' already adds a residual"
    return ""


def fuse_activation(conv: Conv, params: tuple) -> None:
    """Make ``conv``'s output stage apply the activation ``params`` = (name, alpha, (lo, hi))."""
    conv.act, conv.alpha, conv.clip = params[0], float(params[1]), tuple(params[2])


def fuse_binary(conv: Conv, op: str, other: str) -> None:
    """Make ``conv`` add (op 'Add') or multiply (op 'Mul') its output by tensor ``other``."""
    conv.residual, conv.res_op = other, ("mul" if op == "Mul" else "add")


def _reads(op) -> list[str]:
    """IR tensors an op (layer, concatenation or pending fusion) reads."""
    if isinstance(op, (_Fusable, Concat)):
        return op.inputs
    return [op.input] + ([op.residual] if getattr(op, "residual", None) else [])



class Fusion:
    """Fusion and pruning (a mixin of :class:`compiler.frontend._FrontEnd`)."""

    # ---- fusion, outputs, pruning --------------------------------------------------------------
    def _fuse(self) -> list[Conv | MaxPool | AvgPool]:
        """Fold BatchNormalization and constant Adds, and fuse Relu and residual Adds, into the layer
        producing their input."""
        consumers: dict[str, int] = {}
        for op in self.ops:
            for t in _reads(op):
                consumers[t] = consumers.get(t, 0) + 1
        for o in self.proto.graph.output:
            t = self._resolve(o.name)
            consumers[t] = consumers.get(t, 0) + 1
        producer: dict[str, Conv | MaxPool] = {}
        layers: list[Conv | MaxPool] = []
        for op in self.ops:
            if isinstance(op, Concat):
                self.concats.append(op)
                continue
            if not isinstance(op, _Fusable):
                layers.append(op)
                producer[op.output] = op
                continue
            where = f"node '{op.name}' ({op.op})"
            if op.op in ("Add", "Mul"):
                src = self._fuse_add(op, producer, consumers, layers, where)
                if src is None:   # an identity channel-wise layer reads one operand and takes the other
                    a, b = op.input, op.params[0]
                    if self.tensors[a].shape != self.tensors[op.output].shape:
                        a, b = b, a
                    c = self.tensors[a].shape[0]
                    name = self._unique_name(op.name, len(self.layer_names))
                    layer = channelwise_layer(name, [op.name], a, op.output, np.ones(c), np.zeros(c))
                    fuse_binary(layer, op.op, b)
                    layers.append(layer)
                    producer[op.output] = layer
                    self.notes.append(f"{where} runs as channel-wise layer '{name}' (no producing layer can take it)")
                    continue
            else:
                src = producer.get(op.input)
                made_by = fusion_blocker(op.op, src, consumers.get(op.input, 0))
                if made_by:   # a layer of its own: a depthwise 1x1 convolution
                    layer = self._standalone(op)
                    layers.append(layer)
                    producer[op.output] = layer
                    self.notes.append(f"{where} runs as channel-wise layer '{layer.name}' (it cannot be fused: {made_by})")
                    continue
            if op.op in ("Add", "Mul"):
                fuse_binary(src, op.op, op.params[0])
                layers.remove(src)          # runs once both operands exist
                layers.append(src)
                self.notes.append(f"fused {where} into layer '{src.name}' as "
                                  f"{'a residual' if op.op == 'Add' else 'a multiplication by'} {src.residual!r}")
            elif op.op == "AddConst":
                src.bias = (src.bias.astype(np.float64) + op.params[0]).astype(np.float32)
                self.notes.append(f"folded {where} into the bias of layer '{src.name}'")
            elif op.op == "MulConst":
                v = op.params[0]
                src.weight = (src.weight.astype(np.float64) * v[:, None, None, None]).astype(np.float32)
                src.bias = (src.bias.astype(np.float64) * v).astype(np.float32)
                self.notes.append(f"folded {where} into the weights and bias of layer '{src.name}'")
            elif op.op == "BatchNormalization":
                gamma, beta, mean, var, eps = op.params
                if np.any(var + eps <= 0):
                    raise CompileError(f"{where}: var + epsilon must be positive")
                s = gamma / np.sqrt(var + eps)
                src.weight = (src.weight.astype(np.float64) * s[:, None, None, None]).astype(np.float32)
                src.bias = ((src.bias.astype(np.float64) - mean) * s + beta).astype(np.float32)
                self.notes.append(f"folded {where} into layer '{src.name}'")
            else:
                fuse_activation(src, op.params)
                self.notes.append(f"fused {where} into layer '{src.name}'")
            del self.tensors[src.output]
            del producer[src.output]
            src.output = op.output
            src.nodes.append(op.name)
            producer[op.output] = src
        return layers

    def _standalone(self, op: _Fusable) -> Conv:
        """The channel-wise layer running a BatchNormalization, per-channel Mul/Add or activation that
        no producing layer can take."""
        c = self.tensors[op.input].shape[0]
        scale, bias = np.ones(c), np.zeros(c)
        if op.op == "BatchNormalization":
            gamma, beta, mean, var, eps = op.params
            if np.any(var + eps <= 0):
                raise CompileError(f"node '{op.name}' (BatchNormalization): var + epsilon must be positive")
            scale = gamma / np.sqrt(var + eps)
            bias = beta - mean * scale
        elif op.op == "MulConst":
            scale = op.params[0]
        elif op.op == "AddConst":
            bias = op.params[0]
        name = self._unique_name(op.name, len(self.layer_names))
        layer = channelwise_layer(name, [op.name], op.input, op.output, scale, bias)
        if op.op not in ("BatchNormalization", "MulConst", "AddConst"):
            fuse_activation(layer, op.params)
        return layer

    def _fuse_add(self, op: _Fusable, producer: dict, consumers: dict, layers: list, where: str):
        """The Conv an Add (or Mul) of two tensors fuses into: one that produces an operand, has no
        residual yet (an Add: no activation either, which would come after the Add; a Mul applies the
        activation first), no other consumer and no phases (ConvTranspose, Resize), and whose output
        the other operand does not depend on; a Mul's per-channel operand is never the fused one. Of
        two candidates, the later one (its partner then already exists). Sets op.input/op.params so
        that op.input is the fused operand. None if no operand qualifies."""
        cands = []
        for mine, other in ((op.input, op.params[0]), (op.params[0], op.input)):
            src = producer.get(mine)
            if isinstance(src, Conv) and (op.op == "Mul" or src.act == "none") and not src.residual \
                    and consumers[mine] == 1 and mine != other and src.up == (1, 1) and not src.edge \
                    and self.tensors[mine].shape == self.tensors[op.output].shape \
                    and not self._depends_on(other, mine, producer):
                cands.append((layers.index(src), mine, other, src))
        if not cands:
            return None
        _, mine, other, src = max(cands, key=lambda c: c[0])
        op.input, op.params = mine, (other,)
        return src

    def _depends_on(self, tensor: str, on: str, producer: dict) -> bool:
        """Whether ``tensor`` is computed from ``on`` (through layers fused so far and concatenations)."""
        cats = {c.output: c for c in self.concats}
        todo, seen = [tensor], set()
        while todo:
            t = todo.pop()
            if t == on:
                return True
            if t in seen:
                continue
            seen.add(t)
            src = producer.get(t) or cats.get(t)
            if src is not None:
                todo.extend(_reads(src))
        return False

    def _prune(self, outputs: list[GraphOutput]) -> None:
        """Drop the nodes no graph output depends on (before fusion, so that they neither block a
        fusion nor are rejected)."""
        needed = {o.tensor for o in outputs}
        keep = []
        for op in reversed(self.ops):
            if op.output in needed:
                keep.append(op)
                needed.update(_reads(op))
            else:
                name = op.name if isinstance(op, (_Fusable, Concat)) else op.nodes[0]
                self.notes.append(f"dropped node '{name}': no graph output depends on it")
                self.tensors.pop(op.output, None)
        self.ops = keep[::-1]
