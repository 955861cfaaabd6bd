#!/usr/bin/env python3
"""Foundation figures: packer time and fill, golden-model throughput.

Packs the gsc-cs layers (docs/benchmark.md, 'The network') with complementary masks and with
random per-kernel masks of the same density, and runs the golden model on
the gsc-cs network. Writes ``foundation.json`` into the output folder and
prints a table. Not part of CI (it takes about a minute).

    python3 scripts/bench_foundation.py -o out/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from cosparse.compiler import zoo
from cosparse.compiler.packer import pack, report, unpack
from cosparse.sim import golden

LAYERS = [("conv1", 64, 25, 2), ("conv2", 64, 1600, 8), ("fc1", 1500, 1600, 25), ("fc2", 12, 1500, 1)]


def bench_packer(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for name, m, fan_in, k in LAYERS:
        masks = [("complementary", zoo.complementary_weights(m, fan_in, k, rng))]
        if k > 1:
            masks.append(("random", zoo.random_sparse_weights(m, fan_in, 1 / k, rng)))
        for kind, w in masks:
            t0 = time.perf_counter()
            ov = pack(w, k)
            dt = time.perf_counter() - t0
            assert np.array_equal(unpack(ov), w)
            rep = report(ov)
            rows.append(dict(layer=name, masks=kind, shape=[m, fan_in], K=k, seconds=round(dt, 3),
                             **{f: getattr(rep, f) for f in ("lanes", "nnz", "words", "slots",
                                                              "extra_beats", "max_beats")},
                             fill=round(rep.fill, 4)))
            print(f"  pack {name:5} {kind:13} {m}x{fan_in} K={k:<2} {dt:6.3f} s  fill {rep.fill:.3f}"
                  f"  words {rep.words} (extra {rep.extra_beats}, max beats {rep.max_beats})")
    return rows


def bench_golden(seed: int, count: int) -> dict:
    t0 = time.perf_counter()
    net = zoo.gsc_cs(seed=seed)
    build = time.perf_counter() - t0
    x = np.random.default_rng(seed + 1).integers(-128, 128, (count, 32, 32, 1)).astype(np.int8)
    golden.run(net, x[:32])  # warm up (route matrices, BLAS threads)
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        y = golden.run(net, x)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    # Bit-exactness of the fast path against the layer-by-layer path on a subset.
    exact = bool(np.array_equal(y[:128], golden.run(net, x[:128], trace=True).outputs[-1]))
    print(f"  golden gsc-cs: {count} inferences in {best:.3f} s = {count / best:,.0f}/s "
          f"(network built and packed in {build:.2f} s; fused == layer-by-layer: {exact})")
    return dict(network="gsc-cs", inferences=count, seconds=round(best, 3),
                inferences_per_s=round(count / best, 1), build_seconds=round(build, 2),
                fused_equals_trace=exact)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--outdir", default="out", help="output folder (default out/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=2000, help="golden-model inferences")
    args = ap.parse_args()
    print("cosparse foundation benchmark")
    result = dict(machine=dict(cpus=os.cpu_count(), platform=platform.platform()),
                  packer=bench_packer(args.seed), golden=bench_golden(args.seed, args.count))
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "foundation.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"  -> {out / 'foundation.json'}")


if __name__ == "__main__":
    main()
