"""Folding: choose each overlay layer's parallelism (R active inputs, P lanes, Q
requantizer lanes) for a budget.

The pipeline's interval is its slowest stage, so parallelism goes where the
performance model (:mod:`cosparse.compiler.perf`) says the time is: starting
from one multiplier per layer, the bottleneck overlay layer gets the next
step up (more lanes per pass until all ``L`` lanes run at once, then the
fewest more entries per beat that shorten it) while the DSP products fit
the budget. It stops when the bottleneck is not an overlay layer's stage (a
k-WTA, a pool: more multipliers would not help) or the next step does not
fit.

Every step's requantizers are narrowed: an engine drains its ``P`` sums per
cycle in bursts, but its requantizer only needs the average rate, so each
gets the fewest lanes ``Q`` that keep it within the interval (a
:class:`~cosparse.hw.adapters.Narrow` in between). On gsc-cs the DSP blocks
this frees pay for conv1's third entry per beat.

A user can override any layer (``overrides``): those folds are kept as they
are and the search works around them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cosparse.hw.network import Folding, LayerFold, NetworkCore

from . import ir
from .errors import CosparseError
from .perf import stage_cycles

__all__ = ["choose_folding", "multipliers", "dsp_blocks", "FoldingError"]

MAX_ENTRIES = 32


class FoldingError(CosparseError):
    """The network cannot fit the budget even with the least parallelism."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def multipliers(net: ir.Network, folding: Folding) -> int:
    """Multipliers of the overlay engines: ``sum R * P``."""
    total = 0
    for layer in net.layers:
        if isinstance(layer, ir._OverlayLayer):
            f = folding.of(layer.name)
            total += f.entries * (f.lanes_per_beat or layer.overlays.lanes)
    return total


def dsp_blocks(net: ir.Network, folding: Folding, core: NetworkCore | None = None) -> int:
    """DSP multipliers the core uses: the engines' plus the requantizers' and boosts'.

    Counted on the units themselves (:attr:`NetworkCore.dsp_products`): a
    requantizer lane takes one or two products, a k-WTA with boost one per
    lane. ``core``: the core of ``folding``, when already built.
    """
    if core is None:
        core = NetworkCore(net, folding)
        core.discard()
    return core.dsp_products


def _input_width(net: ir.Network) -> int:
    c = net.input.shape[-1] if len(net.input.shape) == 3 else 1
    return min(c, 8) if len(net.input.shape) == 3 else 8


def choose_folding(net: ir.Network, sample: np.ndarray, *, max_multipliers: int,
                   overrides: dict[str, LayerFold] | None = None,
                   max_steps: int = 64, area_first: bool = False,
                   engines_only: bool = False) -> Folding:
    """Balance the pipeline within ``max_multipliers``.

    Parameters
    ----------
    net : Network
        In drain order.
    sample : ndarray of int8
        A few representative inputs (the calibration set): the activity the
        performance model uses.
    max_multipliers : int
        The budget (DSP blocks plus LUT multipliers the board can afford);
        growing the folds counts every DSP product (:func:`dsp_blocks`: the
        requantizers' and boosts' too), so the folded core fits the part.
    overrides : dict, optional
        Layer name -> fold to keep.
    engines_only : bool
        Count only the engines' multipliers against the budget (to compare
        modes at equal multipliers, whatever else the part would need).
    area_first : bool
        For the smallest parts (iCE40): the least parallelism everywhere (one
        multiplier per overlay layer, one element per dense beat, no dense
        window), so the network fits the logic; throughput comes second.

    Raises
    ------
    FoldingError
        One multiplier per layer already exceeds the budget.
    """
    overrides = dict(overrides or {})
    overlay = [layer for layer in net.layers if isinstance(layer, ir._OverlayLayer)]
    folds = {}
    for layer in overlay:
        folds[layer.name] = overrides.get(layer.name, LayerFold(1, 1))
    folding = Folding(input_width=_input_width(net), layers=folds)
    need = multipliers(net, folding)
    if need > max_multipliers:
        raise FoldingError(f"the network needs at least {need} multipliers "
                           f"(one per overlay layer plus the fixed folds), the budget is "
                           f"{max_multipliers}")
    if area_first:
        folding.input_width = 1
        folding.default_width = 1
        folding.dense_window = False
        folding.dsp_width = 16
        folding.frame_fifos = False
        folding.compact = True
        return folding
    by_name = {layer.name: layer for layer in overlay}
    folding, stages = _narrowed(net, folding, sample, overrides)
    for _ in range(max_steps):
        worst = max(stages, key=lambda s: s.mean)
        if worst.layer not in by_name or worst.layer in overrides:
            break
        layer = by_name[worst.layer]
        step = _next_step(net, folding, layer, sample, worst.mean)
        if step is None:
            break
        trial, trial_stages = _narrowed(
            net, replace(folding, layers={**folding.layers, layer.name: step}), sample, overrides)
        if engines_only:
            used = multipliers(net, trial)
        else:
            core = NetworkCore(net, trial)
            core.discard()
            used = core.dsp_products
        if used > max_multipliers:
            break
        # The step must speed up the layer it was given to (not the whole pipeline: two
        # layers tied as the bottleneck take turns).
        if max(s.mean for s in trial_stages if s.layer == layer.name) >= worst.mean:
            break
        folding, stages = trial, trial_stages
    return folding


def _layer_cycles(net: ir.Network, folding: Folding, name: str, sample: np.ndarray) -> float:
    return max(s.mean for s in stage_cycles(net, folding, sample) if s.layer == name)


def _next_step(net: ir.Network, folding: Folding, layer, sample: np.ndarray,
               now: float) -> LayerFold | None:
    """The bottleneck layer's next fold: more lanes per pass until all ``L`` run at
    once, then the fewest more entries per beat that shorten it (a receptive field
    of 25 taps: 13 beats at R = 2, 9 at R = 3, ...)."""
    f = folding.layers[layer.name]
    lanes = layer.overlays.lanes
    p = f.lanes_per_beat or lanes
    bigger = [d for d in _divisors(lanes) if d > p]
    if bigger:
        return LayerFold(f.entries, bigger[0], None)
    for r in range(f.entries + 1, min(2 * f.entries, MAX_ENTRIES) + 1):
        step = LayerFold(r, p, None)
        full = replace(folding, layers={**_full_width(folding).layers, layer.name: step})
        if _layer_cycles(net, full, layer.name, sample) < now:
            return step
    return None


def _full_width(folding: Folding) -> Folding:
    """The folding with every overlay layer's requantizer as wide as its engine."""
    return replace(folding, layers={n: LayerFold(f.entries, f.lanes_per_beat, None)
                                    for n, f in folding.layers.items()})


def _narrowed(net: ir.Network, folding: Folding, sample: np.ndarray,
              overrides: dict[str, LayerFold]) -> tuple[Folding, list]:
    """Each overlay layer's requantizer as narrow as the pipeline's interval allows.

    The interval ``T`` is that of the folding with full-width requantizers;
    each layer gets the smallest ``Q`` (dividing ``P``) whose requantizer
    takes at most ``T``, then any stage behind it that the narrower stream
    made the slowest (a global k-WTA's beats) widens it again. Returns the
    folding and its predicted stages.
    """
    full = _full_width(folding)
    for name, f in overrides.items():
        full.layers[name] = f
    full_stages = stage_cycles(net, full, sample)
    bound = max(s.mean for s in full_stages)
    specs = net.specs()
    widths, owner = {}, {}  # overlay layer -> Q; any layer -> the overlay layer feeding it
    lanes = {}
    last = None
    for i, layer in enumerate(net.layers):
        if isinstance(layer, ir._OverlayLayer):
            last = layer.name
            f = full.layers[layer.name]
            p = lanes[layer.name] = f.lanes_per_beat or layer.overlays.lanes
            if layer.name in overrides:
                continue
            shape = specs[i + 1].shape
            groups = int(np.prod(shape[:-1])) if len(shape) == 3 else 1
            m = layer.overlays.num_kernels
            widths[layer.name] = next(d for d in _divisors(p)
                                      if groups * -(-m // d) <= bound)
        owner[layer.name] = last
    if not widths:
        return full, full_stages
    for _ in range(16):
        trial = replace(full, layers={
            n: (LayerFold(f.entries, f.lanes_per_beat, widths[n]) if n in widths else f)
            for n, f in full.layers.items()})
        stages = stage_cycles(net, trial, sample)
        worst = max(stages, key=lambda s: s.mean)
        if worst.mean <= bound:
            return trial, stages
        name = owner.get(worst.layer)
        if name not in widths:
            break
        f = full.layers[name]
        p = f.lanes_per_beat or lanes[name]
        wider = [d for d in _divisors(p) if d > widths[name]]
        if not wider:
            break
        widths[name] = wider[0]
    return full, full_stages
