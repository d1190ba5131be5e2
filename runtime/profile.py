"""Per-layer profile of a compiled network on the functional model: where the modelled cycles go.

    from runtime.profile import profile, plot
    rows = profile(ie)                 # ie: an MDLA object with a model loaded
    plot(rows, "profile.png")

One traced run gives every instruction's start and end cycle (the same cycles the hardware takes).
Each layer's instructions are known from the code generator, so a layer's time is from its first
instruction's start to its last one's end in the first cluster's program. ``bound`` compares the
cycles the compute engine was busy with the cycles the card's memory port carried the layer's
transfers; ``why`` explains a utilisation below a threshold (85 % unless told).

The roofline (:func:`plot` with a :class:`Roof`, :func:`roof`): each layer's operations (2 per MAC)
per byte it moves through the memory port against the operations per second it achieves, under
the peak compute of the clusters working on it and the port's bandwidth (one word per cycle);
``ops_per_byte``, ``gops`` and ``roof_gops`` of each row are the plotted numbers, and the worst
layers (:func:`worst`: most cycles lost against the roofline) are labelled on the figure and named
under the table.
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
    ops_per_byte: float = 0.0  #: operations (2 per MAC) per byte loaded or stored
    gops: float = 0.0          #: achieved G-op/s: operations / (cycles at the clock)
    roof_gops: float = 0.0     #: the roofline at ops_per_byte: min(peak compute, bandwidth x ops_per_byte)
    host_us: float = 0.0       #: a host stage's modelled time (arch/host.py), microseconds; DLA rows 0

    @property
    def lost_cycles(self) -> float:
        """Cycles beyond what the layer would take on its roofline (0 for a layer without MACs)."""
        return self.cycles * (1 - self.gops / self.roof_gops) if self.roof_gops else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def profile(ie, images=None, seed: int | None = None, threshold: float = 0.85) -> list[LayerProfile]:
    """Run ``images`` (random in [0, 1) if None) once with tracing and attribute the cycles to
    layers; layers below ``threshold`` utilisation get a ``why``. A model with host stages
    (``heterogeneous``) gets a row per host stage too, with no cycles (host time is not modelled);
    each DLA stage's layers start where the previous DLA stage ended."""
    c = ie._need()
    staged = hasattr(c, "stages")
    if images is None:                      # seeded by ``seed``, else by the object's 'seed' flag
        from .io_formats import random_inputs
        images = random_inputs(ie, seed)
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
            from .host_cost import stage_cost
            names, ops = _host_nodes(stage.nodes)
            flops, moved, nbytes, seconds = stage_cost(stage.model)
            rows.append(LayerProfile(names, "host", stage.position, offset, 0, 0, 0.0, 0, 0, 0, 0, "host",
                                     f"runs on the host ({ops}); not simulated: modelled {seconds * 1e6:.1f} us "
                                     f"({flops:.0f} flop, {moved} tensors, {nbytes} B to or from the card; arch/host.py)",
                                     host_us=seconds * 1e6))
    return rows


def _segment_rows(c, stats, offset: int, threshold: float) -> list[LayerProfile]:
    """The layer rows of one compiled DLA program from its traced run, starting at cycle ``offset``."""
    cfg, p = c.cfg, c.parallel
    cluster = p.clusters[0]
    timeline = stats[0].clusters[cluster].timeline
    prog = c.programs[cluster]
    sharing = len(p.clusters) if p.split else 1
    per_round = cfg.mv_per_cluster if p.mvbatch else 1
    r = roof(cfg, p)
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
        moved = (words_in + words_out) * cfg.beat_bytes
        intensity = 2 * macs / moved if moved else 0.0
        rows.append(LayerProfile(lc.name, lc.kind, lc.mode, offset + start, cycles, macs, util,
                                 words_in * cfg.beat_bytes, words_out * cfg.beat_bytes, compute, port,
                                 "memory" if port > compute else "compute", why, intensity,
                                 2 * macs * cfg.clock_mhz * 1e-3 / cycles,
                                 r.attainable(intensity) if macs else 0.0))
    return rows


@dataclass(frozen=True)
class Roof:
    """The limits a layer is plotted under: ``peak_gops`` of the MAC lanes of the clusters that
    share its work (2 operations per MAC and cycle) and ``bandwidth_gbs`` of the card's memory port
    (one word per cycle). When ``port_sharers`` clusters run their own images at once they share
    that port: the figure also draws each one's fair share (not a bound: a cluster gets more while
    the others compute)."""
    peak_gops: float
    bandwidth_gbs: float
    clock_mhz: float
    clusters: int
    port_sharers: int = 1

    def attainable(self, ops_per_byte: float) -> float:
        return min(self.peak_gops, self.bandwidth_gbs * ops_per_byte)

    @property
    def ridge(self) -> float:
        """Operations per byte where the bandwidth line meets the peak."""
        return self.peak_gops / self.bandwidth_gbs


def roof(cfg, parallel) -> Roof:
    """The roofline of one cluster's program (all the program's clusters with clustersbatchmode)."""
    sharing = len(parallel.clusters) if parallel.split else 1
    sharers = 1 if parallel.split else len(parallel.clusters)
    return Roof(cfg.peak_gops_per_cluster * sharing,
                cfg.beat_bytes * cfg.clock_mhz * 1e-3, cfg.clock_mhz, sharing, sharers)


def worst(rows: list[LayerProfile], n: int = 5) -> list[LayerProfile]:
    """The ``n`` layers farthest below the roofline (lowest achieved / attainable), worst first;
    equal fractions: the one losing more cycles first."""
    lossy = [r for r in rows if r.lost_cycles > 0]
    return sorted(lossy, key=lambda r: (round(r.gops / r.roof_gops, 6), -r.lost_cycles))[:n]


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


def format_table(rows: list[LayerProfile], clock_mhz: float | None = None, dla_cycles: int | None = None) -> str:
    """The per-layer table; its op/B, Gop/s and roof columns are the roofline's points. With host
    stages, the share of the call's modelled time on the DLA (``dla_cycles``, default the rows'
    sum, at ``clock_mhz``, default the reference clock) and on the host (arch/host.py)."""
    lines = [f"{'layer':<18}{'kind':<9}{'mode':<9}{'cycles':>10}{'MACs':>12}{'util':>7}{'KiB in':>9}"
             f"{'KiB out':>9}{'op/B':>9}{'Gop/s':>9}{'roof':>6}  {'bound':<8}why"]
    for r in rows:
        roofline = f"{r.ops_per_byte:>9.2f}{r.gops:>9.2f}{r.gops / r.roof_gops:>6.0%}" if r.roof_gops else f"{'':>24}"
        lines.append(f"{r.name[:17]:<18}{r.kind:<9}{r.mode:<9}{r.cycles:>10}{r.macs:>12}{r.utilisation:>7.0%}"
                     f"{r.bytes_loaded / 1024:>9.0f}{r.bytes_stored / 1024:>9.0f}{roofline}  {r.bound:<8}{r.why}")
    total = sum(r.cycles for r in rows)
    macs = sum(r.macs for r in rows)
    lines.append(f"{'total':<36}{total:>10}{macs:>12}")
    host_us = sum(r.host_us for r in rows)
    if host_us:
        from arch.machine import REFERENCE
        dla_us = (total if dla_cycles is None else dla_cycles) / (clock_mhz or REFERENCE.clock_mhz)
        share = dla_us / (dla_us + host_us)
        lines.append(f"modelled time of the call: DLA {dla_us:.1f} us ({share:.0%}), host {host_us:.1f} us "
                     f"({1 - share:.0%}; host stages and transfers, arch/host.py)")
    bad = worst(rows)
    if bad:
        lines.append("farthest below the roofline: " +
                     ", ".join(f"{r.name} ({r.gops / r.roof_gops:.0%} of its roof, {r.lost_cycles:.0f} cycles lost)"
                               for r in bad))
    heavy = sorted((r for r in rows if r.lost_cycles > 0), key=lambda r: -r.lost_cycles)[:3]
    if heavy:
        lines.append("most cycles lost against the roofline: " +
                     ", ".join(f"{r.name} ({r.lost_cycles:.0f})" for r in heavy))
    idle = [r for r in rows if r.kind in ("maxpool", "avgpool") and r.cycles]
    if idle:
        lines.append(f"layers without MACs (not on the roofline): {sum(r.cycles for r in idle)} cycles, "
                     f"{sum(r.cycles for r in idle) / max(total, 1):.1%} of the run")
    return "\n".join(lines)


def plot(rows: list[LayerProfile], path: str, title: str = "", roofline: Roof | None = None) -> None:
    """A PNG: cycles per layer (bars, coloured by what bounds them) and MAC utilisation (dots);
    with ``roofline``, the roofline of the layers below it (:func:`figure`)."""
    import matplotlib.pyplot as plt
    fig = figure(rows, title, roofline)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(rows: list[LayerProfile], title: str = "", roofline: Roof | None = None):
    """The matplotlib figure of :func:`plot` (its roofline axes hold the points of the table)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    width = max(8, 0.35 * len(rows) + 3)
    if roofline is None:
        fig, ax = plt.subplots(figsize=(width, 4.8))
    else:
        fig, (ax, rax) = plt.subplots(2, 1, figsize=(max(width, 11), 12.5), gridspec_kw={"height_ratios": [1, 1.45]})
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
    if roofline is not None:
        _roofline_axes(rax, rows, roofline)
    fig.tight_layout()
    return fig


def _roofline_axes(ax, rows: list[LayerProfile], r: Roof) -> None:
    """Each layer with MACs at (ops_per_byte, gops) under the peak and the bandwidth line; the
    worst layers named; the whole run as a star; totals and a legend."""
    pts = [row for row in rows if row.roof_gops]
    xs = np.array([row.ops_per_byte for row in pts])
    ys = np.array([row.gops for row in pts])
    lo, hi = (min(xs.min(), r.ridge) / 3, max(xs.max(), r.ridge) * 3) if len(pts) else (0.1, 1000)
    grid = np.geomspace(lo, hi, 200)
    ax.plot(grid, np.minimum(r.peak_gops, r.bandwidth_gbs * grid), "k-", lw=1.5, zorder=1,
            label=f"roofline: peak {r.peak_gops:g} Gop/s ({r.clusters} cluster{'s' if r.clusters > 1 else ''}), "
                  f"port {r.bandwidth_gbs:g} GB/s, ridge {r.ridge:.1f} op/B")
    if r.port_sharers > 1:
        share = r.bandwidth_gbs / r.port_sharers
        ax.plot(grid, np.minimum(r.peak_gops, share * grid), "k:", lw=1, zorder=1,
                label=f"fair share of the port: {share:g} GB/s each for the {r.port_sharers} clusters running at once")
    colours = {"compute": "tab:blue", "memory": "tab:orange"}
    for bound in ("compute", "memory"):
        sel = [k for k, row in enumerate(pts) if row.bound == bound]
        if sel:
            ax.scatter(xs[sel], ys[sel], s=28, color=colours[bound], zorder=3, label=f"{bound}-bound layer",
                       gid=f"layers-{bound}")
    ops = sum(2 * row.macs for row in rows)
    moved = sum(row.bytes_loaded + row.bytes_stored for row in rows)
    cycles = sum(row.cycles for row in rows)
    if ops and moved and cycles:
        total_x, total_y = ops / moved, ops * r.clock_mhz * 1e-3 / cycles
        ax.scatter([total_x], [total_y], marker="*", s=220, color="tab:red", zorder=4, label="whole run", gid="total")
    for k, row in enumerate(worst(rows), 1):       # a column of labels, each with a leader line to its point
        ax.annotate(f"{k}. {row.name}: {row.gops / row.roof_gops:.0%} of its roof", (row.ops_per_byte, row.gops),
                    textcoords="axes fraction", xytext=(0.6, 0.62 - 0.05 * k), fontsize=8, color="darkred",
                    ha="left", va="center", gid="worst",
                    arrowprops={"arrowstyle": "-", "color": "darkred", "lw": 0.5, "alpha": 0.7, "relpos": (0, 0.5),
                                "shrinkA": 2})
    skipped = sum(1 for row in rows if not row.roof_gops)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operations per byte moved through the memory port (2 op per MAC)")
    ax.set_ylabel("achieved G-op/s (modelled)")
    ax.set_xlim(lo, hi)
    if len(pts):
        ax.set_ylim(min(ys.min(), r.bandwidth_gbs * lo) / 2, r.peak_gops * 2)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)
    text = (f"total: {ops / 1e9:.3f} G-op, {moved / 2**20:.1f} MiB moved, {cycles} cycles = "
            f"{cycles / r.clock_mhz / 1e3:.3f} ms at {r.clock_mhz:g} MHz\n"
            f"{ops * r.clock_mhz * 1e-3 / max(cycles, 1):.2f} G-op/s achieved = "
            f"{ops * r.clock_mhz * 1e-3 / max(cycles, 1) / r.peak_gops:.0%} of peak"
            + (f"\n{skipped} layer(s) without MACs (pooling, host) not plotted" if skipped else "")
            + "\nlabelled: the layers farthest below the roofline (achieved / attainable)")
    ax.text(0.01, 0.98, text, transform=ax.transAxes, va="top", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
    ax.set_title("roofline: each layer's operational intensity and achieved rate")
