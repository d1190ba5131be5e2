"""What one card does in one call, for every transport: the plan of its images (where each input
goes and each output is read, in which layout and fixed-point format), writing the inputs into
card memory, running, reading the outputs back.

Used by ``Executor.execute`` (the cards in this process, runtime/executors.py) and by
the Ray card actors (runtime/ray_cards.py: the plan is made by the driver, the rest runs in the
actor), so both give the same bits from one piece of code.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageIO:
    """One image of one job on one card: where its inputs go and where its outputs are read."""
    job: int
    image: int
    inputs: tuple        #: per model input: (TensorLayout, address, frac)
    outputs: tuple       #: per DLA output: (TensorLayout, address, frac, shape)


def card_plan(jobs, card: int) -> list[ImageIO]:
    """The images of ``jobs`` (compiled, arrays, batch) that run on card ``card``, in order."""
    plan = []
    for j, (c, _arrays, batch) in enumerate(jobs):
        mm, p = c.memmap, c.parallel
        for n in range(batch):
            f, _cluster, slot = p.slot(n)
            if f != card:
                continue
            ins = tuple((mm.tensors[i.tensor], mm.tensor_addr(i.tensor, slot), mm.tensors[i.tensor].frac)
                        for i in c.inputs)
            outs = tuple((mm.tensors[o.tensor], mm.tensor_addr(o.tensor, slot), mm.tensors[o.tensor].frac,
                          tuple(o.onnx_shape[1:])) for o in c.outputs)
            plan.append(ImageIO(j, n, ins, outs))
    return plan


def card_images(jobs, plan: list[ImageIO]) -> list[list[np.ndarray]]:
    """The float inputs of ``plan``'s images, each as the (C, H, W) tensor its layout holds."""
    return [[np.ascontiguousarray(jobs[io.job][1][k][io.image]).reshape(lay.channels, lay.height, lay.width)
             for k, (lay, _a, _f) in enumerate(io.inputs)] for io in plan]


def write_inputs(cfg, memory: np.ndarray, plan: list[ImageIO], images, njobs: int) -> list[int]:
    """Write ``images`` (float, per ``card_images``) into ``memory`` in fixed point: the input values
    saturated, per job."""
    from arch.numerics import float_to_fixed
    sat = [0] * njobs
    for io, ims in zip(plan, images):
        for (lay, addr, frac), x in zip(io.inputs, ims):
            q, over = float_to_fixed(x, frac)
            sat[io.job] += over
            lay.write(memory, addr, cfg.lanes, q)
    return sat


def read_outputs(cfg, memory: np.ndarray, plan: list[ImageIO]) -> dict:
    """{(job, image): [float outputs in their ONNX shapes]} of ``plan`` from ``memory``."""
    from arch.numerics import fixed_to_float
    return {(io.job, io.image): [fixed_to_float(lay.read(memory, addr, cfg.lanes), frac).reshape(shape)
                                 for lay, addr, frac, shape in io.outputs] for io in plan}


def run_plan(run, cfg, memory: np.ndarray, plan: list[ImageIO], images, njobs: int):
    """Write ``images`` into ``memory``, ``run()`` the card (its CardStats), read the outputs back:
    (statistics, {(job, image): [outputs]}, input values saturated per job)."""
    sat = write_inputs(cfg, memory, plan, images, njobs)
    stats = run()
    return stats, read_outputs(cfg, memory, plan), sat
