"""Small hand-written programs for the timing corner cases, shared by the Amaranth differential
tests and the cocotb card tests (some of them race on purpose: compare cycles and counters)."""

LOAD4 = "LOAD buf=MAPS mv_mask=1 dram_addr=0x4000 n0=4 n1=1 n2=1"
CONV1 = ("CONV mv_mask=1 nvv=1 in_w=2 cpitch=4 cin=4 kh=1 kw=2 sy=1 sx=1 dy=1 dx=1 oh=1 ow=1 "
         "out_pitch=1 write=1")


def tie_prog(c: int) -> str:
    """Cluster c's program of the equal-start-ties case: its STORE and LOAD request the port in the
    same cycle as the other cluster's."""
    return f"""
    {CONV1} push_next=1 push_prev=1
    STORE mv=0 dram_addr={0x8000 + 0x100 * c} n0=3 n1=1 n2=1 pop_prev=1
    LOAD buf=MAPS mv_mask=2 dram_addr=0x4000 n0=2 n1=1 n2=1 pop_next=1
    END"""
