"""ResNet-18/34/50 (He et al. 2016, torchvision's layout: 7x7/2 stem, 3x3/2 max-pool, four stages,
global average pool, 1000-way classifier), written as PyTorch exports them in eval mode but with
the BatchNormalization nodes kept, so the compiler's folding is exercised.

Weights are He-initialised; the last BatchNormalization of each residual branch gets a small gamma
(the "zero-init residual" practice of trained ResNets), so the residual stream grows slowly and
random-weight activations stay in Q8.8's range the way trained ones do."""
from __future__ import annotations

import onnx

from .builder import Builder

_BRANCH_GAMMA = (0.1, 0.3)


def _basic(b: Builder, x: str, cout: int, stride: int) -> str:
    y = b.relu(b.bn(b.conv(x, cout, 3, stride, 1)))
    y = b.bn(b.conv(y, cout, 3, 1, 1), gamma=_BRANCH_GAMMA)
    short = x if stride == 1 and b.shapes[x][1] == cout else b.bn(b.conv(x, cout, 1, stride, 0))
    return b.relu(b.add(y, short))


def _bottleneck(b: Builder, x: str, width: int, stride: int) -> str:
    cout = width * 4
    y = b.relu(b.bn(b.conv(x, width, 1, 1, 0)))
    y = b.relu(b.bn(b.conv(y, width, 3, stride, 1)))
    y = b.bn(b.conv(y, cout, 1, 1, 0), gamma=_BRANCH_GAMMA)
    short = x if stride == 1 and b.shapes[x][1] == cout else b.bn(b.conv(x, cout, 1, stride, 0))
    return b.relu(b.add(y, short))


def _resnet(name: str, blocks: list[int], bottleneck: bool, seed: int, input_shape, classes: int) -> onnx.ModelProto:
    b = Builder(name, input_shape, seed)
    x = b.maxpool(b.relu(b.bn(b.conv("input", 64, 7, 2, 3, name="conv1"))), 3, 2, 1)
    for stage, n in enumerate(blocks):
        width = 64 << stage
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            x = _bottleneck(b, x, width, stride) if bottleneck else _basic(b, x, width, stride)
    out = b.gemm(b.flatten(b.global_avgpool(x)), classes, name="fc")
    return b.finish(out)


def resnet18(seed: int = 0, input_shape=(1, 3, 224, 224), classes: int = 1000) -> onnx.ModelProto:
    return _resnet("resnet18", [2, 2, 2, 2], False, seed, input_shape, classes)


def resnet34(seed: int = 0, input_shape=(1, 3, 224, 224), classes: int = 1000) -> onnx.ModelProto:
    return _resnet("resnet34", [3, 4, 6, 3], False, seed, input_shape, classes)


def resnet50(seed: int = 0, input_shape=(1, 3, 224, 224), classes: int = 1000) -> onnx.ModelProto:
    return _resnet("resnet50", [3, 4, 6, 3], True, seed, input_shape, classes)
