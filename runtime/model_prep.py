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


def cut_model(model, nlayers: int = -1, lremove: int = 0) -> onnx.ModelProto:
    """The SDK's ``nlayers`` and ``lremove``: the graph of ``model`` (path or ModelProto) cut to its
    nodes ``lremove .. lremove + nlayers - 1`` (``nlayers`` -1: to the end), counting the nodes in
    the graph's (topological) order and not counting ``Constant`` nodes. The tensors the kept nodes
    read from dropped nodes become the graph's inputs (shapes from ONNX shape inference); with
    ``nlayers`` the outputs of the last kept node become the graph's outputs, with ``lremove`` alone
    the model's outputs stay. Nodes that do not lead to an output are dropped."""
    from compiler.ir import CompileError
    from onnx import shape_inference, utils
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    g = proto.graph
    layers = [k for k, n in enumerate(g.node) if n.op_type != "Constant"]
    if lremove >= len(layers):
        raise CompileError(f"lremove={lremove}: the model has {len(layers)} nodes (Constant nodes not counted); "
                           f"nothing would be left to compile")
    keep = layers[lremove:] if nlayers < 0 else layers[lremove:lremove + nlayers]
    if nlayers == 0:
        raise CompileError("nlayers=0 leaves nothing to compile (-1: all nodes)")
    kept = set(keep) | {k for k, n in enumerate(g.node) if n.op_type == "Constant"}
    produced_by_dropped = {o for k, n in enumerate(g.node) if k not in kept for o in n.output}
    initialisers = {t.name for t in g.initializer}
    graph_inputs = [i.name for i in g.input if i.name not in initialisers]
    inputs = []
    for k in keep:
        for t in g.node[k].input:
            if t and (t in produced_by_dropped or t in graph_inputs) and t not in inputs:
                inputs.append(t)
    outputs = [o for o in g.node[keep[-1]].output if o] if nlayers >= 0 else [o.name for o in g.output]
    try:
        inferred = shape_inference.infer_shapes(proto)
        extracted = utils.Extractor(inferred).extract_model(inputs, outputs)
    except Exception as e:  # noqa: BLE001 - onnx reports an impossible cut with its own types
        raise CompileError(f"nlayers={nlayers}, lremove={lremove}: the graph cannot be cut there: "
                           f"{type(e).__name__}: {e}") from None
    for vi in list(extracted.graph.input) + list(extracted.graph.output):
        if not vi.type.tensor_type.HasField("shape"):
            raise CompileError(f"nlayers={nlayers}, lremove={lremove}: ONNX shape inference does not know the shape "
                               f"of {vi.name!r}, which the cut makes a graph input or output; cut elsewhere")
    return extracted
