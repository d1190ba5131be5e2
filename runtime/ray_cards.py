"""Simulated cards as Ray actors: ``SetFlag('workers', 'ray')``.

Each card of a ``Run`` is one Ray actor (:class:`CardActor`) that holds the card's memory image:
the loaded programs and weights arrive once through Ray's object store when the models resident on
the card change, and afterwards a call ships only that card's input images (one object per card)
and gets back its statistics and output tensors. The driver decides what goes where (the input
and output addresses, layouts and fixed-point formats of each image, :func:`card_plan`); the actor
converts, writes, runs the executor, reads and converts back, so the work done is exactly the
serial path's and the results are identical bit for bit.

Where Ray runs: the 'ray_address' flag, else the ``RAY_ADDRESS`` environment variable, else a
local Ray instance started for the object on the loopback address only (its dashboard off unless
the 'ray_dashboard' flag asks for it) and shut down with the object (``Free()`` or its
collection). If the process is already connected to Ray (``ray.init`` by the user), that
connection is used and left alone.

Faults: a card actor that dies while its node lives is started afresh, loaded, and its images run
again, with a :class:`CardRestarted` warning; a card whose node has left the cluster ends the call
with :class:`NodeLost`; a card actor that lives but does not answer (stopped, hung) ends the call
with :class:`CardTimeout` once the reply deadline of the card's modelled work (:func:`reply_timeout`)
has passed, and is killed (started afresh at the next call); Ctrl-C during a call kills the call's
actors (they are started afresh at the next call) and re-raises. See docs/parallel.md.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import warnings
import weakref
from dataclasses import dataclass

import numpy as np

#: More cards than this in the simulated system (flag 'maxfpga') only with workers='ray'.
LOCAL_MAX_CARDS = 64

#: Seconds to wait for a card actor to be placed on a node before the call fails (never a hang
#: on a cluster without room).
PLACEMENT_TIMEOUT_S = 120.0

#: The reply deadline of a card's call: this many seconds, plus the call's multiply-accumulates on
#: the card at the slowest rate the functional model is expected to reach (a loaded core with the
#: hazard check on: about 1/50 of its usual 5-10 G MAC/s), so that no run that is merely slow is
#: cut short (the retired worker-process pool's figures). See :func:`reply_timeout`.
MIN_REPLY_S = 60.0
SLOWEST_MACS_PER_S = 100e6

#: The RTL simulators' share of the deadline: the card's expected cycles (the functional model's
#: schedule, hw.progress.expected_total) at this rate, below the slowest of them (Amaranth's
#: simulator writing a VCD of the reference card on a loaded core: tens of cycles/s; Icarus and
#: Verilator run thousands to millions).
SLOWEST_RTL_CYCLES_PER_S = 5.0

#: The deadline of loading a card's memory image into its actor: MIN_REPLY_S plus the image's bytes
#: at this rate (a slow 100 Mbit/s link between the driver's object store and the actor's node).
SLOWEST_LOAD_BYTES_PER_S = 10e6

#: Ray's switch that makes ``get_node_ip_address`` the loopback address: with it, every Ray
#: component of a local instance (GCS, raylet, object manager, workers' gRPC servers, the
#: runtime-env agent) binds 127.0.0.1 instead of the host's address or all interfaces (measured
#: with ``ss -ltnp`` on Ray 2.60; docs/parallel.md).
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayUnavailable(RuntimeError):
    """workers='ray' was asked for but Ray cannot be used here."""


class NodeLost(RuntimeError):
    """A Ray node holding a card left the cluster during a call."""


class CardRestarted(RuntimeWarning):
    """A card actor died and was started afresh; its images were run again."""


class CardTimeout(RuntimeError):
    """A card actor did not answer within the deadline of its modelled work (stopped, hung); it was
    killed and is started afresh at the next call."""


def reply_timeout(macs: int, executor=None, cycles=None) -> float | None:
    """Seconds to wait for a card actor to run ``macs`` multiply-accumulates with ``executor``:
    MIN_REPLY_S + macs / SLOWEST_MACS_PER_S for the functional model (and executors derived from
    it). The RTL simulators' speed is in cycles per second, not bounded by the MACs (pooling, the
    memory-bound layers): for them MIN_REPLY_S + cycles / SLOWEST_RTL_CYCLES_PER_S, ``cycles`` the
    card's expected cycle count (``cycles()`` is called only then); None (no deadline) when the
    functional model cannot tell it (a program it refuses)."""
    from .executors import FunctionalExecutor
    if executor is not None and not isinstance(executor, FunctionalExecutor):
        n = cycles() if callable(cycles) else cycles
        return None if n is None else MIN_REPLY_S + n / SLOWEST_RTL_CYCLES_PER_S
    return MIN_REPLY_S + macs / SLOWEST_MACS_PER_S


def load_timeout(nbytes: int) -> float:
    """Seconds to wait for a card actor to take a memory image of ``nbytes`` bytes."""
    return MIN_REPLY_S + nbytes / SLOWEST_LOAD_BYTES_PER_S


def card_macs(jobs) -> int:
    """The multiply-accumulates one card runs in a call of ``jobs`` ((compiled, arrays, batch) per
    model sharing the cards): each program's per-image MACs times the images of a card (the
    program runs all its image slots, whatever the batch given)."""
    return sum(sum(lc.macs for lc in c.layers) * c.parallel.images_per_card for c, _, _ in jobs)


def process_state(pid) -> str:
    """'stopped' if process ``pid`` of this host is stopped (SIGSTOP, a debugger), 'running' if it
    lives otherwise, '' if there is no such process (Linux /proc; '' elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError, TypeError):
        return ""
    return "stopped" if state in ("T", "t") else "running"


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("workers='ray' needs Ray (ray==2.60.0, a dependency of the project): reinstall with scripts/setup.sh or pip install -e .") from None
    return ray


def ray_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("ray") is not None


# ------------------------------------------------------------------------------------------------
# The Ray connection of the process
# ------------------------------------------------------------------------------------------------

class _Session:
    """The process's connection to Ray, shared by the objects using it; the last to release it
    shuts down what this module started (a local instance, or the connection to a cluster)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.users = 0
        self.ours = False          #: ray.init was called here (else the user's connection)
        self.local = False         #: the instance was started here, on the loopback address
        self.address = ""
        self.undo_loopback = None

    def acquire(self, address: str, dashboard: bool) -> None:
        ray = import_ray()
        with self.lock:
            if self.users == 0 and not ray.is_initialized():
                self._connect(ray, address, dashboard)
            elif self.users == 0:
                self.ours, self.local = False, False
                self.address = ray.get_runtime_context().gcs_address
            self.users += 1

    def _connect(self, ray, address: str, dashboard: bool) -> None:
        quiet = dict(log_to_driver=False, configure_logging=True, logging_level="warning")
        if address:
            try:
                ray.init(address=address, **quiet)
            except Exception as e:  # noqa: BLE001 - any failure to reach the cluster is the user's to see
                raise RayUnavailable(f"workers='ray': cannot connect to the Ray cluster at {address!r}: {e}") from e
            self.local = False
        else:
            self.undo_loopback = _loopback_only(ray)
            # address='local': a new instance, never a cluster `ray start` left running on this host
            try:
                ray.init(address="local", num_cpus=os.cpu_count() or 1, _node_ip_address="127.0.0.1",
                         include_dashboard=bool(dashboard), dashboard_host="127.0.0.1", **quiet)
            except Exception as e:  # noqa: BLE001 - e.g. the dashboard without ray[default]'s packages
                if ray.is_initialized():
                    ray.shutdown()
                self.undo_loopback()
                self.undo_loopback = None
                hint = " (the dashboard needs pip install 'ray[default]==2.60.0')" if dashboard else ""
                raise RayUnavailable(f"workers='ray': cannot start a local Ray instance{hint}: {e}") from e
            self.local = True
        self.ours = True
        self.address = ray.get_runtime_context().gcs_address

    def release(self) -> None:
        ray = import_ray()
        with self.lock:
            self.users = max(0, self.users - 1)
            if self.users == 0 and self.ours and ray.is_initialized():
                ray.shutdown()
            if self.users == 0 and self.undo_loopback is not None:
                self.undo_loopback()
                self.undo_loopback = None
            if self.users == 0:
                self.ours = self.local = False
                self.address = ""


def _loopback_only(ray):
    """Make the local instance about to start bind the loopback address only (see _LOOPBACK_SWITCH):
    the environment for Ray's processes, the already imported constant for this one. Returns what
    undoes it (after the instance is shut down: a later connection to a real cluster must
    advertise this host's address again)."""
    from ray._private import ray_constants
    before_env, before_const = os.environ.get(_LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False

    def undo():
        if before_env is None:
            os.environ.pop(_LOOPBACK_SWITCH, None)
        else:
            os.environ[_LOOPBACK_SWITCH] = before_env
        ray_constants.ENABLE_RAY_CLUSTER = before_const
    return undo


SESSION = _Session()


def resolve_address(flag_value: str) -> str:
    """The cluster to use: the flag, else RAY_ADDRESS, else '' (a local instance)."""
    return flag_value or os.environ.get("RAY_ADDRESS", "")


# ------------------------------------------------------------------------------------------------
# What a card does in one call
# ------------------------------------------------------------------------------------------------

from .card_plan import ImageIO, card_images, card_plan, run_plan  # noqa: E402,F401  (the plan of both transports)


class CardActor:
    """One simulated card on a Ray node: its memory image and the runs on it."""

    def __init__(self, index: int):
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=1, user_api="blas")      # the cards are the parallelism
        self.index = index
        self.memory = np.zeros(0, dtype=np.uint8)
        self.key = None

    def where(self) -> dict:
        import ray
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "node": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "host": socket.gethostname()}

    def load(self, key, image: np.ndarray) -> None:
        self.memory = np.array(image, dtype=np.uint8)      # a writable copy of the object store's
        self.key = key

    def snapshot(self) -> np.ndarray:
        """The card memory (tests compare it with the serial run's)."""
        return self.memory

    def run(self, key, executor, cfg, programs, check_hazards, plan, images, njobs):
        if key != self.key:
            raise RuntimeError(f"card {self.index}: the memory image loaded here is not the one this call "
                               f"was planned for (a runtime bug)")
        return run_plan(lambda: executor.run(cfg, self.memory, programs, check_hazards=check_hazards),
                        cfg, self.memory, plan, images, njobs)


# ------------------------------------------------------------------------------------------------
# The cards of one MDLA object
# ------------------------------------------------------------------------------------------------

@dataclass
class _Placed:
    handle: object
    where: dict
    key: object = None


class RayCards:
    """The card actors of one MDLA object and its share of the Ray connection."""

    def __init__(self, address: str, dashboard: bool):
        self.ray = import_ray()
        SESSION.acquire(address, dashboard)
        self.closed = False
        self.actors: dict[int, _Placed] = {}
        self.restarts = 0
        self._remote = self.ray.remote(max_restarts=0, max_task_retries=0)(CardActor)

    # ----------------------------------------------------------------- actors
    def _cpus_per_card(self, ncards: int) -> float:
        """One CPU per card while the cluster has them, else an equal share: never unschedulable."""
        total = float(self.ray.cluster_resources().get("CPU", 1.0))
        return min(1.0, max(0.01, round(total / max(ncards, 1) - 0.005, 2)))

    def _prepare(self, cards, ncards: int, key, image_refs: dict) -> None:
        """Every card of ``cards`` with a live actor holding the image of ``key``: the missing
        actors started together (each placement bounded in time), the stale ones loaded together."""
        ray = self.ray
        new = {c.index: self._remote.options(num_cpus=self._cpus_per_card(ncards),
                                             scheduling_strategy="SPREAD").remote(c.index)
               for c in cards if c.index not in self.actors}
        if new:
            try:
                places = ray.get([h.where.remote() for h in new.values()], timeout=PLACEMENT_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                for h in new.values():
                    ray.kill(h)
                raise RayUnavailable(f"cards {sorted(new)}: no Ray node took their actors within "
                                     f"{PLACEMENT_TIMEOUT_S:g} s (cluster resources: {ray.cluster_resources()})") from None
            for (index, handle), where in zip(new.items(), places):
                self.actors[index] = _Placed(handle, where)
        stale = [c for c in cards if self.actors[c.index].key != key]
        loads = {self.actors[c.index].handle.load.remote(key, image_refs[c.index]): c for c in stale}
        timeout = load_timeout(max((len(c.memory) for c in stale), default=0))
        deadline = time.monotonic() + timeout
        waiting = list(loads)
        while waiting:      # every load bounded in time (an actor stopped since the last call)
            ready, waiting = ray.wait(waiting, num_returns=len(waiting),
                                      timeout=max(0.0, deadline - time.monotonic()))
            ray.get(ready)
            if waiting and time.monotonic() >= deadline:
                raise self._timed_out(loads[waiting[0]].index, timeout, "take its memory image",
                                      "its bytes: runtime.ray_cards.load_timeout")
        for c in stale:
            self.actors[c.index].key = key

    def _kill(self, index: int) -> None:
        placed = self.actors.pop(index, None)
        if placed is not None:
            try:
                self.ray.kill(placed.handle)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _timed_out(self, index: int, timeout: float, what: str, rule: str) -> CardTimeout:
        """The error of card ``index``'s actor not answering in time (its state read before the
        caller kills it)."""
        placed = self.actors.get(index)
        where = placed.where if placed is not None else {}
        pid, node = where.get("pid", "?"), where.get("node", "?")
        if where.get("host") == socket.gethostname():
            state = process_state(pid)
            how = {"stopped": "is stopped (SIGSTOP? a debugger?) and ",
                   "running": "is running (busy or hung) and ", "": "is gone and "}[state]
        else:
            how = "(its process state cannot be read from this host) "
        return CardTimeout(f"card {index}: its Ray actor (pid {pid} on node {node}, id "
                           f"{where.get('node_id', '?')[:12]}) {how}did not {what} within {timeout:.1f} s "
                           f"(the deadline of {rule}); it was killed and is started afresh at the next call")

    def _node_alive(self, node_id: str) -> bool:
        for n in self.ray.nodes():
            if n.get("NodeID") == node_id:
                return bool(n.get("Alive"))
        return False

    # ----------------------------------------------------------------- one call
    def run(self, cards, jobs, executor, cfg, programs, check_hazards: bool, residents):
        """Run every card of ``cards`` on its actor; per card (statistics, outputs, saturations)."""
        if self.closed:
            raise RayUnavailable("the Ray cards of this object were shut down (Free())")
        ray = self.ray
        key = tuple((id(c), c.memmap.base, c.memmap.end) for c in residents)
        stale = [c for c in cards if self.actors.get(c.index) is None or self.actors[c.index].key != key]
        image_refs = _put_images(ray, stale)
        plans = {c.index: card_plan(jobs, f) for f, c in enumerate(cards)}
        inputs = {c.index: ray.put(card_images(jobs, plans[c.index])) for c in cards}
        njobs = len(jobs)
        def expected_cycles():          # the schedule of the card's programs (RTL executors only)
            from hw.progress import expected_total
            return expected_total(cfg, cards[0].memory, programs)

        timeout = reply_timeout(card_macs(jobs), executor, expected_cycles)   # the cards run the same programs
        deadlines: dict[int, float] = {}

        def submit(card):
            ref = self.actors[card.index].handle.run.remote(key, executor, cfg, programs, check_hazards,
                                                            plans[card.index], inputs[card.index], njobs)
            deadlines[card.index] = float("inf") if timeout is None else time.monotonic() + timeout
            return ref

        results: dict[int, tuple] = {}
        try:
            self._prepare(cards, len(cards), key, image_refs)
            pending = {submit(c): c for c in cards}
            retried: set[int] = set()
            while pending:
                first = min(pending, key=lambda r: deadlines[pending[r].index])
                left = deadlines[pending[first].index] - time.monotonic()
                ready, _ = ray.wait(list(pending), num_returns=1,
                                    timeout=None if left == float("inf") else max(0.0, left))
                if not ready:
                    if time.monotonic() < deadlines[pending[first].index]:
                        continue
                    raise self._timed_out(pending[first].index, timeout, "answer",
                                          "its modelled work: runtime.ray_cards.reply_timeout")
                card = pending.pop(ready[0])
                try:
                    results[card.index] = ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:       # the executor raised: the caller's error
                    raise _cause(e) from None
                except ray.exceptions.RayActorError as e:
                    placed = self.actors.get(card.index)
                    node = placed.where if placed is not None else {}
                    self.actors.pop(card.index, None)
                    if not self._node_alive(node.get("node_id", "")):
                        raise NodeLost(f"card {card.index}: its Ray node {node.get('node', '?')} (id "
                                       f"{node.get('node_id', '?')[:12]}) left the cluster during the run; "
                                       f"nothing was returned for its {len(plans[card.index])} image(s)") from None
                    if card.index in retried:
                        raise RayUnavailable(f"card {card.index}: its Ray actor died twice in one call: {e}") from None
                    retried.add(card.index)
                    self.restarts += 1
                    warnings.warn(CardRestarted(
                        f"card {card.index}: its Ray actor (pid {node.get('pid', '?')} on {node.get('node', '?')}) "
                        f"died; started afresh, its {len(plans[card.index])} image(s) run again"), stacklevel=4)
                    image_refs.update(_put_images(ray, [card]))
                    self._prepare([card], len(cards), key, image_refs)
                    pending[submit(card)] = card
        except BaseException:
            # Ctrl-C, a lost node, an executor error: stop the remote work of this call at once
            # (an actor is started afresh, and loaded, at the next call)
            for c in cards:
                if c.index not in results:
                    self._kill(c.index)
            raise
        return [results[c.index] for c in cards]

    def describe(self, cards) -> list[dict]:
        out = []
        for c in cards:
            placed = self.actors.get(c.index)
            out.append({"card": c.index, "engine": "ray",
                        **({"node": placed.where["node"], "node_id": placed.where["node_id"],
                            "pid": placed.where["pid"]} if placed else {"node": None, "node_id": None, "pid": None})})
        return out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.ray.is_initialized():
            for index in list(self.actors):
                self._kill(index)
        self.actors.clear()
        SESSION.release()


def _put_images(ray, cards) -> dict:
    """One object per distinct memory image among ``cards`` (the cards of one load hold the same
    image: it crosses to the object store once)."""
    refs, seen = {}, []
    for c in cards:
        for other, ref in seen:
            if len(other.memory) == len(c.memory) and np.array_equal(other.memory, c.memory):
                refs[c.index] = ref
                break
        else:
            ref = ray.put(c.memory)
            seen.append((c, ref))
            refs[c.index] = ref
    return refs


def _cause(e) -> BaseException:
    """The exception the executor raised inside the actor (a SimError stays a SimError)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else RuntimeError(str(e))


# ------------------------------------------------------------------------------------------------
# Hooks for runtime.mdla
# ------------------------------------------------------------------------------------------------

_ENGINES: dict[object, RayCards] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(obj) -> RayCards:
    """The Ray cards of MDLA object ``obj`` (started at its first call in 'ray' mode)."""
    owner = obj._owner
    with _ENGINES_LOCK:
        eng = _ENGINES.get(owner)
        if eng is None or eng.closed:
            eng = RayCards(resolve_address(obj._flags["ray_address"]), bool(obj._flags["ray_dashboard"]))
            _ENGINES[owner] = eng
            weakref.finalize(obj, release, owner)
        return eng


def release(owner) -> None:
    """Shut down the Ray cards of an object (Free(), its collection); the local Ray instance goes
    with the last object using it."""
    with _ENGINES_LOCK:
        eng = _ENGINES.pop(owner, None)
    if eng is not None:
        eng.close()


def run_cards(obj, jobs, executor, programs, check_hazards):
    """``runtime.driver._run_cards`` on Ray: per card (statistics, outputs, input saturations)."""
    from .driver import _objects_on
    cards = obj._cards
    residents = [o._compiled for o in _objects_on(cards)]
    cfg = jobs[0][0].cfg
    return engine_for(obj).run(cards[:jobs[0][0].parallel.nfpgas], jobs, executor, cfg, programs,
                               check_hazards, residents)


def engine_info(obj) -> str:
    """GetInfo('engine'): what runs the cards of ``obj``."""
    mode = obj._flags["workers"]
    if mode != "ray":
        return f"{mode} (this process, one card after another)"
    eng = _ENGINES.get(obj._owner)
    if eng is None or eng.closed:
        where = resolve_address(obj._flags["ray_address"]) or "a local instance on 127.0.0.1"
        return f"ray (not started yet: {where})"
    ray = eng.ray
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    kind = "local instance on 127.0.0.1" if SESSION.local else "cluster"
    return f"ray {ray.__version__} ({kind} at {SESSION.address}, {nodes} node(s), {len(eng.actors)} card actor(s))"


def cards_info(obj) -> list[dict]:
    """GetInfo('cards'): per card of ``obj``, where it runs."""
    eng = _ENGINES.get(obj._owner)
    if obj._flags["workers"] == "ray" and eng is not None and not eng.closed:
        return eng.describe(obj._cards)
    return [{"card": c.index, "engine": "here", "pid": os.getpid()} for c in obj._cards]


def check_maxfpga(flags) -> None:
    if flags["maxfpga"] > LOCAL_MAX_CARDS and flags["workers"] != "ray":
        raise ValueError(f"flag 'maxfpga': more than {LOCAL_MAX_CARDS} simulated cards need workers='ray' "
                         f"(set it first), got {flags['maxfpga']}")
