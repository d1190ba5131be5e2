"""The Micron DLA SDK's import name: ``import microndla; ie = microndla.MDLA()``."""
from runtime.mdla import MDLA, MDLAError, VERSION, WorkerCrashed, WorkerTimeout  # noqa: F401

__all__ = ["MDLA", "MDLAError", "WorkerCrashed", "WorkerTimeout"]
__version__ = VERSION
