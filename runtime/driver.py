"""The card driver: one call's images written to their cards, clusters and slots, the programs run
by the executor of the 'simulator' flag (in this process, in worker processes or on Ray cards),
the outputs read back and the statistics, saturation warnings and debug reports of the run.

Moved out of ``runtime/mdla.py`` (which keeps the API) unchanged; ``MDLA`` objects are passed in.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from arch.numerics import fixed_to_float, float_to_fixed
from compiler.driver import Compiled
from compiler.partition import Staged

from . import ray_cards, saturation, workers
from .errors import MDLAError
from .executors import FunctionalExecutor, get_executor
from .trace import after_run as write_traces

def _image(c: Compiled, arrays, k: int, n: int) -> np.ndarray:
    """Image n of input k of ``c`` as the (C, H, W) tensor its first layer reads."""
    lay = c.memmap.tensors[c.inputs[k].tensor]
    return arrays[k][n].reshape(lay.channels, lay.height, lay.width)


def _run_cards(first: "MDLA", jobs: list[tuple[Compiled, list[np.ndarray], int]], simulator: str | None):
    """One executor run per card of ``first``'s cards for DLA programs sharing them: every image of
    every job written to its card, cluster and slot, then read back. Returns (run statistics per
    card, per job the outputs per image, per job the input values saturated)."""
    cards = first._cards
    executor = get_executor(simulator or first._flags["simulator"])
    if getattr(first, "_trace", False) or any(o._flags["trace"] for o in _objects_on(cards) + [first]):
        if not hasattr(executor, "trace"):
            raise MDLAError(f"flag 'trace': the {executor.name} simulator records no timeline; use the "
                            f"functional or amaranth simulator")
        executor.trace = True
    if first._flags["vcd"]:
        if not hasattr(executor, "vcd"):
            raise MDLAError(f"flag 'vcd': the {executor.name} simulator writes no waveform; "
                            f"SetFlag('simulator', 'amaranth') to record one, or SetFlag('vcd', '')")
        executor.vcd = first._flags["vcd"]
    check = bool(first._flags["hazardcheck"])
    cfg = jobs[0][0].cfg
    programs = {cl: c.memmap.code_addr(cl) for c, _, _ in jobs for cl in c.parallel.clusters}
    nfpgas = jobs[0][0].parallel.nfpgas
    macs = sum(sum(l.macs for l in c.layers) * batch for c, _, batch in jobs)
    where = workers.plan(first._flags["workers"], isinstance(executor, FunctionalExecutor), nfpgas,
                         len(programs), macs // nfpgas)
    trace = bool(getattr(executor, "trace", False))
    if first._flags["workers"] == "ray":
        return _merge_cards(ray_cards.run_cards(first, jobs, executor, programs, check), jobs)

    def run_card(f: int):
        card = cards[f]
        outs, sat = {}, [0] * len(jobs)
        with card.lock:
            if where != "here":
                card.shared()       # before the inputs are written: the image moves to shared memory
            for j, (c, arrays, batch) in enumerate(jobs):
                mm, p = c.memmap, c.parallel
                for n in range(batch):
                    if p.slot(n)[0] != f:
                        continue
                    for k, i in enumerate(c.inputs):
                        lay = mm.tensors[i.tensor]
                        q, over = float_to_fixed(_image(c, arrays, k, n), lay.frac)
                        sat[j] += over
                        lay.write(card.memory, mm.tensor_addr(i.tensor, p.slot(n)[2]), cfg.lanes, q)
            stats = card.run(cfg, programs, executor, where, check_hazards=check, trace=trace,
                             helpers=workers.cluster_helpers(len(programs)),
                             timeout=workers.reply_timeout(macs // nfpgas))
            for j, (c, arrays, batch) in enumerate(jobs):
                mm, p = c.memmap, c.parallel
                for n in range(batch):
                    if p.slot(n)[0] == f:
                        outs[(j, n)] = [
                            fixed_to_float(mm.tensors[o.tensor].read(card.memory, mm.tensor_addr(o.tensor, p.slot(n)[2]),
                                                                     cfg.lanes), mm.tensors[o.tensor].frac)
                            .reshape(o.onnx_shape[1:]) for o in c.outputs]
        return stats, outs, sat

    # Cards in worker processes are driven from one thread each; the RTL executors run cards in
    # threads (an external simulator may use another core); the functional model here runs them
    # one after another (threads of one process would only contend for the GIL).
    if where == "cards":
        threads = nfpgas
    elif not isinstance(executor, FunctionalExecutor):
        threads = min(nfpgas, os.cpu_count() or 1)
    else:
        threads = 1
    if nfpgas > 1 and threads > 1:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mdla-card") as pool:
            per_card = list(pool.map(run_card, range(nfpgas)))
    else:
        per_card = [run_card(f) for f in range(nfpgas)]
    return _merge_cards(per_card, jobs)


def _merge_cards(per_card, jobs):
    """(run statistics per card, per job the outputs per image, per job the input values saturated)
    from each card's (statistics, {(job, image): outputs}, saturations per job)."""
    all_stats = [s for s, _, _ in per_card]
    merged = {key: value for _, outs, _ in per_card for key, value in outs.items()}
    results = [[merged[(j, n)] for n in range(batch)] for j, (_, _, batch) in enumerate(jobs)]
    sat = [sum(x[j] for _, _, x in per_card) for j in range(len(jobs))]
    return all_stats, results, sat


def _cycles_and_saturations(all_stats, clusters) -> tuple[int, int]:
    """Modelled cycles of ``clusters`` (on the slowest card) and the values they saturated."""
    mine = [cs for s in all_stats for cl, cs in s.clusters.items() if cl in clusters]
    return max(cs.cycles for cs in mine), sum(cs.saturations for cs in mine)


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
        stats, results, sat = _run_cards(obj, [(seg, seg_arrays, batch)], simulator)
        cycles, sat_dla = _cycles_and_saturations(stats, seg.parallel.clusters)
        totals["cycles"] += cycles
        totals["sat"] += sat[0] + sat_dla
        totals["in"] += sat[0]
        totals["segments"].append((seg, [(s.clusters[cl], cl) for s in stats for cl in seg.parallel.clusters
                                         if cl in s.clusters]))
        totals["by_stage"][k] = stats
        for e, outs in zip(env, results[0]):
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
    all_stats, results, sat_in = _run_cards(first, [(c, arrays, batch) for _, c, arrays, batch in prepared], simulator)
    outcomes = []
    for j, (obj, c, arrays, batch) in enumerate(prepared):
        cycles, sat = _cycles_and_saturations(all_stats, c.parallel.clusters)
        obj._last_stats = all_stats
        obj._hwcycles = cycles
        obj._saturations = sat + sat_in[j]
        per_output = [[results[j][n][k] for n in range(batch)] for k in range(len(c.outputs))]
        _report(obj, batch, [(s.clusters[cl], cl) for s in all_stats for cl in c.parallel.clusters if cl in s.clusters],
                sat_in[j])
        outcomes.append((obj._pack(obj._finish(per_output)), cycles))
    write_traces([obj for obj, *_ in prepared], all_stats)
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
