"""Modelled time of a host stage (:mod:`arch.host`): the operations of its nodes from their shapes,
and the tensors it exchanges with the card."""
from __future__ import annotations

import math

import onnx
from onnx import helper

from arch.host import HOST, HostModel

__all__ = ["node_flops", "stage_cost"]

#: operations per output element of element-wise and per-token operators (default 1)
_PER_ELEMENT = {"Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "Sqrt": 4, "Pow": 4, "Erf": 8,
                "Exp": 4, "Log": 4, "Tanh": 4, "Sigmoid": 4, "Div": 2, "ReduceMean": 1, "LRN": 6,
                "Reshape": 0, "Squeeze": 0, "Unsqueeze": 0, "Flatten": 0, "Identity": 0, "Constant": 0,
                "Shape": 0}


def _shape(shapes: dict, name: str):
    return shapes.get(name)


def node_flops(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]], selections: frozenset = frozenset()) -> float:
    """Floating-point operations of one node (2 per multiply-accumulate of a product). An LSTM/GRU
    whose input weights are in ``selections`` (the 0/1 selection of a split recurrence,
    :func:`compiler.frontend_seq.split_weights`) reads gates the DLA computed: no input product."""
    op = node.op_type
    out = _shape(shapes, node.output[0]) if node.output else None
    size = math.prod(out) if out else 0
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op in ("MatMul", "Gemm", "MatMulInteger"):
        a = _shape(shapes, node.input[0])
        k = (a[0] if op == "Gemm" and attrs.get("transA", 0) else a[-1]) if a else 0
        return 2.0 * size * k
    if op == "Conv":
        w = _shape(shapes, node.input[1])
        return 2.0 * size * (math.prod(w[1:]) if w else 0)
    if op in ("LSTM", "GRU"):
        x, r = _shape(shapes, node.input[0]), _shape(shapes, node.input[2])
        if not x or not r:
            return 0.0
        steps = x[0] * x[1]                                 # T x batch (either layout)
        d, gh, h = r
        w = _shape(shapes, node.input[1])
        inputs = 0 if node.input[1] in selections else (w[2] if w else 0)
        per_step = 2.0 * gh * (inputs + h) + (12 if op == "LSTM" else 10) * h
        return steps * d * per_step
    return float(_PER_ELEMENT.get(op, 1) * size)


def stage_cost(model_bytes: bytes, model: HostModel = HOST) -> tuple[float, int, int, float]:
    """(operations, tensors moved, bytes moved, modelled seconds) of a host stage's ONNX model:
    its inputs and outputs cross between the host and the card as float32."""
    m = onnx.load_from_string(model_bytes)
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    for init in m.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    from onnx import numpy_helper

    from compiler.frontend_seq import split_weights
    selections = frozenset(i.name for i in m.graph.initializer if len(i.dims) == 3
                           and split_weights(numpy_helper.to_array(i)))
    flops = sum(node_flops(n, shapes, selections) for n in m.graph.node)
    inits = {i.name for i in m.graph.initializer}
    moved = [vi.name for vi in list(m.graph.input) + list(m.graph.output) if vi.name not in inits]
    nbytes = sum(4 * math.prod(shapes.get(n, (0,))) for n in moved)
    return flops, len(moved), nbytes, model.seconds(flops, len(moved), nbytes)
