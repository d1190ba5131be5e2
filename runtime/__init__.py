"""The runtime: the MDLA API (``runtime.mdla``), its flags, the executors that run a compiled
program (the functional model, the Amaranth simulation, the exported Verilog under cocotb) and the
``mdla`` CLI."""
