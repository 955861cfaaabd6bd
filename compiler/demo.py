"""``cosparse demo``: the user's path on the bundled digits network.

Compiles the trained dual-sparse digits CNN (``examples/``), runs the golden
model on the whole test split and Verilator on a few digits, and prints the
accuracies, the bit-exactness check and the cycles per inference; then
checks the golden model against the dense integer reference on the reduced
gsc-cs network.
"""

from __future__ import annotations

import json
import os
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

from cosparse.sim import golden
from cosparse.sim.reference import reference_run

from . import api, ir, zoo
from .errors import CosparseError
from .packer import unpack

__all__ = ["run_demo", "DEFAULT_DEMO_DIR"]


def _example(name: str) -> Path:
    return Path(str(files("cosparse.examples") / name))


#: Where the demo keeps what it builds, in the working directory, unless ``-o`` says.
DEFAULT_DEMO_DIR = "cosparse-demo"


def run_demo(outdir: str | os.PathLike | None = None, count: int = 256, seed: int = 0,
             sim_count: int = 16, bitstream: str | None = None) -> int:
    """Run the demo; return the process exit status.

    Everything is kept in ``outdir`` (default :data:`DEFAULT_DEMO_DIR`):
    ``digits/`` (the compiled network, its Verilator model) and, with a
    bitstream, ``digits_<board>/``.

    1. Compile the bundled digits network (``examples/digits_cs.onnx``, a
       trained dual-sparse CNN) for the ``sim`` board.
    2. Golden model on the whole test split: accuracy against the float
       model's (recorded when it was trained).
    3. Verilator on the first ``sim_count`` test digits: bit-exact against
       the golden model, cycles per inference measured and predicted.
    4. The reduced gsc-cs network: golden model against the dense integer
       reference (``count`` random inputs).
    5. With ``bitstream`` (a board name; ``cosparse demo`` defaults to the
       ULX3S-85F): the digits network's bitstream for that board and its
       resource and timing report.
    """
    if count < 1 or sim_count < 2:
        raise CosparseError(f"--count must be at least 1 and --sim-count at least 2, "
                            f"got {count} and {sim_count}")
    root = Path(outdir if outdir is not None else DEFAULT_DEMO_DIR)
    info = json.loads(_example("digits_cs.json").read_text())
    test = np.load(_example("digits_test.npz"))
    cal = np.load(_example("digits_calib.npy"))
    print(f"cosparse demo: {info['network']}")
    t0 = time.perf_counter()
    acc = api.compile(_example("digits_cs.onnx"), board="sim", outdir=root / "digits",
                      calibration=cal, progress=lambda m: print(f"  compile: {m}", flush=True))
    print(f"  compiled in {time.perf_counter() - t0:.1f} s -> {acc.folder}")
    print("\n" + "\n".join("  " + line for line in acc.report.splitlines()[4:]))

    xq = acc.quantize(test["x"], "digits test split")
    t0 = time.perf_counter()
    yq = acc.golden(xq, raw=True)
    dt = time.perf_counter() - t0
    acc_golden = float((acc.dequantize(yq).argmax(axis=1) == test["y"]).mean())
    acc_float = info["accuracy"]["torch_test"]
    print(f"\n  test split, {len(xq)} digits: float {acc_float:.2%}, golden (int8) "
          f"{acc_golden:.2%} ({dt * 1e3:.0f} ms)")

    n = min(sim_count, len(xq))
    print(f"  Verilator: building the core and running {n} digits back to back ...", flush=True)
    run = acc.simulate(xq[:n])
    exact = bool(np.array_equal(run.raw, yq[:n]))
    acc_sim = float((run.outputs.argmax(axis=1) == test["y"][:n]).mean())
    print(f"  Verilator == golden on {n} digits: {'yes' if exact else 'NO'}; accuracy "
          f"{acc_sim:.2%}; latency {run.latency_cycles:,} cycles, interval "
          f"{run.interval_cycles:,.0f} cycles per inference (predicted "
          f"{acc.predicted_interval_cycles:,.0f}); {run.seconds:.1f} s")

    print(f"\n  reduced gsc-cs (seed {seed}): golden model vs dense integer reference")
    gnet = zoo.gsc_cs(seed=seed, reduced=True)
    x = np.random.default_rng(seed + 1).integers(-128, 128, (count, *gnet.input.shape))
    x = x.astype(np.int8)
    t0 = time.perf_counter()
    y = golden.run(gnet, x)
    dt = time.perf_counter() - t0
    dense_w = {layer.name: unpack(layer.overlays) for layer in gnet.layers
               if isinstance(layer, ir.OverlayLayer)}
    same = bool(np.array_equal(y[:32], reference_run(gnet, dense_w, x[:32])))
    print(f"  golden model: {count} inferences in {dt:.3f} s ({count / dt:,.0f}/s)")
    print(f"  golden == dense integer reference on 32 inputs: {'yes' if same else 'NO'}")
    ok = same and exact
    if bitstream:
        ok = _bitstream_step(bitstream, root / f"digits_{bitstream}", cal) and ok
    return 0 if ok else 1


#: Clocks of the digits bitstream where a board's default is too fast for it: the
#: iCEBreaker build (96% of the UP5K's logic cells) reached 23.5 MHz in nextpnr
#: against the board's 24 MHz (its critical path: the serial global k-WTA's
#: emission decision, key compare to group counter).
DEMO_CLOCK_MHZ = {"icebreaker": 20.0}


def _bitstream_step(board: str, out: Path, cal) -> bool:
    """Build the digits network's bitstream for ``board`` and print its report."""
    clock = DEMO_CLOCK_MHZ.get(board)
    print(f"\n  {board} bitstream of the digits network"
          + (f" at {clock:g} MHz" if clock else "") + " ...", flush=True)
    acc = api.compile(_example("digits_cs.onnx"), board=board, outdir=out, calibration=cal,
                      clock_mhz=clock, progress=lambda m: print(f"  compile: {m}", flush=True))
    try:
        rep = acc.build(progress=lambda m: print(f"  bitstream: {m}", flush=True))
    except CosparseError as e:
        print(f"  bitstream: {e}")
        return False
    section = (out / "report.md").read_text().split("## Bitstream")[1].splitlines()[1:]
    print("\n" + "\n".join("  " + line for line in section if line))
    print(f"  -> {out / rep['bitstream']}; then cosparse run {out} --port /dev/ttyUSB1 "
          "--input X.npy -o Y.npy")
    return True
