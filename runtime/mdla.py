"""The MDLA API: the Micron DLA SDK's Python interface, running on the simulated DLA.

    import microndla
    ie = microndla.MDLA()
    ie.SetFlag({'nfpgas': 2, 'nclusters': 2})
    outnames = ie.Compile('model.onnx')
    y = ie.Run(x)            # float32 NCHW in (nfpgas x nclusters x imgs_per_cluster images), float32 out

``Run`` converts the inputs to the network's fixed-point format, writes each image into the slot
of its card and cluster in the card memory, runs the compiled programs on the selected executor
(the functional model by default; with ``SetFlag('workers', 'ray')`` the cards run in parallel
as Ray actors, see ``runtime.ray_cards``) and converts the results back. ``Run_sw`` always uses
the functional model; ``Run_th`` runs the same graph in float32 on the host, like the SDK's thnets
path. ``PutInput``/``GetResult`` stream inputs through two buffers.
"""
from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path

import numpy as np

from arch.asm import disassemble
from arch.machine import get_config
from compiler import binfile
from compiler.driver import Compiled, Parallel, image_batch
from compiler.hostops import host_evaluator
from compiler.ir import CompileError
from compiler.partition import HostStage, Staged, compile_partitioned
from compiler.memmap import align

from . import debug, io_formats, lowlevel, ray_cards, run_hooks
from .cards import POOL, CardsUnavailable
from .driver import _image, _objects_on, _run_joint
from .errors import MDLAError
from .flags import FlagSet
from .info import NoSuchInfo, get_info
from .run_flags import check_flags, parallel_for, set_flag
from .streaming import Stream, StreamClosed, StreamDeadlock

VERSION = "0.1.0"


class _Owner:
    """The identity under which an MDLA object holds cards: the pool keeps this token, which refers
    to its object only weakly, so an object nobody holds is collected and its cards freed."""

    def __init__(self, obj: "MDLA"):
        self.ref = weakref.ref(obj)


class MDLA:
    """One handle on the simulated DLA: a loaded model, the cards (and clusters) it runs on."""

    def __init__(self):
        self._flags = FlagSet()
        self._compiled: Compiled | None = None
        self._cards = []
        self._owner = _Owner(self)
        self._last_stats = []
        self._hwcycles = 0
        self._saturations = 0
        self._layer_saturations: dict[str, int] = {}     #: last Run's saturations per layer (runtime.saturation)
        self._compare: float | None = None                #: comparesw: the last run's largest difference
        self._stream = self._new_stream()
        self._low_reset()
        self._finalizer = weakref.finalize(self, POOL.release, self._owner)

    def _new_stream(self) -> Stream:
        # The stream refers to this object weakly, so that an object nobody holds is collected at
        # once and its cards go back to the pool.
        ref = weakref.ref(self)

        def execute(entry):
            obj = ref()
            if obj is None:
                raise MDLAError("the MDLA object was freed")
            obj._execute_head(entry)
        return Stream(execute, name="this MDLA object", owner=ref)

    # ------------------------------------------------------------------ flags and info
    def SetFlag(self, name, value=""):
        """Set one flag, or several from a dict; values are coerced with str() as in the SDK."""
        set_flag(self, name, value)

    def GetInfo(self, name: str):
        """A typed value: the names of ``runtime.info.INFO`` ('version', 'hwtime', 'hwcycles',
        'inshapes', 'print_flags', 'help', ...) or the value in effect of any flag."""
        try:
            return get_info(self, name)
        except NoSuchInfo as e:
            raise MDLAError(f"GetInfo({name!r}): {e}") from None

    def _bitfile_in_effect(self) -> str:
        """The 'bitfile' of the loaded program: the flag's value when it names that configuration,
        else the configuration's own name (e.g. after Init of a .bin built for another one)."""
        cfg, flag = self._compiled.cfg, self._flags["bitfile"]
        try:
            same = get_config(flag) == cfg
        except (ValueError, OSError):
            same = False
        return flag if same else cfg.name

    # ------------------------------------------------------------------ compile and load
    def Compile(self, modelpath, inshapes=None, samples=None, MDLA=None, outfile=None, simplify=False):
        """Compile an ONNX model for the configured hardware. Returns the list of output names.

        With ``outfile`` the program is written to that ``.bin`` and ``Init`` loads it; without,
        it is loaded at once and ``Run`` can follow. ``MDLA``: another, loaded object to link
        with: this model goes into the same cards' memory after the other's, on the clusters
        this object's flags select (disjoint ones run at the same time, the same ones in
        sequence). ``simplify`` is accepted for compatibility: the front end always folds
        constants. ``samples``: calibration images (a list of float32 arrays, one per image or
        a batch each; for several inputs a list of per-input lists): each activation tensor
        then gets its own Q format from a float run on them (variable fixed point), and a
        ``SaturationWarning`` names each layer whose calibrated range is close to its format's
        limit. Without samples every activation is Q8.8; weights always get a per-layer format."""
        if isinstance(modelpath, (list, tuple)):
            raise MDLAError("compiling a list of models into one program is not supported by this build yet")
        self._check_flags()
        if self._flags["varfp"] and samples is None:
            raise MDLAError("varfp=1 (variable fixed point) needs calibration images: Compile(model, samples=[...])")
        if simplify:
            from .model_prep import simplify_model
            modelpath = simplify_model(modelpath)
        cut = {"nlayers": self._flags["nlayers"], "lremove": self._flags["lremove"]}
        if cut != {"nlayers": -1, "lremove": 0}:
            from .model_prep import cut_model
            modelpath = cut_model(modelpath, **cut)
        cfg = self._config()
        parallel = self._parallel(cfg)
        base = 0
        if MDLA is not None:
            base = self._link_base(MDLA, parallel)
        compiled = compile_partitioned(modelpath, cfg, inshapes=inshapes, base=base, parallel=parallel,
                                       heterogeneous=bool(self._flags["heterogeneous"]), samples=samples)
        compiled.meta["flags"] = {"heterogeneous": self._flags["heterogeneous"], "fpgaid": self._flags["fpgaid"],
                                  "varfp": int(samples is not None), **cut}
        if "n" in self._flags["debug"]:
            self._print_layers(compiled)
        if "Q" in self._flags["debug"]:
            self._print_formats(compiled)
        if outfile is not None:
            binfile.write(compiled, outfile)
        else:
            self._load(compiled, MDLA)
        return [o.name for o in compiled.final_outputs]

    def Init(self, infile, MDLA=None):
        """Load a compiled .bin (written by Compile(..., outfile=...)), optionally linked to another object."""
        compiled = binfile.read(infile)
        flag_cfg = self._config()
        if compiled.cfg != flag_cfg and "bitfile" in self._flags.explicit:
            raise MDLAError(f"{infile} was compiled for hardware configuration {compiled.cfg.name!r}, "
                            f"but the bitfile flag selects {flag_cfg.name!r}")
        self._load(compiled, MDLA)

    # ------------------------------------------------------------------ the 2020 API, over today's calls
    def Quantize(self, image, modelpath, outfile, images, numcard=1, numclus=1):
        """2020 API: a calibrated compile to ``outfile`` (Compile(modelpath, samples=images, outfile=...)).
        ``image`` (the old size string) is ignored only in that the shapes come from the model."""
        if not images:
            raise MDLAError("No images: Quantize needs calibration images")
        self.SetFlag({"nfpgas": numcard, "nclusters": numclus})
        return self.Compile(modelpath, samples=list(images), outfile=outfile)

    def GO(self, image, modelpath, bitfile, images, result=None, numcard=1, numclus=1):
        """2020 API: compile, load and run in one call; fills ``result`` (a float32 array) when given,
        and returns the outputs."""
        self.SetFlag({"nfpgas": numcard, "nclusters": numclus})
        if bitfile:
            self.SetFlag("bitfile", bitfile)
        self.Compile(modelpath)
        y = self.Run(images)
        if result is not None:
            first = y[0] if isinstance(y, list) else y
            if result.dtype != np.float32:
                raise MDLAError("Output must be float32")
            if result.size != first.size:
                raise MDLAError(f"result has {result.size} elements; the output has {first.size}")
            result.reshape(-1)[:] = first.reshape(-1)
        return y

    def Free(self):
        """Release the loaded program and the cards it occupied (and its Ray cards, if any)."""
        self._free_model()
        ray_cards.release(self._owner)

    def _free_model(self):
        self._stream.close()
        for m in getattr(self, "_multi", []):
            m.Free()
        POOL.release(self._owner)
        self._compiled = None
        self._cards = []
        self._low_reset()

    def _low_reset(self):
        # Compile, Init, Loadmulti and Free replace (or release) the cards' contents: the buffers
        # Malloc gave and the code ReadCode wrote are gone, and their addresses may now be inside the
        # new program's memory. They are remembered as stale, so that a later use of them is refused
        # with a clear error (runtime.lowlevel) instead of reading or overwriting the new program.
        lowlevel.invalidate(self)
        self._multi: list[MDLA] = []                #: Loadmulti: the objects of the programs after the first
        self._memcard = None                        #: CreateMemcard: {'cfg', 'clusters'} of cards without a model
        self._mallocs_end: dict[int, list[int]] = {}   #: Malloc: card -> ends of its buffers
        self._mallocs: list[tuple] = []             #: Malloc: (card, start, end, name) of each buffer
        self._symbols: dict[str, int] = {}          #: Malloc: name -> address (@name in ReadCode)
        self._code: dict[int, list] = {}            #: ReadCode: address -> program

    # ------------------------------------------------------------------ low level (runtime.lowlevel)
    def ReadData(self, addr, data, card=0):
        """Copy ``data.nbytes`` bytes of card ``card``'s memory from byte address ``addr`` into ``data``."""
        lowlevel.read_data(self, addr, data, card)

    def WriteData(self, addr, data, card=0):
        """Copy the bytes of the array ``data`` into card ``card``'s memory at byte address ``addr``."""
        lowlevel.write_data(self, addr, data, card)

    def WriteWeights(self, weights, bias=None, node=-1):
        """Replace the weights (and bias) of layer ``node`` (-1: the last linear layer; an index among
        the convolution/linear layers, or a name) of the loaded program, in the program's formats."""
        lowlevel.write_weights(self, weights, bias, node)

    def CreateMemcard(self, nfpga, nclus, fbitfile=""):
        """Take ``nfpga`` cards for low-level use without a model (Malloc, ReadCode, HwRun on clusters 0..nclus-1)."""
        lowlevel.create_memcard(self, nfpga, nclus, fbitfile)

    def Malloc(self, nelements, datasize, card, name):
        """A buffer of nelements x datasize bytes on card ``card``; returns its address (``@name`` in ReadCode)."""
        return lowlevel.malloc(self, nelements, datasize, card, name)

    def ReadCode(self, filename, instr_addr):
        """Assemble the text program ``filename`` (arch.asm; ``@name`` = a Malloc'ed address) into card
        memory at ``instr_addr`` on every card; returns the machine code (int32)."""
        return lowlevel.read_code(self, filename, instr_addr)

    def HwRun(self, instr_addr, outsize=0):
        """Run the code ReadCode put at ``instr_addr`` to its END; returns (hwtime in s, bytes moved)."""
        return lowlevel.hw_run(self, instr_addr, outsize)

    def GetNonlinCoefs(self, type="relu", act_a=None, act_b=None):
        """The SDK's int16 table of NONLIN_SIZE (4096) entries of the output stage's activation ``type``
        (an arch.isa.Act name or value) over the int16 inputs (i - 2048) * 16 (runtime/lowlevel.py)."""
        return lowlevel.nonlin_coefs(type, act_a, act_b)

    def Loadmulti(self, bins):
        """Load several .bin programs on this object, resident together on its cards (each one after the
        others; one compiled to start at 0 is laid out again there from its graph section). ``Run``
        then takes the inputs of every program in order and returns the outputs of every program."""
        import copy
        if isinstance(bins, (str, os.PathLike)) or not isinstance(bins, (list, tuple)) or not bins:
            raise MDLAError("Loadmulti: bins must be a non-empty list of .bin paths")
        compiled = [binfile.read(b) for b in bins]
        for b, c in zip(bins[1:], compiled[1:]):
            if c.cfg != compiled[0].cfg or c.parallel.nfpgas != compiled[0].parallel.nfpgas:
                raise MDLAError(f"Loadmulti: {b} was compiled for {c.cfg.name!r} on {c.parallel.nfpgas} card(s), "
                                f"{bins[0]} for {compiled[0].cfg.name!r} on {compiled[0].parallel.nfpgas}")
        self.Init(bins[0])
        members = []
        try:
            for c in compiled[1:]:
                end = align(max(r.memmap.end for r in self._residents(self)))
                if c.memmap.base < end:
                    c = lowlevel.relocate(c, end)
                m = MDLA()
                m._flags = copy.deepcopy(self._flags)
                m._load(c, self)
                m._flags = self._flags           # one set of flags: a run flag set later applies to every program
                members.append(m)
        except BaseException:
            for m in members:
                m.Free()
            self._free_model()
            raise
        self._multi = members

    def _run_multi(self, images, simulator: str | None = None):
        """Run of a Loadmulti object: each program on its share of ``images``, one after another."""
        objs = [self] + self._multi
        arrays = list(images) if isinstance(images, (list, tuple)) else [images]
        need = [len(o._compiled.inputs) for o in objs]
        if len(arrays) != sum(need):
            raise ValueError(f"Loadmulti: the {len(objs)} programs take {sum(need)} input(s) ({need}), "
                             f"got {len(arrays)}")
        outs, cycles, k = [], 0, 0
        for o, n in zip(objs, need):
            part = arrays[k:k + n]
            k += n
            r, cyc = run_hooks.joint(_run_joint, [(o, part if n > 1 else part[0])], simulator)[0]
            outs += r if isinstance(r, list) else [r]
            cycles += cyc
        self._hwcycles = cycles
        return outs


    def _parallel(self, cfg) -> Parallel:
        return parallel_for(self._flags, cfg)

    @staticmethod
    def _residents(other: "MDLA") -> list[Compiled]:
        return [o._compiled for o in _objects_on(other._cards)]

    def _link_base(self, other: "MDLA", parallel: Parallel) -> int:
        if not isinstance(other, MDLA) or other._compiled is None:
            raise MDLAError("Compile(..., MDLA=other): the other object must already have a model loaded")
        self._check_link(other, parallel)
        return align(max([c.memmap.end for c in self._residents(other)]
                         + [e for o in _objects_on(other._cards) for ends in o._mallocs_end.values() for e in ends]))

    def _check_link(self, other: "MDLA", parallel: Parallel) -> None:
        oc = other._compiled
        if parallel.nfpgas != oc.parallel.nfpgas:
            raise MDLAError(f"a linked model must use the same cards: nfpgas={parallel.nfpgas} here, "
                            f"{oc.parallel.nfpgas} in the object linked to")
        mine = set(parallel.clusters)
        for c in self._residents(other):
            theirs = set(c.parallel.clusters)
            if mine & theirs and mine != theirs:
                raise MDLAError(f"clusters {sorted(mine)} overlap clusters {sorted(theirs)} of a linked model: "
                                f"linked models use either disjoint clusters (set firstcluster) or the same ones")

    def _load(self, compiled: Compiled, link: "MDLA | None" = None) -> None:
        self._free_model()
        self._stream = self._new_stream()
        if link is not None:
            if not isinstance(link, MDLA) or link._compiled is None:
                raise MDLAError("the object to link to must already have a model loaded")
            if link._compiled.cfg != compiled.cfg:
                raise MDLAError("linked models must be compiled for the same hardware configuration")
            self._check_link(link, compiled.parallel)
            ends = [c.memmap.end for c in self._residents(link)]
            if compiled.memmap.base < max(ends):
                raise MDLAError(f"this model's memory starts at {compiled.memmap.base:#x}, inside the memory of a "
                                f"model already on those cards (which ends at {max(ends):#x}); compile it with "
                                f"Compile(..., MDLA=other) so that it is placed after")
            cards = link._cards
            POOL.share(cards, self._owner)
        else:
            if compiled.memmap.base != 0:
                raise MDLAError("this .bin was compiled to follow another model in memory: Init it with MDLA=that object")
            try:
                cards = POOL.allocate(compiled.parallel.nfpgas, self._owner)
            except CardsUnavailable as e:
                raise MDLAError(str(e)) from None
        image = compiled.memory_image()
        base = compiled.memmap.base
        for card in cards:
            with card.lock:
                card.ensure(compiled.memmap.end)
                card.memory[base:compiled.memmap.end] = image[base:]
        self._compiled = compiled
        self._cards = cards
        self._host_ev = None
        self._host_evs = {}
        if compiled.host is not None:
            self._host_ev = host_evaluator(compiled.host.model)
        for k, stage in enumerate(getattr(compiled, "stages", [])):
            if isinstance(stage, HostStage):
                self._host_evs[k] = host_evaluator(stage.model)
        if "i" in self._flags["debug"]:
            # one file per card, cluster and program (a DLA stage of a model with host stages is a program)
            segments = compiled.segments if isinstance(compiled, Staged) else [compiled]
            for card in cards:
                for k, seg in enumerate(segments):
                    for p, prog in seg.programs.items():
                        Path(f"instr{card.index}_{p}_{k}.txt").write_text(disassemble(prog, with_pc=True))
        debug.at_load(self)
        io_formats.dump_load(self, compiled, cards)

    # ------------------------------------------------------------------ run
    def Run(self, images):
        """Run on the DLA (the executor chosen with the 'simulator' flag). Returns one float32 array
        for a single-output network, else a list, each with a leading batch dimension."""
        if self._flags["runsw"]:
            return self.Run_sw(images)
        if self._multi:
            return self._run_multi(images)
        results, cycles = self._run_call(images)
        if self._flags["comparesw"]:
            self._compare_with_software(images, results)
        return results

    def _compare_with_software(self, images, results) -> None:
        """comparesw=1: the same call on the bit-exact software model; the largest difference is
        printed and kept (GetInfo('comparesw_error')). The last run's statistics stay the DLA's."""
        kept = (self._hwcycles, self._saturations, self._last_stats, dict(self._layer_saturations))
        self._quiet_debug = True                 # the debug printing is the DLA run's
        try:
            sw = self.Run_sw(images)
        finally:
            self._quiet_debug = False
        self._hwcycles, self._saturations, self._last_stats, self._layer_saturations = kept
        a = results if isinstance(results, list) else [results]
        b = sw if isinstance(sw, list) else [sw]
        self._compare = max(float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0 for x, y in zip(a, b))
        debug.compare(self, [o.name for o in self._compiled.final_outputs], a, b)
        print(f"comparesw: largest |DLA - software model| = {self._compare:g}"
              + (" (identical)" if self._compare == 0 else ""), file=sys.stderr)

    def Run_sw(self, images):
        """Run on the bit-exact functional model, whatever the 'simulator' flag says."""
        if self._multi:
            return self._run_multi(images, simulator="functional")
        results, _ = self._run_call(images, simulator="functional")
        return results

    def Run_th(self, images):
        """Run the same graph in float32 on the host, no fixed point (the SDK's thnets path)."""
        from sim.golden import output_array, run_float
        c = self._need()
        if isinstance(c, Staged):
            return self._run_th_staged(images)
        if c.graph is None:
            raise MDLAError("this .bin has no graph section; Run_th needs one")
        arrays, batch = self._inputs(images, c, any_batch=True)
        results = [[] for _ in c.graph.outputs]
        for n in range(batch):
            feeds = {i.tensor: _image(c, arrays, k, n) for k, i in enumerate(c.inputs)}
            t = run_float(c.graph, feeds)
            debug.th_layer_ranges(self, c.graph, t, n)
            for k, o in enumerate(c.graph.outputs):
                results[k].append(output_array(o, t[o.tensor])[0])
        return self._pack(self._finish(results))

    def _run_th_staged(self, images):
        """Run_th of a model with host stages: the DLA stages' graphs in float32, the host stages as in Run."""
        from sim.golden import output_array, run_float
        c = self._need()
        if c.whole:
            return c.run_whole(images)
        if any(s.graph is None for s in c.segments):
            raise MDLAError("this .bin has no graph section; Run_th needs one")
        arrays, batch = self._inputs(images, c, any_batch=True)

        def dla(k, seg, env):
            for e in env:
                feeds = {i.tensor: e[i.name].reshape(seg.graph.tensors[i.tensor].shape) for i in seg.inputs}
                t = run_float(seg.graph, feeds)
                debug.th_layer_ranges(self, seg.graph, t, k)
                for o in seg.graph.outputs:
                    e[o.name] = output_array(o, t[o.tensor])
        return self._pack(self._stages(c, arrays, batch, dla))

    def _stages(self, c: Staged, arrays, batch: int, run_dla) -> list[list[np.ndarray]]:
        """Run the stages of ``c`` in order over the images of a call; ``run_dla(k, segment, env)``
        runs DLA stage k, reading and adding tensors (ONNX shapes, batch 1) in each image's ``env``.
        Returns the model's outputs (per output, per image)."""
        env = [{i.name: arrays[k][n][None] for k, i in enumerate(c.inputs)} for n in range(batch)]
        for k, stage in enumerate(c.stages):
            if isinstance(stage, HostStage):
                ev = self._host_evs[k]
                for e in env:
                    feeds = {i: e[i].astype(np.float32) if e[i].dtype.kind == "f" else e[i] for i in stage.inputs}
                    values = ev.run(stage.outputs, feeds)
                    e.update((name, np.asarray(v)) for name, v in zip(stage.outputs, values))
            else:
                run_dla(k, stage, env)
        return [[np.asarray(e[o.name], dtype=np.float32).reshape(o.onnx_shape[1:]) for e in env] for o in c.outputs]

    def PutInput(self, images, userobj):
        """Queue one call's inputs (None: end-of-stream marker) with a user object; returns False when
        both input buffers are busy and 'blockingmode' is 0."""
        c = self._need()
        if self._multi:
            raise MDLAError("PutInput: an object with several programs (Loadmulti) runs them with Run")
        if images is not None:
            # The SDK copied the inputs into its buffer here: the caller may refill its array at once.
            images = _copy_inputs(images)
            self._inputs(images, c)          # bad input is reported here, not at GetResult
        try:
            return self._stream.put(images, userobj, bool(self._flags["blockingmode"]))
        except (StreamDeadlock, StreamClosed) as e:
            raise MDLAError(str(e)) from None

    def GetResult(self):
        """(results, userobj) of the oldest queued call, in the form Run returns (None for the
        end-of-stream marker); None when nothing is ready and 'blockingmode' is 0."""
        try:
            r = self._stream.get(bool(self._flags["blockingmode"]))
        except (StreamDeadlock, StreamClosed) as e:
            raise MDLAError(str(e)) from None
        if r is not None and r[0] is not None:
            self._hwcycles = self._stream.last_cycles
        return r

    def _run_call(self, images, simulator: str | None = None):
        """One call of this object alone; returns (results, modelled cycles)."""
        return run_hooks.joint(_run_joint, [(self, images)], simulator)[0]

    def _execute_head(self, entry) -> None:
        """Run this object's oldest queued call together with the oldest queued calls of the models
        linked on other, disjoint clusters of the same cards: they run at the same time on the card,
        sharing its memory port, as the hardware would run them."""
        group = [(self, entry)]
        used = set(self._compiled.parallel.clusters)
        for other in _objects_on(self._cards) if not isinstance(self._compiled, Staged) else []:
            clusters = set(other._compiled.parallel.clusters)
            if other is self or clusters & used or isinstance(other._compiled, Staged):
                continue
            claimed = other._stream.claim_head()
            if claimed is not None:
                group.append((other, claimed))
                used |= clusters
        try:
            outcomes = run_hooks.joint(_run_joint, [(obj, e.images) for obj, e in group])
        except BaseException as err:  # noqa: BLE001 - each caller's GetResult raises it
            for obj, e in group:
                obj._stream.complete(e, None, 0, err)
            return
        for (obj, e), (results, cycles) in zip(group, outcomes):
            obj._stream.complete(e, results, cycles, None)

    # ------------------------------------------------------------------ helpers
    def _config(self):
        return self._compiled.cfg if self._compiled is not None else get_config(self._flags["bitfile"])

    def _check_flags(self):
        check_flags(self._flags)

    def _need(self) -> Compiled:
        if self._compiled is None:
            raise MDLAError("no model loaded: call Compile(model) or Init(file.bin) before running")
        return self._compiled

    def _inputs(self, images, c: Compiled, any_batch: bool = False) -> tuple[list[np.ndarray], int]:
        """Validated inputs as float32 arrays of shape (N, *per-image shape), and N."""
        io_formats.check(self, c, outputs=not any_batch)
        if getattr(c, "whole", False):          # a model the host runs whole: its own shapes and types
            return c.whole_inputs(images), 1
        arrays = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(arrays) != len(c.inputs):
            raise ValueError(f"the network has {len(c.inputs)} input(s) "
                             f"({', '.join(i.name for i in c.inputs)}), got {len(arrays)} array(s)")
        out, batch = [], None
        expected = c.parallel.batch
        for k, (a, i) in enumerate(zip(arrays, c.inputs)):
            if a is None:
                raise ValueError(f"input {i.name!r} is None")
            a = io_formats.input_array(self, c, k, a)
            a = image_batch(a, tuple(i.onnx_shape[1:]), f"input {i.name!r}")
            if batch is not None and a.shape[0] != batch:
                raise ValueError(f"inputs have different batch sizes ({batch} and {a.shape[0]})")
            batch = a.shape[0]
            out.append(a)
        if not any_batch and batch != expected:
            p = c.parallel
            per = (f"nfpgas {p.nfpgas} x imgs_per_cluster {p.imgs_per_cluster}; the {len(p.clusters)} clusters "
                   f"split each image" if p.split else f"nfpgas {p.nfpgas} x clusters {len(p.clusters)} x "
                   f"imgs_per_cluster {p.imgs_per_cluster}")
            raise ValueError(f"got a batch of {batch} image(s); this compilation takes {expected} per call ({per})")
        return out, batch

    def _finish(self, per_output: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """The model's outputs from the DLA's (per output, per image): the host tail, if any, runs on
        each image's DLA outputs, and the outputs come back in the model's order."""
        c = self._compiled
        names = [o.name for o in c.outputs]
        if c.host is None:
            return per_output
        dla = dict(zip(names, per_output))
        host = {o.name: [] for o in c.host.outputs}
        for n in range(len(per_output[0])):
            feeds = {b: dla[b][n][None].astype(np.float32) for b in c.host.inputs}
            for o, v in zip(c.host.outputs, self._host_ev.run([o.name for o in c.host.outputs], feeds)):
                host[o.name].append(np.asarray(v, dtype=np.float32).reshape(o.onnx_shape[1:]))
        return [dla[n] if n in dla else host[n] for n in (c.output_order or names)]

    def _pack(self, results):
        out = [np.stack(r).astype(np.float32) for r in results]
        if self._compiled is not None and self._compiled.meta.get("unbatched") and all(len(r) == 1 for r in results):
            out = [o[0] for o in out]      # a model on unbatched vectors: one call, no batch axis (lift1d)
        return out[0] if len(out) == 1 else out

    def _print_layers(self, c) -> None:
        from .profile import host_line, layer_lines
        program = 0
        for stage in getattr(c, "stages", [c]):
            if isinstance(stage, HostStage):
                print(host_line(stage.nodes, stage.inputs, stage.outputs, stage.position))
                continue
            for line, lc in zip(layer_lines(stage), stage.layers):
                print(f"{line}  # {lc.mode} tile={lc.tile[0]}x{lc.tile[1]} chunks={lc.chunks} slots={lc.slots} "
                      f"pc={lc.first_pc}..{lc.last_pc}" + (f" program={program}" if isinstance(c, Staged) else ""))
            program += 1
        if getattr(c, "host", None) is not None:
            print(host_line(c.host.nodes, c.host.inputs, [o.name for o in c.host.outputs], "tail"))

    def _report_saturations(self, total: int, cluster_stats: list, input_sat: int) -> None:
        """Debug 'w': the values clipped to the 16-bit range in the last run, per layer where the
        executor counts them per instruction (the functional model does)."""
        if not total:
            return
        c = self._compiled
        print(f"warning: {total} values saturated to the 16-bit range during this run", file=sys.stderr)
        if total - input_sat:
            per_layer: dict[int | None, int] = {}
            counted = 0
            for cs, cl in cluster_stats:
                for pc, n in cs.saturations_by_pc.items():
                    k = c.layer_at(cl, pc)
                    per_layer[k] = per_layer.get(k, 0) + n
                    counted += n
            if counted != total - input_sat:
                print("warning:   (this executor counts saturations per run, not per layer)", file=sys.stderr)
            for k, n in sorted(per_layer.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
                where = f"layer {c.layers[k].name} ({c.layers[k].kind})" if k is not None else "outside any layer"
                print(f"warning:   {where}: {n} values saturated", file=sys.stderr)
        if input_sat:
            print(f"warning:   inputs: {input_sat} values saturated converting them to fixed point", file=sys.stderr)

    def _print_formats(self, c: Compiled) -> None:
        """Debug 'Q': each layer's activation formats (and a Conv's weight format)."""
        g = c.graph
        bits = c.cfg.data_bits

        def q(frac: int) -> str:
            return f"Q{bits - frac}.{frac}"
        mode = "variable fixed point (calibrated)" if c.meta.get("varfp") else "fixed point"
        print(f"Formats ({mode}):")
        for gi in g.inputs:
            print(f"  input {gi.name}: {q(g.tensors[gi.tensor].frac)}")
        for layer in g.layers:
            w = f" weights {q(layer.w_frac)}" if getattr(layer, "w_frac", None) is not None else ""
            print(f"  {layer.name} ({type(layer).__name__}): in {q(g.tensors[layer.input].frac)} "
                  f"out {q(g.tensors[layer.output].frac)}{w}")

    def _print_profile(self, batch: int) -> None:
        c = self._compiled
        cfg, p = c.cfg, c.parallel
        macs = sum(l.macs for l in c.layers) * batch
        peak = cfg.macs_per_cluster * len(p.clusters) * p.nfpgas
        ideal = macs / peak
        cycles = self._hwcycles
        moved = sum(cs.bytes_loaded + cs.bytes_stored for s in self._last_stats for cs in s.clusters.values())
        print(f"Batch {batch}, cards {p.nfpgas}, clusters {len(p.clusters)} ({cfg.name}); bytes moved {moved}; "
              f"ops {2 * macs}; modelled {cfg.cycles_to_ms(cycles):.4f} ms ({cycles} cycles at {cfg.clock_mhz:g} MHz); "
              f"ideal at peak {cfg.cycles_to_ms(ideal):.4f} ms; efficiency {ideal / max(cycles, 1):.3f}")


def _refused(name: str, why: str):
    def method(self, *args, **kwargs):
        raise MDLAError(f"{name}: {why}")
    method.__name__ = name
    method.__doc__ = f"The SDK's {name}, refused here: {why}."
    return method


def _add_refused_methods() -> None:
    """The SDK methods this build has no implementation for (docs/sdk.md, runtime.sdkdoc.METHODS)
    exist and raise MDLAError saying why, rather than AttributeError."""
    from .sdkdoc import refused_methods
    for name, why in refused_methods().items():
        if not hasattr(MDLA, name):
            setattr(MDLA, name, _refused(name, why))


def _copy_inputs(images):
    """The call's inputs as arrays of their own (one, or a list for several inputs), so that the
    caller's buffers are free to reuse as soon as PutInput returns."""
    if isinstance(images, (list, tuple)):
        return [None if a is None else np.array(a, copy=True) for a in images]
    return np.array(images, copy=True)


_add_refused_methods()

__all__ = ["MDLA", "MDLAError", "CompileError", "VERSION"]
