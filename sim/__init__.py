"""Functional model of the DLA: executes the binary programs of a card on its memory image,
bit-exact with the RTL, and computes the cycle counts of :mod:`arch.timing`.

Entry point: :func:`run_card`; :mod:`sim.units` holds the data effects of the instructions and
:mod:`sim.hazards` the data-race checker.
"""
from .card import CardStats, ClusterStats, InstrTiming, SimError, run_card

__all__ = ["run_card", "SimError", "CardStats", "ClusterStats", "InstrTiming"]
