#!/usr/bin/env python3
"""Write the Brevitas test models the frontend tests read (tests/compiler/data/bv_*.onnx).

Two small dual-sparse networks with quantization-aware layers, trained
briefly on scikit-learn's 8x8 digits (the data of ``make_test_models.py``),
each exported four ways: QONNX (``Quant`` nodes) and QCDQ
(``QuantizeLinear -> Clip -> DequantizeLinear``), each by PyTorch's
TorchScript and dynamo exporters. Together they cover what Brevitas users
write: narrow signed weights (4 and 6 bits, per tensor and per channel),
unsigned activations of 4 to 7 bits after ``QuantReLU``, signed 8-bit
activations from ``QuantIdentity``, float biases, and k-WTA between the
quantized layers.

    bv_cnn: QuantIdentity (int8) -> QuantConv2d (4-bit weights) -> QuantReLU (uint4)
            -> local k-WTA (channels-last view, boost) -> MaxPool -> Flatten
            -> QuantLinear (8-bit weights)
    bv_mlp: QuantIdentity (int8) -> QuantLinear (6-bit per-channel weights)
            -> QuantReLU (uint7) -> global k-WTA (threshold, boost) -> QuantLinear
            -> QuantIdentity (int8) -> global k-WTA (gather/scatter) -> QuantLinear

torch, brevitas, onnxscript and scikit-learn are needed here only::

    pip install torch==2.13.0 brevitas onnxoptimizer onnxscript scikit-learn
    python3 scripts/make_brevitas_models.py
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import onnx
    import torch
    from torch import nn
    import brevitas.nn as qnn
    from brevitas.export import export_onnx_qcdq, export_qonnx
    from brevitas.quant import Int8ActPerTensorFloat
except ImportError as exc:  # pragma: no cover - depends on the machine
    sys.exit(f"make_brevitas_models.py needs PyTorch and Brevitas ({exc}): "
             "pip install torch==2.13.0 brevitas onnxoptimizer onnxscript")

from make_test_models import (KWinners2dLocal, KWinnersScatter, KWinnersThreshold,  # noqa: E402
                              _boost, load_data)

OUT = Path(__file__).resolve().parent.parent / "tests" / "compiler" / "data"


class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def build(name: str, rng: np.random.Generator) -> nn.Sequential:
    q8 = dict(act_quant=Int8ActPerTensorFloat)
    if name == "bv_cnn":
        return nn.Sequential(
            qnn.QuantIdentity(**q8),
            qnn.QuantConv2d(1, 16, 3, padding=1, weight_bit_width=4),
            qnn.QuantReLU(bit_width=4),
            KWinners2dLocal(_boost(rng, 16), 4, "permute"),
            nn.MaxPool2d(2), Flat(),
            qnn.QuantLinear(256, 10, bias=True, weight_bit_width=8))
    if name == "bv_mlp":
        return nn.Sequential(
            qnn.QuantIdentity(**q8),
            qnn.QuantLinear(64, 96, bias=True, weight_bit_width=6,
                            weight_scaling_per_output_channel=True),
            qnn.QuantReLU(bit_width=7),
            KWinnersThreshold(_boost(rng, 96), 24),
            qnn.QuantLinear(96, 64, bias=True, weight_bit_width=8),
            qnn.QuantIdentity(**q8),
            KWinnersScatter(None, 16),
            qnn.QuantLinear(64, 10, bias=True, weight_bit_width=8))
    raise ValueError(name)


def train(net: nn.Module, x: np.ndarray, y: np.ndarray, vector: bool, epochs: int = 15) -> None:
    torch.manual_seed(0)
    xs = torch.tensor(x.reshape(len(x), -1) if vector else x)
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
    net.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--outdir", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.outdir.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = load_data()
    for i, name in enumerate(("bv_cnn", "bv_mlp")):
        rng = np.random.default_rng(200 + i)
        torch.manual_seed(i)
        vector = name == "bv_mlp"
        net = build(name, rng)
        train(net, x_tr, y_tr, vector)
        with torch.no_grad():
            xs = torch.tensor(x_te.reshape(len(x_te), -1) if vector else x_te)
            acc = float((net(xs).argmax(1).numpy() == y_te).mean())
        example = torch.zeros((1, 64) if vector else (1, 1, 8, 8))
        for fmt, export in (("qonnx", export_qonnx), ("qcdq", export_onnx_qcdq)):
            for dynamo in (False, True):
                path = args.outdir / f"{name}_{fmt}_{'dynamo' if dynamo else 'legacy'}.onnx"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    export(net, example, str(path), input_names=["x"], output_names=["logits"],
                           dynamo=dynamo, opset_version=18 if dynamo else 13)
                model = onnx.load(str(path))  # weights inside the file, not beside it
                data = path.with_name(path.name + ".data")
                if data.exists():
                    data.unlink()
                onnx.save(model, str(path))
                print(f"{path.name:32s} test accuracy {acc:.3f}  "
                      f"{path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
