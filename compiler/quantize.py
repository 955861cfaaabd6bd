"""Fixed-point requantization constants.

A real per-channel factor ``r`` (input scale x weight scale / output scale)
becomes an integer multiplier ``m`` of 16 bits and a right shift ``s`` with
``r ~= m / 2**s``; ``m`` is normalised to ``[2**15, 2**16)`` where the shift
range allows, which keeps the relative error below ``2**-16``.
"""

from __future__ import annotations

import numpy as np

from .ir import MAX_MULTIPLIER, MAX_SHIFT, Requant

__all__ = ["requant_for_range", "fixed_point", "quantize_input", "dequantize"]


def fixed_point(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(multiplier, shift)`` int32 arrays approximating ``real > 0``.

    Raises
    ------
    ValueError
        A factor is not positive and finite, or is too large for a 16-bit
        multiplier with no shift (``> 65535``).
    """
    real = np.asarray(real, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real <= 0):
        raise ValueError("requantization factors must be positive and finite")
    if np.any(real > MAX_MULTIPLIER):
        raise ValueError(f"requantization factor {real.max():.6g} exceeds {MAX_MULTIPLIER} "
                         "(an output scale far below the accumulator's)")
    _, exp = np.frexp(real)  # real = f * 2**exp, f in [0.5, 1)
    shift = np.clip(16 - exp, 0, MAX_SHIFT)
    mult = np.rint(real * np.exp2(shift)).astype(np.int64)
    over = mult > MAX_MULTIPLIER  # rounding reached 2**16
    mult[over] = (mult[over] + 1) // 2
    shift[over] -= 1
    mult = np.clip(mult, 1, MAX_MULTIPLIER)
    return mult.astype(np.int32), shift.astype(np.int32)


def requant_for_range(real: np.ndarray, *, relu: bool) -> Requant:
    """A :class:`Requant` whose per-channel factor approximates ``real``."""
    mult, shift = fixed_point(real)
    return Requant(mult, shift, relu)


def quantize_input(x: np.ndarray, scale: float) -> np.ndarray:
    """Float inputs to int8: ``clip(round_half_even(x / scale), -128, 127)``."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) / scale), -128, 127).astype(np.int8)


def dequantize(y: np.ndarray, scale: float | tuple[float, ...]) -> np.ndarray:
    """Integer outputs to float32: ``y * scale`` (per tensor or per last-axis channel)."""
    return (y.astype(np.float64) * np.asarray(scale, dtype=np.float64)).astype(np.float32)
