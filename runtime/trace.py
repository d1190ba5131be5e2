"""Timeline of a run in the trace event format (Chrome's JSON), which Perfetto and chrome://tracing open.

    ie.SetFlag('trace', 'run.json')     # every Run (PutInput/GetResult call) rewrites run.json
    ie.Run(x)                           # or: mdla run model.onnx --trace run.json

What is in it (``docs/profiling.md`` walks through it):

* a process per card, and for every cluster that ran a thread per engine: ``fetch`` (dispatch,
  one cycle per instruction, END included), ``load``, ``compute``, ``store``, and one per MV unit
  when the compute instructions do not all drive every MV unit (then the MV units differ);
* one complete slice (``ph: X``) per instruction, named by its opcode and layer, its arguments the
  layer, the pc, the instruction in assembly, its fields and its cycles (dispatch, start, end,
  memory-port grant);
* flow arrows (``ph: s`` / ``f``) from the instruction that pushes each dependency token to the
  one that pops it (the k-th pop of a queue takes its k-th push, rule 2 of :mod:`arch.timing`);
* counter tracks (``ph: C``): per card the memory port's bytes per cycle (loads and stores), per
  cluster the MAC lanes in use: ``lanes``, those a CONV drives (``nvv x lanes x MV units``) during
  its ``oh*ow*kh*kw*cin`` MAC steps, 0 during its pipeline cycles, and ``useful``, the share of
  them doing the network's MACs (its layer's MACs over the MACs its CONVs drive on the card: a
  depthwise layer's block-diagonal CONVs drive every lane of a VV unit for one channel's work);
* a ``host`` process whose track marks each host stage of a heterogeneous model (and the host
  tail after the DLA) as an instant event where it runs: host time is not modelled;
* timestamps in microseconds as the format wants, at nanosecond resolution: cycle x 1000 /
  ``clock_mhz`` ns.

The cards, clusters and DLA stages of a call and the models linked on other clusters of the same
cards (which run at the same time) are all in one file, side by side. Beyond ``max_slices``
instruction slices (the flag ``tracemax``) each engine's consecutive instructions of one layer are
merged into one slice with the count and busy cycles as arguments, the counters with more changes
than their share of ``max_slices // 4`` are averaged over that many equal time bins, and the flows
are left out, so big networks stay usable.

The timeline comes from the executor's per-instruction timing (:class:`sim.card.InstrTiming`):
the functional model's schedule, or the RTL's signals with the ``amaranth`` simulator
(:func:`hw.run.run_rtl`); the two are equal, so are their traces.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from arch.asm import format_instr
from arch.isa import ENGINE_NEXT, ENGINE_PREV, ENGINES, TOKEN_FLAGS, conv_reduction
from arch.machine import MachineConfig

__all__ = ["Segment", "HostStep", "trace_events", "write", "after_run", "TRACKS", "DEFAULT_MAX_SLICES"]

#: engine tracks of a cluster, in display order (then one per MV unit where they differ)
TRACKS = ("fetch",) + tuple(ENGINES)
#: instruction slices beyond which a trace merges each layer's instructions per engine
DEFAULT_MAX_SLICES = 200_000
HOST_PID = 1000
_TRACKS_PER_CLUSTER = 16


@dataclass
class Segment:
    """One run of the cards: ``cards[f]`` is card f's :class:`sim.card.CardStats` (with
    timelines), ``jobs`` the compiled programs that ran, as (label, Compiled); the run starts at
    cycle ``offset`` of the call (a DLA stage after the earlier ones)."""
    offset: int
    cards: list
    jobs: list[tuple[str, object]]


@dataclass
class HostStep:
    """A host stage (or the host tail), run between the DLA cycles ``offset`` and the next."""
    offset: int
    nodes: list[str]
    position: str
    label: str = ""


@dataclass
class _Track:
    pid: int
    tid: int
    name: str
    events: list = field(default_factory=list)

    def add(self, event: dict) -> None:
        event["pid"], event["tid"] = self.pid, self.tid
        self.events.append(event)


def _us(cycle: int, mhz: float) -> float:
    """A cycle number as the format's microseconds, rounded to the nanosecond."""
    return round(cycle * 1000.0 / mhz) / 1000.0


def _mv_units(mask: int) -> list[int]:
    return [m for m in range(8) if mask >> m & 1]


def _name(i, layer: str, cfg: MachineConfig) -> str:
    """A slice's name: opcode, the MV unit(s) it addresses when not all, and the layer."""
    where = ""
    if i.op == "LOAD" and i.mv_mask != (1 << cfg.mv_per_cluster) - 1:
        where = "→MV" + ",".join(map(str, _mv_units(i.mv_mask)))
    elif i.op == "STORE" and cfg.mv_per_cluster > 1:
        where = f" MV{i.mv}→"
    return f"{i.op}{where} {layer}" if layer else f"{i.op}{where}"


def _args(i, t, layer: str, label: str, cfg: MachineConfig) -> dict:
    fields = {k: v for k, v in i.f.items() if k not in TOKEN_FLAGS and k != "opcode"}
    a = {"layer": layer or None, "pc": t.pc, "asm": format_instr(i), "fields": fields,
         "dispatch_cycle": t.dispatch, "start_cycle": t.start, "end_cycle": t.end, "cycles": t.end - t.start}
    if label:
        a["model"] = label
    tokens = [k for k in TOKEN_FLAGS if i.f.get(k)]
    if tokens:
        a["tokens"] = tokens
    if t.grant is not None:
        words = i.n0 * i.n1 * i.n2
        a.update(grant_cycle=t.grant, port_wait_cycles=t.grant - t.start, words=words, bytes=words * cfg.beat_bytes)
    if i.op == "CONV":
        a["macs"] = i.oh * i.ow * conv_reduction(i) * i.nvv * cfg.lanes * len(_mv_units(i.mv_mask))
    return a


def _steps(changes: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """A step function from (cycle, {series: delta}) changes: (cycle, values) at each change."""
    changes = sorted(changes, key=lambda x: x[0])
    out, cur = [], {k: 0 for _, d in changes for k in d}
    for cycle, delta in changes:
        for k, v in delta.items():
            cur[k] = cur.get(k, 0) + v
        vals = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in cur.items()}
        if out and out[-1][0] == cycle:
            out[-1] = (cycle, vals)
        else:
            out.append((cycle, vals))
    return out


def _binned(steps: list[tuple[int, dict]], end: int, bins: int) -> list[tuple[int, dict]]:
    """The average of a step function over ``bins`` equal time bins of [0, end) (exact integral per bin)."""
    if not steps or end <= 0:
        return steps
    width = max(1, -(-end // bins))
    keys = sorted({k for _, v in steps for k in v})
    out = []
    k = 0
    for lo in range(0, end, width):
        hi = min(end, lo + width)
        acc = dict.fromkeys(keys, 0.0)
        while k + 1 < len(steps) and steps[k + 1][0] <= lo:
            k += 1
        j = k
        while j < len(steps) and steps[j][0] < hi:
            a = max(lo, steps[j][0])
            b = min(hi, steps[j + 1][0]) if j + 1 < len(steps) else hi
            if b > a and steps[j][0] <= a:
                for key, v in steps[j][1].items():
                    acc[key] += v * (b - a)
            j += 1
        out.append((lo, {key: round(v / (hi - lo), 3) for key, v in acc.items()}))
    out.append((end, dict.fromkeys(keys, 0)))
    return out


def trace_events(segments: list, cfg: MachineConfig, max_slices: int = DEFAULT_MAX_SLICES) -> dict:
    """The trace (a JSON-serialisable dict) of ``segments`` (:class:`Segment` and :class:`HostStep`
    in the order they ran)."""
    mhz = cfg.clock_mhz
    tracks: dict[tuple[int, int], _Track] = {}
    processes: dict[int, str] = {}
    runs = []        # (segment, card, cluster, label, compiled, cluster stats, linked)
    staged = sum(isinstance(seg, Segment) for seg in segments) > 1
    for seg in segments:
        if isinstance(seg, HostStep):
            continue
        linked = len(seg.jobs) > 1
        for label, c in seg.jobs:
            for f, card in enumerate(seg.cards):
                for cl in c.parallel.clusters:
                    cs = card.clusters.get(cl)
                    if cs is None:
                        continue
                    if cs.timeline is None:
                        raise ValueError("the run statistics carry no timeline: run with trace=True")
                    runs.append((seg, f, cl, label if linked or staged else "", c, cs, linked))
    n_slices = sum(2 * len(r[5].timeline) for r in runs)
    merge = n_slices > max_slices
    end_cycle = max([seg.offset + max((s.cycles for s in seg.cards), default=0) for seg in segments
                     if isinstance(seg, Segment)] + [0])

    def track(pid: int, tid: int, name: str) -> _Track:
        if (pid, tid) not in tracks:
            tracks[(pid, tid)] = _Track(pid, tid, name)
        return tracks[(pid, tid)]

    useful = _useful_share(runs, cfg)
    flows, port, lanes = [], {}, {}
    for seg, f, cl, label, c, cs, linked in runs:
        pid = f + 1
        processes[pid] = f"card {f} ({cfg.name}, {len(seg.cards)} card{'s' if len(seg.cards) > 1 else ''}, {mhz:g} MHz)"
        prog = c.programs[cl]
        layer_of = [c.layer_at(cl, t.pc) for t in cs.timeline]
        names = [c.layers[k].name if k is not None else "" for k in layer_of]
        compute_masks = {i.mv_mask for i in prog if i.op in ("CONV", "MAXPOOL", "AVGPOOL")}
        mv_tracks = len(compute_masks) > 1 or any(m != (1 << cfg.mv_per_cluster) - 1 for m in compute_masks)
        suffix = f" ({label})" if linked else ""
        base = cl * _TRACKS_PER_CLUSTER
        tr = {e: track(pid, base + k, f"cluster {cl} {e}{suffix}") for k, e in enumerate(TRACKS)}
        mvs = ({m: track(pid, base + len(TRACKS) + m, f"cluster {cl} MV{m}{suffix}")
                for m in range(cfg.mv_per_cluster)} if mv_tracks and not merge else {})
        off = seg.offset
        if merge:
            _merged_slices(tr, mvs, prog, cs.timeline, layer_of, names, off, mhz, label)
        else:
            for t, layer in zip(cs.timeline, names):
                i = prog[t.pc]
                args = _args(i, t, layer, label, cfg)
                tr["fetch"].add(_slice(_name(i, layer, cfg), "fetch", off + t.dispatch, off + t.dispatch + 1, mhz,
                                       {"pc": t.pc, "layer": layer or None}))
                if t.engine in tr:
                    tr[t.engine].add(_slice(_name(i, layer, cfg), t.engine, off + t.start, off + t.end, mhz, args))
                    if t.engine == "compute" and mvs and i.op in ("CONV", "MAXPOOL", "AVGPOOL"):
                        for m in _mv_units(i.mv_mask):
                            mvs[m].add(_slice(_name(i, layer, cfg), "mv", off + t.start, off + t.end, mhz,
                                              {"pc": t.pc, "layer": layer or None, "cycles": t.end - t.start}))
            flows += _flows(prog, cs.timeline, tr, off, mhz)
        # counters
        pc_ = port.setdefault(pid, [])
        ln = lanes.setdefault((pid, base), [])
        for t in cs.timeline:
            i = prog[t.pc]
            if t.grant is not None:
                key = "load" if i.op == "LOAD" else "store"
                words = i.n0 * i.n1 * i.n2
                pc_ += [(off + t.grant, {key: cfg.beat_bytes}), (off + t.grant + words, {key: -cfg.beat_bytes})]
            elif i.op == "CONV":
                steps = i.oh * i.ow * conv_reduction(i)
                used = i.nvv * cfg.lanes * len(_mv_units(i.mv_mask))
                k = c.layer_at(cl, t.pc)
                gain = used * useful.get((id(seg), f, id(c), k), 1.0)
                ln += [(off + t.start, {"lanes": used, "useful": gain}),
                       (off + t.start + steps, {"lanes": -used, "useful": -gain})]
    counters = []
    for pid, changes in port.items():
        counters.append((pid, "memory port (bytes/cycle)", changes))
    for (pid, base), changes in lanes.items():
        counters.append((pid, f"cluster {base // _TRACKS_PER_CLUSTER} MAC lanes in use", changes))
    # host stages
    host = [s for s in segments if isinstance(s, HostStep)]
    if host:
        processes[HOST_PID] = "host (CPU fallback; host time is not modelled)"
        ht = track(HOST_PID, 0, "host stages")
        for h in host:
            ops = ",".join(n.rsplit("(", 1)[-1].rstrip(")") for n in h.nodes)
            ht.add({"name": f"host {h.position}: {ops}", "cat": "host", "ph": "i", "s": "t", "ts": _us(h.offset, mhz),
                    "args": {"nodes": h.nodes, "position": h.position, "at_cycle": h.offset,
                             "model": h.label or None, "note": "runs on the host; its time is not modelled"}})

    events = []
    for pid, name in sorted(processes.items()):
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
    for (pid, tid), t in sorted(tracks.items()):
        events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": t.name}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
    timed = [e for t in tracks.values() for e in t.events] + flows
    bins = max(1, max_slices // (4 * max(1, len(counters))))     # the counters get a quarter of the budget
    for pid, name, changes in counters:
        steps = _steps(changes)
        if merge and len(steps) > bins:
            steps = _binned(steps, end_cycle, bins)
        timed += [{"name": name, "ph": "C", "ts": _us(cy, mhz), "pid": pid, "tid": 0, "args": vals} for cy, vals in steps]
    timed.sort(key=lambda e: e["ts"])          # stable: per track, file order is time order
    return {"traceEvents": events + timed, "displayTimeUnit": "ns",
            "otherData": {"producer": "open-mdla runtime.trace", "machine": cfg.name, "clock_mhz": mhz,
                          "cycles": end_cycle, "ns_per_cycle": 1000.0 / mhz, "merged_per_layer": merge,
                          "instruction_slices": n_slices, "max_slices": max_slices}}


def _useful_share(runs: list, cfg: MachineConfig) -> dict[tuple, float]:
    """Per (run of the cards, card, model, layer): the network's MACs over the MACs the layer's
    CONVs drive on that card; below 1 where lanes multiply zeros (a depthwise layer's
    block-diagonal weights, channels padded to a multiple of the lanes)."""
    driven: dict[tuple, int] = {}
    network: dict[tuple, int] = {}
    for seg, f, cl, _, c, cs, _ in runs:
        for t in cs.timeline:
            i = c.programs[cl][t.pc]
            k = c.layer_at(cl, t.pc)
            if i.op == "CONV" and k is not None:
                key = (id(seg), f, id(c), k)
                driven[key] = driven.get(key, 0) + i.oh * i.ow * conv_reduction(i) * i.nvv * cfg.lanes * len(_mv_units(i.mv_mask))
                network[key] = c.layers[k].macs * c.parallel.images_per_card
    return {key: min(1.0, network[key] / n) for key, n in driven.items()}


def _slice(name: str, cat: str, start: int, end: int, mhz: float, args: dict) -> dict:
    ts = _us(start, mhz)
    return {"name": name, "cat": cat, "ph": "X", "ts": ts, "dur": round(_us(end, mhz) - ts, 3),
            "args": args}


def _inside(start: int, end: int, mhz: float) -> float:
    """A timestamp strictly inside the slice [start, end) when the nanosecond grid allows (a flow
    binds to the slice enclosing its timestamp; at the slice's first instant a viewer may not have
    opened it yet): its middle, rounded to the nanosecond."""
    lo, hi = _us(start, mhz), _us(end, mhz)
    mid = round((lo + hi) * 500) / 1000
    return mid if lo < mid < hi else lo


def _flows(prog, timeline, tr, off: int, mhz: float) -> list[dict]:
    """Flow arrows from each token's push to its pop (the k-th pop of a queue takes the k-th push)."""
    pushes: dict[tuple[str, str], list] = {}
    pops: dict[tuple[str, str], list] = {}
    for t in timeline:
        i, e = prog[t.pc], t.engine
        if e not in ENGINES:
            continue
        for flag, other in (("push_prev", ENGINE_PREV[e]), ("push_next", ENGINE_NEXT[e])):
            if i.f.get(flag):
                pushes.setdefault((e, other), []).append(t)
        for flag, other in (("pop_prev", ENGINE_PREV[e]), ("pop_next", ENGINE_NEXT[e])):
            if i.f.get(flag):
                pops.setdefault((other, e), []).append(t)
    out = []
    for (a, b), sent in pushes.items():
        for k, (p, q) in enumerate(zip(sent, pops.get((a, b), []))):
            fid = f"{tr[a].pid}.{tr[a].tid}.{off}.{a}>{b}.{k}"
            name = f"token {a}→{b}"
            out.append({"name": name, "cat": "token", "ph": "s", "id": fid, "ts": _inside(off + p.start, off + p.end, mhz),
                        "pid": tr[a].pid, "tid": tr[a].tid})
            out.append({"name": name, "cat": "token", "ph": "f", "bp": "e", "id": fid,
                        "ts": _inside(off + q.start, off + q.end, mhz), "pid": tr[b].pid, "tid": tr[b].tid})
    return out


def _merged_slices(tr, mvs, prog, timeline, layer_of, names, off: int, mhz: float, label: str) -> None:
    """One slice per engine and run of consecutive instructions of one layer."""
    groups: dict[str, list] = {}
    for t, k, layer in zip(timeline, layer_of, names):
        for e, s, end in (("fetch", t.dispatch, t.dispatch + 1), (t.engine, t.start, t.end)):
            if e not in tr:
                continue
            g = groups.setdefault(e, [])
            if g and g[-1]["layer"] == k:
                g[-1]["end"] = max(g[-1]["end"], end)
                g[-1]["n"] += 1
                g[-1]["busy"] += end - s
                g[-1]["ops"][prog[t.pc].op] = g[-1]["ops"].get(prog[t.pc].op, 0) + 1
                g[-1]["last_pc"] = t.pc
            else:
                g.append({"layer": k, "name": layer, "start": s, "end": end, "n": 1, "busy": end - s,
                          "ops": {prog[t.pc].op: 1}, "first_pc": t.pc, "last_pc": t.pc})
    for e, g in groups.items():
        for x in g:
            args = {"layer": x["name"] or None, "instructions": x["n"], "busy_cycles": x["busy"],
                    "start_cycle": x["start"], "end_cycle": x["end"], "ops": x["ops"],
                    "first_pc": x["first_pc"], "last_pc": x["last_pc"],
                    "occupancy": round(x["busy"] / max(1, x["end"] - x["start"]), 4)}
            if label:
                args["model"] = label
            tr[e].add(_slice(f"{x['name'] or '(no layer)'} ×{x['n']}", e, off + x["start"], off + x["end"], mhz, args))


def write(path: str, segments: list, cfg: MachineConfig, max_slices: int = DEFAULT_MAX_SLICES) -> dict:
    """Write the trace of ``segments`` to ``path`` (JSON); returns it."""
    trace = trace_events(segments, cfg, max_slices)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(trace, fh, separators=(",", ":"), ensure_ascii=False)
    os.replace(tmp, path)
    return trace


def segments_of(obj, objs: list, all_stats) -> list:
    """What object ``obj``'s last call ran, as segments: a model with host stages from its stages'
    statistics, else the one run of the cards it shared with the (linked) objects ``objs``."""
    c = obj._compiled
    if hasattr(c, "stages"):
        out, offset = [], 0
        for k, stage in enumerate(c.stages):
            stats = obj._last_stage_stats.get(k)
            if stats is None:
                out.append(HostStep(offset, stage.nodes, stage.position))
            else:
                out.append(Segment(offset, stats, [(f"DLA stage {k}", stage)]))
                offset += max(s.cycles for s in stats)
        return out
    jobs = [(f"model {j}: {o._compiled.meta.get('model', '')}".rstrip(": "), o._compiled) for j, o in enumerate(objs)]
    out = [Segment(0, all_stats, jobs)]
    end = max((s.cycles for s in all_stats), default=0)
    for label, o in zip(jobs, objs):
        if o._compiled.host is not None:
            out.append(HostStep(end, o._compiled.host.nodes, "tail", label[0] if len(objs) > 1 else ""))
    return out


def after_run(objs: list, all_stats=None) -> None:
    """After a call: every object of ``objs`` whose ``trace`` flag names a file gets the trace of
    the call written there (with its linked partners on the same cards, side by side)."""
    for obj in objs:
        path = obj._flags["trace"]
        if path:
            write(path, segments_of(obj, objs, all_stats), obj._compiled.cfg, obj._flags["tracemax"])
