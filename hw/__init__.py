"""The DLA in Amaranth HDL: VV, MV, cluster and card RTL generated from :mod:`arch`.

Every size comes from an :class:`arch.machine.MachineConfig`, the instruction decoder from
:data:`arch.isa.FORMATS`, and the cycle behaviour is exactly :mod:`arch.timing`. See ``hw/README.md``.
"""
