"""The ``mdla`` command line: build zoo models, compile, run, disassemble, and the demo.

    mdla demo                         # the main job: example networks on the functional model, with a report
    mdla zoo small_cnn -o cnn.onnx    # write a model built locally with seeded weights
    mdla compile cnn.onnx -o cnn.bin  # compile to a .bin
    mdla run cnn.bin                  # run on random input, report cycles and accuracy
    mdla disasm cnn.bin               # print the program as text assembly
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import numpy as np


def _fail(e: Exception):
    raise click.ClickException(f"{type(e).__name__}: {e}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
def compile(model, output, config, inshapes):
    """Compile an ONNX MODEL to a .bin for the chosen hardware configuration."""
    from runtime.mdla import MDLA
    ie = MDLA()
    try:
        ie.SetFlag("bitfile", config)
        t0 = time.perf_counter()
        names = ie.Compile(model, inshapes=inshapes, outfile=output)
    except Exception as e:  # noqa: BLE001 - report any user-facing error cleanly
        _fail(e)
    click.echo(f"compiled {model} -> {output} in {time.perf_counter() - t0:.2f} s; outputs: {', '.join(names)}")


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", default="reference", show_default=True, help="hardware configuration for an ONNX model")
@click.option("--input", "input_npy", type=click.Path(exists=True, dir_okay=False), help="input .npy (default random)")
@click.option("--seed", default=0, show_default=True, help="seed of the random input")
def run(model, config, input_npy, seed):
    """Run an ONNX MODEL or a compiled .bin on the functional model and report."""
    from runtime.mdla import MDLA
    ie = MDLA()
    try:
        if model.endswith(".bin"):
            ie.Init(model)
        else:
            ie.SetFlag("bitfile", config)
            ie.Compile(model)
        shape = tuple(int(s) for s in ie.GetInfo("inshapes").split(";")[0].split("x"))
        x = np.load(input_npy) if input_npy else np.random.default_rng(seed).random(shape, dtype=np.float32)
        t0 = time.perf_counter()
        y = ie.Run(x)
        wall = time.perf_counter() - t0
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
    for p, prog in sorted(c.programs.items()):
        click.echo(f"# program {p}: {len(prog)} instructions")
        click.echo(disassemble(prog, with_pc=True), nl=False)


@main.command()
@click.option("--config", "configs", multiple=True, default=("reference", "small"), show_default=True,
              help="hardware configuration(s) to run on")
@click.option("--seed", default=0, show_default=True, help="weight and input seed")
def demo(configs, seed):
    """The main job: example networks compiled and run on the functional model, with a report."""
    from runtime.demo import run_demo
    ok = run_demo(configs=configs, seed=seed, out=click.echo)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
