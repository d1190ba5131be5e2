"""Replays that keep the CONVs' kernel operands from run to run (sim/replay.py) give the bits and
statistics of plain runs: on the families of issue 11 and on small programs made to break it (a
STORE into the bytes a later kernel LOAD reads, kernel words no LOAD wrote, broadcast and partial
MV masks, biases, weights changed by the host between runs, several clusters)."""
from __future__ import annotations

import numpy as np
import pytest

import sim.card as card
from arch.machine import REFERENCE, SMALL
from compiler.driver import compile_graph
from compiler.frontend import load_model
from compiler.ir import CompileError
from compiler.legalise import legalise
from compiler.partition import Staged, compile_partitioned
from compiler.quantize import quantize
from sim import run_card
from sim.replay import ReplayPlan
from zoo import families

from tests.test_sim_hazards import image


def _outcome(stats) -> tuple:
    """Everything a run reports, per cluster: cycles, statistics, saturations per instruction."""
    return (stats.cycles, {c: (s, s.saturations_by_pc) for c, s in stats.clusters.items()})


def _runs(cfg, images: dict, addrs, sequence, trace: bool = False) -> dict:
    """Each image of ``images`` run cold (nothing cached), then the ``sequence`` of image names run
    one after the other in one cache: {name: (memory after, outcome)} for the cold runs, and the
    list of the sequence's results."""
    cold = {}
    for name, mem in images.items():
        card.clear_program_cache()
        m = mem.copy()
        cold[name] = (m, _outcome(run_card(cfg, m, addrs, trace=trace)))
    card.clear_program_cache()
    seq = []
    for name in sequence:
        m = images[name].copy()
        seq.append((name, m, _outcome(run_card(cfg, m, addrs, trace=trace))))
    return cold, seq


def _plan() -> ReplayPlan:
    return next(reversed(card._schedule_cache.values()))[3]


def _program(m1: int, m2: int, store_into_weights: bool, ka2: int, b2: int, bias: bool, init2: str = "ZERO") -> str:
    """A kernel LOAD and CONV on MVs ``m1``, a STORE (into the bytes the second kernel LOAD reads,
    or elsewhere), then a kernel LOAD at kernel word ``b2`` and a CONV reading words from ``ka2`` on
    MVs ``m2`` (partly the first LOAD's words, partly the second's, partly none), starting from
    zero or (``init2='ACC'``) from the first CONV's accumulators."""
    mv2 = (m2 & -m2).bit_length() - 1
    init = "init=BIAS bias_addr=4" if bias else "init=ZERO"
    return (f"LOAD buf=MAPS mv_mask=3 dram_addr=0x2000 buf_addr=0 n0=16 n1=1 n2=1\n"
            f"LOAD buf=KERNEL mv_mask={m1} nvv=1 dram_addr=0x3000 buf_addr=0 n0=6 n1=1 n2=1 push_next=1\n"
            f"CONV mv_mask={m1} nvv=1 in_w=4 cpitch=4 cin=4 kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 oh=1 ow=4 out_pitch=1 "
            f"kern_addr=0 {init} write=1 shift=3 pop_prev=1 push_next=1\n"
            f"STORE mv={(m1 & -m1).bit_length() - 1} dram_addr={0x4000 if store_into_weights else 0x8000:#x} "
            f"buf_addr=0 n0=4 n1=1 n2=1 pop_prev=1 push_prev=1\n"
            f"SYNC pop_next=1 push_prev=1\n"
            f"LOAD buf=KERNEL mv_mask={m2} nvv=1 dram_addr=0x4000 buf_addr={b2} n0=4 n1=1 n2=1 pop_next=1 push_next=1\n"
            f"CONV mv_mask={m2} nvv=1 in_w=4 cpitch=4 cin=4 kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 oh=1 ow=4 out_pitch=1 "
            f"kern_addr={ka2} out_addr=4 init={init2} write=1 shift=2 pop_prev=1 push_next=1\n"
            f"STORE mv={mv2} dram_addr=0x8200 buf_addr=4 n0=4 n1=1 n2=1 pop_prev=1\n"
            f"END")


PROGRAMS = [  # m1, m2, STORE into the second LOAD's bytes, kern_addr and LOAD address of the second CONV,
    #          bias, second CONV's init
    (1, 1, False, 0, 4, True, "ZERO"),
    (3, 3, False, 2, 4, True, "ACC"),
    (1, 3, False, 2, 4, False, "ACC"),      # MV 1's words 2, 3 were never loaded: zeros
    (3, 2, True, 0, 0, True, "ZERO"),       # the second LOAD reads what the STORE wrote
    (2, 3, True, 2, 6, False, "ACC"),
    (3, 1, False, 4, 0, True, "ZERO"),      # the second CONV reads only the second LOAD's words
]


@pytest.mark.parametrize("cfg", [SMALL, REFERENCE], ids=lambda c: c.name)
@pytest.mark.parametrize("case", range(len(PROGRAMS)))
def test_kept_kernel_operands_change_nothing(cfg, case):
    m1, m2, into, ka2, b2, bias, init2 = PROGRAMS[case]
    prog = _program(m1, m2, into, ka2, b2, bias, init2)
    programs = {0: prog, 1: prog.replace("0x8000", "0x9000").replace("0x8200", "0x9200").replace("0x4000", "0x5000")}
    mem0, addrs = image(programs, seed=case)
    mem0[0x2000:0x2000 + 16 * cfg.beat_bytes] = np.random.default_rng(case).integers(0, 256, 16 * cfg.beat_bytes)
    other_input, new_weights, new_second = mem0.copy(), mem0.copy(), mem0.copy()
    other_input[0x2000:0x2040] ^= 0x5A
    new_weights[0x3000 + 3] ^= 0x21          # one weight of the first LOAD, changed by the host
    new_second[0x4000:0x4000 + 4 * cfg.beat_bytes] ^= 0x11
    images = {"a": mem0, "input": other_input, "weights": new_weights, "second": new_second}
    sequence = ["a", "a", "a", "input", "a", "weights", "weights", "a", "second", "input", "a"]
    cold, seq = _runs(cfg, images, addrs, sequence, trace=True)
    for n, (name, mem, outcome) in enumerate(seq):
        assert np.array_equal(mem, cold[name][0]), (n, name)
        assert outcome == cold[name][1], (n, name)
    plan = _plan()
    # the first LOAD's bytes changed between runs: never relied on again; the second LOAD's only
    # when no STORE writes them (and then they changed too)
    assert min(k for k in plan.load_range) in plan.volatile
    # the first CONV's accumulators are read by the second when it starts from them
    for c in (0, 1):
        convs = sorted(k for k in plan.acc_live if plan.entries[k][0] == c)
        assert [plan.acc_live[k] for k in convs] == [init2 == "ACC", False]
    first = frozenset(k for k, (lo, _) in plan.load_range.items() if lo == 0x3000)
    assert len(first) == 2 and plan.steady == (first if into else frozenset(plan.load_range))


def test_kept_operands_are_used():
    """Not a test of speed: that the kept path runs at all (its LOADs are left out) when it may."""
    prog = _program(3, 3, False, 2, 4, True, "ACC")
    mem0, addrs = image({0: prog}, seed=1)
    card.clear_program_cache()
    for _ in range(3):
        run_card(SMALL, mem0.copy(), addrs)
    plan = _plan()
    assert plan.state is not None and not plan.volatile
    assert sum(e[2] == "load" for e in plan.state.fast) == 1       # the maps LOAD alone
    assert sum(e[2] == "conv" and e[6] is not None for e in plan.state.fast) == 2
    assert [e[7] for e in plan.state.fast if e[2] == "conv"] == [True, False]   # only the first's accumulators read


def _compiled(model, cfg):
    """The DLA stages of a family as Compile builds them (heterogeneous where the tail is host work)."""
    try:
        g = load_model(model)
        legalise(g, cfg)
    except CompileError:
        staged = compile_partitioned(model, cfg, heterogeneous=True)
        assert isinstance(staged, Staged)
        return staged.segments
    quantize(g, cfg)
    return [compile_graph(g, cfg)]


FAMILY_CASES = {
    "mobilenet_v3_small": (families.mobilenet_v3, dict(input_shape=(1, 3, 96, 96))),
    "mobilenet_v3_small_paddle": (families.mobilenet_v3, dict(input_shape=(1, 3, 96, 96), exporter="paddle")),
    "text_direction": (families.text_direction, dict()),
    "dbnet": (families.dbnet, dict(input_shape=(1, 3, 128, 128))),
    "yolo_v8": (families.yolo, dict(input_shape=(1, 3, 128, 128))),
}


@pytest.mark.parametrize("name", list(FAMILY_CASES))
def test_families_replay_bit_exact(name):
    """Each DLA stage of a family: warm runs (capturing, then keeping the kernel operands) on two
    inputs and on weights the host changed equal cold runs, memory image and statistics."""
    build, kw = FAMILY_CASES[name]
    cfg = REFERENCE
    for stage in _compiled(build(seed=0, **kw), cfg):
        mem, addrs = stage.seeded_image(0)[0], stage.program_addresses()
        card.clear_program_cache()
        run_card(cfg, mem.copy(), addrs)
        run_card(cfg, mem.copy(), addrs)
        plan = _plan()
        assert plan.state is not None and plan.state.loads
        lo, hi = plan.load_range[min(plan.state.loads)]
        changed = mem.copy()
        changed[lo:hi:7] ^= 0x3C                     # weights of one LOAD the kept operands rely on
        images = {"a": mem, "b": stage.seeded_image(1)[0], "changed": changed}
        cold, seq = _runs(cfg, images, addrs, ["a", "a", "b", "a", "changed", "b", "changed"])
        for n, (img, m, outcome) in enumerate(seq):
            assert np.array_equal(m, cold[img][0]), (name, n, img)
            assert outcome == cold[img][1], (name, n, img)
