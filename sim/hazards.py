"""Data-race checker for the functional model.

The model applies each instruction's data effect at once, at its start cycle, in start order. The
hardware instead spreads the effect over the instruction's whole busy interval ``[start, end)`` and
runs the three engines of every cluster concurrently. Both agree exactly when no two instructions
whose intervals overlap touch a common address with at least one of them writing: that is what a
well-formed program guarantees with its dependency tokens, and what this module checks.

Every access is ``(resource, lo, hi, write)`` with ``[lo, hi)`` the bounding range of the addresses
touched, in the resource's unit. Resources are the card's main memory (counted in beats of
``beat_bytes`` bytes: the DMA only moves whole words, and a cluster's program is recorded as read
for the whole run, so a STORE into a running program is a race) and, per cluster and MV, the maps,
output and residual buffers and the kernel buffers (in words). The kernel buffers of an MV's VV units
are one address space of words: a LOAD KERNEL and a CONV both use VV units 0..nvv-1, so their VV
ranges always intersect and the word ranges alone decide. Accumulators are private to the compute
engine, whose instructions never overlap each other, and are not checked. A strided access can also carry the
exact sorted set of addresses it touches, computed lazily: it is only looked at when the bounding
ranges of two conflicting accesses overlap, so interleaved but disjoint accesses (two clusters
storing alternate channel blocks of one tensor, say) are not reported.

Instructions are checked in non-decreasing start order, so a record whose end is at or before the
current start can never conflict with anything later and is pruned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Access", "HazardChecker", "MEMORY"]

#: Resource key of the card's main memory; on-chip buffers are ``(kind, cluster, mv)`` with kind
#: ``'maps'``, ``'kernel'``, ``'output'`` or ``'residual'`` (accumulators are private to the compute engine).
MEMORY = ("memory",)


@dataclass(slots=True)
class Access:
    resource: tuple
    lo: int
    hi: int
    write: bool
    exact: Callable[[], np.ndarray] | None = None   #: sorted addresses touched, if not all of [lo, hi)

    def addresses(self, lo: int, hi: int) -> np.ndarray:
        """Sorted addresses touched within [lo, hi)."""
        if self.exact is None:
            return np.arange(max(lo, self.lo), min(hi, self.hi))
        a = self.exact()
        return a[(a >= lo) & (a < hi)]


@dataclass(slots=True)
class _Record:
    who: str
    start: int
    end: float
    access: Access


class HazardChecker:
    """Checks that no two time-overlapping instructions conflict on an address.

    ``mem_unit``: bytes per main-memory address unit (the beat), used only for messages."""

    def __init__(self, mem_unit: int):
        self.mem_unit = mem_unit
        self._active: dict[tuple, list[_Record]] = {}

    def describe(self, a: Access, lo: int | None = None, hi: int | None = None) -> str:
        lo = a.lo if lo is None else lo
        hi = a.hi if hi is None else hi
        if a.resource == MEMORY:
            return f"main memory bytes {lo * self.mem_unit:#x}..{hi * self.mem_unit - 1:#x}"
        kind, cluster, mv = a.resource
        return f"{kind} buffer of cluster {cluster} MV {mv}, words {lo}..{hi - 1}"

    def _address(self, a: Access, x: int) -> str:
        return f"byte {x * self.mem_unit:#x}" if a.resource == MEMORY else f"word {x}"

    def add_permanent(self, who: str, accesses: list[Access]) -> None:
        """Accesses that last the whole run (a cluster's program being fetched)."""
        for a in accesses:
            self._active.setdefault(a.resource, []).append(_Record(who, 0, math.inf, a))

    def check(self, who: str, start: int, end: int, accesses: list[Access]) -> str | None:
        """Check one instruction active over [start, end); record it if clean.

        Returns a message describing the first race found (the instruction is then not recorded),
        or None."""
        for a in accesses:
            recs = self._active.get(a.resource)
            if not recs:
                continue
            live = [r for r in recs if r.end > start]
            if len(live) != len(recs):
                self._active[a.resource] = live
            for r in live:
                b = r.access
                if not (a.write or b.write) or b.hi <= a.lo or a.hi <= b.lo:
                    continue
                lo, hi = max(a.lo, b.lo), min(a.hi, b.hi)
                if a.exact is not None or b.exact is not None:
                    common = np.intersect1d(a.addresses(lo, hi), b.addresses(lo, hi), assume_unique=True)
                    if common.size == 0:
                        continue
                    first = int(common[0])
                else:
                    first = lo
                r_end = "end of run" if r.end == math.inf else str(r.end)
                return (f"data race: {who} [cycles {start}..{end}) "
                        f"{'writes' if a.write else 'reads'} {self.describe(a)} while {r.who} "
                        f"[cycles {r.start}..{r_end}) {'writes' if b.write else 'reads'} {self.describe(b)}; "
                        f"first common address: {self._address(a, first)}. "
                        f"Order them with a dependency token.")
        for a in accesses:
            self._active.setdefault(a.resource, []).append(_Record(who, start, end, a))
        return None
