"""Memory map of a compiled network in a card's main memory.

Layout, from the map's base address (every region aligned to 4 KiB):

    [activations of image slot 0][... slot n-1][weights][code of each cluster]

Activation tensors are stored one pixel after another, row by row (HWC), with the channels of a
pixel padded to a whole number of words (``lanes`` channels), so that every DMA beat is aligned and
padded channels are always zero. Each tensor is surrounded by a *halo* as wide as the largest
padding any consumer applies, filled once at load time with the padding value (0 for
convolutions and average pooling, the int16 minimum for max-pooling). Padding then costs nothing at run time: the DMA
and the compute units never see a border. Tensors never share memory, so halos are never
overwritten; the input tensor's interior is written by the host before each run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from arch.machine import MachineConfig
from arch.numerics import DATA_MIN

from .ir import CompileError, Conv, Graph, MaxPool
from .lowering import conv_input_halo

ALIGN = 4096


def align(x: int, a: int = ALIGN) -> int:
    return (x + a - 1) // a * a


@dataclass
class TensorLayout:
    name: str
    channels: int
    height: int
    width: int
    cwords: int                          #: words per pixel (channels rounded up to lanes)
    halo: tuple[int, int, int, int]      #: (top, left, bottom, right) pixels
    fill: int                            #: value of the halo
    offset: int                          #: byte offset inside an image slot's activation region
    frac: int
    pitch: int = 0                       #: words per pixel of the storage when this is a channel view (0: own storage)
    cw_offset: int = 0                   #: first word of this view inside each pixel of the storage

    @property
    def is_view(self) -> bool:
        """A channel range of another tensor's storage (an input of a Concat)."""
        return self.pitch != 0

    @property
    def pitch_words(self) -> int:
        """Words from one pixel to the next in memory."""
        return self.pitch or self.cwords

    @property
    def row_pixels(self) -> int:
        return self.width + self.halo[1] + self.halo[3]

    @property
    def rows(self) -> int:
        return self.height + self.halo[0] + self.halo[2]

    @property
    def words(self) -> int:
        """Words of the storage (for a view: of the tensor it is a view of)."""
        return self.rows * self.row_pixels * self.pitch_words

    def word_index(self, y: int, x: int, cw: int = 0) -> int:
        """Word offset (from the tensor's start) of word ``cw`` of interior pixel (y, x); y and x may
        reach into the halo (negative or past the edge) down to minus the halo's width."""
        return ((y + self.halo[0]) * self.row_pixels + (x + self.halo[1])) * self.pitch_words + self.cw_offset + cw

    def view(self, memory: np.ndarray, addr: int, lanes: int) -> np.ndarray:
        """The tensor's interior as an int16 (H, W, C) view into a card memory image at ``addr``."""
        nbytes = self.words * lanes * 2
        v = memory[addr:addr + nbytes].view(np.int16).reshape(self.rows, self.row_pixels, self.pitch_words * lanes)
        c0 = self.cw_offset * lanes
        return v[self.halo[0]:self.halo[0] + self.height, self.halo[1]:self.halo[1] + self.width, c0:c0 + self.channels]

    def write(self, memory: np.ndarray, addr: int, lanes: int, chw: np.ndarray) -> None:
        """Store an int16 (C, H, W) array into the interior (padded channels stay zero)."""
        if chw.shape != (self.channels, self.height, self.width):
            raise ValueError(f"tensor {self.name!r} is {(self.channels, self.height, self.width)}, got {chw.shape}")
        self.view(memory, addr, lanes)[...] = chw.transpose(1, 2, 0)

    def read(self, memory: np.ndarray, addr: int, lanes: int) -> np.ndarray:
        """The interior as an int16 (C, H, W) array (a copy)."""
        return np.ascontiguousarray(self.view(memory, addr, lanes).transpose(2, 0, 1))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TensorLayout":
        d = dict(d)
        d["halo"] = tuple(d["halo"])
        return cls(**d)


@dataclass
class MemoryMap:
    base: int                            #: first byte of the map in card memory
    slot_bytes: int                      #: bytes of one image slot's activations
    nslots: int                          #: image slots (images resident at once)
    weights_offset: int                  #: from base
    weights_bytes: int
    code_offset: int                     #: from base
    code_bytes: dict[int, int] = field(default_factory=dict)   #: cluster program -> bytes
    tensors: dict[str, TensorLayout] = field(default_factory=dict)

    def slot_base(self, slot: int) -> int:
        return self.base + slot * self.slot_bytes

    def tensor_addr(self, name: str, slot: int = 0) -> int:
        return self.slot_base(slot) + self.tensors[name].offset

    @property
    def weights_addr(self) -> int:
        return self.base + self.weights_offset

    def code_addr(self, program: int) -> int:
        off = self.code_offset
        for p in sorted(self.code_bytes):
            if p == program:
                return self.base + off
            off += align(self.code_bytes[p], 64)
        raise KeyError(program)

    @property
    def end(self) -> int:
        return self.base + self.code_offset + sum(align(n, 64) for n in self.code_bytes.values())

    def to_dict(self) -> dict:
        return {
            "base": self.base, "slot_bytes": self.slot_bytes, "nslots": self.nslots,
            "weights_offset": self.weights_offset, "weights_bytes": self.weights_bytes,
            "code_offset": self.code_offset, "code_bytes": {str(k): v for k, v in self.code_bytes.items()},
            "tensors": {k: v.to_dict() for k, v in self.tensors.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryMap":
        return cls(
            base=d["base"], slot_bytes=d["slot_bytes"], nslots=d["nslots"],
            weights_offset=d["weights_offset"], weights_bytes=d["weights_bytes"],
            code_offset=d["code_offset"], code_bytes={int(k): v for k, v in d["code_bytes"].items()},
            tensors={k: TensorLayout.from_dict(v) for k, v in d["tensors"].items()},
        )

    def init_activations(self, memory: np.ndarray, cfg: MachineConfig) -> None:
        """Write every slot's activation region: zeros, with each tensor's halo at its fill value."""
        for slot in range(self.nslots):
            start = self.slot_base(slot)
            memory[start:start + self.slot_bytes] = 0
            for t in self.tensors.values():
                if t.fill == 0 or t.is_view:
                    continue
                a = start + t.offset
                view = memory[a:a + t.words * cfg.beat_bytes].view(np.int16)
                view = view.reshape(t.rows, t.row_pixels, t.pitch_words * cfg.lanes)
                view[...] = t.fill
                view[t.halo[0]:t.halo[0] + t.height, t.halo[1]:t.halo[1] + t.width, :] = 0


def _views(graph: Graph, cfg: MachineConfig) -> dict[str, tuple[str, int]]:
    """Tensor -> (tensor whose storage it uses, channel offset) for the inputs of every Concat,
    followed through nested concatenations to the tensor that owns the storage."""
    parent: dict[str, tuple[str, int]] = {}
    inputs = {gi.tensor for gi in graph.inputs}
    for cat in graph.concats:
        off = 0
        for t in cat.inputs:
            if t in parent:
                raise CompileError(f"Concat '{cat.name}': tensor {t!r} already feeds another Concat; a tensor "
                                   f"in two concatenations would need a copy (not supported yet)")
            if t in inputs:
                raise CompileError(f"Concat '{cat.name}': concatenating the graph input {t!r} is not supported yet")
            if off % cfg.lanes:
                raise CompileError(f"Concat '{cat.name}': input {t!r} would start at channel {off}, which is not a "
                                   f"multiple of {cfg.lanes} (a word); such a concatenation needs a copy (not "
                                   f"supported yet)")
            parent[t] = (cat.output, off)
            off += graph.tensors[t].shape[0]

    def root(t: str) -> tuple[str, int]:
        if t not in parent:
            return t, 0
        p, off = parent[t]
        r, base = root(p)
        return r, base + off
    return {t: root(t) for t in parent}


def plan_tensors(graph: Graph, cfg: MachineConfig) -> tuple[dict[str, TensorLayout], int]:
    """Layouts (halo, fill value, offset) of every activation tensor; returns (layouts, slot bytes).
    The inputs of a Concat are views of its output's storage (halo and fill shared)."""
    views = _views(graph, cfg)

    def owner(t: str) -> str:
        return views[t][0] if t in views else t

    halos: dict[str, list[int]] = {n: [0, 0, 0, 0] for n in graph.tensors}
    conv_pad: dict[str, bool] = {n: False for n in graph.tensors}
    pool_pad: dict[str, list[str]] = {n: [] for n in graph.tensors}
    for layer in graph.layers:
        pads = layer.pads
        if isinstance(layer, Conv) and (layer.up != (1, 1) or layer.edge):   # the pieces' windows
            pads = conv_input_halo(layer, graph.tensors[layer.input].shape[1:], graph.tensors[layer.output].shape[1:])
        if any(pads):
            t = owner(layer.input)
            h = halos[t]
            for i in range(4):
                h[i] = max(h[i], pads[i])
            if isinstance(layer, MaxPool):
                pool_pad[t].append(layer.name)
            else:
                conv_pad[t] = True
    layouts, offset = {}, 0
    for name, t in graph.tensors.items():
        if name in views:
            continue
        fill = 0
        if pool_pad[name]:
            if not conv_pad[name]:
                fill = DATA_MIN
            else:
                writers = [l for l in graph.layers if owner(l.output) == name]
                if not writers or not all(_non_negative(w) for w in writers):
                    raise CompileError(
                        f"tensor {name!r} is padded both by a convolution (zeros) and by max-pooling "
                        f"{pool_pad[name][0]!r} (-inf), and is not known to be non-negative")
        c, h, w = t.shape
        lay = TensorLayout(name=name, channels=c, height=h, width=w, cwords=-(-c // cfg.lanes),
                           halo=tuple(halos[name]), fill=fill, offset=offset,
                           frac=t.frac if t.frac is not None else cfg.default_frac)
        layouts[name] = lay
        offset = align(offset + lay.words * cfg.beat_bytes, 64)
    for name, (root, ch) in views.items():
        r = layouts[root]
        c, h, w = graph.tensors[name].shape
        layouts[name] = TensorLayout(name=name, channels=c, height=h, width=w, cwords=-(-c // cfg.lanes),
                                     halo=r.halo, fill=r.fill, offset=r.offset, frac=r.frac,
                                     pitch=r.cwords, cw_offset=ch // cfg.lanes)
    return layouts, align(offset)


def _non_negative(layer) -> bool:
    """Whether a layer's output is never negative (so zero padding equals max-pooling's -inf padding):
    a Conv ending in ReLU, Sigmoid or a Clip with a lower bound >= 0, not followed by a fused Mul."""
    if not isinstance(layer, Conv) or (layer.residual and layer.res_op == "mul"):
        return False
    lo = layer.clip[0]
    return layer.act in ("relu", "sigmoid") or (layer.act == "clip" and lo is not None and lo >= 0)
