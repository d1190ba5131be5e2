"""Images per second of a two-card ResNet-18 Run, the three ways this project runs it: serial (the
cards one after another in this process: workers='serial', and 'auto', the default), the cards as
Ray actors on a local Ray instance (workers='ray', no address) and on a simulated Ray cluster of
one-CPU nodes (a ray.cluster_utils.Cluster on this machine, one card per node), on the same object,
outputs checked equal; then the scaling with the number of simulated nodes (cards = nodes).

The local worker processes (workers='processes') this benchmark also measured were retired for Ray
by the 20 % rule of issue 15 (docs/parallel.md keeps the measurements).

    python bench/bench_distributed.py [--size 224] [--repeat 3] [--cluster-nodes 2] [--nodes 1,2] [--address ADDRESS]

``--address``: also measure on a real Ray cluster (cards spread over its nodes; docs/parallel.md).
"""
from __future__ import annotations

import argparse
import contextlib
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


def timed_calls(ie, x, repeat: int) -> list[float]:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ie.Run(x)
        ts.append(time.perf_counter() - t0)
    return ts


@contextlib.contextmanager
def simulated_cluster(nodes: int):
    """A Ray cluster of ``nodes`` one-CPU nodes on this machine (a head without CPUs, so that every
    card lands on a node of its own), connected for the duration."""
    import ray
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def measure(ie, x, repeat: int) -> tuple[np.ndarray, float, float, str]:
    """(outputs, first call s, best call s, engine) of ``ie`` as its flags stand."""
    t0 = time.perf_counter()
    y = ie.Run(x)                       # warm-up: starts the actors, loads the cards
    first = time.perf_counter() - t0
    best = min(timed_calls(ie, x, repeat))
    return y, first, best, ie.GetInfo("engine")


def compare_engines(path: str, x: np.ndarray, repeat: int, cluster_nodes: int, address: str | None) -> dict:
    from runtime import ray_cards
    ie = microndla.MDLA()
    ie.SetFlag("nfpgas", 2)
    ie.Compile(path)
    rows = {}
    ie.SetFlag("workers", "serial")
    rows["serial"] = measure(ie, x, repeat)
    ie.SetFlag("workers", "ray")
    rows["Ray, local instance"] = measure(ie, x, repeat)
    ray_cards.release(ie._owner)        # the local instance goes; the next engine starts its own
    with simulated_cluster(cluster_nodes):
        rows[f"Ray, {cluster_nodes} simulated nodes"] = measure(ie, x, repeat)
        ray_cards.release(ie._owner)
    if address:
        ie.SetFlag("ray_address", address)
        rows["Ray, cluster at " + address] = measure(ie, x, repeat)
        ray_cards.release(ie._owner)
    ie.Free()
    for name, (y, *_rest) in rows.items():
        assert np.array_equal(y, rows["serial"][0]), f"{name} differs from serial"
    return rows


def scaling(path: str, size: int, nodes_list: list[int], repeat: int) -> list[tuple[int, float]]:
    rows = []
    for k in nodes_list:
        with simulated_cluster(k):
            ie = microndla.MDLA()
            ie.SetFlag({"workers": "ray", "nfpgas": k})
            ie.Compile(path)
            x = np.random.default_rng(1).random((k, 3, size, size), dtype=np.float32)
            ie.Run(x)
            rows.append((k, k / min(timed_calls(ie, x, repeat))))
            ie.Free()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cluster-nodes", type=int, default=2,
                    help="simulated Ray nodes of the third engine (default 2: one per card)")
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
        rows = compare_engines(path, x, args.repeat, args.cluster_nodes, args.address)
        serial = rows["serial"][2]
        print("| engine | s per Run | images/s | vs serial | first Run s (start-up, load) |")
        print("|---|---:|---:|---:|---:|")
        for name, (_y, first, best, _engine) in rows.items():
            print(f"| {name} | {best:.3f} | {2 / best:.2f} | {serial / best:.2f}x | {first:.2f} |")
        for name, (*_r, engine) in rows.items():
            print(f"  {name}: {engine}")
        print(f"outputs of every engine equal to serial, bit for bit; load average {os.getloadavg()[0]:.2f} at the end")
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
