"""ONNX front end: an ONNX model in, the compiler's graph IR (:mod:`compiler.ir`) out.

What it does, in order:

1. Load the model (a path or an ``onnx.ModelProto``; a proto is copied, never modified).
2. Apply ``inshapes`` (the SDK's ``Compile`` string, ``1x3x224x224``, ``;`` between inputs) to the
   real graph inputs (inputs that are also initializers are weights, not inputs), then check that
   every input is static with batch 1: the IR is per image, batching is the runtime's business.
3. Run ONNX shape inference; its shapes are used to cross-check the shapes computed here.
4. Walk the nodes in topological order:

   * a node whose inputs are all constants (initializers, ``Constant`` outputs, earlier folds) is
     evaluated once with ``onnx.reference.ReferenceEvaluator`` and becomes a constant; ``Shape`` and
     ``Size`` of a tensor whose shape is static fold the same way (this removes the
     ``Shape -> Gather -> Concat -> Reshape`` chains exporters emit for a flatten);
   * ``Identity``, ``Dropout``, ``Flatten`` and ``Reshape`` are aliases: no layer, the IR tensor keeps
     its ``(C, H, W)`` shape in C-major order (which is what ONNX's flatten of NCHW produces) and the
     ONNX shape of the alias is remembered for graph outputs and for checks;
   * ``Conv`` (also grouped), ``MaxPool``, ``AveragePool``, ``Gemm`` and ``MatMul`` (constant right
     operand) become layers; a Gemm/MatMul becomes a ``Conv`` of kind ``'fc'`` whose kernel covers
     the whole input map; ``ConvTranspose`` becomes a ``Conv`` with ``up`` (the stride-1 convolution
     of the zero-inserted input), ``Resize``/``Upsample`` by integer factors a depthwise one with
     fixed weights and a replicated border (``edge``); the code generator lowers both by phases
     (:mod:`compiler.lowering`);
   * ``BatchNormalization``, per-channel ``Mul``/``Add`` by constants and the activations ``Relu``,
     ``LeakyRelu``, ``Clip``, ``Sigmoid`` and ``Tanh`` are fused into the Conv/Gemm/MatMul layer that
     produces their input when they are its only consumer (the DLA has no separate units for them:
     they run in the CONV's output stage); otherwise they become a channel-wise layer
     (:func:`channelwise_layer`, a depthwise 1x1 convolution);
   * an ``Add`` or ``Mul`` of two computed tensors is fused into the Conv producing one operand (the
     other is read from the residual buffer); a Mul's other operand may be a per-channel (C, 1, 1)
     tensor (a squeeze-excitation gate), broadcast over the pixels.

5. Drop layers that no graph output depends on (recorded in ``Graph.notes``, like every fold).

Every model the DLA cannot run is rejected with a :class:`~compiler.ir.CompileError` naming the node
and op (or the input, or the ``inshapes`` string) and what is wrong with it.

The work is split by job: loading and shapes (:mod:`compiler.frontend_load`), operator translation
(:mod:`compiler.frontend_ops`, one handler per entry of the operator table :mod:`compiler.ops`),
fusion (:mod:`compiler.frontend_fusion`); this module drives them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .frontend_fusion import Fusion, _Fusable, channelwise_layer, fuse_activation, fuse_binary, fusion_blocker
from .frontend_load import (_DLA_WEIGHT_BYTES, Shapes, _check_weight_bytes, _load, _load_external,
                            _static, evaluate_node, parse_inshapes)
from .frontend_ops import ACTIVATIONS, Translate
from .ir import CompileError, Concat, Conv, Graph, GraphOutput, HostTail, MaxPool, TensorInfo
from .frontend_canon import canonicalise
from .quant_import import read_hints
from .lift1d import is_unbatched
from .ops import SUPPORTED_OPS, spec

__all__ = ["load_model", "parse_inshapes", "channelwise_layer", "SUPPORTED_OPS", "evaluate_node",
           "fusion_blocker", "fuse_activation", "fuse_binary", "ACTIVATIONS"]


def load_model(model: str | Path | onnx.ModelProto, inshapes: str | None = None,
               mem_bytes: int | None = None) -> Graph:
    """Translate an ONNX model (path or proto) into the per-image graph IR.

    ``inshapes`` overrides the input shapes, in the SDK's form ``"1x3x224x224"`` with ``;`` between
    the inputs of a multi-input model. ``mem_bytes`` is the card memory (default: the reference
    configuration's): a model whose weights cannot fit it even as 16-bit values, or a constant
    node whose output could not, is refused before any weight is read into memory (external
    data is loaded only after this check). Raises ``FileNotFoundError`` for a missing file and
    :class:`CompileError` for anything the DLA cannot run."""
    from arch.machine import REFERENCE
    limit = REFERENCE.mem_bytes if mem_bytes is None else int(mem_bytes)
    proto, source, base_dir = _load(model)
    _check_weight_bytes(proto, source, limit)
    _load_external(proto, source, base_dir)
    return _FrontEnd(proto, source, inshapes, limit).run()



class _FrontEnd(Shapes, Translate, Fusion):
    """One translation of a model: the state the mixins share."""

    def __init__(self, proto: onnx.ModelProto, source: str, inshapes: str | None, mem_bytes: int):
        self.proto = proto
        self.mem_bytes = mem_bytes
        self.source = source
        self.inshapes = inshapes
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.consts: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}          # ONNX name -> IR tensor it is a view of
        self.reshaped_by: dict[str, str] = {}    # alias name -> the Flatten/Reshape node that made it
        self.shapes: dict[str, tuple[int, ...]] = {}   # ONNX shape (with batch) of every non-constant tensor
        self.inferred: dict[str, tuple[int, ...]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.ops: list[Conv | MaxPool | _Fusable] = []
        self.notes: list[str] = []
        self.layer_names: set[str] = set()
        self.used: set[str] = set()              # ONNX names some node or graph output reads
        self.concats: list[Concat] = []
        self.host_nodes: list[tuple[int, onnx.NodeProto]] = []   # nodes after the DLA part, run on the host
        self.host_tensors: set[str] = set()
        self.bad_inputs: dict[str, str] = {}     # graph inputs of a rank the DLA cannot take -> message

    # ---- driver ------------------------------------------------------------------------------
    def run(self) -> Graph:
        g = self.proto.graph
        for init in g.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        for init in g.sparse_initializer:
            raise CompileError(f"{self.source}: sparse initializer {init.values.name!r} is not supported")
        inputs = self._inputs()
        self.notes.extend(canonicalise(self.proto, self.consts, self.mem_bytes))
        self._infer_shapes()
        self.used = {i for n in g.node for i in n.input if i} | {o.name for o in g.output}
        for index, node in self._topological():
            if self._host(index, node):
                self.host_nodes.append((index, node))
                self.host_tensors.update(o for o in node.output if o)
                continue
            self._node(index, node)
        for message in self.bad_inputs.values():
            raise CompileError(message)
        host = self._host_tail()
        outputs = self._outputs(host)
        self._prune(outputs)
        layers = self._fuse()
        self._copy_inputs_to_outputs(inputs, outputs, layers)
        return Graph(name=g.name or Path(self.source).stem or "model", tensors=self.tensors,
                     layers=layers, inputs=inputs, outputs=outputs, opset=self.opset, notes=self.notes,
                     concats=self.concats, host=host, output_order=[o.name for o in g.output],
                     unbatched=is_unbatched(self.proto),
                     range_hints=read_hints(self.proto))


    # ---- per node ------------------------------------------------------------------------------
    @staticmethod
    def _node_name(index: int, node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}_{index}"

    def _where(self, index: int, node: onnx.NodeProto) -> str:
        from .frontend_canon import describe
        return describe(node, self._node_name(index, node))

    def _layer_name(self, index: int, node: onnx.NodeProto) -> str:
        return self._unique_name(self._node_name(index, node), index)

    def _unique_name(self, name: str, suffix: int) -> str:
        """``name`` for a new layer, or ``name_suffix`` if a layer has it already."""
        if name in self.layer_names:
            name = f"{name}_{suffix}"
        self.layer_names.add(name)
        return name

    def _host(self, index: int, node: onnx.NodeProto) -> bool:
        """Whether a node belongs to the host tail: an op type the DLA does not run (that cannot be
        folded), or any node reading what such a node produced."""
        ins = [i for i in node.input if i]
        if any(i in self.host_tensors for i in ins):
            return True
        if all(i in self.consts for i in ins) or (node.op_type in ("Shape", "Size") and node.input[0] in self.shapes):
            return False
        return spec(node) is None

    def _host_tail(self) -> HostTail | None:
        """The host nodes as a model of their own, or a CompileError if the DLA would have to run
        something after them (they would be in the middle of the network)."""
        if not self.host_nodes:
            return None
        first = self._where(*self.host_nodes[0])
        for index, node in self.host_nodes:
            if spec(node) is not None and not all(i in self.consts for i in node.input if i):
                if node.op_type in ("Identity", "Dropout", "Flatten", "Reshape"):
                    continue
                raise CompileError(
                    f"{first} is not supported on the DLA, and DLA layers follow it ({self._where(index, node)}); "
                    f"one DLA program takes host operators only after its last layer (compiler.partition splits "
                    f"a model into host and DLA stages: Compile does, in the middle of the network with "
                    f"SetFlag('heterogeneous', 1)); supported on the DLA: {', '.join(SUPPORTED_OPS)}")
        made = {o for _, n in self.host_nodes for o in n.output if o}
        boundary, inits = [], []
        for _, node in self.host_nodes:
            for i in node.input:
                if not i or i in made:
                    continue
                if i in self.consts:
                    if i not in {t.name for t in inits}:
                        inits.append(numpy_helper.from_array(np.asarray(self.consts[i]), i))
                elif i not in boundary:
                    if self._resolve(i) in {gi.name for gi in self.proto.graph.input}:
                        raise CompileError(f"{first} reads the graph input {i!r} directly; one DLA program takes "
                                           f"host operators only after its last layer (host operators before the "
                                           f"DLA are split off by compiler.partition, as Compile does)")
                    boundary.append(i)
        g = self.proto.graph
        outs = [o for o in g.output if o.name in made]
        if not outs:
            return None
        ins = [helper.make_tensor_value_info(b, onnx.TensorProto.FLOAT, list(self.shapes[b])) for b in boundary]
        model = helper.make_model(helper.make_graph([n for _, n in self.host_nodes], "host_tail", ins, list(outs), inits),
                                  opset_imports=list(self.proto.opset_import), ir_version=self.proto.ir_version)
        try:
            ReferenceEvaluator(model)
        except Exception as e:  # noqa: BLE001 - any reason the host cannot evaluate these nodes
            bad = next((self._where(i, n) if n.domain in ("", "ai.onnx") else
                        f"node '{self._node_name(i, n)}' ({n.domain}.{n.op_type})")
                       for i, n in self.host_nodes)
            raise CompileError(f"{bad} runs neither on the DLA nor on the host (the host evaluates ONNX operators "
                               f"with onnx.reference: {e})") from None
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        shapes = {}
        for vi in inferred.graph.output:
            s_ = _static(vi.type.tensor_type.shape) if vi.type.tensor_type.HasField("shape") else None
            if s_ is None:
                raise CompileError(f"{first}: the shape of host output {vi.name!r} cannot be inferred")
            shapes[vi.name] = s_
        nodes = [self._where(i, n) for i, n in self.host_nodes]
        self.notes.append(f"run on the host after the DLA: {', '.join(nodes)}")
        return HostTail(model=model.SerializeToString(), inputs=boundary,
                        outputs=[GraphOutput(o.name, "", shapes[o.name]) for o in outs], nodes=nodes)

    def _node(self, index: int, node: onnx.NodeProto) -> None:
        where = self._where(index, node)
        op = spec(node)
        if node.domain not in ("", "ai.onnx") and op is None:
            raise CompileError(f"node '{self._node_name(index, node)}' ({node.domain}.{node.op_type}) is not supported "
                               f"on the DLA; supported: {', '.join(SUPPORTED_OPS)}", node=self._node_name(index, node))
        ins = [i for i in node.input if i]
        if all(i in self.consts for i in ins):
            self._fold(index, node, {i: self.consts[i] for i in ins})
            return
        if node.op_type in ("Shape", "Size") and node.input[0] in self.shapes:
            shape = self.shapes[node.input[0]]
            dummy = np.broadcast_to(np.float32(0), shape)      # only its shape matters
            self._fold(index, node, {node.input[0]: dummy}, note="of a static shape")
            return
        if op is None:
            raise CompileError(f"{where} is not supported on the DLA; supported: {', '.join(SUPPORTED_OPS)} "
                               f"(and nodes whose inputs are all constants, which are folded)",
                               node=self._node_name(index, node))
        try:
            for out in node.output[1:]:
                if out and out in self.used:
                    raise CompileError(f"{where}: its output {out!r} is used, but only the first output of "
                                       f"{node.op_type} is supported")
            getattr(self, op.handler)(index, node, where, {a.name: helper.get_attribute_value(a) for a in node.attribute})
        except CompileError as e:     # the partitioner moves the node named here to the host
            e.node = e.node or self._node_name(index, node)
            raise

    def _fold(self, index: int, node: onnx.NodeProto, feeds: dict[str, np.ndarray], note: str = "") -> None:
        for o in node.output:     # bounded memory: never materialise a constant larger than the card memory
            if o in self.inferred and math.prod(self.inferred[o]) * _DLA_WEIGHT_BYTES > self.mem_bytes:
                raise CompileError(f"{self._where(index, node)}: its constant output {o!r} {list(self.inferred[o])} "
                                   f"would need {math.prod(self.inferred[o]) * _DLA_WEIGHT_BYTES} bytes as 16-bit "
                                   f"values, more than the {self.mem_bytes} bytes of card memory")
        results = evaluate_node(node, feeds, self.proto, self._where(index, node))
        outs = [o for o in node.output if o]
        for name, value in zip(outs, results):
            self.consts[name] = np.asarray(value)
        self.notes.append(f"folded {self._where(index, node)}{' ' + note if note else ''} into constant(s) "
                          f"{', '.join(repr(o) for o in outs)}")


    # ---- helpers for operands ------------------------------------------------------------------
    def _resolve(self, name: str) -> str:
        return self.alias.get(name, name)

    def _const(self, where: str, node: onnx.NodeProto, pos: int, what: str, required: bool = True) -> np.ndarray | None:
        name = node.input[pos] if pos < len(node.input) else ""
        if not name:
            if required:
                raise CompileError(f"{where}: missing {what} input")
            return None
        if name not in self.consts:
            raise CompileError(f"{where}: {what} {name!r} must be a constant (initializer); the DLA takes weights "
                               f"from the model, not from a computed tensor")
        return self.consts[name]

    def _operand(self, where: str, name: str) -> tuple[str, tuple[int, ...]]:
        """A non-constant input: (IR tensor, ONNX shape of this name)."""
        if name in self.consts:
            raise CompileError(f"{where}: input {name!r} is a constant; this op needs a computed tensor there")
        if name not in self.shapes:
            raise CompileError(f"{where}: the shape of input {name!r} is unknown")
        if self._resolve(name) in self.bad_inputs:
            raise CompileError(f"{where}: {self.bad_inputs[self._resolve(name)]}")
        return self._resolve(name), self.shapes[name]

    def _feature_map(self, where: str, name: str) -> tuple[str, tuple[int, int, int]]:
        """A non-constant (1, C, H, W) input whose ONNX shape is its IR tensor's shape."""
        t, shape = self._operand(where, name)
        if len(shape) != 4:
            raise CompileError(f"{where}: expects a 4-D (N, C, H, W) input, {name!r} has shape {shape}")
        if shape[0] != 1:
            raise CompileError(f"{where}: input {name!r} has batch dimension {shape[0]}; the compiled graph is per image")
        chw = self.tensors[t].shape
        if shape[1:] != chw:
            raise CompileError(f"{where}: input {name!r} is {self.reshaped_by.get(name, 'a reshape')}'s view of tensor "
                               f"{t!r} {chw} as {shape}; only reshapes that flatten a feature map for Gemm/MatMul "
                               f"(or keep its shape) are supported")
        return t, chw

    def _vector(self, where: str, name: str) -> tuple[str, int]:
        """A non-constant (1, K) input (a flattened feature map), also with more leading unit
        dimensions, (1, 1, K) say: (IR tensor, K)."""
        t, shape = self._operand(where, name)
        if len(shape) < 2 or any(d != 1 for d in shape[:-1]) or math.prod(self.tensors[t].shape) != shape[-1]:
            raise CompileError(f"{where}: input {name!r} has shape {shape}; a fully connected layer takes a (1, K) "
                               f"input (flatten the feature map first)")
        return t, shape[-1]

    def _new_tensor(self, name: str, chw: tuple[int, int, int], onnx_shape: tuple[int, ...], where: str) -> None:
        if any(d <= 0 for d in chw):
            raise CompileError(f"{where}: output {name!r} would have shape {chw}; the input is too small for the window")
        self.tensors[name] = TensorInfo(name, tuple(int(d) for d in chw))
        self._set_shape(name, onnx_shape, where)


    def _copy_inputs_to_outputs(self, inputs, outputs, layers) -> None:
        """A graph output that is a view of a graph input (a Reshape, Flatten, Identity of it) is an
        identity channel-wise copy on the DLA: the output has storage of its own."""
        given = {gi.tensor for gi in inputs}
        copies: dict[str, str] = {}
        for o in outputs:
            if o.tensor not in given:
                continue
            if o.tensor not in copies:
                c = self.tensors[o.tensor].shape[0]
                name = self._unique_name(f"{o.tensor}__copy", len(self.layer_names))
                self.tensors[name] = TensorInfo(name, self.tensors[o.tensor].shape)
                layers.append(channelwise_layer(name, [name], o.tensor, name, np.ones(c), np.zeros(c)))
                copies[o.tensor] = name
                self.notes.append(f"graph output {o.name!r} is a view of the graph input {o.tensor!r}: the DLA "
                                  f"copies it (channel-wise layer '{name}')")
            o.tensor = copies[o.tensor]

    # ---- outputs --------------------------------------------------------------------------------
    def _outputs(self, host: HostTail | None) -> list[GraphOutput]:
        """What the DLA program produces: the graph outputs it computes, then the inputs of the host tail."""
        outputs = []
        wanted = [o.name for o in self.proto.graph.output if not (host and o.name in self.host_tensors)]
        wanted += [b for b in (host.inputs if host else []) if b not in wanted]
        for name in wanted:
            o = onnx.ValueInfoProto(name=name)
            if o.name in self.consts:
                raise CompileError(f"graph output {o.name!r} is a constant; there is nothing for the DLA to compute")
            if o.name not in self.shapes:
                raise CompileError(f"graph output {o.name!r} is not produced by any node")
            shape = self.shapes[o.name]
            if shape[0] != 1:
                raise CompileError(f"graph output {o.name!r} has shape {shape}, whose first (batch) dimension is not 1")
            outputs.append(GraphOutput(o.name, self._resolve(o.name), shape))
        return outputs
