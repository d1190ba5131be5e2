"""Golden reference: the float path equals onnxruntime; the quantised path is bit-exact with a naive
loop implementation of the DLA's numerics and within the accuracy budget of onnxruntime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoo
from arch.machine import REFERENCE
from arch.numerics import DATA_MAX, DATA_MIN, fixed_to_float, float_to_fixed, requantize, sdk_error_metric
from compiler.frontend import load_model
from compiler.ir import Conv, MaxPool
from compiler.quantize import quantize
from sim.golden import fixed_inputs, output_array, run_float, run_quantized
from zoo.kernels import conv_model, fc_model, maxpool_model

#: accuracy budget of the quantised (Q8.8) path against onnxruntime float32, SDK metric, percent
BUDGET_MEAN = 1.0
BUDGET_MAX = 5.0

KERNEL_MODELS = {
    "conv1x1": lambda: conv_model(8, 16, 6, 7, 1, 1, 0),
    "conv3x3_relu": lambda: conv_model(5, 12, 9, 9, 3, 1, 1, relu=True, seed=1),
    "conv3x3_s2": lambda: conv_model(16, 8, 10, 11, 3, 2, 1, seed=2),
    "conv5x5_dil2": lambda: conv_model(4, 6, 13, 12, 5, 1, 4, dilation=2, seed=3),
    "conv7x7_s2_rgb": lambda: conv_model(3, 16, 20, 20, 7, 2, 3, seed=4),
    "conv_nobias_asym": lambda: conv_model(6, 5, 8, 9, (3, 2), (1, 2), (0, 1, 1, 0), bias=False, seed=5),
    "maxpool2_s2": lambda: maxpool_model(6, 8, 9, 2, 2, 0),
    "maxpool3_s2_p1": lambda: maxpool_model(5, 9, 9, 3, 2, 1),
    "maxpool3_s1_p1": lambda: maxpool_model(4, 7, 6, 3, 1, 1),
    "maxpool_asym": lambda: maxpool_model(3, 8, 8, (2, 3), (1, 2), (1, 0, 0, 1)),
    "fc384": lambda: fc_model(384, 10),
    "fc1000": lambda: fc_model(1000, 37, seed=6),
}


def ort_outputs(model, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def image(graph, seed: int) -> np.ndarray:
    """One N(0, 1) input in the ONNX shape (with batch 1)."""
    return np.random.default_rng(seed).standard_normal(graph.inputs[0].onnx_shape).astype(np.float32)


def quantized_vs_ort(model, seed: int) -> tuple[float, float, int]:
    graph = quantize(load_model(model), REFERENCE)
    x = image(graph, 1000 + seed)
    (ref,) = ort_outputs(model, x)
    gi, out = graph.inputs[0], graph.outputs[0]
    xq, _ = fixed_inputs(graph, {gi.name: x.reshape(graph.tensors[gi.tensor].shape)})
    tensors, saturations = run_quantized(graph, xq)
    y = fixed_to_float(output_array(out, tensors[out.tensor]), graph.tensors[out.tensor].frac)
    mean, worst = sdk_error_metric(y, ref)
    return mean, worst, saturations


# ------------------------------------------------------------------------------------------------
# float path vs onnxruntime
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float_small_cnn_matches_onnxruntime(seed):
    model = zoo.build("small_cnn", seed=seed)
    graph = load_model(model)
    x = image(graph, seed)
    (ref,) = ort_outputs(model, x)
    tensors = run_float(graph, {"input": x[0]})
    out = graph.outputs[0]
    got = output_array(out, tensors[out.tensor])
    assert got.shape == (1, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("name", sorted(KERNEL_MODELS))
def test_float_kernel_models_match_onnxruntime(name):
    model = KERNEL_MODELS[name]()
    graph = load_model(model)
    x = image(graph, 7)
    (ref,) = ort_outputs(model, x)
    out = graph.outputs[0]
    got = output_array(out, run_float(graph, {"input": x})[out.tensor])   # the ONNX shape is accepted too
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_small_cnn_other_input_size():
    model = zoo.build("small_cnn", seed=3, input_shape=(1, 3, 40, 24))
    graph = load_model(model)
    x = image(graph, 3)
    (ref,) = ort_outputs(model, x)
    out = graph.outputs[0]
    np.testing.assert_allclose(output_array(out, run_float(graph, {"input": x[0]})[out.tensor]), ref,
                               rtol=1e-4, atol=1e-5 * np.abs(ref).max())


# ------------------------------------------------------------------------------------------------
# quantised path vs onnxruntime: the accuracy budget
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_quantized_small_cnn_within_budget(seed):
    mean, worst, saturations = quantized_vs_ort(zoo.build("small_cnn", seed=seed), seed)
    assert saturations == 0
    assert mean <= BUDGET_MEAN and worst <= BUDGET_MAX, f"SDK metric mean {mean:.3f} %, max {worst:.3f} %"


@pytest.mark.parametrize("name", sorted(KERNEL_MODELS))
def test_quantized_kernel_models_within_budget(name):
    mean, worst, saturations = quantized_vs_ort(KERNEL_MODELS[name](), 11)
    assert saturations == 0
    assert mean <= BUDGET_MEAN and worst <= BUDGET_MAX, f"SDK metric mean {mean:.3f} %, max {worst:.3f} %"


# ------------------------------------------------------------------------------------------------
# quantised path vs a naive loop implementation (bit-exact)
# ------------------------------------------------------------------------------------------------

def naive_conv(x: np.ndarray, layer: Conv) -> tuple[np.ndarray, int]:
    c, h, w = x.shape
    cout, _, kh, kw = layer.wq.shape
    top, left, bottom, right = layer.pads
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    oh = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    ow = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    acc = np.zeros((cout, oh, ow), dtype=np.int64)
    for o in range(cout):
        for y in range(oh):
            for z in range(ow):
                s = int(layer.bq[o])
                for ci in range(c):
                    for i in range(kh):
                        for j in range(kw):
                            yy, zz = y * sh + i * dh - top, z * sw + j * dw - left
                            if 0 <= yy < h and 0 <= zz < w:
                                s += int(layer.wq[o, ci, i, j]) * int(x[ci, yy, zz])
                acc[o, y, z] = s
    return requantize(acc, layer.shift, 1 if layer.act == "relu" else 0)


def naive_maxpool(x: np.ndarray, layer: MaxPool) -> np.ndarray:
    c, h, w = x.shape
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    top, left, bottom, right = layer.pads
    oh, ow = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    out = np.zeros((c, oh, ow), dtype=np.int16)
    for ci in range(c):
        for y in range(oh):
            for z in range(ow):
                vals = [x[ci, y * sh + i - top, z * sw + j - left] for i in range(kh) for j in range(kw)
                        if 0 <= y * sh + i - top < h and 0 <= z * sw + j - left < w]
                out[ci, y, z] = max(vals)        # padding is ignored, as in ONNX
    return out


@settings(max_examples=25, deadline=None)
@given(cin=st.integers(1, 4), cout=st.integers(1, 5), h=st.integers(3, 8), w=st.integers(3, 8),
       k=st.integers(1, 3), stride=st.integers(1, 3), pad=st.integers(0, 2), dilation=st.integers(1, 2),
       relu=st.booleans(), seed=st.integers(0, 1000), scale=st.sampled_from([0.5, 4.0, 60.0]))
def test_quantized_conv_bit_exact_with_naive_loops(cin, cout, h, w, k, stride, pad, dilation, relu, seed, scale):
    if (k - 1) * dilation + 1 > min(h, w) + 2 * pad:
        return
    graph = quantize(load_model(conv_model(cin, cout, h, w, k, stride, pad, dilation=dilation, relu=relu,
                                           seed=seed)), REFERENCE)
    rng = np.random.default_rng(seed)
    xq, _ = float_to_fixed(rng.standard_normal((cin, h, w)) * scale, 8)     # large scales saturate
    tensors, saturations = run_quantized(graph, {"input": xq})
    (layer,) = graph.layers
    expected, expected_sat = naive_conv(xq, layer)
    np.testing.assert_array_equal(tensors[layer.output], expected)
    assert saturations == expected_sat


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 3), h=st.integers(2, 9), w=st.integers(2, 9), k=st.integers(1, 3),
       stride=st.integers(1, 3), pad=st.integers(0, 1), seed=st.integers(0, 1000))
def test_quantized_maxpool_bit_exact_with_naive_loops(c, h, w, k, stride, pad, seed):
    if pad >= k or k > min(h, w) + 2 * pad:
        return
    graph = quantize(load_model(maxpool_model(c, h, w, k, stride, pad)), REFERENCE)
    xq = np.random.default_rng(seed).integers(DATA_MIN, DATA_MAX + 1, (c, h, w)).astype(np.int16)
    tensors, saturations = run_quantized(graph, {"input": xq})
    (layer,) = graph.layers
    np.testing.assert_array_equal(tensors[layer.output], naive_maxpool(xq, layer))
    assert saturations == 0


def test_saturation_is_counted():
    graph = quantize(load_model(conv_model(8, 4, 5, 5, 3, 1, 1, seed=1)), REFERENCE)
    xq = np.full((8, 5, 5), DATA_MAX, dtype=np.int16)
    tensors, saturations = run_quantized(graph, {"input": xq})
    y = tensors["output"]
    assert saturations > 0
    assert saturations == np.count_nonzero((y == DATA_MAX) | (y == DATA_MIN))


def test_run_quantized_returns_every_tensor_as_int16():
    graph = quantize(load_model(zoo.build("small_cnn")), REFERENCE)
    xq, _ = fixed_inputs(graph, {"input": image(graph, 0)[0]})
    tensors, _ = run_quantized(graph, xq)
    assert set(tensors) == set(graph.tensors)
    for name, t in graph.tensors.items():
        assert tensors[name].shape == t.shape and tensors[name].dtype == np.int16
    assert output_array(graph.outputs[0], tensors["output"]).shape == (1, 10)


def test_bad_arguments():
    graph = load_model(zoo.build("small_cnn"))
    with pytest.raises(ValueError, match="not quantised"):
        run_quantized(graph, {"input": np.zeros((3, 32, 32), np.int16)})
    quantize(graph, REFERENCE)
    with pytest.raises(ValueError, match="missing input 'input'"):
        run_quantized(graph, {"x": np.zeros((3, 32, 32), np.int16)})
    with pytest.raises(ValueError, match=r"shape \(3, 32, 31\)"):
        run_quantized(graph, {"input": np.zeros((3, 32, 31), np.int16)})
    with pytest.raises(ValueError, match="int16"):
        run_quantized(graph, {"input": np.zeros((3, 32, 32), np.float32)})
