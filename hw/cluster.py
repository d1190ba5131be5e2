"""Cluster: instruction fetch and dispatch, three engine queues, token counters, the load, compute
and store engines and the MV units, with performance counters.

Timing (exactly :mod:`arch.timing`):

* Fetch reads one whole instruction per cycle through the cluster's own instruction port of the card
  memory (combinational read), so instruction ``i`` is dispatched into its engine's queue
  (:class:`amaranth.lib.fifo.SyncFIFO`, ``queue_depth`` deep) in cycle ``d[i]`` when the queue has
  room; a queue slot frees the cycle after its instruction starts, and an entry written in ``d`` is
  visible at the head from ``d + 1``. END stops fetch.
* An engine starts the instruction at its queue's head when it is idle and every token the
  instruction pops is available; it is then busy for the instruction's duration (rule 2 and 4), and
  in its last busy cycle it pushes its tokens, so they are visible in the end cycle ``e``, when the
  engine is idle again.
* BARRIER (rule 6) is a SYNC that holds the compute engine until the card's barrier unit
  (:class:`hw.card.BarrierUnit`) releases it: from its start cycle the cluster shows ``bar_wait``
  with the instruction's mask and ``bar_count`` (BARRIERs this cluster has finished, so this one is
  its ``bar_count``-th, counting from 0); in the cycle ``bar_release`` comes back (the start cycle of
  the last partner, ``max(s)``) it pushes its tokens and finishes, so it ends at ``1 + max(s)``.
* LOAD and STORE request the card's memory port in their start cycle and get their grant cycle
  ``g`` back at once (:class:`hw.card.Card` arbitrates); they move one word per cycle in
  ``[g, g + words)`` and end at ``g + words + mem_latency``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from arch import timing
from arch.isa import INSTR_BITS, INSTR_BYTES, Buf
from arch.machine import MachineConfig

from .agu import LoopNest
from .compute import TraceGenerator, drive_mv
from .isa import ENGINE_OPS, HEADER_LAYOUT, LAYOUTS, OPCODES, RTL_OPS
from .mv import MV_PIPELINE, MVUnit

__all__ = ["Cluster", "STATS", "CYCLE_BITS"]

#: width of cycle numbers and counters
CYCLE_BITS = 48

#: performance counters of a cluster (each an Out port ``stat_<name>``)
STATS = ("cycles", "instructions", "busy_load", "busy_compute", "busy_store",
         "token_wait_load", "token_wait_compute", "token_wait_store", "port_wait_load", "port_wait_store",
         "words_loaded", "words_stored", "macs", "mac_slots", "saturations")


class Cluster(wiring.Component):
    """One cluster of ``mv_per_cluster`` MV units.

    Ports
    -----
    enable : In(1)
        The cluster runs its program (held from cycle 0); a disabled cluster is done at once.
    prog_addr : In(32)
        Main-memory *word* address of the first instruction (held).
    now : In(CYCLE_BITS)
        The card's cycle number.
    fetch_addr : Out(32), fetch_data : In(INSTR_BITS)
        Instruction port: the word address of the instruction to fetch; the whole instruction is
        returned combinationally.
    load_req, store_req : Out(1), load_words, store_words : Out(32), load_grant, store_grant : In
        Memory-port requests of the load and store engines (in their start cycle) and the grant
        cycles the card returns in the same cycle.
    mem_r_en, mem_r_addr : Out, mem_r_data : In
        Data read port (data arrives the cycle after the address).
    mem_w_en, mem_w_addr, mem_w_data : Out
        Data write port.
    bar_wait : Out(1), bar_mask : Out(clusters_per_card), bar_count : Out(32), bar_release : In(1)
        Barrier handshake with :class:`hw.card.BarrierUnit`: the compute engine has started a BARRIER
        (combinationally from its start cycle) with this mask, and it is this cluster's
        ``bar_count``-th BARRIER (from 0); ``bar_release`` ends it in the same cycle.
    done : Out(1)
        END has been fetched and every queue and engine is empty.
    error : Out(1)
        An illegal opcode was fetched (fetch stops; the cluster never completes).
    stat_<name> : Out(CYCLE_BITS)
        Performance counters, see :data:`STATS`.
    """

    def __init__(self, cfg: MachineConfig):
        if cfg.conv_pipeline < MV_PIPELINE or cfg.pool_pipeline < MV_PIPELINE:
            raise ValueError(f"machine {cfg.name!r}: the RTL needs conv_pipeline and pool_pipeline >= "
                             f"{MV_PIPELINE} (its MV pipeline depth)")
        if INSTR_BYTES % cfg.beat_bytes:
            raise ValueError(f"machine {cfg.name!r}: the RTL needs the word ({cfg.beat_bytes} B) to divide "
                             f"an instruction ({INSTR_BYTES} B)")
        self.cfg = cfg
        wbits = cfg.beat_bytes * 8
        members = {
            "enable": In(1), "prog_addr": In(32), "now": In(CYCLE_BITS),
            "fetch_addr": Out(32), "fetch_data": In(INSTR_BITS),
            "load_req": Out(1), "load_words": Out(32), "load_grant": In(CYCLE_BITS),
            "store_req": Out(1), "store_words": Out(32), "store_grant": In(CYCLE_BITS),
            "mem_r_en": Out(1), "mem_r_addr": Out(32), "mem_r_data": In(wbits),
            "mem_w_en": Out(1), "mem_w_addr": Out(32), "mem_w_data": Out(wbits),
            "bar_wait": Out(1), "bar_mask": Out(cfg.clusters_per_card), "bar_count": Out(32),
            "bar_release": In(1),
            "done": Out(1), "error": Out(1),
        }
        members.update({f"stat_{s}": Out(CYCLE_BITS) for s in STATS})
        super().__init__(members)

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        stat = {s: getattr(self, f"stat_{s}") for s in STATS}

        # ---- queues ---------------------------------------------------------------------------
        fifos = {}
        for e in ("load", "compute", "store"):
            fifos[e] = m.submodules[f"{e}_queue"] = SyncFIFO(width=INSTR_BITS, depth=cfg.queue_depth)

        # ---- fetch and dispatch -------------------------------------------------------------------
        pc = Signal(32)
        ended = Signal()
        error = Signal()
        hdr = data.View(HEADER_LAYOUT, self.fetch_data)
        op = hdr.opcode
        m.d.comb += self.fetch_addr.eq(self.prog_addr + pc * (INSTR_BYTES // cfg.beat_bytes))
        # the queue of each instruction: its engine in the ISA (END, 'control', stops fetch below)
        target = {e: Cat(*(op == OPCODES[mn] for mn in ENGINE_OPS[e] if mn in RTL_OPS)).any()
                  for e in ("load", "compute", "store")}
        fetching = self.enable & ~ended & ~error
        for e, f in fifos.items():
            m.d.comb += [f.w_data.eq(self.fetch_data), f.w_en.eq(fetching & target[e])]
        dispatched = Signal()
        with m.If(fetching):
            with m.If(op == OPCODES["END"]):
                m.d.sync += ended.eq(1)
                m.d.comb += dispatched.eq(1)
            with m.Elif(Cat(*target.values()).any()):
                with m.If(Mux(target["load"], fifos["load"].w_rdy,
                              Mux(target["store"], fifos["store"].w_rdy, fifos["compute"].w_rdy))):
                    m.d.sync += pc.eq(pc + 1)
                    m.d.comb += dispatched.eq(1)
            with m.Else():
                m.d.sync += error.eq(1)
        m.d.comb += self.error.eq(error)
        m.d.sync += stat["instructions"].eq(stat["instructions"] + dispatched)

        # ---- tokens --------------------------------------------------------------------------
        # counters of the four links; pops in an engine's start cycle, pushes in its last busy cycle
        links = ("load->compute", "compute->load", "compute->store", "store->compute")
        tok = {q: Signal(32, name=q.replace("->", "_to_")) for q in links}
        pop = {q: Signal(name="pop_" + q.replace("->", "_to_")) for q in links}
        push = {q: Signal(name="push_" + q.replace("->", "_to_")) for q in links}
        for q in links:
            m.d.sync += tok[q].eq(tok[q] + push[q] - pop[q])
        # (engine, flag) -> link
        pops_of = {"load": {"pop_next": "compute->load"},
                   "compute": {"pop_prev": "load->compute", "pop_next": "store->compute"},
                   "store": {"pop_prev": "compute->store"}}
        pushes_of = {"load": {"push_next": "load->compute"},
                     "compute": {"push_prev": "compute->load", "push_next": "compute->store"},
                     "store": {"push_prev": "store->compute"}}

        busys = []

        def engine(e: str, duration, ready=1, hold=None):
            """The start/busy/finish control of engine ``e``; returns (start, active, busy, current instr).

            ``hold``: (head instruction waits, release) -- an instruction for which the first is true
            ignores ``duration`` and finishes in the first cycle, from its start cycle on, in which
            ``release`` is true (BARRIER)."""
            f = fifos[e]
            head = data.View(HEADER_LAYOUT, f.r_data)
            busy = Signal(name=f"{e}_busy")
            rem = Signal(CYCLE_BITS, name=f"{e}_rem")
            cur = Signal(INSTR_BITS, name=f"{e}_instr")
            cur_h = data.View(HEADER_LAYOUT, cur)
            tokens_ok = 1
            for flag, q in pops_of[e].items():
                tokens_ok = tokens_ok & (~head[flag] | (tok[q] != 0))
            start = Signal(name=f"{e}_start")
            finish = Signal(name=f"{e}_finish")
            m.d.comb += [start.eq(~busy & f.r_rdy & tokens_ok & ready), f.r_en.eq(start)]
            holds, release = hold if hold is not None else (0, 0)
            waiting = Signal(name=f"{e}_waiting")     # busy with a held instruction
            with m.If(start):
                m.d.sync += cur.eq(f.r_data)
                with m.If(holds):
                    with m.If(release):
                        m.d.comb += finish.eq(1)
                    with m.Else():
                        m.d.sync += [busy.eq(1), waiting.eq(1)]
                with m.Elif(duration == 1):
                    m.d.comb += finish.eq(1)
                with m.Else():
                    m.d.sync += [busy.eq(1), rem.eq(duration - 1)]
            with m.Elif(waiting):
                with m.If(release):
                    m.d.sync += [busy.eq(0), waiting.eq(0)]
                    m.d.comb += finish.eq(1)
            with m.Elif(busy):
                m.d.sync += rem.eq(rem - 1)
                with m.If(rem == 1):
                    m.d.sync += busy.eq(0)
                    m.d.comb += finish.eq(1)
            for flag, q in pops_of[e].items():
                m.d.comb += pop[q].eq(start & head[flag])
            for flag, q in pushes_of[e].items():
                m.d.comb += push[q].eq(finish & Mux(start, head[flag], cur_h[flag]))
            active = start | busy
            m.d.sync += [
                stat[f"busy_{e}"].eq(stat[f"busy_{e}"] + active),
                stat[f"token_wait_{e}"].eq(stat[f"token_wait_{e}"] + (~busy & f.r_rdy & ~tokens_ok)),
            ]
            busys.append(busy)
            return start, active, busy, cur, waiting

        # ---- MV units ---------------------------------------------------------------------------
        mvs = []
        for i in range(cfg.mv_per_cluster):
            mv = MVUnit(cfg)
            m.submodules[f"mv{i}"] = mv
            mvs.append(mv)

        # ---- compute engine ---------------------------------------------------------------------
        m.submodules.trace = tg = TraceGenerator(cfg)
        ch = fifos["compute"].r_data
        copc = data.View(HEADER_LAYOUT, ch).opcode
        # the duration: arch.timing's cost formula of each compute instruction, on the head's fields
        cdur = Const(timing.SYNC_CYCLES, CYCLE_BITS)
        for mn in ENGINE_OPS["compute"]:
            if mn in RTL_OPS and timing.COMPUTE_COST[mn] is not timing.COMPUTE_COST["SYNC"]:
                cdur = Mux(copc == OPCODES[mn], timing.COMPUTE_COST[mn](data.View(LAYOUTS[mn], ch), cfg), cdur)
        # BARRIER: waits (bar_wait) from its start cycle until the barrier unit releases it
        bar_head = copc == OPCODES["BARRIER"]
        c_start, _, _, c_cur, c_waiting = engine("compute", cdur, hold=(bar_head, self.bar_release))
        bar_count = Signal(32)
        m.d.comb += [
            self.bar_wait.eq((c_start & bar_head) | c_waiting),
            self.bar_mask.eq(Mux(c_start, data.View(LAYOUTS["BARRIER"], ch).mask,
                                 data.View(LAYOUTS["BARRIER"], c_cur).mask)),
            self.bar_count.eq(bar_count),
        ]
        m.d.sync += bar_count.eq(bar_count + (self.bar_wait & self.bar_release))
        m.d.comb += [tg.start.eq(c_start & (copc != OPCODES["SYNC"]) & ~bar_head), tg.instr.eq(ch)]
        for i, mv in enumerate(mvs):
            m.d.comb += drive_mv(tg, mv, i)
        conv_step = tg.issue & ~tg.pool
        nmv = sum(tg.mv_mask[i] for i in range(cfg.mv_per_cluster))
        m.d.sync += [
            stat["macs"].eq(stat["macs"] + Mux(conv_step, timing.macs_per_step(tg.nvv, nmv, cfg), 0)),
            stat["mac_slots"].eq(stat["mac_slots"] + Mux(conv_step, cfg.macs_per_cluster, 0)),
            stat["saturations"].eq(stat["saturations"] + sum(mv.sat_count for mv in mvs)),
        ]

        # ---- load and store engines ---------------------------------------------------------------
        word_shift = (cfg.beat_bytes - 1).bit_length()

        def dma(e: str, fmt: str):
            f = fifos[e]
            head = data.View(LAYOUTS[fmt], f.r_data)
            words = timing.transfer_words(head)
            req, req_words, grant = (getattr(self, f"{e}_{x}") for x in ("req", "words", "grant"))
            dur = grant - self.now + words + cfg.mem_latency
            start, act, busy, cur, _ = engine(e, dur)
            curv = data.View(LAYOUTS[fmt], cur)
            m.d.comb += [req.eq(start), req_words.eq(words)]
            g = Signal(CYCLE_BITS, name=f"{e}_g")
            with m.If(start):
                m.d.sync += g.eq(grant)
            g_eff = Mux(start, grant, g)
            nest = m.submodules[f"{e}_agu"] = LoopNest(3, {"mem": 32}, count_bits=16)
            m.d.comb += [nest.start.eq(start), nest.init_mem.eq(head.dram_addr >> word_shift)]
            m.d.comb += [nest.counts[0].eq(head.n2), nest.counts[1].eq(head.n1), nest.counts[2].eq(head.n0),
                         nest.inc_mem[0].eq(head.s2), nest.inc_mem[1].eq(head.s1), nest.inc_mem[2].eq(1)]
            moving = Signal(name=f"{e}_moving")     # a word crosses the port in this cycle
            m.d.comb += [moving.eq(act & nest.valid & (self.now >= g_eff)), nest.next.eq(moving)]
            m.d.sync += stat[f"port_wait_{e}"].eq(stat[f"port_wait_{e}"] + (act & (self.now < g_eff)))
            return head, curv, start, moving, nest.addr_mem

        # load: word w to maps (residual) word buf_addr + w, or kernel word buf_addr + w // nvv of VV w % nvv
        lh, lc, l_start, l_move, l_addr = dma("load", "LOAD")
        ptr, vvc = Signal(16), Signal(5)
        ptr_e = Mux(l_start, lh.buf_addr, ptr)
        vv_e = Mux(l_start, 0, vvc)
        nvv_e = Mux(l_start, lh.nvv, lc.nvv)
        buf_e = Mux(l_start, lh.buf, lc.buf)
        kern_e = buf_e == Buf.KERNEL
        mask_e = Mux(l_start, lh.mv_mask, lc.mv_mask)
        with m.If(l_start):
            m.d.sync += [ptr.eq(lh.buf_addr), vvc.eq(0)]
        with m.If(l_move):
            with m.If(~kern_e | (vv_e == nvv_e - 1)):
                m.d.sync += [ptr.eq(ptr_e + 1), vvc.eq(0)]
            with m.Else():
                m.d.sync += [ptr.eq(ptr_e), vvc.eq(vv_e + 1)]
        m.d.comb += [self.mem_r_en.eq(l_move), self.mem_r_addr.eq(l_addr)]
        wv, wbuf, wptr, wvv, wmask = Signal(), Signal(2), Signal(16), Signal(5), Signal(8)
        m.d.sync += [wv.eq(l_move), wbuf.eq(buf_e), wptr.eq(ptr_e), wvv.eq(vv_e), wmask.eq(mask_e)]
        for i, mv in enumerate(mvs):
            sel = wv & wmask[i]
            m.d.comb += [
                mv.maps_w_en.eq(sel & (wbuf == Buf.MAPS)), mv.maps_w_addr.eq(wptr),
                mv.maps_w_data.eq(self.mem_r_data),
                mv.res_w_en.eq(sel & (wbuf == Buf.RES)), mv.res_w_addr.eq(wptr), mv.res_w_data.eq(self.mem_r_data),
                mv.kern_w_en.eq(Mux(sel & (wbuf == Buf.KERNEL), Const(1, cfg.vv_per_mv) << wvv, 0)),
                mv.kern_w_addr.eq(wptr),
                mv.kern_w_data.eq(self.mem_r_data),
            ]
        m.d.sync += stat["words_loaded"].eq(stat["words_loaded"] + l_move)

        # store: word w read from output word buf_addr + w of MV mv (combinational read port)
        sh, sc, s_start, s_move, s_addr = dma("store", "STORE")
        sptr = Signal(16)
        sptr_e = Mux(s_start, sh.buf_addr, sptr)
        smv_e = Mux(s_start, sh.mv, sc.mv)
        with m.If(s_start):
            m.d.sync += sptr.eq(sh.buf_addr)
        with m.If(s_move):
            m.d.sync += sptr.eq(sptr_e + 1)
        out_data = Signal(cfg.beat_bytes * 8)
        for i, mv in enumerate(mvs):
            m.d.comb += mv.out_r_addr.eq(sptr_e)
            with m.If(smv_e == i):
                m.d.comb += out_data.eq(mv.out_r_data)
        m.d.comb += [self.mem_w_en.eq(s_move), self.mem_w_addr.eq(s_addr), self.mem_w_data.eq(out_data)]
        m.d.sync += stat["words_stored"].eq(stat["words_stored"] + s_move)

        # ---- completion -----------------------------------------------------------------------
        engines_busy = Cat(*busys).any()
        queued = Cat(*(f.r_rdy for f in fifos.values())).any()
        m.d.comb += self.done.eq(~self.enable | (ended & ~queued & ~engines_busy))
        m.d.sync += stat["cycles"].eq(stat["cycles"] + ~self.done)
        return m
