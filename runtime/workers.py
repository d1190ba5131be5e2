"""Worker processes that run simulated cards (and the clusters of one card) in parallel.

Each worker is a fresh interpreter (``python -m runtime.workers``, the spawn method: no fork of a
process that has threads) talking to its parent over a socket pair with ``multiprocessing``'s
``Connection``. It is started with ``subprocess`` rather than ``multiprocessing``'s spawn context,
which would re-run the user's script in the worker (a script without an ``if __name__ ==
'__main__'`` guard, like the tutorials, would then start workers itself). A worker works on its
card's memory image in ``multiprocessing.shared_memory`` (see ``runtime.cards``), so images are
not copied per run; a request carries only the segment's name.

Requests (tuples, answered in order, one reply each):

* ``("run", shm, size, cfg, programs, check_hazards, trace)``: ``sim.card.run_card`` on the card
  memory; the reply is its ``CardStats``.
* ``("begin", shm, size, cfg, programs)``, ``("apply", ops)``, ``("end",)``: a
  ``sim.parallel.ClusterEffects`` helper: the data effects of some clusters of one run.
* ``("exit", code)``: exit at once without replying (tests of the crash path); ``("stop",)``.

A worker that dies raises :class:`WorkerCrashed` in the parent (never a hang: its socket closes)
and is started afresh at the next request. One that lives but does not answer (stopped with
SIGSTOP, hung) raises :class:`WorkerTimeout` once the reply is later than ``reply_timeout`` of the
request's modelled work allows; it is killed and started afresh at the next request. Workers stop when their card is released (``Free()``)
and at interpreter exit; one whose parent dies sees the socket close and exits.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

#: 'workers' flag values (see runtime/flags.py)
MODES = ("auto", "serial", "processes", "ray")

#: In 'auto' mode, calls with fewer multiply-accumulates per card than this run in the calling
#: process: a worker round trip and the start of a worker (about 0.1 s) would cost more than the
#: parallelism gains (the functional model does roughly 5-10 G MAC/s per core).
AUTO_MIN_MACS = 100_000_000


class WorkerCrashed(RuntimeError):
    """A worker process died (killed, out of memory, a crash of the interpreter)."""


class WorkerTimeout(WorkerCrashed):
    """A worker process did not answer in time (stopped, hung); it was killed."""


#: The reply timeout of a request: this many seconds, plus the request's multiply-accumulates at
#: the slowest rate the functional model is expected to reach (a loaded core with the hazard check
#: on: about 1/50 of its usual 5-10 G MAC/s), so that no run that is merely slow is cut short.
MIN_REPLY_S = 60.0
SLOWEST_MACS_PER_S = 100e6


def reply_timeout(macs: int) -> float:
    """Seconds to wait for the reply to a request that runs ``macs`` multiply-accumulates."""
    return MIN_REPLY_S + macs / SLOWEST_MACS_PER_S


def _process_state(pid: int | None) -> str:
    """'stopped' if the process is stopped (SIGSTOP, a debugger), else '' (Linux /proc; '' elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
    return "stopped" if state in ("T", "t") else ""


def plan(mode: str, functional: bool, nfpgas: int, nclusters: int, macs_per_card: int) -> str:
    """Where a call runs: 'here' (the calling process; cards one after another), 'cards' (each
    card in its worker process) or 'clusters' (one card; its clusters' data effects in worker
    processes). Only the functional model runs in workers."""
    if not functional or mode == "serial":
        return "here"
    if mode == "auto" and ((os.cpu_count() or 1) < 2 or macs_per_card < AUTO_MIN_MACS):
        return "here"
    if nfpgas > 1:
        return "cards"
    if nclusters > 1:
        return "clusters"
    return "here"


def cluster_helpers(nclusters: int) -> int:
    """Worker processes for the clusters of one card: one per core, at most one per cluster (at
    least two, so that 'processes' exercises the parallel path on any machine)."""
    return max(1, min(nclusters, max(2, os.cpu_count() or 1)))


_live: set["Worker"] = set()
_live_lock = threading.Lock()


class Worker:
    """The parent's handle on one worker process, started at its first request.

    ``submit`` sends a request without waiting; ``wait`` collects the replies of every request
    sent so far and returns the last one, raising the first error. The handle serialises its users
    with ``lock`` (a card's workers are only used under the card's lock)."""

    def __init__(self, label: str):
        self.label = label
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.pending = 0
        self.lock = threading.RLock()
        self.creator = os.getpid()      # a forked child must not stop its parent's workers

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        mine, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
        try:
            # cwd: ``-m`` puts the working directory first on sys.path, where the user's folders
            # could shadow ours (a 'sim' or 'runtime' of their own)
            self.proc = subprocess.Popen([sys.executable, "-m", "runtime.workers", str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), env=env, cwd=str(ROOT),
                                         stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.conn = Connection(mine.detach())
        self.pending = 0
        with _live_lock:
            _live.add(self)

    def _crashed(self, during: str) -> WorkerCrashed:
        """Reap the dead worker, forget it (the next request starts a new one), describe it."""
        pid = self.pid
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:      # the socket broke but the process lives on
                self.proc.kill()
                code = self.proc.wait()
        self._forget()
        return WorkerCrashed(f"the worker process of {self.label} (pid {pid}) died {during} "
                             f"(exit code {code}); it is started afresh at the next run")

    def _forget(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn, self.proc, self.pending = None, None, 0
        with _live_lock:
            _live.discard(self)

    def submit(self, request: tuple) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is not None:
                raise self._crashed("since its last request")
            if self.proc is None:
                self._start()
            try:
                self.conn.send(request)
            except OSError:
                raise self._crashed(f"before it could take a request ({request[0]!r})") from None
            self.pending += 1

    def _timed_out(self, timeout: float) -> WorkerTimeout:
        pid, state = self.pid, _process_state(self.pid)
        self.stop(kill=True)
        how = "is stopped (SIGSTOP?) and " if state == "stopped" else ""
        return WorkerTimeout(f"the worker process of {self.label} (pid {pid}) {how}did not answer within "
                             f"{timeout:.0f} s (the reply timeout of this run's modelled work); it was killed "
                             f"and is started afresh at the next run")

    def _receive(self, deadline: float | None):
        """One reply, waiting at most until ``deadline`` (time.monotonic; None: for ever)."""
        import time
        while deadline is not None and not self.conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return None
        return self.conn.recv()

    def wait(self, timeout: float | None = None):
        """Every outstanding reply; returns the last, raises the first error among them. With
        ``timeout`` (seconds for all of them), a worker that has not answered by then is killed
        and WorkerTimeout raised."""
        import time
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            last, error = None, None
            while self.pending:
                try:
                    reply = self._receive(deadline)
                    if reply is None:
                        raise self._timed_out(timeout)
                    status, value = reply
                except (EOFError, OSError):
                    raise self._crashed("while running a request") from None
                except WorkerTimeout:
                    raise
                except BaseException:        # interrupted: the replies are out of step now
                    self.stop(kill=True)
                    raise
                self.pending -= 1
                if status == "error" and error is None:
                    error = value
                last = value
            if error is not None:
                raise error
            return last

    def call(self, request: tuple, timeout: float | None = None):
        with self.lock:
            self.submit(request)
            return self.wait(timeout)

    def stop(self, kill: bool = False) -> None:
        """End the worker process and reap it (idempotent)."""
        with self.lock:
            if self.proc is None or os.getpid() != self.creator:
                return
            proc = self.proc
            if not kill and proc.poll() is None:
                try:
                    self.conn.send(("stop",))
                    proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self._forget()


class ClusterHelper:
    """A worker as a ``sim.parallel.Helper`` for the clusters of one card (its memory in shared
    memory ``shm`` of ``size`` bytes)."""

    def __init__(self, worker: Worker, shm: str, size: int, timeout: float | None = None):
        self.worker, self.shm, self.size, self.timeout = worker, shm, size, timeout

    def begin(self, cfg, programs):
        self.worker.submit(("begin", self.shm, self.size, cfg, programs))

    def apply(self, ops):
        self.worker.submit(("apply", ops))

    def wait(self):
        self.worker.wait(self.timeout)

    def end(self):
        if self.worker.proc is None:      # it died (already reported): nothing to end
            return {}
        return self.worker.call(("end",), self.timeout)


@atexit.register
def stop_all() -> None:
    """Stop every worker process (at interpreter exit)."""
    with _live_lock:
        workers = list(_live)
    for w in workers:
        w.stop()


# ------------------------------------------------------------------------------------------------
# The worker process
# ------------------------------------------------------------------------------------------------

class _Memory:
    """The card memory the worker is attached to (mapped afresh when the card's segment changes)."""

    def __init__(self):
        self.name = None
        self.map = None
        self.array = None

    def get(self, name: str, size: int) -> np.ndarray:
        if (name, size) != (self.name, None if self.array is None else len(self.array)):
            self.close()
            import mmap

            import _posixshmem
            # Not SharedMemory(name): on Python < 3.13 that registers the segment with this process's
            # resource tracker, which would unlink it when the worker exits. The parent owns it.
            fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
            try:
                self.map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            self.name = name
            self.array = np.frombuffer(self.map, dtype=np.uint8, count=size)
        return self.array

    def close(self) -> None:
        self.array = None
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:       # a view is still referenced; it goes with the garbage
                pass
        self.map = self.name = None


def _serve(conn: Connection) -> None:
    import signal

    from threadpoolctl import threadpool_limits

    # Ctrl-C reaches the whole process group: the parent decides (an interrupted wait kills the worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from sim.card import run_card
    from sim.parallel import ClusterEffects

    threadpool_limits(limits=1, user_api="blas")   # the workers are the parallelism
    memory = _Memory()
    effects: ClusterEffects | None = None
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):        # the parent is gone
            return
        kind = request[0]
        if kind == "stop":
            return
        if kind == "exit":
            os._exit(request[1])
        try:
            if kind == "run":
                _, name, size, cfg, programs, check, trace = request
                reply = run_card(cfg, memory.get(name, size), programs, check_hazards=check, trace=trace)
            elif kind == "begin":
                _, name, size, cfg, programs = request
                effects = None
                effects = ClusterEffects(cfg, memory.get(name, size), programs)
                reply = None
            elif kind == "apply":
                effects.apply(request[1])
                reply = None
            elif kind == "end":
                reply = effects.saturations() if effects is not None else {}
                effects = None
            else:
                raise ValueError(f"unknown worker request {kind!r}")
            conn.send(("ok", reply))
        except Exception as e:  # noqa: BLE001 - every error goes back to the parent
            if kind == "begin":
                effects = None
            conn.send(("error", _portable(e)))


def _portable(e: Exception) -> Exception:
    """``e`` if it pickles (SimError and the like do), else a RuntimeError with its traceback."""
    import pickle
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError("in a worker process: " + "".join(traceback.format_exception(e)))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
