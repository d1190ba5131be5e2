"""SetFlag/GetInfo flags: names, types, defaults and validation, in one table.

Values are coerced with ``str()`` as the SDK's ctypes wrapper did, then parsed by the flag's type,
so ``SetFlag('nclusters', 2)`` and ``SetFlag('nclusters', '2')`` are the same. An unknown name or a
value that does not parse raises ``ValueError`` naming the flag and what it accepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from arch.machine import REFERENCE, get_config

#: Debug letters (SetFlag('debug', letters)): letter -> what it prints here. Every SDK letter is
#: listed; each one prints what this machine has of it (docs/sdk.md is generated from this table).
DEBUG_LETTERS = {
    "b": "per-run profile (cycles, time, bytes moved, efficiency)",
    "w": "warnings, including fixed-point saturation counts per layer after each run",
    "c": "memory allocation: the memory map's regions and every tensor's address, at load",
    "C": "workload distribution across cards and clusters: images, instructions and MACs of each program, at load",
    "n": "list of layers",
    "s": "partitioning strategy: each layer's tiling mode, tile and chunks (and the host/DLA stages), at load",
    "S": "simulator instruction information: instructions and busy cycles per engine of each cluster, after each run",
    "p": "list of operations: the ONNX nodes each layer runs, at load",
    "d": "accelerator debug counters of each cluster (cycles, token and memory-port waits, bytes), after each run",
    "a": "memory access pattern: every LOAD and STORE's main-memory address and length, at load",
    "r": "with comparesw: the output values that differ from the software model, after each run",
    "R": "with comparesw: every output value next to the software model's, after each run",
    "i": "dump the instructions to instr<card>_<cluster>_<program>.txt",
    "I": "intermediate code: the quantised layers with their shapes and fixed-point fields, at load",
    "t": "dynamic instruction trace: every executed instruction with its start and end cycle, after each run",
    "T": "verbose trace: as t, with every field of each instruction",
    "o": "host float run (Run_th) debug: each layer's output range",
    "Q": "the fixed-point formats chosen per layer (variable fixed point)",
    "J": "partition information written to partition.json, at load",
}

def _int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            x = int(v, 0)
        except ValueError:
            raise ValueError(f"expects an integer, got {v!r}") from None
        if x < lo or (hi is not None and x > hi):
            raise ValueError(f"expects an integer in {lo}..{hi if hi is not None else 'inf'}, got {x}")
        return x
    return parse


def _bool(v: str) -> int:
    if v.lower() in ("1", "true", "yes", "on"):
        return 1
    if v.lower() in ("0", "false", "no", "off", ""):
        return 0
    raise ValueError(f"expects 0 or 1, got {v!r}")


def _debug(v: str) -> str:
    bad = sorted(set(v) - set(DEBUG_LETTERS))
    if bad:
        raise ValueError(f"unknown debug letter(s) {bad}; known: " +
                         ", ".join(f"{k} ({d})" for k, d in DEBUG_LETTERS.items()))
    return v


def _bitfile(v: str) -> str:
    get_config(v)   # raises with the list of known configurations
    return v


def _simulator(v: str) -> str:
    from .executors import EXECUTORS
    if v not in EXECUTORS:
        raise ValueError(f"unknown simulator {v!r}; available: {sorted(EXECUTORS)}")
    return v


#: 'workers' flag values
WORKER_MODES = ("auto", "serial", "ray")

#: 'workers' values that were retired, and why (refused with the reason and the replacement)
RETIRED_WORKER_MODES = {
    "processes": "the project's own pool of worker processes was retired for Ray (issue 15: Ray's local "
                 "instance was faster on a two-card ResNet-18 Run, docs/parallel.md); "
                 "SetFlag('workers', 'ray') runs the cards as Ray actors, on a local instance on 127.0.0.1 "
                 "unless 'ray_address' or RAY_ADDRESS names a cluster",
}


def _workers(v: str) -> str:
    if v in RETIRED_WORKER_MODES:
        raise ValueError(f"{v!r} is no longer a mode: {RETIRED_WORKER_MODES[v]}")
    if v not in WORKER_MODES:
        raise ValueError(f"expects one of {', '.join(WORKER_MODES)}, got {v!r}")
    if v == "ray":
        from .ray_cards import ray_installed
        if not ray_installed():
            raise ValueError("'ray' needs Ray (ray==2.60.0, a dependency of the project): "
                             "reinstall with scripts/setup.sh or pip install -e .")
    return v


def _trace_path(v: str) -> str:
    import os
    if v and (os.path.isdir(v) or not os.path.isdir(os.path.dirname(os.path.abspath(v)))):
        raise ValueError(f"expects a file path in an existing directory ('' for no trace), got {v!r}")
    return v


def _choice(*values: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in values:
            raise ValueError(f"expects one of {', '.join(values)}, got {v!r}")
        return v
    return parse


def _fpgaid(v: str) -> str:
    if v in ("-1", "sim"):
        return v
    raise ValueError(f"{v!r} names an FPGA; this build has none: the card is simulated (-1 or 'sim')")


def _runsw(v: str) -> int:
    x = _int_range(0, 2)(v)
    if x == 2:
        raise ValueError("2 (a float run collecting quantisation statistics) cannot take effect here: "
                         "calibration is Compile(model, samples=[...])")
    return x


def _refused(parse: Callable[[str], object], default, why: str) -> Callable[[str], object]:
    """A flag of the SDK that this machine has no such thing for: its default value (what is in
    effect here) is accepted, any other is refused with ``why``."""
    def check(v: str):
        x = parse(v)
        if x != default:
            raise ValueError(f"{x!r} cannot take effect here: {why}")
        return x
    return check


def _dumpdir(v: str) -> str:
    import os
    if v and not os.path.isdir(v):
        raise ValueError(f"expects an existing directory ('' for none), got {v!r}")
    return v


@dataclass(frozen=True)
class FlagSpec:
    parse: Callable[[str], object]
    default: object
    doc: str
    #: 'compile': read by Compile/Init (refused after them with another value: Free() and compile
    #: again); 'run': read by each Run; 'system': the simulated system (all objects)
    when: str = "run"
    #: '' when the flag does here what it did on the SDK; else why only its default is accepted
    refused: str = ""


def _no(parse, default, doc: str, why: str, when: str = "compile") -> FlagSpec:
    return FlagSpec(_refused(parse, default, why), default, doc, when, why)


_SOFTWARE_ALGO = ("this compiler chooses each layer's tiling itself (debug letter 's' shows it); the SDK's "
                  "alternative convolution algorithms of the FPGA code generator do not exist here")
_NO_FPGA = "the simulated DLA runs in this process: there is no FPGA to load, poll or wait for"

FLAGS: dict[str, FlagSpec] = {
    "simulator": FlagSpec(_simulator, "functional",
                          "executor of Run(): functional (the vectorised model), amaranth (the RTL, cycle by cycle), icarus or verilator (the RTL exported to Verilog)"),
    "vcd": FlagSpec(str, "", "amaranth simulator: write the waveform of each run to this VCD file ('' for none; refused at Run with another simulator)"),
    "bitfile": FlagSpec(_bitfile, "reference", "hardware configuration: 'reference', 'small' or a JSON file; after Init, the configuration of the loaded .bin", "compile"),
    "fpgaid": FlagSpec(_fpgaid, "-1", "which FPGA to use: -1 (the first) or 'sim' select the simulated card; "
                       "510, 511, 852 are refused (no FPGA here)", "compile"),
    "debug": FlagSpec(_debug, "", "debug letters: " + ", ".join(f"{k}={d}" for k, d in DEBUG_LETTERS.items())),
    "options": FlagSpec(str, "", "option letters, each equivalent to a named flag (see OPTION_LETTERS); parsed by FlagSet.set"),
    "nfpgas": FlagSpec(_int_range(1), 1, "cards to use", "compile"),
    "nclusters": FlagSpec(_int_range(1), 1, "clusters to use", "compile"),
    "firstcluster": FlagSpec(_int_range(0), 0, "first cluster of this object", "compile"),
    "imgs_per_cluster": FlagSpec(_int_range(1), 1, "images each cluster processes per call", "compile"),
    "clustersbatchmode": FlagSpec(_bool, 0, "1: the clusters split one image", "compile"),
    "mvbatch": FlagSpec(_bool, 0, "1: each MV unit takes its own image", "compile"),
    "blockingmode": FlagSpec(_bool, 1, "1: PutInput/GetResult wait; 0: they return at once"),
    "heterogeneous": FlagSpec(_bool, 0, "1: operators the DLA does not run may also run on the host between DLA layers (before the first and after the last they always do)", "compile"),
    "hazardcheck": FlagSpec(_bool, 1, "functional model: check that the program is free of data races"),
    "workers": FlagSpec(_workers, "auto",
                        "where the cards of a Run are simulated: 'serial' (in this process, cards one after "
                        "another), 'auto' (the same: in this process, one card after another; no Ray instance is "
                        "started behind the caller's back) or 'ray' (each card a Ray actor holding its memory, on "
                        "the cluster of 'ray_address' or RAY_ADDRESS, else on a local Ray instance on the loopback "
                        "address started with the object and shut down with it; docs/parallel.md); results are "
                        "identical in every mode ('processes', the former worker-process pool, was retired for 'ray')"),
    "ray_address": FlagSpec(str, "", "workers='ray': the Ray cluster to use ('' : RAY_ADDRESS, else a local instance started "
                                     "with the object and shut down with it)"),
    "ray_dashboard": FlagSpec(_bool, 0, "workers='ray': 1 starts the local instance's dashboard (on 127.0.0.1)"),
    "trace": FlagSpec(_trace_path, "",
                      "write a timeline of each run to this JSON file (trace event format: Perfetto, chrome://tracing; "
                      "functional and amaranth simulators; '' for none): see docs/profiling.md"),
    "tracemax": FlagSpec(_int_range(1), 200_000,
                         "instruction slices beyond which the trace merges each layer's instructions per engine"),
    "maxfpga": FlagSpec(_int_range(1, 4096), REFERENCE.max_cards, "simulated cards in the system (shared by all MDLA objects; above 64 only with workers='ray')", "system"),
    # --- numerics
    "varfp": FlagSpec(_bool, 0, "1: variable fixed point (each activation tensor its own Q format): Compile then "
                                "needs calibration images (samples=); Compile with samples sets it", "compile"),
    "has_varfp": _no(_bool, 1, "the hardware has variable fixed point", "the simulated DLA always has it: the "
                     "requantising shift is a field of every CONV instruction, so there is no fixed-Q8.8 bitfile to target"),
    "int8mode": _no(_int_range(0, 4), 0, "8-bit data path modes", "the simulated DLA's data path is 16-bit "
                    "(arch.machine data_bits); it has no 8-bit mode"),
    # --- what runs
    "comparesw": FlagSpec(_bool, 0, "1: each Run also runs the bit-exact software model (Run_sw) and reports the "
                                    "largest difference (debug r/R: the values)"),
    "runsw": FlagSpec(_runsw, 0,
                      "1: Run runs the software model (Run_sw) instead of the selected simulator; 2 (float run "
                      "collecting quantisation statistics) is refused: calibration is Compile(samples=...) here"),
    "breaklayer": FlagSpec(_int_range(0, 2), 0, "1: Run returns the output of every layer (a list of float32 "
                                                "(N, C, H, W) arrays, layer order), read from the card memory after "
                                                "the run; 2: Run prints the modelled cycles of every layer (the SDK "
                                                "ran them one by one to time them; the cycle model times each "
                                                "in the whole run)"),
    "nlayers": FlagSpec(_int_range(-1), -1, "compile only the first N nodes of the ONNX graph (Constant nodes not "
                                            "counted; after the lremove dropped ones): the outputs of the last one "
                                            "become the program's outputs (-1: all)", "compile"),
    "lremove": FlagSpec(_int_range(0), 0, "drop the first N nodes of the ONNX graph (Constant nodes not counted): "
                                          "the tensors the rest read from them become the program's inputs", "compile"),
    "dumpdir": FlagSpec(_dumpdir, "", "write every write to card memory (the program image at load, each image's "
                                      "inputs at each run) as a file <n>_card<f>_<address>.bin into this directory, "
                                      "listed in its writes.txt ('' for none)"),
    "seed": FlagSpec(_int_range(0), 0, "seed of the random inputs the runtime makes up: runtime.profile.profile and "
                                       "mdla profile, mdla run without --input or --seed, random_inputs()"),
    "rand": _no(_bool, 1, "random data in built-in tests", "this build has no built-in tests with fixed data; "
                "random inputs are seeded with 'seed'", "run"),
    "no_rearrange": FlagSpec(_int_range(0, 2), 0, "outputs: 0 float in the ONNX shape; 1 float in the DLA's layout "
                                                  "(N, H, W, channels padded to words); 2 raw int16 in the ONNX shape "
                                                  "(value x 2^frac); Run and Run_sw (Run_th, the float host run, returns float32 in "
                                                  "the ONNX shape); refused at Run for models with host stages"),
    "no_inarrange": FlagSpec(_choice("0", "2"), "0", "inputs: 0 float32; 2 raw int16 already in the input's fixed-point "
                                                     "format (GetInfo('infracs'))"),
    # --- SDK flags of the FPGA code generator and driver that have no counterpart here
    "bufsmode": _no(_int_range(0, 2), 0, "program per buffer / parametric offset / patching",
                    "each image slot has its own memory here and one program per cluster serves all slots"),
    "progload": _no(_bool, 0, "progressive loading of maps", _SOFTWARE_ALGO),
    "convalgo": _no(_int_range(0, 3), 0, "convolution algorithm", _SOFTWARE_ALGO),
    "force_algo": _no(_bool, 0, "force the kernel-stationary mode", _SOFTWARE_ALGO),
    "compile_profile": _no(_bool, 0, "compile, run and keep the best option", _SOFTWARE_ALGO),
    "depthconvalgo": _no(_int_range(0, 3), 0, "depthwise convolution algorithm", _SOFTWARE_ALGO),
    "gen_loops": _no(_bool, 0, "hardware loops", "the ISA has no loop instruction (docs/isa.md)"),
    "multicu_vpadding": _no(_bool, 0, "vertical padding across compute units",
                            "padding costs nothing here: tensors carry halos (compiler/memmap.py)"),
    "optimize_computes": _no(_bool, 1, "double buffering, removing double loads",
                             "the code generator always double-buffers; there is no unoptimised mode"),
    "prune": _no(_bool, 0, "prune all-zero output planes", "the compiler keeps every output channel"),
    "hwlinear": _no(_bool, 1, "run Linear layers on the DLA", "Gemm/MatMul always run on the DLA (as convolutions)"),
    "sandbox": _no(_bool, 0, "read code from instr files instead of generating it",
                   "use ReadCode/HwRun to run hand-written assembly"),
    "initmeasure": _no(_bool, 0, "time the initial load", _NO_FPGA, "run"),
    "hwwait": _no(_bool, 0, "wait 1 s instead of polling", _NO_FPGA, "run"),
    "temporary_save": _no(_bool, 0, "cache test data on disk", "this build has no built-in tests; use dumpdir", "run"),
    "max_instruction_size": _no(_int_range(0), 0, "instruction memory bound",
                                "programs live in the card memory after the weights, without a separate bound"),
    "addroff": _no(_int_range(0), 0, "starting address in card memory",
                   "a model is placed after another with Compile(..., MDLA=other); GetInfo('addroff') reports the end"),
    "ignore_transpose": _no(_bool, 1, "drop leading/trailing Transposes (2020)",
                            "inputs and outputs are plane-major (NCHW) as the ONNX model says"),
}
ALIASES = {"nobatch": "clustersbatchmode", "remove": "lremove", "addr_off": "addroff", "max_instr": "max_instruction_size"}

#: Option letters (SetFlag('options', letters)): letter -> (flag, value), as the SDK's docs/Codes.md.
OPTION_LETTERS: dict[str, tuple[str, object]] = {
    "v": ("has_varfp", 1), "V": ("varfp", 1), "M": ("multicu_vpadding", 1), "C": ("clustersbatchmode", 1),
    "B": ("sandbox", 1), "k": ("convalgo", 1), "r": ("convalgo", 2), "K": ("convalgo", 3), "f": ("force_algo", 1),
    "d": ("rand", 0), "P": ("progload", 1), "w": ("hwwait", 1), "s": ("comparesw", 1), "S": ("runsw", 1),
    "Q": ("runsw", 2), "i": ("initmeasure", 1), "L": ("breaklayer", 2), "z": ("breaklayer", 1),
    "t": ("temporary_save", 1), "m": ("mvbatch", 1), "a": ("compile_profile", 1), "x": ("prune", 1),
    "n": ("optimize_computes", 0), "l": ("gen_loops", 1), "H": ("hwlinear", 1),
}
#: 2020 letters whose flags the SDK itself dropped
OLD_OPTION_LETTERS = {"p": "pipeline execution across clusters", "T": "two_programs", "o": "parametric_offset"}

#: 2018-2020 flags the SDK itself dropped: refused at SetFlag with what replaced them
OLD_FLAGS: dict[str, str] = {
    "two_programs": "a 2020 flag the SDK replaced by bufsmode (0: one program per input buffer)",
    "parametric_offset": "a 2020 flag the SDK replaced by bufsmode (1: parametric offset)",
    "paddingalgo": "a 2018-2020 flag the SDK dropped; the compiler chooses the padding of each layer",
    "profile": "a 2018-2020 flag the SDK dropped; use SetFlag('debug', 'b') for the per-run profile, "
               "breaklayer=2 for per-layer cycles, or `mdla profile`",
    "quantize": "a 2018-2020 flag the SDK dropped; calibrate with Compile(model, samples=[...]) (variable fixed point)",
    "print_opt": "a 2018-2020 name the SDK dropped; GetInfo('help') prints the flags and letters",
}

#: SDK flags that could have their meaning here but are not implemented in this build yet: only
#: their default is accepted (refused at SetFlag, never stored and ignored). None left.
NOT_YET: dict[str, str] = {}


class FlagSet:
    """The current flag values of one MDLA object; ``explicit``: the names the user has set."""

    def __init__(self):
        self.values = {k: s.default for k, s in FLAGS.items()}
        self.explicit: set[str] = set()

    def set(self, name: str, value) -> None:
        if not isinstance(name, str):
            raise TypeError(f"flag name must be a string, got {type(name).__name__}")
        if name == "reset":
            self.values = {k: s.default for k, s in FLAGS.items()}
            self.explicit = set()
            return
        key = ALIASES.get(name, name)
        spec = FLAGS.get(key)
        if spec is None and name in OLD_FLAGS:
            raise ValueError(f"flag {name!r}: {OLD_FLAGS[name]}")
        if spec is None:
            raise ValueError(f"unknown flag {name!r}; known flags: {sorted(list(FLAGS) + list(ALIASES) + ['reset'])}")
        if key == "options":
            self._options(str(value))
        try:
            self.values[key] = spec.parse(str(value))
        except ValueError as e:
            raise ValueError(f"flag {name!r}: {e}") from None
        self.explicit.add(key)

    def _options(self, letters: str) -> None:
        """Each option letter sets its flag (all or none: a refused letter changes nothing)."""
        staged = FlagSet()
        staged.values = dict(self.values)
        for ch in letters:
            if ch in OLD_OPTION_LETTERS:
                raise ValueError(f"flag 'options': letter {ch!r} ({OLD_OPTION_LETTERS[ch]}) was dropped by the SDK in 2021 "
                                 f"and has no counterpart here")
            if ch not in OPTION_LETTERS:
                raise ValueError(f"flag 'options': unknown letter {ch!r}; known: " +
                                 ", ".join(f"{k}={f}:{v}" for k, (f, v) in OPTION_LETTERS.items()))
            flag, v = OPTION_LETTERS[ch]
            try:
                staged.set(flag, v)
            except ValueError as e:
                raise ValueError(f"flag 'options': letter {ch!r} sets {e}") from None
        for k, v in staged.values.items():
            if v != self.values[k]:
                self.values[k] = v
                self.explicit.add(k)

    def __getitem__(self, name: str):
        return self.values[ALIASES.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return ALIASES.get(name, name) in self.values

    def unsupported(self) -> list[str]:
        """Flags set to values this build cannot run, as 'name=value (what is missing)' (none: SetFlag refuses them)."""
        return [f"{k}={self.values[k]} ({what})" for k, what in NOT_YET.items() if self.values[k] != FLAGS[k].default]
