"""The MDLA API: the Micron DLA SDK's Python interface, running on the simulated DLA.

    import microndla
    ie = microndla.MDLA()
    ie.SetFlag('debug', 'b')
    outnames = ie.Compile('model.onnx')
    y = ie.Run(x)            # float32 NCHW in, float32 out

``Run`` converts the input to the network's fixed-point format, writes it into the card memory
image, runs the compiled DLA program on the selected executor (the functional model by default)
and converts the result back. ``Run_sw`` always uses the functional model; ``Run_th`` runs the same
graph in float32 on the host (no fixed point), like the SDK's thnets path.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from arch.asm import disassemble
from arch.machine import get_config
from arch.numerics import fixed_to_float, float_to_fixed
from compiler import binfile
from compiler.driver import Compiled, compile_model
from compiler.ir import CompileError

from .executors import get_executor
from .flags import FlagSet

VERSION = "0.1.0"


class MDLAError(RuntimeError):
    """A call the runtime cannot honour (wrong order, missing model, unsupported mode)."""


class MDLA:
    """One handle on the simulated DLA (one card, its memory and the loaded program)."""

    def __init__(self):
        self._flags = FlagSet()
        self._compiled: Compiled | None = None
        self._memory: np.ndarray | None = None
        self._last_stats = None
        self._hwcycles = 0
        self._saturations = 0

    # ------------------------------------------------------------------ flags and info
    def SetFlag(self, name, value=""):
        """Set one flag, or several from a dict; values are coerced with str() as in the SDK."""
        if isinstance(name, dict):
            for k, v in name.items():
                self.SetFlag(k, v)
            return
        self._flags.set(name, value)

    def GetInfo(self, name: str):
        """A typed value: 'version', 'build', 'hwtime' (ms, last run), 'hwcycles', 'freq' (MHz),
        'maxcluster', 'maxfpga', 'inshapes', 'outshapes', 'innames', 'outnames', 'addroff', 'saturations',
        or the current value of any flag."""
        cfg = self._config()
        c = self._compiled
        info = {
            "version": lambda: VERSION,
            "build": lambda: f"open-mdla {VERSION}",
            "hwcycles": lambda: int(self._hwcycles),
            "hwtime": lambda: float(cfg.cycles_to_ms(self._hwcycles)),
            "freq": lambda: int(cfg.clock_mhz),
            "maxcluster": lambda: int(cfg.clusters_per_card),
            "maxfpga": lambda: int(cfg.max_cards),
            "saturations": lambda: int(self._saturations),
            "inshapes": lambda: ";".join("x".join(map(str, i.onnx_shape)) for i in self._need().inputs),
            "outshapes": lambda: ";".join("x".join(map(str, o.onnx_shape)) for o in self._need().outputs),
            "innames": lambda: ";".join(i.name for i in self._need().inputs),
            "outnames": lambda: ";".join(o.name for o in self._need().outputs),
            "addroff": lambda: int(self._need().memmap.end),
        }
        if name in info:
            return info[name]()
        if isinstance(name, str) and name in self._flags:
            return self._flags[name]
        raise ValueError(f"unknown info name {name!r}; known: {sorted(info)} and the flag names")

    # ------------------------------------------------------------------ compile and load
    def Compile(self, modelpath, inshapes=None, samples=None, MDLA=None, outfile=None, simplify=False):
        """Compile an ONNX model for the configured hardware. Returns the list of output names.

        With ``outfile`` the program is written to that ``.bin`` and ``Init`` loads it; without,
        it is loaded at once and ``Run`` can follow. ``simplify`` is accepted for compatibility:
        the front end always folds constants."""
        if MDLA is not None:
            raise MDLAError("linking a second model (Compile(..., MDLA=other)) is not supported by this build yet")
        if samples is not None:
            raise MDLAError("calibration samples (variable fixed point) are not supported by this build yet; "
                            "the default Q8.8 format is used without them")
        self._check_flags()
        if isinstance(modelpath, (list, tuple)):
            raise MDLAError("compiling a list of models into one program is not supported by this build yet")
        compiled = compile_model(modelpath, self._config(), inshapes=inshapes)
        if "n" in self._flags["debug"]:
            self._print_layers(compiled)
        if outfile is not None:
            binfile.write(compiled, outfile)
        else:
            self._load(compiled)
        return [o.name for o in compiled.outputs]

    def Init(self, infile, MDLA=None):
        """Load a compiled .bin (written by Compile(..., outfile=...))."""
        if MDLA is not None:
            raise MDLAError("linking (Init(..., MDLA=other)) is not supported by this build yet")
        compiled = binfile.read(infile)
        flag_cfg = self._config()
        if compiled.cfg != flag_cfg and self._flags["bitfile"] != "reference":
            raise MDLAError(f"{infile} was compiled for hardware configuration {compiled.cfg.name!r}, "
                            f"but the bitfile flag selects {flag_cfg.name!r}")
        self._load(compiled)

    def Free(self):
        """Release the loaded program and the card memory."""
        self._compiled = None
        self._memory = None

    def _load(self, compiled: Compiled) -> None:
        self._compiled = compiled
        self._memory = compiled.memory_image()
        if "i" in self._flags["debug"]:
            for p, prog in compiled.programs.items():
                Path(f"instr0_{p}_0.txt").write_text(disassemble(prog, with_pc=True))

    # ------------------------------------------------------------------ run
    def Run(self, images):
        """Run on the DLA (the executor chosen with the 'simulator' flag). Returns one float32 array
        for a single-output network, else a list, each with a leading batch dimension."""
        return self._run(images, self._flags["simulator"])

    def Run_sw(self, images):
        """Run on the bit-exact functional model, whatever the 'simulator' flag says."""
        return self._run(images, "functional")

    def Run_th(self, images):
        """Run the same graph in float32 on the host, no fixed point (the SDK's thnets path)."""
        from sim.golden import output_array, run_float
        c = self._need()
        if c.graph is None:
            raise MDLAError("this .bin has no graph section; Run_th needs one")
        batch = self._inputs(images, c)
        results = [[] for _ in c.outputs]
        for n in range(batch):
            feeds = {i.tensor: self._image(i, n).astype(np.float32) for i in c.inputs}
            t = run_float(c.graph, feeds)
            for k, o in enumerate(c.graph.outputs):
                results[k].append(output_array(o, t[o.tensor])[0])
        return self._pack(results)

    def _run(self, images, simulator: str):
        c = self._need()
        cfg = c.cfg
        batch = self._inputs(images, c)
        if batch != 1:
            raise ValueError(f"got a batch of {batch} images; this compilation takes 1 per call "
                             "(nfpgas x nclusters x imgs_per_cluster)")
        mem = self._memory
        mm = c.memmap
        sat = 0
        for i in c.inputs:
            lay = mm.tensors[i.tensor]
            q, over = float_to_fixed(self._image(i, 0), lay.frac)
            sat += over
            lay.write(mem, mm.tensor_addr(i.tensor), cfg.lanes, q.reshape(lay.channels, lay.height, lay.width))
        executor = get_executor(simulator)
        if self._flags["vcd"] and hasattr(executor, "vcd"):
            executor.vcd = self._flags["vcd"]
        stats = executor.run(cfg, mem, {p: mm.code_addr(p) for p in c.programs},
                             check_hazards=bool(self._flags["hazardcheck"]))
        self._last_stats = stats
        self._hwcycles = stats.cycles
        sat += sum(cs.saturations for cs in stats.clusters.values())
        self._saturations = sat
        results = []
        for o in c.outputs:
            lay = mm.tensors[o.tensor]
            q = lay.read(mem, mm.tensor_addr(o.tensor), cfg.lanes)
            results.append([fixed_to_float(q, lay.frac).reshape(o.onnx_shape[1:])])
        dbg = self._flags["debug"]
        if "w" in dbg and sat:
            print(f"warning: {sat} values saturated to the 16-bit range during this run", file=sys.stderr)
        if "b" in dbg:
            self._print_profile(stats)
        return self._pack(results)

    # ------------------------------------------------------------------ helpers
    def _config(self):
        return get_config(self._flags["bitfile"])

    def _check_flags(self):
        bad = self._flags.unsupported()
        if bad:
            raise MDLAError("flag value(s) not supported by this build yet: " + "; ".join(bad))

    def _need(self) -> Compiled:
        if self._compiled is None:
            raise MDLAError("no model loaded: call Compile(model) or Init(file.bin) before running")
        return self._compiled

    def _inputs(self, images, c: Compiled) -> int:
        """Validate inputs; keep them as float arrays of shape (N, *per-image shape). Returns N."""
        arrays = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(arrays) != len(c.inputs):
            raise ValueError(f"the network has {len(c.inputs)} input(s) "
                             f"({', '.join(i.name for i in c.inputs)}), got {len(arrays)} array(s)")
        self._arrays = []
        batch = None
        for a, i in zip(arrays, c.inputs):
            if a is None:
                raise ValueError(f"input {i.name!r} is None")
            a = np.asarray(a)
            if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
                raise TypeError(f"input {i.name!r} must be a real float array (float32), got dtype {a.dtype}")
            per = tuple(i.onnx_shape[1:])
            if a.shape == per:
                a = a[None]
            if a.shape[1:] != per:
                raise ValueError(f"input {i.name!r} must have shape (N, {', '.join(map(str, per))}) "
                                 f"or {per}, got {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"input {i.name!r} contains NaN or infinity")
            if batch is not None and a.shape[0] != batch:
                raise ValueError(f"inputs have different batch sizes ({batch} and {a.shape[0]})")
            batch = a.shape[0]
            self._arrays.append(a.astype(np.float32, copy=False))
        return batch

    def _image(self, i, n: int) -> np.ndarray:
        """Image n of input i as the (C, H, W) tensor the network's first layer reads."""
        lay = self._compiled.memmap.tensors[i.tensor]
        return self._arrays[self._compiled.inputs.index(i)][n].reshape(lay.channels, lay.height, lay.width)

    @staticmethod
    def _pack(results):
        out = [np.stack(r).astype(np.float32) for r in results]
        return out[0] if len(out) == 1 else out

    def _print_layers(self, c: Compiled) -> None:
        for lc in c.layers:
            print(f"type {lc.kind} name={lc.name} mode={lc.mode} tile={lc.tile[0]}x{lc.tile[1]} "
                  f"chunks={lc.chunks} slots={lc.slots} instr={lc.first_pc}..{lc.last_pc} macs={lc.macs}")

    def _print_profile(self, stats) -> None:
        c = self._compiled
        cfg = c.cfg
        macs = sum(l.macs for l in c.layers)
        ideal = macs / cfg.macs_per_cluster
        moved = sum(cs.bytes_loaded + cs.bytes_stored for cs in stats.clusters.values())
        print(f"Batch 1, cards 1, clusters 1 ({cfg.name}): {stats.cycles} cycles = "
              f"{cfg.cycles_to_ms(stats.cycles):.4f} ms at {cfg.clock_mhz:g} MHz; "
              f"{moved} bytes moved; ops {2 * macs}; ideal {cfg.cycles_to_ms(ideal):.4f} ms; "
              f"efficiency {ideal / max(stats.cycles, 1):.3f}")


__all__ = ["MDLA", "MDLAError", "CompileError", "VERSION"]
