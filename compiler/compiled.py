"""The compile pipeline's data types: what a compiled network is (:class:`Compiled`, the content
of a ``.bin``), its inputs and outputs as the host sees them (:class:`IODesc`), how one call's
images spread over the hardware (:class:`Parallel`), and the check of a batch of images
(:func:`image_batch`). Apart from the pipeline (:mod:`compiler.driver`) so that the pipeline's
stages (calibration, quantisation, partitioning, the runtime) import them without importing it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from arch.isa import Instr, encode_program
from arch.machine import MachineConfig

from .codegen import LayerCode
from .ir import Graph, HostTail
from .memmap import MemoryMap

__all__ = ["image_batch", "IODesc", "Parallel", "Compiled"]


def image_batch(a, per: tuple[int, ...], what: str) -> np.ndarray:
    """``a`` as a float32 batch ``(N, *per)`` of images of shape ``per`` (one image may leave N
    out). TypeError when it is no array of real numbers, ValueError for a wrong shape, an empty
    batch, NaN or infinity; the message starts with ``what`` (e.g. "input 'x'")."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise TypeError(f"{what} must be a real float array (float32), got dtype {a.dtype}")
    if a.shape == per:
        a = a[None]
    if a.shape[1:] != per:
        raise ValueError(f"{what} must have shape (N, {', '.join(map(str, per))}) or {per} for one image, "
                         f"got {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (shape {a.shape}): pass at least one image")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} contains NaN or infinity")
    return a.astype(np.float32, copy=False)


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


@dataclass(frozen=True)
class Parallel:
    """How one call's images are spread over the hardware (the SDK's batching flags)."""
    nfpgas: int = 1                    #: cards, each running the same program on its own images
    clusters: tuple[int, ...] = (0,)   #: clusters of each card this model uses (firstcluster ...)
    imgs_per_cluster: int = 1          #: images each cluster processes per call
    mvbatch: bool = False              #: the MV units of a cluster take one image each
    split: bool = False                #: the clusters split each image's work (clustersbatchmode)

    @property
    def images_per_card(self) -> int:
        return self.imgs_per_cluster if self.split else len(self.clusters) * self.imgs_per_cluster

    @property
    def batch(self) -> int:
        """Images per Run/PutInput call."""
        return self.nfpgas * self.images_per_card

    def slot(self, image: int) -> tuple[int, int, int]:
        """(card, cluster position, image slot on the card) of image ``image`` of a call."""
        card, rest = divmod(image, self.images_per_card)
        return card, 0 if self.split else rest // self.imgs_per_cluster, rest

    def to_dict(self) -> dict:
        return {"nfpgas": self.nfpgas, "clusters": list(self.clusters),
                "imgs_per_cluster": self.imgs_per_cluster, "mvbatch": self.mvbatch, "split": self.split}

    @classmethod
    def from_dict(cls, d: dict) -> "Parallel":
        return cls(d["nfpgas"], tuple(d["clusters"]), d["imgs_per_cluster"], bool(d["mvbatch"]),
                   bool(d.get("split", False)))


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
    parallel: Parallel = field(default_factory=Parallel)
    host: HostTail | None = None               #: operators the runtime runs on the host after the DLA
    output_order: list[str] = field(default_factory=list)   #: the model's outputs, in order
    #: program -> (first pc, last pc, index into ``layers``) of each layer's code, every image round
    spans: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)

    def layer_at(self, program: int, pc: int) -> int | None:
        """Index into ``layers`` of the layer whose code holds ``pc`` of ``program`` (None if none)."""
        for first, last, k in self.spans.get(program, ()):
            if first <= pc <= last:
                return k
        return None

    @property
    def final_outputs(self) -> list[IODesc]:
        """The model's outputs as the user sees them: DLA outputs and host-tail outputs, in model order."""
        dla = {o.name: o for o in self.outputs}
        host = {o.name: IODesc(o.name, "", tuple(o.onnx_shape)) for o in (self.host.outputs if self.host else [])}
        order = self.output_order or [o.name for o in self.outputs]
        return [dla.get(n) or host[n] for n in order]

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


    def program_addresses(self) -> dict[int, int]:
        """Cluster -> byte address of its program (what the executors take)."""
        return {p: self.memmap.code_addr(p) for p in self.programs}

    def seeded_image(self, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The memory image with seeded N(0, 1) inputs in image slot 0, converted to each input's
        fixed-point format; returns (image, int16 (C, H, W) inputs by tensor). For tests and benchmarks."""
        from arch.numerics import float_to_fixed
        mem = self.memory_image()
        rng = np.random.default_rng(seed)
        feeds = {}
        for i in self.inputs:
            lay = self.memmap.tensors[i.tensor]
            q, _ = float_to_fixed(rng.standard_normal((lay.channels, lay.height, lay.width)), lay.frac)
            lay.write(mem, self.memmap.tensor_addr(i.tensor), self.cfg.lanes, q)
            feeds[i.tensor] = q
        return mem, feeds
