"""GetInfo: every name the SDK's GetInfo answers, in one table (docs/sdk.md is generated from it).

``GetInfo(name)`` returns a typed value (str, int, float, bool, dict or None as the SDK's ctypes
wrapper did). A flag name returns the value *in effect*: for the flags a loaded program was
compiled with (the configuration, the batching, ``heterogeneous``, ``varfp``, ...), the loaded
program's, never a value set later that it ignores (``runtime.mdla`` refuses those). Names the
simulated DLA has no such thing for raise ``MDLAError`` saying why.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from .flags import ALIASES, DEBUG_LETTERS, FLAGS, OPTION_LETTERS


class NoSuchInfo(LookupError):
    """An SDK info name this machine has nothing for (the message says why)."""


@dataclass(frozen=True)
class InfoSpec:
    get: Callable        #: (MDLA object) -> value
    doc: str
    refused: str = ""    #: why this machine has no such value ('' when it has)


def hw_version(cfg) -> str:
    """An identifier of the hardware configuration (the 'bitfile'): its name and a digest of every parameter."""
    return f"{cfg.name}-{hashlib.sha256(cfg.to_json().encode()).hexdigest()[:12]}"


def effective_flags(obj) -> dict[str, object]:
    """The compile-time flags as the loaded program has them ({} when nothing is loaded)."""
    c = obj._compiled
    if c is None:
        return {}
    p = c.parallel
    recorded = dict(c.meta.get("flags", {}))
    eff = {"bitfile": obj._bitfile_in_effect(), "nfpgas": p.nfpgas, "nclusters": len(p.clusters),
           "firstcluster": min(p.clusters), "imgs_per_cluster": p.imgs_per_cluster,
           "clustersbatchmode": int(p.split), "mvbatch": int(p.mvbatch),
           "varfp": int(bool(c.meta.get("varfp"))) if "varfp" in c.meta else recorded.get("varfp", 0)}
    for k in ("heterogeneous", "nlayers", "lremove", "fpgaid"):
        if k in recorded:
            eff[k] = recorded[k]
    return eff


def _refuse(why: str) -> Callable:
    def get(obj):
        raise NoSuchInfo(why)
    return get


def flags_text(obj) -> str:
    """Every flag and its value in effect, one a line (GetInfo('print_flags'))."""
    eff = effective_flags(obj)
    lines = []
    for k, spec in FLAGS.items():
        v = eff.get(k, obj._flags[k])
        note = f"   (only {spec.default!r} here: {spec.refused})" if spec.refused else ""
        lines.append(f"{k} = {v!r}{note}")
    return "\n".join(lines)


def help_text() -> str:
    """The flags, option letters, debug letters and info names with what each does here (GetInfo('help'))."""
    out = ["Flags (SetFlag(name, value)):"]
    for k, spec in FLAGS.items():
        out.append(f"  {k} (default {spec.default!r}): {spec.doc}" + (f" [only the default here: {spec.refused}]"
                                                                       if spec.refused else ""))
    out.append("  aliases: " + ", ".join(f"{a} = {b}" for a, b in ALIASES.items()))
    out.append("Option letters (SetFlag('options', letters)):")
    out += [f"  {ch}: {f}={v}" for ch, (f, v) in OPTION_LETTERS.items()]
    out.append("Debug letters (SetFlag('debug', letters)):")
    out += [f"  {ch}: {d}" for ch, d in DEBUG_LETTERS.items()]
    out.append("GetInfo names (and any flag name):")
    out += [f"  {k}: {s.doc}" + (f" [refused: {s.refused}]" if s.refused else "") for k, s in INFO.items()]
    return "\n".join(out)


def _print(text_of: Callable) -> Callable:
    def get(obj):
        print(text_of(obj))
        return None
    return get


def _shape(io) -> str:
    return "x".join(map(str, io.onnx_shape))


def _programs(obj) -> list:
    """The objects of the loaded programs in Run's order: this one, then (Loadmulti) the others."""
    obj._need()
    return [obj] + list(getattr(obj, "_multi", []))


def _run_outputs(obj) -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of every array Run returns under the flags in effect (runtime.io_formats),
    of every loaded program in order (Loadmulti: Run returns them all)."""
    return [r for p in _programs(obj) for r in _io().run_outputs(p, p._need())]


def _inputs(obj) -> list:
    """Every input Run takes, of every loaded program in order."""
    return [i for p in _programs(obj) for i in p._need().inputs]


def _batch(obj) -> int:
    batches = [p._need().parallel.batch for p in _programs(obj)]
    if len(set(batches)) > 1:
        raise NoSuchInfo(f"the {len(batches)} programs loaded with Loadmulti take different batches {batches}; "
                         f"GetInfo('programs') gives each one's")
    return int(batches[0])


def _program_info(obj) -> list[dict]:
    """Per loaded program (Loadmulti: each one, in Run's order): its inputs, outputs, batch and memory."""
    out = []
    for p in _programs(obj):
        c = p._need()
        outs = _io().run_outputs(p, c)
        out.append({"innames": ";".join(i.name for i in c.inputs), "inshapes": ";".join(_shape(i) for i in c.inputs),
                    "outnames": ";".join(n for n, _, _ in outs),
                    "outshapes": ";".join("x".join(map(str, sh)) for _, sh, _ in outs),
                    "batch": int(c.parallel.batch), "clusters": list(c.parallel.clusters),
                    "membase": int(c.memmap.base), "addroff": int(c.memmap.end)})
    return out


def _outshape(obj):
    """The 2020 API's 'outshape': width, height, planes, batch of the first array Run returns
    (in the DLA's layout with no_rearrange=1: width, height, padded channels, batch)."""
    _, shape, _ = _run_outputs(obj)[0]
    if obj._flags["no_rearrange"] == 1 and _io()._plain(obj._need()) and obj._flags["breaklayer"] != 1:
        _, h, w, ch = shape
        return (w, h, ch, obj._need().parallel.batch)
    if obj._need().meta.get("unbatched") and not getattr(obj._need(), "whole", False):
        shape = (1,) + tuple(shape)                 # vectors: as one image of C = L
    if len(shape) > 4:
        return tuple(shape)
    s = list(shape) + [1] * (4 - len(shape))
    return (s[3], s[2], s[1], obj._need().parallel.batch)


def _hwdebug(obj):
    """Print and return the debug counters of every cluster of the last run."""
    counters = {}
    for card, stats in enumerate(obj._last_stats):
        for cl, cs in sorted(stats.clusters.items()):
            counters[f"card {card} cluster {cl}"] = {
                "cycles": cs.cycles, "instructions": cs.instructions, "busy": dict(cs.busy),
                "token_wait": dict(cs.token_wait), "port_wait": dict(cs.port_wait),
                "bytes_loaded": cs.bytes_loaded, "bytes_stored": cs.bytes_stored, "saturations": cs.saturations}
    for key, d in counters.items():
        print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in d.items()))
    return counters


_NO_SENSOR = "the simulated card has no sensors (temperature, power): nothing is measured, only modelled"


def _version(obj):
    from .mdla import VERSION
    return VERSION


INFO: dict[str, InfoSpec] = {
    "version": InfoSpec(_version, "version of this runtime"),
    "build": InfoSpec(lambda o: f"open-mdla {_version(o)}", "build string of this runtime"),
    "hwversion": InfoSpec(lambda o: hw_version(o._config()),
                          "the hardware configuration in effect: its name and a digest of its parameters"),
    "hwbuild": InfoSpec(lambda o: f"open-mdla RTL (hw/, Amaranth) of configuration {o._config().name!r}, "
                                  f"{o._config().clusters_per_card} cluster(s) per card",
                        "what the hardware is built from"),
    "hwdebug": InfoSpec(_hwdebug, "prints (and returns) every cluster's debug counters of the last run: cycles, "
                                  "instructions, busy, token and port waits, bytes moved, saturations"),
    "hwtime": InfoSpec(lambda o: float(o._config().cycles_to_ms(o._hwcycles)), "modelled time of the last run (ms)"),
    "hwcycles": InfoSpec(lambda o: int(o._hwcycles), "modelled cycles of the last run"),
    "freq": InfoSpec(lambda o: int(o._config().clock_mhz), "clock (MHz)"),
    "maxcluster": InfoSpec(lambda o: int(o._config().clusters_per_card), "clusters per card"),
    "maxfpga": InfoSpec(lambda o: int(_pool().size), "simulated cards in the system"),
    "temperature": InfoSpec(_refuse(_NO_SENSOR), "card temperature (°C)", _NO_SENSOR),
    "busy_comp": InfoSpec(lambda o: int(o._stream.outstanding), "calls queued or running (PutInput not yet fetched)"),
    "inshapes": InfoSpec(lambda o: ";".join(_shape(i) for i in _inputs(o)),
                         "input shapes, ';' between inputs (after Loadmulti: of every program, in Run's order)"),
    "outshapes": InfoSpec(lambda o: ";".join("x".join(map(str, s)) for _, s, _ in _run_outputs(o)),
                          "shapes of the arrays Run returns under the flags in effect, per image (batch dimension "
                          "1, as inshapes; a call returns 'batch' images) (no_rearrange=1: the DLA's layout "
                          "1 x H x W x padded channels; breaklayer=1: every layer's output), ';' between outputs"),
    "noutputs": InfoSpec(lambda o: len(_run_outputs(o)), "number of arrays Run returns"),
    "noutdims": InfoSpec(lambda o: ";".join(str(len(s)) for _, s, _ in _run_outputs(o)),
                         "dimensions of each array Run returns, ';' between outputs"),
    "outdtypes": InfoSpec(lambda o: ";".join(d for _, _, d in _run_outputs(o)),
                          "dtype of each array Run returns (int16 with no_rearrange=2, else float32)"),
    "innames": InfoSpec(lambda o: ";".join(i.name for i in _inputs(o)), "input names (every program's, as inshapes)"),
    "outnames": InfoSpec(lambda o: ";".join(n for n, _, _ in _run_outputs(o)),
                         "names of the arrays Run returns (the model's outputs; with breaklayer=1 every layer's "
                         "output tensor)"),
    "infracs": InfoSpec(lambda o: ";".join(str(f) for p in _programs(o) for f in _io().infracs(p._need())),
                        "fractional bits of each input's fixed-point format (the format of no_inarrange=2 inputs), "
                        "';' between inputs"),
    "addroff": InfoSpec(lambda o: max(int(p._need().memmap.end) for p in _programs(o)),
                        "end of the loaded programs' memory maps (bytes)"),
    "batch": InfoSpec(_batch, "images per Run/PutInput call (after Loadmulti: of every program; refused when "
                              "they differ, see 'programs')"),
    "numbatch": InfoSpec(_batch, "2018-2020 name of 'batch'"),
    "programs": InfoSpec(_program_info, "per loaded program (several after Loadmulti, in Run's order): innames, "
                                        "inshapes, outnames, outshapes, batch, clusters, memory base and end"),
    "numcluster": InfoSpec(lambda o: int(len(o._need().parallel.clusters)), "2018-2020: clusters in use"),
    "numfpga": InfoSpec(lambda o: int(o._need().parallel.nfpgas), "2018-2020: cards in use"),
    "outshape": InfoSpec(_outshape, "2020: (width, height, planes, batch) of the first array Run returns"),
    "saturations": InfoSpec(lambda o: int(o._saturations), "values clipped to the 16-bit range in the last run"),
    "layer_saturations": InfoSpec(lambda o: dict(o._layer_saturations), "the same per layer"),
    "engine": InfoSpec(lambda o: _ray_cards().engine_info(o),
                       "what runs the cards: serial or auto (here, one card after another), or ray and where"),
    "cards": InfoSpec(lambda o: _ray_cards().cards_info(o),
                      "per card of this object: its engine (here, or ray with its Ray node, node id and actor pid)"),
    "comparesw_error": InfoSpec(lambda o: o._compare,
                                "after a Run with comparesw=1: the largest |Run - Run_sw| of its outputs (None before)"),
    "print_flags": InfoSpec(_print(flags_text), "prints every flag with its value in effect"),
    "help": InfoSpec(_print(lambda o: help_text()), "prints the flags, letters and info names with what they do"),
}


def _io():
    from . import io_formats
    return io_formats


def _ray_cards():
    from . import ray_cards
    return ray_cards


def _pool():
    from .cards import POOL
    return POOL


def get_info(obj, name):
    if not isinstance(name, str):
        raise TypeError(f"info name must be a string, got {type(name).__name__}")
    spec = INFO.get(name)
    if spec is not None:
        return spec.get(obj)
    key = ALIASES.get(name, name)
    if key in FLAGS:
        eff = effective_flags(obj)
        return eff.get(key, obj._flags[key])
    raise ValueError(f"unknown info name {name!r}; known: {sorted(INFO)} and the flag names")
