"""The ISA definition: encode/decode and text round trips, validation, docs in sync."""
import pytest
from hypothesis import given, settings, strategies as st

from arch import docgen
from arch.asm import assemble, disassemble, format_instr
from arch.isa import (FORMATS, HEADER, INSTR_BYTES, TOKEN_FLAGS, Instr, ISAError, decode, decode_program,
                      encode, encode_program, validate)
from arch.machine import REFERENCE, SMALL


@st.composite
def instructions(draw):
    fmt = draw(st.sampled_from(list(FORMATS.values())))
    fields = {f.name: draw(st.integers(0, (1 << f.bits) - 1)) for f in fmt.fields}
    for t in TOKEN_FLAGS:
        fields[t] = draw(st.integers(0, 1))
    return Instr(fmt.mnemonic, **fields)


@settings(max_examples=500)
@given(instructions())
def test_binary_round_trip(i):
    word = encode(i)
    assert len(word) == INSTR_BYTES
    assert decode(word) == i


@settings(max_examples=300)
@given(st.lists(instructions(), min_size=1, max_size=20))
def test_text_round_trip(prog):
    text = disassemble(prog)
    assert assemble(text) == prog
    assert decode_program(encode_program(prog)) == prog
    assert disassemble(assemble(text)) == text


def test_formats_fit_and_opcodes_unique():
    assert len({f.opcode for f in FORMATS.values()}) == len(FORMATS)
    assert all(f.opcode != 0 for f in FORMATS.values())
    for f in FORMATS.values():
        assert sum(x.bits for x in HEADER + f.fields) <= INSTR_BYTES * 8


def test_field_overflow_rejected():
    with pytest.raises(ISAError, match="nvv = 32 does not fit in 5 bits"):
        encode(Instr("CONV", nvv=32))


def test_decode_rejects_illegal_opcode_and_reserved_bits():
    with pytest.raises(ISAError, match="illegal opcode 0"):
        decode(bytes(INSTR_BYTES))
    word = bytearray(encode(Instr("SYNC")))
    word[-1] = 0x80
    with pytest.raises(ISAError, match="reserved bits"):
        decode(bytes(word))
    with pytest.raises(ISAError, match="multiple of 32"):
        decode_program(b"\x05" * 33)


def test_assembler_errors_name_the_line():
    with pytest.raises(ISAError, match="line 2: unknown instruction 'FOO'"):
        assemble("SYNC\nFOO a=1")
    with pytest.raises(ISAError, match="line 1: .*no field"):
        assemble("SYNC bogus=1")
    with pytest.raises(ISAError, match="bad value"):
        assemble("LOAD buf=NOPE")
    assert assemble("# comment only\n\n  SYNC push_prev=1  # trailing") == [Instr("SYNC", push_prev=1)]
    assert format_instr(Instr("LOAD", buf=1, mv_mask=3)).startswith("LOAD buf=KERNEL mv_mask=0b11")


def test_validate_against_config():
    conv = Instr("CONV", mv_mask=1, nvv=2, in_w=3, cpitch=4, cin=4, kh=3, kw=3, sy=1, sx=1, dy=1, dx=1,
                 oh=1, ow=1, init=1, write=1, out_pitch=2)
    validate(conv, SMALL)
    with pytest.raises(ISAError, match="nvv 4 not in 1..2"):
        validate(conv.replace(nvv=4, out_pitch=4), SMALL)
    validate(conv.replace(nvv=4, out_pitch=4), REFERENCE)
    with pytest.raises(ISAError, match="mv_mask"):
        validate(conv.replace(mv_mask=0b100), SMALL)
    with pytest.raises(ISAError, match="window runs past"):
        validate(conv.replace(in_w=2), SMALL)
    with pytest.raises(ISAError, match="pop_prev"):
        validate(Instr("LOAD", buf=0, mv_mask=1, n0=1, n1=1, n2=1, pop_prev=1), SMALL)
    with pytest.raises(ISAError, match="aligned"):
        validate(Instr("LOAD", buf=0, mv_mask=1, n0=1, n1=1, n2=1, dram_addr=3), SMALL)
    with pytest.raises(ISAError, match="beyond"):
        validate(Instr("LOAD", buf=0, mv_mask=1, n0=SMALL.maps_words + 1, n1=1, n2=1), SMALL)


def test_docs_are_generated_from_the_definition():
    assert docgen.main(["--check"]) == 0, "docs/ drifted from arch/: run python -m arch.docgen"


def test_instr_pickles():
    """Programs travel to Ray tasks and actors: an Instr survives pickle unchanged."""
    import pickle

    from arch.isa import FORMATS, Instr
    for op in FORMATS:
        i = Instr(op)
        j = pickle.loads(pickle.dumps(i))
        assert j == i and j.f == i.f and j.__dict__ == i.__dict__
