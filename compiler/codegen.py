"""Tiling and code generation: quantised graph -> one instruction stream per cluster, plus the
weight blobs.

Each layer is cut into *slots*. A slot is one compute instruction (CONV or MAXPOOL) run in lockstep
by up to ``mv_per_cluster`` MV units, the loads that fill its buffers and, when it produces final
outputs, the stores that drain them. The maps and kernel buffers and the output buffer are split
in two halves used alternately (double buffering), so the load engine fills one half while the
compute engine works on the other and the store engine drains the previous results.

Parallelism inside a cluster: for each layer the generator either gives the MV units different
output-channel groups of the same tile (maps broadcast, one kernel load per MV: *cout* mode) or
different tiles of the same channel group (kernel broadcast, one maps load per MV: *spatial*
mode), whichever its cycle estimate prefers. A reduction longer than a kernel-buffer half is split
into *chunks* (input-channel words, then kernel rows, then kernel columns) accumulated with
``init=ACC``. Tiles are near-equal blocks of rows and columns; in spatial mode the cut is chosen
among a few candidates so that the MV units' lockstep tile sets are full.

Kernel residency: consecutive slots that use the same weights form a *run*, processed chunk by
chunk; a chunk's weights are loaded once per run, into the kernel half that alternates per kernel
load, and the run's tiles keep their partial sums side by side in the accumulators. The half a
kernel load fills was last read two kernel loads earlier, by slots at least two back, which the
slot's first load already waits for (below). A layer's first run starts with a one-word chunk, so
that the loads exposed at the layer boundary are short.

Token protocol (queues: l2c, c2l, c2s, s2c; the k-th pop takes the k-th push):

* slot j: its last load pushes l2c; its CONV pops l2c. Its first load pops c2l if j >= 2 (the
  compute of slot j-2 has released this half) or, in the first slot of a layer after the first,
  the layer-boundary token. The CONV of slot j pushes c2l iff slot j+2 exists in the layer.
* write slot k (a slot with stores): the CONV pushes c2s and pops s2c if k >= 2 (the stores of
  write slot k-2 have drained this output half); the first store pops c2s, the last pushes s2c.
* layer boundary: one SYNC per outstanding s2c token (the last two write slots) waits for the
  stores; the last SYNC pushes c2l, which the next layer's first load pops, so no load reads a
  tensor before it is completely written.

Every token is produced by an instruction earlier in program order than its consumer, so in-order
dispatch with bounded queues cannot deadlock.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from arch.isa import Act, Buf, Init, Instr, Resid
from arch.machine import MachineConfig
from arch.numerics import reciprocal, split_bias

from .ir import AvgPool, CompileError, Conv, Graph, MaxPool
from .lowering import conv_pieces, pool_pieces
from .memmap import TensorLayout


@dataclass(frozen=True)
class Chunk:
    ky0: int
    ky1: int
    kx0: int
    kx1: int
    cw0: int
    cw1: int
    cin: int          #: input channels reduced, from element c0 of word cw0
    c0: int = 0       #: first channel reduced inside word cw0 (a group's channels need not start a word)

    @property
    def kh(self) -> int:
        return self.ky1 - self.ky0

    @property
    def kw(self) -> int:
        return self.kx1 - self.kx0

    @property
    def words(self) -> int:
        return self.cw1 - self.cw0

    @property
    def K(self) -> int:
        return self.kh * self.kw * self.cin


@dataclass(frozen=True)
class Tile:
    oy0: int
    oh: int
    ox0: int
    ow: int


@dataclass
class LayerCode:
    """What the generator did with one layer (for reports and the SDK's layer listing)."""
    name: str
    kind: str
    mode: str
    first_pc: int
    last_pc: int
    slots: int
    chunks: int
    tile: tuple[int, int]
    macs: int


@dataclass
class _Slot:
    loads: list[dict] = field(default_factory=list)
    compute: dict | None = None
    stores: list[dict] = field(default_factory=list)


def _instr(op: str, **f) -> dict:
    f["op"] = op
    return f


class CodeGen:
    """Generates the program of one cluster for one image slot of a memory map."""

    def __init__(self, cfg: MachineConfig, graph: Graph, layouts: dict[str, TensorLayout],
                 weights_addr: int, weights: "WeightStore", share: tuple[int, int] = (0, 1), barrier_mask: int = 0):
        """``share`` = (k, n): this program does the k-th of every n work items of each layer, the
        other n-1 clusters of ``barrier_mask`` the rest (clustersbatchmode); (0, 1): all of it."""
        self.cfg = cfg
        self.graph = graph
        self.layouts = layouts
        self.weights_addr = weights_addr
        self.weights = weights
        self.maps_half = cfg.maps_words // 2
        self.kern_half = cfg.kernel_words // 2
        self.out_half = cfg.out_words // 2
        self.res_half = cfg.res_words // 2
        self.share = share
        self.barrier_mask = barrier_mask
        self.program: list[Instr] = []
        self.layers: list[LayerCode] = []
        #: (first pc, last pc, index into graph.layers) of every layer of every round
        self.spans: list[tuple[int, int, int]] = []

    # ------------------------------------------------------------------ helpers
    def _addr(self, act_base: int, t: TensorLayout, y: int, x: int, cw: int) -> int:
        return act_base + t.offset + t.word_index(y, x, cw) * self.cfg.beat_bytes

    def _dma(self, op: str, addr: int, buf_addr: int, tile_rows: int, tile_cols: int,
             words: int, t: TensorLayout, step: tuple[int, int] = (1, 1), **extra) -> dict:
        """A LOAD/STORE of a rows x cols x words box of tensor t (channel words contiguous); with
        ``step``, of every step-th row and column (the pixels of one phase of an upsampling)."""
        pitch = t.pitch_words
        if words == pitch and step == (1, 1):   # whole pixels: each tile row is one contiguous run
            return _instr(op, dram_addr=addr, buf_addr=buf_addr, n0=tile_cols * words, n1=tile_rows,
                          s1=t.row_pixels * pitch, n2=1, s2=0, **extra)
        return _instr(op, dram_addr=addr, buf_addr=buf_addr, n0=words, n1=tile_cols, s1=step[1] * pitch,
                      n2=tile_rows, s2=step[0] * t.row_pixels * pitch, **extra)

    # ------------------------------------------------------------------ planning
    def _plan_chunks(self, cin: int, kh: int, kw: int, dy: int, dx: int) -> list[Chunk]:
        lanes, cap = self.cfg.lanes, self.kern_half - 2
        cwords = -(-cin // lanes)

        def real(cw0, cw1):
            return min(cin, cw1 * lanes) - cw0 * lanes

        def maps_ok(khc, kwc, ncw):
            return ((khc - 1) * dy + 1) * ((kwc - 1) * dx + 1) * ncw <= self.maps_half

        if kh * kw * cin <= cap and maps_ok(kh, kw, cwords):
            return [Chunk(0, kh, 0, kw, 0, cwords, cin)]
        per = cap // (kh * kw * lanes)
        while per >= 1 and not maps_ok(kh, kw, per):
            per -= 1
        if per >= 1:
            # as few chunks as fit, of equal size: a short last chunk cannot hide the next slot's loads
            per = -(-cwords // -(-cwords // per))
            return [Chunk(0, kh, 0, kw, c, min(c + per, cwords), real(c, min(c + per, cwords)))
                    for c in range(0, cwords, per)]
        rows = min(kh, cap // (kw * lanes))
        while rows >= 1 and not maps_ok(rows, kw, 1):
            rows -= 1
        if rows >= 1:
            rows = -(-kh // -(-kh // rows))
            return [Chunk(ky, min(ky + rows, kh), 0, kw, c, c + 1, real(c, c + 1))
                    for c in range(cwords) for ky in range(0, kh, rows)]
        cols = min(kw, cap // lanes)
        while cols >= 1 and not maps_ok(1, cols, 1):
            cols -= 1
        if cols < 1:
            raise CompileError("the kernel and maps buffers are too small for even one kernel element")
        return [Chunk(ky, ky + 1, kx, min(kx + cols, kw), c, c + 1, real(c, c + 1))
                for c in range(cwords) for ky in range(kh) for kx in range(0, kw, cols)]

    def _plan_tile(self, OH, OW, sy, sx, dy, dx, khm, kwm, cwm, out_words_per_px, acc_limit,
                   name: str, residual: bool = False) -> tuple[int, int]:
        out_limit = min(self.out_half, self.res_half) if residual else self.out_half

        def fits(h, w):
            if h * w > acc_limit or h * w * out_words_per_px > out_limit:
                return False
            rows = (h - 1) * sy + (khm - 1) * dy + 1
            cols = (w - 1) * sx + (kwm - 1) * dx + 1
            return rows * cols * cwm <= self.maps_half

        if not fits(1, 1):
            raise CompileError(f"layer {name!r}: one output pixel does not fit the buffers of this configuration")
        owb = OW if fits(1, OW) else max(w for w in range(1, OW + 1) if fits(1, w))
        ohb = max(h for h in range(1, OH + 1) if fits(h, owb))
        return ohb, owb

    @staticmethod
    def _tiles(OH, OW, ohb, owb) -> list[Tile]:
        return [Tile(y, min(ohb, OH - y), x, min(owb, OW - x))
                for y in range(0, OH, ohb) for x in range(0, OW, owb)]

    @staticmethod
    def _split_tiles(OH, OW, nr, nc) -> list[Tile]:
        """OH x OW cut into nr x nc near-equal blocks (sizes differ by at most one; larger first)."""
        def cuts(n, k):
            q, r = divmod(n, k)
            sizes = [q + 1] * r + [q] * (k - r)
            return [(sum(sizes[:i]), sizes[i]) for i in range(k)]
        return [Tile(y, h, x, w) for y, h in cuts(OH, nr) for x, w in cuts(OW, nc)]

    @staticmethod
    def _balanced(n: int, block: int, parts: int) -> int:
        """Block size no larger than ``block`` that splits n into a multiple of ``parts`` blocks if it can."""
        nb = -(-n // block)
        nb = -(-nb // parts) * parts
        return max(1, -(-n // nb))

    # ------------------------------------------------------------------ layers
    def lower(self, rounds: list[list[int]]) -> list[Instr]:
        """The program for ``rounds``: each round is the list of image slots (activation base
        addresses) processed together, one image, or one image per MV unit (mvbatch); rounds run
        one after the other. The layer report describes the first round."""
        planned = []
        for r, bases in enumerate(rounds):
            for layer in self.graph.layers:
                if isinstance(layer, Conv) and (layer.up != (1, 1) or layer.edge):
                    slots, info = self._pieces_slots(layer, bases)
                elif isinstance(layer, Conv):
                    slots, info, _ = self._conv_slots(layer, bases)
                elif isinstance(layer, AvgPool) and layer.count_pads is not None:
                    slots, info = self._avg_pieces_slots(layer, bases)
                elif isinstance(layer, (MaxPool, AvgPool)):
                    slots, info = self._pool_slots(layer, bases)
                else:  # pragma: no cover - the front end only produces these
                    raise CompileError(f"layer {layer.name!r}: no code generator for {type(layer).__name__}")
                planned.append((r, slots, info))
        token = False      # a layer-boundary token is waiting for the next layer's first load
        for n, (r, slots, info) in enumerate(planned):
            first_pc = len(self.program)
            following = planned[n + 1][1] if n + 1 < len(planned) else None
            token = self._emit(slots, pop_boundary=token, last_layer=following is None,
                               push_boundary=bool(following))
            self.spans.append((first_pc, len(self.program) - 1, n % len(self.graph.layers)))
            if r == 0:
                self.layers.append(LayerCode(first_pc=first_pc, last_pc=len(self.program) - 1,
                                             slots=len(slots), **info))
        self.program.append(Instr("END"))
        return self.program

    def _mine(self, work: list) -> list:
        """This program's share of a layer's work items (round-robin over the splitting clusters)."""
        k, n = self.share
        return work[k::n]

    def _group_inputs(self, L: Conv, g: tuple[int, int]) -> tuple[int, list[Chunk]]:
        """(first input word, chunks relative to it) reduced by output-channel group ``g``. For a
        grouped convolution only the input channels of the groups its output channels belong to
        (the block diagonal), starting inside a word where the group does."""
        cout, cin_g, kh, kw = L.wq.shape
        lanes = self.cfg.lanes
        if L.groups == 1:
            return 0, self._plan_chunks(cin_g, kh, kw, *L.dilation)
        cout_g = cout // L.groups
        o0, o1 = g[0] * lanes, min(cout, (g[0] + g[1]) * lanes)
        i0, i1 = o0 // cout_g * cin_g, ((o1 - 1) // cout_g + 1) * cin_g
        e = i0 % lanes
        chunks = [c if c.cw0 else Chunk(c.ky0, c.ky1, c.kx0, c.kx1, c.cw0, c.cw1, c.cin - e, e)
                  for c in self._plan_chunks(e + i1 - i0, kh, kw, *L.dilation)]
        return i0 // lanes, chunks

    def _conv_slots(self, L: Conv, bases: list[int], piece=None, first: int = 0, kfirst: int = 0):
        """Slots of a Conv; ``piece`` = (out0, step, size): only that rectangle of the output, every
        step-th pixel from out0 (a phase of a transposed convolution). ``first``, ``kfirst``: slots
        and kernel loads of the layer before these (the maps and kernel buffer halves alternate over
        the whole layer). Returns (slots, layer info, kernel loads made including ``kfirst``)."""
        cfg = self.cfg
        tin, tout = self.layouts[L.input], self.layouts[L.output]
        cout, cin, kh, kw = L.wq.shape
        sy, sx = L.stride
        dy, dx = L.dilation
        pt, pl = L.pads[0], L.pads[1]
        (Y0, X0), ostep, (OH, OW) = piece or ((0, 0), (1, 1), (tout.height, tout.width))
        V, M = cfg.vv_per_mv, cfg.mv_per_cluster
        cout_words = -(-cout // cfg.lanes)
        groups = [(g * V, min(V, cout_words - g * V)) for g in range(-(-cout_words // V))]  # (first word, nvv)
        ginfo = {g: self._group_inputs(L, g) for g in groups}
        allchunks = [c for _, cs in ginfo.values() for c in cs]
        khm = max(c.kh for c in allchunks)
        kwm = max(c.kw for c in allchunks)
        cwm = max(c.words for c in allchunks)
        nvv_max = max(n for _, n in groups)
        # A strided 1x1 convolution reads every sy-th row and sx-th column only: the DMA picks those
        # pixels (strided runs), so the maps buffer holds a dense tile and the CONV runs at stride 1.
        subsample = kh == kw == 1 and (sy, sx) != (1, 1)
        csy, csx = (1, 1) if subsample else (sy, sx)
        ohb, owb = self._plan_tile(OH, OW, csy, csx, dy, dx, khm, kwm, cwm, nvv_max, cfg.acc_entries, L.name,
                                   residual=bool(L.residual))
        tres = self.layouts[L.residual] if L.residual else None
        ktot = max(sum(c.K for c in cs) for _, cs in ginfo.values())
        pipe = cfg.conv_pipeline * max(len(cs) for _, cs in ginfo.values())

        # Tiles are near-equal blocks of rows and columns, no larger than (ohb, owb).
        nr0, nc0 = -(-OH // ohb), -(-OW // owb)
        # Candidate 1, cout mode: MVs take different channel groups of one tile (groups whose
        # instructions are the same: same nvv and, for grouped convolutions, the same chunks).
        alike: dict[tuple, list] = {}
        for g in groups:
            alike.setdefault((g[1], tuple(ginfo[g][1])), []).append(g)
        gsets = [gs[i:i + M] for gs in alike.values() for i in range(0, len(gs), M)]
        tiles_c = self._split_tiles(OH, OW, nr0, nc0)
        est_c = len(gsets) * sum(t.oh * t.ow * ktot + pipe for t in tiles_c)
        # Candidate 2, spatial mode: MVs take different tiles of one channel group, in lockstep, so
        # only tiles of one shape share a slot; among a few finer cuts, the one that leaves the
        # fewest MV units idle (by the compute-cycle estimate) wins.
        def sizes(n, k):     # {block size: count} of n cut into k near-equal blocks
            q, r = divmod(n, k)
            return {q + 1: r, q: k - r} if r else {q: k}

        est_s, cut = None, (nr0, nc0)
        for nr in range(nr0, min(OH, nr0 + 2 * M) + 1):
            for nc in range(nc0, min(OW, nc0 + (2 * M if owb < OW else M)) + 1):
                est = len(groups) * sum(-(-(a * b) // M) * (h * w * ktot + pipe)
                                        for h, a in sizes(OH, nr).items() for w, b in sizes(OW, nc).items())
                if est_s is None or est < est_s:
                    est_s, cut = est, (nr, nc)
        by_shape: dict[tuple[int, int], list[Tile]] = {}
        for t in self._split_tiles(OH, OW, *cut):
            by_shape.setdefault((t.oh, t.ow), []).append(t)
        tsets = [ts[i:i + M] for ts in by_shape.values() for i in range(0, len(ts), M)]

        # An item is (channel group, tile, image slot base); the items of a slot run in lockstep.
        items: list[list[tuple[tuple[int, int], Tile, int]]] = []
        if len(bases) > 1:
            mode = "mvbatch"   # each MV its own image: same weights (broadcast), maps per MV
            for g in groups:
                for t in tiles_c:
                    items.append([(g, t, b) for b in bases])
        elif est_c <= est_s:
            mode = "cout"
            for gs in gsets:
                for t in tiles_c:
                    items.append([(g, t, bases[0]) for g in gs])
        else:
            mode = "spatial"
            for g in groups:
                for ts in tsets:
                    items.append([(g, t, bases[0]) for t in ts])

        act = Act[L.act.upper()]
        resid = Resid.MUL if L.res_op == "mul" else Resid.ADD
        bcast = tres is not None and (tres.height, tres.width) != (OH, OW)   # a (C, 1, 1) operand

        def kernel_targets(it):
            if all(g == it[0][0] for g, _, _ in it):
                return [((1 << len(it)) - 1, it[0][0])]      # one channel group: broadcast
            return [(1 << m, g) for m, (g, _, _) in enumerate(it)]

        def item_chunks(it, first_run: bool) -> list[Chunk]:
            """The chunks an item reduces. The layer's first run starts with a one-word chunk: its
            small loads are all the layer waits for before its first CONV (the previous layer's
            stores must be done), and that CONV hides the next chunk's loads."""
            chunks = ginfo[it[0][0]][1]
            c0 = chunks[0]
            if first_run and first == 0 and L.groups == 1 and c0.words > 1 and c0.kh == kh and c0.kw == kw:
                lanes = cfg.lanes
                return [Chunk(0, kh, 0, kw, c0.cw0, c0.cw0 + 1, min(lanes, c0.cin)),
                        Chunk(0, kh, 0, kw, c0.cw0 + 1, c0.cw1, c0.cin - lanes)] + chunks[1:]
            return chunks

        # Kernel residency: consecutive items that use the same weights form a run; each chunk's
        # weights are loaded once per run and stay in their kernel half while the run's tiles pass
        # through (chunk-major order). With several chunks, the run's tiles keep their partial sums
        # side by side in the accumulators, which bounds a run's pixels.
        runs: list[list] = []
        used = 0
        for it in self._mine(items):
            px = it[0][1].oh * it[0][1].ow
            if runs and kernel_targets(runs[-1][0]) == kernel_targets(it) and (
                    len(item_chunks(it, len(runs) == 1)) == 1 or used + px <= cfg.acc_entries):
                runs[-1].append(it)
                used += px
            else:
                runs.append([it])
                used = px
        slots: list[_Slot] = []
        kloads = kfirst     # kernel loads so far in the layer: the k-th fills half k % 2
        for n_run, run in enumerate(runs):
            run_chunks = item_chunks(run[0], n_run == 0)
            accs, a = [], 0
            for it in run:
                accs.append(a if len(run_chunks) > 1 else 0)
                a += it[0][1].oh * it[0][1].ow
            ktargets = kernel_targets(run[0])
            for ci, ch in enumerate(run_chunks):
                # The half this load fills was last read by the previous-but-one kernel load's slots,
                # all at least two slots back, which this slot's first load already waits for.
                kbase = (kloads % 2) * self.kern_half
                kloads += 1
                last = ci == len(run_chunks) - 1
                for r, it in enumerate(run):
                    nmv = len(it)
                    mask = (1 << nmv) - 1
                    share_tile = all(t == it[0][1] and b == it[0][2] and ginfo[g][0] == ginfo[it[0][0]][0]
                                     for g, t, b in it)
                    nvv = it[0][0][1]
                    t0 = it[0][1]
                    s = _Slot()
                    half = (first + len(slots)) % 2
                    mbase = half * self.maps_half
                    in_rows = (t0.oh - 1) * csy + (ch.kh - 1) * dy + 1
                    in_cols = (t0.ow - 1) * csx + (ch.kw - 1) * dx + 1
                    # maps
                    targets = [(mask, t0, it[0][2], it[0][0])] if share_tile else \
                        [(1 << m, t, b, g) for m, (g, t, b) in enumerate(it)]
                    for mmask, t, b, g in targets:
                        y = t.oy0 * sy + ch.ky0 * dy - pt
                        x = t.ox0 * sx + ch.kx0 * dx - pl
                        addr = self._addr(b, tin, y, x, ginfo[g][0] + ch.cw0)
                        if subsample:
                            pitch = tin.pitch_words
                            s.loads.append(_instr("LOAD", dram_addr=addr, buf_addr=mbase, n0=ch.words, n1=t.ow,
                                                  s1=sx * pitch, n2=t.oh, s2=sy * tin.row_pixels * pitch,
                                                  buf=Buf.MAPS, mv_mask=mmask, nvv=0))
                        else:
                            s.loads.append(self._dma("LOAD", addr, mbase, in_rows, in_cols, ch.words, tin,
                                                     buf=Buf.MAPS, mv_mask=mmask, nvv=0))
                    # kernels, with the run's first tile only
                    if r == 0:
                        for kmask, g in ktargets:
                            off, nwords = self.weights.conv_blob(L, g, ch, ci == 0, nvv, ginfo[g][0])
                            s.loads.append(_instr("LOAD", buf=Buf.KERNEL, mv_mask=kmask, nvv=nvv,
                                                  dram_addr=self.weights_addr + off, buf_addr=kbase,
                                                  n0=nwords, n1=1, s1=0, n2=1, s2=0))
                    rbase = half * self.res_half
                    if last and tres is not None:   # the residual tile, laid out like the output tile
                        for m, (g, t, b) in enumerate(it):
                            if bcast:   # the same channel words for every pixel: DMA strides of 0
                                s.loads.append(_instr("LOAD", dram_addr=self._addr(b, tres, 0, 0, g[0]),
                                                      buf_addr=rbase, n0=g[1], n1=t.ow, s1=0, n2=t.oh, s2=0,
                                                      buf=Buf.RES, mv_mask=1 << m, nvv=0))
                            else:
                                s.loads.append(self._dma("LOAD", self._addr(b, tres, t.oy0, t.ox0, g[0]), rbase,
                                                         t.oh, t.ow, g[1], tres, buf=Buf.RES, mv_mask=1 << m, nvv=0))
                    s.compute = _instr(
                        "CONV", mv_mask=mask, nvv=nvv, maps_addr=mbase * cfg.lanes + ch.c0, in_w=in_cols,
                        cpitch=ch.words * cfg.lanes, cin=ch.cin, kh=ch.kh, kw=ch.kw, sy=csy, sx=csx, dy=dy, dx=dx,
                        oh=t0.oh, ow=t0.ow, kern_addr=kbase + (2 if ci == 0 else 0), bias_addr=kbase,
                        acc_addr=accs[r], out_addr=0, out_pitch=nvv, init=Init.BIAS if ci == 0 else Init.ACC,
                        write=int(last), shift=L.shift if last else 0, act=act if last else Act.NONE,
                        act_a=L.act_a if last else 0, act_b=L.act_b if last else 0,
                        resid=resid if last and tres is not None else Resid.NONE,
                        res_addr=rbase if last and tres is not None else 0,
                        rshift=L.res_shift if last and tres is not None else 0)
                    if last:
                        for m, (g, t, b) in enumerate(it):
                            s.stores.append(self._dma("STORE", self._addr(b, tout, Y0 + ostep[0] * t.oy0,
                                                                          X0 + ostep[1] * t.ox0, g[0]), 0,
                                                      t.oh, t.ow, g[1], tout, step=ostep, mv=m))
                    slots.append(s)
        macs = OH * OW * cout * kh * kw * cin
        nchunks = max(len(cs) for _, cs in ginfo.values())
        return slots, dict(name=L.name, kind=L.kind, mode=mode, chunks=nchunks, tile=(ohb, owb), macs=macs), kloads

    @staticmethod
    def _is_copy(P: Conv) -> bool:
        """Whether a piece only copies each channel (nearest upsampling): depthwise 1x1, weight 1.0
        exactly, no bias, activation or residual."""
        cout, cin_g, kh, kw = P.wq.shape
        return (P.groups == cout and cin_g == 1 and (kh, kw) == (1, 1) and not P.residual and P.act == "none"
                and 0 <= P.shift < 15 and bool(np.all(P.wq == 1 << P.shift)) and not np.any(P.bq))

    def _pieces_slots(self, L: Conv, bases: list[int]):
        """A transposed convolution or upsampling: the slots of its pieces, one after the other. A
        piece that only copies channels (nearest upsampling) runs on the pooling unit, which is
        lane-parallel over channels: an AVGPOOL over a 1x1 window with multiplier 1.0 (exact)."""
        tin, tout = self.layouts[L.input], self.layouts[L.output]
        slots, macs, chunks, kloads = [], 0, 1, 0
        for p in conv_pieces(L, (tin.height, tin.width), (tout.height, tout.width)):
            if self._is_copy(p.conv):
                copy = AvgPool(p.conv.name, p.conv.nodes, L.input, L.output, (1, 1), (1, 1), p.conv.pads)
                s, info = self._pool_slots(copy, bases, (0, 0) + p.size, reciprocal(1), len(slots), (p.out0, p.step))
            else:
                s, info, kloads = self._conv_slots(p.conv, bases, (p.out0, p.step, p.size), len(slots), kloads)
            slots += s
            macs += info["macs"]
            chunks = max(chunks, info["chunks"])
        return slots, dict(name=L.name, kind=L.kind, mode=info["mode"], chunks=chunks, tile=info["tile"], macs=macs)

    def _avg_pieces_slots(self, L: AvgPool, bases: list[int]):
        """Average pooling whose divisor varies at the borders: one set of AVGPOOL slots per
        rectangle of outputs with the same divisor, each with its multiplier."""
        tin, tout = self.layouts[L.input], self.layouts[L.output]
        slots = []
        for y0, x0, h, w, n in pool_pieces(L, (tin.height, tin.width), (tout.height, tout.width)):
            s, info = self._pool_slots(L, bases, (y0, x0, h, w), L.muls[n], len(slots))
            slots += s
        return slots, info

    def _pool_slots(self, L: MaxPool | AvgPool, bases: list[int], region=None, muls=None, first: int = 0,
                    place=None):
        """Slots of a pooling layer; ``region`` = (oy0, ox0, oh, ow): only that rectangle of the
        output, averaged with ``muls`` = (mul, shift); ``first`` as for :meth:`_conv_slots`;
        ``place`` = (out0, step): the region's outputs go to pixels out0 + step*(y, x) instead."""
        cfg = self.cfg
        tin, tout = self.layouts[L.input], self.layouts[L.output]
        kh, kw = L.kernel
        sy, sx = L.stride
        Y0, X0, OH, OW = region or (0, 0, tout.height, tout.width)
        pt, pl = L.pads[0] - Y0 * sy, L.pads[1] - X0 * sx
        M = cfg.mv_per_cluster
        cw_total = tin.cwords
        nbw_max = cw_total
        while nbw_max > 1 and (kh * kw * nbw_max > self.maps_half or nbw_max > self.out_half):
            nbw_max -= 1
        # Pooling is bound by the memory port: fewer channel words per slot give taller tiles, whose
        # input windows overlap less, so the candidate that moves the fewest words wins (ties: compute).
        best = None
        for nbw in range(nbw_max, 0, -1):
            ohb, owb = self._plan_tile(OH, OW, sy, sx, 1, 1, kh, kw, nbw, nbw, 1 << 30, L.name)
            if owb == OW:
                ohb = self._balanced(OH, ohb, M)
            # Each MV pools its own (channel words, tile, image) item; nothing is shared.
            work = [(cw, min(nbw, cw_total - cw), t, b) for cw in range(0, cw_total, nbw)
                    for t in self._tiles(OH, OW, ohb, owb) for b in bases]
            by_shape: dict[tuple[int, int, int], list] = {}
            for w in work:
                by_shape.setdefault((w[1], w[2].oh, w[2].ow), []).append(w)
            groups = [ws[i:i + M] for ws in by_shape.values() for i in range(0, len(ws), M)]
            port = sum(nb * (t.oh * t.ow + ((t.oh - 1) * sy + kh) * ((t.ow - 1) * sx + kw)) + 2 * cfg.mem_latency
                       for _, nb, t, _ in work)
            compute = sum(cfg.pool_pipeline + g[0][2].oh * g[0][2].ow * g[0][1] * kh * kw for g in groups)
            est = (max(port, compute), compute)
            if best is None or est < best[0]:
                best = (est, nbw, ohb, owb, groups)
        _, nbw, ohb, owb, groups = best
        slots = []
        for it in self._mine(groups):
            s = _Slot()
            half = (first + len(slots)) % 2
            mbase = half * self.maps_half
            nb, t0 = it[0][1], it[0][2]
            in_rows = (t0.oh - 1) * sy + kh
            in_cols = (t0.ow - 1) * sx + kw
            for m, (cw, _, t, b) in enumerate(it):
                y, x = t.oy0 * sy - pt, t.ox0 * sx - pl
                s.loads.append(self._dma("LOAD", self._addr(b, tin, y, x, cw), mbase, in_rows, in_cols,
                                         nb, tin, buf=Buf.MAPS, mv_mask=1 << m, nvv=0))
            avg = dict(zip(("mul", "shift"), muls or (L.mul, L.shift))) if isinstance(L, AvgPool) else {}
            s.compute = _instr("AVGPOOL" if avg else "MAXPOOL", mv_mask=(1 << len(it)) - 1, maps_addr=mbase,
                               in_w=in_cols, ppitch=nb, nb=nb, kh=kh, kw=kw, sy=sy, sx=sx, oh=t0.oh, ow=t0.ow,
                               out_addr=0, out_pitch=nb, **avg)
            (SY0, SX0), ostep = place or ((Y0, X0), (1, 1))
            for m, (cw, _, t, b) in enumerate(it):
                s.stores.append(self._dma("STORE", self._addr(b, tout, SY0 + ostep[0] * t.oy0, SX0 + ostep[1] * t.ox0,
                                                          cw), 0, t.oh, t.ow, nb, tout, step=ostep, mv=m))
            slots.append(s)
        kind = "avgpool" if isinstance(L, AvgPool) else "maxpool"
        mode = "mvbatch" if len(bases) > 1 else "spatial"
        return slots, dict(name=L.name, kind=kind, mode=mode, chunks=1, tile=(ohb, owb), macs=0)

    # ------------------------------------------------------------------ tokens and emission
    def _emit(self, slots: list[_Slot], pop_boundary: bool, last_layer: bool, push_boundary: bool) -> bool:
        """Append a layer's slots with their tokens and the layer boundary; returns whether a
        boundary token is left for the next layer's first load. ``pop_boundary``: one is waiting;
        ``push_boundary``: the next layer has work on this cluster (only then is a token pushed, so
        that it is always the latest boundary a load waits for)."""
        J = len(slots)
        k = 0
        for j, s in enumerate(slots):
            s.loads[-1]["push_next"] = 1
            if j >= 2 or (j == 0 and pop_boundary):
                s.loads[0]["pop_next"] = 1
            c = s.compute
            c["pop_prev"] = 1
            if j + 2 < J:
                c["push_prev"] = 1
            # The output half alternates per write slot; the compute of write slot k waits for the
            # stores of write slot k-2.
            if s.stores:
                c["out_addr"] = (k % 2) * self.out_half
                c["push_next"] = 1
                if k >= 2:
                    c["pop_next"] = 1
                for st in s.stores:
                    st["buf_addr"] += c["out_addr"]
                s.stores[0]["pop_prev"] = 1
                s.stores[-1]["push_prev"] = 1
                k += 1
            for d in s.loads + [c] + s.stores:
                op = d.pop("op")
                self.program.append(Instr(op, **d))
        if J == 0 and pop_boundary:
            raise CompileError("internal: a boundary token would be left unconsumed")   # pragma: no cover
        bound = [("SYNC", dict(pop_next=1)) for _ in range(min(2, k))]
        if self.barrier_mask and not last_layer:
            bound.append(("BARRIER", dict(mask=self.barrier_mask)))
        if push_boundary and not last_layer:
            if not bound:
                bound = [("SYNC", dict())]
            bound[-1][1]["push_prev"] = 1
        for op, d in bound:
            self.program.append(Instr(op, **d))
        return push_boundary and not last_layer


class WeightStore:
    """The weights region: kernel blobs laid out exactly as a KERNEL load deals them to the VV
    units ([word][vv][lane]), each stored once however often it is loaded."""

    def __init__(self, cfg: MachineConfig):
        self.cfg = cfg
        self.chunks: list[bytes] = []
        self.size = 0
        self._index: dict[tuple, tuple[int, int]] = {}

    def conv_blob(self, L: Conv, group: tuple[int, int], ch: Chunk, with_bias: bool, nvv: int,
                  cw_base: int = 0) -> tuple[int, int]:
        """(byte offset in the weights region, words) of the blob for channel group ``group`` and chunk
        ``ch`` (whose words count from input word ``cw_base``)."""
        key = (L.name, group, ch, with_bias, nvv, cw_base)
        hit = self._index.get(key)
        if hit is not None:
            return hit
        lanes = self.cfg.lanes
        w0 = group[0] * lanes
        nch = nvv * lanes
        cout = L.wq.shape[0]
        sel = np.zeros((nch,) + L.wq.shape[1:], dtype=np.int16)
        real = max(0, min(cout - w0, nch))
        sel[:real] = L.wq[w0:w0 + real]
        ci0 = (cw_base + ch.cw0) * lanes + ch.c0
        if L.groups == 1:
            dense = sel[:, ci0:ci0 + ch.cin]
        else:   # block diagonal: output channel o takes input channel i only in its own group
            cout_g, cin_g = cout // L.groups, L.wq.shape[1]
            o = np.arange(w0, w0 + nch)[:, None] // cout_g
            i = np.arange(ci0, ci0 + ch.cin)[None, :]
            local = i - o * cin_g
            inside = (local >= 0) & (local < cin_g)
            dense = np.where(inside[:, :, None, None], sel[np.arange(nch)[:, None], np.clip(local, 0, cin_g - 1)], 0)
        # (cout, cin, ky, kx) -> rows k = (ky*kw + kx)*cin + ci, columns = output channels
        wk = dense[:, :, ch.ky0:ch.ky1, ch.kx0:ch.kx1]
        rows = wk.transpose(2, 3, 1, 0).reshape(ch.K, nch)
        if with_bias:
            b = np.zeros(nch, dtype=np.int64)
            b[:real] = L.bq[w0:w0 + real]
            lo, hi = split_bias(b)
            rows = np.concatenate([lo[None, :], hi[None, :], rows], axis=0)
        data = np.ascontiguousarray(rows.astype("<i2")).tobytes()
        off = self.size
        self.chunks.append(data)
        pad = (-len(data)) % 64
        if pad:
            self.chunks.append(b"\0" * pad)
        self.size += len(data) + pad
        words = rows.shape[0] * nvv
        self._index[key] = (off, words)
        return off, words

    def tobytes(self) -> bytes:
        return b"".join(self.chunks)
