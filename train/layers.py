"""Complementary-sparse layers: ``CSLinear`` and ``CSConv2d``.

Each holds a dense ``weight`` and a 0/1 ``mask`` buffer of the same shape
and computes with ``weight * mask``: the exported model's weights are the
masked ones (the compiler folds the product). By default the gradient
outside the mask is 0, whatever the optimizer. With ``straight_through``
the gradient reaches every weight as if it were unmasked (the forward pass
still uses the masked ones), so the weights outside the mask keep learning
and :meth:`~ComplementarySparse.reassign` by magnitude can hand positions
to them. The mask is complementary in
overlays of ``kernels_per_overlay`` consecutive kernels (:mod:`.masks`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .masks import assignment_mask, is_complementary, magnitude_assignment, random_assignment

__all__ = ["ComplementarySparse", "CSLinear", "CSConv2d"]


class ComplementarySparse:
    """What both layers share: the mask, its choice and its checks.

    The layer's kernels are ``weight``'s first axis; a kernel's fan-in is the
    rest, flattened (a conv's ``in_channels / groups x kh x kw``).
    """

    weight: nn.Parameter
    mask: torch.Tensor
    kernels_per_overlay: int

    def _init_mask(self, kernels_per_overlay: int, generator: torch.Generator | None,
                   straight_through: bool) -> None:
        self.kernels_per_overlay = kernels_per_overlay
        self.straight_through = bool(straight_through)
        kernels, fan_in = self.weight.shape[0], self.weight[0].numel()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        owner = random_assignment(kernels, fan_in, kernels_per_overlay,
                                  np.random.default_rng(seed))
        self.register_buffer("mask", self._as_mask(owner))
        # The fan-in a kernel sees is 1/K of the dense one: scale the initial weights
        # up as for a layer of that fan-in (nupic's SparseWeights does the same).
        with torch.no_grad():
            self.weight.mul_(math.sqrt(kernels_per_overlay))
            if not self.straight_through:
                self.weight.mul_(self.mask)

    def _as_mask(self, owner: np.ndarray) -> torch.Tensor:
        mask = assignment_mask(owner, self.kernels_per_overlay)
        return torch.from_numpy(mask).reshape(self.weight.shape).to(self.weight.dtype)

    @property
    def overlays(self) -> int:
        """Overlays of this layer: kernels / ``kernels_per_overlay``."""
        return self.weight.shape[0] // self.kernels_per_overlay

    @property
    def density(self) -> float:
        """Weight density: 1 / ``kernels_per_overlay`` up to the shares' rounding."""
        return float(self.mask.mean())

    def masked_weight(self) -> torch.Tensor:
        """``weight * mask``: the weights the layer computes with (in training with
        ``straight_through``, their gradient goes to ``weight`` unmasked)."""
        masked = self.weight * self.mask
        if self.straight_through and self.training:
            return self.weight + (masked - self.weight).detach()
        return masked

    @torch.no_grad()
    def reassign(self, by: str = "magnitude", generator: torch.Generator | None = None) -> float:
        """Choose the mask again: ``"magnitude"`` (each position to the kernel with the
        largest ``|weight|`` for it, shares kept balanced) or ``"random"``.

        Without ``straight_through`` the weights outside the mask are 0, so
        ``"magnitude"`` keeps the mask, and the weights that leave it (``"random"``)
        become 0; with it, every weight keeps its value and those that enter the
        mask take part from then on. Returns the fraction of mask positions that
        changed owner.
        """
        kernels = self.weight.shape[0]
        if by == "magnitude":
            owner = magnitude_assignment(self.weight.detach().reshape(kernels, -1).cpu().numpy(),
                                         self.kernels_per_overlay)
        elif by == "random":
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
            owner = random_assignment(kernels, self.weight[0].numel(), self.kernels_per_overlay,
                                      np.random.default_rng(seed))
        else:
            raise ValueError(f"reassign by 'magnitude' or 'random', got {by!r}")
        new = self._as_mask(owner).to(self.mask.device)
        changed = float((new != self.mask).sum()) / 2 / max(1, float(self.mask.sum()))
        self.mask.copy_(new)
        if not self.straight_through:
            self.weight.mul_(self.mask)
        return changed

    def check_complementary(self) -> bool:
        """True when the mask tiles every overlay's fan-in once with balanced shares."""
        return is_complementary(self.mask.reshape(self.weight.shape[0], -1).cpu().numpy(),
                                self.kernels_per_overlay)


class CSLinear(ComplementarySparse, nn.Linear):
    """A linear layer whose weights are complementary-sparse.

    Parameters
    ----------
    in_features, out_features : int
        As :class:`torch.nn.Linear`.
    kernels_per_overlay : int
        ``K``: kernels (output units) per overlay; it divides ``out_features``,
        and the weight density is ``1 / K``.
    bias : bool
        As :class:`torch.nn.Linear`.
    generator : torch.Generator, optional
        Draws the first (random) mask.
    straight_through : bool
        The gradient reaches the weights outside the mask too (see the module
        docstring).

    Examples
    --------
    >>> fc = CSLinear(256, 128, kernels_per_overlay=8)
    >>> fc.check_complementary(), round(fc.density, 3)
    (True, 0.125)
    """

    def __init__(self, in_features: int, out_features: int, kernels_per_overlay: int,
                 bias: bool = True, *, generator: torch.Generator | None = None,
                 straight_through: bool = False, device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device,
                           dtype=dtype)
        self._init_mask(kernels_per_overlay, generator, straight_through)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernels_per_overlay={self.kernels_per_overlay}"


class CSConv2d(ComplementarySparse, nn.Conv2d):
    """A 2-D convolution whose kernels are complementary-sparse.

    Parameters
    ----------
    in_channels, out_channels, kernel_size : int or tuple
        As :class:`torch.nn.Conv2d`.
    kernels_per_overlay : int
        ``K``: kernels (output channels) per overlay; it divides
        ``out_channels``. A kernel's fan-in is ``in_channels / groups x kh x kw``.
    **conv_options
        ``stride``, ``padding``, ``dilation``, ``groups``, ``bias``,
        ``padding_mode`` as :class:`torch.nn.Conv2d`; ``generator`` and
        ``straight_through`` as :class:`CSLinear`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, kernels_per_overlay: int,
                 *, generator: torch.Generator | None = None, straight_through: bool = False,
                 **conv_options):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, **conv_options)
        self._init_mask(kernels_per_overlay, generator, straight_through)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernels_per_overlay={self.kernels_per_overlay}"
