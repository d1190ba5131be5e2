"""Checks of a ``.bin``'s contents against each other, before anything is allocated.

The checksum of the container (``compiler.binfile``) catches accidental damage; these checks catch
a file whose parts disagree (edited, produced by a faulty writer, or corrupted and re-checksummed):
the machine configuration, the memory map, the program and weights sections, the batching and the
inputs and outputs must describe one consistent program that fits the card memory of its
configuration. Every failure is a ``BinFormatError`` naming the section; nothing here allocates
more than the file already holds.
"""
from __future__ import annotations

import dataclasses
import math

from arch.machine import CONFIGS, MachineConfig

from .memmap import ALIGN, MemoryMap, align

#: Card memory beyond which a configuration read from a file is refused (a custom configuration
#: may be larger than the predefined ones, but not absurd: the runtime allocates the map's extent).
MAX_CARD_BYTES = 64 << 30


class BinCheckError(ValueError):
    """One inconsistency; ``section`` names where (binfile turns it into a BinFormatError)."""

    def __init__(self, section: str, message: str):
        super().__init__(f"section {section!r}: {message}")
        self.section = section


def _int(section: str, what: str, v, lo: int = 0, hi: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise BinCheckError(section, f"{what} must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise BinCheckError(section, f"{what} = {v} is outside {lo}..{hi if hi is not None else 'inf'}")
    return v


def check_config(cfg: MachineConfig) -> None:
    """Field types as declared; a predefined name means exactly that configuration; memory bounded."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        want = {"int": int, "float": (int, float), "str": str}.get(str(f.type))
        if want is not None and (not isinstance(v, want) or isinstance(v, bool)):
            raise BinCheckError("config", f"field {f.name} must be {f.type}, got {v!r}")
    if cfg.name in CONFIGS and cfg != CONFIGS[cfg.name]:
        diff = [f.name for f in dataclasses.fields(cfg) if f.compare and getattr(cfg, f.name) != getattr(CONFIGS[cfg.name], f.name)]
        raise BinCheckError("config", f"claims to be the predefined configuration {cfg.name!r} but differs in {diff}")
    _int("config", "mem_bytes", cfg.mem_bytes, 1, MAX_CARD_BYTES)
    if not (isinstance(cfg.clock_mhz, (int, float)) and math.isfinite(cfg.clock_mhz) and cfg.clock_mhz > 0):
        raise BinCheckError("config", f"clock_mhz must be a positive number, got {cfg.clock_mhz!r}")
    for f in ("data_bits", "acc_bits", "bias_bits"):
        _int("config", f, getattr(cfg, f), 2, 64)
    _int("config", "default_frac", cfg.default_frac, 0, cfg.data_bits)


def check_memmap(mm: MemoryMap, cfg: MachineConfig, weights_len: int, code_lens: dict[int, int]) -> None:
    """The regions in order, inside the card memory, the sections as large as the map says."""
    s = "memmap"
    for f in ("base", "slot_bytes", "nslots", "weights_offset", "weights_bytes", "code_offset"):
        _int(s, f, getattr(mm, f), 0, cfg.mem_bytes)
    if mm.base % ALIGN:
        raise BinCheckError(s, f"base {mm.base:#x} is not {ALIGN}-byte aligned")
    if not mm.code_bytes:
        raise BinCheckError(s, "no program (code_bytes is empty)")
    for p, n in mm.code_bytes.items():
        _int(s, f"code_bytes[{p}]", p, 0, cfg.clusters_per_card - 1)
        _int(s, f"code_bytes[{p}]", n, 1, cfg.mem_bytes)
    activations = mm.slot_bytes * mm.nslots
    if mm.weights_offset < activations:
        raise BinCheckError(s, f"the weights (offset {mm.weights_offset:#x}) overlap the {mm.nslots} image slots "
                               f"of {mm.slot_bytes} bytes")
    if mm.code_offset < mm.weights_offset + mm.weights_bytes:
        raise BinCheckError(s, f"the code (offset {mm.code_offset:#x}) overlaps the weights "
                               f"({mm.weights_bytes} bytes at {mm.weights_offset:#x})")
    if mm.end > cfg.mem_bytes:
        raise BinCheckError(s, f"the program needs {mm.end} bytes of card memory; the {cfg.name!r} configuration "
                               f"has {cfg.mem_bytes}")
    if mm.weights_bytes != weights_len:
        raise BinCheckError("weights", f"holds {weights_len} bytes; the memory map says {mm.weights_bytes}")
    if set(code_lens) != set(mm.code_bytes):
        raise BinCheckError(s, f"programs {sorted(mm.code_bytes)} in the map, code sections for {sorted(code_lens)}")
    for p, n in code_lens.items():
        if n != mm.code_bytes[p]:
            raise BinCheckError(f"code.{p}", f"holds {n} bytes; the memory map says {mm.code_bytes[p]}")
    ends = []
    for name, t in mm.tensors.items():
        where = f"tensor {name!r}"
        for f in ("channels", "height", "width", "cwords"):
            _int(s, f"{where} {f}", getattr(t, f), 1, cfg.mem_bytes)
        for f in ("offset", "pitch", "cw_offset", "fill"):
            _int(s, f"{where} {f}", getattr(t, f), -(1 << 15) if f == "fill" else 0, cfg.mem_bytes)
        _int(s, f"{where} frac", t.frac, 0, cfg.data_bits)
        if len(t.halo) != 4:
            raise BinCheckError(s, f"{where}: halo must have 4 entries, got {t.halo!r}")
        for h in t.halo:
            _int(s, f"{where} halo", h, 0, 1 << 16)
        if t.cwords * cfg.lanes < t.channels:
            raise BinCheckError(s, f"{where}: {t.cwords} words per pixel cannot hold {t.channels} channels")
        if t.cw_offset + t.cwords > t.pitch_words:
            raise BinCheckError(s, f"{where}: channel view beyond the pixel of its storage")
        end = t.offset + t.words * cfg.lanes * 2
        if end > mm.slot_bytes:
            raise BinCheckError(s, f"{where} ends at byte {end} of an image slot of {mm.slot_bytes} bytes")
        ends.append(end)
    # an image slot is as large as its tensors (aligned): a larger one would make the runtime
    # allocate memory nothing in the file accounts for
    if mm.slot_bytes > align(max(ends, default=0)) + ALIGN:
        raise BinCheckError(s, f"image slots of {mm.slot_bytes} bytes for tensors that end at byte {max(ends, default=0)}")


def check_instructions(c) -> None:
    """Every instruction valid on the configuration (``arch.isa.validate``), its main-memory
    accesses inside the program's own memory map, an END in every program."""
    from arch.isa import ISAError, validate
    cfg, mm = c.cfg, c.memmap
    for p, prog in c.programs.items():
        section = f"code.{p}"
        if not any(i.op == "END" for i in prog):
            raise BinCheckError(section, "the program has no END instruction")
        for pc, i in enumerate(prog):
            try:
                validate(i, cfg)
            except ISAError as e:
                raise BinCheckError(section, f"instruction {pc}: {e}") from None
            if i.op in ("LOAD", "STORE"):
                last = i.dram_addr + ((i.n2 - 1) * i.s2 + (i.n1 - 1) * i.s1 + i.n0) * cfg.beat_bytes
                if i.dram_addr < mm.base or last > mm.end:
                    raise BinCheckError(section, f"instruction {pc} ({i.op}) accesses main memory "
                                                 f"{i.dram_addr:#x}..{last:#x}, outside the program's memory map "
                                                 f"{mm.base:#x}..{mm.end:#x}")


def check_program(c) -> None:
    """Batching, programs, inputs and outputs consistent with the configuration and the map."""
    cfg, mm, p = c.cfg, c.memmap, c.parallel
    _int("parallel", "nfpgas", p.nfpgas, 1, cfg.max_cards)
    _int("parallel", "imgs_per_cluster", p.imgs_per_cluster, 1, 1 << 16)
    if not p.clusters or len(set(p.clusters)) != len(p.clusters):
        raise BinCheckError("parallel", f"clusters must be distinct cluster indices, got {list(p.clusters)}")
    for cl in p.clusters:
        _int("parallel", "cluster", cl, 0, cfg.clusters_per_card - 1)
    if set(c.programs) != set(p.clusters):
        raise BinCheckError("parallel", f"clusters {list(p.clusters)} but programs for {sorted(c.programs)}")
    if mm.nslots < p.images_per_card:
        raise BinCheckError("memmap", f"{mm.nslots} image slot(s); the batching needs {p.images_per_card} per card")
    for io_kind, descs in (("input", c.inputs), ("output", c.outputs)):
        if not descs:
            raise BinCheckError("io", f"no {io_kind}")
        for d in descs:
            t = mm.tensors.get(d.tensor)
            if t is None:
                raise BinCheckError("io", f"{io_kind} {d.name!r} names tensor {d.tensor!r}, which the memory map lacks")
            shape = tuple(d.onnx_shape)
            if not shape or shape[0] != 1 or any(not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= cfg.mem_bytes
                                                 for n in shape):
                raise BinCheckError("io", f"{io_kind} {d.name!r}: bad shape {list(shape)} (one image: batch 1 first)")
            if math.prod(shape[1:]) != t.channels * t.height * t.width:
                raise BinCheckError("io", f"{io_kind} {d.name!r} of shape {list(shape)} does not match its tensor "
                                          f"({t.channels} x {t.height} x {t.width})")
    check_instructions(c)
    check_layers(c)


def check_layers(c) -> None:
    """The code-generation report: typed fields, instruction ranges inside the programs."""
    longest = max(len(prog) for prog in c.programs.values())
    for k, l in enumerate(c.layers):
        where = f"layer {k}"
        for f in ("name", "kind", "mode"):
            if not isinstance(getattr(l, f), str):
                raise BinCheckError("layers", f"{where}: {f} must be a string, got {getattr(l, f)!r}")
        for f in ("first_pc", "last_pc"):
            _int("layers", f"{where} {f}", getattr(l, f), 0, longest)
        for f in ("slots", "chunks", "macs"):
            _int("layers", f"{where} {f}", getattr(l, f), 0, 1 << 62)
        if len(l.tile) != 2:
            raise BinCheckError("layers", f"{where}: tile must have 2 entries, got {l.tile!r}")
        for t in l.tile:
            _int("layers", f"{where} tile", t, 0, 1 << 30)


def _pair(section: str, what: str, v, lo: int, hi: int, n: int = 2) -> tuple:
    if not isinstance(v, (tuple, list)) or len(v) != n:
        raise BinCheckError(section, f"{what} must have {n} entries, got {v!r}")
    return tuple(_int(section, what, x, lo, hi) for x in v)


def _conv_out(n: int, k: int, s: int, d: int) -> int:
    return (n - d * (k - 1) - 1) // s + 1


def check_graph(g, c) -> None:
    """The embedded quantised graph (``Run_th``, the golden reference): every tensor bounded and
    as large as its memory-map layout, every layer's shapes consistent with its inputs (the
    shapes the float run will compute), the inputs and outputs those of the program."""
    from arch.numerics import ACT_NAMES

    from .ir import AvgPool, Conv, MaxPool
    s, cfg = "graph.json", c.cfg
    limit = cfg.mem_bytes
    shapes = {}
    for name, t in g.tensors.items():
        shape = _pair(s, f"tensor {name!r} shape", t.shape, 1, limit, 3)
        if math.prod(shape) * 4 > limit:
            raise BinCheckError(s, f"tensor {name!r} of shape {list(shape)} is larger than the card memory")
        if t.frac is not None:
            _int(s, f"tensor {name!r} frac", t.frac, 0, cfg.data_bits)
        lay = c.memmap.tensors.get(name)
        if lay is not None and (lay.channels, lay.height, lay.width) != shape:
            raise BinCheckError(s, f"tensor {name!r} is {list(shape)} here but "
                                   f"{[lay.channels, lay.height, lay.width]} in the memory map")
        shapes[name] = shape

    def tensor(what: str, name) -> tuple:
        if not isinstance(name, str) or name not in shapes:
            raise BinCheckError(s, f"{what} names tensor {name!r}, which the graph lacks")
        return shapes[name]

    for k, L in enumerate(g.layers):
        where = f"layer {k} ({getattr(L, 'name', '?')})"
        cin, h, w = tensor(where, L.input)
        cout, oh, ow = tensor(where, L.output)
        if isinstance(L, Conv):
            if L.act not in ACT_NAMES:
                raise BinCheckError(s, f"{where}: unknown activation {L.act!r}")
            groups = _int(s, f"{where} groups", L.groups, 1, cin)
            for arr, what in ((L.weight, "weight"), (L.wq, "wq")):
                if arr is not None and (arr.ndim != 4 or arr.shape[:2] != (cout, cin // groups) or cin % groups
                                        or cout % groups):
                    raise BinCheckError("graph.npz", f"{where}: {what} of shape {list(arr.shape)} does not map "
                                                     f"{cin} to {cout} channels in {groups} group(s)")
            for arr, what in ((L.bias, "bias"), (L.bq, "bq")):
                if arr is not None and arr.shape != (cout,):
                    raise BinCheckError("graph.npz", f"{where}: {what} of shape {list(arr.shape)}, expected [{cout}]")
            if L.wq is not None and L.wq.shape != L.weight.shape:
                raise BinCheckError("graph.npz", f"{where}: wq and weight differ in shape")
            kh, kw = L.kernel
            sy, sx = _pair(s, f"{where} stride", L.stride, 1, 1 << 16)
            dy, dx = _pair(s, f"{where} dilation", L.dilation, 1, 1 << 16)
            uy, ux = _pair(s, f"{where} up", L.up, 1, 1 << 16)
            pt, pl, pb, pr = _pair(s, f"{where} pads", L.pads, -(1 << 16), 1 << 16, 4)
            edge = _int(s, f"{where} edge", L.edge, 0, 1 << 16)
            for f in ("w_frac", "shift", "res_shift", "act_a", "act_b"):
                v = getattr(L, f)
                if v is not None:
                    _int(s, f"{where} {f}", v, -(1 << 16), 1 << 16)
            if not isinstance(L.alpha, (int, float)) or isinstance(L.alpha, bool):
                raise BinCheckError(s, f"{where}: alpha must be a number, got {L.alpha!r}")
            if len(L.clip) != 2 or any(b is not None and (not isinstance(b, (int, float)) or isinstance(b, bool))
                                       for b in L.clip):
                raise BinCheckError(s, f"{where}: clip must be two numbers or nulls, got {L.clip!r}")
            if L.res_op not in ("add", "mul"):
                raise BinCheckError(s, f"{where}: res_op must be 'add' or 'mul', got {L.res_op!r}")
            hh = ((h + 2 * edge - 1) * uy + 1) + pt + pb
            ww = ((w + 2 * edge - 1) * ux + 1) + pl + pr
            expect = (cout, _conv_out(hh, kh, sy, dy), _conv_out(ww, kw, sx, dx))
            if L.residual:
                rc, rh, rw = tensor(f"{where} residual", L.residual)
                if rc != cout or (rh, rw) not in ((oh, ow), (1, 1)):
                    raise BinCheckError(s, f"{where}: residual {L.residual!r} of shape {[rc, rh, rw]} does not "
                                           f"fit an output of {[cout, oh, ow]}")
        elif isinstance(L, (MaxPool, AvgPool)):
            kh, kw = _pair(s, f"{where} kernel", L.kernel, 1, 1 << 16)
            sy, sx = _pair(s, f"{where} stride", L.stride, 1, 1 << 16)
            pt, pl, pb, pr = _pair(s, f"{where} pads", L.pads, 0, 1 << 16, 4)
            if isinstance(L, AvgPool):
                for f in ("mul", "shift"):
                    if getattr(L, f) is not None:
                        _int(s, f"{where} {f}", getattr(L, f), -(1 << 31), 1 << 31)
                if L.count_pads is not None:
                    _pair(s, f"{where} count_pads", L.count_pads, 0, 1 << 16, 4)
            expect = (cin, _conv_out(h + pt + pb, kh, sy, 1), _conv_out(w + pl + pr, kw, sx, 1))
        else:
            raise BinCheckError(s, f"{where}: unknown layer type {type(L).__name__}")
        if expect != (cout, oh, ow):
            raise BinCheckError(s, f"{where}: computes a {list(expect)} output from its {[cin, h, w]} input, "
                                   f"but its output tensor is {[cout, oh, ow]}")
    for cat in g.concats:
        parts = [tensor(f"concat {cat.name!r}", t) for t in cat.inputs]
        oc, oh, ow = tensor(f"concat {cat.name!r}", cat.output)
        if not parts or sum(p[0] for p in parts) != oc or any(p[1:] != (oh, ow) for p in parts):
            raise BinCheckError(s, f"concat {cat.name!r}: inputs {parts} do not make its output {[oc, oh, ow]}")
    for kind, descs in (("input", g.inputs), ("output", g.outputs)):
        for d in descs:
            shape = tensor(f"{kind} {d.name!r}", d.tensor)
            if tuple(d.onnx_shape)[:1] != (1,) or math.prod(d.onnx_shape) != math.prod(shape):
                raise BinCheckError(s, f"{kind} {d.name!r} of shape {list(d.onnx_shape)} does not match its tensor "
                                       f"{list(shape)}")
