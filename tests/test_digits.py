"""The trained digits CNN (``zoo/digits_cnn.onnx``, trained by ``python -m zoo.digits`` on
scikit-learn's bundled 8x8 digits): its fixed-point top-1 on the DLA agrees with its float top-1
(onnxruntime) within 1 point on the test split, with Q8.8 and with calibrated formats."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import microndla
from zoo import digits


@pytest.fixture(scope="module")
def data():
    xtr, ytr, xte, yte = digits.split()
    sess = ort.InferenceSession(str(digits.MODEL_PATH), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"input": x[None]})[0] for x in xte])
    return xtr, xte, yte, ref


def test_model_is_small_and_matches_its_training_code(data):
    assert digits.MODEL_PATH.stat().st_size < 100_000
    model = onnx.load(str(digits.MODEL_PATH))
    params = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    _, xte, _, ref = data
    np.testing.assert_allclose(digits.forward(params, xte), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("calibrate", [False, True], ids=["q8.8", "varfp"])
def test_fixed_point_top1_agrees_with_float(data, calibrate):
    xtr, xte, yte, ref = data
    float_top1 = 100 * np.mean(ref.argmax(1) == yte)
    assert float_top1 >= 97.0                          # a trained model, not a random one
    ie = microndla.MDLA()
    ie.SetFlag({"nclusters": 2, "imgs_per_cluster": 3})
    ie.Compile(str(digits.MODEL_PATH), samples=list(xtr[:64]) if calibrate else None)
    b = ie.GetInfo("batch")
    assert len(xte) % b == 0
    y = np.concatenate([ie.Run(xte[i:i + b]) for i in range(0, len(xte), b)])
    dla_top1 = 100 * np.mean(y.argmax(1) == yte)
    assert abs(dla_top1 - float_top1) <= 1.0, (dla_top1, float_top1)
