"""Calibration: activation scales from the QDQ model or from a float pass over sample inputs.

The float pass runs the lowered steps in numpy on the calibration data, in
the IR's layout; a layer's scale is ``max|y| / 127`` of its float output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .graph import Graph
from .lower import Step

__all__ = ["Scales", "float_maxima", "check_calibration"]


def _conv_float(x: np.ndarray, s: Step) -> np.ndarray:
    from numpy.lib.stride_tricks import sliding_window_view
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = s.kernel, s.stride, s.padding
    x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # B,Ho,Wo,C,kh,kw
    cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(*win.shape[:3], -1)
    return cols @ s.weight.T + s.bias


def _kwta_float(x: np.ndarray, k: int, boost: np.ndarray | None) -> np.ndarray:
    """Threshold-form k-WTA over the last axis: ties at the k-th value are kept."""
    key = x if boost is None else x * boost
    thr = -np.partition(-key, k - 1, axis=-1)[..., k - 1:k]
    return np.where(key >= thr, x, 0.0)


def _float_step(s: Step, x: np.ndarray) -> np.ndarray:
    if s.kind in ("conv", "linear"):
        y = _conv_float(x, s) if s.kind == "conv" else x @ s.weight.T + s.bias
        return np.maximum(y, 0) if s.relu else y
    if s.kind == "pool":
        (kh, kw), (sh, sw) = s.kernel, s.stride
        b, h, w, c = x.shape
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        x = x[:, :ho * sh, :wo * sw].reshape(b, ho, sh, wo, sw, c)
        return x[:, :, :kh, :, :kw].max(axis=(2, 4))
    if s.kind == "local_kwta":
        return _kwta_float(x, s.k, s.boost)
    if s.kind == "global_kwta":
        boost = None if s.boost is None else np.tile(s.boost, x[0].size // s.boost.size)
        return _kwta_float(x.reshape(len(x), -1), s.k, boost).reshape(x.shape)
    return x.reshape(len(x), -1)  # flatten


def float_maxima(steps: list[Step], x: np.ndarray, chunk: int = 64) -> list[float]:
    """max |y| of every step's float output over a batch (in the IR layout)."""
    peaks = [0.0] * len(steps)
    for start in range(0, len(x), chunk):
        y = x[start:start + chunk].astype(np.float64)
        for i, s in enumerate(steps):
            y = _float_step(s, y)
            peaks[i] = max(peaks[i], float(np.abs(y).max(initial=0.0)))
    return peaks


def _ir_layout(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def check_calibration(g: Graph, calibration: Any) -> np.ndarray:
    """The calibration data, checked: finite float ``[N, *input shape]`` with N >= 1."""
    want = g.input_shape[1:]
    expect = f"float32 [N, {', '.join(map(str, want))}]"
    if not isinstance(calibration, np.ndarray):
        raise g.fail(f"calibration must be a numpy array {expect}, got "
                     f"{type(calibration).__name__}")
    if calibration.dtype.kind != "f" or calibration.ndim != len(want) + 1 or \
            tuple(calibration.shape[1:]) != want or len(calibration) < 1:
        raise g.fail(f"calibration data must be {expect} (the model input without its batch "
                     f"dimension, N >= 1), got {calibration.dtype} {list(calibration.shape)}")
    if not np.all(np.isfinite(calibration)):
        raise g.fail("calibration data holds NaN or infinite values")
    return calibration


def _scale_from_peak(peak: float) -> float:
    return peak / 127 if peak > 0 else 1.0


def _qdq_tensor(g: Graph, steps: list[Step], i: int) -> str | None:
    """The quantized tensor that gives step i's output its scale in a QDQ model: its own
    tensors, then those of the scale-keeping steps after it."""
    for name in reversed(steps[i].scale_names):
        if name in g.act_scale:
            return name
    for s in steps[i + 1:]:
        if s.kind in ("conv", "linear"):
            break
        for name in reversed(s.scale_names):
            if name in g.act_scale:
                return name
    return None


def _qdq_scale(g: Graph, steps: list[Step], i: int) -> float | None:
    """Scale of step i's output in a QDQ model, or None."""
    name = _qdq_tensor(g, steps, i)
    return None if name is None else g.act_scale[name]


class Scales:
    """Activation scales: the QDQ model's where it has them, else from calibration."""

    def __init__(self, g: Graph, steps: list[Step], calibration: np.ndarray | None):
        self.g, self.steps, self.calibration = g, steps, calibration
        self.qdq = bool(g.act_scale)
        self._peaks: list[float] | None = None

    def input(self) -> float:
        """The scale of the network input."""
        s = self.g.act_scale.get(self.g.input)
        return s or self._calibrated(None, f"the input {self.g.input!r}")

    def output(self, i: int) -> float:
        """The scale of step ``i``'s output."""
        s = _qdq_scale(self.g, self.steps, i) if self.qdq else None
        return s or self._calibrated(i, f"the output of {self.steps[i].name!r}")

    def output_range(self, i: int) -> tuple[int, int] | None:
        """The integer range the model quantizes step ``i``'s output to (None: int8)."""
        name = _qdq_tensor(self.g, self.steps, i) if self.qdq else None
        return None if name is None else self.g.act_range.get(name)

    def input_range(self) -> tuple[int, int] | None:
        """The integer range the model quantizes its input to (None: int8)."""
        return self.g.act_range.get(self.g.input)

    def _calibrated(self, i: int | None, what: str) -> float:
        g, cal = self.g, self.calibration
        if cal is None:
            why = f"the QDQ model has no scale for {what}" if self.qdq else \
                "the model is a float model"
            raise g.fail(f"{why}; pass calibration data (--calibration X.npy: float32 [N, "
                         f"{', '.join(map(str, g.input_shape[1:]))}] sample inputs) to compute "
                         "activation scales")
        if i is None:
            return _scale_from_peak(float(np.abs(cal).max()))
        if self._peaks is None:
            self._peaks = float_maxima(self.steps, _ir_layout(cal))
        return _scale_from_peak(self._peaks[i])
