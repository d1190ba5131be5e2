"""Instruction layouts for the RTL, generated from :data:`arch.isa.FORMATS`.

Each format becomes an Amaranth :class:`~amaranth.lib.data.FlexibleLayout` of ``INSTR_BITS`` bits whose
fields sit at the bit positions :meth:`arch.isa.Format.layout` gives, so the decoder never repeats a
bit position by hand: ``data.View(LAYOUTS["CONV"], word).kh`` is the ``kh`` field of a raw 256-bit
instruction word.
"""
from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data

from arch.isa import FORMATS, HEADER, INSTR_BITS, Format, field_bits

__all__ = ["format_layout", "LAYOUTS", "HEADER_LAYOUT", "OPCODES", "ENGINE_OPS", "RTL_OPS", "field_shape"]


def format_layout(fmt: Format) -> data.FlexibleLayout:
    """The 256-bit layout of one instruction format (header included)."""
    return data.FlexibleLayout(INSTR_BITS, {f.name: data.Field(unsigned(f.bits), lsb)
                                            for f, lsb in fmt.layout()})


#: mnemonic -> layout of the whole instruction word
LAYOUTS: dict[str, data.FlexibleLayout] = {m: format_layout(f) for m, f in FORMATS.items()}

#: the header (opcode and token flags), common to all formats
HEADER_LAYOUT = data.FlexibleLayout(INSTR_BITS, {
    f.name: data.Field(unsigned(f.bits), lsb)
    for f, lsb in FORMATS["END"].layout() if f in HEADER})

#: mnemonic -> opcode
OPCODES: dict[str, int] = {m: f.opcode for m, f in FORMATS.items()}

#: engine -> mnemonics it executes ('control' holds END)
ENGINE_OPS: dict[str, tuple[str, ...]] = {}
for _m, _f in FORMATS.items():
    ENGINE_OPS.setdefault(_f.engine, ())
    ENGINE_OPS[_f.engine] += (_m,)

#: instructions the RTL executes (the runners refuse the others before a run)
RTL_OPS = ("LOAD", "STORE", "CONV", "MAXPOOL", "AVGPOOL", "SYNC", "BARRIER", "END")


def field_shape(*fields: tuple[str, str]):
    """The unsigned shape of an instruction field, ``(format, name)``; given several (a port that
    carries either), wide enough for each."""
    return unsigned(max(field_bits(fmt, name) for fmt, name in fields))
