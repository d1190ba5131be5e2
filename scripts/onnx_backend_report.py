"""Run ONNX's node conformance cases for the DLA's operators and write docs/conformance.md.

    python scripts/onnx_backend_report.py [--out docs/conformance.md]

The cases, the adapter and the outcomes are those of tests/test_onnx_backend.py (see
tests/onnx_backend.py); the reasons for the cases that are refused come from the test's list.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import onnx_backend as ob  # noqa: E402
from compiler.ops import OPS  # noqa: E402
from tests.test_onnx_backend import HOST, REASONS, REFUSED  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "conformance.md"))
    args = ap.parse_args(argv)
    outcomes = [ob.run_case(c) for c in ob.cases()]
    per_op: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        per_op[o.op][o.status] += 1
    total = Counter(o.status for o in outcomes)
    n = len(outcomes)
    run = total["pass"] + total["host"]
    lines = [
        "# ONNX conformance: the node cases of onnx.backend.test",
        "",
        "Written by `python scripts/onnx_backend_report.py`; checked case by case by",
        "`tests/test_onnx_backend.py` (every case either passes on the DLA or is listed there with its reason,",
        "and a listed case that starts passing fails the test until the list is updated).",
        "",
        f"onnx {__import__('onnx').__version__}, {datetime.date.today().isoformat()}, {n} cases of the operators below:",
        "",
        f"* **through `Run`: {run} of {n} ({100 * run / n:.1f} %)** (target 90 %);",
        f"* **on the DLA itself: {total['pass']} of {n} ({100 * total['pass'] / n:.1f} %)** (target 60 %"
        + (": met);" if total["pass"] >= 0.6 * n else ": not met; the cases that are not are listed below with "
           "the reason the DLA refuses them: integer tensors, tensors without a batch axis (rank 1), models that "
           "combine the images of their batch, 3-D pooling);"),
        f"* on the host (with `heterogeneous`): {total['host']}; refused even then: {total['refused']}; failed: {total['fail']}.",
        "",
        "Each case's parameter inputs (weights, statistics, scales, shapes) become initializers; a batch",
        "of N is run as N images. **pass** = the DLA runs it: `Run_th` (float32) within the case's own rtol/atol",
        f"*and* `Run` (the DLA program on the functional model) within the SDK budget (mean <= {ob.BUDGET_MEAN:g} %,",
        f"max <= {ob.BUDGET_MAX:g} % of max |reference|). **host** = `Compile` with default flags refuses it,",
        "naming the node, the op, the reason and the flag; with `SetFlag('heterogeneous', 1)` it compiles and",
        "`Run` executes it on the host (`onnx.reference`, the model whole at its exported shapes when no node",
        "of it runs on the DLA), within the case's tolerance. **refused** = `Compile` refuses it even with the",
        "flag. Cases whose values exceed the Q8.8 range are compiled with the case's input as the calibration",
        "sample (variable fixed point), as a user would pass representative samples.",
        "",
        "## The operators",
        "",
        "From the operator table, `compiler/ops.py` (the front end's handlers, the partitioner's categories and",
        "this list come from it). *canonical*: rewritten by `compiler/frontend_canon.py` into the others.",
        "",
        "| operator | category | on the DLA | conformance cases |",
        "| --- | --- | --- | ---: |",
        *[f"| {op.name}{' (' + op.domain + ')' if op.domain else ''} | {op.category}{', canonical' if op.canonical else ''} "
          f"| {op.doc} | {sum(per_op[op.name].values()) if op.conformance else '-'} |" for op in OPS.values()],
        "",
        "## Why cases are not on the DLA",
        "",
        *[f"* **{r}** ({len(HOST.get(r, [])) + len(REFUSED.get(r, []))} cases): {REASONS[r][1]}" for r in REASONS
          if HOST.get(r) or REFUSED.get(r)],
        "",
        "| operator | cases | pass (DLA) | host | refused | fail |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for op in sorted(per_op):
        c = per_op[op]
        lines.append(f"| {op} | {sum(c.values())} | {c['pass']} | {c['host']} | {c['refused']} | {c['fail']} |")
    lines += ["", "## Every case", "", "| case | outcome | detail / reason |", "| --- | --- | --- |"]
    reason_of = {name: REASONS[r][1] for table in (HOST, REFUSED) for r, names in table.items() for name in names}
    for o in outcomes:
        why = reason_of.get(o.name, "")
        detail = f"{why} ({o.detail})" if why else o.detail
        lines.append(f"| `{o.name}` | {o.status} | {detail.replace('|', '/')} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{total['pass']} pass on the DLA, {total['host']} on the host, {total['refused']} refused, "
          f"{total['fail']} fail -> {args.out}")
    return 0 if total["fail"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
