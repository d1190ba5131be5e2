"""Tiny YOLOv2 (Redmon and Farhadi 2017, the "tiny-yolo-voc" configuration), a YOLO-style detector
as darknet-to-ONNX converters export it:

* eight 3x3 convolutions, each followed by BatchNormalization and LeakyRelu(0.1), with 16, 32, ...,
  512, then 1024 and 1024 filters;
* 2x2/2 max-pools after the first five, and after the sixth a 2x2 max-pool of stride 1 padded by
  one pixel at the bottom and the right only (darknet's "same" size), an asymmetric padding;
* a 1x1 convolution with bias giving, per cell of the 13x13 grid (416x416 input), ``anchors`` boxes
  of (x, y, w, h, objectness) and ``classes`` class scores.

Decoding the boxes (sigmoid, exp with the anchors, non-maximum suppression) is host work and not
part of the model, as with the SDK's YOLO examples."""
from __future__ import annotations

import onnx

from .builder import Builder


def tiny_yolo_v2(seed: int = 0, input_shape=(1, 3, 416, 416), classes: int = 20, anchors: int = 5) -> onnx.ModelProto:
    if input_shape[2] % 32 or input_shape[3] % 32:
        raise ValueError(f"tiny_yolo_v2: height and width must be multiples of 32 (five 2x2/2 pools), "
                         f"got {input_shape[2:]}")
    b = Builder("tiny_yolo_v2", input_shape, seed)
    x = "input"
    for layer, c in enumerate((16, 32, 64, 128, 256, 512, 1024, 1024)):
        x = b.act(b.bn(b.conv(x, c, 3, 1, 1)), "LeakyRelu", alpha=0.1)
        if layer < 5:
            x = b.maxpool(x, 2, 2)
        elif layer == 5:
            x = b.maxpool(x, 2, 1, pads=(0, 0, 1, 1))
    return b.finish(b.conv(x, anchors * (5 + classes), 1, bias=True, name="detector"))
