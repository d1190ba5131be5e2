"""The runtime: the MDLA API (``runtime.mdla``), its flags, the executors that run a compiled
program (functional model now; Amaranth and Verilog simulations later) and the ``mdla`` CLI."""
