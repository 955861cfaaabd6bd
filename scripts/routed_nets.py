#!/usr/bin/env python3
"""Where a routed ECP5 build loses its clock: the nets that reach a sink latest, per unit.

nextpnr's report names one critical path per clock. With
``COSPARSE_NEXTPNR_ARGS=--detailed-timing-report`` in the environment of a
board build (``cosparse compile --bitstream``, ``cosparse bench --route``),
its ``build/cosparse_top.report.json`` holds, for every net, the routed
arrival time at each of its sinks (the ``delay`` pair's second value: on the
critical path's last net it is the path's length); this script ranks them.

    python3 scripts/routed_nets.py OUT/build/cosparse_top.report.json [--over 3.0] [--top 25]

Prints, per unit (the driver's hierarchy to ``--depth`` levels), the nets whose
longest sink delay exceeds ``--over`` ns (the ``--top`` units with most), and
the ``--top`` longest nets with their fanout.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def net_arrivals(report: dict) -> list[tuple[float, str, str, int]]:
    """``(latest arrival at a sink in ns, net, driver cell, sinks)`` for every routed net."""
    out = []
    for net in report.get("detailed_net_timings", []):
        ends = net.get("endpoints", [])
        if ends:
            out.append((max(e["delay"][-1] for e in ends), net["net"], net["driver"], len(ends)))
    return out


def unit_of(cell: str, depth: int) -> str:
    """The hierarchy of a cell name (``link.core.s8_overlayengine.banks...``) to ``depth``
    levels, the cell's own name left out (``(top)`` for a cell of the top)."""
    parts = cell.split(".")
    return ".".join(parts[:min(depth, len(parts) - 1)]) or "(top)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--over", type=float, default=3.0, help="ns (default 3.0)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--depth", type=int, default=3, help="hierarchy levels of a unit")
    args = ap.parse_args(argv)
    nets = net_arrivals(json.loads(args.report.read_text()))
    if not nets:
        ap.error(f"{args.report} has no detailed net timings: build with "
                 "COSPARSE_NEXTPNR_ARGS=--detailed-timing-report")
    per_unit = collections.Counter(unit_of(d, args.depth) for t, _, d, _ in nets if t > args.over)
    print(f"{len(nets):,} nets; {sum(per_unit.values()):,} with a sink over {args.over} ns")
    for unit, n in per_unit.most_common(args.top):
        print(f"  {n:6,}  {unit}")
    print(f"\nthe {args.top} longest:")
    for t, net, driver, fanout in sorted(nets, reverse=True)[:args.top]:
        print(f"  {t:6.2f} ns  fanout {fanout:5}  {net}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
