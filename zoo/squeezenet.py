"""SqueezeNet 1.1 (Iandola et al. 2016; torchvision's ``squeezenet1_1`` layout): a 3x3/2 stem, fire
modules (a 1x1 "squeeze" conv feeding parallel 1x1 and 3x3 "expand" convs, concatenated along the
channels), max-pools with ceil_mode, and a 1x1 conv classifier followed by a global average pool.
Convolutions carry biases and no BatchNormalization, as in the original."""
from __future__ import annotations

import onnx

from .builder import Builder

#: (squeeze, expand 1x1, expand 3x3) per fire module; None = 3x3/2 max-pool (ceil_mode)
_LAYOUT = [None, (16, 64, 64), (16, 64, 64), None, (32, 128, 128), (32, 128, 128), None,
           (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]


def _fire(b: Builder, x: str, squeeze: int, e1: int, e3: int) -> str:
    s = b.relu(b.conv(x, squeeze, 1, bias=True))
    return b.concat([b.relu(b.conv(s, e1, 1, bias=True)), b.relu(b.conv(s, e3, 3, pad=1, bias=True))])


def squeezenet(seed: int = 0, input_shape=(1, 3, 224, 224), classes: int = 1000) -> onnx.ModelProto:
    b = Builder("squeezenet1_1", input_shape, seed)
    x = b.relu(b.conv("input", 64, 3, stride=2, bias=True))
    for spec in _LAYOUT:
        x = b.maxpool(x, 3, 2, ceil=True) if spec is None else _fire(b, x, *spec)
    x = b.relu(b.conv(x, classes, 1, bias=True, name="classifier"))
    return b.finish(b.flatten(b.global_avgpool(x)))
