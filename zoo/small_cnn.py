"""``small_cnn``: the smallest network that exercises every layer type of the first compiler issue.

Conv(3->16, 3x3, pad 1) -> BN -> ReLU -> MaxPool(2x2, s2) -> Conv(16->24, 3x3, s2, pad 1) -> BN -> ReLU
-> MaxPool(3x3, s2, pad 1) -> Flatten -> Gemm(->10, transB=1). Weights are He-initialised and the BN
statistics plausible, so for N(0, 1) inputs the activations stay O(1): Q8.8 neither saturates nor
loses much to rounding.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ._util import bn_params, conv_out, he, init, model, tensor


def small_cnn(seed: int = 0, input_shape: tuple[int, int, int, int] = (1, 3, 32, 32)) -> onnx.ModelProto:
    """Build small_cnn for ``input_shape`` (N, 3, H, W) with weights drawn from ``seed``."""
    n, c, h, w = input_shape
    if c != 3:
        raise ValueError(f"small_cnn takes 3 input channels, got input_shape {input_shape}")
    rng = np.random.default_rng(seed)
    # spatial sizes through the network
    h1, w1 = conv_out(h, 2, 2, 0, 0), conv_out(w, 2, 2, 0, 0)           # pool1
    h2, w2 = conv_out(h1, 3, 2, 1, 1), conv_out(w1, 3, 2, 1, 1)         # conv2
    h3, w3 = conv_out(h2, 3, 2, 1, 1), conv_out(w2, 3, 2, 1, 1)         # pool2
    if min(h3, w3) < 1:
        raise ValueError(f"input_shape {input_shape} is too small for small_cnn")
    flat = 24 * h3 * w3
    inits = [
        init("conv1.weight", he(rng, (16, 3, 3, 3), 3 * 9)),
        init("conv1.bias", rng.uniform(-0.1, 0.1, 16)),
        *bn_params(rng, "bn1", 16),
        init("conv2.weight", he(rng, (24, 16, 3, 3), 16 * 9)),
        init("conv2.bias", rng.uniform(-0.1, 0.1, 24)),
        *bn_params(rng, "bn2", 24),
        init("fc.weight", he(rng, (10, flat), flat, gain=1.0)),
        init("fc.bias", rng.uniform(-0.1, 0.1, 10)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv1_out", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                                "bn1.running_var"], ["bn1_out"], name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("MaxPool", ["relu1_out"], ["pool1_out"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1_out", "conv2.weight", "conv2.bias"], ["conv2_out"], name="conv2",
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv2_out", "bn2.weight", "bn2.bias", "bn2.running_mean",
                                                "bn2.running_var"], ["bn2_out"], name="bn2", epsilon=1e-5),
        helper.make_node("Relu", ["bn2_out"], ["relu2_out"], name="relu2"),
        helper.make_node("MaxPool", ["relu2_out"], ["pool2_out"], name="pool2", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["pool2_out"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["output"], name="fc", transB=1),
    ]
    return model("small_cnn", nodes, [tensor("input", input_shape)], [tensor("output", (n, 10))], inits)
