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


@main.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="ONNX file to write (default NAME.onnx)")
@click.option("--seed", default=0, show_default=True, help="weight seed")
def zoo(name, output, seed):
    """Write zoo model NAME as ONNX (no download: built with onnx.helper and seeded weights)."""
    import zoo as z
    try:
        path = z.save(name, output or f"{name}.onnx", seed=seed)
    except ValueError as e:
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
def compile(model, output, config, inshapes, heterogeneous, samples_npy):
    """Compile an ONNX MODEL to a .bin for the chosen hardware configuration."""
    from runtime.mdla import MDLA
    ie = MDLA()
    try:
        ie.SetFlag("bitfile", config)
        ie.SetFlag("heterogeneous", int(heterogeneous))
        samples = np.load(samples_npy) if samples_npy else None
        t0 = time.perf_counter()
        names = ie.Compile(model, inshapes=inshapes, outfile=output, samples=samples)
    except Exception as e:  # noqa: BLE001 - report any user-facing error cleanly
        _fail(e)
    click.echo(f"compiled {model} -> {output} in {time.perf_counter() - t0:.2f} s; outputs: {', '.join(names)}")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", default=None, help="hardware configuration (default reference; for a .bin, checked against it)")
@click.option("--simulator", default=None, help="executor of the run: functional, amaranth, icarus or verilator")
@click.option("-f", "--flag", "flags", multiple=True, metavar="NAME=VALUE", help="SetFlag before loading (repeatable)")
@click.option("--input", "input_npy", type=click.Path(exists=True, dir_okay=False), help="input .npy (default random)")
@click.option("--seed", default=0, show_default=True, help="seed of the random input")
@click.option("--heterogeneous", is_flag=True, help="ONNX model: run unsupported operators between DLA layers on the host")
@click.option("--trace", "trace_json", type=click.Path(dir_okay=False), default=None,
              help="write the run's timeline to this JSON file (Perfetto, chrome://tracing; docs/profiling.md)")
def run(model, config, simulator, flags, input_npy, seed, heterogeneous, trace_json):
    """Run an ONNX MODEL or a compiled .bin on the simulated DLA and report."""
    from runtime.mdla import MDLA
    from runtime.saturation import SaturationWarning
    ie = MDLA()
    try:
        if trace_json:
            ie.SetFlag("trace", trace_json)
        if simulator:
            ie.SetFlag("simulator", simulator)
        for f in flags:
            if "=" not in f:
                raise ValueError(f"--flag expects NAME=VALUE, got {f!r}")
            k, v = f.split("=", 1)
            ie.SetFlag(k, v)
        if config:
            ie.SetFlag("bitfile", config)        # for a .bin, Init checks it against the file's
        if model.endswith(".bin"):
            ie.Init(model)
        else:
            ie.SetFlag("heterogeneous", int(heterogeneous))
            ie.Compile(model)
        shape = tuple(int(s) for s in ie.GetInfo("inshapes").split(";")[0].split("x"))
        x = np.load(input_npy) if input_npy else np.random.default_rng(seed).random(shape, dtype=np.float32)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:     # SaturationWarnings: printed below
            warnings.simplefilter("always", SaturationWarning)
            y = ie.Run(x)
        wall = time.perf_counter() - t0
        for w in caught:
            click.echo(f"warning: {w.message}" if issubclass(w.category, SaturationWarning)
                       else warnings.formatwarning(w.message, w.category, w.filename, w.lineno), err=True)
        th = ie.Run_th(x)
    except Exception as e:  # noqa: BLE001
        _fail(e)
    from arch.numerics import sdk_error_metric
    ys = y if isinstance(y, list) else [y]
    ts = th if isinstance(th, list) else [th]
    click.echo(f"{ie.GetInfo('hwcycles')} cycles = {ie.GetInfo('hwtime'):.4f} ms modelled; {wall:.3f} s wall")
    for name, a, b in zip(ie.GetInfo("outnames").split(";"), ys, ts):
        mean, mx = sdk_error_metric(a, b)
        click.echo(f"output {name} {a.shape}: error vs float32 host run: mean {mean:.3f} %, max {mx:.3f} %")
    if trace_json:
        click.echo(f"wrote the timeline to {trace_json} (open it in https://ui.perfetto.dev or chrome://tracing)")


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
    from runtime.mdla import MDLA
    from runtime.profile import format_table, plot, roof
    from runtime.profile import profile as run_profile
    ie = MDLA()
    try:
        if trace_json:
            ie.SetFlag("trace", trace_json)
        for f in flags:
            if "=" not in f:
                raise ValueError(f"--flag expects NAME=VALUE, got {f!r}")
            k, v = f.split("=", 1)
            ie.SetFlag(k, v)
        if model.endswith(".bin"):
            ie.Init(model)
        else:
            ie.SetFlag("bitfile", config)
            ie.Compile(model)
        rows = run_profile(ie)
    except Exception as e:  # noqa: BLE001
        _fail(e)
    click.echo(format_table(rows, ie._compiled.cfg.clock_mhz, ie.GetInfo('hwcycles')))
    click.echo(f"{ie.GetInfo('hwcycles')} cycles = {ie.GetInfo('hwtime'):.3f} ms modelled for the whole call")
    if output:
        c = ie._compiled
        plot(rows, output, title=f"{Path(model).name} on {c.cfg.name}", roofline=roof(c.cfg, c.parallel))
        click.echo(f"wrote {output}")
    if trace_json:
        click.echo(f"wrote the timeline to {trace_json} (open it in https://ui.perfetto.dev or chrome://tracing)")


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
    from runtime.demo import run_demo
    ok = run_demo(configs=configs, seed=seed, out=click.echo, tutorials=not no_tutorials)
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
