"""Model zoo: ONNX models built locally with ``onnx.helper`` and seeded numpy weights (no torch, no
downloads), so examples and tests never need the internet.

``MODELS`` maps a name to its builder ``f(seed=0, **kw) -> onnx.ModelProto``; :func:`build` and
:func:`save` look names up there. Single-layer models for kernel tests are in :mod:`zoo.kernels`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from . import families
from .classic import alexnet, vgg16
from .inception import inception
from .linknet import linknet
from .mobilenet import mobilenet_v2
from .resnet import resnet18, resnet34, resnet50
from . import sequence
from .small_cnn import small_cnn
from .squeezenet import squeezenet
from .unet import unet
from .yolo import tiny_yolo_v2

__all__ = ["MODELS", "SEQUENCE_MODELS", "build", "save", "small_cnn", "resnet18", "resnet34", "resnet50", "alexnet", "vgg16", "inception",
           "squeezenet", "mobilenet_v2", "unet", "linknet", "tiny_yolo_v2", "families", "sequence"]

#: name -> builder(seed=0, **kw) -> ModelProto
MODELS: dict[str, Callable[..., onnx.ModelProto]] = {
    "small_cnn": small_cnn,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "alexnet": alexnet,
    "vgg16": vgg16,
    "inception": inception,
    "squeezenet": squeezenet,
    "mobilenet_v2": mobilenet_v2,
    "unet": unet,
    "linknet": linknet,
    "tiny_yolo_v2": tiny_yolo_v2,
    # issue 11's families, written with the exporters' idioms (zoo/families.py)
    "mobilenet_v3_small": families.mobilenet_v3,
    "mobilenet_v3_small_paddle": lambda seed=0, **kw: families.mobilenet_v3(seed, exporter="paddle", **kw),
    "mobilenet_v3_large_paddle": lambda seed=0, **kw: families.mobilenet_v3(seed, exporter="paddle", size="large",
                                                                            width=0.5, **kw),
    "text_direction": families.text_direction,
    "dbnet": families.dbnet,
    "yolo_v8": families.yolo,
    "yolox": lambda seed=0, **kw: families.yolo(seed, head="yolox", **kw),
}

#: sequence models (zoo/sequence.py): their recurrences and attention products run on the host
#: between DLA layers, so they compile with SetFlag('heterogeneous', 1); kept out of MODELS, whose
#: networks the CNN accuracy runs take one image input each
SEQUENCE_MODELS: dict[str, Callable[..., onnx.ModelProto]] = {
    "lstm_stack": sequence.lstm_stack,
    "crnn": sequence.crnn,
    "attention_recogniser": sequence.attention_recogniser,
}


def build(name: str, seed: int = 0, **kw) -> onnx.ModelProto:
    """Build the zoo model ``name`` with seeded weights."""
    try:
        builder = MODELS[name] if name in MODELS else SEQUENCE_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown zoo model {name!r}; known: {', '.join(sorted(MODELS) + sorted(SEQUENCE_MODELS))}") from None
    return builder(seed=seed, **kw)


def save(name: str, path: str | Path, seed: int = 0, **kw) -> Path:
    """Build the zoo model ``name`` and write it to ``path`` (parent directories are created)."""
    path = Path(path)
    model = build(name, seed=seed, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
