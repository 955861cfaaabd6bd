"""``cosparse demo``: the whole foundation on a bundled network.

Builds the reduced gsc-cs network (brief section 4, scaled down) with seeded
complementary weights, packs it, writes and re-reads its manifest, runs the
golden model on random inputs and checks it against the dense integer
reference. Later stages (Verilator, bitstreams) extend this command.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from . import ir, zoo
from .errors import CosparseError
from .packer import report, unpack

__all__ = ["run_demo", "layer_table"]


def layer_table(net: ir.Network, x: np.ndarray) -> list[dict]:
    """Per overlay layer: packing and the activity measured on inputs ``x``.

    ``dense_macs`` counts every weight of the dense layer at every output
    position; ``useful_macs`` only products of a non-zero weight and a
    non-zero input (per inference, averaged over ``x``).
    """
    from cosparse.sim import golden

    trace = golden.run(net, x, trace=True).outputs
    inputs = [x] + trace[:-1]
    rows = []
    for layer, inp in zip(net.layers, inputs):
        if not isinstance(layer, (ir.OverlayLinear, ir.OverlayConv)):
            continue
        ov = layer.overlays
        rep = report(ov)
        nnz_row = (unpack(ov) != 0).sum(axis=0)  # non-zero weights per fan-in index
        if isinstance(layer, ir.OverlayConv):
            cols = golden._im2col(inp, layer)
            positions = cols.shape[1] * cols.shape[2]
            active = (cols != 0).reshape(len(inp), -1, ov.fan_in)
        else:
            positions = 1
            active = (inp != 0).reshape(len(inp), 1, ov.fan_in)
        useful = float((active @ nnz_row).sum(axis=1).mean())
        rows.append(dict(name=layer.name, kernels=ov.num_kernels, fan_in=ov.fan_in,
                         K=ov.kernels_per_overlay, L=ov.lanes, words=ov.words,
                         fill=rep.fill, nnz=ov.nnz,
                         dense_macs=ov.num_kernels * ov.fan_in * positions, useful_macs=useful))
    return rows


def run_demo(outdir: str | None = None, count: int = 256, seed: int = 0) -> int:
    """Run the demo; return the process exit status."""
    if count < 1:
        raise CosparseError(f"--count must be at least 1, got {count}")
    from cosparse.sim import golden
    from cosparse.sim.reference import reference_run

    with tempfile.TemporaryDirectory(prefix="cosparse-demo-") as tmp:
        out = Path(outdir) if outdir else Path(tmp)
        print("cosparse demo: reduced gsc-cs network, complementary weights "
              f"(seed {seed})")
        t0 = time.perf_counter()
        net = zoo.gsc_cs(seed=seed, reduced=True)
        ir.save(net, out)
        loaded = ir.load(out)
        print(f"  built, packed and saved in {time.perf_counter() - t0:.2f} s -> "
              f"{out / 'manifest.json'}" + ("" if outdir else " (temporary)"))

        rng = np.random.default_rng(seed + 1)
        x = rng.integers(-128, 128, size=(count, *net.input.shape)).astype(np.int8)
        print(f"\n  {'layer':8} {'kernels x fan-in':>17} {'K':>3} {'L':>3} {'words':>6} "
              f"{'fill':>5} {'dense MACs':>11} {'useful MACs':>12}")
        rows = layer_table(loaded, x[:64])
        for r in rows:
            print(f"  {r['name']:8} {r['kernels']:>8} x {r['fan_in']:<6} {r['K']:>3} {r['L']:>3} "
                  f"{r['words']:>6} {r['fill']:>5.2f} {r['dense_macs']:>11,} "
                  f"{r['useful_macs']:>12,.0f}")
        dense = sum(r["dense_macs"] for r in rows)
        useful = sum(r["useful_macs"] for r in rows)
        print(f"  {'total':8} {'':>17} {'':>3} {'':>3} {'':>6} {'':>5} {dense:>11,} "
              f"{useful:>12,.0f}  ({dense / useful:.1f}x fewer)")

        t0 = time.perf_counter()
        y = golden.run(loaded, x)
        dt = time.perf_counter() - t0
        dense_w = {layer.name: unpack(layer.overlays) for layer in net.layers
                   if isinstance(layer, (ir.OverlayLinear, ir.OverlayConv))}
        ref = reference_run(net, dense_w, x[:32])
        same = bool(np.array_equal(y[:32], ref))
        print(f"\n  golden model: {count} inferences in {dt:.3f} s ({count / dt:,.0f}/s)")
        print(f"  golden == dense integer reference on 32 inputs: {'yes' if same else 'NO'}")
        print(f"  predicted classes of the first 8 inputs: {y[:8].argmax(axis=1).tolist()}")
        return 0 if same else 1
