"""What SDK users relied on to see what happens: debug letters b, n, i and the per-layer profile."""
import numpy as np
import onnx
import pytest

import microndla
from runtime.profile import format_table, layer_lines, plot, profile
from zoo import resnet18, small_cnn


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    p = tmp_path_factory.mktemp("prof") / "r18.onnx"
    onnx.save(resnet18(seed=0, input_shape=(1, 3, 64, 64)), str(p))
    return str(p)


def test_profile_accounts_for_every_cycle_and_mac(r18, tmp_path):
    ie = microndla.MDLA()
    ie.Compile(r18)
    rows = profile(ie)
    assert [r.name for r in rows] == [l.name for l in ie._compiled.layers]
    assert sum(r.macs for r in rows) == sum(l.macs for l in ie._compiled.layers)
    # layers run one after the other: their spans tile the run up to the final boundary instructions
    assert rows[0].start == 1
    assert 0.99 * ie.GetInfo("hwcycles") <= sum(r.cycles for r in rows) <= ie.GetInfo("hwcycles")
    for r in rows:
        assert 0 <= r.utilisation <= 1 and r.bound in ("compute", "memory")
        assert (r.why == "") == (r.utilisation >= 0.85)
    fc = rows[-1]
    assert fc.kind == "fc" and fc.bound == "memory"           # weights streamed for one image
    assert "total" in format_table(rows)
    png = tmp_path / "p.png"
    plot(rows, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ie.Free()


def test_profile_of_a_model_with_host_stages(tmp_path):
    """heterogeneous: a row per host stage (no cycles) between the DLA stages' layers, which follow
    one another in modelled time; the mdla command prints the same table."""
    from click.testing import CliRunner

    from runtime.cli import main
    from tests.test_heterogeneous import with_middle
    path = tmp_path / "mid.onnx"
    onnx.save(with_middle("lrn"), str(path))
    ie = microndla.MDLA()
    ie.SetFlag("heterogeneous", 1)
    ie.Compile(str(path))
    rows = profile(ie)
    c = ie._compiled
    assert [r.name for r in rows if r.kind != "host"] == [l.name for l in c.layers]
    host = [r for r in rows if r.kind == "host"]
    assert [(r.name, r.mode, r.cycles, r.macs, r.bound) for r in host] == [("lrn", "middle", 0, 0, "host")]
    assert "runs on the host (LRN)" in host[0].why
    k = rows.index(host[0])
    before, after = rows[:k], rows[k + 1:]
    assert before and after and host[0].start >= max(r.start + r.cycles for r in before)
    assert min(r.start for r in after) >= host[0].start       # the second DLA stage comes after the first
    assert sum(r.macs for r in rows) == sum(l.macs for l in c.layers)
    assert 0.98 * ie.GetInfo("hwcycles") <= sum(r.cycles for r in rows) <= ie.GetInfo("hwcycles")
    plot(rows, str(tmp_path / "p.png"))
    ie.Free()
    result = CliRunner().invoke(main, ["profile", str(path), "-f", "heterogeneous=1"])
    assert result.exit_code == 0, result.output
    assert "lrn" in result.output and "host" in result.output


def test_debug_letters(tmp_path, capsys, monkeypatch):
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(seed=0), str(path))
    monkeypatch.chdir(tmp_path)
    ie = microndla.MDLA()
    ie.SetFlag({"debug": "bni", "nfpgas": 2, "nclusters": 2})
    ie.Compile(str(path))
    out = capsys.readouterr().out
    assert "type conv name=conv1 id=0 in=(Z1,H32,W32,P3) out=(Z1,H32,W32,P16) k=(Z1,H3,W3)" in out
    assert "type linear name=fc" in out and "pad=(Z0,Ze0,T1,B1,R1,L1)" in out
    # instruction dumps per card and cluster
    files = sorted(p.name for p in tmp_path.glob("instr*.txt"))
    assert files == ["instr0_0_0.txt", "instr0_1_0.txt", "instr1_0_0.txt", "instr1_1_0.txt"]
    assert "CONV mv_mask=" in (tmp_path / "instr0_1_0.txt").read_text()
    ie.Run(np.zeros((4, 3, 32, 32), np.float32))
    out = capsys.readouterr().out
    assert "Batch 4, cards 2, clusters 2" in out and "efficiency" in out and "bytes moved" in out
    ie.Free()


def test_layer_lines_name_residuals(r18):
    ie = microndla.MDLA()
    ie.Compile(r18)
    lines = layer_lines(ie._compiled)
    assert sum("residual=" in l for l in lines) == 8     # ResNet-18's eight residual adds, fused
    ie.Free()


def test_roofline_points_are_the_table(r18, tmp_path):
    """The roofline's points are the table's op/B and Gop/s columns; its labels the worst layers the
    table names; the rows' numbers follow from the cycles, MACs and bytes at the configured clock."""
    from runtime.profile import figure, roof, worst
    ie = microndla.MDLA()
    ie.Compile(r18)
    rows = profile(ie)
    c = ie._compiled
    r = roof(c.cfg, c.parallel)
    assert r.peak_gops == 2 * c.cfg.macs_per_cluster * c.cfg.clock_mhz / 1000
    assert r.bandwidth_gbs == c.cfg.beat_bytes * c.cfg.clock_mhz / 1000
    from compiler.driver import Parallel
    four = roof(c.cfg, Parallel(clusters=(0, 1, 2, 3)))              # four images at once share the port
    assert (four.peak_gops, four.bandwidth_gbs, four.port_sharers) == (r.peak_gops, r.bandwidth_gbs, 4)
    split = roof(c.cfg, Parallel(clusters=(0, 1, 2, 3), split=True))  # four clusters on one image
    assert (split.peak_gops, split.bandwidth_gbs) == (4 * r.peak_gops, r.bandwidth_gbs)
    for row in rows:
        moved = row.bytes_loaded + row.bytes_stored
        assert row.ops_per_byte == pytest.approx(2 * row.macs / moved)
        assert row.gops == pytest.approx(2 * row.macs / (row.cycles / (c.cfg.clock_mhz * 1e6)) / 1e9)
        if row.macs:
            assert row.roof_gops == pytest.approx(min(r.peak_gops, r.bandwidth_gbs * row.ops_per_byte))
            assert row.gops <= row.roof_gops * (1 + 1e-9)      # nothing beats the roofline
    fig = figure(rows, "r18", r)
    ax = next(a for a in fig.axes if a.get_title().startswith("roofline"))
    plotted = {}
    for coll in ax.collections:
        if (coll.get_gid() or "").startswith("layers-"):
            for x, y in coll.get_offsets():
                plotted[(round(float(x), 9), round(float(y), 9))] = coll.get_gid()[7:]
    want = {(round(row.ops_per_byte, 9), round(row.gops, 9)): row.bound for row in rows if row.macs}
    assert plotted == want
    # the table prints the same numbers, row by row
    table = format_table(rows).splitlines()
    for row in rows:
        line = next(l for l in table if l.startswith(row.name[:17] + " "))
        if row.macs:
            assert f"{row.ops_per_byte:9.2f}{row.gops:9.2f}" in line
    labels = [t.get_text().split(". ", 1)[1].split(":")[0] for t in ax.texts if t.get_gid() == "worst"]
    assert labels == [w.name for w in worst(rows)] and len(labels) == 5
    assert "farthest below the roofline: " + labels[0] in format_table(rows)
    assert any("total:" in t.get_text() for t in ax.texts) and ax.get_legend() is not None
    # the whole run's star: total operations over total bytes and total time
    star = next(coll for coll in ax.collections if coll.get_gid() == "total").get_offsets()[0]
    ops = sum(2 * row.macs for row in rows)
    assert star[0] == pytest.approx(ops / sum(row.bytes_loaded + row.bytes_stored for row in rows))
    assert star[1] == pytest.approx(ops * c.cfg.clock_mhz / 1e3 / sum(row.cycles for row in rows))
    import matplotlib.pyplot as plt
    plt.close(fig)
    ie.Free()


def test_profile_command_writes_trace_and_roofline(tmp_path):
    """`mdla profile model --trace t.json -o p.png`: the table, a PNG with the roofline, a trace that
    validates and has a track per engine."""
    import json

    from click.testing import CliRunner

    from runtime.cli import main
    from tests.test_trace import validate
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(seed=0), str(path))
    png, js = tmp_path / "p.png", tmp_path / "t.json"
    result = CliRunner().invoke(main, ["profile", str(path), "--trace", str(js), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert "op/B" in result.output and "farthest below the roofline" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(js.read_text())
    validate(doc)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"cluster 0 fetch", "cluster 0 load", "cluster 0 compute", "cluster 0 store"} <= names
    result = CliRunner().invoke(main, ["run", str(path), "--trace", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    validate(json.loads((tmp_path / "r.json").read_text()))
