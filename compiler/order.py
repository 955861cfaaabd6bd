"""Channel order: number every overlay layer's outputs in the engine's drain order.

The overlay engine emits accumulator ``(lane n % L, id n // L)`` as the
``n``-th element of a group. :func:`to_drain_order` renumbers each overlay
layer's kernels so that this element *is* channel ``n`` (see
:func:`~cosparse.compiler.packer.drain_order`), and carries the renumbering
through the network: the layer's bias, requant constants and accumulator
scales, the boost of a following k-WTA, and the input rows (fan-in) of the
next overlay layer, across pooling, k-WTA and flatten. The network computes
the same function, with its channels permuted; the permutation of the final
output is recorded in ``meta["output_permutation"]`` (output ``n`` of the
compiled network is element ``perm[n]`` of the source model's, composed with
any renumbering already recorded there) so that results can be put back in
the source model's order.

One visible effect: the k-WTA tie rule ("the lower index wins") applies to
the compiled network's channel numbers.
"""

from __future__ import annotations

import dataclasses

import copy

import numpy as np

from . import ir
from .packer import drain_order

__all__ = ["to_drain_order", "permute_rows", "restore_output_order"]


def permute_rows(ov: ir.Overlays, rows: np.ndarray) -> ir.Overlays:
    """Overlays whose input row ``f`` is the old row ``rows[f]`` (words move with it)."""
    rows = np.asarray(rows, dtype=np.int64)
    beats = ov.beats.astype(np.int64)[rows]
    row_start = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(beats, out=row_start[1:])
    src = np.repeat(ov.row_start[:-1].astype(np.int64)[rows] - row_start[:-1], beats)
    src += np.arange(int(row_start[-1]))
    return ir.Overlays(weights=ov.weights[src], kernel_ids=ov.kernel_ids[src],
                       row_start=row_start.astype(ov.row_start.dtype), kernel_map=ov.kernel_map,
                       num_kernels=ov.num_kernels)


def _row_perm(layer: ir.Layer, inp: ir.TensorSpec, perm: np.ndarray) -> np.ndarray:
    """Input-row permutation of an overlay layer whose input channels are permuted."""
    if isinstance(layer, ir.OverlayConv):
        kh, kw = layer.kernel
        c = inp.shape[-1]
        taps = np.arange(kh * kw)[:, None] * c
        return (taps + perm[None, :]).ravel()
    return perm


def to_drain_order(net: ir.Network) -> ir.Network:
    """A copy of ``net`` with every overlay layer in drain order (see the module doc)."""
    net = copy.deepcopy(net)
    specs = net.specs()
    perm: np.ndarray | None = None  # new channel n of the current tensor = old perm[n]
    for i, layer in enumerate(net.layers):
        inp = specs[i]
        if isinstance(layer, ir.OverlayLayer):
            if perm is not None and not np.array_equal(perm, np.arange(len(perm))):
                layer.overlays = permute_rows(layer.overlays, _row_perm(layer, inp, perm))
            layer.overlays, p = drain_order(layer.overlays)
            layer.bias = np.asarray(layer.bias)[p]
            if layer.requant is not None:
                rq = layer.requant
                layer.requant = dataclasses.replace(
                    rq, multiplier=np.asarray(rq.multiplier)[p], shift=np.asarray(rq.shift)[p],
                    offset=None if rq.offset is None else np.asarray(rq.offset)[p])
            if layer.rescale is not None:
                rs = layer.rescale
                layer.rescale = dataclasses.replace(
                    rs, multiplier=np.asarray(rs.multiplier)[p], shift=np.asarray(rs.shift)[p],
                    offset=np.asarray(rs.offset)[p])
            layer.acc_scale = tuple(np.asarray(layer.acc_scale, dtype=np.float64)[p].tolist())
            perm = p
        elif perm is None:
            continue
        elif isinstance(layer, (ir.LocalKWTA, ir.GlobalKWTA)):
            if layer.boost is not None:
                if len(inp.shape) == 3 or len(layer.boost) == len(perm):
                    layer.boost = np.asarray(layer.boost)[perm]
        elif isinstance(layer, ir.Flatten):
            h, w, c = inp.shape
            perm = (np.arange(h * w)[:, None] * c + perm[None, :]).ravel()
    net.specs()
    if perm is not None:
        # Compose with an earlier renumbering (the frontend's, of a flatten):
        # output n of the renumbered network is output perm[n] of the network it was given.
        before = net.meta.get("output_permutation")
        out = np.asarray(before)[perm] if before is not None else perm
        if np.array_equal(out, np.arange(len(out))):
            net.meta.pop("output_permutation", None)
        else:
            net.meta["output_permutation"] = [int(v) for v in out]
    return net


def restore_output_order(net: ir.Network, y: np.ndarray) -> np.ndarray:
    """Outputs ``[..., C]`` of the compiled network in the source model's channel order."""
    perm = net.meta.get("output_permutation")
    if perm is None:
        return y
    out = np.empty_like(y)
    out[..., np.asarray(perm)] = y
    return out
