"""k-winners-take-all with boosting, in the forms the compiler reads.

Winners are chosen on boosted keys ``x * boost`` and keep their own value
``x``; the rest become 0. The boost comes from each unit's duty cycle (how
often it won), as nupic.torch computes it::

    boost = exp((target_density - duty_cycle) * boost_strength)

Duty cycles are updated in training mode only; in eval mode the boost is a
constant, and the exported graph multiplies by it.

Two tie rules, each exported in the form the compiler reads with that
meaning (``docs/kwta.md``):

- ``"index"``: exactly ``k`` winners, equal keys to the lower index
  (ONNX TopK's order): ``TopK`` indices, ``GatherElements`` of ``x``,
  ``ScatterElements`` into zeros.
- ``"threshold"``: every key at least the ``k``-th largest wins (nupic's
  kthvalue form): ``TopK`` values, the ``k``-th as threshold,
  ``GreaterOrEqual``, a product with ``x``. The compiler bounds it at
  ``2k`` winners.

PyTorch's ``topk`` does not promise an order among equal keys; the
exported model's (and the hardware's) is the lower index first.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["KWinners", "KWinners2d", "TIE_RULES"]

#: Tie rules: exactly k winners (``"index"``), or the threshold rule.
TIE_RULES = ("index", "threshold")


class _KWinnersBase(nn.Module):
    """Boost and duty-cycle bookkeeping shared by both modules (as nupic.torch)."""

    def __init__(self, units: int, k: int, boost_strength: float, boost_strength_factor: float,
                 duty_cycle_period: int, tie_rule: str, boost_shape: tuple[int, ...]):
        super().__init__()
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be a positive integer, got {units!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if boost_strength < 0:
            raise ValueError(f"boost_strength must be >= 0, got {boost_strength!r}")
        if not 0 < boost_strength_factor <= 1:
            raise ValueError(f"boost_strength_factor must be in (0, 1], got {boost_strength_factor!r}")
        if not isinstance(duty_cycle_period, int) or duty_cycle_period < 1:
            raise ValueError(f"duty_cycle_period must be a positive integer, got {duty_cycle_period!r}")
        if tie_rule not in TIE_RULES:
            raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {tie_rule!r}")
        self.units, self.k = units, k
        self.boost_strength = float(boost_strength)
        self.boost_strength_factor = float(boost_strength_factor)
        self.duty_cycle_period = duty_cycle_period
        self.tie_rule = tie_rule
        self._boost_shape = boost_shape
        self.register_buffer("duty_cycle", torch.zeros(units))
        self.register_buffer("boost", torch.ones(boost_shape))
        self.register_buffer("learning_iterations", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def refresh_boost(self, target_density: float) -> None:
        """``boost = exp((target_density - duty_cycle) * boost_strength)``."""
        b = torch.exp((target_density - self.duty_cycle) * self.boost_strength)
        self.boost.copy_(b.reshape(self._boost_shape))

    @torch.no_grad()
    def update_duty_cycle(self, wins: torch.Tensor, samples: int, per_sample: float) -> None:
        """Running mean of each unit's wins (nupic's ``update_duty_cycle``): ``wins``
        counts each unit's wins over ``samples`` inputs, ``per_sample`` chances each."""
        self.learning_iterations += samples
        period = min(self.duty_cycle_period, int(self.learning_iterations))
        self.duty_cycle.mul_(period - samples).add_(wins / per_sample).div_(period)

    def update_boost_strength(self) -> None:
        """Multiply the boost strength by ``boost_strength_factor`` (once per epoch, as
        nupic's schedule)."""
        self.boost_strength *= self.boost_strength_factor

    def _select(self, x: torch.Tensor, key: torch.Tensor,
                dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(out, won)``: the winners along ``dim`` of ``key`` keep ``x``'s value; ``won``
        is 0/1 (None outside training)."""
        if self.tie_rule == "index":
            idx = torch.topk(key, self.k, dim=dim).indices
            out = torch.zeros_like(x).scatter(dim, idx, x.gather(dim, idx))
            won = torch.zeros_like(x).scatter(dim, idx, 1.0) if self.training else None
        else:
            thr = torch.topk(key, self.k, dim=dim).values.narrow(dim, self.k - 1, 1)
            mask = key >= thr
            out = x * mask
            won = mask.to(x.dtype) if self.training else None
        return out, won

    def extra_repr(self) -> str:
        return (f"units={self.units}, k={self.k}, boost_strength={self.boost_strength:g}, "
                f"tie_rule={self.tie_rule!r}")


class KWinners(_KWinnersBase):
    """k winners of ``n`` units, over ``[batch, n]``.

    Parameters
    ----------
    n : int
        Units.
    k : int
        Winners (1 to ``n``).
    boost_strength : float
        Boost strength (0: no boost).
    boost_strength_factor : float
        :meth:`update_boost_strength` multiplies the strength by this.
    duty_cycle_period : int
        Samples the duty cycle averages over.
    tie_rule : {"index", "threshold"}
        See the module docstring.
    """

    def __init__(self, n: int, k: int, boost_strength: float = 1.0,
                 boost_strength_factor: float = 1.0, duty_cycle_period: int = 1000,
                 tie_rule: str = "index"):
        super().__init__(n, k, boost_strength, boost_strength_factor, duty_cycle_period,
                         tie_rule, (1, n))
        if k > n:
            raise ValueError(f"k = {k} is more than the {n} units")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 2 or x.shape[1] != self.units):
            raise ValueError(f"KWinners({self.units}) takes [batch, {self.units}], got "
                             f"{list(x.shape)}")
        if self.training:
            self.refresh_boost(self.k / self.units)
        out, won = self._select(x, x * self.boost, 1)
        if self.training:
            self.update_duty_cycle(won.sum(dim=0), x.shape[0], 1.0)
        return out


class KWinners2d(_KWinnersBase):
    """k winners over a ``[batch, C, H, W]`` map, per position or over the whole map.

    Parameters
    ----------
    channels : int
        ``C``.
    k : int
        Winners: of the ``C`` channels at each position (``local=True``), or
        of all ``C x H x W`` units (``local=False``).
    local : bool
        Per position (the paper's local k-WTA) or global over the map.
    boost_strength, boost_strength_factor, duty_cycle_period, tie_rule
        As :class:`KWinners`. Duty cycles and boosts are per channel.
    """

    def __init__(self, channels: int, k: int, local: bool = True, boost_strength: float = 1.0,
                 boost_strength_factor: float = 1.0, duty_cycle_period: int = 1000,
                 tie_rule: str = "index"):
        super().__init__(channels, k, boost_strength, boost_strength_factor, duty_cycle_period,
                         tie_rule, (1, channels, 1, 1))
        if local and k > channels:
            raise ValueError(f"k = {k} is more than the {channels} channels of a position")
        self.local = bool(local)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != self.units):
            raise ValueError(f"KWinners2d({self.units}) takes [batch, {self.units}, H, W], got "
                             f"{list(x.shape)}")
        b, c, h, w = x.shape
        if not self.local and self.k > c * h * w:
            raise ValueError(f"k = {self.k} is more than the map's {c * h * w} units")
        if self.training:
            self.refresh_boost(self.k / (c if self.local else c * h * w))
        key = x * self.boost
        if self.local:
            out, won = self._select(x, key, 1)
        else:  # over the flattened map (channel-major, as NCHW flattens)
            out, won = self._select(x.reshape(b, -1), key.reshape(b, -1), 1)
            out = out.reshape(b, c, h, w)
        if self.training:
            self.update_duty_cycle(won.reshape(b, c, h, w).sum(dim=(0, 2, 3)), b, float(h * w))
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", local={self.local}"
