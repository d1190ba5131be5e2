"""Quantisation: annotate the graph IR with Q formats and integer parameters.

Decisions, and why:

* **Activations without calibration: one format for every tensor**, ``act_frac`` fractional bits
  (default ``cfg.default_frac``, Q8.8, the SDK's default bitfile).
* **Activations with calibration** (the SDK's variable fixed point, ``ranges`` from
  :func:`compiler.calibrate.calibrate`): each tensor gets the finest format (``frac`` in
  ``0..data_bits-1``) that holds its calibrated range times :data:`compiler.calibrate.HEADROOM`, subject to
  what the hardware needs:

  - a MaxPool's and an AvgPool's output has its input's format (a pure comparison, a plain average);
  - the inputs of a Concat and its output share one format (the producers write straight into the
    concatenation); such a group takes the coarsest format any member needs;
  - a Conv's requantising shift and a fused residual's left shift must not be negative, so a
    Conv's output (or its residual) whose format is finer than the accumulator's is made coarser.

  These only ever lower ``frac`` (coarser never saturates more), applied until nothing changes.
  A tensor whose calibrated range does not fit its final format with the headroom raises a
  :class:`SaturationWarning` naming the layer that produces it.
* **Weights: one format per layer, always** (with or without calibration), the largest ``w_frac``
  with which ``round(max|w| * 2**w_frac)``
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

import warnings

import numpy as np

from arch.machine import MachineConfig
from arch.numerics import float_to_fixed, frac_for_range, reciprocal

from .ir import AvgPool, CompileError, Conv, Graph, MaxPool

__all__ = ["quantize", "SaturationWarning"]

_MAX_WEIGHT_FRAC = 24   #: frac_for_range's default cap: weights below 2**-9 in magnitude lose nothing more


class SaturationWarning(UserWarning):
    """A layer's calibrated output range does not fit its fixed-point format with the headroom."""


def quantize(graph: Graph, cfg: MachineConfig, act_frac: int | None = None,
             ranges: dict[str, float] | None = None) -> Graph:
    """Set every tensor's ``frac`` and every Conv's ``wq``, ``w_frac``, ``bq`` and ``shift``.

    Without ``ranges`` every activation has ``act_frac`` fractional bits (default Q8.8); with
    ``ranges`` (calibrated max |value| per tensor) each tensor gets its own format (see the module
    docstring). Returns ``graph`` itself (annotated in place). Raises :class:`CompileError` naming
    the layer when a layer cannot be quantised for ``cfg``."""
    if ranges is not None:
        if act_frac is not None:
            raise CompileError("activation format: give either act_frac (one format) or calibrated ranges, not both")
        fracs = _calibrated_fracs(graph, cfg, ranges)
        for name, t in graph.tensors.items():
            t.frac = fracs[name]
    else:
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
        elif isinstance(layer, Conv):
            res_frac = graph.tensors[layer.residual].frac if layer.residual else None
            _quantize_conv(layer, graph.tensors[layer.input].frac, graph.tensors[layer.output].frac, cfg, res_frac)
        else:
            raise CompileError(f"layer '{getattr(layer, 'name', layer)}': unknown layer type {type(layer).__name__}")
    if ranges is not None:
        _warn_saturation(graph, cfg, ranges)
    return graph


def _what(layer: Conv) -> str:
    return f"layer '{layer.name}' ({layer.kind}, nodes {', '.join(layer.nodes)})"


def _weight_frac(layer: Conv, in_frac: int, cfg: MachineConfig) -> tuple[int, float, float]:
    """(largest w_frac that fits the weights and, with ``in_frac``, the bias; max |w|; max |b|)."""
    w_max = float(np.max(np.abs(layer.weight))) if layer.weight.size else 0.0
    b_max = float(np.max(np.abs(layer.bias))) if layer.bias.size else 0.0
    try:
        w_frac = frac_for_range(w_max, bits=cfg.data_bits, max_frac=_MAX_WEIGHT_FRAC)
        # (a) the bias in the accumulator format: in_frac + w_frac <= bias_frac
        bias_frac = frac_for_range(b_max, bits=cfg.bias_bits, max_frac=in_frac + _MAX_WEIGHT_FRAC)
    except ValueError as e:
        raise CompileError(f"{_what(layer)}: {e}") from None
    return min(w_frac, bias_frac - in_frac), w_max, b_max


def _calibrated_fracs(graph: Graph, cfg: MachineConfig, ranges: dict[str, float]) -> dict[str, int]:
    """Per-tensor formats from calibrated ranges, made consistent with what the layers need."""
    from .calibrate import HEADROOM
    top = cfg.data_bits - 1
    missing = sorted(set(graph.tensors) - set(ranges))
    if missing:
        raise CompileError(f"calibration: no range for tensor(s) {missing[:5]}")
    # tensors that must share one format: pooling input/output, concatenation inputs/output
    group = {t: t for t in graph.tensors}

    def find(t: str) -> str:
        while group[t] != t:
            group[t] = group[group[t]]
            t = group[t]
        return t

    def union(a: str, b: str) -> None:
        group[find(a)] = find(b)

    for layer in graph.layers:
        if isinstance(layer, (MaxPool, AvgPool)):
            union(layer.input, layer.output)
    for cat in graph.concats:
        for t in cat.inputs:
            union(t, cat.output)
    frac: dict[str, int] = {}
    for t, r in ((t, ranges[t]) for t in graph.tensors):
        if not np.isfinite(r):
            raise CompileError(f"calibration: tensor {t!r} has a non-finite value on the samples")
        f = max(0, frac_for_range(r * HEADROOM, bits=cfg.data_bits, max_frac=top))
        root = find(t)
        frac[root] = min(frac.get(root, top), f)
    # the shifts must not be negative: make outputs (and residuals) no finer than the accumulator
    w_fracs: dict[tuple[int, int], int] = {}     # (layer, in_frac) -> w_frac; weights are scanned once each

    def w_frac_of(layer: Conv, in_frac: int) -> int:
        key = (id(layer), in_frac)
        if key not in w_fracs:
            w_fracs[key] = _weight_frac(layer, in_frac, cfg)[0]
        return w_fracs[key]
    changed = True
    while changed:
        changed = False
        for layer in graph.layers:
            if not isinstance(layer, Conv):
                continue
            in_frac = frac[find(layer.input)]
            acc = in_frac + w_frac_of(layer, in_frac)
            for t in [layer.output] + ([layer.residual] if layer.residual else []):
                root = find(t)
                if frac[root] > acc >= 0:
                    frac[root] = acc
                    changed = True
    return {t: frac[find(t)] for t in graph.tensors}


def _warn_saturation(graph: Graph, cfg: MachineConfig, ranges: dict[str, float]) -> None:
    """A SaturationWarning per tensor whose calibrated range (with headroom) exceeds its format."""
    from .calibrate import HEADROOM
    limit = (1 << (cfg.data_bits - 1)) - 1
    producers = {l.output: l for l in graph.layers}
    for name, t in graph.tensors.items():
        r = ranges[name]
        top = limit / 2.0 ** t.frac
        # the rounding test of frac_for_range, so that a tensor given its own format never warns
        if round(r * HEADROOM * 2.0 ** t.frac) <= limit or name not in producers and name not in {i.tensor for i in graph.inputs}:
            continue      # concatenations are reported through their inputs
        layer = producers.get(name)
        who = f"input {name!r}" if layer is None else (
            _what(layer) if isinstance(layer, Conv) else f"layer '{layer.name}' ({type(layer).__name__})")
        over = round(r * 2.0 ** t.frac) > limit
        how = "saturates" if over else "is likely to saturate"
        warnings.warn(f"{who} {how}: its calibrated range max|x| = {r:.4g} "
                      f"{'exceeds' if over else 'is within a factor ' + format(HEADROOM, 'g') + ' of'} the "
                      f"largest value {top:.4g} of its format Q{cfg.data_bits - t.frac}.{t.frac} (output tensor {name!r})",
                      SaturationWarning, stacklevel=3)


def _quantize_conv(layer: Conv, in_frac: int, out_frac: int, cfg: MachineConfig, res_frac: int | None = None) -> None:
    what = _what(layer)
    cout, cin, kh, kw = layer.weight.shape
    terms = kh * kw * cin
    if terms > cfg.max_reduction:
        raise CompileError(f"{what}: its reduction has {kh}x{kw}x{cin} = {terms} terms, more than the "
                           f"{cfg.max_reduction} a {cfg.acc_bits}-bit accumulator sums without overflow")
    w_frac, w_max, b_max = _weight_frac(layer, in_frac, cfg)
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
