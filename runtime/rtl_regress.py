"""RTL regressions, on this machine or fanned out over a Ray cluster (``mdla regress``).

* ``random``: the random programs of ``hw/random_programs.py`` (the generator of the differential
  tests: every instruction and buffer, BARRIERs, one or two clusters, random fields and memory-port
  sharing) on the RTL against the functional model: memory image, cycles and every counter must be
  equal. Program ``seed`` is always the same program (drawn from ``random.Random(seed)`` alone, not
  through hypothesis, whose draws depend on the modules imported) and the same memory contents
  (``numpy.random.default_rng(seed)``), so a mismatch reported for a seed is
  replayed anywhere with ``mdla regress random --seed S --count 1``. Programs the functional model
  finds racy are not valid programs and are counted apart, as the opt-in test discards them.
* ``network``: a whole zoo network compiled for one cluster, on the RTL against the functional
  model (the whole-network benchmark, bench/bench_resnet18_verilator.py, as one task per network).

With Ray, the seeds go out in batches, one Ray task each (one CPU); a Ray worker keeps its
Verilator builds in its node's on-disk cache (``hw.export.cache_dir``, ``MDLA_RTL_CACHE``), so a
node builds each configuration once and every later task there reuses it. Tasks are retried on
another node when theirs is lost; Ctrl-C cancels the outstanding tasks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

FIELDS = ("cycles", "instructions", "busy", "token_wait", "port_wait", "bytes_loaded", "bytes_stored",
          "macs", "mac_slots", "saturations")
SIMULATORS = ("verilator", "icarus", "amaranth")


@dataclass
class CaseResult:
    seed: int
    status: str                  #: 'pass', 'fail' (RTL and model differ), 'racy' (not a valid program), 'error'
    detail: str = ""
    cycles: int = 0
    seconds: float = 0.0
    node: str = ""


@dataclass
class Report:
    simulator: str
    results: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return not self.count("fail") and not self.count("error")

    def summary(self, replay: str = "mdla regress random --seed {seed} --count 1 --simulator {sim}") -> str:
        nodes = sorted({r.node for r in self.results if r.node})
        lines = [f"{len(self.results)} program(s) on {self.simulator} in {self.seconds:.1f} s: {self.count('pass')} passed, "
                 f"{self.count('fail')} failed, {self.count('error')} error(s), {self.count('racy')} racy ones discarded"
                 + (f"; nodes: {', '.join(nodes)}" if nodes else "")]
        for r in self.results:
            if r.status in ("fail", "error"):
                lines.append(f"  seed {r.seed}: {r.status.upper()}: {r.detail}\n    replay: "
                             + replay.format(seed=r.seed, sim=self.simulator))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# One program
# ------------------------------------------------------------------------------------------------

def random_case(seed: int, simulator: str = "verilator"):
    """(configuration, memory image, program addresses) of random program ``seed``
    (hw/random_programs.py: drawn from ``random.Random(seed)`` alone, so the same program in every
    process; for Verilator the machine is the nearer of the few builds, hw.random_programs.VERILATOR_BUILDS)."""
    from hw.random_programs import seeded_case
    return seeded_case(seed, verilator_builds=simulator == "verilator")


def run_rtl_on(simulator: str, cfg, memory: np.ndarray, programs, harness: str | None = None):
    if simulator == "amaranth":
        from hw.run import run_rtl
        return run_rtl(cfg, memory, programs)
    from hw.verilog_run import run_verilog
    return run_verilog(simulator, cfg, memory, programs, harness=harness, progress=False)


def compare(cfg, memory: np.ndarray, programs, simulator: str, harness: str | None = None) -> tuple[str, str, int]:
    """Run on the functional model and the RTL from ``memory``: (status, detail, cycles)."""
    from sim.card import SimError, run_card
    m_model, m_rtl = memory.copy(), memory.copy()
    try:
        want = run_card(cfg, m_model, programs)
    except SimError as e:
        return "racy", str(e).splitlines()[0], 0
    try:
        got = run_rtl_on(simulator, cfg, m_rtl, programs, harness)
    except Exception as e:  # noqa: BLE001 - reported with the seed
        return "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", want.cycles
    problems = []
    if got.cycles != want.cycles:
        problems.append(f"cycles: {simulator} {got.cycles} model {want.cycles}")
    for c, w in want.clusters.items():
        g = got.clusters.get(c)
        if g is None:
            problems.append(f"cluster {c}: no statistics from {simulator}")
            continue
        problems += [f"cluster {c} {f}: {simulator} {getattr(g, f)} model {getattr(w, f)}"
                     for f in FIELDS if getattr(g, f) != getattr(w, f)]
    diff = np.flatnonzero(m_model != m_rtl)
    if diff.size:
        problems.append(f"{diff.size} memory bytes differ, first at {diff[0]:#x}")
    return ("fail", "; ".join(problems), want.cycles) if problems else ("pass", "", want.cycles)


def check_seeds(seeds, simulator: str = "verilator", harness: str | None = None) -> list[CaseResult]:
    """Random programs ``seeds`` (a Ray task's body: in one process, so its builds are reused)."""
    node = _node()
    out = []
    for seed in seeds:
        t0 = time.perf_counter()
        cfg, mem, addrs = random_case(seed, simulator)
        status, detail, cycles = compare(cfg, mem, addrs, simulator, harness)
        out.append(CaseResult(seed, status, detail, cycles, time.perf_counter() - t0, node))
    return out


def check_network(name: str, size: int, simulator: str = "verilator", config: str = "reference",
                  seed: int = 0, harness: str | None = None) -> CaseResult:
    """Zoo network ``name`` at ``size`` x ``size`` compiled for one cluster of ``config``, seeded
    weights and memory ``seed``: the RTL against the functional model (a Ray task's body)."""
    import zoo
    from arch.machine import get_config
    from compiler.driver import compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    cfg = get_config(config)
    t0 = time.perf_counter()
    c = compile_graph(quantize(load_model(zoo.build(name, seed=seed, input_shape=(1, 3, size, size))), cfg), cfg)
    mem, _ = c.seeded_image(seed)
    status, detail, cycles = compare(cfg, mem, c.program_addresses(), simulator, harness)
    return CaseResult(seed, status, f"{name} {size}x{size} on {config}" + (f": {detail}" if detail else ""),
                      cycles, time.perf_counter() - t0, _node())


def _node() -> str:
    try:
        import ray
        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return ""


# ------------------------------------------------------------------------------------------------
# Many: here or on Ray
# ------------------------------------------------------------------------------------------------

def regress_random(count: int, first_seed: int = 0, simulator: str = "verilator", *, ray=False,
                   per_task: int = 10, harness: str | None = None, progress: bool = True) -> Report:
    """Random programs ``first_seed`` .. ``first_seed + count - 1``; ``ray``: False (here, one after
    another), True (a local Ray instance) or a Ray address (tasks of ``per_task`` seeds)."""
    if simulator not in SIMULATORS:
        raise ValueError(f"unknown RTL simulator {simulator!r}; known: {SIMULATORS}")
    if count < 1 or per_task < 1:
        raise ValueError(f"count and per_task must be at least 1, got {count} and {per_task}")
    _available(simulator)
    seeds = list(range(first_seed, first_seed + count))
    batches = [seeds[i:i + per_task] for i in range(0, len(seeds), per_task)]
    report = Report(simulator)
    t0 = time.perf_counter()
    from hw.progress import Bar as tqdm      # tqdm without its monitor thread
    with tqdm(total=count, unit="prog", desc=f"random programs on {simulator}", disable=not progress) as bar:
        if ray is False or ray is None:
            for b in batches:
                report.results += check_seeds(b, simulator, harness)
                bar.update(len(b))
        else:
            for results in _on_ray(ray, check_seeds, [(b, simulator, harness) for b in batches]):
                report.results += results
                bar.update(len(results))
    report.results.sort(key=lambda r: r.seed)
    report.seconds = time.perf_counter() - t0
    return report


def regress_networks(networks: list[tuple[str, int]], simulator: str = "verilator", config: str = "reference", *,
                     ray=False, harness: str | None = None) -> Report:
    """Whole networks (name, size) on the RTL against the functional model, one task each."""
    _available(simulator)
    report = Report(simulator)
    t0 = time.perf_counter()
    args = [(name, size, simulator, config, 0, harness) for name, size in networks]
    if ray is False or ray is None:
        report.results = [check_network(*a) for a in args]
    else:
        report.results = list(_on_ray(ray, check_network, args))
    report.seconds = time.perf_counter() - t0
    return report


def _available(simulator: str) -> None:
    if simulator != "amaranth":
        from hw.verilog_run import simulator_available
        why = simulator_available(simulator)
        if why:
            raise RuntimeError(f"{simulator}: {why}")


def _on_ray(ray_option, fn, arglists):
    """Yield ``fn(*args)`` of every arglist as Ray tasks finish (any order)."""
    from . import ray_cards
    address = "" if ray_option is True else str(ray_option)
    ray_cards.SESSION.acquire(ray_cards.resolve_address(address), False)
    import ray
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(fn)       # retried elsewhere if a node is lost
        pending = [task.remote(*a) for a in arglists]
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    yield ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    raise cause if isinstance(cause, BaseException) else RuntimeError(str(e)) from None
        except BaseException:
            for ref in pending:                               # Ctrl-C or an error: stop the remote work
                ray.cancel(ref, force=True)
            raise
    finally:
        ray_cards.SESSION.release()


# ------------------------------------------------------------------------------------------------
# mdla regress
# ------------------------------------------------------------------------------------------------

import click  # noqa: E402


@click.group("regress")
def regress_command():
    """RTL regressions against the functional model, here or on a Ray cluster."""


def _ray_option(f):
    return click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                        help="fan out as Ray tasks: a local Ray instance (no ADDRESS) or the cluster at ADDRESS")(f)


def _ray_value(ray_address):
    return False if ray_address is None else (True if ray_address == "local" else ray_address)


@regress_command.command("random")
@click.option("--count", default=100, show_default=True, help="programs")
@click.option("--seed", "first_seed", default=0, show_default=True, help="first program seed")
@click.option("--simulator", default="verilator", show_default=True, type=click.Choice(SIMULATORS))
@click.option("--per-task", default=10, show_default=True, help="programs per Ray task")
@_ray_option
def regress_random_command(count, first_seed, simulator, per_task, ray_address):
    """Random programs (hw/random_programs.py) on the RTL against the functional model."""
    try:
        report = regress_random(count, first_seed, simulator, ray=_ray_value(ray_address), per_task=per_task)
    except Exception as e:  # noqa: BLE001
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(1)


@regress_command.command("network")
@click.argument("networks", nargs=-1, required=True)
@click.option("--size", default=224, show_default=True, help="input height and width")
@click.option("--config", default="reference", show_default=True)
@click.option("--simulator", default="verilator", show_default=True, type=click.Choice(SIMULATORS))
@_ray_option
def regress_network_command(networks, size, config, simulator, ray_address):
    """Whole zoo NETWORKS compiled for one cluster, on the RTL against the functional model."""
    try:
        report = regress_networks([(n, size) for n in networks], simulator, config, ray=_ray_value(ray_address))
    except Exception as e:  # noqa: BLE001
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    for r in report.results:
        click.echo(f"{r.detail}: {r.status} ({r.cycles:,} cycles, {r.seconds:.1f} s{', ' + r.node if r.node else ''})")
    if not report.ok:
        raise SystemExit(1)
