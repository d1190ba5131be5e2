"""Layout legalisation: what the hardware runs but the copy-free layout or the buffers of one layer
cannot take, rewritten into layers that fit, on the float graph before quantisation
(:func:`compiler.driver.compile_model` runs :func:`legalise`). No refusal the hardware does not
impose:

* :func:`legalise_concats`: Concats whose pieces are not word-aligned, take a graph input, or
  share a tensor with another Concat;
* :func:`legalise_pools`: a global pooling over a map larger than the maps buffer holds becomes a
  pooling by tiles followed by a global pooling of the tiles' results (partial reductions): exact
  for MaxPool, and for AvgPool in float (equal tiles: the mean of the tiles' means), one more
  rounding in fixed point.
"""
from __future__ import annotations

import numpy as np

from arch.isa import FORMATS
from arch.machine import MachineConfig

from .ir import AvgPool, Conv, Graph, MaxPool, TensorInfo

__all__ = ["legalise", "legalise_concats", "legalise_pools"]


def legalise(graph: Graph, cfg: MachineConfig) -> None:
    legalise_pools(graph, cfg)
    legalise_concats(graph, cfg)


def legalise_pools(graph: Graph, cfg: MachineConfig) -> None:
    """Split every global pooling whose window does not fit half the maps buffer (one channel word
    per pixel) into tiles: a pooling with a (a, b) window and stride, a | H and b | W, then the
    global pooling of the (H / a, W / b) result (again split if need be)."""
    cap = cfg.maps_words // 2
    fields = {f.name: f.bits for f in FORMATS["MAXPOOL"].fields}
    smax = min((1 << fields["sy"]) - 1, (1 << fields["sx"]) - 1)      # a tile's stride is its size
    k = 0
    while k < len(graph.layers):
        L = graph.layers[k]
        h, w = graph.tensors[L.input].shape[1:] if isinstance(L, (MaxPool, AvgPool)) else (0, 0)
        if not isinstance(L, (MaxPool, AvgPool)) or L.kernel != (h, w) or any(L.pads) or h * w <= cap \
                or getattr(L, "count_pads", None):
            k += 1
            continue
        tiles = [(a, b) for a in _divisors(h) for b in _divisors(w) if 1 < a * b <= cap and max(a, b) <= smax]
        if not tiles:
            k += 1                    # no equal tiles: left to the code generator, which names the layer
            continue
        a, b = max(tiles, key=lambda t: (t[0] * t[1], -abs(t[0] - t[1])))
        c = graph.tensors[L.input].shape[0]
        mid = _fresh(graph, f"{L.output}__tiles")
        graph.tensors[mid] = TensorInfo(mid, (c, h // a, w // b))
        first = type(L)(name=_fresh(graph, f"{L.name}_tiles"), nodes=list(L.nodes), input=L.input, output=mid,
                        kernel=(a, b), stride=(a, b))
        L.input, L.kernel = mid, (h // a, w // b)
        graph.layers.insert(k, first)
        graph.notes.append(f"layer '{L.name}': its {h}x{w} window exceeds the maps buffer ({cap} words); it pools "
                           f"{a}x{b} tiles first (layer '{first.name}')")
        # the second stage is looked at again (it may need splitting too)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def legalise_concats(graph: Graph, cfg: MachineConfig) -> None:
    """Make every Concat of ``graph`` (float, before quantisation) one the copy-free layout takes,
    with layers where it cannot (the hardware imposes none of these limits, the layout does):

    * an input that starts at a channel which is not a multiple of a word (4 + 1 + 1 channels,
      24-channel pieces): the whole concatenation becomes a chain of 1x1 convolutions with 0/1
      weights, each placing its piece at its channel offset and adding the previous ones (a fused
      residual): exact, since a 0/1 weight times a value and a sum of disjoint pieces round nothing;
    * a graph input, or a tensor another Concat already takes: an identity channel-wise copy of it.
    """
    from .frontend_fusion import channelwise_layer
    inputs = {gi.tensor for gi in graph.inputs}
    taken: set[str] = set()
    for cat in list(graph.concats):
        offsets, off = [], 0
        for t in cat.inputs:
            offsets.append(off)
            off += graph.tensors[t].shape[0]
        if any(o % cfg.lanes for o in offsets):
            _embed(graph, cat, offsets, off)
            graph.notes.append(f"Concat '{cat.name}': pieces at channels {offsets} are not all word-aligned; it runs "
                               f"as {len(cat.inputs)} 1x1 placement convolutions (0/1 weights, exact)")
            continue
        for k, t in enumerate(cat.inputs):
            if t in inputs or t in taken:
                c = graph.tensors[t].shape[0]
                copy = _fresh(graph, f"{t}__copy")
                layer = channelwise_layer(copy, [cat.name], t, copy, np.ones(c), np.zeros(c))
                graph.tensors[copy] = TensorInfo(copy, graph.tensors[t].shape)
                graph.layers.insert(_after_producers(graph, [t]), layer)
                cat.inputs[k] = copy
                graph.notes.append(f"Concat '{cat.name}': {t!r} is {'a graph input' if t in inputs else 'in another Concat'}"
                                   f"; a channel-wise copy layer '{copy}' writes it into the concatenation")
                t = copy
            taken.add(t)


def _fresh(graph: Graph, base: str) -> str:
    name, k = base, 0
    names = set(graph.tensors) | {l.name for l in graph.layers}
    while name in names:
        k += 1
        name = f"{base}{k}"
    return name


def _after_producers(graph: Graph, tensors: list[str]) -> int:
    """The layer index after every layer producing ``tensors`` (through concatenations)."""
    cats = {c.output: c for c in graph.concats}
    where = {l.output: k for k, l in enumerate(graph.layers)}
    todo, last = list(tensors), -1
    while todo:
        t = todo.pop()
        if t in where:
            last = max(last, where[t])
        elif t in cats:
            todo.extend(cats[t].inputs)
    return last + 1


def _embed(graph: Graph, cat, offsets: list[int], total: int) -> None:
    """Replace ``cat`` by its chain of placement convolutions."""
    h, w = graph.tensors[cat.output].shape[1:]
    at = _after_producers(graph, list(cat.inputs))
    prev = None
    for k, (t, off) in enumerate(zip(cat.inputs, offsets)):
        c = graph.tensors[t].shape[0]
        weight = np.zeros((total, c, 1, 1), np.float32)
        weight[off + np.arange(c), np.arange(c), 0, 0] = 1
        last = k == len(cat.inputs) - 1
        out = cat.output if last else _fresh(graph, f"{cat.output}__part{k}")
        if not last:
            graph.tensors[out] = TensorInfo(out, (total, h, w))
        layer = Conv(name=_fresh(graph, f"{cat.name}_place{k}"), nodes=[cat.name], input=t, output=out, weight=weight,
                     bias=np.zeros(total, np.float32), residual=prev, kind="concat")
        graph.layers.insert(at + k, layer)
        prev = out
    graph.concats.remove(cat)


