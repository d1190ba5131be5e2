"""Modelled time of each parallel mode of the SDK (the tutorials' flags) on the reference
configuration, for ResNet-18 and AlexNet at 224x224: the numbers behind docs/parallel.md.

    python bench/bench_parallel.py

The wall time of the simulation itself, serial against the cards as Ray actors, is
bench/bench_distributed.py's (the worker processes this script also timed were retired for Ray).
"""
from __future__ import annotations

import argparse
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


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    modelled()


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
