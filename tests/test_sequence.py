"""Sequence models (issue 12): products over tokens as 1x1 convolutions on the DLA, LSTM/GRU split
into the gates' input part (the DLA) and the recurrence (the host), multi-input/multi-output Run,
the SDK's stacked-LSTM test pattern (built with onnx.helper, and exported by torch when it is
installed), the CRNN and attention recognisers. Every result is compared with onnxruntime in
float32 with the SDK metric, budget mean <= 1 %, max <= 5 % of max |reference|, and every DLA
program is bit-exact with the golden reference."""
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import microndla
from arch.numerics import sdk_error_metric
from compiler.hostops import host_evaluator
from compiler.ir import CompileError
from compiler.partition import HostStage
from zoo import sequence

from tests.test_families import assert_bit_exact_with_golden

BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _feeds(model: onnx.ModelProto, seed: int = 1, scale: float = 0.5) -> dict:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    return {i.name: (rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]) * scale).astype(np.float32)
            for i in model.graph.input if i.name not in inits}


def _run(model: onnx.ModelProto, feeds: dict, heterogeneous: bool = True) -> tuple[microndla.MDLA, list[np.ndarray]]:
    ie = microndla.MDLA()
    if heterogeneous:
        ie.SetFlag("heterogeneous", 1)
    ie.Compile(model)
    y = ie.Run([feeds[i.name] for i in model.graph.input if i.name in feeds])
    return ie, (y if isinstance(y, list) else [y])


def _within_budget(ys, refs, what: str) -> list[tuple[float, float]]:
    errors = []
    for k, (y, ref) in enumerate(zip(ys, refs)):
        assert y.size == ref.size, f"{what} output {k}: {y.shape} vs {ref.shape}"
        mean, mx = sdk_error_metric(np.asarray(y).reshape(ref.shape), ref)
        assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, f"{what} output {k}: {mean:.3f} % / {mx:.3f} % over budget"
        errors.append((mean, mx))
    return errors


def _dla_layers(ie) -> int:
    c = ie._compiled
    return sum(len(s.layers) for s in getattr(c, "segments", [c]))


# ---- products over tokens ----------------------------------------------------------------------
def _token_model(x_shape, op: str = "MatMul", trans_b: int = 0, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    K, N = x_shape[-1], 24
    w = (rng.standard_normal((N, K) if trans_b else (K, N)) / np.sqrt(K)).astype(np.float32)
    b = (rng.standard_normal(N) * 0.1).astype(np.float32)
    if op == "MatMul":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["q"])]
    else:
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["q"], transB=trans_b, alpha=0.5, beta=2.0)]
    nodes += [helper.make_node("Relu", ["q"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    w2 = (rng.standard_normal((N, 8)) / np.sqrt(N)).astype(np.float32)
    out_shape = list(x_shape[:-1]) + [8]
    g = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (w2, "w2"))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("x_shape,op,trans_b", [((1, 10, 32), "MatMul", 0), ((1, 1, 10, 32), "MatMul", 0),
                                                 ((10, 1, 32), "MatMul", 0), ((10, 32), "Gemm", 1),
                                                 ((10, 32), "Gemm", 0)])
def test_product_over_tokens_is_a_convolution_on_the_dla(x_shape, op, trans_b):
    """(1, T, K) x (K, N) and its variants: 1x1 convolutions over T positions, no flag needed
    (the layout changes are the host's head and tail), the second product reading the first's
    channel form directly (one DLA stage)."""
    model = _token_model(x_shape, op, trans_b)
    feeds = _feeds(model)
    ie, ys = _run(model, feeds, heterogeneous=False)
    _within_budget(ys, _ort(model, feeds), f"{op} {x_shape}")
    assert _dla_layers(ie) == 2 and ie.GetInfo("hwcycles") > 0
    assert_bit_exact_with_golden(ie)


def _attention_block(T: int = 12, D: int = 32, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = []

    def c(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
        return name

    def w(name, k, n):
        return c(name, rng.standard_normal((k, n)) / np.sqrt(k))
    mk = helper.make_node
    nodes = [mk("MatMul", ["x", w("wq", D, D)], ["q"]), mk("MatMul", ["x", w("wk", D, D)], ["k"]),
             mk("MatMul", ["x", w("wv", D, D)], ["v"]), mk("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             mk("MatMul", ["q", "kt"], ["s0"]), mk("Mul", ["s0", c("scale", 1 / np.sqrt(D))], ["s"]),
             mk("Softmax", ["s"], ["p"], axis=-1), mk("MatMul", ["p", "v"], ["a"]),
             mk("MatMul", ["a", w("wo", D, D)], ["o"]), mk("Add", ["x", "o"], ["r"]),
             mk("LayerNormalization", ["r", c("g", rng.uniform(0.8, 1.2, D)), c("b", np.zeros(D))], ["ln"], axis=-1),
             mk("MatMul", ["ln", w("w1", D, 2 * D)], ["f1"]), mk("Relu", ["f1"], ["f1r"]),
             mk("MatMul", ["f1r", w("w2", 2 * D, D)], ["f2"]), mk("Add", ["ln", "f2"], ["y"])]
    g = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, D])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_attention_block_runs_products_on_the_dla_and_the_rest_on_the_host():
    """Q/K/V, output and feed-forward projections on the DLA; Q K^T, Softmax, P V and LayerNorm on
    the host, in the middle of the network: only with ``heterogeneous``."""
    model = _attention_block()
    feeds = _feeds(model, scale=1.0)
    with pytest.raises(CompileError, match="heterogeneous"):
        microndla.MDLA().Compile(model)
    ie, ys = _run(model, feeds)
    _within_budget(ys, _ort(model, feeds), "attention block")
    stages = ie._compiled.stages
    host_ops = " ".join(n for s in stages if isinstance(s, HostStage) for n in s.nodes)
    assert "(Softmax)" in host_ops and "(LayerNormalization)" in host_ops
    assert _dla_layers(ie) == 6
    assert_bit_exact_with_golden(ie)


# ---- LSTM and GRU ------------------------------------------------------------------------------
RNN_CASES = [
    ("LSTM", dict()),
    ("LSTM", dict(direction="reverse")),
    ("LSTM", dict(direction="bidirectional", states=True)),
    ("LSTM", dict(direction="bidirectional", seq_len=5)),
    ("LSTM", dict(seq=1, states=True)),
    ("LSTM", dict(seq=1, states=True, direction="bidirectional")),   # the states' leading-axis views on the host
    ("GRU", dict()),
    ("GRU", dict(direction="bidirectional", linear_before_reset=1)),
    ("GRU", dict(states=True, seq_len=4, direction="reverse")),
]


@pytest.mark.parametrize("op,kw", RNN_CASES, ids=[f"{op}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"
                                                   for op, kw in RNN_CASES])
def test_rnn_layer_within_budget(op, kw):
    """Y, Y_h (, Y_c) of an LSTM/GRU: the gates' input part on the DLA, the recurrence on the host;
    ``Run([x, h0, c0])`` returns every output; one whose first dimension is not 1 (Y of T > 1
    steps, states of two directions) with a leading batch axis (one sequence per call)."""
    model = sequence.rnn_layer(op, **kw)
    feeds = _feeds(model)
    ie, ys = _run(model, feeds)
    refs = _ort(model, feeds)
    assert len(ys) == len(refs)
    for y, ref in zip(ys, refs):
        assert y.shape == (ref.shape if ref.shape[0] == 1 else (1, *ref.shape))
    _within_budget(ys, refs, f"{op} {kw}")
    assert _dla_layers(ie) == 1
    assert_bit_exact_with_golden(ie)


@pytest.mark.parametrize("op,kw", [("LSTM", dict(direction="bidirectional", states=True)), ("GRU", dict(seq_len=5))])
def test_rnn_layer_without_heterogeneous(op, kw):
    """The default mode: one recurrent layer is a DLA program (the gates' input part) with a host
    tail (the recurrence), so it runs without the flag, within the budget."""
    model = sequence.rnn_layer(op, **kw)
    feeds = _feeds(model)
    ie, ys = _run(model, feeds, heterogeneous=False)
    _within_budget(ys, _ort(model, feeds), f"{op} {kw} without heterogeneous")
    assert _dla_layers(ie) == 1
    assert_bit_exact_with_golden(ie)


@pytest.mark.parametrize("build,first,then", [
    (lambda: sequence.lstm_stack(seq=3), "node 'lstm1' (LSTM)", "node 'lstm2' (LSTM)"),
    (sequence.crnn, "node 'squeeze", "node 'bilstm' (LSTM)"),
    (sequence.attention_recogniser, "node 'squeeze", "node 'matmul36' (MatMul)")])
def test_refusal_without_heterogeneous_names_the_users_nodes(build, first, then):
    """Host work between DLA layers without the flag: the refusal names the user's ONNX nodes (not
    the Transpose or Conv canonicalisation wrote for them; those follow in parentheses) and the flag."""
    with pytest.raises(CompileError) as e:
        microndla.MDLA().Compile(build())
    msg = str(e.value)
    assert msg.startswith(first), msg
    assert f"DLA layers follow it ({then}" in msg and "SetFlag('heterogeneous', 1)" in msg, msg
    assert "__c" not in msg.split(" (as the compiler's")[0], msg


def test_layout_1_equals_layout_0():
    """layout 1 (batch-first; onnxruntime's CPU LSTM does not take it): the same weights in layout
    0 under onnxruntime, transposed."""
    m1 = sequence.rnn_layer("LSTM", layout=1, states=True, seed=3)
    m0 = sequence.rnn_layer("LSTM", layout=0, states=True, seed=3)
    feeds = _feeds(m1)
    refs = _ort(m0, {"x": feeds["x"].transpose(1, 0, 2), "h0": feeds["h0"].transpose(1, 0, 2),
                     "c0": feeds["c0"].transpose(1, 0, 2)})
    refs = [refs[0].transpose(2, 0, 1, 3), refs[1].transpose(1, 0, 2), refs[2].transpose(1, 0, 2)]
    _, ys = _run(m1, feeds)
    _within_budget(ys, refs, "LSTM layout 1")


@pytest.mark.parametrize("attrs", [dict(clip=0.5), dict(input_forget=1),
                                   dict(activations=["HardSigmoid", "Tanh", "Relu"], activation_alpha=[0.3],
                                        activation_beta=[0.4])])
def test_host_lstm_follows_the_specification(attrs):
    """The host's LSTM (compiler/host_rnn.py) equals onnxruntime on the attributes onnx.reference ignores."""
    model = sequence.rnn_layer("LSTM", seq_len=6, states=True, seed=2)
    for k, v in attrs.items():
        model.graph.node[0].attribute.append(helper.make_attribute(k, v))
    feeds = _feeds(model)
    for got, ref in zip(host_evaluator(model).run(None, feeds), _ort(model, feeds)):
        np.testing.assert_allclose(got, ref, atol=1e-5)


# ---- the SDK's test: two stacked LSTMs with explicit initial states ----------------------------
@pytest.mark.parametrize("seq", [1, 6])
def test_lstm_stack_with_initial_states(seq):
    """The SDK's LSTM test pattern built with onnx.helper: Run([x, h0, c0, h1, c1]) -> y, h, c, h2, c2."""
    model = sequence.lstm_stack(seq=seq)
    feeds = _feeds(model)
    ie, ys = _run(model, feeds)
    _within_budget(ys, _ort(model, feeds), f"lstm_stack seq {seq}")
    assert _dla_layers(ie) == 2
    assert_bit_exact_with_golden(ie)


@pytest.mark.parametrize("seq", [1, 5])
def test_torch_two_layer_lstm(seq):
    """Two stacked torch.nn.LSTM with explicit initial states, exported by torch.onnx."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class TwoLSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = torch.nn.LSTM(16, 32), torch.nn.LSTM(32, 32)

        def forward(self, x, h0, c0, h1, c1):
            y, (h, c) = self.l1(x, (h0, c0))
            y2, (h2, c2) = self.l2(y, (h1, c1))
            return y2, h, c, h2, c2
    net = TwoLSTM().eval()
    args = tuple(torch.randn(*s) * 0.5 for s in [(seq, 1, 16)] + [(1, 1, 32)] * 4)
    names = ["x", "h0", "c0", "h1", "c1"]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, buf, dynamo=False, opset_version=17, input_names=names,
                          output_names=["y", "h", "c", "h2", "c2"])
    model = onnx.load_from_string(buf.getvalue())
    assert [n.op_type for n in model.graph.node].count("LSTM") == 2
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    with torch.no_grad():
        expected = [t.numpy() for t in net(*args)]
    refs = _ort(model, feeds)
    for r, t in zip(refs, expected):
        np.testing.assert_allclose(r, t, atol=1e-5)
    ie, ys = _run(model, feeds)
    _within_budget(ys, refs, f"torch LSTM seq {seq}")
    assert_bit_exact_with_golden(ie)


# ---- recognisers -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["crnn", "attention_recogniser"])
def test_recogniser_within_budget(name):
    model = getattr(sequence, name)()
    x = np.random.default_rng(0).random((1, 1, 32, 64), dtype=np.float32)
    ref = _ort(model, {"input": x})[0]
    ie, ys = _run(model, {"input": x})
    _within_budget(ys, [ref], name)
    assert_bit_exact_with_golden(ie)


def test_profile_reports_the_dla_and_host_shares(tmp_path):
    """mdla profile of the CRNN: host rows carry the modelled host time (arch/host.py), the table
    the DLA and host shares of the call; the split recurrence's host LSTM is charged its recurrent
    products only (the DLA computed the input part)."""
    from click.testing import CliRunner

    from runtime.cli import main
    from runtime.host_cost import stage_cost
    path = tmp_path / "crnn.onnx"
    onnx.save(sequence.crnn(), str(path))
    result = CliRunner().invoke(main, ["profile", str(path), "-f", "heterogeneous=1"])
    assert result.exit_code == 0, result.output
    assert "modelled time of the call: DLA" in result.output and "host" in result.output
    ie, _ = _run(sequence.crnn(), {"input": np.zeros((1, 1, 32, 64), np.float32)})
    lstm = next(s for s in ie._compiled.stages if isinstance(s, HostStage)
                and any(n.op_type == "LSTM" for n in onnx.load_from_string(s.model).graph.node))
    flops, moved, nbytes, seconds = stage_cost(lstm.model)
    T, D, H = 16, 2, 48
    recurrent = T * D * (2 * 4 * H * H + 12 * H)
    assert recurrent <= flops <= recurrent * 1.1 and seconds > 0


def test_lstm_step_on_the_dla_is_latency_bound():
    """docs/architecture.md's case against the recurrence on the DLA: one LSTM step as DLA layers
    runs within the budget but takes over 20 times the cycles its MACs need (every layer waits for
    the previous one on a single pixel), while the input part of all 32 step-directions of the
    CRNN's LSTM costs less than one such step per direction-step."""
    from arch.machine import REFERENCE
    I, H = 64, 48
    model = sequence.lstm_step(I, H)
    feeds = _feeds(model)
    ie, ys = _run(model, feeds, heterogeneous=False)
    _within_budget(ys, _ort(model, feeds), "lstm_step")
    step = ie.GetInfo("hwcycles")
    assert step > 20 * 4 * H * (I + H) / REFERENCE.macs_per_cluster
    assert_bit_exact_with_golden(ie)
    gates = sequence.rnn_layer("LSTM", seq=16, inputs=I, hidden=H, direction="bidirectional")
    ie, _ = _run(gates, _feeds(gates))
    assert ie.GetInfo("hwcycles") < step * 2


def test_several_sequences_per_call():
    """imgs_per_cluster 2: two sequences per call, each input stacked on a leading axis of its
    per-call shape (x (T, 1, I) -> (2, T, 1, I); h0 (1, 1, H) -> (2, 1, H)), each result equal to
    its own run within the budget."""
    model = sequence.lstm_stack(seq=6)
    calls = [_feeds(model, seed=s) for s in (1, 2)]
    names = [i.name for i in model.graph.input]
    arrays = [np.stack([c[n] for c in calls]) if calls[0][n].shape[0] != 1 else np.concatenate([c[n] for c in calls])
              for n in names]
    ie = microndla.MDLA()
    ie.SetFlag("heterogeneous", 1)
    ie.SetFlag("imgs_per_cluster", 2)
    ie.Compile(model)
    ys = ie.Run(arrays)
    assert ys[0].shape == (2, 6, 1, 32) and ys[1].shape == (2, 1, 32)
    for k, feeds in enumerate(calls):
        _within_budget([y[k] for y in ys], _ort(model, feeds), f"sequence {k}")


# ---- Paddle2ONNX exports -----------------------------------------------------------------------
def _paddle_reference(op, params, x, states, num_layers, D, H, time_major):
    """paddle.nn.LSTM/GRU in numpy with Paddle's own gate order (LSTM i, f, c, o; GRU r, z, c)."""
    def sig(v):
        return 1 / (1 + np.exp(-v))
    seq = x if time_major else x.transpose(1, 0, 2)            # (T, 1, I)
    hs, cs = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            sfx = "_reverse" if d else ""
            p = {k: params[f"{op.lower()}.{k}_l{layer}{sfx}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            h = states[0][layer * D + d]
            c = states[1][layer * D + d] if op == "LSTM" else None
            ys = [None] * len(seq)
            for t in (reversed(range(len(seq))) if d else range(len(seq))):
                xg = seq[t] @ p["weight_ih"].T + p["bias_ih"]
                hg = h @ p["weight_hh"].T + p["bias_hh"]
                if op == "LSTM":
                    i, f, g, o = np.split(xg + hg, 4, axis=-1)
                    c = sig(f) * c + sig(i) * np.tanh(g)
                    h = sig(o) * np.tanh(c)
                else:
                    xr, xz, xc = np.split(xg, 3, axis=-1)
                    hr, hz, hc = np.split(hg, 3, axis=-1)
                    r, z = sig(xr + hr), sig(xz + hz)
                    cand = np.tanh(xc + r * hc)
                    h = (h - cand) * z + cand
                ys[t] = h
            outs.append(np.stack(ys))
            hs.append(h)
            cs.append(c)
        seq = np.concatenate(outs, axis=-1)
    y = seq if time_major else seq.transpose(1, 0, 2)
    last = slice((num_layers - 1) * D, num_layers * D)
    return [y, np.stack(hs[last])] + ([np.stack(cs[last])] if op == "LSTM" else [])


PADDLE_CASES = [
    ("LSTM", dict(states="inputs")),
    ("LSTM", dict(direction="bidirectional", states="tile")),
    ("LSTM", dict(direction="bidirectional", num_layers=2, states="constantofshape")),
    ("LSTM", dict(num_layers=2, states="expand", time_major=True, opset=13)),
    ("LSTM", dict(direction="bidirectional", states="inputs", seq=1)),
    ("GRU", dict(direction="bidirectional", states="tile")),
]


@pytest.mark.parametrize("op,kw", PADDLE_CASES)
def test_paddle2onnx_rnn_within_budget(op, kw):
    """paddle.nn.LSTM/GRU as Paddle2ONNX writes them (zoo.sequence.paddle_rnn: Paddle's gate order
    re-ordered by Slice/Concat of the parameters, the Transposes of a batch-first layer, initial
    states as inputs or Paddle's zeros through Shape chains, Y -> Transpose -> Reshape): the graph
    computes Paddle's LSTM/GRU (numpy, Paddle's gate order, under onnxruntime), and the DLA (the
    gates' input part) with the host (the recurrence) is within the SDK budget of onnxruntime."""
    model, params = sequence.paddle_rnn(op, **kw)
    D = 2 if kw.get("direction") == "bidirectional" else 1
    L, H = kw.get("num_layers", 1), 16
    feeds = _feeds(model)
    refs = _ort(model, feeds)
    zeros = np.zeros((L * D, 1, H), np.float32)
    states = [feeds.get("prev_h", zeros), feeds.get("prev_c", zeros)]
    for got, want in zip(refs, _paddle_reference(op, params, feeds["x"], states, L, D, H, kw.get("time_major", False))):
        np.testing.assert_allclose(got, want, atol=1e-5)
    ie, ys = _run(model, feeds)
    _within_budget(ys, refs, f"paddle {op} {kw}")
    assert _dla_layers(ie) == L
    assert_bit_exact_with_golden(ie)


@pytest.mark.parametrize("build", [lambda: sequence.rnn_layer("LSTM", seq=1, direction="bidirectional", states=True),
                                   lambda: sequence.paddle_rnn("LSTM", direction="bidirectional", seq=1)[0]])
def test_one_step_bidirectional_with_state_inputs_without_heterogeneous(build):
    """One step, two directions, initial states (2, 1, H) given: the views giving the states their
    leading axis run on the host with the recurrence that reads them (on the DLA they were a stage
    output of batch 2, or a host tail reading a model input: refused), with or without the flag."""
    model = build()
    feeds = _feeds(model)
    ie, ys = _run(model, feeds, heterogeneous=False)
    _within_budget(ys, _ort(model, feeds), "one bidirectional step with states")
    assert _dla_layers(ie) == 1
    assert_bit_exact_with_golden(ie)


def test_paddle2onnx_lstm_without_heterogeneous():
    """One batch-first Paddle LSTM layer with Paddle's zero states runs without the flag (the
    Transpose and the state chain fold or are the host head, the gates on the DLA, the recurrence
    and the Transposes after it the host tail)."""
    model, _ = sequence.paddle_rnn("LSTM", direction="bidirectional", states="constantofshape")
    feeds = _feeds(model)
    ie, ys = _run(model, feeds, heterogeneous=False)
    _within_budget(ys, _ort(model, feeds), "paddle LSTM without heterogeneous")
    assert _dla_layers(ie) == 1
