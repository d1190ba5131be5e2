"""Fixed-point numerics of the DLA, defined once.

Used by the golden reference, the functional model and the runtime's float conversion (and
mirrored bit for bit by the RTL's output stage):

* Activations and weights are 16-bit two's complement fixed point. A Q format is named by its
  number of fractional bits ``frac``: the value of integer q is ``q / 2**frac`` (Q8.8 is frac 8).
* Float -> fixed (host side): round to nearest, ties to even (``numpy.rint``), then saturate.
* Products are exact; the accumulator is ``acc_bits`` wide and wraps, so a reduction is exactly
  the integer dot product in any order (the compiler keeps reductions short enough that the
  wrap never happens; see ``MachineConfig.max_reduction``).
* Requantisation: arithmetic right shift by ``shift`` with round-half-up (add ``2**(shift-1)``
  first), then saturate to 16 bits. Saturation events are counted.
* ReLU is exact: ``max(x, 0)`` after saturation.
* A fused residual is added to the accumulator, shifted left into its format, before rounding.
* Average pooling: the exact window sum times a 16-bit multiplier ``mul`` ~ 2**shift / n, then the
  same round-half-up shift and saturation (:func:`reciprocal` chooses mul and shift).
"""
from __future__ import annotations

import numpy as np

DATA_BITS = 16
DATA_MIN = -(1 << (DATA_BITS - 1))
DATA_MAX = (1 << (DATA_BITS - 1)) - 1

ACT_NONE = 0
ACT_RELU = 1


def saturate(x: np.ndarray, bits: int = DATA_BITS) -> tuple[np.ndarray, int]:
    """Clip an integer array to ``bits`` signed; returns (int array, number of values clipped)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    over = int(np.count_nonzero((x < lo) | (x > hi)))
    return np.clip(x, lo, hi), over


def float_to_fixed(x, frac: int, bits: int = DATA_BITS) -> tuple[np.ndarray, int]:
    """Float -> fixed point with ``frac`` fractional bits: round half to even, saturate.

    Returns (int16/int32 array, saturation count). NaN is rejected rather than silently mapped."""
    x = np.asarray(x, dtype=np.float64)
    if np.isnan(x).any():
        raise ValueError("input contains NaN, which has no fixed-point value")
    q = np.rint(np.ldexp(x, frac))
    if bits <= 16:      # saturate in float64 (exact for these bounds): fewer passes over big weights
        lo, hi = float(-(1 << (bits - 1))), float((1 << (bits - 1)) - 1)
        over = int(np.count_nonzero(q < lo)) + int(np.count_nonzero(q > hi))
        return np.clip(q, lo, hi, out=q).astype(np.int16), over
    q, over = saturate(np.clip(q, -2.0**62, 2.0**62).astype(np.int64), bits)
    return q.astype(np.int64), over


def fixed_to_float(q, frac: int) -> np.ndarray:
    return np.ldexp(np.asarray(q, dtype=np.float64), -frac).astype(np.float32)


def wrap(x: np.ndarray, bits: int) -> np.ndarray:
    """Two's-complement wrap of an int64 array to ``bits`` bits (the accumulator's width)."""
    if bits >= 64:
        return x
    half = np.int64(1) << np.int64(bits - 1)
    return ((x + half) & ((np.int64(1) << np.int64(bits)) - 1)) - half


def round_shift(acc: np.ndarray, shift: int) -> np.ndarray:
    """Arithmetic right shift with round-half-up: floor((acc + 2**(shift-1)) / 2**shift)."""
    acc = np.asarray(acc, dtype=np.int64)
    if shift == 0:
        return acc
    return (acc + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift)


def activate(x: np.ndarray, act: int) -> np.ndarray:
    if act == ACT_NONE:
        return x
    if act == ACT_RELU:
        return np.maximum(x, 0)
    raise ValueError(f"unknown activation code {act}")


def requantize(acc: np.ndarray, shift: int, act: int = ACT_NONE, residual: np.ndarray | None = None,
               rshift: int = 0, acc_bits: int = 48) -> tuple[np.ndarray, int]:
    """Output stage: add the residual (shifted left by ``rshift``, wrapping at ``acc_bits``), round_shift,
    saturate to 16 bits, activate. Returns (int16 array, saturations)."""
    acc = np.asarray(acc, dtype=np.int64)
    if residual is not None:
        acc = wrap(acc + (np.asarray(residual, dtype=np.int64) << np.int64(rshift)), acc_bits)
    y, over = saturate(round_shift(acc, shift))
    return activate(y, act).astype(np.int16), over


def reciprocal(n: int, mul_bits: int = 16) -> tuple[int, int]:
    """(mul, shift) with mul < 2**mul_bits and mul / 2**shift the closest such approximation of 1/n
    (largest shift whose rounded multiplier still fits)."""
    if n < 1:
        raise ValueError(f"cannot divide by {n}")
    shift = 0
    while round((1 << (shift + 1)) / n) < (1 << mul_bits) and shift < 62:
        shift += 1
    return round((1 << shift) / n), shift


def average(window_sum: np.ndarray, mul: int, shift: int) -> tuple[np.ndarray, int]:
    """Average-pool output stage: sat16(round_shift(sum * mul, shift)); returns (int16, saturations)."""
    y, over = saturate(round_shift(np.asarray(window_sum, dtype=np.int64) * np.int64(mul), shift))
    return y.astype(np.int16), over


def frac_for_range(max_abs: float, bits: int = DATA_BITS, max_frac: int = 24) -> int:
    """Largest number of fractional bits (<= max_frac) with which ``max_abs`` fits ``bits`` signed."""
    if not np.isfinite(max_abs):
        raise ValueError("cannot choose a fixed-point format for a non-finite value")
    limit = (1 << (bits - 1)) - 1
    f = max_frac
    while f > -bits and round(max_abs * 2.0**f) > limit:
        f -= 1
    return f


def split_bias(bias32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 32-bit bias as the two 16-bit words the kernel buffer holds: (low, high), both as int16
    bit patterns; the hardware rebuilds it as ``(hi << 16) | (lo & 0xffff)``."""
    b = np.asarray(bias32, dtype=np.int64)
    lo = (b & 0xFFFF).astype(np.uint16).view(np.int16)
    hi = ((b >> 16) & 0xFFFF).astype(np.uint16).view(np.int16)
    return lo, hi


def join_bias(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (np.asarray(hi, dtype=np.int64) << 16) | (np.asarray(lo, dtype=np.int64) & 0xFFFF)


def sdk_error_metric(result, reference) -> tuple[float, float]:
    """The SDK's accuracy metric: (mean |error|, max |error|) divided by max |reference|, in percent."""
    r = np.asarray(reference, dtype=np.float64)
    d = np.abs(np.asarray(result, dtype=np.float64) - r)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    if scale == 0.0:
        scale = 1.0
    return 100.0 * float(d.mean()) / scale, 100.0 * float(d.max()) / scale
