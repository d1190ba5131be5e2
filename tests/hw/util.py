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


def assert_run_equals_run_sw(model, x: np.ndarray, tmp_path, flags: dict):
    """Compile ``model`` (an ONNX proto) through the SDK for the SMALL configuration, run ``x`` on the
    functional model (Run_sw), then Run() with ``flags`` set (the simulator, a vcd path): the same
    outputs, bit for bit, and the same hwcycles. Returns the MDLA object (loaded, for more checks)."""
    import onnx

    import microndla
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    ie.Compile(str(path))
    y_sw = ie.Run_sw(x)
    cycles_sw = ie.GetInfo("hwcycles")
    ie.SetFlag(flags)
    y_rtl = ie.Run(x)
    assert np.array_equal(y_rtl, y_sw)
    assert ie.GetInfo("hwcycles") == cycles_sw
    return ie
