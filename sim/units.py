"""On-chip state of one DLA cluster and the data effect of each instruction, vectorised with numpy.

Each instruction is executed as a handful of whole-array numpy operations; nothing here loops over
pixels, channels or lanes. The semantics are exactly the format docstrings of :mod:`arch.isa`.

Storage layouts are internal to the model (the ISA only fixes addresses):

* maps buffers: ``int16[mv, maps_words * lanes]`` (element addressed); a CONV's gather converts
  them to the float64 GEMM operand as it copies.
* kernel buffers: ``float64[mv, kernel_words, vv, lanes]`` (``kern``), a view of storage ordered
  ``[kernel_words, mv, vv, lanes]`` (``kern_wm``), so the kernel words of all VV units of
  consecutive MVs form one ``(K, nmv * nvv * lanes)`` matrix without a copy.
* accumulators: ``int64[mv, acc_entries, vv, lanes]``, wrapped to ``cfg.acc_bits``.
* output buffers: ``int16[mv, out_words, lanes]``; residual buffers: ``int16[mv, res_words, lanes]``.

A CONV is an im2col gather (one strided copy, no index arrays) and a float64 GEMM. float64 is exact
here: products of two int16 values are below 2**30 in magnitude and ``validate`` bounds the
reduction length by ``cfg.max_reduction`` (2**15 on the reference machine), so every partial sum is
an integer below 2**53, whatever order the BLAS adds in. (A machine whose kernel buffer allows
reductions of 2**23 terms or more would break that bound; such reductions are split into chunks
that are each exact and summed in int64.)

Speed (measured by bench/bench_speed.py): a large CONV uses ``threads`` threads. With onnxruntime
as the GEMM engine (:mod:`sim.gemm`) its GEMM runs on that many threads; with numpy's, the output
pixels being independent, the CONV is split by rows of output pixels (each thread calls
single-threaded BLAS on its rows and writes only its own accumulators and output words). Large
LOADs are split over the threads too. Whether
all MVs of a CONV see the same maps (gather once) or the same weights (one GEMM for all MVs) is
decided from per-word load tags instead of comparing the data. None of this changes a result.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from arch.isa import Buf, Init, Instr, maps_extent_conv
from arch.machine import MachineConfig
from arch.numerics import (ACT_NONE, ACT_RELU, DATA_MAX, DATA_MIN, RES_ADD, RES_MUL, activate, average, join_bias,
                           requantize, round_shift, saturation_counts, wrap)

from . import gemm

__all__ = ["ClusterUnits", "KernelOperands", "available_cores", "mv_list", "dma_offsets", "conv_maps_words", "pool_maps_words",
           "pitched_words"]


@lru_cache(maxsize=256)
def mv_list(mask: int) -> tuple[int, ...]:
    """MV indices selected by an ``mv_mask``."""
    return tuple(m for m in range(8) if mask >> m & 1)


class DmaPattern:
    """Word offsets (from ``dram_addr``) of a strided transfer, in transfer order ``w``.

    ``contiguous``: the transfer is one run of ``words`` words. ``unique``/``last``: when some
    destination words are written more than once (strides smaller than the runs), the distinct
    offsets and, for each, the last transfer word ``w`` that writes it (hardware writes in order
    ``w``, so the last one wins)."""

    __slots__ = ("offsets", "contiguous", "unique", "last", "words")

    def __init__(self, n0: int, n1: int, s1: int, n2: int, s2: int):
        off = ((np.arange(n2, dtype=np.intp) * s2)[:, None, None]
               + (np.arange(n1, dtype=np.intp) * s1)[None, :, None]
               + np.arange(n0, dtype=np.intp)[None, None, :]).ravel()
        self.words = off.size
        self.offsets = off
        self.contiguous = bool(np.array_equal(off, np.arange(off.size)))
        self.unique = None
        self.last = None
        if not self.contiguous:
            rev = off[::-1]
            uniq, first_rev = np.unique(rev, return_index=True)
            if uniq.size != off.size:
                self.unique = uniq
                self.last = off.size - 1 - first_rev


@lru_cache(maxsize=1024)
def dma_offsets(n0: int, n1: int, s1: int, n2: int, s2: int) -> DmaPattern:
    return DmaPattern(n0, n1, s1, n2, s2)


def _dma_pattern(i: Instr) -> DmaPattern:
    return dma_offsets(i.n0, i.n1, i.s1, i.n2, i.s2)


def conv_maps_words(i: Instr, lanes: int) -> np.ndarray:
    """Sorted maps-buffer words a CONV actually reads (for the hazard checker's exact test)."""
    pos = (((np.arange(i.oh) * i.sy)[:, None, None, None] + (np.arange(i.kh) * i.dy)[None, None, :, None]) * i.in_w
           + (np.arange(i.ow) * i.sx)[None, :, None, None] + (np.arange(i.kw) * i.dx)[None, None, None, :])
    pos = np.unique(pos)
    elems = i.maps_addr + pos[:, None] * i.cpitch + np.arange(i.cin)[None, :]
    return np.unique(elems // lanes)


def pool_maps_words(i: Instr) -> np.ndarray:
    """Sorted maps-buffer words a MAXPOOL actually reads."""
    pos = (((np.arange(i.oh) * i.sy)[:, None, None, None] + np.arange(i.kh)[None, None, :, None]) * i.in_w
           + (np.arange(i.ow) * i.sx)[None, :, None, None] + np.arange(i.kw)[None, None, None, :])
    pos = np.unique(pos)
    return np.unique(i.maps_addr + pos[:, None] * i.ppitch + np.arange(i.nb)[None, :])


def pitched_words(base: int, count: int, pitch: int, width: int) -> np.ndarray:
    """Sorted words ``base + p*pitch + v`` for p < count, v < width (pitch >= width)."""
    return (base + np.arange(count)[:, None] * pitch + np.arange(width)[None, :]).ravel()


class ClusterUnits:
    """The buffers of one cluster (all its MV and VV units), zeroed at construction."""

    def __init__(self, cfg: MachineConfig, threads: int = 1):
        if cfg.data_bits != 16:
            raise ValueError(f"machine {cfg.name!r}: the model (like the memory image format and "
                             f"arch.numerics) supports 16-bit data only, not data_bits={cfg.data_bits}")
        self.cfg = cfg
        #: longest reduction whose float64 sum is exact: |product| <= 2**30
        self.k_exact = 1 << (53 - 2 * (cfg.data_bits - 1))
        L, M, V = cfg.lanes, cfg.mv_per_cluster, cfg.vv_per_mv
        self.lanes = L
        self.maps = np.zeros((M, cfg.maps_words * L), dtype=np.int16)
        self.maps_w = self.maps.reshape(M, cfg.maps_words, L)        # word view
        #: per MV and maps word, the sequence number of the LOAD that wrote it last (0: none): equal
        #: nonzero tags in two MVs mean equal contents, a cheap test for a CONV's maps being the same
        #: in all MVs (so once a word is loaded, it must only be written through load())
        self.maps_tag = np.zeros((M, cfg.maps_words), dtype=np.int64)
        self._loads = 0
        self.kern_wm = np.zeros((cfg.kernel_words, M, V, L), dtype=np.float64)
        self.kern = self.kern_wm.transpose(1, 0, 2, 3)
        #: as maps_tag, per kernel word and VV unit (a LOAD of nvv < V units writes only some of a
        #: word's VV slices: a tag per word would call two MVs' words equal when only some slices are)
        self.kern_tag = np.zeros((cfg.kernel_words, M, V), dtype=np.int64)
        #: nonzero weights of each kernel word per MV and VV unit, kept by LOAD (see _bands): as
        #: with the tags, a loaded kernel word must only be written through load()
        self.kern_nnz = np.zeros((cfg.kernel_words, M, V), dtype=np.int64)
        self.acc = np.zeros((M, cfg.acc_entries, V, L), dtype=np.int64)
        self.out = np.zeros((M, cfg.out_words, L), dtype=np.int16)
        self.res = np.zeros((M, cfg.res_words, L), dtype=np.int16)
        self.saturations = 0            #: values clipped by the output stages (CONV, AVGPOOL)
        self.threads = max(int(threads), 1)   #: threads a large CONV is split over

    # ---- main-memory transfers ---------------------------------------------------------------
    def load(self, i: Instr, mem_words: np.ndarray, base_word: int) -> None:
        """LOAD: ``mem_words`` is the memory image viewed as ``int16[words, lanes]``."""
        plan = i.__dict__.get("_sim_load")
        if plan is None or plan[0] is not self.cfg:
            plan = self._load_plan(i)
        _, kind, src_shape, src_strides, n, dsts, simple = plan
        if simple is not None and (self.threads == 1 or n * self.lanes < _SPLIT_COPY):
            # the common case: one run of words into consecutive MVs, by slicing (cheaper than views)
            m0, m1, a = simple
            if kind == Buf.RES:
                self.res[m0:m1, a:a + n] = mem_words[base_word:base_word + n]
                return
            self._loads += 1
            self.maps_w[m0:m1, a:a + n] = mem_words[base_word:base_word + n]
            self.maps_tag[m0:m1, a:a + n] = self._loads
            return
        src = np.ndarray(src_shape, mem_words.dtype, mem_words, base_word * mem_words.strides[0], src_strides)
        if kind == Buf.RES:
            res, s0 = self.res, src[..., 0, :]
            for off, shape, strides in dsts:
                np.ndarray(shape, res.dtype, res, off, strides)[...] = s0
            return
        self._loads += 1
        if kind == Buf.MAPS:
            maps, big = self.maps, self.threads > 1 and n * self.lanes >= _SPLIT_COPY
            for off, shape, strides, m, a in dsts:    # a broadcast mask: all MVs in one assignment
                dst = np.ndarray(shape, maps.dtype, maps, off, strides)
                if big:
                    self._copy(dst, src)
                else:
                    dst[...] = src
                self.maps_tag[m, a:a + n] = self._loads
        else:
            for rows, m, nvv, src_kern in dsts:
                self._copy(self.kern_wm[rows, m, :nvv], src_kern(src))
                self.kern_tag[rows, m, :nvv] = self._loads
                self.kern_nnz[rows, m, :nvv] = _lane_nonzeros(src_kern(src))

    def _load_plan(self, i: Instr) -> tuple:
        """The data-independent part of a LOAD on this machine: its source view's shape and byte
        strides (from the memory word it starts at) and each destination's view or slices. Kept on
        the instruction (``Instr`` is immutable; the cache is not one of its fields) so that each
        run of a decoded program builds its views without recomputing them."""
        pat = _dma_pattern(i)
        n, L, a, e = pat.words, self.lanes, i.buf_addr, 2           # int16 elements
        # src: the transferred words as (n, 1, lanes) or, strided, (n2, n1, n0, 1, lanes), the 1
        # being the MV axis of the destination; a strided source is read in place, not gathered
        if pat.contiguous:
            shape, dense = (n,), (L,)
            src_shape, src_strides = (n, 1, L), (L, 0, 1)
        else:
            shape, dense = (i.n2, i.n1, i.n0), (i.n1 * i.n0 * L, i.n0 * L, L)
            src_shape, src_strides = shape + (1, L), (i.s2 * L, i.s1 * L, L, 0, 1)
        mvs = mv_list(i.mv_mask)
        if i.buf == Buf.RES:
            words = self.res.shape[1]
            dsts = tuple(((m * words + a) * L * e, shape + (L,), tuple(x * e for x in dense + (1,))) for m in mvs)
        elif i.buf == Buf.MAPS:
            words = self.maps_w.shape[1]
            dsts = tuple(((g[0] * words + a) * L * e, shape + (len(g), L),
                          tuple(x * e for x in dense + (words * L, 1)), slice(g[0], g[-1] + 1), a)
                         for g in _consecutive_runs(mvs))
        else:
            nvv = i.nvv

            def src_kern(src: np.ndarray) -> np.ndarray:
                return src.reshape(n // nvv, nvv, 1, L).swapaxes(1, 2)
            dsts = tuple((slice(a, a + n // nvv), slice(g[0], g[-1] + 1), nvv, src_kern)
                         for g in _consecutive_runs(mvs))
        simple = None
        if pat.contiguous and i.buf in (Buf.MAPS, Buf.RES) and len(_consecutive_runs(mvs)) == 1:
            words = (self.maps_w if i.buf == Buf.MAPS else self.res).shape[1]
            if a + n <= words and mvs[-1] < self.maps_w.shape[0]:     # else the views refuse it
                simple = (mvs[0], mvs[-1] + 1, a)
        plan = (self.cfg, i.buf, src_shape, tuple(x * e for x in src_strides), n, dsts, simple)
        i.__dict__["_sim_load"] = plan
        return plan

    def _copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        """``dst[...] = src``, split along the first axis over the threads when large."""
        rows = dst.shape[0]
        parts = min(self.threads, rows) if dst.size >= _SPLIT_COPY else 1
        if parts == 1:
            dst[...] = src
            return
        cuts = [rows * t // parts for t in range(parts + 1)]

        def part(t: int) -> None:
            dst[cuts[t]:cuts[t + 1]] = src[cuts[t]:cuts[t + 1]]
        pending = [_pool().submit(part, t) for t in range(1, parts)]
        part(0)
        for f in pending:
            f.result()

    def store(self, i: Instr, mem_words: np.ndarray, base_word: int) -> None:
        plan = i.__dict__.get("_sim_store")
        if plan is None or plan[0] is not self.cfg:
            plan = self._store_plan(i)
        _, words, shape, strides, pat = plan
        data = self.out[i.mv, i.buf_addr:i.buf_addr + words]
        if strides is None:                 # contiguous
            mem_words[base_word:base_word + words] = data
        elif pat is None:
            np.ndarray(shape, mem_words.dtype, mem_words, base_word * mem_words.strides[0], strides)[...] = \
                data.reshape(shape)
        else:  # overlapping destinations: the last word written in transfer order wins
            mem_words[base_word + pat.unique] = data[pat.last]

    def _store_plan(self, i: Instr) -> tuple:
        """The data-independent part of a STORE on this machine (kept on the instruction, as the
        LOAD's :meth:`_load_plan`): words moved, the output words' shape, the destination's byte
        strides (None: contiguous) and the pattern when destinations overlap."""
        pat = _dma_pattern(i)
        L, e = self.lanes, 2
        if i.mv >= self.out.shape[0] or i.buf_addr + pat.words > self.out.shape[1]:
            raise IndexError(f"STORE of output words {i.buf_addr}..{i.buf_addr + pat.words - 1} of MV {i.mv} "
                             f"outside the output buffers")
        if pat.contiguous:
            plan = (self.cfg, pat.words, (pat.words, L), None, None)
        else:
            plan = (self.cfg, pat.words, (i.n2, i.n1, i.n0, L), (i.s2 * L * e, i.s1 * L * e, L * e, e),
                    pat if pat.unique is not None else None)
        i.__dict__["_sim_store"] = plan
        return plan

    # ---- compute -----------------------------------------------------------------------------
    def _window(self, m: int, i: Instr, y0: int, y1: int) -> np.ndarray:
        """(rows, ow, kh, kw, cin) view of the maps of output rows y0..y1 of a CONV in MV m."""
        row, pix = i.in_w * i.cpitch, i.cpitch
        return _view(self.maps[m], i.maps_addr + y0 * i.sy * row, (y1 - y0, i.ow, i.kh, i.kw, i.cin),
                     (i.sy * row, i.sx * pix, i.dy * row, i.dx * pix, 1))

    def _windows(self, m0: int, nmv: int, i: Instr, y0: int, y1: int) -> np.ndarray:
        """(nmv, rows, ow, kh, kw, cin) view of :meth:`_window` of MVs m0..m0+nmv-1."""
        row, pix, per_mv = i.in_w * i.cpitch, i.cpitch, self.maps.shape[1]
        return _view(self.maps, m0 * per_mv + i.maps_addr + y0 * i.sy * row, (nmv, y1 - y0, i.ow, i.kh, i.kw, i.cin),
                     (per_mv, i.sy * row, i.sx * pix, i.dy * row, i.dx * pix, 1))

    def _im2col(self, m: int, i: Instr, out: np.ndarray, y0: int, y1: int) -> None:
        """Gather output rows y0..y1 of the (P, K) operand of a CONV from MV m's maps buffer into
        ``out`` (one strided copy)."""
        out.reshape(y1 - y0, i.ow, i.kh, i.kw, i.cin)[...] = self._window(m, i, y0, y1)

    def _matmul(self, A: np.ndarray, B: np.ndarray, threads: int = 1) -> np.ndarray:
        """Exact product of integer-valued float64 matrices (or stacks of them): float64 (integer
        valued, below 2**53) when the reduction is short enough, else int64."""
        K = A.shape[-1]
        if K <= self.k_exact:
            return gemm.matmul(A, B, threads)
        R = np.zeros(A.shape[:-1] + B.shape[-1:], dtype=np.int64)
        for k0 in range(0, K, self.k_exact):
            R += gemm.matmul(A[..., k0:k0 + self.k_exact], B[..., k0:k0 + self.k_exact, :], threads).astype(np.int64)
        return R

    @staticmethod
    def _same(tags: np.ndarray, data) -> bool:
        """Whether some MVs hold equal operands: ``tags[j]`` are the load tags of MV j's words and
        ``data(j)`` the words. Words with the same nonzero tag are known equal; words no LOAD wrote
        (zeroed, or set directly by a test) are compared by value. False only costs speed: the
        per-MV path gives the same result."""
        if not (tags[1:] == tags[0]).all():
            return False
        z = tags[0] == 0
        if not z.any():
            return True
        d0 = data(0)[z]
        return all(np.array_equal(d0, data(j)[z]) for j in range(1, len(tags)))

    def conv(self, i: Instr, kc: "KernelOperands | None" = None, keep_acc: bool = True,
             same_maps: bool | None = None) -> None:
        """CONV. ``kc``: this CONV's kernel operands captured on an earlier run whose kernel words
        held the same values (sim/replay.py decides when that holds); the kernel buffers are then
        not read, and the LOADs that only feed such CONVs need not have run. ``keep_acc=False``:
        nothing reads the accumulator entries this CONV writes before they are written again or
        the run ends (sim/replay.py finds when), so they are not written. ``same_maps``: what
        :meth:`maps_shared` returns for it now, when the caller knows (a replay: it depends only on
        which LOADs ran, see sim/replay.py)."""
        L = self.lanes
        mvs = mv_list(i.mv_mask)
        sel = _mv_index(mvs)
        nmv = len(mvs)
        P, K, N = i.oh * i.ow, i.kh * i.kw * i.cin, i.nvv * L
        if same_maps is None:
            same_maps = self.maps_shared(i)
        # Depthwise (and channel-wise) layers are block-diagonal CONVs: each output channel's
        # weights are zero but for one input channel. Their products are summed over the kernel
        # taps alone, skipping the zero terms (the same integers: the sums stay exact).
        want_bands = P * K * N * nmv >= _BAND_MIN and not _FORCE_GEMM
        if kc is not None:
            B, bias = kc.operands(want_bands, same_maps)
        else:
            B, bias = self._kernel_operands(i, mvs, want_bands, same_maps)
        # Large CONVs use the threads: onnxruntime's GEMM on all of them, or (numpy's engine) one
        # part each of the output rows, which are independent.
        big = self.threads > 1 and P * K * N * nmv >= _SPLIT_MACS
        gemm_threads = self.threads if big and not isinstance(B, tuple) and gemm.engine() == "onnxruntime" else 1
        ny = min(self.threads, i.oh) if big and gemm_threads == 1 else 1
        cuts = [i.oh * t // ny for t in range(ny + 1)]
        jobs = [(i, mvs, same_maps, B, bias, cuts[t], cuts[t + 1], gemm_threads, keep_acc) for t in range(ny)]
        if ny == 1:
            self.saturations += self._conv_rows(*jobs[0])
        else:
            pending = [_pool().submit(self._conv_rows, *job) for job in jobs[1:]]
            sat = self._conv_rows(*jobs[0])
            self.saturations += sat + sum(f.result() for f in pending)

    def maps_shared(self, i: Instr) -> bool:
        """Whether all MVs of CONV ``i`` hold the same maps words (maps loaded with a broadcast mask
        usually are: gathered once then), from the load tags (:meth:`_same`)."""
        mvs = mv_list(i.mv_mask)
        if len(mvs) == 1:
            return True
        L = self.lanes
        wlo, whi = i.maps_addr // L, -(-(i.maps_addr + maps_extent_conv(i)) // L)
        return self._same(self.maps_tag[_mv_index(mvs), wlo:whi], lambda j: self.maps_w[mvs[j], wlo:whi])

    def _kernel_operands(self, i: Instr, mvs: tuple[int, ...], want_bands: bool, same_maps: bool) -> tuple:
        """(B, bias) of a CONV from the kernel buffers: B the bands (:meth:`_bands`) when
        ``want_bands`` and the kernels are diagonal, else the GEMM's kernel operand (a view where
        it can be): (K, nmv * N) when the MVs share the maps, (K, N) when they share the weights,
        else (nmv, K, N); bias as :meth:`_bias`."""
        L, nmv, nvv = self.lanes, len(mvs), i.nvv
        sel = _mv_index(mvs)
        K, N = i.kh * i.kw * i.cin, i.nvv * L
        ka = i.kern_addr

        def weights(m: int) -> np.ndarray:
            """The kernel operand of MV m: (K, nvv*lanes), a view."""
            return self.kern[m, ka:ka + K, :nvv].reshape(K, N)
        bands = self._bands(i, mvs) if want_bands else None
        if bands is not None:
            B = bands
        elif same_maps:
            if nmv == 1:
                B = weights(mvs[0])
            elif isinstance(sel, slice):                    # consecutive MVs: one view of the kernel words
                B = self.kern_wm[ka:ka + K, sel, :nvv].reshape(K, nmv * N)
            else:
                B = np.concatenate([weights(m) for m in mvs], axis=1)
        elif self._same(self.kern_tag[ka:ka + K, sel, :nvv].transpose(1, 0, 2).reshape(nmv, K * nvv),
                        lambda j: self.kern[mvs[j], ka:ka + K, :nvv].reshape(K * nvv, L)):
            B = weights(mvs[0])                             # per-MV images, shared weights
        else:
            B = np.stack([weights(m) for m in mvs])
        return B, self._bias(i, sel)

    def _bias(self, i: Instr, sel) -> np.ndarray | None:
        """(nmv, 1, nvv, lanes) int64: one bias per output channel, for every pixel (INIT BIAS)."""
        if i.init != Init.BIAS:
            return None
        words = self.kern_wm[i.bias_addr:i.bias_addr + 2, sel, :i.nvv].astype(np.int64)
        return join_bias(words[0], words[1])[:, None]

    def capture_kernel(self, i: Instr) -> "KernelOperands":
        """The kernel operands of CONV ``i`` as the kernel buffers hold them now, in arrays of their
        own (see :class:`KernelOperands`), in the forms the CONV would use now."""
        mvs = mv_list(i.mv_mask)
        L, K, N = self.lanes, i.kh * i.kw * i.cin, i.nvv * self.lanes
        Wm = np.ascontiguousarray(self.kern[list(mvs), i.kern_addr:i.kern_addr + K, :i.nvv]).reshape(len(mvs), K, N)
        found = self._find_bands(i, mvs)
        bands = None if found is None else found[:3] + (self._band_weights(found[3]),)
        cat = len(mvs) > 1 and (bands is None or i.oh * i.ow * K * N * len(mvs) < _BAND_MIN) and self.maps_shared(i)
        return KernelOperands(Wm, bands, self._bias(i, _mv_index(mvs)), cat)

    def _conv_rows(self, i: Instr, mvs: tuple[int, ...], same_maps: bool, B: np.ndarray, bias, y0: int,
                   y1: int, gemm_threads: int = 1, keep_acc: bool = True) -> int:
        """Output rows y0..y1 of a CONV on the MVs ``mvs``: gather, GEMM, accumulate, output stage.
        Touches only its own accumulator entries and output words; returns the saturations."""
        L, nmv, nvv, ow = self.lanes, len(mvs), i.nvv, i.ow
        K = i.kh * i.kw * i.cin
        p0, Pc = y0 * ow, (y1 - y0) * ow
        # G: the products, (nmv, Pc, nvv, lanes) (a transposed view when the MVs shared the GEMM)
        if isinstance(B, tuple):     # block-diagonal kernels (see _bands)
            G = self._band_products(i, mvs, same_maps, B, y0, y1)
        elif same_maps:
            A = np.empty((Pc, K), dtype=np.float64)
            self._im2col(mvs[0], i, A, y0, y1)
            G = self._matmul(A, B, gemm_threads).reshape(Pc, nmv, nvv, L).transpose(1, 0, 2, 3)
        else:
            A = np.empty((nmv, Pc, K), dtype=np.float64)
            if mvs[-1] - mvs[0] == nmv - 1:             # consecutive MVs: one copy of all their windows
                A.reshape(nmv, y1 - y0, ow, i.kh, i.kw, i.cin)[...] = self._windows(mvs[0], nmv, i, y0, y1)
            else:
                for j, m in enumerate(mvs):
                    self._im2col(m, i, A[j], y0, y1)
            if B.ndim == 2:
                G = self._matmul(A.reshape(nmv * Pc, K), B, gemm_threads).reshape(nmv, Pc, nvv, L)
            else:
                G = self._matmul(A, B, gemm_threads).reshape(nmv, Pc, nvv, L)
        acc_bits = self.cfg.acc_bits
        a0, a1 = i.acc_addr + p0, i.acc_addr + p0 + Pc
        sel = _mv_index(mvs)
        R = np.empty((nmv, Pc, nvv, L), dtype=np.int64)
        # A bias is added to the float64 products as they are cast into R, which is exact while
        # |products| + |bias| < 2**53 and cheaper than a mixed-type add; earlier sums (INIT ACC)
        # are added in int64. When nothing reads the accumulators (keep_acc False), the sum cannot
        # wrap and no residual is added before the shift, the output stage's offset (see
        # _output_stage) is added here too, exact while |first term| + offset < 2**53.
        first = K * (1 << 30) + (1 << self.cfg.bias_bits - 1)       # bound of a first term
        exact = G.dtype == np.float64 and first < 1 << 53
        s = i.shift
        offset = ((1 << (s - 1)) if s else 0) + (1 << (15 + s)) if s <= 46 else 0
        if not (offset and exact and i.write and not keep_acc and not i.resid and i.init != Init.ACC
                and acc_bits <= 62 and first < 1 << (acc_bits - 1) and first + offset < 1 << 53):
            offset = 0
        if offset or (bias is not None and exact):
            add = np.float64(offset) if bias is None else (bias + offset).astype(np.float64)
            np.add(G, add, out=R, casting="unsafe")
        else:
            R[...] = G
            if bias is not None:
                R += bias
            elif i.init == Init.ACC:
                R += self.acc[sel, a0:a1, :nvv]
        # A first term (zero or a 32-bit bias plus K products of 2**30 at most) cannot wrap on a
        # 48-bit accumulator; an accumulation onto earlier sums can.
        if i.init == Init.ACC or K * (1 << 30) + (1 << self.cfg.bias_bits - 1) >= 1 << (acc_bits - 1):
            _wrap_inplace(R, acc_bits)
        if keep_acc:
            self.acc[sel, a0:a1, :nvv] = R
        if not i.write:
            return 0
        # one (nmv, Pc, nvv, lanes) view per buffer when the MVs are consecutive, else one per MV
        if isinstance(sel, slice):
            accs = [R]
            dst = [_pitched_mvs(self.out, mvs[0], nmv, i.out_addr + p0 * i.out_pitch, Pc, i.out_pitch, nvv)]
            res = [_pitched_mvs(self.res, mvs[0], nmv, i.res_addr + p0 * i.out_pitch, Pc, i.out_pitch, nvv)] \
                if i.resid else None
        else:
            accs = list(R)
            dst = [_pitched(self.out[m], i.out_addr + p0 * i.out_pitch, Pc, i.out_pitch, nvv) for m in mvs]
            res = [_pitched(self.res[m], i.res_addr + p0 * i.out_pitch, Pc, i.out_pitch, nvv) for m in mvs] \
                if i.resid else None
        return _output_stage(R, accs, i, res, acc_bits, dst, offset_added=bool(offset))

    def _bands(self, i: Instr, mvs: tuple[int, ...]) -> tuple | None:
        """Whether the kernel operand of every MV of a CONV is diagonal: all its nonzero weights
        (input channel c, output column n) have ``n - c == d``, one ``d`` per MV, and the channels
        c0..c1 with weights in any MV fit every MV's columns. Then ``(c0, c1, ds, W)``: ``ds`` the offsets
        per MV and ``W`` the (nmv, taps, c1 - c0) weights of that range (float64); else None.

        The data are tested, not the instruction: a weight off the diagonal sends the CONV through
        the GEMM. The band found first is kept on the instruction, and a later CONV checks it
        with the nonzero counts that LOAD keeps per kernel word (``kern_nnz``): the band holds all
        the nonzero weights iff their counts are equal. Kernel words no LOAD wrote (zero tags: set
        some other way) are tested in full."""
        K, taps, ka, nvv = i.kh * i.kw * i.cin, i.kh * i.kw, i.kern_addr, i.nvv
        sel = _mv_index(mvs)
        loaded = bool(self.kern_tag[ka:ka + K, sel, :nvv].all())
        plan = i.__dict__.get("_sim_band") if loaded else None
        if plan is not None and plan[0] is self.cfg:
            if plan[1] is None:
                return None                       # dense when first seen: the GEMM
            c0, c1, ds, idx = plan[1]
            W = self._band_weights(idx)
            if np.count_nonzero(W) == int(self.kern_nnz[ka:ka + K, sel, :nvv].sum()):
                return c0, c1, ds, W
        found = self._find_bands(i, mvs)
        if loaded:
            i.__dict__["_sim_band"] = (self.cfg, found)
        if found is None:
            return None
        c0, c1, ds, idx = found
        return c0, c1, ds, self._band_weights(idx)

    def _find_bands(self, i: Instr, mvs: tuple[int, ...]) -> tuple | None:
        """The test of :meth:`_bands` on the data: ``(c0, c1, ds, idx)`` with ``idx`` the index of
        the band's weights in ``kern``, or None."""
        K, N, L, cin, taps = i.kh * i.kw * i.cin, i.nvv * self.lanes, self.lanes, i.cin, i.kh * i.kw
        found = [self._band(self.kern[m, i.kern_addr:i.kern_addr + K, :i.nvv], taps, cin, N) for m in mvs]
        if any(f is None for f in found):
            return None
        held = [f for f in found if f[0] < f[1]]
        c0, c1 = (min(f[0] for f in held), max(f[1] for f in held)) if held else (0, 0)
        ds = tuple(f[2] if f[0] < f[1] else -c0 for f in found)   # an all-zero MV: any offset in range
        if any(c0 + d < 0 or c1 + d > N for d in ds):           # one channel range for all MVs
            return None
        M, V = self.kern_wm.shape[1:3]
        if mvs[-1] - mvs[0] == len(mvs) - 1 and all(d == ds[0] for d in ds):
            # weight (m, t, c) at kern_wm[kern_addr + t*cin + c, m, (c + d) // L, (c + d) % L]: one
            # strided view (a word's VV units and lanes are consecutive, column n at element n)
            word = M * V * L
            return c0, c1, ds, ((i.kern_addr + c0) * word + mvs[0] * V * L + c0 + ds[0],
                                (len(mvs), taps, c1 - c0), (V * L, cin * word, word + 1))
        c = np.arange(c0, c1)
        rows = i.kern_addr + np.arange(taps)[:, None] * cin + c[None, :]
        cols = np.array(ds)[:, None, None] + c[None, None, :]
        idx = (np.array(mvs)[:, None, None], rows[None], cols // L, cols % L)
        return c0, c1, ds, idx

    def _band_weights(self, idx: tuple) -> np.ndarray:
        """The (nmv, taps, c1 - c0) weights of a band: ``idx`` is a view's (offset, shape, strides)
        in ``kern_wm`` or an index of ``kern`` (:meth:`_find_bands`)."""
        if len(idx) == 3:
            return _view(self.kern_wm, *idx).copy()     # contiguous: einsum is slow on strided operands
        return self.kern[idx]

    @staticmethod
    def _band(W: np.ndarray, taps: int, cin: int, N: int) -> tuple | None:
        """One MV's diagonal (c0, c1, d) (:meth:`_bands`; (0, 0, 0) for an all-zero kernel) from its
        (K, nvv, lanes) kernel words, or None."""
        W2 = W.reshape(W.shape[0], N)
        # a dense kernel shows in its first and last rows: at most one nonzero each when diagonal
        if np.count_nonzero(W2[0]) > 1 or np.count_nonzero(W2[-1]) > 1:
            return None
        cs, ns = np.nonzero((W2.reshape(taps, cin, N) != 0).any(axis=0))
        if cs.size == 0:
            return (0, 0, 0)
        d = ns - cs
        if (d != d[0]).any():
            return None
        return int(cs.min()), int(cs.max()) + 1, int(d[0])

    def _band_products(self, i: Instr, mvs: tuple[int, ...], same_maps: bool, bands: tuple, y0: int,
                       y1: int) -> np.ndarray:
        """The products of output rows y0..y1 of a CONV with diagonal kernels (:meth:`_bands`), as
        (nmv, Pc, nvv, lanes) float64: in output column ``c + d`` the sum over the taps of the maps
        of input channel c times its weight, zero in the columns without weights."""
        L, nvv, ow, nmv = self.lanes, i.nvv, i.ow, len(mvs)
        Pc, taps, rows = (y1 - y0) * ow, i.kh * i.kw, y1 - y0
        c0, c1, ds, W = bands
        w = c1 - c0
        full = w > 0 and all(d == ds[0] for d in ds) and c0 + ds[0] == 0 and c1 + ds[0] == nvv * L
        G = (np.empty if full else np.zeros)((nmv, Pc, nvv * L), dtype=np.float64)   # full: einsum writes all
        if w == 0:
            return G.reshape(nmv, Pc, nvv, L)
        if same_maps or nmv == 1:
            A = np.empty((Pc, taps, w), dtype=np.float64)
            A.reshape(rows, ow, i.kh, i.kw, w)[...] = self._window(mvs[0], i, y0, y1)[..., c0:c1]
            spec = "ptc,mtc->mpc"
        else:
            A = np.empty((nmv, Pc, taps, w), dtype=np.float64)
            if mvs[-1] - mvs[0] == nmv - 1:         # consecutive MVs: one strided view of their maps
                A.reshape(nmv, rows, ow, i.kh, i.kw, w)[...] = self._windows(mvs[0], nmv, i, y0, y1)[..., c0:c1]
            else:
                for j, m in enumerate(mvs):
                    A[j].reshape(rows, ow, i.kh, i.kw, w)[...] = self._window(m, i, y0, y1)[..., c0:c1]
            spec = "mptc,mtc->mpc"
        if all(d == ds[0] for d in ds):
            np.einsum(spec, A, W, out=G[:, :, c0 + ds[0]:c1 + ds[0]])
        else:
            T = np.einsum(spec, A, W)
            for j, d in enumerate(ds):
                G[j, :, c0 + d:c1 + d] = T[j]
        return G.reshape(nmv, Pc, nvv, L)

    def _pool_window(self, mvs: tuple[int, ...], i: Instr) -> np.ndarray:
        """Read-only (nmv, oh, ow, kh, kw, nb, lanes) view of the pooling windows of the consecutive
        MVs ``mvs``."""
        L = self.lanes
        row, pix = i.in_w * i.ppitch * L, i.ppitch * L
        v = _view(self.maps, mvs[0] * self.maps.shape[1] + i.maps_addr * L,
                  (len(mvs), i.oh, i.ow, i.kh, i.kw, i.nb, L),
                  (self.maps.shape[1], i.sy * row, i.sx * pix, row, pix, L, 1))
        v.flags.writeable = False
        return v

    def _pool(self, i: Instr, reduce) -> None:
        """``out = reduce(windows)`` per MV, a group of consecutive MVs at a time; ``reduce`` maps
        (nmv, oh, ow, kh, kw, nb, lanes) windows to int16 (nmv, oh, ow, nb, lanes)."""
        P = i.oh * i.ow
        for g in _consecutive_runs(mv_list(i.mv_mask)):
            y = reduce(self._pool_window(g, i))
            _pitched_mvs(self.out, g[0], len(g), i.out_addr, P, i.out_pitch, i.nb)[...] = \
                y.reshape(len(g), P, i.nb, self.lanes)

    def maxpool(self, i: Instr) -> None:
        def window_max(w: np.ndarray) -> np.ndarray:
            # one running maximum per window tap: much faster than a reduction over two strided axes
            y = w[:, :, :, 0, 0].copy()
            for ky in range(i.kh):
                for kx in range(i.kw):
                    if ky or kx:
                        np.maximum(y, w[:, :, :, ky, kx], out=y)
            return y
        self._pool(i, window_max)

    def avgpool(self, i: Instr) -> None:
        def window_average(w: np.ndarray) -> np.ndarray:
            if i.kh * i.kw <= 16:     # a running sum per tap, as window_max: faster than a strided reduction
                total = w[:, :, :, 0, 0].astype(np.int64)
                for ky in range(i.kh):
                    for kx in range(i.kw):
                        if ky or kx:
                            total += w[:, :, :, ky, kx]
            else:
                total = w.sum(axis=(3, 4), dtype=np.int64)
            y, sat = _average(total, i.mul, i.shift) if i.kh * i.kw <= 1 << 15 else average(total, i.mul, i.shift)
            self.saturations += sat
            return y
        self._pool(i, window_average)


def _average(total: np.ndarray, mul: int, shift: int) -> tuple[np.ndarray, int]:
    """``arch.numerics.average(total, mul, shift)`` in fewer passes, ``total`` (int64, this call's
    own) used as scratch: the offset trick of :func:`_output_stage` (|total * mul| <= 2**46 for
    windows of at most 2**15 taps of int16 values and a 16-bit multiplier; the offset is below 2**62)."""
    if shift > 46:
        return average(total, mul, shift)
    total *= np.int64(mul)
    total += ((1 << (shift - 1)) if shift else 0) + (1 << (15 + shift))
    total >>= shift
    unsigned = total.view(np.uint64)
    sat = 0
    if unsigned.size and unsigned.max() > 0xFFFF:
        sat = int(np.count_nonzero(unsigned > 0xFFFF))
        np.clip(total, 0, 0xFFFF, out=total)
    y = np.empty(total.shape, dtype=np.int16)
    np.bitwise_xor(total, 0x8000, out=y.view(np.uint16), casting="unsafe")
    return y, sat


class KernelOperands:
    """The kernel operands of one CONV taken out of the kernel buffers (:meth:`ClusterUnits.capture_kernel`),
    for CONVs whose kernel words hold the same values on every run (sim/replay.py): the weights as
    one contiguous float64 array, ``(1, K, N)`` when all MVs have the same ones (a layer's weights
    broadcast to MVs that hold different pixels) else ``(nmv, K, N)``; the bands found in them (as
    :meth:`ClusterUnits._bands` returns them, or None); the bias (or None); and the MVs' weights
    side by side, the operand of MVs that share the maps (``cat``: built at once or on first use).
    Read-only once built; a form built by two threads at once is the same values either way."""

    __slots__ = ("W", "nmv", "bands", "bias", "_cat")

    def __init__(self, Wm: np.ndarray, bands: tuple | None, bias: np.ndarray | None, cat: bool):
        nmv = len(Wm)
        shared = all(np.array_equal(Wm[0], Wm[j]) for j in range(1, nmv))
        self.W = Wm[:1].copy() if shared and nmv > 1 else Wm
        self.nmv, self.bands, self.bias = nmv, bands, bias
        self._cat = None
        if cat and nmv > 1:
            self._side_by_side()

    def _side_by_side(self) -> np.ndarray:
        """(K, nmv * N): MV j's weights in columns j*N..(j+1)*N-1."""
        W = self.W
        self._cat = (np.tile(W[0], (1, self.nmv)) if len(W) == 1
                     else np.ascontiguousarray(W.transpose(1, 0, 2)).reshape(W.shape[1], -1))
        return self._cat

    @property
    def nbytes(self) -> int:
        return (self.W.nbytes + (0 if self._cat is None else self._cat.nbytes)
                + (0 if self.bands is None else self.bands[3].nbytes)
                + (0 if self.bias is None else self.bias.nbytes))

    def operands(self, want_bands: bool, same_maps: bool) -> tuple:
        """(B, bias) as :meth:`ClusterUnits._kernel_operands` gives them."""
        if want_bands and self.bands is not None:
            return self.bands, self.bias
        W = self.W
        if self.nmv == 1:
            return W[0], self.bias
        if not same_maps:
            return (W[0] if len(W) == 1 else W), self.bias
        return (self._cat if self._cat is not None else self._side_by_side()), self.bias


#: CONVs of fewer multiply-adds than this (as a GEMM, all MVs) always run as a GEMM: the test for a
#: diagonal kernel costs more than it saves on them (measured on the text-direction classifier and
#: MobileNetV3-small, bench/bench_speed.py)
_BAND_MIN = 1 << 18
#: tests set this to run every CONV as a GEMM (the reference for the diagonal path)
_FORCE_GEMM = False
#: CONVs of fewer MACs than this are not split over threads (the hand-off would cost more).
_SPLIT_MACS = 1 << 21
#: nor LOADs of fewer elements than this
_SPLIT_COPY = 1 << 17
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(available_cores() - 1, 1), thread_name_prefix="mdla-sim-conv")
        return _POOL


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _lane_nonzeros(x: np.ndarray) -> np.ndarray:
    """``np.count_nonzero(x, axis=-1)`` for int16 words (last axis: the lanes), 5-10x faster: the
    nonzero flags (one byte each) counted eight at a time as the bits of 64-bit words."""
    L = x.shape[-1]
    if L % 8 or not hasattr(np, "bitwise_count"):
        return np.count_nonzero(x, axis=-1)
    b = np.bitwise_count(np.ascontiguousarray(x != 0).view(np.uint64))
    out = b[..., 0].astype(np.int64)
    for k in range(1, L // 8):
        out += b[..., k]
    return out


def _wrap_inplace(x: np.ndarray, bits: int) -> None:
    """arch.numerics.wrap, in place (x is int64)."""
    if bits >= 64:
        return
    half = np.int64(1) << np.int64(bits - 1)
    x += half
    x &= (np.int64(1) << np.int64(bits)) - 1
    x -= half


def _output_stage(R: np.ndarray, accs: list[np.ndarray], i: Instr, res: list[np.ndarray] | None,
                  acc_bits: int, dst: list[np.ndarray], offset_added: bool = False) -> int:
    """Write ``arch.numerics.requantize(accs[j], i.shift, i.act, res[j], i.rshift, acc_bits, i.act_a,
    i.act_b, i.resid)`` into
    ``dst[j]`` (int16) for each MV j and return the saturation count. ``accs`` are views covering
    all of ``R`` (int64), which is used as scratch space; ``offset_added``: the offset below is in
    ``R`` already (added with the bias, see ClusterUnits._conv_rows).

    Same arithmetic in fewer passes: the offset 2**15 that maps the int16 range onto 0..2**16-1 is
    added before the shift (adding a multiple of 2**shift commutes with the floor shift), so one
    unsigned comparison finds the saturations, the clip is skipped when nothing saturates, the
    offset is removed by flipping the top bit while casting to 16 bits, and ReLU is a maximum on
    the 16-bit results."""
    s = i.shift
    if acc_bits <= 62 and (i.act not in (ACT_NONE, ACT_RELU) or (res is not None and i.resid == RES_MUL)):
        return _tabled_output_stage(R, accs, i, res, acc_bits, dst, offset_added)
    # the offset could overflow int64: the plain definition
    if acc_bits > 62 or s > 46:
        sat = 0
        for j, acc in enumerate(accs):
            y, n = requantize(acc, s, i.act, residual=None if res is None else res[j], rshift=i.rshift,
                              acc_bits=acc_bits, act_a=i.act_a, act_b=i.act_b,
                              mode=RES_MUL if i.resid == RES_MUL else RES_ADD)
            dst[j][...] = y
            sat += n
        return sat
    _offset_shift(R, accs, i, res, acc_bits, offset_added)
    # saturation is rare: one pass finds whether there is any, a second counts it only then
    unsigned = R.view(np.uint64)
    sat = 0
    if unsigned.size and unsigned.max() > 0xFFFF:
        # below the range ReLU gives 0 either way: not a saturation (arch.numerics.saturation_counts)
        sat = int(np.count_nonzero(R > 0xFFFF if i.act == ACT_RELU else unsigned > 0xFFFF))
        np.clip(R, 0, 0xFFFF, out=R)
    for acc, d in zip(accs, dst):
        np.bitwise_xor(acc, 0x8000, out=d.view(np.uint16), casting="unsafe")
        if i.act == ACT_RELU:                       # on the 16-bit results: a quarter of the bytes
            np.maximum(d, 0, out=d)
    return sat


def _offset_shift(R: np.ndarray, accs: list[np.ndarray], i: Instr, res: list[np.ndarray] | None,
                  acc_bits: int, offset_added: bool) -> None:
    """The output stages' common first steps, in place on ``R`` (which ``accs`` cover): add the
    residual ``res`` (if any) shifted left by rshift and wrap at acc_bits, add the rounding and the
    2**15 offset (unless ``offset_added``), shift right by i.shift: the results are 0..0xFFFF where
    they do not saturate."""
    s = i.shift
    if res is not None:
        for acc, r in zip(accs, res):
            acc += r.astype(np.int64) << np.int64(i.rshift)
        _wrap_inplace(R, acc_bits)
    if not offset_added:
        R += ((1 << (s - 1)) if s else 0) + (1 << (15 + s))
    R >>= s


@lru_cache(maxsize=64)
def _activation_table(act: int, a: int, b: int) -> np.ndarray:
    """``arch.numerics.activate`` of every int16 input (index ``x + 32768``) with fields ``a``, ``b``,
    as int16: one lookup per value instead of the definition's passes (the tables of SIGMOID/TANH,
    SILU and MISH take several each)."""
    x = np.arange(DATA_MIN, DATA_MAX + 1, dtype=np.int64)
    y = activate(x, act, a, b)
    assert y.min() >= DATA_MIN and y.max() <= DATA_MAX
    table = y.astype(np.int16)
    table.flags.writeable = False
    return table


def _tabled_output_stage(R: np.ndarray, accs: list[np.ndarray], i: Instr, res: list[np.ndarray] | None,
                         acc_bits: int, dst: list[np.ndarray], offset_added: bool = False) -> int:
    """:func:`_output_stage` for an activation other than NONE/RELU or a fused Mul: the steps of
    ``arch.numerics.requantize`` with the activation looked up in :func:`_activation_table`.

    As in :func:`_output_stage`, the offset 2**15 is added before the shift, so the shifted values
    are the table's indices and one unsigned maximum tells whether anything saturates (a value
    below the range is negative, one above it exceeds 0xFFFF); ``R`` is the scratch space."""
    table = _activation_table(i.act, i.act_a, i.act_b)
    below, above = _saturation_counts(i.act, i.act_a, i.act_b)
    mul = res is not None and i.resid == RES_MUL
    s = i.shift
    if s > 46:       # the offset could overflow int64: the plain steps
        return _tabled_output_stage_plain(accs, i, res, acc_bits, dst, table, below, above, mul)
    _offset_shift(R, accs, i, None if mul else res, acc_bits, offset_added)
    sat = 0
    first = None             # a fused Mul counts a value once even if both of its stages clip it
    unsigned = R.view(np.uint64)
    if unsigned.size and unsigned.max() > 0xFFFF:
        if mul and (below or above):
            first = [(acc < 0) | (acc > 0xFFFF) if below and above else (acc < 0) if below else (acc > 0xFFFF)
                     for acc in accs]
        elif not mul:
            if below:
                sat += int(np.count_nonzero(R < 0))
            if above:
                sat += int(np.count_nonzero(R > 0xFFFF))
        np.clip(R, 0, 0xFFFF, out=R)
    for j, acc in enumerate(accs):
        if not mul:      # the indices are 0..0xFFFF: 'wrap' is the identity, and the fastest mode
            table.take(acc, out=dst[j], mode="wrap")
            continue
        p = round_shift(table.take(acc).astype(np.int64) * res[j], i.rshift)
        clipped = (p < DATA_MIN) | (p > DATA_MAX)
        if first is not None:
            clipped |= first[j]
        np.clip(p, DATA_MIN, DATA_MAX, out=p)
        dst[j][...] = p
        sat += int(np.count_nonzero(clipped))
    return sat


_saturation_counts = lru_cache(maxsize=256)(saturation_counts)


def _tabled_output_stage_plain(accs, i: Instr, res, acc_bits: int, dst, table, below: bool, above: bool,
                               mul: bool) -> int:
    """:func:`_tabled_output_stage` step by step, for shifts too large for its offset."""
    sat = 0
    for j, acc in enumerate(accs):
        if res is not None and not mul:
            acc = wrap(acc + (res[j].astype(np.int64) << np.int64(i.rshift)), acc_bits)
        r = round_shift(acc, i.shift)
        clipped = (r < DATA_MIN) if below else None
        if above:
            clipped = (r > DATA_MAX) if clipped is None else clipped | (r > DATA_MAX)
        np.clip(r, DATA_MIN, DATA_MAX, out=r)
        r += -DATA_MIN
        y = table.take(r)
        if mul:
            p = round_shift(y.astype(np.int64) * res[j], i.rshift)
            out = (p < DATA_MIN) | (p > DATA_MAX)
            clipped = out if clipped is None else clipped | out
            np.clip(p, DATA_MIN, DATA_MAX, out=p)
            dst[j][...] = p
        else:
            dst[j][...] = y
        if clipped is not None:
            sat += int(np.count_nonzero(clipped))
    return sat


def _pitched(buf: np.ndarray, base: int, count: int, pitch: int, width: int) -> np.ndarray:
    """Writable (count, width, lanes) view of words ``base + p*pitch + v`` of a (words, lanes) buffer."""
    L = buf.shape[1]
    return _view(buf, base * L, (count, width, L), (pitch * L, L, 1))


def _pitched_mvs(buf: np.ndarray, m0: int, nmv: int, base: int, count: int, pitch: int, width: int) -> np.ndarray:
    """Writable (nmv, count, width, lanes) view of words ``base + p*pitch + v`` of MVs m0..m0+nmv-1
    of a (mv, words, lanes) buffer."""
    M, words, L = buf.shape
    return _view(buf, (m0 * words + base) * L, (nmv, count, width, L), (words * L, pitch * L, L, 1))


@lru_cache(maxsize=256)
def _mv_index(mvs: tuple[int, ...]) -> slice | list[int]:
    """Index of the MVs ``mvs`` along a buffer's MV axis: a slice (a view) when they are consecutive."""
    return slice(mvs[0], mvs[-1] + 1) if mvs[-1] - mvs[0] == len(mvs) - 1 else list(mvs)


@lru_cache(maxsize=256)
def _consecutive_runs(mvs: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """``mvs`` cut into runs of consecutive MVs."""
    runs: list[list[int]] = []
    for m in mvs:
        if runs and runs[-1][-1] == m - 1:
            runs[-1].append(m)
        else:
            runs.append([m])
    return tuple(tuple(r) for r in runs)


def _view(buf: np.ndarray, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """View of the C-contiguous array ``buf`` starting at its element ``offset``, with strides in
    elements. Unlike ``as_strided`` (8x slower to build, and views are built per instruction) it
    refuses a view that would reach beyond ``buf``."""
    e = buf.itemsize
    return np.ndarray(shape, buf.dtype, buf, offset * e, tuple([x * e for x in strides]))
