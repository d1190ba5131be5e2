"""SetFlag/GetInfo flags: names, types, defaults and validation, in one table.

Values are coerced with ``str()`` as the SDK's ctypes wrapper did, then parsed by the flag's type,
so ``SetFlag('nclusters', 2)`` and ``SetFlag('nclusters', '2')`` are the same. An unknown name or a
value that does not parse raises ``ValueError`` naming the flag and what it accepts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from arch.machine import REFERENCE, get_config

DEBUG_LETTERS = {
    "b": "per-run profile (cycles, time, bytes moved, efficiency)",
    "w": "warnings, including fixed-point saturation counts per layer after each run",
    "n": "list of layers",
    "i": "dump the instructions to instr<card>_<cluster>_<program>.txt",
    "Q": "the fixed-point formats chosen per layer (variable fixed point)",
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


def _workers(v: str) -> str:
    from .workers import MODES
    if v not in MODES:
        raise ValueError(f"expects one of {', '.join(MODES)}, got {v!r}")
    if v == "ray":
        from .ray_cards import ray_installed
        if not ray_installed():
            raise ValueError("'ray' needs Ray installed: pip install 'open-mdla[ray]' (ray==2.60.0)")
    return v


def _trace_path(v: str) -> str:
    import os
    if v and (os.path.isdir(v) or not os.path.isdir(os.path.dirname(os.path.abspath(v)))):
        raise ValueError(f"expects a file path in an existing directory ('' for no trace), got {v!r}")
    return v


@dataclass(frozen=True)
class FlagSpec:
    parse: Callable[[str], object]
    default: object
    doc: str


FLAGS: dict[str, FlagSpec] = {
    "simulator": FlagSpec(_simulator, "functional",
                          "executor of Run(): functional (the vectorised model), amaranth (the RTL, cycle by cycle), icarus or verilator (the RTL exported to Verilog)"),
    "vcd": FlagSpec(str, "", "RTL executors: write the waveform of each run to this VCD file ('' for none)"),
    "bitfile": FlagSpec(_bitfile, "reference", "hardware configuration: 'reference', 'small' or a JSON file"),
    "debug": FlagSpec(_debug, "", "debug letters: " + ", ".join(f"{k}={d}" for k, d in DEBUG_LETTERS.items())),
    "nfpgas": FlagSpec(_int_range(1), 1, "cards to use"),
    "nclusters": FlagSpec(_int_range(1), 1, "clusters to use"),
    "firstcluster": FlagSpec(_int_range(0), 0, "first cluster of this object"),
    "imgs_per_cluster": FlagSpec(_int_range(1), 1, "images each cluster processes per call"),
    "clustersbatchmode": FlagSpec(_bool, 0, "1: the clusters split one image"),
    "mvbatch": FlagSpec(_bool, 0, "1: each MV unit takes its own image"),
    "blockingmode": FlagSpec(_bool, 1, "1: PutInput/GetResult wait; 0: they return at once"),
    "heterogeneous": FlagSpec(_bool, 0, "1: operators the DLA does not run may also run on the host between DLA layers (before the first and after the last they always do)"),
    "hazardcheck": FlagSpec(_bool, 1, "functional model: check that the program is free of data races"),
    "workers": FlagSpec(_workers, "auto",
                        "where the functional model runs: 'serial' (in this process, cards one after another), "
                        "'processes' (each card in a worker process of its own; the clusters of a single card "
                        "in worker processes, one per core) or 'auto' (processes when the machine has more than "
                        "one core and a call has at least 100 M MACs per card, else serial) or 'ray' (each card a Ray "
                        "actor holding its memory, on the cluster of 'ray_address' or RAY_ADDRESS, else on a local "
                        "Ray instance on the loopback address; docs/parallel.md); results are identical in every mode"),
    "ray_address": FlagSpec(str, "", "workers='ray': the Ray cluster to use ('' : RAY_ADDRESS, else a local instance started "
                                     "with the object and shut down with it)"),
    "ray_dashboard": FlagSpec(_bool, 0, "workers='ray': 1 starts the local instance's dashboard (on 127.0.0.1)"),
    "trace": FlagSpec(_trace_path, "",
                      "write a timeline of each run to this JSON file (trace event format: Perfetto, chrome://tracing; "
                      "functional and amaranth simulators; '' for none): see docs/profiling.md"),
    "tracemax": FlagSpec(_int_range(1), 200_000,
                         "instruction slices beyond which the trace merges each layer's instructions per engine"),
    "maxfpga": FlagSpec(_int_range(1, 4096), REFERENCE.max_cards, "simulated cards in the system (shared by all MDLA objects; above 64 only with workers='ray')"),
}
ALIASES = {"nobatch": "clustersbatchmode"}

#: Flags whose non-default values this build cannot honour yet, with what is missing.
NOT_YET: dict[str, str] = {}


class FlagSet:
    """The current flag values of one MDLA object."""

    def __init__(self):
        self.values = {k: s.default for k, s in FLAGS.items()}

    def set(self, name: str, value) -> None:
        if not isinstance(name, str):
            raise TypeError(f"flag name must be a string, got {type(name).__name__}")
        if name == "reset":
            self.values = {k: s.default for k, s in FLAGS.items()}
            return
        key = ALIASES.get(name, name)
        spec = FLAGS.get(key)
        if spec is None:
            raise ValueError(f"unknown flag {name!r}; known flags: {sorted(list(FLAGS) + list(ALIASES) + ['reset'])}")
        try:
            self.values[key] = spec.parse(str(value))
        except ValueError as e:
            raise ValueError(f"flag {name!r}: {e}") from None

    def __getitem__(self, name: str):
        return self.values[ALIASES.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return ALIASES.get(name, name) in self.values

    def unsupported(self) -> list[str]:
        """Flags set to values this build cannot run, as 'name=value (what is missing)'."""
        return [f"{k}={self.values[k]} ({what})" for k, what in NOT_YET.items() if self.values[k] != FLAGS[k].default]
