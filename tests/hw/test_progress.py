"""Progress of long RTL runs (hw/progress.py): the expected total comes from the functional model's
schedule and equals the run's cycles; the bar reports cycles, the total and cycles/s; an Amaranth
waveform has the machine's real clock period."""
import re

import numpy as np

from arch.asm import assemble
from arch.isa import encode_program
from arch.machine import SMALL
from hw.progress import CycleProgress, expected_cycles
from hw.run import clock_period, run_rtl
from sim.card import run_card
from tests.hw.test_differential import _kernels, compiled_image
from tests.hw.timing_programs import CONV1, LOAD4


def _two_cluster_image():
    progs = {0: f"{CONV1}\n{LOAD4} push_next=1\nBARRIER mask=0b11 pop_prev=1\nEND",
             1: f"{LOAD4}\nBARRIER mask=0b11\n{CONV1}\nEND"}
    mem = np.zeros(0xA000, dtype=np.uint8)
    mem[0x4000:0x8000] = np.random.default_rng(1).integers(0, 256, 0x4000, dtype=np.uint8)
    addrs = {}
    for c, p in progs.items():
        code = encode_program(assemble(p))
        mem[0x1000 * c:0x1000 * c + len(code)] = np.frombuffer(code, dtype=np.uint8)
        addrs[c] = 0x1000 * c
    return mem, addrs


def test_expected_cycles_is_the_run_length():
    for mem, programs in (compiled_image(_kernels()["conv_3x3"](), SMALL), _two_cluster_image()):
        before = mem.copy()
        total = expected_cycles(SMALL, mem, programs)
        assert np.array_equal(mem, before)                  # the schedule alone: nothing written
        assert total == run_card(SMALL, mem.copy(), programs, check_hazards=False).cycles
        assert total == run_rtl(SMALL, mem.copy(), programs, progress=False).cycles


def test_progress_bar_shows_cycles_total_and_rate(capsys):
    with CycleProgress(5000, "test", enabled=True, delay=0) as bar:
        for c in (1000, 2500, 2400, 5000):                  # never backwards
            bar.update_to(c)
        assert bar.done == 5000
    err = capsys.readouterr().err
    assert "5.00k/5.00k" in err and "cycles/s" in err and "test" in err


def test_progress_bar_disabled_prints_nothing(capsys):
    with CycleProgress(100, "quiet", enabled=False) as bar:
        bar.update_to(100)
    assert capsys.readouterr().err == ""


def test_vcd_has_the_real_clock_period(tmp_path):
    """The waveform's clock toggles every half period of the machine's clock (2 ns at 250 MHz)."""
    assert SMALL.clock_mhz == 250.0
    assert int(clock_period(SMALL) * 1e15) == 4_000_000      # Amaranth's truncation gives 4 ns exactly
    mem, programs = compiled_image(_kernels()["fc"](), SMALL)
    path = tmp_path / "run.vcd"
    run_rtl(SMALL, mem, programs, vcd=str(path))
    text = path.read_text()
    assert "$timescale 1 fs $end" in text
    stamps = [int(t) for t in re.findall(r"^#(\d+)$", text, re.M)[:6]]
    assert stamps == [0, 2_000_000, 4_000_000, 6_000_000, 8_000_000, 10_000_000]


def test_no_total_when_the_model_refuses():
    """A program the functional model reports as a deadlock gets a bar without a total; the RTL run
    itself decides (here its watchdog reports the deadlock)."""
    from hw.progress import expected_total
    from sim.card import SimError
    import pytest
    mem = np.zeros(0x2000, dtype=np.uint8)
    code = encode_program(assemble(f"{CONV1} pop_prev=1\nEND"))     # pops a token nobody pushes
    mem[:len(code)] = np.frombuffer(code, dtype=np.uint8)
    assert expected_total(SMALL, mem, {0: 0}) is None
    with pytest.raises(SimError, match="deadlock"):
        run_rtl(SMALL, mem, {0: 0}, max_cycles=200)
