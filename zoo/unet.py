"""A small U-Net (Ronneberger et al. 2015) for segmentation: an encoder of conv-BN-ReLU pairs and
2x2 max-pools, a decoder that upsamples (ConvTranspose 2x2/2 as in the paper, or Resize nearest or
bilinear followed by a 3x3 convolution, as many PyTorch ports do), concatenates the encoder's
feature map of the same size (the skip connection) and applies a conv-BN-ReLU pair; a 1x1
convolution gives the class scores per pixel. Channels ``base * 2**level``; multiples of 16 keep
every concatenation word-aligned on the reference configuration."""
from __future__ import annotations

import onnx

from .builder import Builder


def unet(seed: int = 0, input_shape=(1, 3, 64, 64), classes: int = 2, base: int = 16, depth: int = 3,
         up: str = "convtranspose") -> onnx.ModelProto:
    if up not in ("convtranspose", "nearest", "linear"):
        raise ValueError(f"unet: up must be 'convtranspose', 'nearest' or 'linear', got {up!r}")
    b = Builder("unet", input_shape, seed)

    def pair(x, c):
        for _ in range(2):
            x = b.relu(b.bn(b.conv(x, c, 3, 1, 1)))
        return x

    skips, x = [], "input"
    for level in range(depth):
        x = pair(x, base << level)
        skips.append(x)
        x = b.maxpool(x, 2, 2)
    x = pair(x, base << depth)
    for level in reversed(range(depth)):
        c = base << level
        if up == "convtranspose":
            x = b.conv_transpose(x, c, 2, 2, bias=True)
        else:
            x = b.conv(b.resize(x, 2, up), c, 3, 1, 1, bias=True)
        x = pair(b.concat([x, skips[level]]), c)
    return b.finish(b.conv(x, classes, 1, bias=True, name="classifier"))
