"""1-D models on the 2-D machine: (N, C, L) tensors as (N, C, L, 1) images.

The DLA's layers are 2-D (NCHW). A model whose graph inputs are rank 3 (N, C, L) -- 1-D
convolutions and pooling, or element-wise ops on such tensors -- runs unchanged in meaning as a
model on (N, C, L, 1): every 1-D kernel, stride, pad and dilation gets a second axis of size 1 (pad
0), every 1-D weight a trailing axis of 1, a per-channel constant (C, 1) becomes (C, 1, 1). The
rewrite adds ``Reshape(x, [0, 0, 0, 1])`` after each rank-3 input and ``Reshape(y, [0, 0, 0])``
before each rank-3 output, which the front end compiles as views (no code): the user still passes
and gets (N, C, L) arrays.

Only models made entirely of operators whose meaning does not depend on the rank are rewritten
(see :data:`SAFE_OPS`; an op with an axis counted from the end, such as Softmax, would change
meaning); anything else is left as it is, and the front end refuses its rank-3 tensors as before.
Weights are reshaped through their ``dims`` only, so no weight data is read.

:func:`lift_vectors` does the same for models on unbatched vectors: a model of element-wise
operators (:data:`VECTOR_OPS`) whose inputs and outputs are rank-1 tensors (L,) runs as one image
of a (1, L) vector, the DLA's rank-2 form ((1, L) is L channels of 1x1), whose per-element
constants (L,) are per-channel constants. Only the declared shapes of the graph inputs and outputs
change ((L,) -> (1, L)); element-wise broadcasting gives every node the same values with a leading
axis of 1. The model is marked (:data:`UNBATCHED_KEY` in its metadata) so that ``Run`` takes and
returns the vectors without a batch axis, as the model declares them.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["lift_1d", "lift_vectors", "unlift_vectors", "is_unbatched", "UNBATCHED_KEY", "FLOAT_TYPES"]

#: ops whose meaning a trailing axis of 1 does not change (with the attribute rewrites below)
SAFE_OPS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "BatchNormalization", "Add", "Mul", "Sum",
                      "Sub", "Div", "Neg", "HardSigmoid", "HardSwish", "Mish",
                      "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                      "Concat", "Identity", "Dropout"})
#: element-wise ops (the value at a position depends only on the operands' values there)
VECTOR_OPS = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Add", "Mul", "Sum", "Sub", "Div", "Neg",
                        "HardSigmoid", "HardSwish", "Mish", "Identity", "Dropout"})
#: the element types the runtime converts to the DLA's fixed point
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
#: metadata key marking a model lifted by :func:`lift_vectors`
UNBATCHED_KEY = "com.microndla.unbatched"
_SPATIAL = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")
_ELEMENTWISE = ("Add", "Mul", "Sum", "Sub", "Div")


def _rank(vi: onnx.ValueInfoProto) -> int | None:
    t = vi.type.tensor_type
    return len(t.shape.dim) if vi.type.HasField("tensor_type") and t.HasField("shape") else None


def lift_1d(proto: onnx.ModelProto) -> bool:
    """Rewrite ``proto`` in place as described in the module docstring; False (and ``proto``
    untouched) when it has no rank-3 input or an operator outside :data:`SAFE_OPS`."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    inputs = [vi for vi in g.input if vi.name not in inits]
    if not inputs or any(_rank(vi) != 3 for vi in inputs):
        return False
    if any(_rank(vo) != 3 for vo in g.output):
        return False
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in SAFE_OPS:
            return False
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # the constant operands that need a trailing axis, and each must serve only nodes that get one
    reshape_dims: dict[str, list[int]] = {}
    for n in g.node:
        ins = [i for i in n.input if i]
        if n.op_type in ("Conv", "ConvTranspose"):
            w = inits.get(ins[1]) if len(ins) > 1 else None
            if w is None or len(w.dims) != 3:
                return False
            reshape_dims[w.name] = list(w.dims) + [1]
        elif n.op_type in _ELEMENTWISE:
            for i in ins:
                t = inits.get(i)
                if t is None:
                    continue
                if len(t.dims) >= 2 and t.dims[-1] == 1:      # (C, 1) or (1, C, 1): per channel
                    reshape_dims[t.name] = list(t.dims) + [1]
                elif int(np.prod(t.dims)) != 1:               # broadcast along L: no 2-D equivalent here
                    return False
        elif n.op_type == "Concat":
            axis = next((a.i for a in n.attribute if a.name == "axis"), None)
            if axis not in (1, -2):
                return False
    for name in reshape_dims:
        if any(c.op_type not in ("Conv", "ConvTranspose") + _ELEMENTWISE for c in consumers.get(name, [])):
            return False
    # rewrite
    for name, dims in reshape_dims.items():
        t = inits[name]
        del t.dims[:]
        t.dims.extend(dims)
    for n in g.node:
        if n.op_type in _SPATIAL:
            _lift_attributes(n)
        elif n.op_type == "Concat":
            for a in n.attribute:
                if a.name == "axis":
                    a.i = 1
    zero3 = numpy_helper.from_array(np.array([0, 0, 0, 1], dtype=np.int64), "lift1d_to_2d")
    zero2 = numpy_helper.from_array(np.array([0, 0, 0], dtype=np.int64), "lift1d_to_1d")
    g.initializer.extend([zero3, zero2])
    head, tail = [], []
    for vi in inputs:
        lifted = f"{vi.name}__2d"
        for n in g.node:
            n.input[:] = [lifted if i == vi.name else i for i in n.input]
        head.append(helper.make_node("Reshape", [vi.name, zero3.name], [lifted], name=f"{vi.name}__to_2d"))
    for vo in g.output:
        lifted = f"{vo.name}__2d"
        for n in g.node:
            n.output[:] = [lifted if o == vo.name else o for o in n.output]
            n.input[:] = [lifted if i == vo.name else i for i in n.input]
        tail.append(helper.make_node("Reshape", [lifted, zero2.name], [vo.name], name=f"{vo.name}__to_1d"))
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]        # rank-3 shapes of intermediate tensors no longer hold
    return True


def _lift_attributes(n: onnx.NodeProto) -> None:
    """A 1-D Conv/ConvTranspose/pool's attributes as those of the (L, 1) 2-D op."""
    extra = {"kernel_shape": 1, "strides": 1, "dilations": 1, "output_padding": 0, "output_shape": 1}
    for a in n.attribute:
        if a.name in extra and len(a.ints) == 1:
            a.ints.append(extra[a.name])
        elif a.name == "pads" and len(a.ints) == 2:
            b, e = a.ints
            del a.ints[:]
            a.ints.extend([b, 0, e, 0])


def lift_vectors(proto: onnx.ModelProto) -> bool:
    """Rewrite ``proto`` in place as described in the module docstring (rank-1 inputs and outputs
    declared (1, L)); False (and ``proto`` untouched) unless every real input and every output is a
    float rank-1 tensor of known length, every node an element-wise op of :data:`VECTOR_OPS` (Dropout
    without its mask output) and every constant operand of rank <= 1."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    inputs = [vi for vi in g.input if vi.name not in inits]
    ends = inputs + list(g.output)
    if not inputs or any(_rank(vi) != 1 or vi.type.tensor_type.elem_type not in FLOAT_TYPES for vi in ends):
        return False
    if any(not vi.type.tensor_type.shape.dim[0].HasField("dim_value") or vi.type.tensor_type.shape.dim[0].dim_value < 1
           for vi in ends):
        return False
    for n in g.node:
        if n.domain not in ("", "ai.onnx") or n.op_type not in VECTOR_OPS:
            return False
        if n.op_type == "Dropout" and len([o for o in n.output if o]) > 1:
            return False
        if any(len(inits[i].dims) > 1 for i in n.input if i in inits):
            return False
    for vi in ends:
        dims = vi.type.tensor_type.shape.dim
        length = dims[0].dim_value
        del dims[:]
        dims.add().dim_value = 1
        dims.add().dim_value = length
    del g.value_info[:]
    proto.metadata_props.add(key=UNBATCHED_KEY, value="1")
    return True


def is_unbatched(proto: onnx.ModelProto) -> bool:
    """Whether :func:`lift_vectors` rewrote ``proto``."""
    return any(p.key == UNBATCHED_KEY and p.value == "1" for p in proto.metadata_props)


def unlift_vectors(proto: onnx.ModelProto) -> None:
    """Undo :func:`lift_vectors` on ``proto`` (the model as given, for the host to run whole)."""
    if not is_unbatched(proto):
        return
    g = proto.graph
    inits = {t.name for t in g.initializer}
    for vi in [vi for vi in g.input if vi.name not in inits] + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        length = dims[1].dim_value
        del dims[:]
        dims.add().dim_value = length
    del g.value_info[:]
    keep = [p for p in proto.metadata_props if p.key != UNBATCHED_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
