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
  :class:`SaturationWarning` naming the layer that produces it. ``ranges`` may leave tensors out
  when ``missing_frac`` is given (a quantised model's range hints covering part of the graph,
  :func:`compiler.quant_import.activation_ranges`): those start from ``missing_frac`` (Q8.8) and
  take part in the constraints like the others.
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
* **Activations choose their output format.** SIGMOID and TANH: the shift brings the accumulator
  to the table's input format Q4.11 and the output is Q0.15 (``arch.numerics.LUT_*_FRAC``). CLIP:
  the finest format (at most Q0.15) in which its bounds fit, so ReLU6's output is Q3.12 (with one
  bound missing, no finer than the tensor's format). LEAKY and RELU keep the tensor's format
  (``act_frac``, or the calibrated one). A Concat's inputs must still share one format
  (CompileError otherwise).
* **A fused Mul** (``res_op == 'mul'``): the activated value keeps the activation's format, the
  product with the second operand has ``act + residual`` fractional bits and is shifted right by
  ``res_shift`` into the tensor's format (CompileError if that would be a left shift).
* A reduction longer than ``cfg.max_reduction`` terms (``kh * kw * cin``) could wrap the
  accumulator, which would make the result depend on the hardware's summation order: rejected.
"""
from __future__ import annotations

import warnings

import numpy as np

from arch.machine import MachineConfig
from arch.numerics import (ACT_MAX_FRAC, ACT_NAMES, DATA_MAX, DATA_MIN, LUT_IN_FRAC, LUT_OUT_FRAC, act_fields,
                           clip_fields, float_to_fixed, frac_for_range, leaky_fields, reciprocal)

from .ir import AvgPool, CompileError, Conv, Graph, MaxPool
from .lowering import window_counts

__all__ = ["quantize", "SaturationWarning"]

_MAX_WEIGHT_FRAC = 24   #: frac_for_range's default cap: weights below 2**-9 in magnitude lose nothing more


class SaturationWarning(UserWarning):
    """A layer's calibrated output range does not fit its fixed-point format with the headroom."""


def quantize(graph: Graph, cfg: MachineConfig, act_frac: int | None = None,
             ranges: dict[str, float] | None = None, missing_frac: int | None = None) -> Graph:
    """Set every tensor's ``frac`` and every Conv's ``wq``, ``w_frac``, ``bq`` and ``shift``.

    Without ``ranges`` every activation has ``act_frac`` fractional bits (default Q8.8); with
    ``ranges`` (calibrated max |value| per tensor) each tensor gets its own format (see the module
    docstring). ``missing_frac``: the format of tensors ``ranges`` has no range for (a quantised
    model's hints covering some tensors only); None: every tensor needs one. Returns ``graph`` itself (annotated in place). Raises :class:`CompileError` naming
    the layer when a layer cannot be quantised for ``cfg``."""
    gated: dict[str, int] = {}     # layer name -> calibrated format of a fused Mul's first factor
    if ranges is not None:
        if act_frac is not None:
            raise CompileError("activation format: give either act_frac (one format) or calibrated ranges, not both")
        fracs, gated = _calibrated_fracs(graph, cfg, ranges, missing_frac)
        for name, t in graph.tensors.items():
            t.frac = fracs[name]
    else:
        frac = cfg.default_frac if act_frac is None else act_frac
        if not isinstance(frac, (int, np.integer)) or not 0 <= frac < cfg.data_bits:
            raise CompileError(f"activation format: frac must be an integer in 0..{cfg.data_bits - 1}, got {act_frac!r}")
        for t in graph.tensors.values():
            t.frac = int(frac)
    # A Concat's format is settled once every input's producer has been quantised (activations may
    # change a layer's output format), before any layer reads the Concat's output.
    pending = list(graph.concats)
    done = {gi.tensor for gi in graph.inputs}
    caps = _concat_formats(graph)

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
            out = graph.tensors[layer.output]
            out.frac = _quantize_conv(layer, graph.tensors[layer.input].frac, caps.get(layer.output, out.frac), cfg,
                                      res_frac, gated.get(layer.name), layer.output in caps)
        else:
            raise CompileError(f"layer '{getattr(layer, 'name', layer)}': unknown layer type {type(layer).__name__}")
        done.add(layer.output)
    settle()
    if ranges is not None:
        _warn_saturation(graph, cfg, ranges)
    return graph


def _concat_formats(graph: Graph) -> dict[str, int]:
    """The format of every tensor in a Concat group (a Concat's inputs and output, transitively):
    the coarsest of the formats its members would have on their own, so that no member saturates;
    a producer whose activation would choose a finer format (a SIGMOID's Q0.15, a CLIP's) writes
    this one instead (requantised by its output stage)."""
    if not graph.concats:
        return {}
    producers = {l.output: l for l in graph.layers}
    cat_of = {c.output: c for c in graph.concats}
    memo: dict[str, int] = {}

    def natural(t: str) -> int:
        if t not in memo:
            layer, frac = producers.get(t), graph.tensors[t].frac
            if t in cat_of:
                memo[t] = min(natural(i) for i in cat_of[t].inputs)
            elif isinstance(layer, Conv):
                memo[t] = frac if layer.residual and layer.res_op == "mul" else act_format(layer, frac)[1]
            elif isinstance(layer, (MaxPool, AvgPool)):
                memo[t] = natural(layer.input)
            else:
                memo[t] = frac
        return memo[t]

    group = {t: t for c in graph.concats for t in [c.output, *c.inputs]}

    def find(t: str) -> str:
        while group[t] != t:
            t = group[t]
        return t
    for c in graph.concats:
        for t in c.inputs:
            group[find(t)] = find(c.output)
    best: dict[str, int] = {}
    for t in group:
        best[find(t)] = min(best.get(find(t), natural(t)), natural(t))
    return {t: best[find(t)] for t in group}


def _what(layer: Conv) -> str:
    return f"layer '{layer.name}' ({layer.kind}, nodes {', '.join(layer.nodes)})"


def _weight_frac(layer: Conv, in_frac: int, cfg: MachineConfig) -> tuple[int, float, float]:
    """(largest w_frac that fits the weights and, with ``in_frac``, the bias; max |w|; max |b|)."""
    w_max = float(np.max(np.abs(layer.weight))) if layer.weight.size else 0.0
    if layer.edge and layer.weight.size:   # border pieces sum taps (compiler.lowering): bound those sums too
        w_max = max(w_max, float(np.max(np.abs(layer.weight).sum(axis=(2, 3)))))
    b_max = float(np.max(np.abs(layer.bias))) if layer.bias.size else 0.0
    try:
        w_frac = frac_for_range(w_max, bits=cfg.data_bits, max_frac=_MAX_WEIGHT_FRAC)
        # (a) the bias in the accumulator format: in_frac + w_frac <= bias_frac
        bias_frac = frac_for_range(b_max, bits=cfg.bias_bits, max_frac=in_frac + _MAX_WEIGHT_FRAC)
    except ValueError as e:
        raise CompileError(f"{_what(layer)}: {e}") from None
    return min(w_frac, bias_frac - in_frac), w_max, b_max


def _calibrated_fracs(graph: Graph, cfg: MachineConfig, ranges: dict[str, float], missing_frac: int | None = None
                      ) -> tuple[dict[str, int], dict[str, int]]:
    """Per-tensor formats from calibrated ranges, made consistent with what the layers need, and
    per layer with a fused Mul the format of its first factor."""
    from sim.golden import GATED, PRE

    from .calibrate import HEADROOM
    top = cfg.data_bits - 1
    missing = sorted(set(graph.tensors) - set(ranges))
    if missing and missing_frac is None:
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

    def fits(r: float, what: str) -> int:
        if not np.isfinite(r):
            raise CompileError(f"calibration: {what} has a non-finite value on the samples")
        return max(0, frac_for_range(r * HEADROOM, bits=cfg.data_bits, max_frac=top))
    for t in graph.tensors:
        root = find(t)
        f = fits(ranges[t], f"tensor {t!r}") if t in ranges else int(missing_frac)
        frac[root] = min(frac.get(root, top), f)
    # fused intermediates: the value before the activation is in the output's format (where the
    # activation keeps it), and a fused Mul's first factor in a format of its own
    gated: dict[str, int] = {}
    for layer in graph.layers:
        if not isinstance(layer, Conv):
            continue
        pre = ranges.get(layer.output + PRE)
        f_pre = fits(pre, f"the value before layer '{layer.name}''s activation") if pre is not None else top
        if layer.residual and layer.res_op == "mul":
            g = ranges.get(layer.output + GATED)
            gated[layer.name] = min(f_pre, fits(g, f"layer '{layer.name}''s first factor") if g is not None else top)
        elif pre is not None:
            root = find(layer.output)
            frac[root] = min(frac[root], f_pre)
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
            if layer.name in gated and gated[layer.name] > acc >= 0:
                gated[layer.name] = acc
            for t in [layer.output] + ([layer.residual] if layer.residual and layer.res_op == "add" else []):
                root = find(t)
                if frac[root] > acc >= 0 and (t != layer.output or layer.name not in gated):
                    frac[root] = acc
                    changed = True
    return {t: frac[find(t)] for t in graph.tensors}, gated


def _bounded(layer, producers: dict) -> bool:
    """Whether a layer's output format holds every value it can produce by construction (a Sigmoid,
    a Tanh, a Clip with both bounds, not followed by a fused Mul; a MaxPool or AvgPool of such an
    output, which keeps its input's format and stays within its input's range): its range needs no
    check. (A pool after a Clip whose bound only just fits the format, as a quantised model's range
    hint makes it, would otherwise warn although it cannot exceed the bound.)"""
    for _ in range(len(producers) + 1):
        if not isinstance(layer, (MaxPool, AvgPool)):
            break
        layer = producers.get(layer.input)
    return (isinstance(layer, Conv) and not (layer.residual and layer.res_op == "mul")
            and (layer.act in ("sigmoid", "tanh") or (layer.act == "clip" and None not in layer.clip)))


def _warn_saturation(graph: Graph, cfg: MachineConfig, ranges: dict[str, float]) -> None:
    """A SaturationWarning per tensor, and per fused intermediate (the value before a Conv's
    activation, a fused Mul's first factor), whose calibrated range (with headroom) exceeds its
    format. Bounded activations' outputs are not checked: they cannot exceed their format."""
    from sim.golden import GATED, PRE

    from .calibrate import HEADROOM
    limit = (1 << (cfg.data_bits - 1)) - 1
    producers = {l.output: l for l in graph.layers}
    inputs = {i.tensor for i in graph.inputs}
    checks = []       # (range, frac, who, what)
    for name, t in graph.tensors.items():
        if name not in producers and name not in inputs or _bounded(producers.get(name), producers):
            continue      # concatenations are reported through their inputs
        if name not in ranges:
            continue      # no range (a partial set of hints): its format is the default one
        layer = producers.get(name)
        who = f"input {name!r}" if layer is None else (
            _what(layer) if isinstance(layer, Conv) else f"layer '{layer.name}' ({type(layer).__name__})")
        checks.append((ranges[name], t.frac, who, f"(output tensor {name!r})"))
    for layer in graph.layers:
        if not isinstance(layer, Conv) or layer.shift is None:
            continue
        target = graph.tensors[layer.input].frac + layer.w_frac - layer.shift     # the shift's format
        if ranges.get(layer.output + PRE) is not None:
            checks.append((ranges[layer.output + PRE], target, _what(layer), "(the value before its activation)"))
        if ranges.get(layer.output + GATED) is not None and layer.act not in ("sigmoid", "tanh", "clip"):
            checks.append((ranges[layer.output + GATED], target, _what(layer), "(its value before the fused Mul)"))
    for r, frac, who, what in checks:
        # the rounding test of frac_for_range, so that a tensor given its own format never warns
        if round(r * HEADROOM * 2.0 ** frac) <= limit:
            continue
        top = limit / 2.0 ** frac
        over = round(r * 2.0 ** frac) > limit
        how = "saturates" if over else "is likely to saturate"
        warnings.warn(f"{who} {how}: its calibrated range max|x| = {r:.4g} "
                      f"{'exceeds' if over else 'is within a factor ' + format(HEADROOM, 'g') + ' of'} the "
                      f"largest value {top:.4g} of its format Q{cfg.data_bits - frac}.{frac} {what}",
                      SaturationWarning, stacklevel=3)


def act_format(layer: Conv, act_frac: int) -> tuple[int, int]:
    """(frac the requantising shift targets, frac of the activation's output) of a Conv's activation,
    for an output tensor whose format would otherwise have ``act_frac`` fractional bits."""
    if layer.act in ("sigmoid", "tanh"):
        return LUT_IN_FRAC, LUT_OUT_FRAC
    if layer.act in ("hardswish", "silu", "mish"):     # x and the result share the format (0..ACT_MAX_FRAC)
        f = min(max(act_frac, 0), ACT_MAX_FRAC)
        return f, f
    if layer.act == "clip":
        bounds = [abs(v) for v in layer.clip if v is not None]
        f = frac_for_range(max(bounds), max_frac=LUT_OUT_FRAC) if bounds else act_frac
        if len(bounds) < 2:     # unbounded on one side: no finer than the tensor's format
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
    if layer.act in ("sigmoid", "tanh", "hardswish", "silu", "mish"):
        return act_fields(ACT_NAMES.index(layer.act), f)
    return 0, 0


def _quantize_conv(layer: Conv, in_frac: int, act_frac: int, cfg: MachineConfig, res_frac: int | None = None,
                   gated_frac: int | None = None, shared: bool = False) -> int:
    """Quantise one Conv whose input has ``in_frac`` fractional bits and whose output tensor would
    have ``act_frac``; returns its output's frac (the activation may choose another, unless the
    output is ``shared`` with other tensors, a Concat's, whose format ``act_frac`` it then writes).
    ``gated_frac``: the calibrated format of a fused Mul's first factor (else the output's)."""
    what = _what(layer)
    mul = res_frac is not None and layer.res_op == "mul"
    out_frac, a_frac = act_format(layer, gated_frac if mul and gated_frac is not None else act_frac)
    if shared and not mul and a_frac > act_frac:      # coarser, to the Concat group's format
        out_frac, a_frac = (out_frac if layer.act in ("sigmoid", "tanh") else act_frac), act_frac
    try:
        layer.act_a, layer.act_b = _act_fields(layer, a_frac)
    except ValueError as e:
        raise CompileError(f"{what}: {e}") from None
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
