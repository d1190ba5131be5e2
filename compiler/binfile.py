"""The versioned ``.bin`` container that ``Compile(..., outfile=...)`` writes and ``Init`` reads.

Layout (little-endian):

    0   8   magic  b"MDLABIN\\0"
    8   4   format version (uint32)
    12  4   number of sections (uint32)
    16  32  SHA-256 of every byte from offset 48 to the end of the file
    48  32*n  section table: name (16 bytes, NUL-padded ASCII), offset (uint64), length (uint64)
    ...     section data

Sections: ``config`` (machine configuration, JSON), ``memmap`` (JSON), ``io`` (inputs and outputs,
JSON), ``layers`` (code-generation report, JSON), ``meta`` (JSON), ``weights`` (raw), ``code.<k>``
(the program of cluster k, raw 32-byte instructions), ``parallel`` (cards, clusters, images per call,
JSON), ``graph.json`` + ``graph.npz`` (the quantised IR, for
``Run_th`` and the golden reference), ``outputs`` (the model's output order) and ``host.onnx`` +
``host.json`` (operators the runtime runs on the host after the DLA). Unknown sections are ignored, so later versions can add
(for example, per-card or per-cluster programs) without breaking readers.

A model with host stages before or between DLA stages (:class:`compiler.partition.Staged`, version
2) holds instead a ``staged`` section (JSON: the stages in order, the model's inputs and outputs,
notes) and one ``stage.<k>`` section per stage: the ONNX model of a host stage, or a whole nested
``.bin`` of a DLA stage. Version 1 files (no staged models) are read as before.
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np

from arch.isa import ISAError, decode_program
from arch.machine import MachineConfig

from . import bincheck
from .codegen import LayerCode
from .compiled import Compiled, IODesc, Parallel
from .ir import AvgPool, Concat, Conv, Graph, GraphInput, GraphOutput, HostTail, MaxPool, TensorInfo
from .memmap import MemoryMap
from .partition import HostStage, Staged

MAGIC = b"MDLABIN\0"
VERSION = 2
READABLE = (1, 2)              #: version 2 added the staged (host and DLA stages) container
_HEADER = struct.Struct("<8sII32s")
_ENTRY = struct.Struct("<16sQQ")


class BinFormatError(ValueError):
    """A .bin file that is not one, is corrupt, truncated or of an unsupported version."""


def _graph_sections(g: Graph) -> tuple[bytes, bytes]:
    arrays = {}
    layers = []
    for i, L in enumerate(g.layers):
        d = {"type": type(L).__name__, "name": L.name, "nodes": L.nodes, "input": L.input, "output": L.output}
        if isinstance(L, Conv):
            d.update(stride=L.stride, pads=L.pads, dilation=L.dilation, act=L.act, kind=L.kind,
                     w_frac=L.w_frac, shift=L.shift, residual=L.residual, res_shift=L.res_shift,
                     res_op=L.res_op, alpha=L.alpha, clip=list(L.clip), act_a=L.act_a, act_b=L.act_b,
                     groups=L.groups, up=L.up, edge=L.edge)
            arrays[f"{i}.weight"] = L.weight
            arrays[f"{i}.bias"] = L.bias
            if L.wq is not None:
                arrays[f"{i}.wq"] = L.wq
                arrays[f"{i}.bq"] = L.bq
        else:
            d.update(kernel=L.kernel, stride=L.stride, pads=L.pads)
            if isinstance(L, AvgPool):
                d.update(mul=L.mul, shift=L.shift, count_pads=L.count_pads,
                         muls=None if L.muls is None else {str(k): v for k, v in L.muls.items()})
        layers.append(d)
    meta = {
        "name": g.name, "opset": g.opset, "notes": g.notes,
        "tensors": {k: {"shape": t.shape, "frac": t.frac} for k, t in g.tensors.items()},
        "inputs": [asdict(i) for i in g.inputs], "outputs": [asdict(o) for o in g.outputs],
        "layers": layers,
        "concats": [asdict(c) for c in g.concats],
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return json.dumps(meta).encode(), buf.getvalue()


def _graph_from_sections(js: bytes, npz: bytes) -> Graph:
    meta = json.loads(js)
    arrays = np.load(io.BytesIO(npz), allow_pickle=False)
    layers = []
    for i, d in enumerate(meta["layers"]):
        common = dict(name=d["name"], nodes=d["nodes"], input=d["input"], output=d["output"])
        if d["type"] == "Conv":
            L = Conv(weight=arrays[f"{i}.weight"], bias=arrays[f"{i}.bias"], stride=tuple(d["stride"]),
                     pads=tuple(d["pads"]), dilation=tuple(d["dilation"]), act=d["act"], kind=d["kind"],
                     residual=d.get("residual"), res_op=d.get("res_op", "add"), alpha=d.get("alpha", 0.0),
                     clip=tuple(d.get("clip", (None, None))), act_a=d.get("act_a", 0), act_b=d.get("act_b", 0),
                     groups=d.get("groups", 1), up=tuple(d.get("up", (1, 1))), edge=d.get("edge", 0),
                     **common)
            if f"{i}.wq" in arrays:
                L.wq, L.bq = arrays[f"{i}.wq"], arrays[f"{i}.bq"]
                L.w_frac, L.shift, L.res_shift = d["w_frac"], d["shift"], d.get("res_shift")
        elif d["type"] == "AvgPool":
            L = AvgPool(kernel=tuple(d["kernel"]), stride=tuple(d["stride"]), pads=tuple(d["pads"]),
                        mul=d["mul"], shift=d["shift"],
                        count_pads=tuple(d["count_pads"]) if d.get("count_pads") is not None else None,
                        muls=({int(k): tuple(v) for k, v in d["muls"].items()} if d.get("muls") is not None else None),
                        **common)
        else:
            L = MaxPool(kernel=tuple(d["kernel"]), stride=tuple(d["stride"]), pads=tuple(d["pads"]), **common)
        layers.append(L)
    tensors = {k: TensorInfo(k, tuple(v["shape"]), v["frac"]) for k, v in meta["tensors"].items()}
    return Graph(name=meta["name"], tensors=tensors, layers=layers,
                 inputs=[GraphInput(i["name"], i["tensor"], tuple(i["onnx_shape"])) for i in meta["inputs"]],
                 outputs=[GraphOutput(o["name"], o["tensor"], tuple(o["onnx_shape"])) for o in meta["outputs"]],
                 opset=meta["opset"], notes=meta["notes"],
                 concats=[Concat(**c) for c in meta.get("concats", [])])


def _pack(sections: list[tuple[str, bytes]]) -> bytes:
    table, body, off = [], [], _HEADER.size + _ENTRY.size * len(sections)
    for name, data in sections:
        table.append(_ENTRY.pack(name.encode("ascii"), off, len(data)))
        body.append(data)
        off += len(data)
    rest = b"".join(table) + b"".join(body)
    return _HEADER.pack(MAGIC, VERSION, len(sections), hashlib.sha256(rest).digest()) + rest


def _staged_bytes(c: Staged) -> bytes:
    table = {"stages": [s.to_dict() if isinstance(s, HostStage) else {"kind": "dla"} for s in c.stages],
             "inputs": [i.to_dict() for i in c.inputs], "outputs": [o.to_dict() for o in c.outputs],
             "notes": c.notes, "meta": c.meta}
    if c.whole:     # no DLA stage: the configuration, batching and input types are the Staged's own
        table["whole"] = {"config": json.loads(c.cfg.to_json()), "parallel": c.parallel.to_dict(), "base": c.base,
                          "dtypes": {k: np.dtype(v).str for k, v in c.dtypes.items()}}
    sections = [("staged", json.dumps(table).encode())]
    sections += [(f"stage.{k}", s.model if isinstance(s, HostStage) else to_bytes(s)) for k, s in enumerate(c.stages)]
    return _pack(sections)


def _staged_from(sec: dict[str, bytes], source: str) -> Staged:
    try:
        table = json.loads(sec["staged"])
        stages = []
        for k, d in enumerate(table["stages"]):
            data = sec[f"stage.{k}"]
            if d["kind"] == "dla":
                stages.append(from_bytes(data, f"{source} (DLA stage {k})"))
            else:
                _check_onnx(data, f"stage.{k}", source)
                stages.append(HostStage(model=data, inputs=d["inputs"], outputs=d["outputs"], nodes=d["nodes"],
                                        position=d["position"]))
        whole = table.get("whole")
        extra = {} if whole is None else dict(
            whole=True, config=MachineConfig.from_dict(whole["config"]), par=Parallel.from_dict(whole["parallel"]),
            base=int(whole["base"]), dtypes={k: np.dtype(v) for k, v in whole["dtypes"].items()})
        return Staged(stages=stages, inputs=[IODesc.from_dict(d) for d in table["inputs"]],
                      outputs=[IODesc.from_dict(d) for d in table["outputs"]], notes=table.get("notes", []),
                      meta=table.get("meta", {}), **extra)
    except BinFormatError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise BinFormatError(f"{source}: malformed staged sections: {e!r}") from None


def to_bytes(c: Compiled | Staged) -> bytes:
    if isinstance(c, Staged):
        return _staged_bytes(c)
    sections: list[tuple[str, bytes]] = [
        ("config", c.cfg.to_json().encode()),
        ("memmap", json.dumps(c.memmap.to_dict()).encode()),
        ("io", json.dumps({"inputs": [i.to_dict() for i in c.inputs],
                           "outputs": [o.to_dict() for o in c.outputs]}).encode()),
        ("layers", json.dumps([asdict(l) for l in c.layers]).encode()),
        ("meta", json.dumps(c.meta).encode()),
        ("parallel", json.dumps(c.parallel.to_dict()).encode()),
        ("outputs", json.dumps(c.output_order).encode()),
        ("spans", json.dumps({str(p): v for p, v in c.spans.items()}).encode()),
        ("weights", c.weights),
    ]
    sections += [(f"code.{p}", c.code_bytes(p)) for p in sorted(c.programs)]
    if c.host is not None:
        sections += [("host.onnx", c.host.model),
                     ("host.json", json.dumps({"inputs": c.host.inputs, "nodes": c.host.nodes,
                                               "outputs": [asdict(o) for o in c.host.outputs]}).encode())]
    if c.graph is not None:
        gj, gz = _graph_sections(c.graph)
        sections += [("graph.json", gj), ("graph.npz", gz)]
    return _pack(sections)


def write(c: Compiled | Staged, path: str | Path) -> None:
    """Write atomically: into a temporary file beside ``path``, then renamed over it, so that a failed
    write leaves any previous file intact."""
    import os
    import tempfile
    p = Path(path)
    data = to_bytes(c)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)          # as a plain open() would create it (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def from_bytes(data: bytes, source: str = "<bytes>") -> Compiled | Staged:
    if len(data) < _HEADER.size:
        raise BinFormatError(f"{source}: truncated: {len(data)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, n, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BinFormatError(f"{source}: not a DLA .bin file (bad magic {magic!r})")
    if version not in READABLE:
        raise BinFormatError(f"{source}: .bin format version {version} is not supported (this build reads "
                             f"{', '.join(map(str, READABLE))})")
    if len(data) < _HEADER.size + _ENTRY.size * n:
        raise BinFormatError(f"{source}: truncated section table")
    if hashlib.sha256(data[_HEADER.size:]).digest() != digest:
        raise BinFormatError(f"{source}: corrupt: checksum mismatch (the file was modified or truncated)")
    sec = _sections(data, n, source)
    if "staged" in sec:
        return _staged_from(sec, source)
    missing = [s for s in ("config", "memmap", "io", "weights") if s not in sec]
    if not any(s.startswith("code.") for s in sec):
        missing.append("code.<cluster>")
    if missing:
        raise BinFormatError(f"{source}: missing section(s) {missing}")
    try:
        cfg = MachineConfig.from_dict(_json(sec, "config", source))
        bincheck.check_config(cfg)
        mm = MemoryMap.from_dict(_json(sec, "memmap", source))
        bincheck.check_memmap(mm, cfg, len(sec["weights"]),
                              {int(k.split(".", 1)[1]): len(v) for k, v in sec.items() if k.startswith("code.")})
        iod = _json(sec, "io", source)
        programs = {int(k.split(".", 1)[1]): decode_program(v) for k, v in sec.items() if k.startswith("code.")}
        layers = [LayerCode(**d) for d in _json(sec, "layers", source, b"[]")]
        for l in layers:
            l.tile = tuple(l.tile)
        graph = _graph_checked(sec, source) if "graph.json" in sec or "graph.npz" in sec else None
        meta = _json(sec, "meta", source, b"{}")
        parallel = Parallel.from_dict(_json(sec, "parallel", source)) if "parallel" in sec else Parallel()
        order = _json(sec, "outputs", source) if "outputs" in sec else []
        spans = {int(p): [tuple(s) for s in v] for p, v in _json(sec, "spans", source, b"{}").items()}
        host = None
        if "host.onnx" in sec:
            _check_onnx(sec["host.onnx"], "host.onnx", source)
            hj = _json(sec, "host.json", source)
            host = HostTail(model=sec["host.onnx"], inputs=hj["inputs"], nodes=hj["nodes"],
                            outputs=[GraphOutput(o["name"], o["tensor"], tuple(o["onnx_shape"])) for o in hj["outputs"]])
        if graph is not None:
            graph.host, graph.output_order = host, order
            bincheck.check_graph(graph, Compiled(cfg=cfg, memmap=mm, programs={}, weights=b"", inputs=[], outputs=[],
                                                 layers=[]))
        c = Compiled(cfg=cfg, memmap=mm, programs=programs, weights=sec["weights"],
                     inputs=[IODesc.from_dict(d) for d in iod["inputs"]],
                     outputs=[IODesc.from_dict(d) for d in iod["outputs"]],
                     layers=layers, graph=graph, meta=meta, parallel=parallel, host=host, output_order=order,
                     spans=spans)
        bincheck.check_program(c)
    except BinFormatError:
        raise
    except bincheck.BinCheckError as e:
        raise BinFormatError(f"{source}: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, ISAError) as e:
        raise BinFormatError(f"{source}: malformed section contents: {type(e).__name__}: {e}") from None
    return c


def _json(sec: dict[str, bytes], name: str, source: str, default: bytes | None = None):
    """Section ``name`` parsed as JSON (``default`` when the file has none)."""
    raw = sec.get(name, default)
    if raw is None:
        raise BinFormatError(f"{source}: missing section {name!r}")
    try:
        return json.loads(raw)
    except ValueError as e:           # JSONDecodeError, UnicodeDecodeError
        raise BinFormatError(f"{source}: section {name!r} is not valid JSON: {e}") from None


def _sections(data: bytes, n: int, source: str) -> dict[str, bytes]:
    """The section table: printable unique names, each section inside the file after the table."""
    sec = {}
    body = _HEADER.size + _ENTRY.size * n
    for k in range(n):
        raw, off, length = _ENTRY.unpack_from(data, _HEADER.size + k * _ENTRY.size)
        name = raw.rstrip(b"\0")
        if not name or not all(0x21 <= b < 0x7f for b in name):
            raise BinFormatError(f"{source}: section {k} has a bad name {raw!r} (expected printable ASCII)")
        name = name.decode("ascii")
        if name in sec:
            raise BinFormatError(f"{source}: section {name!r} appears twice")
        if off < body or off + length > len(data):
            raise BinFormatError(f"{source}: section {name!r} ({length} bytes at offset {off}) lies outside the "
                                 f"data of a {len(data)}-byte file")
        sec[name] = data[off:off + length]
    return sec


def _graph_checked(sec: dict[str, bytes], source: str) -> Graph:
    """The embedded quantised graph; any damage to it is a BinFormatError naming the section."""
    if "graph.npz" not in sec or "graph.json" not in sec:
        raise BinFormatError(f"{source}: the embedded graph needs both sections 'graph.json' and 'graph.npz'")
    try:
        return _graph_from_sections(sec["graph.json"], sec["graph.npz"])
    except BinFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's .npy header parser raises SyntaxError, TokenError, ...
        raise BinFormatError(f"{source}: section 'graph.json'/'graph.npz' (the embedded graph) is malformed: "
                             f"{type(e).__name__}: {e}") from None


def _check_onnx(model: bytes, section: str, source: str) -> None:
    import onnx
    try:
        # parsed, not checked: a host stage may be a model onnx.checker is stricter about than
        # onnxruntime (e.g. an output without a shape); the evaluator reports what it cannot run
        onnx.load_model_from_string(model)
    except Exception as e:  # noqa: BLE001 - protobuf and checker errors have no common base
        raise BinFormatError(f"{source}: section {section!r} is not a valid ONNX model: {type(e).__name__}: {e}") from None


def read(path: str | Path) -> Compiled | Staged:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f".bin file not found: {p}")
    return from_bytes(p.read_bytes(), str(p))
