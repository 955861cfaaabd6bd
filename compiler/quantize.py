"""Fixed-point requantization constants.

A real per-channel factor ``r`` (input scale x weight scale / output scale)
becomes an integer multiplier ``m`` of ``b`` bits and a right shift ``s`` with
``r ~= m / 2**s``; ``m`` is normalised to ``[2**(b-1), 2**b)`` where the shift
range allows, which keeps the relative error below ``2**-b``. A calibrated
network takes 16 bits; a model that arrives quantized 24, so that its values
round as its float scales do (16 bits leave about 0.02% of them one step off).
"""

from __future__ import annotations

import math

import numpy as np

from .ir import (MAX_BOOST, MAX_RESCALE_MULTIPLIER,
                 MAX_RESCALE_OFFSET_BITS, MAX_SHIFT, Requant, Rescale)

__all__ = ["requant_for_range", "rescale_for", "bias_offset", "fixed_point", "quantize_input", "dequantize",
           "quantize_boost", "boost_ranking_exact"]


def fixed_point(real: np.ndarray, bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(multiplier, shift)`` int32 arrays approximating ``real > 0`` with
    ``bits``-bit multipliers (16, or up to 24).

    Raises
    ------
    ValueError
        A factor is not positive and finite, or is too large for the
        multiplier with no shift (``> 2**bits - 1``).
    """
    real = np.asarray(real, dtype=np.float64)
    top = (1 << bits) - 1
    if not np.all(np.isfinite(real)) or np.any(real <= 0):
        raise ValueError("requantization factors must be positive and finite")
    if np.any(real > top):
        raise ValueError(f"requantization factor {real.max():.6g} exceeds {top} "
                         "(an output scale far below the accumulator's)")
    _, exp = np.frexp(real)  # real = f * 2**exp, f in [0.5, 1)
    shift = np.clip(bits - exp, 0, MAX_SHIFT)
    mult = np.rint(real * np.exp2(shift)).astype(np.int64)
    over = mult > top  # rounding reached 2**bits
    mult[over] = (mult[over] + 1) // 2
    shift[over] -= 1
    mult = np.clip(mult, 1, top)
    return mult.astype(np.int32), shift.astype(np.int32)


def requant_for_range(real: np.ndarray, *, relu: bool, lo: int | None = None,
                      hi: int | None = None, rounding: str = "half-up",
                      bits: int = 16) -> Requant:
    """A :class:`Requant` whose per-channel factor approximates ``real`` with ``bits``-bit
    multipliers, clamped to ``lo..hi`` (default the int8 range, from 0 with ``relu``)."""
    mult, shift = fixed_point(real, bits)
    return Requant(mult, shift, relu, lo=lo, hi=hi, rounding=rounding)


def bias_offset(bias: np.ndarray, scale: float, shift: np.ndarray) -> np.ndarray:
    """A float bias as a requantization offset, ``round(bias / scale * 2**shift)`` per
    channel: added at the output's fixed point, where its fraction survives.

    Raises
    ------
    ValueError
        The offset does not fit 56 bits (a bias far beyond the output's range).
    """
    off = np.rint(np.asarray(bias, dtype=np.float64) / scale *
                  np.exp2(np.asarray(shift, dtype=np.float64)))
    if np.any(np.abs(off) >= 2.0 ** 56):
        raise ValueError(f"bias {float(np.abs(bias).max()):.6g} is too large for the output "
                         f"scale {scale:.3g}")
    return off.astype(np.int64)


def rescale_for(factor: np.ndarray, offset: np.ndarray, *, relu: bool, lo: int | None = None,
                hi: int | None = None) -> Rescale:
    """The :class:`Rescale` ``y = round(x * factor + offset)`` (half to even) per channel:
    multipliers normalised to 24 bits of magnitude (``[2**23, 2**24)`` where the shift
    range allows).

    Raises
    ------
    ValueError
        A factor is zero or not finite, or an offset does not fit.
    """
    factor = np.asarray(factor, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    if not np.all(np.isfinite(factor)) or np.any(factor == 0) or \
            not np.all(np.isfinite(offset)):
        raise ValueError("rescale factors must be nonzero and finite")
    _, exp = np.frexp(np.abs(factor))  # |factor| = f * 2**exp, f in [0.5, 1)
    shift = np.clip(24 - exp, 0, MAX_SHIFT)
    mult = np.rint(np.abs(factor) * np.exp2(shift)).astype(np.int64)
    over = mult > MAX_RESCALE_MULTIPLIER  # rounding reached 2**24
    mult[over] = (mult[over] + 1) // 2
    shift[over] -= 1
    if np.any(mult > MAX_RESCALE_MULTIPLIER):
        raise ValueError(f"rescale factor {float(np.abs(factor).max()):.6g} exceeds "
                         f"{MAX_RESCALE_MULTIPLIER}")
    off = np.rint(offset * np.exp2(shift))
    # |x| <= 255: the sum x * m + offset stays within the IR's bound
    if np.any(np.abs(off) + 255 * mult >= 2.0 ** MAX_RESCALE_OFFSET_BITS):
        raise ValueError(f"a rescale offset of {float(np.abs(offset).max()):.6g} output units "
                         "does not fit")
    sign = np.where(factor < 0, -1, 1)
    return Rescale((sign * np.maximum(mult, 1)).astype(np.int32), shift.astype(np.int32),
                   off.astype(np.int64), relu, lo=lo, hi=hi)


def quantize_input(x: np.ndarray, scale: float) -> np.ndarray:
    """Float inputs to int8: ``clip(round_half_even(x / scale), -128, 127)``."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) / scale), -128, 127).astype(np.int8)


def dequantize(y: np.ndarray, scale: float | tuple[float, ...]) -> np.ndarray:
    """Integer outputs to float32: ``y * scale`` (per tensor or per last-axis channel)."""
    return (y.astype(np.float64) * np.asarray(scale, dtype=np.float64)).astype(np.float32)


def boost_ranking_exact(boost: np.ndarray, boost_int: np.ndarray) -> bool:
    """Whether integer boosts rank every int8 key exactly as the real ones do.

    Compares the keys ``v * boost[i]`` and ``v * boost_int[i]`` over every
    int8 value ``v`` and every unit ``i``: the integer keys must be strictly
    increasing where the real keys are, and equal where they are equal.
    """
    boost = np.asarray(boost, dtype=np.float64).ravel()
    boost_int = np.asarray(boost_int, dtype=np.int64).ravel()
    pairs = np.unique(np.stack([boost, boost_int.astype(np.float64)]), axis=1)
    v = np.arange(-128, 128, dtype=np.float64)[:, None]
    real = (v * pairs[0]).ravel()
    key = (v * pairs[1]).ravel()
    order = np.argsort(real, kind="stable")
    d_real, d_key = np.diff(real[order]), np.diff(key[order])
    return bool(np.all(((d_real > 0) & (d_key > 0)) | ((d_real == 0) & (d_key == 0))))


def quantize_boost(boost: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """Integer k-WTA boost factors for positive real ones.

    The k-WTA key is ``x * boost``; only the *ranking* of keys matters, so
    the boost may be scaled freely. The integer boost is
    ``round(boost / min(boost) * 2**s)``: the smallest boost maps to
    ``2**s`` and every ratio to the smallest is kept to within
    ``2**-(s+1)``. ``s`` is the *smallest* shift for which every int8 key
    ``v * boost[i]`` ranks exactly as the real key does (ties included), so
    the selection key stays as narrow as it can (``8 + bits(max)`` bits);
    where no shift up to the 16-bit limit is exact, the largest shift that
    fits (the finest resolution) is used. Boost ratios beyond 65535 do not
    fit: the boosts are then scaled so the largest is 65535 and the smallest
    are clamped to 1.

    Parameters
    ----------
    boost : ndarray of float
        Positive boost factors (per unit or per channel).

    Returns
    -------
    boost_int : ndarray of int64, or None
        ``None`` when all factors are equal (no boost).
    info : dict
        ``shift`` (``s``, or None when the ratios do not fit 16 bits) and
        ``exact`` (whether every int8 key ranks as with the real boost).

    Raises
    ------
    ValueError
        A factor is not positive and finite.
    """
    b = np.asarray(boost, dtype=np.float64).ravel()
    if b.size == 0 or not np.all(np.isfinite(b)) or np.any(b <= 0):
        raise ValueError("boost factors must be positive and finite")
    if np.all(b == b[0]):
        return None, {"shift": None, "exact": True}
    ratio = b / b.min()
    s_max = math.floor(math.log2(MAX_BOOST / ratio.max()))
    if s_max < 0:
        q = np.clip(np.rint(b * (MAX_BOOST / b.max())), 1, MAX_BOOST).astype(np.int64)
        return q, {"shift": None, "exact": boost_ranking_exact(b, q)}
    for s in range(s_max + 1):
        q = np.rint(ratio * 2.0 ** s).astype(np.int64)
        if boost_ranking_exact(b, q):
            return q, {"shift": s, "exact": True}
    return q, {"shift": s_max, "exact": False}
