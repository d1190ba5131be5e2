"""Per-layer profile of a compiled network on the functional model: where the modelled cycles go.

    from runtime.profile import profile, plot
    rows = profile(ie)                 # ie: an MDLA object with a model loaded
    plot(rows, "profile.png")

One traced run gives every instruction's start and end cycle (the same cycles the hardware takes).
Each layer's instructions are known from the code generator, so a layer's time is from its first
instruction's start to its last one's end in the first cluster's program. ``bound`` compares the
cycles the compute engine was busy with the cycles the card's memory port carried the layer's
transfers; ``why`` explains a utilisation below a threshold (85 % unless told).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from arch.isa import conv_reduction


@dataclass
class LayerProfile:
    name: str
    kind: str
    mode: str
    start: int                #: first cycle of the layer's first instruction
    cycles: int               #: from that start to the end of its last instruction
    macs: int                 #: multiply-accumulates of the network in this layer (the images of one round)
    utilisation: float        #: macs / (cycles x MAC lanes of the clusters sharing the work)
    bytes_loaded: int
    bytes_stored: int
    compute_busy: int         #: cycles the compute engine was busy
    port_busy: int            #: cycles the memory port carried this layer's transfers
    bound: str                #: 'compute' or 'memory'
    why: str                  #: reasons for a low utilisation ('' at or above the threshold)

    def to_dict(self) -> dict:
        return asdict(self)


def profile(ie, images=None, seed: int = 0, threshold: float = 0.85) -> list[LayerProfile]:
    """Run ``images`` (random in [0, 1) if None) once with tracing and attribute the cycles to
    layers; layers below ``threshold`` utilisation get a ``why``. A model with host stages
    (``heterogeneous``) gets a row per host stage too, with no cycles (host time is not modelled);
    each DLA stage's layers start where the previous DLA stage ended."""
    c = ie._need()
    staged = hasattr(c, "stages")
    if images is None:
        shape = (c.parallel.batch,) + tuple(c.inputs[0].onnx_shape[1:])
        images = np.random.default_rng(seed).random(shape, dtype=np.float32)
    ie._trace = True
    try:
        ie._run_call(images, simulator="functional")
    finally:
        ie._trace = False
    if not staged:
        return _segment_rows(c, ie._last_stats, 0, threshold)
    rows, offset = [], 0
    for k, stage in enumerate(c.stages):
        if k in ie._last_stage_stats:
            stats = ie._last_stage_stats[k]
            rows += _segment_rows(stage, stats, offset, threshold)
            offset += max(s.cycles for s in stats)          # the next stage starts after this one
        else:
            names, ops = _host_nodes(stage.nodes)
            rows.append(LayerProfile(names, "host", stage.position, offset, 0, 0, 0.0, 0, 0, 0, 0, "host",
                                     f"runs on the host ({ops}); its time is not modelled"))
    return rows


def _segment_rows(c, stats, offset: int, threshold: float) -> list[LayerProfile]:
    """The layer rows of one compiled DLA program from its traced run, starting at cycle ``offset``."""
    cfg, p = c.cfg, c.parallel
    cluster = p.clusters[0]
    timeline = stats[0].clusters[cluster].timeline
    prog = c.programs[cluster]
    sharing = len(p.clusters) if p.split else 1
    per_round = cfg.mv_per_cluster if p.mvbatch else 1
    rows = []
    for lc in c.layers:
        span = [t for t in timeline if lc.first_pc <= t.pc <= lc.last_pc]
        start, end = min(t.start for t in span), max(t.end for t in span)
        cycles = max(1, end - start)
        ins = [prog[t.pc] for t in span]
        words_in = sum(i.n0 * i.n1 * i.n2 for i in ins if i.op == "LOAD")
        words_out = sum(i.n0 * i.n1 * i.n2 for i in ins if i.op == "STORE")
        compute = sum(t.end - t.start for t in span if t.engine == "compute")
        port = words_in + words_out
        macs = lc.macs * per_round
        util = macs / (cycles * cfg.macs_per_cluster * sharing)
        why = _why(cfg, ins, span, lc.macs, util, cycles, start, end, compute, port) if util < threshold else ""
        rows.append(LayerProfile(lc.name, lc.kind, lc.mode, offset + start, cycles, macs, util,
                                 words_in * cfg.beat_bytes, words_out * cfg.beat_bytes, compute, port,
                                 "memory" if port > compute else "compute", why))
    return rows


def _why(cfg, ins, span, macs, util, cycles, start, end, compute, port) -> str:
    """The reasons a layer's utilisation is low, largest loss first, from its traced instructions."""
    why = [] if macs else ["no MACs: pooling runs on the pooling units, its cycles count against the network"]
    convs = [(i, t) for i, t in zip(ins, span) if i.op == "CONV"]
    if port > compute:
        why.append(f"memory-bound: the port carries {port} words while the {'MACs' if macs else 'pooling units'} "
                   f"work {compute} cycles"
                   + (" (every weight is used once per image)" if convs and all(i.oh * i.ow == 1 for i, _ in convs) else ""))
    slots = sum(i.oh * i.ow * conv_reduction(i) * cfg.macs_per_cluster for i, _ in convs)
    active = sum(i.oh * i.ow * conv_reduction(i) * i.nvv * cfg.lanes * bin(i.mv_mask).count("1") for i, _ in convs)
    if slots and active / slots < 0.95:
        why.append(f"only {active / slots:.0%} of the MAC lanes are given work (output channels or tiles "
                   f"do not fill {cfg.mv_per_cluster} MV x {cfg.vv_per_mv} VV x {cfg.lanes} lanes)")
    if convs and port <= compute:
        head = min(t.start for _, t in convs) - start
        tail = end - max(t.end for _, t in convs)
        pipe = len(convs) * cfg.conv_pipeline
        if head > 0.02 * cycles:
            why.append(f"the first loads take {head} of {cycles} cycles before the first CONV (a layer's "
                       f"loads start when the previous layer's stores are done)")
        if tail > 0.02 * cycles:
            why.append(f"the last stores drain {tail} cycles after the last CONV")
        if pipe > 0.02 * cycles:
            why.append(f"pipeline overhead: {len(convs)} CONVs x {cfg.conv_pipeline} cycles")
        idle = cycles - compute - head - tail
        if idle > 0.02 * cycles:
            why.append(f"the compute engine waits {idle} cycles between CONVs for loads not hidden under compute")
    return "; ".join(why) or "several small losses (load latency, pipeline, store drain), each under 2 % of the layer"


def layer_lines(compiled) -> list[str]:
    """The layer list in the SDK's debug-'n' format, e.g.
    ``type conv name=conv1 id=0 in=(Z1,H224,W224,P3) out=(Z1,H112,W112,P64) k=(Z1,H7,W7) stride=(Z1,H2,W2)
    dilation=(Z1,H1,W1) pad=(Z0,Ze0,T3,B3,R3,L3) opad=(Z0,H0,W0) 0->1`` (the last field: tensor ids)."""
    from compiler.ir import AvgPool, Conv
    g = compiled.graph
    ids = {name: k for k, name in enumerate(g.tensors)}
    lines = []
    for n, L in enumerate(g.layers):
        cin, h, w = g.tensors[L.input].shape
        cout, oh, ow = g.tensors[L.output].shape
        if isinstance(L, Conv):
            kind = "linear" if L.kind == "fc" else "conv"
            (kh, kw), (sh, sw), (dh, dw) = L.kernel, L.stride, L.dilation
        else:
            kind = "avgpool" if isinstance(L, AvgPool) else "maxpool"
            (kh, kw), (sh, sw), (dh, dw) = L.kernel, L.stride, (1, 1)
        t, l, b, r = L.pads
        extra = ""
        if getattr(L, "residual", None):
            extra = f" {'multiply' if L.res_op == 'mul' else 'residual'}={ids[L.residual]}"
        act = f" {L.act}" if getattr(L, "act", "none") != "none" else ""
        lines.append(f"type {kind} name={L.name} id={n} in=(Z1,H{h},W{w},P{cin}) out=(Z1,H{oh},W{ow},P{cout}) "
                     f"k=(Z1,H{kh},W{kw}) stride=(Z1,H{sh},W{sw}) dilation=(Z1,H{dh},W{dw}) "
                     f"pad=(Z0,Ze0,T{t},B{b},R{r},L{l}) opad=(Z0,H0,W0) {ids[L.input]}->{ids[L.output]}{extra}{act}")
    return lines


def _host_nodes(nodes: list[str]) -> tuple[str, str]:
    """The node names and the ops of a host stage's ``"node 'x' (Op)"`` list, comma-separated."""
    return (",".join(n.split("'")[1] if "'" in n else n for n in nodes),
            ",".join(n.rsplit("(", 1)[-1].rstrip(")") for n in nodes))


def host_line(nodes: list[str], inputs: list[str], outputs: list[str], position: str) -> str:
    """A host stage in the layer list: ``type host name=... in=... out=...  # head: run on the host``."""
    names, ops = _host_nodes(nodes)
    return (f"type host name={names} ops={ops} in={','.join(inputs)} out={','.join(outputs)}  # {position}: run on "
            f"the host (onnx.reference), time not modelled")


def format_table(rows: list[LayerProfile]) -> str:
    lines = [f"{'layer':<18}{'kind':<9}{'mode':<9}{'cycles':>10}{'MACs':>12}{'util':>7}{'KiB in':>9}"
             f"{'KiB out':>9}  {'bound':<8}why"]
    for r in rows:
        lines.append(f"{r.name[:17]:<18}{r.kind:<9}{r.mode:<9}{r.cycles:>10}{r.macs:>12}{r.utilisation:>7.0%}"
                     f"{r.bytes_loaded / 1024:>9.0f}{r.bytes_stored / 1024:>9.0f}  {r.bound:<8}{r.why}")
    total = sum(r.cycles for r in rows)
    macs = sum(r.macs for r in rows)
    lines.append(f"{'total':<36}{total:>10}{macs:>12}")
    return "\n".join(lines)


def plot(rows: list[LayerProfile], path: str, title: str = "") -> None:
    """A PNG: cycles per layer (bars, coloured by what bounds them) and MAC utilisation (dots)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(rows) + 3), 4.8))
    colours = [{"compute": "tab:blue", "memory": "tab:orange"}.get(r.bound, "tab:gray") for r in rows]
    ax.bar(x, [r.cycles for r in rows], color=colours)
    ax.set_ylabel("modelled cycles")
    ax.set_xticks(x, [r.name for r in rows], rotation=90, fontsize=7)
    ax2 = ax.twinx()
    ax2.plot(x, [100 * r.utilisation for r in rows], "k.", label="MAC utilisation")
    ax2.set_ylabel("MAC utilisation (%)")
    ax2.set_ylim(0, 105)
    from matplotlib.patches import Patch
    legend = [Patch(color="tab:blue", label="compute-bound"), Patch(color="tab:orange", label="memory-bound")]
    if any(r.bound == "host" for r in rows):
        legend.append(Patch(color="tab:gray", label="host stage (time not modelled)"))
    ax.legend(handles=legend, loc="upper right", fontsize=8)
    ax.set_title(title or "per-layer profile")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
