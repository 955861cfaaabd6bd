#!/usr/bin/env python3
"""Gate-level simulation: the synthesized netlist of the digits network's core against golden.

Compiles the bundled digits network (``examples/digits_cs.onnx``) for
``--board``, elaborates its core as the board's bitstream does, synthesizes
it with yosys as its bitstream build does (``synth_ice40 -spram -dsp -dff``;
``synth_ecp5``), simulates the netlist in Verilator with yosys's cell models
(and cosparse's models of ECP5's MULT18X18D and DP16KD, which yosys only
declares), and compares every output with the
golden model's on the test digits. Exits 1 on any difference. ``--json``
writes the figures.

    python3 scripts/gate_level.py --board icebreaker --count 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cosparse.hw.util import KEEP_REPLICAS
from cosparse.boards.top import platform_for
from cosparse.compiler import api
from cosparse.sim import golden
from cosparse.sim.gatelevel import FAMILIES, netlist_for
from cosparse.sim.netsim import simulate_network

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(board: str, count: int, build_root: Path, progress=print) -> dict:
    """Compile, synthesize and simulate; return the figures (``exact`` among them)."""
    t0 = time.perf_counter()
    acc = api.compile(str(EXAMPLES / "digits_cs.onnx"), board=board,
                      calibration=np.load(EXAMPLES / "digits_calib.npy"))
    family = acc.board.family
    if family not in ("ice40", "ecp5"):
        raise SystemExit(f"board {board!r} is not an iCE40 or ECP5 board")
    test = np.load(EXAMPLES / "digits_test.npz")
    x = acc.quantize(test["x"][:count])
    progress(f"{acc.network.name} for {board} ({family}): {len(x)} test digits")
    # the bitstream build's synthesis options (boards/bitstream.py)
    options = "" if family == "ecp5" else \
        ("-spram " if acc.board.spram_kbit else "") + "-dsp -dff"
    hook = netlist_for(family, build_root, options, KEEP_REPLICAS, progress)
    sim = simulate_network(acc.network, acc.folding, x, build_root=build_root,
                           name="gate_core", platform=platform_for(acc.board), netlist=hook,
                           progress=lambda d, n: progress(f"{d}/{n} digits simulated"))
    want = golden.run(acc.network, x)
    exact = bool(np.array_equal(sim.outputs, want))
    labels = test["y"][:count]
    pred = acc.dequantize(sim.outputs).argmax(axis=-1)
    return {"board": board, "family": family,
            "synthesis": f"{FAMILIES[family]} {options}".strip(),
            "digits": int(len(x)), "exact": exact,
            "mismatches": int(np.sum(sim.outputs != want)),
            "accuracy": round(float(np.mean(pred == labels)), 4),
            "latency_cycles": sim.latency_cycles, "interval_cycles": sim.interval_cycles,
            "predicted_interval_cycles": acc.predicted_interval_cycles,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", required=True, help="an iCE40 or ECP5 catalog board")
    ap.add_argument("--count", type=int, default=32, help="test digits (default 32)")
    ap.add_argument("--build-root", type=Path, default=None,
                    help="netlists and Verilator models (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error(f"--count must be at least 1, got {args.count}")
    with tempfile.TemporaryDirectory(prefix="cosparse-gate-") as tmp:
        res = run(args.board, args.count, args.build_root or Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    print(f"{res['board']}: gate-level netlist {'==' if res['exact'] else '!='} golden on "
          f"{res['digits']} digits ({res['mismatches']} outputs differ; accuracy "
          f"{res['accuracy']:.2%}), interval {res['interval_cycles']} cycles, "
          f"{res['seconds']:.0f} s")
    return 0 if res["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
