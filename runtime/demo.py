"""The demo behind ``mdla demo``: each example network is built locally, compiled, run through the
MDLA API on the functional model, and compared with onnxruntime (float32) and with the golden
reference (bit for bit). The report says what ran, how long the modelled hardware took, how busy
its MACs were, and whether the results are within the SDK-metric budget."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

#: Accuracy budget of the SDK metric against onnxruntime float32, in percent.
BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0


def _examples(seed: int):
    import zoo
    yield "small_cnn", zoo.build("small_cnn", seed=seed), (1, 3, 32, 32)


def run_demo(configs=("reference", "small"), seed: int = 0, out=print) -> bool:
    import onnx
    import onnxruntime as ort

    from arch.machine import get_config
    from arch.numerics import float_to_fixed, sdk_error_metric
    from runtime.mdla import MDLA
    from sim.golden import run_quantized

    all_ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, shape in _examples(seed):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(model, str(path))
            x = np.random.default_rng(seed).random(shape, dtype=np.float32)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            for cname in configs:
                cfg = get_config(cname)
                ie = MDLA()
                ie.SetFlag("bitfile", cname)
                t0 = time.perf_counter()
                ie.Compile(str(path))
                t_compile = time.perf_counter() - t0
                t0 = time.perf_counter()
                y = ie.Run(x)
                t_run = time.perf_counter() - t0
                c = ie._compiled
                stats = ie._last_stats
                # golden reference, independent of the ISA
                g = c.graph
                lay = c.memmap.tensors[c.inputs[0].tensor]
                q, _ = float_to_fixed(x[0], lay.frac)
                gold, _ = run_quantized(g, {c.inputs[0].tensor: q.reshape(lay.channels, lay.height, lay.width)})
                out_t = c.outputs[0].tensor
                dla_q = c.memmap.tensors[out_t].read(ie._memory, c.memmap.tensor_addr(out_t), cfg.lanes)
                exact = np.array_equal(dla_q, gold[out_t])
                mean, mx = sdk_error_metric(y, ref)
                ok = exact and mean <= BUDGET_MEAN and mx <= BUDGET_MAX
                all_ok &= ok
                cs = stats.clusters[0]
                macs = sum(l.macs for l in c.layers)
                util = macs / (stats.cycles * cfg.macs_per_cluster)
                out("")
                out(f"== {name} on the '{cname}' configuration "
                    f"({cfg.mv_per_cluster} MV x {cfg.vv_per_mv} VV x {cfg.lanes} lanes, {cfg.clock_mhz:g} MHz)")
                out(f"   compile {t_compile:.2f} s: {len(c.layers)} layers, {len(c.programs[0])} instructions, "
                    f"{len(c.weights)} bytes of weights, {c.memmap.end} bytes of card memory")
                out(f"   {'layer':<24}{'kind':<9}{'mode':<9}{'tile':>7}{'chunks':>8}{'slots':>7}{'MACs':>12}")
                for l in c.layers:
                    out(f"   {l.name[:23]:<24}{l.kind:<9}{l.mode:<9}{f'{l.tile[0]}x{l.tile[1]}':>7}"
                        f"{l.chunks:>8}{l.slots:>7}{l.macs:>12}")
                out(f"   run {t_run * 1e3:.1f} ms wall: {stats.cycles} cycles = {cfg.cycles_to_ms(stats.cycles):.4f} ms "
                    f"modelled; MAC utilisation {util:.1%}; {cs.bytes_loaded + cs.bytes_stored} bytes moved; "
                    f"{ie.GetInfo('saturations')} saturations")
                out(f"   vs onnxruntime float32: mean {mean:.3f} %, max {mx:.3f} % "
                    f"(budget {BUDGET_MEAN} % / {BUDGET_MAX} %); bit-exact with the golden reference: "
                    f"{'yes' if exact else 'NO'}  -> {'PASS' if ok else 'FAIL'}")
    out("")
    out("all examples passed" if all_ok else "SOME EXAMPLES FAILED")
    return all_ok
