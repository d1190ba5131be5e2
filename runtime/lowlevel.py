"""The SDK's low-level methods on the simulated cards (``MDLA.ReadData``, ``WriteData``,
``CreateMemcard``, ``Malloc``, ``ReadCode``, ``HwRun``, ``WriteWeights``, ``GetNonlinCoefs``,
``Loadmulti``); ``runtime/mdla.py`` delegates to the functions here.

Card memory: addresses are byte addresses in one card's main memory (the memory map of
``compiler.memmap``: the loaded models' activations, weights and code, then the buffers ``Malloc``
placed after them). ``ReadData``/``WriteData`` reach only that extent (the part of the card that
holds something), never beyond the configuration's ``mem_bytes``; anything else is an
``MDLAError`` naming the extent.

Hand-written code: ``ReadCode`` assembles the text assembly of ``arch.asm`` (one instruction a line,
named fields; ``@name`` or ``@name+offset`` stands for the address of the buffer ``Malloc`` gave
that name), validates it against the configuration and writes it at ``instr_addr`` on every card of
the object; ``HwRun`` runs it to its END on the executor of the 'simulator' flag.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import MDLAError

#: Malloc'ed buffers start on this alignment (the memory map's region alignment)
MALLOC_ALIGN = 4096


# ------------------------------------------------------------------------------------------------
# card memory
# ------------------------------------------------------------------------------------------------

def _cfg(obj):
    if obj._compiled is not None:
        return obj._compiled.cfg
    low = getattr(obj, "_memcard", None)
    if low is not None:
        return low["cfg"]
    raise MDLAError("no cards: load a model (Compile/Init) or CreateMemcard(nfpga, nclus, bitfile) first")


def _card(obj, card, ray_ok: bool = False):
    _cfg(obj)
    if obj._flags["workers"] == "ray" and not ray_ok:
        raise MDLAError("with workers='ray' the card memory lives in the Ray card actors and this process's copy "
                        "does not see the runs' results; SetFlag('workers', 'serial') for "
                        "WriteData/Malloc/ReadCode/HwRun/WriteWeights (ReadData fetches from the actors)")
    if isinstance(card, bool) or not isinstance(card, (int, np.integer)):
        raise MDLAError(f"card must be an int, got {type(card).__name__}")
    if not 0 <= card < len(obj._cards):
        raise MDLAError(f"card {card} does not exist: this object has {len(obj._cards)} card(s) (0..{len(obj._cards) - 1})")
    return obj._cards[int(card)]


def extent(obj, card) -> int:
    """Bytes of card ``card`` that hold something: the resident models' memory maps and the Malloc'ed buffers."""
    from .driver import _objects_on
    c = _card(obj, card, ray_ok=True)
    ends = [o._compiled.memmap.end for o in _objects_on([c])]
    ends += [end for o in _owners(c) for end in getattr(o, "_mallocs_end", {}).get(c.index, [])]
    return max(ends, default=0)


def _owners(card) -> list:
    return [o for o in (w.ref() for w in card.owners) if o is not None]


def _bytes_view(data, what: str, writable: bool) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise MDLAError(f"{what}: data must be a numpy array, got {type(data).__name__}")
    if not data.flags.c_contiguous:
        raise MDLAError(f"{what}: data must be a C-contiguous array (np.ascontiguousarray)")
    if writable and not data.flags.writeable:
        raise MDLAError(f"{what}: data is read-only; ReadData fills it")
    if data.dtype.hasobject:
        raise MDLAError(f"{what}: data must hold plain numbers, not objects")
    return data.reshape(-1).view(np.uint8)


#: what made a buffer or program stale (the message of the refusal)
_STALE_WHY = ("a later Compile, Init, Loadmulti or Free replaced this object's card contents (the SDK keeps no "
              "buffer across them); Malloc (and ReadCode) again after loading")


def invalidate(obj) -> None:
    """The object's cards are being emptied or given a new program: its Malloc'ed buffers and the
    programs ReadCode wrote become stale (kept in ``obj._stale``: (card, start, end, name) and
    ``obj._stale_code``: addresses)."""
    stale = getattr(obj, "_stale", None)
    if stale is None:
        obj._stale, obj._stale_code = [], set()
    obj._stale.extend(getattr(obj, "_mallocs", []))
    obj._stale_code.update(getattr(obj, "_code", {}))


def _stale_overlap(obj, card, start: int, end: int):
    """The stale buffer that bytes start..end of card ``card`` fall in, unless a buffer Malloc'ed since covers them."""
    for k, s0, s1, name in getattr(obj, "_stale", []):
        if k == card and start < s1 and s0 < end:
            if any(k == c and b0 <= start and end <= b1 for c, b0, b1, _ in getattr(obj, "_mallocs", [])):
                return None
            return k, s0, s1, name
    return None


def _check_range(obj, card, addr, nbytes: int, what: str) -> None:
    if isinstance(addr, bool) or not isinstance(addr, (int, np.integer)):
        raise MDLAError(f"{what}: addr must be an int, got {type(addr).__name__}")
    hit = _stale_overlap(obj, int(card), int(addr), int(addr) + max(int(nbytes), 1))
    if hit is not None:
        _, s0, s1, name = hit
        raise MDLAError(f"{what}: bytes {addr:#x}..{addr + nbytes:#x} of card {card} are in buffer {name!r} "
                        f"({s0:#x}..{s1:#x}), which is stale: {_STALE_WHY}")
    end = extent(obj, card)
    if addr < 0 or addr + nbytes > end:
        raise MDLAError(f"{what}: bytes {addr:#x}..{addr + nbytes:#x} are outside card {card}'s memory in use "
                        f"(0..{end:#x}: the loaded models' memory maps and the Malloc'ed buffers; Malloc more)")


def read_data(obj, addr, data, card) -> None:
    """``ReadData``: copy ``data.nbytes`` bytes of card memory from ``addr`` into ``data`` (with
    workers='ray', from the card's actor once a run has loaded one: its memory has the results)."""
    c = _card(obj, card, ray_ok=True)
    view = _bytes_view(data, "ReadData", writable=True)
    _check_range(obj, card, addr, view.size, "ReadData")
    a = int(addr)
    if obj._flags["workers"] == "ray":
        from . import ray_cards
        if len(c.owners) > 1:
            raise MDLAError("ReadData with workers='ray' on cards shared by linked models: the actors' memory may be "
                            "another object's run; SetFlag('workers', 'serial') to read the card memory here")
        eng = ray_cards._ENGINES.get(obj._owner)
        placed = eng.actors.get(c.index) if eng is not None and not eng.closed else None
        if placed is not None and placed.key is not None:
            memory = eng.ray.get(placed.handle.snapshot.remote())
            view[:] = memory[a:a + view.size]
            return
    with c.lock:                    # (no Ray run yet: this copy is what the actors would load)
        view[:] = c.memory[a:a + view.size]


def write_data(obj, addr, data, card) -> None:
    """``WriteData``: copy the bytes of ``data`` into card memory at ``addr``."""
    c = _card(obj, card)
    view = _bytes_view(data, "WriteData", writable=False)
    _check_range(obj, card, addr, view.size, "WriteData")
    with c.lock:
        c.memory[int(addr):int(addr) + view.size] = view


# ------------------------------------------------------------------------------------------------
# cards without a model, buffers, hand-written code
# ------------------------------------------------------------------------------------------------

def create_memcard(obj, nfpga, nclus, fbitfile="") -> None:
    """``CreateMemcard``: ``nfpga`` cards of configuration ``fbitfile`` (default: the 'bitfile' flag)
    for low-level use without a model; HwRun runs on clusters 0..nclus-1."""
    from arch.machine import get_config
    from .cards import POOL, CardsUnavailable
    if obj._compiled is not None or getattr(obj, "_memcard", None) is not None:
        raise MDLAError("CreateMemcard: this object already has cards (Free() it first)")
    try:
        cfg = get_config(fbitfile or obj._flags["bitfile"])
    except (ValueError, OSError) as e:
        raise MDLAError(f"CreateMemcard: {e}") from None
    for name, v, hi in (("nfpga", nfpga, POOL.size), ("nclus", nclus, cfg.clusters_per_card)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= hi:
            raise MDLAError(f"CreateMemcard: {name} must be an int in 1..{hi}, got {v!r}")
    try:
        obj._cards = POOL.allocate(int(nfpga), obj._owner)
    except CardsUnavailable as e:
        raise MDLAError(str(e)) from None
    obj._memcard = {"cfg": cfg, "clusters": tuple(range(int(nclus)))}


def malloc(obj, nelements, datasize, card, name) -> int:
    """``Malloc``: a buffer of ``nelements * datasize`` bytes on card ``card`` after everything there;
    returns its address; ``@name`` is that address in ReadCode's assembly."""
    cfg = _cfg(obj)
    c = _card(obj, card)
    for what, v in (("nelements", nelements), ("datasize", datasize)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise MDLAError(f"Malloc: {what} must be a positive int, got {v!r}")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise MDLAError(f"Malloc: name must be an identifier (used as @name in assembly), got {name!r}")
    size = int(nelements) * int(datasize)
    start = -(-extent(obj, card) // MALLOC_ALIGN) * MALLOC_ALIGN
    if start + size > cfg.mem_bytes:
        raise MDLAError(f"Malloc: {size} bytes at {start:#x} do not fit in the {cfg.mem_bytes} bytes of card memory "
                        f"of the {cfg.name!r} configuration")
    with c.lock:
        c.ensure(start + size)
    obj._mallocs_end.setdefault(c.index, []).append(start + size)
    obj._mallocs.append((int(card), start, start + size, name))
    obj._symbols[name] = start
    return start


_SYMBOL = re.compile(r"@([A-Za-z_]\w*)(?:\+(0x[0-9a-fA-F]+|\d+))?")


def _substitute(obj, text: str, filename: str) -> str:
    def sub(m):
        if m.group(1) not in obj._symbols and any(n == m.group(1) for *_, n in getattr(obj, "_stale", [])):
            raise MDLAError(f"ReadCode({filename}): @{m.group(1)} is a stale buffer: {_STALE_WHY}")
        if m.group(1) not in obj._symbols:
            raise MDLAError(f"ReadCode({filename}): @{m.group(1)} is not a Malloc'ed buffer "
                            f"(known: {sorted(obj._symbols) or 'none'})")
        return str(obj._symbols[m.group(1)] + (int(m.group(2), 0) if m.group(2) else 0))
    return _SYMBOL.sub(sub, text)


def read_code(obj, filename, instr_addr) -> np.ndarray:
    """``ReadCode``: assemble the text program ``filename`` and write it at ``instr_addr`` on every card
    of the object; returns the machine code as an int32 array."""
    from arch.asm import assemble
    from arch.isa import ISAError, encode_program, validate
    cfg = _cfg(obj)
    _card(obj, 0)                                  # (refused with workers='ray', with the reason)
    try:
        text = Path(filename).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise MDLAError(f"ReadCode: cannot read {filename}: {e}") from None
    try:
        prog = assemble(_substitute(obj, text, str(filename)))
        for pc, i in enumerate(prog):
            try:
                validate(i, cfg)
            except ISAError as e:
                raise ISAError(f"instruction {pc} ({i.op}): {e}") from None
    except ISAError as e:
        raise MDLAError(f"ReadCode({filename}): {e}") from None
    if not prog or prog[-1].op != "END":
        raise MDLAError(f"ReadCode({filename}): the program must end with END (the cluster runs until it)")
    code = np.frombuffer(encode_program(prog), dtype=np.uint8)
    for k in range(len(obj._cards)):
        _check_range(obj, k, instr_addr, code.size, f"ReadCode({filename})")
    if instr_addr % cfg.beat_bytes:
        raise MDLAError(f"ReadCode: instr_addr {instr_addr:#x} is not aligned to the {cfg.beat_bytes}-byte word")
    for card in obj._cards:
        with card.lock:
            card.memory[int(instr_addr):int(instr_addr) + code.size] = code
    obj._code[int(instr_addr)] = prog
    return code.view(np.int32).copy()


def hw_run(obj, instr_addr, outsize):
    """``HwRun``: run the code at ``instr_addr`` (written by ReadCode) on the object's clusters of every
    card to its END; returns (hwtime in seconds, bytes moved). ``outsize`` > 0: the bytes the program
    must have stored (an MDLAError if it stored fewer, where the SDK would have waited in vain)."""
    from sim import SimError
    from .driver import executor_for
    cfg = _cfg(obj)
    if obj._flags["workers"] == "ray":
        _card(obj, 0)                              # refused, with the reason
    if int(instr_addr) not in obj._code and int(instr_addr) in getattr(obj, "_stale_code", ()):
        raise MDLAError(f"HwRun: the program ReadCode wrote at {instr_addr:#x} is stale: {_STALE_WHY}")
    if int(instr_addr) not in obj._code:
        raise MDLAError(f"HwRun: no program was written at {instr_addr:#x} by ReadCode "
                        f"(known: {[hex(a) for a in sorted(obj._code)] or 'none'})")
    if isinstance(outsize, bool) or not isinstance(outsize, (int, np.integer)) or outsize < 0:
        raise MDLAError(f"HwRun: outsize must be a non-negative int, got {outsize!r}")
    clusters = obj._compiled.parallel.clusters if obj._compiled is not None else obj._memcard["clusters"]
    programs = {cl: int(instr_addr) for cl in clusters}
    executor = executor_for(obj)
    stats = []
    for card in obj._cards:
        with card.lock:
            try:
                stats.append(executor.run(cfg, card.memory, programs))
            except SimError as e:
                raise MDLAError(f"HwRun: the program at {instr_addr:#x} failed on card {card.index}: {e}") from e
    from .executors import RunResult
    run = RunResult(stats)
    counters = run.counters()
    obj._last_stats, obj._hwcycles, obj._saturations = stats, run.cycles(), run.saturations()
    stored = min(sum(cs.bytes_stored for cs in s.clusters.values()) for s in stats)
    if outsize and stored < outsize:
        raise MDLAError(f"HwRun: the program stored {stored} bytes, fewer than outsize={outsize} "
                        f"(the SDK would have waited for them)")
    return cfg.cycles_to_ms(run.cycles()) / 1000.0, counters["bytes_loaded"] + counters["bytes_stored"]


# ------------------------------------------------------------------------------------------------
# activation tables
# ------------------------------------------------------------------------------------------------

def nonlin_coefs(type_="relu", act_a=None, act_b=None) -> np.ndarray:
    """``GetNonlinCoefs``: the SDK's format, an int16 array of ``NONLIN_SIZE`` (4096) entries, entry i
    the output stage's activation ``type_`` (an ``arch.isa.Act`` name or value) of the int16 input
    ``(i - 2048) * 16`` (``arch.numerics.nonlin_table``: the activation of ``arch/numerics.py``
    sampled over the whole input range). The SDK ignored ``type`` and always gave ReLU's table; here
    it chooses the activation (default 'relu'). ``act_a``/``act_b`` are the CONV's fields; defaults:
    SIGMOID/TANH output Q0.15 (``act_a`` 0), HARDSWISH/SILU/MISH in Q4.11 (``act_a`` 11); LEAKY and
    CLIP have no default and need both."""
    from arch.isa import Act
    from arch import numerics as nx
    try:
        act = Act[type_.upper()] if isinstance(type_, str) else Act(int(type_))
    except (KeyError, ValueError, TypeError):
        raise MDLAError(f"GetNonlinCoefs: unknown activation {type_!r}; known: "
                        f"{[a.name.lower() for a in Act]}") from None
    name = f"GetNonlinCoefs({act.name.lower()})"
    for f, v in (("act_a", act_a), ("act_b", act_b)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v <= 0xFFFF):
            raise MDLAError(f"{name}: {f} must be a 16-bit field value (0..65535), got {v!r}")
    if act in (Act.LEAKY, Act.CLIP):
        if act_a is None or act_b is None:
            what = "the multiplier and the shift" if act == Act.LEAKY else "the lower and upper bounds (as 16-bit patterns)"
            raise MDLAError(f"{name}: give act_a and act_b ({what}); {act.name} has no default fields")
        a, b = int(act_a), int(act_b)
        if act == Act.LEAKY and b > nx.LEAKY_MAX_SHIFT:
            raise MDLAError(f"{name}: the LEAKY shift act_b {b} exceeds {nx.LEAKY_MAX_SHIFT}")
        if act == Act.CLIP and nx.s16(a) > nx.s16(b):
            raise MDLAError(f"{name}: the CLIP lower bound {nx.s16(a)} exceeds the upper bound {nx.s16(b)}")
    elif act in (Act.SIGMOID, Act.TANH, Act.HARDSWISH, Act.SILU, Act.MISH):
        default = 0 if act in (Act.SIGMOID, Act.TANH) else nx.LUT_IN_FRAC
        a = default if act_a is None else int(act_a)
        b = 0 if act_b is None else int(act_b)
        if a > nx.ACT_MAX_FRAC or b != 0:
            raise MDLAError(f"{name}: takes act_a in 0..{nx.ACT_MAX_FRAC} and act_b 0, got {a} and {b}")
    else:
        if act_a or act_b:
            raise MDLAError(f"{name}: {act.name} has no fields (act_a and act_b must be 0)")
        a = b = 0
    return nx.nonlin_table(int(act), a, b)


# ------------------------------------------------------------------------------------------------
# weights of a loaded program
# ------------------------------------------------------------------------------------------------

def write_weights(obj, weights, bias, node=-1) -> None:
    """``WriteWeights``: replace the weights and bias of layer ``node`` (an index among the program's
    convolution and linear layers, a layer name, or -1: the last linear layer) in the loaded program,
    quantised to the formats the program was compiled with; the program and memory map stay."""
    from arch.numerics import float_to_fixed
    from compiler.driver import compile_graph
    from compiler.ir import Conv
    from compiler.partition import Staged
    c = obj._need()
    if isinstance(c, Staged) or getattr(c, "whole", False):
        raise MDLAError("WriteWeights: this model has host stages; recompile it with the new weights")
    if obj._flags["workers"] == "ray":
        _card(obj, 0)
    g = c.graph
    if g is None:
        raise MDLAError("WriteWeights: this .bin has no graph section (the quantised layers); recompile the model")
    convs = [L for L in g.layers if isinstance(L, Conv)]
    if isinstance(node, str):
        found = [L for L in convs if L.name == node or node in L.nodes]
        if not found:
            raise MDLAError(f"WriteWeights: no convolution or linear layer {node!r}; layers: {[L.name for L in convs]}")
        layer = found[0]
    elif node == -1:
        fcs = [L for L in convs if L.kind == "fc"]
        if not fcs:
            raise MDLAError("WriteWeights(node=-1): the model has no linear layer; give the layer's index or name")
        layer = fcs[-1]
    elif isinstance(node, (int, np.integer)) and not isinstance(node, bool) and 0 <= node < len(convs):
        layer = convs[int(node)]
    else:
        raise MDLAError(f"WriteWeights: node must be -1, a layer name or an index 0..{len(convs) - 1} "
                        f"among the convolution/linear layers, got {node!r}")
    w = np.asarray(weights, dtype=np.float64)
    if w.size != layer.weight.size or (w.shape != layer.weight.shape and w.ndim != 2) \
            or (w.ndim == 2 and w.shape != (layer.weight.shape[0], layer.weight[0].size)):
        raise MDLAError(f"WriteWeights: layer {layer.name} has weights of shape {layer.weight.shape}"
                        + (f" (or {(layer.weight.shape[0], layer.weight[0].size)})" if layer.kind == "fc" else "")
                        + f", got {w.shape}")
    if bias is None:
        b = layer.bias.astype(np.float64)
    else:
        b = np.asarray(bias, dtype=np.float64)
        if b.shape != layer.bias.shape:
            raise MDLAError(f"WriteWeights: layer {layer.name} has a bias of shape {layer.bias.shape}, got {b.shape}")
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise MDLAError("WriteWeights: weights and bias must be finite")
    w = w.reshape(layer.weight.shape)
    in_frac = g.tensors[layer.input].frac
    wq, sat = float_to_fixed(w, layer.w_frac, bits=c.cfg.data_bits)
    if sat:
        raise MDLAError(f"WriteWeights: {sat} weight(s) of layer {layer.name} do not fit its format "
                        f"Q{c.cfg.data_bits - layer.w_frac}.{layer.w_frac} (max |w| "
                        f"{(2 ** (c.cfg.data_bits - 1) - 1) / 2 ** layer.w_frac:g}); recompile the model with them")
    acc = in_frac + layer.w_frac
    bq = np.rint(np.ldexp(b, acc)).astype(np.int64)
    lim = 1 << (c.cfg.bias_bits - 1)
    if np.any(bq >= lim) or np.any(bq < -lim):
        raise MDLAError(f"WriteWeights: the bias of layer {layer.name} does not fit its {c.cfg.bias_bits}-bit format "
                        f"({acc} fractional bits); recompile the model with it")
    old = (layer.weight, layer.bias, layer.wq, layer.bq)
    layer.weight, layer.bias, layer.wq, layer.bq = w.astype(np.float32), b.astype(np.float32), wq.astype(np.int16), bq
    try:
        new = compile_graph(g, c.cfg, base=c.memmap.base, parallel=c.parallel)
        if new.memmap.to_dict() != c.memmap.to_dict() or new.programs != c.programs:
            raise MDLAError("WriteWeights: the layer's code would change with these weights (a runtime limit); "
                            "recompile the model with them")
    except BaseException:
        layer.weight, layer.bias, layer.wq, layer.bq = old
        raise
    c.weights = new.weights
    a = c.memmap.weights_addr
    image = np.frombuffer(new.weights, dtype=np.uint8)
    for card in obj._cards:
        with card.lock:
            card.memory[a:a + image.size] = image


# ------------------------------------------------------------------------------------------------
# several programs on one object
# ------------------------------------------------------------------------------------------------

def relocate(compiled, base: int):
    """``compiled`` laid out again from ``base`` (from its graph section): same code but for addresses."""
    from compiler.driver import compile_graph
    from compiler.partition import Staged
    if isinstance(compiled, Staged) or compiled.graph is None or compiled.host is not None:
        raise MDLAError("Loadmulti: a program after the first must have been compiled to follow the others "
                        "(Compile(..., MDLA=other, outfile=...)), or be a plain DLA program with its graph "
                        "section so that it can be placed after them")
    new = compile_graph(compiled.graph, compiled.cfg, base=base, parallel=compiled.parallel)
    new.meta = dict(compiled.meta)
    new.output_order = list(compiled.output_order)
    return new
