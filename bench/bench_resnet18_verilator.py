"""One whole ResNet-18 image (224x224) on the Verilog card of the REFERENCE configuration in
Verilator, against the functional model.

zoo.resnet18 (seeded weights and input) is compiled for one cluster of REFERENCE and run from the
same memory image on the functional model (``sim.card.run_card``) and on the exported Verilog in
Verilator (``hw.verilog_run.run_verilog``: a build of the one cluster the program uses, run by the
free-running C++ harness of ``hw/verilator_main.py`` by default, memory loaded and dumped by the
simulator with $readmemh/$writememh). The Verilator run must end with the model's memory image, bit
for bit over the whole image, its cycle count and every counter. Prints the build time (export plus
C++ compile; 0 when cached), the simulation wall time, cycles/s and the ratio of Verilator's wall
time to the functional model's. While it runs, a progress bar shows the cycles done of the total the
functional model predicts, cycles/s and the time left.

    python bench/bench_resnet18_verilator.py [--max-cycles N] [--size 224] [--harness main|cocotb]

``--max-cycles N`` stops the RTL after N cycles: the comparison is skipped and the wall time of the
whole image is projected from the measured cycles/s (for a machine too slow to wait for the end).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arch.machine import REFERENCE  # noqa: E402
from sim.card import SimError, run_card  # noqa: E402

FIELDS = ("cycles", "instructions", "busy", "token_wait", "port_wait", "bytes_loaded", "bytes_stored",
          "macs", "mac_slots", "saturations")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    ap.add_argument("--max-cycles", type=int, default=None,
                    help="stop the RTL after this many cycles and project the whole image's time")
    ap.add_argument("--harness", default="main", choices=["main", "cocotb"],
                    help="the C++ harness (default) or cocotb")
    args = ap.parse_args(argv)
    cfg = REFERENCE

    from compiler.driver import compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    from hw.export import mem_words_for
    from hw.card import clusters_needed
    from hw.verilator_main import build_main
    from hw.verilog_run import LAST_RUN, build, run_verilog, simulator_available
    import zoo

    why = simulator_available("verilator")
    if why:
        print(f"verilator unavailable: {why}")
        return 2
    t0 = time.perf_counter()
    c = compile_graph(quantize(load_model(zoo.resnet18(seed=0, input_shape=(1, 3, args.size, args.size))), cfg), cfg)
    mem, _ = c.seeded_image(0)
    programs = c.program_addresses()
    log(f"compiled resnet18 {args.size}x{args.size} for {cfg.name} in {time.perf_counter() - t0:.1f} s: "
        f"{len(mem):,} byte image, programs {programs}")

    ref = mem.copy()
    t0 = time.perf_counter()
    want = run_card(cfg, ref, programs)
    t_model = time.perf_counter() - t0
    log(f"functional model: {want.cycles:,} cycles in {t_model:.2f} s ({want.cycles / t_model:,.0f} cycles/s)")

    words = mem_words_for(cfg, len(mem))
    t0 = time.perf_counter()
    n = clusters_needed(programs)
    b = build_main(cfg, words, n) if args.harness == "main" else build("verilator", cfg, words, clusters=n)
    t_build = time.perf_counter() - t0
    log(f"verilator build ({args.harness} harness, {n} cluster(s), {words:,} words = "
        f"{words * cfg.beat_bytes >> 20} MiB memory): "
        f"{'cached' if b.cached else f'{t_build:.0f} s (export and C++ compile)'}; {b.build_dir}")

    got_mem = mem.copy()
    partial = args.max_cycles is not None and args.max_cycles < want.cycles
    t0 = time.perf_counter()
    try:
        got = run_verilog("verilator", cfg, got_mem, programs, max_cycles=args.max_cycles, harness=args.harness,
                          progress=True)
    except SimError as e:
        if not partial or not LAST_RUN:
            raise
        got = None
        log(f"stopped as asked: {str(e).splitlines()[0]}")
    t_run = time.perf_counter() - t0
    cps = LAST_RUN["cycles_per_second"]
    print()
    print(f"ResNet-18 {args.size}x{args.size}, {cfg.name}, {n} cluster(s), {args.harness} harness: "
          f"{want.cycles:,} cycles")
    print("| | cycles | wall s | cycles/s | wall / functional model |")
    print("|---|---:|---:|---:|---:|")
    print(f"| functional model | {want.cycles:,} | {t_model:.2f} | {want.cycles / t_model:,.0f} | 1 |")
    print(f"| Verilator (sim loop) | {LAST_RUN['cycles']:,} | {LAST_RUN['seconds']:.1f} | {cps:,.0f} | "
          f"{LAST_RUN['seconds'] / t_model * want.cycles / max(LAST_RUN['cycles'], 1):,.0f} |")
    print(f"| Verilator (with load/dump) | | {t_run:.1f} | | |")
    print(f"build: {'cached' if b.cached else f'{t_build:.0f} s'}")
    if partial:
        proj = want.cycles / max(cps, 1e-9)
        print(f"partial run: {LAST_RUN['cycles']:,} of {want.cycles:,} cycles; the whole image would take "
              f"{proj:,.0f} s ({proj / 60:.1f} min) at {cps:,.0f} cycles/s")
        return 0
    ok = got.cycles == want.cycles
    for cl, w in want.clusters.items():
        for f in FIELDS:
            if getattr(got.clusters[cl], f) != getattr(w, f):
                print(f"MISMATCH cluster {cl} {f}: verilator {getattr(got.clusters[cl], f)} model {getattr(w, f)}")
                ok = False
    diff = np.flatnonzero(got_mem != ref)
    if diff.size:
        print(f"MISMATCH: {diff.size} memory bytes differ, first at {diff[0]:#x}")
        ok = False
    print(f"bit-exact memory image ({len(mem):,} bytes) and cycle-exact ({got.cycles:,} cycles): "
          f"{'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
