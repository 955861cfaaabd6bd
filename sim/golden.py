"""The numpy golden model: the integer semantics of every IR layer.

The hardware is checked against this model bit for bit, so its rules are the
project's definition of "correct". It runs on the *packed* representation
(overlay words, kernel ids, kernel map, requant constants), never on the
original dense weights, so it checks the packing as well. Batches are
vectorised (each layer one exact BLAS product per chunk of the batch);
:func:`overlay_accumulate` is the literal one-input-at-a-time form, which
mirrors the hardware and cross-checks the vectorised one. The rules per
layer are in docs/ir.md, 'Integer semantics'.
"""

from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cosparse.compiler.errors import CosparseError
from cosparse.compiler.ir import (Densify, Flatten, GlobalKWTA, Layer, LocalKWTA, MaxPool,
                                  Network, OverlayConv, Overlays, Requant, Rescale,
                                  ZeroSkip, OverlayLayer)

__all__ = ["GoldenError", "run", "run_layer", "requantize", "rescale", "kwta_mask", "kwta_keys",
           "kwta_values", "value_dtype",
           "overlay_accumulate", "overlay_matmul", "Trace"]


class GoldenError(CosparseError, ValueError):
    """The input does not match the network (shape or dtype)."""


# --------------------------------------------------------------------------
# Overlay arithmetic

_routes: "weakref.WeakKeyDictionary[Overlays, np.ndarray]" = weakref.WeakKeyDictionary()


def _route(ov: Overlays) -> np.ndarray:
    """Expand overlay words into a ``[fan_in, M]`` matrix: row -> routed kernel.

    Every slot's weight is added at (its row, the kernel its lane and id
    name), which is the *Route* step done once for all inputs.
    """
    cached = _routes.get(ov)
    if cached is not None:
        return cached
    lanes, k = ov.lanes, ov.kernels_per_overlay
    # exact in float32 while every sum of int9 (or narrower) inputs stays below 2**24
    dtype = np.float32 if ov.worst_case_sum(256) < (1 << 24) else np.float64
    route = np.zeros((ov.fan_in, lanes * k), dtype=dtype)
    row_of_word = np.repeat(np.arange(ov.fan_in), ov.beats)
    word, lane = np.nonzero(ov.weights)
    np.add.at(route, (row_of_word[word], lane * k + ov.kernel_ids[word, lane]),
              ov.weights[word, lane].astype(dtype))
    # Accumulator [lane][id] holds kernel kernel_map[lane, id]: order columns by kernel.
    column = np.empty(ov.num_kernels, dtype=np.int64)
    lane_ix, id_ix = np.nonzero(ov.kernel_map >= 0)
    column[ov.kernel_map[lane_ix, id_ix]] = lane_ix * k + id_ix
    route = np.ascontiguousarray(route[:, column])
    _routes[ov] = route
    return route


def overlay_matmul(ov: Overlays, x: np.ndarray) -> np.ndarray:
    """Accumulators ``[B, M]`` (no bias) for inputs ``x`` of shape ``[B, fan_in]``.

    The values are exact integers held in float64 (see the module doc).
    """
    route = _route(ov)
    return (x.astype(route.dtype) @ route).astype(np.float64, copy=False)


def overlay_accumulate(ov: Overlays, indices: np.ndarray, values: np.ndarray,
                       bias: np.ndarray | None = None) -> np.ndarray:
    """The literal sparse form: process active inputs one at a time.

    For each (index, value) pair, read the words of overlay row ``index``,
    multiply each slot's weight by ``value`` and add the product to
    accumulator ``[lane][kernel id]``; finally map accumulators to kernels.
    Returns int64 accumulators ``[M]`` (plus ``bias`` when given).
    """
    lanes, k = ov.lanes, ov.kernels_per_overlay
    acc = np.zeros((lanes, k), dtype=np.int64)
    lane = np.arange(lanes)
    for i, v in zip(np.asarray(indices).tolist(), np.asarray(values).tolist()):
        for word in range(int(ov.row_start[i]), int(ov.row_start[i + 1])):
            np.add.at(acc, (lane, ov.kernel_ids[word].astype(np.int64)),
                      ov.weights[word].astype(np.int64) * v)
    out = np.zeros(ov.num_kernels, dtype=np.int64)
    used = ov.kernel_map >= 0
    out[ov.kernel_map[used]] = acc[used]
    if bias is not None:
        out += bias
    return out


def requantize(acc: np.ndarray, rq: Requant, bias: np.ndarray | None = None) -> np.ndarray:
    """int8 outputs of accumulators ``acc[..., M]`` (plus ``bias``); see module doc.

    In int64: ``p = (acc + bias) * m + offset`` (below ``2**58``), then ``p / 2**s``
    rounded (half up: ``(p + 2**(s - 1)) >> s``; half to even: the bits shifted
    out decide), exactly as the hardware does.
    """
    total = np.asarray(acc, dtype=np.float64).astype(np.int64)
    if bias is not None:
        total = total + np.asarray(bias, dtype=np.int64)
    p = total * rq.multiplier.astype(np.int64)
    if rq.offset is not None:
        p = p + rq.offset.astype(np.int64)
    s = rq.shift.astype(np.int64)
    half = np.left_shift(np.int64(1), np.maximum(s - 1, 0))
    q = p >> np.maximum(s - 1, 0)  # floor(p / 2**(s - 1)); its lowest bit is the half
    if rq.rounding == "half-even":
        dropped = (p & (half - 1)) != 0
        y = (q >> 1) + ((q & 1) & ((dropped | ((q >> 1) & 1) == 1)).astype(np.int64))
    else:
        y = (q + 1) >> 1
    y = np.where(s > 0, y, p)
    lo, hi = rq.bounds
    return np.clip(y, lo, hi).astype(value_dtype(lo, hi))


def im2col(x: np.ndarray, layer: OverlayConv) -> np.ndarray:
    """``[B, Ho, Wo, kh*kw*C]`` receptive fields in (ky, kx, c) order."""
    kh, kw = layer.kernel
    sh, sw = layer.stride
    pt, pl, pb, pr = layer.padding
    if any(layer.padding):
        x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # B,Ho,Wo,C,kh,kw
    b, ho, wo, c = win.shape[:4]
    return win.transpose(0, 1, 2, 4, 5, 3).reshape(b, ho, wo, kh * kw * c)


def _max_pool(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    (kh, kw), (sh, sw) = kernel, stride
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    out = None
    for dy in range(kh):
        for dx in range(kw):
            tap = x[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw]
            out = tap.copy() if out is None else np.maximum(out, tap, out=out)
    return out


# --------------------------------------------------------------------------
# k-WTA


def value_dtype(lo: int, hi: int) -> type:
    """The numpy type of activations of range ``lo..hi``: int8 where it fits, else int16."""
    return np.int8 if -128 <= lo and hi <= 127 else np.int16


def kwta_keys(x: np.ndarray, boost: np.ndarray | None,
              key_shift: int | None = None,
              key_range: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """Selection keys: ``x * boost``, or quantized, ``clamp(round_half_even(x * boost /
    2**key_shift), *key_range)``; int64, ``boost`` broadcast against ``x``."""
    key = x.astype(np.int64)
    if boost is not None:
        key = key * boost.astype(np.int64)
    if key_shift is None:
        return key
    if key_shift:
        low = key & ((1 << key_shift) - 1)
        key = key >> key_shift
        half = 1 << (key_shift - 1)
        key = key + ((low > half) | ((low == half) & (key & 1 == 1)))
    return np.clip(key, *key_range)


def kwta_values(x: np.ndarray, rescale: tuple[int, int] | None,
                out_range: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """The values winners keep: ``x``, or ``clamp(round_half_even(x * m / 2**s), *out_range)``
    for ``rescale = (m, s)`` (int16 where the range needs it)."""
    if rescale is None:
        return x
    return kwta_keys(x, np.int64(rescale[0]), rescale[1], out_range).astype(
        np.promote_types(x.dtype, value_dtype(*out_range)))


def kwta_mask(x: np.ndarray, k: int, boost: np.ndarray | None,
              max_winners: int | None = None, key_shift: int | None = None,
              key_range: tuple[int, int] = (-128, 127)) -> np.ndarray:
    """Winners of each row of ``x[..., N]``.

    With ``max_winners`` None: exactly ``k``, ties to the lower index. With
    ``max_winners = B``: every key at least the ``k``-th largest (the
    threshold rule), and of those the ``B`` best, ties to the lower index.
    ``boost`` broadcasts against ``x`` (per unit or per channel); the keys
    are :func:`kwta_keys`.
    """
    n = x.shape[-1]
    key = kwta_keys(x, boost, key_shift, key_range)
    bound = k if max_winners is None else max_winners
    # A unique composite key: larger key first, then lower index.
    comp = key * n + (n - 1 - np.arange(n, dtype=np.int64))
    best = comp >= np.partition(comp, n - bound, axis=-1)[..., n - bound:n - bound + 1]
    if bound == k:
        return best
    return best & (key >= np.partition(key, n - k, axis=-1)[..., n - k:n - k + 1])


# --------------------------------------------------------------------------
# Layers


def _accumulate(layer: OverlayLayer, x: np.ndarray) -> np.ndarray:
    """Bias-free accumulators of an overlay layer, exact integers in float."""
    if isinstance(layer, OverlayConv):
        cols = im2col(x, layer)
        b, ho, wo, f = cols.shape
        return overlay_matmul(layer.overlays, cols.reshape(-1, f)).reshape(b, ho, wo, -1)
    return overlay_matmul(layer.overlays, x)


def rescale(x: np.ndarray, rs: Rescale) -> np.ndarray:
    """A layer's second rounding (:class:`~cosparse.compiler.ir.Rescale`) of its
    requantized values ``x[..., M]``."""
    scale = np.exp2(-np.asarray(rs.shift, dtype=np.float64))
    # exact in float64: |x * m + offset| < 2**47, and the scale is a power of two
    y = (x.astype(np.float64) * rs.multiplier + rs.offset) * scale
    lo, hi = rs.bounds
    return np.clip(np.rint(y), lo, hi).astype(value_dtype(lo, hi))


def _finish(layer: OverlayLayer, acc: np.ndarray) -> np.ndarray:
    if layer.requant is None:
        return np.rint(acc + layer.bias).astype(np.int32)
    y = requantize(acc, layer.requant, layer.bias)
    return y if layer.rescale is None else rescale(y, layer.rescale)


def run_layer(layer: Layer, x: np.ndarray) -> np.ndarray:
    """Apply one layer to a batch ``x[B, *input shape]`` of integers."""
    if isinstance(layer, OverlayLayer):
        return _finish(layer, _accumulate(layer, x))
    if isinstance(layer, MaxPool):
        return _max_pool(x, layer.kernel, layer.stride)
    if isinstance(layer, LocalKWTA):
        win = kwta_mask(x, layer.k, layer.boost, layer.max_winners, layer.key_shift,
                        layer.key_range)
        values = kwta_values(x, layer.rescale, layer.out_range)
        return np.where(win, values, 0).astype(values.dtype)
    if isinstance(layer, GlobalKWTA):
        b = x.shape[0]
        chw = layer.tie_order == "channel-major"
        xs = x.transpose(0, 3, 1, 2) if chw else x  # ties follow the flat order
        flat = xs.reshape(b, -1)
        boost = None
        if layer.boost is not None:
            reps = flat.shape[1] // layer.boost.shape[0]
            boost = np.repeat(layer.boost, reps) if chw else np.tile(layer.boost, reps)
        win = kwta_mask(flat, layer.k, boost, layer.max_winners, layer.key_shift,
                        layer.key_range)
        values = kwta_values(flat, layer.rescale, layer.out_range)
        y = np.where(win, values, 0).astype(values.dtype).reshape(xs.shape)
        return y.transpose(0, 2, 3, 1) if chw else y
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1)
    if isinstance(layer, (ZeroSkip, Densify)):
        return x
    raise TypeError(f"golden model has no semantics for layer kind {type(layer).__name__}")


def _run_fused(layers: list[Layer], y: np.ndarray) -> np.ndarray:
    """Run layers, pooling accumulators before requantization where a pool follows.

    Bias plus requantization is a non-decreasing function of each channel's
    accumulator, so it commutes with max pooling: ``pool(rq(acc)) ==
    rq(pool(acc))`` exactly. Pooling first requantizes a quarter of the
    values (the trace path runs the layers one by one; tests compare both).
    """
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, OverlayConv) and isinstance(nxt, MaxPool) and layer.requant \
                and (layer.rescale is None or layer.rescale.monotone):
            y = _finish(layer, _max_pool(_accumulate(layer, y), nxt.kernel, nxt.stride))
            i += 2
        else:
            y = run_layer(layer, y)
            i += 1
    return y


@dataclass
class Trace:
    """Every layer's output for a batch (``outputs[i]`` is layer i's)."""

    outputs: list[np.ndarray]


def run(net: Network, x: np.ndarray, *, chunk: int = 32, trace: bool = False):
    """Run the network on a batch of int8 inputs ``x[B, *input shape]``.

    Parameters
    ----------
    net : Network
    x : ndarray of int8
    chunk : int
        Inferences per vectorised step (bounds memory: conv im2col).
    trace : bool
        Return a :class:`Trace` of every layer's output instead of the
        network output.

    Returns
    -------
    ndarray
        int8 or int32 ``[B, *output shape]``; or a :class:`Trace`.

    Raises
    ------
    GoldenError
        ``x`` is not int8 of shape ``[B, *input shape]``.
    """
    net.specs()
    want = net.input.shape
    dtype = value_dtype(*net.input.bounds)
    if not isinstance(x, np.ndarray) or x.dtype != dtype or x.shape[1:] != want:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise GoldenError(f"input must be {np.dtype(dtype).name} of shape [batch, "
                          f"{', '.join(map(str, want))}], got {got}")

    def one_chunk(start: int) -> list[np.ndarray]:
        y = x[start:start + chunk]
        if trace:
            outs = []
            for layer in net.layers:
                y = run_layer(layer, y)
                outs.append(y)
            return outs
        return [_run_fused(net.layers, y)]

    for layer in net.layers:  # build the route matrices once, before the threads
        if isinstance(layer, OverlayLayer):
            _route(layer.overlays)
    starts = range(0, max(x.shape[0], 1), chunk)
    # numpy releases the GIL in its array loops: chunks run on all cores.
    workers = min(len(starts), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            per_chunk = list(pool.map(one_chunk, starts))
    else:
        per_chunk = [one_chunk(s) for s in starts]
    joined = [np.concatenate(parts) for parts in zip(*per_chunk)]
    return Trace(joined) if trace else joined[0]
