"""The host's cost model: what the operators the DLA does not run (host stages of a
``heterogeneous`` model) and the tensors moved between the host and the card would cost.

The SDK ran these operators on the host CPU and moved the tensors over PCIe; neither is simulated
here (the host stages run in ``onnx.reference``, whose wall time says nothing about a CPU). This
model gives them a *modelled* time so that a profile can report the share of a call spent on the
DLA and on the host. Its parameters are assumptions, stated once here:

* the host computes ``flops_per_s`` floating-point operations per second on these small, serial
  operators (one core of a server CPU with vector units, well below its peak on such shapes);
* every host stage pays ``call_s`` of fixed overhead (dispatch, synchronising with the card);
* every tensor crossing between a host stage and the card moves at ``link_bytes_per_s`` (a PCIe
  3.0 x8 link's effective rate) plus ``transfer_s`` of DMA setup per tensor.

Operations counted per node (:func:`runtime.host_cost.node_flops`): 2 per multiply-accumulate of
a product (MatMul, Gemm, Conv, and the recurrent products of LSTM/GRU), a few per element for the
rest (the table there).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HostModel", "HOST"]


@dataclass(frozen=True)
class HostModel:
    flops_per_s: float = 10e9          #: sustained float32 operations per second on host operators
    call_s: float = 5e-6               #: fixed cost of running one host stage
    link_bytes_per_s: float = 6.5e9    #: host <-> card transfer rate (PCIe 3.0 x8, effective)
    transfer_s: float = 2e-6           #: DMA setup per tensor moved

    def seconds(self, flops: float, tensors_moved: int, bytes_moved: int) -> float:
        return (self.call_s + flops / self.flops_per_s + tensors_moved * self.transfer_s
                + bytes_moved / self.link_bytes_per_s)


#: the host the profiles assume
HOST = HostModel()
