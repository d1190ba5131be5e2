"""LinkNet (Chaurasia and Culurciello 2017) for segmentation, with a ResNet-18 encoder as the common
PyTorch ports build it.

* Encoder: the ResNet-18 stem (7x7/2 conv, 3x3/2 max-pool) and its four stages of basic residual
  blocks, giving feature maps e1..e4 at 1/4 .. 1/32 of the input with ``base * (1, 2, 4, 8)``
  channels.
* Decoder blocks (m -> n channels): a 1x1 conv to m/4, a 3x3 ConvTranspose with stride 2 (pads 1,
  output_padding 1: exactly twice the size), and a 1x1 conv to n, each followed by BN and ReLU.
* Links: the output of each decoder block is added to the encoder map of the same size, the
  network's defining trait (U-Net concatenates instead): d4 = D4(e4) + e3, d3 = D3(d4) + e2,
  d2 = D2(d3) + e1, d1 = D1(d2).
* Head: a 2x2/2 ConvTranspose to base/2 channels (back to the input's size), a 3x3 conv, and a 1x1
  conv giving the class scores per pixel. (The original head's 3x3 full-conv without padding and
  2x2 conv change the size by one pixel each way; this head keeps sizes exact.)

With ``base=64`` the encoder is exactly ResNet-18's; the default ``base=32`` is a small LinkNet."""
from __future__ import annotations

import onnx

from .builder import Builder
from .resnet import _basic


def linknet(seed: int = 0, input_shape=(1, 3, 128, 128), classes: int = 2, base: int = 32) -> onnx.ModelProto:
    if base % 16 or base < 16:
        raise ValueError(f"linknet: base must be a positive multiple of 16 (m/4 channels in the decoder), got {base}")
    if input_shape[2] % 32 or input_shape[3] % 32:
        raise ValueError(f"linknet: height and width must be multiples of 32 (five halvings), got {input_shape[2:]}")
    b = Builder("linknet", input_shape, seed)

    def cbr(x, c, k, stride=1, pad=0):
        return b.relu(b.bn(b.conv(x, c, k, stride, pad)))

    def decoder(x, n):
        m = b.shapes[x][1]
        x = cbr(x, m // 4, 1)
        x = b.relu(b.bn(b.conv_transpose(x, m // 4, 3, 2, pad=1, output_padding=1)))
        return cbr(x, n, 1)

    x = b.maxpool(cbr("input", base, 7, 2, 3), 3, 2, 1)
    enc = []
    for stage in range(4):
        width = base << stage
        for i in range(2):
            x = _basic(b, x, width, 2 if stage > 0 and i == 0 else 1)
        enc.append(x)
    d = enc[3]
    for stage in (3, 2, 1):                    # d4, d3, d2: up one level, then the link
        d = b.add(decoder(d, base << (stage - 1)), enc[stage - 1])
    d = decoder(d, base)                       # d1
    y = b.relu(b.bn(b.conv_transpose(d, base // 2, 2, 2)))
    y = cbr(y, base // 2, 3, 1, 1)
    return b.finish(b.conv(y, classes, 1, bias=True, name="classifier"))
