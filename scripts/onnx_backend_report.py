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
from tests.test_onnx_backend import REASONS, REFUSED  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "conformance.md"))
    args = ap.parse_args(argv)
    outcomes = [ob.run_case(c) for c in ob.cases()]
    per_op: dict[str, Counter] = defaultdict(Counter)
    for o in outcomes:
        per_op[o.op][o.status] += 1
    total = Counter(o.status for o in outcomes)
    lines = [
        "# ONNX conformance: the node cases of onnx.backend.test",
        "",
        "Written by `python scripts/onnx_backend_report.py`; checked case by case by",
        "`tests/test_onnx_backend.py` (every case either passes or is listed there with its reason, and a",
        "listed case that starts passing fails the test until the list is updated).",
        "",
        "Each case's parameter inputs (weights, statistics, scales, shapes) become initializers; a batch",
        f"of N is run as N images. **pass** = `Run_th` (float32) within the case's own rtol/atol *and* `Run`",
        f"(the DLA program on the functional model) within the SDK budget (mean <= {ob.BUDGET_MEAN:g} %, max <=",
        f"{ob.BUDGET_MAX:g} % of max |reference|). **refused** = `Compile` or `Run` raises a clear error naming",
        "what is unsupported. Cases whose values exceed the Q8.8 range are compiled with the case's input as",
        "the calibration sample (variable fixed point), as a user would pass representative samples.",
        "",
        "Why cases are refused:",
        "",
        *[f"* **{r}** ({len(REFUSED[r])} cases): {REASONS[r][1]}" for r in REASONS],
        "",
        f"onnx {__import__('onnx').__version__}, {datetime.date.today().isoformat()}: "
        f"**{total['pass']} pass, {total['refused']} refused, {total['fail']} fail** of {len(outcomes)} cases.",
        "",
        "| operator | cases | pass | refused | fail |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for op in sorted(per_op):
        c = per_op[op]
        lines.append(f"| {op} | {sum(c.values())} | {c['pass']} | {c['refused']} | {c['fail']} |")
    lines += ["", "## Every case", "", "| case | outcome | detail / reason |", "| --- | --- | --- |"]
    reason_of = {name: REASONS[r][1] for r, names in REFUSED.items() for name in names}
    for o in outcomes:
        why = reason_of.get(o.name, "")
        detail = f"{why} ({o.detail})" if why else o.detail
        lines.append(f"| `{o.name}` | {o.status} | {detail.replace('|', '/')} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{total['pass']} pass, {total['refused']} refused, {total['fail']} fail -> {args.out}")
    return 0 if total["fail"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
