"""Exporters' idioms (issue 11, item 1 and 2): each written exactly as torch.onnx or Paddle2ONNX
writes it, compiled with default flags, canonicalised into what the DLA runs (checked on the
compiled layers), and run: SDK metric against onnxruntime in float32, budget mean <= 1 %,
max <= 5 % of max |reference|. Where torch is installed, small modules exported by
torch.onnx.export are compiled too (skipped without torch)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import microndla
from arch.numerics import ACT_NAMES, sdk_error_metric
from compiler.ir import CompileError
from compiler.partition import HostOnlyWarning, HostStage, Staged

BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0
C, H, W = 8, 12, 12


class Net:
    """A model under construction: ``conv0`` makes tensor ``x`` (C channels) from the input; the
    idiom is written on it; ``head`` ends the model in a conv so that the idiom is mid-network."""

    def __init__(self, seed: int = 0, c: int = C, batch=1, opset: int = 17):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.opset = [], [], opset
        self.input = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, H, W])
        self.conv("input", "x", 3, c)

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, ins: list[str], out: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def conv(self, x: str, out: str, cin: int, cout: int, k: int = 3, group: int = 1) -> str:
        w = self.const(out + "_w", (self.rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k))
                       .astype(np.float32))
        b = self.const(out + "_b", (0.1 * self.rng.standard_normal(cout)).astype(np.float32))
        return self.node("Conv", [x, w, b], out, pads=[k // 2] * 4, group=group)

    def model(self, y: str, cin: int = C, batch=1) -> onnx.ModelProto:
        self.conv(y, "output", cin, 4)
        out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4, H, W])
        g = helper.make_graph(self.nodes, "idiom", [self.input], [out], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=9)
        onnx.checker.check_model(m)
        return m


def reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def run(model: onnx.ModelProto, n: int = 1, flags: dict | None = None, seed: int = 0, samples: bool = False,
        batch: int | None = None):
    """Compile with default flags (plus ``flags``), run ``n`` images; (compiled, SDK errors)."""
    x = np.random.default_rng(seed).standard_normal((n, 3, H, W)).astype(np.float32)
    ref = reference(model, x) if batch else np.concatenate([reference(model, im[None]) for im in x])
    ie = microndla.MDLA()
    try:
        ie.SetFlag("imgs_per_cluster", n)
        if flags:
            ie.SetFlag(flags)
        ie.Compile(model, samples=[x] if samples else None)
        y = ie.Run(x)
        compiled = ie._compiled
    finally:
        ie.Free()
    mean, mx = sdk_error_metric(y, ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, (mean, mx)
    return compiled, (mean, mx)


def layers(compiled):
    segs = compiled.segments if isinstance(compiled, Staged) else [compiled]
    return [l for s in segs for l in s.graph.layers]


def acts(compiled) -> list[str]:
    return [getattr(l, "act", "-") for l in layers(compiled)]


# ---- arithmetic by constants -----------------------------------------------------------------

def test_div_and_sub_by_constants_fold_into_the_producing_layer():
    n = Net()
    n.const("mean", np.linspace(-0.5, 0.5, C).astype(np.float32).reshape(1, C, 1, 1))
    n.const("std", np.float32(2.5))
    n.node("Sub", ["x", "mean"], "centred")
    n.node("Div", ["centred", "std"], "scaled")
    n.node("Relu", ["scaled"], "r")
    c, _ = run(n.model("r"))
    assert len(layers(c)) == 2 and acts(c)[0] == "relu"          # Sub, Div and Relu in conv x's output stage


def test_sub_of_a_tensor_from_a_constant_and_neg():
    n = Net()
    n.const("one", np.float32(1.0))
    n.node("Sub", ["one", "x"], "flip")         # 1 - x
    n.node("Neg", ["flip"], "neg")
    c, _ = run(n.model("neg"))
    assert len(layers(c)) == 2


# ---- gates and activations -------------------------------------------------------------------

def _se(n: Net, gate: str) -> str:
    """Squeeze-excitation on x, its gate as ``gate``: 'hardsigmoid' (torch), 'paddle' (Paddle2ONNX's
    HardSigmoid slope 0.2), 'sigmoid'."""
    n.node("GlobalAveragePool", ["x"], "sq")
    n.conv("sq", "fc1", C, 4, k=1)
    n.node("Relu", ["fc1"], "fc1r")
    n.conv("fc1r", "fc2", 4, C, k=1)
    if gate == "hardsigmoid":
        n.node("HardSigmoid", ["fc2"], "g", alpha=1 / 6, beta=0.5)
    elif gate == "paddle":
        n.node("HardSigmoid", ["fc2"], "g", alpha=0.2, beta=0.5)
    else:
        n.node("Sigmoid", ["fc2"], "g")
    return n.node("Mul", ["x", "g"], "se")


@pytest.mark.parametrize("gate", ["hardsigmoid", "paddle"])
def test_hardsigmoid_gate_is_the_producing_layers_clip(gate):
    n = Net(seed=1)
    c, _ = run(n.model(_se(n, gate)))
    fc2 = next(l for l in layers(c) if l.name == "fc2")
    assert fc2.act == "clip" and fc2.clip == (0.0, 1.0)            # HardSigmoid: folded Mul/Add + Clip(0, 1)


def _hardswish(n: Net, form: str) -> str:
    if form == "op":
        return n.node("HardSwish", ["x"], "hs")
    if form == "paddle":        # Paddle2ONNX (and hand-written MobileNetV3): x * Clip(x + 3, 0, 6) / 6
        n.node("Add", ["x", n.const("three", np.float32(3))], "x3")
        n.node("Clip", ["x3", n.const("zero", np.float32(0)), n.const("six", np.float32(6))], "r6")
        n.node("Mul", ["x", "r6"], "xr6")
        return n.node("Div", ["xr6", n.const("six_", np.float32(6))], "hs")
    if form == "relu6_first":   # Clip(x + 3) / 6 first, then the product
        n.node("Add", ["x", n.const("three", np.float32(3))], "x3")
        n.node("Clip", ["x3", n.const("zero", np.float32(0)), n.const("six", np.float32(6))], "r6")
        n.node("Div", ["r6", n.const("six_", np.float32(6))], "hsig")
        return n.node("Mul", ["hsig", "x"], "hs")
    n.node("HardSigmoid", ["x"], "hsig", alpha=1 / 6, beta=0.5)    # torch before opset 14
    return n.node("Mul", ["x", "hsig"], "hs")


@pytest.mark.parametrize("form", ["op", "paddle", "relu6_first", "torch_opset13"])
def test_hardswish_in_every_form(form):
    n = Net(seed=2, opset=17)
    m = n.model(_hardswish(n, form))
    c, _ = run(m)
    if "hardswish" in ACT_NAMES:
        assert acts(c)[0] == "hardswish" and len(layers(c)) == 2
    else:   # x * Clip(x / 6 + 1/2, 0, 1): a gate layer (bounded by 1) times x, no factor 6 to saturate
        gate = [l for l in layers(c) if l.act == "clip"]
        assert len(gate) == 1 and gate[0].clip == (0.0, 1.0) and gate[0].residual == "x"
        assert len(layers(c)) == 3


def test_hardswish_of_large_values_does_not_saturate_the_product():
    """x * Clip(x + 3, 0, 6) would reach 6 * max|x| before the Div: canonicalised, it never exceeds |x|."""
    n = Net(seed=3)
    n.nodes[-1].input[1] = n.const("x_w_big", (numpy_helper.to_array(n.inits[0]) * 40).astype(np.float32))
    run(n.model(_hardswish(n, "paddle")), samples=True)


def test_silu_product():
    n = Net(seed=4)
    n.node("Sigmoid", ["x"], "sx")
    m = n.model(n.node("Mul", ["x", "sx"], "silu"))
    c, _ = run(m)
    if "silu" in ACT_NAMES:
        assert acts(c)[0] == "silu" and len(layers(c)) == 2
    else:
        assert len(layers(c)) == 3          # sigmoid layer times x


def test_clip_with_constant_node_bounds():
    n = Net()
    n.nodes.append(helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.float32(-1), "lo")))
    n.nodes.append(helper.make_node("Constant", [], ["hi"], value=numpy_helper.from_array(np.float32(2), "hi")))
    c, _ = run(n.model(n.node("Clip", ["x", "lo", "hi"], "clipped")))
    assert acts(c)[0] == "clip" and layers(c)[0].clip == (-1.0, 2.0)


def test_mish_product():
    """x * Tanh(Softplus(x)), as torch exports Mish before opset 18: the output-stage activation
    mish of the producing Conv (no host stage)."""
    n = Net(seed=5)
    n.node("Softplus", ["x"], "sp")
    n.node("Tanh", ["sp"], "t")
    m = n.model(n.node("Mul", ["x", "t"], "mish"))
    c, _ = run(m)
    assert acts(c)[0] == "mish" and len(layers(c)) == 2


def test_mish_op_opset18():
    n = Net(seed=5, opset=18)
    c, _ = run(n.model(n.node("Mish", ["x"], "mish")))
    assert acts(c)[0] == "mish" and len(layers(c)) == 2


def test_softplus_alone_runs_on_the_host():
    n = Net(seed=5)
    n.node("Softplus", ["x"], "sp")
    m = n.model(n.node("Mul", ["x", "sp"], "xsp"))
    c, _ = run(m, flags={"heterogeneous": 1})
    assert isinstance(c, Staged) and any(isinstance(s, HostStage) for s in c.stages)


# ---- channel ranges and permutations -----------------------------------------------------------

def test_split_along_channels_c2f_style():
    """YOLOv8's C2f: cv1 -> Split in two halves -> a bottleneck on the second -> Concat of all -> cv2."""
    n = Net(seed=6)
    n.nodes.append(helper.make_node("Split", ["x", n.const("halves", np.array([4, 4], np.int64))], ["a", "b"],
                                    name="split", axis=1))
    n.conv("b", "m1", 4, 4)
    n.node("Concat", ["a", "b", "m1"], "cat", axis=1)
    c, _ = run(n.model("cat", cin=12))
    names = [l.name for l in layers(c)]
    assert "m1" in names and all(l.__class__.__name__ in ("Conv",) for l in layers(c))


def test_split_with_num_outputs_opset18():
    n = Net(seed=7, opset=18)
    n.nodes.append(helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=1, num_outputs=2))
    n.conv("a", "ca", 4, 4)
    n.conv("b", "cb", 4, 4)
    n.node("Add", ["ca", "cb"], "sum")
    c, _ = run(n.model("sum", cin=4))
    m_ca = next(l for l in layers(c) if l.name == "ca")
    assert m_ca.input == "x" and m_ca.weight.shape[1] == C      # the selection folded into the consumer


def test_slice_of_a_channel_range():
    n = Net(seed=8)
    n.node("Slice", ["x", n.const("st", np.array([2], np.int64)), n.const("en", np.array([6], np.int64)),
                     n.const("ax", np.array([1], np.int64))], "mid")
    c, _ = run(n.model("mid", cin=4))
    assert len(layers(c)) == 2 and layers(c)[1].input == "x"


def test_channel_shuffle_folds_into_the_consumer():
    """ShuffleNet's channel shuffle: Reshape(1, g, C/g, H, W) -> Transpose(0, 2, 1, 3, 4) -> Reshape(1, C, H, W)."""
    n = Net(seed=9)
    n.node("Reshape", ["x", n.const("s5", np.array([1, 2, C // 2, H, W], np.int64))], "x5")
    n.node("Transpose", ["x5"], "x5t", perm=[0, 2, 1, 3, 4])
    n.node("Reshape", ["x5t", n.const("s4", np.array([1, C, H, W], np.int64))], "shuffled")
    c, _ = run(n.model("shuffled"))
    assert len(layers(c)) == 2 and layers(c)[1].input == "x"


def test_cancelling_transposes_identity_and_casts_are_no_ops():
    n = Net(seed=10)
    n.node("Transpose", ["x"], "nhwc", perm=[0, 2, 3, 1])
    n.node("Transpose", ["nhwc"], "nchw", perm=[0, 3, 1, 2])
    n.node("Identity", ["nchw"], "same")
    n.node("Cast", ["same"], "dbl", to=TensorProto.DOUBLE)
    n.node("Cast", ["dbl"], "flt", to=TensorProto.FLOAT)
    c, _ = run(n.model("flt"))
    assert len(layers(c)) == 2 and not isinstance(c, Staged)


# ---- shapes to a fixpoint, batch -------------------------------------------------------------

def _flatten_by_shape_chain(n: Net) -> onnx.ModelProto:
    """torch's x.view(x.size(0), -1) -> Gemm, and a Range/Expand grid added to the logits."""
    n.node("GlobalAveragePool", ["x"], "gap")
    n.node("Shape", ["gap"], "shp")
    n.node("Gather", ["shp", n.const("zero_i", np.array(0, np.int64))], "b", axis=0)
    n.node("Unsqueeze", ["b", n.const("ax0", np.array([0], np.int64))], "b1")
    n.node("Concat", ["b1", n.const("minus1", np.array([-1], np.int64))], "target", axis=0)
    n.node("Reshape", ["gap", "target"], "flat")
    n.node("Gemm", ["flat", n.const("fc_w", n.rng.standard_normal((5, C)).astype(np.float32)),
                    n.const("fc_b", np.zeros(5, np.float32))], "logits", transB=1)
    n.node("Shape", ["logits"], "lshape")
    n.node("Gather", ["lshape", n.const("one_i", np.array(1, np.int64))], "k", axis=0)
    n.node("Range", [n.const("r0", np.array(0, np.int64)), "k", n.const("r1", np.array(1, np.int64))], "grid_i")
    n.node("Cast", ["grid_i"], "grid", to=TensorProto.FLOAT)
    n.node("Expand", ["grid", "lshape"], "grid2")
    n.node("Add", ["logits", "grid2"], "output")
    return n


def test_shape_chains_and_range_grids_fold_for_the_dla():
    n = _flatten_by_shape_chain(Net(seed=11))
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])
    m = helper.make_model(helper.make_graph(n.nodes, "chain", [n.input], [out], n.inits),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    x = np.random.default_rng(0).standard_normal((1, 3, H, W)).astype(np.float32)
    for flags in ({}, {"heterogeneous": 1}):          # both modes see the same static graph: all on the DLA
        ie = microndla.MDLA()
        ie.SetFlag(flags) if flags else None
        ie.Compile(m)
        assert not isinstance(ie._compiled, Staged) and ie._compiled.host is None
        mean, mx = sdk_error_metric(ie.Run(x), reference(m, x))
        assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX
        ie.Free()


def test_dynamic_batch_compiles_without_inshapes():
    n = Net(seed=12, batch="N")
    m = n.model(_hardswish(n, "paddle"), batch="N")
    run(m, n=3, batch=3)


def test_fixed_batch_runs_its_images_per_run():
    """A model exported with batch 3 (its flatten a constant Reshape to (3, -1), as torch writes it
    with constant folding) runs 3 images per Run with default flags."""
    n = Net(seed=16, batch=3)
    n.node("GlobalAveragePool", ["x"], "gap")
    n.node("Reshape", ["gap", n.const("to2d", np.array([3, -1], np.int64))], "flat")
    n.node("Gemm", ["flat", n.const("fc_w", n.rng.standard_normal((5, C)).astype(np.float32)),
                    n.const("fc_b", np.zeros(5, np.float32))], "output", transB=1)
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [3, 5])
    m = helper.make_model(helper.make_graph(n.nodes, "b3", [n.input], [out], n.inits),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    x = np.random.default_rng(1).standard_normal((3, 3, H, W)).astype(np.float32)
    ie = microndla.MDLA()
    ie.Compile(m)
    assert ie._compiled.parallel.batch == 3
    y = ie.Run(x)
    ie.Free()
    mean, mx = sdk_error_metric(y, reference(m, x))
    assert y.shape == (3, 5) and mean <= BUDGET_MEAN and mx <= BUDGET_MAX


def test_fixed_batch_that_combines_its_images_runs_whole_on_the_host():
    n = Net(seed=17, batch=2)
    n.node("Softmax", ["x"], "p", axis=0)                   # across the batch
    m = n.model("p", batch=2)
    with pytest.raises(CompileError, match=r"node 'p' \(Softmax\).*SetFlag\('heterogeneous', 1\)"):
        microndla.MDLA().Compile(m)
    ie = microndla.MDLA()
    ie.SetFlag("heterogeneous", 1)
    with pytest.warns(HostOnlyWarning):
        ie.Compile(m)
    x = np.random.default_rng(2).standard_normal((2, 3, H, W)).astype(np.float32)
    np.testing.assert_allclose(ie.Run(x), reference(m, x), rtol=1e-4, atol=1e-5)
    ie.Free()


def test_all_host_model_runs_on_the_host_with_a_warning():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    m = helper.make_model(helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=1)], "soft", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with pytest.raises(CompileError, match=r"Softmax.*SetFlag\('heterogeneous', 1\)"):
        microndla.MDLA().Compile(m)
    ie = microndla.MDLA()
    ie.SetFlag({"heterogeneous": 1, "imgs_per_cluster": 2})
    with pytest.warns(HostOnlyWarning, match="runs on the host"):
        ie.Compile(m)
    a = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(ie.Run(a), np.concatenate([reference(m, im[None]) for im in a]), rtol=1e-5, atol=1e-6)
    ie.Free()


def test_refused_node_moves_to_the_host_with_the_flag():
    """A Resize the DLA cannot take (cubic) between DLA layers: refused naming the node, op, reason and
    flag; with the flag it runs on the host."""
    n = Net(seed=13)
    n.node("Resize", ["x", "", n.const("sc", np.array([1, 1, 1, 1], np.float32))], "rs", mode="cubic")
    m = n.model("rs")
    with pytest.raises(CompileError, match=r"node 'rs' \(Resize\).*cubic.*SetFlag\('heterogeneous', 1\)"):
        microndla.MDLA().Compile(m)
    c, _ = run(m, flags={"heterogeneous": 1})
    assert isinstance(c, Staged) and any(isinstance(s, HostStage) and s.position == "middle" for s in c.stages)


# ---- torch's exporter ----------------------------------------------------------------------------

try:
    import torch
except ImportError:   # pragma: no cover - torch is optional
    torch = None


def _export(module, opset: int, dynamic: bool = False) -> onnx.ModelProto:
    buf = io.BytesIO()
    x = torch.zeros(1, 3, H, W)
    kw = {"dynamic_axes": {"input": {0: "N"}, "output": {0: "N"}}} if dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, input_names=["input"], output_names=["output"],
                          opset_version=opset, dynamo=False, **kw)
    return onnx.load_from_string(buf.getvalue())


def _torch_block():
    nn = torch.nn

    class Block(nn.Module):
        """MobileNetV3's bneck pieces and YOLO's C2f pieces in one module."""
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
            self.m = nn.Conv2d(4, 4, 3, padding=1)
            self.out = nn.Conv2d(12, 4, 1)

        def forward(self, x):
            x = nn.functional.hardswish(self.bn(self.c1(x)))
            x = self.dw(x)
            s = nn.functional.hardsigmoid(self.se2(nn.functional.relu(self.se1(x.mean((2, 3), keepdim=True)))))
            x = x * s
            x = x * torch.sigmoid(x)                       # SiLU as exporters write it
            a, b = x.chunk(2, 1)                           # Split along channels
            y = torch.cat([a, b, self.m(b)], 1)
            return self.out(y).flatten(1).view(x.size(0), 4, -1)

    return Block()


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@pytest.mark.parametrize("opset,dynamic", [(13, False), (17, True)])
def test_torch_exported_block(opset, dynamic):
    m = _export(_torch_block(), opset, dynamic)
    x = np.random.default_rng(0).standard_normal((2, 3, H, W)).astype(np.float32)
    ie = microndla.MDLA()
    ie.SetFlag("imgs_per_cluster", 2)
    ie.Compile(m)
    y = ie.Run(x)
    ie.Free()
    ref = np.concatenate([reference(m, im[None]) for im in x])
    mean, mx = sdk_error_metric(y, ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, (mean, mx)


# ---- layouts the hardware does not impose (item 4) ---------------------------------------------

def test_concat_of_pieces_not_a_word_wide():
    """A detection head's Concat of box (4), objectness (1) and class (3) channels."""
    n = Net(seed=14)
    n.conv("x", "box", C, 4, k=1)
    n.conv("x", "obj", C, 1, k=1)
    n.conv("x", "cls", C, 3, k=1)
    n.node("Sigmoid", ["obj"], "objp")
    n.node("Concat", ["box", "objp", "cls"], "det", axis=1)
    c, _ = run(n.model("det", cin=8))
    assert sum(l.kind == "concat" for l in layers(c)) == 3


def test_concat_of_the_graph_input_and_of_a_tensor_in_two_concats():
    n = Net(seed=15, c=16)
    n.node("Concat", ["x", "input"], "cat1", axis=1)          # word-aligned pieces, the input among them
    n.conv("cat1", "y", 16 + 3, 16)
    n.node("Concat", ["y", "x"], "cat2", axis=1)
    n.node("Concat", ["x", "y"], "cat3", axis=1)              # x and y in two concatenations each
    n.node("Add", ["cat2", "cat3"], "both")
    c, _ = run(n.model("both", cin=32))
    copies = [l for l in layers(c) if l.kind == "channelwise" and l.name.endswith("__copy")]
    assert {l.input for l in copies} == {"input", "x", "y"}


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pooling_over_a_map_larger_than_the_buffer(pool):
    """A squeeze-excitation's pooling over a 96x96 map (9216 pixels, more than half the maps buffer):
    pooled by tiles, then globally (partial reductions)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 96, 96])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 1, 1])
    rng = np.random.default_rng(18)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 5, "w"),
             numpy_helper.from_array(np.array([1.5, -0.7, 0.4, -2.0], np.float32), "b")]   # means well above Q8.8's step
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node(pool, ["c"], ["output"], name="gp")]
    m = helper.make_model(helper.make_graph(nodes, "gp", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)],
                          ir_version=9)
    a = rng.standard_normal((1, 3, 96, 96)).astype(np.float32)
    ie = microndla.MDLA()
    ie.Compile(m)
    pools = [l for l in ie._compiled.graph.layers if l.__class__.__name__ in ("AvgPool", "MaxPool")]
    assert len(pools) >= 2 and all(p.kernel[0] * p.kernel[1] <= 2048 for p in pools)
    mean, mx = sdk_error_metric(ie.Run(a), reference(m, a))
    ie.Free()
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, (mean, mx)


@pytest.mark.parametrize("shape", [(1, 1, 24), (1, 1, 1, 24)])
def test_matmul_with_leading_unit_dimensions(shape):
    """A transformer-style classifier head: MatMul of a (1, 1, K) token by a constant (K, M)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape[:-1]) + [6])
    rng = np.random.default_rng(19)
    inits = [numpy_helper.from_array(rng.standard_normal((24, 6)).astype(np.float32) / 5, "w"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["input", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["output"])]
    m = helper.make_model(helper.make_graph(nodes, "mm", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)],
                          ir_version=9)
    a = rng.standard_normal(shape).astype(np.float32)
    ie = microndla.MDLA()
    ie.Compile(m)
    assert not isinstance(ie._compiled, Staged) and len(ie._compiled.graph.layers) == 1
    out = ie.Run(a)
    ie.Free()
    assert out.shape == shape[:-1] + (6,)
    mean, mx = sdk_error_metric(out, reference(m, a))
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, (mean, mx)


def test_all_host_model_travels_in_a_bin(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.INT32, [2, 5])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [2, 5])
    m = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "neg", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    ie = microndla.MDLA()
    ie.SetFlag("heterogeneous", 1)
    path = str(tmp_path / "neg.bin")
    with pytest.warns(HostOnlyWarning):
        ie.Compile(m, outfile=path)
    ie2 = microndla.MDLA()
    ie2.Init(path)
    a = np.arange(10, dtype=np.int32).reshape(2, 5)
    out = ie2.Run(a)
    assert out.dtype == np.int32 and np.array_equal(out, -a)
    ie2.Free()


@pytest.mark.parametrize("mode,scales", [("linear", [1, 1, 0.5, 0.5]), ("cubic", [1, 1, 1.5, 1.5]),
                                         ("nearest", [1, 1, 0.75, 0.6])])
def test_resize_the_convolutions_cannot_take_runs_as_a_linear_map(mode, scales):
    """A downsampling, cubic or non-integer Resize at the end of a model: a fixed linear map on the DLA."""
    n = Net(seed=20)
    x = n.conv("x", "y", C, 4)
    n.node("Resize", [x, "", n.const("sc", np.array(scales, np.float32))], "output", mode=mode)
    oh, ow = int(np.floor(H * scales[2])), int(np.floor(W * scales[3]))
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, oh, ow])
    m = helper.make_model(helper.make_graph(n.nodes, "rs", [n.input], [out], n.inits),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    a = np.random.default_rng(3).standard_normal((1, 3, H, W)).astype(np.float32)
    ie = microndla.MDLA()
    ie.Compile(m)
    assert not isinstance(ie._compiled, Staged) and ie._compiled.graph.layers[-1].kind == "resize"
    y = ie.Run(a)
    ie.Free()
    mean, mx = sdk_error_metric(y, reference(m, a))
    assert y.shape == (1, 4, oh, ow) and mean <= BUDGET_MEAN and mx <= BUDGET_MAX, (mean, mx)
