"""Compiled kernels: the functional model running compiled programs equals the golden reference
bit for bit (and the scheduler's race checker accepts every program), on both configurations.

The small configuration has tiny buffers, so the same layers there exercise reduction chunks
(input-channel words, kernel rows), row and column tiles and both kinds of MV parallelism."""
import numpy as np
import pytest

from arch.machine import REFERENCE, SMALL
from compiler.driver import compile_graph
from compiler.frontend import load_model
from compiler.quantize import quantize
from sim.card import run_card
from sim.golden import run_quantized
from zoo import kernels, small_cnn

CONFIGS = [REFERENCE, SMALL]


def run_both(model, cfg, seed=0):
    """Compile and run ``model`` on ``cfg``; return (DLA outputs, golden outputs, compiled, stats)."""
    g = quantize(load_model(model), cfg)
    c = compile_graph(g, cfg)
    mem, feeds = c.seeded_image(seed)
    stats = run_card(cfg, mem, c.program_addresses())
    gold, _ = run_quantized(g, feeds)
    dla = {t: c.memmap.tensors[t].read(mem, c.memmap.tensor_addr(t), cfg.lanes) for t in g.tensors}
    return dla, gold, c, stats


def assert_bit_exact(dla, gold):
    for t, ref in gold.items():
        assert dla[t].shape == ref.shape, t
        if not np.array_equal(dla[t], ref):
            diff = np.argwhere(dla[t] != ref)
            raise AssertionError(f"tensor {t}: {len(diff)} of {ref.size} values differ, first at {diff[0].tolist()}: "
                                 f"DLA {dla[t][tuple(diff[0])]} vs golden {ref[tuple(diff[0])]}")


CONV_CASES = [
    # cin, cout, h, w, k, stride, pad, dilation
    (3, 16, 12, 12, 3, 1, 1, 1),       # first-layer style, cin < lanes
    (16, 32, 10, 10, 3, 2, 1, 1),      # strided
    (20, 24, 9, 11, 3, 1, 0, 1),       # channels that do not divide the lanes, no padding
    (8, 8, 8, 8, 1, 1, 0, 1),          # 1x1
    (5, 7, 13, 13, 5, 2, 2, 1),        # 5x5, odd everything
    (12, 20, 11, 11, 3, 1, 2, 2),      # dilated
    (64, 40, 6, 6, 3, 1, 1, 1),        # long reduction: chunks on the small configuration
    (4, 70, 17, 17, 3, 1, 1, 1),       # many output channels: cout mode
    (100, 12, 9, 9, 1, 2, 0, 1),       # strided 1x1 (subsampling DMA); small: chunks x tiles, resident kernels
    (24, 16, 7, 7, 1, 2, 1, 1),        # strided 1x1 reading the halo
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "cin{}_cout{}_{}x{}_k{}_s{}_p{}_d{}".format(*c))
def test_conv(cfg, case):
    cin, cout, h, w, k, s, p, d = case
    model = kernels.conv_model(cin, cout, h, w, k, s, p, dilation=d, relu=(cin % 2 == 0), seed=cin + cout)
    dla, gold, c, stats = run_both(model, cfg)
    assert_bit_exact(dla, gold)
    macs = sum(l.macs for l in c.layers)
    assert stats.cycles >= macs / cfg.macs_per_cluster


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("case", [(16, 12, 12, 2, 2, 0), (24, 9, 9, 3, 2, 1), (5, 7, 10, 3, 1, 1), (40, 8, 8, 2, 2, 0)],
                         ids=lambda c: "c{}_{}x{}_k{}_s{}_p{}".format(*c))
def test_maxpool(cfg, case):
    c_, h, w, k, s, p = case
    dla, gold, _, _ = run_both(kernels.maxpool_model(c_, h, w, k, s, p, seed=c_), cfg)
    assert_bit_exact(dla, gold)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("n_in,n_out", [(64, 10), (300, 33), (17, 100)])
def test_fully_connected(cfg, n_in, n_out):
    dla, gold, _, _ = run_both(kernels.fc_model(n_in, n_out, seed=n_in), cfg)
    assert_bit_exact(dla, gold)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_small_cnn_bit_exact(cfg, seed):
    dla, gold, c, stats = run_both(small_cnn(seed=seed), cfg, seed=seed)
    assert_bit_exact(dla, gold)
    assert stats.cycles > 0 and stats.clusters[0].macs >= sum(l.macs for l in c.layers)  # active lanes include padding


def test_small_configuration_really_tiles():
    """The small configuration must exercise chunked reductions, several tiles and both MV modes."""
    _, _, c, _ = run_both(kernels.conv_model(64, 40, 6, 6, 3, 1, 1, seed=1), SMALL)
    assert c.layers[0].chunks > 1 and c.layers[0].slots > 2
    modes = set()
    for case in CONV_CASES:
        cin, cout, h, w, k, s, p, d = case
        _, _, c, _ = run_both(kernels.conv_model(cin, cout, h, w, k, s, p, dilation=d), SMALL)
        modes |= {l.mode for l in c.layers}
    assert modes == {"cout", "spatial"}


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("c_,h,w,stride", [(16, 8, 8, 1), (20, 9, 7, 2), (64, 6, 6, 1)])
def test_residual_add(cfg, c_, h, w, stride):
    model = kernels.residual_model(c_, h, w, stride, seed=c_)
    g = quantize(load_model(model), cfg)
    assert any(getattr(l, "residual", None) for l in g.layers), "the Add was not fused"
    dla, gold, _, _ = run_both(model, cfg)
    assert_bit_exact(dla, gold)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("c_,h,w,k,s,p", [(16, 7, 7, None, 1, 0), (24, 5, 6, None, 1, 0), (8, 9, 9, 3, 2, 1),
                                          (20, 8, 8, 2, 2, 0)])
def test_avgpool(cfg, c_, h, w, k, s, p):
    dla, gold, _, _ = run_both(kernels.avgpool_model(c_, h, w, k, s, p), cfg)
    assert_bit_exact(dla, gold)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_resnet18_small_input_bit_exact(cfg):
    import zoo
    dla, gold, c, _ = run_both(zoo.resnet18(seed=1, input_shape=(1, 3, 32, 32)), cfg)
    assert_bit_exact(dla, gold)


def _concat_model(c1, c2, h=6, w=6, seed=0):
    """Two convolutions of one input concatenated along the channels, then a 3x3 convolution that
    reads across the seam (and its padding)."""
    from zoo.builder import Builder
    b = Builder("concat", (1, 4, h, w), seed)
    y = b.concat([b.relu(b.conv("input", c1, 1)), b.relu(b.conv("input", c2, 3, 1, 1))])
    return b.finish(b.conv(y, 8, 3, 1, 1))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_concat_without_copies(cfg):
    model = _concat_model(16, 20)
    dla, gold, c, _ = run_both(model, cfg)
    assert_bit_exact(dla, gold)
    views = [t for t in c.memmap.tensors.values() if t.is_view]
    assert len(views) == 2 and len({v.offset for v in views}) == 1      # both inside one storage


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_inception_bit_exact(cfg):
    import zoo
    dla, gold, c, _ = run_both(zoo.inception(seed=1, input_shape=(1, 3, 32, 32)), cfg)
    assert_bit_exact(dla, gold)
    assert len(c.graph.concats) == 4


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_squeezenet_bit_exact(cfg):
    """Fire modules: 1x1 and 3x3 expand convs written side by side into one concatenation, ceil_mode
    max-pools, a 1x1 conv classifier and a global average pool."""
    import zoo
    dla, gold, c, _ = run_both(zoo.squeezenet(seed=1, input_shape=(1, 3, 40, 40), classes=24), cfg)
    assert_bit_exact(dla, gold)
    assert len(c.graph.concats) == 8


def test_unaligned_concat_is_refused_clearly():
    from compiler.ir import CompileError
    with pytest.raises(CompileError, match=r"Concat 'concat\d+': input .* would start at channel 8, which is not "
                                           r"a multiple of 16"):
        run_both(_concat_model(8, 16), REFERENCE)
    dla, gold, _, _ = run_both(_concat_model(8, 16), SMALL)     # 8 channels are two words of 4 lanes
    assert_bit_exact(dla, gold)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("c_,h,w,k,s,p", [(16, 10, 10, 3, 2, 0), (8, 7, 9, 2, 2, 0), (24, 13, 13, 3, 2, 1)],
                         ids=["10x10_k3s2", "7x9_k2s2", "13x13_k3s2p1"])
def test_maxpool_ceil_mode(cfg, c_, h, w, k, s, p):
    """ceil_mode=1 as exporters write it (ResNet/GoogLeNet-style pools): the same output as
    onnxruntime, computed as extra end padding that max-pooling ignores."""
    import onnx
    import onnxruntime as ort
    from arch.numerics import fixed_to_float
    model = kernels.maxpool_model(c_, h, w, k, s, p)
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("ceil_mode", 1))
    model.graph.output[0].type.tensor_type.ClearField("shape")   # the ceil-mode size differs
    dla, gold, c, _ = run_both(model, cfg)
    assert_bit_exact(dla, gold)
    x = fixed_to_float(gold["input"], 8)[None]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert dla["output"].shape == ref.shape[1:]
    np.testing.assert_array_equal(fixed_to_float(dla["output"], 8), ref[0])


def _per_channel_add_model(seed: int = 0):
    """A residual Add whose second operand is a computed per-channel (1, C, 1, 1) tensor, broadcast
    over the pixels (loaded into the residual buffer with DMA strides of 0)."""
    from onnx import helper

    from zoo.builder import Builder
    b = Builder("add_per_channel", (1, 20, 6, 5), seed)
    x = b.conv("input", 20, 3, 1, 1, bias=True)
    g = b.conv(b.global_avgpool("input"), 20, 1, bias=True)
    b.nodes.append(helper.make_node("Add", [g, x], ["sum"], name="add_bcast"))   # the small operand first
    b.shapes["sum"] = b.shapes[x]
    return b.finish(b.relu("sum"))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_residual_add_of_a_per_channel_tensor(cfg):
    dla, gold, c, _ = run_both(_per_channel_add_model(seed=3), cfg)
    assert_bit_exact(dla, gold)
    (fused,) = [L for L in c.graph.layers if "add_bcast" in L.nodes]
    assert c.graph.tensors[fused.residual].shape == (20, 1, 1) and fused.act == "relu"


def test_residual_add_of_a_per_channel_tensor_matches_onnxruntime():
    import onnxruntime as ort

    import microndla
    from arch.numerics import sdk_error_metric
    m = _per_channel_add_model(seed=4)
    x = np.random.default_rng(5).standard_normal((1, 20, 6, 5)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    ie = microndla.MDLA()
    ie.Compile(m)
    mean, mx = sdk_error_metric(ie.Run(x), ref)
    ie.Free()
    assert mean <= 1.0 and mx <= 5.0, (mean, mx)
