#!/usr/bin/env python3
"""Train a small dual-sparse network on scikit-learn's 8x8 digits and export it to ONNX.

The network (complementary weight masks, nupic-style k-winners-take-all
with boost, BatchNorms the exporters fold) and how it is trained are in
docs/compiler.md, 'Test models'. Training is seeded and deterministic on CPU
(one thread); the whole script takes about 20 s and its outputs are
byte-identical from run to run.

Writes into the output folder (default ``examples/``):

- ``digits_cs.onnx``         legacy TorchScript exporter (``dynamo=False``), opset 17
- ``digits_cs_dynamo.onnx``  dynamo exporter (``dynamo=True``, needs ``onnxscript``)
- ``digits_calib.npy``       float32 [256, 1, 8, 8] training images (calibration set)
- ``digits_test.npz``        ``x`` float32 [360, 1, 8, 8], ``y`` int64 [360] (whole test split)
- ``digits_cs.json``         accuracies, densities, sparsities, ONNX op lists

Each ONNX file is checked with ONNX Runtime against PyTorch on the test split.

torch and scikit-learn are not dependencies of the cosparse package; install
them for this script only::

    pip install torch==2.13.0 scikit-learn onnxscript
    python3 scripts/train_digits.py -o examples/
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
    import torch.nn.functional as F
except ImportError as exc:  # pragma: no cover - depends on the machine
    sys.exit(f"train_digits.py needs PyTorch ({exc}); install it with: pip install torch==2.13.0")
try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError as exc:  # pragma: no cover - depends on the machine
    sys.exit(f"train_digits.py needs scikit-learn ({exc}); install it with: pip install scikit-learn")

SEED = 0
CALIB_IMAGES = 256
OPSET = 17

# Layer sizes and sparsity (the gsc-cs network's kind, scaled down to 8x8 digits).
CONV_CHANNELS = 16
CONV_PER_OVERLAY = 2      # 50% dense
LOCAL_K = 5               # of 16 channels at each (pooled) position
FC1_UNITS = 128
FC1_PER_OVERLAY = 8       # 12.5% dense
GLOBAL_K = 16             # of 128 units
CLASSES = 10


# --------------------------------------------------------------------------- masks

def complementary_mask(kernels: int, fan_in: int, per_overlay: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """0/1 masks ``[kernels, fan_in]`` that are complementary in groups of ``per_overlay``.

    Same construction as ``cosparse.compiler.zoo.complementary_weights``: each
    group of ``per_overlay`` kernels splits the (randomly permuted) fan-in into
    ``per_overlay`` near-equal disjoint parts, so every fan-in position is
    covered by exactly one kernel of the group and the group fills one overlay.
    Kernel order is then shuffled, so the packer has to find the groups.
    Returns the masks and each kernel's group number.
    """
    if kernels % per_overlay:
        raise ValueError(f"{kernels} kernels do not split into groups of {per_overlay}")
    mask = np.zeros((kernels, fan_in), dtype=np.float32)
    for g0 in range(0, kernels, per_overlay):
        parts = np.array_split(rng.permutation(fan_in), per_overlay)
        for j, part in enumerate(parts):
            mask[g0 + j, part] = 1.0
    order = rng.permutation(kernels)
    return mask[order], order // per_overlay


def complementary_groups(weights: np.ndarray, groups: np.ndarray) -> int:
    """How many of the kernel groups have non-zeros that tile the fan-in exactly once.

    ``weights`` is ``[kernels, fan_in]``; a group whose kernels overlap or
    leave a fan-in position uncovered (a trained weight that is exactly 0
    inside its mask) does not count.
    """
    nz = (weights != 0).astype(np.int64)
    return sum(int(np.all(nz[groups == g].sum(axis=0) == 1)) for g in np.unique(groups))


# --------------------------------------------------------------------------- k-WTA

class _KWinnersBase(nn.Module):
    """Boost and duty-cycle bookkeeping shared by both k-WTA forms (as nupic.torch)."""

    def __init__(self, units: int, k: int, boost_strength: float, duty_cycle_period: int,
                 boost_shape: tuple[int, ...]):
        super().__init__()
        if not 0 < k < units:
            raise ValueError(f"k must be in 1..{units - 1}, not {k}")
        self.units, self.k = units, k
        self.target_density = k / units
        self.boost_strength = boost_strength
        self.duty_cycle_period = duty_cycle_period
        self.boost_shape = boost_shape
        self.register_buffer("duty_cycle", torch.zeros(units))
        self.register_buffer("boost", torch.ones(boost_shape))
        self.register_buffer("learning_iterations", torch.zeros((), dtype=torch.long))

    def refresh_boost(self) -> None:
        """b = exp(boost_strength * (target_density - duty_cycle)); a constant in eval mode."""
        b = torch.exp(self.boost_strength * (self.target_density - self.duty_cycle))
        self.boost.copy_(b.reshape(self.boost_shape))

    @torch.no_grad()
    def update_duty_cycle(self, winners: torch.Tensor, samples: int, per_sample: float) -> None:
        """Running mean of how often each unit wins (nupic's update_duty_cycle)."""
        self.learning_iterations += samples
        period = min(self.duty_cycle_period, int(self.learning_iterations))
        self.duty_cycle.mul_(period - samples)
        self.duty_cycle.add_(winners / per_sample)
        self.duty_cycle.div_(period)


class LocalKWinners(_KWinnersBase):
    """k winners over the channels at each (h, w); TopK + threshold compare form."""

    def __init__(self, channels: int, k: int, boost_strength: float = 1.0,
                 duty_cycle_period: int = 1000):
        super().__init__(channels, k, boost_strength, duty_cycle_period, (1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.refresh_boost()
        boosted = x * self.boost
        thr = torch.topk(boosted, self.k, dim=1).values[:, self.k - 1:self.k]
        mask = boosted >= thr
        if self.training:
            self.update_duty_cycle(mask.sum(dim=(0, 2, 3), dtype=torch.float32), x.shape[0],
                                   float(x.shape[2] * x.shape[3]))
        return x * mask


class GlobalKWinners(_KWinnersBase):
    """k winners over the units of a [batch, n] tensor; TopK + gather/scatter form."""

    def __init__(self, units: int, k: int, boost_strength: float = 1.0,
                 duty_cycle_period: int = 1000):
        super().__init__(units, k, boost_strength, duty_cycle_period, (1, units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.refresh_boost()
        boosted = x * self.boost
        idx = torch.topk(boosted, self.k, dim=1).indices
        out = torch.zeros_like(x).scatter(1, idx, x.gather(1, idx))
        if self.training:
            winners = torch.zeros_like(x).scatter(1, idx, 1.0)
            self.update_duty_cycle(winners.sum(dim=0), x.shape[0], 1.0)
        return out


# --------------------------------------------------------------------------- network

class DigitsCS(nn.Module):
    def __init__(self, rng: np.random.Generator, boost_strength: float):
        super().__init__()
        # BatchNorm without affine parameters before each k-WTA, as in
        # nupic's sparse GSC networks; without it test accuracy drops to
        # about 92%. conv1 has no bias: bn1 makes one redundant (it folds
        # into conv1's per-channel scale and bias at compile time).
        self.conv1 = nn.Conv2d(1, CONV_CHANNELS, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(CONV_CHANNELS, affine=False)
        self.kwta1 = LocalKWinners(CONV_CHANNELS, LOCAL_K, boost_strength)
        self.pool1 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(CONV_CHANNELS * 4 * 4, FC1_UNITS)
        self.bn2 = nn.BatchNorm1d(FC1_UNITS, affine=False)
        self.kwta2 = GlobalKWinners(FC1_UNITS, GLOBAL_K, boost_strength)
        self.fc2 = nn.Linear(FC1_UNITS, CLASSES)
        conv_mask, self.conv1_groups = complementary_mask(CONV_CHANNELS, 9, CONV_PER_OVERLAY, rng)
        fc1_mask, self.fc1_groups = complementary_mask(FC1_UNITS, CONV_CHANNELS * 16,
                                                       FC1_PER_OVERLAY, rng)
        self.register_buffer("conv1_mask", torch.from_numpy(conv_mask).reshape(self.conv1.weight.shape))
        self.register_buffer("fc1_mask", torch.from_numpy(fc1_mask))
        # Re-scale the initial weights for the smaller fan-in (as nupic's
        # SparseWeights does), then zero them outside the mask.
        with torch.no_grad():
            self.conv1.weight.mul_(math.sqrt(CONV_PER_OVERLAY))
            self.fc1.weight.mul_(math.sqrt(FC1_PER_OVERLAY))
        self.apply_masks()

    def masked(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        return [(self.conv1.weight, self.conv1_mask), (self.fc1.weight, self.fc1_mask)]

    @torch.no_grad()
    def apply_masks(self) -> None:
        for w, m in self.masked():
            w.mul_(m)

    def mask_grads(self) -> None:
        for w, m in self.masked():
            if w.grad is not None:
                w.grad.mul_(m)

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        # Pool, then k-WTA (the paper's order, as in gsc-cs): fc1's input keeps
        # exactly k of C active per position, and the hardware pools a dense map.
        x = self.pool1(self.bn1(self.conv1(x)))
        if taps is not None:
            taps["pool1"] = x
        x = self.kwta1(x)
        if taps is not None:
            taps["kwta1"] = x
        x = self.kwta2(self.bn2(self.fc1(torch.flatten(x, 1))))
        if taps is not None:
            taps["kwta2"] = x
        return self.fc2(x)


class Exported(nn.Module):
    """Eval-mode wrapper with a plain ``forward(input) -> logits`` for the exporters."""

    def __init__(self, net: DigitsCS):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- data

def load_data():
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y)
    return (np.ascontiguousarray(x_train), np.ascontiguousarray(y_train),
            np.ascontiguousarray(x_test), np.ascontiguousarray(y_test))


# --------------------------------------------------------------------------- training

def train(net: DigitsCS, x: np.ndarray, y: np.ndarray, epochs: int, batch: int,
          lr: float, gen: torch.Generator) -> list[float]:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    losses = []
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), batch):
            sel = perm[i:i + batch]
            opt.zero_grad()
            loss = F.cross_entropy(net(xt[sel]), yt[sel])
            loss.backward()
            net.mask_grads()
            opt.step()
            net.apply_masks()
            total += loss.item() * len(sel)
        sched.step()
        losses.append(total / len(xt))
    # Freeze the boost from the final training duty cycles.
    for kw in (net.kwta1, net.kwta2):
        kw.refresh_boost()
    net.eval()
    return losses


@torch.no_grad()
def evaluate(net: DigitsCS, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, dict]:
    taps: dict = {}
    logits = net(torch.from_numpy(x), taps).numpy()
    acc = float(np.mean(logits.argmax(1) == y))
    return logits, acc, {k: v.numpy() for k, v in taps.items()}


@torch.no_grad()
def accuracy_without_boost(net: DigitsCS, x: np.ndarray, y: np.ndarray) -> float:
    saved = [kw.boost.clone() for kw in (net.kwta1, net.kwta2)]
    for kw in (net.kwta1, net.kwta2):
        kw.boost.fill_(1.0)
    acc = float(np.mean(net(torch.from_numpy(x)).numpy().argmax(1) == y))
    for kw, b in zip((net.kwta1, net.kwta2), saved):
        kw.boost.copy_(b)
    return acc


def sparsity_figures(taps: dict, x: np.ndarray) -> dict:
    """Fraction of zeros in the input, after the pool and after each k-WTA."""
    k1 = taps["kwta1"]
    active_per_position = (k1 != 0).sum(axis=1)
    return {
        "input_zero_fraction": float(np.mean(x == 0)),
        "kwta1_zero_fraction": float(np.mean(k1 == 0)),
        "kwta1_nominal_zero_fraction": 1 - LOCAL_K / CONV_CHANNELS,
        "kwta1_positions_with_all_zero_output": float(np.mean(active_per_position == 0)),
        "kwta1_max_active_per_position": int(active_per_position.max()),
        "pool1_zero_fraction": float(np.mean(taps["pool1"] == 0)),
        "kwta2_zero_fraction": float(np.mean(taps["kwta2"] == 0)),
        "kwta2_nominal_zero_fraction": 1 - GLOBAL_K / FC1_UNITS,
        "kwta2_max_active": int((taps["kwta2"] != 0).sum(axis=1).max()),
    }


# --------------------------------------------------------------------------- export

def export_legacy(model: nn.Module, path: Path) -> None:
    torch.onnx.export(
        model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=OPSET,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def export_dynamo(model: nn.Module, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        raise RuntimeError(f"the dynamo exporter needs onnxscript ({exc}); "
                           "pip install onnxscript, or pass --no-dynamo") from exc

    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        model, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=True, opset_version=OPSET,
        input_names=["input"], output_names=["logits"],
        dynamic_shapes=({0: batch},), external_data=False, optimize=True)


def onnx_summary(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:      # small constants may live in Constant nodes
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    inits[node.output[0]] = numpy_helper.to_array(a.t)

    def io(values):
        return [{"name": v.name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                 "elem_type": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)}
                for v in values]

    weights = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            w = inits[node.input[1]]
            weights[f"{node.op_type}:{node.input[1]}"] = {
                "shape": list(w.shape), "nonzeros": int(np.count_nonzero(w)),
                "density": float(np.count_nonzero(w) / w.size)}
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    return {
        "file": path.name, "bytes": path.stat().st_size, "opsets": opsets,
        "external_data": external, "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "ops": [n.op_type for n in model.graph.node],
        "nodes": [{"op": n.op_type, "name": n.name, "inputs": list(n.input),
                   "outputs": list(n.output),
                   "attributes": {a.name: onnx.helper.get_attribute_value(a)
                                  for a in n.attribute if a.type in (
                                      onnx.AttributeProto.INT, onnx.AttributeProto.INTS,
                                      onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING)}}
                  for n in model.graph.node],
        "weights": weights,
    }


def check_with_onnxruntime(path: Path, x: np.ndarray, y: np.ndarray,
                           torch_logits: np.ndarray) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_logits = np.concatenate([sess.run(["logits"], {"input": x[i:i + 1]})[0]
                                 for i in range(len(x))])
    batched = sess.run(["logits"], {"input": x})[0]
    return {
        "accuracy": float(np.mean(ort_logits.argmax(1) == y)),
        "max_abs_diff_vs_torch": float(np.max(np.abs(ort_logits - torch_logits))),
        "max_abs_diff_batched_vs_single": float(np.max(np.abs(batched - ort_logits))),
        "argmax_agrees_with_torch": int(np.sum(ort_logits.argmax(1) == torch_logits.argmax(1))),
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--outdir", type=Path, default=Path("examples"),
                    help="output folder (default: examples/)")
    ap.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    ap.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    ap.add_argument("--boost-strength", type=float, default=1.0,
                    help="nupic boost strength during training (default: 1.0)")
    ap.add_argument("--seed", type=int, default=SEED, help=f"random seed (default: {SEED})")
    ap.add_argument("--no-dynamo", action="store_true", help="skip the dynamo export")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error(f"--epochs must be at least 1, not {args.epochs}")

    t0 = time.perf_counter()
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    x_train, y_train, x_test, y_test = load_data()
    net = DigitsCS(rng, args.boost_strength)
    losses = train(net, x_train, y_train, args.epochs, args.batch, args.lr, gen)
    train_time = time.perf_counter() - t0

    torch_logits, test_acc, taps = evaluate(net, x_test, y_test)
    _, train_acc, _ = evaluate(net, x_train, y_train)
    acc_no_boost = accuracy_without_boost(net, x_test, y_test)
    sparsity = sparsity_figures(taps, x_test)

    # Masks: exactly zero outside, still complementary.
    weights = {}
    for name, (w, m), per, groups in zip(("conv1", "fc1"), net.masked(),
                                         (CONV_PER_OVERLAY, FC1_PER_OVERLAY),
                                         (net.conv1_groups, net.fc1_groups)):
        wn, mn = w.detach().numpy(), m.numpy()
        if np.any(wn[mn == 0] != 0):
            raise AssertionError(f"{name}: non-zero weights outside the mask")
        weights[name] = {"shape": list(wn.shape), "per_overlay": per,
                         "nonzeros": int(np.count_nonzero(wn)),
                         "density": float(np.count_nonzero(wn) / wn.size),
                         "complementary_groups": complementary_groups(
                             wn.reshape(wn.shape[0], -1), groups),
                         "groups_needed": wn.shape[0] // per}
    w2 = net.fc2.weight.detach().numpy()
    weights["fc2"] = {"shape": list(w2.shape), "per_overlay": 1,
                      "nonzeros": int(np.count_nonzero(w2)),
                      "density": float(np.count_nonzero(w2) / w2.size)}

    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "digits_calib.npy", x_train[:CALIB_IMAGES])
    np.savez_compressed(out / "digits_test.npz", x=x_test, y=y_test)

    model = Exported(net).eval()
    exports = {}
    for name, fn in (("digits_cs.onnx", export_legacy), ("digits_cs_dynamo.onnx", export_dynamo)):
        path = out / name
        if fn is export_dynamo and args.no_dynamo:
            continue
        try:
            fn(model, path)
        except Exception as exc:  # report, keep the other export
            exports[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        summary = onnx_summary(path)
        summary["onnxruntime"] = check_with_onnxruntime(path, x_test, y_test, torch_logits)
        exports[name] = summary

    report = {
        "network": "conv1 16x1x3x3 (K=2) - bn1 - maxpool 2 - local k-WTA 5/16 - fc1 128x256 (K=8) - bn2 "
                   "- global k-WTA 16/128 - fc2 10x128",
        "data": {"train": int(len(x_train)), "test": int(len(x_test)),
                 "calibration": CALIB_IMAGES, "scaling": "pixels / 16.0"},
        "training": {"epochs": args.epochs, "batch": args.batch, "lr": args.lr,
                     "optimizer": "Adam, cosine schedule", "seed": args.seed,
                     "boost_strength": args.boost_strength,
                     "final_loss": losses[-1], "torch": torch.__version__},
        "accuracy": {"torch_test": test_acc, "torch_train": train_acc,
                     "torch_test_without_boost": acc_no_boost},
        "weights": weights,
        "boost": {"kwta1": [round(float(v), 6) for v in net.kwta1.boost.flatten()],
                  "kwta2_min": float(net.kwta2.boost.min()),
                  "kwta2_max": float(net.kwta2.boost.max())},
        "activation_sparsity_test": sparsity,
        "exports": exports,
    }
    (out / "digits_cs.json").write_text(json.dumps(_jsonable(report), indent=1) + "\n")

    # ------------------------------------------------------------------ print
    print(f"trained {args.epochs} epochs in {train_time:.1f} s, final loss {losses[-1]:.4f}")
    print(f"float torch accuracy: test {test_acc:.4f} ({round(test_acc * len(y_test))}/{len(y_test)}), "
          f"train {train_acc:.4f}, test without boost {acc_no_boost:.4f}")
    for name, e in exports.items():
        if "error" in e:
            print(f"{name}: FAILED ({e['error']})")
            continue
        r = e["onnxruntime"]
        print(f"{name}: onnxruntime accuracy {r['accuracy']:.4f}, max |ort - torch| "
              f"{r['max_abs_diff_vs_torch']:.2e}, batched vs single {r['max_abs_diff_batched_vs_single']:.2e}, "
              f"{e['bytes']} bytes, opset {e['opsets']}")
        print(f"  ops: {' '.join(e['ops'])}")
    print("weight densities:")
    for name, w in weights.items():
        extra = (f", complementary groups {w['complementary_groups']}/{w['groups_needed']}"
                 if "complementary_groups" in w else "")
        print(f"  {name:6s} {str(w['shape']):16s} {w['nonzeros']:6d} non-zeros, "
              f"density {w['density']:.4f} (K={w['per_overlay']}){extra}")
    print("activation sparsity (fraction of zeros, test split):")
    for k, v in sparsity.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"wrote {out}/ in {time.perf_counter() - t0:.1f} s")
    failed = [n for n, e in exports.items() if "error" in e]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
