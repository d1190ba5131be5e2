"""The card driver: one call's images written to their cards, clusters and slots, the programs run
by the executor of the 'simulator' flag (in this process, or on Ray card actors),
the outputs read back and the statistics, saturation warnings and debug reports of the run.

Moved out of ``runtime/mdla.py`` (which keeps the API); ``MDLA`` objects are passed in. How a card
runs is the executor's (``runtime.executors``): this module builds it from the flags.
"""
from __future__ import annotations

import sys

import numpy as np

from compiler.driver import Compiled
from compiler.partition import Staged

from . import ray_cards, saturation
from .errors import MDLAError
from .executors import Executor, RunResult, executor_class, image, merge_cards, program_addresses
from .trace import after_run as write_traces

def _image(c: Compiled, arrays, k: int, n: int) -> np.ndarray:
    """Image n of input k of ``c`` as the (C, H, W) tensor its first layer reads."""
    return image(c, arrays, k, n)


def executor_for(first: "MDLA", simulator: str | None = None) -> Executor:
    """The executor of the 'simulator' flag (or ``simulator``) built with the options the flags of
    ``first`` (and the objects sharing its cards) ask for; a flag the executor cannot honour is
    refused naming the flag and the remedy."""
    cls = executor_class(simulator or first._flags["simulator"])
    options = {"check_hazards": bool(first._flags["hazardcheck"])}
    if getattr(first, "_trace", False) or any(o._flags["trace"] for o in _objects_on(first._cards) + [first]):
        if "trace" not in cls.OPTIONS:
            raise MDLAError(f"flag 'trace': the {cls.name} simulator records no timeline; use the "
                            f"functional or amaranth simulator")
        options["trace"] = True
    if first._flags["vcd"]:
        if "vcd" not in cls.OPTIONS:
            raise MDLAError(f"flag 'vcd': the {cls.name} simulator writes no waveform; "
                            f"SetFlag('simulator', 'amaranth') to record one, or SetFlag('vcd', '')")
        options["vcd"] = first._flags["vcd"]
    return cls(**options)


def _run_cards(first: "MDLA", jobs: list[tuple[Compiled, list[np.ndarray], int]], simulator: str | None) -> RunResult:
    """One executor run per card of ``first``'s cards for DLA programs sharing them: every image of
    every job written to its card, cluster and slot, then read back (``Executor.execute``, or the
    card actors with workers='ray')."""
    executor = executor_for(first, simulator)
    if first._flags["workers"] == "ray":
        return merge_cards(ray_cards.run_cards(first, jobs, executor, program_addresses(jobs),
                                               executor.check_hazards), jobs)
    return executor.execute(first._cards, jobs)


def _report(obj: "MDLA", batch: int, cluster_stats: list | None = None, input_sat: int = 0,
            segments: list | None = None) -> None:
    """SaturationWarnings and the counts per layer (runtime.saturation; ``segments``: (compiled,
    cluster_stats) per DLA stage, else the object's model with ``cluster_stats``), debug 'w'
    (saturations: per layer when the executor counts them per instruction) and 'b'."""
    if segments is None:
        segments = [(obj._compiled, cluster_stats)] if cluster_stats is not None else []
    in_values = batch * sum(int(np.prod(i.onnx_shape)) for seg, _ in segments for i in seg.inputs)
    obj._layer_saturations = saturation.warn(segments, batch, input_sat, in_values)
    dbg = obj._flags["debug"]
    if "w" in dbg and cluster_stats is not None:
        obj._report_saturations(obj._saturations, cluster_stats, input_sat)
    elif "w" in dbg and obj._saturations:
        print(f"warning: {obj._saturations} values saturated to the 16-bit range during this run", file=sys.stderr)
    if "b" in dbg:
        obj._print_profile(batch)


def _run_staged(obj: "MDLA", images, simulator: str | None = None) -> tuple[object, int]:
    """One call of a model with host stages: the stages in order, each DLA stage one run of the
    cards over all the call's images. Modelled cycles: the sum of the DLA stages' (host time is
    not modelled)."""
    c = obj._need()
    if c.whole:                                 # no DLA stage: the host runs the model as given
        obj._last_stage_stats, obj._last_stats, obj._hwcycles, obj._saturations = {}, [], 0, 0
        return c.run_whole(images), 0
    arrays, batch = obj._inputs(images, c)
    totals = {"cycles": 0, "sat": 0, "by_stage": {}, "in": 0, "segments": []}

    def dla(k, seg, env):
        seg_arrays = [np.concatenate([e[i.name] for e in env]).astype(np.float32, copy=False) for i in seg.inputs]
        run = _run_cards(obj, [(seg, seg_arrays, batch)], simulator)
        clusters = seg.parallel.clusters
        totals["cycles"] += run.cycles(clusters)
        totals["sat"] += run.input_saturations[0] + run.saturations(clusters)
        totals["in"] += run.input_saturations[0]
        totals["segments"].append((seg, run.cluster_stats(clusters)))
        totals["by_stage"][k] = run.stats
        for e, outs in zip(env, run.outputs[0]):
            for o, v in zip(seg.outputs, outs):
                e[o.name] = v[None]

    outputs = obj._stages(c, arrays, batch, dla)
    obj._last_stage_stats = totals["by_stage"]       #: stage index -> that DLA stage's run statistics
    obj._last_stats = [s for stats in obj._last_stage_stats.values() for s in stats]
    write_traces([obj])
    obj._hwcycles = totals["cycles"]
    obj._saturations = totals["sat"]
    _report(obj, batch, input_sat=totals["in"], segments=totals["segments"])
    return obj._pack(outputs), totals["cycles"]


def _run_joint(calls: list[tuple["MDLA", object]], simulator: str | None = None) -> list[tuple[object, int]]:
    """Run calls of objects that share cards (one object, or models linked on disjoint clusters)
    in one run per card: every image to its card, cluster and slot. Returns each call's (results,
    modelled cycles); an object's cycles are those of its own clusters on its slowest card. A model
    with host stages runs alone (its DLA stages wait for the host stages between them)."""
    if any(isinstance(obj._need(), Staged) for obj, _ in calls):
        return [_run_staged(obj, images, simulator) if isinstance(obj._compiled, Staged)
                else _run_joint([(obj, images)], simulator)[0] for obj, images in calls]
    first = calls[0][0]
    prepared = []
    for obj, images in calls:
        c = obj._need()
        arrays, batch = obj._inputs(images, c)
        prepared.append((obj, c, arrays, batch))
    run = _run_cards(first, [(c, arrays, batch) for _, c, arrays, batch in prepared], simulator)
    outcomes = []
    for j, (obj, c, arrays, batch) in enumerate(prepared):
        cycles = run.cycles(c.parallel.clusters)
        obj._last_stats = run.stats
        obj._hwcycles = cycles
        obj._saturations = run.saturations(c.parallel.clusters) + run.input_saturations[j]
        per_output = [[run.outputs[j][n][k] for n in range(batch)] for k in range(len(c.outputs))]
        _report(obj, batch, run.cluster_stats(c.parallel.clusters), run.input_saturations[j])
        outcomes.append((obj._pack(obj._finish(per_output)), cycles))
    write_traces([obj for obj, *_ in prepared], run.stats)
    return outcomes


def _objects_on(cards) -> list["MDLA"]:
    """The live objects with a model resident on any of ``cards``."""
    objs = []
    for card in cards:
        for owner in card.owners:
            obj = owner.ref()
            if obj is not None and obj._compiled is not None and obj not in objs:
                objs.append(obj)
    return objs
