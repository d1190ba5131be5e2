"""Front end, loading and shapes: the model file (or proto) in, checked against the card memory,
its external data read, the SDK's ``inshapes`` applied to its inputs, ONNX shape inference run, the
nodes ordered; and the constant evaluation of one node (``evaluate_node``) that folding uses.

Part of :class:`compiler.frontend._FrontEnd` (the :class:`Shapes` mixin); the partitioner
(:mod:`compiler.partition`) shares it."""
from __future__ import annotations

import heapq
import math
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .ir import CompileError, GraphInput, TensorInfo
from .lift1d import FLOAT_TYPES, lift_1d, lift_vectors

__all__ = ["parse_inshapes", "evaluate_node", "Shapes"]

#: initializers of at most this many elements keep their values for ONNX shape inference
_SHAPE_CONSTANT_LIMIT = 64

_FLOAT_TYPES = FLOAT_TYPES
_DIM_RE = re.compile(r"^\d+$")


def parse_inshapes(inshapes: str) -> list[tuple[int, ...]]:
    """Parse the SDK's ``inshapes`` string (``"1x3x224x224;1x10"``) into a list of shapes."""
    if not isinstance(inshapes, str):
        raise CompileError(f"inshapes must be a string such as '1x3x224x224' (';' between inputs), "
                           f"got {type(inshapes).__name__}")
    text = inshapes.strip()
    if text.endswith(";"):
        text = text[:-1]
    if not text:
        raise CompileError(f"bad inshapes {inshapes!r}: empty; expected e.g. '1x3x224x224' (';' between inputs)")
    shapes = []
    for part in text.split(";"):
        dims = [d.strip() for d in part.strip().lower().split("x")]
        if not all(_DIM_RE.match(d) for d in dims) or any(int(d) == 0 for d in dims):
            raise CompileError(f"bad inshapes {inshapes!r}: {part.strip()!r} is not a shape of positive "
                               f"integers separated by 'x', e.g. '1x3x224x224'")
        shapes.append(tuple(int(d) for d in dims))
    return shapes




# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def _load(model) -> tuple[onnx.ModelProto, str, str | None]:
    """(proto, name for messages, directory of external data files); external data is not read."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        lift_1d(proto) or lift_vectors(proto)
        return proto, proto.graph.name or "<model>", None
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"ONNX model file not found: {path}")
    if path.is_dir():
        raise CompileError(f"{path} is not an ONNX model: it is a directory")
    size = path.stat().st_size
    if size > _PROTOBUF_LIMIT:      # protobuf cannot parse it; refuse before reading it into memory
        raise CompileError(f"{path} is {size} bytes, more than the 2 GiB a protobuf (ONNX) file can hold; save the "
                           f"model with its weights as external data (onnx.save(..., save_as_external_data=True))")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, ...
        raise CompileError(f"{path} is not an ONNX model: {e}") from None
    if not proto.HasField("graph") or not proto.graph.output:
        raise CompileError(f"{path} is not an ONNX model: it holds no graph with outputs")
    lift_1d(proto) or lift_vectors(proto)
    return proto, str(path), str(path.parent)


_PROTOBUF_LIMIT = 2 ** 31 - 1

#: bytes per weight on the card (16-bit fixed point), the lower bound used to refuse huge models early
_DLA_WEIGHT_BYTES = 2


def _check_weight_bytes(proto: onnx.ModelProto, source: str, limit: int) -> None:
    """Refuse a model whose weights need more than ``limit`` bytes as 16-bit values, from the
    initializers' dims alone (nothing is decoded or loaded)."""
    g = proto.graph
    tensors = list(g.initializer) + [a.t for n in g.node if n.op_type == "Constant"
                                     for a in n.attribute if a.name == "value" and a.HasField("t")]
    sizes = [(t.name, tuple(t.dims), math.prod(t.dims) * _DLA_WEIGHT_BYTES) for t in tensors]
    total = sum(n for _, _, n in sizes)
    if total <= limit:
        return
    name, dims, big = max(sizes, key=lambda x: x[2])
    readers = [f"'{n.name or n.op_type}' ({n.op_type})" for n in g.node if name in n.input][:3]
    raise CompileError(f"{source}: the model's weights need {total} bytes as 16-bit fixed point, more than the "
                       f"{limit} bytes of card memory; the largest, {name!r} {list(dims)}"
                       f"{' read by node ' + ', '.join(readers) if readers else ''}, alone needs {big} bytes. "
                       f"The model was refused before its weights were loaded")


def _load_external(proto: onnx.ModelProto, source: str, base_dir: str | None) -> None:
    """Read the external data of the initializers (after the size check)."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data
    if not any(uses_external_data(t) for t in proto.graph.initializer):
        return
    if base_dir is None:
        raise CompileError(f"{source}: its initializers keep their data in external files, which a model given "
                           f"as a ModelProto cannot locate; pass the model's path instead")
    try:
        load_external_data_for_model(proto, base_dir)
    except Exception as e:  # noqa: BLE001 - missing or short files, bad locations
        raise CompileError(f"{source}: cannot load the external data of its initializers: {e}") from None


def _static(shape_proto) -> tuple[int, ...] | None:
    """A fully static shape from a TensorShapeProto, else None."""
    dims = []
    for d in shape_proto.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def _dims_text(shape_proto) -> str:
    return "(" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                           for d in shape_proto.dim) + ")"



def evaluate_node(node: onnx.NodeProto, feeds: dict[str, np.ndarray], proto: onnx.ModelProto, where: str) -> list:
    """The outputs of one node whose inputs are the constants ``feeds``, by onnx.reference, with
    the opsets of ``proto``; a failure is a CompileError naming ``where``."""
    graph = helper.make_graph([node], "fold", [helper.make_value_info(n, onnx.TypeProto()) for n in dict.fromkeys(feeds)],
                              [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o])
    model = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    try:
        return ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - any failure of the evaluator is the model's
        raise CompileError(f"{where}: its inputs are constant but evaluating it failed: {e}") from None



def shape_nodes(nodes) -> list[onnx.NodeProto]:
    """``nodes`` for ONNX shape inference, which does not know the compiler's own element-wise ops
    (domain com.microndla), nor Mish before opset 18 (canonicalisation makes it from x *
    Tanh(Softplus(x))): those become a Sigmoid, of the same shape and type."""
    out = []
    for n in nodes:
        if n.domain == "com.microndla" or (n.op_type == "Mish" and n.domain in ("", "ai.onnx")):
            n = helper.make_node("Sigmoid", [n.input[0]], [n.output[0]], name=n.name)
        out.append(n)
    return out


class Shapes:
    """The front end's inputs, shapes and node order (a mixin of :class:`compiler.frontend._FrontEnd`)."""

    # ---- inputs and shapes ---------------------------------------------------------------------
    def _inputs(self) -> list[GraphInput]:
        g = self.proto.graph
        real = [vi for vi in g.input if vi.name not in self.consts]
        if not real:
            raise CompileError(f"{self.source}: the model has no inputs (all graph inputs are initializers)")
        if self.inshapes is not None:
            shapes = parse_inshapes(self.inshapes)
            if len(shapes) != len(real):
                raise CompileError(f"bad inshapes {self.inshapes!r}: it gives {len(shapes)} shape(s) but the model has "
                                   f"{len(real)} input(s): {', '.join(repr(v.name) for v in real)}")
            for vi, shape in zip(real, shapes):
                tt = vi.type.tensor_type
                if tt.HasField("shape") and len(tt.shape.dim) not in (0, len(shape)):
                    raise CompileError(f"bad inshapes {self.inshapes!r}: input {vi.name!r} has rank "
                                       f"{len(tt.shape.dim)} {_dims_text(tt.shape)}, the shape given has rank {len(shape)}")
                tt.ClearField("shape")
                for d in shape:
                    tt.shape.dim.add().dim_value = d
            # shapes recorded for the old input shapes would contradict the new ones
            for vi in g.output:
                if vi.type.tensor_type.HasField("shape"):
                    vi.type.tensor_type.ClearField("shape")
        else:
            self._dynamic_batch(real)
            self._fixed_batch(real)
        result = []
        for vi in real:
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                raise CompileError(f"input {vi.name!r} is not a tensor; the DLA takes float tensors")
            shape = _static(tt.shape) if tt.HasField("shape") else None
            if shape is None or not shape:
                given = _dims_text(tt.shape) if tt.HasField("shape") else "unknown"
                raise CompileError(f"input {vi.name!r} has a dynamic or unknown shape {given}; pass inshapes to "
                                   f"Compile, e.g. inshapes='1x3x224x224' (';' between inputs)")
            # A bad batch or rank is reported by the first node that reads the input (which may have a
            # more specific complaint, e.g. that a weight must be an initializer), or at the end.
            chw = (0, 0, 0)
            if tt.elem_type not in _FLOAT_TYPES:      # the host may still run what reads it
                self.bad_inputs[vi.name] = (f"input {vi.name!r} has element type "
                                            f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; the DLA takes float tensors")
            elif len(shape) not in (2, 3, 4):
                self.bad_inputs[vi.name] = (f"input {vi.name!r} has shape {shape}; the DLA takes NCHW images "
                                            f"(rank 4), NCL sequences (rank 3, as (N, C, L, 1) images) or "
                                            f"(1, N) vectors (rank 2)")
            elif shape[0] != 1:
                self.bad_inputs[vi.name] = (
                    f"input {vi.name!r} has batch dimension {shape[0]} (shape {shape})"
                    + (f" and {self.batch_mixer}, which a program run image by image cannot" if self.batch_mixer else "")
                    + f"; compile the model for batch 1 "
                    f"(e.g. inshapes='{'x'.join(map(str, (1,) + shape[1:]))}'): the runtime batches images over "
                    f"cards and clusters")
            else:
                chw = shape[1:] if len(shape) == 4 else (shape[1], shape[2], 1) if len(shape) == 3 else (shape[1], 1, 1)
            self.tensors[vi.name] = TensorInfo(vi.name, chw)
            self.shapes[vi.name] = shape
            result.append(GraphInput(vi.name, vi.name, shape))
        return result

    def _dynamic_batch(self, real) -> None:
        """A dynamic batch dimension (the only dynamic one) takes the batch the IR is compiled for,
        1: the runtime runs as many images per call as its batching flags say."""
        batched = False
        for vi in real:
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or not tt.HasField("shape") or len(tt.shape.dim) < 2:
                continue
            first, rest = tt.shape.dim[0], tt.shape.dim[1:]
            if not first.HasField("dim_value") and \
                    all(d.HasField("dim_value") and d.dim_value > 0 for d in rest):
                name = first.dim_param or "?"
                first.Clear()
                first.dim_value = 1
                batched = True
                self.notes.append(f"input {vi.name!r}: its dynamic batch dimension {name!r} is compiled as 1 "
                                  f"(images per call come from the batching flags)")
        if batched:       # output shapes recorded for the dynamic batch would contradict the static one
            for vi in self.proto.graph.output:
                tt = vi.type.tensor_type
                if tt.HasField("shape") and tt.shape.dim and not tt.shape.dim[0].HasField("dim_value"):
                    tt.ClearField("shape")

    #: ops whose ``axis`` 0 would combine the images of a batch
    _AXIS_OPS = ("Softmax", "LogSoftmax", "Hardmax", "Concat", "Split", "Gather", "CumSum", "ArgMax", "ArgMin",
                 "Flatten", "LpNormalization", "TopK")

    #: element-wise ops that broadcast their operands
    _BROADCAST_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less",
                      "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "PRelu", "Mod", "BitShift")

    def _fixed_batch(self, real) -> None:
        """A model exported for a fixed batch B > 1 (every input's first dimension B) whose nodes all
        keep the images apart is compiled per image: inputs of batch 1, constant Reshape/Expand
        shapes and Resize sizes that carry the batch rewritten to 1, and ``model_batch`` = B (the
        runtime then takes B images per call). A model that combines its images (a reshape across
        the batch, an axis-0 Softmax, ...) is left as it is: its inputs are reported as of batch B."""
        shapes = []
        for vi in real:
            tt = vi.type.tensor_type
            s_ = _static(tt.shape) if vi.type.HasField("tensor_type") and tt.HasField("shape") else None
            shapes.append(s_)
        if not shapes or any(s_ is None or len(s_) < 2 for s_ in shapes) or len({s_[0] for s_ in shapes}) != 1:
            return
        batch = shapes[0][0]
        if batch <= 1:
            return
        try:
            g = onnx.shape_inference.infer_shapes(self._shapes_only(), strict_mode=False, data_prop=True).graph
        except Exception:  # noqa: BLE001 - the front end reports an inconsistent model itself
            return
        known = {vi.name: _static(vi.type.tensor_type.shape) for vi in list(g.value_info) + list(g.output) + list(g.input)
                 if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}
        consts = set(self.consts)
        for n in self.proto.graph.node:
            ins = [i for i in n.input if i]
            if all(i in consts for i in ins):
                consts.update(o for o in n.output if o)
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            mixes = (n.op_type in self._AXIS_OPS and attrs.get("axis", 1 if n.op_type == "Flatten" else None) == 0) or \
                    (n.op_type == "Transpose" and attrs.get("perm", [0])[0] != 0) or \
                    (n.op_type.startswith("Reduce") and 0 in attrs.get("axes", [0]))
            for pos, i in enumerate(n.input):     # a constant with a batch axis of its own: one per image
                if i in self.consts and n.op_type in self._BROADCAST_OPS + ("MatMul", "Gemm") and \
                        not (n.op_type == "Gemm" and pos < 2) and not (n.op_type == "MatMul" and self.consts[i].ndim < 3):
                    c = np.asarray(self.consts[i])
                    out = known.get(n.output[0])
                    if out is not None and c.ndim == len(out) and c.shape[0] == batch:
                        mixes = True
            for o in n.output:
                s_ = known.get(o)
                if o and (s_ is None or not s_ or s_[0] != batch or mixes):
                    # combines (or may combine) images: not per image
                    self.batch_mixer = f"node '{n.name or n.op_type}' ({n.op_type}) combines the images of the batch"
                    return
        values = dict(self.consts)
        for n in self.proto.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        rewrites = 0
        for n in self.proto.graph.node:
            pos = {"Reshape": 1, "Expand": 1, "Resize": 3}.get(n.op_type)
            if pos is None or len(n.input) <= pos or not n.input[pos] or n.input[pos] not in values:
                continue
            v = np.asarray(values[n.input[pos]]).copy()
            if v.ndim != 1 or not v.size or v[0] != batch:
                continue
            v[0] = 1
            name = f"{n.input[pos]}__per_image"
            if name not in self.consts:
                self.consts[name] = v
                self.proto.graph.initializer.append(numpy_helper.from_array(v, name))
            n.input[pos] = name
            rewrites += 1
        for vi in real:
            vi.type.tensor_type.shape.dim[0].dim_value = 1
        for vi in self.proto.graph.output:
            if vi.type.tensor_type.HasField("shape"):
                vi.type.tensor_type.ClearField("shape")
        self.model_batch = batch
        self.notes.append(f"the model's fixed batch {batch} is compiled per image (batch 1, {rewrites} constant "
                          f"shape(s) rewritten); a call takes {batch} images")

    model_batch = 1
    batch_mixer = ""        #: why a model of fixed batch > 1 is not compiled per image

    def _infer_shapes(self) -> None:
        del self.proto.graph.value_info[:]          # recomputed below, possibly for new input shapes
        try:
            inferred = onnx.shape_inference.infer_shapes(self._shapes_only(), strict_mode=False)
        except Exception as e:
            raise CompileError(f"{self.source}: ONNX shape inference failed: {e}") from None
        g = inferred.graph
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                s = _static(vi.type.tensor_type.shape)
                if s is not None:
                    self.inferred[vi.name] = s

    def _shapes_only(self) -> onnx.ModelProto:
        """The model for shape inference: large initializers (weights) become typed graph inputs,
        since onnx serialises the whole model to infer shapes (most of ResNet-50's front-end time).
        Small ones keep their values, which shapes may depend on (Reshape's shape, say)."""
        src = self.proto
        light = onnx.ModelProto(ir_version=src.ir_version, opset_import=src.opset_import,
                                functions=src.functions)
        g, sg = light.graph, src.graph
        g.name = sg.name
        g.node.extend(shape_nodes(sg.node))
        g.input.extend(sg.input)
        g.output.extend(sg.output)
        declared = {i.name for i in sg.input}
        for init in sg.initializer:
            if math.prod(init.dims) <= _SHAPE_CONSTANT_LIMIT:
                g.initializer.append(init)
            elif init.name not in declared:
                g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        return light

    def _set_shape(self, name: str, shape: tuple[int, ...], where: str) -> None:
        shape = tuple(int(d) for d in shape)
        known = self.inferred.get(name)
        if known is not None and known != shape:
            raise CompileError(f"{where}: output {name!r} has shape {shape} but ONNX shape inference says {known}; "
                               f"the model is inconsistent")
        self.shapes[name] = shape

    def _topological(self) -> list[tuple[int, onnx.NodeProto]]:
        """Nodes in topological order (stable: the file's order where it is already topological)."""
        nodes = list(self.proto.graph.node)
        available = set(self.consts) | {vi.name for vi in self.proto.graph.input} | {""}
        producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
        waiting = [0] * len(nodes)
        readers: dict[int, list[int]] = {}
        for i, n in enumerate(nodes):
            for name in set(n.input):
                if name in available:
                    continue
                if name not in producer:
                    raise CompileError(f"{self._where(i, n)} reads tensor {name!r}, which is neither a graph input, "
                                       f"an initializer nor the output of a node")
                waiting[i] += 1
                readers.setdefault(producer[name], []).append(i)
        ready = [i for i in range(len(nodes)) if waiting[i] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append((i, nodes[i]))
            for j in readers.get(i, []):
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, j)
        if len(order) != len(nodes):
            stuck = next(i for i in range(len(nodes)) if waiting[i] > 0)
            raise CompileError(f"{self._where(stuck, nodes[stuck])} is part of a cycle; an ONNX graph must be acyclic")
        return order
