"""The host's LSTM and GRU, as the ONNX specification (and onnxruntime) define them.

onnx 1.23's reference LSTM/GRU ignore ``sequence_lens``, ``clip``, ``input_forget`` and the
``activations`` attribute (their gates are always Sigmoid/Tanh); the host stages of a split
recurrent layer (:mod:`compiler.frontend_seq`) need all of them, so these replace them in
:func:`compiler.hostops.host_evaluator`.

Gate order (ONNX): LSTM ``i, o, f, c`` (peepholes ``i, o, f``), GRU ``z, r, h``. Layout 0: X is
(T, B, I), Y (T, D, B, H); layout 1: X (B, T, I), Y (B, T, D, H). States are (D, B, H) (layout 1:
(B, D, H)). Steps past a batch entry's sequence length leave Y at 0 and its state unchanged.
"""
from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

__all__ = ["LSTM", "GRU", "activation"]


def activation(name: str, alpha: float | None, beta: float | None):
    """The ONNX RNN activation ``name`` (case-insensitive) with its alpha/beta."""
    key = name.lower()
    table = {
        "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "tanh": np.tanh,
        "relu": lambda x: np.maximum(x, 0),
        "affine": lambda x: (1.0 if alpha is None else alpha) * x + (0.0 if beta is None else beta),
        "leakyrelu": lambda x: np.where(x >= 0, x, (0.01 if alpha is None else alpha) * x),
        "thresholdedrelu": lambda x: np.where(x > (1.0 if alpha is None else alpha), x, 0),
        "scaledtanh": lambda x: (1.0 if alpha is None else alpha) * np.tanh((1.0 if beta is None else beta) * x),
        "hardsigmoid": lambda x: np.clip((0.2 if alpha is None else alpha) * x + (0.5 if beta is None else beta), 0, 1),
        "elu": lambda x: np.where(x >= 0, x, (1.0 if alpha is None else alpha) * (np.exp(x) - 1)),
        "softsign": lambda x: x / (1 + np.abs(x)),
        "softplus": lambda x: np.log1p(np.exp(x)),
    }
    if key not in table:
        raise RuntimeError(f"unknown RNN activation {name!r}")
    return table[key]


def _activations(names, alphas, betas, per_dir: int, D: int, defaults):
    names = list(names) if names else defaults * D
    if len(names) == per_dir and D == 2:
        names = names * 2
    if len(names) != per_dir * D:
        raise RuntimeError(f"expected {per_dir * D} activations, got {len(names)}")
    alphas, betas = list(alphas or []), list(betas or [])
    out, k = [], 0
    for n in names:
        name = n.decode() if isinstance(n, bytes) else str(n)
        takes = name.lower() in ("affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu")
        a = alphas.pop(0) if takes and alphas else None
        b = betas.pop(0) if takes and name.lower() in ("affine", "scaledtanh", "hardsigmoid") and betas else None
        out.append(activation(name, a, b))
        k += 1
    return [out[d * per_dir:(d + 1) * per_dir] for d in range(D)]


class _RNN(OpRun):
    op_domain = ""
    gates = 0
    per_dir = 0
    defaults: list[str] = []

    def _common(self, X, W, R, B, sequence_lens, initial_h, layout, direction, hidden_size,
                activations, activation_alpha, activation_beta):
        layout = int(layout or 0)
        x = np.asarray(X, np.float64)
        if layout:
            x = x.transpose(1, 0, 2)                     # (T, B, I)
        T, batch, _ = x.shape
        D = W.shape[0]
        H = int(hidden_size) if hidden_size else R.shape[-1]
        lens = np.full(batch, T, np.int64) if sequence_lens is None else np.asarray(sequence_lens, np.int64)
        h0 = np.zeros((D, batch, H)) if initial_h is None else np.asarray(initial_h, np.float64)
        if layout and initial_h is not None:
            h0 = h0.transpose(1, 0, 2)
        acts = _activations(activations, activation_alpha, activation_beta, self.per_dir, D, self.defaults)
        dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction or "forward"]
        if len(dirs) != D:
            raise RuntimeError(f"direction {direction!r} needs {len(dirs)} direction(s) of weights, got {D}")
        Bz = np.zeros((D, 2 * self.gates * H)) if B is None else np.asarray(B, np.float64)
        return x, T, batch, D, H, lens, h0, acts, dirs, Bz

    @staticmethod
    def _order(dirn: str, T: int, length: int):
        steps = range(length)
        return list(steps) if dirn == "forward" else list(reversed(steps))

    @staticmethod
    def _finish(Y, states, layout):
        layout = int(layout or 0)
        if layout:
            Y = Y.transpose(2, 0, 1, 3)                  # (T, D, B, H) -> (B, T, D, H)
            states = [s.transpose(1, 0, 2) for s in states]
        return (Y.astype(np.float32), *(s.astype(np.float32) for s in states))


class LSTM(_RNN):
    gates, per_dir, defaults = 4, 3, ["Sigmoid", "Tanh", "Tanh"]

    def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None,
             activation_alpha=None, activation_beta=None, activations=None, clip=None, direction=None,
             hidden_size=None, input_forget=None, layout=None):
        x, T, batch, D, H, lens, h0, acts, dirs, Bz = self._common(
            X, W, R, B, sequence_lens, initial_h, layout, direction, hidden_size, activations, activation_alpha,
            activation_beta)
        c0 = np.zeros((D, batch, H)) if initial_c is None else np.asarray(initial_c, np.float64)
        if int(layout or 0) and initial_c is not None:
            c0 = c0.transpose(1, 0, 2)
        P = np.zeros((D, 3 * H)) if P is None else np.asarray(P, np.float64)
        Y = np.zeros((T, D, batch, H))
        Yh, Yc = h0.copy(), c0.copy()
        for d, dirn in enumerate(dirs):
            f, g, h = acts[d]
            w, r = np.asarray(W[d], np.float64), np.asarray(R[d], np.float64)
            bias = Bz[d, :4 * H] + Bz[d, 4 * H:]
            pi, po, pf = P[d, :H], P[d, H:2 * H], P[d, 2 * H:]
            for b in range(batch):
                ht, ct = h0[d, b].copy(), c0[d, b].copy()
                for t in self._order(dirn, T, int(lens[b])):
                    z = x[t, b] @ w.T + ht @ r.T + bias
                    if clip is not None:
                        z = np.clip(z, -clip, clip)
                    i_, o_, f_, c_ = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
                    it = f(i_ + pi * ct)
                    ft = (1 - it) if input_forget else f(f_ + pf * ct)
                    ct = ft * ct + it * g(c_)
                    ot = f(o_ + po * ct)
                    ht = ot * h(ct)
                    Y[t, d, b] = ht
                Yh[d, b], Yc[d, b] = ht, ct
        return self._finish(Y, [Yh, Yc], layout)


class GRU(_RNN):
    gates, per_dir, defaults = 3, 2, ["Sigmoid", "Tanh"]

    def _run(self, X, W, R, B=None, sequence_lens=None, initial_h=None, activation_alpha=None,
             activation_beta=None, activations=None, clip=None, direction=None, hidden_size=None,
             layout=None, linear_before_reset=None):
        x, T, batch, D, H, lens, h0, acts, dirs, Bz = self._common(
            X, W, R, B, sequence_lens, initial_h, layout, direction, hidden_size, activations, activation_alpha,
            activation_beta)
        Y = np.zeros((T, D, batch, H))
        Yh = h0.copy()
        for d, dirn in enumerate(dirs):
            f, g = acts[d]
            w, r = np.asarray(W[d], np.float64), np.asarray(R[d], np.float64)
            wb, rb = Bz[d, :3 * H], Bz[d, 3 * H:]
            for b in range(batch):
                ht = h0[d, b].copy()
                for t in self._order(dirn, T, int(lens[b])):
                    xw = x[t, b] @ w.T + wb
                    hr = ht @ r[:2 * H].T + rb[:2 * H]
                    zr = xw[:2 * H] + hr
                    if clip is not None:
                        zr = np.clip(zr, -clip, clip)
                    zt, rt = f(zr[:H]), f(zr[H:])
                    if linear_before_reset:
                        cand = xw[2 * H:] + rt * (ht @ r[2 * H:].T + rb[2 * H:])
                    else:
                        cand = xw[2 * H:] + (rt * ht) @ r[2 * H:].T + rb[2 * H:]
                    if clip is not None:
                        cand = np.clip(cand, -clip, clip)
                    ht = (1 - zt) * g(cand) + zt * ht
                    Y[t, d, b] = ht
                Yh[d, b] = ht
        return self._finish(Y, [Yh], layout)
