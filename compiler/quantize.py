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
* **Activations choose their output format.** SIGMOID and TANH: the shift brings the accumulator
  to the table's input format Q4.11 and the output is Q0.15 (``arch.numerics.LUT_*_FRAC``). CLIP:
  the finest format (at most Q0.15) in which its bounds fit, so ReLU6's output is Q3.12 (with one
  bound missing, no finer than ``act_frac``). LEAKY and RELU keep ``act_frac``. A Concat's inputs
  must still share one format (CompileError otherwise).
* **A fused Mul** (``res_op == 'mul'``): the activated value keeps the activation's format, the
  product with the second operand has ``act + residual`` fractional bits and is shifted right by
  ``res_shift`` into ``act_frac`` (CompileError if that would be a left shift).
* A reduction longer than ``cfg.max_reduction`` terms (``kh * kw * cin``) could wrap the
  accumulator, which would make the result depend on the hardware's summation order: rejected.
"""
from __future__ import annotations

import numpy as np

from arch.machine import MachineConfig
from arch.numerics import (DATA_MAX, DATA_MIN, LUT_IN_FRAC, LUT_OUT_FRAC, clip_fields, float_to_fixed,
                           frac_for_range, leaky_fields, reciprocal)

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
    # A Concat's format is settled once every input's producer has been quantised (activations may
    # change a layer's output format), before any layer reads the Concat's output.
    pending = list(graph.concats)
    done = {gi.tensor for gi in graph.inputs}

    def settle():
        for cat in list(pending):
            if all(t in done for t in cat.inputs):
                fracs = {graph.tensors[t].frac for t in cat.inputs}
                if len(fracs) != 1:
                    raise CompileError(f"Concat '{cat.name}': its inputs have different fixed-point formats "
                                       f"{sorted(fracs)}")
                graph.tensors[cat.output].frac = fracs.pop()
                pending.remove(cat)
                done.add(cat.output)

    for layer in graph.layers:
        settle()
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
            graph.tensors[layer.output].frac = _quantize_conv(layer, graph.tensors[layer.input].frac, int(frac),
                                                              cfg, res_frac)
        else:
            raise CompileError(f"layer '{getattr(layer, 'name', layer)}': unknown layer type {type(layer).__name__}")
        done.add(layer.output)
    settle()
    return graph


def act_format(layer: Conv, act_frac: int) -> tuple[int, int]:
    """(frac the requantising shift targets, frac of the activation's output) of a Conv's activation."""
    if layer.act in ("sigmoid", "tanh"):
        return LUT_IN_FRAC, LUT_OUT_FRAC
    if layer.act == "clip":
        bounds = [abs(v) for v in layer.clip if v is not None]
        f = frac_for_range(max(bounds), max_frac=LUT_OUT_FRAC) if bounds else act_frac
        if len(bounds) < 2:     # unbounded on one side: no finer than the default format
            f = min(f, act_frac)
        return f, f
    return act_frac, act_frac


def _act_fields(layer: Conv, f: int) -> tuple[int, int]:
    if layer.act == "leaky":
        return leaky_fields(layer.alpha)
    if layer.act == "clip":
        lo, hi = ((DATA_MIN if v is None else int(np.clip(np.rint(v * 2.0 ** f), DATA_MIN, DATA_MAX)))
                  for v in layer.clip)
        return clip_fields(lo, hi if layer.clip[1] is not None else DATA_MAX)
    return 0, 0


def _quantize_conv(layer: Conv, in_frac: int, act_frac: int, cfg: MachineConfig, res_frac: int | None = None) -> int:
    """Quantise one Conv whose input has ``in_frac`` fractional bits; returns its output's frac."""
    what = f"layer '{layer.name}' ({layer.kind}, nodes {', '.join(layer.nodes)})"
    out_frac, a_frac = act_format(layer, act_frac)     # out_frac: the frac the shift targets
    mul = res_frac is not None and layer.res_op == "mul"
    try:
        layer.act_a, layer.act_b = _act_fields(layer, a_frac)
    except ValueError as e:
        raise CompileError(f"{what}: {e}") from None
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
    if res_frac is not None and not mul and in_frac + w_frac < res_frac:
        raise CompileError(f"{what}: the residual's format (frac {res_frac}) is finer than the accumulator's "
                           f"({in_frac} + {w_frac}); the output stage can only shift the residual left")
    acc_frac = in_frac + w_frac
    result_frac = a_frac
    if mul:   # (d) the product (a_frac + res_frac) is shifted right into act_frac
        result_frac = act_frac
        if a_frac + res_frac < act_frac:
            raise CompileError(f"{what}: the fused Mul's product (frac {a_frac} + {res_frac}) is coarser than "
                               f"the output format (frac {act_frac}); the output stage can only shift it right")
        layer.res_shift = int(a_frac + res_frac - act_frac)
    else:
        layer.res_shift = int(acc_frac - res_frac) if res_frac is not None else None
    layer.w_frac = int(w_frac)
    layer.wq, _ = float_to_fixed(layer.weight, w_frac, bits=cfg.data_bits)
    layer.bq = np.rint(np.ldexp(layer.bias.astype(np.float64), acc_frac)).astype(np.int64)
    layer.shift = int(acc_frac - out_frac)
    return int(result_frac)
