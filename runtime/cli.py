"""The ``mdla`` command line: build zoo models, compile, run, disassemble, and the demo.

    mdla demo                         # the main job: the tutorials' blocks on the functional model, with a report
    mdla zoo small_cnn -o cnn.onnx    # write a model built locally with seeded weights
    mdla compile cnn.onnx -o cnn.bin  # compile to a .bin
    mdla run cnn.bin                  # run on random input, report cycles and accuracy
    mdla profile cnn.onnx -o p.png --trace t.json   # per-layer table, roofline, timeline
    mdla disasm cnn.bin               # print the program as text assembly
    mdla hw build --config small -o dla.v   # write the card's Verilog
    mdla infer r18.onnx --input imgs.npy --output out.npy --reference [--ray [ADDRESS]]   # a data set
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import click
import numpy as np


def _fail(e: Exception):
    raise click.ClickException(f"{type(e).__name__}: {e}")


def flag_values(flags) -> dict[str, str]:
    """The ``NAME=VALUE`` items of the repeated --flag option as a dict (in order); ValueError for an
    item without '='. Shared by every command that takes --flag (``mdla infer`` too)."""
    values = {}
    for f in flags:
        if "=" not in f:
            raise ValueError(f"--flag expects NAME=VALUE, got {f!r}")
        k, v = f.split("=", 1)
        values[k] = v
    return values


def _set_flags(ie, flags) -> None:
    """SetFlag for each ``NAME=VALUE`` of the repeated --flag option."""
    for k, v in flag_values(flags).items():
        ie.SetFlag(k, v)


def _load(ie, p, model: str, flags, trace_json, config=None, config_for_bin: bool = True, onnx_flags=None) -> None:
    """The first step of `mdla run` and `mdla profile`: the trace flag, the --flag values, then Init of
    a .bin or Compile of an ONNX model. ``config`` sets 'bitfile' (for a .bin only when
    ``config_for_bin``: Init then checks it against the file's); ``onnx_flags`` are set before Compile only."""
    is_bin = model.endswith(".bin")
    p.step(f"loading {Path(model).name}" if is_bin else f"compiling {Path(model).name}")
    if trace_json:
        ie.SetFlag("trace", trace_json)
    _set_flags(ie, flags)
    if config and (config_for_bin or not is_bin):
        ie.SetFlag("bitfile", config)
    if is_bin:
        ie.Init(model)
    else:
        ie.SetFlag(onnx_flags or {})
        ie.Compile(model)


def _trace_written(trace_json) -> None:
    if trace_json:
        click.echo(f"wrote the timeline to {trace_json} (open it in https://ui.perfetto.dev or chrome://tracing)")


def _writable(path: str, what: str) -> None:
    """Refuse, before any work, an output path whose directory does not exist (or that is a directory)."""
    import os
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise click.UsageError(f"{what} {path!r} is a directory; give a file name")
    if not os.path.isdir(d):
        raise click.UsageError(f"{what} {path!r}: the directory {d!r} does not exist")
    if not os.access(d, os.W_OK):
        raise click.UsageError(f"{what} {path!r}: the directory {d!r} is not writable")


def _steps(total: int, desc: str):
    from .progress import Steps
    return Steps(total, desc)


class _ZooCommand(click.Command):
    """`mdla zoo --help` lists the models (the zoo is imported only for the help)."""

    def format_epilog(self, ctx, formatter):
        import zoo as z
        with formatter.section("Models"):
            formatter.write_dl([(name, _first_sentence(fn.__doc__))
                                for name, fn in sorted({**z.MODELS, **z.SEQUENCE_MODELS}.items())])


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return text.split(". ")[0].rstrip(".")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("open-mdla")
    except PackageNotFoundError:
        return "0.1.0"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "-V", "--version", prog_name="mdla")
def main():
    """Open Micron DLA: compile ONNX models and run them on the simulated DLA."""


@main.command(cls=_ZooCommand)
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="ONNX file to write (default NAME.onnx; "
              "missing parent directories are created)")
@click.option("--seed", default=0, show_default=True, help="weight seed")
def zoo(name, output, seed):
    """Write zoo model NAME (listed below) as ONNX (no download: built with onnx.helper and seeded weights)."""
    path = Path(output or f"{name}.onnx").absolute()
    for parent in path.parents:                 # the first existing ancestor must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise click.UsageError(f"cannot write {output}: {str(parent)!r} is a file, not a directory")
            break
    import zoo as z
    try:
        with _steps(1, "mdla zoo") as p:
            p.step(f"building {name}")
            path = z.save(name, output or f"{name}.onnx", seed=seed)
    except (ValueError, OSError) as e:          # unknown name; a path under a file, no permission, ...
        _fail(e)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help=".bin file to write")
@click.option("--config", default="reference", show_default=True, help="hardware configuration (name or JSON file)")
@click.option("--inshapes", default=None, help="input shape(s), e.g. 1x3x224x224 (';' between inputs)")
@click.option("--heterogeneous", is_flag=True, help="run operators the DLA does not run on the host between DLA layers too")
@click.option("--samples", "samples_npy", type=click.Path(exists=True, dir_okay=False), default=None,
              help="calibration images, a .npy batch (N, C, H, W): variable fixed point instead of Q8.8")
@click.option("--nfpgas", type=click.IntRange(min=1), default=None, help="cards each call runs on (SDK flag nfpgas)")
@click.option("--nclusters", type=click.IntRange(min=1), default=None, help="clusters of each card (nclusters)")
@click.option("--firstcluster", type=click.IntRange(min=0), default=None, help="first cluster used (firstcluster)")
@click.option("--imgs-per-cluster", type=click.IntRange(min=1), default=None,
              help="images each cluster takes per call (imgs_per_cluster)")
@click.option("--clustersbatchmode", is_flag=True, default=None, help="the clusters split each image (clustersbatchmode=1)")
@click.option("--mvbatch", is_flag=True, default=None, help="each MV unit takes its own image (mvbatch=1)")
@click.option("-f", "--flag", "flags", multiple=True, metavar="NAME=VALUE", help="SetFlag before compiling (repeatable)")
def compile(model, output, config, inshapes, heterogeneous, samples_npy, nfpgas, nclusters, firstcluster,
            imgs_per_cluster, clustersbatchmode, mvbatch, flags):
    """Compile an ONNX MODEL to a .bin for the chosen hardware configuration and batching."""
    _writable(output, "--output")
    from runtime.mdla import MDLA
    ie = MDLA()
    try:
        with _steps(2, "mdla compile") as p:
            p.step("loading the runtime")
            ie.SetFlag("bitfile", config)
            ie.SetFlag("heterogeneous", int(heterogeneous))
            parallel = {"nfpgas": nfpgas, "nclusters": nclusters, "firstcluster": firstcluster,
                        "imgs_per_cluster": imgs_per_cluster, "clustersbatchmode": clustersbatchmode, "mvbatch": mvbatch}
            for k, v in parallel.items():
                if v is not None:
                    ie.SetFlag(k, int(v))
            _set_flags(ie, flags)
            samples = np.load(samples_npy) if samples_npy else None
            p.step(f"compiling {Path(model).name}")
            t0 = time.perf_counter()
            names = ie.Compile(model, inshapes=inshapes, outfile=output, samples=samples)
    except Exception as e:  # noqa: BLE001 - report any user-facing error cleanly
        _fail(e)
    g = ie.GetInfo
    click.echo(f"compiled {model} -> {output} in {time.perf_counter() - t0:.2f} s; outputs: {', '.join(names)}; "
               f"{g('nfpgas')} card(s) x clusters {g('firstcluster')}..{g('firstcluster') + g('nclusters') - 1} x "
               f"{g('imgs_per_cluster')} image(s) per cluster" + (" (the clusters split each image)"
                                                                 if g('clustersbatchmode') else ""))


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", default=None, help="hardware configuration (default reference; for a .bin, checked against it)")
@click.option("--simulator", default=None, help="executor of the run: functional, amaranth, icarus or verilator")
@click.option("-f", "--flag", "flags", multiple=True, metavar="NAME=VALUE", help="SetFlag before loading (repeatable)")
@click.option("--input", "input_npy", type=click.Path(exists=True, dir_okay=False), help="input .npy (default random)")
@click.option("--seed", type=int, default=None, help="seed of the random input (default: the seed flag, 0)")
@click.option("--heterogeneous", is_flag=True, help="ONNX model: run unsupported operators between DLA layers on the host")
@click.option("--trace", "trace_json", type=click.Path(dir_okay=False), default=None,
              help="write the run's timeline to this JSON file (Perfetto, chrome://tracing; docs/profiling.md)")
def run(model, config, simulator, flags, input_npy, seed, heterogeneous, trace_json):
    """Run an ONNX MODEL or a compiled .bin on the simulated DLA and report."""
    from runtime.mdla import MDLA
    from runtime.saturation import SaturationWarning
    from runtime.io_formats import random_inputs
    ie = MDLA()
    try:
        with _steps(3, "mdla run") as p:
            if simulator:
                ie.SetFlag("simulator", simulator)
            _load(ie, p, model, flags, trace_json, config, onnx_flags={"heterogeneous": int(heterogeneous)})
            x = np.load(input_npy) if input_npy else random_inputs(ie, seed)
            p.step(f"running on the {ie.GetInfo('simulator')} simulator")
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:     # SaturationWarnings: printed below
                warnings.simplefilter("always", SaturationWarning)
                y = ie.Run(x)
            wall = time.perf_counter() - t0
            p.step("float32 reference on the host")
            th = ie.Run_th(x)
        for w in caught:
            click.echo(f"warning: {w.message}" if issubclass(w.category, SaturationWarning)
                       else warnings.formatwarning(w.message, w.category, w.filename, w.lineno), err=True)
    except Exception as e:  # noqa: BLE001
        _fail(e)
    from arch.numerics import sdk_error_metric
    ys = y if isinstance(y, list) else [y]
    ts = th if isinstance(th, list) else [th]
    click.echo(f"{ie.GetInfo('hwcycles')} cycles = {ie.GetInfo('hwtime'):.4f} ms modelled; {wall:.3f} s wall")
    for name, a, b in zip(ie.GetInfo("outnames").split(";"), ys, ts):
        mean, mx = sdk_error_metric(a, b)
        click.echo(f"output {name} {a.shape}: error vs float32 host run: mean {mean:.3f} %, max {mx:.3f} %")
    _trace_written(trace_json)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", default="reference", show_default=True, help="hardware configuration for an ONNX model")
@click.option("-f", "--flag", "flags", multiple=True, metavar="NAME=VALUE", help="SetFlag before compiling (repeatable)")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="write the plot to this PNG: cycles and utilisation per layer, and the roofline")
@click.option("--trace", "trace_json", type=click.Path(dir_okay=False), default=None,
              help="also write the profiled run's timeline to this JSON file (Perfetto, chrome://tracing)")
def profile(model, config, flags, output, trace_json):
    """Per-layer profile of MODEL (ONNX or .bin): cycles, MACs, utilisation, bytes moved, what bounds each
    layer, where it sits under the roofline."""
    for path, what in ((output, "-o/--output"), (trace_json, "--trace")):
        if path:
            _writable(path, what)
    from runtime.mdla import MDLA
    from runtime.profile import format_table, plot, roof
    from runtime.profile import profile as run_profile
    ie = MDLA()
    try:
        with _steps(3 if output else 2, "mdla profile") as p:
            _load(ie, p, model, flags, trace_json, config, config_for_bin=False)
            p.step("traced run on the functional model")
            rows = run_profile(ie)
            if output:
                p.step("plotting")
                c = ie._compiled
                plot(rows, output, title=f"{Path(model).name} on {c.cfg.name}", roofline=roof(c.cfg, c.parallel))
    except Exception as e:  # noqa: BLE001
        _fail(e)
    click.echo(format_table(rows, ie._compiled.cfg.clock_mhz, ie.GetInfo('hwcycles')))
    click.echo(f"{ie.GetInfo('hwcycles')} cycles = {ie.GetInfo('hwtime'):.3f} ms modelled for the whole call")
    if output:
        click.echo(f"wrote {output}")
    _trace_written(trace_json)


@main.command()
@click.argument("binfile", type=click.Path(exists=True, dir_okay=False))
def disasm(binfile):
    """Print the program of a compiled .bin as text assembly."""
    from arch.asm import disassemble
    from compiler import binfile as bf
    try:
        c = bf.read(binfile)
    except Exception as e:  # noqa: BLE001
        _fail(e)
    stages = getattr(c, "stages", [c])
    dla = 0
    for stage in stages:
        if not hasattr(stage, "programs"):          # a host stage of a heterogeneous model
            click.echo(f"# host ({stage.position}): {', '.join(stage.nodes)}")
            continue
        for p, prog in sorted(stage.programs.items()):
            where = f"DLA stage {dla}, " if len(stages) > 1 else ""
            click.echo(f"# {where}program {p}: {len(prog)} instructions")
            click.echo(disassemble(prog, with_pc=True), nl=False)
        dla += 1


@main.command()
@click.option("--config", "configs", multiple=True, default=("reference", "small"), show_default=True,
              help="hardware configuration(s) to run on")
@click.option("--seed", default=0, show_default=True, help="weight and input seed")
@click.option("--no-tutorials", is_flag=True, help="skip the tutorial blocks (the quick bit-exactness check only)")
def demo(configs, seed, no_tutorials):
    """The main job: the tutorials' code blocks on the functional model, then the bit-exactness check, with a report."""
    from arch.machine import get_config
    from runtime.demo import run_demo
    for c in configs:                        # before anything runs: a bad name must not wait for the tutorials
        try:
            get_config(c)
        except (ValueError, OSError) as e:
            raise click.BadParameter(str(e), param_hint="--config") from None
    try:
        ok = run_demo(configs=configs, seed=seed, out=click.echo, tutorials=not no_tutorials, progress=True)
    except FileNotFoundError as e:          # not a source checkout: the tutorials are missing
        _fail(e)
    sys.exit(0 if ok else 1)


@main.group()
def hw():
    """The card RTL (Amaranth, in hw/): Verilog export and simulator builds."""


@hw.command("build")
@click.option("--config", default="small", show_default=True, help="hardware configuration (name or JSON file)")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Verilog file to write")
@click.option("--mem-kib", type=click.IntRange(min=1), default=None,
              help="main memory in KiB, the default of the MEM_WORDS parameter (rounded up to a size class: "
                   "64 KiB times a power of 4; default 64 KiB)")
@click.option("--clusters", type=click.IntRange(min=1), default=None,
              help="build clusters 0 .. N-1 only (default: all of the configuration's)")
@click.option("--sim", "sims", multiple=True, type=click.Choice(["icarus", "verilator"]),
              help="also compile it for this simulator into the build cache (repeatable)")
def hw_build(config, output, mem_kib, clusters, sims):
    """Write the Verilog of a card (module mdla_card, parameter MEM_WORDS; memory loaded with +MEMIN=<hex file>)."""
    from arch.machine import get_config
    from hw.export import export_verilog, mem_words_for
    try:
        cfg = get_config(config)
        words = mem_words_for(cfg, (mem_kib or 0) << 10)
        t0 = time.perf_counter()
        with _steps(1, "mdla hw build") as p:
            p.step(f"elaborating and exporting the {cfg.name!r} card")
            text = export_verilog(cfg, output, mem_words=words, clusters=clusters)
    except Exception as e:  # noqa: BLE001
        _fail(e)
    click.echo(f"wrote {output}: card {cfg.name!r}, {len(text.splitlines())} lines, main memory {words} x "
               f"{cfg.beat_bytes * 8}-bit words, in {time.perf_counter() - t0:.1f} s")
    for sim in sims:
        from hw.verilog_run import build
        try:
            info = build(sim, cfg, words, clusters=clusters)
        except Exception as e:  # noqa: BLE001
            _fail(e)
        how = "cached" if info.cached else f"built in {info.seconds:.1f} s"
        click.echo(f"{sim}: {info.build_dir} ({how})")


from .infer import infer_command  # noqa: E402 - `mdla infer` lives with the data-set runner
main.add_command(infer_command)
from .rtl_regress import regress_command  # noqa: E402 - `mdla regress`: RTL regressions, here or on Ray
main.add_command(regress_command)


if __name__ == "__main__":
    main()
