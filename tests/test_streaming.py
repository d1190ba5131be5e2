"""PutInput/GetResult: user objects round-trip, two buffers, non-blocking mode, the end-of-stream
marker, the SDK's threaded pattern under load, and clear errors where the SDK would deadlock."""
import threading

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
