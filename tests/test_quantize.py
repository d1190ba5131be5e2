"""Quantisation: formats, the per-layer weight format and its limits, the integer parameters."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import zoo
from arch.machine import REFERENCE, SMALL
from arch.numerics import float_to_fixed, frac_for_range
from compiler.frontend import load_model
from compiler.ir import CompileError, Conv, Graph, GraphInput, GraphOutput, MaxPool, TensorInfo
from compiler.quantize import quantize


def one_conv(weight, bias, act="none") -> Graph:
    """A one-Conv graph built directly in the IR."""
    weight = np.asarray(weight, dtype=np.float32)
    cout, cin, kh, kw = weight.shape
    conv = Conv(name="c", nodes=["c"], input="x", output="y", weight=weight,
                bias=np.asarray(bias, dtype=np.float32), act=act)
    return Graph(name="t", tensors={"x": TensorInfo("x", (cin, kh, kw)), "y": TensorInfo("y", (cout, 1, 1))},
                 layers=[conv], inputs=[GraphInput("x", "x", (1, cin, kh, kw))],
                 outputs=[GraphOutput("y", "y", (1, cout, 1, 1))])


def test_returns_same_graph_and_sets_every_format():
    graph = load_model(zoo.build("small_cnn"))
    assert not graph.quantized
    assert quantize(graph, REFERENCE) is graph
    assert graph.quantized
    assert {t.frac for t in graph.tensors.values()} == {REFERENCE.default_frac}
    quantize(graph, REFERENCE, act_frac=10)
    assert {t.frac for t in graph.tensors.values()} == {10}
    for layer in graph.layers:
        if isinstance(layer, MaxPool):
            assert graph.tensors[layer.output].frac == graph.tensors[layer.input].frac


@pytest.mark.parametrize("act_frac", [-1, 16, 2.5, "8"])
def test_bad_act_frac(act_frac):
    with pytest.raises(CompileError, match="frac"):
        quantize(load_model(zoo.build("small_cnn")), REFERENCE, act_frac=act_frac)


@pytest.mark.parametrize("cfg", [REFERENCE, SMALL])
def test_small_cnn_parameters(cfg):
    graph = quantize(load_model(zoo.build("small_cnn", seed=1)), cfg)
    for layer in graph.layers:
        if not isinstance(layer, Conv):
            continue
        in_frac, out_frac = graph.tensors[layer.input].frac, graph.tensors[layer.output].frac
        # small biases: the weight format is set by the weights alone
        assert layer.w_frac == frac_for_range(float(np.abs(layer.weight).max()))
        assert layer.wq.dtype == np.int16 and layer.wq.shape == layer.weight.shape
        np.testing.assert_array_equal(layer.wq, float_to_fixed(layer.weight, layer.w_frac)[0])
        assert np.abs(layer.wq).max() > 2 ** 14                # the format uses the int16 range
        assert layer.bq.dtype == np.int64 and layer.bq.shape == (layer.weight.shape[0],)
        np.testing.assert_array_equal(layer.bq, np.rint(layer.bias.astype(np.float64) * 2.0 ** (in_frac + layer.w_frac)))
        assert np.abs(layer.bq).max() < 2 ** (cfg.bias_bits - 1)
        assert layer.shift == in_frac + layer.w_frac - out_frac >= 0


def test_w_frac_from_weight_range():
    graph = quantize(one_conv(np.full((2, 1, 1, 1), 0.3), [0.0, 0.1]), REFERENCE)
    (conv,) = graph.layers
    assert conv.w_frac == 16                      # 0.3 * 2**16 = 19661 fits, 0.3 * 2**17 does not
    assert conv.shift == 16 and conv.wq[0, 0, 0, 0] == 19661
    assert conv.bq[1] == round(0.1 * 2 ** 24)


def test_w_frac_lowered_so_that_bias_fits():
    graph = quantize(one_conv(np.full((1, 1, 1, 1), 0.3), [1000.0]), REFERENCE)
    (conv,) = graph.layers
    # 1000 * 2**(8 + 13) = 2.097e9 < 2**31 - 1, 1000 * 2**(8 + 14) does not fit
    assert conv.w_frac == 13 and conv.shift == 13
    assert conv.bq[0] == 1000 * 2 ** 21 < 2 ** 31
    narrow = dataclasses.replace(REFERENCE, name="narrow-bias", bias_bits=24)
    (conv,) = quantize(one_conv(np.full((1, 1, 1, 1), 0.3), [1000.0]), narrow).layers
    assert conv.w_frac == 5 and conv.bq[0] < 2 ** 23


def test_zero_weights_and_bias():
    (conv,) = quantize(one_conv(np.zeros((2, 3, 1, 1)), [0.0, 0.0]), REFERENCE).layers
    assert conv.shift >= 0 and not conv.wq.any() and not conv.bq.any()


def test_bias_and_shift_conflict_names_layer():
    # the bias needs w_frac <= -1, the shift needs w_frac >= 0
    with pytest.raises(CompileError, match=r"layer 'c'.*no weight format fits"):
        quantize(one_conv(np.full((1, 1, 1, 1), 0.3), [1e7]), REFERENCE)
    # weights too large for any non-negative format
    with pytest.raises(CompileError, match=r"layer 'c'.*no weight format fits"):
        quantize(one_conv(np.full((1, 1, 1, 1), 40000.0), [0.0]), REFERENCE)


def test_reduction_too_long_names_layer():
    short = dataclasses.replace(REFERENCE, name="short-acc", acc_bits=36)       # max_reduction 8
    with pytest.raises(CompileError, match=r"layer 'c'.*3x3x1 = 9 terms, more than the 8"):
        quantize(one_conv(np.full((1, 1, 3, 3), 0.1), [0.0]), short)
    quantize(one_conv(np.full((1, 2, 2, 2), 0.1), [0.0]), short)              # 8 terms is fine
