"""Cards as Ray actors (workers='ray') on a two-node Ray cluster made here: bit for bit the serial
results (outputs, cycles, every statistic, every card memory bit, traces; every way of batching:
cards, clusters, split images, linked models streaming together), the cards spread over the
nodes, a killed card actor restarted with a warning, a stopped one a timeout naming it, Ctrl-C
stopping the remote work, a lost node a clear error (not a hang). One cluster for the module (its start costs seconds), small CPU counts
for a 2-core CI machine. Ray is a dependency of the project (the former worker-process pool,
workers='processes', was retired for it: docs/parallel.md)."""
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import onnx
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")     # the cluster on loopback (runtime.ray_cards)
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import microndla  # noqa: E402
from runtime import ray_cards  # noqa: E402
from runtime.executors import EXECUTORS, FunctionalExecutor  # noqa: E402
from zoo import resnet18  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::runtime.saturation.SaturationWarning")

# fast failure detection, so that the lost-node test ends in seconds; a killed actor that does not
# exit at once (a stopped one) SIGKILLed after 0.5 s instead of Ray's 5 s
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
               "health_check_failure_threshold": 3, "health_check_timeout_ms": 300,
               "kill_worker_timeout_milliseconds": 500}


@pytest.fixture(scope="module")
def cluster():
    """A head without CPUs (no card lands there, so any card's node can be removed) and two
    one-CPU worker nodes."""
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": FAST_HEALTH,
                                                      "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    p = tmp_path_factory.mktemp("ray") / "r18.onnx"
    onnx.save(resnet18(seed=5, input_shape=(1, 3, 32, 32), classes=10), str(p))
    return str(p)


def _inputs(n):
    return np.random.default_rng(0).random((n, 3, 32, 32), dtype=np.float32) * 120 - 60


def _snapshot(ie, x):
    y = ie.Run(x)
    return dict(y=y, cycles=ie.GetInfo("hwcycles"), sat=ie.GetInfo("saturations"), stats=ie._last_stats)


def _actor_memory(ie):
    eng = ray_cards._ENGINES[ie._owner]
    return ray.get([eng.actors[c.index].handle.snapshot.remote() for c in ie._cards])


def test_ray_cards_equal_serial_and_spread(cluster, r18):
    ie = microndla.MDLA()
    ie.SetFlag({"nfpgas": 2, "nclusters": 2, "workers": "serial"})
    ie.Compile(r18)
    x = _inputs(ie.GetInfo("batch"))
    serial = [_snapshot(ie, x), _snapshot(ie, x[::-1] / 2)]
    serial_memory = [c.memory.copy() for c in ie._cards]
    ie.SetFlag("workers", "ray")
    assert ie.GetInfo("engine").startswith("ray (not started yet")
    on_ray = [_snapshot(ie, x), _snapshot(ie, x[::-1] / 2)]    # twice: the actors keep the program
    for a, b in zip(serial, on_ray):
        assert np.array_equal(a["y"], b["y"])
        assert a["cycles"] == b["cycles"] and a["sat"] == b["sat"] > 0
        assert a["stats"] == b["stats"]
    assert all(np.array_equal(m, n) for m, n in zip(serial_memory, _actor_memory(ie)))   # every memory bit
    engine = ie.GetInfo("engine")
    assert engine.startswith(f"ray {ray.__version__} (cluster at") and "2 card actor(s)" in engine
    cards = ie.GetInfo("cards")
    assert [c["card"] for c in cards] == [c.index for c in ie._cards]
    assert len({c["node_id"] for c in cards}) == 2        # one card on each worker node
    pids = [c["pid"] for c in cards]
    ie.Free()
    assert not ray_cards._ENGINES.get(ie._owner)
    time.sleep(0.5)
    assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split(") ")[1][0] != "Z"
                   for p in pids)                         # Free() ended the card actors
    assert ray.is_initialized()                           # ... and left the user's connection alone


@pytest.mark.parametrize("flags", [
    {"nclusters": 4}, {"nclusters": 2, "clustersbatchmode": 1}, {"nclusters": 3},
    {"nfpgas": 2, "nclusters": 2, "clustersbatchmode": 1},
], ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_every_way_of_batching_equals_serial(cluster, r18, flags):
    """The batching modes besides the one above (what the worker processes were checked on):
    outputs, cycles, saturations inside the DLA, every statistic and every card memory bit."""
    ie = microndla.MDLA()
    ie.SetFlag({**flags, "workers": "serial"})
    ie.Compile(r18)
    x = _inputs(ie.GetInfo("batch"))
    serial = _snapshot(ie, x[::-1] / 2)
    serial_memory = [c.memory.copy() for c in ie._cards]
    ie.SetFlag("workers", "ray")
    on_ray = _snapshot(ie, x[::-1] / 2)
    assert np.array_equal(serial["y"], on_ray["y"])
    assert serial["cycles"] == on_ray["cycles"] and serial["sat"] == on_ray["sat"] > 0
    assert serial["stats"] == on_ray["stats"]
    assert all(np.array_equal(m, n) for m, n in zip(serial_memory, _actor_memory(ie)))
    ie.Free()


def test_trace_and_hazard_flags_reach_the_actors(cluster, tmp_path):
    """The trace file of a Ray run is the serial run's (the timelines come back from the actors),
    with the hazard check off in both."""
    from tests.test_trace import _compile, _image
    from zoo import kernels
    model = kernels.conv_model(4, 8, 6, 6, 3, 1, 1, relu=True, seed=3)
    docs = []
    for mode in ("serial", "ray"):
        path = tmp_path / f"{mode}.json"
        ie = _compile(tmp_path, model, {"trace": str(path), "nfpgas": 2, "workers": mode, "hazardcheck": 0})
        ie.Run(_image(ie))
        assert ie._last_stats[0].clusters[0].timeline
        docs.append(json.loads(path.read_text()))
        ie.Free()
    assert docs[0] == docs[1]


def test_streaming_linked_models_on_ray(cluster, tmp_path):
    """PutInput/GetResult of two models linked on disjoint clusters of one card run them together:
    on the card's actor exactly as in this process."""
    from zoo import small_cnn
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(small_cnn(seed=3), str(a))
    onnx.save(small_cnn(seed=8), str(b))
    x = np.random.default_rng(4).random((2, 3, 32, 32), dtype=np.float32)
    got = {}
    for mode in ("serial", "ray"):
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
        assert (ray_cards._ENGINES.get(ie._owner) is not None) == (mode == "ray")
        ie2.Free()
        ie.Free()
    s, r = got["serial"], got["ray"]
    assert np.array_equal(s[0], r[0]) and np.array_equal(s[1], r[1]) and s[2:] == r[2:]


def test_killed_card_actor_restarts_and_reruns(cluster, r18):
    ie = microndla.MDLA()
    ie.SetFlag({"nfpgas": 2, "workers": "serial"})
    ie.Compile(r18)
    x = _inputs(2)
    expected = ie.Run(x)
    ie.SetFlag("workers", "ray")
    ie.Run(x)
    victim = ie.GetInfo("cards")[1]
    os.kill(victim["pid"], signal.SIGKILL)
    with pytest.warns(ray_cards.CardRestarted, match=r"card \d+: its Ray actor .* died; started afresh, its 1 image"):
        y = ie.Run(x)
    assert np.array_equal(y, expected)
    assert ie.GetInfo("cards")[1]["pid"] != victim["pid"]
    ie.Free()


def _alive(pid):
    """The process lives (a zombie waiting for its parent counts as gone)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone_or_killed(pid, within=20.0) -> bool:
    """Wait for ``pid`` to end; SIGKILL it if it does not (the test's own clean-up): whether it ended."""
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        return False
    return True


def _times_out_when_stopped(pid, pattern: str, call) -> tuple[bool, float]:
    """SIGSTOP ``pid``, expect ``call()`` to raise CardTimeout matching ``pattern``; then (whether the
    process ended, the seconds the call took)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(ray_cards.CardTimeout, match=pattern):
            call()
        took = time.monotonic() - t0
    finally:
        ended = _gone_or_killed(pid)
    return ended, took


def test_stopped_card_actor_is_a_timeout_not_a_hang(cluster, r18, monkeypatch):
    """A card actor that lives but does not answer (SIGSTOP) ends the call once the reply deadline
    of the card's modelled work has passed: the error names the card, its pid, node and state; the
    actor is killed and the next call starts a fresh one with the same results."""
    ie = microndla.MDLA()
    ie.SetFlag({"nfpgas": 2, "workers": "ray"})
    ie.Compile(r18)
    x = _inputs(2)
    expected = _snapshot(ie, x)
    victim = ie.GetInfo("cards")[1]
    monkeypatch.setattr(ray_cards, "MIN_REPLY_S", 1.5)
    monkeypatch.setattr(ray_cards, "SLOWEST_MACS_PER_S", 1e15)
    ended, took = _times_out_when_stopped(
        victim["pid"], rf"card {victim['card']}: its Ray actor \(pid {victim['pid']} on node {victim['node']}, id "
                       rf"{victim['node_id'][:12]}\) is stopped \(SIGSTOP\? a debugger\?\) and did not "
                       rf"answer within 1.5 s .*killed and is started afresh", lambda: ie.Run(x))
    assert took < 30
    assert ended                                          # ray.kill ended the stopped process
    monkeypatch.undo()
    again = _snapshot(ie, x)
    assert np.array_equal(again["y"], expected["y"]) and again["stats"] == expected["stats"]
    assert again["cycles"] == expected["cycles"] and again["sat"] == expected["sat"]
    assert ie.GetInfo("cards")[1]["pid"] != victim["pid"]
    ie.Free()


def test_stopped_rtl_card_actor_is_a_timeout_from_its_cycles(cluster, tmp_path, monkeypatch):
    """On an RTL executor the deadline comes from the card's expected cycles (the functional
    model's schedule), not its MACs: a stopped actor running the card on Amaranth's simulator ends
    the call too, and the next call gives the functional model's bits and cycles."""
    from zoo import kernels
    p = tmp_path / "conv.onnx"
    onnx.save(kernels.conv_model(4, 8, 6, 6, 3, 1, 1, relu=True, seed=3), str(p))
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    ref = microndla.MDLA()
    ref.Compile(str(p))
    expected, expected_cycles = ref.Run(x), ref.GetInfo("hwcycles")
    ref.Free()
    ie = microndla.MDLA()
    ie.SetFlag({"workers": "ray", "simulator": "amaranth"})
    ie.Compile(str(p))
    assert np.array_equal(ie.Run(x), expected)
    card, victim = ie.GetInfo("cards")[0]["card"], ie.GetInfo("cards")[0]["pid"]
    # the deadline: MIN_REPLY_S + cycles / SLOWEST_RTL_CYCLES_PER_S, here 1.5 s + at most 0.5 s
    monkeypatch.setattr(ray_cards, "MIN_REPLY_S", 1.5)
    monkeypatch.setattr(ray_cards, "SLOWEST_RTL_CYCLES_PER_S", 2.0 * expected_cycles)
    ended, _ = _times_out_when_stopped(victim, rf"card {card}: its Ray actor \(pid {victim} .*is stopped .*"
                                               rf"within 2.0 s \(the deadline of its modelled work", lambda: ie.Run(x))
    assert ended
    monkeypatch.undo()
    assert np.array_equal(ie.Run(x), expected) and ie.GetInfo("hwcycles") == expected_cycles
    ie.Free()


def test_rtl_reply_timeout_follows_the_cycles():
    from runtime.executors import AmaranthExecutor, FunctionalExecutor
    rtl = AmaranthExecutor()
    assert ray_cards.reply_timeout(10 ** 12, rtl, 1000) == ray_cards.MIN_REPLY_S + 1000 / ray_cards.SLOWEST_RTL_CYCLES_PER_S
    assert ray_cards.reply_timeout(0, rtl, lambda: 10 ** 6) > ray_cards.reply_timeout(0, rtl, 10 ** 3)
    assert ray_cards.reply_timeout(0, rtl, None) is None          # a program the functional model refuses
    assert ray_cards.reply_timeout(10 ** 9, FunctionalExecutor(), lambda: 1 / 0) == ray_cards.reply_timeout(10 ** 9)


def test_stopped_card_actor_during_a_load_is_a_timeout(cluster, tmp_path, monkeypatch):
    """The memory image's load into a stopped actor (the card's residents changed: a model linked
    to it) is bounded too."""
    from zoo import small_cnn
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(small_cnn(seed=3), str(a))
    onnx.save(small_cnn(seed=8), str(b))
    x = np.random.default_rng(4).random((1, 3, 32, 32), dtype=np.float32)
    ie, ie2 = microndla.MDLA(), microndla.MDLA()
    ie.SetFlag({"workers": "ray"})
    ie2.SetFlag({"firstcluster": 2, "workers": "ray"})
    ie.Compile(str(a))
    expected = ie.Run(x)
    card, victim = ie.GetInfo("cards")[0]["card"], ie.GetInfo("cards")[0]["pid"]
    ie2.Compile(str(b), MDLA=ie)                          # the card's memory image changes
    monkeypatch.setattr(ray_cards, "MIN_REPLY_S", 1.5)
    monkeypatch.setattr(ray_cards, "SLOWEST_LOAD_BYTES_PER_S", 1e15)
    ended, _ = _times_out_when_stopped(victim, rf"card {card}: its Ray actor \(pid {victim} on node .*\) is "
                                               rf"stopped .*did not take its memory image within 1.5 s", lambda: ie.Run(x))
    assert ended
    monkeypatch.undo()
    assert np.array_equal(ie.Run(x), expected)
    assert ie.GetInfo("cards")[0]["pid"] != victim
    ie2.Free()
    ie.Free()


def test_reply_timeout_grows_with_the_work(r18):
    from runtime.executors import AmaranthExecutor
    ie = microndla.MDLA()
    ie.SetFlag({"nfpgas": 2, "nclusters": 2})
    ie.Compile(r18)
    c = ie._compiled
    per_image = sum(lc.macs for lc in c.layers)
    assert per_image > 0 and ray_cards.card_macs([(c, None, c.parallel.batch)]) == 2 * per_image   # 2 images a card
    assert ray_cards.card_macs([(c, None, 1)]) == 2 * per_image          # the program runs every slot
    assert ray_cards.card_macs([(c, None, 4), (c, None, 4)]) == 4 * per_image
    t = ray_cards.reply_timeout
    assert t(0) == ray_cards.MIN_REPLY_S
    assert t(10 ** 12) > t(10 ** 9) > t(0)
    assert t(10 ** 9, FunctionalExecutor()) == t(10 ** 9) == ray_cards.MIN_REPLY_S + 10 ** 9 / ray_cards.SLOWEST_MACS_PER_S
    assert t(10 ** 9, AmaranthExecutor()) is None        # cycles/s simulators: no MAC-derived deadline
    assert ray_cards.load_timeout(10 ** 9) > ray_cards.load_timeout(0) == ray_cards.MIN_REPLY_S
    ie.Free()


def test_timeout_error_says_what_is_known_of_the_actor():
    """The state of an actor on this host comes from /proc; of one elsewhere it is not guessed."""
    import socket
    eng = object.__new__(ray_cards.RayCards)
    here, dead = socket.gethostname(), 2 ** 22 + 1      # above Linux's largest pid
    eng.actors = {0: ray_cards._Placed(None, {"pid": os.getpid(), "node": "127.0.0.1", "node_id": "ab" * 20, "host": here}),
                  1: ray_cards._Placed(None, {"pid": dead, "node": "127.0.0.1", "node_id": "cd" * 20, "host": here}),
                  2: ray_cards._Placed(None, {"pid": 7, "node": "10.0.0.9", "node_id": "ef" * 20, "host": here + "-other"})}
    msg = [str(eng._timed_out(i, 61.25, "answer", "its modelled work")) for i in range(3)]
    assert msg[0] == (f"card 0: its Ray actor (pid {os.getpid()} on node 127.0.0.1, id abababababab) is running "
                      f"(busy or hung) and did not answer within 61.2 s (the deadline of its modelled work); it was "
                      f"killed and is started afresh at the next call")
    assert f"(pid {dead} on node 127.0.0.1, id cdcdcdcdcdcd) is gone and did not answer" in msg[1]
    assert "(pid 7 on node 10.0.0.9, id efefefefefef) (its process state cannot be read from this host) did not" in msg[2]
    assert ray_cards.process_state(os.getpid()) == "running" and ray_cards.process_state(dead) == ""


def test_ctrl_c_stops_the_remote_work(cluster, r18, monkeypatch):
    class Sleepy(FunctionalExecutor):      # defined here: Ray ships the class itself to the actors
        name = "sleepy"

        def run(self, cfg, memory, programs, *, check_hazards=True):
            time.sleep(60)

    monkeypatch.setitem(EXECUTORS, "sleepy", Sleepy)
    ie = microndla.MDLA()
    ie.SetFlag({"nfpgas": 2, "workers": "ray", "simulator": "sleepy"})
    ie.Compile(r18)
    x = _inputs(2)
    threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ie.Run(x)
    assert time.monotonic() - t0 < 30
    assert not ray_cards._ENGINES[ie._owner].actors       # the call's actors were killed
    ie.SetFlag("simulator", "functional")
    ie.SetFlag("workers", "serial")
    expected = ie.Run(x)
    ie.SetFlag("workers", "ray")
    assert np.array_equal(ie.Run(x), expected)            # fresh actors at the next call
    ie.Free()


def test_flags_refused_clearly():
    ie = microndla.MDLA()
    with pytest.raises(ValueError, match="more than 64 simulated cards need workers='ray'"):
        ie.SetFlag("maxfpga", 100)
    ie.SetFlag("workers", "ray")
    ie.SetFlag("maxfpga", 100)                            # far beyond this host's cores
    assert ie.GetInfo("maxfpga") == 100
    ie.SetFlag("maxfpga", 4)


def test_processes_is_refused_and_auto_starts_no_ray(small_cnn_onnx):
    """The retired worker-process pool: 'processes' names its replacement; 'auto' (the default) runs
    the cards here and never starts a Ray instance behind the caller's back."""
    ie = microndla.MDLA()
    with pytest.raises(ValueError, match=r"flag 'workers'.*'processes' is no longer a mode.*retired for Ray"
                                         r".*SetFlag\('workers', 'ray'\)"):
        ie.SetFlag("workers", "processes")
    with pytest.raises(ValueError, match=r"expects one of auto, serial, ray, got 'threads'"):
        ie.SetFlag("workers", "threads")
    assert ie.GetInfo("workers") == "auto"
    users = ray_cards.SESSION.users
    ie.SetFlag("nfpgas", 2)
    ie.Compile(small_cnn_onnx)
    ie.Run(np.zeros((2, 3, 32, 32), np.float32))
    assert ie.GetInfo("engine") == "auto (this process, one card after another)"
    assert ray_cards._ENGINES.get(ie._owner) is None and ray_cards.SESSION.users == users
    assert [c["engine"] for c in ie.GetInfo("cards")] == ["here", "here"]
    ie.Free()


def test_local_instance_listens_on_loopback_only(tmp_path):
    """A local Ray started by the runtime (no address) binds 127.0.0.1 only and is shut down with the
    object. In a subprocess: this module's cluster is the connection here."""
    script = tmp_path / "local.py"
    script.write_text(
        "import subprocess, numpy as np, onnx, microndla, ray\n"
        "from zoo import small_cnn\n"
        f"onnx.save(small_cnn(seed=1), {str(tmp_path / 'm.onnx')!r})\n"
        "ie = microndla.MDLA()\n"
        "ie.SetFlag({'workers': 'ray', 'ray_address': ''})\n"
        f"ie.Compile({str(tmp_path / 'm.onnx')!r})\n"
        "ie.Run(np.zeros(tuple(int(d) for d in ie.GetInfo('inshapes').split('x')), np.float32))\n"
        "print('ENGINE', ie.GetInfo('engine'))\n"
        "print(subprocess.run(['ss', '-ltnpH'], capture_output=True, text=True).stdout)\n"
        "import os\n"
        "parent = {int(d): int(open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "          for d in os.listdir('/proc') if d.isdigit() and os.path.exists(f'/proc/{d}/stat')}\n"
        "mine, grew = {os.getpid()}, True\n"
        "while grew:\n"
        "    more = {p for p, pp in parent.items() if pp in mine} - mine\n"
        "    grew = bool(more); mine |= more\n"
        "print('PIDS', ','.join(map(str, sorted(mine))))\n"
        "ie.Free()\n"
        "print('AFTER', ray.is_initialized(), os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    out = subprocess.run([os.sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=240, cwd=os.path.dirname(os.path.dirname(__file__))).stdout
    assert "ENGINE ray" in out and "local instance on 127.0.0.1" in out, out
    pids = next(line for line in out.splitlines() if line.startswith("PIDS ")).split()[1].split(",")
    listening = [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]
    assert len(listening) >= 3, out                      # GCS, raylet, the driver, the card actor...
    for line in listening:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")), line
    assert "AFTER False None" in out                     # shut down, Ray's node address switch undone


def test_rtl_regression_as_ray_tasks_replays_by_seed(cluster, monkeypatch):
    """The random-program differential run fanned out over the cluster (Amaranth's simulator here:
    no build; Verilator tasks reuse each node's cached build): the same results as here, seed for
    seed, on both nodes; a mismatch names its seed and the command that replays it."""
    from runtime import rtl_regress
    here = rtl_regress.regress_random(2, 7, "amaranth", progress=False)
    there = rtl_regress.regress_random(2, 7, "amaranth", ray=True, per_task=1, progress=False)
    assert [(r.seed, r.status, r.cycles) for r in here.results] == [(r.seed, r.status, r.cycles) for r in there.results]
    assert there.count("pass") + there.count("racy") == 2 and there.ok
    # a seed is one program: the same memory image and addresses every time
    a, b = rtl_regress.random_case(11, "amaranth"), rtl_regress.random_case(11, "amaranth")
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[1], rtl_regress.random_case(12, "amaranth")[1])
    bad = rtl_regress.Report("verilator", [rtl_regress.CaseResult(42, "fail", "cluster 0 cycles: verilator 10 model 11")])
    assert "seed 42: FAIL" in bad.summary() and "mdla regress random --seed 42 --count 1 --simulator verilator" in bad.summary()


def test_rtl_network_regression_as_a_ray_task(cluster):
    """`mdla regress network` on a small network (small_cnn 8x8, the small machine, Amaranth's
    simulator: no build, ~5 s) as a Ray task on the cluster: the RTL equals the functional model
    (memory, cycles, counters), and the line names the network, the cycles and the node."""
    from click.testing import CliRunner

    from runtime.rtl_regress import regress_network_command
    from sim.card import run_card
    res = CliRunner().invoke(regress_network_command, ["small_cnn", "--size", "8", "--config", "small",
                                                       "--simulator", "amaranth", "--ray"])
    assert res.exit_code == 0, res.output
    import zoo
    from arch.machine import get_config
    from compiler.driver import compile_graph
    from compiler.frontend import load_model
    from compiler.quantize import quantize
    cfg = get_config("small")
    c = compile_graph(quantize(load_model(zoo.build("small_cnn", seed=0, input_shape=(1, 3, 8, 8))), cfg), cfg)
    mem, _ = c.seeded_image(0)
    cycles = run_card(cfg, mem, c.program_addresses()).cycles
    assert f"small_cnn 8x8 on small: pass ({cycles:,} cycles, " in res.output and "127.0.0.1)" in res.output


def test_lost_node_is_a_clear_error(cluster, r18):
    """Last in the module: it removes a node."""
    c, workers = cluster
    ie = microndla.MDLA()
    ie.SetFlag({"nfpgas": 2, "workers": "ray"})
    ie.Compile(r18)
    x = _inputs(2)
    ie.Run(x)
    node_of = {n.node_id: n for n in workers}
    lost = node_of[ie.GetInfo("cards")[1]["node_id"]]
    c.remove_node(lost, allow_graceful=False)
    t0 = time.monotonic()
    with pytest.raises(ray_cards.NodeLost, match=r"card \d+: its Ray node .* left the cluster during the run"):
        ie.Run(x)
    assert time.monotonic() - t0 < 60
    ie.Free()


def test_readdata_fetches_the_run_results_from_the_card_actor(cluster, tmp_path):
    from zoo import small_cnn
    m = tmp_path / "s.onnx"
    onnx.save(small_cnn(seed=3), str(m))
    ie = microndla.MDLA()
    ie.SetFlag({"bitfile": "small", "workers": "serial"})
    ie.Compile(str(m))
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    ie.Run(x)
    serial = ie._cards[0].memory.copy()
    ie.Run(x * 0)                                   # the driver's copy now holds another run's results
    ie.SetFlag("workers", "ray")
    ie.Run(x)
    got = np.zeros(len(serial), np.uint8)
    ie.ReadData(0, got, 0)
    assert np.array_equal(got, serial) and not np.array_equal(ie._cards[0].memory, serial)
    with pytest.raises(microndla.MDLAError, match="Ray card actors"):
        ie.WriteData(0, got[:4], 0)
    ie.Free()
