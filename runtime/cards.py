"""The simulated system: a pool of cards, each with its own main memory.

``MDLA`` objects take cards from the pool when they load a model: an object that is not linked
to another gets cards of its own (as many as ``nfpgas``); an object linked to another
(``Compile(..., MDLA=other)``) shares the other's cards, its program and weights placed after the
other's in each card's memory. ``Free`` gives the cards back. The pool has ``maxfpga`` cards.

A card's memory image lives here, in the calling process, where the cards run one after another;
with ``SetFlag('workers', 'ray')`` each card is also a Ray actor holding a copy of the image
(``runtime.ray_cards``).
"""
from __future__ import annotations

import gc

import threading
from dataclasses import dataclass, field

import numpy as np

from arch.machine import REFERENCE


class CardsUnavailable(RuntimeError):
    """More cards were asked for than the simulated system has free."""


@dataclass(eq=False)
class Card:
    index: int
    memory: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    owners: list = field(default_factory=list)        #: objects with a model resident here
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ensure(self, size: int) -> None:
        """Grow the memory image to at least ``size`` bytes (contents kept)."""
        if len(self.memory) < size:
            grown = np.zeros(size, dtype=np.uint8)
            grown[:len(self.memory)] = self.memory
            self.memory = grown

    def clear(self) -> None:
        """Back to an empty card."""
        self.memory = np.zeros(0, dtype=np.uint8)


class CardPool:
    def __init__(self, size: int = 4):
        self._lock = threading.Lock()
        self.cards = [Card(i) for i in range(size)]

    @property
    def size(self) -> int:
        return len(self.cards)

    def resize(self, size: int) -> None:
        with self._lock:
            if size < 1:
                raise ValueError(f"maxfpga must be at least 1, got {size}")
            busy = [c.index for c in self.cards[size:] if c.owners]
            if busy:
                raise CardsUnavailable(f"cannot shrink the system to {size} cards: card(s) {busy} are in use")
            for c in self.cards[size:]:
                c.clear()
            self.cards = self.cards[:size] + [Card(i) for i in range(len(self.cards), size)]

    def allocate(self, n: int, owner) -> list[Card]:
        for collected in (False, True):
            with self._lock:
                free = [c for c in self.cards if not c.owners]
                if len(free) >= n:
                    for c in free[:n]:
                        c.owners.append(owner)
                        c.clear()
                    return free[:n]
            if not collected:
                # an object that nothing can reach any more but that sits in a reference cycle keeps
                # its cards until the cyclic garbage collector runs (its finalizer releases them):
                # collect now rather than refuse (outside the lock: the finalizers take it)
                gc.collect()
        raise CardsUnavailable(
            f"{n} card(s) needed but only {len(free)} of the {len(self.cards)} simulated cards are free "
            f"(each MDLA object that is not linked to another takes cards of its own; Free() an object "
            f"or SetFlag('maxfpga', n) for a larger system)")

    def share(self, cards: list[Card], owner) -> None:
        with self._lock:
            for c in cards:
                c.owners.append(owner)

    def release(self, owner) -> None:
        with self._lock:
            for c in self.cards:
                if owner in c.owners:
                    c.owners.remove(owner)
                    if not c.owners:
                        c.clear()


#: The simulated system shared by every MDLA object of the process (SetFlag('maxfpga', n) resizes it).
POOL = CardPool(REFERENCE.max_cards)

