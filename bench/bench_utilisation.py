"""Modelled MAC utilisation on one cluster of the reference configuration: ResNet-18 and ResNet-50
at 224x224 and the SDK's profiling layer (3x3 conv, 16x16x256 in, 256 out, no padding), each
compiled and run on the functional model (the modelled cycles are the hardware's). Utilisation is
the network's MACs / (modelled cycles x 256 MAC lanes). Prints the totals and a per-layer table
whose last column says why a layer stays under 90 %: the numbers behind docs/performance.md.

    python bench/bench_utilisation.py [--layers] [resnet18 resnet50 profiling_layer]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import microndla  # noqa: E402
import zoo  # noqa: E402
from arch.machine import REFERENCE  # noqa: E402
from runtime.profile import profile  # noqa: E402
from zoo.kernels import conv_model  # noqa: E402

#: name -> (model builder, target utilisation of issue #3)
MODELS = {
    "resnet18": (lambda: zoo.build("resnet18"), 0.90),
    "resnet50": (lambda: zoo.build("resnet50"), 0.90),
    "profiling_layer": (lambda: conv_model(256, 256, 16, 16, 3, 1, 0, seed=0), 0.95),
}
THRESHOLD = 0.90


def measure(name: str, tmp: str):
    """(modelled cycles, MACs, per-layer rows, wall seconds) of one model on one reference cluster."""
    path = str(Path(tmp) / f"{name}.onnx")
    onnx.save(MODELS[name][0](), path)
    ie = microndla.MDLA()          # defaults: reference configuration, one card, one cluster
    ie.Compile(path)
    t0 = time.perf_counter()
    rows = profile(ie, threshold=THRESHOLD)
    wall = time.perf_counter() - t0
    cycles = ie.GetInfo("hwcycles")
    macs = sum(r.macs for r in rows)
    ie.Free()
    return cycles, macs, rows, wall


def table(rows) -> str:
    lines = ["| layer | kind | mode | cycles | MACs | util | KiB in | KiB out | bound | why (under 90 %) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.name} | {r.kind} | {r.mode} | {r.cycles} | {r.macs} | {r.utilisation:.1%} | "
                     f"{r.bytes_loaded / 1024:.0f} | {r.bytes_stored / 1024:.0f} | {r.bound} | {r.why} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(MODELS), help=f"any of {', '.join(MODELS)} (default: all)")
    ap.add_argument("--layers", action="store_true", help="print every layer (default: only those under 90 %%)")
    args = ap.parse_args()
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            cycles, macs, rows, wall = measure(name, tmp)
            util = macs / (cycles * REFERENCE.macs_per_cluster)   # one cluster of the reference card
            target = MODELS[name][1]
            summary.append((name, cycles, macs, util, target, wall))
            shown = rows if args.layers else [r for r in rows if r.utilisation < THRESHOLD]
            print(f"\n{name}: {cycles} cycles, {macs} MACs, utilisation {util:.1%} "
                  f"(target {target:.0%}); {len(shown)} of {len(rows)} layers shown")
            print(table(shown))
    print("\n| model | modelled cycles | MACs | MAC utilisation | target | met | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for name, cycles, macs, util, target, wall in summary:
        print(f"| {name} | {cycles} | {macs} | {util:.1%} | {target:.0%} | {'yes' if util >= target else 'NO'} | {wall:.1f} |")


if __name__ == "__main__":
    main()
