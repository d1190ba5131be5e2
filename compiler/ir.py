"""The compiler's graph IR: what the front end produces, quantisation annotates, the golden
reference evaluates and the code generator lowers to instructions.

Tensors are per image, channel-first ``(C, H, W)`` (a vector is ``(N, 1, 1)``). Layers are kept in
a topological order. Float parameters come from ONNX (BatchNormalization already folded);
quantisation adds the integer parameters (``None`` before).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class CompileError(ValueError):
    """A model the compiler cannot compile; the message names the node and op where there is one,
    and ``node`` is that node's name (what the host/DLA partitioner moves to the host)."""

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, int, int]         #: (C, H, W) per image
    frac: int | None = None             #: fractional bits of its Q format (set by quantisation)

    @property
    def channels(self) -> int:
        return self.shape[0]


@dataclass
class Conv:
    """Convolution (also Gemm/MatMul, as a kernel covering the whole input map) with optional
    fused bias, BatchNormalization, activation and a fused Add or Mul of a second tensor.

    Also grouped and depthwise convolutions (``groups``), per-channel scale and bias (a depthwise
    1x1 convolution), transposed convolutions and upsampling: with ``up`` = (s_y, s_x) != (1, 1) the
    input is first extended by ``edge`` pixels on every side replicating its border (Resize's
    clamped coordinates), then s-1 zeros are inserted between its pixels, and the layer is the
    ordinary stride-1 convolution of that (``weight`` is then the flipped kernel of the
    ConvTranspose). The code generator lowers ``up`` by phases (``compiler.lowering``), never by
    inserting zeros."""
    name: str                            #: name of the (first) ONNX node
    nodes: list[str]                     #: all ONNX nodes fused into this layer
    input: str
    output: str
    weight: np.ndarray                   #: float32 (Cout, Cin, kh, kw)
    bias: np.ndarray                     #: float32 (Cout,)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)   #: (top, left, bottom, right)
    dilation: tuple[int, int] = (1, 1)
    act: str = "none"                    #: one of arch.numerics.ACT_NAMES: 'none', 'relu', 'leaky', 'clip', 'sigmoid', 'tanh'
    kind: str = "conv"                   #: 'conv' or 'fc' (for reports only)
    residual: str | None = None          #: second operand of a fused Add or Mul (same shape, or (C, 1, 1) for a Mul)
    res_op: str = "add"                  #: 'add': added before the activation; 'mul': multiplies the activated output
    alpha: float = 0.0                   #: LeakyRelu's negative slope
    clip: tuple[float | None, float | None] = (None, None)   #: Clip's bounds (None: unbounded)
    groups: int = 1                      #: input and output channels split into this many groups (Cin/groups per weight)
    up: tuple[int, int] = (1, 1)         #: zero-insertion factor of the input (a transposed convolution's stride)
    edge: int = 0                        #: border pixels replicated around the input before zero insertion
    # set by quantisation
    wq: np.ndarray | None = None         #: int16 (Cout, Cin, kh, kw)
    w_frac: int | None = None
    bq: np.ndarray | None = None         #: int64 (Cout,), in the accumulator's format (in_frac + w_frac)
    shift: int | None = None             #: requantisation shift = in_frac + w_frac - out_frac
    res_shift: int | None = None         #: add: residual left shift = in_frac + w_frac - residual frac;
                                         #: mul: product right shift = act_frac + residual frac - out_frac
    act_a: int = 0                       #: the CONV's act_a/act_b fields (LEAKY mul/shift, CLIP lo/hi patterns)
    act_b: int = 0

    @property
    def kernel(self) -> tuple[int, int]:
        return self.weight.shape[2], self.weight.shape[3]


@dataclass
class Pool:
    """A pooling window over each channel (the fields both kinds share)."""
    name: str
    nodes: list[str]
    input: str
    output: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)   #: (top, left, bottom, right)


@dataclass
class MaxPool(Pool):
    """Max pooling (also GlobalMaxPool); padding never wins (it is the int16 minimum)."""


@dataclass
class AvgPool(Pool):
    """Average pooling (also GlobalAveragePool, as a window covering the whole map); padding is
    zeros. The divisor is kh*kw unless ``count_pads`` is set: then it is the number of window
    pixels inside the input extended by ``count_pads`` (ONNX count_include_pad=0: (0, 0, 0, 0);
    ceil_mode: the pads without the extension for the partial last windows), which varies at
    the borders."""
    count_pads: tuple[int, int, int, int] | None = None
    # set by quantisation: output = sat16(round_shift(window_sum * mul, shift)); with count_pads,
    # (mul, shift) = muls[n] for a window counting n pixels
    mul: int | None = None
    shift: int | None = None
    muls: dict[int, tuple[int, int]] | None = None


@dataclass
class Concat:
    """Channel concatenation. It runs no code: each input tensor is a view of the output at its
    channel offset, so the layers producing the inputs write straight into the output."""
    name: str
    nodes: list[str]
    inputs: list[str]
    output: str


Layer = Conv | MaxPool | AvgPool


def layer_inputs(layer: Layer) -> list[str]:
    """Every tensor a layer reads: its input and, for a Conv with a fused Add, the residual."""
    res = getattr(layer, "residual", None)
    return [layer.input] + ([res] if res else [])


@dataclass
class GraphInput:
    name: str                            #: ONNX input name
    tensor: str                          #: IR tensor it feeds
    onnx_shape: tuple[int, ...]          #: with batch dimension, e.g. (1, 3, 32, 32)


@dataclass
class GraphOutput:
    name: str                            #: ONNX output name
    tensor: str                          #: IR tensor holding it
    onnx_shape: tuple[int, ...]          #: with batch dimension, e.g. (1, 10); a reshape of (C, H, W)


@dataclass
class HostTail:
    """Operators after the last DLA layer that the DLA does not run (Softmax, ...): run on the host
    by the runtime, as the SDK did, on the DLA's outputs."""
    model: bytes                         #: an ONNX model of just these nodes
    inputs: list[str]                    #: its inputs: names of DLA outputs (Graph.outputs)
    outputs: list[GraphOutput]           #: what it produces (graph outputs)
    nodes: list[str]                     #: the nodes, for reports


@dataclass
class Graph:
    name: str
    tensors: dict[str, TensorInfo]
    layers: list[Layer]
    inputs: list[GraphInput]
    outputs: list[GraphOutput]
    opset: int = 0
    notes: list[str] = field(default_factory=list)   #: what the front end folded or dropped
    concats: list[Concat] = field(default_factory=list)
    host: HostTail | None = None         #: operators run on the host after the DLA
    output_order: list[str] = field(default_factory=list)   #: the model's output names, in order
    range_hints: dict[str, float] = field(default_factory=dict)   #: a quantised model's activation ranges
    #: the model's tensors are unbatched vectors (L,) compiled as one (1, L) image (compiler/lift1d.py)
    unbatched: bool = False

    def producer(self, tensor: str) -> Layer | None:
        for layer in self.layers:
            if layer.output == tensor:
                return layer
        return None

    def consumers(self, tensor: str) -> list[Layer]:
        return [l for l in self.layers if tensor in layer_inputs(l)]

    @property
    def quantized(self) -> bool:
        return all(t.frac is not None for t in self.tensors.values())
