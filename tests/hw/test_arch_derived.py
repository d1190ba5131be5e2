"""The RTL derives from arch/: the cost formulas of arch.timing evaluate on the RTL's instruction
views to the same durations as on integers, the ports are as wide as the ISA's fields, the dispatch
covers every engine's instructions, and a configuration whose buffers the ISA cannot address is
refused when it is built."""
import dataclasses

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import data
from amaranth.sim import Simulator

from arch import isa, timing
from arch.isa import ADDRESS_FIELDS, FORMATS, INSTR_BITS, Instr, check_address_fields, field_bits
from arch.machine import CONFIGS, REFERENCE, SMALL
from hw.compute import TraceGenerator
from hw.isa import ENGINE_OPS, LAYOUTS, RTL_OPS
from hw.mv import AverageStage, MVUnit, OutputStage


def _random_fields(rng, op):
    fields = {}
    for f in FORMATS[op].fields:
        fields[f.name] = int(rng.integers(1, 1 << min(f.bits, 8)))
    return Instr(op, **fields)


@pytest.mark.parametrize("op", ["CONV", "MAXPOOL", "AVGPOOL", "LOAD", "STORE"])
def test_cost_formulas_on_rtl_views(op):
    """timing's formula applied to a data.View of the instruction word (what hw/cluster.py builds)
    equals the formula on the Instr, for random field values."""
    rng = np.random.default_rng(len(op))
    cfg = SMALL
    word = Signal(INSTR_BITS)
    view = data.View(LAYOUTS[op], word)
    if op in ("LOAD", "STORE"):
        expr, want = timing.transfer_words(view), timing.transfer_words
    else:
        expr, want = timing.COMPUTE_COST[op](view, cfg), lambda i: timing.compute_cycles(i, cfg)
    out = Signal(64)
    m = Module()
    m.d.comb += out.eq(expr)
    cases = [_random_fields(rng, op) for _ in range(60)]
    got = []

    async def bench(ctx):
        for i in cases:
            ctx.set(word, int.from_bytes(isa.encode(i), "little"))
            got.append(ctx.get(out))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert got == [want(i) for i in cases]


def test_ports_are_as_wide_as_the_fields():
    for cfg in (SMALL, REFERENCE):
        mv, os_, av, tg = MVUnit(cfg), OutputStage(cfg), AverageStage(cfg), TraceGenerator(cfg)
        for unit in (mv, os_, av, tg):          # built for their ports only, never elaborated
            unit._MustUse__silence = True
        for name in ("nvv", "init", "write", "act", "act_a", "act_b", "resid", "rshift"):
            assert len(getattr(mv, name)) == field_bits("CONV", name), name
            assert len(getattr(tg, name)) == field_bits("CONV", name), name
        for name in ("act", "act_a", "act_b", "resid", "rshift", "shift"):
            assert len(getattr(os_, name)) == field_bits("CONV", name), name
        assert len(av.mul) == len(mv.mul) == field_bits("AVGPOOL", "mul")
        assert len(tg.bias_addr) == field_bits("CONV", "bias_addr")


def test_dispatch_covers_the_engines():
    """Every instruction the RTL runs has an engine in the ISA's table (the dispatch's source), and
    the compute engine's cost formulas cover its instructions."""
    engines = {mn: e for e, ops in ENGINE_OPS.items() for mn in ops}
    assert set(RTL_OPS) <= set(engines)
    assert {mn for mn in RTL_OPS if engines[mn] == "compute"} <= set(timing.COMPUTE_COST)
    assert [mn for mn in RTL_OPS if engines[mn] == "control"] == ["END"]


def test_shipped_configurations_fit_the_isa():
    for cfg in CONFIGS.values():
        check_address_fields(cfg)


@pytest.mark.parametrize("change, message", [
    (dict(acc_entries=2048), r"acc_entries = 2048 exceeds the 1024 that CONV.acc_addr \(10 bits\)"),
    (dict(maps_words=1 << 15), r"maps_words \* lanes \(elements\) = 524288 exceeds .* CONV.maps_addr"),
    (dict(out_words=1 << 15), r"out_words = 32768 exceeds .* CONV.out_addr"),
    (dict(kernel_words=1 << 15), r"kernel_words = 32768 exceeds .* CONV.kern_addr"),
    (dict(clusters_per_card=9), r"clusters_per_card = 9 exceeds the 8 that BARRIER.mask"),
])
def test_configuration_beyond_the_address_fields_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(REFERENCE, **change)


def test_every_address_field_exists():
    for fmt, name, kind, _, _ in ADDRESS_FIELDS:
        assert field_bits(fmt, name) > 0 and kind in ("address", "count", "index", "mask")


def _bad_images():
    from arch.asm import assemble
    from arch.isa import encode_program
    out = {}
    no_end = np.zeros(0x2000, dtype=np.uint8)
    code = encode_program(assemble("SYNC"))
    no_end[:len(code)] = np.frombuffer(code, dtype=np.uint8)
    out["no_end"] = no_end
    bad_mask = np.zeros(0x2000, dtype=np.uint8)
    code = encode_program(assemble("BARRIER mask=0b10\nEND"))
    bad_mask[:len(code)] = np.frombuffer(code, dtype=np.uint8)
    out["barrier_without_itself"] = bad_mask
    beyond = np.zeros(0x2000, dtype=np.uint8)
    code = encode_program(assemble("LOAD buf=MAPS mv_mask=1 dram_addr=0x1ff0 n0=4 n1=1 n2=1\nEND"))
    beyond[:len(code)] = np.frombuffer(code, dtype=np.uint8)
    out["beyond_the_image"] = beyond
    return out


@pytest.mark.parametrize("name", sorted(_bad_images()))
def test_one_program_loader(name):
    """The RTL runners load programs through the functional model's loader: the same refusal, word
    for word, before anything runs."""
    from hw.run import decode_programs
    from sim.card import SimError, run_card
    mem = _bad_images()[name]
    with pytest.raises(SimError) as model:
        run_card(SMALL, mem.copy(), {0: 0})
    with pytest.raises(SimError) as rtl:
        decode_programs(SMALL, mem.copy(), {0: 0})
    assert str(rtl.value) == str(model.value)
