"""Timing of the functional model against the rules of arch/timing.py.

Hand-computed cycle counts for small programs, and a hypothesis comparison of the model's
event-driven scheduler with an independent, deliberately naive cycle-by-cycle simulation of the same
rules (engine queues, token counters, a FIFO memory port), on random multi-cluster programs.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arch import timing
from arch.asm import assemble
from arch.isa import ENGINE_NEXT, ENGINE_PREV, Instr, encode_program
from arch.machine import REFERENCE, SMALL, MachineConfig
from sim import SimError, run_card

MEM_BYTES = 0x10000


def run(cfg: MachineConfig, programs: dict[int, str | list[Instr]], **kw):
    """Place each cluster's program at 0x1000 * cluster and run the card with a trace."""
    mem = np.zeros(MEM_BYTES, dtype=np.uint8)
    addrs = {}
    for c, p in programs.items():
        code = encode_program(assemble(p) if isinstance(p, str) else p)
        mem[0x1000 * c:0x1000 * c + len(code)] = np.frombuffer(code, dtype=np.uint8)
        addrs[c] = 0x1000 * c
    kw.setdefault("trace", True)
    return run_card(cfg, mem, addrs, **kw)


def times(stats, c: int = 0) -> list[tuple[int, int, int, int | None]]:
    return [(t.dispatch, t.start, t.end, t.grant) for t in stats.clusters[c].timeline]


LOAD4 = "LOAD buf=MAPS mv_mask=1 dram_addr=0x4000 n0=4 n1=1 n2=1"
CONV1 = ("CONV mv_mask=1 nvv=1 in_w=2 cpitch=4 cin=4 kh=1 kw=2 sy=1 sx=1 dy=1 dx=1 oh=1 ow=1 "
         "out_pitch=1 write=1")                  # 1 pixel x 8 reduction cycles


# ------------------------------------------------------------------------------------------------
# hand-computed
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [SMALL, REFERENCE], ids=lambda c: c.name)
def test_single_load(cfg: MachineConfig):
    s = run(cfg, {0: f"{LOAD4}\nEND"})
    end = 1 + 4 + cfg.mem_latency
    assert times(s) == [(0, 1, end, 1), (1, 2, 2, None)]
    st_ = s.clusters[0]
    assert s.cycles == st_.cycles == end
    assert st_.instructions == 2
    assert st_.busy == {"load": end - 1, "compute": 0, "store": 0}
    assert st_.port_wait == {"load": 0, "store": 0}
    assert st_.bytes_loaded == 4 * cfg.beat_bytes and st_.bytes_stored == 0


def test_only_end():
    s = run(SMALL, {0: "END"})
    assert times(s) == [(0, 1, 1, None)] and s.cycles == 1


def test_conv_waits_for_token():
    cfg = SMALL
    conv = cfg.conv_pipeline + 8
    assert timing.compute_cycles(assemble(CONV1)[0], cfg) == conv
    s = run(cfg, {0: f"{LOAD4} push_next=1\n{CONV1} pop_prev=1\nEND"})
    le = 1 + 4 + cfg.mem_latency                   # 13
    assert times(s) == [(0, 1, le, 1), (1, le, le + conv, None), (2, 3, 3, None)]
    assert s.clusters[0].token_wait == {"load": 0, "compute": le - 2, "store": 0}
    assert s.cycles == le + conv
    # without the token the CONV starts right after dispatch
    s = run(cfg, {0: f"{LOAD4}\n{CONV1}\nEND"}, check_hazards=False)
    assert times(s)[1] == (1, 2, 2 + conv, None)


def test_store_after_conv_and_back_tokens():
    cfg = SMALL
    conv = cfg.conv_pipeline + 8
    s = run(cfg, {0: f"""
        {CONV1} push_next=1
        STORE mv=0 dram_addr=0x8000 n0=2 n1=1 n2=1 pop_prev=1 push_prev=1
        {CONV1} pop_next=1
        END"""})
    se = 1 + conv + 2 + cfg.mem_latency
    assert times(s) == [(0, 1, 1 + conv, None), (1, 1 + conv, se, 1 + conv), (2, se, se + conv, None),
                        (3, 4, 4, None)]
    assert s.clusters[0].token_wait["compute"] == se - (1 + conv)


def test_queue_full_dispatch_stall():
    """With queue_depth 2, the third compute instruction cannot dispatch before the first starts,
    the fourth before the second starts; the in-order dispatch then delays the LOAD behind them."""
    cfg = dataclasses.replace(SMALL, queue_depth=2)
    conv = cfg.conv_pipeline + 8
    long_ = f"{LOAD4} push_next=1"
    s = run(cfg, {0: f"""
        {long_}
        {CONV1} pop_prev=1
        {CONV1}
        {CONV1}
        {CONV1}
        {LOAD4}
        END"""}, check_hazards=False)
    le = 1 + 4 + cfg.mem_latency                   # 13: first CONV waits for the load
    c0 = (1, le, le + conv, None)
    c1 = (2, le + conv, le + 2 * conv, None)
    c2 = (le + 1, le + 2 * conv, le + 3 * conv, None)              # d = s[c0] + 1
    c3 = (le + conv + 1, le + 3 * conv, le + 4 * conv, None)       # d = s[c1] + 1
    d5 = le + conv + 2
    l2 = (d5, d5 + 1, d5 + 1 + 4 + cfg.mem_latency, d5 + 1)
    assert times(s) == [(0, 1, le, 1), c0, c1, c2, c3, l2, (d5 + 1, d5 + 2, d5 + 2, None)]
    # queue_depth 4 (the SMALL default) takes all four CONVs at once
    s = run(SMALL, {0: f"{long_}\n{CONV1} pop_prev=1\n{CONV1}\n{CONV1}\n{CONV1}\n{LOAD4}\nEND"},
            check_hazards=False)
    assert [t[0] for t in times(s)] == [0, 1, 2, 3, 4, 5, 6]


def test_two_clusters_share_the_memory_port():
    cfg = SMALL
    s = run(cfg, {0: f"{LOAD4}\nEND", 1: f"{LOAD4}\nEND"})
    lat = cfg.mem_latency
    assert times(s, 0)[0] == (0, 1, 1 + 4 + lat, 1)
    assert times(s, 1)[0] == (0, 1, 5 + 4 + lat, 5)                # waits for cluster 0's 4 beats
    assert s.clusters[1].port_wait == {"load": 4, "store": 0}
    assert s.cycles == 9 + lat
    # the port is released after the words, before the latency: back-to-back loads pipeline
    s = run(cfg, {0: f"{LOAD4}\n{LOAD4}\nEND"})
    assert times(s)[:2] == [(0, 1, 5 + lat, 1), (1, 5 + lat, 9 + 2 * lat, 5 + lat)]


def test_equal_start_ties():
    """Equal start cycles: lower cluster first, then load before store (even if the store comes
    first in program order)."""
    cfg = SMALL
    conv = cfg.conv_pipeline + 8
    def prog(c):
        return f"""
        {CONV1} push_next=1 push_prev=1
        STORE mv=0 dram_addr={0x8000 + 0x100 * c} n0=3 n1=1 n2=1 pop_prev=1
        LOAD buf=MAPS mv_mask=2 dram_addr=0x4000 n0=2 n1=1 n2=1 pop_next=1
        END"""
    s = run(cfg, {0: prog(0), 1: prog(1)})
    t = 1 + conv
    lat = cfg.mem_latency
    # both clusters' STORE and LOAD start at t; port order: c0 LOAD, c0 STORE, c1 LOAD, c1 STORE
    assert times(s, 0)[2] == (2, t, t + 2 + lat, t)
    assert times(s, 0)[1] == (1, t, t + 2 + 3 + lat, t + 2)
    assert times(s, 1)[2] == (2, t, t + 5 + 2 + lat, t + 5)
    assert times(s, 1)[1] == (1, t, t + 7 + 3 + lat, t + 7)
    assert s.clusters[1].port_wait == {"load": 5, "store": 7}


def test_stats_busy_and_macs():
    cfg = SMALL
    s = run(cfg, {0: f"{CONV1}\n{CONV1}\nSYNC\nEND"})
    st_ = s.clusters[0]
    conv = cfg.conv_pipeline + 8
    assert st_.busy["compute"] == 2 * conv + 1
    assert st_.macs == 2 * 8 * cfg.lanes and st_.mac_slots == 2 * 8 * cfg.macs_per_cluster
    assert st_.cycles == 1 + 2 * conv + 1


def test_maxpool_and_sync_cycles():
    cfg = SMALL
    pool = assemble("MAXPOOL mv_mask=1 in_w=3 ppitch=2 nb=2 kh=2 kw=3 sy=1 sx=1 oh=1 ow=1 out_pitch=2")[0]
    s = run(cfg, {0: [pool, Instr("SYNC"), Instr("END")]})
    p = cfg.pool_pipeline + 2 * 2 * 3
    assert times(s)[:2] == [(0, 1, 1 + p, None), (1, 1 + p, 2 + p, None)]


def test_timeline_only_with_trace():
    s = run(SMALL, {0: "END"}, trace=False)
    assert s.clusters[0].timeline is None


# ------------------------------------------------------------------------------------------------
# an independent cycle-by-cycle reference of the timing rules
# ------------------------------------------------------------------------------------------------

_QUEUE_OF_POP = {("pop_prev", e): (ENGINE_PREV[e], e) for e in ("compute", "store")}
_QUEUE_OF_POP.update({("pop_next", e): (ENGINE_NEXT[e], e) for e in ("load", "compute")})
_QUEUE_OF_PUSH = {("push_prev", e): (e, ENGINE_PREV[e]) for e in ("compute", "store")}
_QUEUE_OF_PUSH.update({("push_next", e): (e, ENGINE_NEXT[e]) for e in ("load", "compute")})


def reference_timing(cfg: MachineConfig, progs: dict[int, list[Instr]]):
    """Step the machine one cycle at a time. Returns {cluster: [(d, s, e, g)]} or 'deadlock'."""
    def pops(i):
        return [q for (f, e), q in _QUEUE_OF_POP.items() if e == i.engine and i.f[f]]

    def pushes(i):
        return [q for (f, e), q in _QUEUE_OF_PUSH.items() if e == i.engine and i.f[f]]

    def cost(i):
        if i.engine == "control":
            return 1
        return timing.transfer_words(i) if i.engine in ("load", "store") else timing.compute_cycles(i, cfg)

    T = {c: [[None, None, None, None] for _ in p] for c, p in progs.items()}
    fetch = {c: 0 for c in progs}
    queue = {c: {e: [] for e in ("load", "compute", "store")} for c in progs}
    free = {c: {e: 0 for e in ("load", "compute", "store")} for c in progs}
    tokens = {c: {} for c in progs}
    bound = 100 + sum(2 * (cost(i) + cfg.mem_latency + 2) for p in progs.values() for i in p)
    port_free = 0
    engines = sorted(("load", "compute", "store"), key=timing.ENGINE_PRIORITY.get)
    for t in range(bound):
        for c, p in progs.items():                     # ends: tokens become visible at e
            for pc, i in enumerate(p):
                if T[c][pc][2] == t and i.engine != "control":
                    for q in pushes(i):
                        tokens[c][q] = tokens[c].get(q, 0) + 1
        started = {c: {} for c in progs}
        for c in sorted(progs):                        # starts, in port priority order
            for e in engines:
                if not queue[c][e]:
                    continue
                pc = queue[c][e][0]
                i = progs[c][pc]
                if T[c][pc][0] <= t - 1 and free[c][e] <= t and all(tokens[c].get(q, 0) > 0 for q in pops(i)):
                    for q in pops(i):
                        tokens[c][q] -= 1
                    if e == "compute":
                        T[c][pc][1:] = [t, t + cost(i), None]
                    else:
                        g = max(t, port_free)
                        port_free = g + cost(i)
                        T[c][pc][1:] = [t, g + cost(i) + cfg.mem_latency, g]
                    free[c][e] = T[c][pc][2]
                    queue[c][e].pop(0)
                    started[c][e] = True
        for c, p in progs.items():                     # dispatch (sees starts before t only)
            k = fetch[c]
            if k >= len(p) or (k and T[c][k - 1][0] >= t):
                continue
            i = p[k]
            if i.engine == "control":
                T[c][k] = [t, t + 1, t + 1, None]
                fetch[c] = k + 1
                continue
            if len(queue[c][i.engine]) + started[c].get(i.engine, 0) < cfg.queue_depth:
                T[c][k][0] = t
                queue[c][i.engine].append(k)
                fetch[c] = k + 1
        if all(fetch[c] == len(p) and not any(queue[c].values()) and all(v <= t for v in free[c].values())
               and T[c][-1][2] <= t for c, p in progs.items()):
            return {c: [tuple(x) for x in T[c]] for c in progs}
    return "deadlock"


def _small_instr(draw, kind: str, cfg: MachineConfig) -> Instr:
    M = cfg.mv_per_cluster
    mask = draw(st.integers(1, (1 << M) - 1))
    if kind == "LOAD":
        return Instr("LOAD", buf=0, mv_mask=mask, dram_addr=0x4000 + 8 * draw(st.integers(0, 64)),
                     buf_addr=draw(st.integers(0, 8)), n0=draw(st.integers(1, 6)), n1=draw(st.integers(1, 2)),
                     s1=draw(st.integers(0, 8)), n2=1)
    if kind == "STORE":
        return Instr("STORE", mv=draw(st.integers(0, M - 1)), dram_addr=0x8000 + 8 * draw(st.integers(0, 64)),
                     buf_addr=draw(st.integers(0, 8)), n0=draw(st.integers(1, 6)), n1=1, n2=1)
    if kind == "CONV":
        return Instr("CONV", mv_mask=mask, nvv=draw(st.integers(1, cfg.vv_per_mv)), in_w=3, cpitch=2,
                     cin=draw(st.integers(1, 2)), kh=draw(st.integers(1, 2)), kw=draw(st.integers(1, 2)),
                     sy=1, sx=1, dy=1, dx=1, oh=draw(st.integers(1, 2)), ow=draw(st.integers(1, 2)),
                     out_pitch=cfg.vv_per_mv, write=draw(st.integers(0, 1)))
    if kind == "MAXPOOL":
        return Instr("MAXPOOL", mv_mask=mask, in_w=2, ppitch=1, nb=1, kh=draw(st.integers(1, 2)), kw=1,
                     sy=1, sx=1, oh=1, ow=draw(st.integers(1, 2)), out_pitch=1)
    return Instr("SYNC")


_FLAGS = {"load": ("pop_next", "push_next"), "compute": ("pop_prev", "pop_next", "push_prev", "push_next"),
          "store": ("pop_prev", "push_prev")}


@st.composite
def random_card(draw):
    cfg = dataclasses.replace(SMALL, queue_depth=draw(st.integers(1, 4)), mem_latency=draw(st.integers(1, 9)))
    progs = {}
    for c in range(draw(st.integers(1, cfg.clusters_per_card))):
        instrs = []
        for _ in range(draw(st.integers(0, 12))):
            kind = draw(st.sampled_from(["LOAD", "LOAD", "STORE", "CONV", "MAXPOOL", "SYNC"]))
            i = _small_instr(draw, kind, cfg)
            flags = {f: 1 for f in _FLAGS[i.engine] if draw(st.integers(0, 3)) == 0}
            instrs.append(i.replace(**flags))
        if draw(st.integers(0, 3)):                    # mostly: drop the pops no push can match
            pushed = {}
            for i in instrs:
                for (f, e), q in _QUEUE_OF_PUSH.items():
                    if e == i.engine and i.f[f]:
                        pushed[q] = pushed.get(q, 0) + 1
            for n, i in enumerate(instrs):
                for (f, e), q in _QUEUE_OF_POP.items():
                    if e == i.engine and i.f[f]:
                        if pushed.get(q, 0) > 0:
                            pushed[q] -= 1
                        else:
                            instrs[n] = i = i.replace(**{f: 0})
        progs[c] = instrs + [Instr("END")]
    return cfg, progs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_card())
def test_scheduler_matches_cycle_stepped_reference(case):
    cfg, progs = case
    want = reference_timing(cfg, progs)
    if want == "deadlock":
        with pytest.raises(SimError, match="deadlock"):
            run(cfg, progs, check_hazards=False)
        return
    s = run(cfg, progs, check_hazards=False)
    for c in progs:
        assert times(s, c) == want[c], f"cluster {c}"
        assert s.clusters[c].cycles == max(e for _, _, e, _ in want[c])
    assert s.cycles == max(e for c in progs for _, _, e, _ in want[c])


def test_barrier_ends_together_one_cycle_after_the_last_arrival():
    import numpy as np
    from arch.asm import assemble
    from arch.isa import encode_program
    from arch.machine import SMALL
    from sim.card import SimError, run_card
    p0 = encode_program(assemble("CONV mv_mask=1 nvv=1 in_w=10 cpitch=4 cin=1 kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 "
                                 "oh=1 ow=10 write=0\nBARRIER mask=0b11\nSYNC\nEND"))
    p1 = encode_program(assemble("BARRIER mask=0b11\nSYNC\nEND"))
    mem = np.zeros(4096, np.uint8)
    mem[:len(p0)] = np.frombuffer(p0, np.uint8)
    mem[1024:1024 + len(p1)] = np.frombuffer(p1, np.uint8)
    st = run_card(SMALL, mem, {0: 0, 1: 1024}, trace=True)
    conv_end = SMALL.conv_pipeline + 10 + 1            # CONV starts at 1
    b0 = st.clusters[0].timeline[1]
    b1 = st.clusters[1].timeline[0]
    assert (b0.start, b0.end) == (conv_end, conv_end + 1)
    assert (b1.start, b1.end) == (1, conv_end + 1)
    assert st.cycles == conv_end + 2
    with pytest.raises(SimError, match=r"BARRIER #1, mask 0b11\) waits for cluster\(s\) \[1\]"):
        run_card(SMALL, mem, {0: 0})
    bad = encode_program(assemble("BARRIER mask=0b10\nEND"))
    mem[2048:2048 + len(bad)] = np.frombuffer(bad, np.uint8)
    with pytest.raises(SimError, match="does not include cluster 0"):
        run_card(SMALL, mem, {0: 2048})


def test_a_waiting_barrier_frees_its_queue_slot_when_it_starts():
    """Rule 1 with a BARRIER: d = s[j] + 1 counts from the BARRIER's start, not from its release,
    so with a compute queue of 1 the instructions behind it dispatch while it waits, and their
    memory requests take their place in the port's first-come-first-served order."""
    import dataclasses

    import numpy as np
    from arch.asm import assemble
    from arch.isa import encode_program
    from arch.machine import SMALL
    from sim.card import run_card
    cfg = dataclasses.replace(SMALL, queue_depth=1)
    load = "LOAD buf=MAPS mv_mask=1 dram_addr=0x800 buf_addr=64 n0=8 n1=1 n2=1"   # not what the CONV reads
    p0 = encode_program(assemble("CONV mv_mask=1 nvv=1 in_w=10 cpitch=4 cin=4 kh=1 kw=1 sy=1 sx=1 dy=1 dx=1 "
                                 f"oh=1 ow=10 write=0\n{load}\n{load}\nBARRIER mask=0b11\nEND"))
    p1 = encode_program(assemble(f"BARRIER mask=0b11\nSYNC\n{load}\nEND"))
    mem = np.zeros(4096, np.uint8)
    mem[:len(p0)] = np.frombuffer(p0, np.uint8)
    mem[1024:1024 + len(p1)] = np.frombuffer(p1, np.uint8)
    st = run_card(cfg, mem, {0: 0, 1: 1024}, trace=True)
    barrier, sync, load1 = st.clusters[1].timeline[:3]
    first, second = st.clusters[0].timeline[1:3]
    assert barrier.start == 1 and barrier.end > second.start          # still waiting when cluster 0 loads again
    assert sync.dispatch == barrier.start + 1 and load1.start == sync.dispatch + 2
    assert first.grant == 2 and load1.grant == first.grant + 8         # first come, first served:
    assert second.grant == load1.grant + 8                             # cluster 1 requested before cluster 0's 2nd
