"""Data-set inference (runtime/infer.py, `mdla infer`): the outputs are exactly those of Run on each
chunk, the last chunk's filling changes nothing, every kind of input gives the same outputs, the
score against onnxruntime float32 is within the SDK budget for Q8.8 (mean < 1 %, max < 5 % of
max |ref| over the data set; top-1 agreement at least 80 % on 12 random images of a 10-class
ResNet-18), and the cards on Ray give the same bits. Ray parts skip without Ray."""
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import microndla
from runtime.cli import main
from runtime.infer import InferError, chunks, infer
from zoo import resnet18

pytestmark = pytest.mark.filterwarnings("ignore::runtime.saturation.SaturationWarning")

MEAN_BUDGET, MAX_BUDGET, TOP1_MIN = 1.0, 5.0, 0.8


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    p = tmp_path_factory.mktemp("infer") / "r18.onnx"
    onnx.save(resnet18(seed=5, input_shape=(1, 3, 32, 32), classes=10), str(p))
    return str(p)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).random((5, 3, 32, 32), dtype=np.float32)


@pytest.fixture(scope="module")
def one_by_one(r18, images):
    """Each image alone through Run on one card, serially."""
    ie = microndla.MDLA()
    ie.SetFlag("workers", "serial")
    ie.Compile(r18)
    y = np.concatenate([ie.Run(x[None]) for x in images])
    ie.Free()
    return y


def test_chunks_fill_the_last():
    got = list(chunks([np.ones((3, 1)), np.ones((4, 1)) * 2], 5))
    assert [(c.shape, n) for c, n in got] == [((5, 1), 5), ((5, 1), 2)]
    assert got[1][0][:2, 0].tolist() == [2, 2] and not got[1][0][2:].any()


def test_array_in_chunks_equals_run_and_scores(r18, images, one_by_one):
    # two cards: chunks of 2 images, the last one filled
    result = infer(r18, images, cards=2, flags={"workers": "serial"}, reference=True, progress=False)
    assert result.images == 5 and result.outputs[0].shape == (5, 10)
    assert np.array_equal(result.outputs[0], one_by_one)
    (s,) = result.scores
    assert s.per_image.shape == (5, 2)
    assert s.mean < MEAN_BUDGET and s.max < MAX_BUDGET and s.top1 >= TOP1_MIN, result.summary()
    assert "top-1 agreement" in result.summary()


def test_every_kind_of_input_gives_the_same_outputs(r18, images, one_by_one, tmp_path):
    np.save(tmp_path / "all.npy", images)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, x in enumerate(images):
        np.save(folder / f"img{i:02d}.npy", x)
    for source in (str(tmp_path / "all.npy"), str(folder), iter(list(images[:2]) + [images[2:]])):
        result = infer(r18, source, flags={"workers": "serial"}, progress=False)
        assert np.array_equal(result.outputs[0], one_by_one), source


def test_png_folder(r18, tmp_path):
    from PIL import Image
    rgb = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for i, im in enumerate(rgb):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    result = infer(r18, str(tmp_path), flags={"workers": "serial"}, progress=False)
    ie = microndla.MDLA()
    ie.Compile(r18)
    expected = np.concatenate([ie.Run((im.astype(np.float32) / 255).transpose(2, 0, 1)[None]) for im in rgb])
    assert np.array_equal(result.outputs[0], expected)


def test_bad_inputs_are_named(r18, tmp_path):
    with pytest.raises(InferError, match=r"image 0: shape \(3, 16, 16\), but the model takes \(3, 32, 32\)"):
        infer(r18, np.zeros((2, 3, 16, 16), np.float32), progress=False)
    with pytest.raises(InferError, match="no .npy or image"):
        infer(r18, str(tmp_path), progress=False)
    with pytest.raises(InferError, match="expects a batch of images"):
        np.save(tmp_path / "flat.npy", np.zeros(5))
        infer(r18, str(tmp_path / "flat.npy"), progress=False)
    microndla.MDLA().Compile(r18, outfile=str(tmp_path / "m.bin"))
    with pytest.raises(InferError, match="needs the ONNX model"):
        infer(str(tmp_path / "m.bin"), np.zeros((1, 3, 32, 32), np.float32), reference=True, progress=False)
    with pytest.raises(InferError, match=r"\.npy \(one output\) or \.npz"):
        infer(r18, np.zeros((1, 3, 32, 32), np.float32), output=str(tmp_path / "o.txt"), progress=False)


def test_cli_progress_score_and_output(r18, images, one_by_one, tmp_path):
    np.save(tmp_path / "imgs.npy", images)
    out = tmp_path / "out.npy"
    r = CliRunner().invoke(main, ["infer", r18, "--input", str(tmp_path / "imgs.npy"), "--output", str(out),
                                  "--reference", "--per-image", "-f", "workers=serial"])
    assert r.exit_code == 0, r.output
    text = r.output + (r.stderr if hasattr(r, "stderr") else "")
    assert "mdla infer: 100%" in text and "5/5" in text                        # the progress bar
    assert "error vs onnxruntime float32: mean" in text and "top-1 agreement" in text
    assert "fc_out image 4: mean" in text or "image 4: mean" in text
    assert np.array_equal(np.load(out), one_by_one)
    r = CliRunner().invoke(main, ["infer", r18, "--input", str(tmp_path / "imgs.npy"), "-f", "bogus"])
    assert r.exit_code != 0 and "expects NAME=VALUE" in r.output


@pytest.fixture(scope="module")
def local_ray():
    import ray      # a dependency of the project: never skipped
    from runtime.ray_cards import _loopback_only
    started = not ray.is_initialized()
    if started:
        undo = _loopback_only(ray)
        ray.init(address="local", num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
        undo()


def test_on_ray_same_bits(local_ray, r18, images, one_by_one):
    result = infer(r18, images, ray=True, cards=2, progress=False)
    assert result.engine.startswith("ray ") and "2 card actor(s)" in result.engine
    assert np.array_equal(result.outputs[0], one_by_one)
    result = infer(r18, images, ray=True, progress=False)          # cards: the cluster's CPUs (2)
    assert np.array_equal(result.outputs[0], one_by_one)
    assert local_ray.is_initialized()                               # the test's connection stays
