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
* Activations (``act``, after saturation; ``a``/``b`` are the CONV's 16-bit ``act_a``/``act_b``
  fields): NONE; RELU ``max(x, 0)``; LEAKY ``x`` for ``x >= 0`` else ``sat16(round_shift(x * a, b))``
  (``a`` unsigned, ``a / 2**b`` ~ alpha); CLIP ``min(max(x, lo), hi)`` with ``lo``/``hi`` the fields
  read as int16 (ReLU6 is CLIP(0, 6 in the output format)); SIGMOID and TANH: ``x`` is read in Q4.11
  (:data:`LUT_IN_FRAC`; the requantising shift brings the accumulator there) and the result is in
  Q0.15 (:data:`LUT_OUT_FRAC`), from a piecewise-linear table (:func:`lut_table`) over |x| < 8 with
  128 segments, using the functions' symmetry for x < 0. Its error against the float function is
  below 2**-11 for every input (see :func:`lut_max_error`); the RTL bakes the same table into a ROM.
  ``a`` (0..15) is a rounding right shift of the table's result, so the output is in Q(15-a)
  (a coarser format when the output shares one with other tensors, e.g. in a Concat).
* HARDSWISH ``x * clip(x + 3, 0, 6) / 6`` and SILU ``x * sigmoid(x)`` keep the format: ``x`` and the
  result both have ``a`` (0..15) fractional bits. HARDSWISH is exact up to the final rounding:
  ``t = clip(x + 3 * 2**a, 0, 6 * 2**a)``, ``round_shift(x * t * HSWISH_MUL, a + HSWISH_SHIFT)`` with
  ``HSWISH_MUL / 2**HSWISH_SHIFT`` the 16-bit reciprocal of 6 (error below one LSB of the format).
  SILU brings ``x`` to Q4.11 (shifting by ``11 - a``, unsaturated), takes the gate from the
  SIGMOID table (without its 32767 cap; exactly 1 or 0 for |x| >= 8) and gives
  ``round_shift(x * gate, 15)``; its error is below ``8 * 2**-11 + 8 * exp(-8)`` plus half an
  LSB of the format (:func:`act_max_error` measures both over every input).
* MISH ``x * tanh(softplus(x))`` is SILU with another gate: ``g(x) = tanh(ln(1 + e^x))`` from its own
  piecewise-linear table (:func:`mish_table`: :data:`MISH_SEGMENTS` segments of 1/16 over
  -8 <= x < 8, g being neither odd nor mirror-symmetric), exactly 1 for x >= 8 and 0 for x <= -8
  (where |x * g(x)| < 8 * 3.4e-4); ``round_shift(x * gate, 15)``. Its error is below
  ``8 * (table error) + 8 * g(-8)`` plus half an LSB of the format (:func:`act_max_error`).
* Saturation counts only where it changes the result: a value clipped to the 16-bit range before an
  activation that maps the clipped and the exact value alike (below the range for RELU, a CLIP with a
  lower bound, HARDSWISH in a format reaching -3, SILU and MISH reaching -8; either side for SIGMOID and TANH,
  whose table is flat beyond |x| = 8; above the range for a CLIP with an upper bound) is not counted
  (:func:`saturation_counts`), so bounded activations never report false saturations.
* A fused residual (mode ADD) is added to the accumulator, shifted left into its format, before
  rounding and the activation. Mode MUL multiplies the activated 16-bit value by the residual and
  requantises the exact product once more: ``sat16(round_shift(act(...) * r, rshift))`` (a fused
  element-wise Mul, or a per-channel gate broadcast over the pixels).
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
ACT_LEAKY = 2
ACT_CLIP = 3
ACT_SIGMOID = 4
ACT_TANH = 5
ACT_HARDSWISH = 6
ACT_SILU = 7
ACT_MISH = 8
#: index = code; the IR's names
ACT_NAMES = ("none", "relu", "leaky", "clip", "sigmoid", "tanh", "hardswish", "silu", "mish")
#: the activations whose act_a is a format (x and the result share it); SIGMOID/TANH: an output shift
GATED_ACTS = (ACT_SILU, ACT_MISH)

RES_NONE = 0    #: no residual
RES_ADD = 1     #: add the residual (shifted left by rshift) to the accumulator before requantising
RES_MUL = 2     #: multiply the activated output by the residual, then round_shift by rshift and saturate

LUT_IN_FRAC = 11       #: SIGMOID/TANH read their input in Q4.11
LUT_OUT_FRAC = 15      #: and produce Q0.15 (saturated at 32767)
LUT_SEG_BITS = 7       #: input LSBs per segment: 2**7 / 2**11 = 1/16
LUT_SEGMENTS = 128     #: segments cover |x| < 128/16 = 8; beyond, the value at 8
LEAKY_MAX_SHIFT = 31   #: largest LEAKY right shift (act_b)
ACT_MAX_FRAC = 15      #: largest act_a of SIGMOID/TANH (output shift), HARDSWISH and SILU (format)
HSWISH_SHIFT = 18      #: HARDSWISH divides by 6 as * HSWISH_MUL >> HSWISH_SHIFT
HSWISH_MUL = 43691     #: round(2**18 / 6), the 16-bit reciprocal of 6 (arch.numerics.reciprocal(6))
SILU_GATE_ONE = 1 << LUT_OUT_FRAC   #: SILU's (and MISH's) gate for x >= 8 (exactly 1.0 in Q0.15, 17 bits unsigned)
MISH_SEGMENTS = 2 * LUT_SEGMENTS    #: MISH's gate table: segments of 2**LUT_SEG_BITS Q4.11 LSBs over -8 <= x < 8


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


def s16(v: int) -> int:
    """A 16-bit field's bit pattern read as int16."""
    v = int(v) & 0xFFFF
    return v - 0x10000 if v & 0x8000 else v


def _lut_functions():
    return {ACT_SIGMOID: lambda x: 1.0 / (1.0 + np.exp(-x)), ACT_TANH: np.tanh}


_LUT_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def lut_table(act: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, delta) of the SIGMOID or TANH table, each ``LUT_SEGMENTS`` int64 entries: segment i
    covers |x| in [i, i+1) * 2**LUT_SEG_BITS (Q4.11 LSBs) and runs linearly from base[i] to
    base[i] + delta[i] (Q0.15); base[i] is f at the segment's start, rounded, so the curve is
    continuous. Generated here and nowhere else (the RTL's ROM is this table)."""
    if act not in _LUT_CACHE:
        f = _lut_functions()[act]
        xs = np.arange(LUT_SEGMENTS + 1) * (2.0 ** (LUT_SEG_BITS - LUT_IN_FRAC))
        pts = np.rint(f(xs) * 2.0 ** LUT_OUT_FRAC).astype(np.int64)
        _LUT_CACHE[act] = (pts[:-1].copy(), np.diff(pts))
    return _LUT_CACHE[act]


def lut_eval(x: np.ndarray, act: int) -> np.ndarray:
    """SIGMOID/TANH of int16 values in Q4.11 -> int64 in Q0.15 (the hardware's table evaluation)."""
    return np.minimum(_lut_curve(x, act), DATA_MAX)                    # 1.0 is not representable in Q0.15


def _lut_curve(x: np.ndarray, act: int) -> np.ndarray:
    """The table's value before the 32767 cap (sigmoid reaches 32768 - base[0] + ... for x < 0)."""
    base, delta = lut_table(act)
    x = np.asarray(x, dtype=np.int64)
    a = np.minimum(np.abs(x), LUT_SEGMENTS << LUT_SEG_BITS)          # beyond the table: its last value
    i = np.minimum(a >> LUT_SEG_BITS, LUT_SEGMENTS - 1)
    r = a - (i << LUT_SEG_BITS)                                        # 0 .. 2**LUT_SEG_BITS
    y = base[i] + ((delta[i] * r + (1 << (LUT_SEG_BITS - 1))) >> LUT_SEG_BITS)
    neg = x < 0
    if act == ACT_SIGMOID:
        y = np.where(neg, (1 << LUT_OUT_FRAC) - y, y)                  # sigmoid(-x) = 1 - sigmoid(x)
    else:
        y = np.where(neg, -y, y)                                       # tanh(-x) = -tanh(x)
    return y


def _mish_gate_exact(x):
    """tanh(softplus(x)), softplus computed without overflow."""
    return np.tanh(np.logaddexp(0.0, x))


_MISH_CACHE: list = []


def mish_table() -> tuple[np.ndarray, np.ndarray]:
    """(base, delta) of MISH's gate table, each :data:`MISH_SEGMENTS` int64 entries: segment i covers
    x in [-8 + i/16, -8 + (i+1)/16) (Q4.11: x + 2**14 in [i, i+1) * 2**LUT_SEG_BITS) and runs linearly
    from base[i] to base[i] + delta[i] (Q0.15), base[i] being g at the segment's start, rounded.
    Generated here and nowhere else (the RTL's ROM holds it after the SIGMOID/TANH tables)."""
    if not _MISH_CACHE:
        xs = -8.0 + np.arange(MISH_SEGMENTS + 1) * (2.0 ** (LUT_SEG_BITS - LUT_IN_FRAC))
        pts = np.rint(_mish_gate_exact(xs) * 2.0 ** LUT_OUT_FRAC).astype(np.int64)
        _MISH_CACHE.append((pts[:-1].copy(), np.diff(pts)))
    return _MISH_CACHE[0]


def _to_q4_11(x: np.ndarray, frac: int) -> np.ndarray:
    """Int values with ``frac`` fractional bits in Q4.11, unsaturated: an exact left shift, or a
    rounding right shift for frac > 11."""
    return x << np.int64(LUT_IN_FRAC - frac) if frac <= LUT_IN_FRAC else round_shift(x, frac - LUT_IN_FRAC)


def mish_gate(x: np.ndarray, frac: int) -> np.ndarray:
    """MISH's gate tanh(softplus(x)) in Q0.15 (0 .. 32768) of int values ``x`` with ``frac``
    fractional bits: x in Q4.11 as for SILU, :func:`mish_table` inside |x| < 8, exactly 1 for x >= 8
    and 0 for x <= -8."""
    x11 = _to_q4_11(np.asarray(x, dtype=np.int64), frac)
    edge = LUT_SEGMENTS << LUT_SEG_BITS
    base, delta = mish_table()
    u = np.clip(x11, -edge + 1, edge - 1) + edge                      # 1 .. 2 * edge - 1
    i = u >> LUT_SEG_BITS
    r = u - (i << LUT_SEG_BITS)
    y = base[i] + ((delta[i] * r + (1 << (LUT_SEG_BITS - 1))) >> LUT_SEG_BITS)
    return np.where(x11 >= edge, SILU_GATE_ONE, np.where(x11 <= -edge, 0, y))


def silu_gate(x: np.ndarray, frac: int) -> np.ndarray:
    """SILU's gate sigmoid(x) in Q0.15 (0 .. 32768) of int values ``x`` with ``frac`` fractional bits:
    x in Q4.11 (exact left shift, or round_shift right for frac > 11), the SIGMOID table without
    its cap, and exactly 1 or 0 where |x| >= 8."""
    x = np.asarray(x, dtype=np.int64)
    x11 = x << np.int64(LUT_IN_FRAC - frac) if frac <= LUT_IN_FRAC else round_shift(x, frac - LUT_IN_FRAC)
    edge = LUT_SEGMENTS << LUT_SEG_BITS
    inside = np.clip(x11, -edge + 1, edge - 1)
    return np.where(x11 >= edge, SILU_GATE_ONE, np.where(x11 <= -edge, 0, _lut_curve(inside, ACT_SIGMOID)))


def hardswish_fixed(x: np.ndarray, frac: int) -> np.ndarray:
    """HARDSWISH of int values with ``frac`` fractional bits, in the same format."""
    x = np.asarray(x, dtype=np.int64)
    t = np.clip(x + np.int64(3 << frac), 0, np.int64(6 << frac))
    return round_shift(x * t * np.int64(HSWISH_MUL), frac + HSWISH_SHIFT)


def saturation_counts(act: int, a: int = 0, b: int = 0) -> tuple[bool, bool]:
    """(below, above): whether a value clipped below / above the 16-bit range before activation
    ``act`` (fields ``a``, ``b``) changes the activated result, i.e. counts as a saturation."""
    if act in (ACT_SIGMOID, ACT_TANH):
        return False, False      # the table is flat beyond |x| = 8 (Q4.11 holds 16)
    if act == ACT_RELU:
        return False, True
    if act == ACT_CLIP:
        return s16(a) == DATA_MIN, s16(b) == DATA_MAX   # a bound inside the range absorbs the clip
    if act == ACT_HARDSWISH:
        return (3 << a) > -DATA_MIN, True                # 0 below -3: absorbed when the format reaches -3
    if act in GATED_ACTS:
        return (8 << a) > -DATA_MIN, True                # gate 0 below -8: absorbed when the format reaches -8
    return True, True


def act_max_error(act: int, frac: int) -> float:
    """Largest |fixed - float| (in units of 1.0) of SIGMOID/TANH (``frac``: the output format),
    HARDSWISH, SILU or MISH (``frac``: their format) over every int16 input."""
    x = np.arange(DATA_MIN, DATA_MAX + 1, dtype=np.int64)
    if act in (ACT_SIGMOID, ACT_TANH):
        xf, out_frac = np.ldexp(x.astype(np.float64), -LUT_IN_FRAC), frac
        a = LUT_OUT_FRAC - frac
    else:
        xf, out_frac, a = np.ldexp(x.astype(np.float64), -frac), frac, frac
    exact = {ACT_SIGMOID: lambda v: 1.0 / (1.0 + np.exp(-v)), ACT_TANH: np.tanh,
             ACT_HARDSWISH: lambda v: v * np.clip(v + 3.0, 0.0, 6.0) / 6.0,
             ACT_SILU: lambda v: v * 0.5 * (1.0 + np.tanh(0.5 * v)),
             ACT_MISH: lambda v: v * _mish_gate_exact(v)}[act](xf)
    got = np.ldexp(activate(x, act, a).astype(np.float64), -out_frac)
    return float(np.max(np.abs(got - exact)))


def mish_gate_max_error() -> float:
    """Largest |gate - tanh(softplus(x))| of :func:`mish_gate` over every Q4.11 input with |x| < 8."""
    x = np.arange(-(LUT_SEGMENTS << LUT_SEG_BITS) + 1, LUT_SEGMENTS << LUT_SEG_BITS, dtype=np.int64)
    exact = _mish_gate_exact(np.ldexp(x.astype(np.float64), -LUT_IN_FRAC))
    return float(np.max(np.abs(np.ldexp(mish_gate(x, LUT_IN_FRAC).astype(np.float64), -LUT_OUT_FRAC) - exact)))


def lut_max_error(act: int) -> float:
    """Largest |table - f| over every int16 input (in units of 1.0), the approximation's error bound."""
    x = np.arange(DATA_MIN, DATA_MAX + 1, dtype=np.int64)
    exact = _lut_functions()[act](np.ldexp(x.astype(np.float64), -LUT_IN_FRAC))
    return float(np.max(np.abs(np.ldexp(lut_eval(x, act).astype(np.float64), -LUT_OUT_FRAC) - exact)))


def leaky_fields(alpha: float) -> tuple[int, int]:
    """(act_a, act_b) = (mul, shift) of LEAKY with mul / 2**shift the closest approximation of
    ``alpha`` in [0, 1] with a 16-bit unsigned multiplier (largest shift <= LEAKY_MAX_SHIFT)."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"LeakyRelu alpha {alpha} is outside [0, 1]")
    shift = 0
    while shift < LEAKY_MAX_SHIFT and round(alpha * 2.0 ** (shift + 1)) < (1 << 16):
        shift += 1
    return int(round(alpha * 2.0 ** shift)), shift


def act_fields(act: int, frac: int) -> tuple[int, int]:
    """(act_a, act_b) of SIGMOID/TANH with output format ``frac`` (a = 15 - frac), or of HARDSWISH,
    SILU and MISH in format ``frac`` (a = frac)."""
    if act in (ACT_SIGMOID, ACT_TANH):
        a = LUT_OUT_FRAC - frac
    elif act == ACT_HARDSWISH or act in GATED_ACTS:
        a = frac
    else:
        raise ValueError(f"activation code {act} has no format field")
    if not 0 <= a <= ACT_MAX_FRAC:
        raise ValueError(f"{ACT_NAMES[act].upper()} cannot produce the format with {frac} fractional bits "
                         f"(its field must be in 0..{ACT_MAX_FRAC})")
    return a, 0


def clip_fields(lo: int, hi: int) -> tuple[int, int]:
    """(act_a, act_b) of CLIP: the int16 bounds as 16-bit field patterns."""
    for v in (lo, hi):
        if not DATA_MIN <= v <= DATA_MAX:
            raise ValueError(f"CLIP bound {v} does not fit 16 bits")
    if lo > hi:
        raise ValueError(f"CLIP lower bound {lo} exceeds the upper bound {hi}")
    return lo & 0xFFFF, hi & 0xFFFF


def activate(x: np.ndarray, act: int, a: int = 0, b: int = 0) -> np.ndarray:
    """The activation ``act`` of saturated int16 values, with the CONV's ``act_a``/``act_b`` fields."""
    x = np.asarray(x, dtype=np.int64)
    if act == ACT_NONE:
        return x
    if act == ACT_RELU:
        return np.maximum(x, 0)
    if act == ACT_LEAKY:
        return np.where(x < 0, saturate(round_shift(x * np.int64(a), b))[0], x)
    if act == ACT_CLIP:
        return np.clip(x, s16(a), s16(b))
    if act in (ACT_SIGMOID, ACT_TANH):
        return round_shift(lut_eval(x, act), a)
    if act == ACT_HARDSWISH:
        return hardswish_fixed(x, a)
    if act == ACT_SILU:
        return round_shift(x * silu_gate(x, a), LUT_OUT_FRAC)
    if act == ACT_MISH:
        return round_shift(x * mish_gate(x, a), LUT_OUT_FRAC)
    raise ValueError(f"unknown activation code {act}")


NONLIN_SIZE = 4096       #: entries of the SDK's GetNonlinCoefs table (its NONLIN_SIZE)
NONLIN_STEP = (1 << DATA_BITS) // NONLIN_SIZE   #: int16 inputs per entry: entry i is the input (i - 2048) * 16


def nonlin_inputs() -> np.ndarray:
    """The int16 inputs of the :data:`NONLIN_SIZE` entries of :func:`nonlin_table`: entry i is the
    input whose top 12 bits are i read as a signed index (``(i - 2048) * 16``), so the table spans
    the whole int16 range in order (in Q4.11, -16 up to 16 - 1/128 in steps of 1/128)."""
    return (np.arange(NONLIN_SIZE, dtype=np.int64) - NONLIN_SIZE // 2) * NONLIN_STEP


def nonlin_table(act: int, a: int = 0, b: int = 0) -> np.ndarray:
    """The SDK's ``GetNonlinCoefs`` format for the output stage's activation ``act`` with the CONV's
    fields ``a``/``b``: int16 array of :data:`NONLIN_SIZE` entries, entry i being :func:`activate` of
    the input ``nonlin_inputs()[i]`` (so the table is this module's activation sampled, not a second
    definition of it)."""
    y = activate(nonlin_inputs(), act, a, b)
    assert y.min() >= DATA_MIN and y.max() <= DATA_MAX
    return y.astype(np.int16)


def requantize(acc: np.ndarray, shift: int, act: int = ACT_NONE, residual: np.ndarray | None = None,
               rshift: int = 0, acc_bits: int = 48, act_a: int = 0, act_b: int = 0,
               mode: int = RES_ADD) -> tuple[np.ndarray, int]:
    """Output stage. ADD (or no residual): add the residual (shifted left by ``rshift``, wrapping at
    ``acc_bits``), round_shift, saturate to 16 bits, activate. MUL: round_shift, saturate, activate,
    multiply by the residual, round_shift by ``rshift``, saturate. Returns (int16 array, values
    clipped by either saturation)."""
    acc = np.asarray(acc, dtype=np.int64)
    if residual is not None and mode == RES_ADD:
        acc = wrap(acc + (np.asarray(residual, dtype=np.int64) << np.int64(rshift)), acc_bits)
    r = round_shift(acc, shift)
    below, above = saturation_counts(act, act_a, act_b)
    clipped = (r < DATA_MIN) if below else np.zeros(r.shape, dtype=bool)
    if above:
        clipped |= r > DATA_MAX
    y = activate(np.clip(r, DATA_MIN, DATA_MAX), act, act_a, act_b)
    if residual is not None and mode == RES_MUL:
        p = round_shift(y * np.asarray(residual, dtype=np.int64), rshift)
        clipped |= (p < DATA_MIN) | (p > DATA_MAX)
        y = np.clip(p, DATA_MIN, DATA_MAX)
    return y.astype(np.int16), int(np.count_nonzero(clipped))


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
