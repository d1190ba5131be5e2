"""Preparing an ONNX model before compiling it: ``Compile(..., simplify=True)`` runs onnxsim (the
simplifier the SDK's own ``simplify`` ran), which folds constants, removes identity-like nodes and
fuses shape computations; a model it cannot simplify is refused with its reason."""
from __future__ import annotations

import onnx


def simplify_model(model) -> onnx.ModelProto:
    """``model`` (path or ModelProto) simplified by onnxsim; the result is checked to be equivalent
    by onnxsim itself (it runs both on random inputs)."""
    from compiler.ir import CompileError
    try:
        import onnxsim
    except ImportError as e:        # a dependency of the project (pyproject.toml); never skipped silently
        raise CompileError(f"Compile(simplify=True) needs onnxsim, which is not installed: {e}") from None
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    try:
        simplified, ok = onnxsim.simplify(proto)
    except Exception as e:  # noqa: BLE001 - onnxsim reports failures with its own and onnxruntime's types
        raise CompileError(f"Compile(simplify=True): onnxsim could not simplify the model: {type(e).__name__}: {e}") from None
    if not ok:
        raise CompileError("Compile(simplify=True): onnxsim's check found the simplified model not equivalent to the "
                           "original; compile it without simplify")
    return simplified
