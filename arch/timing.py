"""Timing rules of the DLA, defined once: every instruction's cost and the overlap rules.

Times are clock cycles counted from the start of the run (cycle 0). Each instruction i has a
dispatch cycle ``d``, a start cycle ``s`` and an end cycle ``e`` (the first cycle after its last
busy cycle, when its engine is free again and its pushed tokens become visible).

1. Dispatch (instruction fetch and decode, one instruction per cycle, in program order):
   ``d[0] = 0`` and ``d[i] = max(d[i-1] + 1, s[j] + 1)`` where j is the instruction ``queue_depth``
   places earlier in the same engine's queue (the queue is full until j leaves it).
2. Start: ``s[i] = max(d[i] + 1, e[previous instruction of the same engine], t_pop)`` where
   ``t_pop`` is, for each popped token, the end cycle of the instruction that pushed it (the k-th
   pop from a queue takes the k-th push into it).
3. Main-memory transfers (LOAD, STORE) share the card's single memory port, granted whole, first
   come first served by start cycle (ties: lower cluster first, then load before store). The grant
   is ``g = max(s, port_free)``; the port is busy for one cycle per word, ``port_free = g + words``;
   the instruction ends ``e = g + words + mem_latency`` (data in the buffer, or the write acknowledged).
4. Compute costs are fixed by the fields: see :func:`compute_cycles`.
5. A cluster is done at the largest end cycle of its instructions; a card when all its clusters are.
6. The k-th BARRIER of every cluster in its mask ends at ``1 + max(s)`` over those BARRIERs (each
   starts by rule 2, then waits for the others).

The functional model computes exactly these numbers; the RTL exhibits them.
"""
from __future__ import annotations

from .isa import Instr, conv_reduction, dma_words
from .machine import MachineConfig

#: Engine priority for equal start cycles at the memory port.
ENGINE_PRIORITY = {"load": 0, "compute": 1, "store": 2, "control": 3}


# The cost formulas below are written once and evaluated on two kinds of operands: an Instr's
# integer fields here and in the functional model, and the RTL's instruction-word views (Amaranth
# values), where the same arithmetic builds the duration the compute engine counts down (hw/cluster.py).

def conv_cycles(f, cfg: MachineConfig):
    """Cycles of a CONV whose fields are ``f`` (an Instr, or any object with its field attributes)."""
    return cfg.conv_pipeline + f.oh * f.ow * conv_reduction(f)


def pool_cycles(f, cfg: MachineConfig):
    """Cycles of a MAXPOOL or AVGPOOL whose fields are ``f``."""
    return cfg.pool_pipeline + f.oh * f.ow * f.nb * f.kh * f.kw


#: cycles of a SYNC or a BARRIER (whose end is also bounded by the other clusters', rule 6)
SYNC_CYCLES = 1

#: compute instruction -> its cost formula
COMPUTE_COST = {"CONV": conv_cycles, "MAXPOOL": pool_cycles, "AVGPOOL": pool_cycles,
                "SYNC": lambda f, cfg: SYNC_CYCLES, "BARRIER": lambda f, cfg: SYNC_CYCLES}


def compute_cycles(i: Instr, cfg: MachineConfig) -> int:
    """Cycles a compute-engine instruction occupies its engine (start to end)."""
    cost = COMPUTE_COST.get(i.op)
    if cost is None:
        raise ValueError(f"{i.op} is not a compute instruction")
    return cost(i, cfg)


def transfer_words(i: Instr) -> int:
    """Words (= memory-port cycles) a LOAD or STORE moves."""
    return dma_words(i)


def macs_per_step(nvv, mv_count, cfg: MachineConfig):
    """Useful MACs of one reduction step of a CONV with ``nvv`` VV units on ``mv_count`` MV units
    (integers, or the RTL's values: its counter adds this every step)."""
    return mv_count * nvv * cfg.lanes


def macs(i: Instr, cfg: MachineConfig) -> tuple[int, int]:
    """(useful MACs, MAC slots occupied) of a CONV: slots count every lane of every MV in the mask
    for every reduction cycle, so useful / slots is the lane utilisation of the instruction."""
    if i.op != "CONV":
        return 0, 0
    nmv = bin(i.mv_mask).count("1")
    cyc = i.oh * i.ow * conv_reduction(i)
    return cyc * macs_per_step(i.nvv, nmv, cfg), cyc * cfg.macs_per_cluster


#: Cost formulas as text, for docs/isa.md (kept beside the code they describe).
COST_TEXT = {
    "LOAD": "`g - s` waiting for the memory port, then `n0*n1*n2 + mem_latency` (port busy `n0*n1*n2`)",
    "STORE": "`g - s` waiting for the memory port, then `n0*n1*n2 + mem_latency` (port busy `n0*n1*n2`)",
    "CONV": "`conv_pipeline + oh*ow*kh*kw*cin`",
    "MAXPOOL": "`pool_pipeline + oh*ow*nb*kh*kw`",
    "AVGPOOL": "`pool_pipeline + oh*ow*nb*kh*kw`",
    "SYNC": "`1`",
    "BARRIER": "ends at `1 + max(s)` over the k-th BARRIERs of the clusters in `mask` (rule 6)",
    "END": "no engine; fetch stops",
}
