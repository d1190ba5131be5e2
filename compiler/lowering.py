"""Lowering of the layers the ISA has no instruction for onto CONV and AVGPOOL instructions over
output *pieces*: rectangles of output pixels, possibly with a pixel stride, each computed by
ordinary instructions with its own kernel (or divisor).

* **Transposed convolutions and upsampling** (``Conv.up`` != (1, 1), ``Conv.edge``): by *phases*
  (sub-pixel decomposition). Output pixels Y = s*m + r of phase r depend on input pixels
  m + c_r + j through the taps t_r + s*j of the kernel only, so each phase is a stride-1
  convolution with a sub-kernel of about k/s taps, its outputs stored with a pixel stride of s
  (a strided STORE). Unlike inserting zeros into the input, this multiplies no zeros (s_y*s_x
  fewer MACs) and the input stays an ordinary tensor (any producer, or the graph input).
  Replicated borders (Resize's clamped coordinates, ``edge``) are exact: where a window reaches
  past the border, the taps falling on the same clamped pixel are summed into one (in integers, so
  the result equals the golden reference's evaluation on the replicated input bit for bit); those
  border rows and columns become pieces of their own with their own kernels.
* **Average pooling with a varying divisor** (``AvgPool.count_pads``): the output rows and
  columns whose windows count the same number of pixels form pieces, each an AVGPOOL with its own
  multiplier and shift; the padding itself is zeros in the halo as always.

Everything here is geometry and integer weights; the golden reference (``sim.golden``) evaluates
the layers from their definition instead, and the tests hold the two bit-exact.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .ir import AvgPool, CompileError, Conv

__all__ = ["Run", "Piece", "phase_runs", "conv_pieces", "conv_input_halo", "pool_counts", "pool_pieces"]


@dataclass(frozen=True)
class Run:
    """Consecutive outputs Y = out0 + step*i (i < count) of one dimension computed alike: output i
    reads input pixels lo0 + i + offs[j] for taps j (kernel indices taps[j]); several taps on the
    same offset (a clamped border) are summed."""
    out0: int
    step: int
    count: int
    lo0: int
    taps: tuple[int, ...]
    offs: tuple[int, ...]

    @property
    def length(self) -> int:
        """Kernel length of the piece (at least 1: a phase without taps gets one zero tap)."""
        return max(self.offs) + 1 if self.offs else 1


def phase_runs(n: int, out: int, k: int, up: int, pad_begin: int, edge: int) -> list[Run]:
    """Runs of one dimension of a stride-1 convolution (kernel k, ``pad_begin`` zeros in front) over
    the input of n pixels extended by ``edge`` replicated pixels per side and zero-inserted by
    ``up``, with ``out`` outputs."""
    runs: list[Run] = []
    for r in range(min(up, out)):
        t0 = (pad_begin - r) % up
        taps = tuple(range(t0, k, up))
        c = (r + t0 - pad_begin) // up
        groups: list[list] = []         # [key, first m, count, lo of the first m]
        for m in range(-(-(out - r) // up)):
            b = m + c - edge            # real input pixel under the phase's first tap
            q = [b + j for j in range(len(taps))]
            if edge:
                q = [min(max(v, 0), n - 1) for v in q]
            lo = min(q) if q else min(max(b, 0), n - 1)
            key = (lo - m, tuple(v - lo for v in q))
            if groups and groups[-1][0] == key:
                groups[-1][2] += 1
            else:
                groups.append([key, m, 1, lo])
        runs += [Run(out0=m0 * up + r, step=up, count=count, lo0=lo0, taps=taps, offs=offs)
                 for (_, offs), m0, count, lo0 in groups]
    return runs


@dataclass
class Piece:
    """One rectangle of a layer's output with the ordinary (stride-1, un-inserted) Conv computing it:
    output pixel (i, j) of the piece is pixel (out0 + step*i, ...) of the layer's output."""
    conv: Conv
    out0: tuple[int, int]
    step: tuple[int, int]
    size: tuple[int, int]


def _runs2d(L: Conv, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[list[Run], list[Run]]:
    kh, kw = L.kernel
    return (phase_runs(in_hw[0], out_hw[0], kh, L.up[0], L.pads[0], L.edge),
            phase_runs(in_hw[1], out_hw[1], kw, L.up[1], L.pads[1], L.edge))


def conv_input_halo(L: Conv, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) zero pixels the pieces of a transposed convolution read around the input."""
    ry, rx = _runs2d(L, in_hw, out_hw)

    def need(runs, n):
        before = max([0] + [-r.lo0 for r in runs])
        after = max([0] + [r.lo0 + r.count - 1 + r.length - 1 - (n - 1) for r in runs])
        return before, after
    (t, b), (l, r) = need(ry, in_hw[0]), need(rx, in_hw[1])
    return t, l, b, r


def _merge(w: np.ndarray, ry: Run, rx: Run) -> np.ndarray:
    """The piece's kernel (integer): taps landing on the same input offset summed."""
    k = np.zeros(w.shape[:2] + (ry.length, rx.length), dtype=np.int64)
    for ty, oy in zip(ry.taps, ry.offs):
        for tx, ox in zip(rx.taps, rx.offs):
            k[:, :, oy, ox] += w[:, :, ty, tx]
    return k


def conv_pieces(L: Conv, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[Piece]:
    """The pieces of a quantised transposed convolution (``up`` or ``edge`` set), each with a Conv
    of stride 1 whose (possibly negative) pads place its window on the input."""
    if L.wq is None:
        raise CompileError(f"layer {L.name!r}: not quantised")
    ry, rx = _runs2d(L, in_hw, out_hw)
    pieces = []
    for a in ry:
        for b in rx:
            k = _merge(L.wq, a, b)
            if k.min(initial=0) < -32768 or k.max(initial=0) > 32767:   # quantize bounds merged sums
                raise CompileError(f"layer {L.name!r}: a merged border weight overflows 16 bits")
            conv = replace(L, name=f"{L.name}.p{len(pieces)}", weight=k.astype(np.float32), wq=k.astype(np.int16),
                           stride=(1, 1), dilation=(1, 1), pads=(-a.lo0, -b.lo0, 0, 0), up=(1, 1), edge=0)
            pieces.append(Piece(conv, (a.out0, b.out0), (a.step, b.step), (a.count, b.count)))
    return pieces


def pool_counts(out: int, k: int, stride: int, pad_begin: int, lo: int, hi: int) -> np.ndarray:
    """Pixels of each window inside [lo, hi) (input coordinates), for one dimension."""
    start = np.arange(out) * stride - pad_begin
    return np.minimum(start + k, hi) - np.maximum(start, lo)


def _axis_counts(L: AvgPool, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    cp = L.count_pads
    cy = pool_counts(out_hw[0], L.kernel[0], L.stride[0], L.pads[0], -cp[0], in_hw[0] + cp[2])
    cx = pool_counts(out_hw[1], L.kernel[1], L.stride[1], L.pads[1], -cp[1], in_hw[1] + cp[3])
    return cy, cx


def window_counts(L: AvgPool, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """(OH, OW) divisor of every output of an AvgPool with ``count_pads``."""
    cy, cx = _axis_counts(L, in_hw, out_hw)
    return cy[:, None] * cx[None, :]


def _spans(c: np.ndarray) -> list[tuple[int, int]]:
    """(first, count) of the runs of equal values."""
    spans, start = [], 0
    for i in range(1, len(c) + 1):
        if i == len(c) or c[i] != c[start]:
            spans.append((start, i - start))
            start = i
    return spans


def pool_pieces(L: AvgPool, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[tuple[int, int, int, int, int]]:
    """(oy0, ox0, oh, ow, divisor) of the rectangles of an AvgPool's output with one divisor."""
    cy, cx = _axis_counts(L, in_hw, out_hw)
    return [(y0, x0, h, w, int(cy[y0] * cx[x0])) for y0, h in _spans(cy) for x0, w in _spans(cx)]
