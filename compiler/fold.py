# amaranth: UnusedElaboratable=no
"""Folding: choose each overlay layer's parallelism (R active inputs, P lanes, Q
requantizer lanes) for a budget.

The pipeline's interval is its slowest stage, so parallelism goes where the
performance model (:mod:`cosparse.compiler.perf`) says the time is: the
bottleneck overlay layer gets the next step up while the DSP products (and,
on ECP5, the block RAMs: :func:`block_rams`) fit the budget; every step's
requantizers are narrowed to the fewest lanes that keep the interval. A user
can override any layer (``overrides``): those folds are kept as they are and
the search works around them. See docs/compiler.md, 'Folding'.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from amaranth.hdl import Shape

from cosparse.hw.kwta import LocalKWTA
from cosparse.hw.logic import LogicEngine
from cosparse.hw.network import NetworkCore

from . import ir
from .emit import core_memories
from .folding import Folding, FoldingError, LayerFold
from .area import core_luts
from .lower import logic_candidates, lower, pools_before_requant
from .packer import unpack
from .perf import stage_cycles

__all__ = ["choose_folding", "check_lut_share", "choose_engines", "logic_engine", "logic_luts",
           "LOGIC_LUT_SHARE", "LUT_SHARE", "multipliers", "dsp_blocks", "block_rams",
           "board_block_rams", "memory_census", "ecp5_blocks", "FoldingError", "ECP5_BRAM_KBIT"]

MAX_ENTRIES = 32

#: Share of the part's LUTs the folded core may take, as placed (:func:`~.area.core_luts`):
#: room left for routing (a gsc-cs build at 74% routed, at 108% did not place).
LUT_SHARE = 0.8

#: Share of the part's LUTs that ``weights_in_logic="auto"`` gives the logic engines
#: together; the rest is for the other units (the gsc-cs core's other units take about
#: half of an ECP5-85F).
LOGIC_LUT_SHARE = 0.3


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def multipliers(net: ir.Network, folding: Folding) -> int:
    """Multipliers of the overlay engines: ``sum R * P``."""
    total = 0
    for layer in net.layers:
        if isinstance(layer, ir.OverlayLayer) and not folding.of(layer.name).in_logic:
            f = folding.of(layer.name)
            total += f.entries * (f.lanes_per_beat or layer.overlays.lanes)
    return total


def _lanes(layer: ir.OverlayLayer, f: LayerFold) -> int:
    """``P`` of a fold: all lanes by default (a logic engine: all ``M`` sums)."""
    return f.lanes_per_beat or (layer.overlays.num_kernels if f.in_logic else layer.overlays.lanes)


def logic_engine(layer: ir.OverlayLayer, lanes_per_beat: int | None = None) -> LogicEngine:
    """``layer``'s weights as logic at ``P`` sums a beat (digits as the engine chooses)."""
    return LogicEngine(unpack(layer.overlays), lanes_per_beat=lanes_per_beat,
                       acc_bits=layer.accumulator_bits())


def logic_luts(layer: ir.OverlayLayer, lanes_per_beat: int | None = None) -> int:
    """Estimated ECP5 LUTs of ``layer``'s weights as logic (:meth:`LogicEngine.lut_estimate`)."""
    return logic_engine(layer, lanes_per_beat).lut_estimate()


def choose_engines(net: ir.Network, folding: Folding, weights_in_logic="auto", *,
                   max_luts: int | None = None) -> dict[str, int]:
    """The layers whose weights become logic, with their estimated LUTs.

    Parameters
    ----------
    weights_in_logic : "auto", "none" or list of str
        ``"auto"``: every layer that can (:func:`~.lower.logic_candidates`),
        largest first, while together they take at most
        :data:`LOGIC_LUT_SHARE` of ``max_luts`` (none without ``max_luts``).
        A list names the layers; each must be able to.
    max_luts : int, optional
        The part's LUTs.

    Raises
    ------
    FoldingError
        A named layer is not an overlay layer, cannot be logic, or its logic
        alone exceeds ``max_luts``.
    """
    can = logic_candidates(net, folding)
    by_name = {layer.name: layer for layer in net.layers}
    if weights_in_logic == "none":
        return {}
    if weights_in_logic == "auto":
        if max_luts is None:
            return {}
        out, used = {}, 0
        layers = sorted((by_name[n] for n, why in can.items() if why is None),
                        key=lambda layer: -layer.overlays.nnz)
        for layer in layers:
            luts = logic_luts(layer)
            if used + luts <= LOGIC_LUT_SHARE * max_luts:
                out[layer.name], used = luts, used + luts
        return out
    if isinstance(weights_in_logic, str):
        raise FoldingError(f"weights in logic must be auto, none or a list of layers, got "
                           f"{weights_in_logic!r}")
    out = {}
    for name in weights_in_logic:
        if name not in can:
            raise FoldingError(f"weights in logic: {name!r} is not a conv or linear layer; "
                               f"those are {', '.join(can) or 'none'}")
        if can[name] is not None:
            raise FoldingError(f"layer {name} cannot have its weights in logic: {can[name]}")
        out[name] = logic_luts(by_name[name])
        if max_luts is not None and out[name] > max_luts:
            raise FoldingError(f"layer {name}'s weights as logic need about {out[name]:,} LUTs, "
                               f"more than the part's {max_luts:,}")
    return out


def dsp_blocks(net: ir.Network, folding: Folding, core: NetworkCore | None = None) -> int:
    """DSP multipliers the core uses: the engines' plus the requantizers' and boosts'.

    Counted on the units themselves (:attr:`NetworkCore.dsp_products`): a
    requantizer lane takes one or two products, a k-WTA with boost one per
    lane. ``core``: the core of ``folding``, when already built.
    """
    if core is None:
        core = lower(net, folding)
    return core.dsp_products


#: ECP5 block RAM (DP16KD): 18 kbit, as ``(width, depth)`` configurations; 36 bits wide
#: only with one read and one write port (PDPW16KD).
ECP5_BRAM_KBIT = 18
_DP16KD_SHAPES = ((18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))

#: yosys (``memory_libmap``) puts an ECP5 memory in LUT RAM when it is at most this
#: deep or holds fewer bits than ``LUTRAM_MAX_BITS``; otherwise in DP16KD. Fitted to
#: the gsc-cs builds: 98 x 8, 392 x 2, 64 x 19 and 25 x 288 (three read ports) went to
#: LUT RAM; 56 x 128, 152 x 22, 320 x 8 and 256 x 11 to block RAM.
LUTRAM_MAX_DEPTH = 32
LUTRAM_MAX_BITS = 2048


def memory_census(core: NetworkCore) -> list[tuple[str, int, int, int, int]]:
    """Every memory of the elaborated core: ``(path, depth, width, read ports, write ports)``."""
    return [(f"core.{path}", mem.depth, Shape.cast(mem.shape).width, len(mem.read_ports),
             len(mem.write_ports)) for path, mem in core_memories(core)]


def ecp5_blocks(depth: int, width: int, reads: int, writes: int) -> int:
    """DP16KD blocks of one memory as yosys maps it (see ``LUTRAM_MAX_*``).

    A block has two ports: with a write port each read port takes a copy of the
    memory, a ROM puts two read ports on each copy.

    Parameters
    ----------
    depth, width : int
        The memory's words and bits per word.
    reads, writes : int
        Its read and write ports.

    Returns
    -------
    int
        The DP16KD blocks; 0 for a memory yosys puts in LUT RAM (or one never read).
    """
    if depth <= LUTRAM_MAX_DEPTH or depth * width < LUTRAM_MAX_BITS or reads == 0:
        return 0
    copies = reads if writes else -(-reads // 2)
    shapes = _DP16KD_SHAPES + (((36, 512),) if reads == 1 and writes <= 1 else ())
    per_copy = min(-(-width // w) * -(-depth // d) for w, d in shapes)
    return copies * per_copy


#: Block RAMs of a board top besides the core's (the host link's payload buffer).
HOST_LINK_BLOCK_RAMS = 1

#: Blocks kept free for the estimate's error (:func:`block_rams` came in one low on
#: the gsc-cs sparse-weights build: 229 for 230).
BLOCK_RAM_MARGIN = 2


def board_block_rams(board) -> int | None:
    """Block RAMs a board leaves the core, less ``BLOCK_RAM_MARGIN`` (None where
    :func:`block_rams` has no model)."""
    if board.family != "ecp5":
        return None
    return board.bram_kbit // ECP5_BRAM_KBIT - HOST_LINK_BLOCK_RAMS - BLOCK_RAM_MARGIN


def block_rams(net: ir.Network, folding: Folding, family: str = "ecp5") -> int | None:
    """Block RAMs of the core as a board build has it (weights loadable), for ``family``.

    ECP5 only (DP16KD, see :func:`ecp5_blocks`: an estimate of yosys's mapping,
    within 3% of the gsc-cs builds); None for the other families, whose folds
    are not grown (iCE40) or not built here (Xilinx).
    """
    if family != "ecp5":
        return None
    core = lower(net, folding, loadable=True)
    return sum(ecp5_blocks(d, w, r, wr) for _, d, w, r, wr in memory_census(core))


def _input_width(net: ir.Network) -> int:
    c = net.input.shape[-1] if len(net.input.shape) == 3 else 1
    return min(c, 8) if len(net.input.shape) == 3 else 8


def check_lut_share(share: float) -> None:
    """Raise :class:`FoldingError` unless ``share`` (of the part's LUTs) is from 0.1 to 1."""
    if not 0.1 <= share <= 1.0:
        raise FoldingError(f"the LUT share (--lut-share) must be from 0.1 to 1, got {share:g}")


def choose_folding(net: ir.Network, sample: np.ndarray, *, max_multipliers: int,
                   overrides: dict[str, LayerFold] | None = None,
                   max_steps: int = 64, area_first: bool = False,
                   engines_only: bool = False,
                   max_block_rams: int | None = None,
                   weights_in_logic="none", max_luts: int | None = None,
                   lut_share: float = LUT_SHARE) -> Folding:
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
    max_block_rams : int, optional
        ECP5 block RAMs the core may take (:func:`board_block_rams`): a step
        whose memories (:func:`block_rams`: each weight-memory read port is a
        copy of the memory) would not fit is not taken.
    area_first : bool
        For the smallest parts (iCE40): the least parallelism everywhere (one
        multiplier per overlay layer, one element per dense beat, no dense
        window), so the network fits the logic; throughput comes second.
        No layer's weights go to logic.
    weights_in_logic : "auto", "none" or list of str
        Which layers' weights become shift-and-add logic (:func:`choose_engines`);
        an override's own engine is kept. Their ``P`` grows like an engine's.
    max_luts : int, optional
        The part's LUTs: a step that would take the core past ``lut_share`` of
        them (:func:`~.area.core_luts`) is not taken, and ``"auto"`` puts no
        layer in logic when the least parallelism with it would not fit.
    lut_share : float
        The share of ``max_luts`` the fold may fill (default :data:`LUT_SHARE`;
        less leaves the router room on a congested part, at more cycles).

    Raises
    ------
    FoldingError
        One multiplier per layer already exceeds the budget, or the least
        parallelism's memories exceed ``max_block_rams``.
    """
    kw = dict(max_multipliers=max_multipliers, overrides=overrides, max_steps=max_steps,
              area_first=area_first, engines_only=engines_only, max_block_rams=max_block_rams,
              weights_in_logic=weights_in_logic, max_luts=max_luts, lut_share=lut_share)
    check_lut_share(lut_share)
    if area_first:
        return _choose_folding(net, sample, pool_first=False, **kw)
    # Pooling sums before their requantizer saves DSP products and requantizer lanes,
    # but pools wider elements: fold both ways, keep the faster (then the smaller).
    # "auto" weights in logic are weighed likewise against none: logic that fits the part
    # can leave the other layers too few LUTs to grow, and then DSP engines do better.
    choices = [weights_in_logic]
    if weights_in_logic == "auto" and max_luts is not None:
        choices.append("none")
    best, error, any_logic = None, None, False
    for i, logic in enumerate(choices):
        if i and not any_logic:
            break  # auto put no layer in logic: the same folds as none
        for pool_first in (False, True):
            try:
                folding = _choose_folding(net, sample, pool_first=pool_first,
                                          **{**kw, "weights_in_logic": logic})
            except FoldingError as e:  # (pooled sums take wider pool memories)
                error = error or e
                continue
            any_logic = any_logic or bool(folding.logic_layers)
            core = lower(net, folding)
            key = (max(s.mean for s in stage_cycles(net, folding, sample, core)),
                   core_luts(core))
            if best is None or key < best[0]:
                best = (key, folding)
    if best is None:
        raise error
    return best[1]


def _choose_folding(net: ir.Network, sample: np.ndarray, *, max_multipliers: int,
                    overrides: dict[str, LayerFold] | None, max_steps: int, area_first: bool,
                    engines_only: bool, max_block_rams: int | None, weights_in_logic,
                    max_luts: int | None, pool_first: bool,
                    lut_share: float = LUT_SHARE) -> Folding:
    """:func:`choose_folding` with sums pooled before requantization or not."""
    overrides = dict(overrides or {})
    overlay = [layer for layer in net.layers if isinstance(layer, ir.OverlayLayer)]
    folding = Folding(input_width=_input_width(net), pool_before_requant=pool_first)
    logic = {} if area_first else choose_engines(
        net, folding, [n for n in weights_in_logic if n not in overrides]
        if isinstance(weights_in_logic, (list, tuple)) else weights_in_logic, max_luts=max_luts)
    folds = {}
    for layer in overlay:
        folds[layer.name] = overrides.get(
            layer.name, LayerFold(1, 1, engine="logic" if layer.name in logic else "dsp"))
    folding.layers = folds
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
        folding.pool_before_requant = False
        return folding
    by_name = {layer.name: layer for layer in overlay}
    # a stage behind a pool of sums is its overlay layer's (see pools_before_requant)
    owner_of = {pool: name for name, pool in pools_before_requant(net, folding).items()}
    lut_budget = None if max_luts is None else lut_share * max_luts
    first = _narrowed(net, folding, sample, overrides)
    if logic and weights_in_logic == "auto" and lut_budget is not None \
            and core_luts(lower(net, first[0])) > lut_budget:
        # the least parallelism with those layers in logic does not fit the LUTs: none
        return _choose_folding(net, sample, max_multipliers=max_multipliers,
                               overrides=overrides, max_steps=max_steps, area_first=area_first,
                               engines_only=engines_only, max_block_rams=max_block_rams,
                               weights_in_logic="none", max_luts=max_luts,
                               pool_first=pool_first, lut_share=lut_share)

    def grow(check_brams: bool) -> Folding:
        folding, stages = first
        for _ in range(max_steps):
            worst = max(stages, key=lambda s: s.mean)
            name = owner_of.get(worst.layer, worst.layer)
            if name not in by_name or name in overrides:
                break
            layer = by_name[name]
            step = _next_step(net, folding, layer, sample, worst.mean)
            if step is None:
                break
            trial, trial_stages = _narrowed(
                net, replace(folding, layers={**folding.layers, layer.name: step}), sample,
                overrides)
            if engines_only:
                used = multipliers(net, trial)
            else:
                core = lower(net, trial)
                used = core.dsp_products
                if lut_budget is not None and core_luts(core) > lut_budget:
                    break
            if used > max_multipliers:
                break
            if check_brams and block_rams(net, trial) > max_block_rams:
                break
            # The step must speed up the layer it was given to (not the whole pipeline: two
            # layers tied as the bottleneck take turns).
            if max(s.mean for s in trial_stages
                   if owner_of.get(s.layer, s.layer) == layer.name) >= worst.mean:
                break
            folding, stages = trial, trial_stages
        return folding

    # The block-RAM census elaborates the whole core (a second or two): the fold grows
    # without it, and again with it at every step only when the result does not fit.
    folding = grow(False)
    if max_block_rams is not None and block_rams(net, folding) > max_block_rams:
        least = block_rams(net, first[0])
        if least > max_block_rams:
            raise FoldingError(
                f"the network's memories need about {least:,} block RAMs at the least "
                f"parallelism (one read port per weight memory"
                f"{' and the fixed folds' if overrides else ''}), the part leaves the core "
                f"{max_block_rams:,}; choose a larger board or a sparser model")
        folding = grow(True)
    return folding


def _layer_cycles(net: ir.Network, folding: Folding, name: str, sample: np.ndarray) -> float:
    return max(s.mean for s in stage_cycles(net, folding, sample) if s.layer == name)


def _next_step(net: ir.Network, folding: Folding, layer, sample: np.ndarray,
               now: float) -> LayerFold | None:
    """The bottleneck layer's next fold: more lanes per pass until all ``L`` run at
    once, then the fewest more entries per beat that shorten it (a receptive field
    of 25 taps: 13 beats at R = 2, 9 at R = 3, ...)."""
    f = folding.layers[layer.name]
    if f.in_logic:  # more sums per beat: the next divisor of M
        m = layer.overlays.num_kernels
        bigger = [d for d in _divisors(m) if d > _lanes(layer, f)]
        return LayerFold(1, bigger[0], None, "logic") if bigger else None
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
    return replace(folding, layers={n: LayerFold(f.entries, f.lanes_per_beat, None, f.engine)
                                    for n, f in folding.layers.items()})


def _kwta_widths(net: ir.Network, widths: dict[str, int], overrides: dict[str, LayerFold],
                 bound: float) -> dict[str, LayerFold]:
    """Each local k-WTA on a requantizer's dense stream as narrow as ``bound`` allows.

    Its input is ``Q`` wide (the requantizer's, through a dense max pool); a
    k-WTA's logic grows with its width, so it takes the fewest elements per
    beat (dividing ``Q``) that keep it within the interval, a Narrow in front.
    """
    out, q = {}, None
    specs = net.specs()
    for i, layer in enumerate(net.layers):
        if isinstance(layer, ir.OverlayLayer):
            q = widths.get(layer.name)
        elif isinstance(layer, ir.LocalKWTA) and q is not None and layer.name not in overrides:
            h, w, c = specs[i].shape
            cycles = [(d, h * w * LocalKWTA(c, layer.k, width=d,
                                                    max_winners=layer.max_winners,
                                                    key_shift=layer.key_shift).cycles_per_position)
                      for d in _divisors(q)]
            out[layer.name] = LayerFold(width=next((d for d, t in cycles if t <= bound), q))
            q = None
        elif not isinstance(layer, ir.MaxPool):
            q = None
    return out


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
    pooled = pools_before_requant(net, folding)
    widths, owner = {}, {}  # overlay layer -> Q; any layer -> the overlay layer feeding it
    lanes = {}
    last = None
    for i, layer in enumerate(net.layers):
        if isinstance(layer, ir.OverlayLayer):
            last = layer.name
            f = full.layers[layer.name]
            p = lanes[layer.name] = _lanes(layer, f)
            if layer.name in overrides:
                continue
            # its requantizer's positions: those of the pool its sums go through first
            shape = specs[i + 2 if layer.name in pooled else i + 1].shape
            groups = int(np.prod(shape[:-1])) if len(shape) == 3 else 1
            m = layer.overlays.num_kernels
            widths[layer.name] = next(d for d in _divisors(p)
                                      if groups * -(-m // d) <= bound)
        owner[layer.name] = last
    if not widths:
        return full, full_stages
    for _ in range(16):
        trial = replace(full, layers={
            n: (LayerFold(f.entries, f.lanes_per_beat, widths[n], f.engine) if n in widths else f)
            for n, f in full.layers.items()})
        trial.layers.update(_kwta_widths(net, widths, overrides, bound))
        stages = stage_cycles(net, trial, sample)
        worst = max(stages, key=lambda s: s.mean)
        if worst.mean <= bound:
            return trial, stages
        name = owner.get(worst.layer)
        if name not in widths:
            break
        f = full.layers[name]
        p = lanes[name]
        wider = [d for d in _divisors(p) if d > widths[name]]
        if not wider:
            break
        widths[name] = wider[0]
    return full, full_stages
