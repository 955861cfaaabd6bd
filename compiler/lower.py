# amaranth: UnusedElaboratable=no
"""Lowering: a compiled network and its folding to the hardware units of its core.

Every IR layer becomes one or a few units of :mod:`cosparse.hw`, in pipeline
order, connected by streams inside :class:`~cosparse.hw.network.NetworkCore`
(an overlay layer: window, engine, narrow, requantizer; a global k-WTA
between one-frame FIFOs). A network whose last stream is sparse gets a final
Densify, so the output port is always dense. The table of units per layer and
the stream widths are in docs/compiler.md, 'Lowering: IR to units'.

The units are also inspected without being elaborated (the performance
model, the fold's counts), hence the linter option on the first line.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import signed

from cosparse.hw.adapters import Densify, InputOffset, Narrow, StreamFIFO, Widen, ZeroSkip
from cosparse.hw.dense_window import DenseWindow
from cosparse.hw.kwta import GlobalKWTA, LocalKWTA
from cosparse.hw.logic import LogicEngine
from cosparse.hw.network import NetworkCore, Stage
from cosparse.hw.overlay import OverlayEngine
from cosparse.hw.pool import MaxPool, SparseMaxPool
from cosparse.hw.requant import BiasAdd, Requantizer
from cosparse.hw.rescale import Rescaler
from cosparse.hw.reshape import DenseFlatten, SparseFlatten
from cosparse.hw.streams import dense_layout
from cosparse.hw.window import SparseWindow

from . import ir
from .folding import Folding, FoldingError
from .packer import engine_parameters, unpack

__all__ = ["lower", "spram_weight_layers", "entries_into", "logic_candidates", "SPRAM_WORDS"]

#: Words of one iCE40 SB_SPRAM256KA block (16 bits each).
SPRAM_WORDS = 16384

#: Largest receptive field (``kh * kw * C``) a dense window hands to one zero-skip beat.
DENSE_WINDOW_MAX_TAPS = 256


def spram_weight_layers(net: ir.Network, folding: Folding, spram_bits: int) -> dict[str, int]:
    """Overlay layers whose weight memory goes to SPRAM, with the blocks each takes.

    A memory qualifies with at least ``spram_bits`` bits, one read port
    (``R`` = 1) and at most :data:`SPRAM_WORDS` words; it takes one block per
    16 bits of width.
    """
    out = {}
    for layer in net.layers:
        if not isinstance(layer, ir.OverlayLayer) or folding.of(layer.name).in_logic:
            continue
        ov, f = layer.overlays, folding.of(layer.name)
        p = f.lanes_per_beat or ov.lanes
        width = p * (8 + max(1, (ov.kernels_per_overlay - 1).bit_length()))
        depth = ov.words * (ov.lanes // p)
        if f.entries == 1 and width * depth >= spram_bits and depth <= SPRAM_WORDS:
            out[layer.name] = -(-width // 16)
    return out


def entries_into(net: ir.Network, folding: Folding) -> list[int]:
    """``R`` of the stream entering each layer (and, last, of the output stream).

    A sparse stream's entries are those of the overlay layer that finally
    consumes it; pooling, flatten and windows keep them; a k-WTA or a
    densify starts a new stream.
    """
    n = len(net.layers)
    r = [folding.default_entries] * (n + 1)
    need = folding.default_entries
    for i in range(n - 1, -1, -1):
        layer = net.layers[i]
        r[i + 1] = need
        if isinstance(layer, ir.OverlayLayer):
            need = folding.of(layer.name).entries
        elif isinstance(layer, (ir.KWTALayer, ir.ZeroSkip, ir.Densify)):
            need = folding.default_entries  # what enters it is a different stream
    r[0] = need
    return r


def dense_window_fits(layer: ir.Layer | None, inp: ir.TensorSpec, width: int) -> bool:
    """A conv on a dense map takes the dense window when a position is one beat and
    a receptive field fits one zero-skip beat (first layers: few channels)."""
    if not isinstance(layer, ir.OverlayConv) or len(inp.shape) != 3:
        return False
    c = inp.shape[2]
    return width == c and layer.kernel[0] * layer.kernel[1] * c <= DENSE_WINDOW_MAX_TAPS


def logic_candidates(net: ir.Network, folding: Folding) -> dict[str, str | None]:
    """Per overlay layer: ``None`` if its weights can be logic, else why not.

    A logic engine takes a whole receptive field per beat, so it serves a
    conv on a dense map that the dense window reads: a first layer (behind
    the input's zero-skip at most), with ``folding.dense_window``.
    """
    specs = net.specs()
    out: dict[str, str | None] = {}
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, ir.OverlayLayer):
            continue
        first = all(isinstance(p, ir.ZeroSkip) for p in net.layers[:i])
        if not isinstance(layer, ir.OverlayConv):
            out[layer.name] = "it is a linear layer (a logic engine takes a conv's receptive field)"
        elif not first:
            out[layer.name] = ("it reads the output of another layer (a logic engine takes a first "
                               "conv, whose dense map the dense window reads)")
        elif not folding.dense_window or not dense_window_fits(layer, specs[i], folding.input_width):
            out[layer.name] = (f"its receptive field does not arrive as one beat (the dense "
                               f"window takes at most {DENSE_WINDOW_MAX_TAPS} taps, one position "
                               f"per beat of all its channels)")
        else:
            out[layer.name] = None
    return out


def pools_before_requant(net: ir.Network, folding: Folding) -> dict[str, str]:
    """Overlay layers whose accumulators are max-pooled before their requantizer.

    With ``folding.pool_before_requant``: a layer with a requantization that a
    dense max pool follows. Requantization is monotonic (positive multipliers,
    and a rescale after it too unless a multiplier of its is negative),
    so pooling first gives the same int8 map while the requantizer, and every
    unit behind it, handles ``kh * kw`` times fewer positions. Returns the
    overlay layer's name -> the pool's.
    """
    if not folding.pool_before_requant:
        return {}
    layers = net.layers
    return {layer.name: nxt.name for layer, nxt in zip(layers, layers[1:])
            if isinstance(layer, ir.OverlayLayer) and layer.requant is not None
            and (layer.rescale is None or layer.rescale.monotone)
            and isinstance(nxt, ir.MaxPool)}


def unit_name(comp) -> str:
    """A stage's unit name in reports, Verilog paths and memory image names: the
    k-WTA designs go by their kind (``LocalKWTA``, ``GlobalKWTA``), others by class."""
    for kind in (LocalKWTA, GlobalKWTA):
        if isinstance(comp, kind):
            return kind.__name__
    return type(comp).__name__


def _shape_groups(spec: ir.TensorSpec) -> tuple[int, int]:
    """(groups per frame, elements per group) of a tensor on a stream."""
    if len(spec.shape) == 3:
        h, w, c = spec.shape
        return h * w, c
    return 1, int(np.prod(spec.shape))


class _Lowering:
    """The walk over the layers: the stream's format, width and activity so far."""

    def __init__(self, net: ir.Network, folding: Folding, *, loadable: bool,
                 in_spram: dict[str, int]):
        self.net, self.folding = net, folding
        self.loadable, self.in_spram = loadable, in_spram
        self.specs = net.specs()
        self.entries = entries_into(net, folding)
        self.stages: list[Stage] = []
        self.fmt = "dense"
        self.width = folding.input_width
        self.max_active = _shape_groups(self.specs[0])[1]
        self.fused_skip = False  # an IR zero-skip left to the next conv's dense window
        self.pool_first = pools_before_requant(net, folding)

    def add(self, layer: str, comp):
        self.stages.append(Stage(layer, unit_name(comp), comp))
        return comp

    def vbits(self, i: int) -> int:
        """Signed bits of the values entering layer ``i`` (8, or 9 for int9)."""
        return max(8, self.specs[i].value_bits)

    def run(self) -> list[Stage]:
        fmts = self.net.formats()
        pooled = set(self.pool_first.values())
        handlers = [(ir.ZeroSkip, self.zero_skip), (ir.Densify, self.densify),
                    (ir.OverlayLayer, self.overlay), (ir.MaxPool, self.max_pool),
                    (ir.KWTALayer, self.kwta), (ir.Flatten, self.flatten)]
        if self.specs[0].dtype == "int9":  # the host sends value - lo as a byte
            self.add("", InputOffset(self.width, self.specs[0].bounds[0]))
        for i, layer in enumerate(self.net.layers):
            if layer.name in pooled:  # done by the overlay layer before it
                continue
            handler = next((h for kind, h in handlers if isinstance(layer, kind)), None)
            if handler is None:  # pragma: no cover - every IR kind is handled above
                raise FoldingError(f"layer {layer.name}: no hardware for kind {layer.kind!r}")
            try:
                handler(i, layer)
            except FoldingError:
                raise
            except ValueError as e:
                raise FoldingError(f"layer {layer.name} ({layer.kind}): {e}") from None
            assert self.fmt == fmts[i + 1], (layer.name, self.fmt, fmts[i + 1])
        if self.fmt == "sparse":
            g = _shape_groups(self.specs[-1])[1]
            self.width = self.folding.default_width
            self.add("", Densify(g, entries=self.entries[-1], width=self.width,
                                 value_bits=self.vbits(len(self.net.layers))))
        return self.stages

    def zero_skip(self, i: int, layer: ir.ZeroSkip) -> None:
        inp = self.specs[i]
        g = _shape_groups(inp)[1]
        nxt = self.net.layers[i + 1] if i + 1 < len(self.net.layers) else None
        if self.folding.dense_window and dense_window_fits(nxt, inp, self.width):
            self.fused_skip = True  # the conv's dense window skips the zeros itself
        else:
            self.add(layer.name, ZeroSkip(g, width=self.width, entries=self.entries[i + 1],
                                          value_bits=self.vbits(i)))
        self.fmt, self.max_active = "sparse", g

    def densify(self, i: int, layer: ir.Densify) -> None:
        g = _shape_groups(self.specs[i])[1]
        self.width = self.folding.of(layer.name).width or self.folding.default_width
        self.add(layer.name, Densify(g, entries=self.entries[i], width=self.width,
                                     value_bits=self.vbits(i)))
        self.fmt, self.max_active = "dense", g

    def overlay(self, i: int, layer: ir.OverlayLayer) -> None:
        inp, folding = self.specs[i], self.folding
        groups, g = _shape_groups(inp)
        fold = folding.of(layer.name)
        r = self.entries[i]
        vb = self.vbits(i)
        windowed = False
        if fold.in_logic:
            self.logic(i, layer)
            return
        if self.windowed(i, layer):
            # A whole receptive field per cycle, zeros skipped (or kept, for the
            # dense baselines) into R-entry beats.
            h, w, c = inp.shape
            dw = self.add(layer.name, DenseWindow(h, w, c, kernel=layer.kernel,
                                                  stride=layer.stride, padding=layer.padding,
                                                  value_bits=vb))
            self.add(layer.name, ZeroSkip(dw.taps, width=dw.taps, entries=r,
                                          keep_zeros=not self.fused_skip, value_bits=vb))
            self.fused_skip, windowed = False, True
        elif self.fmt == "dense":  # process every element: the dense baselines
            self.add(layer.name, ZeroSkip(g, width=self.width, entries=r, keep_zeros=True,
                                          value_bits=vb))
            self.max_active = g
        if isinstance(layer, ir.OverlayConv) and not windowed:
            h, w, c = inp.shape
            self.add(layer.name, SparseWindow(h, w, c, kernel=layer.kernel, stride=layer.stride,
                                              padding=layer.padding, entries=r,
                                              max_active=min(self.max_active, c),
                                              value_bits=vb))
        elif isinstance(layer, ir.OverlayLinear) and groups != 1:
            raise FoldingError(f"layer {layer.name}: a linear layer needs a vector input")
        eng = self.add(layer.name, OverlayEngine(**engine_parameters(layer.overlays),
                                                 entries=r, lanes_per_beat=fold.lanes_per_beat,
                                                 acc_bits=layer.accumulator_bits(),
                                                 loadable=self.loadable,
                                                 spram=layer.name in self.in_spram,
                                                 compact=folding.compact, value_bits=vb,
                                                 input_bound=layer.input_bound,
                                                 weight_bits=layer.weight_bits,
                                                 dsp_width=folding.dsp_width))
        self.output(i, layer, eng)

    def windowed(self, i: int, layer: ir.OverlayLayer) -> bool:
        """The layer reads a whole receptive field per beat from a dense window: a conv
        on a dense map (or behind a zero-skip left to it) whose positions are one beat."""
        return (isinstance(layer, ir.OverlayConv) and (self.fmt == "dense" or self.fused_skip)
                and self.folding.dense_window
                and dense_window_fits(layer, self.specs[i], self.width))

    def logic(self, i: int, layer: ir.OverlayLayer) -> None:
        """A dense window and the weights as logic, then the output stages."""
        inp, fold = self.specs[i], self.folding.of(layer.name)
        if not self.windowed(i, layer):
            why = logic_candidates(self.net, self.folding).get(layer.name) or "its input is sparse"
            raise FoldingError(f"layer {layer.name} cannot have its weights in logic: {why}")
        h, w, c = inp.shape
        self.add(layer.name, DenseWindow(h, w, c, kernel=layer.kernel, stride=layer.stride,
                                         padding=layer.padding, value_bits=self.vbits(i)))
        eng = self.add(layer.name, LogicEngine(unpack(layer.overlays),
                                               lanes_per_beat=fold.lanes_per_beat,
                                               acc_bits=layer.accumulator_bits(),
                                               in_range=inp.bounds))
        self.fused_skip = False
        self.output(i, layer, eng)

    def output(self, i: int, layer: ir.OverlayLayer, eng) -> None:
        """Behind an engine: the max pool of its sums (see :func:`pools_before_requant`),
        the narrow (if any) and the requantizer or bias add. The stages behind a pool
        carry the pool's name: they work on its positions."""
        fold, folding = self.folding.of(layer.name), self.folding
        self.width = eng.lanes_per_beat
        m = layer.overlays.num_kernels
        name = layer.name
        if layer.name in self.pool_first:
            pool = self.net.layers[i + 1]
            h, w, _ = self.specs[i + 1].shape
            self.pool_rows(pool.name, self.add(pool.name, MaxPool(
                h, w, m, kernel=pool.kernel, stride=pool.stride, width=self.width,
                elem_bits=eng.acc_bits)))
            name = pool.name
        if fold.width is not None and fold.width != self.width:
            self.add(name, Narrow(m, width_in=self.width, width_out=fold.width,
                                  elem_shape=signed(eng.acc_bits)))
            self.width = fold.width
        bias = [int(v) for v in layer.bias]
        if layer.requant is None:
            self.add(name, BiasAdd(m, width=self.width, acc_bits=eng.acc_bits, bias=bias))
        else:
            rq = layer.requant
            self.add(name, Requantizer(m, width=self.width, acc_bits=eng.acc_bits,
                                             multiplier=[int(v) for v in rq.multiplier],
                                             shift=[int(v) for v in rq.shift], bias=bias,
                                             relu=bool(rq.relu), lo=rq.bounds[0],
                                             hi=rq.bounds[1], rounding=rq.rounding,
                                             offset=None if rq.offset is None
                                             else [int(v) for v in rq.offset],
                                             loadable=self.loadable,
                                             dsp_width=folding.dsp_width,
                                             compact=folding.compact))
        if layer.rescale is not None:
            rs = layer.rescale
            self.add(name, Rescaler(m, width=self.width, value_bits=max(8, ir.value_bits(
                *rq.bounds)), multiplier=[int(v) for v in rs.multiplier],
                shift=[int(v) for v in rs.shift], offset=[int(v) for v in rs.offset],
                relu=bool(rs.relu), lo=rs.bounds[0], hi=rs.bounds[1], loadable=self.loadable,
                dsp_width=folding.dsp_width))
        self.fmt, self.max_active = "dense", m

    def pool_rows(self, name: str, mp: MaxPool) -> None:
        """Room for a pooled row behind a dense max pool (not on the smallest parts).

        A pool with a vertical stride emits a row of outputs only while its
        last input row of each window streams in, and nothing in between:
        without room for that row, a consumer as slow as the pool's mean
        output rate idles between the bursts and stalls the pool (and the
        stages before it) during them: up to ``sh - 1`` input rows' time lost
        per pooled row. With it, every stage keeps its own rate.
        """
        if self.folding.frame_fifos and mp.stride[0] > 1 and mp.out_height > 1:
            self.add(name, StreamFIFO(mp.out_layout, depth=mp.out_width * mp.beats + 2))

    def max_pool(self, i: int, layer: ir.MaxPool) -> None:
        h, w, c = self.specs[i].shape
        vb = self.vbits(i)
        if self.fmt == "dense":
            self.pool_rows(layer.name, self.add(layer.name, MaxPool(
                h, w, c, kernel=layer.kernel, stride=layer.stride, width=self.width,
                elem_bits=vb)))
        else:
            width = self.folding.of(layer.name).width or self.folding.default_width
            self.add(layer.name, SparseMaxPool(h, w, c, kernel=layer.kernel, stride=layer.stride,
                                               entries=self.entries[i], width=width,
                                               value_bits=vb))
            self.max_active = min(c, self.max_active * layer.kernel[0] * layer.kernel[1])

    def kwta(self, i: int, layer: ir.KWTALayer) -> None:
        groups, g = _shape_groups(self.specs[i])
        folding, r_out = self.folding, self.entries[i + 1]
        vb = self.vbits(i)
        ranges = dict(value_bits=vb, key_range=layer.key_range, out_range=layer.out_range,
                      dsp_width=folding.dsp_width)
        if self.fmt == "sparse":
            self.width = folding.of(layer.name).width or folding.default_width
            self.add("", Densify(g, entries=self.entries[i], width=self.width, value_bits=vb))
        boost = None if layer.boost is None else [int(b) for b in layer.boost]
        narrow = folding.of(layer.name).width
        if isinstance(layer, ir.LocalKWTA) and narrow and narrow < self.width \
                and self.width % narrow == 0:  # the fold's narrower k-WTA (fold._kwta_widths)
            self.add(layer.name, Narrow(g, width_in=self.width, width_out=narrow,
                                        elem_shape=signed(vb)))
            self.width = narrow
        width = self.width
        if isinstance(layer, ir.LocalKWTA):
            self.add(layer.name, LocalKWTA(g, layer.k, width=width, entries=r_out, boost=boost,
                                           max_winners=layer.max_winners,
                                           key_shift=layer.key_shift, rescale=layer.rescale,
                                           **ranges))
            self.max_active = layer.winners
        else:
            # Room for a whole input frame: the upstream keeps working while the
            # unit scans the previous frame (it writes only between scans).
            if folding.frame_fifos:
                self.add(layer.name, StreamFIFO(dense_layout(width, signed(vb)),
                                                depth=groups * -(-g // width) + 2))
            gk = self.add(layer.name, GlobalKWTA(groups * g, layer.k, group=g, width=width,
                                                 entries=r_out, boost=boost,
                                                 serial=folding.compact and width == 1
                                                 and layer.tie_order == "stream",
                                                 max_winners=layer.max_winners,
                                                 key_shift=layer.key_shift,
                                                 rescale=layer.rescale,
                                                 tie_order=layer.tie_order, **ranges))
            # Room for a whole frame's winners: the unit never waits for a slower
            # consumer, so it can take the next frame (see StreamFIFO).
            if folding.frame_fifos:
                self.add(layer.name, StreamFIFO(gk.out_layout,
                                                depth=groups + -(-layer.winners // r_out) + 2))
            self.max_active = min(g, layer.winners)
        self.fmt = "sparse"

    def flatten(self, i: int, layer: ir.Flatten) -> None:
        h, w, c = self.specs[i].shape
        if self.fmt == "sparse":
            self.add(layer.name, SparseFlatten(h * w, c, entries=self.entries[i],
                                               value_bits=self.vbits(i)))
            self.max_active = min(h * w * c, self.max_active * h * w)
        else:
            self.add(layer.name, DenseFlatten(h * w, c, width=self.width,
                                              value_bits=self.vbits(i)))


def lower(net: ir.Network, folding: Folding | None = None, *, loadable: bool = False,
          spram_bits: int | None = None, patch_seed: int | None = None) -> NetworkCore:
    """The accelerator core of a compiled network.

    Parameters
    ----------
    net : Network
        A compiled network whose overlay layers are in drain order (each
        layer's ``kernel_map[l, j] == j * L + l``; see
        :func:`cosparse.compiler.packer.drain_order`).
    folding : Folding, optional
        Each layer's parallelism (default: :class:`Folding`'s defaults).
    loadable : bool
        Give the weight memories write ports for the host loader.
    spram_bits : int or None
        With ``loadable``: weight memories of at least this many bits (and
        one read port) are single-port and start empty, for iCE40 SPRAM; the
        loader fills them.
    patch_seed : int or None
        With ``loadable``: build the block-RAM memories with seeded random
        placeholder contents over whole block RAMs, for a bitstream that is
        patched with the real (or later, new) contents.

    Returns
    -------
    NetworkCore
        One stage per unit, input ``dense_layout(folding.input_width)``,
        output dense (``signed(32)`` elements for int32 logits).

    Raises
    ------
    FoldingError
        A fold does not fit its layer (``P`` not dividing ``L``, a dense
        flatten whose width does not divide the channels, ...).
    """
    folding = folding or Folding()
    in_spram = (spram_weight_layers(net, folding, spram_bits)
                if loadable and spram_bits is not None else {})
    walk = _Lowering(net, folding, loadable=loadable, in_spram=in_spram)
    stages = walk.run()
    out = net.specs()[-1]
    out_bits = 32 if out.dtype == "int32" else 8 if out.value_bits <= 8 else 16
    if out_bits == 16:  # int9 values in whole bytes for the host link
        stages.append(Stage("", "Widen", Widen(walk.width, 9, 16)))
    return NetworkCore(stages, input_width=folding.input_width, out_width=walk.width,
                       out_bits=out_bits, patch_seed=patch_seed)
