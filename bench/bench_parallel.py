"""Modelled time of each parallel mode of the SDK (the tutorials' flags) on the reference
configuration, for ResNet-18 and AlexNet at 224x224: the numbers behind docs/parallel.md; then the
wall time of the simulation itself, serial against worker processes (the 'workers' flag).

    python bench/bench_parallel.py                 # both parts
    python bench/bench_parallel.py --wall          # only the wall-time part
    python bench/bench_parallel.py --wall --size 224 --repeat 5
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import microndla  # noqa: E402
import zoo  # noqa: E402

MODES = [
    ("one image, one cluster", {}),
    ("nfpgas=2 (2 images, 2 cards)", {"nfpgas": 2}),
    ("nclusters=2 (2 images)", {"nclusters": 2}),
    ("nclusters=4 (4 images)", {"nclusters": 4}),
    ("nclusters=2, clustersbatchmode=1 (1 image)", {"nclusters": 2, "clustersbatchmode": 1}),
    ("nclusters=4, clustersbatchmode=1 (1 image)", {"nclusters": 4, "clustersbatchmode": 1}),
    ("imgs_per_cluster=4 (4 images)", {"imgs_per_cluster": 4}),
    ("imgs_per_cluster=4, mvbatch=1 (4 images)", {"imgs_per_cluster": 4, "mvbatch": 1}),
]


WALL_MODES = [
    ("nfpgas=2", {"nfpgas": 2}),
    ("nclusters=2", {"nclusters": 2}),
    ("nclusters=2, clustersbatchmode=1", {"nclusters": 2, "clustersbatchmode": 1}),
    ("nclusters=4", {"nclusters": 4}),
]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {cpu}: pass\n"


def available_parallelism(cpu_s: float = 0.5) -> float:
    """The speed-up two processes get on this machine right now: the wall time of two processes that
    each burn ``cpu_s`` CPU seconds at once, against one that burns 2 x ``cpu_s``."""
    def run(n: int, cpu: float) -> float:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN.format(cpu=cpu)]) for _ in range(n)]
        for p in procs:
            p.wait()
        return time.perf_counter() - t0
    return run(1, 2 * cpu_s) / run(2, cpu_s)


def wall(size: int, repeat: int) -> None:
    """Wall time per call, serial vs worker processes, on ResNet-18 at ``size`` x ``size``: the
    best of ``repeat`` calls each (alternating between the modes) after a warm-up call (which starts the workers and decodes the
    programs). Also the CPU seconds each process used per call, and from them the wall time the
    processes could reach on an idle machine with this many cores (a bound, not a measurement)."""
    cores = os.cpu_count() or 1
    print(f"\nwall time of the simulation: ResNet-18 {size}x{size}, best of {repeat} calls, {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    print("| mode | images | serial s | processes s | speed-up | serial CPU s | processes CPU s "
          "(this process + workers) | idle-machine bound s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "resnet18.onnx")
        onnx.save(zoo.build("resnet18", input_shape=(1, 3, size, size)), path)
        for title, flags in WALL_MODES:
            ie = microndla.MDLA()
            ie.SetFlag(flags)
            ie.Compile(path)
            n = ie.GetInfo("batch")
            x = np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)
            outs, times, cpus = {}, {"serial": [], "processes": []}, {"serial": [], "processes": []}
            for mode in ("serial", "processes"):
                ie.SetFlag("workers", mode)
                outs[mode] = ie.Run(x)                 # warm-up
            pids = [w.pid for c in ie._cards for w in c.workers]

            def cpu_now() -> list[float]:
                """CPU seconds of this process and of each worker."""
                return [time.process_time()] + [_cpu_s(p) for p in pids]
            for _ in range(repeat):                    # alternating, so that both see the same load
                for mode in ("serial", "processes"):
                    ie.SetFlag("workers", mode)
                    c0 = cpu_now()
                    t0 = time.perf_counter()
                    ie.Run(x)
                    times[mode].append(time.perf_counter() - t0)
                    cpus[mode].append([b - a for a, b in zip(c0, cpu_now())])
            best, cpu = {}, {}
            for mode in times:
                k = int(np.argmin(times[mode]))
                best[mode], cpu[mode] = times[mode][k], cpus[mode][k]
            assert np.array_equal(outs["serial"], outs["processes"])
            pc = cpu["processes"]
            bound = max(max(pc), sum(pc) / cores)
            print(f"| {title} | {n} | {best['serial']:.3f} | {best['processes']:.3f} | "
                  f"{best['serial'] / best['processes']:.2f}x | {cpu['serial'][0]:.3f} | "
                  f"{' + '.join(f'{c:.3f}' for c in pc)} | {bound:.3f} |")
            ie.Free()
    print(f"speed-up two processes get on this machine now (two processes burning 0.5 CPU s each vs one "
          f"burning 1 s): {available_parallelism():.2f}x; load average {os.getloadavg()[0]:.1f} at the end")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wall", action="store_true", help="only the wall-time part")
    ap.add_argument("--size", type=int, default=112, help="input size of the wall-time part (default 112)")
    ap.add_argument("--repeat", type=int, default=7, help="calls timed per mode (default 7)")
    args = ap.parse_args()
    if not args.wall:
        modelled()
    wall(args.size, args.repeat)


def modelled() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("resnet18", "alexnet"):
            path = str(Path(tmp) / f"{name}.onnx")
            onnx.save(zoo.build(name), path)
            print(f"\n{name} (reference configuration, 250 MHz)")
            print("| mode | images | modelled ms | ms per image | images/s | wall s |")
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            for title, flags in MODES:
                ie = microndla.MDLA()
                ie.SetFlag(flags)
                ie.Compile(path)
                n = ie.GetInfo("batch")
                x = np.random.default_rng(0).random((n, 3, 224, 224), dtype=np.float32)
                t0 = time.perf_counter()
                ie.Run(x)
                wall = time.perf_counter() - t0
                ms = ie.GetInfo("hwtime")
                print(f"| {title} | {n} | {ms:.2f} | {ms / n:.2f} | {1000 * n / ms:.1f} | {wall:.2f} |")
                ie.Free()


if __name__ == "__main__":
    main()
