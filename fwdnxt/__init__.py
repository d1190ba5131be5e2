"""The FWDNXT SDK's API (2018-2019), as the older tutorial uses it, on the simulated DLA:

    import fwdnxt
    sf = fwdnxt.FWDNXT()
    snwresults = sf.Compile('224x224x3', 'model.onnx', 'fwdnxt.bin', numfpga, numclus)
    sf.Init('fwdnxt.bin', 'bitfile.bit')
    output = np.ndarray(numfpga * numclus * snwresults, dtype=np.float32)
    sf.Run(input_img, output)          # fills the preallocated output

A "bitfile" here is a hardware configuration file of this project (JSON with the fields of
``arch.machine.MachineConfig``; ``mdla hw build`` writes the matching Verilog). ``Init`` given a
bitfile that does not exist warns and uses the configuration the ``.bin`` was compiled for, since
in this world no FPGA needs programming; a bitfile that exists must describe that configuration.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from arch.machine import load_config
from runtime.mdla import MDLA, MDLAError

__all__ = ["FWDNXT"]


def _image_shape(image: str) -> tuple[int, int, int, int]:
    """'WxHxP' or 'WxHxPxB' (the old SDK's image size strings) -> (1, P, H, W)."""
    try:
        dims = [int(d) for d in str(image).lower().split("x")]
    except ValueError:
        raise ValueError(f"image size {image!r} must be 'WxHxP', e.g. '224x224x3'") from None
    if len(dims) not in (3, 4) or min(dims) < 1:
        raise ValueError(f"image size {image!r} must be 'WxHxP' (or 'WxHxPxB'), e.g. '224x224x3'")
    w, h, p = dims[:3]
    return 1, p, h, w


class FWDNXT:
    """The FWDNXT inference-engine handle: compile to a .bin, Init, Run into a preallocated array."""

    def __init__(self):
        self._ie = MDLA()

    def SetFlag(self, name, value=""):
        """Set a flag (names as in the MDLA API; 'nobatch' is the old name of clustersbatchmode)."""
        self._ie.SetFlag(name, value)

    def GetInfo(self, name):
        return self._ie.GetInfo(name)

    def Compile(self, image, modelpath, outfile, numcard=1, numclus=1, nlayers=-1):
        """Compile ``modelpath`` for images of size ``image`` ('WxHxP') on ``numcard`` cards and
        ``numclus`` clusters into ``outfile``. Returns the output size of one image (a tuple of
        sizes for a model with several outputs)."""
        if nlayers != -1:
            raise MDLAError("nlayers (compiling only the first layers) is not supported by this build")
        shape = _image_shape(image)
        self._ie.SetFlag({"nfpgas": numcard, "nclusters": numclus})
        self._ie.Compile(str(modelpath), inshapes="x".join(map(str, shape)), outfile=str(outfile))
        self._outfile = str(outfile)
        from compiler import binfile
        sizes = tuple(math.prod(o.onnx_shape[1:]) for o in binfile.read(outfile).final_outputs)
        return sizes[0] if len(sizes) == 1 else sizes

    def Compile2(self, image, modelpath, outfile, numcard=1, numclus=1, nlayers=-1):
        """Compile a second model (for another FWDNXT object, which Init puts on a card of its own)."""
        return self.Compile(image, modelpath, outfile, numcard, numclus, nlayers)

    def Init(self, infile, bitfile=""):
        """Load ``infile`` on the cards. Returns the output size of one image."""
        from compiler import binfile as bf
        compiled = bf.read(infile)
        if bitfile:
            if Path(bitfile).exists():
                cfg = load_config(bitfile)
                if cfg != compiled.cfg:
                    raise MDLAError(f"bitfile {bitfile} describes hardware configuration {cfg.name!r}, but "
                                    f"{infile} was compiled for {compiled.cfg.name!r}")
            else:
                warnings.warn(f"bitfile {bitfile!r} not found: using the {compiled.cfg.name!r} hardware "
                              f"configuration {infile} was compiled for", stacklevel=2)
        self._ie._load(compiled)
        sizes = tuple(math.prod(o.onnx_shape[1:]) for o in compiled.final_outputs)
        return sizes[0] if len(sizes) == 1 else sizes

    def Run(self, image, result):
        """Run on ``image`` (the batch's images concatenated, any shape with the right number of
        elements) and write the outputs into the preallocated float32 array ``result``."""
        c = self._ie._need()
        if not isinstance(result, np.ndarray) or result.dtype != np.float32:
            raise TypeError("Output must be float32 (a numpy float32 array allocated by the caller)")
        if not result.flags.c_contiguous:
            raise ValueError("Output must be a contiguous array")
        batch = c.parallel.batch
        per_image = math.prod(c.inputs[0].onnx_shape[1:])
        x = np.asarray(image, dtype=np.float32)
        if x.size != batch * per_image:
            raise ValueError(f"the input holds {x.size} values; this program takes {batch} image(s) of "
                             f"{per_image} values ({'x'.join(map(str, c.inputs[0].onnx_shape[1:]))})")
        y = self._ie.Run(x.reshape((batch,) + tuple(c.inputs[0].onnx_shape[1:])))
        flat = np.concatenate([a.reshape(batch, -1) for a in (y if isinstance(y, list) else [y])], axis=1).ravel()
        if result.size != flat.size:
            raise ValueError(f"the output array holds {result.size} values; this run produces {flat.size} "
                             f"({batch} image(s) x {flat.size // batch})")
        result.reshape(-1)[...] = flat

    def Free(self):
        self._ie.Free()
