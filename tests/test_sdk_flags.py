"""The SDK flags and debug letters with their meaning on the simulated DLA: nlayers/lremove cut the
graph, breaklayer, dumpdir, no_rearrange/no_inarrange (raw int16 and the DLA layout), seed, and
every debug letter printing what it names (runtime/debug.py, runtime/io_formats.py)."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper

import microndla
from arch.numerics import float_to_fixed
from compiler.ir import CompileError
from runtime.flags import DEBUG_LETTERS
from runtime.io_formats import random_inputs
from tests.test_host_fallback import with_tail
from zoo import small_cnn


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)


def _ie(small_cnn_onnx, **flags):
    ie = microndla.MDLA()
    ie.SetFlag({"bitfile": "small", **flags})
    ie.Compile(small_cnn_onnx)
    return ie


@pytest.fixture(scope="module")
def layers(small_cnn_onnx, x):
    """Every layer's output of the whole model (breaklayer=1) and its output."""
    ie = _ie(small_cnn_onnx, breaklayer=1)
    every = ie.Run(x)
    full = _ie(small_cnn_onnx).Run(x)
    return every, full


def test_breaklayer_1_returns_every_layer_from_card_memory(layers):
    every, full = layers
    assert [a.shape for a in every] == [(1, 16, 32, 32), (1, 16, 16, 16), (1, 24, 8, 8), (1, 24, 4, 4), (1, 10, 1, 1)]
    assert np.array_equal(every[-1].reshape(full.shape), full)
    assert np.all(every[0] >= 0) and every[0].max() > 0          # conv1's fused ReLU


def test_nlayers_compiles_a_prefix_whose_output_is_that_layers(small_cnn_onnx, x, layers):
    ie = _ie(small_cnn_onnx, nlayers=3)                   # conv1, bn1, relu1: layer conv1 of the whole model
    assert ie.GetInfo("outshapes") == "1x16x32x32" and ie.GetInfo("nlayers") == 3
    assert np.array_equal(ie.Run(x), layers[0][0])


def test_lremove_compiles_a_suffix_fed_with_the_cut_tensor(small_cnn_onnx, layers):
    every, full = layers
    ie = _ie(small_cnn_onnx, lremove=3)                   # starts at pool1, reading relu1's output
    assert ie.GetInfo("inshapes") == "1x16x32x32" and ie.GetInfo("lremove") == 3
    assert np.array_equal(ie.Run(every[0]), full)


def test_nlayers_and_lremove_out_of_range_are_refused(small_cnn_onnx):
    for flags, match in (({"lremove": 99}, "nothing would be left"), ({"nlayers": 0}, "nlayers=0")):
        ie = microndla.MDLA()
        ie.SetFlag(flags)
        with pytest.raises(CompileError, match=match):
            ie.Compile(small_cnn_onnx)


def test_breaklayer_2_prints_every_layers_cycles(small_cnn_onnx, x, capsys):
    ie = _ie(small_cnn_onnx, breaklayer=2)
    ie.Run(x)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("layer ")]
    assert [l.split()[1] for l in lines] == ["conv1", "pool1", "conv2", "pool2", "fc"]
    ends = [int(l.split("cycles ")[1].split(" ")[0].split("..")[1]) for l in lines]
    assert ends == sorted(ends) and ends[-1] <= ie.GetInfo("hwcycles")


def test_no_rearrange_raw_int16_and_dla_layout(small_cnn_onnx, x, layers):
    full = layers[1]
    raw = _ie(small_cnn_onnx, no_rearrange=2).Run(x)
    assert raw.dtype == np.int16 and raw.shape == full.shape
    assert np.array_equal(raw, np.rint(full * 256).astype(np.int16))     # Q8.8 output
    lay = _ie(small_cnn_onnx, no_rearrange=1).Run(x)
    assert lay.dtype == np.float32 and lay.shape == (1, 1, 1, 12)         # 10 channels padded to 3 words of 4
    assert np.array_equal(lay[0, 0, 0, :10], full[0]) and not lay[0, 0, 0, 10:].any()


def test_no_inarrange_2_takes_raw_int16(small_cnn_onnx, x, layers):
    ie = _ie(small_cnn_onnx, no_inarrange=2)
    frac = int(ie.GetInfo("infracs"))
    q, _ = float_to_fixed(x, frac)
    assert np.array_equal(ie.Run(q.astype(np.int16)), layers[1])
    with pytest.raises(TypeError, match="raw int16"):
        ie.Run(x)


def test_io_flags_refused_with_host_stages(tmp_path, x):
    p = tmp_path / "tail.onnx"
    onnx.save(with_tail(small_cnn(seed=2), helper.make_node("Softmax", ["logits"], ["output"], axis=1)), str(p))
    for flags, match in (({"no_rearrange": 2}, "host"), ({"breaklayer": 1}, "host"), ({"no_inarrange": 2}, "host")):
        ie = _ie(str(p), **flags)
        with pytest.raises(microndla.MDLAError, match=match):
            ie.Run(x)


def test_dumpdir_writes_every_write_to_card_memory(small_cnn_onnx, x, tmp_path):
    ie = _ie(small_cnn_onnx, dumpdir=str(tmp_path))
    ie.Run(x)
    ie.Run(x)
    index = (tmp_path / "writes.txt").read_text().splitlines()
    assert len(index) == 3 and "program image at load" in index[0] and "input input of image 0" in index[2]
    c = ie._compiled
    image = np.fromfile(tmp_path / index[0].split()[0], dtype=np.uint8)
    assert np.array_equal(image, c.memory_image())
    lay = c.memmap.tensors[c.inputs[0].tensor]
    written = np.fromfile(tmp_path / index[1].split()[0], dtype=np.uint8)
    q, _ = float_to_fixed(x[0], lay.frac)
    assert np.array_equal(lay.read(written, 0, c.cfg.lanes), q)


def test_seed_flag_seeds_the_runtimes_random_inputs(small_cnn_onnx):
    ie = _ie(small_cnn_onnx, seed=7)
    a = random_inputs(ie)
    assert np.array_equal(a, np.random.default_rng(7).random((1, 3, 32, 32), dtype=np.float32))
    ie.SetFlag("seed", 8)
    assert not np.array_equal(random_inputs(ie), a)


def test_profile_uses_the_seed_flag(small_cnn_onnx, monkeypatch):
    from runtime import profile
    seen = []
    ie = _ie(small_cnn_onnx, seed=5)
    orig = ie._run_call
    monkeypatch.setattr(ie, "_run_call", lambda images, **kw: (seen.append(images), orig(images, **kw))[1])
    profile.profile(ie)
    assert np.array_equal(seen[0], np.random.default_rng(5).random((1, 3, 32, 32), dtype=np.float32))


@pytest.mark.parametrize("letter,expect", [
    ("c", "tensor relu1_out: 0x"), ("C", "cluster 0: 546 instructions"), ("s", "layer conv2 (conv): mode"),
    ("p", "Conv conv1: conv1, bn1, relu1"), ("a", "LOAD  0x0000f000"), ("I", "shift="),
])
def test_load_time_debug_letters(small_cnn_onnx, letter, expect, capsys):
    _ie(small_cnn_onnx, debug=letter)
    assert expect in capsys.readouterr().out


@pytest.mark.parametrize("letter,expect", [
    ("S", "busy: load"), ("d", "token_wait="), ("t", "dispatch 0 start 1"), ("T", "LOAD buf=MAPS"),
    ("o", "Run_th image 0 Conv conv1"),
])
def test_run_time_debug_letters(small_cnn_onnx, x, letter, expect, capsys):
    ie = _ie(small_cnn_onnx, debug=letter)
    ie.Run(x)
    ie.Run_th(x)
    out = capsys.readouterr().out
    assert expect in out
    if letter == "t":
        assert "LOAD buf=" not in out and len([l for l in out.splitlines() if " dispatch " in l]) == 546


def test_debug_r_R_with_comparesw(small_cnn_onnx, x, capsys):
    ie = _ie(small_cnn_onnx, debug="R", comparesw=1)
    ie.Run(x)
    out = capsys.readouterr().out
    assert "0 of 10 values differ" in out and out.count(" dla ") == 10
    ie = _ie(small_cnn_onnx, debug="r")
    ie.Run(x)
    assert "need comparesw=1" in capsys.readouterr().err


def test_debug_J_writes_partition_json(small_cnn_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _ie(small_cnn_onnx, debug="J")
    doc = json.loads((tmp_path / "partition.json").read_text())
    assert [l["name"] for l in doc["stages"][0]["layers"]] == ["conv1", "pool1", "conv2", "pool2", "fc"]


def test_every_debug_letter_is_accepted():
    ie = microndla.MDLA()
    ie.SetFlag("debug", "".join(DEBUG_LETTERS))
    assert ie.GetInfo("debug") == "".join(DEBUG_LETTERS)


def test_io_flags_and_dumpdir_refused_for_a_staged_model(x, tmp_path):
    from tests.test_heterogeneous import with_middle
    m = with_middle("lrn")
    for flags, match in (({"dumpdir": str(tmp_path)}, "dumpdir"), ({"no_rearrange": 1}, "host"),
                         ({"breaklayer": 1}, "host")):
        ie = microndla.MDLA()
        ie.SetFlag({"heterogeneous": 1, **flags})
        ie.Compile(m)
        with pytest.raises(microndla.MDLAError, match=match):
            ie.Run(x)
        ie.Free()


def test_raw_outputs_and_debug_letters_through_putinput_getresult(small_cnn_onnx, x, layers, capsys):
    ie = _ie(small_cnn_onnx, no_rearrange=2, debug="S")
    ie.PutInput(x, "a")
    raw, obj = ie.GetResult()
    assert obj == "a" and raw.dtype == np.int16 and np.array_equal(raw, np.rint(layers[1] * 256).astype(np.int16))
    assert "busy: load" in capsys.readouterr().out


def _as_described(ie, y):
    """Run's arrays against what GetInfo says Run returns (the SDK's wrapper shapes its result arrays
    from noutputs/noutdims/outshapes)."""
    arrays = y if isinstance(y, list) else [y]
    shapes = [tuple(int(d) for d in s.split("x")) for s in ie.GetInfo("outshapes").split(";")]
    batch = ie.GetInfo("batch")
    if ie._compiled.meta.get("unbatched"):
        assert [a.shape for a in arrays] == shapes          # vectors: no batch axis
    else:                                                   # per image: a call returns 'batch' of them
        assert [a.shape for a in arrays] == [(batch * s[0],) + s[1:] for s in shapes]
    assert ie.GetInfo("noutputs") == len(arrays)
    assert ie.GetInfo("noutdims") == ";".join(str(a.ndim) for a in arrays)
    assert ie.GetInfo("outdtypes") == ";".join(str(a.dtype) for a in arrays)
    assert len(ie.GetInfo("outnames").split(";")) == len(arrays)
    w, h, p, n = ie.GetInfo("outshape")
    assert w * h * p * n == arrays[0].size and n == batch


@pytest.mark.parametrize("flags", [{}, {"no_rearrange": 1}, {"no_rearrange": 2}, {"breaklayer": 1},
                                   {"nfpgas": 2}, {"nclusters": 2, "imgs_per_cluster": 2, "no_rearrange": 1}])
def test_output_info_describes_what_run_returns(small_cnn_onnx, flags):
    ie = _ie(small_cnn_onnx, **flags)
    b = ie.GetInfo("batch")
    _as_described(ie, ie.Run(np.random.default_rng(2).random((b, 3, 32, 32), dtype=np.float32)))
    ie.Free()


def test_output_info_follows_run_flags_set_after_compile(small_cnn_onnx, x):
    ie = _ie(small_cnn_onnx)
    assert ie.GetInfo("outshapes") == "1x10"
    ie.SetFlag("no_rearrange", 1)                # a run flag: the next Run and GetInfo follow it
    assert ie.GetInfo("outshapes") == "1x1x1x12" and ie.GetInfo("outshape") == (1, 1, 12, 1)
    _as_described(ie, ie.Run(x))
    ie.SetFlag("no_rearrange", 2)
    assert ie.GetInfo("outdtypes") == "int16"
    _as_described(ie, ie.Run(x))
    ie.Free()


def test_output_info_of_a_model_on_unbatched_vectors():
    from tests.test_lift1d import _vector_net
    ie = microndla.MDLA()
    ie.Compile(_vector_net())
    v = np.ones(24, np.float32)
    _as_described(ie, ie.Run([v, v]))
    assert ie.GetInfo("outshapes") == "24"
    ie.Free()
