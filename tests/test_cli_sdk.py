"""The CLI as the API: `mdla compile` with the batching flags, `mdla zoo --help` listing the models,
progress bars, the seed flag, every user error without a traceback; Run_th on an empty batch;
`import microndla` loads nothing heavy."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import microndla
import zoo
from runtime.cli import main
from zoo import small_cnn

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli") / "m.onnx"
    onnx.save(small_cnn(seed=3), str(p))
    return str(p)


def _cli(*args, progress=False):
    env = {"MDLA_PROGRESS_DELAY": "0"} if progress else {"MDLA_PROGRESS": "0"}
    return CliRunner(env=env).invoke(main, [str(a) for a in args])


def _user_error(r, code=None, match=""):
    """A clean error: a non-zero exit with a message, no traceback, no escaped exception."""
    assert r.exit_code != 0, r.output
    assert code is None or r.exit_code == code, r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output and match in r.output, r.output


def test_zoo_help_lists_the_models():
    r = _cli("zoo", "--help")
    assert r.exit_code == 0
    for name in list(zoo.MODELS) + list(zoo.SEQUENCE_MODELS):
        assert name in r.output


def test_zoo_output_under_a_file_and_unknown_name(tmp_path):
    (tmp_path / "afile").write_text("")
    _user_error(_cli("zoo", "small_cnn", "-o", tmp_path / "afile" / "x.onnx"), 2, "is a file, not a directory")
    _user_error(_cli("zoo", "nosuch", "-o", tmp_path / "x.onnx"), 1, "unknown zoo model")
    r = _cli("zoo", "small_cnn", "-o", tmp_path / "new" / "dir" / "cnn.onnx")
    assert r.exit_code == 0 and (tmp_path / "new" / "dir" / "cnn.onnx").exists()


def test_profile_output_to_bad_paths(model, tmp_path):
    _user_error(_cli("profile", model, "-o", tmp_path / "missing" / "p.png"), 2, "does not exist")
    _user_error(_cli("profile", model, "-o", tmp_path), 2, "directory")
    _user_error(_cli("profile", model, "--trace", tmp_path / "missing" / "t.json"), 2, "does not exist")
    _user_error(_cli("profile", model, "-o", tmp_path / "p.nosuchformat"), 1, "Error")


def test_demo_with_a_bogus_config_fails_at_once():
    _user_error(_cli("demo", "--config", "bogus"), 2, "unknown hardware configuration 'bogus'")


@pytest.mark.parametrize("args,match", [
    (["--flag", "nosuch=1"], "unknown flag"), (["--flag", "nfpgas"], "NAME=VALUE"),
    (["--nclusters", "9"], "clusters per card"), (["--nfpgas", "0"], "0"),
])
def test_compile_user_errors(model, tmp_path, args, match):
    _user_error(_cli("compile", model, "-o", tmp_path / "m.bin", *args), None, match)


def test_compile_bad_output_and_run_bad_flag(model, tmp_path):
    _user_error(_cli("compile", model, "-o", tmp_path / "missing" / "m.bin"), 2, "does not exist")
    _user_error(_cli("run", model, "--flag", "debug=#"), 1, "unknown debug letter")
    _user_error(_cli("run", str(tmp_path / "none.bin")), 2, "does not exist")


def test_compile_with_the_parallelism_flags(model, tmp_path):
    out = tmp_path / "p.bin"
    r = _cli("compile", model, "-o", out, "--nfpgas", 2, "--nclusters", 2, "--imgs-per-cluster", 2)
    assert r.exit_code == 0, r.output
    assert "2 card(s) x clusters 0..1 x 2 image(s) per cluster" in r.output
    ie = microndla.MDLA()
    ie.Init(str(out))
    assert (ie.GetInfo("batch"), ie.GetInfo("nfpgas"), ie.GetInfo("nclusters"), ie.GetInfo("imgs_per_cluster")) == (8, 2, 2, 2)
    split = tmp_path / "s.bin"
    assert _cli("compile", model, "-o", split, "--nclusters", 2, "--clustersbatchmode", "--firstcluster", 1).exit_code == 0
    ie = microndla.MDLA()
    ie.Init(str(split))
    assert (ie.GetInfo("batch"), ie.GetInfo("firstcluster"), ie.GetInfo("clustersbatchmode")) == (1, 1, 1)
    r = _cli("run", out)
    assert r.exit_code == 0 and "output output (8, 10)" in r.output


def test_run_seed_option_and_seed_flag(model):
    a, b, c = (_cli("run", model, *extra).output for extra in (["--seed", 5], ["--flag", "seed=5"], []))
    metrics = lambda out: [l for l in out.splitlines() if l.startswith("output ")]
    assert metrics(a) == metrics(b) and metrics(a) != metrics(c)


def test_progress_bars_name_the_steps(model, tmp_path):
    r = _cli("run", model, progress=True)
    assert r.exit_code == 0 and "mdla run" in r.stderr and "running on the functional simulator" in r.stderr
    r = _cli("compile", model, "-o", tmp_path / "m.bin", progress=True)
    assert r.exit_code == 0 and "compiling m.onnx" in r.stderr
    r = _cli("profile", model, progress=True)
    assert r.exit_code == 0 and "traced run" in r.stderr
    r = _cli("run", model)                               # MDLA_PROGRESS=0: no bar
    assert "mdla run" not in r.stderr


def test_progress_leaves_no_thread_behind(model):
    """A live thread would make a blocked GetResult wait for it instead of raising (runtime.streaming):
    neither the bar's ticker nor a tqdm monitor may outlive the command."""
    import threading
    before = set(threading.enumerate())
    assert _cli("run", model, progress=True).exit_code == 0
    assert set(threading.enumerate()) <= before


def test_demo_progress_names_each_step():
    r = _cli("demo", "--no-tutorials", progress=True)
    assert r.exit_code == 0, r.output
    assert "small CNN on reference" in r.stderr and "small CNN on small" in r.stderr
    assert "all checks passed" in r.stdout


def test_demo_counts_a_step_per_tutorial_block():
    from runtime.demo import tutorial_blocks
    sys.path.insert(0, str(ROOT / "examples"))
    from _models import BLOCKS
    assert tutorial_blocks() == len(BLOCKS) > 0


def test_run_th_on_an_empty_batch(model):
    ie = microndla.MDLA()
    ie.Compile(model)
    for run in (ie.Run_th, ie.Run, ie.Run_sw):
        with pytest.raises(ValueError, match="empty batch"):
            run(np.zeros((0, 3, 32, 32), np.float32))


HEAVY = ("onnxruntime", "amaranth", "ray", "torch")


def _modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY + ('onnx', 'runtime.mdla')!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True).stdout
    return eval(out)


def test_import_microndla_loads_nothing_heavy():
    assert _modules_after("import microndla") == []
    loaded = _modules_after("import microndla\nmicrondla.MDLA")
    assert "runtime.mdla" in loaded and not set(loaded) & set(HEAVY)
    assert _modules_after("from microndla import MDLA, MDLAError\nimport microndla\nassert microndla.__version__")
