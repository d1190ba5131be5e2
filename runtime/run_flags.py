"""Flag handling of the runtime: ``set_flag`` (``MDLA.SetFlag``), ``check_flags``, ``parallel_for``
(the card and cluster plan of the flags) and the rule for flags set while a program is loaded.

Flags set while a program is loaded: a compile-time flag (``FlagSpec.when == 'compile'``) that
would differ from the loaded program's is refused, because the program cannot follow it; run-time
flags take effect at the next Run. ``GetInfo`` reports the values in effect (``runtime.info``)."""
from __future__ import annotations

from .flags import ALIASES, FLAGS


def check_settable_after_load(obj, name, value) -> None:
    """Raise MDLAError if setting ``name`` (a str, after load) could not take effect."""
    from .info import effective_flags
    from .errors import MDLAError
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


def set_flag(obj, name, value="") -> None:
    """``MDLA.SetFlag``: one flag, or several from a dict, with the effects a flag has at once."""
    if isinstance(name, dict):
        for k, v in name.items():
            set_flag(obj, k, v)
        return
    if obj._compiled is not None and name != "reset":
        check_settable_after_load(obj, name, value)
    obj._flags.set(name, value)
    if name == "maxfpga":
        from . import ray_cards
        from .cards import POOL
        ray_cards.check_maxfpga(obj._flags)
        POOL.resize(obj._flags["maxfpga"])


def check_flags(flags) -> None:
    """Refuse a compile with flag values this build does not support."""
    from .errors import MDLAError
    bad = flags.unsupported()
    if bad:
        raise MDLAError("flag value(s) not supported by this build yet: " + "; ".join(bad))


def parallel_for(f, cfg):
    """The card and cluster plan (``compiler.driver.Parallel``) the flags ``f`` ask for on
    configuration ``cfg`` (MDLAError if impossible)."""
    from compiler.driver import Parallel
    from .cards import POOL
    from .errors import MDLAError
    nclus, first = f["nclusters"], f["firstcluster"]
    if first + nclus > cfg.clusters_per_card:
        raise MDLAError(f"clusters {first}..{first + nclus - 1} requested (firstcluster={first}, "
                        f"nclusters={nclus}); the {cfg.name!r} configuration has {cfg.clusters_per_card} "
                        f"clusters per card")
    if f["nfpgas"] > POOL.size:
        raise MDLAError(f"nfpgas={f['nfpgas']} but the simulated system has {POOL.size} cards "
                        f"(SetFlag('maxfpga', n) to change it)")
    if f["mvbatch"] and f["imgs_per_cluster"] % cfg.mv_per_cluster:
        raise MDLAError(f"mvbatch needs imgs_per_cluster to be a multiple of {cfg.mv_per_cluster} (the MV units "
                        f"of a cluster), got imgs_per_cluster={f['imgs_per_cluster']}")
    if f["mvbatch"] and f["clustersbatchmode"] and nclus > 1:
        raise MDLAError("mvbatch and clustersbatchmode cannot be combined: either each MV unit takes its own "
                        "image, or the clusters split one image")
    return Parallel(nfpgas=f["nfpgas"], clusters=tuple(range(first, first + nclus)),
                    imgs_per_cluster=f["imgs_per_cluster"], mvbatch=bool(f["mvbatch"]),
                    split=bool(f["clustersbatchmode"]))
