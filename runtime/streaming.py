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
buffers taken when no other live thread is consuming results, or a ``get`` with nothing queued
when no other live thread is producing inputs. A thread counts as a consumer (producer) once it
has called ``get`` (``put``); while such a counterpart lives, the call waits for as long as it
takes. A thread that has not yet called the stream may still become one: while any other thread
of the process lives the call waits for it, up to ``STALL_S`` seconds (far longer than any run of
the functional model), and then raises ``StreamDeadlock`` naming that timeout. Only a call that
no other thread could ever unblock raises at once.

``close`` (``MDLA.Free``) waits for a call that is running, then fails every waiting ``get`` and
``put`` with ``StreamClosed``.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

BUFFERS = 2
#: The project's own threads (the simulator's GEMM pool, card threads, progress bars) are named
#: with this prefix: they never call the stream, so a blocked call does not wait for them.
INTERNAL_THREAD_PREFIX = "mdla-"
#: How long a blocked call waits for a thread that has not called the stream yet (seconds).
STALL_S = 300.0


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

    def _others_exist(self) -> bool:
        me = threading.current_thread()
        return any(t is not me and t.is_alive() and not t.name.startswith(INTERNAL_THREAD_PREFIX) for t in threading.enumerate())

    def _closed_error(self, what: str) -> StreamClosed:
        return StreamClosed(f"{what}: {self.name} was freed (Free()) while this call waited")

    def _wait(self, blocked: Callable[[], bool], counterpart: dict, what: str, call: str) -> None:
        """Wait while ``blocked()``; raise StreamDeadlock when waiting could never end."""
        start = time.monotonic()
        while blocked():
            if self.closed:
                raise self._closed_error(call)
            if not self._other_alive(counterpart):
                if not self._others_exist():
                    raise StreamDeadlock(what)
                if time.monotonic() - start > self.stall_s:
                    raise StreamDeadlock(f"{what} (other threads are alive, but none called it in "
                                         f"{self.stall_s:g} s)")
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
