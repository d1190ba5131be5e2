"""A real trained model: a small CNN for scikit-learn's bundled 8x8 digits, trained with numpy
alone (hand-written backpropagation), exported with ``onnx.helper``.

The committed model is ``zoo/digits_cnn.onnx``; ``python -m zoo.digits`` retrains it (about a
minute, deterministic for a given numpy) and prints its float top-1 on the test split.
:func:`split` is the train/test split the model was trained and is scored on (needs
scikit-learn, a test dependency, for its bundled data set; no download).

Network (input ``(1, 1, 8, 8)``, pixel values / 16): Conv 3x3 16 + ReLU, MaxPool 2,
Conv 3x3 32 + ReLU, MaxPool 2, Flatten, Gemm 128 -> 10 (logits).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["MODEL_PATH", "split", "train", "export", "forward"]

MODEL_PATH = Path(__file__).with_name("digits_cnn.onnx")
SEED = 0


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): images as float32 (N, 1, 8, 8) in [0, 1], a fixed 75/25
    stratified split of scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, random_state=SEED, stratify=d.target)
    return xtr, ytr, xte, yte


# ---------------------------------------------------------------------------------- numpy layers
def _im2col(x: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, C*9, H*W) for a 3x3 window with padding 1, rows in (c, i, j) order."""
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.empty((b, c, 3, 3, h, w), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, i, j] = xp[:, :, i:i + h, j:j + w]
    return cols.reshape(b, c * 9, h * w)


def _col2im(cols: np.ndarray, shape) -> np.ndarray:
    b, c, h, w = shape
    cols = cols.reshape(b, c, 3, 3, h, w)
    xp = np.zeros((b, c, h + 2, w + 2), dtype=cols.dtype)
    for i in range(3):
        for j in range(3):
            xp[:, :, i:i + h, j:j + w] += cols[:, :, i, j]
    return xp[:, :, 1:-1, 1:-1]


def _pool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b, c, h, w = x.shape
    v = x.reshape(b, c, h // 2, 2, w // 2, 2)
    y = v.max(axis=(3, 5))
    mask = v == y[:, :, :, None, :, None]
    return y, mask


def forward(params: dict[str, np.ndarray], x: np.ndarray, cache: dict | None = None) -> np.ndarray:
    """Logits (B, 10) of the network in float32 (the same arithmetic as the ONNX graph)."""
    b = x.shape[0]
    c1 = _im2col(x)
    z1 = (params["w1"].reshape(16, -1) @ c1 + params["b1"][:, None]).reshape(b, 16, 8, 8)
    r1 = np.maximum(z1, 0)
    p1, m1 = _pool(r1)
    c2 = _im2col(p1)
    z2 = (params["w2"].reshape(32, -1) @ c2 + params["b2"][:, None]).reshape(b, 32, 4, 4)
    r2 = np.maximum(z2, 0)
    p2, m2 = _pool(r2)
    f = p2.reshape(b, -1)
    logits = f @ params["w3"].T + params["b3"]
    if cache is not None:
        cache.update(c1=c1, z1=z1, m1=m1, p1=p1, c2=c2, z2=z2, m2=m2, f=f)
    return logits


def _backward(params, cache, dlogits):
    b = dlogits.shape[0]
    g = {"w3": dlogits.T @ cache["f"], "b3": dlogits.sum(0)}
    dp2 = (dlogits @ params["w3"]).reshape(b, 32, 2, 2)
    dr2 = (cache["m2"] * dp2[:, :, :, None, :, None]).reshape(b, 32, 4, 4)
    dz2 = (dr2 * (cache["z2"] > 0)).reshape(b, 32, 16)
    g["w2"] = np.einsum("bop,bkp->ok", dz2, cache["c2"]).reshape(params["w2"].shape)
    g["b2"] = dz2.sum((0, 2))
    dp1 = _col2im(np.einsum("ok,bop->bkp", params["w2"].reshape(32, -1), dz2), (b, 16, 4, 4))
    dr1 = (cache["m1"] * dp1[:, :, :, None, :, None]).reshape(b, 16, 8, 8)
    dz1 = (dr1 * (cache["z1"] > 0)).reshape(b, 16, 64)
    g["w1"] = np.einsum("bop,bkp->ok", dz1, cache["c1"]).reshape(params["w1"].shape)
    g["b1"] = dz1.sum((0, 2))
    return g


def train(epochs: int = 30, batch: int = 32, lr: float = 3e-3) -> dict[str, np.ndarray]:
    """Train with Adam on the training split (seeded); returns float32 parameters."""
    xtr, ytr, _, _ = split()
    rng = np.random.default_rng(SEED)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    params = {"w1": he((16, 1, 3, 3), 9), "b1": np.zeros(16, np.float32),
              "w2": he((32, 16, 3, 3), 144), "b2": np.zeros(32, np.float32),
              "w3": he((10, 128), 128), "b3": np.zeros(10, np.float32)}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(xtr))
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            cache: dict = {}
            logits = forward(params, xtr[idx], cache)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), ytr[idx]] -= 1.0          # d(cross-entropy)/d(logits)
            grads = _backward(params, cache, p / len(idx))
            step += 1
            for k in params:                                  # Adam
                m[k] = 0.9 * m[k] + 0.1 * grads[k]
                v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
                mh, vh = m[k] / (1 - 0.9 ** step), v[k] / (1 - 0.999 ** step)
                params[k] = (params[k] - lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
    return params


def export(params: dict[str, np.ndarray], path: str | Path = MODEL_PATH) -> onnx.ModelProto:
    """Write the network as ONNX (opset 13) and return it."""
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), k) for k, a in params.items()]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "digits_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="zoo.digits")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def main() -> None:
    params = train()
    export(params)
    _, _, xte, yte = split()
    top1 = float(np.mean(forward(params, xte).argmax(1) == yte))
    print(f"wrote {MODEL_PATH} ({MODEL_PATH.stat().st_size} bytes); float top-1 on the test split "
          f"({len(yte)} images): {100 * top1:.2f} %")


if __name__ == "__main__":
    main()
