"""Images per second of a two-card ResNet-18 Run: serial, the local worker processes
(workers='processes', runtime/workers.py) and Ray (workers='ray', a local Ray instance), in the same
run and on the same object; then the scaling with the number of simulated Ray nodes (a
ray.cluster_utils.Cluster of one-CPU nodes on this machine, one card per node). Applies the 20 %
rule of issue 15: Ray within 20 % of the worker processes' wall time would retire the home-made pool.

    python bench/bench_distributed.py [--size 224] [--repeat 3] [--nodes 1,2] [--address ADDRESS]

``--address``: also measure on a real Ray cluster (cards spread over its nodes; docs/parallel.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")      # Ray on loopback (runtime/ray_cards.py)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import microndla  # noqa: E402
import zoo  # noqa: E402

RULE = 0.20


def timed_calls(ie, x, repeat: int) -> list[float]:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ie.Run(x)
        ts.append(time.perf_counter() - t0)
    return ts


def compare_modes(path: str, x: np.ndarray, repeat: int, address: str | None) -> dict:
    ie = microndla.MDLA()
    ie.SetFlag("nfpgas", 2)
    ie.Compile(path)
    modes = ["serial", "processes", "ray"] + (["ray-cluster"] if address else [])
    outs, best, first = {}, {}, {}
    for mode in modes:
        ie.SetFlag("workers", "ray" if mode.startswith("ray") else mode)
        ie.SetFlag("ray_address", address if mode == "ray-cluster" else "")
        t0 = time.perf_counter()
        outs[mode] = ie.Run(x)                  # warm-up: starts the workers / actors, loads the cards
        first[mode] = time.perf_counter() - t0
        best[mode] = min(timed_calls(ie, x, repeat))
        if mode.startswith("ray"):
            engine = ie.GetInfo("engine")
            from runtime import ray_cards
            ray_cards.release(ie._owner)        # the next mode starts its own
            print(f"  {mode}: {engine}")
    ie.Free()
    for mode in modes[1:]:
        assert np.array_equal(outs[mode], outs["serial"]), f"{mode} differs from serial"
    return {"best": best, "first": first}


def scaling(path: str, size: int, nodes_list: list[int], repeat: int) -> list[tuple[int, float]]:
    import ray
    from ray.cluster_utils import Cluster
    rows = []
    for k in nodes_list:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(k):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        try:
            ie = microndla.MDLA()
            ie.SetFlag({"workers": "ray", "nfpgas": k})
            ie.Compile(path)
            x = np.random.default_rng(1).random((k, 3, size, size), dtype=np.float32)
            ie.Run(x)
            rows.append((k, k / min(timed_calls(ie, x, repeat))))
            ie.Free()
        finally:
            ray.shutdown()
            c.shutdown()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--nodes", default="1,2", help="simulated Ray node counts for the scaling part ('' to skip)")
    ap.add_argument("--address", default=None, help="also run on the Ray cluster at this address")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "r18.onnx")
        onnx.save(zoo.resnet18(seed=0, input_shape=(1, 3, args.size, args.size)), path)
        x = np.random.default_rng(0).random((2, 3, args.size, args.size), dtype=np.float32)
        print(f"ResNet-18 {args.size}x{args.size}, nfpgas=2 (2 images per Run), best of {args.repeat} after a warm-up, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
        r = compare_modes(path, x, args.repeat, args.address)
        best, first = r["best"], r["first"]
        print("| engine | s per Run | images/s | vs serial | first Run s (start-up, load) |")
        print("|---|---:|---:|---:|---:|")
        for mode, t in best.items():
            print(f"| {mode} | {t:.3f} | {2 / t:.2f} | {best['serial'] / t:.2f}x | {first[mode]:.2f} |")
        ratio = best["ray"] / best["processes"]
        print(f"Ray local / worker processes wall time: {ratio:.3f}")
        if ratio <= 1 + RULE:
            print(f"within {RULE:.0%}: by the rule of issue 15 the home-made pool could be retired for Ray")
        else:
            print(f"not within {RULE:.0%}: the worker processes stay the low-latency local path")
        nodes = [int(n) for n in args.nodes.split(",") if n]
        if nodes:
            print()
            print("Scaling with simulated Ray nodes (one 1-CPU node per card, one card per node, on this machine):")
            print("| nodes = cards | images/s |")
            print("|---:|---:|")
            for k, ips in scaling(path, args.size, nodes, args.repeat):
                print(f"| {k} | {ips:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
