"""The simulated system: a pool of cards, each with its own main memory.

``MDLA`` objects take cards from the pool when they load a model: an object that is not linked
to another gets cards of its own (as many as ``nfpgas``); an object linked to another
(``Compile(..., MDLA=other)``) shares the other's cards, its program and weights placed after the
other's in each card's memory. ``Free`` gives the cards back. The pool has ``maxfpga`` cards.

A card runs in the calling process, or in worker processes (``runtime.workers``): its own worker
for a whole run, more for the data effects of its clusters. Its memory image then moves into
``multiprocessing.shared_memory`` (once; it stays there while the card is in use), so the
workers work on it in place. Releasing a card stops its workers and frees its shared memory.
"""
from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass, field
from multiprocessing import shared_memory

import numpy as np

from arch.machine import REFERENCE

from .workers import Worker


class CardsUnavailable(RuntimeError):
    """More cards were asked for than the simulated system has free."""


@dataclass(eq=False)
class Card:
    index: int
    memory: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    owners: list = field(default_factory=list)        #: objects with a model resident here
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the shared-memory segment holding ``memory`` once a worker has used it, else None
    shm: shared_memory.SharedMemory | None = None
    #: worker processes: [0] runs whole runs, all of them the clusters' data effects
    workers: list = field(default_factory=list)

    def ensure(self, size: int) -> None:
        """Grow the memory image to at least ``size`` bytes (contents kept)."""
        if len(self.memory) < size:
            self._move(size, shared=self.shm is not None)

    def _move(self, size: int, shared: bool) -> None:
        """Give the image ``size`` bytes (contents kept), in shared memory or not."""
        old, old_shm = self.memory, self.shm
        if shared:
            self.shm = shared_memory.SharedMemory(create=True, size=max(size, 1))
            grown = np.ndarray((size,), dtype=np.uint8, buffer=self.shm.buf)
            grown[len(old):] = 0
        else:
            self.shm = None
            grown = np.zeros(size, dtype=np.uint8)
        grown[:len(old)] = old
        self.memory = grown
        del old
        _free(old_shm)

    def shared(self) -> str:
        """The name of the shared-memory segment holding the image (moved there at the first call)."""
        if self.shm is None:
            self._move(len(self.memory), shared=True)
        return self.shm.name

    def worker(self, k: int = 0) -> Worker:
        while len(self.workers) <= k:
            self.workers.append(Worker(f"card {self.index}" + (f" (helper {len(self.workers)})"
                                                                if self.workers else "")))
        return self.workers[k]

    def clear(self) -> None:
        """Back to an empty card: stop its workers, free its memory."""
        for w in self.workers:
            w.stop()
        self.workers = []
        old = self.shm
        self.memory, self.shm = np.zeros(0, dtype=np.uint8), None
        _free(old)


_CREATOR = os.getpid()


def _free(shm: shared_memory.SharedMemory | None) -> None:
    if shm is None or os.getpid() != _CREATOR:    # a forked child leaves its parent's memory alone
        return
    try:
        shm.close()
    except BufferError:     # a view of the old image is still referenced; it is unmapped with it
        pass
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


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
        with self._lock:
            free = [c for c in self.cards if not c.owners]
            if len(free) < n:
                raise CardsUnavailable(
                    f"{n} card(s) needed but only {len(free)} of the {len(self.cards)} simulated cards are free "
                    f"(each MDLA object that is not linked to another takes cards of its own; Free() an object "
                    f"or SetFlag('maxfpga', n) for a larger system)")
            for c in free[:n]:
                c.owners.append(owner)
                c.clear()
            return free[:n]

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


@atexit.register
def _clear_pool() -> None:
    """No worker process or shared-memory segment outlives the interpreter."""
    for c in POOL.cards:
        c.clear()
