"""Saturation after a Run: counted per layer, and a warning where it makes the results doubtful.

The output stage clips a value to the 16-bit range only where the clip changes the result
(:func:`arch.numerics.saturation_counts`: a clip that ReLU, a bounded Clip, Sigmoid or Tanh absorbs
is not counted), and the functional model counts clips per instruction, so a Run's saturations are
known per layer. A layer **warns** (:class:`SaturationWarning`, once per layer and Run) when the
values it clipped are at least :data:`WARN_FRACTION` of the values it wrote in the Run (all images):
one value in a thousand. Below that a clip is an outlier whose effect on the SDK's mean error is
below 0.1 % of the range; above it the layer's format is too small for its values, which is what
calibration (``Compile(model, samples=[...])``) fixes. The conversion of the inputs to fixed point
is checked the same way (inputs of 0..255 in Q8.8, for instance).

``GetInfo('saturations')`` keeps the total of the last Run, ``GetInfo('layer_saturations')`` the
counts per layer (layer name -> values clipped; ``'inputs'`` for the input conversion).
"""
from __future__ import annotations

import warnings

import numpy as np

from compiler.quantize import SaturationWarning

__all__ = ["WARN_FRACTION", "SaturationWarning", "per_layer", "warn"]

#: a layer warns when it clipped at least this fraction of the values it wrote in a Run
WARN_FRACTION = 1e-3


def per_layer(compiled, cluster_stats) -> dict[int | None, int]:
    """Values clipped per index into ``compiled.layers`` (None: outside any layer's code), from
    ``(ClusterStats, cluster)`` pairs whose executor counts saturations per instruction."""
    counts: dict[int | None, int] = {}
    for cs, cl in cluster_stats:
        for pc, n in cs.saturations_by_pc.items():
            k = compiled.layer_at(cl, pc)
            counts[k] = counts.get(k, 0) + n
    return counts


def _written(compiled, k: int) -> int | None:
    """Values layer ``k`` writes per image (None when the compiled model keeps no graph)."""
    g = compiled.graph
    if g is None:
        return None
    name = compiled.layers[k].name
    for layer in g.layers:
        if layer.name == name:
            return int(np.prod(g.tensors[layer.output].shape))
    return None


def warn(segments, images: int, input_sat: int = 0, input_values: int = 0) -> dict[str, int]:
    """Warn for each layer (and the inputs) over :data:`WARN_FRACTION`; return the counts by name.

    ``segments``: ``(compiled, cluster_stats)`` per DLA program set that ran (one, or one per
    stage of a model with host stages); ``images``: images in the Run."""
    result: dict[str, int] = {}
    for compiled, cluster_stats in segments:
        for k, n in per_layer(compiled, cluster_stats).items():
            if k is None:
                result["(outside any layer)"] = result.get("(outside any layer)", 0) + n
                continue
            lc = compiled.layers[k]
            result[lc.name] = result.get(lc.name, 0) + n
            size = _written(compiled, k)
            total = None if size is None else size * images
            if total is None or n >= WARN_FRACTION * total:
                share = "" if total is None else f" of the {total} it wrote ({100.0 * n / total:.2g} %)"
                warnings.warn(f"layer '{lc.name}' ({lc.kind}) saturated {n} values{share} in this run: its "
                              f"fixed-point format cannot hold them, so its results are wrong there. Remedy: "
                              f"calibrate the formats on representative inputs, Compile(model, samples=[...])",
                              SaturationWarning, stacklevel=4)
    if input_sat:
        result["inputs"] = input_sat
        if input_sat >= WARN_FRACTION * max(input_values, 1):
            warnings.warn(f"the inputs: {input_sat} of {input_values} values saturated converting them to fixed point "
                          f"in this run (their range exceeds the input's format). Remedy: calibrate with inputs like "
                          f"these, Compile(model, samples=[...]), which gives the input a format that holds them",
                          SaturationWarning, stacklevel=4)
    return result
