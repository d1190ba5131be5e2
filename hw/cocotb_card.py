"""cocotb test that runs one job on an exported card (``hw/export.py``) in Icarus or Verilator.

Used by :func:`hw.verilog_run.run_verilog` (the ``icarus`` and ``verilator`` executors) and by the
card-level tests in ``tests/cocotb``. The job is a JSON file named by ``$MDLA_JOB``::

    {"enable": int, "prog_addr": int (packed word addresses), "max_cycles": int,
     "clusters": [int, ...], "stats": [counter names], "result": "path of the result JSON",
     "period_ps": clock period (the machine's clock: 4000 at 250 MHz, so waveforms show real time)}

The memory image is loaded by the Verilog itself (``+MEMIN=`` plusarg, ``$readmemh``) and written
back with ``$writememh`` (``+MEMOUT=``) when this test raises ``dump``. Nothing runs in Python per
cycle: the test waits for ``done`` (or ``error``) with a timer of many cycles as a watchdog and
reports the progress (``progress: <cycles> ...`` lines, read by :func:`hw.verilog_run.run_verilog`)
every ``$MDLA_PROGRESS_SECONDS`` (default 0.5 s).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, First, RisingEdge, Timer

PROGRESS_SECONDS = float(os.environ.get("MDLA_PROGRESS_SECONDS", 0.5))


def _int(handle) -> int:
    return int(handle.value)


async def run_job(dut, job: dict) -> dict:
    """Reset the card, start the clusters of the job and run until done/error/max_cycles."""
    dut.rst.value = 1
    dut.dump.value = 0
    dut.enable.value = job["enable"]
    dut.prog_addr.value = job["prog_addr"]
    period = int(job.get("period_ps", 4000))
    Clock(dut.clk, period, unit="ps").start()
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0                     # the next rising edge ends cycle 0
    max_cycles = int(job["max_cycles"])
    t0 = time.perf_counter()
    last_report = t0
    chunk = 1000                          # cycles per watchdog timer, adapted to the simulator's speed
    while True:
        if _int(dut.done) or _int(dut.error):
            break
        now = _int(dut.now)
        if now >= max_cycles:
            break
        t_chunk = time.perf_counter()
        await First(RisingEdge(dut.done), RisingEdge(dut.error),
                    Timer(period * min(chunk, max_cycles - now + 1), unit="ps"))
        dt = time.perf_counter() - t_chunk
        cycles = _int(dut.now) - now
        if cycles > 0 and dt > 0:          # aim at about a progress period per chunk
            aim = max(PROGRESS_SECONDS, 0.1)
            chunk = max(100, min(1_000_000, int(chunk * min(4.0, max(0.25, aim / dt)))))
        tnow = time.perf_counter()
        if tnow - last_report >= PROGRESS_SECONDS:
            done_cycles = _int(dut.now)
            dut._log.info("progress: %d cycles in %.1f s = %.0f cycles/s", done_cycles, tnow - t0,
                          done_cycles / (tnow - t0))
            last_report = tnow
    wall = time.perf_counter() - t0
    res = {
        "now": _int(dut.now), "done": _int(dut.done), "error": _int(dut.error), "seconds": wall,
        "stats": {str(c): {s: _int(getattr(dut, f"stat_{c}_{s}")) for s in job["stats"]} for c in job["clusters"]},
    }
    dut._log.info("finished: %d cycles in %.2f s = %.0f cycles/s (done=%d error=%d)", res["now"], wall,
                  res["now"] / max(wall, 1e-9), res["done"], res["error"])
    # write the memory back ($writememh on the rising edge of dump)
    await FallingEdge(dut.clk)
    dut.dump.value = 1
    await RisingEdge(dut.clk)
    await Timer(1, unit="ns")
    return res


@cocotb.test()
async def run_card(dut):
    """Run the job of $MDLA_JOB and write its result JSON."""
    job = json.loads(Path(os.environ["MDLA_JOB"]).read_text())
    res = await run_job(dut, job)
    Path(job["result"]).write_text(json.dumps(res))
