#!/usr/bin/env python3
"""Write the small ONNX models the frontend tests read (tests/compiler/data/).

Each model is a small dual-sparse network trained briefly on scikit-learn's
8x8 digits, so its weights and activations look like a real network's, and
is exported by both PyTorch exporters. Together they cover every form of
k-WTA the frontend recognises (nupic ``KWinners``; the models and what each
exercises: docs/compiler.md, 'Test models').

Both exports have a dynamic batch dimension. Files: ``<model>_legacy.onnx``
(``torch.onnx.export(..., dynamo=False)``; for ``cnn_local`` and
``mlp_scatter`` with ``do_constant_folding=False``, so the
BatchNormalization nodes and shape arithmetic stay in the graph for the
frontend to fold), ``<model>_dynamo.onnx`` (``dynamo=True``), and
``digits.npz`` (``calib`` float32 [256, 1, 8, 8], ``x`` float32
[200, 1, 8, 8], ``y`` int64 [200]; pixels / 16).

torch, onnxscript and scikit-learn are needed here only, not by the tests::

    pip install torch==2.13.0 onnxscript scikit-learn
    python3 scripts/make_test_models.py
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the machine
    sys.exit(f"make_test_models.py needs PyTorch ({exc}): pip install torch==2.13.0")
try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError as exc:  # pragma: no cover
    sys.exit(f"make_test_models.py needs scikit-learn ({exc}): pip install scikit-learn")

OPSET = 18
OUT = Path(__file__).resolve().parent.parent / "tests" / "compiler" / "data"


# --------------------------------------------------------------------------
# k-WTA modules in the forms users write (nupic KWinners / KWinners2d)


class KWinnersThreshold(nn.Module):
    """Global k-WTA on [N, units]: ``x * (boosted >= values[:, k-1:k])``."""

    def __init__(self, boost: torch.Tensor | None, k: int, gather_last: bool = False):
        super().__init__()
        self.k, self.gather_last = k, gather_last
        self.register_buffer("boost", boost if boost is not None else torch.ones(0))

    def forward(self, x):
        boosted = (x * self.boost if self.boost.numel() else x).detach()
        values, _ = torch.topk(boosted, self.k, dim=1)
        if self.gather_last:  # values[:, -1] (Gather), then Less + masked_fill (Where)
            threshold = values[:, -1].unsqueeze(1)
            return x.masked_fill(boosted < threshold, 0)
        threshold = values[:, self.k - 1:self.k]
        return x * (boosted >= threshold)


class KWinnersScatter(nn.Module):
    """Global k-WTA on [N, units] with GatherElements + ScatterElements (or a scattered mask)."""

    def __init__(self, boost: torch.Tensor | None, k: int, mask_form: bool = False):
        super().__init__()
        self.k, self.mask_form = k, mask_form
        self.register_buffer("boost", boost if boost is not None else torch.ones(0))

    def forward(self, x):
        boosted = (x * self.boost if self.boost.numel() else x).detach()
        _, idx = torch.topk(boosted, self.k, dim=1)
        if self.mask_form:
            return x * torch.zeros_like(x).scatter(1, idx, 1.0)
        return torch.zeros_like(x).scatter(1, idx, x.gather(1, idx))


class KWinners2dLocal(nn.Module):
    """Local k-WTA over the channels at each position of [N, C, H, W]."""

    def __init__(self, boost: torch.Tensor | None, k: int, form: str):
        super().__init__()
        self.k, self.form = k, form
        self.register_buffer("boost", boost if boost is not None else torch.ones(0))

    def forward(self, x):
        if self.form == "permute":  # channels last, select on the last axis, permute back
            xp = x.permute(0, 2, 3, 1)
            boosted = (xp * self.boost).detach()
            values, _ = torch.topk(boosted, self.k, dim=-1)
            out = xp * (boosted >= values[..., self.k - 1:self.k])
            return out.permute(0, 3, 1, 2)
        boosted = x.detach()
        if self.boost.numel():
            boosted = boosted * self.boost.view(1, -1, 1, 1)
        values, idx = torch.topk(boosted, self.k, dim=1)
        if self.form == "scatter":
            return torch.zeros_like(x).scatter(1, idx, x.gather(1, idx))
        threshold = values[:, self.k - 1:self.k]
        return x.masked_fill(boosted < threshold, 0)  # Less + Where


class KWinners2dGlobal(nn.Module):
    """Global k-WTA over the whole C*H*W map (nupic KWinners2d, local=False)."""

    def __init__(self, boost: torch.Tensor | None, k: int, form: str):
        super().__init__()
        self.k, self.form = k, form
        self.register_buffer("boost", boost if boost is not None else torch.ones(0))

    def forward(self, x):
        n = x.shape[0]
        boosted = x.detach()
        if self.boost.numel():
            boosted = boosted * self.boost.view(1, -1, 1, 1)
        flat = boosted.reshape(n, -1)
        values, idx = torch.topk(flat, self.k, dim=1)
        if self.form == "scatter":
            xf = x.reshape(n, -1)
            return torch.zeros_like(xf).scatter(1, idx, xf.gather(1, idx)).reshape(x.shape)
        threshold = values[:, self.k - 1].view(n, 1, 1, 1)
        return x * (boosted >= threshold).float()


# --------------------------------------------------------------------------
# The networks


def _boost(rng: np.random.Generator, n: int) -> torch.Tensor:
    """nupic's ``exp(strength * (target - duty))`` for made-up duty cycles."""
    return torch.tensor(np.exp(rng.normal(0.0, 0.25, n)), dtype=torch.float32)


def _masks(module: nn.Module, rng: np.random.Generator, density: float) -> torch.Tensor:
    """A random mask per kernel with ``density`` of the fan-in kept (at least one)."""
    w = module.weight
    m, fan_in = w.shape[0], w[0].numel()
    keep = max(1, round(density * fan_in))
    mask = np.zeros((m, fan_in), dtype=np.float32)
    for i in range(m):
        mask[i, rng.choice(fan_in, keep, replace=False)] = 1
    return torch.tensor(mask.reshape(w.shape))


class Net(nn.Module):
    def __init__(self, layers: list[nn.Module], sparse: dict[str, float], rng, vector: bool):
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.vector = vector
        self.masks = {}
        for name, density in sparse.items():
            mod = self.body[int(name)]
            self.masks[name] = _masks(mod, rng, density)
        self.apply_masks()

    def apply_masks(self):
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.body[int(name)].weight.mul_(mask)

    def forward(self, x):
        return self.body(x)


def build(name: str, rng: np.random.Generator) -> Net:
    if name == "mlp_threshold":
        layers = [nn.Linear(64, 96), KWinnersThreshold(_boost(rng, 96), 24),
                  nn.Linear(96, 64), KWinnersThreshold(None, 16, gather_last=True),
                  nn.Linear(64, 10)]
        return Net(layers, {"0": 0.25, "2": 0.25}, rng, vector=True)
    if name == "mlp_scatter":
        layers = [nn.Linear(64, 96), nn.BatchNorm1d(96), KWinnersScatter(_boost(rng, 96), 24),
                  nn.Linear(96, 64), KWinnersScatter(None, 16, mask_form=True),
                  nn.Linear(64, 10)]
        return Net(layers, {"0": 0.25, "3": 0.25}, rng, vector=True)
    if name == "cnn_local":
        layers = [nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.MaxPool2d(2),
                  KWinners2dLocal(_boost(rng, 16), 4, "threshold"),
                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                  KWinners2dLocal(None, 4, "scatter"), nn.MaxPool2d(2), nn.Flatten(),
                  nn.Linear(64, 10)]
        return Net(layers, {"0": 0.5, "4": 0.125}, rng, vector=False)
    if name == "cnn_global":
        layers = [nn.Conv2d(1, 16, 3, padding=1), nn.MaxPool2d(2),
                  KWinners2dGlobal(_boost(rng, 16), 64, "threshold"),
                  nn.Conv2d(16, 32, 3), KWinners2dGlobal(None, 32, "scatter"),
                  nn.Flatten(), nn.Linear(128, 10)]
        return Net(layers, {"0": 0.5, "3": 0.25}, rng, vector=False)
    if name == "cnn_permute":
        layers = [nn.Conv2d(1, 16, 3, padding=1), KWinners2dLocal(_boost(rng, 16), 4, "permute"),
                  nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(256, 10)]
        return Net(layers, {"0": 0.5, "5": 0.25}, rng, vector=False)
    raise ValueError(name)


MODELS = ("mlp_threshold", "mlp_scatter", "cnn_local", "cnn_global", "cnn_permute")
#: Models whose legacy export keeps BatchNormalization and shape arithmetic unfolded.
UNFOLDED = ("mlp_scatter", "cnn_local")


# --------------------------------------------------------------------------
# Data, training, export


def load_data():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.2, random_state=0,
                                              stratify=digits.target)
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


def train(net: Net, x: np.ndarray, y: np.ndarray, epochs: int = 20) -> None:
    torch.manual_seed(0)
    xs = torch.tensor(x.reshape(len(x), -1) if net.vector else x)
    ys = torch.tensor(y)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xs[b]), ys[b]).backward()
            opt.step()
            net.apply_masks()
    net.eval()


def accuracy(net: Net, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        out = net(torch.tensor(x.reshape(len(x), -1) if net.vector else x))
    return float((out.argmax(1).numpy() == y).mean())


def export(net: Net, path: Path, dynamo: bool, fold: bool) -> None:
    example = torch.zeros((1, 64) if net.vector else (1, 1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(net, (example,), dynamo=True, input_names=["x"],
                                     output_names=["logits"], opset_version=OPSET, verbose=False,
                                     dynamic_shapes=({0: torch.export.Dim("batch")},))
            prog.save(str(path))
        else:
            torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=["x"],
                              output_names=["logits"], opset_version=OPSET,
                              do_constant_folding=fold,
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})


def check(path: Path, net: Net, x: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    xs = x.reshape(len(x), -1) if net.vector else x
    got = sess.run(None, {"x": xs})[0]
    with torch.no_grad():
        want = net(torch.tensor(xs)).numpy()
    return float(np.abs(got - want).max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--outdir", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.outdir.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = load_data()
    np.savez_compressed(args.outdir / "digits.npz", calib=x_tr[:256], x=x_te[:200],
                        y=y_te[:200])
    for i, name in enumerate(MODELS):
        rng = np.random.default_rng(100 + i)
        torch.manual_seed(i)
        net = build(name, rng)
        train(net, x_tr, y_tr)
        acc = accuracy(net, x_te, y_te)
        for dynamo in (False, True):
            path = args.outdir / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx"
            export(net, path, dynamo, fold=name not in UNFOLDED)
            err = check(path, net, x_te[:50])
            print(f"{path.name:28s} test accuracy {acc:.3f}  |onnxruntime - torch| {err:.2e}  "
                  f"{path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
