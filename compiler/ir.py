"""The compiled-network IR: a chain of integer layers over packed overlays.

A :class:`Network` is what the compiler produces and what every back end
(the numpy golden model, the hardware generator, the performance model)
consumes. It is a straight chain of layers; each layer knows the shape it
takes and the shape it makes, so a network can be checked as a whole.

Conventions
-----------
* Feature maps are ``(H, W, C)`` in raster order with the channel fastest
  (HWC), which is the order a hardware stream carries them in; vectors are
  ``(N,)``. :class:`Flatten` turns ``(H, W, C)`` into ``(H * W * C,)`` in the
  same HWC order (the compiler permutes ONNX's CHW flatten into it).
* Activations are int8, symmetric, zero point 0: zero means *inactive*, so
  sparsity survives quantization.
* A convolution kernel is flattened as ``(ky, kx, c)`` with ``c`` fastest,
  matching the order its receptive field arrives in.

On disk a network is ``manifest.json`` (everything readable, with
``format_version``) plus ``tensors.npz`` (the overlay memories, referenced by
name from the manifest). :func:`load` rejects a malformed pair with a
:class:`ManifestError` that names the file, the field and the problem.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import numpy as np

from .errors import CosparseError

__all__ = [
    "FORMAT_VERSION", "ManifestError", "Overlays", "Requant", "Rescale", "TensorSpec",
    "OverlayLinear", "OverlayConv", "MaxPool", "LocalKWTA", "GlobalKWTA",
    "Flatten", "ZeroSkip", "Densify", "Layer", "Network", "save", "load",
    "MAX_KERNELS_PER_OVERLAY", "MAX_BOOST",
]

#: Version of the ``manifest.json`` format written by :func:`save`.
FORMAT_VERSION = 1
#: Kernel ids are stored in 8 bits.
MAX_KERNELS_PER_OVERLAY = 256
#: Boost factors are unsigned 16-bit integers (keys are at most 24 bits wide).
MAX_BOOST = (1 << 16) - 1
#: ... and of quantized keys (``key_shift``), 17 bits (one ECP5 DSP input): the model's
#: float factor to 2**-17.
MAX_KEY_BOOST = (1 << 17) - 1
#: A requantization's multipliers: 16 bits for a calibrated network, up to 24 for a model
#: that arrives quantized (rounding as its float scale does).
MAX_REQUANT_MULTIPLIER = (1 << 24) - 1
MAX_SHIFT = 62
#: Orders of a global k-WTA's ties (:attr:`GlobalKWTA.tie_order`).
TIE_ORDERS = ("stream", "channel-major")
#: A rescale's multipliers are signed 25-bit (24 bits of magnitude).
MAX_RESCALE_MULTIPLIER = (1 << 24) - 1
#: ... and ``|x * multiplier + offset|`` stays below 2**47 (exact in float64).
MAX_RESCALE_OFFSET_BITS = 46
#: Activation dtypes: int8, or int9 for the values of a model's uint8 (or int8 with a
#: zero point) with the zero point subtracted (so that 0 stays inactive).
ACTIVATION_DTYPES = ("int8", "int9")
#: Largest |value| of an int9 activation.
MAX_ACTIVATION = 255


def value_bits(lo: int, hi: int) -> int:
    """Signed bits that hold every integer of ``lo..hi``."""
    return max((-lo - 1).bit_length() if lo < 0 else 0, hi.bit_length() if hi > 0 else 0) + 1


def activation_spec(shape: tuple[int, ...], scale: float, lo: int = -128,
                    hi: int = 127) -> "TensorSpec":
    """The spec of an activation of range ``lo..hi``: int8 where it fits, else int9."""
    if -128 <= lo and hi <= 127:
        return TensorSpec(shape, "int8", scale, None if lo == -128 else lo,
                          None if hi == 127 else hi)
    return TensorSpec(shape, "int9", scale, lo, hi)


#: Requantization rounding rules (see :class:`Requant`).
ROUNDINGS = ("half-up", "half-even")
#: A quantized k-WTA key's right shift (the boost holds at most 17 bits).
MAX_KEY_SHIFT = 32


class ManifestError(CosparseError, ValueError):
    """A network description is malformed; the message names the field."""


def _fail(where: str, msg: str) -> None:
    raise ManifestError(f"{where}: {msg}")


# --------------------------------------------------------------------------
# Small value types


@dataclass(frozen=True, eq=False)
class Overlays:
    """Kernels packed into complementary overlays (the *Combine* step).

    ``L`` overlays (lanes) of ``K`` kernels each share one weight memory. The
    memory has one or more *words* per input row (fan-in index); a word
    holds one slot per lane, and a slot holds a weight and the kernel id
    (``0 .. K-1``) of the kernel it belongs to. An active input ``i`` reads
    words ``row_start[i] .. row_start[i+1]-1``; a row needs more than one word
    (extra *beats*) only where kernels of one overlay collide on it. Empty
    slots hold weight 0.

    Parameters
    ----------
    weights : ndarray of int8, shape (words, L)
    kernel_ids : ndarray of uint8, shape (words, L)
    row_start : ndarray of int32, shape (fan_in + 1,)
        Non-decreasing, ``row_start[0] == 0`` and ``row_start[-1] == words``.
    kernel_map : ndarray of int32, shape (L, K)
        Output channel of kernel id ``j`` in lane ``l``, or -1 for an unused
        id (the last overlay of a layer whose kernel count is not a multiple
        of ``K``).
    num_kernels : int
        Number of kernels (output channels) ``M``.
    """

    weights: np.ndarray
    kernel_ids: np.ndarray
    row_start: np.ndarray
    kernel_map: np.ndarray
    num_kernels: int

    def __post_init__(self) -> None:
        self.check("overlays")

    @property
    def lanes(self) -> int:
        """Number of overlays ``L``."""
        return self.kernel_map.shape[0]

    @property
    def kernels_per_overlay(self) -> int:
        """Kernels per overlay ``K``."""
        return self.kernel_map.shape[1]

    @property
    def fan_in(self) -> int:
        return self.row_start.shape[0] - 1

    @property
    def words(self) -> int:
        return self.weights.shape[0]

    @property
    def beats(self) -> np.ndarray:
        """Words (memory beats) each input row needs, shape (fan_in,)."""
        return np.diff(self.row_start)

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.weights))

    @property
    def fill(self) -> float:
        """Non-zero weights over slots (1.0 for perfectly complementary masks)."""
        slots = self.words * self.lanes
        return self.nnz / slots if slots else 1.0

    def check(self, where: str) -> None:
        """Raise :class:`ManifestError` unless the arrays are consistent."""
        w, ids, rs, km = self.weights, self.kernel_ids, self.row_start, self.kernel_map
        for name, arr, nd in (("weights", w, 2), ("kernel_ids", ids, 2),
                              ("row_start", rs, 1), ("kernel_map", km, 2)):
            if not isinstance(arr, np.ndarray) or arr.ndim != nd:
                _fail(where, f"{name} must be a {nd}-D array")
        if w.dtype != np.int8 or ids.dtype != np.uint8 or rs.dtype != np.int32 \
                or km.dtype != np.int32:
            _fail(where, "dtypes must be weights int8, kernel_ids uint8, "
                         "row_start int32, kernel_map int32; got "
                         f"{w.dtype}, {ids.dtype}, {rs.dtype}, {km.dtype}")
        L, K = km.shape
        if L < 1 or not 1 <= K <= MAX_KERNELS_PER_OVERLAY:
            _fail(where, f"kernel_map shape {km.shape}: need at least one lane "
                         f"and 1..{MAX_KERNELS_PER_OVERLAY} kernels per overlay")
        if w.shape != ids.shape or w.shape[1] != L:
            _fail(where, f"weights {w.shape} and kernel_ids {ids.shape} must both "
                         f"be (words, {L})")
        if rs.shape[0] < 2 or rs[0] != 0 or rs[-1] != w.shape[0] or np.any(np.diff(rs) < 0):
            _fail(where, "row_start must start at 0, never decrease and end at the "
                         f"word count {w.shape[0]}")
        if ids.size and int(ids.max()) >= K:
            _fail(where, f"kernel id {int(ids.max())} out of range for K={K}")
        used = km[km >= 0]
        if not isinstance(self.num_kernels, int) or self.num_kernels < 1:
            _fail(where, f"num_kernels must be a positive integer, got {self.num_kernels!r}")
        if used.size != self.num_kernels or np.any(np.sort(used) != np.arange(self.num_kernels)):
            _fail(where, f"kernel_map must name each of the {self.num_kernels} kernels "
                         "exactly once (others -1)")
        live = w != 0
        if np.any(km[np.nonzero(live)[1], ids[live].astype(np.int64)] < 0):
            _fail(where, "a non-zero weight is routed to an unused kernel id")
        if np.any(km < -1):
            _fail(where, "kernel_map entries must be -1 or a kernel index")

    def worst_case_sum(self, input_bound: int = 128) -> int:
        """Largest |sum| one kernel's accumulator can reach with inputs of at most
        ``input_bound`` in magnitude (128: int8)."""
        acc = np.zeros(self.lanes * self.kernels_per_overlay, dtype=np.int64)
        lane = np.broadcast_to(np.arange(self.lanes), self.weights.shape)
        np.add.at(acc, lane.ravel() * self.kernels_per_overlay + self.kernel_ids.ravel(),
                  np.abs(self.weights.astype(np.int64)).ravel())
        return int(acc.max(initial=0)) * input_bound


@dataclass(frozen=True, eq=False)
class Requant:
    """Per-channel requantization of accumulators to int8.

    ``y = clamp(round((acc * multiplier + offset) / 2**shift), lo, hi)`` where
    ``acc`` already includes the layer's bias and ``round`` is ``rounding``:
    ``"half-up"`` (half towards +inf: ``(p + (1 << (shift - 1))) >> shift``)
    or ``"half-even"`` (half to even, as ONNX's QuantizeLinear); a shift of 0
    does not round. ``lo`` and ``hi`` default to -128 (0 with ``relu``) and
    127; a model quantized to fewer bits narrows them.

    Parameters
    ----------
    multiplier : ndarray of int32, shape (M,)
        ``1 .. 2**24 - 1`` (16 bits for a calibrated network, 24 for a quantized model).
    shift : ndarray of int32, shape (M,)
        ``0 .. 62``.
    relu : bool
        Clamp negative results to zero (a fused ReLU): ``lo`` at least 0.
    lo, hi : int, optional
        The output range, ``lo <= 0 <= hi``, at most 256 values within -255..255 (a
        range beyond int8's makes an int9 activation).
    rounding : {"half-up", "half-even"}
    offset : ndarray of int64, shape (M,), optional
        Added to the product before the shift, ``|offset| < 2**56``: a model's
        float bias at the output's fixed point (a bias the model does not
        quantize to the accumulator's scale). None: no offset.
    """

    multiplier: np.ndarray
    shift: np.ndarray
    relu: bool = False
    lo: int | None = None
    hi: int | None = None
    rounding: str = "half-up"
    offset: np.ndarray | None = None

    @property
    def bounds(self) -> tuple[int, int]:
        """``(lo, hi)``: the clamp range of the outputs."""
        lo = (0 if self.relu else -128) if self.lo is None else self.lo
        if self.relu:
            lo = max(lo, 0)
        return lo, 127 if self.hi is None else self.hi

    def check(self, where: str, channels: int) -> None:
        for name, arr, lo, hi in (("multiplier", self.multiplier, 1, MAX_REQUANT_MULTIPLIER),
                                  ("shift", self.shift, 0, MAX_SHIFT)):
            _check_int_vector(f"{where}.{name}", arr, channels, lo, hi)
        if self.offset is not None:
            _check_int_vector(f"{where}.offset", self.offset, channels, -(1 << 56) + 1,
                              (1 << 56) - 1)
        if not isinstance(self.relu, bool):
            _fail(f"{where}.relu", f"expected true or false, got {self.relu!r}")
        for name, v, a, b in (("lo", self.lo, -MAX_ACTIVATION, 0),
                              ("hi", self.hi, 0, MAX_ACTIVATION)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)
                                  or not a <= v <= b):
                _fail(f"{where}.{name}", f"expected an integer from {a} to {b}, got {v!r}")
        lo, hi = self.bounds
        if hi - lo > 255:
            _fail(f"{where}", f"the output range {lo}..{hi} has more than 256 values")
        if self.rounding not in ROUNDINGS:
            _fail(f"{where}.rounding", f"expected one of {', '.join(ROUNDINGS)}, "
                                       f"got {self.rounding!r}")


@dataclass(frozen=True, eq=False)
class Rescale:
    """Per-channel affine map of a layer's requantized values onto a second scale.

    A model that quantizes a layer's output and then quantizes it again after a
    per-channel affine (a ``BatchNormalization`` or bias ``Add`` between two
    ``QuantizeLinear``) rounds twice; the second rounding is this stage::

        y = clamp(round_half_even((x * multiplier + offset) / 2**shift), lo, hi)

    with ``x`` the first requantization's output. A 24-bit multiplier keeps the
    error of ``x * factor`` below the model's own float32 arithmetic's on most
    values (a 16-bit one changes about 1% of a BatchNormalization's outputs).
    A negative multiplier (a negative BatchNormalization scale) reverses the
    order of its channel's values.

    Parameters
    ----------
    multiplier : ndarray of int32, shape (M,)
        Nonzero, ``|m| <= MAX_RESCALE_MULTIPLIER``.
    shift : ndarray of int32, shape (M,)
        ``0 .. MAX_SHIFT``.
    offset : ndarray of int64, shape (M,)
        ``|offset| < 2**MAX_RESCALE_OFFSET_BITS``.
    relu : bool
    lo, hi : int, optional
        The output range, as :class:`Requant`'s.
    """

    multiplier: np.ndarray
    shift: np.ndarray
    offset: np.ndarray
    relu: bool = False
    lo: int | None = None
    hi: int | None = None

    @property
    def bounds(self) -> tuple[int, int]:
        """``(lo, hi)``: the clamp range of the outputs."""
        return self._range().bounds

    @property
    def monotone(self) -> bool:
        """Whether larger inputs never give smaller outputs (every multiplier positive)."""
        return bool(np.all(np.asarray(self.multiplier) > 0))

    def _range(self) -> Requant:
        ones = np.ones(len(self.multiplier), np.int32)
        return Requant(ones, ones * 0, self.relu, lo=self.lo, hi=self.hi, rounding="half-even")

    def check(self, where: str, channels: int) -> None:
        self._range().check(where, channels)
        top = MAX_RESCALE_MULTIPLIER
        _check_int_vector(f"{where}.multiplier", self.multiplier, channels, -top, top)
        if np.any(np.asarray(self.multiplier) == 0):
            _fail(f"{where}.multiplier", "expected nonzero multipliers")
        _check_int_vector(f"{where}.shift", self.shift, channels, 0, MAX_SHIFT)
        big = 1 << MAX_RESCALE_OFFSET_BITS
        _check_int_vector(f"{where}.offset", self.offset, channels, -big + 1, big - 1)


@dataclass(frozen=True, eq=False)
class TensorSpec:
    """Shape, integer type and scale of a tensor between layers.

    ``real = scale * int``; ``scale`` is one number (per tensor) or, for the
    int32 output of a layer without requantization, one per channel.
    """

    shape: tuple[int, ...]
    dtype: str = "int8"
    scale: Union[float, tuple[float, ...]] = 1.0
    #: The integer range of an activation (default int8's); an "int9" activation (a
    #: model's uint8 or int8 with a zero point, the zero point subtracted) needs one.
    lo: int | None = None
    hi: int | None = None

    @property
    def bounds(self) -> tuple[int, int]:
        """``(lo, hi)``: the values the tensor can hold."""
        if self.dtype == "int32":
            return -(1 << 31), (1 << 31) - 1
        return (-128 if self.lo is None else self.lo), (127 if self.hi is None else self.hi)

    @property
    def activation(self) -> bool:
        """Whether it is an activation (int8 or int9), not int32 logits."""
        return self.dtype in ACTIVATION_DTYPES

    @property
    def value_bits(self) -> int:
        """Signed bits of a value (8 or 9; 32 for logits)."""
        return value_bits(*self.bounds)

    def check(self, where: str) -> None:
        if not isinstance(self.shape, tuple) or len(self.shape) not in (1, 3) or \
                not all(isinstance(d, int) and d > 0 for d in self.shape):
            _fail(f"{where}.shape", f"expected (N,) or (H, W, C) of positive integers, "
                                    f"got {self.shape!r}")
        if self.dtype not in ("int8", "int9", "int32"):
            _fail(f"{where}.dtype", f"expected 'int8', 'int9' or 'int32', got {self.dtype!r}")
        if self.activation:
            lo, hi = self.bounds
            wide = self.dtype == "int9"
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) and (
                (-MAX_ACTIVATION <= lo <= 0 <= hi <= MAX_ACTIVATION and hi - lo <= 255) if wide
                else -128 <= lo <= 0 <= hi <= 127)
            if not ok:
                _fail(f"{where}.range", f"{self.dtype} values {lo}..{hi}: expected lo <= 0 <= hi "
                                        + ("within -255..255, at most 256 values" if wide
                                           else "within -128..127"))
        scales = self.scale if isinstance(self.scale, tuple) else (self.scale,)
        if not scales or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0
                                 for s in scales):
            _fail(f"{where}.scale", f"expected positive finite numbers, got {self.scale!r}")
        if isinstance(self.scale, tuple) and len(self.scale) != self.shape[-1]:
            _fail(f"{where}.scale", f"per-channel scale needs {self.shape[-1]} values, "
                                    f"got {len(self.scale)}")


def _check_int_vector(where: str, arr: Any, n: int, lo: int, hi: int) -> None:
    if not isinstance(arr, np.ndarray) or arr.shape != (n,) or arr.dtype.kind not in "iu":
        got = f"shape {arr.shape} {arr.dtype}" if isinstance(arr, np.ndarray) else repr(type(arr))
        _fail(where, f"expected {n} integers, got {got}")
    if n and (int(arr.min()) < lo or int(arr.max()) > hi):
        _fail(where, f"values must lie in {lo}..{hi}, found {int(arr.min())}..{int(arr.max())}")


# --------------------------------------------------------------------------
# Layers


@dataclass(eq=False)
class Layer:
    """Base class: a named step of the chain. Subclasses set ``kind``."""

    name: str
    kind: ClassVar[str] = ""

    def output_spec(self, inp: TensorSpec, where: str) -> TensorSpec:
        """Check that the layer accepts ``inp`` and return what it makes."""
        raise NotImplementedError

    #: Stream format of the output given the input's ("dense" or "sparse").
    def output_format(self, inp: str) -> str:
        return inp


def _pair(where: str, v: Any, lo: int) -> tuple[int, int]:
    if not (isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) and x >= lo for x in v)):
        _fail(where, f"expected two integers >= {lo}, got {v!r}")
    return v


def _need_map(where: str, inp: TensorSpec) -> tuple[int, int, int]:
    if len(inp.shape) != 3:
        _fail(where, f"needs a (H, W, C) feature map, got shape {inp.shape}")
    if not inp.activation:
        _fail(where, f"needs an int8 or int9 activation, got {inp.dtype}")
    return inp.shape


@dataclass(eq=False)
class OverlayLayer(Layer):
    """Base of the layers that multiply by overlays: a linear or a conv layer."""

    overlays: Overlays = None  # type: ignore[assignment]
    bias: np.ndarray = None  # type: ignore[assignment]
    #: Requantization to int8; ``None`` keeps the int32 accumulators (logits).
    requant: Requant | None = None
    #: A second rounding after the requantization (needs ``requant``), or None.
    rescale: Rescale | None = None
    #: Scale of the int8 output (ignored without requant).
    out_scale: float = 1.0
    #: Per-channel real scale of one accumulator unit (input scale x weight scale).
    acc_scale: tuple[float, ...] = ()
    #: The largest |input value| the accumulators are proven for (128: int8).
    input_bound: int = 128
    #: Signed bits of a weight (2 to 8): a model quantized to fewer bits than 8 declares
    #: it, and the weight memories and products are that narrow.
    weight_bits: int = 8

    def _check_common(self, where: str, fan_in: int) -> None:
        ov = self.overlays
        if not isinstance(ov, Overlays):
            _fail(f"{where}.overlays", "missing")
        ov.check(f"{where}.overlays")
        if ov.fan_in != fan_in:
            _fail(f"{where}.overlays", f"fan-in {ov.fan_in} does not match the input's {fan_in}")
        m = ov.num_kernels
        _check_int_vector(f"{where}.bias", self.bias, m, -(1 << 31), (1 << 31) - 1)
        if self.requant is not None:
            self.requant.check(f"{where}.requant", m)
        if self.rescale is not None:
            if self.requant is None:
                _fail(f"{where}.rescale", "a rescale needs a requantization before it")
            self.rescale.check(f"{where}.rescale", m)
        if not isinstance(self.input_bound, int) or not 1 <= self.input_bound <= MAX_ACTIVATION + 1:
            _fail(f"{where}.input_bound", f"expected an integer from 1 to {MAX_ACTIVATION + 1}, "
                                          f"got {self.input_bound!r}")
        wb = self.weight_bits
        if not isinstance(wb, int) or isinstance(wb, bool) or not 2 <= wb <= 8:
            _fail(f"{where}.weight_bits", f"expected an integer from 2 to 8, got {wb!r}")
        if ov.weights.size and (int(ov.weights.min()) < -(1 << (wb - 1))
                                or int(ov.weights.max()) >= 1 << (wb - 1)):
            _fail(f"{where}.weight_bits", f"weights {int(ov.weights.min())}.."
                                          f"{int(ov.weights.max())} do not fit {wb} bits")
        worst = ov.worst_case_sum(self.input_bound) + int(np.abs(self.bias.astype(np.int64)).max(
            initial=0))
        if worst >= 1 << 31:
            _fail(where, f"worst-case accumulator {worst} does not fit 32 bits")
        if len(self.acc_scale) != m or not all(s > 0 for s in self.acc_scale):
            _fail(f"{where}.acc_scale", f"expected {m} positive numbers")

    def _check_input(self, where: str, inp: TensorSpec) -> None:
        lo, hi = inp.bounds
        if max(-lo, hi) > self.input_bound:
            _fail(where, f"input values {lo}..{hi} exceed the input bound {self.input_bound} "
                         "its accumulators are proven for")

    def accumulator_bits(self) -> int:
        """Signed accumulator width that provably holds every sum (with bias)."""
        worst = self.overlays.worst_case_sum(self.input_bound) + int(
            np.abs(self.bias.astype(np.int64)).max(initial=0))
        return max(worst.bit_length() + 1, 2)

    def _out(self, shape: tuple[int, ...]) -> TensorSpec:
        if self.requant is None:
            return TensorSpec(shape, "int32", tuple(self.acc_scale))
        last = self.requant if self.rescale is None else self.rescale
        return activation_spec(shape, self.out_scale, *last.bounds)

    def output_format(self, inp: str) -> str:
        return "dense"


@dataclass(eq=False)
class OverlayLinear(OverlayLayer):
    """Complementary-sparse matrix-vector product: ``y = W x + bias`` then requant.

    Each output neuron's fan-in row is a kernel; input ``(N,)`` int8, output
    ``(M,)``. In the sparse form only the non-zero inputs are processed.
    """

    kind: ClassVar[str] = "overlay_linear"

    def output_spec(self, inp: TensorSpec, where: str) -> TensorSpec:
        if len(inp.shape) != 1 or not inp.activation:
            _fail(where, f"needs an int8 or int9 vector (N,), got {inp.dtype} {inp.shape}; "
                         "insert a Flatten after a feature map")
        self._check_common(where, inp.shape[0])
        self._check_input(where, inp)
        return self._out((self.overlays.num_kernels,))


@dataclass(eq=False)
class OverlayConv(OverlayLayer):
    """Complementary-sparse 2-D convolution over an (H, W, C) int8 map.

    Kernels are the output filters, each flattened ``(ky, kx, c)``;
    zero padding; ``padding`` is (top, left, bottom, right).
    """

    kind: ClassVar[str] = "overlay_conv"
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    def output_spec(self, inp: TensorSpec, where: str) -> TensorSpec:
        h, w, c = _need_map(where, inp)
        kh, kw = _pair(f"{where}.kernel", self.kernel, 1)
        sh, sw = _pair(f"{where}.stride", self.stride, 1)
        p = self.padding
        if not (isinstance(p, tuple) and len(p) == 4 and all(isinstance(x, int) and 0 <= x < k
                                                             for x, k in zip(p, (kh, kw, kh, kw)))):
            _fail(f"{where}.padding", f"expected (top, left, bottom, right), each smaller "
                                      f"than the kernel {self.kernel}, got {p!r}")
        self._check_common(where, kh * kw * c)
        self._check_input(where, inp)
        ho = (h + p[0] + p[2] - kh) // sh + 1
        wo = (w + p[1] + p[3] - kw) // sw + 1
        if ho < 1 or wo < 1:
            _fail(where, f"kernel {self.kernel} does not fit the padded {h}x{w} input")
        return self._out((ho, wo, self.overlays.num_kernels))


@dataclass(eq=False)
class MaxPool(Layer):
    """Max pooling over (H, W) windows of an int8 map; padding never wins."""

    kind: ClassVar[str] = "max_pool"
    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)

    def output_spec(self, inp: TensorSpec, where: str) -> TensorSpec:
        h, w, c = _need_map(where, inp)
        kh, kw = _pair(f"{where}.kernel", self.kernel, 1)
        sh, sw = _pair(f"{where}.stride", self.stride, 1)
        if kh > h or kw > w:
            _fail(where, f"window {self.kernel} larger than the {h}x{w} input")
        return dataclasses.replace(inp, shape=((h - kh) // sh + 1, (w - kw) // sw + 1, c))


@dataclass(eq=False)
class KWTALayer(Layer):
    """Base of the k-winners-take-all layers: local (per position) and global."""

    k: int = 1
    #: Integer boost per channel (local) or per unit/channel (global), or None.
    boost: np.ndarray | None = None
    #: None: exactly ``k`` winners, ties to the lower index. An integer ``B >= k``:
    #: the threshold rule, every key equal to the ``k``-th largest also wins, up to
    #: ``B`` winners in all (lower index first among the ties at the bound).
    max_winners: int | None = None
    #: None: the key is ``x * boost``. An integer ``s``: the key is quantized as a
    #: QuantizeLinear on the boosted key would, ``clamp(round_half_even(x * boost /
    #: 2**s), -128, 127)`` (ties in the quantized keys then follow the tie rule).
    key_shift: int | None = None
    #: None: the winners keep ``x``. ``(m, s)``: they keep ``clamp(round_half_even(x * m /
    #: 2**s), -128, 127)``, at the scale ``out_scale`` (a model that requantizes the
    #: k-WTA's output to a scale of its own; a winner that becomes 0 is inactive).
    rescale: tuple[int, int] | None = None
    #: The output's scale with ``rescale`` (the input's without).
    out_scale: float | None = None
    #: The clamp range of quantized keys (a key quantized with a zero point: shifted).
    key_range: tuple[int, int] = (-128, 127)
    #: The clamp range of rescaled values (the output's range with ``rescale``).
    out_range: tuple[int, int] = (-128, 127)

    @property
    def winners(self) -> int:
        """The most winners a group can have (``k``, or ``max_winners``)."""
        return self.k if self.max_winners is None else self.max_winners

    @property
    def tie_rule(self) -> str:
        """``"lower-index"`` (exactly ``k``) or ``"threshold"`` (ties at the ``k``-th win)."""
        return "lower-index" if self.max_winners is None else "threshold"

    def _check_k(self, where: str, n: int) -> None:
        if not isinstance(self.k, int) or not 1 <= self.k <= n:
            _fail(f"{where}.k", f"expected an integer from 1 to {n}, got {self.k!r}")
        b = self.max_winners
        if b is not None and (not isinstance(b, int) or isinstance(b, bool)
                              or not self.k <= b <= n):
            _fail(f"{where}.max_winners", f"expected an integer from k={self.k} to {n} (or "
                                          f"none: exactly k winners), got {b!r}")

    def _check_boost(self, where: str, n: int) -> None:
        if self.boost is not None:
            top = MAX_BOOST if self.key_shift is None else MAX_KEY_BOOST
            _check_int_vector(f"{where}.boost", self.boost, n, 1, top)
        s = self.key_shift
        if s is not None and (not isinstance(s, int) or isinstance(s, bool)
                              or not 0 <= s <= MAX_KEY_SHIFT):
            _fail(f"{where}.key_shift", f"expected an integer from 0 to {MAX_KEY_SHIFT} (or "
                                        f"none: exact keys), got {s!r}")
        r = self.rescale
        if r is not None and not (isinstance(r, tuple) and len(r) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in r)
                and 1 <= r[0] <= MAX_REQUANT_MULTIPLIER and 0 <= r[1] <= MAX_KEY_SHIFT + 24):
            _fail(f"{where}.rescale", f"expected (multiplier 1..{MAX_REQUANT_MULTIPLIER}, "
                                      f"shift 0..{MAX_KEY_SHIFT + 24}) or none, got {r!r}")
        for name, rng in (("key_range", self.key_range), ("out_range", self.out_range)):
            if not (isinstance(rng, tuple) and len(rng) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in rng)
                    and -MAX_ACTIVATION <= rng[0] <= 0 <= rng[1] <= MAX_ACTIVATION
                    and rng[1] - rng[0] <= 255):
                _fail(f"{where}.{name}", f"expected (lo, hi) with lo <= 0 <= hi, at most 256 "
                                         f"values within -255..255, got {rng!r}")
        if (r is None) != (self.out_scale is None) or (
                self.out_scale is not None and not (math.isfinite(self.out_scale)
                                                    and self.out_scale > 0)):
            _fail(f"{where}.out_scale", "a rescaled k-WTA needs a positive output scale, and "
                                        "only it takes one")

    def _out(self, inp: TensorSpec) -> TensorSpec:
        if self.out_scale is None:
            return inp
        return activation_spec(inp.shape, float(self.out_scale), *self.out_range)

    def key_bits(self, bits: int = 8) -> int:
        """Signed width of the selection key: of ``key_range`` when quantized, else of
        ``x * boost`` for values of ``bits`` bits."""
        if self.key_shift is not None:
            return value_bits(*self.key_range)
        if self.boost is None:
            return bits
        return bits + int(self.boost.max()).bit_length()

    def output_format(self, inp: str) -> str:
        return "sparse"


@dataclass(eq=False)
class LocalKWTA(KWTALayer):
    """k-winners-take-all over the C channels at each (h, w) position."""

    kind: ClassVar[str] = "local_kwta"

    def output_spec(self, inp: TensorSpec, where: str) -> TensorSpec:
        _h, _w, c = _need_map(where, inp)
        self._check_k(where, c)
        self._check_boost(where, c)
        return self._out(inp)


@dataclass(eq=False)
class GlobalKWTA(KWTALayer):
    """k-winners-take-all over a whole vector or a whole (H, W, C) map.

    ``boost`` has one entry per unit for a vector and one per channel for a
    map (the boost of nupic's ``KWinners2d`` is per channel).
    """

    kind: ClassVar[str] = "global_kwta"
    #: The order in which ties go to the lower index: ``"stream"`` (the IR's HWC
    #: order) or, over a map, ``"channel-major"`` (CHW: a TopK over an NCHW map
    #: flattened, which keeps the lower channel first).
    tie_order: str = "stream"

    def output_spec(self, inp: TensorSpec, where: str) -> TensorSpec:
        if not inp.activation:
            _fail(where, f"needs an int8 or int9 activation, got {inp.dtype}")
        if self.tie_order not in TIE_ORDERS or (self.tie_order != "stream"
                                                and len(inp.shape) != 3):
            _fail(f"{where}.tie_order", f"expected one of {', '.join(TIE_ORDERS)} "
                                        f"('channel-major' over a map), got {self.tie_order!r}")
        self._check_k(where, int(np.prod(inp.shape)))
        self._check_boost(where, inp.shape[-1])
        return self._out(inp)


@dataclass(eq=False)
class Flatten(Layer):
    """(H, W, C) to (H*W*C,) in HWC order; free in hardware."""

    kind: ClassVar[str] = "flatten"

    def output_spec(self, inp: TensorSpec, where: str) -> TensorSpec:
        h, w, c = _need_map(where, inp)
        return dataclasses.replace(inp, shape=(h * w * c,))


@dataclass(eq=False)
class ZeroSkip(Layer):
    """Dense to sparse stream: drop zeros, keep (index, value) of the rest.

    Groups are positions (a feature map: the channels of one (h, w)) or the
    whole vector. Values are unchanged.
    """

    kind: ClassVar[str] = "zero_skip"

    def output_spec(self, inp: TensorSpec, where: str) -> TensorSpec:
        if not inp.activation:
            _fail(where, f"needs an int8 or int9 activation, got {inp.dtype}")
        return inp

    def output_format(self, inp: str) -> str:
        return "sparse"


@dataclass(eq=False)
class Densify(Layer):
    """Sparse to dense stream: every element, zeros included, in order."""

    kind: ClassVar[str] = "densify"

    def output_spec(self, inp: TensorSpec, where: str) -> TensorSpec:
        return inp

    def output_format(self, inp: str) -> str:
        return "dense"


LAYER_KINDS: dict[str, type[Layer]] = {
    cls.kind: cls for cls in (OverlayLinear, OverlayConv, MaxPool, LocalKWTA, GlobalKWTA,
                              Flatten, ZeroSkip, Densify)
}


# --------------------------------------------------------------------------
# Network


@dataclass(eq=False)
class Network:
    """A compiled network: an input spec and a chain of layers.

    Parameters
    ----------
    name : str
    input : TensorSpec
        int8 input, dense.
    layers : list of Layer
    meta : dict
        Free-form JSON-serialisable facts (source model, mode, ...).
    """

    name: str
    input: TensorSpec
    layers: list[Layer]
    meta: dict = field(default_factory=dict)

    def specs(self) -> list[TensorSpec]:
        """Validate the chain; return the input spec followed by each layer's output."""
        self.input.check("input")
        if not self.input.activation:
            _fail("input.dtype", "the network input must be an int8 or int9 activation")
        if not self.layers:
            _fail("layers", "a network needs at least one layer")
        names = set()
        specs = [self.input]
        for i, layer in enumerate(self.layers):
            where = f"layers[{i}] ({layer.name})"
            if not isinstance(layer.name, str) or not layer.name or layer.name in names:
                _fail(where, "layer names must be unique non-empty strings")
            names.add(layer.name)
            if not specs[-1].activation:
                _fail(where, "follows a layer with int32 output; only the last layer may "
                             "skip requantization")
            specs.append(layer.output_spec(specs[-1], where))
        return specs

    def formats(self) -> list[str]:
        """Stream format ("dense" or "sparse") entering each layer, then the output's."""
        fmts = ["dense"]
        for layer in self.layers:
            fmts.append(layer.output_format(fmts[-1]))
        return fmts

    @property
    def output(self) -> TensorSpec:
        return self.specs()[-1]


# On disk (``manifest.json`` and ``tensors.npz``): :mod:`cosparse.compiler.manifest`,
# imported when called (it imports this module).
def save(net: Network, outdir):
    """Write ``net`` into ``outdir`` (:func:`cosparse.compiler.manifest.save`)."""
    from .manifest import save as _save
    return _save(net, outdir)


def load(path) -> Network:
    """Read a network (:func:`cosparse.compiler.manifest.load`)."""
    from .manifest import load as _load
    return _load(path)
