"""Models too large for the card, refused at Compile with a clear error, and refused before their
weights are read into memory (bounded memory: nothing here allocates more than a few MB)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import microndla
from compiler.ir import CompileError
from zoo import kernels


def conv_graph(weight: onnx.TensorProto, cin: int, cout: int, extra_nodes=(), extra_inits=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 4, 4])
    nodes = list(extra_nodes) + [helper.make_node("Conv", ["x", weight.name], ["y"], name="giant_conv")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [weight, *extra_inits]),
                             opset_imports=[helper.make_opsetid("", 13)])


def external_weight(name: str, dims, location: str) -> onnx.TensorProto:
    """An initializer whose data is declared to live in an external file (nothing is allocated)."""
    t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(dims))))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def test_huge_external_weights_refused_before_loading(tmp_path):
    # 200000 x 100000 x 1 x 1 floats = 80 GB; the external file does not even exist, so any attempt
    # to read it would fail with a different error
    model = conv_graph(external_weight("w", [200000, 100000, 1, 1], "w.bin"), 100000, 200000)
    path = tmp_path / "huge.onnx"
    onnx.save(model, str(path))
    assert path.stat().st_size < 10000
    with pytest.raises(CompileError, match=r"huge.onnx: the model's weights need 40000000000 bytes.*more than the "
                                           r"4294967296 bytes of card memory.*'w' \[200000, 100000, 1, 1\] read by "
                                           r"node 'giant_conv' \(Conv\).*refused before its weights were loaded"):
        microndla.MDLA().Compile(str(path))


def test_small_config_refuses_what_the_reference_takes(tmp_path):
    # 3000 x 3000 x 2 x 2 weights = 72 MB as int16: more than the small configuration's 64 MiB
    model = conv_graph(external_weight("w", [3000, 3000, 2, 2], "w.bin"), 3000, 3000)
    path = tmp_path / "big.onnx"
    onnx.save(model, str(path))
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    with pytest.raises(CompileError, match=r"72000000 bytes.*67108864 bytes of card memory"):
        ie.Compile(str(path))
    # on the reference configuration the check passes and the (missing) external file is reported
    with pytest.raises(CompileError, match=r"cannot load the external data"):
        microndla.MDLA().Compile(str(path))


def test_external_data_is_loaded_after_the_check(tmp_path):
    model = kernels.conv_model(4, 8, 6, 6, 3, 1, 1, seed=0)
    path = tmp_path / "ext.onnx"
    onnx.save(kernels.conv_model(4, 8, 6, 6, 3, 1, 1, seed=0), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.bin", size_threshold=0)
    assert (tmp_path / "ext.bin").exists()
    x = np.random.default_rng(0).random((1, 4, 6, 6), dtype=np.float32)
    a, b = microndla.MDLA(), microndla.MDLA()
    a.Compile(str(path))
    b.Compile(model)
    assert np.array_equal(a.Run(x), b.Run(x))


def test_huge_constant_node_refused_before_folding():
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [100000, 100000, 1, 1])
    fill = helper.make_node("ConstantOfShape", ["shape"], ["w"], name="make_giant",
                            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100000, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 100000, 4, 4])
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="giant_conv")
    model = helper.make_model(helper.make_graph([fill, conv], "g", [x], [y], [shape]),
                              opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(CompileError, match=r"node 'make_giant' \(ConstantOfShape\).*\[100000, 100000, 1, 1\].*"
                                           r"20000000000 bytes"):
        microndla.MDLA().Compile(model)


def test_activations_that_do_not_fit_refused_before_code_generation():
    # a 1 x 8 x 2048 x 2048 input and output: 2 x 64 MiB of activations on the 64 MiB small card
    model = kernels.conv_model(8, 8, 2048, 2048, 1, 1, 0, seed=0)
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    with pytest.raises(CompileError, match=r"activations need 1 x \d+ bytes of card memory.*'small' configuration "
                                           r"has 67108864"):
        ie.Compile(model)


def test_layer_that_cannot_be_tiled_names_it():
    # a 20x20 pooling window: one output pixel's window exceeds half the small maps buffer (128 words)
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    with pytest.raises(CompileError, match=r"layer 'pool': one output pixel does not fit the buffers"):
        ie.Compile(kernels.maxpool_model(16, 24, 24, 20, 1, 0))


def test_file_beyond_the_protobuf_limit_refused_unread(tmp_path):
    path = tmp_path / "giant.onnx"
    with open(path, "wb") as f:
        f.truncate(2 ** 31 + 10)           # a sparse file: no disk space, and it must never be read
    with pytest.raises(CompileError, match=r"giant.onnx is 2147483658 bytes, more than the 2 GiB.*external data"):
        microndla.MDLA().Compile(str(path))
