#!/usr/bin/env python3
"""Per layer, the share of a quantized model's integer activations the golden model reproduces.

Imports a QDQ, QCDQ or QONNX model, runs the golden model and ONNX Runtime
on the same inputs and prints, for each IR layer, the fraction of
activations equal to the model's (its ``QuantizeLinear`` outputs, zero
points off), chained and with the layer fed ONNX Runtime's own input, the
largest difference, and the top-1 agreement of the outputs; ``--json``
writes the same figures. Exits 1 when a layer (chained) is below ``--min``.

    python3 scripts/fidelity.py model_qdq.onnx --inputs x.npy
    python3 scripts/fidelity.py model_qdq.onnx --inputs x.npy --min 0.999 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cosparse.compiler.errors import CosparseError
from cosparse.compiler.fidelity import format_table, layer_agreement
from cosparse.compiler.frontend import import_onnx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="the quantized ONNX model")
    ap.add_argument("--inputs", type=Path, required=True,
                    help=".npy of float32 inputs [N, *input shape] (or .npz with 'x')")
    ap.add_argument("--optimized", action="store_true",
                    help="ONNX Runtime with graph optimizations (fused integer kernels)")
    ap.add_argument("--min", type=float, default=None,
                    help="exit 1 when a layer agrees on less than this fraction")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    try:
        data = np.load(args.inputs, allow_pickle=False)
        x = data["x"] if isinstance(data, np.lib.npyio.NpzFile) else data
        net = import_onnx(args.model)
        fid = layer_agreement(args.model, net, np.asarray(x, dtype=np.float32),
                              optimized=args.optimized)
    except (CosparseError, OSError, KeyError, ValueError) as e:
        print(f"fidelity: {e}", file=sys.stderr)
        return 2
    print(format_table(fid))
    if args.json:
        args.json.write_text(json.dumps(fid.to_dict(), indent=1) + "\n")
    if args.min is not None and fid.worst() < args.min:
        print(f"a layer agrees on {100 * fid.worst():.3f}% < {100 * args.min:.3f}%",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
