"""Cards and clusters in worker processes (the 'workers' flag) give exactly the serial results:
outputs, card memory bits, cycles and every statistic. Workers stop at Free() and at exit, and a
worker that dies is a clear error, not a hang."""
import os
import signal
import subprocess
import sys
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import onnx
import pytest

import microndla
import sim.parallel as par
from arch.machine import SMALL
from microndla import WorkerCrashed
from runtime.workers import Worker, plan
from sim import SimError, run_card
from zoo import resnet18, small_cnn

from tests.test_sim_hazards import CONV, STORE, image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """Big enough for several phases and helpers per run, small enough to be fast."""
    p = tmp_path_factory.mktemp("workers") / "r18.onnx"
    onnx.save(resnet18(seed=5, input_shape=(1, 3, 32, 32), classes=10), str(p))
    return str(p)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead: it has been or will be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _snapshot(ie, x):
    y = ie.Run(x)
    return dict(y=y, cycles=ie.GetInfo("hwcycles"), sat=ie.GetInfo("saturations"), stats=ie._last_stats,
                memory=[c.memory.copy() for c in ie._cards])


@pytest.mark.parametrize("flags", [
    {"nfpgas": 2}, {"nclusters": 4}, {"nclusters": 2, "clustersbatchmode": 1},
    {"nclusters": 4, "clustersbatchmode": 1}, {"nfpgas": 2, "nclusters": 2}, {"nclusters": 3},
], ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_processes_equal_serial(r18, flags):
    ie = microndla.MDLA()
    ie.SetFlag(flags)
    ie.Compile(r18)
    x = np.random.default_rng(0).random((ie.GetInfo("batch"), 3, 32, 32), dtype=np.float32) * 120 - 60
    x2 = x[::-1] / 2            # some values saturate inside the DLA
    ie.SetFlag("workers", "serial")
    serial = [_snapshot(ie, x), _snapshot(ie, x2)]
    assert not any(c.workers for c in ie._cards)
    ie.SetFlag("workers", "processes")
    procs = [_snapshot(ie, x), _snapshot(ie, x2)]       # twice: the workers are reused
    pids = [w.pid for c in ie._cards for w in c.workers]
    assert len(pids) >= 2 and all(_alive(p) for p in pids)   # the parallel path ran, in processes
    for a, b in zip(serial, procs):
        assert np.array_equal(a["y"], b["y"])
        assert a["cycles"] == b["cycles"] and a["sat"] == b["sat"] > 0     # saturations inside the DLA too
        assert a["stats"] == b["stats"]            # every statistic of every cluster of every card
        assert all(np.array_equal(m, n) for m, n in zip(a["memory"], b["memory"]))
    ie.Free()
    assert not any(_alive(p) for p in pids)        # Free() stopped them


def test_trace_and_hazard_flag_pass_through(r18):
    runs = {}
    for mode in ("serial", "processes"):
        ie = microndla.MDLA()
        ie.SetFlag({"nclusters": 2, "clustersbatchmode": 1, "workers": mode, "hazardcheck": 0})
        ie.Compile(r18)
        ie._trace = True
        ie.Run(np.ones((3, 32, 32), np.float32))
        runs[mode] = ie._last_stats
        ie.Free()
    assert runs["serial"][0].clusters[0].timeline
    assert runs["serial"] == runs["processes"]


def test_auto_mode_plan():
    assert plan("serial", True, 2, 2, 10 ** 12) == "here"
    assert plan("processes", False, 2, 2, 10 ** 12) == "here"          # RTL executors stay here
    assert plan("processes", True, 2, 1, 0) == "cards"
    assert plan("processes", True, 1, 4, 0) == "clusters"
    assert plan("processes", True, 1, 1, 10 ** 12) == "here"
    assert plan("auto", True, 2, 1, 1000) == "here"                     # tiny calls
    assert plan("auto", True, 2, 1, 10 ** 12) == ("cards" if (os.cpu_count() or 1) > 1 else "here")


def test_workers_flag_is_validated():
    ie = microndla.MDLA()
    with pytest.raises(ValueError, match=r"flag 'workers'.*auto, serial, processes.*'threads'"):
        ie.SetFlag("workers", "threads")
    assert ie.GetInfo("workers") == "auto"


# ------------------------------------------------------------------------------------------------
# the phases of sim.parallel, with in-process helpers
# ------------------------------------------------------------------------------------------------

LOAD = "LOAD buf=MAPS mv_mask=1 dram_addr=0x8010 buf_addr=0 n0=4 n1=1 n2=1"
STORE1 = "STORE mv=0 dram_addr=0x9000 buf_addr=0 n0=4 n1=1 n2=1"
#: cluster 1 reads what cluster 0 stored, ordered by timing alone (no barrier): one phase would be
#: wrong, so the phase must be cut between the store and the load
ORDERED_BY_TIME = {0: f"LOAD buf=MAPS mv_mask=1 dram_addr=0x2000 n0=4 n1=1 n2=1 push_next=1\n"
                      f"{CONV} pop_prev=1 push_next=1\n"
                      f"{STORE} pop_prev=1\nEND",
                   1: "LOAD buf=KERNEL mv_mask=1 nvv=1 dram_addr=0x3000 n0=4 n1=1 n2=1 push_next=1\n"
                      f"{CONV} pop_prev=1\n{CONV}\n{CONV}\nSYNC push_prev=1\n{LOAD} pop_next=1 push_next=1\n"
                      f"{CONV} pop_prev=1 push_next=1\n"
                      f"{STORE1} pop_prev=1\nEND"}


def _image(programs, seed=0):
    return image(programs, 0x10000, seed)


@pytest.mark.parametrize("helpers,phase_ops", [(1, 10 ** 9), (2, 10 ** 9), (2, 1), (3, 2)])
def test_phases_keep_cross_cluster_order(helpers, phase_ops):
    mem, progs = _image(ORDERED_BY_TIME)
    ref = mem.copy()
    s_ref = run_card(SMALL, ref, progs, trace=True)
    assert not np.array_equal(ref[0x9000:0x9020], mem[0x9000:0x9020])
    s = par.run_card_parallel(SMALL, mem, progs, [SlowHelper(mem)] + [par.LocalHelper(mem) for _ in range(helpers - 1)],
                              trace=True, phase_ops=phase_ops)
    assert s == s_ref and np.array_equal(mem, ref)


class SlowHelper(par.LocalHelper):
    """Like a worker process that is slow: its effects happen only when it is waited for."""

    def apply(self, ops):
        self.queued = getattr(self, "queued", []) + [ops]

    def wait(self):
        for ops in getattr(self, "queued", []):
            self.state.apply(ops)
        self.queued = []


def test_conflicting_phase_is_cut(monkeypatch):
    """Cluster 0's helper is slow: in one phase cluster 1 would LOAD before cluster 0's STORE has
    happened. The conflict check cuts the phase, so the result is right; without it, it is not."""
    mem, progs = _image(ORDERED_BY_TIME)
    ref = mem.copy()
    run_card(SMALL, ref, progs)
    for check in (True, False):
        m = mem.copy()
        if not check:
            monkeypatch.setattr(par, "independent", lambda *a: True)
        par.run_card_parallel(SMALL, m, progs, [SlowHelper(m), par.LocalHelper(m)], phase_ops=10 ** 9)
        assert np.array_equal(m, ref) == check


def test_independent():
    cl = np.array([0, 1, 1])
    lo, hi = np.array([0, 16, 100]), np.array([16, 32, 200])
    assert par.independent(cl, lo, hi, np.array([True, True, False]))        # adjacent, not overlapping
    assert not par.independent(cl, lo, hi + 1, np.array([True, False, False]))   # a store meets a load
    assert par.independent(cl, lo, hi + 1, np.array([False, False, False]))  # loads only


def test_schedule_errors_are_the_serial_ones():
    race = {0: f"{CONV} push_next=1\n{STORE} pop_prev=1\nEND",
            1: f"{CONV}\nSYNC push_prev=1\n{LOAD} pop_next=1\nEND"}
    mem, progs = _image(race)
    with pytest.raises(SimError) as serial:
        run_card(SMALL, mem.copy(), progs)
    helper = par.LocalHelper(mem)
    with pytest.raises(SimError) as parallel:
        par.run_card_parallel(SMALL, mem, progs, [helper])
    assert str(parallel.value) == str(serial.value) and "data race" in str(serial.value)
    assert helper.state is None             # the helper's run was ended


# ------------------------------------------------------------------------------------------------
# worker processes: errors, crashes, cleanup
# ------------------------------------------------------------------------------------------------

def test_worker_reports_errors_and_survives_a_crash():
    mem, progs = _image({0: "SYNC\nSYNC\nEND"})
    good = mem[32]
    mem[32] = (mem[32] & 0xF0) | 8          # opcode 8 does not exist
    shm = shared_memory.SharedMemory(create=True, size=len(mem))
    w = Worker("test card")
    try:
        np.ndarray(len(mem), np.uint8, shm.buf)[:] = mem
        with pytest.raises(SimError) as serial:
            run_card(SMALL, mem, progs)
        with pytest.raises(SimError) as inworker:
            w.call(("run", shm.name, len(mem), SMALL, progs, True, False))
        assert str(inworker.value) == str(serial.value)
        pid = w.pid
        with pytest.raises(WorkerCrashed, match=rf"test card \(pid {pid}\) died while running.*exit code 3"):
            w.call(("exit", 3))
        assert not _alive(pid) and w.pid is None
        mem[32] = good                       # a valid program again: a new worker runs it
        np.ndarray(len(mem), np.uint8, shm.buf)[:] = mem
        assert w.call(("run", shm.name, len(mem), SMALL, progs, True, False)) == run_card(SMALL, mem, progs)
        assert w.pid != pid
    finally:
        w.stop()
        shm.close()
        shm.unlink()


@pytest.mark.parametrize("flags,who", [({"nfpgas": 2}, ""), ({"nclusters": 2}, r" \(helper 1\)")])
def test_killed_worker_is_a_clear_error_then_restarts(r18, flags, who):
    ie = microndla.MDLA()
    ie.SetFlag({**flags, "workers": "processes"})
    ie.Compile(r18)
    x = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    y = ie.Run(x)
    victim = ie._cards[-1].workers[-1].pid
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match=rf"card {ie._cards[-1].index}{who} \(pid {victim}\).*exit code -9"):
        ie.Run(x)
    assert np.array_equal(ie.Run(x), y)
    pids = [w.pid for c in ie._cards for w in c.workers]
    ie.Free()
    assert not any(_alive(p) for p in pids + [victim])


def test_workers_and_shared_memory_end_with_the_interpreter(tmp_path):
    """A script that never calls Free(): its workers and shared memory go at exit."""
    model = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(seed=1), str(model))
    script = tmp_path / "leave.py"
    script.write_text(
        "import numpy as np, microndla\n"
        "ie = microndla.MDLA()\n"
        "ie.SetFlag({'nclusters': 2, 'workers': 'processes'})\n"
        f"ie.Compile({str(model)!r})\n"
        "ie.Run(np.zeros((2, 3, 32, 32), np.float32))\n"
        "print(*[w.pid for w in ie._cards[0].workers], ie._cards[0].shm.name)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "leaked" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    *pids, shm = r.stdout.split()
    assert len(pids) == 2 and not any(_alive(int(p)) for p in pids)
    assert not Path("/dev/shm", shm.lstrip("/")).exists()


def test_streaming_linked_models_in_processes(tmp_path):
    """PutInput/GetResult of two models linked on disjoint clusters run them together on the card:
    in processes exactly as in this process."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(small_cnn(seed=3), str(a))
    onnx.save(small_cnn(seed=8), str(b))
    x = np.random.default_rng(4).random((2, 3, 32, 32), dtype=np.float32)
    got = {}
    for mode in ("serial", "processes"):
        ie, ie2 = microndla.MDLA(), microndla.MDLA()
        ie.SetFlag({"nclusters": 2, "clustersbatchmode": 1, "workers": mode})
        ie2.SetFlag({"nclusters": 2, "firstcluster": 2, "workers": mode})
        ie.Compile(str(a))
        ie2.Compile(str(b), MDLA=ie)
        ie.PutInput(x[0], "a")
        ie2.PutInput(x, "b")
        (y1, o1), (y2, o2) = ie.GetResult(), ie2.GetResult()
        assert (o1, o2) == ("a", "b")
        got[mode] = (y1, y2, ie.GetInfo("hwcycles"), ie2.GetInfo("hwcycles"), ie._last_stats)
        assert bool(ie._cards[0].workers) == (mode == "processes")
        ie2.Free()
        ie.Free()
    s, p = got["serial"], got["processes"]
    assert np.array_equal(s[0], p[0]) and np.array_equal(s[1], p[1]) and s[2:] == p[2:]


def test_helper_dying_mid_run(r18, monkeypatch):
    """A cluster helper that dies in the middle of a run: a clear error, the other helper's run is
    ended, and the next run is right again."""
    from runtime.workers import ClusterHelper
    ie = microndla.MDLA()
    ie.SetFlag({"nclusters": 2, "workers": "processes"})
    ie.Compile(r18)
    x = np.random.default_rng(6).random((2, 3, 32, 32), dtype=np.float32)
    y = ie.Run(x)
    real, calls = ClusterHelper.apply, []

    def apply(self, ops):
        calls.append(1)
        real(self, ops) if len(calls) != 3 else self.worker.submit(("exit", 5))
    monkeypatch.setattr(ClusterHelper, "apply", apply)
    with pytest.raises(WorkerCrashed, match=r"died while running a request \(exit code 5\)"):
        ie.Run(x)
    monkeypatch.setattr(ClusterHelper, "apply", real)
    assert np.array_equal(ie.Run(x), y)
    ie.Free()


def test_auto_keeps_tiny_calls_in_this_process(tmp_path):
    p = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(seed=2), str(p))
    ie = microndla.MDLA()
    ie.SetFlag({"nfpgas": 2, "nclusters": 2})
    ie.Compile(str(p))
    ie.Run(np.zeros((4, 3, 32, 32), np.float32))
    assert ie.GetInfo("workers") == "auto" and not any(c.workers or c.shm for c in ie._cards)
    ie.Free()


@pytest.mark.parametrize("flags", [{"nfpgas": 2}, {"nclusters": 2}])
def test_stopped_worker_is_a_timeout_not_a_hang(r18, flags, monkeypatch):
    """A worker that lives but does not answer (SIGSTOP) is killed once the reply timeout of the
    run's modelled work has passed; the error names it; the next run starts a fresh one."""
    from runtime import workers
    ie = microndla.MDLA()
    ie.SetFlag({**flags, "workers": "processes"})
    ie.Compile(r18)
    x = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    y = ie.Run(x)
    monkeypatch.setattr(workers, "MIN_REPLY_S", 1.5)
    monkeypatch.setattr(workers, "SLOWEST_MACS_PER_S", 1e15)
    victim = ie._cards[-1].workers[-1].pid
    os.kill(victim, signal.SIGSTOP)
    try:
        with pytest.raises(microndla.WorkerTimeout, match=rf"\(pid {victim}\) is stopped .*did not answer within 2 s"):
            ie.Run(x)
        assert not _alive(victim)
    finally:
        if _alive(victim):
            os.kill(victim, signal.SIGKILL)
    monkeypatch.undo()
    assert np.array_equal(ie.Run(x), y)
    ie.Free()


def test_reply_timeout_grows_with_the_work():
    from runtime.workers import MIN_REPLY_S, reply_timeout
    assert reply_timeout(0) == MIN_REPLY_S
    assert reply_timeout(10 ** 12) > reply_timeout(10 ** 9) > MIN_REPLY_S
