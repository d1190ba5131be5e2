"""Shared by the tutorial examples: writes the model files the tutorials name, with the project's
model builder (ONNX via onnx.helper, seeded weights; nothing is downloaded), and prints a short
report of a run."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # runnable from a source checkout

import zoo  # noqa: E402

#: file name -> (zoo model, weight seed)
MODEL_FILES = {
    "resnet18.onnx": ("resnet18", 0), "resnet50.onnx": ("resnet50", 0), "alexnet.onnx": ("alexnet", 0),
    "model.onnx": ("resnet18", 1), "model1.onnx": ("resnet18", 2), "model2.onnx": ("alexnet", 3),
}


def ensure_models(*files: str) -> None:
    """Write each named model file into the working directory unless it is already there."""
    for f in files:
        if not os.path.exists(f):
            name, seed = MODEL_FILES[f]
            zoo.save(name, f, seed=seed)


def report(title: str, ie, output) -> None:
    outs = output if isinstance(output, list) else [output]
    shapes = ", ".join(str(getattr(o, "shape", None)) for o in outs)
    print(f"{title}: output {shapes}; modelled {ie.GetInfo('hwcycles')} cycles = {ie.GetInfo('hwtime'):.3f} ms")


#: Each tutorial code block: (example script, title, [(model file, input variable, output variable)]).
BLOCKS = [
    ("tutorial_mdla/01_two_fpgas_batching.py", "MDLA: 2 FPGAs, input batching",
     [("resnet18.onnx", "input_img", "output")]),
    ("tutorial_mdla/02_two_fpgas_two_models.py", "MDLA: 2 FPGAs, different models",
     [("resnet50.onnx", "input_img1", "output1"), ("resnet18.onnx", "input_img2", "output2")]),
    ("tutorial_mdla/03_two_clusters_batching.py", "MDLA: 2 clusters, input batching",
     [("resnet18.onnx", "input_img", "output")]),
    ("tutorial_mdla/04_two_clusters_one_image.py", "MDLA: 2 clusters, one image",
     [("resnet18.onnx", "input_img", "output")]),
    ("tutorial_mdla/05_clusters_two_models.py", "MDLA: clusters, different models",
     [("resnet18.onnx", "img0", "result0"), ("alexnet.onnx", "img1", "result1")]),
    ("tutorial_mdla/06_models_in_sequence.py", "MDLA: all clusters, models in sequence",
     [("resnet18.onnx", "img0", "result0"), ("alexnet.onnx", "img1", "result1")]),
    ("tutorial_mdla/07_bigger_batches.py", "MDLA: 2 clusters x 16 images",
     [("resnet18.onnx", "input_img", "output")]),
    ("tutorial_mdla/08_mv_batching.py", "MDLA: 2 clusters x 16 images, mvbatch",
     [("resnet18.onnx", "input_img", "output")]),
    ("tutorial_fwdnxt/01_two_fpgas_batching.py", "FWDNXT: 2 FPGAs, input batching",
     [("model.onnx", "input_img", "output")]),
    ("tutorial_fwdnxt/02_two_fpgas_two_models.py", "FWDNXT: 2 FPGAs, different models",
     [("model1.onnx", "input_img1", "output1"), ("model2.onnx", "input_img2", "output2")]),
    ("tutorial_fwdnxt/03_two_clusters_batching.py", "FWDNXT: 2 clusters, input batching",
     [("model.onnx", "input_img", "output")]),
    ("tutorial_fwdnxt/04_two_clusters_one_image.py", "FWDNXT: 2 clusters, one image (nobatch)",
     [("model.onnx", "input_img", "output")]),
]


def run_block(script: str, checks, workdir: str) -> dict:
    """Run one tutorial example in ``workdir`` (which holds the model files) and score its outputs
    against onnxruntime in float32 with the SDK's metric. Returns a dict for reports and tests."""
    import contextlib
    import io
    import runpy
    import time
    import warnings

    import numpy as np
    import onnxruntime as ort

    from arch.numerics import sdk_error_metric

    here = Path(__file__).resolve().parent
    cwd = os.getcwd()
    os.chdir(workdir)
    out = io.StringIO()
    try:
        np.random.seed(7)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = runpy.run_path(str(here / script), run_name="__main__")
        wall = time.perf_counter() - t0
        scores = []
        for model, in_var, out_var in checks:
            x = np.asarray(g[in_var], dtype=np.float32).reshape((-1, 3, 224, 224))
            sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            ref = np.concatenate([sess.run(None, {name: im[None]})[0] for im in x])
            y = np.asarray(g[out_var])
            scores.append(dict(output=out_var, shape=tuple(y.shape), ref_shape=tuple(ref.shape),
                               size_ok=y.size == ref.size, error=sdk_error_metric(y.reshape(ref.shape), ref)
                               if y.size == ref.size else (float("inf"), float("inf"))))
        ms = [v.GetInfo("hwtime") for v in g.values() if type(v).__name__ in ("MDLA", "FWDNXT")]
        for v in g.values():
            if type(v).__name__ in ("MDLA", "FWDNXT"):
                v.Free()
    finally:
        os.chdir(cwd)
    return dict(scores=scores, wall=wall, modelled_ms=ms, printed=out.getvalue(), globals=g)
