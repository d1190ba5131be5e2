"""The functional model's speed-ups change nothing: the threaded CONV split, the schedule replay of
repeated runs and the fused output stage give the bits, cycles and timelines of the plain path,
equal to the golden reference. (Their speed is measured in bench/bench_speed.py, not here.)"""
import numpy as np
import pytest

import sim.card as card
import sim.units as units
from arch.isa import Act, Instr
from arch.machine import REFERENCE, SMALL
from arch.numerics import requantize
from compiler.driver import compile_graph
from compiler.frontend import load_model
from compiler.quantize import quantize
from sim import SimError, run_card
from sim.golden import run_quantized
from zoo import small_cnn

from tests.test_sim_hazards import CONV, LOADM, run as run_prog


@pytest.mark.parametrize("shift", [0, 1, 8, 20, 46, 47, 63])
@pytest.mark.parametrize("act", [Act.NONE, Act.RELU])
@pytest.mark.parametrize("resid", [False, True])
def test_output_stage_equals_requantize(shift, act, resid):
    """Two MVs' accumulators interleaved in one array, as a CONV shared by the MVs leaves them."""
    rng = np.random.default_rng(shift)
    R = rng.integers(-(1 << 47), 1 << 47, size=(50, 2, 3, 16), dtype=np.int64)
    R[:10] >>= rng.integers(0, 47, size=(10, 2, 3, 16))            # small values too, both signs
    R[10, 0, 0, :4] = [0, -1, (1 << 47) - 1, -(1 << 47)]
    rshift = 9
    i = Instr("CONV", shift=shift, act=act, rshift=rshift, resid=int(resid))
    res = [rng.integers(-(1 << 15), 1 << 15, size=(50, 3, 16)).astype(np.int16) for _ in range(2)] if resid else None
    want = [requantize(R[:, j], shift, act, residual=res[j] if resid else None, rshift=rshift, acc_bits=48)
            for j in range(2)]
    dst = [np.full((50, 3, 16), 7, dtype=np.int16) for _ in range(2)]
    scratch = R.copy()
    sat = units._output_stage(scratch, [scratch[:, 0], scratch[:, 1]], i, res, 48, dst)
    for j in range(2):
        np.testing.assert_array_equal(dst[j], want[j][0])
    assert sat == want[0][1] + want[1][1]


_FIELDS = {Act.LEAKY: (3277, 15), Act.CLIP: ((-3000) & 0xFFFF, 9000), Act.SIGMOID: (3, 0), Act.TANH: (0, 0),
           Act.HARDSWISH: (9, 0), Act.SILU: (12, 0), Act.MISH: (8, 0)}


@pytest.mark.parametrize("shift", [0, 5, 14, 47])
@pytest.mark.parametrize("act", list(Act))
@pytest.mark.parametrize("resid", [0, 1, 2])
def test_tabled_output_stage_equals_requantize(shift, act, resid):
    """Every activation (looked up in a table of every int16 input) and residual mode, MUL included,
    against the definition: values, saturation counts, and the two MVs' outputs apart."""
    rng = np.random.default_rng(shift * 31 + int(act) * 3 + resid)
    R = rng.integers(-(1 << 47), 1 << 47, size=(40, 2, 3, 16), dtype=np.int64)
    R >>= rng.integers(0, 47, size=R.shape)                         # all magnitudes, both signs
    a, b = _FIELDS.get(act, (0, 0))
    rshift = 15 if resid == 2 else 4
    i = Instr("CONV", shift=shift, act=act, act_a=a, act_b=b, rshift=rshift, resid=resid)
    res = [rng.integers(-(1 << 15), 1 << 15, size=(40, 3, 16)).astype(np.int16) for _ in range(2)] if resid else None
    want = [requantize(R[:, j], shift, act, residual=res[j] if resid else None, rshift=rshift, acc_bits=48,
                       act_a=a, act_b=b, mode=resid or 1) for j in range(2)]
    dst = [np.full((40, 3, 16), 7, dtype=np.int16) for _ in range(2)]
    scratch = R.copy()
    sat = units._output_stage(scratch, [scratch[:, 0], scratch[:, 1]], i, res, 48, dst)
    for j in range(2):
        np.testing.assert_array_equal(dst[j], want[j][0])
    assert sat == want[0][1] + want[1][1]


@pytest.fixture(scope="module")
def compiled():
    out = {}
    for cfg in (REFERENCE, SMALL):
        g = quantize(load_model(small_cnn(seed=1)), cfg)
        out[cfg.name] = (g, compile_graph(g, cfg))
    return out


@pytest.mark.parametrize("cfg", [REFERENCE, SMALL], ids=lambda c: c.name)
def test_threads_and_replay_change_no_bit_or_cycle(compiled, cfg, monkeypatch):
    g, c = compiled[cfg.name]
    mem0, feeds = c.seeded_image(3)
    gold, _ = run_quantized(g, feeds)
    progs = c.program_addresses()
    card.clear_program_cache()
    plain = mem0.copy()
    ref = run_card(cfg, plain, progs, trace=True, threads=1)
    monkeypatch.setattr(units, "_SPLIT_MACS", 0)              # every CONV on all threads: numpy's engine
    monkeypatch.setattr(units, "_SPLIT_COPY", 0)              # splits it down to single rows; and every LOAD
    for engine in ("numpy", "onnxruntime"):
        monkeypatch.setenv("MDLA_SIM_GEMM", engine)
        for threads in (2, 3, 7):
            for cold in (True, False):                        # decoded and scheduled, then replayed
                if cold:
                    card.clear_program_cache()
                mem = mem0.copy()
                st = run_card(cfg, mem, progs, trace=True, threads=threads)
                assert np.array_equal(mem, plain), (engine, threads, cold)
                assert st == ref, (engine, threads, cold)
    for t, want in gold.items():
        np.testing.assert_array_equal(c.memmap.tensors[t].read(plain, c.memmap.tensor_addr(t), cfg.lanes), want)


def test_replay_of_an_unchecked_run_still_checks_hazards():
    card.clear_program_cache()
    racy = {0: f"{LOADM}\n{CONV}\nEND"}
    run_prog(racy, check_hazards=False)
    run_prog(racy, check_hazards=False)                       # replayed
    with pytest.raises(SimError, match="data race"):
        run_prog(racy)


def test_bad_thread_count():
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        run_prog({0: "SYNC\nEND"}, threads=0)


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("MDLA_SIM_THREADS", "3")
    assert card.default_threads() == 3
    monkeypatch.setenv("MDLA_SIM_THREADS", "cores")
    assert card.default_threads() == units.available_cores()
    monkeypatch.setenv("MDLA_SIM_THREADS", "two")
    with pytest.raises(ValueError, match="MDLA_SIM_THREADS must be a positive integer or 'cores', got 'two'"):
        run_prog({0: "SYNC\nEND"})
    monkeypatch.delenv("MDLA_SIM_THREADS")
    assert card.default_threads() == 1


def test_gemm_engines_agree_bit_for_bit(monkeypatch):
    """numpy's dgemm and onnxruntime's MatMul (on one thread and on two) give the same exact sums, at
    the extremes of the int16 range, for 2-D products, stacks, shared right operands and strided
    (non-contiguous) views."""
    from sim import gemm
    rng = np.random.default_rng(7)
    lo, hi = -(1 << 15), 1 << 15
    cases = []
    for m, k, n in [(448, 576, 64), (49, 4608, 256), (3, 5, 7), (1, 512, 256), (64, 1, 16)]:
        A = rng.integers(lo, hi, (m, k)).astype(np.float64)
        B = rng.integers(lo, hi, (k, n)).astype(np.float64)
        A[0, :] = lo                                           # the largest products: 2**30 each
        B[:, 0] = lo
        cases.append((A, B))
    stackA = rng.integers(lo, hi, (4, 112, 576)).astype(np.float64)
    cases += [(stackA, rng.integers(lo, hi, (4, 576, 64)).astype(np.float64)),
              (stackA, rng.integers(lo, hi, (576, 64)).astype(np.float64)),
              (stackA[:, ::2, 1:], rng.integers(lo, hi, (575, 128)).astype(np.float64)[:, ::2])]
    for A, B in cases:
        exact = np.matmul(A.astype(np.int64), B.astype(np.int64))
        for eng, threads in (("numpy", 1), ("onnxruntime", 1), ("onnxruntime", 2)):
            monkeypatch.setenv("MDLA_SIM_GEMM", eng)
            got = gemm.matmul(A, B, threads)
            assert got.dtype == np.float64 and np.array_equal(got.astype(np.int64), exact), (eng, threads, A.shape)


def test_gemm_engine_choice(monkeypatch):
    from sim import gemm
    monkeypatch.delenv("MDLA_SIM_GEMM", raising=False)
    assert gemm.engine() == "onnxruntime"                      # installed with the test dependencies
    monkeypatch.setenv("MDLA_SIM_GEMM", "numpy")
    assert gemm.engine() == "numpy"
    monkeypatch.setenv("MDLA_SIM_GEMM", "mkl")
    with pytest.raises(ValueError, match="MDLA_SIM_GEMM='mkl': choose one of auto, numpy, onnxruntime"):
        gemm.engine()


def test_gemm_engines_give_the_same_network_run(compiled, monkeypatch):
    """A whole compiled network, run with each engine: the same memory bits and statistics."""
    g, c = compiled[REFERENCE.name]
    mem0, _ = c.seeded_image(5)
    progs = c.program_addresses()
    out = {}
    from sim import gemm
    monkeypatch.setattr(gemm, "_ORT_MIN_MACS", 0)            # every product of 2 rows or more on onnxruntime
    for eng in ("numpy", "onnxruntime"):
        monkeypatch.setenv("MDLA_SIM_GEMM", eng)
        mem = mem0.copy()
        out[eng] = (mem, run_card(REFERENCE, mem, progs))
    assert np.array_equal(out["numpy"][0], out["onnxruntime"][0])
    assert out["numpy"][1] == out["onnxruntime"][1]


def _fresh(i: Instr) -> Instr:
    return Instr(i.op, **i.f)                    # the same fields, no cached LOAD plan


@pytest.mark.parametrize("buf", ["MAPS", "KERNEL", "RES"])
def test_load_plan_kept_on_the_instruction_is_per_machine(buf):
    """A LOAD's views are computed once and kept on its Instr; running the same Instr objects on
    machines of other lanes and buffer sizes (plan made for the first, then replaced) leaves every
    buffer as fresh instructions do: contiguous, strided, overlapping, broadcast and gapped masks."""
    from arch.isa import Buf
    kind = getattr(Buf, buf)
    shapes = [dict(n0=12, n1=1, s1=0, n2=1, s2=0), dict(n0=3, n1=2, s1=5, n2=2, s2=13),
              dict(n0=4, n1=3, s1=2, n2=1, s2=0)]                  # contiguous, strided, overlapping
    instrs = [Instr("LOAD", buf=kind, mv_mask=mask, nvv=2, dram_addr=64 * k, buf_addr=8 * k, **sh)
              for k, sh in enumerate(shapes) for mask in (0b1, 0b11, 0b10)]
    for cfg in (REFERENCE, SMALL, REFERENCE):
        rng = np.random.default_rng(cfg.lanes)
        mem = rng.integers(-(1 << 15), 1 << 15, size=(512, cfg.lanes)).astype(np.int16)
        got, want = units.ClusterUnits(cfg), units.ClusterUnits(cfg)
        for i in instrs:
            got.load(i, mem, i.dram_addr // cfg.beat_bytes)
            want.load(_fresh(i), mem, i.dram_addr // cfg.beat_bytes)
            assert i.__dict__["_sim_load"][0] is cfg
        for name in ("maps", "maps_tag", "kern_wm", "kern_tag", "res"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{cfg.name} {name}")
        assert getattr(got, {"MAPS": "maps", "KERNEL": "kern_wm", "RES": "res"}[buf]).any()


def test_replay_counts_saturations_per_instruction_as_the_first_run():
    """A replayed run (recorded schedule, effects bound once) applies the same effects in the same
    order as the scheduling run: the memory bits, the statistics and the saturation counts per
    instruction, on several clusters, with LOADs of maps and kernel words, CONVs that saturate
    (random data, no shift), an AVGPOOL and STOREs."""
    from tests.test_sim_hazards import image
    prog = ("LOAD buf=MAPS mv_mask=1 dram_addr=0x2000 buf_addr=0 n0=16 n1=1 n2=1\n"
            "LOAD buf=KERNEL mv_mask=1 nvv=1 dram_addr=0x3000 buf_addr=0 n0=4 n1=1 n2=1 push_next=1\n"
            "CONV mv_mask=1 nvv=1 in_w=4 cpitch=4 cin=4 kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 oh=1 ow=4 out_pitch=1 "
            "write=1 pop_prev=1 push_next=1\n"
            "STORE mv=0 dram_addr=0x8000 buf_addr=0 n0=4 n1=1 n2=1 pop_prev=1 push_prev=1\n"
            "CONV mv_mask=1 nvv=1 in_w=4 cpitch=4 cin=4 kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 oh=1 ow=4 out_pitch=1 "
            "out_addr=4 write=1 shift=3 pop_next=1 push_next=1\n"
            "STORE mv=0 dram_addr=0x8200 buf_addr=4 n0=4 n1=1 n2=1 pop_prev=1\n"
            "END")
    programs = {0: prog, 1: prog.replace("0x8000", "0x9000").replace("0x8200", "0x9200")}
    mem0, addrs = image(programs, seed=4)
    card.clear_program_cache()
    first = mem0.copy()
    ref = run_card(SMALL, first, addrs, trace=True)
    assert ref.clusters[0].saturations_by_pc and set(ref.clusters[0].saturations_by_pc) <= {2, 4}
    for _ in range(2):                                          # replayed twice
        mem = mem0.copy()
        st = run_card(SMALL, mem, addrs, trace=True)
        assert np.array_equal(mem, first)
        assert st == ref
        assert st.clusters[1].saturations_by_pc == ref.clusters[1].saturations_by_pc


@pytest.mark.parametrize("shift", [0, 1, 7, 16, 30, 46, 47, 60])
def test_average_output_stage_equals_the_definition(shift):
    """The AVGPOOL output stage (offset before the shift, saturation found by one maximum) against
    arch.numerics.average: values and saturation counts, sums of up to 2**15 taps, both signs."""
    from arch.numerics import average
    rng = np.random.default_rng(shift)
    for taps, mul in ((1, 1), (9, 7282), (4, 65535), (1 << 15, 3), (25, 0)):
        total = rng.integers(-(1 << 15) * taps, (1 << 15) * taps, size=(3, 7, 5, 16), dtype=np.int64)
        total[0, 0, 0, :3] = [(1 << 15) * taps - 1, -(1 << 15) * taps, 0]
        want = average(total.copy(), mul, shift)
        got = units._average(total.copy(), mul, shift)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[0].dtype == np.int16 and got[1] == want[1]
