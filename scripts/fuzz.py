#!/usr/bin/env python3
"""Differential fuzzing: random networks, golden model against Verilator under random stalls.

Each network is drawn from its own seed (``--seed S`` + its number): input
shape (a map or a vector), conv layers (kernel, stride, padding, output
channels, kernels per overlay or random masks the packer chooses K for),
fused ReLUs, max pools, local and global k-WTAs (k, boosts, exact k or the
threshold rule's bound), linear layers, int32 logits or an int8 output; a
build mode (sparse-sparse, sparse-weights, dense); a fold (multiplier budget,
weights in logic or not, the smallest part's area-first fold); the core as
generic Verilog or as an iCE40 or ECP5 board elaborates it; inputs of random
sparsity; a stall probability on every stream. The network is simulated in
Verilator and every output compared with the golden model, bit for bit.

A failure prints its seed; ``--networks 1 --seed <that seed>`` reproduces it.
Exits 1 when any network fails. ``--json`` writes the figures.

    python3 scripts/fuzz.py --networks 20 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from cosparse.boards.top import platform_for
from cosparse.compiler import ir, zoo
from cosparse.compiler.build import resolve_board
from cosparse.compiler.fold import choose_folding
from cosparse.compiler.folding import FoldingError
from cosparse.compiler.lower import lower
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.perf import predict
from cosparse.sim import golden
from cosparse.sim.netsim import frame_beats, frames_from_beats
from cosparse.sim.verilate import run_streams

MODES = ("sparse-sparse", "sparse-weights", "dense")
BOARDS = (None, "icebreaker", "ulx3s-85f")  # None: generic Verilog


def _divisors(m: int) -> list[int]:
    return [d for d in range(1, min(m, 8) + 1) if m % d == 0]


def random_spec(rng: np.random.Generator) -> tuple[tuple[int, ...], list[tuple]]:
    """An input shape and a layer list for :func:`cosparse.compiler.zoo.random_network`."""
    spec: list[tuple] = []

    def kwta(kind: str, n: int) -> None:
        boost = int(rng.integers(2, 9)) if rng.random() < 0.5 else None
        spec.append((kind, int(rng.integers(1, max(2, n // 2 + 1))), boost))

    if rng.random() < 0.65:
        size, c = int(rng.integers(5, 11)), int(rng.integers(1, 4))
        shape: tuple[int, ...] = (size, size, c)
        for _ in range(int(rng.integers(1, 3))):
            m = int(rng.choice([4, 6, 8, 12, 16]))
            kh = int(rng.choice([1, 2, 3])) if size >= 3 else 1
            stride = 2 if size >= 6 and rng.random() < 0.2 else 1
            pad = int(rng.integers(0, 2)) if kh == 3 else 0
            k = None if rng.random() < 0.2 else int(rng.choice(_divisors(m)))
            spec.append(("conv", m, (kh, kh), k, (stride, stride), (pad, pad, pad, pad)))
            size = (size + 2 * pad - kh) // stride + 1
            if rng.random() < 0.3:
                spec.append(("relu",))
            order = rng.permutation(["pool", "kwta"])
            for what in order:
                if what == "pool" and size >= 4 and rng.random() < 0.5:
                    spec.append(("pool", (2, 2)))
                    size //= 2
                elif what == "kwta" and rng.random() < 0.7:
                    if rng.random() < 0.7:
                        kwta("local", m)
                    else:
                        kwta("global", m * size * size)
            c = m
        spec.append(("flatten",))
        n = c * size * size
    else:
        n = int(rng.integers(8, 48))
        shape = (n,)
    for _ in range(int(rng.integers(0, 3))):
        m = int(rng.choice([8, 12, 16, 24, 32]))
        k = None if rng.random() < 0.2 else int(rng.choice(_divisors(m)))
        spec.append(("linear", m, k))
        if rng.random() < 0.3:
            spec.append(("relu",))
        if rng.random() < 0.6:
            kwta("global", m)
        n = m
    m = int(rng.integers(2, 12))
    if rng.random() < 0.8:
        spec.append(("logits", m, int(rng.choice(_divisors(m)))))
    else:  # an int8 output
        spec.append(("linear", m, int(rng.choice(_divisors(m)))))
    return shape, spec


def build_case(seed: int) -> dict:
    """Everything one fuzz case uses, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    shape, spec = random_spec(rng)
    mode = str(rng.choice(MODES))
    net = zoo.random_network(shape, spec, seed=seed, mode=mode, name=f"fuzz{seed}")
    threshold = []
    for layer in net.layers:  # some k-WTAs take the threshold rule's bound
        if isinstance(layer, ir.KWTALayer) and rng.random() < 0.3:
            threshold.append(layer.name)
    specs = net.specs()
    for i, layer in enumerate(net.layers):
        if layer.name in threshold:
            n = specs[i].shape[-1] if isinstance(layer, ir.LocalKWTA) else \
                int(np.prod(specs[i].shape))
            layer.max_winners = min(n, 2 * layer.k)
    net.specs()
    net = to_drain_order(net)
    count = int(rng.integers(2, 5))
    x = rng.integers(-128, 128, (count, *shape)).astype(np.int8)
    x[rng.random(x.shape) < rng.uniform(0, 0.8)] = 0  # inputs of random sparsity
    board = BOARDS[int(rng.integers(0, len(BOARDS)))]
    logic = str(rng.choice(["none", "auto"])) if mode != "dense" else "none"
    budget = 8 if board == "icebreaker" else int(rng.integers(1, 49))
    while True:  # the drawn budget, or the least above it the network needs
        try:
            if board == "icebreaker":
                folding = choose_folding(net, x, max_multipliers=budget, area_first=True)
            else:
                folding = choose_folding(net, x, max_multipliers=budget,
                                         weights_in_logic=logic, max_luts=80_000)
            break
        except FoldingError:
            if budget > 1024:
                raise
            budget *= 2
    return {"seed": seed, "shape": shape, "spec": spec, "mode": mode, "net": net, "x": x,
            "board": board, "folding": folding, "threshold": threshold,
            "stall": float(rng.uniform(0, 0.5))}


def run_case(case: dict, build_root: Path) -> dict:
    """Simulate one case in Verilator and compare with the golden model."""
    net, folding, x = case["net"], case["folding"], case["x"]
    core = lower(net, folding)
    want = golden.run(net, x)
    per_frame = len(frame_beats(want[:1], core.out_width))
    platform = None if case["board"] is None else platform_for(resolve_board(case["board"]))
    res = run_streams(core, f"fuzz{case['seed']}",
                      [("i", core.in_layout, frame_beats(x, folding.input_width))],
                      [("o", core.out_layout, per_frame * len(x))], stall=case["stall"],
                      seed=case["seed"], max_cycles=2_000_000, build_root=build_root,
                      platform=platform)
    got = frames_from_beats(res.outputs[0], want.shape[1:], core.out_width).astype(want.dtype)
    return {"exact": bool(np.array_equal(got, want)),
            "mismatches": int(np.sum(got != want)),
            "predicted_interval": round(predict(net, folding, x)["interval_cycles"], 1)}


def describe(case: dict) -> str:
    layers = " ".join(type(layer).__name__ for layer in case["net"].layers)
    return (f"seed {case['seed']}: {case['mode']}, {case['board'] or 'generic'}, "
            f"stall {case['stall']:.2f}, input {case['shape']}, {layers}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", type=int, default=10, help="networks to try (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="the first network's seed (default 0)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--build-root", type=Path, default=None,
                    help="Verilator builds (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.networks < 1:
        ap.error(f"--networks must be at least 1, got {args.networks}")
    failures, rows = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cosparse-fuzz-") as tmp:
        root = args.build_root or Path(tmp)
        for i in range(args.networks):
            seed = args.seed + i
            try:
                case = build_case(seed)
            except Exception as exc:  # a generator that cannot make a valid network is a bug
                failures.append(seed)
                print(f"[{i + 1}/{args.networks}] seed {seed}: FAILED to build: {exc!r}",
                      flush=True)
                traceback.print_exc()
                continue
            print(f"[{i + 1}/{args.networks}] {describe(case)}", flush=True)
            try:
                got = run_case(case, root)
            except Exception as exc:
                got = {"exact": False, "error": repr(exc)[:2000]}
            rows.append({"seed": seed, "mode": case["mode"], "board": case["board"],
                         "stall": case["stall"], "layers": len(case["net"].layers), **got})
            if not got["exact"]:
                failures.append(seed)
                print(f"    FAILED: {got.get('error') or str(got['mismatches']) + ' outputs differ'}"
                      f"; reproduce: python3 scripts/fuzz.py --networks 1 --seed {seed}",
                      flush=True)
            else:
                print(f"    bit-exact ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    summary = {"networks": args.networks, "first_seed": args.seed, "failures": failures,
               "seconds": round(time.perf_counter() - t0), "cases": rows}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{args.networks} networks, {len(failures)} failed"
          + (f" (seeds {', '.join(map(str, failures))})" if failures else "")
          + f", {summary['seconds']} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
