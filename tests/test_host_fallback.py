"""Operators after the last DLA layer (Softmax and the like, as exporters put them at the end of
classifiers) run on the host, as the SDK did; in the middle of the network they are refused with
an error naming the node. Budget against onnxruntime: mean <= 1 %, max <= 5 % (SDK metric)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import microndla
from arch.numerics import sdk_error_metric
from compiler.ir import CompileError
from zoo import small_cnn


def with_tail(model: onnx.ModelProto, *nodes, out_shape=(1, 10)) -> onnx.ModelProto:
    """small_cnn with extra nodes after its output 'output'."""
    g = model.graph
    g.output[0].name = "logits"
    for n in g.node:
        n.output[:] = ["logits" if o == "output" else o for o in n.output]
    g.node.extend(nodes)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, list(out_shape)))
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def softmax_model(tmp_path):
    p = tmp_path / "cnn_softmax.onnx"
    onnx.save(with_tail(small_cnn(seed=2), helper.make_node("Softmax", ["logits"], ["output"], name="prob", axis=1)),
              str(p))
    return str(p)


def test_softmax_after_the_dla_runs_on_the_host(softmax_model, tmp_path):
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    sess = ort.InferenceSession(softmax_model, providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"input": im[None]})[0] for im in x])
    ie = microndla.MDLA()
    ie.SetFlag("nclusters", 2)
    assert ie.Compile(softmax_model) == ["output"]
    assert ie.GetInfo("outnames") == "output" and ie.GetInfo("outshapes") == "1x10"
    y = ie.Run(x)
    assert y.shape == (2, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    mean, mx = sdk_error_metric(y, ref)
    assert mean <= 1.0 and mx <= 5.0
    np.testing.assert_allclose(ie.Run_th(x), ref, rtol=1e-4, atol=1e-6)
    # the host part travels in the .bin
    ie2 = microndla.MDLA()
    ie2.SetFlag("nclusters", 2)
    ie2.Compile(softmax_model, outfile=str(tmp_path / "m.bin"))
    ie2.Init(str(tmp_path / "m.bin"))
    assert np.array_equal(ie2.Run(x), y)
    ie.Free()
    ie2.Free()


def test_op_in_the_middle_is_refused_naming_it(tmp_path):
    m = small_cnn(seed=0)
    for n in m.graph.node:                       # put an Erf between the second pool and the flatten
        if n.name == "flatten":
            n.input[0] = "sig_out"
    m.graph.node.append(helper.make_node("Erf", ["pool2_out"], ["sig_out"], name="squash"))
    p = tmp_path / "middle.onnx"
    onnx.save(m, str(p))
    with pytest.raises(CompileError, match=r"node 'squash' \(Erf\) is not supported on the DLA, and DLA layers "
                                           r"follow it \(node 'fc' \(Gemm\)\).*heterogeneous"):
        microndla.MDLA().Compile(str(p))
