"""The demo behind ``mdla demo``, the project's main job:

1. every code block of the two tutorials (``examples/tutorial_*``, the seeds of this project) runs
   on the functional model of the reference configuration, on models written by the model builder;
   each output is scored against onnxruntime in float32 with the SDK's metric;
2. a small CNN runs on both hardware configurations and is checked bit for bit against the golden
   reference (a numpy evaluation of the quantised graph that does not use the ISA).

The report says what ran, how long the modelled hardware took and whether everything is within the
budget: mean |error| / max |reference| <= 1 %, max <= 5 %."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _tutorials(out, steps) -> bool:
    if not (EXAMPLES / "_models.py").exists():
        raise FileNotFoundError(f"the tutorial examples are not at {EXAMPLES}; run the demo from a source checkout")
    sys.path.insert(0, str(EXAMPLES))
    from _models import BLOCKS, MODEL_FILES, ensure_models, run_block

    ok_all = True
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        t0 = time.perf_counter()
        steps.step(f"writing the tutorials' {len(MODEL_FILES)} models")
        try:
            ensure_models(*MODEL_FILES)
        finally:
            os.chdir(cwd)
        out(f"Tutorial blocks on the functional model (reference configuration); models written in "
            f"{time.perf_counter() - t0:.1f} s by the model builder")
        out(f"{'':3}{'block':<42}{'output':>13}{'modelled':>13}{'wall':>8}   {'error mean / max':<18}")
        for n, (script, title, checks) in enumerate(BLOCKS, 1):
            work = Path(tmp) / f"block{n}"
            work.mkdir()
            for f in MODEL_FILES:
                shutil.copy(Path(tmp) / f, work / f)
            steps.step(f"block {n}/{len(BLOCKS)}: {title}")
            try:
                r = run_block(script, checks, str(work))
            except Exception as e:  # noqa: BLE001 - the report names the failure and goes on
                out(f"{n:>2} {title:<42} FAILED: {type(e).__name__}: {e}")
                ok_all = False
                continue
            for k, sc in enumerate(r["scores"]):
                mean, mx = sc["error"]
                ok = sc["size_ok"] and mean <= BUDGET_MEAN and mx <= BUDGET_MAX
                ok_all &= ok
                ms = r["modelled_ms"][k] if k < len(r["modelled_ms"]) else r["modelled_ms"][-1]
                out(f"{n if k == 0 else '':>2} {title if k == 0 else '':<42}{str(sc['shape']):>13}"
                    f"{ms:>10.2f} ms{r['wall'] if k == 0 else 0:>7.1f}s   "
                    f"{mean:.3f} % / {mx:.3f} %  {'PASS' if ok else 'FAIL'}")
    out(f"(modelled: time on the simulated DLA at 250 MHz; wall: time to simulate it here)")
    return ok_all


def _bit_exact(out, configs, seed, steps) -> bool:
    import onnxruntime as ort

    import zoo
    from arch.machine import get_config
    from arch.numerics import float_to_fixed, sdk_error_metric
    from runtime.mdla import MDLA
    from sim.golden import run_quantized

    ok_all = True
    out("")
    out("Small CNN compiled for each configuration, functional model vs golden reference and onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "small_cnn.onnx")
        import onnx
        onnx.save(zoo.build("small_cnn", seed=seed), path)
        x = np.random.default_rng(seed).random((1, 3, 32, 32), dtype=np.float32)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        for cname in configs:
            steps.step(f"small CNN on {cname}")
            cfg = get_config(cname)
            ie = MDLA()
            ie.SetFlag("bitfile", cname)
            ie.Compile(path)
            y = ie.Run(x)
            c = ie._compiled
            lay = c.memmap.tensors[c.inputs[0].tensor]
            q, _ = float_to_fixed(x[0], lay.frac)
            gold, _ = run_quantized(c.graph, {c.inputs[0].tensor: q.reshape(lay.channels, lay.height, lay.width)})
            t = c.outputs[0].tensor
            card = ie._cards[0]
            exact = np.array_equal(c.memmap.tensors[t].read(card.memory, c.memmap.tensor_addr(t), cfg.lanes), gold[t])
            mean, mx = sdk_error_metric(y, ref)
            macs = sum(l.macs for l in c.layers)
            util = macs / (ie.GetInfo("hwcycles") * cfg.macs_per_cluster)
            ok = exact and mean <= BUDGET_MEAN and mx <= BUDGET_MAX
            ok_all &= ok
            out(f"   {cname:<10} {cfg.mv_per_cluster} MV x {cfg.vv_per_mv} VV x {cfg.lanes:<2} lanes: "
                f"{len(c.programs[0])} instructions, {ie.GetInfo('hwcycles')} cycles, MAC utilisation {util:.0%}; "
                f"bit-exact with golden: {'yes' if exact else 'NO'}; vs onnxruntime {mean:.3f} % / {mx:.3f} %  "
                f"{'PASS' if ok else 'FAIL'}")
            ie.Free()
    return ok_all


def tutorial_blocks() -> int:
    """How many tutorial blocks the demo runs (0 outside a source checkout)."""
    if not (EXAMPLES / "_models.py").exists():
        return 0
    sys.path.insert(0, str(EXAMPLES))
    from _models import BLOCKS
    return len(BLOCKS)


def run_demo(configs=("reference", "small"), seed: int = 0, out=print, tutorials: bool = True,
             progress: bool = False) -> bool:
    """The demo; ``progress``: a bar on stderr naming the step (the models, each block, each
    configuration) while it runs, with the report printed above it through ``out``."""
    from .progress import Steps
    total = (1 + tutorial_blocks() if tutorials else 0) + len(configs)
    with Steps(total, "mdla demo", enabled=None if progress else False) as steps:
        say = steps.write if progress else out
        ok = _tutorials(say, steps) if tutorials else True
        ok &= _bit_exact(say, configs, seed, steps)
        say("")
        say("all checks passed" if ok else "SOME CHECKS FAILED")
    return ok
