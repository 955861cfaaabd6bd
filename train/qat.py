"""Quantization-aware training in the compiler's integer semantics.

:func:`quantize` turns a trained float model into a :class:`QuantizedNet`
whose forward pass computes what the golden model computes on the compiled
network, integer for integer:

- the input: ``round_half_even(x / s_in)``, clamped to int8;
- each conv or linear layer, with a BatchNorm after it folded in: int8
  weights per output channel at scale ``max|w| / 127``; exact integer
  accumulators; requantized to its output scale with the compiler's 24-bit
  multipliers and shifts, rounded half to even, the float bias added at the
  output's fixed point, clamped to int8 (from 0 after a ReLU);
- max pools on the integers;
- k-WTAs on the integer keys ``x * boost`` with the compiler's integer
  boosts (:func:`~cosparse.compiler.quantize.quantize_boost`) and tie rule:
  exactly ``k`` with ties to the lower index, or the threshold rule bounded
  at ``2k`` winners;
- the last layer (no ReLU): its int32 accumulators plus bias, times the
  accumulator scale, as the compiler dequantizes them.

In training, every value is that integer times its scale, and the gradient
is the straight-through estimator's: a layer's output is ``surrogate +
(exact - surrogate).detach()``, with the surrogate the same layer on
fake-quantized float values. So the accuracy measured in PyTorch is the golden
model's, in training and in eval.

:func:`~cosparse.train.export_onnx` writes a :class:`QuantizedNet` as a QDQ
model (``QuantizeLinear``/``DequantizeLinear`` on the input, each layer's
output and its weights) with its scales; the compiler takes them as they
are. BatchNorm statistics and k-WTA boosts are frozen at :func:`quantize`;
the weights and biases train, within their complementary masks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import re
from collections.abc import Iterator

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F

from ..compiler.frontend.assemble import THRESHOLD_WINNERS
from ..compiler.packer import drain_order, pack
from ..compiler.quantize import bias_offset, quantize_boost, requant_for_range
from ..sim.golden import kwta_mask, requantize
from .kwinners import KWinners, KWinners2d, _KWinnersBase
from .layers import ComplementarySparse

__all__ = ["quantize", "QuantizedNet", "QuantizeError"]


class QuantizeError(ValueError):
    """The model is not a chain the compiler's semantics cover; the message names the
    module or operation."""


@dataclasses.dataclass
class _Act:
    """Activations between steps: ``value`` (float, carries gradients) equals
    ``ints * scale``; ``ints`` is None after the logits."""

    value: torch.Tensor
    ints: torch.Tensor | None
    scale: float | None
    #: The compiled network's channel order (channel n is source channel perm[n]) where
    #: k-WTA ties need it (eval), else None (the source order).
    perm: np.ndarray | None = None
    #: ``(C, H, W)`` of the map a vector was flattened from.
    chw: tuple[int, int, int] | None = None


def _f32(v: float) -> float:
    """``v`` rounded to float32, as an ONNX scale holds it."""
    return float(np.float32(v))


def _scale_for(peak: float) -> float:
    """An activation scale: ``max|y| / 127`` (1 for an all-zero tensor), in float32."""
    return _f32(peak / 127) if peak > 0 else 1.0


def _quant_ops(x: torch.Tensor, scale: float, form: str) -> torch.Tensor:
    """``x`` on ``scale``'s int8 grid in the ops each exporter writes as
    QuantizeLinear/DequantizeLinear (``form``: ``"legacy"`` or ``"dynamo"``)."""
    if form == "dynamo":
        qd = torch.ops.quantized_decomposed
        q = qd.quantize_per_tensor(x, scale, 0, -128, 127, torch.int8)
        return qd.dequantize_per_tensor(q, scale, 0, -128, 127, torch.int8)
    return torch.fake_quantize_per_tensor_affine(x, scale, 0, -128, 127)


class _Step(nn.Module):
    """One stage of the chain: ``run`` (exact integers and their values), ``floats``
    (the float model, for calibration) and ``export`` (the ONNX form)."""

    def run(self, a: _Act) -> _Act:
        raise NotImplementedError

    def floats(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def export(self, x: torch.Tensor, form: str) -> torch.Tensor:
        raise NotImplementedError


class _Input(_Step):
    """The input quantizer."""

    def __init__(self):
        super().__init__()
        self.scale = 1.0

    def run(self, x: torch.Tensor) -> _Act:  # type: ignore[override]
        ints = torch.clamp(torch.round(x.detach().double() / self.scale), -128, 127)
        return _Act((ints * self.scale).float(), ints.long(), self.scale)

    def export(self, x: torch.Tensor, form: str) -> torch.Tensor:
        return _quant_ops(x, self.scale, form)


class _Affine(_Step):
    """A conv or linear layer (BatchNorm folded in) with its ReLU and output quantizer."""

    def __init__(self, name: str, layer: nn.Module):
        super().__init__()
        self.name = name
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            if layer.groups != 1 or tuple(layer.dilation) != (1, 1) or \
                    layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise QuantizeError(
                    f"module {name!r}: the compiler takes convolutions with groups=1, "
                    "dilation 1 and numeric zero padding")
            self.stride, self.padding = tuple(layer.stride), tuple(layer.padding)
        w = layer.weight.detach().clone()
        mask = layer.mask.detach().clone() if isinstance(layer, ComplementarySparse) \
            else torch.ones_like(w)
        self.weight = nn.Parameter(w * mask)
        self.register_buffer("mask", mask)
        bias = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(w.shape[0])
        self.bias = nn.Parameter(bias)
        self.relu = False
        self.register_buffer("export_scale", None, persistent=False)
        self.pack_mode = "sparse-sparse"  # the compile mode whose packing orders the ties
        self._drain: tuple[bytes, np.ndarray | None] | None = None
        self.out_scale: float | None = None  # None: the logits (int32 accumulators out)
        self.followers = 0  # pools since the layer (a BatchNorm or ReLU may still fold)
        fan = mask.flatten(1).sum(1).max().item()
        # int8 x int8 sums are exact in float32 up to 2**24: 1024 products of 128 x 128
        self._acc_dtype = torch.float32 if fan <= 1024 else torch.float64

    @torch.no_grad()
    def fold_batchnorm(self, bn: nn.Module, name: str) -> None:
        """Fold an eval-mode BatchNorm after this layer into its weights and bias."""
        a = 1 / torch.sqrt(bn.running_var + bn.eps)
        c = -bn.running_mean * a
        if bn.affine:
            a, c = a * bn.weight, c * bn.weight + bn.bias
        if self.followers and bool(torch.any(a <= 0)):
            raise QuantizeError(f"module {name!r}: a BatchNorm with a non-positive scale after "
                                f"a max pool does not fold into {self.name!r}")
        self.weight.mul_(a.reshape(-1, *[1] * (self.weight.dim() - 1)))
        self.bias.mul_(a).add_(c)

    def masked(self) -> torch.Tensor:
        return self.weight * self.mask

    def weight_ints(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w_int, w_scale)``: the int8 weights (as float64) and their float32 scale per
        output channel, ``max|w| / 127``."""
        w = self.masked().detach()
        peak = w.abs().flatten(1).amax(1)
        scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
        shape = (-1, *[1] * (w.dim() - 1))
        w_int = torch.clamp(torch.round(w.double() / scale.double().reshape(shape)), -128, 127)
        return w_int, scale

    def drain_perm(self, w_int: torch.Tensor, chw: tuple[int, int, int] | None,
                   refresh: bool = True) -> np.ndarray | None:
        """The compiled network's order of this layer's channels (None: the source
        order): the compiler's packer and drain order on the int8 weights, in the IR's
        fan-in order, cached by their zero pattern. Without ``refresh`` the cached
        order is kept (training: packing a large layer at every step costs more than
        the step)."""
        if not refresh and self._drain is not None:
            return self._drain[1]
        w = w_int.numpy().astype(np.int8)
        if self.conv:
            w = w.transpose(0, 2, 3, 1)
        elif chw is not None:  # a flattened map: the IR flattens (h, w, c)
            w = w.reshape(len(w), *chw).transpose(0, 2, 3, 1)
        w = np.ascontiguousarray(w.reshape(len(w), -1))
        key = hashlib.sha1(np.packbits(w != 0).tobytes() + repr(w.shape).encode()).digest()
        if self._drain is None or self._drain[0] != key:
            perm = drain_order(pack(w, None, dense=self.pack_mode == "dense"))[1]
            self._drain = (key, None if np.array_equal(perm, np.arange(len(perm))) else perm)
        return self._drain[1]

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.conv:
            return F.conv2d(x, w, b, self.stride, self.padding)
        return F.linear(x, w, b)

    def _channels_last(self, t: np.ndarray) -> np.ndarray:
        return np.moveaxis(t, 1, -1) if self.conv else t

    def _channels_first(self, t: np.ndarray) -> np.ndarray:
        return np.moveaxis(t, -1, 1) if self.conv else t

    def run(self, a: _Act) -> _Act:
        w_int, w_scale = self.weight_ints()
        acc = self._op(a.ints.to(self._acc_dtype), w_int.to(self._acc_dtype), None)
        acc = self._channels_last(acc.double().numpy()).astype(np.int64)
        acc_scale = a.scale * w_scale.double().numpy()
        bias = self.bias.detach().double().numpy()
        if self.out_scale is None:
            ints = acc + np.rint(bias / acc_scale).astype(np.int64)
            exact = torch.from_numpy(self._channels_first(ints * acc_scale).astype(np.float32))
            out = _Act(exact, None, None)
        else:
            rq = requant_for_range(acc_scale / self.out_scale, relu=self.relu,
                                   rounding="half-even", bits=24)
            if np.any(bias != 0):
                rq = dataclasses.replace(rq, offset=bias_offset(bias, self.out_scale, rq.shift))
            ints = torch.from_numpy(np.ascontiguousarray(
                self._channels_first(requantize(acc, rq)).astype(np.int64)))
            perm = self.drain_perm(w_int, a.chw, refresh=not self.training)
            out = _Act((ints * self.out_scale).float(), ints, self.out_scale, perm)
        if self.training and torch.is_grad_enabled():
            w_fq = torch.fake_quantize_per_channel_affine(
                self.masked(), w_scale, torch.zeros_like(w_scale, dtype=torch.int32), 0,
                -128, 127)
            sur = self._op(a.value, w_fq, self.bias)
            if self.out_scale is not None:
                sur = torch.fake_quantize_per_tensor_affine(
                    sur, self.out_scale, 0, 0 if self.relu else -128, 127)
            out.value = sur + (out.value - sur).detach()
        return out

    def floats(self, x: torch.Tensor) -> torch.Tensor:
        y = self._op(x, self.masked(), self.bias)
        return torch.relu(y) if self.relu else y

    @contextlib.contextmanager
    def snapped(self) -> Iterator[None]:
        """While inside, ``weight`` holds its int8 values times their scales (the
        exported weights, read back as the same integers) and ``export_scale`` the
        scales."""
        with torch.no_grad():
            w_int, w_scale = self.weight_ints()
            kept = self.weight.detach().clone()
            shape = (-1, *[1] * (w_int.dim() - 1))
            self.weight.copy_((w_int * w_scale.double().reshape(shape)).float())
        self.export_scale = w_scale.clone()
        try:
            yield
        finally:
            with torch.no_grad():
                self.weight.copy_(kept)
            self.export_scale = None

    def export(self, x: torch.Tensor, form: str) -> torch.Tensor:
        w = self.weight
        w_scale = self.export_scale
        zero = torch.zeros(w_scale.shape, dtype=torch.int32 if form == "legacy" else torch.int64)
        if form == "dynamo":
            qd = torch.ops.quantized_decomposed
            w = qd.dequantize_per_channel(
                qd.quantize_per_channel(w, w_scale, zero, 0, -128, 127, torch.int8),
                w_scale, zero, 0, -128, 127, torch.int8)
        else:
            w = torch.fake_quantize_per_channel_affine(w, w_scale, zero, 0, -128, 127)
        y = self._op(x, w, self.bias.detach())
        if self.relu:
            y = torch.relu(y)
        return y if self.out_scale is None else _quant_ops(y, self.out_scale, form)


class _Pool(_Step):
    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def run(self, a: _Act) -> _Act:
        ints = F.max_pool2d(a.ints.double(), self.kernel, self.stride).long()
        return _Act(F.max_pool2d(a.value, self.kernel, self.stride), ints, a.scale, a.perm)

    def floats(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel, self.stride)

    def export(self, x: torch.Tensor, form: str) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel, self.stride)


class _KWTA(_Step):
    """A k-WTA with its boost frozen, on the integer keys."""

    def __init__(self, module: _KWinnersBase):
        super().__init__()
        self.kwta = module  # frozen: its eval forward is the exported form
        self.kwta.eval()
        boost = module.boost.detach().double().numpy().ravel()
        self.boost_int, _ = quantize_boost(boost)
        self.local = isinstance(module, KWinners) or module.local

    def run(self, a: _Act) -> _Act:
        x = a.ints.numpy()
        k, rule = self.kwta.k, self.kwta.tie_rule
        if a.chw is not None:  # a vector flattened from a map: the compiler's global k-WTA
            x = x.reshape(len(x), *a.chw)
        perm = np.arange(x.shape[1]) if a.perm is None else a.perm
        boost = self.boost_int
        # ties go to the lower channel number of the compiled network: permute, select,
        # put back
        xc = x[:, perm]
        if boost is not None:  # per channel (or unit), or per unit of a flattened map
            boost = boost.reshape(x.shape[1:] if boost.size > x.shape[1] else -1)[perm].ravel()
        if x.ndim == 2 or not self.local:
            flat = xc.reshape(len(x), -1)  # a map flattens channel-major
            if boost is not None:
                boost = np.repeat(boost, flat.shape[1] // len(boost))
            bound = None if rule == "index" else min(flat.shape[1], THRESHOLD_WINNERS * k)
            won_c = kwta_mask(flat, k, boost, bound).reshape(xc.shape)
        else:
            xl = np.moveaxis(xc, 1, -1)
            bound = None if rule == "index" else min(xl.shape[-1], THRESHOLD_WINNERS * k)
            won_c = np.moveaxis(kwta_mask(xl, k, boost, bound), -1, 1)
        won = np.empty_like(won_c)
        won[:, perm] = won_c
        mask = torch.from_numpy(np.ascontiguousarray(won.reshape(a.ints.shape)))
        return _Act(a.value * mask, a.ints * mask, a.scale, a.perm, a.chw)

    def floats(self, x: torch.Tensor) -> torch.Tensor:
        return self.kwta(x)

    def export(self, x: torch.Tensor, form: str) -> torch.Tensor:
        return self.kwta(x)


class _Flatten(_Step):
    def run(self, a: _Act) -> _Act:
        chw = tuple(a.ints.shape[1:]) if a.ints.dim() == 4 else a.chw
        return _Act(torch.flatten(a.value, 1), torch.flatten(a.ints, 1), a.scale, a.perm, chw)

    def floats(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)

    def export(self, x: torch.Tensor, form: str) -> torch.Tensor:
        return torch.flatten(x, 1)


class QuantizedNet(nn.Module):
    """A network in the compiler's integer semantics (see the module docstring).

    Made by :func:`quantize`. ``forward`` returns float32 outputs: the last
    layer's dequantized int32 logits (or its int8 activations times their
    scale). :attr:`layers` lists the conv and linear layers by module name.
    """

    def __init__(self, steps: list[tuple[str, _Step]]):
        super().__init__()
        self.input = _Input()
        self._order: list[str] = []
        for name, step in steps:
            attr = re.sub(r"\W", "_", name)
            while hasattr(self, attr):
                attr += "_"
            self.add_module(attr, step)
            self._order.append(attr)
        self._export_form: str | None = None

    @property
    def steps(self) -> list[nn.Module]:
        """The stages in order: layers, pools, k-WTAs, flattens."""
        return [getattr(self, a) for a in self._order]

    @property
    def layers(self) -> dict[str, _Affine]:
        """The conv and linear layers, by the float model's module names."""
        return {s.name: s for s in self.steps if isinstance(s, _Affine)}

    @property
    def input_scale(self) -> float:
        """The input's scale: int8 input ``round(x / input_scale)``."""
        return self.input.scale

    def output_scales(self) -> dict[str, float | None]:
        """Each layer's output scale (None: the logits, at the accumulator scale)."""
        return {n: s.out_scale for n, s in self.layers.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._export_form is not None:
            y = self.input.export(x, self._export_form)
            for s in self.steps:
                y = s.export(y, self._export_form)
            return y
        a = self.input.run(x)
        for s in self.steps:
            a = s.run(a)
        return a.value

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor | np.ndarray, chunk: int = 256) -> None:
        """Set the input and output scales to ``max|y| / 127`` of the float model (the
        current weights, no rounding) over ``x``, as the compiler calibrates."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if len(x) == 0:
            raise QuantizeError("calibration needs at least one input")
        peaks = {id(s): 0.0 for s in self.steps}
        for i in range(0, len(x), chunk):
            y = x[i:i + chunk]
            for s in self.steps:
                y = s.floats(y)
                peaks[id(s)] = max(peaks[id(s)], float(y.abs().max()))
        self.input.scale = _scale_for(float(x.abs().max()))
        for s in self.steps:
            if isinstance(s, _Affine) and s.out_scale is not None:
                s.out_scale = _scale_for(peaks[id(s)])

    @contextlib.contextmanager
    def exporting(self, exporter: str) -> Iterator[None]:
        """The export form for ``exporter`` (``"legacy"`` or ``"dynamo"``) while inside."""
        if exporter == "dynamo":
            import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers its ops)
        with contextlib.ExitStack() as stack:
            for s in self.layers.values():
                stack.enter_context(s.snapped())
            self._export_form = exporter
            try:
                yield
            finally:
                self._export_form = None

    def train(self, mode: bool = True) -> QuantizedNet:
        """Training mode for the layers; the k-WTAs stay frozen (eval)."""
        super().train(mode)
        for s in self.steps:
            if isinstance(s, _KWTA):
                s.kwta.eval()
        return self


# --------------------------------------------------------------------------
# From a float model


class _Tracer(fx.Tracer):
    """Complementary-sparse layers and k-WTAs stay whole in the traced graph."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (ComplementarySparse, _KWinnersBase)) or \
            super().is_leaf_module(m, qualname)


_FLATTENS = {torch.flatten, "flatten"}
_RELUS = {F.relu, torch.relu, "relu"}
_POOLS = {F.max_pool2d}
_SKIPS = (nn.Dropout, nn.Identity)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _pool_step(where: str, kernel, stride, padding=0, dilation=1, ceil_mode=False) -> _Pool:
    if _pair(padding) != (0, 0) or _pair(dilation) != (1, 1) or ceil_mode:
        raise QuantizeError(f"{where}: the compiler's max pool has no padding, dilation or "
                            "ceil_mode")
    return _Pool(_pair(kernel), _pair(stride if stride is not None else kernel))


class _Chain:
    """The steps of a traced model, built node by node."""

    def __init__(self):
        self.steps: list[_Step] = []
        self.names: list[str] = []

    def last_affine(self, where: str, what: str) -> _Affine:
        """The layer a BatchNorm or ReLU at ``where`` folds into: the last step, or the
        layer before the max pools that follow it."""
        for s in reversed(self.steps):
            if isinstance(s, _Affine):
                return s
            if not isinstance(s, _Pool):
                break
        raise QuantizeError(f"{where}: a {what} must follow a conv or linear layer (max "
                            "pools between are allowed); the compiler has no place for it here")

    def add(self, name: str, step: _Step) -> None:
        self.names.append(name)
        for s in reversed(self.steps):
            if isinstance(s, _Affine):
                s.followers += 1
                break
        self.steps.append(step)

    def relu(self, where: str) -> None:
        layer = self.last_affine(where, "ReLU")
        layer.relu = True

    def batchnorm(self, where: str, name: str, bn: nn.Module) -> None:
        layer = self.last_affine(where, "BatchNorm")
        if layer.relu:
            raise QuantizeError(f"{where}: a BatchNorm after a ReLU does not fold into "
                                f"{layer.name!r}")
        layer.fold_batchnorm(bn, name)


def _call_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _translate(chain: _Chain, node: fx.Node, modules: dict[str, nn.Module]) -> None:
    where = f"{node.op} {node.target if isinstance(node.target, str) else _call_name(node)!r}"
    if node.op == "call_module":
        m, name = modules[node.target], str(node.target)
        where = f"module {name!r} ({type(m).__name__})"
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            chain.add(name, _Affine(name, m))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            chain.batchnorm(where, name, m)
        elif isinstance(m, nn.ReLU):
            chain.relu(where)
        elif isinstance(m, nn.MaxPool2d):
            chain.add(name, _pool_step(where, m.kernel_size, m.stride, m.padding, m.dilation,
                                 m.ceil_mode))
        elif isinstance(m, (KWinners, KWinners2d)):
            chain.add(name, _KWTA(_frozen_copy(m)))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise QuantizeError(f"{where}: only a flatten from dim 1 to the end")
            chain.add(name, _Flatten())
        elif not isinstance(m, _SKIPS):
            raise QuantizeError(f"{where} is not a layer the compiler takes: Conv2d, Linear "
                                "(or CSConv2d, CSLinear), BatchNorm, ReLU, MaxPool2d, "
                                "KWinners, KWinners2d, Flatten")
        return
    target = node.target
    args = list(node.args[1:])
    if target in _FLATTENS:
        start = args[0] if args else node.kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
        if start != 1 or end != -1:
            raise QuantizeError(f"{where}: only a flatten from dim 1 to the end")
        chain.add(node.name, _Flatten())
    elif target in _RELUS:
        chain.relu(where)
    elif target in _POOLS:
        kw = dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), args))
        kw |= {k: v for k, v in node.kwargs.items() if k != "return_indices"}
        chain.add(node.name, _pool_step(where, kw["kernel_size"], kw.get("stride"), kw.get("padding", 0),
                             kw.get("dilation", 1), kw.get("ceil_mode", False)))
    else:
        raise QuantizeError(f"{where} is not an operation the compiler takes here (the "
                            "chain: conv/linear, BatchNorm, ReLU, max pool, k-WTA, flatten)")


def _frozen_copy(m: _KWinnersBase) -> _KWinnersBase:
    c = copy.deepcopy(m)
    c.eval()
    return c


def quantize(model: nn.Module, calibration: torch.Tensor | np.ndarray) -> QuantizedNet:
    """A trained float model in the compiler's integer semantics, ready for
    quantization-aware training.

    Parameters
    ----------
    model : torch.nn.Module
        A chain (each operation reads the one before): ``Conv2d``/``Linear``
        or :class:`~cosparse.train.CSConv2d`/:class:`~cosparse.train.CSLinear`,
        ``BatchNorm1d``/``BatchNorm2d`` (folded into the layer before, max pools
        between allowed), ``ReLU``, ``MaxPool2d``, :class:`~cosparse.train.KWinners`,
        :class:`~cosparse.train.KWinners2d`, flatten; ``Dropout`` and
        ``Identity`` are dropped. Its BatchNorm statistics and k-WTA boosts
        are taken as they are in eval mode.
    calibration : Tensor or ndarray
        Sample inputs ``[N, ...]``: the activation scales are ``max|y| / 127``
        of the float model over them, as the compiler's calibration.

    Returns
    -------
    QuantizedNet
        A new module (``model`` is not changed), in training mode if ``model`` was.

    Raises
    ------
    QuantizeError
        An operation outside the chain, or a BatchNorm or ReLU with no layer
        to fold into; the message names the module or operation.
    """
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:
        raise QuantizeError(f"torch.fx cannot trace {type(model).__name__} ({exc}); "
                            "quantize takes a model whose forward is a chain of modules"
                            ) from None
    modules = dict(model.named_modules())
    chain, current = _Chain(), None
    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise QuantizeError("quantize takes a model with one input")
            current = node
            continue
        inputs = node.all_input_nodes
        if node.op == "output":
            if inputs != [current]:
                raise QuantizeError("the model's output must be its last operation's result")
            break
        if node.op == "get_attr" or inputs != [current]:
            raise QuantizeError(f"{node.op} {node.name!r} does not read only the operation "
                                "before it; quantize takes a chain")
        _translate(chain, node, modules)
        current = node
    if not any(isinstance(s, _Affine) for s in chain.steps):
        raise QuantizeError("the model has no conv or linear layer")
    last = chain.steps[-1]
    for s in chain.steps:
        if isinstance(s, _Affine):
            s.out_scale = None if s is last and not s.relu else 1.0
    net = QuantizedNet(list(zip(chain.names, chain.steps)))
    net.calibrate(calibration)
    return net.train(model.training)
