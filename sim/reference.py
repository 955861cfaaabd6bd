"""A plain dense integer reference, independent of the golden model's code.

It computes the same integer semantics (see :mod:`cosparse.sim.golden`) the
obvious way -- int64 arithmetic on dense weights, integer shifts, stable
sorts -- and is slow. The tests check ``golden(pack(W)) == reference(W)``,
which checks the packer, the route and the vectorised golden model at once.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from cosparse.compiler.ir import (Densify, Flatten, GlobalKWTA, LocalKWTA, MaxPool, Network,
                                  OverlayConv, OverlayLinear, ZeroSkip)

__all__ = ["reference_run"]


def _requant(acc: np.ndarray, rq) -> np.ndarray:
    out = np.empty(acc.shape, dtype=np.int64)
    flat_acc = acc.reshape(-1, acc.shape[-1])
    flat_out = out.reshape(-1, acc.shape[-1])
    for c in range(acc.shape[-1]):
        s, m = int(rq.shift[c]), int(rq.multiplier[c])
        off = 0 if rq.offset is None else int(rq.offset[c])
        if rq.rounding == "half-even":
            flat_out[:, c] = [_round_half_even(int(a) * m + off, s) for a in flat_acc[:, c]]
        else:
            flat_out[:, c] = [(int(a) * m + off + ((1 << (s - 1)) if s else 0)) >> s
                              for a in flat_acc[:, c]]
    lo, hi = rq.bounds
    return np.clip(out, lo, hi).astype(np.int8 if -128 <= lo and hi <= 127 else np.int16)


def _rescale(x: np.ndarray, rs) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.int64)
    flat_x, flat_out = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
    for c in range(x.shape[-1]):
        m, off, s = int(rs.multiplier[c]), int(rs.offset[c]), int(rs.shift[c])
        flat_out[:, c] = [_round_half_even(int(v) * m + off, s) for v in flat_x[:, c]]
    lo, hi = rs.bounds
    return np.clip(out, lo, hi).astype(np.int8 if -128 <= lo and hi <= 127 else np.int16)


def _round_half_even(num: int, shift: int) -> int:
    """``num / 2**shift`` rounded half to even, with Python's exact rationals."""
    return round(Fraction(num, 1 << shift))


def _topk_rows(x: np.ndarray, k: int, boost: np.ndarray | None,
               max_winners: int | None = None, key_shift: int | None = None,
               rescale: tuple[int, int] | None = None, key_range=(-128, 127),
               out_range=(-128, 127)) -> np.ndarray:
    key = x.astype(np.int64) * (1 if boost is None else boost.astype(np.int64))
    klo, khi = key_range
    if key_shift is not None:
        key = np.vectorize(lambda v: min(khi, max(klo, _round_half_even(int(v), key_shift))),
                           otypes=[np.int64])(key)
    olo, ohi = out_range
    out = np.zeros(x.shape, np.int16 if rescale is not None else x.dtype)
    for r in range(x.shape[0]):
        order = np.argsort(-key[r], kind="stable")  # stable: lower index first on ties
        win = order[:k]
        if max_winners is not None:  # the threshold rule: ties at the k-th too, up to B
            kth = key[r, order[k - 1]]
            win = [i for i in order[:max_winners] if key[r, i] >= kth]
        for i in win:
            v = int(x[r, i])
            if rescale is not None:
                v = min(ohi, max(olo, _round_half_even(v * rescale[0], rescale[1])))
            out[r, i] = v
    return out


def reference_run(net: Network, dense_weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Run ``net`` on int8 ``x`` with dense ``[M, fan_in]`` int8 weights per overlay layer."""
    y = x.astype(np.int64)
    for layer in net.layers:
        if isinstance(layer, (OverlayLinear, OverlayConv)):
            w = dense_weights[layer.name].astype(np.int64)
            if isinstance(layer, OverlayConv):
                kh, kw = layer.kernel
                sh, sw = layer.stride
                pt, pl, pb, pr = layer.padding
                yp = np.pad(y, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
                b, h, wd, c = yp.shape
                ho, wo = (h - kh) // sh + 1, (wd - kw) // sw + 1
                wk = w.reshape(-1, kh, kw, c)  # kernels flattened (ky, kx, c)
                acc = np.zeros((b, ho, wo, w.shape[0]), dtype=np.int64)
                for oy in range(ho):
                    for ox in range(wo):
                        patch = yp[:, oy * sh:oy * sh + kh, ox * sw:ox * sw + kw, :]
                        acc[:, oy, ox, :] = np.einsum("byxc,myxc->bm", patch, wk)
            else:
                acc = y @ w.T
            acc = acc + layer.bias.astype(np.int64)
            if layer.requant is None:
                y = acc.astype(np.int32)
            else:
                y = _requant(acc, layer.requant)
                if layer.rescale is not None:
                    y = _rescale(y, layer.rescale)
        elif isinstance(layer, MaxPool):
            kh, kw = layer.kernel
            sh, sw = layer.stride
            b, h, wd, c = y.shape
            ho, wo = (h - kh) // sh + 1, (wd - kw) // sw + 1
            out = np.empty((b, ho, wo, c), dtype=y.dtype)
            for oy in range(ho):
                for ox in range(wo):
                    out[:, oy, ox] = y[:, oy * sh:oy * sh + kh, ox * sw:ox * sw + kw].max(axis=(1, 2))
            y = out
        elif isinstance(layer, LocalKWTA):
            b, h, wd, c = y.shape
            y = _topk_rows(y.reshape(-1, c), layer.k, layer.boost, layer.max_winners,
                           layer.key_shift, layer.rescale, layer.key_range,
                           layer.out_range).reshape(y.shape)
        elif isinstance(layer, GlobalKWTA):
            chw = layer.tie_order == "channel-major"
            ys = y.transpose(0, 3, 1, 2) if chw else y  # the order ties follow
            flat = ys.reshape(ys.shape[0], -1)
            boost = None
            if layer.boost is not None:
                reps = flat.shape[1] // layer.boost.size
                boost = np.repeat(layer.boost, reps) if chw else np.tile(layer.boost, reps)
            y = _topk_rows(flat, layer.k, boost, layer.max_winners, layer.key_shift,
                           layer.rescale, layer.key_range, layer.out_range).reshape(ys.shape)
            y = y.transpose(0, 2, 3, 1) if chw else y
        elif isinstance(layer, Flatten):
            y = y.reshape(y.shape[0], -1)
        elif isinstance(layer, (ZeroSkip, Densify)):
            pass
        else:  # pragma: no cover
            raise TypeError(f"no reference semantics for {type(layer).__name__}")
    return y
