"""MAC utilisation of the lowered layers (grouped/depthwise Conv, ConvTranspose by phases,
Resize as depthwise transposed convolutions) side by side with the dense convolution of the same
shape, on the reference configuration: the numbers behind the lowering decisions in
docs/architecture.md. Cycles are the functional model's (cycle-exact with the RTL). Nearest
upsampling and the corners of bilinear upsampling are copies, run on the pooling unit (no MACs).

    python bench/bench_lowering.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arch.machine import REFERENCE  # noqa: E402
from compiler.driver import compile_graph  # noqa: E402
from compiler.frontend import load_model  # noqa: E402
from compiler.quantize import quantize  # noqa: E402
from sim.card import run_card  # noqa: E402
from zoo import kernels  # noqa: E402

CASES = [
    ("dense 3x3, 64 -> 64, 28x28", kernels.conv_model(64, 64, 28, 28, 3, 1, 1)),
    ("depthwise 3x3, 64 ch, 28x28", kernels.grouped_conv_model(64, 64, 64, 28, 28, 3, 1, 1)),
    ("grouped 3x3, 64 -> 64, 4 groups, 28x28", kernels.grouped_conv_model(64, 64, 4, 28, 28, 3, 1, 1)),
    ("ConvTranspose 4x4 s2, 64 -> 64, 14x14", kernels.conv_transpose_model(64, 64, 14, 14, 4, 2, 1)),
    ("Resize nearest x2, 64 ch, 14x14", kernels.resize_model(64, 14, 14, (2, 2))),
    ("Resize bilinear x2, 64 ch, 14x14", kernels.resize_model(64, 14, 14, (2, 2), "linear", "half_pixel")),
]


def main() -> None:
    cfg = REFERENCE
    peak = cfg.lanes * cfg.vv_per_mv * cfg.mv_per_cluster
    print(f"{'layer':<42}{'cycles':>10}{'useful MACs':>14}{'MAC util':>10}{'vs dense':>10}")
    dense = None
    for name, model in CASES:
        c = compile_graph(quantize(load_model(model), cfg), cfg)
        mem, _ = c.seeded_image(0)
        cycles = run_card(cfg, mem, c.program_addresses()).cycles
        macs = sum(l.macs for l in c.layers)
        dense = dense or cycles
        print(f"{name:<42}{cycles:>10}{macs:>14}{macs / cycles / peak:>10.1%}{cycles / dense:>10.2f}")


if __name__ == "__main__":
    main()
