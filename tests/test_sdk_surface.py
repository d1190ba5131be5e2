"""The SDK surface: option letters, refused flags (with the reason), compile-time flags refused
after load, GetInfo names reporting what is in effect, simplify, comparesw/runsw, vcd refused
with the functional model, GetInfo('bitfile') after Init of a .bin."""
import contextlib
import io

import numpy as np
import pytest

import microndla
from runtime.flags import FLAGS, OPTION_LETTERS
from runtime.info import INFO


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)


def _small(small_cnn_onnx, **flags):
    ie = microndla.MDLA()
    ie.SetFlag({"bitfile": "small", **flags})
    ie.Compile(small_cnn_onnx)
    return ie


def test_options_letters_set_their_flags():
    ie = microndla.MDLA()
    ie.SetFlag("options", "Cs")
    assert ie.GetInfo("clustersbatchmode") == 1 and ie.GetInfo("comparesw") == 1 and ie.GetInfo("options") == "Cs"
    ie.SetFlag("options", "m")
    assert ie.GetInfo("mvbatch") == 1


@pytest.mark.parametrize("letters,match", [("k", "convalgo.*tiling"), ("p", "dropped by the SDK"), ("#", "unknown letter")])
def test_refused_option_letters_name_why(letters, match):
    ie = microndla.MDLA()
    with pytest.raises(ValueError, match=match):
        ie.SetFlag("options", letters)
    assert ie.GetInfo("convalgo") == 0


def test_every_option_letter_is_accepted_or_refused_with_a_reason():
    for ch in OPTION_LETTERS:
        ie = microndla.MDLA()
        try:
            ie.SetFlag("options", ch)
        except ValueError as e:
            assert "cannot take effect here" in str(e), (ch, e)


@pytest.mark.parametrize("name,value,match", [("int8mode", 1, "16-bit"), ("fpgaid", 510, "simulated"),
                                              ("has_varfp", 0, "always has"), ("runsw", 2, "samples"),
                                              ("gen_loops", 1, "no loop"), ("debug", "#", "unknown debug letter")])
def test_refused_flags_say_why(name, value, match):
    with pytest.raises(ValueError, match=match):
        microndla.MDLA().SetFlag(name, value)


def test_every_flag_default_is_accepted():
    ie = microndla.MDLA()
    for k, spec in FLAGS.items():
        if k != "maxfpga":
            ie.SetFlag(k, spec.default)
        if k not in INFO:                          # (addroff is also an info name)
            assert ie.GetInfo(k) == spec.default


def test_compile_time_flags_after_compile_are_refused_and_getinfo_reports_what_is_in_effect(small_cnn_onnx):
    ie = _small(small_cnn_onnx)
    with pytest.raises(microndla.MDLAError, match="compiled with nfpgas=1"):
        ie.SetFlag("nfpgas", 2)
    with pytest.raises(microndla.MDLAError, match="bitfile='small'"):
        ie.SetFlag("bitfile", "reference")
    ie.SetFlag("nfpgas", 1)                       # the value in effect: accepted
    assert ie.GetInfo("nfpgas") == 1 and ie.GetInfo("bitfile") == "small"
    ie.Free()
    ie.SetFlag("nfpgas", 2)                       # nothing loaded: for the next Compile
    assert ie.GetInfo("nfpgas") == 2


def test_bitfile_after_init_of_a_bin(small_cnn_onnx, tmp_path):
    b = str(tmp_path / "m.bin")
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    ie.Compile(small_cnn_onnx, outfile=b)
    loaded = microndla.MDLA()
    loaded.Init(b)
    assert loaded.GetInfo("bitfile") == "small"
    explicit = microndla.MDLA()
    explicit.SetFlag("bitfile", "reference")
    with pytest.raises(microndla.MDLAError, match="compiled for hardware configuration 'small'"):
        explicit.Init(b)


def test_vcd_with_the_functional_simulator_is_refused(small_cnn_onnx, x, tmp_path):
    ie = _small(small_cnn_onnx)
    ie.SetFlag("vcd", str(tmp_path / "w.vcd"))
    with pytest.raises(microndla.MDLAError, match="writes no waveform"):
        ie.Run(x)


def test_simplify_runs_onnxsim_and_gives_the_same_program_results(small_cnn_onnx, x):
    plain = _small(small_cnn_onnx)
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    ie.Compile(small_cnn_onnx, simplify=True)
    assert np.array_equal(ie.Run(x), plain.Run(x))


def test_comparesw_and_runsw(small_cnn_onnx, x, capsys):
    ie = _small(small_cnn_onnx, comparesw=1)
    y = ie.Run(x)
    assert ie.GetInfo("comparesw_error") == 0.0
    assert "comparesw" in capsys.readouterr().err
    sw = _small(small_cnn_onnx, runsw=1)
    assert np.array_equal(sw.Run(x), y)


def test_varfp_needs_samples(small_cnn_onnx, x):
    ie = microndla.MDLA()
    ie.SetFlag({"bitfile": "small", "options": "V"})
    with pytest.raises(microndla.MDLAError, match="samples"):
        ie.Compile(small_cnn_onnx)
    ie.Compile(small_cnn_onnx, samples=[x])
    assert ie.GetInfo("varfp") == 1


def test_every_info_name_answers_or_says_why(small_cnn_onnx, x):
    ie = _small(small_cnn_onnx)
    ie.Run(x)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for name, spec in INFO.items():
            if spec.refused:
                with pytest.raises(microndla.MDLAError, match="simulated"):
                    ie.GetInfo(name)
            else:
                ie.GetInfo(name)
    text = out.getvalue()
    assert "bitfile = 'small'" in text and "hwdebug" in text and "card 0 cluster 0: cycles=" in text
    assert ie.GetInfo("hwversion").startswith("small-") and ie.GetInfo("busy_comp") == 0


def test_docs_sdk_md_is_generated_from_the_tables():
    from runtime import sdkdoc
    assert sdkdoc.PATH.read_text() == sdkdoc.render(), "run python -m runtime.sdkdoc"


def test_every_method_the_docs_call_available_exists():
    from runtime import sdkdoc
    ie = microndla.MDLA()
    for m, status in sdkdoc.METHODS.items():
        if status.startswith("yes"):
            assert callable(getattr(ie, m)), m
    refused = sdkdoc.refused_methods()
    assert "TrainlinearGetY" in refused and "GetONNX" in refused
    for m, why in refused.items():                # they exist, and say why this build has no such thing
        with pytest.raises(microndla.MDLAError, match=f"^{m}: "):
            getattr(ie, m)(1, 2)


def test_quantize_and_go(small_cnn_onnx, x, tmp_path):
    ref = _small(small_cnn_onnx)
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    with pytest.raises(microndla.MDLAError, match="No images"):
        ie.Quantize("", small_cnn_onnx, str(tmp_path / "q.bin"), [])
    ie.Quantize("", small_cnn_onnx, str(tmp_path / "q.bin"), [x])
    assert (tmp_path / "q.bin").exists()
    go = microndla.MDLA()
    result = np.zeros(10, np.float32)
    y = go.GO("", small_cnn_onnx, "small", x, result)
    assert np.array_equal(y, ref.Run(x)) and np.array_equal(result, y.reshape(-1))


def test_cli_version_and_refused_memory_size():
    from click.testing import CliRunner

    from runtime.cli import main
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "mdla, version" in r.output
    r = CliRunner().invoke(main, ["hw", "build", "--mem-kib", "-5", "-o", "x.v"])
    assert r.exit_code == 2 and "-5 is not in the range" in r.output


def test_cli_run_with_simulator_flags_and_a_checked_config(small_cnn_onnx, tmp_path):
    from click.testing import CliRunner

    from runtime.cli import main
    b = str(tmp_path / "m.bin")
    r = CliRunner().invoke(main, ["compile", small_cnn_onnx, "-o", b, "--config", "small"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["run", b, "--simulator", "functional", "--flag", "comparesw=1"])
    assert r.exit_code == 0 and "cycles" in r.output, r.output
    r = CliRunner().invoke(main, ["run", b, "--config", "reference"])
    assert r.exit_code == 1 and "compiled for hardware configuration 'small'" in r.output
    r = CliRunner().invoke(main, ["run", b, "--flag", "int8mode=1"])
    assert r.exit_code == 1 and "16-bit" in r.output and "Traceback" not in r.output


def test_flags_the_sdk_dropped_are_refused_with_their_replacement():
    from runtime.flags import OLD_FLAGS
    ie = microndla.MDLA()
    for name in OLD_FLAGS:
        with pytest.raises(ValueError, match=f"flag '{name}': a 20"):
            ie.SetFlag(name, 1)
    with pytest.raises(ValueError, match=r"samples="):
        ie.SetFlag("quantize", 1)


def test_an_sdk_style_script_with_options_varfp_readdata_a_reused_buffer_and_print_flags(small_cnn_onnx, capsys):
    """The issue's 'what it must show', in one script written as for the SDK: option letters,
    variable fixed point from calibration samples, GetInfo('print_flags'), a result thread fed from
    one refilled input buffer, ReadData of the output tensor of the last run."""
    import threading
    from arch.numerics import fixed_to_float
    rng = np.random.default_rng(21)
    images = rng.random((5, 1, 3, 32, 32), dtype=np.float32)
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    ie.SetFlag("options", "V")                            # varfp=1: needs calibration samples
    outnames = ie.Compile(small_cnn_onnx, samples=[images[k] for k in range(3)])
    assert outnames == ie.GetInfo("outnames").split(";")
    assert ie.GetInfo("print_flags") is None              # printed, as the SDK's
    printed = capsys.readouterr().out
    assert "varfp = 1" in printed and "options = 'V'" in printed
    expected = [ie.Run(img) for img in images]
    results = {}

    def result_thread():
        while True:
            y, obj = ie.GetResult()
            if obj is None:
                return
            results[obj] = y
    t = threading.Thread(target=result_thread)
    t.start()
    buf = np.empty((1, 3, 32, 32), np.float32)
    for k, img in enumerate(images):
        buf[...] = img                                    # one buffer, refilled after each PutInput
        ie.PutInput(buf, f"image{k}")
    ie.PutInput(None, None)
    t.join(60)
    assert sorted(results) == [f"image{k}" for k in range(5)]
    assert all(np.array_equal(results[f"image{k}"], expected[k]) for k in range(5))
    c = ie._compiled                                      # the output tensor of the last run in card memory
    o = c.outputs[0]
    lay = c.memmap.tensors[o.tensor]
    at = c.memmap.tensor_addr(o.tensor)
    raw = np.zeros(lay.words * c.cfg.beat_bytes, dtype=np.uint8)
    ie.ReadData(at, raw, 0)
    mem = np.zeros(at + raw.size, dtype=np.uint8)
    mem[at:] = raw
    got = fixed_to_float(lay.read(mem, at, c.cfg.lanes), lay.frac).reshape(expected[-1].shape[1:])
    np.testing.assert_array_equal(got, expected[-1][0])
    ie.Free()
