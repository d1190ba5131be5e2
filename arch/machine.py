"""Machine parameters of the DLA, defined once.

A :class:`MachineConfig` is the "bitfile" of this world: it fixes how many lanes, VV units, MV units
and clusters the hardware has, how large the on-chip buffers are and how the main memory behaves.
The RTL is generated from it, the functional model simulates it, the compiler tiles for it and the
``.bin`` container records it.

Two configurations are predefined:

* ``REFERENCE``: the Snowflake/Micron DLA organisation (4 MV x 4 VV x 16 lanes = 256 MAC/cycle per
  cluster, 250 MHz, up to 4 clusters per card). Users and benchmarks run this one.
* ``SMALL``: a tiny machine (2 MV x 2 VV x 4 lanes) whose RTL simulates quickly; tests use it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MachineConfig", "REFERENCE", "SMALL", "CONFIGS", "get_config", "load_config"]


@dataclass(frozen=True)
class MachineConfig:
    """One hardware configuration. Sizes of buffers are in *words*; a word is one lane-wide vector
    of 16-bit elements (``lanes`` elements, ``beat_bytes`` bytes), which is also the unit the DMA
    moves per cycle (a *beat*)."""

    name: str
    # --- compute organisation -------------------------------------------------------------
    lanes: int = 16                 #: MACs per VV unit, elements per word/beat
    vv_per_mv: int = 4              #: VV units per MV unit (SDK: NUM_VV)
    mv_per_cluster: int = 4         #: MV units per cluster (SDK: NUM_MM)
    clusters_per_card: int = 4      #: clusters per card (SDK: maxcluster)
    max_cards: int = 4              #: simulated cards available (SDK: maxfpga)
    clock_mhz: float = 250.0        #: clock used to turn cycles into hwtime
    # --- on-chip buffers (per unit, in words) --------------------------------------------------
    maps_words: int = 4096          #: maps buffer per MV
    kernel_words: int = 2048        #: kernel (weights + bias) buffer per VV
    acc_entries: int = 256          #: accumulator entries (output pixels) per VV
    out_words: int = 1024           #: output buffer per MV
    res_words: int = 1024           #: residual buffer per MV (the second operand of a fused Add)
    # --- main memory (per card) -------------------------------------------------------------
    mem_bytes: int = 4 << 30        #: card main memory (HMC) size
    mem_latency: int = 32           #: cycles from grant to first beat (load) or to write ack (store)
    # --- control --------------------------------------------------------------------------
    queue_depth: int = 8            #: depth of each engine's instruction queue
    conv_pipeline: int = 6          #: fixed cycles a CONV adds (buffer read, multiply, accumulate, requantise, write)
    pool_pipeline: int = 3          #: fixed cycles a MAXPOOL/AVGPOOL adds (buffer read, compare or add, write)
    # --- numerics -------------------------------------------------------------------------
    data_bits: int = 16             #: activations and weights
    acc_bits: int = 48              #: accumulator (wraps; the compiler keeps reductions below 2**(acc_bits-2*data_bits+1) terms)
    bias_bits: int = 32             #: bias, stored as two words in the kernel buffer
    default_frac: int = 8           #: Q8.8 activations by default (the SDK's default bitfile)
    description: str = field(default="", compare=False)

    def __post_init__(self):
        for f in ("lanes", "vv_per_mv", "mv_per_cluster", "clusters_per_card", "max_cards",
                  "maps_words", "kernel_words", "acc_entries", "out_words", "res_words", "queue_depth"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"machine config {self.name!r}: {f} must be a positive integer, got {v!r}")
        if self.lanes & (self.lanes - 1):
            raise ValueError(f"machine config {self.name!r}: lanes must be a power of two, got {self.lanes}")
        if self.mv_per_cluster > 8 or self.vv_per_mv > 16:
            raise ValueError(f"machine config {self.name!r}: at most 8 MV units per cluster and 16 VV units per MV")
        if self.mem_latency < 1 or self.conv_pipeline < 1 or self.pool_pipeline < 1:
            raise ValueError(f"machine config {self.name!r}: latencies must be at least one cycle")
        try:      # buffers and unit counts against the ISA's address fields
            from .isa import check_address_fields
        except ImportError:     # arch.isa is loading (it imports this module): it checks CONFIGS when done
            return
        check_address_fields(self)

    # --- derived quantities (never stored, so they cannot drift) ---------------------------
    @property
    def elem_bytes(self) -> int:
        return self.data_bits // 8

    @property
    def beat_bytes(self) -> int:
        """Bytes in one word / DMA beat; also the main-memory port width per cycle."""
        return self.lanes * self.elem_bytes

    @property
    def macs_per_mv(self) -> int:
        return self.lanes * self.vv_per_mv

    @property
    def macs_per_cluster(self) -> int:
        return self.macs_per_mv * self.mv_per_cluster

    @property
    def peak_gops_per_cluster(self) -> float:
        """Peak giga-operations per second per cluster, counting a MAC as two operations (SDK convention)."""
        return 2 * self.macs_per_cluster * self.clock_mhz / 1000.0

    @property
    def max_reduction(self) -> int:
        """Longest reduction (terms per output) that cannot overflow the accumulator with a bias added."""
        return 1 << (self.acc_bits - 2 * self.data_bits - 1)

    def addr_bits(self, words: int) -> int:
        return max(1, math.ceil(math.log2(words)))

    def cycles_to_ms(self, cycles: int) -> float:
        return cycles / (self.clock_mhz * 1e3)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "MachineConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown machine config field(s) {unknown}; known: {sorted(known)}")
        if "name" not in d:
            raise ValueError("machine config needs a 'name'")
        return cls(**d)

    def summary_rows(self) -> list[tuple[str, str]]:
        """(parameter, value) rows for documentation and reports."""
        return [
            ("lanes per VV (elements per word)", str(self.lanes)),
            ("VV units per MV", str(self.vv_per_mv)),
            ("MV units per cluster", str(self.mv_per_cluster)),
            ("clusters per card", str(self.clusters_per_card)),
            ("simulated cards (maxfpga)", str(self.max_cards)),
            ("MAC/cycle per cluster", str(self.macs_per_cluster)),
            ("clock", f"{self.clock_mhz:g} MHz"),
            ("peak per cluster", f"{self.peak_gops_per_cluster:g} G-op/s"),
            ("word / beat", f"{self.beat_bytes} B"),
            ("maps buffer per MV", f"{self.maps_words} words ({self.maps_words * self.beat_bytes // 1024} KiB)"),
            ("kernel buffer per VV", f"{self.kernel_words} words ({self.kernel_words * self.beat_bytes // 1024} KiB)"),
            ("accumulators per VV", f"{self.acc_entries} x {self.lanes} x {self.acc_bits} bit"),
            ("output buffer per MV", f"{self.out_words} words ({self.out_words * self.beat_bytes // 1024} KiB)"),
            ("residual buffer per MV", f"{self.res_words} words ({self.res_words * self.beat_bytes // 1024} KiB)"),
            ("main memory per card", f"{self.mem_bytes / 2**30:g} GiB"),
            ("main memory bandwidth", f"{self.beat_bytes} B/cycle per card ({self.beat_bytes * self.clock_mhz / 1000:g} GB/s)"),
            ("main memory latency", f"{self.mem_latency} cycles"),
            ("instruction queue depth", str(self.queue_depth)),
            ("CONV pipeline", f"{self.conv_pipeline} cycles"),
            ("MAXPOOL pipeline", f"{self.pool_pipeline} cycles"),
            ("data / accumulator / bias", f"{self.data_bits} / {self.acc_bits} / {self.bias_bits} bit"),
            ("default activation format", f"Q{self.data_bits - self.default_frac}.{self.default_frac}"),
        ]


REFERENCE = MachineConfig(
    name="reference",
    description="Micron DLA / Snowflake organisation: 4 MV x 4 VV x 16 lanes per cluster, 4 clusters, 250 MHz.",
)

SMALL = MachineConfig(
    name="small",
    lanes=4, vv_per_mv=2, mv_per_cluster=2, clusters_per_card=2,
    maps_words=256, kernel_words=128, acc_entries=16, out_words=64, res_words=64,
    mem_bytes=64 << 20, mem_latency=8, queue_depth=4, conv_pipeline=6, pool_pipeline=3,
    description="Tiny machine for fast RTL simulation and tests: 2 MV x 2 VV x 4 lanes, 2 clusters.",
)

CONFIGS = {c.name: c for c in (REFERENCE, SMALL)}


def load_config(path: str | Path) -> MachineConfig:
    """Read a hardware configuration file (JSON with MachineConfig fields): the 'bitfile'."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"hardware configuration file not found: {p}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"hardware configuration file {p} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"hardware configuration file {p} must hold a JSON object")
    return MachineConfig.from_dict(d)


def get_config(name_or_path: str | MachineConfig) -> MachineConfig:
    """A predefined configuration by name ('reference', 'small') or a JSON configuration file."""
    if isinstance(name_or_path, MachineConfig):
        return name_or_path
    if name_or_path in CONFIGS:
        return CONFIGS[name_or_path]
    if Path(name_or_path).suffix == ".json" or Path(name_or_path).exists():
        return load_config(name_or_path)
    raise ValueError(f"unknown hardware configuration {name_or_path!r}; known: {sorted(CONFIGS)} or a .json file")
