"""An Inception-style network (GoogLeNet's layout, Szegedy et al. 2015, without LRN and auxiliary
heads): a 7x7/2 stem, then inception modules whose four parallel branches (1x1; 1x1 -> 3x3;
1x1 -> 5x5; 3x3 max-pool -> 1x1) are concatenated along the channels; global average pool and a
classifier. BatchNormalization after every convolution keeps random-weight activations in range."""
from __future__ import annotations

import onnx

from .builder import Builder

#: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per module, GoogLeNet's 3a, 3b, 4a, 4b
_MODULES = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), None,
            (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64)]


def _conv_bn_relu(b: Builder, x: str, c: int, k: int, stride: int = 1) -> str:
    return b.relu(b.bn(b.conv(x, c, k, stride, k // 2)))


def _module(b: Builder, x: str, spec) -> str:
    c1, r3, c3, r5, c5, pp = spec
    br1 = _conv_bn_relu(b, x, c1, 1)
    br2 = _conv_bn_relu(b, _conv_bn_relu(b, x, r3, 1), c3, 3)
    br3 = _conv_bn_relu(b, _conv_bn_relu(b, x, r5, 1), c5, 5)
    br4 = _conv_bn_relu(b, b.maxpool(x, 3, 1, 1), pp, 1)
    return b.concat([br1, br2, br3, br4])


def inception(seed: int = 0, input_shape=(1, 3, 224, 224), classes: int = 1000) -> onnx.ModelProto:
    b = Builder("inception", input_shape, seed)
    x = b.maxpool(_conv_bn_relu(b, "input", 64, 7, 2), 3, 2, 1)
    x = b.maxpool(_conv_bn_relu(b, _conv_bn_relu(b, x, 64, 1), 192, 3), 3, 2, 1)
    for spec in _MODULES:
        x = b.maxpool(x, 3, 2, 1) if spec is None else _module(b, x, spec)
    out = b.gemm(b.flatten(b.global_avgpool(x)), classes, name="fc")
    return b.finish(out)
