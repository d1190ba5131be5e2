"""Card-level tests on the exported Verilog (hw/export.py) in Icarus and Verilator through cocotb.

Every program runs on the functional model and on the Verilog card from the same memory image; the
final memory images must be equal bit for bit and the cycle count and every counter of every cluster
equal. One card build per simulator (SMALL), shared by the session (tests/cocotb/conftest.py) and
cached on disk by the hash of its Verilog."""
from __future__ import annotations

import re

import numpy as np
import pytest

from arch.isa import encode_program
from arch.machine import SMALL
from sim.card import run_card

SIMS = ("icarus", "verilator")
FIELDS = ("cycles", "instructions", "busy", "token_wait", "port_wait", "bytes_loaded", "bytes_stored",
          "macs", "mac_slots", "saturations")


def compiled_image(model, cfg, seed=0):
    from compiler.driver import compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    c = compile_graph(quantize(load_model(model), cfg), cfg)
    mem, _ = c.seeded_image(seed)
    return mem, c.program_addresses()


def assert_same(sim, cfg, mem, programs, *, check_memory=True, check_hazards=True, harness="cocotb"):
    """The functional model and the Verilog card agree. Under cocotb the run uses the session's
    build of all the card's clusters (one build per simulator); the C++ harness builds the clusters
    the programs use."""
    from hw.verilog_run import LAST_RUN, run_verilog
    m_model, m_rtl = mem.copy(), mem.copy()
    want = run_card(cfg, m_model, programs, check_hazards=check_hazards)
    got = run_verilog(sim, cfg, m_rtl, programs, harness=harness,
                      clusters=cfg.clusters_per_card if harness == "cocotb" else None)
    print(f"{sim}: {LAST_RUN['cycles']} cycles in {LAST_RUN['seconds']:.2f} s = "
          f"{LAST_RUN['cycles_per_second']:.0f} cycles/s ({LAST_RUN['total_seconds']:.2f} s with start-up)")
    assert got.cycles == want.cycles
    assert sorted(got.clusters) == sorted(want.clusters)
    for c, w in want.clusters.items():
        for f in FIELDS:
            assert getattr(got.clusters[c], f) == getattr(w, f), \
                f"cluster {c} {f}: {sim} {getattr(got.clusters[c], f)} model {getattr(w, f)}"
    if check_memory:
        diff = np.flatnonzero(m_model != m_rtl)
        assert diff.size == 0, f"{diff.size} memory bytes differ, first at {diff[0]:#x}"
    return want


def _kernels():
    from zoo import kernels
    return {
        "conv_3x3": lambda: kernels.conv_model(3, 4, 6, 6, 3, 1, 1, relu=True, seed=1),
        "conv_strided_dilated": lambda: kernels.conv_model(5, 7, 9, 9, 3, 2, 2, dilation=2, seed=4),
        "maxpool_overlap": lambda: kernels.maxpool_model(5, 7, 7, 3, 2, 1, seed=5),
        "fc": lambda: kernels.fc_model(16, 8, seed=1),
    }


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("name", sorted(_kernels()))
def test_compiled_kernel(card_build, sim, name):
    card_build(sim)
    mem, programs = compiled_image(_kernels()[name](), SMALL)
    assert_same(sim, SMALL, mem, programs)


@pytest.mark.parametrize("sim", SIMS)
def test_small_cnn(card_build, sim):
    from zoo.small_cnn import small_cnn
    card_build(sim)
    mem, programs = compiled_image(small_cnn(seed=0, input_shape=(1, 3, 8, 8)), SMALL)
    assert_same(sim, SMALL, mem, programs)


# two clusters sharing the memory port, with equal-start ties (timing only: these race on purpose)
from tests.hw.timing_programs import CONV1, LOAD4, tie_prog  # noqa: E402


CORNERS = {
    "port_shared": {0: f"{LOAD4}\n{LOAD4}\nEND", 1: f"{LOAD4}\nEND"},
    "equal_start_ties": {0: tie_prog(0), 1: tie_prog(1)},
    "queue_full": {0: f"{LOAD4} push_next=1\n{CONV1} pop_prev=1\n{CONV1}\n{CONV1}\n{CONV1}\n{CONV1}\n{LOAD4}\nEND"},
}


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("name", sorted(CORNERS))
def test_two_cluster_timing(card_build, sim, name):
    from arch.asm import assemble
    card_build(sim)
    mem = np.zeros(0xA000, dtype=np.uint8)
    mem[0x4000:0x8000] = np.random.default_rng(3).integers(0, 256, 0x4000, dtype=np.uint8)
    addrs = {}
    for c, p in CORNERS[name].items():
        code = encode_program(assemble(p))
        mem[0x1000 * c:0x1000 * c + len(code)] = np.frombuffer(code, dtype=np.uint8)
        addrs[c] = 0x1000 * c
    assert_same(sim, SMALL, mem, addrs, check_hazards=False, check_memory=name == "port_shared")


# BARRIER (rule 6): cluster 1 arrives first and waits for cluster 0's; the BARRIER pops a LOAD's
# token and releases a STORE and the other cluster's LOAD; the second waits for that STORE
BARRIER_PROGS = {
    0: f"{CONV1}\n{LOAD4.replace('mv_mask=1', 'mv_mask=2')} push_next=1\nBARRIER mask=0b11 pop_prev=1 push_next=1\n"
       "STORE mv=0 dram_addr=0x8000 n0=2 n1=1 n2=1 pop_prev=1 push_prev=1\nBARRIER mask=0b11 pop_next=1\nEND",
    1: "BARRIER mask=0b11 push_prev=1\nLOAD buf=MAPS mv_mask=2 dram_addr=0x4100 n0=3 n1=1 n2=1 pop_next=1\n"
       "BARRIER mask=0b11\nEND",
}


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("case", ["hand_written", "clustersbatchmode"])
def test_barrier(card_build, sim, case):
    from arch.asm import assemble
    card_build(sim)
    if case == "hand_written":
        mem = np.zeros(0xA000, dtype=np.uint8)
        mem[0x4000:0x8000] = np.random.default_rng(4).integers(0, 256, 0x4000, dtype=np.uint8)
        programs = {}
        for c, p in BARRIER_PROGS.items():
            code = encode_program(assemble(p))
            mem[0x1000 * c:0x1000 * c + len(code)] = np.frombuffer(code, dtype=np.uint8)
            programs[c] = 0x1000 * c
    else:      # small_cnn with clusters 0 and 1 splitting each layer, a BARRIER between layers
        from compiler.driver import Parallel, compile_graph
        from compiler.frontend import load_model
        from compiler.quantize import quantize
        from zoo.small_cnn import small_cnn
        c = compile_graph(quantize(load_model(small_cnn(seed=0, input_shape=(1, 3, 8, 8))), SMALL), SMALL,
                          parallel=Parallel(clusters=(0, 1), split=True))
        mem, _ = c.seeded_image(0)
        programs = c.program_addresses()
    assert_same(sim, SMALL, mem, programs)


@pytest.mark.parametrize("sim", SIMS)
def test_mdla_run_on_verilog(card_build, sim, tmp_path):
    """SetFlag('simulator', sim): Run() on the exported Verilog gives Run_sw's bits and cycles."""
    from tests.hw.util import assert_run_equals_run_sw
    from zoo import kernels
    card_build(sim)
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    assert_run_equals_run_sw(kernels.conv_model(4, 8, 6, 6, 3, 1, 1, relu=True, seed=3), x, tmp_path,
                             {"simulator": sim}).Free()


def test_executors_registered():
    from runtime.executors import EXECUTORS, get_executor
    from runtime.verilog_executors import IcarusExecutor, VerilatorExecutor
    assert EXECUTORS["icarus"] is IcarusExecutor and EXECUTORS["verilator"] is VerilatorExecutor
    assert get_executor("icarus").name == "icarus"


def test_export_cli(tmp_path):
    """mdla hw build writes the card's Verilog with the $readmemh loader and every counter port."""
    from click.testing import CliRunner

    from hw.cluster import STATS
    from runtime.cli import main
    out = tmp_path / "dla.v"
    r = CliRunner().invoke(main, ["hw", "build", "--config", "small", "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "module mdla_card #(parameter MEM_WORDS = 8192) (" in text
    assert "module mdla_card_core(" in text and "$readmemh" in text and "$writememh" in text
    for c in range(SMALL.clusters_per_card):
        for s in STATS:
            assert f"output wire [47:0] stat_{c}_{s} " in text
    assert "memory[0] = " not in text          # no per-word initialisation: the image is loaded at run time


def test_memory_size_classes():
    """Images map to few size classes, and a size changes only the top's MEM_WORDS default: the
    exported design (the core) is the same for every size."""
    from hw.export import DEFAULT_MEM_BYTES, mem_words_for, verilog_text
    bb = SMALL.beat_bytes
    base = DEFAULT_MEM_BYTES // bb
    assert mem_words_for(SMALL, 0) == base and mem_words_for(SMALL, DEFAULT_MEM_BYTES) == base
    assert mem_words_for(SMALL, DEFAULT_MEM_BYTES + 1) == 4 * base
    assert mem_words_for(SMALL, 31_056_576) == 1024 * base        # ResNet-18's REFERENCE image: 64 MiB
    a, b = verilog_text(SMALL, base), verilog_text(SMALL, 4 * base)
    assert a != b
    assert a.replace(f"MEM_WORDS = {base})", "").replace(f"(default {base})", "") == \
        b.replace(f"MEM_WORDS = {4 * base})", "").replace(f"(default {4 * base})", "")
    with pytest.raises(ValueError, match="power of two"):
        verilog_text(SMALL, 3 * base)


@pytest.mark.parametrize("sim", ["icarus"])
def test_image_above_default_size(sim):
    """An image larger than the default memory (a model compiled at 96 KiB, so that its data and
    code lie above 64 KiB) runs on the next size class, bit-exact; only its words are dumped."""
    from compiler.driver import compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    from hw.export import DEFAULT_MEM_BYTES, mem_words_for
    from zoo import kernels
    from cocotb_util import require
    require(sim)
    c = compile_graph(quantize(load_model(kernels.conv_model(3, 4, 6, 6, 3, 1, 1, relu=True, seed=1)), SMALL),
                      SMALL, base=96 << 10)
    mem, _ = c.seeded_image(0)
    programs = c.program_addresses()
    assert len(mem) > DEFAULT_MEM_BYTES and min(programs.values()) >= DEFAULT_MEM_BYTES
    assert mem_words_for(SMALL, len(mem)) == 4 * DEFAULT_MEM_BYTES // SMALL.beat_bytes
    assert_same(sim, SMALL, mem, programs)


def test_memh_round_trip(tmp_path):
    from hw.export import read_memh, write_memh
    mem = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8)
    write_memh(tmp_path / "m.hex", mem, SMALL, 256)
    back = read_memh(tmp_path / "m.hex", SMALL)
    assert np.array_equal(back[:1000], mem) and not back[1000:].any()


@pytest.mark.slow
@pytest.mark.parametrize("case", [(16, 32, 10, 10, 3, 2, 1, 1), (4, 70, 17, 17, 3, 1, 1, 1)],
                         ids=lambda c: "cin{}_cout{}_{}x{}_k{}_s{}_p{}_d{}".format(*c))
def test_compiled_kernel_slow_verilator(card_build, case):
    from zoo import kernels
    card_build("verilator")
    cin, cout, h, w, k, s, p, d = case
    mem, programs = compiled_image(kernels.conv_model(cin, cout, h, w, k, s, p, dilation=d, relu=True,
                                                      seed=cin + cout), SMALL)
    assert_same("verilator", SMALL, mem, programs)


@pytest.mark.parametrize("case", ["one_cluster", "two_clusters"])
def test_verilator_main_harness(case):
    """The free-running C++ harness (the verilator executor's default): bit- and cycle-exact, on a
    build of the clusters the programs use (one for a one-cluster program, two for a BARRIER pair)."""
    from arch.asm import assemble
    from cocotb_util import require
    from hw.verilog_run import LAST_RUN
    require("verilator")
    if case == "one_cluster":
        from zoo.small_cnn import small_cnn
        mem, programs = compiled_image(small_cnn(seed=0, input_shape=(1, 3, 8, 8)), SMALL)
    else:
        mem = np.zeros(0xA000, dtype=np.uint8)
        mem[0x4000:0x8000] = np.random.default_rng(4).integers(0, 256, 0x4000, dtype=np.uint8)
        programs = {}
        for c, p in BARRIER_PROGS.items():
            code = encode_program(assemble(p))
            mem[0x1000 * c:0x1000 * c + len(code)] = np.frombuffer(code, dtype=np.uint8)
            programs[c] = 0x1000 * c
    assert_same("verilator", SMALL, mem, programs, harness="main")
    assert LAST_RUN["harness"] == "main" and LAST_RUN["clusters"] == max(programs) + 1


def test_export_holds_the_clusters_asked_for():
    """clusters=n exports clusters 0 .. n-1 only (ports and counters), and refuses what the machine
    does not have."""
    from hw.export import verilog_text
    one = verilog_text(SMALL, clusters=1)
    assert "stat_0_cycles" in one and "stat_1_cycles" not in one
    assert "input wire enable " in one and "input wire [31:0] prog_addr" in one
    both = verilog_text(SMALL)
    assert "stat_1_cycles" in both and "input wire [1:0] enable" in both
    for bad in (0, SMALL.clusters_per_card + 1):
        with pytest.raises(ValueError, match="clusters"):
            verilog_text(SMALL, clusters=bad)


def test_export_cli_clusters(tmp_path):
    """mdla hw build --clusters 1 writes the one-cluster card."""
    from click.testing import CliRunner

    from runtime.cli import main
    out = tmp_path / "one.v"
    r = CliRunner().invoke(main, ["hw", "build", "--config", "small", "--clusters", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "stat_0_cycles" in text and "stat_1_cycles" not in text
    r = CliRunner().invoke(main, ["hw", "build", "--config", "small", "--clusters", "3", "-o", str(out)])
    assert r.exit_code != 0 and "clusters" in r.output


def test_zero_initialisers_are_loops():
    """Memories that start at zero are converted without initialisers and zeroed by a loop (no line
    per word); the activation ROM keeps its contents; every memory of the core is one or the other."""
    from hw.export import core_text
    text = core_text(SMALL, 1)
    assert not re.search(r"\[\d+\] = \d+'h0+;", text)
    lines = text.split("\n")
    decls = [i for i, line in enumerate(lines) if re.match(r"^  reg \[\d+:0\] \S+ +\[\d+:0\];$", line)]
    zeroed = [i for i in decls if lines[i + 1].startswith("  initial begin : mdla_zero_")]
    roms = [i for i in decls if lines[i + 1] == "  initial begin"]
    assert zeroed and roms and len(zeroed) + len(roms) == len(decls)
    assert all("rom" in lines[i] for i in roms) and not any("rom" in lines[i] for i in zeroed)
    assert any(re.search(r"rom \[\d+\] = 28'h[0-9a-f]*[1-9a-f]", line) for line in lines)


def _clock_sources(text: str) -> dict[str, set[str]]:
    """Of Yosys' Verilog ``text``: for each edge (posedge, negedge), the signals that the clocks of its
    always blocks are, following plain aliases (``assign a = b;``) back to their source."""
    alias = dict(re.findall(r"^  assign (\\\S+|\w+) += (\\\S+|\w+) *;$", text, re.M))
    out: dict[str, set[str]] = {}
    for edge, sig in re.findall(r"always @\((posedge|negedge) (\\\S+|\w+) *\)", text):
        seen = set()
        while sig in alias and sig not in seen:
            seen.add(sig)
            sig = alias[sig]
        out.setdefault(edge, set()).add(sig)
    return out


def test_hardware_export_has_no_gated_clock():
    """The hardware export (``mdla hw build``, what goes to an FPGA) clocks every register on the
    rising edge of the card's ``clk`` itself; only the simulator variant (hw.mv.SimulatorBuild) has
    stage O's gated clock ``clk | ~outputting``, on its falling edge."""
    from hw.export import core_text, export_verilog
    hw = _clock_sources(core_text(SMALL, 1))
    assert hw == {"posedge": {"clk"}}, hw
    sim = _clock_sources(core_text(SMALL, 1, simulator=True))
    assert sim["posedge"] == {"clk"} and sim["negedge"] and "clk" not in sim["negedge"], sim
    gated = next(iter(sim["negedge"]))
    assert re.search(rf"assign {re.escape(gated)} += \S+ +\| ", core_text(SMALL, 1, simulator=True))
    # the file that mdla hw build writes is that core
    assert "negedge" not in export_verilog(SMALL, clusters=1)


def test_zero_uninitialised_memories():
    """The loop goes after each memory without an initial block, sized by its depth; an initialised
    memory is left alone; a count of left-out initialisers that does not match is an error."""
    from hw.export import zero_uninitialised_memories
    text = ("  reg [7:0] \\m  [2:0];\n  reg [7:0] \\r  [1:0];\n  initial begin\n    \\r [0] = 8'h00;\n"
            "    \\r [1] = 8'h07;\n  end\n")
    out = zero_uninitialised_memories(text, expected=1)
    assert "for (i = 0; i < 3; i = i + 1)\n      \\m [i] = 0;" in out and "\\r [1] = 8'h07;" in out
    assert out.count("mdla_zero_") == 1
    with pytest.raises(ValueError, match="no initialiser"):
        zero_uninitialised_memories(text, expected=2)


def test_zero_initialiser_skip_only_inside_export():
    """The conversion without zero initialisers applies only within hw.export's context: a plain
    Amaranth conversion of a zero memory keeps its initialiser (the block tests' Verilog)."""
    from amaranth.back import rtlil
    from amaranth.hdl import Module, Signal
    from amaranth.lib.memory import Memory

    from hw.export import _without_zero_initialisers

    def convert():
        m = Module()
        m.submodules.mem = mem = Memory(shape=8, depth=4, init=[])
        rd = mem.read_port(domain="comb")
        out = Signal(8)
        m.d.comb += [rd.addr.eq(0), out.eq(rd.data)]
        return rtlil.convert(m, ports=[out])
    with _without_zero_initialisers() as skip:
        inside = convert()
        assert skip.dropped == 1
    assert "$meminit_v2" not in inside and "$meminit_v2" in convert()


# ------------------------------------------------------------------------------------------------
# opt-in: many random programs on the Verilator C++ harness (RANDOM_VERILATOR=<count>)
# ------------------------------------------------------------------------------------------------

from hw.random_programs import VERILATOR_BUILDS as _RANDOM_BUILDS, nearest_build  # noqa: E402,F401


def _random_verilator_examples() -> int:
    import os
    return int(os.environ.get("RANDOM_VERILATOR", "0") or 0)


def _random_case(case):
    cfg, progs = case
    return nearest_build(cfg), progs


if _random_verilator_examples():
    from hypothesis import HealthCheck, assume, given, settings
    from hypothesis import strategies as st

    from hw.random_programs import random_programs

    @settings(max_examples=_random_verilator_examples(), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(random_programs(), st.integers(0, 2**32 - 1))
    def test_random_programs_verilator(case, seed):
        """The random programs of tests/hw/test_differential.py (every instruction and buffer,
        BARRIERs, one or two clusters) on the C++ harness: memory image, cycles and every counter
        equal the functional model's. Opt-in: ``RANDOM_VERILATOR=1000 pytest tests/cocotb -k
        random_programs_verilator``."""
        from cocotb_util import require
        from sim.card import SimError
        from hw.random_programs import program_memory
        require("verilator")
        cfg, progs = _random_case(case)
        mem, addrs = program_memory(progs, seed)
        try:
            run_card(cfg, mem.copy(), addrs)
        except SimError:          # a race the generator did not avoid: not a valid program
            assume(False)
        assert_same("verilator", cfg, mem, addrs, harness="main")


@pytest.mark.parametrize("sim", SIMS)
def test_compiled_hardswish_silu_sigmoid_shift(card_build, sim):
    """The output-stage functions HARDSWISH, SILU, MISH (set on the IR, as the front end's
    canonicalisation names them) and a SIGMOID rounded into a coarser format, on the Verilog card."""
    from compiler.driver import compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    from zoo import kernels
    card_build(sim)
    for act in ("hardswish", "silu", "mish", "sigmoid"):
        g = load_model(kernels.activation_model("relu", cin=3, cout=5, h=4, w=4, seed=2))
        g.layers[0].act = act
        q = quantize(g, SMALL, act_frac=10)
        if act == "sigmoid":      # as in a Concat group of Q5.10 tensors
            q.layers[0].act_a = 5
        c = compile_graph(q, SMALL)
        mem, _ = c.seeded_image(1)
        assert_same(sim, SMALL, mem, c.program_addresses())
