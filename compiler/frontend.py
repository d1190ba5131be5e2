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
"""
from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .lift1d import lift_1d
from .ir import AvgPool, CompileError, Concat, Conv, Graph, GraphInput, GraphOutput, HostTail, MaxPool, TensorInfo

#: initializers of at most this many elements keep their values for ONNX shape inference
_SHAPE_CONSTANT_LIMIT = 64

__all__ = ["load_model", "parse_inshapes", "channelwise_layer", "SUPPORTED_OPS"]

#: ONNX ops the DLA runs (besides any node whose inputs are all constants, which is folded).
SUPPORTED_OPS = ("Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh",
                 "Add", "Sum", "Mul", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                 "Gemm", "MatMul", "Resize", "Upsample", "Flatten", "Reshape", "Identity", "Dropout")

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16)
_DIM_RE = re.compile(r"^\d+$")


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------

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
        lift_1d(proto)
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
    lift_1d(proto)
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


# --------------------------------------------------------------------------------------------
# interpolation kernels (Resize, Upsample)
# --------------------------------------------------------------------------------------------

def _interp_taps(s: int, mode: str, coord: str, nearest: str) -> list[dict[int, Fraction]]:
    """For an integer factor s, the weights of input pixel m + d in output pixel s*m + r, per phase r:
    ONNX's coordinate formulas evaluated exactly (Fractions) at an interior m, where they do not
    depend on m. Clamping at the borders is the replicated border of ``Conv.edge``."""
    m = 1000
    phases = []
    for r in range(s):
        y = s * m + r
        if coord in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric"):
            xo = Fraction(2 * y + 1, 2 * s) - Fraction(1, 2)
        elif coord == "tf_half_pixel_for_nn":
            xo = Fraction(2 * y + 1, 2 * s)
        else:   # asymmetric, and align_corners with s == 1
            xo = Fraction(y, s)
        if mode == "nearest":
            fl = math.floor(xo)
            frac = xo - fl
            up = {"floor": False, "ceil": frac > 0, "round_prefer_floor": frac > Fraction(1, 2),
                  "round_prefer_ceil": frac >= Fraction(1, 2)}[nearest]
            phases.append({fl + up - m: Fraction(1)})
        else:
            fl = math.floor(xo)
            f = xo - fl
            phases.append({d: v for d, v in ((fl - m, 1 - f), (fl + 1 - m, f)) if v})
    return phases


def _interp_kernel(s: int, phases: list[dict[int, Fraction]], edge: int) -> tuple[np.ndarray, int, int]:
    """(ConvTranspose kernel, forward pad before, forward pad after) over the input extended by
    ``edge`` pixels per side: output s*m + r = sum_d w_r[d] * x[m + d], the kernel tap of (r, d)
    being r + s*(dmax - d)."""
    ds = [d for p in phases for d in p]
    dmin, dmax = min(ds), max(ds)
    k = s * (dmax - dmin + 1)
    kernel = np.zeros(k)
    for r, p in enumerate(phases):
        for d, v in p.items():
            kernel[r + s * (dmax - d)] = float(v)
    begin, end = s * (dmax + edge), s * (edge - dmin)      # ConvTranspose pads
    nz = np.flatnonzero(kernel)
    lead, trail = int(nz[0]), int(k - 1 - nz[-1])          # taps without weight would only cost MACs
    kernel = kernel[lead:k - trail]
    begin, end, k = begin - lead, end - trail, k - lead - trail
    return kernel, k - 1 - begin, k - 1 - end


# --------------------------------------------------------------------------------------------
# the translation
# --------------------------------------------------------------------------------------------

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


#: ONNX activation op -> the IR's activation name (arch.numerics.ACT_NAMES)
ACTIVATIONS = {"Relu": "relu", "LeakyRelu": "leaky", "Clip": "clip", "Sigmoid": "sigmoid", "Tanh": "tanh"}

#: float32's largest value: ONNX Clip's default bounds (opset < 11) mean "unbounded"
_FLT_MAX = 3.4028234663852886e38


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


class _FrontEnd:
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
        return Graph(name=g.name or Path(self.source).stem or "model", tensors=self.tensors,
                     layers=layers, inputs=inputs, outputs=outputs, opset=self.opset, notes=self.notes,
                     concats=self.concats, host=host, output_order=[o.name for o in g.output])

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
        result = []
        for vi in real:
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                raise CompileError(f"input {vi.name!r} is not a tensor; the DLA takes float tensors")
            if tt.elem_type not in _FLOAT_TYPES:
                raise CompileError(f"input {vi.name!r} has element type "
                                   f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; the DLA takes float tensors")
            shape = _static(tt.shape) if tt.HasField("shape") else None
            if shape is None or not shape:
                given = _dims_text(tt.shape) if tt.HasField("shape") else "unknown"
                raise CompileError(f"input {vi.name!r} has a dynamic or unknown shape {given}; pass inshapes to "
                                   f"Compile, e.g. inshapes='1x3x224x224' (';' between inputs)")
            # A bad batch or rank is reported by the first node that reads the input (which may have a
            # more specific complaint, e.g. that a weight must be an initializer), or at the end.
            chw = (0, 0, 0)
            if len(shape) not in (2, 3, 4):
                self.bad_inputs[vi.name] = (f"input {vi.name!r} has shape {shape}; the DLA takes NCHW images "
                                            f"(rank 4), NCL sequences (rank 3, as (N, C, L, 1) images) or "
                                            f"(1, N) vectors (rank 2)")
            elif shape[0] != 1:
                self.bad_inputs[vi.name] = (
                    f"input {vi.name!r} has batch dimension {shape[0]} (shape {shape}); compile the model for batch 1 "
                    f"(e.g. inshapes='{'x'.join(map(str, (1,) + shape[1:]))}'): the runtime batches images over "
                    f"cards and clusters")
            else:
                chw = shape[1:] if len(shape) == 4 else (shape[1], shape[2], 1) if len(shape) == 3 else (shape[1], 1, 1)
            self.tensors[vi.name] = TensorInfo(vi.name, chw)
            self.shapes[vi.name] = shape
            result.append(GraphInput(vi.name, vi.name, shape))
        return result

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
        g.node.extend(sg.node)
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

    # ---- per node ------------------------------------------------------------------------------
    @staticmethod
    def _node_name(index: int, node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}_{index}"

    def _where(self, index: int, node: onnx.NodeProto) -> str:
        return f"node '{self._node_name(index, node)}' ({node.op_type})"

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
        return node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS

    def _host_tail(self) -> HostTail | None:
        """The host nodes as a model of their own, or a CompileError if the DLA would have to run
        something after them (they would be in the middle of the network)."""
        if not self.host_nodes:
            return None
        first = self._where(*self.host_nodes[0])
        for index, node in self.host_nodes:
            if node.op_type in SUPPORTED_OPS and not all(i in self.consts for i in node.input if i):
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
        if node.domain not in ("", "ai.onnx"):
            raise CompileError(f"node '{self._node_name(index, node)}' ({node.domain}.{node.op_type}) is not supported "
                               f"on the DLA; supported: {', '.join(SUPPORTED_OPS)}")
        ins = [i for i in node.input if i]
        if all(i in self.consts for i in ins):
            self._fold(index, node, {i: self.consts[i] for i in ins})
            return
        if node.op_type in ("Shape", "Size") and node.input[0] in self.shapes:
            shape = self.shapes[node.input[0]]
            dummy = np.broadcast_to(np.float32(0), shape)      # only its shape matters
            self._fold(index, node, {node.input[0]: dummy}, note="of a static shape")
            return
        handler = getattr(self, "_op_" + node.op_type, None)
        if node.op_type not in SUPPORTED_OPS or handler is None:
            raise CompileError(f"{where} is not supported on the DLA; supported: {', '.join(SUPPORTED_OPS)} "
                               f"(and nodes whose inputs are all constants, which are folded)")
        for out in node.output[1:]:
            if out and out in self.used:
                raise CompileError(f"{where}: its output {out!r} is used, but only the first output of "
                                   f"{node.op_type} is supported")
        handler(index, node, where, {a.name: helper.get_attribute_value(a) for a in node.attribute})

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
        """A non-constant (1, K) input (a flattened feature map): (IR tensor, K)."""
        t, shape = self._operand(where, name)
        if len(shape) != 2 or shape[0] != 1:
            raise CompileError(f"{where}: input {name!r} has shape {shape}; a fully connected layer takes a (1, K) "
                               f"input (flatten the feature map first)")
        return t, shape[1]

    def _new_tensor(self, name: str, chw: tuple[int, int, int], onnx_shape: tuple[int, ...], where: str) -> None:
        if any(d <= 0 for d in chw):
            raise CompileError(f"{where}: output {name!r} would have shape {chw}; the input is too small for the window")
        self.tensors[name] = TensorInfo(name, tuple(int(d) for d in chw))
        self._set_shape(name, onnx_shape, where)

    # ---- windows (Conv and MaxPool) ------------------------------------------------------------
    @staticmethod
    def _window(where: str, attrs: dict, in_hw: tuple[int, int], kernel: tuple[int, int],
                dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
        """(strides, pads (top, left, bottom, right), output (H, W)) from ONNX attributes."""
        strides = tuple(attrs.get("strides", (1, 1)))
        if len(strides) != 2 or min(strides) < 1:
            raise CompileError(f"{where}: strides {list(strides)} must be two positive integers")
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        if auto_pad == "NOTSET":
            pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
            if len(pads) != 4 or min(pads) < 0:
                raise CompileError(f"{where}: pads {list(pads)} must be four non-negative integers")
            begin, end = pads[:2], pads[2:]
        elif auto_pad == "VALID":
            begin, end = (0, 0), (0, 0)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = [max(0, (math.ceil(n / s) - 1) * s + k - n) for n, s, k in zip(in_hw, strides, span)]
            small = [t // 2 for t in total]
            big = [t - t // 2 for t in total]
            begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        else:
            raise CompileError(f"{where}: auto_pad {auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
        out = tuple((n + b + e - k) // s + 1 for n, b, e, k, s in zip(in_hw, begin, end, span, strides))
        return (int(strides[0]), int(strides[1])), tuple(int(p) for p in (*begin, *end)), out

    # ---- op handlers ---------------------------------------------------------------------------
    def _op_Conv(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        w = self._const(where, node, 1, "weight")
        if w.ndim != 4:
            raise CompileError(f"{where}: only 2-D convolutions are supported; this is a {w.ndim - 2}-D convolution "
                               f"(weight shape {w.shape})")
        group = attrs.get("group", 1)
        x, (c, h, wd) = self._feature_map(where, node.input[0])
        cout, cin, kh, kw = w.shape
        if group < 1 or cout % group:
            raise CompileError(f"{where}: group={group} must be a positive divisor of the {cout} output channels")
        if cin * group != c:
            raise CompileError(f"{where}: weight {node.input[1]!r} expects {cin} x group {group} = {cin * group} input "
                               f"channels, input {node.input[0]!r} has {c}")
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != (kh, kw):
            raise CompileError(f"{where}: kernel_shape {list(attrs['kernel_shape'])} disagrees with the weight shape {w.shape}")
        dilation = tuple(attrs.get("dilations", (1, 1)))
        if len(dilation) != 2 or min(dilation) < 1:
            raise CompileError(f"{where}: dilations {list(dilation)} must be two positive integers")
        b = self._const(where, node, 2, "bias", required=False)
        if b is None:
            b = np.zeros(cout, dtype=np.float32)
        elif b.shape != (cout,):
            raise CompileError(f"{where}: bias {node.input[2]!r} has shape {b.shape}, expected ({cout},)")
        stride, pads, (oh, ow) = self._window(where, attrs, (h, wd), (kh, kw), dilation)
        out = node.output[0]
        self._new_tensor(out, (cout, oh, ow), (1, cout, oh, ow), where)
        self.ops.append(Conv(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                             output=out, weight=np.ascontiguousarray(w, dtype=np.float32),
                             bias=np.asarray(b, dtype=np.float32), stride=stride, pads=pads,
                             dilation=(int(dilation[0]), int(dilation[1])), kind="conv", groups=int(group)))

    def _op_ConvTranspose(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        w = self._const(where, node, 1, "weight")
        if w.ndim != 4:
            raise CompileError(f"{where}: only 2-D transposed convolutions are supported (weight shape {w.shape})")
        x, (c, h, wd) = self._feature_map(where, node.input[0])
        group = int(attrs.get("group", 1))
        cin, cout_g, kh, kw = w.shape
        if group < 1 or cin != c or c % group:
            raise CompileError(f"{where}: weight {node.input[1]!r} {w.shape} with group={group} does not take the {c} "
                               f"input channels of {node.input[0]!r}")
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != (kh, kw):
            raise CompileError(f"{where}: kernel_shape {list(attrs['kernel_shape'])} disagrees with the weight shape {w.shape}")
        if tuple(attrs.get("dilations", (1, 1))) != (1, 1):
            raise CompileError(f"{where}: dilations {list(attrs['dilations'])} are not supported; only dilations 1")
        strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
        opad = tuple(int(v) for v in attrs.get("output_padding", (0, 0)))
        if len(strides) != 2 or min(strides) < 1:
            raise CompileError(f"{where}: strides {list(strides)} must be two positive integers")
        if len(opad) != 2 or min(opad) < 0 or any(o >= s_ for o, s_ in zip(opad, strides)):
            raise CompileError(f"{where}: output_padding {list(opad)} must be two non-negative integers below the strides")
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        full = [s_ * (n - 1) + o + k for s_, n, o, k in zip(strides, (h, wd), opad, (kh, kw))]
        if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = list(attrs["output_shape"])[-2:] if "output_shape" in attrs else [n * s_ for n, s_ in zip((h, wd), strides)]
            total = [f - t for f, t in zip(full, target)]
            if min(total) < 0:
                raise CompileError(f"{where}: output_shape {list(attrs['output_shape'])} is larger than the transposed "
                                   f"convolution produces; only output_shape reachable with non-negative pads is supported")
            if auto_pad == "SAME_UPPER":
                begin, end = [t // 2 for t in total], [t - t // 2 for t in total]
            else:
                begin, end = [t - t // 2 for t in total], [t // 2 for t in total]
        elif auto_pad in ("NOTSET", "VALID"):
            pads = tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0))) if auto_pad == "NOTSET" else (0, 0, 0, 0)
            if len(pads) != 4 or min(pads) < 0:
                raise CompileError(f"{where}: pads {list(pads)} must be four non-negative integers")
            begin, end = pads[:2], pads[2:]
        else:
            raise CompileError(f"{where}: auto_pad {auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
        oh, ow = (f - b - e for f, b, e in zip(full, begin, end))
        cout = cout_g * group
        b = self._const(where, node, 2, "bias", required=False)
        if b is None:
            b = np.zeros(cout, dtype=np.float32)
        elif b.shape != (cout,):
            raise CompileError(f"{where}: bias {node.input[2]!r} has shape {b.shape}, expected ({cout},)")
        # The equivalent stride-1 convolution over the zero-inserted input: weights per output channel
        # (group-major, like Conv's), kernel flipped, pads k-1-p (output_padding at the end).
        wf = w.reshape(group, cin // group, cout_g, kh, kw).transpose(0, 2, 1, 3, 4).reshape(cout, cin // group, kh, kw)
        wf = np.ascontiguousarray(wf[:, :, ::-1, ::-1], dtype=np.float32)
        pads = (kh - 1 - begin[0], kw - 1 - begin[1], kh - 1 - end[0] + opad[0], kw - 1 - end[1] + opad[1])
        out = node.output[0]
        self._new_tensor(out, (cout, oh, ow), (1, cout, oh, ow), where)
        self.ops.append(Conv(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                             output=out, weight=wf, bias=np.asarray(b, dtype=np.float32), pads=pads, kind="convT",
                             groups=group, up=strides))

    # ---- Resize / Upsample ---------------------------------------------------------------------
    _COORD_MODES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "half_pixel_symmetric", "tf_half_pixel_for_nn")
    _NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")

    def _op_Upsample(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        # Upsample (opset 7: scales attribute, opset 9: scales input) = Resize-10: asymmetric, floor
        scales = attrs.get("scales")
        if scales is None:
            scales = self._const(where, node, 1, "scales")
        self._resize(index, node, where, attrs, np.asarray(scales, dtype=np.float64).reshape(-1), None, legacy=True)

    def _op_Resize(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if self.opset < 11:     # Resize-10 is Upsample-9: scales as input 1
            return self._op_Upsample(index, node, where, attrs)
        scales = self._const(where, node, 2, "scales", required=False)
        sizes = self._const(where, node, 3, "sizes", required=False)
        scales = None if scales is None or np.asarray(scales).size == 0 else np.asarray(scales, np.float64).reshape(-1)
        sizes = None if sizes is None or np.asarray(sizes).size == 0 else np.asarray(sizes, np.int64).reshape(-1)
        if (scales is None) == (sizes is None):
            raise CompileError(f"{where}: exactly one of scales and sizes must be given")
        self._resize(index, node, where, attrs, scales, sizes, legacy=False)

    def _resize(self, index: int, node: onnx.NodeProto, where: str, attrs: dict, scales, sizes, legacy: bool) -> None:
        """Resize/Upsample by integer factors as a depthwise transposed convolution with fixed weights
        (``_interp_kernel``); borders replicate (``Conv.edge``), which is what clamping coordinates does."""
        x, (c, h, w) = self._feature_map(where, node.input[0])
        def text(name, default):
            v = attrs.get(name, default)
            return v.decode() if isinstance(v, bytes) else str(v)
        mode = text("mode", "nearest")
        coord = "asymmetric" if legacy else text("coordinate_transformation_mode", "half_pixel")
        nearest = "floor" if legacy else text("nearest_mode", "round_prefer_floor")
        axes = attrs.get("axes")
        full = (1, c, h, w)
        if axes is not None:   # opset 18: scales/sizes for these axes only
            axes = [a + 4 if a < 0 else a for a in axes]
            vals = scales if scales is not None else sizes
            if len(vals) != len(axes):
                raise CompileError(f"{where}: axes {list(attrs['axes'])} and scales/sizes disagree in length")
            base = [1.0] * 4 if scales is not None else list(full)
            for a, v in zip(axes, vals):
                base[a] = v
            scales, sizes = (np.asarray(base, np.float64), None) if scales is not None else (None, np.asarray(base))
        if sizes is not None:
            if len(sizes) != 4:
                raise CompileError(f"{where}: sizes {sizes.tolist()} must have 4 entries (N, C, H, W)")
            if any(o % i for o, i in zip(sizes, full)) or any(o < i for o, i in zip(sizes, full)):
                raise CompileError(f"{where}: sizes {sizes.tolist()} are not integer multiples of the input shape "
                                   f"{list(full)}; only integer upsampling factors are supported")
            scales = np.asarray(sizes, np.float64) / np.asarray(full, np.float64)
        if len(scales) != 4:
            raise CompileError(f"{where}: scales {scales.tolist()} must have 4 entries (N, C, H, W)")
        if scales[0] != 1 or scales[1] != 1:
            raise CompileError(f"{where}: scales {scales.tolist()} resize the batch or channel axis; only H and W")
        factors = [int(round(v)) for v in scales[2:]]
        if any(abs(v - f) > 1e-6 or f < 1 for v, f in zip(scales[2:], factors)):
            raise CompileError(f"{where}: scales {scales.tolist()}: only integer upsampling factors (>= 1) are supported")
        if mode not in ("nearest", "linear", "bilinear"):
            raise CompileError(f"{where}: mode {mode!r} is not supported; only nearest and linear")
        if coord == "align_corners" and max(factors) > 1:
            raise CompileError(f"{where}: coordinate_transformation_mode 'align_corners' is not supported (its "
                               f"weights vary across the map, it is no convolution); supported: {', '.join(self._COORD_MODES)}")
        if coord not in self._COORD_MODES + ("align_corners",):
            raise CompileError(f"{where}: coordinate_transformation_mode {coord!r} is not supported; supported: "
                               f"{', '.join(self._COORD_MODES)}")
        if mode == "nearest" and nearest not in self._NEAREST_MODES:
            raise CompileError(f"{where}: nearest_mode {nearest!r} is not supported; supported: {', '.join(self._NEAREST_MODES)}")
        if attrs.get("exclude_outside", 0):
            raise CompileError(f"{where}: exclude_outside=1 is not supported")
        if sizes is not None and text("keep_aspect_ratio_policy", "stretch") != "stretch" and factors[0] != factors[1]:
            raise CompileError(f"{where}: keep_aspect_ratio_policy {text('keep_aspect_ratio_policy', '')!r} with sizes "
                               f"of different factors {factors} is not supported; only 'stretch'")
        taps = [_interp_taps(f, mode, coord, nearest) for f in factors]
        edge = max(max(abs(d) for phase in t for d in phase) for t in taps)
        k1 = [_interp_kernel(f, t, edge) for f, t in zip(factors, taps)]
        k2 = np.outer(k1[0][0], k1[1][0])[::-1, ::-1]      # the flipped (forward) kernel
        pads = (k1[0][1], k1[1][1], k1[0][2], k1[1][2])
        out = node.output[0]
        oh, ow = h * factors[0], w * factors[1]
        self._new_tensor(out, (c, oh, ow), (1, c, oh, ow), where)
        self.ops.append(Conv(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                             output=out, weight=np.broadcast_to(k2, (c, 1) + k2.shape).astype(np.float32),
                             bias=np.zeros(c, np.float32), pads=pads, kind="resize", groups=c,
                             up=(factors[0], factors[1]), edge=edge))

    def _pool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict, cls, global_: bool = False) -> None:
        x, (c, h, w) = self._feature_map(where, node.input[0])
        extra = {}
        if global_:
            kernel, stride, pads, (oh, ow) = (h, w), (1, 1), (0, 0, 0, 0), (1, 1)
        else:
            kernel = tuple(attrs.get("kernel_shape", ()))
            if len(kernel) != 2:
                raise CompileError(f"{where}: only 2-D pooling is supported; kernel_shape is {list(kernel)}")
            ceil = attrs.get("ceil_mode", 0) != 0
            if tuple(attrs.get("dilations", (1, 1))) != (1, 1):
                raise CompileError(f"{where}: dilations {list(attrs['dilations'])} are not supported; only dilations 1")
            stride, pads, (oh, ow) = self._window(where, attrs, (h, w), kernel, (1, 1))
            given = pads
            if max(pads[0], pads[2]) >= kernel[0] or max(pads[1], pads[3]) >= kernel[1]:
                raise CompileError(f"{where}: pads {list(pads)} must be smaller than the kernel {list(kernel)}")
            if ceil:   # the partial last windows: more padding at the end, which max-pooling ignores
                sizes, end = [], list(pads[2:])
                for d, (n, k, st, b, e) in enumerate(zip((h, w), kernel, stride, pads[:2], pads[2:])):
                    o = -(-(n + b + e - k) // st) + 1
                    if (o - 1) * st >= n + b:       # a window may not start in the end padding
                        o -= 1
                    end[d] = e + max(0, (o - 1) * st + k - (n + b + e))
                    sizes.append(o)
                pads, (oh, ow) = (pads[0], pads[1], end[0], end[1]), tuple(sizes)
            if cls is AvgPool and any(pads):
                # the divisor counts the window's pixels inside the input (count_include_pad=0) or
                # inside the padded input without the extension for ceil_mode's partial windows
                count = (0, 0, 0, 0) if not attrs.get("count_include_pad", 0) else given
                if count != pads:
                    extra["count_pads"] = count
        out = node.output[0]
        self._new_tensor(out, (c, oh, ow), (1, c, oh, ow), where)
        self.ops.append(cls(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                            output=out, kernel=(int(kernel[0]), int(kernel[1])), stride=stride, pads=pads, **extra))

    def _op_MaxPool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._pool(index, node, where, attrs, MaxPool)

    def _op_AveragePool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._pool(index, node, where, attrs, AvgPool)

    def _op_GlobalAveragePool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._pool(index, node, where, attrs, AvgPool, global_=True)

    def _op_GlobalMaxPool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._pool(index, node, where, attrs, MaxPool, global_=True)

    def _per_channel_constant(self, index: int, node: onnx.NodeProto, where: str, kind: str) -> bool:
        """A binary op with one constant operand holding a scalar or one value per channel: becomes a
        pending fusion ``kind`` (folded into the producing layer). False if no operand is constant."""
        a_name, b_name = node.input[0], node.input[1]
        consts = [n for n in (a_name, b_name) if n in self.consts]
        if len(consts) != 1:
            return False
        x_name = b_name if consts[0] == a_name else a_name
        x, shape = self._operand(where, x_name)
        chw = self.tensors[x].shape
        v = np.asarray(self.consts[consts[0]], dtype=np.float64)
        ok = v.size == 1 or (v.size == chw[0] and (v.ndim <= 1 or v.shape[-2:] == (1, 1) or
                                                    (v.ndim == 2 and len(shape) == 2)))
        if not ok:
            raise CompileError(f"{where}: constant {consts[0]!r} of shape {v.shape} with {shape} is not supported; "
                               f"only a scalar or one value per channel")
        out = node.output[0]
        self._new_tensor(out, chw, shape, where)
        self.ops.append(_Fusable(self._node_name(index, node), kind, x, out,
                                 (np.broadcast_to(v.reshape(-1), (chw[0],)).copy(),)))
        return True

    def _op_Mul(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if self._per_channel_constant(index, node, where, "MulConst"):   # folded into the producer's weights
            return
        self._binary(index, node, where, "Mul", "multiplies")

    def _op_Add(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if self._per_channel_constant(index, node, where, "AddConst"):   # folded into the producer's bias
            return
        self._binary(index, node, where, "Add", "adds")

    def _binary(self, index: int, node: onnx.NodeProto, where: str, op: str, verb: str) -> None:
        """An Add or Mul of two computed tensors, pending fusion: of the same shape, or a feature map
        and a per-channel (1, C, 1, 1) tensor (broadcast over the pixels; the map goes first)."""
        a_name, b_name = node.input[0], node.input[1]
        a, sa = self._operand(where, a_name)
        b, sb = self._operand(where, b_name)
        ca, cb = self.tensors[a].shape, self.tensors[b].shape
        if ca[1:] == (1, 1) and cb[1:] != (1, 1):          # the full-size operand first
            (a, sa, ca, a_name), (b, sb, cb, b_name) = (b, sb, cb, b_name), (a, sa, ca, a_name)
        same = sa == sb and ca == cb
        per_channel = cb == (ca[0], 1, 1) and len(sa) == len(sb) == 4
        if not (same or per_channel):
            raise CompileError(f"{where}: {verb} {a_name!r} {sa} and {b_name!r} {sb}; only tensors of the same "
                               f"shape, a feature map and a per-channel (1, C, 1, 1) tensor of the same C, or a "
                               f"per-channel constant are supported")
        out = node.output[0]
        self._new_tensor(out, ca, sa, where)
        self.ops.append(_Fusable(self._node_name(index, node), op, a, out, (b,)))

    def _op_Concat(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        names = [i for i in node.input if i]
        parts = [self._feature_map(where, n) for n in names]
        axis = attrs.get("axis", 1)
        if axis not in (1, -3):
            raise CompileError(f"{where}: only concatenation along the channel axis (axis=1) is supported, got axis={axis}")
        hw = {chw[1:] for _, chw in parts}
        if len(hw) != 1:
            raise CompileError(f"{where}: the inputs have different spatial sizes {sorted(hw)}")
        c = sum(chw[0] for _, chw in parts)
        (h, w), = hw
        out = node.output[0]
        self._new_tensor(out, (c, h, w), (1, c, h, w), where)
        self.ops.append(Concat(name=self._layer_name(index, node), nodes=[self._node_name(index, node)],
                               inputs=[t for t, _ in parts], output=out))

    def _op_Sum(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        ins = [i for i in node.input if i]
        if len(ins) == 1:
            _, shape = self._operand(where, ins[0])
            self._alias(node, where, shape, reshape=False)
        elif len(ins) == 2:
            self._op_Add(index, node, where, attrs)
        else:
            raise CompileError(f"{where}: Sum of {len(ins)} inputs is not supported; only one or two")

    def _fc(self, index: int, node: onnx.NodeProto, where: str, x: str, weight: np.ndarray, bias: np.ndarray) -> None:
        """A fully connected layer as a Conv whose kernel covers the whole input map."""
        c, h, w = self.tensors[x].shape
        m = weight.shape[0]
        out = node.output[0]
        self._new_tensor(out, (m, 1, 1), (1, m), where)
        self.ops.append(Conv(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                             output=out, weight=np.ascontiguousarray(weight.reshape(m, c, h, w), dtype=np.float32),
                             bias=np.asarray(bias, dtype=np.float32).reshape(m), kind="fc"))

    def _op_Gemm(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if attrs.get("transA", 0) != 0:
            raise CompileError(f"{where}: transA=1 is not supported; only transA=0")
        b = self._const(where, node, 1, "weight B")
        x, k = self._vector(where, node.input[0])
        if b.ndim != 2:
            raise CompileError(f"{where}: weight B has shape {b.shape}; Gemm needs a 2-D B")
        weight = b if attrs.get("transB", 0) else b.T          # (M, K)
        if weight.shape[1] != k:
            raise CompileError(f"{where}: weight B {b.shape} (transB={attrs.get('transB', 0)}) does not take "
                               f"the {k} inputs of {node.input[0]!r}")
        m = weight.shape[0]
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        c = self._const(where, node, 2, "bias C", required=False)
        if c is None:
            bias = np.zeros(m)
        else:
            try:
                bias = np.broadcast_to(np.asarray(c, dtype=np.float64), (1, m))[0]
            except ValueError:
                raise CompileError(f"{where}: bias C has shape {c.shape}; expected ({m},), (1, {m}) or a scalar") from None
        self._fc(index, node, where, x, alpha * weight.astype(np.float64), beta * bias)

    def _op_MatMul(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if node.input[1] not in self.consts:
            raise CompileError(f"{where}: the right operand {node.input[1]!r} must be a constant (initializer); "
                               f"only MatMul by a constant weight matrix is supported")
        b = self.consts[node.input[1]]
        x, k = self._vector(where, node.input[0])
        if b.ndim != 2 or b.shape[0] != k:
            raise CompileError(f"{where}: weight {node.input[1]!r} has shape {b.shape}; expected ({k}, M) for the "
                               f"(1, {k}) input {node.input[0]!r}")
        self._fc(index, node, where, x, b.T.astype(np.float64), np.zeros(b.shape[1]))

    def _op_BatchNormalization(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if attrs.get("training_mode", 0) != 0:
            raise CompileError(f"{where}: training_mode=1 is not supported; export the model for inference")
        x, shape = self._operand(where, node.input[0])
        chw = self.tensors[x].shape
        if not ((len(shape) == 4 and shape[1:] == chw) or (len(shape) == 2 and chw == (shape[1], 1, 1))):
            raise CompileError(f"{where}: input {node.input[0]!r} has shape {shape}, which is not the (1, C, H, W) "
                               f"or (1, C) layout of tensor {x!r} {chw}")
        params = [np.asarray(self._const(where, node, i, what), dtype=np.float64)
                  for i, what in ((1, "scale"), (2, "bias B"), (3, "mean"), (4, "var"))]
        for p, what in zip(params, ("scale", "bias B", "mean", "var")):
            if p.shape != (chw[0],):
                raise CompileError(f"{where}: {what} has shape {p.shape}, expected ({chw[0]},)")
        eps = float(attrs.get("epsilon", 1e-5))
        out = node.output[0]
        self._new_tensor(out, chw, shape, where)
        self.ops.append(_Fusable(self._node_name(index, node), node.op_type, x, out, (*params, eps)))

    def _activation(self, index: int, node: onnx.NodeProto, where: str, alpha: float = 0.0,
                    clip: tuple = (None, None)) -> None:
        x, shape = self._operand(where, node.input[0])
        out = node.output[0]
        self._new_tensor(out, self.tensors[x].shape, shape, where)
        self.ops.append(_Fusable(self._node_name(index, node), node.op_type, x, out,
                                 (ACTIVATIONS[node.op_type], alpha, clip)))

    def _op_Relu(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._activation(index, node, where)

    def _op_Sigmoid(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._activation(index, node, where)

    def _op_Tanh(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._activation(index, node, where)

    def _op_LeakyRelu(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        alpha = float(attrs.get("alpha", 0.01))
        if not 0.0 <= alpha <= 1.0:
            raise CompileError(f"{where}: alpha {alpha:.6g} is out of range; the DLA supports 0 <= alpha <= 1")
        self._activation(index, node, where, alpha=alpha)

    def _op_Clip(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if self.opset < 11:    # bounds are attributes
            bounds = [attrs.get("min"), attrs.get("max")]
        else:                  # bounds are optional constant inputs
            bounds = []
            for pos, what in ((1, "min"), (2, "max")):
                v = self._const(where, node, pos, what, required=False)
                if v is not None and np.asarray(v).size != 1:
                    raise CompileError(f"{where}: {what} must be a scalar, got shape {np.asarray(v).shape}")
                bounds.append(None if v is None else float(np.asarray(v).reshape(-1)[0]))
        bounds = [None if b is None or not np.isfinite(b) or abs(b) >= _FLT_MAX else float(b) for b in bounds]
        lo, hi = bounds
        if lo is not None and hi is not None and lo > hi:
            raise CompileError(f"{where}: min {lo:.6g} is greater than max {hi:.6g}")
        self._activation(index, node, where, clip=(lo, hi))

    def _alias(self, node: onnx.NodeProto, where: str, shape: tuple[int, ...], reshape: bool) -> None:
        src = node.input[0]
        out = node.output[0]
        self.alias[out] = self._resolve(src)
        self._set_shape(out, shape, where)
        if reshape:
            self.reshaped_by[out] = where
        elif src in self.reshaped_by:
            self.reshaped_by[out] = self.reshaped_by[src]
        self.notes.append(f"{where} is an alias of tensor {self.alias[out]!r}" + (f" with shape {shape}" if reshape else ""))

    def _op_Identity(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        _, shape = self._operand(where, node.input[0])
        self._alias(node, where, shape, reshape=False)

    def _op_Dropout(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        _, shape = self._operand(where, node.input[0])
        if len(node.input) > 2 and node.input[2]:
            mode = self.consts.get(node.input[2])
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                raise CompileError(f"{where}: training_mode must be a constant false for inference")
        self._alias(node, where, shape, reshape=False)

    def _op_Flatten(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        _, shape = self._operand(where, node.input[0])
        axis = attrs.get("axis", 1)
        axis = axis + len(shape) if axis < 0 else axis
        if not 0 <= axis <= len(shape):
            raise CompileError(f"{where}: axis {attrs.get('axis')} is out of range for input shape {shape}")
        self._alias(node, where, (math.prod(shape[:axis]), math.prod(shape[axis:])), reshape=True)

    def _op_Reshape(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        _, shape = self._operand(where, node.input[0])
        target = self._const(where, node, 1, "target shape")
        target = [int(d) for d in np.asarray(target).reshape(-1)]
        allowzero = attrs.get("allowzero", 0)
        new = [shape[i] if d == 0 and not allowzero and i < len(shape) else d for i, d in enumerate(target)]
        total = math.prod(shape)
        if new.count(-1) == 1:
            known = math.prod(d for d in new if d != -1)
            if known == 0 or total % known:
                raise CompileError(f"{where}: cannot reshape {shape} to {target}")
            new[new.index(-1)] = total // known
        if any(d < 0 for d in new) or math.prod(new) != total:
            raise CompileError(f"{where}: cannot reshape {shape} to {target}: the element count changes")
        self._alias(node, where, tuple(new), reshape=True)

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
