"""The executor contract (runtime/executors.py): options at construction (unknown ones refused),
a loaded program run to a RunResult, and a new executor added with one class and one registry
entry."""
import numpy as np
import pytest

import microndla
from runtime.executors import (EXECUTORS, Executor, ExecutorOptionError, FunctionalExecutor, RunResult,
                               make_executor)


def test_options_are_taken_at_construction_and_unknown_ones_refused():
    ex = make_executor("functional", trace=True, check_hazards=False)
    assert (ex.trace, ex.check_hazards) == (True, False)
    with pytest.raises(ExecutorOptionError, match="no option vcd"):
        make_executor("functional", vcd="x.vcd")
    with pytest.raises(ExecutorOptionError, match="no option workers"):     # cards in parallel: the driver's Ray actors
        FunctionalExecutor(workers="processes")
    with pytest.raises(ValueError, match="unknown simulator"):
        make_executor("nosuch")
    assert make_executor("amaranth", vcd="w.vcd").vcd == "w.vcd"
    with pytest.raises(ExecutorOptionError, match="icarus simulator has no option trace"):
        make_executor("icarus", trace=True)
    assert make_executor("verilator", harness="main").harness == "main"


def test_execute_runs_a_loaded_program_to_a_run_result(small_cnn_onnx):
    ie = microndla.MDLA()
    ie.SetFlag({"bitfile": "small"})
    ie.Compile(small_cnn_onnx)
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    y = ie.Run(x)
    c = ie._compiled
    run = FunctionalExecutor().execute(ie._cards, [(c, [x], 1)])
    assert isinstance(run, RunResult)
    np.testing.assert_array_equal(run.outputs[0][0][0], y[0])
    assert run.cycles() == ie.GetInfo("hwcycles") > 0
    counters = run.counters()
    assert counters["macs"] == sum(cs.macs for s in ie._last_stats for cs in s.clusters.values()) > 0
    assert counters["bytes_loaded"] == sum(cs.bytes_loaded for s in ie._last_stats for cs in s.clusters.values()) > 0
    assert run.saturations() == sum(cs.saturations for cs, _ in run.cluster_stats())


def test_a_new_executor_is_one_class_and_one_registry_entry(small_cnn_onnx, monkeypatch):
    calls = []

    class Counting(Executor):
        name = "counting"
        OPTIONS = {"label": "x"}

        def run(self, cfg, memory, programs, *, check_hazards=None):
            calls.append(sorted(programs))
            return FunctionalExecutor().run(cfg, memory, programs, check_hazards=check_hazards)

    monkeypatch.setitem(EXECUTORS, "counting", Counting)
    ie = microndla.MDLA()
    ie.SetFlag({"bitfile": "small", "simulator": "counting"})
    ie.Compile(small_cnn_onnx)
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(ie.Run(x), ie.Run_sw(x))
    assert calls == [[0]]
    ie.SetFlag("vcd", "w.vcd")
    with pytest.raises(microndla.MDLAError, match="counting simulator writes no waveform"):
        ie.Run(x)
