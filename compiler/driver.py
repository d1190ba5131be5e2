"""Compile pipeline: ONNX -> graph IR -> quantised IR -> memory map + programs + weights.

The pipeline's data types (:class:`~compiler.compiled.Compiled`, ...) live in
:mod:`compiler.compiled`; they are re-exported here."""
from __future__ import annotations

import numpy as np

from arch.machine import MachineConfig

from .calibrate import calibrate
from .quant_import import activation_ranges
from .codegen import CodeGen, WeightStore
from .compiled import Compiled, IODesc, Parallel, image_batch
from .frontend import load_model
from .ir import CompileError, Graph
from .legalise import legalise
from .memmap import MemoryMap, align, plan_tensors
from .quantize import quantize

__all__ = ["compile_graph", "compile_model", "Compiled", "IODesc", "Parallel", "image_batch"]


def compile_graph(graph: Graph, cfg: MachineConfig, base: int = 0, parallel: Parallel = Parallel()) -> Compiled:
    """Lay out and generate code for a quantised graph: one program per cluster of ``parallel``,
    each processing its clusters' image slots (all cards get the same memory image)."""
    if not graph.quantized:
        raise CompileError("the graph must be quantised before code generation")
    if not graph.layers:
        raise CompileError("the model has no layer that runs on the DLA")
    p = parallel
    if not p.clusters or max(p.clusters) >= cfg.clusters_per_card or min(p.clusters) < 0:
        raise CompileError(f"clusters {list(p.clusters)} do not exist: the {cfg.name!r} configuration has "
                           f"{cfg.clusters_per_card} clusters per card")
    if p.mvbatch and p.split:
        raise CompileError("mvbatch and clustersbatchmode cannot be combined: either each MV unit takes its own "
                           "image, or the clusters split one image")
    if p.mvbatch and p.imgs_per_cluster % cfg.mv_per_cluster:
        raise CompileError(f"mvbatch needs imgs_per_cluster to be a multiple of the {cfg.mv_per_cluster} MV "
                           f"units of a cluster, got {p.imgs_per_cluster}")
    layouts, slot_bytes = plan_tensors(graph, cfg)
    nslots = p.images_per_card
    if nslots * slot_bytes > cfg.mem_bytes:      # before generating any code
        big = max(graph.tensors.values(), key=lambda t: int(np.prod(t.shape)))
        raise CompileError(f"the model's activations need {nslots} x {slot_bytes} bytes of card memory "
                           f"({nslots} image slot(s); the largest tensor is {big.name!r} {big.shape}); the "
                           f"{cfg.name!r} configuration has {cfg.mem_bytes}")
    weights_offset = align(nslots * slot_bytes)
    store = WeightStore(cfg)
    programs, code_bytes, layers, spans = {}, {}, None, {}
    per_round = cfg.mv_per_cluster if p.mvbatch else 1
    split = p.split and len(p.clusters) > 1
    mask = sum(1 << c for c in p.clusters) if split else 0
    for k, cluster in enumerate(p.clusters):
        gen = CodeGen(cfg, graph, layouts, base + weights_offset, store,
                      share=(k, len(p.clusters)) if split else (0, 1), barrier_mask=mask)
        first = 0 if p.split else k * p.imgs_per_cluster
        slots = [base + (first + b) * slot_bytes for b in range(p.imgs_per_cluster)]
        programs[cluster] = gen.lower([slots[i:i + per_round] for i in range(0, len(slots), per_round)])
        code_bytes[cluster] = len(programs[cluster]) * 32
        spans[cluster] = gen.spans
        layers = layers or gen.layers
    weights = store.tobytes()
    mm = MemoryMap(base=base, slot_bytes=slot_bytes, nslots=nslots, weights_offset=weights_offset,
                   weights_bytes=len(weights), code_offset=align(weights_offset + len(weights)),
                   code_bytes=code_bytes, tensors=layouts)
    if mm.end > cfg.mem_bytes:
        raise CompileError(f"the model needs {mm.end} bytes of card memory; the {cfg.name!r} "
                           f"configuration has {cfg.mem_bytes}")
    inputs = [IODesc(i.name, i.tensor, tuple(i.onnx_shape)) for i in graph.inputs]
    outputs = [IODesc(o.name, o.tensor, tuple(o.onnx_shape)) for o in graph.outputs]
    return Compiled(cfg=cfg, memmap=mm, programs=programs, weights=weights, inputs=inputs,
                    outputs=outputs, layers=layers, graph=graph, meta={"model": graph.name, "unbatched": graph.unbatched}, parallel=p,
                    host=graph.host, output_order=list(graph.output_order), spans=spans)


def compile_model(model, cfg: MachineConfig, inshapes: str | None = None, base: int = 0,
                  parallel: Parallel = Parallel(), samples=None) -> Compiled:
    """ONNX model (path or ModelProto) -> Compiled: with the default Q8.8 activations, or with
    ``samples`` (calibration images, see :func:`compiler.calibrate.calibration_feeds`) per-tensor
    formats chosen from a float run on them (variable fixed point). A quantised model's activation
    scales (QDQ) are calibration hints for the tensors they cover, alone or with the samples
    (:func:`compiler.quant_import.activation_ranges` states the rule)."""
    graph = load_model(model, inshapes=inshapes, mem_bytes=cfg.mem_bytes)
    legalise(graph, cfg)
    ranges, note = activation_ranges(graph, calibrate(graph, samples) if samples is not None else None)
    if note:
        graph.notes.append(note)
    quantize(graph, cfg, ranges=ranges, missing_frac=cfg.default_frac)
    compiled = compile_graph(graph, cfg, base=base, parallel=parallel)
    compiled.meta["varfp"] = ranges is not None
    return compiled
