"""PutInput/GetResult: user objects round-trip, two buffers, non-blocking mode, the end-of-stream
marker, the SDK's threaded pattern under load, and clear errors where the SDK would deadlock."""
import threading
import time

import numpy as np
import onnx
import pytest

import microndla
from zoo import kernels


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    p = tmp_path_factory.mktemp("stream") / "conv.onnx"
    onnx.save(kernels.conv_model(3, 8, 8, 8, 3, 1, 1, relu=True, seed=2), str(p))
    return str(p)


@pytest.fixture
def ie(model):
    ie = microndla.MDLA()
    ie.Compile(model)
    yield ie
    ie.Free()


def test_put_get_round_trip(ie):
    x = np.random.default_rng(0).random((2, 1, 3, 8, 8), dtype=np.float32)
    obj = {"name": "first", "list": [1, 2]}
    assert ie.PutInput(x[0], obj) is True
    assert ie.PutInput(x[1], "second") is True
    y0, o0 = ie.GetResult()
    y1, o1 = ie.GetResult()
    assert o0 is obj and o1 == "second"
    assert np.array_equal(y0, ie.Run(x[0])) and np.array_equal(y1, ie.Run(x[1]))


def test_end_of_stream_marker(ie):
    ie.PutInput(np.zeros((1, 3, 8, 8), np.float32), 1)
    ie.PutInput(None, "end")
    assert ie.GetResult()[1] == 1
    assert ie.GetResult() == (None, "end")


def test_third_put_without_a_consumer_raises_instead_of_deadlocking(ie):
    x = np.zeros((1, 3, 8, 8), np.float32)
    ie.PutInput(x, 1)
    ie.PutInput(x, 2)
    with pytest.raises(microndla.MDLAError, match="both input buffers"):
        ie.PutInput(x, 3)
    assert ie.GetResult()[1] == 1 and ie.GetResult()[1] == 2


def test_get_with_nothing_pending_raises(ie):
    with pytest.raises(microndla.MDLAError, match="nothing was put"):
        ie.GetResult()


def test_non_blocking_mode(ie):
    ie.SetFlag("blockingmode", 0)
    x = np.zeros((1, 3, 8, 8), np.float32)
    assert ie.GetResult() is None
    assert ie.PutInput(x, 1) and ie.PutInput(x, 2)
    assert ie.PutInput(x, 3) is False          # both buffers busy: the SDK's -99
    got = []
    while len(got) < 2:
        r = ie.GetResult()
        if r is not None:
            got.append(r[1])
    assert got == [1, 2]


def test_bad_input_is_reported_at_put(ie):
    with pytest.raises(ValueError, match="shape"):
        ie.PutInput(np.zeros((1, 3, 9, 9), np.float32), None)


def test_threaded_stream_of_hundreds_keeps_order_and_objects(ie):
    n = 300
    rng = np.random.default_rng(5)
    xs = rng.random((16, 1, 3, 8, 8), dtype=np.float32)
    expected = [ie.Run(x) for x in xs]
    received = []

    def consumer():
        while True:
            y, obj = ie.GetResult()
            if obj is None:
                break
            received.append((obj, y))

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(n):
        assert ie.PutInput(xs[i % 16], i)
    ie.PutInput(None, None)
    t.join(timeout=120)
    assert not t.is_alive()
    assert [o for o, _ in received] == list(range(n))
    assert all(np.array_equal(y, expected[o % 16]) for o, y in received)


def test_put_input_copies_the_buffer_a_producer_refills(ie):
    """The SDK's threaded batch demo refills one buffer after each PutInput: each result must be
    that of the image in the buffer at the time of the call."""
    rng = np.random.default_rng(11)
    xs = rng.random((6, 1, 3, 8, 8), dtype=np.float32)
    expected = [ie.Run(x) for x in xs]
    buf = np.empty((1, 3, 8, 8), np.float32)
    received = []

    def consumer():
        while True:
            y, obj = ie.GetResult()
            if obj is None:
                return
            received.append((obj, y))

    t = threading.Thread(target=consumer)
    t.start()
    for i, x in enumerate(xs):
        buf[...] = x                   # the same buffer every time
        assert ie.PutInput(buf, i)
    buf[...] = 0
    ie.PutInput(None, None)
    t.join(timeout=60)
    assert [o for o, _ in received] == list(range(len(xs)))
    assert all(np.array_equal(y, expected[o]) for o, y in received)


def test_put_input_copies_single_threaded(ie):
    x = np.random.default_rng(12).random((1, 3, 8, 8), dtype=np.float32)
    want = ie.Run(x)
    ie.PutInput(x, 0)
    x[...] = 0
    y, _ = ie.GetResult()
    assert np.array_equal(y, want)


def test_a_producer_slower_than_a_few_seconds_is_no_deadlock(ie):
    """A consumer that waits for a producer which starts late (it prepares its data first) waits,
    instead of the false 'the SDK would deadlock' error."""
    x = np.zeros((1, 3, 8, 8), np.float32)
    got, errors = [], []

    def producer():
        import time
        time.sleep(2.5)
        ie.PutInput(x, "late")

    def consumer():
        try:
            got.append(ie.GetResult()[1])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    c = threading.Thread(target=consumer)
    p = threading.Thread(target=producer)
    c.start()
    p.start()
    p.join(30)
    c.join(30)
    assert errors == [] and got == ["late"]


def test_a_stall_beyond_the_documented_timeout_is_reported(ie):
    ie._stream.stall_s = 0.3
    stop = threading.Event()
    idle = threading.Thread(target=lambda: stop.wait() and ie)   # alive, holds the object, never calls it
    idle.start()
    try:
        with pytest.raises(microndla.MDLAError, match="none called it in 0.3 s"):
            ie.GetResult()
    finally:
        stop.set()
        idle.join()


def test_free_while_another_thread_waits_in_get_result(ie):
    errors = []
    started = threading.Event()

    def consumer():
        started.set()
        try:
            ie.GetResult()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=consumer)
    t.start()
    started.wait()
    import time
    time.sleep(0.2)                  # the consumer is waiting for a PutInput
    ie.Free()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], microndla.MDLAError), errors
    assert "freed" in str(errors[0])


def test_free_while_a_result_is_being_computed(model):
    """Free waits for the run in progress: its GetResult still returns that result."""
    ie = microndla.MDLA()
    ie.Compile(model)
    x = np.random.default_rng(3).random((1, 3, 8, 8), dtype=np.float32)
    want = ie.Run(x)
    results, errors = [], []

    def consumer():
        try:
            results.append(ie.GetResult())
        except microndla.MDLAError as e:
            errors.append(e)

    ie.PutInput(x, "a")
    t = threading.Thread(target=consumer)
    t.start()
    ie.Free()
    t.join(30)
    # either the run had started (its result comes back) or Free came first (a clear error)
    assert len(results) + len(errors) == 1
    if results:
        assert np.array_equal(results[0][0], want) and results[0][1] == "a"
    else:
        assert "freed" in str(errors[0])
    with pytest.raises(microndla.MDLAError, match="no model loaded"):
        ie.PutInput(x, "b")


def test_the_simulators_own_threads_do_not_delay_the_deadlock_error(ie):
    # The functional model's GEMM pool outlives a Run; its idle threads must not count as possible
    # producers (a blocked GetResult waited STALL_S = 300 s for them in the full test run).
    from sim import units
    from runtime.streaming import INTERNAL_THREAD_PREFIX
    units._pool().submit(lambda: None).result()
    assert any(t.name.startswith(INTERNAL_THREAD_PREFIX + "sim") for t in threading.enumerate())
    start = time.monotonic()
    with pytest.raises(microndla.MDLAError, match="nothing was put"):
        ie.GetResult()
    assert time.monotonic() - start < 60      # raised at once, not after STALL_S


def test_threads_that_cannot_reach_the_object_do_not_delay_the_deadlock_error(model):
    """A blocked GetResult waits only for threads that could ever call PutInput on its object: live
    threads that cannot reach it (one idle, one working on another MDLA object, the main thread,
    which never sees the object) can never unblock it, so the error comes at once, not after STALL_S."""
    other = microndla.MDLA()
    other.Compile(model)
    stop = threading.Event()
    idle = threading.Thread(target=stop.wait, name="idle-user-thread")
    busy = threading.Thread(target=lambda: stop.wait() or other.Run(np.zeros((1, 3, 8, 8), np.float32)),
                            name="other-objects-thread")
    idle.start()
    busy.start()
    errors, done = [], threading.Event()

    def consumer():                           # the only thread that ever holds its object
        ie = microndla.MDLA()
        ie.Compile(model)
        ie._stream.stall_s = 1e9              # were the others counted, GetResult would wait for ever
        try:
            ie.GetResult()
        except microndla.MDLAError as e:
            errors.append(str(e))
        finally:
            ie.Free()
            done.set()
    t = threading.Thread(target=consumer, name="consumer", daemon=True)   # (left behind if it waits for ever)
    t.start()
    try:
        assert done.wait(120), "GetResult waited for threads that can never call PutInput"
        assert len(errors) == 1 and "nothing was put" in errors[0] and "cannot reach this object" in errors[0]
        assert "idle-user-thread" in errors[0] and "other-objects-thread" in errors[0]
    finally:
        stop.set()
        idle.join()
        busy.join()
        t.join(5)
        other.Free()


def test_a_thread_that_holds_the_object_still_produces(ie):
    """A producer that has not called PutInput yet but holds the object (through its own object
    here, not a closure over the MDLA one) is waited for: its input arrives and is returned."""
    x = np.zeros((1, 3, 8, 8), np.float32)
    ready = threading.Event()

    class Producer:
        def __init__(self, engine):
            self.engine = engine

        def run(self):
            ready.wait(30)
            self.engine.PutInput(x, "from-the-producer")

    t = threading.Thread(target=Producer(ie).run)
    t.start()
    got = []

    def consumer():
        got.append(ie.GetResult()[1])
    c = threading.Thread(target=consumer)
    c.start()
    time.sleep(0.3)                               # the consumer is waiting; then the producer goes
    ready.set()
    t.join(30)
    c.join(30)
    assert got == ["from-the-producer"]
