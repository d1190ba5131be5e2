"""Calibration for variable fixed point (the SDK's ``varfp``, ``Compile(model, samples=[...])``).

The float graph (the IR with its float weights, :func:`sim.golden.run_float`, which is what
onnxruntime computes) runs on every calibration sample and records, per activation tensor, the
largest magnitude seen. :func:`compiler.quantize.quantize` then gives each tensor the finest Q
format that holds that range with :data:`HEADROOM` to spare.

Fused intermediates are measured as well (the value a Conv's requantising shift produces before
its activation, and the first factor of a fused Mul such as a squeeze-excitation gate's input),
because each has a format of its own: a gated value in the format of the gated product, which the
gate makes smaller, saturates.

Why the maximum and not a percentile: with 16-bit data, one bit of resolution costs a rounding
error of about 2**-16 of the range, while clipping an outlier costs its whole excess; clipping
pays for itself in 8-bit formats, not here. The headroom (one bit) is for inputs somewhat larger
than any calibration sample.
"""
from __future__ import annotations

import numpy as np

from .compiled import image_batch
from .ir import CompileError, Graph

__all__ = ["calibrate", "calibration_feeds", "HEADROOM"]

#: a tensor's format holds HEADROOM times its calibrated range (one bit above it)
HEADROOM = 2.0


def calibration_feeds(graph: Graph, samples) -> list[dict[str, np.ndarray]]:
    """The SDK's ``samples`` as one feed per image: ``{input name: float32 (C, H, W)}``.

    Accepted: for a one-input model an array (one image, or a batch ``(N, ...)``) or a list of
    them; for a model with k inputs a list of k-element lists (one array per input, in the model's
    input order), or the SDK's flat list of ``n * k`` arrays (sample i, input j at ``i * k + j``)."""
    k = len(graph.inputs)
    if isinstance(samples, np.ndarray):
        samples = [samples]
    if not isinstance(samples, (list, tuple)):
        raise CompileError(f"samples must be a list of float32 arrays (calibration images), got {type(samples).__name__}")
    if not len(samples):
        raise CompileError("samples is empty: give at least one calibration image")
    if k == 1:   # [[x0], [x1]] (the several-input form) is accepted too
        groups = [list(s) if isinstance(s, (list, tuple)) else [s] for s in samples]
    elif all(isinstance(s, (list, tuple)) for s in samples):
        groups = [list(s) for s in samples]
    elif len(samples) % k == 0:
        groups = [list(samples[i:i + k]) for i in range(0, len(samples), k)]
    else:
        raise CompileError(f"samples: the model has {k} inputs, so give a list of {k}-element lists (one array "
                           f"per input) or a flat list whose length is a multiple of {k}; got {len(samples)} arrays")
    feeds: list[dict[str, np.ndarray]] = []
    for n, group in enumerate(groups):
        if len(group) != k:
            raise CompileError(f"samples[{n}] has {len(group)} array(s); the model has {k} input(s)")
        per_input = []
        for gi, a in zip(graph.inputs, group):
            try:
                per_input.append(image_batch(a, tuple(gi.onnx_shape[1:]), f"samples[{n}] for input {gi.name!r}"))
            except (TypeError, ValueError) as e:
                raise CompileError(str(e)) from None
        batch = {len(a) for a in per_input}
        if len(batch) != 1:
            raise CompileError(f"samples[{n}]: the inputs have different batch sizes {sorted(batch)}")
        for b in range(batch.pop()):
            feeds.append({gi.name: a[b].reshape(graph.tensors[gi.tensor].shape)
                          for gi, a in zip(graph.inputs, per_input)})
    return feeds


def calibrate(graph: Graph, samples) -> dict[str, float]:
    """Largest |value| of every IR tensor over the calibration samples (float graph), and of every
    fused intermediate whose format is chosen too (keys ``output + sim.golden.PRE`` / ``GATED``:
    the value before a Conv's activation, and a fused Mul's first factor)."""
    from sim.golden import run_float   # the float reference lives with the golden model
    ranges: dict[str, float] = {}
    for feed in calibration_feeds(graph, samples):
        probes: dict[str, np.ndarray] = {}
        tensors = run_float(graph, feed, probes)
        for name, t in list(tensors.items()) + list(probes.items()):
            m = float(np.max(np.abs(t))) if t.size else 0.0
            ranges[name] = max(ranges.get(name, 0.0), m)
    return ranges
