"""Text assembly for the DLA: one instruction a line, fields named.

    LOAD buf=MAPS mv_mask=0b11 dram_addr=0x1000 buf_addr=0 n0=4 n1=1 s1=0 n2=1 s2=0 push_next=1

Missing fields are 0; ``#`` starts a comment. :func:`format_instr` prints every field of the
format in declaration order (token flags only when set), so ``assemble(disassemble(p)) == p``.
"""
from __future__ import annotations

from .isa import ENUMS, FORMATS, TOKEN_FLAGS, Instr, ISAError

_HEX_FIELDS = {"dram_addr"}
_BIN_FIELDS = {"mv_mask"}


def _fmt_value(name: str, v: int) -> str:
    if name in ENUMS:
        try:
            return ENUMS[name](v).name
        except ValueError:
            return str(v)
    if name in _HEX_FIELDS:
        return hex(v)
    if name in _BIN_FIELDS:
        return bin(v)
    return str(v)


def format_instr(i: Instr) -> str:
    parts = [i.op]
    parts += [f"{f.name}={_fmt_value(f.name, i.f[f.name])}" for f in i.fmt.fields]
    parts += [f"{t}=1" for t in TOKEN_FLAGS if i.f[t]]
    return " ".join(parts)


def disassemble(instrs, with_pc: bool = False) -> str:
    lines = []
    for pc, i in enumerate(instrs):
        lines.append(f"{pc:6d}: {format_instr(i)}" if with_pc else format_instr(i))
    return "\n".join(lines) + ("\n" if lines else "")


def _parse_value(name: str, text: str, lineno: int) -> int:
    if name in ENUMS:
        enum = ENUMS[name]
        if text.upper() in enum.__members__:
            return int(enum[text.upper()])
    try:
        return int(text, 0)
    except ValueError:
        raise ISAError(f"line {lineno}: bad value {text!r} for field {name}") from None


def assemble_line(line: str, lineno: int = 1) -> Instr | None:
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    head, *rest = text.split()
    if ":" in head and head.rstrip(":").isdigit():  # tolerate the 'pc:' prefix of a listing
        if not rest:
            return None
        head, *rest = rest
    op = head.upper()
    if op not in FORMATS:
        raise ISAError(f"line {lineno}: unknown instruction {head!r}; known: {sorted(FORMATS)}")
    fields = {}
    for tok in rest:
        if "=" not in tok:
            raise ISAError(f"line {lineno}: expected name=value, got {tok!r}")
        name, value = tok.split("=", 1)
        if name in fields:
            raise ISAError(f"line {lineno}: field {name} given twice")
        fields[name] = _parse_value(name, value, lineno)
    try:
        return Instr(op, **fields)
    except ISAError as e:
        raise ISAError(f"line {lineno}: {e}") from None


def assemble(text: str) -> list[Instr]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        i = assemble_line(line, n)
        if i is not None:
            out.append(i)
    return out
