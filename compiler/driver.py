"""Compile pipeline: ONNX -> graph IR -> quantised IR -> memory map + programs + weights."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from arch.isa import Instr, encode_program
from arch.machine import MachineConfig

from .codegen import CodeGen, LayerCode, WeightStore
from .ir import CompileError, Graph
from .memmap import MemoryMap, align, plan_tensors


@dataclass
class IODesc:
    """A network input or output as the host sees it."""
    name: str               #: ONNX name
    tensor: str             #: activation tensor in the memory map
    onnx_shape: tuple       #: per call of one image, batch dimension first (1, ...)

    def to_dict(self) -> dict:
        return {"name": self.name, "tensor": self.tensor, "onnx_shape": list(self.onnx_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "IODesc":
        return cls(d["name"], d["tensor"], tuple(d["onnx_shape"]))


@dataclass
class Compiled:
    """Everything needed to run a network: what a ``.bin`` holds."""
    cfg: MachineConfig
    memmap: MemoryMap
    programs: dict[int, list[Instr]]           #: program index (cluster) -> instructions
    weights: bytes
    inputs: list[IODesc]
    outputs: list[IODesc]
    layers: list[LayerCode]
    graph: Graph | None = None                 #: quantised IR (for Run_th and the golden reference)
    meta: dict = field(default_factory=dict)

    def code_bytes(self, program: int) -> bytes:
        return encode_program(self.programs[program])

    def memory_image(self) -> np.ndarray:
        """The card memory image from address 0 to the end of the map: activations initialised
        (halos filled), weights and code in place."""
        mm = self.memmap
        mem = np.zeros(mm.end, dtype=np.uint8)
        mm.init_activations(mem, self.cfg)
        w = np.frombuffer(self.weights, dtype=np.uint8)
        mem[mm.weights_addr:mm.weights_addr + len(w)] = w
        for p in self.programs:
            code = np.frombuffer(self.code_bytes(p), dtype=np.uint8)
            a = mm.code_addr(p)
            mem[a:a + len(code)] = code
        return mem


def compile_graph(graph: Graph, cfg: MachineConfig, base: int = 0) -> Compiled:
    """Lay out and generate code for a quantised graph: one cluster, one image slot."""
    if not graph.quantized:
        raise CompileError("the graph must be quantised before code generation")
    if not graph.layers:
        raise CompileError("the model has no layer that runs on the DLA")
    layouts, slot_bytes = plan_tensors(graph, cfg)
    nslots = 1
    weights_offset = align(nslots * slot_bytes)
    store = WeightStore(cfg)
    gen = CodeGen(cfg, graph, layouts, base + weights_offset, store)
    program = gen.lower(act_base=base)
    weights = store.tobytes()
    mm = MemoryMap(base=base, slot_bytes=slot_bytes, nslots=nslots, weights_offset=weights_offset,
                   weights_bytes=len(weights), code_offset=align(weights_offset + len(weights)),
                   code_bytes={0: len(program) * 32}, tensors=layouts)
    if mm.end > cfg.mem_bytes:
        raise CompileError(f"the model needs {mm.end} bytes of card memory; the {cfg.name!r} "
                           f"configuration has {cfg.mem_bytes}")
    inputs = [IODesc(i.name, i.tensor, tuple(i.onnx_shape)) for i in graph.inputs]
    outputs = [IODesc(o.name, o.tensor, tuple(o.onnx_shape)) for o in graph.outputs]
    return Compiled(cfg=cfg, memmap=mm, programs={0: program}, weights=weights, inputs=inputs,
                    outputs=outputs, layers=gen.layers, graph=graph,
                    meta={"model": graph.name})


def compile_model(model, cfg: MachineConfig, inshapes: str | None = None) -> Compiled:
    """ONNX model (path or ModelProto) -> Compiled, with the default Q8.8 activations."""
    from .frontend import load_model
    from .quantize import quantize
    graph = load_model(model, inshapes=inshapes)
    quantize(graph, cfg)
    return compile_graph(graph, cfg)
