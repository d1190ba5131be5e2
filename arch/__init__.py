"""The architecture description: machine parameters, the ISA, the numerics and the timing rules.

Every other layer (the functional model in ``sim/``, the compiler, the runtime, the RTL in ``hw/``
and the documentation in ``docs/``) takes its numbers and its semantics from this package, never
from a copy of its own.
"""
