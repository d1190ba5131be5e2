"""Wall-clock speed of the functional model and of the compiler, side by side with onnxruntime.

For each network (at its builder's input size: 224x224 for the classic ones, the real sizes of issue
11's families; one image, seeded weights; a network the compiler refuses is listed with the reason)
it prints:
onnxruntime float32 with its default intra-op thread count (the machine's cores) and with one
thread; the functional model (``sim.card.run_card`` on the compiled memory image, hazard checker
on) with as many threads as cores and with one thread (its default), on the first (cold) run,
which decodes and validates the program and records its schedule, and on warm runs, which reuse
both (the first of them also captures the CONVs' kernel operands, which the later ones reuse while
the weights' bytes are unchanged: sim/replay.py; warm times are the best run); the ratios functional model / onnxruntime at equal thread counts; the process CPU time of
the one-thread runs; the one-thread warm time with numpy's BLAS as the GEMM engine instead of the
default (sim/gemm.py); and the compile time of each network split by phase. The header names the
functional model's GEMM engine and numpy's BLAS kernels.

Every time is the best of ``--repeat`` runs (the machine may be shared; the best run is the least
disturbed one). Nothing here asserts a time: the tests check bits and cycles, this measures.

    python bench/bench_speed.py [--repeat 5] [--nets resnet18,resnet50,vgg16]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo  # noqa: E402
from arch.machine import get_config  # noqa: E402
from compiler.driver import compile_graph  # noqa: E402
from compiler.legalise import legalise  # noqa: E402
from compiler.partition import Staged, compile_partitioned  # noqa: E402
from compiler.frontend import load_model  # noqa: E402
from compiler.ir import CompileError  # noqa: E402
from compiler.quantize import quantize  # noqa: E402
from sim import card, gemm  # noqa: E402


#: issue 11's families (zoo/families.py) at their builders' real input sizes
FAMILIES = ("mobilenet_v3_small", "mobilenet_v3_small_paddle", "text_direction", "dbnet", "yolo_v8")


def blas_kernels() -> str:
    """numpy's BLAS library and the kernels it runs (OpenBLAS follows OPENBLAS_CORETYPE if set)."""
    from threadpoolctl import threadpool_info
    blas = next((d for d in threadpool_info() if d.get("user_api") == "blas"), {})
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return (f"{blas.get('internal_api', '?')} {blas.get('version', '?')}, {blas.get('architecture', '?')} kernels"
            + (f" (OPENBLAS_CORETYPE={forced} in the environment)" if forced else ""))


def best_of(n: int, fn) -> tuple[float, float]:
    """Smallest wall time and smallest process CPU time of n calls of fn, in seconds. On a shared
    machine the CPU time of a one-thread run is the steadier measure."""
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def input_shape(model) -> tuple[int, ...]:
    return tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)


def ort_times(model, repeat: int) -> dict[int, tuple[float, float]]:
    """onnxruntime CPU float32 time per image: {intra-op threads (0 = its default): (wall, CPU) seconds}."""
    x = np.random.default_rng(0).random(input_shape(model), dtype=np.float32)
    out = {}
    for threads in (0, 1):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        sess.run(None, feed)                                   # warm-up
        out[threads] = best_of(max(repeat, 10), lambda: sess.run(None, feed))
    return out


def compile_phases(model, cfg) -> tuple[object, dict[str, float]]:
    """Compile ONNX -> program and memory image as ``Compile`` does with default flags, timing each
    phase; a model whose tail (or a node between layers) the DLA does not run is compiled as
    ``Compile`` does with ``heterogeneous`` set (host stages and DLA stages), timed as a whole."""
    t = {}
    t0 = time.perf_counter()
    try:
        graph = load_model(model)
        legalise(graph, cfg)
    except CompileError:
        t0 = time.perf_counter()
        staged = compile_partitioned(model, cfg, heterogeneous=True)
        t["heterogeneous"] = time.perf_counter() - t0
        return staged, t
    t["front end"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize(graph, cfg)
    t["quantise"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = compile_graph(graph, cfg)
    t["codegen"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled.memory_image()
    t["memory image"] = time.perf_counter() - t0
    return compiled, t


def dla_stages(compiled) -> list:
    """The DLA programs of a compilation: itself, or a staged model's DLA stages (its host stages,
    run by onnx.reference, are not the functional model and are not timed)."""
    return compiled.segments if isinstance(compiled, Staged) else [compiled]


def sim_times(compiled, repeat: int, threads: int | None) -> tuple[float, tuple[float, float], int]:
    """Cold wall seconds and best warm (wall, CPU) seconds of run_card on the compiled image (each
    DLA stage in turn), and the modelled cycles."""
    stages = [(s.cfg, s.seeded_image(0)[0], s.program_addresses()) for s in dla_stages(compiled)]

    def run_all(images) -> int:
        return sum(card.run_card(cfg, m, progs, threads=threads).cycles for (cfg, _, progs), m in zip(stages, images))
    card.clear_program_cache()
    images = [mem.copy() for _, mem, _ in stages]
    t0 = time.perf_counter()
    cycles = run_all(images)
    cold = time.perf_counter() - t0
    wall, cpu = [], []
    for _ in range(repeat):
        images = [mem.copy() for _, mem, _ in stages]    # fresh images, not timed
        w, c = best_of(1, lambda: run_all(images))
        wall.append(w)
        cpu.append(c)
    return cold, (min(wall), min(cpu)), cycles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best is reported")
    ap.add_argument("--nets", default="resnet18,resnet50,vgg16," + ",".join(FAMILIES),
                    help="zoo networks, each at its builder's default (real) input size")
    args = ap.parse_args()
    cfg = get_config("reference")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# {platform.processor() or platform.machine()}, {cores} cores, load average "
          f"{os.getloadavg()[0]:.2f} at start, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"numpy {np.__version__}, onnxruntime {ort.__version__}; best of {args.repeat} runs")
    print(f"# functional model: run_card, reference configuration, hazard checker on; 'n threads': "
          f"{cores} for the functional model, onnxruntime's own default (intra_op_num_threads=0)")
    print(f"# functional model's GEMM engine: {gemm.engine()} (MDLA_SIM_GEMM); numpy's BLAS: {blas_kernels()}")
    rows, refused = [], []
    for name in args.nets.split(","):
        model = zoo.build(name)
        try:
            compiled, phases = compile_phases(model, cfg)
        except CompileError as e:
            refused.append((name, input_shape(model), str(e)))
            print(f"\n{name} ({'x'.join(map(str, input_shape(model)[1:]))}): not compiled: {e}")
            continue
        ort_t = ort_times(model, args.repeat)
        sim_default = sim_times(compiled, args.repeat, cores)
        sim_one = sim_times(compiled, args.repeat, 1)
        with gemm_engine("numpy"):
            numpy_one = sim_times(compiled, args.repeat, 1)
        rows.append((name, ort_t, sim_default, sim_one, numpy_one))
        print(f"\n{name} ({'x'.join(map(str, input_shape(model)[1:]))}): compile {sum(phases.values()):.2f} s ("
              + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
              + f"); {sum(len(s.programs[0]) for s in dla_stages(compiled))} instructions, {sim_default[2]} "
              f"modelled cycles" + (f", {len(compiled.stages) - len(compiled.segments)} host stage(s) not timed "
                                    f"(onnxruntime's time is the whole model's)" if isinstance(compiled, Staged) else ""))
    print("\nWall ms per image; ratio = functional model warm / onnxruntime at equal thread counts. "
          "CPU: process CPU time of the one-thread runs.\n")
    print("| network | ORT n threads | sim n threads, cold | warm | ratio | ORT 1 thread | sim 1 thread, cold "
          "| warm | ratio | ORT 1 thread CPU | sim 1 thread CPU | CPU ratio | sim 1 thread, numpy GEMM, warm |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, o, (c0, (w0, _), _), (c1, (w1, cpu1), _), (_, (wn, _), _) in rows:
        (ow0, _), (ow1, ocpu1) = o[0], o[1]
        print(f"| {name} | {ow0 * 1e3:.1f} | {c0 * 1e3:.0f} | {w0 * 1e3:.0f} | {w0 / ow0:.1f}x "
              f"| {ow1 * 1e3:.1f} | {c1 * 1e3:.0f} | {w1 * 1e3:.0f} | {w1 / ow1:.1f}x "
              f"| {ocpu1 * 1e3:.1f} | {cpu1 * 1e3:.0f} | {cpu1 / ocpu1:.1f}x | {wn * 1e3:.0f} |")
    for name, shape, why in refused:
        print(f"| {name} ({'x'.join(map(str, shape[1:]))}) | not compiled: {why} |")


@contextlib.contextmanager
def gemm_engine(name: str):
    """Run the functional model with GEMM engine ``name`` (sim/gemm.py) inside the block."""
    old = os.environ.get("MDLA_SIM_GEMM")
    os.environ["MDLA_SIM_GEMM"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["MDLA_SIM_GEMM"]
        else:
            os.environ["MDLA_SIM_GEMM"] = old


if __name__ == "__main__":
    main()
