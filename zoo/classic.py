"""AlexNet (torchvision's one-GPU variant, no LRN: the SDK's "AlexNet OWT") and VGG-16, as PyTorch
exports them in eval mode (Dropout omitted; at 224x224 the adaptive average pool is the identity)."""
from __future__ import annotations

import onnx

from .builder import Builder


def alexnet(seed: int = 0, input_shape=(1, 3, 224, 224), classes: int = 1000) -> onnx.ModelProto:
    b = Builder("alexnet", input_shape, seed)
    x = b.maxpool(b.relu(b.conv("input", 64, 11, 4, 2, bias=True)), 3, 2)
    x = b.maxpool(b.relu(b.conv(x, 192, 5, 1, 2, bias=True)), 3, 2)
    x = b.relu(b.conv(x, 384, 3, 1, 1, bias=True))
    x = b.relu(b.conv(x, 256, 3, 1, 1, bias=True))
    x = b.maxpool(b.relu(b.conv(x, 256, 3, 1, 1, bias=True)), 3, 2)
    x = b.relu(b.gemm(b.flatten(x), 4096))
    x = b.relu(b.gemm(x, 4096))
    return b.finish(b.gemm(x, classes, name="classifier"))


def vgg16(seed: int = 0, input_shape=(1, 3, 224, 224), classes: int = 1000) -> onnx.ModelProto:
    b = Builder("vgg16", input_shape, seed)
    x = "input"
    for n, c in ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)):
        for _ in range(n):
            x = b.relu(b.conv(x, c, 3, 1, 1, bias=True))
        x = b.maxpool(x, 2, 2)
    x = b.relu(b.gemm(b.flatten(x), 4096))
    x = b.relu(b.gemm(x, 4096))
    return b.finish(b.gemm(x, classes, name="classifier"))
