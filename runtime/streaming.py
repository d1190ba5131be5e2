"""PutInput/GetResult: the SDK's double-buffered streaming interface, without its deadlocks.

Each object has two input buffers. ``put`` takes one (or, when both are taken, waits in blocking
mode or returns False in non-blocking mode) and hands the work to the object's runner thread, which
runs calls one after the other; ``get`` returns the oldest call's ``(result, userobj)`` (or waits,
or returns None). ``put(None, obj)`` is the end-of-stream marker: its ``get`` returns
``(None, obj)``.

Where the real SDK would block forever, this raises ``StreamDeadlock`` instead: a ``put`` with both
buffers taken when no other live thread is consuming results, or a ``get`` with nothing in flight
when no other live thread is producing inputs. A thread counts as a consumer (producer) once it
has called ``get`` (``put``); a short grace period lets a consumer thread that was just started
make its first call.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

BUFFERS = 2
GRACE_S = 2.0


class StreamDeadlock(RuntimeError):
    """The call would wait forever (the real SDK would hang here)."""


@dataclass
class _Entry:
    userobj: Any
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    cycles: int = 0


@dataclass
class Stream:
    run: Callable[[Any], tuple[Any, int]]        #: images -> (results, modelled cycles)
    name: str = "mdla"
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _pending: deque = field(default_factory=deque)
    _getters: dict = field(default_factory=dict)     #: thread ident -> Thread, threads that called get
    _putters: dict = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None
    last_cycles: int = 0

    def _other_alive(self, threads: dict) -> bool:
        me = threading.get_ident()
        return any(t.is_alive() for ident, t in threads.items() if ident != me)

    def _others_exist(self) -> bool:
        me = threading.current_thread()
        return any(t is not me and t.is_alive() and not t.name.startswith("mdla-runner")
                   for t in threading.enumerate())

    def _wait(self, blocked: Callable[[], bool], counterpart: dict, what: str) -> bool:
        """Wait while ``blocked()``; False if it gave up, raising StreamDeadlock when waiting could never end."""
        start = time.monotonic()
        while blocked():
            if not self._other_alive(counterpart) and not (
                    self._others_exist() and time.monotonic() - start < GRACE_S):
                raise StreamDeadlock(what)
            self._cv.wait(timeout=0.05)
        return True

    def put(self, images, userobj, blocking: bool) -> bool:
        me = threading.current_thread()
        with self._cv:
            self._putters[me.ident] = me
            if len(self._pending) >= BUFFERS:
                if not blocking:
                    return False
                self._wait(lambda: len(self._pending) >= BUFFERS, self._getters,
                           f"PutInput: both input buffers of {self.name} hold inputs whose results nobody fetches "
                           f"(no other thread is calling GetResult); the SDK would deadlock here. Call GetResult "
                           f"first, or fetch results in another thread")
            entry = _Entry(userobj)
            self._pending.append(entry)
            if images is None:
                entry.done = True
                self._cv.notify_all()
                return True
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mdla-runner")
        self._pool.submit(self._execute, entry, images)
        return True

    def _execute(self, entry: _Entry, images) -> None:
        try:
            entry.result, entry.cycles = self.run(images)
        except BaseException as e:  # noqa: BLE001 - handed to GetResult
            entry.error = e
        with self._cv:
            entry.done = True
            self._cv.notify_all()

    def get(self, blocking: bool):
        me = threading.current_thread()
        with self._cv:
            self._getters[me.ident] = me
            if not (self._pending and self._pending[0].done):
                if not blocking:
                    return None
                if not self._pending:
                    self._wait(lambda: not self._pending, self._putters,
                               f"GetResult: nothing was put into {self.name} and no other thread is calling "
                               f"PutInput; the SDK would deadlock here")
                self._cv.wait_for(lambda: self._pending[0].done)
            entry = self._pending.popleft()
            self._cv.notify_all()
        if entry.error is not None:
            raise entry.error
        self.last_cycles = entry.cycles
        return entry.result, entry.userobj

    @property
    def outstanding(self) -> int:
        with self._cv:
            return len(self._pending)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
