"""Whole-network simulation: a compiled network's core in Verilator, frames back to back.

:func:`simulate_network` builds the :class:`~cosparse.hw.network.NetworkCore`
of a network (once per distinct Verilog: builds are cached under
``build_root``), streams int8 frames into it without stalls, and returns the
int outputs with the cycle counts: the latency of the first frame (first
input beat accepted to last output beat) and the steady-state interval
(mean distance between the ends of consecutive frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cosparse.compiler import ir
from cosparse.compiler.folding import Folding
from cosparse.compiler.lower import lower
from cosparse.hw.streams import dense_beats

from .verilate import run_streams

__all__ = ["NetworkRun", "simulate_network", "frame_beats", "frames_from_beats"]


@dataclass
class NetworkRun:
    outputs: np.ndarray  # [N, *output shape], int8 or int32
    latency_cycles: int
    interval_cycles: float | None  # None for a single frame
    total_cycles: int


def _groups(shape: tuple[int, ...]) -> tuple[int, int]:
    return (shape[0] * shape[1], shape[2]) if len(shape) == 3 else (1, int(np.prod(shape)))


def input_bytes(net: ir.Network, x: np.ndarray) -> np.ndarray:
    """The core's input bytes (as int8) of frames ``x``: the values, or for an int9 input
    ``value - lo`` (0..255, the host link's bytes)."""
    if net.input.dtype != "int9":
        return x
    b = np.asarray(x, np.int64) - net.input.bounds[0]
    return np.where(b > 127, b - 256, b)


def frame_beats(x: np.ndarray, width: int) -> list[dict]:
    """Dense input beats of frames ``x`` ``[N, *shape]``."""
    beats: list[dict] = []
    for xi in x:
        groups, g = _groups(xi.shape)
        beats += dense_beats(xi.reshape(groups, g).astype(int).tolist(), width)
    return beats


def frames_from_beats(beats: list[dict], shape: tuple[int, ...], width: int) -> np.ndarray:
    """Output frames ``[N, *shape]`` from dense output beats."""
    groups, g = _groups(shape)
    per_group = -(-g // width)
    data = np.array([b["data"] for b in beats], dtype=np.int64)
    data = data.reshape(-1, groups, per_group * width)[:, :, :g]
    return data.reshape(-1, *shape)


def simulate_network(net: ir.Network, folding: Folding, x: np.ndarray, *,
                     build_root: Path | None = None, waves: bool = False,
                     name: str = "cosparse_core", chunk: int = 64,
                     progress: Callable[[int, int], None] | None = None,
                     platform=None, netlist=None) -> NetworkRun:
    """Run int8 frames ``x`` through the network's core in Verilator.

    Parameters
    ----------
    net : Network
        In drain order.
    folding : Folding
    x : ndarray of int8, ``[N, *net.input.shape]``
    build_root : Path, optional
        Where the Verilator model is built and kept.
    waves : bool
        Write an FST trace into the build folder.
    chunk : int
        Frames per simulator run: long runs go in chunks, each back to back
        from reset, so that ``progress(done, total)`` can report between
        them. The latency is the first chunk's first frame; the interval is
        the mean over all chunks' consecutive frames.
    platform : amaranth.build.Platform, optional
        Elaborate the core for this board's platform, as its bitstream does
        (vendor primitives by their :mod:`cosparse.sim.primitives` models):
        the cycles and outputs of the board's own netlist.
    netlist : callable, optional
        Simulate a synthesized netlist instead (:mod:`cosparse.sim.gatelevel`).
    """
    core = lower(net, folding)
    out_shape = net.output.shape
    groups, g = _groups(out_shape)
    per_frame = groups * -(-g // core.out_width)
    n = len(x)
    ys, gaps, latency, total = [], [], 0, 0
    for c0 in range(0, n, chunk):
        xs = input_bytes(net, x[c0:c0 + chunk])
        res = run_streams(core, name, [("i", core.in_layout, frame_beats(xs, folding.input_width))],
                          [("o", core.out_layout, per_frame * len(xs))], stall=0.0,
                          max_cycles=50_000_000, build_root=build_root, waves=waves,
                          platform=platform, netlist=netlist)
        ys.append(frames_from_beats(res.outputs[0], out_shape, core.out_width))
        ends = [res.cycles[0][(f + 1) * per_frame - 1] for f in range(len(xs))]
        start = res.input_cycles[0][0]
        if c0 == 0:
            latency = int(ends[0] - start)
        gaps += list(np.diff(ends))
        total += int(ends[-1] - start)
        if progress is not None:
            progress(min(c0 + chunk, n), n)
    dtype = np.int32 if net.output.dtype == "int32" else np.int8
    interval = float(np.mean(gaps)) if gaps else None
    return NetworkRun(np.concatenate(ys).astype(dtype), latency, interval, total)
