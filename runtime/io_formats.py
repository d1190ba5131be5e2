"""The SDK's flags on how data goes in and out of the card, with their meaning on the simulated DLA:

* ``no_inarrange=2``: the inputs are raw int16, already in each input's fixed-point format
  (``GetInfo('infracs')``), written to the card as they are;
* ``no_rearrange=1``: the outputs as floats in the DLA's layout, (H, W, channels padded to whole
  words), without the re-arrangement into the ONNX shape; ``no_rearrange=2``: the raw int16 values
  in the ONNX shape (the Python wrapper's int16 result arrays);
* ``breaklayer=1``: Run returns the output of every layer (layer order), read from the card
  memory after the run;
* ``dumpdir``: every write to card memory (the program image at load, each image's inputs at each
  run) as a file ``<n>_card<f>_<address>.bin`` with a line in ``writes.txt``.

``runtime.mdla`` calls these at the few places where data crosses to or from the card."""
from __future__ import annotations

import os

import numpy as np

from arch.numerics import fixed_to_float, float_to_fixed


def _error(msg: str):
    from .mdla import MDLAError
    return MDLAError(msg)


def _plain(c) -> bool:
    """A model that is one DLA program (no host stages, no host tail): its inputs and outputs are
    tensors of the card memory."""
    return not hasattr(c, "stages") and getattr(c, "host", None) is None


def input_frac(c, k: int) -> int:
    return c.memmap.tensors[c.inputs[k].tensor].frac


def infracs(c) -> list[int]:
    """Fractional bits of each input's fixed-point format (what no_inarrange=2 inputs are in)."""
    if not _plain(c):
        raise _error("this model starts or ends on the host (host stages): its inputs are not card tensors")
    return [input_frac(c, k) for k in range(len(c.inputs))]


def input_array(obj, c, k: int, a):
    """Input ``k`` as the runtime takes it (float32): with no_inarrange=2 ``a`` must be int16 in the
    input's fixed-point format, converted exactly (the DLA then gets these very values)."""
    if obj._flags["no_inarrange"] != "2" or a is None:
        return a
    a = np.asarray(a)
    if a.dtype != np.int16:
        raise TypeError(f"no_inarrange=2: input {c.inputs[k].name!r} must be raw int16 in the input's fixed-point "
                        f"format (GetInfo('infracs')), got dtype {a.dtype}")
    return a.astype(np.float32) / np.float32(2.0 ** input_frac(c, k))


def check(obj, c, outputs: bool = True) -> None:
    """Refuse, before anything runs, I/O flags the model cannot follow (``outputs``: also the flags on
    the outputs, which Run_th, the float host run, does not take)."""
    f = obj._flags
    if f["no_inarrange"] == "2" and not _plain(c):
        raise _error("no_inarrange=2 (raw int16 inputs) needs a model that is one DLA program; this one runs "
                     "host stages on its inputs or outputs (heterogeneous): pass float32 inputs")
    if not outputs:
        return
    if f["dumpdir"] and hasattr(c, "stages"):
        raise _error("dumpdir: this model runs host stages before or between its DLA stages (heterogeneous), whose "
                     "DLA inputs are made during the call; dumping them is not supported: SetFlag('dumpdir', '')")
    if (f["no_rearrange"] or f["breaklayer"] == 1) and not _plain(c):
        what = "no_rearrange" if f["no_rearrange"] else "breaklayer=1"
        raise _error(f"{what} returns card tensors, but this model runs host stages (heterogeneous or a host "
                     f"tail) that make its outputs on the host; SetFlag({what.split('=')[0]!r}, 0)")
    if f["breaklayer"] == 1 and f["no_rearrange"]:
        raise _error("breaklayer=1 returns every layer's output as float32 in the ONNX layout; "
                     "use it with no_rearrange=0")
    if f["breaklayer"] == 1 and f["workers"] == "ray":
        raise _error("breaklayer=1 reads every layer's output from the card memory, which lives in Ray actors "
                     "with workers='ray'; use workers='serial'")


def outputs(obj, c, results):
    """The results of a call (as Run returns them: float32 in the ONNX shape, an array or a list per
    output) as no_rearrange asks: 1 float32 in the DLA's layout (N, H, W, channels padded to whole
    words), 2 the raw int16 values (exact: each value is q / 2^frac)."""
    mode = obj._flags["no_rearrange"]
    single = not isinstance(results, list)
    out = []
    for o, v in zip(c.outputs, [results] if single else results):
        lay = c.memmap.tensors[o.tensor]
        q = np.rint(np.asarray(v, dtype=np.float64) * 2.0 ** lay.frac).astype(np.int16)
        if mode == 1:
            chw = q.reshape(-1, lay.channels, lay.height, lay.width)
            hwc = np.zeros(dla_layout_shape(c, lay, chw.shape[0]), dtype=np.int16)
            hwc[..., :lay.channels] = chw.transpose(0, 2, 3, 1)
            q = fixed_to_float(hwc, lay.frac).astype(np.float32)
        out.append(q)
    return out[0] if single else out


def dla_layout_shape(c, lay, batch: int) -> tuple:
    """no_rearrange=1: the shape of an output in the DLA's layout, (N, H, W, channels padded to whole words)."""
    return (batch, lay.height, lay.width, lay.cwords * c.cfg.lanes)


def _layer_tensors(c) -> list[str]:
    """breaklayer=1: the tensors Run returns, each layer's output in layer order."""
    names = []
    for layer in c.graph.layers if c.graph is not None else []:
        if layer.output not in names:
            names.append(layer.output)
    return names


def run_outputs(obj, c) -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of each array Run returns under the flags in effect, per image (a leading
    batch dimension of 1, as 'inshapes'; a call returns GetInfo('batch') images along it): the model's
    outputs (float32 in the ONNX shape; no_rearrange=1 float32 in the DLA's layout (1, H, W, padded
    channels), 2 int16), or with breaklayer=1 every layer's output (1, C, H, W); a model on unbatched
    vectors has no batch axis. What GetInfo('outshapes'), 'outnames', 'noutputs', 'noutdims',
    'outdtypes' and 'outshape' describe (the SDK's wrapper shaped its result arrays from them)."""
    f = obj._flags
    batch = 1
    if f["breaklayer"] == 1 and _plain(c):
        mm = c.memmap
        return [(t, (batch, mm.tensors[t].channels, mm.tensors[t].height, mm.tensors[t].width), "float32")
                for t in _layer_tensors(c)]
    if f["no_rearrange"] and _plain(c):
        if f["no_rearrange"] == 1:
            return [(o.name, dla_layout_shape(c, c.memmap.tensors[o.tensor], batch), "float32") for o in c.outputs]
        dtype = "int16"
    else:
        dtype = "float32"
    unbatched = c.meta.get("unbatched", False) and not getattr(c, "whole", False)
    return [(o.name, tuple(o.onnx_shape)[1:] if unbatched else tuple(o.onnx_shape), dtype) for o in c.final_outputs]


def layer_outputs(obj, c, batch: int) -> list[np.ndarray]:
    """breaklayer=1: every layer's output tensor (layer order) of the call's images, read from the
    card memory after the run, float32 (N, C, H, W)."""
    mm, p, lanes = c.memmap, c.parallel, c.cfg.lanes
    names = _layer_tensors(c)
    if not names:
        raise _error("breaklayer=1 needs the graph section of the .bin to know the layers' tensors")
    result = [[] for _ in names]
    for n in range(batch):
        card = obj._cards[p.slot(n)[0]]
        with card.lock:
            for k, t in enumerate(names):
                lay = mm.tensors[t]
                result[k].append(fixed_to_float(lay.read(card.memory, mm.tensor_addr(t, p.slot(n)[2]), lanes), lay.frac))
    return [np.stack(r).astype(np.float32) for r in result]


class Dump:
    """The files of ``dumpdir``: one per write to card memory, numbered in order, and an index."""

    def __init__(self, directory: str):
        self.dir = directory
        self.index = os.path.join(directory, "writes.txt")
        self.seq = sum(1 for _ in open(self.index)) if os.path.exists(self.index) else 0

    def write(self, card: int, addr: int, data: np.ndarray, what: str) -> None:
        name = f"{self.seq:06d}_card{card}_{addr:#010x}.bin"
        np.ascontiguousarray(data).view(np.uint8).tofile(os.path.join(self.dir, name))
        with open(self.index, "a") as f:
            f.write(f"{name} card={card} address={addr:#x} bytes={data.nbytes} {what}\n")
        self.seq += 1


def dump_load(obj, compiled, cards) -> None:
    """dumpdir: the program image written to each card at load (activations' halos, weights, code)."""
    if not obj._flags["dumpdir"]:
        return
    d = Dump(obj._flags["dumpdir"])
    base, end = compiled.memmap.base, compiled.memmap.end
    for card in cards:
        with card.lock:
            d.write(card.index, base, card.memory[base:end], "program image at load")


def dump_inputs(obj, c, arrays, batch: int) -> None:
    """dumpdir: each image's inputs as the run writes them: the whole storage of the input tensor as
    it is in card memory after the write (its halo as initialised at load)."""
    if not obj._flags["dumpdir"]:
        return
    d = Dump(obj._flags["dumpdir"])
    mm, p, cfg = c.memmap, c.parallel, c.cfg
    for n in range(batch):
        f, _, slot = p.slot(n)
        card = obj._cards[f]
        for k, i in enumerate(c.inputs):
            lay = mm.tensors[i.tensor]
            addr = mm.tensor_addr(i.tensor, slot)
            nbytes = lay.words * cfg.lanes * 2
            with card.lock:
                region = card.memory[addr:addr + nbytes].copy()
            img = arrays[k][n].reshape(lay.channels, lay.height, lay.width)
            q, _ = float_to_fixed(img, lay.frac)
            lay.write(region, 0, cfg.lanes, q)
            d.write(card.index, addr, region, f"input {i.name} of image {n}")


def random_inputs(obj, seed: int | None = None):
    """One call's inputs, uniform in [0, 1), from ``seed`` (None: the object's 'seed' flag): an array
    for a single-input model, else a list (raw int16 in each input's format with no_inarrange=2)."""
    c = obj._need()
    rng = np.random.default_rng(obj._flags["seed"] if seed is None else seed)
    batch = c.parallel.batch
    arrays = []
    for k, i in enumerate(c.inputs):
        x = rng.random((batch,) + tuple(i.onnx_shape[1:]), dtype=np.float32)
        if obj._flags["no_inarrange"] == "2":
            x, _ = float_to_fixed(x, input_frac(c, k))
        arrays.append(x)
    return arrays[0] if len(arrays) == 1 else arrays
