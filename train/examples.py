"""Trained examples: ``python3 -m cosparse.train.examples {digits,digits-sparsify,gsc} -o DIR``.

Both train on scikit-learn's 8x8 digits (1,437 training and 360 test
images) the layers of the bundled example (the gsc-cs kind, scaled down)
at the densities that keep it within a point of its dense twin::

    conv1 16x1x3x3 (K = 2) - BatchNorm - max pool 2 - local k-WTA 8/16
      - fc1 128x256 (K = 4) - BatchNorm - global k-WTA 32/128 - fc2 10x128

- ``digits``: dual-sparse from scratch;
- ``digits-sparsify``: the same architecture dense (ReLU in place of the
  k-WTAs), trained, then :func:`~cosparse.train.sparsify` and fine-tuned;
- ``gsc``: the gsc-cs benchmark network (:class:`GscNet`) on twelve spoken
  keyword classes synthesised with espeak-ng (:mod:`.keywords`), dense and
  dual-sparse from scratch.

Each also trains the dense baseline, exports the dual-sparse model (ONNX,
TorchScript exporter), compiles it for the ULX3S-85F and writes
``<example>.json``: accuracy of the dense float, dual-sparse float and
golden int8 models on the test split, weight density, activation density
after each k-WTA, packing fill per overlay layer, and the fold's cycles per
inference. The digits need scikit-learn (``pip install -e '.[train]'``), the
keywords espeak-ng (``apt-get install espeak-ng``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..compiler import api, ir
from ..compiler.errors import CosparseError
from .convert import sparsify
from .export import export_onnx
from .kwinners import KWinners, KWinners2d
from .layers import ComplementarySparse, CSConv2d, CSLinear
from .qat import quantize

__all__ = ["DigitsNet", "GscNet", "EXAMPLES", "load_digits_split", "train_epochs", "run", "main"]

# The bundled example's layers at densities this small network keeps within a point of
# its dense twin (docs/training.md: at fc1 K = 8, global k 16, local k 5 it loses 2).
CHANNELS, LOCAL_K, CONV_K = 16, 8, 2
UNITS, GLOBAL_K, FC1_K = 128, 32, 4
CLASSES = 10
#: Keyword clips synthesised per class: at 300 the dual-sparse gsc-cs overfits.
CLIPS_PER_CLASS = 800


class DigitsNet(nn.Module):
    """The digits network, dual-sparse (``sparse=True``) or dense with ReLUs."""

    def __init__(self, sparse: bool, boost_strength: float = 1.0,
                 generator: torch.Generator | None = None, straight_through: bool = False):
        super().__init__()
        if sparse:
            self.conv1 = CSConv2d(1, CHANNELS, 3, CONV_K, padding=1, bias=False,
                                  generator=generator, straight_through=straight_through)
            self.fc1 = CSLinear(CHANNELS * 16, UNITS, FC1_K, generator=generator,
                                straight_through=straight_through)
            # nupic's schedule: the boost strength decays by 0.9 per epoch.
            self.act1 = KWinners2d(CHANNELS, LOCAL_K, boost_strength=boost_strength,
                                   boost_strength_factor=0.9)
            self.act2 = KWinners(UNITS, GLOBAL_K, boost_strength=boost_strength,
                                 boost_strength_factor=0.9)
        else:
            self.conv1 = nn.Conv2d(1, CHANNELS, 3, padding=1, bias=False)
            self.fc1 = nn.Linear(CHANNELS * 16, UNITS)
            self.act1, self.act2 = nn.ReLU(), nn.ReLU()
        # BatchNorm without affine parameters before each k-WTA, as nupic's GSC networks.
        self.bn1 = nn.BatchNorm2d(CHANNELS, affine=False)
        self.pool1 = nn.MaxPool2d(2)
        self.bn2 = nn.BatchNorm1d(UNITS, affine=False)
        self.fc2 = nn.Linear(UNITS, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pool1(self.bn1(self.conv1(x))))
        return self.fc2(self.act2(self.bn2(self.fc1(torch.flatten(x, 1)))))


class GscNet(nn.Module):
    """The gsc-cs benchmark network (``cosparse.compiler.zoo.gsc_cs``) for 32x32 log-mel
    input: conv1 64x1x5x5 (K = 2), max pool 2, local k-WTA 8/64; conv2 64x64x5x5
    (K = 8), max pool 2, local k-WTA 8/64; fc1 1500x1600 (K = 25), global k-WTA
    150/1500; fc2 12. A BatchNorm without affine parameters before each k-WTA;
    ``sparse=False`` is the dense twin with ReLUs."""

    def __init__(self, sparse: bool, generator: torch.Generator | None = None):
        super().__init__()
        if sparse:
            self.conv1 = CSConv2d(1, 64, 5, 2, bias=False, generator=generator)
            self.conv2 = CSConv2d(64, 64, 5, 8, bias=False, generator=generator)
            self.fc1 = CSLinear(1600, 1500, 25, generator=generator)
            self.act1 = KWinners2d(64, 8, boost_strength_factor=0.9)
            self.act2 = KWinners2d(64, 8, boost_strength_factor=0.9)
            self.act3 = KWinners(1500, 150, boost_strength_factor=0.9)
        else:
            self.conv1 = nn.Conv2d(1, 64, 5, bias=False)
            self.conv2 = nn.Conv2d(64, 64, 5, bias=False)
            self.fc1 = nn.Linear(1600, 1500)
            self.act1, self.act2, self.act3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.bn1 = nn.BatchNorm2d(64, affine=False)
        self.bn2 = nn.BatchNorm2d(64, affine=False)
        self.bn3 = nn.BatchNorm1d(1500, affine=False)
        self.pool1, self.pool2 = nn.MaxPool2d(2), nn.MaxPool2d(2)
        self.fc2 = nn.Linear(1500, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pool1(self.bn1(self.conv1(x))))
        x = self.act2(self.pool2(self.bn2(self.conv2(x))))
        return self.fc2(self.act3(self.bn3(self.fc1(torch.flatten(x, 1)))))


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 ``[N, 1, 8, 8]`` in 0..1, split 80/20 (stratified,
    ``random_state=0``, as the bundled example): ``x_train, y_train, x_test, y_test``."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise CosparseError(f"the digits examples need scikit-learn ({exc}): "
                            "pip install -e '.[train]'") from None
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    xa, xb, ya, yb = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return (np.ascontiguousarray(xa), ya, np.ascontiguousarray(xb), yb)


def _bar(label: str, done: int, total: int, note: str) -> None:
    filled = 30 * done // total
    sys.stderr.write(f"\r  {label}: [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {note}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def train_epochs(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, *, lr: float,
                 batch: int, generator: torch.Generator, label: str,
                 reassign_every: int = 0) -> float:
    """Adam with a cosine schedule; a progress bar on stderr. Complementary-sparse
    layers re-choose their masks by magnitude every ``reassign_every`` epochs (0:
    never), before the last quarter. Returns the last epoch's mean loss."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    cs = [m for m in net.modules() if isinstance(m, ComplementarySparse)]
    kw = [m for m in net.modules() if isinstance(m, (KWinners, KWinners2d))]
    loss_mean = float("nan")
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for i in range(0, len(xt), batch):
            sel = perm[i:i + batch]
            opt.zero_grad()
            loss = F.cross_entropy(net(xt[sel]), yt[sel])
            loss.backward()
            opt.step()
            total += loss.item() * len(sel)
        sched.step()
        for m in kw:
            m.update_boost_strength()
        if reassign_every and (epoch + 1) % reassign_every == 0 and epoch + 1 < 0.75 * epochs:
            for m in cs:
                m.reassign("magnitude")
        loss_mean = total / len(xt)
        _bar(label, epoch + 1, epochs, f"loss {loss_mean:.4f}")
    net.eval()
    return loss_mean


@torch.no_grad()
def _accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    net.eval()
    pred = np.concatenate([net(torch.from_numpy(x[i:i + 256])).numpy().argmax(1)
                           for i in range(0, len(x), 256)])
    return float(np.mean(pred == y))


@torch.no_grad()
def _activation_density(net: nn.Module, x: np.ndarray) -> dict[str, float]:
    """Fraction of non-zero values after each k-WTA, by module name."""
    counts: dict[str, list[int]] = {}

    def count(name, out):
        c = counts.setdefault(name, [0, 0])
        c[0] += int((out != 0).sum())
        c[1] += out.numel()

    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: count(n, out))
             for n, m in net.named_modules() if isinstance(m, (KWinners, KWinners2d))]
    net.eval()
    for i in range(0, len(x), 256):
        net(torch.from_numpy(x[i:i + 256]))
    for h in hooks:
        h.remove()
    return {n: nz / total for n, (nz, total) in counts.items()}


def _figures(name: str, net: nn.Module, dense_acc: float, data, out: Path, seconds: float,
             progress) -> dict:
    x_train, _, x_test, y_test = data
    onnx_path = export_onnx(net, torch.from_numpy(x_test[:1]), out / f"{name}.onnx")
    progress(f"compile {onnx_path.name} for the ULX3S-85F")
    acc = api.compile(str(onnx_path), board="ulx3s-85f", calibration=x_train[:256])
    progress(f"golden model on {len(y_test)} test inputs")
    golden = acc.golden(x_test)
    overlays = [l for l in acc.network.layers if isinstance(l, ir.OverlayLayer)]
    dense = {n: 1.0 for n, m in net.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d)) and not isinstance(m, ComplementarySparse)}
    return {
        "example": name,
        "onnx": onnx_path.name,
        "train_seconds": round(seconds, 1),
        "accuracy": {"dense_float": dense_acc,
                     "dual_sparse_float": _accuracy(net, x_test, y_test),
                     "golden_int8": float(np.mean(golden.argmax(1) == y_test))},
        "weight_density": {n: float((m.masked_weight() != 0).float().mean())
                           for n, m in net.named_modules()
                           if isinstance(m, ComplementarySparse)} | dense,
        "activation_density": _activation_density(net, x_test),
        "fill": {l.name: round(l.overlays.fill, 4) for l in overlays},
        "cycles_per_inference_ulx3s_85f": acc.predicted_interval_cycles,
        "test_images": int(len(y_test)),
    }


def _qat_figures(name: str, net: nn.Module, data, out: Path, *, epochs: int, lr: float,
                 batch: int, generator: torch.Generator, progress) -> dict:
    """Quantization-aware fine-tuning of the trained dual-sparse model in the compiler's
    integer semantics (:func:`~cosparse.train.quantize`), its QDQ export compiled for the
    ULX3S-85F, and the PyTorch model's predictions against the golden model's."""
    x_train, y_train, x_test, y_test = data
    t0 = time.perf_counter()
    qnet = quantize(net, x_train[:256])
    train_epochs(qnet, x_train, y_train, epochs, lr=lr, batch=batch, generator=generator,
                 label="quantization-aware")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        y_qat = np.concatenate([qnet(torch.from_numpy(x_test[i:i + 256])).numpy()
                                for i in range(0, len(x_test), 256)])
    onnx_path = export_onnx(qnet, torch.from_numpy(x_test[:1]), out / f"{name}_qat.onnx")
    progress(f"compile {onnx_path.name} (QDQ, its own scales) for the ULX3S-85F")
    acc = api.compile(str(onnx_path), board="ulx3s-85f")
    golden = acc.golden(x_test)
    return {"onnx": onnx_path.name, "epochs": epochs, "train_seconds": round(seconds, 1),
            "accuracy_pytorch": float(np.mean(y_qat.argmax(1) == y_test)),
            "accuracy_golden": float(np.mean(golden.argmax(1) == y_test)),
            "same_predictions": float(np.mean(y_qat.argmax(1) == golden.argmax(1))),
            "same_outputs": bool(np.array_equal(y_qat, golden))}


def _run_gsc(out: Path, *, epochs: int, seed: int, per_class: int, qat_epochs: int,
             progress) -> dict:
    """The gsc-cs network on synthesised keywords (:mod:`.keywords`), dense and dual-sparse."""
    from .keywords import CLASSES, make_dataset

    cache = out / f"keywords_{per_class}_{seed}.npz"
    if cache.is_file():
        with np.load(cache) as d:
            x, y = d["x"], d["y"]
    else:
        x, y = make_dataset(per_class, seed, progress=lambda i, n: _bar("speak", i, n, "clips")
                            if i % 50 == 0 or i == n else None)
        np.savez_compressed(cache, x=x, y=y)
    mean, std = float(x.mean()), float(x.std())
    x = (x - mean) / std  # the network's input: normalised log-mel
    n = int(0.8 * len(y))
    data = (x[:n], y[:n], x[n:], y[n:])
    gen = torch.Generator().manual_seed(seed)
    dense = GscNet(sparse=False)
    train_epochs(dense, data[0], data[1], epochs, lr=1e-3, batch=64, generator=gen,
                 label="dense baseline")
    dense_acc = _accuracy(dense, data[2], data[3])
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    net = GscNet(sparse=True, generator=gen)
    train_epochs(net, data[0], data[1], epochs, lr=1e-3, batch=64, generator=gen,
                 label="dual-sparse")
    figures = _figures("gsc", net, dense_acc, data, out, time.perf_counter() - t0, progress)
    if qat_epochs:
        figures["qat"] = _qat_figures("gsc", net, data, out, epochs=qat_epochs, lr=1e-4,
                                      batch=64, generator=gen, progress=progress)
    # the test split, for `cosparse bench --model gsc.onnx --inputs ... --labels ...`
    np.save(out / "gsc_test_inputs.npy", data[2])
    np.save(out / "gsc_test_labels.npy", data[3])
    figures |= {"classes": list(CLASSES), "clips_per_class": per_class,
                "input_normalisation": {"mean": mean, "std": std},
                "test_inputs": "gsc_test_inputs.npy", "test_labels": "gsc_test_labels.npy"}
    (out / "gsc.json").write_text(json.dumps(figures, indent=1) + "\n")
    return figures


#: The examples :func:`run` trains.
EXAMPLES = ("digits", "digits-sparsify", "gsc")


def run(example: str, out: Path, *, epochs: int, seed: int, reassign_every: int = 0,
        per_class: int = CLIPS_PER_CLASS, qat_epochs: int = 5,
        progress=lambda s: print(f"  {s}", file=sys.stderr)) -> dict:
    """Train ``example`` (one of :data:`EXAMPLES`), write its ONNX and JSON into ``out``,
    and return the figures. ``per_class``: keyword clips per class (``gsc``). ``reassign_every`` > 0 trains ``digits`` with
    straight-through gradients and re-chooses its masks by magnitude that often (epochs).
    ``qat_epochs`` > 0 fine-tunes the dual-sparse model that long in the compiler's integer
    semantics (``figures["qat"]``)."""
    if example not in EXAMPLES:
        raise CosparseError(f"no example {example!r}: one of {', '.join(EXAMPLES)}")
    torch.manual_seed(seed)
    if example != "gsc":  # the digits train on one thread (their figures repeat)
        torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    if example == "gsc":
        return _run_gsc(out, epochs=epochs, seed=seed, per_class=per_class,
                        qat_epochs=qat_epochs, progress=progress)
    data = load_digits_split()
    x_train, y_train, x_test, y_test = data
    t0 = time.perf_counter()
    dense = DigitsNet(sparse=False)
    train_epochs(dense, x_train, y_train, epochs, lr=3e-3, batch=32, generator=gen,
                 label="dense baseline")
    dense_acc = _accuracy(dense, x_test, y_test)
    if example == "digits":
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(seed)  # the same draws as without the baseline
        torch.manual_seed(seed)
        net = DigitsNet(sparse=True, generator=gen, straight_through=reassign_every > 0)
        train_epochs(net, x_train, y_train, epochs, lr=3e-3, batch=32, generator=gen,
                     label="dual-sparse", reassign_every=reassign_every)
    else:
        net = sparsify(dense, {"conv1": CONV_K, "fc1": FC1_K})
        net.act1 = KWinners2d(CHANNELS, LOCAL_K, boost_strength_factor=0.9)
        net.act2 = KWinners(UNITS, GLOBAL_K, boost_strength_factor=0.9)
        train_epochs(net, x_train, y_train, epochs, lr=3e-3, batch=32,
                     generator=gen, label="fine-tune")
    figures = _figures(example.replace("-", "_"), net, dense_acc, data, out,
                       time.perf_counter() - t0, progress)
    if qat_epochs:
        figures["qat"] = _qat_figures(example.replace("-", "_"), net, data, out,
                                      epochs=qat_epochs, lr=3e-4, batch=32, generator=gen,
                                      progress=progress)
    (out / f"{example.replace('-', '_')}.json").write_text(json.dumps(figures, indent=1) + "\n")
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m cosparse.train.examples",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("example", choices=EXAMPLES)
    ap.add_argument("-o", "--outdir", type=Path, default=Path("trained"),
                    help="output folder (default: ./trained)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs (default: 60 for digits, 30 for gsc)")
    ap.add_argument("--clips-per-class", type=int, default=CLIPS_PER_CLASS,
                    help=f"gsc: synthesised clips per class (default: {CLIPS_PER_CLASS})")
    ap.add_argument("--qat-epochs", type=int, default=5,
                    help="quantization-aware fine-tuning epochs after training (default 5; "
                         "0: none)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ap.add_argument("--reassign-every", type=int, default=0, metavar="N",
                    help="digits: re-choose the masks by magnitude every N epochs, with "
                         "straight-through gradients (default 0: fixed masks)")
    args = ap.parse_args(argv)
    if args.epochs is None:
        args.epochs = 30 if args.example == "gsc" else 60
    if args.epochs < 1:
        ap.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.clips_per_class < 1:
        ap.error(f"--clips-per-class must be at least 1, got {args.clips_per_class}")
    if args.qat_epochs < 0:
        ap.error(f"--qat-epochs must be 0 or more, got {args.qat_epochs}")
    if args.reassign_every < 0:
        ap.error(f"--reassign-every must be 0 or more, got {args.reassign_every}")
    try:
        fig = run(args.example, args.outdir, epochs=args.epochs, seed=args.seed,
                  reassign_every=args.reassign_every, per_class=args.clips_per_class,
                  qat_epochs=args.qat_epochs)
    except CosparseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    a = fig["accuracy"]
    print(f"{fig['example']}: dense {a['dense_float']:.4f}, dual-sparse {a['dual_sparse_float']:.4f}, "
          f"golden int8 {a['golden_int8']:.4f}; {fig['cycles_per_inference_ulx3s_85f']:,.0f} cycles "
          f"per inference on the ULX3S-85F; trained in {fig['train_seconds']} s -> "
          f"{args.outdir / (fig['example'] + '.json')}")
    if "qat" in fig:
        q = fig["qat"]
        print(f"quantization-aware ({q['epochs']} epochs, {q['train_seconds']} s): PyTorch "
              f"{q['accuracy_pytorch']:.4f}, golden {q['accuracy_golden']:.4f}, same "
              f"predictions {q['same_predictions']:.4f}, same outputs {q['same_outputs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
