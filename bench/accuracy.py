"""Accuracy of the DLA against onnxruntime in float32, with the SDK's metric (mean and max
|error| / max |reference|, in %), for every network of the zoo, with the default Q8.8
activations and with calibrated variable fixed point (``Compile(model, samples=...)``); and the
top-1 of the trained digits CNN on its test split. Writes ``docs/accuracy.md``:

    python bench/accuracy.py                       # every zoo network at its full input size
    python bench/accuracy.py --size 64 -o /tmp/a.md --models resnet18 inception
    python bench/accuracy.py --families            # only the section of issue 11's families

Inputs and calibration samples are seeded uniform [0, 1) images (different seeds): the zoo's
networks have seeded random weights, so there is no data set for them.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import microndla  # noqa: E402
import zoo  # noqa: E402
from arch.numerics import sdk_error_metric  # noqa: E402
from compiler.quantize import SaturationWarning  # noqa: E402


def network_row(name: str, size: int | None, nsamples: int, nimages: int, scale: float = 1.0,
                shape: tuple[int, ...] | None = None, heterogeneous: bool = False) -> dict:
    kw = {"input_shape": (1, 3, size, size)} if size else {}
    if shape is not None:
        kw = {"input_shape": shape}
    model = zoo.build(name, **kw)
    inp = model.graph.input[0]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = [scale * np.random.default_rng(1000 + i).random(shape, dtype=np.float32) for i in range(nimages)]
    samples = [scale * np.random.default_rng(i).random(shape, dtype=np.float32) for i in range(nsamples)]
    refs = [sess.run(None, {inp.name: x})[0] for x in images]
    row = {"name": name + (f", inputs in [0, {scale:g})" if scale != 1.0 else ""), "shape": "x".join(map(str, shape[1:]))}
    for mode, smp in (("q88", None), ("varfp", samples)):
        ie = microndla.MDLA()
        if heterogeneous:
            ie.SetFlag("heterogeneous", 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SaturationWarning)
            ie.Compile(model, samples=smp)
            errs, sat = [], 0
            for x, ref in zip(images, refs):
                errs.append(sdk_error_metric(ie.Run(x), ref))
                sat += ie.GetInfo("saturations")
        row[mode] = (float(np.mean([e[0] for e in errs])), float(np.max([e[1] for e in errs])), sat,
                     len([w for w in caught if issubclass(w.category, SaturationWarning)]))
    return row


#: issue 11's families (zoo/families.py): zoo name, real input shape, reduced shape, heterogeneous
#: (a host tail), input scale (255: raw pixels)
FAMILIES = [
    ("mobilenet_v3_small", (1, 3, 224, 224), (1, 3, 96, 96), False, 1.0),
    ("mobilenet_v3_small_paddle", (1, 3, 224, 224), (1, 3, 96, 96), False, 1.0),
    ("mobilenet_v3_large_paddle", (1, 3, 224, 224), (1, 3, 96, 96), False, 1.0),
    ("text_direction", (1, 3, 48, 192), (1, 3, 48, 192), True, 1.0),
    ("dbnet", (1, 3, 736, 736), (1, 3, 128, 128), False, 1.0),
    ("yolo_v8", (1, 3, 640, 640), (1, 3, 128, 128), True, 1.0),
    ("yolox", (1, 3, 640, 640), (1, 3, 128, 128), True, 1.0),
]


def family_rows(nsamples: int, nimages: int) -> list[dict]:
    """Each family at its real input size, or where the compiler refuses that, at the reduced size
    with the refusal recorded; a family refused at both sizes gets the reason only."""
    from compiler.ir import CompileError
    rows = []
    for name, real, reduced, het, scale in FAMILIES:
        row, note = None, ""
        for shape in dict.fromkeys([real, reduced]):
            try:
                row = network_row(name, None, nsamples, nimages, scale, shape=shape, heterogeneous=het)
                break
            except CompileError as e:
                note += ("; " if note else "") + f"{'x'.join(map(str, shape[1:]))}: {e}".replace("|", "/")
        rows.append(row or {"name": name, "refused": note})
        if row is not None:
            row["note"] = note
        print(f"{name}: {'refused: ' + note if row is None else 'scored at ' + row['shape']}", flush=True)
    return rows


def families_markdown(rows: list[dict]) -> str:
    out = ["## Issue 11's families", "",
           "Written by `python bench/accuracy.py --families` (it replaces this section only). The network "
           "families of `zoo/families.py`, written node for node as torch's exporter and Paddle2ONNX write "
           "them, with seeded weights balanced to unit variance: at their real input size where the "
           "compiler takes it, else at a reduced size, with what the compiler refused at the real size. "
           "Same metric, images and samples as above; heterogeneous where the model's tail is host work.", "",
           "| network | input | Q8.8 mean % | Q8.8 max % | sat. | calibrated mean % | calibrated max % | sat. | "
           "refused |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "refused" in r:
            out.append(f"| {r['name']} | | | | | | | | {r['refused']} |")
            continue
        q, v = r["q88"], r["varfp"]
        out.append(f"| {r['name']} | {r['shape']} | {q[0]:.3f} | {q[1]:.3f} | {q[2]} | {v[0]:.3f} | {v[1]:.3f} | "
                   f"{v[2]} | {r['note']} |")
    return "\n".join(out) + "\n"


def digits_row() -> dict:
    from zoo import digits
    xtr, _, xte, yte = digits.split()
    sess = ort.InferenceSession(str(digits.MODEL_PATH), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"input": x[None]})[0] for x in xte])
    row = {"n": len(yte), "float": 100 * float(np.mean(ref.argmax(1) == yte))}
    for mode, smp in (("q88", None), ("varfp", list(xtr[:64]))):
        ie = microndla.MDLA()
        ie.Compile(str(digits.MODEL_PATH), samples=smp)
        y = np.concatenate([ie.Run(x) for x in xte])
        row[mode] = 100 * float(np.mean(y.argmax(1) == yte))
    return row


def markdown(rows: list[dict], digits: dict | None, args) -> str:
    cmd = "python bench/accuracy.py" + (f" --size {args.size}" if args.size else "") + \
          (f" --samples {args.samples}" if args.samples != 4 else "") + (f" --images {args.images}" if args.images != 2 else "")
    out = ["# Accuracy", "",
           f"Written by `{cmd}` (rerun it after changing the numerics, the compiler or the zoo).", "",
           "The DLA's outputs (functional model, reference configuration) against onnxruntime in float32, "
           "with the SDK's metric: mean and max |error| divided by max |reference|, in percent; budget "
           "mean <= 1 %, max <= 5 %. **Q8.8**: `Compile(model)`, every activation in Q8.8, weights in a "
           "per-layer format. **Calibrated**: `Compile(model, samples=...)` (variable fixed point), each "
           f"activation tensor in the finest format holding its range on the {args.samples} calibration "
           "samples with one bit of headroom (`compiler/quantize.py` gives the rules). "
           f"Mean over {args.images} seeded uniform [0, 1) images (the last row: [0, 255), unnormalised pixels, "
           "which exceed Q8.8's range), max over them; \"sat.\" counts the "
           "values clipped to 16 bits in those runs, \"warn.\" the `SaturationWarning`s at Compile.", "",
           "| network | input | Q8.8 mean % | Q8.8 max % | sat. | calibrated mean % | calibrated max % | sat. | warn. |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        q, v = r["q88"], r["varfp"]
        out.append(f"| {r['name']} | {r['shape']} | {q[0]:.3f} | {q[1]:.3f} | {q[2]} | {v[0]:.3f} | {v[1]:.3f} | "
                   f"{v[2]} | {v[3]} |")
    if digits:
        out += ["", "## A trained model: digits", "",
                "`zoo/digits_cnn.onnx`: a small CNN trained with numpy on scikit-learn's bundled 8x8 digits "
                "(`python -m zoo.digits` retrains it; `zoo/digits.py` describes it). Top-1 on its test split "
                f"({digits['n']} images; `tests/test_digits.py` checks that fixed point stays within 1 point of float):", "",
                "| float32 (onnxruntime) | DLA, Q8.8 | DLA, calibrated (64 training images) |",
                "| ---: | ---: | ---: |",
                f"| {digits['float']:.2f} % | {digits['q88']:.2f} % | {digits['varfp']:.2f} % |"]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=[n for n in zoo.MODELS if n not in dict.fromkeys(f[0] for f in FAMILIES)])
    ap.add_argument("--size", type=int, default=None, help="square input size (default: each network's own)")
    ap.add_argument("--samples", type=int, default=4, help="calibration images")
    ap.add_argument("--images", type=int, default=2, help="images scored per network")
    ap.add_argument("--no-digits", action="store_true")
    ap.add_argument("-o", "--output", default=str(ROOT / "docs" / "accuracy.md"))
    ap.add_argument("--families", action="store_true", help="only (re)write the section of issue 11's families")
    args = ap.parse_args()
    marker = "## Issue 11's families"
    if args.families:
        path = Path(args.output)
        old = path.read_text() if path.exists() else ""
        head = old.split(marker)[0].rstrip("\n") + "\n\n" if old else ""
        later = "## Issue 12's"          # bench/accuracy_sequence.py's section, kept
        tail = "\n" + later + old.split(later, 1)[1] if later in old else ""
        path.write_text(head + families_markdown(family_rows(args.samples, args.images)) + tail)
        print(f"wrote {args.output}")
        return
    kept = ""
    if Path(args.output).exists() and marker in Path(args.output).read_text():
        kept = "\n" + marker + Path(args.output).read_text().split(marker, 1)[1]
    rows = []
    for name in args.models:
        t = time.time()
        rows.append(network_row(name, args.size, args.samples, args.images))
        q, v = rows[-1]["q88"], rows[-1]["varfp"]
        print(f"{rows[-1]['name']}: Q8.8 {q[0]:.3f} / {q[1]:.3f} %, calibrated {v[0]:.3f} / {v[1]:.3f} % "
              f"({time.time() - t:.1f} s)", flush=True)
    if "small_cnn" in args.models:
        # unnormalised pixels: beyond Q8.8's range, the case calibration exists for
        rows.append(network_row("small_cnn", args.size, args.samples, args.images, scale=255.0))
    digits = None if args.no_digits else digits_row()
    Path(args.output).write_text(markdown(rows, digits, args) + kept)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
