"""A small ONNX graph builder for the zoo: tracks shapes and draws seeded weights, so that each
network is written the way PyTorch exports it (Conv without bias + BatchNormalization + Relu, Add
for residuals, GlobalAveragePool, Flatten, Gemm) in a few lines."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ._util import bn_params, conv_out, he, init, model, tensor


class Builder:
    def __init__(self, name: str, input_shape: tuple[int, int, int, int], seed: int):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {"input": tuple(input_shape)}
        self.input_shape = tuple(input_shape)
        self._n = 0

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    def conv(self, x: str, cout: int, k: int, stride: int = 1, pad: int = 0, bias: bool = False,
             name: str | None = None, group: int = 1) -> str:
        n, c, h, w = self.shapes[x]
        name = name or self._name("conv")
        ins = [x, f"{name}.weight"]
        self.inits.append(init(f"{name}.weight", he(self.rng, (cout, c // group, k, k), c // group * k * k)))
        if bias:
            ins.append(f"{name}.bias")
            self.inits.append(init(f"{name}.bias", self.rng.normal(0.0, 0.05, cout)))
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Conv", ins, [out], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4, group=group))
        self.shapes[out] = (n, cout, conv_out(h, k, stride, pad, pad), conv_out(w, k, stride, pad, pad))
        return out

    def conv_transpose(self, x: str, cout: int, k: int, stride: int, pad: int = 0, output_padding: int = 0,
                       bias: bool = False, name: str | None = None) -> str:
        n, c, h, w = self.shapes[x]
        name = name or self._name("deconv")
        ins = [x, f"{name}.weight"]
        self.inits.append(init(f"{name}.weight", he(self.rng, (c, cout, k, k), max(1, c * k * k // stride ** 2))))
        if bias:
            ins.append(f"{name}.bias")
            self.inits.append(init(f"{name}.bias", self.rng.normal(0.0, 0.05, cout)))
        out = f"{name}_out"
        self.nodes.append(helper.make_node("ConvTranspose", ins, [out], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4,
                                           output_padding=[output_padding] * 2))
        size = [stride * (d - 1) + output_padding + k - 2 * pad for d in (h, w)]
        self.shapes[out] = (n, cout, *size)
        return out

    def resize(self, x: str, scale: int, mode: str = "nearest") -> str:
        """Resize by an integer factor as PyTorch exports F.interpolate (nearest: asymmetric/floor;
        linear: half_pixel, i.e. align_corners=False)."""
        n, c, h, w = self.shapes[x]
        name = self._name("resize")
        self.inits.append(init(f"{name}.scales", np.array([1, 1, scale, scale])))
        coord = "asymmetric" if mode == "nearest" else "pytorch_half_pixel"
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Resize", [x, "", f"{name}.scales"], [out], name=name, mode=mode,
                                           coordinate_transformation_mode=coord, nearest_mode="floor"))
        self.shapes[out] = (n, c, h * scale, w * scale)
        return out

    def clip(self, x: str, lo: float, hi: float) -> str:
        """Clip with min/max inputs (opset 11+), e.g. ReLU6 as PyTorch exports it."""
        name = self._name("clip")
        self.inits += [init(f"{name}.min", np.array(lo)), init(f"{name}.max", np.array(hi))]
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Clip", [x, f"{name}.min", f"{name}.max"], [out], name=name))
        self.shapes[out] = self.shapes[x]
        return out

    def bn(self, x: str, gamma: tuple[float, float] = (0.5, 1.5), name: str | None = None) -> str:
        c = self.shapes[x][1]
        name = name or self._name("bn")
        params = bn_params(self.rng, name, c)
        params[0] = init(f"{name}.weight", self.rng.uniform(*gamma, c))
        self.inits += params
        out = f"{name}_out"
        self.nodes.append(helper.make_node("BatchNormalization", [x] + [p.name for p in params], [out],
                                           name=name, epsilon=1e-5))
        self.shapes[out] = self.shapes[x]
        return out

    def relu(self, x: str) -> str:
        name = self._name("relu")
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Relu", [x], [out], name=name))
        self.shapes[out] = self.shapes[x]
        return out

    def act(self, x: str, op: str, **attrs) -> str:
        """An element-wise activation node (Sigmoid, Tanh, LeakyRelu, ...)."""
        name = self._name(op.lower())
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, [x], [out], name=name, **attrs))
        self.shapes[out] = self.shapes[x]
        return out

    def mul(self, a: str, b: str) -> str:
        """Element-wise product; ``b`` may be a per-channel (N, C, 1, 1) tensor."""
        assert self.shapes[b] in (self.shapes[a], self.shapes[a][:2] + (1, 1)), (self.shapes[a], self.shapes[b])
        name = self._name("mul")
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Mul", [a, b], [out], name=name))
        self.shapes[out] = self.shapes[a]
        return out

    def add(self, a: str, b: str) -> str:
        assert self.shapes[a] == self.shapes[b], (self.shapes[a], self.shapes[b])
        name = self._name("add")
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=name))
        self.shapes[out] = self.shapes[a]
        return out

    def concat(self, xs: list[str]) -> str:
        n, _, h, w = self.shapes[xs[0]]
        assert all(self.shapes[x][2:] == (h, w) for x in xs)
        name = self._name("concat")
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Concat", xs, [out], name=name, axis=1))
        self.shapes[out] = (n, sum(self.shapes[x][1] for x in xs), h, w)
        return out

    def maxpool(self, x: str, k: int, stride: int, pad: int = 0, ceil: bool = False,
                pads: tuple[int, int, int, int] | None = None) -> str:
        """Max-pooling; ``pads`` (top, left, bottom, right) overrides the symmetric ``pad``."""
        n, c, h, w = self.shapes[x]
        name = self._name("maxpool")
        out = f"{name}_out"
        extra = {"ceil_mode": 1} if ceil else {}
        top, left, bottom, right = pads if pads is not None else (pad,) * 4
        self.nodes.append(helper.make_node("MaxPool", [x], [out], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[top, left, bottom, right], **extra))
        # ceil_mode: one more window where a partial one remains, as long as it starts inside the input
        more = (lambda m, p0, p1: int(ceil and (m + p0 + p1 - k) % stride != 0 and
                                      ((m + p0 + p1 - k) // stride + 1) * stride < m + p0))
        self.shapes[out] = (n, c, conv_out(h, k, stride, top, bottom) + more(h, top, bottom),
                            conv_out(w, k, stride, left, right) + more(w, left, right))
        return out

    def global_avgpool(self, x: str) -> str:
        n, c, _, _ = self.shapes[x]
        name = self._name("gap")
        out = f"{name}_out"
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [out], name=name))
        self.shapes[out] = (n, c, 1, 1)
        return out

    def flatten(self, x: str) -> str:
        n = self.shapes[x][0]
        name = self._name("flatten")
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Flatten", [x], [out], name=name, axis=1))
        self.shapes[out] = (n, int(np.prod(self.shapes[x][1:])))
        return out

    def gemm(self, x: str, m: int, name: str | None = None) -> str:
        n, k = self.shapes[x]
        name = name or self._name("fc")
        self.inits += [init(f"{name}.weight", he(self.rng, (m, k), k, gain=1.0)),
                       init(f"{name}.bias", self.rng.normal(0.0, 0.05, m))]
        out = f"{name}_out"
        self.nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], name=name, transB=1))
        self.shapes[out] = (n, m)
        return out

    def finish(self, output: str) -> onnx.ModelProto:
        return model(self.name, self.nodes, [tensor("input", self.input_shape)],
                     [tensor(output, self.shapes[output])], self.inits)
