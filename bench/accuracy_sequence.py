"""Accuracy of the sequence models (zoo/sequence.py) on the DLA against onnxruntime in float32,
SDK metric, Q8.8 and calibrated, with the shares of the modelled time on the DLA and on the host
(arch/host.py); and of quantised models (built offline with onnxruntime.quantization) against
onnxruntime running the quantised model and the float one. Writes (replaces) the sections
"Issue 12's sequence models" and "Issue 12's quantised models" of docs/accuracy.md:

    python bench/accuracy_sequence.py [-o docs/accuracy.md]

Inputs are seeded N(0, 0.5) arrays (images: uniform [0, 1)), calibration samples other seeds.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import microndla  # noqa: E402
from arch.numerics import sdk_error_metric  # noqa: E402
from zoo import sequence  # noqa: E402

MARKER = "## Issue 12's sequence models"

#: (row name, builder)
MODELS = [
    ("LSTM forward, 8 steps, 12 -> 16", lambda: sequence.rnn_layer("LSTM")),
    ("LSTM bidirectional, initial states", lambda: sequence.rnn_layer("LSTM", direction="bidirectional", states=True)),
    ("LSTM bidirectional, sequence_lens 5 of 8", lambda: sequence.rnn_layer("LSTM", direction="bidirectional",
                                                                            seq_len=5)),
    ("GRU bidirectional, linear_before_reset", lambda: sequence.rnn_layer("GRU", direction="bidirectional",
                                                                          linear_before_reset=1)),
    ("lstm_stack (SDK test), 1 step", lambda: sequence.lstm_stack(seq=1)),
    ("lstm_stack (SDK test), 6 steps", lambda: sequence.lstm_stack(seq=6)),
    ("Paddle2ONNX LSTM bidirectional, batch-first, Paddle's zero states", lambda: sequence.paddle_rnn(
        "LSTM", direction="bidirectional", states="tile")[0]),
    ("Paddle2ONNX LSTM 2 layers bidirectional, ConstantOfShape states", lambda: sequence.paddle_rnn(
        "LSTM", direction="bidirectional", num_layers=2, states="constantofshape")[0]),
    ("Paddle2ONNX GRU bidirectional", lambda: sequence.paddle_rnn("GRU", direction="bidirectional", states="tile")[0]),
    ("crnn 1x32x64", sequence.crnn),
    ("attention_recogniser 1x32x64", sequence.attention_recogniser),
]


def _inputs(model, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        out[i.name] = (rng.random(shape, dtype=np.float32) if len(shape) == 4 else
                       (rng.standard_normal(shape) * 0.5).astype(np.float32))
    return out


def _run_errors(ie, model, feeds, *sessions) -> list[list[tuple[float, float]]]:
    """Run the DLA on one call's feeds: per session (onnxruntime), the SDK metric of every output."""
    ys = ie.Run([feeds[i.name] for i in model.graph.input])
    ys = ys if isinstance(ys, list) else [ys]
    return [[sdk_error_metric(np.asarray(y).reshape(ref.shape), ref) for y, ref in zip(ys, sess.run(None, feeds))]
            for sess in sessions]


def row(name, build, nimages: int = 2, nsamples: int = 4) -> dict:
    from runtime.profile import profile
    model = build()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in model.graph.input]
    samples = [[_inputs(model, 100 + s)[n] for n in names] for s in range(nsamples)]
    result = {"name": name}
    for mode, smp in (("q88", None), ("cal", samples)):
        ie = microndla.MDLA()
        ie.SetFlag("heterogeneous", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ie.Compile(model, samples=smp)
        errs = [e for k in range(nimages) for e in _run_errors(ie, model, _inputs(model, k), sess)[0]]
        result[mode] = (float(np.mean([e[0] for e in errs])), float(np.max([e[1] for e in errs])))
        if mode == "q88":
            rows = profile(ie, [_inputs(model, 0)[n] for n in names])
            host_us = sum(r.host_us for r in rows)
            dla_us = ie.GetInfo("hwcycles") / ie._compiled.cfg.clock_mhz
            result["cycles"] = ie.GetInfo("hwcycles")
            result["dla_share"] = dla_us / (dla_us + host_us)
            result["layers"] = sum(len(s.layers) for s in getattr(ie._compiled, "segments", [ie._compiled]))
    print(f"{name}: Q8.8 {result['q88']}, calibrated {result['cal']}, DLA {result['dla_share']:.0%}", flush=True)
    return result


def markdown(rows: list[dict]) -> str:
    out = [MARKER, "",
           "Written by `python bench/accuracy_sequence.py` (it replaces this section only). The sequence "
           "models of `zoo/sequence.py` with `heterogeneous` (the recurrences and attention products run on "
           "the host between DLA layers): every output (Y, Y_h, Y_c, ...) against onnxruntime in float32, "
           "mean over 2 seeded inputs and all outputs, max over them; calibrated with 4 samples. DLA share: "
           "of the call's modelled time, DLA cycles against the host model of `arch/host.py`.", "",
           "| model | DLA layers | Q8.8 mean % | Q8.8 max % | calibrated mean % | calibrated max % | hwcycles | "
           "DLA share |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        q, c = r["q88"], r["cal"]
        out.append(f"| {r['name']} | {r['layers']} | {q[0]:.3f} | {q[1]:.3f} | {c[0]:.3f} | {c[1]:.3f} | "
                   f"{r['cycles']} | {r['dla_share']:.0%} |")
    return "\n".join(out) + "\n"


def write_section(path: Path, text: str, marker: str = MARKER) -> None:
    """Replace the section starting at ``marker`` (up to the next ``## `` heading) or append it."""
    old = path.read_text() if path.exists() else ""
    if marker in old:
        head, rest = old.split(marker, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


QMARKER = "## Issue 12's quantised models"


def quant_rows() -> list[dict]:
    import tempfile

    import onnx

    from tests.test_quant_import import CASES, _feeds, _quantise, _token_mlp
    from zoo import small_cnn
    builders = {"small_cnn": small_cnn, "token_mlp": _token_mlp,
                "lstm": lambda: sequence.rnn_layer("LSTM", direction="bidirectional", states=True)}
    rows = []
    for name, how, ops in CASES:
        with tempfile.TemporaryDirectory() as d:
            model = builders[name]()
            fpath, qpath = _quantise(Path(d), model, how)
            qops = sorted({n.op_type for n in onnx.load(qpath).graph.node} & (ops | {"QuantizeLinear", "DequantizeLinear"}))
            errs = {"ours_q": [], "ours_f": [], "q_f": []}
            sess_q, sess_f = (ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in (qpath, fpath))
            ie = microndla.MDLA()
            ie.SetFlag("heterogeneous", 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ie.Compile(qpath)
            for seed in (7, 8):
                feeds = _feeds(model, seed)
                ours_q, ours_f = _run_errors(ie, model, feeds, sess_q, sess_f)
                errs["ours_q"] += ours_q
                errs["ours_f"] += ours_f
                errs["q_f"] += [sdk_error_metric(rq, rf) for rq, rf in zip(sess_q.run(None, feeds), sess_f.run(None, feeds))]
        row = {"name": f"{name} ({how}: {', '.join(qops)})", "cycles": ie.GetInfo("hwcycles")}
        for k, v in errs.items():
            row[k] = (float(np.mean([e[0] for e in v])), float(np.max([e[1] for e in v])))
        print(row, flush=True)
        rows.append(row)
    return rows


def quant_markdown(rows: list[dict]) -> str:
    out = [QMARKER, "",
           "Written by `python bench/accuracy_sequence.py` (it replaces this section only). Float models "
           "quantised offline by onnxruntime.quantization (static QDQ and QOperator with 4 calibration "
           "images, dynamic with int8 weights; qdq-conv: QDQ on the Conv operators only, a partial coverage whose "
           "hinted tensors take their formats from the activation scales, the others Q8.8), imported by "
           "`compiler/quant_import.py` (weights dequantised, "
           "then requantised to the DLA's 16-bit formats; the 8-bit activation rounding dropped) and run on "
           "the DLA in Q8.8 (QDQ: the formats from the activation scales where present, no samples). SDK metric "
           "over 2 seeded uniform [0, 1) inputs: the DLA against onnxruntime "
           "running the quantised model, the DLA against the float model, and the quantised model itself "
           "against the float model.", "",
           "| model (quantisation: its operators) | DLA vs quantised mean % | max % | DLA vs float mean % | max % | "
           "quantised vs float mean % | max % | hwcycles |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        a, b, c = r["ours_q"], r["ours_f"], r["q_f"]
        out.append(f"| {r['name']} | {a[0]:.3f} | {a[1]:.3f} | {b[0]:.3f} | {b[1]:.3f} | {c[0]:.3f} | {c[1]:.3f} | "
                   f"{r['cycles']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "docs" / "accuracy.md"))
    args = ap.parse_args()
    write_section(Path(args.output), markdown([row(n, b) for n, b in MODELS]))
    write_section(Path(args.output), quant_markdown(quant_rows()), QMARKER)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
