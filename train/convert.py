"""A trained dense model made complementary-sparse, ready to fine-tune."""

from __future__ import annotations

import torch
from torch import nn

from .kwinners import KWinners, KWinners2d
from .layers import CSConv2d, CSLinear

__all__ = ["sparsify"]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    return parent, leaf


@torch.no_grad()
def _as_cs(layer: nn.Module, K: int) -> nn.Module:
    """``layer``'s complementary-sparse twin: the same weights, masked by magnitude."""
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise ValueError(f"padding_mode {layer.padding_mode!r}: only 'zeros' converts")
        cs = CSConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, K,
                      stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                      groups=layer.groups, bias=layer.bias is not None)
    else:
        cs = CSLinear(layer.in_features, layer.out_features, K, bias=layer.bias is not None)
    cs = cs.to(layer.weight.device, layer.weight.dtype)
    cs.weight.copy_(layer.weight)
    if layer.bias is not None:
        cs.bias.copy_(layer.bias)
    cs.reassign("magnitude")
    return cs


def sparsify(model: nn.Module, kernels_per_overlay: dict[str, int], *,
             kwta: dict[str, dict] | None = None) -> nn.Module:
    """Make a trained dense model complementary-sparse, in place, and return it.

    Each named ``nn.Linear`` or ``nn.Conv2d`` becomes a :class:`CSLinear` or
    :class:`CSConv2d` with its weights, masked by magnitude (each fan-in
    position of an overlay kept for the kernel whose weight there is
    largest, shares balanced); fine-tuning recovers the accuracy the mask
    costs. Each module named in ``kwta`` is followed by a k-WTA.

    Parameters
    ----------
    model : torch.nn.Module
        The dense model; its modules are replaced where named.
    kernels_per_overlay : dict of str to int
        Module name (as ``model.named_modules()`` gives it) to ``K``.
    kwta : dict of str to dict, optional
        Module name to the k-WTA after it: ``{"k": ..., "local": ...,
        "boost_strength": ..., "tie_rule": ...}`` with ``"units"`` (a vector)
        or ``"channels"`` (a map, :class:`KWinners2d`).

    Returns
    -------
    torch.nn.Module
        ``model``.

    Raises
    ------
    ValueError
        A name that is not a module of ``model``, a module that is not a
        Linear or Conv2d, or a ``K`` that does not divide its kernels.
    """
    modules = dict(model.named_modules())
    for name, K in kernels_per_overlay.items():
        layer = modules.get(name)
        if layer is None:
            raise ValueError(f"sparsify: no module {name!r} in the model")
        if isinstance(layer, (CSLinear, CSConv2d)) or not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"sparsify: module {name!r} is a {type(layer).__name__}, not a "
                             "dense nn.Linear or nn.Conv2d")
        try:
            cs = _as_cs(layer, K)
        except ValueError as exc:
            raise ValueError(f"sparsify: module {name!r}: {exc}") from None
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, cs)
    for name, spec in (kwta or {}).items():
        layer = modules.get(name)
        if layer is None:
            raise ValueError(f"sparsify: no module {name!r} in the model")
        spec = dict(spec)
        if "channels" in spec:
            unit = KWinners2d(spec.pop("channels"), **spec)
        elif "units" in spec:
            unit = KWinners(spec.pop("units"), **spec)
        else:
            raise ValueError(f"sparsify: the k-WTA after {name!r} needs 'units' (a vector) or "
                             "'channels' (a map)")
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, nn.Sequential(getattr(parent, leaf), unit))
    return model
