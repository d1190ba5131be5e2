import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the project root first: `hw` must be the RTL package, never the test package tests/hw (tests/ is a
# package, see tests/__init__.py, so pytest names that one tests.hw); else hw.card & co. would come
# from wherever the editable install points (another working copy), not from this one
while str(ROOT) in sys.path:
    sys.path.remove(str(ROOT))
sys.path.insert(0, str(ROOT))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests (full networks)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_cnn_onnx(tmp_path_factory):
    """The zoo's small_cnn (seed 3, 3x32x32 input) saved once per test session: the model of the
    runtime, flag, .bin and parallel tests. Tests that need a second, different model save their own."""
    import onnx
    from zoo import small_cnn
    p = tmp_path_factory.mktemp("small_cnn") / "small_cnn.onnx"
    onnx.save(small_cnn(seed=3), str(p))
    return str(p)
