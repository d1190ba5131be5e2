"""Every code block of the two tutorials in ../shared/seeds runs as written (examples/tutorial_*),
on models our builder writes, and its outputs have the right shape and match onnxruntime in
float32 within the SDK-metric budget: mean |error| / max |ref| <= 1 %, max <= 5 %."""
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
from _models import BLOCKS, MODEL_FILES, ensure_models, run_block  # noqa: E402

BUDGET_MEAN, BUDGET_MAX = 1.0, 5.0


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The model files, written once by the examples' own helper."""
    d = tmp_path_factory.mktemp("models")
    cwd = os.getcwd()
    os.chdir(d)
    try:
        ensure_models(*MODEL_FILES)
    finally:
        os.chdir(cwd)
    return d


def test_every_block_has_an_example():
    assert len(BLOCKS) == 12
    for script, _, _ in BLOCKS:
        assert (EXAMPLES / script).exists(), script


@pytest.mark.parametrize("script,checks", [(s, c) for s, _, c in BLOCKS], ids=[s for s, _, _ in BLOCKS])
def test_tutorial_block(script, checks, model_dir, tmp_path):
    for f in model_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    r = run_block(script, checks, str(tmp_path))
    assert len(r["scores"]) == len(checks)
    for sc in r["scores"]:
        assert sc["size_ok"], f"{sc['output']}: {sc['shape']} vs reference {sc['ref_shape']}"
        if len(sc["shape"]) > 1:
            assert sc["shape"] == sc["ref_shape"], f"{sc['output']}: {sc['shape']} vs reference {sc['ref_shape']}"
        mean, mx = sc["error"]
        assert mean <= BUDGET_MEAN and mx <= BUDGET_MAX, f"{sc['output']}: error {mean:.3f} % / {mx:.3f} %"
    assert r["modelled_ms"] and all(ms > 0 for ms in r["modelled_ms"])
