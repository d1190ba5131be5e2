"""ONNX's own conformance cases (``onnx.backend.test`` node cases) through our compile-and-run path.

Each case is a one-node model with reference inputs and outputs. We turn the inputs the operator
treats as parameters (Conv's weights, BatchNormalization's statistics, Resize's scales, ...) into
initializers, since the DLA's weights are compiled in, and keep the rest as runtime inputs. A case
with batch N > 1 is compiled as exported: per image, N images a call, when its nodes keep the images
apart (the compiler checks), else it is refused (and runs whole on the host with ``heterogeneous``).

Every case ends in one of four outcomes:

* ``pass``: the DLA runs it: ``Run_th`` (float32 on the host) matches ONNX's expected output within
  the case's own rtol/atol, and ``Run`` (the DLA program on the functional model, fixed point) is
  within the SDK metric budget: mean <= 1 %, max <= 5 % of max |reference|;
* ``host``: ``Compile`` with default flags refuses it (the DLA does not run this operator,
  attribute, rank or dtype; the refusal is the case's reason), and with ``heterogeneous`` set it
  compiles and ``Run`` executes it on the host (``onnx.reference``), within the case's rtol/atol;
* ``refused``: ``Compile`` raises a clear error (CompileError or MDLAError) even with
  ``heterogeneous``; ``tests/test_onnx_backend.py`` lists each case that is not ``pass`` with its reason;
* ``fail``: anything else (wrong numbers, a crash): always a test failure.

``python scripts/onnx_backend_report.py`` writes the table in ``docs/conformance.md``.
"""
from __future__ import annotations

import contextlib
import functools
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from compiler.ops import conformance_case_prefixes, conformance_ops, param_inputs

#: The operators whose node cases we run, and the inputs (by position) each treats as parameters
#: (these become initializers): both from the operator table, compiler/ops.py.
OPS = conformance_ops()
PARAM_INPUTS = param_inputs()

#: The SDK's accuracy budget for the DLA path (percent of max |reference|).
BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0

_CASE_RE = re.compile(r"^test_(" + "|".join(p for ps in conformance_case_prefixes().values() for p in ps) + r")(_|$)")


@dataclass
class Outcome:
    name: str
    op: str
    status: str            #: 'pass', 'refused' or 'fail'
    detail: str = ""       #: the error message, or the measured errors
    mean_err: float | None = None
    max_err: float | None = None


@functools.cache
def cases() -> tuple:
    """The node cases of :data:`OPS` (name order), from onnx's case generators (no files needed)."""
    from onnx.backend.test.case import node
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        found = node.collect_testcases(None)
    out = []
    for c in found:
        m = _CASE_RE.match(c.name)
        if not m or c.name.endswith("_expanded") or "_expanded_" in c.name:
            continue   # the expanded variants are function bodies of other ops (Less, Where, ...)
        if c.model.graph.node[0].op_type not in OPS:
            continue
        out.append(c)
    return tuple(sorted(out, key=lambda c: c.name))


def _op(case) -> str:
    return case.model.graph.node[0].op_type


def adapt(case) -> tuple[onnx.ModelProto, list[np.ndarray], list[np.ndarray]]:
    """The case's model with parameter inputs as initializers; (model, runtime inputs, expected outputs)."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, outputs = case.data_sets[0]
    g = model.graph
    node = g.node[0]
    sel = PARAM_INPUTS.get(node.op_type)
    params = set(range(len(node.input))[sel]) if sel else set()
    graph_inputs = list(g.input)
    keep, feeds = [], []
    for k, vi in enumerate(graph_inputs):
        pos = [i for i, n in enumerate(node.input) if n == vi.name]
        if pos and all(p in params for p in pos):
            g.initializer.append(numpy_helper.from_array(np.asarray(inputs[k]), vi.name))
        else:
            keep.append(vi)
            feeds.append(np.asarray(inputs[k]))
    del g.input[:]
    g.input.extend(keep)
    return model, feeds, [np.asarray(o) for o in outputs]


def run_case(case) -> Outcome:
    """Compile the case for the DLA and run both paths; never raises."""
    op = _op(case)
    try:
        model, feeds, expected = adapt(case)
    except Exception as e:  # noqa: BLE001 - a case we cannot even adapt is reported, not raised
        return Outcome(case.name, op, "fail", f"adapting the case failed: {type(e).__name__}: {e}")
    first = _attempt(case, model, feeds, expected, calibrate=False)
    if first.status == "refused":       # not on the DLA: on the host, with the flag?
        host = _attempt(case, model, feeds, expected, calibrate=False, heterogeneous=True)
        if host.status == "host":
            host.detail = first.detail
            return host
        if host.status == "refused":
            return first
        return host
    if first.status != "fail" or first.mean_err is None:
        return first
    # Out of the Q8.8 range: calibrate on the case's input, as a user passes representative samples.
    second = _attempt(case, model, feeds, expected, calibrate=True)
    if second.status == "pass":
        second.detail += " (calibrated)"
        return second
    return first if second.mean_err is None else second


def _on_host(compiled) -> str:
    """'' (all on the DLA), 'part' (some nodes on the host) or 'all' (no DLA stage)."""
    from compiler.partition import Staged
    if isinstance(compiled, Staged):
        return "all" if not compiled.segments else "part"
    return "part" if compiled.host is not None else ""


def _attempt(case, model, feeds, expected, calibrate: bool, heterogeneous: bool = False) -> Outcome:
    import microndla
    from arch.numerics import sdk_error_metric
    from compiler.ir import CompileError
    from runtime.mdla import MDLAError

    op = _op(case)
    ie = microndla.MDLA()
    try:
        if heterogeneous:
            ie.SetFlag("heterogeneous", 1)
        inshapes = None       # the model as exported: a batch of N is compiled per image, N images a call
        samples = None
        if calibrate:
            samples = [feeds[0]] if len(feeds) == 1 else [[f] for f in feeds]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ie.Compile(model, inshapes=inshapes, samples=samples)
            except (CompileError, MDLAError) as e:
                return Outcome(case.name, op, "refused", str(e).splitlines()[0])
        on_host = _on_host(ie._compiled)
        try:
            th = ie.Run_th(feeds if len(feeds) > 1 else feeds[0])
            dla = ie.Run(feeds if len(feeds) > 1 else feeds[0])
        except (ValueError, TypeError, MDLAError) as e:
            return Outcome(case.name, op, "refused", f"at Run: {str(e).splitlines()[0]}")
    except Exception as e:  # noqa: BLE001 - any crash is a failure with its message
        return Outcome(case.name, op, "fail", f"{type(e).__name__}: {e}")
    finally:
        ie.Free()
    th = th if isinstance(th, list) else [th]
    dla = dla if isinstance(dla, list) else [dla]
    worst_mean = worst_max = 0.0
    for ref, t, d in zip(expected, th, dla):
        ref = ref.astype(np.float32)
        if t.shape != ref.shape or d.shape != ref.shape:
            return Outcome(case.name, op, "fail", f"output shape {d.shape} (float path {t.shape}), expected {ref.shape}")
        if not np.allclose(t, ref, rtol=case.rtol, atol=max(case.atol, 1e-6)):
            err = float(np.max(np.abs(t - ref)))
            return Outcome(case.name, op, "fail", f"float path (Run_th) off by {err:.3g}, rtol {case.rtol}")
        if on_host == "all":       # the host computes in float: the case's own tolerance
            if not np.allclose(d, ref, rtol=case.rtol, atol=max(case.atol, 1e-6)):
                return Outcome(case.name, op, "fail", f"host run off by {float(np.max(np.abs(d - ref))):.3g}")
            continue
        mean, mx = sdk_error_metric(d, ref)
        worst_mean, worst_max = max(worst_mean, mean), max(worst_max, mx)
    detail = f"DLA mean {worst_mean:.3f} %, max {worst_max:.3f} %" if on_host != "all" else "on the host"
    status = "pass" if worst_mean <= BUDGET_MEAN and worst_max <= BUDGET_MAX else "fail"
    if status == "pass" and on_host:
        status = "host"
    return Outcome(case.name, op, status, detail, worst_mean, worst_max)
