"""What the SDK flags and debug letters add around one run of the cards, kept apart from the card
driver: ``joint(run_joint, calls, simulator)`` wraps the driver's ``_run_joint`` for the calls of
``MDLA._run_call`` (Run, Run_sw) and ``MDLA._execute_head`` (PutInput/GetResult).

Before the run: ``dumpdir`` writes each call's inputs as the run writes them to card memory; debug
``t``/``T`` and ``breaklayer=2`` turn on the executor's instruction timeline. After it: the debug
letters that print per run (``S d t T``, breaklayer=2's layer cycles), then each call's results as
``breaklayer=1`` (every layer's output, read from card memory) or ``no_rearrange`` (the DLA's layout,
raw int16) ask."""
from __future__ import annotations

from . import debug, io_formats


def joint(run_joint, calls, simulator=None):
    objs = [obj for obj, _ in calls]
    for obj, images in calls:
        c = obj._need()
        if obj._flags["dumpdir"] and not hasattr(c, "stages") and images is not None:
            arrays, batch = obj._inputs(images, c)
            io_formats.dump_inputs(obj, c, arrays, batch)
    kept = [getattr(obj, "_trace", False) for obj in objs]
    timeline = any(debug.wants_timeline(obj) for obj in objs)     # one run of the cards serves them all
    for obj, t in zip(objs, kept):
        obj._trace = t or timeline
    try:
        outcomes = run_joint(calls, simulator)
    finally:
        for obj, t in zip(objs, kept):
            obj._trace = t
    done = []
    for obj, (results, cycles) in zip(objs, outcomes):
        debug.after_run(obj, segments_of(obj))
        c = obj._compiled
        if obj._flags["breaklayer"] == 1:
            results = io_formats.layer_outputs(obj, c, c.parallel.batch)
        elif obj._flags["no_rearrange"]:
            results = io_formats.outputs(obj, c, results)
        done.append((results, cycles))
    return done


def segments_of(obj) -> list:
    """(compiled DLA program, [(cluster statistics, cluster)]) of each DLA program of the last run."""
    c = obj._compiled
    if hasattr(c, "stages"):
        stage_stats = getattr(obj, "_last_stage_stats", {})
        return [(c.stages[k], [(s.clusters[cl], cl) for s in stats for cl in c.stages[k].parallel.clusters
                               if cl in s.clusters]) for k, stats in sorted(stage_stats.items())]
    return [(c, [(s.clusters[cl], cl) for s in obj._last_stats for cl in c.parallel.clusters if cl in s.clusters])]
