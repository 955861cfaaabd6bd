"""nupic.torch's k-WTA modules replaced by exportable ones with the same inference.

nupic.torch's ``KWinners`` and ``KWinners2d`` pick winners with
``torch.kthvalue`` (or ``topk`` with ``break_ties``), which neither torch
ONNX exporter can export. :func:`from_nupic` swaps each for a
:class:`~cosparse.train.KWinners` or :class:`~cosparse.train.KWinners2d`
that computes what the nupic module computes in eval mode:

- ``k``: nupic's inference ``k`` (``k_inference``, ``k`` times
  ``k_inference_factor``);
- boost: ``exp((k / units - duty_cycles) * boost_strength)`` from the
  module's duty cycles, frozen as the new module's ``boost``;
- ties: ``kthvalue`` keeps every key at least the ``k``-th largest (the
  ``"threshold"`` rule); ``break_ties`` takes exactly ``k`` (``"index"``);
- ``relu``: a ``ReLU`` after the k-WTA (nupic zeroes winners that are not
  positive).

Modules are recognised by their class name and nupic's attributes
(``percent_on``, ``duty_cycles``, ``k_inference_factor``), so nupic.torch
need not be installed.
"""

from __future__ import annotations

import torch
from torch import nn

from .kwinners import KWinners, KWinners2d

__all__ = ["from_nupic", "is_nupic_kwinners"]

_ATTRS = ("percent_on", "duty_cycles", "k_inference_factor", "boost_strength")


def is_nupic_kwinners(module: nn.Module) -> bool:
    """True for a module that looks like nupic.torch's ``KWinners`` or ``KWinners2d``."""
    return (type(module).__name__ in ("KWinners", "KWinners2d")
            and not isinstance(module, (KWinners, KWinners2d))
            and all(hasattr(module, a) for a in _ATTRS))


def _inference_k(name: str, module: nn.Module, units: int) -> int:
    k = int(getattr(module, "k_inference", 0) or 0)
    if k <= 0:
        if type(module).__name__ == "KWinners2d" and not getattr(module, "local", False):
            raise ValueError(f"from_nupic: {name!r} is a global KWinners2d whose k nupic computes "
                             "from the map size at its first forward pass: run one batch "
                             "through the model first")
        if type(module).__name__ == "KWinners":  # nupic: int(k * factor)
            k = int(int(round(units * module.percent_on)) * module.k_inference_factor)
        else:  # nupic: round(units * percent_on * factor)
            k = int(round(units * module.percent_on * module.k_inference_factor))
    if not 1 <= k <= units:
        raise ValueError(f"from_nupic: {name!r} has an inference k of {k}, not within 1..{units}")
    return k


@torch.no_grad()
def _convert(name: str, module: nn.Module) -> nn.Module:
    duty = module.duty_cycles.detach().reshape(-1).float()
    channels = duty.numel()
    strength = float(module.boost_strength)
    tie = "index" if getattr(module, "break_ties", False) else "threshold"
    if type(module).__name__ == "KWinners":
        k = _inference_k(name, module, int(module.n))
        new = KWinners(int(module.n), k, boost_strength=strength, tie_rule=tie)
        density = k / int(module.n)
    else:
        local = bool(getattr(module, "local", False))
        units = channels if local else int(getattr(module, "n", 0) or 0)
        if not local and units <= 0:
            raise ValueError(f"from_nupic: {name!r} is a global KWinners2d that has not seen a "
                             "map yet (its unit count is unknown): run one batch through the "
                             "model first")
        k = _inference_k(name, module, units)
        new = KWinners2d(channels, k, local=local, boost_strength=strength, tie_rule=tie)
        density = k / units
    new.duty_cycle.copy_(duty)
    new.refresh_boost(density)
    new.eval()
    return nn.Sequential(new, nn.ReLU()) if getattr(module, "relu", False) else new


def from_nupic(model: nn.Module) -> nn.Module:
    """Replace every nupic.torch k-WTA module of ``model`` (in place) and return it.

    Raises
    ------
    ValueError
        A global ``KWinners2d`` that has not run yet (nupic derives its ``k``
        from the map size), or an inference ``k`` outside the units.
    """
    if is_nupic_kwinners(model):
        return _convert("(the model)", model)
    for name, module in list(model.named_modules()):
        if not is_nupic_kwinners(module):
            continue
        *path, leaf = name.split(".")
        parent = model
        for part in path:
            parent = getattr(parent, part)
        setattr(parent, leaf, _convert(name, module))
    return model
