"""Helpers for the RTL block tests: packing numpy vectors into Amaranth layouts."""
import numpy as np


def pack(values, bits: int) -> int:
    """Pack a sequence of signed ints, element 0 in the low bits, each ``bits`` wide."""
    out, mask = 0, (1 << bits) - 1
    for i, v in enumerate(values):
        out |= (int(v) & mask) << (i * bits)
    return out


def unpack(word: int, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack` (signed elements)."""
    mask, half = (1 << bits) - 1, 1 << (bits - 1)
    vals = [(word >> (i * bits)) & mask for i in range(n)]
    return np.array([v - (1 << bits) if v >= half else v for v in vals], dtype=np.int64)
