"""Front end, operator translation: one handler ``_op_<Name>`` per operator of the table
(:mod:`compiler.ops`), turning an ONNX node into a layer of the IR (:mod:`compiler.ir`), a pending
fusion (:class:`compiler.frontend_fusion._Fusable`) or a view.

Part of :class:`compiler.frontend._FrontEnd` (the :class:`Translate` mixin)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx

from .frontend_canon import act_available
from .frontend_fusion import _Fusable
from .ir import AvgPool, CompileError, Concat, Conv, MaxPool

__all__ = ["ACTIVATIONS", "Translate"]

#: ONNX activation op -> the IR's activation name (arch.numerics.ACT_NAMES)
ACTIVATIONS = {"Relu": "relu", "LeakyRelu": "leaky", "Clip": "clip", "Sigmoid": "sigmoid", "Tanh": "tanh",
               "HardSwish": "hardswish", "Silu": "silu", "Mish": "mish"}

#: float32's largest value: ONNX Clip's default bounds (opset < 11) mean "unbounded"
_FLT_MAX = 3.4028234663852886e38



# --------------------------------------------------------------------------------------------
# interpolation kernels (Resize, Upsample)
# --------------------------------------------------------------------------------------------

def _interp_taps(s: int, mode: str, coord: str, nearest: str) -> list[dict[int, Fraction]]:
    """For an integer factor s, the weights of input pixel m + d in output pixel s*m + r, per phase r:
    ONNX's coordinate formulas evaluated exactly (Fractions) at an interior m, where they do not
    depend on m. Clamping at the borders is the replicated border of ``Conv.edge``."""
    m = 1000
    phases = []
    for r in range(s):
        y = s * m + r
        if coord in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric"):
            xo = Fraction(2 * y + 1, 2 * s) - Fraction(1, 2)
        elif coord == "tf_half_pixel_for_nn":
            xo = Fraction(2 * y + 1, 2 * s)
        else:   # asymmetric, and align_corners with s == 1
            xo = Fraction(y, s)
        if mode == "nearest":
            fl = math.floor(xo)
            frac = xo - fl
            up = {"floor": False, "ceil": frac > 0, "round_prefer_floor": frac > Fraction(1, 2),
                  "round_prefer_ceil": frac >= Fraction(1, 2)}[nearest]
            phases.append({fl + up - m: Fraction(1)})
        else:
            fl = math.floor(xo)
            f = xo - fl
            phases.append({d: v for d, v in ((fl - m, 1 - f), (fl + 1 - m, f)) if v})
    return phases


def _interp_kernel(s: int, phases: list[dict[int, Fraction]], edge: int) -> tuple[np.ndarray, int, int]:
    """(ConvTranspose kernel, forward pad before, forward pad after) over the input extended by
    ``edge`` pixels per side: output s*m + r = sum_d w_r[d] * x[m + d], the kernel tap of (r, d)
    being r + s*(dmax - d)."""
    ds = [d for p in phases for d in p]
    dmin, dmax = min(ds), max(ds)
    k = s * (dmax - dmin + 1)
    kernel = np.zeros(k)
    for r, p in enumerate(phases):
        for d, v in p.items():
            kernel[r + s * (dmax - d)] = float(v)
    begin, end = s * (dmax + edge), s * (edge - dmin)      # ConvTranspose pads
    nz = np.flatnonzero(kernel)
    lead, trail = int(nz[0]), int(k - 1 - nz[-1])          # taps without weight would only cost MACs
    kernel = kernel[lead:k - trail]
    begin, end, k = begin - lead, end - trail, k - lead - trail
    return kernel, k - 1 - begin, k - 1 - end




class Translate:
    """The operator handlers (a mixin of :class:`compiler.frontend._FrontEnd`)."""

    # ---- windows (Conv and MaxPool) ------------------------------------------------------------
    @staticmethod
    def _window(where: str, attrs: dict, in_hw: tuple[int, int], kernel: tuple[int, int],
                dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int]]:
        """(strides, pads (top, left, bottom, right), output (H, W)) from ONNX attributes."""
        strides = tuple(attrs.get("strides", (1, 1)))
        if len(strides) != 2 or min(strides) < 1:
            raise CompileError(f"{where}: strides {list(strides)} must be two positive integers")
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        if auto_pad == "NOTSET":
            pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
            if len(pads) != 4 or min(pads) < 0:
                raise CompileError(f"{where}: pads {list(pads)} must be four non-negative integers")
            begin, end = pads[:2], pads[2:]
        elif auto_pad == "VALID":
            begin, end = (0, 0), (0, 0)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = [max(0, (math.ceil(n / s) - 1) * s + k - n) for n, s, k in zip(in_hw, strides, span)]
            small = [t // 2 for t in total]
            big = [t - t // 2 for t in total]
            begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        else:
            raise CompileError(f"{where}: auto_pad {auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
        out = tuple((n + b + e - k) // s + 1 for n, b, e, k, s in zip(in_hw, begin, end, span, strides))
        return (int(strides[0]), int(strides[1])), tuple(int(p) for p in (*begin, *end)), out

    # ---- op handlers ---------------------------------------------------------------------------
    def _op_Conv(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        w = self._const(where, node, 1, "weight")
        if w.ndim != 4:
            raise CompileError(f"{where}: only 2-D convolutions are supported; this is a {w.ndim - 2}-D convolution "
                               f"(weight shape {w.shape})")
        group = attrs.get("group", 1)
        x, (c, h, wd) = self._feature_map(where, node.input[0])
        cout, cin, kh, kw = w.shape
        if group < 1 or cout % group:
            raise CompileError(f"{where}: group={group} must be a positive divisor of the {cout} output channels")
        if cin * group != c:
            raise CompileError(f"{where}: weight {node.input[1]!r} expects {cin} x group {group} = {cin * group} input "
                               f"channels, input {node.input[0]!r} has {c}")
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != (kh, kw):
            raise CompileError(f"{where}: kernel_shape {list(attrs['kernel_shape'])} disagrees with the weight shape {w.shape}")
        dilation = tuple(attrs.get("dilations", (1, 1)))
        if len(dilation) != 2 or min(dilation) < 1:
            raise CompileError(f"{where}: dilations {list(dilation)} must be two positive integers")
        b = self._const(where, node, 2, "bias", required=False)
        if b is None:
            b = np.zeros(cout, dtype=np.float32)
        elif b.shape != (cout,):
            raise CompileError(f"{where}: bias {node.input[2]!r} has shape {b.shape}, expected ({cout},)")
        stride, pads, (oh, ow) = self._window(where, attrs, (h, wd), (kh, kw), dilation)
        out = node.output[0]
        self._new_tensor(out, (cout, oh, ow), (1, cout, oh, ow), where)
        self.ops.append(Conv(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                             output=out, weight=np.ascontiguousarray(w, dtype=np.float32),
                             bias=np.asarray(b, dtype=np.float32), stride=stride, pads=pads,
                             dilation=(int(dilation[0]), int(dilation[1])), kind="conv", groups=int(group)))

    def _op_ConvTranspose(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        w = self._const(where, node, 1, "weight")
        if w.ndim != 4:
            raise CompileError(f"{where}: only 2-D transposed convolutions are supported (weight shape {w.shape})")
        x, (c, h, wd) = self._feature_map(where, node.input[0])
        group = int(attrs.get("group", 1))
        cin, cout_g, kh, kw = w.shape
        if group < 1 or cin != c or c % group:
            raise CompileError(f"{where}: weight {node.input[1]!r} {w.shape} with group={group} does not take the {c} "
                               f"input channels of {node.input[0]!r}")
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != (kh, kw):
            raise CompileError(f"{where}: kernel_shape {list(attrs['kernel_shape'])} disagrees with the weight shape {w.shape}")
        dil = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
        if len(dil) != 2 or min(dil) < 1:
            raise CompileError(f"{where}: dilations {list(dil)} must be two positive integers")
        if dil != (1, 1):       # a dilated kernel is the kernel with zeros between its taps: exact
            wide = np.zeros((cin, cout_g, (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1), dtype=w.dtype)
            wide[:, :, ::dil[0], ::dil[1]] = w
            w, kh, kw = wide, wide.shape[2], wide.shape[3]
        strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
        opad = tuple(int(v) for v in attrs.get("output_padding", (0, 0)))
        if len(strides) != 2 or min(strides) < 1:
            raise CompileError(f"{where}: strides {list(strides)} must be two positive integers")
        if len(opad) != 2 or min(opad) < 0 or any(o >= s_ for o, s_ in zip(opad, strides)):
            raise CompileError(f"{where}: output_padding {list(opad)} must be two non-negative integers below the strides")
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        full = [s_ * (n - 1) + o + k for s_, n, o, k in zip(strides, (h, wd), opad, (kh, kw))]
        if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = list(attrs["output_shape"])[-2:] if "output_shape" in attrs else [n * s_ for n, s_ in zip((h, wd), strides)]
            total = [f - t for f, t in zip(full, target)]
            if min(total) < 0:
                raise CompileError(f"{where}: output_shape {list(attrs['output_shape'])} is larger than the transposed "
                                   f"convolution produces; only output_shape reachable with non-negative pads is supported")
            if auto_pad == "SAME_UPPER":
                begin, end = [t // 2 for t in total], [t - t // 2 for t in total]
            else:
                begin, end = [t - t // 2 for t in total], [t // 2 for t in total]
        elif auto_pad in ("NOTSET", "VALID"):
            pads = tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0))) if auto_pad == "NOTSET" else (0, 0, 0, 0)
            if len(pads) != 4 or min(pads) < 0:
                raise CompileError(f"{where}: pads {list(pads)} must be four non-negative integers")
            begin, end = pads[:2], pads[2:]
        else:
            raise CompileError(f"{where}: auto_pad {auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
        oh, ow = (f - b - e for f, b, e in zip(full, begin, end))
        cout = cout_g * group
        b = self._const(where, node, 2, "bias", required=False)
        if b is None:
            b = np.zeros(cout, dtype=np.float32)
        elif b.shape != (cout,):
            raise CompileError(f"{where}: bias {node.input[2]!r} has shape {b.shape}, expected ({cout},)")
        # The equivalent stride-1 convolution over the zero-inserted input: weights per output channel
        # (group-major, like Conv's), kernel flipped, pads k-1-p (output_padding at the end).
        wf = w.reshape(group, cin // group, cout_g, kh, kw).transpose(0, 2, 1, 3, 4).reshape(cout, cin // group, kh, kw)
        wf = np.ascontiguousarray(wf[:, :, ::-1, ::-1], dtype=np.float32)
        pads = (kh - 1 - begin[0], kw - 1 - begin[1], kh - 1 - end[0] + opad[0], kw - 1 - end[1] + opad[1])
        out = node.output[0]
        self._new_tensor(out, (cout, oh, ow), (1, cout, oh, ow), where)
        self.ops.append(Conv(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                             output=out, weight=wf, bias=np.asarray(b, dtype=np.float32), pads=pads, kind="convT",
                             groups=group, up=strides))

    # ---- Resize / Upsample ---------------------------------------------------------------------
    _COORD_MODES = ("half_pixel", "pytorch_half_pixel", "asymmetric", "half_pixel_symmetric", "tf_half_pixel_for_nn")
    _NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")

    def _op_Upsample(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        # Upsample (opset 7: scales attribute, opset 9: scales input) = Resize-10: asymmetric, floor
        scales = attrs.get("scales")
        if scales is None:
            scales = self._const(where, node, 1, "scales")
        self._resize(index, node, where, attrs, np.asarray(scales, dtype=np.float64).reshape(-1), None, legacy=True)

    def _op_Resize(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if self.opset < 11:     # Resize-10 is Upsample-9: scales as input 1
            return self._op_Upsample(index, node, where, attrs)
        scales = self._const(where, node, 2, "scales", required=False)
        sizes = self._const(where, node, 3, "sizes", required=False)
        scales = None if scales is None or np.asarray(scales).size == 0 else np.asarray(scales, np.float64).reshape(-1)
        sizes = None if sizes is None or np.asarray(sizes).size == 0 else np.asarray(sizes, np.int64).reshape(-1)
        if (scales is None) == (sizes is None):
            raise CompileError(f"{where}: exactly one of scales and sizes must be given")
        self._resize(index, node, where, attrs, scales, sizes, legacy=False)

    #: a Resize the convolutional form cannot take runs as a matrix of at most this many weights
    MATRIX_RESIZE_WEIGHTS = 1 << 18

    def _resize(self, index: int, node: onnx.NodeProto, where: str, attrs: dict, scales, sizes, legacy: bool) -> None:
        try:
            self._resize_conv(index, node, where, attrs, scales, sizes, legacy)
        except CompileError as e:
            if not self._resize_matrix(index, node, where):
                raise e from None

    def _resize_matrix(self, index: int, node: onnx.NodeProto, where: str) -> bool:
        """Any Resize of a small map (downsampling, non-integer factors, cubic, align_corners, crop
        and resize) as what it is, a fixed linear map per channel plus a constant: a grouped
        convolution whose kernels cover the whole input map, one output channel per output pixel
        (weights from evaluating the node on the unit images). Its output is a graph output or
        feeds the host: its layout is (C * OH * OW, 1, 1). False if it does not apply."""
        x, shape = self._operand(where, node.input[0])
        if len(shape) != 4 or shape[0] != 1 or self.tensors[x].shape != tuple(shape[1:]):
            return False
        if any(node.output[0] in n.input for n in self.proto.graph.node):
            return False          # a layer reads it: it needs the (C, OH, OW) layout
        c, h, w = shape[1:]
        if h * w > 4096:
            return False
        from .frontend_load import evaluate_node
        feeds = {i: self.consts[i] for i in node.input[1:] if i and i in self.consts}
        if any(i and i not in self.consts for i in node.input[1:]):
            return False
        basis = np.eye(h * w, dtype=np.float32).reshape(h * w, 1, h, w)
        try:
            ones = evaluate_node(node, {node.input[0]: basis[:1], **feeds}, self.proto, where)[0]
        except CompileError:
            return False
        if ones.shape[:2] != (1, 1) or ones.ndim != 4:
            return False          # resizes the batch or channel axis
        oh, ow = ones.shape[2:]
        if c * oh * ow * h * w > self.MATRIX_RESIZE_WEIGHTS or min(oh, ow) < 1:
            return False
        many = dict(feeds)
        if len(node.input) > 3 and node.input[3] in many and np.asarray(many[node.input[3]]).size == 4:
            sizes = np.asarray(many[node.input[3]]).copy()     # sizes fix the batch: the basis's
            sizes[0] = h * w
            many[node.input[3]] = sizes
        out_basis = evaluate_node(node, {node.input[0]: basis, **many}, self.proto, where)[0]
        offset = evaluate_node(node, {node.input[0]: np.zeros((1, 1, h, w), np.float32), **feeds}, self.proto,
                               where)[0].reshape(oh * ow).astype(np.float64)
        m = out_basis.reshape(h * w, oh * ow).astype(np.float64).T - offset[:, None]     # (OH*OW, H*W)
        weight = np.broadcast_to(m.reshape(1, oh * ow, 1, h, w), (c, oh * ow, 1, h, w)).reshape(c * oh * ow, 1, h, w)
        out = node.output[0]
        self._new_tensor(out, (c * oh * ow, 1, 1), (1, c, oh, ow), where)
        self.ops.append(Conv(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                             output=out, weight=np.ascontiguousarray(weight, dtype=np.float32),
                             bias=np.tile(offset, c).astype(np.float32), kind="resize", groups=c))
        self.notes.append(f"{where} runs as a fixed linear map of its {h}x{w} map (a grouped convolution over the "
                          f"whole map, {oh * ow} outputs per channel)")
        return True

    def _resize_conv(self, index: int, node: onnx.NodeProto, where: str, attrs: dict, scales, sizes, legacy: bool) -> None:
        """Resize/Upsample by integer factors as a depthwise transposed convolution with fixed weights
        (``_interp_kernel``); borders replicate (``Conv.edge``), which is what clamping coordinates does."""
        x, (c, h, w) = self._feature_map(where, node.input[0])
        def text(name, default):
            v = attrs.get(name, default)
            return v.decode() if isinstance(v, bytes) else str(v)
        mode = text("mode", "nearest")
        coord = "asymmetric" if legacy else text("coordinate_transformation_mode", "half_pixel")
        nearest = "floor" if legacy else text("nearest_mode", "round_prefer_floor")
        axes = attrs.get("axes")
        full = (1, c, h, w)
        if axes is not None:   # opset 18: scales/sizes for these axes only
            axes = [a + 4 if a < 0 else a for a in axes]
            vals = scales if scales is not None else sizes
            if len(vals) != len(axes):
                raise CompileError(f"{where}: axes {list(attrs['axes'])} and scales/sizes disagree in length")
            base = [1.0] * 4 if scales is not None else list(full)
            for a, v in zip(axes, vals):
                base[a] = v
            scales, sizes = (np.asarray(base, np.float64), None) if scales is not None else (None, np.asarray(base))
        if sizes is not None:
            if len(sizes) != 4:
                raise CompileError(f"{where}: sizes {sizes.tolist()} must have 4 entries (N, C, H, W)")
            if any(o % i for o, i in zip(sizes, full)) or any(o < i for o, i in zip(sizes, full)):
                raise CompileError(f"{where}: sizes {sizes.tolist()} are not integer multiples of the input shape "
                                   f"{list(full)}; only integer upsampling factors are supported")
            scales = np.asarray(sizes, np.float64) / np.asarray(full, np.float64)
        if len(scales) != 4:
            raise CompileError(f"{where}: scales {scales.tolist()} must have 4 entries (N, C, H, W)")
        if scales[0] != 1 or scales[1] != 1:
            raise CompileError(f"{where}: scales {scales.tolist()} resize the batch or channel axis; only H and W")
        factors = [int(round(v)) for v in scales[2:]]
        if any(abs(v - f) > 1e-6 or f < 1 for v, f in zip(scales[2:], factors)):
            raise CompileError(f"{where}: scales {scales.tolist()}: only integer upsampling factors (>= 1) are supported")
        if mode not in ("nearest", "linear", "bilinear"):
            raise CompileError(f"{where}: mode {mode!r} is not supported; only nearest and linear")
        if coord == "align_corners" and max(factors) > 1:
            raise CompileError(f"{where}: coordinate_transformation_mode 'align_corners' is not supported (its "
                               f"weights vary across the map, it is no convolution); supported: {', '.join(self._COORD_MODES)}")
        if coord not in self._COORD_MODES + ("align_corners",):
            raise CompileError(f"{where}: coordinate_transformation_mode {coord!r} is not supported; supported: "
                               f"{', '.join(self._COORD_MODES)}")
        if mode == "nearest" and nearest not in self._NEAREST_MODES:
            raise CompileError(f"{where}: nearest_mode {nearest!r} is not supported; supported: {', '.join(self._NEAREST_MODES)}")
        if attrs.get("exclude_outside", 0):
            raise CompileError(f"{where}: exclude_outside=1 is not supported")
        if sizes is not None and text("keep_aspect_ratio_policy", "stretch") != "stretch" and factors[0] != factors[1]:
            raise CompileError(f"{where}: keep_aspect_ratio_policy {text('keep_aspect_ratio_policy', '')!r} with sizes "
                               f"of different factors {factors} is not supported; only 'stretch'")
        taps = [_interp_taps(f, mode, coord, nearest) for f in factors]
        edge = max(max(abs(d) for phase in t for d in phase) for t in taps)
        k1 = [_interp_kernel(f, t, edge) for f, t in zip(factors, taps)]
        k2 = np.outer(k1[0][0], k1[1][0])[::-1, ::-1]      # the flipped (forward) kernel
        pads = (k1[0][1], k1[1][1], k1[0][2], k1[1][2])
        out = node.output[0]
        oh, ow = h * factors[0], w * factors[1]
        self._new_tensor(out, (c, oh, ow), (1, c, oh, ow), where)
        self.ops.append(Conv(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                             output=out, weight=np.broadcast_to(k2, (c, 1) + k2.shape).astype(np.float32),
                             bias=np.zeros(c, np.float32), pads=pads, kind="resize", groups=c,
                             up=(factors[0], factors[1]), edge=edge))

    def _pool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict, cls, global_: bool = False) -> None:
        x, (c, h, w) = self._feature_map(where, node.input[0])
        extra = {}
        if global_:
            kernel, stride, pads, (oh, ow) = (h, w), (1, 1), (0, 0, 0, 0), (1, 1)
        else:
            kernel = tuple(attrs.get("kernel_shape", ()))
            if len(kernel) != 2:
                raise CompileError(f"{where}: only 2-D pooling is supported; kernel_shape is {list(kernel)}")
            ceil = attrs.get("ceil_mode", 0) != 0
            if tuple(attrs.get("dilations", (1, 1))) != (1, 1):
                raise CompileError(f"{where}: dilations {list(attrs['dilations'])} are not supported; only dilations 1")
            stride, pads, (oh, ow) = self._window(where, attrs, (h, w), kernel, (1, 1))
            given = pads
            if max(pads[0], pads[2]) >= kernel[0] or max(pads[1], pads[3]) >= kernel[1]:
                raise CompileError(f"{where}: pads {list(pads)} must be smaller than the kernel {list(kernel)}")
            if ceil:   # the partial last windows: more padding at the end, which max-pooling ignores
                sizes, end = [], list(pads[2:])
                for d, (n, k, st, b, e) in enumerate(zip((h, w), kernel, stride, pads[:2], pads[2:])):
                    o = -(-(n + b + e - k) // st) + 1
                    if (o - 1) * st >= n + b:       # a window may not start in the end padding
                        o -= 1
                    end[d] = e + max(0, (o - 1) * st + k - (n + b + e))
                    sizes.append(o)
                pads, (oh, ow) = (pads[0], pads[1], end[0], end[1]), tuple(sizes)
            if cls is AvgPool and any(pads):
                # the divisor counts the window's pixels inside the input (count_include_pad=0) or
                # inside the padded input without the extension for ceil_mode's partial windows
                count = (0, 0, 0, 0) if not attrs.get("count_include_pad", 0) else given
                if count != pads:
                    extra["count_pads"] = count
        out = node.output[0]
        self._new_tensor(out, (c, oh, ow), (1, c, oh, ow), where)
        self.ops.append(cls(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                            output=out, kernel=(int(kernel[0]), int(kernel[1])), stride=stride, pads=pads, **extra))

    def _op_MaxPool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._pool(index, node, where, attrs, MaxPool)

    def _op_AveragePool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._pool(index, node, where, attrs, AvgPool)

    def _op_GlobalAveragePool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._pool(index, node, where, attrs, AvgPool, global_=True)

    def _op_GlobalMaxPool(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._pool(index, node, where, attrs, MaxPool, global_=True)

    def _per_channel_constant(self, index: int, node: onnx.NodeProto, where: str, kind: str) -> bool:
        """A binary op with one constant operand holding a scalar or one value per channel: becomes a
        pending fusion ``kind`` (folded into the producing layer). False if no operand is constant."""
        a_name, b_name = node.input[0], node.input[1]
        consts = [n for n in (a_name, b_name) if n in self.consts]
        if len(consts) != 1:
            return False
        x_name = b_name if consts[0] == a_name else a_name
        x, shape = self._operand(where, x_name)
        chw = self.tensors[x].shape
        v = np.asarray(self.consts[consts[0]], dtype=np.float64)
        ok = v.size == 1 or (v.size == chw[0] and (v.ndim <= 1 or v.shape[-2:] == (1, 1) or
                                                    (v.ndim == 2 and len(shape) == 2)))
        if not ok:
            raise CompileError(f"{where}: constant {consts[0]!r} of shape {v.shape} with {shape} is not supported; "
                               f"only a scalar or one value per channel")
        out = node.output[0]
        self._new_tensor(out, chw, shape, where)
        self.ops.append(_Fusable(self._node_name(index, node), kind, x, out,
                                 (np.broadcast_to(v.reshape(-1), (chw[0],)).copy(),)))
        return True

    def _op_Mul(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if self._per_channel_constant(index, node, where, "MulConst"):   # folded into the producer's weights
            return
        self._binary(index, node, where, "Mul", "multiplies")

    def _op_Add(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if self._per_channel_constant(index, node, where, "AddConst"):   # folded into the producer's bias
            return
        self._binary(index, node, where, "Add", "adds")

    def _binary(self, index: int, node: onnx.NodeProto, where: str, op: str, verb: str) -> None:
        """An Add or Mul of two computed tensors, pending fusion: of the same shape, or a feature map
        and a per-channel (1, C, 1, 1) tensor (broadcast over the pixels; the map goes first)."""
        a_name, b_name = node.input[0], node.input[1]
        a, sa = self._operand(where, a_name)
        b, sb = self._operand(where, b_name)
        ca, cb = self.tensors[a].shape, self.tensors[b].shape
        if ca[1:] == (1, 1) and cb[1:] != (1, 1):          # the full-size operand first
            (a, sa, ca, a_name), (b, sb, cb, b_name) = (b, sb, cb, b_name), (a, sa, ca, a_name)
        same = sa == sb and ca == cb
        per_channel = cb == (ca[0], 1, 1) and len(sa) == len(sb) == 4
        if not (same or per_channel):
            raise CompileError(f"{where}: {verb} {a_name!r} {sa} and {b_name!r} {sb}; only tensors of the same "
                               f"shape, a feature map and a per-channel (1, C, 1, 1) tensor of the same C, or a "
                               f"per-channel constant are supported")
        out = node.output[0]
        self._new_tensor(out, ca, sa, where)
        self.ops.append(_Fusable(self._node_name(index, node), op, a, out, (b,)))

    def _op_Concat(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        names = [i for i in node.input if i]
        axis = attrs.get("axis", 1)
        if all(n not in self.consts and len(self.shapes.get(n, ())) == 2 for n in names) and axis in (1, -1):
            vectors = [self._vector(where, n) for n in names]     # (1, K) vectors: along their channels
            k = sum(v for _, v in vectors)
            out = node.output[0]
            self._new_tensor(out, (k, 1, 1), (1, k), where)
            self.ops.append(Concat(name=self._layer_name(index, node), nodes=[self._node_name(index, node)],
                                   inputs=[t for t, _ in vectors], output=out))
            return
        parts = [self._feature_map(where, n) for n in names]
        if axis not in (1, -3):
            raise CompileError(f"{where}: only concatenation along the channel axis (axis=1) is supported, got axis={axis}")
        hw = {chw[1:] for _, chw in parts}
        if len(hw) != 1:
            raise CompileError(f"{where}: the inputs have different spatial sizes {sorted(hw)}")
        c = sum(chw[0] for _, chw in parts)
        (h, w), = hw
        out = node.output[0]
        self._new_tensor(out, (c, h, w), (1, c, h, w), where)
        self.ops.append(Concat(name=self._layer_name(index, node), nodes=[self._node_name(index, node)],
                               inputs=[t for t, _ in parts], output=out))

    def _op_Sum(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        ins = [i for i in node.input if i]
        if len(ins) == 1:
            _, shape = self._operand(where, ins[0])
            self._alias(node, where, shape, reshape=False)
        elif len(ins) == 2:
            self._op_Add(index, node, where, attrs)
        else:
            raise CompileError(f"{where}: Sum of {len(ins)} inputs is not supported; only one or two")

    def _fc(self, index: int, node: onnx.NodeProto, where: str, x: str, weight: np.ndarray, bias: np.ndarray) -> None:
        """A fully connected layer as a Conv whose kernel covers the whole input map."""
        c, h, w = self.tensors[x].shape
        m = weight.shape[0]
        out = node.output[0]
        lead = self.shapes[node.input[0]][:-1]          # (1,) or more leading unit dimensions
        self._new_tensor(out, (m, 1, 1), tuple(lead) + (m,), where)
        self.ops.append(Conv(name=self._layer_name(index, node), nodes=[self._node_name(index, node)], input=x,
                             output=out, weight=np.ascontiguousarray(weight.reshape(m, c, h, w), dtype=np.float32),
                             bias=np.asarray(bias, dtype=np.float32).reshape(m), kind="fc"))

    def _op_Gemm(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if attrs.get("transA", 0) != 0:
            raise CompileError(f"{where}: transA=1 is not supported; only transA=0")
        b = self._const(where, node, 1, "weight B")
        x, k = self._vector(where, node.input[0])
        if b.ndim != 2:
            raise CompileError(f"{where}: weight B has shape {b.shape}; Gemm needs a 2-D B")
        weight = b if attrs.get("transB", 0) else b.T          # (M, K)
        if weight.shape[1] != k:
            raise CompileError(f"{where}: weight B {b.shape} (transB={attrs.get('transB', 0)}) does not take "
                               f"the {k} inputs of {node.input[0]!r}")
        m = weight.shape[0]
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        c = self._const(where, node, 2, "bias C", required=False)
        if c is None:
            bias = np.zeros(m)
        else:
            try:
                bias = np.broadcast_to(np.asarray(c, dtype=np.float64), (1, m))[0]
            except ValueError:
                raise CompileError(f"{where}: bias C has shape {c.shape}; expected ({m},), (1, {m}) or a scalar") from None
        self._fc(index, node, where, x, alpha * weight.astype(np.float64), beta * bias)

    def _op_MatMul(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if node.input[1] not in self.consts:
            raise CompileError(f"{where}: the right operand {node.input[1]!r} must be a constant (initializer); "
                               f"only MatMul by a constant weight matrix is supported")
        b = self.consts[node.input[1]]
        x, k = self._vector(where, node.input[0])
        if b.ndim != 2 or b.shape[0] != k:
            raise CompileError(f"{where}: weight {node.input[1]!r} has shape {b.shape}; expected ({k}, M) for the "
                               f"(1, {k}) input {node.input[0]!r}")
        self._fc(index, node, where, x, b.T.astype(np.float64), np.zeros(b.shape[1]))

    def _op_BatchNormalization(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if attrs.get("training_mode", 0) != 0:
            raise CompileError(f"{where}: training_mode=1 is not supported; export the model for inference")
        x, shape = self._operand(where, node.input[0])
        chw = self.tensors[x].shape
        if not ((len(shape) == 4 and shape[1:] == chw) or (len(shape) == 2 and chw == (shape[1], 1, 1))):
            raise CompileError(f"{where}: input {node.input[0]!r} has shape {shape}, which is not the (1, C, H, W) "
                               f"or (1, C) layout of tensor {x!r} {chw}")
        params = [np.asarray(self._const(where, node, i, what), dtype=np.float64)
                  for i, what in ((1, "scale"), (2, "bias B"), (3, "mean"), (4, "var"))]
        for p, what in zip(params, ("scale", "bias B", "mean", "var")):
            if p.shape != (chw[0],):
                raise CompileError(f"{where}: {what} has shape {p.shape}, expected ({chw[0]},)")
        eps = float(attrs.get("epsilon", 1e-5))
        out = node.output[0]
        self._new_tensor(out, chw, shape, where)
        self.ops.append(_Fusable(self._node_name(index, node), node.op_type, x, out, (*params, eps)))

    def _activation(self, index: int, node: onnx.NodeProto, where: str, alpha: float = 0.0,
                    clip: tuple = (None, None)) -> None:
        x, shape = self._operand(where, node.input[0])
        out = node.output[0]
        self._new_tensor(out, self.tensors[x].shape, shape, where)
        self.ops.append(_Fusable(self._node_name(index, node), node.op_type, x, out,
                                 (ACTIVATIONS[node.op_type], alpha, clip)))

    def _op_Relu(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._activation(index, node, where)

    def _op_Sigmoid(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._activation(index, node, where)

    def _op_Tanh(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._activation(index, node, where)

    def _op_HardSwish(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._machine_activation(index, node, where)

    def _op_Silu(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._machine_activation(index, node, where)

    def _op_Mish(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        self._machine_activation(index, node, where)

    def _machine_activation(self, index: int, node: onnx.NodeProto, where: str) -> None:
        """An activation only some machines' output stage has (canonicalisation makes these nodes
        only where it has)."""
        if not act_available(ACTIVATIONS[node.op_type]):
            raise CompileError(f"{where}: the machine's output stage has no {ACTIVATIONS[node.op_type]} activation")
        self._activation(index, node, where)

    def _op_LeakyRelu(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        alpha = float(attrs.get("alpha", 0.01))
        if not 0.0 <= alpha <= 1.0:
            raise CompileError(f"{where}: alpha {alpha:.6g} is out of range; the DLA supports 0 <= alpha <= 1")
        self._activation(index, node, where, alpha=alpha)

    def _op_Clip(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        if self.opset < 11:    # bounds are attributes
            bounds = [attrs.get("min"), attrs.get("max")]
        else:                  # bounds are optional constant inputs
            bounds = []
            for pos, what in ((1, "min"), (2, "max")):
                v = self._const(where, node, pos, what, required=False)
                if v is not None and np.asarray(v).size != 1:
                    raise CompileError(f"{where}: {what} must be a scalar, got shape {np.asarray(v).shape}")
                bounds.append(None if v is None else float(np.asarray(v).reshape(-1)[0]))
        bounds = [None if b is None or not np.isfinite(b) or abs(b) >= _FLT_MAX else float(b) for b in bounds]
        lo, hi = bounds
        if lo is not None and hi is not None and lo > hi:
            raise CompileError(f"{where}: min {lo:.6g} is greater than max {hi:.6g}")
        self._activation(index, node, where, clip=(lo, hi))

    def _alias(self, node: onnx.NodeProto, where: str, shape: tuple[int, ...], reshape: bool) -> None:
        src = node.input[0]
        out = node.output[0]
        self.alias[out] = self._resolve(src)
        self._set_shape(out, shape, where)
        if reshape:
            self.reshaped_by[out] = where
        elif src in self.reshaped_by:
            self.reshaped_by[out] = self.reshaped_by[src]
        self.notes.append(f"{where} is an alias of tensor {self.alias[out]!r}" + (f" with shape {shape}" if reshape else ""))

    def _op_Identity(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        _, shape = self._operand(where, node.input[0])
        self._alias(node, where, shape, reshape=False)

    def _op_Dropout(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        _, shape = self._operand(where, node.input[0])
        if len(node.input) > 2 and node.input[2]:
            mode = self.consts.get(node.input[2])
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                raise CompileError(f"{where}: training_mode must be a constant false for inference")
        self._alias(node, where, shape, reshape=False)

    def _op_Flatten(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        _, shape = self._operand(where, node.input[0])
        axis = attrs.get("axis", 1)
        axis = axis + len(shape) if axis < 0 else axis
        if not 0 <= axis <= len(shape):
            raise CompileError(f"{where}: axis {attrs.get('axis')} is out of range for input shape {shape}")
        self._alias(node, where, (math.prod(shape[:axis]), math.prod(shape[axis:])), reshape=True)

    def _op_Reshape(self, index: int, node: onnx.NodeProto, where: str, attrs: dict) -> None:
        _, shape = self._operand(where, node.input[0])
        target = self._const(where, node, 1, "target shape")
        target = [int(d) for d in np.asarray(target).reshape(-1)]
        allowzero = attrs.get("allowzero", 0)
        new = [shape[i] if d == 0 and not allowzero and i < len(shape) else d for i, d in enumerate(target)]
        total = math.prod(shape)
        if new.count(-1) == 1:
            known = math.prod(d for d in new if d != -1)
            if known == 0 or total % known:
                raise CompileError(f"{where}: cannot reshape {shape} to {target}")
            new[new.index(-1)] = total // known
        if any(d < 0 for d in new) or math.prod(new) != total:
            raise CompileError(f"{where}: cannot reshape {shape} to {target}: the element count changes")
        self._alias(node, where, tuple(new), reshape=True)
