"""The SDK's low-level methods (runtime/lowlevel.py): ReadData/WriteData on the card memory,
CreateMemcard/Malloc/ReadCode/HwRun running hand-written assembly, WriteWeights into a loaded
program, GetNonlinCoefs and Loadmulti, each with its bad-input errors."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import microndla
from arch import numerics as nx
from arch.asm import assemble, disassemble
from arch.isa import encode_program
from arch.machine import SMALL
from arch.numerics import fixed_to_float
from sim import run_card
from zoo import small_cnn

MDLAError = microndla.MDLAError


def _save(tmp_path, model, name):
    p = tmp_path / name
    onnx.save(model, str(p))
    return str(p)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("ll"), small_cnn(seed=3), "m.onnx")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)


def _loaded(model):
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    ie.Compile(model)
    return ie


# ------------------------------------------------------------------ ReadData / WriteData
def test_write_then_read_round_trip_and_read_of_a_run_output(model, x):
    ie = _loaded(model)
    y = ie.Run(x)
    c = ie._compiled
    o = c.outputs[0]
    lay = c.memmap.tensors[o.tensor]
    raw = np.zeros(lay.words * c.cfg.beat_bytes, dtype=np.uint8)
    ie.ReadData(c.memmap.tensor_addr(o.tensor), raw, 0)
    mem = np.zeros(c.memmap.end, dtype=np.uint8)
    mem[c.memmap.tensor_addr(o.tensor):c.memmap.tensor_addr(o.tensor) + raw.size] = raw
    got = fixed_to_float(lay.read(mem, c.memmap.tensor_addr(o.tensor), c.cfg.lanes), lay.frac).reshape(y.shape[1:])
    np.testing.assert_array_equal(got, y[0])
    a = ie.Malloc(300, 4, 0, "scratch")
    assert a % 4096 == 0 and a >= c.memmap.end
    data = np.random.default_rng(1).standard_normal(300).astype(np.float32)
    ie.WriteData(a, data, 0)
    back = np.empty_like(data)
    ie.ReadData(a, back, 0)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_array_equal(ie.Run(x), y)          # the buffer is outside the model's memory map


def test_read_write_bad_input(model):
    ie = _loaded(model)
    end = ie._compiled.memmap.end
    buf = np.zeros(16, dtype=np.uint8)
    with pytest.raises(MDLAError, match="outside card 0's memory in use"):
        ie.ReadData(end - 8, buf, 0)
    with pytest.raises(MDLAError, match="outside"):
        ie.WriteData(-1, buf, 0)
    with pytest.raises(MDLAError, match="card 1 does not exist"):
        ie.ReadData(0, buf, 1)
    with pytest.raises(MDLAError, match="numpy array"):
        ie.WriteData(0, [1, 2, 3], 0)
    with pytest.raises(MDLAError, match="C-contiguous"):
        ie.ReadData(0, np.zeros((4, 4))[:, ::2], 0)
    ro = np.zeros(4)
    ro.flags.writeable = False
    with pytest.raises(MDLAError, match="read-only"):
        ie.ReadData(0, ro, 0)
    with pytest.raises(MDLAError, match="addr must be an int"):
        ie.ReadData(1.5, buf, 0)
    with pytest.raises(MDLAError, match="no cards"):
        microndla.MDLA().ReadData(0, buf, 0)
    ie.SetFlag("workers", "ray")
    with pytest.raises(MDLAError, match="Ray card actors"):
        ie.WriteData(0, buf, 0)
    with pytest.raises(MDLAError, match="Ray card actors"):
        ie.HwRun(0, 0)


# ------------------------------------------------------------------ Malloc / ReadCode / HwRun
COPY = """# copy {n} words from @src to @dst through MV 0's maps and output buffers (a 1x1 max-pool)
LOAD buf=MAPS mv_mask=1 dram_addr=@src buf_addr=0 n0={n} n1=1 n2=1 push_next=1
MAXPOOL pop_prev=1 push_next=1 mv_mask=1 maps_addr=0 in_w={n} ppitch=1 nb=1 kh=1 kw=1 sy=1 sx=1 oh=1 ow={n} out_addr=0 out_pitch=1
STORE pop_prev=1 mv=0 dram_addr=@dst+0 buf_addr=0 n0={n} n1=1 n2=1
END
"""


@pytest.mark.parametrize("simulator", ["functional", "amaranth"])
def test_hwrun_of_hand_written_code_gives_the_functional_models_result(tmp_path, simulator):
    ie = microndla.MDLA()
    ie.SetFlag("simulator", simulator)                 # the RTL too: same bits, same cycles
    ie.CreateMemcard(1, 1, "small")
    n = 24
    words = n * SMALL.lanes
    src = ie.Malloc(words, 2, 0, "src")
    dst = ie.Malloc(words, 2, 0, "dst")
    code_at = ie.Malloc(64, 32, 0, "code")
    f = tmp_path / "copy.txt"
    f.write_text(COPY.format(n=n))
    code = ie.ReadCode(str(f), code_at)
    x = np.random.default_rng(2).integers(-32768, 32768, size=words).astype(np.int16)
    ie.WriteData(src, x, 0)
    hwtime, moved = ie.HwRun(code_at, words * 2)
    got = np.zeros(words, dtype=np.int16)
    ie.ReadData(dst, got, 0)
    np.testing.assert_array_equal(got, x)
    # the same program and data on the functional model directly
    text = COPY.format(n=n).replace("@src", str(src)).replace("@dst+0", str(dst))
    prog = encode_program(assemble(text))
    assert code.dtype == np.int32 and code.tobytes() == prog
    mem = np.zeros(code_at + len(prog), dtype=np.uint8)
    mem[src:src + 2 * words] = x.view(np.uint8)
    mem[code_at:code_at + len(prog)] = np.frombuffer(prog, np.uint8)
    stats = run_card(SMALL, mem, {0: code_at})
    assert ie.GetInfo("hwcycles") == stats.cycles > 0
    assert hwtime == pytest.approx(SMALL.cycles_to_ms(stats.cycles) / 1000)
    assert moved == stats.clusters[0].bytes_loaded + stats.clusters[0].bytes_stored == 4 * words
    ie.Free()


def test_hwrun_of_a_compiled_program_reassembled_at_another_address(model, x, tmp_path):
    ie = _loaded(model)
    y = ie.Run(x)
    c = ie._compiled
    o = c.outputs[0]
    lay = c.memmap.tensors[o.tensor]
    out_at, nbytes = c.memmap.tensor_addr(o.tensor), lay.words * c.cfg.beat_bytes
    ie.WriteData(out_at, np.zeros(nbytes, np.uint8), 0)           # forget the Run's output
    f = tmp_path / "prog.txt"
    f.write_text(disassemble(c.programs[0]))
    at = ie.Malloc(len(c.programs[0]), 32, 0, "prog")
    ie.ReadCode(str(f), at)
    ie.HwRun(at, nbytes)
    raw = np.zeros(nbytes, np.uint8)
    ie.ReadData(out_at, raw, 0)
    mem = np.zeros(out_at + nbytes, np.uint8)
    mem[out_at:] = raw
    np.testing.assert_array_equal(fixed_to_float(lay.read(mem, out_at, c.cfg.lanes), lay.frac).reshape(y.shape[1:]), y[0])


def test_low_level_bad_input(tmp_path, model):
    ie = microndla.MDLA()
    with pytest.raises(MDLAError, match="no cards"):
        ie.Malloc(1, 1, 0, "a")
    ie.CreateMemcard(1, 1, "small")
    with pytest.raises(MDLAError, match="already has cards"):
        ie.CreateMemcard(1, 1, "small")
    with pytest.raises(MDLAError, match="do not fit"):
        ie.Malloc(SMALL.mem_bytes, 2, 0, "big")
    with pytest.raises(MDLAError, match="identifier"):
        ie.Malloc(4, 2, 0, "not a name")
    with pytest.raises(MDLAError, match="positive int"):
        ie.Malloc(0, 2, 0, "z")
    at = ie.Malloc(64, 32, 0, "code")
    bad = tmp_path / "bad.txt"
    for text, match in [("SYNC\n", "must end with END"), ("LOAD dram_addr=@nosuch\nEND\n", "not a Malloc'ed buffer"),
                        ("FOO x=1\nEND\n", "unknown instruction"), ("LOAD mv_mask=1 n0=1 n1=1 n2=1 buf_addr=99999999\nEND\n", "beyond"), ("LOAD n0=1 n1=1 n2=1\nEND\n", "mv_mask")]:
        bad.write_text(text)
        with pytest.raises(MDLAError, match=match):
            ie.ReadCode(str(bad), at)
    with pytest.raises(MDLAError, match="cannot read"):
        ie.ReadCode(str(tmp_path / "missing.txt"), at)
    with pytest.raises(MDLAError, match="no program was written"):
        ie.HwRun(at, 0)
    bad.write_text("SYNC\nEND\n")
    with pytest.raises(MDLAError, match="outside"):
        ie.ReadCode(str(bad), at + 64 * 32 - 32)
    ie.ReadCode(str(bad), at)
    assert ie.HwRun(at, 0)[1] == 0
    with pytest.raises(MDLAError, match="stored 0 bytes, fewer than outsize=64"):
        ie.HwRun(at, 64)
    ie.Free()
    with pytest.raises(MDLAError, match="no cards"):
        ie.HwRun(at, 0)


# ------------------------------------------------------------------ WriteWeights
def _with(model_proto, **inits):
    m = onnx.ModelProto()
    m.CopyFrom(model_proto)
    for init in m.graph.initializer:
        if init.name in inits:
            init.CopyFrom(numpy_helper.from_array(inits[init.name].astype(np.float32), init.name))
    return m


def test_writeweights_gives_what_a_recompiled_model_gives(tmp_path, x):
    proto = small_cnn(seed=3)
    ie = _loaded(_save(tmp_path, proto, "a.onnx"))
    y = ie.Run(x)
    w = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    perm = np.random.default_rng(4).permutation(10)
    ie.WriteWeights(w["fc.weight"][perm], w["fc.bias"][perm], -1)           # the SDK's last linear layer
    ref = _loaded(_save(tmp_path, _with(proto, **{"fc.weight": w["fc.weight"][perm], "fc.bias": w["fc.bias"][perm]}), "b.onnx"))
    got = ie.Run(x)
    np.testing.assert_array_equal(got, ref.Run(x))
    np.testing.assert_array_equal(got, y[:, perm])
    np.testing.assert_allclose(ie.Run_th(x), ref.Run_th(x), rtol=1e-6)
    # a convolution by index: its weights as the DLA computes them (BatchNormalization folded)
    conv2 = ie._compiled.graph.layers[[L.name for L in ie._compiled.graph.layers].index("conv2")]
    ie.WriteWeights(-conv2.weight, conv2.bias, 1)
    ref2 = _loaded(_save(tmp_path, _with(proto, **{"fc.weight": w["fc.weight"][perm], "fc.bias": w["fc.bias"][perm],
                                                   "conv2.weight": -w["conv2.weight"]}), "c.onnx"))
    np.testing.assert_array_equal(ie.Run(x), ref2.Run(x))


def test_writeweights_bad_input(model):
    ie = _loaded(model)
    fc = [L for L in ie._compiled.graph.layers if getattr(L, "kind", "") == "fc"][0]
    w, b = fc.weight.reshape(10, -1), fc.bias
    with pytest.raises(MDLAError, match=r"shape \(10, 24, 4, 4\)"):
        ie.WriteWeights(np.zeros((10, 383)), b, -1)
    with pytest.raises(MDLAError, match="bias of shape"):
        ie.WriteWeights(w, np.zeros(9), -1)
    with pytest.raises(MDLAError, match="do not fit its format"):
        ie.WriteWeights(w * 1000, b, -1)
    with pytest.raises(MDLAError, match="index 0..2"):
        ie.WriteWeights(w, b, 7)
    with pytest.raises(MDLAError, match="no convolution or linear layer 'nosuch'"):
        ie.WriteWeights(w, b, "nosuch")
    with pytest.raises(MDLAError, match="finite"):
        ie.WriteWeights(np.full(w.shape, np.nan), b, -1)
    with pytest.raises(MDLAError, match="no model loaded"):
        microndla.MDLA().WriteWeights(w, b, -1)


# ------------------------------------------------------------------ GetNonlinCoefs
def _functional_model_activation(act, a, b, x):
    """The functional model's output stage (sim.units._output_stage, the path a CONV takes) on
    accumulators ``x`` with shift 0: the activation of every value as the simulated DLA computes it."""
    from arch.isa import Instr
    from sim.units import _output_stage
    R = np.asarray(x, dtype=np.int64).copy()
    dst = np.empty(R.shape, dtype=np.int16)
    _output_stage(R, [R], Instr("CONV", act=act, act_a=a, act_b=b, shift=0), None, 48, [dst])
    return dst


@pytest.mark.parametrize("name,act,a,b", [
    ("relu", nx.ACT_RELU, 0, 0), ("none", nx.ACT_NONE, 0, 0), ("sigmoid", nx.ACT_SIGMOID, 0, 0),
    ("tanh", nx.ACT_TANH, 0, 0), ("hardswish", nx.ACT_HARDSWISH, 11, 0), ("silu", nx.ACT_SILU, 11, 0),
    ("mish", nx.ACT_MISH, 11, 0)])
def test_nonlin_coefs_are_the_sdk_table_of_the_output_stage(name, act, a, b):
    ie = microndla.MDLA()
    t = ie.GetNonlinCoefs(name)
    assert t.dtype == np.int16 and t.shape == (nx.NONLIN_SIZE,) == (4096,)
    x = (np.arange(4096) - 2048) * 16                   # entry i: the input whose top 12 bits are i
    np.testing.assert_array_equal(t, _functional_model_activation(act, a, b, x))
    np.testing.assert_array_equal(ie.GetNonlinCoefs(act), t)   # by arch.isa.Act value too
    if name in ("relu", "none", "sigmoid", "tanh"):     # monotone (the gated ones dip below 0)
        assert np.all(np.diff(t.astype(np.int64)) >= 0)
    if name == "tanh":                                  # a real shape check: odd, 0 at 0, near +-1 at the ends
        assert t[2048] == 0 and t[0] <= -32000 and t[-1] >= 32000


def test_nonlin_coefs_fields_and_refusals():
    ie = microndla.MDLA()
    x = (np.arange(4096) - 2048) * 16
    # sigmoid one bit coarser (Q1.14) and a LEAKY of alpha 0.125, each against the functional model
    np.testing.assert_array_equal(ie.GetNonlinCoefs("sigmoid", act_a=1),
                                  _functional_model_activation(nx.ACT_SIGMOID, 1, 0, x))
    np.testing.assert_array_equal(ie.GetNonlinCoefs("leaky", 1, 3),
                                  _functional_model_activation(nx.ACT_LEAKY, 1, 3, x))
    assert ie.GetNonlinCoefs()[0] == 0 and ie.GetNonlinCoefs()[-1] == 32752    # the SDK's default: ReLU
    with pytest.raises(MDLAError, match="LEAKY has no default fields"):
        ie.GetNonlinCoefs("leaky")
    with pytest.raises(MDLAError, match="CLIP lower bound 5 exceeds"):
        ie.GetNonlinCoefs("clip", 5, 4)
    with pytest.raises(MDLAError, match="act_a in 0..15"):
        ie.GetNonlinCoefs("tanh", act_a=16)
    with pytest.raises(MDLAError, match="RELU has no fields"):
        ie.GetNonlinCoefs("relu", act_a=2)
    with pytest.raises(MDLAError, match="16-bit field"):
        ie.GetNonlinCoefs("clip", -1, 4)
    with pytest.raises(MDLAError, match="unknown activation"):
        ie.GetNonlinCoefs("swish2")


# ------------------------------------------------------------------ Loadmulti
def test_loadmulti_runs_every_program(tmp_path, x):
    bins, refs = [], []
    x2 = np.random.default_rng(5).random((1, 3, 32, 32), dtype=np.float32)
    for k, seed in enumerate((3, 4)):
        m = _save(tmp_path, small_cnn(seed=seed), f"m{k}.onnx")
        ie = microndla.MDLA()
        ie.SetFlag("bitfile", "small")
        b = str(tmp_path / f"m{k}.bin")
        ie.Compile(m, outfile=b)
        ie.Init(b)
        refs.append(ie.Run([x, x2][k]))
        ie.Free()
        bins.append(b)
    ie = microndla.MDLA()
    ie.Loadmulti(bins)
    ya, yb = ie.Run([x, x2])
    np.testing.assert_array_equal(ya, refs[0])
    np.testing.assert_array_equal(yb, refs[1])
    assert ie._multi[0]._compiled.memmap.base >= ie._compiled.memmap.end
    with pytest.raises(ValueError, match="take 2 input"):
        ie.Run(x)
    with pytest.raises(MDLAError, match="runs them with Run"):
        ie.PutInput(x, None)
    ie.Free()
    with pytest.raises(MDLAError, match="non-empty list"):
        microndla.MDLA().Loadmulti([])
    with pytest.raises(MDLAError, match="non-empty list"):
        microndla.MDLA().Loadmulti(bins[0])
    ref = microndla.MDLA()                              # the reference configuration
    ref.Compile(str(tmp_path / "m0.onnx"), outfile=str(tmp_path / "ref.bin"))
    with pytest.raises(MDLAError, match="compiled for 'reference'"):
        microndla.MDLA().Loadmulti([bins[0], str(tmp_path / "ref.bin")])


def test_loadmulti_getinfo_describes_every_program(tmp_path, small_cnn_onnx):
    """After Loadmulti, GetInfo describes what Run takes and returns: every program's inputs and
    outputs in order; a run flag set afterwards (no_rearrange) applies to every program."""
    from tests.test_sdk_flags import _as_described
    from zoo import kernels
    conv = _save(tmp_path, kernels.conv_model(3, 8, 8, 8, 3, 1, 1, relu=True, seed=2), "conv.onnx")
    bins = []
    for k, m in enumerate((small_cnn_onnx, conv)):
        ie = microndla.MDLA()
        ie.SetFlag("bitfile", "small")
        bins.append(str(tmp_path / f"p{k}.bin"))
        ie.Compile(m, outfile=bins[-1])
    ie = microndla.MDLA()
    ie.Loadmulti(bins)
    rng = np.random.default_rng(9)
    xs = [rng.random((1, 3, 32, 32), dtype=np.float32), rng.random((1, 3, 8, 8), dtype=np.float32)]
    assert ie.GetInfo("inshapes") == "1x3x32x32;1x3x8x8"
    assert ie.GetInfo("outshapes") == "1x10;1x8x8x8" and ie.GetInfo("noutputs") == 2
    progs = ie.GetInfo("programs")
    assert [p["inshapes"] for p in progs] == ["1x3x32x32", "1x3x8x8"] and [p["outshapes"] for p in progs] == ["1x10", "1x8x8x8"]
    assert progs[1]["membase"] >= progs[0]["addroff"] and ie.GetInfo("addroff") == progs[1]["addroff"]
    assert ie.GetInfo("batch") == 1
    y = ie.Run(xs)
    _as_described(ie, y)
    ie.SetFlag("no_rearrange", 2)                # every program's outputs as raw int16
    raw = ie.Run(xs)
    assert [r.dtype for r in raw] == [np.int16, np.int16] and ie.GetInfo("outdtypes") == "int16;int16"
    assert all(np.array_equal(r, np.rint(a * 256).astype(np.int16)) for r, a in zip(raw, y))
    _as_described(ie, raw)
    ie.Free()


def test_malloced_buffers_and_code_are_stale_after_a_later_compile(tmp_path, model, x):
    """Compile (Init, Loadmulti, Free) replaces the cards' contents: a buffer Malloc gave before, and
    code ReadCode wrote there, are refused by name and by address (the address is now inside the new
    program's memory: a write there would corrupt it), until Malloc gives a buffer there again."""
    ie = microndla.MDLA()
    ie.CreateMemcard(1, 1, "small")
    buf = ie.Malloc(64, 2, 0, "buf")
    at = ie.Malloc(64, 32, 0, "code")
    f = tmp_path / "nop.txt"
    f.write_text("LOAD buf=MAPS mv_mask=1 dram_addr=@buf buf_addr=0 n0=1 n1=1 n2=1\nEND\n")
    ie.ReadCode(str(f), at)
    ie.WriteData(buf, np.ones(64, np.int16), 0)
    ie.HwRun(at, 0)
    ie.Free()
    ie.SetFlag("bitfile", "small")
    ie.Compile(model)
    want = _loaded(model).Run(x)
    assert buf < ie._compiled.memmap.end           # the old address is inside the new program
    with pytest.raises(MDLAError, match="buffer 'buf' .* stale"):
        ie.WriteData(buf, np.zeros(64, np.int16), 0)
    with pytest.raises(MDLAError, match="stale"):
        ie.ReadData(buf, np.zeros(64, np.int16), 0)
    with pytest.raises(MDLAError, match="@buf is a stale buffer"):
        ie.ReadCode(str(f), ie.Malloc(64, 32, 0, "code2"))
    with pytest.raises(MDLAError, match="program ReadCode wrote at .* is stale"):
        ie.HwRun(at, 0)
    np.testing.assert_array_equal(ie.Run(x), want)  # nothing reached the new program
    b2 = ie.Malloc(64, 2, 0, "buf")                # a new buffer of that name, after the program
    assert b2 >= ie._compiled.memmap.end
    ie.WriteData(b2, np.ones(64, np.int16), 0)
    ie.ReadCode(str(f), ie.Malloc(64, 32, 0, "code3"))
    ie.Free()
