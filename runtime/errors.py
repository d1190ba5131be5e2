"""The runtime's own exception (re-exported by ``runtime.mdla`` and ``microndla``)."""


class MDLAError(RuntimeError):
    """A call the runtime cannot honour (wrong order, missing model, unsupported mode)."""
