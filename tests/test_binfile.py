"""The .bin container: round trip through Compile(outfile)/Init, and clear errors on bad files."""
import numpy as np
import pytest

import microndla
from compiler import binfile


@pytest.fixture(scope="module")
def bin_path(small_cnn_onnx, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("b") / "small_cnn.bin")
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    names = ie.Compile(small_cnn_onnx, outfile=out)
    assert names == ["logits"] or len(names) == 1
    return out


def test_compile_outfile_then_init_gives_the_same_results(small_cnn_onnx, bin_path):
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    direct = microndla.MDLA()
    direct.SetFlag("bitfile", "small")
    direct.Compile(small_cnn_onnx)
    y1 = direct.Run(x)
    loaded = microndla.MDLA()
    loaded.Init(bin_path)
    y2 = loaded.Run(x)
    assert np.array_equal(y1, y2)
    assert loaded.GetInfo("hwcycles") == direct.GetInfo("hwcycles")
    assert loaded.GetInfo("outshapes") == direct.GetInfo("outshapes")
    assert np.allclose(loaded.Run_th(x), direct.Run_th(x))


def test_compile_with_outfile_does_not_load(small_cnn_onnx, tmp_path):
    ie = microndla.MDLA()
    ie.Compile(small_cnn_onnx, outfile=str(tmp_path / "a.bin"))
    with pytest.raises(microndla.MDLAError, match="call Compile"):
        ie.Run(np.zeros((1, 3, 32, 32), np.float32))


def test_round_trip_preserves_everything(bin_path):
    data = open(bin_path, "rb").read()
    c = binfile.from_bytes(data)
    assert binfile.to_bytes(c) == data


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "version", "empty"])
def test_bad_files_are_rejected_clearly(bin_path, tmp_path, damage):
    data = bytearray(open(bin_path, "rb").read())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
        match = "checksum mismatch"
    elif damage == "truncate":
        data = data[: len(data) - 100]
        match = "checksum mismatch|truncated"
    elif damage == "magic":
        data[:8] = b"NOTABIN\0"
        match = "bad magic"
    elif damage == "version":
        data[8] = 99
        match = "version 99 is not supported"
    else:
        data = b""
        match = "truncated"
    p = tmp_path / "bad.bin"
    p.write_bytes(bytes(data))
    with pytest.raises(binfile.BinFormatError, match=match):
        microndla.MDLA().Init(str(p))


def test_missing_bin(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.bin"):
        microndla.MDLA().Init(str(tmp_path / "nothere.bin"))
