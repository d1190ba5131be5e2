"""The SDK's debug letters (``SetFlag('debug', letters)``) that print what the compiler and the
simulator know: at load (``c C s p a I J``), after each run (``S d t T``, ``r R`` with comparesw,
and the per-layer cycles of ``breaklayer=2``) and in the host float run (``o``). The letters and
their one-line meaning are the table ``runtime.flags.DEBUG_LETTERS``; ``runtime.mdla`` calls the
three entry points :func:`at_load`, :func:`after_run` and :func:`th_layer_ranges`.

Everything goes to stdout, as the SDK's printf did, except the partition file of ``J``."""
from __future__ import annotations

import json
import sys

import numpy as np

from arch.asm import format_instr

#: the letters that print at load, after a run, and in Run_th
AT_LOAD, AFTER_RUN, IN_TH = "cCspaIJ", "SdtT", "o"


def _dla_segments(c) -> list:
    """The DLA programs of a loaded model (one, or one per DLA stage of a model with host stages)."""
    return list(c.segments) if hasattr(c, "segments") else [c]


def _label(k: int, n: int) -> str:
    return f"DLA stage {k}: " if n > 1 else ""


# ---------------------------------------------------------------------------- at load
def memory_map(c, out=print) -> None:
    """'c': the regions of the memory map and every tensor's address (image slot 0) and size."""
    segs = _dla_segments(c)
    for k, s in enumerate(segs):
        mm, cfg = s.memmap, s.cfg
        out(f"{_label(k, len(segs))}memory map {mm.base:#010x}..{mm.end:#010x} ({mm.end - mm.base} bytes)")
        out(f"  activations {mm.slot_base(0):#010x}: {mm.nslots} image slot(s) x {mm.slot_bytes} bytes")
        out(f"  weights     {mm.weights_addr:#010x}: {mm.weights_bytes} bytes")
        for p in sorted(mm.code_bytes):
            out(f"  code {p:<6} {mm.code_addr(p):#010x}: {mm.code_bytes[p]} bytes "
                f"({len(s.programs[p])} instructions)")
        for name, lay in mm.tensors.items():
            view = f" view of its storage at word {lay.cw_offset}" if lay.is_view else ""
            out(f"  tensor {name}: {mm.tensor_addr(name):#010x} {lay.words * cfg.beat_bytes} bytes "
                f"C{lay.channels} H{lay.height} W{lay.width} halo {lay.halo} Q{cfg.data_bits - lay.frac}.{lay.frac}{view}")


def workload(c, out=print) -> None:
    """'C': how a call spreads over cards and clusters, and each program's instructions and MACs."""
    p = c.parallel
    per_image = sum(lc.macs for s in _dla_segments(c) for lc in s.layers)
    mode = ("the clusters split each image" if p.split else
            "each MV unit its own image" if p.mvbatch else "each cluster its own images")
    out(f"workload: {p.batch} image(s) per call on {p.nfpgas} card(s) x clusters {list(p.clusters)}, "
        f"{p.imgs_per_cluster} per cluster ({mode}); {per_image} MACs per image")
    for f in range(p.nfpgas):
        imgs = [n for n in range(p.batch) if p.slot(n)[0] == f]
        out(f"  card {f}: images {imgs}")
    segs = _dla_segments(c)
    for k, s in enumerate(segs):
        share = len(s.parallel.clusters) if s.parallel.split else 1
        images = 1 if s.parallel.split else s.parallel.imgs_per_cluster
        for cl, prog in sorted(s.programs.items()):
            ops = {}
            for i in prog:
                ops[i.op] = ops.get(i.op, 0) + 1
            macs = sum(lc.macs for lc in s.layers) * images // share
            out(f"  {_label(k, len(segs))}cluster {cl}: {len(prog)} instructions "
                f"({', '.join(f'{n} {op}' for op, n in sorted(ops.items()))}), {macs} MACs per call")


def strategy(c, out=print) -> None:
    """'s': each layer's tiling mode, tile and chunks, and the host stages."""
    for k, stage in enumerate(getattr(c, "stages", [c])):
        if not hasattr(stage, "layers"):
            out(f"host stage {k} ({stage.position}): {', '.join(stage.nodes)}")
            continue
        for lc in stage.layers:
            out(f"layer {lc.name} ({lc.kind}): mode {lc.mode}, tile {lc.tile[0]}x{lc.tile[1]}, chunks {lc.chunks}, "
                f"buffer slots {lc.slots}, pc {lc.first_pc}..{lc.last_pc}")
    if getattr(c, "host", None) is not None:
        out(f"host tail: {', '.join(c.host.nodes)}")


def operations(c, out=print) -> None:
    """'p': the ONNX nodes each layer runs (and what the front end folded)."""
    for k, stage in enumerate(getattr(c, "stages", [c])):
        if not hasattr(stage, "graph"):
            out(f"host stage {k}: {', '.join(stage.nodes)}")
            continue
        g = stage.graph
        if g is None:
            out("(this .bin has no graph section: the ONNX nodes are not known)")
            continue
        for layer in g.layers:
            out(f"{type(layer).__name__} {layer.name}: {', '.join(layer.nodes)}")
        for note in g.notes:
            out(f"  front end: {note}")
    if getattr(c, "host", None) is not None:
        out(f"host tail: {', '.join(c.host.nodes)}")


def access_pattern(c, out=print) -> None:
    """'a': every LOAD and STORE's main-memory address, shape and bytes, per program."""
    segs = _dla_segments(c)
    for k, s in enumerate(segs):
        bb = s.cfg.beat_bytes
        for cl, prog in sorted(s.programs.items()):
            out(f"{_label(k, len(segs))}program {cl}:")
            for pc, i in enumerate(prog):
                if i.op in ("LOAD", "STORE"):
                    out(f"  {pc:6d} {i.op:<5} {i.dram_addr:#010x} n={i.n2}x{i.n1}x{i.n0} s1={i.s1} s2={i.s2} "
                        f"{i.n0 * i.n1 * i.n2 * bb} bytes")


def intermediate(c, out=print) -> None:
    """'I': the quantised layers with their shapes and fixed-point fields."""
    for k, s in enumerate(_dla_segments(c)):
        g = s.graph
        if g is None:
            out("(this .bin has no graph section: no intermediate code to print)")
            continue
        bits = s.cfg.data_bits
        for gi in g.inputs:
            out(f"input {gi.name} -> {gi.tensor} {g.tensors[gi.tensor].shape} frac {g.tensors[gi.tensor].frac}")
        for layer in g.layers:
            ins = getattr(layer, "inputs", None) or [layer.input]
            fields = []
            for f in ("kernel", "stride", "pads", "dilation", "groups", "act", "w_frac", "shift", "res_shift",
                      "residual", "res_op", "mul"):
                v = getattr(layer, f, None)
                if v is not None and v != "none":
                    fields.append(f"{f}={v}")
            out(f"{type(layer).__name__} {layer.name}: {','.join(ins)} {[g.tensors[t].shape for t in ins]} -> "
                f"{layer.output} {g.tensors[layer.output].shape} Q{bits - (g.tensors[layer.output].frac or 0)}."
                f"{g.tensors[layer.output].frac} " + " ".join(fields))
        for go in g.outputs:
            out(f"output {go.name} <- {go.tensor} {tuple(go.onnx_shape)}")


def partition_json(c, path: str = "partition.json") -> None:
    """'J': the partition (host and DLA stages, each layer's code and tiling, the batching) as JSON."""
    stages = []
    for k, stage in enumerate(getattr(c, "stages", [c])):
        if not hasattr(stage, "layers"):
            stages.append({"stage": k, "where": "host", "position": stage.position, "nodes": list(stage.nodes)})
            continue
        stages.append({"stage": k, "where": "dla", "clusters": list(stage.parallel.clusters),
                       "programs": {str(cl): len(prog) for cl, prog in sorted(stage.programs.items())},
                       "layers": [{"name": lc.name, "kind": lc.kind, "mode": lc.mode, "tile": list(lc.tile),
                                   "chunks": lc.chunks, "slots": lc.slots, "first_pc": lc.first_pc,
                                   "last_pc": lc.last_pc, "macs": lc.macs} for lc in stage.layers]})
    if getattr(c, "host", None) is not None:
        stages.append({"stage": len(stages), "where": "host", "position": "tail", "nodes": list(c.host.nodes)})
    doc = {"config": c.cfg.name, "parallel": c.parallel.to_dict(), "stages": stages}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote the partition to {path}")


def at_load(obj) -> None:
    dbg, c = obj._flags["debug"], obj._compiled
    for letter, fn in (("c", memory_map), ("C", workload), ("s", strategy), ("p", operations),
                       ("a", access_pattern), ("I", intermediate)):
        if letter in dbg:
            fn(c)
    if "J" in dbg:
        partition_json(c)


# ---------------------------------------------------------------------------- after a run
def wants_timeline(obj) -> bool:
    """Whether the next run needs every instruction's timing (debug t/T, breaklayer=2)."""
    return bool(set(obj._flags["debug"]) & set("tT")) or obj._flags["breaklayer"] == 2


def engine_stats(segments, out=print) -> None:
    """'S': instructions and busy cycles per engine of each cluster."""
    for k, (seg, stats) in enumerate(segments):
        for cs, cl in stats:
            busy = ", ".join(f"{e} {n}" for e, n in cs.busy.items())
            out(f"{_label(k, len(segments))}cluster {cl}: {cs.instructions} instructions, {cs.cycles} cycles; "
                f"busy: {busy}; MACs {cs.macs} of {cs.mac_slots} slots")


def counters(segments, out=print) -> None:
    """'d': the debug counters of each cluster."""
    for k, (seg, stats) in enumerate(segments):
        for cs, cl in stats:
            out(f"{_label(k, len(segments))}cluster {cl}: cycles={cs.cycles} instructions={cs.instructions} "
                f"token_wait={dict(cs.token_wait)} port_wait={dict(cs.port_wait)} bytes_loaded={cs.bytes_loaded} "
                f"bytes_stored={cs.bytes_stored} saturations={cs.saturations}")


def instruction_trace(segments, verbose: bool, out=print) -> None:
    """'t' (every executed instruction with its engine, dispatch, start and end cycle) or 'T' (and
    every field of it)."""
    for k, (seg, stats) in enumerate(segments):
        for cs, cl in stats:
            out(f"{_label(k, len(segments))}cluster {cl} trace:")
            prog = seg.programs[cl]
            for t in cs.timeline or []:
                text = format_instr(prog[t.pc]) if verbose else t.op
                grant = f" grant {t.grant}" if t.grant is not None else ""
                out(f"  {t.pc:6d} {t.engine:<8} dispatch {t.dispatch} start {t.start} end {t.end}{grant}  {text}")


def layer_cycles(segments, out=print) -> None:
    """breaklayer=2: the modelled cycles of every layer (from its first instruction's start to its last's end)."""
    offset = 0
    for k, (seg, stats) in enumerate(segments):
        cs, cl = stats[0]
        timeline = cs.timeline or []
        for lc in seg.layers:
            span = [t for t in timeline if lc.first_pc <= t.pc <= lc.last_pc]
            if not span:
                continue
            start, end = min(t.start for t in span), max(t.end for t in span)
            out(f"layer {lc.name} ({lc.kind}): cycles {offset + start}..{offset + end} = {end - start} "
                f"({seg.cfg.cycles_to_ms(end - start):.4f} ms), {lc.macs} MACs")
        offset += max(c.cycles for c, _ in stats)


def after_run(obj, segments) -> None:
    """``segments``: (compiled, [(cluster stats, cluster)]) of each DLA program of the run."""
    if getattr(obj, "_quiet_debug", False):
        return
    dbg = obj._flags["debug"]
    if "S" in dbg:
        engine_stats(segments)
    if "d" in dbg:
        counters(segments)
    if "t" in dbg or "T" in dbg:
        instruction_trace(segments, verbose="T" in dbg)
    if obj._flags["breaklayer"] == 2:
        layer_cycles(segments)
    if set(dbg) & set("rR") and not obj._flags["comparesw"]:
        print("warning: debug letters r and R print the comparison with the software model: they need "
              "comparesw=1 (options 's'); nothing compared in this run", file=sys.stderr)


def compare(obj, names, dla, sw, out=print) -> None:
    """'r' (only the values that differ) or 'R' (every value) of a comparesw run, per output."""
    dbg = obj._flags["debug"]
    if not set(dbg) & set("rR"):
        return
    for name, a, b in zip(names, dla, sw):
        a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        idx = range(a.size) if "R" in dbg else np.flatnonzero(a != b)
        out(f"output {name}: {int(np.count_nonzero(a != b))} of {a.size} values differ from the software model")
        for i in idx:
            out(f"  [{i}] dla {a[i]:.6g} sw {b[i]:.6g}" + ("  DIFFERENT" if a[i] != b[i] else ""))


# ---------------------------------------------------------------------------- host float run
def th_layer_ranges(obj, graph, tensors, image: int, out=print) -> None:
    """'o': each layer's output range in the float host run (Run_th) of one image."""
    if "o" not in obj._flags["debug"]:
        return
    for layer in graph.layers:
        t = tensors[layer.output]
        out(f"Run_th image {image} {type(layer).__name__} {layer.name}: {t.shape} min {float(t.min()):.6g} "
            f"max {float(t.max()):.6g} mean |x| {float(np.abs(t).mean()):.6g}")
