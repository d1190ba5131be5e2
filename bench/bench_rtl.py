"""Simulated cycles per second of the card RTL on Amaranth's simulator, Icarus and Verilator.

The same compiled program (default: zoo.small_cnn on an 8x8 input, SMALL configuration) runs on each
RTL simulator and on the functional model; every run must end with the functional model's memory
image and cycle count. Prints a table: cycles, wall time of the simulation loop, cycles/s, and the
time including start-up (process launch, memory files) and the build (0 when cached).

    python bench/bench_rtl.py [--model small_cnn|conv|fc] [--sims amaranth,icarus,verilator]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arch.machine import SMALL  # noqa: E402
from sim.card import run_card  # noqa: E402


def image(model, cfg, seed=0):
    from compiler.driver import compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    c = compile_graph(quantize(load_model(model), cfg), cfg)
    mem, _ = c.seeded_image(seed)
    return mem, c.program_addresses()


def models():
    from zoo import kernels
    from zoo.small_cnn import small_cnn
    return {
        "small_cnn": lambda: small_cnn(seed=0, input_shape=(1, 3, 8, 8)),
        "conv": lambda: kernels.conv_model(16, 32, 10, 10, 3, 2, 1, relu=True, seed=48),
        "fc": lambda: kernels.fc_model(16, 8, seed=1),
    }


def run_one(sim, cfg, mem, programs):
    t0 = time.perf_counter()
    if sim == "amaranth":
        from hw.run import LAST_RUN, run_rtl
        stats = run_rtl(cfg, mem, programs)
        info = dict(LAST_RUN, build_seconds=0.0)
    else:
        from hw.verilog_run import LAST_RUN, build, run_verilog
        from hw.export import mem_words_for
        tb = time.perf_counter()
        b = build(sim, cfg, mem_words_for(cfg, len(mem)))
        build_s = time.perf_counter() - tb
        t0 = time.perf_counter()
        stats = run_verilog(sim, cfg, mem, programs)
        info = dict(LAST_RUN, build_seconds=build_s if not b.cached else 0.0, cached=b.cached)
    info["total"] = time.perf_counter() - t0
    return stats, info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_cnn", choices=sorted(models()))
    ap.add_argument("--sims", default="amaranth,icarus,verilator")
    args = ap.parse_args(argv)
    cfg = SMALL
    mem, programs = image(models()[args.model](), cfg)
    ref = mem.copy()
    t0 = time.perf_counter()
    want = run_card(cfg, ref, programs)
    t_model = time.perf_counter() - t0
    rows = []
    ok = True
    for sim in [s.strip() for s in args.sims.split(",") if s.strip()]:
        m = mem.copy()
        try:
            stats, info = run_one(sim, cfg, m, programs)
        except Exception as e:  # noqa: BLE001 - report and continue with the other simulators
            print(f"{sim}: failed: {type(e).__name__}: {str(e)[:500]}")
            ok = False
            continue
        same = stats.cycles == want.cycles and np.array_equal(m, ref)
        ok &= same
        rows.append((sim, stats.cycles, info["seconds"], info["cycles_per_second"], info["total"],
                     info.get("build_seconds", 0.0), "yes" if same else "NO"))
    print(f"\nmodel {args.model} on {cfg.name}: {want.cycles} cycles; functional model {t_model * 1e3:.1f} ms "
          f"({want.cycles / max(t_model, 1e-9):,.0f} cycles/s)\n")
    head = ("simulator", "cycles", "sim loop s", "cycles/s", "run s (with start-up)", "build s", "== model")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:,.0f} | {r[4]:.2f} | {r[5]:.1f} | {r[6]} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
