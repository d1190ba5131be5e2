"""The Micron DLA SDK's import name: ``import microndla; ie = microndla.MDLA()``."""
from runtime.mdla import MDLA, MDLAError, VERSION  # noqa: F401

__all__ = ["MDLA", "MDLAError"]
__version__ = VERSION
