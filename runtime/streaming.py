"""PutInput/GetResult: the SDK's double-buffered streaming interface, without its deadlocks.

Each object has two input buffers. ``put`` takes one (or, when both are taken, waits in blocking
mode or returns False in non-blocking mode); ``get`` returns the oldest call's ``(result,
userobj)``. ``put(None, obj)`` is the end-of-stream marker: its ``get`` returns ``(None, obj)``.

Calls run when their result is asked for: ``get`` runs the oldest queued call through the
stream's ``execute`` callback, which may run queued calls of other objects with it (models linked
on disjoint clusters of one card run together, sharing its memory port). The modelled time then
depends only on the order of the calls, never on thread timing.

The inputs are the caller's to reuse as soon as ``put`` returns: the runtime hands the stream its
own copy (``MDLA.PutInput``), as the SDK copied them into its input buffer.

Where the real SDK would block forever, this raises ``StreamDeadlock`` instead: a ``put`` with both
buffers taken when no other thread can ever consume a result, or a ``get`` with nothing queued when
no other thread can ever put an input. Which threads can:

* a thread that has called ``get`` (``put``) and is still alive is a consumer (producer): while
  one lives, the call waits for as long as it takes;
* a thread that has not called the stream yet can only ever call it if it can reach the object:
  its stack (the locals and closures of its frames, their module's globals, and what those refer
  to, a few references deep) holds the stream's owner (the ``MDLA`` object, a bound method of it)
  or the stream. While such a thread lives, the call waits for it up to ``STALL_S`` seconds (far
  longer than any run of the functional model), then raises ``StreamDeadlock`` naming that timeout;
* any other thread (one that cannot reach the object, or the project's own ``mdla-`` threads) can
  never unblock the call: when no thread of the first two kinds lives, the call raises at once,
  naming the threads it did not count.

``close`` (``MDLA.Free``) waits for a call that is running, then fails every waiting ``get`` and
``put`` with ``StreamClosed``.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
import types
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

BUFFERS = 2
#: The project's own threads (the simulator's GEMM pool, card threads, progress bars) are named
#: with this prefix: they never call the stream, so a blocked call does not wait for them.
INTERNAL_THREAD_PREFIX = "mdla-"
#: How long a blocked call waits for a thread that can reach the object but has not called the stream yet (seconds).
STALL_S = 300.0
#: How many objects the search of one thread's references visits at most, and how deep: past either
#: bound the thread counts as one that can reach the object (waiting is the safe side).
REACH_LIMIT = 20000
REACH_DEPTH = 4
#: How often a blocked call looks again at the threads that might unblock it (seconds).
RECHECK_S = 0.5

_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), type, types.ModuleType,
          types.FrameType, types.CodeType, types.BuiltinFunctionType)


def reaches(thread: threading.Thread, frame, targets: set[int]) -> bool:
    """Whether ``thread`` (whose innermost frame is ``frame``) can reach an object whose id is in
    ``targets``: through the locals and closure cells of its frames, their globals, and what those
    refer to, up to REACH_DEPTH references deep (not through modules, classes, other threads'
    Thread objects or other frames). True also when the search is cut at REACH_LIMIT objects."""
    module_dicts = {id(vars(m)) for m in list(sys.modules.values()) if isinstance(m, types.ModuleType)}
    seen: set[int] = set()
    level: list = []
    while frame is not None:
        # (f_locals: a running frame's gc referents do not include its locals; f_locals has the
        # locals and the values of its closure cells)
        level += list(frame.f_locals.values())
        if id(frame.f_locals) != id(frame.f_globals):
            level += list(frame.f_globals.values())
        frame = frame.f_back
    for _ in range(REACH_DEPTH + 1):
        nxt = []
        for o in level:
            if id(o) in targets:
                return True
            if id(o) in seen or isinstance(o, _ATOMS) or id(o) in module_dicts:
                continue
            if isinstance(o, threading.Thread) and o is not thread:
                continue
            seen.add(id(o))
            if len(seen) > REACH_LIMIT:
                return True
            nxt.extend(gc.get_referents(o))
        level = nxt
    return any(id(o) in targets for o in level)


class StreamDeadlock(RuntimeError):
    """The call would wait forever (the real SDK would hang here)."""


class StreamClosed(RuntimeError):
    """The stream was closed (``Free``) while the call waited."""


@dataclass
class Entry:
    userobj: Any
    images: Any = None
    done: bool = False
    running: bool = False
    result: Any = None
    error: BaseException | None = None
    cycles: int = 0


@dataclass
class Stream:
    execute: Callable[[Entry], None]               #: runs an entry, finishing it with complete()
    name: str = "mdla"
    owner: Callable[[], Any] | None = None          #: the object calls come through (a weakref): who can call
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _pending: deque = field(default_factory=deque)
    _getters: dict = field(default_factory=dict)     #: thread ident -> Thread, threads that called get
    _putters: dict = field(default_factory=dict)
    last_cycles: int = 0
    closed: bool = False
    stall_s: float = STALL_S

    def _other_alive(self, threads: dict) -> bool:
        me = threading.get_ident()
        return any(t.is_alive() for ident, t in threads.items() if ident != me)

    def _possible_callers(self) -> tuple[list[str], list[str]]:
        """(names of the other live threads that can reach this stream's object and so may still call
        it, names of those that cannot)."""
        me = threading.current_thread()
        owner = self.owner() if self.owner is not None else None
        targets = {id(self)} | ({id(owner)} if owner is not None else set())
        frames = sys._current_frames()
        can, cannot = [], []
        for t in threading.enumerate():
            if t is me or not t.is_alive():
                continue
            if t.name.startswith(INTERNAL_THREAD_PREFIX):
                cannot.append(t.name)
                continue
            frame = frames.get(t.ident)
            (can if frame is None or reaches(t, frame, targets) else cannot).append(t.name)
        del frames
        return can, cannot

    def _closed_error(self, what: str) -> StreamClosed:
        return StreamClosed(f"{what}: {self.name} was freed (Free()) while this call waited")

    def _wait(self, blocked: Callable[[], bool], counterpart: dict, what: str, call: str) -> None:
        """Wait while ``blocked()``; raise StreamDeadlock when waiting could never end."""
        start = time.monotonic()
        checked, can = -RECHECK_S, []
        while blocked():
            if self.closed:
                raise self._closed_error(call)
            if not self._other_alive(counterpart):
                now = time.monotonic()
                if now - checked >= RECHECK_S:
                    can, cannot = self._possible_callers()
                    checked = now
                    if not can:
                        others = (f" (the other live threads, {', '.join(sorted(cannot)[:6])}"
                                  f"{', ...' if len(cannot) > 6 else ''}, cannot reach this object)" if cannot else "")
                        raise StreamDeadlock(what + others)
                if now - start > self.stall_s:
                    raise StreamDeadlock(f"{what} (other threads that hold this object are alive ("
                                         f"{', '.join(sorted(can)[:6])}), but none called it in {self.stall_s:g} s)")
            self._cv.wait(timeout=0.05)

    def put(self, images, userobj, blocking: bool) -> bool:
        me = threading.current_thread()
        with self._cv:
            if self.closed:
                raise self._closed_error("PutInput")
            self._putters[me.ident] = me
            if len(self._pending) >= BUFFERS:
                if not blocking:
                    return False
                self._wait(lambda: len(self._pending) >= BUFFERS, self._getters,
                           f"PutInput: both input buffers of {self.name} hold inputs whose results nobody fetches "
                           f"(no other thread is calling GetResult); the SDK would deadlock here. Call GetResult "
                           f"first, or fetch results in another thread", "PutInput")
            self._pending.append(Entry(userobj, images, done=images is None))
            self._cv.notify_all()
        return True

    def claim_head(self) -> Entry | None:
        """The oldest entry if it has neither run nor started (marking it started), else None."""
        with self._cv:
            if not self.closed and self._pending and not self._pending[0].done and not self._pending[0].running:
                self._pending[0].running = True
                return self._pending[0]
        return None

    def complete(self, entry: Entry, result, cycles: int, error: BaseException | None) -> None:
        with self._cv:
            entry.result, entry.cycles, entry.error = result, cycles, error
            entry.done = True
            entry.images = None
            self._cv.notify_all()

    def get(self, blocking: bool):
        me = threading.current_thread()
        with self._cv:
            if self.closed:
                raise self._closed_error("GetResult")
            self._getters[me.ident] = me
            if not self._pending:
                if not blocking:
                    return None
                self._wait(lambda: not self._pending, self._putters,
                           f"GetResult: nothing was put into {self.name} and no other thread is calling "
                           f"PutInput; the SDK would deadlock here", "GetResult")
        entry = self.claim_head()
        if entry is not None:
            try:
                self.execute(entry)
            except BaseException as e:  # noqa: BLE001 - reported through the entry
                if not entry.done:
                    self.complete(entry, None, 0, e)
        with self._cv:
            if self.closed or not self._pending:
                raise self._closed_error("GetResult")
            head = self._pending[0]
            self._cv.wait_for(lambda: head.done or self.closed)
            if not head.done:
                raise self._closed_error("GetResult")
            if self._pending and self._pending[0] is head:     # (close() may have emptied the queue)
                self._pending.popleft()
            self._cv.notify_all()
        if head.error is not None:
            raise head.error
        self.last_cycles = head.cycles
        return head.result, head.userobj

    @property
    def outstanding(self) -> int:
        with self._cv:
            return len(self._pending)

    def close(self) -> None:
        """Wait for a call that is running, then forget the queued ones: every call waiting on the
        stream raises StreamClosed (the object is being freed)."""
        with self._cv:
            self._cv.wait_for(lambda: not any(e.running and not e.done for e in self._pending))
            self.closed = True
            self._pending.clear()
            self._cv.notify_all()
