"""Quantisation: annotate the graph IR with Q formats and integer parameters.

Decisions, and why:

* **Activations: one format for every tensor**, ``act_frac`` fractional bits (default
  ``cfg.default_frac``, Q8.8, the SDK's default bitfile). Per-tensor formats from calibration
  samples (the SDK's ``varfp``) come later; a single format keeps MaxPool a pure comparison and
  makes every requantising shift non-negative. A MaxPool's output format is its input's.
* **Weights: one format per layer**, the largest ``w_frac`` with which ``round(max|w| * 2**w_frac)``
  fits int16 (:func:`arch.numerics.frac_for_range`): per-layer formats cost nothing in hardware
  (the shift is per instruction) and keep the precision of small-weight layers (folded
  BatchNormalization rescales weights by orders of magnitude). ``w_frac`` is then lowered if needed
  so that
  (a) the bias, held in the accumulator's format (``in_frac + w_frac`` fractional bits), fits
      ``cfg.bias_bits`` signed bits, and
  (b) the requantising shift ``in_frac + w_frac - out_frac`` is not negative (the output stage only
      shifts right).
  Lowering ``w_frac`` helps (a) and hurts (b): if no ``w_frac`` satisfies both, the layer cannot be
  compiled in these formats and a :class:`CompileError` names it.
* ``wq = float_to_fixed(weight, w_frac)`` (round half to even, saturate), ``bq = rint(bias *
  2**(in_frac + w_frac))`` as int64; both rounding rules are those of :mod:`arch.numerics`.
* A fused residual (an Add) is shifted left into the accumulator format by
  ``in_frac + w_frac - residual_frac``. AvgPool keeps its input's format; its divisor is a 16-bit
  reciprocal (:func:`arch.numerics.reciprocal`).
* A reduction longer than ``cfg.max_reduction`` terms (``kh * kw * cin``) could wrap the
  accumulator, which would make the result depend on the hardware's summation order: rejected.
"""
from __future__ import annotations

import numpy as np

from arch.machine import MachineConfig
from arch.numerics import float_to_fixed, frac_for_range, reciprocal

from .ir import AvgPool, CompileError, Conv, Graph, MaxPool
from .lowering import window_counts

__all__ = ["quantize"]

_MAX_WEIGHT_FRAC = 24   #: frac_for_range's default cap: weights below 2**-9 in magnitude lose nothing more


def quantize(graph: Graph, cfg: MachineConfig, act_frac: int | None = None) -> Graph:
    """Set every tensor's ``frac`` and every Conv's ``wq``, ``w_frac``, ``bq`` and ``shift``.

    Returns ``graph`` itself (annotated in place). Raises :class:`CompileError` naming the layer when
    a layer cannot be quantised for ``cfg``."""
    frac = cfg.default_frac if act_frac is None else act_frac
    if not isinstance(frac, (int, np.integer)) or not 0 <= frac < cfg.data_bits:
        raise CompileError(f"activation format: frac must be an integer in 0..{cfg.data_bits - 1}, got {act_frac!r}")
    for t in graph.tensors.values():
        t.frac = int(frac)
    for cat in graph.concats:
        fracs = {graph.tensors[t].frac for t in cat.inputs}
        if len(fracs) != 1:
            raise CompileError(f"Concat '{cat.name}': its inputs have different fixed-point formats {sorted(fracs)}")
        graph.tensors[cat.output].frac = fracs.pop()
    for layer in graph.layers:
        if isinstance(layer, MaxPool):
            graph.tensors[layer.output].frac = graph.tensors[layer.input].frac
        elif isinstance(layer, AvgPool):
            graph.tensors[layer.output].frac = graph.tensors[layer.input].frac
            layer.mul, layer.shift = reciprocal(layer.kernel[0] * layer.kernel[1])
            if layer.count_pads is not None:   # one multiplier per divisor occurring at the borders
                t_in, t_out = graph.tensors[layer.input], graph.tensors[layer.output]
                counts = window_counts(layer, t_in.shape[1:], t_out.shape[1:])
                layer.muls = {int(n): reciprocal(int(n)) for n in np.unique(counts)}
        elif isinstance(layer, Conv):
            res_frac = graph.tensors[layer.residual].frac if layer.residual else None
            _quantize_conv(layer, graph.tensors[layer.input].frac, graph.tensors[layer.output].frac, cfg, res_frac)
        else:
            raise CompileError(f"layer '{getattr(layer, 'name', layer)}': unknown layer type {type(layer).__name__}")
    return graph


def _quantize_conv(layer: Conv, in_frac: int, out_frac: int, cfg: MachineConfig, res_frac: int | None = None) -> None:
    what = f"layer '{layer.name}' ({layer.kind}, nodes {', '.join(layer.nodes)})"
    cout, cin, kh, kw = layer.weight.shape
    terms = kh * kw * cin
    if terms > cfg.max_reduction:
        raise CompileError(f"{what}: its reduction has {kh}x{kw}x{cin} = {terms} terms, more than the "
                           f"{cfg.max_reduction} a {cfg.acc_bits}-bit accumulator sums without overflow")
    w_max = float(np.max(np.abs(layer.weight))) if layer.weight.size else 0.0
    if layer.edge and layer.weight.size:   # border pieces sum taps (compiler.lowering): bound those sums too
        w_max = max(w_max, float(np.max(np.abs(layer.weight).sum(axis=(2, 3)))))
    b_max = float(np.max(np.abs(layer.bias))) if layer.bias.size else 0.0
    try:
        w_frac = frac_for_range(w_max, bits=cfg.data_bits, max_frac=_MAX_WEIGHT_FRAC)
        # (a) the bias in the accumulator format: in_frac + w_frac <= bias_frac
        bias_frac = frac_for_range(b_max, bits=cfg.bias_bits, max_frac=in_frac + _MAX_WEIGHT_FRAC)
    except ValueError as e:
        raise CompileError(f"{what}: {e}") from None
    w_frac = min(w_frac, bias_frac - in_frac)
    # (b) shift = in_frac + w_frac - out_frac >= 0
    if in_frac + w_frac < out_frac:
        raise CompileError(f"{what}: no weight format fits: weights (max |w| {w_max:.4g}) and bias (max |b| "
                           f"{b_max:.4g}, {cfg.bias_bits} bits at {in_frac} + w_frac fractional bits) allow at most "
                           f"w_frac = {w_frac}, but the requantising shift {in_frac} + w_frac - {out_frac} must not "
                           f"be negative")
    # (c) a fused residual is shifted left into the accumulator format: res_shift >= 0
    if res_frac is not None and in_frac + w_frac < res_frac:
        raise CompileError(f"{what}: the residual's format (frac {res_frac}) is finer than the accumulator's "
                           f"({in_frac} + {w_frac}); the output stage can only shift the residual left")
    acc_frac = in_frac + w_frac
    layer.res_shift = int(acc_frac - res_frac) if res_frac is not None else None
    layer.w_frac = int(w_frac)
    layer.wq, _ = float_to_fixed(layer.weight, w_frac, bits=cfg.data_bits)
    layer.bq = np.rint(np.ldexp(layer.bias.astype(np.float64), acc_frac)).astype(np.int64)
    layer.shift = int(acc_frac - out_frac)
