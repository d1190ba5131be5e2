"""Flags set while a program is loaded: a compile-time flag (``FlagSpec.when == 'compile'``) that
would differ from the loaded program's is refused, because the program cannot follow it; run-time
flags take effect at the next Run. ``GetInfo`` reports the values in effect (``runtime.info``)."""
from __future__ import annotations

from .flags import ALIASES, FLAGS


def check_settable_after_load(obj, name, value) -> None:
    """Raise MDLAError if setting ``name`` (a str, after load) could not take effect."""
    from .info import effective_flags
    from .mdla import MDLAError
    if not isinstance(name, str):
        return                                   # FlagSet.set reports the type
    key = ALIASES.get(name, name)
    spec = FLAGS.get(key)
    if spec is None or spec.when != "compile":
        return
    try:
        new = spec.parse(str(value))
    except ValueError:
        return                                   # FlagSet.set reports the bad value
    current = effective_flags(obj).get(key, obj._flags[key])
    if key == "bitfile":
        from arch.machine import get_config
        same = get_config(new) == obj._compiled.cfg
    else:
        same = new == current
    if not same:
        raise MDLAError(f"flag {name!r}: the loaded program was compiled with {key}={current!r} and cannot follow "
                        f"{new!r}; Free() (or use a new MDLA object), then SetFlag and Compile/Init again")
