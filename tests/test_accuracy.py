"""Every zoo network through the SDK against onnxruntime in float32, with the SDK's metric, with
the default Q8.8 activations and with calibrated variable fixed point (``Compile(samples=...)``).

Budget (issue 3, item 5): mean |error| / max |reference| <= 1 % and max <= 5 %, for both; and
calibration must not lose accuracy against Q8.8. Every network has a reduced-size test; the
default run keeps those that cost a few seconds (plain, residual, concatenation, fire modules,
depthwise, transposed convolutions, links, LeakyRelu: small_cnn, resnet18, inception, squeezenet,
mobilenet_v2, unet, linknet, tiny_yolo_v2), the others (whose weights alone take 10-20 s to build, fold and
quantise twice on a loaded 2-core machine) and the full sizes (the numbers of docs/accuracy.md,
written by bench/accuracy.py) run with --runslow."""
import numpy as np
import onnxruntime as ort
import pytest

import microndla
import zoo
from arch.numerics import sdk_error_metric

BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0

#: reduced square input sizes (networks not listed run only at full size)
REDUCED = {"small_cnn": 32, "resnet18": 32, "resnet34": 32, "resnet50": 32, "alexnet": 67, "vgg16": 32,
           "inception": 32, "squeezenet": 40, "mobilenet_v2": 32, "unet": 32, "linknet": 64,
           "tiny_yolo_v2": 64}
#: the reduced-size tests of the default run
DEFAULT_RUN = ("small_cnn", "resnet18", "inception", "squeezenet", "mobilenet_v2", "unet", "linknet",
               "tiny_yolo_v2")


def check(name: str, size: int | None) -> None:
    model = zoo.build(name, **({"input_shape": (1, 3, size, size)} if size else {}))
    inp = model.graph.input[0]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    x = np.random.default_rng(100).random(shape, dtype=np.float32)
    samples = [np.random.default_rng(s).random(shape, dtype=np.float32) for s in range(2)]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {inp.name: x})[0]
    errors = {}
    for mode, smp in (("Q8.8", None), ("calibrated", samples)):
        ie = microndla.MDLA()
        ie.Compile(model, samples=smp)
        mean, mx = errors[mode] = sdk_error_metric(ie.Run(x), ref)
        assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, f"{name} {mode}: {mean:.3f} % / {mx:.3f} % exceeds the budget"
    assert errors["calibrated"][0] <= errors["Q8.8"][0], errors


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT_RUN else pytest.mark.slow)
                                  for n in zoo.MODELS if n in REDUCED])
def test_reduced_size(name):
    check(name, REDUCED[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_full_size(name):
    check(name, None)
