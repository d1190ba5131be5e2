"""The host's operator evaluator: ``onnx.reference``, with corrections where it disagrees with the
ONNX specification (and with onnxruntime).

* ``LRN``: onnx 1.23's reference sums the squares over a window indexed by the *batch* position
  instead of the channel, so with batch 1 every channel gets channel 0's window. Replaced by the
  specification's formula: ``y = x / (bias + alpha / size * sum_{window} x^2) ** beta`` over
  channels ``c - floor((size - 1) / 2) .. c + ceil((size - 1) / 2)``.
* ``com.microndla.Silu``: the compiler's own op (x * Sigmoid(x), made by canonicalisation).
* ``LSTM``, ``GRU``: the reference ignores ``sequence_lens``, ``clip``, ``input_forget`` and the
  ``activations`` attribute; replaced by :mod:`compiler.host_rnn`.
* ``Mish``: at any opset (canonicalisation makes it from x * Tanh(Softplus(x)) in models older
  than opset 18, where onnx.reference has none).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from .host_rnn import GRU, LSTM

__all__ = ["host_evaluator"]


class LRN(OpRun):
    """Local response normalisation across channels, as the ONNX specification defines it."""
    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        alpha = 1e-4 if alpha is None else alpha
        beta = 0.75 if beta is None else beta
        bias = 1.0 if bias is None else bias
        if x.ndim < 3:
            raise RuntimeError(f"LRN needs an (N, C, D1, ...) input, got shape {x.shape}")
        sq = x.astype(np.float64) ** 2
        lo, hi = math.floor((size - 1) / 2), math.ceil((size - 1) / 2)
        square_sum = np.zeros_like(sq)
        for c in range(x.shape[1]):
            square_sum[:, c] = sq[:, max(0, c - lo):min(x.shape[1], c + hi + 1)].sum(axis=1)
        return ((x / (bias + alpha / size * square_sum) ** beta).astype(x.dtype),)


class Silu(OpRun):
    """The compiler's own ``com.microndla.Silu`` (canonicalisation's x * Sigmoid(x)), for when a
    stage with it runs on the host."""
    op_domain = "com.microndla"

    def _run(self, x):
        return ((x / (1 + np.exp(-x.astype(np.float64)))).astype(x.dtype),)


class Mish(OpRun):
    """x * tanh(softplus(x)), as ONNX's Mish (opset 18), at any opset."""
    op_domain = ""

    def _run(self, x):
        return ((x * np.tanh(np.logaddexp(0.0, x.astype(np.float64)))).astype(x.dtype),)


def host_evaluator(model: onnx.ModelProto | bytes) -> ReferenceEvaluator:
    """An evaluator of ``model`` (a proto or its serialised bytes) for the host stages."""
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    return ReferenceEvaluator(model, new_ops=[LRN, Silu, Mish, LSTM, GRU])
