"""The DLA instruction set, defined once.

Every instruction is one 256-bit word (32 bytes, little-endian). Bits 0-3 hold the opcode, bits 4-7
the four dependency-token flags, and the fields of each format follow, packed from bit 8 upwards in
the order they are declared here. The decoder in the RTL, the functional model, the assembler and
``docs/isa.md`` are all derived from :data:`FORMATS`.

The machine has three engines that run concurrently and in order, each fed by its own queue:
``load`` (main memory -> buffers), ``compute`` (MACs, max-pooling) and ``store`` (output buffer ->
main memory). They synchronise only through dependency tokens: ``push_next`` of an instruction
increments the token counter towards the next engine in the chain load -> compute -> store when the
instruction finishes; ``pop_prev`` of an instruction makes it wait until the counter from the
previous engine is positive and decrements it (likewise ``push_prev``/``pop_next`` backwards).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

from . import numerics
from .machine import MachineConfig

INSTR_BITS = 256
INSTR_BYTES = INSTR_BITS // 8
OPCODE_BITS = 4


class Buf(IntEnum):
    """On-chip buffer a LOAD writes."""
    MAPS = 0     #: maps buffer of each selected MV (input feature-map tiles)
    KERNEL = 1   #: kernel buffers of the VV units of each selected MV (weights and biases)
    RES = 2      #: residual buffer of each selected MV (second operand of a fused Add)


class Init(IntEnum):
    """How a CONV starts each accumulator."""
    ZERO = 0     #: from zero
    BIAS = 1     #: from the 32-bit bias of each lane, read from the kernel buffer at ``bias_addr``
    ACC = 2      #: from the value left in the accumulator (partial sums over input-channel chunks)


class Act(IntEnum):
    """Activation applied by the output stage after requantisation (:func:`arch.numerics.activate`)."""
    NONE = numerics.ACT_NONE
    RELU = numerics.ACT_RELU
    LEAKY = numerics.ACT_LEAKY       #: x < 0: sat16(round_shift(x * act_a, act_b))
    CLIP = numerics.ACT_CLIP         #: min(max(x, int16(act_a)), int16(act_b))
    SIGMOID = numerics.ACT_SIGMOID   #: Q4.11 in, Q0.15 out (rounded right by act_a), piecewise-linear table
    TANH = numerics.ACT_TANH         #: Q4.11 in, Q0.15 out (rounded right by act_a), piecewise-linear table
    HARDSWISH = numerics.ACT_HARDSWISH   #: x * clip(x + 3, 0, 6) / 6 in the format with act_a fractional bits
    SILU = numerics.ACT_SILU         #: x * sigmoid(x) (the SIGMOID table) in the format with act_a fractional bits
    MISH = numerics.ACT_MISH         #: x * tanh(softplus(x)) (its own gate table) in the format with act_a fractional bits


class Resid(IntEnum):
    """What the output stage does with the residual operand (residual buffer)."""
    NONE = numerics.RES_NONE
    ADD = numerics.RES_ADD           #: acc + (r << rshift) before requantising (a fused Add)
    MUL = numerics.RES_MUL           #: sat16(round_shift(act(...) * r, rshift)) (a fused Mul)


ENUMS = {"buf": Buf, "init": Init, "act": Act, "resid": Resid}

ENGINES = ("load", "compute", "store")
#: The neighbours of each engine in the token chain load -> compute -> store.
ENGINE_PREV = {"load": None, "compute": "load", "store": "compute"}
ENGINE_NEXT = {"load": "compute", "compute": "store", "store": None}
TOKEN_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")


@dataclass(frozen=True)
class Field:
    name: str
    bits: int
    doc: str


@dataclass(frozen=True)
class Format:
    mnemonic: str
    opcode: int
    engine: str          # 'load', 'compute', 'store' or 'control'
    fields: tuple[Field, ...]
    doc: str

    def layout(self) -> list[tuple[Field, int]]:
        """(field, lsb) pairs, header included."""
        out, pos = [], 0
        for f in HEADER + self.fields:
            out.append((f, pos))
            pos += f.bits
        assert pos <= INSTR_BITS, (self.mnemonic, pos)
        return out

    @cached_property
    def decode_plan(self) -> tuple[tuple[tuple[str, int, int], ...], int]:
        """((name, lsb, mask) of every field but the opcode, first reserved bit): what decode needs,
        computed once per format."""
        lay = self.layout()
        fields = tuple((f.name, lsb, (1 << f.bits) - 1) for f, lsb in lay if f.name != "opcode")
        return fields, lay[-1][1] + lay[-1][0].bits

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


HEADER = (
    Field("opcode", OPCODE_BITS, "operation"),
    Field("pop_prev", 1, "wait for and consume a token from the previous engine"),
    Field("pop_next", 1, "wait for and consume a token from the next engine"),
    Field("push_prev", 1, "give a token to the previous engine when finished"),
    Field("push_next", 1, "give a token to the next engine when finished"),
)

_DMA = (
    Field("dram_addr", 32, "main-memory byte address of the first word (word-aligned)"),
    Field("buf_addr", 16, "first buffer word"),
    Field("n0", 16, "words per contiguous run"),
    Field("n1", 12, "runs per block"),
    Field("s1", 24, "main-memory stride between runs, in words"),
    Field("n2", 12, "blocks"),
    Field("s2", 24, "main-memory stride between blocks, in words"),
)

FORMATS: dict[str, Format] = {}


def _fmt(mnemonic, opcode, engine, fields, doc):
    FORMATS[mnemonic] = Format(mnemonic, opcode, engine, tuple(fields), doc)


_fmt("LOAD", 1, "load", (
    Field("buf", 2, "target buffer: MAPS, KERNEL or RES"),
    Field("mv_mask", 8, "MV units written (bit m = MV m); the same data goes to each"),
    Field("nvv", 5, "KERNEL: number of VV units the words are dealt to in turn; MAPS, RES: 0"),
) + _DMA, """Copy n2 x n1 x n0 words from main memory into an on-chip buffer. Word (i2, i1, i0) is read at
`dram_addr + (i2*s2 + i1*s1 + i0) * word_bytes` and is the `w`-th word of the transfer,
`w = (i2*n1 + i1)*n0 + i0`. MAPS (RES): it lands at maps (residual) word `buf_addr + w` of every MV in `mv_mask`.
KERNEL: it lands at word `buf_addr + w // nvv` of the kernel buffer of VV `w % nvv` of every MV in
`mv_mask`, so weights stored as [k][vv][lane] are dealt to the VV units in one transfer.""")

_fmt("STORE", 2, "store", (
    Field("mv", 3, "MV unit whose output buffer is read"),
) + _DMA, """Copy n2 x n1 x n0 words from the output buffer of MV `mv` to main memory: the `w`-th word of the
transfer, read at output-buffer word `buf_addr + w`, is written at
`dram_addr + (i2*s2 + i1*s1 + i0) * word_bytes` with `w = (i2*n1 + i1)*n0 + i0`.""")

_fmt("CONV", 3, "compute", (
    Field("mv_mask", 8, "MV units that execute (in lockstep, each on its own buffers)"),
    Field("nvv", 5, "VV units used in each MV (1..vv_per_mv); output channels = nvv x lanes"),
    Field("maps_addr", 18, "maps-buffer element address of input pixel (0, 0), channel 0"),
    Field("in_w", 12, "pixels per row of the maps tile"),
    Field("cpitch", 12, "elements per pixel in the maps tile"),
    Field("cin", 12, "input channels reduced at each kernel position (<= cpitch)"),
    Field("kh", 8, "kernel height"),
    Field("kw", 8, "kernel width"),
    Field("sy", 4, "vertical stride"),
    Field("sx", 4, "horizontal stride"),
    Field("dy", 4, "vertical dilation"),
    Field("dx", 4, "horizontal dilation"),
    Field("oh", 10, "output rows in the tile"),
    Field("ow", 10, "output columns in the tile"),
    Field("kern_addr", 14, "kernel-buffer word of weight k = 0"),
    Field("bias_addr", 14, "kernel-buffer word of the bias (two words: low and high 16 bits)"),
    Field("acc_addr", 10, "first accumulator entry"),
    Field("out_addr", 14, "output-buffer word of output pixel 0"),
    Field("out_pitch", 8, "output-buffer words per output pixel (>= nvv)"),
    Field("init", 2, "accumulator start: ZERO, BIAS or ACC"),
    Field("write", 1, "1: requantise, activate and write the outputs; 0: keep the sums in the accumulators"),
    Field("shift", 6, "requantisation right shift"),
    Field("act", 4, "activation: NONE, RELU, LEAKY, CLIP, SIGMOID, TANH, HARDSWISH, SILU or MISH"),
    Field("act_a", 16, "LEAKY: negative-side multiplier (unsigned); CLIP: lower bound (int16); SIGMOID, TANH: "
                       "right shift of the table's Q0.15 result; HARDSWISH, SILU, MISH: fractional bits of x; "
                       "else 0"),
    Field("act_b", 16, "LEAKY: right shift after the multiplication; CLIP: upper bound (int16); else 0"),
    Field("resid", 2, "residual mode: NONE, ADD (a fused Add) or MUL (a fused Mul)"),
    Field("res_addr", 14, "residual-buffer word of output pixel 0"),
    Field("rshift", 6, "ADD: left shift aligning the residual with the accumulator; MUL: right shift of the product"),
), """Convolution trace (also fully connected layers, as a kernel covering the whole map). For every output
pixel p = (oy, ox) of the oh x ow tile (raster order) and every lane l of VV v < nvv, with
K = kh*kw*cin and k = (ky*kw + kx)*cin + ci:

    acc[v][acc_addr + p][l] = start + sum_k maps[maps_addr + ((oy*sy + ky*dy)*in_w + ox*sx + kx*dx)*cpitch + ci]
                                            * kernel[v][kern_addr + k][l]

where start is 0, the bias (bias[v][l] = lo + 65536*hi, read from kernel words bias_addr and
bias_addr+1) or the accumulator's value, and sums wrap at acc_bits. The maps element is broadcast to
all nvv x lanes MACs. With write = 1 the output stage then writes y to output-buffer word
`out_addr + p*out_pitch + v`, lane l, where, with R = res[res_addr + p*out_pitch + v][l]:

* resid = NONE: `y = act(sat16(round_shift(acc, shift)))`;
* resid = ADD: `y = act(sat16(round_shift(acc + (R << rshift), shift)))` (the sum wraps at acc_bits);
* resid = MUL: `y = sat16(round_shift(act(sat16(round_shift(acc, shift))) * R, rshift))`.

act (with its parameters act_a, act_b) is defined in `arch/numerics.py`: RELU max(x, 0); LEAKY x, or
for x < 0 sat16(round_shift(x * act_a, act_b)); CLIP min(max(x, lo), hi) with lo, hi = act_a, act_b as
int16; SIGMOID and TANH read x in Q4.11 and give Q0.15 from a 128-segment piecewise-linear table,
rounded right by act_a; HARDSWISH x * clip(x + 3, 0, 6) / 6, SILU x * sigmoid(x) (the same table) and
MISH x * tanh(softplus(x)) (a 256-segment gate table over -8 <= x < 8) with x and the result in the
format with act_a fractional bits. A value clipped by the first sat16
counts as a saturation only where the activation does not absorb it (`numerics.saturation_counts`).
A per-channel operand (a (C,1,1) gate) is broadcast over the pixels by loading it into the residual
buffer with a zero DMA stride.""")

_fmt("MAXPOOL", 4, "compute", (
    Field("mv_mask", 8, "MV units that execute"),
    Field("maps_addr", 16, "maps-buffer word of input pixel (0, 0)"),
    Field("in_w", 12, "pixels per row of the maps tile"),
    Field("ppitch", 8, "maps-buffer words per input pixel"),
    Field("nb", 8, "words (groups of lanes channels) pooled per pixel (<= ppitch)"),
    Field("kh", 8, "window height"),
    Field("kw", 8, "window width"),
    Field("sy", 4, "vertical stride"),
    Field("sx", 4, "horizontal stride"),
    Field("oh", 12, "output rows"),
    Field("ow", 12, "output columns"),
    Field("out_addr", 16, "output-buffer word of output pixel 0"),
    Field("out_pitch", 8, "output-buffer words per output pixel (>= nb)"),
), """Max-pooling on the vMAX unit of each MV, lane-parallel over channels: for every output pixel
p = (oy, ox) and word b < nb,
`out[out_addr + p*out_pitch + b] = max over (ky, kx) of maps[maps_addr + ((oy*sy+ky)*in_w + ox*sx+kx)*ppitch + b]`
(element-wise over the lanes).""")

_fmt("AVGPOOL", 6, "compute", FORMATS["MAXPOOL"].fields + (
    Field("mul", 16, "multiplier approximating 2**shift / (kh*kw)"),
    Field("shift", 6, "right shift after the multiplication"),
), """Average-pooling on the pooling unit of each MV, lane-parallel over channels: like MAXPOOL, but each
output element is `sat16(round_shift(s * mul, shift))` where s is the exact sum of the window's
elements (padding included as it stands in the buffer).""")

_fmt("SYNC", 5, "compute", (), """No operation on the compute engine: it takes one cycle and exists to pass dependency tokens
between the store and load engines (for example between one layer's stores and the next layer's loads).""")

_fmt("BARRIER", 7, "compute", (
    Field("mask", 8, "clusters that meet here (bit c = cluster c; includes this cluster)"),
), """Card-level barrier on the compute engine: the k-th BARRIER of each cluster in `mask` meets the
k-th BARRIER of the others, and all of them end in the same cycle, one after the last of them
starts. With the dependency tokens around it, this orders one cluster's stores before another
cluster's loads when clusters split the work of one image (`clustersbatchmode`).""")

_fmt("END", 15, "control", (), """End of the program: instruction fetch stops. The cluster is done when every engine has finished.""")

BY_OPCODE = {f.opcode: f for f in FORMATS.values()}


class ISAError(ValueError):
    """An instruction that cannot be encoded, decoded or executed on the given machine."""


class Instr:
    """One instruction: a mnemonic and its field values (missing fields are 0).

    The fields are also plain instance attributes (``i.oh``): the functional model reads them
    tens of thousands of times per network, and a ``__getattr__`` lookup would cost it ~5 %."""
    __slots__ = ("op", "f", "__dict__")

    def __init__(self, op: str, **fields):
        fmt = FORMATS.get(op)
        if fmt is None:
            raise ISAError(f"unknown instruction {op!r}; known: {sorted(FORMATS)}")
        allowed = set(fmt.field_names) | set(TOKEN_FLAGS)
        bad = sorted(set(fields) - allowed)
        if bad:
            raise ISAError(f"{op} has no field(s) {bad}; its fields: {list(TOKEN_FLAGS) + list(fmt.field_names)}")
        vals = {n: 0 for n in TOKEN_FLAGS}
        vals.update({f.name: 0 for f in fmt.fields})
        for k, v in fields.items():
            vals[k] = int(v)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "f", vals)
        self.__dict__.update(vals)

    @classmethod
    def _decoded(cls, op: str, vals: dict[str, int]) -> "Instr":
        """An instruction from :func:`decode`, whose ``vals`` hold exactly the format's fields and
        the token flags: the checks of ``__init__`` cannot fail, so they are skipped."""
        self = object.__new__(cls)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "f", vals)
        self.__dict__.update(vals)
        return self

    def __getattr__(self, name):
        try:
            return self.f[name]
        except KeyError:
            raise AttributeError(f"{self.op} has no field {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Instr is immutable; use .replace()")

    def __reduce__(self):
        # pickle (Ray tasks and actors) rebuilds it from its fields: the default protocol
        # would call __getattr__ on an instance without ``f`` and recurse
        return (Instr._decoded, (self.op, dict(self.f)))

    def replace(self, **fields) -> "Instr":
        d = dict(self.f)
        d.update(fields)
        return Instr(self.op, **d)

    @property
    def fmt(self) -> Format:
        return FORMATS[self.op]

    @property
    def engine(self) -> str:
        return FORMATS[self.op].engine

    def __eq__(self, other):
        return isinstance(other, Instr) and self.op == other.op and self.f == other.f

    def __hash__(self):
        return hash((self.op, tuple(sorted(self.f.items()))))

    def __repr__(self):
        from .asm import format_instr
        return f"Instr<{format_instr(self)}>"


def encode(instr: Instr) -> bytes:
    """256-bit little-endian machine word of one instruction."""
    fmt = instr.fmt
    word = 0
    for fld, lsb in fmt.layout():
        v = fmt.opcode if fld.name == "opcode" else instr.f[fld.name]
        if v < 0 or v >= (1 << fld.bits):
            raise ISAError(f"{instr.op}.{fld.name} = {v} does not fit in {fld.bits} bits")
        word |= v << lsb
    return word.to_bytes(INSTR_BYTES, "little")


def decode(data: bytes) -> Instr:
    if len(data) != INSTR_BYTES:
        raise ISAError(f"an instruction is {INSTR_BYTES} bytes, got {len(data)}")
    word = int.from_bytes(data, "little")
    opcode = word & ((1 << OPCODE_BITS) - 1)
    fmt = BY_OPCODE.get(opcode)
    if fmt is None:
        raise ISAError(f"illegal opcode {opcode}")
    fields, end = fmt.decode_plan
    if word >> end:
        raise ISAError(f"{fmt.mnemonic}: reserved bits {end}..{INSTR_BITS - 1} are not zero")
    return Instr._decoded(fmt.mnemonic, {name: (word >> lsb) & mask for name, lsb, mask in fields})


def encode_program(instrs) -> bytes:
    return b"".join(encode(i) for i in instrs)


def decode_program(data: bytes) -> list[Instr]:
    if len(data) % INSTR_BYTES:
        raise ISAError(f"program length {len(data)} is not a multiple of {INSTR_BYTES} bytes")
    out = []
    for pc in range(len(data) // INSTR_BYTES):
        try:
            out.append(decode(data[pc * INSTR_BYTES:(pc + 1) * INSTR_BYTES]))
        except ISAError as e:
            raise ISAError(f"instruction {pc}: {e}") from None
    return out


# --------------------------------------------------------------------------------------------
# Static checks and access extents (used by the functional model, the hazard checker, the RTL tests)
# --------------------------------------------------------------------------------------------

def dma_words(i: Instr) -> int:
    return i.n0 * i.n1 * i.n2


def conv_reduction(i: Instr) -> int:
    return i.kh * i.kw * i.cin


def maps_extent_conv(i: Instr) -> int:
    """Elements of the maps buffer a CONV reads, from maps_addr (one past the last element read)."""
    last_row = (i.oh - 1) * i.sy + (i.kh - 1) * i.dy
    last_col = (i.ow - 1) * i.sx + (i.kw - 1) * i.dx
    return (last_row * i.in_w + last_col) * i.cpitch + i.cin


def maps_extent_pool(i: Instr) -> int:
    """Words of the maps buffer a MAXPOOL reads, from maps_addr."""
    last_row = (i.oh - 1) * i.sy + i.kh - 1
    last_col = (i.ow - 1) * i.sx + i.kw - 1
    return (last_row * i.in_w + last_col) * i.ppitch + i.nb


#: The fields that address a machine's buffers or select its units, and the size each must reach on a
#: configuration: (format, field, kind, what, size). kind 'address': the field holds 0 .. size - 1,
#: so size <= 2**bits; 'count': 1 .. size, so size < 2**bits; 'index': 0 .. size - 1; 'mask': one bit
#: per unit, so size <= bits. :func:`check_address_fields` checks every configuration against them.
ADDRESS_FIELDS = (
    ("LOAD", "buf_addr", "address", "maps_words", lambda c: c.maps_words),
    ("LOAD", "buf_addr", "address", "kernel_words", lambda c: c.kernel_words),
    ("LOAD", "buf_addr", "address", "res_words", lambda c: c.res_words),
    ("LOAD", "mv_mask", "mask", "mv_per_cluster", lambda c: c.mv_per_cluster),
    ("LOAD", "nvv", "count", "vv_per_mv", lambda c: c.vv_per_mv),
    ("STORE", "buf_addr", "address", "out_words", lambda c: c.out_words),
    ("STORE", "mv", "index", "mv_per_cluster", lambda c: c.mv_per_cluster),
    ("CONV", "mv_mask", "mask", "mv_per_cluster", lambda c: c.mv_per_cluster),
    ("CONV", "nvv", "count", "vv_per_mv", lambda c: c.vv_per_mv),
    ("CONV", "maps_addr", "address", "maps_words * lanes (elements)", lambda c: c.maps_words * c.lanes),
    ("CONV", "kern_addr", "address", "kernel_words", lambda c: c.kernel_words),
    ("CONV", "bias_addr", "address", "kernel_words", lambda c: c.kernel_words),
    ("CONV", "acc_addr", "address", "acc_entries", lambda c: c.acc_entries),
    ("CONV", "out_addr", "address", "out_words", lambda c: c.out_words),
    ("CONV", "res_addr", "address", "res_words", lambda c: c.res_words),
    ("MAXPOOL", "mv_mask", "mask", "mv_per_cluster", lambda c: c.mv_per_cluster),
    ("MAXPOOL", "maps_addr", "address", "maps_words", lambda c: c.maps_words),
    ("MAXPOOL", "out_addr", "address", "out_words", lambda c: c.out_words),
    ("AVGPOOL", "maps_addr", "address", "maps_words", lambda c: c.maps_words),
    ("AVGPOOL", "out_addr", "address", "out_words", lambda c: c.out_words),
    ("BARRIER", "mask", "mask", "clusters_per_card", lambda c: c.clusters_per_card),
)


def field_bits(fmt: str, name: str) -> int:
    """Width of field ``name`` of format ``fmt`` (header fields included)."""
    for f, _ in FORMATS[fmt].layout():
        if f.name == name:
            return f.bits
    raise KeyError(f"{fmt} has no field {name!r}")


def check_address_fields(cfg: MachineConfig) -> None:
    """Raise ValueError if a buffer or a unit count of ``cfg`` is beyond what the ISA's fields can
    address (:data:`ADDRESS_FIELDS`): such a machine could not be programmed. Called when a
    :class:`~arch.machine.MachineConfig` is constructed."""
    bad = []
    for fmt, name, kind, what, size_of in ADDRESS_FIELDS:
        bits, size = field_bits(fmt, name), size_of(cfg)
        reach = {"address": 1 << bits, "index": 1 << bits, "count": (1 << bits) - 1, "mask": bits}[kind]
        if size > reach:
            bad.append(f"{what} = {size} exceeds the {reach} that {fmt}.{name} ({bits} bits) can "
                       f"{'select' if kind == 'mask' else 'address'}")
    if bad:
        raise ValueError(f"machine config {cfg.name!r} does not fit the instruction set: " + "; ".join(bad))


def validate(i: Instr, cfg: MachineConfig) -> None:
    """Raise ISAError naming the field if ``i`` cannot run on ``cfg``."""
    eng = i.engine
    if eng == "control" or (eng == "load" and (i.pop_prev or i.push_prev)) or \
            (eng == "store" and (i.pop_next or i.push_next)):
        for t in TOKEN_FLAGS:
            if i.f[t] and (eng == "control" or (t.endswith("prev") and ENGINE_PREV[eng] is None)
                           or (t.endswith("next") and ENGINE_NEXT[eng] is None)):
                raise ISAError(f"{i.op}: {t} names an engine the {eng} engine has no link to")

    def need(cond, msg):
        if not cond:
            raise ISAError(f"{i.op}: {msg}")

    mvs = cfg.mv_per_cluster
    if i.op in ("LOAD", "STORE"):
        need(i.n0 >= 1 and i.n1 >= 1 and i.n2 >= 1, "n0, n1 and n2 must be at least 1")
        need(i.dram_addr % cfg.beat_bytes == 0, f"dram_addr {i.dram_addr:#x} is not {cfg.beat_bytes}-byte aligned")
        last = i.dram_addr + ((i.n2 - 1) * i.s2 + (i.n1 - 1) * i.s1 + i.n0) * cfg.beat_bytes
        need(last <= cfg.mem_bytes, f"main-memory access ends at {last:#x}, beyond the {cfg.mem_bytes:#x}-byte memory")
    if i.op == "LOAD":
        need(i.buf in (Buf.MAPS, Buf.KERNEL, Buf.RES), f"buf {i.buf} is not MAPS, KERNEL or RES")
        need(0 < i.mv_mask < (1 << mvs), f"mv_mask {i.mv_mask:#b} must select some of the {mvs} MV units")
        words = dma_words(i)
        if i.buf in (Buf.MAPS, Buf.RES):
            size, what = (cfg.maps_words, "maps") if i.buf == Buf.MAPS else (cfg.res_words, "residual")
            need(i.nvv == 0, f"nvv must be 0 for a {Buf(i.buf).name} load")
            need(i.buf_addr + words <= size,
                 f"writes {what} words {i.buf_addr}..{i.buf_addr + words - 1}, beyond {size}")
        else:
            need(1 <= i.nvv <= cfg.vv_per_mv, f"nvv {i.nvv} not in 1..{cfg.vv_per_mv}")
            need(words % i.nvv == 0, f"{words} words cannot be dealt evenly to {i.nvv} VV units")
            need(i.buf_addr + words // i.nvv <= cfg.kernel_words,
                 f"writes kernel words {i.buf_addr}..{i.buf_addr + words // i.nvv - 1}, beyond {cfg.kernel_words}")
    elif i.op == "STORE":
        need(i.mv < mvs, f"mv {i.mv} not in 0..{mvs - 1}")
        need(i.buf_addr + dma_words(i) <= cfg.out_words,
             f"reads output words {i.buf_addr}..{i.buf_addr + dma_words(i) - 1}, beyond {cfg.out_words}")
    elif i.op == "CONV":
        need(0 < i.mv_mask < (1 << mvs), f"mv_mask {i.mv_mask:#b} must select some of the {mvs} MV units")
        need(1 <= i.nvv <= cfg.vv_per_mv, f"nvv {i.nvv} not in 1..{cfg.vv_per_mv}")
        for n in ("in_w", "cpitch", "cin", "kh", "kw", "sy", "sx", "dy", "dx", "oh", "ow"):
            need(i.f[n] >= 1, f"{n} must be at least 1")
        need(i.cin <= i.cpitch, f"cin {i.cin} exceeds cpitch {i.cpitch}")
        need((i.ow - 1) * i.sx + (i.kw - 1) * i.dx < i.in_w, "the window runs past the end of the tile row (in_w)")
        need(i.init in (Init.ZERO, Init.BIAS, Init.ACC), f"init {i.init} is not ZERO, BIAS or ACC")
        need(i.act in tuple(Act), f"act {i.act} is not one of {', '.join(a.name for a in Act)}")
        if i.act == Act.LEAKY:
            need(i.act_b <= numerics.LEAKY_MAX_SHIFT, f"LEAKY shift act_b {i.act_b} exceeds {numerics.LEAKY_MAX_SHIFT}")
        elif i.act == Act.CLIP:
            need(numerics.s16(i.act_a) <= numerics.s16(i.act_b),
                 f"CLIP lower bound {numerics.s16(i.act_a)} exceeds the upper bound {numerics.s16(i.act_b)}")
        elif i.act in (Act.SIGMOID, Act.TANH, Act.HARDSWISH, Act.SILU, Act.MISH):
            need(i.act_a <= numerics.ACT_MAX_FRAC and i.act_b == 0,
                 f"act {Act(i.act).name} takes act_a in 0..{numerics.ACT_MAX_FRAC} and act_b 0, "
                 f"got {i.act_a} and {i.act_b}")
        else:
            need(i.act_a == 0 and i.act_b == 0, f"act_a and act_b must be 0 for act {Act(i.act).name}")
        need(i.resid in tuple(Resid), f"resid {i.resid} is not NONE, ADD or MUL")
        need(conv_reduction(i) <= cfg.max_reduction,
             f"reduction of {conv_reduction(i)} terms exceeds {cfg.max_reduction}, the accumulator's safe length")
        end = i.maps_addr + maps_extent_conv(i)
        need(end <= cfg.maps_words * cfg.lanes, f"reads maps elements up to {end - 1}, beyond {cfg.maps_words * cfg.lanes}")
        need(i.kern_addr + conv_reduction(i) <= cfg.kernel_words,
             f"reads kernel words {i.kern_addr}..{i.kern_addr + conv_reduction(i) - 1}, beyond {cfg.kernel_words}")
        if i.init == Init.BIAS:
            need(i.bias_addr + 2 <= cfg.kernel_words, f"bias words {i.bias_addr}..{i.bias_addr + 1} beyond {cfg.kernel_words}")
        need(i.acc_addr + i.oh * i.ow <= cfg.acc_entries,
             f"accumulators {i.acc_addr}..{i.acc_addr + i.oh * i.ow - 1} beyond {cfg.acc_entries}")
        if i.write:
            need(i.out_pitch >= i.nvv, f"out_pitch {i.out_pitch} is smaller than nvv {i.nvv}")
            end = i.out_addr + (i.oh * i.ow - 1) * i.out_pitch + i.nvv
            need(end <= cfg.out_words, f"writes output words up to {end - 1}, beyond {cfg.out_words}")
            if i.resid:
                end = i.res_addr + (i.oh * i.ow - 1) * i.out_pitch + i.nvv
                need(end <= cfg.res_words, f"reads residual words up to {end - 1}, beyond {cfg.res_words}")
        need(not i.resid or i.write, "resid needs write = 1 (the residual is added by the output stage)")
    elif i.op == "BARRIER":
        need(0 < i.mask < (1 << cfg.clusters_per_card),
             f"mask {i.mask:#b} must select some of the {cfg.clusters_per_card} clusters")
    elif i.op in ("MAXPOOL", "AVGPOOL"):
        need(0 < i.mv_mask < (1 << mvs), f"mv_mask {i.mv_mask:#b} must select some of the {mvs} MV units")
        for n in ("in_w", "ppitch", "nb", "kh", "kw", "sy", "sx", "oh", "ow"):
            need(i.f[n] >= 1, f"{n} must be at least 1")
        need(i.nb <= i.ppitch, f"nb {i.nb} exceeds ppitch {i.ppitch}")
        need(i.out_pitch >= i.nb, f"out_pitch {i.out_pitch} is smaller than nb {i.nb}")
        need((i.ow - 1) * i.sx + i.kw - 1 < i.in_w, "the window runs past the end of the tile row (in_w)")
        end = i.maps_addr + maps_extent_pool(i)
        need(end <= cfg.maps_words, f"reads maps words up to {end - 1}, beyond {cfg.maps_words}")
        end = i.out_addr + (i.oh * i.ow - 1) * i.out_pitch + i.nb
        need(end <= cfg.out_words, f"writes output words up to {end - 1}, beyond {cfg.out_words}")


# configurations built while this module was loading (arch.machine's own, when arch.isa is imported
# first) could not be checked then: they are checked here
from . import machine as _machine  # noqa: E402

for _cfg in getattr(_machine, "CONFIGS", {}).values():
    check_address_fields(_cfg)
