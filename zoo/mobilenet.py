"""MobileNetV2 (Sandler et al. 2018): a 3x3/2 stem, inverted residual blocks (1x1 expansion,
3x3 depthwise, 1x1 linear projection, a residual Add where the shape allows), a 1x1 convolution to
1280 channels, global average pool and a classifier. ``width`` scales the channels as the paper's
width multiplier does (rounded to multiples of 8).

The activation is ReLU6 in the paper (``relu6=True``: Clip(0, 6), as PyTorch exports it); by default
plain Relu, which the DLA fuses into the convolutions. Weights are He-initialised; the projections'
BatchNormalizations get a small gamma (as the ResNets' last branch BN) so that random-weight
activations stay inside the Q8.8 range."""
from __future__ import annotations

import onnx

from .builder import Builder

#: (expansion t, channels c, repeats n, first stride s), the paper's table 2
_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _ch(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


def mobilenet_v2(seed: int = 0, input_shape=(1, 3, 224, 224), classes: int = 1000, width: float = 1.0,
                 relu6: bool = False) -> onnx.ModelProto:
    b = Builder("mobilenet_v2", input_shape, seed)

    def act(x):
        return b.clip(x, 0.0, 6.0) if relu6 else b.relu(x)

    def cba(x, c, k, stride=1, group=1):
        return act(b.bn(b.conv(x, c, k, stride, k // 2, group=group)))

    x = cba("input", _ch(32 * width), 3, 2)
    for t, c, n, s in _BLOCKS:
        cout = _ch(c * width)
        for i in range(n):
            cin = b.shapes[x][1]
            h = cba(x, cin * t, 1) if t != 1 else x
            h = cba(h, cin * t, 3, s if i == 0 else 1, group=cin * t)      # depthwise
            # linear bottleneck; a small gamma keeps the residual sums of random weights in range
            h = b.bn(b.conv(h, cout, 1), gamma=(0.2, 0.5))
            x = b.add(h, x) if (s == 1 or i > 0) and cin == cout else h
    x = cba(x, _ch(1280 * max(1.0, width)), 1)
    out = b.gemm(b.flatten(b.global_avgpool(x)), classes, name="classifier")
    return b.finish(out)
