"""The SDK API on the RTL: SetFlag('simulator', 'amaranth') runs Run() on the Amaranth card and
gives the functional model's bits and cycles; SetFlag('vcd', path) writes the waveform."""
import os

import numpy as np
import pytest

from tests.hw.util import assert_run_equals_run_sw
from zoo import kernels


def test_run_on_amaranth_equals_functional(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32)
    vcd = tmp_path / "conv.vcd"
    assert_run_equals_run_sw(kernels.conv_model(4, 8, 6, 6, 3, 1, 1, relu=True, seed=3), x, tmp_path,
                             {"simulator": "amaranth", "vcd": str(vcd)})
    # GTKWave's own VCD loader reads the whole waveform (what the viewer does when it opens it)
    import shutil
    import subprocess
    text = vcd.read_text()
    assert "$enddefinitions" in text and "cluster" in text
    if shutil.which("vcd2fst") is None:
        assert not os.environ.get("CI"), "GTKWave (vcd2fst) is missing: scripts/setup.sh installs it"
        pytest.skip("GTKWave is not installed here (scripts/setup.sh installs it)")
    fst = tmp_path / "conv.fst"
    done = subprocess.run(["vcd2fst", "-v", str(vcd), "-f", str(fst)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and fst.stat().st_size > 0, done.stderr


def test_run_residual_on_amaranth_equals_functional(tmp_path):
    """A Conv+BN+Add+Relu block (a CONV with a fused residual) through the SDK API on the RTL."""
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)
    assert_run_equals_run_sw(kernels.residual_model(4, 6, 6, 1, seed=2), x, tmp_path, {"simulator": "amaranth"})
