#!/usr/bin/env python3
"""Formal proofs of the stream units' contracts (SymbiYosys, smtbmc with z3).

Each unit, at small parameters, inside :class:`cosparse.sim.formal.StreamHarness`:
its inputs follow the stream contract (assumed), and it is proven to keep it
on its outputs (valid and payload held until ready, ``end`` only with
``last``, groups and frames of the unit's size), never to emit more frames
than it took, and per unit:

- one-to-one units (requantizer, bias add, input offset, FIFO): beats out
  never exceed beats in, and the beats in flight stay within the unit's
  capacity (none lost or duplicated);
- sparse streams (in: assumed; out: proven): at most ``R`` entries a beat,
  none of value 0, indices below the group size and strictly increasing
  through a group;
- k-WTAs: no output group has more winners than its tie rule allows (``k``,
  or ``max_winners`` with the threshold rule).

Bounded model checking to ``--depth`` cycles (every state the unit reaches
from reset within that many cycles), after a cover run that shows a whole
frame gets through within that depth (the proof is not vacuous). Exits 1
when a proof fails, printing the counterexample trace's path (a VCD).

    python3 scripts/formal.py                     # every unit, depth 16
    python3 scripts/formal.py --units fifo,kwta_local --depth 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from amaranth.hdl import Assert, Module, Signal, signed, unsigned

from cosparse.hw.adapters import Densify, InputOffset, Narrow, StreamFIFO, ZeroSkip
from cosparse.hw.kwta import LocalKWTA
from cosparse.hw.pool import MaxPool
from cosparse.hw.requant import BiasAdd, Requantizer
from cosparse.hw.reshape import DenseFlatten, SparseFlatten
from cosparse.hw.streams import dense_layout
from cosparse.sim.formal import StreamHarness, prove


def winners_bound(bound: int, groups_by: str = "last"):
    """``extra`` for a sparse-output unit: per output group (``last``, or the frame's
    ``end``), at most ``bound`` entries."""

    def extra(m: Module, dut, h: StreamHarness) -> None:
        o = dut.o
        p = o.payload
        fire = o.valid & o.ready
        count = Signal(unsigned(8))
        total = count + p.count
        m.d.comb += Assert(~o.valid | (total <= bound))
        with m.If(fire):
            m.d.sync += count.eq(total)
            with m.If(getattr(p, groups_by)):
                m.d.sync += count.eq(0)

    return extra


#: name -> (harness factory, what it shows)
UNITS = {
    "fifo": (lambda: StreamHarness(StreamFIFO(dense_layout(2, signed(4)), 2),
                                   one_to_one=True, capacity=2),
             "StreamFIFO depth 2: none lost, at most 2 in flight"),
    "input_offset": (lambda: StreamHarness(InputOffset(2, -128), one_to_one=True, capacity=0,
                                           framing={"i": (2, None), "o": (2, None)}),
                     "InputOffset: combinational, one beat out per beat in"),
    "bias_add": (lambda: StreamHarness(BiasAdd(3, width=2, acc_bits=6, bias=[1, -2, 3]),
                                       one_to_one=True, capacity=4,
                                       framing={"i": (2, None), "o": (2, None)}),
                 "BiasAdd C=3 D=2: one beat out per beat in, at most 4 in flight"),
    "requantizer": (lambda: StreamHarness(
        Requantizer(2, width=1, acc_bits=6, multiplier=[3, 5], shift=[1, 3]),
        one_to_one=True, capacity=9, framing={"i": (2, None), "o": (2, None)}),
        "Requantizer C=2 D=1 (two shifts, constants ROM): one beat per beat, at most 9 in flight"),
    "narrow": (lambda: StreamHarness(Narrow(4, width_in=2, width_out=1, elem_shape=signed(4)),
                                     framing={"i": (2, None), "o": (4, None)}),
               "Narrow C=4 P=2 Q=1: groups of 4 beats out"),
    "zero_skip": (lambda: StreamHarness(ZeroSkip(4, width=2, entries=2, value_bits=4),
                                        framing={"i": (2, None)}, sparse_groups={"o": 4},
                                        extra=winners_bound(4)),
                  "ZeroSkip C=4 D=2 R=2: sparse entries in order, at most C a group"),
    "densify": (lambda: StreamHarness(Densify(4, entries=2, width=2, value_bits=4),
                                      sparse_groups={"i": 4}, framing={"o": (2, None)}),
                "Densify C=4 R=2 D=2: groups of 2 beats out"),
    "max_pool": (lambda: StreamHarness(MaxPool(2, 2, 1, kernel=(2, 2), stride=(2, 2), width=1,
                                               elem_bits=4),
                                       framing={"i": (1, 4), "o": (1, 1)}),
                 "MaxPool 2x2x1 to 1x1x1: one position a frame out"),
    "dense_flatten": (lambda: StreamHarness(DenseFlatten(2, 2, width=1, value_bits=4),
                                            framing={"i": (2, 2), "o": (4, 1)}),
                      "DenseFlatten 2 positions x 2 channels: one group of 4 a frame"),
    "sparse_flatten": (lambda: StreamHarness(SparseFlatten(2, 2, entries=2, value_bits=4),
                                             sparse_groups={"i": 2, "o": 4},
                                             framing={"i": (None, 2), "o": (None, 1)},
                                             extra=winners_bound(4, "end")),
                       "SparseFlatten 2 positions x 2 channels: one group a frame, in order"),
    "kwta_local": (lambda: StreamHarness(LocalKWTA(4, 2, width=2, entries=2),
                                         framing={"i": (2, None)}, sparse_groups={"o": 4},
                                         extra=winners_bound(2)),
                   "LocalKWTA C=4 k=2 (merge, exact k): at most k winners a position"),
    "kwta_local_threshold": (lambda: StreamHarness(
        LocalKWTA(4, 1, width=1, entries=2, boost=[1, 2, 1, 3], max_winners=2),
        framing={"i": (4, None)}, sparse_groups={"o": 4}, extra=winners_bound(2)),
        "LocalKWTA C=4 k=1 B=2 (insertion, boost, threshold rule): at most B winners"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", default="all",
                    help=f"comma-separated units (default all): {', '.join(UNITS)}")
    ap.add_argument("--depth", type=int, default=16, help="BMC depth in cycles (default 16)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the proofs here (default: a temporary folder; a failed proof's "
                         "trace is copied next to --json or into the current folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    names = list(UNITS) if args.units == "all" else args.units.split(",")
    unknown = [n for n in names if n not in UNITS]
    if unknown:
        ap.error(f"unknown unit(s) {', '.join(unknown)}; the units are {', '.join(UNITS)}")
    if args.depth < 2:
        ap.error(f"--depth must be at least 2, got {args.depth}")
    results, failed = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cosparse-formal-") as tmp:
        work = args.workdir or Path(tmp)
        keep = args.workdir or (args.json.parent if args.json else Path.cwd())
        for i, name in enumerate(names):
            make, what = UNITS[name]
            print(f"[{i + 1}/{len(names)}] {name}: {what} (BMC depth {args.depth}) ...",
                  flush=True)
            # Not vacuous: a whole frame (or beat) gets through within the depth.
            c = prove(f"{name}_cover", make(), work, mode="cover", depth=args.depth)
            r = prove(name, make(), work, mode="bmc", depth=args.depth)
            first = min(c.cover_steps) if c.cover_steps else None
            row = {"unit": name, "property": what, "passed": r.passed and c.passed,
                   "depth": r.depth, "first_output_step": first,
                   "seconds": round(r.seconds + c.seconds, 1)}
            if not c.passed:
                r = c  # its trace (if any) and log say why no frame got through
            if row["passed"]:
                print(f"    proven in {r.seconds:.1f} s (first frame out at step {first})",
                      flush=True)
            else:
                failed.append(name)
                trace = None
                if r.trace is not None and args.workdir is None:
                    trace = keep / f"formal_{name}_{r.trace.name}"
                    trace.write_bytes(r.trace.read_bytes())
                elif r.trace is not None:
                    trace = r.trace
                row["trace"] = None if trace is None else str(trace)
                print(f"    FAILED: counterexample trace {trace}\n{r.log_tail}", flush=True)
            results.append(row)
    summary = {"depth": args.depth, "engine": "smtbmc z3", "units": results,
               "failed": failed, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{len(names) - len(failed)} of {len(names)} units proven to depth {args.depth}"
          f" in {summary['seconds']:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
