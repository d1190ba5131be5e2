"""Every user-facing entry point answers bad input with a clear exception naming what is wrong."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import microndla
from compiler.ir import CompileError


def test_unknown_flag_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown flag 'nclusterz'.*known flags: .*nclusters"):
        microndla.MDLA().SetFlag("nclusterz", 2)


@pytest.mark.parametrize("name,value,match", [
    ("nclusters", "two", "expects an integer"),
    ("nclusters", 0, "expects an integer in 1"),
    ("blockingmode", "maybe", "expects 0 or 1"),
    ("debug", "bz", "unknown debug letter"),
    ("bitfile", "nosuchconfig", "unknown hardware configuration"),
    ("simulator", "spice", "unknown simulator 'spice'; available"),
])
def test_bad_flag_values(name, value, match):
    with pytest.raises(ValueError, match=match):
        microndla.MDLA().SetFlag(name, value)


def test_dict_and_str_coercion():
    ie = microndla.MDLA()
    ie.SetFlag({"nclusters": 1, "blockingmode": True, "debug": ""})
    assert ie.GetInfo("blockingmode") == 1
    ie.SetFlag("nobatch", "0")
    assert ie.GetInfo("clustersbatchmode") == 0


def test_unknown_info_name():
    with pytest.raises(ValueError, match="unknown info name 'hwtimes'"):
        microndla.MDLA().GetInfo("hwtimes")


def test_run_before_compile():
    with pytest.raises(microndla.MDLAError, match="call Compile"):
        microndla.MDLA().Run(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(microndla.MDLAError, match="call Compile"):
        microndla.MDLA().GetInfo("outshapes")


@pytest.mark.parametrize("shape", [(1, 3, 32, 31), (3, 32), (1, 4, 32, 32), (2, 3, 32, 32)])
def test_wrong_input_shape(small_cnn_onnx, shape):
    ie = microndla.MDLA()
    ie.Compile(small_cnn_onnx)
    with pytest.raises(ValueError, match=r"shape|batch"):
        ie.Run(np.zeros(shape, np.float32))


def test_wrong_dtype_and_nan(small_cnn_onnx):
    ie = microndla.MDLA()
    ie.Compile(small_cnn_onnx)
    with pytest.raises(TypeError, match="dtype"):
        ie.Run(np.zeros((1, 3, 32, 32), np.complex64))
    with pytest.raises(TypeError, match="dtype"):
        ie.Run(np.array([["a"]]))
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ie.Run(x)
    with pytest.raises(ValueError, match="1 input"):
        ie.Run([x, x])


def test_missing_and_non_onnx_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        microndla.MDLA().Compile(str(tmp_path / "missing.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    with pytest.raises(CompileError, match="not an ONNX model"):
        microndla.MDLA().Compile(str(junk))


def test_unsupported_op_names_node_and_op(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], np.eye(4, dtype=np.float32).ravel())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv0"),
             helper.make_node("Softsign", ["c"], ["s"], name="weird_node"),
             helper.make_node("Conv", ["s", "w"], ["y"], name="conv1")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 13)])
    p = tmp_path / "unsupported.onnx"
    onnx.save(m, str(p))
    with pytest.raises(CompileError, match=r"weird_node.*Softsign|Softsign.*weird_node"):
        microndla.MDLA().Compile(str(p))


def test_modes_of_later_issues_fail_clearly(small_cnn_onnx):
    ie = microndla.MDLA()
    ie.SetFlag({"nclusters": 2, "clustersbatchmode": 1, "imgs_per_cluster": 4, "mvbatch": 1})
    with pytest.raises(microndla.MDLAError, match="cannot be combined"):
        ie.Compile(small_cnn_onnx)
    with pytest.raises(CompileError, match=r"samples\[0\] for input 'input' must have shape .* got \(1, 3, 32, 31\)"):
        microndla.MDLA().Compile(small_cnn_onnx, samples=[np.zeros((1, 3, 32, 31), np.float32)])


@pytest.mark.parametrize("flags,match", [
    ({"nclusters": 5}, r"clusters 0..4 requested.*4 clusters per card"),
    ({"nclusters": 2, "firstcluster": 3}, r"clusters 3..4 requested"),
    ({"nfpgas": 9}, r"nfpgas=9 but the simulated system has 4 cards"),
    ({"imgs_per_cluster": 6, "mvbatch": 1}, r"mvbatch needs imgs_per_cluster to be a multiple of 4"),
])
def test_bad_parallel_flags(small_cnn_onnx, flags, match):
    ie = microndla.MDLA()
    ie.SetFlag(flags)
    with pytest.raises(microndla.MDLAError, match=match):
        ie.Compile(small_cnn_onnx)


def test_wrong_batch_for_the_parallel_layout(small_cnn_onnx):
    ie = microndla.MDLA()
    ie.SetFlag({"nclusters": 2, "imgs_per_cluster": 2})
    ie.Compile(small_cnn_onnx)
    with pytest.raises(ValueError, match=r"batch of 3 image\(s\); this compilation takes 4 per call"):
        ie.Run(np.zeros((3, 3, 32, 32), np.float32))
