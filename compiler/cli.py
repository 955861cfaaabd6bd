"""The ``cosparse`` command line.

Every user-facing failure is a :class:`~cosparse.compiler.errors.CosparseError`
(or an OS error on a named file): it is printed as one paragraph and the
command exits with status 2, never with a traceback. Outputs are written to a
temporary name first and renamed, so a failed command leaves no half-written
file behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import CosparseError

__all__ = ["main"]


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CosparseError(f"{what} file {path!r} does not exist") from None
    except (OSError, ValueError, EOFError) as e:
        raise CosparseError(f"{what} file {path!r} is not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise CosparseError(f"{what} file {path!r} holds an .npz archive, expected one .npy array")
    return arr


def _save_npy(path: str, arr: np.ndarray) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".npy")
    os.close(fd)
    try:
        np.save(tmp, arr)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cmd_golden(args: argparse.Namespace) -> int:
    from cosparse.compiler import ir
    from cosparse.compiler.quantize import dequantize, quantize_input
    from cosparse.sim import golden

    net = ir.load(args.outdir)
    x = _load_npy(args.input, "input")
    want = net.input.shape
    if x.ndim != len(want) + 1 or x.shape[1:] != want:
        raise CosparseError(f"input {args.input!r} has shape {x.shape}; the network "
                            f"{net.name!r} takes [N, {', '.join(map(str, want))}]")
    if x.dtype == np.int8:
        xq = x
    elif x.dtype in (np.float32, np.float64):
        if not np.all(np.isfinite(x)):
            raise CosparseError(f"input {args.input!r} holds NaN or infinite values")
        xq = quantize_input(x, net.input.scale)
    else:
        raise CosparseError(f"input {args.input!r} has dtype {x.dtype}; expected float32 "
                            "(quantized with the network's input scale) or int8")
    t0 = time.perf_counter()
    y = golden.run(net, xq)
    dt = time.perf_counter() - t0
    _save_npy(args.output, dequantize(y, net.output.scale))
    print(f"golden: {len(xq)} inferences of {net.name} in {dt:.3f} s "
          f"({len(xq) / max(dt, 1e-9):,.0f}/s) -> {args.output}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(outdir=args.outdir, count=args.count, seed=args.seed)


def _cmd_version(args: argparse.Namespace) -> int:
    from importlib.metadata import version

    from cosparse.sim import verilator

    print(f"cosparse {version('cosparse')}")
    print(f"verilator {verilator.version()} ({verilator.root()})")
    import amaranth
    print(f"amaranth {amaranth.__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cosparse",
        description="FPGA accelerators for dual-sparse (Complementary Sparsity) networks.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("demo", help="build a bundled network, pack it and run the golden model")
    d.add_argument("-o", "--outdir", help="keep the compiled network here (default: a temp folder)")
    d.add_argument("-n", "--count", type=int, default=256, help="inferences to run (default 256)")
    d.add_argument("--seed", type=int, default=0, help="weights and inputs seed (default 0)")
    d.set_defaults(func=_cmd_demo)

    g = sub.add_parser("golden", help="run the numpy golden model of a compiled network")
    g.add_argument("outdir", help="compiled network folder (holding manifest.json)")
    g.add_argument("--input", required=True, help="X.npy: float32 [N, *input shape] (or int8)")
    g.add_argument("-o", "--output", required=True, help="Y.npy: float32 [N, *output shape]")
    g.set_defaults(func=_cmd_golden)

    v = sub.add_parser("version", help="print versions of cosparse and its tools")
    v.set_defaults(func=_cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cosparse`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CosparseError as e:
        print(f"cosparse {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        name = f" {e.filename!r}" if e.filename else ""
        print(f"cosparse {args.command}: error:{name} {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cosparse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
