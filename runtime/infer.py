"""Data-set inference: a model over many images on the simulated DLA, in chunks, optionally scored
against onnxruntime in float32 (``mdla infer``; :func:`infer` from Python).

    from runtime.infer import infer
    result = infer("resnet18.onnx", images, reference=True)            # images: (N, C, H, W) or an iterator
    result = infer("resnet18.onnx", "images.npy", ray=True, cards=2)   # the cards as Ray actors (local Ray)
    print(result.summary())

The images stream through one ``MDLA`` object: each ``Run`` takes as many images as the compiled
program takes per call (cards x clusters x images per cluster); the last chunk is filled with zero
images whose outputs are dropped (every image runs in a slot of its own, so the filling does not
touch the others). Images come from an array, a ``.npy`` file (memory-mapped: read chunk by
chunk), a folder (``.npy`` files of one image each, or PNG/JPEG images converted to float32 in
[0, 1], channels first, in file-name order) or any iterable of (C, H, W) or (n, C, H, W) arrays.

With ``ray`` the cards are Ray actors (``workers='ray'``, :mod:`runtime.ray_cards`): a local Ray
instance (``ray=True``) or the cluster at an address; ``cards`` defaults to the cluster's CPUs
then. The results are the same bits as the local run's.

With ``reference`` every image also runs through onnxruntime in float32 on the ONNX model, and each
output is scored with the SDK metric (mean and max |error| / max |reference|, in %; per image and
over the data set) and, for a classifier output (one vector per image), top-1 agreement.
"""
from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class InferError(ValueError):
    """A data set or option infer cannot use (named in the message)."""


@dataclass
class OutputScore:
    """One output scored against onnxruntime float32."""
    name: str
    per_image: np.ndarray            #: (N, 2): the SDK metric (mean %, max %) of each image
    mean: float                      #: over the data set: mean |err| / max |ref|, %
    max: float                       #: over the data set: max |err| / max |ref|, %
    top1: float | None               #: classifier outputs: share of images with the same argmax


@dataclass
class InferResult:
    names: list[str]
    outputs: list[np.ndarray]        #: per model output, (N, ...) float32
    images: int
    seconds: float
    engine: str
    scores: list[OutputScore] | None = None
    warnings: list[str] = field(default_factory=list)   #: distinct warnings of the runs (one per layer)

    def summary(self) -> str:
        lines = [f"{self.images} images in {self.seconds:.2f} s ({self.images / max(self.seconds, 1e-9):.2f} images/s) "
                 f"on {self.engine}"]
        for s in self.scores or []:
            top1 = f", top-1 agreement {100 * s.top1:.2f} %" if s.top1 is not None else ""
            worst = int(np.argmax(s.per_image[:, 1])) if len(s.per_image) else 0
            lines.append(f"output {s.name}: error vs onnxruntime float32: mean {s.mean:.3f} %, max {s.max:.3f} % "
                         f"(worst image {worst}: max {s.per_image[worst, 1] if len(s.per_image) else 0:.3f} %){top1}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Data sets
# ------------------------------------------------------------------------------------------------

def open_images(source) -> tuple[Iterable[np.ndarray], int | None]:
    """(an iterable of image batches (n, C, H, W), the number of images or None if unknown)."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".npy",) + IMAGE_SUFFIXES)
            if not files:
                raise InferError(f"{p}: no .npy or image ({', '.join(IMAGE_SUFFIXES)}) files in this folder")
            return (_read_image(f)[None] for f in files), len(files)
        if p.suffix == ".npy":
            if not p.is_file():
                raise InferError(f"{p}: no such file")
            a = np.load(p, mmap_mode="r")
            if a.ndim != 4:
                raise InferError(f"{p}: expects a batch of images (N, C, H, W), got shape {a.shape}")
            return _batches(a), len(a)
        raise InferError(f"{p}: expects a .npy file (N, C, H, W) or a folder of images")
    if isinstance(source, np.ndarray):
        if source.ndim == 3:
            source = source[None]
        if source.ndim != 4:
            raise InferError(f"expects images (N, C, H, W) or one (C, H, W), got shape {source.shape}")
        return _batches(source), len(source)
    if hasattr(source, "__iter__"):
        return (_as_batch(x) for x in source), None
    raise InferError(f"expects an array, a .npy path, a folder or an iterable of arrays, got {type(source).__name__}")


def _batches(a: np.ndarray, step: int = 256) -> Iterator[np.ndarray]:
    for i in range(0, len(a), step):
        yield np.asarray(a[i:i + step])


def _as_batch(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        return x[None]
    if x.ndim != 4:
        raise InferError(f"an item of the iterator has shape {x.shape}; expects (C, H, W) or (n, C, H, W)")
    return x


def _read_image(f: Path) -> np.ndarray:
    if f.suffix == ".npy":
        x = np.load(f)
        if x.ndim == 4 and len(x) == 1:
            x = x[0]
        if x.ndim != 3:
            raise InferError(f"{f}: expects one image (C, H, W), got shape {x.shape}")
        return x
    from PIL import Image          # matplotlib's dependency
    with Image.open(f) as im:
        x = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return x.transpose(2, 0, 1)


def chunks(batches: Iterable[np.ndarray], size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(chunk of exactly ``size`` images, how many of them are real) from batches of any size."""
    buf, have = [], 0
    for b in batches:
        buf.append(b)
        have += len(b)
        while have >= size:
            whole = np.concatenate(buf) if len(buf) > 1 else buf[0]
            yield whole[:size], size
            rest = whole[size:]
            buf, have = ([rest] if len(rest) else []), len(rest)
    if have:
        whole = np.concatenate(buf)
        pad = np.zeros((size - have,) + whole.shape[1:], dtype=whole.dtype)
        yield np.concatenate([whole, pad]), have


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def infer(model, images, *, ray: bool | str = False, cards: int | None = None, reference: bool = False,
          reference_model: str | None = None, flags: dict | None = None, progress: bool = True,
          output: str | None = None) -> InferResult:
    """Run ``model`` (an ONNX or .bin path) over ``images`` (see the module) and return the outputs,
    and the scores with ``reference``. ``ray``: False (this machine), True (a local Ray instance)
    or a Ray address. ``cards``: simulated cards (ONNX models; default 1, with Ray the cluster's
    CPUs). ``flags``: further SetFlag values. ``output``: also save the outputs (.npy for one
    output, .npz for several)."""
    from hw.progress import Bar as tqdm      # tqdm without its monitor thread

    from .mdla import MDLA
    from . import ray_cards

    model = str(model)
    is_bin = model.endswith(".bin")
    onnx_path = reference_model or (None if is_bin else model)
    if reference and onnx_path is None:
        raise InferError(f"{model}: scoring against onnxruntime needs the ONNX model (reference_model=..., "
                         f"mdla infer --reference-model)")
    if output is not None and not str(output).endswith((".npy", ".npz")):
        raise InferError(f"output {output!r}: expects a .npy (one output) or .npz file")
    batches, total = open_images(images)
    session = False
    if ray is not False and ray is not None:
        address = "" if ray is True else str(ray)
        ray_cards.SESSION.acquire(ray_cards.resolve_address(address), False)   # held for the whole data set
        session = True
    ie = MDLA()
    try:
        for k, v in (flags or {}).items():
            ie.SetFlag(k, v)
        if session:
            ie.SetFlag("workers", "ray")
            ie.SetFlag("ray_address", "" if ray is True else str(ray))
            if cards is None:
                import ray as ray_module
                cards = max(1, int(ray_module.cluster_resources().get("CPU", 1)))
        if is_bin:
            ie.Init(model)
            if cards is not None and cards != ie._compiled.parallel.nfpgas:
                raise InferError(f"{model} was compiled for {ie._compiled.parallel.nfpgas} card(s); cards={cards} "
                                 f"needs the ONNX model")
        else:
            if cards is not None:
                if cards > ie.GetInfo("maxfpga"):
                    ie.SetFlag("maxfpga", cards)
                ie.SetFlag("nfpgas", cards)
            ie.Compile(model)
        if len(ie.GetInfo("innames").split(";")) != 1:
            raise InferError(f"{model}: infer takes models with one input; this one has {ie.GetInfo('innames')}")
        shape = tuple(int(s) for s in ie.GetInfo("inshapes").split("x"))[1:]
        names = ie.GetInfo("outnames").split(";")
        per_call = ie.GetInfo("batch")
        ref = _Reference(onnx_path) if reference else None
        outs: list[list[np.ndarray]] = [[] for _ in names]
        refs: list[list[np.ndarray]] = [[] for _ in names]
        seen: dict[str, str] = {}
        done = 0
        t0 = time.perf_counter()
        bar = tqdm(total=total, unit="img", desc="mdla infer", disable=not progress, dynamic_ncols=True)
        try:
            for chunk, real in chunks(batches, per_call):
                if chunk.shape[1:] != shape:
                    raise InferError(f"image {done}: shape {chunk.shape[1:]}, but the model takes {shape}")
                chunk = chunk.astype(np.float32, copy=False)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    y = ie.Run(chunk)
                for w in caught:
                    m = re.match(r"layer '([^']+)'", str(w.message))
                    seen.setdefault(f"{w.category.__name__}:{m.group(1) if m else str(w.message)}", str(w.message))
                ys = y if isinstance(y, list) else [y]
                for k, a in enumerate(ys):
                    outs[k].append(np.asarray(a[:real]))
                if ref is not None:
                    for k, a in enumerate(ref.run(chunk[:real])):
                        refs[k].append(a)
                done += real
                bar.update(real)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        outputs = [np.concatenate(o) if o else np.zeros((0,)) for o in outs]
        engine = ie.GetInfo("engine")
    finally:
        ie.Free()
        if session:
            ray_cards.SESSION.release()
    scores = [score(n, o, np.concatenate(r)) for n, o, r in zip(names, outputs, refs)] if reference and done else None
    result = InferResult(names, outputs, done, seconds, engine, scores, list(seen.values()))
    if output is not None:
        save(result, output)
    return result


class _Reference:
    """onnxruntime float32 on the ONNX model, one image at a time."""

    def __init__(self, path: str):
        import onnxruntime as ort
        self.sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        per = [self.sess.run(None, {self.input: x[None]}) for x in images]
        return [np.concatenate([p[k] for p in per]).astype(np.float32) for k in range(len(per[0]))]


def score(name: str, y: np.ndarray, ref: np.ndarray) -> OutputScore:
    """The SDK metric per image and over the data set; top-1 agreement for a classifier output."""
    from arch.numerics import sdk_error_metric
    if y.shape != ref.shape:
        raise InferError(f"output {name}: DLA shape {y.shape} but onnxruntime gives {ref.shape}")
    per_image = np.array([sdk_error_metric(a, b) for a, b in zip(y, ref)], dtype=np.float64).reshape(-1, 2)
    mean, mx = sdk_error_metric(y, ref)
    flat = y.reshape(len(y), -1)
    classifier = flat.shape[1] > 1 and all(d == 1 for d in y.shape[2:])
    top1 = float(np.mean(flat.argmax(1) == ref.reshape(len(ref), -1).argmax(1))) if classifier else None
    return OutputScore(name, per_image, mean, mx, top1)


def save(result: InferResult, path: str) -> None:
    if str(path).endswith(".npz"):
        np.savez(path, **{n: o for n, o in zip(result.names, result.outputs)})
    elif len(result.outputs) != 1:
        raise InferError(f"{path}: the model has {len(result.outputs)} outputs; write them to a .npz")
    else:
        np.save(path, result.outputs[0])


# ------------------------------------------------------------------------------------------------
# mdla infer
# ------------------------------------------------------------------------------------------------

import click  # noqa: E402


@click.command("infer")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "source", type=click.Path(exists=True), required=True,
              help="images: a .npy batch (N, C, H, W) or a folder of .npy/PNG/JPEG images")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="write the outputs: .npy (one output) or .npz")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="the cards as Ray actors: a local Ray instance (no ADDRESS) or the cluster at ADDRESS")
@click.option("--cards", type=int, default=None, help="simulated cards (default 1; with --ray the cluster's CPUs)")
@click.option("--reference", is_flag=True, help="score against onnxruntime float32: SDK metric per image and overall, top-1")
@click.option("--reference-model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="the ONNX model to score a .bin against")
@click.option("--per-image", is_flag=True, help="with --reference: print the metric of every image")
@click.option("-f", "--flag", "flags", multiple=True, metavar="NAME=VALUE", help="SetFlag before compiling (repeatable)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def infer_command(model, source, output, ray_address, cards, reference, reference_model, per_image, flags, no_progress):
    """Run MODEL (ONNX or .bin) over a data set on the simulated DLA, in chunks, with a progress bar."""
    try:
        from .cli import flag_values
        values = flag_values(flags)
        ray = False if ray_address is None else (True if ray_address == "local" else ray_address)
        result = infer(model, source, ray=ray, cards=cards, reference=reference, reference_model=reference_model,
                       flags=values, progress=not no_progress, output=output)
    except Exception as e:  # noqa: BLE001 - every user-facing error as a message
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(result.summary())
    if per_image and result.scores:
        for s in result.scores:
            for i, (mean, mx) in enumerate(s.per_image):
                click.echo(f"  {s.name} image {i}: mean {mean:.3f} %, max {mx:.3f} %")
    if output:
        click.echo(f"wrote {output}")
