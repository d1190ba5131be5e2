"""Host fallback (the SDK's ``heterogeneous`` flag): a model split into host and DLA stages.

Operators the DLA does not run (Softmax, LRN, Transpose, Sub, Div, ...) run on the host in the
runtime, evaluated with ``onnx.reference``. Where they may be:

* **head**: before the first DLA layer (an input normalisation, a layout change), always allowed;
* **tail**: after the last DLA layer (a Softmax after a classifier), always allowed;
* **middle**: between DLA layers, only with ``SetFlag('heterogeneous', 1)``; otherwise Compile
  fails with an error naming the node, its op and the flag.

How the model is split:

1. Constants are evaluated once (as the front end does): initializers, nodes whose inputs are all
   constants, ``Shape``/``Size`` of a statically shaped tensor.
2. Every other node is labelled DLA or host. DLA: an op of :data:`compiler.ops.SUPPORTED_OPS`
   where the front end could place it; a per-channel op (BatchNormalization, an activation, Add or
   Mul by a constant) unless its input comes from the host (it is fused into the layer producing
   it, or becomes a channel-wise layer); an Add, Mul or Sum of two tensors only when one of its
   inputs is computed on the DLA (it is fused into the layer producing it); a reshape or
   concatenation only when one of its inputs is not a host tensor. Host: the rest.
3. The nodes are ordered topologically, staying with the current label as long as a node of that
   label is ready (fewest switches), and cut where the label changes: host and DLA stages
   alternate. A DLA stage with no layer that computes (only reshapes or fused ops) runs on the host.
4. A model with neither head nor middle is compiled exactly as before
   (:func:`compiler.driver.compile_model`, a host tail inside :class:`~compiler.driver.Compiled`).
   Otherwise every DLA stage is an ONNX model of its own, compiled by the same pipeline into a
   :class:`~compiler.driver.Compiled` placed in card memory after the previous one, and every host
   stage is an ONNX model run by the runtime: together a :class:`Staged`.

The runtime moves tensors between stages through the host (the SDK's heterogeneous mode did the
same): each DLA stage's inputs are converted to fixed point and written to its input slots, its
outputs read back. Modelled time (``hwcycles``) is the sum of the DLA stages' cycles; host time is
not modelled.
"""
from __future__ import annotations

import dataclasses
import heapq
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from arch.machine import MachineConfig

from .compiled import Compiled, IODesc, Parallel
from .driver import compile_model
from .frontend import _FrontEnd
from .frontend_load import _check_weight_bytes, _load, _load_external, _static, evaluate_node
from .hostops import host_evaluator
from .ir import CompileError
from .memmap import align
from .lift1d import is_unbatched, unlift_vectors
from .frontend_canon import canonicalise, describe, origin
from .frontend_seq import sequence_io
from .ops import SUPPORTED_OPS, ops_in, spec
from .quant_import import HINTS_KEY

__all__ = ["HostStage", "Staged", "HostOnlyWarning", "compile_partitioned", "partition"]

# The categories of the operator table (compiler/ops.py):
#: ops that make a DLA layer (the others fuse into one, make a channel-wise layer, or are views)
LAYER_OPS = ops_in("layer")
#: per-channel ops: fused into the layer producing their input, else a channel-wise layer of their
#: own; on the DLA when their input comes from the DLA or is a model input
UNARY_OPS = ops_in("unary")
#: ops fused into the layer producing their input: on the DLA only if that layer is
FUSED_OPS = ops_in("unary", "binary")
#: views and concatenation: no code of their own
VIEW_OPS = ops_in("view")

HOST, DLA = "host", "dla"


@dataclass
class HostStage:
    """Operators the runtime runs on the host, per image, with ``onnx.reference``."""
    model: bytes                 #: an ONNX model of just these nodes (batch 1)
    inputs: list[str]            #: tensors it reads: model inputs or earlier stages' outputs
    outputs: list[str]           #: tensors it produces that later stages or the model's outputs need
    nodes: list[str]             #: "node 'x' (Op)", for reports
    position: str                #: 'head', 'middle' or 'tail'

    def to_dict(self) -> dict:
        return {"kind": HOST, "inputs": self.inputs, "outputs": self.outputs, "nodes": self.nodes,
                "position": self.position}


class Span(NamedTuple):
    """The card memory a staged model occupies (each DLA stage has its own memory map inside it)."""
    base: int
    end: int


@dataclass
class Staged:
    """A model with host stages before or between DLA stages: the stages in the order they run.

    It offers what the runtime reads of a :class:`Compiled` that does not depend on the stage
    (configuration, batching, memory span, inputs and outputs, layers for reports)."""
    stages: list[HostStage | Compiled]
    inputs: list[IODesc]         #: the model's inputs (tensor = ONNX name), shape with batch 1
    outputs: list[IODesc]        #: the model's outputs, in the model's order
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    config: MachineConfig | None = None   #: the configuration compiled for (a model with no DLA stage has it too)
    par: Parallel | None = None           #: the batching compiled for
    base: int = 0                         #: where its memory starts (a model with no DLA stage occupies none)
    #: no DLA stage: one host stage runs the model as given on each call's arrays, whole (its own
    #: batch, shapes and element types), instead of image by image
    whole: bool = False
    dtypes: dict = field(default_factory=dict)   #: whole: input name -> numpy dtype

    graph = None                 #: no single graph: Run_th runs the stages
    host = None                  #: host stages are stages here, not a tail of a Compiled

    @property
    def segments(self) -> list[Compiled]:
        return [s for s in self.stages if isinstance(s, Compiled)]

    @property
    def cfg(self) -> MachineConfig:
        return self.segments[0].cfg if self.segments else self.config

    @property
    def parallel(self) -> Parallel:
        return self.segments[0].parallel if self.segments else self.par

    @property
    def memmap(self) -> Span:
        if not self.segments:
            return Span(self.base, self.base)
        return Span(self.segments[0].memmap.base, self.segments[-1].memmap.end)

    @property
    def final_outputs(self) -> list[IODesc]:
        return self.outputs

    @property
    def output_order(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def layers(self):
        return [lc for s in self.segments for lc in s.layers]

    def whole_inputs(self, images) -> list[np.ndarray]:
        """A whole-model host run's inputs, checked against the model's own shapes (a model of batch
        1 also takes N images, or one image without its batch dimension) and converted to its
        element types."""
        arrays = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(arrays) != len(self.inputs):
            raise ValueError(f"the network has {len(self.inputs)} input(s) "
                             f"({', '.join(i.name for i in self.inputs)}), got {len(arrays)} array(s)")
        out, batch = [], None
        for a, i in zip(arrays, self.inputs):
            if a is None:
                raise ValueError(f"input {i.name!r} is None")
            a = np.asarray(a)
            shape = tuple(i.onnx_shape)
            if a.shape != shape and shape[:1] == (1,) and a.shape == shape[1:]:
                a = a[None]
            if a.shape != shape and not (shape[:1] == (1,) and a.ndim == len(shape) and a.shape[1:] == shape[1:]):
                raise ValueError(f"input {i.name!r} must have shape {shape}"
                                 + (f" or (N, {', '.join(map(str, shape[1:]))})" if shape[:1] == (1,) else "")
                                 + f", got {a.shape}")
            if a.shape != shape:        # N images of a batch-1 model: the same N for every input
                if batch is not None and a.shape[0] != batch:
                    raise ValueError(f"inputs have different batch sizes ({batch} and {a.shape[0]})")
                batch = a.shape[0]
            if a.dtype.kind not in "fiub":
                raise TypeError(f"input {i.name!r} must be a numeric array, got dtype {a.dtype}")
            out.append(a.astype(self.dtypes.get(i.name, np.float32), copy=False))
        return out

    def run_whole(self, images):
        """Run the whole model on the host (image by image when the model has batch 1 and the call
        several): one array for a single-output model, else a list."""
        if self._evaluator is None:
            self._evaluator = host_evaluator(self.stages[0].model)
        arrays = self.whole_inputs(images)
        per_image = any(a.shape != tuple(i.onnx_shape) for a, i in zip(arrays, self.inputs))
        calls = [[a[n:n + 1] for a in arrays] for n in range(arrays[0].shape[0])] if per_image else [arrays]
        results = [[np.asarray(v) for v in self._evaluator.run(None, {i.name: a for i, a in zip(self.inputs, call)})]
                   for call in calls]
        values = [np.concatenate(vs) for vs in zip(*results)] if per_image else results[0]
        return values[0] if len(values) == 1 else values

    _evaluator = None

    def memory_image(self) -> np.ndarray:
        """Every DLA stage's memory image in its place, from address 0 to the end of the last."""
        mem = np.zeros(self.memmap.end, dtype=np.uint8)
        for s in self.segments:
            mem[s.memmap.base:s.memmap.end] = s.memory_image()[s.memmap.base:]
        return mem


# --------------------------------------------------------------------------------------------
# partitioning
# --------------------------------------------------------------------------------------------

@dataclass
class _Part:
    kind: str                                    #: HOST or DLA
    nodes: list[tuple[int, onnx.NodeProto]]


def _dla_can(node: onnx.NodeProto, consts) -> bool:
    """Whether the DLA runs this kind of node at all, as far as its op type, constant operands and
    axis tell (the front end checks the rest and names what it refuses)."""
    op = node.op_type
    if spec(node) is None:
        return False
    ins = [i for i in node.input if i]
    if op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):   # weights come from the model
        return len(ins) > 1 and ins[1] in consts
    if op == "Concat":                                     # along channels only
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        return axis in (1, -3, -1)      # -1: of (1, K) vectors (the front end checks the rank)
    return True


def _computes(node: onnx.NodeProto) -> bool:
    """Whether the node makes a DLA layer whatever precedes it: a layer op, or a per-channel or
    element-wise op (a channel-wise layer where it cannot be fused)."""
    return node.op_type in LAYER_OPS or node.op_type in FUSED_OPS


def _label(order, consts, forced: set[int], host_inputs=()) -> dict[int, str]:
    """DLA or host for every non-constant node (see the module docstring, step 2); the graph inputs
    ``host_inputs`` (of a type, rank or batch the DLA does not take) count as made on the host."""
    made_by: dict[str, str] = dict.fromkeys(host_inputs, HOST)   # tensor -> label of its producer
    labels = {}
    for index, node in order:
        ins = [i for i in node.input if i and i not in consts]
        op = node.op_type
        if index in forced or not _dla_can(node, consts):
            lab = HOST
        elif (op in UNARY_OPS or op in ("Add", "Mul")) and len(ins) == 1:   # per channel: a layer if need be
            lab = HOST if made_by.get(ins[0]) == HOST else DLA
        elif op in FUSED_OPS and not (op == "Sum" and len(ins) == 1):
            # fused into the layer producing a DLA operand, or an identity channel-wise layer (also
            # when every operand is a model input)
            lab = DLA if any(made_by.get(i) == DLA for i in ins) or all(i not in made_by for i in ins) else HOST
        elif op in VIEW_OPS or op == "Sum":
            lab = HOST if ins and all(made_by.get(i) == HOST for i in ins) else DLA
        else:
            lab = DLA
        labels[index] = lab
        for o in node.output:
            if o:
                made_by[o] = lab
    return labels


def _schedule(order, consts, labels: dict[int, str]) -> list[_Part]:
    """Topological order that keeps to the current label while it can, cut into alternating parts."""
    producer = {o: k for k, (_, n) in enumerate(order) for o in n.output if o}
    waiting = [0] * len(order)
    readers: dict[int, list[int]] = {}
    for k, (_, n) in enumerate(order):
        for name in {i for i in n.input if i and i not in consts and i in producer}:
            waiting[k] += 1
            readers.setdefault(producer[name], []).append(k)
    ready = {HOST: [], DLA: []}
    for k in range(len(order)):
        if waiting[k] == 0:
            heapq.heappush(ready[labels[order[k][0]]], k)
    parts: list[_Part] = []
    current = HOST
    while ready[HOST] or ready[DLA]:
        if not ready[current]:
            current = DLA if current == HOST else HOST
        k = heapq.heappop(ready[current])
        if not parts or parts[-1].kind != current:
            parts.append(_Part(current, []))
        parts[-1].nodes.append(order[k])
        for j in readers.get(k, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready[labels[order[j][0]]], j)
    return parts


def _where(index: int, node: onnx.NodeProto) -> str:
    """``node 'name' (Op)``, the user's node first for one canonicalisation wrote."""
    return describe(node, node.name or f"{node.op_type}_{index}")


class _Partitioner:
    """The model, its constants and (once :meth:`prepare` ran) the shapes and types of its tensors.

    Labelling needs only which tensors are constant, so the weights are neither converted nor
    shape-inferred until the model turns out to need host stages before or between DLA layers."""

    def __init__(self, model, inshapes: str | None, mem_bytes: int):
        self.proto, self.source, self.base_dir = _load(model)
        _check_weight_bytes(self.proto, self.source, mem_bytes)   # before any weight is read
        _load_external(self.proto, self.source, self.base_dir)
        self.fe = _FrontEnd(self.proto, self.source, inshapes, mem_bytes)
        self.fe.consts = {t.name: numpy_helper.to_array(t) for t in self.proto.graph.initializer}
        self.inputs = self.fe._inputs()          # applies inshapes, checks types and static shapes
        self.given = onnx.ModelProto()           # the model as given: what runs if the host runs it all
        self.given.CopyFrom(self.proto)
        unlift_vectors(self.given)
        # the same static graph as the front end's: shapes to a fixpoint, exporters' idioms rewritten
        self.notes = canonicalise(self.proto, self.fe.consts, mem_bytes)
        self.inits = {t.name: t for t in self.proto.graph.initializer}
        self.order = self.fe._topological()
        self.consts = set(self.inits)
        self.const_nodes, self.nodes = [], []
        for index, node in self.order:
            ins = [i for i in node.input if i]
            # Shape/Size fold when their input's shape is static (checked in prepare)
            if all(i in self.consts for i in ins) or node.op_type in ("Shape", "Size"):
                self.const_nodes.append((index, node))
                self.consts.update(o for o in node.output if o)
            else:
                self.nodes.append((index, node))
        self.values: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.types: dict[str, onnx.ValueInfoProto] = {}

    def prepare(self) -> None:
        """Infer shapes and types, evaluate the constant nodes canonicalisation left (a Shape of a
        tensor whose shape only the front end's inference knows)."""
        try:     # on the graph without its weights' values, as the front end does
            inferred = onnx.shape_inference.infer_shapes(self.fe._shapes_only(), strict_mode=False).graph
        except Exception as e:  # noqa: BLE001
            raise CompileError(f"{self.source}: ONNX shape inference failed: {e}") from None
        for vi in list(inferred.value_info) + list(inferred.output) + list(inferred.input):
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi
                if vi.type.tensor_type.HasField("shape"):
                    shape = _static(vi.type.tensor_type.shape)
                    if shape is not None:
                        self.shapes[vi.name] = shape
        for index, node in self.const_nodes:
            ins = [i for i in node.input if i]
            if node.op_type in ("Shape", "Size") and not all(i in self.consts for i in ins):
                if node.input[0] not in self.shapes:
                    raise CompileError(f"{_where(index, node)}: the shape of {node.input[0]!r} is not static")
                feeds = {node.input[0]: np.broadcast_to(np.float32(0), self.shapes[node.input[0]])}
            else:
                feeds = {i: self.value(i) for i in ins}
            values = evaluate_node(node, feeds, self.proto, _where(index, node))
            for o, v in zip([o for o in node.output if o], values):
                self.values[o] = np.asarray(v)

    def value(self, name: str) -> np.ndarray:
        if name not in self.values:
            self.values[name] = self.fe.consts[name] if name in self.fe.consts else numpy_helper.to_array(self.inits[name])
        return self.values[name]

    def parts(self, nodes, heterogeneous: bool, forced: set[int] = frozenset()) -> list[_Part]:
        forced = set(forced)
        while True:
            labels = _label(nodes, self.consts, forced, self.fe.bad_inputs)
            self._input_views_to_host(nodes, labels)
            parts = _schedule(nodes, self.consts, labels)
            idle = [p for p in parts if p.kind == DLA and not any(_computes(n) for _, n in p.nodes)
                    and not self._copies(p)]
            if not idle:
                break
            forced |= {i for p in idle for i, _ in p.nodes}
        dla = [k for k, p in enumerate(parts) if p.kind == DLA]
        if dla and not heterogeneous:
            for p in parts[dla[0] + 1:dla[-1]]:
                if p.kind == HOST:
                    self._refuse_middle(p, parts[parts.index(p) + 1:])
        return parts

    def _input_views_to_host(self, nodes, labels: dict[int, str]) -> None:
        """A view of a model input that only host nodes read (a recurrence's initial state given a
        leading axis by :func:`compiler.frontend_seq.sequence_io`) runs on the host: on the DLA it
        would be a stage output the host reads, of a batch the DLA stages do not take."""
        inputs = {vi.name for vi in self.proto.graph.input} - self.consts
        outputs = {o.name for o in self.proto.graph.output}
        readers: dict[str, list[int]] = {}
        for index, node in nodes:
            for i in node.input:
                if i:
                    readers.setdefault(i, []).append(index)
        of_inputs = set(inputs)
        changed = True
        while changed:
            changed = False
            for index, node in nodes:
                ins = [i for i in node.input if i and i not in self.consts]
                if labels[index] != DLA or node.op_type not in VIEW_OPS or not ins or not set(ins) <= of_inputs:
                    continue
                outs = [o for o in node.output if o]
                if any(o in outputs for o in outs):
                    continue
                users = [k for o in outs for k in readers.get(o, [])]
                if users and all(labels[k] == HOST for k in users):
                    labels[index] = HOST
                    changed = True
                elif not set(outs) <= of_inputs:
                    of_inputs.update(outs)       # a view of a view of an input, checked again
                    changed = True

    def _copies(self, part: _Part) -> bool:
        """Whether a part of views only turns model inputs into model outputs (the DLA copies them)."""
        made = {o for _, n in part.nodes for o in n.output if o}
        given = {vi.name for vi in self.proto.graph.input} - set(self.fe.bad_inputs)
        reads = {i for _, n in part.nodes for i in n.input if i and i not in self.consts and i not in made}
        return bool(reads) and reads <= given and any(o.name in made for o in self.proto.graph.output)

    def _refuse_middle(self, part: _Part, later: list[_Part]) -> None:
        """The CompileError for host operators between DLA layers without the flag: names the first
        host node of ``part`` that a later DLA layer depends on, and that layer."""
        after = [x for p in later for x in p.nodes]
        for index, node in part.nodes:
            reach = {o for o in node.output if o}
            for j, n in part.nodes[part.nodes.index((index, node)) + 1:] + after:
                if any(i in reach for i in n.input):
                    if n.op_type in LAYER_OPS and any(j == k for q in later if q.kind == DLA for k, _ in q.nodes):
                        what = (f"runs on the host in part (the DLA does not take that {node.op_type})"
                                if origin(node) else "is not supported on the DLA")
                        raise CompileError(
                            f"{_where(index, node)} {what}, and DLA layers follow it "
                            f"({_where(j, n)}); operators before the first and after the last DLA layer run on the "
                            f"host, in the middle of the network only with SetFlag('heterogeneous', 1); supported "
                            f"on the DLA: {', '.join(SUPPORTED_OPS)}")
                    reach.update(o for o in n.output if o)
        raise CompileError(f"{_where(*part.nodes[0])} runs on the host between DLA layers; operators in the middle "
                           f"of the network run on the host only with SetFlag('heterogeneous', 1)")

    # ---- stage models ----------------------------------------------------------------------------
    def boundaries(self, parts: list[_Part]) -> list[tuple[list[str], list[str]]]:
        """(inputs, outputs) of every part: the non-constant tensors it reads from outside, and the
        tensors it makes that a later part or the model's outputs need."""
        made = [{o for _, n in p.nodes for o in n.output if o} for p in parts]
        reads = []
        for p, mine in zip(parts, made):
            r = []
            for _, n in p.nodes:
                for i in n.input:
                    if i and i not in self.consts and i not in mine and i not in r:
                        r.append(i)
            reads.append(r)
        wanted = [o.name for o in self.proto.graph.output]
        result = []
        for k, p in enumerate(parts):
            later = {t for r in reads[k + 1:] for t in r} | set(wanted)
            outs = [o for _, n in p.nodes for o in n.output if o and o in later]
            result.append((reads[k], outs))
        return result

    def value_info(self, name: str, where: str, need_shape: bool) -> onnx.ValueInfoProto:
        shape = self.shapes.get(name)
        if need_shape and shape is None:
            raise CompileError(f"{where}: the shape of tensor {name!r} cannot be inferred statically; the DLA "
                               f"stages need static shapes")
        vi = self.types.get(name)
        if vi is not None and vi.type.HasField("tensor_type"):
            out = onnx.ValueInfoProto()
            out.CopyFrom(vi)
            return out
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape) if shape else None)

    def sub_model(self, part: _Part, ins: list[str], outs: list[str], name: str) -> onnx.ModelProto:
        where = _where(*part.nodes[0])
        inits, seen = [], set()
        for _, n in part.nodes:
            for i in n.input:
                if i and i in self.consts and i not in seen:
                    seen.add(i)
                    inits.append(self.inits[i] if i in self.inits else numpy_helper.from_array(self.values[i], i))
        need = part.kind == DLA
        g = helper.make_graph([n for _, n in part.nodes], name,
                              [self.value_info(i, where, need) for i in ins],
                              [self.value_info(o, where, need) for o in outs], inits)
        m = helper.make_model(g, opset_imports=list(self.proto.opset_import), ir_version=self.proto.ir_version)
        # a quantised model's activation range hints go with the stage (its own canonicalisation
        # finds no QDQ pair left to take them from)
        m.metadata_props.extend(prop for prop in self.proto.metadata_props if prop.key == HINTS_KEY)
        return m


def partition(model, inshapes: str | None = None, heterogeneous: bool = False, mem_bytes: int | None = None,
              forced: set[int] = frozenset(), p: "_Partitioner | None" = None):
    """Split a model into alternating host and DLA parts: (the prepared partitioner, the parts), or
    (the partitioner, None) when the model has neither a host head nor a host middle (it compiles
    as one DLA program, with its host tail if any). ``forced``: indices of nodes that run on the
    host whatever their op. Raises CompileError for a host operator between DLA layers without
    ``heterogeneous``, and for a model without DLA layers without it."""
    from arch.machine import REFERENCE
    if p is None:
        p = _Partitioner(model, inshapes, REFERENCE.mem_bytes if mem_bytes is None else int(mem_bytes))
    nodes = p.nodes
    parts = p.parts(nodes, heterogeneous, forced)
    if not any(q.kind == DLA for q in parts):
        if not nodes:
            raise CompileError("the model has no layer that runs on the DLA")
        if not heterogeneous:
            index, node = nodes[0]
            raise CompileError(f"the model has no layer that runs on the DLA: {_where(index, node)}: "
                               f"{_why_host(p, index, node, forced)}; with SetFlag('heterogeneous', 1) the host runs it",
                               node=node.name)
        p.prepare()
        return p, parts
    if parts[0].kind == DLA and (len(parts) == 1 or (len(parts) == 2 and _frontend_tail(
            parts[1], {i.name for i in p.proto.graph.input}))):
        return p, None
    p.prepare()
    return p, parts


def _why_host(p: "_Partitioner", index: int, node: onnx.NodeProto, forced) -> str:
    """Why the partitioner put this node on the host."""
    bad = next((p.fe.bad_inputs[i] for i in node.input if i in p.fe.bad_inputs), None)
    if bad:
        return bad
    if spec(node) is None:
        return f"the DLA does not run {node.op_type if node.domain in ('', 'ai.onnx') else node.domain + '.' + node.op_type}"
    if index in forced:
        return "the front end refused it"
    if node.op_type in VIEW_OPS:
        return "it only reshapes, aliases or concatenates its inputs, which is no computation for the DLA"
    return "it reads only tensors made on the host"


def _frontend_tail(tail: _Part, graph_inputs: set[str]) -> bool:
    """Whether the front end puts these nodes in its host tail of one DLA program, as it does for
    ops it does not know and for everything reading what they produce (and none of them reads a
    model input: a recurrence's initial state, which the front end's tail cannot take)."""
    made = set()
    for _, node in tail.nodes:
        if (spec(node) is not None and not any(i in made for i in node.input)) or any(
                i in graph_inputs for i in node.input):
            return False
        made.update(o for o in node.output if o)
    return True


def compile_partitioned(model, cfg: MachineConfig, inshapes: str | None = None, base: int = 0,
                        parallel: Parallel = Parallel(), heterogeneous: bool = False, samples=None) -> Compiled | Staged:
    """ONNX model -> a :class:`Compiled` (no host stage before or between DLA layers) or a :class:`Staged`.

    With ``heterogeneous``, a node the front end refuses in a DLA stage (an attribute, rank or
    shape the DLA does not take) moves to the host and the model is partitioned again, until every
    DLA stage compiles; a model left without DLA layers runs on the host alone, with a
    :class:`HostOnlyWarning`. Without it, the refusal names the node, its op, the reason and the flag.

    ``samples`` (calibration images for the model's inputs) give every DLA stage calibration samples
    of its own inputs: the stages run in float, in order, on each sample.

    A model with sequence-first recurrent layers gets a leading unit (batch) axis on its inputs
    and outputs first (:func:`compiler.frontend_seq.sequence_io`)."""
    seq = sequence_io(_load(model)[0], inshapes)
    if seq is not None:
        model = seq
    p = _Partitioner(model, inshapes, cfg.mem_bytes)
    if p.fe.model_batch > 1 and parallel.batch == 1:      # a model exported for B images takes B per call
        parallel = dataclasses.replace(parallel, imgs_per_cluster=p.fe.model_batch)
    index_of = {node.name: index for index, node in p.nodes}
    forced: set[int] = set(index_of.values()) if heterogeneous and _not_per_image(p) else set()
    moved: list[str] = [f"the host runs the whole model: {p.fe.batch_mixer}"] if forced and p.fe.batch_mixer else []
    while True:
        try:
            p, parts = partition(model, inshapes, heterogeneous, cfg.mem_bytes, forced, p)
            if parts is not None and not any(q.kind == DLA for q in parts):
                compiled = _whole_on_host(p, cfg, parallel, base)
            elif parts is None:
                compiled = compile_model(p.proto, cfg, base=base, parallel=parallel, samples=samples)
            else:
                compiled = _compile_stages(p, parts, cfg, base, parallel, samples)
        except CompileError as e:
            k = index_of.get(e.node)
            if k is None or k in forced:
                raise
            if not heterogeneous:
                if "SetFlag('heterogeneous'" in str(e):
                    raise
                raise CompileError(f"{e}; with SetFlag('heterogeneous', 1) this node runs on the host",
                                   node=e.node) from None
            forced.add(k)
            moved.append(f"{_where(k, dict(p.nodes)[k])} runs on the host: {e}")
            continue
        if isinstance(compiled, Staged) and not compiled.whole and is_unbatched(p.proto):
            compiled.meta["unbatched"] = True        # Run returns the vectors as the model declares them
        if moved:
            (compiled.notes if isinstance(compiled, Staged) else compiled.graph.notes).extend(moved)
        if isinstance(compiled, Staged) and compiled.whole:
            warnings.warn(HostOnlyWarning(
                f"{compiled.meta['model']}: no layer of the model runs on the DLA; the whole model runs on the "
                f"host (onnx.reference), with no modelled DLA time"
                + (f" ({'; '.join(moved[:3])})" if moved else "")), stacklevel=2)
        return compiled


class HostOnlyWarning(UserWarning):
    """A heterogeneous model none of whose layers runs on the DLA: it runs on the host alone."""


def _not_per_image(p: "_Partitioner") -> bool:
    """Whether an input has a batch (or a rank) that no per-image program takes: a model that
    combines the images of its fixed batch, or whose tensors have no batch axis."""
    return any(len(i.onnx_shape) < 2 or i.onnx_shape[0] != 1 for i in p.inputs)


def _whole_on_host(p: "_Partitioner", cfg: MachineConfig, parallel: Parallel, base: int) -> Staged:
    """A model none of whose nodes the DLA runs, as one host stage: the model as given, run whole
    on each call's arrays (its own batch, shapes and element types)."""
    model = p.given
    try:
        host_evaluator(model)
    except Exception as e:  # noqa: BLE001 - any reason the host cannot evaluate the model
        _check_host(model, _Part(HOST, p.nodes))
        raise CompileError(f"the host cannot evaluate the model: {e}") from None
    unbatched = is_unbatched(p.proto)          # the given model's vectors have no batch axis
    inputs = [IODesc(i.name, i.name, tuple(i.onnx_shape)[1:] if unbatched else tuple(i.onnx_shape)) for i in p.inputs]
    outputs = [IODesc(o.name, "", p.shapes.get(o.name, ())) for o in model.graph.output]
    nodes = [_where(*x) for x in p.nodes]
    dtypes = {vi.name: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
              for vi in model.graph.input if vi.name in {i.name for i in p.inputs}}
    stage = HostStage(model.SerializeToString(), [i.name for i in inputs], [o.name for o in outputs], nodes, "whole")
    return Staged(stages=[stage], inputs=inputs, outputs=outputs, notes=p.notes + [f"the host runs the whole model: "
                                                                                   f"{', '.join(nodes)}"],
                  meta={"model": p.proto.graph.name or "model"}, config=cfg, par=parallel, base=base, whole=True,
                  dtypes=dtypes)


def _compile_stages(p: "_Partitioner", parts: list[_Part], cfg: MachineConfig, base: int, parallel: Parallel,
                    samples) -> Staged:
    for i in p.inputs:
        if i.onnx_shape[0] != 1:
            raise CompileError(f"input {i.name!r} has batch dimension {i.onnx_shape[0]} (shape {i.onnx_shape}); compile "
                               f"the model for batch 1: the runtime batches images over cards and clusters")
    dla = [k for k, q in enumerate(parts) if q.kind == DLA] or [len(parts)]
    stages, notes = [], []
    # host stages first: an operator the host cannot evaluate is the error to report, before any
    # shape the DLA stages would need
    bounds = p.boundaries(parts)
    subs = [None] * len(parts)
    for k in sorted(range(len(parts)), key=lambda k: parts[k].kind != HOST):
        part, (ins, outs) = parts[k], bounds[k]
        subs[k] = (part, ins, outs, p.sub_model(part, ins, outs, f"{p.proto.graph.name or 'model'}_stage{k}"))
        if part.kind == HOST:
            _check_host(subs[k][3], part)
    envs = _sample_envs(p, subs, samples) if samples is not None and len(dla) and dla[0] < len(parts) else None
    for k, (part, ins, outs, sub) in enumerate(subs):
        if part.kind == DLA:
            try:
                stage_samples = None if envs is None else [[env[i] for i in ins] for env in envs[k]]
                c = compile_model(sub, cfg, base=base, parallel=parallel, samples=stage_samples)
            except CompileError as e:
                raise CompileError(f"{e} (in DLA stage {k} of the host/DLA partition: "
                                   f"{', '.join(_where(*x) for x in part.nodes[:3])}, ...)", node=e.node) from None
            base = align(c.memmap.end)          # the next DLA stage goes after this one in card memory
            stages.append(c)
            notes.append(f"stage {k}: DLA, layers {', '.join(l.name for l in c.layers)}")
        else:
            position = "head" if k < dla[0] else "tail" if k > dla[-1] else "middle"
            nodes = [_where(*x) for x in part.nodes]
            stages.append(HostStage(sub.SerializeToString(), ins, outs, nodes, position))
            notes.append(f"stage {k}: host ({position}), run with onnx.reference: {', '.join(nodes)}")
    inputs = [IODesc(i.name, i.name, tuple(i.onnx_shape)) for i in p.inputs]
    outputs = []
    for o in p.proto.graph.output:
        if o.name in p.consts:
            raise CompileError(f"graph output {o.name!r} is a constant; there is nothing for the DLA to compute")
        if o.name not in p.shapes:
            raise CompileError(f"the shape of graph output {o.name!r} cannot be inferred")
        outputs.append(IODesc(o.name, "", p.shapes[o.name]))
    return Staged(stages=stages, inputs=inputs, outputs=outputs, notes=p.notes + notes,
                  meta={"model": p.proto.graph.name or "model"}, config=cfg, par=parallel, base=base)


def _sample_envs(p: "_Partitioner", subs, samples) -> list[list[dict[str, np.ndarray]]]:
    """For every stage, per calibration sample, the float values of the tensors it reads (batch 1):
    the stages evaluated in float, in order, with onnx.reference."""
    from types import SimpleNamespace

    from .calibrate import calibration_feeds
    shim = SimpleNamespace(inputs=[SimpleNamespace(name=i.name, tensor=i.name, onnx_shape=i.onnx_shape) for i in p.inputs],
                           tensors={i.name: SimpleNamespace(shape=tuple(i.onnx_shape)) for i in p.inputs})
    feeds = calibration_feeds(shim, samples)
    envs: list[list[dict[str, np.ndarray]]] = [[] for _ in subs]
    evaluators = [host_evaluator(sub) for _, _, _, sub in subs]
    for feed in feeds:
        env = {name: np.asarray(v, dtype=np.float32) for name, v in feed.items()}
        for k, ((_, ins, outs, _), ev) in enumerate(zip(subs, evaluators)):
            envs[k].append({i: env[i] for i in ins})
            for o, v in zip(outs, ev.run(outs, {i: env[i] for i in ins})):
                env[o] = np.asarray(v, dtype=np.float32)
    return envs


def _check_host(model: onnx.ModelProto, part: _Part) -> None:
    """The host must be able to evaluate every node: else a CompileError naming the first it cannot."""
    try:
        host_evaluator(model)
        return
    except Exception as whole:  # noqa: BLE001 - any reason the host cannot evaluate these nodes
        reason = whole
    for index, node in part.nodes:
        g = helper.make_graph([node], "probe", [helper.make_value_info(i, onnx.TypeProto()) for i in node.input if i],
                              [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o])
        m = helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
        try:
            host_evaluator(m)
        except Exception as e:  # noqa: BLE001
            raise CompileError(f"{_where(index, node)} runs neither on the DLA nor on the host (the host evaluates "
                               f"ONNX operators with onnx.reference: {e})") from None
    raise CompileError(f"{_where(*part.nodes[0])}: the host cannot evaluate its stage: {reason}")
