"""Sequence models: recurrent layers, the SDK's stacked-LSTM test pattern, and two text
recognisers (a CRNN and a small attention recogniser), written with ``onnx.helper`` the way
torch.onnx exports them, with seeded weights.

* :func:`rnn_layer`: one ONNX LSTM or GRU node (forward, reverse, bidirectional; initial states
  as graph inputs; sequence lengths; layout 0 or 1).
* :func:`lstm_stack`: the SDK's own LSTM test: two stacked ``torch.nn.LSTM`` layers with explicit
  initial states, inputs ``x, h0, c0, h1, c1``, outputs ``y, h, c, h2, c2`` (``LSTM -> Squeeze ->
  LSTM -> Squeeze``, as torch exports ``nn.LSTM``).
* :func:`crnn`: CNN -> the (1, C, 1, W) feature map as a sequence of W steps -> bidirectional LSTM
  -> per-step classifier -> per-step log-probabilities (the input of CTC decoding), (T, 1, classes).
* :func:`attention_recogniser`: CNN -> W tokens of C features (+ a learned position embedding) ->
  two pre-norm attention blocks (LayerNorm as torch exports it before opset 17, single-head
  attention, feed-forward) -> per-token logits (1, T, classes).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._util import IR_VERSION, OPSET, init, tensor

__all__ = ["rnn_layer", "lstm_stack", "lstm_step", "crnn", "attention_recogniser", "paddle_rnn"]

_GATES = {"LSTM": 4, "GRU": 3}


def _model(name, nodes, inputs, outputs, inits, opset=OPSET):
    m = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, initializer=inits),
                          opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                          producer_name="open-mdla zoo")
    onnx.checker.check_model(m)
    return m


def _rnn_weights(rng, op: str, prefix: str, D: int, I: int, H: int) -> tuple[list, list[str]]:
    """W, R, B of an RNN layer as torch initialises them (uniform +-1/sqrt(H))."""
    G, k = _GATES[op], 1.0 / np.sqrt(H)
    names = [f"{prefix}.W", f"{prefix}.R", f"{prefix}.B"]
    arrays = [rng.uniform(-k, k, (D, G * H, I)), rng.uniform(-k, k, (D, G * H, H)), rng.uniform(-k, k, (D, 2 * G * H))]
    return [init(n, a) for n, a in zip(names, arrays)], names


def rnn_layer(op: str = "LSTM", seq: int = 8, inputs: int = 12, hidden: int = 16, direction: str = "forward",
              states: bool = False, seq_len: int | None = None, layout: int = 0, linear_before_reset: int = 0,
              seed: int = 0) -> onnx.ModelProto:
    """One LSTM/GRU node, batch 1: X (T, 1, I) (layout 1: (1, T, I)), outputs Y, Y_h (, Y_c)."""
    rng = np.random.default_rng(seed)
    D = 2 if direction == "bidirectional" else 1
    inits, names = _rnn_weights(rng, op, op.lower(), D, inputs, hidden)
    xs = [seq, 1, inputs] if layout == 0 else [1, seq, inputs]
    ss = [D, 1, hidden] if layout == 0 else [1, D, hidden]
    graph_in = [tensor("x", xs)]
    node_in = ["x"] + names + ["", ""]
    if seq_len is not None:
        inits.append(numpy_helper.from_array(np.array([seq_len], np.int32), "sequence_lens"))
        node_in[4] = "sequence_lens"
    if states:
        graph_in.append(tensor("h0", ss))
        node_in[5] = "h0"
        if op == "LSTM":
            graph_in.append(tensor("c0", ss))
            node_in.append("c0")
    while not node_in[-1]:
        node_in.pop()
    outs = ["y", "y_h"] + (["y_c"] if op == "LSTM" else [])
    attrs = {"hidden_size": hidden, "direction": direction}
    if layout:
        attrs["layout"] = layout
    if op == "GRU":
        attrs["linear_before_reset"] = linear_before_reset
    ys = [seq, D, 1, hidden] if layout == 0 else [1, seq, D, hidden]
    graph_out = [tensor("y", ys)] + [tensor(o, ss) for o in outs[1:]]
    return _model(f"{op.lower()}_{direction}", [helper.make_node(op, node_in, outs, name=op.lower(), **attrs)],
                  graph_in, graph_out, inits, opset=14 if layout else OPSET)


def lstm_stack(seq: int = 6, inputs: int = 16, hidden: int = 32, seed: int = 0) -> onnx.ModelProto:
    """The SDK's LSTM test: two stacked nn.LSTM with explicit initial states, as torch exports them."""
    rng = np.random.default_rng(seed)
    i1, n1 = _rnn_weights(rng, "LSTM", "lstm1", 1, inputs, hidden)
    i2, n2 = _rnn_weights(rng, "LSTM", "lstm2", 1, hidden, hidden)
    axes = numpy_helper.from_array(np.array([1], np.int64), "squeeze_axes")
    nodes = [helper.make_node("LSTM", ["x", *n1, "", "h0", "c0"], ["y1_4d", "h", "c"], name="lstm1", hidden_size=hidden),
             helper.make_node("Squeeze", ["y1_4d", "squeeze_axes"], ["y1"], name="squeeze1"),
             helper.make_node("LSTM", ["y1", *n2, "", "h1", "c1"], ["y2_4d", "h2", "c2"], name="lstm2",
                              hidden_size=hidden),
             helper.make_node("Squeeze", ["y2_4d", "squeeze_axes"], ["y"], name="squeeze2")]
    state = [1, 1, hidden]
    ins = [tensor("x", [seq, 1, inputs])] + [tensor(n, state) for n in ("h0", "c0", "h1", "c1")]
    outs = [tensor("y", [seq, 1, hidden])] + [tensor(n, state) for n in ("h", "c", "h2", "c2")]
    return _model("lstm_stack", nodes, ins, outs, i1 + i2 + [axes])


class _Net:
    """A tiny builder for the recognisers' CNNs and token layers."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def const(self, base: str, value) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def node(self, op: str, ins: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def conv_relu(self, x: str, cin: int, cout: int) -> str:
        w = self.const("conv_w", (self.rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3))).astype(np.float32))
        b = self.const("conv_b", self.rng.normal(0, 0.05, cout).astype(np.float32))
        return self.node("Relu", [self.node("Conv", [x, w, b], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])

    def pool(self, x: str, kh: int, kw: int) -> str:
        return self.node("MaxPool", [x], kernel_shape=[kh, kw], strides=[kh, kw])

    def linear(self, x: str, k: int, n: int, gain: float = 1.0) -> str:
        w = self.const("fc_w", self.rng.normal(0, np.sqrt(gain / k), (k, n)).astype(np.float32))
        b = self.const("fc_b", self.rng.normal(0, 0.05, n).astype(np.float32))
        return self.node("Add", [self.node("MatMul", [x, w]), b])

    def cnn(self, x: str, channels: tuple[int, ...], pools) -> str:
        cin = 1
        for cout, (kh, kw) in zip(channels, pools):
            x = self.pool(self.conv_relu(x, cin, cout), kh, kw)
            cin = cout
        return x

    def layer_norm(self, x: str, d: int) -> str:
        """LayerNorm over the last axis as torch exports it before opset 17."""
        mean = self.node("ReduceMean", [x], axes=[-1])
        centred = self.node("Sub", [x, mean])
        var = self.node("ReduceMean", [self.node("Pow", [centred, self.const("two", np.float32(2))])], axes=[-1])
        std = self.node("Sqrt", [self.node("Add", [var, self.const("eps", np.float32(1e-5))])])
        normed = self.node("Div", [centred, std])
        gamma = self.const("ln_g", self.rng.uniform(0.8, 1.2, d).astype(np.float32))
        beta = self.const("ln_b", self.rng.normal(0, 0.05, d).astype(np.float32))
        return self.node("Add", [self.node("Mul", [normed, gamma]), beta])


def crnn(seed: int = 0, height: int = 32, width: int = 64, classes: int = 37, hidden: int = 48) -> onnx.ModelProto:
    """CRNN: CNN (1 -> 16 -> 32 -> 64 channels, the height pooled to 1) -> sequence of width/4
    steps -> bidirectional LSTM -> per-step classifier -> LogSoftmax, output (T, 1, classes)."""
    net = _Net(seed)
    fmap = net.cnn("input", (16, 32, 64), [(2, 2), (2, 2), (height // 4, 1)])
    T, C = width // 4, 64
    squeezed = net.node("Squeeze", [fmap, net.const("axes", np.array([2], np.int64))])     # (1, C, T)
    seq = net.node("Transpose", [squeezed], perm=[2, 0, 1])                                # (T, 1, C)
    inits, names = _rnn_weights(net.rng, "LSTM", "rnn", 2, C, hidden)
    net.inits += inits
    y = net.name("lstm_y")
    net.nodes.append(helper.make_node("LSTM", [seq, *names], [y], name="bilstm", hidden_size=hidden,
                                      direction="bidirectional"))                         # (T, 2, 1, H)
    steps = net.node("Reshape", [net.node("Transpose", [y], perm=[0, 2, 1, 3]),
                                 net.const("shape", np.array([T, 1, 2 * hidden], np.int64))])   # (T, 1, 2H)
    logits = net.linear(steps, 2 * hidden, classes)
    net.nodes.append(helper.make_node("LogSoftmax", [logits], ["log_probs"], name="ctc_log_probs", axis=2))
    return _model("crnn", net.nodes, [tensor("input", (1, 1, height, width))],
                  [tensor("log_probs", (T, 1, classes))], net.inits)


def attention_recogniser(seed: int = 0, height: int = 32, width: int = 64, dim: int = 64, classes: int = 37,
                         blocks: int = 2) -> onnx.ModelProto:
    """CNN -> width/4 tokens of ``dim`` features (+ position embedding) -> ``blocks`` pre-norm
    attention blocks (single head) -> per-token logits (1, T, classes)."""
    net = _Net(seed)
    fmap = net.cnn("input", (16, 32, dim), [(2, 2), (2, 2), (height // 4, 1)])
    T = width // 4
    tokens = net.node("Transpose", [net.node("Squeeze", [fmap, net.const("axes", np.array([2], np.int64))])],
                      perm=[0, 2, 1])                                                      # (1, T, D)
    x = net.node("Add", [tokens, net.const("pos", net.rng.normal(0, 0.1, (1, T, dim)).astype(np.float32))])
    for _ in range(blocks):
        h = net.layer_norm(x, dim)
        q, k, v = (net.linear(h, dim, dim) for _ in range(3))
        scores = net.node("Mul", [net.node("MatMul", [q, net.node("Transpose", [k], perm=[0, 2, 1])]),
                                  net.const("scale", np.float32(1 / np.sqrt(dim)))])
        attended = net.node("MatMul", [net.node("Softmax", [scores], axis=-1), v])
        x = net.node("Add", [x, net.linear(attended, dim, dim)])
        h = net.layer_norm(x, dim)
        x = net.node("Add", [x, net.linear(net.node("Relu", [net.linear(h, dim, 2 * dim, gain=2.0)]), 2 * dim, dim)])
    logits = net.linear(x, dim, classes)
    net.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    return _model("attention_recogniser", net.nodes, [tensor("input", (1, 1, height, width))],
                  [tensor("logits", (1, T, classes))], net.inits)


def lstm_step(inputs: int = 64, hidden: int = 48, seed: int = 0) -> onnx.ModelProto:
    """One LSTM step written as DLA layers (the alternative to running the recurrence on the
    host, docs/architecture.md): the gates as 1x1 convolutions of [x_t, h_{t-1}] (1, I + H, 1, 1)
    with Sigmoid/Tanh in their output stage, the cell update as fused products and sums.
    Inputs x (1, I, 1, 1), h, c (1, H, 1, 1); outputs h', c'."""
    rng = np.random.default_rng(seed)
    inits, mk = [], helper.make_node
    nodes = [mk("Concat", ["x", "h"], ["xh"], axis=1)]
    for gate, act in (("i", "Sigmoid"), ("f", "Sigmoid"), ("o", "Sigmoid"), ("g", "Tanh")):
        inits.append(init(f"w_{gate}", rng.normal(0, 1 / np.sqrt(inputs + hidden), (hidden, inputs + hidden, 1, 1))))
        inits.append(init(f"b_{gate}", rng.normal(0, 0.05, hidden)))
        nodes += [mk("Conv", ["xh", f"w_{gate}", f"b_{gate}"], [gate + "_pre"]), mk(act, [gate + "_pre"], [gate])]
    nodes += [mk("Mul", ["f", "c"], ["fc"]), mk("Mul", ["i", "g"], ["ig"]), mk("Add", ["fc", "ig"], ["c_next"]),
              mk("Tanh", ["c_next"], ["tanh_c"]), mk("Mul", ["o", "tanh_c"], ["h_next"])]
    ins = [tensor("x", (1, inputs, 1, 1)), tensor("h", (1, hidden, 1, 1)), tensor("c", (1, hidden, 1, 1))]
    return _model("lstm_step", nodes, ins, [tensor("h_next", (1, hidden, 1, 1)), tensor("c_next", (1, hidden, 1, 1))],
                  inits)


def paddle_rnn(op: str = "LSTM", seq: int = 6, inputs: int = 12, hidden: int = 16, num_layers: int = 1,
               direction: str = "forward", time_major: bool = False, states: str = "inputs", seed: int = 0,
               opset: int = 11) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``paddle.nn.LSTM``/``GRU`` (batch 1) as Paddle2ONNX writes it (its ``rnn`` mapper,
    paddle2onnx/mapper/nn/rnn.cc, and ``fill_constant_batch_size_like``/``fill_constant``'s):

    * batch-first input (``time_major=False``): ``Transpose(perm=[1, 0, 2])`` to (T, B, I) before
      the RNN and back after it;
    * Paddle's parameters as they are (per layer and direction ``weight_ih`` (G*H, I), ``weight_hh``
      (G*H, H), ``bias_ih``, ``bias_hh``, gates in Paddle's order i, f, c, o for LSTM and r, z, c
      for GRU), each ``Unsqueeze``d, ``Concat``ed over directions, and re-ordered to ONNX's gate
      order (i, o, f, c; z, r, h) by ``Slice`` along axis 1 and ``Concat``; B as
      ``Concat([bias_ih, bias_hh], axis=1)``; GRU with ``linear_before_reset=1``;
    * no ``sequence_lens`` (the mapper always leaves it empty);
    * initial states ``Slice``d per layer from (L*D, B, H) tensors that are, by ``states``:
      ``"inputs"`` graph inputs ``prev_h``/``prev_c``; ``"tile"`` Paddle's default zeros
      (``fill_constant_batch_size_like``: ``Shape -> Slice -> Concat -> Tile -> Transpose``);
      ``"constantofshape"`` ``paddle.full`` of a shape tensor (``Shape -> Slice -> Concat ->
      ConstantOfShape``); ``"expand"`` zeros ``Expand``ed to that shape;
    * per layer ``Y (T, D, B, H) -> Transpose(perm=[0, 2, 1, 3]) -> Reshape([0, 0, -1])``, the next
      layer's input; outputs ``Identity`` of the last layer's Y_h (and Y_c).

    Returns the model and Paddle's parameters by name (for a reference in Paddle's own gate order)."""
    rng = np.random.default_rng(seed)
    G, D, H = _GATES[op], (2 if direction == "bidirectional" else 1), hidden
    k = 1.0 / np.sqrt(H)
    nodes, inits, params = [], [], {}
    count = [0]

    def name(base):
        count[0] += 1
        return f"{base}.{count[0]}"

    def const(value, dtype=np.int64):
        out = name("p2o.helper.constant")
        nodes.append(helper.make_node("Constant", [], [out], name=out,
                                      value=numpy_helper.from_array(np.asarray(value, dtype), out + ".value")))
        return out

    def node(op_type, ins, **attrs):
        out = name(f"p2o.{op_type}")
        nodes.append(helper.make_node(op_type, ins, [out], name=out, **attrs))
        return out

    def slice_(x, axis, start, end):
        if opset < 10:
            return node("Slice", [x], axes=[axis], starts=[start], ends=[end])
        return node("Slice", [x, const([start]), const([end]), const([axis])])

    def unsqueeze(x):
        return node("Unsqueeze", [x], axes=[0]) if opset < 13 else node("Unsqueeze", [x, const([0])])

    weights, biases = [], []
    for layer in range(num_layers):
        isz = inputs if layer == 0 else D * H
        for d in range(D):
            suffix = "_reverse" if d else ""
            for kind, shape in (("weight_ih", (G * H, isz)), ("weight_hh", (G * H, H))):
                n = f"{op.lower()}.{kind}_l{layer}{suffix}"
                params[n] = rng.uniform(-k, k, shape).astype(np.float32)
                weights.append(n)
            for kind in ("bias_ih", "bias_hh"):
                n = f"{op.lower()}.{kind}_l{layer}{suffix}"
                params[n] = rng.uniform(-k, k, (G * H,)).astype(np.float32)
                biases.append(n)
    inits = [numpy_helper.from_array(v, n) for n, v in params.items()]
    perm = {"LSTM": [(0, 1), (3, 4), (1, 3)], "GRU": [(1, 2), (0, 1), (2, 3)]}[op]

    def reform(t):
        return node("Concat", [slice_(t, 1, a * H, b * H) for a, b in perm], axis=1)

    x_shape = [seq, 1, inputs] if time_major else [1, seq, inputs]
    graph_in = [tensor("x", x_shape)]
    x = "x" if time_major else node("Transpose", ["x"], perm=[1, 0, 2])
    n_states = 2 if op == "LSTM" else 1
    state_names = ["prev_h", "prev_c"][:n_states]
    full = []
    for s in state_names:
        if states == "inputs":
            graph_in.append(tensor(s, [num_layers * D, 1, H]))
            full.append(s)
            continue
        batch = slice_(node("Shape", ["x"]), 0, 0 if not time_major else 1, 1 if not time_major else 2)
        if states == "tile":       # fill_constant_batch_size_like(x, (L*D, -1, H), output_dim_idx=1)
            repeat = node("Concat", [batch, const([1, 1])], axis=0)
            tiled = node("Tile", [const(np.zeros((1, num_layers * D, H)), np.float32), repeat])
            full.append(node("Transpose", [tiled], perm=[1, 0, 2]))
        else:
            shape = node("Concat", [const([num_layers * D]), batch, const([H])], axis=0)
            if states == "constantofshape":
                full.append(node("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, np.float32))))
            elif states == "expand":
                full.append(node("Expand", [const(np.zeros((1, 1, 1)), np.float32), shape]))
            else:
                raise ValueError(f"states must be inputs, tile, constantofshape or expand, got {states!r}")
    y = x
    for layer in range(num_layers):
        lw = weights[layer * 2 * D:(layer + 1) * 2 * D]
        lb = biases[layer * 2 * D:(layer + 1) * 2 * D]
        w = reform(node("Concat", [unsqueeze(n) for n in lw[0::2]], axis=0))
        r = reform(node("Concat", [unsqueeze(n) for n in lw[1::2]], axis=0))
        b = node("Concat", [reform(node("Concat", [unsqueeze(n) for n in lb[0::2]], axis=0)),
                            reform(node("Concat", [unsqueeze(n) for n in lb[1::2]], axis=0))], axis=1)
        init_states = [slice_(f, 0, layer * D, layer * D + D) for f in full]
        outs = [name(f"p2o.{op}.y"), name(f"p2o.{op}.h")] + ([name(f"p2o.{op}.c")] if op == "LSTM" else [])
        attrs = {"direction": direction, "hidden_size": H}
        if op == "GRU":
            attrs["linear_before_reset"] = 1
        nodes.append(helper.make_node(op, [y, w, r, b, ""] + init_states, outs, name=name(f"p2o.{op}"), **attrs))
        y = node("Reshape", [node("Transpose", [outs[0]], perm=[0, 2, 1, 3]), const([0, 0, -1])])
        last = outs
    out_shape = [seq, 1, D * H] if time_major else [1, seq, D * H]
    nodes.append(helper.make_node("Identity", [y if time_major else node("Transpose", [y], perm=[1, 0, 2])], ["out"],
                                  name="out"))
    nodes.append(helper.make_node("Identity", [last[1]], ["h"], name="h"))
    graph_out = [tensor("out", out_shape), tensor("h", [D, 1, H])]
    if op == "LSTM":
        nodes.append(helper.make_node("Identity", [last[2]], ["c"], name="c"))
        graph_out.append(tensor("c", [D, 1, H]))
    m = helper.make_model(helper.make_graph(nodes, f"paddle_{op.lower()}", graph_in, graph_out, initializer=inits),
                          opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                          producer_name="PaddlePaddle")
    onnx.checker.check_model(m)
    return m, params
