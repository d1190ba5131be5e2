"""Block-level cocotb tests: the VV unit and an MV unit with its trace generator, exported to Verilog
and run in Icarus and Verilator against numpy (test bodies in cocotb_blocks.py). Each block is
built once per simulator and configuration and cached on disk by the hash of its Verilog."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from arch.isa import INSTR_BITS
from arch.machine import SMALL

from cocotb_util import require

HERE = Path(__file__).resolve().parent


class MVTrace(wiring.Component):
    """A trace generator driving MV unit 0 (as in tests/hw/test_mv.py), with the MV's buffer ports."""

    def __init__(self, cfg):
        from hw.compute import TraceGenerator
        from hw.mv import MVUnit
        self.cfg = cfg
        self.tg = TraceGenerator(cfg)
        self.mv = MVUnit(cfg)
        mv = self.mv.signature.members
        names = ("maps_w_en", "maps_w_addr", "maps_w_data", "kern_w_en", "kern_w_addr", "kern_w_data",
                 "res_w_en", "res_w_addr", "res_w_data", "out_r_addr", "out_r_data", "sat_count")
        members = {n: mv[n] for n in names if n in mv}
        members.update(start=In(1), instr=In(INSTR_BITS))
        super().__init__(members)

    def elaborate(self, platform):
        from hw.compute import drive_mv
        m = Module()
        m.submodules.tg = tg = self.tg
        m.submodules.mv = mv = self.mv
        m.d.comb += drive_mv(tg, mv, 0)
        m.d.comb += [tg.start.eq(self.start), tg.instr.eq(self.instr)]
        for name, member in self.signature.members.items():
            if name in ("start", "instr"):
                continue
            if member.flow == In:
                m.d.comb += getattr(mv, name).eq(getattr(self, name))
            else:
                m.d.comb += getattr(self, name).eq(getattr(mv, name))
        return m


def _vv(cfg):
    from hw.vv import VVUnit
    return VVUnit(cfg)


BLOCKS = {
    "vv_unit": (_vv, "vv_mac_bias_acc"),
    "mv_trace": (MVTrace, "mv_traces"),
}


def run_block(sim, top, cfg=SMALL):
    from cocotb_tools.runner import get_runner

    from hw.export import component_verilog
    from hw.verilog_run import build_verilog
    require(sim)
    factory, testcase = BLOCKS[top]
    tag = inspect.getsource(MVTrace) if top == "mv_trace" else ""
    # as the card's simulator builds: the MV's output stages on their gated clock (hw.mv.SimulatorBuild)
    text = component_verilog(lambda: factory(cfg), top, cfg, tag, simulator=True)
    # the blocks' Verilog has no public-port metacomments (the card's has): all of it visible to cocotb
    info = build_verilog(sim, text, top, f"{top}-{cfg.name}", public=True)
    print(f"{sim} {top}: {'cached build' if info.cached else f'built in {info.seconds:.1f} s'}")
    runner = get_runner(sim)
    runner.test(test_module="cocotb_blocks", hdl_toplevel=top, hdl_toplevel_lang="verilog", testcase=testcase,
                build_dir=info.build_dir, test_dir=info.build_dir / "run", timescale=("1ns", "1ps"),
                extra_env={"MDLA_BLOCK_CFG": cfg.name, "PYTHONPATH": str(HERE)})


@pytest.mark.parametrize("top", sorted(BLOCKS))
def test_block_icarus(top):
    run_block("icarus", top)


@pytest.mark.slow          # two more Verilator builds (15-30 s each on 2 cores)
@pytest.mark.parametrize("top", sorted(BLOCKS))
def test_block_verilator(top):
    run_block("verilator", top)
