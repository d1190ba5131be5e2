"""The Micron DLA SDK's import name: ``import microndla; ie = microndla.MDLA()``.

The names are imported on first use (PEP 562): ``import microndla`` itself loads none of the
compiler, onnx or the simulators, so that scripts that import it start at once; the runtime
(``runtime.mdla``) is loaded by the first ``microndla.MDLA`` (or ``from microndla import MDLA``)."""
from __future__ import annotations

__all__ = ["MDLA", "MDLAError"]
_LAZY = {"MDLA", "MDLAError", "VERSION", "CompileError"}


def __getattr__(name: str):
    if name in _LAZY or name == "__version__":
        from runtime import mdla
        value = mdla.VERSION if name == "__version__" else getattr(mdla, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'microndla' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LAZY | {"__version__"})
