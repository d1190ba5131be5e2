"""Host fallback everywhere (the SDK's ``heterogeneous``): operators the DLA does not run execute on
the host before the first DLA layer (head), between DLA layers (middle, only with the flag) and after
the last (tail). Every result is compared with onnxruntime under the SDK metric, budget mean <= 1 %,
max <= 5 %; the modelled time is the sum of the DLA stages' cycles."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import microndla
from arch.numerics import sdk_error_metric
from compiler import binfile
from compiler.driver import Compiled
from compiler.ir import CompileError
from compiler.partition import HostStage, Staged
from runtime.executors import get_executor
from zoo import small_cnn

from tests.test_host_fallback import with_tail as with_host_tail

BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0


def _check(model) -> onnx.ModelProto:
    onnx.checker.check_model(model)
    return model


def with_head(kind: str, seed: int = 1) -> onnx.ModelProto:
    """small_cnn behind host operators on its input: an NHWC->NCHW Transpose with a per-channel
    Sub/Div normalisation (not foldable: nothing before it to fold into), or an LRN."""
    m = small_cnn(seed=seed)
    g = m.graph
    if kind == "transpose_norm":
        g.input[0].CopyFrom(helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 32, 32, 3]))
        g.initializer.extend([
            numpy_helper.from_array(np.array([0.5, 0.4, 0.3], np.float32).reshape(1, 3, 1, 1), "mean"),
            numpy_helper.from_array(np.array([0.2, 0.25, 0.3], np.float32).reshape(1, 3, 1, 1), "std")])
        head = [helper.make_node("Transpose", ["image"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
                helper.make_node("Sub", ["nchw", "mean"], ["centred"], name="sub_mean"),
                helper.make_node("Div", ["centred", "std"], ["input"], name="div_std")]
    else:
        g.input[0].name = "image"
        head = [helper.make_node("LRN", ["image"], ["input"], name="lrn0", size=3, alpha=1e-2, beta=0.75, bias=1.0)]
    for n in reversed(head):
        g.node.insert(0, n)
    return _check(m)


def with_middle(kind: str, seed: int = 2) -> onnx.ModelProto:
    """small_cnn with a host operator between pool1 and conv2."""
    m = small_cnn(seed=seed)
    node = {"lrn": helper.make_node("LRN", ["pool1_out"], ["mid"], name="lrn", size=5, alpha=1e-4, beta=0.75, bias=1.0),
            "softmax": helper.make_node("Softmax", ["pool1_out"], ["mid"], name="chan_softmax", axis=1),
            "transpose": helper.make_node("Transpose", ["pool1_out"], ["mid"], name="swap_hw", perm=[0, 1, 3, 2])}[kind]
    for n in m.graph.node:
        if n.name == "conv2":
            n.input[0] = "mid"
    m.graph.node.insert(4, node)
    return _check(m)


def with_tail(model: onnx.ModelProto) -> onnx.ModelProto:
    """A Softmax after the classifier (as exporters write it)."""
    return with_host_tail(model, helper.make_node("Softmax", ["logits"], ["output"], name="prob", axis=1))


def reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: im[None]})[0] for im in x])


def images(model: onnx.ModelProto, n: int, seed: int = 0) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def within_budget(y, ref) -> tuple[float, float]:
    mean, mx = sdk_error_metric(y, ref)
    assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, (mean, mx)
    return mean, mx


@pytest.mark.parametrize("kind", ["transpose_norm", "lrn"])
def test_head_runs_on_the_host_by_default(kind, capsys):
    m = with_head(kind)
    x = images(m, 2)
    ie = microndla.MDLA()
    ie.SetFlag({"nclusters": 2, "debug": "n"})
    assert ie.Compile(m) == ["output"]
    c = ie._compiled
    assert isinstance(c, Staged) and [type(s).__name__ for s in c.stages] == ["HostStage", "Compiled"]
    assert c.stages[0].position == "head" and c.stages[0].outputs == ["input"]
    assert "type host name=" in capsys.readouterr().out
    assert ie.GetInfo("inshapes") == "x".join(map(str, (1,) + x.shape[1:])) and ie.GetInfo("outshapes") == "1x10"
    ref = reference(m, x)
    within_budget(ie.Run(x), ref)
    np.testing.assert_allclose(ie.Run_th(x), ref, rtol=1e-3, atol=1e-4)
    ie.Free()


@pytest.mark.parametrize("kind", ["lrn", "softmax", "transpose"])
def test_middle_runs_on_the_host_with_the_flag(kind):
    m = with_middle(kind)
    x = images(m, 1)
    ie = microndla.MDLA()
    ie.SetFlag("heterogeneous", 1)
    ie.Compile(m)
    c = ie._compiled
    assert [s.position if isinstance(s, HostStage) else "dla" for s in c.stages] == ["dla", "middle", "dla"]
    ref = reference(m, x)
    within_budget(ie.Run(x), ref)
    np.testing.assert_allclose(ie.Run_th(x), ref, rtol=1e-3, atol=1e-4)
    ie.Free()


@pytest.mark.parametrize("kind,node", [("lrn", r"node 'lrn' \(LRN\)"), ("softmax", r"node 'chan_softmax' \(Softmax\)"),
                                       ("transpose", r"node 'swap_hw' \(Transpose\)")])
def test_middle_without_the_flag_names_node_op_and_flag(kind, node):
    with pytest.raises(CompileError, match=node + r".*DLA layers follow it \(node 'conv2' \(Conv\)\).*"
                                                  r"SetFlag\('heterogeneous', 1\)"):
        microndla.MDLA().Compile(with_middle(kind))


def test_an_op_neither_the_dla_nor_the_host_runs_is_named():
    m = small_cnn(seed=0)
    m.graph.input[0].name = "raw"
    m.graph.node.insert(0, helper.make_node("Mystery", ["raw"], ["input"], name="weird", domain="com.example"))
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(CompileError, match=r"node 'weird' \(com.example.Mystery\) runs neither on the DLA nor on the host"):
        microndla.MDLA().Compile(m)


def test_head_middle_and_tail_together_with_batching_and_streaming():
    """All three host positions in one model, on 2 cards x 2 clusters x 2 images, through Run and
    PutInput/GetResult; the modelled time is the sum of the two DLA stages' cycles."""
    m = with_tail(small_cnn(seed=4))
    g = m.graph
    g.input[0].name = "image"
    g.node.insert(0, helper.make_node("Abs", ["image"], ["input"], name="magnitude"))   # no DLA op: head
    for n in g.node:
        if n.name == "conv2":
            n.input[0] = "mid"
    g.node.insert(5, helper.make_node("LRN", ["pool1_out"], ["mid"], name="lrn", size=3, alpha=1e-3, beta=0.75))
    _check(m)
    ie = microndla.MDLA()
    ie.SetFlag({"heterogeneous": 1, "nfpgas": 2, "nclusters": 2, "imgs_per_cluster": 2})
    ie.Compile(m)
    c = ie._compiled
    assert [s.position if isinstance(s, HostStage) else "dla" for s in c.stages] == \
        ["head", "dla", "middle", "dla", "tail"]
    assert ie.GetInfo("batch") == 8
    x = images(m, 8, seed=3)
    ref = reference(m, x)
    y = ie.Run(x)
    within_budget(y, ref)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    # hwcycles: each DLA stage's cycles on its own (the functional model's cycles do not depend on the data)
    cycles = 0
    for seg in c.segments:
        mem, _ = seg.seeded_image()
        stats = get_executor("functional").run(seg.cfg, mem, seg.program_addresses())
        cycles += max(cs.cycles for cs in stats.clusters.values())
    assert ie.GetInfo("hwcycles") == cycles
    x2 = images(m, 8, seed=5)
    assert ie.PutInput(x, "first") and ie.PutInput(x2, "second")
    r1, u1 = ie.GetResult()
    r2, u2 = ie.GetResult()
    assert (u1, u2) == ("first", "second") and np.array_equal(r1, y)
    within_budget(r2, reference(m, x2))
    assert ie.GetInfo("hwcycles") == cycles
    ie.Free()


def test_bin_round_trip_of_a_staged_model(tmp_path):
    m = with_tail(with_middle("softmax", seed=5))
    out = str(tmp_path / "hetero.bin")
    a = microndla.MDLA()
    a.SetFlag({"heterogeneous": 1, "nclusters": 2})
    a.Compile(m, outfile=out)
    data = open(out, "rb").read()
    c = binfile.from_bytes(data)
    assert isinstance(c, Staged) and binfile.to_bytes(c) == data
    b = microndla.MDLA()
    b.SetFlag("heterogeneous", 1)
    b.Compile(m)            # on cluster 0 only: a second compilation for the comparison below
    a.Init(out)
    x = images(m, 2, seed=1)
    y = a.Run(x)
    within_budget(y, reference(m, x))
    assert np.array_equal(y[:1], b.Run(x[:1]))
    assert a.GetInfo("outnames") == "output" and a.GetInfo("outshapes") == "1x10"
    assert np.allclose(a.Run_th(x), reference(m, x), rtol=1e-3, atol=1e-5)
    a.Free()
    b.Free()


def test_version_1_files_stay_readable_and_other_versions_are_refused(tmp_path):
    m = small_cnn(seed=0)
    c = microndla.MDLA()
    out = str(tmp_path / "plain.bin")
    c.Compile(m, outfile=out)
    data = bytearray(open(out, "rb").read())
    assert int.from_bytes(data[8:12], "little") == binfile.VERSION == 2
    data[8:12] = (1).to_bytes(4, "little")      # a plain model's sections are the same in version 1
    assert isinstance(binfile.from_bytes(bytes(data)), Compiled)
    data[8:12] = (3).to_bytes(4, "little")
    with pytest.raises(binfile.BinFormatError, match="version 3 is not supported"):
        binfile.from_bytes(bytes(data))


def test_models_without_head_or_middle_compile_as_before():
    """Pure DLA models and a host tail keep the single-program form (a Compiled)."""
    ie = microndla.MDLA()
    ie.Compile(small_cnn(seed=0))
    assert isinstance(ie._compiled, Compiled)
    ie.Compile(with_tail(small_cnn(seed=0)))
    assert isinstance(ie._compiled, Compiled) and ie._compiled.host is not None
    ie.Free()


@pytest.mark.parametrize("size", [3, 5])
def test_host_lrn_follows_the_specification(size):
    """onnx.reference's LRN windows over the batch index; the host's evaluator uses the spec's
    channel window, as onnxruntime does."""
    from compiler.hostops import host_evaluator
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=1e-2, beta=0.75, bias=1.5)
    vi = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 6, 4, 4]) for n in "xy"]
    m = helper.make_model(helper.make_graph([node], "lrn", vi[:1], vi[1:]), opset_imports=[helper.make_opsetid("", 13)],
                          ir_version=8)
    x = np.random.default_rng(0).random((1, 6, 4, 4), dtype=np.float32) * 3
    got = host_evaluator(m).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, reference(m, x), rtol=1e-6, atol=1e-6)


def test_gate_from_the_host_multiplies_on_the_dla():
    """x * softmax(x) over channels (an attention-like gate): the Softmax runs on the host (with the
    flag; without it the error names it), the element-wise product on the DLA, as a channel-wise
    layer reading x and multiplying by the host's gate in its output stage."""
    m = small_cnn(seed=6)
    for n in m.graph.node:
        if n.name == "conv2":
            n.input[0] = "gated"
    m.graph.node.insert(4, helper.make_node("Softmax", ["pool1_out"], ["gate"], name="gate", axis=1))
    m.graph.node.insert(5, helper.make_node("Mul", ["pool1_out", "gate"], ["gated"], name="apply_gate"))
    _check(m)
    with pytest.raises(CompileError, match=r"node 'gate' \(Softmax\).*heterogeneous"):
        microndla.MDLA().Compile(m)
    ie = microndla.MDLA()
    ie.SetFlag("heterogeneous", 1)
    ie.Compile(m)
    assert ie._compiled.stages[1].nodes == ["node 'gate' (Softmax)"]
    gated = [L for L in ie._compiled.stages[2].graph.layers if L.nodes == ["apply_gate"]]
    assert len(gated) == 1 and gated[0].kind == "channelwise" and gated[0].res_op == "mul"
    x = images(m, 1, seed=2)
    within_budget(ie.Run(x), reference(m, x))
    ie.Free()


def test_two_inputs_one_through_the_host():
    """A second input normalised on the host joins the DLA as a residual."""
    m = small_cnn(seed=7)
    g = m.graph
    g.input.append(helper.make_tensor_value_info("bias_map", onnx.TensorProto.FLOAT, [1, 16, 32, 32]))
    g.node.insert(0, helper.make_node("Erf", ["bias_map"], ["squashed"], name="squash"))
    for n in g.node:
        if n.name == "relu1":
            n.input[0] = "with_res"
    g.node.insert(3, helper.make_node("Add", ["bn1_out", "squashed"], ["with_res"], name="residual"))
    _check(m)
    ie = microndla.MDLA()
    ie.Compile(m)
    assert ie._compiled.stages[0].position == "head" and ie.GetInfo("innames") == "input;bias_map"
    rng = np.random.default_rng(3)
    x, b = rng.random((1, 3, 32, 32), dtype=np.float32), rng.standard_normal((1, 16, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    within_budget(ie.Run([x, b]), sess.run(None, {"input": x, "bias_map": b})[0])
    ie.Free()


def test_each_dla_stage_is_bit_exact_with_the_golden_reference():
    """After a run, every DLA stage's inputs and outputs are in its part of the card memory: the
    golden reference on the stage's graph, from those inputs, gives the outputs bit for bit."""
    from sim.golden import run_quantized
    m = with_tail(with_middle("lrn", seed=8))
    ie = microndla.MDLA()
    ie.SetFlag("heterogeneous", 1)
    ie.Compile(m)
    ie.Run(images(m, 1, seed=4))
    mem, lanes = ie._cards[0].memory, ie._compiled.cfg.lanes
    for seg in ie._compiled.segments:
        mm = seg.memmap
        feeds = {i.tensor: mm.tensors[i.tensor].read(mem, mm.tensor_addr(i.tensor), lanes) for i in seg.inputs}
        gold, _ = run_quantized(seg.graph, feeds)
        for o in seg.outputs:
            assert np.array_equal(mm.tensors[o.tensor].read(mem, mm.tensor_addr(o.tensor), lanes), gold[o.tensor])
    ie.Free()


def test_staged_model_linked_with_a_whole_dla_model(tmp_path):
    """A staged model placed after a whole-DLA model on other clusters of the same card: both
    resident, both stream; the staged one runs on its own."""
    plain, staged = small_cnn(seed=9), with_middle("softmax", seed=10)
    a, b = microndla.MDLA(), microndla.MDLA()
    a.Compile(plain)
    b.SetFlag({"heterogeneous": 1, "firstcluster": 1})
    b.Compile(staged, MDLA=a)
    assert b._cards == a._cards and b._compiled.memmap.base >= a._compiled.memmap.end
    x = images(plain, 1, seed=6)
    a.PutInput(x, "a")
    b.PutInput(x, "b")
    (ya, ua), (yb, ub) = a.GetResult(), b.GetResult()
    assert (ua, ub) == ("a", "b")
    within_budget(ya, reference(plain, x))
    within_budget(yb, reference(staged, x))
    a.Free()
    b.Free()
