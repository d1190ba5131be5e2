"""Simulated cycles per second of the card RTL on Amaranth's simulator, Icarus and Verilator, per
machine configuration.

The same compiled program (default: zoo.small_cnn on an 8x8 input) runs on each RTL simulator and on
the functional model, for each configuration asked for; every run must end with the functional
model's memory image and cycle count. The builds hold the clusters the program uses (one here).
Simulators: ``amaranth``, ``icarus`` (cocotb), ``verilator`` (the free-running C++ harness, the
executor's default) and ``verilator-cocotb``. Prints a table per configuration: cycles, wall time
of the simulation loop, cycles/s, the time including start-up (process launch, memory files) and
the build time (0 when cached).

    python bench/bench_rtl.py [--model small_cnn|conv|fc] [--configs small,reference]
                              [--sims amaranth,icarus,verilator,verilator-cocotb] [--max-cycles N]

``--max-cycles N`` stops each RTL run after N cycles (for the slow simulators on a large
configuration): the row then shows the cycles/s of the partial run and no comparison.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def run_one(sim, cfg, mem, programs, max_cycles=None):
    """Run on one simulator; returns (stats or None for a partial run, LAST_RUN-like info)."""
    from sim.card import SimError
    t0 = time.perf_counter()
    if sim == "amaranth":
        from hw.run import LAST_RUN, run_rtl
        try:
            stats = run_rtl(cfg, mem, programs, max_cycles=max_cycles)
        except SimError:
            if max_cycles is None:
                raise
            stats = None
        info = dict(LAST_RUN, build_seconds=0.0)
    else:
        from hw.verilog_run import LAST_RUN, run_verilog
        simulator, _, harness = sim.partition("-")
        try:
            stats = run_verilog(simulator, cfg, mem, programs, harness=harness or None, max_cycles=max_cycles)
        except SimError:
            if max_cycles is None or not LAST_RUN:
                raise
            stats = None
        info = dict(LAST_RUN)
    info["total"] = time.perf_counter() - t0 - info.get("build_seconds", 0.0)
    return stats, info


def main(argv=None):
    from arch.machine import get_config
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_cnn", choices=sorted(models()))
    ap.add_argument("--configs", default="small", help="comma-separated configurations (small, reference)")
    ap.add_argument("--sims", default="amaranth,icarus,verilator,verilator-cocotb")
    ap.add_argument("--max-cycles", type=int, default=None, help="stop each RTL run after this many cycles")
    args = ap.parse_args(argv)
    ok = True
    for cname in [c.strip() for c in args.configs.split(",") if c.strip()]:
        cfg = get_config(cname)
        mem, programs = image(models()[args.model](), cfg)
        ref = mem.copy()
        t0 = time.perf_counter()
        want = run_card(cfg, ref, programs)
        t_model = time.perf_counter() - t0
        rows = []
        for sim in [s.strip() for s in args.sims.split(",") if s.strip()]:
            m = mem.copy()
            try:
                stats, info = run_one(sim, cfg, m, programs, args.max_cycles)
            except Exception as e:  # noqa: BLE001 - report and continue with the other simulators
                print(f"{sim} on {cfg.name}: failed: {type(e).__name__}: {str(e)[:500]}")
                ok = False
                continue
            if stats is None:
                same = "partial"
            else:
                same = "yes" if stats.cycles == want.cycles and np.array_equal(m, ref) else "NO"
                ok &= same == "yes"
            rows.append((sim, info["cycles"], info["seconds"], info["cycles_per_second"], info["total"],
                         info.get("build_seconds", 0.0), same))
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
