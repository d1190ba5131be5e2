"""The timeline trace (runtime/trace.py): it validates against the trace event format, its slices
are the program's instructions engine by engine, its busy time is the model's counters, its
counters integrate to the bytes and MACs of the run, and the RTL's trace equals the model's."""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

import microndla
from arch.machine import SMALL
from runtime import trace as tr
from hw.random_programs import DATA, MEM, OUT, program_memory, random_programs
from zoo import kernels

# ------------------------------------------------------------------------------------------------
# A schema-level validator of the trace event format (the JSON Object Format of Chrome's "Trace
# Event Format" document, as Perfetto's JSON importer reads it).
# ------------------------------------------------------------------------------------------------

_REQUIRED = {"X": ("name", "ph", "ts", "dur", "pid", "tid"), "B": ("name", "ph", "ts", "pid", "tid"),
             "E": ("ph", "ts", "pid", "tid"), "i": ("name", "ph", "ts", "pid", "tid", "s"),
             "C": ("name", "ph", "ts", "pid", "args"), "M": ("name", "ph", "pid", "args"),
             "s": ("name", "cat", "ph", "ts", "pid", "tid", "id"), "f": ("name", "cat", "ph", "ts", "pid", "tid", "id")}
_METADATA = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}


def validate(doc: dict) -> dict:
    """Raise AssertionError on anything a trace viewer would reject or misdraw; returns the
    complete slices per (pid, tid)."""
    assert set(doc) >= {"traceEvents"} and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    slices: dict[tuple, list] = defaultdict(list)
    last_ts: dict[tuple, float] = {}
    stacks: dict[tuple, list] = defaultdict(list)
    flows: dict[tuple, list] = defaultdict(list)
    for n, e in enumerate(doc["traceEvents"]):
        ph = e.get("ph")
        assert ph in _REQUIRED, f"event {n}: unknown phase {ph!r}"
        missing = [k for k in _REQUIRED[ph] if k not in e]
        assert not missing, f"event {n} ({ph}): missing {missing}"
        assert isinstance(e["pid"], int) and isinstance(e.get("tid", 0), int)
        if ph == "M":
            assert e["name"] in _METADATA and ("name" in e["args"] or "sort_index" in e["args"]), e
            continue
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        key = (e["pid"], e.get("tid", 0), "C:" + e["name"] if ph == "C" else "")
        assert e["ts"] >= last_ts.get(key, 0), f"event {n}: timestamp goes back on track {key}"
        last_ts[key] = e["ts"]
        if ph == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
            slices[key[:2]].append(e)
        elif ph == "B":
            stacks[key].append(e["ts"])
        elif ph == "E":
            assert stacks[key], f"event {n}: E without B"
            stacks[key].pop()
        elif ph == "C":
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values()), e
        elif ph == "i":
            assert e["s"] in ("g", "p", "t")
        else:
            flows[(e["cat"], e["name"], e["id"])].append(e)
    assert not any(stacks.values()), "unbalanced B/E events"
    for key, ss in slices.items():     # an engine runs one instruction at a time: no overlaps on a track
        for a, b in zip(ss, ss[1:]):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-9, f"overlapping slices on track {key}: {a['name']}, {b['name']}"
    for key, pair in flows.items():     # each flow starts and finishes once, inside a slice of its track
        assert sorted(x["ph"] for x in pair) == ["f", "s"], f"flow {key}: {[x['ph'] for x in pair]}"
        s, f = sorted(pair, key=lambda x: x["ph"] != "s")
        assert f["ts"] >= s["ts"]
        for x in (s, f):
            assert any(z["ts"] <= x["ts"] <= z["ts"] + z["dur"] for z in slices[(x["pid"], x["tid"])]), \
                f"flow {key}: its {x['ph']} end is in no slice"
    return slices


def _threads(doc: dict) -> dict[tuple, str]:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
            if e["ph"] == "M" and e["name"] == "thread_name"}


def _compile(tmp_path, model, flags: dict, config: str = "small") -> microndla.MDLA:
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", config)
    ie.SetFlag(flags)
    ie.Compile(str(path))
    return ie


def _image(ie) -> np.ndarray:
    shape = (ie.GetInfo("batch"),) + tuple(int(s) for s in ie.GetInfo("inshapes").split("x")[1:])
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def _check_against_stats(doc: dict, ie) -> None:
    """Slices per engine track = the program's instructions on that engine; busy time = the counters."""
    slices = validate(doc)
    names = _threads(doc)
    mhz = ie._compiled.cfg.clock_mhz
    checked = 0
    for f, card in enumerate(ie._last_stats):
        for cl, cs in card.clusters.items():
            prog = ie._compiled.programs[cl]
            per_engine = Counter(i.engine for i in prog)
            for k, track in enumerate(tr.TRACKS):
                key = (f + 1, cl * 16 + k)
                assert names[key].startswith(f"cluster {cl} {track}")
                got = slices[key]
                assert len(got) == (len(prog) if track == "fetch" else per_engine[track]), (f, cl, track)
                if track != "fetch":
                    assert sum(e["args"]["cycles"] for e in got) == cs.busy[track]
                    assert sum(e["dur"] for e in got) * mhz == pytest.approx(cs.busy[track], abs=1e-6 * cs.cycles)
                    assert [e["args"]["pc"] for e in got] == [pc for pc, i in enumerate(prog) if i.engine == track]
                checked += 1
    assert checked >= 4


def test_trace_of_a_run_matches_the_program_and_the_counters(tmp_path):
    path = tmp_path / "run.json"
    ie = _compile(tmp_path, kernels.residual_model(8, 6, 6, 1, seed=2), {"trace": str(path)})
    ie.Run(_image(ie))
    doc = json.loads(path.read_text())
    _check_against_stats(doc, ie)
    ev = doc["traceEvents"]
    cs = ie._last_stats[0].clusters[0]
    cfg = ie._compiled.cfg
    # one slice per instruction carries its layer, opcode and fields
    conv = next(e for e in ev if e["ph"] == "X" and e.get("cat") == "compute" and e["name"].startswith("CONV"))
    assert conv["args"]["layer"] in {l.name for l in ie._compiled.layers}
    assert conv["args"]["asm"].startswith("CONV") and "oh" in conv["args"]["fields"]
    assert conv["ts"] == pytest.approx(conv["args"]["start_cycle"] * 1000 / cfg.clock_mhz / 1000)
    # the counters integrate to the bytes moved and the MACs done
    def integral(name, key):
        pts = [(e["ts"], e["args"][key]) for e in ev if e["ph"] == "C" and e["name"] == name]
        return sum(v * (t1 - t0) for (t0, v), (t1, _) in zip(pts, pts[1:])) * cfg.clock_mhz
    assert integral("memory port (bytes/cycle)", "load") == pytest.approx(cs.bytes_loaded)
    assert integral("memory port (bytes/cycle)", "store") == pytest.approx(cs.bytes_stored)
    assert integral("cluster 0 MAC lanes in use", "lanes") == pytest.approx(cs.macs)
    assert integral("cluster 0 MAC lanes in use", "useful") == pytest.approx(sum(l.macs for l in ie._compiled.layers))
    # a token flow for every pop of the program
    pops = sum(i.f[k] for i in ie._compiled.programs[0] for k in ("pop_prev", "pop_next"))
    assert sum(e["ph"] == "f" for e in ev) == pops > 0
    assert doc["otherData"]["clock_mhz"] == cfg.clock_mhz and doc["displayTimeUnit"] == "ns"


def test_multi_card_and_multi_cluster_side_by_side(tmp_path):
    path = tmp_path / "par.json"
    ie = _compile(tmp_path, kernels.conv_model(4, 8, 6, 6, 3, 1, 1, relu=True, seed=3),
                  {"trace": str(path), "nfpgas": 2, "nclusters": 2})
    ie.Run(_image(ie))
    doc = json.loads(path.read_text())
    _check_against_stats(doc, ie)
    procs = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert set(procs) == {1, 2} and procs[2].startswith("card 1")
    assert {t for (pid, _), t in _threads(doc).items() if pid == 2} >= {"cluster 0 compute", "cluster 1 compute"}


def test_mvbatch_names_the_mv_units(tmp_path):
    path = tmp_path / "mv.json"
    ie = _compile(tmp_path, kernels.conv_model(4, 8, 6, 6, 3, 1, 1, relu=True, seed=3),
                  {"trace": str(path), "mvbatch": 1, "imgs_per_cluster": SMALL.mv_per_cluster})
    ie.Run(_image(ie))
    doc = json.loads(path.read_text())
    _check_against_stats(doc, ie)
    stores = [e for e in doc["traceEvents"] if e["ph"] == "X" and e.get("cat") == "store"]
    assert {e["args"]["fields"]["mv"] for e in stores} == set(range(SMALL.mv_per_cluster))
    assert all(f"MV{e['args']['fields']['mv']}→" in e["name"] for e in stores)


def test_linked_models_share_one_timeline(tmp_path):
    a_path, b_path = tmp_path / "a.json", tmp_path / "b.json"
    onnx.save(kernels.conv_model(4, 8, 6, 6, 3, 1, 1, seed=3), str(tmp_path / "a.onnx"))
    onnx.save(kernels.maxpool_model(8, 6, 6, 2, 2, 0, seed=2), str(tmp_path / "b.onnx"))
    a, b = microndla.MDLA(), microndla.MDLA()
    for ie, first in ((a, 0), (b, 1)):
        ie.SetFlag({"bitfile": "small", "firstcluster": first})
    a.SetFlag("trace", str(a_path))
    a.Compile(str(tmp_path / "a.onnx"))
    b.Compile(str(tmp_path / "b.onnx"), MDLA=a)
    a.PutInput(_image(a), None)
    b.PutInput(_image(b), None)
    a.GetResult()
    b.GetResult()
    doc = json.loads(a_path.read_text())
    validate(doc)
    names = set(_threads(doc).values())
    assert any(n.startswith("cluster 0 compute (model 0") for n in names), names
    assert any(n.startswith("cluster 1 compute (model 1") for n in names), names
    assert not b_path.exists()


def test_host_stages_on_the_host_track(tmp_path):
    from tests.test_heterogeneous import with_middle
    path = tmp_path / "het.json"
    ie = _compile(tmp_path, with_middle("softmax"), {"trace": str(path), "heterogeneous": 1})
    ie.Run(_image(ie))
    doc = json.loads(path.read_text())
    validate(doc)
    host = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["pid"] == tr.HOST_PID]
    assert host and all("not modelled" in e["args"]["note"] for e in host)
    stages = ie._compiled.stages
    assert len(host) == sum(not hasattr(s, "programs") for s in stages)
    # the second DLA stage's slices start after the first one's end
    dla = [k for k, s in enumerate(stages) if hasattr(s, "programs")]
    first_end = max(s.cycles for s in ie._last_stage_stats[dla[0]])
    late = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["args"].get("model") == f"DLA stage {dla[1]}"]
    assert late and min(e["ts"] for e in late) >= first_end / ie._compiled.cfg.clock_mhz - 1e-9


def test_big_traces_merge_per_layer(tmp_path):
    path = tmp_path / "merged.json"
    ie = _compile(tmp_path, kernels.residual_model(8, 6, 6, 1, seed=2), {"trace": str(path), "tracemax": 10})
    ie.Run(_image(ie))
    doc = json.loads(path.read_text())
    slices = validate(doc)
    assert doc["otherData"]["merged_per_layer"]
    cs, prog = ie._last_stats[0].clusters[0], ie._compiled.programs[0]
    for k, track in enumerate(tr.TRACKS):
        got = slices[(1, k)]
        assert sum(e["args"]["instructions"] for e in got) == sum(1 for i in prog if track == "fetch" or i.engine == track)
        if track != "fetch":
            assert sum(e["args"]["busy_cycles"] for e in got) == cs.busy[track]
        assert len(got) < sum(e["args"]["instructions"] for e in got)
    assert not any(e["ph"] in "sf" for e in doc["traceEvents"])
    # binned counters keep their integrals (each bin holds its average)
    pts = [(e["ts"], e["args"]["load"]) for e in doc["traceEvents"] if e["ph"] == "C" and e["name"].startswith("memory")]
    assert len(pts) <= 10 // 4 + 2
    moved = sum(v * (t1 - t0) for (t0, v), (t1, _) in zip(pts, pts[1:])) * ie._compiled.cfg.clock_mhz
    assert moved == pytest.approx(cs.bytes_loaded, rel=1e-3)


def test_validator_rejects_broken_traces():
    good = {"traceEvents": [{"name": "a", "ph": "X", "ts": 0, "dur": 2, "pid": 1, "tid": 0},
                            {"name": "b", "ph": "X", "ts": 3, "dur": 1, "pid": 1, "tid": 0}]}
    validate(good)
    for broken in ([{"name": "a", "ph": "X", "ts": 0, "pid": 1, "tid": 0}],                      # no dur
                   [{"name": "a", "ph": "X", "ts": 0, "dur": 5, "pid": 1, "tid": 0},
                    {"name": "b", "ph": "X", "ts": 3, "dur": 1, "pid": 1, "tid": 0}],            # overlap
                   [{"name": "a", "ph": "X", "ts": 4, "dur": 1, "pid": 1, "tid": 0},
                    {"name": "b", "ph": "X", "ts": 3, "dur": 1, "pid": 1, "tid": 0}],            # time goes back
                   [{"name": "a", "ph": "B", "ts": 0, "pid": 1, "tid": 0}],                      # unbalanced
                   [{"name": "t", "cat": "k", "ph": "s", "id": 1, "ts": 0, "pid": 1, "tid": 0}]):  # open flow
        with pytest.raises(AssertionError):
            validate({"traceEvents": broken})


def test_trace_flag_is_checked(tmp_path):
    ie = microndla.MDLA()
    with pytest.raises(ValueError, match="trace"):
        ie.SetFlag("trace", str(tmp_path / "missing" / "run.json"))
    with pytest.raises(ValueError, match="trace"):
        ie.SetFlag("trace", str(tmp_path))
    with pytest.raises(ValueError, match="tracemax"):
        ie.SetFlag("tracemax", 0)
    ie = _compile(tmp_path, kernels.conv_model(4, 8, 6, 6, 3, 1, 1, seed=3),
                  {"trace": str(tmp_path / "x.json"), "simulator": "icarus"})
    with pytest.raises(Exception, match="records no timeline"):
        ie.Run(_image(ie))


# ------------------------------------------------------------------------------------------------
# The same timeline from the RTL
# ------------------------------------------------------------------------------------------------

def test_rtl_trace_equals_the_functional_models(tmp_path):
    """On the Amaranth card the timeline is read from the RTL's own signals; the trace it writes is
    the functional model's, event for event, and the RTL's per-cycle MAC and port counts integrate
    over each slice to what the trace's counters say."""
    from hw.run import LAST_RUN
    model = kernels.residual_model(4, 6, 6, 1, seed=2)
    ie = _compile(tmp_path, model, {"trace": str(tmp_path / "sw.json")})
    x = _image(ie)
    ie.Run(x)
    sw = json.loads((tmp_path / "sw.json").read_text())
    model_timeline = ie._last_stats[0].clusters[0].timeline
    ie.SetFlag({"simulator": "amaranth", "trace": str(tmp_path / "rtl.json")})
    ie.Run(x)
    rtl = json.loads((tmp_path / "rtl.json").read_text())
    assert ie._last_stats[0].clusters[0].timeline == model_timeline
    assert rtl == sw
    validate(rtl)
    act = LAST_RUN["activity"][0]
    cfg = ie._compiled.cfg
    for e in rtl["traceEvents"]:
        if e["ph"] == "X" and e.get("cat") == "compute" and e["name"].startswith("CONV"):
            s, t = e["args"]["start_cycle"], e["args"]["end_cycle"]
            assert act["macs"][s:t].sum() == e["args"]["macs"]
        if e["ph"] == "X" and e.get("cat") in ("load", "store"):
            g, w = e["args"]["grant_cycle"], e["args"]["words"]
            moved = act["words_loaded" if e["cat"] == "load" else "words_stored"]
            assert moved[g:g + w].sum() == w and moved[g + w:e["args"]["end_cycle"]].sum() == 0


@pytest.mark.parametrize("flags", [{}, {"nfpgas": 2, "nclusters": 2}, {"nclusters": 2, "clustersbatchmode": 1}])
def test_useful_mac_lanes_of_a_depthwise_layer(tmp_path, flags):
    """A depthwise CONV drives every lane of its VV units for one channel each (block-diagonal
    weights): the counter's 'lanes' integrate to the MACs the hardware drives (the model's
    counter), its 'useful' series to the network's MACs of every image of the call."""
    path = tmp_path / "dw.json"
    ie = _compile(tmp_path, kernels.grouped_conv_model(8, 8, 8, 6, 6, 3, seed=1), {"trace": str(path), **flags})
    ie.Run(_image(ie))
    doc = json.loads(path.read_text())
    validate(doc)
    mhz = ie._compiled.cfg.clock_mhz
    def integral(pid, name, key):
        pts = [(e["ts"], e["args"][key]) for e in doc["traceEvents"] if e["ph"] == "C" and e["name"] == name and e["pid"] == pid]
        return sum(v * (t1 - t0) for (t0, v), (t1, _) in zip(pts, pts[1:])) * mhz
    driven = useful = 0.0
    for f, card in enumerate(ie._last_stats):
        for cl, cs in card.clusters.items():
            driven += integral(f + 1, f"cluster {cl} MAC lanes in use", "lanes")
            useful += integral(f + 1, f"cluster {cl} MAC lanes in use", "useful")
    assert driven == pytest.approx(sum(cs.macs for card in ie._last_stats for cs in card.clusters.values()))
    network = sum(l.macs for l in ie._compiled.layers) * ie.GetInfo("batch")
    assert useful == pytest.approx(network) and useful < driven / 4


def test_host_tail_on_the_host_track(tmp_path):
    from onnx import helper

    from tests.test_host_fallback import with_tail
    from zoo import small_cnn
    model = with_tail(small_cnn(seed=0), helper.make_node("Softmax", ["logits"], ["output"], name="prob", axis=1))
    path = tmp_path / "tail.json"
    ie = _compile(tmp_path, model, {"trace": str(path)})
    ie.Run(_image(ie))
    doc = json.loads(path.read_text())
    validate(doc)
    host = [e for e in doc["traceEvents"] if e["ph"] == "i"]
    assert [(e["args"]["position"], e["name"]) for e in host] == [("tail", "host tail: Softmax")]
    assert host[0]["ts"] == pytest.approx(ie.GetInfo("hwcycles") / ie._compiled.cfg.clock_mhz)


@pytest.mark.slow
def test_rtl_trace_of_two_clusters_sharing_an_image(tmp_path):
    """clustersbatchmode on the RTL: two clusters, the shared memory port, BARRIERs between the
    layers; the same trace."""
    from zoo.small_cnn import small_cnn
    model = small_cnn(seed=0, input_shape=(1, 3, 8, 8))
    ie = _compile(tmp_path, model, {"trace": str(tmp_path / "sw.json"), "nclusters": 2, "clustersbatchmode": 1})
    x = _image(ie)
    ie.Run(x)
    ie.SetFlag({"simulator": "amaranth", "trace": str(tmp_path / "rtl.json")})
    ie.Run(x)
    sw, rtl = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("sw", "rtl"))
    assert rtl == sw
    assert {n for n in _threads(rtl).values()} >= {"cluster 0 compute", "cluster 1 compute"}
    assert any(e["ph"] == "X" and e["name"].startswith("BARRIER") for e in rtl["traceEvents"])


@pytest.mark.parametrize("name", ["queue_full", "port_shared", "equal_start_ties", "back_tokens"])
def test_rtl_timeline_on_the_timing_corner_cases(name):
    """The per-instruction timeline read from the RTL equals the model's on the hand-written timing
    corner cases: a full queue stalling fetch, two clusters sharing the port, equal-start ties,
    tokens going back up the engine chain."""
    import dataclasses

    from arch.asm import assemble
    from arch.isa import encode_program
    from hw.run import run_rtl
    from sim.card import run_card
    from tests.hw.test_differential import CORNERS
    depth, progs = CORNERS[name]
    cfg = dataclasses.replace(SMALL, queue_depth=depth)
    mem = np.zeros(MEM, dtype=np.uint8)
    addrs = {}
    for c, p in progs.items():
        code = encode_program(assemble(p))
        mem[0x1000 * c:0x1000 * c + len(code)] = np.frombuffer(code, dtype=np.uint8)
        addrs[c] = 0x1000 * c
    want = run_card(cfg, mem.copy(), addrs, check_hazards=False, trace=True)
    got = run_rtl(cfg, mem.copy(), addrs, trace=True)
    for c, w in want.clusters.items():
        assert got.clusters[c].timeline == w.timeline, c
    if name == "queue_full":     # fetch stalls: some instruction is dispatched later than one a cycle
        t = want.clusters[0].timeline
        assert any(b.dispatch > a.dispatch + 1 for a, b in zip(t, t[1:]))


@settings(max_examples=int(os.environ.get("HW_EXAMPLES", 6)), deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_programs(), st.integers(0, 2**32 - 1))
def test_rtl_timeline_on_random_programs(case, seed):
    """Random valid multi-cluster programs (the differential tests' generator): the RTL's timeline
    is the model's, instruction for instruction."""
    from hw.run import run_rtl
    from sim.card import SimError, run_card
    cfg, progs = case
    mem, addrs = program_memory(progs, seed)
    try:
        want = run_card(cfg, mem.copy(), addrs, trace=True)
    except SimError:                 # a race the generator did not avoid: not a valid program
        assume(False)
    got = run_rtl(cfg, mem.copy(), addrs, trace=True)
    for c, w in want.clusters.items():
        assert got.clusters[c].timeline == w.timeline, c
