"""Verilator build time and simulation speed for whole networks (JSON out).

Networks: the bundled digits CNN (compiled from ONNX) and the reduced gsc-cs
network (built in the IR). For each: the Verilator model's build time (in a
fresh build folder), simulated inferences per second of wall time, cycles
per inference measured and predicted, and bit-exactness against the golden
model.

    python3 scripts/bench_sim.py -o out/ [-n 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cosparse.compiler import ir, zoo
from cosparse.compiler.build import compile_model, network_input
from cosparse.compiler.fold import choose_folding
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.perf import predict
from cosparse.compiler.folding import Folding
from cosparse.sim import golden
from cosparse.sim.netsim import simulate_network

ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, net: ir.Network, folding: Folding, xq: np.ndarray, build: Path) -> dict:
    print(f"{name}: building the Verilator model ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    simulate_network(net, folding, xq[:2], build_root=build, name=name)  # build + tiny run
    build_s = time.perf_counter() - t0
    print(f"{name}: simulating {len(xq)} inferences ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    run = simulate_network(net, folding, xq, build_root=build, name=name)
    sim_s = time.perf_counter() - t0
    return {"network": name, "build_seconds": round(build_s, 1), "inferences": len(xq),
            "sim_seconds": round(sim_s, 1),
            "simulated_inferences_per_s": round(len(xq) / sim_s, 1),
            "simulated_cycles_per_s": round(run.total_cycles / sim_s),
            "latency_cycles": run.latency_cycles, "interval_cycles": run.interval_cycles,
            "predicted_interval_cycles": predict(net, folding, xq[1:])["interval_cycles"],
            "bit_exact": bool(np.array_equal(run.outputs, golden.run(net, xq)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--outdir", default="out")
    ap.add_argument("-n", "--count", type=int, default=64)
    args = ap.parse_args()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="cosparse-bench-sim-") as tmp:
        tmp = Path(tmp)
        ex = ROOT / "examples"
        t0 = time.perf_counter()
        compile_model(ex / "digits_cs.onnx", board="sim", outdir=tmp / "digits",
                      calibration=np.load(ex / "digits_calib.npy"), progress=lambda m: None)
        compile_s = time.perf_counter() - t0
        net = ir.load(tmp / "digits")
        x = np.load(ex / "digits_test.npz")["x"][:args.count]
        r = measure("digits", net, Folding.from_dict(net.meta["folding"]),
                    network_input(net, x, "digits"), tmp / "b1")
        r["compile_seconds"] = round(compile_s, 1)
        results.append(r)
        gnet = to_drain_order(zoo.gsc_cs(seed=0, reduced=True))
        xq = np.random.default_rng(0).integers(-128, 128, (args.count, *gnet.input.shape))
        xq = xq.astype(np.int8)
        fold = choose_folding(gnet, xq[:4], max_multipliers=156)
        results.append(measure("gsc_cs_reduced", gnet, fold, xq, tmp / "b2"))
    (out / "bench_sim.json").write_text(json.dumps(results, indent=1) + "\n")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
