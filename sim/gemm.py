"""Exact products of integer-valued float64 matrices: the GEMM inside every CONV of the model.

The operands hold int16 values and a product's reduction is bounded (see :mod:`sim.units`), so
every partial sum is an integer below 2**53: any float64 GEMM gives exactly the same bits,
whatever order it adds in. That leaves the choice of engine free, and it is a matter of speed:

* ``numpy``: ``A @ B``, numpy's OpenBLAS dgemm.
* ``onnxruntime``: a one-node ``MatMul`` model on double tensors, run by onnxruntime's MLAS on the
  caller's thread (or on ``threads`` pool threads, which sleep when idle). MLAS picks its kernels from the CPU's features (AVX-512 where there is some), while
  OpenBLAS follows its own detection or ``OPENBLAS_CORETYPE``; on the skinny GEMMs that CONV tiles
  make (a few hundred pixels by 64 to 256 channels) it was 1.1x to 1.6x faster here, and the whole
  of ResNet-18 ran 1.5x faster with it (``bench/bench_speed.py`` measures both engines).

``MDLA_SIM_GEMM`` chooses: ``auto`` (the default: onnxruntime, a dependency of the package, when it
can be imported; used for products large enough to repay its few microseconds per call), ``numpy``
or ``onnxruntime``.
"""
from __future__ import annotations

import os
import threading

import numpy as np

__all__ = ["matmul", "engine", "ENGINES"]

ENGINES = ("auto", "numpy", "onnxruntime")
#: below this many multiply-adds (or with a single row) numpy's call is the cheaper one: measured on
#: the GEMM shapes of MobileNetV3-small, the text-direction classifier and ResNet-18 (one thread),
#: onnxruntime's call costs about 6 us more, and its kernels catch up only near 1M multiply-adds
#: (at 64K, the former threshold, numpy took 3 us where onnxruntime took 8 us)
_ORT_MIN_MACS = 1 << 20

_lock = threading.Lock()
_sessions: dict = {}     # intra-op threads -> onnxruntime session, built on first use (per process)
_have_ort: bool | None = None


def engine() -> str:
    """The engine in use: ``numpy`` or ``onnxruntime`` (``auto`` resolved), from ``MDLA_SIM_GEMM``."""
    global _have_ort
    want = os.environ.get("MDLA_SIM_GEMM", "auto").strip().lower() or "auto"
    if want not in ENGINES:
        raise ValueError(f"MDLA_SIM_GEMM={want!r}: choose one of {', '.join(ENGINES)}")
    if want == "numpy":
        return "numpy"
    if _have_ort is None:
        try:
            import onnxruntime  # noqa: F401
            _have_ort = True
        except ImportError:
            _have_ort = False
    if not _have_ort and want == "onnxruntime":
        raise ValueError("MDLA_SIM_GEMM=onnxruntime, but onnxruntime is not installed")
    return "onnxruntime" if _have_ort else "numpy"


def _ort_session(threads: int):
    """The onnxruntime session computing with ``threads`` intra-op threads (built on first use)."""
    with _lock:
        sess = _sessions.get(threads)
        if sess is None:
            import onnxruntime as ort
            from onnx import TensorProto, helper
            # inputs of any rank: 2-D products and stacks of them (numpy's matmul broadcasting)
            graph = helper.make_graph(
                [helper.make_node("MatMul", ["A", "B"], ["C"])], "exact_gemm",
                [helper.make_tensor_value_info("A", TensorProto.DOUBLE, None),
                 helper.make_tensor_value_info("B", TensorProto.DOUBLE, None)],
                [helper.make_tensor_value_info("C", TensorProto.DOUBLE, None)])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
            model.ir_version = min(model.ir_version, 8)        # any onnxruntime of the last years reads it
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            # idle pool threads sleep instead of spinning: between GEMMs the model runs numpy code,
            # and spinning threads would take the cores from it (and from other processes)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.log_severity_level = 3
            sess = _sessions[threads] = ort.InferenceSession(model.SerializeToString(), so,
                                                             providers=["CPUExecutionProvider"])
        return sess


def matmul(A: np.ndarray, B: np.ndarray, threads: int = 1) -> np.ndarray:
    """``A @ B`` for float64 operands holding integers whose products sum exactly in float64
    (2-D, or stacks with numpy's broadcasting), on up to ``threads`` threads with onnxruntime
    (numpy's BLAS runs with whatever thread limit the caller set). Thread-safe."""
    if A.shape[-2] > 1 and A.shape[-2] * A.shape[-1] * B.shape[-1] >= _ORT_MIN_MACS and engine() == "onnxruntime":
        return _ort_session(max(int(threads), 1)).run(
            None, {"A": np.ascontiguousarray(A), "B": np.ascontiguousarray(B)})[0]
    return A @ B
