"""Small helpers shared by the zoo's model builders."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8   #: the IR version of opset 13's era; readable by every onnxruntime in use


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, gain: float = 2.0) -> np.ndarray:
    """He (Kaiming) normal initialisation: std = sqrt(gain / fan_in)."""
    return rng.normal(0.0, np.sqrt(gain / fan_in), size=shape).astype(np.float32)


def bn_params(rng: np.random.Generator, prefix: str, c: int) -> list[onnx.TensorProto]:
    """Plausible inference-time BatchNormalization statistics for ``c`` channels."""
    return [
        init(f"{prefix}.weight", rng.uniform(0.5, 1.5, c)),
        init(f"{prefix}.bias", rng.normal(0.0, 0.1, c)),
        init(f"{prefix}.running_mean", rng.normal(0.0, 0.1, c)),
        init(f"{prefix}.running_var", rng.uniform(0.5, 2.0, c)),
    ]


def model(name: str, nodes: list, inputs: list, outputs: list, inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                          producer_name="open-mdla zoo")
    onnx.checker.check_model(m)
    return m


def tensor(name: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def conv_out(n: int, k: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1) -> int:
    return (n + pad_begin + pad_end - (k - 1) * dilation - 1) // stride + 1
