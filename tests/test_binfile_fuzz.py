"""Fuzz of the .bin loader: corruptions with the checksum recomputed afterwards, so that they reach
the section checks (``compiler.bincheck``). Every outcome must be a ``BinFormatError`` at ``Init``,
or a model that loads and runs (the corruption hit a value no check can tell from a real one, such
as a weight), or a ``SimError`` of the simulator naming the instruction that cannot execute (a
code word that decodes to a valid instruction with other operands, for example a token popped
that is never pushed); never another exception, and never an allocation beyond the card memory
of the file's configuration."""
import hashlib
import json
import os
import random

import numpy as np
import onnx
import pytest

import microndla
from compiler import binfile
from compiler.binfile import BinFormatError
from runtime import cards
from sim.card import SimError
from zoo import small_cnn

ITERATIONS = int(os.environ.get("MDLA_FUZZ_ITERATIONS", 240))     # about 6 s on one core


@pytest.fixture(scope="module")
def good_bin(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    onnx.save(small_cnn(seed=3), str(d / "m.onnx"))
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    ie.Compile(str(d / "m.onnx"), outfile=str(d / "m.bin"))
    return (d / "m.bin").read_bytes()


def _resum(data: bytearray) -> bytes:
    data[16:48] = hashlib.sha256(bytes(data[48:])).digest()
    return bytes(data)


def _sections(data: bytes) -> list[tuple[str, bytes]]:
    n = int.from_bytes(data[12:16], "little")
    return list(binfile._sections(data, n, "good").items())


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for k, v in enumerate(obj):
            yield from _leaves(v, path + (k,))
    else:
        yield path, obj


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def mutate(good: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "json", "json", "json", "section", "table"])
    if kind == "flip":                       # random bytes anywhere after the checksum
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(48, len(data))] ^= 1 << rng.randrange(8)
        return kind, _resum(data)
    secs = _sections(good)
    if kind == "json":                       # one value of a JSON section replaced
        names = [k for k, (n, _) in enumerate(secs) if n in ("config", "memmap", "io", "parallel", "layers",
                                                             "graph.json", "meta", "spans", "outputs")]
        k = rng.choice(names)
        name, raw = secs[k]
        obj = json.loads(raw)
        leaves = list(_leaves(obj))
        if leaves and leaves[0][0]:
            path, v = rng.choice(leaves)
            new = rng.choice([0, -1, 1, 2 ** 40, 2 ** 63, "x", None, [], 1.5,
                              (v * 1000 if isinstance(v, int) and not isinstance(v, bool) else 7),
                              (v + 1 if isinstance(v, int) and not isinstance(v, bool) else True)])
            _set(obj, path, new)
        else:
            obj = rng.choice([[], {}, 0, "x"])
        secs[k] = (name, json.dumps(obj).encode())
        return f"json {name}", binfile._pack(secs)
    if kind == "section":                    # a section emptied, dropped, cut or renamed
        k = rng.randrange(len(secs))
        name, raw = secs[k]
        how = rng.choice(["empty", "drop", "cut", "rename"])
        if how == "empty":
            secs[k] = (name, b"")
        elif how == "drop":
            del secs[k]
        elif how == "cut":
            secs[k] = (name, raw[: rng.randrange(max(len(raw), 1))])
        else:
            secs[k] = (rng.choice(["code.9", "code.x", "graph.npz", name.upper(), "weights"]), raw)
        return f"section {how} {name}", binfile._pack(secs)
    data = bytearray(good)                   # a section-table entry's name, offset or length
    n = int.from_bytes(data[12:16], "little")
    e = 48 + 32 * rng.randrange(n)
    field = rng.choice([(e, 16), (e + 16, 8), (e + 24, 8)])
    value = rng.choice([0, 1, 2 ** 64 - 1, 2 ** 40, rng.randrange(len(good))])
    if field[1] == 16:
        data[e:e + 16] = bytes(rng.randrange(256) for _ in range(16))
    else:
        data[field[0]:field[0] + 8] = value.to_bytes(8, "little")
    return "table", _resum(data)


def test_fuzzed_bins_fail_cleanly_or_run(good_bin, tmp_path, monkeypatch):
    largest = {"bytes": 0}
    ensure = cards.Card.ensure

    def recording_ensure(self, size):
        largest["bytes"] = max(largest["bytes"], size)
        return ensure(self, size)
    monkeypatch.setattr(cards.Card, "ensure", recording_ensure)
    rng = random.Random(int(os.environ.get("MDLA_FUZZ_SEED", 14)))
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    outcomes = {"refused": 0, "ran": 0, "simerror": 0}
    p = tmp_path / "f.bin"
    for it in range(ITERATIONS):
        kind, data = mutate(good_bin, rng)
        p.write_bytes(data)
        ie = microndla.MDLA()
        largest["bytes"] = 0
        try:
            ie.Init(str(p))
        except BinFormatError:
            outcomes["refused"] += 1
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"iteration {it} ({kind}): Init raised {type(e).__name__}: {e}")
        mem = ie._compiled.cfg.mem_bytes
        assert largest["bytes"] <= mem, f"iteration {it} ({kind}): allocated {largest['bytes']} > {mem}"
        try:
            inshape = tuple(int(s) for s in ie.GetInfo("inshapes").split(";")[0].split("x"))
            images = np.resize(x, (ie.GetInfo("batch"),) + inshape[1:]).astype(np.float32)
            ie.Run(images)
            if ie._compiled.graph is not None:      # a .bin without the graph sections has no Run_th
                ie.Run_th(images)
            outcomes["ran"] += 1
        except SimError:
            outcomes["simerror"] += 1
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"iteration {it} ({kind}): Run raised {type(e).__name__}: {e}")
        finally:
            ie.Free()
    print(outcomes)
    assert outcomes["refused"] > ITERATIONS // 2     # most corruptions are caught at Init


def test_empty_weights_section_is_refused(good_bin, tmp_path):
    secs = [(n, b"" if n == "weights" else d) for n, d in _sections(good_bin)]
    p = tmp_path / "w.bin"
    p.write_bytes(binfile._pack(secs))
    with pytest.raises(BinFormatError, match="'weights'"):
        microndla.MDLA().Init(str(p))


def test_a_memory_map_beyond_the_card_is_refused_before_allocating(good_bin, tmp_path):
    secs = _sections(good_bin)
    k = [n for n, _ in secs].index("memmap")
    mm = json.loads(secs[k][1])
    mm["nslots"] = 1 << 20                   # an 80 KB file asking for gigabytes
    mm["weights_offset"] += mm["slot_bytes"] * (1 << 20)
    mm["code_offset"] += mm["slot_bytes"] * (1 << 20)
    secs[k] = ("memmap", json.dumps(mm).encode())
    p = tmp_path / "m.bin"
    p.write_bytes(binfile._pack(secs))
    with pytest.raises(BinFormatError, match="section 'memmap'"):
        microndla.MDLA().Init(str(p))


@pytest.mark.parametrize("section", ["graph.npz", "config"])
def test_damaged_sections_are_named(good_bin, tmp_path, section):
    secs = [(n, d[: len(d) // 2] if n == section else d) for n, d in _sections(good_bin)]
    p = tmp_path / "g.bin"
    p.write_bytes(binfile._pack(secs))
    with pytest.raises(BinFormatError, match=section.split(".")[0]):
        microndla.MDLA().Init(str(p))


def test_bad_section_name_is_a_bin_format_error(good_bin, tmp_path):
    data = bytearray(good_bin)
    data[48:50] = b"\xff\xfe"
    p = tmp_path / "n.bin"
    p.write_bytes(_resum(data))
    with pytest.raises(BinFormatError, match="bad name"):
        microndla.MDLA().Init(str(p))


def test_compile_outfile_is_written_atomically(tmp_path, monkeypatch):
    """A write that fails leaves the previous good file as it was (written beside, then renamed)."""
    m = tmp_path / "m.onnx"
    onnx.save(small_cnn(seed=3), str(m))
    out = tmp_path / "m.bin"
    ie = microndla.MDLA()
    ie.SetFlag("bitfile", "small")
    ie.Compile(str(m), outfile=str(out))
    before = out.read_bytes()

    def failing(fd):
        raise OSError("disk full")
    monkeypatch.setattr("os.fsync", failing)      # the data is written, the flush to disk fails
    with pytest.raises(OSError, match="disk full"):
        ie.Compile(str(m), outfile=str(out))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
